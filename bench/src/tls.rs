//! HTTPS rows (#15): the edge's own TLS listener against nginx and Debian's Caddy serving the
//! same files with the same certificate (P-256, from one test CA), in the same run:
//!
//! * new TLS handshakes per second: `wrk` over HTTPS with `Connection: close`, so every request
//!   is a new connection and a full handshake (wrk keeps no TLS sessions);
//! * hot small files over HTTP/1.1 (`wrk`, kept-alive) and over HTTP/2 (`h2load`, 10 streams
//!   per connection), identity encoding for all;
//! * memory per idle TLS connection: resident memory before and after a client holds
//!   [`IDLE_CONNECTIONS`] handshaken, idle connections.
//!
//! `apt-get install nginx caddy wrk nghttp2-client` (and python3, for the idle connections).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context};

use crate::edge::Edge;
use crate::load::{wrk_tls, Load, WrkResult};
use crate::peers::{Caddy, Nginx, Server};
use crate::{measure_with, Row};

/// Idle connections held for the memory row.
pub const IDLE_CONNECTIONS: usize = 500;
pub const HANDSHAKES: &str = "new TLS handshakes (1 request per connection)";
const HTTP1: &str = "hot small files, HTTPS HTTP/1.1";
pub const HTTP2: &str = "hot small files, HTTPS HTTP/2 (h2load, 10 streams)";

/// One server under test over TLS.
struct Peer<'a> {
    name: &'static str,
    server: &'a dyn Server,
    /// The `Host`/`:authority` it serves the site at (the SNI is always `localhost`).
    host: String,
}

/// Memory per idle TLS connection of one server, in KiB.
pub struct IdleRow {
    /// Which server.
    pub server: &'static str,
    /// Resident memory added per connection.
    pub kib_per_connection: f64,
}

/// Runs the HTTPS rows; the edge binary is `gitdeploy`, the site `site`.
pub async fn measure(
    gitdeploy: &Path,
    site: &crate::site::Fixture,
    small: &Load,
) -> anyhow::Result<(Vec<Row>, Vec<IdleRow>)> {
    let ca = gitdeploy_harness::TestCa::new();
    let (cert, key) = ca.issue("bench", &["DNS:localhost", "DNS:*.localhost"], "0x5001");
    let tls_port = gitdeploy_harness::free_port();
    let tls_listen = format!("127.0.0.1:{tls_port}");
    let edge = Edge::start(
        gitdeploy,
        &[
            "--tls-listen",
            &tls_listen,
            "--tls-cert",
            cert.to_str().context("certificate path")?,
            "--tls-key",
            key.to_str().context("key path")?,
        ],
    )
    .await?;
    let id = edge.deploy(site).await?;
    let nginx = Nginx::start_static_tls(&site.root, &cert, &key)?;
    let caddy = Caddy::start_static_tls(&site.root, &cert, &key)?;
    let edge_tls = TlsAddr {
        inner: &edge,
        addr: tls_listen,
    };
    let peers = [
        Peer {
            name: "gitdeploy edge",
            server: &edge_tls,
            host: format!("{id}.localhost"),
        },
        Peer {
            name: "nginx from disk",
            server: &nginx,
            host: "localhost".into(),
        },
        Peer {
            name: "Caddy file_server",
            server: &caddy,
            host: "localhost".into(),
        },
    ];
    let small = small.with_encoding("identity");
    let mut rows = Vec::new();
    for p in &peers {
        let authority = format!("localhost:{}", port_of(p.server.addr())?);
        // Warm caches (the edge's object cache, nginx's open files).
        wrk_tls(&authority, &p.host, &small)?;
        rows.push(measure_with(HANDSHAKES, p.name.into(), p.server, || {
            wrk_tls(&authority, &p.host, &small.with_close())
        })?);
        rows.push(measure_with(HTTP1, p.name.into(), p.server, || {
            wrk_tls(&authority, &p.host, &small)
        })?);
        rows.push(measure_with(HTTP2, p.name.into(), p.server, || {
            h2load(&authority, &p.host, &small)
        })?);
    }
    let mut idle = Vec::new();
    for p in &peers {
        idle.push(IdleRow {
            server: p.name,
            kib_per_connection: idle_cost(p.server)?,
        });
    }
    Ok((rows, idle))
}

/// The edge, measured at its TLS listener.
struct TlsAddr<'a> {
    inner: &'a Edge,
    addr: String,
}

impl Server for TlsAddr<'_> {
    fn addr(&self) -> &str {
        &self.addr
    }
    fn pids(&self) -> Vec<u32> {
        self.inner.pids()
    }
    fn reset_peak_rss(&self) {
        self.inner.reset_peak_rss()
    }
    fn peak_rss_kib(&self) -> Option<u64> {
        self.inner.peak_rss_kib()
    }
}

fn port_of(addr: &str) -> anyhow::Result<u16> {
    addr.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .with_context(|| format!("no port in {addr}"))
}

