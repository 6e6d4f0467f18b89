//! `gitdeploy build-task`: the entry point of a builder task on ECS. It runs one job the way the
//! local runner does (a sandboxed `gitdeploy builder` child whose events become log records),
//! but as the runner of record itself: it heartbeats, appends the log to Redis and records the
//! outcome, so edges only watch the task. It holds nothing beyond its own build (see
//! `gitdeploy_api::task_access`): it connects to Redis as the build's own user
//! (`GITDEPLOY_REDIS_USER`/`_PASSWORD`, on the host of `GITDEPLOY_REDIS_URL`), writes only the
//! build's log, heartbeat and report (an edge applies the outcome), and publishes with the
//! storage session the runner withheld for it, limited to the build's objects (without one,
//! with the task role). The job comes in `GITDEPLOY_JOB`; its secret values, repository
//! credentials and storage session, which never appear in the ECS API, are taken once from
//! Redis.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use gitdeploy_api::{run_single_job, ApiMetrics, LocalRunnerConfig, RedisLogSettings, TaskSide};
use gitdeploy_core::job::env;
use gitdeploy_core::BuildJob;

use gitdeploy_api::task_access::{REDIS_PASSWORD_ENV, REDIS_USER_ENV};

/// Settings of the task beyond the job, from its environment (the task definition's).
const REDIS_URL: &str = "GITDEPLOY_REDIS_URL";
const REDIS_PREFIX: &str = "GITDEPLOY_REDIS_PREFIX";
const WORK_ROOT: &str = "GITDEPLOY_WORK_ROOT";

/// Where the AWS SDK finds credentials in a task or on a host (besides a static key).
pub(crate) const AWS_CREDENTIAL_SOURCES: &[&str] = &[
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_ARN",
    "AWS_PROFILE",
];

/// What reaches the builder child besides the job: storage settings and, when the runner
/// handed no storage session over, the AWS credential sources of a task (never the Redis
/// URL or password).
const STORAGE_SETTINGS: &[&str] = &[
    env::S3_ENDPOINT,
    env::S3_BUCKET,
    env::S3_REGION,
    env::S3_PREFIX,
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
];
/// The task role's credentials (or a static key), for a builder without a session of its own.
const TASK_CREDENTIALS: &[&str] = &[
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
];

/// Runs the task's job; the exit code is 0 for a ready deployment.
pub fn run() -> i32 {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("gitdeploy build-task: {e}");
            return 2;
        }
    };
    match runtime.block_on(run_job()) {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(e) => {
            eprintln!("gitdeploy build-task: {e:#}");
            2
        }
    }
}

async fn run_job() -> anyhow::Result<bool> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let mut job: BuildJob =
        serde_json::from_str(&var(env::JOB).with_context(|| format!("{} is not set", env::JOB))?)
            .with_context(|| format!("{} is not a job", env::JOB))?;
    let url = var(REDIS_URL).with_context(|| format!("{REDIS_URL} is not set"))?;
    let prefix = var(REDIS_PREFIX).unwrap_or_else(|| "gitdeploy:".into());
    let user = var(REDIS_USER_ENV).zip(var(REDIS_PASSWORD_ENV));
    let task = TaskSide::connect(
        &url,
        user.as_ref().map(|(u, p)| (u.as_str(), p.as_str())),
        &prefix,
        job.deployment.clone(),
    )
    .await
    .context("cannot connect to Redis")?;
    let mut storage = None;
    if let Some(withheld) = task.take_withheld().await? {
        let withheld: gitdeploy_core::job::WithheldFromTask =
            serde_json::from_str(&withheld).context("unreadable secrets")?;
        job.build.secrets.extend(withheld.secrets);
        if let Some(repo) = withheld.repo {
            job.repo = repo;
        }
        storage = withheld.storage;
    }
    // The runner redacts a URL's credentials in the job and hands them over with the secrets.
    anyhow::ensure!(
        !job.repo.contains("://***@"),
        "the repository's credentials did not reach the task (taken already?)"
    );
    let missing: Vec<&String> = job
        .build
        .secrets
        .iter()
        .filter(|(_, v)| v.is_empty())
        .map(|(k, _)| k)
        .collect();
    anyhow::ensure!(
        missing.is_empty(),
        "the values of secrets {missing:?} did not reach the task (taken already?)"
    );
    let bus = task
        .log_bus(
            RedisLogSettings {
                prefix: prefix.clone(),
                ttl: Duration::from_secs(7 * 24 * 3600),
                max_len: 200_000,
            },
            ApiMetrics::unregistered(),
        )
        .await
        .context("cannot connect to Redis")?;
    let mut builder_env: Vec<(String, String)> = STORAGE_SETTINGS
        .iter()
        .filter_map(|k| var(k).map(|v| (k.to_string(), v)))
        .collect();
    match storage {
        // This build's own session: the task role's credentials stay out of the builder.
        Some(session) => builder_env.extend([
            ("AWS_ACCESS_KEY_ID".to_owned(), session.access_key_id),
            (
                "AWS_SECRET_ACCESS_KEY".to_owned(),
                session.secret_access_key,
            ),
            ("AWS_SESSION_TOKEN".to_owned(), session.session_token),
            (env::STAGED_UPLOAD.to_owned(), "1".to_owned()),
        ]),
        None => builder_env.extend(
            TASK_CREDENTIALS
                .iter()
                .filter_map(|k| var(k).map(|v| (k.to_string(), v))),
        ),
    }
    // A task's disk goes with it: build caches live in the bucket.
    builder_env.push((env::REMOTE_CACHE.to_owned(), "1".to_owned()));
    let work_root = PathBuf::from(var(WORK_ROOT).unwrap_or_else(|| "/tmp/gitdeploy".into()));
    let exe = std::env::current_exe().context("cannot find the gitdeploy executable")?;
    let config = LocalRunnerConfig {
        command: vec![exe.into_os_string(), "builder".into()],
        env: builder_env,
        work_root: work_root.join("work"),
        cache_dir: work_root.join("cache"),
        concurrency: 1,
        limits: job.limits.clone(),
        archive: None,
        max_queued: 1,
        after_kill: Some(Arc::new(|id| {
            Box::pin(async move { gitdeploy_builder::clean_up_after_kill(id.as_str()).await })
        })),
        heartbeat: Duration::from_secs(5),
    };
    std::fs::create_dir_all(&config.work_root)?;
    std::fs::create_dir_all(&config.cache_dir)?;
    Ok(run_single_job(config, task, Arc::new(bus), ApiMetrics::unregistered(), job).await)
}
