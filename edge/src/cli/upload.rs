//! `gitdeploy deploy ./dist --prebuilt`: a local folder published as is, through the deploy
//! API's upload protocol (`api::uploads`). The folder is collected by the same rules as a
//! build's output (limits, links that leave it refused, dotfiles private, `_redirects` and
//! `_headers` sent as text for the server to compile), and published by the builder's own
//! publish steps ([`publish::publish`]) through [`ApiBlobs`]: hash everything, ask which blobs
//! the store lacks, compress and upload only those, finalize. A terminal sees a progress bar;
//! anything else gets plain lines.

use std::io::IsTerminal;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gitdeploy_builder::collect::{self, OutputSource};
use gitdeploy_builder::publish::{self, BlobSink, Planned, Progress, Recorded};
use gitdeploy_core::job::BuildLimits;
use gitdeploy_core::{ContentHash, DeploymentId, Manifest};
use serde_json::{json, Value};

use super::Client;

/// Tries of one request that failed in a way worth retrying (connection, 5xx, 429).
const TRIES: u32 = 4;
/// Planned files sent in one `missing` request.
const LOOKUP_BATCH: usize = 5_000;

/// The deploy API as a publish's blob store, for one uploading deployment.
#[derive(Clone)]
pub(super) struct ApiBlobs {
    http: reqwest::Client,
    base: Arc<str>,
    token: Option<Arc<str>>,
    id: DeploymentId,
    redirects: Option<Arc<str>>,
    headers: Option<Arc<str>>,
}

impl ApiBlobs {
    /// The store of uploading deployment `id`.
    pub(super) fn new(client: &Client, id: DeploymentId) -> ApiBlobs {
        ApiBlobs {
            http: client.http.clone(),
            base: client.api.as_str().into(),
            token: client.token.as_deref().map(Into::into),
            id,
            redirects: None,
            headers: None,
        }
    }

    /// Puts blob `hash` from `file` (`size` bytes, named `what` in errors), counting what is
    /// sent into `sent` (from 0 again on each try).
    pub(super) async fn put_counted(
        &self,
        what: &str,
        hash: ContentHash,
        file: std::fs::File,
        size: u64,
        sent: Arc<std::sync::atomic::AtomicU64>,
    ) -> Result<(), String> {
        use std::sync::atomic::Ordering;
        self.send(&format!("uploading {what}"), || {
            use std::io::Seek;
            use tokio::io::AsyncReadExt;
            let mut again = file
                .try_clone()
                .map_err(|e| format!("cannot read {what}: {e}"))?;
            again
                .rewind()
                .map_err(|e| format!("cannot read {what}: {e}"))?;
            sent.store(0, Ordering::Relaxed);
            let state = (tokio::fs::File::from_std(again), sent.clone());
            let chunks = futures_util::stream::unfold(state, |(mut f, sent)| async move {
                let mut buf = vec![0u8; 256 << 10];
                match f.read(&mut buf).await {
                    Ok(0) => None,
                    Ok(n) => {
                        buf.truncate(n);
                        sent.fetch_add(n as u64, Ordering::Relaxed);
                        Some((Ok::<_, std::io::Error>(bytes::Bytes::from(buf)), (f, sent)))
                    }
                    Err(e) => Some((Err(e), (f, sent))),
                }
            });
            Ok(self
                .http
                .put(self.url(&format!("blobs/{hash}")))
                .header(reqwest::header::CONTENT_LENGTH, size)
                .body(reqwest::Body::wrap_stream(chunks)))
        })
        .await
        .map(|_| ())
    }

    /// Finalizes a source upload: its build is queued.
    pub(super) async fn finalize_source(&self) -> Result<(), String> {
        self.send("finalizing the upload", || {
            Ok(self.http.post(self.url("finalize")).json(&json!({})))
        })
        .await
        .map(|_| ())
    }

    fn url(&self, tail: &str) -> String {
        format!("{}/api/deployments/{}/{tail}", self.base, self.id)
    }

    /// Sends the request `make` builds, again after a failure worth retrying; the answer's
    /// JSON (`Null` for a 204) or the server's error message.
    async fn send(
        &self,
        what: &str,
        make: impl Fn() -> Result<reqwest::RequestBuilder, String>,
    ) -> Result<Value, String> {
        let mut backoff = Duration::from_millis(200);
        for attempt in 1..=TRIES {
            let mut req = make()?;
            if let Some(token) = &self.token {
                req = req.bearer_auth(token);
            }
            let retry = match req.send().await {
                Err(e) => format!("cannot reach GitDeploy: {e}"),
                Ok(resp) => {
                    let status = resp.status();
                    if status == reqwest::StatusCode::NO_CONTENT {
                        return Ok(Value::Null);
                    }
                    let value: Value = resp.json().await.unwrap_or_default();
                    if status.is_success() {
                        return Ok(value);
                    }
                    let message = value["error"]["message"]
                        .as_str()
                        .unwrap_or("request refused")
                        .to_owned();
                    if !(status.is_server_error() || status == 429) {
                        return Err(format!("{what}: {message} ({status})"));
                    }
                    format!("{message} ({status})")
                }
            };
            if attempt == TRIES {
                return Err(format!("{what}: {retry}"));
            }
            tokio::time::sleep(backoff).await;
            backoff *= 2;
        }
        unreachable!("the last try returns")
    }
}

