//! The servers under test: the real `gitdeploy up` (release build) and nginx serving the same
//! files from disk. Each runs on free loopback ports with its own temporary directory and stops
//! when dropped.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// A server under load: where to send requests and which processes do its work.
pub trait Server {
    /// `127.0.0.1:port`.
    fn addr(&self) -> &str;
    /// Its processes (threads are counted with them).
    fn pids(&self) -> Vec<u32>;
    /// Starts a new peak-memory measurement, where the server reports one.
    fn reset_peak_rss(&self) {}
    /// Peak resident memory since the reset, in KiB.
    fn peak_rss_kib(&self) -> Option<u64> {
        None
    }
}

/// The fields of `/proc/<pid>/stat` after the command name (which is in parentheses and may
/// contain spaces): index 0 is the state, 1 the parent, 11 and 12 user and system time.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// CPU time (user + system, all threads) of `pids` in clock ticks; `None` if one has gone.
pub fn cpu_ticks(pids: &[u32]) -> Option<u64> {
    let mut total = 0;
    for pid in pids {
        let fields = stat_fields(*pid)?;
        let utime: u64 = fields.get(11)?.parse().ok()?;
        let stime: u64 = fields.get(12)?.parse().ok()?;
        total += utime + stime;
    }
    Some(total)
}

