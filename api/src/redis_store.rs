//! State and logs in Redis, shared by every edge of a platform.
//!
//! Keys (all under a configurable prefix, `gitdeploy:` by default):
//!
//! ```text
//! d:<id>                    hash {v: version, j: deployment JSON}
//! p:<name>                  hash {v: version, j: project JSON, a: production deployment}
//! deployments               sorted set of ids by creation time
//! project-deployments:<p>   the same, per project
//! projects                  set of project names
//! active                    set of ids still queued or building
//! runner:<instance>         a runner's heartbeat (expires); `task-<id>` for an ECS task
//! job-secrets:<id>          what the ECS runner withheld from the ECS API, taken once
//! task:<id>                 hash {acl, claimed, ended}: an ECS task's report (task_access)
//! log:<id>                  stream: one entry per log record, entry id <seq+1>-0, field r = JSON
//! log-open:<id>             the log exists but has no final record yet
//! aliases                   pub/sub channel: names of projects whose production moved
//! ```
//!
//! Commits run as one Lua script: every version is checked before anything is written, so a
//! status change and the alias move it causes land together or not at all.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use gitdeploy_core::{DeploymentId, LogRecord, LogStream, Outcome};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::streams::{StreamRangeReply, StreamReadReply};
use redis::{AsyncCommands, Script};
use tokio::sync::broadcast;

use crate::logbus::{FollowSource, Follower, LiveRecord, LogBus};
use crate::metrics::ApiMetrics;
use crate::projects::Project;
use crate::store::{AliasChange, Deployment, Store, Versioned, Write};

/// A Redis error as I/O: an outage (see [`is_transient`]) is `NotConnected`, which the API
/// answers 503 rather than 500.
pub(crate) fn io_err(e: redis::RedisError) -> io::Error {
    let kind = if is_transient(&e) {
        io::ErrorKind::NotConnected
    } else {
        io::ErrorKind::Other
    };
    io::Error::new(kind, format!("redis: {e}"))
}

/// How long a write waits for Redis to come back (a restart, a failover) before it fails.
const OUTAGE: Duration = Duration::from_secs(120);

/// Whether `e` says Redis is away for a moment (connection refused or dropped, a timeout, still
/// loading its data after a restart) rather than that it refused the command.
fn is_transient(e: &redis::RedisError) -> bool {
    use redis::RetryMethod;
    e.is_connection_refusal()
        || e.is_connection_dropped()
        || e.is_timeout()
        || matches!(
            e.retry_method(),
            RetryMethod::Reconnect | RetryMethod::RetryImmediately | RetryMethod::WaitAndRetry
        )
}

/// Runs a write until Redis answers it, waiting out an outage of up to [`OUTAGE`] with backoff;
/// an error that is not an outage is returned at once. Each attempt must be safe to repeat.
pub(crate) async fn through_outage<T, F, Fut>(
    what: &str,
    mut attempt: F,
) -> Result<T, redis::RedisError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, redis::RedisError>>,
{
    let deadline = tokio::time::Instant::now() + OUTAGE;
    let mut backoff = Duration::from_millis(20);
    let mut warned = false;
    loop {
        match attempt().await {
            Err(e) if is_transient(&e) && tokio::time::Instant::now() < deadline => {
                if !warned {
                    tracing::warn!("redis unavailable for {what}, retrying: {e}");
                    warned = true;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
            result => return result,
        }
    }
}

/// Connects with a response timeout suited to ordinary commands.
pub(crate) async fn manager(client: &redis::Client) -> io::Result<ConnectionManager> {
    let config = ConnectionManagerConfig::new()
        .set_response_timeout(Some(Duration::from_secs(5)))
        .set_connection_timeout(Some(Duration::from_secs(5)));
    client
        .get_connection_manager_with_config(config)
        .await
        .map_err(io_err)
}

fn client(url: &str) -> io::Result<redis::Client> {
    redis::Client::open(url).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid Redis URL: {e}"),
        )
    })
}

