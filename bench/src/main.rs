//! `gitdeploy-bench`: serves the same files with the GitDeploy edge and with its peers, loads
//! each with the same `wrk` settings in the same run, and reports requests/s, latency
//! percentiles, errors and the edge's peak RSS as a Markdown table (also written under
//! `bench/results/`). Results are meant to be read as ratios: the machine is shared and noisy.
//!
//! ```text
//! apt-get install nginx wrk
//! cargo run --release -p gitdeploy-bench -- all   # or: hot, cold, revalidate, large, node, deploy
//! ```

mod load;
mod logs;
mod peers;
mod site;

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, ValueEnum};

use crate::load::{wrk, Load, WrkResult};
use crate::peers::{Edge, Nginx, NodeProxy};

#[derive(Parser)]
#[command(about = "Benchmark the GitDeploy edge against nginx")]
struct Opts {
    /// Scenario to run.
    #[arg(value_enum, default_value = "all")]
    scenario: Scenario,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Concurrent connections for the small-file scenarios.
    #[arg(long, default_value_t = 64)]
    connections: u32,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    All,
    Hot,
    Cold,
    Revalidate,
    Large,
    /// The original design's Node http-proxy (no cache) against the edge.
    Node,
    /// Time from deploy request to ready for 10, 100 and 1,000 files.
    Deploy,
    /// Log latency from the build's write to WebSocket clients at 1, 100 and 1,000 followers.
    Logs,
}

/// One row of a results table.
struct Row {
    scenario: &'static str,
    server: String,
    result: WrkResult,
    peak_rss_kib: Option<u64>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let opts = Opts::parse();
    let run = |s: Scenario| opts.scenario == Scenario::All || opts.scenario == s;
    let gitdeploy = peers::build_gitdeploy()?;
    let site = site::Fixture::create()?;
    let mut rows = Vec::new();
    let dur = Duration::from_secs(opts.seconds);

    if run(Scenario::Hot) || run(Scenario::Revalidate) || run(Scenario::Large) {
        let edge = Edge::start(&gitdeploy, &[]).await?;
        let id = edge.deploy(&site).await?;
        let nginx = Nginx::start_static(&site.root)?;
        let host = format!("{id}.localhost");
        let small = Load::new(site.small_paths(), dur, opts.connections);
        if run(Scenario::Hot) {
            // Warm the cache, then measure.
            wrk(&edge.addr, &host, &small.with_encoding("br"))?;
            for (name, encoding) in [
                ("gitdeploy edge (br)", "br"),
                ("gitdeploy edge (identity)", "identity"),
            ] {
                edge.reset_peak_rss();
                let result = wrk(&edge.addr, &host, &small.with_encoding(encoding))?;
                rows.push(Row {
                    scenario: "hot small files",
                    server: name.into(),
                    result,
                    peak_rss_kib: edge.peak_rss_kib(),
                });
            }
            let result = wrk(&nginx.addr, "localhost", &small.with_encoding("br"))?;
            rows.push(Row {
                scenario: "hot small files",
                server: "nginx from disk".into(),
                result,
                peak_rss_kib: None,
            });
        }
        if run(Scenario::Revalidate) {
            let etags = edge.etags(&host, &site.small_paths()).await?;
            let result = wrk(&edge.addr, &host, &small.with_if_none_match(etags))?;
            rows.push(Row {
                scenario: "revalidation (304)",
                server: "gitdeploy edge".into(),
                result,
                peak_rss_kib: edge.peak_rss_kib(),
            });
            let result = wrk(&nginx.addr, "localhost", &small.with_if_modified_since())?;
            rows.push(Row {
                scenario: "revalidation (304)",
                server: "nginx from disk".into(),
                result,
                peak_rss_kib: None,
            });
        }
        if run(Scenario::Large) {
            let large = Load::new(vec![site::LARGE_PATH.to_owned()], dur, 20);
            edge.reset_peak_rss();
            let idle = edge.rss_kib();
            let result = wrk(&edge.addr, &host, &large)?;
            let peak = edge.peak_rss_kib();
            rows.push(Row {
                scenario: "50 MiB file, 20 clients",
                server: format!("gitdeploy edge (idle RSS {} MiB)", idle.unwrap_or(0) / 1024),
                result,
                peak_rss_kib: peak,
            });
            let result = wrk(&nginx.addr, "localhost", &large)?;
            rows.push(Row {
                scenario: "50 MiB file, 20 clients",
                server: "nginx from disk".into(),
                result,
                peak_rss_kib: None,
            });
        }
    }
    if run(Scenario::Node) {
        let edge = Edge::start(&gitdeploy, &[]).await?;
        let id = edge.deploy(&site).await?;
        let nginx = Nginx::start_static(&site.root)?;
        let node = NodeProxy::start(&nginx.addr)?;
        let host = format!("{id}.localhost");
        let small = Load::new(site.small_paths(), dur, opts.connections).with_encoding("identity");
        wrk(&edge.addr, &host, &small)?;
        edge.reset_peak_rss();
        let result = wrk(&edge.addr, &host, &small)?;
        rows.push(Row {
            scenario: "original design vs edge",
            server: "gitdeploy edge (warm cache)".into(),
            result,
            peak_rss_kib: edge.peak_rss_kib(),
        });
        let result = wrk(&node.addr, &host, &small)?;
        rows.push(Row {
            scenario: "original design vs edge",
            server: "Node http-proxy → bucket (nginx), no cache".into(),
            result,
            peak_rss_kib: None,
        });
    }
    let mut deploys = Vec::new();
    if run(Scenario::Deploy) {
        let edge = Edge::start(&gitdeploy, &[]).await?;
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
    }

