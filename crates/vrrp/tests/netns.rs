//! VRRP on a real wire: two network namespaces joined by a veth pair, each running a
//! node exactly as an lb does in isolated mode (raw protocol-112 sockets, the VIP added
//! by netlink, gratuitous ARP from an AF_PACKET socket).
//!
//! Needs root (or CAP_NET_ADMIN + CAP_NET_RAW + CAP_SYS_ADMIN) and `ip` (iproute2):
//! without them these tests FAIL and say so. All traffic stays inside the namespaces
//! they create (10.199.x.0/24), which a guard deletes.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hastack_vrrp::garp::is_announcement;
use hastack_vrrp::raw::VRRP_GROUP;
use hastack_vrrp::{
    Advert, Config, Health, Network, RejectReason, Setup, State, Stats, VipHook, runner,
};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::sync::watch;

fn require_root_and_ip() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test creates network namespaces: run it as root (e.g. `sudo -E cargo test -p hastack-vrrp --test netns`)"
    );
    let ip = Command::new("ip").arg("-V").output();
    assert!(
        ip.is_ok_and(|o| o.status.success()),
        "this test needs `ip` from iproute2: apt-get install iproute2"
    );
}

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Two namespaces and a veth pair between them; deleted on drop.
struct Pair {
    ns: [String; 2],
    dev: [String; 2],
    addr: [Ipv4Addr; 2],
    vip: Ipv4Addr,
}

impl Drop for Pair {
    fn drop(&mut self) {
        for ns in &self.ns {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

impl Pair {
    fn new(tag: u8) -> Pair {
        require_root_and_ip();
        let pid = std::process::id();
        let net = (pid % 100) as u8 + tag;
        let ns = [
            format!("hsvrrp-{pid}-{tag}-a"),
            format!("hsvrrp-{pid}-{tag}-b"),
        ];
        let dev = [format!("hsv{tag}a"), format!("hsv{tag}b")];
        let addr = [
            Ipv4Addr::new(10, 199, net, 1),
            Ipv4Addr::new(10, 199, net, 2),
        ];
        let pair = Pair {
            ns: ns.clone(),
            dev: dev.clone(),
            addr,
            vip: Ipv4Addr::new(10, 199, net, 100),
        };
        for n in &ns {
            ip(&["netns", "add", n]);
        }
        ip(&[
            "link", "add", &dev[0], "netns", &ns[0], "type", "veth", "peer", "name", &dev[1],
            "netns", &ns[1],
        ]);
        for i in 0..2 {
            ip(&["-n", &ns[i], "link", "set", "lo", "up"]);
            ip(&[
                "-n",
                &ns[i],
                "addr",
                "add",
                &format!("{}/24", addr[i]),
                "dev",
                &dev[i],
            ]);
            ip(&["-n", &ns[i], "link", "set", &dev[i], "up"]);
        }
        pair
    }

    fn has_vip(&self, i: usize) -> bool {
        ip(&["-n", &self.ns[i], "-4", "addr", "show", "dev", &self.dev[i]])
            .contains(&format!("inet {}/24", self.vip))
    }

    fn mac(&self, i: usize) -> [u8; 6] {
        let out = ip(&["-n", &self.ns[i], "link", "show", "dev", &self.dev[i]]);
        let text = out
            .split("link/ether ")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .expect("link/ether");
        let b: Vec<u8> = text
            .split(':')
            .map(|h| u8::from_str_radix(h, 16).expect("hex"))
            .collect();
        <[u8; 6]>::try_from(b.as_slice()).expect("6 bytes")
    }
}

/// Runs `f` on a thread that has entered network namespace `ns`.
fn in_ns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let fd = std::fs::File::open(&path).expect("netns file");
        nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
}

/// The lb's hook in miniature: listens on VIP:port, which only works once the address
/// is on the interface (these namespaces do not set ip_nonlocal_bind).
struct Listener {
    addr: SocketAddr,
    listener: Option<std::net::TcpListener>,
}

impl VipHook for Listener {
    fn take(&mut self) -> std::io::Result<()> {
        self.listener = Some(std::net::TcpListener::bind(self.addr)?);
        Ok(())
    }
    fn release(&mut self) {
        self.listener = None;
    }
}

struct Node {
    stats: Arc<Stats>,
    health: watch::Sender<Health>,
    shutdown: watch::Sender<bool>,
    thread: std::thread::JoinHandle<()>,
}

fn start_node(pair: &Pair, i: usize, priority: u8, unicast: bool) -> Node {
    let stats = Arc::new(Stats::default());
    let (health, health_rx) = watch::channel(None);
    let (shutdown, shutdown_rx) = watch::channel(false);
    let setup = Setup {
        machine: Config {
            vrid: 42,
            priority,
            advert_interval_cs: 10,
            preempt: true,
            primary_address: pair.addr[i],
            addresses: vec![pair.vip],
            peers: vec![pair.addr[1 - i]],
            preempt_delay: Duration::ZERO,
        },
        network: Network::Real {
            local: pair.addr[i],
            peers: vec![pair.addr[1 - i]],
            unicast,
            prefix: 24,
        },
        key: None,
        notify: None,
        instance: "vrid42".into(),
    };
    let hook = Listener {
        addr: SocketAddr::from((pair.vip, 8080)),
        listener: None,
    };
    let st = stats.clone();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let thread = in_ns(&pair.ns[i], move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let running = runner::start(setup, hook, st, health_rx, shutdown_rx).await;
            let ok = running.as_ref().map(|_| ()).map_err(|e| e.to_string());
            let _ = ready_tx.send(ok);
            if let Ok(r) = running {
                r.finished().await;
            }
        });
    });
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("node start")
        .expect("vrrp started");
    Node {
        stats,
        health,
        shutdown,
        thread,
    }
}

