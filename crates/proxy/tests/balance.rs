//! Balancing, limits and passive health on real sockets: a proxy in front of small
//! backends that answer with their name, some slowly or with errors.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

mod common;

use hastack_proxy::{Balance, PoolOptions, Proxy, ProxyOptions};

/// A backend called `name`: `/slow` takes a second, every answer has `status`; it
/// records the `Cookie` headers it saw. Stopped when the returned sender is dropped.
async fn backend(
    name: &'static str,
    status: u16,
) -> (SocketAddr, Arc<Mutex<Vec<String>>>, watch::Sender<bool>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let cookies = Arc::new(Mutex::new(Vec::new()));
    let seen = cookies.clone();
    let (tx, rx) = watch::channel(false);
    tokio::spawn(hastack_runtime::serve_http1(
        listener,
        move |req: hyper::Request<hyper::body::Incoming>, _peer| {
            let seen = seen.clone();
            async move {
                if let Some(c) = req.headers().get("cookie") {
                    seen.lock()
                        .expect("lock")
                        .push(c.to_str().unwrap_or("").to_string());
                }
                if req.uri().path() == "/slow" {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                let mut r = Response::new(Full::new(Bytes::from(name)));
                *r.status_mut() = StatusCode::from_u16(status).expect("status");
                r
            }
        },
        rx,
    ));
    (addr, cookies, tx)
}

/// A proxy over `servers` with pool options `opts` and proxy options tuned by `tune`.
async fn front(
    servers: &[(&str, SocketAddr)],
    opts: PoolOptions,
    tune: impl FnOnce(&mut ProxyOptions),
) -> (SocketAddr, Arc<Proxy>) {
    common::front_over(servers, opts, tune).await
}

/// Polls `cond` every 10 ms until it holds; panics after 5 s.
async fn until(what: &str, mut cond: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until a request is in flight on one of the proxy's servers.
async fn until_in_flight(proxy: &Proxy) {
    until("a request in flight", async || {
        proxy.pool().servers().iter().any(|s| s.active() > 0)
    })
    .await;
}

struct Got {
    status: u16,
    head: String,
    body: String,
}

async fn get(addr: SocketAddr, path: &str, cookie: Option<&str>) -> Got {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let cookie = cookie
        .map(|c| format!("Cookie: {c}\r\n"))
        .unwrap_or_default();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: a\r\n{cookie}Connection: close\r\n\r\n").as_bytes(),
    )
    .await
    .expect("write");
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("in time")
        .expect("read");
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("a head");
    Got {
        status: head
            .get(9..12)
            .and_then(|c| c.parse().ok())
            .expect("status"),
        head: head.to_string(),
        body: body.to_string(),
    }
}

#[tokio::test]
async fn leastconn_sends_to_the_idle_server() {
    let (a, _, _ka) = backend("a", 200).await;
    let (b, _, _kb) = backend("b", 200).await;
    let opts = PoolOptions {
        algorithm: Balance::LeastConn,
        ..Default::default()
    };
    let (addr, proxy) = front(&[("a", a), ("b", b)], opts, |_| {}).await;
    let slow = tokio::spawn(async move { get(addr, "/slow", None).await.body });
    until_in_flight(&proxy).await;
    // While one server holds the slow request, every other goes to the idle one.
    let mut bodies = Vec::new();
    for _ in 0..4 {
        bodies.push(get(addr, "/", None).await.body);
    }
    let busy = slow.await.expect("slow");
    assert!(
        bodies.iter().all(|b| *b != busy),
        "the busy server {busy} got {bodies:?}"
    );
}

#[tokio::test]
async fn roundrobin_follows_the_weights() {
    let (a, _, _ka) = backend("a", 200).await;
    let (b, _, _kb) = backend("b", 200).await;
    let opts = PoolOptions {
        weights: vec![("a".into(), 3), ("b".into(), 1)],
        ..Default::default()
    };
    let (addr, _) = front(&[("a", a), ("b", b)], opts, |_| {}).await;
    let mut on_a = 0;
    for _ in 0..8 {
        if get(addr, "/", None).await.body == "a" {
            on_a += 1;
        }
    }
    assert_eq!(on_a, 6, "weights 3:1 over 8 requests");
}

#[tokio::test]
async fn a_server_at_its_limit_queues_then_503s() {
    let (a, _, _ka) = backend("a", 200).await;
    let short = PoolOptions {
        max_conn: 1,
        queue_timeout: Duration::from_millis(200),
        ..Default::default()
    };
    let (addr, proxy) = front(&[("a", a)], short, |_| {}).await;
    let slow = tokio::spawn(async move { get(addr, "/slow", None).await.status });
    until_in_flight(&proxy).await;
    let queued = get(addr, "/", None).await;
    assert_eq!(queued.status, 503, "{}", queued.body);
    assert!(queued.body.contains("busy"), "{}", queued.body);
    assert_eq!(slow.await.expect("slow"), 200);

    // With a longer queue the request waits for the slot and is served.
    let (a, _, _ka) = backend("a", 200).await;
    let long = PoolOptions {
        max_conn: 1,
        queue_timeout: Duration::from_secs(5),
        ..Default::default()
    };
    let (addr, proxy) = front(&[("a", a)], long, |_| {}).await;
    let slow = tokio::spawn(async move { get(addr, "/slow", None).await.status });
    until_in_flight(&proxy).await;
    let started = std::time::Instant::now();
    assert_eq!(get(addr, "/", None).await.status, 200);
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "it waited for the slow one: {:?}",
        started.elapsed()
    );
    assert_eq!(slow.await.expect("slow"), 200);
}

