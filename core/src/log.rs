//! The build log record: `{seq, ts, stream, line}`, and a last record that carries the outcome.

use serde::{Deserialize, Serialize};

use crate::status::DeploymentStatus;

/// Which stream a line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogStream {
    /// The build command's standard output.
    Stdout,
    /// The build command's standard error.
    Stderr,
    /// GitDeploy's own lines (steps, durations, errors).
    System,
}

/// One line of a deployment's log. `seq` starts at 0 and has no gaps.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRecord {
    /// Position in the log.
    pub seq: u64,
    /// When the line was produced (Unix milliseconds).
    pub ts: u64,
    /// Source stream.
    pub stream: LogStream,
    /// The text, without its line ending.
    pub line: String,
    /// Present on the final record only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
}

/// How a build ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// `ready` or `failed`.
    pub status: DeploymentStatus,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Why it was skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip_reason: Option<String>,
    /// Exit code of the failing command, or of the builder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Wall-clock time of the build, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// Files published.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<u64>,
    /// Bytes published.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
}

impl LogRecord {
    /// True for the record that ends the log.
    pub fn is_final(&self) -> bool {
        self.outcome.is_some()
    }
}
