//! Projects: `<project>.<domain>` serves the production deployment; production builds move it,
//! previews do not, and promote / rollback move it back and forth without rebuilding.

mod common;

use common::{git, hub_signature as sign, GitServer, Gitdeploy};
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
    let listed: Value = gd.get_json("/api/projects/my-site").await;
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
    assert_eq!(project_page(&gd, "my-site").await, (200, "v2".into()));
    // Alias lookups of the restarted process: loaded once, then from its cache.
    for (result, want) in [
        ("loaded", 1.0),
        ("hit", 1.0),
        ("missing", 1.0),
        ("error", 0.0),
    ] {
        let series = format!(r#"gitdeploy_alias_lookups_total{{result="{result}"}}"#);
        assert_eq!(gd.metric(&series).await, want, "{series}");
    }
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

#[tokio::test]
async fn github_push_webhooks_deploy_only_when_signed() {
    let mut server = GitServer::new();
    let repo = server.add_repo("hooked", &[("index.html", "from main")]);
    git(&repo, &["branch", "feature"]);
    server.start();
    let data = tempfile::tempdir().unwrap();
    let gd = Gitdeploy::start_with(data.path(), &["--api-token", "a-long-enough-test-token"]).await;
    let secret = "webhook-secret-0123456789";
    let resp = gd
        .http()
        .post(gd.api("/api/projects"))
        .bearer_auth("a-long-enough-test-token")
        .json(&json!({"name": "hooked", "repo": server.url("hooked"), "webhook_secret": secret}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let created: Value = resp.json().await.unwrap();
    assert_eq!(created["webhook"], true);
    assert!(
        !created.to_string().contains(secret),
        "the secret is never shown"
    );

    let event = |git_ref: &str| {
        serde_json::to_vec(&json!({
            "ref": git_ref,
            "deleted": false,
            "repository": {"clone_url": server.url("hooked"), "default_branch": "main"},
        }))
        .unwrap()
    };
    let hook = |body: Vec<u8>, kind: &'static str, signature: Option<String>| {
        let mut req = gd
            .http()
            .post(gd.api("/api/hooks/github"))
            .header("x-github-event", kind)
            .header("content-type", "application/json")
            .body(body);
        if let Some(sig) = signature {
            req = req.header("x-hub-signature-256", sig);
        }
        req.send()
    };
    let count = || async {
        let list: Value = gd
            .http()
            .get(gd.api("/api/deployments"))
            .bearer_auth("a-long-enough-test-token")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        list["deployments"].as_array().unwrap().len()
    };

    // Unsigned, mis-signed, or signed with another secret: 401, nothing runs.
    let body = event("refs/heads/main");
    assert_eq!(
        hook(body.clone(), "push", None).await.unwrap().status(),
        401
    );
    assert_eq!(
        hook(body.clone(), "push", Some("sha256=00".into()))
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        hook(
            body.clone(),
            "push",
            Some(sign("another-secret-xxxxxxx", &body))
        )
        .await
        .unwrap()
        .status(),
        401
    );
    let tampered = event("refs/heads/feature");
    assert_eq!(
        hook(tampered, "push", Some(sign(secret, &body)))
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(count().await, 0);

    // A ping is answered.
    let ping = serde_json::to_vec(
        &json!({"zen": "hi", "repository": {"clone_url": server.url("hooked")}}),
    )
    .unwrap();
    let resp = hook(ping.clone(), "ping", Some(sign(secret, &ping)))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    // A signed push to the default branch deploys production.
    let resp = hook(body.clone(), "push", Some(sign(secret, &body)))
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let answer: Value = resp.json().await.unwrap();
    let id = answer["deployments"][0]["id"].as_str().unwrap().to_owned();
    let log = gd
        .http()
        .get(gd.api(&format!("/api/deployments/{id}/logs?follow=1")))
        .bearer_auth("a-long-enough-test-token")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        log.contains("Promoted to production of project hooked"),
        "{log}"
    );
    assert_eq!(project_page(&gd, "hooked").await, (200, "from main".into()));

    // A push to another branch is a preview; a tag or a deleted branch deploys nothing.
    let feature = event("refs/heads/feature");
    let resp = hook(feature.clone(), "push", Some(sign(secret, &feature)))
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let answer: Value = resp.json().await.unwrap();
    assert_eq!(answer["deployments"][0]["ref"], "feature");
    for ignored in [event("refs/tags/v1")] {
        let resp = hook(ignored.clone(), "push", Some(sign(secret, &ignored)))
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    assert_eq!(count().await, 2);
}

#[tokio::test]
async fn the_cli_lists_inspects_promotes_and_rolls_back() {
    let mut server = GitServer::new();
    let repo = server.add_repo("cli-site", &[("index.html", "one")]);
    server.start();
    let data = tempfile::tempdir().unwrap();
    let gd = Gitdeploy::start(data.path()).await;
    let config = tempfile::tempdir().unwrap();
    let api = gd.api("");
    let cli = |args: Vec<String>| {
        let (api, config) = (api.clone(), config.path().to_owned());
        tokio::task::spawn_blocking(move || {
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_gitdeploy"))
                .args(&args)
                .args(["--api", &api])
                .env("XDG_CONFIG_HOME", &config)
                .env_remove("GITDEPLOY_TOKEN")
                .output()
                .unwrap();
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        })
    };
    let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let url = server.url("cli-site");

    let (code, out, err) = cli(args(&["deploy", &url, "--project", "cli-site", "--follow"]))
        .await
        .unwrap();
    assert_eq!(code, Some(0), "{out}{err}");
    let first = out.split_whitespace().nth(1).unwrap().to_owned();
    std::fs::write(repo.join("index.html"), "two").unwrap();
    git(&repo, &["commit", "-qam", "two"]);
    let (code, out, _) = cli(args(&["deploy", &url, "--project", "cli-site", "--prod"]))
        .await
        .unwrap();
    assert_eq!(code, Some(0));
    assert!(
        out.contains("Production: http://cli-site.localhost:"),
        "{out}"
    );
    let second = out.split_whitespace().nth(1).unwrap().to_owned();
    assert_eq!(project_page(&gd, "cli-site").await, (200, "two".into()));

    let (_, out, _) = cli(args(&["ls", "--project", "cli-site", "--json"]))
        .await
        .unwrap();
    let listed: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(listed.len(), 2);
    let (_, out, _) = cli(args(&["ls"])).await.unwrap();
    assert!(
        out.starts_with("ID") && out.contains(&first) && out.contains("ready"),
        "{out}"
    );
    let (_, out, _) = cli(args(&["inspect", &first])).await.unwrap();
    assert!(
        out.contains("status       ready") && out.contains("cli-site"),
        "{out}"
    );
    let (_, out, _) = cli(args(&["logs", &first])).await.unwrap();
    assert!(out.contains("✔ Deployment is ready"), "{out}");
    let (_, out, _) = cli(args(&["projects"])).await.unwrap();
    assert!(out.contains("cli-site") && out.contains(&second), "{out}");

    // Roll back to the first, promote the second again.
    let (code, out, _) = cli(args(&["rollback", "cli-site"])).await.unwrap();
    assert_eq!(code, Some(0));
    assert!(out.contains(&first), "{out}");
    assert_eq!(project_page(&gd, "cli-site").await, (200, "one".into()));
    let (code, _, err) = cli(args(&["rollback", "cli-site"])).await.unwrap();
    assert_eq!(code, Some(2));
    assert!(
        err.contains("no earlier ready production deployment"),
        "{err}"
    );
    let (code, _, _) = cli(args(&["promote", "cli-site", &second])).await.unwrap();
    assert_eq!(code, Some(0));
    assert_eq!(project_page(&gd, "cli-site").await, (200, "two".into()));

    // Errors are one clear line and a non-zero exit.
    let (code, _, err) = cli(args(&["cancel", &first])).await.unwrap();
    assert_eq!(code, Some(2));
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("error: deployment") && err.contains("(409 Conflict)"),
        "{err}"
    );
    let (code, _, err) = cli(args(&["inspect", "zzzzzzzzzzz9"])).await.unwrap();
    assert_eq!(code, Some(2));
    assert!(err.contains("404"), "{err}");
}

/// A project's saved settings (commands, env, secrets) apply to every deploy of it; a deploy
/// request's own settings win; secret values are never shown and are redacted from the log.
#[tokio::test]
async fn project_settings_apply_to_deploys_and_secrets_stay_write_only() {
    let mut server = GitServer::new();
    server.add_repo("cfg", &[("README", "no build of its own")]);
    server.start();
    let data = tempfile::tempdir().unwrap();
    let gd = Gitdeploy::start(data.path()).await;
    let url = server.url("cfg");
    let script =
        "mkdir -p out && echo \"$GREETING $API_KEY\" > out/index.html && echo key=$API_KEY";

    let (status, created) = post(
        &gd,
        "/api/projects",
        json!({"name": "cfg", "repo": url, "build": {
            "build_command": script, "output_dir": "out",
            "env": {"GREETING": "hello"}, "secrets": {"API_KEY": "s3cr3t-value"}}}),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["build"]["secrets"]["API_KEY"], "", "never shown");

    let (id, log) = deploy_and_wait(&gd, json!({"repo": url, "project": "cfg"})).await;
    assert_eq!(
        project_page(&gd, "cfg").await,
        (200, "hello s3cr3t-value\n".into())
    );
    assert!(log.iter().any(|r| r.line == "key=***"), "{log:#?}");
    assert!(log.iter().all(|r| !r.line.contains("s3cr3t-value")));
    let shown = gd.status(&id).await;
    assert_eq!(shown["build"]["secrets"]["API_KEY"], "");

    // PATCH with the settings as shown: the blank secret keeps its value; env changes.
    let mut build = created["build"].clone();
    build["env"]["GREETING"] = json!("bonjour");
    let resp = gd
        .http()
        .patch(gd.api("/api/projects/cfg"))
        .json(&json!({"build": build}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // A request's own env wins over the project's.
    let (_, _) = deploy_and_wait(
        &gd,
        json!({"repo": url, "project": "cfg", "build": {"env": {"API_KEY": "plain"}}}),
    )
    .await;
    assert_eq!(
        project_page(&gd, "cfg").await,
        (200, "bonjour plain\n".into())
    );

    // Bad settings are refused with the reason, and change nothing.
    for (body, code) in [
        (json!({"build": {"secrets": {"NEW": ""}}}), "invalid_build"),
        (json!({"build": {"output_dir": "../up"}}), "invalid_build"),
        (json!({"webhook_secret": "short"}), "invalid_secret"),
        (json!({"nope": 1}), "invalid_body"),
    ] {
        let resp = gd
            .http()
            .patch(gd.api("/api/projects/cfg"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{body}");
        let answer: Value = resp.json().await.unwrap();
        assert_eq!(answer["error"]["code"], code, "{body}");
    }
    let resp = gd
        .http()
        .patch(gd.api("/api/projects/nope"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let project: Value = gd.get_json("/api/projects/cfg").await;
    assert_eq!(project["build"]["env"]["GREETING"], "bonjour");
    assert_eq!(project["build"]["output_dir"], "out");
}

/// A deploy hook is a secret URL that builds the production branch; without the right secret
/// it does not exist.
#[tokio::test]
async fn deploy_hooks_build_production_and_can_be_revoked() {
    let mut server = GitServer::new();
    server.add_repo("hooked", &[("index.html", "from the hook")]);
    server.start();
    let data = tempfile::tempdir().unwrap();
    let gd = Gitdeploy::start_with(data.path(), &["--api-token", "a-long-enough-test-token"]).await;
    let auth = |r: reqwest::RequestBuilder| r.bearer_auth("a-long-enough-test-token");
    let resp = auth(gd.http().post(gd.api("/api/projects")))
        .json(&json!({"name": "hooked", "repo": server.url("hooked")}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let project: Value = auth(gd.http().patch(gd.api("/api/projects/hooked")))
        .json(&json!({"deploy_hook": true}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let hook = project["deploy_hook_url"].as_str().unwrap().to_owned();
    assert!(hook.contains("/api/hooks/deploy/hooked/"), "{hook}");

    // No token needed: the URL is the secret.
    let resp = gd.http().post(&hook).send().await.unwrap();
    assert_eq!(resp.status(), 202);
    let body: Value = resp.json().await.unwrap();
    let id = body["id"].as_str().unwrap().to_owned();
    let ws = format!(
        "ws://127.0.0.1:{}/api/deployments/{id}/logs/ws?access_token=a-long-enough-test-token",
        gd.port
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(ws).await.unwrap();
    use futures_util::StreamExt;
    while let Some(Ok(msg)) = socket.next().await {
        if msg.is_close() {
            break;
        }
    }
    assert_eq!(
        project_page(&gd, "hooked").await,
        (200, "from the hook".into())
    );

    // A wrong secret, an unknown project and a revoked hook are all "no such hook".
    let wrong = hook.rsplit_once('/').unwrap().0.to_owned() + "/wrong-secret";
    let unknown = hook.replace("/hooked/", "/nope/");
    auth(gd.http().patch(gd.api("/api/projects/hooked")))
        .json(&json!({"deploy_hook": false}))
        .send()
        .await
        .unwrap();
    for url in [&wrong, &unknown, &hook] {
        let resp = gd.http().post(url).send().await.unwrap();
        assert_eq!(resp.status(), 404, "{url}");
    }
}

/// Deleting a deployment removes its files, log and record; production and running builds are
/// refused.
#[tokio::test]
async fn deleting_deployments() {
    let mut server = GitServer::new();
    let repo = server.add_repo("del", &[("index.html", "one"), ("a/b.txt", "deep")]);
    server.start();
    let data = tempfile::tempdir().unwrap();
    let gd = Gitdeploy::start(data.path()).await;
    let url = server.url("del");
    let (first, _) = deploy_and_wait(&gd, json!({"repo": url, "project": "del"})).await;
    std::fs::write(repo.join("index.html"), "two").unwrap();
    git(&repo, &["commit", "-qam", "two"]);
    let (second, _) = deploy_and_wait(&gd, json!({"repo": url, "project": "del"})).await;
    let delete = |id: &str| {
        gd.http()
            .delete(gd.api(&format!("/api/deployments/{id}")))
            .send()
    };

    let resp = delete(&second).await.unwrap();
    assert_eq!(resp.status(), 409);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "is_production");

    let files = |id: &str| {
        walk(&data.path().join("s3"))
            .into_iter()
            .filter(|p| p.to_string_lossy().contains(id))
            .count()
    };
    assert!(
        files(&first) >= 2,
        "the manifest and the log archive are stored (the files are shared blobs)"
    );
    assert_eq!(delete(&first).await.unwrap().status(), 204);
    assert_eq!(
        files(&first),
        0,
        "every stored object of the deployment is gone"
    );
    assert_eq!(gd.status_code(&first).await, 404);
    assert_eq!(delete(&first).await.unwrap().status(), 404);
    // The site is gone (the edge's cached manifest is dropped at once or within moments).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while gd
        .site(Method::GET, &first, "/")
        .send()
        .await
        .unwrap()
        .status()
        != 404
    {
        assert!(
            std::time::Instant::now() < deadline,
            "deleted site still served"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    // Rollback no longer finds it; production is untouched.
    let (status, _) = post(&gd, "/api/projects/del/rollback", json!({})).await;
    assert_eq!(status, 409);
    assert_eq!(project_page(&gd, "del").await, (200, "two".into()));

    // Deleting the project: its URL is gone at once, its deployment stays at its own address.
    let resp = gd
        .http()
        .delete(gd.api("/api/projects/del"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    assert_eq!(project_page(&gd, "del").await.0, 404);
    let own = gd.site(Method::GET, &second, "/").send().await.unwrap();
    assert_eq!(own.text().await.unwrap(), "two");
    let resp = gd
        .http()
        .delete(gd.api("/api/projects/del"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[tokio::test]
async fn pushes_that_change_nothing_a_monorepo_project_watches_are_skipped() {
    let mut server = GitServer::new();
    let repo = server.add_repo(
        "mono",
        &[
            ("web/index.html", "v1"),
            ("web/README.md", "docs"),
            ("api/main.go", "package main"),
            ("shared/brand.txt", "blue"),
        ],
    );
    server.start();
    let data = tempfile::tempdir().unwrap();
    let token = "a-long-enough-test-token";
    let gd = Gitdeploy::start_with(data.path(), &["--api-token", token]).await;
    let secret = "webhook-secret-0123456789";
    let build = json!({"root_dir": "web", "watch_paths": ["shared/", "!web/README.md"]});
    let resp = gd
        .http()
        .post(gd.api("/api/projects"))
        .bearer_auth(token)
        .json(&json!({"name": "mono", "repo": server.url("mono"), "webhook_secret": secret, "build": build}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    // Bad watch paths are refused with the reason.
    let resp = gd
        .http()
        .post(gd.api("/api/projects"))
        .bearer_auth(token)
        .json(&json!({"name": "bad", "repo": server.url("mono"), "build": {"watch_paths": ["../up"]}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert!(resp
        .text()
        .await
        .unwrap()
        .contains("watch path \\\"../up\\\""));

    // Push `files` as one commit and follow the deployment the hook starts.
    let push = |files: &'static [(&'static str, &'static str)]| {
        let (gd, repo, server) = (&gd, &repo, &server);
        async move {
            for (path, content) in files {
                std::fs::write(repo.join(path), content).unwrap();
            }
            // Every push GitHub sends moves the branch (an empty commit changes no file).
            git(repo, &["commit", "-q", "--allow-empty", "-am", "change"]);
            let after = std::process::Command::new("git")
                .args(["rev-parse", "HEAD"])
                .current_dir(repo)
                .output()
                .unwrap()
                .stdout;
            let body = serde_json::to_vec(&json!({
                "ref": "refs/heads/main",
                "after": String::from_utf8_lossy(&after).trim(),
                "repository": {"clone_url": server.url("mono"), "default_branch": "main"},
            }))
            .unwrap();
            let resp = gd
                .http()
                .post(gd.api("/api/hooks/github"))
                .header("x-github-event", "push")
                .header("x-hub-signature-256", sign(secret, &body))
                .body(body)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 202);
            let answer: Value = resp.json().await.unwrap();
            let id = answer["deployments"][0]["id"].as_str().unwrap().to_owned();
            let log = gd
                .http()
                .get(gd.api(&format!("/api/deployments/{id}/logs?follow=1")))
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            let d: Value = gd
                .http()
                .get(gd.api(&format!("/api/deployments/{id}")))
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            (d, log)
        }
    };

    // The first build has nothing to compare with.
    let (first, log) = push(&[]).await;
    assert_eq!(first["status"], "ready", "{log}");
    assert_eq!(first["previous_commit"], Value::Null);
    assert_eq!(project_page(&gd, "mono").await, (200, "v1".into()));

    // Another part of the monorepo, or an excluded file: skipped, production unchanged.
    // (Compared with the last ready build, so the changes add up.)
    for (files, changed) in [
        (&[("api/main.go", "package main // v2")][..], "1 other file"),
        (&[("web/README.md", "more docs")], "2 other files"),
    ] {
        let (d, log) = push(files).await;
        assert_eq!(d["status"], "skipped", "{log}");
        assert_eq!(d["previous_commit"], first["commit"]);
        let reason = d["skip_reason"].as_str().unwrap();
        assert!(
            reason
                .starts_with("nothing under web/ and shared/, except web/README.md changed since")
                && reason.ends_with(&format!("({changed} changed)")),
            "{reason}"
        );
        assert!(
            log.contains(&format!("Deployment skipped: {reason}")),
            "{log}"
        );
        assert!(!log.contains("Install"), "{log}");
        assert_eq!(project_page(&gd, "mono").await, (200, "v1".into()));
    }
    // A commit that changes no file: still skipped.
    let (d, _) = push(&[]).await;
    assert_eq!(d["status"], "skipped");

    // A watch path outside the root directory, then the root directory itself: built.
    let (d, log) = push(&[("shared/brand.txt", "green")]).await;
    assert_eq!(d["status"], "ready", "{log}");
    assert!(
        log.contains("Building: shared/brand.txt changed since"),
        "{log}"
    );
    let (d, log) = push(&[("web/index.html", "v2")]).await;
    assert_eq!(d["status"], "ready", "{log}");
    assert!(
        log.contains("Building: web/index.html changed since"),
        "{log}"
    );
    assert_eq!(project_page(&gd, "mono").await, (200, "v2".into()));
    // A deploy that no push started always builds.
    let resp = gd
        .http()
        .post(gd.api("/api/deployments"))
        .bearer_auth(token)
        .json(&json!({"repo": server.url("mono"), "project": "mono"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let answer: Value = resp.json().await.unwrap();
    let log = gd
        .http()
        .get(gd.api(&format!(
            "/api/deployments/{}/logs?follow=1",
            answer["id"].as_str().unwrap()
        )))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        log.contains("Deployment is ready") && !log.contains("skipped"),
        "{log}"
    );
}
