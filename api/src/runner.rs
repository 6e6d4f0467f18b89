//! The local runner: starts one `gitdeploy-builder` child process per deployment, with bounded
//! concurrency and a queue beyond it, turns the builder's NDJSON events into log records, and
//! records the outcome. The child runs in its own process group so a timeout or a shutdown kills
//! everything the build started, not just the builder.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use gitdeploy_core::job::{env, BuildLimits};
use gitdeploy_core::{
    BuildJob, BuilderEvent, DeploymentId, DeploymentStatus, LogRecord, LogStream, Outcome,
};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio::sync::{mpsc, watch, Semaphore};

use crate::logbus::LogBus;
use crate::metrics::ApiMetrics;
use crate::now_ms;
use crate::store::{Deployment, Records};

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
    pub archive: Option<Arc<dyn LogArchive>>,
    /// Builds that may wait for a slot; more are refused (HTTP 429).
    pub max_queued: usize,
    /// Called after a builder was killed (timeout, cancel), to release what it could not.
    pub after_kill: Option<AfterKill>,
    /// How often the runner tells the store it is alive, and looks for builds whose runner
    /// stopped (see [`LocalRunner::run`]). A runner silent for three intervals is lost.
    pub heartbeat: Duration,
}

/// How long a finished build keeps trying to record its outcome while the store is away.
const OUTCOME_PATIENCE: Duration = Duration::from_secs(120);

/// Cleanup run after a builder was killed (the builder's sandbox leftovers).
pub type AfterKill = Arc<
    dyn Fn(DeploymentId) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
        + Send
        + Sync,
>;

/// Where finished build logs are archived (`logs/<id>.ndjson` in the bucket), and read back
/// once the log bus no longer holds them (Redis streams expire).
pub trait LogArchive: Send + Sync {
    /// Stores the complete log of `id` as NDJSON.
    fn archive(&self, id: &DeploymentId, ndjson: Vec<u8>) -> ArchiveFuture<'_, ()>;

    /// The archived log of `id`, if there is one.
    fn fetch(&self, id: &DeploymentId) -> ArchiveFuture<'_, Option<Vec<u8>>>;
}

/// Where deployments' files are stored: what deleting a deployment removes.
pub trait SiteStorage: Send + Sync {
    /// Removes every stored object of `id` (manifest first, so no edge can load it any more);
    /// returns how many.
    fn delete_deployment(&self, id: &DeploymentId) -> ArchiveFuture<'_, u64>;
}

/// What a [`LogArchive`] answers with.
pub type ArchiveFuture<'a, T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, String>> + Send + 'a>>;

/// Hands jobs to the runner. Cheap to clone.
#[derive(Clone)]
pub struct JobQueue {
    /// This runner's instance id, recorded on the deployments it holds.
    instance: Arc<str>,
    tx: mpsc::UnboundedSender<(BuildJob, watch::Receiver<bool>)>,
    /// Cancel switches of queued and running jobs.
    cancels: Arc<std::sync::Mutex<HashMap<DeploymentId, watch::Sender<bool>>>>,
    waiting: Arc<AtomicUsize>,
    capacity: usize,
    metrics: ApiMetrics,
}

/// A place in the build queue.
pub struct Reservation {
    queue: Option<JobQueue>,
}

impl Reservation {
    /// Queues the job in the reserved place.
    pub fn submit(mut self, job: BuildJob) -> Result<(), SubmitError> {
        let Some(queue) = self.queue.take() else {
            return Err(SubmitError::Stopped);
        };
        let (cancel_tx, cancel_rx) = watch::channel(false);
        let id = job.deployment.clone();
        queue
            .cancels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone(), cancel_tx);
        if queue.tx.send((job, cancel_rx)).is_err() {
            queue
                .cancels
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
            queue.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(SubmitError::Stopped);
        }
        queue.metrics.queue_depth.inc();
        Ok(())
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(queue) = self.queue.take() {
            queue.waiting.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Why a job was not queued.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The queue holds its maximum of waiting builds.
    #[error("the build queue is full ({0} builds waiting); try again later")]
    Full(usize),
    /// The runner is gone.
    #[error("the build runner has stopped")]
    Stopped,
}

/// Jobs as a runner receives them, with their cancel switch.
pub(crate) type JobReceiver = mpsc::UnboundedReceiver<(BuildJob, watch::Receiver<bool>)>;

/// A new runner instance id: unique per process start.
pub(crate) fn new_instance_id() -> String {
    format!("{}-{}", std::process::id(), DeploymentId::random().as_str())
}

impl JobQueue {
    /// A queue of at most `capacity` waiting jobs, and the receiving end for its runner.
    pub(crate) fn new(capacity: usize, metrics: ApiMetrics) -> (Self, JobReceiver) {
        let (tx, rx) = mpsc::unbounded_channel();
        let queue = JobQueue {
            instance: new_instance_id().into(),
            tx,
            waiting: Arc::default(),
            cancels: Arc::default(),
            capacity,
            metrics,
        };
        (queue, rx)
    }

