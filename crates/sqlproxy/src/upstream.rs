//! The endpoint's side of a connection to MariaDB: TCP, the SSLRequest and a TLS
//! handshake that verifies the server's certificate (when the stack runs internal
//! TLS), and `mysql_native_password` with the account the endpoint holds.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufStream};
use tokio::net::TcpStream;

use crate::packet::{self, Handshake, HandshakeResponse, NATIVE_PASSWORD, cap};

/// How long opening a server connection (TCP, TLS, authentication) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A byte stream to a server: TLS or plain TCP.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// One server the endpoint may send a session to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    /// The db node's name (its certificate's name).
    pub name: String,
    /// Where its MariaDB listens.
    pub addr: SocketAddr,
}

/// The account and TLS the endpoint logs in with.
#[derive(Clone)]
pub struct Login {
    /// The user.
    pub user: String,
    /// Its password.
    pub password: String,
    /// TLS to the servers (`None`: plain TCP).
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login")
            .field("user", &self.user)
            .field("password", &"<hidden>")
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// What the session asks of its server connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Want {
    /// The capabilities the client and the endpoint agreed on.
    pub capabilities: u32,
    /// The client's character set.
    pub charset: u8,
    /// The database to use.
    pub database: Option<String>,
}

/// Why a server connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The network: refused, reset, timed out.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The server answered the login with an error (sent on to the client as it is).
    #[error("the server refused the login: {1} ({0})")]
    Refused(u16, String, Vec<u8>),
    /// The server spoke something else.
    #[error("{0}")]
    Protocol(String),
}

impl From<packet::Malformed> for UpstreamError {
    fn from(e: packet::Malformed) -> UpstreamError {
        UpstreamError::Protocol(e.to_string())
    }
}

/// An open, logged-in connection to one server.
pub struct Upstream {
    /// Which server.
    pub server: Server,
    /// The stream, buffered both ways.
    pub io: BufStream<Pin<Box<dyn Stream>>>,
    /// The server's version string.
    pub version: String,
    /// The gauge of sessions on this server, decremented when the connection goes.
    pub(crate) held: Option<prometheus_client::metrics::gauge::Gauge>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(g) = &self.held {
            g.dec();
        }
    }
}

/// Reads one physical packet into `buf` (replacing its contents); its sequence number.
pub async fn read_packet<R: AsyncRead + Unpin>(r: &mut R, buf: &mut Vec<u8>) -> io::Result<u8> {
    let mut h = [0u8; 4];
    r.read_exact(&mut h).await?;
    let (len, seq) = packet::parse_header(h);
    buf.clear();
    buf.resize(len, 0);
    r.read_exact(buf).await?;
    Ok(seq)
}

/// Writes `payload` as one packet with sequence `seq` (payloads under 16 MiB only:
/// the endpoint's own packets are small).
pub async fn write_packet<W: AsyncWrite + Unpin>(
    w: &mut W,
    seq: u8,
    payload: &[u8],
) -> io::Result<()> {
    w.write_all(&packet::header(payload.len(), seq)).await?;
    w.write_all(payload).await
}

/// Opens a connection to `server` and logs in as `login`, as `want` says.
pub async fn connect(
    server: &Server,
    login: &Login,
    want: &Want,
) -> Result<Upstream, UpstreamError> {
    match tokio::time::timeout(CONNECT_TIMEOUT, connect_inner(server, login, want)).await {
        Ok(r) => r,
        Err(_) => Err(UpstreamError::Io(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no login within {CONNECT_TIMEOUT:?}"),
        ))),
    }
}

async fn connect_inner(
    server: &Server,
    login: &Login,
    want: &Want,
) -> Result<Upstream, UpstreamError> {
    let tcp = TcpStream::connect(server.addr).await?;
    tcp.set_nodelay(true)?;
    let mut tcp = BufStream::new(tcp);
    let mut buf = Vec::with_capacity(256);
    read_packet(&mut tcp, &mut buf).await?;
    if buf.first() == Some(&0xff) {
        let (code, msg) = packet::parse_err(&buf)?;
        return Err(UpstreamError::Refused(code, msg, buf));
    }
    let hello = Handshake::parse(&buf)?;
    let mut capabilities = (want.capabilities & !cap::CONNECT_ATTRS)
        | cap::PROTOCOL_41
        | cap::SECURE_CONNECTION
        | cap::PLUGIN_AUTH
        | cap::PLUGIN_AUTH_LENENC;
    if want.database.is_some() {
        capabilities |= cap::CONNECT_WITH_DB;
    } else {
        capabilities &= !cap::CONNECT_WITH_DB;
    }
    let missing = capabilities & !hello.capabilities & !cap::LONG_PASSWORD;
    if missing != 0 {
        return Err(UpstreamError::Protocol(format!(
            "the server lacks capabilities {missing:#x}"
        )));
    }
    let max_packet = 1 << 24;
    let mut seq = 1u8;
    let mut io: Pin<Box<dyn Stream>> = match &login.tls {
        Some(config) => {
            if hello.capabilities & cap::SSL == 0 {
                return Err(UpstreamError::Protocol(
                    "the server does not offer TLS, and the stack requires it".into(),
                ));
            }
            capabilities |= cap::SSL;
            write_packet(
                &mut tcp,
                seq,
                &packet::ssl_request(capabilities, max_packet, want.charset),
            )
            .await?;
            tcp.flush().await?;
            seq += 1;
            let name = rustls::pki_types::ServerName::try_from(server.name.clone())
                .map_err(|e| UpstreamError::Protocol(format!("server name: {e}")))?;
            let connector = tokio_rustls::TlsConnector::from(config.clone());
            // The handshake packet was read whole; nothing else is buffered.
            let tls = connector.connect(name, tcp.into_inner()).await?;
            Box::pin(tls)
        }
        None => Box::pin(tcp.into_inner()),
    };
    let answer = HandshakeResponse {
        capabilities,
        max_packet,
        charset: want.charset,
        user: login.user.clone(),
        auth: packet::native_scramble(login.password.as_bytes(), &hello.seed),
        database: want.database.clone(),
        auth_plugin: Some(NATIVE_PASSWORD.into()),
    };
    write_packet(&mut io, seq, &answer.encode()).await?;
    io.flush().await?;
    let mut io = BufStream::new(io);
    loop {
        let s = read_packet(&mut io, &mut buf).await?;
        match buf.first() {
            Some(0x00) => break,
            Some(0xff) => {
                let (code, msg) = packet::parse_err(&buf)?;
                return Err(UpstreamError::Refused(code, msg, buf));
            }
            Some(0xfe) => {
                let (plugin, seed) = packet::parse_auth_switch(&buf)?;
                if plugin != NATIVE_PASSWORD {
                    return Err(UpstreamError::Protocol(format!(
                        "the server asks for {plugin}; the endpoint speaks {NATIVE_PASSWORD} only"
                    )));
                }
                let auth = packet::native_scramble(login.password.as_bytes(), &seed);
                write_packet(&mut io, s.wrapping_add(1), &auth).await?;
                io.flush().await?;
            }
            _ => {
                return Err(UpstreamError::Protocol(
                    "unexpected packet during login".into(),
                ));
            }
        }
    }
    Ok(Upstream {
        server: server.clone(),
        io,
        version: hello.server_version,
        held: None,
    })
}
