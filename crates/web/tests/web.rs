//! The web node's layers on real sockets, in front of the real app (its axum router over
//! SQLite, served as the app node serves it): precompressed and compressed answers, the
//! traversal catalogue, the microcache's coalescing, stale-if-error and purge.
//!
//! The app's requests are counted where the app accepts them, so "one request
//! upstream" is what the app saw.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use prometheus_client::registry::Registry;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use hastack_config::{CacheSettings, WebSettings};
use hastack_proxy::{Chain, Pool, PoolOptions, Proxy, ProxyOptions};
use hastack_web::{SiteOptions, StaticSite};

/// The real app on a port from the OS; `delay` holds each request before the app
/// sees it (so misses overlap); `hits` counts what reached it; `stop` ends it.
struct App {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    stop: watch::Sender<bool>,
    _dir: tempfile::TempDir,
}

async fn app(delay: Duration) -> App {
    let dir = tempfile::tempdir().expect("tempdir");
    let limits = hastack_app::store::Limits {
        query_timeout: Duration::from_secs(5),
        max_replica_lag: Duration::from_secs(5),
        failover_wait: Duration::from_millis(300),
    };
    let store = hastack_app::store::Store::sqlite(
        &dir.path().join("app.sqlite"),
        limits,
        hastack_app::AppMetrics::default(),
    )
    .await
    .expect("sqlite");
    store.migrate().await.expect("migrate");
    let router = hastack_app::router(store, "app1");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let hits = Arc::new(AtomicUsize::new(0));
    let (stop, rx) = watch::channel(false);
    let counted = hits.clone();
    tokio::spawn(hastack_runtime::serve(
        listener,
        None,
        move |req: hyper::Request<hyper::body::Incoming>, _peer| {
            let mut app = router.clone();
            let counted = counted.clone();
            async move {
                if req.uri().path() != "/healthz" {
                    counted.fetch_add(1, Ordering::SeqCst);
                }
                tokio::time::sleep(delay).await;
                match tower::Service::call(&mut app, req.map(axum::body::Body::new)).await {
                    Ok(resp) => resp,
                    Err(never) => match never {},
                }
            }
        },
        rx,
    ));
    App {
        addr,
        hits,
        stop,
        _dir: dir,
    }
}

/// A web node's chain (the layers `[web]` asks for, as `hastack node` builds them) in
/// front of `app`, on a port from the OS; its address and microcache.
async fn web(
    settings: WebSettings,
    site: StaticSite,
    app: SocketAddr,
) -> (SocketAddr, Option<Arc<hastack_web::cache::Microcache>>) {
    let mut registry = Registry::default();
    let pool = Pool::with_options(
        "app",
        &[("app1".to_string(), app)],
        None,
        PoolOptions::default(),
        &mut registry,
    );
    let proxy = Proxy::new(ProxyOptions::new("web1"), pool, &mut registry);
    let hastack_web::Layers { layers, cache, .. } =
        hastack_web::layers(&settings, site, &proxy, &mut registry).expect("layers");
    let chain = Chain::new(proxy, layers);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let _keep = tx;
        hastack_runtime::serve_with(
            listener,
            hastack_runtime::Serving::default(),
            move |req, peer| {
                let chain = chain.clone();
                async move { chain.handle(req, peer, None).await }
            },
            rx,
        )
        .await;
    });
    (addr, cache)
}

