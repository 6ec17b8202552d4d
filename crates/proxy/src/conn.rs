//! Keep-alive connections to one upstream server, reused last-in first-out.
//!
//! A connection goes back to the idle list when the response body it carried has been
//! read to the end (the [`PooledBody`] wrapper sees to that), so it is ready for the
//! next request at once: no task per request waits for it. A request that could not
//! be written (the connection closed meanwhile) comes back to the caller untouched, so
//! it can go out again on another connection without having been copied.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tracing::debug;

use crate::body::RequestBody;

type Sender = SendRequest<RequestBody>;

/// Most idle connections kept per server.
const MAX_IDLE: usize = 256;

/// Most connections being opened to one server at once. A burst that finds no idle
/// connection waits for a slot (within the connect timeout) instead of sending the
/// server a SYN per request; a connection freed meanwhile is taken instead.
pub const MAX_DIALING: usize = 64;

/// An idle connection older than this is not reused. Servers close idle keep-alive
/// connections after a while (hastack's own after 10 s, see `hastack_runtime`); a
/// request written just as the server closes would be lost, so give up on them first.
const IDLE_TIMEOUT: Duration = Duration::from_secs(4);

/// Longest pause between two pieces of a response body before the proxy gives up on it.
pub const BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// The error of a [`PooledBody`]: the upstream's, or a stalled body.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// How an attempt failed, with the request if it never left.
pub(crate) struct SendFailure {
    /// True when no connection could be made.
    pub(crate) connect: bool,
    /// True when that was for want of a resource of this host (file descriptors,
    /// ephemeral ports, memory): not the server's fault.
    pub(crate) local: bool,
    /// What happened.
    pub(crate) why: String,
    /// The request, when it was not written to any connection.
    pub(crate) request: Option<Request<RequestBody>>,
}

/// Whose requests a connection may carry: anyone's, or (when it began with a PROXY
/// header naming a client) only those of that client connection.
pub(crate) type Owner = Option<SocketAddr>;

/// The PROXY v2 header a connection starts with: the client, and the address it
/// reached this proxy on.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ProxyHeaderFor {
    pub(crate) client: SocketAddr,
    pub(crate) local: SocketAddr,
}

/// The idle connections of one server.
#[derive(Debug)]
pub(crate) struct Connections {
    /// Newest last; each with the moment it went idle and whose it is.
    idle: Mutex<Vec<(Sender, Instant, Owner)>>,
    /// Slots for connections being opened ([`MAX_DIALING`]).
    dialing: tokio::sync::Semaphore,
}

impl Default for Connections {
    fn default() -> Connections {
        Connections {
            idle: Mutex::default(),
            dialing: tokio::sync::Semaphore::new(MAX_DIALING),
        }
    }
}

