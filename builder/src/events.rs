//! The builder's report channel: one JSON [`BuilderEvent`] per line on stdout, written whole
//! under a lock so lines from concurrent readers never interleave. Every log line passes the
//! secret redactor and the log budget here, system lines included.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use gitdeploy_core::{BuilderEvent, LogStream};

use crate::lines::Redactor;

/// Longest log line sent as one record; longer lines are split.
pub const MAX_LINE: usize = 16 * 1024;

/// Writes events to the runner.
#[derive(Clone)]
pub struct Emitter {
    out: Arc<Mutex<Box<dyn Write + Send>>>,
    redactor: Arc<Redactor>,
    budget: Arc<LogBudget>,
}

struct LogBudget {
    limit: u64,
    used: AtomicU64,
    exceeded: AtomicBool,
}

impl Emitter {
    /// Events to this process's stdout, with no secrets and no log limit yet.
    pub fn stdout() -> Self {
        Emitter {
            out: Arc::new(Mutex::new(Box::new(std::io::stdout()))),
            redactor: Arc::new(Redactor::default()),
            budget: Arc::new(LogBudget {
                limit: u64::MAX,
                used: AtomicU64::new(0),
                exceeded: AtomicBool::new(false),
            }),
        }
    }

    /// The same channel, redacting `redactor`'s secrets and allowing `limit` bytes of log.
    pub fn configured(&self, redactor: Redactor, limit: u64) -> Self {
        Emitter {
            out: self.out.clone(),
            redactor: Arc::new(redactor),
            budget: Arc::new(LogBudget {
                limit,
                used: AtomicU64::new(self.budget.used.load(Ordering::Relaxed)),
                exceeded: AtomicBool::new(false),
            }),
        }
    }

    /// The redactor in force.
    pub fn redactor(&self) -> &Redactor {
        &self.redactor
    }

    /// True once the log budget was exceeded (further lines were dropped).
    pub fn over_budget(&self) -> bool {
        self.budget.exceeded.load(Ordering::Relaxed)
    }

    /// Sends one event. A closed stdout (runner gone) is ignored: the exit code still tells.
    pub fn event(&self, event: &BuilderEvent) {
        let Ok(mut json) = serde_json::to_vec(event) else {
            return;
        };
        json.push(b'\n');
        if let Ok(mut out) = self.out.lock() {
            let _ = out.write_all(&json).and_then(|_| out.flush());
        }
    }

    /// Sends a log line (redacted), split into [`MAX_LINE`]-sized records when longer.
    pub fn line(&self, stream: LogStream, line: &str) {
        let line = self.redactor.redact_str(line);
        let used = self
            .budget
            .used
            .fetch_add(line.len() as u64 + 1, Ordering::Relaxed);
        if used + line.len() as u64 > self.budget.limit && stream != LogStream::System {
            if !self.budget.exceeded.swap(true, Ordering::Relaxed) {
                self.emit(
                    LogStream::System,
                    &format!(
                        "The log reached its limit of {} bytes; further output is dropped",
                        self.budget.limit
                    ),
                );
            }
            return;
        }
        self.emit(stream, &line);
    }

    fn emit(&self, stream: LogStream, line: &str) {
        let ts = now_ms();
        for chunk in split_line(line, MAX_LINE) {
            self.event(&BuilderEvent::Log {
                ts,
                stream,
                line: chunk.to_owned(),
            });
        }
    }

    /// Reports that a build phase ended.
    pub fn phase(&self, phase: &str, started: std::time::Instant) {
        self.event(&BuilderEvent::Phase {
            phase: phase.to_owned(),
            millis: started.elapsed().as_millis() as u64,
        });
    }

    /// Sends a GitDeploy system line.
    pub fn system(&self, line: &str) {
        self.line(LogStream::System, line);
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Splits at char boundaries into pieces of at most `max` bytes (one empty piece for "").
fn split_line(line: &str, max: usize) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = line;
    while rest.len() > max {
        let mut cut = max;
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        out.push(&rest[..cut]);
        rest = &rest[cut..];
    }
    out.push(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_table() {
        assert_eq!(split_line("", 4), vec![""]);
        assert_eq!(split_line("abcd", 4), vec!["abcd"]);
        assert_eq!(split_line("abcdef", 4), vec!["abcd", "ef"]);
        // 'é' is two bytes: never cut inside it.
        assert_eq!(split_line("abcé", 4), vec!["abc", "é"]);
    }

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn redacts_and_enforces_the_budget() {
        let sink = Sink::default();
        let base = Emitter {
            out: Arc::new(Mutex::new(Box::new(sink.clone()))),
            ..Emitter::stdout()
        };
        let e = base.configured(Redactor::new(["s3cr3t"]), 20);
        e.line(LogStream::Stdout, "value s3cr3t");
        e.system("system s3cr3t");
        e.line(LogStream::Stdout, "this line is over the budget");
        e.line(LogStream::Stdout, "and this one");
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        assert!(!text.contains("s3cr3t"), "{text}");
        assert!(
            text.contains("value ***") && text.contains("system ***"),
            "{text}"
        );
        assert!(!text.contains("over the budget") && !text.contains("and this one"));
        assert_eq!(text.matches("reached its limit").count(), 1);
        assert!(e.over_budget());
    }
}
