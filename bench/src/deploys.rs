//! `bench deploy`: GitDeploy's own cost of a deploy (no build command), from the request to
//! `ready`, median of three each:
//! - a git repository of 10, 100 and 1,000 files, every run new content (nothing stored yet);
//! - a redeploy of the 1,000 files with one file changed;
//! - `gitdeploy deploy <folder> --prebuilt` from the CLI, first and with one file changed
//!   (the CLI process's whole run: collect, hash, lookup, upload, finalize);
//! - the bytes under `blobs/` after ten deployments of an unchanged site, against one.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::edge::Edge;
use crate::site;

/// One measured case (the median run of three).
pub struct DeployRow {
    case: String,
    files: usize,
    bytes: u64,
    wall: Duration,
    /// Seconds of the publish step, from the log line ("in Xs").
    upload: Option<f64>,
    /// Blobs and bytes uploaded, as the builder's log line or the CLI says.
    uploaded: String,
}

/// What the storage of repeated deploys came to.
pub struct StorageRow {
    one: u64,
    ten: u64,
}

/// Every deploy case on one fresh edge.
pub async fn measure(gitdeploy: &Path) -> anyhow::Result<(Vec<DeployRow>, Option<StorageRow>)> {
    let mut rows = Vec::new();
    let edge = Edge::start(gitdeploy, &[]).await?;
    let mut seed = 0;
    for n in [10usize, 100, 1000] {
        let mut runs = Vec::new();
        for _ in 0..3 {
            seed += 1;
            let files = site::Files::create(n, seed)?;
            runs.push(
                git_deploy(
                    &edge,
                    &files,
                    None,
                    format!("git, first deploy, {} files", n + 1),
                )
                .await?,
            );
        }
        rows.push(median(runs));
    }
    // One file changed, three times, in a project (each build's lookups answered by the
    // production manifest it follows).
    seed += 1;
    let files = site::Files::create(1000, seed)?;
    git_deploy(&edge, &files, Some("bench-git"), String::new()).await?;
    let mut runs = Vec::new();
    for v in 0..3 {
        files.change_one(17 + v as usize, v)?;
        runs.push(
            git_deploy(
                &edge,
                &files,
                Some("bench-git"),
                "git, redeploy, 1,001 files, 1 changed".into(),
            )
            .await?,
        );
    }
    rows.push(median(runs));
    // The CLI, first deploys and one file changed.
    let mut runs = Vec::new();
    for _ in 0..3 {
        seed += 1;
        let files = site::Files::create(1000, seed)?;
        runs.push(
            cli_deploy(
                gitdeploy,
                &edge,
                &files,
                "`deploy --prebuilt`, first, 1,001 files",
            )
            .await?,
        );
    }
    rows.push(median(runs));
    let mut runs = Vec::new();
    for v in 0..3 {
        files.change_one(40 + v as usize, 10 + v)?;
        runs.push(cli_deploy(gitdeploy, &edge, &files, "`deploy --prebuilt`, 1 changed").await?);
    }
    rows.push(median(runs));
    drop(edge);

    // Storage: one deployment, then nine more of the same site, on an edge of their own.
    let edge = Edge::start(gitdeploy, &[]).await?;
    let files = site::Files::create(1000, 999)?;
    git_deploy(&edge, &files, None, String::new()).await?;
    let one = edge.blob_bytes();
    for _ in 0..9 {
        git_deploy(&edge, &files, None, String::new()).await?;
    }
    let storage = Some(StorageRow {
        one,
        ten: edge.blob_bytes(),
    });
    Ok((rows, storage))
}

fn median(mut runs: Vec<DeployRow>) -> DeployRow {
    runs.sort_by_key(|r| r.wall);
    runs.swap_remove(runs.len() / 2)
}

async fn git_deploy(
    edge: &Edge,
    files: &site::Files,
    project: Option<&str>,
    case: String,
) -> anyhow::Result<DeployRow> {
    let (wall, record) = edge.timed_deploy(&files.root, project).await?;
    let id = record["id"].as_str().unwrap_or_default().to_owned();
    let log = edge.log(&id).await?;
    let line = log
        .iter()
        .filter_map(|r| r["line"].as_str())
        .find(|l| l.starts_with("Published "))
        .unwrap_or_default()
        .to_owned();
    Ok(DeployRow {
        case,
        files: between(&line, "Published ", " files")
            .and_then(|n| n.parse().ok())
            .unwrap_or(0),
        bytes: files.bytes,
        wall,
        upload: upload_seconds(&line),
        uploaded: git_uploaded(&line),
    })
}

