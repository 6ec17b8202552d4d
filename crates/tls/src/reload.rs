//! A certificate and its key read from two PEM files and read again when either file
//! changes, so a renewed certificate is served without a restart.
//!
//! [`Reloading::refresh`] compares the files' modification times and sizes with those
//! of the last load; a pair that does not load (half renewed: the key already new, the
//! certificate not yet) keeps the previous one in service and is tried again on the
//! next refresh. [`spawn_reloader`] refreshes every [`RELOAD_EVERY`].

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::TlsError;
use crate::pki::{CertFacts, cert_facts};

/// How often certificate files are checked for changes.
pub const RELOAD_EVERY: Duration = Duration::from_secs(1);

type Stamp = [(Option<SystemTime>, u64); 2];

/// What is in service: the key, and the certificate's names and serial.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The chain and signing key.
    pub key: Arc<CertifiedKey>,
    /// The leaf certificate's facts.
    pub facts: CertFacts,
}

/// A certificate and key in service, re-read when their files change.
#[derive(Debug)]
pub struct Reloading {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Loaded>,
    stamp: Mutex<Stamp>,
}

fn stamp(paths: [&Path; 2]) -> Stamp {
    paths.map(|p| match std::fs::metadata(p) {
        Ok(m) => (m.modified().ok(), m.len()),
        Err(_) => (None, 0),
    })
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads a certificate chain and its key, checking that they belong together.
pub fn load_pair(cert: &Path, key: &Path) -> Result<Loaded, TlsError> {
    let pem = std::fs::read(cert).map_err(|e| TlsError::file(cert, e))?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::bad(cert, format!("not a PEM certificate chain: {e}")))?;
    if chain.is_empty() {
        return Err(TlsError::bad(cert, "no certificate in the file"));
    }
    let facts = cert_facts(&pem, cert).map_err(|e| TlsError::bad(cert, e))?;
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| TlsError::bad(key, format!("not a PEM private key: {e}")))?;
    let certified = CertifiedKey::from_der(chain, key_der, &provider()).map_err(|e| {
        TlsError::bad(
            key,
            format!(
                "does not belong to the certificate {} ({e}); give the key the certificate was issued for",
                cert.display()
            ),
        )
    })?;
    Ok(Loaded {
        key: Arc::new(certified),
        facts,
    })
}

impl Reloading {
    /// Loads `cert` and `key`; fails when they do not load or do not match.
    pub fn load(cert: &Path, key: &Path) -> Result<Arc<Reloading>, TlsError> {
        let before = stamp([cert, key]);
        let loaded = load_pair(cert, key)?;
        Ok(Arc::new(Reloading {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            current: RwLock::new(loaded),
            stamp: Mutex::new(before),
        }))
    }

    /// The certificate and key in service.
    pub fn current(&self) -> Loaded {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The key in service (the hot path of a handshake).
    pub fn key(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .key
            .clone()
    }

    /// The key in service if its certificate covers server name `sni`.
    pub fn key_for(&self, sni: &str) -> Option<Arc<CertifiedKey>> {
        let cur = self.current.read().unwrap_or_else(|e| e.into_inner());
        cur.facts
            .dns
            .iter()
            .any(|p| crate::pki::name_matches(p, sni))
            .then(|| cur.key.clone())
    }

    /// The certificate file.
    pub fn cert_path(&self) -> &Path {
        &self.cert
    }

    /// Re-reads the pair if either file changed; true when a new pair went into service.
    pub fn refresh(&self) -> bool {
        let now = stamp([&self.cert, &self.key]);
        let mut last = self.stamp.lock().unwrap_or_else(|e| e.into_inner());
        if *last == now {
            return false;
        }
        match load_pair(&self.cert, &self.key) {
            Ok(loaded) => {
                info!(
                    certificate = %self.cert.display(),
                    serial = %loaded.facts.serial,
                    "certificate reloaded"
                );
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = loaded;
                *last = now;
                true
            }
            Err(e) => {
                // Half renewed, or broken: keep serving the last good pair.
                warn!(error = %e, "certificate changed on disk but does not load; keeping the one in service");
                false
            }
        }
    }
}

/// Refreshes `items` every [`RELOAD_EVERY`] until `shutdown` turns true.
pub fn spawn_reloader(items: Vec<Arc<Reloading>>, mut shutdown: watch::Receiver<bool>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(RELOAD_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {
                    for r in &items {
                        r.refresh();
                    }
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SniResolver;
    use crate::pki::{Identity, Pki};
    use std::net::IpAddr;

    fn setup() -> (tempfile::TempDir, Pki, Vec<Identity>) {
        let d = tempfile::tempdir().expect("tempdir");
        let pki = Pki::new(d.path());
        let ip: IpAddr = "127.0.0.100".parse().expect("ip");
        let ids = vec![
            Identity::site("www.foobar.com", ip),
            Identity {
                stem: "api".into(),
                dns: vec!["*.api.foobar.com".into()],
                ips: vec![],
                usage: crate::pki::Usage::Server,
            },
        ];
        pki.ensure(&ids, false).expect("ensure");
        (d, pki, ids)
    }

    #[test]
    fn a_renewed_pair_goes_into_service_and_a_half_written_one_does_not() {
        let (_d, pki, ids) = setup();
        let r = Reloading::load(&pki.cert("site"), &pki.key("site")).expect("load");
        let first = r.current().facts.serial;
        assert!(!r.refresh(), "nothing changed");
        // Half renewed: a new key beside the old certificate.
        let other = Reloading::load(&pki.cert("api"), &pki.key("api")).expect("api");
        std::fs::copy(pki.key("api"), pki.key("site")).expect("copy key");
        assert!(
            !r.refresh(),
            "a certificate with another key must not go into service"
        );
        assert_eq!(r.current().facts.serial, first);
        assert!(
            other
                .current()
                .facts
                .dns
                .contains(&"*.api.foobar.com".to_string())
        );
        // Renewed properly: the new pair serves.
        pki.ensure(&ids[..1], true).expect("renew");
        assert!(r.refresh(), "the renewed pair must go into service");
        assert_ne!(r.current().facts.serial, first);
    }

    #[test]
    fn load_says_when_the_key_is_not_the_certificates() {
        let (_d, pki, _) = setup();
        let e = Reloading::load(&pki.cert("site"), &pki.key("api")).expect_err("mismatch");
        assert!(
            e.to_string().contains("does not belong to the certificate"),
            "{e}"
        );
    }

    #[test]
    fn sni_picks_the_covering_certificate_and_defaults_to_the_first() {
        let (_d, pki, _) = setup();
        let site = Reloading::load(&pki.cert("site"), &pki.key("site")).expect("site");
        let api = Reloading::load(&pki.cert("api"), &pki.key("api")).expect("api");
        let r = SniResolver::new(vec![site.clone(), api.clone()]);
        let is = |k: Option<Arc<CertifiedKey>>, want: &Arc<Reloading>| {
            k.is_some_and(|k| k.cert == want.key().cert)
        };
        assert!(is(r.pick(Some("v1.api.foobar.com")), &api));
        assert!(is(r.pick(Some("www.foobar.com")), &site));
        assert!(is(r.pick(Some("unknown.example")), &site));
        assert!(is(r.pick(None), &site));
    }
}
