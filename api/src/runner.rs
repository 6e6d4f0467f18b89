//! The local runner: starts one `gitdeploy-builder` child process per deployment, with bounded
//! concurrency and a queue beyond it, turns the builder's NDJSON events into log records, and
//! records the outcome. The child runs in its own process group so a timeout or a shutdown kills
//! everything the build started, not just the builder.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use gitdeploy_core::job::{env, BuildLimits};
use gitdeploy_core::{BuildJob, BuilderEvent, DeploymentId, DeploymentStatus, Outcome};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio::sync::watch;

use crate::archive::BuildArchive;
use crate::job::{Claim, Finished, Job};
use crate::logbus::LogBus;
use crate::metrics::ApiMetrics;
use crate::queue::{JobQueue, JobReceiver};
use crate::reconciler::Reconciler;
use crate::records::Records;

/// How the local runner starts builders.
#[derive(Clone)]
pub struct LocalRunnerConfig {
    /// Program and leading arguments that run one build (e.g. `[gitdeploy, builder]`).
    pub command: Vec<OsString>,
    /// Extra environment for the builder (storage endpoint, bucket, credentials).
    pub env: Vec<(String, String)>,
    /// Parent of each job's scratch directory.
    pub work_root: PathBuf,
    /// Package manager cache shared by builds.
    pub cache_dir: PathBuf,
    /// Builds running at once; further jobs wait in the queue.
    pub concurrency: usize,
    /// Limits of every build; the runner's own deadline is the build timeout plus a margin for
    /// clone and upload.
    pub limits: BuildLimits,
    /// Where finished logs are archived.
    pub archive: Option<Arc<dyn BuildArchive>>,
    /// Builds that may wait for a slot; more are refused (HTTP 429).
    pub max_queued: usize,
    /// Called after a builder was killed (timeout, cancel), to release what it could not.
    pub after_kill: Option<AfterKill>,
    /// How often the runner tells the store it is alive, and looks for builds whose runner
    /// stopped (see [`LocalRunner::run`]). A runner silent for three intervals is lost.
    pub heartbeat: Duration,
}

/// Cleanup run after a builder was killed (the builder's sandbox leftovers).
pub type AfterKill = Arc<
    dyn Fn(DeploymentId) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
        + Send
        + Sync,
>;

/// The local runner; [`LocalRunner::run`] is its loop.
pub struct LocalRunner {
    config: LocalRunnerConfig,
    records: Records,
    bus: Arc<dyn LogBus>,
    rx: JobReceiver,
    queue: JobQueue,
    metrics: ApiMetrics,
}

impl LocalRunner {
    /// A runner and the queue that feeds it.
    pub fn new(
        config: LocalRunnerConfig,
        records: Records,
        bus: Arc<dyn LogBus>,
        metrics: ApiMetrics,
    ) -> (Self, JobQueue) {
        let (queue, rx) = JobQueue::new(config.max_queued, metrics.clone());
        let runner = LocalRunner {
            config,
            records,
            bus,
            rx,
            queue: queue.clone(),
            metrics,
        };
        (runner, queue)
    }

    /// Removes what builds of an earlier run of this runner left in its work root (a server
    /// killed mid-build leaves its work directories, cgroups and network namespaces behind).
    /// The work root is this runner's alone, and nothing runs in it yet.
    async fn sweep_work_root(&self) {
        let Ok(entries) = std::fs::read_dir(&self.config.work_root) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let (Some(id), Some(after_kill)) =
                (DeploymentId::parse(&name), &self.config.after_kill)
            {
                after_kill(id).await;
            }
            match tokio::fs::remove_dir_all(entry.path()).await {
                Ok(()) => {
                    tracing::info!(dir = %entry.path().display(), "removed a work directory left by an earlier run")
                }
                Err(e) => {
                    tracing::warn!(dir = %entry.path().display(), "cannot remove a left-over work directory: {e}")
                }
            }
        }
    }

    /// Runs jobs until `shutdown` resolves. Builds still running then are killed.
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) {
        self.sweep_work_root().await;
        let builds = Arc::new(LocalBuilds {
            config: Arc::new(self.config.clone()),
            records: self.records.clone(),
            bus: self.bus.clone(),
            metrics: self.metrics.clone(),
            queue: self.queue.clone(),
        });
        let running = crate::dispatch::Dispatch {
            queue: &self.queue,
            jobs: &mut self.rx,
            slots: self.config.concurrency,
            heartbeat: self.config.heartbeat,
        }
        .run(builds, shutdown)
        .await;
        // Dropping the tasks drops their process-group guards, which kill the builds.
        let mut running = running;
        running.shutdown().await;
    }
}

