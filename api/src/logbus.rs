//! Build logs: the [`LogBus`] contract, and the embedded bus ([`FileLogBus`]: one append-only
//! log per deployment, persisted as NDJSON, with live fan-out to followers). The production bus
//! is [`crate::redis_logbus::RedisLogBus`].
//!
//! Contract (both buses; `api/tests/store_contract.rs` checks it on both): records are numbered
//! from 0 without gaps; a [`Follower`] started at any `seq` receives every later record exactly
//! once and in order, whether it joined before the build, during it, or after it ended, and
//! stops after the final record. A follower that falls behind the live channel re-reads what it
//! missed instead of losing it, so a slow client never stalls the others. Following a log that
//! was never created ends at once.

use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use gitdeploy_core::{DeploymentId, LogRecord, LogStream, Outcome};
use tokio::sync::broadcast;

use crate::metrics::ApiMetrics;

/// Live records buffered per deployment before a slow follower must catch up from the log.
const LIVE_BUFFER: usize = 1024;

/// Where build logs go and are followed from.
#[async_trait]
pub trait LogBus: Send + Sync + 'static {
    /// Makes the log exist, so followers of a queued deployment wait instead of ending.
    async fn create(&self, id: &DeploymentId) -> io::Result<()>;
    /// Appends a line; returns its record. One writer per log (the runner holding the build).
    async fn append(
        &self,
        id: &DeploymentId,
        ts: u64,
        stream: LogStream,
        line: String,
    ) -> io::Result<LogRecord>;
    /// Appends the final record; the log takes no more lines.
    async fn finish(
        &self,
        id: &DeploymentId,
        ts: u64,
        line: String,
        outcome: Outcome,
    ) -> io::Result<LogRecord>;
    /// Every record from `since` on, as of now.
    async fn read(&self, id: &DeploymentId, since: u64) -> io::Result<Vec<LogRecord>>;
    /// Follows a log from `since`: backlog first, then live records, ending after the final one.
    async fn follow(&self, id: &DeploymentId, since: u64) -> io::Result<Follower>;
    /// Forgets a finished log (its deployment is deleted).
    async fn remove(&self, id: &DeploymentId) -> io::Result<()>;
}

/// A record as a follower receives it, with its JSON when the bus had it already (a record
/// written live is serialized once, not once per follower).
#[derive(Clone, Debug)]
pub struct LiveRecord {
    /// The record.
    pub record: LogRecord,
    /// Its JSON text, when known.
    pub json: Option<bytes::Bytes>,
}

impl LiveRecord {
    pub(crate) fn plain(record: LogRecord) -> Self {
        LiveRecord { record, json: None }
    }
}

/// The source behind a [`Follower`].
#[async_trait]
pub(crate) trait FollowSource: Send {
    /// The next record, or `None` after the final one.
    async fn next(&mut self) -> io::Result<Option<LiveRecord>>;
}

/// A reader of one deployment's log; see the module docs for its guarantees.
pub struct Follower {
    source: Box<dyn FollowSource>,
    next: u64,
    done: bool,
    metrics: ApiMetrics,
}

impl Follower {
    pub(crate) fn new(source: Box<dyn FollowSource>, since: u64, metrics: ApiMetrics) -> Self {
        metrics.log_followers.inc();
        Follower {
            source,
            next: since,
            done: false,
            metrics,
        }
    }

    /// The next record, or `None` after the final record (or when the log does not exist).
    pub async fn next(&mut self) -> io::Result<Option<LogRecord>> {
        Ok(self.next_live().await?.map(|live| live.record))
    }

    /// Like [`Follower::next`], with the record's JSON when the bus had it.
    pub async fn next_live(&mut self) -> io::Result<Option<LiveRecord>> {
        if self.done {
            return Ok(None);
        }
        let live = self.source.next().await?;
        match &live {
            Some(LiveRecord { record: r, .. }) => {
                debug_assert_eq!(r.seq, self.next, "a follower skipped or repeated a record");
                self.next = r.seq + 1;
                self.done = r.is_final();
            }
            None => self.done = true,
        }
        Ok(live)
    }

    /// The seq the next record will have.
    pub fn position(&self) -> u64 {
        self.next
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.metrics.log_followers.dec();
    }
}

/// A log read back from its archive: the records as they were, then the end.
pub(crate) struct ArchivedLog(pub(crate) VecDeque<LogRecord>);

