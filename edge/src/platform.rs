//! Platform assembly from a [`Platform`] configuration, one named step each: the data directory, the site
//! storage (embedded S3 or external), the state and log bus (files or Redis), the build runner
//! (local or ECS) and the control plane. `up::run` calls them in order; nothing here listens or
//! runs: Pingora's services do that.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use gitdeploy_api::{
    token_sha256, ApiConfig, ApiMetrics, ControlPlane, FileLogBus, FileStore, JobQueue,
    LocalRunner, LocalRunnerConfig, LogBus, Records, RedisLogBus, RedisLogSettings, RedisStore,
    Store, TaskAccess,
};
use gitdeploy_core::job::{env, BuildLimits};
use gitdeploy_core::repo::redact_repo_url;
use rand::distr::{Alphanumeric, SampleString};

use crate::config::{Platform, RunnerKind, S3Credentials, StateBackend, StorageSettings};
use crate::embedded_s3::EmbeddedS3;
use crate::origin::{OriginSettings, S3Origin};
use crate::runner_service::Runner;

/// Bucket of the embedded S3 server.
pub(crate) const BUCKET: &str = "gitdeploy";
pub(crate) const REGION: &str = "us-east-1";

pub(crate) fn random_secret(len: usize) -> String {
    Alphanumeric.sample_string(&mut rand::rng(), len)
}

/// The S3 key from `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`.
pub(crate) fn s3_credentials() -> anyhow::Result<(String, String)> {
    let var = |name: &str| {
        std::env::var(name)
            .ok()
            .filter(|v| !v.is_empty())
            .with_context(|| format!("{name} must be set to the S3 key"))
    };
    Ok((var("AWS_ACCESS_KEY_ID")?, var("AWS_SECRET_ACCESS_KEY")?))
}

/// The data directory. Builds run as another user: they may pass through it to their own work
/// and cache directories (0711) but read nothing else (0700).
pub(crate) struct DataDir {
    root: PathBuf,
}

fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set permissions of {}", path.display()))
}

impl DataDir {
    /// Creates it if needed and closes it to others.
    pub(crate) fn prepare(path: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(path)
            .with_context(|| format!("cannot create data directory {}", path.display()))?;
        let root = path.canonicalize()?;
        set_mode(&root, 0o711)?;
        Ok(DataDir { root })
    }

    /// The directory itself.
    pub(crate) fn path(&self) -> &Path {
        &self.root
    }

    /// Its subdirectory `name`, created, with the mode its top level needs.
    pub(crate) fn dir(&self, name: &str) -> anyhow::Result<PathBuf> {
        let d = self.root.join(name);
        std::fs::create_dir_all(&d).with_context(|| format!("cannot create {}", d.display()))?;
        let top = self.root.join(name.split('/').next().unwrap_or(name));
        let traversable = matches!(name, "work" | "cache");
        set_mode(&top, if traversable { 0o711 } else { 0o700 })?;
        Ok(d)
    }
}

/// Where sites are stored: the embedded S3 (a key that lives as long as this process) or an
/// external one.
pub(crate) struct Storage {
    /// The embedded server, to run as a service.
    pub(crate) embedded: Option<EmbeddedS3>,
    pub(crate) endpoint: String,
    pub(crate) bucket: String,
    pub(crate) region: String,
    pub(crate) prefix: String,
    access_key: String,
    secret_key: String,
    /// Requests are signed with credentials from the AWS chain, not a static key.
    pub(crate) aws_credentials: bool,
}

