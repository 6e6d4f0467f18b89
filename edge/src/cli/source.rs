//! `gitdeploy deploy .`: a source folder sent to be built on the server, as a push to a
//! repository would be. The folder is listed the way git sees it (its repository's `.gitignore`
//! rules when it is inside one, else its own `.gitignore` files), always without `node_modules`
//! and `.git`; packed into one deterministic archive ([`source_archive::pack`]), so an unchanged
//! folder is one blob the store already holds; sent through the upload protocol (open with the
//! archive's hash, put it if missing, finalize); then the build is followed to its end.

use std::io::{IsTerminal, Write as _};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gitdeploy_builder::source_archive::{self, check_link_target, SourceEntry, SourceKind};
use gitdeploy_core::{ContentHash, DeploymentId};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::upload::{human_bytes, ApiBlobs};
use super::{Client, Queued};

/// The most a source folder may hold before packing: more is build output or dependencies
/// that `.gitignore` should leave out.
const MAX_SOURCE_BYTES: u64 = 1 << 30;
/// The most entries it may hold.
const MAX_SOURCE_ENTRIES: usize = 100_000;
/// Folders never sent, whatever `.gitignore` says: the build installs dependencies itself.
const ALWAYS_LEFT_OUT: [&str; 2] = ["node_modules", ".git"];

/// What listing a source folder found.
struct Listing {
    entries: Vec<SourceEntry>,
    bytes: u64,
    /// Paths left out (nested repositories, special files), for the user.
    left_out: Vec<String>,
}

/// Why a listed path is not sent, if it is not.
fn left_out(path: &str) -> Option<&'static str> {
    if path.ends_with('/') {
        return Some("a nested repository");
    }
    path.split('/')
        .find_map(|part| ALWAYS_LEFT_OUT.iter().find(|f| **f == part).copied())
}

/// Refuses a listing over the limits, naming its largest top-level entries.
fn check_limits(entries: &[SourceEntry], bytes: u64, dir: &Path) -> Result<(), String> {
    if bytes <= MAX_SOURCE_BYTES && entries.len() <= MAX_SOURCE_ENTRIES {
        return Ok(());
    }
    let mut tops: std::collections::BTreeMap<&str, u64> = Default::default();
    for e in entries {
        let top = e.path.split('/').next().unwrap_or_default();
        let size = match e.kind {
            SourceKind::File { size, .. } => size,
            SourceKind::Link(_) => 0,
        };
        *tops.entry(top).or_default() += size;
    }
    let mut tops: Vec<(&str, u64)> = tops.into_iter().collect();
    tops.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let largest: Vec<String> = tops
        .iter()
        .take(3)
        .map(|(name, size)| format!("{name} {}", human_bytes(*size)))
        .collect();
    Err(format!(
        "{} holds {} files ({}), over the {} files and {} a source folder may send; largest: {}. \
         Leave build outputs and dependencies out with .gitignore, or publish a built folder with --prebuilt",
        dir.display(),
        entries.len(),
        human_bytes(bytes),
        MAX_SOURCE_ENTRIES,
        human_bytes(MAX_SOURCE_BYTES),
        largest.join(", ")
    ))
}

