//! `gitdeploy up`: the embedded default. One process, no cloud, no Redis: the sites proxy and
//! the API on one public port, S3 (s3s-fs) on loopback, state and logs on disk, builds as
//! sandboxed child processes. `--redis-url` keeps state and logs in Redis instead, and
//! `--s3-endpoint` uses an external S3, so several `up` processes can share one platform the way
//! production edges do.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use gitdeploy_api::{
    token_sha256, ApiConfig, ApiMetrics, ControlPlane, FileLogBus, FileStore, LocalRunner,
    LocalRunnerConfig, LogBus, PublicUrls, Records, RedisLogBus, RedisLogSettings, RedisStore,
    Store,
};
use gitdeploy_core::job::{env, BuildLimits};
use gitdeploy_core::repo::redact_repo_url;
use gitdeploy_core::repo::RepoScheme;
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::{RunArgs, Server};
use pingora_core::services::background::background_service;
use pingora_core::services::listening::Service;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_proxy::HttpProxy;
use rand::distr::{Alphanumeric, SampleString};

use crate::cache::{AliasCache, ManifestCache, ObjectCache};
use crate::control::HostRules;
use crate::control::{only_control_plane_hosts, ApiApp};
use crate::draining::Draining;
use crate::embedded_s3::EmbeddedS3;
use crate::metrics::{metrics_server, EdgeMetrics};
use crate::origin::{OriginSettings, S3Origin};
use crate::public::{ConnectionLimits, PublicApp};
use crate::runner_service::RunnerService;
use crate::sites::SitesProxy;
use gitdeploy_core::head_guard::HeadLimits;

/// Bucket of the embedded S3 server.
const BUCKET: &str = "gitdeploy";
const REGION: &str = "us-east-1";

