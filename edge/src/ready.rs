//! The machine-readable readiness signal (`--ready-file PATH`): once the public port answers
//! the API's health check through the whole path (public port → proxy → API), the server's
//! addresses are written to PATH as JSON, atomically (a temporary file renamed), so
//! supervisors, tests and the bench wait for a file instead of parsing the banner. The file is
//! removed when the server stops, unless a newer process (a graceful upgrade) has replaced it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use serde::{Deserialize, Serialize};

/// What the ready file holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ready {
    /// The serving process.
    pub pid: u32,
    /// The public port's address.
    pub listen: SocketAddr,
    /// The metrics listener's address.
    pub metrics_listen: SocketAddr,
    /// The TLS listener's address, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_listen: Option<SocketAddr>,
    /// Where the API and dashboard are, as the outside world reaches them.
    pub api: String,
    /// The S3 endpoint sites are stored in (the embedded one, or the configured one).
    pub s3_endpoint: String,
}

/// Writes [`Ready`] once the server serves.
pub struct ReadyFile {
    /// Where to write it.
    pub path: PathBuf,
    /// What to write.
    pub ready: Ready,
    /// The host the health check is sent to (the control plane's).
    pub control_host: String,
}

/// Where to probe a listener that may be bound to every address.
fn probe_address(listen: SocketAddr) -> SocketAddr {
    let mut probe = listen;
    if probe.ip().is_unspecified() {
        probe.set_ip(match listen {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    probe
}

impl ReadyFile {
    async fn serving(&self) -> bool {
        let client = reqwest::Client::new();
        let url = format!("http://{}/api/health", probe_address(self.ready.listen));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let mut backoff = Duration::from_millis(5);
        while tokio::time::Instant::now() < deadline {
            let answer = client
                .get(&url)
                .header(reqwest::header::HOST, &self.control_host)
                .timeout(Duration::from_secs(2))
                .send()
                .await;
            if answer.is_ok_and(|r| r.status().is_success()) {
                return true;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(200));
        }
        false
    }

    fn write(&self) -> std::io::Result<()> {
        let tmp = self.path.with_extension(format!("tmp-{}", self.ready.pid));
        std::fs::write(&tmp, serde_json::to_vec_pretty(&self.ready)?)?;
        std::fs::rename(&tmp, &self.path)
    }

    /// Removes the file if it is still this process's.
    fn remove(&self) {
        let ours = std::fs::read(&self.path)
            .ok()
            .and_then(|b| serde_json::from_slice::<Ready>(&b).ok())
            .is_some_and(|r| r.pid == self.ready.pid);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[async_trait]
impl BackgroundService for ReadyFile {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        tokio::select! {
            serving = self.serving() => {
                if !serving {
                    tracing::error!(
                        "the public port did not answer its health check within a minute: {} not written",
                        self.path.display()
                    );
                    return;
                }
                if let Err(e) = self.write() {
                    tracing::error!("cannot write {}: {e}", self.path.display());
                    return;
                }
            }
            _ = shutdown.changed() => return,
        }
        let _ = shutdown.changed().await;
        self.remove();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unspecified_listeners_are_probed_on_loopback() {
        for (listen, probe) in [
            ("0.0.0.0:8080", "127.0.0.1:8080"),
            ("[::]:8080", "[::1]:8080"),
            ("10.1.2.3:80", "10.1.2.3:80"),
            ("127.0.0.1:9", "127.0.0.1:9"),
        ] {
            assert_eq!(
                probe_address(listen.parse().unwrap()),
                probe.parse().unwrap(),
                "{listen}"
            );
        }
    }
}
