//! Projects: a name, the repository it deploys, its production branch, build settings, and the
//! alias `<project>.<domain>` → its production deployment. Promote and rollback only move the
//! alias. They are kept by the [`crate::store::Store`].

use std::collections::{BTreeMap, HashMap};

use gitdeploy_core::job::BuildSettings;
use gitdeploy_core::repo::redact_repo_url;
use gitdeploy_core::DeploymentId;
use serde::{Deserialize, Serialize};

use crate::protection::Protection;
use crate::targets::{GithubLink, NotificationTarget};
pub use crate::trigger::Environment;
use crate::trigger::PreviewAlias;

/// Earlier production deployments remembered per project.
const MAX_HISTORY: usize = 50;

/// One project.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Project {
    /// DNS-label name; also its host label.
    pub name: String,
    /// Repository it deploys (may hold credentials: show [`Project::repo_display`]).
    pub repo: String,
    /// Builds of this branch become production; `None` means the default branch (no ref given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub production_branch: Option<String>,
    /// The deployment `<name>.<domain>` serves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub production: Option<DeploymentId>,
    /// Earlier production deployments, oldest first (rollback walks back through them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<DeploymentId>,
    /// Build settings every deployment of the project starts from (a deploy request's own
    /// settings win). Secret values are kept here, since later builds need them, and are never
    /// shown by the API.
    #[serde(default)]
    pub build: BuildSettings,
    /// Secret GitHub signs push events with; never shown by the API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_secret: Option<String>,
    /// Secret part of the project's deploy hook URL (`POST /api/hooks/deploy/<name>/<secret>`
    /// builds the production branch), when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deploy_hook: Option<String>,
    /// Created at (Unix ms).
    pub created_unix_ms: u64,
    /// `Strict-Transport-Security: max-age=<this>` on the project's HTTPS responses at
    /// `<name>.<domain>` and its custom domains; `None`: no HSTS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hsts_max_age_secs: Option<u32>,
    /// Production deployments replaced lately, newest first, and when (skew protection).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replaced: Vec<Replaced>,
    /// How long after it is replaced a production deployment's hashed assets are still served
    /// at the project's hosts, in seconds; `None`: [`SKEW_WINDOW_DEFAULT_SECS`], `0`: off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skew_protection_secs: Option<u32>,
    /// Environment variables and secrets of preview builds, laid over production's (which are
    /// [`Project::build`]'s): a name set here wins, anything unset falls back to production.
    #[serde(default, skip_serializing_if = "EnvVars::is_empty")]
    pub preview_env: EnvVars,
    /// Open preview aliases by slug (`<slug>--<name>.<domain>`), see [`crate::previews`].
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub previews: BTreeMap<String, PreviewAlias>,
    /// Visitor protection: a password in front of previews or everything
    /// ([`crate::protection`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protection: Option<Protection>,
    /// Webhooks told of its deployment events ([`crate::notify`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notifications: Vec<NotificationTarget>,
    /// Its GitHub connection: commit statuses and pull request comments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub github: Option<GithubLink>,
    /// Preview deployments kept (the newest); older ones are deleted ([`crate::retention`]).
    /// `None`: all are kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview_retention: Option<u32>,
}

/// Environment variables and secrets (secret values are write-only, as in [`BuildSettings`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvVars {
    /// Variables by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Secrets by name: redacted from every log line, never shown.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, String>,
}

impl EnvVars {
    /// Whether nothing is set.
    pub fn is_empty(&self) -> bool {
        self.env.is_empty() && self.secrets.is_empty()
    }

    /// These stored variables replaced by `next` as a client sent them back: a secret with an
    /// empty value keeps its stored value, one left out is removed (as
    /// [`BuildSettings::replaced_by`]).
    pub fn replaced_by(&self, next: EnvVars) -> EnvVars {
        let stored = BuildSettings {
            secrets: self.secrets.clone(),
            ..BuildSettings::default()
        };
        let next = stored.replaced_by(BuildSettings {
            env: next.env,
            secrets: next.secrets,
            ..BuildSettings::default()
        });
        EnvVars {
            env: next.env,
            secrets: next.secrets,
        }
    }

