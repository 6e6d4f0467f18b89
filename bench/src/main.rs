//! `gitdeploy-bench`: serves the same files with the GitDeploy edge and with its peers, loads
//! each with the same `wrk` settings in the same run, and reports requests/s, latency
//! percentiles, errors and the edge's peak RSS as a Markdown table (also written under
//! `bench/results/`). Results are meant to be read as ratios: the machine is shared and noisy.
//!
//! ```text
//! apt-get install nginx wrk
//! cargo run --release -p gitdeploy-bench -- all        # or: hot, cold, revalidate, large
//! ```

mod load;
mod peers;
mod site;

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, ValueEnum};

use crate::load::{wrk, Load, WrkResult};
use crate::peers::{Edge, Nginx};

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

    let report = render(&opts, &rows)?;
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
