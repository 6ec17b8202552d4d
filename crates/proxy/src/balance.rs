//! Which server takes a request: the balancing algorithms of HAProxy's `balance`,
//! pure — each decision is made on a view of the servers (effective weight, requests
//! in flight, whether it may take one) that the pool passes in, with the request's
//! hash key and a random number as inputs. No I/O, no clock.
//!
//! - `roundrobin`: smooth weighted round robin (nginx's): over any window, each server
//!   gets its share of requests, interleaved rather than in bursts.
//! - `leastconn`: the fewest requests in flight per unit of weight; ties go round robin.
//! - `random`: the power of two random choices — two servers drawn by weight, the less
//!   loaded one wins (Mitzenmacher): near leastconn's balance without its herd effect
//!   when several lbs decide at once.
//! - `first`: the first server in the topology's order that may take a request.
//! - `hash`: consistent hashing of a key (the client's address, the URI, a header or a
//!   cookie) on a ring of virtual points named after the servers, so adding or removing
//!   one moves only its share of keys; with bounded loads (Mirrokni, Thorup,
//!   Zadimoghaddam): no server takes more than `factor` times the average of requests
//!   in flight, the next one on the ring does.

use std::sync::Mutex;

pub use hastack_config::{Balance, HashOn};

/// What the balancer sees of one server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct View {
    /// Its effective weight now (0: no new requests).
    pub weight: u32,
    /// Requests in flight.
    pub active: u32,
    /// Whether it may take this request (healthy, not yet tried, under its limit).
    pub usable: bool,
}

impl View {
    fn open(&self) -> bool {
        self.usable && self.weight > 0
    }
}

/// Virtual points on the hash ring per unit of configured weight.
const POINTS_PER_WEIGHT: u32 = 40;

/// A balancer over a fixed list of servers.
#[derive(Debug)]
pub struct Balancer {
    algorithm: Balance,
    /// Smooth round robin's current weights; also the rotation of tie-breaks.
    state: Mutex<RoundRobin>,
    /// The hash ring: (point, server), sorted by point.
    ring: Vec<(u64, usize)>,
    /// Bounded loads: a server may take up to `factor_pct`% of the average.
    factor_pct: u32,
}

#[derive(Debug, Default)]
struct RoundRobin {
    current: Vec<i64>,
    rotation: usize,
}

impl Balancer {
    /// A balancer for servers with these names and configured weights (the ring of
    /// `hash` is built from them); `factor_pct` bounds a server's load under `hash`
    /// (125: at most 1.25 times the average).
    pub fn new(algorithm: Balance, servers: &[(&str, u32)], factor_pct: u32) -> Balancer {
        let ring = if algorithm == Balance::Hash {
            let mut ring: Vec<(u64, usize)> = servers
                .iter()
                .enumerate()
                .flat_map(|(i, (name, weight))| {
                    (0..weight.max(&1) * POINTS_PER_WEIGHT)
                        .map(move |v| (hash(format!("{name}#{v}").as_bytes()), i))
                })
                .collect();
            ring.sort_unstable();
            ring
        } else {
            Vec::new()
        };
        Balancer {
            algorithm,
            state: Mutex::new(RoundRobin {
                current: vec![0; servers.len()],
                rotation: 0,
            }),
            ring,
            factor_pct: factor_pct.max(100),
        }
    }

    /// The algorithm.
    pub fn algorithm(&self) -> &Balance {
        &self.algorithm
    }

    /// Picks among `n` servers seen through `view`; `key` is the request's hash key
    /// (for `hash`), `random` a fresh random number (for `random`).
    pub fn choose(
        &self,
        n: usize,
        view: impl Fn(usize) -> View,
        key: u64,
        random: u64,
    ) -> Option<usize> {
        match self.algorithm {
            Balance::RoundRobin => self.round_robin(n, &view),
            Balance::LeastConn => {
                let start = self.rotate(n);
                least_loaded((0..n).map(|i| (start + i) % n), &view)
            }
            Balance::Random => two_choices(n, &view, random),
            Balance::First => (0..n).find(|&i| view(i).open()),
            Balance::Hash => self.ring_walk(n, &view, key),
        }
    }