impl Storage {
    /// The storage the platform is configured with.
    pub(crate) fn choose(platform: &Platform, data: &DataDir) -> anyhow::Result<Self> {
        let StorageSettings::S3 {
            endpoint,
            bucket,
            region,
            prefix,
            credentials,
        } = &platform.storage
        else {
            let (access_key, secret_key) = (random_secret(20), random_secret(40));
            let (s3, addr) = EmbeddedS3::bind(
                ([127, 0, 0, 1], 0).into(),
                &data.dir("s3")?,
                BUCKET,
                &access_key,
                &secret_key,
            )?;
            return Ok(Storage {
                embedded: Some(s3),
                endpoint: format!("http://{addr}"),
                bucket: BUCKET.to_owned(),
                region: REGION.to_owned(),
                prefix: String::new(),
                access_key,
                secret_key,
                aws_credentials: false,
            });
        };
        let aws_credentials = *credentials == S3Credentials::AwsChain;
        let (access_key, secret_key) = if aws_credentials {
            (String::new(), String::new())
        } else {
            s3_credentials()?
        };
        Ok(Storage {
            embedded: None,
            endpoint: endpoint.clone().unwrap_or_default(),
            bucket: bucket.clone(),
            region: region.clone(),
            prefix: prefix.clone(),
            access_key,
            secret_key,
            aws_credentials,
        })
    }

    /// The edge's signed S3 client.
    pub(crate) fn origin(&self) -> anyhow::Result<Arc<S3Origin>> {
        Ok(Arc::new(
            S3Origin::new(&OriginSettings {
                endpoint: Some(self.endpoint.clone()).filter(|e| !e.is_empty()),
                bucket: self.bucket.clone(),
                region: self.region.clone(),
                prefix: self.prefix.clone(),
                access_key: self.access_key.clone(),
                secret_key: self.secret_key.clone(),
            })
            .map_err(anyhow::Error::msg)?,
        ))
    }

    /// Longest object key the storage takes.
    pub(crate) fn max_key_bytes(&self) -> u64 {
        match &self.embedded {
            Some(_) => EmbeddedS3::max_key_bytes(&self.bucket),
            None => BuildLimits::default().max_key_bytes,
        }
    }

    /// What a builder needs to publish: the bucket, and the key or the AWS credential sources.
    pub(crate) fn builder_env(&self) -> Vec<(String, String)> {
        let mut vars: Vec<(String, String)> = vec![
            (env::S3_BUCKET.into(), self.bucket.clone()),
            (env::S3_REGION.into(), self.region.clone()),
            (env::S3_PREFIX.into(), self.prefix.clone()),
        ];
        if !self.endpoint.is_empty() {
            vars.push((env::S3_ENDPOINT.into(), self.endpoint.clone()));
        }
        if self.aws_credentials {
            // The builder finds the same credentials the edge uses (task role, profile...).
            for k in crate::build_task::AWS_CREDENTIAL_SOURCES {
                if let Ok(v) = std::env::var(k) {
                    vars.push((k.to_string(), v));
                }
            }
        } else {
            vars.push(("AWS_ACCESS_KEY_ID".into(), self.access_key.clone()));
            vars.push(("AWS_SECRET_ACCESS_KEY".into(), self.secret_key.clone()));
        }
        vars
    }
}

/// The limits of every build, with the storage's longest key.
pub(crate) fn build_limits(platform: &Platform, storage: &Storage) -> BuildLimits {
    BuildLimits {
        max_key_bytes: storage.max_key_bytes(),
        ..platform.builds.limits.clone()
    }
}

/// State and logs: files in the data directory, or Redis shared by every edge.
pub(crate) struct State {
    pub(crate) records: Records,
    pub(crate) bus: Arc<dyn LogBus>,
    /// What the ECS runner hands tasks over through (Redis only).
    pub(crate) task_access: Option<Arc<dyn TaskAccess>>,
    /// Custom domains' certificates and ACME state.
    pub(crate) certs: Arc<dyn gitdeploy_api::cert_store::CertStore>,
    /// The edges' per-project traffic counts.
    pub(crate) traffic: Arc<dyn gitdeploy_api::traffic::TrafficStore>,
    /// The audit log, notification deliveries and webhooks seen.
    pub(crate) journal: Arc<dyn gitdeploy_api::journal::Journal>,
    /// Preview retention, once started ([`State::start_observers`]).
    pub(crate) retention: Option<Arc<gitdeploy_api::retention::Retention>>,
}