/// The paths git lists in `dir` (tracked and untracked, not ignored), relative to it.
async fn git_paths(dir: &Path) -> Result<Vec<String>, String> {
    let git = |args: &[&str]| {
        let mut c = tokio::process::Command::new("git");
        c.args(args)
            .current_dir(dir)
            .stdin(std::process::Stdio::null());
        c
    };
    let missing_git = |e: std::io::Error| {
        format!(
            "cannot run git ({e}): `gitdeploy deploy <folder>` reads .gitignore with git; install it, \
             or publish a built folder with --prebuilt"
        )
    };
    let inside = git(&["rev-parse", "--is-inside-work-tree"])
        .stderr(std::process::Stdio::null())
        .output()
        .await
        .map_err(missing_git)?;
    let scratch;
    let out = if inside.status.success() && inside.stdout.starts_with(b"true") {
        git(&[
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
        ])
        .output()
        .await
    } else {
        // Not a repository: a scratch one reads the folder's own .gitignore files.
        scratch = tempfile::tempdir().map_err(|e| format!("cannot make a scratch folder: {e}"))?;
        let git_dir = scratch.path().join("git");
        let init = git(&["init", "--quiet", "--bare"])
            .arg(&git_dir)
            .output()
            .await
            .map_err(missing_git)?;
        if !init.status.success() {
            return Err(format!(
                "git init failed: {}",
                String::from_utf8_lossy(&init.stderr).trim()
            ));
        }
        git(&[
            "--work-tree=.",
            "ls-files",
            "-z",
            "--others",
            "--exclude-standard",
        ])
        .env("GIT_DIR", &git_dir)
        .output()
        .await
    }
    .map_err(missing_git)?;
    if !out.status.success() {
        return Err(format!(
            "cannot list {}: git ls-files: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let mut paths = Vec::new();
    for raw in out.stdout.split(|b| *b == 0).filter(|p| !p.is_empty()) {
        let path = std::str::from_utf8(raw).map_err(|_| {
            format!(
                "{} has a path that is not UTF-8",
                String::from_utf8_lossy(raw)
            )
        })?;
        paths.push(path.to_owned());
    }
    paths.sort();
    paths.dedup();
    Ok(paths)
}

/// Lists folder `dir` as it will be sent.
async fn list_source(dir: &Path) -> Result<Listing, String> {
    if !dir.is_dir() {
        return Err(format!("{} is not a folder", dir.display()));
    }
    let mut listing = Listing {
        entries: Vec::new(),
        bytes: 0,
        left_out: Vec::new(),
    };
    for path in git_paths(dir).await? {
        if let Some(why) = left_out(&path) {
            if why == "a nested repository" {
                listing.left_out.push(format!("{path} ({why})"));
            }
            continue;
        }
        let full = dir.join(&path);
        let meta = match std::fs::symlink_metadata(&full) {
            Ok(m) => m,
            // Tracked but deleted from the folder: not sent, as it is not there.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(format!("cannot read {path}: {e}")),
        };
        let kind = if meta.file_type().is_symlink() {
            let target =
                std::fs::read_link(&full).map_err(|e| format!("cannot read {path}: {e}"))?;
            let target = target
                .to_str()
                .ok_or_else(|| format!("link {path} has a target that is not UTF-8"))?
                .to_owned();
            check_link_target(&path, &target)
                .map_err(|e| format!("{e}: a source folder sends links inside itself only"))?;
            SourceKind::Link(target)
        } else if meta.is_file() {
            use std::os::unix::fs::PermissionsExt;
            listing.bytes += meta.len();
            SourceKind::File {
                size: meta.len(),
                executable: meta.permissions().mode() & 0o100 != 0,
            }
        } else {
            listing.left_out.push(format!("{path} (not a file)"));
            continue;
        };
        listing.entries.push(SourceEntry { path, kind });
    }
    if listing.entries.is_empty() {
        return Err(format!("{} has no files to send", dir.display()));
    }
    check_limits(&listing.entries, listing.bytes, dir)?;
    Ok(listing)
}

/// A writer that hashes and counts what passes through it.
struct Hashing<W> {
    inner: W,
    hasher: Sha256,
    size: u64,
}

impl<W: std::io::Write> std::io::Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Packs the listing into an unnamed temporary file: the file, its hash and size.
fn pack(dir: &Path, entries: &[SourceEntry]) -> Result<(std::fs::File, ContentHash, u64), String> {
    let file = tempfile::tempfile().map_err(|e| format!("cannot make a temporary file: {e}"))?;
    let mut out = Hashing {
        inner: std::io::BufWriter::new(file),
        hasher: Sha256::new(),
        size: 0,
    };
    source_archive::pack(dir, entries, &mut out)?;
    out.flush()
        .map_err(|e| format!("cannot write the archive: {e}"))?;
    let hash = ContentHash::from_digest(out.hasher.finalize().into());
    let file = out
        .inner
        .into_inner()
        .map_err(|e| format!("cannot write the archive: {e}"))?;
    Ok((file, hash, out.size))
}

/// Sends source folder `dir` and queues its build (with the production environment's variables
/// when `prod`, else the preview environment's); the caller follows it.
pub(super) async fn deploy_source(
    client: &Client,
    dir: &Path,
    project: Option<&str>,
    prod: bool,
) -> Result<Queued, String> {
    let started = Instant::now();
    let listing = list_source(dir).await?;
    println!(
        "Packing {} files ({}) from {}",
        listing.entries.len(),
        human_bytes(listing.bytes),
        dir.display()
    );
    for note in &listing.left_out {
        println!("Left out: {note}");
    }
    let (root, entries) = (dir.to_owned(), listing.entries);
    let (file, hash, size) = tokio::task::spawn_blocking(move || pack(&root, &entries))
        .await
        .map_err(|e| format!("packing stopped: {e}"))??;
    let mut body = json!({
        "source": "local folder",
        "archive": {"hash": hash, "size": size},
        "environment": if prod { "production" } else { "preview" },
    });
    if let Some(p) = project {
        body["project"] = json!(p);
    }
    let opened = client.post("/api/deployments", body).await?;
    let id = opened["id"]
        .as_str()
        .and_then(DeploymentId::parse)
        .ok_or("the answer has no deployment id")?;
    let url = opened["url"].as_str().unwrap_or_default().to_owned();
    let needed = opened["missing"].as_array().is_some_and(|m| !m.is_empty());
    let blobs = ApiBlobs::new(client, id.clone());
    let sent = async {
        if needed {
            upload(&blobs, file, hash, size).await?;
        }
        blobs.finalize_source().await
    }
    .await;
    if let Err(e) = sent {
        // Nothing was queued; the deployment is not left open.
        let _ = client
            .post(&format!("/api/deployments/{id}/cancel"), json!({}))
            .await;
        return Err(e);
    }
    println!(
        "{} ({}) in {:.2}s",
        if needed {
            "Uploaded the source"
        } else {
            "The same source is already stored: nothing uploaded"
        },
        human_bytes(size),
        started.elapsed().as_secs_f64()
    );
    println!("Deployment {id} queued: {url}");
    Ok(Queued {
        id: id.to_string(),
        url,
    })
}

/// Puts the archive, with a progress bar on a terminal.
async fn upload(
    blobs: &ApiBlobs,
    file: std::fs::File,
    hash: ContentHash,
    size: u64,
) -> Result<(), String> {
    let sent = Arc::new(AtomicU64::new(0));
    let display = tokio::spawn(show_progress(sent.clone(), size));
    let result = blobs
        .put_counted("the source archive", hash, file, size, sent)
        .await;
    display.abort();
    let _ = display.await;
    if std::io::stderr().is_terminal() {
        eprint!("\r\x1b[2K");
    }
    result
}

/// Redraws the upload's line on a terminal every 100 ms (nothing elsewhere: the summary line
/// follows).
async fn show_progress(sent: Arc<AtomicU64>, size: u64) {
    if !std::io::stderr().is_terminal() {
        return;
    }
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tick.tick().await;
        eprint!(
            "\r\x1b[2K{}",
            progress_line(sent.load(Ordering::Relaxed), size, started.elapsed())
        );
    }
}

/// `Uploading [#####   ] 1.2 MB of 4.8 MB  1.0 MB/s`.
fn progress_line(sent: u64, size: u64, elapsed: Duration) -> String {
    const WIDTH: u64 = 24;
    let filled = (sent.min(size) * WIDTH / size.max(1)) as usize;
    let rate = sent as f64 / elapsed.as_secs_f64().max(0.001);
    format!(
        "Uploading [{}{}] {} of {}  {}/s",
        "#".repeat(filled),
        " ".repeat(WIDTH as usize - filled),
        human_bytes(sent),
        human_bytes(size),
        human_bytes(rate as u64)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dependencies_git_and_nested_repositories_are_left_out() {
        for (path, want) in [
            ("src/index.js", None),
            ("node_modules/x/i.js", Some("node_modules")),
            ("packages/a/node_modules/y.js", Some("node_modules")),
            (".git/config", Some(".git")),
            ("vendor/repo/", Some("a nested repository")),
            (".gitignore", None),
            ("node_modules_backup/x", None),
        ] {
            assert_eq!(left_out(path), want, "{path}");
        }
    }

    fn file(path: &str, size: u64) -> SourceEntry {
        SourceEntry {
            path: path.into(),
            kind: SourceKind::File {
                size,
                executable: false,
            },
        }
    }

    #[test]
    fn a_folder_over_the_limit_names_its_largest_parts() {
        let entries = vec![
            file("dist/a.js", 700 << 20),
            file("dist/b.js", 300 << 20),
            file("videos/x.mp4", 200 << 20),
            file("src/x.ts", 10),
        ];
        let bytes = entries
            .iter()
            .map(|e| match e.kind {
                SourceKind::File { size, .. } => size,
                _ => 0,
            })
            .sum();
        let err = check_limits(&entries, bytes, Path::new("site")).unwrap_err();
        assert!(
            err.contains("largest: dist 1.0 GB, videos 209.7 MB, src 10 B"),
            "{err}"
        );
        assert!(check_limits(&entries[2..], 200 << 20, Path::new("site")).is_ok());
        let many: Vec<SourceEntry> = (0..=MAX_SOURCE_ENTRIES)
            .map(|i| file(&format!("f{i}"), 0))
            .collect();
        assert!(check_limits(&many, 0, Path::new("site")).is_err());
    }

    #[test]
    fn the_upload_line_shows_bytes_and_rate() {
        assert_eq!(
            progress_line(2_000_000, 4_000_000, Duration::from_secs(2)),
            "Uploading [############            ] 2.0 MB of 4.0 MB  1.0 MB/s"
        );
    }
}
