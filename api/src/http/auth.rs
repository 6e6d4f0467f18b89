//! Who may call the API: the platform's token or a named token with enough scope for the route
//! ([`crate::tokens`]), presented as a bearer token (or `access_token` for EventSource and
//! WebSocket clients); the per-client rate of mutations and log streams; and the audit log of
//! every mutation.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, Method};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::error::ApiError;
pub(super) use crate::tokens::token_sha256;
use crate::tokens::{self, Caller, Reach};
use crate::ControlPlane;

/// With a token configured, every request but the public routes ([`tokens::is_public`]) needs
/// one, as `Authorization: Bearer <token>` or (for EventSource and WebSocket clients, which
/// cannot set headers) an `access_token` query parameter: the platform's (compared by SHA-256
/// in constant time) or a named one whose scopes and project allow the route. The caller is
/// handed to the routes ([`Caller`]) and every mutation it makes is written to the audit log.
pub(super) async fn require_token(
    State(cp): State<ControlPlane>,
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    if tokens::is_public(&path) {
        let resp = next.run(req).await;
        // A hook that was taken (its own secret checked) is a mutation like any other.
        if method == Method::POST && resp.status().is_success() {
            let actor = if path == "/api/hooks/github" {
                "GitHub webhook".to_owned()
            } else {
                let project = path.split('/').nth(4).unwrap_or_default();
                format!("deploy hook of {project}")
            };
            audit(&cp, &actor, &method, &path, resp.status().as_u16(), None).await;
        }
        return resp;
    }
    let presented = presented_token(&req);
    let caller = match identify(&cp, presented).await {
        Ok(caller) => caller,
        Err(e) => return after_the_body(req, e.into_response()).await,
    };
    if let Err(e) = authorize(&cp, &caller, method.as_str(), &path).await {
        let status = e.status().as_u16();
        let client = client_of(&req);
        let answer = after_the_body(req, e.into_response()).await;
        if method != Method::GET && method != Method::HEAD {
            audit(&cp, &caller.actor(), &method, &path, status, client).await;
        }
        return answer;
    }
    let client = client_of(&req);
    req.extensions_mut().insert(caller.clone());
    let resp = next.run(req).await;
    if is_audited(&method, &path) {
        audit(
            &cp,
            &caller.actor(),
            &method,
            &path,
            resp.status().as_u16(),
            client,
        )
        .await;
    }
    resp
}

/// The caller a request's token names: `Err` (401) without a valid one.
async fn identify(cp: &ControlPlane, presented: Option<String>) -> Result<Caller, ApiError> {
    let Some(expected) = cp.config.token_sha256 else {
        return Ok(Caller::Open);
    };
    let Some(presented) = presented else {
        return Err(ApiError::unauthorized());
    };
    if token_matches(&presented, &expected) {
        return Ok(Caller::Root);
    }
    match cp.records.token_by_hash(&token_sha256(&presented)).await? {
        Some(token) => Ok(Caller::Token(Arc::new(token))),
        None => Err(ApiError::unauthorized_with(
            "this token is not valid (revoked, mistyped, or of another platform)",
        )),
    }
}

/// `Ok` when `caller` may make this request: its scopes cover the route's and it reaches the
/// project the route touches.
async fn authorize(
    cp: &ControlPlane,
    caller: &Caller,
    method: &str,
    path: &str,
) -> Result<(), ApiError> {
    let need = tokens::need(method, path);
    if !caller.allows(need.scope) {
        return Err(tokens::insufficient(caller, need.scope));
    }
    if caller.project().is_none() {
        return Ok(());
    }
    match need.reach {
        Reach::Nothing | Reach::Route => Ok(()),
        Reach::Project(name) => caller.may_reach(Some(name)),
        Reach::Deployment(raw) => match gitdeploy_core::DeploymentId::parse(raw) {
            Some(id) => match cp.records.get(&id).await? {
                Some(d) => caller.may_reach(d.project.as_deref()),
                // Nothing to protect: the route answers 404.
                None => Ok(()),
            },
            None => Ok(()),
        },
        Reach::Platform => Err(ApiError::forbidden(
            "project_not_allowed",
            "this token reaches one project only; this request is for the whole platform",
        )),
    }
}

