//! The command-line client: speaks only the public API. Every command takes `--api`
//! (`GITDEPLOY_API`) and a token from `--token`, `GITDEPLOY_TOKEN` or `gitdeploy login`; listings
//! print tables, or JSON with `--json`; errors are one line on stderr with a non-zero exit.

use std::path::PathBuf;

use futures_util::StreamExt;
use gitdeploy_core::{LogRecord, Outcome};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// A deployment whose build was queued.
struct Queued {
    id: String,
    url: String,
}

impl Queued {
    /// With `follow` (or `prod`): streams the build log to its end, prints the URL, and with
    /// `prod` promotes it; the exit status.
    async fn finish(
        self,
        client: &Client,
        project: Option<&str>,
        prod: bool,
        follow: bool,
    ) -> Result<i32, String> {
        if !follow && !prod {
            return Ok(EXIT_OK);
        }
        let code = report_outcome(client.follow(&self.id, 0).await?);
        if code != EXIT_OK {
            return Ok(code);
        }
        println!("Ready: {}", self.url);
        if let (true, Some(project)) = (prod, project) {
            let p = client
                .post(
                    &format!("/api/projects/{project}/promote"),
                    json!({"deployment": self.id}),
                )
                .await?;
            println!("Production: {}", str_of(&p, "url"));
        }
        Ok(EXIT_OK)
    }
}

/// Where to reach GitDeploy.
#[derive(clap::Args, Debug, Clone)]
pub struct ApiOptions {
    /// GitDeploy API address.
    #[arg(
        long,
        global = true,
        env = "GITDEPLOY_API",
        default_value = "http://localhost:8080"
    )]
    api: String,
    /// API token (else GITDEPLOY_TOKEN, else the one saved by `gitdeploy login`).
    #[arg(long, global = true, env = "GITDEPLOY_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

