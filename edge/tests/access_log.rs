//! Access logs through the real server: one JSON line per request with the fields the README
//! documents, the client behind trusted proxies, sampling, and the S3 drain's hourly gzip
//! objects, which hold every record once a graceful shutdown (SIGTERM) has finished.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use reqwest::Method;
use serde_json::{json, Value};

fn lines_of(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// Every record the drain stored in the embedded S3 (under `data/s3/gitdeploy/access-logs/`),
/// with the keys they came from.
fn stored_records(data: &Path) -> (Vec<PathBuf>, Vec<String>) {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else {
                out.push(path);
            }
        }
    }
    let root = data.join("s3/gitdeploy/access-logs");
    let mut objects = Vec::new();
    walk(&root, &mut objects);
    objects.retain(|p| p.to_string_lossy().ends_with(".ndjson.gz"));
    objects.sort();
    let mut lines = Vec::new();
    for object in &objects {
        let mut text = String::new();
        flate2::read::GzDecoder::new(std::fs::File::open(object).unwrap())
            .read_to_string(&mut text)
            .unwrap();
        lines.extend(text.lines().map(str::to_owned));
    }
    let keys = objects
        .iter()
        .map(|p| p.strip_prefix(&root).unwrap().to_owned())
        .collect();
    (keys, lines)
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn every_request_is_logged_and_a_graceful_stop_stores_them_all() {
    let mut server = GitServer::new();
    server.add_repo("logged", &[("index.html", "hello")]);
    server.start();
    let data = tempfile::tempdir().unwrap();
    let file = data.path().join("access.log");
    let file_flag = file.display().to_string();
    // An hour between uploads: only the shutdown stores the batch.
    let gd = Gitdeploy::start_with(
        data.path(),
        &[
            "--access-log",
            &file_flag,
            "--access-log-s3",
            "--access-log-s3-interval",
            "3600",
        ],
    )
    .await;
    let (id, _) = deploy_and_follow(
        &gd,
        json!({"repo": server.url("logged"), "project": "logged"}),
    )
    .await;
    // Our requests carry `probe` in their user agent (the deploy's own API calls are logged too).
    let probe = |method: Method, label: &str, path: &str| {
        gd.site(method, label, path)
            .header("user-agent", "probe")
            .send()
    };

    // Through its own address, the manifest names the project.
    let resp = gd
        .site(Method::GET, &id, "/")
        .header("user-agent", "probe \"quoted\" {json}")
        .header("referer", "https://example.org/from")
        .header("x-forwarded-for", "203.0.113.9, 198.51.100.23")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.text().await.unwrap(), "hello");
    // The query string (which may carry a token) is not logged.
    let status = |r: reqwest::Response| r.status().as_u16();
    let page = probe(Method::GET, "logged", "/index.html?token=s3cr3t");
    assert_eq!(status(page.await.unwrap()), 200);
    assert_eq!(
        status(probe(Method::GET, "logged", "/missing").await.unwrap()),
        404
    );
    assert_eq!(
        status(probe(Method::HEAD, "logged", "/").await.unwrap()),
        200
    );
    assert_eq!(
        status(probe(Method::GET, "nosuchproject", "/").await.unwrap()),
        404
    );
    let health = gd
        .http()
        .get(gd.api("/api/health"))
        .header("user-agent", "probe");
    assert_eq!(status(health.send().await.unwrap()), 200);

    let probes = |text: &str| {
        lines_of(text)
            .into_iter()
            .filter(|r| {
                r["user_agent"]
                    .as_str()
                    .is_some_and(|a| a.starts_with("probe"))
            })
            .collect::<Vec<_>>()
    };
    wait_for("six records", || {
        probes(&std::fs::read_to_string(&file).unwrap_or_default()).len() >= 6
    })
    .await;
    let text = std::fs::read_to_string(&file).unwrap();
    let records = lines_of(&text);
    let ours = &probes(&text);
    assert_eq!(ours.len(), 6);
    let first = &ours[0];
    assert_eq!(first["host"], format!("{id}.localhost"));
    assert_eq!(first["project"], "logged");
    assert_eq!(first["deployment"], id.as_str());
    assert_eq!(first["method"], "GET");
    assert_eq!(first["path"], "/");
    assert_eq!(first["protocol"], "HTTP/1.1");
    assert_eq!(first["status"], 200);
    assert_eq!(first["bytes"], 5);
    assert_eq!(first["cache"], "miss");
    // Loopback is a trusted proxy by default: the rightmost untrusted hop is the client.
    assert_eq!(first["client"], "198.51.100.23");
    assert_eq!(first["user_agent"], "probe \"quoted\" {json}");
    assert_eq!(first["referer"], "https://example.org/from");
    assert!(first["duration_ms"].as_f64().unwrap() >= 0.0);
    let time = first["time"].as_str().unwrap();
    assert!(
        time.len() == 24 && time.ends_with('Z') && time.as_bytes()[10] == b'T',
        "{time}"
    );

    let second = &ours[1];
    assert_eq!(second["host"], "logged.localhost");
    assert_eq!(second["path"], "/index.html");
    assert_eq!(second["project"], "logged");
    assert_eq!(second["client"], "127.0.0.1");
    assert!(!text.contains("s3cr3t"), "the query string is not logged");
    assert_eq!(
        (ours[2]["status"].clone(), ours[2]["path"].clone()),
        (json!(404), json!("/missing"))
    );
    assert_eq!(
        (ours[3]["method"].clone(), ours[3]["bytes"].clone()),
        (json!("HEAD"), json!(0))
    );
    // No such project: neither project nor deployment.
    assert_eq!(ours[4]["status"], 404);
    assert_eq!(ours[4]["project"], Value::Null);
    assert_eq!(ours[4]["deployment"], Value::Null);
    // The control plane's requests are logged too.
    assert_eq!(ours[5]["host"], "127.0.0.1");
    assert_eq!(ours[5]["path"], "/api/health");
    assert_eq!(ours[5]["deployment"], Value::Null);

    let written = gd
        .metric("gitdeploy_access_log_records_total{outcome=\"written\"}")
        .await;
    // The scrape itself is on the metrics port, which is not logged.
    assert_eq!(written, records.len() as f64);
    assert_eq!(
        gd.metric("gitdeploy_access_log_records_total{outcome=\"dropped\"}")
            .await,
        0.0
    );
    let (keys, _) = stored_records(data.path());
    assert!(
        keys.is_empty(),
        "nothing is stored before the hour: {keys:?}"
    );

    // A graceful stop stores the batch: the bucket holds exactly the file's records.
    let status = gd.terminate().await;
    assert!(status.success(), "{status}");
    let (keys, stored) = stored_records(data.path());
    let file_lines: Vec<String> = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(stored, file_lines, "{keys:?}");
    let key = keys[0].to_string_lossy().into_owned();
    let hour = &time[..13].replace(['-', 'T'], "/");
    assert!(key.starts_with(hour.as_str()), "{key} is not under {hour}");
}

