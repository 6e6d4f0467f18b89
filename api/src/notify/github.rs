//! GitHub's REST API as GitDeploy uses it: a commit status per build (`POST
//! /repos/{owner}/{repo}/statuses/{sha}`: pending when queued, success or failure at the end)
//! and one comment per pull request (`POST /repos/{owner}/{repo}/issues/{n}/comments`, then
//! `PATCH /repos/{owner}/{repo}/issues/comments/{id}` with each later build). The base URL is
//! the operator's (`--github-api`, for GitHub Enterprise). Answers are read the way GitHub
//! documents them: 401 and other refusals end the call; a secondary rate limit's
//! `Retry-After`, or a spent primary limit's `X-RateLimit-Reset`, is waited out (within a
//! bound); 5xx and broken connections are tried again with backoff.

use std::time::Duration;

use serde_json::{json, Value};

use crate::events::{DeploymentEvent, EventKind};

use super::webhook::{summary, Links};

/// GitHub's media type and API version, sent with every call.
pub(crate) const ACCEPT: &str = "application/vnd.github+json";
/// The REST API version GitDeploy speaks.
pub(crate) const API_VERSION: &str = "2022-11-28";

/// What to do after an answer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Next {
    /// Done: the answer's body.
    Done,
    /// Wait this long, then try again.
    Wait(Duration),
    /// Try again after the usual backoff.
    Retry,
    /// The thing is gone (a deleted comment).
    NotFound,
    /// Stop: why.
    Fail(String),
}

/// Reads an answer: its status, `Retry-After`, `X-RateLimit-Remaining`, `X-RateLimit-Reset`
/// (Unix seconds), GitHub's `message`, and the time now (Unix seconds). Waits longer than
/// `max_wait` are not waited for.
pub(crate) fn next(
    status: u16,
    retry_after: Option<&str>,
    remaining: Option<&str>,
    reset: Option<&str>,
    message: &str,
    now: u64,
    max_wait: Duration,
) -> Next {
    let wait = |d: Duration, why: &str| {
        if d <= max_wait {
            Next::Wait(d)
        } else {
            Next::Fail(format!(
                "{why}: GitHub asks to wait {} s, more than the {} s waited",
                d.as_secs(),
                max_wait.as_secs()
            ))
        }
    };
    match status {
        200..=299 => Next::Done,
        401 => Next::Fail(format!("GitHub refused the token (401 {message})")),
        403 | 429 => {
            if let Some(secs) = retry_after.and_then(|v| v.trim().parse::<u64>().ok()) {
                return wait(Duration::from_secs(secs), "rate limited");
            }
            if remaining.map(str::trim) == Some("0") {
                if let Some(at) = reset.and_then(|v| v.trim().parse::<u64>().ok()) {
                    return wait(
                        Duration::from_secs(at.saturating_sub(now).max(1)),
                        "rate limit spent",
                    );
                }
            }
            if status == 429 {
                return Next::Retry;
            }
            Next::Fail(format!(
                "GitHub refused the call (403 {message}): the token needs commit statuses and pull requests write access"
            ))
        }
        404 => Next::NotFound,
        500..=599 => Next::Retry,
        _ => Next::Fail(format!("GitHub answered {status} {message}")),
    }
}

/// The commit status of an event, when it has one: `(sha, body)`.
pub(crate) fn status(
    project: &str,
    event: &DeploymentEvent,
    links: &Links,
) -> Option<(String, Value)> {
    let d = &event.deployment;
    let sha = d.trigger.head_sha.clone().or_else(|| d.commit.clone())?;
    let (state, target, text) = match event.kind {
        EventKind::Queued => ("pending", &links.logs, "Build queued".to_owned()),
        EventKind::Ready => (
            "success",
            links.alias.as_ref().unwrap_or(&links.deployment),
            "Deployment ready".to_owned(),
        ),
        EventKind::Failed => ("failure", &links.logs, summary(event)),
        EventKind::Canceled => ("error", &links.logs, "Build canceled".to_owned()),
        EventKind::Promoted | EventKind::RolledBack => return None,
    };
    Some((
        sha,
        json!({
            "state": state,
            "target_url": target,
            "description": clip(&text, 140),
            "context": format!("gitdeploy/{project}"),
        }),
    ))
}

/// The pull request comment for an event of a pull request's build, when it has one.
pub(crate) fn comment(project: &str, event: &DeploymentEvent, links: &Links) -> Option<String> {
    let d = &event.deployment;
    let commit = d
        .trigger
        .head_sha
        .as_deref()
        .or(d.commit.as_deref())
        .unwrap_or("");
    let short = &commit[..commit.len().min(7)];
    let (state, rows) = match event.kind {
        EventKind::Ready => (
            "✅ Ready",
            vec![
                (
                    "Preview",
                    links
                        .alias
                        .clone()
                        .unwrap_or_else(|| links.deployment.clone()),
                ),
                ("Deployment", links.deployment.clone()),
            ],
        ),
        EventKind::Failed => (
            "❌ Failed",
            vec![
                ("Error", d.error.clone().unwrap_or_default()),
                ("Log", links.logs.clone()),
            ],
        ),
        EventKind::Queued => ("⏳ Building", vec![("Log", links.logs.clone())]),
        _ => return None,
    };
    let mut body = format!(
        "<!-- gitdeploy:{project} -->\n**GitDeploy** · `{project}` · {state} for {short}\n\n| | |\n|---|---|\n"
    );
    for (k, v) in rows {
        body.push_str(&format!(
            "| {k} | {} |\n",
            v.replace('|', "\\|").replace('\n', " ")
        ));
    }
    Some(body)
}

fn clip(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max - 1).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(status: u16, retry: Option<&str>, remaining: Option<&str>, reset: Option<&str>) -> Next {
        next(
            status,
            retry,
            remaining,
            reset,
            "Bad credentials",
            1_000,
            Duration::from_secs(60),
        )
    }

    #[test]
    fn answers_as_github_documents_them() {
        assert_eq!(n(201, None, None, None), Next::Done);
        assert!(matches!(n(401, None, None, None), Next::Fail(m) if m.contains("token")));
        assert_eq!(
            n(403, Some("5"), None, None),
            Next::Wait(Duration::from_secs(5))
        );
        assert_eq!(
            n(429, Some("5"), None, None),
            Next::Wait(Duration::from_secs(5))
        );
        assert_eq!(
            n(403, None, Some("0"), Some("1030")),
            Next::Wait(Duration::from_secs(30))
        );
        assert_eq!(
            n(403, None, Some("0"), Some("999")),
            Next::Wait(Duration::from_secs(1)),
            "a reset past is a second"
        );
        assert!(
            matches!(n(403, None, Some("0"), Some("9000")), Next::Fail(m) if m.contains("wait"))
        );
        assert!(matches!(n(403, None, Some("12"), None), Next::Fail(m) if m.contains("access")));
        assert_eq!(n(429, None, None, None), Next::Retry);
        assert_eq!(n(502, None, None, None), Next::Retry);
        assert_eq!(n(404, None, None, None), Next::NotFound);
        assert!(matches!(n(422, None, None, None), Next::Fail(_)));
    }

    #[test]
    fn descriptions_fit() {
        assert_eq!(clip("short", 140), "short");
        let long = clip(&"é".repeat(300), 140);
        assert_eq!(long.chars().count(), 140);
        assert!(long.ends_with('…'));
    }
}
