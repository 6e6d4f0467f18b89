//! Access logs: one JSON line per request of the public port ([`record`]), written to a file or
//! stderr and, optionally, drained to S3 as hourly gzip NDJSON objects ([`drain`]). Off unless
//! configured; `--access-log-sample` keeps a fraction of the requests.
//!
//! The request path only serializes its record and offers it to a bounded queue
//! ([`AccessLog::log`]); a full queue drops the record (counted in
//! `gitdeploy_access_log_records_total{outcome="dropped"}`) rather than make a response wait. A
//! thread of its own writes ([`writer`]); the upload of sealed batches runs on the control
//! runtime. A graceful shutdown closes the queue once the public port stopped answering, then
//! waits for the last batch to be stored ([`Running::finish`]).

use std::net::IpAddr;
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Duration;

use prometheus::{IntCounter, IntCounterVec, Opts, Registry};

mod drain;
mod record;
mod sample;
mod writer;

pub use record::Record;
pub use writer::Destination;

use crate::origin::S3Origin;

/// Records the request path may queue before records are dropped (a few megabytes).
const QUEUE_RECORDS: usize = 16_384;
/// How long a shutdown waits for the last batches to be stored.
const FINISH_TIMEOUT: Duration = Duration::from_secs(30);

/// What is logged where.
#[derive(Clone, Debug, PartialEq)]
pub struct AccessLogSettings {
    /// The file (or stderr) lines are appended to.
    pub destination: Option<Destination>,
    /// The fraction of requests logged, in (0, 1].
    pub sample: f64,
    /// With the S3 drain: how long a batch collects records before it is stored.
    pub s3_interval: Option<Duration>,
}

impl AccessLogSettings {
    /// Settings from the flags (or the TOML keys of the same names): `file` is a path or `-`
    /// for stderr; `s3` turns the drain on. `None` when nothing is to be logged.
    pub fn new(
        file: Option<&str>,
        sample: f64,
        s3: bool,
        s3_interval: Duration,
    ) -> Result<Option<Self>, String> {
        if !(sample > 0.0 && sample <= 1.0) {
            return Err(format!(
                "access log sample rate {sample} is not in (0, 1] (0.1 logs one request in ten)"
            ));
        }
        if s3 && s3_interval.is_zero() {
            return Err("access log S3 interval must be at least one second".into());
        }
        let destination = match file {
            None => None,
            Some("") => return Err("access log file: name a file, or - for stderr".into()),
            Some("-") => Some(Destination::Stderr),
            Some(path) => Some(Destination::File(path.into())),
        };
        if destination.is_none() && !s3 {
            if sample < 1.0 {
                return Err(
                    "an access log sample rate needs an access log (a file, - or the S3 drain)"
                        .into(),
                );
            }
            return Ok(None);
        }
        Ok(Some(AccessLogSettings {
            destination,
            sample,
            s3_interval: s3.then_some(s3_interval),
        }))
    }
}

/// The request path's handle.
pub struct AccessLog {
    queue: SyncSender<writer::Message>,
    sampler: sample::Sampler,
    dropped: IntCounter,
}

/// The running writer and uploader, for a graceful shutdown.
pub struct Running {
    queue: SyncSender<writer::Message>,
    writer: std::thread::JoinHandle<()>,
    uploader: Option<tokio::task::JoinHandle<()>>,
}

/// Starts the writer (and, with the drain, the uploader on `rt`, storing through `origin`).
pub fn start(
    settings: &AccessLogSettings,
    origin: &Arc<S3Origin>,
    rt: &tokio::runtime::Runtime,
    registry: &Registry,
) -> anyhow::Result<(Arc<AccessLog>, Running)> {
    let records = IntCounterVec::new(
        Opts::new(
            "gitdeploy_access_log_records_total",
            "Access-log records by outcome: written (to the file or stderr), shipped (stored \
             in S3), dropped (a full queue, a failed write, an upload S3 kept refusing).",
        ),
        &["outcome"],
    )?;
    registry.register(Box::new(records.clone()))?;
    let [written, shipped, dropped] =
        ["written", "shipped", "dropped"].map(|o| records.with_label_values(&[o]));
    let output = settings
        .destination
        .clone()
        .map(writer::Output::open)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let counters = drain::DrainCounters {
        shipped,
        dropped: dropped.clone(),
    };
    let (batcher, uploader) = match settings.s3_interval {
        Some(interval) => {
            let (tx, rx) = tokio::sync::mpsc::channel(drain::QUEUE_BATCHES);
            let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
            let batcher = drain::Batcher::new(
                origin.layout().access_logs_prefix(),
                drain::edge_name(&hostname, std::process::id()),
                interval,
                tx,
                counters.clone(),
            );
            let uploader = rt.spawn(drain::upload(origin.clone(), rx, counters));
            (Some(batcher), Some(uploader))
        }
        None => (None, None),
    };
    let (queue, rx) = sync_channel(QUEUE_RECORDS);
    let writer_counters = writer::WriterCounters {
        written,
        dropped: dropped.clone(),
    };
    let writer = std::thread::Builder::new()
        .name("gitdeploy-access-log".into())
        .spawn(move || writer::run(rx, output, batcher, writer_counters))?;
    let log = Arc::new(AccessLog {
        queue: queue.clone(),
        sampler: sample::Sampler::new(settings.sample),
        dropped,
    });
    Ok((
        log,
        Running {
            queue,
            writer,
            uploader,
        },
    ))
}

