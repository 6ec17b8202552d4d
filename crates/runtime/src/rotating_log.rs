//! A log file that rotates itself by size, as logrotate's `size` with `rotate KEEP`
//! does: when a write would take the file past its limit, `NAME` becomes `NAME.1`
//! (`.1` becomes `.2`, and so on; the oldest beyond `keep` is dropped) and a new file
//! begins. Used for the node logs of `hastack up` and for the access logs.

use std::io::Write;
use std::path::{Path, PathBuf};

/// A log file that rotates itself by size.
#[derive(Debug)]
pub struct RotatingLog {
    path: PathBuf,
    file: std::fs::File,
    size: u64,
    max: u64,
    keep: usize,
}

impl RotatingLog {
    /// Opens (appends to) `path`, rotating at `max` bytes and keeping `keep` old files.
    pub fn open(path: &Path, max: u64, keep: usize) -> std::io::Result<RotatingLog> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        let size = file.metadata()?.len();
        Ok(RotatingLog {
            path: path.to_path_buf(),
            file,
            size,
            max,
            keep,
        })
    }

    fn rotated(&self, n: usize) -> PathBuf {
        let mut p = self.path.clone().into_os_string();
        p.push(format!(".{n}"));
        PathBuf::from(p)
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        for n in (1..self.keep).rev() {
            match std::fs::rename(self.rotated(n), self.rotated(n + 1)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        // The file may be gone already (an operator removed it to free the disk):
        // then there is nothing to keep, and a new one begins.
        let moved = if self.keep == 0 {
            std::fs::remove_file(&self.path)
        } else {
            std::fs::rename(&self.path, self.rotated(1))
        };
        match moved {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        *self = RotatingLog::open(&self.path, self.max, self.keep)?;
        Ok(())
    }

    /// Where it writes.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one line (with its newline), or several whole ones, rotating first if
    /// they would not fit: a line is never split across files. A rotation that fails
    /// (a full or read-only directory) does not stop the log: the lines go to the
    /// current file, the next attempt waits for another `max` bytes, and the error is
    /// returned once the lines are written.
    pub fn write_line(&mut self, line: &[u8]) -> std::io::Result<()> {
        let len = line.len() as u64;
        let mut rotation = Ok(());
        if self.size > 0 && self.size + len > self.max {
            rotation = self.rotate();
            if rotation.is_err() {
                self.size = 0;
            }
        }
        self.file.write_all(line)?;
        self.size += len;
        rotation
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(p: PathBuf) -> String {
        std::fs::read_to_string(p).unwrap_or_default()
    }

    #[test]
    fn a_full_log_moves_to_dot_one_and_the_oldest_beyond_keep_is_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("web1.log");
        let mut log = RotatingLog::open(&path, 20, 2).expect("open");
        for i in 0..8 {
            log.write_line(format!("line {i} ....\n").as_bytes())
                .expect("write");
        }
        // 13 bytes a line, 20 at most a file: one line per file.
        assert_eq!(read(path.clone()), "line 7 ....\n");
        assert_eq!(read(dir.path().join("web1.log.1")), "line 6 ....\n");
        assert_eq!(read(dir.path().join("web1.log.2")), "line 5 ....\n");
        assert!(!dir.path().join("web1.log.3").exists(), "keep = 2");
    }

    #[test]
    fn a_reopened_log_counts_what_it_holds_and_a_long_line_is_never_split() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("db1.log");
        std::fs::write(&path, "0123456789\n").expect("write");
        let mut log = RotatingLog::open(&path, 16, 3).expect("open");
        log.write_line(b"abcdef\n").expect("write");
        assert_eq!(read(dir.path().join("db1.log.1")), "0123456789\n");
        let long = format!("{}\n", "x".repeat(40));
        log.write_line(long.as_bytes()).expect("write");
        assert_eq!(
            read(path),
            long,
            "a line longer than the limit has a file to itself"
        );
        assert_eq!(read(dir.path().join("db1.log.1")), "abcdef\n");
    }

    #[test]
    fn a_removed_log_starts_anew_and_a_failed_rotation_keeps_the_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("web1-access.log");
        let mut log = RotatingLog::open(&path, 20, 2).expect("open");
        log.write_line(b"first line ....\n").expect("write");
        std::fs::remove_file(&path).expect("an operator removes the file");
        log.write_line(b"second line ...\n")
            .expect("rotating a removed file");
        assert_eq!(read(path.clone()), "second line ...\n");
        // A rotation that cannot happen (as in a read-only directory; simulated by
        // non-empty directories where the old files must go) still writes the line.
        for old in ["web1-access.log.1", "web1-access.log.2"] {
            std::fs::create_dir_all(dir.path().join(old).join("x")).expect("dir");
        }
        assert!(log.write_line(b"third line ....\n").is_err());
        assert!(read(path.clone()).ends_with("third line ....\n"));
        // It does not try again at every line.
        log.write_line(b"4\n").expect("no rotation yet");
        assert!(read(path).ends_with("4\n"));
    }
}
