//! What one ECS build task may reach, and nothing more.
//!
//! A build task runs a stranger's repository. Its own code is trusted, but whatever it holds a
//! sandbox escape would hold too, so it holds only what its one build needs:
//!
//! - **Redis:** a user of its own (`gitdeploy-build-<id>`, random password), created by the edge
//!   before `RunTask` and deleted when the outcome is settled. Its ACL ([`acl_rules`]) opens the
//!   build's log, its withheld values, its heartbeat and its [`TaskReport`], and lets it *read*
//!   its own deployment record (to see a cancel). Nothing else: no other build's keys, no
//!   project, no alias, no channel, no key listing, no admin command.
//! - **Storage:** a session of the upload role, assumed by the edge with the session policy of
//!   [`s3_session_policy`]: write its own staging area `uploads/<id>/*`, read `blobs/*` (to see
//!   which are stored already), and read and write its cache scope's `build-cache/<scope>/*`.
//!   It writes nothing that is served: the edge checks what it staged and publishes it. The
//!   session travels through Redis with the secrets; the task role needs no S3 permission.
//!
//! So the task never writes a shared record. It reports its outcome into `task:<id>`, and an
//! edge (the one watching the task, or any edge's reconciler once the task is gone) checks it
//! and applies it: the status change, the alias move and the log's final record, as for a local
//! build.
//!
//! The rules live here as pure functions, with the [`TaskAccess`] contract the ECS runner hands
//! access over through; `redis_task` speaks them to Redis.

use gitdeploy_core::keys::ObjectLayout;
use gitdeploy_core::{DeploymentId, Outcome};
use serde::{Deserialize, Serialize};

/// The Redis user a task connects as.
#[derive(Clone)]
pub struct TaskGrant {
    /// User name (`gitdeploy-build-<id>`).
    pub user: String,
    /// Its password (random; Redis keeps only its hash).
    pub password: String,
}

impl std::fmt::Debug for TaskGrant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskGrant")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// What the ECS runner hands a task through the store, out of sight of the ECS API.
#[async_trait::async_trait]
pub trait TaskAccess: Send + Sync {
    /// Keeps `withheld` (JSON: secret values, repository credentials, a storage session) for
    /// deployment `id` until the task takes it.
    async fn put_withheld(&self, id: &DeploymentId, withheld: String) -> std::io::Result<()>;
    /// Creates the Redis user of `id`'s task ([`acl_rules`]).
    async fn grant(&self, id: &DeploymentId) -> std::io::Result<TaskGrant>;
    /// Creates that user again when Redis lost it (a restart); nothing for an unknown build.
    async fn renew(&self, id: &DeploymentId) -> std::io::Result<()>;
}

/// Environment of a task naming its Redis user and password.
pub const REDIS_USER_ENV: &str = "GITDEPLOY_REDIS_USER";
/// See [`REDIS_USER_ENV`].
pub const REDIS_PASSWORD_ENV: &str = "GITDEPLOY_REDIS_PASSWORD";

/// The Redis user of deployment `id`'s task.
pub fn redis_user(id: &DeploymentId) -> String {
    format!("gitdeploy-build-{id}")
}

/// The runner instance name a task heartbeats as (`runner:<name>`).
pub fn task_instance(id: &DeploymentId) -> String {
    format!("task-{id}")
}

/// `s` with Redis glob characters escaped, for a key pattern that must match only itself.
fn glob_literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Commands a task uses: connecting, its heartbeat and secrets (strings), its log (a stream),
/// its report and a read of its record (hashes). Nothing that lists, scans or administers.
/// (The client library's `CLIENT SETINFO` is refused and ignored; Redis 7.0 has no such
/// command to name.)
const TASK_COMMANDS: &[&str] = &[
    "ping",
    "hello",
    "auth",
    "select",
    "get",
    "set",
    "del",
    "getdel",
    "exists",
    "expire",
    "xadd",
    "xrange",
    "xrevrange",
    "hget",
    "hmget",
    "hset",
    "hsetnx",
];

