//! The runner under `tokio::time::pause()`: two nodes on an in-memory link, driven by
//! tokio's clock alone, so the whole story (election, FAULT hand-over, return,
//! preemption, a VIP that cannot be taken, shutdown) runs in virtual time without
//! sleeping and without flakiness.

use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hastack_vrrp::{ChannelTransport, Config, Machine, Runner, State, Stats, VipHook};
use tokio::sync::watch;
use tokio::time::Instant;

const VIP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 100);
const A1: Ipv4Addr = Ipv4Addr::new(127, 0, 1, 1);
const A2: Ipv4Addr = Ipv4Addr::new(127, 0, 1, 2);

/// Records when the VIP was taken and released; can be told to fail the take.
#[derive(Clone, Default)]
struct Hook {
    log: Arc<Mutex<Vec<(&'static str, Instant)>>>,
    fail: Arc<Mutex<bool>>,
}

impl VipHook for Hook {
    fn take(&mut self) -> std::io::Result<()> {
        if *self.fail.lock().expect("lock") {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                "port taken",
            ));
        }
        self.log
            .lock()
            .expect("lock")
            .push(("take", Instant::now()));
        Ok(())
    }
    fn release(&mut self) {
        self.log
            .lock()
            .expect("lock")
            .push(("release", Instant::now()));
    }
}

fn machine(priority: u8, me: Ipv4Addr, peer: Ipv4Addr) -> Machine {
    Machine::new(Config {
        vrid: 51,
        priority,
        advert_interval_cs: 10,
        preempt: true,
        primary_address: me,
        addresses: vec![VIP],
        peers: vec![peer],
        preempt_delay: Duration::ZERO,
    })
}

struct Node {
    stats: Arc<Stats>,
    hook: Hook,
    health: watch::Sender<Option<String>>,
    shutdown: watch::Sender<bool>,
}

fn node(
    priority: u8,
    me: Ipv4Addr,
    peer: Ipv4Addr,
    t: ChannelTransport,
) -> (Node, Runner<ChannelTransport, Hook>, watch::Receiver<bool>) {
    let stats = Arc::new(Stats::default());
    let hook = Hook::default();
    let (health, health_rx) = watch::channel(None);
    let (shutdown, shutdown_rx) = watch::channel(false);
    let runner = Runner::new(machine(priority, me, peer), t, hook.clone(), stats.clone())
        .with_health(health_rx);
    (
        Node {
            stats,
            hook,
            health,
            shutdown,
        },
        runner,
        shutdown_rx,
    )
}

