//! The control plane hosted inside Pingora: a [`ServerApp`] that hands each connection to hyper
//! with the API's axum router, upgrades (WebSocket) included. The sites proxy forwards
//! control-plane hosts to its private socket, so the API shares the public port.

use std::sync::Arc;

use async_trait::async_trait;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use pingora_core::apps::ServerApp;
use pingora_core::protocols::Stream;
use pingora_core::server::ShutdownWatch;

/// The API as a Pingora application.
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
        let service = TowerToHyperService::new(self.router.clone());
        let conn = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(stream), service)
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
        None
    }
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
