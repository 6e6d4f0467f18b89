//! Builds started from outside: GitHub's push and pull request webhooks and a project's deploy
//! hook.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use gitdeploy_core::job::{is_commit_hash, validate_git_ref, ServingOptions};
use serde_json::{json, Value};

use super::auth::{token_matches, token_sha256};
use super::*;
use crate::error::ApiError;
use crate::previews::{PreviewSource, Trigger};
use crate::projects::{Environment, Project};
use crate::webhooks;
use crate::ControlPlane;

/// How many of a project's latest deployments a push looks through for its branch's last ready
/// build.
const SKIP_BASE_SEARCH: usize = 200;

/// GitHub webhook: push and pull request events (see [`crate::webhooks`]).
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
    let event = header("x-github-event");
    if event == "ping" {
        return Ok(Json(json!({"ok": true, "projects": names})).into_response());
    }
    // A signed body is taken once: a replay (captured and sent again) runs nothing.
    if !cp
        .journal
        .first_time(
            &format!("github:{}", webhooks::replay_key(signature)),
            REPLAY_WINDOW_MS,
        )
        .await?
    {
        return Err(ApiError::conflict(
            "replayed",
            "this webhook delivery was already taken (GitHub's redeliveries of it included)",
        ));
    }
    match event {
        "push" => push(&cp, value, verified).await,
        "pull_request" => pull_request(&cp, value, verified).await,
        other => Ok(
            Json(json!({"ignored": format!("{other:?} events are not deployed")})).into_response(),
        ),
    }
}

/// How long a delivery is remembered against replays.
const REPLAY_WINDOW_MS: u64 = 7 * 24 * 3600 * 1000;

/// A push: builds its branch in every verified project, or retires the branch's alias when the
/// branch was deleted.
async fn push(
    cp: &ControlPlane,
    value: Value,
    verified: Vec<Project>,
) -> Result<Response, ApiError> {
    let push: webhooks::PushEvent = serde_json::from_value(value)
        .map_err(|e| ApiError::bad_request("invalid_body", format!("not a push event: {e}")))?;
    let Some(branch) = push.git_ref.strip_prefix("refs/heads/") else {
        return Ok(
            Json(json!({"ignored": "only pushes to branches are deployed"})).into_response(),
        );
    };
    validate_git_ref(branch).map_err(|e| ApiError::bad_request("invalid_ref", e))?;
    let source = PreviewSource::Branch(branch.to_owned());
    if push.deleted {
        let retired = retire(cp, &verified, &source).await?;
        return Ok(Json(json!({ "retired": retired })).into_response());
    }
    let head_sha = push.after.filter(|sha| is_commit_hash(sha));
    let mut deployments = Vec::new();
    for project in verified {
        // A project without a production branch follows the repository's default branch, which
        // is what a deploy without a ref builds.
        let is_default = push.repository.default_branch.as_deref() == Some(branch);
        let git_ref =
            (project.production_branch.is_some() || !is_default).then(|| branch.to_owned());
        let serving = ServingOptions::default();
        let build = project.build_for(project.environment_of(git_ref.as_deref()), false);
        let recent = cp
            .records
            .list_project(&project.name, SKIP_BASE_SEARCH)
            .await?;
        let previous = webhooks::skip_base(&recent, git_ref.as_deref(), &build, &serving);
        let d = queue_deployment(
            cp,
            Queue {
                repo: project.repo.clone(),
                git_ref,
                project: Some(project.name.clone()),
                serving,
                build,
                previous_commit: previous,
                trigger: Trigger {
                    alias: Some(source.clone()),
                    head_sha: head_sha.clone(),
                    ..Trigger::default()
                },
            },
        )
        .await?;
        deployments.push(deployment_json(cp, &d));
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "deployments": deployments })),
    )
        .into_response())
}

/// A pull request: opened, updated or reopened builds its head commit as a preview at
/// `pr-<n>--<project>` (a fork's without secrets); closed retires that alias.
async fn pull_request(
    cp: &ControlPlane,
    value: Value,
    verified: Vec<Project>,
) -> Result<Response, ApiError> {
    let event: webhooks::PullRequestEvent = serde_json::from_value(value).map_err(|e| {
        ApiError::bad_request("invalid_body", format!("not a pull request event: {e}"))
    })?;
    let source = PreviewSource::PullRequest(event.number);
    match webhooks::pull_request_action(&event.action) {
        webhooks::PullRequestAction::Ignore => {
            return Ok(Json(json!({
                "ignored": format!("pull request {:?} events are not deployed", event.action)
            }))
            .into_response())
        }
        webhooks::PullRequestAction::Retire => {
            let retired = retire(cp, &verified, &source).await?;
            return Ok(Json(json!({ "retired": retired })).into_response());
        }
        webhooks::PullRequestAction::Build => {}
    }
    let sha = event.pull_request.head.sha.to_ascii_lowercase();
    if !is_commit_hash(&sha) {
        return Err(ApiError::bad_request(
            "invalid_body",
            "the pull request's head.sha is not a commit hash",
        ));
    }
    let fork = webhooks::is_fork(&event.pull_request);
    let mut deployments = Vec::new();
    for project in verified {
        let d = queue_deployment(
            cp,
            Queue {
                repo: project.repo.clone(),
                // The exact commit the event names, fetched by its hash.
                git_ref: Some(sha.clone()),
                project: Some(project.name.clone()),
                serving: ServingOptions::default(),
                build: project.build_for(Environment::Preview, fork),
                previous_commit: None,
                trigger: Trigger {
                    alias: Some(source.clone()),
                    head_sha: Some(sha.clone()),
                    fork,
                    ..Trigger::default()
                },
            },
        )
        .await?;
        tracing::info!(project = %project.name, id = %d.id, pr = event.number, fork, "pull request build");
        deployments.push(deployment_json(cp, &d));
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "deployments": deployments })),
    )
        .into_response())
}

/// Retires the alias of `source` in each project; the labels retired.
async fn retire(
    cp: &ControlPlane,
    projects: &[Project],
    source: &PreviewSource,
) -> Result<Vec<String>, ApiError> {
    let mut retired = Vec::new();
    for project in projects {
        let mut label = None;
        cp.records
            .update_project(&project.name, |p| {
                label = source
                    .slug(&p.name)
                    .filter(|_| p.retire_preview(source))
                    .map(|slug| gitdeploy_core::preview::label(&slug, &p.name));
                Ok::<_, ApiError>(())
            })
            .await?;
        retired.extend(label);
    }
    Ok(retired)
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
        Queue {
            repo: project.repo.clone(),
            git_ref: project.production_branch.clone(),
            project: Some(project.name.clone()),
            serving: ServingOptions::default(),
            build: project.build_for(Environment::Production, false),
            previous_commit: None,
            trigger: Trigger::of_ref(project.production_branch.as_deref()),
        },
    )
    .await?;
    tracing::info!(project = %project.name, id = %d.id, "deploy hook");
    Ok((StatusCode::ACCEPTED, Json(deployment_json(&cp, &d))).into_response())
}
