//! Routes of the deploy API.
//!
//! ```text
//! POST /api/deployments            {"repo", "ref"?, "project"?, "serving"?: {"spa", "clean_urls"}} → 202 {id, url, status, logs_url}
//! POST /deploy                     same (the original route)
//! GET  /api/deployments            recent deployments, newest first
//! GET  /api/deployments/{id}       one deployment
//! DELETE /api/deployments/{id}     remove a finished deployment and its files (not production)
//! GET  /api/deployments/{id}/logs  NDJSON log records so far (?since=N); with ?follow=1,
//!                                  Server-Sent Events to the end (resumes after Last-Event-ID)
//! GET  /api/deployments/{id}/logs/ws  WebSocket: backlog, live lines, final record, close
//!                                  (?since=N; ?batch=1: a text frame may carry several
//!                                  records, one JSON object per line)
//! POST /api/deployments/{id}/cancel  stop a queued or running build
//! POST /api/projects               {"name", "repo", "production_branch"?} → 201
//! GET  /api/projects               projects with their production URL and deployment
//! GET  /api/projects/{name}        one project and its deployments
//! PATCH /api/projects/{name}       {"production_branch"?, "build"?, "webhook_secret"?, "deploy_hook"?}
//! POST /api/hooks/deploy/{name}/{secret}  deploy hook: builds the production branch
//! DELETE /api/projects/{name}      remove a project (its deployments stay at their own URLs)
//! POST /api/projects/{name}/promote {"deployment": id}: move production (promote or roll back)
//! POST /api/projects/{name}/rollback  back to the previous production deployment
//! GET  /api/health                 liveness
//! ```

use axum::body::{Body, Bytes};
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use gitdeploy_core::host::is_site_label;
use gitdeploy_core::id::looks_like_deployment_id;
use gitdeploy_core::job::{validate_git_ref, BuildSettings, ServingOptions};
use gitdeploy_core::repo::validate_repo_url;
use gitdeploy_core::{BuildJob, DeploymentId, DeploymentStatus};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::projects::{Project, ProjectError};
use crate::runner::SubmitError;
use crate::store::Deployment;
use crate::webhooks;
use crate::{now_ms, ControlPlane};

/// Largest request body accepted by the API.
const MAX_BODY: usize = 64 * 1024;
/// Deployments returned by the listing.
const LIST_LIMIT: usize = 100;

pub(crate) fn router(cp: ControlPlane) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/assets/{file}", get(crate::dashboard::asset))
        .route("/api/health", get(|| async { Json(json!({"ok": true})) }))
        .route("/api/openapi.json", get(openapi))
        .route(
            "/api/deployments",
            post(create_deployment).get(list_deployments),
        )
        .route("/deploy", post(create_deployment))
        .route(
            "/api/deployments/{id}",
            get(show_deployment).delete(delete_deployment),
        )
        .route("/api/deployments/{id}/logs", get(read_logs))
        .route("/api/deployments/{id}/cancel", post(cancel_deployment))
        .route("/api/deployments/{id}/logs/ws", get(follow_logs_ws))
        .route("/api/projects", post(create_project).get(list_projects))
        .route(
            "/api/projects/{name}",
            get(show_project)
                .patch(update_project)
                .delete(delete_project),
        )
        .route("/api/projects/{name}/promote", post(promote))
        .route("/api/projects/{name}/rollback", post(rollback))
        .route("/api/hooks/github", post(github_hook))
        .route("/api/hooks/deploy/{name}/{secret}", post(deploy_hook))
        .fallback(|| async { ApiError::not_found("no such route") })
        .layer(axum::middleware::from_fn_with_state(cp.clone(), limit_rate))
        .layer(axum::middleware::from_fn_with_state(
            cp.clone(),
            require_token,
        ))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn(crate::error::json_errors))
        .with_state(cp)
}

/// The API's OpenAPI document (kept in step with [`router`] by a test).
const OPENAPI: &str = include_str!("../openapi.json");

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

