//! An upstream pool: its servers, the choice among those that may take a request
//! (the algorithm is [`crate::balance`]'s), and the active health checks (`GET
//! /healthz`, interval, rise, fall) that decide who is healthy.
//!
//! A server is also taken out at once when a connection to it is refused, and for
//! `eject_for` after `eject_after` consecutive failed exchanges or 5xx answers
//! (passive checks); only active checks bring it back. A server that comes back ramps
//! up its weight over `slow_start`. With `max_conn`, a server takes at most that many
//! requests at once and the others wait in the pool's queue, up to `queue_timeout`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::uri::Authority;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::balance::{Balance, Balancer, View};
use crate::conn::UpstreamTls;

/// How a pool balances and limits: HAProxy's `balance`, `weight`, `slowstart`,
/// `maxconn`, `timeout queue` and `observe layer7` with `error-limit`.
#[derive(Debug, Clone)]
pub struct PoolOptions {
    /// The balancing algorithm.
    pub algorithm: Balance,
    /// `hash`: no server takes more than this percentage of the average load.
    pub hash_factor_pct: u32,
    /// Each server's weight, by name (1 when absent).
    pub weights: Vec<(String, u32)>,
    /// Requests one server takes at once (0: no limit); the rest queue.
    pub max_conn: u32,
    /// Longest wait in the queue (503 after).
    pub queue_timeout: Duration,
    /// A server back in service ramps its weight up over this long.
    pub slow_start: Duration,
    /// Consecutive failed exchanges or 5xx answers that eject a server (0: never).
    pub eject_after: u32,
    /// How long an ejected server stays out, whatever its checks say.
    pub eject_for: Duration,
}

impl Default for PoolOptions {
    fn default() -> PoolOptions {
        PoolOptions {
            algorithm: Balance::RoundRobin,
            hash_factor_pct: 125,
            weights: Vec::new(),
            max_conn: 0,
            queue_timeout: Duration::from_secs(1),
            slow_start: Duration::ZERO,
            eject_after: 0,
            eject_for: Duration::from_secs(10),
        }
    }
}

impl PoolOptions {
    /// The lbs' web pool as the topology's `[lb]` section and the web nodes' weights say.
    pub fn for_lb(topo: &hastack_config::Topology) -> PoolOptions {
        let lb = &topo.lb;
        PoolOptions {
            algorithm: lb.balance,
            hash_factor_pct: lb.hash_balance_factor,
            weights: PoolOptions::weights_of(topo, hastack_config::Role::Web),
            max_conn: lb.max_conn_per_server,
            queue_timeout: lb.queue_timeout,
            slow_start: lb.slow_start,
            eject_after: lb.eject_after,
            eject_for: lb.eject_for,
        }
    }

    /// Each node's weight in tier `role`.
    pub fn weights_of(
        topo: &hastack_config::Topology,
        role: hastack_config::Role,
    ) -> Vec<(String, u32)> {
        topo.tier(role)
            .map(|n| (n.name.clone(), n.weight))
            .collect()
    }
}

/// Internal weight units per configured weight unit, so that slow start can ramp even
/// a weight of 1.
const WEIGHT_SCALE: u32 = 16;

/// Settings of the active health checks.
#[derive(Debug, Clone, Copy)]
pub struct HealthCheck {
    /// Time between two checks of a server.
    pub interval: Duration,
    /// A check slower than this fails.
    pub timeout: Duration,
    /// Consecutive successes that bring a server back.
    pub rise: u32,
    /// Consecutive failures that take it out.
    pub fall: u32,
}

impl From<&hastack_config::HealthSettings> for HealthCheck {
    fn from(h: &hastack_config::HealthSettings) -> HealthCheck {
        HealthCheck {
            interval: h.interval,
            timeout: h.timeout,
            rise: h.rise,
            fall: h.fall,
        }
    }
}