    /// Checks names and values by the build's rules.
    pub fn validate(&self) -> Result<(), String> {
        BuildSettings {
            env: self.env.clone(),
            secrets: self.secrets.clone(),
            ..BuildSettings::default()
        }
        .validate(u64::MAX)
    }
}

/// A production deployment that was replaced, and when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replaced {
    /// The deployment.
    pub id: DeploymentId,
    /// Replaced at (Unix ms).
    pub unix_ms: u64,
}

/// Replaced production deployments whose hashed assets stay served ("the previous few").
pub const SKEW_KEEP: usize = 3;
/// The skew protection window when a project sets none: a page loaded up to 12 hours before a
/// promotion still finds its chunks.
pub const SKEW_WINDOW_DEFAULT_SECS: u32 = 43_200;
/// The longest skew protection window accepted (a week).
pub const SKEW_WINDOW_LIMIT_SECS: u32 = 604_800;

/// The longest HSTS max-age accepted (two years, what preload lists ask for).
pub const HSTS_MAX_AGE_LIMIT: u32 = 63_072_000;

/// What serving a project's production host needs to know.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Production {
    /// The deployment it serves.
    pub id: DeploymentId,
    /// Its HSTS max-age, when it sends HSTS.
    pub hsts_max_age_secs: Option<u32>,
    /// Earlier production deployments whose hashed assets are still served when the current
    /// one lacks them (skew protection), newest first, each until a time (Unix ms). Shared,
    /// so handing a cached lookup to a request copies no list.
    pub earlier: std::sync::Arc<[(DeploymentId, u64)]>,
}

impl Project {
    /// A new project with no deployment yet.
    pub fn new(name: &str, repo: &str, production_branch: Option<&str>, now: u64) -> Self {
        Project {
            name: name.to_owned(),
            repo: repo.to_owned(),
            production_branch: production_branch.map(str::to_owned),
            production: None,
            history: Vec::new(),
            build: BuildSettings::default(),
            webhook_secret: None,
            deploy_hook: None,
            created_unix_ms: now,
            hsts_max_age_secs: None,
            replaced: Vec::new(),
            skew_protection_secs: None,
            preview_env: EnvVars::default(),
            previews: BTreeMap::new(),
            protection: None,
            notifications: Vec::new(),
            github: None,
            preview_retention: None,
        }
    }

    /// The build settings a build in `environment` starts from: production's, or for a preview
    /// production's with the preview variables and secrets laid over; a fork's pull request
    /// gets no secret at all.
    pub fn build_for(&self, environment: Environment, fork: bool) -> BuildSettings {
        let mut build = match environment {
            Environment::Production => self.build.clone(),
            Environment::Preview => self.build.overlay(&BuildSettings {
                env: self.preview_env.env.clone(),
                secrets: self.preview_env.secrets.clone(),
                ..BuildSettings::default()
            }),
        };
        if fork {
            build.secrets.clear();
        }
        build
    }

    /// The environment a build of `git_ref` runs in.
    pub fn environment_of(&self, git_ref: Option<&str>) -> Environment {
        if self.is_production_ref(git_ref) {
            Environment::Production
        } else {
            Environment::Preview
        }
    }

    /// Points the alias at `deployment` at time `now`, remembering the one it replaces.
    pub fn set_production(&mut self, deployment: &DeploymentId, now: u64) {
        if self.production.as_ref() == Some(deployment) {
            return;
        }
        if let Some(previous) = self.production.replace(deployment.clone()) {
            self.history.push(previous.clone());
            let excess = self.history.len().saturating_sub(MAX_HISTORY);
            self.history.drain(..excess);
            self.note_replaced(previous, now);
        }
    }