fn eventually(what: &str, limit: Duration, cond: impl Fn() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(t0.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Collects gratuitous ARPs for `vip` seen in namespace `ns` for `window`.
fn sniff_garps(ns: &str, vip: Ipv4Addr, window: Duration) -> std::thread::JoinHandle<Vec<[u8; 6]>> {
    let (tx, rx) = std::sync::mpsc::channel();
    let h = in_ns(ns, move || {
        let s = Socket::new(
            Domain::PACKET,
            Type::RAW,
            Some(Protocol::from(i32::from(0x0806u16.to_be()))),
        )
        .expect("packet socket");
        s.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        let _ = tx.send(());
        let mut seen = Vec::new();
        let t0 = Instant::now();
        let mut buf = [0u8; 1600];
        while t0.elapsed() < window {
            use std::io::Read;
            if let Ok(n) = (&s).read(&mut buf)
                && let Some(mac) = is_announcement(&buf[..n], vip)
            {
                seen.push(mac);
            }
        }
        seen
    });
    rx.recv_timeout(Duration::from_secs(5)).expect("sniffer up");
    h
}

/// Sends a VRRP advert from namespace `ns` with the given TTL (a forgery: valid
/// checksum, source a real peer, but it crossed a router or was made up).
fn send_with_ttl(ns: &str, src: Ipv4Addr, ttl: u32, adv: Advert) {
    in_ns(ns, move || {
        let s =
            Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(112))).expect("raw socket");
        s.set_multicast_ttl_v4(ttl).expect("ttl");
        s.set_ttl(ttl).expect("ttl");
        s.set_multicast_if_v4(&src).expect("if");
        s.bind(&SockAddr::from(SocketAddrV4::new(src, 0)))
            .expect("bind");
        let bytes = adv.encode(src, VRRP_GROUP);
        s.send_to(&bytes, &SockAddr::from(SocketAddrV4::new(VRRP_GROUP, 0)))
            .expect("send");
    })
    .join()
    .expect("sender");
}