/// One upstream server.
#[derive(Debug)]
pub struct Server {
    /// Its node name (for logs and metrics).
    pub name: String,
    /// Where it listens.
    pub addr: SocketAddr,
    pub(crate) authority: Authority,
    pub(crate) conns: Arc<crate::conn::Connections>,
    /// TLS to this server (its certificate must be for its node name).
    pub(crate) tls: Option<UpstreamTls>,
    healthy: AtomicBool,
    /// Configured weight (changed at run time by `hastack lb weight`).
    weight: AtomicU32,
    /// Requests in flight (until their response body ends).
    active: AtomicU32,
    /// When it last came back into service (slow start), and until when it is ejected.
    since: Mutex<Since>,
    /// Consecutive failed exchanges or 5xx answers.
    errors: AtomicU32,
    pub(crate) requests: Counter,
    pub(crate) failures: Counter,
    up: Gauge,
    in_flight: Gauge,
    ejections: Counter,
    freed: Arc<Notify>,
}

#[derive(Debug, Default)]
struct Since {
    up: Option<Instant>,
    ejected_until: Option<Instant>,
}

/// A request (or relayed connection) in flight on a server; dropping it frees the slot.
#[derive(Debug)]
pub struct InFlight(Arc<Server>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
        self.0.in_flight.dec();
        self.0.freed.notify_one();
    }
}

impl Server {
    /// Whether the server gets traffic.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Its configured weight.
    pub fn weight(&self) -> u32 {
        self.weight.load(Ordering::Relaxed)
    }

    /// Requests in flight.
    pub fn active(&self) -> u32 {
        self.active.load(Ordering::Relaxed)
    }

    /// The weight the balancer uses: ramping up during `slow_start` after the server
    /// came back, when the pool has one (`now` is given only then). An ejected server
    /// is unhealthy, so it needs no weight of its own here.
    fn effective_weight(&self, slow_start: Duration, now: Option<Instant>) -> u32 {
        let w = self.weight() * WEIGHT_SCALE;
        let Some(now) = now else {
            return w;
        };
        let up = self.since.lock().unwrap_or_else(|e| e.into_inner()).up;
        match up {
            Some(up) if now < up + slow_start => {
                let part = now.saturating_duration_since(up).as_millis() as u64;
                let ramp = u64::from(w) * part / slow_start.as_millis().max(1) as u64;
                (ramp as u32).clamp(1, w.max(1))
            }
            _ => w,
        }
    }

