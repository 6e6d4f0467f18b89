//! A build job as the runner hands it to `gitdeploy-builder`, the events the builder reports
//! back, and the deployment status they lead to.

use std::collections::BTreeMap;

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
    /// `1` on a builder whose disk does not outlive it (an ECS task): the framework build
    /// caches are fetched from and kept in the bucket.
    pub const REMOTE_CACHE: &str = "GITDEPLOY_BUILD_CACHE_REMOTE";
    /// `1` on a builder holding a storage session limited to its own deployment: it stages its
    /// blobs and manifest under `uploads/<id>/` for the edge to check and publish.
    pub const STAGED_UPLOAD: &str = "GITDEPLOY_STAGED_UPLOAD";

    /// Machine settings that reach the builder and the build: where the trusted CA certificates
    /// are (a machine may trust a private CA for its registry mirror or proxy) and the outbound
    /// proxy. Nothing else of the server's environment does.
    pub const INHERITED: &[&str] = &[
        "NODE_EXTRA_CA_CERTS",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "GIT_SSL_CAINFO",
        "CURL_CA_BUNDLE",
        "REQUESTS_CA_BUNDLE",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "NO_PROXY",
        "http_proxy",
        "https_proxy",
        "no_proxy",
    ];
}

/// The builder's input (`GITDEPLOY_JOB`, JSON). Credentials never travel in here.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildJob {
    /// The deployment being built.
    pub deployment: DeploymentId,
    /// The project it belongs to, if any (recorded in the manifest, for access logs and
    /// traffic).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// Repository URL, already validated by [`crate::repo::validate_repo_url`].
    pub repo: String,
    /// Branch, tag or commit; the default branch when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git_ref: Option<String>,
    /// How the site is served (written into the manifest).
    #[serde(default)]
    pub serving: ServingOptions,
    /// The user's build settings.
    #[serde(default)]
    pub build: BuildSettings,
    /// Limits set by the operator.
    #[serde(default)]
    pub limits: BuildLimits,
    /// Package manager cache scope: builds with the same key share a cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_key: Option<String>,
    /// The commit the project's last ready build of this branch was made from, for a build a
    /// push started: when nothing under the root directory or the watch paths changed since,
    /// the build is skipped ([`crate::watch`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_commit: Option<String>,
    /// A deployment whose manifest answers the publish's lookups of the files it names (the
    /// project's production deployment when the build was queued), in place of one `HEAD`
    /// per file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<DeploymentId>,
    /// A source folder uploaded through the deploy API (`gitdeploy deploy .`), built in place of
    /// a clone of `repo` (then empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive: Option<SourceArchive>,
}

/// An uploaded source folder: a gzipped tar stored as blob `hash` in the blob store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceArchive {
    /// The archive's content hash (its blob).
    pub hash: crate::ContentHash,
    /// Its size in bytes.
    pub size: u64,
}

/// Per-deployment build settings; every field is optional.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildSettings {
    /// Replaces the detected install command (run with `sh -c`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub install_command: Option<String>,
    /// Replaces the detected build command (run with `sh -c`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_command: Option<String>,
    /// Directory to publish, relative to the root directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_dir: Option<String>,
    /// Subfolder of the repository to build (monorepos).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_dir: Option<String>,
    /// Paths besides the root directory whose changes need a new build ([`crate::watch`]);
    /// a push that changes nothing under either is skipped.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub watch_paths: Vec<String>,
    /// Wall-clock limit in seconds (at most the operator's limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
    /// Network access for install and build (default on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<bool>,
    /// Environment variables for install and build.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Like `env`, but their values are redacted from every log line and never stored.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, String>,
}

/// What a build task receives through Redis rather than through the ECS API (where anyone who
/// may describe tasks would read it): secret values, and the repository URL when it holds
/// credentials. The task reads it once.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WithheldFromTask {
    /// Secret values by name.
    #[serde(default)]
    pub secrets: BTreeMap<String, String>,
    /// The repository URL with its credentials (the job carries it redacted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo: Option<String>,
    /// Storage credentials of this build alone (an upload-role session limited to its own
    /// objects), when the platform hands them out; otherwise the task's own role is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<SessionCredentials>,
}