    /// The id of the runner behind this queue (unique per process start).
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Takes a place in the queue, unless it is full. Take the place before recording the
    /// deployment, then [`Reservation::submit`] the job; a reservation dropped unused frees it.
    pub fn reserve(&self) -> Result<Reservation, SubmitError> {
        let waiting = self.waiting.fetch_add(1, Ordering::SeqCst);
        if waiting >= self.capacity {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(SubmitError::Full(waiting));
        }
        Ok(Reservation {
            queue: Some(self.clone()),
        })
    }

    /// Queues a job whatever the queue holds (jobs recovered at start-up).
    pub(crate) fn force(&self, job: BuildJob) -> Result<(), SubmitError> {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        Reservation {
            queue: Some(self.clone()),
        }
        .submit(job)
    }

    /// Cancels a queued or running build; `false` when no such build is waiting or running.
    pub fn cancel(&self, id: &DeploymentId) -> bool {
        match self
            .cancels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
        {
            Some(switch) => {
                let _ = switch.send(true);
                true
            }
            None => false,
        }
    }

    pub(crate) fn done(&self, id: &DeploymentId) {
        self.cancels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }

    pub(crate) fn taken(&self) {
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        self.metrics.queue_depth.dec();
    }
}

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

    fn reconciler(&self) -> Reconciler<'_> {
        Reconciler {
            records: &self.records,
            bus: &self.bus,
            metrics: &self.metrics,
            queue: &self.queue,
            limits: &self.config.limits,
            heartbeat: self.config.heartbeat,
            watching: Vec::new(),
            archive: self.config.archive.as_deref(),
        }
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

    async fn reconcile(&self) -> std::io::Result<()> {
        self.reconciler().run_once().await
    }

    /// Runs jobs until `shutdown` resolves. Builds still running then are killed.
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) {
        self.sweep_work_root().await;
        if let Err(e) = self.reconcile().await {
            tracing::error!("cannot settle builds of stopped runners: {e}");
        }
        let mut heartbeat = tokio::time::interval(self.config.heartbeat);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        heartbeat.tick().await;
        let permits = Arc::new(Semaphore::new(self.config.concurrency.max(1)));
        let config = Arc::new(self.config.clone());
        let mut running = tokio::task::JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            let permit = tokio::select! {
                _ = &mut shutdown => break,
                _ = heartbeat.tick() => {
                    if let Err(e) = self.reconcile().await {
                        tracing::warn!("heartbeat and reconcile failed: {e}");
                    }
                    continue;
                }
                permit = permits.clone().acquire_owned() => match permit {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            let (job, cancel) = loop {
                tokio::select! {
                    _ = &mut shutdown => return running.shutdown().await,
                    _ = heartbeat.tick() => {
                        if let Err(e) = self.reconcile().await {
                            tracing::warn!("heartbeat and reconcile failed: {e}");
                        }
                    }
                    job = self.rx.recv() => match job {
                        Some(job) => break job,
                        None => return running.shutdown().await,
                    },
                }
            };
            self.queue.taken();
            let (records, bus, config, metrics, queue) = (
                self.records.clone(),
                self.bus.clone(),
                config.clone(),
                self.metrics.clone(),
                self.queue.clone(),
            );
            running.spawn(async move {
                let id = job.deployment.clone();
                let record = Job::new(&records, &bus, &metrics, id.clone());
                if *cancel.borrow() {
                    record.finish(Finished::canceled()).await;
                } else {
                    run_job(
                        &config,
                        record,
                        job,
                        cancel,
                        Claim::Queued,
                        queue.instance(),
                    )
                    .await;
                }
                queue.done(&id);
                drop(permit);
            });
            // Reap finished tasks so the set does not grow without bound.
            while running.try_join_next().is_some() {}
        }
        // Dropping the tasks drops their process-group guards, which kill the builds.
        running.shutdown().await;
    }
}

