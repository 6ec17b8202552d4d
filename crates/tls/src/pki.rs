//! The stack's internal certificate authority, under `<state_dir>/pki/`:
//!
//! | file | what |
//! |---|---|
//! | `ca.crt`, `ca.key` | the CA (ECDSA P-256, ten years); clients trust `ca.crt` |
//! | `site.crt`, `site.key` | the site's server certificate (its name and the VIP) |
//! | `nodes/NAME.crt`, `nodes/NAME.key` | one per node (its name and address), for serving and as a TLS client (mTLS) |
//!
//! Keys are 0600. Leaf certificates live [`LEAF_DAYS`] and are re-issued by
//! [`Pki::ensure`] once fewer than [`RENEW_BEFORE_DAYS`] remain, when their names no
//! longer match the topology, or when the CA that signed them is gone. Every issuing
//! happens under an exclusive lock on `pki/lock`, so the supervisor and node processes
//! can all call `ensure` and never write a certificate and a key that do not match.
//! Files are replaced by rename, and readers ([`crate::reload`]) re-read them on change.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};
use tracing::info;

/// How long a leaf certificate is valid.
pub const LEAF_DAYS: i64 = 90;
/// A leaf with fewer days than this left is re-issued.
pub const RENEW_BEFORE_DAYS: i64 = 30;
/// How long the CA is valid.
pub const CA_DAYS: i64 = 3650;

/// Why the PKI could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A certificate or key could not be made or parsed.
    #[error("{path}: {why}")]
    Bad {
        /// The file (or what was being made).
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// A certificate is needed and the CA key to issue it is not there.
    #[error(
        "{path} is missing and there is no CA key at {ca_key} to issue it: copy the pki/ directory of the server where `hastack pki init` ran"
    )]
    NoCaKey {
        /// The missing certificate.
        path: PathBuf,
        /// Where the CA key was looked for.
        ca_key: PathBuf,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn bad(path: &Path, why: impl std::fmt::Display) -> PkiError {
    PkiError::Bad {
        path: path.to_path_buf(),
        why: why.to_string(),
    }
}

/// What a certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// A server only (the site's certificate).
    Server,
    /// A server and a TLS client (a node: it serves its tier and connects to the next).
    ServerAndClient,
}

/// One certificate the PKI keeps: its file stem and the names it must hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// `site` or `nodes/NAME`.
    pub stem: String,
    /// DNS names (the first is the subject's common name).
    pub dns: Vec<String>,
    /// IP addresses.
    pub ips: Vec<IpAddr>,
    /// Server, or server and client.
    pub usage: Usage,
}

impl Identity {
    /// The site's certificate: its host name and the VIP.
    pub fn site(name: &str, vip: IpAddr) -> Identity {
        Identity {
            stem: "site".into(),
            dns: vec![name.to_string()],
            ips: vec![vip],
            usage: Usage::Server,
        }
    }

    /// A node's certificate: its name and address.
    pub fn node(name: &str, address: IpAddr) -> Identity {
        Identity {
            stem: format!("nodes/{name}"),
            dns: vec![name.to_string()],
            ips: vec![address],
            usage: Usage::ServerAndClient,
        }
    }
}

/// A certificate file's facts that decide whether it must be re-issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFacts {
    /// Seconds since the epoch when it expires.
    pub not_after: i64,
    /// Its DNS names.
    pub dns: Vec<String>,
    /// Its IP addresses.
    pub ips: Vec<IpAddr>,
    /// Its serial number, hex.
    pub serial: String,
}

/// Reads the facts of the first certificate in a PEM file.
pub fn cert_facts(pem: &[u8], path: &Path) -> Result<CertFacts, PkiError> {
    with_cert(pem, path, |x| {
        let mut dns = Vec::new();
        let mut ips = Vec::new();
        if let Ok(Some(san)) = x.subject_alternative_name() {
            for n in &san.value.general_names {
                match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => dns.push(d.to_string()),
                    x509_parser::extensions::GeneralName::IPAddress(b) => match b.len() {
                        4 => ips.push(IpAddr::from(<[u8; 4]>::try_from(*b).unwrap_or_default())),
                        16 => ips.push(IpAddr::from(<[u8; 16]>::try_from(*b).unwrap_or_default())),
                        _ => {}
                    },
                    _ => {}
                }
            }
        }
        Ok(CertFacts {
            not_after: x.validity().not_after.timestamp(),
            dns,
            ips,
            serial: x.raw_serial_as_string(),
        })
    })
}

