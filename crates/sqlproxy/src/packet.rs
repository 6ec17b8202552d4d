//! The MySQL client/server protocol's packets that the endpoint reads or writes
//! itself: framing, the handshake both ways, OK/ERR/EOF, and `mysql_native_password`.
//! Pure: bytes in, values out (no I/O). Hand-written because no crate on crates.io
//! offers both the server and the client side of the handshake at this level (the
//! client crates, `mysql_async` and sqlx, own the connection whole; the server crates,
//! `opensrv-mysql`, parse every query into callbacks): a proxy needs the raw packets.

use sha1::{Digest, Sha1};

/// Largest payload of one physical packet; a payload this long continues in the next.
pub const MAX_PAYLOAD: usize = 0xff_ffff;

/// Capability flags (the subset the endpoint reads or sets).
pub mod cap {
    /// `CLIENT_LONG_PASSWORD` (also "a MySQL peer", MariaDB clears it).
    pub const LONG_PASSWORD: u32 = 1;
    /// `CLIENT_FOUND_ROWS`.
    pub const FOUND_ROWS: u32 = 1 << 1;
    /// `CLIENT_LONG_FLAG`.
    pub const LONG_FLAG: u32 = 1 << 2;
    /// `CLIENT_CONNECT_WITH_DB`.
    pub const CONNECT_WITH_DB: u32 = 1 << 3;
    /// `CLIENT_IGNORE_SPACE`.
    pub const IGNORE_SPACE: u32 = 1 << 8;
    /// `CLIENT_PROTOCOL_41`.
    pub const PROTOCOL_41: u32 = 1 << 9;
    /// `CLIENT_INTERACTIVE`.
    pub const INTERACTIVE: u32 = 1 << 10;
    /// `CLIENT_SSL`.
    pub const SSL: u32 = 1 << 11;
    /// `CLIENT_TRANSACTIONS`.
    pub const TRANSACTIONS: u32 = 1 << 13;
    /// `CLIENT_SECURE_CONNECTION`.
    pub const SECURE_CONNECTION: u32 = 1 << 15;
    /// `CLIENT_MULTI_STATEMENTS`.
    pub const MULTI_STATEMENTS: u32 = 1 << 16;
    /// `CLIENT_MULTI_RESULTS`.
    pub const MULTI_RESULTS: u32 = 1 << 17;
    /// `CLIENT_PS_MULTI_RESULTS`.
    pub const PS_MULTI_RESULTS: u32 = 1 << 18;
    /// `CLIENT_PLUGIN_AUTH`.
    pub const PLUGIN_AUTH: u32 = 1 << 19;
    /// `CLIENT_CONNECT_ATTRS`.
    pub const CONNECT_ATTRS: u32 = 1 << 20;
    /// `CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA`.
    pub const PLUGIN_AUTH_LENENC: u32 = 1 << 21;

    /// What the endpoint offers its clients. Left out on purpose: compression and TLS
    /// (the hop is local), `LOCAL INFILE` (a server could ask the endpoint for files),
    /// `DEPRECATE_EOF` and session tracking (the endpoint follows each response to its
    /// end with EOF packets, which both sides then use).
    pub const OFFERED: u32 = LONG_PASSWORD
        | FOUND_ROWS
        | LONG_FLAG
        | CONNECT_WITH_DB
        | IGNORE_SPACE
        | PROTOCOL_41
        | INTERACTIVE
        | TRANSACTIONS
        | SECURE_CONNECTION
        | MULTI_STATEMENTS
        | MULTI_RESULTS
        | PS_MULTI_RESULTS
        | PLUGIN_AUTH
        | CONNECT_ATTRS
        | PLUGIN_AUTH_LENENC;
}

/// Server status flags.
pub mod status {
    /// A transaction is open.
    pub const IN_TRANS: u16 = 0x0001;
    /// Autocommit is on.
    pub const AUTOCOMMIT: u16 = 0x0002;
    /// Another result set follows.
    pub const MORE_RESULTS: u16 = 0x0008;
    /// A cursor was opened (`COM_STMT_EXECUTE`): rows come by `COM_STMT_FETCH`.
    pub const CURSOR_EXISTS: u16 = 0x0040;
}

