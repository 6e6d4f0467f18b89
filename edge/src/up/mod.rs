//! `gitdeploy up`: the embedded default. One process, no cloud, no Redis: the sites proxy and
//! the API on one public port, S3 (s3s-fs) on loopback, state and logs on disk, builds as
//! sandboxed child processes. `--redis-url` keeps state and logs in Redis instead, and
//! `--s3-endpoint` uses an external S3, so several `up` processes can share one platform the way
//! production edges do.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use gitdeploy_api::{ApiMetrics, PublicUrls, Records};
use gitdeploy_core::repo::redact_repo_url;
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::{RunArgs, Server};
use pingora_core::services::background::background_service;
use pingora_core::services::listening::Service;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_proxy::HttpProxy;

use crate::cache::{AliasCache, ManifestCache, ObjectCache};
use crate::config::{Platform, StateBackend};
use crate::control::HostRules;
use crate::control::{only_control_plane_hosts, ApiApp};
use crate::draining::Draining;
use crate::embedded_s3::EmbeddedS3;
use crate::metrics::{metrics_server, EdgeMetrics};
use crate::origin::S3Origin;
use crate::platform::{
    build_limits, control_plane, random_secret, s3_credentials, DataDir, RunnerParts, State,
    Storage, BUCKET,
};
use crate::public::PublicApp;
use crate::runner_service::RunnerService;
use crate::sites::SitesProxy;

mod options;
pub use options::UpOptions;

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

/// Runs until SIGINT/SIGTERM.
pub fn run(platform: Platform) -> anyhow::Result<()> {
    let opts = &platform;
    check(opts)?;
    let domain = opts.domain.clone();
    let data = DataDir::prepare(&opts.data_dir)?;
    let mut storage = Storage::choose(opts, &data)?;
    let origin = storage.origin()?;
    let limits = build_limits(opts, &storage);
    let registry = Arc::new(prometheus::Registry::new());
    let api_metrics = ApiMetrics::new(&registry)?;
    let edge_metrics = EdgeMetrics::new(&registry)?;
    registry.register(Box::new(
        prometheus::process_collector::ProcessCollector::for_self(),
    ))?;
    // Redis connections and the control plane's own tasks are driven by a runtime of their own
    // that lives as long as the server.
    let control_rt = control_runtime()?;
    if storage.aws_credentials {
        control_rt
            .block_on(origin.use_aws_credentials(&storage.region, control_rt.handle()))
            .map_err(anyhow::Error::msg)?;
    }
    let mut state = State::open(opts, &control_rt, &data, &api_metrics)?;
    state.start_observers(opts, &control_rt, &api_metrics, &origin)?;
    let (runner, queue) = RunnerParts {
        platform: opts,
        rt: &control_rt,
        data: &data,
        storage: &storage,
        state: &state,
        origin: &origin,
        limits: &limits,
        metrics: &api_metrics,
    }
    .build()?;
    let public = opts.public_urls();
    let api = control_plane(opts, limits, &state, queue, &origin);
    start_domain_checks(opts, &control_rt, &state, &api, &api_metrics)?;
    let access_log = opts
        .access_log
        .as_ref()
        .map(|settings| crate::access_log::start(settings, &origin, &control_rt, &registry))
        .transpose()?;
    let traffic = Arc::new(crate::traffic::TrafficRecorder::default());
    traffic.start(state.traffic.clone(), &control_rt, opts.traffic_flush);
    crate::origin::collect_periodically(&origin, &control_rt, opts.gc);
    let domain_certs = crate::domain_certs::DomainCertificates::new(
        opts.acme.is_none() && opts.tls.as_ref().is_some_and(|t| t.platform.is_none()),
        opts.acme
            .as_ref()
            .map_or(gitdeploy_api::acme::RENEW_BEFORE, |a| a.renew_before),
        &registry,
    )?;
    domain_certs.watch(
        &control_rt,
        state.records.clone(),
        opts.acme.as_ref().map(|_| state.certs.clone()),
    );

    // One Pingora server for all of it.
    let run_dir = data.dir("run")?;
    let mut server = pingora_server(opts, &run_dir);
    let hosts = host_rules(opts);
    let api_socket = api_socket_path(&run_dir)?;
    let router = only_control_plane_hosts(api.router(), hosts.clone());
    let mut api = Service::new("control plane".into(), ApiApp::new(router));
    api.add_uds(
        &api_socket.display().to_string(),
        Some(std::fs::Permissions::from_mode(0o600)),
    );
    let edge = EdgeParts {
        platform: opts,
        rt: &control_rt,
        hosts,
        origin,
        records: &state.records,
        metrics: edge_metrics,
        registry: &registry,
        api_socket: &api_socket,
        certs: &state.certs,
        domain_certs,
        access_log: access_log.as_ref().map(|(log, _)| log.clone()),
        traffic: traffic.clone(),
    };
    let sites = edge.public_port(&server)?;
    // The store runs before the server starts (the runner settles earlier builds at once,
    // archiving their logs) and stops after it (see `RunningS3`).
    let embedded = storage.embedded.is_some();
    let s3 = storage
        .embedded
        .take()
        .map(|s3| s3.spawn(opts.threads))
        .transpose()?;
    let runner = server.add_service(background_service(
        "local runner",
        RunnerService::new(runner),
    ));
    let mut metrics = Service::new("metrics".into(), metrics_server(registry));
    metrics.add_tcp(&opts.metrics_listen.to_string());
    server.add_service(metrics);
    let api = server.add_service(api);
    // The public port opens last, once everything behind it runs; then the ready file.
    let sites = server.add_service(sites);
    sites.add_dependencies([&api, &runner]);
    if let Some(ready) = ready_file(opts, &public, &storage, &domain) {
        server
            .add_service(background_service("ready file", ready))
            .add_dependencies([&sites]);
    }
    banner(opts, &public, &data, &storage, embedded);
    server.run(RunArgs::default());
    // The public port no longer answers: the last traffic counts and access-log records go out,
    // then the store stops.
    control_rt.block_on(traffic.flush(state.traffic.as_ref()));
    if let Some((_, running)) = access_log {
        running.finish(&control_rt);
    }
    if let Some(s3) = s3 {
        s3.stop();
    }
    control_rt.shutdown_background();
    Ok(())
}

