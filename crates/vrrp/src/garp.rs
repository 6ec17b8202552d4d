//! Gratuitous ARP: how a new master tells the segment that the VIP has moved.
//!
//! The frame is what keepalived sends (see `tests/keepalived_vrrp3_advert.hex`): an ARP
//! request, broadcast, from the interface's MAC, with sender IP = target IP = VIP and
//! target MAC ff:ff:ff:ff:ff:ff. Linux clients update an existing ARP entry from it.
//! [`arp_announcement`] builds it (pure); [`Garp`] sends it on an `AF_PACKET` socket
//! bound to the interface.

use std::net::Ipv4Addr;
use std::time::Duration;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// Frames in one burst (keepalived's `garp_master_repeat`).
pub const BURST: usize = 5;
/// Delay of the second burst after becoming master (keepalived's `garp_master_delay`).
pub const SECOND_BURST_AFTER: Duration = Duration::from_secs(5);

const ETH_P_ARP: u16 = 0x0806;
const BROADCAST: [u8; 6] = [0xff; 6];

/// Length of the frame (without the Ethernet padding the driver adds).
pub const FRAME_LEN: usize = 42;

/// The gratuitous ARP request announcing `ip` at `mac`.
pub fn arp_announcement(mac: [u8; 6], ip: Ipv4Addr) -> [u8; FRAME_LEN] {
    let mut f = [0u8; FRAME_LEN];
    f[0..6].copy_from_slice(&BROADCAST);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
    f[14..16].copy_from_slice(&1u16.to_be_bytes()); // hardware: Ethernet
    f[16..18].copy_from_slice(&0x0800u16.to_be_bytes()); // protocol: IPv4
    f[18] = 6;
    f[19] = 4;
    f[20..22].copy_from_slice(&1u16.to_be_bytes()); // request
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&ip.octets());
    f[32..38].copy_from_slice(&BROADCAST);
    f[38..42].copy_from_slice(&ip.octets());
    f
}

/// Whether `frame` is a gratuitous ARP announcing `ip` (sender IP = target IP = `ip`);
/// returns the sender MAC.
pub fn is_announcement(frame: &[u8], ip: Ipv4Addr) -> Option<[u8; 6]> {
    let f = frame.get(..FRAME_LEN)?;
    let ok = f[12..14] == ETH_P_ARP.to_be_bytes()
        && f[20..22] == 1u16.to_be_bytes()
        && f[28..32] == ip.octets()
        && f[38..42] == ip.octets();
    ok.then(|| <[u8; 6]>::try_from(&f[22..28]).ok()).flatten()
}

/// An `AF_PACKET` socket bound to one interface, for ARP frames.
#[derive(Debug)]
pub struct Garp {
    socket: Socket,
}

/// The `sockaddr_ll` of interface `ifindex` for ARP frames.
#[allow(unsafe_code)]
fn link_address(ifindex: u32) -> std::io::Result<SockAddr> {
    use nix::libc;
    let ifindex = i32::try_from(ifindex)
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: `try_init` hands a zeroed `sockaddr_storage` (large enough and aligned for
    // any socket address, `sockaddr_ll` included) and its length; the closure writes a
    // fully initialised `sockaddr_ll` into it through a properly aligned pointer and
    // sets the length to exactly `size_of::<sockaddr_ll>()`, which is what `try_init`
    // requires of it.
    let ((), addr) = unsafe {
        SockAddr::try_init(|storage, len| {
            let ll = storage.cast::<libc::sockaddr_ll>();
            ll.write(libc::sockaddr_ll {
                sll_family: libc::AF_PACKET as u16,
                sll_protocol: ETH_P_ARP.to_be(),
                sll_ifindex: ifindex,
                sll_hatype: 0,
                sll_pkttype: 0,
                sll_halen: 6,
                sll_addr: [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0],
            });
            *len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            Ok(())
        })?
    };
    Ok(addr)
}

impl Garp {
    /// Opens the socket on interface `ifindex` (needs `CAP_NET_RAW`; lives in the
    /// calling thread's network namespace).
    pub fn open(ifindex: u32) -> std::io::Result<Garp> {
        let socket = Socket::new(
            Domain::PACKET,
            Type::RAW,
            Some(Protocol::from(i32::from(ETH_P_ARP.to_be()))),
        )?;
        socket.bind(&link_address(ifindex)?)?;
        socket.set_nonblocking(true)?;
        Ok(Garp { socket })
    }

    /// Sends one burst of [`BURST`] announcements; returns how many went out.
    pub fn burst(&self, mac: [u8; 6], ip: Ipv4Addr) -> std::io::Result<usize> {
        let frame = arp_announcement(mac, ip);
        let mut sent = 0;
        let mut last = None;
        for _ in 0..BURST {
            match self.socket.send(&frame) {
                Ok(_) => sent += 1,
                Err(e) => last = Some(e),
            }
        }
        match (sent, last) {
            (0, Some(e)) => Err(e),
            _ => Ok(sent),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ARP frames of the keepalived capture.
    fn keepalived_arps() -> Vec<Vec<u8>> {
        let text = include_str!("../tests/keepalived_vrrp3_advert.hex");
        let mut frames = Vec::new();
        let mut current: Option<Vec<u8>> = None;
        for line in text.lines() {
            if line.starts_with("## ") {
                if let Some(f) = current.take() {
                    frames.push(f);
                }
                if line.trim_end().ends_with("arp") {
                    current = Some(Vec::new());
                }
            } else if let (Some(f), Some((_, hex))) =
                (current.as_mut(), line.trim_start().split_once(": "))
                && !line.trim_start().starts_with('#')
            {
                f.extend(
                    hex.split_whitespace()
                        .filter_map(|h| u8::from_str_radix(h, 16).ok()),
                );
            }
        }
        frames.extend(current);
        frames
    }

    #[test]
    fn our_gratuitous_arp_is_keepalived_s_byte_for_byte() {
        let frames = keepalived_arps();
        assert_eq!(frames.len(), 2, "the capture has two gratuitous ARPs");
        let vip = Ipv4Addr::new(10, 77, 0, 10);
        for frame in frames {
            let mac = <[u8; 6]>::try_from(&frame[6..12]).expect("mac");
            assert_eq!(
                arp_announcement(mac, vip)[..],
                frame[..],
                "keepalived's frame: broadcast, request, spa = tpa = VIP, tha = ff:…:ff"
            );
            assert_eq!(is_announcement(&frame, vip), Some(mac));
            assert_eq!(is_announcement(&frame, Ipv4Addr::new(10, 77, 0, 11)), None);
        }
        assert_eq!(
            is_announcement(&[0; 10], vip),
            None,
            "short frames are no ARP"
        );
    }
}