fn presented_token(req: &axum::extract::Request) -> Option<String> {
    let from_header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    from_header.or_else(|| {
        req.uri().query().and_then(|q| {
            q.split('&')
                .find_map(|kv| kv.strip_prefix("access_token="))
                .map(|v| {
                    percent_encoding::percent_decode_str(v)
                        .decode_utf8_lossy()
                        .into_owned()
                })
        })
    })
}

fn client_of(req: &axum::extract::Request) -> Option<std::net::IpAddr> {
    req.extensions()
        .get::<crate::ratelimit::ClientAddr>()
        .map(|c| c.0)
}

/// Mutations go to the audit log, but for the blobs of an upload and its `missing` lookups
/// (thousands of requests of one deployment, whose opening and end are logged).
fn is_audited(method: &Method, path: &str) -> bool {
    *method != Method::GET
        && *method != Method::HEAD
        && !(*method == Method::PUT && path.contains("/blobs/"))
        && !path.ends_with("/missing")
}

/// Appends one entry to the audit log; a failure is logged, never the request's.
async fn audit(
    cp: &ControlPlane,
    actor: &str,
    method: &Method,
    path: &str,
    status: u16,
    client: Option<std::net::IpAddr>,
) {
    let entry = json!({
        "time_unix_ms": crate::now_ms(),
        "actor": actor,
        "method": method.as_str(),
        "path": redact_path(path),
        "status": status,
        "client": client.map(|c| c.to_string()),
    });
    if let Err(e) = cp.journal.append(crate::journal::AUDIT, &entry).await {
        tracing::warn!("cannot write the audit log: {e}");
    }
}

/// A path as the audit log keeps it: a deploy hook's secret is not kept.
fn redact_path(path: &str) -> String {
    match path.strip_prefix("/api/hooks/deploy/") {
        Some(rest) => {
            let project = rest.split('/').next().unwrap_or_default();
            format!("/api/hooks/deploy/{project}/***")
        }
        None => path.to_owned(),
    }
}

/// `answer`, once the request's body has been read (at most the body limit, for at most a
/// second). A connection whose request body is left unread is closed after the answer, and
/// the proxy may still be writing that body: the close then resets the connection, and the
/// client sees a 502 instead of the 401 or 429 it was sent.
async fn after_the_body(req: axum::extract::Request, answer: Response) -> Response {
    let body = axum::body::to_bytes(req.into_body(), super::MAX_BODY);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), body).await;
    answer
}

/// Mutations and log streams count against the client's rate (reads of state do not).
pub(super) async fn limit_rate(
    State(cp): State<ControlPlane>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    // The blobs of an upload are many requests of one deployment, whose opening was counted.
    let blob = req.method() == Method::PUT && req.uri().path().contains("/blobs/");
    let costly = (req.method() != Method::GET && !blob)
        || (req.uri().path().ends_with("/logs/ws")
            || req.uri().query().is_some_and(|q| q.contains("follow=")));
    let client = req
        .extensions()
        .get::<crate::ratelimit::ClientAddr>()
        .copied();
    if let (true, Some(limiter), Some(client)) = (costly, &cp.limiter, client) {
        if let Err(wait) = limiter.check(client.0, std::time::Instant::now()) {
            let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
            let answer = ApiError::too_many_retry(
                format!("too many requests from {}: slow down", client.0),
                secs,
            )
            .into_response();
            return after_the_body(req, answer).await;
        }
    }
    next.run(req).await
}

/// Constant-time comparison of a presented token with the stored hash.
pub(super) fn token_matches(token: &str, expected: &[u8; 32]) -> bool {
    let presented = token_sha256(token);
    presented
        .iter()
        .zip(expected)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_checks() {
        let expected = token_sha256("s3cret-token");
        assert!(token_matches("s3cret-token", &expected));
        assert!(!token_matches("s3cret-toke", &expected));
        assert!(!token_matches("", &expected));
    }

    #[test]
    fn what_the_audit_log_keeps() {
        assert_eq!(
            redact_path("/api/hooks/deploy/site/s3cr3t"),
            "/api/hooks/deploy/site/***"
        );
        assert_eq!(redact_path("/api/projects/site"), "/api/projects/site");
        assert!(is_audited(&Method::POST, "/api/deployments"));
        assert!(is_audited(&Method::DELETE, "/api/tokens/tok_x"));
        assert!(!is_audited(&Method::GET, "/api/deployments"));
        assert!(!is_audited(&Method::PUT, "/api/deployments/x/blobs/h"));
        assert!(!is_audited(&Method::POST, "/api/deployments/x/missing"));
    }
}
