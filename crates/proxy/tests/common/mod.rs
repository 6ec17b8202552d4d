//! What the proxy's real-socket tests share.

use std::net::SocketAddr;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Request, Response};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Serves `handler` on 127.0.0.1 (a port from the OS) as `serving` says, for the rest
/// of the test; the address.
pub(crate) async fn serve<F, Fut, B>(serving: hastack_runtime::Serving, handler: F) -> SocketAddr
where
    F: Fn(Request<Incoming>, SocketAddr) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<B>> + Send + 'static,
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        // Never sent: the server runs until the test's runtime ends.
        let _keep = tx;
        hastack_runtime::serve_with(listener, serving, handler, rx).await;
    });
    addr
}

/// A proxy called `front` over `servers` (a pool with `pool_opts`), its options
/// adjusted by `tune`, serving HTTP/1.1 on a port from the OS: the address and the
/// proxy.
#[allow(dead_code)] // not every test file proxies through a pool of its own
pub(crate) async fn front_over(
    servers: &[(&str, SocketAddr)],
    pool_opts: hastack_proxy::PoolOptions,
    tune: impl FnOnce(&mut hastack_proxy::ProxyOptions),
) -> (SocketAddr, std::sync::Arc<hastack_proxy::Proxy>) {
    let servers: Vec<(String, SocketAddr)> =
        servers.iter().map(|(n, a)| (n.to_string(), *a)).collect();
    let mut registry = prometheus_client::registry::Registry::default();
    let pool = hastack_proxy::Pool::with_options("t", &servers, None, pool_opts, &mut registry);
    let mut opts = hastack_proxy::ProxyOptions::new("front");
    tune(&mut opts);
    let proxy = hastack_proxy::Proxy::new(opts, pool, &mut registry);
    let p = proxy.clone();
    let addr = serve(hastack_runtime::Serving::default(), move |req, peer| {
        let p = p.clone();
        async move { p.forward(req, peer).await }
    })
    .await;
    (addr, proxy)
}
