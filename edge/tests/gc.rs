//! Garbage collection of blobs through a real `gitdeploy up` (embedded S3): deleting a
//! deployment and collecting frees the blobs nothing else names and keeps the shared ones; the
//! grace keeps recent ones; and collections running again and again while a deploy reuses the
//! very blobs they would delete lose nothing (the publish's plan and its wait for running
//! collections, `builder::publish::gc`).

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use common::Gitdeploy;
use serde_json::Value;

async fn cli(gd: &Gitdeploy, args: &[&str]) -> String {
    let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    all.extend(["--api".to_owned(), gd.api("")]);
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_gitdeploy"))
            .args(&all)
            .env_remove("GITDEPLOY_TOKEN")
            .env("XDG_CONFIG_HOME", "/nonexistent")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Publishes `files` as a folder; returns the deployment id.
async fn publish(gd: &Gitdeploy, files: &[(String, String)]) -> String {
    let dir = tempfile::tempdir().unwrap();
    for (rel, body) in files {
        let path = dir.path().join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, body).unwrap();
    }
    let out = cli(gd, &["deploy", dir.path().to_str().unwrap(), "--prebuilt"]).await;
    out.split_whitespace().nth(1).unwrap().to_owned()
}

async fn collect(gd: &Gitdeploy) -> Value {
    let resp = gd.http().post(gd.api("/api/gc")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.json().await.unwrap()
}

async fn delete(gd: &Gitdeploy, id: &str) {
    let resp = gd
        .http()
        .delete(gd.api(&format!("/api/deployments/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
}

/// Dates every blob file of the embedded store two hours back; returns how many.
fn age_blobs(dir: &std::path::Path) -> usize {
    let then = std::time::SystemTime::now() - std::time::Duration::from_secs(7200);
    let mut aged = 0;
    let mut dirs = vec![(dir.to_owned(), false)];
    while let Some((dir, inside)) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let inside = inside || entry.file_name() == "blobs";
            let path = entry.path();
            if entry.file_type().unwrap().is_dir() {
                dirs.push((path, inside));
            } else if inside {
                let file = std::fs::File::options().write(true).open(&path).unwrap();
                file.set_modified(then).unwrap();
                aged += 1;
            }
        }
    }
    aged
}

fn text(seed: &str, i: usize) -> String {
    format!("<p>file {i} of {seed}</p>\n").repeat(60)
}

#[tokio::test]
async fn deleting_a_deployment_frees_the_blobs_nothing_else_names() {
    let data = tempfile::tempdir().unwrap();
    let gd = Gitdeploy::start_with(
        data.path(),
        &["--gc-grace-secs", "0", "--gc-interval-secs", "0"],
    )
    .await;
    let shared = ("shared.html".to_owned(), text("shared", 0));
    let a = publish(&gd, &[shared.clone(), ("a.html".into(), text("a", 1))]).await;
    let b = publish(&gd, &[shared.clone(), ("b.html".into(), text("b", 2))]).await;
    // Each page is a blob and two variants: 3 files, 9 blobs, all named.
    let first = collect(&gd).await;
    assert_eq!(
        (first["blobs"].as_u64(), first["deleted"].as_u64()),
        (Some(9), Some(0)),
        "{first}"
    );
    delete(&gd, &a).await;
    let after = collect(&gd).await;
    assert_eq!(after["deleted"], 3, "a.html and its variants: {after}");
    assert!(after["freed_bytes"].as_u64().unwrap() > 0);
    for path in ["/shared.html", "/b.html"] {
        for encoding in ["identity", "br", "gzip"] {
            let resp = gd
                .site(reqwest::Method::GET, &b, path)
                .header("accept-encoding", encoding)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200, "{path} {encoding}");
        }
    }
    assert_eq!(collect(&gd).await["deleted"], 0, "nothing more to free");
    gd.terminate().await;

    // With a grace, a blob just freed stays until it is older than the grace.
    let data = tempfile::tempdir().unwrap();
    let gd = Gitdeploy::start_with(data.path(), &["--gc-interval-secs", "0"]).await;
    let c = publish(&gd, &[("c.html".into(), text("c", 3))]).await;
    delete(&gd, &c).await;
    let report = collect(&gd).await;
    assert_eq!(
        (report["deleted"].as_u64(), report["in_grace"].as_u64()),
        (Some(0), Some(3)),
        "{report}"
    );
    gd.terminate().await;
}

#[tokio::test]
async fn collections_during_a_deploy_that_reuses_their_garbage_lose_nothing() {
    let data = tempfile::tempdir().unwrap();
    // An hour of grace, as in production: what the deploy uploads is protected by it, what it
    // reuses only by its plan.
    let gd = Arc::new(
        Gitdeploy::start_with(
            data.path(),
            &["--gc-grace-secs", "3600", "--gc-interval-secs", "0"],
        )
        .await,
    );
    let files: Vec<(String, String)> = (0..120)
        .map(|i| (format!("d{}/page{i}.html", i % 7), text("race", i)))
        .collect();
    for round in 0..2 {
        // Every blob of the site is garbage now, and old enough to go (made two hours old in
        // the embedded store, which dates objects by their files)...
        let old = publish(&gd, &files).await;
        delete(&gd, &old).await;
        let aged = age_blobs(data.path());
        assert!(aged >= 360, "{aged} blob files aged");
        // ... while collections run back to back and the same site is deployed again, its
        // lookups finding those very blobs.
        let stop = Arc::new(AtomicBool::new(false));
        let (runs, deleted) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let collector = {
            let (gd, stop, runs, deleted) =
                (gd.clone(), stop.clone(), runs.clone(), deleted.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let r = collect(&gd).await;
                    runs.fetch_add(1, Ordering::Relaxed);
                    deleted.fetch_add(r["deleted"].as_u64().unwrap(), Ordering::Relaxed);
                }
            })
        };
        let id = publish(&gd, &files).await;
        stop.store(true, Ordering::Relaxed);
        collector.await.unwrap();
        assert!(runs.load(Ordering::Relaxed) > 0);
        let after = collect(&gd).await;
        assert_eq!(
            after["deleted"], 0,
            "round {round}: what is served is named: {after}"
        );
        // Every file, in every representation, is there.
        for (path, body) in &files {
            for encoding in ["identity", "br", "gzip"] {
                let resp = gd
                    .site(reqwest::Method::GET, &id, &format!("/{path}"))
                    .header("accept-encoding", encoding)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(resp.status(), 200, "round {round}: {path} as {encoding}");
                if encoding == "identity" {
                    assert_eq!(&resp.text().await.unwrap(), body);
                }
            }
        }
        eprintln!(
            "round {round}: {} collections deleted {} blobs meanwhile",
            runs.load(Ordering::Relaxed),
            deleted.load(Ordering::Relaxed)
        );
        delete(&gd, &id).await;
    }
}