/// Waits in virtual time until `cond` holds, at most `limit`; returns how long it took.
async fn until(what: &str, limit: Duration, cond: impl Fn() -> bool) -> Duration {
    let t0 = Instant::now();
    while !cond() {
        assert!(t0.elapsed() <= limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    t0.elapsed()
}

#[tokio::test(start_paused = true)]
async fn fault_hands_over_at_once_and_the_higher_node_comes_back() {
    let (t1, t2) = ChannelTransport::pair(A1, A2);
    let (n1, r1, s1) = node(150, A1, A2, t1);
    let (n2, r2, s2) = node(100, A2, A1, t2);
    let story = async {
        until("lb1 master", Duration::from_millis(500), || {
            n1.stats.state() == State::Master
        })
        .await;
        until("lb2 backup", Duration::from_millis(500), || {
            n2.stats.state() == State::Backup
        })
        .await;
        // Steady for 10 s of adverts: no spurious transition.
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(
            n1.stats
                .became_master
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        assert_eq!(n2.stats.state(), State::Backup);

        // lb1's pool goes down: FAULT, priority 0, lb2 takes over after its skew time.
        n1.health.send_replace(Some("no healthy web node".into()));
        let took = until("lb2 takes over", Duration::from_millis(100), || {
            n2.stats.state() == State::Master
        })
        .await;
        assert!(
            took <= Duration::from_millis(65),
            "priority 0 -> takeover after Skew_Time ((256-100)/256 × 100 ms = 61 ms), took {took:?}"
        );
        assert_eq!(n1.stats.state(), State::Fault);
        assert_eq!(n1.stats.fault().as_deref(), Some("no healthy web node"));
        assert_eq!(
            n1.hook.log.lock().expect("lock").last().map(|e| e.0),
            Some("release")
        );

        // Healthy again: lb1 comes back as backup, then preempts lb2.
        n1.health.send_replace(None);
        until("lb1 preempts", Duration::from_millis(600), || {
            n1.stats.state() == State::Master && n2.stats.state() == State::Backup
        })
        .await;
        assert_eq!(n1.stats.transitions(State::Fault), 1);
        n1.shutdown.send_replace(true);
        until("lb2 after lb1 stops", Duration::from_millis(100), || {
            n2.stats.state() == State::Master
        })
        .await;
        n2.shutdown.send_replace(true);
    };
    let (h1, h2, ()) = tokio::join!(r1.run(s1), r2.run(s2), story);
    let log1: Vec<_> = h1.log.lock().expect("lock").iter().map(|e| e.0).collect();
    assert_eq!(log1, ["take", "release", "take", "release"]);
    let log2: Vec<_> = h2.log.lock().expect("lock").iter().map(|e| e.0).collect();
    assert_eq!(log2, ["take", "release", "take", "release"]);
}

#[tokio::test(start_paused = true)]
async fn a_vip_that_cannot_be_taken_is_handed_over_not_retried_as_master() {
    let (t1, t2) = ChannelTransport::pair(A1, A2);
    let (n1, r1, s1) = node(150, A1, A2, t1);
    let (n2, r2, s2) = node(100, A2, A1, t2);
    *n1.hook.fail.lock().expect("lock") = true;
    let story = async {
        until("lb1 in fault", Duration::from_millis(500), || {
            n1.stats.state() == State::Fault
        })
        .await;
        assert!(
            n1.stats
                .fault()
                .is_some_and(|f| f.contains("cannot take the VIP")),
            "{:?}",
            n1.stats.fault()
        );
        until("lb2 serves", Duration::from_millis(500), || {
            n2.stats.state() == State::Master
        })
        .await;
        // The port is free again: after its retry delay lb1 takes part and preempts.
        *n1.hook.fail.lock().expect("lock") = false;
        until("lb1 master again", Duration::from_secs(3), || {
            n1.stats.state() == State::Master
        })
        .await;
        assert_eq!(
            n1.stats
                .vip_failures
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        assert_eq!(n2.stats.state(), State::Backup);
        n1.shutdown.send_replace(true);
        n2.shutdown.send_replace(true);
    };
    tokio::join!(r1.run(s1), r2.run(s2), story);
}

#[tokio::test(start_paused = true)]
async fn a_cut_link_makes_two_masters_and_healing_leaves_one() {
    let (t1, t2) = ChannelTransport::pair(A1, A2);
    let link = t1.link();
    let (n1, r1, s1) = node(150, A1, A2, t1);
    let (n2, r2, s2) = node(100, A2, A1, t2);
    let story = async {
        until("lb1 master", Duration::from_millis(500), || {
            n1.stats.state() == State::Master
        })
        .await;
        link.store(false, std::sync::atomic::Ordering::Relaxed);
        until("split brain", Duration::from_millis(500), || {
            n2.stats.state() == State::Master
        })
        .await;
        link.store(true, std::sync::atomic::Ordering::Relaxed);
        until("healed", Duration::from_millis(300), || {
            n2.stats.state() == State::Backup
        })
        .await;
        assert_eq!(n1.stats.state(), State::Master);
        n1.shutdown.send_replace(true);
        n2.shutdown.send_replace(true);
    };
    tokio::join!(r1.run(s1), r2.run(s2), story);
}
