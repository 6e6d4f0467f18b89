//! The flags of `gitdeploy up` and the [`Platform`] they describe: one of the two file formats
//! of the platform's configuration (the other is `serve`'s TOML), kept apart from the typed
//! configuration the server is assembled from.

use std::net::SocketAddr;
use std::path::PathBuf;

use gitdeploy_api::ratelimit::RateLimit;
use gitdeploy_core::head_guard::HeadLimits;
use gitdeploy_core::job::BuildLimits;
use gitdeploy_core::repo::RepoScheme;

use crate::access_log::AccessLogSettings;
use crate::client_addr::TrustedProxies;
use crate::config::{
    ApiSettings, BuildSettings, CacheSettings, DomainSettings, NotifyConfig, Platform, RunnerKind,
    S3Credentials, StateBackend, StorageSettings, TlsListener,
};
use crate::platform::{BUCKET, REGION};
use crate::public::ConnectionLimits;

/// Options of `gitdeploy up`.
#[derive(clap::Args, Debug)]
pub struct UpOptions {
    /// Public address (sites and API).
    #[arg(long, default_value = "127.0.0.1:8080", env = "GITDEPLOY_LISTEN")]
    listen: SocketAddr,
    /// Where deployments, logs and the embedded S3 data are kept.
    #[arg(long, default_value = ".gitdeploy", env = "GITDEPLOY_DATA_DIR")]
    data_dir: PathBuf,
    /// Sites are served at <name>.<domain>.
    #[arg(long, default_value = "localhost", env = "GITDEPLOY_DOMAIN")]
    domain: String,
    /// Builds that run at once; more wait in a queue.
    #[arg(long, default_value_t = 2)]
    concurrency: usize,
    /// Wall-clock limit of one build, in seconds.
    #[arg(long, default_value_t = 900)]
    build_timeout: u64,
    /// Processes one build may run at once.
    #[arg(long, default_value_t = 512)]
    build_max_processes: u64,
    /// Bytes a build may publish.
    #[arg(long, default_value_t = 1 << 30)]
    build_max_output_bytes: u64,
    /// Bytes a build may write to disk (checkout, home, package cache, `/tmp`); the build fails
    /// when it goes over.
    #[arg(long, default_value_t = 8 << 30)]
    build_max_disk_bytes: u64,
    /// A private IPv4 range builds may reach besides the internet (a registry mirror, an
    /// internal git server), as a CIDR such as 10.20.0.0/16; repeat for several. The host's own
    /// addresses, link-local and loopback stay closed.
    #[arg(long = "build-allow-network", value_name = "CIDR")]
    build_allow_networks: Vec<String>,
    /// An address range notification webhooks may reach besides public addresses (an internal
    /// relay; loopback for a local receiver), as a CIDR such as 10.30.0.0/16; repeat for
    /// several. Link-local (the cloud metadata endpoints) stays closed, and so does this server.
    #[arg(long = "notify-allow-network", value_name = "CIDR")]
    notify_allow_networks: Vec<String>,
    /// GitHub's REST API, for commit statuses and pull request comments (GitHub Enterprise:
    /// https://<host>/api/v3).
    #[arg(
        long,
        env = "GITDEPLOY_GITHUB_API",
        default_value = "https://api.github.com"
    )]
    github_api: String,
    /// The first retry's wait of a notification (then four times as long each time).
    #[arg(long, hide = true, default_value_t = 10_000)]
    notify_retry_ms: u64,
    /// One notification attempt's time limit.
    #[arg(long, hide = true, default_value_t = 10_000)]
    notify_timeout_ms: u64,
    /// Token the API requires (`Authorization: Bearer <token>`); without one the API is open.
    #[arg(long, env = "GITDEPLOY_API_TOKEN", hide_env_values = true)]
    api_token: Option<String>,
    /// Allow an open API on an address other than loopback.
    #[arg(long)]
    insecure_open_api: bool,
    /// Builds that may wait for a runner slot; more are refused with 429.
    #[arg(long, default_value_t = 100)]
    max_queued: usize,
    /// Largest object kept in the in-memory object cache (0 turns the cache off).
    #[arg(long, default_value_t = 1 << 20)]
    object_cache_max_object_bytes: u64,
    /// Bytes the object cache holds in all.
    #[arg(long, default_value_t = 256 << 20)]
    object_cache_bytes: u64,
    /// Prometheus metrics listener (`/metrics`).
    #[arg(
        long,
        default_value = "127.0.0.1:9464",
        env = "GITDEPLOY_METRICS_LISTEN"
    )]
    metrics_listen: SocketAddr,
    /// Connections the public port holds at once; more are answered 503 and closed.
    #[arg(long, default_value_t = 10_000)]
    max_connections: usize,
    /// How long a client connection may wait silently for its next request, in ms.
    #[arg(long, default_value_t = 60_000)]
    client_idle_timeout_ms: u64,
    /// How long a client may take to send one whole request head, in ms (408 beyond).
    #[arg(long, default_value_t = 10_000)]
    client_header_timeout_ms: u64,
    /// Largest request head a client may send, in bytes (431 beyond).
    #[arg(long, default_value_t = 64 * 1024)]
    max_header_bytes: usize,
    /// Worker threads of each service.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Take over the listening sockets of the server running on this data directory (Pingora's
    /// graceful upgrade): start this one with `--upgrade`, then send the old one SIGQUIT; it
    /// hands its sockets over, finishes its requests and exits, and no connection is refused.
    #[arg(long)]
    upgrade: bool,
    /// Once serving (the public port answers the API's health check), write the server's
    /// addresses here as JSON: `{"pid", "listen", "metrics_listen", "api", "s3_endpoint"}`.
    /// Removed when the server stops.
    #[arg(long)]
    ready_file: Option<PathBuf>,
    /// Keep state and logs in Redis (`redis://[:password@]host:port[/db]`) instead of the data
    /// directory, so several edges can share them.
    #[arg(long, env = "GITDEPLOY_REDIS_URL", hide_env_values = true)]
    redis_url: Option<String>,
    /// Prefix of every Redis key.
    #[arg(long, default_value = "gitdeploy:")]
    redis_prefix: String,
    /// A CA certificate (PEM) that a `rediss://` Redis URL is verified with, instead of the
    /// system's roots.
    #[arg(long, env = "GITDEPLOY_REDIS_CA_FILE")]
    redis_ca_file: Option<PathBuf>,
    /// How long a finished build log stays in Redis, in seconds (the S3 archive keeps it).
    #[arg(long, default_value_t = 7 * 24 * 3600)]
    log_ttl: u64,
    /// Use this S3 endpoint (credentials from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)
    /// instead of the embedded one.
    #[arg(long, env = "GITDEPLOY_S3_ENDPOINT")]
    pub(crate) s3_endpoint: Option<String>,
    /// Bucket of the external S3.
    #[arg(long, default_value = BUCKET, env = "GITDEPLOY_S3_BUCKET")]
    pub(crate) s3_bucket: String,
    /// Region of the external S3.
    #[arg(long, default_value = REGION, env = "GITDEPLOY_S3_REGION")]
    pub(crate) s3_region: String,
    /// How long an alias lookup is cached, in milliseconds (changes are announced at once; this
    /// is the limit when an announcement is lost).
    #[arg(long, default_value_t = 5000)]
    alias_cache_ttl_ms: u64,
    /// API requests that cost (deploys and other changes, log streams) one client may make at
    /// once.
    #[arg(long, default_value_t = 60)]
    api_rate_burst: u32,
    /// Such requests per second a client earns back (0 turns the limit off).
    #[arg(long, default_value_t = 2.0)]
    api_rate_per_second: f64,
    /// DNS server (host:port) asked whether a custom domain points at the platform; the
    /// system's resolvers without one.
    #[arg(long, env = "GITDEPLOY_DNS_RESOLVER")]
    dns_resolver: Option<std::net::SocketAddr>,
    /// A public address of the edge (repeatable): a custom domain whose A/AAAA records name one
    /// is verified, as one with a CNAME under the platform domain is.
    #[arg(long = "public-address")]
    public_addresses: Vec<std::net::IpAddr>,
    /// A TLS listener (HTTPS and HTTP/2) beside the plain one, for sites and the API.
    /// Without --tls-cert/--tls-key, a certificate authority of the server's own (kept in the
    /// data directory; trust its `tls/ca.pem`) issues a certificate for each name.
    #[arg(long, env = "GITDEPLOY_TLS_LISTEN")]
    tls_listen: Option<std::net::SocketAddr>,
    /// The platform certificate's chain (PEM) for `<domain>` and `*.<domain>`; read again when
    /// it changes.
    #[arg(long, env = "GITDEPLOY_TLS_CERT", requires_all = ["tls_listen", "tls_key"])]
    tls_cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long, env = "GITDEPLOY_TLS_KEY", requires_all = ["tls_listen", "tls_cert"])]
    tls_key: Option<PathBuf>,
    /// An ACME directory (RFC 8555) that issues certificates for verified custom domains, such
    /// as https://acme-v02.api.letsencrypt.org/directory; its HTTP-01 challenges are answered
    /// on the plain listener, which the CA must reach on port 80.
    #[arg(long, env = "GITDEPLOY_ACME_DIRECTORY", requires = "tls_listen")]
    acme_directory: Option<String>,
    /// Trust (PEM) for the ACME server's own HTTPS, beside the system's roots.
    #[arg(long, env = "GITDEPLOY_ACME_CA_FILE", requires = "acme_directory")]
    acme_ca_file: Option<PathBuf>,
    /// Contact address of the ACME account (expiry notices).
    #[arg(long, env = "GITDEPLOY_ACME_EMAIL", requires = "acme_directory")]
    acme_email: Option<String>,
    /// Renew certificates this long before they expire, in ms (30 days).
    #[arg(long, default_value_t = 30 * 24 * 3600 * 1000, hide = true)]
    acme_renew_before_ms: u64,
    /// First wait after a failed certificate order, in ms (it doubles up to 6 hours).
    #[arg(long, default_value_t = 60_000, hide = true)]
    acme_retry_ms: u64,
    /// How often certificates due are looked for, in ms.
    #[arg(long, default_value_t = 60_000, hide = true)]
    acme_check_interval_ms: u64,
    /// How often custom domains waiting for their DNS are checked again, in ms.
    #[arg(long, default_value_t = 30_000, hide = true)]
    domain_check_interval_ms: u64,
    /// How often the runner sends its heartbeat and settles builds of stopped runners, in ms.
    #[arg(long, default_value_t = 5000, hide = true)]
    heartbeat_interval_ms: u64,
    /// A proxy (address or CIDR, repeatable) whose X-Forwarded-For names the client, for rate
    /// limits and the access log; `none` trusts none. Default: loopback, the private ranges and
    /// link-local, where a load balancer in front of the edge sits.
    #[arg(long = "trusted-proxy", value_name = "CIDR")]
    trusted_proxies: Vec<String>,
    /// Write an access log (one JSON line per request) to FILE, or `-` for stderr.
    #[arg(long, value_name = "FILE", env = "GITDEPLOY_ACCESS_LOG")]
    access_log: Option<String>,
    /// Log this fraction of the requests (0.01: one in a hundred, evenly spaced).
    #[arg(long, default_value_t = 1.0, value_name = "RATE")]
    access_log_sample: f64,
    /// Also store the access log in the bucket, as gzip NDJSON objects under
    /// `access-logs/YYYY/MM/DD/HH/`.
    #[arg(long)]
    access_log_s3: bool,
    /// How long an S3 access-log object collects records before it is stored, in seconds.
    #[arg(long, default_value_t = 60, value_name = "SECONDS")]
    access_log_s3_interval: u64,
    /// How often the per-project traffic counts are stored, in ms.
    #[arg(long, default_value_t = 10_000, hide = true)]
    traffic_flush_interval_ms: u64,
    /// How often blobs no deployment names are collected, in seconds (0: only on
    /// `POST /api/gc`).
    #[arg(long, default_value_t = 3600, value_name = "SECONDS")]
    gc_interval_secs: u64,
    /// How old an unreferenced blob must be before it is deleted, in seconds.
    #[arg(long, default_value_t = 7200, value_name = "SECONDS")]
    gc_grace_secs: u64,
}

