//! `hastack db rebuild NODE`: re-seeds a db node's datadir from a running node with
//! `mariadb-backup`, for a node whose history diverged (it stays out of the replication
//! set until then).
//!
//! The node must be stopped. The copy is taken from the source's running server
//! (`mariadb-backup --backup`, online), prepared, and swapped in; the old datadir is
//! kept beside it (`data.replaced-<unix time>`), never deleted. The GTID position of
//! the copy goes into `rebuild.gtid`; the node sets `gtid_slave_pos` from it at its next
//! start, before it follows the primary.
//!
//! This works where the source's datadir is on the same machine (loopback mode); on
//! separate hosts the copy would have to be streamed, which this version does not do.

use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::process::Command;
use tracing::info;

use crate::mycnf::Layout;
use crate::{DbError, find_program, io_err};

/// How long a backup or prepare may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(600);

/// The file in a node's directory that carries the GTID of a re-seeded datadir.
pub fn gtid_file(layout: &Layout) -> PathBuf {
    layout.base.join("rebuild.gtid")
}

async fn run_step(what: &str, mut cmd: Command) -> Result<String, DbError> {
    cmd.kill_on_drop(true);
    hastack_runtime::child::die_with_parent(&mut cmd, Signal::SIGKILL);
    let out = tokio::time::timeout(STEP_TIMEOUT, cmd.output())
        .await
        .map_err(|_| DbError::Rebuild(format!("{what}: no result within {STEP_TIMEOUT:?}")))?
        .map_err(|e| DbError::Rebuild(format!("{what}: {e}")))?;
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        let last: Vec<&str> = text.lines().rev().take(4).collect();
        return Err(DbError::Rebuild(format!(
            "{what} failed ({}): {}",
            out.status,
            last.into_iter().rev().collect::<Vec<_>>().join(" | ")
        )));
    }
    Ok(text)
}

/// The GTID position in `xtrabackup_binlog_info` (`file<TAB>pos<TAB>gtid`).
pub fn binlog_info_gtid(text: &str) -> Option<String> {
    let gtid = text.lines().next()?.split('\t').nth(2)?.trim().to_string();
    crate::failover::GtidPos::parse(&gtid).map(|_| gtid)
}

/// Re-seeds `target`'s datadir (under `state_dir`) from `source`'s running server;
/// returns a line saying what was done.
pub async fn reseed(
    state_dir: &Path,
    target: &str,
    source: &str,
    admin_password: &str,
) -> Result<String, DbError> {
    let backup = find_program("mariadb-backup").ok_or_else(|| {
        DbError::NotInstalled("mariadb-backup (apt-get install mariadb-backup)".into())
    })?;
    let to = Layout::new(state_dir, target);
    let from = Layout::new(state_dir, source);
    if to.socket.exists() && std::os::unix::net::UnixStream::connect(&to.socket).is_ok() {
        return Err(DbError::Rebuild(format!(
            "{target}'s mariadbd is running: stop the node first (`hastack stop {target}`)"
        )));
    }
    let staging = to.base.join("data.rebuild");
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(io_err(&staging))?;
    }
    // The password goes in a 0600 file, not on a command line others can read.
    let creds = to.base.join("rebuild.cnf");
    crate::write_private(
        &creds,
        &format!(
            "[client]\nuser=hastack_admin\npassword={admin_password}\nsocket={}\n",
            from.socket.display()
        ),
    )?;
    info!(target, source, "re-seeding with mariadb-backup");
    let mut b = Command::new(&backup);
    b.arg(format!("--defaults-extra-file={}", creds.display()))
        .arg("--backup")
        .arg(format!("--target-dir={}", staging.display()))
        .arg(format!("--datadir={}", from.data.display()));
    let backed_up = run_step("mariadb-backup --backup", b).await;
    let _ = std::fs::remove_file(&creds);
    backed_up?;
    let mut p = Command::new(&backup);
    p.arg("--prepare")
        .arg(format!("--target-dir={}", staging.display()));
    run_step("mariadb-backup --prepare", p).await?;
    let info_path = staging.join("xtrabackup_binlog_info");
    let gtid = std::fs::read_to_string(&info_path)
        .ok()
        .and_then(|t| binlog_info_gtid(&t))
        .ok_or_else(|| DbError::Rebuild(format!("{} has no GTID position", info_path.display())))?;
    let kept = to.base.join(format!(
        "data.replaced-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    ));
    if to.data.exists() {
        std::fs::rename(&to.data, &kept).map_err(io_err(&to.data))?;
    }
    std::fs::rename(&staging, &to.data).map_err(io_err(&to.data))?;
    crate::write_private(&gtid_file(&to), &gtid)?;
    crate::write_private(&to.installed, "re-seeded by hastack db rebuild\n")?;
    Ok(format!(
        "{target} re-seeded from {source} at GTID {gtid}; its old datadir is kept in {}",
        kept.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gtid_of_a_backup_is_read_from_its_binlog_info() {
        assert_eq!(
            binlog_info_gtid("mysql-bin.000003\t1234\t0-2-45\n").as_deref(),
            Some("0-2-45")
        );
        assert_eq!(binlog_info_gtid("mysql-bin.000003\t1234\n"), None);
        assert_eq!(binlog_info_gtid("mysql-bin.000003\t1234\tgarbage"), None);
    }
}
