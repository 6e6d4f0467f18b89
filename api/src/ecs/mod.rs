//! The ECS runner: each build is one ECS task (Fargate in production).
//!
//! The edge claims the deployment (building, held by this runner), gives the task its access
//! (`task_access`: a Redis user of its own and, with an upload role, a storage session limited
//! to its own objects), and starts it with `RunTask`. The job, secret values removed, travels
//! in the container's environment; secret values, repository credentials and the storage
//! session go through Redis and are taken once by the task, so they never appear in the ECS
//! API. The edge watches the task with batched `DescribeTasks` and its report in Redis. Inside
//! the task, `gitdeploy build-task` runs the same job code as the local runner, writes the log
//! and reports the ending into its own report; the edge applies it (status, alias move, the
//! log's final record, the archive) and then removes the task's access. When a task stops
//! without a report, the runner fails the build with the task's stop reason and exit code; a
//! cancel is a `StopTask`. After a restart, tasks this platform started are found again with
//! `ListTasks` (`startedBy`) and watched again; a report whose edge is gone is applied by any
//! edge's reconciler.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use gitdeploy_core::{BuildJob, DeploymentId, DeploymentStatus};
use tokio::sync::{oneshot, watch, Mutex};

use crate::archive::BuildArchive;
use crate::job::{Finished, Job};
use crate::logbus::LogBus;
use crate::metrics::ApiMetrics;
use crate::queue::{JobQueue, JobReceiver};
use crate::records::Records;
use crate::task_access::TaskAccess;

mod launch;
mod poll;
use poll::{poll_tasks, task_end};

/// `startedBy` of every build task (ListTasks finds them again by it).
pub const STARTED_BY: &str = "gitdeploy";
/// Tag naming the deployment a task builds.
pub const DEPLOYMENT_TAG: &str = "gitdeploy:deployment";
/// Environment variable naming the deployment (also in the job).
pub const DEPLOYMENT_ENV: &str = "GITDEPLOY_DEPLOYMENT";

/// Where and how build tasks run.
#[derive(Clone, Debug)]
pub struct EcsRunnerConfig {
    /// Cluster name or ARN.
    pub cluster: String,
    /// Task definition (family, family:revision or ARN) of the builder.
    pub task_definition: String,
    /// Name of the builder container in it (the overrides target).
    pub container: String,
    /// `FARGATE`, `FARGATE_SPOT`... as a capacity provider; `None` uses the launch type.
    pub capacity_provider: Option<String>,
    /// Launch type when no capacity provider is set (`FARGATE` or `EC2`).
    pub launch_type: String,
    /// Subnets of the tasks (awsvpc).
    pub subnets: Vec<String>,
    /// Security groups of the tasks.
    pub security_groups: Vec<String>,
    /// Give tasks a public IP (needed in public subnets without a NAT gateway).
    pub assign_public_ip: bool,
    /// Extra environment for every task (bucket, region, key prefix; never credentials: the
    /// task role provides those).
    pub env: Vec<(String, String)>,
    /// Tasks running at once; more wait in the queue.
    pub concurrency: usize,
    /// Builds that may wait; more are refused (HTTP 429).
    pub max_queued: usize,
    /// Limits of every build.
    pub limits: gitdeploy_core::job::BuildLimits,
    /// How often tasks are described (the first interval; errors back off).
    pub poll_interval: Duration,
    /// How often the runner sends its heartbeat.
    pub heartbeat: Duration,
    /// Attempts at `RunTask` when ECS has no capacity right now.
    pub run_attempts: u32,
    /// Give each task a Redis user of its own, limited to its build's keys (`task_access`).
    /// Needs a Redis that allows `ACL SETUSER`; without it the task uses the Redis URL of its
    /// task definition as it is.
    pub scoped_redis_users: bool,
    /// ARN of the role whose sessions, each limited to one deployment's objects, tasks publish
    /// with (see [`EcsRunner::with_upload_role`]); `None`: tasks publish with their task role's
    /// own credentials.
    pub upload_role_arn: Option<String>,
}

