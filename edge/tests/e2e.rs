//! Repository URL to live site, end to end: fixture repos over `git daemon`, the real
//! `gitdeploy up`, its embedded S3, real `npm` builds, the API, the log WebSocket and the edge.

mod common;

use common::{assert_complete_log, GitServer, Gitdeploy};
use gitdeploy_core::{DeploymentStatus, LogStream};
use reqwest::Method;
use serde_json::json;

const NPM_BUILD_JS: &str = r#"
const fs = require('fs');
fs.mkdirSync('dist/docs/deep', { recursive: true });
for (let i = 0; i < 5; i++) console.log('building step ' + i);
console.error('warning: this goes to stderr');
fs.writeFileSync('dist/index.html', '<h1>built by npm</h1>');
fs.writeFileSync('dist/docs/index.html', '<h1>docs</h1>');
fs.writeFileSync('dist/docs/deep/page.html', '<p>deep page</p>');
fs.writeFileSync('dist/404.html', '<h1>custom not found</h1>');
fs.writeFileSync('dist/app.js', 'console.log("app")');
fs.writeFileSync('dist/style.css', 'body { color: teal }');
fs.writeFileSync('dist/data.json', '{"ok":true}');
fs.writeFileSync('dist/logo.svg', '<svg xmlns="http://www.w3.org/2000/svg"/>');
"#;

fn npm_site() -> Vec<(&'static str, &'static str)> {
    vec![
        (
            "package.json",
            r#"{"name":"fixture-npm","version":"1.0.0","private":true,"scripts":{"build":"node build.js"}}"#,
        ),
        ("build.js", NPM_BUILD_JS),
        ("src/ignored.txt", "source, not output"),
    ]
}

