//! Faults, each with nothing lost: the edge binary replaced under load (Pingora's graceful
//! upgrade), and Redis killed and restarted while a build runs.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{assert_complete_log, GitServer, Gitdeploy};
use gitdeploy_core::DeploymentStatus;
use reqwest::Method;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_graceful_upgrade_under_load_fails_no_request() {
    let mut gits = GitServer::new();
    gits.add_repo("site", &[("index.html", "served through the upgrade")]);
    gits.start();
    let data = tempfile::tempdir().unwrap();
    let gd = Gitdeploy::start(data.path()).await;
    let id = gd.deploy_repo(&gits.url("site")).await;
    let log = gd.follow(&id, 0).await;
    assert_complete_log(&log);
    assert_eq!(
        log.last().unwrap().outcome.as_ref().unwrap().status,
        DeploymentStatus::Ready
    );

    // Clients request the site without a pause, over kept-alive connections, throughout.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut clients = vec![];
    for _ in 0..8 {
        let request = gd.site(Method::GET, &id, "/");
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        clients.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let answer = request.try_clone().unwrap().send().await;
                match answer {
                    Ok(r) if r.status() == 200 => {
                        let body = r.text().await.unwrap_or_default();
                        let counter = if body == "served through the upgrade" {
                            &ok
                        } else {
                            &failed
                        };
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                    other => {
                        eprintln!("failed request: {other:?}");
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    let wait_for = |n: u64| {
        let ok = ok.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            while ok.load(Ordering::Relaxed) < n {
                assert!(Instant::now() < deadline, "the clients stalled");
                tokio::task::yield_now().await;
            }
        }
    };
    wait_for(200).await;
    let before = ok.load(Ordering::Relaxed);
    let gd = gd.upgrade(&[]).await;
    let switched = ok.load(Ordering::Relaxed);
    // Only the new server answers now: let it serve a good number of requests too.
    wait_for(switched + 200).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!("graceful upgrade: {ok} requests served ({before} before, {} after the old server exited), {failed} failed", ok - switched);
    assert_eq!(failed, 0, "requests failed during the upgrade");
    assert_eq!(gd.status(&id).await["status"], "ready");
}

#[tokio::test]
async fn redis_crashing_mid_build_loses_no_log_line_and_no_outcome() {
    let mut redis = common::Redis::start_persistent();
    let s3 = common::s3_server();
    let mut gits = GitServer::new();
    gits.add_repo("chatty", &[("README.md", "chatty")]);
    gits.start();
    let data = tempfile::tempdir().unwrap();
    let gd = Gitdeploy::start_with_env(
        data.path(),
        &["--redis-url", &redis.url, "--s3-endpoint", &s3.endpoint],
        &[
            ("AWS_ACCESS_KEY_ID", common::S3_KEY.0),
            ("AWS_SECRET_ACCESS_KEY", common::S3_KEY.1),
        ],
    )
    .await;
    // 300 lines, one every 10 ms; the marker line says the build is under way.
    let script = "echo chatty-started; i=0; while [ $i -lt 300 ]; do echo line $i; i=$((i+1)); sleep 0.01; done; mkdir -p out && echo ok > out/index.html";
    let (status, answer) = gd
        .deploy(serde_json::json!({"repo": gits.url("chatty"), "build": {"build_command": script, "output_dir": "out"}}))
        .await;
    assert_eq!(status, 202, "{answer}");
    let id = answer["id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = std::process::Command::new("pgrep")
            .args(["-f", "chatty-started"])
            .output()
            .unwrap();
        if !out.stdout.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "the build never started");
        tokio::task::yield_now().await;
    }
    redis.crash_and_restart();
    // The API answers again once the edge has reconnected (clients retry meanwhile).
    let deadline = Instant::now() + Duration::from_secs(30);
    while gd.status_code(&id).await != 200 {
        assert!(Instant::now() < deadline, "the API never came back");
        tokio::task::yield_now().await;
    }
    let log = gd.follow(&id, 0).await;
    assert_complete_log(&log);
    let lines: Vec<&str> = log.iter().map(|r| r.line.as_str()).collect();
    let numbered: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.starts_with("line "))
        .collect();
    let want: Vec<String> = (0..300).map(|i| format!("line {i}")).collect();
    assert_eq!(numbered, want, "log lines were lost or repeated");
    assert_eq!(
        log.last().unwrap().outcome.as_ref().unwrap().status,
        DeploymentStatus::Ready,
        "{lines:#?}"
    );
    assert_eq!(gd.status(&id).await["status"], "ready");
}

#[tokio::test]
async fn storage_stopping_during_upload_fails_the_build_cleanly() {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let mut s3 = common::s3_server();
    let mut gits = GitServer::new();
    gits.add_repo("many", &[("README.md", "many files")]);
    gits.start();
    let data = tempfile::tempdir().unwrap();
    let gd = Gitdeploy::start_with_env(
        data.path(),
        &["--s3-endpoint", &s3.endpoint],
        &[
            ("AWS_ACCESS_KEY_ID", common::S3_KEY.0),
            ("AWS_SECRET_ACCESS_KEY", common::S3_KEY.1),
        ],
    )
    .await;
    // 3,000 small files: the upload takes seconds, and the storage stops as it begins.
    let script = "mkdir -p out && i=0; while [ $i -lt 3000 ]; do echo \"file $i\" > out/f$i.txt; i=$((i+1)); done; echo hi > out/index.html";
    let (status, answer) = gd
        .deploy(serde_json::json!({"repo": gits.url("many"), "build": {"build_command": script, "output_dir": "out"}}))
        .await;
    assert_eq!(status, 202, "{answer}");
    let id = answer["id"].as_str().unwrap().to_owned();
    let url = format!("ws://127.0.0.1:{}/api/deployments/{id}/logs/ws", gd.port);
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let mut lines = vec![];
    let mut stopped = false;
    while let Some(msg) = ws.next().await {
        match msg.unwrap() {
            Message::Text(t) => {
                let record: gitdeploy_core::LogRecord = serde_json::from_str(&t).unwrap();
                if !stopped && record.line.starts_with("Publishing") {
                    s3.stop();
                    stopped = true;
                }
                lines.push(record);
            }
            Message::Close(_) => break,
            _ => {}
        }
    }
    assert!(stopped, "the build never reached its upload");
    assert_complete_log(&lines);
    let outcome = lines.last().unwrap().outcome.clone().unwrap();
    assert_eq!(outcome.status, DeploymentStatus::Failed);
    let error = outcome.error.unwrap_or_default();
    assert!(
        error.contains("the storage could not be reached"),
        "{error}"
    );
    assert_eq!(gd.status(&id).await["status"], "failed");
    // Nothing of the half-uploaded deployment is served.
    let resp = gd
        .site(Method::GET, &id, "/index.html")
        .send()
        .await
        .unwrap();
    assert_ne!(resp.status(), 200);
}

#[tokio::test]
async fn a_second_server_on_a_taken_port_stops_with_a_clear_message() {
    let data = tempfile::tempdir().unwrap();
    let gd = Gitdeploy::start(data.path()).await;
    let other = tempfile::tempdir().unwrap();
    for (listen, metrics, flag) in [
        (common::free_port(), gd.metrics_port, "--metrics-listen"),
        (gd.port, common::free_port(), "--listen"),
    ] {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_gitdeploy"))
            .args(["up", "--listen", &format!("127.0.0.1:{listen}")])
            .args(["--metrics-listen", &format!("127.0.0.1:{metrics}")])
            .arg("--data-dir")
            .arg(other.path())
            .output();
        let out = tokio::time::timeout(Duration::from_secs(30), out)
            .await
            .expect("the second server kept trying")
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains(&format!("({flag})")) && err.contains("free address"),
            "{err}"
        );
    }
    assert_eq!(
        gd.status_code("nosuchdeployment").await,
        404,
        "the first one still serves"
    );
}