    /// Counts a request in flight until the returned guard is dropped.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.active.fetch_add(1, Ordering::Relaxed);
        self.in_flight.inc();
        InFlight(self.clone())
    }

    /// Records the outcome of an exchange for passive ejection: `Some(reason)` for a
    /// failure (a broken exchange, a 5xx). Ejects the server for `eject_for` after
    /// `eject_after` consecutive failures.
    pub(crate) fn observe(&self, failure: Option<&str>, opts: &PoolOptions) {
        let Some(why) = failure else {
            if self.errors.load(Ordering::Relaxed) != 0 {
                self.errors.store(0, Ordering::Relaxed);
            }
            return;
        };
        let n = self.errors.fetch_add(1, Ordering::Relaxed) + 1;
        if opts.eject_after == 0 || n < opts.eject_after {
            return;
        }
        self.errors.store(0, Ordering::Relaxed);
        self.since
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .ejected_until = Some(Instant::now() + opts.eject_for);
        self.ejections.inc();
        self.set_healthy(
            false,
            &format!(
                "ejected for {:?} after {n} failures in a row, last: {why}",
                opts.eject_for
            ),
        );
    }

    fn ejected(&self, now: Instant) -> bool {
        self.since
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .ejected_until
            .is_some_and(|t| now < t)
    }

    fn set_healthy(&self, healthy: bool, why: &str) {
        if self.healthy.swap(healthy, Ordering::Relaxed) != healthy {
            if healthy {
                self.since.lock().unwrap_or_else(|e| e.into_inner()).up = Some(Instant::now());
                info!(server = %self.name, addr = %self.addr, "upstream is UP ({why})");
            } else {
                warn!(server = %self.name, addr = %self.addr, "upstream is DOWN ({why})");
            }
        }
        self.up.set(i64::from(healthy));
    }

    /// Takes the server out after a refused connection; health checks bring it back.
    pub(crate) fn mark_down(&self, why: &str) {
        self.set_healthy(false, why);
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct PoolLabels {
    pool: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct ServerLabels {
    pool: String,
    server: String,
}

/// How a pool's servers are reached over TLS: the client configuration (trusted CA,
/// the certificate this node presents) and where handshakes are counted.
#[derive(Clone)]
pub struct PoolTls {
    /// The client configuration.
    pub config: Arc<hastack_tls::ClientConfig>,
    /// Handshake metrics.
    pub metrics: hastack_tls::TlsMetrics,
}

/// A set of servers behind one name, balanced as its options say.
#[derive(Debug)]
pub struct Pool {
    name: String,
    servers: Vec<Arc<Server>>,
    balancer: Balancer,
    opts: PoolOptions,
    /// Wakes requests waiting in the queue when a slot frees.
    freed: Arc<Notify>,
    queued: Gauge,
    queue_timeouts: Counter,
}

/// Why no server was picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoServer {
    /// None is healthy (or all were tried).
    Down,
    /// All are at their connection limit and the queue wait ran out.
    QueueFull,
}

impl Pool {
    /// A pool called `name` (e.g. `web`) over `(node name, address)` pairs; every server
    /// starts healthy. With `tls`, each server is reached over TLS and must show a
    /// certificate for its node name. Its metrics go into `registry`.
    pub fn new(
        name: &str,
        servers: &[(String, SocketAddr)],
        tls: Option<PoolTls>,
        registry: &mut Registry,
    ) -> Arc<Pool> {
        Pool::with_options(name, servers, tls, PoolOptions::default(), registry)
    }

    /// Like [`Pool::new`], balanced and limited as `opts` say.
    pub fn with_options(
        name: &str,
        servers: &[(String, SocketAddr)],
        tls: Option<PoolTls>,
        opts: PoolOptions,
        registry: &mut Registry,
    ) -> Arc<Pool> {
        let requests = Family::<ServerLabels, Counter>::default();
        let failures = Family::<ServerLabels, Counter>::default();
        let up = Family::<ServerLabels, Gauge>::default();
        registry.register(
            "hastack_upstream_requests",
            "Requests sent to an upstream server",
            requests.clone(),
        );
        registry.register(
            "hastack_upstream_failures",
            "Requests to an upstream server that failed",
            failures.clone(),
        );
        registry.register(
            "hastack_upstream_up",
            "1 when the upstream server gets traffic",
            up.clone(),
        );
        let in_flight = Family::<ServerLabels, Gauge>::default();
        registry.register(
            "hastack_upstream_in_flight",
            "Requests in flight on an upstream server",
            in_flight.clone(),
        );
        let ejections = Family::<ServerLabels, Counter>::default();
        registry.register(
            "hastack_upstream_ejections",
            "Times an upstream server was ejected after consecutive failures",
            ejections.clone(),
        );
        let queued = Family::<PoolLabels, Gauge>::default();
        registry.register(
            "hastack_pool_queued",
            "Requests waiting for a server under its connection limit",
            queued.clone(),
        );
        let queue_timeouts = Family::<PoolLabels, Counter>::default();
        registry.register(
            "hastack_pool_queue_timeouts",
            "Requests that waited in the queue too long (503)",
            queue_timeouts.clone(),
        );
        let freed = Arc::new(Notify::new());
        let weight_of = |n: &str| {
            opts.weights
                .iter()
                .find(|(w, _)| w == n)
                .map_or(1, |(_, w)| *w)
        };
        let servers = servers
            .iter()
            .filter_map(|(n, addr)| {
                let labels = ServerLabels {
                    pool: name.to_string(),
                    server: n.clone(),
                };
                let authority: Authority = addr.to_string().parse().ok()?;
                let tls = match &tls {
                    Some(t) => Some(UpstreamTls {
                        connector: hastack_tls::TlsConnector::from(t.config.clone()),
                        name: hastack_tls::rustls_pki::ServerName::try_from(n.clone()).ok()?,
                        metrics: t.metrics.clone(),
                    }),
                    None => None,
                };
                let s = Server {
                    name: n.clone(),
                    addr: *addr,
                    authority,
                    conns: Arc::default(),
                    tls,
                    healthy: AtomicBool::new(true),
                    weight: AtomicU32::new(weight_of(n)),
                    active: AtomicU32::new(0),
                    since: Mutex::default(),
                    errors: AtomicU32::new(0),
                    requests: requests.get_or_create(&labels).clone(),
                    failures: failures.get_or_create(&labels).clone(),
                    up: up.get_or_create(&labels).clone(),
                    in_flight: in_flight.get_or_create(&labels).clone(),
                    ejections: ejections.get_or_create(&labels).clone(),
                    freed: freed.clone(),
                };
                s.up.set(1);
                Some(Arc::new(s))
            })
            .collect::<Vec<Arc<Server>>>();
        let named: Vec<(&str, u32)> = servers
            .iter()
            .map(|s| (s.name.as_str(), s.weight()))
            .collect();
        let balancer = Balancer::new(opts.algorithm, &named, opts.hash_factor_pct);
        let pool_labels = PoolLabels {
            pool: name.to_string(),
        };
        Arc::new(Pool {
            name: name.to_string(),
            balancer,
            servers,
            queued: queued.get_or_create(&pool_labels).clone(),
            queue_timeouts: queue_timeouts.get_or_create(&pool_labels).clone(),
            opts,
            freed,
        })
    }

    /// The pool's options.
    pub fn options(&self) -> &PoolOptions {
        &self.opts
    }

    /// The pool's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// All servers.
    pub fn servers(&self) -> &[Arc<Server>] {
        &self.servers
    }

    /// Each server's name and whether it gets traffic, for `/healthz`.
    pub fn health_json(&self) -> serde_json::Value {
        self.servers
            .iter()
            .map(|s| serde_json::json!({ "name": s.name, "healthy": s.is_healthy() }))
            .collect()
    }

    /// A server for a request with hash `key` (see [`crate::balance`]), skipping
    /// `exclude` (servers that already failed this request) and servers at their
    /// connection limit; `None` when no server may take it now.
    pub fn pick(&self, key: u64, exclude: &[usize]) -> Option<(usize, &Arc<Server>)> {
        let slow_start = self.opts.slow_start;
        // The clock and the random draw only for the settings that use them.
        let now = (!slow_start.is_zero()).then(Instant::now);
        let random = match self.balancer.algorithm() {
            Balance::Random => rand::random(),
            _ => 0,
        };
        let max_conn = self.opts.max_conn;
        let i = self.balancer.choose(
            self.servers.len(),
            |i| {
                let s = &self.servers[i];
                let active = s.active();
                View {
                    weight: s.effective_weight(slow_start, now),
                    active,
                    usable: s.is_healthy()
                        && !exclude.contains(&i)
                        && (max_conn == 0 || active < max_conn),
                }
            },
            key,
            random,
        )?;
        Some((i, &self.servers[i]))
    }

    /// The server called `name`, if it may take a request now (sticky sessions).
    pub fn pick_named(&self, name: &str) -> Option<(usize, &Arc<Server>)> {
        let (i, s) = self
            .servers
            .iter()
            .enumerate()
            .find(|(_, s)| s.name == name)?;
        let open = s.is_healthy()
            && s.weight() > 0
            && (self.opts.max_conn == 0 || s.active() < self.opts.max_conn);
        open.then_some((i, s))
    }

    /// Like [`Pool::pick`], but when every server that may take the request is at its
    /// connection limit, waits in the queue for a slot, up to the queue timeout.
    pub async fn pick_queued(
        &self,
        key: u64,
        exclude: &[usize],
    ) -> Result<(usize, &Arc<Server>), NoServer> {
        if let Some(p) = self.pick(key, exclude) {
            return Ok(p);
        }
        let limited = self.opts.max_conn > 0
            && self
                .servers
                .iter()
                .enumerate()
                .any(|(i, s)| s.is_healthy() && !exclude.contains(&i));
        if !limited {
            return Err(NoServer::Down);
        }
        self.queued.inc();
        let deadline = Instant::now() + self.opts.queue_timeout;
        let outcome = loop {
            let freed = self.freed.notified();
            if let Some(p) = self.pick(key, exclude) {
                break Ok(p);
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                // One last look: a slot may have freed as the clock ran out.
                break self.pick(key, exclude).ok_or(NoServer::QueueFull);
            }
        };
        self.queued.dec();
        if outcome.is_err() {
            self.queue_timeouts.inc();
        }
        outcome
    }

    /// Runs the active health checks of every server until `shutdown`: `GET /healthz`
    /// over the same TLS as traffic, on a kept-alive connection of its own.
    pub fn spawn_health_checks(
        self: &Arc<Self>,
        check: HealthCheck,
        shutdown: watch::Receiver<bool>,
    ) {
        for server in &self.servers {
            let server = server.clone();
            let mut shutdown = shutdown.clone();
            tokio::spawn(async move {
                let mut conn: Option<SendRequest<Empty<Bytes>>> = None;
                let mut tracker = RiseFall::new(check.rise, check.fall, server.is_healthy());
                let mut ticker = tokio::time::interval(check.interval);
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = shutdown.changed() => return,
                        _ = ticker.tick() => {}
                    }
                    let outcome = match tokio::time::timeout(
                        check.timeout,
                        probe(&server, &mut conn),
                    )
                    .await
                    {
                        Ok(Err(ProbeError::Local(why))) => {
                            // This host is short of descriptors or ports: no verdict on
                            // the server, which may be perfectly healthy.
                            tracing::debug!(server = %server.name, why, "health check not run");
                            continue;
                        }
                        Ok(r) => r.map_err(|e| e.to_string()),
                        Err(_) => {
                            conn = None;
                            Err(format!("no answer within {:?}", check.timeout))
                        }
                    };
                    // A passive mark-down must be seen by the tracker too.
                    if !server.is_healthy() && tracker.healthy {
                        tracker = RiseFall::new(check.rise, check.fall, false);
                    }
                    // An ejected server stays out for its back-off, whatever checks say.
                    let ok = outcome.is_ok() && !server.ejected(Instant::now());
                    if let Some(now_healthy) = tracker.observe(ok) {
                        let why = match &outcome {
                            Ok(()) => format!("{} checks passed", check.rise),
                            Err(e) => format!("{} checks failed, last: {e}", check.fall),
                        };
                        server.set_healthy(now_healthy, &why);
                    }
                }
            });
        }
    }
}

