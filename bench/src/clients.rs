//! Hostile clients against the edge, measured: what idle connections cost and whether the memory
//! comes back, how fast slow heads are cut off, and what a flood of huge heads does to memory,
//! all while an ordinary request keeps being timed. Everything runs on loopback against an edge
//! this process starts; every loop is bounded in count and time.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::edge::Edge;

/// Idle connections held at once.
pub const IDLE: usize = 10_000;
/// Clients that dribble a head.
const SLOW: usize = 500;
/// Clients that send a huge unterminated head.
const HUGE: usize = 300;

/// What one run measured.
pub struct Report {
    idle_rss_kib: u64,
    held: usize,
    held_rss_kib: u64,
    health_while_held: Duration,
    after_rss_kib: u64,
    slow_cut: Vec<Duration>,
    health_while_slow: Duration,
    huge_peak_rss_kib: u64,
    huge_answers: usize,
}

/// Raises this process's open-file limit (it opens thousands of sockets) with `prlimit`.
pub fn raise_own_fd_limit() {
    let _ = std::process::Command::new("prlimit")
        .arg(format!("--pid={}", std::process::id()))
        .arg("--nofile=65536:65536")
        .status();
}

async fn health(edge: &Edge) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let status = edge
        .http
        .get(format!("http://{}/api/health", edge.addr))
        .send()
        .await?
        .status();
    anyhow::ensure!(status == 200, "health answered {status}");
    Ok(started.elapsed())
}

/// Waits (bounded) until the edge holds about `n` descriptors more than `base`.
async fn wait_for_fds(edge: &Edge, at_least: Option<usize>, at_most: Option<usize>) -> usize {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let n = edge.open_fds().unwrap_or(0);
        let done = at_least.is_none_or(|m| n >= m) && at_most.is_none_or(|m| n <= m);
        if done || Instant::now() > deadline {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs the three attacks against `edge` (started with a connection limit above [`IDLE`]).
pub async fn measure(edge: &Edge) -> anyhow::Result<Report> {
    raise_own_fd_limit();
    let base_fds = wait_for_fds(edge, None, None).await;
    let idle_rss_kib = edge.rss_kib().unwrap_or(0);

    // Idle connections.
    let mut idle = Vec::with_capacity(IDLE);
    for _ in 0..IDLE {
        idle.push(TcpStream::connect(&edge.addr).await?);
    }
    let held = wait_for_fds(edge, Some(base_fds + IDLE), None).await - base_fds;
    let held_rss_kib = edge.rss_kib().unwrap_or(0);
    let health_while_held = health(edge).await?;
    drop(idle);
    wait_for_fds(edge, None, Some(base_fds + 16)).await;
    // The edge hands freed memory back within its trim interval (2 s) after the fall.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after_rss_kib = edge.rss_kib().unwrap_or(0);

    // Slow heads: one header line a second, never the end.
    let mut slow = tokio::task::JoinSet::new();
    for _ in 0..SLOW {
        let addr = edge.addr.clone();
        slow.spawn(async move {
            let mut s = TcpStream::connect(&addr).await.ok()?;
            let started = Instant::now();
            s.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n")
                .await
                .ok()?;
            let mut buf = [0u8; 256];
            for i in 0..60 {
                tokio::select! {
                    read = s.read(&mut buf) => {
                        let _ = read;
                        return Some(started.elapsed());
                    }
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {
                        if s.write_all(format!("X-Slow-{i}: 1\r\n").as_bytes()).await.is_err() {
                            return Some(started.elapsed());
                        }
                    }
                }
            }
            None
        });
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let health_while_slow = health(edge).await?;
    let mut slow_cut = Vec::new();
    while let Some(done) = slow.join_next().await {
        if let Ok(Some(took)) = done {
            slow_cut.push(took);
        }
    }
    slow_cut.sort();

    // Huge heads: 1 MiB each without an end.
    edge.reset_peak_rss();
    let chunk = vec![b'a'; 64 * 1024];
    let mut huge = tokio::task::JoinSet::new();
    for _ in 0..HUGE {
        let addr = edge.addr.clone();
        let chunk = chunk.clone();
        huge.spawn(async move {
            let mut s = TcpStream::connect(&addr).await.ok()?;
            let _ = s
                .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Huge: ")
                .await;
            for _ in 0..16 {
                if s.write_all(&chunk).await.is_err() {
                    break;
                }
            }
            let mut answer = vec![0u8; 64];
            let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut answer))
                .await
                .ok()?
                .ok()?;
            Some(answer[..n].starts_with(b"HTTP/1.1 431"))
        });
    }
    let mut huge_answers = 0;
    while let Some(done) = huge.join_next().await {
        huge_answers += usize::from(matches!(done, Ok(Some(true))));
    }
    let huge_peak_rss_kib = edge.peak_rss_kib().unwrap_or(0);
    Ok(Report {
        idle_rss_kib,
        held,
        held_rss_kib,
        health_while_held,
        after_rss_kib,
        slow_cut,
        health_while_slow,
        huge_peak_rss_kib,
        huge_answers,
    })
}

/// The report as Markdown.
pub fn render(r: &Report) -> String {
    let mib = |kib: u64| kib as f64 / 1024.0;
    let per_conn = (r.held_rss_kib.saturating_sub(r.idle_rss_kib) * 1024) / r.held.max(1) as u64;
    let pct = |q: f64| {
        r.slow_cut
            .get(((r.slow_cut.len() as f64 * q) as usize).min(r.slow_cut.len().saturating_sub(1)))
            .map(|d| format!("{:.1} s", d.as_secs_f64()))
            .unwrap_or("-".into())
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n## Hostile clients\n\nOne edge with its default client limits (idle 60 s, head 10 s, \
         64 KiB heads), a connection limit of 20,000, and a health request timed during each attack.\n"
    );
    let _ = writeln!(out, "| attack | measured |\n|---|---|");
    let _ = writeln!(
        out,
        "| {IDLE} idle connections | {} held; RSS {:.1} → {:.1} MiB ({per_conn} bytes each); health {:.1} ms meanwhile; RSS {:.1} MiB after they closed |",
        r.held,
        mib(r.idle_rss_kib),
        mib(r.held_rss_kib),
        r.health_while_held.as_secs_f64() * 1e3,
        mib(r.after_rss_kib),
    );
    let _ = writeln!(
        out,
        "| {SLOW} slow heads (a header line a second) | {} cut off (408), after p50 {} / max {}; health {:.1} ms meanwhile |",
        r.slow_cut.len(),
        pct(0.5),
        pct(1.0),
        r.health_while_slow.as_secs_f64() * 1e3,
    );
    let _ = writeln!(
        out,
        "| {HUGE} unterminated 1 MiB heads | {} answered 431; peak RSS {:.1} MiB |",
        r.huge_answers,
        mib(r.huge_peak_rss_kib),
    );
    out
}
