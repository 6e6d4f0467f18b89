//! Turning a command's output bytes into log lines: split on `\n`, collapse `\r` progress
//! updates to their last state, split very long lines, keep invalid UTF-8 (replaced, never
//! dropped) and ANSI colours, and never cut a line inside a secret so redaction always sees the
//! whole value.

/// Replaces secret values with `***`.
#[derive(Clone, Debug, Default)]
pub struct Redactor {
    secrets: Vec<Vec<u8>>,
}

impl Redactor {
    /// Redacts these values (empty ones are ignored; longest first, so overlapping values are
    /// replaced whole).
    pub fn new<'a>(values: impl IntoIterator<Item = &'a str>) -> Self {
        let mut secrets: Vec<Vec<u8>> = values
            .into_iter()
            .filter(|v| !v.is_empty())
            .map(|v| v.as_bytes().to_vec())
            .collect();
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets.dedup();
        Redactor { secrets }
    }

    /// Length of the longest secret.
    pub fn longest(&self) -> usize {
        self.secrets.first().map_or(0, Vec::len)
    }

    /// `bytes` with every secret replaced.
    pub fn redact(&self, bytes: &[u8]) -> Vec<u8> {
        let mut out = bytes.to_vec();
        for secret in &self.secrets {
            if out.len() < secret.len() {
                continue;
            }
            let mut result = Vec::with_capacity(out.len());
            let mut i = 0;
            while i < out.len() {
                if out[i..].starts_with(secret) {
                    result.extend_from_slice(b"***");
                    i += secret.len();
                } else {
                    result.push(out[i]);
                    i += 1;
                }
            }
            out = result;
        }
        out
    }

    /// A string with every secret replaced.
    pub fn redact_str(&self, s: &str) -> String {
        if self.secrets.is_empty() {
            return s.to_owned();
        }
        String::from_utf8_lossy(&self.redact(s.as_bytes())).into_owned()
    }
}

/// Accumulates output chunks into finished, redacted lines.
pub struct LineAssembler {
    buf: Vec<u8>,
    max_line: usize,
    redactor: Redactor,
}

impl LineAssembler {
    /// Lines longer than `max_line` bytes are split.
    pub fn new(max_line: usize, redactor: Redactor) -> Self {
        LineAssembler {
            buf: Vec::new(),
            max_line,
            redactor,
        }
    }

    /// Adds a chunk; returns the lines it completed.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<String> {
        let mut lines = Vec::new();
        for &b in chunk {
            if b == b'\n' {
                let line = std::mem::take(&mut self.buf);
                lines.push(self.finish_line(&line));
                continue;
            }
            self.buf.push(b);
            if self.buf.len() >= self.max_line + self.redactor.longest() {
                // Redact first, then cut where no secret can straddle the cut.
                let redacted = self.redactor.redact(&self.buf);
                let keep = self.redactor.longest().saturating_sub(1);
                let mut cut = redacted
                    .len()
                    .saturating_sub(keep)
                    .min(self.max_line)
                    .max(1);
                while cut > 1 && cut < redacted.len() && (redacted[cut] & 0xC0) == 0x80 {
                    cut -= 1; // not inside a UTF-8 sequence
                }
                lines.push(String::from_utf8_lossy(&redacted[..cut]).into_owned());
                self.buf = redacted[cut..].to_vec();
            }
        }
        lines
    }

    /// The last, unterminated line, if any.
    pub fn finish(&mut self) -> Option<String> {
        if self.buf.is_empty() {
            return None;
        }
        let line = std::mem::take(&mut self.buf);
        Some(self.finish_line(&line))
    }

    fn finish_line(&self, raw: &[u8]) -> String {
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        // `\r` without `\n` redraws the line: keep its last non-empty state.
        let last = raw
            .split(|&b| b == b'\r')
            .rev()
            .find(|part| !part.is_empty())
            .unwrap_or(&[]);
        String::from_utf8_lossy(&self.redactor.redact(last)).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(chunks: &[&[u8]], max: usize, secrets: &[&str]) -> Vec<String> {
        let mut a = LineAssembler::new(max, Redactor::new(secrets.iter().copied()));
        let mut out: Vec<String> = chunks.iter().flat_map(|c| a.push(c)).collect();
        out.extend(a.finish());
        out
    }

    #[test]
    fn line_table() {
        let cases: &[(&[&[u8]], &[&str])] = &[
            (&[b"a\nb\n"], &["a", "b"]),
            (&[b"par", b"tial\nrest"], &["partial", "rest"]),
            (&[b"crlf\r\n"], &["crlf"]),
            (&[b"10%\r50%\r100%\n"], &["100%"]),
            (&[b"done\r\r\n"], &["done"]),
            (&[b"\x1b[32mgreen\x1b[0m\n"], &["\x1b[32mgreen\x1b[0m"]),
            (&[b"bad \xff byte\n"], &["bad \u{fffd} byte"]),
            (&[b"\n"], &[""]),
            (&[b""], &[]),
        ];
        for (chunks, want) in cases {
            assert_eq!(run(chunks, 1024, &[]), *want, "{chunks:?}");
        }
    }

    #[test]
    fn long_lines_are_split_at_char_boundaries() {
        let lines = run(&[b"abcdefghij\n"], 4, &[]);
        assert_eq!(lines, ["abcd", "efgh", "ij"]);
        let lines = run(&["ééééé\n".as_bytes()], 4, &[]);
        assert!(lines.iter().all(|l| !l.contains('\u{fffd}')), "{lines:?}");
        assert_eq!(lines.concat(), "ééééé");
    }

    #[test]
    fn secrets_are_redacted_even_across_chunks_and_splits() {
        let secret = "hunter2-token";
        // In one line, split over many chunks.
        let chunks: Vec<&[u8]> = b"token=hunter2-token done\n".chunks(3).collect();
        assert_eq!(run(&chunks, 1024, &[secret]), ["token=*** done"]);
        // In a line longer than the split size, wherever the cut falls.
        for offset in 0..20 {
            let line = format!("{}{secret}{}\n", "x".repeat(offset), "y".repeat(30));
            let chunks: Vec<&[u8]> = line.as_bytes().chunks(5).collect();
            let out = run(&chunks, 8, &[secret]);
            let joined = out.concat();
            assert!(!joined.contains("hunter"), "offset {offset}: {out:?}");
            assert!(
                !out.iter().any(|l| l.contains("2-tok")),
                "offset {offset}: {out:?}"
            );
            assert!(joined.contains("***"), "offset {offset}: {out:?}");
        }
        // Overlapping secrets: the longer wins.
        let r = Redactor::new(["abcd", "abcdef"]);
        assert_eq!(r.redact_str("xabcdefx abcd"), "x***x ***");
        assert_eq!(Redactor::new([""]).redact_str("abc"), "abc");
    }
}