impl UpOptions {
    /// The platform these flags describe: files or Redis for state, the embedded or an
    /// external S3, local builds.
    pub(crate) fn into_platform(self) -> anyhow::Result<Platform> {
        let ms = std::time::Duration::from_millis;
        let trusted_proxies = match self.trusted_proxies.is_empty() {
            true => TrustedProxies::default(),
            false => TrustedProxies::parse(&self.trusted_proxies)
                .map_err(|e| anyhow::anyhow!("--trusted-proxy: {e}"))?,
        };
        let access_log = AccessLogSettings::new(
            self.access_log.as_deref(),
            self.access_log_sample,
            self.access_log_s3,
            std::time::Duration::from_secs(self.access_log_s3_interval),
        )
        .map_err(|e| anyhow::anyhow!("--access-log: {e}"))?;
        Ok(Platform {
            trusted_proxies,
            access_log,
            traffic_flush: ms(self.traffic_flush_interval_ms.max(10)),
            gc: crate::config::GcSettings::from_secs(self.gc_interval_secs, self.gc_grace_secs),
            listen: self.listen,
            metrics_listen: self.metrics_listen,
            domain: self.domain.trim_end_matches('.').to_ascii_lowercase(),
            data_dir: self.data_dir,
            threads: self.threads.max(1),
            upgrade: self.upgrade,
            ready_file: self.ready_file,
            public: None,
            tls: self.tls_listen.map(|listen| TlsListener {
                listen,
                platform: self
                    .tls_cert
                    .zip(self.tls_key)
                    .map(|(cert, key)| crate::tls::PlatformFiles { cert, key }),
            }),
            acme: self
                .acme_directory
                .map(|directory| gitdeploy_api::acme::AcmeSettings {
                    directory,
                    ca_file: self.acme_ca_file,
                    email: self.acme_email,
                    renew_before: ms(self.acme_renew_before_ms),
                    retry_first: ms(self.acme_retry_ms.max(10)),
                    check_every: ms(self.acme_check_interval_ms.max(10)),
                }),
            domains: DomainSettings {
                dns_resolver: self.dns_resolver,
                public_addresses: self.public_addresses,
                check_every: ms(self.domain_check_interval_ms.max(100)),
            },
            clients: ConnectionLimits {
                head: HeadLimits {
                    idle: ms(self.client_idle_timeout_ms.max(1)),
                    head: ms(self.client_header_timeout_ms.max(1)),
                    max_bytes: self.max_header_bytes.max(1024),
                },
                max_connections: self.max_connections.max(1),
            },
            api: ApiSettings {
                token: self.api_token,
                insecure_open: self.insecure_open_api,
                max_queued: self.max_queued,
                rate_limit: (self.api_rate_per_second > 0.0).then_some(RateLimit {
                    burst: self.api_rate_burst,
                    per_second: self.api_rate_per_second,
                }),
                repo_schemes: vec![
                    RepoScheme::Https,
                    RepoScheme::Http,
                    RepoScheme::Git,
                    RepoScheme::Local,
                ],
            },
            state: match self.redis_url {
                Some(url) => StateBackend::Redis {
                    url,
                    prefix: self.redis_prefix,
                    log_ttl: std::time::Duration::from_secs(self.log_ttl),
                    ca_file: self.redis_ca_file,
                },
                None => StateBackend::Files,
            },
            storage: match self.s3_endpoint {
                Some(endpoint) => StorageSettings::S3 {
                    endpoint: Some(endpoint),
                    bucket: self.s3_bucket,
                    region: self.s3_region,
                    prefix: String::new(),
                    credentials: S3Credentials::StaticKey,
                },
                None => StorageSettings::Embedded,
            },
            cache: CacheSettings {
                object_max_bytes: self.object_cache_max_object_bytes,
                object_total_bytes: self.object_cache_bytes,
                alias_ttl: ms(self.alias_cache_ttl_ms.max(1)),
            },
            notify: NotifyConfig::new(
                &self.notify_allow_networks,
                self.github_api,
                ms(self.notify_retry_ms.max(1)),
                ms(self.notify_timeout_ms.max(1)),
            )?,
            builds: BuildSettings {
                concurrency: self.concurrency,
                limits: BuildLimits {
                    timeout_secs: self.build_timeout,
                    max_processes: self.build_max_processes,
                    max_output_bytes: self.build_max_output_bytes,
                    max_disk_bytes: self.build_max_disk_bytes,
                    allowed_networks: self.build_allow_networks,
                    ..BuildLimits::default()
                },
                heartbeat: ms(self.heartbeat_interval_ms.max(10)),
                runner: RunnerKind::Local,
            },
        })
    }
}
