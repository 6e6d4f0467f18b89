//! The writer thread: takes records off the bounded queue the request path fills, appends them
//! to the file (or stderr) and hands them to the S3 drain. A file that logrotate moved away is
//! reopened at its path within a second.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::{Duration, Instant};

use prometheus::IntCounter;

use super::drain::Batcher;

/// What the request path sends the writer.
pub enum Message {
    /// A record that ended at `unix_ms`, as a JSON line.
    Record {
        /// When the request ended.
        unix_ms: u64,
        /// The line, newline included.
        line: Vec<u8>,
    },
    /// Write what is left, seal the last batch and stop.
    Close,
}

/// Where lines are written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    /// The process's standard error.
    Stderr,
    /// A file, appended to (created with mode 0640).
    File(PathBuf),
}

/// How often the file is checked for having been moved away.
const REOPEN_CHECK: Duration = Duration::from_secs(1);

/// An open destination.
pub struct Output {
    destination: Destination,
    out: BufWriter<Box<dyn Write + Send>>,
    /// The file's inode, to notice rotation.
    inode: Option<u64>,
    checked: Instant,
    failing: bool,
}

impl Output {
    /// Opens `destination`; the error names the file.
    pub fn open(destination: Destination) -> Result<Self, String> {
        let (out, inode): (Box<dyn Write + Send>, _) = match &destination {
            Destination::Stderr => (Box::new(std::io::stderr()), None),
            Destination::File(path) => {
                let file = open_append(path)
                    .map_err(|e| format!("cannot open the access log {}: {e}", path.display()))?;
                let inode = file.metadata().ok().map(|m| m.ino());
                (Box::new(file), inode)
            }
        };
        Ok(Output {
            destination,
            out: BufWriter::with_capacity(64 << 10, out),
            inode,
            checked: Instant::now(),
            failing: false,
        })
    }

    fn write(&mut self, line: &[u8]) -> bool {
        match self.out.write_all(line) {
            Ok(()) => {
                self.failing = false;
                true
            }
            Err(e) => {
                if !self.failing {
                    tracing::error!("cannot write the access log: {e}");
                }
                self.failing = true;
                false
            }
        }
    }

    fn flush(&mut self) {
        if let Err(e) = self.out.flush() {
            if !self.failing {
                tracing::error!("cannot write the access log: {e}");
            }
            self.failing = true;
        }
    }

    /// Reopens the file when the inode at its path is no longer ours (moved or deleted).
    fn reopen_if_rotated(&mut self) {
        let Destination::File(path) = self.destination.clone() else {
            return;
        };
        if self.checked.elapsed() < REOPEN_CHECK {
            return;
        }
        self.checked = Instant::now();
        let current = std::fs::metadata(&path).ok().map(|m| m.ino());
        if current.is_some() && current == self.inode {
            return;
        }
        self.flush();
        match open_append(&path) {
            Ok(file) => {
                self.inode = file.metadata().ok().map(|m| m.ino());
                self.out = BufWriter::with_capacity(64 << 10, Box::new(file));
            }
            Err(e) => tracing::error!("cannot reopen the access log {}: {e}", path.display()),
        }
    }
}

fn open_append(path: &std::path::Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
}

/// Counters of the writer, in records.
pub struct WriterCounters {
    /// Records written to the file or stderr.
    pub written: IntCounter,
    /// Records that could not be written.
    pub dropped: IntCounter,
}

/// How often the writer takes what was queued. The writer never sleeps on the queue itself:
/// a receiver parked there is woken by every record (a futex call and a context switch per
/// request, and one `write` per request when it then drains a single record); polling takes a
/// tick's records in one pass and writes them in one flush. The queue holds 16,384 records,
/// enough for over 300,000 requests a second at this tick.
const TICK: Duration = Duration::from_millis(50);

/// Records taken between two flushes at most.
const BURST: usize = 65_536;

/// Runs until [`Message::Close`] or until every sender is gone.
pub fn run(
    queue: Receiver<Message>,
    mut output: Option<Output>,
    mut drain: Option<Batcher>,
    counters: WriterCounters,
) {
    loop {
        std::thread::sleep(TICK);
        // What is queued (a bounded run, so that an edge busier than its writer still flushes).
        for _ in 0..BURST {
            match queue.try_recv() {
                Ok(Message::Record { unix_ms, line }) => {
                    if let Some(out) = output.as_mut() {
                        if out.write(&line) {
                            counters.written.inc();
                        } else {
                            counters.dropped.inc();
                        }
                    }
                    if let Some(drain) = drain.as_mut() {
                        drain.push(unix_ms, &line);
                    }
                }
                Ok(Message::Close) | Err(TryRecvError::Disconnected) => {
                    if let Some(out) = output.as_mut() {
                        out.flush();
                    }
                    if let Some(drain) = drain.as_mut() {
                        drain.seal();
                    }
                    return;
                }
                Err(TryRecvError::Empty) => break,
            }
        }
        if let Some(out) = output.as_mut() {
            out.flush();
            out.reopen_if_rotated();
        }
        if let Some(drain) = drain.as_mut() {
            drain.tick();
        }
    }
}
