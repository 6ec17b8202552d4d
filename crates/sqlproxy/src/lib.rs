//! Local database endpoints for any application: what ProxySQL, MaxScale or RDS Proxy
//! give an app, on every app node.
//!
//! The app speaks plain MySQL protocol to a local address with the account hastack put
//! in its environment; the endpoint logs in to MariaDB over TLS (verified certificates,
//! the node's own client certificate) and relays the session. Two endpoints per node:
//! - the **writer** always reaches the one writable primary. While there is none (a
//!   failover under way) a new login, or a command of a session that must move, waits
//!   for it up to a bound, then gets a clear MySQL error (1053, SQLSTATE 08S01);
//! - the **reader** balances new sessions over the replicas within the lag bound, and
//!   falls back to the primary when none qualifies.
//!
//! Where the servers are comes in as [`Routes`] on a watch channel (the app node's
//! monitor of the db tier decides them); nothing here probes a server.
//!
//! When a session's server leaves (the primary was fenced or died, a replica fell
//! behind), an idle session that holds nothing on it ([`session`]) moves to the new
//! server before its next command without the app seeing an error; one that cannot
//! move is closed, so the app's pool reconnects. A write that the fenced old primary
//! refused as read-only surely did not run, and is sent once more to the new primary.
//!
//! Architecture invariant: a write is only ever sent to the server the routes name as
//! the writer at that moment; a session is never moved while a transaction, a
//! prepared statement or other server-side state is open.

pub mod packet;
pub mod response;
pub mod session;
pub mod upstream;

mod conn;

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{debug, warn};

pub use upstream::{Login, Server};
use upstream::{Upstream, UpstreamError, Want};

/// Which endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The primary's.
    Writer,
    /// The replicas'.
    Reader,
}

impl Side {
    /// `writer` or `reader`.
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Writer => "writer",
            Side::Reader => "reader",
        }
    }
}

/// Where sessions may go now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Routes {
    /// The one writable primary (`None`: none now, e.g. during a failover).
    pub writer: Option<Server>,
    /// The replicas that may serve reads.
    pub readers: Vec<Server>,
}