impl State {
    /// Opens the configured backend; Redis connections are driven by `rt`.
    pub(crate) fn open(
        platform: &Platform,
        rt: &tokio::runtime::Runtime,
        data: &DataDir,
        metrics: &ApiMetrics,
    ) -> anyhow::Result<Self> {
        let StateBackend::Redis {
            url,
            prefix,
            log_ttl,
            ca_file,
        } = &platform.state
        else {
            let dir = data.dir("state")?;
            return Ok(State {
                records: Records::new(Arc::new(FileStore::open(&dir)?)),
                bus: Arc::new(FileLogBus::open(&data.dir("logs")?, metrics.clone())?),
                task_access: None,
                certs: Arc::new(gitdeploy_api::cert_store::FileCertStore::open(
                    &dir.join("tls"),
                )?),
                traffic: Arc::new(gitdeploy_api::traffic::FileTraffic::default()),
                journal: Arc::new(gitdeploy_api::journal::FileJournal::open(
                    &dir.join("journal"),
                )?),
                retention: None,
            });
        };
        if let Some(ca) = ca_file {
            gitdeploy_api::redis_trust_ca_file(ca)?;
        }
        rt.block_on(async {
            let shown = redact_repo_url(url);
            let store = Arc::new(
                RedisStore::connect(url, prefix)
                    .await
                    .with_context(|| format!("cannot connect to Redis at {shown}"))?,
            );
            let settings = RedisLogSettings {
                prefix: prefix.clone(),
                ttl: *log_ttl,
                max_len: 200_000,
            };
            let bus = RedisLogBus::connect(url, settings, metrics.clone())
                .await
                .with_context(|| format!("cannot connect to Redis at {shown}"))?;
            Ok(State {
                records: Records::new(store.clone() as Arc<dyn Store>),
                bus: Arc::new(bus),
                certs: Arc::new(store.cert_store()),
                traffic: Arc::new(store.traffic_store()),
                journal: Arc::new(store.journal()),
                retention: None,
                task_access: Some(store),
            })
        })
    }
}

impl State {
    /// Starts what hears of deployment events on `rt` (every later user of these records
    /// announces its events to them): the notifier (notification webhooks, GitHub) and preview
    /// retention, which deletes from `storage`.
    pub(crate) fn start_observers(
        &mut self,
        platform: &Platform,
        rt: &tokio::runtime::Runtime,
        metrics: &ApiMetrics,
        storage: &Arc<S3Origin>,
    ) -> anyhow::Result<()> {
        let retention = gitdeploy_api::retention::Retention::new(
            self.records.clone(),
            self.bus.clone(),
            Some(storage.clone() as Arc<dyn gitdeploy_api::SiteStorage>),
            rt.handle().clone(),
        );
        let mut settings = gitdeploy_api::notify::NotifySettings::new(
            platform.public_urls(),
            platform.outbound_policy(),
        );
        settings.github_api = platform.notify.github_api.clone();
        settings.retry_base = platform.notify.retry_base;
        settings.timeout = platform.notify.timeout;
        let notifier = gitdeploy_api::notify::Notifier::start(
            settings,
            self.records.clone(),
            self.journal.clone(),
            metrics.clone(),
            rt.handle(),
        )?;
        self.records = self
            .records
            .clone()
            .with_events(notifier)
            .with_events(Arc::new(gitdeploy_api::retention::SweepOnEnd(
                retention.clone(),
            )));
        self.retention = Some(retention);
        Ok(())
    }
}

/// What the runner is built from.
pub(crate) struct RunnerParts<'a> {
    pub(crate) platform: &'a Platform,
    pub(crate) rt: &'a tokio::runtime::Runtime,
    pub(crate) data: &'a DataDir,
    pub(crate) storage: &'a Storage,
    pub(crate) state: &'a State,
    pub(crate) origin: &'a Arc<S3Origin>,
    pub(crate) limits: &'a BuildLimits,
    pub(crate) metrics: &'a ApiMetrics,
}

