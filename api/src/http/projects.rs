//! Projects over HTTP: create, list, show, change settings, delete, promote, roll back.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use gitdeploy_core::host::is_site_label;
use gitdeploy_core::id::looks_like_deployment_id;
use gitdeploy_core::job::{validate_git_ref, BuildSettings};
use gitdeploy_core::repo::validate_repo_url;
use gitdeploy_core::DeploymentStatus;
use serde::Deserialize;
use serde_json::{json, Value};

use super::protection::ProtectionChange;
use super::*;
use crate::error::ApiError;
use crate::projects::{EnvVars, Project, ProjectError};
use crate::targets::{github_repository, valid_repository, GithubLink};
use crate::tokens::Caller;
use crate::{now_ms, ControlPlane};

pub(super) fn project_error(e: ProjectError) -> ApiError {
    match e {
        ProjectError::Exists(_) => ApiError::conflict("project_exists", e.to_string()),
        ProjectError::OtherRepo { .. } => {
            ApiError::conflict("project_repo_mismatch", e.to_string())
        }
        ProjectError::Store(e) => e.into(),
    }
}

pub(super) fn validate_project_name(name: &str) -> Result<(), ApiError> {
    if is_site_label(name)
        && !looks_like_deployment_id(name)
        && name != "api"
        && !name.contains(gitdeploy_core::preview::SEPARATOR)
    {
        return Ok(());
    }
    Err(ApiError::bad_request(
        "invalid_project",
        format!(
            "{name:?} is not a valid project name: use 1-63 lowercase letters, digits and \
             hyphens, not 12 letters and digits (that shape is kept for deployment ids), not \"api\", \
             no \"--\" (it separates a preview's branch from its project)"
        ),
    ))
}

/// The body of a project creation.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ProjectRequest {
    name: String,
    repo: String,
    #[serde(default)]
    production_branch: Option<String>,
    #[serde(default)]
    build: BuildSettings,
    #[serde(default)]
    webhook_secret: Option<String>,
}

pub(super) fn validate_webhook_secret(secret: &str) -> Result<(), ApiError> {
    if secret.len() < 16 || secret.len() > 256 {
        return Err(ApiError::bad_request(
            "invalid_secret",
            "webhook_secret must be 16-256 characters",
        ));
    }
    Ok(())
}

pub(super) async fn create_project(
    State(cp): State<ControlPlane>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: ProjectRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request("invalid_body", format!("invalid project: {e}")))?;
    validate_project_name(&req.name)?;
    let repo = req.repo.trim().to_owned();
    validate_repo_url(&repo, &cp.config.allowed_repo_schemes)
        .map_err(|e| ApiError::bad_request("invalid_repo", e))?;
    if let Some(b) = &req.production_branch {
        validate_git_ref(b).map_err(|e| ApiError::bad_request("invalid_ref", e))?;
    }
    if let Some(secret) = &req.webhook_secret {
        validate_webhook_secret(secret)?;
    }
    req.build
        .validate(cp.config.limits.timeout_secs)
        .map_err(|e| ApiError::bad_request("invalid_build", e))?;
    let project = cp
        .records
        .create_project(Project {
            build: req.build,
            webhook_secret: req.webhook_secret,
            ..Project::new(&req.name, &repo, req.production_branch.as_deref(), now_ms())
        })
        .await
        .map_err(project_error)?;
    Ok((StatusCode::CREATED, Json(project_json(&cp, &project))).into_response())
}

