//! Logs in Redis, shared by every edge: one stream per deployment (`log:<id>`, entry id
//! `<seq+1>-0`, field `r` = the record's JSON) and `log-open:<id>` while the log has no final
//! record. Each edge runs one reader per followed log and fans it out to its followers; a slow
//! follower re-reads from the stream instead of holding the others up.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use gitdeploy_core::{DeploymentId, LogRecord, LogStream, Outcome};
use redis::aio::ConnectionManager;
use redis::streams::{StreamRangeReply, StreamReadReply};
use redis::AsyncCommands;
use tokio::sync::broadcast;

use crate::logbus::{FollowSource, Follower, LiveRecord, LogBus};
use crate::metrics::ApiMetrics;
use crate::redis_conn::{client, io_err, manager, through_outage};

/// Settings of the Redis log bus.
#[derive(Clone, Debug)]
pub struct RedisLogSettings {
    /// Key prefix (the same as the store's).
    pub prefix: String,
    /// How long a finished log stays in Redis (the S3 archive keeps it for good).
    pub ttl: Duration,
    /// Entries a stream keeps at most (approximately); older ones are trimmed.
    pub max_len: usize,
}

struct Shared {
    client: redis::Client,
    conn: ConnectionManager,
    settings: RedisLogSettings,
    metrics: ApiMetrics,
    /// Next seq per log this process writes (one writer per log).
    writers: Mutex<HashMap<DeploymentId, Arc<tokio::sync::Mutex<Option<u64>>>>>,
    /// One reader per followed log, fanned out to every follower on this edge.
    hubs: Mutex<HashMap<DeploymentId, Weak<Hub>>>,
}

/// The production [`LogBus`]: one Redis stream per deployment.
pub struct RedisLogBus {
    shared: Arc<Shared>,
}

/// How long a follower waits for Redis to come back before its stream ends with an error.
const FOLLOWER_PATIENCE: Duration = Duration::from_secs(60);

/// Live records buffered per followed log before a slow follower re-reads from the stream.
const LIVE_BUFFER: usize = 1024;
/// Entries read per XRANGE / XREAD.
const PAGE: usize = 1000;

fn entry_id(seq: u64) -> String {
    format!("{}-0", seq + 1)
}

fn parse_entries(ids: Vec<redis::streams::StreamId>) -> io::Result<Vec<LogRecord>> {
    Ok(parse_live(ids)?.into_iter().map(|l| l.record).collect())
}

/// Stream entries as records, each with the JSON it was stored as (followers send it as is).
fn parse_live(ids: Vec<redis::streams::StreamId>) -> io::Result<Vec<LiveRecord>> {
    ids.into_iter()
        .map(|entry| {
            let json: String = entry
                .get("r")
                .ok_or_else(|| io::Error::other(format!("log entry {} has no record", entry.id)))?;
            let record = serde_json::from_str(&json)?;
            Ok(LiveRecord {
                record,
                json: Some(json.into()),
            })
        })
        .collect()
}

impl RedisLogBus {
    /// Connects to `url`.
    pub async fn connect(
        url: &str,
        settings: RedisLogSettings,
        metrics: ApiMetrics,
    ) -> io::Result<Self> {
        RedisLogBus::from_client(client(url)?, settings, metrics).await
    }

    pub(crate) async fn from_client(
        client: redis::Client,
        settings: RedisLogSettings,
        metrics: ApiMetrics,
    ) -> io::Result<Self> {
        let conn = manager(&client).await?;
        Ok(RedisLogBus {
            shared: Arc::new(Shared {
                client,
                conn,
                settings,
                metrics,
                writers: Mutex::new(HashMap::new()),
                hubs: Mutex::new(HashMap::new()),
            }),
        })
    }
}

impl Shared {
    fn key(&self, kind: &str, id: &DeploymentId) -> String {
        format!("{}{kind}:{id}", self.settings.prefix)
    }

    /// Records with seq ≥ `since`, as of now.
    async fn range(&self, id: &DeploymentId, since: u64) -> io::Result<Vec<LogRecord>> {
        Ok(self
            .range_live(id, since)
            .await?
            .into_iter()
            .map(|l| l.record)
            .collect())
    }

    /// Records with seq ≥ `since`, as of now, with their JSON.
    async fn range_live(&self, id: &DeploymentId, since: u64) -> io::Result<Vec<LiveRecord>> {
        let key = self.key("log", id);
        let mut out = Vec::new();
        let mut start = entry_id(since);
        loop {
            let page: StreamRangeReply = self
                .conn
                .clone()
                .xrange_count(&key, &start, "+", PAGE)
                .await
                .map_err(io_err)?;
            let full = page.ids.len() == PAGE;
            let records = parse_live(page.ids)?;
            let Some(last) = records.last() else { break };
            start = entry_id(last.record.seq + 1);
            out.extend(records);
            if !full {
                break;
            }
        }
        Ok(out)
    }