#[async_trait]
impl FollowSource for ArchivedLog {
    async fn next(&mut self) -> io::Result<Option<LiveRecord>> {
        Ok(self.0.pop_front().map(LiveRecord::plain))
    }
}

/// The embedded log bus.
pub struct FileLogBus {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    open: Mutex<HashMap<DeploymentId, Arc<Mutex<Topic>>>>,
    metrics: ApiMetrics,
}

/// A log that is still being written.
struct Topic {
    records: Vec<LogRecord>,
    file: File,
    live: broadcast::Sender<LiveRecord>,
}

impl FileLogBus {
    /// A bus persisting logs under `dir`.
    pub fn open(dir: &Path, metrics: ApiMetrics) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(FileLogBus {
            inner: Arc::new(Inner {
                dir: dir.to_owned(),
                open: Mutex::new(HashMap::new()),
                metrics,
            }),
        })
    }
}

#[async_trait]
impl LogBus for FileLogBus {
    async fn create(&self, id: &DeploymentId) -> io::Result<()> {
        self.inner.topic(id).map(|_| ())
    }

    async fn append(
        &self,
        id: &DeploymentId,
        ts: u64,
        stream: LogStream,
        line: String,
    ) -> io::Result<LogRecord> {
        self.inner.push(id, ts, stream, line, None)
    }

    async fn finish(
        &self,
        id: &DeploymentId,
        ts: u64,
        line: String,
        outcome: Outcome,
    ) -> io::Result<LogRecord> {
        let record = self
            .inner
            .push(id, ts, LogStream::System, line, Some(outcome))?;
        self.inner
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        Ok(record)
    }

    async fn read(&self, id: &DeploymentId, since: u64) -> io::Result<Vec<LogRecord>> {
        self.inner.read(id, since)
    }

    async fn remove(&self, id: &DeploymentId) -> io::Result<()> {
        self.inner
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        match std::fs::remove_file(self.inner.path(id)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    async fn follow(&self, id: &DeploymentId, since: u64) -> io::Result<Follower> {
        let mut source = FileFollower {
            bus: self.inner.clone(),
            id: id.clone(),
            next: since,
            backlog: VecDeque::new(),
            live: None,
        };
        source.resync()?;
        Ok(Follower::new(
            Box::new(source),
            since,
            self.inner.metrics.clone(),
        ))
    }
}

impl Inner {
    fn path(&self, id: &DeploymentId) -> PathBuf {
        self.dir.join(format!("{id}.ndjson"))
    }

    fn topic(&self, id: &DeploymentId) -> io::Result<Arc<Mutex<Topic>>> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = open.get(id) {
            return Ok(t.clone());
        }
        // Continue an existing file (a build interrupted by a restart) with the next seq.
        let (records, valid_len) = read_file_with_len(&self.path(id))?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path(id))?;
        file.set_len(valid_len)?;
        let topic = Arc::new(Mutex::new(Topic {
            records,
            file,
            live: broadcast::channel(LIVE_BUFFER).0,
        }));
        open.insert(id.clone(), topic.clone());
        Ok(topic)
    }

    fn push(
        &self,
        id: &DeploymentId,
        ts: u64,
        stream: LogStream,
        line: String,
        outcome: Option<Outcome>,
    ) -> io::Result<LogRecord> {
        let topic = self.topic(id)?;
        let mut topic = topic.lock().unwrap_or_else(|p| p.into_inner());
        if topic.records.last().is_some_and(LogRecord::is_final) {
            return Err(io::Error::other("log already finished"));
        }
        let record = LogRecord {
            seq: topic.records.len() as u64,
            ts,
            stream,
            line,
            outcome,
        };
        let mut json = serde_json::to_vec(&record)?;
        json.push(b'\n');
        topic.file.write_all(&json)?;
        topic.records.push(record.clone());
        self.metrics.log_lines.inc();
        json.pop();
        // No receivers is fine: nobody is following.
        let _ = topic.live.send(LiveRecord {
            record: record.clone(),
            json: Some(json.into()),
        });
        Ok(record)
    }

    fn read(&self, id: &DeploymentId, since: u64) -> io::Result<Vec<LogRecord>> {
        let open = self
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned();
        let records = match open {
            Some(topic) => topic
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .records
                .clone(),
            None => read_file(&self.path(id))?,
        };
        Ok(records.into_iter().filter(|r| r.seq >= since).collect())
    }
}

