//! The strict front door on real sockets: hostile requests sent raw to a proxy in front
//! of a counting backend. Each must get its 4xx, find the connection closed, and leave
//! the backend untouched; a slow head gets 408 while other clients are served.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Response;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

mod common;

use hastack_proxy::{Pool, Proxy, ProxyOptions};
use hastack_runtime::front_door::{FrontDoor, HeadLimits};

/// A backend that counts the requests it handles.
async fn backend() -> (SocketAddr, Arc<AtomicUsize>) {
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    let addr = common::serve(
        hastack_runtime::Serving::default(),
        move |req: hyper::Request<hyper::body::Incoming>, _peer| {
            let c = c.clone();
            async move {
                c.fetch_add(1, Ordering::SeqCst);
                let body = req.into_body().collect().await.map(|b| b.to_bytes());
                let n = body.map(|b| b.len()).unwrap_or(0);
                Response::new(Full::new(Bytes::from(format!("got {n}"))))
            }
        },
    )
    .await;
    (addr, count)
}

/// A proxy behind a front door with a 1 KiB line limit, 20 headers and a 1 s head
/// timeout.
async fn front(upstream: SocketAddr) -> (SocketAddr, Arc<FrontDoor>) {
    let door = FrontDoor::new(
        HeadLimits {
            max_line: 1024,
            max_headers: 20,
        },
        Duration::from_secs(1),
    );
    front_door(upstream, door).await
}

/// A proxy behind `door`.
async fn front_door(upstream: SocketAddr, door: FrontDoor) -> (SocketAddr, Arc<FrontDoor>) {
    let mut registry = Registry::default();
    let pool = Pool::new("t", &[("b".to_string(), upstream)], None, &mut registry);
    let proxy = Proxy::new(ProxyOptions::new("front"), pool, &mut registry);
    let door = Arc::new(door);
    let serving = hastack_runtime::Serving {
        door: door.clone(),
        ..Default::default()
    };
    let addr = common::serve(serving, move |req, peer| {
        let p = proxy.clone();
        async move { p.forward_as(req, peer, "http").await }
    })
    .await;
    (addr, door)
}

/// Sends `raw`, reads until the server closes (at most 5 s): what came back, and
/// whether the connection was closed.
async fn exchange(addr: SocketAddr, raw: &[u8]) -> (String, bool) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(raw).await.expect("write");
    let mut out = Vec::new();
    let closed = matches!(
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await,
        Ok(Ok(_)) | Ok(Err(_))
    );
    (String::from_utf8_lossy(&out).into_owned(), closed)
}

fn statuses(text: &str) -> Vec<u16> {
    text.match_indices("HTTP/1.1 ")
        .filter_map(|(i, _)| text.get(i + 9..i + 12)?.parse().ok())
        .collect()
}