/// Keeps a runner's heartbeat and settles the builds of runners that stopped (every runner
/// kind runs one).
pub(crate) struct Reconciler<'a> {
    pub(crate) records: &'a Records,
    pub(crate) bus: &'a Arc<dyn LogBus>,
    pub(crate) metrics: &'a ApiMetrics,
    pub(crate) queue: &'a JobQueue,
    pub(crate) limits: &'a BuildLimits,
    pub(crate) heartbeat: Duration,
    /// Builds whose task this runner watches: taken over rather than failed when their holder
    /// stopped (an edge restarted while its build tasks ran on).
    pub(crate) watching: Vec<DeploymentId>,
    /// Where the logs of builds it fails are archived.
    pub(crate) archive: Option<&'a dyn LogArchive>,
}

impl Reconciler<'_> {
    /// Says this runner is alive, then settles builds whose runner is not: a build that was
    /// running is failed (its builder went with its runner), a queued one is adopted here (one
    /// runner wins the record) unless it needs secret values, which are never stored.
    /// Deployments younger than the heartbeat timeout are left alone.
    pub(crate) async fn run_once(&self) -> std::io::Result<()> {
        let ttl = self.heartbeat * 3;
        let store = self.records.store();
        store
            .heartbeat(self.queue.instance(), ttl.as_millis() as u64)
            .await?;
        let mut alive: HashMap<String, bool> = HashMap::new();
        alive.insert(self.queue.instance().to_owned(), true);
        for d in store.active().await? {
            if d.cancel_requested && d.runner.as_deref() == Some(self.queue.instance()) {
                self.queue.cancel(&d.id);
                continue;
            }
            if now_ms().saturating_sub(d.created_unix_ms) < ttl.as_millis() as u64 {
                continue;
            }
            let holder = d.runner.clone().unwrap_or_default();
            let holder_alive = match alive.get(&holder) {
                Some(a) => *a,
                None => {
                    let a = !holder.is_empty() && store.runner_alive(&holder).await?;
                    alive.insert(holder.clone(), a);
                    a
                }
            };
            if holder_alive {
                continue;
            }
            let lost = |why: &str| Finished::failed(why.into(), None);
            match d.status {
                DeploymentStatus::Building if self.watching.contains(&d.id) => {
                    let me = self.queue.instance().to_owned();
                    self.records
                        .update(&d.id, |rec| {
                            if rec.runner.as_deref().unwrap_or_default() == holder {
                                rec.runner = Some(me.clone());
                            }
                            Ok::<_, std::io::Error>(())
                        })
                        .await?;
                }
                DeploymentStatus::Building => {
                    // An ECS task may outlive the edge that started it: its report settles the
                    // build, and while it heartbeats the build is alive.
                    let reported = store
                        .task_report(&d.id)
                        .await?
                        .and_then(|r| r.ended)
                        .map(Finished::from_task);
                    let finished = match reported {
                        Some(f) => f,
                        None if store
                            .runner_alive(&crate::task_access::task_instance(&d.id))
                            .await? =>
                        {
                            continue
                        }
                        None => lost(
                            "the runner of this build stopped (server restarted or lost) while it was running",
                        ),
                    };
                    Job::new(self.records, self.bus, self.metrics, d.id.clone())
                        .finish_and_archive(self.archive, finished)
                        .await;
                    store.forget_task(&d.id).await?;
                }
                DeploymentStatus::Queued
                    if !d.build.secrets.is_empty() || d.repo_credentials_withheld =>
                {
                    Job::new(self.records, self.bus, self.metrics, d.id.clone())
                        .finish_and_archive(self.archive, lost(
                            "the runner holding this build stopped before it started, and its secrets or repository credentials are not stored: deploy again",
                        ))
                        .await;
                }
                DeploymentStatus::Queued => self.adopt(&d, &holder).await?,
                _ => {}
            }
        }
        Ok(())
    }

    /// Takes over a queued build of a runner that stopped.
    async fn adopt(&self, d: &Deployment, from: &str) -> std::io::Result<()> {
        let me = self.queue.instance().to_owned();
        let mut won = false;
        self.records
            .update(&d.id, |rec| {
                won = rec.status == DeploymentStatus::Queued
                    && rec.runner.as_deref().unwrap_or_default() == from;
                if won {
                    rec.runner = Some(me.clone());
                }
                Ok::<_, std::io::Error>(())
            })
            .await?;
        if !won {
            return Ok(());
        }
        self.bus.create(&d.id).await?;
        tracing::info!(id = %d.id, from, "adopted a queued build of a stopped runner");
        let _ = self.queue.force(BuildJob {
            deployment: d.id.clone(),
            repo: d.repo.clone(),
            git_ref: d.git_ref.clone(),
            serving: d.serving.clone(),
            build: d.build.clone(),
            limits: self.limits.clone(),
            cache_key: Some(d.cache_key()),
        });
        Ok(())
    }
}

