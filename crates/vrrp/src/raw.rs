//! VRRPv3 on the wire (isolated and hosts modes): IP protocol 112 on raw IPv4 sockets,
//! to the group 224.0.0.18 or, with `vrrp.unicast`, to each peer — what keepalived
//! sends and receives.
//!
//! Two sockets, as keepalived has: the sending one is bound to the node's address (the
//! source of every advert and of the checksum's pseudo-header), with TTL 255, TOS 0xc0
//! (CS6), the interface as multicast interface and multicast loop off; the receiving
//! one is bound to the interface only (a raw socket bound to an address would drop
//! packets sent to the group) and joins 224.0.0.18 there.
//!
//! Receive checks, in order (RFC 5798 §7.1): IPv4 protocol 112, TTL 255, destination
//! the group or our address, source one of the configured peers, then the tag (with
//! `authenticate`) and the VRRPv3 checksum over the pseudo-header of the real source
//! and destination. The Ethernet source MAC is not checked: a raw IP socket never sees
//! it, and keepalived sends from the interface's MAC where RFC 5798 wants the virtual
//! one.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::Ordering;

use socket2::{Domain, InterfaceIndexOrAddress, Protocol, SockAddr, Socket, Type};
use tokio::net::UdpSocket;
use tracing::debug;

use crate::auth::Key;
use crate::packet::{Advert, IPPROTO_VRRP, parse_ipv4};
use crate::transport::{RecvError, Transport, decode, encode};

/// The VRRP multicast group (RFC 5798 §5.1.1.2).
pub const VRRP_GROUP: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 18);
/// TTL of every advert, and the only TTL accepted (RFC 5798 §5.1.1.3, §7.1).
pub const VRRP_TTL: u32 = 255;
/// IP TOS of adverts: DSCP CS6 (internetwork control), as keepalived sends.
pub const VRRP_TOS: u32 = 0xc0;

/// Where a raw transport lives and whom it talks to.
#[derive(Debug, Clone)]
pub struct RawConfig {
    /// This node's address (the advert's source).
    pub local: Ipv4Addr,
    /// The interface that holds it.
    pub ifindex: u32,
    /// Its name (for `SO_BINDTODEVICE`).
    pub ifname: String,
    /// The other lb nodes' addresses: the only accepted sources.
    pub peers: Vec<Ipv4Addr>,
    /// Send to each peer instead of the group.
    pub unicast: bool,
    /// Authenticate adverts.
    pub key: Option<Key>,
}

/// VRRP as IP protocol 112.
///
/// The raw sockets are driven through tokio's `UdpSocket`, which is only a datagram
/// socket's `sendto`/`recvfrom` on the reactor: on a raw socket the port is ignored
/// when sending, and each datagram received is a whole IPv4 packet, header included.
#[derive(Debug)]
pub struct RawTransport {
    send: UdpSocket,
    recv: UdpSocket,
    cfg: RawConfig,
}

fn vrrp_socket() -> std::io::Result<Socket> {
    Socket::new(
        Domain::IPV4,
        Type::RAW,
        Some(Protocol::from(i32::from(IPPROTO_VRRP))),
    )
}

impl RawTransport {
    /// Opens both sockets (needs `CAP_NET_RAW` and a tokio runtime). The sockets belong
    /// to the network namespace of the calling thread.
    pub fn open(cfg: RawConfig) -> std::io::Result<RawTransport> {
        let send = vrrp_socket()?;
        send.set_ttl(VRRP_TTL)?;
        send.set_multicast_ttl_v4(VRRP_TTL)?;
        send.set_tos(VRRP_TOS)?;
        send.set_multicast_loop_v4(false)?;
        send.set_multicast_if_v4(&cfg.local)?;
        send.bind_device(Some(cfg.ifname.as_bytes()))?;
        send.bind(&SockAddr::from(SocketAddrV4::new(cfg.local, 0)))?;
        send.set_nonblocking(true)?;

        let recv = vrrp_socket()?;
        recv.bind_device(Some(cfg.ifname.as_bytes()))?;
        recv.join_multicast_v4_n(&VRRP_GROUP, &InterfaceIndexOrAddress::Index(cfg.ifindex))?;
        recv.set_nonblocking(true)?;
        Ok(RawTransport {
            send: UdpSocket::from_std(send.into())?,
            recv: UdpSocket::from_std(recv.into())?,
            cfg,
        })
    }

    fn destinations(&self) -> Vec<Ipv4Addr> {
        if self.cfg.unicast {
            self.cfg.peers.clone()
        } else {
            vec![VRRP_GROUP]
        }
    }
}

/// The checks on a received IPv4 packet carrying an advert: the pure part of
/// [`RawTransport`]'s receive path.
pub fn accept_packet(
    pkt: &[u8],
    local: Ipv4Addr,
    peers: &[Ipv4Addr],
    key: Option<&Key>,
) -> Result<(Ipv4Addr, Advert), RecvError> {
    let ip = parse_ipv4(pkt).ok_or_else(|| RecvError::NotVrrp("bad IPv4 header".into()))?;
    if ip.protocol != IPPROTO_VRRP {
        return Err(RecvError::NotVrrp(format!("IP protocol {}", ip.protocol)));
    }
    if ip.src == local {
        return Err(RecvError::Own);
    }
    if u32::from(ip.ttl) != VRRP_TTL {
        return Err(RecvError::Ttl {
            from: ip.src,
            ttl: ip.ttl,
        });
    }
    if ip.dst != VRRP_GROUP && ip.dst != local {
        return Err(RecvError::Destination {
            from: ip.src,
            dst: ip.dst,
        });
    }
    if !peers.contains(&ip.src) {
        return Err(RecvError::UnknownSender(SocketAddr::from((ip.src, 0))));
    }
    let adv = decode(ip.payload, key, ip.src, ip.dst)?;
    Ok((ip.src, adv))
}

