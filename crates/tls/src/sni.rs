//! The server name a client asks for, read from its ClientHello without decrypting
//! anything: what TLS passthrough routes by.
//!
//! The bytes are read off the connection (and must then be sent on, first, to wherever
//! the connection goes); rustls's own ClientHello parser reads a copy of them, so no
//! TLS parsing is written here.

use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// Most bytes read while looking for a whole ClientHello (rustls's limit on one is
/// about this too).
pub const MAX_HELLO: usize = 16 * 1024 + 5;

/// What the bytes read so far say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hello {
    /// Not a whole ClientHello yet.
    Incomplete,
    /// A ClientHello, with the server name it asks for (if any).
    Name(Option<String>),
    /// Not TLS, or a malformed ClientHello.
    NotTls(String),
}

/// Parses the start of a TLS connection.
pub fn parse(bytes: &[u8]) -> Hello {
    let mut acceptor = rustls::server::Acceptor::default();
    let mut rd = bytes;
    while !rd.is_empty() {
        if let Err(e) = acceptor.read_tls(&mut rd) {
            return Hello::NotTls(e.to_string());
        }
    }
    match acceptor.accept() {
        Ok(Some(accepted)) => Hello::Name(accepted.client_hello().server_name().map(str::to_owned)),
        Ok(None) => Hello::Incomplete,
        Err((e, _alert)) => Hello::NotTls(e.to_string()),
    }
}

/// Reads from `tcp` until a whole ClientHello has arrived (at most [`MAX_HELLO`]
/// bytes, within `timeout`); returns the bytes read and the server name.
pub async fn read_hello(
    tcp: &mut TcpStream,
    timeout: Duration,
) -> Result<(Vec<u8>, Option<String>), String> {
    let mut buf = Vec::with_capacity(2048);
    let read = async {
        loop {
            let mut chunk = [0u8; 4096];
            let n = tcp
                .read(&mut chunk)
                .await
                .map_err(|e| format!("reading the ClientHello: {e}"))?;
            if n == 0 {
                return Err("the client closed before its ClientHello".to_string());
            }
            buf.extend_from_slice(&chunk[..n]);
            match parse(&buf) {
                Hello::Incomplete if buf.len() < MAX_HELLO => continue,
                Hello::Incomplete => return Err("ClientHello too large".to_string()),
                Hello::NotTls(e) => return Err(format!("not a TLS ClientHello: {e}")),
                Hello::Name(n) => return Ok(n),
            }
        }
    };
    let name = tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| format!("no whole ClientHello within {timeout:?}"))??;
    Ok((buf, name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A real ClientHello, as rustls's client writes it, for `name`.
    fn client_hello(name: &str) -> Vec<u8> {
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
        let mut conn = rustls::ClientConnection::new(
            Arc::new(config),
            name.to_string().try_into().expect("name"),
        )
        .expect("conn");
        let mut out = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut out).expect("write");
        }
        out
    }

    #[test]
    fn the_server_name_is_read_from_a_real_client_hello() {
        let hello = client_hello("www.foobar.com");
        assert_eq!(parse(&hello), Hello::Name(Some("www.foobar.com".into())));
    }

    #[test]
    fn a_partial_hello_asks_for_more_and_plain_http_is_not_tls() {
        let hello = client_hello("www.foobar.com");
        assert_eq!(parse(&hello[..hello.len() / 2]), Hello::Incomplete);
        assert!(matches!(
            parse(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
            Hello::NotTls(_)
        ));
    }

    #[test]
    fn an_ip_address_sends_no_server_name() {
        // RFC 6066 §3: literal IP addresses are not sent as SNI.
        let hello = client_hello("127.0.0.1");
        assert_eq!(parse(&hello), Hello::Name(None));
    }
}
