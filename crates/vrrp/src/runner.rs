//! The I/O edge of VRRP: the UDP unicast transport of loopback mode, and the task that
//! drives a [`Machine`] from sockets and the clock.
//!
//! In loopback mode the VRRPv3 message travels as the payload of a UDP datagram between
//! the lb nodes' own addresses. The bytes are exactly RFC 5798's, checksum included; the
//! pseudo-header uses the datagram's source and destination addresses, so the receiver
//! verifies it against the address the datagram really came from.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

use tokio::net::UdpSocket;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::machine::{Action, Machine, State};
use crate::packet::{Advert, DecodeError};

/// Counters a node exports in `/metrics`.
#[derive(Debug, Default)]
pub struct Stats {
    /// Adverts sent (per peer).
    pub adverts_sent: AtomicU64,
    /// Adverts accepted.
    pub adverts_received: AtomicU64,
    /// Datagrams rejected (bad packet, unknown sender, other VRID, wrong addresses).
    pub adverts_rejected: AtomicU64,
    /// Times this node became master.
    pub became_master: AtomicU64,
    /// Current state: 0 initialize, 1 backup, 2 master.
    pub state: AtomicU8,
}

impl Stats {
    fn set_state(&self, s: State) {
        let v = match s {
            State::Initialize => 0,
            State::Backup => 1,
            State::Master => 2,
        };
        self.state.store(v, Ordering::Relaxed);
    }

    /// The current state's name (`initialize`, `backup`, `master`).
    pub fn state_name(&self) -> &'static str {
        match self.state.load(Ordering::Relaxed) {
            2 => State::Master.as_str(),
            1 => State::Backup.as_str(),
            _ => State::Initialize.as_str(),
        }
    }
}

/// What the lb does when it gains or loses the VIP.
pub trait VipHook: Send {
    /// Start serving on the VIP.
    fn take(&mut self);
    /// Stop serving on the VIP.
    fn release(&mut self);
}

/// Why a datagram was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum RecvError {
    /// Socket error.
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    /// A sender that is not a configured peer.
    #[error("datagram from {0}, which is not a VRRP peer")]
    UnknownSender(SocketAddr),
    /// Malformed advert.
    #[error("malformed advert from {from}: {err}")]
    Decode {
        /// Sender.
        from: Ipv4Addr,
        /// What is wrong.
        err: DecodeError,
    },
}

/// VRRP over UDP unicast between a fixed set of peers.
#[derive(Debug)]
pub struct UdpTransport {
    socket: UdpSocket,
    local: SocketAddrV4,
    peers: Vec<SocketAddrV4>,
}

impl UdpTransport {
    /// Binds `local` and talks to `peers`.
    pub async fn bind(
        local: SocketAddrV4,
        peers: Vec<SocketAddrV4>,
    ) -> std::io::Result<UdpTransport> {
        let socket = UdpSocket::bind(local).await?;
        Ok(UdpTransport {
            socket,
            local,
            peers,
        })
    }

    /// Sends `adv` to every peer, each with the checksum for its own destination.
    pub async fn send(&self, adv: &Advert, stats: &Stats) {
        for peer in &self.peers {
            let bytes = adv.encode(*self.local.ip(), *peer.ip());
            match self.socket.send_to(&bytes, peer).await {
                Ok(_) => {
                    stats.adverts_sent.fetch_add(1, Ordering::Relaxed);
                }
                // A peer that is down refuses with ICMP; that is normal, not an error.
                Err(e) => debug!(%peer, error = %e, "advert not delivered"),
            }
        }
    }

    /// Receives and decodes one advert.
    pub async fn recv(&self, buf: &mut [u8]) -> Result<(Ipv4Addr, Advert), RecvError> {
        let (n, from) = self.socket.recv_from(buf).await?;
        let src = match from {
            SocketAddr::V4(v4) if self.peers.iter().any(|p| p.ip() == v4.ip()) => *v4.ip(),
            other => return Err(RecvError::UnknownSender(other)),
        };
        let adv = Advert::decode(&buf[..n], src, *self.local.ip())
            .map_err(|err| RecvError::Decode { from: src, err })?;
        Ok((src, adv))
    }
}

/// Runs `machine` until `shutdown` turns true; then a master sends priority 0 and
/// releases the VIP before this returns the hook (to let it finish draining).
pub async fn run<H: VipHook>(
    mut machine: Machine,
    transport: UdpTransport,
    mut hook: H,
    stats: Arc<Stats>,
    mut shutdown: watch::Receiver<bool>,
) -> H {
    let mut buf = [0u8; 1500];
    let actions = machine.startup(tokio::time::Instant::now().into_std());
    apply(&machine, &transport, &mut hook, &stats, actions).await;
    stats.set_state(machine.state());
    info!(
        state = machine.state().as_str(),
        priority = machine.config().priority,
        "vrrp started"
    );
    loop {
        let deadline = machine.deadline().map(tokio::time::Instant::from_std);
        let actions = tokio::select! {
            _ = shutdown.changed() => break,
            _ = sleep_until(deadline) => machine.poll(std::time::Instant::now()),
            got = transport.recv(&mut buf) => match got {
                Ok((from, adv)) => match machine.receive(std::time::Instant::now(), from, &adv) {
                    Ok(actions) => {
                        stats.adverts_received.fetch_add(1, Ordering::Relaxed);
                        actions
                    }
                    Err(why) => {
                        stats.adverts_rejected.fetch_add(1, Ordering::Relaxed);
                        warn!(%from, %why, "vrrp advert rejected");
                        Vec::new()
                    }
                },
                Err(RecvError::Io(e)) => {
                    // ICMP port-unreachable from a dead peer surfaces here on Linux.
                    debug!(error = %e, "vrrp socket");
                    Vec::new()
                }
                Err(e) => {
                    stats.adverts_rejected.fetch_add(1, Ordering::Relaxed);
                    warn!(error = %e, "vrrp datagram rejected");
                    Vec::new()
                }
            },
        };
        let before = machine.state();
        apply(&machine, &transport, &mut hook, &stats, actions).await;
        if machine.state() != before || stats.state.load(Ordering::Relaxed) == 0 {
            stats.set_state(machine.state());
        }
    }
    let actions = machine.shutdown();
    apply(&machine, &transport, &mut hook, &stats, actions).await;
    stats.set_state(machine.state());
    info!("vrrp stopped");
    hook
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

async fn apply(
    machine: &Machine,
    transport: &UdpTransport,
    hook: &mut impl VipHook,
    stats: &Stats,
    actions: Vec<Action>,
) {
    for action in actions {
        match action {
            Action::SendAdvert { priority } => {
                transport.send(&machine.advert(priority), stats).await
            }
            Action::TakeVip => {
                stats.became_master.fetch_add(1, Ordering::Relaxed);
                info!("vrrp: MASTER, taking the VIP");
                hook.take();
            }
            Action::ReleaseVip => {
                info!("vrrp: leaving MASTER, releasing the VIP");
                hook.release();
            }
        }
    }
    stats.set_state(machine.state());
}
