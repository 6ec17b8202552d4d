//! An upstream pool: its servers, the choice among those that may take a request
//! (the algorithm is [`crate::balance`]'s), and the active health checks (`GET
//! /healthz`, or a TCP connect; interval, rise, fall) that decide who is healthy.
//!
//! A server is also taken out at once when a connection to it is refused, and for
//! `eject_for` after `eject_after` consecutive failed exchanges or 5xx answers
//! (passive checks); only active checks bring it back. A server that comes back ramps
//! up its weight over `slow_start`. With `max_conn`, a server takes at most that many
//! requests at once and the others wait in the pool's queue, up to `queue_timeout`.
//!
//! The servers and options in force are one [`ServerSet`], read without a lock by
//! each request and replaced whole when the configuration is reloaded
//! ([`Pool::update`]) or an operator changes a weight. A server present before and
//! after keeps its health, its connections and its requests in flight. An operator may
//! also drain a server (no new clients; sticky ones stay) or put it in maintenance (no
//! traffic at all): [`AdminState`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::uri::Authority;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::balance::{Balance, Balancer, HashOn, View};
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
    /// What `balance = "hash"` hashes.
    pub hash_key: HashOn,
    /// Sticky sessions: the name of the cookie that keeps a client on its server
    /// (HAProxy's `cookie NAME insert indirect`).
    pub sticky_cookie: Option<String>,
    /// Each connection to a server starts with a PROXY v2 header naming the client
    /// (HAProxy's `send-proxy-v2`); such a connection carries only that client's
    /// requests.
    pub send_proxy: bool,
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
            hash_key: HashOn::Source,
            sticky_cookie: None,
            send_proxy: false,
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
            hash_key: lb.hash_key.clone(),
            sticky_cookie: lb.sticky_cookie.clone(),
            send_proxy: lb.send_proxy,
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
    /// What a check does.
    pub kind: CheckKind,
    /// Each check's connection starts with a PROXY v2 LOCAL header (the servers
    /// expect one: `[lb] send_proxy`).
    pub proxy_header: bool,
}

pub use hastack_config::CheckKind;

impl From<&hastack_config::HealthSettings> for HealthCheck {
    fn from(h: &hastack_config::HealthSettings) -> HealthCheck {
        HealthCheck {
            interval: h.interval,
            timeout: h.timeout,
            rise: h.rise,
            fall: h.fall,
            kind: h.check,
            proxy_header: false,
        }
    }
}

/// What an operator said of a server (HAProxy's `set server ... state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminState {
    /// In service.
    Ready = 0,
    /// No new clients; requests of clients stuck to it by the sticky cookie still go.
    Drain = 1,
    /// Out of service: no request goes to it (health checks go on).
    Maint = 2,
}

impl AdminState {
    /// `ready`, `drain` or `maint`.
    pub fn as_str(self) -> &'static str {
        match self {
            AdminState::Ready => "ready",
            AdminState::Drain => "drain",
            AdminState::Maint => "maint",
        }
    }

    /// The state called `s`.
    pub fn parse(s: &str) -> Option<AdminState> {
        match s {
            "ready" => Some(AdminState::Ready),
            "drain" => Some(AdminState::Drain),
            "maint" => Some(AdminState::Maint),
            _ => None,
        }
    }

    fn from_u8(v: u8) -> AdminState {
        match v {
            1 => AdminState::Drain,
            2 => AdminState::Maint,
            _ => AdminState::Ready,
        }
    }
}

/// One upstream server.
#[derive(Debug)]
pub struct Server {
    /// Unique in its pool for the pool's lifetime: a server replaced by a reload (a new
    /// address) gets a new one, so a request that tried the old one may try the new.
    pub id: u64,
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
    /// [`AdminState`], as its number.
    admin: AtomicU8,
    /// Removed from the pool by a reload: its health checks stop.
    retired: AtomicBool,
    labels: ServerLabels,
    /// Requests in flight (until their response body ends).
    active: AtomicU32,
    /// When it last came back into service (slow start), and until when it is ejected.
    since: Mutex<Since>,
    /// Consecutive failed exchanges or 5xx answers.
    errors: AtomicU32,
    pub(crate) requests: Counter,
    pub(crate) failures: Counter,
    latency: Histogram,
    /// Recent response time in microseconds: a moving average over about the last
    /// 64 responses (HAProxy's stats page shows the same over 1024).
    recent_us: AtomicU64,
    up: Gauge,
    in_flight: Gauge,
    ejections: Counter,
    weight_gauge: Gauge,
    admin_gauge: Gauge,
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

