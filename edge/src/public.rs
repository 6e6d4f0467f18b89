//! The public port's application: every connection, whatever host its requests name, goes to
//! the sites proxy, wrapped in a [`ClientStream`] (header and body in one write; limits on
//! request heads). Pingora parses each request once and [`crate::sites`] routes each request
//! by its own host in `request_filter`, so there is one parse, one routing decision and one set
//! of limits per request: kept-alive connections, pipelined requests (answered in order) and,
//! later, TLS and HTTP/2 all take the same path. Control-plane requests are forwarded by the
//! proxy to the API's private socket.
//!
//! Connections beyond the configured maximum are answered `503` at once and closed, so the
//! process never runs out of file descriptors and the connections it holds keep being served.
//!
//! When the server stops listening (shutdown, or a graceful upgrade that hands the sockets to a
//! new process) the port [`Draining`]: every further response says `Connection: close`, so each
//! busy connection ends cleanly after its next response and its client reconnects (to the new
//! process); only then, or after [`DRAIN_WAIT`], are the connections still idle closed.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use pingora_core::apps::ServerApp;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::tls::TlsStream;
use pingora_core::protocols::{Ssl, Stream, ALPN};
use pingora_core::server::ShutdownWatch;
use pingora_proxy::HttpProxy;
use tokio::io::AsyncWriteExt;

use crate::client_stream::ClientStream;
use crate::draining::Draining;
use crate::memory::Trimmer;
use crate::sites::SitesProxy;
use gitdeploy_core::head_guard::HeadLimits;

/// How long a stopping public port waits for its connections to end on their own.
pub const DRAIN_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// The answer to a connection over the limit.
const OVERLOADED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\ncontent-length: 43\r\nretry-after: 1\r\nconnection: close\r\n\r\nThe server is at its connection limit now.\n";

/// Limits of the public port's connections.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    /// Request head limits of each connection.
    pub head: HeadLimits,
    /// Connections held at once; more are answered `503` and closed.
    pub max_connections: usize,
}

/// The public port.
pub struct PublicApp {
    proxy: Arc<HttpProxy<SitesProxy>>,
    limits: ConnectionLimits,
    open: Arc<AtomicUsize>,
    draining: Draining,
    trimmer: Arc<Trimmer>,
    /// Completed TLS handshakes by protocol (`h2`, `http1`).
    handshakes: Option<[prometheus::IntCounter; 2]>,
}

impl PublicApp {
    /// Serves every connection with `proxy` (built with the same `draining`), within `limits`.
    pub fn new(proxy: HttpProxy<SitesProxy>, limits: ConnectionLimits, draining: Draining) -> Self {
        PublicApp {
            proxy: Arc::new(proxy),
            limits,
            open: Arc::new(AtomicUsize::new(0)),
            draining,
            trimmer: Arc::default(),
            handshakes: None,
        }
    }

    /// Counts completed TLS handshakes in `handshakes` by the protocol chosen.
    pub fn with_tls_handshakes(mut self, handshakes: &prometheus::IntCounterVec) -> Self {
        self.handshakes = Some([
            handshakes.with_label_values(&["h2"]),
            handshakes.with_label_values(&["http1"]),
        ]);
        self
    }

    fn count_handshake(&self, protocol: usize) {
        if let Some(counters) = &self.handshakes {
            counters[protocol].inc();
        }
    }
}

/// Counts a connection while it lives.
struct Held {
    open: Arc<AtomicUsize>,
    trimmer: Arc<Trimmer>,
}

impl Drop for Held {
    fn drop(&mut self) {
        let left = self.open.fetch_sub(1, Ordering::Relaxed).saturating_sub(1);
        self.trimmer.closed(left);
    }
}

#[async_trait]
impl ServerApp for PublicApp {
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let held = Held {
            open: self.open.clone(),
            trimmer: self.trimmer.clone(),
        };
        let before = self.open.fetch_add(1, Ordering::Relaxed);
        self.trimmer.opened(before + 1);
        if before >= self.limits.max_connections {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(1), async {
                stream.write_all(OVERLOADED).await?;
                stream.flush().await
            })
            .await;
            drop(held);
            return None;
        }
        let stream: Stream = match stream.into_any().downcast::<L4Stream>() {
            Ok(l4) => Box::new(ClientStream::new(*l4, self.limits.head)),
            Err(other) => match other.downcast::<TlsStream<L4Stream>>() {
                // HTTP/2 frames its own requests (and has its own limits): the head guard
                // reads HTTP/1 heads only.
                Ok(tls) if tls.selected_alpn_proto() == Some(ALPN::H2) => {
                    self.count_handshake(0);
                    tls
                }
                Ok(tls) => {
                    self.count_handshake(1);
                    Box::new(ClientStream::new(*tls, self.limits.head))
                }
                Err(_) => {
                    tracing::error!("the public port serves TCP and TLS connections only");
                    return None;
                }
            },
        };
        let _ = self.proxy.process_new(stream, shutdown).await;
        drop(held);
        None
    }

    async fn cleanup(&self) {
        self.draining.start();
        let deadline = tokio::time::Instant::now() + DRAIN_WAIT;
        while self.open.load(Ordering::Relaxed) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        // Then the connections still waiting for a request are closed.
        ServerApp::cleanup(self.proxy.as_ref()).await;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_overload_answer_is_well_formed() {
        let text = std::str::from_utf8(super::OVERLOADED).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{text}"
        );
    }
}