/// The dashboard for browsers; a pointer to the API for clients that ask for JSON.
async fn index(State(cp): State<ControlPlane>, headers: axum::http::HeaderMap) -> Response {
    let wants_json = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if wants_json {
        return Json(json!({
            "service": "gitdeploy",
            "deploy": cp.config.public.api("/api/deployments"),
            "openapi": cp.config.public.api("/api/openapi.json"),
        }))
        .into_response();
    }
    crate::dashboard::index(headers).await
}

/// With a token configured, every request but the health check, the dashboard's files and the
/// webhook (signed on its own) needs it, as
/// `Authorization: Bearer <token>` or (for EventSource and WebSocket clients, which cannot set
/// headers) an `access_token` query parameter. Compared by SHA-256 in constant time.
async fn require_token(
    State(cp): State<ControlPlane>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let Some(expected) = cp.config.token_sha256 else {
        return next.run(req).await;
    };
    // Webhooks carry their own authentication (a signature over the body).
    let path = req.uri().path();
    if matches!(
        path,
        "/" | "/api/health" | "/api/openapi.json" | "/api/hooks/github"
    ) || path.starts_with("/assets/")
        || path.starts_with("/api/hooks/deploy/")
    {
        return next.run(req).await;
    }
    let from_header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let from_query = req.uri().query().and_then(|q| {
        q.split('&')
            .find_map(|kv| kv.strip_prefix("access_token="))
            .map(|v| {
                percent_encoding::percent_decode_str(v)
                    .decode_utf8_lossy()
                    .into_owned()
            })
    });
    match from_header.or(from_query) {
        Some(token) if token_matches(&token, &expected) => next.run(req).await,
        _ => ApiError::unauthorized().into_response(),
    }
}

/// Mutations and log streams count against the client's rate (reads of state do not).
async fn limit_rate(
    State(cp): State<ControlPlane>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let costly = req.method() != axum::http::Method::GET
        || (req.uri().path().ends_with("/logs/ws")
            || req.uri().query().is_some_and(|q| q.contains("follow=")));
    let client = req
        .extensions()
        .get::<crate::ratelimit::ClientAddr>()
        .copied();
    if let (true, Some(limiter), Some(client)) = (costly, &cp.limiter, client) {
        if let Err(wait) = limiter.check(client.0, std::time::Instant::now()) {
            let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
            return ApiError::too_many_retry(
                format!("too many requests from {}: slow down", client.0),
                secs,
            )
            .into_response();
        }
    }
    next.run(req).await
}

/// SHA-256 of a token, as the configuration keeps it.
pub fn token_sha256(token: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(token.as_bytes()).into()
}

/// Constant-time comparison of a presented token with the stored hash.
fn token_matches(token: &str, expected: &[u8; 32]) -> bool {
    let presented = token_sha256(token);
    presented
        .iter()
        .zip(expected)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
}

/// The body of a deploy request.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeployRequest {
    repo: String,
    #[serde(default, rename = "ref")]
    git_ref: Option<String>,
    #[serde(default)]
    project: Option<String>,
    #[serde(default)]
    serving: ServingOptions,
    #[serde(default)]
    build: BuildSettings,
}

fn parse_deploy_request(body: &[u8]) -> Result<DeployRequest, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(
            "invalid_body",
            "the request body must be a JSON object with a \"repo\" field",
        ));
    }
    serde_json::from_slice(body).map_err(|e| {
        let message = e.to_string();
        let code = if message.starts_with("missing field") {
            "missing_field"
        } else {
            "invalid_body"
        };
        ApiError::bad_request(code, format!("invalid deploy request: {message}"))
    })
}

