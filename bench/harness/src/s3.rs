//! `gitdeploy s3-server` (s3s + s3s-fs, SigV4 required) in its own process: one S3 that several
//! `gitdeploy` processes, or the edge and nginx, share.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::{free_port, wait_for_port, Process};

/// The access key of every harness S3 server: a throwaway for a loopback server.
pub const S3_KEY: (&str, &str) = ("test-access-key", "test-secret-key-0123456789");
/// The bucket `gitdeploy s3-server` creates.
pub const S3_BUCKET: &str = "gitdeploy";
/// The region everything signs for.
pub const S3_REGION: &str = "us-east-1";

/// A running S3 server; stopped when dropped.
pub struct S3Server {
    /// `http://127.0.0.1:port`.
    pub endpoint: String,
    /// `127.0.0.1:port`.
    pub addr: String,
    process: Option<Process>,
    _dir: tempfile::TempDir,
}

impl S3Server {
    /// Starts `gitdeploy` (the binary at `binary`) as an S3 server with an empty store.
    pub fn start(binary: &Path) -> S3Server {
        Self::start_in(binary, tempfile::tempdir().expect("a temporary directory"))
    }

    /// Keeps its objects in `dir` (a small file system, say).
    pub fn start_in(binary: &Path, dir: tempfile::TempDir) -> S3Server {
        let port = free_port();
        let mut process = Process::spawn(
            Command::new(binary)
                .args(["s3-server", "--listen", &format!("127.0.0.1:{port}")])
                .arg("--data-dir")
                .arg(dir.path())
                .env("AWS_ACCESS_KEY_ID", S3_KEY.0)
                .env("AWS_SECRET_ACCESS_KEY", S3_KEY.1)
                .env("RUST_LOG", "error")
                .stdout(Stdio::null()),
            "gitdeploy s3-server",
        );
        wait_for_port(([127, 0, 0, 1], port).into(), &mut process, "s3-server");
        S3Server {
            endpoint: format!("http://127.0.0.1:{port}"),
            addr: format!("127.0.0.1:{port}"),
            process: Some(process),
            _dir: dir,
        }
    }

    /// Stops it (an S3 outage).
    pub fn stop(&mut self) {
        self.process.take();
    }
}
