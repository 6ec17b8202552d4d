//! How adverts travel: the [`Transport`] a runner drives, the UDP unicast transport of
//! loopback mode, and an in-memory pair for tests of the runner under paused time.
//!
//! A transport owns the wire checks that need the datagram's envelope (who sent it,
//! from which port, with which TTL, to which address, with which tag); the machine
//! checks what is inside (VRID, addresses, sender among the peers). Each refusal
//! carries a [`RejectReason`] for the metrics.

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::Ordering;

use tokio::net::UdpSocket;
use tokio::sync::{Mutex, mpsc};
use tracing::debug;

use crate::auth::{AuthError, Key};
use crate::packet::{Advert, DecodeError};
use crate::stats::{RejectReason, Stats};

/// Why a received datagram was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum RecvError {
    /// Socket error (not the sender's fault; not counted as a rejection).
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    /// Our own advert, looped back: ignored, not counted.
    #[error("our own advert")]
    Own,
    /// A sender (address, or in loopback mode address and port) that is not a peer.
    #[error("datagram from {0}, which is not a VRRP peer")]
    UnknownSender(SocketAddr),
    /// RFC 5798 §7.1: the IP TTL must be 255.
    #[error("advert from {from} with TTL {ttl}, must be 255")]
    Ttl {
        /// Sender.
        from: Ipv4Addr,
        /// The TTL it arrived with.
        ttl: u8,
    },
    /// Sent neither to the VRRP group nor to us.
    #[error("advert from {from} to {dst}, neither 224.0.0.18 nor this node")]
    Destination {
        /// Sender.
        from: Ipv4Addr,
        /// Destination.
        dst: Ipv4Addr,
    },
    /// Not an IPv4 protocol-112 packet.
    #[error("not a VRRP packet: {0}")]
    NotVrrp(String),
    /// Malformed advert.
    #[error("malformed advert from {from}: {err}")]
    Decode {
        /// Sender.
        from: Ipv4Addr,
        /// What is wrong.
        err: DecodeError,
    },
    /// Authentication on and the tag missing or wrong.
    #[error("advert from {from}: {err}")]
    Auth {
        /// Sender.
        from: Ipv4Addr,
        /// What is wrong.
        err: AuthError,
    },
}

impl RecvError {
    /// The metrics reason, or `None` for what is not a rejected datagram.
    pub fn reason(&self) -> Option<RejectReason> {
        Some(match self {
            RecvError::Io(_) | RecvError::Own => return None,
            RecvError::UnknownSender(_) => RejectReason::Source,
            RecvError::Ttl { .. } => RejectReason::Ttl,
            RecvError::Destination { .. } => RejectReason::Destination,
            RecvError::NotVrrp(_) => RejectReason::Malformed,
            RecvError::Decode {
                err: DecodeError::Checksum { .. },
                ..
            } => RejectReason::Checksum,
            RecvError::Decode { .. } => RejectReason::Malformed,
            RecvError::Auth { .. } => RejectReason::Auth,
        })
    }
}

/// Carries adverts between the lb nodes.
pub trait Transport {
    /// Sends `adv` to every destination (the group, or each peer).
    fn send(&self, adv: &Advert, stats: &Stats) -> impl Future<Output = ()>;
    /// Receives one datagram and returns its verified sender and advert.
    fn recv(&self, buf: &mut [u8]) -> impl Future<Output = Result<(Ipv4Addr, Advert), RecvError>>;
}

/// Encodes `adv` for `src` → `dst`, sealed when a key is set.
pub(crate) fn encode(adv: &Advert, key: Option<&Key>, src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    let msg = adv.encode(src, dst);
    match key {
        Some(k) => k.seal(src, dst, msg),
        None => msg,
    }
}

/// Checks the tag (when a key is set) and decodes the advert in `payload`.
pub(crate) fn decode(
    payload: &[u8],
    key: Option<&Key>,
    src: Ipv4Addr,
    dst: Ipv4Addr,
) -> Result<Advert, RecvError> {
    let msg = match key {
        Some(k) => k
            .open(src, dst, payload)
            .map_err(|err| RecvError::Auth { from: src, err })?,
        None => payload,
    };
    Advert::decode(msg, src, dst).map_err(|err| RecvError::Decode { from: src, err })
}