impl RunnerParts<'_> {
    /// The configured runner, and the queue that feeds it.
    pub(crate) fn build(self) -> anyhow::Result<(Runner, JobQueue)> {
        match &self.platform.builds.runner {
            RunnerKind::Ecs(ecs) => Ok(self.ecs((**ecs).clone())),
            RunnerKind::Local => self.local(),
        }
    }

    fn ecs(self, mut ecs: gitdeploy_api::EcsRunnerConfig) -> (Runner, JobQueue) {
        ecs.limits = self.limits.clone();
        ecs.max_queued = self.platform.api.max_queued;
        ecs.concurrency = self.platform.builds.concurrency;
        ecs.heartbeat = self.platform.builds.heartbeat;
        // Tasks publish with their own credentials (a session of the upload role, or the task
        // role): never the edge's.
        ecs.env.extend(
            self.storage
                .builder_env()
                .into_iter()
                .filter(|(k, _)| !k.starts_with("AWS_")),
        );
        let aws = self.rt.block_on(
            aws_config::defaults(aws_config::BehaviorVersion::latest())
                .region(aws_config::Region::new(self.storage.region.clone()))
                .load(),
        );
        let upload_role =
            ecs.upload_role_arn
                .clone()
                .map(|role_arn| gitdeploy_api::ecs::UploadRole {
                    sts: aws_sdk_sts::Client::new(&aws),
                    role_arn,
                    bucket: self.storage.bucket.clone(),
                    layout: gitdeploy_core::ObjectLayout::new(&self.storage.prefix),
                });
        let (runner, queue) = gitdeploy_api::EcsRunner::new(
            ecs,
            aws_sdk_ecs::Client::new(&aws),
            self.state.records.clone(),
            self.state.bus.clone(),
            self.state.task_access.clone(),
            self.metrics.clone(),
        );
        let mut runner = runner.with_log_archive(self.origin.clone());
        if let Some(role) = upload_role {
            runner = runner.with_upload_role(role);
        }
        (Runner::Ecs(Box::new(runner)), queue)
    }

    fn local(self) -> anyhow::Result<(Runner, JobQueue)> {
        let exe = std::env::current_exe().context("cannot find the gitdeploy executable")?;
        let (runner, queue) = LocalRunner::new(
            LocalRunnerConfig {
                command: vec![exe.into_os_string(), "builder".into()],
                env: self.storage.builder_env(),
                work_root: self.data.dir("work")?,
                cache_dir: self.data.dir("cache")?,
                concurrency: self.platform.builds.concurrency,
                limits: self.limits.clone(),
                archive: Some(self.origin.clone()),
                max_queued: self.platform.api.max_queued,
                after_kill: Some(Arc::new(|id| {
                    Box::pin(
                        async move { gitdeploy_builder::clean_up_after_kill(id.as_str()).await },
                    )
                })),
                heartbeat: self.platform.builds.heartbeat,
            },
            self.state.records.clone(),
            self.state.bus.clone(),
            self.metrics.clone(),
        );
        Ok((Runner::Local(Box::new(runner)), queue))
    }
}

/// The API, over the state, the queue and the storage.
pub(crate) fn control_plane(
    platform: &Platform,
    limits: BuildLimits,
    state: &State,
    queue: JobQueue,
    origin: &Arc<S3Origin>,
) -> ControlPlane {
    let settings = &platform.api;
    let cp = ControlPlane::new(
        ApiConfig {
            public: platform.public_urls(),
            allowed_repo_schemes: settings.repo_schemes.clone(),
            limits,
            token_sha256: settings.token.as_deref().map(token_sha256),
            rate_limit: settings.rate_limit,
            gc_grace: platform.gc.grace,
            outbound: platform.outbound_policy(),
        },
        state.records.clone(),
        state.bus.clone(),
        state.journal.clone(),
        queue,
        Some(origin.clone() as Arc<dyn gitdeploy_api::BuildArchive>),
    )
    .with_site_storage(origin.clone())
    .with_cert_store(state.certs.clone())
    .with_traffic(state.traffic.clone());
    match &state.retention {
        Some(retention) => cp.with_retention(retention.clone()),
        None => cp,
    }
}
