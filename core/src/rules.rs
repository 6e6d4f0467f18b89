//! A site's serving rules from `_redirects` and `_headers` files (the Netlify / Cloudflare Pages
//! format). The builder parses them into the manifest; the edge matches them in memory.
//!
//! `_redirects`: one rule a line, `from to [status][!]`. `from` is a path pattern with `:name`
//! placeholders (one segment each) and an optional trailing `*` splat; `to` may use `:name` and
//! `:splat`. Statuses 301 (default), 302, 307, 308 redirect; 200 rewrites to another file of the
//! site. `!` forces the rule even when a file exists at `from`. The request's query string is
//! passed on when `to` has none.
//!
//! `_headers`: a path pattern on its own line, then indented `Name: value` lines.

use std::fmt;

use percent_encoding::percent_decode_str;
use serde::{Deserialize, Serialize};

use crate::path::{encode_path, SitePath};

/// Most redirect rules a site may have.
pub const MAX_REDIRECTS: usize = 2000;
/// Most header rules a site may have.
pub const MAX_HEADER_RULES: usize = 500;

/// Headers a site may not set: the edge owns framing, encoding and validators.
const RESERVED_HEADERS: &[&str] = &[
    "content-length",
    "content-encoding",
    "content-range",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "etag",
    "vary",
    "accept-ranges",
    "date",
    "server",
];

/// A problem in a rules file, reported in the build log; the line is skipped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param(String),
}

/// A path pattern such as `/blog/:year/:slug` or `/docs/*`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PathPattern {
    source: String,
    segments: Vec<Segment>,
    splat: bool,
}

/// What a pattern captured: named segments and the splat.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Captures {
    params: Vec<(String, String)>,
    splat: Option<String>,
}

impl PathPattern {
    /// Parses a pattern; it must start with `/` and may end in `*`.
    pub fn parse(source: &str) -> Result<Self, String> {
        let rest = source
            .strip_prefix('/')
            .ok_or_else(|| format!("pattern {source:?} must start with '/'"))?;
        let (rest, splat) = match rest.strip_suffix('*') {
            Some(r) => (r, true),
            None => (rest, false),
        };
        if rest.contains('*') {
            return Err(format!("pattern {source:?} may only end in '*'"));
        }
        let mut segments = Vec::new();
        for raw in rest.split('/').filter(|s| !s.is_empty()) {
            if let Some(name) = raw.strip_prefix(':') {
                if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                {
                    return Err(format!("bad placeholder {raw:?}"));
                }
                segments.push(Segment::Param(name.to_owned()));
            } else {
                let decoded = percent_decode_str(raw)
                    .decode_utf8()
                    .map_err(|_| format!("pattern segment {raw:?} is not UTF-8"))?;
                segments.push(Segment::Literal(decoded.into_owned()));
            }
        }
        Ok(PathPattern {
            source: source.to_owned(),
            segments,
            splat,
        })
    }

    /// Matches a request's decoded segments.
    pub fn matches(&self, path: &SitePath) -> Option<Captures> {
        let count = path.segment_count();
        if count < self.segments.len() || (!self.splat && count != self.segments.len()) {
            return None;
        }
        let mut captures = Captures::default();
        for (seg, actual) in self.segments.iter().zip(path.segments()) {
            match seg {
                Segment::Literal(l) if l == actual => {}
                Segment::Literal(_) => return None,
                Segment::Param(name) => captures.params.push((name.clone(), actual.to_owned())),
            }
        }
        if self.splat {
            captures.splat = Some(path.suffix(self.segments.len()).to_owned());
        }
        Some(captures)
    }
}

impl TryFrom<String> for PathPattern {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        PathPattern::parse(&s)
    }
}

impl From<PathPattern> for String {
    fn from(p: PathPattern) -> String {
        p.source
    }
}

/// One `_redirects` rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RedirectRule {
    /// Request pattern.
    pub from: PathPattern,
    /// Target path or absolute URL, with `:name` / `:splat` to substitute.
    pub to: String,
    /// 301, 302, 307, 308, or 200 for a rewrite.
    pub status: u16,
    /// Applies even when a file exists at the path.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub force: bool,
}

