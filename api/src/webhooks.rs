//! GitHub webhooks: `POST /api/hooks/github`. The project is found by the repository's URL, the
//! body is verified against the project's secret (`X-Hub-Signature-256`, HMAC-SHA256 of the raw
//! body, compared in constant time), and a delivery is taken once (a replay of the same signed
//! body is refused). A push to a branch deploys it: the production branch becomes production,
//! other branches are previews at their branch alias; a deleted branch retires its alias. A
//! pull request opened, updated or reopened builds its head commit as a preview at
//! `pr-<n>--<project>` (from a fork: without the project's secrets, [`is_fork`]); closing it
//! retires the alias. Anything unsigned or mis-signed is refused and runs nothing. A push to a
//! project with a root directory or watch paths names the commit of the branch's last ready
//! build ([`skip_base`]), so a build that nothing changed for is skipped.

use gitdeploy_core::job::{BuildSettings, ServingOptions};
use gitdeploy_core::DeploymentStatus;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

use crate::store::Deployment;

/// Whether `signature` (the header value, `sha256=<hex>`) signs `body` with `secret`.
pub fn signature_valid(secret: &str, body: &[u8], signature: &str) -> bool {
    let Some(hex_sig) = signature.trim().strip_prefix("sha256=") else {
        return false;
    };
    let Ok(expected) = hex::decode(hex_sig) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
        return false;
    };
    mac.update(body);
    // `verify_slice` compares in constant time.
    mac.verify_slice(&expected).is_ok()
}

/// What a delivery is remembered by against replays: its signature, which only the secret's
/// holder can make and which changes with any byte of the body.
pub fn replay_key(signature: &str) -> String {
    signature.trim().to_ascii_lowercase().replace('=', "-")
}

pub use gitdeploy_core::repo::normalize_repo;

/// The commit a push's build compares with to decide whether it can be skipped
/// ([`gitdeploy_core::watch`]): the one the project's last ready build of `git_ref` was made
/// from, when it was built with the same settings (otherwise nothing is skipped, since a
/// change of settings is a change too). `deployments` are newest first.
pub fn skip_base(
    deployments: &[Deployment],
    git_ref: Option<&str>,
    build: &BuildSettings,
    serving: &ServingOptions,
) -> Option<String> {
    let last = deployments
        .iter()
        .find(|d| d.status == DeploymentStatus::Ready && d.git_ref.as_deref() == git_ref)?;
    let same = last.build == build.without_secret_values()
        && last.serving == *serving
        && build
            .watch_paths
            .iter()
            .chain(&build.root_dir)
            .next()
            .is_some();
    same.then(|| last.commit.clone()).flatten()
}

/// The parts of a push event we use.
#[derive(Debug, Deserialize)]
pub struct PushEvent {
    /// `refs/heads/<branch>` or `refs/tags/<tag>`.
    #[serde(rename = "ref")]
    pub git_ref: String,
    /// The branch was deleted.
    #[serde(default)]
    pub deleted: bool,
    /// The commit the branch points at now.
    #[serde(default)]
    pub after: Option<String>,
    /// The repository.
    pub repository: Repository,
}

/// The parts of a `pull_request` event we use.
#[derive(Debug, Deserialize)]
pub struct PullRequestEvent {
    /// `opened`, `synchronize`, `reopened`, `closed`, and others we ignore.
    pub action: String,
    /// The pull request's number.
    pub number: u64,
    /// The pull request.
    pub pull_request: PullRequest,
}

/// A pull request.
#[derive(Debug, Deserialize)]
pub struct PullRequest {
    /// The branch and commit proposed.
    pub head: PullRequestSide,
    /// The branch it would merge into.
    pub base: PullRequestSide,
}

/// One side of a pull request.
#[derive(Debug, Deserialize)]
pub struct PullRequestSide {
    /// The branch name.
    #[serde(rename = "ref")]
    pub git_ref: String,
    /// Its commit.
    pub sha: String,
    /// Its repository (`null` when a fork was deleted).
    #[serde(default)]
    pub repo: Option<SideRepository>,
}

/// The repository of a pull request's side.
#[derive(Debug, Deserialize)]
pub struct SideRepository {
    /// `owner/name`.
    pub full_name: String,
}

/// Whether a pull request comes from another repository (a fork, or one since deleted): its
/// code is a stranger's, so its build gets none of the project's secrets (as GitHub Actions
/// treats forks).
pub fn is_fork(pr: &PullRequest) -> bool {
    match (&pr.head.repo, &pr.base.repo) {
        (Some(head), Some(base)) => !head.full_name.eq_ignore_ascii_case(&base.full_name),
        _ => true,
    }
}

/// What a pull request event asks of a project.
#[derive(Debug, PartialEq, Eq)]
pub enum PullRequestAction {
    /// Build its head commit as a preview.
    Build,
    /// Retire its alias.
    Retire,
    /// Nothing (labels, reviews, edits...).
    Ignore,
}