impl Connections {
    fn pop(&self, owner: Owner) -> Option<Sender> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if owner.is_some() {
            // Connections of one client each: find this client's.
            let i = idle.iter().rposition(|(_, _, o)| *o == owner)?;
            let (s, since, _) = idle.remove(i);
            return (since.elapsed() <= IDLE_TIMEOUT && !s.is_closed()).then_some(s);
        }
        while let Some((s, since, _)) = idle.pop() {
            if since.elapsed() > IDLE_TIMEOUT {
                // The rest went idle even earlier.
                idle.clear();
                return None;
            }
            if !s.is_closed() {
                return Some(s);
            }
        }
        None
    }

    fn push(&self, s: Sender, owner: Owner) {
        if s.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if owner.is_some() {
            // Those of clients gone quiet are of no use to anyone else.
            idle.retain(|(s, since, _)| since.elapsed() <= IDLE_TIMEOUT && !s.is_closed());
        }
        if idle.len() < MAX_IDLE {
            idle.push((s, Instant::now(), owner));
        }
    }

    /// Sends `req` to `addr` on an idle connection or a new one (over TLS with `tls`).
    pub(crate) async fn send(
        self: &Arc<Self>,
        addr: SocketAddr,
        tls: Option<&UpstreamTls>,
        mut req: Request<RequestBody>,
        connect_timeout: Duration,
        header: Option<ProxyHeaderFor>,
    ) -> Result<Response<PooledBody>, SendFailure> {
        let owner = header.map(|h| h.client);
        req = match self.send_idle(req, owner).await? {
            Ok(resp) => return Ok(resp),
            Err(req) => req,
        };
        let deadline = Instant::now() + connect_timeout;
        // A slot to dial in. Waiting for one is this host's doing, not the server's.
        let Ok(Ok(slot)) = tokio::time::timeout_at(deadline, self.dialing.acquire()).await else {
            return Err(SendFailure {
                connect: true,
                local: true,
                why: format!(
                    "{MAX_DIALING} connections to {addr} were being opened for {connect_timeout:?}"
                ),
                request: Some(req),
            });
        };
        // A connection that came back meanwhile goes first.
        let dialed = match self.pop(owner) {
            Some(sender) => Ok(Ok(sender)),
            None => {
                let header =
                    header.map(|h| hastack_runtime::proxy_protocol::encode(h.client, h.local));
                tokio::time::timeout_at(deadline, dial(addr, tls, header.as_deref())).await
            }
        };
        drop(slot);
        let mut sender = match dialed {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                return Err(SendFailure {
                    connect: true,
                    local: e.local,
                    why: e.why,
                    request: Some(req),
                });
            }
            Err(_) => {
                return Err(SendFailure {
                    connect: true,
                    local: false,
                    why: format!("connect timed out after {connect_timeout:?}"),
                    request: Some(req),
                });
            }
        };
        match sender.try_send_request(req).await {
            Ok(resp) => Ok(self.wrap(resp, sender, owner)),
            Err(mut e) => {
                let request = e.take_message();
                Err(SendFailure {
                    connect: false,
                    local: false,
                    why: e.into_error().to_string(),
                    request,
                })
            }
        }
    }

    /// Sends `req` on an idle connection: the response, or the request back when no
    /// idle connection could take it. One that turns out closed hands the request back.
    #[allow(clippy::type_complexity)]
    async fn send_idle(
        self: &Arc<Self>,
        mut req: Request<RequestBody>,
        owner: Owner,
    ) -> Result<Result<Response<PooledBody>, Request<RequestBody>>, SendFailure> {
        while let Some(mut sender) = self.pop(owner) {
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok(Ok(self.wrap(resp, sender, owner))),
                Err(mut e) => match e.take_message() {
                    Some(r) => req = r,
                    None => {
                        return Err(SendFailure {
                            connect: false,
                            local: false,
                            why: e.into_error().to_string(),
                            request: None,
                        });
                    }
                },
            }
        }
        Ok(Err(req))
    }

    fn wrap(
        self: &Arc<Self>,
        resp: Response<Incoming>,
        sender: Sender,
        owner: Owner,
    ) -> Response<PooledBody> {
        resp.map(|body| {
            let mut pooled = PooledBody {
                body,
                home: Some((sender, self.clone(), owner)),
                stall: None,
                in_flight: None,
            };
            if pooled.body.is_end_stream() {
                pooled.release();
            }
            pooled
        })
    }
}

/// TLS to the servers of a pool: the client configuration, and each server's name.
#[derive(Clone)]
pub(crate) struct UpstreamTls {
    pub(crate) connector: hastack_tls::TlsConnector,
    pub(crate) name: hastack_tls::rustls_pki::ServerName<'static>,
    pub(crate) metrics: hastack_tls::TlsMetrics,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "UpstreamTls({:?})", self.name)
    }
}

/// Why no connection could be opened.
#[derive(Debug)]
pub(crate) struct DialError {
    /// What happened.
    pub(crate) why: String,
    /// For want of a resource of this host, not the server's fault.
    pub(crate) local: bool,
}

impl From<String> for DialError {
    fn from(why: String) -> DialError {
        DialError { why, local: false }
    }
}

/// Whether a connect error is this host running out of something (descriptors,
/// ephemeral ports to that address, buffers, memory) rather than the server refusing:
/// such an error must never take a healthy server out.
pub(crate) fn local_resource_error(e: &std::io::Error) -> bool {
    use nix::errno::Errno;
    e.raw_os_error().map(Errno::from_raw).is_some_and(|n| {
        matches!(
            n,
            Errno::EMFILE | Errno::ENFILE | Errno::EADDRNOTAVAIL | Errno::ENOBUFS | Errno::ENOMEM
        )
    })
}

/// Opens an HTTP/1.1 connection to `addr`, over TLS with `tls` (the server must show a
/// certificate of `tls`'s CA for its name), first sending `header` (PROXY v2) if any.
pub(crate) async fn dial<B>(
    addr: SocketAddr,
    tls: Option<&UpstreamTls>,
    header: Option<&[u8]>,
) -> Result<SendRequest<B>, DialError>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = connect_tcp(addr, header).await?;
    match tls {
        None => Ok(handshake(addr, TokioIo::new(stream)).await?),
        Some(t) => {
            let stream = tls_handshake(addr, t, stream).await?;
            Ok(handshake(addr, TokioIo::new(stream)).await?)
        }
    }
}

/// Opens a connection to `addr` (and its TLS session, with `tls`) and closes it: a
/// TCP health check.
pub(crate) async fn dial_raw(
    addr: SocketAddr,
    tls: Option<&UpstreamTls>,
    header: Option<&[u8]>,
) -> Result<(), DialError> {
    let stream = connect_tcp(addr, header).await?;
    if let Some(t) = tls {
        tls_handshake(addr, t, stream).await?;
    }
    Ok(())
}