/// Where a build's state changes go: the records (a local runner, an edge) or, inside an ECS
/// task, the task's own report (`task_access`), which an edge then applies.
#[async_trait::async_trait]
pub(crate) trait Ledger: Send + Sync {
    /// Marks the build started by `instance`; `false` when it may not start (deleted, ended,
    /// or started by another).
    async fn claim(&self, id: &DeploymentId, claim: Claim, instance: &str)
        -> std::io::Result<bool>;
    /// Records how the build ended.
    async fn record(&self, id: &DeploymentId, f: &Finished) -> std::io::Result<Recorded>;
}

/// What recording an outcome did.
pub(crate) enum Recorded {
    /// The status changed; `promoted` names the project whose production moved to it, and
    /// `preview_of` the project it is a preview of.
    Ended {
        promoted: Option<String>,
        preview_of: Option<String>,
    },
    /// The deployment had already ended (canceled, or failed by the reconciler) or is gone.
    AlreadyEnded,
    /// Reported for an edge to apply; the edge also writes the log's final record.
    Reported,
}

#[async_trait::async_trait]
impl Ledger for Records {
    async fn claim(
        &self,
        id: &DeploymentId,
        claim: Claim,
        instance: &str,
    ) -> std::io::Result<bool> {
        let mut claimed = false;
        let started = self
            .update(id, |d| {
                claimed = d.status == DeploymentStatus::Queued
                    || (claim == Claim::QueuedOrBuilding && d.status == DeploymentStatus::Building);
                if claimed {
                    d.status = DeploymentStatus::Building;
                    d.started_unix_ms = Some(now_ms());
                    d.runner = Some(instance.to_owned());
                }
                Ok::<_, std::io::Error>(())
            })
            .await?;
        Ok(started.is_some() && claimed)
    }

    /// The status change and, for a ready build of a project's production branch, the alias
    /// move, in one atomic commit (a client that sees "ready" finds the project URL serving
    /// it).
    async fn record(&self, id: &DeploymentId, f: &Finished) -> std::io::Result<Recorded> {
        let finished = self
            .finish(
                id,
                |d| {
                    d.status = f.outcome.status;
                    d.error = f.outcome.error.clone();
                    d.finished_unix_ms = Some(now_ms());
                    if f.commit.is_some() {
                        d.commit = f.commit.clone();
                    }
                },
                |d, project| project.is_production_ref(d.git_ref.as_deref()),
            )
            .await?;
        Ok(match finished {
            None => Recorded::AlreadyEnded,
            Some((d, promoted)) => Recorded::Ended {
                promoted: promoted.map(|p| p.name),
                preview_of: d.project.filter(|_| d.status == DeploymentStatus::Ready),
            },
        })
    }
}

/// One deployment's bookkeeping: log lines and the final status.
pub(crate) struct Job<'a> {
    ledger: &'a dyn Ledger,
    bus: &'a Arc<dyn LogBus>,
    metrics: &'a ApiMetrics,
    id: DeploymentId,
}

impl<'a> Job<'a> {
    pub(crate) fn new(
        ledger: &'a dyn Ledger,
        bus: &'a Arc<dyn LogBus>,
        metrics: &'a ApiMetrics,
        id: DeploymentId,
    ) -> Self {
        Job {
            ledger,
            bus,
            metrics,
            id,
        }
    }

    pub(crate) async fn log(&self, ts: u64, stream: LogStream, line: String) {
        if let Err(e) = self.bus.append(&self.id, ts, stream, line).await {
            tracing::error!(id = %self.id, "cannot write log: {e}");
        }
    }

    pub(crate) async fn system(&self, line: String) {
        self.log(now_ms(), LogStream::System, line).await;
    }

    /// Records the outcome: status first, then the final log record, so a client that sees the
    /// final record and asks for the status sees the same outcome.
    pub(crate) async fn finish(&self, finished: Finished) {
        if self.record_outcome(&finished).await {
            self.publish_final(now_ms(), finished.outcome).await;
        }
    }

