//! The VRRPv3 advertisement (RFC 5798 §5) for IPv4: encode, decode, checksum.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! |Version| Type  | Virtual Rtr ID|   Priority    |Count IPvX Addr|
//! |(rsvd) |     Max Adver Int     |          Checksum             |
//! |                       IPvX Address(es)                        |
//! ```
//!
//! The checksum covers an IPv4 pseudo-header (source, destination, zero, protocol 112,
//! VRRP length) followed by the message — unlike VRRPv2, which summed the message alone.
//! Pure functions, no I/O.

use std::net::Ipv4Addr;

/// IP protocol number of VRRP.
pub const IPPROTO_VRRP: u8 = 112;
/// The only version this codec speaks.
pub const VERSION: u8 = 3;
/// The only message type VRRPv3 defines.
pub const TYPE_ADVERTISEMENT: u8 = 1;
/// Length of the fixed header.
pub const HEADER_LEN: usize = 8;

/// A decoded advertisement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advert {
    /// Virtual router id.
    pub vrid: u8,
    /// Sender's priority; 0 means the master is leaving.
    pub priority: u8,
    /// Advertisement interval in centiseconds (12 bits).
    pub max_adver_int_cs: u16,
    /// The virtual addresses.
    pub addresses: Vec<Ipv4Addr>,
}

/// Why bytes are not a valid advertisement.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Fewer bytes than the header and address count need.
    #[error("truncated: {got} bytes, need {need}")]
    Truncated {
        /// Bytes received.
        got: usize,
        /// Bytes required.
        need: usize,
    },
    /// Not version 3.
    #[error("version {0}, expected 3")]
    Version(u8),
    /// Not an advertisement.
    #[error("type {0}, expected 1 (advertisement)")]
    Type(u8),
    /// No addresses (RFC 5798: the minimum is 1).
    #[error("address count is 0, expected at least 1")]
    NoAddresses,
    /// More bytes than the header announces.
    #[error("length {got} does not match {expected} announced by the address count")]
    Length {
        /// Bytes received.
        got: usize,
        /// Bytes the header announces.
        expected: usize,
    },
    /// Checksum wrong for the given source and destination.
    #[error("bad checksum {found:#06x}, expected {expected:#06x}")]
    Checksum {
        /// In the packet.
        found: u16,
        /// Computed.
        expected: u16,
    },
    /// The advertisement interval is zero.
    #[error("advertisement interval is 0")]
    ZeroInterval,
}