impl RedirectRule {
    /// The target for `captures`, placeholders substituted (percent-encoded) and the request
    /// query appended when the target has none.
    pub fn target(&self, captures: &Captures, query: Option<&str>) -> String {
        let mut out = String::with_capacity(self.to.len());
        let mut rest = self.to.as_str();
        while let Some(i) = rest.find(':') {
            out.push_str(&rest[..i]);
            let after = &rest[i + 1..];
            let len = after
                .bytes()
                .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
                .count();
            let name = &after[..len];
            let value = if name == "splat" {
                captures.splat.as_deref()
            } else {
                captures
                    .params
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, v)| v.as_str())
            };
            match value {
                Some(v) if len > 0 => out.push_str(&encode_path(v)),
                _ => {
                    out.push(':');
                    out.push_str(name);
                }
            }
            rest = &after[len..];
        }
        out.push_str(rest);
        match query {
            Some(q) if !q.is_empty() && !out.contains('?') => format!("{out}?{q}"),
            _ => out,
        }
    }
}

/// One `_headers` rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeaderRule {
    /// Paths it applies to.
    pub path: PathPattern,
    /// Headers to set, in file order.
    pub headers: Vec<(String, String)>,
}

/// Parses `_redirects`; bad lines are returned as errors and skipped.
pub fn parse_redirects(text: &str) -> (Vec<RedirectRule>, Vec<RuleError>) {
    let mut rules = Vec::new();
    let mut errors = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let err = |message: String| RuleError {
            line: i + 1,
            message,
        };
        if rules.len() == MAX_REDIRECTS {
            errors.push(err(format!(
                "more than {MAX_REDIRECTS} rules; the rest are ignored"
            )));
            break;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (from, to, status) = match fields.as_slice() {
            [from, to] => (*from, *to, "301"),
            [from, to, status] => (*from, *to, *status),
            _ => {
                errors.push(err(format!(
                    "expected `from to [status]`, found {} fields",
                    fields.len()
                )));
                continue;
            }
        };
        let (status, force) = match status.strip_suffix('!') {
            Some(s) => (s, true),
            None => (status, false),
        };
        let status = match status.parse::<u16>() {
            Ok(s @ (200 | 301 | 302 | 307 | 308)) => s,
            _ => {
                errors.push(err(format!(
                    "status {status:?} is not one of 200, 301, 302, 307, 308"
                )));
                continue;
            }
        };
        let from = match PathPattern::parse(from) {
            Ok(p) => p,
            Err(e) => {
                errors.push(err(e));
                continue;
            }
        };
        let external = to.starts_with("http://") || to.starts_with("https://");
        if !external && !to.starts_with('/') {
            errors.push(err(format!(
                "target {to:?} must start with '/' or http(s)://"
            )));
            continue;
        }
        if external && status == 200 {
            errors.push(err("a 200 rewrite must point inside the site".into()));
            continue;
        }
        if to.chars().any(|c| c.is_control()) {
            errors.push(err("target contains control characters".into()));
            continue;
        }
        rules.push(RedirectRule {
            from,
            to: to.to_owned(),
            status,
            force,
        });
    }
    (rules, errors)
}

