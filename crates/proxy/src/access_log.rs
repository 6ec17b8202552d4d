//! The access log: one line per request a proxy answers, in NCSA combined format (as
//! nginx and Apache write it, with the server and the time taken after it) or as one
//! JSON object per line.
//!
//! Lines go into a buffer in memory that a task writes out every [`FLUSH_EVERY`] (and
//! at once past [`FLUSH_AT`] bytes), so a request pays for a formatted line and a
//! short lock, never for a write to disk. A line is written when the response head
//! goes out (HAProxy's `option logasap`): the size is the `Content-Length` when the
//! response has one, `-` when it streams.
//!
//! The file rotates itself at [`MAX_BYTES`] keeping [`KEEP`] old ones (`NODE-access.log.1`
//! …), so a busy node cannot fill the disk; rotation falls between writes, never
//! inside a line.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Method, Request, Response, Uri, Version, header};
use tokio::sync::watch;
use tracing::warn;

use hastack_runtime::rotating_log::RotatingLog;

pub use hastack_config::AccessLogFormat;

/// How often buffered lines are written out.
pub const FLUSH_EVERY: Duration = Duration::from_millis(500);

/// Buffered bytes that make a request write the buffer out itself.
const FLUSH_AT: usize = 256 * 1024;

/// Buffered bytes above which lines are dropped (the disk is not keeping up); the
/// count of dropped lines is logged.
const DROP_AT: usize = 16 * 1024 * 1024;

/// The size at which an access log is rotated.
pub const MAX_BYTES: u64 = 64 << 20;
/// Rotated access logs kept besides the current one.
pub const KEEP: usize = 3;

/// Where a node's access log goes: `<state_dir>/logs/NODE-access.log`.
pub fn path_for(state_dir: &Path, node: &str) -> PathBuf {
    state_dir.join("logs").join(format!("{node}-access.log"))
}

/// The access log `topo`'s `[http] access_log` asks of node `name`, opened; none when
/// it is off or cannot be opened (that is logged, and the node serves on).
pub fn open_for(
    topo: &hastack_config::Topology,
    name: &str,
    shutdown: watch::Receiver<bool>,
) -> Option<Arc<AccessLog>> {
    let format = topo.http.access_log?;
    let path = path_for(&topo.state_dir, name);
    match AccessLog::open(&path, format, shutdown) {
        Ok(log) => Some(log),
        Err(e) => {
            warn!(path = %path.display(), error = %e, "cannot open the access log; requests go unlogged");
            None
        }
    }
}

/// An open access log.
#[derive(Debug)]
pub struct AccessLog {
    format: AccessLogFormat,
    file: Mutex<RotatingLog>,
    buf: Mutex<(String, u64)>,
    path: PathBuf,
}

/// What a line says of the request, taken before the request is consumed.
#[derive(Debug)]
pub(crate) struct Seen {
    client: SocketAddr,
    method: Method,
    uri: Uri,
    version: Version,
    referer: Option<String>,
    agent: Option<String>,
}

impl Seen {
    pub(crate) fn of<B>(req: &Request<B>, client: SocketAddr) -> Seen {
        let h = |n: header::HeaderName| {
            req.headers()
                .get(n)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        };
        Seen {
            client,
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            referer: h(header::REFERER),
            agent: h(header::USER_AGENT),
        }
    }
}

impl AccessLog {
    /// Opens (appending) the log at `path`, creating its directory, and starts the
    /// task that writes it out until `shutdown`.
    pub fn open(
        path: &Path,
        format: AccessLogFormat,
        shutdown: watch::Receiver<bool>,
    ) -> std::io::Result<Arc<AccessLog>> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = RotatingLog::open(path, MAX_BYTES, KEEP)?;
        let log = Arc::new(AccessLog {
            format,
            file: Mutex::new(file),
            buf: Mutex::new((String::new(), 0)),
            path: path.to_path_buf(),
        });
        let writer = log.clone();
        let mut shutdown = shutdown;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(FLUSH_EVERY);
            loop {
                tokio::select! {
                    _ = tick.tick() => writer.flush(),
                    _ = shutdown.changed() => {
                        writer.flush();
                        return;
                    }
                }
            }
        });
        Ok(log)
    }

    /// Writes out what is buffered.
    pub fn flush(&self) {
        let (text, dropped) = {
            let mut b = self.buf.lock().unwrap_or_else(|e| e.into_inner());
            (std::mem::take(&mut b.0), std::mem::take(&mut b.1))
        };
        if dropped > 0 {
            warn!(path = %self.path.display(), dropped, "access log lines dropped: the disk did not keep up");
        }
        if text.is_empty() {
            return;
        }
        let mut f = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = f.write_line(text.as_bytes()) {
            warn!(path = %self.path.display(), error = %e, "writing the access log");
        }
    }

    /// Logs the answer `resp` to `seen`, from `server` (none: answered here), after
    /// `took`.
    pub(crate) fn log<B>(
        &self,
        seen: &Seen,
        resp: &Response<B>,
        server: Option<&str>,
        took: Duration,
    ) {
        let line = self.line(seen, resp, server, took, chrono::Utc::now());
        let full = {
            let mut b = self.buf.lock().unwrap_or_else(|e| e.into_inner());
            if b.0.len() > DROP_AT {
                b.1 += 1;
                return;
            }
            b.0.push_str(&line);
            b.0.len() > FLUSH_AT
        };
        if full {
            self.flush();
        }
    }

    fn line<B>(
        &self,
        seen: &Seen,
        resp: &Response<B>,
        server: Option<&str>,
        took: Duration,
        now: chrono::DateTime<chrono::Utc>,
    ) -> String {
        let bytes: Option<u64> = resp
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let target = seen
            .uri
            .path_and_query()
            .map_or(seen.uri.path(), |p| p.as_str());
        let ms = took.as_secs_f64() * 1000.0;
        match self.format {
            AccessLogFormat::Text => {
                // %h - - [%t] "%r" %>s %b "%{Referer}i" "%{User-agent}i" server ms
                let q = |v: &Option<String>| match v {
                    Some(s) => quote(s),
                    None => "\"-\"".to_string(),
                };
                let mut l = String::with_capacity(160);
                let _ = writeln!(
                    l,
                    "{} - - [{}] {} {} {} {} {} {} {:.3}",
                    seen.client.ip(),
                    now.format("%d/%b/%Y:%H:%M:%S %z"),
                    quote(&format!("{} {} {:?}", seen.method, target, seen.version)),
                    resp.status().as_u16(),
                    bytes.map_or("-".to_string(), |b| b.to_string()),
                    q(&seen.referer),
                    q(&seen.agent),
                    server.unwrap_or("-"),
                    ms,
                );
                l
            }
            AccessLogFormat::Json => {
                let mut v = serde_json::json!({
                    "time": now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                    "client": seen.client.ip().to_string(),
                    "method": seen.method.as_str(),
                    "target": target,
                    "version": format!("{:?}", seen.version),
                    "status": resp.status().as_u16(),
                    "bytes": bytes,
                    "referer": seen.referer,
                    "user_agent": seen.agent,
                    "server": server,
                    "ms": (ms * 1000.0).round() / 1000.0,
                })
                .to_string();
                v.push('\n');
                v
            }
        }
    }
}