/// Client commands.
#[derive(clap::Subcommand, Debug)]
pub enum ClientCommand {
    /// Deploy a repository (prints the URL at once; with --follow streams the log to the end),
    /// a source folder to be built on the server (`gitdeploy deploy .`: .gitignore respected,
    /// its build followed), or with --prebuilt a built folder as is (`gitdeploy deploy ./dist
    /// --prebuilt`).
    Deploy {
        /// Repository URL (https, http, git or an absolute local path), a relative source
        /// folder (`.`, `./site`), or with --prebuilt the folder to publish.
        repo: String,
        /// Publish the folder as is, without a build: only files the store lacks are uploaded.
        #[arg(long)]
        prebuilt: bool,
        /// Branch, tag or commit (the default branch when absent).
        #[arg(long = "ref")]
        git_ref: Option<String>,
        /// Project the deployment belongs to.
        #[arg(long)]
        project: Option<String>,
        /// Make it the project's production deployment once ready (implies --follow).
        #[arg(long)]
        prod: bool,
        /// Stream the build log until the deployment is ready or failed.
        #[arg(long, short)]
        follow: bool,
    },
    /// Print a deployment's build log.
    Logs {
        /// Deployment id.
        id: String,
        /// Keep following until the build ends.
        #[arg(long, short)]
        follow: bool,
        /// Start at this line number.
        #[arg(long, default_value_t = 0)]
        since: u64,
    },
    /// List recent deployments.
    Ls {
        /// Only this project's.
        #[arg(long)]
        project: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one deployment.
    Inspect {
        /// Deployment id.
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Make a deployment the project's production deployment.
    Promote {
        /// Project name.
        project: String,
        /// Deployment id.
        id: String,
    },
    /// Move a project back to its previous production deployment.
    Rollback {
        /// Project name.
        project: String,
    },
    /// Cancel a queued or running build.
    Cancel {
        /// Deployment id.
        id: String,
    },
    /// List projects.
    Projects {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// A project's custom domains.
    Domains {
        /// What to do.
        #[command(subcommand)]
        action: DomainAction,
    },
    /// Named API tokens with scopes (read, deploy, admin) and an optional project.
    Tokens {
        /// What to do.
        #[command(subcommand)]
        action: TokenAction,
    },
    /// The newest API mutations: who did what, when.
    Audit {
        /// How many entries.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Save an API token for later commands (read from --token or standard input).
    Login,
    /// Exit 0 when the server answers its health check (container health checks).
    Health,
}

mod domains;
mod output;
mod source;
mod tokens;
mod upload;
use domains::domains;
pub use domains::DomainAction;
use output::*;
pub use tokens::TokenAction;

/// Exit status: done (or ready).
const EXIT_OK: i32 = 0;
/// Exit status: the build failed or was canceled.
const EXIT_FAILED: i32 = 1;
/// Exit status: the request could not be made or was refused.
const EXIT_ERROR: i32 = 2;

/// Runs a client command; returns the exit status.
pub fn run(api: ApiOptions, command: ClientCommand) -> i32 {
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
    match rt.block_on(run_async(api, command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            EXIT_ERROR
        }
    }
}

fn token_file() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("gitdeploy").join("token"))
}

struct Client {
    api: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Client {
    fn new(opts: &ApiOptions) -> Self {
        let token = opts.token.clone().or_else(|| {
            token_file()
                .and_then(|f| std::fs::read_to_string(f).ok())
                .map(|t| t.trim().to_owned())
                .filter(|t| !t.is_empty())
        });
        Client {
            api: opts.api.trim_end_matches('/').to_owned(),
            token,
            http: reqwest::Client::new(),
        }
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, String> {
        let mut req = self.http.request(method, format!("{}{path}", self.api));
        if let Some(token) = &self.token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| format!("cannot reach GitDeploy at {}: {e}", self.api))?;
        let status = resp.status();
        if status == reqwest::StatusCode::NO_CONTENT {
            return Ok(Value::Null);
        }
        let value: Value = resp
            .json()
            .await
            .map_err(|e| format!("unreadable answer ({status}): {e}"))?;
        if !status.is_success() {
            let message = value["error"]["message"]
                .as_str()
                .unwrap_or("request refused");
            return Err(format!("{message} ({status})"));
        }
        Ok(value)
    }

    async fn get(&self, path: &str) -> Result<Value, String> {
        self.call(reqwest::Method::GET, path, None).await
    }

    async fn post(&self, path: &str, body: Value) -> Result<Value, String> {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    /// Streams a log over the WebSocket, printing each line; returns the outcome status. A
    /// stream that ends before the final record (the connection broke, or the server could not
    /// read the log for a moment) is resumed after the last record, a few times with backoff.
    async fn follow(&self, id: &str, since: u64) -> Result<Option<Outcome>, String> {
        let mut printer = LogPrinter::for_terminal();
        let mut next = since;
        let mut backoff = std::time::Duration::from_millis(500);
        for attempt in 0..6 {
            if attempt > 0 {
                tokio::time::sleep(backoff).await;
                backoff *= 2;
            }
            match self.follow_once(id, &mut next, &mut printer).await {
                Ok(Some(outcome)) => return Ok(Some(outcome)),
                Ok(None) => continue,
                Err(e) => {
                    printer.clear_spinner();
                    return Err(e);
                }
            }
        }
        printer.clear_spinner();
        Ok(None)
    }

    /// One connection of [`Client::follow`], from record `next` on (advanced as records come):
    /// the outcome, `None` when the stream ended before it, or why the log cannot be followed.
    async fn follow_once(
        &self,
        id: &str,
        next: &mut u64,
        printer: &mut LogPrinter,
    ) -> Result<Option<Outcome>, String> {
        let ws_url = format!(
            "{}/api/deployments/{id}/logs/ws?since={next}&batch=1",
            self.api.replacen("http", "ws", 1)
        );
        let mut request = ws_url
            .as_str()
            .into_client_request()
            .map_err(|e| format!("bad log address {ws_url}: {e}"))?;
        if let Some(token) = &self.token {
            let value = format!("Bearer {token}")
                .parse()
                .map_err(|_| "the token is not a valid header value")?;
            request.headers_mut().insert("authorization", value);
        }
        let (mut socket, _) = tokio_tungstenite::connect_async(request)
            .await
            .map_err(|e| format!("cannot follow the log: {e}"))?;
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(100));
        loop {
            let msg = tokio::select! {
                msg = socket.next() => msg,
                _ = tick.tick() => {
                    printer.spin();
                    continue;
                }
            };
            let text = match msg {
                Some(Ok(Message::Text(t))) => t,
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return Ok(None),
                Some(Ok(_)) => continue,
            };
            // Batch mode: one record per line of the frame.
            for line in text.as_str().split('\n') {
                let record: LogRecord =
                    serde_json::from_str(line).map_err(|e| format!("bad log record: {e}"))?;
                if record.seq < *next {
                    continue;
                }
                *next = record.seq + 1;
                printer.print(&record);
                if let Some(outcome) = record.outcome {
                    return Ok(Some(outcome));
                }
            }
        }
    }
}

async fn run_async(opts: ApiOptions, command: ClientCommand) -> Result<i32, String> {
    let client = Client::new(&opts);
    match command {
        ClientCommand::Health => {
            let answer = client.get("/api/health").await?;
            if answer["ok"] == json!(true) {
                println!("ok");
                Ok(EXIT_OK)
            } else {
                Err(format!("unhealthy: {answer}"))
            }
        }
        ClientCommand::Deploy {
            repo,
            prebuilt,
            git_ref,
            project,
            prod,
            follow,
        } => {
            if prod && project.is_none() {
                return Err("--prod needs --project".into());
            }
            if prebuilt {
                if git_ref.is_some() {
                    return Err("--ref is for repositories; a --prebuilt folder has none".into());
                }
                return upload::deploy_folder(
                    &client,
                    std::path::Path::new(&repo),
                    project.as_deref(),
                    prod,
                )
                .await;
            }
            if std::path::Path::new(&repo).is_dir() && !repo.starts_with('/') {
                if git_ref.is_some() {
                    return Err(format!(
                        "--ref is for repositories; {repo} is a local folder, sent as it is on disk"
                    ));
                }
                let queued = source::deploy_source(
                    &client,
                    std::path::Path::new(&repo),
                    project.as_deref(),
                    prod,
                )
                .await?;
                return queued.finish(&client, project.as_deref(), prod, true).await;
            }
            let mut body = json!({ "repo": repo });
            if let Some(r) = &git_ref {
                body["ref"] = json!(r);
            }
            if let Some(p) = &project {
                body["project"] = json!(p);
            }
            let answer = client.post("/api/deployments", body).await?;
            let id = answer["id"]
                .as_str()
                .ok_or("the answer has no deployment id")?
                .to_owned();
            let url = str_of(&answer, "url").to_owned();
            println!("Deployment {id} queued: {url}");
            if let Some(alias) = answer["alias"]["url"].as_str() {
                let branch = str_of(&answer["alias"], "branch");
                println!("Branch URL: {alias} (follows the latest ready build of {branch})");
            }
            Queued { id, url }
                .finish(&client, project.as_deref(), prod, follow)
                .await
        }
        ClientCommand::Logs { id, follow, since } => {
            if follow {
                return Ok(report_outcome(client.follow(&id, since).await?));
            }
            let url = format!("{}/api/deployments/{id}/logs?since={since}", client.api);
            let mut req = client.http.get(url);
            if let Some(token) = &client.token {
                req = req.bearer_auth(token);
            }
            let resp = req
                .send()
                .await
                .map_err(|e| format!("cannot reach GitDeploy: {e}"))?;
            if !resp.status().is_success() {
                let status = resp.status();
                let v: Value = resp.json().await.unwrap_or_default();
                return Err(format!(
                    "{} ({status})",
                    v["error"]["message"].as_str().unwrap_or("request refused")
                ));
            }
            let text = resp.text().await.map_err(|e| e.to_string())?;
            let mut printer = LogPrinter::for_terminal();
            for line in text.lines() {
                let record: LogRecord =
                    serde_json::from_str(line).map_err(|e| format!("bad log record: {e}"))?;
                printer.print(&record);
            }
            Ok(EXIT_OK)
        }
        ClientCommand::Ls { project, json } => {
            let path = match &project {
                Some(p) => format!("/api/projects/{p}"),
                None => "/api/deployments".into(),
            };
            let answer = client.get(&path).await?;
            let list = answer["deployments"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if json {
                return Ok(print_json(&list));
            }
            let rows = list
                .iter()
                .map(|d| {
                    vec![
                        str_of(d, "id").to_owned(),
                        str_of(d, "status").to_owned(),
                        d["project"].as_str().unwrap_or("-").to_owned(),
                        d["ref"].as_str().unwrap_or("-").to_owned(),
                        d["commit"]
                            .as_str()
                            .map(|c| c.chars().take(8).collect())
                            .unwrap_or_else(|| "-".into()),
                        age(d["created_unix_ms"].as_u64().unwrap_or(0)),
                        str_of(d, "url").to_owned(),
                    ]
                })
                .collect();
            println!(
                "{}",
                table(
                    &["ID", "STATUS", "PROJECT", "REF", "COMMIT", "AGE", "URL"],
                    rows
                )
            );
            Ok(EXIT_OK)
        }
        ClientCommand::Inspect { id, json } => {
            let d = client.get(&format!("/api/deployments/{id}")).await?;
            if json {
                return Ok(print_json(&d));
            } else {
                for key in [
                    "id",
                    "status",
                    "url",
                    "project",
                    "project_url",
                    "repo",
                    "ref",
                    "commit",
                    "error",
                ] {
                    if let Some(v) = d[key].as_str() {
                        println!("{key:<12} {v}");
                    }
                }
                if let Some(alias) = d["alias"]["url"].as_str() {
                    println!("{:<12} {alias}", "alias_url");
                }
                if d["pinned"] == true {
                    println!("{:<12} yes", "pinned");
                }
            }
            Ok(EXIT_OK)
        }
        ClientCommand::Promote { project, id } => {
            let p = client
                .post(
                    &format!("/api/projects/{project}/promote"),
                    json!({"deployment": id}),
                )
                .await?;
            println!(
                "{} now serves {} at {}",
                project,
                str_of(&p, "production"),
                str_of(&p, "url")
            );
            Ok(EXIT_OK)
        }
        ClientCommand::Rollback { project } => {
            let p = client
                .post(&format!("/api/projects/{project}/rollback"), json!({}))
                .await?;
            println!(
                "{} rolled back to {} at {}",
                project,
                str_of(&p, "production"),
                str_of(&p, "url")
            );
            Ok(EXIT_OK)
        }
        ClientCommand::Cancel { id } => {
            client
                .post(&format!("/api/deployments/{id}/cancel"), json!({}))
                .await?;
            println!("Canceling {id}");
            Ok(EXIT_OK)
        }
        ClientCommand::Projects { json } => {
            let answer = client.get("/api/projects").await?;
            let list = answer["projects"].as_array().cloned().unwrap_or_default();
            if json {
                return Ok(print_json(&list));
            }
            let rows = list
                .iter()
                .map(|p| {
                    vec![
                        str_of(p, "name").to_owned(),
                        p["production"].as_str().unwrap_or("-").to_owned(),
                        str_of(p, "url").to_owned(),
                        str_of(p, "repo").to_owned(),
                    ]
                })
                .collect();
            println!("{}", table(&["NAME", "PRODUCTION", "URL", "REPO"], rows));
            Ok(EXIT_OK)
        }
        ClientCommand::Domains { action } => domains(&client, action).await,
        ClientCommand::Tokens { action } => tokens::tokens(&client, action).await,
        ClientCommand::Audit { limit, json } => tokens::audit(&client, limit, json).await,
        ClientCommand::Login => {
            let token = match opts.token {
                Some(t) => t,
                None => {
                    let mut line = String::new();
                    std::io::stdin()
                        .read_line(&mut line)
                        .map_err(|e| e.to_string())?;
                    line.trim().to_owned()
                }
            };
            if token.is_empty() {
                return Err("no token given (pass --token or type it on standard input)".into());
            }
            let check = Client {
                token: Some(token.clone()),
                ..client
            };
            check
                .get("/api/deployments")
                .await
                .map_err(|e| format!("the token was not accepted: {e}"))?;
            let file = token_file().ok_or("cannot find a configuration directory (set HOME)")?;
            if let Some(dir) = file.parent() {
                std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
            }
            write_private(&file, &token).map_err(|e| format!("cannot save the token: {e}"))?;
            println!("Token saved to {}", file.display());
            Ok(EXIT_OK)
        }
    }
}

fn write_private(path: &std::path::Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(contents.as_bytes())
}
