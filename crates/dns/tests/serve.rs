//! The server on real sockets (127.0.0.1, ports from the OS), asked by hickory's
//! client, by hand-made packets, and by `dig` as an operator would.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use hastack_dns::{DnsError, RateLimit, Server, StatsHandle, ZoneSpec};
use hickory_server::net::client::{Client, ClientHandle};
use hickory_server::net::runtime::TokioRuntimeProvider;
use hickory_server::net::tcp::TcpClientStream;
use hickory_server::net::udp::UdpClientStream;
use hickory_server::proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_server::proto::rr::{DNSClass, Name, RData, Record, RecordType};
use prometheus_client::registry::Registry;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::watch;
use tokio::task::JoinHandle;

const SERIAL_TIMEOUT: Duration = Duration::from_secs(5);

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

fn name(s: &str) -> Name {
    Name::from_str(s).expect("name")
}

fn spec() -> ZoneSpec {
    ZoneSpec {
        site: "www.foobar.com".into(),
        vips: vec![ip("127.0.0.100"), ip("127.0.0.101"), ip("fd00::100")],
        nameservers: vec![
            ("dns1".into(), ip("127.0.5.1")),
            ("dns2".into(), ip("127.0.5.2")),
        ],
        ttl: 60,
    }
}

/// A running server.
struct Running {
    udp: SocketAddr,
    tcp: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), DnsError>>,
    stats: StatsHandle,
    registry: Registry,
}

impl Running {
    async fn stop(self) -> StatsHandle {
        self.stop.send_replace(true);
        tokio::time::timeout(Duration::from_secs(2), self.task)
            .await
            .expect("serve returns soon after shutdown")
            .expect("task")
            .expect("serve ends Ok");
        self.stats
    }

    fn metrics(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).expect("encode");
        text
    }
}

async fn start_with(spec: &ZoneSpec, limit: RateLimit) -> Running {
    let mut registry = Registry::default();
    let server = Server::new(spec, limit, &mut registry).expect("server");
    let stats = server.stats_handle();
    let (udp, tcp) = same_port().await;
    let (udp_addr, tcp_addr) = (
        udp.local_addr().expect("addr"),
        tcp.local_addr().expect("addr"),
    );
    let (stop, shutdown) = watch::channel(false);
    let task = tokio::spawn(server.serve_on(udp, tcp, shutdown));
    Running {
        udp: udp_addr,
        tcp: tcp_addr,
        stop,
        task,
        stats,
        registry,
    }
}

/// A UDP socket and a TCP listener on one port the OS gave (as a nameserver has
/// them: `dig` asks `ANY` over TCP on the port it was given).
async fn same_port() -> (UdpSocket, TcpListener) {
    for _ in 0..20 {
        let udp = UdpSocket::bind("127.0.0.1:0").await.expect("udp");
        let addr = udp.local_addr().expect("addr");
        if let Ok(tcp) = TcpListener::bind(addr).await {
            return (udp, tcp);
        }
    }
    panic!("no port free for both UDP and TCP in 20 tries");
}

async fn start() -> Running {
    start_with(&spec(), RateLimit::default()).await
}

async fn udp_client(addr: SocketAddr) -> Client<TokioRuntimeProvider> {
    let stream = UdpClientStream::builder(addr, TokioRuntimeProvider::default())
        .with_timeout(Some(SERIAL_TIMEOUT))
        .build();
    let (client, bg) = Client::<TokioRuntimeProvider>::from_sender(stream);
    tokio::spawn(bg);
    client
}

async fn tcp_client(addr: SocketAddr) -> Client<TokioRuntimeProvider> {
    let (connect, handle) = TcpClientStream::new(
        addr,
        None,
        Some(SERIAL_TIMEOUT),
        TokioRuntimeProvider::default(),
    );
    let stream = connect.await.expect("tcp connect");
    let (client, bg) = Client::<TokioRuntimeProvider>::new(stream, handle);
    tokio::spawn(bg);
    client
}

async fn ask(client: &mut Client<TokioRuntimeProvider>, qname: &str, t: RecordType) -> Message {
    client
        .query(name(qname), DNSClass::IN, t)
        .await
        .expect("an answer")
        .into_message()
}

