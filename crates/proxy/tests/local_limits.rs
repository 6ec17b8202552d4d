//! A proxy that runs out of its own file descriptors must not blame its servers: the
//! request gets a 503 and every server stays in the pool (~1000 idle sockets used to
//! make the whole site 503 by taking healthy servers out). A test binary of its own,
//! because it lowers the process's descriptor limit.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;
use nix::sys::resource::{Resource, getrlimit, setrlimit};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;

use hastack_proxy::{Pool, Proxy, ProxyOptions};

async fn exchange(client: &mut tokio::net::TcpStream, path: &str) -> String {
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
    client.write_all(req.as_bytes()).await.expect("request");
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), client.read(&mut buf))
        .await
        .expect("an answer in time")
        .expect("an answer");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test(flavor = "current_thread")]
async fn out_of_descriptors_answers_503_and_keeps_the_server() {
    // A backend that closes each connection after its answer, so every request makes
    // the proxy open a new upstream connection; and the proxy in front of it.
    let backend = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let backend_addr = backend.local_addr().expect("addr");
    let (tx, rx) = watch::channel(false);
    tokio::spawn(hastack_runtime::serve_http1(
        backend,
        |_req, _peer: SocketAddr| async {
            let mut r = Response::new(Full::new(Bytes::from("ok")));
            r.headers_mut()
                .insert("connection", "close".parse().expect("header"));
            r
        },
        rx.clone(),
    ));
    let mut registry = Registry::default();
    let pool = Pool::new(
        "t",
        &[("b1".to_string(), backend_addr)],
        None,
        &mut registry,
    );
    let proxy = Proxy::new(ProxyOptions::new("front"), pool.clone(), &mut registry);
    let front = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let front_addr = front.local_addr().expect("addr");
    let p = proxy.clone();
    tokio::spawn(hastack_runtime::serve_http1(
        front,
        move |req, peer| {
            let p = p.clone();
            async move { p.forward(req, peer).await }
        },
        rx,
    ));

    // The client's connection is accepted first; then the process's descriptors run
    // out, so the proxy's next connection to the backend is what fails.
    let listening = sockets_open();
    let mut client = tokio::net::TcpStream::connect(front_addr)
        .await
        .expect("connect");
    let first = exchange(&mut client, "/").await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    // The first exchange's upstream connection closes on both ends (the backend said
    // `connection: close`); until it has, its descriptors could free up under the hog
    // below and let the proxy's next connect through. What stays: the sockets open
    // before (the listeners, the runtime's own) and the client's connection, both ends.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while sockets_open() > listening + 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the upstream connection never closed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    let open = std::fs::read_dir("/proc/self/fd").expect("/proc").count() as u64;
    setrlimit(Resource::RLIMIT_NOFILE, open + 16, hard).expect("lower the limit");
    let mut hog = Vec::new();
    let exhausted = loop {
        match std::fs::File::open("/dev/null") {
            Ok(f) => hog.push(f),
            Err(e) => break e,
        }
    };
    let second = exchange(&mut client, "/again").await;
    drop(hog);
    setrlimit(Resource::RLIMIT_NOFILE, soft, hard).expect("restore the limit");
    let _ = tx.send(true);

    assert_eq!(
        exhausted.raw_os_error(),
        Some(nix::libc::EMFILE),
        "{exhausted}"
    );
    assert!(second.starts_with("HTTP/1.1 503"), "{second}");
    assert!(
        pool.servers()[0].is_healthy(),
        "the backend was taken out for this host's own shortage"
    );
    // With descriptors back, the same server serves again.
    let third = exchange(&mut client, "/").await;
    assert!(third.starts_with("HTTP/1.1 200"), "{third}");
}

/// The sockets this process has open.
fn sockets_open() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy().starts_with("socket:"))
        .count()
}
