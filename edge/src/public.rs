//! The public port's application: reads a connection's first request head and hands the
//! connection to the control plane (hyper serving the API, WebSocket upgrades included, with no
//! proxy hop) when its host is the apex or `api.`, and to the sites proxy otherwise. The bytes
//! read are pushed back onto the stream first, so each side sees the request untouched.
//!
//! The API closes its connections after one request, and a kept-alive site connection comes
//! back here after each response, so every request is routed by its own head. Site
//! connections go to the proxy wrapped in [`Coalescing`] (header and body in one write); the
//! proxy still forwards a control-plane request it is handed (an absolute-form URI naming the
//! API) to the API's private socket.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use gitdeploy_core::host::{normalize_host, route_host, HostRoute};
use pingora_core::apps::ServerApp;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::Stream;
use pingora_core::server::ShutdownWatch;
use pingora_proxy::HttpProxy;
use tokio::io::AsyncReadExt;

use crate::coalesce::Coalescing;
use crate::control::serve_http;
use crate::sites::{HostRules, SitesProxy};
use pingora_core::protocols::GetSocketDigest;

/// Largest request head read to decide the route.
const MAX_HEAD: usize = 16 * 1024;
/// How long a client may take to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);

/// The public port.
pub struct PublicApp {
    proxy: Arc<HttpProxy<SitesProxy>>,
    api: axum::Router,
    hosts: HostRules,
}

impl PublicApp {
    /// Routes between `proxy` and `api` by host.
    pub fn new(proxy: HttpProxy<SitesProxy>, api: axum::Router, hosts: HostRules) -> Self {
        PublicApp {
            proxy: Arc::new(proxy),
            api: crate::control::one_request_per_connection(api),
            hosts,
        }
    }
}

/// The `Host` header of an HTTP/1 request head, if the head is complete enough to have one.
pub fn host_of_head(head: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(head).ok()?;
    text.split("\r\n")
        .skip(1)
        .take_while(|line| !line.is_empty())
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case("host")
                .then(|| value.trim())
        })
}

async fn read_head(stream: &mut L4Stream) -> Option<Vec<u8>> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 4096];
    let read = async {
        loop {
            let n = stream.read(&mut buf).await.ok()?;
            if n == 0 {
                return (!head.is_empty()).then_some(());
            }
            head.extend_from_slice(&buf[..n]);
            if head.windows(4).any(|w| w == b"\r\n\r\n") || head.len() >= MAX_HEAD {
                return Some(());
            }
        }
    };
    tokio::time::timeout(HEAD_TIMEOUT, read).await.ok()??;
    Some(head)
}

#[async_trait]
impl ServerApp for PublicApp {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        // A new connection, or a kept-alive one coming back from the sites proxy.
        let returned = match stream.into_any().downcast::<L4Stream>() {
            Ok(s) => Ok(*s),
            Err(other) => Err(other.downcast::<Coalescing<L4Stream>>().map_err(|_| ())),
        };
        let mut l4 = match returned {
            Ok(s) => s,
            Err(Ok(s)) => s.into_inner().await.ok()?,
            Err(Err(())) => {
                tracing::error!("the public port only serves plain TCP connections");
                return None;
            }
        };
        let head = read_head(&mut l4).await?;
        l4.rewind(&head);
        let route = host_of_head(&head)
            .and_then(normalize_host)
            .map(|h| route_host(&h, &self.hosts.domain, &self.hosts.control_hosts));
        if route == Some(HostRoute::ControlPlane) {
            let peer = l4
                .get_socket_digest()
                .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()));
            serve_http(self.api.clone(), l4, peer, shutdown).await;
            return None;
        }
        let stream: Stream = Box::new(Coalescing::new(l4));
        self.proxy.process_new(stream, shutdown).await
    }

    async fn cleanup(&self) {
        ServerApp::cleanup(self.proxy.as_ref()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::host_of_head;

    #[test]
    fn host_table() {
        for (head, want) in [
            (
                &b"GET / HTTP/1.1\r\nHost: localhost:8080\r\n\r\n"[..],
                Some("localhost:8080"),
            ),
            (
                b"GET / HTTP/1.1\r\nUser-Agent: x\r\nhOsT:  api.example.app \r\n\r\n",
                Some("api.example.app"),
            ),
            (
                b"GET / HTTP/1.1\r\nUser-Agent: x\r\n\r\nHost: smuggled\r\n",
                None,
            ),
            (b"GET / HTTP/1.0\r\n\r\n", None),
            (b"Host: first-line\r\n\r\n", None),
            (b"\xff\xfe", None),
        ] {
            assert_eq!(
                host_of_head(head),
                want,
                "{:?}",
                String::from_utf8_lossy(head)
            );
        }
    }
}
