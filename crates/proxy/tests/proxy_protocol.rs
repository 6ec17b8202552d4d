//! The PROXY protocol v2 on real sockets, both ways: read from the proxies in front
//! (`[lb] front_proxies`, with a real HAProxy as one of them) and sent to the servers
//! behind (`[lb] send_proxy`), each connection naming its own client.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;

mod common;

use hastack_proxy::{HealthCheck, Pool, PoolOptions, Proxy, ProxyOptions};
use hastack_runtime::{ProxyHeader, Serving, proxy_protocol};

/// A backend whose listener reads PROXY headers as `header` says, answering with the
/// peer it was given and the `X-Forwarded-For` and `-Proto` it got.
async fn echo_backend(header: ProxyHeader) -> SocketAddr {
    let serving = Serving {
        proxy_header: header,
        ..Default::default()
    };
    common::serve(
        serving,
        |req: Request<hyper::body::Incoming>, peer: SocketAddr| async move {
            let h = |n: &str| {
                req.headers()
                    .get(n)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-")
                    .to_string()
            };
            let body = format!(
                "peer={peer} xff={} proto={}",
                h("x-forwarded-for"),
                h("x-forwarded-proto")
            );
            Response::new(Full::new(Bytes::from(body)))
        },
    )
    .await
}

/// An edge proxy in front of `upstream`: its listener reads PROXY headers from
/// `front` (and believes their forwarded headers); `send` sends them upstream.
async fn edge(upstream: SocketAddr, front: &[&str], send: bool) -> SocketAddr {
    let nets: Vec<ipnet::IpNet> = front.iter().map(|n| n.parse().expect("net")).collect();
    let mut registry = Registry::default();
    let pool = Pool::with_options(
        "t",
        &[("b".to_string(), upstream)],
        None,
        PoolOptions {
            send_proxy: send,
            ..Default::default()
        },
        &mut registry,
    );
    // The listener and the proxy share one list, as in the lb.
    let front_proxies = ProxyHeader::from_networks(&nets);
    let mut opts = ProxyOptions::new("edge");
    opts.front_proxies = front_proxies.clone();
    let proxy = Proxy::new(opts, pool, &mut registry);
    let serving = Serving {
        proxy_header: front_proxies,
        ..Default::default()
    };
    common::serve(serving, move |req, peer| {
        let p = proxy.clone();
        async move { p.forward_as(req, peer, "http").await }
    })
    .await
}

/// A connection to `to` from the local address `from` (any port).
async fn connect_from(from: IpAddr, to: SocketAddr) -> TcpStream {
    let sock = TcpSocket::new_v4().expect("socket");
    sock.bind(SocketAddr::new(from, 0)).expect("bind source");
    sock.connect(to).await.expect("connect")
}