async fn create_deployment(
    State(cp): State<ControlPlane>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req = parse_deploy_request(&body)?;
    let repo = req.repo.trim().to_owned();
    validate_repo_url(&repo, &cp.config.allowed_repo_schemes)
        .map_err(|e| ApiError::bad_request("invalid_repo", e))?;
    if let Some(r) = &req.git_ref {
        validate_git_ref(r).map_err(|e| ApiError::bad_request("invalid_ref", e))?;
    }
    if let Some(p) = &req.project {
        validate_project_name(p)?;
    }
    req.build
        .validate(cp.config.limits.timeout_secs)
        .map_err(|e| ApiError::bad_request("invalid_build", e))?;
    // A project's saved settings fill what the request leaves out.
    let build = match &req.project {
        Some(name) => {
            let project = cp
                .records
                .ensure_project(name, &repo, req.git_ref.as_deref(), now_ms())
                .await
                .map_err(project_error)?;
            project.build.overlay(&req.build)
        }
        None => req.build,
    };
    build
        .validate(cp.config.limits.timeout_secs)
        .map_err(|e| ApiError::bad_request("invalid_build", e))?;
    let deployment =
        queue_deployment(&cp, repo, req.git_ref, req.project, req.serving, build).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(deployment_json(&cp, &deployment)),
    )
        .into_response())
}

/// Records a validated deployment and queues its build; nothing is recorded when the queue is
/// full.
async fn queue_deployment(
    cp: &ControlPlane,
    repo: String,
    git_ref: Option<String>,
    project: Option<String>,
    serving: ServingOptions,
    build: BuildSettings,
) -> Result<Deployment, ApiError> {
    let place = cp.queue.reserve().map_err(submit_error)?;
    let stored_repo = gitdeploy_core::repo::redact_repo_url(&repo);
    let deployment = Deployment {
        id: DeploymentId::random(),
        project,
        repo_credentials_withheld: stored_repo != repo,
        repo: stored_repo,
        git_ref: git_ref.clone(),
        serving: serving.clone(),
        build: build.without_secret_values(),
        status: DeploymentStatus::Queued,
        error: None,
        commit: None,
        created_unix_ms: now_ms(),
        started_unix_ms: None,
        finished_unix_ms: None,
        runner: Some(cp.queue.instance().to_owned()),
        cancel_requested: false,
    };
    let id = deployment.id.clone();
    cp.bus.create(&id).await?;
    cp.records.insert(deployment.clone()).await?;
    place
        .submit(BuildJob {
            deployment: id.clone(),
            repo,
            git_ref,
            serving,
            build,
            limits: cp.config.limits.clone(),
            cache_key: Some(deployment.cache_key()),
        })
        .map_err(submit_error)?;
    tracing::info!(%id, repo = %deployment.repo_display(), "deployment queued");
    Ok(deployment)
}

fn submit_error(e: SubmitError) -> ApiError {
    match e {
        SubmitError::Full(_) => ApiError::too_many(e.to_string()),
        SubmitError::Stopped => ApiError::unavailable(e.to_string()),
    }
}

fn deployment_json(cp: &ControlPlane, d: &Deployment) -> Value {
    let urls = &cp.config.public;
    json!({
        "id": d.id,
        "url": urls.site(d.id.as_str()),
        "status": d.status,
        "project": d.project,
        "project_url": d.project.as_deref().map(|p| urls.site(p)),
        "repo": d.repo_display(),
        "ref": d.git_ref,
        "serving": d.serving,
        "build": d.build,
        "commit": d.commit,
        "error": d.error,
        "created_unix_ms": d.created_unix_ms,
        "started_unix_ms": d.started_unix_ms,
        "finished_unix_ms": d.finished_unix_ms,
        "logs_url": urls.api(&format!("/api/deployments/{}/logs", d.id)),
        "logs_ws_url": urls.api(&format!("/api/deployments/{}/logs/ws", d.id)).replacen("http", "ws", 1),
    })
}

async fn lookup(cp: &ControlPlane, raw: &str) -> Result<Deployment, ApiError> {
    let found = match DeploymentId::parse(raw) {
        Some(id) => cp.records.get(&id).await?,
        None => None,
    };
    found.ok_or_else(|| ApiError::not_found(format!("no deployment {raw:?}")))
}

