//! URL path → a site-relative file path. The request path is hostile input: it is percent-decoded
//! exactly once and every segment that could climb out of the site (`..`, `.`, empty, NUL, `\`,
//! an encoded `/`) is refused, so no input can name an object outside `sites/<id>/`.

use std::fmt;

use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

/// Longest request path we consider (bytes, before decoding).
pub const MAX_PATH_LEN: usize = 4096;

/// Why a request path was refused (the edge answers 400).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The path does not start with `/`.
    #[error("path must start with '/'")]
    NotAbsolute,
    /// Longer than [`MAX_PATH_LEN`].
    #[error("path too long")]
    TooLong,
    /// Percent-decoding produced invalid UTF-8.
    #[error("path is not valid UTF-8 after decoding")]
    BadEncoding,
    /// A `.` or `..` segment.
    #[error("dot segments are not allowed")]
    DotSegment,
    /// `//` inside the path.
    #[error("empty path segments are not allowed")]
    EmptySegment,
    /// A segment holding NUL or another control character.
    #[error("control characters are not allowed")]
    ControlChar,
    /// A backslash, raw or encoded.
    #[error("backslashes are not allowed")]
    Backslash,
    /// `%2F` inside a segment.
    #[error("encoded slashes are not allowed")]
    EncodedSlash,
}

/// A validated, decoded site path: its segments, and whether it named a directory (`/`, `/docs/`).
///
/// Held as its relative form (`docs/a.html`, `""` for the root): a decoded segment never holds
/// a `/` (an encoded one is refused), so the segments are that text split at `/`, and a
/// request's path costs one allocation, not one per segment and another to join them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SitePath {
    relative: String,
    directory: bool,
}

impl SitePath {
    /// Parses the path part of a request URI (no query string).
    pub fn parse(raw: &str) -> Result<Self, PathError> {
        if raw.len() > MAX_PATH_LEN {
            return Err(PathError::TooLong);
        }
        let rest = raw.strip_prefix('/').ok_or(PathError::NotAbsolute)?;
        if rest.is_empty() {
            return Ok(SitePath {
                relative: String::new(),
                directory: true,
            });
        }
        let directory = rest.ends_with('/');
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let mut relative = String::with_capacity(rest.len());
        for raw_segment in rest.split('/') {
            if raw_segment.is_empty() {
                return Err(PathError::EmptySegment);
            }
            let segment = percent_decode_str(raw_segment)
                .decode_utf8()
                .map_err(|_| PathError::BadEncoding)?;
            if segment.contains('/') {
                return Err(PathError::EncodedSlash);
            }
            if segment.contains('\\') {
                return Err(PathError::Backslash);
            }
            if segment.chars().any(char::is_control) {
                return Err(PathError::ControlChar);
            }
            if segment == "." || segment == ".." {
                return Err(PathError::DotSegment);
            }
            if !relative.is_empty() {
                relative.push('/');
            }
            relative.push_str(&segment);
        }
        Ok(SitePath {
            relative,
            directory,
        })
    }

    /// The decoded segments, in order (none for the root).
    pub fn segments(&self) -> impl DoubleEndedIterator<Item = &str> + Clone {
        self.relative.split('/').filter(|s| !s.is_empty())
    }

    /// How many segments there are.
    pub fn segment_count(&self) -> usize {
        match self.relative.is_empty() {
            true => 0,
            false => self.relative.bytes().filter(|&b| b == b'/').count() + 1,
        }
    }

    /// The first `n` segments joined with `/` (all of them when there are fewer).
    pub fn prefix(&self, n: usize) -> &str {
        match n {
            0 => "",
            n => match self.relative.match_indices('/').nth(n - 1) {
                Some((at, _)) => &self.relative[..at],
                None => &self.relative,
            },
        }
    }

    /// The segments after the first `n`, joined with `/` (`""` when there are none).
    pub fn suffix(&self, n: usize) -> &str {
        match n {
            0 => &self.relative,
            n => match self.relative.match_indices('/').nth(n - 1) {
                Some((at, _)) => &self.relative[at + 1..],
                None => "",
            },
        }
    }

