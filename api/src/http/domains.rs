//! A project's custom domains: `POST /api/projects/{name}/domains {"domain"}` → 201,
//! `GET /api/projects/{name}/domains` → `[{domain, status, error?, not_after_unix_ms?}]`,
//! `DELETE /api/projects/{name}/domains/{domain}` → 204 (see [`crate::domains`]).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::domains::{CustomDomain, DomainRefusal};
use crate::error::ApiError;
use crate::{now_ms, ControlPlane};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DomainRequest {
    domain: String,
}

fn refusal(e: DomainRefusal) -> ApiError {
    let message = e.to_string();
    match e {
        DomainRefusal::Invalid(_) => ApiError::bad_request("invalid_domain", message),
        DomainRefusal::TooMany => ApiError::bad_request("too_many_domains", message),
        DomainRefusal::NoProject(_) | DomainRefusal::NotFound(_) => ApiError::not_found(message),
        DomainRefusal::Taken { .. } => ApiError::conflict("domain_taken", message),
        DomainRefusal::Exists(_) => ApiError::conflict("domain_exists", message),
        DomainRefusal::Store(e) => e.into(),
    }
}

pub(super) fn domain_json(d: &CustomDomain) -> Value {
    let mut v = json!({"domain": d.domain, "status": d.status});
    if let Some(e) = &d.error {
        v["error"] = json!(e);
    }
    if let Some(t) = d.not_after_unix_ms {
        v["not_after_unix_ms"] = json!(t);
    }
    v
}

pub(super) async fn add_domain(
    State(cp): State<ControlPlane>,
    Path(name): Path<String>,
    Json(req): Json<DomainRequest>,
) -> Result<Response, ApiError> {
    let d = cp
        .records
        .add_domain(&name, &req.domain, &cp.config.public.domain, now_ms())
        .await
        .map_err(refusal)?;
    tracing::info!(project = %name, domain = %d.domain, "custom domain added");
    cp.domain_added.notify_one();
    Ok((StatusCode::CREATED, Json(domain_json(&d))).into_response())
}

pub(super) async fn list_domains(
    State(cp): State<ControlPlane>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    if cp.records.project(&name).await?.is_none() {
        return Err(ApiError::not_found(format!("no project {name:?}")));
    }
    let list: Vec<Value> = cp
        .records
        .project_domains(&name)
        .await?
        .iter()
        .map(domain_json)
        .collect();
    Ok(Json(Value::Array(list)))
}

pub(super) async fn remove_domain(
    State(cp): State<ControlPlane>,
    Path((name, domain)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    if cp.records.project(&name).await?.is_none() {
        return Err(ApiError::not_found(format!("no project {name:?}")));
    }
    cp.records
        .remove_domain(&name, &domain, &cp.config.public.domain)
        .await
        .map_err(refusal)?;
    tracing::info!(project = %name, %domain, "custom domain removed");
    if let Some(certs) = &cp.certs {
        let normalized = gitdeploy_core::domain::normalize(&domain, &cp.config.public.domain)
            .unwrap_or(domain.clone());
        if let Err(e) = certs.delete_certificate(&normalized).await {
            tracing::warn!(%domain, "the removed domain's certificate stays in the store: {e}");
        }
    }
    Ok(StatusCode::NO_CONTENT)
}
