//! The edge under test: the real `gitdeploy up` (release build), started by the shared
//! harness on free loopback ports with its own data directory, and the API calls the scenarios
//! make of it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use gitdeploy_harness::{Process, S3Server, Up, S3_KEY};

use crate::peers::Server;

/// Builds the release `gitdeploy` binary and returns its path.
pub fn build_gitdeploy() -> anyhow::Result<PathBuf> {
    build_release("gitdeploy")
}

/// The release build of the bench's ceiling responder (`bench/src/bin/pingora-ceiling.rs`).
pub fn build_ceiling() -> anyhow::Result<PathBuf> {
    build_release("pingora-ceiling")
}

/// Builds the workspace's binary `name` in release mode; its path.
fn build_release(name: &str) -> anyhow::Result<PathBuf> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("workspace")?;
    let mut build = Command::new(env!("CARGO"));
    build
        .args(["build", "--release", "--bin", name])
        .current_dir(workspace);
    // Not the variables `cargo run` set for this process: crates that read them at compile
    // time would be rebuilt on every run (and again by the next plain `cargo build`).
    for (var, _) in std::env::vars_os() {
        let cargo_run_var = var.to_str().is_some_and(|n| {
            n == "LD_LIBRARY_PATH"
                || n == "OUT_DIR"
                || n.starts_with("CARGO_PKG_")
                || matches!(
                    n,
                    "CARGO_MANIFEST_DIR"
                        | "CARGO_MANIFEST_PATH"
                        | "CARGO_CRATE_NAME"
                        | "CARGO_BIN_NAME"
                        | "CARGO_PRIMARY_PACKAGE"
                        | "CARGO_RUSTC_CURRENT_DIR"
                )
        });
        if cargo_run_var {
            build.env_remove(var);
        }
    }
    let status = build.status()?;
    if !status.success() {
        bail!("cargo build --release --bin {name} failed");
    }
    Ok(workspace.join("target/release").join(name))
}

/// The ETags (identity) of `paths` at the server on `addr`, asked as `host`.
pub async fn etags_at(addr: &str, host: &str, paths: &[String]) -> anyhow::Result<Vec<String>> {
    let http = reqwest::Client::new();
    let mut etags = Vec::new();
    for path in paths {
        let resp = http
            .get(format!("http://{addr}{path}"))
            .header("host", host)
            .header("accept-encoding", "identity")
            .send()
            .await?;
        etags.push(
            resp.headers()
                .get("etag")
                .context("no etag")?
                .to_str()?
                .to_owned(),
        );
    }
    Ok(etags)
}

/// A running `gitdeploy up`.
pub struct Edge {
    /// `127.0.0.1:port` of the public listener.
    pub addr: String,
    process: Process,
    _data: tempfile::TempDir,
    /// A client for its API.
    pub http: reqwest::Client,
}

impl Edge {
    /// Starts the edge with extra `up` flags (embedded S3).
    pub async fn start(binary: &Path, flags: &[&str]) -> anyhow::Result<Self> {
        Self::start_with(binary, flags, None).await
    }

    /// Starts the edge with extra `up` flags, storing sites in `s3` when given.
    pub async fn start_with(
        binary: &Path,
        flags: &[&str],
        s3: Option<&S3Server>,
    ) -> anyhow::Result<Self> {
        let data = tempfile::tempdir()?;
        let mut up = Up::new(binary, data.path())
            .flags(flags)
            .log_filter("error");
        if let Some(s3) = s3 {
            up = up
                .flags(&["--s3-endpoint", &s3.endpoint])
                .env("AWS_ACCESS_KEY_ID", S3_KEY.0)
                .env("AWS_SECRET_ACCESS_KEY", S3_KEY.1);
        }
        // Ready when the ready file says so: its public port answers the API's health check.
        let (process, _) = up.start().await;
        Ok(Edge {
            addr: format!("127.0.0.1:{}", up.port),
            process,
            _data: data,
            http: reqwest::Client::new(),
        })
    }

