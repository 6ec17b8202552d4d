//! Bodies through the proxy: the client's request body on its way upstream, and the
//! answer's body on its way back ([`ProxyBody`]).
//!
//! Request bodies are held in memory when the request may have to be sent twice,
//! streamed otherwise, and bounded either way.
//!
//! A proxy that buffers every body up to its size limit lets a few hundred clients
//! posting large bodies hold gigabytes. Here only an idempotent request with another
//! server to try is held (a retry needs the bytes again), and only while the node's
//! [`BodyRules`] budget — all held bodies together — has room; every other body
//! streams through as it arrives, with the same size limit (413) and deadline (408).
//! A streamed body that breaks records why ([`BodyFault`]), so the client gets the
//! status of its own fault and the server is not blamed for it.

use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::StatusCode;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

use crate::conn::PooledBody;

/// A request body as it goes upstream: held whole, or streamed from the client.
pub type RequestBody = Either<Full<Bytes>, Streamed>;

/// An error of a body, whatever made it.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request's body as the data plane gets it: a client's, or none for a request this
/// node makes itself (a cache's revalidation).
#[derive(Debug)]
pub enum ClientBody {
    /// From a client connection.
    Client(Incoming),
    /// No body.
    Empty,
}

/// An answer's body: streamed from upstream, made here whole, or made by a layer on the
/// way back (compressed, cut from a cache). The third kind is what keeps the set open:
/// a layer wraps whatever body it got and boxes the result.
#[derive(Debug)]
pub enum ProxyBody {
    /// Straight from a server of the pool; returns its connection once read.
    Upstream(PooledBody),
    /// Made whole by this node (an error answer, a static file, a cache hit).
    Full(Full<Bytes>),
    /// Made by a layer.
    Layered(UnsyncBoxBody<Bytes, BoxError>),
}

impl ProxyBody {
    /// A whole body of `bytes`.
    pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
        ProxyBody::Full(Full::new(bytes.into()))
    }

    /// A layer's body.
    pub fn layered<B>(body: B) -> ProxyBody
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        ProxyBody::Layered(body.map_err(Into::into).boxed_unsync())
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ProxyBody::Upstream(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            ProxyBody::Full(b) => Pin::new(b).poll_frame(cx).map_err(|never| match never {}),
            ProxyBody::Layered(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Upstream(b) => b.is_end_stream(),
            ProxyBody::Full(b) => b.is_end_stream(),
            ProxyBody::Layered(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Upstream(b) => b.size_hint(),
            ProxyBody::Full(b) => b.size_hint(),
            ProxyBody::Layered(b) => b.size_hint(),
        }
    }
}

/// What a proxy accepts of request bodies, and how much of them it holds in memory.
#[derive(Debug)]
pub struct BodyRules {
    /// Largest body in bytes (413 above).
    pub max: usize,
    /// A body must be whole this long after its head (408 after).
    pub timeout: Duration,
    /// Bytes that held bodies may still take, all requests together.
    budget: Arc<Semaphore>,
}

impl BodyRules {
    /// Rules with `max` bytes per body, `timeout` per body, `buffer` bytes held in all.
    pub fn new(max: usize, timeout: Duration, buffer: usize) -> BodyRules {
        BodyRules {
            max,
            timeout,
            budget: Arc::new(Semaphore::new(buffer.min(Semaphore::MAX_PERMITS))),
        }
    }

    /// Bytes the budget has free now.
    pub fn budget_free(&self) -> usize {
        self.budget.available_permits()
    }
}

/// Why a request body did not make it: the client's fault, never the server's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFault {
    /// More bytes than [`BodyRules::max`].
    TooLarge,
    /// Not whole within [`BodyRules::timeout`].
    TimedOut,
    /// The client broke off or sent a malformed body.
    Broken,
}

impl BodyFault {
    /// The status the client gets.
    pub fn status(self) -> StatusCode {
        match self {
            BodyFault::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            BodyFault::TimedOut => StatusCode::REQUEST_TIMEOUT,
            BodyFault::Broken => StatusCode::BAD_REQUEST,
        }
    }

    /// What the client is told.
    pub fn text(self) -> &'static str {
        match self {
            BodyFault::TooLarge => "request body too large",
            BodyFault::TimedOut => "the request body did not arrive in time",
            BodyFault::Broken => "could not read the request body",
        }
    }
}