/// One health check of `server` on `conn` (opened, or opened again, as needed).
/// Why a health check failed: the server, or this host (no verdict on the server).
#[derive(Debug)]
enum ProbeError {
    /// The server refused, broke the exchange, or answered badly.
    Server(String),
    /// This host ran out of descriptors or ephemeral ports: says nothing of the server.
    Local(String),
}

impl From<String> for ProbeError {
    fn from(why: String) -> ProbeError {
        ProbeError::Server(why)
    }
}

impl std::fmt::Display for ProbeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProbeError::Server(w) => f.write_str(w),
            ProbeError::Local(w) => write!(f, "on this host: {w}"),
        }
    }
}

async fn probe(
    server: &Server,
    conn: &mut Option<SendRequest<Empty<Bytes>>>,
) -> Result<(), ProbeError> {
    let mut sender = match conn.take() {
        Some(s) if !s.is_closed() => s,
        _ => crate::conn::dial(server.addr, server.tls.as_ref())
            .await
            .map_err(|e| {
                if e.local {
                    ProbeError::Local(e.why)
                } else {
                    ProbeError::Server(e.why)
                }
            })?,
    };
    sender.ready().await.map_err(|e| e.to_string())?;
    let req = hyper::Request::get("/healthz")
        .header(http::header::HOST, server.authority.as_str())
        .header(http::header::USER_AGENT, "hastack-health")
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("{e}: {}", source_text(&e)))?;
    let status = resp.status();
    // Read the body so the connection can be used again.
    resp.into_body()
        .collect()
        .await
        .map_err(|e| format!("reading the answer: {e}"))?;
    *conn = Some(sender);
    if status.is_success() {
        Ok(())
    } else {
        Err(ProbeError::Server(format!("status {status}")))
    }
}

