//! The database passwords every node of a stack shares, kept in `<state_dir>/secrets/`.
//!
//! A password the topology names is used as it is; any other is generated once (32
//! random alphanumerics) and kept in a file of its own, mode 0600, so that every node
//! that reads the same state directory finds the same one. Nodes start at the same
//! time, so a file is created whole or not at all: written under a temporary name and
//! hard-linked into place, which fails if another node got there first (then its file
//! is read). A secret file that exists with wider permissions is narrowed to 0600.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// A secret that could not be read or made.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct SecretError {
    /// The file.
    pub path: PathBuf,
    /// The cause.
    pub source: std::io::Error,
}

/// The database passwords of a stack.
#[derive(Clone, PartialEq, Eq)]
pub struct DbSecrets {
    /// The application's account.
    pub app: String,
    /// The replication account.
    pub repl: String,
    /// hastack's own administrative account (fencing, promotion, health).
    pub admin: String,
}

impl std::fmt::Debug for DbSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DbSecrets { .. }")
    }
}

impl DbSecrets {
    /// The passwords named by the topology, the others from (or made into)
    /// `<state_dir>/secrets/`.
    pub fn load_or_create(
        state_dir: &Path,
        app: Option<&str>,
        repl: Option<&str>,
    ) -> Result<DbSecrets, SecretError> {
        let dir = state_dir.join("secrets");
        std::fs::create_dir_all(&dir).map_err(|source| SecretError {
            path: dir.clone(),
            source,
        })?;
        let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
        let get = |given: Option<&str>, file: &str| match given {
            Some(p) => Ok(p.to_string()),
            None => load_or_create(&dir.join(file)),
        };
        Ok(DbSecrets {
            app: get(app, "db-app.password")?,
            repl: get(repl, "db-repl.password")?,
            admin: get(None, "db-admin.password")?,
        })
    }
}

fn random_secret() -> String {
    use rand::Rng;
    rand::thread_rng()
        .sample_iter(&rand::distributions::Alphanumeric)
        .take(32)
        .map(char::from)
        .collect()
}

/// Writes `text` to a new file `path` with mode 0600 (fails if it exists).
pub fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    // An existing file keeps its mode through open(): narrow it.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()
}

/// The secret in `path`, made if there is none.
fn load_or_create(path: &Path) -> Result<String, SecretError> {
    let err = |source| SecretError {
        path: path.to_path_buf(),
        source,
    };
    for _ in 0..3 {
        match std::fs::read_to_string(path) {
            Ok(s) if !s.trim().is_empty() => {
                let mode = std::fs::metadata(path).map_err(err)?.permissions().mode();
                if mode & 0o077 != 0 {
                    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                        .map_err(err)?;
                }
                return Ok(s.trim().to_string());
            }
            Ok(_) => {
                // Empty: a file from an older hastack or a crash. Replace it.
                std::fs::remove_file(path).map_err(err)?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(err(e)),
        }
        let secret = random_secret();
        let tmp = path.with_extension(format!("tmp.{}.{}", std::process::id(), &secret[..8]));
        write_private(&tmp, &secret).map_err(err)?;
        let linked = std::fs::hard_link(&tmp, path);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => return Ok(secret),
            // Another node made it first: read theirs.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(err(e)),
        }
    }
    Err(err(std::io::Error::other(
        "the file kept changing while it was read",
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_once_shared_and_private() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = DbSecrets::load_or_create(dir.path(), None, Some("given")).expect("create");
        assert_eq!(a.repl, "given");
        assert_eq!(a.app.len(), 32);
        assert_ne!(a.app, a.admin);
        let b = DbSecrets::load_or_create(dir.path(), None, Some("given")).expect("load");
        assert_eq!(a, b, "a second node reads the same secrets");
        let file = dir.path().join("secrets/db-app.password");
        let mode = std::fs::metadata(&file).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!dir.path().join("secrets/db-repl.password").exists());
    }

    #[test]
    fn an_existing_readable_secret_is_narrowed_to_0600() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("secrets")).expect("mkdir");
        let file = dir.path().join("secrets/db-admin.password");
        std::fs::write(&file, "old-secret\n").expect("write");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let s = DbSecrets::load_or_create(dir.path(), None, None).expect("load");
        assert_eq!(s.admin, "old-secret");
        let mode = std::fs::metadata(&file).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn racing_nodes_agree() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().to_path_buf();
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let p = path.clone();
                std::thread::spawn(move || DbSecrets::load_or_create(&p, None, None))
            })
            .collect();
        let all: Vec<DbSecrets> = handles
            .into_iter()
            .map(|h| h.join().expect("thread").expect("secrets"))
            .collect();
        assert!(all.windows(2).all(|w| w[0] == w[1]), "nodes disagree");
    }
}
