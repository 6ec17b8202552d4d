//! The control sockets (`hastack up`'s and each lb node's): created so that only their
//! owner may connect, and every connection's peer checked by its credentials.
//!
//! Two locks, each enough alone: the socket file is mode 0600 (a peer needs write
//! permission to connect), and each accepted connection's `SO_PEERCRED` uid must be
//! this process's effective uid or root's. The second closes the moment between
//! `bind` and `chmod`, and holds even where the file's mode is not enforced.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use tokio::net::{UnixListener, UnixStream};

/// Binds a control socket at `path`, replacing a stale one of a previous run, mode 0600.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// A connection whose peer may not use the control socket.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// The peer's credentials could not be read.
    #[error("the peer's credentials (SO_PEERCRED) could not be read: {0}")]
    Credentials(std::io::Error),
    /// Another user.
    #[error("uid {peer} is neither this process's owner (uid {owner}) nor root")]
    OtherUser {
        /// The peer's uid.
        peer: u32,
        /// This process's effective uid.
        owner: u32,
    },
}

/// Whether the peer of `stream` may use the control socket.
pub fn admit(stream: &UnixStream) -> Result<(), Refused> {
    let cred = stream.peer_cred().map_err(Refused::Credentials)?;
    allowed(cred.uid(), nix::unistd::geteuid().as_raw())
}

/// The rule: the socket's owner or root.
fn allowed(peer: u32, owner: u32) -> Result<(), Refused> {
    if peer == owner || peer == 0 {
        Ok(())
    } else {
        Err(Refused::OtherUser { peer, owner })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_owner_and_root_may_connect_and_no_one_else() {
        assert!(allowed(1000, 1000).is_ok());
        assert!(allowed(0, 1000).is_ok(), "root");
        assert!(matches!(
            allowed(1001, 1000),
            Err(Refused::OtherUser {
                peer: 1001,
                owner: 1000
            })
        ));
    }

    #[tokio::test]
    async fn the_socket_is_0600_and_its_own_user_is_admitted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ctl.sock");
        std::fs::write(&path, "stale").expect("stale file");
        let listener = bind(&path).expect("bind");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let client = UnixStream::connect(&path).await.expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        admit(&server).expect("this process's own user");
        drop(client);
    }
}