/// The local runner's builds: one builder child process each.
struct LocalBuilds {
    config: Arc<LocalRunnerConfig>,
    records: Records,
    bus: Arc<dyn LogBus>,
    metrics: ApiMetrics,
    queue: JobQueue,
}

#[async_trait::async_trait]
impl crate::dispatch::Builds for LocalBuilds {
    async fn build(self: Arc<Self>, job: BuildJob, cancel: watch::Receiver<bool>) {
        let record = Job::new(
            &self.records,
            &self.bus,
            &self.metrics,
            job.deployment.clone(),
        );
        if *cancel.borrow() {
            record.finish(Finished::canceled()).await;
            return;
        }
        run_job(
            &self.config,
            record,
            job,
            cancel,
            Claim::Queued,
            self.queue.instance(),
        )
        .await;
    }

    async fn tick(&self) {
        let reconciler = Reconciler {
            records: &self.records,
            bus: &self.bus,
            metrics: &self.metrics,
            queue: &self.queue,
            limits: &self.config.limits,
            heartbeat: self.config.heartbeat,
            watching: Vec::new(),
            archive: self.config.archive.as_deref(),
        };
        if let Err(e) = reconciler.run_once().await {
            tracing::warn!("heartbeat and reconcile failed: {e}");
        }
    }
}

/// Kills a whole process group when dropped (timeout, shutdown, or the task being aborted).
struct ProcessGroup(Option<Pid>);

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        if let Some(pgid) = self.0.take() {
            let _ = killpg(pgid, Signal::SIGKILL);
        }
    }
}

pub(crate) async fn run_job(
    config: &LocalRunnerConfig,
    job: Job<'_>,
    build: BuildJob,
    mut cancel: watch::Receiver<bool>,
    claim: Claim,
    instance: &str,
) {
    match job.ledger.claim(&job.id, claim, instance).await {
        Ok(true) => {}
        Ok(false) => return, // deleted, ended (reconciled) while queued, or started elsewhere
        Err(e) => {
            tracing::error!(id = %job.id, "cannot record build start: {e}");
            return;
        }
    }
    job.system("Build started on the local runner".into()).await;
    job.metrics.builds_started.inc();
    job.metrics.running.inc();
    let timer = job.metrics.build_duration.start_timer();
    let work_dir = config.work_root.join(job.id.as_str());
    let started = std::time::Instant::now();
    // Canceling drops the build future: its child and process-group guards kill the builder
    // and everything it started.
    let mut finished = tokio::select! {
        result = spawn_and_follow(config, &job, &build, &work_dir) => match result {
            Ok(result) => result,
            Err(e) => Finished::failed(e, None),
        },
        _ = cancel.wait_for(|canceled| *canceled) => Finished::canceled(),
    };
    finished.outcome.duration_ms = Some(started.elapsed().as_millis() as u64);
    // Anything but a builder that reported its own result may have left its sandbox behind.
    if finished.outcome.status == DeploymentStatus::Canceled || finished.outcome.exit_code.is_none()
    {
        if let Some(after_kill) = &config.after_kill {
            after_kill(job.id.clone()).await;
        }
    }
    if let Err(e) = tokio::fs::remove_dir_all(&work_dir).await {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(dir = %work_dir.display(), "cannot remove work directory: {e}");
        }
    }
    timer.observe_duration();
    job.metrics.running.dec();
    let outcome = match finished.outcome.status {
        DeploymentStatus::Ready => "ready",
        DeploymentStatus::Canceled => "canceled",
        DeploymentStatus::Skipped => "skipped",
        _ => "failed",
    };
    job.metrics
        .builds_finished
        .with_label_values(&[outcome])
        .inc();
    job.finish_and_archive(config.archive.as_deref(), finished)
        .await;
}

