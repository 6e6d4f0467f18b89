//! The servers under test: the real `gitdeploy up` (release build) and nginx serving the same
//! files from disk. Each runs on free loopback ports with its own temporary directory and stops
//! when dropped.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Builds the release `gitdeploy` binary and returns its path.
pub fn build_gitdeploy() -> anyhow::Result<PathBuf> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("workspace")?;
    let status = Command::new(env!("CARGO"))
        .args(["build", "--release", "--bin", "gitdeploy"])
        .current_dir(workspace)
        .status()?;
    if !status.success() {
        bail!("cargo build --release --bin gitdeploy failed");
    }
    Ok(workspace.join("target/release/gitdeploy"))
}

fn wait_until(what: &str, mut ready: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready() {
        if Instant::now() > deadline {
            bail!("{what} did not come up");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// A running `gitdeploy up`.
pub struct Edge {
    /// `127.0.0.1:port` of the public listener.
    pub addr: String,
    child: Child,
    _data: tempfile::TempDir,
    /// A client for its API.
    pub http: reqwest::Client,
}

impl Edge {
    /// Starts the edge with extra `up` flags.
    pub async fn start(binary: &Path, flags: &[&str]) -> anyhow::Result<Self> {
        let data = tempfile::tempdir()?;
        let (port, metrics) = (free_port()?, free_port()?);
        let child = Command::new(binary)
            .args(["up", "--listen", &format!("127.0.0.1:{port}")])
            .args([
                "--metrics-listen",
                &format!("127.0.0.1:{metrics}"),
                "--data-dir",
            ])
            .arg(data.path())
            .args(flags)
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .spawn()
            .context("starting gitdeploy")?;
        let addr = format!("127.0.0.1:{port}");
        wait_until("gitdeploy", || std::net::TcpStream::connect(&addr).is_ok())?;
        let edge = Edge {
            addr,
            child,
            _data: data,
            http: reqwest::Client::new(),
        };
        let health = format!("http://{}/api/health", edge.addr);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !edge
            .http
            .get(&health)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            if Instant::now() > deadline {
                bail!("the API did not come up");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(edge)
    }

    /// Deploys the fixture and waits until it is ready; returns the deployment id.
    pub async fn deploy(&self, site: &crate::site::Fixture) -> anyhow::Result<String> {
        let answer: serde_json::Value = self
            .http
            .post(format!("http://{}/api/deployments", self.addr))
            .json(&serde_json::json!({ "repo": site.root }))
            .send()
            .await?
            .json()
            .await?;
        let id = answer["id"]
            .as_str()
            .context("no deployment id")?
            .to_owned();
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let status: serde_json::Value = self
                .http
                .get(format!("http://{}/api/deployments/{id}", self.addr))
                .send()
                .await?
                .json()
                .await?;
            match status["status"].as_str() {
                Some("ready") => return Ok(id),
                Some("failed") => bail!("the bench site failed to build: {}", status["error"]),
                _ if Instant::now() > deadline => bail!("the bench site did not build in time"),
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// Deploys the repository at `repo`; returns the time from the request to the moment the
    /// API reports it ready, and the deployment's record.
    pub async fn timed_deploy(&self, repo: &Path) -> anyhow::Result<(Duration, serde_json::Value)> {
        let start = Instant::now();
        let answer: serde_json::Value = self
            .http
            .post(format!("http://{}/api/deployments", self.addr))
            .json(&serde_json::json!({ "repo": repo }))
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
        let mut etags = Vec::new();
        for path in paths {
            let resp = self
                .http
                .get(format!("http://{}{path}", self.addr))
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

    fn status_field(&self, field: &str) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
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
        let _ = std::fs::write(format!("/proc/{}/clear_refs", self.child.id()), "5");
    }
}

impl Drop for Edge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// nginx serving a directory.
pub struct Nginx {
    /// `127.0.0.1:port`.
    pub addr: String,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Nginx {
    /// Serves `root` with a production-like static configuration.
    pub fn start_static(root: &Path) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let port = free_port()?;
        let conf = format!(
            "worker_processes 2;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log error;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 1000000;
  open_file_cache max=1000 inactive=60s;
  if_modified_since before;
  types {{ text/html html; text/css css; application/javascript js; image/svg+xml svg; application/json json; }}
  default_type application/octet-stream;
  client_body_temp_path {dir}/body; proxy_temp_path {dir}/proxy; fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi; scgi_temp_path {dir}/scgi;
  server {{ listen 127.0.0.1:{port}; root {root}; }}
}}
",
            dir = dir.path().display(),
            root = root.display(),
        );
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf)?;
        let child = Command::new("nginx")
            .args(["-p"])
            .arg(dir.path())
            .args(["-c"])
            .arg(&conf_path)
            .stderr(Stdio::null())
            .spawn()
            .context("starting nginx (apt-get install nginx)")?;
        let addr = format!("127.0.0.1:{port}");
        wait_until("nginx", || std::net::TcpStream::connect(&addr).is_ok())?;
        Ok(Nginx {
            addr,
            child,
            _dir: dir,
        })
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Total memory, for the report header.
pub fn memory_total() -> String {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_owned())
        })
        .and_then(|kib| kib.parse::<u64>().ok())
        .map(|kib| format!("{} GiB RAM", kib / 1024 / 1024))
        .unwrap_or_else(|| "unknown RAM".into())
}

/// Versions of the peers, for the report header.
pub fn versions() -> String {
    let first_line = |cmd: &str, arg: &str| {
        Command::new(cmd)
            .arg(arg)
            .output()
            .ok()
            .map(|o| {
                let text = if o.stdout.is_empty() {
                    o.stderr
                } else {
                    o.stdout
                };
                String::from_utf8_lossy(&text)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_owned()
            })
            .unwrap_or_default()
    };
    format!(
        "gitdeploy {}; {}; {}",
        env!("CARGO_PKG_VERSION"),
        first_line("nginx", "-v"),
        first_line("wrk", "--version")
            .split(" Copyright")
            .next()
            .unwrap_or("")
    )
}

/// The original design's edge: a Node http-proxy forwarding every request, no cache
/// (`bench/node/proxy.js`, installed with `npm ci`). Given keep-alive to its upstream, which
/// the original did not have: a charitable baseline.
pub struct NodeProxy {
    /// `127.0.0.1:port`.
    pub addr: String,
    child: Child,
}

impl NodeProxy {
    /// Starts the proxy in front of `target` (`127.0.0.1:port`).
    pub fn start(target: &str) -> anyhow::Result<Self> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("node");
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--prefer-offline"])
            .current_dir(&dir)
            .stdout(Stdio::null())
            .status()
            .context("npm")?;
        if !status.success() {
            bail!("npm ci in bench/node failed");
        }
        let port = free_port()?;
        let child = Command::new("node")
            .arg("proxy.js")
            .current_dir(&dir)
            .env("PORT", port.to_string())
            .env("TARGET", format!("http://{target}"))
            .stdout(Stdio::null())
            .spawn()
            .context("starting node")?;
        let addr = format!("127.0.0.1:{port}");
        wait_until("node proxy", || std::net::TcpStream::connect(&addr).is_ok())?;
        Ok(NodeProxy { addr, child })
    }
}

impl Drop for NodeProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
