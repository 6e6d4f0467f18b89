//! Who may call the API: the bearer token (or `access_token` for EventSource and WebSocket
//! clients) and the per-client rate of mutations and log streams.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;
use crate::ControlPlane;

/// With a token configured, every request but the health check, the dashboard's files and the
/// webhook (signed on its own) needs it, as
/// `Authorization: Bearer <token>` or (for EventSource and WebSocket clients, which cannot set
/// headers) an `access_token` query parameter. Compared by SHA-256 in constant time.
pub(super) async fn require_token(
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
        "/" | "/api/health" | "/api/ready" | "/api/openapi.json" | "/api/hooks/github"
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
        _ => after_the_body(req, ApiError::unauthorized().into_response()).await,
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
    let blob = req.method() == axum::http::Method::PUT && req.uri().path().contains("/blobs/");
    let costly = (req.method() != axum::http::Method::GET && !blob)
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

/// SHA-256 of a token, as the configuration keeps it.
pub fn token_sha256(token: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(token.as_bytes()).into()
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
}
