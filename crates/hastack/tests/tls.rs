//! HTTPS: on the VIP (terminated by the lbs, or passed through to the web tier), with
//! HTTP/2, SNI, the internal CA, mTLS between tiers, certificates renewed on disk, and a
//! failover — checked with real clients (curl, openssl) against the real binary.

mod common;

use std::net::IpAddr;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{Options, Stack, eventually, http};
use hastack_tls::pki::{Identity, Pki, Usage};

/// Runs curl; fails with what to install when it is missing.
fn curl(args: &[&str]) -> Output {
    Command::new("curl")
        .args(["-sS", "--max-time", "5"])
        .args(args)
        .output()
        .expect("running curl (apt-get install curl)")
}

/// `curl -i` of an HTTPS URL for `name` on `addr`, verified against `ca`:
/// (status, HTTP version, headers and body) or curl's error.
fn https(
    name: &str,
    addr: std::net::SocketAddr,
    ca: &Path,
    path: &str,
    extra: &[&str],
) -> Result<(u16, String, String), String> {
    let resolve = format!("{name}:{}:{}", addr.port(), addr.ip());
    let url = format!("https://{name}:{}{path}", addr.port());
    let ca = ca.display().to_string();
    let mut args = vec![
        "-i",
        "--cacert",
        &ca,
        "--resolve",
        &resolve,
        "-w",
        "\n%{http_code} %{http_version}",
    ];
    args.extend_from_slice(extra);
    args.push(&url);
    let out = curl(&args);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(format!(
            "{} {}",
            String::from_utf8_lossy(&out.stderr).trim(),
            text
        ));
    }
    let (body, last) = text.rsplit_once('\n').ok_or("no curl trailer")?;
    let (code, version) = last.split_once(' ').ok_or("bad curl trailer")?;
    Ok((
        code.parse().map_err(|_| "bad code")?,
        version.to_string(),
        body.to_string(),
    ))
}

