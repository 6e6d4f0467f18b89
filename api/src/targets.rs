//! Where a project's deployment events go, as its settings keep them: notification webhooks and
//! the GitHub connection. Delivering them is [`crate::notify`]'s.

use serde::{Deserialize, Serialize};

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A build was queued.
    Queued,
    /// A build is ready (served at its addresses).
    Ready,
    /// A build failed.
    Failed,
    /// A build was canceled.
    Canceled,
    /// A deployment became the project's production (by hand or by its branch).
    Promoted,
    /// The project's production went back to an earlier deployment.
    RolledBack,
}

impl EventKind {
    /// Every kind, in order.
    pub const ALL: [EventKind; 6] = [
        EventKind::Queued,
        EventKind::Ready,
        EventKind::Failed,
        EventKind::Canceled,
        EventKind::Promoted,
        EventKind::RolledBack,
    ];

    /// Its name as the API and payloads write it (`ready`).
    pub fn name(self) -> &'static str {
        match self {
            EventKind::Queued => "queued",
            EventKind::Ready => "ready",
            EventKind::Failed => "failed",
            EventKind::Canceled => "canceled",
            EventKind::Promoted => "promoted",
            EventKind::RolledBack => "rolled_back",
        }
    }

    /// Reads a name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }

    /// The event a build ending in `status` is; `None` for one that is not an end we tell of
    /// (`skipped`).
    pub fn of_end(status: gitdeploy_core::DeploymentStatus) -> Option<Self> {
        use gitdeploy_core::DeploymentStatus::*;
        match status {
            Ready => Some(EventKind::Ready),
            Failed => Some(EventKind::Failed),
            Canceled => Some(EventKind::Canceled),
            _ => None,
        }
    }
}

/// Notification webhooks a project may have.
pub const MAX_TARGETS: usize = 20;

/// The body a notification webhook receives.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// GitDeploy's JSON (`event`, `project`, `deployment`, ...).
    #[default]
    Json,
    /// `{"text": ...}`, what Slack's (and Mattermost's, and Discord's `/slack`) incoming
    /// webhooks take.
    Slack,
}

/// One notification webhook.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationTarget {
    /// Its id (`ntf_` and 12 letters and digits).
    pub id: String,
    /// Where it is posted (checked by [`crate::notify::outbound::Policy::check_url`]).
    pub url: String,
    /// The events it receives.
    pub events: Vec<EventKind>,
    /// The body's shape.
    #[serde(default)]
    pub format: Format,
    /// The HMAC-SHA256 key of `X-GitDeploy-Signature-256` (shown once, when made).
    pub secret: String,
    /// Made at (Unix ms).
    pub created_unix_ms: u64,
}

/// A project's GitHub connection: commit statuses on the commits it builds, and one comment per
/// pull request, edited with each preview.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GithubLink {
    /// A fine-grained personal access token or an app installation token, with commit statuses
    /// and pull requests (or issues) write access. Never shown.
    pub token: String,
    /// `owner/name` on GitHub.
    pub repository: String,
}

impl std::fmt::Debug for GithubLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GithubLink")
            .field("repository", &self.repository)
            .finish_non_exhaustive()
    }
}

/// `owner/name` of a GitHub repository URL (`https://github.com/owner/name(.git)`, the git and
/// ssh forms too), when the URL is GitHub's.
pub fn github_repository(repo_url: &str) -> Option<String> {
    let normalized = gitdeploy_core::repo::normalize_repo(repo_url);
    let rest = normalized.strip_prefix("github.com/")?;
    let mut parts = rest.split('/');
    let (owner, name) = (parts.next()?, parts.next()?);
    (parts.next().is_none() && valid_repository(&format!("{owner}/{name}")))
        .then(|| format!("{owner}/{name}"))
}

/// Whether `full_name` is an `owner/name` GitHub would accept (and that is safe in a URL path).
pub fn valid_repository(full_name: &str) -> bool {
    let Some((owner, name)) = full_name.split_once('/') else {
        return false;
    };
    let part = |s: &str| {
        !s.is_empty()
            && s.len() <= 100
            && s != "."
            && s != ".."
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    };
    part(owner) && part(name)
}

/// A fresh target id.
pub fn new_target_id() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let tail: String = (0..12)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    format!("ntf_{tail}")
}

/// A fresh signing secret.
pub fn new_secret() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repositories_of_urls() {
        for (url, want) in [
            ("https://github.com/owner/site", Some("owner/site")),
            ("https://github.com/owner/site.git", Some("owner/site")),
            ("git@github.com:owner/site.git", Some("owner/site")),
            (
                "https://x:tok@github.com/Owner/my.site/",
                Some("Owner/my.site"),
            ),
            ("https://gitlab.com/owner/site", None),
            ("https://github.com/owner", None),
            ("https://github.com/owner/site/tree/main", None),
            ("git://127.0.0.1:9418/site", None),
        ] {
            assert_eq!(github_repository(url).as_deref(), want, "{url}");
        }
        for (name, ok) in [
            ("owner/site", true),
            ("o-w_n.er/s.i-t_e", true),
            ("owner", false),
            ("owner/../x", false),
            ("../x", false),
            ("owner/site?x", false),
            ("owner/si te", false),
        ] {
            assert_eq!(valid_repository(name), ok, "{name}");
        }
        assert!(new_target_id().starts_with("ntf_"));
        assert_eq!(new_secret().len(), 64);
        let link = GithubLink {
            token: "ghp_secret".into(),
            repository: "o/r".into(),
        };
        assert!(!format!("{link:?}").contains("ghp_secret"));
    }
}
