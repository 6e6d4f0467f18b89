//! A stand-in for GitHub's REST API on loopback, strict about what GitHub documents: the paths
//! and methods of commit statuses and issue comments, the headers every call must carry
//! (`Authorization: Bearer`, `Accept: application/vnd.github+json`, `X-GitHub-Api-Version`,
//! `User-Agent`), and each body's fields and values. A call that breaks a rule is answered 422
//! and kept in `refused`, so a test can require that none was. Tokens script the answers:
//! `ghp_good` is served; `ghp_limited` first meets a secondary rate limit (`Retry-After`), then
//! a spent primary limit (`X-RateLimit-Remaining: 0`, `X-RateLimit-Reset`), then a 502, then
//! is served; any other token gets GitHub's 401.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

/// One call as received.
#[derive(Clone, Debug)]
pub struct Call {
    pub method: String,
    pub path: String,
    pub token: String,
    pub body: Value,
    pub status: u16,
}

#[derive(Default)]
pub struct Recorded {
    /// Every call, in order.
    pub calls: Vec<Call>,
    /// Calls that broke GitHub's documented format, and why.
    pub refused: Vec<String>,
    /// Comments by id: their bodies.
    pub comments: HashMap<u64, String>,
    next_comment: u64,
    limited_calls: u32,
}

/// The running stand-in.
pub struct FakeGithub {
    pub base: String,
    pub state: Arc<Mutex<Recorded>>,
    _server: tokio::task::JoinHandle<()>,
}

impl FakeGithub {
    pub async fn start() -> Self {
        let state = Arc::new(Mutex::new(Recorded {
            next_comment: 1000,
            ..Recorded::default()
        }));
        let app =
            axum::Router::new()
                .route(
                    "/api/v3/repos/{owner}/{repo}/statuses/{sha}",
                    axum::routing::post(status),
                )
                .route(
                    "/api/v3/repos/{owner}/{repo}/issues/{number}/comments",
                    axum::routing::post(create_comment),
                )
                .route(
                    "/api/v3/repos/{owner}/{repo}/issues/comments/{id}",
                    axum::routing::patch(edit_comment),
                )
                .fallback(
                    |method: Method,
                     uri: axum::http::Uri,
                     State(s): State<Arc<Mutex<Recorded>>>| async move {
                        s.lock()
                            .unwrap()
                            .refused
                            .push(format!("no such route: {method} {uri}"));
                        (StatusCode::NOT_FOUND, Json(json!({"message": "Not Found"})))
                    },
                )
                .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}/api/v3", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        FakeGithub {
            base,
            state,
            _server: server,
        }
    }

    pub fn calls(&self) -> Vec<Call> {
        self.state.lock().unwrap().calls.clone()
    }

    pub fn refused(&self) -> Vec<String> {
        self.state.lock().unwrap().refused.clone()
    }

    pub fn comments(&self) -> HashMap<u64, String> {
        self.state.lock().unwrap().comments.clone()
    }
}

/// The headers GitHub asks of every REST call; the token, or why the call is refused.
fn check_headers(headers: &HeaderMap) -> Result<String, String> {
    let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("");
    if h("accept") != "application/vnd.github+json" {
        return Err(format!("Accept is {:?}", h("accept")));
    }
    if h("x-github-api-version") != "2022-11-28" {
        return Err(format!(
            "X-GitHub-Api-Version is {:?}",
            h("x-github-api-version")
        ));
    }
    if h("user-agent").is_empty() {
        return Err("no User-Agent (GitHub refuses such calls)".into());
    }
    if !h("content-type").starts_with("application/json") {
        return Err(format!("Content-Type is {:?}", h("content-type")));
    }
    h("authorization")
        .strip_prefix("Bearer ")
        .map(str::to_owned)
        .ok_or_else(|| "no Authorization: Bearer".into())
}

fn valid_repo(owner: &str, repo: &str) -> bool {
    [owner, repo].iter().all(|p| {
        !p.is_empty()
            && p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    })
}

/// What a token gets before its call is served: `Some(answer)` to answer that instead.
fn scripted(s: &mut Recorded, token: &str) -> Option<Response> {
    match token {
        "ghp_good" => None,
        "ghp_limited" => {
            s.limited_calls += 1;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs();
            match s.limited_calls {
                1 => Some(
                    (
                        StatusCode::FORBIDDEN,
                        [("retry-after", "1".to_owned())],
                        Json(json!({"message": "You have exceeded a secondary rate limit. Please wait a few minutes before you try again."})),
                    )
                        .into_response(),
                ),
                2 => Some(
                    (
                        StatusCode::FORBIDDEN,
                        [
                            ("x-ratelimit-limit", "5000".to_owned()),
                            ("x-ratelimit-remaining", "0".to_owned()),
                            ("x-ratelimit-reset", (now + 1).to_string()),
                        ],
                        Json(json!({"message": "API rate limit exceeded for user ID 1."})),
                    )
                        .into_response(),
                ),
                3 => Some((StatusCode::BAD_GATEWAY, "upstream trouble").into_response()),
                _ => None,
            }
        }
        _ => Some(
            (
                StatusCode::UNAUTHORIZED,
                Json(json!({"message": "Bad credentials", "documentation_url": "https://docs.github.com/rest", "status": "401"})),
            )
                .into_response(),
        ),
    }
}

