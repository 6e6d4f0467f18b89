//! `bench deploy`: GitDeploy's own cost of a deploy (no build command), from the request to
//! `ready`, for 10, 100 and 1,000 files; the median of three deploys each.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use crate::edge::Edge;
use crate::site;

/// Deploys sites of 10, 100 and 1,000 files three times each on a fresh edge.
pub async fn measure(gitdeploy: &Path) -> anyhow::Result<Vec<DeployRow>> {
    let mut deploys = Vec::new();
    let edge = Edge::start(gitdeploy, &[]).await?;
    for n in [10usize, 100, 1000] {
        let files = site::Files::create(n)?;
        let mut runs = Vec::new();
        for _ in 0..3 {
            let (wall, record) = edge.timed_deploy(&files.root).await?;
            let id = record["id"].as_str().unwrap_or_default().to_owned();
            let log = edge.log(&id).await?;
            runs.push((wall, upload_seconds(&log)));
        }
        runs.sort_by_key(|r| r.0);
        let (wall, upload) = runs[runs.len() / 2];
        deploys.push(DeployRow {
            files: n + 1,
            bytes: files.bytes,
            wall,
            upload,
        });
    }
    Ok(deploys)
}

/// One size of the deploy-overhead scenario (median of three deploys).
pub struct DeployRow {
    files: usize,
    bytes: u64,
    wall: Duration,
    upload: Option<f64>,
}

/// Seconds the upload took, from the builder's "Published ... in Xs" line.
fn upload_seconds(log: &[serde_json::Value]) -> Option<f64> {
    log.iter()
        .filter_map(|r| r["line"].as_str())
        .find(|l| l.starts_with("Published "))
        .and_then(|l| l.rsplit(" in ").next())
        .and_then(|t| t.trim_end_matches('s').parse().ok())
}

pub fn render(rows: &[DeployRow]) -> anyhow::Result<String> {
    let mut out = String::new();
    writeln!(
        out,
        "\n## Deploy overhead\n\nA static site (no build command, so everything measured is \
         GitDeploy's own work: queue, clone, collect, precompress, upload, manifest, records), \
         median of 3 deploys, from `POST /api/deployments` to the API reporting `ready`.\n"
    )?;
    writeln!(
        out,
        "| files | bytes | request → ready | upload | upload throughput |"
    )?;
    writeln!(out, "|---:|---:|---:|---:|---:|")?;
    for r in rows {
        let upload = r.upload.map(|s| format!("{s:.2} s")).unwrap_or("-".into());
        let rate = r
            .upload
            .filter(|s| *s > 0.0)
            .map(|s| {
                format!(
                    "{:.1} MB/s, {:.0} files/s",
                    r.bytes as f64 / s / 1e6,
                    r.files as f64 / s
                )
            })
            .unwrap_or("-".into());
        writeln!(
            out,
            "| {} | {} KiB | {} ms | {upload} | {rate} |",
            r.files,
            r.bytes / 1024,
            r.wall.as_millis()
        )?;
    }
    Ok(out)
}