    /// Bytes of every object stored under `blobs/` in the embedded store (on disk).
    pub fn blob_bytes(&self) -> u64 {
        fn walk(dir: &Path, inside: bool) -> u64 {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return 0;
            };
            entries
                .flatten()
                .map(|e| {
                    let path = e.path();
                    let inside = inside || e.file_name() == "blobs";
                    match e.metadata() {
                        Ok(m) if m.is_dir() => walk(&path, inside),
                        Ok(m) if inside => m.len(),
                        _ => 0,
                    }
                })
                .sum()
        }
        walk(self._data.path(), false)
    }

    /// The API's address, for the CLI.
    pub fn api(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Deploys the fixture and waits until it is ready; returns the deployment id.
    pub async fn deploy(&self, site: &crate::site::Fixture) -> anyhow::Result<String> {
        let (_, record) = self.timed_deploy(&site.root, None).await?;
        Ok(record["id"]
            .as_str()
            .context("no deployment id")?
            .to_owned())
    }

    /// Deploys the repository at `repo`; returns the time from the request to the moment the
    /// API reports it ready, and the deployment's record.
    pub async fn timed_deploy(
        &self,
        repo: &Path,
        project: Option<&str>,
    ) -> anyhow::Result<(Duration, serde_json::Value)> {
        let start = Instant::now();
        let mut body = serde_json::json!({ "repo": repo });
        if let Some(p) = project {
            body["project"] = serde_json::json!(p);
        }
        let answer: serde_json::Value = self
            .http
            .post(format!("http://{}/api/deployments", self.addr))
            .json(&body)
            .send()
            .await?
            .json()
            .await?;
        let id = answer["id"]
            .as_str()
            .context("no deployment id")?
            .to_owned();
        loop {
            let status: serde_json::Value = self
                .http
                .get(format!("http://{}/api/deployments/{id}", self.addr))
                .send()
                .await?
                .json()
                .await?;
            match status["status"].as_str() {
                Some("ready") => return Ok((start.elapsed(), status)),
                Some("failed") => bail!("the deploy failed: {}", status["error"]),
                _ if start.elapsed() > Duration::from_secs(300) => bail!("no deploy in 5 min"),
                _ => tokio::time::sleep(Duration::from_millis(2)).await,
            }
        }
    }

    /// The complete build log of `id` (NDJSON records).
    pub async fn log(&self, id: &str) -> anyhow::Result<Vec<serde_json::Value>> {
        let text = self
            .http
            .get(format!("http://{}/api/deployments/{id}/logs", self.addr))
            .send()
            .await?
            .text()
            .await?;
        Ok(text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect())
    }

    /// The current ETag of each path (identity representation).
    pub async fn etags(&self, host: &str, paths: &[String]) -> anyhow::Result<Vec<String>> {
        etags_at(&self.addr, host, paths).await
    }

    fn status_field(&self, field: &str) -> Option<u64> {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.process.pid())).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
    }

    /// Descriptors the edge holds open now.
    pub fn open_fds(&self) -> Option<usize> {
        Some(
            std::fs::read_dir(format!("/proc/{}/fd", self.process.pid()))
                .ok()?
                .count(),
        )
    }

    /// Resident memory now, in KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        self.status_field("VmRSS:")
    }

    /// Peak resident memory since the last reset, in KiB.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        self.status_field("VmHWM:")
    }

    /// Starts a new peak measurement (`/proc/<pid>/clear_refs`).
    pub fn reset_peak_rss(&self) {
        let _ = std::fs::write(format!("/proc/{}/clear_refs", self.process.pid()), "5");
    }
}

impl Server for Edge {
    fn addr(&self) -> &str {
        &self.addr
    }
    fn pids(&self) -> Vec<u32> {
        vec![self.process.pid()]
    }
    fn reset_peak_rss(&self) {
        Edge::reset_peak_rss(self)
    }
    fn peak_rss_kib(&self) -> Option<u64> {
        Edge::peak_rss_kib(self)
    }
}