/// Records a call, checking the common rules; `Err` answers it.
fn take(
    state: &Arc<Mutex<Recorded>>,
    method: &str,
    path: String,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<(String, Value), Box<Response>> {
    let mut s = state.lock().unwrap();
    let refuse = |s: &mut Recorded, why: String| {
        s.refused.push(format!("{method} {path}: {why}"));
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({"message": "Validation Failed", "errors": [why]})),
        )
            .into_response()
    };
    let token = match check_headers(headers) {
        Ok(t) => t,
        Err(why) => return Err(Box::new(refuse(&mut s, why))),
    };
    let body: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return Err(Box::new(refuse(&mut s, format!("body is not JSON: {e}")))),
    };
    let answer = scripted(&mut s, &token);
    s.calls.push(Call {
        method: method.into(),
        path,
        token: token.clone(),
        body: body.clone(),
        status: answer.as_ref().map_or(0, |r| r.status().as_u16()),
    });
    match answer {
        Some(r) => Err(Box::new(r)),
        None => Ok((token, body)),
    }
}

async fn status(
    State(state): State<Arc<Mutex<Recorded>>>,
    Path((owner, repo, sha)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = format!("/repos/{owner}/{repo}/statuses/{sha}");
    let (_, body) = match take(&state, "POST", path.clone(), &headers, &body) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let mut problems = Vec::new();
    if !valid_repo(&owner, &repo) {
        problems.push("bad owner/repo".to_owned());
    }
    if sha.len() != 40 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
        problems.push(format!("sha {sha:?} is not a commit"));
    }
    let object = body.as_object().cloned().unwrap_or_default();
    for key in object.keys() {
        if !["state", "target_url", "description", "context"].contains(&key.as_str()) {
            problems.push(format!("unknown field {key}"));
        }
    }
    match object.get("state").and_then(Value::as_str) {
        Some("error" | "failure" | "pending" | "success") => {}
        other => problems.push(format!("state {other:?}")),
    }
    for key in ["target_url", "description", "context"] {
        if let Some(v) = object.get(key) {
            if !v.is_string() && !v.is_null() {
                problems.push(format!("{key} is not a string"));
            }
        }
    }
    if object
        .get("description")
        .and_then(Value::as_str)
        .is_some_and(|d| d.chars().count() > 140)
    {
        problems.push("description over 140 characters".into());
    }
    if let Some(url) = object.get("target_url").and_then(Value::as_str) {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            problems.push("target_url is not a URL".into());
        }
    }
    if !problems.is_empty() {
        let mut s = state.lock().unwrap();
        s.refused.push(format!("POST {path}: {problems:?}"));
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({"message": "Validation Failed"})),
        )
            .into_response();
    }
    (
        StatusCode::CREATED,
        Json(json!({"id": 1, "state": object["state"], "context": object.get("context").cloned().unwrap_or(json!("default"))})),
    )
        .into_response()
}

fn comment_body(body: &Value) -> Result<String, String> {
    let object = body.as_object().ok_or("body is not an object")?;
    if object.keys().any(|k| k != "body") {
        return Err("only \"body\" is a field".into());
    }
    object
        .get("body")
        .and_then(Value::as_str)
        .filter(|b| !b.is_empty() && b.chars().count() <= 65_536)
        .map(str::to_owned)
        .ok_or_else(|| "body must be 1-65536 characters".into())
}

async fn create_comment(
    State(state): State<Arc<Mutex<Recorded>>>,
    Path((owner, repo, number)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = format!("/repos/{owner}/{repo}/issues/{number}/comments");
    let (_, body) = match take(&state, "POST", path.clone(), &headers, &body) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let mut s = state.lock().unwrap();
    match (comment_body(&body), number.parse::<u64>()) {
        (Ok(text), Ok(_)) if valid_repo(&owner, &repo) => {
            s.next_comment += 1;
            let id = s.next_comment;
            s.comments.insert(id, text.clone());
            (StatusCode::CREATED, Json(json!({"id": id, "body": text}))).into_response()
        }
        (why, n) => {
            s.refused.push(format!("POST {path}: {why:?} {n:?}"));
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                Json(json!({"message": "Validation Failed"})),
            )
                .into_response()
        }
    }
}

async fn edit_comment(
    State(state): State<Arc<Mutex<Recorded>>>,
    Path((owner, repo, id)): Path<(String, String, u64)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = format!("/repos/{owner}/{repo}/issues/comments/{id}");
    let (_, body) = match take(&state, "PATCH", path.clone(), &headers, &body) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let mut s = state.lock().unwrap();
    match comment_body(&body) {
        Ok(text) if s.comments.contains_key(&id) => {
            s.comments.insert(id, text.clone());
            (StatusCode::OK, Json(json!({"id": id, "body": text}))).into_response()
        }
        Ok(_) => (StatusCode::NOT_FOUND, Json(json!({"message": "Not Found"}))).into_response(),
        Err(why) => {
            s.refused.push(format!("PATCH {path}: {why}"));
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                Json(json!({"message": "Validation Failed"})),
            )
                .into_response()
        }
    }
}
