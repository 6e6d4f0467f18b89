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
    /// S3 requests by kind (`object`, `manifest`) and outcome (`ok`, `error`).
    pub s3_requests: IntCounterVec,
    /// S3 time to response header, by kind.
    pub s3_latency: HistogramVec,
    /// Manifest lookups by result (`hit`, `loaded`, `missing`, `error`).
    pub manifest_lookups: IntCounterVec,
    /// Project alias lookups by result (`hit`, `loaded`, `missing`, `error`).
    pub alias_lookups: IntCounterVec,
    /// Loads of the platform certificate's files by result (`loaded`, `failed`).
    pub certificate_loads: IntCounterVec,
    /// TLS handshakes by result: the protocol chosen (`h2`, `http1`) or `no_certificate`.
    pub tls_handshakes: IntCounterVec,
    /// Requests to protected sites turned away, by reason (`login_required`, `wrong_password`,
    /// `rate_limited`).
    pub visitor_denials: IntCounterVec,
    /// The series every request touches, resolved once: a label lookup hashes the labels and
    /// takes a lock, which showed in the hot path's profile.
    hot: Arc<HotSeries>,
}

/// Status classes in label order ([`status_class_index`]).
const STATUS_CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "none"];
/// Cache results of a request in label order.
const CACHE_RESULTS: [&str; 3] = ["hit", "miss", "none"];
/// Manifest and alias lookup results in label order.
const LOOKUP_RESULTS: [&str; 4] = ["hit", "loaded", "missing", "error"];

/// The metrics before their hot series are resolved.
struct Parts {
    requests: IntCounterVec,
    latency: HistogramVec,
    bytes_sent: IntCounter,
    object_cache: IntCounterVec,
    object_cache_evictions: IntCounter,
    s3_requests: IntCounterVec,
    s3_latency: HistogramVec,
    manifest_lookups: IntCounterVec,
    alias_lookups: IntCounterVec,
    certificate_loads: IntCounterVec,
    tls_handshakes: IntCounterVec,
    visitor_denials: IntCounterVec,
}

/// Why a visitor of a protected site was turned away, in label order.
pub const DENIAL_REASONS: [&str; 3] = ["login_required", "wrong_password", "rate_limited"];

struct HotSeries {
    requests: Vec<IntCounter>,
    latency_site: prometheus::Histogram,
    latency_control: prometheus::Histogram,
    object_hit: IntCounter,
    object_miss: IntCounter,
    manifests: Vec<IntCounter>,
    aliases: Vec<IntCounter>,
}

/// Position of a lookup result in [`LOOKUP_RESULTS`]; anything unknown counts as `error`.
fn lookup_result_index(result: &str) -> usize {
    LOOKUP_RESULTS
        .iter()
        .position(|r| *r == result)
        .unwrap_or(LOOKUP_RESULTS.len() - 1)
}

fn status_class_index(status: u16) -> usize {
    match status {
        100..=599 => usize::from(status / 100) - 1,
        _ => 5,
    }
}

