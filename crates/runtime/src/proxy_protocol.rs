//! The PROXY protocol, version 2 (HAProxy's `send-proxy-v2`, nginx's `proxy_protocol`):
//! a binary header an lb puts in front of a connection it relays without decrypting
//! (TLS passthrough), so the web node that terminates it knows the client's address.
//!
//! An lb reads it from the proxies in front of it (`[lb] front_proxies`) and sends it
//! to web nodes over HTTP too when `[lb] send_proxy` is on.
//!
//! Only the forms hastack sends are read: PROXY over TCP/IPv4 or TCP/IPv6, and LOCAL
//! (a health check of the lb itself). Anything else is refused, never guessed at.
//! Hand-written: the header is 16 bytes and an address block; the crates that read it
//! bring more than they save here.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The 12 bytes every version-2 header starts with.
pub const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// The LOCAL header: a connection of the proxy's own (a health check), no client.
pub fn encode_local() -> Vec<u8> {
    let mut h = SIGNATURE.to_vec();
    h.extend_from_slice(&[0x20, 0x00, 0, 0]);
    h
}

/// The header for a connection from `client` to `server`.
pub fn encode(client: SocketAddr, server: SocketAddr) -> Vec<u8> {
    let mut h = SIGNATURE.to_vec();
    h.push(0x21); // version 2, PROXY
    match (client, server) {
        (SocketAddr::V4(c), SocketAddr::V4(s)) => {
            h.push(0x11); // TCP over IPv4
            h.extend_from_slice(&12u16.to_be_bytes());
            h.extend_from_slice(&c.ip().octets());
            h.extend_from_slice(&s.ip().octets());
            h.extend_from_slice(&c.port().to_be_bytes());
            h.extend_from_slice(&s.port().to_be_bytes());
        }
        (c, s) => {
            let v6 = |a: IpAddr| match a {
                IpAddr::V4(v) => v.to_ipv6_mapped(),
                IpAddr::V6(v) => v,
            };
            h.push(0x21); // TCP over IPv6
            h.extend_from_slice(&36u16.to_be_bytes());
            h.extend_from_slice(&v6(c.ip()).octets());
            h.extend_from_slice(&v6(s.ip()).octets());
            h.extend_from_slice(&c.port().to_be_bytes());
            h.extend_from_slice(&s.port().to_be_bytes());
        }
    }
    h
}

/// Why a header was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyHeaderError {
    /// The connection does not start with the version-2 signature.
    #[error("no PROXY protocol v2 header")]
    NoHeader,
    /// A version, command, family or length hastack does not send.
    #[error("unsupported PROXY header: {0}")]
    Unsupported(String),
    /// The connection ended or stalled inside the header.
    #[error("PROXY header cut short: {0}")]
    Short(String),
}

/// Parses the 16 fixed bytes: the command (PROXY or LOCAL), family and length.
fn fixed(b: &[u8; 16]) -> Result<(bool, u8, usize), ProxyHeaderError> {
    if b[..12] != SIGNATURE {
        return Err(ProxyHeaderError::NoHeader);
    }
    let local = match b[12] {
        0x21 => false,
        0x20 => true,
        v => {
            return Err(ProxyHeaderError::Unsupported(format!(
                "version/command {v:#04x}"
            )));
        }
    };
    let len = usize::from(u16::from_be_bytes([b[14], b[15]]));
    if len > 512 {
        return Err(ProxyHeaderError::Unsupported(format!("length {len}")));
    }
    Ok((local, b[13], len))
}

/// The client address in an address block of family `fam` (`None`: LOCAL).
fn client(local: bool, fam: u8, block: &[u8]) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    if local {
        return Ok(None);
    }
    let port = |i: usize| u16::from_be_bytes([block[i], block[i + 1]]);
    match fam {
        0x11 if block.len() >= 12 => {
            let ip = Ipv4Addr::new(block[0], block[1], block[2], block[3]);
            Ok(Some(SocketAddr::new(IpAddr::V4(ip), port(8))))
        }
        0x21 if block.len() >= 36 => {
            let mut a = [0u8; 16];
            a.copy_from_slice(&block[..16]);
            let ip = Ipv6Addr::from(a);
            let ip = ip
                .to_ipv4_mapped()
                .map(IpAddr::V4)
                .unwrap_or(IpAddr::V6(ip));
            Ok(Some(SocketAddr::new(ip, port(32))))
        }
        f => Err(ProxyHeaderError::Unsupported(format!(
            "family {f:#04x} with {} address bytes",
            block.len()
        ))),
    }
}

