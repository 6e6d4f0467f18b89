//! The bench's ceiling (#18): a minimal Pingora server that answers the bench site's files from
//! memory with the headers the edge sends (type, ETag, Last-Modified, Cache-Control,
//! `X-Content-Type-Options`, `Accept-Ranges`, length) and `304` for a matching `If-None-Match`,
//! doing nothing else. Run in the same harness as the edge, it shows what the framework costs
//! apart from what GitDeploy adds:
//!
//! * `--mode proxy`: the answer is written in `request_filter` of a `pingora-proxy` `ProxyHttp`,
//!   the framework path every edge request takes (a proxy session and its phases per request);
//! * `--mode app`: a bare `pingora-core` `HttpServerApp`, reading the request and writing the
//!   answer on the HTTP session itself.
//!
//! ```text
//! pingora-ceiling --listen 127.0.0.1:8090 --root <site dir> --mode proxy
//! curl -i http://127.0.0.1:8090/ten-kib.html
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use clap::Parser;
use pingora_core::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream};
use pingora_core::protocols::http::ServerSession;
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::{RunArgs, Server, ShutdownWatch};
use pingora_core::services::listening::Service;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_http::ResponseHeader;
use pingora_proxy::{ProxyHttp, Session};

#[derive(Parser)]
struct Opts {
    /// Where to listen.
    #[arg(long)]
    listen: String,
    /// The site's files, served from memory.
    #[arg(long)]
    root: PathBuf,
    /// `proxy` or `app`.
    #[arg(long, default_value = "proxy")]
    mode: String,
    /// Worker threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

/// One file: its answer's headers and body.
struct File {
    etag: String,
    headers: Vec<(&'static str, String)>,
    body: Bytes,
}

type Files = Arc<HashMap<String, File>>;

fn load(root: &Path) -> anyhow::Result<HashMap<String, File>> {
    let mut files = HashMap::new();
    let mut stack = vec![root.to_owned()];
    let modified = httpdate::fmt_http_date(std::time::SystemTime::now());
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_dir() {
                if path.file_name().is_some_and(|n| n != ".git") {
                    stack.push(path);
                }
                continue;
            }
            let body = std::fs::read(&path)?;
            if body.len() > 4 << 20 {
                continue;
            }
            let rel = format!("/{}", path.strip_prefix(root)?.display());
            let etag = format!("\"{:016x}\"", fnv(&body));
            let content_type = match path.extension().and_then(|e| e.to_str()) {
                Some("html") => "text/html; charset=utf-8",
                Some("css") => "text/css; charset=utf-8",
                Some("js") => "text/javascript; charset=utf-8",
                Some("svg") => "image/svg+xml",
                Some("json") => "application/json",
                _ => "application/octet-stream",
            };
            let headers = vec![
                ("content-type", content_type.to_owned()),
                ("etag", etag.clone()),
                ("last-modified", modified.clone()),
                (
                    "cache-control",
                    "public, max-age=0, must-revalidate".to_owned(),
                ),
                ("x-content-type-options", "nosniff".to_owned()),
                ("accept-ranges", "bytes".to_owned()),
            ];
            files.insert(
                rel,
                File {
                    etag,
                    headers,
                    body: Bytes::from(body),
                },
            );
        }
    }
    Ok(files)
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100000001b3)
    })
}

/// The answer to a request for `path` with `if_none_match`: its header and body.
fn answer(files: &Files, path: &str, if_none_match: Option<&[u8]>) -> (ResponseHeader, Bytes) {
    let Some(file) = files.get(path) else {
        let mut resp = ResponseHeader::build(404, Some(2)).expect("a valid status");
        let _ = resp.insert_header("content-length", "0");
        return (resp, Bytes::new());
    };
    let not_modified = if_none_match == Some(file.etag.as_bytes());
    let mut resp =
        ResponseHeader::build(if not_modified { 304 } else { 200 }, Some(8)).expect("a status");
    for (name, value) in &file.headers {
        let _ = resp.insert_header(*name, value.as_str());
    }
    if not_modified {
        return (resp, Bytes::new());
    }
    let _ = resp.insert_header("content-length", file.body.len().to_string());
    (resp, file.body.clone())
}

/// The `pingora-proxy` responder.
struct ProxyCeiling {
    files: Files,
}

#[async_trait]
impl ProxyHttp for ProxyCeiling {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn request_filter(
        &self,
        session: &mut Session,
        _ctx: &mut (),
    ) -> pingora_error::Result<bool> {
        let req = session.req_header();
        let (resp, body) = answer(
            &self.files,
            req.uri.path(),
            req.headers.get("if-none-match").map(|v| v.as_bytes()),
        );
        let head = session.req_header().method == http::Method::HEAD;
        let end = head || body.is_empty();
        session.write_response_header(Box::new(resp), end).await?;
        if !end {
            session.write_response_body(Some(body), true).await?;
        }
        Ok(true)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut (),
    ) -> pingora_error::Result<Box<HttpPeer>> {
        pingora_error::Error::e_explain(pingora_error::ErrorType::InternalError, "no upstream")
    }
}

/// The bare `HttpServerApp` responder.
struct AppCeiling {
    files: Files,
}

#[async_trait]
impl HttpServerApp for AppCeiling {
    async fn process_new_http(
        self: &Arc<Self>,
        mut session: ServerSession,
        _shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        if !session.read_request().await.ok()? {
            return None;
        }
        let req = session.req_header();
        let head = req.method == http::Method::HEAD;
        let (resp, body) = answer(
            &self.files,
            req.uri.path(),
            req.headers.get("if-none-match").map(|v| v.as_bytes()),
        );
        session.write_response_header(Box::new(resp)).await.ok()?;
        if !head && !body.is_empty() {
            session.write_response_body(body, true).await.ok()?;
        }
        let settings = HttpPersistentSettings::for_session(&session);
        session
            .finish()
            .await
            .ok()
            .flatten()
            .map(|s| ReusedHttpStream::from_reusable_stream(s, settings))
    }
}

fn main() -> anyhow::Result<()> {
    let opts = Opts::parse();
    let files: Files = Arc::new(load(&opts.root)?);
    let conf = ServerConf {
        threads: opts.threads,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    match opts.mode.as_str() {
        "proxy" => {
            let mut proxy =
                pingora_proxy::http_proxy_service(&server.configuration, ProxyCeiling { files });
            proxy.add_tcp(&opts.listen);
            server.add_service(proxy);
        }
        "app" => {
            let mut app = Service::new("ceiling".into(), AppCeiling { files });
            app.add_tcp(&opts.listen);
            server.add_service(app);
        }
        other => anyhow::bail!("unknown mode {other:?}: proxy or app"),
    }
    server.run(RunArgs::default());
    Ok(())
}