impl EdgeMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let latency_buckets = vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
        ];
        let m = Parts {
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
            alias_lookups: IntCounterVec::new(
                Opts::new(
                    "gitdeploy_alias_lookups_total",
                    "Project alias (production deployment) lookups by result.",
                ),
                &["result"],
            )?,
            certificate_loads: IntCounterVec::new(
                Opts::new(
                    "gitdeploy_tls_certificate_loads_total",
                    "Loads of the platform certificate's files (at start and on change), by result.",
                ),
                &["result"],
            )?,
            tls_handshakes: IntCounterVec::new(
                Opts::new(
                    "gitdeploy_tls_handshakes_total",
                    "TLS handshakes by result: the protocol chosen (h2, http1), or no_certificate \
                     for a name the platform does not serve.",
                ),
                &["result"],
            )?,
            visitor_denials: IntCounterVec::new(
                Opts::new(
                    "gitdeploy_visitor_denials_total",
                    "Requests to password-protected sites turned away, by reason.",
                ),
                &["reason"],
            )?,
        };
        let m = EdgeMetrics {
            hot: Arc::new(HotSeries {
                requests: STATUS_CLASSES
                    .iter()
                    .flat_map(|s| CACHE_RESULTS.iter().map(move |c| (s, c)))
                    .map(|(s, c)| m.requests.with_label_values(&[s, c]))
                    .collect(),
                latency_site: m.latency.with_label_values(&["site"]),
                latency_control: m.latency.with_label_values(&["control"]),
                object_hit: m.object_cache.with_label_values(&["hit"]),
                object_miss: m.object_cache.with_label_values(&["miss"]),
                manifests: LOOKUP_RESULTS
                    .iter()
                    .map(|r| m.manifest_lookups.with_label_values(&[r]))
                    .collect(),
                aliases: LOOKUP_RESULTS
                    .iter()
                    .map(|r| m.alias_lookups.with_label_values(&[r]))
                    .collect(),
            }),
            requests: m.requests,
            latency: m.latency,
            bytes_sent: m.bytes_sent,
            object_cache: m.object_cache,
            object_cache_evictions: m.object_cache_evictions,
            s3_requests: m.s3_requests,
            s3_latency: m.s3_latency,
            manifest_lookups: m.manifest_lookups,
            alias_lookups: m.alias_lookups,
            certificate_loads: m.certificate_loads,
            tls_handshakes: m.tls_handshakes,
            visitor_denials: m.visitor_denials,
        };
        // Every labelled series exists from the start at 0 (see `ApiMetrics::new`).
        for kind in ["object", "manifest"] {
            m.s3_latency.with_label_values(&[kind]);
            for outcome in ["ok", "error"] {
                m.s3_requests.with_label_values(&[kind, outcome]);
            }
        }
        for result in ["loaded", "failed"] {
            m.certificate_loads.with_label_values(&[result]);
        }
        m.tls_handshakes.with_label_values(&["no_certificate"]);
        for reason in DENIAL_REASONS {
            m.visitor_denials.with_label_values(&[reason]);
        }
        registry.register(Box::new(m.requests.clone()))?;
        registry.register(Box::new(m.latency.clone()))?;
        registry.register(Box::new(m.bytes_sent.clone()))?;
        registry.register(Box::new(m.object_cache.clone()))?;
        registry.register(Box::new(m.object_cache_evictions.clone()))?;
        registry.register(Box::new(m.s3_requests.clone()))?;
        registry.register(Box::new(m.s3_latency.clone()))?;
        registry.register(Box::new(m.manifest_lookups.clone()))?;
        registry.register(Box::new(m.alias_lookups.clone()))?;
        registry.register(Box::new(m.certificate_loads.clone()))?;
        registry.register(Box::new(m.tls_handshakes.clone()))?;
        registry.register(Box::new(m.visitor_denials.clone()))?;
        Ok(m)
    }

    /// Counts a finished request by status and cache result (`hit`, `miss`, `none`).
    pub fn count_request(&self, status: u16, cache: &str) {
        let c = CACHE_RESULTS.iter().position(|r| *r == cache).unwrap_or(2);
        self.hot.requests[status_class_index(status) * CACHE_RESULTS.len() + c].inc();
    }

    /// Records a request's latency; `control` for the API, otherwise a site.
    pub fn observe_latency(&self, control: bool, seconds: f64) {
        match control {
            true => self.hot.latency_control.observe(seconds),
            false => self.hot.latency_site.observe(seconds),
        }
    }

    /// Counts an object cache lookup.
    pub fn object_cache_lookup(&self, hit: bool) {
        match hit {
            true => self.hot.object_hit.inc(),
            false => self.hot.object_miss.inc(),
        }
    }

    /// Counts a manifest lookup (`hit`, `loaded`, `missing`, `error`).
    pub fn manifest_lookup(&self, result: &str) {
        self.hot.manifests[lookup_result_index(result)].inc();
    }

    /// Counts a project alias lookup (`hit`, `loaded`, `missing`, `error`).
    pub fn alias_lookup(&self, result: &str) {
        self.hot.aliases[lookup_result_index(result)].inc();
    }
}

/// A gauge read from its owner when scraped (a cache's weight), so nothing on the request path
/// keeps it current.
struct SampledGauge<F> {
    gauge: IntGauge,
    read: F,
}

impl<F: Fn() -> u64 + Send + Sync> prometheus::core::Collector for SampledGauge<F> {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.gauge.desc()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.gauge
            .set(i64::try_from((self.read)()).unwrap_or(i64::MAX));
        self.gauge.collect()
    }
}

/// Registers the gauge `name`, whose value `read` gives at each scrape.
pub fn register_sampled(
    registry: &Registry,
    name: &str,
    help: &str,
    read: impl Fn() -> u64 + Send + Sync + 'static,
) -> prometheus::Result<()> {
    let gauge = IntGauge::new(name, help)?;
    registry.register(Box::new(SampledGauge { gauge, read }))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolved_series_are_the_labelled_ones() {
        let m = EdgeMetrics::new(&Registry::new()).unwrap();
        for (status, cache, class, label) in [
            (204, "hit", "2xx", "hit"),
            (503, "miss", "5xx", "miss"),
            (101, "none", "1xx", "none"),
            (308, "none", "3xx", "none"),
            (404, "none", "4xx", "none"),
            (0, "other", "none", "none"),
            (700, "hit", "none", "hit"),
        ] {
            let before = m.requests.with_label_values(&[class, label]).get();
            m.count_request(status, cache);
            assert_eq!(
                m.requests.with_label_values(&[class, label]).get(),
                before + 1,
                "{status} {cache}"
            );
        }
        m.object_cache_lookup(true);
        m.object_cache_lookup(false);
        m.object_cache_lookup(false);
        assert_eq!(m.object_cache.with_label_values(&["miss"]).get(), 2);
        for r in LOOKUP_RESULTS {
            m.manifest_lookup(r);
            assert_eq!(m.manifest_lookups.with_label_values(&[r]).get(), 1, "{r}");
        }
        m.observe_latency(true, 0.5);
        assert_eq!(
            m.latency.with_label_values(&["control"]).get_sample_count(),
            1
        );
        assert_eq!(m.latency.with_label_values(&["site"]).get_sample_count(), 0);
    }
}
