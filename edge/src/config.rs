//! The platform's one typed configuration, [`Platform`]: what `up::run` assembles a server
//! from. It is built either from `gitdeploy up`'s flags ([`crate::up::UpOptions`]) or from
//! `gitdeploy serve`'s TOML file (`crate::serve`); the flags and the file format are types of
//! their own, and the choices they make (where state lives, where sites are stored, who builds)
//! are enums here, so the assembly never asks which command it runs under.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use gitdeploy_api::ratelimit::RateLimit;
use gitdeploy_api::EcsRunnerConfig;
use gitdeploy_core::job::BuildLimits;
use gitdeploy_core::repo::RepoScheme;

use crate::public::ConnectionLimits;

/// Everything a server is assembled from.
#[derive(Clone, Debug)]
pub(crate) struct Platform {
    /// The public port (sites and API).
    pub listen: SocketAddr,
    /// The Prometheus metrics listener.
    pub metrics_listen: SocketAddr,
    /// The platform domain, lower case without a final dot: sites are `<label>.<domain>`.
    pub domain: String,
    /// The data directory (state and logs on disk, the embedded S3, work and cache of builds).
    pub data_dir: PathBuf,
    /// Worker threads of each service.
    pub threads: usize,
    /// Take over the listening sockets of the server running on this data directory.
    pub upgrade: bool,
    /// Where to write the bound addresses once serving.
    pub ready_file: Option<PathBuf>,
    /// How URLs handed out look, when not derived from the listen address (`http`, its port).
    pub public: Option<PublicAddress>,
    /// Limits of client connections on the public port.
    pub clients: ConnectionLimits,
    /// The API's access rules.
    pub api: ApiSettings,
    /// Where deployments, projects and logs live.
    pub state: StateBackend,
    /// Where sites are stored.
    pub storage: StorageSettings,
    /// The edge's caches.
    pub cache: CacheSettings,
    /// How builds run.
    pub builds: BuildSettings,
    /// How custom domains are checked.
    pub domains: DomainSettings,
    /// The TLS listener, when there is one.
    pub tls: Option<TlsListener>,
    /// Where custom domains' certificates are ordered, when they are.
    pub acme: Option<gitdeploy_api::acme::AcmeSettings>,
    /// Proxies whose `X-Forwarded-For` names the client.
    pub trusted_proxies: crate::client_addr::TrustedProxies,
    /// The access log, when requests are logged.
    pub access_log: Option<crate::access_log::AccessLogSettings>,
    /// How often the edge stores its per-project traffic counts.
    pub traffic_flush: Duration,
    /// Garbage collection of unreferenced blobs.
    pub gc: GcSettings,
    /// Notification webhooks and GitHub.
    pub notify: NotifyConfig,
}

/// How the platform tells the outside world of deployments ([`gitdeploy_api::notify`]).
#[derive(Clone, Debug)]
pub(crate) struct NotifyConfig {
    /// Ranges notification webhooks may reach besides public addresses.
    pub allow_networks: Vec<gitdeploy_api::notify::outbound::Cidr>,
    /// GitHub's REST API.
    pub github_api: String,
    /// The first retry's wait.
    pub retry_base: Duration,
    /// One attempt's time limit.
    pub timeout: Duration,
}

impl NotifyConfig {
    /// Reads the allowed ranges; the message names the first bad one.
    pub fn new(
        allow: &[String],
        github_api: String,
        retry_base: Duration,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let allow_networks = allow
            .iter()
            .map(|c| gitdeploy_api::notify::outbound::Cidr::parse(c).map_err(anyhow::Error::msg))
            .collect::<anyhow::Result<_>>()?;
        let parsed = reqwest::Url::parse(&github_api)
            .map_err(|e| anyhow::anyhow!("the GitHub API URL {github_api:?}: {e}"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            anyhow::bail!("the GitHub API URL {github_api:?} must be http or https");
        }
        Ok(NotifyConfig {
            allow_networks,
            github_api,
            retry_base,
            timeout,
        })
    }
}

/// When blobs no deployment names are deleted (`builder::publish::gc`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct GcSettings {
    /// How often this edge runs a collection; `None`: only on `POST /api/gc`.
    pub every: Option<Duration>,
    /// How old an unreferenced blob must be to be deleted: longer than any publish takes, from
    /// its first upload to its manifest.
    pub grace: Duration,
}

impl GcSettings {
    /// Settings from seconds (`0` interval: no periodic collection).
    pub fn from_secs(every: u64, grace: u64) -> Self {
        GcSettings {
            every: (every > 0).then(|| Duration::from_secs(every)),
            grace: Duration::from_secs(grace),
        }
    }
}

/// A TLS listener beside the plain one: the same sites and API over HTTPS and HTTP/2.
#[derive(Clone, Debug)]
pub(crate) struct TlsListener {
    /// Its address.
    pub listen: SocketAddr,
    /// The platform certificate (`<domain>` and `*.<domain>`); without one (`up` only), a
    /// local CA in the data directory issues a certificate per name.
    pub platform: Option<crate::tls::PlatformFiles>,
}

