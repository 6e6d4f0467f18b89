//! `gitdeploy serve --config FILE`: production. The same server as `up` (one code path), set up
//! from a TOML file: state and logs in Redis, an external S3 signed with the task role's
//! credentials, builds on ECS or local, a required API token. `--check-config` validates a file
//! and exits. Every key is documented in `deploy/gitdeploy.toml`. The TOML may come in the
//! environment instead (`GITDEPLOY_CONFIG_TOML`), as the CloudFormation template renders it.

use std::path::{Path, PathBuf};

use anyhow::Context;
use gitdeploy_api::ratelimit::RateLimit;
use gitdeploy_core::head_guard::HeadLimits;
use gitdeploy_core::job::BuildLimits;
use gitdeploy_core::repo::RepoScheme;

use crate::access_log::AccessLogSettings;
use crate::client_addr::TrustedProxies;
use crate::config::{
    ApiSettings, BuildSettings, CacheSettings, DomainSettings, NotifyConfig, Platform,
    PublicAddress, RunnerKind, S3Credentials, StateBackend, StorageSettings, TlsListener,
};
use crate::public::ConnectionLimits;

mod file;
use file::*;

/// Options of `gitdeploy serve`.
#[derive(clap::Args, Debug)]
pub struct ServeOptions {
    /// The configuration file (see deploy/gitdeploy.toml).
    #[arg(long, env = "GITDEPLOY_CONFIG")]
    config: Option<PathBuf>,
    /// The configuration itself, instead of a file: what an orchestrator that renders it (the
    /// CloudFormation template's task definition) passes in the environment.
    #[arg(long, env = "GITDEPLOY_CONFIG_TOML", hide_env_values = true)]
    config_toml: Option<String>,
    /// Validate the file and exit.
    #[arg(long)]
    check_config: bool,
    /// Take over the sockets of the running server (graceful upgrade; see `gitdeploy up --help`).
    #[arg(long)]
    upgrade: bool,
    /// Write the server's addresses here as JSON once it serves (see `gitdeploy up --help`).
    #[arg(long)]
    ready_file: Option<PathBuf>,
}

fn repo_scheme(name: &str) -> Result<RepoScheme, String> {
    Ok(match name {
        "https" => RepoScheme::Https,
        "http" => RepoScheme::Http,
        "git" => RepoScheme::Git,
        "ssh" => RepoScheme::Ssh,
        "file" => RepoScheme::Local,
        other => {
            return Err(format!(
                "api.repo_schemes: unknown scheme {other:?} (https, http, git, ssh, file)"
            ))
        }
    })
}

