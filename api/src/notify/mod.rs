//! The notifier: tells the outside world of deployment events ([`crate::events`]) — each
//! project's notification webhooks and its GitHub connection.
//!
//! [`Notifier::announce`] only puts the event in a bounded queue (a full queue drops and counts
//! it): a build never waits for a receiver. A worker reads the project's settings and starts
//! one task per delivery (at most [`PARALLEL`] at once), each with its own retries and
//! timeouts, so a receiver that hangs holds up nobody else. Every attempt is written to the
//! project's delivery history (`GET /api/projects/{name}/deliveries`). GitHub calls of one
//! project go one after the other, so a commit's `pending` never lands after its `success`.

pub mod github;
pub mod outbound;
pub mod webhook;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::{mpsc, Semaphore};

use crate::events::{DeploymentEvent, DeploymentEvents};
use crate::journal::Journal;
use crate::metrics::ApiMetrics;
use crate::previews::PreviewSource;
use crate::records::Records;
use crate::targets::{GithubLink, NotificationTarget};
use crate::PublicUrls;

use self::webhook::{Links, Verdict};

/// Deliveries in flight at once.
pub const PARALLEL: usize = 64;
/// Events waiting for the worker.
const QUEUE: usize = 4_096;
/// Largest part of an answer read (the rest is not waited for).
const MAX_ANSWER: usize = 64 * 1024;

/// How notifications are sent.
#[derive(Clone, Debug)]
pub struct NotifySettings {
    /// URLs handed out in bodies and statuses.
    pub public: PublicUrls,
    /// Where notification webhooks may go.
    pub policy: outbound::Policy,
    /// GitHub's REST API (`https://api.github.com`, or a GitHub Enterprise's `/api/v3`).
    pub github_api: String,
    /// The first retry's wait; each later one is four times as long (at most an hour).
    pub retry_base: Duration,
    /// Attempts per delivery.
    pub attempts: u32,
    /// One attempt's time limit.
    pub timeout: Duration,
    /// The longest rate-limit wait GitHub may ask for that is waited out.
    pub github_max_wait: Duration,
}

impl NotifySettings {
    /// The defaults for `public` URLs and an address `policy`.
    pub fn new(public: PublicUrls, policy: outbound::Policy) -> Self {
        NotifySettings {
            public,
            policy,
            github_api: "https://api.github.com".into(),
            retry_base: Duration::from_secs(10),
            attempts: 5,
            timeout: Duration::from_secs(10),
            github_max_wait: Duration::from_secs(900),
        }
    }
}

/// The notifier (see the module's documentation).
pub struct Notifier {
    tx: mpsc::Sender<DeploymentEvent>,
    metrics: ApiMetrics,
}