#[tokio::test]
async fn npm_site_builds_and_every_file_is_served() {
    let mut git = GitServer::new();
    git.add_repo("npm-site", &npm_site());
    git.start();
    let data = tempfile::tempdir().unwrap();
    let gd = Gitdeploy::start(data.path()).await;

    let (status, body) = gd.deploy(json!({ "repo": git.url("npm-site") })).await;
    assert_eq!(status, 202, "{body}");
    let id = body["id"].as_str().unwrap().to_owned();
    assert_eq!(body["status"], "queued");
    assert_eq!(body["url"], format!("http://{id}.localhost:{}/", gd.port));
    assert!(body["logs_url"]
        .as_str()
        .unwrap()
        .ends_with(&format!("/api/deployments/{id}/logs")));

    let log = gd.follow(&id, 0).await;
    assert_complete_log(&log);
    let outcome = log.last().unwrap().outcome.clone().unwrap();
    assert_eq!(outcome.status, DeploymentStatus::Ready, "{log:#?}");
    // The final record carries the totals: 8 files, their bytes, and the build time.
    assert_eq!(outcome.files, Some(8));
    assert!(
        outcome.bytes.unwrap() > 100 && outcome.duration_ms.unwrap() > 0,
        "{outcome:?}"
    );
    for i in 0..5 {
        assert!(log
            .iter()
            .any(|r| r.stream == LogStream::Stdout && r.line == format!("building step {i}")));
    }
    assert!(log
        .iter()
        .any(|r| r.stream == LogStream::Stderr && r.line.contains("this goes to stderr")));
    // Lines arrive in the order they were written.
    let steps: Vec<_> = log
        .iter()
        .filter(|r| r.line.starts_with("building step"))
        .map(|r| r.line.clone())
        .collect();
    assert_eq!(
        steps,
        (0..5)
            .map(|i| format!("building step {i}"))
            .collect::<Vec<_>>()
    );

    let status = gd.status(&id).await;
    assert_eq!(status["status"], "ready");
    assert_eq!(status["commit"].as_str().unwrap().len(), 40);

    for (path, bytes, content_type) in [
        ("/", "<h1>built by npm</h1>", "text/html; charset=utf-8"),
        (
            "/index.html",
            "<h1>built by npm</h1>",
            "text/html; charset=utf-8",
        ),
        ("/docs/", "<h1>docs</h1>", "text/html; charset=utf-8"),
        (
            "/docs/deep/page.html",
            "<p>deep page</p>",
            "text/html; charset=utf-8",
        ),
        (
            "/app.js",
            "console.log(\"app\")",
            "text/javascript; charset=utf-8",
        ),
        (
            "/style.css",
            "body { color: teal }",
            "text/css; charset=utf-8",
        ),
        (
            "/data.json",
            "{\"ok\":true}",
            "application/json; charset=utf-8",
        ),
        (
            "/logo.svg",
            "<svg xmlns=\"http://www.w3.org/2000/svg\"/>",
            "image/svg+xml; charset=utf-8",
        ),
    ] {
        // Twice: the first streams from S3, the second may come from the object cache.
        for _ in 0..2 {
            let resp = gd.site(Method::GET, &id, path).send().await.unwrap();
            assert_eq!(resp.status(), 200, "{path}");
            assert_eq!(resp.headers()["content-type"], content_type, "{path}");
            assert_eq!(resp.headers()["x-content-type-options"], "nosniff");
            assert!(resp.headers().get("x-amz-request-id").is_none());
            assert_eq!(resp.text().await.unwrap(), bytes, "{path}");
        }
    }

    // The site's own 404 page, with status 404, for a missing page at any depth.
    for path in ["/missing", "/docs/deep/missing.html", "/src/ignored.txt"] {
        let resp = gd.site(Method::GET, &id, path).send().await.unwrap();
        assert_eq!(resp.status(), 404, "{path}");
        assert_eq!(resp.text().await.unwrap(), "<h1>custom not found</h1>");
    }
    // A directory without its slash redirects.
    let resp = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(gd.api("/docs?x=1"))
        .header("host", format!("{id}.localhost"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 308);
    assert_eq!(resp.headers()["location"], "/docs/?x=1");

    // HEAD: GET's headers, no body.
    let resp = gd
        .site(Method::HEAD, &id, "/style.css")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-length"], "20");
    assert_eq!(resp.text().await.unwrap(), "");
    // Conditional request: 304 from the manifest's ETag.
    let etag = gd
        .site(Method::GET, &id, "/app.js")
        .send()
        .await
        .unwrap()
        .headers()["etag"]
        .clone();
    let resp = gd
        .site(Method::GET, &id, "/app.js")
        .header("if-none-match", etag)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 304);
    // Only GET and HEAD.
    let resp = gd.site(Method::POST, &id, "/").send().await.unwrap();
    assert_eq!(resp.status(), 405);
    assert_eq!(resp.headers()["allow"], "GET, HEAD");
    // Traversal and encoded tricks are refused before anything is looked up.
    let host = format!("{id}.localhost");
    for path in [
        "/../../etc/passwd",
        "/%2e%2e/%2e%2e/etc/passwd",
        "/docs/..%2findex.html",
        "/a%5c..%5cb",
        "/x%00.html",
        "/a//b",
        "/./index.html",
    ] {
        assert_eq!(gd.raw_get_status(&host, path), 400, "{path}");
    }
    // Unknown deployment, unknown project label and foreign hosts are 404, not proxied anywhere.
    for host in [
        "zzzzzzzzzzz9.localhost",
        "no-such-project.localhost",
        "example.com",
        "a.b.localhost",
    ] {
        let resp = gd
            .http()
            .get(gd.api("/"))
            .header("host", host)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 404, "{host}");
        assert!(resp.text().await.unwrap().contains("<h1>404"));
    }

    // The embedded S3 holds the files but refuses anyone without the key.
    let unsigned = gd
        .http()
        .get(format!("{}/gitdeploy/manifests/{id}.json", gd.s3_endpoint))
        .send()
        .await
        .unwrap();
    assert_eq!(unsigned.status(), 403);
    let listing = gd
        .http()
        .get(format!("{}/gitdeploy", gd.s3_endpoint))
        .send()
        .await
        .unwrap();
    assert_eq!(listing.status(), 403);

    // The NDJSON log endpoint returns the same records as the WebSocket.
    let ndjson = gd
        .http()
        .get(gd.api(&format!("/api/deployments/{id}/logs")))
        .send()
        .await
        .unwrap();
    assert_eq!(ndjson.headers()["content-type"], "application/x-ndjson");
    let text = ndjson.text().await.unwrap();
    let lines: Vec<gitdeploy_core::LogRecord> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines, log);
    // The complete log is archived in the bucket, beside the site.
    let archived =
        std::fs::read_to_string(data.path().join(format!("s3/gitdeploy/logs/{id}.ndjson")))
            .unwrap();
    assert_eq!(archived, text);
    // A follower that arrives after the end gets the whole log, and can start mid-way.
    assert_eq!(gd.follow(&id, 0).await, log);
    assert_eq!(gd.follow(&id, 3).await, log[3..].to_vec());
    // In batch mode the same records arrive, in fewer frames (the log is complete: it is all
    // ready at once).
    let (batched, frames) = gd.follow_with(&id, 0, true).await;
    assert_eq!(batched, log);
    assert!(
        frames < log.len(),
        "{frames} frames for {} records",
        log.len()
    );
    assert_eq!(gd.follow_with(&id, 3, true).await.0, log[3..].to_vec());
    assert_eq!(gd.follow_with(&id, 0, false).await.1, log.len());
}

