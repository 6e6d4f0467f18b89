//! Preview retention: a project that keeps its last N preview deployments has older ones
//! deleted (files, log and record), automatically after each of its preview builds ends and
//! when the setting changes.
//!
//! A deployment is a *preview* unless it is or was production (`production`, `history`, the
//! skew protection's `replaced`), an open alias serves it, it is pinned, or it has not ended
//! ([`doomed`], table-tested). Several edges may sweep one project at once: deleting is
//! idempotent, and a deployment promoted meanwhile is refused in the same commit that checks it.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use gitdeploy_core::{DeploymentId, DeploymentStatus};

use crate::archive::SiteStorage;
use crate::error::ApiError;
use crate::events::{DeploymentEvent, DeploymentEvents, EventKind};
use crate::logbus::LogBus;
use crate::projects::Project;
use crate::records::Records;
use crate::store::Deployment;

/// The most previews a project may keep by this setting.
pub const RETENTION_LIMIT: u32 = 10_000;

/// Deployments looked at per sweep beyond those kept (later sweeps take the rest).
const SWEEP_BATCH: usize = 500;

/// Which of `deployments` (a project's, newest first) go when `keep` previews stay.
pub fn doomed(project: &Project, deployments: &[Deployment], keep: usize) -> Vec<DeploymentId> {
    let served: HashSet<&DeploymentId> = project
        .production
        .iter()
        .chain(&project.history)
        .chain(project.replaced.iter().map(|r| &r.id))
        .chain(
            project
                .previews
                .values()
                .filter_map(|a| a.deployment.as_ref()),
        )
        .collect();
    deployments
        .iter()
        .filter(|d| {
            !served.contains(&d.id)
                && !d.pinned
                && d.status.is_terminal()
                && d.status != DeploymentStatus::Uploading
        })
        .skip(keep)
        .map(|d| d.id.clone())
        .collect()
}

/// Removes a finished deployment: its files, log and record. Refused while it builds and while
/// it is its project's production deployment (checked in the commit that also drops it from
/// the history, so a concurrent promote cannot slip in between).
pub(crate) async fn delete_deployment(
    records: &Records,
    bus: &Arc<dyn LogBus>,
    storage: Option<&Arc<dyn SiteStorage>>,
    d: &Deployment,
) -> Result<(), ApiError> {
    if !d.status.is_terminal() {
        return Err(ApiError::conflict(
            "still_building",
            format!("deployment {} has not ended: cancel it first", d.id),
        ));
    }
    if let Some(name) = &d.project {
        records
            .update_project(name, |p| {
                if p.production.as_ref() == Some(&d.id) {
                    return Err(ApiError::conflict(
                        "is_production",
                        format!(
                            "deployment {} serves project {name}: promote another deployment first",
                            d.id
                        ),
                    ));
                }
                p.history.retain(|h| h != &d.id);
                Ok(())
            })
            .await?;
    }
    if let Some(storage) = storage {
        let removed = storage.delete_deployment(&d.id).await.map_err(|e| {
            ApiError::unavailable(format!("cannot delete the stored files (try again): {e}"))
        })?;
        tracing::info!(id = %d.id, objects = removed, "deployment files deleted");
    }
    bus.remove(&d.id).await?;
    records.delete(&d.id).await?;
    Ok(())
}

/// Sweeps projects after their preview builds end.
pub struct Retention {
    records: Records,
    bus: Arc<dyn LogBus>,
    storage: Option<Arc<dyn SiteStorage>>,
    runtime: tokio::runtime::Handle,
    /// Projects being swept now (a second sweep waits for the next event).
    sweeping: Mutex<HashSet<String>>,
}

impl Retention {
    /// Sweeps with `records` (which need not announce events), removing files from `storage`.
    pub fn new(
        records: Records,
        bus: Arc<dyn LogBus>,
        storage: Option<Arc<dyn SiteStorage>>,
        runtime: tokio::runtime::Handle,
    ) -> Arc<Self> {
        Arc::new(Retention {
            records,
            bus,
            storage,
            runtime,
            sweeping: Mutex::default(),
        })
    }