    fn rotate(&self, n: usize) -> usize {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.rotation = s.rotation.wrapping_add(1);
        s.rotation % n.max(1)
    }

    /// nginx's smooth weighted round robin: every open server gains its weight, the
    /// richest is chosen and pays the total.
    fn round_robin(&self, n: usize, view: &impl Fn(usize) -> View) -> Option<usize> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.current.len() != n {
            s.current = vec![0; n];
        }
        let mut total = 0i64;
        let mut best: Option<usize> = None;
        for i in 0..n {
            let v = view(i);
            if !v.open() {
                continue;
            }
            let w = i64::from(v.weight);
            s.current[i] += w;
            total += w;
            if best.is_none_or(|b| s.current[i] > s.current[b]) {
                best = Some(i);
            }
        }
        let b = best?;
        s.current[b] -= total;
        Some(b)
    }

    /// The first server clockwise from the key's point that is open and under the
    /// load bound.
    fn ring_walk(&self, n: usize, view: &impl Fn(usize) -> View, key: u64) -> Option<usize> {
        if self.ring.is_empty() {
            return None;
        }
        let (mut open, mut load) = (0u64, 1u64);
        for i in 0..n {
            let v = view(i);
            if v.open() {
                open += 1;
            }
            load += u64::from(v.active);
        }
        if open == 0 {
            return None;
        }
        // ceil(factor × (load including this request) / open servers)
        let bound = (load * u64::from(self.factor_pct)).div_ceil(open * 100);
        let start = self.ring.partition_point(|(p, _)| *p < key);
        let len = self.ring.len();
        let mut fallback = None;
        for k in 0..len {
            let (_, i) = self.ring[(start + k) % len];
            let v = view(i);
            if !v.open() {
                continue;
            }
            if u64::from(v.active) < bound {
                return Some(i);
            }
            fallback.get_or_insert(i);
        }
        fallback
    }
}

/// The open server with the fewest requests in flight per weight, the first of `order`
/// among equals.
fn least_loaded(
    order: impl Iterator<Item = usize>,
    view: &impl Fn(usize) -> View,
) -> Option<usize> {
    let mut best: Option<(usize, View)> = None;
    for i in order {
        let v = view(i);
        if !v.open() {
            continue;
        }
        if best.is_none_or(|(_, b)| lighter(&v, &b)) {
            best = Some((i, v));
        }
    }
    best.map(|(i, _)| i)
}

/// Whether `a` is less loaded than `b`: (active + 1) / weight, compared exactly.
fn lighter(a: &View, b: &View) -> bool {
    (u64::from(a.active) + 1) * u64::from(b.weight)
        < (u64::from(b.active) + 1) * u64::from(a.weight)
}

/// Two servers drawn at random in proportion to their weights; the lighter one.
fn two_choices(n: usize, view: &impl Fn(usize) -> View, random: u64) -> Option<usize> {
    let total: u64 = (0..n)
        .map(view)
        .filter(View::open)
        .map(|v| u64::from(v.weight))
        .sum();
    if total == 0 {
        return None;
    }
    let draw = |r: u64, skip: Option<usize>| -> Option<usize> {
        let total = total - skip.map_or(0, |s| u64::from(view(s).weight));
        if total == 0 {
            return None;
        }
        let mut at = r % total;
        for i in 0..n {
            let v = view(i);
            if !v.open() || Some(i) == skip {
                continue;
            }
            if at < u64::from(v.weight) {
                return Some(i);
            }
            at -= u64::from(v.weight);
        }
        None
    };
    let a = draw(random & 0xffff_ffff, None)?;
    let Some(b) = draw(random >> 32, Some(a)) else {
        return Some(a);
    };
    Some(if lighter(&view(b), &view(a)) { b } else { a })
}

/// The stable hash of keys and ring points: FNV-1a, then a 64-bit finalizer so that
/// close keys land far apart. Fixed by its definition, so it does not change between
/// builds, toolchains or nodes: two lbs send a key to the same server.
pub fn hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // splitmix64's finalizer
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[cfg(test)]
mod tests;
