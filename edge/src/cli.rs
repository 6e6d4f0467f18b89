//! The command-line client: speaks only the public API.

use futures_util::StreamExt;
use gitdeploy_core::{DeploymentStatus, LogRecord, LogStream};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// Options of `gitdeploy deploy`.
#[derive(clap::Args, Debug)]
pub struct DeployOptions {
    /// Repository URL (https, http, git or an absolute local path).
    repo: String,
    /// Branch, tag or commit (the default branch when absent).
    #[arg(long = "ref")]
    git_ref: Option<String>,
    /// Project the deployment belongs to.
    #[arg(long)]
    project: Option<String>,
    /// Stream the build log until the deployment is ready or failed.
    #[arg(long, short)]
    follow: bool,
    /// GitDeploy API address.
    #[arg(long, env = "GITDEPLOY_API", default_value = "http://localhost:8080")]
    api: String,
    /// API token, when the server requires one.
    #[arg(long, env = "GITDEPLOY_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

/// Exit status: ready (or queued without --follow).
const EXIT_OK: i32 = 0;
/// Exit status: the build failed.
const EXIT_FAILED: i32 = 1;
/// Exit status: the request could not be made or was refused.
const EXIT_ERROR: i32 = 2;

/// Runs `gitdeploy deploy`; returns the exit status.
pub fn deploy(opts: DeployOptions) -> i32 {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_ERROR;
        }
    };
    match rt.block_on(deploy_async(opts)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            EXIT_ERROR
        }
    }
}

async fn deploy_async(opts: DeployOptions) -> Result<i32, String> {
    let api = opts.api.trim_end_matches('/');
    let mut body = json!({ "repo": opts.repo });
    if let Some(r) = &opts.git_ref {
        body["ref"] = json!(r);
    }
    if let Some(p) = &opts.project {
        body["project"] = json!(p);
    }
    let mut req = reqwest::Client::new()
        .post(format!("{api}/api/deployments"))
        .json(&body);
    if let Some(token) = &opts.token {
        req = req.bearer_auth(token);
    }
    let resp = req
        .send()
        .await
        .map_err(|e| format!("cannot reach GitDeploy at {api}: {e}"))?;
    let status = resp.status();
    let answer: Value = resp
        .json()
        .await
        .map_err(|e| format!("unreadable answer ({status}): {e}"))?;
    if !status.is_success() {
        let message = answer["error"]["message"]
            .as_str()
            .unwrap_or("request refused");
        return Err(format!("{message} ({status})"));
    }
    let id = answer["id"]
        .as_str()
        .ok_or("the answer has no deployment id")?;
    let url = answer["url"].as_str().unwrap_or_default();
    println!("Deployment {id} queued: {url}");
    if !opts.follow {
        return Ok(EXIT_OK);
    }
    let ws_url = format!(
        "{}/api/deployments/{id}/logs/ws",
        api.replacen("http", "ws", 1)
    );
    let mut request = ws_url
        .as_str()
        .into_client_request()
        .map_err(|e| format!("bad log address {ws_url}: {e}"))?;
    if let Some(token) = &opts.token {
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| "the token is not a valid header value")?;
        request.headers_mut().insert("authorization", value);
    }
    let (mut socket, _) = tokio_tungstenite::connect_async(request)
        .await
        .map_err(|e| format!("cannot follow the log: {e}"))?;
    while let Some(msg) = socket.next().await {
        let text = match msg.map_err(|e| format!("log stream broke: {e}"))? {
            Message::Text(t) => t,
            Message::Close(_) => break,
            _ => continue,
        };
        let record: LogRecord =
            serde_json::from_str(&text).map_err(|e| format!("bad log record: {e}"))?;
        match record.stream {
            LogStream::System => println!("▸ {}", record.line),
            LogStream::Stdout => println!("  {}", record.line),
            LogStream::Stderr => eprintln!("  {}", record.line),
        }
        if let Some(outcome) = record.outcome {
            return Ok(if outcome.status == DeploymentStatus::Ready {
                println!("Ready: {url}");
                EXIT_OK
            } else {
                eprintln!(
                    "Failed: {}",
                    outcome.error.unwrap_or_else(|| "unknown error".into())
                );
                EXIT_FAILED
            });
        }
    }
    Err("the log ended without an outcome".into())
}
