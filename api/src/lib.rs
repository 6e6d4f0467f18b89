//! GitDeploy's control plane: the deploy API, build log streaming, the deployment store and the
//! runners that turn a queued deployment into a published site.
//!
//! [`ControlPlane::router`] is a plain axum router; the edge hosts it behind the public port.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod acme;
mod alias_change;
mod archive;
pub mod cert_store;
mod dashboard;
mod dispatch;
pub mod domain_check;
mod domain_record;
pub mod domains;
pub mod ecs;
mod error;
pub mod events;
mod file_store;
mod http;
mod job;
pub mod journal;
pub mod logbus;
pub mod metrics;
pub mod notify;
pub mod previews;
pub mod projects;
pub mod protection;
mod queue;
pub mod ratelimit;
mod reconciler;
mod records;
mod redis_conn;
mod redis_logbus;
pub mod redis_store;
mod redis_task;
pub mod retention;
pub mod runner;
pub mod store;
mod store_error;
pub mod targets;
pub mod task_access;
pub mod tokens;
pub mod traffic;
mod trigger;
mod uploads;
pub mod webhooks;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use gitdeploy_core::job::BuildLimits;
use gitdeploy_core::repo::RepoScheme;

pub use archive::{ArchiveFuture, BlobBody, BuildArchive, GcSummary, SiteStorage};
pub use ecs::{EcsRunner, EcsRunnerConfig};
pub use error::ApiError;
pub use file_store::FileStore;
pub use logbus::{FileLogBus, Follower, LogBus};
pub use metrics::ApiMetrics;
pub use projects::{AliasResolver, EdgeView, Production, Project, ProjectError};
pub use queue::{JobQueue, Reservation, SubmitError};
pub use records::Records;
pub use redis_conn::{trust_ca_file as redis_trust_ca_file, CA_FILE_ENV as REDIS_CA_FILE_ENV};
pub use redis_logbus::{RedisLogBus, RedisLogSettings};
pub use redis_store::RedisStore;
pub use redis_task::{run_single_job, TaskSide};
pub use runner::{AfterKill, LocalRunner, LocalRunnerConfig};
pub use store::{Deployment, Store, StoreError};
pub use task_access::{TaskAccess, TaskGrant};
pub use tokens::token_sha256;

/// How the outside world reaches sites and the API, for the URLs the API hands out.
#[derive(Clone, Debug)]
pub struct PublicUrls {
    /// `http` or `https`.
    pub scheme: String,
    /// The platform domain (`localhost`, `example.app`).
    pub domain: String,
    /// Public port when it is not the scheme's default.
    pub port: Option<u16>,
}

impl PublicUrls {
    fn port_suffix(&self) -> String {
        self.port.map(|p| format!(":{p}")).unwrap_or_default()
    }

    /// `scheme://<label>.<domain>[:port]/`
    pub fn site(&self, label: &str) -> String {
        format!(
            "{}://{label}.{}{}/",
            self.scheme,
            self.domain,
            self.port_suffix()
        )
    }

    /// `scheme://<domain>[:port]<path>`
    pub fn api(&self, path: &str) -> String {
        format!(
            "{}://{}{}{path}",
            self.scheme,
            self.domain,
            self.port_suffix()
        )
    }
}

/// Settings of the control plane.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    /// URLs handed out.
    pub public: PublicUrls,
    /// Repository transports users may deploy from.
    pub allowed_repo_schemes: Vec<RepoScheme>,
    /// Limits every build runs under (build settings are checked against them).
    pub limits: BuildLimits,
    /// SHA-256 of the API token; `None` runs the API open (every request allowed).
    pub token_sha256: Option<[u8; 32]>,
    /// Per-client limit on mutations and log streams; `None` for no limit.
    pub rate_limit: Option<ratelimit::RateLimit>,
    /// How old an unreferenced blob must be before a garbage collection deletes it.
    pub gc_grace: std::time::Duration,
    /// Where notification webhooks may point.
    pub outbound: notify::outbound::Policy,
}

/// The control plane's shared state: stores, log bus, job queue and settings.
#[derive(Clone)]
pub struct ControlPlane {
    config: Arc<ApiConfig>,
    records: Records,
    bus: Arc<dyn LogBus>,
    queue: JobQueue,
    archive: Option<Arc<dyn BuildArchive>>,
    storage: Option<Arc<dyn SiteStorage>>,
    limiter: Option<Arc<ratelimit::Limiter>>,
    domain_added: Arc<tokio::sync::Notify>,
    certs: Option<Arc<dyn cert_store::CertStore>>,
    traffic: Option<Arc<dyn traffic::TrafficStore>>,
    journal: Arc<dyn journal::Journal>,
    retention: Option<Arc<retention::Retention>>,
}

impl ControlPlane {
    /// Assembles the control plane from its parts.
    pub fn new(
        config: ApiConfig,
        records: Records,
        bus: Arc<dyn LogBus>,
        journal: Arc<dyn journal::Journal>,
        queue: JobQueue,
        archive: Option<Arc<dyn BuildArchive>>,
    ) -> Self {
        let limiter = config
            .rate_limit
            .map(|limit| Arc::new(ratelimit::Limiter::new(limit)));
        ControlPlane {
            config: Arc::new(config),
            limiter,
            records,
            bus,
            queue,
            archive,
            storage: None,
            domain_added: Arc::new(tokio::sync::Notify::new()),
            certs: None,
            traffic: None,
            journal,
            retention: None,
        }
    }

    /// Preview retention, swept when a project's setting changes.
    pub fn with_retention(mut self, retention: Arc<retention::Retention>) -> Self {
        self.retention = Some(retention);
        self
    }

    /// Notified whenever a custom domain is added, so its check need not wait
    /// ([`domain_check::DomainChecker::run`]).
    pub fn domain_added(&self) -> Arc<tokio::sync::Notify> {
        self.domain_added.clone()
    }

    /// Where sites are stored, so deleting a deployment removes its files.
    pub fn with_site_storage(mut self, storage: Arc<dyn SiteStorage>) -> Self {
        self.storage = Some(storage);
        self
    }

    /// Where custom domains' certificates are, so removing a domain removes its certificate.
    pub fn with_cert_store(mut self, certs: Arc<dyn cert_store::CertStore>) -> Self {
        self.certs = Some(certs);
        self
    }

    /// Where the edges' per-project traffic counts are, for `GET /api/projects/{name}/traffic`.
    pub fn with_traffic(mut self, traffic: Arc<dyn traffic::TrafficStore>) -> Self {
        self.traffic = Some(traffic);
        self
    }

    /// The HTTP API as an axum router.
    pub fn router(&self) -> axum::Router {
        http::router(self.clone())
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_unix_ms() -> u64 {
    now_ms()
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