/// Command bytes.
pub mod com {
    /// `COM_QUIT`.
    pub const QUIT: u8 = 0x01;
    /// `COM_INIT_DB`.
    pub const INIT_DB: u8 = 0x02;
    /// `COM_QUERY`.
    pub const QUERY: u8 = 0x03;
    /// `COM_FIELD_LIST`.
    pub const FIELD_LIST: u8 = 0x04;
    /// `COM_REFRESH`.
    pub const REFRESH: u8 = 0x07;
    /// `COM_STATISTICS`.
    pub const STATISTICS: u8 = 0x09;
    /// `COM_PROCESS_KILL`.
    pub const PROCESS_KILL: u8 = 0x0c;
    /// `COM_DEBUG`.
    pub const DEBUG: u8 = 0x0d;
    /// `COM_PING`.
    pub const PING: u8 = 0x0e;
    /// `COM_CHANGE_USER`.
    pub const CHANGE_USER: u8 = 0x11;
    /// `COM_STMT_PREPARE`.
    pub const STMT_PREPARE: u8 = 0x16;
    /// `COM_STMT_EXECUTE`.
    pub const STMT_EXECUTE: u8 = 0x17;
    /// `COM_STMT_SEND_LONG_DATA`.
    pub const STMT_SEND_LONG_DATA: u8 = 0x18;
    /// `COM_STMT_CLOSE`.
    pub const STMT_CLOSE: u8 = 0x19;
    /// `COM_STMT_RESET`.
    pub const STMT_RESET: u8 = 0x1a;
    /// `COM_SET_OPTION`.
    pub const SET_OPTION: u8 = 0x1b;
    /// `COM_STMT_FETCH`.
    pub const STMT_FETCH: u8 = 0x1c;
    /// `COM_RESET_CONNECTION`.
    pub const RESET_CONNECTION: u8 = 0x1f;
}

/// The only authentication method the endpoint speaks, on both sides.
pub const NATIVE_PASSWORD: &str = "mysql_native_password";

/// A packet that does not say what the protocol says it must.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed {what} packet")]
pub struct Malformed {
    /// Which packet.
    pub what: &'static str,
}

fn malformed(what: &'static str) -> Malformed {
    Malformed { what }
}

/// A reader over one payload.
struct Cursor<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Cursor<'a> {
    fn new(buf: &'a [u8], what: &'static str) -> Cursor<'a> {
        Cursor { buf, what }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        if self.buf.len() < n {
            return Err(malformed(self.what));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, Malformed> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, Malformed> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, Malformed> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A NUL-terminated string (or the rest, when the NUL is missing at the end).
    fn nul_str(&mut self) -> &'a [u8] {
        match self.buf.iter().position(|&b| b == 0) {
            Some(i) => {
                let s = &self.buf[..i];
                self.buf = &self.buf[i + 1..];
                s
            }
            None => std::mem::take(&mut self.buf),
        }
    }

    fn lenenc(&mut self) -> Result<u64, Malformed> {
        match self.u8()? {
            n @ 0..=0xfa => Ok(u64::from(n)),
            0xfc => Ok(u64::from(self.u16()?)),
            0xfd => {
                let b = self.take(3)?;
                Ok(u64::from(b[0]) | u64::from(b[1]) << 8 | u64::from(b[2]) << 16)
            }
            0xfe => {
                let b = self.take(8)?;
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                Ok(u64::from_le_bytes(a))
            }
            _ => Err(malformed(self.what)),
        }
    }

    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

/// Appends a length-encoded integer.
pub fn put_lenenc(out: &mut Vec<u8>, n: u64) {
    match n {
        0..=0xfa => out.push(n as u8),
        0xfb..=0xffff => {
            out.push(0xfc);
            out.extend_from_slice(&(n as u16).to_le_bytes());
        }
        0x1_0000..=0xff_ffff => {
            out.push(0xfd);
            out.extend_from_slice(&(n as u32).to_le_bytes()[..3]);
        }
        _ => {
            out.push(0xfe);
            out.extend_from_slice(&n.to_le_bytes());
        }
    }
}

/// A length-encoded integer at the start of `buf` (a result set's column count).
pub fn lenenc(buf: &[u8]) -> Result<u64, Malformed> {
    Cursor::new(buf, "length-encoded integer").lenenc()
}

/// The 4-byte header of a physical packet carrying `len` bytes with sequence `seq`.
pub fn header(len: usize, seq: u8) -> [u8; 4] {
    let l = (len as u32).to_le_bytes();
    [l[0], l[1], l[2], seq]
}