/// Sends `prefix` and a GET with `extra` header lines on `s`; the answer's status and
/// body (the connection stays open).
async fn get_on(s: &mut TcpStream, prefix: &[u8], extra: &str) -> (u16, String) {
    let mut raw = prefix.to_vec();
    raw.extend_from_slice(format!("GET / HTTP/1.1\r\nHost: x\r\n{extra}\r\n").as_bytes());
    s.write_all(&raw).await.expect("write");
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("answer in time")
            .expect("read");
        out.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&out).into_owned();
        if n == 0 {
            break;
        }
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(str::to_owned)
                })
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if body.len() >= len {
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

#[tokio::test]
async fn a_front_proxys_header_names_the_client() {
    let backend = echo_backend(ProxyHeader::Never).await;
    let edge = edge(backend, &["127.0.0.1/32"], false).await;
    let client: SocketAddr = "203.0.113.7:4000".parse().expect("addr");
    let header = proxy_protocol::encode(client, edge);
    let mut s = connect_from("127.0.0.1".parse().expect("ip"), edge).await;
    let (status, body) = get_on(&mut s, &header, "X-Forwarded-For: 6.6.6.6\r\n").await;
    assert_eq!(status, 200, "{body}");
    // The client named in the header is the client: its own X-Forwarded-For is a
    // claim, replaced as at any edge.
    assert!(body.contains("xff=203.0.113.7 "), "{body}");
    // A second request on the same connection is still that client's.
    let (_, body) = get_on(&mut s, b"", "").await;
    assert!(body.contains("xff=203.0.113.7 "), "{body}");
}

#[tokio::test]
async fn a_header_from_anyone_else_is_not_believed() {
    let backend = echo_backend(ProxyHeader::Never).await;
    // Only 127.0.0.2 is a front proxy; this client is 127.0.0.1.
    let edge = edge(backend, &["127.0.0.2/32"], false).await;
    let forged = proxy_protocol::encode("203.0.113.7:4000".parse().expect("addr"), edge);
    let mut s = connect_from("127.0.0.1".parse().expect("ip"), edge).await;
    let (status, body) = get_on(&mut s, &forged, "").await;
    assert_eq!(status, 400, "a PROXY header is no HTTP request: {body}");
    // From the front proxy's address, a plain request keeps its forwarded headers.
    let mut s = connect_from("127.0.0.2".parse().expect("ip"), edge).await;
    let (status, body) = get_on(
        &mut s,
        b"",
        "X-Forwarded-For: 198.51.100.1\r\nX-Forwarded-Proto: https\r\n",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("xff=198.51.100.1, 127.0.0.2 "), "{body}");
    assert!(body.contains("proto=https"), "{body}");
    // From anyone else they are replaced.
    let mut s = connect_from("127.0.0.1".parse().expect("ip"), edge).await;
    let (_, body) = get_on(
        &mut s,
        b"",
        "X-Forwarded-For: 198.51.100.1\r\nX-Forwarded-Proto: https\r\n",
    )
    .await;
    assert!(body.contains("xff=127.0.0.1 "), "{body}");
    assert!(body.contains("proto=http"), "{body}");
}

#[tokio::test]
async fn each_upstream_connection_names_its_own_client() {
    let backend = echo_backend(ProxyHeader::Always).await;
    let edge = edge(backend, &[], true).await;
    let mut a = connect_from("127.0.0.1".parse().expect("ip"), edge).await;
    let mut b = connect_from("127.0.0.3".parse().expect("ip"), edge).await;
    let a_addr = a.local_addr().expect("addr");
    let b_addr = b.local_addr().expect("addr");
    // Interleaved requests on two client connections: the server is told of each
    // request's own client, so no connection is shared between them.
    for _ in 0..3 {
        let (status, body) = get_on(&mut a, b"", "").await;
        assert_eq!(status, 200, "{body}");
        assert!(body.starts_with(&format!("peer={a_addr} ")), "{body}");
        let (_, body) = get_on(&mut b, b"", "").await;
        assert!(body.starts_with(&format!("peer={b_addr} ")), "{body}");
    }
}

#[tokio::test]
async fn health_checks_start_with_a_local_header_when_the_servers_expect_one() {
    let backend = echo_backend(ProxyHeader::Always).await;
    let (_tx, shutdown) = watch::channel(false);
    let check = |proxy_header| HealthCheck {
        interval: Duration::from_millis(30),
        timeout: Duration::from_millis(500),
        rise: 1,
        fall: 1,
        kind: hastack_proxy::CheckKind::Http,
        proxy_header,
    };
    let mut registry = Registry::default();
    let with = Pool::new("with", &[("b".to_string(), backend)], None, &mut registry);
    let without = Pool::new(
        "without",
        &[("b".to_string(), backend)],
        None,
        &mut registry,
    );
    with.spawn_health_checks(check(true), shutdown.clone());
    without.spawn_health_checks(check(false), shutdown.clone());
    let server = |p: &Arc<Pool>| p.servers().into_iter().next().expect("server");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while server(&without).is_healthy() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a check without the header must fail: the server drops it"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // By now the checks with the LOCAL header have run as many times, all passing.
    assert!(server(&with).is_healthy());
}

/// HAProxy, or a failure that says how to get it.
fn haproxy() -> std::path::PathBuf {
    for p in ["/usr/sbin/haproxy", "/usr/bin/haproxy"] {
        if std::path::Path::new(p).exists() {
            return p.into();
        }
    }
    panic!("this test runs a real HAProxy in front of the proxy: apt-get install haproxy");
}

#[tokio::test]
async fn haproxy_in_front_with_send_proxy_v2_names_the_client() {
    let haproxy = haproxy();
    let backend = echo_backend(ProxyHeader::Never).await;
    let edge = edge(backend, &["127.0.0.1/32"], false).await;
    let port = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("haproxy.cfg");
    std::fs::write(
        &cfg,
        format!(
            "defaults\n  mode http\n  timeout connect 2s\n  timeout client 5s\n  timeout server 5s\n\
             frontend f\n  bind 127.0.0.1:{port}\n  default_backend b\n\
             backend b\n  server edge {edge} send-proxy-v2\n"
        ),
    )
    .expect("write config");
    let mut child = tokio::process::Command::new(haproxy)
        .arg("-db")
        .arg("-f")
        .arg(&cfg)
        .kill_on_drop(true)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start haproxy");
    let front = SocketAddr::from(([127, 0, 0, 1], port));
    // The client comes from 127.0.0.77; HAProxy connects to the edge from 127.0.0.1.
    let mut answer = None;
    for _ in 0..100 {
        let sock = TcpSocket::new_v4().expect("socket");
        sock.bind("127.0.0.77:0".parse().expect("addr"))
            .expect("bind source");
        if let Ok(mut s) = sock.connect(front).await {
            answer = Some(get_on(&mut s, b"", "Connection: close\r\n").await);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.start_kill();
    let (status, body) = answer.expect("HAProxy listened");
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("xff=127.0.0.77 "),
        "the client HAProxy named is the client: {body}"
    );
}
