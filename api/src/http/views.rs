//! The JSON shapes of deployments and projects the API answers with.

use gitdeploy_core::DeploymentStatus;
use serde_json::{json, Value};

use crate::projects::Project;
use crate::store::{Deployment, DeploymentSource};
use crate::ControlPlane;

pub(super) fn deployment_json(cp: &ControlPlane, d: &Deployment) -> Value {
    let urls = &cp.config.public;
    json!({
        "id": d.id,
        "url": urls.site(d.id.as_str()),
        "status": d.status,
        "project": d.project,
        "project_url": d.project.as_deref().map(|p| urls.site(p)),
        "source": d.source,
        "repo": (d.source == DeploymentSource::Git).then(|| d.repo_display()),
        // A local folder's source, built here; absent when it came built (or from git).
        "archive": d.archive,
        "ref": d.git_ref,
        "serving": d.serving,
        "build": d.build,
        "commit": d.commit,
        "error": d.error,
        "skip_reason": d.skip_reason,
        "previous_commit": d.previous_commit,
        "created_unix_ms": d.created_unix_ms,
        "started_unix_ms": d.started_unix_ms,
        "finished_unix_ms": d.finished_unix_ms,
        "logs_url": urls.api(&format!("/api/deployments/{}/logs", d.id)),
        "logs_ws_url": urls.api(&format!("/api/deployments/{}/logs/ws", d.id)).replacen("http", "ws", 1),
    })
}

pub(super) fn project_json(cp: &ControlPlane, p: &Project) -> Value {
    json!({
        "name": p.name,
        "url": cp.config.public.site(&p.name),
        "repo": p.repo_display(),
        "production_branch": p.production_branch,
        "production": p.production,
        "previous": p.history.last(),
        "build": p.build.without_secret_values(),
        "webhook": p.webhook_secret.is_some(),
        "deploy_hook_url": p.deploy_hook.as_deref().map(|secret| cp
            .config
            .public
            .api(&format!("/api/hooks/deploy/{}/{secret}", p.name))),
        "created_unix_ms": p.created_unix_ms,
        "hsts_max_age_secs": p.hsts_max_age_secs,
        "skew_protection_secs": p
            .skew_protection_secs
            .unwrap_or(crate::projects::SKEW_WINDOW_DEFAULT_SECS),
    })
}

pub(super) fn status_name(s: DeploymentStatus) -> String {
    serde_json::to_value(s)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}
