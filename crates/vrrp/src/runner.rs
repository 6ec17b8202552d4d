//! The I/O edge of VRRP: the loop that drives a [`Machine`] from a [`Transport`], the
//! node's health and one clock, and carries out its actions — adverts, the VIP (the
//! listener through a [`VipHook`]; on a real network also the interface address and
//! gratuitous ARP) and the state-change events (log, metrics, notify, in that order).
//!
//! [`start`] runs it on an OS thread of its own with a current-thread tokio runtime:
//! a proxy runtime saturated by traffic cannot delay an advert past the backup's
//! Master_Down_Interval (a false takeover). The loop reads only tokio's clock
//! ([`tokio::time::Instant`], converted for the machine), so a test can run it under
//! `tokio::time::pause()`.
//!
//! A take of the VIP that fails (address or listener) does not retry while claiming
//! master: the node goes to FAULT (priority 0, VIP released, reported in `/healthz`)
//! and takes part again after [`Runner::vip_retry`].
//!
//! On a real network the VIP is added with a lifetime of [`VIP_LIFETIME`] and
//! refreshed every [`VIP_REFRESH`] while master: a master killed without a chance to
//! clean up (SIGKILL, a crash) loses the address within seconds, so its kernel stops
//! answering ARP for the VIP and accepting (then resetting) connections to it. A
//! stale address is also removed at the next start.

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use crate::auth::Key;
use crate::garp::{self, Garp};
use crate::machine::{Action, Config, Machine, State};
use crate::netif::{Interface, NetError, Netlink};
use crate::notify::{Event, Notifier};
use crate::raw::{RawConfig, RawTransport};
use crate::stats::{RejectLog, RejectReason, Stats};
use crate::transport::{RecvError, Transport, UdpTransport};

/// What the lb does when it gains or loses the VIP: open and close its listener.
pub trait VipHook: Send {
    /// Start serving on the VIP. An error (e.g. the port is taken) makes the node hand
    /// the VIP over and go to FAULT for a while.
    fn take(&mut self) -> std::io::Result<()>;
    /// Stop serving on the VIP.
    fn release(&mut self);
}

/// The node's own health as the lb tracks it: `None` healthy, `Some(why)` not.
pub type Health = Option<String>;

/// The VIP as an interface address (isolated and hosts modes).
#[derive(Debug)]
pub struct InterfaceVip {
    netlink: Netlink,
    iface: Interface,
    vip: Ipv4Addr,
    prefix: u8,
    garp: Garp,
}

impl InterfaceVip {
    /// Finds the interface holding `local`, removes a stale copy of `vip` from it (left
    /// by a crashed process) and opens the ARP socket. Runs in the calling thread's
    /// network namespace, inside a tokio runtime.
    pub async fn open(local: Ipv4Addr, vip: Ipv4Addr, prefix: u8) -> Result<Self, StartError> {
        let netlink = Netlink::connect()?;
        let iface = netlink.interface_with(local).await?;
        if netlink.remove(iface.index, vip).await? {
            warn!(%vip, interface = %iface.name, "removed a stale VIP left by an earlier run");
        }
        let garp = Garp::open(iface.index).map_err(StartError::Garp)?;
        Ok(InterfaceVip {
            netlink,
            iface,
            vip,
            prefix,
            garp,
        })
    }

    /// The interface.
    pub fn interface(&self) -> &Interface {
        &self.iface
    }

    /// Adds the VIP (or renews it) with its [`VIP_LIFETIME`]: taking it and refreshing
    /// it are the same netlink request.
    async fn add(&self) -> Result<(), NetError> {
        self.netlink
            .add(
                self.iface.index,
                self.vip,
                self.prefix,
                Some(VIP_LIFETIME.as_secs() as u32),
            )
            .await
    }
}

/// How the VIP is held.
#[derive(Debug)]
pub enum VipMode {
    /// Loopback mode: the VIP is a 127.x address; holding it is the hook's listener.
    Listener,
    /// On a real network: the address on the interface, then the listener, then ARP.
    Interface(Box<InterfaceVip>),
}