/// Parses `_headers`; bad lines are returned as errors and skipped.
pub fn parse_headers(text: &str) -> (Vec<HeaderRule>, Vec<RuleError>) {
    let mut rules: Vec<HeaderRule> = Vec::new();
    let mut errors = Vec::new();
    let mut current: Option<HeaderRule> = None;
    for (i, raw) in text.lines().enumerate() {
        let err = |message: String| RuleError {
            line: i + 1,
            message,
        };
        if raw.trim().is_empty() || raw.trim_start().starts_with('#') {
            continue;
        }
        let indented = raw.starts_with(' ') || raw.starts_with('\t');
        let line = raw.trim();
        if !indented {
            if let Some(rule) = current.take() {
                rules.push(rule);
            }
            if rules.len() == MAX_HEADER_RULES {
                errors.push(err(format!(
                    "more than {MAX_HEADER_RULES} rules; the rest are ignored"
                )));
                break;
            }
            match PathPattern::parse(line) {
                Ok(path) => {
                    current = Some(HeaderRule {
                        path,
                        headers: Vec::new(),
                    })
                }
                Err(e) => errors.push(err(e)),
            }
            continue;
        }
        let Some(rule) = current.as_mut() else {
            errors.push(err("header line before any path".into()));
            continue;
        };
        let Some((name, value)) = line.split_once(':') else {
            errors.push(err(format!("expected `Name: value`, found {line:?}")));
            continue;
        };
        let name = name.trim().to_ascii_lowercase();
        let value = value.trim();
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        {
            errors.push(err(format!("{name:?} is not a valid header name")));
        } else if RESERVED_HEADERS.contains(&name.as_str()) {
            errors.push(err(format!(
                "{name} is set by GitDeploy and cannot be overridden"
            )));
        } else if value.bytes().any(|b| b < 0x20 && b != b'\t' || b == 0x7f) {
            errors.push(err(format!("the value of {name} has control characters")));
        } else {
            rule.headers.push((name, value.to_owned()));
        }
    }
    if let Some(rule) = current.take() {
        rules.push(rule);
    }
    (rules, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segs(path: &str) -> SitePath {
        SitePath::parse(path).unwrap()
    }

    #[test]
    fn pattern_table() {
        for (pattern, path, want) in [
            ("/old", "/old", Some("")),
            ("/old", "/old/", Some("")),
            ("/old", "/older", None),
            (
                "/blog/:year/:slug",
                "/blog/2024/hello",
                Some("year=2024 slug=hello"),
            ),
            ("/blog/:year/:slug", "/blog/2024", None),
            ("/docs/*", "/docs/a/b/c", Some("*=a/b/c")),
            ("/docs/*", "/docs", Some("*=")),
            ("/*", "/anything/at/all", Some("*=anything/at/all")),
            ("/a%20b", "/a b", Some("")),
        ] {
            let p = PathPattern::parse(pattern).unwrap();
            let got = p.matches(&segs(path)).map(|c| {
                let mut parts: Vec<String> =
                    c.params.iter().map(|(k, v)| format!("{k}={v}")).collect();
                if let Some(s) = c.splat {
                    parts.push(format!("*={s}"));
                }
                parts.join(" ")
            });
            assert_eq!(got.as_deref(), want, "{pattern} vs {path}");
        }
        for bad in ["old", "/a/*/b", "/:", "/:a-b"] {
            assert!(PathPattern::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn redirects_parse_and_substitute() {
        let text = "\
# comment
/old          /new
/blog/:y/:s   /posts/:y-:s   302
/docs/*       /v2/docs/:splat 308!
/app/*        /index.html    200
/ext          https://example.com/x?ref=gd 307
/bad
/worse  /x  418
/evil   https://evil.example/  200
/nope   relative 301
";
        let (rules, errors) = parse_redirects(text);
        assert_eq!(rules.len(), 5);
        assert_eq!(
            errors.iter().map(|e| e.line).collect::<Vec<_>>(),
            [7, 8, 9, 10],
            "{errors:?}"
        );
        assert_eq!((rules[0].status, rules[0].force), (301, false));
        assert_eq!((rules[2].status, rules[2].force), (308, true));
        let cap = rules[1]
            .from
            .matches(&segs("/blog/2024/hello world"))
            .unwrap();
        assert_eq!(
            rules[1].target(&cap, Some("a=1")),
            "/posts/2024-hello%20world?a=1"
        );
        let cap = rules[2].from.matches(&segs("/docs/a/b")).unwrap();
        assert_eq!(rules[2].target(&cap, None), "/v2/docs/a/b");
        let cap = rules[4].from.matches(&segs("/ext")).unwrap();
        assert_eq!(
            rules[4].target(&cap, Some("q=1")),
            "https://example.com/x?ref=gd"
        );
    }

    #[test]
    fn headers_parse() {
        let text = "\
/*
  X-Frame-Options: DENY
  Referrer-Policy: no-referrer
/assets/*
  Cache-Control: public, max-age=60
  Content-Length: 5
  Bad Header: x
  no colon here
  X-Evil: a\u{1}b
  X-Doubled: one: two
  Access-Control-Allow-Origin: *
";
        let (rules, errors) = parse_headers(text);
        assert_eq!(rules.len(), 2);
        assert_eq!(
            rules[0].headers[0],
            ("x-frame-options".into(), "DENY".into())
        );
        assert_eq!(
            rules[1].headers,
            [
                ("cache-control".into(), "public, max-age=60".into()),
                ("x-doubled".into(), "one: two".into()),
                ("access-control-allow-origin".into(), "*".into())
            ]
        );
        assert_eq!(
            errors.iter().map(|e| e.line).collect::<Vec<_>>(),
            [6, 7, 8, 9]
        );
        let (_, errors) = parse_headers("  X-A: b\n");
        assert_eq!(errors[0].line, 1);
    }

    #[test]
    fn rules_round_trip_through_json() {
        let (rules, _) = parse_redirects("/blog/:y/* /p/:y/:splat 302!\n");
        let json = serde_json::to_string(&rules).unwrap();
        assert!(json.contains("\"/blog/:y/*\""), "{json}");
        let back: Vec<RedirectRule> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, rules);
    }
}