const COMMIT: &str = r#"
local prefix = ARGV[1]
for i = 1, #KEYS do
  local b = 1 + (i - 1) * 7
  local v = redis.call('HGET', KEYS[i], 'v')
  local expect = ARGV[b + 2]
  if expect == '0' then
    if v then return 0 end
  elseif v ~= expect then
    return 0
  end
end
local moved = 1
for i = 1, #KEYS do
  local b = 1 + (i - 1) * 7
  local kind, expect, json, name = ARGV[b + 1], ARGV[b + 2], ARGV[b + 3], ARGV[b + 4]
  local score, extra, flag = ARGV[b + 5], ARGV[b + 6], ARGV[b + 7]
  redis.call('HSET', KEYS[i], 'v', tostring(tonumber(expect) + 1), 'j', json)
  if kind == 'd' then
    redis.call('ZADD', prefix .. 'deployments', score, name)
    if extra ~= '' then
      redis.call('ZADD', prefix .. 'project-deployments:' .. extra, score, name)
    end
    if flag == '1' then
      redis.call('SADD', prefix .. 'active', name)
    else
      redis.call('SREM', prefix .. 'active', name)
    end
  else
    redis.call('SADD', prefix .. 'projects', name)
    local before = redis.call('HGET', KEYS[i], 'a') or ''
    redis.call('HSET', KEYS[i], 'a', extra)
    if before ~= extra or expect == '0' then
      redis.call('PUBLISH', prefix .. 'aliases', name)
      moved = 2
    end
  end
end
return moved
"#;

const DELETE: &str = r#"
local prefix, expect, id, project = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if redis.call('HGET', KEYS[1], 'v') ~= expect then return 0 end
redis.call('DEL', KEYS[1])
redis.call('ZREM', prefix .. 'deployments', id)
if project ~= '' then redis.call('ZREM', prefix .. 'project-deployments:' .. project, id) end
redis.call('SREM', prefix .. 'active', id)
redis.call('PUBLISH', prefix .. 'aliases', '-' .. id)
return 1
"#;

const DELETE_PROJECT: &str = r#"
local prefix, expect, name = ARGV[1], ARGV[2], ARGV[3]
if redis.call('HGET', KEYS[1], 'v') ~= expect then return 0 end
redis.call('DEL', KEYS[1])
redis.call('SREM', prefix .. 'projects', name)
redis.call('PUBLISH', prefix .. 'aliases', name)
return 1
"#;

/// The production [`Store`].
pub struct RedisStore {
    conn: ConnectionManager,
    prefix: String,
    aliases: broadcast::Sender<AliasChange>,
    generation: Arc<std::sync::atomic::AtomicU64>,
    commit: Script,
    delete: Script,
    delete_project: Script,
}

impl RedisStore {
    /// Connects to `url` (`redis://[:password@]host:port[/db]`) and starts listening for alias
    /// changes. Keys are put under `prefix`.
    pub async fn connect(url: &str, prefix: &str) -> io::Result<Self> {
        let client = client(url)?;
        let conn = manager(&client).await?;
        let (aliases, _) = broadcast::channel(256);
        let generation = Arc::new(std::sync::atomic::AtomicU64::new(0));
        tokio::spawn(listen_for_aliases(
            client,
            format!("{prefix}aliases"),
            aliases.downgrade(),
            generation.clone(),
        ));
        Ok(RedisStore {
            conn,
            prefix: prefix.to_owned(),
            aliases,
            generation,
            commit: Script::new(COMMIT),
            delete: Script::new(DELETE),
            delete_project: Script::new(DELETE_PROJECT),
        })
    }

