//! `gitdeploy-bench`: serves the same files with the GitDeploy edge and with its peers, loads
//! each with the same `wrk` settings in the same run, and reports requests/s, latency
//! percentiles, errors and the edge's peak RSS as a Markdown table (also written under
//! `bench/results/`). Results are meant to be read as ratios: the machine is shared and noisy.
//!
//! ```text
//! apt-get install nginx libnginx-mod-http-js wrk caddy nghttp2-client
//! cargo run --release -p gitdeploy-bench -- all   # or: hot, cold, revalidate, large, node, deploy,
//!                                                  # logs, clients, tls
//! ```

mod callgrind;
mod clients;
mod deploys;
mod edge;
mod host;
mod load;
mod logs;
mod peers;
mod site;
mod targets;
mod tls;

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, ValueEnum};

use crate::edge::Edge;
use crate::host::{clock_ticks_per_second, cpu_ticks};
use crate::load::{wrk, Load, WrkResult};
use crate::peers::{Caddy, Ceiling, Nginx, NodeProxy, ProxyCache, Server};
use gitdeploy_harness::S3Server;

const HOT: &str = "hot small files";
const COLD: &str = "cold path (cache off)";
const LARGE: &str = "50 MiB file, 20 clients";
const NODE: &str = "original design vs edge";
const NGINX_DISK: &str = "nginx from disk";
const NGINX_CACHE: &str = "nginx caching proxy → signed S3 (identity)";
const NGINX_PROXY: &str = "nginx proxy → signed S3 (njs SigV4), no cache";
const CADDY: &str = "Caddy file_server";
/// The ceiling rows: the same answers from memory with nothing of GitDeploy's work.
const CEILING_PROXY: &str = "ceiling: pingora-proxy responder (request_filter answers)";
const CEILING_APP: &str = "ceiling: bare pingora HTTP app";
const NODE_PROXY: &str = "Node http-proxy → bucket (nginx), no cache";

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
    /// `callgrind`: keep each case's dump in this folder (named after the case), for
    /// `callgrind_annotate --tree=caller` or KCachegrind, instead of deleting it.
    #[arg(long)]
    keep_dumps: Option<std::path::PathBuf>,
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
    /// Time from deploy request to ready: git first deploys of 10, 100 and 1,000 files, a
    /// redeploy with one file changed, the CLI's `deploy --prebuilt`, and blob storage.
    Deploy,
    /// Log latency from the build's write to WebSocket clients at 1, 100 and 1,000 followers.
    Logs,
    /// Hostile clients: idle floods, slow heads, huge heads (memory and cut-off times).
    Clients,
    /// HTTPS: new handshakes/s, hot files over HTTP/1.1 and HTTP/2, memory per idle TLS
    /// connection, against nginx and Caddy with the same certificate.
    Tls,
    /// Instructions per request of a 304 and a hot 10 KiB file, counted by callgrind (needs
    /// valgrind and h2load; not part of `all`).
    Callgrind,
}

/// One row of a results table.
struct Row {
    scenario: &'static str,
    server: String,
    result: WrkResult,
    peak_rss_kib: Option<u64>,
    /// CPU time the server's processes spent per request, in microseconds: steadier than
    /// requests/s on a shared machine, where the load tool competes for the same cores.
    cpu_us_per_request: Option<f64>,
}

/// Loads `server` with `load` and measures it.
fn measure(
    scenario: &'static str,
    name: String,
    server: &dyn Server,
    host: &str,
    load: &Load,
) -> anyhow::Result<Row> {
    measure_with(scenario, name, server, || wrk(server.addr(), host, load))
}

