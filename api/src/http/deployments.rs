//! Deployments over HTTP: create (validate, record, queue), list, show, delete, cancel.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use gitdeploy_core::job::{validate_git_ref, BuildSettings, ServingOptions, SourceArchive};
use gitdeploy_core::repo::validate_repo_url;
use gitdeploy_core::{BuildJob, DeploymentId, DeploymentStatus};
use serde::Deserialize;
use serde_json::{json, Value};

use super::*;
use crate::error::ApiError;
use crate::previews::Trigger;
use crate::projects::Environment;
use crate::queue::SubmitError;
use crate::store::Deployment;
use crate::tokens::Caller;
use crate::{now_ms, ControlPlane};

/// The body of a deploy request.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DeployRequest {
    #[serde(default)]
    repo: Option<String>,
    /// `"local folder"` opens an upload ([`super::uploads`]); absent or `"git"` builds `repo`.
    #[serde(default)]
    source: Option<String>,
    /// With a local folder: its source, to be built here (`gitdeploy deploy .`); without, the
    /// folder is published as is.
    #[serde(default)]
    archive: Option<SourceArchive>,
    /// With a source folder: the environment whose variables its build gets (`preview` unless
    /// `production`).
    #[serde(default)]
    environment: Option<Environment>,
    #[serde(default, rename = "ref")]
    git_ref: Option<String>,
    #[serde(default)]
    project: Option<String>,
    #[serde(default)]
    serving: ServingOptions,
    #[serde(default)]
    build: BuildSettings,
}

pub(super) fn parse_deploy_request(body: &[u8]) -> Result<DeployRequest, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(
            "invalid_body",
            "the request body must be a JSON object with a \"repo\" field",
        ));
    }
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::bad_request(
            "invalid_body",
            "the request body must be a JSON object",
        ));
    }
    let req: DeployRequest = serde_json::from_slice(body).map_err(|e| {
        let message = e.to_string();
        let code = if message.starts_with("missing field") {
            "missing_field"
        } else {
            "invalid_body"
        };
        ApiError::bad_request(code, format!("invalid deploy request: {message}"))
    })?;
    if req.repo.is_none() && matches!(req.source.as_deref(), None | Some("git")) {
        return Err(ApiError::bad_request(
            "missing_field",
            "invalid deploy request: missing field `repo`",
        ));
    }
    Ok(req)
}

pub(super) async fn create_deployment(
    State(cp): State<ControlPlane>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req = parse_deploy_request(&body)?;
    caller.may_reach(req.project.as_deref())?;
    let repo = match (req.source.as_deref(), &req.repo) {
        (Some("local folder"), None) => {
            if req.git_ref.is_some() || req.build != BuildSettings::default() {
                return Err(ApiError::bad_request(
                    "invalid_body",
                    "a local folder takes no \"ref\" or \"build\": it is published as is, or \
                     built with its project's settings (PATCH /api/projects/{name})",
                ));
            }
            return create_upload(&cp, req.project, req.serving, req.archive, req.environment)
                .await;
        }
        (Some("local folder"), Some(_)) => {
            return Err(ApiError::bad_request(
                "invalid_body",
                "a deployment comes from a \"repo\" or from a \"local folder\", not both",
            ))
        }
        (None | Some("git"), Some(_)) if req.archive.is_some() => {
            return Err(ApiError::bad_request(
                "invalid_body",
                "an \"archive\" is the source of a \"local folder\", not of a repository",
            ))
        }
        (None | Some("git"), Some(repo)) => repo.trim().to_owned(),
        // A missing repo was refused by the parser; what is left is an unknown source.
        (other, _) => {
            return Err(ApiError::bad_request(
                "invalid_source",
                format!(
                    "unknown source {:?}: use \"git\" (with \"repo\") or \"local folder\"",
                    other.unwrap_or_default()
                ),
            ))
        }
    };
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
    // A project's saved settings (of the environment the ref builds for) fill what the
    // request leaves out.
    let build = match &req.project {
        Some(name) => {
            let project = cp
                .records
                .ensure_project(name, &repo, req.git_ref.as_deref(), now_ms())
                .await
                .map_err(project_error)?;
            project
                .build_for(project.environment_of(req.git_ref.as_deref()), false)
                .overlay(&req.build)
        }
        None => req.build,
    };
    build
        .validate(cp.config.limits.timeout_secs)
        .map_err(|e| ApiError::bad_request("invalid_build", e))?;
    let trigger = match &req.project {
        Some(_) => Trigger::of_ref(req.git_ref.as_deref()),
        None => Trigger::default(),
    };
    let deployment = queue_deployment(
        &cp,
        Queue {
            repo,
            git_ref: req.git_ref,
            project: req.project,
            serving: req.serving,
            build,
            previous_commit: None,
            trigger,
        },
    )
    .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(deployment_json(&cp, &deployment)),
    )
        .into_response())
}

/// A validated build to record and queue.
pub(super) struct Queue {
    pub(super) repo: String,
    pub(super) git_ref: Option<String>,
    pub(super) project: Option<String>,
    pub(super) serving: ServingOptions,
    pub(super) build: BuildSettings,
    /// The branch's last ready build, for a push that may be skipped.
    pub(super) previous_commit: Option<String>,
    pub(super) trigger: Trigger,
}

