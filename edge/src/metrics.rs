//! Edge metrics and the Prometheus endpoint. Metrics live in a registry created by `main` and
//! passed in (no global registry); the endpoint serves that registry's text format on its own
//! listener.

use std::sync::Arc;

use async_trait::async_trait;
use pingora_core::apps::http_app::{HttpServer, ServeHttp};
use pingora_core::protocols::http::ServerSession;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

/// Request, cache and origin metrics of the sites proxy.
#[derive(Clone)]
pub struct EdgeMetrics {
    /// Requests by status class and cache result.
    pub requests: IntCounterVec,
    /// Request latency by kind (`site`, `control`).
    pub latency: HistogramVec,
    /// Response body bytes sent.
    pub bytes_sent: IntCounter,
    /// Object cache lookups by result (`hit`, `miss`).
    pub object_cache: IntCounterVec,
    /// Object cache evictions.
    pub object_cache_evictions: IntCounter,
    /// Bytes held by the object cache.
    pub object_cache_bytes: IntGauge,
    /// S3 requests by kind (`object`, `manifest`) and outcome (`ok`, `error`).
    pub s3_requests: IntCounterVec,
    /// S3 time to response header, by kind.
    pub s3_latency: HistogramVec,
    /// Manifest lookups by result (`hit`, `loaded`, `missing`, `error`).
    pub manifest_lookups: IntCounterVec,
}

impl EdgeMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let latency_buckets = vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
        ];
        let m = EdgeMetrics {
            requests: IntCounterVec::new(
                Opts::new(
                    "gitdeploy_edge_requests_total",
                    "Requests by status class and cache result.",
                ),
                &["status_class", "cache"],
            )?,
            latency: HistogramVec::new(
                HistogramOpts::new(
                    "gitdeploy_edge_request_duration_seconds",
                    "Request latency.",
                )
                .buckets(latency_buckets.clone()),
                &["kind"],
            )?,
            bytes_sent: IntCounter::new(
                "gitdeploy_edge_response_bytes_total",
                "Response body bytes sent.",
            )?,
            object_cache: IntCounterVec::new(
                Opts::new(
                    "gitdeploy_object_cache_requests_total",
                    "Object cache lookups by result.",
                ),
                &["result"],
            )?,
            object_cache_evictions: IntCounter::new(
                "gitdeploy_object_cache_evictions_total",
                "Objects evicted from the object cache.",
            )?,
            object_cache_bytes: IntGauge::new(
                "gitdeploy_object_cache_bytes",
                "Bytes held by the object cache.",
            )?,
            s3_requests: IntCounterVec::new(
                Opts::new(
                    "gitdeploy_s3_requests_total",
                    "S3 requests by kind and outcome.",
                ),
                &["kind", "outcome"],
            )?,
            s3_latency: HistogramVec::new(
                HistogramOpts::new(
                    "gitdeploy_s3_request_duration_seconds",
                    "S3 time to response header.",
                )
                .buckets(latency_buckets),
                &["kind"],
            )?,
            manifest_lookups: IntCounterVec::new(
                Opts::new(
                    "gitdeploy_manifest_lookups_total",
                    "Manifest lookups by result.",
                ),
                &["result"],
            )?,
        };
        registry.register(Box::new(m.requests.clone()))?;
        registry.register(Box::new(m.latency.clone()))?;
        registry.register(Box::new(m.bytes_sent.clone()))?;
        registry.register(Box::new(m.object_cache.clone()))?;
        registry.register(Box::new(m.object_cache_evictions.clone()))?;
        registry.register(Box::new(m.object_cache_bytes.clone()))?;
        registry.register(Box::new(m.s3_requests.clone()))?;
        registry.register(Box::new(m.s3_latency.clone()))?;
        registry.register(Box::new(m.manifest_lookups.clone()))?;
        Ok(m)
    }
}

/// Serves a registry as Prometheus text at any path of its listener.
pub struct MetricsApp {
    registry: Arc<Registry>,
}

/// The metrics endpoint as a Pingora HTTP server.
pub fn metrics_server(registry: Arc<Registry>) -> HttpServer<MetricsApp> {
    HttpServer::new_app(MetricsApp { registry })
}

#[async_trait]
impl ServeHttp for MetricsApp {
    async fn response(&self, _session: &mut ServerSession) -> http::Response<Vec<u8>> {
        let encoder = TextEncoder::new();
        let mut body = Vec::new();
        let status = match encoder.encode(&self.registry.gather(), &mut body) {
            Ok(()) => 200,
            Err(e) => {
                tracing::error!("cannot encode metrics: {e}");
                body = b"metrics unavailable\n".to_vec();
                500
            }
        };
        http::Response::builder()
            .status(status)
            .header(http::header::CONTENT_TYPE, encoder.format_type())
            .header(http::header::CONTENT_LENGTH, body.len())
            .body(body)
            .unwrap_or_default()
    }
}
