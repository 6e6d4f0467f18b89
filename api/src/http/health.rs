//! Readiness for load balancers and orchestrators (#20): `GET /api/ready` answers `200` when
//! this edge can reach what serving and building need, the state store (Redis, or the data
//! directory) and the site storage (S3), and `503` otherwise, with each check's reason. Each
//! check has [`CHECK_TIMEOUT`], so a hung dependency makes the edge unready instead of hanging
//! the probe. Liveness stays `GET /api/health`, which needs nothing: an edge that cannot reach
//! Redis is alive (it serves cached sites) but should not get new traffic.

use std::future::Future;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use crate::ControlPlane;

/// Longest wait for one dependency.
pub(crate) const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// One check's JSON: `{"ok": true}` or `{"ok": false, "error"}`.
fn check_json(outcome: &Result<(), String>) -> Value {
    match outcome {
        Ok(()) => json!({"ok": true}),
        Err(e) => json!({"ok": false, "error": e}),
    }
}

/// Runs `check` within [`CHECK_TIMEOUT`].
async fn bounded<F: Future<Output = Result<(), String>>>(
    what: &str,
    check: F,
) -> Result<(), String> {
    match tokio::time::timeout(CHECK_TIMEOUT, check).await {
        Ok(outcome) => outcome.map_err(|e| format!("{what}: {e}")),
        Err(_) => Err(format!(
            "{what}: no answer within {} s",
            CHECK_TIMEOUT.as_secs()
        )),
    }
}

pub(super) async fn ready(State(cp): State<ControlPlane>) -> Response {
    let state = bounded("the state store", async {
        cp.records.store().ping().await.map_err(|e| e.to_string())
    });
    let storage = bounded("the site storage", async {
        match &cp.storage {
            Some(s) => s.probe().await,
            None => Ok(()),
        }
    });
    let (state, storage) = tokio::join!(state, storage);
    let ready = state.is_ok() && storage.is_ok();
    if !ready {
        tracing::warn!(
            state = ?state.as_ref().err(),
            storage = ?storage.as_ref().err(),
            "not ready"
        );
    }
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "ready": ready,
        "checks": {"state": check_json(&state), "storage": check_json(&storage)},
    });
    (code, Json(body)).into_response()
}
