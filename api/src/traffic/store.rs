//! Where the edges' traffic counts meet: added into 5-minute buckets per project, kept a day.
//! Redis for `serve` (every edge adds its deltas to the same hashes and sorted sets, which
//! expire by themselves), memory for `up` (one process; the counts start again with it).

use std::collections::HashMap;
use std::io;
use std::sync::Mutex;

use redis::aio::ConnectionManager;

use super::{Bucket, Counts, Delta, TopPaths, DAY_BUCKETS, PATHS_KEPT};
use crate::redis_conn::io_err;

/// Adds and reads per-project traffic.
#[async_trait::async_trait]
pub trait TrafficStore: Send + Sync + 'static {
    /// Adds one flush's deltas.
    async fn add(&self, deltas: &[Delta]) -> io::Result<()>;
    /// The buckets of `project` from `since` (a bucket number) on.
    async fn buckets(&self, project: &str, since: u64) -> io::Result<Vec<Bucket>>;
}

/// One project's buckets: totals and paths by bucket number.
type ProjectBuckets = HashMap<u64, (Counts, TopPaths)>;

/// In memory (`up`): one process counts and answers.
#[derive(Default)]
pub struct FileTraffic {
    projects: Mutex<HashMap<String, ProjectBuckets>>,
}

#[async_trait::async_trait]
impl TrafficStore for FileTraffic {
    async fn add(&self, deltas: &[Delta]) -> io::Result<()> {
        let mut projects = self.projects.lock().unwrap_or_else(|e| e.into_inner());
        for d in deltas {
            let buckets = projects.entry(d.project.clone()).or_default();
            let (counts, paths) = buckets.entry(d.bucket).or_default();
            counts.merge(&d.counts);
            for (p, n) in &d.paths {
                paths.add(p, *n, PATHS_KEPT);
            }
            // A day and a bucket of margin, no more.
            buckets.retain(|b, _| b + DAY_BUCKETS + 1 > d.bucket);
        }
        Ok(())
    }

    async fn buckets(&self, project: &str, since: u64) -> io::Result<Vec<Bucket>> {
        let projects = self.projects.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<Bucket> = projects
            .get(project)
            .into_iter()
            .flatten()
            .filter(|(b, _)| **b >= since)
            .map(|(b, (counts, paths))| Bucket {
                bucket: *b,
                counts: *counts,
                paths: paths.ranked(),
            })
            .collect();
        out.sort_by_key(|b| b.bucket);
        Ok(out)
    }
}

/// In Redis (`serve`): `<prefix>traffic:<project>:<bucket>` is a hash of the totals and
/// `…:<bucket>:paths` a sorted set of paths (trimmed to the most requested), both expiring a
/// day after their bucket.
pub struct RedisTraffic {
    conn: ConnectionManager,
    prefix: String,
}

/// The hash fields of a bucket's totals.
const FIELDS: [&str; 7] = ["requests", "bytes", "1xx", "2xx", "3xx", "4xx", "5xx"];
/// How long a bucket's keys live (a day and a bucket).
const TTL_SECS: u64 = (DAY_BUCKETS + 1) * super::BUCKET_MS / 1000;

impl RedisTraffic {
    /// Keys under `prefix` on `conn`.
    pub fn new(conn: ConnectionManager, prefix: &str) -> Self {
        RedisTraffic {
            conn,
            prefix: prefix.to_owned(),
        }
    }

    fn key(&self, project: &str, bucket: u64) -> String {
        format!("{}traffic:{project}:{bucket}", self.prefix)
    }
}

fn fields(c: &Counts) -> [u64; 7] {
    [
        c.requests,
        c.bytes,
        c.status[0],
        c.status[1],
        c.status[2],
        c.status[3],
        c.status[4],
    ]
}

#[async_trait::async_trait]
impl TrafficStore for RedisTraffic {
    async fn add(&self, deltas: &[Delta]) -> io::Result<()> {
        if deltas.is_empty() {
            return Ok(());
        }
        // Not atomic across keys, nor retried: a flush is counted at most once.
        let mut pipe = redis::pipe();
        for d in deltas {
            let key = self.key(&d.project, d.bucket);
            let paths = format!("{key}:paths");
            for (field, n) in FIELDS.iter().zip(fields(&d.counts)) {
                if n > 0 {
                    pipe.cmd("HINCRBY").arg(&key).arg(field).arg(n).ignore();
                }
            }
            for (path, n) in &d.paths {
                pipe.cmd("ZINCRBY").arg(&paths).arg(n).arg(path).ignore();
            }
            // Keep the most requested paths only.
            pipe.cmd("ZREMRANGEBYRANK")
                .arg(&paths)
                .arg(0)
                .arg(-(PATHS_KEPT as i64) - 1)
                .ignore();
            pipe.cmd("EXPIRE").arg(&key).arg(TTL_SECS).ignore();
            pipe.cmd("EXPIRE").arg(&paths).arg(TTL_SECS).ignore();
        }
        pipe.query_async::<()>(&mut self.conn.clone())
            .await
            .map_err(io_err)
    }

    async fn buckets(&self, project: &str, since: u64) -> io::Result<Vec<Bucket>> {
        let now = super::bucket_of(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        );
        // A bucket ahead of this clock may come from an edge whose clock is ahead.
        let numbers: Vec<u64> = (since..=now + 1).collect();
        let mut pipe = redis::pipe();
        for b in &numbers {
            let key = self.key(project, *b);
            pipe.cmd("HMGET").arg(&key).arg(&FIELDS[..]);
            pipe.cmd("ZREVRANGE")
                .arg(format!("{key}:paths"))
                .arg(0)
                .arg(PATHS_KEPT as i64 - 1)
                .arg("WITHSCORES");
        }
        type Answer = (Vec<Option<u64>>, Vec<(String, f64)>);
        let answers: Vec<Answer> = {
            let raw: Vec<redis::Value> = pipe
                .query_async(&mut self.conn.clone())
                .await
                .map_err(io_err)?;
            let bad = |e: &dyn std::fmt::Display| io::Error::other(format!("redis: {e}"));
            let mut raw = raw.into_iter();
            let mut out = Vec::with_capacity(numbers.len());
            while let (Some(totals), Some(paths)) = (raw.next(), raw.next()) {
                let totals: Vec<Option<u64>> =
                    redis::from_redis_value(totals).map_err(|e| bad(&e))?;
                let paths: Vec<(String, f64)> =
                    redis::from_redis_value(paths).map_err(|e| bad(&e))?;
                out.push((totals, paths));
            }
            out
        };
        Ok(numbers
            .into_iter()
            .zip(answers)
            .filter(|(_, (totals, paths))| totals.iter().any(Option::is_some) || !paths.is_empty())
            .map(|(bucket, (totals, paths))| {
                let v = |i: usize| totals.get(i).copied().flatten().unwrap_or(0);
                Bucket {
                    bucket,
                    counts: Counts {
                        requests: v(0),
                        bytes: v(1),
                        status: [v(2), v(3), v(4), v(5), v(6)],
                    },
                    paths: paths.into_iter().map(|(p, n)| (p, n as u64)).collect(),
                }
            })
            .collect())
    }
}
