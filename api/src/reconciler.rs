//! Every runner's heartbeat and the settling of builds whose runner stopped: a `building`
//! deployment is settled by its ECS task's report, left alone while its task heartbeats, and
//! otherwise failed with its log archived; a `queued` one is adopted (unless it needs secret
//! values, which are never stored); an upload left `uploading` for an hour is failed. Local and
//! ECS runners run the same reconciler.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use gitdeploy_core::job::BuildLimits;
use gitdeploy_core::{BuildJob, DeploymentId, DeploymentStatus};

use crate::archive::BuildArchive;
use crate::job::{Finished, Job};
use crate::logbus::LogBus;
use crate::metrics::ApiMetrics;
use crate::now_ms;
use crate::queue::JobQueue;
use crate::records::Records;
use crate::store::Deployment;

/// How long an upload may stay open (`uploading`) before it is failed.
const UPLOAD_WINDOW: Duration = Duration::from_secs(3600);

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
    pub(crate) archive: Option<&'a dyn BuildArchive>,
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
            // An upload belongs to no runner: it ends when its client finalizes it, or here
            // once its client has been gone too long.
            if d.status == DeploymentStatus::Uploading {
                if now_ms().saturating_sub(d.created_unix_ms) > UPLOAD_WINDOW.as_millis() as u64 {
                    Job::new(self.records, self.bus, self.metrics, d.id.clone())
                        .finish_and_archive(
                            self.archive,
                            Finished::failed(
                                "the upload was not finalized within an hour of its start: deploy again"
                                    .into(),
                                None,
                            ),
                        )
                        .await;
                }
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
                        Some(f) => f.published(self.archive, &d.id).await,
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
            project: d.project.clone(),
            repo: d.repo.clone(),
            git_ref: d.git_ref.clone(),
            serving: d.serving.clone(),
            build: d.build.clone(),
            limits: self.limits.clone(),
            cache_key: Some(d.cache_key()),
            previous_commit: d.previous_commit.clone(),
            base: None,
            archive: d.archive,
        });
        Ok(())
    }
}