    /// What the operator said of it.
    pub fn admin_state(&self) -> AdminState {
        AdminState::from_u8(self.admin.load(Ordering::Relaxed))
    }

    fn set_admin(&self, state: AdminState) {
        self.admin.store(state as u8, Ordering::Relaxed);
        self.admin_gauge.set(state as i64);
    }

    fn set_weight(&self, weight: u32) {
        self.weight.store(weight, Ordering::Relaxed);
        self.weight_gauge.set(i64::from(weight));
    }

    /// Whether it may take a request of a new client (healthy and ready).
    fn open_to_new(&self) -> bool {
        self.is_healthy() && self.admin.load(Ordering::Relaxed) == AdminState::Ready as u8
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
    /// Records the time a response took to begin.
    pub(crate) fn observe_latency(&self, d: Duration) {
        self.latency.observe(d.as_secs_f64());
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        // avg += (sample - avg) / 64, without a lock.
        let _ = self
            .recent_us
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |avg| {
                Some(if avg == 0 {
                    us
                } else {
                    avg - avg / 64 + us / 64
                })
            });
    }

    /// The recent response time (a moving average over about 64 responses).
    pub fn recent_response_time(&self) -> Duration {
        Duration::from_micros(self.recent_us.load(Ordering::Relaxed))
    }

    /// Requests sent to it, and those that failed, since it joined the pool.
    pub fn totals(&self) -> (u64, u64) {
        (self.requests.get(), self.failures.get())
    }

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

/// The per-server metric families, kept to add and remove the series of servers that
/// a reload adds and removes.
#[derive(Clone)]
struct ServerMetrics {
    requests: Family<ServerLabels, Counter>,
    latency: Family<ServerLabels, Histogram, fn() -> Histogram>,
    failures: Family<ServerLabels, Counter>,
    up: Family<ServerLabels, Gauge>,
    in_flight: Family<ServerLabels, Gauge>,
    ejections: Family<ServerLabels, Counter>,
    weight: Family<ServerLabels, Gauge>,
    admin: Family<ServerLabels, Gauge>,
}

/// Response times from 0.5 ms to 16 s, each bucket twice the last.
fn latency_histogram() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.0005, 2.0, 16,
    ))
}

impl Default for ServerMetrics {
    fn default() -> ServerMetrics {
        ServerMetrics {
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            failures: Family::default(),
            up: Family::default(),
            in_flight: Family::default(),
            ejections: Family::default(),
            weight: Family::default(),
            admin: Family::default(),
        }
    }
}

impl ServerMetrics {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "hastack_upstream_response_seconds",
            "Time from sending a request to an upstream server to its response headers",
            self.latency.clone(),
        );
        registry.register(
            "hastack_upstream_requests",
            "Requests sent to an upstream server",
            self.requests.clone(),
        );
        registry.register(
            "hastack_upstream_failures",
            "Requests to an upstream server that failed",
            self.failures.clone(),
        );
        registry.register(
            "hastack_upstream_up",
            "1 when the upstream server is healthy",
            self.up.clone(),
        );
        registry.register(
            "hastack_upstream_in_flight",
            "Requests in flight on an upstream server",
            self.in_flight.clone(),
        );
        registry.register(
            "hastack_upstream_ejections",
            "Times an upstream server was ejected after consecutive failures",
            self.ejections.clone(),
        );
        registry.register(
            "hastack_upstream_weight",
            "The upstream server's configured weight",
            self.weight.clone(),
        );
        registry.register(
            "hastack_upstream_admin_state",
            "What the operator said of the server: 0 ready, 1 drain, 2 maint",
            self.admin.clone(),
        );
    }

    fn forget(&self, labels: &ServerLabels) {
        self.requests.remove(labels);
        self.latency.remove(labels);
        self.failures.remove(labels);
        self.up.remove(labels);
        self.in_flight.remove(labels);
        self.ejections.remove(labels);
        self.weight.remove(labels);
        self.admin.remove(labels);
    }
}

