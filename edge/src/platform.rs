//! Platform assembly for `up` and `serve`, one named step each: the data directory, the site
//! storage (embedded S3 or external), the state and log bus (files or Redis), the build runner
//! (local or ECS) and the control plane. `up::run` calls them in order; nothing here listens or
//! runs: Pingora's services do that.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use gitdeploy_api::{
    token_sha256, ApiConfig, ApiMetrics, ControlPlane, FileLogBus, FileStore, JobQueue,
    LocalRunner, LocalRunnerConfig, LogBus, PublicUrls, Records, RedisLogBus, RedisLogSettings,
    RedisStore, Store, TaskAccess,
};
use gitdeploy_core::job::{env, BuildLimits};
use gitdeploy_core::repo::{redact_repo_url, RepoScheme};
use rand::distr::{Alphanumeric, SampleString};

use crate::embedded_s3::EmbeddedS3;
use crate::origin::{OriginSettings, S3Origin};
use crate::runner_service::Runner;
use crate::up::UpOptions;

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
    /// The storage `opts` ask for.
    pub(crate) fn choose(opts: &UpOptions, data: &DataDir) -> anyhow::Result<Self> {
        let aws_credentials = opts.serve.as_ref().is_some_and(|s| s.s3_aws_credentials);
        let prefix = opts
            .serve
            .as_ref()
            .map(|s| s.s3_prefix.clone())
            .unwrap_or_default();
        if opts.s3_endpoint.is_none() && opts.serve.is_none() {
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
                prefix,
                access_key,
                secret_key,
                aws_credentials: false,
            });
        }
        let (access_key, secret_key) = if aws_credentials {
            (String::new(), String::new())
        } else {
            s3_credentials()?
        };
        Ok(Storage {
            embedded: None,
            endpoint: opts.s3_endpoint.clone().unwrap_or_default(),
            bucket: opts.s3_bucket.clone(),
            region: opts.s3_region.clone(),
            prefix,
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

/// The limits of every build.
pub(crate) fn build_limits(opts: &UpOptions, storage: &Storage) -> BuildLimits {
    BuildLimits {
        timeout_secs: opts.build_timeout,
        max_processes: opts.build_max_processes,
        max_output_bytes: opts.build_max_output_bytes,
        max_disk_bytes: opts.build_max_disk_bytes,
        max_key_bytes: storage.max_key_bytes(),
        allowed_networks: opts.build_allow_networks.clone(),
        ..BuildLimits::default()
    }
}

/// State and logs: files in the data directory, or Redis shared by every edge.
pub(crate) struct State {
    pub(crate) records: Records,
    pub(crate) bus: Arc<dyn LogBus>,
    /// What the ECS runner hands tasks over through (Redis only).
    pub(crate) task_access: Option<Arc<dyn TaskAccess>>,
}

impl State {
    /// Opens what `opts` ask for; Redis connections are driven by `rt`.
    pub(crate) fn open(
        opts: &UpOptions,
        rt: &tokio::runtime::Runtime,
        data: &DataDir,
        metrics: &ApiMetrics,
    ) -> anyhow::Result<Self> {
        let Some(url) = &opts.redis_url else {
            return Ok(State {
                records: Records::new(Arc::new(FileStore::open(&data.dir("state")?)?)),
                bus: Arc::new(FileLogBus::open(&data.dir("logs")?, metrics.clone())?),
                task_access: None,
            });
        };
        rt.block_on(async {
            let shown = redact_repo_url(url);
            let store = Arc::new(
                RedisStore::connect(url, &opts.redis_prefix)
                    .await
                    .with_context(|| format!("cannot connect to Redis at {shown}"))?,
            );
            let settings = RedisLogSettings {
                prefix: opts.redis_prefix.clone(),
                ttl: std::time::Duration::from_secs(opts.log_ttl),
                max_len: 200_000,
            };
            let bus = RedisLogBus::connect(url, settings, metrics.clone())
                .await
                .with_context(|| format!("cannot connect to Redis at {shown}"))?;
            Ok(State {
                records: Records::new(store.clone() as Arc<dyn Store>),
                bus: Arc::new(bus),
                task_access: Some(store),
            })
        })
    }
}

/// What the runner is built from.
pub(crate) struct RunnerParts<'a> {
    pub(crate) opts: &'a UpOptions,
    pub(crate) rt: &'a tokio::runtime::Runtime,
    pub(crate) data: &'a DataDir,
    pub(crate) storage: &'a Storage,
    pub(crate) state: &'a State,
    pub(crate) origin: &'a Arc<S3Origin>,
    pub(crate) limits: &'a BuildLimits,
    pub(crate) metrics: &'a ApiMetrics,
}

impl RunnerParts<'_> {
    /// The runner `opts` ask for, and the queue that feeds it.
    pub(crate) fn build(self) -> anyhow::Result<(Runner, JobQueue)> {
        match self.opts.serve.as_ref().and_then(|s| s.ecs.clone()) {
            Some(ecs) => Ok(self.ecs(ecs)),
            None => self.local(),
        }
    }

    fn heartbeat(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.opts.heartbeat_interval_ms.max(10))
    }

    fn ecs(self, mut ecs: gitdeploy_api::EcsRunnerConfig) -> (Runner, JobQueue) {
        ecs.limits = self.limits.clone();
        ecs.max_queued = self.opts.max_queued;
        ecs.heartbeat = self.heartbeat();
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
                concurrency: self.opts.concurrency,
                limits: self.limits.clone(),
                archive: Some(self.origin.clone()),
                max_queued: self.opts.max_queued,
                after_kill: Some(Arc::new(|id| {
                    Box::pin(
                        async move { gitdeploy_builder::clean_up_after_kill(id.as_str()).await },
                    )
                })),
                heartbeat: self.heartbeat(),
            },
            self.state.records.clone(),
            self.state.bus.clone(),
            self.metrics.clone(),
        );
        Ok((Runner::Local(Box::new(runner)), queue))
    }
}

/// How the outside world reaches sites and the API.
pub(crate) fn public_urls(opts: &UpOptions, domain: &str) -> PublicUrls {
    let port = opts.listen.port();
    match &opts.serve {
        Some(serve) => PublicUrls {
            scheme: serve.public_scheme.clone(),
            domain: domain.to_owned(),
            port: serve.public_port,
        },
        None => PublicUrls {
            scheme: "http".into(),
            domain: domain.to_owned(),
            port: (port != 80).then_some(port),
        },
    }
}

/// The API, over the state, the queue and the storage.
pub(crate) fn control_plane(
    opts: &UpOptions,
    public: PublicUrls,
    limits: BuildLimits,
    state: &State,
    queue: JobQueue,
    origin: &Arc<S3Origin>,
) -> ControlPlane {
    let allowed_repo_schemes = match &opts.serve {
        Some(serve) => serve.repo_schemes.clone(),
        None => vec![
            RepoScheme::Https,
            RepoScheme::Http,
            RepoScheme::Git,
            RepoScheme::Local,
        ],
    };
    let rate_limit =
        (opts.api_rate_per_second > 0.0).then_some(gitdeploy_api::ratelimit::RateLimit {
            burst: opts.api_rate_burst,
            per_second: opts.api_rate_per_second,
        });
    ControlPlane::new(
        ApiConfig {
            public,
            allowed_repo_schemes,
            limits,
            token_sha256: opts.api_token.as_deref().map(token_sha256),
            rate_limit,
        },
        state.records.clone(),
        state.bus.clone(),
        queue,
        Some(origin.clone() as Arc<dyn gitdeploy_api::LogArchive>),
    )
    .with_site_storage(origin.clone())
}
