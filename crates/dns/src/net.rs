//! The UDP and TCP loops. Hand-written rather than hickory-server's `Server`, which
//! answers an undecodable query FORMERR itself, drops a short one without a trace
//! and has no rate limit: here every packet is seen first, so a malformed one is
//! counted and dropped, and the rate limit is applied before any answer is made.
//!
//! - UDP: one loop decodes, rate-limits ([`crate::limit`]), answers and sends, one
//!   datagram at a time (the zone is in memory: an answer takes microseconds, and
//!   nothing a client sends can make the loop spawn or queue work).
//! - TCP: not rate-limited. A TCP client has completed a handshake, so its address is
//!   its own and the answers cannot be reflected at a victim; the limit is on
//!   connections instead: at most [`MAX_TCP`] open (others are closed at once and
//!   counted), each closed after [`TCP_IDLE`] without a query or when it sends
//!   anything that is not a query. Queries on a connection are answered in turn.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_server::net::runtime::TokioTime;
use hickory_server::net::xfer::Protocol;
use hickory_server::proto::op::MessageType;
use hickory_server::server::{Request, RequestHandler};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, warn};

use crate::RateLimit;
use crate::handler::{Capture, Encoded, Guard};
use crate::limit::{Buckets, DropLog};
use crate::metrics::Metrics;

/// Most clients the rate limit remembers (a bucket is a few dozen bytes).
pub(crate) const MAX_CLIENTS: usize = 65_536;
/// Most TCP connections open at once.
pub(crate) const MAX_TCP: usize = 256;
/// How long a TCP connection may stay without a query.
pub(crate) const TCP_IDLE: Duration = Duration::from_secs(10);
/// How long a query, once its length has come, or an answer may take on TCP.
const TCP_IO: Duration = Duration::from_secs(5);
/// The largest UDP query read (a longer one is cut, and fails to decode).
const UDP_BUFFER: usize = 4096;

/// Resolves once `shutdown` is true, or its sender is gone (the node is stopping).
pub(crate) async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    // `wait_for` fails only when the sender is gone: stopped too.
    let _ = shutdown.wait_for(|s| *s).await;
}

/// Decodes a query; `None` (counted) when it is not one. Responses are not queries:
/// answering them could loop between two servers.
fn decode(bytes: &[u8], src: SocketAddr, protocol: Protocol, metrics: &Metrics) -> Option<Request> {
    match Request::from_bytes(bytes.to_vec(), src, protocol) {
        Ok(r) if r.metadata.message_type == MessageType::Query => Some(r),
        Ok(_) => {
            metrics.malformed.inc();
            debug!(client = %src, %protocol, "dns: a response sent as a query, dropped");
            None
        }
        Err(error) => {
            metrics.malformed.inc();
            debug!(client = %src, %protocol, %error, "dns: malformed packet dropped");
            None
        }
    }
}

/// Answers `request`; `None` when the handler sent nothing.
async fn answer(guard: &Guard, request: &Request, udp: bool) -> Option<Encoded> {
    let capture = Capture::new(udp);
    guard
        .handle_request::<_, TokioTime>(request, capture.clone())
        .await;
    capture.take()
}

/// Serves UDP on `socket` until `shutdown`.
pub(crate) async fn serve_udp(
    guard: Arc<Guard>,
    socket: UdpSocket,
    limit: RateLimit,
    mut shutdown: watch::Receiver<bool>,
) {
    let metrics = guard.metrics.clone();
    let mut buckets = Buckets::new(limit, MAX_CLIENTS);
    let mut drops = DropLog::default();
    let mut buf = vec![0u8; UDP_BUFFER];
    loop {
        let (len, src) = tokio::select! {
            r = socket.recv_from(&mut buf) => match r {
                Ok(got) => got,
                Err(error) => {
                    // E.g. an ICMP error of an earlier send; the socket goes on.
                    debug!(%error, "dns: udp receive failed");
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                }
            },
            _ = stopped(&mut shutdown) => return,
        };
        if src.port() == 0 || src.ip().is_unspecified() {
            metrics.malformed.inc();
            continue;
        }
        let Some(request) = decode(&buf[..len], src, Protocol::Udp, &metrics) else {
            continue;
        };
        let now = Instant::now();
        if !buckets.admit(src.ip(), now) {
            metrics.rate_limited.inc();
            if let Some(n) = drops.note(now) {
                warn!(
                    client = %src.ip(),
                    dropped = n,
                    per_second = limit.per_second,
                    burst = limit.burst,
                    "dns: over the response rate limit, dropped {n} answers since the last report"
                );
            }
            continue;
        }
        let Some((bytes, code)) = answer(&guard, &request, true).await else {
            continue;
        };
        match socket.send_to(&bytes, src).await {
            Ok(_) => metrics.answered(code),
            Err(error) => debug!(client = %src, %error, "dns: udp send failed"),
        }
    }
}

/// Serves TCP on `listener` until `shutdown`; open connections are then closed.
pub(crate) async fn serve_tcp(
    guard: Arc<Guard>,
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, peer)) => {
                    if conns.len() >= MAX_TCP {
                        guard.metrics.tcp_rejected.inc();
                        debug!(client = %peer, "dns: too many tcp connections, closed");
                        continue;
                    }
                    conns.spawn(connection(guard.clone(), stream, peer));
                }
                Err(error) => {
                    // E.g. out of file descriptors: wait rather than spin.
                    warn!(%error, "dns: tcp accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            _ = stopped(&mut shutdown) => break,
        }
    }
    conns.shutdown().await;
}

/// One TCP connection: length-prefixed queries answered in turn (RFC 1035 §4.2.2).
async fn connection(guard: Arc<Guard>, mut stream: TcpStream, peer: SocketAddr) {
    use tokio::time::timeout;
    loop {
        let mut len = [0u8; 2];
        match timeout(TCP_IDLE, stream.read_exact(&mut len)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
        match timeout(TCP_IO, stream.read_exact(&mut msg)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        let Some(request) = decode(&msg, peer, Protocol::Tcp, &guard.metrics) else {
            return;
        };
        let Some((bytes, code)) = answer(&guard, &request, false).await else {
            continue;
        };
        let Ok(n) = u16::try_from(bytes.len()) else {
            return;
        };
        let mut framed = Vec::with_capacity(bytes.len() + 2);
        framed.extend_from_slice(&n.to_be_bytes());
        framed.extend_from_slice(&bytes);
        match timeout(TCP_IO, stream.write_all(&framed)).await {
            Ok(Ok(())) => guard.metrics.answered(code),
            _ => return,
        }
    }
}