struct Worker {
    settings: NotifySettings,
    records: Records,
    journal: Arc<dyn Journal>,
    metrics: ApiMetrics,
    webhooks: reqwest::Client,
    github: reqwest::Client,
    slots: Semaphore,
    /// One GitHub conversation per project at a time.
    github_turns: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Notifier {
    /// Starts the worker on `runtime`; `records` are read for each event's project (they need
    /// not announce events themselves).
    pub fn start(
        settings: NotifySettings,
        records: Records,
        journal: Arc<dyn Journal>,
        metrics: ApiMetrics,
        runtime: &tokio::runtime::Handle,
    ) -> anyhow::Result<Arc<Self>> {
        let policy = Arc::new(settings.policy.clone());
        let webhooks = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(policy.resolver())
            .no_proxy()
            .timeout(settings.timeout)
            .user_agent("GitDeploy-Webhook/1")
            .build()?;
        let github = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(settings.timeout)
            .user_agent("GitDeploy")
            .build()?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let worker = Arc::new(Worker {
            settings,
            records,
            journal,
            metrics: metrics.clone(),
            webhooks,
            github,
            slots: Semaphore::new(PARALLEL),
            github_turns: Mutex::default(),
        });
        runtime.spawn(worker.run(rx));
        Ok(Arc::new(Notifier { tx, metrics }))
    }
}

impl DeploymentEvents for Notifier {
    fn announce(&self, event: DeploymentEvent) {
        if self.tx.try_send(event).is_err() {
            tracing::warn!("the notification queue is full: an event was dropped");
            self.metrics
                .notifications
                .with_label_values(&["webhook", "dropped"])
                .inc();
        }
    }
}

fn delivery_id() -> String {
    format!("dlv_{:024x}", rand::random::<u128>() >> 32)
}

impl Worker {
    async fn run(self: Arc<Self>, mut rx: mpsc::Receiver<DeploymentEvent>) {
        while let Some(event) = rx.recv().await {
            let project = match self.records.project(&event.project).await {
                Ok(Some(p)) => p,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(project = %event.project, "cannot read the project to notify: {e}");
                    continue;
                }
            };
            let event = Arc::new(event);
            for target in project
                .notifications
                .iter()
                .filter(|t| t.events.contains(&event.kind))
            {
                tokio::spawn(self.clone().deliver(event.clone(), target.clone()));
            }
            if let Some(link) = project.github.clone() {
                tokio::spawn(self.clone().tell_github(event.clone(), link));
            }
        }
    }

    /// Counts an attempt and writes it to the project's delivery history.
    async fn note(&self, a: Attempt<'_>) {
        let counted = if a.outcome == "retrying" {
            "retried"
        } else {
            a.outcome
        };
        self.metrics
            .notifications
            .with_label_values(&[a.kind, counted])
            .inc();
        let entry = json!({
            "time_unix_ms": crate::now_ms(),
            "delivery": a.delivery,
            "kind": a.kind,
            "target": a.target,
            "url": a.url,
            "event": format!("deployment.{}", a.event.kind.name()),
            "deployment": a.event.deployment.id,
            "attempt": a.attempt,
            "status": a.status,
            "error": a.error,
            "outcome": a.outcome,
            "duration_ms": a.started.elapsed().as_millis() as u64,
        });
        let project = &a.event.project;
        if let Err(e) = self
            .journal
            .append(&crate::journal::deliveries(project), &entry)
            .await
        {
            tracing::warn!(project, "cannot write the delivery history: {e}");
        }
    }

    /// One delivery to one webhook, every attempt recorded.
    async fn deliver(self: Arc<Self>, event: Arc<DeploymentEvent>, target: NotificationTarget) {
        let _slot = self.slots.acquire().await;
        let id = delivery_id();
        let links = Links::of(&self.settings.public, &event);
        let body = serde_json::to_vec(&webhook::body(target.format, &event, &id, &links))
            .unwrap_or_default();
        let signature = webhook::signature(&target.secret, &body);
        let event_name = format!("deployment.{}", event.kind.name());
        for attempt in 1..=self.settings.attempts {
            let started = Instant::now();
            // Checked again at every attempt: the policy or the URL's meaning may change.
            let (status, verdict, reason) = match self.settings.policy.check_url(&target.url) {
                Err(why) => (None, Verdict::Failed(why.clone()), why),
                Ok(url) => match self
                    .webhooks
                    .post(url)
                    .header("content-type", "application/json")
                    .header("x-gitdeploy-event", &event_name)
                    .header("x-gitdeploy-delivery", &id)
                    .header("x-gitdeploy-signature-256", &signature)
                    .body(body.clone())
                    .send()
                    .await
                {
                    Ok(resp) => {
                        let status = resp.status().as_u16();
                        let verdict = webhook::verdict(
                            status,
                            resp.headers()
                                .get("retry-after")
                                .and_then(|v| v.to_str().ok()),
                        );
                        // Read a little of the answer (some servers wait for it), never all.
                        let _ = tokio::time::timeout(Duration::from_secs(1), read_some(resp)).await;
                        (Some(status), verdict, format!("answered {status}"))
                    }
                    Err(e) => (None, Verdict::Retry(None), describe(&e)),
                },
            };
            let last = attempt == self.settings.attempts;
            let (outcome, error) = match &verdict {
                Verdict::Delivered => ("delivered", None),
                Verdict::Failed(why) => ("failed", Some(why.clone())),
                Verdict::Retry(_) if last => ("failed", Some(reason)),
                Verdict::Retry(_) => ("retrying", Some(reason)),
            };
            self.note(Attempt {
                kind: "webhook",
                delivery: &id,
                target: &target.id,
                url: webhook::masked(&target.url),
                event: &event,
                attempt,
                status,
                error,
                outcome,
                started,
            })
            .await;
            match verdict {
                Verdict::Retry(asked) if !last => {
                    tokio::time::sleep(webhook::backoff(self.settings.retry_base, attempt, asked))
                        .await;
                }
                _ => return,
            }
        }
    }