/// Options of `gitdeploy up`.
#[derive(clap::Args, Debug)]
pub struct UpOptions {
    /// Public address (sites and API).
    #[arg(long, default_value = "127.0.0.1:8080", env = "GITDEPLOY_LISTEN")]
    pub(crate) listen: SocketAddr,
    /// Where deployments, logs and the embedded S3 data are kept.
    #[arg(long, default_value = ".gitdeploy", env = "GITDEPLOY_DATA_DIR")]
    pub(crate) data_dir: PathBuf,
    /// Sites are served at <name>.<domain>.
    #[arg(long, default_value = "localhost", env = "GITDEPLOY_DOMAIN")]
    pub(crate) domain: String,
    /// Builds that run at once; more wait in a queue.
    #[arg(long, default_value_t = 2)]
    pub(crate) concurrency: usize,
    /// Wall-clock limit of one build, in seconds.
    #[arg(long, default_value_t = 900)]
    pub(crate) build_timeout: u64,
    /// Processes one build may run at once.
    #[arg(long, default_value_t = 512)]
    pub(crate) build_max_processes: u64,
    /// Bytes a build may publish.
    #[arg(long, default_value_t = 1 << 30)]
    pub(crate) build_max_output_bytes: u64,
    /// Bytes a build may write to disk (checkout, home, package cache, `/tmp`); the build fails
    /// when it goes over.
    #[arg(long, default_value_t = 8 << 30)]
    pub(crate) build_max_disk_bytes: u64,
    /// Token the API requires (`Authorization: Bearer <token>`); without one the API is open.
    #[arg(long, env = "GITDEPLOY_API_TOKEN", hide_env_values = true)]
    pub(crate) api_token: Option<String>,
    /// Allow an open API on an address other than loopback.
    #[arg(long)]
    pub(crate) insecure_open_api: bool,
    /// Builds that may wait for a runner slot; more are refused with 429.
    #[arg(long, default_value_t = 100)]
    pub(crate) max_queued: usize,
    /// Largest object kept in the in-memory object cache (0 turns the cache off).
    #[arg(long, default_value_t = 1 << 20)]
    pub(crate) object_cache_max_object_bytes: u64,
    /// Bytes the object cache holds in all.
    #[arg(long, default_value_t = 256 << 20)]
    pub(crate) object_cache_bytes: u64,
    /// Prometheus metrics listener (`/metrics`).
    #[arg(
        long,
        default_value = "127.0.0.1:9464",
        env = "GITDEPLOY_METRICS_LISTEN"
    )]
    pub(crate) metrics_listen: SocketAddr,
    /// Connections the public port holds at once; more are answered 503 and closed.
    #[arg(long, default_value_t = 10_000)]
    pub(crate) max_connections: usize,
    /// How long a client connection may wait silently for its next request, in ms.
    #[arg(long, default_value_t = 60_000)]
    pub(crate) client_idle_timeout_ms: u64,
    /// How long a client may take to send one whole request head, in ms (408 beyond).
    #[arg(long, default_value_t = 10_000)]
    pub(crate) client_header_timeout_ms: u64,
    /// Largest request head a client may send, in bytes (431 beyond).
    #[arg(long, default_value_t = 64 * 1024)]
    pub(crate) max_header_bytes: usize,
    /// Worker threads of each service.
    #[arg(long, default_value_t = 2)]
    pub(crate) threads: usize,
    /// Take over the listening sockets of the server running on this data directory (Pingora's
    /// graceful upgrade): start this one with `--upgrade`, then send the old one SIGQUIT; it
    /// hands its sockets over, finishes its requests and exits, and no connection is refused.
    #[arg(long)]
    pub(crate) upgrade: bool,
    /// Once serving (the public port answers the API's health check), write the server's
    /// addresses here as JSON: `{"pid", "listen", "metrics_listen", "api", "s3_endpoint"}`.
    /// Removed when the server stops.
    #[arg(long)]
    pub(crate) ready_file: Option<PathBuf>,
    /// Keep state and logs in Redis (`redis://[:password@]host:port[/db]`) instead of the data
    /// directory, so several edges can share them.
    #[arg(long, env = "GITDEPLOY_REDIS_URL", hide_env_values = true)]
    pub(crate) redis_url: Option<String>,
    /// Prefix of every Redis key.
    #[arg(long, default_value = "gitdeploy:")]
    pub(crate) redis_prefix: String,
    /// How long a finished build log stays in Redis, in seconds (the S3 archive keeps it).
    #[arg(long, default_value_t = 7 * 24 * 3600)]
    pub(crate) log_ttl: u64,
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
    pub(crate) alias_cache_ttl_ms: u64,
    /// API requests that cost (deploys and other changes, log streams) one client may make at
    /// once.
    #[arg(long, default_value_t = 60)]
    pub(crate) api_rate_burst: u32,
    /// Such requests per second a client earns back (0 turns the limit off).
    #[arg(long, default_value_t = 2.0)]
    pub(crate) api_rate_per_second: f64,
    /// How often the runner sends its heartbeat and settles builds of stopped runners, in ms.
    #[arg(long, default_value_t = 5000, hide = true)]
    pub(crate) heartbeat_interval_ms: u64,
    /// What `gitdeploy serve` sets from its configuration file.
    #[arg(skip)]
    pub(crate) serve: Option<ServeSettings>,
}

/// Production settings `gitdeploy serve` adds to the options `up` has: one code path.
#[derive(Clone, Debug)]
pub(crate) struct ServeSettings {
    /// Scheme of the URLs handed out (`https` behind a TLS load balancer).
    pub public_scheme: String,
    /// Port of the URLs handed out, when not the scheme's default.
    pub public_port: Option<u16>,
    /// Repository transports users may deploy from.
    pub repo_schemes: Vec<RepoScheme>,
    /// Key prefix in the bucket.
    pub s3_prefix: String,
    /// Sign S3 requests with credentials from the AWS chain (task role...), not a static key.
    pub s3_aws_credentials: bool,
    /// Build on ECS instead of locally.
    pub ecs: Option<gitdeploy_api::EcsRunnerConfig>,
}

/// Options of `gitdeploy s3-server`.
#[derive(clap::Args, Debug)]
pub struct S3ServerOptions {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9000")]
    listen: SocketAddr,
    /// Where objects are kept.
    #[arg(long)]
    data_dir: PathBuf,
    /// Bucket to create.
    #[arg(long, default_value = BUCKET)]
    bucket: String,
}