#[tokio::test]
async fn sampling_the_trusted_proxies_and_timed_uploads() {
    let data = tempfile::tempdir().unwrap();
    let gd = Gitdeploy::start_with(
        data.path(),
        &[
            "--access-log-s3",
            "--access-log-s3-interval",
            "1",
            "--access-log-sample",
            "0.25",
            "--trusted-proxy",
            "none",
        ],
    )
    .await;
    for i in 0..40 {
        let resp = gd
            .site(Method::GET, "nothing-here", &format!("/{i}"))
            .header("x-forwarded-for", "198.51.100.1")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 404);
    }
    // Stored while running, within the interval.
    wait_for("ten records in the bucket", || {
        stored_records(data.path()).1.len() >= 10
    })
    .await;
    let (_, stored) = stored_records(data.path());
    assert_eq!(stored.len(), 10, "one request in four");
    let records = lines_of(&stored.join("\n"));
    // Evenly spaced (where the count starts depends on the requests before ours).
    let paths: Vec<u32> = records
        .iter()
        .map(|r| r["path"].as_str().unwrap()[1..].parse().unwrap())
        .collect();
    assert!(paths.windows(2).all(|w| w[1] == w[0] + 4), "{paths:?}");
    assert!(
        records.iter().all(|r| r["client"] == "127.0.0.1"),
        "no proxy is trusted: {records:?}"
    );
    // Counted once S3 has answered (which may be a moment after the object is on disk).
    let deadline = Instant::now() + Duration::from_secs(20);
    let shipped = "gitdeploy_access_log_records_total{outcome=\"shipped\"}";
    while gd.metric(shipped).await < 10.0 {
        assert!(Instant::now() < deadline, "never counted as shipped");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(gd.metric(shipped).await, 10.0);
    assert_eq!(
        gd.metric("gitdeploy_access_log_records_total{outcome=\"written\"}")
            .await,
        0.0,
        "no file"
    );
}

#[test]
fn bad_access_log_settings_are_refused_at_start() {
    let data = tempfile::tempdir().unwrap();
    let missing_dir = data.path().join("no/such/dir/access.log");
    for (flags, problem) in [
        (
            vec!["--access-log", "-", "--access-log-sample", "0"],
            "sample rate",
        ),
        (
            vec!["--access-log", "-", "--access-log-sample", "2"],
            "sample rate",
        ),
        (vec!["--access-log-sample", "0.5"], "needs an access log"),
        (
            vec!["--access-log-s3", "--access-log-s3-interval", "0"],
            "at least one second",
        ),
        (vec!["--trusted-proxy", "10.0.0.0/33"], "--trusted-proxy"),
        (
            vec!["--trusted-proxy", "none", "--trusted-proxy", "10.0.0.1"],
            "cannot be combined",
        ),
        (
            vec!["--access-log", missing_dir.to_str().unwrap()],
            "cannot open the access log",
        ),
    ] {
        let out = std::process::Command::new(gitdeploy_bin())
            .arg("up")
            .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(data.path())
            .args(&flags)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{flags:?} was accepted");
        assert!(
            stderr.contains(problem),
            "{flags:?}: {problem:?} not in {stderr}"
        );
    }
}