/// A tmpfs of `mib` MiB mounted on a directory of its own, unmounted when dropped.
struct SmallDisk {
    dir: Option<tempfile::TempDir>,
    path: std::path::PathBuf,
}

impl SmallDisk {
    fn mount(mib: u32) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={mib}m,mode=0700"),
                "tmpfs",
            ])
            .arg(dir.path())
            .status()
            .expect("mount");
        assert!(status.success(), "mounting a tmpfs needs root");
        SmallDisk {
            path: dir.path().to_owned(),
            dir: Some(dir),
        }
    }

    /// The directory itself, for a server to keep its data in (unmounted by the guard).
    fn take(&mut self) -> tempfile::TempDir {
        self.dir.take().unwrap()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}

/// The storage's disk fills during an upload: the build fails saying so, its log is complete,
/// nothing of it is served, the sites already published are still served, and once there is
/// room again the same deployment request succeeds.
#[tokio::test]
async fn a_full_storage_disk_during_upload_fails_the_build_cleanly() {
    let mut disk = SmallDisk::mount(24);
    let filler = disk.path.join("filler");
    let s3 = common::s3_server_in(disk.take());
    let mut gits = GitServer::new();
    gits.add_repo("small", &[("index.html", "<p>small</p>")]);
    gits.add_repo("big", &[("README.md", "big")]);
    gits.start();
    let data = tempfile::tempdir().unwrap();
    let gd = Gitdeploy::start_with_env(
        data.path(),
        &["--s3-endpoint", &s3.endpoint],
        &[
            ("AWS_ACCESS_KEY_ID", common::S3_KEY.0),
            ("AWS_SECRET_ACCESS_KEY", common::S3_KEY.1),
        ],
    )
    .await;
    let (small, log) =
        common::deploy_and_follow(&gd, serde_json::json!({"repo": gits.url("small")})).await;
    assert_eq!(common::outcome_of(&log).0, DeploymentStatus::Ready);

    // Leave about 4 MiB free, then publish 12 MiB that do not compress.
    let df = std::process::Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(&disk.path)
        .output()
        .unwrap();
    let free: u64 = String::from_utf8_lossy(&df.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .expect("df prints the free bytes");
    std::fs::write(&filler, vec![0u8; (free - 4 * 1024 * 1024) as usize]).unwrap();
    let big = serde_json::json!({"repo": gits.url("big"), "build": {
        "build_command": "mkdir -p out && for i in 1 2 3 4 5 6; do head -c 2097152 /dev/urandom > out/blob$i.bin; done && echo hi > out/index.html",
        "output_dir": "out"}});
    let (failed, log) = common::deploy_and_follow(&gd, big.clone()).await;
    assert_complete_log(&log);
    let (status, error) = common::outcome_of(&log);
    assert_eq!(status, DeploymentStatus::Failed, "{log:#?}");
    assert!(
        error.contains("InsufficientStorage: the storage's disk is full (No space left on device"),
        "{error}"
    );
    assert_eq!(gd.status(&failed).await["status"], "failed");
    let resp = gd
        .site(Method::GET, &failed, "/index.html")
        .send()
        .await
        .unwrap();
    assert_ne!(resp.status(), 200, "a half-published deployment is served");
    let resp = gd.site(Method::GET, &small, "/").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "<p>small</p>");

    // Room again: the same request publishes.
    std::fs::remove_file(&filler).unwrap();
    let (again, log) = common::deploy_and_follow(&gd, big).await;
    assert_eq!(
        common::outcome_of(&log).0,
        DeploymentStatus::Ready,
        "{log:#?}"
    );
    let resp = gd
        .site(Method::GET, &again, "/index.html")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

/// Processes whose command line contains `needle`, with their parent's pid.
fn processes_with(needle: &str) -> Vec<(u32, u32)> {
    let mut found = vec![];
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if !cmdline.contains(needle) {
            continue;
        }
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let ppid = stat
            .rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        found.push((pid, ppid));
    }
    found
}