impl AccessLog {
    /// Whether this request is to be logged (the sampling decision; ask once per request).
    pub fn wants(&self) -> bool {
        self.sampler.keep()
    }

    /// Offers a record to the writer; never waits.
    pub fn log(&self, record: &Record<'_>) {
        let message = writer::Message::Record {
            unix_ms: record.time,
            line: record.to_line(),
        };
        match self.queue.try_send(message) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => self.dropped.inc(),
        }
    }
}

impl Running {
    /// Writes what is queued, stores the last batch and waits (up to 30 s) for the uploads.
    /// Called once the public port no longer answers.
    pub fn finish(self, rt: &tokio::runtime::Runtime) {
        // The writer may be busy with a full queue: this waits its turn, which is the point.
        let _ = self.queue.send(writer::Message::Close);
        if self.writer.join().is_err() {
            tracing::error!("the access-log writer failed");
        }
        if let Some(uploader) = self.uploader {
            if rt
                .block_on(async { tokio::time::timeout(FINISH_TIMEOUT, uploader).await })
                .is_err()
            {
                tracing::error!(
                    "access-log batches were still uploading after {}s; they are lost",
                    FINISH_TIMEOUT.as_secs()
                );
            }
        }
    }
}

/// Now, in milliseconds since 1970.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What a request's record is built from, beside its session.
pub struct Served<'a> {
    /// The status sent (0: none).
    pub status: u16,
    /// The object cache's result.
    pub cache: &'static str,
    /// The host, normalised (`None`: answered before the host was read; the raw one is logged).
    pub host: Option<&'a str>,
    /// When the request arrived.
    pub started: std::time::Instant,
    /// The project it reached.
    pub project: Option<&'a str>,
    /// The deployment it reached.
    pub deployment: Option<&'a str>,
    /// The client behind the trusted proxies.
    pub client: Option<IpAddr>,
}

/// The record of the request in `session`.
pub fn log_request(log: &AccessLog, session: &pingora_proxy::Session, served: Served<'_>) {
    let req = session.req_header();
    let header = |name: http::header::HeaderName| {
        req.headers
            .get(name)
            .map(|v| std::str::from_utf8(v.as_bytes()).unwrap_or("(not UTF-8)"))
    };
    let host = served.host.unwrap_or_else(|| {
        header(http::header::HOST)
            .or(req.uri.authority().map(|a| a.as_str()))
            .unwrap_or("")
    });
    log.log(&Record {
        time: now_ms(),
        host,
        project: served.project,
        deployment: served.deployment,
        method: req.method.as_str(),
        path: req.uri.path(),
        protocol: match req.version {
            http::Version::HTTP_2 => "HTTP/2",
            http::Version::HTTP_10 => "HTTP/1.0",
            _ => "HTTP/1.1",
        },
        status: served.status,
        bytes: session.body_bytes_sent() as u64,
        duration_ms: (served.started.elapsed().as_micros() as f64) / 1000.0,
        cache: served.cache,
        client: served.client,
        user_agent: header(http::header::USER_AGENT),
        referer: header(http::header::REFERER),
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_table() {
        let s = Duration::from_secs;
        assert_eq!(AccessLogSettings::new(None, 1.0, false, s(60)), Ok(None));
        assert_eq!(
            AccessLogSettings::new(Some("-"), 0.5, false, s(60)),
            Ok(Some(AccessLogSettings {
                destination: Some(Destination::Stderr),
                sample: 0.5,
                s3_interval: None
            }))
        );
        assert_eq!(
            AccessLogSettings::new(None, 1.0, true, s(5)),
            Ok(Some(AccessLogSettings {
                destination: None,
                sample: 1.0,
                s3_interval: Some(s(5))
            }))
        );
        assert_eq!(
            AccessLogSettings::new(Some("/var/log/a.log"), 1.0, false, s(60))
                .unwrap()
                .unwrap()
                .destination,
            Some(Destination::File("/var/log/a.log".into()))
        );
        for (file, sample, s3, interval, why) in [
            (Some("-"), 0.0, false, 60, "sample rate"),
            (Some("-"), 1.5, false, 60, "sample rate"),
            (Some("-"), f64::NAN, false, 60, "sample rate"),
            (Some(""), 1.0, false, 60, "name a file"),
            (None, 0.5, false, 60, "needs an access log"),
            (None, 1.0, true, 0, "at least one second"),
        ] {
            let err = AccessLogSettings::new(file, sample, s3, s(interval)).unwrap_err();
            assert!(err.contains(why), "{file:?} {sample}: {err}");
        }
    }
}