/// A body read for the trip upstream: the body, the budget it holds (if held whole),
/// and where a streamed body records its fault.
pub(crate) struct Prepared {
    pub(crate) body: RequestBody,
    /// Released when the request is done with: the held bytes go back to the budget.
    pub(crate) _held: Option<OwnedSemaphorePermit>,
    pub(crate) fault: Option<Arc<OnceLock<BodyFault>>>,
}

/// Reads `body` as the rules in force say: held whole when `may_retry` and it fits the
/// budget, streamed otherwise. A body announced larger than the limit is refused
/// before a byte of it is read. Most requests have none: they skip the rules.
pub(crate) async fn prepare(
    body: ClientBody,
    may_retry: bool,
    rules: &ArcSwap<BodyRules>,
) -> Result<Prepared, BodyFault> {
    let body = match body {
        ClientBody::Client(b) if !b.is_end_stream() => b,
        _ => {
            return Ok(Prepared {
                body: Either::Left(Full::new(Bytes::new())),
                _held: None,
                fault: None,
            });
        }
    };
    let rules = rules.load();
    let announced = body.size_hint().exact();
    if announced.is_some_and(|n| n > rules.max as u64) {
        return Err(BodyFault::TooLarge);
    }
    // Held only with a known length that fits: a chunked body streams.
    let held = match announced {
        Some(n) if may_retry => u32::try_from(n)
            .ok()
            .and_then(|n| rules.budget.clone().try_acquire_many_owned(n).ok()),
        _ => None,
    };
    if held.is_some() {
        let collect = Limited::new(body, rules.max).collect();
        return match tokio::time::timeout(rules.timeout, collect).await {
            Ok(Ok(b)) => Ok(Prepared {
                body: Either::Left(Full::new(b.to_bytes())),
                _held: held,
                fault: None,
            }),
            Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(BodyFault::TooLarge),
            Ok(Err(_)) => Err(BodyFault::Broken),
            Err(_) => Err(BodyFault::TimedOut),
        };
    }
    let fault = Arc::new(OnceLock::new());
    Ok(Prepared {
        body: Either::Right(Streamed {
            body,
            left: rules.max as u64,
            deadline: Box::pin(tokio::time::sleep_until(Instant::now() + rules.timeout)),
            fault: fault.clone(),
        }),
        _held: None,
        fault: Some(fault),
    })
}

/// A client's body streamed upstream as it arrives, within the size limit and the
/// deadline; a fault ends it with an error (the upstream sees the request cut off)
/// and is recorded for the proxy to answer.
#[derive(Debug)]
pub struct Streamed {
    body: Incoming,
    /// Bytes the body may still bring.
    left: u64,
    deadline: Pin<Box<Sleep>>,
    fault: Arc<OnceLock<BodyFault>>,
}

/// The error a [`Streamed`] body ends with.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.text())]
pub struct BodyFaultError(pub BodyFault);

impl Streamed {
    fn fail(&self, f: BodyFault) -> Poll<Option<Result<Frame<Bytes>, BodyFaultError>>> {
        let _ = self.fault.set(f);
        Poll::Ready(Some(Err(BodyFaultError(f))))
    }
}

impl Body for Streamed {
    type Data = Bytes;
    type Error = BodyFaultError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyFaultError>>> {
        match Pin::new(&mut self.body).poll_frame(cx) {
            Poll::Pending => {
                if self.deadline.as_mut().poll(cx).is_ready() {
                    return self.fail(BodyFault::TimedOut);
                }
                Poll::Pending
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Ready(Some(Err(_))) => self.fail(BodyFault::Broken),
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    match self.left.checked_sub(data.len() as u64) {
                        Some(left) => self.left = left,
                        None => return self.fail(BodyFault::TooLarge),
                    }
                }
                Poll::Ready(Some(Ok(frame)))
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
    fn each_fault_is_the_clients_status() {
        assert_eq!(BodyFault::TooLarge.status().as_u16(), 413);
        assert_eq!(BodyFault::TimedOut.status().as_u16(), 408);
        assert_eq!(BodyFault::Broken.status().as_u16(), 400);
    }

    #[test]
    fn the_budget_is_capped_at_what_a_semaphore_holds() {
        let r = BodyRules::new(1, Duration::from_secs(1), usize::MAX);
        assert_eq!(r.budget_free(), Semaphore::MAX_PERMITS);
    }
}