fn wire_story(tag: u8, unicast: bool) {
    let pair = Pair::new(tag);
    // A stale VIP on node b, as a crashed process would leave it.
    ip(&[
        "-n",
        &pair.ns[1],
        "addr",
        "add",
        &format!("{}/24", pair.vip),
        "dev",
        &pair.dev[1],
    ]);
    let sniffer = sniff_garps(&pair.ns[1], pair.vip, Duration::from_secs(2));
    let b = start_node(&pair, 1, 100, unicast);
    assert!(!pair.has_vip(1), "a stale VIP is removed at start");
    let a = start_node(&pair, 0, 150, unicast);

    eventually("a becomes master", Duration::from_secs(3), || {
        a.stats.state() == State::Master
    });
    eventually("b stays backup and hears a", Duration::from_secs(3), || {
        b.stats.state() == State::Backup
            && b.stats
                .adverts_received
                .load(std::sync::atomic::Ordering::Relaxed)
                > 3
    });
    assert!(pair.has_vip(0), "the VIP is on the master's interface");
    let shown = ip(&["-n", &pair.ns[0], "-4", "addr", "show", "dev", &pair.dev[0]]);
    let lifetime = shown
        .split(&format!("inet {}/24", pair.vip))
        .nth(1)
        .and_then(|rest| rest.lines().nth(1))
        .unwrap_or_default()
        .to_string();
    assert!(
        lifetime.contains("valid_lft") && !lifetime.contains("forever"),
        "the VIP has a finite lifetime, refreshed while master: {lifetime:?} in\n{shown}"
    );
    let garps = sniffer.join().expect("sniffer");
    let mac_a = pair.mac(0);
    assert!(
        garps.iter().filter(|m| **m == mac_a).count() >= 5,
        "a burst of 5 gratuitous ARPs from the master's MAC reached the other namespace: {garps:?}"
    );

    // A forged advert with TTL 254 from b's address: rejected, counted, no effect.
    let forged = Advert {
        vrid: 42,
        priority: 255,
        max_adver_int_cs: 4095,
        addresses: vec![pair.vip],
    };
    send_with_ttl(&pair.ns[1], pair.addr[1], 254, forged);
    eventually(
        "the TTL-254 advert is counted",
        Duration::from_secs(2),
        || a.stats.rejected(RejectReason::Ttl) >= 1,
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        a.stats.state(),
        State::Master,
        "the forgery changed nothing"
    );

    // a fails its tracking: b takes over, adverts now flow the other way.
    let a_heard = a
        .stats
        .adverts_received
        .load(std::sync::atomic::Ordering::Relaxed);
    a.health.send_replace(Some("test: no upstream".into()));
    eventually("b takes over", Duration::from_secs(1), || {
        b.stats.state() == State::Master && pair.has_vip(1)
    });
    assert!(!pair.has_vip(0), "a in FAULT has removed the VIP");
    eventually("a hears b", Duration::from_secs(2), || {
        a.stats
            .adverts_received
            .load(std::sync::atomic::Ordering::Relaxed)
            > a_heard + 3
    });
    a.health.send_replace(None);
    eventually("a preempts again", Duration::from_secs(2), || {
        a.stats.state() == State::Master && b.stats.state() == State::Backup
    });
    eventually("VIP only on a", Duration::from_secs(1), || {
        pair.has_vip(0) && !pair.has_vip(1)
    });

    a.shutdown.send_replace(true);
    a.thread.join().expect("a");
    assert!(!pair.has_vip(0), "a stopped node leaves no VIP behind");
    eventually("b after a's priority 0", Duration::from_secs(1), || {
        b.stats.state() == State::Master && pair.has_vip(1)
    });
    b.shutdown.send_replace(true);
    b.thread.join().expect("b");
    assert!(!pair.has_vip(1));
}

#[test]
fn multicast_adverts_vip_and_gratuitous_arp_between_two_namespaces() {
    wire_story(101, false);
}

#[test]
fn unicast_adverts_between_two_namespaces() {
    wire_story(102, true);
}

/// A VIP left by a master that was killed (no release, no more refreshes) goes away
/// by itself: its lifetime runs out.
#[test]
fn an_unrefreshed_vip_expires_by_itself() {
    let pair = Pair::new(103);
    let (vip, local) = (pair.vip, pair.addr[0]);
    in_ns(&pair.ns[0], move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let nl = hastack_vrrp::netif::Netlink::connect().expect("netlink");
            let iface = nl.interface_with(local).await.expect("interface");
            nl.add(iface.index, vip, 24, Some(1)).await.expect("add");
            assert!(nl.has(iface.index, vip).await.expect("dump"));
        });
    })
    .join()
    .expect("ns thread");
    assert!(pair.has_vip(0));
    eventually("the VIP expires", Duration::from_secs(5), || {
        !pair.has_vip(0)
    });
}
