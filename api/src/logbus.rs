//! The embedded log bus: one append-only log per deployment, persisted as NDJSON, with live
//! fan-out to followers.
//!
//! Contract (the same one the Redis bus keeps): records are numbered from 0 without gaps; a
//! [`Follower`] started at any `seq` receives every later record exactly once and in order,
//! whether it joined before the build, during it, or after it ended, and stops after the final
//! record. A follower that falls behind the live channel re-reads what it missed instead of
//! losing it.

use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use gitdeploy_core::{DeploymentId, LogRecord, LogStream, Outcome};
use tokio::sync::broadcast;

use crate::metrics::ApiMetrics;

/// Live records buffered per deployment before a slow follower must catch up from the log.
const LIVE_BUFFER: usize = 1024;

/// The in-process log bus.
pub struct LogBus {
    dir: PathBuf,
    open: Mutex<HashMap<DeploymentId, Arc<Mutex<Topic>>>>,
    metrics: ApiMetrics,
}

/// A log that is still being written.
struct Topic {
    records: Vec<LogRecord>,
    file: File,
    live: broadcast::Sender<LogRecord>,
}

impl LogBus {
    /// A bus persisting logs under `dir`.
    pub fn open(dir: &Path, metrics: ApiMetrics) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(LogBus {
            dir: dir.to_owned(),
            open: Mutex::new(HashMap::new()),
            metrics,
        })
    }

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

    /// Makes the log exist so followers of a queued deployment wait instead of ending.
    pub fn create(&self, id: &DeploymentId) -> io::Result<()> {
        self.topic(id).map(|_| ())
    }

    /// Appends a line; returns its record.
    pub fn append(
        &self,
        id: &DeploymentId,
        ts: u64,
        stream: LogStream,
        line: String,
    ) -> io::Result<LogRecord> {
        self.push(id, ts, stream, line, None)
    }

    /// Appends the final record and closes the log; later appends start a new topic and are a bug.
    pub fn finish(
        &self,
        id: &DeploymentId,
        ts: u64,
        line: String,
        outcome: Outcome,
    ) -> io::Result<LogRecord> {
        let record = self.push(id, ts, LogStream::System, line, Some(outcome))?;
        self.open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        Ok(record)
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
        // No receivers is fine: nobody is following.
        let _ = topic.live.send(record.clone());
        Ok(record)
    }

    /// Every record from `since` on, as of now.
    pub fn read(&self, id: &DeploymentId, since: u64) -> io::Result<Vec<LogRecord>> {
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

    /// Follows a log from `since`: backlog first, then live records, ending after the final one.
    pub fn follow(self: &Arc<Self>, id: &DeploymentId, since: u64) -> io::Result<Follower> {
        self.metrics.log_followers.inc();
        let mut follower = Follower {
            bus: self.clone(),
            id: id.clone(),
            next: since,
            backlog: VecDeque::new(),
            live: None,
            done: false,
        };
        follower.resync()?;
        Ok(follower)
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

/// A reader of one deployment's log; see the module docs for its guarantees.
pub struct Follower {
    bus: Arc<LogBus>,
    id: DeploymentId,
    next: u64,
    backlog: VecDeque<LogRecord>,
    live: Option<broadcast::Receiver<LogRecord>>,
    done: bool,
}

impl Follower {
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
                    .collect();
            }
            None => {
                self.live = None;
                self.backlog = read_file(&self.bus.path(&self.id))?
                    .into_iter()
                    .skip(self.next as usize)
                    .collect();
            }
        }
        Ok(())
    }

    /// The next record, or `None` after the final record (or when the log does not exist).
    pub async fn next(&mut self) -> io::Result<Option<LogRecord>> {
        loop {
            if self.done {
                return Ok(None);
            }
            let record = if let Some(r) = self.backlog.pop_front() {
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
            if record.seq < self.next {
                continue; // already delivered from the backlog
            }
            if record.seq > self.next {
                self.resync()?; // a gap: re-read instead of skipping
                continue;
            }
            self.next = record.seq + 1;
            self.done = record.is_final();
            return Ok(Some(record));
        }
    }

    /// The seq the next record will have.
    pub fn position(&self) -> u64 {
        self.next
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.bus.metrics.log_followers.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gitdeploy_core::DeploymentStatus;

    fn id() -> DeploymentId {
        DeploymentId::parse("k3f9q2m8x1ab").unwrap()
    }

    fn ready() -> Outcome {
        Outcome {
            status: DeploymentStatus::Ready,
            error: None,
            exit_code: Some(0),
            duration_ms: None,
            files: None,
            bytes: None,
        }
    }

    async fn drain(mut f: Follower) -> Vec<u64> {
        let mut seqs = Vec::new();
        while let Some(r) = f.next().await.unwrap() {
            seqs.push(r.seq);
        }
        seqs
    }

    #[tokio::test]
    async fn followers_get_every_line_once_wherever_they_join() {
        let dir = tempfile::tempdir().unwrap();
        let bus = Arc::new(LogBus::open(dir.path(), ApiMetrics::unregistered()).unwrap());
        bus.create(&id()).unwrap();
        let early = bus.follow(&id(), 0).unwrap();
        let early = tokio::spawn(drain(early));
        for i in 0..3 {
            bus.append(&id(), 0, LogStream::Stdout, format!("line {i}"))
                .unwrap();
        }
        let middle = tokio::spawn(drain(bus.follow(&id(), 0).unwrap()));
        let resumed = tokio::spawn(drain(bus.follow(&id(), 2).unwrap()));
        // More lines than the live buffer holds: slow followers must catch up from the log.
        for i in 3..(LIVE_BUFFER as u64 + 10) {
            bus.append(&id(), 0, LogStream::Stderr, format!("line {i}"))
                .unwrap();
        }
        let last = bus.finish(&id(), 0, "done".into(), ready()).unwrap();
        let all: Vec<u64> = (0..=last.seq).collect();
        assert_eq!(early.await.unwrap(), all);
        assert_eq!(middle.await.unwrap(), all);
        assert_eq!(resumed.await.unwrap(), all[2..].to_vec());
        assert_eq!(drain(bus.follow(&id(), 0).unwrap()).await, all);

        // After a restart the log is read back from disk.
        let reopened = Arc::new(LogBus::open(dir.path(), ApiMetrics::unregistered()).unwrap());
        assert_eq!(
            drain(reopened.follow(&id(), 5).unwrap()).await,
            all[5..].to_vec()
        );
        assert!(reopened
            .append(&id(), 0, LogStream::Stdout, "late".into())
            .is_err());
    }

    #[tokio::test]
    async fn unknown_log_ends_at_once_and_torn_lines_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let bus = Arc::new(LogBus::open(dir.path(), ApiMetrics::unregistered()).unwrap());
        assert!(bus
            .follow(&id(), 0)
            .unwrap()
            .next()
            .await
            .unwrap()
            .is_none());
        bus.append(&id(), 0, LogStream::System, "one".into())
            .unwrap();
        drop(bus);
        let path = dir.path().join("k3f9q2m8x1ab.ndjson");
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"seq\":1,\"ts\"").unwrap();
        let bus = LogBus::open(dir.path(), ApiMetrics::unregistered()).unwrap();
        let r = bus
            .append(&id(), 0, LogStream::System, "two".into())
            .unwrap();
        assert_eq!(r.seq, 1);
        let lines: Vec<_> = bus
            .read(&id(), 0)
            .unwrap()
            .into_iter()
            .map(|r| r.line)
            .collect();
        assert_eq!(lines, ["one", "two"]);
        assert_eq!(read_file(&path).unwrap().len(), 2);
    }
}
