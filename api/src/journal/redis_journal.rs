//! The shared journal in Redis: `journal:<stream>` lists (newest at the head, trimmed to what is
//! kept) and `seen:<key>` strings that expire.

use std::io;

use async_trait::async_trait;
use redis::aio::ConnectionManager;
use serde_json::Value;

use super::{invalid, valid_stream, Journal};
use crate::redis_conn::io_err;

/// The production [`Journal`], on the store's connection and prefix.
pub struct RedisJournal {
    conn: ConnectionManager,
    prefix: String,
}

impl RedisJournal {
    pub(crate) fn new(conn: ConnectionManager, prefix: &str) -> Self {
        RedisJournal {
            conn,
            prefix: prefix.to_owned(),
        }
    }
}

#[async_trait]
impl Journal for RedisJournal {
    async fn append(&self, stream: &str, entry: &Value) -> io::Result<()> {
        let keep = super::keep(stream);
        if !valid_stream(stream) {
            return Err(invalid(stream));
        }
        let key = format!("{}journal:{stream}", self.prefix);
        let stop = isize::try_from(keep.max(1)).unwrap_or(isize::MAX) - 1;
        let _: () = redis::pipe()
            .atomic()
            .lpush(&key, serde_json::to_string(entry)?)
            .ignore()
            .ltrim(&key, 0, stop)
            .ignore()
            .query_async(&mut self.conn.clone())
            .await
            .map_err(io_err)?;
        Ok(())
    }

    async fn recent(&self, stream: &str, limit: usize) -> io::Result<Vec<Value>> {
        if !valid_stream(stream) {
            return Err(invalid(stream));
        }
        if limit == 0 {
            return Ok(Vec::new());
        }
        let key = format!("{}journal:{stream}", self.prefix);
        let stop = isize::try_from(limit).unwrap_or(isize::MAX) - 1;
        let lines: Vec<String> = redis::cmd("LRANGE")
            .arg(&key)
            .arg(0)
            .arg(stop)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(io_err)?;
        Ok(lines
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect())
    }

    async fn first_time(&self, key: &str, ttl_ms: u64) -> io::Result<bool> {
        let set: Option<String> = redis::cmd("SET")
            .arg(format!("{}seen:{key}", self.prefix))
            .arg(1)
            .arg("NX")
            .arg("PX")
            .arg(ttl_ms.max(1))
            .query_async(&mut self.conn.clone())
            .await
            .map_err(io_err)?;
        Ok(set.is_some())
    }
}
