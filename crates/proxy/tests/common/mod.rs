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
