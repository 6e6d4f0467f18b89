//! State: deployments, projects and custom domains.
//!
//! [`Store`] is the small contract every backend keeps: versioned records, listings, and an
//! atomic all-or-nothing [`Store::commit`] of several writes guarded by the versions the writer
//! read (optimistic concurrency). [`crate::Records`] builds every state change of the control plane on
//! it (read, change, commit, retry on conflict), so the rules live once, whatever the backend:
//! [`crate::FileStore`] (embedded: memory plus one JSON file per record, written atomically) or
//! [`crate::redis_store::RedisStore`] (production, shared by every edge).

use std::io;

use async_trait::async_trait;
use gitdeploy_core::job::{BuildSettings, ServingOptions, SourceArchive};
use gitdeploy_core::repo::redact_repo_url;
use gitdeploy_core::{DeploymentId, DeploymentStatus};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

pub use crate::alias_change::AliasChange;
use crate::domain_record::CustomDomain;
use crate::previews::Trigger;
use crate::projects::Project;
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

/// Attempts at a read-change-commit before giving up (only under heavy contention on one record).
pub(crate) const MAX_ATTEMPTS: usize = 64;

pub(crate) fn contention() -> StoreError {
    StoreError::Conflict("the record kept changing under concurrent writers; try again".into())
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
