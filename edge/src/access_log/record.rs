//! One access-log record and its JSON line. Every field that comes from the client (host,
//! path, user agent, referer) is cut to a bounded length and escaped by the JSON encoder, so a
//! hostile request can neither forge a second record nor make one unbounded. The query string
//! is left out: links carry tokens in it.

use std::fmt;
use std::net::IpAddr;

use gitdeploy_core::text::clip;
use serde::Serialize;

/// Longest host kept (a DNS name has at most 253 characters).
const MAX_HOST: usize = 255;
/// Longest path kept.
const MAX_PATH: usize = 2048;
/// Longest user agent and referer kept.
const MAX_HEADER: usize = 512;

/// What the log says about one request.
#[derive(Serialize, Debug)]
pub struct Record<'a> {
    /// When the request ended, as RFC 3339 UTC with milliseconds.
    #[serde(serialize_with = "rfc3339_ms")]
    pub time: u64,
    /// The requested host, normalised (lower case, no port) when valid, as sent otherwise.
    #[serde(serialize_with = "clipped_host")]
    pub host: &'a str,
    /// The project served, when the request reached one.
    pub project: Option<&'a str>,
    /// The deployment served, when the request reached one.
    pub deployment: Option<&'a str>,
    /// `GET`, `HEAD`, …
    pub method: &'a str,
    /// The path as requested (still percent-encoded), without the query string.
    #[serde(serialize_with = "clipped_path")]
    pub path: &'a str,
    /// `HTTP/1.1`, `HTTP/2`.
    pub protocol: &'static str,
    /// The status sent; 0 when the client left before a response.
    pub status: u16,
    /// Body bytes sent.
    pub bytes: u64,
    /// From the request's arrival to its end, in milliseconds.
    pub duration_ms: f64,
    /// The object cache: `hit`, `miss`, or `none` (answered without an object).
    pub cache: &'static str,
    /// The client, behind the trusted proxies.
    pub client: Option<IpAddr>,
    /// The `User-Agent` header.
    #[serde(serialize_with = "clipped_header")]
    pub user_agent: Option<&'a str>,
    /// The `Referer` header.
    #[serde(serialize_with = "clipped_header")]
    pub referer: Option<&'a str>,
}

impl Record<'_> {
    /// The record as one JSON line, newline included.
    pub fn to_line(&self) -> Vec<u8> {
        let mut line = Vec::with_capacity(320);
        serde_json::to_writer(&mut line, self).expect("a record always serializes");
        line.push(b'\n');
        line
    }
}

fn clipped_host<S: serde::Serializer>(s: &&str, ser: S) -> Result<S::Ok, S::Error> {
    ser.serialize_str(clip(s, MAX_HOST))
}

fn clipped_path<S: serde::Serializer>(s: &&str, ser: S) -> Result<S::Ok, S::Error> {
    ser.serialize_str(clip(s, MAX_PATH))
}

fn clipped_header<S: serde::Serializer>(s: &Option<&str>, ser: S) -> Result<S::Ok, S::Error> {
    match s {
        Some(s) => ser.serialize_some(clip(s, MAX_HEADER)),
        None => ser.serialize_none(),
    }
}

fn rfc3339_ms<S: serde::Serializer>(ms: &u64, ser: S) -> Result<S::Ok, S::Error> {
    ser.collect_str(&Rfc3339Ms(*ms))
}

/// A Unix time in milliseconds shown as `2026-12-03T05:33:42.120Z`.
pub struct Rfc3339Ms(pub u64);

impl fmt::Display for Rfc3339Ms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (year, month, day, hour) = civil_hour(self.0);
        let in_hour = self.0 % 3_600_000;
        write!(
            f,
            "{year:04}-{month:02}-{day:02}T{hour:02}:{:02}:{:02}.{:03}Z",
            in_hour / 60_000,
            in_hour / 1000 % 60,
            in_hour % 1000
        )
    }
}

/// The UTC calendar date and hour of a Unix time in milliseconds (days to civil date after
/// Howard Hinnant's algorithm, valid for every time after 1970).
pub fn civil_hour(unix_ms: u64) -> (u64, u64, u64, u64) {
    let secs = unix_ms / 1000;
    let hour = secs / 3600 % 24;
    let z = secs / 86_400 + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day, hour)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record<'a>(path: &'a str, user_agent: Option<&'a str>) -> Record<'a> {
        Record {
            time: 1_796_276_022_120,
            host: "my-site.example.com",
            project: Some("my-site"),
            deployment: Some("k3f9q2m8x1ab"),
            method: "GET",
            path,
            protocol: "HTTP/1.1",
            status: 200,
            bytes: 1234,
            duration_ms: 0.25,
            cache: "hit",
            client: Some("198.51.100.7".parse().unwrap()),
            user_agent,
            referer: None,
        }
    }

    #[test]
    fn times_table() {
        for (ms, want) in [
            (0, "1970-01-01T00:00:00.000Z"),
            (951_782_400_000, "2000-02-29T00:00:00.000Z"),
            (1_796_276_022_120, "2026-12-03T05:33:42.120Z"),
            (1_798_761_599_999, "2026-12-31T23:59:59.999Z"),
            (1_798_761_600_000, "2027-01-01T00:00:00.000Z"),
            (4_107_542_400_000, "2100-03-01T00:00:00.000Z"),
        ] {
            assert_eq!(Rfc3339Ms(ms).to_string(), want, "{ms}");
            // The same instant as the `time` crate sees it.
            let t = time::OffsetDateTime::from_unix_timestamp((ms / 1000) as i64).unwrap();
            assert_eq!(
                civil_hour(ms),
                (
                    t.year() as u64,
                    t.month() as u64,
                    u64::from(t.day()),
                    u64::from(t.hour())
                )
            );
        }
    }

    #[test]
    fn one_line_of_json() {
        let line = record("/docs/a%20b.html", Some("curl/8.5")).to_line();
        assert_eq!(line.last(), Some(&b'\n'));
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "time": "2026-12-03T05:33:42.120Z", "host": "my-site.example.com",
                "project": "my-site", "deployment": "k3f9q2m8x1ab", "method": "GET",
                "path": "/docs/a%20b.html", "protocol": "HTTP/1.1", "status": 200, "bytes": 1234,
                "duration_ms": 0.25, "cache": "hit", "client": "198.51.100.7",
                "user_agent": "curl/8.5", "referer": null
            })
        );
    }

    #[test]
    fn hostile_fields_stay_one_bounded_line() {
        let forged = "x\n{\"status\":200}\u{0}\"";
        let long = "é".repeat(5000);
        for (path, agent) in [(forged, Some(forged)), (long.as_str(), Some(long.as_str()))] {
            let line = record(path, agent).to_line();
            assert_eq!(line.iter().filter(|b| **b == b'\n').count(), 1);
            assert!(line.len() < MAX_PATH + MAX_HEADER + 1024, "{}", line.len());
            let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
            assert!(path.starts_with(v["path"].as_str().unwrap()));
            assert!(agent
                .unwrap()
                .starts_with(v["user_agent"].as_str().unwrap()));
        }
    }
}