/// Clock ticks per second of `/proc/<pid>/stat` times.
pub fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// `pid` and its direct children (nginx's workers).
fn with_children(pid: u32) -> Vec<u32> {
    let mut pids = vec![pid];
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(child) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let parent = stat_fields(child).and_then(|f| f.get(1)?.parse::<u32>().ok());
            if parent == Some(pid) {
                pids.push(child);
            }
        }
    }
    pids
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Builds the release `gitdeploy` binary and returns its path.
pub fn build_gitdeploy() -> anyhow::Result<PathBuf> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("workspace")?;
    let mut build = Command::new(env!("CARGO"));
    build
        .args(["build", "--release", "--bin", "gitdeploy"])
        .current_dir(workspace);
    // Not the variables `cargo run` set for this process: crates that read them at compile
    // time would be rebuilt on every run (and again by the next plain `cargo build`).
    for (name, _) in std::env::vars_os() {
        let cargo_run_var = name.to_str().is_some_and(|n| {
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
            build.env_remove(name);
        }
    }
    let status = build.status()?;
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
        let (port, metrics) = (free_port()?, free_port()?);
        let mut command = Command::new(binary);
        command
            .args(["up", "--listen", &format!("127.0.0.1:{port}")])
            .args([
                "--metrics-listen",
                &format!("127.0.0.1:{metrics}"),
                "--data-dir",
            ])
            .arg(data.path())
            .args(flags)
            .env("RUST_LOG", "error");
        if let Some(s3) = s3 {
            command
                .args(["--s3-endpoint", &format!("http://{}", s3.addr)])
                .env("AWS_ACCESS_KEY_ID", S3_KEY.0)
                .env("AWS_SECRET_ACCESS_KEY", S3_KEY.1);
        }
        let child = command
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
        let (_, record) = self.timed_deploy(&site.root).await?;
        Ok(record["id"]
            .as_str()
            .context("no deployment id")?
            .to_owned())
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

    /// Descriptors the edge holds open now.
    pub fn open_fds(&self) -> Option<usize> {
        Some(
            std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
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
        let _ = std::fs::write(format!("/proc/{}/clear_refs", self.child.id()), "5");
    }
}

impl Server for Edge {
    fn addr(&self) -> &str {
        &self.addr
    }
    fn pids(&self) -> Vec<u32> {
        vec![self.child.id()]
    }
    fn reset_peak_rss(&self) {
        Edge::reset_peak_rss(self)
    }
    fn peak_rss_kib(&self) -> Option<u64> {
        Edge::peak_rss_kib(self)
    }
}

impl Drop for Edge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The bench's S3 access key: a throwaway for a loopback server.
const S3_KEY: (&str, &str) = ("bench-access-key", "bench-secret-key-0123456789");
/// The bucket `gitdeploy s3-server` creates.
pub const S3_BUCKET: &str = "gitdeploy";
/// The region everything signs for.
const S3_REGION: &str = "us-east-1";

/// `gitdeploy s3-server` (s3s + s3s-fs, SigV4 required) in its own process: the one S3 both the
/// edge and nginx read from in the proxy scenarios.
pub struct S3Server {
    /// `127.0.0.1:port`.
    pub addr: String,
    child: Child,
    _dir: tempfile::TempDir,
}

impl S3Server {
    /// Starts the server on a free port with an empty store.
    pub fn start(binary: &Path) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let port = free_port()?;
        let child = Command::new(binary)
            .args(["s3-server", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(dir.path())
            .env("AWS_ACCESS_KEY_ID", S3_KEY.0)
            .env("AWS_SECRET_ACCESS_KEY", S3_KEY.1)
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .spawn()
            .context("starting gitdeploy s3-server")?;
        let addr = format!("127.0.0.1:{port}");
        wait_until("s3-server", || std::net::TcpStream::connect(&addr).is_ok())?;
        Ok(S3Server {
            addr,
            child,
            _dir: dir,
        })
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How nginx in front of S3 keeps what it fetched.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum ProxyCache {
    /// Every request goes to S3.
    Off,
    /// `proxy_cache` on local disk (the page cache, in practice), filled on first request.
    Disk,
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
        let server = format!(
            "open_file_cache max=1000 inactive=60s;
  if_modified_since before;
  types {{ text/html html; text/css css; application/javascript js; image/svg+xml svg; application/json json; }}
  default_type application/octet-stream;
  server {{ listen 127.0.0.1:{{port}}; root {root}; }}",
            root = root.display(),
        );
        Self::start("", &server)
    }

    /// Proxies every path to the same object of a deployment in `s3` (`sites/<id>/<path>`),
    /// each upstream GET signed with SigV4 by `bench/nginx/s3sign.js` (njs, as nginx's S3
    /// gateway does; `apt-get install libnginx-mod-http-js`), over keep-alive connections.
    /// Client headers never reach S3.
    pub fn start_s3_proxy(
        s3: &S3Server,
        deployment: &str,
        cache: ProxyCache,
    ) -> anyhow::Result<Self> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("nginx/s3sign.js");
        let caching = match cache {
            ProxyCache::Off => "proxy_buffering off;".to_owned(),
            ProxyCache::Disk => "proxy_cache sites; proxy_cache_key $uri; \
                 proxy_cache_valid 200 1h; proxy_cache_lock on; \
                 proxy_ignore_headers Cache-Control Expires Set-Cookie;"
                .to_owned(),
        };
        let server = format!(
            "js_import s3 from {script};
  js_var $s3_amz_date;
  js_var $s3_host {s3};
  js_var $s3_region {S3_REGION};
  js_var $s3_access_key {access};
  js_var $s3_secret_key {secret};
  js_set $s3_authorization s3.authorization;
  js_set $s3_date s3.amzDate;
  upstream s3 {{ server {s3}; keepalive 64; }}
  proxy_cache_path {{dir}}/cache levels=1:2 keys_zone=sites:10m max_size=2g inactive=1h use_temp_path=off;
  server {{
    listen 127.0.0.1:{{port}};
    # With TCP_CORK, cache hits of 64 KiB and more waited for a delayed ACK: 25 requests/s
    # per connection instead of 20,000.
    tcp_nopush off;
    location / {{
      rewrite ^ /{S3_BUCKET}/sites/{deployment}$uri break;
      proxy_pass http://s3;
      proxy_http_version 1.1;
      proxy_pass_request_headers off;
      proxy_set_header Connection \"\";
      proxy_set_header Host $s3_host;
      proxy_set_header Authorization $s3_authorization;
      proxy_set_header x-amz-date $s3_date;
      proxy_set_header x-amz-content-sha256 e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855;
      proxy_hide_header x-amz-request-id;
      {caching}
    }}
  }}",
            script = script.display(),
            s3 = s3.addr,
            access = S3_KEY.0,
            secret = S3_KEY.1,
        );
        Self::start(
            "load_module /usr/lib/nginx/modules/ngx_http_js_module.so;",
            &server,
        )
    }

    /// Starts nginx with `http` inside its `http` block (`{port}` and `{dir}` filled in).
    fn start(main: &str, http: &str) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let port = free_port()?;
        let http = http
            .replace("{port}", &port.to_string())
            .replace("{dir}", &dir.path().display().to_string());
        let conf = format!(
            "{main}
worker_processes 2;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log error;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 1000000;
  client_body_temp_path {dir}/body; proxy_temp_path {dir}/proxy; fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi; scgi_temp_path {dir}/scgi;
  {http}
}}
",
            dir = dir.path().display(),
        );
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf)?;
        let check = Command::new("nginx")
            .arg("-t")
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf_path)
            .output()
            .context("running nginx (apt-get install nginx)")?;
        if !check.status.success() {
            bail!(
                "nginx rejected the bench configuration: {}",
                String::from_utf8_lossy(&check.stderr)
            );
        }
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

impl Server for Nginx {
    fn addr(&self) -> &str {
        &self.addr
    }
    fn pids(&self) -> Vec<u32> {
        with_children(self.child.id())
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: the master stops its workers (SIGKILL would leave them running).
        let stopped = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        if !stopped {
            let _ = self.child.kill();
        }
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

impl Server for NodeProxy {
    fn addr(&self) -> &str {
        &self.addr
    }
    fn pids(&self) -> Vec<u32> {
        vec![self.child.id()]
    }
}

impl Drop for NodeProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
