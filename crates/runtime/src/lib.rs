//! What every hastack node process shares, whatever its tier:
//!
//! - the admin endpoints, `GET /healthz` (the role's typed [`Health`]) and Prometheus
//!   `GET /metrics` with the process's own figures ([`Admin`], [`metrics`]);
//! - the one accept loop (keep-alive, header timeout, graceful drain; TLS with HTTP/2 or
//!   HTTP/1.1 by ALPN when given an acceptor) that every listener uses ([`serve`]);
//! - child processes that die with their parent ([`child::die_with_parent`]);
//! - the database passwords the nodes of a stack share ([`secrets::DbSecrets`]).
//!
//! Nothing here knows about tiers: a node hands in a health probe and a metrics
//! registry.

pub mod child;
pub mod conn_limits;
pub mod control_socket;
pub mod front_door;
pub mod metrics;
pub mod proxy_protocol;
pub mod rotating_log;
pub mod secrets;
pub mod zero_copy;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{debug, warn};

pub use hastack_status::Health;

/// A node's answer to `/healthz`: healthy or not, and its role's typed document saying
/// why ([`hastack_status::Health`], which every reader deserializes).
#[derive(Debug, Clone)]
pub struct HealthReport {
    /// 200 when true, 503 when false.
    pub healthy: bool,
    /// The document (the node's role, its state, what it checked).
    pub body: Health,
}

impl HealthReport {
    /// A report serialized for the wire.
    pub fn to_json(&self) -> String {
        serde_json::to_string(&self.body).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}

/// A listener that could not be opened, with what it was for.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} ({what}): {source}")]
pub struct BindError {
    /// The address.
    pub addr: SocketAddr,
    /// Which listener (`http`, `admin`, `vrrp`, `vip`).
    pub what: &'static str,
    /// The cause, e.g. address in use.
    pub source: std::io::Error,
}

/// The probe a node runs on each `/healthz`.
pub type HealthProbe =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = HealthReport> + Send>> + Send + Sync>;

/// The probe of a node that is healthy whenever it runs; `describe` says what state it
/// is in (VRRP state, upstreams…).
pub fn steady_probe(describe: impl Fn() -> Health + Send + Sync + 'static) -> HealthProbe {
    Arc::new(move || {
        let body = describe();
        Box::pin(async move {
            HealthReport {
                healthy: true,
                body,
            }
        })
    })
}

/// How long a client may take to send a request's headers once it has begun (408
/// after); the default of [`front_door::FrontDoor`].
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a keep-alive connection may stay idle between requests before the next
/// head must begin; a connection idle longer is closed.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// The most an HTTP/1.1 connection buffers each way (and the longest request head).
pub const MAX_CONN_BUFFER: usize = 64 * 1024;

/// How long a PROXY protocol header may take to arrive.
const PROXY_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a stopping listener lets open requests finish.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves HTTP/1.1 with keep-alive on `listener` until `shutdown` turns true, then stops
/// accepting and gives open connections [`DRAIN_TIMEOUT`] to finish.
pub async fn serve_http1<F, Fut, B>(
    listener: TcpListener,
    handler: F,
    shutdown: watch::Receiver<bool>,
) where
    F: Fn(Request<Incoming>, SocketAddr) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    serve(listener, None, handler, shutdown).await
}

/// Most concurrent streams a client may open on one HTTP/2 connection.
pub const H2_MAX_STREAMS: u32 = 128;

/// How a listener serves its connections.
#[derive(Clone, Default)]
pub struct Serving {
    /// TLS first (a plain-HTTP client gets a 400), then HTTP/2 or HTTP/1.1 by ALPN.
    pub tls: Option<hastack_tls::Acceptor>,
    /// Whether connections start with a PROXY protocol v2 header ([`proxy_protocol`])
    /// whose client address the handler gets as the peer.
    pub proxy_header: ProxyHeader,
    /// The strict front door of HTTP/1.1 ([`front_door`]): limits and counters.
    pub door: Arc<front_door::FrontDoor>,
    /// Open-connection limits in all and per client ([`conn_limits`]).
    pub limits: Option<Arc<conn_limits::ConnLimits>>,
}

/// Which connections of a listener start with a PROXY protocol v2 header.
#[derive(Clone, Debug, Default)]
pub enum ProxyHeader {
    /// None: the peer is the client.
    #[default]
    Never,
    /// Every one; a connection without is dropped (behind hastack's own lbs).
    Always,
    /// Those from these networks (proxies in front) may start with one; others are
    /// clients, and a header from them is not believed (it fails as HTTP).
    From(Arc<[ipnet::IpNet]>),
}

