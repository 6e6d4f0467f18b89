//! Health for load balancers (#20): `GET /api/health` is liveness (the process answers), and
//! `GET /api/ready` readiness: whether this edge reaches its state store (Redis) and its site
//! storage (S3), with the reason when not. Both answer without the API token, as a load
//! balancer's probe has none.

mod common;

use std::time::{Duration, Instant};

use common::{Gitdeploy, Redis, S3_KEY};
use serde_json::Value;

async fn get(gd: &Gitdeploy, path: &str) -> (u16, Value) {
    // A client without the token.
    let resp = reqwest::get(gd.api(path)).await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Waits (bounded) until readiness answers `want`.
async fn until_ready(gd: &Gitdeploy, want: u16) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = get(gd, "/api/ready").await;
        if status == want {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "readiness never answered {want}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn readiness_says_which_dependency_the_edge_cannot_reach() {
    let mut redis = Redis::start();
    let mut s3 = common::s3_server();
    let data = tempfile::tempdir().unwrap();
    let gd = Gitdeploy::start_with_env(
        data.path(),
        &[
            "--redis-url",
            &redis.url,
            "--s3-endpoint",
            &s3.endpoint,
            "--api-token",
            "a-token-of-enough-length",
        ],
        &[
            ("AWS_ACCESS_KEY_ID", S3_KEY.0),
            ("AWS_SECRET_ACCESS_KEY", S3_KEY.1),
        ],
    )
    .await;
    let (status, body) = get(&gd, "/api/ready").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        serde_json::json!({"ready": true, "checks": {"state": {"ok": true}, "storage": {"ok": true}}})
    );
    // The rest of the API still wants the token.
    assert_eq!(get(&gd, "/api/deployments").await.0, 401);

    // S3 down: not ready, saying so; still alive.
    s3.stop();
    let body = until_ready(&gd, 503).await;
    assert_eq!(body["ready"], false);
    assert_eq!(body["checks"]["state"]["ok"], true, "{body}");
    assert_eq!(body["checks"]["storage"]["ok"], false, "{body}");
    let why = body["checks"]["storage"]["error"].as_str().unwrap();
    assert!(why.contains("site storage"), "{why}");
    assert_eq!(get(&gd, "/api/health").await.0, 200);

    // Redis down too: both reasons; back up: the state check recovers by itself.
    redis.stop();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = get(&gd, "/api/ready").await;
        assert_eq!(status, 503);
        if body["checks"]["state"]["ok"] == false {
            let why = body["checks"]["state"]["error"].as_str().unwrap();
            assert!(why.contains("state store"), "{why}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the Redis outage never showed: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(get(&gd, "/api/health").await.0, 200);
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, body) = get(&gd, "/api/ready").await;
        if body["checks"]["state"]["ok"] == true {
            assert_eq!(body["checks"]["storage"]["ok"], false, "{body}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Redis came back but readiness never saw it: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_load_balancers_probe_by_address_is_answered() {
    // An AWS load balancer's health check names the target's address as its host.
    let data = tempfile::tempdir().unwrap();
    let gd = Gitdeploy::start_with(data.path(), &["--api-token", "a-token-of-enough-length"]).await;
    let probe = |host: &'static str, path: &str| {
        gd.http()
            .get(gd.api(path))
            .header("host", host)
            .header("user-agent", "ELB-HealthChecker/2.0")
            .send()
    };
    for (host, path) in [
        ("10.0.1.5:8080", "/api/ready"),
        ("10.0.1.5:8080", "/api/health"),
        ("[fd00::5]:8080", "/api/ready"),
    ] {
        let resp = probe(host, path).await.unwrap();
        assert_eq!(resp.status(), 200, "{host} {path}");
        let body: Value = resp.json().await.unwrap();
        assert!(body["ok"] == true || body["ready"] == true, "{body}");
    }
    // Nothing else of the control plane answers an address.
    for (host, path) in [
        ("10.0.1.5:8080", "/api/deployments"),
        ("10.0.1.5:8080", "/"),
        ("10.0.1.5:8080", "/api/ready/x"),
    ] {
        let status = probe(host, path).await.unwrap().status();
        assert_eq!(status, 404, "{host} {path}");
    }
}
