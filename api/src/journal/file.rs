//! The embedded journal: each stream in memory and in `<dir>/<stream>.ndjson`, appended to and
//! rewritten with the newest entries once it holds twice what is kept; seen keys in
//! `<dir>/seen.ndjson` with their expiry, so a replay is still refused after a restart.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use async_trait::async_trait;
use serde_json::Value;

use super::{invalid, valid_stream, Journal};

/// The embedded [`Journal`].
pub struct FileJournal {
    dir: PathBuf,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Streams read so far: their entries, oldest first, and the lines their file holds.
    streams: HashMap<String, (VecDeque<Value>, usize)>,
    /// Seen keys and until when (Unix ms); the lines `seen.ndjson` holds.
    seen: HashMap<String, u64>,
    seen_lines: usize,
}

impl FileJournal {
    /// Opens (creating) the journal in `dir`.
    pub fn open(dir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut state = State::default();
        let now = crate::now_ms();
        for line in read_lines(&dir.join("seen.ndjson"))? {
            state.seen_lines += 1;
            if let (Some(key), Some(until)) = (line["key"].as_str(), line["until"].as_u64()) {
                if until > now {
                    state.seen.insert(key.to_owned(), until);
                }
            }
        }
        Ok(FileJournal {
            dir: dir.to_owned(),
            state: Mutex::new(state),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn path(&self, stream: &str) -> PathBuf {
        self.dir.join(format!("{stream}.ndjson"))
    }
}

/// The JSON lines of a file (none when it does not exist); a torn last line is skipped.
fn read_lines(path: &Path) -> io::Result<Vec<Value>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(bytes
            .split(|b| *b == b'\n')
            .filter_map(|line| serde_json::from_slice(line).ok())
            .collect()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

fn append_line(path: &Path, value: &Value) -> io::Result<()> {
    let mut line = serde_json::to_vec(value)?;
    line.push(b'\n');
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?
        .write_all(&line)
}

/// Replaces `path` with `values`, one per line, through a temporary file and a rename.
fn rewrite<'a>(path: &Path, values: impl Iterator<Item = &'a Value>) -> io::Result<usize> {
    let mut body = Vec::new();
    let mut n = 0;
    for v in values {
        serde_json::to_writer(&mut body, v)?;
        body.push(b'\n');
        n += 1;
    }
    let tmp = path.with_extension("ndjson.tmp");
    std::fs::write(&tmp, body)?;
    std::fs::rename(tmp, path)?;
    Ok(n)
}

#[async_trait]
impl Journal for FileJournal {
    async fn append(&self, stream: &str, entry: &Value) -> io::Result<()> {
        let keep = super::keep(stream);
        if !valid_stream(stream) {
            return Err(invalid(stream));
        }
        let path = self.path(stream);
        let mut state = self.state();
        if !state.streams.contains_key(stream) {
            let lines = read_lines(&path)?;
            let n = lines.len();
            state.streams.insert(stream.to_owned(), (lines.into(), n));
        }
        let Some((entries, lines)) = state.streams.get_mut(stream) else {
            return Ok(());
        };
        entries.push_back(entry.clone());
        while entries.len() > keep {
            entries.pop_front();
        }
        if *lines + 1 > 2 * keep {
            *lines = rewrite(&path, entries.iter())?;
        } else {
            append_line(&path, entry)?;
            *lines += 1;
        }
        Ok(())
    }

    async fn recent(&self, stream: &str, limit: usize) -> io::Result<Vec<Value>> {
        if !valid_stream(stream) {
            return Err(invalid(stream));
        }
        let state = self.state();
        if let Some((entries, _)) = state.streams.get(stream) {
            return Ok(entries.iter().rev().take(limit).cloned().collect());
        }
        drop(state);
        let lines = read_lines(&self.path(stream))?;
        let keep = super::keep(stream);
        Ok(lines.into_iter().rev().take(limit.min(keep)).collect())
    }

    async fn first_time(&self, key: &str, ttl_ms: u64) -> io::Result<bool> {
        let now = crate::now_ms();
        let path = self.dir.join("seen.ndjson");
        let mut state = self.state();
        if state.seen.get(key).is_some_and(|until| *until > now) {
            return Ok(false);
        }
        let until = now.saturating_add(ttl_ms);
        state.seen.insert(key.to_owned(), until);
        if state.seen_lines > 2 * state.seen.len() + 1_000 {
            state.seen.retain(|_, until| *until > now);
            let lines: Vec<Value> = state
                .seen
                .iter()
                .map(|(k, u)| serde_json::json!({"key": k, "until": u}))
                .collect();
            state.seen_lines = rewrite(&path, lines.iter())?;
        } else {
            append_line(&path, &serde_json::json!({"key": key, "until": until}))?;
            state.seen_lines += 1;
        }
        Ok(true)
    }
}