/// The builder process dies (`kill -9`) in the middle of a build: the build fails saying so,
/// its log is complete, everything the build started is gone, and the next build runs.
#[tokio::test]
async fn a_builder_killed_mid_build_fails_its_build_and_leaves_nothing() {
    let mut gits = GitServer::new();
    gits.add_repo("hang", &[("README.md", "hangs")]);
    gits.add_repo("next", &[("index.html", "<p>next</p>")]);
    gits.start();
    let data = tempfile::tempdir().unwrap();
    let gd = Gitdeploy::start(data.path()).await;
    let (status, answer) = gd
        .deploy(serde_json::json!({"repo": gits.url("hang"), "build": {
            "build_command": "echo building && sleep 3617", "output_dir": "out"}}))
        .await;
    assert_eq!(status, 202, "{answer}");
    let id = answer["id"].as_str().unwrap().to_owned();
    // Once the build's command runs and its first line is in the log, kill its builder.
    let deadline = Instant::now() + Duration::from_secs(60);
    let builder = loop {
        let so_far = gd
            .http()
            .get(gd.api(&format!("/api/deployments/{id}/logs")))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if so_far.contains("\"building\"") && !processes_with("sleep 3617").is_empty() {
            let builders: Vec<u32> = processes_with("builder")
                .into_iter()
                .filter(|(_, ppid)| *ppid == gd.pid())
                .map(|(pid, _)| pid)
                .collect();
            assert_eq!(builders.len(), 1, "one builder child: {builders:?}");
            break builders[0];
        }
        assert!(
            Instant::now() < deadline,
            "the build never started its command"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(builder as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let log = gd.follow(&id, 0).await;
    assert_complete_log(&log);
    let (status, error) = common::outcome_of(&log);
    assert_eq!(status, DeploymentStatus::Failed);
    assert!(error.contains("the builder was killed"), "{error}");
    assert!(
        log.iter().any(|r| r.line == "building"),
        "the lines before the kill are kept: {log:#?}"
    );
    // Nothing the build started survives it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !processes_with("sleep 3617").is_empty() {
        assert!(
            Instant::now() < deadline,
            "the build's command outlived its builder"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !std::path::Path::new(&format!("/run/netns/gd-{id}")).exists(),
        "the build's network namespace is left"
    );
    // The next build runs.
    let (_, log) =
        common::deploy_and_follow(&gd, serde_json::json!({"repo": gits.url("next")})).await;
    assert_eq!(
        common::outcome_of(&log).0,
        DeploymentStatus::Ready,
        "{log:#?}"
    );
}