fn control_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("gitdeploy-control")
        .enable_all()
        .build()
}

/// The ready file `--ready-file` asks for.
fn ready_file(
    opts: &Platform,
    public: &PublicUrls,
    storage: &Storage,
    domain: &str,
) -> Option<crate::ready::ReadyFile> {
    Some(crate::ready::ReadyFile {
        path: opts.ready_file.clone()?,
        ready: crate::ready::Ready {
            pid: std::process::id(),
            listen: opts.listen,
            metrics_listen: opts.metrics_listen,
            tls_listen: opts.tls.as_ref().map(|t| t.listen),
            api: public.api(""),
            s3_endpoint: storage.endpoint.clone(),
        },
        control_host: domain.to_owned(),
    })
}

/// Checks what no type can: the domain, an open API off loopback, the token's length, the
/// allowed networks, and (unless upgrading) that the listen addresses are free.
fn check(opts: &Platform) -> anyhow::Result<()> {
    let domain = &opts.domain;
    anyhow::ensure!(
        gitdeploy_core::host::normalize_host(domain).as_deref() == Some(domain.as_str()),
        "--domain {domain:?} is not a valid host name"
    );
    if opts.api.token.is_none() && !opts.listen.ip().is_loopback() && !opts.api.insecure_open {
        anyhow::bail!(
            "refusing to serve an open API on {}: pass --api-token (or GITDEPLOY_API_TOKEN), \
             or --insecure-open-api if you really mean it",
            opts.listen
        );
    }
    if let Some(token) = &opts.api.token {
        anyhow::ensure!(
            token.len() >= 16,
            "--api-token must be at least 16 characters"
        );
    }
    if let Some(acme) = &opts.acme {
        anyhow::ensure!(
            opts.tls.is_some(),
            "an ACME directory needs a TLS listener to present its certificates: add --tls-listen \
             (or [tls] in the configuration)"
        );
        let url = acme.directory.as_str();
        anyhow::ensure!(
            url.starts_with("https://") || url.starts_with("http://"),
            "the ACME directory {url:?} is not an http(s) URL"
        );
        if let Some(ca) = &acme.ca_file {
            anyhow::ensure!(
                ca.is_file(),
                "the ACME CA file {} cannot be read",
                ca.display()
            );
        }
    }
    for cidr in &opts.builds.limits.allowed_networks {
        gitdeploy_core::egress::parse_allowed_network(cidr)
            .map_err(|e| anyhow::anyhow!("--build-allow-network: {e}"))?;
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
    Ok(())
}

/// The Pingora server: grace periods, pid file and upgrade socket in `run_dir`.
fn pingora_server(opts: &Platform, run_dir: &Path) -> Server {
    let conf = ServerConf {
        threads: opts.threads,
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
    server
}

/// Which hosts are the control plane: the domain's apex and `api.`, and the address listened
/// on when it is a specific one.
fn host_rules(opts: &Platform) -> HostRules {
    let mut control_hosts = vec![];
    if !opts.listen.ip().is_unspecified() {
        control_hosts.push(match opts.listen {
            SocketAddr::V4(a) => a.ip().to_string(),
            SocketAddr::V6(a) => format!("[{}]", a.ip()),
        });
    }
    HostRules {
        domain: opts.domain.clone(),
        control_hosts,
    }
}

/// The public HTTPS port plain-HTTP site requests are redirected to, with a TLS listener:
/// behind a load balancer it may differ from the listener's.
fn public_https_port(opts: &Platform) -> Option<u16> {
    opts.tls.as_ref().map(|tls| match &opts.public {
        Some(p) if p.scheme == "https" => p.port.unwrap_or(443),
        _ => tls.listen.port(),
    })
}

/// What the public port is built from.
struct EdgeParts<'a> {
    platform: &'a Platform,
    rt: &'a tokio::runtime::Runtime,
    hosts: HostRules,
    origin: Arc<S3Origin>,
    records: &'a Records,
    metrics: EdgeMetrics,
    registry: &'a prometheus::Registry,
    api_socket: &'a Path,
    certs: &'a Arc<dyn gitdeploy_api::cert_store::CertStore>,
    domain_certs: Arc<crate::domain_certs::DomainCertificates>,
    access_log: Option<Arc<crate::access_log::AccessLog>>,
    traffic: Arc<crate::traffic::TrafficRecorder>,
}

impl EdgeParts<'_> {
    /// The public port: caches, the sites proxy and its connection limits.
    fn public_port(self, server: &Server) -> anyhow::Result<Service<PublicApp>> {
        let opts = self.platform;
        let control_peer =
            HttpPeer::new_uds(&self.api_socket.display().to_string(), false, String::new())
                .map_err(|e| anyhow::anyhow!("control plane socket: {e}"))?;
        let manifests = Arc::new(ManifestCache::new(
            self.origin.clone(),
            64 << 20,
            self.metrics.clone(),
        ));
        drop_deleted_manifests(self.rt, self.records, &manifests);
        let objects = Arc::new(ObjectCache::new(
            opts.cache.object_max_bytes,
            opts.cache.object_total_bytes,
            self.metrics.object_cache_evictions.clone(),
        ));
        let (m, o) = (manifests.clone(), objects.clone());
        crate::metrics::register_sampled(
            self.registry,
            "gitdeploy_manifest_cache_bytes",
            "Bytes held by the manifest cache (estimated from the file lists).",
            move || m.weighted_size(),
        )?;
        crate::metrics::register_sampled(
            self.registry,
            "gitdeploy_object_cache_bytes",
            "Bytes held by the object cache.",
            move || o.weighted_size(),
        )?;
        let aliases = AliasCache::new(
            self.records.clone(),
            opts.cache.alias_ttl,
            self.metrics.clone(),
        );
        let draining = Draining::default();
        let tls_handshakes = self.metrics.tls_handshakes.clone();
        let certificates = match &opts.tls {
            Some(tls) => Some(certificates(
                opts,
                tls,
                &self.metrics,
                self.domain_certs.clone(),
            )?),
            None => None,
        };
        let proxy = SitesProxy::new(
            self.hosts,
            self.origin,
            manifests,
            objects,
            control_peer,
            self.metrics,
            aliases,
        )
        .with_draining(draining.clone())
        .with_trusted_proxies(opts.trusted_proxies.clone())
        .with_access_log(self.access_log)
        .with_traffic(self.traffic)
        .with_tls(crate::tls_routes::TlsRoutes {
            challenges: opts.acme.as_ref().map(|_| self.certs.clone()),
            certificates: certificates.clone(),
            https_port: public_https_port(opts),
        });
        let mut proxy = HttpProxy::new(proxy, server.configuration.clone());
        proxy.handle_init_modules();
        let limits = opts.clients;
        raise_open_file_limit(limits.max_connections);
        let app = PublicApp::new(proxy, limits, draining).with_tls_handshakes(&tls_handshakes);
        let mut sites = Service::new("public".into(), app);
        sites.add_tcp(&opts.listen.to_string());
        if let (Some(tls), Some(certs)) = (&opts.tls, certificates) {
            let mut settings = pingora_core::listeners::tls::TlsSettings::intermediate("", "")
                .map_err(|e| anyhow::anyhow!("TLS settings: {e}"))?;
            settings.set_cert_resolver(certs);
            settings.enable_h2();
            sites.add_tls_with_settings(&tls.listen.to_string(), None, settings);
        }
        Ok(sites)
    }
}

