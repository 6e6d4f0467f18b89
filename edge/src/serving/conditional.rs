//! Conditional requests (RFC 9110 §13.2.2): `If-Match`, `If-Unmodified-Since`, `If-None-Match`
//! and `If-Modified-Since`, evaluated in that order and answered from the manifest's validators,
//! so a revalidation never touches S3.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What the preconditions decide.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precondition {
    /// Serve the representation.
    Proceed,
    /// 304 Not Modified.
    NotModified,
    /// 412 Precondition Failed.
    Failed,
}

/// The request's conditional headers (raw values).
#[derive(Clone, Copy, Debug, Default)]
pub struct Conditions<'a> {
    /// `If-Match`.
    pub if_match: Option<&'a [u8]>,
    /// `If-None-Match`.
    pub if_none_match: Option<&'a [u8]>,
    /// `If-Modified-Since`.
    pub if_modified_since: Option<&'a [u8]>,
    /// `If-Unmodified-Since`.
    pub if_unmodified_since: Option<&'a [u8]>,
}

fn opaque(tag: &str) -> &str {
    tag.strip_prefix("W/").unwrap_or(tag)
}

/// Whether an entity-tag list matches `etag`; `strong` refuses weak tags (If-Match, If-Range).
pub fn etag_list_matches(list: &[u8], etag: &str, strong: bool) -> bool {
    let Ok(list) = std::str::from_utf8(list) else {
        return false;
    };
    list.split(',').map(str::trim).any(|t| {
        if t == "*" {
            return true;
        }
        if strong && (t.starts_with("W/") || etag.starts_with("W/")) {
            return false;
        }
        opaque(t) == opaque(etag)
    })
}

/// Parses an HTTP date.
pub fn parse_date(value: &[u8]) -> Option<SystemTime> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| httpdate::parse_http_date(s.trim()).ok())
}

/// `Last-Modified` time of a deployment's files: when it was published, to the second.
pub fn last_modified(created_unix_ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(created_unix_ms / 1000)
}

/// Evaluates the preconditions of a GET or HEAD against the representation's validators.
pub fn evaluate(c: &Conditions<'_>, etag: &str, modified: SystemTime) -> Precondition {
    if let Some(list) = c.if_match {
        if !etag_list_matches(list, etag, true) {
            return Precondition::Failed;
        }
    } else if let Some(date) = c.if_unmodified_since.and_then(parse_date) {
        if modified > date {
            return Precondition::Failed;
        }
    }
    if let Some(list) = c.if_none_match {
        if etag_list_matches(list, etag, false) {
            return Precondition::NotModified;
        }
    } else if let Some(date) = c.if_modified_since.and_then(parse_date) {
        if modified <= date {
            return Precondition::NotModified;
        }
    }
    Precondition::Proceed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precondition_table() {
        let etag = "\"abc\"";
        let modified = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let before = "Tue, 14 Nov 2023 22:13:19 GMT"; // modified - 1s
        let same = "Tue, 14 Nov 2023 22:13:20 GMT";
        let garbage = "yesterday";
        use Precondition::*;
        let cases: &[(Conditions, Precondition)] = &[
            (Conditions::default(), Proceed),
            (
                Conditions {
                    if_none_match: Some(b"\"abc\""),
                    ..Default::default()
                },
                NotModified,
            ),
            (
                Conditions {
                    if_none_match: Some(b"W/\"abc\""),
                    ..Default::default()
                },
                NotModified,
            ),
            (
                Conditions {
                    if_none_match: Some(b"\"x\", \"abc\""),
                    ..Default::default()
                },
                NotModified,
            ),
            (
                Conditions {
                    if_none_match: Some(b"*"),
                    ..Default::default()
                },
                NotModified,
            ),
            (
                Conditions {
                    if_none_match: Some(b"\"x\""),
                    ..Default::default()
                },
                Proceed,
            ),
            (
                Conditions {
                    if_match: Some(b"\"abc\""),
                    ..Default::default()
                },
                Proceed,
            ),
            (
                Conditions {
                    if_match: Some(b"*"),
                    ..Default::default()
                },
                Proceed,
            ),
            (
                Conditions {
                    if_match: Some(b"\"x\""),
                    ..Default::default()
                },
                Failed,
            ),
            (
                Conditions {
                    if_match: Some(b"W/\"abc\""),
                    ..Default::default()
                },
                Failed,
            ),
            (
                Conditions {
                    if_modified_since: Some(same.as_bytes()),
                    ..Default::default()
                },
                NotModified,
            ),
            (
                Conditions {
                    if_modified_since: Some(before.as_bytes()),
                    ..Default::default()
                },
                Proceed,
            ),
            (
                Conditions {
                    if_modified_since: Some(garbage.as_bytes()),
                    ..Default::default()
                },
                Proceed,
            ),
            // If-None-Match takes precedence over If-Modified-Since.
            (
                Conditions {
                    if_none_match: Some(b"\"x\""),
                    if_modified_since: Some(same.as_bytes()),
                    ..Default::default()
                },
                Proceed,
            ),
            (
                Conditions {
                    if_unmodified_since: Some(before.as_bytes()),
                    ..Default::default()
                },
                Failed,
            ),
            (
                Conditions {
                    if_unmodified_since: Some(same.as_bytes()),
                    ..Default::default()
                },
                Proceed,
            ),
            // If-Match takes precedence over If-Unmodified-Since.
            (
                Conditions {
                    if_match: Some(b"\"abc\""),
                    if_unmodified_since: Some(before.as_bytes()),
                    ..Default::default()
                },
                Proceed,
            ),
            // A failed If-Match wins over a matching If-None-Match.
            (
                Conditions {
                    if_match: Some(b"\"x\""),
                    if_none_match: Some(b"\"abc\""),
                    ..Default::default()
                },
                Failed,
            ),
        ];
        for (i, (c, want)) in cases.iter().enumerate() {
            assert_eq!(evaluate(c, etag, modified), *want, "case {i}: {c:?}");
        }
    }
}
