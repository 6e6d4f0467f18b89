//! A build job as the runner hands it to `gitdeploy-builder`, the events the builder reports
//! back, and the deployment status they lead to.

use serde::{Deserialize, Serialize};

use crate::id::DeploymentId;
use crate::log::LogStream;

/// Environment variables that carry a job to `gitdeploy-builder` (the same for a local child
/// process and an ECS container override). Credentials use the standard `AWS_*` variables.
pub mod env {
    /// JSON [`super::BuildJob`].
    pub const JOB: &str = "GITDEPLOY_JOB";
    /// Scratch directory for the checkout.
    pub const WORK_DIR: &str = "GITDEPLOY_WORK_DIR";
    /// Package manager cache kept between builds (optional).
    pub const CACHE_DIR: &str = "GITDEPLOY_CACHE_DIR";
    /// S3 endpoint URL (optional: AWS's regional endpoint when absent).
    pub const S3_ENDPOINT: &str = "GITDEPLOY_S3_ENDPOINT";
    /// Bucket name.
    pub const S3_BUCKET: &str = "GITDEPLOY_S3_BUCKET";
    /// Region (default `us-east-1`).
    pub const S3_REGION: &str = "GITDEPLOY_S3_REGION";
    /// Key prefix inside the bucket (optional).
    pub const S3_PREFIX: &str = "GITDEPLOY_S3_PREFIX";
}

/// Where a deployment is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeploymentStatus {
    /// Accepted, waiting for a builder.
    Queued,
    /// A builder is working on it.
    Building,
    /// Built and published; served by the edge.
    Ready,
    /// The build failed; nothing is served.
    Failed,
}

impl DeploymentStatus {
    /// True once the deployment can no longer change.
    pub fn is_terminal(self) -> bool {
        matches!(self, DeploymentStatus::Ready | DeploymentStatus::Failed)
    }
}

/// The builder's input (`GITDEPLOY_JOB`, JSON). Credentials never travel in here.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildJob {
    /// The deployment being built.
    pub deployment: DeploymentId,
    /// Repository URL, already validated by [`crate::repo::validate_repo_url`].
    pub repo: String,
    /// Branch, tag or commit; the default branch when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git_ref: Option<String>,
    /// How the site is served (written into the manifest).
    #[serde(default)]
    pub serving: ServingOptions,
}

/// Serving options of a deployment, chosen at deploy time and recorded in its manifest.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServingOptions {
    /// SPA fallback: `true` always, `false` never, absent: when the site has no `404.html`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spa: Option<bool>,
    /// Serve `/about.html` at `/about` and redirect the `.html` form there.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub clean_urls: bool,
}

/// One line of the builder's machine-readable output (NDJSON on its stdout).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum BuilderEvent {
    /// A log line.
    Log {
        /// When it was produced (Unix milliseconds).
        ts: u64,
        /// Source stream.
        stream: LogStream,
        /// The text.
        line: String,
    },
    /// A build phase ended (for metrics; the log has its own line).
    Phase {
        /// `clone`, `install`, `build` or `upload`.
        phase: String,
        /// How long it took, in milliseconds.
        millis: u64,
    },
    /// The build succeeded and the manifest is written.
    Published {
        /// The commit that was built.
        commit: String,
        /// Number of files published.
        files: u64,
        /// Total bytes published.
        bytes: u64,
    },
    /// The build failed.
    Failed {
        /// A short reason for users.
        error: String,
        /// Exit code of the failing command, if one failed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        exit_code: Option<i32>,
    },
}

/// Validates a branch, tag or commit name (a conservative subset of `git check-ref-format`).
pub fn validate_git_ref(r: &str) -> Result<(), String> {
    let ok = !r.is_empty()
        && r.len() <= 255
        && !r.starts_with('-')
        && !r.starts_with('/')
        && !r.ends_with('/')
        && !r.ends_with(".lock")
        && !r.contains("..")
        && !r.contains("//")
        && !r.contains("@{")
        && r.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/'));
    if ok {
        Ok(())
    } else {
        Err(format!("{r:?} is not a valid branch, tag or commit name"))
    }
}

/// True when a ref is a full commit hash (fetched by hash rather than by name).
pub fn is_commit_hash(r: &str) -> bool {
    r.len() == 40 && r.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_ref_table() {
        for (r, ok) in [
            ("main", true),
            ("release/1.2", true),
            ("v1.0.0", true),
            ("feature_x-y", true),
            ("", false),
            ("-c", false),
            ("--upload-pack=x", false),
            ("a..b", false),
            ("a b", false),
            ("a;rm", false),
            ("x.lock", false),
            ("/abs", false),
            ("a//b", false),
            ("@{-1}", false),
        ] {
            assert_eq!(validate_git_ref(r).is_ok(), ok, "{r:?}");
        }
        assert!(is_commit_hash("0123456789abcdef0123456789abcdef01234567"));
        assert!(!is_commit_hash("main"));
    }

    #[test]
    fn builder_events_are_tagged_json() {
        let e = BuilderEvent::Failed {
            error: "npm run build exited with 1".into(),
            exit_code: Some(1),
        };
        let json = serde_json::to_string(&e).unwrap();
        assert!(json.contains("\"event\":\"failed\""), "{json}");
        assert_eq!(serde_json::from_str::<BuilderEvent>(&json).unwrap(), e);
    }
}