fn with_cert<T>(
    pem: &[u8],
    path: &Path,
    f: impl FnOnce(&x509_parser::certificate::X509Certificate<'_>) -> Result<T, PkiError>,
) -> Result<T, PkiError> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem)
        .map_err(|e| bad(path, format!("not a PEM certificate: {e}")))?;
    let x = pem
        .parse_x509()
        .map_err(|e| bad(path, format!("not an X.509 certificate: {e}")))?;
    f(&x)
}

/// Whether `name` is covered by certificate name `pattern` (`*.example.com` covers one
/// label), case-insensitively.
pub fn name_matches(pattern: &str, name: &str) -> bool {
    let (p, n) = (pattern.to_ascii_lowercase(), name.to_ascii_lowercase());
    match p.strip_prefix("*.") {
        Some(rest) => n
            .split_once('.')
            .is_some_and(|(label, tail)| !label.is_empty() && tail == rest),
        None => p == n,
    }
}

/// A node's certificate and key, and the CA's certificate, by absolute path: what a
/// node hands to programs that read the files themselves (MariaDB, sqlx).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFiles {
    /// The CA certificate every peer is verified against.
    pub ca: PathBuf,
    /// The node's certificate (its name and address; server and client).
    pub cert: PathBuf,
    /// The node's private key.
    pub key: PathBuf,
}

/// Makes sure node `name`'s certificate exists and is current (see [`Pki::ensure`])
/// and returns its files by absolute path.
pub fn node_files(state_dir: &Path, name: &str, address: IpAddr) -> Result<NodeFiles, PkiError> {
    let dir = fs::canonicalize(state_dir).map_err(io(state_dir))?;
    let pki = Pki::new(&dir);
    let id = Identity::node(name, address);
    pki.ensure(std::slice::from_ref(&id), false)?;
    Ok(NodeFiles {
        ca: pki.ca_cert(),
        cert: pki.cert(&id.stem),
        key: pki.key(&id.stem),
    })
}

/// The internal CA of one stack.
#[derive(Debug, Clone)]
pub struct Pki {
    dir: PathBuf,
}

impl Pki {
    /// The PKI under `<state_dir>/pki`.
    pub fn new(state_dir: &Path) -> Pki {
        Pki {
            dir: state_dir.join("pki"),
        }
    }

    /// The PKI directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The CA certificate clients trust.
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// The CA's private key (0600).
    pub fn ca_key(&self) -> PathBuf {
        self.dir.join("ca.key")
    }

    /// The certificate of an identity stem (`site`, `nodes/web1`).
    pub fn cert(&self, stem: &str) -> PathBuf {
        self.dir.join(format!("{stem}.crt"))
    }

    /// The key of an identity stem.
    pub fn key(&self, stem: &str) -> PathBuf {
        self.dir.join(format!("{stem}.key"))
    }

    /// Makes sure the CA and every identity's certificate exist, hold the identity's
    /// names, were signed by the current CA and have more than [`RENEW_BEFORE_DAYS`]
    /// left; issues those that do not (all of them with `force`). Returns the stems
    /// issued.
    pub fn ensure(&self, identities: &[Identity], force: bool) -> Result<Vec<String>, PkiError> {
        fs::create_dir_all(self.dir.join("nodes")).map_err(io(&self.dir))?;
        let _lock = self.lock()?;
        let now = OffsetDateTime::now_utc();
        let ca = self.ensure_ca(now)?;
        let mut issued = Vec::new();
        for id in identities {
            let cert = self.cert(&id.stem);
            let due = force || self.due(id, ca.as_ref().map(|c| &c.0), now)?;
            if !due {
                continue;
            }
            let Some((ca_pem, ca_key)) = &ca else {
                if cert.exists() {
                    // Cannot renew without the CA key: keep serving what is there.
                    continue;
                }
                return Err(PkiError::NoCaKey {
                    path: cert,
                    ca_key: self.ca_key(),
                });
            };
            self.issue(id, ca_pem, ca_key, now)?;
            info!(certificate = %cert.display(), "issued a certificate from the internal CA");
            issued.push(id.stem.clone());
        }
        Ok(issued)
    }