fn source_text(e: &dyn std::error::Error) -> String {
    let mut s = String::new();
    let mut cur = e.source();
    while let Some(c) = cur {
        if !s.is_empty() {
            s.push_str(": ");
        }
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Rise/fall hysteresis of health checks (pure).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RiseFall {
    rise: u32,
    fall: u32,
    /// Current verdict.
    pub healthy: bool,
    streak: u32,
}

impl RiseFall {
    /// A tracker starting at `healthy`.
    pub fn new(rise: u32, fall: u32, healthy: bool) -> RiseFall {
        RiseFall {
            rise: rise.max(1),
            fall: fall.max(1),
            healthy,
            streak: 0,
        }
    }

    /// Records one check; returns the new verdict when it changes.
    pub fn observe(&mut self, ok: bool) -> Option<bool> {
        if ok == self.healthy {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let needed = if self.healthy { self.fall } else { self.rise };
        if self.streak >= needed {
            self.healthy = ok;
            self.streak = 0;
            Some(ok)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(n: usize) -> Arc<Pool> {
        let servers: Vec<_> = (0..n)
            .map(|i| {
                (
                    format!("s{i}"),
                    SocketAddr::from(([127, 0, 0, 1], 1000 + i as u16)),
                )
            })
            .collect();
        Pool::new("t", &servers, None, &mut Registry::default())
    }

    #[test]
    fn round_robin_visits_every_server_in_turn() {
        let p = pool(3);
        let picks: Vec<_> = (0..6).map(|_| p.pick(0, &[]).map(|(i, _)| i)).collect();
        assert_eq!(
            picks,
            [Some(0), Some(1), Some(2), Some(0), Some(1), Some(2)]
        );
    }

    #[test]
    fn unhealthy_and_excluded_servers_are_skipped() {
        let p = pool(3);
        p.servers()[1].mark_down("test");
        for _ in 0..10 {
            let (i, _) = p.pick(0, &[]).expect("a server");
            assert_ne!(i, 1);
        }
        for _ in 0..10 {
            assert_eq!(p.pick(0, &[0]).map(|(i, _)| i), Some(2));
        }
        assert!(p.pick(0, &[0, 2]).is_none());
        assert!(pool(0).pick(0, &[]).is_none());
    }

    #[test]
    fn rise_and_fall_need_consecutive_results() {
        let mut t = RiseFall::new(2, 3, true);
        assert_eq!(t.observe(false), None);
        assert_eq!(t.observe(false), None);
        assert_eq!(t.observe(true), None, "a success resets the failure streak");
        assert_eq!(t.observe(false), None);
        assert_eq!(t.observe(false), None);
        assert_eq!(
            t.observe(false),
            Some(false),
            "third consecutive failure takes it out"
        );
        assert_eq!(t.observe(true), None);
        assert_eq!(
            t.observe(true),
            Some(true),
            "second consecutive success brings it back"
        );
        assert_eq!(t.observe(true), None);
    }
}