impl Config {
    /// Parses and checks a configuration; the error names the first problem and its key.
    fn parse(text: &str) -> Result<Config, String> {
        let config: Config = toml::from_str(text).map_err(|e| e.to_string())?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        let domain = self
            .server
            .domain
            .trim_end_matches('.')
            .to_ascii_lowercase();
        if gitdeploy_core::host::normalize_host(&domain).as_deref() != Some(domain.as_str()) {
            return Err(format!(
                "server.domain: {:?} is not a valid host name",
                self.server.domain
            ));
        }
        if !matches!(self.server.public_scheme.as_str(), "http" | "https") {
            return Err("server.public_scheme: must be \"http\" or \"https\"".into());
        }
        if self.server.threads == 0 {
            return Err("server.threads: must be at least 1".into());
        }
        match (
            &self.api.token_file,
            &self.api.token_env,
            self.api.insecure_open,
        ) {
            (Some(_), Some(_), _) => {
                return Err("api: set token_file or token_env, not both".into())
            }
            (None, None, false) => {
                return Err(
                    "api: set token_file or token_env (serve does not run an open API unless \
                     api.insecure_open = true)"
                        .into(),
                )
            }
            (Some(_) | None, _, true)
                if self.api.token_file.is_some() || self.api.token_env.is_some() =>
            {
                return Err("api: insecure_open = true contradicts a token source".into())
            }
            _ => {}
        }
        if self.api.repo_schemes.is_empty() {
            return Err("api.repo_schemes: allow at least one scheme".into());
        }
        for scheme in &self.api.repo_schemes {
            repo_scheme(scheme)?;
        }
        if self.api.rate_per_second < 0.0 || self.api.rate_burst == 0 {
            return Err("api: rate_burst must be at least 1 and rate_per_second at least 0".into());
        }
        if self.api.max_queued == 0 {
            return Err("api.max_queued: must be at least 1".into());
        }
        if self.redis.url_env.trim().is_empty() {
            return Err("redis.url_env: name the variable that holds the Redis URL".into());
        }
        if self.s3.bucket.trim().is_empty() || self.s3.region.trim().is_empty() {
            return Err("s3: bucket and region are required".into());
        }
        if let Some(endpoint) = &self.s3.endpoint {
            if !(endpoint.starts_with("https://") || endpoint.starts_with("http://")) {
                return Err(format!(
                    "s3.endpoint: {endpoint:?} must start with https:// or http://"
                ));
            }
        }
        if !matches!(self.s3.credentials.as_str(), "aws" | "static") {
            return Err(
                "s3.credentials: \"aws\" (task role, instance profile, environment) or \
                 \"static\" (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)"
                    .into(),
            );
        }
        if self.cache.alias_ttl_ms == 0 || self.cache.alias_ttl_ms > 60_000 {
            return Err("cache.alias_ttl_ms: between 1 and 60000".into());
        }
        self.access_log()?;
        self.trusted_proxies()?;
        if self.builds.concurrency == 0 || self.builds.timeout_secs == 0 {
            return Err("builds: concurrency and timeout_secs must be at least 1".into());
        }
        for cidr in &self.builds.allow_networks {
            gitdeploy_core::egress::parse_allowed_network(cidr)
                .map_err(|e| format!("builds.allow_networks: {e}"))?;
        }
        match (self.builds.runner.as_str(), &self.builds.ecs) {
            ("local", _) => {}
            ("ecs", None) => {
                return Err("builds.runner = \"ecs\" needs a [builds.ecs] table".into())
            }
            ("ecs", Some(ecs)) => {
                for (key, value) in [
                    ("cluster", &ecs.cluster),
                    ("task_definition", &ecs.task_definition),
                    ("container", &ecs.container),
                ] {
                    if value.trim().is_empty() {
                        return Err(format!("builds.ecs.{key}: must not be empty"));
                    }
                }
                if ecs.subnets.is_empty() || ecs.security_groups.is_empty() {
                    return Err(
                        "builds.ecs: subnets and security_groups must each name at least one"
                            .into(),
                    );
                }
                if !matches!(ecs.launch_type.as_str(), "FARGATE" | "EC2" | "EXTERNAL") {
                    return Err("builds.ecs.launch_type: FARGATE, EC2 or EXTERNAL".into());
                }
                if ecs.poll_interval_ms < 100 {
                    return Err("builds.ecs.poll_interval_ms: at least 100".into());
                }
                if let Some(arn) = &ecs.upload_role_arn {
                    if !arn.starts_with("arn:") || !arn.contains(":role/") {
                        return Err(format!(
                            "builds.ecs.upload_role_arn: {arn:?} is not a role ARN"
                        ));
                    }
                    let most = gitdeploy_api::task_access::MAX_SESSION_BUILD_SECS;
                    if self.builds.timeout_secs > most {
                        return Err(format!(
                            "builds.timeout_secs: at most {most} with an upload role (its sessions last an hour at most)"
                        ));
                    }
                }
            }
            (other, _) => {
                return Err(format!(
                    "builds.runner: {other:?} is not \"local\" or \"ecs\""
                ))
            }
        }
        Ok(())
    }

    fn access_log(&self) -> Result<Option<AccessLogSettings>, String> {
        let s = &self.server;
        AccessLogSettings::new(
            s.access_log.as_deref(),
            s.access_log_sample,
            s.access_log_s3,
            std::time::Duration::from_secs(s.access_log_s3_interval_secs),
        )
        .map_err(|e| format!("server.access_log: {e}"))
    }