fn data(records: &[Record]) -> Vec<String> {
    let mut v: Vec<String> = records
        .iter()
        .map(|r| format!("{} {} {}", r.name, r.record_type(), r.data))
        .collect();
    v.sort();
    v
}

/// A query made by hand, without EDNS.
fn query_bytes(id: u16, qname: &str, t: RecordType) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.id = id;
    m.add_query(Query::query(name(qname), t));
    m.to_vec().expect("encode")
}

/// Every datagram that arrives on `sock` within `wait`.
async fn replies(sock: &UdpSocket, wait: Duration) -> Vec<Message> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 65_535];
    let deadline = tokio::time::Instant::now() + wait;
    while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, sock.recv(&mut buf)).await {
        out.push(Message::from_vec(&buf[..n]).expect("a DNS reply"));
    }
    out
}

#[tokio::test]
async fn a_for_www_answers_the_vips_with_aa_and_no_recursion() {
    let s = start().await;
    let mut c = udp_client(s.udp).await;
    let m = ask(&mut c, "www.foobar.com.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.metadata.authoritative, "AA set");
    assert!(!m.metadata.recursion_available, "RA clear");
    assert_eq!(
        data(&m.answers),
        [
            "www.foobar.com. A 127.0.0.100",
            "www.foobar.com. A 127.0.0.101"
        ]
    );
    assert!(m.answers.iter().all(|r| r.ttl == 60));
    let m = ask(&mut c, "WWW.FooBar.com.", RecordType::AAAA).await;
    assert_eq!(data(&m.answers), ["www.foobar.com. AAAA fd00::100"]);
    assert!(m.metadata.authoritative);
    let stats = s.stop().await.snapshot();
    assert_eq!(stats.answered, 2);
    assert_eq!(stats.zone, "foobar.com.");
}

#[tokio::test]
async fn the_apex_has_the_soa_and_the_ns_with_their_glue() {
    let s = start().await;
    let serial = s.stats.snapshot().serial;
    let mut c = udp_client(s.udp).await;
    let m = ask(&mut c, "foobar.com.", RecordType::SOA).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.metadata.authoritative);
    let [soa] = m.answers.as_slice() else {
        panic!("one SOA: {:?}", m.answers);
    };
    let RData::SOA(soa) = &soa.data else {
        panic!("an SOA: {soa}");
    };
    assert_eq!(soa.mname, name("dns1.foobar.com."));
    assert_eq!(soa.rname, name("hostmaster.foobar.com."));
    assert_eq!(soa.serial, serial);

    let m = ask(&mut c, "foobar.com.", RecordType::NS).await;
    assert!(m.metadata.authoritative);
    assert_eq!(
        data(&m.answers),
        [
            "foobar.com. NS dns1.foobar.com.",
            "foobar.com. NS dns2.foobar.com."
        ]
    );
    assert_eq!(
        data(&m.additionals),
        [
            "dns1.foobar.com. A 127.0.5.1",
            "dns2.foobar.com. A 127.0.5.2"
        ],
        "glue"
    );
    let m = ask(&mut c, "dns2.foobar.com.", RecordType::A).await;
    assert_eq!(data(&m.answers), ["dns2.foobar.com. A 127.0.5.2"]);
    s.stop().await;
}

#[tokio::test]
async fn a_missing_name_is_nxdomain_with_the_soa() {
    let s = start().await;
    let mut c = udp_client(s.udp).await;
    let m = ask(&mut c, "nope.foobar.com.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert!(m.metadata.authoritative);
    assert!(m.answers.is_empty());
    assert!(
        m.authorities
            .iter()
            .any(|r| r.record_type() == RecordType::SOA && r.name == name("foobar.com.")),
        "SOA in authority: {:?}",
        m.authorities
    );
    let stats = s.stop().await.snapshot();
    assert_eq!(stats.nxdomain, 1);
}

#[tokio::test]
async fn a_name_with_another_type_is_nodata_with_the_soa() {
    let s = start().await;
    let mut c = udp_client(s.udp).await;
    let m = ask(&mut c, "www.foobar.com.", RecordType::MX).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.metadata.authoritative);
    assert!(m.answers.is_empty(), "{:?}", m.answers);
    assert!(
        m.authorities
            .iter()
            .any(|r| r.record_type() == RecordType::SOA),
        "SOA in authority: {:?}",
        m.authorities
    );
    s.stop().await;
}