/// Measures `server` while `run` loads it.
fn measure_with(
    scenario: &'static str,
    name: String,
    server: &dyn Server,
    run: impl FnOnce() -> anyhow::Result<WrkResult>,
) -> anyhow::Result<Row> {
    server.reset_peak_rss();
    let before = cpu_ticks(&server.pids());
    let result = run()?;
    let after = cpu_ticks(&server.pids());
    let cpu_us_per_request = match (before, after) {
        (Some(b), Some(a)) if result.requests > 0 => Some(
            (a.saturating_sub(b)) as f64 * 1e6 / clock_ticks_per_second() / result.requests as f64,
        ),
        _ => None,
    };
    Ok(Row {
        scenario,
        server: name,
        peak_rss_kib: server.peak_rss_kib(),
        result,
        cpu_us_per_request,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let opts = Opts::parse();
    let run = |s: Scenario| opts.scenario == Scenario::All || opts.scenario == s;
    let gitdeploy = edge::build_gitdeploy()?;
    let site = site::Fixture::create()?;
    let mut rows = Vec::new();
    let dur = Duration::from_secs(opts.seconds);

    if run(Scenario::Hot) || run(Scenario::Revalidate) || run(Scenario::Large) {
        let s3 = S3Server::start(&gitdeploy);
        let edge = Edge::start_with(&gitdeploy, &[], Some(&s3)).await?;
        let id = edge.deploy(&site).await?;
        let nginx = Nginx::start_static(&site.root)?;
        // The ceiling: the same answers from memory, by the framework alone.
        let ceiling = edge::build_ceiling()?;
        let ceiling_proxy = Ceiling::start(&ceiling, &site.root, "proxy")?;
        let ceiling_app = Ceiling::start(&ceiling, &site.root, "app")?;
        let host = format!("{id}.localhost");
        let small = Load::new(site.small_paths(), dur, opts.connections);
        if run(Scenario::Hot) {
            // Warm the cache, then measure.
            wrk(&edge.addr, &host, &small.with_encoding("br"))?;
            for (name, encoding) in [
                ("gitdeploy edge (br)", "br"),
                ("gitdeploy edge (identity)", "identity"),
            ] {
                rows.push(measure(
                    HOT,
                    name.into(),
                    &edge,
                    &host,
                    &small.with_encoding(encoding),
                )?);
            }
            // What the access log costs: a second edge on the same store, logging every
            // request to a file (the first logs none).
            let log_dir = tempfile::tempdir()?;
            let log_file = log_dir.path().join("access.log");
            let logging = Edge::start_with(
                &gitdeploy,
                &["--access-log", log_file.to_str().context("path")?],
                Some(&s3),
            )
            .await?;
            let identity = small.with_encoding("identity");
            wrk(&logging.addr, &host, &identity)?;
            rows.push(measure(
                HOT,
                "gitdeploy edge (identity, access log to a file)".into(),
                &logging,
                &host,
                &identity,
            )?);
            drop(logging);
            rows.push(measure(
                HOT,
                NGINX_DISK.into(),
                &nginx,
                "localhost",
                &small.with_encoding("br"),
            )?);
            let cached = Nginx::start_s3_proxy(&s3, &site.blob_keys()?, ProxyCache::Disk)?;
            let identity = small.with_encoding("identity");
            wrk(&cached.addr, "localhost", &identity)?;
            rows.push(measure(
                HOT,
                NGINX_CACHE.into(),
                &cached,
                "localhost",
                &identity,
            )?);
            let caddy = Caddy::start_static(&site.root)?;
            rows.push(measure(HOT, CADDY.into(), &caddy, "localhost", &identity)?);
            for (name, ceiling) in [(CEILING_PROXY, &ceiling_proxy), (CEILING_APP, &ceiling_app)] {
                rows.push(measure(HOT, name.into(), ceiling, "localhost", &identity)?);
            }
        }
        if run(Scenario::Revalidate) {
            let etags = edge.etags(&host, &site.small_paths()).await?;
            rows.push(measure(
                "revalidation (304)",
                "gitdeploy edge".into(),
                &edge,
                &host,
                &small.with_if_none_match(etags),
            )?);
            rows.push(measure(
                "revalidation (304)",
                NGINX_DISK.into(),
                &nginx,
                "localhost",
                &small.with_if_modified_since(),
            )?);
            for (name, ceiling) in [(CEILING_PROXY, &ceiling_proxy), (CEILING_APP, &ceiling_app)] {
                let etags = edge::etags_at(&ceiling.addr, "localhost", &site.small_paths()).await?;
                rows.push(measure(
                    "revalidation (304)",
                    name.into(),
                    ceiling,
                    "localhost",
                    &small.with_if_none_match(etags),
                )?);
            }
        }
        if run(Scenario::Large) {
            let large = Load::new(vec![site::LARGE_PATH.to_owned()], dur, 20);
            let idle = edge.rss_kib().unwrap_or(0) / 1024;
            let name = format!("gitdeploy edge → signed S3 (idle RSS {idle} MiB)");
            rows.push(measure(LARGE, name, &edge, &host, &large)?);
            let proxy = Nginx::start_s3_proxy(&s3, &site.blob_keys()?, ProxyCache::Off)?;
            rows.push(measure(
                LARGE,
                NGINX_PROXY.into(),
                &proxy,
                "localhost",
                &large,
            )?);
            rows.push(measure(
                LARGE,
                NGINX_DISK.into(),
                &nginx,
                "localhost",
                &large,
            )?);
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
        rows.push(measure(
            NODE,
            "gitdeploy edge (warm cache)".into(),
            &edge,
            &host,
            &small,
        )?);
        rows.push(measure(NODE, NODE_PROXY.into(), &node, &host, &small)?);
    }
    let (deploys, storage) = match run(Scenario::Deploy) {
        true => deploys::measure(&gitdeploy).await?,
        false => (Vec::new(), None),
    };

    let mut log_rows = Vec::new();
    if run(Scenario::Logs) {
        // A thousand followers come from one address here: the per-client limit is off.
        let edge = Edge::start(&gitdeploy, &["--api-rate-per-second", "0"]).await?;
        let fixture = logs::Fixture::create(10_000, 3)?;
        for followers in [1usize, 100, 1000] {
            for batch in [false, true] {
                log_rows.push(logs::measure(&edge, &fixture, followers, batch).await?);
            }
        }
    }

    let mut callgrind_report = None;
    if opts.scenario == Scenario::Callgrind {
        let s3 = S3Server::start(&gitdeploy);
        let edge = Edge::start_with(&gitdeploy, &[], Some(&s3)).await?;
        let host = format!("{}.localhost", edge.deploy(&site).await?);
        let path = site::TEN_KIB_PATH.to_owned();
        let etag = edge
            .etags(&host, std::slice::from_ref(&path))
            .await?
            .remove(0);
        let identity = "accept-encoding: identity".to_owned();
        let cases = [
            callgrind::Case {
                name: "hot 10 KiB file (identity, object cache)",
                path: path.clone(),
                headers: vec![identity.clone()],
            },
            callgrind::Case {
                name: "revalidation (304)",
                path,
                headers: vec![identity, format!("if-none-match: {etag}")],
            },
        ];
        let mut counted =
            callgrind::measure(&gitdeploy, &s3, &host, &cases, opts.keep_dumps.as_deref()).await?;
        // The same cases answered by the ceiling responders: the framework's own share.
        let ceiling = edge::build_ceiling()?;
        let ceiling_etag = edge::etags_at(
            &Ceiling::start(&ceiling, &site.root, "app")?.addr,
            "localhost",
            std::slice::from_ref(&cases[0].path),
        )
        .await?
        .remove(0);
        let ceiling_cases = [
            callgrind::Case {
                name: cases[0].name,
                path: cases[0].path.clone(),
                headers: cases[0].headers.clone(),
            },
            callgrind::Case {
                name: cases[1].name,
                path: cases[1].path.clone(),
                headers: vec![
                    cases[0].headers[0].clone(),
                    format!("if-none-match: {ceiling_etag}"),
                ],
            },
        ];
        for (mode, suffix) in [
            ("proxy", ", pingora-proxy ceiling"),
            ("app", ", bare pingora app ceiling"),
        ] {
            counted.extend(callgrind::measure_ceiling(
                &ceiling,
                &site.root,
                mode,
                &ceiling_cases,
                suffix,
                opts.keep_dumps.as_deref(),
            )?);
        }
        callgrind_report = Some(callgrind::render(&counted)?);
    }
    let mut clients_report = None;
    if run(Scenario::Clients) {
        let edge = Edge::start(&gitdeploy, &["--max-connections", "20000"]).await?;
        clients_report = Some(clients::measure(&edge).await?);
    }

    if run(Scenario::Cold) {
        let s3 = S3Server::start(&gitdeploy);
        let edge = Edge::start_with(
            &gitdeploy,
            &["--object-cache-max-object-bytes", "0"],
            Some(&s3),
        )
        .await?;
        let id = edge.deploy(&site).await?;
        let proxy = Nginx::start_s3_proxy(&s3, &site.blob_keys()?, ProxyCache::Off)?;
        let small = Load::new(site.small_paths(), dur, opts.connections).with_encoding("identity");
        rows.push(measure(
            COLD,
            "gitdeploy edge → signed S3".into(),
            &edge,
            &format!("{id}.localhost"),
            &small,
        )?);
        rows.push(measure(
            COLD,
            NGINX_PROXY.into(),
            &proxy,
            "localhost",
            &small,
        )?);
    }

    let mut idle_rows = Vec::new();
    if run(Scenario::Tls) {
        let small = Load::new(site.small_paths(), dur, opts.connections);
        let (tls_rows, idle) = tls::measure(&gitdeploy, &site, &small).await?;
        rows.extend(tls_rows);
        idle_rows = idle;
    }

    let mut report = render(&opts, &rows)?;
    report.push_str(&targets::render_targets(&rows));
    report.push_str(&targets::render_ceiling(&rows));
    if !deploys.is_empty() {
        report.push_str(&deploys::render(&deploys, storage.as_ref())?);
    }
    if !log_rows.is_empty() {
        report.push_str(&logs::render(&log_rows));
    }
    if let Some(r) = &callgrind_report {
        report.push_str(r);
    }
    if let Some(r) = &clients_report {
        report.push_str(&clients::render(r));
    }
    if !idle_rows.is_empty() {
        report.push_str(&tls::render_idle(&idle_rows));
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

fn render(opts: &Opts, rows: &[Row]) -> anyhow::Result<String> {
    let mut out = String::new();
    writeln!(out, "# GitDeploy edge benchmark\n")?;
    writeln!(
        out,
        "Machine: {} cores, {}; {}; wrk {} s per row, {} connections for small files.\n",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        host::memory_total(),
        host::versions(),
        opts.seconds,
        opts.connections
    )?;
    if rows.is_empty() {
        return Ok(out);
    }
    writeln!(
        out,
        "| scenario | server | req/s | p50 | p99 | transfer/s | errors | CPU/request | peak RSS |"
    )?;
    writeln!(out, "|---|---|---:|---:|---:|---:|---:|---:|---:|")?;
    for r in rows {
        writeln!(
            out,
            "| {} | {} | {:.0} | {} | {} | {} | {} | {} | {} |",
            r.scenario,
            r.server,
            r.result.requests_per_sec,
            r.result.p50,
            r.result.p99,
            r.result.transfer_per_sec,
            r.result.errors,
            r.cpu_us_per_request
                .map(|us| format!("{us:.1} µs"))
                .unwrap_or_else(|| "-".into()),
            r.peak_rss_kib
                .map(|k| format!("{} MiB", k / 1024))
                .unwrap_or_else(|| "-".into()),
        )?;
    }
    Ok(out)
}