/// Temporary AWS credentials (an STS session).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionCredentials {
    /// `AWS_ACCESS_KEY_ID`.
    pub access_key_id: String,
    /// `AWS_SECRET_ACCESS_KEY`.
    pub secret_access_key: String,
    /// `AWS_SESSION_TOKEN`.
    pub session_token: String,
}

impl std::fmt::Debug for SessionCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionCredentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

/// Shortest secret value accepted: shorter ones would redact ordinary text from the log.
pub const MIN_SECRET_LEN: usize = 4;

/// Names the build environment keeps for itself.
const RESERVED_ENV: &[&str] = &["PATH", "HOME", "PWD", "SHELL", "USER", "LOGNAME", "TMPDIR"];

/// Whether `name` changes how programs are loaded or how shells start (`LD_PRELOAD`,
/// `GCONV_PATH`, `BASH_ENV`, exported shell functions...): such variables are refused in a
/// build's environment, since they turn any program that starts into code of the repository's
/// choosing. The list is glibc's own for privileged programs plus the shells' start-up hooks.
pub fn is_loader_variable(name: &str) -> bool {
    const NAMES: &[&str] = &[
        "GCONV_PATH",
        "GETCONF_DIR",
        "GLIBC_TUNABLES",
        "HOSTALIASES",
        "LOCALDOMAIN",
        "LOCPATH",
        "NIS_PATH",
        "NLSPATH",
        "RESOLV_HOST_CONF",
        "RES_OPTIONS",
        "TZDIR",
        "BASH_ENV",
        "ENV",
        "IFS",
        "SHELLOPTS",
        "BASHOPTS",
        "PS4",
        "PROMPT_COMMAND",
    ];
    name.starts_with("LD_")
        || name.starts_with("MALLOC_")
        || name.starts_with("BASH_FUNC_")
        || NAMES.contains(&name)
}

fn safe_relative_dir(what: &str, dir: &str) -> Result<(), String> {
    let ok = !dir.is_empty()
        && dir.len() <= 512
        && !dir.starts_with('/')
        && dir
            .trim_end_matches('/')
            .split('/')
            .all(|s| !s.is_empty() && s != "." && s != ".." && !s.contains(['\\', '\0']));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{what} {dir:?} must be a relative path inside the repository"
        ))
    }
}

impl BuildSettings {
    /// Checks every field; the message names the first problem.
    pub fn validate(&self, max_timeout_secs: u64) -> Result<(), String> {
        for (what, cmd) in [
            ("install_command", &self.install_command),
            ("build_command", &self.build_command),
        ] {
            if let Some(cmd) = cmd {
                if cmd.trim().is_empty() || cmd.len() > 4096 || cmd.contains('\0') {
                    return Err(format!("{what} must be 1-4096 characters without NUL"));
                }
            }
        }
        if let Some(dir) = &self.output_dir {
            safe_relative_dir("output_dir", dir)?;
        }
        crate::watch::validate(&self.watch_paths)?;
        if let Some(dir) = &self.root_dir {
            safe_relative_dir("root_dir", dir)?;
        }
        if let Some(t) = self.timeout_secs {
            if t == 0 || t > max_timeout_secs {
                return Err(format!(
                    "timeout_secs must be between 1 and {max_timeout_secs}"
                ));
            }
        }
        if self.env.len() + self.secrets.len() > 200 {
            return Err("at most 200 environment variables and secrets".into());
        }
        for (name, value) in self.env.iter().chain(&self.secrets) {
            let valid_name = !name.is_empty()
                && name.len() <= 128
                && name
                    .bytes()
                    .next()
                    .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !valid_name {
                return Err(format!("{name:?} is not a valid environment variable name"));
            }
            if RESERVED_ENV.contains(&name.as_str()) || name.starts_with("GITDEPLOY_") {
                return Err(format!(
                    "{name} is set by GitDeploy and cannot be overridden"
                ));
            }
            if is_loader_variable(name) {
                return Err(format!(
                    "{name} changes how programs are loaded and is not allowed in a build's environment"
                ));
            }
            if value.len() > 32 * 1024 || value.contains('\0') {
                return Err(format!(
                    "the value of {name} must be at most 32 KiB without NUL"
                ));
            }
        }
        if let Some(name) = self.env.keys().find(|k| self.secrets.contains_key(*k)) {
            return Err(format!("{name} is both an env var and a secret"));
        }
        if let Some((name, _)) = self.secrets.iter().find(|(_, v)| v.len() < MIN_SECRET_LEN) {
            return Err(format!(
                "the secret {name} must be at least {MIN_SECRET_LEN} characters"
            ));
        }
        Ok(())
    }