#[tokio::test]
async fn names_outside_the_zone_are_refused() {
    let s = start().await;
    let mut c = udp_client(s.udp).await;
    for q in ["www.example.org.", "com.", "."] {
        let m = ask(&mut c, q, RecordType::A).await;
        assert_eq!(m.metadata.response_code, ResponseCode::Refused, "{q}");
        assert!(m.answers.is_empty());
        assert!(!m.metadata.recursion_available);
    }
    let stats = s.stop().await.snapshot();
    assert_eq!((stats.refused, stats.any_refused), (3, 0));
}

#[tokio::test]
async fn any_is_refused() {
    let s = start().await;
    let mut c = udp_client(s.udp).await;
    let m = ask(&mut c, "www.foobar.com.", RecordType::ANY).await;
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    assert!(m.answers.is_empty());
    // Over TCP too.
    let mut t = tcp_client(s.tcp).await;
    let m = ask(&mut t, "foobar.com.", RecordType::ANY).await;
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    assert!(
        s.metrics().contains("hastack_dns_any_refused_total 2"),
        "{}",
        s.metrics()
    );
    let stats = s.stop().await.snapshot();
    assert_eq!((stats.refused, stats.any_refused), (2, 2));
}

#[tokio::test]
async fn other_opcodes_are_notimp_and_other_edns_versions_badvers() {
    let s = start().await;
    let sock = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    sock.connect(s.udp).await.expect("connect");
    for (id, op) in [
        (1u16, OpCode::Update),
        (2, OpCode::Notify),
        (3, OpCode::Status),
    ] {
        let mut m = Message::query();
        m.metadata.id = id;
        m.metadata.op_code = op;
        m.add_query(Query::query(name("foobar.com."), RecordType::SOA));
        sock.send(&m.to_vec().expect("encode")).await.expect("send");
    }
    let mut m = Message::query();
    m.metadata.id = 4;
    m.add_query(Query::query(name("www.foobar.com."), RecordType::A));
    let mut edns = Edns::new();
    edns.set_version(1).set_max_payload(1232);
    m.set_edns(edns);
    sock.send(&m.to_vec().expect("encode")).await.expect("send");
    let mut got = replies(&sock, Duration::from_millis(500)).await;
    got.sort_by_key(|m| m.metadata.id);
    // By number: 16 is both BADVERS and BADSIG, and hickory decodes it as BADSIG.
    let codes: Vec<(u16, u16)> = got
        .iter()
        .map(|m| (m.metadata.id, u16::from(m.metadata.response_code)))
        .collect();
    let (notimp, badvers) = (
        u16::from(ResponseCode::NotImp),
        u16::from(ResponseCode::BADVERS),
    );
    assert_eq!(codes, [(1, notimp), (2, notimp), (3, notimp), (4, badvers)]);
    assert!(got[3].answers.is_empty());
    s.stop().await;
}

#[tokio::test]
async fn the_rate_limit_drops_answers_beyond_the_burst() {
    let s = start_with(
        &spec(),
        RateLimit {
            per_second: 1,
            burst: 3,
        },
    )
    .await;
    let sock = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    sock.connect(s.udp).await.expect("connect");
    for id in 0..10u16 {
        sock.send(&query_bytes(id, "www.foobar.com.", RecordType::A))
            .await
            .expect("send");
    }
    let got = replies(&sock, Duration::from_millis(600)).await;
    assert!(
        (3..=4).contains(&got.len()),
        "the burst of 3 (and at most one token more): {} answers",
        got.len()
    );
    assert!(
        got.iter()
            .all(|m| m.metadata.response_code == ResponseCode::NoError)
    );
    let stats = s.stats.snapshot();
    assert_eq!(stats.rate_limited as usize, 10 - got.len(), "{stats:?}");
    assert!(
        s.metrics().contains(&format!(
            "hastack_dns_rate_limited_total {}",
            10 - got.len()
        )),
        "{}",
        s.metrics()
    );
    // TCP is not rate-limited.
    let mut t = tcp_client(s.tcp).await;
    for _ in 0..5 {
        let m = ask(&mut t, "www.foobar.com.", RecordType::A).await;
        assert_eq!(m.answers.len(), 2);
    }
    s.stop().await;
}

