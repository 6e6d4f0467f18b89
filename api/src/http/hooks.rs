//! Builds started from outside: the GitHub push webhook and a project's deploy hook.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use gitdeploy_core::job::{validate_git_ref, ServingOptions};
use serde_json::{json, Value};

use super::auth::{token_matches, token_sha256};
use super::*;
use crate::error::ApiError;
use crate::projects::Project;
use crate::webhooks;
use crate::ControlPlane;

/// How many of a project's latest deployments a push looks through for its branch's last ready
/// build.
const SKIP_BASE_SEARCH: usize = 200;

/// GitHub push webhook (see [`crate::webhooks`]).
pub(super) async fn github_hook(
    State(cp): State<ControlPlane>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    let signature = header("x-hub-signature-256");
    if signature.is_empty() {
        return Err(ApiError::unauthorized_with(
            "the webhook is not signed (X-Hub-Signature-256)",
        ));
    }
    let value: Value = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request("invalid_body", format!("the event is not JSON: {e}"))
    })?;
    let repository: webhooks::Repository = serde_json::from_value(value["repository"].clone())
        .map_err(|e| {
            ApiError::bad_request(
                "invalid_body",
                format!("the event names no repository: {e}"),
            )
        })?;
    let urls = repository.urls();
    let candidates: Vec<Project> = cp
        .records
        .projects()
        .await?
        .into_iter()
        .filter(|p| p.webhook_secret.is_some() && urls.contains(&webhooks::normalize_repo(&p.repo)))
        .collect();
    if candidates.is_empty() {
        return Err(ApiError::not_found(
            "no project with a webhook secret deploys this repository",
        ));
    }
    let verified: Vec<Project> = candidates
        .into_iter()
        .filter(|p| {
            p.webhook_secret
                .as_deref()
                .is_some_and(|s| webhooks::signature_valid(s, &body, signature))
        })
        .collect();
    if verified.is_empty() {
        return Err(ApiError::unauthorized_with(
            "the webhook signature does not match",
        ));
    }
    let names: Vec<&str> = verified.iter().map(|p| p.name.as_str()).collect();
    match header("x-github-event") {
        "ping" => return Ok(Json(json!({"ok": true, "projects": names})).into_response()),
        "push" => {}
        other => {
            return Ok(
                Json(json!({"ignored": format!("{other:?} events are not deployed")}))
                    .into_response(),
            )
        }
    }
    let push: webhooks::PushEvent = serde_json::from_value(value)
        .map_err(|e| ApiError::bad_request("invalid_body", format!("not a push event: {e}")))?;
    let Some(branch) = push
        .git_ref
        .strip_prefix("refs/heads/")
        .filter(|_| !push.deleted)
    else {
        return Ok(
            Json(json!({"ignored": "only pushes to branches are deployed"})).into_response(),
        );
    };
    validate_git_ref(branch).map_err(|e| ApiError::bad_request("invalid_ref", e))?;
    let mut deployments = Vec::new();
    for project in verified {
        // A project without a production branch follows the repository's default branch, which
        // is what a deploy without a ref builds.
        let is_default = push.repository.default_branch.as_deref() == Some(branch);
        let git_ref =
            (project.production_branch.is_some() || !is_default).then(|| branch.to_owned());
        let serving = ServingOptions::default();
        let recent = cp
            .records
            .list_project(&project.name, SKIP_BASE_SEARCH)
            .await?;
        let previous = webhooks::skip_base(&recent, git_ref.as_deref(), &project.build, &serving);
        let d = queue_deployment(
            &cp,
            project.repo.clone(),
            git_ref,
            Some(project.name.clone()),
            serving,
            project.build.clone(),
            previous,
        )
        .await?;
        deployments.push(deployment_json(&cp, &d));
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "deployments": deployments })),
    )
        .into_response())
}

/// A project's deploy hook: a secret URL (Vercel / Netlify style) that builds the production
/// branch with the project's settings. An unknown project and a wrong secret look the same.
pub(super) async fn deploy_hook(
    State(cp): State<ControlPlane>,
    Path((name, secret)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let unknown = || ApiError::not_found("no such deploy hook");
    let project = cp.records.project(&name).await?.ok_or_else(unknown)?;
    let expected = project.deploy_hook.as_deref().ok_or_else(unknown)?;
    if !token_matches(&secret, &token_sha256(expected)) {
        return Err(unknown());
    }
    if project.repo.is_empty() {
        return Err(ApiError::conflict(
            "no_repository",
            format!(
                "project {} has no repository to build: it is deployed from a folder (gitdeploy deploy <folder> --project {})",
                project.name, project.name
            ),
        ));
    }
    let d = queue_deployment(
        &cp,
        project.repo.clone(),
        project.production_branch.clone(),
        Some(project.name.clone()),
        ServingOptions::default(),
        project.build.clone(),
        None,
    )
    .await?;
    tracing::info!(project = %project.name, id = %d.id, "deploy hook");
    Ok((StatusCode::ACCEPTED, Json(deployment_json(&cp, &d))).into_response())
}