impl BlobSink for ApiBlobs {
    fn deployment(&self) -> &DeploymentId {
        &self.id
    }

    fn records_variants(&self) -> bool {
        // The server records a variant only once it checked it, at finalize.
        false
    }

    async fn lookup(&self, files: Vec<Planned>) -> Result<Vec<Option<Recorded>>, String> {
        let mut found = std::collections::HashMap::new();
        for batch in files.chunks(LOOKUP_BATCH) {
            let body = json!({
                "files": batch.iter().map(|f| json!({"path": f.path, "hash": f.hash, "size": f.size})).collect::<Vec<_>>()
            });
            let answer = self
                .send("looking up the files", || {
                    Ok(self.http.post(self.url("missing")).json(&body))
                })
                .await?;
            if let Some(stored) = answer["stored"].as_object() {
                for (hash, recorded) in stored {
                    let hash = ContentHash::parse(hash).map_err(|e| format!("bad answer: {e}"))?;
                    // What the server recorded, or nothing when unreadable: then the variants
                    // are made again, which is only slower.
                    let recorded = recorded
                        .as_str()
                        .and_then(publish::read_recorded)
                        .unwrap_or_default();
                    found.insert(hash, recorded);
                }
            }
        }
        Ok(files.iter().map(|f| found.get(&f.hash).cloned()).collect())
    }

    async fn put(
        &self,
        hash: ContentHash,
        body: Vec<u8>,
        recorded: Option<Recorded>,
    ) -> Result<(), String> {
        let body = bytes::Bytes::from(body);
        // The variants made of a file go with it, for the server to check and record.
        let variants = recorded
            .map(|r| r.into_iter().filter(|(_, kept)| kept.is_some()).collect())
            .map(|r: Recorded| publish::write_recorded(&r))
            .filter(|text| !text.is_empty());
        self.send(&format!("uploading blob {hash}"), || {
            let mut req = self
                .http
                .put(self.url(&format!("blobs/{hash}")))
                .body(body.clone());
            if let Some(text) = &variants {
                req = req.header("x-gitdeploy-variants", text);
            }
            Ok(req)
        })
        .await
        .map(|_| ())
    }

    async fn put_large(
        &self,
        hash: ContentHash,
        file: std::fs::File,
        size: u64,
        relative: String,
    ) -> Result<(), String> {
        self.put_counted(&relative, hash, file, size, Default::default())
            .await
    }

    async fn finalize(&self, manifest: Manifest) -> Result<(), String> {
        let files: Vec<Value> = manifest
            .files
            .iter()
            .map(|(path, f)| {
                let encodings: serde_json::Map<String, Value> = f
                    .encodings
                    .iter()
                    .map(|(enc, v)| (enc.token().to_owned(), json!({"hash": v.hash, "size": v.size})))
                    .collect();
                json!({"path": path, "hash": f.hash, "size": f.size, "content_type": f.content_type, "encodings": encodings})
            })
            .collect();
        let mut body = json!({ "files": files });
        if let Some(text) = &self.redirects {
            body["redirects"] = json!(text.as_ref());
        }
        if let Some(text) = &self.headers {
            body["headers"] = json!(text.as_ref());
        }
        self.send("finalizing the upload", || {
            Ok(self.http.post(self.url("finalize")).json(&body))
        })
        .await
        .map(|_| ())
    }
}

/// The folder's files, by the rules a build's output is collected with.
fn collect_folder(dir: &Path) -> Result<Vec<collect::OutputFile>, String> {
    if !dir.is_dir() {
        return Err(format!("{} is not a folder", dir.display()));
    }
    let source = OutputSource {
        root: dir,
        checkout: dir,
        owner: None,
        // As when a repository's root is the site: dotfiles (but `.well-known`) stay private.
        from_repo_root: true,
        max_path_bytes: 1_000,
    };
    let files = collect::collect(&source, &BuildLimits::default())?;
    if files.is_empty() {
        return Err(format!("{} has no files to publish", dir.display()));
    }
    Ok(files)
}