/// `ACL SETUSER <user>` rules for the task of `id` under key `prefix`, with the password given
/// as its SHA-256 (hex): the edge can renew the user (after a Redis restart) without keeping
/// the password.
pub fn acl_rules(prefix: &str, id: &DeploymentId, password_sha256: &str) -> Vec<String> {
    let p = glob_literal(prefix);
    let mut rules: Vec<String> = vec![
        "reset".into(),
        "resetchannels".into(),
        "on".into(),
        format!("#{password_sha256}"),
    ];
    rules.extend(TASK_COMMANDS.iter().map(|c| format!("+{c}")));
    for kind in ["log", "log-open", "job-secrets", "task"] {
        rules.push(format!("~{p}{kind}:{id}"));
    }
    rules.push(format!("~{p}runner:{}", task_instance(id)));
    rules.push(format!("%R~{p}d:{id}"));
    rules
}

/// The session policy limiting an upload-role session to deployment `id` in `bucket`: its
/// staging area put (and multipart uploads into it aborted), the shared blobs read (a `HEAD`
/// says whether one is stored; a blob's name is the hash of its bytes, so only what the build
/// has can be found), nothing deleted; the build caches of its cache scope (`scope`, from
/// [`gitdeploy_core::keys::cache_scope`]), read and put; and only the markers of garbage
/// collections listed (a publish waits while one runs, `builder::publish::gc`).
pub fn s3_session_policy(
    bucket: &str,
    layout: &ObjectLayout,
    id: &DeploymentId,
    scope: &str,
) -> String {
    let arn = |key: String| format!("arn:aws:s3:::{bucket}/{key}");
    serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "StageThisDeploymentOnly",
            "Effect": "Allow",
            "Action": ["s3:PutObject", "s3:AbortMultipartUpload"],
            "Resource": [arn(format!("{}*", layout.upload_prefix(id)))],
        }, {
            "Sid": "SeeWhichBlobsAreStored",
            "Effect": "Allow",
            "Action": ["s3:GetObject"],
            "Resource": [arn(format!("{}*", layout.blobs_prefix()))],
        }, {
            "Sid": "BuildCachesOfThisScopeOnly",
            "Effect": "Allow",
            "Action": ["s3:GetObject", "s3:PutObject"],
            "Resource": [arn(format!("{}*", layout.build_cache_prefix(scope)))],
        }, {
            "Sid": "SeeWhetherACollectionRuns",
            "Effect": "Allow",
            "Action": ["s3:ListBucket"],
            "Resource": [format!("arn:aws:s3:::{bucket}")],
            "Condition": {"StringLike": {"s3:prefix": [format!("{}*", layout.gc_running_prefix())]}},
        }],
    })
    .to_string()
}

/// How long an upload session lasts: the build's timeout plus margin for clone and upload, at
/// least STS's minimum (15 minutes) and at most an hour (the limit for a role assumed with
/// another role's credentials).
pub fn session_seconds(build_timeout_secs: u64) -> i32 {
    (build_timeout_secs + 600).clamp(900, 3600) as i32
}

/// The longest build an upload session covers.
pub const MAX_SESSION_BUILD_SECS: u64 = 3000;

/// What a task reports about its build in `task:<id>`: which instance claimed it, and how it
/// ended.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskReport {
    /// The task instance that started the build (a second start of the same task is refused).
    pub claimed_by: Option<String>,
    /// How the build ended, once it has.
    pub ended: Option<TaskEnding>,
}

/// The end of a task's build, as the task reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskEnding {
    /// Status, error, exit code and sizes.
    pub outcome: Outcome,
    /// The commit that was built, when the clone got that far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
}

