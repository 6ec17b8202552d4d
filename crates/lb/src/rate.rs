//! Per-client request rate limiting: a token bucket per client address (HAProxy's
//! `http_req_rate` in a stick table with `http-request deny deny_status 429`). Each
//! client may send `rate` requests per second on average and `burst` at once; a
//! request over that is answered 429 with `Retry-After`, and nothing goes upstream.
//!
//! Pure: the time is an input. Buckets of clients that have gone quiet (full again)
//! are dropped by [`RateLimiter::prune`], so memory follows the active clients only.
//! A reload changes the rate ([`RateLimiter::set`]) and keeps every client's bucket:
//! a client over its rate is not let off by a reload.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The token buckets of every client.
#[derive(Debug)]
pub struct RateLimiter {
    /// Whether a rate is set (a request takes no lock when not).
    on: AtomicBool,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// Tokens added per second.
    rate: f64,
    /// Bucket size.
    burst: f64,
    buckets: HashMap<IpAddr, Bucket>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl RateLimiter {
    /// `rate` requests per second per client, `burst` at once (0: one second's worth);
    /// a `rate` of 0 limits nothing.
    pub fn new(rate: u32, burst: u32) -> RateLimiter {
        let limiter = RateLimiter {
            on: AtomicBool::new(false),
            state: Mutex::new(State {
                rate: 1.0,
                burst: 1.0,
                buckets: HashMap::new(),
            }),
        };
        limiter.set(rate, burst);
        limiter
    }

    /// A new rate and burst (a reload); the clients' buckets are kept.
    pub fn set(&self, rate: u32, burst: u32) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.rate = f64::from(rate.max(1));
        st.burst = if burst == 0 {
            st.rate
        } else {
            f64::from(burst)
        };
        self.on.store(rate > 0, Ordering::Relaxed);
    }

    /// Takes a token for a request from `client` at `now`; `Err` with how long until
    /// one is available when the bucket is empty.
    pub fn admit(&self, client: IpAddr, now: Instant) -> Result<(), Duration> {
        if !self.on.load(Ordering::Relaxed) {
            return Ok(());
        }
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (rate, burst) = (st.rate, st.burst);
        let b = st.buckets.entry(client).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * rate).min(burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) / rate))
        }
    }

    /// Drops the buckets that are full again at `now` (their clients went quiet).
    pub fn prune(&self, now: Instant) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (rate, burst) = (st.rate, st.burst);
        st.buckets.retain(|_, b| {
            b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * rate < burst
        });
    }

    /// Clients with a bucket.
    pub fn clients(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .buckets
            .len()
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

    #[test]
    fn a_new_rate_keeps_every_clients_bucket() {
        let l = RateLimiter::new(2, 2);
        let t0 = Instant::now();
        l.admit(ip("10.0.0.1"), t0).expect("1st");
        l.admit(ip("10.0.0.1"), t0).expect("2nd");
        assert!(l.admit(ip("10.0.0.1"), t0).is_err(), "over its rate");
        l.set(5, 5);
        assert!(
            l.admit(ip("10.0.0.1"), t0).is_err(),
            "a reload does not refill an empty bucket"
        );
        assert_eq!(
            l.admit(ip("10.0.0.1"), t0 + Duration::from_millis(200)),
            Ok(()),
            "it refills at the new rate: one token per 200 ms"
        );
        l.set(0, 0);
        for _ in 0..100 {
            assert_eq!(l.admit(ip("10.0.0.1"), t0), Ok(()), "rate 0 limits nothing");
        }
    }
}
