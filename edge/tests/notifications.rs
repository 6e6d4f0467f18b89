//! Notifications through the real server: per-project webhooks (signed JSON and Slack bodies,
//! retried with backoff, every attempt in the delivery history, a receiver that hangs slowing
//! no build, URLs that point at the platform or at private and metadata addresses refused), and
//! GitHub commit statuses and pull request comments against a stand-in that holds every call to
//! GitHub's documented format and answers 401, rate limits and 5xx as GitHub does.

mod common;
#[path = "common/github.rs"]
mod fake_github;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use common::{git, hub_signature as sign, GitServer, Gitdeploy};
use serde_json::{json, Value};

const SECRET: &str = "webhook-secret-0123456789";

/// One request a receiver got.
#[derive(Clone, Debug)]
struct Received {
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

/// Webhook receivers on loopback: `/ok/*` take everything, `/flaky` fails twice with 500 then
/// takes, `/hang` never answers.
struct Receivers {
    base: String,
    got: Arc<Mutex<Vec<Received>>>,
}

impl Receivers {
    async fn start() -> Self {
        let got: Arc<Mutex<Vec<Received>>> = Arc::default();
        async fn take(
            State(got): State<Arc<Mutex<Vec<Received>>>>,
            Path(path): Path<String>,
            headers: HeaderMap,
            body: Bytes,
        ) -> StatusCode {
            let flaky_seen = {
                let mut g = got.lock().unwrap();
                g.push(Received {
                    path: path.clone(),
                    headers,
                    body,
                });
                g.iter().filter(|r| r.path == "flaky").count()
            };
            match path.as_str() {
                "hang" => {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    StatusCode::OK
                }
                "flaky" if flaky_seen <= 2 => StatusCode::INTERNAL_SERVER_ERROR,
                _ => StatusCode::NO_CONTENT,
            }
        }
        let app = axum::Router::new()
            .route("/{*path}", axum::routing::post(take))
            .with_state(got.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Receivers { base, got }
    }

    fn at(&self, path: &str) -> Vec<Received> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }
}

async fn call(
    gd: &Gitdeploy,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    gd.call_json(method, path, body).await
}

/// Waits (polling, up to a minute) until `check` holds of the project's delivery history.
async fn deliveries_until(
    gd: &Gitdeploy,
    project: &str,
    what: &str,
    check: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, body) = call(
            gd,
            reqwest::Method::GET,
            &format!("/api/projects/{project}/deliveries?limit=500"),
            None,
        )
        .await;
        let list = body["deliveries"].as_array().cloned().unwrap_or_default();
        if check(&list) {
            return list;
        }
        assert!(Instant::now() < deadline, "{what}: {list:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn hook(gd: &Gitdeploy, event: &str, body: &Value) -> (u16, Value) {
    let bytes = serde_json::to_vec(body).unwrap();
    let resp = gd
        .http()
        .post(gd.api("/api/hooks/github"))
        .header("x-github-event", event)
        .header("x-hub-signature-256", sign(SECRET, &bytes))
        .header("content-type", "application/json")
        .body(bytes)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

fn pull_request(url: &str, action: &str, n: u64, sha: &str) -> Value {
    json!({"action": action, "number": n,
           "pull_request": {"head": {"ref": "topic", "sha": sha, "repo": {"full_name": "owner/site"}},
                            "base": {"ref": "main", "sha": "0".repeat(40), "repo": {"full_name": "owner/site"}}},
           "repository": {"clone_url": url, "default_branch": "main", "full_name": "owner/site"}})
}

fn commit(repo: &std::path::Path, branch: &str, file: &str, content: &str) -> String {
    git(repo, &["checkout", "-q", "-B", branch]);
    std::fs::write(repo.join(file), content).unwrap();
    git(repo, &["add", "-A"]);
    git(repo, &["commit", "-q", "-m", content]);
    let out = std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(repo)
        .output()
        .unwrap();
    git(repo, &["checkout", "-q", "main"]);
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[tokio::test]
async fn webhooks_and_github_hear_of_every_deployment_and_nothing_waits_for_them() {
    let receivers = Receivers::start().await;
    let github = fake_github::FakeGithub::start().await;
    let mut server = GitServer::new();
    let repo = server.add_repo("site", &[("index.html", "main")]);
    let pr_one = commit(&repo, "topic", "index.html", "pr one");
    let pr_two = commit(&repo, "topic", "index.html", "pr two");
    git(&repo, &["update-ref", "refs/pull/7/head", &pr_two]);
    server.start();
    let data = tempfile::tempdir().unwrap();
    let gd = Gitdeploy::start_with(
        data.path(),
        &[
            "--notify-allow-network",
            "127.0.0.0/8",
            "--github-api",
            &github.base,
            "--notify-retry-ms",
            "200",
            "--notify-timeout-ms",
            "1500",
        ],
    )
    .await;
    let url = server.url("site");
    let (status, _) = call(&gd, reqwest::Method::POST, "/api/projects",
        Some(json!({"name": "site", "repo": url, "production_branch": "main", "webhook_secret": SECRET}))).await;
    assert_eq!(status, 201);

    // Targets that would be server-side request forgery are refused, with the reason.
    for bad in [
        format!("http://127.0.0.1:{}/api/deployments", gd.port),
        format!("http://127.0.0.1:{}/metrics", gd.metrics_port),
        "http://site.localhost/".to_owned(),
        "http://localhost:9/".to_owned(),
        "http://169.254.169.254/latest/meta-data/iam/".to_owned(),
        "http://[::ffff:169.254.169.254]/".to_owned(),
        "http://10.0.0.1/hook".to_owned(),
        "ftp://example.com/hook".to_owned(),
        "not a url".to_owned(),
    ] {
        let (status, body) = call(
            &gd,
            reqwest::Method::POST,
            "/api/projects/site/notifications",
            Some(json!({"url": bad})),
        )
        .await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (400, Some("invalid_url")),
            "{bad}: {body}"
        );
    }
    let (status, body) = call(
        &gd,
        reqwest::Method::POST,
        "/api/projects/site/notifications",
        Some(json!({"url": format!("{}/ok/json", receivers.base), "events": ["sometimes"]})),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("invalid_event"))
    );

    // Four receivers: all events as JSON, ready/failed as Slack, a flaky one and one that hangs.
    let add = |path: &'static str, extra: Value| {
        let gd = &gd;
        let receivers = &receivers;
        async move {
            let mut body = json!({"url": format!("{}/{path}", receivers.base)});
            body.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            let (status, answer) = call(
                gd,
                reqwest::Method::POST,
                "/api/projects/site/notifications",
                Some(body),
            )
            .await;
            assert_eq!(status, 201, "{answer}");
            answer
        }
    };
    let json_target = add("ok/json", json!({})).await;
    let secret = json_target["secret"].as_str().unwrap().to_owned();
    add(
        "ok/slack",
        json!({"format": "slack", "events": ["ready", "failed"]}),
    )
    .await;
    add("flaky", json!({"events": ["ready"]})).await;
    add("hang", json!({"events": ["queued", "ready"]})).await;
    let (_, listed) = call(
        &gd,
        reqwest::Method::GET,
        "/api/projects/site/notifications",
        None,
    )
    .await;
    assert_eq!(listed["notifications"].as_array().unwrap().len(), 4);
    assert!(
        !listed.to_string().contains(&secret),
        "secrets are shown once"
    );