async fn spawn_and_follow(
    config: &LocalRunnerConfig,
    job: &Job<'_>,
    build: &BuildJob,
    work_dir: &std::path::Path,
) -> Result<Finished, String> {
    let _ = tokio::fs::remove_dir_all(work_dir).await;
    tokio::fs::create_dir_all(work_dir)
        .await
        .map_err(|e| format!("cannot create work directory: {e}"))?;
    let (program, args) = config
        .command
        .split_first()
        .ok_or("no builder command configured")?;
    let job_json = serde_json::to_string(build).map_err(|e| e.to_string())?;
    let mut child = Command::new(program)
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(
            env::INHERITED
                .iter()
                .filter_map(|k| std::env::var_os(k).map(|v| (k, v))),
        )
        .envs(config.env.iter().map(|(k, v)| (k, v)))
        .env(env::JOB, job_json)
        .env(env::WORK_DIR, work_dir)
        .env(env::CACHE_DIR, &config.cache_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start the builder: {e}"))?;
    let group = ProcessGroup(child.id().map(|pid| Pid::from_raw(pid as i32)));

    let stderr = child.stderr.take().map(|err| {
        let lines = BufReader::new(err).lines();
        tokio::spawn(async move {
            let mut lines = lines;
            let mut tail = Vec::new();
            while let Ok(Some(line)) = lines.next_line().await {
                tracing::warn!("builder: {line}");
                tail.push(line);
                if tail.len() > 20 {
                    tail.remove(0);
                }
            }
            tail
        })
    });
    let mut result: Option<BuilderEvent> = None;
    let follow = async {
        if let Some(out) = child.stdout.take() {
            let mut reader = BufReader::new(out);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => match serde_json::from_slice::<BuilderEvent>(&buf) {
                        Ok(BuilderEvent::Log { ts, stream, line }) => {
                            job.log(ts, stream, line).await
                        }
                        Ok(BuilderEvent::Phase { phase, millis }) => job
                            .metrics
                            .phase_duration
                            .with_label_values(&[phase.as_str()])
                            .observe(millis as f64 / 1000.0),
                        Ok(event) => result = Some(event),
                        Err(_) => {
                            job.system(String::from_utf8_lossy(&buf).trim_end().to_owned())
                                .await
                        }
                    },
                }
            }
        }
        child.wait().await
    };
    // The builder enforces the build timeout itself; this is the backstop for a builder that
    // hangs in clone or upload.
    let deadline = Duration::from_secs(config.limits.timeout_secs + 120);
    let waited = tokio::time::timeout(deadline, follow).await;
    drop(group); // kill anything the build left running, in every case
    let status = match waited {
        Err(_) => {
            return Ok(Finished::failed(
                format!(
                    "the build timed out after {}s and was stopped",
                    deadline.as_secs()
                ),
                None,
            ))
        }
        Ok(Err(e)) => return Err(format!("lost the builder process: {e}")),
        Ok(Ok(status)) => status,
    };
    let stderr_tail = match stderr {
        Some(task) => task.await.unwrap_or_default(),
        None => Vec::new(),
    };
    Ok(match (status.code(), result) {
        (
            Some(0),
            Some(BuilderEvent::Published {
                commit,
                files,
                bytes,
            }),
        ) => Finished {
            outcome: Outcome {
                status: DeploymentStatus::Ready,
                error: None,
                skip_reason: None,
                exit_code: Some(0),
                duration_ms: None,
                files: Some(files),
                bytes: Some(bytes),
            },
            commit,
        },
        (Some(0), Some(BuilderEvent::Skipped { commit, reason })) => Finished {
            outcome: Outcome {
                status: DeploymentStatus::Skipped,
                error: None,
                skip_reason: Some(reason),
                exit_code: Some(0),
                duration_ms: None,
                files: None,
                bytes: None,
            },
            commit: Some(commit),
        },
        (_, Some(BuilderEvent::Failed { error, exit_code })) => Finished::failed(error, exit_code),
        (code, _) => {
            let mut error = match code {
                Some(c) => format!("the builder exited with code {c} without reporting a result"),
                None => "the builder was killed".to_owned(),
            };
            if let Some(last) = stderr_tail.last() {
                error.push_str(": ");
                error.push_str(last);
            }
            Finished::failed(error, code)
        }
    })
}
