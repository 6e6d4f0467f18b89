//! The request-head rules: the guard over arbitrary reads and writes never panics, holds its
//! size cap, and answers every read as the byte-by-byte reference scan does (the line and
//! request-line runs are an optimisation of it); the host rule over arbitrary targets and Host
//! headers never panics.
#![no_main]
use std::time::{Duration, Instant};

use gitdeploy_core::head_guard::{Cutoff, HeadGuard, HeadLimits};
use gitdeploy_core::host::request_host;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = HeadLimits {
        idle: Duration::from_secs(60),
        head: Duration::from_secs(10),
        max_bytes: 512,
    };
    let t0 = Instant::now();
    let mut guard = HeadGuard::new(limits, t0);
    let mut reference = HeadGuard::new(limits, t0);
    // The first byte of each chunk says how long it is and whether a write follows it.
    let mut rest = data;
    // A head is never longer than everything read so far.
    let mut total = 0usize;
    while let Some((&control, tail)) = rest.split_first() {
        let len = usize::from(control & 0x3f).min(tail.len());
        let (chunk, after) = tail.split_at(len);
        rest = after;
        total += chunk.len();
        let answer = guard.on_read(chunk, t0);
        assert_eq!(answer, reference.on_read_byte_by_byte(chunk, t0));
        assert_eq!(guard.in_head(), reference.in_head());
        assert_eq!(guard.deadline(), reference.deadline());
        match answer {
            Ok(()) => {}
            Err(Cutoff::HeadTooLarge) => {
                assert!(total > limits.max_bytes, "{total}");
                break;
            }
            Err(_) => break,
        }
        if control & 0x40 != 0 {
            guard.on_write(b"HTTP/1.1 200 OK\r\n", t0);
            reference.on_write(b"HTTP/1.1 200 OK\r\n", t0);
        }
    }
    // The same bytes as a request target and two Host headers.
    let third = data.len() / 3;
    let (target, hosts) = data.split_at(third);
    let (a, b) = hosts.split_at(hosts.len() / 2);
    let authority = std::str::from_utf8(a).ok();
    let _ = request_host("GET", target, false, authority, &[a]);
    let _ = request_host(
        "OPTIONS",
        target,
        data.first() == Some(&b'2'),
        authority,
        &[a, b],
    );
});
