//! Notification webhooks: the body (GitDeploy's JSON or a Slack message), its signature, and
//! what an answer means for the next attempt. Pure; [`super::Notifier`] sends.

use std::time::Duration;

use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

use crate::events::{DeploymentEvent, EventKind};
use crate::targets::Format;
use crate::PublicUrls;

/// What the URLs of a deployment are, for bodies and GitHub.
pub(crate) struct Links {
    /// The deployment's own address.
    pub(crate) deployment: String,
    /// The alias that serves it, if one does (branch, pull request).
    pub(crate) alias: Option<String>,
    /// The project's production address.
    pub(crate) project: String,
    /// The build log.
    pub(crate) logs: String,
}

impl Links {
    pub(crate) fn of(urls: &PublicUrls, event: &DeploymentEvent) -> Self {
        let d = &event.deployment;
        Links {
            deployment: urls.site(d.id.as_str()),
            alias: event.alias.as_deref().map(|label| urls.site(label)),
            project: urls.site(&event.project),
            logs: urls.api(&format!("/api/deployments/{}/logs", d.id)),
        }
    }
}

/// The JSON body of a delivery.
pub(crate) fn json_body(event: &DeploymentEvent, delivery: &str, links: &Links) -> Value {
    let d = &event.deployment;
    let pull_request = match &d.trigger.alias {
        Some(crate::previews::PreviewSource::PullRequest(n)) => Some(*n),
        _ => None,
    };
    json!({
        "id": delivery,
        "event": format!("deployment.{}", event.kind.name()),
        "created_unix_ms": event.unix_ms,
        "project": {"name": event.project, "url": links.project},
        "deployment": {
            "id": d.id,
            "url": links.deployment,
            "alias_url": links.alias,
            "status": d.status,
            "ref": d.git_ref,
            "commit": d.commit.as_ref().or(d.trigger.head_sha.as_ref()),
            "pull_request": pull_request,
            "fork": d.trigger.fork,
            "error": d.error,
            "logs_url": links.logs,
        },
    })
}

/// A one-line message for people (Slack, and GitHub's descriptions).
pub(crate) fn summary(event: &DeploymentEvent) -> String {
    let d = &event.deployment;
    let what = match &d.trigger.alias {
        Some(crate::previews::PreviewSource::PullRequest(n)) => format!(" of pull request #{n}"),
        Some(crate::previews::PreviewSource::Branch(b)) => format!(" of {b}"),
        None => String::new(),
    };
    match event.kind {
        EventKind::Queued => format!("{}: build {}{what} queued", event.project, d.id),
        EventKind::Ready => format!("{}: deployment {}{what} is ready", event.project, d.id),
        EventKind::Failed => format!(
            "{}: build {}{what} failed: {}",
            event.project,
            d.id,
            d.error.as_deref().unwrap_or("see the log")
        ),
        EventKind::Canceled => format!("{}: build {}{what} was canceled", event.project, d.id),
        EventKind::Promoted => format!("{}: {} is production now", event.project, d.id),
        EventKind::RolledBack => {
            format!("{}: production rolled back to {}", event.project, d.id)
        }
    }
}

/// The body of a delivery in `format`.
pub(crate) fn body(
    format: Format,
    event: &DeploymentEvent,
    delivery: &str,
    links: &Links,
) -> Value {
    match format {
        Format::Json => json_body(event, delivery, links),
        Format::Slack => {
            let url = match event.kind {
                EventKind::Failed | EventKind::Canceled | EventKind::Queued => &links.logs,
                _ => links.alias.as_ref().unwrap_or(&links.deployment),
            };
            let icon = match event.kind {
                EventKind::Ready | EventKind::Promoted => ":white_check_mark:",
                EventKind::Failed => ":x:",
                EventKind::Canceled => ":no_entry_sign:",
                EventKind::Queued => ":hourglass_flowing_sand:",
                EventKind::RolledBack => ":rewind:",
            };
            json!({"text": format!("{icon} {} <{url}>", summary(event))})
        }
    }
}