/// Why a session could not get a server.
#[derive(Debug)]
pub enum OpenError {
    /// The server refused the login (bad database, too many connections…): its ERR
    /// packet, sent on to the client as it is.
    Refused(Vec<u8>),
    /// The session's settings could not be replayed on the new server.
    Replay(String),
    /// No server within the wait.
    NoServer {
        /// Which endpoint.
        side: Side,
        /// How long it waited.
        waited: Duration,
        /// The last connection error, if a server was tried.
        last: Option<String>,
    },
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServerLabels {
    endpoint: &'static str,
    server: String,
}

/// The endpoint's counters (`hastack_db_endpoint_*` in `/metrics`).
#[derive(Clone, Default)]
struct Metrics {
    connections: Gauge,
    accepted: Counter,
    refused: Counter,
    waits: Counter,
    wait_timeouts: Counter,
    moved: Counter,
    closed: Counter,
    retried: Counter,
    sessions: Family<ServerLabels, Gauge>,
}

/// One local endpoint: its account, its side, where its sessions may go.
pub struct Endpoint {
    side: Side,
    login: Login,
    wait: Duration,
    routes: watch::Receiver<Arc<Routes>>,
    metrics: Metrics,
    next_id: AtomicU32,
    next_reader: AtomicUsize,
    version: Mutex<String>,
    address: Mutex<String>,
}

/// The version the endpoint announces until it has seen a server's.
const DEFAULT_VERSION: &str = "5.5.5-10.11-MariaDB-hastack";

impl Endpoint {
    /// An endpoint of `side` that logs clients in as `login` (the same account it
    /// uses upstream), waits at most `wait` for a server, and routes by `routes`.
    pub fn new(
        side: Side,
        login: Login,
        wait: Duration,
        routes: watch::Receiver<Arc<Routes>>,
        registry: &mut Registry,
    ) -> Arc<Endpoint> {
        let m = Metrics::default();
        let sub = registry.sub_registry_with_label(("endpoint".into(), side.as_str().into()));
        sub.register(
            "hastack_db_endpoint_connections",
            "Client connections open on the local database endpoint",
            m.connections.clone(),
        );
        sub.register(
            "hastack_db_endpoint_accepted",
            "Client connections accepted",
            m.accepted.clone(),
        );
        sub.register(
            "hastack_db_endpoint_logins_refused",
            "Client logins refused (wrong user or password)",
            m.refused.clone(),
        );
        sub.register(
            "hastack_db_endpoint_waits",
            "Logins or commands that waited for a server (a failover under way)",
            m.waits.clone(),
        );
        sub.register(
            "hastack_db_endpoint_wait_timeouts",
            "Waits for a server that gave up (the client got error 1053)",
            m.wait_timeouts.clone(),
        );
        sub.register(
            "hastack_db_endpoint_sessions_moved",
            "Idle sessions moved to a new server without an error to the client",
            m.moved.clone(),
        );
        sub.register(
            "hastack_db_endpoint_sessions_closed",
            "Sessions closed because their server left and they could not move",
            m.closed.clone(),
        );
        sub.register(
            "hastack_db_endpoint_writes_resent",
            "Writes refused as read-only by a fenced primary and sent to the new one",
            m.retried.clone(),
        );
        registry.register(
            "hastack_db_endpoint_server_sessions",
            "Sessions open on each database server, by endpoint",
            m.sessions.clone(),
        );
        Arc::new(Endpoint {
            side,
            login,
            wait,
            routes,
            metrics: m,
            next_id: AtomicU32::new(1),
            next_reader: AtomicUsize::new(0),
            version: Mutex::new(DEFAULT_VERSION.into()),
            address: Mutex::new(String::new()),
        })
    }

