//! The control plane hosted inside Pingora: hyper serving the API's axum router, upgrades
//! (WebSocket) included, on a private Unix socket. The public port's proxy routes each
//! control-plane request there ([`crate::sites`]) and names the client it stands for in
//! [`CLIENT_HEADER`], which only the proxy can set: nothing else reaches the socket.

use std::sync::Arc;

use async_trait::async_trait;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use gitdeploy_core::host::{normalize_host, route_host, HostRoute};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use pingora_core::apps::ServerApp;
use pingora_core::protocols::Stream;
use pingora_core::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncWrite};

/// Host rules of the proxy.
#[derive(Clone, Debug)]
pub struct HostRules {
    /// The platform domain.
    pub domain: String,
    /// Further hosts that reach the control plane (the address `up` listens on).
    pub control_hosts: Vec<String>,
}

/// The API as a Pingora application on its private socket.
pub struct ApiApp {
    router: axum::Router,
}

impl ApiApp {
    /// Hosts `router`.
    pub fn new(router: axum::Router) -> Self {
        ApiApp { router }
    }
}

#[async_trait]
impl ServerApp for ApiApp {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        serve_http(self.router.clone(), stream, shutdown).await;
        None
    }
}

/// The header in which the proxy names the client a control-plane request stands for (any
/// such header from the client itself is replaced).
pub const CLIENT_HEADER: &str = "x-gitdeploy-client";

/// Serves HTTP/1.1 on `io` with `router` until the connection ends, shutting down gracefully
/// when the server does. Requests carry the client's address (for rate limits) that the proxy
/// named in [`CLIENT_HEADER`].
pub async fn serve_http<IO>(router: axum::Router, io: IO, shutdown: &ShutdownWatch)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let router = router.layer(axum::middleware::map_request(
        |mut req: Request| async move {
            let client = req
                .headers()
                .get(CLIENT_HEADER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<std::net::IpAddr>().ok());
            if let Some(ip) = client {
                req.extensions_mut()
                    .insert(gitdeploy_api::ratelimit::ClientAddr(ip));
            }
            req
        },
    ));
    let service = TowerToHyperService::new(router);
    let conn = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!("control plane connection ended: {e}");
            }
        }
        _ = shutdown_requested(shutdown.clone()) => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// Adds the check that every request to the API names a control-plane host: a keep-alive
/// connection the public port gave to the API answers 421 to a request for a site.
pub fn only_control_plane_hosts(router: axum::Router, hosts: HostRules) -> axum::Router {
    let hosts = Arc::new(hosts);
    router.layer(axum::middleware::from_fn(
        move |req: Request, next: Next| {
            let hosts = hosts.clone();
            async move {
                let host = req
                    .headers()
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .and_then(normalize_host);
                match host.map(|h| route_host(&h, &hosts.domain, &hosts.control_hosts)) {
                    Some(HostRoute::ControlPlane) => next.run(req).await,
                    _ => misdirected(),
                }
            }
        },
    ))
}

fn misdirected() -> Response {
    (
        http::StatusCode::MISDIRECTED_REQUEST,
        axum::Json(serde_json::json!({"error": {"code": "misdirected", "message": "open a new connection for this host"}})),
    )
        .into_response()
}

/// Resolves once the server is shutting down. Waits for the watched flag to become `true`
/// rather than for any change, so a receiver that has not seen an earlier value does not wake
/// at once; never resolves if the server dropped the sender without shutting down.
pub async fn shutdown_requested(mut watch: ShutdownWatch) {
    loop {
        if *watch.borrow_and_update() {
            return;
        }
        if watch.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