/// The role tasks publish with, one session per build.
#[derive(Clone, Debug)]
pub struct UploadRole {
    /// STS, as the edge reaches it.
    pub sts: aws_sdk_sts::Client,
    /// ARN of the upload role (it trusts the edge's role and may put `sites/*`, `manifests/*`).
    pub role_arn: String,
    /// The bucket, for the session policy.
    pub bucket: String,
    /// Where objects live in it.
    pub layout: gitdeploy_core::ObjectLayout,
}

/// How often a watched task's report is read.
const REPORT_POLL: Duration = Duration::from_millis(500);

/// How a task ended, as ECS tells it.
#[derive(Debug)]
struct TaskEnd {
    reason: String,
    exit_code: Option<i32>,
}

struct Watched {
    deployment: DeploymentId,
    ended: oneshot::Sender<TaskEnd>,
}

/// The ECS runner; [`EcsRunner::run`] is its loop.
pub struct EcsRunner {
    shared: Shared,
    rx: JobReceiver,
}

/// An ECS error as one line: the service's code and message, or what went wrong on the way.
fn ecs_error<E, R>(e: aws_sdk_ecs::error::SdkError<E, R>) -> String
where
    E: aws_sdk_ecs::error::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match e.as_service_error() {
        Some(se) => format!(
            "{}: {}",
            se.code().unwrap_or("error"),
            se.message().unwrap_or("no message")
        ),
        None => aws_sdk_ecs::error::DisplayErrorContext(&e).to_string(),
    }
}

impl EcsRunner {
    /// A runner using `client`, and the queue that feeds it.
    pub fn new(
        config: EcsRunnerConfig,
        client: aws_sdk_ecs::Client,
        records: Records,
        bus: Arc<dyn LogBus>,
        access: Option<Arc<dyn TaskAccess>>,
        metrics: ApiMetrics,
    ) -> (Self, JobQueue) {
        let (queue, rx) = JobQueue::new(config.max_queued, metrics.clone());
        let shared = Shared {
            config,
            client,
            records,
            bus,
            access,
            metrics,
            queue: queue.clone(),
            watched: Arc::default(),
            archive: None,
            upload_role: None,
        };
        (EcsRunner { shared, rx }, queue)
    }

    /// Hands each task a session of `role` limited to its own deployment's objects.
    pub fn with_upload_role(mut self, role: UploadRole) -> Self {
        self.shared.upload_role = Some(role);
        self
    }

    /// Archives each build's complete log when its task ends (the Redis stream expires).
    pub fn with_log_archive(mut self, archive: Arc<dyn BuildArchive>) -> Self {
        self.shared.archive = Some(archive);
        self
    }

    /// Runs until `shutdown` resolves. Tasks keep running: a restarted runner finds them again.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        let EcsRunner { shared, mut rx } = self;
        let shared = Arc::new(shared);
        if let Err(e) = shared.reattach().await {
            tracing::error!("cannot find running build tasks: {e}");
        }
        let poller = tokio::spawn(poll_tasks(
            shared.client.clone(),
            shared.config.cluster.clone(),
            shared.watched.clone(),
            shared.config.poll_interval,
        ));
        let mut running = crate::dispatch::Dispatch {
            queue: &shared.queue,
            jobs: &mut rx,
            slots: shared.config.concurrency,
            heartbeat: shared.config.heartbeat,
        }
        .run(shared.clone(), shutdown)
        .await;
        poller.abort();
        // Watching stops; the tasks go on and are found again after a restart.
        running.abort_all();
    }
}

struct Shared {
    archive: Option<Arc<dyn BuildArchive>>,
    upload_role: Option<UploadRole>,
    config: EcsRunnerConfig,
    client: aws_sdk_ecs::Client,
    records: Records,
    bus: Arc<dyn LogBus>,
    access: Option<Arc<dyn TaskAccess>>,
    metrics: ApiMetrics,
    queue: JobQueue,
    watched: Arc<Mutex<HashMap<String, Watched>>>,
}