    pub(crate) fn key(&self, kind: &str, name: &str) -> String {
        format!("{}{kind}:{name}", self.prefix)
    }

    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    pub(crate) fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }

    async fn load<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> io::Result<Option<Versioned<T>>> {
        let (v, j): (Option<u64>, Option<String>) = redis::cmd("HMGET")
            .arg(key)
            .arg("v")
            .arg("j")
            .query_async(&mut self.conn.clone())
            .await
            .map_err(io_err)?;
        match (v, j) {
            (Some(version), Some(json)) => Ok(Some(Versioned {
                version,
                value: serde_json::from_str(&json)?,
            })),
            _ => Ok(None),
        }
    }

    /// The JSON of several records in one round trip; records that vanished are skipped.
    async fn load_many<T: serde::de::DeserializeOwned>(
        &self,
        keys: &[String],
    ) -> io::Result<Vec<T>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for key in keys {
            pipe.hget(key, "j");
        }
        let found: Vec<Option<String>> = pipe
            .query_async(&mut self.conn.clone())
            .await
            .map_err(io_err)?;
        found
            .into_iter()
            .flatten()
            .map(|json| serde_json::from_str(&json).map_err(io::Error::from))
            .collect()
    }
}

/// Forwards alias changes published by any edge; after every (re)connection it sends `"*"`,
/// since changes may have been missed while disconnected. Ends with the store.
async fn listen_for_aliases(
    client: redis::Client,
    channel: String,
    tx: broadcast::WeakSender<AliasChange>,
    generation: Arc<std::sync::atomic::AtomicU64>,
) {
    let bump = || generation.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let mut backoff = Duration::from_millis(100);
    loop {
        match client.get_async_pubsub().await {
            Ok(mut pubsub) => match pubsub.subscribe(&channel).await {
                Ok(()) => {
                    backoff = Duration::from_millis(100);
                    let Some(sender) = tx.upgrade() else { return };
                    bump();
                    let _ = sender.send(AliasChange::MaybeMissed);
                    drop(sender);
                    let mut messages = pubsub.on_message();
                    while let Some(msg) = messages.next().await {
                        let Some(sender) = tx.upgrade() else { return };
                        match msg
                            .get_payload::<String>()
                            .ok()
                            .as_deref()
                            .and_then(AliasChange::from_wire)
                        {
                            Some(change) => {
                                bump();
                                let _ = sender.send(change);
                            }
                            None => {
                                tracing::warn!("an alias announcement of unknown form was ignored")
                            }
                        }
                    }
                    tracing::warn!("lost the Redis alias subscription; reconnecting");
                }
                Err(e) => tracing::warn!("cannot subscribe to alias changes: {e}"),
            },
            Err(e) => tracing::warn!("cannot connect to Redis for alias changes: {e}"),
        }
        if tx.upgrade().is_none() {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

#[async_trait]
impl Store for RedisStore {
    async fn deployment(&self, id: &DeploymentId) -> io::Result<Option<Versioned<Deployment>>> {
        self.load(&self.key("d", id.as_str())).await
    }

    async fn deployments(
        &self,
        project: Option<&str>,
        limit: usize,
    ) -> io::Result<Vec<Deployment>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let index = match project {
            Some(p) => format!("{}project-deployments:{p}", self.prefix),
            None => format!("{}deployments", self.prefix),
        };
        let stop = isize::try_from(limit).map_or(-1, |l| l - 1);
        let ids: Vec<String> = self
            .conn
            .clone()
            .zrevrange(&index, 0, stop)
            .await
            .map_err(io_err)?;
        let keys: Vec<String> = ids.iter().map(|id| self.key("d", id)).collect();
        self.load_many(&keys).await
    }

    async fn active(&self) -> io::Result<Vec<Deployment>> {
        let ids: Vec<String> = self
            .conn
            .clone()
            .smembers(format!("{}active", self.prefix))
            .await
            .map_err(io_err)?;
        let keys: Vec<String> = ids.iter().map(|id| self.key("d", id)).collect();
        self.load_many(&keys).await
    }

    async fn project(&self, name: &str) -> io::Result<Option<Versioned<Project>>> {
        self.load(&self.key("p", name)).await
    }

    async fn projects(&self) -> io::Result<Vec<Project>> {
        let mut names: Vec<String> = self
            .conn
            .clone()
            .smembers(format!("{}projects", self.prefix))
            .await
            .map_err(io_err)?;
        names.sort();
        let keys: Vec<String> = names.iter().map(|n| self.key("p", n)).collect();
        self.load_many(&keys).await
    }

    async fn commit(&self, writes: Vec<Write>) -> io::Result<bool> {
        let mut invocation = self.commit.prepare_invoke();
        invocation.arg(&self.prefix);
        for w in &writes {
            match w {
                Write::Deployment { expect, value } => {
                    invocation
                        .key(self.key("d", value.id.as_str()))
                        .arg("d")
                        .arg(expect)
                        .arg(serde_json::to_string(value)?)
                        .arg(value.id.as_str())
                        .arg(value.created_unix_ms)
                        .arg(value.project.as_deref().unwrap_or(""))
                        .arg(if value.status.is_terminal() { "0" } else { "1" });
                }
                Write::Project { expect, value } => {
                    invocation
                        .key(self.key("p", &value.name))
                        .arg("p")
                        .arg(expect)
                        .arg(serde_json::to_string(value)?)
                        .arg(&value.name)
                        .arg(value.created_unix_ms)
                        .arg(value.production.as_ref().map_or("", |d| d.as_str()))
                        .arg("");
                }
            }
        }
        let applied: i64 = through_outage("a commit", || {
            let mut conn = self.conn.clone();
            let invocation = &invocation;
            async move { invocation.invoke_async(&mut conn).await }
        })
        .await
        .map_err(io_err)?;
        if applied == 2 {
            // This process moved an alias: its caches must not wait for the announcement.
            self.generation
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        Ok(applied >= 1)
    }

    async fn delete_deployment(&self, id: &DeploymentId, expect: u64) -> io::Result<bool> {
        let Some(current) = self.deployment(id).await? else {
            return Ok(false);
        };
        let deleted: i64 = self
            .delete
            .key(self.key("d", id.as_str()))
            .arg(&self.prefix)
            .arg(expect)
            .arg(id.as_str())
            .arg(current.value.project.as_deref().unwrap_or(""))
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(io_err)?;
        Ok(deleted == 1)
    }

    async fn delete_project(&self, name: &str, expect: u64) -> io::Result<bool> {
        let deleted: i64 = self
            .delete_project
            .key(self.key("p", name))
            .arg(&self.prefix)
            .arg(expect)
            .arg(name)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(io_err)?;
        if deleted == 1 {
            self.generation
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        Ok(deleted == 1)
    }

    async fn heartbeat(&self, instance: &str, ttl_ms: u64) -> io::Result<()> {
        let _: () = redis::cmd("SET")
            .arg(self.key("runner", instance))
            .arg(crate::now_ms())
            .arg("PX")
            .arg(ttl_ms.max(1))
            .query_async(&mut self.conn.clone())
            .await
            .map_err(io_err)?;
        Ok(())
    }

    async fn runner_alive(&self, instance: &str) -> io::Result<bool> {
        self.conn
            .clone()
            .exists(self.key("runner", instance))
            .await
            .map_err(io_err)
    }

    async fn task_report(
        &self,
        id: &DeploymentId,
    ) -> io::Result<Option<crate::task_access::TaskReport>> {
        self.read_task_report(id).await
    }

    async fn forget_task(&self, id: &DeploymentId) -> io::Result<()> {
        self.forget_task_access(id).await
    }

    fn alias_changes(&self) -> broadcast::Receiver<AliasChange> {
        self.aliases.subscribe()
    }

    fn alias_generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::SeqCst)
    }
}

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
    async fn refill(&mut self) -> io::Result<()> {
        self.backlog = self.shared.range_live(&self.id, self.next).await?.into();
        Ok(())
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