/// The servers of a pool and the options in force: what one request decides on. A
/// reload or a weight change replaces it whole (a new balancer included).
#[derive(Debug)]
pub struct ServerSet {
    servers: Vec<Arc<Server>>,
    balancer: Balancer,
    opts: PoolOptions,
}

impl ServerSet {
    fn new(servers: Vec<Arc<Server>>, opts: PoolOptions) -> ServerSet {
        let named: Vec<(&str, u32)> = servers
            .iter()
            .map(|s| (s.name.as_str(), s.weight()))
            .collect();
        let balancer = Balancer::new(opts.algorithm, &named, opts.hash_factor_pct);
        ServerSet {
            servers,
            balancer,
            opts,
        }
    }

    /// All servers, in the topology's order.
    pub fn servers(&self) -> &[Arc<Server>] {
        &self.servers
    }

    /// The options in force.
    pub fn options(&self) -> &PoolOptions {
        &self.opts
    }

    /// A server for a request with hash `key` (see [`crate::balance`]), skipping the
    /// servers with the ids in `exclude` (they already failed this request), servers
    /// drained or in maintenance and servers at their connection limit; `None` when no
    /// server may take it now.
    pub fn pick(&self, key: u64, exclude: &[u64]) -> Option<&Arc<Server>> {
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
                    usable: s.open_to_new()
                        && !exclude.contains(&s.id)
                        && (max_conn == 0 || active < max_conn),
                }
            },
            key,
            random,
        )?;
        Some(&self.servers[i])
    }

    /// The server called `name`, if it may take a request of a client stuck to it now
    /// (sticky sessions): healthy, not in maintenance, under its limit. A drained
    /// server still takes its sticky clients.
    pub fn pick_named(&self, name: &str) -> Option<&Arc<Server>> {
        let s = self.servers.iter().find(|s| s.name == name)?;
        let open = s.is_healthy()
            && s.admin_state() != AdminState::Maint
            && (self.opts.max_conn == 0 || s.active() < self.opts.max_conn);
        open.then_some(s)
    }
}

/// A set of servers behind one name, balanced as its options say.
pub struct Pool {
    name: String,
    set: ArcSwap<ServerSet>,
    tls: Option<PoolTls>,
    metrics: ServerMetrics,
    /// Wakes requests waiting in the queue when a slot frees.
    freed: Arc<Notify>,
    queued: Gauge,
    queue_timeouts: Counter,
    /// The health checks' settings once they run, so that servers a reload adds are
    /// checked too.
    checks: Mutex<Option<(HealthCheck, watch::Receiver<bool>)>>,
    next_id: AtomicU64,
    /// Serialises the changes of the set; requests read it without a lock.
    changing: Mutex<()>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("name", &self.name)
            .field("set", &self.set.load())
            .finish_non_exhaustive()
    }
}

/// Why no server was picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoServer {
    /// None is healthy (or all were tried).
    Down,
    /// All are at their connection limit and the queue wait ran out.
    QueueFull,
}

