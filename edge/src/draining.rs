//! The public port's draining flag: set once the port stops listening (a shutdown or a
//! graceful upgrade), after which every response closes its connection, so kept-alive clients
//! move to the new process. Its own module: the port sets it, the proxy reads it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Set once the public port stops listening: responses then close their connections.
#[derive(Clone, Debug, Default)]
pub struct Draining(Arc<AtomicBool>);

impl Draining {
    /// Whether the port is draining.
    pub fn is_on(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    pub(crate) fn start(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}