#[tokio::test]
async fn plain_html_repo_is_served_from_its_root_without_dotfiles() {
    let mut git = GitServer::new();
    git.add_repo(
        "plain",
        &[
            ("index.html", "<h1>plain</h1>"),
            ("about.html", "<h1>about</h1>"),
            ("img/pixel.png", "\u{89}PNG"),
            (".env", "SECRET=should-not-be-served"),
            (
                ".well-known/security.txt",
                "Contact: mailto:sec@example.com",
            ),
        ],
    );
    git.start();
    let data = tempfile::tempdir().unwrap();
    let gd = Gitdeploy::start(data.path()).await;
    // The original route still works.
    let resp = gd
        .http()
        .post(gd.api("/deploy"))
        .json(&json!({"repo": git.url("plain")}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let id = resp.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let log = gd.follow(&id, 0).await;
    assert_complete_log(&log);
    assert_eq!(
        log.last().unwrap().outcome.as_ref().unwrap().status,
        DeploymentStatus::Ready,
        "{log:#?}"
    );
    assert!(log.iter().any(|r| r.line.contains("no package.json")));

    for (path, body) in [
        ("/", "<h1>plain</h1>"),
        ("/about", "<h1>about</h1>"),
        (
            "/.well-known/security.txt",
            "Contact: mailto:sec@example.com",
        ),
    ] {
        let resp = gd.site(Method::GET, &id, path).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        assert_eq!(resp.text().await.unwrap(), body, "{path}");
    }
    // Dotfiles were not published, and plain static files get real 404s (no SPA fallback).
    for path in ["/.env", "/.git/config", "/no/such/page"] {
        let resp = gd.site(Method::GET, &id, path).send().await.unwrap();
        assert_eq!(resp.status(), 404, "{path}");
    }
    let resp = gd
        .site(Method::GET, &id, "/missing.css")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let resp = gd
        .site(Method::GET, &id, "/img/pixel.png")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "image/png");
    assert_eq!(resp.bytes().await.unwrap().as_ref(), "\u{89}PNG".as_bytes());
}

#[tokio::test]
async fn failing_builds_report_why_and_serve_nothing() {
    let mut git = GitServer::new();
    git.add_repo(
        "fails",
        &[
            (
                "package.json",
                r#"{"name":"fails","version":"1.0.0","scripts":{"build":"node build.js"}}"#,
            ),
            ("build.js", "console.log('about to fail'); process.exit(1);"),
        ],
    );
    git.add_repo(
        "no-output",
        &[(
            "package.json",
            r#"{"name":"no-output","version":"1.0.0","scripts":{"build":"node -e 0"}}"#,
        )],
    );
    git.start();
    let data = tempfile::tempdir().unwrap();
    let gd = Gitdeploy::start(data.path()).await;

    let cases = [
        (
            git.url("fails"),
            "`npm run build` exited with code 1",
            Some(1),
        ),
        (git.url("no-output"), "no output directory", None),
        (
            git.url("does-not-exist"),
            "`git` exited with code",
            Some(128),
        ),
    ];
    for (repo, reason, exit_code) in cases {
        let id = gd.deploy_repo(&repo).await;
        let log = gd.follow(&id, 0).await;
        assert_complete_log(&log);
        let outcome = log.last().unwrap().outcome.clone().unwrap();
        assert_eq!(outcome.status, DeploymentStatus::Failed, "{repo}");
        assert!(
            outcome.error.as_deref().unwrap().contains(reason),
            "{repo}: {outcome:?}"
        );
        assert_eq!(outcome.exit_code, exit_code, "{repo}");
        assert!(
            log.iter().any(|r| r.line.contains(reason)),
            "{repo}: reason not in log"
        );
        let status = gd.status(&id).await;
        assert_eq!(status["status"], "failed");
        assert!(status["error"].as_str().unwrap().contains(reason));
        let resp = gd.site(Method::GET, &id, "/").send().await.unwrap();
        assert_eq!(
            resp.status(),
            404,
            "{repo}: a failed deployment must serve nothing"
        );
    }
    assert!(gd
        .follow(&gd.deploy_repo(&git.url("fails")).await, 0)
        .await
        .iter()
        .any(|r| r.line == "about to fail"));
}

#[tokio::test]
async fn bad_requests_get_clear_errors_and_run_nothing() {
    let data = tempfile::tempdir().unwrap();
    let gd = Gitdeploy::start(data.path()).await;
    let post = |body: &'static str| {
        gd.http()
            .post(gd.api("/api/deployments"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    for (body, code) in [
        ("{not json", "invalid_body"),
        ("", "invalid_body"),
        ("{}", "missing_field"),
        (r#"{"repo": 42}"#, "invalid_body"),
        (
            r#"{"repo": "ext::sh -c touch% /tmp/pwned"}"#,
            "invalid_repo",
        ),
        (
            r#"{"repo": "--upload-pack=touch /tmp/pwned"}"#,
            "invalid_repo",
        ),
        (r#"{"repo": "fd::7"}"#, "invalid_repo"),
        (r#"{"repo": "ssh://git@example.com/r.git"}"#, "invalid_repo"),
        (r#"{"repo": "git@example.com:r.git"}"#, "invalid_repo"),
        (r#"{"repo": "relative/path"}"#, "invalid_repo"),
        (
            r#"{"repo": "https://example.com/r", "ref": "--output=/etc/x"}"#,
            "invalid_ref",
        ),
        (
            r#"{"repo": "https://example.com/r", "project": "Bad_Name"}"#,
            "invalid_project",
        ),
        (
            r#"{"repo": "https://example.com/r", "project": "abcdef123456"}"#,
            "invalid_project",
        ),
    ] {
        let resp = post(body).await.unwrap();
        assert_eq!(resp.status(), 400, "{body}");
        let json: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(json["error"]["code"], code, "{body}: {json}");
        assert!(!json["error"]["message"].as_str().unwrap().is_empty());
    }
    // Nothing was queued by any of them.
    let list: serde_json::Value = gd.get_json("/api/deployments").await;
    assert_eq!(list["deployments"].as_array().unwrap().len(), 0);

    for path in [
        "/api/deployments/zzzzzzzzzzz9",
        "/api/deployments/not-an-id",
        "/api/deployments/zzzzzzzzzzz9/logs",
        "/api/nope",
    ] {
        let resp = gd.http().get(gd.api(path)).send().await.unwrap();
        assert_eq!(resp.status(), 404, "{path}");
        assert_eq!(
            resp.json::<serde_json::Value>().await.unwrap()["error"]["code"],
            "not_found"
        );
    }
    // An oversized body is refused.
    let big = format!(
        r#"{{"repo": "https://example.com/{}"}}"#,
        "a".repeat(100_000)
    );
    let resp = gd
        .http()
        .post(gd.api("/api/deployments"))
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
}

#[tokio::test]
async fn a_restart_keeps_sites_served_and_logs_readable() {
    let mut git = GitServer::new();
    git.add_repo("npm-site", &npm_site());
    git.start();
    let data = tempfile::tempdir().unwrap();
    let gd = Gitdeploy::start(data.path()).await;
    let id = gd.deploy_repo(&git.url("npm-site")).await;
    let log = gd.follow(&id, 0).await;
    assert_eq!(
        log.last().unwrap().outcome.as_ref().unwrap().status,
        DeploymentStatus::Ready
    );
    gd.kill();

    let gd = Gitdeploy::start(data.path()).await;
    let resp = gd
        .site(Method::GET, &id, "/docs/deep/page.html")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "<p>deep page</p>");
    assert_eq!(gd.status(&id).await["status"], "ready");
    assert_eq!(gd.follow(&id, 0).await, log);
    let list: serde_json::Value = gd.get_json("/api/deployments").await;
    assert_eq!(list["deployments"][0]["id"], id.as_str());
}

#[tokio::test]
async fn cli_deploy_follows_the_log_and_exits_with_the_outcome() {
    let mut git = GitServer::new();
    git.add_repo("npm-site", &npm_site());
    git.add_repo(
        "fails",
        &[
            (
                "package.json",
                r#"{"name":"fails","version":"1.0.0","scripts":{"build":"node build.js"}}"#,
            ),
            ("build.js", "process.exit(3);"),
        ],
    );
    git.start();
    let data = tempfile::tempdir().unwrap();
    let gd = Gitdeploy::start(data.path()).await;
    let cli = |repo: String| {
        let api = gd.api("");
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_gitdeploy"))
                .args(["deploy", &repo, "--follow", "--api", &api])
                .output()
                .unwrap()
        })
    };
    let ok = cli(git.url("npm-site")).await.unwrap();
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert_eq!(ok.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("building step 4"), "{stdout}");
    let url = stdout
        .lines()
        .last()
        .unwrap()
        .strip_prefix("Ready: ")
        .unwrap();
    assert!(
        url.starts_with("http://") && url.contains(".localhost:"),
        "{url}"
    );

    let failed = cli(git.url("fails")).await.unwrap();
    assert_eq!(failed.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&failed.stderr).contains("exited with code 3"));

    let refused = cli("ext::sh".into()).await.unwrap();
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("transport helpers"));
}

#[tokio::test]
async fn metrics_describe_builds_requests_and_logs() {
    let mut git = GitServer::new();
    git.add_repo("npm-site", &npm_site());
    git.start();
    let data = tempfile::tempdir().unwrap();
    let gd = Gitdeploy::start(data.path()).await;
    let id = gd.deploy_repo(&git.url("npm-site")).await;
    let log = gd.follow(&id, 0).await;
    assert_eq!(
        log.last().unwrap().outcome.as_ref().unwrap().status,
        DeploymentStatus::Ready
    );
    for _ in 0..3 {
        assert_eq!(
            gd.site(Method::GET, &id, "/")
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
    assert_eq!(
        gd.site(Method::GET, &id, "/missing.css")
            .send()
            .await
            .unwrap()
            .status(),
        404
    );

    assert_eq!(gd.metric("gitdeploy_builds_started_total").await, 1.0);
    assert_eq!(
        gd.metric(r#"gitdeploy_builds_finished_total{outcome="ready"}"#)
            .await,
        1.0
    );
    for phase in ["clone", "install", "build", "upload"] {
        let series = format!(r#"gitdeploy_build_phase_duration_seconds_count{{phase="{phase}"}}"#);
        assert_eq!(gd.metric(&series).await, 1.0, "{phase}");
    }
    assert_eq!(gd.metric("gitdeploy_build_queue_depth").await, 0.0);
    assert_eq!(gd.metric("gitdeploy_builds_running").await, 0.0);
    assert_eq!(
        gd.metric("gitdeploy_log_lines_published_total").await,
        log.len() as f64
    );
    assert_eq!(gd.metric("gitdeploy_log_followers").await, 0.0);
    // index.html once from S3 then twice from the cache; the site's 404.html once from S3.
    assert_eq!(
        gd.metric(r#"gitdeploy_object_cache_requests_total{result="miss"}"#)
            .await,
        2.0
    );
    assert_eq!(
        gd.metric(r#"gitdeploy_object_cache_requests_total{result="hit"}"#)
            .await,
        2.0
    );
    assert_eq!(
        gd.metric(r#"gitdeploy_edge_requests_total{cache="hit",status_class="2xx"}"#)
            .await,
        2.0
    );
    assert_eq!(
        gd.metric(r#"gitdeploy_edge_requests_total{cache="miss",status_class="2xx"}"#)
            .await,
        1.0
    );
    assert_eq!(
        gd.metric(r#"gitdeploy_edge_requests_total{cache="miss",status_class="4xx"}"#)
            .await,
        1.0
    );
    assert_eq!(
        gd.metric(r#"gitdeploy_manifest_lookups_total{result="loaded"}"#)
            .await,
        1.0
    );
    assert!(gd.metric("gitdeploy_edge_response_bytes_total").await > 0.0);

    // The exposition passes Prometheus's own linter.
    let text = gd.scrape().await;
    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool is needed (apt-get install prometheus)");
    use std::io::Write;
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
