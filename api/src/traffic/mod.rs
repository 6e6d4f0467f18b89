//! Per-project traffic (#20): requests, bytes, status classes and top paths of each project
//! over the last hour and day, counted at the edges and shared through the state store, never
//! as Prometheus labels (one series per project would grow without bound).
//!
//! Every edge counts what it serves into [`Tally`] (one entry per project, top paths by the
//! Space-Saving algorithm so memory stays bounded whatever the paths), and every few seconds
//! hands the deltas to a [`TrafficStore`] ([`store`]), which adds them into 5-minute buckets
//! kept a day. [`summarize`] turns a project's buckets into the API's answer.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

pub mod store;

pub use store::{FileTraffic, RedisTraffic, TrafficStore};

/// Width of a bucket.
pub const BUCKET_MS: u64 = 5 * 60 * 1000;
/// Buckets in a day (the longest window).
pub const DAY_BUCKETS: u64 = 24 * 60 * 60 * 1000 / BUCKET_MS;
/// Buckets in an hour.
pub const HOUR_BUCKETS: u64 = 60 * 60 * 1000 / BUCKET_MS;
/// Paths counted per project between two flushes, and kept per bucket.
pub const PATHS_KEPT: usize = 32;
/// Top paths an answer lists.
pub const TOP_PATHS: usize = 10;
/// Longest path counted (longer ones are cut).
const MAX_PATH: usize = 256;

/// The bucket `unix_ms` falls in.
pub fn bucket_of(unix_ms: u64) -> u64 {
    unix_ms / BUCKET_MS
}

/// Requests, bytes and status classes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Requests answered.
    pub requests: u64,
    /// Body bytes sent.
    pub bytes: u64,
    /// Requests by status class: 1xx, 2xx, 3xx, 4xx, 5xx (a request the client left before
    /// any answer is in none).
    pub status: [u64; 5],
}

impl Counts {
    /// One request.
    pub fn add(&mut self, status: u16, bytes: u64) {
        self.requests += 1;
        self.bytes += bytes;
        if let 100..=599 = status {
            self.status[usize::from(status / 100 - 1)] += 1;
        }
    }

    /// Adds `other` in.
    pub fn merge(&mut self, other: &Counts) {
        self.requests += other.requests;
        self.bytes += other.bytes;
        for (a, b) in self.status.iter_mut().zip(other.status) {
            *a += b;
        }
    }
}

/// The most requested paths, approximately, in bounded memory (Space-Saving, Metwally et al.):
/// at most `capacity` paths are counted; a new path when full takes the place of the least
/// counted one and inherits its count. Every path requested more than `total / capacity` times
/// is among them, and no count is too low.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TopPaths {
    counts: HashMap<String, u64>,
}

impl TopPaths {
    /// Counts `path` `n` times, keeping at most `capacity` paths.
    pub fn add(&mut self, path: &str, n: u64, capacity: usize) {
        let path = clip(path);
        if let Some(count) = self.counts.get_mut(path) {
            *count += n;
            return;
        }
        if self.counts.len() < capacity {
            self.counts.insert(path.to_owned(), n);
            return;
        }
        let Some((least, count)) = self
            .counts
            .iter()
            .min_by(|a, b| a.1.cmp(b.1).then_with(|| b.0.cmp(a.0)))
            .map(|(p, c)| (p.clone(), *c))
        else {
            return;
        };
        self.counts.remove(&least);
        self.counts.insert(path.to_owned(), count + n);
    }

    /// The paths and counts, most requested first (ties by path).
    pub fn ranked(&self) -> Vec<(String, u64)> {
        let mut out: Vec<(String, u64)> =
            self.counts.iter().map(|(p, c)| (p.clone(), *c)).collect();
        out.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        out
    }
}

fn clip(path: &str) -> &str {
    gitdeploy_core::text::clip(path, MAX_PATH)
}

/// What one edge counted for one project since its last flush.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProjectTally {
    /// The totals.
    pub counts: Counts,
    /// The paths.
    pub paths: TopPaths,
}

/// What one edge counted since its last flush, by project.
#[derive(Debug, Default)]
pub struct Tally {
    projects: HashMap<String, ProjectTally>,
}