async fn list_deployments(State(cp): State<ControlPlane>) -> Result<Json<Value>, ApiError> {
    let list: Vec<Value> = cp
        .records
        .list(LIST_LIMIT)
        .await?
        .iter()
        .map(|d| deployment_json(&cp, d))
        .collect();
    Ok(Json(json!({ "deployments": list })))
}

async fn show_deployment(
    State(cp): State<ControlPlane>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let d = lookup(&cp, &id).await?;
    Ok(Json(deployment_json(&cp, &d)))
}

fn project_error(e: ProjectError) -> ApiError {
    match e {
        ProjectError::Exists(_) => ApiError::conflict("project_exists", e.to_string()),
        ProjectError::OtherRepo { .. } => {
            ApiError::conflict("project_repo_mismatch", e.to_string())
        }
        ProjectError::Io(e) => ApiError::internal(e),
    }
}

fn validate_project_name(name: &str) -> Result<(), ApiError> {
    if is_site_label(name) && !looks_like_deployment_id(name) && name != "api" {
        return Ok(());
    }
    Err(ApiError::bad_request(
        "invalid_project",
        format!(
            "{name:?} is not a valid project name: use 1-63 lowercase letters, digits and \
             hyphens, not 12 letters and digits (that shape is kept for deployment ids), not \"api\""
        ),
    ))
}

fn project_json(cp: &ControlPlane, p: &Project) -> Value {
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
    })
}

/// The body of a project creation.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProjectRequest {
    name: String,
    repo: String,
    #[serde(default)]
    production_branch: Option<String>,
    #[serde(default)]
    build: BuildSettings,
    #[serde(default)]
    webhook_secret: Option<String>,
}

fn validate_webhook_secret(secret: &str) -> Result<(), ApiError> {
    if secret.len() < 16 || secret.len() > 256 {
        return Err(ApiError::bad_request(
            "invalid_secret",
            "webhook_secret must be 16-256 characters",
        ));
    }
    Ok(())
}

async fn create_project(State(cp): State<ControlPlane>, body: Bytes) -> Result<Response, ApiError> {
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
            name: req.name,
            repo,
            production_branch: req.production_branch,
            production: None,
            history: Vec::new(),
            build: req.build,
            webhook_secret: req.webhook_secret,
            deploy_hook: None,
            created_unix_ms: now_ms(),
        })
        .await
        .map_err(project_error)?;
    Ok((StatusCode::CREATED, Json(project_json(&cp, &project))).into_response())
}

async fn list_projects(State(cp): State<ControlPlane>) -> Result<Json<Value>, ApiError> {
    let list: Vec<Value> = cp
        .records
        .projects()
        .await?
        .iter()
        .map(|p| project_json(&cp, p))
        .collect();
    Ok(Json(json!({ "projects": list })))
}

async fn lookup_project(cp: &ControlPlane, name: &str) -> Result<Project, ApiError> {
    cp.records
        .project(name)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no project {name:?}")))
}