/// Internet checksum (RFC 1071) of the concatenation of `parts`.
fn internet_checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    let mut odd: Option<u8> = None;
    for part in parts {
        for &b in *part {
            match odd.take() {
                Some(hi) => sum += u32::from(u16::from_be_bytes([hi, b])),
                None => odd = Some(b),
            }
        }
    }
    if let Some(hi) = odd {
        sum += u32::from(u16::from_be_bytes([hi, 0]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn pseudo_header(src: Ipv4Addr, dst: Ipv4Addr, len: usize) -> [u8; 12] {
    let mut p = [0u8; 12];
    p[0..4].copy_from_slice(&src.octets());
    p[4..8].copy_from_slice(&dst.octets());
    p[9] = IPPROTO_VRRP;
    p[10..12].copy_from_slice(&(len as u16).to_be_bytes());
    p
}

/// The checksum `msg` (with its checksum field zeroed) must carry between `src` and `dst`.
pub fn checksum(msg: &[u8], src: Ipv4Addr, dst: Ipv4Addr) -> u16 {
    let ph = pseudo_header(src, dst, msg.len());
    let mut head = [0u8; HEADER_LEN];
    let n = msg.len().min(HEADER_LEN);
    head[..n].copy_from_slice(&msg[..n]);
    head[6] = 0;
    head[7] = 0;
    internet_checksum(&[&ph, &head[..n], msg.get(HEADER_LEN..).unwrap_or(&[])])
}

impl Advert {
    /// Encodes the message, with its checksum for the `src` → `dst` IPv4 pseudo-header.
    pub fn encode(&self, src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + 4 * self.addresses.len());
        out.push((VERSION << 4) | TYPE_ADVERTISEMENT);
        out.push(self.vrid);
        out.push(self.priority);
        out.push(self.addresses.len().min(255) as u8);
        out.extend_from_slice(&(self.max_adver_int_cs & 0x0fff).to_be_bytes());
        out.extend_from_slice(&[0, 0]);
        for a in self.addresses.iter().take(255) {
            out.extend_from_slice(&a.octets());
        }
        let c = checksum(&out, src, dst);
        out[6..8].copy_from_slice(&c.to_be_bytes());
        out
    }

    /// Decodes and verifies a message received from `src`, sent to `dst`.
    pub fn decode(msg: &[u8], src: Ipv4Addr, dst: Ipv4Addr) -> Result<Advert, DecodeError> {
        if msg.len() < HEADER_LEN {
            return Err(DecodeError::Truncated {
                got: msg.len(),
                need: HEADER_LEN,
            });
        }
        let version = msg[0] >> 4;
        if version != VERSION {
            return Err(DecodeError::Version(version));
        }
        let kind = msg[0] & 0x0f;
        if kind != TYPE_ADVERTISEMENT {
            return Err(DecodeError::Type(kind));
        }
        let count = usize::from(msg[3]);
        if count == 0 {
            return Err(DecodeError::NoAddresses);
        }
        let expected = HEADER_LEN + 4 * count;
        if msg.len() < expected {
            return Err(DecodeError::Truncated {
                got: msg.len(),
                need: expected,
            });
        }
        if msg.len() > expected {
            return Err(DecodeError::Length {
                got: msg.len(),
                expected,
            });
        }
        let found = u16::from_be_bytes([msg[6], msg[7]]);
        let computed = checksum(msg, src, dst);
        if found != computed {
            return Err(DecodeError::Checksum {
                found,
                expected: computed,
            });
        }
        let max_adver_int_cs = u16::from_be_bytes([msg[4], msg[5]]) & 0x0fff;
        if max_adver_int_cs == 0 {
            return Err(DecodeError::ZeroInterval);
        }
        let addresses = msg[HEADER_LEN..]
            .chunks_exact(4)
            .map(|c| Ipv4Addr::new(c[0], c[1], c[2], c[3]))
            .collect();
        Ok(Advert {
            vrid: msg[1],
            priority: msg[2],
            max_adver_int_cs,
            addresses,
        })
    }
}

/// The parts of an IPv4 packet that VRRP checks: addresses, TTL, protocol and payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ipv4View<'a> {
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// Time to live (VRRP requires 255).
    pub ttl: u8,
    /// Protocol number.
    pub protocol: u8,
    /// The bytes after the header, up to the total length.
    pub payload: &'a [u8],
}

/// Splits an IPv4 packet into header fields and payload (no checksum check: the kernel
/// has done it on anything it hands a raw socket).
pub fn parse_ipv4(pkt: &[u8]) -> Option<Ipv4View<'_>> {
    if pkt.len() < 20 || pkt[0] >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(pkt[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([pkt[2], pkt[3]]));
    if ihl < 20 || total < ihl || pkt.len() < total {
        return None;
    }
    Some(Ipv4View {
        src: Ipv4Addr::new(pkt[12], pkt[13], pkt[14], pkt[15]),
        dst: Ipv4Addr::new(pkt[16], pkt[17], pkt[18], pkt[19]),
        ttl: pkt[8],
        protocol: pkt[9],
        payload: &pkt[ihl..total],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Ethernet frames of `shared/fixtures/keepalived_vrrp3_advert.hex` (VRRP ones).
    fn fixture_frames() -> Vec<(String, Vec<u8>)> {
        let text = include_str!("../tests/keepalived_vrrp3_advert.hex");
        let mut frames = Vec::new();
        let mut title = String::new();
        let mut bytes = Vec::new();
        for line in text.lines() {
            if let Some(t) = line.strip_prefix("## ") {
                if !bytes.is_empty() {
                    frames.push((title.clone(), std::mem::take(&mut bytes)));
                }
                title = t.trim().to_string();
            } else if let Some((_, hex)) = line.trim_start().split_once(": ") {
                if line.trim_start().starts_with('#') {
                    continue;
                }
                bytes.extend(
                    hex.split_whitespace()
                        .map(|h| u8::from_str_radix(h, 16).expect("hex byte")),
                );
            }
        }
        if !bytes.is_empty() {
            frames.push((title, bytes));
        }
        frames
    }

    #[test]
    fn decodes_and_reencodes_every_keepalived_advert_byte_for_byte() {
        let frames = fixture_frames();
        let vrrp: Vec<_> = frames.iter().filter(|(t, _)| t.ends_with("vrrp")).collect();
        assert_eq!(
            vrrp.len(),
            7,
            "fixture frames: {:?}",
            frames.iter().map(|f| &f.0).collect::<Vec<_>>()
        );
        for (title, frame) in vrrp {
            assert_eq!(&frame[12..14], &[0x08, 0x00], "{title}: not IPv4");
            let ip = parse_ipv4(&frame[14..]).expect("IPv4 header");
            assert_eq!(ip.protocol, IPPROTO_VRRP, "{title}");
            assert_eq!(ip.ttl, 255, "{title}: RFC 5798 5.1.1.3 TTL MUST be 255");
            assert_eq!(ip.dst, Ipv4Addr::new(224, 0, 0, 18), "{title}");
            let adv = Advert::decode(ip.payload, ip.src, ip.dst)
                .unwrap_or_else(|e| panic!("{title}: {e}"));
            assert_eq!(adv.vrid, 77, "{title}");
            assert_eq!(adv.addresses, vec![Ipv4Addr::new(10, 77, 0, 10)], "{title}");
            assert!(
                adv.max_adver_int_cs == 10 || adv.max_adver_int_cs == 100,
                "{title}"
            );
            assert_eq!(
                adv.encode(ip.src, ip.dst),
                ip.payload,
                "{title}: re-encoding differs"
            );
        }
    }

    #[test]
    fn fixture_fields_match_the_capture_notes() {
        let frames = fixture_frames();
        let (_, f) = &frames[0];
        let ip = parse_ipv4(&f[14..]).expect("ipv4");
        let adv = Advert::decode(ip.payload, ip.src, ip.dst).expect("advert");
        assert_eq!(adv.priority, 101);
        assert_eq!(adv.max_adver_int_cs, 10);
        assert_eq!(u16::from_be_bytes([ip.payload[6], ip.payload[7]]), 0x7469);
        let shutdown = frames
            .iter()
            .find(|(t, _)| t.contains("adv0.1_shutdown.pcap #9"))
            .expect("#9");
        let ip = parse_ipv4(&shutdown.1[14..]).expect("ipv4");
        assert_eq!(
            Advert::decode(ip.payload, ip.src, ip.dst)
                .expect("advert")
                .priority,
            0,
            "a leaving master sends priority 0"
        );
    }

    #[test]
    fn v2_style_checksum_is_rejected() {
        // RFC 5798 5.2.8: the v3 checksum includes the pseudo-header.
        let adv = Advert {
            vrid: 7,
            priority: 100,
            max_adver_int_cs: 100,
            addresses: vec![Ipv4Addr::new(127, 0, 0, 100)],
        };
        let mut msg = adv.encode(Ipv4Addr::new(127, 0, 1, 1), Ipv4Addr::new(127, 0, 1, 2));
        msg[6] = 0;
        msg[7] = 0;
        let v2 = internet_checksum(&[&msg]);
        msg[6..8].copy_from_slice(&v2.to_be_bytes());
        assert!(matches!(
            Advert::decode(
                &msg,
                Ipv4Addr::new(127, 0, 1, 1),
                Ipv4Addr::new(127, 0, 1, 2)
            ),
            Err(DecodeError::Checksum { .. })
        ));
    }

    #[test]
    fn checksum_depends_on_addresses() {
        let adv = Advert {
            vrid: 7,
            priority: 100,
            max_adver_int_cs: 10,
            addresses: vec![Ipv4Addr::new(127, 0, 0, 100)],
        };
        let a = Ipv4Addr::new(127, 0, 1, 1);
        let b = Ipv4Addr::new(127, 0, 1, 2);
        let msg = adv.encode(a, b);
        assert_eq!(Advert::decode(&msg, a, b), Ok(adv));
        assert!(
            Advert::decode(&msg, b, a).is_ok(),
            "swapping src and dst keeps the sum"
        );
        assert!(matches!(
            Advert::decode(&msg, a, Ipv4Addr::new(127, 0, 1, 3)),
            Err(DecodeError::Checksum { .. })
        ));
    }

    #[test]
    fn malformed_input_is_an_error_never_a_panic() {
        let a = Ipv4Addr::LOCALHOST;
        assert!(matches!(
            Advert::decode(&[], a, a),
            Err(DecodeError::Truncated { .. })
        ));
        assert_eq!(
            Advert::decode(&[0x21, 1, 1, 1, 0, 10, 0, 0, 1, 2, 3, 4], a, a),
            Err(DecodeError::Version(2))
        );
        assert_eq!(
            Advert::decode(&[0x32, 1, 1, 1, 0, 10, 0, 0, 1, 2, 3, 4], a, a),
            Err(DecodeError::Type(2))
        );
        assert_eq!(
            Advert::decode(&[0x31, 1, 1, 0, 0, 10, 0, 0], a, a),
            Err(DecodeError::NoAddresses)
        );
        assert!(matches!(
            Advert::decode(&[0x31, 1, 1, 2, 0, 10, 0, 0, 1, 2, 3, 4], a, a),
            Err(DecodeError::Truncated { need: 16, .. })
        ));
        assert!(matches!(
            Advert::decode(&[0x31, 1, 1, 1, 0, 10, 0, 0, 1, 2, 3, 4, 5], a, a),
            Err(DecodeError::Length { .. })
        ));
        // Every prefix and every single-byte corruption of a good message.
        let good = Advert {
            vrid: 1,
            priority: 9,
            max_adver_int_cs: 10,
            addresses: vec![Ipv4Addr::new(127, 0, 0, 9)],
        }
        .encode(a, a);
        for n in 0..good.len() {
            assert!(Advert::decode(&good[..n], a, a).is_err());
        }
        for i in 0..good.len() {
            for bit in 0..8 {
                let mut m = good.clone();
                m[i] ^= 1 << bit;
                // The Internet checksum catches every single-bit error.
                assert!(
                    Advert::decode(&m, a, a).is_err(),
                    "byte {i} bit {bit} flipped and still accepted"
                );
            }
        }
        assert!(parse_ipv4(&[0x45; 10]).is_none());
        assert!(
            parse_ipv4(&[
                0x4f, 0, 0, 20, 0, 0, 0, 0, 255, 112, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2
            ])
            .is_none()
        );
    }

    #[test]
    fn zero_interval_is_rejected() {
        let a = Ipv4Addr::LOCALHOST;
        let mut msg = Advert {
            vrid: 1,
            priority: 9,
            max_adver_int_cs: 10,
            addresses: vec![a],
        }
        .encode(a, a);
        msg[4] = 0;
        msg[5] = 0;
        msg[6] = 0;
        msg[7] = 0;
        let c = checksum(&msg, a, a);
        msg[6..8].copy_from_slice(&c.to_be_bytes());
        assert_eq!(Advert::decode(&msg, a, a), Err(DecodeError::ZeroInterval));
    }
}
