//! Several edges, one platform: two `gitdeploy up` processes sharing one Redis (state, logs,
//! alias announcements) and one S3 (`gitdeploy s3-server`), as production edges share them.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{assert_complete_log, git, GitServer, Gitdeploy, Redis, S3Server, S3_KEY};
use futures_util::StreamExt;
use gitdeploy_core::{DeploymentStatus, LogRecord};
use reqwest::Method;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

async fn edge(redis: &Redis, s3: &S3Server, data: &Path) -> Gitdeploy {
    Gitdeploy::start_with_env(
        data,
        &[
            "--redis-url",
            &redis.url,
            "--s3-endpoint",
            &s3.endpoint,
            "--heartbeat-interval-ms",
            "200",
        ],
        &[
            ("AWS_ACCESS_KEY_ID", S3_KEY.0),
            ("AWS_SECRET_ACCESS_KEY", S3_KEY.1),
        ],
    )
    .await
}

async fn page(gd: &Gitdeploy, label: &str, path: &str) -> (u16, String) {
    let resp = gd.site(Method::GET, label, path).send().await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

/// Polls until `label` serves `want` on `gd`; returns how long that took.
async fn until_serves(gd: &Gitdeploy, label: &str, want: &str, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        if page(gd, label, "/").await == (200, want.to_owned()) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "{label} did not serve {want:?} within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn deploy(gd: &Gitdeploy, body: Value) -> String {
    let (status, answer) = gd.deploy(body).await;
    assert_eq!(status, 202, "{answer}");
    answer["id"].as_str().unwrap().to_owned()
}

fn outcome(log: &[LogRecord]) -> &gitdeploy_core::Outcome {
    log.last().unwrap().outcome.as_ref().unwrap()
}

#[tokio::test]
async fn two_edges_share_deployments_logs_and_aliases() {
    let redis = Redis::start();
    let s3 = common::s3_server();
    let mut git_server = GitServer::new();
    let repo = git_server.add_repo("site", &[("index.html", "v1")]);
    git_server.start();
    let url = git_server.url("site");
    let (data_a, data_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = edge(&redis, &s3, data_a.path()).await;
    let b = edge(&redis, &s3, data_b.path()).await;

    // Built by A's runner, followed live on B, served by both.
    let v1 = deploy(&a, json!({"repo": url, "project": "shared"})).await;
    let log = b.follow(&v1, 0).await;
    assert_complete_log(&log);
    assert_eq!(outcome(&log).status, DeploymentStatus::Ready, "{log:#?}");
    assert_eq!(a.follow(&v1, 0).await, log, "both edges hold the same log");
    assert_eq!(b.status(&v1).await["status"], "ready");
    assert_eq!(page(&b, &v1, "/").await, (200, "v1".into()));
    assert_eq!(page(&a, "shared", "/").await, (200, "v1".into()));
    assert_eq!(page(&b, "shared", "/").await, (200, "v1".into()));

    // Built by B's runner; the production move is announced to A, whose alias cache held v1.
    std::fs::write(repo.join("index.html"), "v2").unwrap();
    git(&repo, &["commit", "-qam", "v2"]);
    let v2 = deploy(&b, json!({"repo": url, "project": "shared"})).await;
    let log = a.follow(&v2, 0).await;
    assert_complete_log(&log);
    assert_eq!(outcome(&log).status, DeploymentStatus::Ready, "{log:#?}");
    until_serves(&a, "shared", "v2", Duration::from_secs(1)).await;

    // A rollback on B is served by A within a second.
    let resp = b
        .http()
        .post(b.api("/api/projects/shared/rollback"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let took = until_serves(&a, "shared", "v1", Duration::from_secs(1)).await;
    eprintln!("rollback on one edge served by the other after {took:?}");
    // And a promote on A by B.
    let resp = a
        .http()
        .post(a.api("/api/projects/shared/promote"))
        .json(&json!({"deployment": v2}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    until_serves(&b, "shared", "v2", Duration::from_secs(1)).await;

    // One list of deployments, whichever edge is asked.
    let list = |gd: &Gitdeploy| {
        let req = gd.http().get(gd.api("/api/deployments"));
        async move {
            let body: Value = req.send().await.unwrap().json().await.unwrap();
            body["deployments"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d["id"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(list(&a).await, [v2.clone(), v1.clone()]);
    assert_eq!(list(&b).await, list(&a).await);

    // Deleting on A: B, which had v1's manifest cached, stops serving it.
    let resp = a
        .http()
        .delete(a.api(&format!("/api/deployments/{v1}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let start = Instant::now();
    while page(&b, &v1, "/").await.0 != 404 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "B still serves v1"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(list(&b).await, vec![v2]);
}

/// Reads the log WebSocket until a line containing `needle` arrives.
async fn wait_for_line(gd: &Gitdeploy, id: &str, needle: &str) {
    let url = format!("ws://127.0.0.1:{}/api/deployments/{id}/logs/ws", gd.port);
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("the line never came");
        match msg {
            Some(Ok(Message::Text(t))) => {
                let r: LogRecord = serde_json::from_str(&t).unwrap();
                assert!(!r.is_final(), "the build ended first: {r:?}");
                if r.line.contains(needle) {
                    return;
                }
            }
            Some(Ok(_)) => {}
            other => panic!("log closed before {needle:?}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_lost_runner_fails_its_build_and_an_s3_outage_is_a_502() {
    let redis = Redis::start();
    let mut s3 = common::s3_server();
    let mut git_server = GitServer::new();
    git_server.add_repo(
        "site",
        &[
            ("index.html", "cached page"),
            ("about.html", "never fetched"),
        ],
    );
    git_server.add_repo(
        "slow",
        &[
            (
                "package.json",
                r#"{"name":"slow","private":true,"scripts":{"build":"node build.js"}}"#,
            ),
            (
                "build.js",
                "console.log('build is waiting'); setTimeout(() => {}, 600000);",
            ),
        ],
    );
    git_server.start();
    let (data_a, data_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = edge(&redis, &s3, data_a.path()).await;
    let b = edge(&redis, &s3, data_b.path()).await;

    // A cancel asked on B stops a build A runs (at A's next heartbeat).
    let canceled = deploy(&a, json!({"repo": git_server.url("slow")})).await;
    wait_for_line(&b, &canceled, "build is waiting").await;
    let resp = b
        .http()
        .post(b.api(&format!("/api/deployments/{canceled}/cancel")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let log = b.follow(&canceled, 0).await;
    assert_complete_log(&log);
    assert_eq!(outcome(&log).status, DeploymentStatus::Canceled, "{log:#?}");
    assert_eq!(a.status(&canceled).await["status"], "canceled");

    // A build on A that will not end by itself; A dies in the middle of it.
    let slow = deploy(&a, json!({"repo": git_server.url("slow")})).await;
    wait_for_line(&b, &slow, "build is waiting").await;
    a.kill();
    // B notices A's silence, fails the build with the reason, and ends its log.
    let log = b.follow(&slow, 0).await;
    assert_complete_log(&log);
    let end = outcome(&log);
    assert_eq!(end.status, DeploymentStatus::Failed);
    assert!(
        end.error
            .as_deref()
            .is_some_and(|e| e.contains("runner of this build stopped")),
        "{end:?}"
    );
    assert_eq!(b.status(&slow).await["status"], "failed");

    // S3 goes away: what B has cached is still served, anything else is a small 502.
    let site = deploy(&b, json!({"repo": git_server.url("site")})).await;
    let log = b.follow(&site, 0).await;
    assert_eq!(outcome(&log).status, DeploymentStatus::Ready, "{log:#?}");
    assert_eq!(page(&b, &site, "/").await, (200, "cached page".into()));
    s3.stop();
    assert_eq!(page(&b, &site, "/").await, (200, "cached page".into()));
    let (status, body) = page(&b, &site, "/about.html").await;
    assert_eq!(status, 502, "{body}");
    assert!(body.len() < 2048 && !body.contains("<?xml"), "{body}");
}

/// Runs `gitdeploy build-task` for `job` as an ECS task would, against `redis` and `s3`, as the
/// build's own Redis user (created here as the ECS runner does before `RunTask`); with `path`,
/// in an environment of nothing but that `PATH` and the task's own variables.
async fn run_build_task(
    job: &gitdeploy_core::BuildJob,
    redis: &Redis,
    s3: &S3Server,
    path: Option<&Path>,
) -> std::process::ExitStatus {
    use gitdeploy_api::TaskAccess;
    let store = gitdeploy_api::RedisStore::connect(&redis.url, "gitdeploy:")
        .await
        .unwrap();
    let grant = store.grant(&job.deployment).await.unwrap();
    let work = tempfile::tempdir().unwrap();
    let mut task = tokio::process::Command::new(env!("CARGO_BIN_EXE_gitdeploy"));
    task.arg("build-task");
    if let Some(path) = path {
        task.env_clear().env("PATH", path);
    }
    task.env("GITDEPLOY_JOB", serde_json::to_string(job).unwrap())
        .env("GITDEPLOY_REDIS_URL", &redis.url)
        .env("GITDEPLOY_REDIS_USER", &grant.user)
        .env("GITDEPLOY_REDIS_PASSWORD", &grant.password)
        .env("GITDEPLOY_WORK_ROOT", work.path())
        .env("GITDEPLOY_S3_ENDPOINT", &s3.endpoint)
        .env("GITDEPLOY_S3_BUCKET", "gitdeploy")
        .env("GITDEPLOY_S3_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", S3_KEY.0)
        .env("AWS_SECRET_ACCESS_KEY", S3_KEY.1)
        .status()
        .await
        .unwrap()
}

/// The record the ECS runner writes before `RunTask`: the job's deployment, building.
fn building(job: &gitdeploy_core::BuildJob, project: Option<&str>) -> gitdeploy_api::Deployment {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    gitdeploy_api::Deployment {
        id: job.deployment.clone(),
        project: project.map(str::to_owned),
        repo: job.repo.clone(),
        repo_credentials_withheld: false,
        git_ref: job.git_ref.clone(),
        serving: job.serving.clone(),
        build: job.build.without_secret_values(),
        status: DeploymentStatus::Building,
        error: None,
        commit: None,
        created_unix_ms: now,
        started_unix_ms: Some(now),
        finished_unix_ms: None,
        runner: None,
        cancel_requested: false,
        previous_commit: None,
        skip_reason: None,
        source: Default::default(),
        archive: None,
        trigger: Default::default(),
        pinned: false,
    }
}

/// What an ECS build task runs (`gitdeploy build-task`), run here as a plain process: it takes
/// the job from its environment and the secret values from Redis, builds, writes the log and
/// reports its ending as the build's own Redis user; an edge sharing that Redis and S3 applies
/// the outcome (with no edge watching the task: its reconciler does) and serves the result.
#[tokio::test]
async fn a_build_task_reports_its_outcome_and_an_edge_applies_it() {
    use gitdeploy_api::{Records, RedisStore, Store, TaskAccess};
    use gitdeploy_core::job::{BuildLimits, BuildSettings, ServingOptions};
    use gitdeploy_core::{BuildJob, DeploymentId};
    use std::sync::Arc;

    let redis = Redis::start();
    let s3 = common::s3_server();
    let mut git_server = GitServer::new();
    git_server.add_repo("task", &[("README", "built in a task")]);
    git_server.start();
    let data = tempfile::tempdir().unwrap();
    let gd = edge(&redis, &s3, data.path()).await;

    // What the ECS runner does before RunTask: the record, the log, the secret values.
    let store = Arc::new(RedisStore::connect(&redis.url, "gitdeploy:").await.unwrap());
    let records = Records::new(store.clone() as Arc<dyn Store>);
    let id = DeploymentId::random();
    let build = BuildSettings {
        build_command: Some(
            "mkdir -p out && echo \"task build\" > out/index.html && echo token=$TOKEN".into(),
        ),
        output_dir: Some("out".into()),
        secrets: [("TOKEN".to_owned(), "t0ps3cret-value".to_owned())].into(),
        ..BuildSettings::default()
    };
    let withheld = gitdeploy_core::job::WithheldFromTask {
        secrets: build.secrets.clone(),
        repo: None,
        storage: None,
    };
    store
        .put_withheld(&id, serde_json::to_string(&withheld).unwrap())
        .await
        .unwrap();
    let job = BuildJob {
        deployment: id.clone(),
        project: None,
        repo: git_server.url("task"),
        git_ref: None,
        serving: ServingOptions::default(),
        build: build.without_secret_values(),
        limits: BuildLimits::default(),
        cache_key: None,
        previous_commit: None,
        base: None,
        archive: None,
    };
    records.insert(building(&job, None)).await.unwrap();
    let status = run_build_task(&job, &redis, &s3, None).await;
    assert!(status.success(), "build-task exited with {status}");

    let log = gd.follow(id.as_str(), 0).await;
    assert_complete_log(&log);
    assert_eq!(outcome(&log).status, DeploymentStatus::Ready, "{log:#?}");
    assert!(log.iter().any(|r| r.line == "token=***"), "{log:#?}");
    assert!(log.iter().all(|r| !r.line.contains("t0ps3cret-value")));
    assert_eq!(gd.status(id.as_str()).await["status"], "ready");
    assert_eq!(
        page(&gd, id.as_str(), "/").await,
        (200, "task build\n".into())
    );
    let mut admin = redis::Client::open(redis.url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let left: u32 = redis::cmd("EXISTS")
        .arg(format!("gitdeploy:job-secrets:{id}"))
        .arg(format!("gitdeploy:task:{id}"))
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(
        left, 0,
        "secrets are read once, and the report goes with the build"
    );
    let users: Vec<String> = redis::cmd("ACL")
        .arg("USERS")
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(users, ["default"], "the task's user goes with the build");
}

/// Redis keeps a finished log for `--log-ttl` seconds; after that the API serves the S3 archive,
/// the same records, over NDJSON and the WebSocket alike.
#[tokio::test]
async fn expired_logs_are_served_from_the_archive() {
    let redis = Redis::start();
    let s3 = common::s3_server();
    let mut git_server = GitServer::new();
    git_server.add_repo("site", &[("index.html", "archived")]);
    git_server.start();
    let data = tempfile::tempdir().unwrap();
    let gd = Gitdeploy::start_with_env(
        data.path(),
        &[
            "--redis-url",
            &redis.url,
            "--s3-endpoint",
            &s3.endpoint,
            "--log-ttl",
            "1",
        ],
        &[
            ("AWS_ACCESS_KEY_ID", S3_KEY.0),
            ("AWS_SECRET_ACCESS_KEY", S3_KEY.1),
        ],
    )
    .await;
    let id = deploy(&gd, json!({"repo": git_server.url("site")})).await;
    let live = gd.follow(&id, 0).await;
    assert_complete_log(&live);

    // Wait (bounded) for Redis to drop the stream.
    let client = redis::Client::open(redis.url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let exists: bool = redis::cmd("EXISTS")
            .arg(format!("gitdeploy:log:{id}"))
            .query_async(&mut conn)
            .await
            .unwrap();
        if !exists {
            break;
        }
        assert!(Instant::now() < deadline, "the log never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(gd.follow(&id, 0).await, live, "WebSocket from the archive");
    assert_eq!(gd.follow(&id, 2).await, live[2..].to_vec());
    let ndjson = gd
        .http()
        .get(gd.api(&format!("/api/deployments/{id}/logs")))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let read: Vec<LogRecord> = ndjson
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(read, live, "NDJSON from the archive");
}

/// Production's entry point end to end: `gitdeploy serve --config` with Redis, an external S3
/// (static key), the local runner and a required token, deploying and serving a site.
#[tokio::test]
async fn serve_runs_from_a_configuration_file() {
    use std::process::{Command, Stdio};
    let redis = Redis::start();
    let s3 = common::s3_server();
    let mut git_server = GitServer::new();
    git_server.add_repo("prod", &[("index.html", "served by serve")]);
    git_server.start();
    let dir = tempfile::tempdir().unwrap();
    let (port, metrics) = (common::free_port(), common::free_port());
    let config = format!(
        r#"
[server]
listen = "127.0.0.1:{port}"
metrics_listen = "127.0.0.1:{metrics}"
domain = "localhost"
public_scheme = "http"
public_port = {port}
data_dir = "{data}"

[api]
token_env = "TEST_API_TOKEN"
repo_schemes = ["git"]

[redis]
url_env = "TEST_REDIS_URL"

[s3]
bucket = "gitdeploy"
region = "us-east-1"
endpoint = "{endpoint}"
credentials = "static"

[builds]
runner = "local"
"#,
        data = dir.path().join("data").display(),
        endpoint = s3.endpoint,
    );
    let path = dir.path().join("gitdeploy.toml");
    std::fs::write(&path, config).unwrap();
    let token = "serve-test-token-0123456789";
    let mut child = common::Process::spawn(
        Command::new(env!("CARGO_BIN_EXE_gitdeploy"))
            .args(["serve", "--config"])
            .arg(&path)
            .env("TEST_API_TOKEN", token)
            .env("TEST_REDIS_URL", &redis.url)
            .env("AWS_ACCESS_KEY_ID", S3_KEY.0)
            .env("AWS_SECRET_ACCESS_KEY", S3_KEY.1)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null()),
        "gitdeploy serve",
    );
    common::wait_for_port(([127, 0, 0, 1], port).into(), &mut child, "gitdeploy serve");
    let http = reqwest::Client::new();
    let api = |p: &str| format!("http://127.0.0.1:{port}{p}");
    // Ready when the API answers (listening is not serving).
    let deadline = Instant::now() + Duration::from_secs(30);
    while !http
        .get(api("/api/health"))
        .send()
        .await
        .is_ok_and(|r| r.status() == 200)
    {
        assert!(Instant::now() < deadline, "serve did not come up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The token is required; only git:// repositories are allowed by this configuration.
    let refused = http
        .post(api("/api/deployments"))
        .json(&json!({"repo": git_server.url("prod")}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    let https = http
        .post(api("/api/deployments"))
        .bearer_auth(token)
        .json(&json!({"repo": "https://example.com/r.git"}))
        .send()
        .await
        .unwrap();
    assert_eq!(https.status(), 400);
    let answer: Value = http
        .post(api("/api/deployments"))
        .bearer_auth(token)
        .json(&json!({"repo": git_server.url("prod")}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = answer["id"].as_str().unwrap().to_owned();
    assert_eq!(answer["url"], format!("http://{id}.localhost:{port}/"));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status: Value = http
            .get(api(&format!("/api/deployments/{id}")))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        match status["status"].as_str() {
            Some("ready") => break,
            Some("failed") => panic!("{status}"),
            _ => {}
        }
        assert!(Instant::now() < deadline, "no deploy: {status}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let page = http
        .get(api("/"))
        .header("host", format!("{id}.localhost"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(page, "served by serve");
}

/// An ECS task has no bubblewrap (no namespaces on Fargate). `gitdeploy build-task` run as such a
/// task (here: a PATH without `bwrap`): the repository's commands still run as another user, and
/// nothing of the task's environment (the Redis URL, storage credentials) can be read from them,
/// not through `/proc/<pid>/environ` of any process.
#[tokio::test]
async fn a_build_task_without_bubblewrap_keeps_its_environment_from_the_build() {
    use gitdeploy_core::job::{BuildLimits, BuildSettings, ServingOptions};
    use gitdeploy_core::{BuildJob, DeploymentId};

    // Every program of the machine but bwrap.
    let bin = tempfile::tempdir().unwrap();
    for dir in ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin"] {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let name = entry.file_name();
            let link = bin.path().join(&name);
            if name != "bwrap" && !link.exists() {
                std::os::unix::fs::symlink(entry.path(), link).unwrap();
            }
        }
    }
    let redis = Redis::start();
    let s3 = common::s3_server();
    let mut git_server = GitServer::new();
    git_server.add_repo("snoop", &[("README", "snoop")]);
    git_server.start();
    let data = tempfile::tempdir().unwrap();
    let gd = edge(&redis, &s3, data.path()).await;
    let snoop = "id -u; for f in /proc/[0-9]*/environ; do cat \"$f\" 2>/dev/null | tr '\\0' '\\n'; done | grep -c -e GITDEPLOY_REDIS -e AWS_SECRET_ACCESS_KEY || true; mkdir -p out && echo ok > out/index.html";
    let id = DeploymentId::random();
    let job = BuildJob {
        deployment: id.clone(),
        project: None,
        repo: git_server.url("snoop"),
        git_ref: None,
        serving: ServingOptions::default(),
        build: BuildSettings {
            build_command: Some(snoop.into()),
            output_dir: Some("out".into()),
            ..BuildSettings::default()
        },
        limits: BuildLimits::default(),
        cache_key: None,
        previous_commit: None,
        base: None,
        archive: None,
    };
    let store = gitdeploy_api::RedisStore::connect(&redis.url, "gitdeploy:")
        .await
        .unwrap();
    let records = gitdeploy_api::Records::new(std::sync::Arc::new(store));
    records.insert(building(&job, None)).await.unwrap();
    let status = run_build_task(&job, &redis, &s3, Some(bin.path())).await;
    assert!(status.success(), "build-task exited with {status}");
    let log = gd.follow(id.as_str(), 0).await;
    let lines: Vec<&str> = log.iter().map(|r| r.line.as_str()).collect();
    assert_eq!(outcome(&log).status, DeploymentStatus::Ready, "{lines:#?}");
    assert!(
        lines.iter().any(|l| l.contains("no bubblewrap")),
        "the task's situation: {lines:#?}"
    );
    let at = lines
        .iter()
        .position(|l| *l == "65534")
        .expect("another uid");
    assert_eq!(
        lines[at + 1],
        "0",
        "the build read the task's environment: {lines:#?}"
    );
}

/// A build task's disk goes with it: the framework build caches it kept are stored in the
/// bucket, under the project's cache scope, and the next task of the project (on a fresh disk)
/// fetches them, packed and unpacked by the build user.
#[tokio::test]
async fn build_tasks_keep_framework_caches_in_the_bucket() {
    use gitdeploy_api::{Records, RedisStore, Store};
    use gitdeploy_core::job::{BuildLimits, BuildSettings, ServingOptions};
    use gitdeploy_core::{BuildJob, DeploymentId};
    use std::sync::Arc;

    let redis = Redis::start();
    let s3 = common::s3_server();
    let mut git_server = GitServer::new();
    let script = "echo \"cache held: $(cat node_modules/.cache/marker 2>/dev/null || echo nothing)\" \
                  && mkdir -p node_modules/.cache dist && echo \"$MARK\" > node_modules/.cache/marker \
                  && echo ok > dist/index.html";
    let package =
        json!({"name": "c", "version": "1.0.0", "private": true, "scripts": {"build": script}});
    git_server.add_repo("cached", &[("package.json", &package.to_string())]);
    git_server.start();
    let data = tempfile::tempdir().unwrap();
    let gd = edge(&redis, &s3, data.path()).await;
    let store = Arc::new(RedisStore::connect(&redis.url, "gitdeploy:").await.unwrap());
    let records = Records::new(store.clone() as Arc<dyn Store>);

    let build_once = |mark: &'static str| {
        let (records, git_server, redis, s3, gd) = (&records, &git_server, &redis, &s3, &gd);
        async move {
            let id = DeploymentId::random();
            let build = BuildSettings {
                env: [("MARK".to_owned(), mark.to_owned())].into(),
                ..BuildSettings::default()
            };
            let job = BuildJob {
                deployment: id.clone(),
                project: None,
                repo: git_server.url("cached"),
                git_ref: None,
                serving: ServingOptions::default(),
                build,
                limits: BuildLimits::default(),
                cache_key: Some("project-cached".into()),
                previous_commit: None,
                base: None,
                archive: None,
            };
            records
                .insert(building(&job, Some("cached")))
                .await
                .unwrap();
            // Each run has a work root (and so a cache directory) of its own.
            let status = run_build_task(&job, redis, s3, None).await;
            assert!(status.success(), "build-task exited with {status}");
            let log = gd.follow(id.as_str(), 0).await;
            assert_eq!(outcome(&log).status, DeploymentStatus::Ready, "{log:#?}");
            log.iter()
                .map(|r| r.line.as_str())
                .collect::<Vec<_>>()
                .join("\n")
        }
    };
    let first = build_once("first").await;
    assert!(first.contains("Build cache: no stored copy yet"), "{first}");
    assert!(first.contains("cache held: nothing"), "{first}");
    assert!(first.contains("Build cache: stored a copy ("), "{first}");
    let second = build_once("second").await;
    assert!(
        second.contains("Build cache: fetched the stored copy ("),
        "{second}"
    );
    assert!(
        second.contains("Build cache: unpacked the stored copy"),
        "{second}"
    );
    assert!(
        second.contains("Build cache: restored node_modules/.cache"),
        "{second}"
    );
    assert!(second.contains("cache held: first"), "{second}");
}

/// Managed Redis with in-transit encryption speaks TLS only: `rediss://` connects over TLS,
/// verified with `--redis-ca-file` (or the system's roots); without the CA it is refused.
#[tokio::test]
async fn state_and_logs_in_redis_over_tls() {
    let ca = common::TestCa::new();
    let (cert, key) = ca.issue("redis", &["IP:127.0.0.1", "DNS:localhost"], "0x2001");
    let redis = Redis::start_tls(&cert, &key);
    assert!(redis.url.starts_with("rediss://"), "{}", redis.url);
    let s3 = common::s3_server();
    let mut git = GitServer::new();
    git.add_repo("tls-site", &[("index.html", "over tls")]);
    git.start();
    let data = tempfile::tempdir().unwrap();
    let ca_pem = ca.ca_pem();
    let gd = Gitdeploy::start_with_env(
        data.path(),
        &[
            "--redis-url",
            &redis.url,
            "--redis-ca-file",
            ca_pem.to_str().unwrap(),
            "--s3-endpoint",
            &s3.endpoint,
        ],
        &[
            ("AWS_ACCESS_KEY_ID", S3_KEY.0),
            ("AWS_SECRET_ACCESS_KEY", S3_KEY.1),
        ],
    )
    .await;
    let id = deploy(
        &gd,
        json!({"repo": git.url("tls-site"), "project": "tls-site"}),
    )
    .await;
    let log = gd.follow(&id, 0).await;
    assert_eq!(outcome(&log).status, DeploymentStatus::Ready, "{log:#?}");
    assert_eq!(page(&gd, "tls-site", "/").await, (200, "over tls".into()));

    // Not trusted: the server does not start, and says why.
    let other = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gitdeploy"))
        .args(["up", "--data-dir"])
        .arg(other.path())
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
        .args(["--redis-url", &redis.url, "--s3-endpoint", &s3.endpoint])
        .env("AWS_ACCESS_KEY_ID", S3_KEY.0)
        .env("AWS_SECRET_ACCESS_KEY", S3_KEY.1)
        .env_remove("GITDEPLOY_REDIS_CA_FILE")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot connect to Redis"), "{err}");
}

/// A build task handed a storage session of its own stages its upload under `uploads/<id>/`
/// (it may write nothing served); the edge applying its ending checks it, publishes it and
/// removes the staging area, and the site is served from the shared blobs.
#[tokio::test]
async fn a_build_task_with_a_session_of_its_own_stages_and_the_edge_publishes() {
    use gitdeploy_api::{Records, RedisStore, Store, TaskAccess};
    use gitdeploy_core::job::{BuildLimits, BuildSettings, ServingOptions, SessionCredentials};
    use gitdeploy_core::{BuildJob, DeploymentId};
    use std::sync::Arc;

    let redis = Redis::start();
    let s3 = common::s3_server();
    let mut git_server = GitServer::new();
    git_server.add_repo("staged", &[("index.html", "staged and checked")]);
    git_server.start();
    let data = tempfile::tempdir().unwrap();
    let gd = edge(&redis, &s3, data.path()).await;
    let store = Arc::new(RedisStore::connect(&redis.url, "gitdeploy:").await.unwrap());
    let records = Records::new(store.clone() as Arc<dyn Store>);
    let id = DeploymentId::random();
    // The S3 server here has one key; a session token rides along as it would from STS.
    let withheld = gitdeploy_core::job::WithheldFromTask {
        secrets: Default::default(),
        repo: None,
        storage: Some(SessionCredentials {
            access_key_id: S3_KEY.0.into(),
            secret_access_key: S3_KEY.1.into(),
            session_token: "session-of-this-build".into(),
        }),
    };
    store
        .put_withheld(&id, serde_json::to_string(&withheld).unwrap())
        .await
        .unwrap();
    let job = BuildJob {
        deployment: id.clone(),
        project: None,
        repo: git_server.url("staged"),
        git_ref: None,
        serving: ServingOptions::default(),
        build: BuildSettings::default(),
        limits: BuildLimits::default(),
        cache_key: None,
        previous_commit: None,
        base: None,
        archive: None,
    };
    records.insert(building(&job, None)).await.unwrap();
    let status = run_build_task(&job, &redis, &s3, None).await;
    assert!(status.success(), "build-task exited with {status}");

    let log = gd.follow(id.as_str(), 0).await;
    assert_eq!(outcome(&log).status, DeploymentStatus::Ready, "{log:#?}");
    assert_eq!(
        page(&gd, id.as_str(), "/").await,
        (200, "staged and checked".into())
    );
    let client = gitdeploy_builder::storage::client(
        &gitdeploy_builder::storage::Endpoint {
            url: Some(s3.endpoint.clone()),
            region: "us-east-1".into(),
        },
        gitdeploy_builder::storage::static_keys(S3_KEY.0, S3_KEY.1, None),
    );
    let staged = client
        .list_objects_v2()
        .bucket("gitdeploy")
        .prefix(format!("uploads/{id}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(staged.key_count(), Some(0), "the staging area is removed");
    let blobs = client
        .list_objects_v2()
        .bucket("gitdeploy")
        .prefix("blobs/")
        .send()
        .await
        .unwrap();
    // Published by the edge: a blob it copied carries none of its writer's metadata (a build
    // publishing straight into the store records its variants there).
    let key = blobs.contents()[0].key().unwrap().to_owned();
    let head = client
        .head_object()
        .bucket("gitdeploy")
        .key(&key)
        .send()
        .await
        .unwrap();
    assert!(
        head.metadata()
            .is_none_or(|m| !m.contains_key("gitdeploy-variants")),
        "{key}: {:?}",
        head.metadata()
    );
}
