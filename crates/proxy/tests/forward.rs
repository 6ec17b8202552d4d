//! The proxy on real sockets: a front proxy on 127.0.0.1:0 in front of small backends,
//! checking balancing, header rewriting, retries and the proxy's own error answers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;

mod common;

use hastack_proxy::{Balance, Pool, PoolOptions, Proxy, ProxyOptions};

/// What a backend saw of the last request.
#[derive(Default)]
struct Seen {
    count: AtomicUsize,
    /// Request bodies read whole, and their bytes.
    bodies: AtomicUsize,
    body_bytes: AtomicUsize,
    /// Client ports seen: one per upstream connection.
    ports: std::sync::Mutex<std::collections::HashSet<u16>>,
    headers: std::sync::Mutex<Vec<(String, String)>>,
}

/// A backend answering `200 <name>` with `X-Served-By: <name>`; records what it saw.
async fn backend(name: &'static str) -> (SocketAddr, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(Seen::default());
    let (_tx, rx) = watch::channel(false);
    let s = seen.clone();
    tokio::spawn(async move {
        let _keep = _tx;
        hastack_runtime::serve_http1(
            listener,
            move |req: Request<hyper::body::Incoming>, peer: SocketAddr| {
                let s = s.clone();
                async move {
                    s.count.fetch_add(1, Ordering::SeqCst);
                    s.ports.lock().expect("lock").insert(peer.port());
                    *s.headers.lock().expect("lock") = req
                        .headers()
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
                        .collect();
                    if let Ok(b) = req.into_body().collect().await {
                        s.bodies.fetch_add(1, Ordering::SeqCst);
                        s.body_bytes.fetch_add(b.to_bytes().len(), Ordering::SeqCst);
                    }
                    let mut r = Response::new(Full::new(Bytes::from(name)));
                    r.headers_mut()
                        .insert("x-served-by", name.parse().expect("header"));
                    r
                }
            },
            rx,
        )
        .await;
    });
    (addr, seen)
}

/// A backend that reads a request and closes the connection without answering.
async fn hangup_backend() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            if s.read(&mut buf).await.unwrap_or(0) > 0 {
                c.fetch_add(1, Ordering::SeqCst);
            }
            drop(s);
        }
    });
    (addr, count)
}

/// An address where nothing listens.
async fn dead_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    l.local_addr().expect("addr")
}

/// A proxy called `front` over `servers`, served on 127.0.0.1:0.
async fn front(servers: &[(&str, SocketAddr)], max_body: usize) -> (SocketAddr, Arc<Proxy>) {
    front_with(servers, |o| o.max_body = max_body).await
}

/// A proxy called `front` with options adjusted by `tune`.
async fn front_with(
    servers: &[(&str, SocketAddr)],
    tune: impl FnOnce(&mut ProxyOptions),
) -> (SocketAddr, Arc<Proxy>) {
    front_pool(servers, PoolOptions::default(), tune).await
}

/// A proxy called `front` over a pool with `pool_opts`; answers time out after 5 s
/// unless `tune` says otherwise.
async fn front_pool(
    servers: &[(&str, SocketAddr)],
    pool_opts: PoolOptions,
    tune: impl FnOnce(&mut ProxyOptions),
) -> (SocketAddr, Arc<Proxy>) {
    common::front_over(servers, pool_opts, |o| {
        o.response_timeout = Duration::from_secs(5);
        tune(o);
    })
    .await
}

struct Resp {
    status: u16,
    head: String,
    body: String,
}