pub(super) async fn list_projects(
    State(cp): State<ControlPlane>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<Value>, ApiError> {
    let list: Vec<Value> = cp
        .records
        .projects()
        .await?
        .iter()
        .filter(|p| caller.sees(Some(&p.name)))
        .map(|p| project_json(&cp, p))
        .collect();
    Ok(Json(json!({ "projects": list })))
}

pub(super) async fn lookup_project(cp: &ControlPlane, name: &str) -> Result<Project, ApiError> {
    cp.records
        .project(name)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no project {name:?}")))
}

pub(super) async fn show_project(
    State(cp): State<ControlPlane>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let project = lookup_project(&cp, &name).await?;
    let mut body = project_json(&cp, &project);
    let deployments: Vec<Value> = cp
        .records
        .list_project(&name, LIST_LIMIT)
        .await?
        .iter()
        .map(|d| deployment_json(&cp, d))
        .collect();
    body["deployments"] = json!(deployments);
    Ok(Json(body))
}

/// The body of a settings change: fields left out stay as they are.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ProjectUpdate {
    /// A branch, or `""` for the repository's default branch.
    #[serde(default)]
    production_branch: Option<String>,
    /// The full settings, as `GET` shows them: a secret with an empty value keeps its stored
    /// value, a secret left out is removed.
    #[serde(default)]
    build: Option<BuildSettings>,
    /// A new secret, or `""` to turn webhooks off.
    #[serde(default)]
    webhook_secret: Option<String>,
    /// `true`: a new deploy hook URL (replacing any earlier one); `false`: none.
    #[serde(default)]
    deploy_hook: Option<bool>,
    /// HSTS max-age in seconds on the project's HTTPS responses; `0` turns it off.
    #[serde(default)]
    hsts_max_age_secs: Option<u64>,
    /// Seconds a replaced production deployment's hashed assets stay served; `0` turns skew
    /// protection off.
    #[serde(default)]
    skew_protection_secs: Option<u64>,
    /// Variables and secrets per environment, each sent whole (a secret with an empty value
    /// keeps its stored value): `production` is the same as `build`'s, `preview` is laid over
    /// production's for every other build.
    #[serde(default)]
    environments: Option<EnvironmentsUpdate>,
    /// Visitor protection (see [`super::protection`]); `null` turns it off.
    #[serde(default, deserialize_with = "present")]
    protection: Option<Value>,
    /// `{"token", "repository"?}`: commit statuses and pull request comments on GitHub;
    /// `null` disconnects.
    #[serde(default, deserialize_with = "present")]
    github: Option<Value>,
    /// Preview deployments kept; `0` keeps them all.
    #[serde(default)]
    preview_retention: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GithubUpdate {
    token: String,
    #[serde(default)]
    repository: Option<String>,
}

/// The GitHub connection a settings change asks for (`None`: disconnect), checked.
fn github_link(value: Value, repo_url: &str) -> Result<Option<GithubLink>, ApiError> {
    if value.is_null() {
        return Ok(None);
    }
    let bad = |m: String| ApiError::bad_request("invalid_github", m);
    let u: GithubUpdate =
        serde_json::from_value(value).map_err(|e| bad(format!("invalid github settings: {e}")))?;
    let token = u.token.trim();
    if token.is_empty() || token.len() > 512 || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad("the GitHub token is 1-512 printable characters".into()));
    }
    let repository = match u.repository {
        Some(r) if valid_repository(r.trim()) => r.trim().to_owned(),
        Some(r) => return Err(bad(format!("{r:?} is not a repository's owner/name"))),
        None => github_repository(repo_url).ok_or_else(|| {
            bad("the project's repository is not on github.com: give \"repository\": \"owner/name\"".into())
        })?,
    };
    Ok(Some(GithubLink {
        token: token.to_owned(),
        repository,
    }))
}

/// A field that is present, `null` included (`Some(Value::Null)`), apart from one left out.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct EnvironmentsUpdate {
    #[serde(default)]
    production: Option<EnvVars>,
    #[serde(default)]
    preview: Option<EnvVars>,
}

