//! The data plane's phases: a request goes down a [`Chain`] of [`Layer`]s and its
//! answer comes back up through them; the last stage forwards it to the pool.
//!
//! Each feature of a tier is one layer, one module: a static file or a cache hit
//! answers in the request phase without going further; compression and the cache's
//! fill look at the answer on its way back (the response phase); error pages replace
//! an answer. A layer decides, with the request in hand, whether to call
//! [`Next::run`], and may call it from a task of its own (a background revalidation),
//! which is why [`Next`] is owned and the futures are `'static`.
//!
//! The chain also owns what every answer gets whatever produced it: one access-log
//! line, with the server that answered when one did ([`Upstream`]).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use http::{Request, Response};
use hyper::body::Incoming;

use crate::access_log::Seen;
use crate::body::ClientBody;
use crate::body::ProxyBody;
use crate::forward::Proxy;

/// An answer on its way back up the chain.
pub type Reply = Pin<Box<dyn Future<Output = Response<ProxyBody>> + Send + 'static>>;

/// One request in the chain: the request, the client that sent it, and the scheme it
/// came over when it came straight from a client (the edge), `None` from a proxy.
#[derive(Debug)]
pub struct Call {
    /// The request.
    pub req: Request<ClientBody>,
    /// Who sent it.
    pub peer: SocketAddr,
    /// `Some("http" | "https")` at the edge (`X-Forwarded-*` set from the connection).
    pub edge: Option<&'static str>,
}

impl Call {
    /// A client's request.
    pub fn from_client(
        req: Request<Incoming>,
        peer: SocketAddr,
        edge: Option<&'static str>,
    ) -> Call {
        Call {
            req: req.map(ClientBody::Client),
            peer,
            edge,
        }
    }

    /// A request without a body, made by this node (a background revalidation).
    /// It has the head of `like` and the same client.
    pub fn internal(like: &Call) -> Call {
        let mut req = Request::new(ClientBody::Empty);
        *req.method_mut() = like.req.method().clone();
        *req.uri_mut() = like.req.uri().clone();
        *req.version_mut() = like.req.version();
        *req.headers_mut() = like.req.headers().clone();
        Call {
            req,
            peer: like.peer,
            edge: like.edge,
        }
    }
}

/// One feature of the data plane.
pub trait Layer: Send + Sync + 'static {
    /// Answers `call` itself, or passes it to `next` and returns (or rewrites) what
    /// comes back.
    fn handle(self: Arc<Self>, call: Call, next: Next) -> Reply;
}

/// The rest of the chain after a layer.
#[derive(Clone)]
pub struct Next {
    stages: Arc<Stages>,
    at: usize,
}

struct Stages {
    layers: Vec<Arc<dyn Layer>>,
    proxy: Arc<Proxy>,
}

impl Next {
    /// Sends `call` through the rest of the chain.
    pub fn run(self, call: Call) -> Reply {
        match self.stages.layers.get(self.at) {
            Some(layer) => {
                let layer = layer.clone();
                layer.handle(
                    call,
                    Next {
                        stages: self.stages,
                        at: self.at + 1,
                    },
                )
            }
            None => Box::pin(async move { self.stages.proxy.forward_call(call).await }),
        }
    }

    /// The proxy at the end of the chain (its error answers, its node stamp).
    pub fn proxy(&self) -> &Arc<Proxy> {
        &self.stages.proxy
    }
}

/// The server that answered a request, set on the response by the proxy when an
/// access log wants it.
#[derive(Debug, Clone)]
pub struct Upstream(pub String);

/// The layers of a tier in front of its proxy.
#[derive(Clone)]
pub struct Chain {
    stages: Arc<Stages>,
}

impl std::fmt::Debug for Chain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chain")
            .field("layers", &self.stages.layers.len())
            .finish()
    }
}

impl Chain {
    /// `layers`, outermost first, in front of `proxy`.
    pub fn new(proxy: Arc<Proxy>, layers: Vec<Arc<dyn Layer>>) -> Chain {
        Chain {
            stages: Arc::new(Stages { layers, proxy }),
        }
    }

    /// The proxy at the end of the chain.
    pub fn proxy(&self) -> &Arc<Proxy> {
        &self.stages.proxy
    }

    /// Answers `req` from `peer` through every layer; `edge` as in [`Call::edge`].
    pub async fn handle(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
        edge: Option<&'static str>,
    ) -> Response<ProxyBody> {
        let call = Call::from_client(req, peer, edge);
        let proxy = &self.stages.proxy;
        if self.stages.layers.is_empty() {
            // Nothing to box: the proxy's own future.
            return logged(proxy, call, |call| proxy.forward_call(call)).await;
        }
        let next = Next {
            stages: self.stages.clone(),
            at: 0,
        };
        logged(proxy, call, |call| next.run(call)).await
    }
}

/// Answers `call` with `run`, and writes the answer's access-log line when `proxy`
/// keeps a log.
pub(crate) async fn logged<F>(
    proxy: &Proxy,
    call: Call,
    run: impl FnOnce(Call) -> F,
) -> Response<ProxyBody>
where
    F: Future<Output = Response<ProxyBody>>,
{
    let Some(log) = proxy.access_log() else {
        return run(call).await;
    };
    let started = tokio::time::Instant::now();
    let seen = Seen::of(&call.req, call.peer);
    let resp = run(call).await;
    let server = resp.extensions().get::<Upstream>().map(|u| u.0.as_str());
    log.log(&seen, &resp, server, started.elapsed());
    resp
}