/// Why the VRRP thread could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Spawning the thread or building its runtime failed.
    #[error("vrrp thread: {0}")]
    Thread(std::io::Error),
    /// The UDP socket of loopback mode.
    #[error("cannot bind the VRRP socket {addr}: {source}")]
    Udp {
        /// The address.
        addr: SocketAddrV4,
        /// The cause.
        source: std::io::Error,
    },
    /// The raw sockets (protocol 112).
    #[error("cannot open the raw VRRP socket on {iface} (needs root or CAP_NET_RAW): {source}")]
    Raw {
        /// The interface.
        iface: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The ARP socket.
    #[error("cannot open the ARP socket (needs root or CAP_NET_RAW): {0}")]
    Garp(std::io::Error),
    /// Netlink: the interface or the stale VIP.
    #[error(transparent)]
    Net(#[from] NetError),
    /// The thread ended before it said whether it started.
    #[error("the vrrp thread ended during start")]
    Gone,
}

/// The network side of a node.
#[derive(Debug, Clone)]
pub enum Network {
    /// Loopback mode: UDP between `local` and `peers` (address and port).
    Loopback {
        /// Our VRRP socket address.
        local: SocketAddrV4,
        /// The peers' VRRP socket addresses.
        peers: Vec<SocketAddrV4>,
    },
    /// Isolated and hosts modes: protocol 112, VIP on the interface holding `local`.
    Real {
        /// This node's address.
        local: Ipv4Addr,
        /// The peers' addresses.
        peers: Vec<Ipv4Addr>,
        /// Send to each peer instead of 224.0.0.18.
        unicast: bool,
        /// Prefix length of the VIP.
        prefix: u8,
    },
}

/// Everything [`start`] needs.
#[derive(Debug, Clone)]
pub struct Setup {
    /// The virtual router.
    pub machine: Config,
    /// Transport and VIP.
    pub network: Network,
    /// Authenticate adverts with this key.
    pub key: Option<Key>,
    /// The notify command.
    pub notify: Option<String>,
    /// The instance name handed to the notify command.
    pub instance: String,
}

/// A running VRRP thread.
#[derive(Debug)]
pub struct Running<H> {
    done: oneshot::Receiver<H>,
}

impl<H> Running<H> {
    /// Waits until the thread has stopped (after `shutdown`: priority 0 sent, VIP
    /// released) and returns the hook, to let it drain.
    pub async fn finished(self) -> Option<H> {
        self.done.await.ok()
    }
}

/// Starts VRRP on a thread of its own (a current-thread runtime; sockets in the
/// calling thread's network namespace, which the new thread inherits) and returns once
/// its sockets are open.
pub async fn start<H: VipHook + 'static>(
    setup: Setup,
    hook: H,
    stats: Arc<Stats>,
    health: watch::Receiver<Health>,
    shutdown: watch::Receiver<bool>,
) -> Result<Running<H>, StartError> {
    let (started_tx, started_rx) = oneshot::channel::<Result<(), StartError>>();
    let (done_tx, done_rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("vrrp".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = started_tx.send(Err(StartError::Thread(e)));
                    return;
                }
            };
            rt.block_on(async move {
                let runner = match open(setup, hook, stats, health).await {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = started_tx.send(Err(e));
                        return;
                    }
                };
                let _ = started_tx.send(Ok(()));
                let hook = runner.run(shutdown).await;
                let _ = done_tx.send(hook);
            });
        })
        .map_err(StartError::Thread)?;
    started_rx.await.map_err(|_| StartError::Gone)??;
    Ok(Running { done: done_rx })
}

/// Either transport, chosen by the mode.
#[derive(Debug)]
pub enum AnyTransport {
    /// Loopback.
    Udp(UdpTransport),
    /// Real network.
    Raw(RawTransport),
}

impl Transport for AnyTransport {
    async fn send(&self, adv: &crate::Advert, stats: &Stats) {
        match self {
            AnyTransport::Udp(t) => t.send(adv, stats).await,
            AnyTransport::Raw(t) => t.send(adv, stats).await,
        }
    }

    async fn recv(&self, buf: &mut [u8]) -> Result<(Ipv4Addr, crate::Advert), RecvError> {
        match self {
            AnyTransport::Udp(t) => t.recv(buf).await,
            AnyTransport::Raw(t) => t.recv(buf).await,
        }
    }
}