/// Reads a version-2 header from the start of `tcp` (exactly its bytes, nothing after)
/// within `timeout`; the client's address, or `None` for LOCAL.
pub async fn read(
    tcp: &mut TcpStream,
    timeout: Duration,
) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    let read = async {
        let mut b = [0u8; 16];
        tcp.read_exact(&mut b)
            .await
            .map_err(|e| ProxyHeaderError::Short(e.to_string()))?;
        let (local, fam, len) = fixed(&b)?;
        let mut block = vec![0u8; len];
        tcp.read_exact(&mut block)
            .await
            .map_err(|e| ProxyHeaderError::Short(e.to_string()))?;
        client(local, fam, &block)
    };
    tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| ProxyHeaderError::Short(format!("nothing within {timeout:?}")))?
}

/// Whether the connection's first bytes (peeked, not read) are a version-2 signature.
/// Waits for 12 bytes or `timeout`; a connection that closes or stalls first is not
/// one.
pub async fn starts_with_header(tcp: &TcpStream, timeout: Duration) -> bool {
    let peek = async {
        let mut b = [0u8; 12];
        loop {
            match tcp.peek(&mut b).await {
                Ok(n) if n >= SIGNATURE.len() => return b == SIGNATURE,
                // Fewer bytes than a signature: a prefix of one may still become one.
                // A peek leaves the socket readable, so there is no event to wait
                // for until more bytes come: look again shortly (a header split
                // inside its first 12 bytes is rare; `timeout` bounds the wait).
                Ok(n) if n > 0 && b[..n] == SIGNATURE[..n] => {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                _ => return false,
            }
        }
    };
    tokio::time::timeout(timeout, peek).await.unwrap_or(false)
}

/// Parses a whole header held in memory (for tests and tools).
pub fn parse(bytes: &[u8]) -> Result<(Option<SocketAddr>, usize), ProxyHeaderError> {
    let b: &[u8; 16] = bytes
        .get(..16)
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| ProxyHeaderError::Short(format!("{} bytes", bytes.len())))?;
    let (local, fam, len) = fixed(b)?;
    let block = bytes.get(16..16 + len).ok_or_else(|| {
        ProxyHeaderError::Short(format!("{} of {} address bytes", bytes.len() - 16, len))
    })?;
    Ok((client(local, fam, block)?, 16 + len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_and_ipv6_round_trip() {
        let c: SocketAddr = "10.0.0.7:51234".parse().expect("addr");
        let s: SocketAddr = "10.0.0.100:8443".parse().expect("addr");
        let h = encode(c, s);
        assert_eq!(
            h.len(),
            28,
            "16 fixed bytes and 12 of IPv4 addresses (spec §2.2)"
        );
        assert_eq!(parse(&h), Ok((Some(c), 28)));
        let c6: SocketAddr = "[2001:db8::1]:4000".parse().expect("addr");
        let s6: SocketAddr = "[2001:db8::2]:443".parse().expect("addr");
        let h = encode(c6, s6);
        assert_eq!(parse(&h), Ok((Some(c6), 52)));
    }

    #[test]
    fn local_has_no_client_and_junk_is_refused() {
        let mut h = SIGNATURE.to_vec();
        h.extend_from_slice(&[0x20, 0x00, 0, 0]);
        assert_eq!(
            parse(&h),
            Ok((None, 16)),
            "LOCAL (spec §2.2: the lb's own check)"
        );
        assert_eq!(
            parse(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03abcdefgh"),
            Err(ProxyHeaderError::NoHeader),
            "a bare ClientHello"
        );
        let mut v1 = SIGNATURE.to_vec();
        v1.extend_from_slice(&[0x11, 0x11, 0, 12]);
        assert!(matches!(parse(&v1), Err(ProxyHeaderError::Unsupported(_))));
        let mut unix = SIGNATURE.to_vec();
        unix.extend_from_slice(&[0x21, 0x31, 0, 216]);
        unix.extend_from_slice(&[0u8; 216]);
        assert!(matches!(
            parse(&unix),
            Err(ProxyHeaderError::Unsupported(_))
        ));
        let cut = &encode(
            "1.2.3.4:5".parse().expect("a"),
            "6.7.8.9:10".parse().expect("a"),
        )[..20];
        assert!(matches!(parse(cut), Err(ProxyHeaderError::Short(_))));
    }
}
