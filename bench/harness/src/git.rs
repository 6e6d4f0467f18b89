//! Fixture repositories served by `git daemon` on loopback.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::{free_port, wait_for_port, Process};

/// Runs `git` in `dir` with a fixed identity and `main` as the default branch, panicking with
/// its output on failure.
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
        .expect("git is installed");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A directory of fixture repositories, served by `git daemon` once started.
pub struct GitServer {
    /// Where the repositories are.
    pub root: tempfile::TempDir,
    /// The daemon's port (0 until started).
    pub port: u16,
    daemon: Option<Process>,
}

impl Default for GitServer {
    fn default() -> Self {
        Self::new()
    }
}

impl GitServer {
    /// An empty directory of repositories, not served yet.
    pub fn new() -> Self {
        GitServer {
            root: tempfile::tempdir().expect("a temporary directory"),
            port: 0,
            daemon: None,
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

    /// Starts the daemon (after the repositories are added).
    pub fn start(&mut self) {
        self.port = free_port();
        let mut daemon = Process::spawn(
            Command::new("git")
                .arg("daemon")
                .arg("--reuseaddr")
                .arg("--export-all")
                .arg("--listen=127.0.0.1")
                .arg(format!("--port={}", self.port))
                .arg(format!("--base-path={}", self.root.path().display()))
                .arg(self.root.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
            "git daemon",
        );
        wait_for_port(
            ([127, 0, 0, 1], self.port).into(),
            &mut daemon,
            "git daemon",
        );
        self.daemon = Some(daemon);
    }

    /// The daemon's process group id, once started.
    pub fn group(&self) -> Option<u32> {
        self.daemon.as_ref().map(Process::pid)
    }

    /// The `git://` URL of repository `name`.
    pub fn url(&self, name: &str) -> String {
        format!("git://127.0.0.1:{}/{name}", self.port)
    }
}
