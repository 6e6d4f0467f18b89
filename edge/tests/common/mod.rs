//! Test harness: real components on ephemeral loopback ports. A `git daemon` serving fixture
//! repositories, and the real `gitdeploy up` binary with its own data directory.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use gitdeploy_core::LogRecord;
use serde_json::Value;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

/// A port nobody listens on right now, for a server the test starts.
///
/// Ports come from below the kernel's ephemeral range (which starts at 32768), so outgoing
/// connections of the tests and builds never take them between this check and the server's
/// bind; each test process walks its own stretch of ports so parallel tests never share one.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 10_000 + (std::process::id() % 100) as u16 * 200;
    loop {
        let port = base + NEXT.fetch_add(1, Ordering::Relaxed) % 200;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Waits until `addr` accepts connections (bounded): readiness, not a fixed sleep.
pub fn wait_for_port(addr: SocketAddr, child: &mut Child, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut backoff = Duration::from_millis(5);
    while TcpStream::connect(addr).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited early with {status}");
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not start listening on {addr}"
        );
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(Duration::from_millis(100));
    }
}

/// Runs `git` in `dir`, panicking with its output on failure.
pub fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .args([
            "-c",
            "user.email=test@example.com",
            "-c",
            "user.name=test",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A directory of fixture repositories served by `git daemon` on loopback.
pub struct GitServer {
    pub root: tempfile::TempDir,
    pub port: u16,
    child: Option<Child>,
}

impl GitServer {
    pub fn new() -> Self {
        GitServer {
            root: tempfile::tempdir().unwrap(),
            port: 0,
            child: None,
        }
    }

    /// Creates repository `name` with `files` committed on `main`.
    pub fn add_repo(&self, name: &str, files: &[(&str, &str)]) -> PathBuf {
        let dir = self.root.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        git(&dir, &["init", "-q"]);
        for (path, content) in files {
            let file = dir.join(path);
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(file, content).unwrap();
        }
        git(&dir, &["add", "-A"]);
        git(&dir, &["commit", "-q", "-m", "fixture"]);
        dir
    }

    /// Starts the daemon (after the repos are added).
    pub fn start(&mut self) {
        self.port = free_port();
        let mut child = Command::new("git")
            .process_group(0)
            .arg("daemon")
            .arg("--reuseaddr")
            .arg("--export-all")
            .arg("--listen=127.0.0.1")
            .arg(format!("--port={}", self.port))
            .arg(format!("--base-path={}", self.root.path().display()))
            .arg(self.root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("git daemon");
        wait_for_port(([127, 0, 0, 1], self.port).into(), &mut child, "git daemon");
        self.child = Some(child);
    }

    pub fn url(&self, name: &str) -> String {
        format!("git://127.0.0.1:{}/{name}", self.port)
    }
}

impl Drop for GitServer {
    fn drop(&mut self) {
        // `git daemon` serves through a `git-daemon` child: the whole process group goes.
        if let Some(mut c) = self.child.take() {
            let group = nix::unistd::Pid::from_raw(c.id() as i32);
            let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
            let _ = c.wait();
        }
    }
}

/// A running `gitdeploy up`.
pub struct Gitdeploy {
    pub port: u16,
    pub metrics_port: u16,
    pub data_dir: PathBuf,
    pub s3_endpoint: String,
    child: Child,
    http: reqwest::Client,
}

impl Gitdeploy {
    /// Starts `gitdeploy up` on a free port with `data_dir`, and waits until the API answers.
    pub async fn start(data_dir: &Path) -> Self {
        Self::start_with(data_dir, &[]).await
    }

    /// Like [`Gitdeploy::start`], with extra `up` flags.
    pub async fn start_with(data_dir: &Path, flags: &[&str]) -> Self {
        Self::start_with_env(data_dir, flags, &[]).await
    }

    /// Like [`Gitdeploy::start_with`], with extra environment variables.
    pub async fn start_with_env(data_dir: &Path, flags: &[&str], envs: &[(&str, &str)]) -> Self {
        let (port, metrics_port) = (free_port(), free_port());
        let child = Self::launch(data_dir, port, metrics_port, flags, envs);
        Self::attach(child, data_dir, port, metrics_port).await
    }

    /// A graceful upgrade: starts a new server on this one's data directory and ports with
    /// `--upgrade`, has this one hand its sockets over (SIGQUIT) once the new one waits for
    /// them, and returns the new server after the old one has exited.
    pub async fn upgrade(mut self, flags: &[&str]) -> Self {
        let upgrade_sock = self.data_dir.join("run/upgrade.sock");
        let mut all = flags.to_vec();
        all.push("--upgrade");
        let mut child = Self::launch(&self.data_dir, self.port, self.metrics_port, &all, &[]);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !upgrade_sock.exists() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("the new server exited with {status}");
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the new server never asked for the sockets"
            );
            tokio::task::yield_now().await;
        }
        let old = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(old, nix::sys::signal::Signal::SIGQUIT).unwrap();
        let new = Self::attach(child, &self.data_dir, self.port, self.metrics_port).await;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while self.child.try_wait().unwrap().is_none() {
            assert!(
                std::time::Instant::now() < deadline,
                "the old server did not exit"
            );
            tokio::task::yield_now().await;
        }
        new
    }

    fn launch(
        data_dir: &Path,
        port: u16,
        metrics_port: u16,
        flags: &[&str],
        envs: &[(&str, &str)],
    ) -> Child {
        Command::new(env!("CARGO_BIN_EXE_gitdeploy"))
            .args(["up", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--metrics-listen", &format!("127.0.0.1:{metrics_port}")])
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--ready-file")
            .arg(data_dir.join("ready.json"))
            .args(flags)
            .envs(envs.iter().copied())
            .env(
                "RUST_LOG",
                std::env::var("GITDEPLOY_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start gitdeploy")
    }

    async fn attach(mut child: Child, data_dir: &Path, port: u16, metrics_port: u16) -> Self {
        // The banner is for people: keep draining it. Readiness is the ready file, written
        // once the public port answers the API's health check.
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        std::thread::spawn(move || lines.for_each(drop));
        let ready = wait_for_ready_file(&data_dir.join("ready.json"), &mut child).await;
        assert_eq!(ready["listen"], format!("127.0.0.1:{port}"));
        let s3_endpoint = ready["s3_endpoint"].as_str().unwrap().to_owned();
        let http = reqwest::Client::new();
        Gitdeploy {
            port,
            metrics_port,
            data_dir: data_dir.to_owned(),
            s3_endpoint,
            child,
            http,
        }
    }

    pub fn api(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// POSTs a deploy request; returns status and JSON body.
    pub async fn deploy(&self, body: Value) -> (u16, Value) {
        let resp = self
            .http
            .post(self.api("/api/deployments"))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let headers = format!("{:?}", resp.headers());
        let text = resp.text().await.unwrap();
        match serde_json::from_str(&text) {
            Ok(json) => (status, json),
            Err(e) => panic!("deploy answered {status} {headers} with non-JSON ({e}): {text:?}"),
        }
    }

    /// Deploys a repo and returns its id, asserting 202.
    pub async fn deploy_repo(&self, repo: &str) -> String {
        let (status, body) = self.deploy(serde_json::json!({ "repo": repo })).await;
        assert_eq!(status, 202, "{body}");
        body["id"].as_str().unwrap().to_owned()
    }

    /// Follows the log over the WebSocket (from `since`) until the server closes it.
    pub async fn follow(&self, id: &str, since: u64) -> Vec<LogRecord> {
        self.follow_with(id, since, false).await.0
    }

    /// [`Self::follow`], optionally in batch mode (several records per frame, one per line);
    /// also returns how many text frames carried the records.
    pub async fn follow_with(&self, id: &str, since: u64, batch: bool) -> (Vec<LogRecord>, usize) {
        let connect = |since: u64| {
            let url = format!(
                "ws://127.0.0.1:{}/api/deployments/{id}/logs/ws?since={since}&batch={}",
                self.port,
                u8::from(batch)
            );
            async move { tokio_tungstenite::connect_async(url).await.unwrap().0 }
        };
        let mut ws = connect(since).await;
        let mut records: Vec<LogRecord> = Vec::new();
        let mut frames = 0;
        let mut resumed = 0;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        loop {
            let msg = tokio::time::timeout_at(deadline, ws.next())
                .await
                .expect("log follow timed out");
            match msg {
                Some(Ok(Message::Text(t))) if batch => {
                    frames += 1;
                    let lines = t.as_str().split('\n');
                    records.extend(lines.map(|l| serde_json::from_str::<LogRecord>(l).unwrap()));
                }
                // Without batch mode a frame is exactly one record.
                Some(Ok(Message::Text(t))) => {
                    frames += 1;
                    records.push(serde_json::from_str(&t).unwrap());
                }
                // A stream that ends before the final record (the server could not read the log
                // for a moment: close code 1011) is resumed after the last record, as the
                // dashboard does.
                Some(Ok(Message::Close(Some(frame))))
                    if frame.code == CloseCode::Error
                        && resumed < 5
                        && !records.last().is_some_and(|r| r.is_final()) =>
                {
                    resumed += 1;
                    eprintln!(
                        "log stream of {id} ended unfinished after {} records ({}); resuming",
                        records.len(),
                        frame.reason
                    );
                    ws = connect(since + records.len() as u64).await;
                }
                Some(Ok(Message::Close(_))) | None => break,
                Some(Ok(_)) => {}
                // A broken connection is resumed after the last record too.
                Some(Err(e)) if resumed < 5 && !records.last().is_some_and(|r| r.is_final()) => {
                    resumed += 1;
                    eprintln!(
                        "log stream of {id} broke after {} records ({e}); resuming",
                        records.len()
                    );
                    ws = connect(since + records.len() as u64).await;
                }
                Some(Err(e)) => panic!(
                    "websocket error after {} records ({:?}): {e}",
                    records.len(),
                    records.last().map(|r: &LogRecord| &r.line)
                ),
            }
        }
        (records, frames)
    }

    /// GETs a deployment's status JSON.
    pub async fn status(&self, id: &str) -> Value {
        self.get_json(&format!("/api/deployments/{id}")).await
    }

    /// GETs an API path and parses the JSON answer.
    pub async fn get_json(&self, path: &str) -> Value {
        self.http
            .get(self.api(path))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// The HTTP status of a deployment's record.
    pub async fn status_code(&self, id: &str) -> u16 {
        self.http
            .get(self.api(&format!("/api/deployments/{id}")))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    /// A request to a site: `Host: <label>.localhost`.
    pub fn site(
        &self,
        method: reqwest::Method,
        label: &str,
        path: &str,
    ) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("http://127.0.0.1:{}{path}", self.port))
            .header("host", format!("{label}.localhost:{}", self.port))
    }

    /// Sends `GET <path>` exactly as written (no client-side normalization) and returns the status.
    pub fn raw_get_status(&self, host: &str, path: &str) -> u16 {
        use std::io::{Read, Write};
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut response = String::new();
        let _ = stream.read_to_string(&mut response);
        response
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }

    /// The Prometheus text of the metrics endpoint.
    pub async fn scrape(&self) -> String {
        let url = format!("http://127.0.0.1:{}/metrics", self.metrics_port);
        self.http
            .get(url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// One sample's value from the metrics endpoint (`name{labels}` exactly as exported), 0 when
    /// absent.
    pub async fn metric(&self, series: &str) -> f64 {
        let text = self.scrape().await;
        text.lines()
            .find_map(|l| {
                l.strip_prefix(series)
                    .and_then(|rest| rest.strip_prefix(' '))
            })
            .map(|v| v.trim().parse().unwrap())
            .unwrap_or(0.0)
    }

    /// The server's resident memory, in KiB.
    pub fn rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Descriptors the server holds open.
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// Stops the server abruptly (as a crash would).
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Gitdeploy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Deploys `body` (which must be accepted) and follows its log to the end.
pub async fn deploy_and_follow(gd: &Gitdeploy, body: Value) -> (String, Vec<LogRecord>) {
    let (status, answer) = gd.deploy(body).await;
    assert_eq!(status, 202, "{answer}");
    let id = answer["id"].as_str().unwrap().to_owned();
    let log = gd.follow(&id, 0).await;
    assert_complete_log(&log);
    (id, log)
}

/// The status and error of a complete log's outcome.
pub fn outcome_of(log: &[LogRecord]) -> (gitdeploy_core::DeploymentStatus, String) {
    let o = log.last().unwrap().outcome.clone().unwrap();
    (o.status, o.error.unwrap_or_default())
}

/// A log's lines, one per line.
pub fn log_text(log: &[LogRecord]) -> String {
    log.iter()
        .map(|r| r.line.as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Asserts `records` are numbered 0.. without gaps and only the last is final.
pub fn assert_complete_log(records: &[LogRecord]) {
    assert!(!records.is_empty(), "empty log");
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r.seq, i as u64, "gap or duplicate at {i}");
        assert_eq!(
            r.is_final(),
            i == records.len() - 1,
            "final record misplaced at {i}"
        );
    }
}

/// A `redis-server` of the test's own, on a Unix socket (no port to collide on).
pub struct Redis {
    child: Child,
    pub url: String,
    socket: std::path::PathBuf,
    persistent: bool,
    dir: tempfile::TempDir,
}

impl Redis {
    /// A server that keeps nothing on disk.
    pub fn start() -> Redis {
        Self::start_in(tempfile::tempdir().unwrap(), false)
    }

    /// A server that writes every change to its append-only file before answering, as a
    /// production Redis with persistence does: a restart loses nothing.
    pub fn start_persistent() -> Redis {
        Self::start_in(tempfile::tempdir().unwrap(), true)
    }

    fn start_in(dir: tempfile::TempDir, persistent: bool) -> Redis {
        let socket = dir.path().join("redis.sock");
        let child = Self::spawn(dir.path(), &socket, persistent);
        Redis {
            child,
            url: format!("redis+unix://{}", socket.display()),
            socket,
            persistent,
            dir,
        }
    }

    fn spawn(dir: &Path, socket: &Path, persistent: bool) -> Child {
        let persistence: &[&str] = if persistent {
            &["--appendonly", "yes", "--appendfsync", "always"]
        } else {
            &["--save", "", "--appendonly", "no"]
        };
        let mut child = Command::new("redis-server")
            .args(["--port", "0"])
            .args(persistence)
            .arg("--unixsocket")
            .arg(socket)
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/prereqs --test)");
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut backoff = Duration::from_millis(5);
        while std::os::unix::net::UnixStream::connect(socket).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("redis-server exited early with {status}");
            }
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_millis(100));
        }
        child
    }

    /// Kills the server (SIGKILL, as a crash) and starts it again on the same socket and data.
    pub fn crash_and_restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.socket);
        self.child = Self::spawn(self.dir.path(), &self.socket, self.persistent);
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `gitdeploy s3-server` on a free port: one S3 several `up --s3-endpoint` processes share.
pub struct S3Server {
    child: Child,
    pub endpoint: String,
    _dir: tempfile::TempDir,
}

pub const S3_KEY: (&str, &str) = ("test-access-key", "test-secret-key-0123456789");

/// The ready file `child` writes (`--ready-file`), once it is this child's (a graceful upgrade
/// replaces the old process's file); bounded, and failing at once if the child exits.
pub async fn wait_for_ready_file(path: &Path, child: &mut Child) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(ready) = std::fs::read(path)
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .filter(|r| r["pid"] == child.id())
        {
            return ready;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("gitdeploy exited before it was ready: {status}");
        }
        assert!(
            std::time::Instant::now() < deadline,
            "gitdeploy wrote no ready file within a minute"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

impl S3Server {
    pub fn start() -> S3Server {
        S3Server::start_in(tempfile::tempdir().unwrap())
    }

    /// Keeps its objects in `dir` (a small file system, say).
    pub fn start_in(dir: tempfile::TempDir) -> S3Server {
        let port = free_port();
        let mut child = Command::new(env!("CARGO_BIN_EXE_gitdeploy"))
            .args(["s3-server", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(dir.path())
            .env("AWS_ACCESS_KEY_ID", S3_KEY.0)
            .env("AWS_SECRET_ACCESS_KEY", S3_KEY.1)
            .stdout(Stdio::null())
            .spawn()
            .expect("start gitdeploy s3-server");
        wait_for_port(([127, 0, 0, 1], port).into(), &mut child, "s3-server");
        S3Server {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        }
    }

    /// Stops it (an S3 outage).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}