impl ProxyHeader {
    /// Headers from the proxies at `networks` (none: [`ProxyHeader::Never`]).
    pub fn from_networks(networks: &[ipnet::IpNet]) -> ProxyHeader {
        if networks.is_empty() {
            ProxyHeader::Never
        } else {
            ProxyHeader::From(networks.into())
        }
    }

    /// Whether `peer` is one of the networks of [`ProxyHeader::From`].
    pub fn trusts(&self, peer: std::net::IpAddr) -> bool {
        match self {
            ProxyHeader::From(nets) => nets.iter().any(|n| n.contains(&peer)),
            _ => false,
        }
    }
}

/// Serves `listener` until `shutdown` turns true, then stops accepting and gives open
/// connections [`DRAIN_TIMEOUT`] to finish. Without `tls`, HTTP/1.1 with keep-alive;
/// with it, TLS first (a plain-HTTP client gets a 400), then HTTP/2 or HTTP/1.1 as
/// ALPN chose. Requests reach `handler` the same way whatever the protocol; HTTP/1.1
/// requests pass the default front door.
pub async fn serve<F, Fut, B>(
    listener: TcpListener,
    tls: Option<hastack_tls::Acceptor>,
    handler: F,
    shutdown: watch::Receiver<bool>,
) where
    F: Fn(Request<Incoming>, SocketAddr) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let serving = Serving {
        tls,
        ..Serving::default()
    };
    serve_with(listener, serving, handler, shutdown).await
}

