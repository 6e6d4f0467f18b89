//! Named API tokens and the audit log over HTTP: make a token (its secret shown once), list
//! them (never the secret), revoke one, read the audit log.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::tokens::{validate_name, ApiToken, Caller, Scope};
use crate::ControlPlane;

/// The body of a token request.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TokenRequest {
    name: String,
    scopes: Vec<String>,
    #[serde(default)]
    project: Option<String>,
}

fn token_json(t: &ApiToken) -> Value {
    json!({
        "id": t.id,
        "name": t.name,
        "scopes": t.scopes,
        "project": t.project,
        "created_unix_ms": t.created_unix_ms,
        "created_by": t.created_by,
    })
}

/// Parses scope names; an unknown one or none at all is refused.
fn parse_scopes(names: &[String]) -> Result<Vec<Scope>, ApiError> {
    let mut scopes = Vec::new();
    for name in names {
        let scope = match name.as_str() {
            "read" => Scope::Read,
            "deploy" => Scope::Deploy,
            "admin" => Scope::Admin,
            other => {
                return Err(ApiError::bad_request(
                    "invalid_scope",
                    format!("unknown scope {other:?}: use read, deploy or admin"),
                ))
            }
        };
        if !scopes.contains(&scope) {
            scopes.push(scope);
        }
    }
    if scopes.is_empty() {
        return Err(ApiError::bad_request(
            "invalid_scope",
            "a token needs at least one scope: read, deploy or admin",
        ));
    }
    scopes.sort();
    Ok(scopes)
}

pub(super) async fn create_token(
    State(cp): State<ControlPlane>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Result<Response, ApiError> {
    if matches!(caller, Caller::Open) {
        return Err(ApiError::conflict(
            "api_open",
            "the API runs without a token, so a named token would restrict nothing: start the \
             server with --api-token (or GITDEPLOY_API_TOKEN) first",
        ));
    }
    let req: TokenRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request("invalid_body", format!("invalid token request: {e}"))
    })?;
    validate_name(&req.name).map_err(|e| ApiError::bad_request("invalid_name", e))?;
    let scopes = parse_scopes(&req.scopes)?;
    if let Some(p) = &req.project {
        if cp.records.project(p).await?.is_none() {
            return Err(ApiError::not_found(format!("no project {p:?}")));
        }
    }
    let (token, secret) = cp
        .records
        .create_token(&req.name, scopes, req.project, caller.actor())
        .await?;
    tracing::info!(id = %token.id, name = %token.name, "API token created");
    let mut body = token_json(&token);
    body["token"] = json!(secret);
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

pub(super) async fn list_tokens(State(cp): State<ControlPlane>) -> Result<Json<Value>, ApiError> {
    let list: Vec<Value> = cp.records.tokens().await?.iter().map(token_json).collect();
    Ok(Json(json!({ "tokens": list })))
}

pub(super) async fn revoke_token(
    State(cp): State<ControlPlane>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    if !cp.records.revoke_token(&id).await? {
        return Err(ApiError::not_found(format!("no token {id:?}")));
    }
    tracing::info!(%id, "API token revoked");
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
pub(super) struct Limit {
    #[serde(default)]
    limit: Option<usize>,
}

/// The newest entries of the audit log (`?limit=N`, at most 1,000; 100 by default).
pub(super) async fn read_audit(
    State(cp): State<ControlPlane>,
    Query(q): Query<Limit>,
) -> Result<Json<Value>, ApiError> {
    let limit = q.limit.unwrap_or(100).min(1_000);
    let entries = cp.journal.recent(crate::journal::AUDIT, limit).await?;
    Ok(Json(json!({ "entries": entries })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_lists() {
        let s = |v: &[&str]| parse_scopes(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(
            s(&["deploy", "read", "deploy"]).unwrap(),
            vec![Scope::Read, Scope::Deploy]
        );
        assert_eq!(s(&[]).unwrap_err().code_for_tests(), "invalid_scope");
        assert_eq!(s(&["write"]).unwrap_err().code_for_tests(), "invalid_scope");
    }
}