/// Checks an ending a task reported before an edge applies it: a task may report how its own
/// build ended, but not a status that is not an ending.
pub fn check_ending(ending: &TaskEnding) -> Result<(), String> {
    use gitdeploy_core::DeploymentStatus as S;
    match ending.outcome.status {
        S::Ready | S::Failed | S::Canceled | S::Skipped => Ok(()),
        other => Err(format!("a task reported {other:?} as its build's end")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> DeploymentId {
        DeploymentId::parse("k3f9q2m8x1ab").unwrap()
    }

    #[test]
    fn a_task_user_opens_its_own_keys_only() {
        let rules = acl_rules("gitdeploy:", &id(), "ab12");
        let keys: Vec<&str> = rules
            .iter()
            .filter(|r| r.starts_with('~') || r.starts_with('%'))
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            [
                "~gitdeploy:log:k3f9q2m8x1ab",
                "~gitdeploy:log-open:k3f9q2m8x1ab",
                "~gitdeploy:job-secrets:k3f9q2m8x1ab",
                "~gitdeploy:task:k3f9q2m8x1ab",
                "~gitdeploy:runner:task-k3f9q2m8x1ab",
                "%R~gitdeploy:d:k3f9q2m8x1ab",
            ]
        );
        // Reset first (no inherited rights), channels closed, password as a hash.
        assert_eq!(rules[..4], ["reset", "resetchannels", "on", "#ab12"]);
        for forbidden in [
            "+@all",
            "+keys",
            "+scan",
            "+publish",
            "+subscribe",
            "+eval",
            "+acl",
        ] {
            assert!(!rules.iter().any(|r| r == forbidden), "{forbidden}");
        }
        assert!(
            rules.iter().all(|r| !r.contains('*')),
            "no wildcard: {rules:?}"
        );
    }

    #[test]
    fn glob_characters_in_the_prefix_match_only_themselves() {
        for (prefix, want) in [
            ("gitdeploy:", "gitdeploy:"),
            ("a*b:", "a\\*b:"),
            ("x?[y]\\:", "x\\?\\[y\\]\\\\:"),
            ("", ""),
        ] {
            assert_eq!(glob_literal(prefix), want, "{prefix}");
            let rules = acl_rules(prefix, &id(), "00");
            assert!(rules.contains(&format!("~{want}log:k3f9q2m8x1ab")));
        }
    }

    #[test]
    fn an_upload_session_may_stage_this_deployment_and_nothing_else() {
        for prefix in ["", "/prod/"] {
            let p = prefix.trim_matches('/');
            let p = if p.is_empty() {
                String::new()
            } else {
                format!("{p}/")
            };
            let policy: serde_json::Value = serde_json::from_str(&s3_session_policy(
                "b",
                &ObjectLayout::new(prefix),
                &id(),
                "project-p",
            ))
            .unwrap();
            let statements = policy["Statement"].as_array().unwrap();
            let got: Vec<_> = statements
                .iter()
                .map(|st| {
                    assert_eq!(st["Effect"], "Allow");
                    (st["Action"].clone(), st["Resource"].clone())
                })
                .collect();
            // Writes reach this deployment's staging area and its cache scope, nothing shared:
            // no blob, no manifest, no other deployment (the edge checks and publishes).
            let want = [
                (
                    serde_json::json!(["s3:PutObject", "s3:AbortMultipartUpload"]),
                    serde_json::json!([format!("arn:aws:s3:::b/{p}uploads/k3f9q2m8x1ab/*")]),
                ),
                (
                    serde_json::json!(["s3:GetObject"]),
                    serde_json::json!([format!("arn:aws:s3:::b/{p}blobs/*")]),
                ),
                (
                    serde_json::json!(["s3:GetObject", "s3:PutObject"]),
                    serde_json::json!([format!("arn:aws:s3:::b/{p}build-cache/project-p/*")]),
                ),
                (
                    serde_json::json!(["s3:ListBucket"]),
                    serde_json::json!(["arn:aws:s3:::b"]),
                ),
            ];
            assert_eq!(got, want, "{prefix}");
            // Listing only the collections' markers.
            assert_eq!(
                statements[3]["Condition"],
                serde_json::json!({"StringLike": {"s3:prefix": [format!("{p}gc/running/*")]}})
            );
        }
    }

    #[test]
    fn sessions_cover_the_build_within_sts_limits() {
        for (timeout, want) in [
            (0, 900),
            (300, 900),
            (900, 1500),
            (3000, 3600),
            (9000, 3600),
        ] {
            assert_eq!(session_seconds(timeout), want, "{timeout}");
        }
    }

    #[test]
    fn a_task_may_report_only_an_ending() {
        use gitdeploy_core::DeploymentStatus as S;
        for (status, ok) in [
            (S::Ready, true),
            (S::Failed, true),
            (S::Canceled, true),
            (S::Skipped, true),
            (S::Building, false),
            (S::Queued, false),
        ] {
            let ending = TaskEnding {
                outcome: Outcome {
                    status,
                    error: None,
                    skip_reason: None,
                    exit_code: None,
                    duration_ms: None,
                    files: None,
                    bytes: None,
                },
                commit: None,
            };
            assert_eq!(check_ending(&ending).is_ok(), ok, "{status:?}");
        }
    }
}