    /// Records that `previous` stopped serving production at `now` (newest first, the last
    /// [`SKEW_KEEP`]).
    pub fn note_replaced(&mut self, previous: DeploymentId, now: u64) {
        self.replaced.retain(|r| r.id != previous);
        self.replaced.insert(
            0,
            Replaced {
                id: previous,
                unix_ms: now,
            },
        );
        self.replaced.truncate(SKEW_KEEP);
    }

    /// What serving the production host needs: the deployment, HSTS, and the earlier
    /// deployments skew protection still serves assets of (with until when).
    pub fn production(&self) -> Option<Production> {
        let id = self.production.clone()?;
        let window = u64::from(
            self.skew_protection_secs
                .unwrap_or(SKEW_WINDOW_DEFAULT_SECS),
        );
        let earlier = self
            .replaced
            .iter()
            .filter(|r| window > 0 && r.id != id)
            .map(|r| (r.id.clone(), r.unix_ms.saturating_add(window * 1000)))
            .collect();
        Some(Production {
            id,
            hsts_max_age_secs: self.hsts_max_age_secs,
            earlier,
        })
    }

    /// What the edge serves for this project: its production deployment (with HSTS and skew
    /// protection) and its preview aliases.
    pub fn edge_view(&self) -> EdgeView {
        EdgeView {
            production: self.production(),
            previews: self.served_previews(),
            protection: self.protection.as_ref().map(|p| match p.for_edge() {
                Some(edge) => std::sync::Arc::new(edge),
                // A record that cannot be read keeps everyone out rather than letting all in.
                None => std::sync::Arc::new(crate::protection::EdgeProtection {
                    scope: crate::protection::ProtectionScope::All,
                    password: None,
                    bypass_sha256: None,
                    cookie_key: [0; 32],
                }),
            }),
        }
    }

    /// A digest of everything [`Project::edge_view`] depends on: a write that changes it is
    /// announced to every edge (the stores compare it before and after).
    pub fn edge_fingerprint(&self) -> String {
        use sha2::Digest;
        let served = serde_json::json!([
            self.production,
            self.hsts_max_age_secs,
            self.skew_protection_secs,
            self.replaced,
            self.served_previews()
                .into_iter()
                .collect::<BTreeMap<_, _>>(),
            self.protection,
        ]);
        hex::encode(&sha2::Sha256::digest(served.to_string().as_bytes())[..12])
    }

    /// The repository URL with credentials hidden.
    pub fn repo_display(&self) -> String {
        redact_repo_url(&self.repo)
    }

    /// Whether a build of `git_ref` is a production build of this project.
    pub fn is_production_ref(&self, git_ref: Option<&str>) -> bool {
        match (&self.production_branch, git_ref) {
            (None, None) => true,
            (Some(branch), Some(r)) => branch == r,
            (None, Some(_)) | (Some(_), None) => false,
        }
    }
}

/// What the edge serves for one project ([`Project::edge_view`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EdgeView {
    /// Its production deployment, if it has one.
    pub production: Option<Production>,
    /// Preview aliases serving a build: slug → deployment.
    pub previews: HashMap<String, DeploymentId>,
    /// Its visitor protection, when it has one.
    pub protection: Option<std::sync::Arc<crate::protection::EdgeProtection>>,
}

/// Resolves a project name to what it serves, and a custom domain to its project (the edge's
/// alias lookups).
#[async_trait::async_trait]
pub trait AliasResolver: Send + Sync {
    /// What `project` serves, if the project exists.
    async fn project(&self, project: &str) -> Option<std::sync::Arc<EdgeView>>;
    /// The project an active custom domain serves (`domain` normalized), if any.
    async fn custom_domain(&self, domain: &str) -> Option<String>;
}

