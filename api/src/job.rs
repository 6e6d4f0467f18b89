//! One deployment's bookkeeping while it builds: the [`Ledger`] its state changes go to (the
//! records, or an ECS task's own report), its log lines, and how it ended ([`Finished`]): the
//! status change (with the alias move) first, then the log's final record.

use std::sync::Arc;
use std::time::Duration;

use gitdeploy_core::{DeploymentId, DeploymentStatus, LogRecord, LogStream, Outcome};

use crate::archive::BuildArchive;
use crate::logbus::LogBus;
use crate::metrics::ApiMetrics;
use crate::now_ms;
use crate::records::Records;

/// How long a finished build keeps trying to record its outcome while the store is away.
const OUTCOME_PATIENCE: Duration = Duration::from_secs(120);

/// Which deployments a runner may start: queued ones (the local runner), or also ones an ECS
/// runner marked building when it started the task (the job inside that task).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Claim {
    Queued,
    QueuedOrBuilding,
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
        alias: Option<String>,
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
                    d.skip_reason = f.outcome.skip_reason.clone();
                    d.finished_unix_ms = Some(now_ms());
                    if f.commit.is_some() {
                        d.commit = f.commit.clone();
                    }
                },
                // A folder sent through the API is a preview until promoted (`--prod`).
                |d, project| {
                    d.source == crate::store::DeploymentSource::Git
                        && project.is_production_ref(d.git_ref.as_deref())
                },
            )
            .await?;
        Ok(match finished {
            None => Recorded::AlreadyEnded,
            Some(done) => Recorded::Ended {
                promoted: done.promoted.map(|p| p.name),
                preview_of: done
                    .deployment
                    .project
                    .filter(|_| done.deployment.status == DeploymentStatus::Ready),
                alias: done.preview,
            },
        })
    }
}

/// One deployment's bookkeeping: log lines and the final status.
pub(crate) struct Job<'a> {
    pub(crate) ledger: &'a dyn Ledger,
    bus: &'a Arc<dyn LogBus>,
    pub(crate) metrics: &'a ApiMetrics,
    pub(crate) id: DeploymentId,
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
                promoted: Some(p),
                alias,
                ..
            }) => {
                self.system(format!("Promoted to production of project {p}"))
                    .await;
                if let Some(label) = alias {
                    self.system(format!("Branch alias {label} moved to this build"))
                        .await;
                }
                true
            }
            Ok(Recorded::Ended {
                preview_of: Some(name),
                alias,
                ..
            }) => {
                let at = alias
                    .map(|label| format!(", now at {label}"))
                    .unwrap_or_default();
                self.system(format!(
                    "Preview of project {name}{at}: production is unchanged"
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
        let line = final_line(&outcome);
        if let Err(e) = self.bus.finish(&self.id, ts, line, outcome).await {
            tracing::error!(id = %self.id, "cannot finish log: {e}");
        }
    }

    /// [`Job::finish`], archiving the complete log (final record included) first, so a client
    /// that sees the final record can already read the archive.
    pub(crate) async fn finish_and_archive(
        &self,
        archive: Option<&dyn BuildArchive>,
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
                        line: final_line(&finished.outcome),
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

    /// A task's reported ending once what it staged is published ([`BuildArchive::publish_staged`]):
    /// a `ready` build whose upload is refused fails, saying why.
    pub(crate) async fn published(
        self,
        archive: Option<&dyn BuildArchive>,
        id: &DeploymentId,
    ) -> Self {
        let Some(archive) = archive.filter(|_| self.outcome.status == DeploymentStatus::Ready)
        else {
            return self;
        };
        match archive.publish_staged(id).await {
            Ok(_) => self,
            Err(e) => Finished::failed(format!("the build's upload was refused: {e}"), None),
        }
    }

    pub(crate) fn failed(error: String, exit_code: Option<i32>) -> Self {
        Finished {
            outcome: Outcome {
                status: DeploymentStatus::Failed,
                error: Some(error),
                skip_reason: None,
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
fn final_line(outcome: &Outcome) -> String {
    match (outcome.status, &outcome.error, &outcome.skip_reason) {
        (DeploymentStatus::Ready, ..) => "Deployment is ready".to_owned(),
        (DeploymentStatus::Skipped, _, Some(why)) => format!("Deployment skipped: {why}"),
        (DeploymentStatus::Skipped, ..) => "Deployment skipped".to_owned(),
        (_, Some(e), _) => format!("Deployment failed: {e}"),
        _ => "Deployment failed".to_owned(),
    }
}