async fn request(addr: SocketAddr, raw: &str) -> Resp {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(raw.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("in time")
        .expect("read");
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("head");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status");
    Resp {
        status,
        head: head.to_ascii_lowercase(),
        body: body.to_string(),
    }
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: www.foobar.com\r\nConnection: close\r\n\r\n")
}

fn post(body: &str) -> String {
    format!(
        "POST /api/posts HTTP/1.1\r\nHost: www.foobar.com\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

#[tokio::test]
async fn round_robin_with_forwarding_headers_and_the_path_in_x_served_by() {
    let (a, seen_a) = backend("b1").await;
    let (b, seen_b) = backend("b2").await;
    let (front, _) = front(&[("b1", a), ("b2", b)], 1 << 20).await;
    let mut bodies = Vec::new();
    for _ in 0..4 {
        let r = request(front, &get("/x?y=1")).await;
        assert_eq!(r.status, 200);
        assert!(
            r.head.contains(&format!("x-served-by: front, {}", r.body)),
            "{}",
            r.head
        );
        bodies.push(r.body);
    }
    assert_eq!(bodies, ["b1", "b2", "b1", "b2"]);
    let headers = seen_a.headers.lock().expect("lock").clone();
    let h = |k: &str| headers.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    assert_eq!(h("x-forwarded-for").as_deref(), Some("127.0.0.1"));
    assert_eq!(h("x-forwarded-proto").as_deref(), Some("http"));
    assert_eq!(
        h("host").as_deref(),
        Some("www.foobar.com"),
        "the client's Host is kept"
    );
    assert_eq!(seen_b.count.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn hop_by_hop_headers_and_a_forged_forwarded_proto_do_not_pass() {
    let (a, seen) = backend("b1").await;
    let (front, _) = front(&[("b1", a)], 1 << 20).await;
    let raw = "GET / HTTP/1.1\r\nHost: x\r\nConnection: close, x-secret\r\nX-Secret: 1\r\nX-Forwarded-Proto: https\r\nX-Forwarded-For: 10.9.9.9\r\n\r\n";
    assert_eq!(request(front, raw).await.status, 200);
    let headers = seen.headers.lock().expect("lock").clone();
    assert!(!headers.iter().any(|(k, _)| k == "x-secret"), "{headers:?}");
    assert!(
        headers.contains(&("x-forwarded-proto".into(), "http".into())),
        "{headers:?}"
    );
    assert!(
        headers.contains(&("x-forwarded-for".into(), "10.9.9.9, 127.0.0.1".into())),
        "{headers:?}"
    );
}

#[tokio::test]
async fn at_the_edge_forwarded_headers_are_set_not_trusted() {
    let (a, seen) = backend("b1").await;
    let mut registry = Registry::default();
    let pool = Pool::new("t", &[("b1".to_string(), a)], None, &mut registry);
    let proxy = Proxy::new(ProxyOptions::new("edge"), pool, &mut registry);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let edge = listener.local_addr().expect("addr");
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let _keep = tx;
        hastack_runtime::serve_http1(
            listener,
            move |req, peer| {
                let p = proxy.clone();
                async move { p.forward_as(req, peer, "https").await }
            },
            rx,
        )
        .await;
    });
    let raw = "GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 10.9.9.9\r\nX-Forwarded-For: 10.8.8.8\r\nX-Forwarded-Proto: http\r\nConnection: close\r\n\r\n";
    assert_eq!(request(edge, raw).await.status, 200);
    let headers = seen.headers.lock().expect("lock").clone();
    let xff: Vec<_> = headers
        .iter()
        .filter(|(k, _)| k == "x-forwarded-for")
        .collect();
    assert_eq!(
        xff,
        [&("x-forwarded-for".to_string(), "127.0.0.1".to_string())],
        "the client's forged addresses must not pass the edge"
    );
    assert!(
        headers.contains(&("x-forwarded-proto".into(), "https".into())),
        "{headers:?}"
    );
}

#[tokio::test]
async fn a_refused_connection_moves_any_request_to_the_next_server() {
    let dead = dead_addr().await;
    let (b, seen) = backend("b2").await;
    let (front, proxy) = front(&[("dead", dead), ("b2", b)], 1 << 20).await;
    for _ in 0..3 {
        let r = request(front, &post("{}")).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body, "b2");
    }
    assert_eq!(seen.count.load(Ordering::SeqCst), 3);
    assert!(
        !proxy.pool().servers()[0].is_healthy(),
        "a refused server is taken out at once"
    );
}

#[tokio::test]
async fn a_broken_exchange_repeats_a_get_but_never_a_post() {
    let (hangup, hung) = hangup_backend().await;
    let (b, seen) = backend("b2").await;
    // `first`: every request goes to the server that hangs up first.
    let first = PoolOptions {
        algorithm: Balance::First,
        ..Default::default()
    };
    let (front, _) = front_pool(&[("hangup", hangup), ("b2", b)], first, |_| {}).await;
    // The GET fails on the server that hangs up; being idempotent, it is sent again
    // to the next server.
    let r = request(front, &get("/")).await;
    assert_eq!((r.status, r.body.as_str()), (200, "b2"));
    assert_eq!(hung.load(Ordering::SeqCst), 1);
    assert_eq!(seen.count.load(Ordering::SeqCst), 1);
    // The POST lands on the hang-up server too; it may have been processed there, so the client gets a 502 and b2 never sees it.
    let r = request(front, &post(r#"{"author":"a","body":"b"}"#)).await;
    assert_eq!(r.status, 502, "{}", r.body);
    assert!(r.body.contains("\"error\""), "{}", r.body);
    assert_eq!(hung.load(Ordering::SeqCst), 2);
    assert_eq!(
        seen.count.load(Ordering::SeqCst),
        1,
        "the POST must not be repeated elsewhere"
    );
}

#[tokio::test]
async fn a_request_body_that_never_arrives_gets_408() {
    let (a, seen) = backend("b1").await;
    let (front, _) = front_with(&[("b1", a)], |o| {
        o.request_body_timeout = Duration::from_millis(200)
    })
    .await;
    let mut s = tokio::net::TcpStream::connect(front)
        .await
        .expect("connect");
    s.write_all(b"POST /api/posts HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"author\"")
        .await
        .expect("write");
    let mut out = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut out))
        .await
        .expect("answer in time")
        .expect("read");
    let text = String::from_utf8_lossy(&out[..n]);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    // A POST streams: its head went on, but no body was ever whole at the server.
    assert_eq!(seen.bodies.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn no_server_left_is_a_json_error_not_a_hang() {
    let (front, _) = front(
        &[("d1", dead_addr().await), ("d2", dead_addr().await)],
        1 << 20,
    )
    .await;
    let r = request(front, &get("/")).await;
    assert_eq!(r.status, 502);
    assert!(r.head.contains("x-served-by: front"));
    let r = request(front, &get("/")).await;
    assert_eq!(r.status, 503, "both are marked down now: {}", r.body);
}

#[tokio::test]
async fn an_oversized_body_is_refused_with_413() {
    let (a, seen) = backend("b1").await;
    let (front, _) = front(&[("b1", a)], 16).await;
    let r = request(front, &post(&"x".repeat(100))).await;
    assert_eq!(r.status, 413);
    assert_eq!(seen.count.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn upstream_connections_are_kept_alive_and_reused() {
    let (a, seen) = backend("b1").await;
    let (front, _) = front(&[("b1", a)], 1 << 20).await;
    for i in 0..20 {
        let method = if i % 3 == 0 { "HEAD" } else { "GET" };
        let r = request(
            front,
            &format!("{method} /{i} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert_eq!(r.status, 200);
    }
    assert_eq!(seen.count.load(Ordering::SeqCst), 20);
    assert_eq!(
        seen.ports.lock().expect("lock").len(),
        1,
        "one upstream connection serves every request in turn"
    );
}

/// A backend that answers `200 ok` once a chunked body has ended, and says (through
/// `first`) when the bytes `first` of the body reached it.
async fn streaming_backend() -> (SocketAddr, tokio::sync::oneshot::Receiver<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let Ok((mut s, _)) = listener.accept().await else {
            return;
        };
        let mut seen = Vec::new();
        let mut tx = Some(tx);
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = s.read(&mut buf).await {
            seen.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&seen);
            if text.contains("first")
                && let Some(tx) = tx.take()
            {
                let _ = tx.send(());
            }
            if text.ends_with("0\r\n\r\n") {
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    .await;
                break;
            }
        }
    });
    (addr, rx)
}

#[tokio::test]
async fn a_post_body_streams_to_the_server_as_it_arrives() {
    let (up, first_arrived) = streaming_backend().await;
    let (front, _) = front(&[("b1", up)], 1 << 20).await;
    let mut s = tokio::net::TcpStream::connect(front)
        .await
        .expect("connect");
    s.write_all(
        b"POST /upload HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n",
    )
    .await
    .expect("write");
    // The body is not over, yet its first part is at the server: nothing held it.
    tokio::time::timeout(Duration::from_secs(5), first_arrived)
        .await
        .expect("the first part of the body reached the server before the body ended")
        .expect("signal");
    s.write_all(b"4\r\nrest\r\n0\r\n\r\n").await.expect("write");
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .expect("in time")
        .expect("read");
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.ends_with("ok"), "{text}");
}

#[tokio::test]
async fn a_streamed_body_over_the_limit_gets_413_and_the_server_stays_in() {
    let (a, seen) = backend("b1").await;
    let (front, _) = front(&[("b1", a)], 16).await;
    // Chunked: the length is known only as the body comes, so it streams until the
    // limit is crossed.
    let chunk = "x".repeat(100);
    let r = request(
        front,
        &format!(
            "POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n",
            chunk.len()
        ),
    )
    .await;
    assert_eq!(r.status, 413, "{}", r.body);
    assert_eq!(seen.bodies.load(Ordering::SeqCst), 0, "no body was whole");
    // The client's fault did not take the only server out.
    let r = request(front, &get("/")).await;
    assert_eq!((r.status, r.body.as_str()), (200, "b1"));
}

#[tokio::test]
async fn an_idempotent_body_is_held_for_a_retry_only_while_the_budget_has_room() {
    let first = || PoolOptions {
        algorithm: Balance::First,
        ..Default::default()
    };
    let put = |body: &str| {
        format!(
            "PUT /doc HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let body = "y".repeat(1000);
    // Room in the budget: the PUT's body is held, so when the first server hangs up
    // the PUT goes whole to the next.
    let (hangup, hung) = hangup_backend().await;
    let (b, seen) = backend("b2").await;
    let (front, _) = front_pool(&[("hangup", hangup), ("b2", b)], first(), |_| {}).await;
    let r = request(front, &put(&body)).await;
    assert_eq!((r.status, r.body.as_str()), (200, "b2"));
    assert_eq!(hung.load(Ordering::SeqCst), 1);
    assert_eq!(seen.body_bytes.load(Ordering::SeqCst), 1000);
    // A budget smaller than the body: the body streams, and what streamed cannot be
    // sent again, so the hang-up is the client's answer and b2 never sees the PUT.
    let (hangup, hung) = hangup_backend().await;
    let (b, seen) = backend("b2").await;
    let (front, _) = front_pool(&[("hangup", hangup), ("b2", b)], first(), |o| {
        o.body_buffer = 999
    })
    .await;
    let r = request(front, &put(&body)).await;
    assert_eq!(r.status, 502, "{}", r.body);
    assert_eq!(hung.load(Ordering::SeqCst), 1);
    assert_eq!(seen.count.load(Ordering::SeqCst), 0);
}

/// Sockets of this host in SYN_SENT towards `port` (from /proc/net/tcp).
fn connecting_to(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let remote_port = f
                .get(2)
                .and_then(|a| a.split_once(':'))
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            remote_port == Some(port) && f.get(3) == Some(&"02")
        })
        .count()
}

#[tokio::test]
async fn connections_being_opened_to_one_server_are_bounded() {
    // A server whose accept queue is full: new connections hang in SYN_SENT.
    let sock =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    sock.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .expect("bind");
    sock.listen(1).expect("listen");
    let slow = sock.local_addr().expect("addr").as_socket().expect("inet");
    let (front, _) = front_with(&[("slow", slow)], |o| {
        o.connect_timeout = Duration::from_secs(3)
    })
    .await;
    let burst = 150;
    for _ in 0..burst {
        tokio::spawn(async move {
            if let Ok(mut s) = tokio::net::TcpStream::connect(front).await {
                let _ = s.write_all(get("/").as_bytes()).await;
                let mut out = Vec::new();
                let _ = s.read_to_end(&mut out).await;
            }
        });
    }
    // Every request is in by now, each waiting for a connection to the server.
    let mut most = 0;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        most = most.max(connecting_to(slow.port()));
    }
    assert!(
        most > 10,
        "the burst did open connections to the server ({most} seen at once)"
    );
    assert!(
        most <= hastack_proxy::MAX_DIALING,
        "{most} connections were being opened at once; the bound is {}",
        hastack_proxy::MAX_DIALING
    );
    drop(sock);
}
