//! `GET /api/projects/{name}/traffic` → `{project, bucket_secs, hour, day}`: a project's
//! requests, bytes, status classes and top paths over the last hour and day, as every edge
//! counted them (see [`crate::traffic`]).

use axum::extract::{Path, State};
use axum::Json;
use serde_json::{json, Value};

use super::projects::lookup_project;
use crate::error::ApiError;
use crate::traffic::{bucket_of, summarize, BUCKET_MS, DAY_BUCKETS};
use crate::{now_ms, ControlPlane};

pub(super) async fn project_traffic(
    State(cp): State<ControlPlane>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    lookup_project(&cp, &name).await?;
    let now = now_ms();
    let since = (bucket_of(now) + 1).saturating_sub(DAY_BUCKETS);
    let buckets = match &cp.traffic {
        Some(traffic) => traffic
            .buckets(&name, since)
            .await
            .map_err(crate::store_error::StoreError::from)?,
        None => Vec::new(),
    };
    let summary = summarize(&buckets, now);
    Ok(Json(json!({
        "project": name,
        "bucket_secs": BUCKET_MS / 1000,
        "hour": summary.hour,
        "day": summary.day,
    })))
}