/// The action for a pull request event's `action`.
pub fn pull_request_action(action: &str) -> PullRequestAction {
    match action {
        "opened" | "synchronize" | "reopened" => PullRequestAction::Build,
        "closed" => PullRequestAction::Retire,
        _ => PullRequestAction::Ignore,
    }
}

/// The repository of an event.
#[derive(Debug, Deserialize)]
pub struct Repository {
    /// `https://github.com/owner/name.git`
    #[serde(default)]
    pub clone_url: Option<String>,
    /// `git://github.com/owner/name.git`
    #[serde(default)]
    pub git_url: Option<String>,
    /// `git@github.com:owner/name.git`
    #[serde(default)]
    pub ssh_url: Option<String>,
    /// `https://github.com/owner/name`
    #[serde(default)]
    pub html_url: Option<String>,
    /// The repository's default branch.
    #[serde(default)]
    pub default_branch: Option<String>,
}

impl Repository {
    /// Every URL the event names, normalized.
    pub fn urls(&self) -> Vec<String> {
        [
            &self.clone_url,
            &self.git_url,
            &self.ssh_url,
            &self.html_url,
        ]
        .into_iter()
        .flatten()
        .map(|u| normalize_repo(u))
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skip_base_is_the_last_ready_build_of_the_branch_with_the_same_settings() {
        let watched = BuildSettings {
            root_dir: Some("web".into()),
            ..Default::default()
        };
        let d = |status, git_ref: Option<&str>, commit: &str, build: &BuildSettings| Deployment {
            id: gitdeploy_core::DeploymentId::random(),
            project: Some("p".into()),
            repo: "https://example.com/r".into(),
            repo_credentials_withheld: false,
            git_ref: git_ref.map(str::to_owned),
            serving: ServingOptions::default(),
            build: build.clone(),
            status,
            error: None,
            commit: Some(commit.into()),
            created_unix_ms: 0,
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
        use DeploymentStatus::{Failed, Ready, Skipped};
        let serving = ServingOptions::default();
        let list = [
            d(Failed, Some("main"), "c3", &watched),
            d(Skipped, Some("main"), "c2", &watched),
            d(Ready, Some("dev"), "d1", &watched),
            d(Ready, Some("main"), "c1", &watched),
        ];
        let base = |git_ref, build: &BuildSettings| skip_base(&list, git_ref, build, &serving);
        assert_eq!(base(Some("main"), &watched).as_deref(), Some("c1"));
        assert_eq!(base(Some("dev"), &watched).as_deref(), Some("d1"));
        assert_eq!(base(None, &watched), None);
        // Other settings, or nothing that narrows what is watched: always build.
        let other = BuildSettings {
            build_command: Some("make".into()),
            ..watched.clone()
        };
        assert_eq!(base(Some("main"), &other), None);
        let whole = [d(Ready, Some("main"), "c1", &BuildSettings::default())];
        assert_eq!(
            skip_base(&whole, Some("main"), &BuildSettings::default(), &serving),
            None
        );
    }

    #[test]
    fn forks_and_actions() {
        let side = |name: Option<&str>| PullRequestSide {
            git_ref: "b".into(),
            sha: "0".repeat(40),
            repo: name.map(|n| SideRepository {
                full_name: n.into(),
            }),
        };
        let pr = |head, base| PullRequest {
            head: side(head),
            base: side(base),
        };
        assert!(!is_fork(&pr(Some("o/site"), Some("o/site"))));
        assert!(!is_fork(&pr(Some("O/Site"), Some("o/site"))));
        assert!(is_fork(&pr(Some("stranger/site"), Some("o/site"))));
        assert!(
            is_fork(&pr(None, Some("o/site"))),
            "a deleted fork is a fork"
        );
        for (action, want) in [
            ("opened", PullRequestAction::Build),
            ("synchronize", PullRequestAction::Build),
            ("reopened", PullRequestAction::Build),
            ("closed", PullRequestAction::Retire),
            ("labeled", PullRequestAction::Ignore),
            ("edited", PullRequestAction::Ignore),
        ] {
            assert_eq!(pull_request_action(action), want, "{action}");
        }
    }

    #[test]
    fn signature_table() {
        // The example from GitHub's documentation.
        let secret = "It's a Secret to Everybody";
        let body = b"Hello, World!";
        let good = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert!(signature_valid(secret, body, good));
        assert!(!signature_valid("other", body, good));
        assert!(!signature_valid(secret, b"Hello, World?", good));
        assert!(!signature_valid(secret, body, "sha1=abc"));
        assert!(!signature_valid(secret, body, "sha256=zz"));
        assert!(!signature_valid(secret, body, ""));
    }
}