impl Transport for RawTransport {
    async fn send(&self, adv: &Advert, stats: &crate::Stats) {
        for dst in self.destinations() {
            let bytes = encode(adv, self.cfg.key.as_ref(), self.cfg.local, dst);
            match self.send.send_to(&bytes, SocketAddrV4::new(dst, 0)).await {
                Ok(_) => {
                    stats.adverts_sent.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => debug!(%dst, error = %e, "advert not sent"),
            }
        }
    }

    async fn recv(&self, buf: &mut [u8]) -> Result<(Ipv4Addr, Advert), RecvError> {
        let (n, _) = self.recv.recv_from(buf).await?;
        let pkt = buf.get(..n).unwrap_or_default();
        accept_packet(pkt, self.cfg.local, &self.cfg.peers, self.cfg.key.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::RecvError;

    const ME: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 2);
    const PEER: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 3);

    /// An IPv4 packet as the kernel hands it to a raw socket.
    fn ip_packet(src: Ipv4Addr, dst: Ipv4Addr, ttl: u8, proto: u8, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x45, 0xc0];
        p.extend_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
        p.extend_from_slice(&[0, 1, 0, 0, ttl, proto, 0, 0]);
        p.extend_from_slice(&src.octets());
        p.extend_from_slice(&dst.octets());
        p.extend_from_slice(payload);
        p
    }

    fn adv() -> Advert {
        Advert {
            vrid: 9,
            priority: 100,
            max_adver_int_cs: 100,
            addresses: vec![Ipv4Addr::new(10, 1, 0, 100)],
        }
    }

    #[test]
    fn receive_checks_follow_rfc_5798_section_7_1() {
        let peers = [PEER];
        let ok = ip_packet(PEER, VRRP_GROUP, 255, 112, &adv().encode(PEER, VRRP_GROUP));
        assert_eq!(
            accept_packet(&ok, ME, &peers, None).expect("accepted"),
            (PEER, adv())
        );
        let unicast = ip_packet(PEER, ME, 255, 112, &adv().encode(PEER, ME));
        assert!(
            accept_packet(&unicast, ME, &peers, None).is_ok(),
            "unicast to us"
        );

        let ttl = ip_packet(PEER, VRRP_GROUP, 254, 112, &adv().encode(PEER, VRRP_GROUP));
        let e = accept_packet(&ttl, ME, &peers, None).expect_err("ttl");
        assert!(
            matches!(e, RecvError::Ttl { ttl: 254, .. }),
            "7.1: MUST verify that the IP TTL is 255: {e}"
        );
        assert_eq!(e.reason(), Some(crate::RejectReason::Ttl));

        let stranger = Ipv4Addr::new(10, 1, 0, 66);
        let e = accept_packet(
            &ip_packet(
                stranger,
                VRRP_GROUP,
                255,
                112,
                &adv().encode(stranger, VRRP_GROUP),
            ),
            ME,
            &peers,
            None,
        )
        .expect_err("stranger");
        assert_eq!(e.reason(), Some(crate::RejectReason::Source), "{e}");

        let other = Ipv4Addr::new(10, 1, 0, 4);
        let e = accept_packet(
            &ip_packet(PEER, other, 255, 112, &adv().encode(PEER, other)),
            ME,
            &peers,
            None,
        )
        .expect_err("dst");
        assert_eq!(e.reason(), Some(crate::RejectReason::Destination), "{e}");

        // Checksum computed for another destination than the packet's.
        let e = accept_packet(
            &ip_packet(PEER, VRRP_GROUP, 255, 112, &adv().encode(PEER, ME)),
            ME,
            &peers,
            None,
        )
        .expect_err("checksum");
        assert_eq!(e.reason(), Some(crate::RejectReason::Checksum), "{e}");

        let e = accept_packet(
            &ip_packet(PEER, VRRP_GROUP, 255, 17, &[0; 8]),
            ME,
            &peers,
            None,
        )
        .expect_err("udp");
        assert_eq!(e.reason(), Some(crate::RejectReason::Malformed));
        assert!(matches!(
            accept_packet(&ok, PEER, &[ME], None),
            Err(RecvError::Own)
        ));
        // Truncated headers of every length are errors, never panics.
        for n in 0..ok.len() {
            assert!(accept_packet(&ok[..n], ME, &peers, None).is_err());
        }
    }

    #[test]
    fn with_a_key_only_tagged_adverts_pass() {
        let key = Key::new([3; 32]);
        let peers = [PEER];
        let plain = ip_packet(PEER, VRRP_GROUP, 255, 112, &adv().encode(PEER, VRRP_GROUP));
        let e = accept_packet(&plain, ME, &peers, Some(&key)).expect_err("untagged");
        assert_eq!(e.reason(), Some(crate::RejectReason::Auth), "{e}");
        let sealed = key.seal(PEER, VRRP_GROUP, adv().encode(PEER, VRRP_GROUP));
        let tagged = ip_packet(PEER, VRRP_GROUP, 255, 112, &sealed);
        assert_eq!(
            accept_packet(&tagged, ME, &peers, Some(&key))
                .expect("tagged")
                .1,
            adv()
        );
        assert!(
            accept_packet(&tagged, ME, &peers, None).is_err(),
            "a tag where none is expected is a malformed advert"
        );
    }
}