pub(super) async fn update_project(
    State(cp): State<ControlPlane>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let req: ProjectUpdate = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request("invalid_body", format!("invalid settings: {e}")))?;
    if let Some(b) = req.production_branch.as_deref().filter(|b| !b.is_empty()) {
        validate_git_ref(b).map_err(|e| ApiError::bad_request("invalid_ref", e))?;
    }
    if let Some(secret) = req.webhook_secret.as_deref().filter(|s| !s.is_empty()) {
        validate_webhook_secret(secret)?;
    }
    let hsts = match req.hsts_max_age_secs {
        None => None,
        Some(0) => Some(None),
        Some(n) if n <= u64::from(crate::projects::HSTS_MAX_AGE_LIMIT) => Some(Some(n as u32)),
        Some(n) => {
            return Err(ApiError::bad_request(
                "invalid_hsts",
                format!(
                    "hsts_max_age_secs {n} is more than {} (two years); 0 turns HSTS off",
                    crate::projects::HSTS_MAX_AGE_LIMIT
                ),
            ))
        }
    };
    let skew = match req.skew_protection_secs {
        None => None,
        Some(n) if n <= u64::from(crate::projects::SKEW_WINDOW_LIMIT_SECS) => Some(n as u32),
        Some(n) => {
            return Err(ApiError::bad_request(
                "invalid_skew_protection",
                format!(
                "skew_protection_secs {n} is more than {} (a week); 0 turns skew protection off",
                crate::projects::SKEW_WINDOW_LIMIT_SECS
            ),
            ))
        }
    };
    let protection = match req.protection.clone() {
        Some(value) => Some(ProtectionChange::parse(value).await?),
        None => None,
    };
    let retention = match req.preview_retention {
        None => None,
        Some(0) => Some(None),
        Some(n) if n <= u64::from(crate::retention::RETENTION_LIMIT) => Some(Some(n as u32)),
        Some(n) => {
            return Err(ApiError::bad_request(
                "invalid_retention",
                format!(
                    "preview_retention {n} is more than {}; 0 keeps every preview",
                    crate::retention::RETENTION_LIMIT
                ),
            ))
        }
    };
    let mut bypass_token = None;
    let github = match req.github.clone() {
        Some(value) => {
            let current = lookup_project(&cp, &name).await?;
            Some(github_link(value, &current.repo)?)
        }
        None => None,
    };
    let max_timeout = cp.config.limits.timeout_secs;
    let hook_secret = {
        use rand::distr::{Alphanumeric, SampleString};
        Alphanumeric.sample_string(&mut rand::rng(), 32)
    };
    let project = cp
        .records
        .update_project(&name, |p| {
            if let Some(build) = req.build.clone() {
                let next = p.build.replaced_by(build);
                next.validate(max_timeout)
                    .map_err(|e| ApiError::bad_request("invalid_build", e))?;
                p.build = next;
            }
            if let Some(change) = &protection {
                bypass_token = change.apply(p)?;
            }
            if let Some(link) = &github {
                p.github.clone_from(link);
            }
            if let Some(keep) = retention {
                p.preview_retention = keep;
            }
            if let Some(envs) = &req.environments {
                if let Some(production) = envs.production.clone() {
                    let vars = EnvVars {
                        env: p.build.env.clone(),
                        secrets: p.build.secrets.clone(),
                    }
                    .replaced_by(production);
                    let mut next = p.build.clone();
                    (next.env, next.secrets) = (vars.env, vars.secrets);
                    next.validate(max_timeout)
                        .map_err(|e| ApiError::bad_request("invalid_env", e))?;
                    p.build = next;
                }
                if let Some(preview) = envs.preview.clone() {
                    let next = p.preview_env.replaced_by(preview);
                    next.validate()
                        .map_err(|e| ApiError::bad_request("invalid_env", e))?;
                    p.preview_env = next;
                }
            }
            if let Some(branch) = req.production_branch.clone() {
                p.production_branch = Some(branch).filter(|b| !b.is_empty());
            }
            if let Some(secret) = req.webhook_secret.clone() {
                p.webhook_secret = Some(secret).filter(|s| !s.is_empty());
            }
            if let Some(hsts) = hsts {
                p.hsts_max_age_secs = hsts;
            }
            if let Some(skew) = skew {
                p.skew_protection_secs = Some(skew);
            }
            match req.deploy_hook {
                Some(true) => p.deploy_hook = Some(hook_secret.clone()),
                Some(false) => p.deploy_hook = None,
                None => {}
            }
            Ok::<_, ApiError>(())
        })
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no project {name:?}")))?;
    tracing::info!(project = %name, "settings changed");
    if let (Some(_), Some(sweeper)) = (retention, &cp.retention) {
        sweeper.sweep_later(&name);
    }
    let mut body = project_json(&cp, &project);
    if let Some(token) = bypass_token {
        // Shown this once: only its hash is kept.
        body["protection"]["bypass_token_value"] = json!(token);
    }
    Ok(Json(body))
}

/// Removes a project: `<name>.<domain>` stops resolving at once on every edge; its deployments
/// stay, served at their own addresses, until they are deleted.
pub(super) async fn delete_project(
    State(cp): State<ControlPlane>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    if !cp.records.delete_project(&name).await? {
        return Err(ApiError::not_found(format!("no project {name:?}")));
    }
    tracing::info!(project = %name, "project deleted");
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PromoteRequest {
    deployment: String,
}

/// Moves the project's alias to a ready deployment of the project: promote, or roll back to an
/// earlier one. Nothing is rebuilt or copied.
pub(super) async fn promote(
    State(cp): State<ControlPlane>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let project = lookup_project(&cp, &name).await?;
    let req: PromoteRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request("invalid_body", format!("invalid promote request: {e}"))
    })?;
    let d = lookup(&cp, &req.deployment).await?;
    if d.project.as_deref() != Some(project.name.as_str()) {
        return Err(ApiError::conflict(
            "other_project",
            format!(
                "deployment {} does not belong to project {}",
                d.id, project.name
            ),
        ));
    }
    if d.status != DeploymentStatus::Ready {
        return Err(ApiError::conflict(
            "not_ready",
            format!(
                "deployment {} is {:?}, only ready deployments can serve production",
                d.id, d.status
            )
            .to_lowercase(),
        ));
    }
    let project = cp
        .records
        .set_production(&project.name, &d.id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no project {name:?}")))?;
    tracing::info!(project = %project.name, id = %d.id, "production moved");
    Ok(Json(project_json(&cp, &project)))
}

/// Moves the project's alias back to its previous production deployment (still ready).
pub(super) async fn rollback(
    State(cp): State<ControlPlane>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let before = lookup_project(&cp, &name).await?;
    let after = cp
        .records
        .rollback(&name)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no project {name:?}")))?;
    if after.production == before.production {
        return Err(ApiError::conflict(
            "nothing_to_roll_back",
            format!("project {name} has no earlier ready production deployment"),
        ));
    }
    tracing::info!(project = %name, to = ?after.production, "rolled back");
    Ok(Json(project_json(&cp, &after)))
}