    /// Accepts clients on `listener` until `shutdown` turns true.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        mut shutdown: watch::Receiver<bool>,
    ) {
        if let Ok(a) = listener.local_addr() {
            *self.address.lock().unwrap_or_else(|e| e.into_inner()) = a.to_string();
        }
        loop {
            let accepted = tokio::select! {
                r = listener.accept() => r,
                _ = shutdown.changed() => return,
            };
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    warn!(endpoint = self.side.as_str(), error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            self.metrics.accepted.inc();
            self.metrics.connections.inc();
            let ep = self.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                if let Err(e) = conn::serve(ep.clone(), stream, shutdown).await {
                    debug!(endpoint = ep.side.as_str(), %peer, error = %e, "client connection ended");
                }
                ep.metrics.connections.dec();
            });
        }
    }

    /// What `/healthz` shows of this endpoint.
    pub fn status(&self) -> hastack_status::health::DbEndpoint {
        let routes = self.routes.borrow().clone();
        let target = match self.side {
            Side::Writer => routes.writer.as_ref(),
            Side::Reader => routes.readers.first().or(routes.writer.as_ref()),
        };
        hastack_status::health::DbEndpoint {
            name: self.side.as_str().into(),
            address: self
                .address
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            target: target.map(|s| s.name.clone()),
            connections: u64::try_from(self.metrics.connections.get()).unwrap_or(0),
            waits: self.metrics.waits.get(),
            wait_timeouts: self.metrics.wait_timeouts.get(),
            moved: self.metrics.moved.get(),
            closed: self.metrics.closed.get(),
        }
    }

    fn version(&self) -> String {
        self.version
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn next_connection_id(&self) -> u32 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// The server a new session of this endpoint goes to now.
    fn pick(&self, routes: &Routes, avoid: Option<&Server>) -> Option<Server> {
        match self.side {
            Side::Writer => routes.writer.clone().filter(|w| Some(w) != avoid),
            Side::Reader => {
                let usable: Vec<&Server> = routes
                    .readers
                    .iter()
                    .filter(|s| Some(*s) != avoid)
                    .collect();
                if usable.is_empty() {
                    return routes.writer.clone().filter(|w| Some(w) != avoid);
                }
                let i = self.next_reader.fetch_add(1, Ordering::Relaxed);
                Some(usable[i % usable.len()].clone())
            }
        }
    }

    /// Whether a session on `server` may stay there.
    fn acceptable(&self, server: &Server) -> bool {
        let routes = self.routes.borrow();
        match self.side {
            Side::Writer => routes.writer.as_ref() == Some(server),
            Side::Reader => {
                routes.readers.contains(server)
                    || (routes.readers.is_empty() && routes.writer.as_ref() == Some(server))
            }
        }
    }

    /// A server connection for a session with `want`, its settings replayed: the one
    /// the routes name now, or the next one they name within the wait.
    async fn open(
        &self,
        want: &Want,
        session: &session::Session,
        avoid: Option<&Server>,
    ) -> Result<Upstream, OpenError> {
        let started = Instant::now();
        let deadline = started + self.wait;
        let mut routes = self.routes.clone();
        let mut last: Option<String> = None;
        let mut waited = false;
        loop {
            let target = self.pick(&routes.borrow_and_update(), avoid);
            if let Some(server) = target {
                match upstream::connect(&server, &self.login, want).await {
                    Ok(mut up) => {
                        replay(&mut up, session).await.map_err(OpenError::Replay)?;
                        *self.version.lock().unwrap_or_else(|e| e.into_inner()) =
                            up.version.clone();
                        let held = self
                            .metrics
                            .sessions
                            .get_or_create(&ServerLabels {
                                endpoint: self.side.as_str(),
                                server: server.name.clone(),
                            })
                            .clone();
                        held.inc();
                        up.held = Some(held);
                        if waited {
                            debug!(endpoint = self.side.as_str(), server = %server.name, waited = ?started.elapsed(), "a server after a wait");
                        }
                        return Ok(up);
                    }
                    Err(UpstreamError::Refused(_, _, err)) => return Err(OpenError::Refused(err)),
                    Err(e) => {
                        debug!(endpoint = self.side.as_str(), server = %server.name, error = %e, "server connection failed");
                        last = Some(format!("{}: {e}", server.name));
                    }
                }
            }
            if !waited {
                waited = true;
                self.metrics.waits.inc();
            }
            let now = Instant::now();
            if now >= deadline {
                self.metrics.wait_timeouts.inc();
                return Err(OpenError::NoServer {
                    side: self.side,
                    waited: now - started,
                    last,
                });
            }
            // A new picture of the servers, or a short pause before trying the same
            // server again (it may be starting, or not yet known to be gone).
            let pause = (deadline - now).min(Duration::from_millis(50));
            tokio::select! {
                _ = routes.changed() => {}
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }
}

/// Sends the session's settings to a new server, in order; each must succeed.
async fn replay(up: &mut Upstream, session: &session::Session) -> Result<(), String> {
    use tokio::io::AsyncWriteExt;
    let mut buf = Vec::new();
    for command in session.replay() {
        let shape = command
            .first()
            .and_then(|c| response::Shape::of(*c))
            .unwrap_or(response::Shape::Simple);
        let io = async {
            upstream::write_packet(&mut up.io, 0, command).await?;
            up.io.flush().await?;
            let mut tracker = response::Tracker::new(shape);
            loop {
                upstream::read_packet(&mut up.io, &mut buf).await?;
                match tracker.feed(&buf) {
                    Ok(response::Step::More) => {}
                    Ok(response::Step::Done(o)) => return Ok::<_, std::io::Error>(o),
                    Err(e) => return Err(std::io::Error::other(e.to_string())),
                }
            }
        };
        let outcome = io
            .await
            .map_err(|e| format!("replaying the session's settings: {e}"))?;
        if let Some(code) = outcome.error {
            return Err(format!(
                "the new server refused one of the session's settings (error {code})"
            ));
        }
    }
    Ok(())
}