/// The TLS listener's certificates: the platform pair from its files (watched), or the local
/// CA; custom domains' from `custom`.
fn certificates(
    opts: &Platform,
    tls: &crate::config::TlsListener,
    metrics: &EdgeMetrics,
    custom: Arc<crate::domain_certs::DomainCertificates>,
) -> anyhow::Result<Arc<crate::tls::Certificates>> {
    let refused = metrics
        .tls_handshakes
        .with_label_values(&["no_certificate"]);
    Ok(match &tls.platform {
        Some(files) => {
            let certs = crate::tls::Certificates::new(&opts.domain, refused, custom);
            files
                .clone()
                .load_and_watch(certs.clone(), metrics.certificate_loads.clone())
                .map_err(anyhow::Error::msg)?;
            certs
        }
        None => {
            let ca = crate::local_ca::LocalCa::open(&opts.data_dir.join("tls"))
                .map_err(anyhow::Error::msg)?;
            tracing::info!(ca = %ca.ca_pem.display(), "TLS certificates from the local CA");
            crate::tls::Certificates::from_local_ca(&opts.domain, refused, custom, ca)
        }
    })
}

/// Checks custom domains' DNS on the control runtime, at once when one is added; with an ACME
/// directory, orders the certificates of verified domains too.
fn start_domain_checks(
    opts: &Platform,
    rt: &tokio::runtime::Runtime,
    state: &State,
    api: &gitdeploy_api::ControlPlane,
    metrics: &ApiMetrics,
) -> anyhow::Result<()> {
    let _entered = rt.enter();
    let mut checker = gitdeploy_api::domain_check::DomainChecker::new(
        opts.domains.dns_resolver,
        &opts.domain,
        opts.domains.public_addresses.clone(),
    )
    .map_err(anyhow::Error::msg)?;
    if let Some(acme) = &opts.acme {
        let verified = Arc::new(tokio::sync::Notify::new());
        checker = checker.ordering_certificates(verified.clone());
        let holder = format!(
            "{}-{}-{:08x}",
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .unwrap_or_default()
                .trim(),
            std::process::id(),
            rand::random::<u32>()
        );
        let orderer = gitdeploy_api::acme::Orderer::new(
            acme.clone(),
            state.records.clone(),
            state.certs.clone(),
            holder,
            metrics.clone(),
        );
        rt.spawn(orderer.run(verified));
    }
    rt.spawn(checker.run(
        state.records.clone(),
        api.domain_added(),
        opts.domains.check_every,
    ));
    Ok(())
}

