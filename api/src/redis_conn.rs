//! Talking to Redis, for the store, the log bus and the task side alike: one way to open a
//! client, response and connection timeouts, and what an outage is and how writes wait it out.

use std::io;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// A Redis error as I/O: an outage (see [`is_transient`]) is `NotConnected`, which the API
/// answers 503 rather than 500.
pub(crate) fn io_err(e: redis::RedisError) -> io::Error {
    let kind = if is_transient(&e) {
        io::ErrorKind::NotConnected
    } else {
        io::ErrorKind::Other
    };
    io::Error::new(kind, format!("redis: {e}"))
}

/// How long a write waits for Redis to come back (a restart, a failover) before it fails.
const OUTAGE: Duration = Duration::from_secs(120);

/// Whether `e` says Redis is away for a moment (connection refused or dropped, a timeout, still
/// loading its data after a restart) rather than that it refused the command.
pub(crate) fn is_transient(e: &redis::RedisError) -> bool {
    use redis::RetryMethod;
    e.is_connection_refusal()
        || e.is_connection_dropped()
        || e.is_timeout()
        || matches!(
            e.retry_method(),
            RetryMethod::Reconnect | RetryMethod::RetryImmediately | RetryMethod::WaitAndRetry
        )
}

/// Runs a write until Redis answers it, waiting out an outage of up to [`OUTAGE`] with backoff;
/// an error that is not an outage is returned at once. Each attempt must be safe to repeat.
pub(crate) async fn through_outage<T, F, Fut>(
    what: &str,
    mut attempt: F,
) -> Result<T, redis::RedisError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, redis::RedisError>>,
{
    let deadline = tokio::time::Instant::now() + OUTAGE;
    let mut backoff = Duration::from_millis(20);
    let mut warned = false;
    loop {
        match attempt().await {
            Err(e) if is_transient(&e) && tokio::time::Instant::now() < deadline => {
                if !warned {
                    tracing::warn!("redis unavailable for {what}, retrying: {e}");
                    warned = true;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
            result => return result,
        }
    }
}

/// Connects with a response timeout suited to ordinary commands.
pub(crate) async fn manager(client: &redis::Client) -> io::Result<ConnectionManager> {
    let config = ConnectionManagerConfig::new()
        .set_response_timeout(Some(Duration::from_secs(5)))
        .set_connection_timeout(Some(Duration::from_secs(5)));
    client
        .get_connection_manager_with_config(config)
        .await
        .map_err(io_err)
}

/// The environment variable naming a CA certificate file (PEM) that `rediss://` connections
/// trust instead of the system's roots (a private Redis with a certificate of its own CA).
pub const CA_FILE_ENV: &str = "GITDEPLOY_REDIS_CA_FILE";

/// The CA `rediss://` connections trust, once set (see [`trust_ca_file`]).
static TRUSTED_CA: std::sync::OnceLock<Option<Vec<u8>>> = std::sync::OnceLock::new();

/// Makes `rediss://` connections of this process trust the CA certificate in `path` (PEM)
/// instead of the system's roots; without a call, [`CA_FILE_ENV`] names it, if set. Call it
/// before the first connection.
pub fn trust_ca_file(path: &std::path::Path) -> io::Result<()> {
    let pem = std::fs::read(path).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot read the Redis CA file {}: {e}", path.display()),
        )
    })?;
    let _ = TRUSTED_CA.set(Some(pem));
    Ok(())
}

fn trusted_ca() -> io::Result<Option<Vec<u8>>> {
    if let Some(ca) = TRUSTED_CA.get() {
        return Ok(ca.clone());
    }
    match std::env::var_os(CA_FILE_ENV) {
        Some(path) if !path.is_empty() => {
            trust_ca_file(std::path::Path::new(&path))?;
            Ok(TRUSTED_CA.get().cloned().flatten())
        }
        _ => Ok(None),
    }
}

pub(crate) fn client(url: &str) -> io::Result<redis::Client> {
    client_for(url)
}

/// A client for `info`: over TLS for `rediss://` (trusting the configured CA, else the
/// system's roots), in the clear otherwise.
pub(crate) fn client_for<T: redis::IntoConnectionInfo>(info: T) -> io::Result<redis::Client> {
    let invalid = |e: redis::RedisError| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid Redis URL: {e}"),
        )
    };
    let info = info.into_connection_info().map_err(invalid)?;
    let tls = matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. });
    match (tls, trusted_ca()?) {
        (true, Some(root)) => redis::Client::build_with_tls(
            info,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(root),
            },
        )
        .map_err(invalid),
        _ => redis::Client::open(info).map_err(invalid),
    }
}