async fn show_project(
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
struct ProjectUpdate {
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
}

async fn update_project(
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
            if let Some(branch) = req.production_branch.clone() {
                p.production_branch = Some(branch).filter(|b| !b.is_empty());
            }
            if let Some(secret) = req.webhook_secret.clone() {
                p.webhook_secret = Some(secret).filter(|s| !s.is_empty());
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
    Ok(Json(project_json(&cp, &project)))
}

/// Removes a project: `<name>.<domain>` stops resolving at once on every edge; its deployments
/// stay, served at their own addresses, until they are deleted.
async fn delete_project(
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
struct PromoteRequest {
    deployment: String,
}

/// Moves the project's alias to a ready deployment of the project: promote, or roll back to an
/// earlier one. Nothing is rebuilt or copied.
async fn promote(
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
async fn rollback(
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

/// GitHub push webhook (see [`crate::webhooks`]).
async fn github_hook(
    State(cp): State<ControlPlane>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    let signature = header("x-hub-signature-256");
    if signature.is_empty() {
        return Err(ApiError::unauthorized_with(
            "the webhook is not signed (X-Hub-Signature-256)",
        ));
    }
    let value: Value = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request("invalid_body", format!("the event is not JSON: {e}"))
    })?;
    let repository: webhooks::Repository = serde_json::from_value(value["repository"].clone())
        .map_err(|e| {
            ApiError::bad_request(
                "invalid_body",
                format!("the event names no repository: {e}"),
            )
        })?;
    let urls = repository.urls();
    let candidates: Vec<Project> = cp
        .records
        .projects()
        .await?
        .into_iter()
        .filter(|p| p.webhook_secret.is_some() && urls.contains(&webhooks::normalize_repo(&p.repo)))
        .collect();
    if candidates.is_empty() {
        return Err(ApiError::not_found(
            "no project with a webhook secret deploys this repository",
        ));
    }
    let verified: Vec<Project> = candidates
        .into_iter()
        .filter(|p| {
            p.webhook_secret
                .as_deref()
                .is_some_and(|s| webhooks::signature_valid(s, &body, signature))
        })
        .collect();
    if verified.is_empty() {
        return Err(ApiError::unauthorized_with(
            "the webhook signature does not match",
        ));
    }
    let names: Vec<&str> = verified.iter().map(|p| p.name.as_str()).collect();
    match header("x-github-event") {
        "ping" => return Ok(Json(json!({"ok": true, "projects": names})).into_response()),
        "push" => {}
        other => {
            return Ok(
                Json(json!({"ignored": format!("{other:?} events are not deployed")}))
                    .into_response(),
            )
        }
    }
    let push: webhooks::PushEvent = serde_json::from_value(value)
        .map_err(|e| ApiError::bad_request("invalid_body", format!("not a push event: {e}")))?;
    let Some(branch) = push
        .git_ref
        .strip_prefix("refs/heads/")
        .filter(|_| !push.deleted)
    else {
        return Ok(
            Json(json!({"ignored": "only pushes to branches are deployed"})).into_response(),
        );
    };
    validate_git_ref(branch).map_err(|e| ApiError::bad_request("invalid_ref", e))?;
    let mut deployments = Vec::new();
    for project in verified {
        // A project without a production branch follows the repository's default branch, which
        // is what a deploy without a ref builds.
        let is_default = push.repository.default_branch.as_deref() == Some(branch);
        let git_ref =
            (project.production_branch.is_some() || !is_default).then(|| branch.to_owned());
        let d = queue_deployment(
            &cp,
            project.repo.clone(),
            git_ref,
            Some(project.name.clone()),
            ServingOptions::default(),
            project.build.clone(),
        )
        .await?;
        deployments.push(deployment_json(&cp, &d));
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "deployments": deployments })),
    )
        .into_response())
}