    /// These settings (a project's) with `over` (one deploy request's) laid on top: every field
    /// `over` sets wins, and its env vars and secrets are added to (or replace) these.
    pub fn overlay(&self, over: &BuildSettings) -> BuildSettings {
        let mut out = self.clone();
        let pick = |a: &mut Option<String>, b: &Option<String>| {
            if b.is_some() {
                a.clone_from(b)
            }
        };
        pick(&mut out.install_command, &over.install_command);
        pick(&mut out.build_command, &over.build_command);
        pick(&mut out.output_dir, &over.output_dir);
        pick(&mut out.root_dir, &over.root_dir);
        out.timeout_secs = over.timeout_secs.or(out.timeout_secs);
        out.network = over.network.or(out.network);
        for (k, v) in &over.env {
            out.secrets.remove(k);
            out.env.insert(k.clone(), v.clone());
        }
        for (k, v) in &over.secrets {
            out.env.remove(k);
            out.secrets.insert(k.clone(), v.clone());
        }
        out
    }

    /// Replaces these stored settings with `next` as a client sent them back: secret values are
    /// write-only, so a secret sent with an empty value keeps the value stored under its name,
    /// and a secret left out is removed.
    pub fn replaced_by(&self, next: BuildSettings) -> BuildSettings {
        let mut out = next;
        for (name, value) in out.secrets.iter_mut() {
            if value.is_empty() {
                if let Some(kept) = self.secrets.get(name) {
                    value.clone_from(kept);
                }
            }
        }
        out
    }

    /// The settings as stored and shown: secret values removed, names kept.
    pub fn without_secret_values(&self) -> Self {
        let mut copy = self.clone();
        for value in copy.secrets.values_mut() {
            value.clear();
        }
        copy
    }
}

/// Limits the operator sets on every build.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BuildLimits {
    /// Wall-clock limit of a build, in seconds.
    pub timeout_secs: u64,
    /// Total bytes of the published output.
    pub max_output_bytes: u64,
    /// Files in the published output.
    pub max_files: u64,
    /// Bytes of one published file.
    pub max_file_bytes: u64,
    /// Bytes of build log.
    pub max_log_bytes: u64,
    /// Memory of the build's processes (where a cgroup is writable).
    pub memory_bytes: u64,
    /// Processes the build may run at once.
    pub max_processes: u64,
    /// CPU seconds per process.
    pub cpu_secs: u64,
    /// Bytes the build may write to disk: checkout, home, package cache and `/tmp` together.
    pub max_disk_bytes: u64,
    /// Longest object key the bucket accepts (S3: 1,024 bytes; the embedded store less).
    pub max_key_bytes: u64,
    /// Private ranges builds may reach besides the internet (a registry mirror, a git server
    /// inside the network), as IPv4 CIDRs checked by
    /// [`crate::egress::parse_allowed_network`]. The host's own
    /// addresses stay closed whatever is allowed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allowed_networks: Vec<String>,
}

