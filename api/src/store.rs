//! State: deployments, projects and custom domains.
//!
//! [`Store`] is the small contract every backend keeps: versioned records, listings, and an
//! atomic all-or-nothing [`Store::commit`] of several writes guarded by the versions the writer
//! read (optimistic concurrency). [`Records`] builds every state change of the control plane on
//! it (read, change, commit, retry on conflict), so the rules live once, whatever the backend:
//! [`crate::FileStore`] (embedded: memory plus one JSON file per record, written atomically) or
//! [`crate::redis_store::RedisStore`] (production, shared by every edge).

use std::io;
use std::sync::Arc;

use async_trait::async_trait;
use gitdeploy_core::job::{BuildSettings, ServingOptions, SourceArchive};
use gitdeploy_core::repo::redact_repo_url;
use gitdeploy_core::{DeploymentId, DeploymentStatus};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

pub use crate::alias_change::AliasChange;
use crate::domain_record::CustomDomain;
use crate::events::{DeploymentEvent, DeploymentEvents, EventKind};
use crate::previews::Trigger;
use crate::projects::{Project, ProjectError};
pub use crate::store_error::StoreError;

/// One deployment as the control plane tracks it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployment {
    /// Its id (also its host label).
    pub id: DeploymentId,
    /// Project it belongs to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// Repository URL without its credentials: like secret values, credentials are never
    /// stored with a deployment (they travel with the queued job only).
    pub repo: String,
    /// The submitted URL held credentials, which were not stored: a runner that did not
    /// receive the job cannot build it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub repo_credentials_withheld: bool,
    /// Requested branch, tag or commit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git_ref: Option<String>,
    /// Serving options recorded in its manifest.
    #[serde(default)]
    pub serving: ServingOptions,
    /// Build settings, secret values removed.
    #[serde(default)]
    pub build: BuildSettings,
    /// Where it is in its life.
    pub status: DeploymentStatus,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Commit that was built.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// Accepted at (Unix ms).
    pub created_unix_ms: u64,
    /// Build started at (Unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_unix_ms: Option<u64>,
    /// Build ended at (Unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_unix_ms: Option<u64>,
    /// The runner instance that holds the build while it is queued or running; its heartbeat
    /// going quiet is how a lost build is noticed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runner: Option<String>,
    /// A cancel was asked on an edge that does not hold the build: the runner that holds it
    /// stops it at its next heartbeat.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cancel_requested: bool,
    /// A push's build compares with this commit (the last ready build of its branch) and is
    /// skipped when nothing it depends on changed ([`gitdeploy_core::watch`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_commit: Option<String>,
    /// Why it was skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip_reason: Option<String>,
    /// Where its files came from.
    #[serde(default, skip_serializing_if = "DeploymentSource::is_git")]
    pub source: DeploymentSource,
    /// For a local folder built here (`gitdeploy deploy .`): its uploaded source archive. A
    /// folder without one was published as is (`--prebuilt`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive: Option<SourceArchive>,
    /// What started it: the preview alias it moves, the commit GitHub named, a fork.
    #[serde(default, skip_serializing_if = "Trigger::is_empty")]
    pub trigger: Trigger,
    /// Kept whatever the project's preview retention says.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pinned: bool,
}

/// Where a deployment's files came from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeploymentSource {
    /// Built from a git repository.
    #[default]
    #[serde(rename = "git")]
    Git,
    /// A local folder sent through the deploy API: published as is (`gitdeploy deploy ./dist
    /// --prebuilt`) or, with [`Deployment::archive`], its source built (`gitdeploy deploy .`).
    #[serde(rename = "local folder")]
    Folder,
}

impl DeploymentSource {
    fn is_git(&self) -> bool {
        *self == DeploymentSource::Git
    }
}

impl Deployment {
    /// The package cache its build shares: builds of one project (or, without a project, of
    /// one repository) share one.
    pub fn cache_key(&self) -> String {
        match &self.project {
            Some(p) => format!("project-{p}"),
            None if self.archive.is_some() => format!("folder-{}", self.id),
            None => gitdeploy_core::repo::cache_key(&self.repo),
        }
    }

    /// The repository URL with credentials hidden.
    pub fn repo_display(&self) -> String {
        redact_repo_url(&self.repo)
    }
}

/// A record and the version it was read at (versions start at 1; 0 means "absent").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Versioned<T> {
    /// Bumped by every write.
    pub version: u64,
    /// The record.
    pub value: T,
}