    /// The project's GitHub conversation of one event: its commit status and, for a pull
    /// request, its comment.
    async fn tell_github(self: Arc<Self>, event: Arc<DeploymentEvent>, link: GithubLink) {
        let turn = {
            let mut turns = self.github_turns.lock().unwrap_or_else(|p| p.into_inner());
            turns.entry(event.project.clone()).or_default().clone()
        };
        let _turn = turn.lock().await;
        let links = Links::of(&self.settings.public, &event);
        let repo = link.repository.clone();
        if let Some((sha, body)) = github::status(&event.project, &event, &links) {
            let path = format!("/repos/{repo}/statuses/{sha}");
            self.github_call(&event, &link, reqwest::Method::POST, &path, body)
                .await;
        }
        let Some(PreviewSource::PullRequest(number)) = event.deployment.trigger.alias.clone()
        else {
            return;
        };
        let Some(text) = github::comment(&event.project, &event, &links) else {
            return;
        };
        let slug = PreviewSource::PullRequest(number).slug(&event.project);
        let comment_id = match self.records.project(&event.project).await {
            Ok(Some(p)) => slug
                .as_ref()
                .and_then(|s| p.previews.get(s))
                .and_then(|a| a.comment_id),
            _ => None,
        };
        let body = json!({ "body": text });
        if let Some(id) = comment_id {
            let path = format!("/repos/{repo}/issues/comments/{id}");
            match self
                .github_call(&event, &link, reqwest::Method::PATCH, &path, body.clone())
                .await
            {
                GithubAnswer::Done(_) | GithubAnswer::Failed => return,
                // Deleted on GitHub: a new one.
                GithubAnswer::NotFound => {}
            }
        }
        let path = format!("/repos/{repo}/issues/{number}/comments");
        if let GithubAnswer::Done(made) = self
            .github_call(&event, &link, reqwest::Method::POST, &path, body)
            .await
        {
            if let (Some(id), Some(slug)) = (made["id"].as_u64(), slug) {
                let kept = self
                    .records
                    .update_project(&event.project, |p| {
                        if let Some(alias) = p.previews.get_mut(&slug) {
                            alias.comment_id = Some(id);
                        }
                        Ok::<_, crate::StoreError>(())
                    })
                    .await;
                if let Err(e) = kept {
                    tracing::warn!(project = %event.project, "cannot keep the comment's id: {e}");
                }
            }
        }
    }