/// `sha256=<hex>` of the body under the target's secret (`X-GitDeploy-Signature-256`).
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// What an attempt's answer means.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Taken.
    Delivered,
    /// Try again, after at least this long when the receiver said.
    Retry(Option<Duration>),
    /// Giving up: why.
    Failed(String),
}

/// The verdict on an HTTP answer (`retry_after`: its `Retry-After`).
pub(crate) fn verdict(status: u16, retry_after: Option<&str>) -> Verdict {
    match status {
        200..=299 => Verdict::Delivered,
        408 | 425 | 429 | 500..=599 => Verdict::Retry(
            retry_after
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs),
        ),
        300..=399 => Verdict::Failed(format!("answered {status}: redirects are not followed")),
        _ => Verdict::Failed(format!("answered {status}")),
    }
}

/// How long before attempt `n + 1` (1-based `n`): `base`, then four times as long each time, at
/// most an hour; a receiver's `Retry-After` wins when longer (up to the hour too).
pub(crate) fn backoff(base: Duration, n: u32, asked: Option<Duration>) -> Duration {
    let hour = Duration::from_secs(3600);
    let ours = base
        .saturating_mul(4u32.saturating_pow(n.saturating_sub(1)))
        .min(hour);
    asked.map_or(ours, |a| a.min(hour).max(ours))
}

/// A URL as the API shows it: scheme, host and first path segment, the rest hidden (a Slack
/// webhook URL is its own secret).
pub fn masked(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => {
            let first = u
                .path_segments()
                .and_then(|mut s| s.next())
                .filter(|s| !s.is_empty());
            let rest = u.path().trim_start_matches('/').len() > first.map_or(0, str::len)
                || u.query().is_some();
            format!(
                "{}://{}{}{}{}",
                u.scheme(),
                u.host_str().unwrap_or(""),
                u.port().map(|p| format!(":{p}")).unwrap_or_default(),
                first.map(|f| format!("/{f}")).unwrap_or_default(),
                if rest { "/…" } else { "" }
            )
        }
        Err(_) => "(invalid)".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts() {
        assert_eq!(verdict(204, None), Verdict::Delivered);
        assert_eq!(verdict(503, None), Verdict::Retry(None));
        assert_eq!(
            verdict(429, Some("7")),
            Verdict::Retry(Some(Duration::from_secs(7)))
        );
        assert_eq!(verdict(429, Some("soon")), Verdict::Retry(None));
        assert!(matches!(verdict(301, None), Verdict::Failed(m) if m.contains("redirects")));
        assert!(matches!(verdict(404, None), Verdict::Failed(_)));
        assert!(matches!(verdict(401, None), Verdict::Failed(_)));
    }

    #[test]
    fn backoff_grows_to_an_hour_and_hears_retry_after() {
        let base = Duration::from_secs(10);
        let secs =
            |n, asked: Option<u64>| backoff(base, n, asked.map(Duration::from_secs)).as_secs();
        assert_eq!(
            [secs(1, None), secs(2, None), secs(3, None), secs(4, None)],
            [10, 40, 160, 640]
        );
        assert_eq!(secs(9, None), 3600);
        assert_eq!(secs(1, Some(30)), 30);
        assert_eq!(secs(3, Some(30)), 160, "never sooner than ours");
        assert_eq!(secs(1, Some(1_000_000)), 3600);
    }

    #[test]
    fn signatures_and_masks() {
        // Same construction as GitHub's: HMAC-SHA256 over the body, hex.
        assert_eq!(
            signature("It's a Secret to Everybody", b"Hello, World!"),
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        );
        assert_eq!(
            masked("https://hooks.slack.com/services/T0/B0/secret"),
            "https://hooks.slack.com/services/…"
        );
        assert_eq!(
            masked("http://127.0.0.1:9000/hook"),
            "http://127.0.0.1:9000/hook"
        );
        assert_eq!(
            masked("https://x.example/hook?token=1"),
            "https://x.example/hook/…"
        );
        assert_eq!(masked("https://x.example/"), "https://x.example");
    }
}
