//! Per-client request rate limiting: a token bucket per client address (HAProxy's
//! `http_req_rate` in a stick table with `http-request deny deny_status 429`). Each
//! client may send `rate` requests per second on average and `burst` at once; a
//! request over that is answered 429 with `Retry-After`, and nothing goes upstream.
//!
//! Pure: the time is an input. Buckets of clients that have gone quiet (full again)
//! are dropped by [`RateLimiter::prune`], so memory follows the active clients only.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The token buckets of every client.
#[derive(Debug)]
pub struct RateLimiter {
    /// Tokens added per second.
    rate: f64,
    /// Bucket size.
    burst: f64,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl RateLimiter {
    /// `rate` requests per second per client, `burst` at once (0: one second's worth).
    pub fn new(rate: u32, burst: u32) -> RateLimiter {
        let rate = f64::from(rate.max(1));
        RateLimiter {
            rate,
            burst: if burst == 0 { rate } else { f64::from(burst) },
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token for a request from `client` at `now`; `Err` with how long until
    /// one is available when the bucket is empty.
    pub fn admit(&self, client: IpAddr, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let b = buckets.entry(client).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * self.rate).min(self.burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) / self.rate))
        }
    }

    /// Drops the buckets that are full again at `now` (their clients went quiet).
    pub fn prune(&self, now: Instant) {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        buckets.retain(|_, b| {
            b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * self.rate < self.burst
        });
    }

    /// Clients with a bucket.
    pub fn clients(&self) -> usize {
        self.buckets.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn the_101st_request_in_a_second_is_refused_with_the_wait() {
        let l = RateLimiter::new(100, 0);
        let t0 = Instant::now();
        for i in 0..100 {
            assert_eq!(l.admit(ip("10.0.0.1"), t0), Ok(()), "request {i}");
        }
        let wait = l.admit(ip("10.0.0.1"), t0).expect_err("the 101st");
        assert_eq!(wait, Duration::from_millis(10), "one token every 10 ms");
        // Another client has its own bucket.
        assert_eq!(l.admit(ip("10.0.0.2"), t0), Ok(()));
        // 10 ms later one more token.
        assert_eq!(
            l.admit(ip("10.0.0.1"), t0 + Duration::from_millis(10)),
            Ok(())
        );
    }

    #[test]
    fn burst_bounds_what_a_quiet_client_may_send_at_once() {
        let l = RateLimiter::new(10, 3);
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(60);
        for _ in 0..3 {
            assert_eq!(l.admit(ip("10.0.0.1"), later), Ok(()));
        }
        assert!(
            l.admit(ip("10.0.0.1"), later).is_err(),
            "a minute of quiet saves only 3"
        );
    }

    #[test]
    fn quiet_clients_are_forgotten() {
        let l = RateLimiter::new(10, 0);
        let t0 = Instant::now();
        l.admit(ip("10.0.0.1"), t0).expect("admitted");
        l.prune(t0);
        assert_eq!(l.clients(), 1, "still refilling");
        l.prune(t0 + Duration::from_secs(1));
        assert_eq!(l.clients(), 0);
    }
}