/// Why a project could not be created or used.
#[derive(Debug, thiserror::Error)]
pub enum ProjectError {
    /// A project of that name exists.
    #[error("project {0} already exists")]
    Exists(String),
    /// The project deploys another repository.
    #[error("project {name} deploys {repo}, not this repository")]
    OtherRepo {
        /// Project name.
        name: String,
        /// Its repository (redacted).
        repo: String,
    },
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] crate::store_error::StoreError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaced_productions_are_kept_newest_first_within_the_window() {
        let id = |s: &str| DeploymentId::parse(s).unwrap();
        let (a, b, c, d, e) = (
            id("aaaaaaaaaaa1"),
            id("bbbbbbbbbbb2"),
            id("ccccccccccc3"),
            id("ddddddddddd4"),
            id("eeeeeeeeeee5"),
        );
        let mut p = Project::new("x", "r", None, 0);
        assert_eq!(p.production(), None);
        p.set_production(&a, 1_000);
        assert!(p.production().unwrap().earlier.is_empty());
        p.set_production(&b, 2_000);
        p.set_production(&b, 2_500); // the same again changes nothing
        p.set_production(&c, 3_000);
        let window = u64::from(SKEW_WINDOW_DEFAULT_SECS) * 1000;
        assert_eq!(
            p.production().unwrap().earlier[..],
            [(b.clone(), 3_000 + window), (a.clone(), 2_000 + window)]
        );
        p.set_production(&d, 4_000);
        p.set_production(&e, 5_000);
        let earlier: Vec<_> = p
            .production()
            .unwrap()
            .earlier
            .iter()
            .map(|(i, _)| i.clone())
            .collect();
        assert_eq!(
            earlier,
            vec![d.clone(), c.clone(), b.clone()],
            "the last {SKEW_KEEP}"
        );
        // Back to one that was replaced: it is production, not an earlier one.
        p.set_production(&c, 6_000);
        let earlier: Vec<_> = p
            .production()
            .unwrap()
            .earlier
            .iter()
            .map(|(i, _)| i.clone())
            .collect();
        assert_eq!(earlier, vec![e.clone(), d.clone()]);
        p.skew_protection_secs = Some(60);
        assert_eq!(p.production().unwrap().earlier[0], (e, 6_000 + 60_000));
        p.skew_protection_secs = Some(0);
        assert!(p.production().unwrap().earlier.is_empty(), "0 turns it off");
    }

    #[test]
    fn previews_fall_back_to_production_and_forks_get_no_secret() {
        let mut p = Project::new("x", "r", Some("main"), 0);
        p.build.env = [
            ("API".to_owned(), "prod".to_owned()),
            ("A".into(), "1".into()),
        ]
        .into();
        p.build.secrets = [("TOKEN".to_owned(), "prod-secret".to_owned())].into();
        p.preview_env.env = [("API".to_owned(), "staging".to_owned())].into();
        p.preview_env.secrets = [("A".to_owned(), "secret-a".to_owned())].into();
        let prod = p.build_for(Environment::Production, false);
        assert_eq!(prod.env["API"], "prod");
        assert_eq!(prod.secrets["TOKEN"], "prod-secret");
        let preview = p.build_for(Environment::Preview, false);
        assert_eq!(preview.env["API"], "staging", "set for previews: wins");
        assert_eq!(
            preview.secrets["TOKEN"], "prod-secret",
            "unset: production's"
        );
        assert_eq!(preview.secrets["A"], "secret-a");
        assert!(
            !preview.env.contains_key("A"),
            "a secret of that name replaces the variable"
        );
        let fork = p.build_for(Environment::Preview, true);
        assert!(fork.secrets.is_empty());
        assert_eq!(fork.env["API"], "staging");
        assert_eq!(p.environment_of(Some("main")), Environment::Production);
        assert_eq!(p.environment_of(Some("dev")), Environment::Preview);
        assert_eq!(p.environment_of(None), Environment::Preview);
    }

    #[test]
    fn production_ref_table() {
        let p = |branch: Option<&str>| Project::new("x", "r", branch, 0);
        assert!(p(Some("main")).is_production_ref(Some("main")));
        assert!(!p(Some("main")).is_production_ref(Some("feature")));
        assert!(!p(Some("main")).is_production_ref(None));
        assert!(p(None).is_production_ref(None));
    }
}