    /// An exclusive lock on `pki/lock`, held while certificates are checked and written.
    fn lock(&self) -> Result<nix::fcntl::Flock<File>, PkiError> {
        let path = self.dir.join("lock");
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(io(&path))?;
        nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| bad(&path, format!("cannot lock: {e}")))
    }

    /// The CA's certificate PEM and key, made when there is none. `None` when the
    /// certificate is there but its key is not (a server that only holds copies).
    fn ensure_ca(&self, now: OffsetDateTime) -> Result<Option<(String, KeyPair)>, PkiError> {
        let (cert, key) = (self.ca_cert(), self.ca_key());
        if cert.exists() {
            if !key.exists() {
                return Ok(None);
            }
            let pem = fs::read_to_string(&cert).map_err(io(&cert))?;
            let key_pem = fs::read_to_string(&key).map_err(io(&key))?;
            let pair = KeyPair::from_pem(&key_pem).map_err(|e| bad(&key, e))?;
            return Ok(Some((pem, pair)));
        }
        let pair = KeyPair::generate().map_err(|e| bad(&key, e))?;
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "hastack internal CA");
        dn.push(DnType::OrganizationName, "hastack");
        p.distinguished_name = dn;
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        p.not_before = now - Duration::hours(1);
        p.not_after = now + Duration::days(CA_DAYS);
        p.serial_number = Some(serial());
        let c = p.self_signed(&pair).map_err(|e| bad(&cert, e))?;
        write_atomic(&key, pair.serialize_pem().as_bytes(), 0o600)?;
        write_atomic(&cert, c.pem().as_bytes(), 0o644)?;
        info!(ca = %cert.display(), "created the internal CA");
        Ok(Some((c.pem(), pair)))
    }

    /// Whether `id`'s certificate must be (re-)issued.
    fn due(
        &self,
        id: &Identity,
        ca_pem: Option<&String>,
        now: OffsetDateTime,
    ) -> Result<bool, PkiError> {
        let (cert, key) = (self.cert(&id.stem), self.key(&id.stem));
        if !cert.exists() || !key.exists() {
            return Ok(true);
        }
        let pem = fs::read(&cert).map_err(io(&cert))?;
        let Ok(facts) = cert_facts(&pem, &cert) else {
            return Ok(true);
        };
        let mut want_dns = id.dns.clone();
        let mut have_dns = facts.dns.clone();
        want_dns.sort();
        have_dns.sort();
        let mut want_ips = id.ips.clone();
        let mut have_ips = facts.ips.clone();
        want_ips.sort();
        have_ips.sort();
        if want_dns != have_dns || want_ips != have_ips {
            return Ok(true);
        }
        if facts.not_after - now.unix_timestamp() < RENEW_BEFORE_DAYS * 86_400 {
            return Ok(true);
        }
        if let Some(ca_pem) = ca_pem {
            // Signed by the CA that is there now (not one deleted and made again)?
            let signed = with_cert(ca_pem.as_bytes(), &self.ca_cert(), |ca| {
                with_cert(&pem, &cert, |leaf| {
                    Ok(leaf.verify_signature(Some(ca.public_key())).is_ok())
                })
            })?;
            if !signed {
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn issue(
        &self,
        id: &Identity,
        ca_pem: &str,
        ca_key: &KeyPair,
        now: OffsetDateTime,
    ) -> Result<(), PkiError> {
        let (cert, key) = (self.cert(&id.stem), self.key(&id.stem));
        let issuer =
            Issuer::from_ca_cert_pem(ca_pem, ca_key).map_err(|e| bad(&self.ca_cert(), e))?;
        let pair = KeyPair::generate().map_err(|e| bad(&key, e))?;
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            id.dns.first().cloned().unwrap_or_else(|| id.stem.clone()),
        );
        p.distinguished_name = dn;
        for d in &id.dns {
            let name = d
                .clone()
                .try_into()
                .map_err(|e| bad(&cert, format!("{d}: {e}")))?;
            p.subject_alt_names.push(SanType::DnsName(name));
        }
        p.subject_alt_names
            .extend(id.ips.iter().map(|ip| SanType::IpAddress(*ip)));
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = match id.usage {
            Usage::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
            Usage::ServerAndClient => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        };
        p.use_authority_key_identifier_extension = true;
        p.not_before = now - Duration::hours(1);
        p.not_after = now + Duration::days(LEAF_DAYS);
        p.serial_number = Some(serial());
        let c = p.signed_by(&pair, &issuer).map_err(|e| bad(&cert, e))?;
        if let Some(parent) = cert.parent() {
            fs::create_dir_all(parent).map_err(io(parent))?;
        }
        // Key first: a reader seeing the new certificate with the old key retries (the
        // pair is checked on load), and it never sees the old certificate re-paired.
        write_atomic(&key, pair.serialize_pem().as_bytes(), 0o600)?;
        write_atomic(&cert, c.pem().as_bytes(), 0o644)?;
        Ok(())
    }
}

fn serial() -> rcgen::SerialNumber {
    let mut b: [u8; 16] = rand::random();
    b[0] &= 0x7f; // positive
    rcgen::SerialNumber::from_slice(&b)
}

/// Writes `bytes` to `path` with `mode` by a rename, so no reader sees half a file.
fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), PkiError> {
    let tmp = path.with_extension(format!(
        "{}.tmp{}",
        path.extension().and_then(|e| e.to_str()).unwrap_or(""),
        std::process::id()
    ));
    let mut f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io(&tmp))?;
    f.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(io(&tmp))?;
    f.write_all(bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    fs::rename(&tmp, path).map_err(io(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> Vec<Identity> {
        vec![
            Identity::site("www.foobar.com", "127.0.0.100".parse().expect("ip")),
            Identity::node("web1", "127.0.2.1".parse().expect("ip")),
        ]
    }

    #[test]
    fn ensure_makes_the_ca_and_each_identity_once() {
        let d = tempfile::tempdir().expect("tempdir");
        let pki = Pki::new(d.path());
        let issued = pki.ensure(&ids(), false).expect("ensure");
        assert_eq!(issued, ["site", "nodes/web1"]);
        let mode = fs::metadata(pki.ca_key())
            .expect("ca.key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the CA key is private");
        let mode = fs::metadata(pki.key("nodes/web1"))
            .expect("key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let facts = cert_facts(
            &fs::read(pki.cert("site")).expect("site"),
            Path::new("site"),
        )
        .expect("facts");
        assert_eq!(facts.dns, ["www.foobar.com"]);
        assert_eq!(facts.ips, ["127.0.0.100".parse::<IpAddr>().expect("ip")]);
        let left = facts.not_after - OffsetDateTime::now_utc().unix_timestamp();
        assert!((LEAF_DAYS - 1) * 86_400 < left && left <= LEAF_DAYS * 86_400);
        assert!(
            pki.ensure(&ids(), false).expect("again").is_empty(),
            "nothing due"
        );
    }

    #[test]
    fn a_changed_address_a_new_ca_or_force_reissues() {
        let d = tempfile::tempdir().expect("tempdir");
        let pki = Pki::new(d.path());
        pki.ensure(&ids(), false).expect("ensure");
        let mut moved = ids();
        moved[1] = Identity::node("web1", "10.77.0.3".parse().expect("ip"));
        assert_eq!(pki.ensure(&moved, false).expect("moved"), ["nodes/web1"]);
        fs::remove_file(pki.ca_cert()).expect("rm");
        fs::remove_file(pki.ca_key()).expect("rm");
        assert_eq!(
            pki.ensure(&moved, false).expect("new ca"),
            ["site", "nodes/web1"],
            "leaves of a CA that is gone are issued again"
        );
        let before = cert_facts(&fs::read(pki.cert("site")).expect("r"), Path::new("s"))
            .expect("facts")
            .serial;
        assert_eq!(pki.ensure(&moved, true).expect("force").len(), 2);
        let after = cert_facts(&fs::read(pki.cert("site")).expect("r"), Path::new("s"))
            .expect("facts")
            .serial;
        assert_ne!(before, after);
    }

    #[test]
    fn without_the_ca_key_existing_certificates_are_kept_and_missing_ones_refused() {
        let d = tempfile::tempdir().expect("tempdir");
        let pki = Pki::new(d.path());
        pki.ensure(&ids(), false).expect("ensure");
        fs::remove_file(pki.ca_key()).expect("rm");
        assert!(pki.ensure(&ids(), true).expect("kept").is_empty());
        let more = [Identity::node("web2", "127.0.2.2".parse().expect("ip"))];
        let err = pki.ensure(&more, false).expect_err("no CA key");
        assert!(
            err.to_string()
                .contains("nodes/web2.crt is missing and there is no CA key"),
            "{err}"
        );
    }

    #[test]
    fn wildcards_cover_one_label() {
        assert!(name_matches("*.foobar.com", "www.foobar.com"));
        assert!(name_matches("WWW.foobar.com", "www.FOOBAR.com"));
        assert!(!name_matches("*.foobar.com", "foobar.com"));
        assert!(!name_matches("*.foobar.com", "a.b.foobar.com"));
        assert!(!name_matches("www.foobar.com", "api.foobar.com"));
    }
}