    let mut log_rows = Vec::new();
    if run(Scenario::Logs) {
        // A thousand followers come from one address here: the per-client limit is off.
        let edge = Edge::start(&gitdeploy, &["--api-rate-per-second", "0"]).await?;
        let fixture = logs::Fixture::create(10_000, 3)?;
        for followers in [1usize, 100, 1000] {
            log_rows.push(logs::measure(&edge, &fixture, followers).await?);
        }
    }

    if run(Scenario::Cold) {
        let edge = Edge::start(&gitdeploy, &["--object-cache-max-object-bytes", "0"]).await?;
        let id = edge.deploy(&site).await?;
        let nginx = Nginx::start_static(&site.root)?;
        let small = Load::new(site.small_paths(), dur, opts.connections).with_encoding("identity");
        edge.reset_peak_rss();
        let result = wrk(&edge.addr, &format!("{id}.localhost"), &small)?;
        rows.push(Row {
            scenario: "cold path (cache off)",
            server: "gitdeploy edge → signed S3 GET".into(),
            result,
            peak_rss_kib: edge.peak_rss_kib(),
        });
        let result = wrk(&nginx.addr, "localhost", &small)?;
        rows.push(Row {
            scenario: "cold path (cache off)",
            server: "nginx from disk (ceiling; no SigV4 proxy peer yet)".into(),
            result,
            peak_rss_kib: None,
        });
    }

    let mut report = render(&opts, &rows)?;
    if !deploys.is_empty() {
        report.push_str(&render_deploys(&deploys)?);
    }
    if !log_rows.is_empty() {
        report.push_str(&logs::render(&log_rows));
    }
    println!("{report}");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("results");
    std::fs::create_dir_all(&dir)?;
    // A single scenario gets its own file, so it never replaces the full table.
    let name = match opts.scenario {
        Scenario::All => "latest.md".to_owned(),
        one => format!(
            "latest-{}.md",
            one.to_possible_value()
                .map(|v| v.get_name().to_owned())
                .unwrap_or_default()
        ),
    };
    std::fs::write(dir.join(&name), &report)
        .with_context(|| format!("writing bench/results/{name}"))?;
    Ok(())
}

/// One size of the deploy-overhead scenario (median of three deploys).
struct DeployRow {
    files: usize,
    bytes: u64,
    wall: Duration,
    upload: Option<f64>,
}

/// Seconds the upload took, from the builder's "Uploaded ... in Xs" line.
fn upload_seconds(log: &[serde_json::Value]) -> Option<f64> {
    log.iter()
        .filter_map(|r| r["line"].as_str())
        .find(|l| l.starts_with("Uploaded "))
        .and_then(|l| l.rsplit(" in ").next())
        .and_then(|t| t.trim_end_matches('s').parse().ok())
}

fn render_deploys(rows: &[DeployRow]) -> anyhow::Result<String> {
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

fn render(opts: &Opts, rows: &[Row]) -> anyhow::Result<String> {
    let mut out = String::new();
    writeln!(out, "# GitDeploy edge benchmark\n")?;
    writeln!(
        out,
        "Machine: {} cores, {}; {}; wrk {} s per row, {} connections for small files.\n",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        peers::memory_total(),
        peers::versions(),
        opts.seconds,
        opts.connections
    )?;
    if rows.is_empty() {
        return Ok(out);
    }
    writeln!(
        out,
        "| scenario | server | req/s | p50 | p99 | transfer/s | errors | peak RSS |"
    )?;
    writeln!(out, "|---|---|---:|---:|---:|---:|---:|---:|")?;
    for r in rows {
        writeln!(
            out,
            "| {} | {} | {:.0} | {} | {} | {} | {} | {} |",
            r.scenario,
            r.server,
            r.result.requests_per_sec,
            r.result.p50,
            r.result.p99,
            r.result.transfer_per_sec,
            r.result.errors,
            r.peak_rss_kib
                .map(|k| format!("{} MiB", k / 1024))
                .unwrap_or_else(|| "-".into()),
        )?;
    }
    Ok(out)
}
