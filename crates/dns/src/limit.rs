//! Response rate limiting over UDP (what BIND calls RRL): a token bucket per client
//! address, so the server cannot be used to flood a victim whose address a spoofer
//! puts as the source of its queries. hickory-server has no such limit; this is
//! hand-written.
//!
//! Pure: the time is an input. The table is bounded: buckets live in two generations
//! of at most `capacity / 2` clients each; a client seen again moves to the current
//! generation, and when the current one is full it becomes the previous one and the
//! old previous one is forgotten. A flood of spoofed sources therefore costs at most
//! `capacity` buckets and O(1) work per packet, and an active client keeps its bucket
//! (an evicted one comes back with a full bucket: at worst `burst` more answers).

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::RateLimit;

/// How often at most a line is logged about dropped responses.
pub(crate) const LOG_EVERY: Duration = Duration::from_secs(1);

/// The token buckets of the clients.
#[derive(Debug)]
pub(crate) struct Buckets {
    /// Tokens added per second; 0 when nothing is limited.
    rate: f64,
    /// Bucket size.
    burst: f64,
    /// Most clients in one generation.
    half: usize,
    current: HashMap<IpAddr, Bucket>,
    previous: HashMap<IpAddr, Bucket>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Buckets {
    /// Buckets for `limit` (a `per_second` of 0 limits nothing; a `burst` of 0 is one
    /// second's worth), remembering at most `capacity` clients.
    pub(crate) fn new(limit: RateLimit, capacity: usize) -> Buckets {
        let rate = f64::from(limit.per_second);
        let burst = if limit.burst == 0 {
            rate
        } else {
            f64::from(limit.burst)
        };
        Buckets {
            rate,
            burst: burst.max(1.0),
            half: (capacity / 2).max(1),
            current: HashMap::new(),
            previous: HashMap::new(),
        }
    }

    /// Takes a token for a response to `client` at `now`; false when its bucket is
    /// empty (the response is to be dropped).
    pub(crate) fn admit(&mut self, client: IpAddr, now: Instant) -> bool {
        if self.rate <= 0.0 {
            return true;
        }
        if !self.current.contains_key(&client) {
            let bucket = self.previous.remove(&client).unwrap_or(Bucket {
                tokens: self.burst,
                at: now,
            });
            if self.current.len() >= self.half {
                self.previous = std::mem::take(&mut self.current);
            }
            self.current.insert(client, bucket);
        }
        let (rate, burst) = (self.rate, self.burst);
        let Some(b) = self.current.get_mut(&client) else {
            return true;
        };
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * rate).min(burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Clients with a bucket.
    #[cfg(test)]
    pub(crate) fn clients(&self) -> usize {
        self.current.len() + self.previous.len()
    }
}

/// Says when to log about dropped responses: at most once per [`LOG_EVERY`], with how
/// many were dropped since the last line (the metric counts each one).
#[derive(Debug, Default)]
pub(crate) struct DropLog {
    last: Option<Instant>,
    pending: u64,
}

impl DropLog {
    /// One more response dropped at `now`; `Some(n)` when a line is due, `n` the drops
    /// it reports (this one and those not reported yet).
    pub(crate) fn note(&mut self, now: Instant) -> Option<u64> {
        self.pending += 1;
        let due = self
            .last
            .is_none_or(|last| now.saturating_duration_since(last) >= LOG_EVERY);
        if due {
            self.last = Some(now);
            Some(std::mem::take(&mut self.pending))
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn limit(per_second: u32, burst: u32) -> RateLimit {
        RateLimit { per_second, burst }
    }

    #[test]
    fn a_client_gets_its_burst_then_one_answer_per_token() {
        let mut b = Buckets::new(limit(1, 3), 1000);
        let t0 = Instant::now();
        let answered = (0..10).filter(|_| b.admit(ip("10.0.0.1"), t0)).count();
        assert_eq!(answered, 3, "the burst, then nothing");
        assert!(
            b.admit(ip("10.0.0.2"), t0),
            "another client has its own bucket"
        );
        assert!(
            !b.admit(ip("10.0.0.1"), t0 + Duration::from_millis(999)),
            "not yet a whole token"
        );
        assert!(b.admit(ip("10.0.0.1"), t0 + Duration::from_secs(2)));
        // A long quiet saves no more than the burst.
        let later = t0 + Duration::from_secs(3600);
        let answered = (0..10).filter(|_| b.admit(ip("10.0.0.1"), later)).count();
        assert_eq!(answered, 3);
    }

    #[test]
    fn burst_zero_is_one_seconds_worth_and_rate_zero_limits_nothing() {
        let t0 = Instant::now();
        let mut b = Buckets::new(limit(5, 0), 1000);
        assert_eq!((0..10).filter(|_| b.admit(ip("10.0.0.1"), t0)).count(), 5);
        let mut off = Buckets::new(limit(0, 3), 1000);
        assert!((0..1000).all(|_| off.admit(ip("10.0.0.1"), t0)));
        assert_eq!(off.clients(), 0, "no limit, no table");
    }

    #[test]
    fn a_spoofed_flood_cannot_grow_the_table_past_its_capacity() {
        let mut b = Buckets::new(limit(1, 1), 1000);
        let t0 = Instant::now();
        for i in 0..100_000u32 {
            b.admit(IpAddr::from(i.to_be_bytes()), t0);
            assert!(b.clients() <= 1000, "{} clients after {i}", b.clients());
        }
    }

    #[test]
    fn an_active_client_keeps_its_empty_bucket_through_the_flood() {
        let mut b = Buckets::new(limit(1, 2), 100);
        let t0 = Instant::now();
        let client = ip("192.0.2.7");
        assert!(b.admit(client, t0));
        assert!(b.admit(client, t0));
        for i in 0..10_000u32 {
            b.admit(IpAddr::from((i + 1).to_be_bytes()), t0);
            if i % 20 == 0 {
                assert!(
                    !b.admit(client, t0),
                    "still limited after {i} spoofed sources"
                );
            }
        }
    }

    #[test]
    fn drops_are_logged_at_most_once_a_second_with_their_count() {
        let mut log = DropLog::default();
        let t0 = Instant::now();
        assert_eq!(log.note(t0), Some(1), "the first drop is reported at once");
        for i in 1..100u64 {
            assert_eq!(log.note(t0 + Duration::from_millis(i * 5)), None);
        }
        assert_eq!(
            log.note(t0 + Duration::from_secs(1)),
            Some(100),
            "the 99 quiet ones and this one"
        );
        assert_eq!(log.note(t0 + Duration::from_millis(1500)), None);
    }
}
