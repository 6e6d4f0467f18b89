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
                    let record: serde_json::Value = serde_json::from_str(line)?;
                    if let Some(t) = record["line"]
                        .as_str()
                        .and_then(|l| l.strip_prefix("t="))
                        .and_then(|t| t.parse::<u64>().ok())
                    {
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
    })
}

pub fn render(rows: &[Row]) -> String {
    let mut out = String::from(
        "\n## Log streaming\n\nA build writes lines at a fixed rate, each stamped with the moment it \
         was written; WebSocket followers (connected before the first line) measure when each line \
         arrives: builder → runner → log bus → WebSocket, all on this machine. A plain pub/sub \
         subscriber that joins late loses every line published before it joined; the last column \
         is what a client that connects after the build ended missed here. Frames: one record \
         per WebSocket frame, or `?batch=1` (the records ready together share a frame).\n\n\
         | followers | frames | lines | rate | p50 | p99 | max | lines lost | lost by a late client |\n\
         |---:|---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        out.push_str(&format!(
            "| {} | {} | {} | {}/s | {:.2} ms | {:.2} ms | {:.2} ms | {} | {} |\n",
            r.followers,
            if r.batch { "batched" } else { "one per record" },
            r.lines,
            r.rate,
            r.p50_us as f64 / 1000.0,
            r.p99_us as f64 / 1000.0,
            r.max_us as f64 / 1000.0,
            r.lost,
            r.late_lost
        ));
    }
    out
}