/// Like [`serve`], as `serving` says.
pub async fn serve_with<F, Fut, B>(
    listener: TcpListener,
    serving: Serving,
    handler: F,
    mut shutdown: watch::Receiver<bool>,
) where
    F: Fn(Request<Incoming>, SocketAddr) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut h1 = hyper::server::conn::http1::Builder::new();
    // hyper's timer runs from when it waits for a head, idle time included; the front
    // door's own (408) runs from the head's first byte.
    h1.timer(TokioTimer::new())
        .header_read_timeout(KEEPALIVE_TIMEOUT + serving.door.head_timeout())
        .keep_alive(true)
        // At most this much read ahead or queued for the client per connection (hyper's
        // default is 400 KiB: 100 MB of peak RSS for 256 clients of 100 KiB answers).
        // It bounds a request head too, as HAProxy's 16 KiB buffer and nginx's 4 x 8 KiB
        // header buffers do; hyper answers a longer head with 431.
        .max_buf_size(MAX_CONN_BUFFER);
    let mut h2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    // hyper's h2 refuses malformed and connection-specific headers, a content-length
    // that disagrees with the DATA frames, and answers a flood of reset streams
    // (CVE-2023-44487) with GOAWAY; these bound what one connection may hold.
    h2.timer(TokioTimer::new())
        .max_concurrent_streams(H2_MAX_STREAMS)
        .max_header_list_size(64 * 1024)
        .max_pending_accept_reset_streams(Some(20))
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(10));
    let (h1, h2) = (Arc::new(h1), Arc::new(h2));
    let serve = |mut stream: tokio::net::TcpStream, mut peer: SocketAddr| {
        let admitted = match serving.limits.as_ref().map(|l| l.admit(peer.ip())) {
            Some(Err(reason)) => {
                debug!(%peer, reason, "connection over a limit closed");
                return;
            }
            Some(Ok(a)) => Some(a),
            None => None,
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let watcher = graceful.watcher();
        let (h1, h2) = (h1.clone(), h2.clone());
        let (tls, door) = (serving.tls.clone(), serving.door.clone());
        let required = matches!(serving.proxy_header, ProxyHeader::Always);
        let header = required || serving.proxy_header.trusts(peer.ip());
        tokio::spawn(async move {
            let _admitted = admitted;
            if header
                && (required
                    || proxy_protocol::starts_with_header(&stream, PROXY_HEADER_TIMEOUT).await)
            {
                match proxy_protocol::read(&mut stream, PROXY_HEADER_TIMEOUT).await {
                    Ok(Some(client)) => peer = client,
                    Ok(None) => {}
                    Err(e) => {
                        debug!(%peer, error = %e, "connection without a valid PROXY header dropped");
                        return;
                    }
                }
            }
            // HTTP/1.1 passes the front door; h2 frames carry their own lengths.
            let result = match tls {
                None => {
                    let (io, guard) = door.wrap(zero_copy::Socket::new(stream), peer);
                    let svc = service(handler, peer, Some(guard));
                    watcher
                        .watch(h1.serve_connection(TokioIo::new(io), svc))
                        .await
                }
                // Boxed: the TLS and h2 states would otherwise make every plain
                // connection's task as large as theirs (moved on each spawn).
                Some(tls) => {
                    Box::pin(serve_tls(
                        tls, stream, peer, door, &h1, &h2, handler, watcher,
                    ))
                    .await
                }
            };
            if let Err(e) = result {
                debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    };
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => serve(stream, peer),
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    // Closing a listener resets the connections queued on it (with SO_REUSEPORT the
    // kernel may have queued some here during a VIP hand-over): serve those first.
    while let Ok(Ok((stream, peer))) = tokio::time::timeout(Duration::ZERO, listener.accept()).await
    {
        serve(stream, peer);
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        warn!("connections still open after the drain timeout; closing them");
    }
}

/// Serves one TLS connection: h2 when the client chose it by ALPN, else HTTP/1.1
/// through the front door.
#[allow(clippy::too_many_arguments)]
async fn serve_tls<F, Fut, B>(
    tls: hastack_tls::Acceptor,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    door: Arc<front_door::FrontDoor>,
    h1: &hyper::server::conn::http1::Builder,
    h2: &hyper::server::conn::http2::Builder<TokioExecutor>,
    handler: F,
    watcher: hyper_util::server::graceful::Watcher,
) -> Result<(), hyper::Error>
where
    F: Fn(Request<Incoming>, SocketAddr) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let Some(stream) = tls.accept(stream).await else {
        return Ok(());
    };
    if stream.get_ref().1.alpn_protocol() == Some(hastack_tls::ALPN_H2) {
        let svc = service(handler, peer, None);
        watcher
            .watch(h2.serve_connection(TokioIo::new(stream), svc))
            .await
    } else {
        let (io, guard) = door.wrap(stream, peer);
        let svc = service(handler, peer, Some(guard));
        watcher
            .watch(h1.serve_connection(TokioIo::new(io), svc))
            .await
    }
}

/// The service of one connection: each request goes to `handler`, except the stand-ins
/// of requests the front door refused (`guard`), which get the refusal.
#[allow(clippy::type_complexity)]
fn service<F, Fut, B>(
    handler: F,
    peer: SocketAddr,
    guard: Option<Arc<front_door::ConnGuard>>,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<http_body_util::Either<B, Full<Bytes>>>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<http_body_util::Either<B, Full<Bytes>>>, Infallible>>
             + Send
             + 'static,
> + Clone
where
    F: Fn(Request<Incoming>, SocketAddr) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    service_fn(move |req| {
        let refusal = guard.as_ref().and_then(|g| g.refusal_for_next());
        // Boxed: a proxying handler's future is kilobytes, and hyper moves the
        // service's future into its dispatcher; moving a pointer instead of the
        // future saved ~5% of the lb's CPU per request (perf: memmove in recv_msg).
        let fut = refusal.is_none().then(|| Box::pin(handler(req, peer)));
        async move {
            Ok::<_, Infallible>(match (fut, refusal) {
                (Some(fut), _) => fut.await.map(http_body_util::Either::Left),
                (None, r) => {
                    front_door::refusal_response(r.unwrap_or(front_door::scan::refusals::MALFORMED))
                        .map(http_body_util::Either::Right)
                }
            })
        }
    })
}

/// A small response with a body and content type.
pub fn text_response(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    resp
}

/// An HTML page of the admin port, made anew for each request.
pub type Page = Arc<dyn Fn() -> String + Send + Sync>;

/// An operation of the admin port, run by a POST with the request's query string; it
/// answers with a status and a JSON body.
pub type Action = Arc<dyn Fn(Option<&str>) -> (StatusCode, String) + Send + Sync>;

/// The admin endpoints of one node.
#[derive(Clone)]
pub struct Admin {
    probe: HealthProbe,
    registry: Arc<Registry>,
    pages: Vec<(&'static str, Page)>,
    actions: Vec<(&'static str, Action)>,
    dashboard: Option<hastack_status::dashboard::Dashboard>,
}

/// The body of an admin answer (whole, or the dashboard's event stream).
pub type AdminBody = hastack_status::dashboard::Body;

fn whole(r: Response<Full<Bytes>>) -> Response<AdminBody> {
    r.map(|b| b.boxed_unsync())
}

impl Admin {
    /// Admin endpoints answering with `probe` and `registry`, to which the process's
    /// own figures ([`metrics::ProcessCollector`]) are added.
    pub fn new(probe: HealthProbe, mut registry: Registry) -> Admin {
        registry.register_collector(Box::new(metrics::ProcessCollector));
        Admin {
            probe,
            registry: Arc::new(registry),
            pages: Vec::new(),
            actions: Vec::new(),
            dashboard: None,
        }
    }

    /// Runs `action` on a POST to `path` (e.g. the web node's `/cache/purge`).
    pub fn with_action(mut self, path: &'static str, action: Action) -> Admin {
        self.actions.push((path, action));
        self
    }

    /// Serves `page` at `path` too (e.g. the lb's `/stats`).
    pub fn with_page(mut self, path: &'static str, page: Page) -> Admin {
        self.pages.push((path, page));
        self
    }

    /// Serves the live dashboard under `/dashboard/` (an lb's admin port).
    pub fn with_dashboard(mut self, dashboard: hastack_status::dashboard::Dashboard) -> Admin {
        self.dashboard = Some(dashboard);
        self
    }

    /// Answers one admin request.
    pub async fn handle(&self, req: Request<Incoming>) -> Response<AdminBody> {
        if req.method() == hyper::Method::POST
            && let Some((_, action)) = self.actions.iter().find(|(p, _)| *p == req.uri().path())
        {
            let (status, body) = action(req.uri().query());
            return whole(text_response(status, "application/json", body));
        }
        if req.method() != hyper::Method::GET && req.method() != hyper::Method::HEAD {
            return whole(text_response(
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain",
                "GET only\n",
            ));
        }
        if let Some(dashboard) = &self.dashboard {
            let path = req.uri().path();
            if path == "/dashboard" {
                let mut r = text_response(StatusCode::MOVED_PERMANENTLY, "text/plain", "");
                r.headers_mut().insert(
                    hyper::header::LOCATION,
                    hyper::header::HeaderValue::from_static("/dashboard/"),
                );
                return whole(r);
            }
            if let Some(rest) = path.strip_prefix("/dashboard/")
                && let Some(r) = dashboard.handle(rest)
            {
                return r;
            }
        }
        whole(self.handle_whole(req).await)
    }

    async fn handle_whole(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        match req.uri().path() {
            "/healthz" => {
                let report = (self.probe)().await;
                let status = if report.healthy {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                text_response(status, "application/json", report.to_json())
            }
            "/metrics" => {
                let mut out = String::new();
                if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry)
                {
                    return text_response(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "text/plain",
                        format!("encoding metrics: {e}\n"),
                    );
                }
                text_response(
                    StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    out,
                )
            }
            path => match self.pages.iter().find(|(p, _)| *p == path) {
                Some((_, page)) => {
                    text_response(StatusCode::OK, "text/html; charset=utf-8", page())
                }
                None => {
                    let mut known = String::from("/healthz, /metrics");
                    for (p, _) in &self.pages {
                        known.push_str(", ");
                        known.push_str(p);
                    }
                    if self.dashboard.is_some() {
                        known.push_str(", /dashboard/");
                    }
                    text_response(
                        StatusCode::NOT_FOUND,
                        "text/plain",
                        format!("not found: try {known}\n"),
                    )
                }
            },
        }
    }

    /// Serves the admin endpoints on `listener` until `shutdown`.
    pub async fn serve(self, listener: TcpListener, shutdown: watch::Receiver<bool>) {
        let admin = Arc::new(self);
        serve_http1(
            listener,
            move |req, _peer| {
                let admin = admin.clone();
                async move { admin.handle(req).await }
            },
            shutdown,
        )
        .await;
    }
}

/// Binds a TCP listener with `SO_REUSEADDR` (and `SO_REUSEPORT` when `reuse_port`),
/// so a restarted node can bind while old connections linger in TIME_WAIT. `what`
/// names the listener in the error.
pub fn bind_tcp(
    addr: SocketAddr,
    what: &'static str,
    reuse_port: bool,
) -> Result<TcpListener, BindError> {
    bind_inner(addr, reuse_port).map_err(|source| BindError { addr, what, source })
}

fn bind_inner(addr: SocketAddr, reuse_port: bool) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    if reuse_port {
        socket.set_reuseport(true)?;
    }
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}
