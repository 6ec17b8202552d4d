//! The node logs of `hastack up` (`<state_dir>/logs/NAME.log`), rotated by size.
//!
//! A node's stdout and stderr are pipes to the supervisor, which writes each line to
//! the node's log; when a line would take the file past [`MAX_BYTES`] the file becomes
//! `NAME.log.1` (`.1` becomes `.2`, and so on; the oldest beyond [`KEEP`] is dropped)
//! and a new one begins, as logrotate's `size` with `rotate KEEP` does. A line is never
//! split across files. (A node run by systemd logs to the journal instead.)

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

pub(crate) use hastack_runtime::rotating_log::RotatingLog;

/// The size at which a node's log is rotated.
pub(crate) const MAX_BYTES: u64 = 16 << 20;
/// Rotated files kept besides the current one.
pub(crate) const KEEP: usize = 3;

/// Copies `from` line by line into `log` until end of file.
pub(crate) async fn pump(from: impl AsyncRead + Unpin, log: Arc<Mutex<RotatingLog>>) {
    let mut from = BufReader::new(from);
    let mut line = Vec::new();
    loop {
        line.clear();
        match from.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                if !line.ends_with(b"\n") {
                    line.push(b'\n');
                }
                let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
                // The node's output is always read (a pipe left full would block the
                // node); what cannot be written is said, not retried.
                if let Err(e) = log.write_line(&line) {
                    println!("hastack: writing {}: {e}", log.path().display());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn read(p: PathBuf) -> String {
        std::fs::read_to_string(p).unwrap_or_default()
    }

    #[tokio::test]
    async fn the_pump_writes_every_line_and_ends_an_unterminated_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("app1.log");
        let log = Arc::new(Mutex::new(
            RotatingLog::open(&path, MAX_BYTES, KEEP).expect("open"),
        ));
        pump(&b"one\ntwo\nthree"[..], log).await;
        assert_eq!(read(path), "one\ntwo\nthree\n");
    }
}
