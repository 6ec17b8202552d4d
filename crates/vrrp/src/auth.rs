//! Optional advert authentication between hastack nodes (`vrrp.authenticate`).
//!
//! RFC 5798 removed VRRPv2's authentication and relies on TTL 255 and the network; that
//! stops a remote forger but not a local one (any user can send UDP in loopback mode,
//! any host on the segment can send protocol 112). With a shared key, every advert
//! carries an HMAC-SHA256 tag, truncated to [`TAG_LEN`] bytes, appended after the VRRP
//! message. The tag covers the IPv4 source and destination and the message, so an
//! advert cannot be replayed to another destination or re-addressed.
//!
//! keepalived does not speak this: turn it on only between hastack nodes. It does not
//! stop the replay of a captured advert to the same destination (VRRP has no sequence
//! number); what it stops is the forgery of a priority or an interval.

use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Bytes of the tag appended to each advert.
pub const TAG_LEN: usize = 16;
/// Bytes of the key.
pub const KEY_LEN: usize = 32;

/// The shared key of the lb tier.
#[derive(Clone)]
pub struct Key([u8; KEY_LEN]);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(…)")
    }
}

/// Why the key file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Reading or creating the file failed.
    #[error("VRRP key {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file holds something else than a key.
    #[error(
        "VRRP key {path}: expected {KEY_LEN} bytes as 64 hex digits (or 32 raw bytes), found {len} bytes"
    )]
    Format {
        /// The file.
        path: PathBuf,
        /// Its length.
        len: usize,
    },
    /// The file is missing and may not be made here.
    #[error(
        "VRRP key {0} is missing: authenticate = true needs the same key on every lb node; copy it from another lb (64 hex digits, mode 0600)"
    )]
    Missing(PathBuf),
}

/// Why an authenticated advert was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Too short to hold a message and a tag.
    #[error("no authentication tag")]
    Missing,
    /// The tag does not match.
    #[error("wrong authentication tag")]
    Wrong,
}

type HmacSha256 = Hmac<Sha256>;

impl Key {
    /// A key from its bytes.
    pub fn new(bytes: [u8; KEY_LEN]) -> Key {
        Key(bytes)
    }

    /// Parses a key file's content: 64 hex digits (whitespace around is fine) or
    /// exactly 32 raw bytes.
    pub fn parse(content: &[u8]) -> Option<Key> {
        let text = std::str::from_utf8(content).ok().map(str::trim);
        if let Some(hex) = text.filter(|t| t.len() == 2 * KEY_LEN) {
            let mut out = [0u8; KEY_LEN];
            for (i, o) in out.iter_mut().enumerate() {
                *o = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
            }
            return Some(Key(out));
        }
        <[u8; KEY_LEN]>::try_from(content).ok().map(Key)
    }

    /// Reads the key at `path`; when it is missing and `create` is true, makes one
    /// (random, 64 hex digits, mode 0600) atomically: a node that loses the race to
    /// another reads the winner's key.
    pub fn load_or_create(path: &Path, create: bool) -> Result<Key, KeyError> {
        let io = |source| KeyError::Io {
            path: path.to_path_buf(),
            source,
        };
        for _ in 0..3 {
            match std::fs::read(path) {
                Ok(content) => {
                    return Key::parse(&content).ok_or_else(|| KeyError::Format {
                        path: path.to_path_buf(),
                        len: content.len(),
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    if !create {
                        return Err(KeyError::Missing(path.to_path_buf()));
                    }
                }
                Err(e) => return Err(io(e)),
            }
            let mut bytes = [0u8; KEY_LEN];
            std::fs::File::open("/dev/urandom")
                .and_then(|mut f| f.read_exact(&mut bytes))
                .map_err(io)?;
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(io)?;
            }
            let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
            {
                use std::os::unix::fs::OpenOptionsExt;
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&tmp)
                    .map_err(io)?;
                f.write_all(format!("{hex}\n").as_bytes())
                    .and_then(|()| f.sync_all())
                    .map_err(|e| {
                        let _ = std::fs::remove_file(&tmp);
                        io(e)
                    })?;
            }
            // link(2) fails if the name exists: never replaces another node's key.
            let linked = std::fs::hard_link(&tmp, path);
            let _ = std::fs::remove_file(&tmp);
            match linked {
                Ok(()) => return Ok(Key(bytes)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io(e)),
            }
        }
        Err(KeyError::Missing(path.to_path_buf()))
    }

    fn mac(&self, src: Ipv4Addr, dst: Ipv4Addr, msg: &[u8]) -> HmacSha256 {
        // new_from_slice accepts any key length: a 32-byte key cannot fail.
        let mut mac = match HmacSha256::new_from_slice(&self.0) {
            Ok(m) => m,
            Err(_) => unreachable!("HMAC takes keys of any length"),
        };
        mac.update(&src.octets());
        mac.update(&dst.octets());
        mac.update(msg);
        mac
    }