/// Connects to `addr` and sends `header` (a PROXY v2 header) first if any.
async fn connect_tcp(
    addr: SocketAddr,
    header: Option<&[u8]>,
) -> Result<tokio::net::TcpStream, DialError> {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| DialError {
            local: local_resource_error(&e),
            why: format!("connect to {addr}: {e}"),
        })?;
    let _ = stream.set_nodelay(true);
    if let Some(h) = header {
        use tokio::io::AsyncWriteExt;
        stream
            .write_all(h)
            .await
            .map_err(|e| format!("PROXY header to {addr}: {e}"))?;
    }
    Ok(stream)
}

async fn tls_handshake(
    addr: SocketAddr,
    t: &UpstreamTls,
    stream: tokio::net::TcpStream,
) -> Result<hastack_tls::client::TlsStream<tokio::net::TcpStream>, DialError> {
    match t.connector.connect(t.name.clone(), stream).await {
        Ok(s) => {
            t.metrics.handshake("client", s.get_ref().1);
            Ok(s)
        }
        Err(e) => {
            t.metrics.failure("client", hastack_tls::failure_cause(&e));
            Err(format!("TLS with {addr}: {e}").into())
        }
    }
}

/// The most an upstream connection's read buffer holds.
const UPSTREAM_READ_BUF: usize = 128 * 1024;

async fn handshake<B, I>(addr: SocketAddr, io: I) -> Result<SendRequest<B>, String>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    // hyper's read buffer grows while reads fill it, to 400 KiB by default. Capped
    // here; bodies stream through in pieces of at most this size. bench/lb.sh, 100 KiB
    // answers: at 64 KiB (two reads an answer) 0.87-0.94x HAProxy's requests per
    // CPU-second and 71 MB peak RSS at 256 clients; at 128 KiB 1.01-1.10x and 107 MB;
    // uncapped 0.98-1.06x and 118 MB.
    let (sender, conn) = hyper::client::conn::http1::Builder::new()
        .max_buf_size(UPSTREAM_READ_BUF)
        .handshake(io)
        .await
        .map_err(|e| format!("handshake with {addr}: {e}"))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            debug!(%addr, error = %e, "upstream connection ended with an error");
        }
    });
    Ok(sender)
}

/// A response body from upstream that returns its connection to the pool once read to
/// the end. Dropped early (the client went away), the connection is closed instead. A
/// body that pauses longer than [`BODY_IDLE_TIMEOUT`] ends with an error.
#[derive(Debug)]
pub struct PooledBody {
    body: Incoming,
    home: Option<(Sender, Arc<Connections>, Owner)>,
    /// Armed only while the upstream keeps us waiting.
    stall: Option<Pin<Box<Sleep>>>,
    /// The server's count of requests in flight, held until the body ends.
    in_flight: Option<crate::pool::InFlight>,
}

impl PooledBody {
    fn release(&mut self) {
        self.in_flight = None;
        if let Some((sender, pool, owner)) = self.home.take() {
            pool.push(sender, owner);
        }
    }

    /// Holds `g` until the body ends (or is dropped).
    pub(crate) fn hold(&mut self, g: crate::pool::InFlight) {
        if self.home.is_some() {
            self.in_flight = Some(g);
        }
    }
}

/// The upstream stopped sending a response body.
#[derive(Debug, thiserror::Error)]
#[error("the upstream sent nothing of the response body for {0:?}")]
pub struct BodyStalled(Duration);

impl Body for PooledBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        match polled {
            Poll::Pending => {
                let stall = self
                    .stall
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(BODY_IDLE_TIMEOUT)));
                if stall.as_mut().poll(cx).is_ready() {
                    self.home = None;
                    return Poll::Ready(Some(Err(Box::new(BodyStalled(BODY_IDLE_TIMEOUT)))));
                }
                Poll::Pending
            }
            Poll::Ready(None) => {
                self.release();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Ok(frame))) => {
                self.stall = None;
                if self.body.is_end_stream() {
                    self.release();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                self.home = None;
                Poll::Ready(Some(Err(Box::new(e))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_out_of_local_resources_is_not_the_servers_fault() {
        use nix::errno::Errno;
        for local in [
            Errno::EMFILE,
            Errno::ENFILE,
            Errno::EADDRNOTAVAIL,
            Errno::ENOBUFS,
            Errno::ENOMEM,
        ] {
            let e = std::io::Error::from_raw_os_error(local as i32);
            assert!(local_resource_error(&e), "{e}");
        }
        for server in [
            Errno::ECONNREFUSED,
            Errno::EHOSTUNREACH,
            Errno::ETIMEDOUT,
            Errno::ECONNRESET,
        ] {
            let e = std::io::Error::from_raw_os_error(server as i32);
            assert!(!local_resource_error(&e), "{e}");
        }
        assert!(!local_resource_error(&std::io::Error::other("no errno")));
    }
}