#[async_trait::async_trait]
impl crate::dispatch::Builds for Shared {
    async fn build(self: Arc<Self>, job: BuildJob, cancel: watch::Receiver<bool>) {
        Shared::build(&self, job, cancel).await
    }

    /// The reconciler, then the Redis users of the builds watched here, created again if
    /// Redis lost them (a restart).
    async fn tick(&self) {
        let watching = self
            .watched
            .lock()
            .await
            .values()
            .map(|w| w.deployment.clone())
            .collect();
        let reconciler = crate::reconciler::Reconciler {
            records: &self.records,
            bus: &self.bus,
            metrics: &self.metrics,
            queue: &self.queue,
            limits: &self.config.limits,
            heartbeat: self.config.heartbeat,
            watching,
            archive: self.archive.as_deref(),
        };
        if let Err(e) = reconciler.run_once().await {
            tracing::warn!("heartbeat and reconcile failed: {e}");
        }
        if let (Some(access), true) = (&self.access, self.config.scoped_redis_users) {
            for id in &reconciler.watching {
                if let Err(e) = access.renew(id).await {
                    tracing::warn!(%id, "cannot renew the build's Redis user: {e}");
                }
            }
        }
    }
}

impl Shared {
    /// Watches again the tasks this platform started that still run, and settles the builds
    /// whose task stopped while no runner watched it.
    async fn reattach(self: &Arc<Self>) -> Result<(), String> {
        let mut arns = Vec::new();
        for desired in [
            aws_sdk_ecs::types::DesiredStatus::Running,
            aws_sdk_ecs::types::DesiredStatus::Stopped,
        ] {
            let mut pages = self
                .client
                .list_tasks()
                .cluster(&self.config.cluster)
                .started_by(STARTED_BY)
                .desired_status(desired)
                .into_paginator()
                .send();
            while let Some(page) = pages.next().await {
                arns.extend(page.map_err(ecs_error)?.task_arns.unwrap_or_default());
            }
        }
        arns.sort();
        arns.dedup();
        let runner = self.clone();
        for chunk in arns.chunks(100) {
            let described = self
                .client
                .describe_tasks()
                .cluster(&self.config.cluster)
                .set_tasks(Some(chunk.to_vec()))
                .include(aws_sdk_ecs::types::TaskField::Tags)
                .send()
                .await
                .map_err(ecs_error)?;
            for task in described.tasks.unwrap_or_default() {
                let id = task
                    .tags
                    .iter()
                    .flatten()
                    .find(|t| t.key.as_deref() == Some(DEPLOYMENT_TAG))
                    .and_then(|t| t.value.as_deref())
                    .and_then(DeploymentId::parse);
                let (Some(id), Some(arn)) = (id, task.task_arn.clone()) else {
                    continue;
                };
                if task.last_status.as_deref() == Some("STOPPED") {
                    runner.task_ended(&id, task_end(task)).await;
                    continue;
                }
                tracing::info!(%id, %arn, "watching a running build task again");
                let (tx, rx) = oneshot::channel();
                self.watched.lock().await.insert(
                    arn,
                    Watched {
                        deployment: id.clone(),
                        ended: tx,
                    },
                );
                let runner = runner.clone();
                tokio::spawn(async move {
                    if let Ok(end) = rx.await {
                        runner.task_ended(&id, end).await;
                    }
                });
            }
        }
        Ok(())
    }