    async fn exists(&self, id: &DeploymentId) -> io::Result<bool> {
        let n: u64 = redis::cmd("EXISTS")
            .arg(self.key("log", id))
            .arg(self.key("log-open", id))
            .query_async(&mut self.conn.clone())
            .await
            .map_err(io_err)?;
        Ok(n > 0)
    }

    async fn push(
        &self,
        id: &DeploymentId,
        ts: u64,
        stream: LogStream,
        line: String,
        outcome: Option<Outcome>,
    ) -> io::Result<LogRecord> {
        let writer = self
            .writers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id.clone())
            .or_default()
            .clone();
        let mut next = writer.lock().await;
        let key = self.key("log", id);
        let seq = match *next {
            Some(seq) => seq,
            None => {
                // First write from this process: continue after what the stream holds.
                let last: StreamRangeReply = self
                    .conn
                    .clone()
                    .xrevrange_count(&key, "+", "-", 1)
                    .await
                    .map_err(io_err)?;
                match parse_entries(last.ids)?.pop() {
                    Some(r) if r.is_final() => {
                        return Err(io::Error::other("log already finished"));
                    }
                    Some(r) => r.seq + 1,
                    None => 0,
                }
            }
        };
        let record = LogRecord {
            seq,
            ts,
            stream,
            line,
            outcome,
        };
        let mut xadd = redis::cmd("XADD");
        xadd.arg(&key)
            .arg("MAXLEN")
            .arg("~")
            .arg(self.settings.max_len)
            .arg(entry_id(seq))
            .arg("r")
            .arg(serde_json::to_string(&record)?);
        let added: Result<String, _> = through_outage("a log line", || {
            let mut conn = self.conn.clone();
            let xadd = &xadd;
            async move { xadd.query_async(&mut conn).await }
        })
        .await;
        match added {
            Ok(_) => {}
            // The entry id is the record's own: an attempt whose answer was lost in the outage
            // already wrote it.
            Err(e)
                if e.to_string()
                    .contains("equal or smaller than the target stream top") => {}
            Err(e) => return Err(io_err(e)),
        }
        *next = Some(seq + 1);
        self.metrics.log_lines.inc();
        Ok(record)
    }

    /// The reader of `id` on this edge, started at `since` when there is none.
    fn hub(self: &Arc<Self>, id: &DeploymentId, since: u64) -> Arc<Hub> {
        let mut hubs = self.hubs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(hub) = hubs.get(id).and_then(Weak::upgrade) {
            return hub;
        }
        let (tx, _) = broadcast::channel(LIVE_BUFFER);
        let hub = Arc::new(Hub { tx: tx.clone() });
        hubs.insert(id.clone(), Arc::downgrade(&hub));
        tokio::spawn(read_into_hub(self.clone(), id.clone(), since, tx));
        hub
    }
}

/// One reader's fan-out channel.
struct Hub {
    tx: broadcast::Sender<LiveRecord>,
}

/// Blocks on the stream and broadcasts each record until the final one, until nobody follows,
/// or until Redis fails (followers then re-read and start a new reader).
async fn read_into_hub(
    shared: Arc<Shared>,
    id: DeploymentId,
    since: u64,
    tx: broadcast::Sender<LiveRecord>,
) {
    let key = shared.key("log", &id);
    let result: io::Result<()> = async {
        let mut conn = shared
            .client
            .get_multiplexed_async_connection()
            .await
            .map_err(io_err)?;
        conn.set_response_timeout(Duration::from_secs(15));
        // Entries after this id: seq ≥ since.
        let mut after = format!("{since}-0");
        loop {
            let reply: Option<StreamReadReply> = redis::cmd("XREAD")
                .arg("COUNT")
                .arg(PAGE)
                .arg("BLOCK")
                .arg(5000)
                .arg("STREAMS")
                .arg(&key)
                .arg(&after)
                .query_async(&mut conn)
                .await
                .map_err(io_err)?;
            for stream in reply.map(|r| r.keys).unwrap_or_default() {
                for live in parse_live(stream.ids)? {
                    after = entry_id(live.record.seq);
                    let last = live.record.is_final();
                    let _ = tx.send(live);
                    if last {
                        return Ok(());
                    }
                }
            }
            if tx.receiver_count() == 0 {
                return Ok(());
            }
        }
    }
    .await;
    if let Err(e) = result {
        tracing::warn!(%id, "log reader stopped: {e}");
    }
    let mut hubs = shared.hubs.lock().unwrap_or_else(|p| p.into_inner());
    if hubs
        .get(&id)
        .is_some_and(|h| h.upgrade().is_none_or(|h| h.tx.same_channel(&tx)))
    {
        hubs.remove(&id);
    }
}

struct RedisFollower {
    shared: Arc<Shared>,
    id: DeploymentId,
    next: u64,
    backlog: VecDeque<LiveRecord>,
    live: Option<(Arc<Hub>, broadcast::Receiver<LiveRecord>)>,
}

