//! Per-client rate limits on what costs the platform: mutations (deploys, promotes, settings)
//! and log streams. A token bucket per client address; a client over its rate gets 429 with
//! `Retry-After`, everyone else is unaffected.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The address a request came from, as the edge saw it (set per connection).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientAddr(pub IpAddr);

/// How fast one client may go.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateLimit {
    /// Requests a client may make at once.
    pub burst: u32,
    /// Requests per second it earns back.
    pub per_second: f64,
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit {
            burst: 60,
            per_second: 2.0,
        }
    }
}

/// Token buckets by client address.
pub struct Limiter {
    limit: RateLimit,
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

/// Buckets kept before idle ones are dropped.
const MAX_BUCKETS: usize = 100_000;

impl Limiter {
    /// Buckets of `limit` each.
    pub fn new(limit: RateLimit) -> Self {
        Limiter {
            limit,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one request from `client`'s bucket at `now`; `Err(wait)` when it is empty.
    pub fn check(&self, client: IpAddr, now: Instant) -> Result<(), Duration> {
        let burst = f64::from(self.limit.burst.max(1));
        let rate = self.limit.per_second.max(f64::MIN_POSITIVE);
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= MAX_BUCKETS {
            // A bucket idle long enough to be full again carries no information.
            let full_after = Duration::from_secs_f64(burst / rate);
            buckets.retain(|_, (_, at)| now.duration_since(*at) < full_after);
        }
        let (tokens, at) = buckets.entry(client).or_insert((burst, now));
        let earned = now.saturating_duration_since(*at).as_secs_f64() * rate;
        *tokens = (*tokens + earned).min(burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - *tokens) / rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_empty_refill_and_stay_per_client() {
        let limiter = Limiter::new(RateLimit {
            burst: 3,
            per_second: 2.0,
        });
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(limiter.check(a, t0).is_ok());
        }
        let wait = limiter.check(a, t0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(500));
        assert!(
            limiter.check(b, t0).is_ok(),
            "another client has its own bucket"
        );
        assert!(limiter.check(a, t0 + Duration::from_millis(499)).is_err());
        assert!(limiter.check(a, t0 + Duration::from_millis(1000)).is_ok());
        // Refills up to the burst, not beyond.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..3 {
            assert!(limiter.check(a, later).is_ok());
        }
        assert!(limiter.check(a, later).is_err());
    }
}
