//! The S3 drain: records batched into gzip-compressed NDJSON objects under
//! `access-logs/YYYY/MM/DD/HH/`, the way CDNs deliver logs. An object holds one hour's records of
//! one edge; a batch is sealed when it reaches its size, when it is `interval` old, when the
//! hour turns, and at shutdown. Sealed batches wait for upload in a bounded queue; the upload
//! task retries each a few times. Neither blocks the writer, let alone a response: a full queue
//! or a batch S3 keeps refusing is dropped and counted.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flate2::write::GzEncoder;
use prometheus::IntCounter;

use super::record::civil_hour;
use crate::origin::S3Origin;

/// Uncompressed bytes after which a batch is sealed.
pub const MAX_BATCH_BYTES: usize = 8 << 20;
/// Sealed batches waiting for upload at most (about a megabyte each, compressed).
pub const QUEUE_BATCHES: usize = 16;
/// Upload attempts of one batch.
const ATTEMPTS: u32 = 5;
/// Wait before the second attempt; doubled after each failure.
const FIRST_RETRY: Duration = Duration::from_millis(500);

/// The key of a batch: `<prefix>access-logs/YYYY/MM/DD/HH/<edge>-<first record's ms>-<seq>`.
pub fn object_key(prefix: &str, edge: &str, first_ms: u64, seq: u64) -> String {
    let (y, m, d, h) = civil_hour(first_ms);
    format!("{prefix}{y:04}/{m:02}/{d:02}/{h:02}/{edge}-{first_ms}-{seq:06}.ndjson.gz")
}

/// The hour a record falls in, as hours since 1970.
fn hour_of(unix_ms: u64) -> u64 {
    unix_ms / 3_600_000
}

/// A name for this edge in object keys: the host name's letters, digits and dashes, and the
/// process id (two edges on one host, or a restarted one, never write the same key).
pub fn edge_name(hostname: &str, pid: u32) -> String {
    let host: String = hostname
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    let host = if host.is_empty() { "edge".into() } else { host };
    format!("{host}-{pid}")
}

/// A sealed batch.
pub struct Batch {
    key: String,
    body: Vec<u8>,
    lines: u64,
}

struct Open {
    hour: u64,
    first_ms: u64,
    opened: Instant,
    gz: GzEncoder<Vec<u8>>,
    lines: u64,
    raw_bytes: usize,
}

/// Counters of the drain's outcome, in records.
#[derive(Clone)]
pub struct DrainCounters {
    /// Records in objects stored in S3.
    pub shipped: IntCounter,
    /// Records lost: queue full, or S3 refused every attempt.
    pub dropped: IntCounter,
}

/// Builds batches from the writer thread's records.
pub struct Batcher {
    prefix: String,
    edge: String,
    interval: Duration,
    max_bytes: usize,
    seq: u64,
    open: Option<Open>,
    queue: tokio::sync::mpsc::Sender<Batch>,
    counters: DrainCounters,
}

impl Batcher {
    /// Batches sealed after `interval`, queued for the uploader at the other end of `queue`;
    /// keys start with `prefix` (the bucket layout's `access-logs/`).
    pub fn new(
        prefix: String,
        edge: String,
        interval: Duration,
        queue: tokio::sync::mpsc::Sender<Batch>,
        counters: DrainCounters,
    ) -> Self {
        Batcher {
            prefix,
            edge,
            interval,
            max_bytes: MAX_BATCH_BYTES,
            seq: 0,
            open: None,
            queue,
            counters,
        }
    }

    /// Adds one record (a JSON line) that ended at `unix_ms`.
    pub fn push(&mut self, unix_ms: u64, line: &[u8]) {
        if self
            .open
            .as_ref()
            .is_some_and(|o| o.hour != hour_of(unix_ms))
        {
            self.seal();
        }
        let open = self.open.get_or_insert_with(|| Open {
            hour: hour_of(unix_ms),
            first_ms: unix_ms,
            opened: Instant::now(),
            gz: GzEncoder::new(Vec::with_capacity(64 << 10), flate2::Compression::fast()),
            lines: 0,
            raw_bytes: 0,
        });
        // Writing into memory cannot fail.
        let _ = open.gz.write_all(line);
        open.lines += 1;
        open.raw_bytes += line.len();
        if open.raw_bytes >= self.max_bytes {
            self.seal();
        }
    }

    /// Seals the open batch if it is `interval` old.
    pub fn tick(&mut self) {
        if self
            .open
            .as_ref()
            .is_some_and(|o| o.opened.elapsed() >= self.interval)
        {
            self.seal();
        }
    }

