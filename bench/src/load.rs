//! Load generation with `wrk`: a Lua script that walks the given paths with the given headers,
//! and the parsing of wrk's summary.

use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};

/// What to request and how hard.
#[derive(Clone)]
pub struct Load {
    paths: Vec<String>,
    duration: Duration,
    connections: u32,
    encoding: String,
    /// One `If-None-Match` value per path, or none.
    if_none_match: Vec<String>,
    if_modified_since: bool,
    /// Every request on a new connection (`Connection: close`).
    close: bool,
}

impl Load {
    /// Requests for `paths` in turn.
    pub fn new(paths: Vec<String>, duration: Duration, connections: u32) -> Self {
        Load {
            paths,
            duration,
            connections,
            encoding: "identity".into(),
            if_none_match: Vec::new(),
            if_modified_since: false,
            close: false,
        }
    }

    /// Each request on a connection of its own (over TLS: one full handshake per request).
    pub fn with_close(&self) -> Self {
        Load {
            close: true,
            ..self.clone()
        }
    }

    /// The paths requested.
    pub fn paths(&self) -> &[String] {
        &self.paths
    }

    /// How long it runs.
    pub fn duration(&self) -> Duration {
        self.duration
    }

    /// Connections it keeps open.
    pub fn connections(&self) -> u32 {
        self.connections
    }

    /// With this `Accept-Encoding`.
    pub fn with_encoding(&self, encoding: &str) -> Self {
        Load {
            encoding: encoding.into(),
            ..self.clone()
        }
    }

    /// Conditional requests with these ETags (one per path).
    pub fn with_if_none_match(&self, etags: Vec<String>) -> Self {
        Load {
            if_none_match: etags,
            ..self.clone()
        }
    }

    /// Conditional requests by date (a date in the future, so every answer is 304).
    pub fn with_if_modified_since(&self) -> Self {
        Load {
            if_modified_since: true,
            ..self.clone()
        }
    }

    fn script(&self, host: &str) -> String {
        let quote = |s: &str| format!("{s:?}");
        let paths: Vec<String> = self.paths.iter().map(|p| quote(p)).collect();
        let etags: Vec<String> = self.if_none_match.iter().map(|e| quote(e)).collect();
        format!(
            r#"
local paths = {{{paths}}}
local etags = {{{etags}}}
local i = 0
request = function()
  i = i + 1
  local n = (i % #paths) + 1
  local headers = {{ ["Host"] = {host}, ["Accept-Encoding"] = {encoding} }}
  if #etags > 0 then headers["If-None-Match"] = etags[n] end
  if {ims} then headers["If-Modified-Since"] = "Fri, 01 Jan 2100 00:00:00 GMT" end
  if {close} then headers["Connection"] = "close" end
  return wrk.format("GET", paths[n], headers)
end
"#,
            paths = paths.join(", "),
            etags = etags.join(", "),
            host = quote(host),
            encoding = quote(&self.encoding),
            ims = self.if_modified_since,
            close = self.close,
        )
    }
}

/// wrk's summary of one run.
#[derive(Clone, Debug, Default)]
pub struct WrkResult {
    /// Requests per second.
    pub requests_per_sec: f64,
    /// Median latency as wrk prints it.
    pub p50: String,
    /// 99th percentile latency as wrk prints it.
    pub p99: String,
    /// Bytes per second as wrk prints it.
    pub transfer_per_sec: String,
    /// Socket errors plus non-2xx/3xx answers.
    pub errors: u64,
    /// Requests completed.
    pub requests: u64,
}

/// Runs wrk against `addr` (host:port) with `Host: host`.
pub fn wrk(addr: &str, host: &str, load: &Load) -> anyhow::Result<WrkResult> {
    wrk_url(&format!("http://{addr}/"), host, load)
}

/// Runs wrk over HTTPS (HTTP/1.1) against `authority` (a name:port whose name is the SNI).
pub fn wrk_tls(authority: &str, host: &str, load: &Load) -> anyhow::Result<WrkResult> {
    wrk_url(&format!("https://{authority}/"), host, load)
}

fn wrk_url(url: &str, host: &str, load: &Load) -> anyhow::Result<WrkResult> {
    let dir = tempfile::tempdir()?;
    let script = dir.path().join("load.lua");
    std::fs::write(&script, load.script(host))?;
    let out = Command::new("wrk")
        .args([
            "-t2",
            &format!("-c{}", load.connections),
            &format!("-d{}s", load.duration.as_secs()),
        ])
        .args(["--latency", "--timeout", "10s", "-s"])
        .arg(&script)
        .arg(url)
        .output()
        .context("running wrk (apt-get install wrk)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("wrk failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    }
    parse(&text)
}

/// Parses wrk's `--latency` output.
pub fn parse(text: &str) -> anyhow::Result<WrkResult> {
    let mut r = WrkResult::default();
    for line in text.lines().map(str::trim) {
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("50%"), Some(v)) => r.p50 = v.to_owned(),
            (Some("99%"), Some(v)) => r.p99 = v.to_owned(),
            (Some("Requests/sec:"), Some(v)) => {
                r.requests_per_sec = v.parse().context("Requests/sec")?
            }
            (Some("Transfer/sec:"), Some(v)) => r.transfer_per_sec = v.to_owned(),
            _ => {}
        }
        if let (Some(n), Some("requests"), Some("in")) = (
            line.split_whitespace().next(),
            line.split_whitespace().nth(1),
            line.split_whitespace().nth(2),
        ) {
            r.requests = n.parse().unwrap_or(0);
        }
        if let Some(rest) = line.strip_prefix("Non-2xx or 3xx responses:") {
            r.errors += rest.trim().parse::<u64>().unwrap_or(0);
        }
        if let Some(rest) = line.strip_prefix("Socket errors:") {
            r.errors += rest
                .split(',')
                .filter_map(|part| part.split_whitespace().last()?.parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    if r.p50.is_empty() || r.requests_per_sec == 0.0 {
        bail!("unreadable wrk output: {text}");
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_wrk_output() {
        let text = "Running 10s test @ http://127.0.0.1:8080/
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.20ms  500.00us  20.00ms   90.00%
  Latency Distribution
     50%    1.10ms
     75%    1.40ms
     90%    1.80ms
     99%    3.20ms
  500000 requests in 10.00s, 1.00GB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:  50000.12
Transfer/sec:    102.40MB
";
        let r = parse(text).unwrap();
        assert_eq!((r.p50.as_str(), r.p99.as_str()), ("1.10ms", "3.20ms"));
        assert_eq!(r.requests_per_sec, 50000.12);
        assert_eq!(r.transfer_per_sec, "102.40MB");
        assert_eq!(r.errors, 7);
        assert_eq!(r.requests, 500000);
        assert!(parse("garbage").is_err());
    }

    #[test]
    fn script_walks_paths_with_headers() {
        let load = Load::new(
            vec!["/a.js".into(), "/b.css".into()],
            Duration::from_secs(1),
            1,
        )
        .with_encoding("br")
        .with_if_none_match(vec!["\"x\"".into(), "\"y\"".into()]);
        let script = load.script("abc.localhost");
        assert!(
            script.contains(r#"local paths = {"/a.js", "/b.css"}"#),
            "{script}"
        );
        assert!(script.contains(r#"["Host"] = "abc.localhost""#));
        assert!(
            script.contains(r#"local etags = {"\"x\"", "\"y\""}"#),
            "{script}"
        );
    }
}