/// Records a validated deployment and queues its build, opening the preview alias it will move;
/// nothing is recorded when the queue is full.
pub(super) async fn queue_deployment(cp: &ControlPlane, q: Queue) -> Result<Deployment, ApiError> {
    let place = cp.queue.reserve().map_err(submit_error)?;
    let base = lookup_base(cp, q.project.as_deref()).await?;
    if let (Some(project), Some(source)) = (&q.project, &q.trigger.alias) {
        cp.records
            .update_project(project, |p| {
                p.open_preview(source, now_ms());
                Ok::<_, ApiError>(())
            })
            .await?;
    }
    let stored_repo = gitdeploy_core::repo::redact_repo_url(&q.repo);
    let deployment = Deployment {
        id: DeploymentId::random(),
        project: q.project,
        repo_credentials_withheld: stored_repo != q.repo,
        repo: stored_repo,
        git_ref: q.git_ref.clone(),
        serving: q.serving.clone(),
        build: q.build.without_secret_values(),
        status: DeploymentStatus::Queued,
        error: None,
        commit: None,
        created_unix_ms: now_ms(),
        started_unix_ms: None,
        finished_unix_ms: None,
        runner: Some(cp.queue.instance().to_owned()),
        cancel_requested: false,
        previous_commit: q.previous_commit.clone(),
        skip_reason: None,
        source: Default::default(),
        archive: None,
        trigger: q.trigger,
        pinned: false,
    };
    let id = deployment.id.clone();
    cp.bus.create(&id).await?;
    cp.records.insert(deployment.clone()).await?;
    place
        .submit(BuildJob {
            deployment: id.clone(),
            project: deployment.project.clone(),
            repo: q.repo,
            git_ref: q.git_ref,
            serving: q.serving,
            build: q.build,
            limits: cp.config.limits.clone(),
            cache_key: Some(deployment.cache_key()),
            previous_commit: q.previous_commit,
            base,
            archive: None,
        })
        .map_err(submit_error)?;
    tracing::info!(%id, repo = %deployment.repo_display(), "deployment queued");
    Ok(deployment)
}

/// The deployment whose manifest answers a publish's lookups of the files it names: the
/// project's production deployment, if it has one.
pub(super) async fn lookup_base(
    cp: &ControlPlane,
    project: Option<&str>,
) -> Result<Option<DeploymentId>, ApiError> {
    Ok(match project {
        Some(name) => cp.records.project(name).await?.and_then(|p| p.production),
        None => None,
    })
}

pub(super) fn submit_error(e: SubmitError) -> ApiError {
    match e {
        SubmitError::Full(_) => ApiError::too_many(e.to_string()),
        SubmitError::Stopped => ApiError::unavailable(e.to_string()),
    }
}

pub(super) async fn lookup(cp: &ControlPlane, raw: &str) -> Result<Deployment, ApiError> {
    let found = match DeploymentId::parse(raw) {
        Some(id) => cp.records.get(&id).await?,
        None => None,
    };
    found.ok_or_else(|| ApiError::not_found(format!("no deployment {raw:?}")))
}

pub(super) async fn list_deployments(
    State(cp): State<ControlPlane>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<Value>, ApiError> {
    let listed = match caller.project() {
        Some(project) => cp.records.list_project(project, LIST_LIMIT).await?,
        None => cp.records.list(LIST_LIMIT).await?,
    };
    let list: Vec<Value> = listed.iter().map(|d| deployment_json(&cp, d)).collect();
    Ok(Json(json!({ "deployments": list })))
}

pub(super) async fn show_deployment(
    State(cp): State<ControlPlane>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let d = lookup(&cp, &id).await?;
    Ok(Json(deployment_json(&cp, &d)))
}

/// Removes a finished deployment: its files, log and record. Refused while it builds and while
/// it is its project's production deployment.
pub(super) async fn delete_deployment(
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
    crate::retention::delete_deployment(&cp.records, &cp.bus, cp.storage.as_ref(), &d).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Pins a deployment (`POST`: kept whatever the project's preview retention says) or unpins it
/// (`DELETE`).
pub(super) async fn pin_deployment(
    State(cp): State<ControlPlane>,
    method: axum::http::Method,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let d = lookup(&cp, &id).await?;
    let pinned = method == axum::http::Method::POST;
    let d = cp
        .records
        .update(&d.id, |rec| {
            rec.pinned = pinned;
            Ok::<_, ApiError>(())
        })
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no deployment {id:?}")))?;
    Ok(Json(deployment_json(&cp, &d)))
}

/// Cancels a queued or running build.
pub(super) async fn cancel_deployment(
    State(cp): State<ControlPlane>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let mut d = lookup(&cp, &id).await?;
    if d.status == DeploymentStatus::Uploading {
        cancel_upload(&cp, &d.id).await;
        return Ok((
            StatusCode::ACCEPTED,
            Json(json!({"id": d.id, "canceling": true})),
        )
            .into_response());
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deploy_request_errors_name_the_problem() {
        for (body, code) in [
            (&b""[..], "invalid_body"),
            (b"{", "invalid_body"),
            (b"[]", "invalid_body"),
            (b"{}", "missing_field"),
            (b"{\"source\": \"git\"}", "missing_field"),
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