/// The payload length and sequence number of a packet header.
pub fn parse_header(h: [u8; 4]) -> (usize, u8) {
    (
        usize::from(h[0]) | usize::from(h[1]) << 8 | usize::from(h[2]) << 16,
        h[3],
    )
}

/// The server's first packet (Protocol::HandshakeV10).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handshake {
    /// e.g. `5.5.5-10.11.6-MariaDB-0+deb12u1-log`.
    pub server_version: String,
    /// The server's thread id for this connection.
    pub connection_id: u32,
    /// The scramble (20 bytes for `mysql_native_password`).
    pub seed: Vec<u8>,
    /// What the server can do.
    pub capabilities: u32,
    /// The server's default character set.
    pub charset: u8,
    /// Status flags.
    pub status: u16,
    /// The default authentication method.
    pub auth_plugin: String,
}

impl Handshake {
    /// Reads a HandshakeV10 payload.
    pub fn parse(payload: &[u8]) -> Result<Handshake, Malformed> {
        let mut c = Cursor::new(payload, "handshake");
        if c.u8()? != 10 {
            return Err(malformed("handshake (not protocol 10)"));
        }
        let server_version = String::from_utf8_lossy(c.nul_str()).into_owned();
        let connection_id = c.u32()?;
        let mut seed = c.take(8)?.to_vec();
        c.u8()?;
        let mut capabilities = u32::from(c.u16()?);
        let (mut charset, mut status, mut auth_plugin) = (0, 0, String::new());
        if !c.is_empty() {
            charset = c.u8()?;
            status = c.u16()?;
            capabilities |= u32::from(c.u16()?) << 16;
            let auth_len = usize::from(c.u8()?);
            c.take(10)?;
            if capabilities & cap::SECURE_CONNECTION != 0 {
                let n = auth_len.saturating_sub(8).max(13);
                let part = c.take(n.min(c.buf.len()))?;
                // The second part ends with a NUL that is not part of the scramble.
                let part = part.strip_suffix(&[0]).unwrap_or(part);
                seed.extend_from_slice(part);
            }
            if capabilities & cap::PLUGIN_AUTH != 0 {
                auth_plugin = String::from_utf8_lossy(c.nul_str()).into_owned();
            }
        }
        Ok(Handshake {
            server_version,
            connection_id,
            seed,
            capabilities,
            charset,
            status,
            auth_plugin,
        })
    }

    /// The payload of this handshake.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(96);
        out.push(10);
        out.extend_from_slice(self.server_version.as_bytes());
        out.push(0);
        out.extend_from_slice(&self.connection_id.to_le_bytes());
        let (first, second) = self.seed.split_at(self.seed.len().min(8));
        out.extend_from_slice(first);
        out.push(0);
        out.extend_from_slice(&(self.capabilities as u16).to_le_bytes());
        out.push(self.charset);
        out.extend_from_slice(&self.status.to_le_bytes());
        out.extend_from_slice(&((self.capabilities >> 16) as u16).to_le_bytes());
        out.push((self.seed.len() + 1) as u8);
        out.extend_from_slice(&[0; 10]);
        out.extend_from_slice(second);
        out.push(0);
        out.extend_from_slice(self.auth_plugin.as_bytes());
        out.push(0);
        out
    }
}

/// A client's answer to the handshake (Protocol::HandshakeResponse41), or the
/// endpoint's own to a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandshakeResponse {
    /// What the client can do.
    pub capabilities: u32,
    /// The largest packet it wants.
    pub max_packet: u32,
    /// Its character set (collation id).
    pub charset: u8,
    /// The user.
    pub user: String,
    /// The authentication data (the scramble of the password).
    pub auth: Vec<u8>,
    /// The database to use, if any.
    pub database: Option<String>,
    /// The authentication method the data is for.
    pub auth_plugin: Option<String>,
}

