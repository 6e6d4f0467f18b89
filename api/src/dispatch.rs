//! The one dispatch loop every runner kind shares: a heartbeat that nothing can starve (each
//! tick keeps the runner alive and settles the builds of runners that stopped), and jobs taken
//! from the queue only when a build slot is free, each run as a task of its own. What a build
//! *is* (a child process, an ECS task) is the [`Builds`] implementation's business.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use gitdeploy_core::BuildJob;

use crate::queue::{JobQueue, JobReceiver};

/// What a runner kind does; [`dispatch`] does the rest.
#[async_trait::async_trait]
pub(crate) trait Builds: Send + Sync + 'static {
    /// Runs one build to its end: claim, build, outcome (a cancel arrives on `cancel`).
    async fn build(self: Arc<Self>, job: BuildJob, cancel: watch::Receiver<bool>);
    /// One heartbeat: keep this runner alive and settle what stopped runners left.
    async fn tick(&self);
}

/// How the loop runs.
pub(crate) struct Dispatch<'a> {
    pub(crate) queue: &'a JobQueue,
    pub(crate) jobs: &'a mut JobReceiver,
    /// Builds at once.
    pub(crate) slots: usize,
    pub(crate) heartbeat: Duration,
}

impl Dispatch<'_> {
    /// Runs until `shutdown` resolves or the queue closes; returns the builds still running
    /// (the caller stops them, or lets them go on elsewhere). The first tick comes at once.
    pub(crate) async fn run<B: Builds>(
        self,
        builds: Arc<B>,
        shutdown: impl Future<Output = ()>,
    ) -> JoinSet<()> {
        tokio::pin!(shutdown);
        let permits = Arc::new(Semaphore::new(self.slots.max(1)));
        let mut heartbeat = tokio::time::interval(self.heartbeat);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut running = JoinSet::new();
        let jobs = self.jobs;
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                _ = heartbeat.tick() => builds.tick().await,
                // A job is taken only with a free slot, and waiting for one never holds up the
                // heartbeat above (both futures are cancel-safe).
                next = async {
                    let permit = permits.clone().acquire_owned().await.ok()?;
                    Some((permit, jobs.recv().await?))
                } => {
                    let Some((permit, (job, cancel))) = next else { break };
                    self.queue.taken();
                    let (builds, queue) = (builds.clone(), self.queue.clone());
                    running.spawn(async move {
                        let id = job.deployment.clone();
                        builds.build(job, cancel).await;
                        queue.done(&id);
                        drop(permit);
                    });
                    // Reap finished tasks so the set does not grow without bound.
                    while running.try_join_next().is_some() {}
                }
            }
        }
        running
    }
}
