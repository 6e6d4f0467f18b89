//! What started a deployment and what it moves: the preview alias it follows (a branch or a
//! pull request), the commit GitHub named, whether it came from a fork, the environment it was
//! asked to build in. Plain data the records, the projects and the API share
//! ([`crate::previews`] has the rules of aliases).

use gitdeploy_core::preview::{branch_slug, pull_request_slug};
use gitdeploy_core::DeploymentId;
use serde::{Deserialize, Serialize};

/// Which variables a build gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Environment {
    /// Builds of the production branch.
    Production,
    /// Everything else: other branches, pull requests, folders not deployed with `--prod`.
    Preview,
}

/// What a preview alias follows.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PreviewSource {
    /// A branch, by name.
    Branch(String),
    /// A pull request, by number.
    PullRequest(u64),
}

impl PreviewSource {
    /// Its slug in a label of `project`; `None` when the project's name leaves no room.
    pub fn slug(&self, project: &str) -> Option<String> {
        match self {
            PreviewSource::Branch(name) => branch_slug(name, project),
            PreviewSource::PullRequest(n) => Some(pull_request_slug(*n)),
        }
    }
}

/// One preview alias of a project.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreviewAlias {
    /// What it follows.
    pub source: PreviewSource,
    /// The latest ready build, once there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment: Option<DeploymentId>,
    /// When that build was queued (Unix ms): a build queued earlier never replaces it.
    #[serde(default)]
    pub deployment_created_unix_ms: u64,
    /// Opened at (Unix ms).
    pub opened_unix_ms: u64,
    /// The pull request's comment on GitHub that GitDeploy edits with each build.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment_id: Option<u64>,
}

/// What started a deployment, as far as previews and GitHub care.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trigger {
    /// The preview alias a ready build of it moves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<PreviewSource>,
    /// The commit a GitHub event named: its commit status is posted there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_sha: Option<String>,
    /// A pull request from a fork: built without the project's secrets.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fork: bool,
    /// The environment asked for a source folder (`gitdeploy deploy . --prod`: production);
    /// otherwise a folder builds as a preview.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<Environment>,
}

impl Trigger {
    /// Whether nothing is set (then it is not stored).
    pub fn is_empty(&self) -> bool {
        *self == Trigger::default()
    }

    /// The trigger of a deploy of `git_ref` (a branch or tag name, not a commit) in a project:
    /// its branch alias.
    pub fn of_ref(git_ref: Option<&str>) -> Trigger {
        Trigger {
            alias: git_ref
                .filter(|r| !gitdeploy_core::job::is_commit_hash(r))
                .map(|r| PreviewSource::Branch(r.to_owned())),
            ..Trigger::default()
        }
    }
}