impl HandshakeResponse {
    /// Reads a HandshakeResponse41 payload. A client without `CLIENT_PROTOCOL_41`
    /// (MySQL 4.0 and older) is refused.
    pub fn parse(payload: &[u8]) -> Result<HandshakeResponse, Malformed> {
        let mut c = Cursor::new(payload, "handshake response");
        let capabilities = c.u32()?;
        if capabilities & cap::PROTOCOL_41 == 0 {
            return Err(malformed("handshake response (client older than 4.1)"));
        }
        let max_packet = c.u32()?;
        let charset = c.u8()?;
        c.take(23)?;
        let user = String::from_utf8_lossy(c.nul_str()).into_owned();
        let auth = if capabilities & cap::PLUGIN_AUTH_LENENC != 0 {
            let n = usize::try_from(c.lenenc()?).map_err(|_| malformed("handshake response"))?;
            c.take(n)?.to_vec()
        } else if capabilities & cap::SECURE_CONNECTION != 0 {
            let n = usize::from(c.u8()?);
            c.take(n)?.to_vec()
        } else {
            c.nul_str().to_vec()
        };
        let database = if capabilities & cap::CONNECT_WITH_DB != 0 && !c.is_empty() {
            Some(String::from_utf8_lossy(c.nul_str()).into_owned()).filter(|d| !d.is_empty())
        } else {
            None
        };
        let auth_plugin = if capabilities & cap::PLUGIN_AUTH != 0 && !c.is_empty() {
            Some(String::from_utf8_lossy(c.nul_str()).into_owned())
        } else {
            None
        };
        // Connection attributes, if any, are read past: the endpoint has no use for them.
        let _ = c.rest();
        Ok(HandshakeResponse {
            capabilities,
            max_packet,
            charset,
            user,
            auth,
            database,
            auth_plugin,
        })
    }

    /// The payload of this response.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        out.extend_from_slice(&self.capabilities.to_le_bytes());
        out.extend_from_slice(&self.max_packet.to_le_bytes());
        out.push(self.charset);
        out.extend_from_slice(&[0; 23]);
        out.extend_from_slice(self.user.as_bytes());
        out.push(0);
        if self.capabilities & cap::PLUGIN_AUTH_LENENC != 0 {
            put_lenenc(&mut out, self.auth.len() as u64);
        } else {
            out.push(self.auth.len() as u8);
        }
        out.extend_from_slice(&self.auth);
        if self.capabilities & cap::CONNECT_WITH_DB != 0 {
            out.extend_from_slice(self.database.as_deref().unwrap_or("").as_bytes());
            out.push(0);
        }
        if self.capabilities & cap::PLUGIN_AUTH != 0 {
            out.extend_from_slice(self.auth_plugin.as_deref().unwrap_or("").as_bytes());
            out.push(0);
        }
        out
    }
}

/// The SSLRequest a client sends before its TLS handshake.
pub fn ssl_request(capabilities: u32, max_packet: u32, charset: u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(32);
    out.extend_from_slice(&(capabilities | cap::SSL).to_le_bytes());
    out.extend_from_slice(&max_packet.to_le_bytes());
    out.push(charset);
    out.extend_from_slice(&[0; 23]);
    out
}

/// `mysql_native_password`'s answer to `seed` for `password`:
/// SHA1(password) XOR SHA1(seed + SHA1(SHA1(password))); empty for an empty password.
pub fn native_scramble(password: &[u8], seed: &[u8]) -> Vec<u8> {
    if password.is_empty() {
        return Vec::new();
    }
    let stage1 = Sha1::digest(password);
    let stage2 = Sha1::digest(stage1);
    let mut h = Sha1::new();
    h.update(seed);
    h.update(stage2);
    let mask = h.finalize();
    stage1.iter().zip(mask.iter()).map(|(a, b)| a ^ b).collect()
}

/// Whether `answer` is `password`'s scramble of `seed`, compared in constant time.
pub fn native_verify(password: &[u8], seed: &[u8], answer: &[u8]) -> bool {
    let expected = native_scramble(password, seed);
    expected.len() == answer.len()
        && expected
            .iter()
            .zip(answer)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// The AuthSwitchRequest that asks a client for `mysql_native_password` with `seed`.
pub fn auth_switch(seed: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + NATIVE_PASSWORD.len() + seed.len() + 1);
    out.push(0xfe);
    out.extend_from_slice(NATIVE_PASSWORD.as_bytes());
    out.push(0);
    out.extend_from_slice(seed);
    out.push(0);
    out
}