impl RedisFollower {
    /// Re-reads the stream from the next record on. A follower lives as long as the build:
    /// Redis away for a moment (a restart, a failover) is waited out, for at most
    /// [`FOLLOWER_PATIENCE`], rather than ending the stream.
    async fn refill(&mut self) -> io::Result<()> {
        let deadline = tokio::time::Instant::now() + FOLLOWER_PATIENCE;
        let mut backoff = Duration::from_millis(20);
        loop {
            match self.shared.range_live(&self.id, self.next).await {
                Ok(records) => {
                    self.backlog = records.into();
                    return Ok(());
                }
                Err(e)
                    if e.kind() == io::ErrorKind::NotConnected
                        && tokio::time::Instant::now() < deadline =>
                {
                    tracing::debug!(id = %self.id, "log read waits for Redis: {e}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
                Err(e) => return Err(e),
            }
        }
    }
}

#[async_trait]
impl FollowSource for RedisFollower {
    async fn next(&mut self) -> io::Result<Option<LiveRecord>> {
        let mut reader_restarts = 0;
        loop {
            if let Some(live) = self.backlog.pop_front() {
                let seq = live.record.seq;
                if seq < self.next {
                    continue;
                }
                if seq > self.next {
                    self.refill().await?; // a gap: re-read rather than skip
                    if self
                        .backlog
                        .front()
                        .is_some_and(|r| r.record.seq > self.next)
                    {
                        return Err(io::Error::other(format!(
                            "log records from {} on are no longer in Redis",
                            self.next
                        )));
                    }
                    continue;
                }
                self.next = seq + 1;
                return Ok(Some(live));
            }
            let Some((_, live)) = self.live.as_mut() else {
                // A finished log needs no reader: what is stored is all there is.
                self.refill().await?;
                if self.backlog.back().is_some_and(|l| l.record.is_final()) {
                    continue;
                }
                // Subscribe first, then read what is there: nothing falls between the two.
                let hub = self.shared.hub(&self.id, self.next);
                let rx = hub.tx.subscribe();
                self.live = Some((hub, rx));
                self.refill().await?;
                if self.backlog.is_empty() && !self.shared.exists(&self.id).await? {
                    return Ok(None);
                }
                continue;
            };
            match live.recv().await {
                Ok(record) => self.backlog.push_back(record),
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    self.shared.metrics.log_lagged.inc();
                    self.refill().await?;
                }
                Err(broadcast::error::RecvError::Closed) => {
                    // The reader ended (final record, or a Redis error): read what it saw, and
                    // start a new reader if the log goes on.
                    self.live = None;
                    self.refill().await?;
                    reader_restarts += 1;
                    if self.backlog.is_empty() && reader_restarts > 3 {
                        return Err(io::Error::other("cannot follow the log in Redis"));
                    }
                }
            }
        }
    }
}

#[async_trait]
impl LogBus for RedisLogBus {
    async fn create(&self, id: &DeploymentId) -> io::Result<()> {
        let _: () = redis::cmd("SET")
            .arg(self.shared.key("log-open", id))
            .arg(1)
            .arg("EX")
            .arg(7 * 24 * 3600)
            .query_async(&mut self.shared.conn.clone())
            .await
            .map_err(io_err)?;
        Ok(())
    }

    async fn append(
        &self,
        id: &DeploymentId,
        ts: u64,
        stream: LogStream,
        line: String,
    ) -> io::Result<LogRecord> {
        self.shared.push(id, ts, stream, line, None).await
    }

    async fn finish(
        &self,
        id: &DeploymentId,
        ts: u64,
        line: String,
        outcome: Outcome,
    ) -> io::Result<LogRecord> {
        let record = self
            .shared
            .push(id, ts, LogStream::System, line, Some(outcome))
            .await?;
        let _: () = redis::pipe()
            .expire(
                self.shared.key("log", id),
                self.shared.settings.ttl.as_secs().max(1) as i64,
            )
            .ignore()
            .del(self.shared.key("log-open", id))
            .ignore()
            .query_async(&mut self.shared.conn.clone())
            .await
            .map_err(io_err)?;
        self.shared
            .writers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        Ok(record)
    }

    async fn read(&self, id: &DeploymentId, since: u64) -> io::Result<Vec<LogRecord>> {
        self.shared.range(id, since).await
    }

    async fn remove(&self, id: &DeploymentId) -> io::Result<()> {
        let _: () = redis::pipe()
            .del(self.shared.key("log", id))
            .ignore()
            .del(self.shared.key("log-open", id))
            .ignore()
            .query_async(&mut self.shared.conn.clone())
            .await
            .map_err(io_err)?;
        Ok(())
    }

    async fn follow(&self, id: &DeploymentId, since: u64) -> io::Result<Follower> {
        let source = RedisFollower {
            shared: self.shared.clone(),
            id: id.clone(),
            next: since,
            backlog: VecDeque::new(),
            live: None,
        };
        Ok(Follower::new(
            Box::new(source),
            since,
            self.shared.metrics.clone(),
        ))
    }
}