/// Reads a persisted log; a missing file is an empty log. A torn last line (crash mid-write) is
/// dropped.
fn read_file(path: &Path) -> io::Result<Vec<LogRecord>> {
    read_file_with_len(path).map(|(records, _)| records)
}

/// The records of a persisted log and the length in bytes of its valid part.
fn read_file_with_len(path: &Path) -> io::Result<(Vec<LogRecord>, u64)> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(e),
    };
    let mut records = Vec::new();
    let mut valid_len = 0;
    let mut reader = io::BufReader::new(file);
    let mut line = String::new();
    loop {
        line.clear();
        let n = reader.read_line(&mut line)?;
        if n == 0 || !line.ends_with('\n') {
            break;
        }
        match serde_json::from_str::<LogRecord>(&line) {
            Ok(r) if r.seq == records.len() as u64 => records.push(r),
            _ => break,
        }
        valid_len += n as u64;
    }
    Ok((records, valid_len))
}

/// Follows one log of the embedded bus.
struct FileFollower {
    bus: Arc<Inner>,
    id: DeploymentId,
    next: u64,
    backlog: VecDeque<LiveRecord>,
    live: Option<broadcast::Receiver<LiveRecord>>,
}

impl FileFollower {
    /// Subscribes (if the log is open) and then snapshots, under the topic lock, so no record
    /// falls between the two.
    fn resync(&mut self) -> io::Result<()> {
        let open = self
            .bus
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&self.id)
            .cloned();
        match open {
            Some(topic) => {
                let topic = topic.lock().unwrap_or_else(|p| p.into_inner());
                self.live = Some(topic.live.subscribe());
                self.backlog = topic
                    .records
                    .iter()
                    .skip(self.next as usize)
                    .cloned()
                    .map(LiveRecord::plain)
                    .collect();
            }
            None => {
                let records = read_file(&self.bus.path(&self.id))?;
                if records.last().is_some_and(|r| !r.is_final()) {
                    // An unfinished log of an earlier run (its server stopped mid-build): it is
                    // still open, and its final record (the reconciler's) is still to come.
                    self.bus.topic(&self.id)?;
                    return self.resync();
                }
                self.live = None;
                self.backlog = records
                    .into_iter()
                    .skip(self.next as usize)
                    .map(LiveRecord::plain)
                    .collect();
            }
        }
        Ok(())
    }
}

#[async_trait]
impl FollowSource for FileFollower {
    async fn next(&mut self) -> io::Result<Option<LiveRecord>> {
        loop {
            let live = if let Some(r) = self.backlog.pop_front() {
                r
            } else if let Some(live) = self.live.as_mut() {
                match live.recv().await {
                    Ok(r) => r,
                    Err(e) => {
                        if matches!(e, broadcast::error::RecvError::Lagged(_)) {
                            self.bus.metrics.log_lagged.inc();
                        }
                        self.resync()?;
                        continue;
                    }
                }
            } else {
                return Ok(None);
            };
            let seq = live.record.seq;
            if seq < self.next {
                continue; // already delivered from the backlog
            }
            if seq > self.next {
                self.resync()?; // a gap: re-read instead of skipping
                continue;
            }
            self.next = seq + 1;
            return Ok(Some(live));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> DeploymentId {
        DeploymentId::parse("k3f9q2m8x1ab").unwrap()
    }

    /// What only the embedded bus has: a log on disk that a crash cut mid-line, and a restart.
    /// (The contract both buses keep is tested in `api/tests/store_contract.rs`.)
    #[tokio::test]
    async fn torn_lines_are_dropped_and_logs_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let bus = FileLogBus::open(dir.path(), ApiMetrics::unregistered()).unwrap();
        bus.append(&id(), 0, LogStream::System, "one".into())
            .await
            .unwrap();
        drop(bus);
        let path = dir.path().join("k3f9q2m8x1ab.ndjson");
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"seq\":1,\"ts\"").unwrap();
        let bus = FileLogBus::open(dir.path(), ApiMetrics::unregistered()).unwrap();
        let r = bus
            .append(&id(), 0, LogStream::System, "two".into())
            .await
            .unwrap();
        assert_eq!(r.seq, 1);
        let lines: Vec<_> = bus
            .read(&id(), 0)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.line)
            .collect();
        assert_eq!(lines, ["one", "two"]);
        assert_eq!(read_file(&path).unwrap().len(), 2);
    }
}