/// Publishes folder `dir`; prints the URL at the end (and the production URL with `prod`).
pub(super) async fn deploy_folder(
    client: &Client,
    dir: &Path,
    project: Option<&str>,
    prod: bool,
) -> Result<i32, String> {
    let started = Instant::now();
    let files = collect_folder(dir)?;
    let redirects = collect::read_rule_file(dir, "_redirects")?;
    let headers = collect::read_rule_file(dir, "_headers")?;
    let mut body = json!({ "source": "local folder" });
    if let Some(p) = project {
        body["project"] = json!(p);
    }
    let opened = client.post("/api/deployments", body).await?;
    let id = opened["id"]
        .as_str()
        .and_then(DeploymentId::parse)
        .ok_or("the answer has no deployment id")?;
    let url = opened["url"].as_str().unwrap_or_default().to_owned();
    println!("Deployment {id} uploading from {}", dir.display());
    let blobs = ApiBlobs {
        redirects: redirects.map(Into::into),
        headers: headers.map(Into::into),
        ..ApiBlobs::new(client, id.clone())
    };
    let progress = Arc::new(Progress::default());
    let display = tokio::spawn(show_progress(progress.clone()));
    let published = publish::publish(
        &blobs,
        publish::Release {
            id: &id,
            project,
            commit: None,
        },
        files,
        Default::default(),
        &progress,
    )
    .await;
    display.abort();
    let _ = display.await;
    let published = match published {
        Ok(p) => p,
        Err(e) => {
            // Nothing was published; the deployment is not left open. What reached the store
            // is found there by the next deploy, which uploads only the rest.
            let _ = client
                .post(&format!("/api/deployments/{id}/cancel"), json!({}))
                .await;
            if std::io::stderr().is_terminal() {
                eprintln!();
            }
            return Err(e);
        }
    };
    finish_progress(&progress);
    println!(
        "Uploaded {} of {} files ({} blob{}, {}), {} already stored, in {:.2}s",
        published.files - published.reused,
        published.files,
        published.uploaded,
        if published.uploaded == 1 { "" } else { "s" },
        human_bytes(published.uploaded_bytes),
        published.reused,
        started.elapsed().as_secs_f64()
    );
    println!("Ready: {url}");
    if let (true, Some(project)) = (prod, project) {
        let p = client
            .post(
                &format!("/api/projects/{project}/promote"),
                json!({"deployment": id}),
            )
            .await?;
        println!("Production: {}", p["url"].as_str().unwrap_or_default());
    }
    Ok(super::EXIT_OK)
}

/// Redraws one status line on a terminal every 100 ms; elsewhere prints a line per phase.
async fn show_progress(progress: Arc<Progress>) {
    let tty = std::io::stderr().is_terminal();
    let started = Instant::now();
    let mut said_hashed = false;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tick.tick().await;
        let total = Progress::get(&progress.total_files);
        let hashed = Progress::get(&progress.hashed_files);
        let line = progress_line(&progress, started.elapsed());
        if tty {
            eprint!("\r\x1b[2K{line}");
        } else if !said_hashed && total > 0 && hashed == total {
            said_hashed = true;
            eprintln!(
                "Hashed {total} files ({})",
                human_bytes(Progress::get(&progress.total_bytes))
            );
        }
    }
}

/// Ends the progress display: the terminal's line is cleared, and plain output gets its
/// last line.
fn finish_progress(progress: &Progress) {
    if std::io::stderr().is_terminal() {
        eprint!("\r\x1b[2K");
    } else {
        eprintln!(
            "{} of {} files were new",
            Progress::get(&progress.missing_files),
            Progress::get(&progress.total_files)
        );
    }
}

/// The progress bar's text: files done of all, bytes uploaded, rate.
fn progress_line(p: &Progress, elapsed: Duration) -> String {
    let total = Progress::get(&p.total_files).max(1);
    let hashed = Progress::get(&p.hashed_files);
    let done = Progress::get(&p.done_files);
    let uploaded = Progress::get(&p.uploaded_bytes);
    let (phase, count) = if hashed < total {
        ("Hashing  ", hashed)
    } else {
        ("Uploading", done)
    };
    const WIDTH: u64 = 24;
    let filled = (count * WIDTH / total) as usize;
    let rate = uploaded as f64 / elapsed.as_secs_f64().max(0.001);
    format!(
        "{phase} [{}{}] {count}/{total} files  {} sent  {}/s",
        "#".repeat(filled),
        " ".repeat(WIDTH as usize - filled),
        human_bytes(uploaded),
        human_bytes(rate as u64)
    )
}

/// `1.5 MB`-style sizes (powers of 1,000, like `ls -h --si`).
pub(super) fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_like_ls_si() {
        for (n, want) in [
            (0, "0 B"),
            (999, "999 B"),
            (1000, "1.0 kB"),
            (1_500_000, "1.5 MB"),
            (3_000_000_000, "3.0 GB"),
        ] {
            assert_eq!(human_bytes(n), want);
        }
    }

    #[test]
    fn the_progress_line_shows_files_bytes_and_rate() {
        let p = Progress::default();
        Progress::add(&p.total_files, 10);
        Progress::add(&p.hashed_files, 5);
        let line = progress_line(&p, Duration::from_secs(1));
        assert!(
            line.starts_with("Hashing   [############            ] 5/10 files"),
            "{line}"
        );
        Progress::add(&p.hashed_files, 5);
        Progress::add(&p.done_files, 10);
        Progress::add(&p.uploaded_bytes, 2_000_000);
        let line = progress_line(&p, Duration::from_secs(2));
        assert_eq!(
            line,
            "Uploading [########################] 10/10 files  2.0 MB sent  1.0 MB/s"
        );
    }
}