/// An operator's command named a server the pool does not have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("pool {pool} has no server `{server}` (it has: {known})")]
pub struct UnknownServer {
    /// The pool.
    pub pool: String,
    /// The name given.
    pub server: String,
    /// The servers it has.
    pub known: String,
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
        let metrics = ServerMetrics::default();
        metrics.register(registry);
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
        let pool_labels = PoolLabels {
            pool: name.to_string(),
        };
        let pool = Pool {
            name: name.to_string(),
            set: ArcSwap::from_pointee(ServerSet::new(Vec::new(), opts.clone())),
            tls,
            metrics,
            freed: Arc::new(Notify::new()),
            queued: queued.get_or_create(&pool_labels).clone(),
            queue_timeouts: queue_timeouts.get_or_create(&pool_labels).clone(),
            checks: Mutex::new(None),
            next_id: AtomicU64::new(0),
            changing: Mutex::new(()),
        };
        let servers = servers
            .iter()
            .filter_map(|(n, addr)| pool.server(n, *addr, weight_in(&opts, n), true))
            .collect();
        pool.set.store(Arc::new(ServerSet::new(servers, opts)));
        Arc::new(pool)
    }

    /// A new server `name` at `addr`; `None` when the name cannot be a TLS server name.
    fn server(
        &self,
        name: &str,
        addr: SocketAddr,
        weight: u32,
        healthy: bool,
    ) -> Option<Arc<Server>> {
        let labels = ServerLabels {
            pool: self.name.clone(),
            server: name.to_string(),
        };
        let authority: Authority = addr.to_string().parse().ok()?;
        let tls = match &self.tls {
            Some(t) => Some(UpstreamTls {
                connector: hastack_tls::TlsConnector::from(t.config.clone()),
                name: hastack_tls::rustls_pki::ServerName::try_from(name.to_string()).ok()?,
                metrics: t.metrics.clone(),
            }),
            None => None,
        };
        let m = &self.metrics;
        let s = Server {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            name: name.to_string(),
            addr,
            authority,
            conns: Arc::default(),
            tls,
            healthy: AtomicBool::new(healthy),
            weight: AtomicU32::new(weight),
            admin: AtomicU8::new(AdminState::Ready as u8),
            retired: AtomicBool::new(false),
            active: AtomicU32::new(0),
            since: Mutex::default(),
            errors: AtomicU32::new(0),
            requests: m.requests.get_or_create(&labels).clone(),
            failures: m.failures.get_or_create(&labels).clone(),
            latency: m.latency.get_or_create(&labels).clone(),
            recent_us: AtomicU64::new(0),
            up: m.up.get_or_create(&labels).clone(),
            in_flight: m.in_flight.get_or_create(&labels).clone(),
            ejections: m.ejections.get_or_create(&labels).clone(),
            weight_gauge: m.weight.get_or_create(&labels).clone(),
            admin_gauge: m.admin.get_or_create(&labels).clone(),
            freed: self.freed.clone(),
            labels,
        };
        s.up.set(i64::from(healthy));
        s.weight_gauge.set(i64::from(weight));
        s.admin_gauge.set(AdminState::Ready as i64);
        Some(Arc::new(s))
    }

    /// The servers and options in force now.
    pub fn set(&self) -> Arc<ServerSet> {
        self.set.load_full()
    }

    /// The pool's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// All servers now.
    pub fn servers(&self) -> Vec<Arc<Server>> {
        self.set.load().servers.clone()
    }

    /// Each server's name, health, operator state, weight and requests in flight, for
    /// `/healthz` and `hastack lb show`.
    pub fn upstreams(&self) -> Vec<hastack_status::health::Upstream> {
        self.set
            .load()
            .servers
            .iter()
            .map(|s| hastack_status::health::Upstream {
                name: s.name.to_string(),
                addr: s.addr.to_string(),
                healthy: s.is_healthy(),
                state: s.admin_state().as_str().to_string(),
                weight: s.weight(),
                in_flight: s.active(),
            })
            .collect()
    }

    /// [`ServerSet::pick`] on the servers in force.
    pub fn pick(&self, key: u64, exclude: &[u64]) -> Option<Arc<Server>> {
        self.set.load().pick(key, exclude).cloned()
    }

    /// Like [`Pool::pick`], but when every server that may take the request is at its
    /// connection limit, waits in the queue for a slot, up to the queue timeout.
    pub async fn pick_queued(&self, key: u64, exclude: &[u64]) -> Result<Arc<Server>, NoServer> {
        // A guard, not a counted reference: the common case returns at once.
        let queue_timeout = {
            let set = self.set.load();
            if let Some(s) = set.pick(key, exclude) {
                return Ok(s.clone());
            }
            let limited = set.opts.max_conn > 0
                && set
                    .servers
                    .iter()
                    .any(|s| s.open_to_new() && !exclude.contains(&s.id));
            if !limited {
                return Err(NoServer::Down);
            }
            set.opts.queue_timeout
        };
        self.queued.inc();
        let deadline = Instant::now() + queue_timeout;
        let outcome = loop {
            let freed = self.freed.notified();
            if let Some(s) = self.pick(key, exclude) {
                break Ok(s);
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

    fn find(&self, name: &str) -> Result<Arc<Server>, UnknownServer> {
        let set = self.set.load();
        set.servers
            .iter()
            .find(|s| s.name == name)
            .cloned()
            .ok_or_else(|| UnknownServer {
                pool: self.name.clone(),
                server: name.to_string(),
                known: set
                    .servers
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// Puts server `name` in `state`; returns the state it was in.
    pub fn set_admin(&self, name: &str, state: AdminState) -> Result<AdminState, UnknownServer> {
        let s = self.find(name)?;
        let before = s.admin_state();
        s.set_admin(state);
        if before != state {
            info!(server = %s.name, from = before.as_str(), to = state.as_str(), "operator changed the upstream's state");
            // Requests queued for a slot may now go elsewhere, or here.
            self.freed.notify_waiters();
        }
        Ok(before)
    }

    /// Gives server `name` weight `weight` (the hash ring is rebuilt); returns its
    /// weight before. Kept until the next reload, which applies the file's weights.
    pub fn set_weight(&self, name: &str, weight: u32) -> Result<u32, UnknownServer> {
        let _changing = self.changing.lock().unwrap_or_else(|e| e.into_inner());
        let s = self.find(name)?;
        let before = s.weight();
        s.set_weight(weight);
        let set = self.set.load_full();
        self.set.store(Arc::new(ServerSet::new(
            set.servers.clone(),
            set.opts.clone(),
        )));
        info!(server = %s.name, from = before, to = weight, "operator changed the upstream's weight");
        Ok(before)
    }

    /// Applies a changed configuration: these servers, these options. A server with
    /// the same name and address as before stays as it is (health, connections,
    /// requests in flight, operator state) and takes its new weight; a new one starts
    /// down until its health checks pass (when checks run); a removed one gets no new
    /// request and its checks stop. Returns what changed, one line per change.
    pub fn update(&self, servers: &[(String, SocketAddr)], opts: PoolOptions) -> Vec<String> {
        let _changing = self.changing.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.set.load_full();
        let checks = self
            .checks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut changes = Vec::new();
        let mut next = Vec::with_capacity(servers.len());
        for (name, addr) in servers {
            let weight = weight_in(&opts, name);
            let kept = old
                .servers
                .iter()
                .find(|s| &s.name == name && s.addr == *addr);
            match kept {
                Some(s) => {
                    if s.weight() != weight {
                        changes.push(format!("{}: weight {} -> {weight}", s.name, s.weight()));
                        s.set_weight(weight);
                    }
                    next.push(s.clone());
                }
                None => {
                    if let Some(replaced) = old.servers.iter().find(|s| &s.name == name) {
                        self.retire(replaced);
                    }
                    let Some(s) = self.server(name, *addr, weight, checks.is_none()) else {
                        warn!(server = %name, "not a usable server name; left out");
                        continue;
                    };
                    changes.push(format!("{name}: added at {addr}"));
                    if let Some((check, shutdown)) = &checks {
                        self.spawn_check(s.clone(), *check, shutdown.clone());
                    }
                    next.push(s);
                }
            }
        }
        for s in &old.servers {
            if !servers.iter().any(|(n, _)| *n == s.name) {
                changes.push(format!("{}: removed", s.name));
                self.retire(s);
            }
        }
        let o = &old.opts;
        let mut differs =
            |what: &str, before: &dyn std::fmt::Debug, after: &dyn std::fmt::Debug| {
                let (before, after) = (format!("{before:?}"), format!("{after:?}"));
                if before != after {
                    changes.push(format!("{what}: {before} -> {after}"));
                }
            };
        differs("balance", &o.algorithm.as_str(), &opts.algorithm.as_str());
        differs("hash_key", &o.hash_key, &opts.hash_key);
        differs(
            "hash_balance_factor",
            &o.hash_factor_pct,
            &opts.hash_factor_pct,
        );
        differs("sticky_cookie", &o.sticky_cookie, &opts.sticky_cookie);
        differs("max_conn_per_server", &o.max_conn, &opts.max_conn);
        differs("queue_timeout", &o.queue_timeout, &opts.queue_timeout);
        differs("slow_start", &o.slow_start, &opts.slow_start);
        differs("eject_after", &o.eject_after, &opts.eject_after);
        differs("eject_for", &o.eject_for, &opts.eject_for);
        self.set.store(Arc::new(ServerSet::new(next, opts)));
        // Queued requests look again: the limit or the servers may have changed.
        self.freed.notify_waiters();
        changes
    }

    /// Takes `s` out of the pool for good: no checks, no metric series. Requests in
    /// flight on it finish.
    fn retire(&self, s: &Server) {
        s.retired.store(true, Ordering::Relaxed);
        self.metrics.forget(&s.labels);
    }

    /// Runs the active health checks of every server until `shutdown` (and those of
    /// the servers a reload adds): `GET /healthz` over the same TLS as traffic on a
    /// kept-alive connection of its own, or a connection that opens.
    pub fn spawn_health_checks(
        self: &Arc<Self>,
        check: HealthCheck,
        shutdown: watch::Receiver<bool>,
    ) {
        *self.checks.lock().unwrap_or_else(|e| e.into_inner()) = Some((check, shutdown.clone()));
        for server in self.servers() {
            self.spawn_check(server, check, shutdown.clone());
        }
    }

    fn spawn_check(
        &self,
        server: Arc<Server>,
        check: HealthCheck,
        mut shutdown: watch::Receiver<bool>,
    ) {
        tokio::spawn(async move {
            let mut conn: Option<SendRequest<Empty<Bytes>>> = None;
            let mut tracker = RiseFall::new(check.rise, check.fall, server.is_healthy());
            let mut next = Instant::now();
            loop {
                tokio::select! {
                    _ = shutdown.changed() => return,
                    _ = tokio::time::sleep_until(next) => {}
                }
                if server.retired.load(Ordering::Relaxed) {
                    return;
                }
                let started = Instant::now();
                let attempt = async {
                    match check.kind {
                        CheckKind::Http => probe(&server, &mut conn, check.proxy_header).await,
                        CheckKind::Tcp => connects(&server, check.proxy_header).await,
                    }
                };
                let outcome = match tokio::time::timeout(check.timeout, attempt).await {
                    Ok(Err(ProbeError::Local(why))) => {
                        // This host is short of descriptors or ports: no verdict on
                        // the server, which may be perfectly healthy.
                        tracing::debug!(server = %server.name, why, "health check not run");
                        next = started + check.interval;
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
                next = started + check.next_in(tracker.changing());
            }
        });
    }
}

/// Server `name`'s weight in `opts` (1 when absent).
fn weight_in(opts: &PoolOptions, name: &str) -> u32 {
    opts.weights
        .iter()
        .find(|(w, _)| w == name)
        .map_or(1, |(_, w)| *w)
}

impl HealthCheck {
    /// The wait before the next check: a quarter of the interval while the server's
    /// state is changing (HAProxy's `fastinter`), so a server that has begun to fail
    /// is out sooner, and one that has begun to answer is back sooner.
    pub fn next_in(&self, changing: bool) -> Duration {
        if changing {
            self.interval / 4
        } else {
            self.interval
        }
    }
}

/// A TCP health check: the connection (and TLS handshake) opens.
async fn connects(server: &Server, proxy_header: bool) -> Result<(), ProbeError> {
    let header = proxy_header.then(hastack_runtime::proxy_protocol::encode_local);
    Ok(crate::conn::dial_raw(server.addr, server.tls.as_ref(), header.as_deref()).await?)
}

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

impl From<crate::conn::DialError> for ProbeError {
    fn from(e: crate::conn::DialError) -> ProbeError {
        if e.local {
            ProbeError::Local(e.why)
        } else {
            ProbeError::Server(e.why)
        }
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

/// One HTTP health check of `server` on `conn` (opened, or opened again, as needed).
async fn probe(
    server: &Server,
    conn: &mut Option<SendRequest<Empty<Bytes>>>,
    proxy_header: bool,
) -> Result<(), ProbeError> {
    let mut sender = match conn.take() {
        Some(s) if !s.is_closed() => s,
        _ => {
            let header = proxy_header.then(hastack_runtime::proxy_protocol::encode_local);
            crate::conn::dial(server.addr, server.tls.as_ref(), header.as_deref()).await?
        }
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

    /// Whether the last checks disagreed with the verdict: the state may be changing.
    pub fn changing(&self) -> bool {
        self.streak > 0
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
        let picks: Vec<_> = (0..6).map(|_| p.pick(0, &[]).map(|s| s.id)).collect();
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
            let s = p.pick(0, &[]).expect("a server");
            assert_ne!(s.id, 1);
        }
        for _ in 0..10 {
            assert_eq!(p.pick(0, &[0]).map(|s| s.id), Some(2));
        }
        assert!(p.pick(0, &[0, 2]).is_none());
        assert!(pool(0).pick(0, &[]).is_none());
    }

    #[test]
    fn drain_keeps_sticky_clients_and_maint_takes_everything_out() {
        let p = pool(2);
        assert_eq!(p.set_admin("s0", AdminState::Drain), Ok(AdminState::Ready));
        for _ in 0..4 {
            assert_eq!(
                p.pick(0, &[]).map(|s| s.id),
                Some(1),
                "no new client for s0"
            );
        }
        assert!(
            p.set().pick_named("s0").is_some(),
            "a client stuck to s0 by its cookie stays (HAProxy's drain)"
        );
        p.set_admin("s0", AdminState::Maint).expect("s0");
        assert!(
            p.set().pick_named("s0").is_none(),
            "maint: not even sticky clients"
        );
        p.set_admin("s0", AdminState::Ready).expect("s0");
        let picks: Vec<_> = (0..2)
            .filter_map(|_| p.pick(0, &[]).map(|s| s.id))
            .collect();
        assert!(picks.contains(&0), "ready again: {picks:?}");
        let err = p.set_admin("s9", AdminState::Drain).expect_err("no s9");
        assert_eq!(
            err.to_string(),
            "pool t has no server `s9` (it has: s0, s1)"
        );
    }

    #[test]
    fn an_update_keeps_the_servers_it_still_has_and_their_state() {
        let p = pool(2);
        let s0 = p.servers()[0].clone();
        s0.mark_down("test");
        let _busy = s0.begin();
        let a = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
        let opts = PoolOptions {
            weights: vec![("s0".into(), 3)],
            ..PoolOptions::default()
        };
        // s0 stays where it was, s1 moves to another port, s2 is new.
        let changes = p.update(
            &[
                ("s0".into(), a(1000)),
                ("s1".into(), a(2001)),
                ("s2".into(), a(2002)),
            ],
            opts,
        );
        assert_eq!(
            changes,
            [
                "s0: weight 1 -> 3",
                "s1: added at 127.0.0.1:2001",
                "s2: added at 127.0.0.1:2002"
            ]
        );
        let now = p.servers();
        assert!(
            Arc::ptr_eq(&now[0], &s0),
            "the same s0: its connections and state"
        );
        assert!(!now[0].is_healthy() && now[0].active() == 1 && now[0].weight() == 3);
        assert_ne!(now[1].id, 1, "a moved server is a new one");
        assert!(
            now[1].is_healthy(),
            "without health checks running, new servers start up"
        );
        let changes = p.update(&[("s2".into(), a(2002))], PoolOptions::default());
        assert_eq!(changes, ["s0: removed", "s1: removed"]);
        assert!(s0.retired.load(Ordering::Relaxed), "its health checks stop");
        assert_eq!(p.pick(0, &[]).map(|s| s.name.clone()), Some("s2".into()));
    }

    #[test]
    fn checks_come_four_times_as_often_while_a_state_changes() {
        let check = HealthCheck {
            interval: Duration::from_millis(200),
            timeout: Duration::from_millis(100),
            rise: 2,
            fall: 3,
            kind: CheckKind::Tcp,
            proxy_header: false,
        };
        let mut t = RiseFall::new(2, 3, true);
        assert_eq!(check.next_in(t.changing()), Duration::from_millis(200));
        t.observe(false);
        assert_eq!(
            check.next_in(t.changing()),
            Duration::from_millis(50),
            "a first failure: the next check comes sooner"
        );
        t.observe(false);
        t.observe(false);
        assert!(!t.healthy);
        assert_eq!(
            check.next_in(t.changing()),
            Duration::from_millis(200),
            "settled: down"
        );
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