    // GitHub: bad settings refused, then connected.
    for (body, code) in [
        (json!({"github": {"token": "ghp_good"}}), "invalid_github"),
        (
            json!({"github": {"token": "ghp_good", "repository": "owner/../x"}}),
            "invalid_github",
        ),
        (
            json!({"github": {"token": "", "repository": "owner/site"}}),
            "invalid_github",
        ),
    ] {
        let (status, answer) = call(
            &gd,
            reqwest::Method::PATCH,
            "/api/projects/site",
            Some(body.clone()),
        )
        .await;
        assert_eq!(
            (status, answer["error"]["code"].as_str()),
            (400, Some(code)),
            "{body}"
        );
    }
    let (status, project) = call(
        &gd,
        reqwest::Method::PATCH,
        "/api/projects/site",
        Some(json!({"github": {"token": "ghp_good", "repository": "owner/site"}})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(project["github"]["repository"], "owner/site");
    assert!(!project.to_string().contains("ghp_good"));

    // A pull request: its build is ready while the hanging receiver still holds its delivery.
    let started = Instant::now();
    let (status, answer) = hook(
        &gd,
        "pull_request",
        &pull_request(&url, "opened", 7, &pr_one),
    )
    .await;
    assert_eq!(status, 202, "{answer}");
    let first = answer["deployments"][0]["id"].as_str().unwrap().to_owned();
    let log = gd.follow(&first, 0).await;
    assert_eq!(
        log.last().unwrap().outcome.as_ref().unwrap().status,
        gitdeploy_core::DeploymentStatus::Ready
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "a hanging receiver slowed the build"
    );
    assert_eq!(gd.page("pr-7--site", "/").await.1, "pr one");

    // The JSON receiver: queued then ready, signed with the target's secret.
    let events = until("queued and ready at the JSON receiver", || {
        let got = receivers.at("ok/json");
        (got.len() >= 2).then_some(got)
    })
    .await;
    let bodies: Vec<Value> = events
        .iter()
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect();
    assert_eq!(bodies[0]["event"], "deployment.queued");
    assert_eq!(bodies[1]["event"], "deployment.ready");
    for (r, b) in events.iter().zip(&bodies) {
        assert_eq!(
            r.headers["x-gitdeploy-signature-256"].to_str().unwrap(),
            sign(&secret, &r.body)
        );
        assert_eq!(
            r.headers["x-gitdeploy-event"].to_str().unwrap(),
            b["event"].as_str().unwrap()
        );
        assert_eq!(
            r.headers["x-gitdeploy-delivery"].to_str().unwrap(),
            b["id"].as_str().unwrap()
        );
        assert_eq!(b["deployment"]["id"], first.as_str());
        assert_eq!(b["deployment"]["pull_request"], 7);
        assert_eq!(b["project"]["name"], "site");
    }
    assert!(bodies[1]["deployment"]["alias_url"]
        .as_str()
        .unwrap()
        .contains("pr-7--site"));
    // Slack's body is text.
    let slack = until("the Slack message", || {
        receivers.at("ok/slack").first().cloned()
    })
    .await;
    let text: Value = serde_json::from_slice(&slack.body).unwrap();
    assert!(
        text["text"].as_str().unwrap().contains("is ready"),
        "{text}"
    );
    // The flaky receiver: two 500s, retried with backoff, delivered at the third attempt.
    let history = deliveries_until(&gd, "site", "the flaky delivery", |list| {
        list.iter()
            .any(|d| d["url"].as_str().unwrap().ends_with("/flaky") && d["outcome"] == "delivered")
    })
    .await;
    let mut flaky: Vec<&Value> = history
        .iter()
        .filter(|d| d["url"].as_str().unwrap().ends_with("/flaky"))
        .collect();
    flaky.reverse();
    let outcomes: Vec<(u64, &str, u64)> = flaky
        .iter()
        .map(|d| {
            (
                d["attempt"].as_u64().unwrap(),
                d["outcome"].as_str().unwrap(),
                d["status"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(
        outcomes,
        [
            (1, "retrying", 500),
            (2, "retrying", 500),
            (3, "delivered", 204)
        ]
    );
    assert!(
        flaky.iter().all(|d| d["delivery"] == flaky[0]["delivery"]),
        "one delivery, three attempts"
    );
    // The hanging one times out and is retried, without holding anything else up.
    deliveries_until(&gd, "site", "the hanging receiver's timeout", |list| {
        list.iter().any(|d| {
            d["url"].as_str().unwrap().ends_with("/hang")
                && d["error"] == "no answer within the time limit"
        })
    })
    .await;

    // GitHub: a pending status when queued, success at the pull request's alias when ready, and a
    // comment with the preview URL.
    until("the pull request's comment saying ready", || {
        github
            .comments()
            .values()
            .any(|c| c.contains("Ready"))
            .then_some(())
    })
    .await;
    let calls = until("GitHub's statuses", || {
        let calls = github.calls();
        (calls
            .iter()
            .filter(|c| c.path.contains("/statuses/"))
            .count()
            >= 2)
            .then_some(calls)
    })
    .await;
    assert_eq!(github.refused(), Vec::<String>::new());
    let statuses: Vec<(&str, &str)> = calls
        .iter()
        .filter(|c| c.path.contains("/statuses/"))
        .map(|c| (c.path.as_str(), c.body["state"].as_str().unwrap()))
        .collect();
    let status_path = format!("/repos/owner/site/statuses/{pr_one}");
    assert_eq!(
        statuses,
        [
            (status_path.as_str(), "pending"),
            (status_path.as_str(), "success")
        ]
    );
    let success = &calls
        .iter()
        .find(|c| c.body["state"] == "success")
        .unwrap()
        .body;
    assert!(
        success["target_url"]
            .as_str()
            .unwrap()
            .contains("pr-7--site"),
        "{success}"
    );
    assert_eq!(success["context"], "gitdeploy/site");
    let comments = github.comments();
    assert_eq!(comments.len(), 1);
    let (comment_id, text) = comments
        .iter()
        .next()
        .map(|(k, v)| (*k, v.clone()))
        .unwrap();
    assert!(
        text.contains("pr-7--site") && text.contains("Ready"),
        "{text}"
    );

    // The pull request moves on: statuses on the new commit, and the same comment edited.
    let (status, answer) = hook(
        &gd,
        "pull_request",
        &pull_request(&url, "synchronize", 7, &pr_two),
    )
    .await;
    assert_eq!(status, 202);
    gd.follow(answer["deployments"][0]["id"].as_str().unwrap(), 0)
        .await;
    let short = &pr_two[..7];
    until("the comment edited for the new commit", || {
        let comments = github.comments();
        comments
            .get(&comment_id)
            .is_some_and(|c| c.contains(short) && c.contains("Ready"))
            .then_some(())
    })
    .await;
    assert_eq!(github.comments().len(), 1, "one comment per pull request");
    assert!(github
        .calls()
        .iter()
        .any(|c| c.method == "PATCH" && c.status == 0));
    assert!(
        github
            .calls()
            .iter()
            .filter(|c| c.token == "ghp_good")
            .all(|c| c.status == 0),
        "served"
    );
    assert!(github
        .calls()
        .iter()
        .any(|c| c.path.ends_with(&pr_two) && c.body["state"] == "success"));

    // A failed build of a pull request: failure on GitHub, `failed` to the receivers that
    // asked for it.
    let (status, _) = call(
        &gd,
        reqwest::Method::PATCH,
        "/api/projects/site",
        Some(json!({"build": {"build_command": "exit 3"}})),
    )
    .await;
    assert_eq!(status, 200);
    let (status, answer) = hook(
        &gd,
        "pull_request",
        &pull_request(&url, "opened", 8, &pr_one),
    )
    .await;
    assert_eq!(status, 202, "{answer}");
    gd.follow(answer["deployments"][0]["id"].as_str().unwrap(), 0)
        .await;
    until("deployment.failed at the JSON receiver", || {
        receivers
            .at("ok/json")
            .iter()
            .any(|r| {
                serde_json::from_slice::<Value>(&r.body).unwrap()["event"] == "deployment.failed"
            })
            .then_some(())
    })
    .await;
    until("a failure status on GitHub", || {
        github
            .calls()
            .iter()
            .any(|c| c.body["state"] == "failure")
            .then_some(())
    })
    .await;
    let (status, _) = call(
        &gd,
        reqwest::Method::PATCH,
        "/api/projects/site",
        Some(json!({"build": {}})),
    )
    .await;
    assert_eq!(status, 200);
    // A promotion.
    let (status, _) = call(
        &gd,
        reqwest::Method::POST,
        "/api/projects/site/promote",
        Some(json!({"deployment": first})),
    )
    .await;
    assert_eq!(status, 200);
    until("deployment.promoted", || {
        receivers
            .at("ok/json")
            .iter()
            .any(|r| {
                serde_json::from_slice::<Value>(&r.body).unwrap()["event"] == "deployment.promoted"
            })
            .then_some(())
    })
    .await;

    // A token GitHub refuses: one call, recorded as refused, never retried. A rate-limited one:
    // waited out, then delivered.
    for (project, token) in [("refused", "ghp_bad"), ("limited", "ghp_limited")] {
        let (status, _) = call(&gd, reqwest::Method::POST, "/api/projects",
            Some(json!({"name": project, "repo": url, "production_branch": "main", "webhook_secret": SECRET}))).await;
        assert_eq!(status, 201);
        let (status, _) = call(
            &gd,
            reqwest::Method::PATCH,
            &format!("/api/projects/{project}"),
            Some(json!({"github": {"token": token, "repository": "owner/site"}})),
        )
        .await;
        assert_eq!(status, 200);
    }
    // One delivery, built by every project of the repository.
    let (status, answer) = hook(
        &gd,
        "pull_request",
        &pull_request(&url, "opened", 9, &pr_one),
    )
    .await;
    assert_eq!(status, 202, "{answer}");
    let refused = deliveries_until(&gd, "refused", "the refused token", |list| {
        list.iter().filter(|d| d["kind"] == "github").count() >= 2
    })
    .await;
    assert!(
        refused
            .iter()
            .filter(|d| d["kind"] == "github")
            .all(|d| d["outcome"] == "failed"
                && d["attempt"] == 1
                && d["error"].as_str().unwrap().contains("refused the token")),
        "{refused:#?}"
    );
    let limited = deliveries_until(&gd, "limited", "the rate-limited token", |list| {
        list.iter()
            .any(|d| d["kind"] == "github" && d["outcome"] == "delivered")
    })
    .await;
    let mut first_call: Vec<&Value> = limited.iter().filter(|d| d["kind"] == "github").collect();
    first_call.reverse();
    let steps: Vec<(&str, u64)> = first_call
        .iter()
        .take(4)
        .map(|d| {
            (
                d["outcome"].as_str().unwrap(),
                d["status"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(
        steps,
        [
            ("retrying", 403),
            ("retrying", 403),
            ("retrying", 502),
            ("delivered", 201)
        ],
        "{limited:#?}"
    );
    assert_eq!(github.refused(), Vec::<String>::new());
    assert!(
        gd.metric("gitdeploy_notifications_total{kind=\"github\",outcome=\"failed\"}")
            .await
            >= 2.0
    );
    assert!(
        gd.metric("gitdeploy_notifications_total{kind=\"webhook\",outcome=\"retried\"}")
            .await
            >= 2.0
    );

    // A target removed hears nothing more; an unknown one is a 404.
    let id = json_target["id"].as_str().unwrap();
    let (status, _) = call(
        &gd,
        reqwest::Method::DELETE,
        &format!("/api/projects/site/notifications/{id}"),
        None,
    )
    .await;
    assert_eq!(status, 204);
    let (status, _) = call(
        &gd,
        reqwest::Method::DELETE,
        &format!("/api/projects/site/notifications/{id}"),
        None,
    )
    .await;
    assert_eq!(status, 404);
}