impl Tally {
    /// One request of `project`.
    pub fn add(&mut self, project: &str, path: &str, status: u16, bytes: u64) {
        let tally = match self.projects.get_mut(project) {
            Some(t) => t,
            None => self.projects.entry(project.to_owned()).or_default(),
        };
        tally.counts.add(status, bytes);
        tally.paths.add(path, 1, PATHS_KEPT);
    }

    /// Takes back a delta that could not be stored, to go with the next flush.
    pub fn absorb(&mut self, delta: Delta) {
        let tally = self.projects.entry(delta.project).or_default();
        tally.counts.merge(&delta.counts);
        for (path, n) in &delta.paths {
            tally.paths.add(path, *n, PATHS_KEPT);
        }
    }

    /// Whether nothing was counted.
    pub fn is_empty(&self) -> bool {
        self.projects.is_empty()
    }

    /// The deltas to store, all in `bucket`.
    pub fn into_deltas(self, bucket: u64) -> Vec<Delta> {
        self.projects
            .into_iter()
            .map(|(project, t)| Delta {
                project,
                bucket,
                counts: t.counts,
                paths: t.paths.ranked(),
            })
            .collect()
    }
}

/// What a store adds into one project's bucket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delta {
    /// The project.
    pub project: String,
    /// The bucket ([`bucket_of`]).
    pub bucket: u64,
    /// Totals to add.
    pub counts: Counts,
    /// Paths and counts to add.
    pub paths: Vec<(String, u64)>,
}

/// One bucket as stored.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Bucket {
    /// Which ([`bucket_of`]).
    pub bucket: u64,
    /// Totals.
    pub counts: Counts,
    /// Paths and counts.
    pub paths: Vec<(String, u64)>,
}

/// A project's traffic over one window.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    /// Requests answered.
    pub requests: u64,
    /// Body bytes sent.
    pub bytes: u64,
    /// Requests by status class.
    pub status: StatusClasses,
    /// The most requested paths, most first.
    pub top_paths: Vec<PathCount>,
}

/// Requests by status class.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusClasses {
    #[serde(rename = "1xx")]
    informational: u64,
    #[serde(rename = "2xx")]
    success: u64,
    #[serde(rename = "3xx")]
    redirect: u64,
    #[serde(rename = "4xx")]
    client_error: u64,
    #[serde(rename = "5xx")]
    server_error: u64,
}

/// A path and its requests.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathCount {
    /// The path as requested, without the query.
    pub path: String,
    /// Requests (at least this many: counting is approximate for rare paths).
    pub requests: u64,
}

/// A project's traffic over the last hour and the last day.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// The last hour (the current bucket and the eleven before it).
    pub hour: Window,
    /// The last day.
    pub day: Window,
}