/// VRRP over UDP unicast between a fixed set of peers (loopback mode).
///
/// A datagram counts only if it comes from a peer's address *and* the VRRP port: on a
/// shared machine any user can bind a peer's 127.x address on another port, but not
/// the port the peer's own lb holds.
#[derive(Debug)]
pub struct UdpTransport {
    socket: UdpSocket,
    local: SocketAddrV4,
    peers: Vec<SocketAddrV4>,
    key: Option<Key>,
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
            key: None,
        })
    }

    /// Authenticates every advert with `key` (and refuses those without its tag).
    pub fn with_key(mut self, key: Option<Key>) -> UdpTransport {
        self.key = key;
        self
    }
}

impl Transport for UdpTransport {
    async fn send(&self, adv: &Advert, stats: &Stats) {
        for peer in &self.peers {
            let bytes = encode(adv, self.key.as_ref(), *self.local.ip(), *peer.ip());
            match self.socket.send_to(&bytes, peer).await {
                Ok(_) => {
                    stats.adverts_sent.fetch_add(1, Ordering::Relaxed);
                }
                // A peer that is down refuses with ICMP; that is normal, not an error.
                Err(e) => debug!(%peer, error = %e, "advert not delivered"),
            }
        }
    }

    async fn recv(&self, buf: &mut [u8]) -> Result<(Ipv4Addr, Advert), RecvError> {
        let (n, from) = self.socket.recv_from(buf).await?;
        let src = match from {
            SocketAddr::V4(v4) if self.peers.contains(&v4) => *v4.ip(),
            other => return Err(RecvError::UnknownSender(other)),
        };
        let adv = decode(&buf[..n], self.key.as_ref(), src, *self.local.ip())?;
        Ok((src, adv))
    }
}

/// An in-memory transport: what one end sends, the other receives, encoded and
/// checked as on the wire. For tests of the runner under `tokio::time::pause()`, where
/// real sockets would let the paused clock jump ahead of packets in flight.
#[derive(Debug)]
pub struct ChannelTransport {
    local: Ipv4Addr,
    peer: Ipv4Addr,
    tx: mpsc::UnboundedSender<Vec<u8>>,
    rx: Mutex<mpsc::UnboundedReceiver<Vec<u8>>>,
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl ChannelTransport {
    /// Two connected ends with addresses `a` and `b`.
    pub fn pair(a: Ipv4Addr, b: Ipv4Addr) -> (ChannelTransport, ChannelTransport) {
        let (tx_ab, rx_ab) = mpsc::unbounded_channel();
        let (tx_ba, rx_ba) = mpsc::unbounded_channel();
        let up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        (
            ChannelTransport {
                local: a,
                peer: b,
                tx: tx_ab,
                rx: Mutex::new(rx_ba),
                up: up.clone(),
            },
            ChannelTransport {
                local: b,
                peer: a,
                tx: tx_ba,
                rx: Mutex::new(rx_ab),
                up,
            },
        )
    }

    /// A switch that cuts (false) or restores (true) the link both ways.
    pub fn link(&self) -> std::sync::Arc<std::sync::atomic::AtomicBool> {
        self.up.clone()
    }
}

impl Transport for ChannelTransport {
    async fn send(&self, adv: &Advert, stats: &Stats) {
        if self.up.load(Ordering::Relaxed)
            && self
                .tx
                .send(encode(adv, None, self.local, self.peer))
                .is_ok()
        {
            stats.adverts_sent.fetch_add(1, Ordering::Relaxed);
        }
    }

    async fn recv(&self, buf: &mut [u8]) -> Result<(Ipv4Addr, Advert), RecvError> {
        let _ = buf;
        let mut rx = self.rx.lock().await;
        match rx.recv().await {
            Some(bytes) => Ok((self.peer, decode(&bytes, None, self.peer, self.local)?)),
            None => std::future::pending().await,
        }
    }
}