    /// Deletes what `project`'s retention no longer keeps; the deployments deleted.
    pub async fn sweep(&self, project: &str) -> Result<Vec<DeploymentId>, ApiError> {
        let Some(p) = self.records.project(project).await? else {
            return Ok(Vec::new());
        };
        let Some(keep) = p.preview_retention.filter(|k| *k > 0) else {
            return Ok(Vec::new());
        };
        let keep = keep as usize;
        let listed = self
            .records
            .list_project(project, keep + SWEEP_BATCH)
            .await?;
        let mut deleted = Vec::new();
        for id in doomed(&p, &listed, keep) {
            let Some(d) = listed.iter().find(|d| d.id == id) else {
                continue;
            };
            match delete_deployment(&self.records, &self.bus, self.storage.as_ref(), d).await {
                Ok(()) => deleted.push(id),
                Err(e) => tracing::warn!(%id, project, "retention could not delete: {e:?}"),
            }
        }
        if !deleted.is_empty() {
            tracing::info!(
                project,
                deleted = deleted.len(),
                keep,
                "old previews deleted"
            );
        }
        Ok(deleted)
    }

    /// Sweeps `project` in the background (once at a time per project).
    pub fn sweep_later(self: &Arc<Self>, project: &str) {
        {
            let mut sweeping = self.sweeping.lock().unwrap_or_else(|p| p.into_inner());
            if !sweeping.insert(project.to_owned()) {
                return;
            }
        }
        let me = self.clone();
        let project = project.to_owned();
        self.runtime.spawn(async move {
            if let Err(e) = me.sweep(&project).await {
                tracing::warn!(project, "preview retention failed: {e:?}");
            }
            me.sweeping
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&project);
        });
    }
}

/// Every ended build of a project is a reason to sweep it.
pub struct SweepOnEnd(pub Arc<Retention>);

impl DeploymentEvents for SweepOnEnd {
    fn announce(&self, event: DeploymentEvent) {
        if matches!(
            event.kind,
            EventKind::Ready | EventKind::Failed | EventKind::Canceled
        ) {
            self.0.sweep_later(&event.project);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u32, status: DeploymentStatus, pinned: bool) -> Deployment {
        Deployment {
            id: id(n),
            project: Some("site".into()),
            repo: String::new(),
            repo_credentials_withheld: false,
            git_ref: None,
            serving: Default::default(),
            build: Default::default(),
            status,
            error: None,
            commit: None,
            created_unix_ms: u64::from(n),
            started_unix_ms: None,
            finished_unix_ms: None,
            runner: None,
            cancel_requested: false,
            previous_commit: None,
            skip_reason: None,
            source: Default::default(),
            archive: None,
            trigger: Default::default(),
            pinned,
        }
    }

    fn id(n: u32) -> DeploymentId {
        DeploymentId::parse(&format!("dep{n:08}x")).unwrap()
    }

    #[test]
    fn only_old_unserved_ended_unpinned_previews_go() {
        use DeploymentStatus::*;
        let mut p = Project::new("site", "r", None, 0);
        p.production = Some(id(3));
        p.history = vec![id(1)];
        p.replaced = vec![crate::projects::Replaced {
            id: id(2),
            unix_ms: 0,
        }];
        let source = crate::previews::PreviewSource::Branch("feature".into());
        p.open_preview(&source, 0);
        p.move_preview(&source, &id(4), 4);
        // Newest first, as the store lists them.
        let list: Vec<Deployment> = [
            d(12, Building, false),
            d(11, Ready, false),
            d(10, Failed, false),
            d(9, Ready, true),
            d(8, Canceled, false),
            d(7, Ready, false),
            d(6, Skipped, false),
            d(5, Ready, false),
            d(4, Ready, false),
            d(3, Ready, false),
            d(2, Ready, false),
            d(1, Ready, false),
        ]
        .into();
        // Previews by age: 11, 10, 8, 7, 6, 5 (12 builds, 9 is pinned, 4 an alias's, 1-3
        // production's).
        assert_eq!(doomed(&p, &list, 2), vec![id(8), id(7), id(6), id(5)]);
        assert_eq!(doomed(&p, &list, 6), Vec::<DeploymentId>::new());
        assert_eq!(doomed(&p, &list, 0).len(), 6);
    }
}