    fn job(&self, id: &DeploymentId) -> Job<'_> {
        Job::new(&self.records, &self.bus, &self.metrics, id.clone())
    }

    async fn build(&self, job: BuildJob, mut cancel: watch::Receiver<bool>) {
        let id = job.deployment.clone();
        let canceled = *cancel.borrow();
        if canceled {
            self.job(&id).finish(Finished::canceled()).await;
            return;
        }
        // Building and held by this runner from now on: every edge's reconciler sees the
        // build as alive while this runner heartbeats or the task does.
        let instance = self.queue.instance().to_owned();
        let mut claimed = false;
        let marked = self
            .records
            .update(&id, |d| {
                claimed = d.status == DeploymentStatus::Queued;
                if claimed {
                    d.status = DeploymentStatus::Building;
                    d.started_unix_ms = Some(crate::now_ms());
                    d.runner = Some(instance.clone());
                }
                Ok::<_, std::io::Error>(())
            })
            .await;
        match marked {
            Ok(Some(_)) if claimed => {}
            Ok(_) => return, // deleted, or ended while queued
            Err(e) => {
                tracing::error!(%id, "cannot record the build start: {e}");
                return;
            }
        }
        let arn = match self.start_task(&job).await {
            Ok(arn) => arn,
            Err(e) => {
                self.job(&id)
                    .finish(Finished::failed(
                        format!("ECS could not start the build task: {e}"),
                        None,
                    ))
                    .await;
                self.forget(&id).await;
                return;
            }
        };
        self.metrics.builds_started.inc();
        self.job(&id)
            .system(format!("Build task started on ECS: {arn}"))
            .await;
        let (tx, ended) = oneshot::channel();
        self.watched.lock().await.insert(
            arn.clone(),
            Watched {
                deployment: id.clone(),
                ended: tx,
            },
        );
        let mut ended = ended;
        let mut poll = tokio::time::interval(REPORT_POLL);
        loop {
            tokio::select! {
                _ = poll.tick() => {
                    if let Ok(Some(f)) = self.reported(&id).await {
                        self.watched.lock().await.remove(&arn);
                        self.settle(&id, f).await;
                        return;
                    }
                }
                end = &mut ended => {
                    if let Ok(end) = end {
                        self.task_ended(&id, end).await;
                    }
                    return;
                }
                _ = async { drop(cancel.wait_for(|c| *c).await) } => {
                    self.stop(&id, &arn).await;
                    return;
                }
            }
        }
    }

    /// Stops a canceled build's task.
    async fn stop(&self, id: &DeploymentId, arn: &str) {
        let stopped = self
            .client
            .stop_task()
            .cluster(&self.config.cluster)
            .task(arn)
            .reason("canceled by a user")
            .send()
            .await;
        self.watched.lock().await.remove(arn);
        match stopped {
            Ok(_) => self.job(id).finish(Finished::canceled()).await,
            Err(e) => {
                let e = ecs_error(e);
                tracing::error!(%id, %arn, "StopTask failed: {e}");
                self.job(id)
                    .finish(Finished::failed(
                        format!("canceled, but ECS did not stop the task: {e}"),
                        None,
                    ))
                    .await;
            }
        }
        self.forget(id).await;
    }

    /// The ending the task of `id` reported, if it has.
    async fn reported(&self, id: &DeploymentId) -> std::io::Result<Option<Finished>> {
        Ok(self
            .records
            .store()
            .task_report(id)
            .await?
            .and_then(|r| r.ended)
            .map(Finished::from_task))
    }

    /// Applies a task's ending as the outcome (status, alias move, archive, final record),
    /// then removes the task's access.
    async fn settle(&self, id: &DeploymentId, f: Finished) {
        let f = f.published(self.archive.as_deref(), id).await;
        self.job(id)
            .finish_and_archive(self.archive.as_deref(), f)
            .await;
        self.forget(id).await;
    }

    async fn forget(&self, id: &DeploymentId) {
        if let Err(e) = self.records.store().forget_task(id).await {
            tracing::warn!(%id, "cannot remove the build task's access: {e}");
        }
    }

    /// A task stopped: the ending it reported is applied; without one, the build failed.
    /// Either way its complete log is archived and its access removed.
    async fn task_ended(&self, id: &DeploymentId, end: TaskEnd) {
        let f = match self.reported(id).await {
            Ok(Some(f)) => f,
            Ok(None) | Err(_) => {
                let exit = end
                    .exit_code
                    .map(|c| format!(", exit code {c}"))
                    .unwrap_or_default();
                Finished::failed(
                    format!(
                        "the build task stopped before reporting an outcome: {}{exit}",
                        end.reason
                    ),
                    end.exit_code,
                )
            }
        };
        self.settle(id, f).await;
    }
}
