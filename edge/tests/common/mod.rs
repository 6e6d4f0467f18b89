//! The edge's test support: the real `gitdeploy up` binary with its own data directory, and
//! the API calls the tests make of it. The components themselves (Redis, the S3 server, git
//! over loopback, ports, process groups) come from the shared harness, `gitdeploy-harness`.
#![allow(dead_code)]

pub mod deploy;

#[allow(unused_imports)]
pub use gitdeploy_harness::{
    free_port, git, survivors, wait_for_port, wait_for_ready_file, DnsServer, GitServer, Pebble,
    PebblePorts, Process, Redis, S3Server, TestCa, S3_KEY,
};

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::StreamExt;
use gitdeploy_core::LogRecord;
use serde_json::Value;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

/// GitHub's webhook signature of `body` under `secret` (`X-Hub-Signature-256`).
pub fn hub_signature(secret: &str, body: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The `gitdeploy` binary under test.
pub fn gitdeploy_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_gitdeploy"))
}

/// An S3 server (the shared harness's, run by the binary under test) with an empty store.
pub fn s3_server() -> S3Server {
    S3Server::start(gitdeploy_bin())
}

/// An S3 server keeping its objects in `dir`.
pub fn s3_server_in(dir: tempfile::TempDir) -> S3Server {
    S3Server::start_in(gitdeploy_bin(), dir)
}

/// A running `gitdeploy up`.
pub struct Gitdeploy {
    pub port: u16,
    pub metrics_port: u16,
    pub data_dir: PathBuf,
    pub s3_endpoint: String,
    process: Process,
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
        Self::attach(Self::launch(data_dir, flags, envs), data_dir).await
    }

    /// A graceful upgrade: starts a new server on this one's data directory and ports with
    /// `--upgrade`, has this one hand its sockets over (SIGQUIT) once the new one waits for
    /// them, and returns the new server after the old one has exited.
    pub async fn upgrade(mut self, flags: &[&str]) -> Self {
        let upgrade_sock = self.data_dir.join("run/upgrade.sock");
        let mut all = flags.to_vec();
        all.push("--upgrade");
        let up = Self::launch(&self.data_dir, &all, &[]).ports(self.port, self.metrics_port);
        let mut child = up.spawn();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !upgrade_sock.exists() {
            if let Some(status) = child.try_wait() {
                panic!("the new server exited with {status}");
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the new server never asked for the sockets"
            );
            tokio::task::yield_now().await;
        }
        self.process.signal(nix::sys::signal::Signal::SIGQUIT);
        let new = Self::started(up, child, &self.data_dir).await;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while self.process.try_wait().is_none() {
            assert!(
                std::time::Instant::now() < deadline,
                "the old server did not exit"
            );
            tokio::task::yield_now().await;
        }
        new
    }

    fn launch(data_dir: &Path, flags: &[&str], envs: &[(&str, &str)]) -> gitdeploy_harness::Up {
        let log = std::env::var("GITDEPLOY_TEST_LOG").unwrap_or_else(|_| "warn".into());
        envs.iter().fold(
            gitdeploy_harness::Up::new(gitdeploy_bin(), data_dir)
                .flags(flags)
                .log_filter(&log),
            |up, (k, v)| up.env(k, v),
        )
    }

    async fn attach(up: gitdeploy_harness::Up, data_dir: &Path) -> Self {
        let process = up.spawn();
        Self::started(up, process, data_dir).await
    }

    /// Waits for the ready file of `process`, started from `up`.
    async fn started(up: gitdeploy_harness::Up, mut process: Process, data_dir: &Path) -> Self {
        let ready = wait_for_ready_file(&up.ready_file(), &mut process).await;
        assert_eq!(ready["listen"], format!("127.0.0.1:{}", up.port));
        let s3_endpoint = ready["s3_endpoint"].as_str().unwrap().to_owned();
        Gitdeploy {
            port: up.port,
            metrics_port: up.metrics_port,
            data_dir: data_dir.to_owned(),
            s3_endpoint,
            process,
            http: reqwest::Client::new(),
        }
    }

    pub fn api(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Runs the CLI against this server (no token, no saved login), in folder `cwd` when
    /// given: exit code, stdout, stderr.
    pub async fn cli(&self, cwd: Option<&Path>, args: &[&str]) -> (Option<i32>, String, String) {
        let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        all.extend(["--api".to_owned(), self.api("")]);
        let cwd = cwd.map(Path::to_owned);
        tokio::task::spawn_blocking(move || {
            let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_gitdeploy"));
            if let Some(dir) = cwd {
                cmd.current_dir(dir);
            }
            let out = cmd
                .args(&all)
                .env_remove("GITDEPLOY_TOKEN")
                .env("XDG_CONFIG_HOME", "/nonexistent")
                .output()
                .unwrap();
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        })
        .await
        .unwrap()
    }

    /// Sends `body` to the API with `method`; returns status and JSON body (`null` when none).
    pub async fn call_json(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self.http.request(method, self.api(path));
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
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

    /// `GET <path>` of site `label`: status and body text.
    pub async fn page(&self, label: &str, path: &str) -> (u16, String) {
        let resp = self
            .site(reqwest::Method::GET, label, path)
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
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
        std::fs::read_to_string(format!("/proc/{}/status", self.process.pid()))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Descriptors the server holds open.
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.process.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// Stops the server as an orchestrator does (SIGTERM) and waits until it has exited.
    pub async fn terminate(mut self) -> std::process::ExitStatus {
        self.process.signal(nix::sys::signal::Signal::SIGTERM);
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.process.try_wait() {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the server did not exit after SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the server abruptly (as a crash would).
    pub fn kill(mut self) {
        self.process.kill();
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

/// `curl` of `https://<host>:<port><path>` through the loopback: exit code, body and the HTTP
/// version used.
pub fn curl_tls(
    ca_pem: &Path,
    host: &str,
    port: u16,
    path: &str,
    http: &str,
) -> (i32, String, String) {
    let out = std::process::Command::new("curl")
        .args(["-sS", http, "--max-time", "10", "--cacert"])
        .arg(ca_pem)
        .args(["--resolve", &format!("{host}:{port}:127.0.0.1")])
        .args(["-w", "\n%{http_version}"])
        .arg(format!("https://{host}:{port}{path}"))
        .output()
        .expect("curl is installed (scripts/prereqs --test)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, version) = text.rsplit_once('\n').unwrap_or((&text, ""));
    (
        out.status.code().unwrap_or(-1),
        body.to_owned(),
        version.to_owned(),
    )
}

/// Claims `domain` for `project`: the status and the answer.
pub async fn add_domain(gd: &Gitdeploy, project: &str, domain: &str) -> (u16, Value) {
    let resp = gd
        .http()
        .post(gd.api(&format!("/api/projects/{project}/domains")))
        .json(&serde_json::json!({"domain": domain}))
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}
