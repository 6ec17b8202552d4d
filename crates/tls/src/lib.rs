//! TLS for every tier of the stack, on rustls with the `ring` provider:
//!
//! - [`pki`]: the internal CA under `<state_dir>/pki/` (rcgen): a certificate for the
//!   site and one per node, re-issued before they expire;
//! - [`reload`]: certificates in service that are re-read when their files change;
//! - [`config`]: server configurations (SNI, ALPN, resumption, optional client
//!   certificates) and client configurations (trust the internal CA, present the
//!   node's certificate);
//! - [`Acceptor`]: the server side of one connection, with its metrics and a clear
//!   answer to a client that speaks plain HTTP to a TLS port;
//! - [`NodeTls`]: all of it as one node of a topology uses it;
//! - [`sni`]: the server name of a ClientHello read without decrypting (passthrough).
//!
//! Invariant: only TLS 1.2 and 1.3 are ever negotiated, and between tiers only
//! certificates of the internal CA are accepted.

pub mod config;
pub mod node;
pub mod pki;
pub mod reload;
pub mod sni;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use rustls::{CommonState, HandshakeKind};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tracing::debug;

pub use config::{ALPN_H2, ALPN_HTTP1, client_config, server_config};
pub use node::NodeTls;
pub use reload::{Reloading, spawn_reloader};
pub use rustls;
pub use rustls::pki_types as rustls_pki;
pub use rustls::{ClientConfig, ServerConfig};
pub use tokio_rustls::{TlsAcceptor, TlsConnector, client, server};

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate, key or CA file could not be read.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A file was read but is not what it should be.
    #[error("{path}: {why}")]
    Bad {
        /// The file.
        path: PathBuf,
        /// What is wrong, and what to do.
        why: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(String),
    /// The internal CA could not issue or read a certificate.
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
}

impl TlsError {
    pub(crate) fn file(path: &Path, source: std::io::Error) -> TlsError {
        TlsError::File {
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn bad(path: &Path, why: impl std::fmt::Display) -> TlsError {
        TlsError::Bad {
            path: path.to_path_buf(),
            why: why.to_string(),
        }
    }
}

/// Longest time a client may take to complete its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandshakeLabels {
    side: &'static str,
    protocol: &'static str,
    alpn: &'static str,
    resumed: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    side: &'static str,
    cause: &'static str,
}

/// TLS figures of one node: handshakes by protocol, ALPN and resumption, and failed
/// handshakes by cause.
#[derive(Clone, Debug, Default)]
pub struct TlsMetrics {
    handshakes: Family<HandshakeLabels, Counter>,
    failures: Family<FailureLabels, Counter>,
}

impl TlsMetrics {
    /// Metrics registered in `registry`.
    pub fn new(registry: &mut Registry) -> TlsMetrics {
        let m = TlsMetrics::default();
        registry.register(
            "hastack_tls_handshakes",
            "Completed TLS handshakes, by side, protocol version, ALPN protocol and resumption",
            m.handshakes.clone(),
        );
        registry.register(
            "hastack_tls_handshake_failures",
            "TLS handshakes that failed, by side and cause",
            m.failures.clone(),
        );
        m
    }

    /// Counts a completed handshake (`side` is `server` or `client`).
    pub fn handshake(&self, side: &'static str, conn: &CommonState) {
        let protocol = match conn.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
            _ => "other",
        };
        let alpn = match conn.alpn_protocol() {
            Some(ALPN_H2) => "h2",
            Some(ALPN_HTTP1) => "http/1.1",
            Some(_) => "other",
            None => "none",
        };
        let resumed = match conn.handshake_kind() {
            Some(HandshakeKind::Resumed) => "true",
            _ => "false",
        };
        self.handshakes
            .get_or_create(&HandshakeLabels {
                side,
                protocol,
                alpn,
                resumed,
            })
            .inc();
    }

    /// Counts a failed handshake.
    pub fn failure(&self, side: &'static str, cause: &'static str) {
        self.failures
            .get_or_create(&FailureLabels { side, cause })
            .inc();
    }
}

/// The cause of a failed handshake, as a metric label.
pub fn failure_cause(e: &std::io::Error) -> &'static str {
    if let Some(t) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        return match t {
            rustls::Error::NoCertificatesPresented => "no_client_certificate",
            rustls::Error::InvalidCertificate(_) => "bad_certificate",
            rustls::Error::PeerIncompatible(_) => "incompatible",
            rustls::Error::AlertReceived(_) => "alert_received",
            rustls::Error::InvalidMessage(_) | rustls::Error::PeerMisbehaved(_) => "protocol",
            _ => "other",
        };
    }
    match e.kind() {
        std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset => "closed",
        std::io::ErrorKind::InvalidData => "protocol",
        _ => "io",
    }
}

/// What a plain-HTTP client gets from a TLS port (as nginx's 497), before the close.
const PLAIN_HTTP_ANSWER: &[u8] = b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: 52\r\nConnection: close\r\n\r\nThis port speaks HTTPS only: use https:// (or TLS).\n";

/// The server side of TLS connections on one listener.
#[derive(Clone)]
pub struct Acceptor {
    tls: TlsAcceptor,
    metrics: TlsMetrics,
}

impl Acceptor {
    /// An acceptor with `config`, counting into `metrics`.
    pub fn new(config: Arc<ServerConfig>, metrics: TlsMetrics) -> Acceptor {
        Acceptor {
            tls: TlsAcceptor::from(config),
            metrics,
        }
    }

    /// Completes the handshake of `tcp`; `None` (counted, logged at debug) when it
    /// fails, times out, or the client speaks plain HTTP (answered with a 400).
    pub async fn accept(&self, mut tcp: TcpStream) -> Option<server::TlsStream<TcpStream>> {
        let deadline = tokio::time::Instant::now() + HANDSHAKE_TIMEOUT;
        // A TLS record starts with 0x16 (handshake); anything else is not TLS.
        let mut first = [0u8; 1];
        match tokio::time::timeout_at(deadline, tcp.peek(&mut first)).await {
            Err(_) => {
                self.metrics.failure("server", "timeout");
                return None;
            }
            Ok(Ok(0)) | Ok(Err(_)) => {
                self.metrics.failure("server", "closed");
                return None;
            }
            Ok(Ok(_)) if first[0] != 0x16 => {
                self.metrics.failure("server", "plain_http");
                let _ = tokio::time::timeout(Duration::from_secs(1), async {
                    let _ = tcp.write_all(PLAIN_HTTP_ANSWER).await;
                    let _ = tcp.shutdown().await;
                })
                .await;
                return None;
            }
            Ok(Ok(_)) => {}
        }
        match tokio::time::timeout_at(deadline, self.tls.accept(tcp)).await {
            Ok(Ok(stream)) => {
                self.metrics.handshake("server", stream.get_ref().1);
                Some(stream)
            }
            Ok(Err(e)) => {
                debug!(error = %e, "TLS handshake failed");
                self.metrics.failure("server", failure_cause(&e));
                None
            }
            Err(_) => {
                self.metrics.failure("server", "timeout");
                None
            }
        }
    }
}
