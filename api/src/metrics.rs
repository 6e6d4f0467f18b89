//! Control-plane metrics: builds and their phases, the queue, log publishing and followers.
//! Registered into a registry the caller owns (no global registry), so tests stay isolated.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

/// Build and log metrics.
#[derive(Clone)]
pub struct ApiMetrics {
    /// Builds started.
    pub builds_started: IntCounter,
    /// Builds finished, by outcome (`ready`, `failed`, `canceled`, `skipped`).
    pub builds_finished: IntCounterVec,
    /// Whole build duration.
    pub build_duration: Histogram,
    /// Duration of each build phase (`clone`, `install`, `build`, `upload`).
    pub phase_duration: HistogramVec,
    /// Jobs waiting for a builder.
    pub queue_depth: IntGauge,
    /// Builds running now.
    pub running: IntGauge,
    /// Log lines published.
    pub log_lines: IntCounter,
    /// Log followers connected now.
    pub log_followers: IntGauge,
    /// Followers that fell behind the live buffer and caught up from the log.
    pub log_lagged: IntCounter,
    /// ACME certificate orders, by outcome (`issued`, `failed`).
    pub acme_orders: IntCounterVec,
    /// Notification attempts by kind (`webhook`, `github`) and outcome (`delivered`, `retried`,
    /// `failed`, `dropped`).
    pub notifications: IntCounterVec,
}

fn build_buckets() -> Vec<f64> {
    vec![
        0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
    ]
}

impl ApiMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let m = ApiMetrics {
            builds_started: IntCounter::new("gitdeploy_builds_started_total", "Builds started.")?,
            builds_finished: IntCounterVec::new(
                Opts::new(
                    "gitdeploy_builds_finished_total",
                    "Builds finished, by outcome.",
                ),
                &["outcome"],
            )?,
            build_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "gitdeploy_build_duration_seconds",
                    "Wall-clock duration of whole builds.",
                )
                .buckets(build_buckets()),
            )?,
            phase_duration: HistogramVec::new(
                HistogramOpts::new(
                    "gitdeploy_build_phase_duration_seconds",
                    "Duration of build phases.",
                )
                .buckets(build_buckets()),
                &["phase"],
            )?,
            queue_depth: IntGauge::new(
                "gitdeploy_build_queue_depth",
                "Builds waiting for a runner slot.",
            )?,
            running: IntGauge::new("gitdeploy_builds_running", "Builds running now.")?,
            log_lines: IntCounter::new(
                "gitdeploy_log_lines_published_total",
                "Build log lines published.",
            )?,
            log_followers: IntGauge::new(
                "gitdeploy_log_followers",
                "Log followers connected now.",
            )?,
            log_lagged: IntCounter::new(
                "gitdeploy_log_followers_lagged_total",
                "Times a follower fell behind the live buffer and caught up from the stored log.",
            )?,
            acme_orders: IntCounterVec::new(
                Opts::new(
                    "gitdeploy_acme_orders_total",
                    "ACME certificate orders of custom domains, by outcome.",
                ),
                &["outcome"],
            )?,
            notifications: IntCounterVec::new(
                Opts::new(
                    "gitdeploy_notifications_total",
                    "Notification attempts (webhooks and GitHub calls), by kind and outcome.",
                ),
                &["kind", "outcome"],
            )?,
        };
        // Every labelled series exists from the start at 0, so a dashboard's or an alert's
        // rate() sees the first event instead of a series that appears already counted.
        for outcome in ["ready", "failed", "canceled", "skipped"] {
            m.builds_finished.with_label_values(&[outcome]);
        }
        for phase in ["clone", "install", "build", "upload"] {
            m.phase_duration.with_label_values(&[phase]);
        }
        for outcome in ["issued", "failed"] {
            m.acme_orders.with_label_values(&[outcome]);
        }
        for kind in ["webhook", "github"] {
            for outcome in ["delivered", "retried", "failed", "dropped"] {
                m.notifications.with_label_values(&[kind, outcome]);
            }
        }
        registry.register(Box::new(m.builds_started.clone()))?;
        registry.register(Box::new(m.builds_finished.clone()))?;
        registry.register(Box::new(m.build_duration.clone()))?;
        registry.register(Box::new(m.phase_duration.clone()))?;
        registry.register(Box::new(m.queue_depth.clone()))?;
        registry.register(Box::new(m.running.clone()))?;
        registry.register(Box::new(m.log_lines.clone()))?;
        registry.register(Box::new(m.log_followers.clone()))?;
        registry.register(Box::new(m.log_lagged.clone()))?;
        registry.register(Box::new(m.acme_orders.clone()))?;
        registry.register(Box::new(m.notifications.clone()))?;
        Ok(m)
    }

    /// Metrics registered nowhere, for tests and tools that do not export them.
    pub fn unregistered() -> Self {
        // Registering into a throwaway registry cannot collide.
        Self::new(&Registry::new()).unwrap_or_else(|e| panic!("metric definitions are valid: {e}"))
    }
}