async fn open<H: VipHook>(
    setup: Setup,
    hook: H,
    stats: Arc<Stats>,
    health: watch::Receiver<Health>,
) -> Result<Runner<AnyTransport, H>, StartError> {
    let (transport, vip) = match setup.network {
        Network::Loopback { local, peers } => {
            let t = UdpTransport::bind(local, peers)
                .await
                .map_err(|source| StartError::Udp {
                    addr: local,
                    source,
                })?
                .with_key(setup.key);
            (AnyTransport::Udp(t), VipMode::Listener)
        }
        Network::Real {
            local,
            peers,
            unicast,
            prefix,
        } => {
            let vip_addr = setup
                .machine
                .addresses
                .first()
                .copied()
                .unwrap_or(Ipv4Addr::UNSPECIFIED);
            let vip = InterfaceVip::open(local, vip_addr, prefix).await?;
            let iface = vip.interface().clone();
            let t = RawTransport::open(RawConfig {
                local,
                ifindex: iface.index,
                ifname: iface.name.clone(),
                peers,
                unicast,
                key: setup.key,
            })
            .map_err(|source| StartError::Raw {
                iface: iface.name.clone(),
                source,
            })?;
            info!(interface = %iface.name, unicast, "vrrp on the wire (IP protocol 112)");
            (AnyTransport::Raw(t), VipMode::Interface(Box::new(vip)))
        }
    };
    let mut runner = Runner::new(Machine::new(setup.machine), transport, hook, stats)
        .with_vip(vip)
        .with_health(health);
    if let Some(cmd) = setup.notify {
        runner = runner.with_notify(cmd, setup.instance);
    }
    Ok(runner)
}

/// The machine, its transport and its VIP, driven by one loop.
pub struct Runner<T, H> {
    machine: Machine,
    transport: T,
    hook: H,
    vip: VipMode,
    stats: Arc<Stats>,
    health: Option<watch::Receiver<Health>>,
    notify: Option<(String, String)>,
    /// How long a node whose VIP take failed stays in FAULT before taking part again.
    pub vip_retry: Duration,
}

/// Lifetime of the VIP on the interface (refreshed while master).
pub const VIP_LIFETIME: Duration = Duration::from_secs(3);
/// How often a master refreshes the VIP's lifetime.
pub const VIP_REFRESH: Duration = Duration::from_secs(1);

/// How long a stopping master waits for a peer to take over before it lets go anyway.
pub const HAND_OVER_WAIT: Duration = Duration::from_secs(1);
/// How long a stopping or yielding master keeps the VIP after the new master's first
/// advert (its gratuitous ARP follows it).
pub const HAND_OVER_GRACE: Duration = Duration::from_millis(50);

/// At most one re-announcement burst this often (a stream of lower-priority adverts,
/// forged or not, must not become an ARP flood).
const ANNOUNCE_EVERY: Duration = Duration::from_secs(1);

/// The loop's mutable state besides the machine.
struct Loop {
    notifier: Option<Notifier>,
    tracked: Health,
    vip_fault_until: Option<Instant>,
    second_burst_at: Option<Instant>,
    refresh_at: Option<Instant>,
    /// A yielding master lets the VIP go at this time (see `HAND_OVER_GRACE`).
    release_at: Option<Instant>,
    last_announce: Option<Instant>,
    vip_held: bool,
    reject_log: RejectLog,
}