async fn cli_deploy(
    gitdeploy: &Path,
    edge: &Edge,
    files: &site::Files,
    case: &str,
) -> anyhow::Result<DeployRow> {
    let start = Instant::now();
    let out = tokio::process::Command::new(gitdeploy)
        .args(["deploy", &files.root.display().to_string(), "--prebuilt"])
        .args(["--project", "bench-cli", "--prod"])
        .args(["--api", &edge.api()])
        .env_remove("GITDEPLOY_TOKEN")
        .output()
        .await
        .context("running the CLI")?;
    let wall = start.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "the CLI failed: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let line = stdout
        .lines()
        .find(|l| l.starts_with("Uploaded "))
        .unwrap_or_default();
    Ok(DeployRow {
        case: case.to_owned(),
        // `.git` is a dotfile directory: private, not published.
        files: between(line, " of ", " files")
            .and_then(|n| n.parse().ok())
            .unwrap_or(0),
        bytes: files.bytes,
        wall,
        upload: None,
        uploaded: between(line, "(", ")").unwrap_or("-").to_owned(),
    })
}

/// The text between the first `start` and the next `end` after it.
fn between<'a>(line: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let rest = &line[line.find(start)? + start.len()..];
    Some(&rest[..rest.find(end)?])
}

/// "U blobs, X bytes" from the builder's line.
fn git_uploaded(line: &str) -> String {
    match (
        between(line, ": ", " blobs uploaded"),
        between(line, "uploaded (", " bytes"),
    ) {
        (Some(blobs), Some(bytes)) => format!("{blobs} blobs, {bytes} bytes"),
        _ => "-".into(),
    }
}

/// Seconds the upload took, from the builder's "Published ... in Xs" line.
fn upload_seconds(line: &str) -> Option<f64> {
    line.rsplit(" in ")
        .next()
        .and_then(|t| t.trim_end_matches('s').parse().ok())
}

pub fn render(rows: &[DeployRow], storage: Option<&StorageRow>) -> anyhow::Result<String> {
    let mut out = String::new();
    writeln!(
        out,
        "\n## Deploy overhead\n\nA static site of ~1.6 KiB HTML files (no build command, so everything \
         measured is GitDeploy's own work: queue, clone, collect, hash, look up, precompress what is \
         new, upload, manifest, records), median of 3, from `POST /api/deployments` to the API \
         reporting `ready`; for the CLI, the `gitdeploy deploy <folder> --prebuilt` process from \
         start to exit. Every first deploy is of content the store has never seen.\n"
    )?;
    writeln!(
        out,
        "| case | files | bytes | request → ready | publish step | uploaded |"
    )?;
    writeln!(out, "|---|---:|---:|---:|---:|---|")?;
    for r in rows {
        let upload = r.upload.map(|s| format!("{s:.2} s")).unwrap_or("-".into());
        writeln!(
            out,
            "| {} | {} | {} KiB | {} ms | {upload} | {} |",
            r.case,
            r.files,
            r.bytes / 1024,
            r.wall.as_millis(),
            r.uploaded
        )?;
    }
    if let Some(s) = storage {
        writeln!(
            out,
            "\nStorage under `blobs/` for 10 deployments of an unchanged 1,001-file site: {} KiB, \
             against {} KiB for one ({:.2}×).",
            s.ten / 1024,
            s.one / 1024,
            s.ten as f64 / s.one.max(1) as f64
        )?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_are_read() {
        let line =
            "Published 1001 files (1 bytes) and 2002 precompressed variants: 3 blobs uploaded \
                    (1700 bytes, 0 in parts), 1000 files already stored, in 0.21s";
        assert_eq!(upload_seconds(line), Some(0.21));
        assert_eq!(git_uploaded(line), "3 blobs, 1700 bytes");
        assert_eq!(between(line, "Published ", " files"), Some("1001"));
        let cli = "Uploaded 1 of 1001 files (1 blob, 1.6 kB), 1000 already stored, in 0.31s";
        assert_eq!(between(cli, " of ", " files"), Some("1001"));
        assert_eq!(between(cli, "(", ")"), Some("1 blob, 1.6 kB"));
    }
}
