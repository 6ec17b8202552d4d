//! VRRP runs on a thread of its own: a node runtime that is completely stuck (a
//! saturated proxy, a blocking call) does not delay adverts, so the backup sees no
//! silence and takes nothing over. Loopback mode, real UDP sockets.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hastack_vrrp::{Config, Network, Setup, State, Stats, VipHook, runner};
use tokio::sync::watch;

struct NoListener;

impl VipHook for NoListener {
    fn take(&mut self) -> std::io::Result<()> {
        Ok(())
    }
    fn release(&mut self) {}
}

fn free_udp(ip: Ipv4Addr) -> SocketAddrV4 {
    let s = std::net::UdpSocket::bind(SocketAddrV4::new(ip, 0)).expect("bind");
    match s.local_addr().expect("addr") {
        std::net::SocketAddr::V4(a) => a,
        other => panic!("{other}"),
    }
}

fn setup(priority: u8, me: SocketAddrV4, peer: SocketAddrV4) -> Setup {
    Setup {
        machine: Config {
            vrid: 60,
            priority,
            advert_interval_cs: 10,
            preempt: true,
            primary_address: *me.ip(),
            addresses: vec![Ipv4Addr::new(127, 0, 79, 100)],
            peers: vec![*peer.ip()],
            preempt_delay: Duration::ZERO,
        },
        network: Network::Loopback {
            local: me,
            peers: vec![peer],
        },
        key: None,
        notify: None,
        instance: "vrid60".into(),
    }
}

#[tokio::test(flavor = "current_thread")]
async fn adverts_keep_flowing_while_the_node_runtime_is_blocked() {
    let a = free_udp(Ipv4Addr::new(127, 0, 79, 1));
    let b = free_udp(Ipv4Addr::new(127, 0, 79, 2));
    let (sa, sb) = (Arc::new(Stats::default()), Arc::new(Stats::default()));
    let (_ha, hra) = watch::channel(None);
    let (_hb, hrb) = watch::channel(None);
    let (stop, stop_rx) = watch::channel(false);
    let ra = runner::start(
        setup(150, a, b),
        NoListener,
        sa.clone(),
        hra,
        stop_rx.clone(),
    )
    .await
    .expect("start a");
    let rb = runner::start(setup(100, b, a), NoListener, sb.clone(), hrb, stop_rx)
        .await
        .expect("start b");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while !(sa.state() == State::Master && sb.state() == State::Backup) {
        assert!(tokio::time::Instant::now() < deadline, "no election");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let heard = sb.adverts_received.load(Ordering::Relaxed);
    // Block this runtime's only thread for 2 s: 20 advert intervals, more than 5
    // Master_Down_Intervals of the backup.
    std::thread::sleep(Duration::from_secs(2));
    let during = sb.adverts_received.load(Ordering::Relaxed) - heard;
    assert!(
        during >= 10,
        "adverts went on while the node runtime was blocked: {during} in 2 s"
    );
    assert_eq!(
        sb.became_master.load(Ordering::Relaxed),
        0,
        "no false takeover"
    );
    assert_eq!(sa.state(), State::Master);
    stop.send_replace(true);
    assert!(ra.finished().await.is_some());
    assert!(rb.finished().await.is_some());
}
