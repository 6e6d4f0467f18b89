//! The API's error: a status, a stable machine code and a message for people, sent as
//! `{"error": {"code", "message"}}`. Every failure path of the API ends here.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

/// An error answer of the API.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    retry_after: Option<u64>,
}

impl ApiError {
    /// 400: the request is malformed or names something invalid.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 404: nothing by that name.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 409: the request conflicts with the current state.
    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }

    /// 413: more than the limits accept.
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", message)
    }

    /// 422: well-formed, but refused on what it says (bytes that are not their hash, a
    /// manifest naming what was never uploaded).
    pub fn unprocessable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }

    /// 401: no valid token.
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "this API needs a token: send Authorization: Bearer <token>",
        )
    }

    /// 401 with a specific reason.
    pub fn unauthorized_with(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 403: the caller is known but may not do this (a token's scopes or project).
    pub fn forbidden(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, code, message)
    }

    /// 429: come back later.
    pub fn too_many(message: impl Into<String>) -> Self {
        Self::new(StatusCode::TOO_MANY_REQUESTS, "queue_full", message)
    }

    /// 429: this client is over its rate; it may try again in `seconds`.
    pub fn too_many_retry(message: impl Into<String>, seconds: u64) -> Self {
        let mut e = Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message);
        e.retry_after = Some(seconds);
        e
    }

    /// 500: our fault; the detail goes to the server log, not to the client.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!("internal error: {detail}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error",
        )
    }

    /// 503: a component is not running.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    /// Its HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
        let mut resp = (self.status, Json(body)).into_response();
        let extra = match self.status {
            StatusCode::TOO_MANY_REQUESTS => Some((
                "retry-after",
                axum::http::HeaderValue::from(self.retry_after.unwrap_or(30)),
            )),
            StatusCode::SERVICE_UNAVAILABLE if self.retry_after.is_some() => Some((
                "retry-after",
                axum::http::HeaderValue::from(self.retry_after.unwrap_or(1)),
            )),
            StatusCode::UNAUTHORIZED => Some((
                "www-authenticate",
                axum::http::HeaderValue::from_static("Bearer"),
            )),
            _ => None,
        };
        if let Some((name, value)) = extra {
            resp.headers_mut().insert(name, value);
        }
        resp
    }
}

/// The machine code of an error status that reached a client without an [`ApiError`] (an
/// extractor's rejection, the router's 405).
pub fn code_for_status(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "bad_request",
        404 => "not_found",
        405 => "method_not_allowed",
        406 => "not_acceptable",
        408 => "timeout",
        411 => "length_required",
        413 => "too_large",
        415 => "unsupported_media_type",
        422 => "invalid",
        426 => "upgrade_required",
        429 => "rate_limited",
        _ if status.is_client_error() => "client_error",
        _ => "internal",
    }
}

/// Makes every error answer of the API the JSON error shape: responses that are not JSON
/// already (extractor rejections are plain text) get `{"error": {"code", "message"}}` with the
/// text as the message (a 5xx's text stays in the server log).
pub async fn json_errors(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text).trim().to_owned();
    let message = if status.is_server_error() {
        tracing::error!("internal error answered as {status}: {text}");
        "internal error".to_owned()
    } else if status == StatusCode::PAYLOAD_TOO_LARGE {
        "the request body is too large".to_owned()
    } else if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("error")
            .to_ascii_lowercase()
    } else {
        text
    };
    let mut out = ApiError::new(status, code_for_status(status), message).into_response();
    for (name, value) in &parts.headers {
        if name != axum::http::header::CONTENT_TYPE && name != axum::http::header::CONTENT_LENGTH {
            out.headers_mut().insert(name.clone(), value.clone());
        }
    }
    out
}

#[cfg(test)]
impl ApiError {
    pub(crate) fn code_for_tests(&self) -> &'static str {
        self.code
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        use crate::store::StoreError;
        match e {
            // Concurrent writers won every attempt: nothing was changed, the client may retry.
            StoreError::Conflict(message) => {
                let mut err = ApiError::conflict("conflict", message);
                err.retry_after = Some(1);
                err
            }
            // The state store is away for a moment (Redis restarting): the client may retry.
            StoreError::Unavailable(e) => {
                tracing::warn!("state store unavailable: {e}");
                let mut err =
                    ApiError::unavailable("the state store is unavailable; try again shortly");
                err.retry_after = Some(1);
                err
            }
            StoreError::Failed(e) => ApiError::internal(e),
        }
    }
}

impl From<std::io::Error> for ApiError {
    fn from(e: std::io::Error) -> Self {
        crate::store::StoreError::from(e).into()
    }
}

#[cfg(test)]
mod io_error_tests {
    use super::*;

    #[test]
    fn outages_are_503_and_other_failures_500() {
        let outage: ApiError =
            std::io::Error::new(std::io::ErrorKind::NotConnected, "redis: gone").into();
        assert_eq!((outage.status.as_u16(), outage.code), (503, "unavailable"));
        let resp = outage.into_response();
        assert_eq!(resp.headers()["retry-after"], "1");
        let other: ApiError = std::io::Error::other("disk on fire").into();
        assert_eq!((other.status.as_u16(), other.code), (500, "internal"));
        let conflict: ApiError = crate::store::StoreError::Conflict("busy".into()).into();
        assert_eq!((conflict.status.as_u16(), conflict.code), (409, "conflict"));
    }
}