/// `gitdeploy s3-server`: only the embedded S3-compatible server (SigV4 with the key in
/// AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY), for several `up --s3-endpoint` processes sharing
/// one store. Runs until SIGINT/SIGTERM.
pub fn run_s3_server(opts: S3ServerOptions) -> anyhow::Result<()> {
    use pingora_core::services::background::BackgroundService;
    let (access_key, secret_key) = s3_credentials()?;
    let (s3, addr) = EmbeddedS3::bind(
        opts.listen,
        &opts.data_dir,
        &opts.bucket,
        &access_key,
        &secret_key,
    )?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let (tx, rx) = tokio::sync::watch::channel(false);
        println!("S3 server on http://{addr} (bucket {})", opts.bucket);
        tokio::spawn(async move {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            let _ = tx.send(true);
        });
        s3.start(rx).await;
    });
    Ok(())
}

fn s3_credentials() -> anyhow::Result<(String, String)> {
    let var = |name: &str| {
        std::env::var(name)
            .ok()
            .filter(|v| !v.is_empty())
            .with_context(|| format!("{name} must be set to the S3 key"))
    };
    Ok((var("AWS_ACCESS_KEY_ID")?, var("AWS_SECRET_ACCESS_KEY")?))
}

fn random_secret(len: usize) -> String {
    Alphanumeric.sample_string(&mut rand::rng(), len)
}

