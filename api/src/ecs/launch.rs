//! Starting a build task: its access handed over (a storage session of the upload role, its
//! Redis user, the withheld values through Redis), the container overrides and the network,
//! and `RunTask` retried while ECS has no capacity.

use std::time::Duration;

use aws_sdk_ecs::types::{
    AssignPublicIp, AwsVpcConfiguration, CapacityProviderStrategyItem, ContainerOverride,
    KeyValuePair, LaunchType, NetworkConfiguration, Tag, TaskOverride,
};
use gitdeploy_core::job::env;
use gitdeploy_core::{BuildJob, DeploymentId};

use super::{ecs_error, Shared, DEPLOYMENT_ENV, DEPLOYMENT_TAG, STARTED_BY};

impl Shared {
    /// A storage session for `id` alone (and its cache scope's build caches), from the upload
    /// role.
    pub(super) async fn upload_session(
        &self,
        id: &DeploymentId,
        cache_key: Option<&str>,
    ) -> Result<Option<gitdeploy_core::job::SessionCredentials>, String> {
        let Some(role) = &self.upload_role else {
            return Ok(None);
        };
        let answer = role
            .sts
            .assume_role()
            .role_arn(&role.role_arn)
            .role_session_name(format!("gitdeploy-build-{id}"))
            .policy(crate::task_access::s3_session_policy(
                &role.bucket,
                &role.layout,
                id,
                &gitdeploy_core::keys::cache_scope(cache_key),
            ))
            .duration_seconds(crate::task_access::session_seconds(
                self.config.limits.timeout_secs,
            ))
            .send()
            .await
            .map_err(|e| match e.as_service_error() {
                Some(se) => format!(
                    "STS refused the upload session: {}: {}",
                    aws_sdk_sts::error::ProvideErrorMetadata::code(se).unwrap_or("error"),
                    aws_sdk_sts::error::ProvideErrorMetadata::message(se).unwrap_or("no message")
                ),
                None => format!(
                    "STS could not be reached: {}",
                    aws_sdk_sts::error::DisplayErrorContext(&e)
                ),
            })?;
        let c = answer
            .credentials
            .ok_or("STS answered without credentials")?;
        Ok(Some(gitdeploy_core::job::SessionCredentials {
            access_key_id: c.access_key_id,
            secret_access_key: c.secret_access_key,
            session_token: c.session_token,
        }))
    }

    /// `RunTask`, retried while ECS reports no capacity.
    pub(super) async fn start_task(&self, job: &BuildJob) -> Result<String, String> {
        let id = job.deployment.as_str();
        let mut visible = job.clone();
        visible.repo = gitdeploy_core::repo::redact_repo_url(&job.repo);
        let withheld = gitdeploy_core::job::WithheldFromTask {
            secrets: job.build.secrets.clone(),
            repo: (visible.repo != job.repo).then(|| job.repo.clone()),
            storage: self
                .upload_session(&job.deployment, job.cache_key.as_deref())
                .await?,
        };
        let mut access_env = Vec::new();
        if let (Some(access), true) = (&self.access, self.config.scoped_redis_users) {
            let grant = access
                .grant(&job.deployment)
                .await
                .map_err(|e| e.to_string())?;
            access_env.push((crate::task_access::REDIS_USER_ENV.to_owned(), grant.user));
            access_env.push((
                crate::task_access::REDIS_PASSWORD_ENV.to_owned(),
                grant.password,
            ));
        }
        if !withheld.secrets.is_empty() || withheld.repo.is_some() || withheld.storage.is_some() {
            let Some(access) = &self.access else {
                return Err(
                    "secrets, repository credentials and storage sessions need Redis to reach the build task".into(),
                );
            };
            let values = serde_json::to_string(&withheld).map_err(|e| e.to_string())?;
            access
                .put_withheld(&job.deployment, values)
                .await
                .map_err(|e| format!("cannot hand the secrets to the task: {e}"))?;
            visible.build = visible.build.without_secret_values();
        }
        let job_json = serde_json::to_string(&visible).map_err(|e| e.to_string())?;
        let environment: Vec<KeyValuePair> = [
            (env::JOB.to_owned(), job_json),
            (DEPLOYMENT_ENV.to_owned(), id.to_owned()),
        ]
        .into_iter()
        .chain(access_env)
        .chain(self.config.env.iter().cloned())
        .map(|(k, v)| KeyValuePair::builder().name(k).value(v).build())
        .collect();
        let overrides = TaskOverride::builder()
            .container_overrides(
                ContainerOverride::builder()
                    .name(&self.config.container)
                    .set_environment(Some(environment))
                    .build(),
            )
            .build();
        let network = NetworkConfiguration::builder()
            .awsvpc_configuration(
                AwsVpcConfiguration::builder()
                    .set_subnets(Some(self.config.subnets.clone()))
                    .set_security_groups(Some(self.config.security_groups.clone()))
                    .assign_public_ip(if self.config.assign_public_ip {
                        AssignPublicIp::Enabled
                    } else {
                        AssignPublicIp::Disabled
                    })
                    .build()
                    .map_err(|e| e.to_string())?,
            )
            .build();
        let mut backoff = Duration::from_secs(2);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut request = self
                .client
                .run_task()
                .cluster(&self.config.cluster)
                .task_definition(&self.config.task_definition)
                .count(1)
                .started_by(STARTED_BY)
                .overrides(overrides.clone())
                .network_configuration(network.clone())
                .tags(Tag::builder().key(DEPLOYMENT_TAG).value(id).build())
                .propagate_tags(aws_sdk_ecs::types::PropagateTags::TaskDefinition);
            request = match &self.config.capacity_provider {
                Some(provider) => request.capacity_provider_strategy(
                    CapacityProviderStrategyItem::builder()
                        .capacity_provider(provider)
                        .weight(1)
                        .build()
                        .map_err(|e| e.to_string())?,
                ),
                None => request.launch_type(LaunchType::from(self.config.launch_type.as_str())),
            };
            let answer = request.send().await.map_err(ecs_error)?;
            if let Some(arn) = answer
                .tasks
                .unwrap_or_default()
                .into_iter()
                .find_map(|t| t.task_arn)
            {
                return Ok(arn);
            }
            let reasons: Vec<String> = answer
                .failures
                .unwrap_or_default()
                .into_iter()
                .map(|f| {
                    format!(
                        "{}{}",
                        f.reason.unwrap_or_else(|| "unknown".into()),
                        f.detail.map(|d| format!(" ({d})")).unwrap_or_default()
                    )
                })
                .collect();
            let reason = if reasons.is_empty() {
                "RunTask started no task".to_owned()
            } else {
                reasons.join("; ")
            };
            let capacity = reason.contains("RESOURCE") || reason.contains("capacity");
            if !capacity || attempt >= self.config.run_attempts.max(1) {
                return Err(reason);
            }
            tracing::warn!(id, "no ECS capacity ({reason}); retrying in {backoff:?}");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
    }
}