    /// Seals the open batch and queues it for upload.
    pub fn seal(&mut self) {
        let Some(open) = self.open.take() else {
            return;
        };
        let body = match open.gz.finish() {
            Ok(body) => body,
            Err(_) => unreachable!("compressing into memory does not fail"),
        };
        let batch = Batch {
            key: object_key(&self.prefix, &self.edge, open.first_ms, self.seq),
            body,
            lines: open.lines,
        };
        self.seq += 1;
        if let Err(e) = self.queue.try_send(batch) {
            let batch = match e {
                tokio::sync::mpsc::error::TrySendError::Full(b)
                | tokio::sync::mpsc::error::TrySendError::Closed(b) => b,
            };
            tracing::warn!(
                key = %batch.key,
                "access-log upload queue is full: {} records dropped",
                batch.lines
            );
            self.counters.dropped.inc_by(batch.lines);
        }
    }
}

/// Uploads queued batches until the queue's sender is gone and it is empty.
pub async fn upload(
    origin: Arc<S3Origin>,
    mut queue: tokio::sync::mpsc::Receiver<Batch>,
    counters: DrainCounters,
) {
    while let Some(batch) = queue.recv().await {
        let mut wait = FIRST_RETRY;
        let mut attempt = 1;
        loop {
            match origin
                .put(&batch.key, batch.body.clone(), "application/gzip")
                .await
            {
                Ok(()) => {
                    counters.shipped.inc_by(batch.lines);
                    break;
                }
                Err(e) if attempt < ATTEMPTS => {
                    tracing::warn!(key = %batch.key, attempt, "access-log upload failed: {e}");
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                    attempt += 1;
                }
                Err(e) => {
                    tracing::error!(
                        key = %batch.key,
                        "access-log upload failed {ATTEMPTS} times, {} records dropped: {e}",
                        batch.lines
                    );
                    counters.dropped.inc_by(batch.lines);
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn counters() -> DrainCounters {
        DrainCounters {
            shipped: IntCounter::new("s", "s").unwrap(),
            dropped: IntCounter::new("d", "d").unwrap(),
        }
    }

    fn unzip(body: &[u8]) -> String {
        let mut out = String::new();
        flate2::read::GzDecoder::new(body)
            .read_to_string(&mut out)
            .unwrap();
        out
    }

    #[test]
    fn keys_table() {
        for (first_ms, seq, want) in [
            (
                1_796_276_022_120,
                0,
                "p/access-logs/2026/12/03/05/edge-7-1796276022120-000000.ndjson.gz",
            ),
            (
                1_798_761_599_999,
                42,
                "p/access-logs/2026/12/31/23/edge-7-1798761599999-000042.ndjson.gz",
            ),
        ] {
            assert_eq!(object_key("p/access-logs/", "edge-7", first_ms, seq), want);
        }
        assert_eq!(
            edge_name("ip-10-0-1-5.ec2.internal\n", 9),
            "ip-10-0-1-5-ec2-internal-9"
        );
        assert_eq!(edge_name("", 9), "edge-9");
        assert_eq!(edge_name("Ü/..", 1), "-----1");
    }

    #[test]
    fn batches_split_by_hour_size_and_seal() {
        let (tx, mut rx) = tokio::sync::mpsc::channel(8);
        let c = counters();
        let mut b = Batcher::new(
            "access-logs/".into(),
            "e-1".into(),
            Duration::from_secs(3600),
            tx,
            c.clone(),
        );
        let hour = 1_796_274_000_000; // 05:00:00
        b.push(hour + 1, b"{\"a\":1}\n");
        b.push(hour + 2, b"{\"a\":2}\n");
        assert!(rx.try_recv().is_err(), "nothing is sealed yet");
        // The hour turns: the first batch is sealed with its two records.
        b.push(hour + 3_600_000, b"{\"a\":3}\n");
        let first = rx.try_recv().unwrap();
        assert_eq!(first.lines, 2);
        assert_eq!(unzip(&first.body), "{\"a\":1}\n{\"a\":2}\n");
        assert!(first.key.starts_with("access-logs/2026/12/03/05/e-1-"));
        b.seal();
        let second = rx.try_recv().unwrap();
        assert_eq!(unzip(&second.body), "{\"a\":3}\n");
        assert!(second.key.starts_with("access-logs/2026/12/03/06/"));
        assert_ne!(first.key, second.key);
        b.seal();
        assert!(rx.try_recv().is_err(), "an empty batch is not sent");
        // Size.
        b.max_bytes = 20;
        for i in 0..5 {
            b.push(hour + 10 + i, b"0123456789\n");
        }
        assert_eq!(rx.try_recv().unwrap().lines, 2);
        assert_eq!(rx.try_recv().unwrap().lines, 2);
        assert!(rx.try_recv().is_err());
        assert_eq!(c.dropped.get(), 0);
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        let (tx, _rx) = tokio::sync::mpsc::channel(1);
        let c = counters();
        let mut b = Batcher::new("a/".into(), "e".into(), Duration::ZERO, tx, c.clone());
        for i in 0..3 {
            b.push(1000 + i, b"x\n");
            b.tick();
        }
        assert_eq!(c.dropped.get(), 2);
        assert!(b.open.is_none());
    }
}