    fn trusted_proxies(&self) -> Result<TrustedProxies, String> {
        match &self.clients.trusted_proxies {
            None => Ok(TrustedProxies::default()),
            // An empty list trusts no proxy.
            Some(list) if list.is_empty() => TrustedProxies::parse(["none"]),
            Some(list) => TrustedProxies::parse(list),
        }
        .map_err(|e| format!("clients.trusted_proxies: {e}"))
    }

    /// The platform this file describes, with the secrets it names read from the environment
    /// and files.
    fn into_platform(self) -> anyhow::Result<Platform> {
        let token = match (&self.api.token_file, &self.api.token_env) {
            (Some(path), _) => Some(
                std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read api.token_file {}", path.display()))?
                    .trim()
                    .to_owned(),
            ),
            (None, Some(var)) => Some(
                std::env::var(var)
                    .ok()
                    .filter(|v| !v.is_empty())
                    .with_context(|| format!("api.token_env: {var} is not set"))?,
            ),
            (None, None) => None,
        };
        let redis_url = std::env::var(&self.redis.url_env)
            .ok()
            .filter(|v| !v.is_empty())
            .with_context(|| format!("redis.url_env: {} is not set", self.redis.url_env))?;
        let ms = std::time::Duration::from_millis;
        let access_log = self.access_log().map_err(anyhow::Error::msg)?;
        let trusted_proxies = self.trusted_proxies().map_err(anyhow::Error::msg)?;
        let runner = match (self.builds.runner.as_str(), self.builds.ecs) {
            ("ecs", Some(ecs)) => RunnerKind::Ecs(Box::new(gitdeploy_api::EcsRunnerConfig {
                cluster: ecs.cluster,
                task_definition: ecs.task_definition,
                container: ecs.container,
                capacity_provider: ecs.capacity_provider,
                launch_type: ecs.launch_type,
                subnets: ecs.subnets,
                security_groups: ecs.security_groups,
                assign_public_ip: ecs.assign_public_ip,
                env: vec![("GITDEPLOY_REDIS_PREFIX".into(), self.redis.prefix.clone())],
                concurrency: self.builds.concurrency,
                max_queued: self.api.max_queued,
                limits: Default::default(),
                poll_interval: ms(ecs.poll_interval_ms),
                heartbeat: std::time::Duration::from_secs(5),
                run_attempts: ecs.run_attempts,
                scoped_redis_users: ecs.scoped_redis_users,
                upload_role_arn: ecs.upload_role_arn,
            })),
            _ => RunnerKind::Local,
        };
        Ok(Platform {
            access_log,
            trusted_proxies,
            traffic_flush: std::time::Duration::from_secs(10),
            gc: crate::config::GcSettings::from_secs(
                self.s3.gc_interval_secs,
                self.s3.gc_grace_secs,
            ),
            listen: self.server.listen,
            metrics_listen: self.server.metrics_listen,
            domain: self
                .server
                .domain
                .trim_end_matches('.')
                .to_ascii_lowercase(),
            data_dir: self.server.data_dir,
            threads: self.server.threads.max(1),
            upgrade: false,
            ready_file: None,
            public: Some(PublicAddress {
                scheme: self.server.public_scheme,
                port: self.server.public_port,
            }),
            tls: self.tls.map(|t| TlsListener {
                listen: t.listen,
                platform: Some(crate::tls::PlatformFiles {
                    cert: t.cert,
                    key: t.key,
                }),
            }),
            acme: self.acme.map(|a| gitdeploy_api::acme::AcmeSettings {
                directory: a.directory,
                ca_file: a.ca_file,
                email: a.email,
                renew_before: gitdeploy_api::acme::RENEW_BEFORE,
                retry_first: gitdeploy_api::acme::RETRY_FIRST,
                check_every: gitdeploy_api::acme::CHECK_EVERY,
            }),
            notify: NotifyConfig::new(
                &self.notifications.allow_networks,
                self.github.api_url.clone(),
                std::time::Duration::from_secs(self.notifications.retry_secs.max(1)),
                std::time::Duration::from_secs(self.notifications.timeout_secs.max(1)),
            )?,
            domains: DomainSettings {
                dns_resolver: self.domains.dns_resolver,
                public_addresses: self.domains.public_address,
                check_every: gitdeploy_api::domain_check::CHECK_EVERY,
            },
            clients: ConnectionLimits {
                head: HeadLimits {
                    idle: ms(self.clients.idle_timeout_ms.max(1)),
                    head: ms(self.clients.header_timeout_ms.max(1)),
                    max_bytes: self.clients.max_header_bytes.max(1024),
                },
                max_connections: self.clients.max_connections.max(1),
            },
            api: ApiSettings {
                token,
                insecure_open: self.api.insecure_open,
                max_queued: self.api.max_queued,
                rate_limit: (self.api.rate_per_second > 0.0).then_some(RateLimit {
                    burst: self.api.rate_burst,
                    per_second: self.api.rate_per_second,
                }),
                repo_schemes: self
                    .api
                    .repo_schemes
                    .iter()
                    .map(|s| repo_scheme(s))
                    .collect::<Result<_, _>>()
                    .map_err(anyhow::Error::msg)?,
            },
            state: StateBackend::Redis {
                url: redis_url,
                prefix: self.redis.prefix,
                log_ttl: std::time::Duration::from_secs(self.redis.log_ttl_secs),
                ca_file: self.redis.ca_file,
            },
            storage: StorageSettings::S3 {
                endpoint: self.s3.endpoint,
                bucket: self.s3.bucket,
                region: self.s3.region,
                prefix: self.s3.prefix,
                credentials: if self.s3.credentials == "aws" {
                    S3Credentials::AwsChain
                } else {
                    S3Credentials::StaticKey
                },
            },
            cache: CacheSettings {
                object_max_bytes: self.cache.object_max_bytes,
                object_total_bytes: self.cache.object_total_bytes,
                alias_ttl: ms(self.cache.alias_ttl_ms),
            },
            builds: BuildSettings {
                concurrency: self.builds.concurrency,
                limits: BuildLimits {
                    timeout_secs: self.builds.timeout_secs,
                    max_processes: self.builds.max_processes,
                    max_output_bytes: self.builds.max_output_bytes,
                    max_disk_bytes: self.builds.max_disk_bytes,
                    allowed_networks: self.builds.allow_networks,
                    ..BuildLimits::default()
                },
                heartbeat: std::time::Duration::from_secs(5),
                runner,
            },
        })
    }
}