    /// Records the outcome in the ledger; `true` when this job should now write the log's
    /// final record.
    async fn record_outcome(&self, f: &Finished) -> bool {
        // The store may be away for a moment (Redis restarting): an outcome is not given up
        // before [`OUTCOME_PATIENCE`].
        let deadline = tokio::time::Instant::now() + OUTCOME_PATIENCE;
        let mut backoff = Duration::from_millis(50);
        let recorded = loop {
            match self.ledger.record(&self.id, f).await {
                Err(e) if tokio::time::Instant::now() < deadline => {
                    tracing::warn!(id = %self.id, "cannot record the outcome yet: {e}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
                other => break other,
            }
        };
        match recorded {
            Ok(Recorded::Ended {
                promoted: Some(p), ..
            }) => {
                self.system(format!("Promoted to production of project {p}"))
                    .await;
                true
            }
            Ok(Recorded::Ended {
                preview_of: Some(name),
                ..
            }) => {
                self.system(format!(
                    "Preview of project {name}: production is unchanged"
                ))
                .await;
                true
            }
            Ok(Recorded::Ended { .. }) => true,
            Ok(Recorded::AlreadyEnded | Recorded::Reported) => false,
            Err(e) => {
                tracing::error!(id = %self.id, "cannot record outcome: {e}");
                true
            }
        }
    }

    /// The log's final record.
    async fn publish_final(&self, ts: u64, outcome: Outcome) {
        let line = final_line(outcome.status, outcome.error.as_deref());
        if let Err(e) = self.bus.finish(&self.id, ts, line, outcome).await {
            tracing::error!(id = %self.id, "cannot finish log: {e}");
        }
    }

    /// [`Job::finish`], archiving the complete log (final record included) first, so a client
    /// that sees the final record can already read the archive.
    pub(crate) async fn finish_and_archive(
        &self,
        archive: Option<&dyn LogArchive>,
        finished: Finished,
    ) {
        if !self.record_outcome(&finished).await {
            return;
        }
        let ts = now_ms();
        if let Some(archive) = archive {
            match self.bus.read(&self.id, 0).await {
                Ok(mut records) => {
                    records.push(LogRecord {
                        seq: records.len() as u64,
                        ts,
                        stream: LogStream::System,
                        line: final_line(
                            finished.outcome.status,
                            finished.outcome.error.as_deref(),
                        ),
                        outcome: Some(finished.outcome.clone()),
                    });
                    let mut ndjson = Vec::new();
                    for r in &records {
                        if serde_json::to_writer(&mut ndjson, r).is_ok() {
                            ndjson.push(b'\n');
                        }
                    }
                    // A store that is starting or briefly away gets a few more tries.
                    for attempt in 0..4u32 {
                        match archive.archive(&self.id, ndjson.clone()).await {
                            Ok(()) => break,
                            Err(e) if attempt < 3 => {
                                tracing::debug!(id = %self.id, "archiving the log failed, retrying: {e}");
                                tokio::time::sleep(Duration::from_millis(250 << attempt)).await;
                            }
                            Err(e) => tracing::warn!(id = %self.id, "cannot archive the log: {e}"),
                        }
                    }
                }
                Err(e) => tracing::warn!(id = %self.id, "cannot read the log to archive it: {e}"),
            }
        }
        self.publish_final(ts, finished.outcome).await;
    }
}

/// How a build ended, as recorded in the store and the log's final record.
pub(crate) struct Finished {
    pub(crate) outcome: Outcome,
    pub(crate) commit: Option<String>,
}

impl Finished {
    pub(crate) fn canceled() -> Self {
        let mut f = Finished::failed("canceled".into(), None);
        f.outcome.status = DeploymentStatus::Canceled;
        f
    }

    /// The outcome an edge records for a task's reported ending; an ending a task may not
    /// report becomes a failure that says so.
    pub(crate) fn from_task(ending: crate::task_access::TaskEnding) -> Self {
        match crate::task_access::check_ending(&ending) {
            Ok(()) => Finished {
                outcome: ending.outcome,
                commit: ending.commit,
            },
            Err(e) => Finished::failed(e, None),
        }
    }

    pub(crate) fn failed(error: String, exit_code: Option<i32>) -> Self {
        Finished {
            outcome: Outcome {
                status: DeploymentStatus::Failed,
                error: Some(error),
                exit_code,
                duration_ms: None,
                files: None,
                bytes: None,
            },
            commit: None,
        }
    }
}

/// The text of a log's final record.
fn final_line(status: DeploymentStatus, error: Option<&str>) -> String {
    match (status, error) {
        (DeploymentStatus::Ready, _) => "Deployment is ready".to_owned(),
        (_, Some(e)) => format!("Deployment failed: {e}"),
        _ => "Deployment failed".to_owned(),
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

/// Which deployments a runner may start: queued ones (the local runner), or also ones an ECS
/// runner marked building when it started the task (the job inside that task).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Claim {
    Queued,
    QueuedOrBuilding,
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
                exit_code: Some(0),
                duration_ms: None,
                files: Some(files),
                bytes: Some(bytes),
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