/// A deleted deployment leaves this edge's manifest cache (its objects then age out: nothing
/// reaches them without a manifest); after a possible miss, every manifest does.
fn drop_deleted_manifests(
    rt: &tokio::runtime::Runtime,
    records: &Records,
    manifests: &Arc<ManifestCache>,
) {
    use gitdeploy_api::store::AliasChange;
    use tokio::sync::broadcast::error::RecvError;
    let mut changes = records.store().alias_changes();
    let manifests = Arc::downgrade(manifests);
    rt.spawn(async move {
        loop {
            let change = changes.recv().await;
            let Some(manifests) = manifests.upgrade() else {
                return;
            };
            match change {
                Ok(AliasChange::Deleted(id)) => manifests.invalidate(&id).await,
                Ok(AliasChange::MaybeMissed) | Err(RecvError::Lagged(_)) => {
                    manifests.invalidate_all()
                }
                Ok(AliasChange::Production(_) | AliasChange::Domain(_)) => {}
                Err(RecvError::Closed) => return,
            }
        }
    });
}

/// What a person starting the server reads (machines read the ready file).
fn banner(opts: &Platform, public: &PublicUrls, data: &DataDir, storage: &Storage, embedded: bool) {
    if opts.is_embedded() {
        println!("GitDeploy is running (embedded mode: no cloud, no Redis).");
    } else {
        println!("GitDeploy is running.");
    }
    if opts.api.token.is_none() {
        println!(
            "  WARNING: the API is OPEN: anyone who can reach {} can deploy and read logs.",
            opts.listen
        );
        println!("           Pass --api-token (or GITDEPLOY_API_TOKEN) to require a token.");
    }
    println!("  API and dashboard   {}", public.api("/"));
    if let Some(tls) = &opts.tls {
        let port = tls.listen.port();
        match &tls.platform {
            Some(_) => println!("  HTTPS, HTTP/2       https://{}:{port}/", opts.domain),
            None => println!(
                "  HTTPS, HTTP/2       https://{}:{port}/ (local CA: trust {})",
                opts.domain,
                data.path().join("tls").join("ca.pem").display()
            ),
        }
    }
    println!("  sites               {}", public.site("<deployment-id>"));
    println!("  data directory      {}", data.path().display());
    println!(
        "  metrics             http://{}/metrics",
        opts.metrics_listen
    );
    match &opts.state {
        StateBackend::Redis { url, .. } => {
            println!("  state and logs      Redis at {}", redact_repo_url(url))
        }
        StateBackend::Files => println!("  state and logs      {}", data.path().display()),
    }
    if embedded {
        println!(
            "  embedded S3         {} (loopback, SigV4)",
            storage.endpoint
        );
    } else {
        println!(
            "  S3                  {} bucket {}",
            storage.endpoint, storage.bucket
        );
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
