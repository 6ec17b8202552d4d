//! The strict front door of every HTTP/1.1 listener: requests whose framing or `Host`
//! could be read two ways, oversized header lines and heads that trickle in are
//! answered here (400, 408, 414, 431, with `Connection: close`) and never reach a
//! handler or an upstream. A proxy that re-frames such requests is safe only if every
//! hop behind it agrees on how to read them; refusing them at the edge makes that
//! question moot.
//!
//! [`scan`] is the pure scanner that follows the byte stream; [`io`] is the wrapper
//! that feeds it, puts a stand-in in place of a refused request and cuts off a client
//! that stops reading its answers; [`FrontDoor`]
//! holds the limits, counts refusals by reason and logs them, rate-limited.
//!
//! HTTP/2 needs none of this: its frames carry their own lengths, and hyper's h2
//! refuses malformed and connection-specific headers.

pub mod io;
pub mod scan;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::time::Instant;

pub use io::{ConnGuard, Guarded};
pub use scan::{HeadLimits, MAX_HEADERS_CAP, Refusal, Scanner};

/// How often the log says that requests were refused (the counter has every one).
const LOG_EVERY: Duration = Duration::from_secs(10);

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

/// How long a client may take nothing of its answer before it is cut off, by default
/// (HAProxy's `timeout client`, nginx's `send_timeout`).
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// What a connection is held to.
#[derive(Debug, Clone, Copy)]
struct Settings {
    limits: HeadLimits,
    /// A head must be whole this long after its first byte.
    head_timeout: Duration,
    /// A write may wait this long for the client to read.
    write_timeout: Duration,
}

/// The front door's settings and counters, shared by a node's listeners.
#[derive(Debug)]
pub struct FrontDoor {
    /// What connections are held to; a reload changes it for new connections.
    settings: Mutex<Settings>,
    refused: Family<ReasonLabels, Counter>,
    /// When the log last spoke, and how many refusals it left out since.
    log: Mutex<(Option<Instant>, u64)>,
}

impl Default for FrontDoor {
    fn default() -> FrontDoor {
        FrontDoor::new(HeadLimits::default(), crate::HEAD_TIMEOUT)
    }
}

impl FrontDoor {
    /// A front door with these limits; a request head must be complete within
    /// `head_timeout` of its first byte.
    pub fn new(limits: HeadLimits, head_timeout: Duration) -> FrontDoor {
        FrontDoor {
            settings: Mutex::new(Settings {
                limits,
                head_timeout,
                write_timeout: WRITE_TIMEOUT,
            }),
            refused: Family::default(),
            log: Mutex::new((None, 0)),
        }
    }

    /// The front door the topology's `[http]` section describes, its counter in
    /// `registry`.
    pub fn for_topology(
        http: &hastack_config::HttpSettings,
        registry: &mut Registry,
    ) -> Arc<FrontDoor> {
        let door = FrontDoor::default();
        door.set(http);
        door.register(registry);
        Arc::new(door)
    }

    /// This front door with writes that may wait `d` for the client to read.
    pub fn with_write_timeout(mut self, d: Duration) -> FrontDoor {
        self.settings
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .write_timeout = d;
        self
    }

    /// Registers the refusal counter (`hastack_http_refused_total{reason}`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "hastack_http_refused",
            "Requests refused at the front door, by reason",
            self.refused.clone(),
        );
    }

    /// How long a request head may take.
    pub fn head_timeout(&self) -> Duration {
        self.settings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .head_timeout
    }

    /// New limits for the connections opened from now on (a reload).
    pub fn set(&self, http: &hastack_config::HttpSettings) {
        *self.settings.lock().unwrap_or_else(|e| e.into_inner()) = Settings {
            limits: HeadLimits {
                max_line: http.max_header_line,
                max_headers: http.max_headers,
            },
            head_timeout: http.head_timeout,
            write_timeout: http.write_timeout,
        };
    }

    /// Puts `io` behind the front door; the guard goes to the connection's service.
    pub fn wrap<IO>(
        self: &Arc<Self>,
        io: IO,
        peer: std::net::SocketAddr,
    ) -> (Guarded<IO>, Arc<ConnGuard>) {
        let guard = Arc::new(ConnGuard::default());
        let door = self.clone();
        let on_refuse = Box::new(move |r: Refusal| door.note(r, peer));
        let settings = *self.settings.lock().unwrap_or_else(|e| e.into_inner());
        (
            Guarded::new(
                io,
                Scanner::new(settings.limits),
                settings.head_timeout,
                guard.clone(),
                on_refuse,
            )
            .with_write_timeout(settings.write_timeout),
            guard,
        )
    }

    /// Counts a refusal and logs it, at most once per [`LOG_EVERY`].
    fn note(&self, r: Refusal, peer: std::net::SocketAddr) {
        self.refused
            .get_or_create(&ReasonLabels { reason: r.reason })
            .inc();
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        match log.0 {
            Some(t) if now.saturating_duration_since(t) < LOG_EVERY => log.1 += 1,
            _ => {
                let left_out = std::mem::take(&mut log.1);
                log.0 = Some(now);
                tracing::info!(%peer, status = r.status, reason = r.reason, left_out, "request refused at the front door ({}); the next refusals are only counted for {LOG_EVERY:?}", r.text);
            }
        }
    }
}

/// The answer to a refused request: its status, a line saying why, and the end of the
/// connection.
pub fn refusal_response(r: Refusal) -> Response<Full<Bytes>> {
    let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_REQUEST);
    let mut resp = crate::text_response(
        status,
        "text/plain; charset=utf-8",
        format!("{status}: {}\n", r.text),
    );
    resp.headers_mut().insert(
        hyper::header::CONNECTION,
        hyper::header::HeaderValue::from_static("close"),
    );
    resp
}
