//! rustls server and client configurations as every tier uses them.
//!
//! - TLS 1.3 and 1.2 only, with the `ring` provider.
//! - Servers: SNI picks among several certificates ([`SniResolver`]); ALPN offers what
//!   the caller serves (h2 and http/1.1 at the edge, http/1.1 between tiers); sessions
//!   resume by ticket (TLS 1.3 and 1.2) or by session id from a cache; optionally a
//!   client certificate from the internal CA is required (mTLS between tiers).
//! - Clients (one tier connecting to the next): trust only the internal CA, present the
//!   node's own certificate, resume sessions.

use std::path::Path;
use std::sync::Arc;

use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig, SignatureScheme};

use crate::TlsError;
use crate::reload::Reloading;

/// ALPN protocol ids.
pub const ALPN_H2: &[u8] = b"h2";
/// ALPN id of HTTP/1.1.
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

/// How many TLS sessions a server remembers for resumption by session id.
const SESSION_CACHE: usize = 16 * 1024;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Picks the certificate whose names cover the client's SNI; without SNI, or with a
/// name no certificate covers, the first (the default) one.
#[derive(Debug)]
pub struct SniResolver {
    certs: Vec<Arc<Reloading>>,
}

impl SniResolver {
    /// A resolver over `certs` (not empty; the first is the default).
    pub fn new(certs: Vec<Arc<Reloading>>) -> SniResolver {
        SniResolver { certs }
    }

    /// The certificate for server name `sni`.
    pub fn pick(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        sni.and_then(|sni| self.certs.iter().find_map(|c| c.key_for(sni)))
            .or_else(|| self.certs.first().map(|c| c.key()))
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.pick(hello.server_name())
    }
}

/// Reads the CA certificates in a PEM file into a root store.
pub fn roots(ca: &Path) -> Result<RootCertStore, TlsError> {
    let pem = std::fs::read(ca).map_err(|e| TlsError::file(ca, e))?;
    let mut store = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| TlsError::bad(ca, format!("not a PEM certificate: {e}")))?;
        store
            .add(cert)
            .map_err(|e| TlsError::bad(ca, format!("not a usable CA certificate: {e}")))?;
    }
    if store.is_empty() {
        return Err(TlsError::bad(ca, "no CA certificate in the file"));
    }
    Ok(store)
}

/// A server configuration serving `certs` (SNI picks; the first is the default) with
/// `alpn`; with `client_ca`, only clients with a certificate from that CA get in.
pub fn server_config(
    certs: Vec<Arc<Reloading>>,
    alpn: &[&[u8]],
    client_ca: Option<&Path>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let p = provider();
    let builder = ServerConfig::builder_with_provider(p.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match client_ca {
        Some(ca) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)?), p)
                .build()
                .map_err(|e| TlsError::Config(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::new(SniResolver::new(certs)));
    config.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    config.session_storage = rustls::server::ServerSessionMemoryCache::new(SESSION_CACHE);
    config.ticketer =
        rustls::crypto::ring::Ticketer::new().map_err(|e| TlsError::Config(e.to_string()))?;
    // Stateless tickets are enough for resumption; rustls sends 4 per TLS 1.3 handshake
    // by default, where one serves a client that reconnects one connection at a time.
    config.send_tls13_tickets = 2;
    Ok(Arc::new(config))
}

/// Presents a node's own certificate to the servers it connects to.
#[derive(Debug)]
struct ClientIdentity(Arc<Reloading>);

impl ResolvesClientCert for ClientIdentity {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.key())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// A client configuration trusting only `ca`, presenting `identity` when given, and
/// offering `alpn`.
pub fn client_config(
    ca: &Path,
    identity: Option<Arc<Reloading>>,
    alpn: &[&[u8]],
) -> Result<Arc<ClientConfig>, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots(ca)?);
    let mut config = match identity {
        Some(id) => builder.with_client_cert_resolver(Arc::new(ClientIdentity(id))),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    Ok(Arc::new(config))
}
