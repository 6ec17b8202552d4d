//! An upstream pool: its servers, round-robin choice among the healthy ones, and the
//! active health checks (`GET /healthz`, interval, rise, fall) that decide who is healthy.
//!
//! A server is also taken out at once when a connection to it is refused (passive
//! check); only active checks bring it back.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::uri::Authority;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::conn::UpstreamTls;

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
    pub(crate) requests: Counter,
    pub(crate) failures: Counter,
    up: Gauge,
}

impl Server {
    /// Whether the server gets traffic.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    fn set_healthy(&self, healthy: bool, why: &str) {
        if self.healthy.swap(healthy, Ordering::Relaxed) != healthy {
            if healthy {
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

/// A set of servers behind one name, with round-robin choice.
#[derive(Debug)]
pub struct Pool {
    name: String,
    servers: Vec<Arc<Server>>,
    next: AtomicUsize,
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
                    requests: requests.get_or_create(&labels).clone(),
                    failures: failures.get_or_create(&labels).clone(),
                    up: up.get_or_create(&labels).clone(),
                };
                s.up.set(1);
                Some(Arc::new(s))
            })
            .collect();
        Arc::new(Pool {
            name: name.to_string(),
            servers,
            next: AtomicUsize::new(0),
        })
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

    /// The next healthy server in round-robin order, skipping `exclude` (servers that
    /// already failed this request).
    pub fn pick(&self, exclude: &[usize]) -> Option<(usize, &Arc<Server>)> {
        let n = self.servers.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|i| (start + i) % n)
            .find(|i| !exclude.contains(i) && self.servers[*i].is_healthy())
            .map(|i| (i, &self.servers[i]))
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
                    let ok = outcome.is_ok();
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
        let picks: Vec<_> = (0..6).map(|_| p.pick(&[]).map(|(i, _)| i)).collect();
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
            let (i, _) = p.pick(&[]).expect("a server");
            assert_ne!(i, 1);
        }
        for _ in 0..10 {
            assert_eq!(p.pick(&[0]).map(|(i, _)| i), Some(2));
        }
        assert!(p.pick(&[0, 2]).is_none());
        assert!(pool(0).pick(&[]).is_none());
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