/// `h2load` over HTTP/2 against `authority` (name:port, the name is the SNI) with `:authority`
/// `host`, walking `load`'s paths.
fn h2load(authority: &str, host: &str, load: &Load) -> anyhow::Result<WrkResult> {
    let connections = load.connections().max(2);
    let mut cmd = Command::new("h2load");
    cmd.args(["-t2", &format!("-c{connections}"), "-m10"])
        .args(["-D", &format!("{}", load.duration().as_secs().max(1))])
        .args(["-H", &format!(":authority: {host}")])
        .args(["-H", "accept-encoding: identity"]);
    for path in load.paths() {
        cmd.arg(format!("https://{authority}{path}"));
    }
    let out = cmd
        .output()
        .context("running h2load (apt-get install nghttp2-client)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "h2load failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    parse_h2load(&text)
}

/// Parses h2load's summary: rate, requests, failures and the mean time per request (h2load
/// gives no percentiles).
pub fn parse_h2load(text: &str) -> anyhow::Result<WrkResult> {
    let mut r = WrkResult::default();
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("finished in ") {
            // "finished in 10.00s, 61234.50 req/s, 12.34MB/s"
            let parts: Vec<&str> = rest.split(", ").collect();
            if let Some(rate) = parts.get(1).and_then(|p| p.strip_suffix(" req/s")) {
                r.requests_per_sec = rate.parse().context("req/s")?;
            }
            if let Some(bytes) = parts.get(2) {
                r.transfer_per_sec = bytes.trim_end_matches("/s").to_owned();
            }
        } else if let Some(rest) = line.strip_prefix("requests: ") {
            // "612345 total, 612409 started, 612345 done, 612345 succeeded, 0 failed, 0 errored, 0 timeout"
            for part in rest.split(", ") {
                let mut w = part.split_whitespace();
                let (Some(n), Some(what)) = (w.next(), w.next()) else {
                    continue;
                };
                let n: u64 = n.parse().unwrap_or(0);
                match what {
                    "succeeded" => r.requests = n,
                    "failed" | "errored" | "timeout" => r.errors += n,
                    _ => {}
                }
            }
        } else if let Some(rest) = line.strip_prefix("time for request:") {
            // min, max, mean, sd, +/- sd
            if let Some(mean) = rest.split_whitespace().nth(2) {
                r.p50 = format!("{mean} (mean)");
                r.p99 = "-".into();
            }
        }
    }
    if r.requests_per_sec == 0.0 || r.p50.is_empty() {
        bail!("unreadable h2load output: {text}");
    }
    Ok(r)
}

/// Resident memory of `pids`, in KiB.
fn rss_kib(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
        .filter_map(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .sum()
}

/// Resident memory `server` adds per idle, handshaken TLS connection.
fn idle_cost(server: &dyn Server) -> anyhow::Result<f64> {
    let port = port_of(server.addr())?;
    let script = "import socket, ssl, sys\n\
        ctx = ssl.create_default_context()\n\
        ctx.check_hostname = False\n\
        ctx.verify_mode = ssl.CERT_NONE\n\
        ctx.set_alpn_protocols(['http/1.1'])\n\
        held = [ctx.wrap_socket(socket.create_connection(('127.0.0.1', int(sys.argv[2]))), \
        server_hostname='localhost') for _ in range(int(sys.argv[1]))]\n\
        print('ready', flush=True)\n\
        sys.stdin.read()\n";
    let before = rss_kib(&server.pids());
    let mut child = Command::new("python3")
        .args([
            "-c",
            script,
            &IDLE_CONNECTIONS.to_string(),
            &port.to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("running python3")?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("the client's output")?).read_line(&mut line)?;
    if line.trim() != "ready" {
        let _ = child.kill();
        bail!("the idle TLS client did not connect: {line:?}");
    }
    // Let the servers settle what the handshakes allocated.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let after = rss_kib(&server.pids());
    drop(child.stdin.take());
    let _ = child.wait();
    Ok(after.saturating_sub(before) as f64 / IDLE_CONNECTIONS as f64)
}

/// The idle-connection table.
pub fn render_idle(rows: &[IdleRow]) -> String {
    let mut out = format!(
        "\n### Memory per idle TLS connection ({IDLE_CONNECTIONS} handshaken connections held)\n\n\
         | server | KiB per connection |\n|---|---:|\n"
    );
    for r in rows {
        out.push_str(&format!("| {} | {:.1} |\n", r.server, r.kib_per_connection));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_h2load_output() {
        let text = "starting benchmark...
finished in 10.00s, 61234.50 req/s, 12.34MB/s
requests: 612345 total, 612409 started, 612345 done, 612340 succeeded, 3 failed, 2 errored, 0 timeout
status codes: 612340 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 123.45MB (129446297) total, 1.23MB (1234567) headers (space savings 95.00%), 100.00MB (104857600) data
                     min         max         mean         sd        +/- sd
time for request:      123us     45.67ms      1.02ms      2.34ms    90.12%
";
        let r = parse_h2load(text).unwrap();
        assert_eq!(r.requests_per_sec, 61234.50);
        assert_eq!(r.requests, 612340);
        assert_eq!(r.errors, 5);
        assert_eq!(r.p50, "1.02ms (mean)");
        assert_eq!(r.transfer_per_sec, "12.34MB");
        assert!(parse_h2load("garbage").is_err());
    }
}