    /// One GitHub call with GitHub's retry rules, recorded in the delivery history.
    async fn github_call(
        &self,
        event: &DeploymentEvent,
        link: &GithubLink,
        method: reqwest::Method,
        path: &str,
        body: Value,
    ) -> GithubAnswer {
        let _slot = self.slots.acquire().await;
        let url = format!("{}{path}", self.settings.github_api.trim_end_matches('/'));
        let id = delivery_id();
        let mut backoff = self.settings.retry_base;
        for attempt in 1..=self.settings.attempts {
            let started = Instant::now();
            let sent = self
                .github
                .request(method.clone(), &url)
                .bearer_auth(&link.token)
                .header("accept", github::ACCEPT)
                .header("x-github-api-version", github::API_VERSION)
                .json(&body)
                .send()
                .await;
            let (status, next, answer) = match sent {
                Err(_) => (None, github::Next::Retry, Value::Null),
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let header = |n: &str| {
                        resp.headers()
                            .get(n)
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned)
                    };
                    let (retry, remaining, reset) = (
                        header("retry-after"),
                        header("x-ratelimit-remaining"),
                        header("x-ratelimit-reset"),
                    );
                    let text = read_some(resp).await;
                    let answer: Value = serde_json::from_slice(&text).unwrap_or(Value::Null);
                    let message = answer["message"].as_str().unwrap_or("").to_owned();
                    let now = crate::now_ms() / 1000;
                    let next = github::next(
                        status,
                        retry.as_deref(),
                        remaining.as_deref(),
                        reset.as_deref(),
                        &message,
                        now,
                        self.settings.github_max_wait,
                    );
                    (Some(status), next, answer)
                }
            };
            let last = attempt == self.settings.attempts;
            let (outcome, error) = match &next {
                github::Next::Done => ("delivered", None),
                github::Next::NotFound => ("failed", Some("not found on GitHub".to_owned())),
                github::Next::Fail(why) => ("failed", Some(why.clone())),
                github::Next::Wait(_) | github::Next::Retry if last => {
                    ("failed", Some("GitHub kept failing".to_owned()))
                }
                github::Next::Wait(d) => (
                    "retrying",
                    Some(format!("rate limited: waiting {} s", d.as_secs())),
                ),
                github::Next::Retry => (
                    "retrying",
                    Some(match status {
                        Some(s) => format!("GitHub answered {s}"),
                        None => "GitHub could not be reached".to_owned(),
                    }),
                ),
            };
            self.note(Attempt {
                kind: "github",
                delivery: &id,
                target: "github",
                url: format!("{method} {path}"),
                event,
                attempt,
                status,
                error,
                outcome,
                started,
            })
            .await;
            match next {
                github::Next::Done => return GithubAnswer::Done(answer),
                github::Next::NotFound => return GithubAnswer::NotFound,
                github::Next::Fail(_) => return GithubAnswer::Failed,
                _ if last => return GithubAnswer::Failed,
                github::Next::Wait(d) => tokio::time::sleep(d).await,
                github::Next::Retry => {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(600));
                }
            }
        }
        GithubAnswer::Failed
    }
}

/// One attempt of a delivery, as the history keeps it.
struct Attempt<'a> {
    /// `webhook` or `github`.
    kind: &'static str,
    delivery: &'a str,
    /// The webhook's id, or `github`.
    target: &'a str,
    /// Where it went (a webhook's URL masked; a GitHub call's method and path).
    url: String,
    event: &'a DeploymentEvent,
    attempt: u32,
    status: Option<u16>,
    error: Option<String>,
    /// `delivered`, `retrying` or `failed`.
    outcome: &'static str,
    started: Instant,
}

/// How a GitHub call ended.
enum GithubAnswer {
    Done(Value),
    NotFound,
    Failed,
}

/// Why a request failed, in words (never the URL, which may hold a secret).
fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "no answer within the time limit".into()
    } else if e.is_connect() {
        let mut source: Option<&dyn std::error::Error> = std::error::Error::source(e);
        while let Some(s) = source {
            let text = s.to_string();
            if text.contains("public address") {
                return text;
            }
            source = s.source();
        }
        "could not connect".into()
    } else {
        "the request failed".into()
    }
}

async fn read_some(mut resp: reqwest::Response) -> Vec<u8> {
    let mut out = Vec::new();
    while let Ok(Some(chunk)) = resp.chunk().await {
        out.extend_from_slice(&chunk[..chunk.len().min(MAX_ANSWER - out.len())]);
        if out.len() >= MAX_ANSWER {
            break;
        }
    }
    out
}