fn load(path: &Path) -> anyhow::Result<Config> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    Config::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// Runs `gitdeploy serve`.
pub fn run(opts: ServeOptions) -> anyhow::Result<()> {
    let (config, source) = match (&opts.config, &opts.config_toml) {
        (Some(_), Some(_)) => anyhow::bail!(
            "both a configuration file (--config, GITDEPLOY_CONFIG) and GITDEPLOY_CONFIG_TOML are \
             set: keep one"
        ),
        (Some(path), None) => (load(path)?, path.display().to_string()),
        (None, Some(text)) => (
            Config::parse(text).map_err(|e| anyhow::anyhow!("GITDEPLOY_CONFIG_TOML: {e}"))?,
            "GITDEPLOY_CONFIG_TOML".to_owned(),
        ),
        (None, None) => anyhow::bail!(
            "no configuration: pass --config FILE (GITDEPLOY_CONFIG) or the TOML itself in \
             GITDEPLOY_CONFIG_TOML"
        ),
    };
    if opts.check_config {
        println!(
            "{}: OK (domain {}, {} runner, bucket {}, Redis from ${})",
            source,
            config.server.domain,
            config.builds.runner,
            config.s3.bucket,
            config.redis.url_env
        );
        return Ok(());
    }
    let mut platform = config.into_platform()?;
    platform.upgrade = opts.upgrade;
    platform.ready_file = opts.ready_file;
    crate::up::run(platform)
}

#[cfg(test)]
mod tests;
