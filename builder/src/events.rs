//! The builder's report channel: one JSON [`BuilderEvent`] per line on stdout, written whole
//! under a lock so lines from concurrent readers never interleave.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use gitdeploy_core::{BuilderEvent, LogStream};

/// Longest log line sent as one record; longer lines are split.
pub const MAX_LINE: usize = 16 * 1024;

/// Writes events to the runner.
#[derive(Clone)]
pub struct Emitter {
    out: Arc<Mutex<Box<dyn Write + Send>>>,
}

impl Emitter {
    /// Events to this process's stdout.
    pub fn stdout() -> Self {
        Emitter {
            out: Arc::new(Mutex::new(Box::new(std::io::stdout()))),
        }
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

    /// Sends a log line, split into [`MAX_LINE`]-sized records when longer.
    pub fn line(&self, stream: LogStream, line: &str) {
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
    use super::split_line;

    #[test]
    fn split_table() {
        assert_eq!(split_line("", 4), vec![""]);
        assert_eq!(split_line("abcd", 4), vec!["abcd"]);
        assert_eq!(split_line("abcdef", 4), vec!["abcd", "ef"]);
        // 'é' is two bytes: never cut inside it.
        assert_eq!(split_line("abcé", 4), vec!["abc", "é"]);
    }
}
