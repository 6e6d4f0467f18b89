//! Projects: `<project>.<domain>` serves the production deployment; production builds move it,
//! previews do not, and promote / rollback move it back and forth without rebuilding.

mod common;

use common::{git, GitServer, Gitdeploy};
use gitdeploy_core::DeploymentStatus;
use reqwest::Method;
use serde_json::{json, Value};

async fn deploy_and_wait(gd: &Gitdeploy, body: Value) -> (String, Vec<gitdeploy_core::LogRecord>) {
    let (status, answer) = gd.deploy(body).await;
    assert_eq!(status, 202, "{answer}");
    let id = answer["id"].as_str().unwrap().to_owned();
    let log = gd.follow(&id, 0).await;
    (id, log)
}

async fn project_page(gd: &Gitdeploy, project: &str) -> (u16, String) {
    let resp = gd.site(Method::GET, project, "/").send().await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

async fn post(gd: &Gitdeploy, path: &str, body: Value) -> (u16, Value) {
    let resp = gd
        .http()
        .post(gd.api(path))
        .json(&body)
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

#[tokio::test]
async fn production_promote_rollback_and_previews() {
    let mut server = GitServer::new();
    let repo = server.add_repo("site", &[("index.html", "v1")]);
    server.start();
    let data = tempfile::tempdir().unwrap();
    let gd = Gitdeploy::start(data.path()).await;
    let url = server.url("site");

    // First deploy creates the project and becomes production.
    let (v1, log) = deploy_and_wait(&gd, json!({"repo": url, "project": "my-site"})).await;
    assert!(
        log.iter()
            .any(|r| r.line == "Promoted to production of project my-site"),
        "{log:#?}"
    );
    assert_eq!(project_page(&gd, "my-site").await, (200, "v1".into()));
    let shown = gd.status(&v1).await;
    assert_eq!(
        shown["project_url"],
        format!("http://my-site.localhost:{}/", gd.port)
    );

    // A new production build moves the alias.
    std::fs::write(repo.join("index.html"), "v2").unwrap();
    git(&repo, &["commit", "-qam", "v2"]);
    let (v2, _) = deploy_and_wait(&gd, json!({"repo": url, "project": "my-site"})).await;
    assert_eq!(project_page(&gd, "my-site").await, (200, "v2".into()));

    // A preview (another branch) does not.
    git(&repo, &["checkout", "-qb", "feature"]);
    std::fs::write(repo.join("index.html"), "preview").unwrap();
    git(&repo, &["commit", "-qam", "preview"]);
    git(&repo, &["checkout", "-q", "main"]);
    let (preview, log) = deploy_and_wait(
        &gd,
        json!({"repo": url, "project": "my-site", "ref": "feature"}),
    )
    .await;
    assert!(
        log.iter()
            .any(|r| r.line.contains("Preview of project my-site")),
        "{log:#?}"
    );
    assert_eq!(project_page(&gd, "my-site").await, (200, "v2".into()));
    assert_eq!(project_page(&gd, &preview).await, (200, "preview".into()));

    // Rollback: promote the earlier deployment; nothing is rebuilt, the next request sees it.
    let (status, project) = post(
        &gd,
        "/api/projects/my-site/promote",
        json!({"deployment": v1}),
    )
    .await;
    assert_eq!(status, 200, "{project}");
    assert_eq!(project["production"], v1.as_str());
    assert_eq!(project_page(&gd, "my-site").await, (200, "v1".into()));
    let (status, _) = post(
        &gd,
        "/api/projects/my-site/promote",
        json!({"deployment": v2}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(project_page(&gd, "my-site").await, (200, "v2".into()));
    let listed: Value = gd
        .http()
        .get(gd.api("/api/projects/my-site"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["deployments"].as_array().unwrap().len(), 3);
    assert_eq!(
        listed["url"],
        format!("http://my-site.localhost:{}/", gd.port)
    );

    // The alias survives a restart.
    gd.kill();
    let gd = Gitdeploy::start(data.path()).await;
    assert_eq!(project_page(&gd, "my-site").await, (200, "v2".into()));
    assert_eq!(project_page(&gd, "no-such-project").await.0, 404);
}

#[tokio::test]
async fn project_requests_are_checked() {
    let mut server = GitServer::new();
    server.add_repo("site", &[("index.html", "ok")]);
    server.add_repo(
        "broken",
        &[("package.json", r#"{"scripts":{"build":"exit 3"}}"#)],
    );
    server.add_repo("other", &[("index.html", "other")]);
    server.start();
    let data = tempfile::tempdir().unwrap();
    let gd = Gitdeploy::start(data.path()).await;

    let (status, created) = post(
        &gd,
        "/api/projects",
        json!({"name": "docs", "repo": server.url("broken")}),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(
        created["url"],
        format!("http://docs.localhost:{}/", gd.port)
    );
    let (status, body) = post(
        &gd,
        "/api/projects",
        json!({"name": "docs", "repo": server.url("broken")}),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("project_exists"))
    );
    for name in ["Docs", "api", "abcdef123456", "-x", ""] {
        let (status, _) = post(
            &gd,
            "/api/projects",
            json!({"name": name, "repo": server.url("site")}),
        )
        .await;
        assert_eq!(status, 400, "{name:?}");
    }
    // The project deploys one repository.
    let (status, body) = gd
        .deploy(json!({"repo": server.url("other"), "project": "docs"}))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("project_repo_mismatch"))
    );

    // A failed build never becomes production, and cannot be promoted.
    let (failed, log) = deploy_and_wait(
        &gd,
        json!({"repo": server.url("broken"), "project": "docs"}),
    )
    .await;
    assert_eq!(
        log.last().unwrap().outcome.as_ref().unwrap().status,
        DeploymentStatus::Failed
    );
    assert_eq!(project_page(&gd, "docs").await.0, 404);
    let (status, body) = post(
        &gd,
        "/api/projects/docs/promote",
        json!({"deployment": failed}),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("not_ready"))
    );

    // Deployments of another project (or of none) cannot be promoted here.
    let (other, _) = deploy_and_wait(&gd, json!({"repo": server.url("site")})).await;
    let (status, body) = post(
        &gd,
        "/api/projects/docs/promote",
        json!({"deployment": other}),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("other_project"))
    );
    let (status, _) = post(
        &gd,
        "/api/projects/nope/promote",
        json!({"deployment": other}),
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = post(
        &gd,
        "/api/projects/docs/promote",
        json!({"deployment": "zzzzzzzzzzz9"}),
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = post(&gd, "/api/projects/docs/promote", json!({"id": "x"})).await;
    assert_eq!(status, 400);
}