/// A project's deploy hook: a secret URL (Vercel / Netlify style) that builds the production
/// branch with the project's settings. An unknown project and a wrong secret look the same.
async fn deploy_hook(
    State(cp): State<ControlPlane>,
    Path((name, secret)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let unknown = || ApiError::not_found("no such deploy hook");
    let project = cp.records.project(&name).await?.ok_or_else(unknown)?;
    let expected = project.deploy_hook.as_deref().ok_or_else(unknown)?;
    if !token_matches(&secret, &token_sha256(expected)) {
        return Err(unknown());
    }
    let d = queue_deployment(
        &cp,
        project.repo.clone(),
        project.production_branch.clone(),
        Some(project.name.clone()),
        ServingOptions::default(),
        project.build.clone(),
    )
    .await?;
    tracing::info!(project = %project.name, id = %d.id, "deploy hook");
    Ok((StatusCode::ACCEPTED, Json(deployment_json(&cp, &d))).into_response())
}

/// Removes a finished deployment: its files, log and record. Refused while it builds and while
/// it is its project's production deployment.
async fn delete_deployment(
    State(cp): State<ControlPlane>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let d = lookup(&cp, &id).await?;
    if !d.status.is_terminal() {
        return Err(ApiError::conflict(
            "still_building",
            format!(
                "deployment {} is {}: cancel it first",
                d.id,
                status_name(d.status)
            ),
        ));
    }
    if let Some(name) = &d.project {
        // Out of the project's history, unless it serves production (checked in the same
        // commit, so a concurrent promote cannot slip in between).
        cp.records
            .update_project(name, |p| {
                if p.production.as_ref() == Some(&d.id) {
                    return Err(ApiError::conflict(
                        "is_production",
                        format!(
                            "deployment {} serves project {name}: promote another deployment first",
                            d.id
                        ),
                    ));
                }
                p.history.retain(|h| h != &d.id);
                Ok(())
            })
            .await?;
    }
    if let Some(storage) = &cp.storage {
        let removed = storage.delete_deployment(&d.id).await.map_err(|e| {
            ApiError::unavailable(format!("cannot delete the stored files (try again): {e}"))
        })?;
        tracing::info!(id = %d.id, objects = removed, "deployment files deleted");
    }
    cp.bus.remove(&d.id).await?;
    cp.records.delete(&d.id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Cancels a queued or running build.
async fn cancel_deployment(
    State(cp): State<ControlPlane>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let mut d = lookup(&cp, &id).await?;
    let canceling = || {
        Ok((
            StatusCode::ACCEPTED,
            Json(json!({"id": d.id, "canceling": true})),
        )
            .into_response())
    };
    if !d.status.is_terminal() && cp.queue.cancel(&d.id) {
        return canceling();
    }
    // Held by another edge (or an ECS task): its runner stops it at its next heartbeat.
    if !d.status.is_terminal() {
        let flagged = cp
            .records
            .update(&d.id, |rec| {
                if !rec.status.is_terminal() {
                    rec.cancel_requested = true;
                }
                Ok::<_, ApiError>(())
            })
            .await?;
        match flagged {
            Some(rec) if !rec.status.is_terminal() => return canceling(),
            Some(rec) => d = rec,
            None => return Err(ApiError::not_found(format!("no deployment {id:?}"))),
        }
    }
    Err(ApiError::conflict(
        "not_cancelable",
        format!(
            "deployment {} is {}; only queued or building deployments can be canceled",
            d.id,
            status_name(d.status)
        ),
    ))
}

fn status_name(s: DeploymentStatus) -> String {
    serde_json::to_value(s)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

#[derive(Deserialize)]
struct SinceQuery {
    #[serde(default)]
    since: u64,
    /// Stream as Server-Sent Events until the final record.
    #[serde(default)]
    follow: Option<String>,
    /// WebSocket: records that are ready together share one text frame, newline-separated.
    #[serde(default)]
    batch: Option<String>,
}

async fn read_logs(
    State(cp): State<ControlPlane>,
    Path(id): Path<String>,
    Query(q): Query<SinceQuery>,
    headers: axum::http::HeaderMap,
) -> Result<Response, ApiError> {
    let d = lookup(&cp, &id).await?;
    if q.follow.as_deref().is_some_and(|f| f == "1" || f == "true") {
        // A reconnecting EventSource sends the last id it saw: resume right after it.
        let resume = headers
            .get("last-event-id")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|seq| seq + 1);
        let since = resume.unwrap_or(0).max(q.since);
        let follower = follow_log(&cp, &d, since).await?;
        return Ok(sse_log(follower).into_response());
    }
    let records = match archived_log(&cp, &d).await? {
        Some(all) => all.into_iter().filter(|r| r.seq >= q.since).collect(),
        None => cp.bus.read(&d.id, q.since).await?,
    };
    let mut body = Vec::new();
    for r in records {
        serde_json::to_writer(&mut body, &r).map_err(ApiError::internal)?;
        body.push(b'\n');
    }
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from(body),
    )
        .into_response())
}

async fn follow_logs_ws(
    State(cp): State<ControlPlane>,
    Path(id): Path<String>,
    Query(q): Query<SinceQuery>,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let d = lookup(&cp, &id).await?;
    let follower = follow_log(&cp, &d, q.since).await?;
    let batch = q.batch.as_deref().is_some_and(|b| b == "1" || b == "true");
    Ok(ws.on_upgrade(move |socket| stream_log(socket, follower, batch)))
}

/// The archived log of a finished deployment whose log the bus no longer holds (Redis streams
/// expire after the build); `None` when the bus has it (or there is no archive).
async fn archived_log(
    cp: &ControlPlane,
    d: &Deployment,
) -> Result<Option<Vec<gitdeploy_core::LogRecord>>, ApiError> {
    let Some(archive) = &cp.archive else {
        return Ok(None);
    };
    if !d.status.is_terminal() || !cp.bus.read(&d.id, 0).await?.is_empty() {
        return Ok(None);
    }
    let Some(ndjson) = archive.fetch(&d.id).await.map_err(ApiError::internal)? else {
        return Ok(None);
    };
    let records = ndjson
        .split(|b| *b == b'\n')
        .filter(|line| !line.is_empty())
        .map(serde_json::from_slice)
        .collect::<Result<Vec<gitdeploy_core::LogRecord>, _>>()
        .map_err(ApiError::internal)?;
    Ok(Some(records))
}

/// A follower of the deployment's log: live from the bus, or replayed from the archive.
async fn follow_log(
    cp: &ControlPlane,
    d: &Deployment,
    since: u64,
) -> Result<crate::logbus::Follower, ApiError> {
    if let Some(all) = archived_log(cp, d).await? {
        let rest = all.into_iter().filter(|r| r.seq >= since).collect();
        return Ok(crate::logbus::Follower::new(
            Box::new(crate::logbus::ArchivedLog(rest)),
            since,
            crate::metrics::ApiMetrics::unregistered(),
        ));
    }
    Ok(cp.bus.follow(&d.id, since).await?)
}

/// The log as Server-Sent Events: one `log` event per record with `id: <seq>`, ending after the
/// final record.
fn sse_log(follower: crate::logbus::Follower) -> impl IntoResponse {
    use axum::response::sse::{Event, KeepAlive, Sse};
    let stream = futures_util::stream::unfold(follower, |mut f| async move {
        match f.next().await {
            Ok(Some(record)) => {
                let data = serde_json::to_string(&record).unwrap_or_default();
                let event = Event::default()
                    .id(record.seq.to_string())
                    .event("log")
                    .data(data);
                Some((Ok::<_, std::convert::Infallible>(event), f))
            }
            Ok(None) => None,
            Err(e) => {
                tracing::error!("log follower failed: {e}");
                None
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// A batch frame is sent once it holds this many bytes.
const BATCH_BYTES: usize = 256 << 10;

/// Sends records until the final one, then closes. Ends early when the client goes away.
/// With `batch`, the records of one burst go out as one text frame, one JSON object per line:
/// one frame to encode, send and parse instead of one per line.
async fn stream_log(mut socket: WebSocket, mut follower: crate::logbus::Follower, batch: bool) {
    // A client's read side can end (a half-closed connection, as a proxy may leave it) while it
    // still receives: keep sending until a send fails or the client says close.
    let mut client_reading = true;
    loop {
        tokio::select! {
            next = follower.next_live() => match next {
                Ok(Some(record)) => {
                    // Queue this record and every one already waiting, then write them out
                    // together: one flush per burst instead of one per line.
                    use futures_util::{FutureExt, SinkExt};
                    let mut ended = false;
                    let mut pending = Some(record);
                    let mut queued = 0;
                    let mut lines = String::new();
                    while let Some(live) = pending.take() {
                        // The bus's own JSON when it has it: serialized once, not per follower.
                        let text = match live.json.map(axum::extract::ws::Utf8Bytes::try_from) {
                            Some(Ok(text)) => text,
                            _ => match serde_json::to_string(&live.record) {
                                Ok(text) => text.into(),
                                Err(_) => return,
                            },
                        };
                        queued += 1;
                        if batch {
                            if !lines.is_empty() {
                                lines.push('\n');
                            }
                            lines.push_str(text.as_str());
                            if lines.len() >= BATCH_BYTES {
                                break;
                            }
                        } else if socket.feed(Message::Text(text)).await.is_err() {
                            return;
                        }
                        if queued == 512 {
                            break;
                        }
                        match follower.next_live().now_or_never() {
                            Some(Ok(Some(next))) => pending = Some(next),
                            Some(Ok(None)) => ended = true,
                            Some(Err(e)) => {
                                tracing::error!("log follower failed: {e}");
                                ended = true;
                            }
                            None => {}
                        }
                    }
                    if !lines.is_empty() && socket.feed(Message::Text(lines.into())).await.is_err() {
                        return;
                    }
                    if socket.flush().await.is_err() {
                        return;
                    }
                    if ended {
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::error!("log follower failed: {e}");
                    break;
                }
            },
            incoming = socket.recv(), if client_reading => match incoming {
                // Clients have nothing to say; anything but a close is ignored.
                Some(Ok(Message::Close(_))) => return,
                None | Some(Err(_)) => {
                    tracing::debug!("log client stopped sending; still streaming to it");
                    client_reading = false;
                }
                Some(Ok(_)) => {}
            },
        }
    }
    // Close politely: wait (briefly) for the client's close frame, so the connection is not torn
    // down under a reply that is still in flight.
    if socket.send(Message::Close(None)).await.is_ok() && client_reading {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
            while let Some(Ok(msg)) = socket.recv().await {
                if matches!(msg, Message::Close(_)) {
                    break;
                }
            }
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every route the router serves is documented with its methods, and nothing else is.
    #[test]
    fn openapi_matches_the_router() {
        let doc: Value = serde_json::from_str(OPENAPI).expect("openapi.json is JSON");
        let documented: std::collections::BTreeSet<(String, String)> = doc["paths"]
            .as_object()
            .unwrap()
            .iter()
            .flat_map(|(path, ops)| {
                ops.as_object()
                    .unwrap()
                    .keys()
                    .filter(|k| matches!(k.as_str(), "get" | "post" | "put" | "delete" | "patch"))
                    .map(move |m| (path.clone(), m.clone()))
            })
            .collect();
        // The routes as written in `router` above.
        let source = include_str!("http.rs");
        let body = source
            .split("pub(crate) fn router")
            .nth(1)
            .unwrap()
            .split(".fallback(")
            .next()
            .unwrap();
        let mut served = std::collections::BTreeSet::new();
        for route in body.split(".route(").skip(1) {
            let path = route.split('"').nth(1).unwrap().to_owned();
            for method in ["get", "post", "put", "delete", "patch"] {
                if route.contains(&format!("{method}(")) {
                    served.insert((path.clone(), method.to_owned()));
                }
            }
        }
        assert_eq!(documented, served);
    }

    #[test]
    fn token_checks() {
        let expected = token_sha256("s3cret-token");
        assert!(token_matches("s3cret-token", &expected));
        assert!(!token_matches("s3cret-toke", &expected));
        assert!(!token_matches("", &expected));
    }

    #[test]
    fn deploy_request_errors_name_the_problem() {
        for (body, code) in [
            (&b""[..], "invalid_body"),
            (b"{", "invalid_body"),
            (b"[]", "invalid_body"),
            (b"{}", "missing_field"),
            (b"{\"repo\": 5}", "invalid_body"),
            (b"{\"repo\": \"x\", \"extra\": 1}", "invalid_body"),
        ] {
            let err = parse_deploy_request(body).err().expect("must fail");
            assert_eq!(
                err.code_for_tests(),
                code,
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        let ok = parse_deploy_request(br#"{"repo":"https://h/r","ref":"main"}"#)
            .ok()
            .unwrap();
        assert_eq!(ok.git_ref.as_deref(), Some("main"));
    }
}