/// Runs until SIGINT/SIGTERM.
pub fn run(opts: UpOptions) -> anyhow::Result<()> {
    let domain = opts.domain.trim_end_matches('.').to_ascii_lowercase();
    anyhow::ensure!(
        gitdeploy_core::host::normalize_host(&domain).as_deref() == Some(domain.as_str()),
        "--domain {domain:?} is not a valid host name"
    );
    if opts.api_token.is_none() && !opts.listen.ip().is_loopback() && !opts.insecure_open_api {
        anyhow::bail!(
            "refusing to serve an open API on {}: pass --api-token (or GITDEPLOY_API_TOKEN), \
             or --insecure-open-api if you really mean it",
            opts.listen
        );
    }
    if let Some(token) = &opts.api_token {
        anyhow::ensure!(
            token.len() >= 16,
            "--api-token must be at least 16 characters"
        );
    }
    if !opts.upgrade {
        // Pingora would retry a taken address forever; say so at once instead (an upgrade takes
        // over addresses that are taken on purpose).
        for (flag, addr) in [
            ("--listen", opts.listen),
            ("--metrics-listen", opts.metrics_listen),
        ] {
            std::net::TcpListener::bind(addr).map_err(|e| {
                anyhow::anyhow!(
                    "cannot listen on {addr} ({flag}): {e}; is another gitdeploy running there? \
                     Pass {flag} with a free address"
                )
            })?;
        }
    }
    std::fs::create_dir_all(&opts.data_dir)
        .with_context(|| format!("cannot create data directory {}", opts.data_dir.display()))?;
    let data = opts.data_dir.canonicalize()?;
    // Builds run as another user: they may pass through the data directory to their own work
    // and cache directories (0711) but read nothing else (0700).
    let private = |path: &Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("cannot set permissions of {}", path.display()))
    };
    private(&data, 0o711)?;
    let dir = |name: &str| -> anyhow::Result<PathBuf> {
        let d = data.join(name);
        std::fs::create_dir_all(&d).with_context(|| format!("cannot create {}", d.display()))?;
        let top = data.join(name.split('/').next().unwrap_or(name));
        private(
            &top,
            if matches!(name, "work" | "cache") {
                0o711
            } else {
                0o700
            },
        )?;
        Ok(d)
    };

    // Embedded S3 with a key that lives as long as this process, or an external one.
    let aws_credentials = opts.serve.as_ref().is_some_and(|s| s.s3_aws_credentials);
    let external_s3 = opts.s3_endpoint.is_some() || opts.serve.is_some();
    let (s3, s3_endpoint, bucket, region, access_key, secret_key) = match &opts.s3_endpoint {
        None if !external_s3 => {
            let (access_key, secret_key) = (random_secret(20), random_secret(40));
            let (s3, s3_addr) = EmbeddedS3::bind(
                ([127, 0, 0, 1], 0).into(),
                &dir("s3")?,
                BUCKET,
                &access_key,
                &secret_key,
            )?;
            let endpoint = format!("http://{s3_addr}");
            (
                Some(s3),
                endpoint,
                BUCKET.to_owned(),
                REGION.to_owned(),
                access_key,
                secret_key,
            )
        }
        endpoint => {
            let (access_key, secret_key) = if aws_credentials {
                (String::new(), String::new())
            } else {
                s3_credentials()?
            };
            (
                None,
                endpoint.clone().unwrap_or_default(),
                opts.s3_bucket.clone(),
                opts.s3_region.clone(),
                access_key,
                secret_key,
            )
        }
    };
    let s3_prefix = opts
        .serve
        .as_ref()
        .map(|s| s.s3_prefix.clone())
        .unwrap_or_default();
    let origin = Arc::new(
        S3Origin::new(&OriginSettings {
            endpoint: Some(s3_endpoint.clone()).filter(|e| !e.is_empty()),
            bucket: bucket.clone(),
            region: region.clone(),
            prefix: s3_prefix.clone(),
            access_key: access_key.clone(),
            secret_key: secret_key.clone(),
        })
        .map_err(anyhow::Error::msg)?,
    );

    let limits = BuildLimits {
        timeout_secs: opts.build_timeout,
        max_processes: opts.build_max_processes,
        max_output_bytes: opts.build_max_output_bytes,
        max_disk_bytes: opts.build_max_disk_bytes,
        max_key_bytes: match &s3 {
            Some(_) => EmbeddedS3::max_key_bytes(&bucket),
            None => BuildLimits::default().max_key_bytes,
        },
        ..BuildLimits::default()
    };
    let registry = Arc::new(prometheus::Registry::new());
    let api_metrics = ApiMetrics::new(&registry)?;
    let edge_metrics = EdgeMetrics::new(&registry)?;

    // Control plane: store, log bus, local runner. Redis connections are driven by a runtime of
    // their own that lives as long as the server.
    let control_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("gitdeploy-control")
        .enable_all()
        .build()?;
    if aws_credentials {
        control_rt
            .block_on(origin.use_aws_credentials(&region, control_rt.handle()))
            .map_err(anyhow::Error::msg)?;
    }
    let mut task_access: Option<Arc<dyn gitdeploy_api::TaskAccess>> = None;
    let (store, bus): (Arc<dyn Store>, Arc<dyn LogBus>) = match &opts.redis_url {
        Some(url) => control_rt.block_on(async {
            let shown = redact_repo_url(url);
            let store = RedisStore::connect(url, &opts.redis_prefix)
                .await
                .with_context(|| format!("cannot connect to Redis at {shown}"))?;
            let settings = RedisLogSettings {
                prefix: opts.redis_prefix.clone(),
                ttl: std::time::Duration::from_secs(opts.log_ttl),
                max_len: 200_000,
            };
            let bus = RedisLogBus::connect(url, settings, api_metrics.clone())
                .await
                .with_context(|| format!("cannot connect to Redis at {shown}"))?;
            let store = Arc::new(store);
            task_access = Some(store.clone());
            anyhow::Ok((store as Arc<dyn Store>, Arc::new(bus) as Arc<dyn LogBus>))
        })?,
        None => (
            Arc::new(FileStore::open(&dir("state")?)?),
            Arc::new(FileLogBus::open(&dir("logs")?, api_metrics.clone())?),
        ),
    };
    let records = Records::new(store);
    let exe = std::env::current_exe().context("cannot find the gitdeploy executable")?;
    let mut builder_env: Vec<(String, String)> = vec![
        (env::S3_BUCKET.into(), bucket.clone()),
        (env::S3_REGION.into(), region.clone()),
        (env::S3_PREFIX.into(), s3_prefix.clone()),
    ];
    if !s3_endpoint.is_empty() {
        builder_env.push((env::S3_ENDPOINT.into(), s3_endpoint.clone()));
    }
    if aws_credentials {
        // The builder finds the same credentials the edge uses (task role, profile...).
        for k in crate::build_task::AWS_CREDENTIAL_SOURCES {
            if let Ok(v) = std::env::var(k) {
                builder_env.push((k.to_string(), v));
            }
        }
    } else {
        builder_env.push(("AWS_ACCESS_KEY_ID".into(), access_key));
        builder_env.push(("AWS_SECRET_ACCESS_KEY".into(), secret_key));
    }
    let heartbeat = std::time::Duration::from_millis(opts.heartbeat_interval_ms.max(10));
    let ecs = opts.serve.as_ref().and_then(|s| s.ecs.clone());
    let (runner, queue) = match ecs {
        Some(mut ecs) => {
            ecs.limits = limits.clone();
            ecs.max_queued = opts.max_queued;
            ecs.heartbeat = heartbeat;
            ecs.env.extend(
                builder_env
                    .iter()
                    .filter(|(k, _)| !k.starts_with("AWS_"))
                    .cloned(),
            );
            let aws = control_rt.block_on(
                aws_config::defaults(aws_config::BehaviorVersion::latest())
                    .region(aws_config::Region::new(region.clone()))
                    .load(),
            );
            let upload_role =
                ecs.upload_role_arn
                    .clone()
                    .map(|role_arn| gitdeploy_api::ecs::UploadRole {
                        sts: aws_sdk_sts::Client::new(&aws),
                        role_arn,
                        bucket: opts.s3_bucket.clone(),
                        layout: gitdeploy_core::ObjectLayout::new(&s3_prefix),
                    });
            let (runner, queue) = gitdeploy_api::EcsRunner::new(
                ecs,
                aws_sdk_ecs::Client::new(&aws),
                records.clone(),
                bus.clone(),
                task_access.clone(),
                api_metrics.clone(),
            );
            let mut runner = runner.with_log_archive(origin.clone());
            if let Some(role) = upload_role {
                runner = runner.with_upload_role(role);
            }
            (crate::runner_service::Runner::Ecs(Box::new(runner)), queue)
        }
        None => {
            let (runner, queue) = LocalRunner::new(
                LocalRunnerConfig {
                    command: vec![exe.into_os_string(), "builder".into()],
                    env: builder_env,
                    work_root: dir("work")?,
                    cache_dir: dir("cache")?,
                    concurrency: opts.concurrency,
                    limits: limits.clone(),
                    archive: Some(origin.clone()),
                    max_queued: opts.max_queued,
                    after_kill: Some(Arc::new(|id| {
                        Box::pin(async move {
                            gitdeploy_builder::clean_up_after_kill(id.as_str()).await
                        })
                    })),
                    heartbeat,
                },
                records.clone(),
                bus.clone(),
                api_metrics,
            );
            (
                crate::runner_service::Runner::Local(Box::new(runner)),
                queue,
            )
        }
    };
    let port = opts.listen.port();
    let public = match &opts.serve {
        Some(serve) => PublicUrls {
            scheme: serve.public_scheme.clone(),
            domain: domain.clone(),
            port: serve.public_port,
        },
        None => PublicUrls {
            scheme: "http".into(),
            domain: domain.clone(),
            port: (port != 80).then_some(port),
        },
    };
    let control_plane = ControlPlane::new(
        ApiConfig {
            public: public.clone(),
            allowed_repo_schemes: match &opts.serve {
                Some(serve) => serve.repo_schemes.clone(),
                None => vec![
                    RepoScheme::Https,
                    RepoScheme::Http,
                    RepoScheme::Git,
                    RepoScheme::Local,
                ],
            },
            limits,
            token_sha256: opts.api_token.as_deref().map(token_sha256),
            rate_limit: (opts.api_rate_per_second > 0.0).then_some(
                gitdeploy_api::ratelimit::RateLimit {
                    burst: opts.api_rate_burst,
                    per_second: opts.api_rate_per_second,
                },
            ),
        },
        records.clone(),
        bus,
        queue,
        Some(origin.clone() as Arc<dyn gitdeploy_api::LogArchive>),
    )
    .with_site_storage(origin.clone());
    let aliases = AliasCache::new(
        records.clone(),
        std::time::Duration::from_millis(opts.alias_cache_ttl_ms.max(1)),
        edge_metrics.clone(),
    );

    // One Pingora server for all of it.
    let run_dir = dir("run")?;
    let api_socket = api_socket_path(&run_dir)?;
    let conf = ServerConf {
        threads: opts.threads.max(1),
        grace_period_seconds: Some(1),
        graceful_shutdown_timeout_seconds: Some(5),
        pid_file: run_dir.join("gitdeploy.pid").display().to_string(),
        upgrade_sock: run_dir.join("upgrade.sock").display().to_string(),
        ..ServerConf::default()
    };
    let opt = pingora_core::server::configuration::Opt {
        upgrade: opts.upgrade,
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(Some(opt), conf);
    server.bootstrap();

    let mut control_hosts = vec![];
    if !opts.listen.ip().is_unspecified() {
        control_hosts.push(match opts.listen {
            SocketAddr::V4(a) => a.ip().to_string(),
            SocketAddr::V6(a) => format!("[{}]", a.ip()),
        });
    }
    let hosts = HostRules {
        domain: domain.clone(),
        control_hosts,
    };
    let api_router = only_control_plane_hosts(control_plane.router(), hosts.clone());
    let mut api = Service::new("control plane".into(), ApiApp::new(api_router.clone()));
    api.add_uds(
        &api_socket.display().to_string(),
        Some(std::fs::Permissions::from_mode(0o600)),
    );
    let control_peer = HttpPeer::new_uds(&api_socket.display().to_string(), false, String::new())
        .map_err(|e| anyhow::anyhow!("control plane socket: {e}"))?;

    let manifests = Arc::new(ManifestCache::new(
        origin.clone(),
        64 << 20,
        edge_metrics.clone(),
    ));
    // A deleted deployment leaves every edge's manifest cache (its objects then age out: nothing
    // reaches them without a manifest).
    {
        use gitdeploy_api::store::AliasChange;
        use tokio::sync::broadcast::error::RecvError;
        let mut changes = records.store().alias_changes();
        let manifests = Arc::downgrade(&manifests);
        control_rt.spawn(async move {
            loop {
                let change = changes.recv().await;
                let Some(manifests) = manifests.upgrade() else {
                    return;
                };
                match change {
                    Ok(AliasChange::Deleted(id)) => manifests.invalidate(&id).await,
                    Ok(AliasChange::MaybeMissed) => manifests.invalidate_all(),
                    Ok(AliasChange::Production(_)) => {}
                    Err(RecvError::Lagged(_)) => manifests.invalidate_all(),
                    Err(RecvError::Closed) => return,
                }
            }
        });
    }
    let objects = Arc::new(ObjectCache::new(
        opts.object_cache_max_object_bytes,
        opts.object_cache_bytes,
        edge_metrics.object_cache_evictions.clone(),
    ));
    let proxy = SitesProxy::new(
        hosts.clone(),
        origin,
        manifests,
        objects,
        control_peer,
        edge_metrics,
        aliases,
    );
    let draining = Draining::default();
    let mut proxy = HttpProxy::new(
        proxy.with_draining(draining.clone()),
        server.configuration.clone(),
    );
    proxy.handle_init_modules();
    let limits = ConnectionLimits {
        head: HeadLimits {
            idle: std::time::Duration::from_millis(opts.client_idle_timeout_ms.max(1)),
            head: std::time::Duration::from_millis(opts.client_header_timeout_ms.max(1)),
            max_bytes: opts.max_header_bytes.max(1024),
        },
        max_connections: opts.max_connections.max(1),
    };
    raise_open_file_limit(limits.max_connections);
    let mut sites = Service::new("public".into(), PublicApp::new(proxy, limits, draining));
    sites.add_tcp(&opts.listen.to_string());

    let s3 = s3.map(|s3| {
        let mut s3 = background_service("embedded S3", s3);
        s3.threads = Some(opts.threads.max(1));
        server.add_service(s3)
    });
    let runner = server.add_service(background_service(
        "local runner",
        RunnerService::new(runner),
    ));
    // The runner settles earlier builds at once (archiving their logs): the store must run.
    if let Some(s3) = &s3 {
        runner.add_dependencies([s3]);
    }
    let mut metrics = Service::new("metrics".into(), metrics_server(registry));
    metrics.add_tcp(&opts.metrics_listen.to_string());
    server.add_service(metrics);
    let api = server.add_service(api);
    // The public port opens last, once everything behind it runs.
    let sites = server.add_service(sites);
    sites.add_dependencies([&api, &runner]);
    if let Some(s3) = &s3 {
        sites.add_dependencies([s3]);
    }
    if let Some(path) = &opts.ready_file {
        let ready = server.add_service(background_service(
            "ready file",
            crate::ready::ReadyFile {
                path: path.clone(),
                ready: crate::ready::Ready {
                    pid: std::process::id(),
                    listen: opts.listen,
                    metrics_listen: opts.metrics_listen,
                    api: public.api(""),
                    s3_endpoint: s3_endpoint.clone(),
                },
                control_host: domain.clone(),
            },
        ));
        ready.add_dependencies([&sites]);
    }

    match (&opts.redis_url, &opts.s3_endpoint) {
        (None, None) => println!("GitDeploy is running (embedded mode: no cloud, no Redis)."),
        _ => println!("GitDeploy is running."),
    }
    if opts.api_token.is_none() {
        println!(
            "  WARNING: the API is OPEN: anyone who can reach {} can deploy and read logs.",
            opts.listen
        );
        println!("           Pass --api-token (or GITDEPLOY_API_TOKEN) to require a token.");
    }
    println!("  API and dashboard   {}", public.api("/"));
    println!("  sites               {}", public.site("<deployment-id>"));
    println!("  data directory      {}", data.display());
    println!(
        "  metrics             http://{}/metrics",
        opts.metrics_listen
    );
    match &opts.redis_url {
        Some(url) => println!("  state and logs      Redis at {}", redact_repo_url(url)),
        None => println!("  state and logs      {}", data.display()),
    }
    if s3.is_some() {
        println!("  embedded S3         {s3_endpoint} (loopback, SigV4)");
    } else {
        println!("  S3                  {s3_endpoint} bucket {bucket}");
    }
    println!("Deploy a repository:");
    println!(
        "  curl -X POST {} -H 'content-type: application/json' -d '{{\"repo\":\"https://github.com/owner/site\"}}'",
        public.api("/api/deployments")
    );
    println!(
        "  gitdeploy deploy https://github.com/owner/site --api {} --follow",
        public.api("")
    );
    server.run(RunArgs::default());
    control_rt.shutdown_background();
    Ok(())
}

/// The API's socket; Unix socket paths are limited to about 100 bytes, so a deep data
/// directory falls back to the temporary directory.
fn api_socket_path(run_dir: &Path) -> anyhow::Result<PathBuf> {
    let preferred = run_dir.join("api.sock");
    if preferred.as_os_str().len() < 100 {
        return Ok(preferred);
    }
    let dir = std::env::temp_dir().join(format!(
        "gitdeploy-{}",
        random_secret(10).to_ascii_lowercase()
    ));
    std::fs::create_dir_all(&dir)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    Ok(dir.join("api.sock"))
}

/// Raises this process's open-file limit to its hard limit: each client connection holds one
/// descriptor (upstream connections are pooled), and the soft limit (often 1024) would refuse
/// accepts long before the connection limit. Says so when the hard limit is below what the limit needs.
fn raise_open_file_limit(max_connections: usize) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_err() {
        tracing::warn!("cannot raise the open-file limit from {soft} to {hard}");
    }
    let needed = (max_connections as u64).saturating_add(1024);
    if hard < needed {
        tracing::warn!(
            "the open-file limit ({hard}) is below what {max_connections} connections need \
             ({needed}); lower --max-connections or raise the limit"
        );
    }
}