/// One write of a [`Store::commit`]: applied only when the record is still at `expect`
/// (0: it must not exist yet).
#[derive(Clone, Debug)]
pub enum Write {
    /// Create or replace a deployment.
    Deployment {
        /// Version the writer read.
        expect: u64,
        /// The new record.
        value: Deployment,
    },
    /// Create or replace a project.
    Project {
        /// Version the writer read.
        expect: u64,
        /// The new record.
        value: Project,
    },
    /// Create or replace a custom domain (announced on the alias channel).
    Domain {
        /// Version the writer read.
        expect: u64,
        /// The new record.
        value: CustomDomain,
    },
    /// Create or replace one of the control plane's own documents ([`Store::doc`]).
    Doc {
        /// Its name ([`DOC_TOKENS`]).
        name: &'static str,
        /// Version the writer read.
        expect: u64,
        /// The new document.
        value: serde_json::Value,
    },
}

/// The document holding the API's named tokens ([`crate::tokens`]).
pub const DOC_TOKENS: &str = "tokens";

impl Write {
    /// The version its writer read.
    pub fn expect(&self) -> u64 {
        match self {
            Write::Deployment { expect, .. }
            | Write::Project { expect, .. }
            | Write::Domain { expect, .. }
            | Write::Doc { expect, .. } => *expect,
        }
    }
}

/// Storage of deployments and projects. Implementations: [`crate::FileStore`] and
/// [`crate::redis_store::RedisStore`]; `api/tests/store_contract.rs` runs one suite on both.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// One deployment.
    async fn deployment(&self, id: &DeploymentId) -> io::Result<Option<Versioned<Deployment>>>;
    /// Up to `limit` deployments (of `project`, or all), newest first.
    async fn deployments(&self, project: Option<&str>, limit: usize)
        -> io::Result<Vec<Deployment>>;
    /// Deployments still queued or building.
    async fn active(&self) -> io::Result<Vec<Deployment>>;
    /// One project.
    async fn project(&self, name: &str) -> io::Result<Option<Versioned<Project>>>;
    /// Every project, by name.
    async fn projects(&self) -> io::Result<Vec<Project>>;
    /// One custom domain, by its normalized name.
    async fn domain(&self, domain: &str) -> io::Result<Option<Versioned<CustomDomain>>>;
    /// The custom domains of `project`, or all.
    async fn domains(&self, project: Option<&str>) -> io::Result<Vec<CustomDomain>>;
    /// One of the control plane's own documents (a few, small, each read and written whole).
    async fn doc(&self, name: &str) -> io::Result<Option<Versioned<serde_json::Value>>>;
    /// Removes a custom domain still at version `expect` (announced on the alias channel).
    async fn delete_domain(&self, domain: &str, expect: u64) -> io::Result<bool>;
    /// Applies every write, or none when any record is no longer at the version its writer
    /// read (`Ok(false)`). A project write that changes what the edges serve of it
    /// ([`Project::edge_fingerprint`]: production, previews, HSTS, skew protection) announces
    /// the project on [`Store::alias_changes`] of every process sharing the store.
    async fn commit(&self, writes: Vec<Write>) -> io::Result<bool>;
    /// Removes a deployment still at version `expect`.
    async fn delete_deployment(&self, id: &DeploymentId, expect: u64) -> io::Result<bool>;
    /// Removes a project still at version `expect` (its alias stops resolving at once).
    async fn delete_project(&self, name: &str, expect: u64) -> io::Result<bool>;
    /// Records that runner `instance` is alive for the next `ttl_ms`.
    async fn heartbeat(&self, instance: &str, ttl_ms: u64) -> io::Result<()>;
    /// Whether runner `instance` has sent a heartbeat that has not expired.
    async fn runner_alive(&self, instance: &str) -> io::Result<bool>;
    /// What the ECS task of `id` reported (see `task_access`); a store without tasks has none.
    async fn task_report(
        &self,
        _id: &DeploymentId,
    ) -> io::Result<Option<crate::task_access::TaskReport>> {
        Ok(None)
    }
    /// Forgets the task of `id` once its outcome is settled: its report and its access.
    async fn forget_task(&self, _id: &DeploymentId) -> io::Result<()> {
        Ok(())
    }
    /// Whether the store answers now (readiness): `Err` with why not.
    async fn ping(&self) -> io::Result<()> {
        Ok(())
    }
    /// Alias moves and deletions, as this process makes or hears of them.
    fn alias_changes(&self) -> broadcast::Receiver<AliasChange>;
    /// A number that grows with every alias change this process has made or heard of. It
    /// grows before the commit that moved an alias returns, so a cache that compares it on
    /// every lookup never serves an alias older than a change this process made.
    fn alias_generation(&self) -> u64;
}

