//! The targets as ratios of rows of the same run, and where the edge stands against the
//! ceiling rows (the framework's own cost apart from GitDeploy's).

use std::fmt::Write as _;

use crate::tls;

use crate::{
    Row, CADDY, CEILING_APP, CEILING_PROXY, COLD, HOT, LARGE, NGINX_CACHE, NGINX_DISK, NGINX_PROXY,
    NODE, NODE_PROXY,
};

/// A target of the issue: the edge's row against a peer's row of the same run.
struct Target {
    what: &'static str,
    scenario: &'static str,
    edge: &'static str,
    peer: &'static str,
    /// Least acceptable edge/peer ratio.
    goal: f64,
    /// Compare bytes/s instead of requests/s.
    by_bytes: bool,
    /// The edge's p99 must also be no worse than the peer's.
    p99_no_worse: bool,
}

const TARGETS: [Target; 11] = [
    Target {
        what: "hot files at least as fast as nginx from disk, p99 no worse",
        scenario: HOT,
        edge: "gitdeploy edge (identity)",
        peer: NGINX_DISK,
        goal: 1.0,
        by_bytes: false,
        p99_no_worse: true,
    },
    Target {
        what: "hot files (br) at least as fast as nginx from disk, p99 no worse",
        scenario: HOT,
        edge: "gitdeploy edge (br)",
        peer: NGINX_DISK,
        goal: 1.0,
        by_bytes: false,
        p99_no_worse: true,
    },
    Target {
        what: "hot files at least 1.5x Caddy's file_server",
        scenario: HOT,
        edge: "gitdeploy edge (identity)",
        peer: CADDY,
        goal: 1.5,
        by_bytes: false,
        p99_no_worse: false,
    },
    Target {
        what: "revalidation (304) at least nginx's",
        scenario: "revalidation (304)",
        edge: "gitdeploy edge",
        peer: NGINX_DISK,
        goal: 1.0,
        by_bytes: false,
        p99_no_worse: false,
    },
    Target {
        what: "hot files against nginx caching the same S3",
        scenario: HOT,
        edge: "gitdeploy edge (identity)",
        peer: NGINX_CACHE,
        goal: 1.0,
        by_bytes: false,
        p99_no_worse: false,
    },
    Target {
        what: "cold path at least nginx proxying the same S3",
        scenario: COLD,
        edge: "gitdeploy edge",
        peer: NGINX_PROXY,
        goal: 1.0,
        by_bytes: false,
        p99_no_worse: false,
    },
    Target {
        what: "50 MiB from S3 against nginx proxying S3 (bytes/s)",
        scenario: LARGE,
        edge: "gitdeploy edge",
        peer: NGINX_PROXY,
        goal: 0.8,
        by_bytes: true,
        p99_no_worse: false,
    },
    Target {
        what: "at least 5x the original design's Node proxy",
        scenario: NODE,
        edge: "gitdeploy edge",
        peer: NODE_PROXY,
        goal: 5.0,
        by_bytes: false,
        p99_no_worse: false,
    },
    Target {
        what: "new TLS handshakes/s at least nginx's",
        scenario: tls::HANDSHAKES,
        edge: "gitdeploy edge",
        peer: "nginx from disk",
        goal: 1.0,
        by_bytes: false,
        p99_no_worse: false,
    },
    Target {
        what: "HTTP/2 hot files at least nginx's",
        scenario: tls::HTTP2,
        edge: "gitdeploy edge",
        peer: "nginx from disk",
        goal: 1.0,
        by_bytes: false,
        p99_no_worse: false,
    },
    Target {
        what: "HTTP/2 hot files at least 1.5x Caddy's",
        scenario: tls::HTTP2,
        edge: "gitdeploy edge",
        peer: "Caddy file_server",
        goal: 1.5,
        by_bytes: false,
        p99_no_worse: false,
    },
];