#[tokio::test]
async fn garbage_is_counted_and_dropped_and_the_server_goes_on() {
    let s = start().await;
    let sock = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    sock.connect(s.udp).await.expect("connect");
    let mut response = Message::response(7, OpCode::Query);
    response.add_query(Query::query(name("www.foobar.com."), RecordType::A));
    let garbage: Vec<Vec<u8>> = vec![
        vec![0xde, 0xad],
        // A header announcing 5 questions, and nothing after it.
        vec![0, 1, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0],
        vec![0xff; 600],
        // A response: answering it could loop between servers.
        response.to_vec().expect("encode"),
    ];
    for g in &garbage {
        sock.send(g).await.expect("send");
    }
    sock.send(&query_bytes(42, "www.foobar.com.", RecordType::A))
        .await
        .expect("send");
    let got = replies(&sock, Duration::from_millis(500)).await;
    assert_eq!(got.len(), 1, "only the real query is answered: {got:?}");
    assert_eq!(got[0].metadata.id, 42);
    assert_eq!(got[0].metadata.message_type, MessageType::Response);
    assert_eq!(got[0].answers.len(), 2);

    // Garbage on TCP closes that connection, not the server.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(s.tcp)
        .await
        .expect("connect");
    conn.write_all(&[0, 3, 1, 2, 3]).await.expect("write");
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(2), conn.read(&mut buf))
        .await
        .expect("closed soon")
        .unwrap_or(0);
    assert_eq!(n, 0, "the connection is closed without an answer");
    let mut t = tcp_client(s.tcp).await;
    assert_eq!(
        ask(&mut t, "www.foobar.com.", RecordType::A)
            .await
            .answers
            .len(),
        2
    );

    let stats = s.stop().await.snapshot();
    assert_eq!(stats.malformed, 5, "{stats:?}");
    assert_eq!(stats.answered, 2);
}

#[tokio::test]
async fn tcp_answers_several_queries_on_one_connection() {
    let s = start().await;
    let mut t = tcp_client(s.tcp).await;
    let m = ask(&mut t, "www.foobar.com.", RecordType::A).await;
    assert!(m.metadata.authoritative);
    assert_eq!(m.answers.len(), 2);
    let m = ask(&mut t, "foobar.com.", RecordType::SOA).await;
    assert_eq!(m.answers.len(), 1);
    let m = ask(&mut t, "gone.foobar.com.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    let stats = s.stop().await.snapshot();
    assert_eq!((stats.answered, stats.nxdomain), (3, 1));
}

#[tokio::test]
async fn an_answer_too_big_for_udp_is_truncated_and_whole_over_tcp() {
    let mut big = spec();
    big.vips = (1..=60u8).map(|i| IpAddr::from([127, 0, 1, i])).collect();
    let s = start_with(&big, RateLimit::default()).await;
    let sock = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    sock.connect(s.udp).await.expect("connect");
    sock.send(&query_bytes(9, "www.foobar.com.", RecordType::A))
        .await
        .expect("send");
    let got = replies(&sock, Duration::from_millis(500)).await;
    let [m] = got.as_slice() else {
        panic!("one answer: {got:?}");
    };
    assert!(
        m.metadata.truncation,
        "TC set: 60 A records exceed 512 bytes"
    );
    assert!(m.answers.len() < 60);
    let mut t = tcp_client(s.tcp).await;
    let m = ask(&mut t, "www.foobar.com.", RecordType::A).await;
    assert!(!m.metadata.truncation);
    assert_eq!(m.answers.len(), 60);
    s.stop().await;
}

#[tokio::test]
async fn serve_binds_udp_and_tcp_and_names_an_address_it_cannot_bind() {
    let mut registry = Registry::default();
    let taken = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let addr = taken.local_addr().expect("addr");
    let server = Server::new(&spec(), RateLimit::default(), &mut registry).expect("server");
    let (_stop, shutdown) = watch::channel(false);
    let err = server
        .serve(addr, shutdown)
        .await
        .expect_err("the port is taken");
    let text = err.to_string();
    assert!(
        text.contains(&addr.to_string()) && text.contains("udp"),
        "{text}"
    );

    // A port the OS gave and that was let go again: serve binds UDP and TCP on it.
    let addr = UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind")
        .local_addr()
        .expect("addr");
    let mut registry = Registry::default();
    let server = Server::new(&spec(), RateLimit::default(), &mut registry).expect("server");
    let stats = server.stats_handle();
    let (stop, shutdown) = watch::channel(false);
    let task = tokio::spawn(server.serve(addr, shutdown));
    let mut u = udp_client(addr).await;
    assert_eq!(
        ask(&mut u, "www.foobar.com.", RecordType::A)
            .await
            .answers
            .len(),
        2
    );
    let mut t = tcp_client(addr).await;
    assert_eq!(
        ask(&mut t, "www.foobar.com.", RecordType::A)
            .await
            .answers
            .len(),
        2
    );
    stop.send_replace(true);
    tokio::time::timeout(Duration::from_secs(2), task)
        .await
        .expect("stops")
        .expect("task")
        .expect("Ok");
    assert_eq!(
        stats.snapshot().answered,
        2,
        "read after serve took the server"
    );
}

#[tokio::test]
async fn a_bad_spec_is_an_error_before_any_socket() {
    let mut registry = Registry::default();
    let mut s = spec();
    s.nameservers.clear();
    let err = Server::new(&s, RateLimit::default(), &mut registry)
        .err()
        .expect("no nameserver");
    assert!(matches!(err, DnsError::NoNameservers), "{err}");
}

/// Runs `dig` with `args`; fails, saying what to install, when dig is missing.
async fn dig(args: &[String]) -> String {
    let dig = "/usr/bin/dig";
    assert!(
        std::path::Path::new(dig).exists(),
        "dig is missing: install bind9-dnsutils (apt-get install -y bind9-dnsutils)"
    );
    let out = tokio::process::Command::new(dig)
        .args(args)
        .output()
        .await
        .expect("run dig");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "dig {args:?} failed: {text}");
    text
}