/// `s` in double quotes, with quotes, backslashes and control bytes escaped (as nginx
/// escapes them), so a client cannot forge a line.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => {
                let _ = write!(out, "\\x{:02X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(agent: &str) -> Seen {
        let req = Request::get("/a?b=1")
            .header(header::USER_AGENT, agent)
            .body(())
            .expect("request");
        Seen::of(&req, "192.0.2.1:5000".parse().expect("addr"))
    }

    fn log(format: AccessLogFormat) -> AccessLog {
        let dir = tempfile::tempdir().expect("tempdir");
        sized(format, &dir.path().join("t"), MAX_BYTES, KEEP)
    }

    fn sized(format: AccessLogFormat, path: &Path, max: u64, keep: usize) -> AccessLog {
        AccessLog {
            format,
            file: Mutex::new(RotatingLog::open(path, max, keep).expect("open")),
            buf: Mutex::new((String::new(), 0)),
            path: path.to_path_buf(),
        }
    }

    #[test]
    fn a_full_access_log_rotates_between_writes_never_inside_a_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("web1-access.log");
        let log = sized(AccessLogFormat::Text, &path, 100, 2);
        for batch in 0..4 {
            {
                let mut b = log.buf.lock().expect("buf");
                for i in 0..3 {
                    let _ = writeln!(b.0, "batch {batch} line {i} ..........");
                }
            }
            log.flush();
        }
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        // Three 26-byte lines a write, 100 bytes a file: one write per file.
        assert!(read(&path).starts_with("batch 3 line 0"), "{}", read(&path));
        assert_eq!(read(&path).lines().count(), 3);
        assert!(read(&dir.path().join("web1-access.log.1")).starts_with("batch 2 line 0"));
        assert!(read(&dir.path().join("web1-access.log.2")).starts_with("batch 1 line 0"));
        assert!(!dir.path().join("web1-access.log.3").exists(), "keep = 2");
    }

    fn at() -> chrono::DateTime<chrono::Utc> {
        chrono::DateTime::from_timestamp(1_795_000_000, 0).expect("time")
    }

    #[test]
    fn a_text_line_is_ncsa_combined_with_server_and_time() {
        let mut resp = Response::new(());
        resp.headers_mut()
            .insert(header::CONTENT_LENGTH, "1234".parse().expect("value"));
        let line = log(AccessLogFormat::Text).line(
            &seen("curl/8"),
            &resp,
            Some("web1"),
            Duration::from_micros(2500),
            at(),
        );
        assert_eq!(
            line,
            "192.0.2.1 - - [18/Nov/2026:11:06:40 +0000] \"GET /a?b=1 HTTP/1.1\" 200 1234 \"-\" \"curl/8\" web1 2.500\n"
        );
    }

    #[test]
    fn a_client_cannot_forge_a_line() {
        let line = log(AccessLogFormat::Text).line(
            &seen("x\" 200 0 \"evil"),
            &Response::new(()),
            None,
            Duration::ZERO,
            at(),
        );
        assert!(line.contains(r#""x\" 200 0 \"evil""#), "{line}");
        assert_eq!(line.matches('\n').count(), 1);
    }

    #[test]
    fn a_json_line_is_one_object() {
        let line = log(AccessLogFormat::Json).line(
            &seen("curl/8"),
            &Response::new(()),
            None,
            Duration::from_millis(3),
            at(),
        );
        let v: serde_json::Value = serde_json::from_str(&line).expect("json");
        assert_eq!(v["client"], "192.0.2.1");
        assert_eq!(v["target"], "/a?b=1");
        assert_eq!(v["status"], 200);
        assert_eq!(v["bytes"], serde_json::Value::Null);
        assert_eq!(v["server"], serde_json::Value::Null);
        assert_eq!(v["ms"], 3.0);
        assert_eq!(v["time"], "2026-11-18T11:06:40.000Z");
    }
}
