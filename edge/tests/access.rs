//! Access and back-pressure: API tokens (header or query parameter, sites stay public), log
//! streaming over Server-Sent Events with resume, and a full build queue answering 429.

mod common;

use common::{GitServer, Gitdeploy};
use futures_util::StreamExt;
use reqwest::Method;
use serde_json::{json, Value};

const TOKEN: &str = "a-long-enough-test-token";

/// Reads an SSE response to its end; returns (id, data) per event.
async fn sse_events(resp: reqwest::Response) -> Vec<(u64, Value)> {
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut text = String::new();
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
    }
    text.split("\n\n")
        .filter_map(|event| {
            let mut id = None;
            let mut data = None;
            for line in event.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    id = v.trim().parse().ok();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data = serde_json::from_str(v.trim()).ok();
                }
            }
            Some((id?, data?))
        })
        .collect()
}

#[tokio::test]
async fn tokens_guard_the_api_and_logs_stream_over_sse() {
    let mut git = GitServer::new();
    git.add_repo("site", &[("index.html", "public site")]);
    git.start();
    let data = tempfile::tempdir().unwrap();
    let gd = Gitdeploy::start_with(data.path(), &["--api-token", TOKEN]).await;
    let http = gd.http();

    // Health stays open; everything else needs the token.
    assert_eq!(
        http.get(gd.api("/api/health"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    for (method, path) in [
        (Method::GET, "/api/deployments"),
        (Method::POST, "/api/deployments"),
        (Method::GET, "/api/projects"),
    ] {
        let resp = http
            .request(method.clone(), gd.api(path))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401, "{method} {path}");
        assert_eq!(resp.headers()["www-authenticate"], "Bearer");
        let resp = http
            .request(method.clone(), gd.api(path))
            .bearer_auth("wrong-token-of-some-length")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401, "{method} {path} with a wrong token");
    }
    let resp = http
        .post(gd.api("/api/deployments"))
        .bearer_auth(TOKEN)
        .json(&json!({"repo": git.url("site")}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let id = resp.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // SSE to the end, with the token in the header.
    let resp = http
        .get(gd.api(&format!("/api/deployments/{id}/logs?follow=1")))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    let events = sse_events(resp).await;
    let seqs: Vec<u64> = events.iter().map(|(id, _)| *id).collect();
    assert_eq!(seqs, (0..events.len() as u64).collect::<Vec<_>>());
    assert_eq!(events.last().unwrap().1["outcome"]["status"], "ready");
    // A reconnect with Last-Event-ID resumes right after it; EventSource clients pass the token
    // as a query parameter.
    let resp = http
        .get(gd.api(&format!(
            "/api/deployments/{id}/logs?follow=1&access_token={TOKEN}"
        )))
        .header("last-event-id", "2")
        .send()
        .await
        .unwrap();
    let resumed = sse_events(resp).await;
    assert_eq!(resumed.first().unwrap().0, 3);
    assert_eq!(resumed.len(), events.len() - 3);
    // The WebSocket takes the token the same way.
    let url = format!(
        "ws://127.0.0.1:{}/api/deployments/{id}/logs/ws?access_token={TOKEN}",
        gd.port
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let mut count = 0;
    while let Some(Ok(msg)) = ws.next().await {
        if msg.is_text() {
            count += 1;
        }
    }
    assert_eq!(count, events.len());
    let denied = format!("ws://127.0.0.1:{}/api/deployments/{id}/logs/ws", gd.port);
    assert!(tokio_tungstenite::connect_async(denied).await.is_err());

    // Sites stay public.
    let resp = gd.site(Method::GET, &id, "/").send().await.unwrap();
    assert_eq!(resp.text().await.unwrap(), "public site");

    // `gitdeploy login` checks and saves a token (0600) that later commands use.
    let config = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_gitdeploy"))
            .args(args)
            .args(["--api", &gd.api("")])
            .env("XDG_CONFIG_HOME", config.path())
            .env_remove("GITDEPLOY_TOKEN")
            .output()
            .unwrap()
    };
    assert_eq!(run(&["ls"]).status.code(), Some(2), "no token yet");
    assert_eq!(
        run(&["login", "--token", "not-the-right-token-at-all"])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(run(&["login", "--token", TOKEN]).status.code(), Some(0));
    let saved = config.path().join("gitdeploy/token");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&saved).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let listed = run(&["ls", "--json"]);
    assert_eq!(
        listed.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );

    // The CLI sends the token it is given.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gitdeploy"))
        .args(["deploy", &git.url("site"), "--follow", "--api", &gd.api("")])
        .env("GITDEPLOY_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn an_open_api_is_refused_off_loopback_and_a_full_queue_answers_429() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gitdeploy"))
        .args(["up", "--listen", "0.0.0.0:0", "--data-dir"])
        .arg(tempfile::tempdir().unwrap().path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("refusing to serve an open API"));

    let mut git = GitServer::new();
    git.add_repo(
        "slow",
        &[(
            "build.sh",
            "sleep 3; mkdir -p out; echo ok > out/index.html\n",
        )],
    );
    git.start();
    let data = tempfile::tempdir().unwrap();
    let gd = Gitdeploy::start_with(data.path(), &["--concurrency", "1", "--max-queued", "1"]).await;
    let body = json!({"repo": git.url("slow"), "build": {"build_command": "sh build.sh", "output_dir": "out"}});
    let (status, first) = gd.deploy(body.clone()).await;
    assert_eq!(status, 202);
    // Wait (bounded) until the first build holds the only runner slot.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while gd.status(first["id"].as_str().unwrap()).await["status"] != "building" {
        assert!(
            std::time::Instant::now() < deadline,
            "the first build never started"
        );
        tokio::task::yield_now().await;
    }
    let (status, _) = gd.deploy(body.clone()).await;
    assert_eq!(status, 202, "one build may wait");
    let resp = gd
        .http()
        .post(gd.api("/api/deployments"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "30");
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err["error"]["code"], "queue_full");
    assert_eq!(gd.metric("gitdeploy_build_queue_depth").await, 1.0);
}

/// Requests that cost (changes, log streams) are limited per client: over the rate, 429 with
/// Retry-After; reads and other clients are unaffected.
#[tokio::test]
async fn each_client_is_held_to_its_rate() {
    let data = tempfile::tempdir().unwrap();
    let gd = Gitdeploy::start_with(
        data.path(),
        &["--api-rate-burst", "3", "--api-rate-per-second", "0.01"],
    )
    .await;
    let deploy = |client: Option<&'static str>| {
        let mut req = gd
            .http()
            .post(gd.api("/api/deployments"))
            .json(&json!({"repo": "ftp://nowhere"}));
        if let Some(ip) = client {
            // The test's connection comes from loopback, a proxy the edge trusts.
            req = req.header("x-forwarded-for", ip);
        }
        req.send()
    };
    for _ in 0..3 {
        // Refused input costs too (it is work for the server).
        assert_eq!(deploy(None).await.unwrap().status(), 400);
    }
    let limited = deploy(None).await.unwrap();
    assert_eq!(limited.status(), 429);
    let wait: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=100).contains(&wait), "{wait}");
    let body: Value = limited.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
    // Reads are free; another client has its own budget.
    let list = gd
        .http()
        .get(gd.api("/api/deployments"))
        .send()
        .await
        .unwrap();
    assert_eq!(list.status(), 200);
    assert_eq!(deploy(Some("198.51.100.7")).await.unwrap().status(), 400);
}
