//! Preview retention through the real server: a project that keeps its last N previews has the
//! older ones deleted after each preview build, and when the setting changes; production (and
//! its earlier deployments), an alias's build and pinned deployments always stay.

mod common;

use std::time::{Duration, Instant};

use common::{git, GitServer, Gitdeploy};
use serde_json::{json, Value};

async fn patch(gd: &Gitdeploy, body: Value) -> (u16, Value) {
    gd.call_json(reqwest::Method::PATCH, "/api/projects/site", Some(body))
        .await
}

/// Waits (polling, up to a minute) until deployment `id` is gone (`gone`) or still there.
async fn until_gone(gd: &Gitdeploy, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while gd.status_code(id).await != 404 {
        assert!(Instant::now() < deadline, "{id} was never deleted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn old_previews_go_and_what_serves_or_is_pinned_stays() {
    let mut server = GitServer::new();
    let repo = server.add_repo("site", &[("index.html", "main")]);
    git(&repo, &["branch", "feature"]);
    server.start();
    let data = tempfile::tempdir().unwrap();
    let gd = Gitdeploy::start(data.path()).await;
    let url = server.url("site");
    let deploy = |git_ref: Option<&str>| {
        let gd = &gd;
        let body = match git_ref {
            Some(r) => json!({"repo": url, "project": "site", "ref": r}),
            None => json!({"repo": url, "project": "site"}),
        };
        async move { common::deploy_and_follow(gd, body).await.0 }
    };
    let production = deploy(None).await;

    for (body, code) in [
        (json!({"preview_retention": 20_000}), "invalid_retention"),
        (json!({"preview_retention": -1}), "invalid_body"),
    ] {
        let (status, answer) = patch(&gd, body.clone()).await;
        assert_eq!(
            (status, answer["error"]["code"].as_str()),
            (400, Some(code)),
            "{body}"
        );
    }
    let (status, project) = patch(&gd, json!({"preview_retention": 2})).await;
    assert_eq!(status, 200);
    assert_eq!(project["preview_retention"], 2);

    // A pinned preview, three more, then one its branch alias serves.
    let sha = {
        let out = std::process::Command::new("git")
            .args(["rev-parse", "main"])
            .current_dir(&repo)
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let pinned = deploy(Some(&sha)).await;
    let resp = gd
        .http()
        .post(gd.api(&format!("/api/deployments/{pinned}/pin")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.json::<Value>().await.unwrap()["pinned"], true);
    let oldest = deploy(Some(&sha)).await;
    let middle = deploy(Some(&sha)).await;
    let newest = deploy(Some(&sha)).await;
    let aliased = deploy(Some("feature")).await;

    // Previews by age: newest, middle, oldest (the pinned one and the alias's do not count):
    // two stay.
    until_gone(&gd, &oldest).await;
    assert_eq!(gd.page(&oldest, "/").await.0, 404);
    for kept in [&production, &pinned, &middle, &newest, &aliased] {
        assert_eq!(gd.status_code(kept).await, 200, "{kept}");
    }
    assert_eq!(gd.page("feature--site", "/").await.1, "main");
    assert_eq!(gd.page("site", "/").await.1, "main");

    // A lower setting sweeps at once; an unpinned deployment is a preview like any other.
    let resp = gd
        .http()
        .delete(gd.api(&format!("/api/deployments/{pinned}/pin")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let (status, _) = patch(&gd, json!({"preview_retention": 1})).await;
    assert_eq!(status, 200);
    until_gone(&gd, &middle).await;
    until_gone(&gd, &pinned).await;
    assert_eq!(gd.status_code(&newest).await, 200);

    // A new production build: the earlier production deployment stays (rollback needs it).
    let second = deploy(None).await;
    let project = gd.get_json("/api/projects/site").await;
    assert_eq!(project["production"], second.as_str());
    let (status, _) = patch(&gd, json!({"preview_retention": 1})).await;
    assert_eq!(status, 200);
    let another = deploy(Some(&sha)).await;
    until_gone(&gd, &newest).await;
    for kept in [&production, &second, &aliased, &another] {
        assert_eq!(gd.status_code(kept).await, 200, "{kept}");
    }
    // 0 keeps every preview again.
    let (status, project) = patch(&gd, json!({"preview_retention": 0})).await;
    assert_eq!(status, 200);
    assert!(project["preview_retention"].is_null());
}
