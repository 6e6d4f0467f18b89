//! Which requests are logged at a sampling rate: a counter, not a random draw, so a rate of
//! 0.01 keeps exactly one request in every hundred, evenly spaced, and a test can count them.

use std::sync::atomic::{AtomicU64, Ordering};

/// Keeps a fraction of the requests it is asked about.
#[derive(Debug)]
pub struct Sampler {
    rate: f64,
    seen: AtomicU64,
}

impl Sampler {
    /// Keeps `rate` of the requests (0 < rate ≤ 1, checked by the settings).
    pub fn new(rate: f64) -> Self {
        Sampler {
            rate,
            seen: AtomicU64::new(0),
        }
    }

    /// Whether this request is logged.
    pub fn keep(&self) -> bool {
        self.rate >= 1.0 || keeps(self.seen.fetch_add(1, Ordering::Relaxed), self.rate)
    }
}

/// Whether the `n`th request (from 0) is kept at `rate`: when the running count of kept
/// requests, ⌊(n + 1)·rate⌋, goes up at it.
pub fn keeps(n: u64, rate: f64) -> bool {
    ((n + 1) as f64 * rate).floor() > (n as f64 * rate).floor()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_table() {
        for (rate, window, kept) in [
            (1.0, 10, 10),
            (0.5, 10, 5),
            (0.25, 100, 25),
            (0.1, 1000, 100),
            (0.01, 1000, 10),
            (0.333, 1000, 333),
            (0.001, 999, 0),
            (0.001, 1000, 1),
        ] {
            let n = (0..window).filter(|n| keeps(*n, rate)).count();
            assert_eq!(n, kept, "rate {rate} over {window}");
        }
    }

    #[test]
    fn kept_requests_are_spread_evenly() {
        let kept: Vec<u64> = (0..40).filter(|n| keeps(*n, 0.25)).collect();
        assert_eq!(kept, [3, 7, 11, 15, 19, 23, 27, 31, 35, 39]);
        let sampler = Sampler::new(0.5);
        let kept = (0..10).filter(|_| sampler.keep()).count();
        assert_eq!(kept, 5);
        assert!((0..10).all(|_| Sampler::new(1.0).keep()));
    }
}