#[tokio::test]
async fn a_cookie_pins_a_client_and_moves_it_when_its_server_dies() {
    let (a, seen_a, ka) = backend("a", 200).await;
    let (b, seen_b, kb) = backend("b", 200).await;
    let sticky = PoolOptions {
        sticky_cookie: Some("SERVERID".into()),
        ..PoolOptions::default()
    };
    let (addr, _) = front(&[("a", a), ("b", b)], sticky, |_| {}).await;
    let first = get(addr, "/", None).await;
    let home = first.body.clone();
    assert!(
        first
            .head
            .to_ascii_lowercase()
            .contains(&format!("set-cookie: serverid={home}; path=/")),
        "{}",
        first.head
    );
    let cookie = format!("theme=dark; SERVERID={home}");
    for _ in 0..6 {
        let r = get(addr, "/", Some(&cookie)).await;
        assert_eq!(r.body, home, "pinned");
        assert!(
            !r.head.to_ascii_lowercase().contains("set-cookie"),
            "no new cookie needed"
        );
    }
    // The cookie is the proxy's: the server sees the client's other cookies only.
    let seen: Vec<String> = [seen_a, seen_b]
        .iter()
        .flat_map(|s| s.lock().expect("lock").clone())
        .collect();
    assert!(seen.iter().all(|c| c == "theme=dark"), "{seen:?}");
    // Its server dies: the client moves, and the cookie is rewritten.
    let mut running = vec![("a", ka, a), ("b", kb, b)];
    let home_addr = running
        .iter()
        .find(|(n, ..)| *n == home)
        .map(|(.., addr)| *addr)
        .expect("home");
    running.retain(|(n, ..)| *n != home);
    until("the home server to stop listening", async || {
        TcpStream::connect(home_addr).await.is_err()
    })
    .await;
    let moved = get(addr, "/", Some(&cookie)).await;
    assert_eq!(moved.status, 200);
    assert_ne!(moved.body, home, "moved off the dead server");
    assert!(
        moved
            .head
            .to_ascii_lowercase()
            .contains(&format!("set-cookie: serverid={}; path=/", moved.body)),
        "{}",
        moved.head
    );
}

#[tokio::test]
async fn consecutive_5xx_eject_a_server() {
    let (bad, _, _kb) = backend("bad", 500).await;
    let (good, _, _kg) = backend("good", 200).await;
    let opts = PoolOptions {
        eject_after: 2,
        eject_for: Duration::from_secs(30),
        ..Default::default()
    };
    let (addr, _) = front(&[("bad", bad), ("good", good)], opts, |_| {}).await;
    let mut errors = 0;
    for _ in 0..12 {
        if get(addr, "/", None).await.status == 500 {
            errors += 1;
        }
    }
    assert_eq!(errors, 2, "two 5xx in a row, then the server is out");
}