/// How the ownership of custom domains is checked ([`gitdeploy_api::domain_check`]).
#[derive(Clone, Debug)]
pub(crate) struct DomainSettings {
    /// The DNS server asked (host:port); the system's resolvers without one.
    pub dns_resolver: Option<SocketAddr>,
    /// The edge's public addresses: a domain resolving to one of them is the platform's.
    pub public_addresses: Vec<std::net::IpAddr>,
    /// How often waiting domains are checked again.
    pub check_every: std::time::Duration,
}

/// How the outside world reaches the platform (behind a TLS load balancer, say).
#[derive(Clone, Debug)]
pub(crate) struct PublicAddress {
    /// `http` or `https`.
    pub scheme: String,
    /// Port of the URLs, when not the scheme's default.
    pub port: Option<u16>,
}

/// Who may use the API, and how much.
#[derive(Clone, Debug)]
pub(crate) struct ApiSettings {
    /// The token the API requires; `None`: open.
    pub token: Option<String>,
    /// An open API is allowed off loopback.
    pub insecure_open: bool,
    /// Builds that may wait for a runner slot; more are refused with 429.
    pub max_queued: usize,
    /// Per-client rate of costly requests; `None`: unlimited.
    pub rate_limit: Option<RateLimit>,
    /// Repository transports users may deploy from.
    pub repo_schemes: Vec<RepoScheme>,
}

/// Where state and logs live.
#[derive(Clone, Debug)]
pub(crate) enum StateBackend {
    /// Files in the data directory (one server).
    Files,
    /// Redis, shared by every edge.
    Redis {
        /// `redis://[user:password@]host:port[/db]`.
        url: String,
        /// Prefix of every key.
        prefix: String,
        /// How long a finished log stays in Redis (the S3 archive keeps it).
        log_ttl: Duration,
        /// The CA certificate (PEM) `rediss://` trusts instead of the system's roots.
        ca_file: Option<PathBuf>,
    },
}

/// Where sites are stored.
#[derive(Clone, Debug)]
pub(crate) enum StorageSettings {
    /// The embedded S3 server on loopback, over the data directory, with a key of its own.
    Embedded,
    /// An S3 (AWS, or any S3-compatible store).
    S3 {
        /// Its endpoint; `None`: AWS's for the region.
        endpoint: Option<String>,
        /// The bucket.
        bucket: String,
        /// Its region.
        region: String,
        /// Key prefix of every object.
        prefix: String,
        /// How requests are signed.
        credentials: S3Credentials,
    },
}

/// How S3 requests are signed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum S3Credentials {
    /// The static key in `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`.
    StaticKey,
    /// The AWS credential chain (task role, instance profile, web identity), refreshed.
    AwsChain,
}

/// The edge's caches.
#[derive(Clone, Debug)]
pub(crate) struct CacheSettings {
    /// Largest object kept in memory (0: no object cache).
    pub object_max_bytes: u64,
    /// Bytes the object cache holds in all.
    pub object_total_bytes: u64,
    /// How long an alias lookup is cached when an announcement is lost.
    pub alias_ttl: Duration,
}

/// How builds run.
#[derive(Clone, Debug)]
pub(crate) struct BuildSettings {
    /// Builds at once (local) or tasks at once (ECS).
    pub concurrency: usize,
    /// Limits of every build (the storage's key limit is filled in at assembly).
    pub limits: BuildLimits,
    /// How often the runner heartbeats and settles builds of stopped runners.
    pub heartbeat: Duration,
    /// Who builds.
    pub runner: RunnerKind,
}

/// Who builds.
#[derive(Clone, Debug)]
pub(crate) enum RunnerKind {
    /// Sandboxed child processes on this machine.
    Local,
    /// ECS tasks.
    Ecs(Box<EcsRunnerConfig>),
}

impl Platform {
    /// The URLs handed out.
    pub(crate) fn public_urls(&self) -> gitdeploy_api::PublicUrls {
        match &self.public {
            Some(p) => gitdeploy_api::PublicUrls {
                scheme: p.scheme.clone(),
                domain: self.domain.clone(),
                port: p.port,
            },
            None => {
                let port = self.listen.port();
                gitdeploy_api::PublicUrls {
                    scheme: "http".into(),
                    domain: self.domain.clone(),
                    port: (port != 80).then_some(port),
                }
            }
        }
    }

    /// Where notification webhooks may point: not this platform's names or listeners, and
    /// public addresses only (besides the ranges opened).
    pub(crate) fn outbound_policy(&self) -> gitdeploy_api::notify::outbound::Policy {
        let mut own = vec![self.listen, self.metrics_listen];
        own.extend(self.tls.as_ref().map(|t| t.listen));
        gitdeploy_api::notify::outbound::Policy {
            platform_domain: self.domain.clone(),
            own,
            allowed: self.notify.allow_networks.clone(),
        }
    }

    /// Everything on this machine: no Redis, no external S3.
    pub(crate) fn is_embedded(&self) -> bool {
        matches!(
            (&self.state, &self.storage),
            (StateBackend::Files, StorageSettings::Embedded)
        )
    }
}