    /// True when the request named a directory (`/` or a trailing slash).
    pub fn is_directory(&self) -> bool {
        self.directory
    }

    /// The path relative to the site root, segments joined with `/` (`""` for the root).
    pub fn relative(&self) -> &str {
        &self.relative
    }
}

impl fmt::Display for SitePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("/")?;
        f.write_str(&encode_path(&self.relative))?;
        if self.directory && !self.relative.is_empty() {
            f.write_str("/")?;
        }
        Ok(())
    }
}

/// Characters left as they are in a path segment; everything else is percent-encoded. This is
/// the RFC 3986 unreserved set, which is also what SigV4 expects in a canonical URI.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Percent-encodes a `/`-separated relative path segment by segment (slashes kept).
pub fn encode_path(relative: &str) -> String {
    relative
        .split('/')
        .map(|s| utf8_percent_encode(s, SEGMENT).to_string())
        .collect::<Vec<_>>()
        .join("/")
}

/// Whether `path` can be a manifest path: `/`-separated segments, none empty, `.` or `..`, no
/// control character or `\\`, no leading or trailing `/`, at most 1,024 bytes.
pub fn check_relative_path(path: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("{path:?} is not a site path: {why}"));
    if path.is_empty() || path.len() > 1024 {
        return bad("empty or longer than 1,024 bytes");
    }
    if let Some(c) = path.chars().find(|c| c.is_control() || *c == '\\') {
        return bad(&format!("it contains {c:?}"));
    }
    if path
        .split('/')
        .any(|segment| segment.is_empty() || segment == "." || segment == "..")
    {
        return bad("empty, `.` or `..` segments (or a `/` at either end)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_table() {
        for (raw, want) in [
            ("/", Ok(("", true))),
            ("/index.html", Ok(("index.html", false))),
            ("/docs/", Ok(("docs", true))),
            ("/docs/a.html", Ok(("docs/a.html", false))),
            ("/with%20space.html", Ok(("with space.html", false))),
            ("/%C3%A9t%C3%A9.html", Ok(("été.html", false))),
            ("/%2525", Ok(("%25", false))), // decoded once, not twice
            ("/a..b", Ok(("a..b", false))),
            ("/.well-known/x", Ok((".well-known/x", false))),
            ("", Err(PathError::NotAbsolute)),
            ("index.html", Err(PathError::NotAbsolute)),
            ("/../etc/passwd", Err(PathError::DotSegment)),
            ("/a/%2e%2e/b", Err(PathError::DotSegment)),
            ("/a/./b", Err(PathError::DotSegment)),
            ("/a//b", Err(PathError::EmptySegment)),
            ("//", Err(PathError::EmptySegment)),
            ("/a%2fb", Err(PathError::EncodedSlash)),
            ("/a%5cb", Err(PathError::Backslash)),
            ("/a\\b", Err(PathError::Backslash)),
            ("/a%00b", Err(PathError::ControlChar)),
            ("/%ff", Err(PathError::BadEncoding)),
        ] {
            let got = SitePath::parse(raw).map(|p| (p.relative().to_owned(), p.is_directory()));
            let want = want.map(|(r, d)| (r.to_owned(), d));
            assert_eq!(got, want, "{raw:?}");
        }
        assert_eq!(
            SitePath::parse(&format!("/{}", "a".repeat(MAX_PATH_LEN))),
            Err(PathError::TooLong)
        );
    }

    #[test]
    fn segments_prefixes_and_suffixes() {
        for (raw, segments, prefixes, suffixes) in [
            ("/", vec![], vec![""], vec![""]),
            (
                "/a.html",
                vec!["a.html"],
                vec!["", "a.html"],
                vec!["a.html", ""],
            ),
            (
                "/docs/a%20b/c/",
                vec!["docs", "a b", "c"],
                vec!["", "docs", "docs/a b", "docs/a b/c"],
                vec!["docs/a b/c", "a b/c", "c", ""],
            ),
        ] {
            let p = SitePath::parse(raw).unwrap();
            assert_eq!(p.segments().collect::<Vec<_>>(), segments, "{raw}");
            assert_eq!(p.segment_count(), segments.len(), "{raw}");
            assert_eq!(p.segments().next_back(), segments.last().copied(), "{raw}");
            for (n, want) in prefixes.iter().enumerate() {
                assert_eq!(p.prefix(n), *want, "{raw} prefix {n}");
                assert_eq!(p.suffix(n), suffixes[n], "{raw} suffix {n}");
            }
            assert_eq!(
                p.prefix(9),
                p.relative(),
                "{raw}: past the end is all of it"
            );
            assert_eq!(p.suffix(9), "", "{raw}");
        }
    }

    #[test]
    fn display_round_trips() {
        for raw in ["/", "/docs/", "/a/b.html", "/with%20space.html", "/%C3%A9"] {
            let p = SitePath::parse(raw).unwrap();
            assert_eq!(p.to_string(), raw);
            assert_eq!(SitePath::parse(&p.to_string()).unwrap(), p);
        }
    }

    /// Confinement over a generated corpus: whatever the input, an accepted path never has a
    /// segment that climbs or hides a separator.
    #[test]
    fn no_input_escapes_the_site() {
        let pieces = [
            "a", ".", "..", "%2e", "%2E%2e", "%2f", "/", "\\", "%5C", "%00", "%", "%zz", "é",
            "%c3", "~", "",
        ];
        let mut checked = 0;
        for a in pieces {
            for b in pieces {
                for c in pieces {
                    let raw = format!("/{a}{b}/{c}");
                    if let Ok(p) = SitePath::parse(&raw) {
                        for s in p.segments() {
                            assert!(!s.is_empty() && s != "." && s != "..", "{raw:?} → {s:?}");
                            assert!(!s.contains('/') && !s.contains('\\') && !s.contains('\0'));
                        }
                        checked += 1;
                    }
                }
            }
        }
        assert!(checked > 100);
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use crate::{DeploymentId, ObjectLayout};
    use proptest::prelude::*;

    fn confined(raw: &str) {
        let Ok(p) = SitePath::parse(raw) else { return };
        let id = DeploymentId::parse("k3f9q2m8x1ab").unwrap();
        let key = ObjectLayout::new("pre").site_file(&id, p.relative());
        let rest = key
            .strip_prefix("pre/sites/k3f9q2m8x1ab/")
            .expect("key outside the site");
        if p.segment_count() > 0 {
            for seg in rest.split('/') {
                assert!(
                    !seg.is_empty() && seg != "." && seg != "..",
                    "{raw:?} → {key:?}"
                );
                assert!(
                    !seg.contains('\\') && !seg.contains('\0'),
                    "{raw:?} → {key:?}"
                );
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]
        /// Any string at all.
        #[test]
        fn arbitrary_input_stays_in_the_site(raw in "\\PC*") {
            confined(&raw);
        }

        /// Strings built from the pieces attacks are made of.
        #[test]
        fn hostile_pieces_stay_in_the_site(
            pieces in proptest::collection::vec(
                prop_oneof![
                    Just("/"), Just("."), Just(".."), Just("%2e"), Just("%2E"), Just("%2f"),
                    Just("%5c"), Just("\\"), Just("%00"), Just("%"), Just("%25"), Just("a"),
                    Just("é"), Just("%c3%a9"), Just("~"), Just("%252e"),
                ],
                0..12,
            )
        ) {
            confined(&format!("/{}", pieces.concat()));
        }
    }

    #[test]
    fn relative_paths_table() {
        for ok in [
            "index.html",
            "a/b/c.js",
            "with space.html",
            "ünï/code.txt",
            ".well-known/x",
        ] {
            assert_eq!(check_relative_path(ok), Ok(()), "{ok}");
        }
        let long = "a".repeat(1025);
        for bad in [
            "",
            "/index.html",
            "a/",
            "a//b",
            "./a",
            "a/../b",
            "..",
            "a\\b",
            "a\0b",
            "a\nb",
            &long,
        ] {
            assert!(check_relative_path(bad).is_err(), "{bad:?}");
        }
    }
}
