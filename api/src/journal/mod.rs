//! Short histories the control plane keeps beside its records: the audit log of API mutations,
//! each project's notification deliveries, and the webhook deliveries already seen (replay
//! protection). Unlike records, entries are never changed: they are appended, the newest
//! `keep` are kept, and a reader asks for the newest few.
//!
//! Two backends keep one contract (`api/tests/store_contract.rs`): [`FileJournal`] for `up`
//! (one NDJSON file per stream in the state directory) and [`RedisJournal`] for `serve` (a
//! capped list per stream, `SET NX PX` for seen keys), shared by every edge.

mod file;
mod redis_journal;

use std::io;

use async_trait::async_trait;
use serde_json::Value;

pub use file::FileJournal;
pub use redis_journal::RedisJournal;

/// Append-only, capped histories and a "seen once" memory.
#[async_trait]
pub trait Journal: Send + Sync + 'static {
    /// Appends `entry` to `stream`, keeping the newest [`keep`] of them.
    async fn append(&self, stream: &str, entry: &Value) -> io::Result<()>;
    /// Up to `limit` of the newest entries of `stream`, newest first.
    async fn recent(&self, stream: &str, limit: usize) -> io::Result<Vec<Value>>;
    /// `true` the first time `key` is offered within `ttl_ms`, `false` for a repeat (the key
    /// is remembered in the first case only).
    async fn first_time(&self, key: &str, ttl_ms: u64) -> io::Result<bool>;
}

/// The stream of API mutations: who, what, when.
pub const AUDIT: &str = "audit";

/// Entries of the audit log kept.
pub const AUDIT_KEEP: usize = 10_000;

/// Delivery attempts kept per project.
pub const DELIVERIES_KEEP: usize = 500;

/// The stream of a project's notification deliveries.
pub fn deliveries(project: &str) -> String {
    format!("deliveries:{project}")
}

/// How many entries `stream` keeps.
pub fn keep(stream: &str) -> usize {
    if stream == AUDIT {
        AUDIT_KEEP
    } else {
        DELIVERIES_KEEP
    }
}

/// Whether `stream` is a name this module hands out (a file name and a key part as it is).
pub(crate) fn valid_stream(stream: &str) -> bool {
    !stream.is_empty()
        && stream.len() <= 128
        && stream
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b':')
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("invalid journal name {what:?}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_names() {
        assert!(valid_stream(AUDIT));
        assert!(valid_stream(&deliveries("my-site")));
        for bad in ["", "../x", "a/b", "A", "a b", "a.b"] {
            assert!(!valid_stream(bad), "{bad:?}");
        }
    }
}