/// The summary of `buckets` as of `now_ms`: buckets older than a day are left out.
pub fn summarize(buckets: &[Bucket], now_ms: u64) -> Summary {
    let now = bucket_of(now_ms);
    let window = |len: u64| {
        let mut counts = Counts::default();
        let mut paths: HashMap<&str, u64> = HashMap::new();
        for b in buckets
            .iter()
            .filter(|b| b.bucket <= now && now - b.bucket < len)
        {
            counts.merge(&b.counts);
            for (p, n) in &b.paths {
                *paths.entry(p.as_str()).or_default() += n;
            }
        }
        let mut ranked: Vec<(&str, u64)> = paths.into_iter().collect();
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        let [informational, success, redirect, client_error, server_error] = counts.status;
        Window {
            requests: counts.requests,
            bytes: counts.bytes,
            status: StatusClasses {
                informational,
                success,
                redirect,
                client_error,
                server_error,
            },
            top_paths: ranked
                .into_iter()
                .take(TOP_PATHS)
                .map(|(path, requests)| PathCount {
                    path: path.to_owned(),
                    requests,
                })
                .collect(),
        }
    };
    Summary {
        hour: window(HOUR_BUCKETS),
        day: window(DAY_BUCKETS),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_table() {
        let mut c = Counts::default();
        for (status, bytes) in [
            (200, 10),
            (204, 0),
            (304, 0),
            (404, 5),
            (503, 1),
            (0, 0),
            (101, 0),
        ] {
            c.add(status, bytes);
        }
        assert_eq!(
            c,
            Counts {
                requests: 7,
                bytes: 16,
                status: [1, 2, 1, 1, 1]
            }
        );
    }

    #[test]
    fn top_paths_keep_the_heavy_hitters_in_bounded_memory() {
        let mut top = TopPaths::default();
        // Two hot paths among a thousand requested once each.
        for i in 0..1000 {
            top.add("/hot", 1, 8);
            top.add(&format!("/cold/{i}"), 1, 8);
            if i % 2 == 0 {
                top.add("/warm", 1, 8);
            }
        }
        let ranked = top.ranked();
        assert!(ranked.len() <= 8);
        assert_eq!(ranked[0], ("/hot".to_owned(), 1000));
        assert_eq!(ranked[1].0, "/warm");
        // Never undercounted.
        assert!(ranked[1].1 >= 500);
        // Exact while it fits.
        let mut small = TopPaths::default();
        for p in ["/a", "/b", "/a", "/c", "/a", "/b"] {
            small.add(p, 1, 8);
        }
        assert_eq!(
            small.ranked(),
            [("/a".into(), 3), ("/b".into(), 2), ("/c".into(), 1)]
        );
        let long = "/é".repeat(400);
        small.add(&long, 1, 8);
        assert!(small.ranked().iter().all(|(p, _)| p.len() <= MAX_PATH));
    }

    #[test]
    fn tallies_become_deltas() {
        let mut t = Tally::default();
        t.add("site", "/", 200, 100);
        t.add("site", "/a", 404, 10);
        t.add("other", "/", 200, 1);
        assert!(!t.is_empty());
        let mut deltas = t.into_deltas(7);
        deltas.sort_by(|a, b| a.project.cmp(&b.project));
        assert_eq!(deltas[0].project, "other");
        assert_eq!(deltas[1].counts.requests, 2);
        assert_eq!(deltas[1].counts.status[3], 1);
        assert_eq!(deltas[1].paths, [("/".into(), 1), ("/a".into(), 1)]);
        assert!(deltas.iter().all(|d| d.bucket == 7));
        // A delta that could not be stored goes out with the next one.
        let mut next = Tally::default();
        next.add("site", "/", 200, 1);
        next.absorb(deltas.pop().unwrap());
        let again = next.into_deltas(8);
        assert_eq!(again[0].counts.requests, 3);
        assert_eq!(again[0].paths, [("/".into(), 2), ("/a".into(), 1)]);
    }

    #[test]
    fn windows_table() {
        let now_ms = 1_000 * BUCKET_MS + 10;
        let bucket = |ago: u64, requests: u64, path: &str| Bucket {
            bucket: 1_000 - ago,
            counts: Counts {
                requests,
                bytes: requests * 10,
                status: [0, requests, 0, 0, 0],
            },
            paths: vec![(path.to_owned(), requests)],
        };
        let buckets = [
            bucket(0, 1, "/now"),
            bucket(11, 2, "/edge-of-hour"),
            bucket(12, 4, "/an-hour-ago"),
            bucket(DAY_BUCKETS - 1, 8, "/edge-of-day"),
            bucket(DAY_BUCKETS, 16, "/too-old"),
        ];
        let s = summarize(&buckets, now_ms);
        assert_eq!(s.hour.requests, 3);
        assert_eq!(s.hour.bytes, 30);
        assert_eq!(s.day.requests, 15);
        assert_eq!(s.day.status.success, 15);
        let paths: Vec<&str> = s.day.top_paths.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            ["/edge-of-day", "/an-hour-ago", "/edge-of-hour", "/now"]
        );
        // A bucket from the future (a clock ahead on another edge) waits for its time.
        let future = [
            bucket(0, 1, "/now"),
            Bucket {
                bucket: 1_001,
                ..bucket(0, 5, "/x")
            },
        ];
        assert_eq!(summarize(&future, now_ms).hour.requests, 1);
        let json = serde_json::to_value(&s.hour.status).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"1xx":0,"2xx":3,"3xx":0,"4xx":0,"5xx":0})
        );
    }
}
