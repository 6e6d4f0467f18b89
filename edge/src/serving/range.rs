//! Byte ranges (RFC 9110 §14): one range per request (`a-b`, `a-`, `-n`), `If-Range`, and 416
//! for a range that starts past the end. Several ranges in one request are answered with the
//! whole representation, which the RFC allows.

use super::conditional::{etag_list_matches, parse_date};
use std::time::SystemTime;

/// What to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RangeOutcome {
    /// 200 with the whole representation.
    Full,
    /// 206 with bytes `start..=end`.
    Partial {
        /// First byte.
        start: u64,
        /// Last byte (inclusive).
        end: u64,
    },
    /// 416 Range Not Satisfiable.
    Unsatisfiable,
}

/// Decides the range of a GET. `if_range` is honoured only when it names this representation
/// (strong ETag, or a date equal to `modified`).
pub fn evaluate(
    range: Option<&[u8]>,
    if_range: Option<&[u8]>,
    etag: &str,
    modified: SystemTime,
    size: u64,
) -> RangeOutcome {
    let Some(range) = range else {
        return RangeOutcome::Full;
    };
    if let Some(cond) = if_range {
        let current = if cond.starts_with(b"\"") || cond.starts_with(b"W/") {
            etag_list_matches(cond, etag, true) && !cond.contains(&b',')
        } else {
            parse_date(cond).is_some_and(|d| d == modified)
        };
        if !current {
            return RangeOutcome::Full;
        }
    }
    let Some(spec) = std::str::from_utf8(range)
        .ok()
        .and_then(|r| r.trim().strip_prefix("bytes="))
    else {
        return RangeOutcome::Full;
    };
    if spec.contains(',') {
        return RangeOutcome::Full;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeOutcome::Full;
    };
    let num = |s: &str| -> Option<u64> {
        let s = s.trim();
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    match (first.trim().is_empty(), last.trim().is_empty()) {
        // `-n`: the last n bytes.
        (true, false) => match num(last) {
            None => RangeOutcome::Full,
            Some(0) => RangeOutcome::Unsatisfiable,
            Some(_) if size == 0 => RangeOutcome::Unsatisfiable,
            Some(n) => RangeOutcome::Partial {
                start: size.saturating_sub(n),
                end: size - 1,
            },
        },
        // `a-`: from a to the end.
        (false, true) => match num(first) {
            Some(a) if a < size => RangeOutcome::Partial {
                start: a,
                end: size - 1,
            },
            Some(_) => RangeOutcome::Unsatisfiable,
            None => RangeOutcome::Full,
        },
        // `a-b`.
        (false, false) => match (num(first), num(last)) {
            (Some(a), Some(b)) if a > b => RangeOutcome::Full,
            (Some(a), Some(_)) if a >= size => RangeOutcome::Unsatisfiable,
            (Some(a), Some(b)) => RangeOutcome::Partial {
                start: a,
                end: b.min(size - 1),
            },
            _ => RangeOutcome::Full,
        },
        (true, true) => RangeOutcome::Full,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};
    use RangeOutcome::*;

    #[test]
    fn range_table() {
        let modified = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let etag = "\"abc\"";
        let p = |start, end| Partial { start, end };
        for (range, if_range, size, want) in [
            (None, None, 100, Full),
            (Some("bytes=0-9"), None, 100, p(0, 9)),
            (Some("bytes=90-"), None, 100, p(90, 99)),
            (Some("bytes=-10"), None, 100, p(90, 99)),
            (Some("bytes=-1000"), None, 100, p(0, 99)),
            (Some("bytes=50-1000"), None, 100, p(50, 99)),
            (Some("bytes=99-99"), None, 100, p(99, 99)),
            (Some("bytes=100-"), None, 100, Unsatisfiable),
            (Some("bytes=100-200"), None, 100, Unsatisfiable),
            (Some("bytes=-0"), None, 100, Unsatisfiable),
            (Some("bytes=0-"), None, 0, Unsatisfiable),
            (Some("bytes=-5"), None, 0, Unsatisfiable),
            (Some("bytes=9-0"), None, 100, Full),
            (Some("bytes=0-1,5-6"), None, 100, Full),
            (Some("items=0-1"), None, 100, Full),
            (Some("bytes=a-b"), None, 100, Full),
            (Some("bytes=-"), None, 100, Full),
            (Some("bytes=0-9"), Some("\"abc\""), 100, p(0, 9)),
            (Some("bytes=0-9"), Some("\"old\""), 100, Full),
            (Some("bytes=0-9"), Some("W/\"abc\""), 100, Full),
            (
                Some("bytes=0-9"),
                Some("Tue, 14 Nov 2023 22:13:20 GMT"),
                100,
                p(0, 9),
            ),
            (
                Some("bytes=0-9"),
                Some("Tue, 14 Nov 2023 22:13:19 GMT"),
                100,
                Full,
            ),
        ] {
            let got = evaluate(
                range.map(str::as_bytes),
                if_range.map(str::as_bytes),
                etag,
                modified,
                size,
            );
            assert_eq!(got, want, "{range:?} {if_range:?} size {size}");
        }
    }
}