#[tokio::test]
async fn dig_sees_an_authoritative_server() {
    let s = start().await;
    let base = |extra: &[&str]| {
        let mut v = vec![
            "@127.0.0.1".to_string(),
            "-p".to_string(),
            s.udp.port().to_string(),
            "+norec".to_string(),
            "+time=2".to_string(),
            "+tries=1".to_string(),
        ];
        v.extend(extra.iter().map(|a| a.to_string()));
        v
    };
    let out = dig(&base(&["www.foobar.com", "A"])).await;
    assert!(out.contains("status: NOERROR"), "{out}");
    assert!(out.contains("flags: qr aa;"), "AA, no RA: {out}");
    assert!(
        out.contains("www.foobar.com.\t\t60\tIN\tA\t127.0.0.100"),
        "{out}"
    );
    assert!(
        out.contains("www.foobar.com.\t\t60\tIN\tA\t127.0.0.101"),
        "{out}"
    );

    let out = dig(&base(&["+short", "foobar.com", "SOA"])).await;
    let serial = s.stats.snapshot().serial;
    assert_eq!(
        out.trim(),
        format!("dns1.foobar.com. hostmaster.foobar.com. {serial} 3600 600 1209600 60")
    );

    let out = dig(&base(&["nope.foobar.com", "A"])).await;
    assert!(out.contains("status: NXDOMAIN"), "{out}");
    assert!(out.contains("AUTHORITY: 1"), "the SOA: {out}");

    let out = dig(&base(&["www.example.org", "A"])).await;
    assert!(out.contains("status: REFUSED"), "{out}");

    // dig asks ANY over TCP unless told otherwise.
    let out = dig(&base(&["www.foobar.com", "ANY"])).await;
    assert!(out.contains("status: REFUSED"), "{out}");
    let out = dig(&base(&["+notcp", "www.foobar.com", "ANY"])).await;
    assert!(out.contains("status: REFUSED"), "{out}");
    assert!(out.contains("(UDP)"), "{out}");

    let out = dig(&base(&["+tcp", "foobar.com", "NS"])).await;
    assert!(out.contains("(TCP)"), "{out}");
    assert!(out.contains("status: NOERROR"), "{out}");
    assert!(
        out.contains("foobar.com.\t\t60\tIN\tNS\tdns1.foobar.com."),
        "{out}"
    );
    assert!(
        out.contains("dns1.foobar.com.\t60\tIN\tA\t127.0.5.1"),
        "glue: {out}"
    );
    assert!(
        out.contains("dns2.foobar.com.\t60\tIN\tA\t127.0.5.2"),
        "glue: {out}"
    );
    s.stop().await;
}
