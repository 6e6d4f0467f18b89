//! The TOML file `serve` reads, as it is written: sections, keys and their defaults. Every key is
//! documented in `deploy/gitdeploy.toml`; unknown keys are refused. What the keys mean for the
//! server is decided in `serve/mod.rs`, which turns this into the typed [`crate::config::Platform`].

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Config {
    pub(super) server: ServerSection,
    #[serde(default)]
    pub(super) api: ApiSection,
    pub(super) redis: RedisSection,
    pub(super) s3: S3Section,
    #[serde(default)]
    pub(super) clients: ClientsSection,
    #[serde(default)]
    pub(super) cache: CacheSection,
    #[serde(default)]
    pub(super) builds: BuildsSection,
    #[serde(default)]
    pub(super) domains: DomainsSection,
    #[serde(default)]
    pub(super) tls: Option<TlsSection>,
    #[serde(default)]
    pub(super) acme: Option<AcmeSection>,
    #[serde(default)]
    pub(super) notifications: NotificationsSection,
    #[serde(default)]
    pub(super) github: GithubSection,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NotificationsSection {
    /// Ranges notification webhooks may reach besides public addresses.
    #[serde(default)]
    pub(super) allow_networks: Vec<String>,
    /// The first retry's wait.
    #[serde(default = "default_retry_secs")]
    pub(super) retry_secs: u64,
    /// One attempt's time limit.
    #[serde(default = "default_timeout_secs")]
    pub(super) timeout_secs: u64,
}

fn default_retry_secs() -> u64 {
    10
}

fn default_timeout_secs() -> u64 {
    10
}

impl Default for NotificationsSection {
    fn default() -> Self {
        NotificationsSection {
            allow_networks: Vec::new(),
            retry_secs: default_retry_secs(),
            timeout_secs: default_timeout_secs(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct GithubSection {
    /// GitHub's REST API (GitHub Enterprise: `https://<host>/api/v3`).
    #[serde(default = "default_github_api")]
    pub(super) api_url: String,
}

fn default_github_api() -> String {
    "https://api.github.com".into()
}

impl Default for GithubSection {
    fn default() -> Self {
        GithubSection {
            api_url: default_github_api(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AcmeSection {
    pub(super) directory: String,
    #[serde(default)]
    pub(super) ca_file: Option<PathBuf>,
    #[serde(default)]
    pub(super) email: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TlsSection {
    pub(super) listen: SocketAddr,
    pub(super) cert: PathBuf,
    pub(super) key: PathBuf,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DomainsSection {
    #[serde(default)]
    pub(super) dns_resolver: Option<SocketAddr>,
    #[serde(default)]
    pub(super) public_address: Vec<std::net::IpAddr>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ServerSection {
    pub(super) listen: SocketAddr,
    pub(super) metrics_listen: SocketAddr,
    pub(super) domain: String,
    #[serde(default = "https")]
    pub(super) public_scheme: String,
    #[serde(default)]
    pub(super) public_port: Option<u16>,
    pub(super) data_dir: PathBuf,
    #[serde(default = "two")]
    pub(super) threads: usize,
    #[serde(default)]
    pub(super) access_log: Option<String>,
    #[serde(default = "one")]
    pub(super) access_log_sample: f64,
    #[serde(default)]
    pub(super) access_log_s3: bool,
    #[serde(default = "sixty_secs")]
    pub(super) access_log_s3_interval_secs: u64,
}

fn one() -> f64 {
    1.0
}
fn sixty_secs() -> u64 {
    60
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ClientsSection {
    #[serde(default = "ten_thousand")]
    pub(super) max_connections: usize,
    #[serde(default = "sixty_seconds_ms")]
    pub(super) idle_timeout_ms: u64,
    #[serde(default = "ten_seconds_ms")]
    pub(super) header_timeout_ms: u64,
    #[serde(default = "sixty_four_kib")]
    pub(super) max_header_bytes: usize,
    #[serde(default)]
    pub(super) trusted_proxies: Option<Vec<String>>,
}

impl Default for ClientsSection {
    fn default() -> Self {
        ClientsSection {
            max_connections: ten_thousand(),
            idle_timeout_ms: sixty_seconds_ms(),
            header_timeout_ms: ten_seconds_ms(),
            max_header_bytes: sixty_four_kib(),
            trusted_proxies: None,
        }
    }
}

fn ten_thousand() -> usize {
    10_000
}
fn sixty_seconds_ms() -> u64 {
    60_000
}
fn ten_seconds_ms() -> u64 {
    10_000
}
fn sixty_four_kib() -> usize {
    64 * 1024
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ApiSection {
    #[serde(default)]
    pub(super) token_file: Option<PathBuf>,
    #[serde(default)]
    pub(super) token_env: Option<String>,
    #[serde(default)]
    pub(super) insecure_open: bool,
    #[serde(default = "https_only")]
    pub(super) repo_schemes: Vec<String>,
    #[serde(default = "hundred")]
    pub(super) max_queued: usize,
    #[serde(default = "sixty")]
    pub(super) rate_burst: u32,
    #[serde(default = "two_per_second")]
    pub(super) rate_per_second: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RedisSection {
    #[serde(default = "redis_env")]
    pub(super) url_env: String,
    #[serde(default = "redis_prefix")]
    pub(super) prefix: String,
    #[serde(default = "week")]
    pub(super) log_ttl_secs: u64,
    #[serde(default)]
    pub(super) ca_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct S3Section {
    pub(super) bucket: String,
    pub(super) region: String,
    #[serde(default)]
    pub(super) endpoint: Option<String>,
    #[serde(default)]
    pub(super) prefix: String,
    #[serde(default = "aws")]
    pub(super) credentials: String,
    /// How often this edge collects unreferenced blobs (0: only on `POST /api/gc`).
    #[serde(default = "hour")]
    pub(super) gc_interval_secs: u64,
    /// How old an unreferenced blob must be before it is deleted.
    #[serde(default = "two_hours")]
    pub(super) gc_grace_secs: u64,
}

fn hour() -> u64 {
    3600
}

fn two_hours() -> u64 {
    7200
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CacheSection {
    #[serde(default = "mib")]
    pub(super) object_max_bytes: u64,
    #[serde(default = "quarter_gib")]
    pub(super) object_total_bytes: u64,
    #[serde(default = "five_seconds")]
    pub(super) alias_ttl_ms: u64,
}

impl Default for CacheSection {
    fn default() -> Self {
        CacheSection {
            object_max_bytes: mib(),
            object_total_bytes: quarter_gib(),
            alias_ttl_ms: five_seconds(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BuildsSection {
    #[serde(default = "local")]
    pub(super) runner: String,
    #[serde(default = "two")]
    pub(super) concurrency: usize,
    #[serde(default = "fifteen_minutes")]
    pub(super) timeout_secs: u64,
    #[serde(default = "processes")]
    pub(super) max_processes: u64,
    #[serde(default = "gib")]
    pub(super) max_output_bytes: u64,
    #[serde(default = "eight_gib")]
    pub(super) max_disk_bytes: u64,
    #[serde(default)]
    pub(super) allow_networks: Vec<String>,
    #[serde(default)]
    pub(super) ecs: Option<EcsSection>,
}

impl Default for BuildsSection {
    fn default() -> Self {
        BuildsSection {
            runner: local(),
            concurrency: two(),
            timeout_secs: fifteen_minutes(),
            max_processes: processes(),
            max_output_bytes: gib(),
            max_disk_bytes: eight_gib(),
            allow_networks: Vec::new(),
            ecs: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct EcsSection {
    pub(super) cluster: String,
    pub(super) task_definition: String,
    #[serde(default = "builder")]
    pub(super) container: String,
    #[serde(default = "fargate")]
    pub(super) launch_type: String,
    #[serde(default)]
    pub(super) capacity_provider: Option<String>,
    pub(super) subnets: Vec<String>,
    pub(super) security_groups: Vec<String>,
    #[serde(default)]
    pub(super) assign_public_ip: bool,
    #[serde(default = "five_seconds")]
    pub(super) poll_interval_ms: u64,
    #[serde(default = "five")]
    pub(super) run_attempts: u32,
    #[serde(default = "yes")]
    pub(super) scoped_redis_users: bool,
    #[serde(default)]
    pub(super) upload_role_arn: Option<String>,
}

fn yes() -> bool {
    true
}

fn https() -> String {
    "https".into()
}
fn https_only() -> Vec<String> {
    vec!["https".into()]
}
fn two() -> usize {
    2
}
fn five() -> u32 {
    5
}
fn hundred() -> usize {
    100
}
fn sixty() -> u32 {
    60
}
fn two_per_second() -> f64 {
    2.0
}
fn redis_env() -> String {
    "GITDEPLOY_REDIS_URL".into()
}
fn redis_prefix() -> String {
    "gitdeploy:".into()
}
fn week() -> u64 {
    7 * 24 * 3600
}
fn aws() -> String {
    "aws".into()
}
fn mib() -> u64 {
    1 << 20
}
fn quarter_gib() -> u64 {
    256 << 20
}
fn gib() -> u64 {
    1 << 30
}
fn eight_gib() -> u64 {
    8 << 30
}
fn five_seconds() -> u64 {
    5000
}
fn local() -> String {
    "local".into()
}
fn fifteen_minutes() -> u64 {
    900
}
fn processes() -> u64 {
    512
}
fn builder() -> String {
    "builder".into()
}
fn fargate() -> String {
    "FARGATE".into()
}