/// What recording a build's end changed ([`Records::finish`]).
#[derive(Debug)]
pub struct Finish {
    /// The deployment as stored.
    pub deployment: Deployment,
    /// The project, when its production moved to the deployment.
    pub promoted: Option<Project>,
    /// The preview alias label (`<slug>--<project>`) that moved to it.
    pub preview: Option<String>,
}

/// Attempts at a read-change-commit before giving up (only under heavy contention on one record).
pub(crate) const MAX_ATTEMPTS: usize = 64;

pub(crate) fn contention() -> StoreError {
    StoreError::Conflict("the record kept changing under concurrent writers; try again".into())
}

/// Every state change of the control plane, built on a [`Store`].
#[derive(Clone)]
pub struct Records {
    store: Arc<dyn Store>,
    events: Vec<Arc<dyn DeploymentEvents>>,
}

impl Records {
    /// The records kept in `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Records {
            store,
            events: Vec::new(),
        }
    }

    /// These records, also announcing every deployment event to `events` after its commit
    /// ([`crate::events`]).
    pub fn with_events(mut self, events: Arc<dyn DeploymentEvents>) -> Self {
        self.events.push(events);
        self
    }

    /// Announces `kind` of `deployment` (of a project; nothing for one without).
    pub fn announce(&self, kind: EventKind, deployment: &Deployment, alias: Option<String>) {
        let Some(project) = &deployment.project else {
            return;
        };
        for events in &self.events {
            events.announce(DeploymentEvent {
                kind,
                project: project.clone(),
                deployment: deployment.clone(),
                alias: alias.clone(),
                unix_ms: crate::now_ms(),
            });
        }
    }

    async fn announce_production(&self, kind: EventKind, project: &Project) {
        let Some(id) = &project.production else {
            return;
        };
        match self.get(id).await {
            Ok(Some(d)) => self.announce(kind, &d, None),
            Ok(None) => {}
            Err(e) => tracing::warn!(%id, "cannot read the deployment to announce it: {e}"),
        }
    }

    /// The underlying store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Adds a new deployment (its id must be new); a queued one is announced.
    pub async fn insert(&self, d: Deployment) -> Result<(), StoreError> {
        let id = d.id.clone();
        let queued = (d.status == DeploymentStatus::Queued).then(|| d.clone());
        if self
            .store
            .commit(vec![Write::Deployment {
                expect: 0,
                value: d,
            }])
            .await?
        {
            if let Some(d) = queued {
                self.announce(EventKind::Queued, &d, None);
            }
            Ok(())
        } else {
            Err(StoreError::Conflict(format!(
                "deployment {id} already exists"
            )))
        }
    }

    /// One deployment.
    pub async fn get(&self, id: &DeploymentId) -> Result<Option<Deployment>, StoreError> {
        Ok(self
            .store
            .deployment(id)
            .await
            .map_err(StoreError::from)?
            .map(|v| v.value))
    }

    /// Up to `limit` deployments, newest first.
    pub async fn list(&self, limit: usize) -> Result<Vec<Deployment>, StoreError> {
        self.store
            .deployments(None, limit)
            .await
            .map_err(StoreError::from)
    }

    /// Up to `limit` deployments of `project`, newest first.
    pub async fn list_project(
        &self,
        project: &str,
        limit: usize,
    ) -> Result<Vec<Deployment>, StoreError> {
        self.store
            .deployments(Some(project), limit)
            .await
            .map_err(StoreError::from)
    }

    /// Changes one deployment with `f` (which may refuse, or be called again after a conflict);
    /// `None` when it does not exist.
    pub async fn update<E: From<StoreError>>(
        &self,
        id: &DeploymentId,
        mut f: impl FnMut(&mut Deployment) -> Result<(), E>,
    ) -> Result<Option<Deployment>, E> {
        for _ in 0..MAX_ATTEMPTS {
            let Some(current) = self.store.deployment(id).await.map_err(StoreError::from)? else {
                return Ok(None);
            };
            let mut next = current.value.clone();
            f(&mut next)?;
            if next == current.value {
                return Ok(Some(next));
            }
            let write = Write::Deployment {
                expect: current.version,
                value: next.clone(),
            };
            if self
                .store
                .commit(vec![write])
                .await
                .map_err(StoreError::from)?
            {
                return Ok(Some(next));
            }
        }
        Err(contention().into())
    }

    /// Records how a build ended — unless it already ended (a canceled or reconciled build
    /// stays as it was). When it is ready, in the same atomic commit: the project's production
    /// moves to it when `promote` says so, and the preview alias it follows
    /// ([`crate::previews`]) moves to it when open. `None` when it does not exist or had
    /// already ended.
    pub async fn finish(
        &self,
        id: &DeploymentId,
        f: impl Fn(&mut Deployment),
        promote: impl Fn(&Deployment, &Project) -> bool,
    ) -> Result<Option<Finish>, StoreError> {
        for _ in 0..MAX_ATTEMPTS {
            let Some(current) = self.store.deployment(id).await.map_err(StoreError::from)? else {
                return Ok(None);
            };
            if current.value.status.is_terminal() {
                return Ok(None);
            }
            let mut next = current.value.clone();
            f(&mut next);
            next.runner = None;
            let mut writes = vec![Write::Deployment {
                expect: current.version,
                value: next.clone(),
            }];
            let mut done = Finish {
                deployment: next.clone(),
                promoted: None,
                preview: None,
            };
            if next.status == DeploymentStatus::Ready {
                if let Some(name) = next.project.as_deref() {
                    if let Some(project) =
                        self.store.project(name).await.map_err(StoreError::from)?
                    {
                        let mut p = project.value.clone();
                        if promote(&next, &p) {
                            p.set_production(&next.id, crate::now_ms());
                            done.promoted = Some(p.clone());
                        }
                        if let Some(source) = &next.trigger.alias {
                            done.preview = p
                                .move_preview(source, &next.id, next.created_unix_ms)
                                .map(|slug| gitdeploy_core::preview::label(&slug, &p.name));
                            if let Some(promoted) = done.promoted.as_mut() {
                                promoted.previews.clone_from(&p.previews);
                            }
                        }
                        if p != project.value {
                            writes.push(Write::Project {
                                expect: project.version,
                                value: p,
                            });
                        }
                    }
                }
            }
            if self.store.commit(writes).await.map_err(StoreError::from)? {
                if let Some(kind) = EventKind::of_end(done.deployment.status) {
                    self.announce(kind, &done.deployment, done.preview.clone());
                }
                if done.promoted.is_some() {
                    self.announce(EventKind::Promoted, &done.deployment, None);
                }
                return Ok(Some(done));
            }
        }
        Err(contention())
    }

    /// Removes a deployment's record.
    pub async fn delete(&self, id: &DeploymentId) -> Result<bool, StoreError> {
        for _ in 0..MAX_ATTEMPTS {
            let Some(current) = self.store.deployment(id).await.map_err(StoreError::from)? else {
                return Ok(false);
            };
            if self
                .store
                .delete_deployment(id, current.version)
                .await
                .map_err(StoreError::from)?
            {
                return Ok(true);
            }
        }
        Err(contention())
    }

    /// Removes a project (its deployments stay, at their own addresses) and its custom
    /// domains; `false` when there is no such project.
    pub async fn delete_project(&self, name: &str) -> Result<bool, StoreError> {
        for _ in 0..MAX_ATTEMPTS {
            let Some(current) = self.store.project(name).await.map_err(StoreError::from)? else {
                return Ok(false);
            };
            if self
                .store
                .delete_project(name, current.version)
                .await
                .map_err(StoreError::from)?
            {
                self.remove_project_domains(name).await?;
                return Ok(true);
            }
        }
        Err(contention())
    }

    /// One project.
    pub async fn project(&self, name: &str) -> Result<Option<Project>, StoreError> {
        Ok(self
            .store
            .project(name)
            .await
            .map_err(StoreError::from)?
            .map(|v| v.value))
    }

    /// Every project, by name.
    pub async fn projects(&self) -> Result<Vec<Project>, StoreError> {
        self.store.projects().await.map_err(StoreError::from)
    }

    /// Creates a project; fails when the name is taken.
    pub async fn create_project(&self, project: Project) -> Result<Project, ProjectError> {
        let write = Write::Project {
            expect: 0,
            value: project.clone(),
        };
        if self
            .store
            .commit(vec![write])
            .await
            .map_err(StoreError::from)?
        {
            Ok(project)
        } else {
            Err(ProjectError::Exists(project.name))
        }
    }

    /// The project `name`, created for `repo` when it does not exist yet (first deploy); fails
    /// when it exists for another repository.
    pub async fn ensure_project(
        &self,
        name: &str,
        repo: &str,
        branch: Option<&str>,
        now: u64,
    ) -> Result<Project, ProjectError> {
        for _ in 0..MAX_ATTEMPTS {
            if let Some(existing) = self.project(name).await? {
                if existing.repo != repo {
                    return Err(ProjectError::OtherRepo {
                        name: name.to_owned(),
                        repo: existing.repo_display(),
                    });
                }
                return Ok(existing);
            }
            match self
                .create_project(Project::new(name, repo, branch, now))
                .await
            {
                Err(ProjectError::Exists(_)) => continue, // created meanwhile: use it
                other => return other,
            }
        }
        Err(contention().into())
    }

    /// Changes a project with `f` (which may refuse, or be called again after a conflict);
    /// `None` when it does not exist.
    pub async fn update_project<E: From<StoreError>>(
        &self,
        name: &str,
        mut f: impl FnMut(&mut Project) -> Result<(), E>,
    ) -> Result<Option<Project>, E> {
        for _ in 0..MAX_ATTEMPTS {
            let Some(current) = self.store.project(name).await.map_err(StoreError::from)? else {
                return Ok(None);
            };
            let mut next = current.value.clone();
            f(&mut next)?;
            if next == current.value {
                return Ok(Some(next));
            }
            let write = Write::Project {
                expect: current.version,
                value: next.clone(),
            };
            if self
                .store
                .commit(vec![write])
                .await
                .map_err(StoreError::from)?
            {
                return Ok(Some(next));
            }
        }
        Err(contention().into())
    }

    /// Points the project's alias at `deployment`; `None` when the project does not exist.
    pub async fn set_production(
        &self,
        name: &str,
        deployment: &DeploymentId,
    ) -> Result<Option<Project>, StoreError> {
        let moved = self
            .update_project(name, |p| {
                p.set_production(deployment, crate::now_ms());
                Ok::<_, StoreError>(())
            })
            .await?;
        if let Some(p) = &moved {
            self.announce_production(EventKind::Promoted, p).await;
        }
        Ok(moved)
    }

    /// Points the alias back at the most recent earlier production deployment that is still
    /// ready (others are dropped from the history). Production is unchanged when there is
    /// nothing to roll back to; `None` when the project does not exist.
    pub async fn rollback(&self, name: &str) -> Result<Option<Project>, StoreError> {
        for _ in 0..MAX_ATTEMPTS {
            let Some(current) = self.store.project(name).await.map_err(StoreError::from)? else {
                return Ok(None);
            };
            let mut next = current.value.clone();
            while let Some(previous) = next.history.pop() {
                let ready = self
                    .get(&previous)
                    .await?
                    .is_some_and(|d| d.status == DeploymentStatus::Ready);
                if ready && next.production.as_ref() != Some(&previous) {
                    if let Some(replaced) = next.production.replace(previous) {
                        next.note_replaced(replaced, crate::now_ms());
                    }
                    break;
                }
            }
            if next.production == current.value.production {
                return Ok(Some(current.value));
            }
            let write = Write::Project {
                expect: current.version,
                value: next.clone(),
            };
            if self
                .store
                .commit(vec![write])
                .await
                .map_err(StoreError::from)?
            {
                self.announce_production(EventKind::RolledBack, &next).await;
                return Ok(Some(next));
            }
        }
        Err(contention())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alias_announcements_are_read_off_the_wire() {
        let id = DeploymentId::parse("k3f9q2m8x1ab").unwrap();
        for (wire, want) in [
            ("site", Some(AliasChange::Production("site".into()))),
            ("-k3f9q2m8x1ab", Some(AliasChange::Deleted(id.clone()))),
            ("-not an id", None),
            ("*", None),
            ("", None),
            ("Bad Name", None),
        ] {
            assert_eq!(AliasChange::from_wire(wire), want, "{wire:?}");
        }
    }

    #[test]
    fn repo_is_shown_without_credentials() {
        let d = Deployment {
            id: DeploymentId::parse("aaaaaaaaaaa1").unwrap(),
            project: None,
            repo: "https://u:secret@example.com/r".into(),
            repo_credentials_withheld: false,
            git_ref: None,
            serving: ServingOptions::default(),
            build: BuildSettings::default(),
            status: DeploymentStatus::Queued,
            error: None,
            commit: None,
            created_unix_ms: 1,
            started_unix_ms: None,
            finished_unix_ms: None,
            runner: None,
            cancel_requested: false,
            previous_commit: None,
            skip_reason: None,
            source: Default::default(),
            archive: None,
            trigger: Default::default(),
            pinned: false,
        };
        assert_eq!(d.repo_display(), "https://***@example.com/r");
    }
}
