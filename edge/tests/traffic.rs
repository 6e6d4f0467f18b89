//! Per-project traffic through the real servers: every edge counts the requests of each
//! project and stores them, so `GET /api/projects/{name}/traffic` on any edge shows what all of
//! them served (requests, bytes, status classes, top paths), with no Prometheus label per
//! project.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use reqwest::Method;
use serde_json::{json, Value};

const FLUSH: &[&str] = &["--traffic-flush-interval-ms", "50"];

async fn traffic(gd: &Gitdeploy, project: &str) -> (u16, Value) {
    let resp = gd
        .http()
        .get(gd.api(&format!("/api/projects/{project}/traffic")))
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

/// Polls until the last hour shows `requests` requests.
async fn until_counted(gd: &Gitdeploy, project: &str, requests: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = traffic(gd, project).await;
        assert_eq!(status, 200, "{body}");
        if body["hour"]["requests"] == requests {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "never counted {requests} requests: {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn get(gd: &Gitdeploy, label: &str, path: &str) -> u16 {
    let resp = gd.site(Method::GET, label, path).send().await.unwrap();
    let status = resp.status().as_u16();
    resp.bytes().await.unwrap();
    status
}

#[tokio::test]
async fn a_projects_traffic_by_status_bytes_and_path() {
    let mut server = GitServer::new();
    server.add_repo("counted", &[("index.html", "0123456789"), ("a.html", "a")]);
    server.start();
    let data = tempfile::tempdir().unwrap();
    let gd = Gitdeploy::start_with(data.path(), FLUSH).await;
    let (id, _) = deploy_and_follow(
        &gd,
        json!({"repo": server.url("counted"), "project": "counted"}),
    )
    .await;
    let (status, body) = traffic(&gd, "counted").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["hour"]["requests"], 0);
    assert_eq!(body["bucket_secs"], 300);

    for _ in 0..5 {
        assert_eq!(get(&gd, "counted", "/").await, 200);
    }
    assert_eq!(get(&gd, "counted", "/a.html").await, 200);
    assert_eq!(get(&gd, "counted", "/missing").await, 404);
    // Through the deployment's own address: the manifest names the project.
    assert_eq!(get(&gd, &id, "/").await, 200);
    // Another project's and the API's requests are not this project's.
    assert_eq!(get(&gd, "nothing", "/").await, 404);

    let body = until_counted(&gd, "counted", 8).await;
    let hour = &body["hour"];
    assert_eq!(hour["status"]["2xx"], 7, "{body}");
    assert_eq!(hour["status"]["4xx"], 1, "{body}");
    let bytes = hour["bytes"].as_u64().unwrap();
    // Six index pages, a.html and the 404 page.
    assert!(bytes > 6 * 10 + 1, "{body}");
    assert_eq!(
        hour["top_paths"][0],
        json!({"path": "/", "requests": 6}),
        "{body}"
    );
    let paths: Vec<&str> = hour["top_paths"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["path"].as_str().unwrap())
        .collect();
    assert!(
        paths.contains(&"/a.html") && paths.contains(&"/missing"),
        "{paths:?}"
    );
    assert_eq!(body["day"], body["hour"]);
    // No such project: 404, and no per-project series in Prometheus.
    assert_eq!(traffic(&gd, "nothing").await.0, 404);
    assert!(!gd.scrape().await.contains("counted"));
}

async fn edge(redis: &Redis, s3: &S3Server, data: &Path) -> Gitdeploy {
    let mut flags = vec!["--redis-url", &redis.url, "--s3-endpoint", &s3.endpoint];
    flags.extend_from_slice(FLUSH);
    Gitdeploy::start_with_env(
        data,
        &flags,
        &[
            ("AWS_ACCESS_KEY_ID", S3_KEY.0),
            ("AWS_SECRET_ACCESS_KEY", S3_KEY.1),
        ],
    )
    .await
}

#[tokio::test]
async fn edges_sharing_redis_add_up_each_others_traffic() {
    let mut server = GitServer::new();
    server.add_repo("shared", &[("index.html", "hi")]);
    server.start();
    let redis = Redis::start();
    let s3 = s3_server();
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let one = edge(&redis, &s3, d1.path()).await;
    let two = edge(&redis, &s3, d2.path()).await;
    deploy_and_follow(
        &one,
        json!({"repo": server.url("shared"), "project": "shared"}),
    )
    .await;
    for _ in 0..3 {
        assert_eq!(get(&one, "shared", "/").await, 200);
    }
    for _ in 0..4 {
        assert_eq!(get(&two, "shared", "/x").await, 404);
    }
    // Either edge answers with both edges' counts.
    let body = until_counted(&one, "shared", 7).await;
    assert_eq!(body["hour"]["status"]["2xx"], 3, "{body}");
    assert_eq!(body["hour"]["status"]["4xx"], 4, "{body}");
    assert_eq!(
        body["hour"]["top_paths"],
        json!([{"path": "/x", "requests": 4}, {"path": "/", "requests": 3}])
    );
    assert_eq!(until_counted(&two, "shared", 7).await["hour"], body["hour"]);
}
