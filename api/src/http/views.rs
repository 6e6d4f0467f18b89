//! The JSON shapes of deployments and projects the API answers with.

use gitdeploy_core::DeploymentStatus;
use serde_json::{json, Value};

use crate::previews::PreviewSource;
use crate::projects::Project;
use crate::store::{Deployment, DeploymentSource};
use crate::ControlPlane;

/// A preview alias as the API shows it: its label, URL and what it follows.
fn alias_json(cp: &ControlPlane, project: &str, source: &PreviewSource) -> Option<Value> {
    let slug = source.slug(project)?;
    let label = gitdeploy_core::preview::label(&slug, project);
    let mut v = json!({"label": label, "url": cp.config.public.site(&label)});
    match source {
        PreviewSource::Branch(b) => v["branch"] = json!(b),
        PreviewSource::PullRequest(n) => v["pull_request"] = json!(n),
    }
    Some(v)
}

pub(super) fn deployment_json(cp: &ControlPlane, d: &Deployment) -> Value {
    let urls = &cp.config.public;
    let alias = d
        .project
        .as_deref()
        .zip(d.trigger.alias.as_ref())
        .and_then(|(p, source)| alias_json(cp, p, source));
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
        // The branch or pull request alias a ready build of it moves.
        "alias": alias,
        "head_sha": d.trigger.head_sha,
        "fork": d.trigger.fork,
        "pinned": d.pinned,
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
        "previews": p.previews.values().filter_map(|a| {
            let mut v = alias_json(cp, &p.name, &a.source)?;
            v["deployment"] = json!(a.deployment);
            v["opened_unix_ms"] = json!(a.opened_unix_ms);
            Some(v)
        }).collect::<Vec<_>>(),
        "protection": p.protection.as_ref().map(|pr| json!({
            "scope": pr.scope,
            "password": pr.password.is_some(),
            "bypass_token": pr.bypass_sha256.is_some(),
        })),
        "github": p.github.as_ref().map(|g| json!({"repository": g.repository, "connected": true})),
        "notifications": p.notifications.len(),
        "preview_retention": p.preview_retention,
        "environments": {
            "production": env_json(&p.build.env, &p.build.secrets),
            "preview": env_json(&p.preview_env.env, &p.preview_env.secrets),
        },
    })
}

/// Variables with their values and secrets by name only.
fn env_json(
    env: &std::collections::BTreeMap<String, String>,
    secrets: &std::collections::BTreeMap<String, String>,
) -> Value {
    json!({"env": env, "secrets": secrets.keys().collect::<Vec<_>>()})
}

pub(super) fn status_name(s: DeploymentStatus) -> String {
    serde_json::to_value(s)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}