fn now() -> std::time::Instant {
    Instant::now().into_std()
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

async fn changed(rx: &mut Option<watch::Receiver<Health>>) -> Health {
    match rx {
        Some(r) => match r.changed().await {
            Ok(()) => r.borrow_and_update().clone(),
            Err(_) => {
                // The tracker is gone: keep the last value, stop listening.
                let last = r.borrow().clone();
                *rx = None;
                last
            }
        },
        None => std::future::pending().await,
    }
}

impl<T: Transport, H: VipHook> Runner<T, H> {
    /// A runner of `machine` on `transport`, holding the VIP through `hook` alone.
    pub fn new(machine: Machine, transport: T, hook: H, stats: Arc<Stats>) -> Self {
        Runner {
            machine,
            transport,
            hook,
            vip: VipMode::Listener,
            stats,
            health: None,
            notify: None,
            vip_retry: Duration::from_secs(2),
        }
    }

    /// Holds the VIP this way.
    pub fn with_vip(mut self, vip: VipMode) -> Self {
        self.vip = vip;
        self
    }

    /// Tracks the node's health: unhealthy means FAULT.
    pub fn with_health(mut self, health: watch::Receiver<Health>) -> Self {
        self.health = Some(health);
        self
    }

    /// Runs `command INSTANCE STATE PRIORITY` at each state change.
    pub fn with_notify(mut self, command: String, instance: String) -> Self {
        self.notify = Some((command, instance));
        self
    }

    /// Runs until `shutdown` turns true (or its sender is gone); then a master sends
    /// priority 0 and releases the VIP, and the hook is returned to let it drain.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) -> H {
        let mut buf = vec![0u8; 2048];
        let (notifier, notify_task) = match self.notify.take() {
            Some((cmd, instance)) => {
                let (n, t) = Notifier::spawn(cmd, instance, self.stats.clone());
                (Some(n), Some(t))
            }
            None => (None, None),
        };
        let tracked = self
            .health
            .as_mut()
            .and_then(|h| h.borrow_and_update().clone());
        let mut lp = Loop {
            notifier,
            tracked,
            vip_fault_until: None,
            second_burst_at: None,
            refresh_at: None,
            release_at: None,
            last_announce: None,
            vip_held: false,
            reject_log: RejectLog::default(),
        };
        if let Some(why) = lp.tracked.clone() {
            self.stats.set_fault(Some(why));
            self.machine.set_healthy(now(), false);
        }
        self.step(&mut lp, |m| m.startup(now())).await;
        info!(
            state = self.machine.state().as_str(),
            priority = self.machine.config().priority,
            "vrrp started"
        );
        loop {
            let deadline = self.machine.deadline().map(Instant::from_std);
            tokio::select! {
                biased;
                r = shutdown.changed() => {
                    if r.is_err() || *shutdown.borrow() {
                        break;
                    }
                }
                _ = sleep_until(deadline) => {
                    self.step(&mut lp, |m| m.poll(now())).await;
                }
                h = changed(&mut self.health) => {
                    lp.tracked = h;
                    self.recompute_health(&mut lp).await;
                }
                _ = sleep_until(lp.vip_fault_until) => {
                    lp.vip_fault_until = None;
                    info!("vrrp: taking part again after the VIP failure");
                    self.recompute_health(&mut lp).await;
                }
                _ = sleep_until(lp.release_at) => {
                    lp.release_at = None;
                    if self.machine.state() != State::Master && lp.vip_held {
                        self.release_vip(&mut lp).await;
                    }
                }
                _ = sleep_until(lp.refresh_at) => {
                    lp.refresh_at = None;
                    self.refresh_vip(&mut lp).await;
                }
                _ = sleep_until(lp.second_burst_at) => {
                    lp.second_burst_at = None;
                    if self.machine.state() == State::Master {
                        self.announce(&mut lp, "second burst");
                    }
                }
                got = self.transport.recv(&mut buf) => {
                    self.received(&mut lp, got).await;
                }
            }
        }
        if self.machine.state() == State::Master {
            self.hand_over(&mut lp, &mut buf).await;
        }
        self.step(&mut lp, |m| m.shutdown()).await;
        // Whatever happened, leave no VIP behind.
        if lp.vip_held {
            self.release_vip(&mut lp).await;
        }
        drop(lp.notifier.take());
        if let Some(t) = notify_task {
            let _ = tokio::time::timeout(Duration::from_secs(2), t).await;
        }
        info!("vrrp stopped");
        self.hook
    }

    /// A graceful stop of the master: say priority 0 (RFC 5798 §6.4.3) but keep the VIP
    /// and its listener until a peer has taken over — its advert is heard — and its
    /// gratuitous ARP has had a moment to reach the clients; only then let go. A client
    /// meanwhile reaches one of the two, never neither: the hand-over fails no request.
    /// Bounded by [`HAND_OVER_WAIT`] (no peer, or none that answers).
    async fn hand_over(&mut self, lp: &mut Loop, buf: &mut [u8]) {
        self.transport
            .send(&self.machine.advert(0), &self.stats)
            .await;
        let deadline = Instant::now() + HAND_OVER_WAIT;
        let taken = loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break false,
                got = self.transport.recv(buf) => match got {
                    Ok((from, adv)) if adv.priority > 0 && adv.vrid == self.machine.config().vrid => {
                        info!(%from, priority = adv.priority, "vrrp: a peer took over; letting the VIP go");
                        break true;
                    }
                    other => self.received(lp, other).await,
                },
            }
        };
        if taken {
            tokio::time::sleep(HAND_OVER_GRACE).await;
        } else {
            info!("vrrp: no peer took over within {HAND_OVER_WAIT:?}; letting the VIP go");
        }
    }

    async fn received(&mut self, lp: &mut Loop, got: Result<(Ipv4Addr, crate::Advert), RecvError>) {
        let t = now();
        match got {
            Ok((from, adv)) => {
                let before = self.machine.state();
                match self.machine.receive(t, from, &adv) {
                    Ok(mut actions) => {
                        self.stats.adverts_received.fetch_add(1, Ordering::Relaxed);
                        // Yielding to a higher-priority master (preemption): keep the
                        // VIP a moment, until its gratuitous ARP has reached the clients,
                        // so none of them finds neither of the two.
                        let yielded = before == State::Master
                            && self.machine.state() == State::Backup
                            && matches!(self.vip, VipMode::Interface(_));
                        if yielded && actions.contains(&Action::ReleaseVip) {
                            actions.retain(|a| *a != Action::ReleaseVip);
                            lp.release_at = Some(Instant::now() + HAND_OVER_GRACE);
                        }
                        self.after(lp, before, actions).await;
                    }
                    Err(why) => match RejectReason::of_machine(&why) {
                        Some(reason) => self.rejected(lp, reason, &why.to_string()),
                        None => debug!(%from, %why, "vrrp advert ignored"),
                    },
                }
            }
            Err(e) => match e.reason() {
                Some(reason) => self.rejected(lp, reason, &e.to_string()),
                // ICMP port-unreachable from a dead peer surfaces here on Linux.
                None => debug!(error = %e, "vrrp socket"),
            },
        }
    }

    fn rejected(&self, lp: &mut Loop, reason: RejectReason, what: &str) {
        self.stats.reject(reason);
        if let Some(suppressed) = lp.reject_log.admit(reason, now()) {
            if suppressed > 0 {
                warn!(
                    reason = reason.as_str(),
                    suppressed,
                    "vrrp datagram rejected: {what} ({suppressed} more of this kind since the last line)"
                );
            } else {
                warn!(reason = reason.as_str(), "vrrp datagram rejected: {what}");
            }
        }
    }

    async fn recompute_health(&mut self, lp: &mut Loop) {
        let vip_ok = lp.vip_fault_until.is_none();
        let healthy = lp.tracked.is_none() && vip_ok;
        if healthy {
            self.stats.set_fault(None);
        } else if let Some(why) = &lp.tracked {
            self.stats.set_fault(Some(why.clone()));
        }
        self.step(lp, |m| m.set_healthy(now(), healthy)).await;
    }

    /// Calls the machine, reports a state change, then carries out the actions.
    async fn step(&mut self, lp: &mut Loop, call: impl FnOnce(&mut Machine) -> Vec<Action>) {
        let before = self.machine.state();
        let actions = call(&mut self.machine);
        self.after(lp, before, actions).await;
    }

    async fn after(&mut self, lp: &mut Loop, before: State, actions: Vec<Action>) {
        self.report(lp, before);
        let mut queue: VecDeque<Action> = actions.into();
        while let Some(action) = queue.pop_front() {
            match action {
                Action::SendAdvert { priority } => {
                    self.transport
                        .send(&self.machine.advert(priority), &self.stats)
                        .await;
                }
                Action::TakeVip => {
                    if let Err(why) = self.take_vip(lp).await {
                        queue.extend(self.vip_failed(lp, &format!("cannot take the VIP: {why}")));
                    }
                }
                Action::ReleaseVip => self.release_vip(lp).await,
                Action::Announce => self.announce(lp, "a lower-priority master was heard"),
            }
        }
    }

    /// The VIP could not be taken or kept: count it, go to FAULT (the returned actions
    /// hand it over) and take part again after `vip_retry`.
    fn vip_failed(&mut self, lp: &mut Loop, why: &str) -> Vec<Action> {
        self.stats.vip_failures.fetch_add(1, Ordering::Relaxed);
        error!(error = why, retry_in = ?self.vip_retry, "vrrp: VIP failure; handing it over (FAULT)");
        self.stats.set_fault(Some(why.to_string()));
        lp.vip_fault_until = Some(Instant::now() + self.vip_retry);
        let before = self.machine.state();
        let more = self.machine.set_healthy(now(), false);
        self.report(lp, before);
        more
    }

    async fn refresh_vip(&mut self, lp: &mut Loop) {
        if !lp.vip_held || self.machine.state() != State::Master {
            return;
        }
        let VipMode::Interface(v) = &self.vip else {
            return;
        };
        match v.add().await {
            Ok(()) => lp.refresh_at = Some(Instant::now() + VIP_REFRESH),
            Err(e) => {
                let more = self.vip_failed(lp, &format!("cannot refresh the VIP: {e}"));
                let state = self.machine.state();
                self.after(lp, state, more).await;
            }
        }
    }

    /// Logs, counts and notifies a state change (in this order, one at a time).
    fn report(&self, lp: &Loop, before: State) {
        let state = self.machine.state();
        if state == before {
            return;
        }
        let priority = self.machine.effective_priority();
        match state {
            State::Fault => warn!(
                from = before.as_str(),
                reason = self.stats.fault().unwrap_or_default(),
                "vrrp: FAULT"
            ),
            _ => info!(
                from = before.as_str(),
                to = state.as_str(),
                priority,
                "vrrp: state change"
            ),
        }
        self.stats.transition(state);
        if let Some(n) = &lp.notifier {
            n.push(Event { state, priority });
        }
    }

    async fn take_vip(&mut self, lp: &mut Loop) -> Result<(), String> {
        lp.release_at = None;
        if let VipMode::Interface(v) = &self.vip {
            v.add().await.map_err(|e| e.to_string())?;
            lp.vip_held = true;
            lp.refresh_at = Some(Instant::now() + VIP_REFRESH);
            info!(vip = %v.vip, prefix = v.prefix, interface = %v.iface.name, "vrrp: VIP added");
        }
        self.hook.take().map_err(|e| e.to_string())?;
        lp.vip_held = true;
        info!("vrrp: MASTER, serving the VIP");
        if matches!(self.vip, VipMode::Interface(_)) {
            lp.last_announce = None;
            self.announce(lp, "new master");
            lp.second_burst_at = Some(Instant::now() + garp::SECOND_BURST_AFTER);
        }
        Ok(())
    }

    async fn release_vip(&mut self, lp: &mut Loop) {
        lp.release_at = None;
        self.hook.release();
        lp.second_burst_at = None;
        lp.refresh_at = None;
        if let VipMode::Interface(v) = &self.vip {
            match v.netlink.remove(v.iface.index, v.vip).await {
                Ok(_) => info!(vip = %v.vip, interface = %v.iface.name, "vrrp: VIP removed"),
                Err(e) => error!(vip = %v.vip, error = %e, "vrrp: cannot remove the VIP"),
            }
        }
        lp.vip_held = false;
        info!("vrrp: released the VIP");
    }

    fn announce(&self, lp: &mut Loop, why: &str) {
        let VipMode::Interface(v) = &self.vip else {
            return;
        };
        let t = Instant::now();
        if lp
            .last_announce
            .is_some_and(|last| t.duration_since(last) < ANNOUNCE_EVERY)
        {
            return;
        }
        lp.last_announce = Some(t);
        match v.garp.burst(v.iface.mac, v.vip) {
            Ok(n) => {
                self.stats.garp_sent.fetch_add(n as u64, Ordering::Relaxed);
                debug!(vip = %v.vip, frames = n, why, "gratuitous ARP sent");
            }
            Err(e) => warn!(vip = %v.vip, error = %e, "gratuitous ARP not sent"),
        }
    }
}