/// A server's AuthSwitchRequest: the method and its seed.
pub fn parse_auth_switch(payload: &[u8]) -> Result<(String, Vec<u8>), Malformed> {
    let mut c = Cursor::new(payload, "auth switch request");
    if c.u8()? != 0xfe {
        return Err(malformed("auth switch request"));
    }
    let plugin = String::from_utf8_lossy(c.nul_str()).into_owned();
    let data = c.rest();
    let data = data.strip_suffix(&[0]).unwrap_or(data);
    Ok((plugin, data.to_vec()))
}

/// An OK packet with `status` flags.
pub fn ok(affected: u64, last_insert_id: u64, status: u16) -> Vec<u8> {
    let mut out = vec![0x00];
    put_lenenc(&mut out, affected);
    put_lenenc(&mut out, last_insert_id);
    out.extend_from_slice(&status.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out
}

/// An ERR packet: `code`, SQLSTATE `state` (5 characters) and `message`.
pub fn err(code: u16, state: &str, message: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(9 + message.len());
    out.push(0xff);
    out.extend_from_slice(&code.to_le_bytes());
    out.push(b'#');
    let mut st = [b'H', b'Y', b'0', b'0', b'0'];
    for (d, s) in st.iter_mut().zip(state.bytes()) {
        *d = s;
    }
    out.extend_from_slice(&st);
    out.extend_from_slice(message.as_bytes());
    out
}

/// An ERR packet's code and message.
pub fn parse_err(payload: &[u8]) -> Result<(u16, String), Malformed> {
    let mut c = Cursor::new(payload, "ERR");
    if c.u8()? != 0xff {
        return Err(malformed("ERR"));
    }
    let code = c.u16()?;
    let mut rest = c.rest();
    if rest.first() == Some(&b'#') && rest.len() >= 6 {
        rest = &rest[6..];
    }
    Ok((code, String::from_utf8_lossy(rest).into_owned()))
}

/// The status flags of an OK packet (header 0x00, or 0xfe when it ends a result set).
pub fn ok_status(payload: &[u8]) -> Result<u16, Malformed> {
    let mut c = Cursor::new(payload, "OK");
    c.u8()?;
    c.lenenc()?;
    c.lenenc()?;
    c.u16()
}

/// Whether `payload` is an EOF packet (0xfe and shorter than 9 bytes: a text row
/// starting with 0xfe is a length-encoded string of at least 2^24 bytes).
pub fn is_eof(payload: &[u8]) -> bool {
    payload.first() == Some(&0xfe) && payload.len() < 9
}

/// The status flags of an EOF packet.
pub fn eof_status(payload: &[u8]) -> Result<u16, Malformed> {
    let mut c = Cursor::new(payload, "EOF");
    c.u8()?;
    c.u16()?;
    c.u16()
}

/// The answer to `COM_STMT_PREPARE`: statement id, columns and parameters.
pub fn prepare_ok(payload: &[u8]) -> Result<(u32, u16, u16), Malformed> {
    let mut c = Cursor::new(payload, "COM_STMT_PREPARE OK");
    c.u8()?;
    let id = c.u32()?;
    let columns = c.u16()?;
    let params = c.u16()?;
    Ok((id, columns, params))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A HandshakeV10 laid out as MariaDB 10.11 sends it: bit 0 of the capabilities
    /// clear (MariaDB), its extended capabilities in the last 4 reserved bytes, a
    /// 20-byte seed in two parts and the NUL after the second.
    const MARIADB_HANDSHAKE: &[u8] = b"\x0a5.5.5-10.11.6-MariaDB-0+deb12u1\x00\x2a\x00\x00\x00\
abcdefgh\x00\xfe\xff\x2d\x02\x00\xff\x81\x15\x00\x00\x00\x00\x00\x00\x1d\x00\x00\x00\
ijklmnopqrst\x00mysql_native_password\x00";

    #[test]
    fn a_mariadb_handshake_reads_and_writes_back() {
        let h = Handshake::parse(MARIADB_HANDSHAKE).expect("parses");
        assert_eq!(h.server_version, "5.5.5-10.11.6-MariaDB-0+deb12u1");
        assert_eq!(h.connection_id, 42);
        assert_eq!(h.seed, b"abcdefghijklmnopqrst");
        assert_eq!(h.auth_plugin, NATIVE_PASSWORD);
        assert!(h.capabilities & cap::PROTOCOL_41 != 0);
        assert!(h.capabilities & cap::SSL != 0);
        assert_eq!(h.charset, 45);
        let again = Handshake::parse(&h.encode()).expect("own encoding parses");
        assert_eq!(again, h);
    }

    #[test]
    fn truncated_packets_are_errors_not_panics() {
        for n in 0..MARIADB_HANDSHAKE.len() - 30 {
            let _ = Handshake::parse(&MARIADB_HANDSHAKE[..n]);
        }
        let resp = HandshakeResponse {
            capabilities: cap::OFFERED,
            max_packet: 1 << 24,
            charset: 45,
            user: "foobar".into(),
            auth: vec![7; 20],
            database: Some("foobar".into()),
            auth_plugin: Some(NATIVE_PASSWORD.into()),
        };
        let bytes = resp.encode();
        for n in 0..bytes.len() {
            let _ = HandshakeResponse::parse(&bytes[..n]);
        }
        assert_eq!(HandshakeResponse::parse(&bytes), Ok(resp));
        for bad in [&b""[..], b"\xff", b"\xfe\x00", b"\x00\xfc"] {
            assert!(ok_status(bad).is_err() || bad.is_empty());
            let _ = parse_err(bad);
            let _ = eof_status(bad);
            let _ = prepare_ok(bad);
            let _ = parse_auth_switch(bad);
            let _ = lenenc(bad);
        }
    }

    #[test]
    fn a_client_older_than_4_1_is_refused() {
        let mut bytes = HandshakeResponse {
            capabilities: cap::OFFERED,
            max_packet: 0,
            charset: 8,
            user: "u".into(),
            auth: vec![],
            database: None,
            auth_plugin: None,
        }
        .encode();
        bytes[1] &= !((cap::PROTOCOL_41 >> 8) as u8);
        assert!(HandshakeResponse::parse(&bytes).is_err());
    }

    #[test]
    fn native_password_matches_mysqls_definition() {
        // SHA1(pw) XOR SHA1(seed + SHA1(SHA1(pw))) for "password" and twenty 'a's,
        // computed independently with Python's hashlib.
        let seed = [b'a'; 20];
        let s = native_scramble(b"password", &seed);
        let hex: String = s.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "a552740436140dffd4354db0f876689d93f75852");
        assert!(native_verify(b"password", &seed, &s));
        assert!(!native_verify(b"passwore", &seed, &s));
        assert!(!native_verify(b"password", &[b'b'; 20], &s));
        assert!(!native_verify(b"password", &seed, &s[..19]));
        assert!(native_scramble(b"", &seed).is_empty());
        assert!(native_verify(b"", &seed, &[]));
    }

    #[test]
    fn lenenc_round_trips_at_every_width() {
        for n in [
            0,
            250,
            251,
            0xffff,
            0x1_0000,
            0xff_ffff,
            0x100_0000,
            u64::MAX,
        ] {
            let mut out = Vec::new();
            put_lenenc(&mut out, n);
            assert_eq!(lenenc(&out), Ok(n), "{n}");
        }
        assert!(lenenc(&[0xfb]).is_err(), "0xfb is NULL, not a count");
        assert!(lenenc(&[0xff]).is_err());
    }

    #[test]
    fn ok_err_and_eof_carry_their_fields() {
        let o = ok(3, 77, status::AUTOCOMMIT | status::IN_TRANS);
        assert_eq!(ok_status(&o), Ok(status::AUTOCOMMIT | status::IN_TRANS));
        let e = err(1053, "08S01", "no primary");
        assert_eq!(parse_err(&e), Ok((1053, "no primary".into())));
        assert_eq!(&e[3..9], b"#08S01");
        let eof = [0xfe, 0, 0, 0x0a, 0];
        assert!(is_eof(&eof));
        assert_eq!(eof_status(&eof), Ok(0x0a));
        let mut long_row = vec![0xfe];
        long_row.extend_from_slice(&[0; 8]);
        assert!(!is_eof(&long_row), "a row of a 16 MiB string is not EOF");
        let (plugin, seed) = parse_auth_switch(&auth_switch(b"0123456789abcdefghij")).expect("ok");
        assert_eq!(plugin, NATIVE_PASSWORD);
        assert_eq!(seed, b"0123456789abcdefghij");
        assert_eq!(parse_header(header(0xabcdef, 7)), (0xabcdef, 7));
    }
}
