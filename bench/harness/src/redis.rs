//! A `redis-server` of the caller's own, on a Unix socket (no port to collide on).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::{wait_until, Process};

/// A running `redis-server`; stopped when dropped.
pub struct Redis {
    /// `redis+unix://<socket>`.
    pub url: String,
    process: Process,
    socket: PathBuf,
    persistent: bool,
    /// Further arguments it was started with (TLS).
    extra: Vec<std::ffi::OsString>,
    dir: tempfile::TempDir,
}

impl Redis {
    /// A server that keeps nothing on disk.
    pub fn start() -> Redis {
        Self::start_in(tempfile::tempdir().expect("a temporary directory"), false)
    }

    /// A server that writes every change to its append-only file before answering, as a
    /// production Redis with persistence does: a restart loses nothing.
    pub fn start_persistent() -> Redis {
        Self::start_in(tempfile::tempdir().expect("a temporary directory"), true)
    }

    /// A server that speaks TLS on a loopback TCP port with `cert` and `key` (PEM), and no
    /// plain TCP; [`Redis::url`] is `rediss://127.0.0.1:<port>` (the certificate must name
    /// `IP:127.0.0.1`).
    pub fn start_tls(cert: &Path, key: &Path) -> Redis {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let socket = dir.path().join("redis.sock");
        let port = crate::free_port();
        let tls = vec![
            "--tls-port".into(),
            port.to_string().into(),
            "--tls-cert-file".into(),
            cert.as_os_str().to_owned(),
            "--tls-key-file".into(),
            key.as_os_str().to_owned(),
            "--tls-auth-clients".into(),
            "no".into(),
        ];
        let process = Self::spawn_with(dir.path(), &socket, false, &tls);
        Redis {
            url: format!("rediss://127.0.0.1:{port}"),
            process,
            socket,
            persistent: false,
            extra: tls,
            dir,
        }
    }

    fn start_in(dir: tempfile::TempDir, persistent: bool) -> Redis {
        let socket = dir.path().join("redis.sock");
        let process = Self::spawn(dir.path(), &socket, persistent);
        Redis {
            url: format!("redis+unix://{}", socket.display()),
            process,
            socket,
            persistent,
            extra: Vec::new(),
            dir,
        }
    }

    fn spawn(dir: &Path, socket: &Path, persistent: bool) -> Process {
        Self::spawn_with(dir, socket, persistent, &[])
    }

    fn spawn_with(
        dir: &Path,
        socket: &Path,
        persistent: bool,
        extra: &[std::ffi::OsString],
    ) -> Process {
        let persistence: &[&str] = if persistent {
            &["--appendonly", "yes", "--appendfsync", "always"]
        } else {
            &["--save", "", "--appendonly", "no"]
        };
        let mut process = Process::spawn(
            Command::new("redis-server")
                .args(["--port", "0"])
                .args(persistence)
                .arg("--unixsocket")
                .arg(socket)
                .arg("--dir")
                .arg(dir)
                .args(extra)
                .stdout(Stdio::null()),
            "redis-server (installed by scripts/prereqs --test)",
        );
        wait_until("redis-server", &mut process, || answers_ping(socket));
        process
    }

    /// Kills the server (SIGKILL, as a crash) and starts it again on the same socket and data.
    pub fn crash_and_restart(&mut self) {
        self.process.kill();
        let _ = std::fs::remove_file(&self.socket);
        self.process =
            Self::spawn_with(self.dir.path(), &self.socket, self.persistent, &self.extra);
    }

    /// Kills the server (a Redis outage) until [`Redis::restart`].
    pub fn stop(&mut self) {
        self.process.kill();
    }

    /// Starts it again after [`Redis::stop`], on the same socket and data.
    pub fn restart(&mut self) {
        let _ = std::fs::remove_file(&self.socket);
        self.process =
            Self::spawn_with(self.dir.path(), &self.socket, self.persistent, &self.extra);
    }

    /// The server's process group id.
    pub fn group(&self) -> u32 {
        self.process.pid()
    }
}

/// Whether the server on `socket` answers PING (it accepts connections before it has loaded its
/// data; PING answers only once it serves).
fn answers_ping(socket: &Path) -> bool {
    let Ok(mut stream) = UnixStream::connect(socket) else {
        return false;
    };
    let mut answer = [0u8; 7];
    stream.write_all(b"PING\r\n").is_ok()
        && stream.read_exact(&mut answer).is_ok()
        && &answer == b"+PONG\r\n"
}