/// The serial of the certificate a TLS server at `addr` shows for `name`
/// (`openssl s_client`), presenting `client` (cert, key) when given.
fn served_serial(addr: std::net::SocketAddr, name: &str, client: Option<(&Path, &Path)>) -> String {
    let mut cmd = Command::new("openssl");
    cmd.args([
        "s_client",
        "-connect",
        &addr.to_string(),
        "-servername",
        name,
    ]);
    if let Some((c, k)) = client {
        cmd.arg("-cert").arg(c).arg("-key").arg(k);
    }
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .expect("running openssl (apt-get install openssl)");
    let pem = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut x509 = Command::new("openssl")
        .args(["x509", "-noout", "-serial"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("openssl x509");
    use std::io::Write;
    x509.stdin
        .take()
        .expect("stdin")
        .write_all(pem.as_bytes())
        .expect("write");
    let out = x509.wait_with_output().expect("openssl x509");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn metrics(stack: &Stack, node: &str) -> String {
    http(stack.admin(node), "GET", "/metrics", &[], "")
        .expect("metrics")
        .body
}

/// The site's own certificates (as from a public CA): one for www, one for api.
fn own_certificates(dir: &Path) -> Pki {
    let pki = Pki::new(dir);
    pki.ensure(
        &[
            Identity::site("www.foobar.com", IpAddr::from([127, 0, 0, 1])),
            Identity {
                stem: "api".into(),
                dns: vec!["api.foobar.com".into()],
                ips: vec![],
                usage: Usage::Server,
            },
        ],
        false,
    )
    .expect("own certificates");
    pki
}

#[test]
fn https_on_the_vip_with_sni_h2_mtls_between_tiers_renewal_and_failover() {
    let own_dir = tempfile::tempdir().expect("tempdir");
    let own = own_certificates(own_dir.path());
    let stack = Stack::up_edited(Options { sqlite: true }, |t| {
        format!(
            "{t}\n[[tls.certificate]]\ncert = \"{}\"\nkey = \"{}\"\n\n[[tls.certificate]]\ncert = \"{}\"\nkey = \"{}\"\n",
            own.cert("api").display(),
            own.key("api").display(),
            own.cert("site").display(),
            own.key("site").display(),
        )
    });
    let vip = stack.vip_https();
    let ca = own.ca_cert();

    // HTTP/2 by ALPN, verified for the site name; the certificate for the name is the
    // default even though it is listed second.
    let (status, version, head) =
        https("www.foobar.com", vip, &ca, "/", &[]).expect("HTTPS on the VIP");
    assert_eq!((status, version.as_str()), (200, "2"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("x-served-by: lb1, web"),
        "{head}"
    );
    let (_, version, _) =
        https("www.foobar.com", vip, &ca, "/", &["--http1.1"]).expect("HTTP/1.1 over TLS");
    assert_eq!(version, "1.1");
    // SNI picks the other certificate for the other name (curl verifies the name).
    let (status, _, _) = https("api.foobar.com", vip, &ca, "/", &[]).expect("SNI api");
    assert_eq!(status, 200);
    assert_ne!(
        served_serial(vip, "api.foobar.com", None),
        served_serial(vip, "www.foobar.com", None)
    );
    // A write and a read over HTTP/2, through every tier over mTLS.
    let (status, _, head) = https(
        "www.foobar.com",
        vip,
        &ca,
        "/api/posts",
        &[
            "-H",
            "content-type: application/json",
            "--data",
            r#"{"author":"tls","body":"over h2"}"#,
        ],
    )
    .expect("POST over h2");
    assert_eq!(status, 201, "{head}");
    let (_, _, body) = https("www.foobar.com", vip, &ca, "/api/posts", &[]).expect("GET");
    assert!(body.contains("over h2"), "{body}");

    // Between tiers: TLS only, and only with a certificate of the internal CA.
    let state = stack.state_dir();
    let internal_ca = stack.ca();
    let (lb_crt, lb_key) = (
        state.join("pki/nodes/lb1.crt"),
        state.join("pki/nodes/lb1.key"),
    );
    for (node, host, port) in [("web1", 21, stack.web_port), ("app1", 31, stack.app_port)] {
        let addr = std::net::SocketAddr::from((stack.addr(host), port));
        let plain = http(addr, "GET", "/healthz", &[], "").expect("an answer to plain HTTP");
        assert_eq!(plain.status, 400, "{node}: plain HTTP");
        assert!(
            plain.body.contains("speaks HTTPS"),
            "{node}: {}",
            plain.body
        );
        let bare = https(node, addr, &internal_ca, "/healthz", &[]);
        assert!(
            bare.is_err(),
            "{node} served a TLS client without a certificate"
        );
        let (crt, key) = (lb_crt.display().to_string(), lb_key.display().to_string());
        let with = https(
            node,
            addr,
            &internal_ca,
            "/healthz",
            &["--cert", &crt, "--key", &key],
        );
        assert!(
            with.is_ok(),
            "{node} refused the CA's client certificate: {with:?}"
        );
    }
    // Sessions resume: one curl, three connections, the later ones resumed (TLS 1.3
    // tickets).
    let url = format!("https://www.foobar.com:{}/", vip.port());
    let resolve = format!("www.foobar.com:{}:{}", vip.port(), vip.ip());
    let ca_s = ca.display().to_string();
    let out = curl(&[
        "--http1.1",
        "-H",
        "connection: close",
        "-o",
        "/dev/null",
        "-o",
        "/dev/null",
        "-o",
        "/dev/null",
        "--cacert",
        &ca_s,
        "--resolve",
        &resolve,
        &url,
        &url,
        &url,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m = metrics(&stack, "lb1");
    assert!(
        m.contains("side=\"server\",protocol=\"TLSv1.3\",alpn=\"http/1.1\",resumed=\"true\""),
        "no resumed session: {m}"
    );
    let m = metrics(&stack, "web1");
    assert!(m.contains("cause=\"plain_http\""), "{m}");
    assert!(m.contains("cause=\"no_client_certificate\""), "{m}");
    let m = metrics(&stack, "lb1");
    assert!(
        m.contains("hastack_tls_handshakes_total{side=\"server\",protocol=\"TLSv1.3\",alpn=\"h2\""),
        "{m}"
    );
    assert!(m.contains("side=\"client\""), "lb→web handshakes: {m}");

    // The site's certificate renewed on disk is served without a restart.
    let before = served_serial(vip, "www.foobar.com", None);
    own.ensure(
        &[Identity::site(
            "www.foobar.com",
            IpAddr::from([127, 0, 0, 1]),
        )],
        true,
    )
    .expect("renew the site's certificate");
    eventually(
        "the renewed certificate on the VIP",
        Duration::from_secs(5),
        || (served_serial(vip, "www.foobar.com", None) != before).then_some(()),
    );
    https("www.foobar.com", vip, &ca, "/", &[]).expect("HTTPS with the renewed certificate");
    // The internal CA's certificates too, with every tier running on.
    let web1 = std::net::SocketAddr::from((stack.addr(21), stack.web_port));
    let before = served_serial(web1, "web1", Some((&lb_crt, &lb_key)));
    let out = stack.ctl(&["pki", "renew", "--force"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually(
        "web1 serving its renewed certificate",
        Duration::from_secs(5),
        || (served_serial(web1, "web1", Some((&lb_crt, &lb_key))) != before).then_some(()),
    );
    let (status, _, _) = https("www.foobar.com", vip, &ca, "/api/posts", &[])
        .expect("the site after the internal certificates were renewed");
    assert_eq!(status, 200);

    // A failover keeps HTTPS serving within the bound HTTP has.
    stack.ctl_ok(&["kill", "lb1"]);
    let killed = Instant::now();
    let head = eventually("HTTPS from lb2", Duration::from_secs(3), || {
        https(
            "www.foobar.com",
            vip,
            &ca,
            "/",
            &["--connect-timeout", "0.2"],
        )
        .ok()
        .filter(|(s, _, _)| *s == 200)
        .map(|(_, _, h)| h)
    });
    let took = killed.elapsed();
    assert!(
        head.to_ascii_lowercase().contains("x-served-by: lb2"),
        "{head}"
    );
    assert!(took < Duration::from_secs(1), "HTTPS back after {took:?}");
}

#[test]
fn passthrough_routes_tls_by_sni_to_the_web_tier_which_terminates_it() {
    let stack = Stack::up_edited(Options { sqlite: true }, |t| {
        format!("{t}\n[tls]\nmode = \"passthrough\"\n")
    });
    let vip = stack.vip_https();
    let ca = stack.ca();
    // The web node terminated it (no lb in the path), for the name the client sent.
    let (status, version, head) =
        https("www.foobar.com", vip, &ca, "/", &[]).expect("HTTPS through the VIP");
    assert_eq!((status, version.as_str()), (200, "2"), "{head}");
    let served_by = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("x-served-by: ")
                .map(str::to_owned)
        })
        .expect("x-served-by");
    assert!(served_by.starts_with("web"), "{served_by}");
    // The web nodes' HTTPS port takes only what the lbs relay (a PROXY v2 header with
    // the client's address first): a client connecting to it directly is dropped.
    let web1 = std::net::SocketAddr::from((stack.addr(21), stack.web_https_port));
    assert!(
        https("www.foobar.com", web1, &ca, "/", &[]).is_err(),
        "web1's passthrough port served a client without the lb's PROXY header"
    );
    // A name the site does not serve is not passed on.
    assert!(
        https("evil.example.com", vip, &ca, "/", &["-k"]).is_err(),
        "an unknown name was passed through"
    );
    let m = metrics(&stack, "lb1");
    assert!(
        m.contains("hastack_passthrough_connections_total{outcome=\"relayed\"}"),
        "{m}"
    );
    assert!(m.contains("outcome=\"unknown_name\""), "{m}");
    // Plain HTTP on the VIP still goes through the lb.
    let r = http(stack.vip(), "GET", "/", &[], "").expect("HTTP");
    assert!(
        r.header("x-served-by").is_some_and(|v| v.starts_with("lb")),
        "{r:?}"
    );
}

#[test]
fn redirect_and_hsts_when_asked() {
    let stack = Stack::up_edited(Options { sqlite: true }, |t| {
        format!("{t}\n[tls]\nredirect_http = true\nhsts = true\n")
    });
    let r = http(stack.vip(), "GET", "/about?x=1", &[], "").expect("HTTP");
    assert_eq!(r.status, 308);
    assert_eq!(
        r.header("location"),
        Some(format!("https://www.foobar.com:{}/about?x=1", stack.https_port).as_str())
    );
    let (_, _, head) =
        https("www.foobar.com", stack.vip_https(), &stack.ca(), "/", &[]).expect("HTTPS");
    assert!(
        head.to_ascii_lowercase()
            .contains("strict-transport-security: max-age=31536000"),
        "{head}"
    );
}

/// A raw HTTP/2 client over TLS, to send what a well-behaved client never would.
#[allow(unreachable_pub)]
mod h2raw {
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpStream};
    use std::path::Path;
    use std::time::Duration;

    use hastack_tls::rustls;

    pub struct Conn(rustls::StreamOwned<rustls::ClientConnection, TcpStream>);

    /// A frame: type, flags, stream, payload.
    pub type Frame = (u8, u8, u32, Vec<u8>);

    pub const DATA: u8 = 0;
    pub const HEADERS: u8 = 1;
    pub const RST_STREAM: u8 = 3;
    pub const GOAWAY: u8 = 7;
    pub const END_STREAM: u8 = 1;
    pub const END_HEADERS: u8 = 4;

    impl Conn {
        pub fn open(addr: SocketAddr, ca: &Path) -> Conn {
            let config = hastack_tls::client_config(ca, None, &[hastack_tls::ALPN_H2])
                .expect("client config");
            let name = "www.foobar.com".try_into().expect("name");
            let conn = rustls::ClientConnection::new(config, name).expect("client");
            let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect");
            tcp.set_read_timeout(Some(Duration::from_secs(3)))
                .expect("timeout");
            let mut c = Conn(rustls::StreamOwned::new(conn, tcp));
            c.0.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
                .expect("preface");
            c.frame(4, 0, 0, &[]); // SETTINGS
            assert_eq!(
                c.0.conn.alpn_protocol(),
                Some(&b"h2"[..]),
                "h2 was not negotiated"
            );
            c
        }

        pub fn frame(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
            let len = payload.len() as u32;
            let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
            f.extend_from_slice(&stream.to_be_bytes());
            f.extend_from_slice(payload);
            let _ = self.0.write_all(&f);
        }

        /// HEADERS with literal (never indexed) fields.
        pub fn headers(&mut self, stream: u32, fields: &[(&str, &str)], end_stream: bool) {
            let mut block = Vec::new();
            for (k, v) in fields {
                block.push(0x10);
                block.push(k.len() as u8);
                block.extend_from_slice(k.as_bytes());
                block.push(v.len() as u8);
                block.extend_from_slice(v.as_bytes());
            }
            let flags = END_HEADERS | if end_stream { END_STREAM } else { 0 };
            self.frame(HEADERS, flags, stream, &block);
        }

        /// Whether the server has closed the connection: a PING gets no ACK and the
        /// read ends (EOF, reset) instead of timing out, as it would on a live one.
        pub fn closed(&mut self) -> bool {
            self.frame(6, 0, 0, &[0u8; 8]);
            loop {
                let mut head = [0u8; 9];
                if let Err(e) = self.0.read_exact(&mut head) {
                    return !matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    );
                }
                let len = (usize::from(head[0]) << 16)
                    | (usize::from(head[1]) << 8)
                    | usize::from(head[2]);
                let mut payload = vec![0u8; len];
                if self.0.read_exact(&mut payload).is_err() {
                    return true;
                }
                if head[3] == 6 && head[4] & 1 == 1 {
                    return false; // PING ACK: alive
                }
            }
        }

        /// Frames from the server until `done` says so, EOF or a read timeout.
        pub fn read_until(&mut self, mut done: impl FnMut(&Frame) -> bool) -> Vec<Frame> {
            let mut frames = Vec::new();
            loop {
                let mut head = [0u8; 9];
                if self.0.read_exact(&mut head).is_err() {
                    return frames;
                }
                let len = (usize::from(head[0]) << 16)
                    | (usize::from(head[1]) << 8)
                    | usize::from(head[2]);
                let mut payload = vec![0u8; len];
                if self.0.read_exact(&mut payload).is_err() {
                    return frames;
                }
                let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
                let f = (head[3], head[4], stream, payload);
                let stop = done(&f);
                frames.push(f);
                if stop {
                    return frames;
                }
            }
        }
    }

    pub fn get(authority: &str) -> Vec<(&'static str, String)> {
        vec![
            (":method", "GET".into()),
            (":scheme", "https".into()),
            (":path", "/".into()),
            (":authority", authority.into()),
        ]
    }

    pub fn error_code(f: &Frame) -> u32 {
        let p = &f.3;
        match f.0 {
            RST_STREAM if p.len() >= 4 => u32::from_be_bytes([p[0], p[1], p[2], p[3]]),
            GOAWAY if p.len() >= 8 => u32::from_be_bytes([p[4], p[5], p[6], p[7]]),
            _ => 0,
        }
    }
}

#[test]
fn h2_hostile_input_is_refused() {
    use h2raw::*;
    let stack = Stack::up(Options { sqlite: true });
    let (vip, ca) = (stack.vip_https(), stack.ca());
    let fields = |v: &[(&'static str, String)]| -> Vec<(String, String)> {
        v.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
    };
    let send = |c: &mut Conn, stream: u32, f: &[(String, String)], end: bool| {
        let f: Vec<(&str, &str)> = f.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        c.headers(stream, &f, end);
    };
    let refused = |frames: &[Frame], stream: u32| {
        frames
            .iter()
            .any(|f| (f.0 == RST_STREAM && f.2 == stream) || f.0 == GOAWAY)
    };

    // A well-formed request is answered: the raw client itself is sound.
    let mut c = Conn::open(vip, &ca);
    send(&mut c, 1, &fields(&get("www.foobar.com")), true);
    let frames = c.read_until(|f| f.0 == HEADERS && f.2 == 1);
    assert!(
        frames.iter().any(|f| f.0 == HEADERS && f.2 == 1),
        "{frames:?}"
    );
    assert!(!c.closed(), "a live connection must answer a PING");

    // Connection-specific headers, an unknown pseudo-header, a missing :path, an
    // upper-case name: each stream is refused (RFC 9113 §8.2.2, §8.3).
    let mut bad_cases: Vec<(&str, Vec<(String, String)>)> = Vec::new();
    let mut with = fields(&get("www.foobar.com"));
    with.push(("connection".into(), "keep-alive".into()));
    bad_cases.push(("connection header", with));
    let mut with = fields(&get("www.foobar.com"));
    with.push(("transfer-encoding".into(), "chunked".into()));
    bad_cases.push(("transfer-encoding header", with));
    let mut with = fields(&get("www.foobar.com"));
    with.insert(0, (":foo".into(), "bar".into()));
    bad_cases.push(("unknown pseudo-header", with));
    let without_path: Vec<(String, String)> = fields(&get("www.foobar.com"))
        .into_iter()
        .filter(|(k, _)| k != ":path")
        .collect();
    bad_cases.push(("missing :path", without_path));
    let mut with = fields(&get("www.foobar.com"));
    with.push(("X-Upper".into(), "1".into()));
    bad_cases.push(("upper-case name", with));
    for (what, f) in bad_cases {
        let mut c = Conn::open(vip, &ca);
        send(&mut c, 1, &f, true);
        let frames = c.read_until(|f| {
            (f.0 == RST_STREAM && f.2 == 1) || f.0 == GOAWAY || (f.0 == HEADERS && f.2 == 1)
        });
        assert!(refused(&frames, 1), "{what}: not refused: {frames:?}");
        assert!(
            !frames.iter().any(|f| f.0 == HEADERS && f.2 == 1),
            "{what}: answered"
        );
    }

    // A content-length that disagrees with the DATA frames (RFC 9113 §8.1.1).
    let mut c = Conn::open(vip, &ca);
    let mut post = fields(&get("www.foobar.com"));
    post[0].1 = "POST".into();
    post[2].1 = "/api/posts".into();
    post.push(("content-type".into(), "application/json".into()));
    post.push(("content-length".into(), "100".into()));
    send(&mut c, 1, &post, false);
    c.frame(DATA, END_STREAM, 1, br#"{"author":"x","body":"short"}"#);
    let frames = c.read_until(|f| (f.0 == RST_STREAM && f.2 == 1) || f.0 == GOAWAY);
    assert!(refused(&frames, 1), "content-length mismatch: {frames:?}");
    let posts = http(stack.vip(), "GET", "/api/posts", &[], "").expect("posts");
    assert!(
        !posts.body.contains("short"),
        "the mismatched body was stored: {}",
        posts.body
    );

    // Rapid reset (CVE-2023-44487): streams opened and cancelled at once end the
    // connection (GOAWAY ENHANCE_YOUR_CALM) instead of costing the upstreams a request
    // each. The GOAWAY itself may be lost: the server closes with the rest of the flood
    // unread, and the reset that sends can overtake it.
    let upstream_requests = || -> f64 {
        metrics(&stack, "lb1")
            .lines()
            .filter(|l| l.starts_with("hastack_upstream_requests_total"))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
            .sum()
    };
    let before = upstream_requests();
    let mut c = Conn::open(vip, &ca);
    for i in 0..200u32 {
        let id = 1 + 2 * i;
        send(&mut c, id, &fields(&get("www.foobar.com")), true);
        c.frame(RST_STREAM, 0, id, &8u32.to_be_bytes()); // CANCEL
    }
    let frames = c.read_until(|f| f.0 == GOAWAY);
    if let Some(goaway) = frames.iter().find(|f| f.0 == GOAWAY) {
        assert_eq!(error_code(goaway), 0xb, "GOAWAY with ENHANCE_YOUR_CALM");
    }
    assert!(c.closed(), "the connection lived on after a reset flood");
    let forwarded = upstream_requests() - before;
    assert!(
        forwarded < 50.0,
        "{forwarded} of 200 cancelled streams were forwarded upstream"
    );
    // The server itself is fine.
    let mut c = Conn::open(vip, &ca);
    send(&mut c, 1, &fields(&get("www.foobar.com")), true);
    let frames = c.read_until(|f| f.0 == HEADERS && f.2 == 1);
    assert!(
        frames.iter().any(|f| f.0 == HEADERS && f.2 == 1),
        "{frames:?}"
    );
}
