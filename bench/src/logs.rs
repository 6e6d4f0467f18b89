//! Log streaming latency: a build writes lines at a fixed rate, each carrying the moment it was
//! written (µs since the epoch); WebSocket followers measure when each line reaches them.
//! Followers connect before the first line; one more connects after the build ended and must
//! still receive every line (lines lost by a late client).

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;

use crate::edge::Edge;

/// A repository whose build prints `rate` lines per second for `seconds`.
pub struct Fixture {
    root: PathBuf,
    lines: u64,
    rate: u64,
    _dir: tempfile::TempDir,
}

impl Fixture {
    pub fn create(rate: u64, seconds: u64) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let root = dir.path().join("logs");
        std::fs::create_dir_all(&root)?;
        let lines = rate * seconds;
        // 100 lines every 10 ms; each line is "t=<µs since the epoch>".
        let script = format!(
            "const fs = require('fs');\n\
             const base = BigInt(Date.now()) * 1000n - process.hrtime.bigint() / 1000n;\n\
             const now = () => base + process.hrtime.bigint() / 1000n;\n\
             const total = {lines}, batch = {batch};\n\
             let sent = 0;\n\
             const timer = setInterval(() => {{\n\
               let out = '';\n\
               for (let i = 0; i < batch && sent < total; i++, sent++) out += 't=' + now() + '\\n';\n\
               fs.writeSync(1, out);\n\
               if (sent >= total) {{\n\
                 clearInterval(timer);\n\
                 fs.mkdirSync('dist', {{ recursive: true }});\n\
                 fs.writeFileSync('dist/index.html', 'logs');\n\
               }}\n\
             }}, 10);\n",
            batch = rate / 100
        );
        std::fs::write(root.join("build.js"), script)?;
        std::fs::write(
            root.join("package.json"),
            r#"{"name":"logs","private":true,"scripts":{"build":"node build.js"}}"#,
        )?;
        crate::site::commit_all(&root, "logs")?;
        Ok(Fixture {
            root,
            lines,
            rate,
            _dir: dir,
        })
    }
}

pub struct Row {
    followers: usize,
    batch: bool,
    lines: u64,
    rate: u64,
    p50_us: u64,
    p99_us: u64,
    max_us: u64,
    lost: u64,
    late_lost: u64,
    /// CPU seconds the edge and the followers (this process) used while the build ran.
    edge_cpu_s: f64,
    clients_cpu_s: f64,
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Follows the log to its end (`batch`: several records per frame); returns the latencies
/// (µs) of the timed lines.
async fn follow(addr: String, id: String, batch: bool) -> anyhow::Result<Vec<u64>> {
    let url = format!(
        "ws://{addr}/api/deployments/{id}/logs/ws?batch={}",
        u8::from(batch)
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await?;
    let mut latencies = Vec::new();
    while let Some(msg) = ws.next().await {
        match msg? {
            Message::Text(text) => {
                let received = now_us();
                for line in text.as_str().split('\n') {
                    if let Some(t) = stamp(line) {
                        latencies.push(received.saturating_sub(t));
                    }
                }
            }
            Message::Close(_) => break,
            _ => {}
        }
    }
    Ok(latencies)
}

/// The stamp of a record `{"seq":…,"line":"t=<µs>",…}`, found without parsing the whole
/// record: a thousand followers parse ten million lines a second on the cores the edge runs
/// on, so the clients' own cost must stay small for the latencies to be the edge's.
fn stamp(record: &str) -> Option<u64> {
    let at = record.find("\"line\":\"t=")? + 10;
    let digits = &record[at..];
    let end = digits.find(|c: char| !c.is_ascii_digit())?;
    digits[..end].parse().ok()
}

/// CPU seconds this process has used.
fn own_cpu_seconds() -> f64 {
    crate::host::cpu_ticks(&[std::process::id()]).unwrap_or(0) as f64
        / crate::host::clock_ticks_per_second()
}

/// One deploy of the fixture with `followers` clients connected before its first line.
pub async fn measure(
    edge: &Edge,
    fixture: &Fixture,
    followers: usize,
    batch: bool,
) -> anyhow::Result<Row> {
    let answer: serde_json::Value = edge
        .http
        .post(format!("http://{}/api/deployments", edge.addr))
        .json(&serde_json::json!({ "repo": fixture.root }))
        .send()
        .await?
        .json()
        .await?;
    let id = answer["id"].as_str().context("no id")?.to_owned();
    let edge_pids = crate::peers::Server::pids(edge);
    let edge_before = crate::host::cpu_ticks(&edge_pids).unwrap_or(0);
    let clients_before = own_cpu_seconds();
    let mut tasks = Vec::new();
    for _ in 0..followers {
        tasks.push(tokio::spawn(follow(edge.addr.clone(), id.clone(), batch)));
    }
    let mut all = Vec::new();
    let mut lost = 0;
    for task in tasks {
        let latencies = task.await??;
        lost += fixture.lines.saturating_sub(latencies.len() as u64);
        all.extend(latencies);
    }
    let edge_cpu_s = crate::host::cpu_ticks(&edge_pids)
        .unwrap_or(0)
        .saturating_sub(edge_before) as f64
        / crate::host::clock_ticks_per_second();
    let clients_cpu_s = own_cpu_seconds() - clients_before;
    let late = follow(edge.addr.clone(), id, batch).await?;
    all.sort_unstable();
    let pick = |q: f64| {
        all.get(((all.len() as f64 * q) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    Ok(Row {
        followers,
        batch,
        lines: fixture.lines,
        rate: fixture.rate,
        p50_us: pick(0.50),
        p99_us: pick(0.99),
        max_us: all.last().copied().unwrap_or(0),
        lost,
        late_lost: fixture.lines.saturating_sub(late.len() as u64),
        edge_cpu_s,
        clients_cpu_s,
    })
}

pub fn render(rows: &[Row]) -> String {
    let mut out = String::from(
        "\n## Log streaming\n\nA build writes lines at a fixed rate, each stamped with the moment it \
         was written; WebSocket followers (connected before the first line) measure when each line \
         arrives: builder → runner → log bus → WebSocket, all on this machine. A plain pub/sub \
         subscriber that joins late loses every line published before it joined; the last column \
         is what a client that connects after the build ended missed here. Frames: one record \
         per WebSocket frame, or `?batch=1` (the records ready together share a frame). The \
         followers run in the bench's own process on the same two cores: the last two columns \
         are the CPU seconds the edge and the followers used while the build ran (a build of \
         3 s: 6 CPU seconds is both cores full).\n\n\
         | followers | frames | lines | rate | p50 | p99 | max | lines lost | lost by a late client | edge CPU | followers' CPU |\n\
         |---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        out.push_str(&format!(
            "| {} | {} | {} | {}/s | {:.2} ms | {:.2} ms | {:.2} ms | {} | {} | {:.1} s | {:.1} s |\n",
            r.followers,
            if r.batch { "batched" } else { "one per record" },
            r.lines,
            r.rate,
            r.p50_us as f64 / 1000.0,
            r.p99_us as f64 / 1000.0,
            r.max_us as f64 / 1000.0,
            r.lost,
            r.late_lost,
            r.edge_cpu_s,
            r.clients_cpu_s
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn stamps() {
        assert_eq!(
            super::stamp(r#"{"seq":3,"ts":1,"stream":"stdout","line":"t=1700000000123456"}"#),
            Some(1_700_000_000_123_456)
        );
        assert_eq!(super::stamp(r#"{"seq":3,"line":"Installing"}"#), None);
        assert_eq!(super::stamp(r#"{"seq":3,"line":"t=12"#), None);
    }
}
