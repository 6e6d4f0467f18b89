//! Routes of the deploy API: the router here, one module per concern (`auth`, `deployments`,
//! `projects`, `hooks`, `logs`, and the JSON `views` they answer with).
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
//! POST /api/deployments/{id}/cancel  stop a queued or running build (or an upload)
//! POST|DELETE /api/deployments/{id}/pin  keep it whatever preview retention says, or not
//! POST /api/deployments            {"source": "local folder", "project"?, "serving"?} → 201,
//!                                  status "uploading": then the upload protocol (`uploads`):
//! POST /api/deployments/{id}/missing   {"files": [{"path","hash","size"}]} → {"missing","stored"}
//! PUT  /api/deployments/{id}/blobs/{hash}  a blob's bytes, checked against the hash → 204
//! POST /api/deployments/{id}/finalize  {"files": [...], "redirects"?, "headers"?} → ready
//! POST /api/projects               {"name", "repo", "production_branch"?} → 201
//! GET  /api/projects               projects with their production URL and deployment
//! GET  /api/projects/{name}        one project and its deployments
//! PATCH /api/projects/{name}       {"production_branch"?, "build"?, "webhook_secret"?, "deploy_hook"?,
//!                                  "hsts_max_age_secs"?, "skew_protection_secs"?}
//! POST /api/hooks/deploy/{name}/{secret}  deploy hook: builds the production branch
//! DELETE /api/projects/{name}      remove a project (its deployments stay at their own URLs)
//! POST /api/projects/{name}/promote {"deployment": id}: move production (promote or roll back)
//! POST /api/projects/{name}/rollback  back to the previous production deployment
//! GET  /api/projects/{name}/traffic  requests, bytes, status classes, top paths: last hour, day
//! POST /api/projects/{name}/domains {"domain"} → 201 {domain, status}: claim a custom domain
//! GET  /api/projects/{name}/domains  [{domain, status, error?, not_after_unix_ms?}]
//! DELETE /api/projects/{name}/domains/{domain}  release it → 204
//! POST /api/projects/{name}/notifications {"url", "events"?, "format"?: "json"|"slack"} → 201
//!                                  {id, url, events, format, secret}: the secret shown once
//! GET  /api/projects/{name}/notifications  its webhooks (URLs masked)
//! DELETE /api/projects/{name}/notifications/{id}  remove one → 204
//! GET  /api/projects/{name}/deliveries  the newest delivery attempts (webhooks, GitHub)
//! POST /api/tokens                 {"name", "scopes": ["read"|"deploy"|"admin"], "project"?} → 201
//!                                  {id, name, scopes, project, token}: the secret, shown once
//! GET  /api/tokens                 named tokens (never their secrets)
//! DELETE /api/tokens/{id}          revoke a token → 204
//! GET  /api/audit                  the newest mutations: who, what, when (?limit=N)
//! POST /api/gc                     delete the blobs no deployment names (after the grace)
//! GET  /api/health                 liveness
//! GET  /api/ready                  readiness: the state store and the storage answer
//! ```

mod auth;
mod deployments;
mod domains;
mod health;
mod hooks;
mod logs;
mod notifications;
mod projects;
mod protection;
mod tokens;
mod traffic;
mod uploads;
mod views;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use crate::error::ApiError;
use crate::ControlPlane;

use auth::{limit_rate, require_token};
use deployments::*;
use domains::*;
use hooks::*;
use logs::*;
use projects::*;
use uploads::*;
use views::*;

/// Largest request body accepted by the API.
const MAX_BODY: usize = 64 * 1024;
/// Largest file list of an upload (`missing`, `finalize`): 20,000 files of long paths.
const MAX_LIST_BODY: usize = 16 << 20;
/// Deployments returned by the listing.
const LIST_LIMIT: usize = 100;

pub(crate) fn router(cp: ControlPlane) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/assets/{file}", get(crate::dashboard::asset))
        .route("/api/health", get(|| async { Json(json!({"ok": true})) }))
        .route("/api/ready", get(health::ready))
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
        .route(
            "/api/deployments/{id}/missing",
            post(missing_blobs).layer(DefaultBodyLimit::max(MAX_LIST_BODY)),
        )
        .route(
            "/api/deployments/{id}/blobs/{hash}",
            axum::routing::put(put_blob).layer(DefaultBodyLimit::disable()),
        )
        .route(
            "/api/deployments/{id}/finalize",
            post(finalize_upload).layer(DefaultBodyLimit::max(MAX_LIST_BODY)),
        )
        .route("/api/deployments/{id}/logs", get(read_logs))
        .route("/api/deployments/{id}/cancel", post(cancel_deployment))
        .route(
            "/api/deployments/{id}/pin",
            post(pin_deployment).delete(pin_deployment),
        )
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
        .route(
            "/api/projects/{name}/traffic",
            get(traffic::project_traffic),
        )
        .route(
            "/api/projects/{name}/domains",
            post(add_domain).get(list_domains),
        )
        .route(
            "/api/projects/{name}/domains/{domain}",
            axum::routing::delete(remove_domain),
        )
        .route(
            "/api/tokens",
            post(tokens::create_token).get(tokens::list_tokens),
        )
        .route(
            "/api/tokens/{id}",
            axum::routing::delete(tokens::revoke_token),
        )
        .route("/api/audit", get(tokens::read_audit))
        .route(
            "/api/projects/{name}/notifications",
            post(notifications::add_notification).get(notifications::list_notifications),
        )
        .route(
            "/api/projects/{name}/notifications/{id}",
            axum::routing::delete(notifications::remove_notification),
        )
        .route(
            "/api/projects/{name}/deliveries",
            get(notifications::list_deliveries),
        )
        .route("/api/gc", post(collect_garbage))
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
const OPENAPI: &str = include_str!("../../openapi.json");

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
#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

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
        let source = include_str!("mod.rs");
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
}
