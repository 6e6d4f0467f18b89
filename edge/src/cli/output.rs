//! How the client prints: log records (colours and a spinner on a terminal), tables, JSON,
//! ages, and how a followed build ended.

use super::*;
use gitdeploy_core::{DeploymentStatus, LogRecord, LogStream, Outcome};
use serde_json::Value;

/// Prints log records: with colours and a spinner naming the running step when standard output
/// is a terminal (and `NO_COLOR` is not set), plain lines otherwise.
pub(super) struct LogPrinter {
    fancy: bool,
    step: Option<(String, std::time::Instant)>,
    frame: usize,
    spinner_shown: bool,
}

pub(super) const SPINNER: [char; 10] = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];

impl LogPrinter {
    pub(super) fn for_terminal() -> Self {
        use std::io::IsTerminal;
        LogPrinter {
            fancy: std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
            step: None,
            frame: 0,
            spinner_shown: false,
        }
    }

    pub(super) fn print(&mut self, record: &LogRecord) {
        self.clear_spinner();
        let text = render_record(record, self.fancy);
        match record.stream {
            LogStream::Stderr => eprintln!("{text}"),
            _ => println!("{text}"),
        }
        if record.stream == LogStream::System {
            self.step = step_of(&record.line).map(|s| (s, std::time::Instant::now()));
        }
        if record.is_final() {
            self.step = None;
        }
    }

    pub(super) fn spin(&mut self) {
        let Some((step, since)) = &self.step else {
            return;
        };
        if !self.fancy {
            return;
        }
        use std::io::Write;
        self.frame = (self.frame + 1) % SPINNER.len();
        print!(
            "\r\x1b[2K\x1b[36m{}\x1b[0m {step} ({:.1}s)",
            SPINNER[self.frame],
            since.elapsed().as_secs_f64()
        );
        let _ = std::io::stdout().flush();
        self.spinner_shown = true;
    }

    pub(super) fn clear_spinner(&mut self) {
        if self.spinner_shown {
            use std::io::Write;
            print!("\r\x1b[2K");
            let _ = std::io::stdout().flush();
            self.spinner_shown = false;
        }
    }
}

/// The step a system line starts ("Install: npm ci" → "Install"), if it starts one.
pub(super) fn step_of(line: &str) -> Option<String> {
    if line.starts_with("Cloning") {
        return Some("Clone".into());
    }
    if line.starts_with("Publishing") {
        return Some("Upload".into());
    }
    let (head, _) = line.split_once(": ")?;
    matches!(head, "Install" | "Build").then(|| head.to_owned())
}

/// One record as the CLI prints it. Build output keeps its own colours; GitDeploy's lines are
/// bold, stderr yellow, the final line green, yellow (skipped) or red.
pub(super) fn render_record(record: &LogRecord, color: bool) -> String {
    let (prefix, style) = match (&record.outcome, record.stream) {
        (Some(o), _) if o.status == gitdeploy_core::DeploymentStatus::Ready => ("✔ ", "1;32"),
        (Some(o), _) if o.status == gitdeploy_core::DeploymentStatus::Skipped => ("↷ ", "1;33"),
        (Some(_), _) => ("✖ ", "1;31"),
        (None, LogStream::System) => ("▸ ", "1;36"),
        (None, LogStream::Stdout) => ("  ", ""),
        (None, LogStream::Stderr) => ("  ", "33"),
    };
    if !color || style.is_empty() {
        return format!("{prefix}{}", record.line);
    }
    format!("\x1b[{style}m{prefix}{}\x1b[0m", record.line)
}

/// Prints a value as pretty JSON (for `--json`).
pub(super) fn print_json(value: &impl serde::Serialize) -> i32 {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
    EXIT_OK
}

pub(super) fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or("-")
}

/// A plain aligned table.
pub(super) fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    let mut out = vec![line(headers.iter().map(|h| h.to_string()).collect())];
    out.extend(rows.into_iter().map(line));
    out.join("\n")
}

pub(super) fn age(created_ms: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let secs = now.saturating_sub(created_ms) / 1000;
    match secs {
        0..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m", secs / 60),
        3600..=86399 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86400),
    }
}

/// Reports how a followed build ended; returns the exit status.
pub(super) fn report_outcome(outcome: Option<Outcome>) -> i32 {
    match outcome {
        // Nothing to build is not a failure: production is as it was.
        Some(o) if o.status == DeploymentStatus::Ready || o.status == DeploymentStatus::Skipped => {
            EXIT_OK
        }
        Some(o) => {
            let status = serde_json::to_value(o.status)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            eprintln!(
                "Failed ({status}): {}",
                o.error.unwrap_or_else(|| "no reason given".into())
            );
            EXIT_FAILED
        }
        None => {
            eprintln!("Failed: the log ended without an outcome");
            EXIT_FAILED
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{render_record, step_of, table};
    use gitdeploy_core::{LogRecord, LogStream};

    #[test]
    fn log_lines_render_with_and_without_colour() {
        let record =
            |stream, line: &str, outcome: Option<gitdeploy_core::DeploymentStatus>| LogRecord {
                seq: 0,
                ts: 0,
                stream,
                line: line.into(),
                outcome: outcome.map(|status| gitdeploy_core::Outcome {
                    status,
                    error: None,
                    skip_reason: None,
                    exit_code: None,
                    duration_ms: None,
                    files: None,
                    bytes: None,
                }),
            };
        use gitdeploy_core::DeploymentStatus::{Failed, Ready};
        for (r, plain, colored) in [
            (
                record(LogStream::System, "Build: npm run build", None),
                "▸ Build: npm run build",
                "\x1b[1;36m▸ Build: npm run build\x1b[0m",
            ),
            (
                record(LogStream::Stdout, "\x1b[32mok\x1b[0m", None),
                "  \x1b[32mok\x1b[0m",
                "  \x1b[32mok\x1b[0m",
            ),
            (
                record(LogStream::Stderr, "warn", None),
                "  warn",
                "\x1b[33m  warn\x1b[0m",
            ),
            (
                record(LogStream::System, "Deployment is ready", Some(Ready)),
                "✔ Deployment is ready",
                "\x1b[1;32m✔ Deployment is ready\x1b[0m",
            ),
            (
                record(LogStream::System, "Deployment failed: x", Some(Failed)),
                "✖ Deployment failed: x",
                "\x1b[1;31m✖ Deployment failed: x\x1b[0m",
            ),
        ] {
            assert_eq!(render_record(&r, false), plain);
            assert_eq!(render_record(&r, true), colored);
        }
        for (line, step) in [
            ("Install: npm ci", Some("Install")),
            ("Build: npm run build", Some("Build")),
            ("Cloning git://h/r (HEAD)", Some("Clone")),
            ("Publishing dist/ (by convention)", Some("Upload")),
            ("Detected: vite", None),
            ("Install finished in 3.1s", None),
        ] {
            assert_eq!(step_of(line).as_deref(), step, "{line}");
        }
    }

    #[test]
    fn tables_align() {
        let t = table(
            &["ID", "STATUS"],
            vec![
                vec!["abc".into(), "ready".into()],
                vec!["a".into(), "failed".into()],
            ],
        );
        assert_eq!(t, "ID   STATUS\nabc  ready\na    failed");
    }
}