#[tokio::test]
async fn every_hostile_request_is_refused_closed_and_never_forwarded() {
    let (up, count) = backend().await;
    let (addr, _door) = front(up).await;
    let big = "x".repeat(2000);
    let many: String = (0..25).map(|i| format!("X-H{i}: {i}\r\n")).collect();
    let catalogue: Vec<(&str, String, u16)> = vec![
        ("no Host", "GET / HTTP/1.1\r\n\r\n".into(), 400),
        ("two Hosts", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".into(), 400),
        ("invalid Host", "GET / HTTP/1.1\r\nHost: a b@c\r\n\r\n".into(), 400),
        ("Host with a path", "GET / HTTP/1.1\r\nHost: a/b\r\n\r\n".into(), 400),
        (
            "CL then TE",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".into(),
            400,
        ),
        (
            "TE then CL",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n".into(),
            400,
        ),
        (
            "two TE lines",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".into(),
            400,
        ),
        (
            "TE gzip, chunked",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n".into(),
            400,
        ),
        (
            "TE identity",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n".into(),
            400,
        ),
        (
            "TE in HTTP/1.0",
            "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".into(),
            400,
        ),
        (
            "two Content-Lengths",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab".into(),
            400,
        ),
        (
            "negative Content-Length",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n".into(),
            400,
        ),
        (
            "space before colon",
            "GET / HTTP/1.1\r\nHost : a\r\n\r\n".into(),
            400,
        ),
        (
            "obsolete folding",
            "GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\n 2\r\n\r\n".into(),
            400,
        ),
        (
            "one huge header",
            format!("GET / HTTP/1.1\r\nHost: a\r\nX-Big: {big}\r\n\r\n"),
            431,
        ),
        (
            "too many headers",
            format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n"),
            431,
        ),
        (
            "huge request line",
            format!("GET /{big} HTTP/1.1\r\nHost: a\r\n\r\n"),
            414,
        ),
    ];
    for (what, raw, want) in &catalogue {
        let (text, closed) = exchange(addr, raw.as_bytes()).await;
        assert_eq!(statuses(&text), vec![*want], "{what}: got {text:?}");
        assert!(closed, "{what}: the connection must be closed");
        assert!(
            text.to_ascii_lowercase().contains("connection: close"),
            "{what}: {text:?}"
        );
        assert_eq!(
            count.load(Ordering::SeqCst),
            0,
            "{what} reached the backend"
        );
    }
    // The front door is not refusing everything: a proper request goes through.
    let (text, _) = exchange(
        addr,
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(statuses(&text), vec![200], "{text:?}");
    assert!(text.ends_with("got 3"), "{text:?}");
    assert_eq!(count.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_smuggled_request_after_a_good_one_is_refused_in_order() {
    let (up, count) = backend().await;
    let (addr, _door) = front(up).await;
    // The first is answered; the second (CL and TE) is refused after it, and the third
    // is never read.
    let raw = "GET /one HTTP/1.1\r\nHost: a\r\n\r\n\
               POST /two HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n\
               GET /three HTTP/1.1\r\nHost: a\r\n\r\n";
    let (text, closed) = exchange(addr, raw.as_bytes()).await;
    assert_eq!(statuses(&text), vec![200, 400], "{text:?}");
    assert!(closed);
    assert_eq!(
        count.load(Ordering::SeqCst),
        1,
        "only the first reached the backend"
    );
}

#[tokio::test]
async fn a_head_sent_a_byte_at_a_time_gets_408_while_others_are_served() {
    let (up, count) = backend().await;
    let (addr, door) = front(up).await;
    let slow = tokio::spawn(async move {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let started = Instant::now();
        let head = b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: 1234567890\r\n\r\n";
        for b in head.iter() {
            if s.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            if started.elapsed() > Duration::from_secs(5) {
                break;
            }
        }
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
        (
            String::from_utf8_lossy(&out).into_owned(),
            started.elapsed(),
        )
    });
    // Meanwhile others are served at once.
    for _ in 0..5 {
        let (text, _) = exchange(
            addr,
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(statuses(&text), vec![200]);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (text, took) = slow.await.expect("slow client");
    assert_eq!(statuses(&text), vec![408], "{text:?}");
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(4),
        "refused after the 1 s head timeout, not before nor long after: {took:?}"
    );
    assert_eq!(
        count.load(Ordering::SeqCst),
        5,
        "the slow head never reached the backend"
    );
    // Counted by reason.
    let mut registry = Registry::default();
    door.register(&mut registry);
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry).expect("encode");
    assert!(
        out.contains("hastack_http_refused_total{reason=\"head_timeout\"} 1"),
        "{out}"
    );
}

#[tokio::test]
async fn a_malformed_chunked_body_ends_the_connection() {
    let (up, _count) = backend().await;
    let (addr, _door) = front(up).await;
    let (text, closed) = exchange(
        addr,
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
    )
    .await;
    assert!(closed, "{text:?}");
    assert!(
        !statuses(&text).contains(&200),
        "nothing is answered as if the body were fine: {text:?}"
    );
}

/// A response body that never ends (64 KiB frames as fast as they are taken); it says
/// through `dropped` when the server gives it up.
struct Endless {
    dropped: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Endless {
    fn drop(&mut self) {
        if let Some(tx) = self.dropped.take() {
            let _ = tx.send(());
        }
    }
}

impl hyper::body::Body for Endless {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        static CHUNK: [u8; 65536] = [b'z'; 65536];
        std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(Bytes::from_static(
            &CHUNK,
        )))))
    }
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_off_and_frees_the_upstream() {
    // The upstream streams an endless answer and says when it is let go.
    let (dropped_tx, dropped) = tokio::sync::oneshot::channel();
    let dropped_tx = Arc::new(std::sync::Mutex::new(Some(dropped_tx)));
    let up = common::serve(
        hastack_runtime::Serving::default(),
        move |_req: hyper::Request<hyper::body::Incoming>, _peer| {
            let d = dropped_tx.clone();
            async move {
                Response::new(Endless {
                    dropped: d.lock().expect("lock").take(),
                })
            }
        },
    )
    .await;
    let door = FrontDoor::default().with_write_timeout(Duration::from_millis(300));
    let (addr, _door) = front_door(up, door).await;
    // The client asks, then reads nothing: the proxy's writes to it stall.
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .expect("write");
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(10), dropped)
        .await
        .expect("the upstream's answer is let go once the client has read nothing for the write timeout")
        .expect("signal");
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "not before the write timeout: {:?}",
        started.elapsed()
    );
    // The client's connection is closed: what it reads now ends.
    let mut sink = vec![0u8; 1 << 20];
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match s.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the stalled connection was closed");
}
