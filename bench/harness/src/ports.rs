//! Free loopback ports and waiting for a server to take one.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use crate::Process;

/// A port nobody listens on right now, for a server the caller starts.
///
/// Ports come from below the kernel's ephemeral range (which starts at 32768), so outgoing
/// connections of the tests and builds never take them between this check and the server's
/// bind; each process walks its own stretch, and hands each port out once, so parallel tests
/// never share one.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    const STRETCH: u16 = 200;
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 10_000 + (std::process::id() % 100) as u16 * STRETCH;
    for _ in 0..STRETCH {
        let port = base + NEXT.fetch_add(1, Ordering::Relaxed) % STRETCH;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {base}..{}", base + STRETCH)
}

/// Waits (bounded, with backoff) until `ready()` holds, failing at once if `process` exits.
pub fn wait_until(what: &str, process: &mut Process, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut backoff = Duration::from_millis(5);
    while !ready() {
        process.assert_running();
        assert!(
            Instant::now() < deadline,
            "{what} did not start within 60 s"
        );
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(Duration::from_millis(100));
    }
}

/// Waits until `addr` accepts connections.
pub fn wait_for_port(addr: SocketAddr, process: &mut Process, what: &str) {
    wait_until(what, process, || TcpStream::connect(addr).is_ok());
}
