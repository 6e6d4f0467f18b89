//! Starting `gitdeploy up` on free loopback ports with its own data directory, and waiting for
//! it to be ready: the JSON file `--ready-file` names, written once its ports answer.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{free_port, Process};

/// How to start one `gitdeploy up`.
pub struct Up {
    binary: PathBuf,
    data_dir: PathBuf,
    /// The public port.
    pub port: u16,
    /// The metrics port.
    pub metrics_port: u16,
    flags: Vec<String>,
    envs: Vec<(String, String)>,
    log_filter: String,
}

impl Up {
    /// `binary up` with `data_dir`, on two free ports, logging warnings and errors.
    pub fn new(binary: &Path, data_dir: &Path) -> Up {
        Up {
            binary: binary.to_owned(),
            data_dir: data_dir.to_owned(),
            port: free_port(),
            metrics_port: free_port(),
            flags: Vec::new(),
            envs: Vec::new(),
            log_filter: "warn".into(),
        }
    }

    /// On these ports instead (a graceful upgrade takes over its predecessor's).
    pub fn ports(mut self, port: u16, metrics_port: u16) -> Up {
        (self.port, self.metrics_port) = (port, metrics_port);
        self
    }

    /// Extra flags.
    pub fn flags(mut self, flags: &[&str]) -> Up {
        self.flags.extend(flags.iter().map(|f| f.to_string()));
        self
    }

    /// An extra environment variable.
    pub fn env(mut self, name: &str, value: &str) -> Up {
        self.envs.push((name.into(), value.into()));
        self
    }

    /// The `RUST_LOG` filter.
    pub fn log_filter(mut self, filter: &str) -> Up {
        self.log_filter = filter.into();
        self
    }

    /// The ready file it writes.
    pub fn ready_file(&self) -> PathBuf {
        self.data_dir.join("ready.json")
    }

    /// Starts it; the banner (for people) is drained in the background.
    pub fn spawn(&self) -> Process {
        let mut process = Process::spawn(
            Command::new(&self.binary)
                .args(["up", "--listen", &format!("127.0.0.1:{}", self.port)])
                .args([
                    "--metrics-listen",
                    &format!("127.0.0.1:{}", self.metrics_port),
                ])
                .arg("--data-dir")
                .arg(&self.data_dir)
                .arg("--ready-file")
                .arg(self.ready_file())
                .args(&self.flags)
                .envs(self.envs.iter().map(|(k, v)| (k, v)))
                .env("RUST_LOG", &self.log_filter)
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit()),
            "gitdeploy up",
        );
        let lines = BufReader::new(process.child().stdout.take().expect("piped")).lines();
        std::thread::spawn(move || lines.for_each(drop));
        process
    }

    /// Starts it and waits until it is ready; returns the process and its ready file.
    pub async fn start(&self) -> (Process, Value) {
        let mut process = self.spawn();
        let ready = wait_for_ready_file(&self.ready_file(), &mut process).await;
        assert_eq!(ready["listen"], format!("127.0.0.1:{}", self.port));
        (process, ready)
    }
}

/// The ready file `process` writes, once it is this process's (a graceful upgrade replaces the
/// old process's file); bounded, and failing at once if the process exits.
pub async fn wait_for_ready_file(path: &Path, process: &mut Process) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(ready) = std::fs::read(path)
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .filter(|r| r["pid"] == process.pid())
        {
            return ready;
        }
        process.assert_running();
        assert!(
            Instant::now() < deadline,
            "gitdeploy wrote no ready file within a minute"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
