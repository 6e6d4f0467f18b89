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

pub(crate) fn client(url: &str) -> io::Result<redis::Client> {
    redis::Client::open(url).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid Redis URL: {e}"),
        )
    })
}
