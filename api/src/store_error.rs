//! What went wrong with the state store, typed so that callers can act on it: a write that lost
//! to concurrent writers (the API answers 409 and the client may retry the change), a store that
//! cannot be reached for a moment (503 with `Retry-After`; a runner waits and tries again), and
//! everything else (500: a broken record or a bug). The backends speak `io::Error`; the
//! classification is here, once.

use std::io;

/// A failed state operation.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The record changed under every attempt, or the record to create already exists.
    #[error("{0}")]
    Conflict(String),
    /// The store cannot be reached right now (Redis restarting, a connection reset).
    #[error("the state store is unavailable: {0}")]
    Unavailable(io::Error),
    /// The store answered but the operation failed (a malformed record, a full disk).
    #[error("the state store failed: {0}")]
    Failed(io::Error),
}

impl StoreError {
    /// Whether trying again later may succeed without anything else changing.
    pub fn is_transient(&self) -> bool {
        !matches!(self, StoreError::Failed(_))
    }
}

/// The kinds of I/O failure that mean "not reachable now" rather than "broken".
fn is_outage(kind: io::ErrorKind) -> bool {
    use io::ErrorKind::*;
    matches!(
        kind,
        NotConnected
            | ConnectionRefused
            | ConnectionReset
            | ConnectionAborted
            | TimedOut
            | BrokenPipe
    )
}

impl From<io::Error> for StoreError {
    fn from(e: io::Error) -> Self {
        if is_outage(e.kind()) {
            StoreError::Unavailable(e)
        } else {
            StoreError::Failed(e)
        }
    }
}

/// For the code that treats every state failure alike (a runner's bookkeeping, which retries).
impl From<StoreError> for io::Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(message) => io::Error::new(io::ErrorKind::ResourceBusy, message),
            StoreError::Unavailable(e) | StoreError::Failed(e) => e,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_failures_are_classified() {
        use io::ErrorKind::*;
        for (kind, unavailable) in [
            (NotConnected, true),
            (ConnectionRefused, true),
            (ConnectionReset, true),
            (TimedOut, true),
            (BrokenPipe, true),
            (InvalidData, false),
            (StorageFull, false),
            (Other, false),
        ] {
            let e = StoreError::from(io::Error::new(kind, "x"));
            assert_eq!(
                matches!(e, StoreError::Unavailable(_)),
                unavailable,
                "{kind:?}"
            );
            assert_eq!(e.is_transient(), unavailable, "{kind:?}");
        }
        let conflict = StoreError::Conflict("busy".into());
        assert!(conflict.is_transient());
        assert_eq!(io::Error::from(conflict).kind(), ResourceBusy);
    }
}
