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