/// Where the edge's work stands against the ceiling rows of the same run: how much of a
/// request's CPU is the framework's (the `pingora-proxy` ceiling) and how much GitDeploy's.
pub fn render_ceiling(rows: &[Row]) -> String {
    let mut out = String::new();
    for (scenario, edge) in [
        (HOT, "gitdeploy edge (identity)"),
        ("revalidation (304)", "gitdeploy edge"),
    ] {
        let find = |server: &str| {
            rows.iter()
                .find(|r| r.scenario == scenario && r.server == server)
        };
        let (Some(e), Some(p), Some(a)) = (find(edge), find(CEILING_PROXY), find(CEILING_APP))
        else {
            continue;
        };
        if out.is_empty() {
            out.push_str(
                "\n## Against the ceiling (same run)\n\n\
                 | scenario | edge req/s | proxy ceiling | bare app ceiling | edge CPU/request | \
                 proxy ceiling | bare app | GitDeploy's own (edge − proxy ceiling) |\n\
                 |---|---:|---:|---:|---:|---:|---:|---:|\n",
            );
        }
        let cpu = |r: &Row| r.cpu_us_per_request.unwrap_or(0.0);
        let _ = writeln!(
            out,
            "| {scenario} | {:.0} | {:.0} ({:.2}x) | {:.0} ({:.2}x) | {:.1} µs | {:.1} µs | {:.1} µs | {:.1} µs |",
            e.result.requests_per_sec,
            p.result.requests_per_sec,
            e.result.requests_per_sec / p.result.requests_per_sec.max(1.0),
            a.result.requests_per_sec,
            e.result.requests_per_sec / a.result.requests_per_sec.max(1.0),
            cpu(e),
            cpu(p),
            cpu(a),
            cpu(e) - cpu(p),
        );
    }
    out
}

/// Seconds in a wrk latency (`737.00us`, `1.60ms`, `3.94s`, `1.02m`).
fn latency_seconds(text: &str) -> Option<f64> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (value, unit) = text.split_at(split);
    let value: f64 = value.parse().ok()?;
    let scale = match unit {
        "us" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return None,
    };
    Some(value * scale)
}

/// Bytes per second in a wrk transfer rate (`253.80MB`, binary units).
fn bytes_per_second(text: &str) -> Option<f64> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (value, unit) = text.split_at(split);
    let value: f64 = value.parse().ok()?;
    let scale = match unit {
        "B" => 1.0,
        "KB" => 1024.0,
        "MB" => 1024.0 * 1024.0,
        "GB" => 1024.0 * 1024.0 * 1024.0,
        "TB" => 1024.0f64.powi(4),
        _ => return None,
    };
    Some(value * scale)
}

/// The targets whose rows this run measured, as ratios.
pub fn render_targets(rows: &[Row]) -> String {
    let find = |scenario: &str, server: &str| {
        rows.iter()
            .find(|r| r.scenario == scenario && r.server.starts_with(server))
    };
    let mut out = String::new();
    for t in &TARGETS {
        let (Some(edge), Some(peer)) = (find(t.scenario, t.edge), find(t.scenario, t.peer)) else {
            continue;
        };
        if out.is_empty() {
            out.push_str(
                "\n## Targets (ratios of rows above, same run)\n\n\
                 | target | edge | peer | ratio | goal | p99 edge / peer | met |\n\
                 |---|---:|---:|---:|---:|---:|---|\n",
            );
        }
        let (e, p, unit) = if t.by_bytes {
            (
                bytes_per_second(&edge.result.transfer_per_sec).unwrap_or(0.0) / 1e6,
                bytes_per_second(&peer.result.transfer_per_sec).unwrap_or(0.0) / 1e6,
                " MB/s",
            )
        } else {
            (
                edge.result.requests_per_sec,
                peer.result.requests_per_sec,
                " req/s",
            )
        };
        let ratio = if p > 0.0 { e / p } else { 0.0 };
        let p99 = (
            latency_seconds(&edge.result.p99),
            latency_seconds(&peer.result.p99),
        );
        let p99_ok = matches!(p99, (Some(a), Some(b)) if a <= b);
        let met = ratio >= t.goal && (p99_ok || !t.p99_no_worse);
        let _ = writeln!(
            out,
            "| {} | {e:.0}{unit} | {p:.0}{unit} | {ratio:.2}x | {:.1}x | {} / {} | {} |",
            t.what,
            t.goal,
            edge.result.p99,
            peer.result.p99,
            if met { "yes" } else { "no" },
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{bytes_per_second, latency_seconds};

    #[test]
    fn wrk_units() {
        for (text, want) in [
            ("737.00us", Some(737e-6)),
            ("1.60ms", Some(1.6e-3)),
            ("3.94s", Some(3.94)),
            ("1.50m", Some(90.0)),
            ("12", None),
            ("1.0xs", None),
        ] {
            let got = latency_seconds(text);
            assert!(
                match (got, want) {
                    (Some(a), Some(b)) => (a - b).abs() < 1e-9,
                    (a, b) => a == b,
                },
                "{text}: {got:?}"
            );
        }
        assert_eq!(bytes_per_second("2.00KB"), Some(2048.0));
        assert_eq!(bytes_per_second("1.00GB"), Some(1073741824.0));
        assert_eq!(bytes_per_second("nonsense"), None);
    }
}