    /// The tag of `msg` sent from `src` to `dst`.
    pub fn tag(&self, src: Ipv4Addr, dst: Ipv4Addr, msg: &[u8]) -> [u8; TAG_LEN] {
        let full = self.mac(src, dst, msg).finalize().into_bytes();
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(&full[..TAG_LEN]);
        out
    }

    /// `msg` followed by its tag.
    pub fn seal(&self, src: Ipv4Addr, dst: Ipv4Addr, mut msg: Vec<u8>) -> Vec<u8> {
        let tag = self.tag(src, dst, &msg);
        msg.extend_from_slice(&tag);
        msg
    }

    /// Checks the tag at the end of `payload` (in constant time) and returns the
    /// message before it.
    pub fn open<'a>(
        &self,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        payload: &'a [u8],
    ) -> Result<&'a [u8], AuthError> {
        if payload.len() <= TAG_LEN {
            return Err(AuthError::Missing);
        }
        let (msg, tag) = payload.split_at(payload.len() - TAG_LEN);
        self.mac(src, dst, msg)
            .verify_truncated_left(tag)
            .map_err(|_| AuthError::Wrong)?;
        Ok(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::Advert;

    fn key(b: u8) -> Key {
        Key::new([b; KEY_LEN])
    }

    const A: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const B: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

    #[test]
    fn tag_is_hmac_sha256_truncated_to_16_bytes() {
        // RFC 4231 test case 2 (key "Jefe"), checked through the same HMAC: our tag is
        // the first 16 bytes of HMAC-SHA256(key, src ‖ dst ‖ msg).
        let mut mac = HmacSha256::new_from_slice(b"Jefe").expect("key");
        mac.update(b"what do ya want for nothing?");
        let full = mac.finalize().into_bytes();
        assert_eq!(
            full[..4],
            [0x5b, 0xdc, 0xc1, 0x46],
            "RFC 4231 4.3: HMAC-SHA-256"
        );
        let k = key(7);
        let msg = b"\x31\x33\x64\x01\x00\x0a\x00\x00\x0a\x00\x00\x0a";
        let mut mac = HmacSha256::new_from_slice(&[7u8; 32]).expect("key");
        mac.update(&A.octets());
        mac.update(&B.octets());
        mac.update(msg);
        assert_eq!(k.tag(A, B, msg)[..], mac.finalize().into_bytes()[..TAG_LEN]);
    }

    #[test]
    fn sealed_adverts_open_only_with_the_key_and_the_addresses() {
        let adv = Advert {
            vrid: 51,
            priority: 100,
            max_adver_int_cs: 10,
            addresses: vec![Ipv4Addr::new(10, 0, 0, 10)],
        };
        let msg = adv.encode(A, B);
        let sealed = key(1).seal(A, B, msg.clone());
        assert_eq!(sealed.len(), msg.len() + TAG_LEN);
        assert_eq!(key(1).open(A, B, &sealed), Ok(&msg[..]));
        assert_eq!(key(2).open(A, B, &sealed), Err(AuthError::Wrong));
        assert_eq!(
            key(1).open(A, Ipv4Addr::new(224, 0, 0, 18), &sealed),
            Err(AuthError::Wrong),
            "re-addressed"
        );
        assert_eq!(
            key(1).open(A, B, &msg),
            Err(AuthError::Missing),
            "no tag: a 12-byte advert cannot hold one"
        );
        assert_eq!(key(1).open(A, B, &msg[..8]), Err(AuthError::Missing));
        for i in 0..sealed.len() {
            let mut m = sealed.clone();
            m[i] ^= 0x10;
            assert!(key(1).open(A, B, &m).is_err(), "byte {i} flipped");
        }
    }

    #[test]
    fn key_file_is_made_once_0600_and_read_back() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("hastack-vrrp-key-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("secrets/vrrp.key");
        assert!(matches!(
            Key::load_or_create(&path, false),
            Err(KeyError::Missing(_))
        ));
        let k1 = Key::load_or_create(&path, true).expect("made");
        let k2 = Key::load_or_create(&path, true).expect("read");
        assert_eq!(k1.0, k2.0, "the second call reads the first key");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(&path, b"short").expect("write");
        assert!(matches!(
            Key::load_or_create(&path, true),
            Err(KeyError::Format { len: 5, .. })
        ));
        std::fs::write(&path, [9u8; 32]).expect("write");
        assert_eq!(Key::load_or_create(&path, false).expect("raw").0, [9u8; 32]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