struct Got {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Got {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

/// One request on a new connection.
async fn request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> Got {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .expect("handshake");
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "www.foobar.com");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = send
        .send_request(req.body(Empty::<Bytes>::new()).expect("request"))
        .await
        .expect("response");
    let (parts, body) = resp.into_parts();
    Got {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.expect("body").to_bytes(),
    }
}

async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Got {
    request(addr, "GET", path, headers).await
}

fn gunzip(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(b)
        .read_to_end(&mut out)
        .expect("gunzip");
    out
}

fn brotli(b: &[u8]) -> Vec<u8> {
    let mut w = brotli::CompressorWriter::new(Vec::new(), 4096, 5, 22);
    w.write_all(b).expect("brotli");
    w.into_inner()
}

fn gzip(b: &[u8]) -> Vec<u8> {
    let mut w = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    w.write_all(b).expect("gzip");
    w.finish().expect("gzip")
}

async fn post(app: SocketAddr, n: usize) {
    for i in 0..n {
        let stream = TcpStream::connect(app).await.expect("connect");
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .expect("handshake");
        tokio::spawn(conn);
        let doc = format!(r#"{{"author":"t","body":"post number {i} with some words"}}"#);
        let req = Request::post("/api/posts")
            .header("host", "app")
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(Bytes::from(doc)))
            .expect("request");
        let resp = send.send_request(req).await.expect("post");
        assert_eq!(resp.status(), StatusCode::CREATED);
    }
}

fn cached(ttl_ms: u64) -> WebSettings {
    WebSettings {
        cache: CacheSettings {
            ttl: Duration::from_millis(ttl_ms),
            ..CacheSettings::default()
        },
        ..WebSettings::default()
    }
}

#[tokio::test]
async fn precompressed_siblings_go_to_clients_that_accept_them() {
    let app = app(Duration::ZERO).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let css = "body { color: #123456; margin: 0 auto; }\n".repeat(200);
    std::fs::write(dir.path().join("a.css"), &css).expect("write");
    // Siblings as a build step makes them: their bytes are what is sent.
    let br = brotli(css.as_bytes());
    let gz = gzip(css.as_bytes());
    std::fs::write(dir.path().join("a.css.br"), &br).expect("write");
    std::fs::write(dir.path().join("a.css.gz"), &gz).expect("write");
    let site = StaticSite::load(dir.path(), &SiteOptions::default()).expect("site");
    let (web, _) = web(WebSettings::default(), site, app.addr).await;

    let r = get(
        web,
        "/a.css",
        &[("accept-encoding", "gzip, deflate, br, zstd")],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("content-encoding"), "br");
    assert_eq!(r.header("vary"), "Accept-Encoding");
    assert_eq!(r.body, br, "the .br sibling as it is on disk");
    let r = get(web, "/a.css", &[("accept-encoding", "gzip")]).await;
    assert_eq!(r.header("content-encoding"), "gzip");
    assert_eq!(r.body, gz);
    // No .zst sibling: one is made at start, and a client that only takes zstd gets it.
    let r = get(web, "/a.css", &[("accept-encoding", "zstd")]).await;
    assert_eq!(r.header("content-encoding"), "zstd");
    assert_eq!(
        zstd::decode_all(&r.body[..]).expect("unzstd"),
        css.as_bytes()
    );
    let plain = get(web, "/a.css", &[]).await;
    assert_eq!(plain.header("content-encoding"), "");
    assert_eq!(plain.body, css.as_bytes());
    // Each representation has its own strong ETag, and a 304 for its own.
    let etag = r.header("etag").to_string();
    assert_ne!(etag, plain.header("etag"));
    let again = get(
        web,
        "/a.css",
        &[("accept-encoding", "zstd"), ("if-none-match", &etag)],
    )
    .await;
    assert_eq!(again.status, StatusCode::NOT_MODIFIED);
    // A range applies to the representation sent.
    let part = get(
        web,
        "/a.css",
        &[("accept-encoding", "gzip"), ("range", "bytes=0-9")],
    )
    .await;
    assert_eq!(part.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(part.body, gz[..10]);
    let _ = app.stop.send(true);
}

#[tokio::test]
async fn large_files_go_out_whole_with_sendfile_on_a_keep_alive_connection() {
    let app = app(Duration::ZERO).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let big: Vec<u8> = (0..(1 << 20) + 3)
        .map(|i: usize| (i * 31 % 253) as u8)
        .collect();
    std::fs::write(dir.path().join("big.bin"), &big).expect("write");
    let site = StaticSite::load(dir.path(), &SiteOptions::default()).expect("site");
    let (web, _) = web(WebSettings::default(), site, app.addr).await;

    // Three answers in a row on one connection: each head must come before its body
    // and after the previous body, whatever the kernel took at a time.
    let stream = TcpStream::connect(web).await.expect("connect");
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .expect("handshake");
    tokio::spawn(conn);
    let before = hastack_runtime::zero_copy::bytes_sent();
    for range in [None, Some((100_000, 899_999)), None] {
        let mut req = Request::builder()
            .uri("/big.bin")
            .header("host", "www.foobar.com");
        if let Some((a, b)) = range {
            req = req.header("range", format!("bytes={a}-{b}"));
        }
        let resp = send
            .send_request(req.body(Empty::<Bytes>::new()).expect("request"))
            .await
            .expect("response");
        let status = resp.status();
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        match range {
            None => {
                assert_eq!(status, StatusCode::OK);
                assert!(body == big, "the whole file, byte for byte");
            }
            Some((a, b)) => {
                assert_eq!(status, StatusCode::PARTIAL_CONTENT);
                assert!(body == big[a..=b], "the range, byte for byte");
            }
        }
    }
    assert!(
        hastack_runtime::zero_copy::bytes_sent() - before >= 2 * big.len() as u64 + 800_000,
        "the bodies left with sendfile(2)"
    );
    let _ = app.stop.send(true);
}

#[tokio::test]
async fn the_app_tiers_answers_are_compressed_on_the_fly_with_vary() {
    let app = app(Duration::ZERO).await;
    post(app.addr, 30).await;
    let (web, _) = web(WebSettings::default(), StaticSite::default(), app.addr).await;
    let plain = get(web, "/api/posts?limit=30", &[]).await;
    assert_eq!(plain.status, StatusCode::OK);
    assert!(plain.body.len() > 1024, "{} bytes", plain.body.len());
    assert_eq!(plain.header("vary"), "Accept-Encoding");
    let packed = get(web, "/api/posts?limit=30", &[("accept-encoding", "gzip")]).await;
    assert_eq!(packed.status, StatusCode::OK);
    assert_eq!(packed.header("content-encoding"), "gzip");
    assert!(packed.body.len() < plain.body.len() / 2);
    assert_eq!(gunzip(&packed.body), plain.body);
    assert_eq!(packed.header("x-served-by"), "web1, app1");
    let _ = app.stop.send(true);
}

/// Sends `raw` as the request line's target on a raw socket (no client normalises
/// it) and returns the status and the whole answer.
fn raw_get(addr: SocketAddr, target: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    write!(
        s,
        "GET {target} HTTP/1.1\r\nHost: www.foobar.com\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, text)
}

#[tokio::test]
async fn no_path_reaches_a_file_outside_the_document_root() {
    let app = app(Duration::ZERO).await;
    let top = tempfile::tempdir().expect("tempdir");
    let root = top.path().join("root");
    let outside = top.path().join("outside");
    std::fs::create_dir_all(root.join("static")).expect("mkdir");
    std::fs::create_dir_all(&outside).expect("mkdir");
    std::fs::write(root.join("static/ok.txt"), "fine").expect("write");
    std::fs::write(outside.join("secret.txt"), "TOPSECRET").expect("write");
    // Symlinks out of the root, to a file and to a directory.
    std::os::unix::fs::symlink(outside.join("secret.txt"), root.join("link.txt")).expect("ln");
    std::os::unix::fs::symlink(&outside, root.join("linkdir")).expect("ln");
    let site = StaticSite::load(&root, &SiteOptions::default()).expect("site");
    let (web, _) = web(WebSettings::default(), site, app.addr).await;
    let raw = |target: &'static str| async move {
        tokio::task::spawn_blocking(move || raw_get(web, target))
            .await
            .expect("task")
    };
    assert_eq!(raw("/static/ok.txt").await.0, 200);

    let catalogue = [
        "/../outside/secret.txt",
        "/static/../../outside/secret.txt",
        "/%2e%2e/outside/secret.txt",
        "/%2E%2E%2Foutside%2Fsecret.txt",
        "/static/%2e%2e%2f%2e%2e%2foutside/secret.txt",
        "/static/..%2f..%2foutside/secret.txt",
        "/.%2e/outside/secret.txt",
        "/%252e%252e/outside/secret.txt",
        "/%c0%ae%c0%ae/outside/secret.txt",
        "/..%5coutside%5csecret.txt",
        "/..\\outside\\secret.txt",
        "/static/ok.txt%00.html",
        "/static/ok.txt%00",
        "/link.txt",
        "/linkdir/secret.txt",
        "/linkdir/",
        "//etc/passwd",
        "/../../../../../../etc/passwd",
        "/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "/static/./ok.txt/../../outside/secret.txt",
        "/./link.txt",
    ];
    for target in catalogue {
        let (status, text) = raw(target).await;
        assert!(status == 400 || status == 404, "{target}: {status}\n{text}");
        assert!(
            !text.contains("TOPSECRET") && !text.contains("root:x:0"),
            "{target} leaked a file:\n{text}"
        );
    }
    let _ = app.stop.send(true);
}

#[tokio::test]
async fn a_hundred_concurrent_misses_send_one_request_to_the_app() {
    // The app takes 300 ms, so all hundred requests arrive while the first is upstream.
    let app = app(Duration::from_millis(300)).await;
    post(app.addr, 3).await;
    let before = app.hits.load(Ordering::SeqCst);
    let (web, cache) = web(cached(5_000), StaticSite::default(), app.addr).await;
    let cache = cache.expect("the cache is on");
    let gets = (0..100).map(|_| tokio::spawn(get(web, "/api/posts", &[])));
    let mut outcomes = std::collections::HashMap::<String, usize>::new();
    let mut bodies = std::collections::HashSet::new();
    for g in gets {
        let r = g.await.expect("task");
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        *outcomes.entry(r.header("x-cache").to_string()).or_default() += 1;
        bodies.insert(r.body);
    }
    assert_eq!(
        app.hits.load(Ordering::SeqCst) - before,
        1,
        "one request reached the app; the cache said {outcomes:?}"
    );
    assert_eq!(outcomes.get("MISS"), Some(&1), "{outcomes:?}");
    assert_eq!(outcomes.get("HIT"), Some(&99), "{outcomes:?}");
    assert_eq!(bodies.len(), 1, "every client got the same page");

    // A HEAD uses the entry a GET filled, and never fills one itself.
    let head = request(web, "HEAD", "/api/posts", &[]).await;
    assert_eq!((head.header("x-cache"), head.body.len()), ("HIT", 0));
    let r = request(web, "HEAD", "/api/posts?limit=2", &[]).await;
    assert_eq!(r.header("x-cache"), "MISS");
    let r = get(web, "/api/posts?limit=2", &[]).await;
    assert_eq!(r.header("x-cache"), "MISS", "the HEAD stored nothing");
    assert!(r.body.len() > 2, "a GET after a HEAD gets the page");
    let before = before + 2;

    // Personal requests bypass it both ways.
    let mine = get(web, "/api/posts", &[("cookie", "session=1")]).await;
    assert_eq!(mine.header("x-cache"), "");
    assert_eq!(app.hits.load(Ordering::SeqCst) - before, 2);

    // A purge drops it: the next request goes upstream again.
    assert_eq!(cache.purge("/api/"), 2, "both pages under /api/");
    let r = get(web, "/api/posts", &[]).await;
    assert_eq!(r.header("x-cache"), "MISS");
    assert_eq!(app.hits.load(Ordering::SeqCst) - before, 3);
    let _ = app.stop.send(true);
}

#[tokio::test]
async fn with_the_app_gone_the_last_good_page_is_served_stale() {
    let app = app(Duration::ZERO).await;
    post(app.addr, 2).await;
    let mut settings = cached(200);
    settings.cache.stale_while_revalidate = Duration::ZERO;
    settings.cache.stale_if_error = Duration::from_secs(60);
    let (web, _) = web(settings, StaticSite::default(), app.addr).await;
    let first = get(web, "/api/posts", &[]).await;
    assert_eq!(
        (first.status, first.header("x-cache")),
        (StatusCode::OK, "MISS")
    );
    let hit = get(web, "/api/posts", &[]).await;
    assert_eq!(hit.header("x-cache"), "HIT");
    assert_eq!(
        hit.header("x-served-by"),
        "web1",
        "a hit never reached the app"
    );

    // Every app node gone, the entry stale: the last good page, marked STALE. (The
    // 200 ms of freshness running out is what is under test: time is the event.)
    let _ = app.stop.send(true);
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..3 {
        let r = get(web, "/api/posts", &[]).await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        assert_eq!(r.header("x-cache"), "STALE");
        assert_eq!(r.body, first.body);
    }
    // A page never fetched has nothing to fall back on.
    let none = get(web, "/api/posts?limit=1", &[]).await;
    assert!(none.status.is_server_error(), "{}", none.status);
}

#[tokio::test]
async fn a_stale_page_is_served_at_once_while_one_request_refreshes_it() {
    let app = app(Duration::from_millis(200)).await;
    post(app.addr, 1).await;
    let mut settings = cached(600);
    settings.cache.stale_while_revalidate = Duration::from_secs(30);
    let (web, _) = web(settings, StaticSite::default(), app.addr).await;
    assert_eq!(get(web, "/api/posts", &[]).await.header("x-cache"), "MISS");
    let before = app.hits.load(Ordering::SeqCst);
    // Past the 600 ms of freshness (time is the event under test).
    tokio::time::sleep(Duration::from_millis(700)).await;
    let r = get(web, "/api/posts", &[]).await;
    assert_eq!(r.header("x-cache"), "UPDATING");
    let r2 = get(web, "/api/posts", &[]).await;
    assert_eq!(r2.header("x-cache"), "UPDATING", "one refresh at a time");
    // Until the refresh lands every request is served stale; then the new page hits.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let r = get(web, "/api/posts", &[]).await;
        if r.header("x-cache") == "HIT" {
            break;
        }
        assert_eq!(r.header("x-cache"), "UPDATING");
        assert!(
            tokio::time::Instant::now() < deadline,
            "the refresh never landed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(app.hits.load(Ordering::SeqCst) - before, 1, "one refresh");
    let _ = app.stop.send(true);
}
