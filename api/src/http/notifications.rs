//! A project's notification webhooks and its delivery history over HTTP: add one (its signing
//! secret shown once), list them (URLs masked, never a secret), remove one, read what was
//! delivered and how.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::projects::lookup_project;
use crate::error::ApiError;
use crate::events::EventKind;
use crate::notify::webhook::masked;
use crate::targets::{new_secret, new_target_id, Format, NotificationTarget, MAX_TARGETS};
use crate::ControlPlane;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TargetRequest {
    url: String,
    #[serde(default)]
    events: Option<Vec<String>>,
    #[serde(default)]
    format: Format,
}

fn target_json(t: &NotificationTarget) -> Value {
    json!({
        "id": t.id,
        "url": masked(&t.url),
        "events": t.events.iter().map(|e| e.name()).collect::<Vec<_>>(),
        "format": t.format,
        "created_unix_ms": t.created_unix_ms,
    })
}

pub(super) async fn add_notification(
    State(cp): State<ControlPlane>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: TargetRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request("invalid_body", format!("invalid notification: {e}")))?;
    cp.config
        .outbound
        .check_url(req.url.trim())
        .map_err(|e| ApiError::bad_request("invalid_url", e))?;
    let events = match req.events {
        None => EventKind::ALL.to_vec(),
        Some(names) => {
            let mut events = Vec::new();
            for n in &names {
                let kind = EventKind::parse(n).ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_event",
                        format!(
                            "unknown event {n:?}: use queued, ready, failed, canceled, promoted or rolled_back"
                        ),
                    )
                })?;
                if !events.contains(&kind) {
                    events.push(kind);
                }
            }
            if events.is_empty() {
                return Err(ApiError::bad_request(
                    "invalid_event",
                    "a notification needs at least one event",
                ));
            }
            events.sort();
            events
        }
    };
    let target = NotificationTarget {
        id: new_target_id(),
        url: req.url.trim().to_owned(),
        events,
        format: req.format,
        secret: new_secret(),
        created_unix_ms: crate::now_ms(),
    };
    cp.records
        .update_project(&name, |p| {
            if p.notifications.len() >= MAX_TARGETS {
                return Err(ApiError::conflict(
                    "too_many_notifications",
                    format!("a project has at most {MAX_TARGETS} notification webhooks"),
                ));
            }
            p.notifications.push(target.clone());
            Ok(())
        })
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no project {name:?}")))?;
    let mut body = target_json(&target);
    // Shown this once: receivers check X-GitDeploy-Signature-256 with it.
    body["secret"] = json!(target.secret);
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

pub(super) async fn list_notifications(
    State(cp): State<ControlPlane>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let project = lookup_project(&cp, &name).await?;
    let list: Vec<Value> = project.notifications.iter().map(target_json).collect();
    Ok(Json(json!({ "notifications": list })))
}

pub(super) async fn remove_notification(
    State(cp): State<ControlPlane>,
    Path((name, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let mut found = false;
    cp.records
        .update_project(&name, |p| {
            let before = p.notifications.len();
            p.notifications.retain(|t| t.id != id);
            found = p.notifications.len() != before;
            Ok::<_, ApiError>(())
        })
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no project {name:?}")))?;
    if !found {
        return Err(ApiError::not_found(format!("no notification {id:?}")));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
pub(super) struct Limit {
    #[serde(default)]
    limit: Option<usize>,
}

/// The newest delivery attempts of the project (webhooks and GitHub calls), newest first.
pub(super) async fn list_deliveries(
    State(cp): State<ControlPlane>,
    Path(name): Path<String>,
    Query(q): Query<Limit>,
) -> Result<Json<Value>, ApiError> {
    lookup_project(&cp, &name).await?;
    let limit = q.limit.unwrap_or(100).min(crate::journal::DELIVERIES_KEEP);
    let entries = cp
        .journal
        .recent(&crate::journal::deliveries(&name), limit)
        .await?;
    Ok(Json(json!({ "deliveries": entries })))
}