impl Default for BuildLimits {
    fn default() -> Self {
        BuildLimits {
            timeout_secs: 900,
            max_output_bytes: 1 << 30,
            max_files: 20_000,
            max_file_bytes: 256 << 20,
            max_log_bytes: 16 << 20,
            memory_bytes: 4 << 30,
            max_processes: 512,
            cpu_secs: 1800,
            max_disk_bytes: 8 << 30,
            max_key_bytes: 1024,
            allowed_networks: Vec::new(),
        }
    }
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
        /// The commit that was built (none for an uploaded source folder).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        commit: Option<String>,
        /// Number of files published.
        files: u64,
        /// Total bytes published.
        bytes: u64,
    },
    /// Nothing the build depends on changed since `previous_commit`: nothing was built.
    Skipped {
        /// The commit that was checked out.
        commit: String,
        /// Why, for users.
        reason: String,
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
    fn project_settings_overlay_and_write_only_secrets() {
        let base = BuildSettings {
            build_command: Some("npm run build".into()),
            output_dir: Some("dist".into()),
            env: [
                ("A".to_owned(), "1".to_owned()),
                ("B".to_owned(), "2".to_owned()),
            ]
            .into(),
            secrets: [("TOKEN".to_owned(), "t0ps3cret".to_owned())].into(),
            ..Default::default()
        };
        let over = BuildSettings {
            output_dir: Some("out".into()),
            env: [
                ("B".to_owned(), "3".to_owned()),
                ("TOKEN".to_owned(), "plain".to_owned()),
            ]
            .into(),
            ..Default::default()
        };
        let merged = base.overlay(&over);
        assert_eq!(merged.build_command.as_deref(), Some("npm run build"));
        assert_eq!(merged.output_dir.as_deref(), Some("out"));
        assert_eq!(merged.env["A"], "1");
        assert_eq!(merged.env["B"], "3");
        assert_eq!(merged.env["TOKEN"], "plain");
        assert!(
            merged.secrets.is_empty(),
            "an env var replaces a secret of that name"
        );
        assert_eq!(base.overlay(&BuildSettings::default()), base);

        // A client sends back what it was shown (secret values blank) plus one new secret.
        let mut sent = base.without_secret_values();
        sent.secrets.insert("NEW".into(), "n3wvalue".into());
        let stored = base.replaced_by(sent);
        assert_eq!(
            stored.secrets["TOKEN"], "t0ps3cret",
            "blank keeps the stored value"
        );
        assert_eq!(stored.secrets["NEW"], "n3wvalue");
        let mut dropped = base.without_secret_values();
        dropped.secrets.clear();
        assert!(
            base.replaced_by(dropped).secrets.is_empty(),
            "left out is removed"
        );
        // A new secret sent blank stays blank, which validation refuses.
        let mut blank = BuildSettings::default();
        blank.secrets.insert("X".into(), String::new());
        assert!(base.replaced_by(blank).validate(60).is_err());
    }

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
    fn build_settings_table() {
        let ok = |f: fn(&mut BuildSettings)| {
            let mut s = BuildSettings::default();
            f(&mut s);
            s.validate(900)
        };
        assert!(ok(|_| {}).is_ok());
        assert!(ok(|s| s.root_dir = Some("packages/web".into())).is_ok());
        assert!(ok(|s| s.output_dir = Some("site/".into())).is_ok());
        assert!(ok(|s| s.env = [("NODE_ENV".into(), "production".into())].into()).is_ok());
        assert!(ok(|s| s.secrets = [("API_TOKEN".into(), "s3cr3t".into())].into()).is_ok());
        for bad in [
            ok(|s| s.root_dir = Some("../x".into())),
            ok(|s| s.root_dir = Some("/etc".into())),
            ok(|s| s.output_dir = Some("a/../../b".into())),
            ok(|s| s.output_dir = Some("".into())),
            ok(|s| s.timeout_secs = Some(0)),
            ok(|s| s.timeout_secs = Some(901)),
            ok(|s| s.build_command = Some(" ".into())),
            ok(|s| s.env = [("PATH".into(), "/x".into())].into()),
            ok(|s| s.env = [("GITDEPLOY_JOB".into(), "x".into())].into()),
            ok(|s| s.env = [("LD_PRELOAD".into(), "/x.so".into())].into()),
            ok(|s| s.env = [("LD_LIBRARY_PATH".into(), "/x".into())].into()),
            ok(|s| s.secrets = [("LD_AUDIT".into(), "/x.so".into())].into()),
            ok(|s| s.env = [("GCONV_PATH".into(), "/x".into())].into()),
            ok(|s| s.env = [("BASH_ENV".into(), "/x".into())].into()),
            ok(|s| s.env = [("BASH_FUNC_ls%%".into(), "() { x; }".into())].into()),
            ok(|s| s.env = [("TMPDIR".into(), "/x".into())].into()),
            ok(|s| s.env = [("1BAD".into(), "x".into())].into()),
            ok(|s| s.env = [("A-B".into(), "x".into())].into()),
            ok(|s| s.secrets = [("SHORT".into(), "abc".into())].into()),
            ok(|s| {
                s.env = [("X".into(), "1".into())].into();
                s.secrets = [("X".into(), "1234".into())].into();
            }),
        ] {
            assert!(bad.is_err());
        }
        let with_secret = BuildSettings {
            secrets: [("T".into(), "value".into())].into(),
            ..Default::default()
        };
        assert_eq!(with_secret.without_secret_values().secrets["T"], "");
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
