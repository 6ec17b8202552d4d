//! Static files, held in memory: the site built into the binary or a directory on disk.
//!
//! Every file is read once at start, with its Content-Type, a strong ETag (length and
//! SHA-256 of the bytes: the same on every build and host, so every web node gives a
//! file the same tag) and Last-Modified; a request then costs one map lookup. Answers
//! 304 to `If-None-Match` / `If-Modified-Since` as RFC 9110 §13 orders them, and one
//! byte range of a GET with 206 (or 416) as §14 does, `If-Range` included. Several
//! ranges in one request get the whole file (200), which §14.2 allows.

use std::collections::HashMap;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};
use include_dir::{Dir, include_dir};
use sha2::{Digest, Sha256};

static BUILT_IN: Dir<'_> = include_dir!("$CARGO_MANIFEST_DIR/../../site");

/// One file ready to send.
#[derive(Debug, Clone)]
pub struct StaticFile {
    body: Bytes,
    content_type: HeaderValue,
    etag: HeaderValue,
    last_modified: HeaderValue,
    modified: SystemTime,
}

/// The files of a site by URL path (`/static/style.css`).
#[derive(Debug, Default)]
pub struct StaticSite {
    files: HashMap<String, StaticFile>,
}

/// Why a site directory could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("cannot read the site at {path}: {source}")]
pub struct LoadError {
    path: String,
    source: std::io::Error,
}

fn content_type(path: &str) -> HeaderValue {
    let mime = mime_guess::from_path(path).first_or_octet_stream();
    let text = match (mime.type_(), mime.subtype()) {
        (mime_guess::mime::TEXT, _) => format!("{mime}; charset=utf-8"),
        (_, sub) if sub == "javascript" || sub == "json" => format!("{mime}; charset=utf-8"),
        _ => mime.to_string(),
    };
    HeaderValue::from_str(&text)
        .unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream"))
}

fn make_file(url_path: &str, body: Bytes, modified: SystemTime) -> StaticFile {
    let digest = format!("{:x}", Sha256::digest(&body));
    let etag = format!("\"{:x}-{}\"", body.len(), &digest[..16]);
    // HTTP dates have second resolution; compare at that resolution too.
    let secs = modified
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let modified = UNIX_EPOCH + std::time::Duration::from_secs(secs);
    StaticFile {
        content_type: content_type(url_path),
        etag: HeaderValue::from_str(&etag).unwrap_or_else(|_| HeaderValue::from_static("\"0\"")),
        last_modified: HeaderValue::from_str(&httpdate::fmt_http_date(modified))
            .unwrap_or_else(|_| HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT")),
        modified,
        body,
    }
}

impl StaticSite {
    /// The site built into the binary; Last-Modified is the binary's own mtime.
    pub fn built_in() -> StaticSite {
        let modified = std::env::current_exe()
            .and_then(std::fs::metadata)
            .and_then(|m| m.modified())
            .unwrap_or(UNIX_EPOCH);
        let mut site = StaticSite::default();
        let mut stack = vec![&BUILT_IN];
        while let Some(dir) = stack.pop() {
            for f in dir.files() {
                let url = format!("/{}", f.path().to_string_lossy());
                site.files.insert(
                    url.clone(),
                    make_file(&url, Bytes::from_static(f.contents()), modified),
                );
            }
            stack.extend(dir.dirs());
        }
        site
    }

    /// Every regular file under `root` (symlinks are not followed out of it).
    pub fn load(root: &Path) -> Result<StaticSite, LoadError> {
        let err = |path: &Path, source| LoadError {
            path: path.display().to_string(),
            source,
        };
        let mut site = StaticSite::default();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).map_err(|e| err(&dir, e))? {
                let entry = entry.map_err(|e| err(&dir, e))?;
                let path = entry.path();
                let kind = entry.file_type().map_err(|e| err(&path, e))?;
                if kind.is_dir() {
                    stack.push(path);
                } else if kind.is_file() {
                    let meta = entry.metadata().map_err(|e| err(&path, e))?;
                    let body = std::fs::read(&path).map_err(|e| err(&path, e))?;
                    let rel = path.strip_prefix(root).unwrap_or(&path);
                    let url = format!("/{}", rel.to_string_lossy());
                    site.files.insert(
                        url.clone(),
                        make_file(
                            &url,
                            Bytes::from(body),
                            meta.modified().unwrap_or(UNIX_EPOCH),
                        ),
                    );
                }
            }
        }
        Ok(site)
    }

    /// Number of files.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// Whether the site has no files.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// The file at a URL path; a path ending in `/` means its `index.html`.
    pub fn get(&self, path: &str) -> Option<&StaticFile> {
        if path.ends_with('/') {
            if path == "/" {
                // The front page belongs to the application.
                return None;
            }
            return self.files.get(&format!("{path}index.html"));
        }
        self.files.get(path)
    }
}

/// Whether a request's preconditions say the client's copy is current (send 304).
pub fn not_modified(req: &HeaderMap, file: &StaticFile) -> bool {
    // RFC 9110 §13.2.2: If-None-Match takes precedence; If-Modified-Since is then ignored.
    if let Some(inm) = req.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) {
        let ours = file.etag.to_str().unwrap_or("");
        return inm
            .split(',')
            .map(str::trim)
            .any(|t| t == "*" || t == ours || t.strip_prefix("W/") == Some(ours));
    }
    req.get(header::IF_MODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
        .and_then(|ims| httpdate::parse_http_date(ims).ok())
        .is_some_and(|since| file.modified <= since)
}

/// What a request's `Range` asks of a representation of `len` bytes (RFC 9110 §14).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ranged {
    /// The whole representation: no range, one this server ignores, or several.
    Whole,
    /// Bytes `first..=last`.
    Part {
        /// The first byte sent.
        first: u64,
        /// The last byte sent (inclusive, as in `Content-Range`).
        last: u64,
    },
    /// No byte of the range exists (416).
    Unsatisfiable,
}

/// Reads a `Range` value: one `bytes` range (`a-b`, `a-`, `-n`); anything else is
/// ignored (§14.2: a server may ignore Range, must ignore units it does not know).
pub fn parse_range(value: &str, len: u64) -> Ranged {
    let Some((unit, set)) = value.split_once('=') else {
        return Ranged::Whole;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") || set.contains(',') {
        return Ranged::Whole;
    }
    let Some((first, last)) = set.trim().split_once('-') else {
        return Ranged::Whole;
    };
    let number = |s: &str| -> Option<u64> {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    match (first, last) {
        // §14.1.3: the last n bytes; a suffix longer than the file is all of it.
        ("", n) => match number(n) {
            None => Ranged::Whole,
            Some(0) => Ranged::Unsatisfiable,
            Some(_) if len == 0 => Ranged::Unsatisfiable,
            Some(n) => Ranged::Part {
                first: len.saturating_sub(n),
                last: len - 1,
            },
        },
        (a, b) => {
            let Some(a) = number(a) else {
                return Ranged::Whole;
            };
            let b = match b {
                "" => None,
                b => match number(b) {
                    Some(b) => Some(b),
                    None => return Ranged::Whole,
                },
            };
            // §14.1.1: last-pos below first-pos makes the range invalid: ignored.
            if b.is_some_and(|b| b < a) {
                return Ranged::Whole;
            }
            // §14.1.2: satisfiable only when first-pos is inside the file.
            if a >= len {
                return Ranged::Unsatisfiable;
            }
            Ranged::Part {
                first: a,
                last: b.map_or(len - 1, |b| b.min(len - 1)),
            }
        }
    }
}

/// Whether `If-Range` lets the range apply (§13.1.5): absent, or naming this file by
/// its strong ETag or its exact Last-Modified date.
fn if_range_holds(req: &HeaderMap, file: &StaticFile) -> bool {
    let Some(v) = req.get(header::IF_RANGE) else {
        return true;
    };
    if v.as_bytes().starts_with(b"\"") {
        return v == file.etag;
    }
    v.to_str()
        .ok()
        .and_then(|d| httpdate::parse_http_date(d).ok())
        .is_some_and(|d| d == file.modified)
}

/// The response for `file`: 200 with the bytes (none for HEAD), 304, or for a GET with
/// one satisfiable range 206 with those bytes (416 when no byte of it exists).
pub fn respond(method: &Method, req: &HeaderMap, file: &StaticFile) -> Response<Bytes> {
    let len = file.body.len() as u64;
    let ranged = match req.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        // Range is defined for GET only (§14.2).
        Some(r) if method == Method::GET && if_range_holds(req, file) => parse_range(r, len),
        _ => Ranged::Whole,
    };
    let (status, body) = if not_modified(req, file) {
        (StatusCode::NOT_MODIFIED, Bytes::new())
    } else {
        match ranged {
            Ranged::Whole if method == Method::HEAD => (StatusCode::OK, Bytes::new()),
            Ranged::Whole => (StatusCode::OK, file.body.clone()),
            Ranged::Part { first, last } => (
                StatusCode::PARTIAL_CONTENT,
                file.body.slice(first as usize..=last as usize),
            ),
            Ranged::Unsatisfiable => (StatusCode::RANGE_NOT_SATISFIABLE, Bytes::new()),
        }
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::ETAG, file.etag.clone());
    h.insert(header::LAST_MODIFIED, file.last_modified.clone());
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=60"),
    );
    match (status, ranged) {
        (StatusCode::OK, _) => {
            h.insert(header::CONTENT_TYPE, file.content_type.clone());
            h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
            if method == Method::HEAD {
                h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
            }
        }
        (StatusCode::PARTIAL_CONTENT, Ranged::Part { first, last }) => {
            h.insert(header::CONTENT_TYPE, file.content_type.clone());
            if let Ok(v) = HeaderValue::from_str(&format!("bytes {first}-{last}/{len}")) {
                h.insert(header::CONTENT_RANGE, v);
            }
        }
        (StatusCode::RANGE_NOT_SATISFIABLE, _) => {
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                h.insert(header::CONTENT_RANGE, v);
            }
        }
        _ => {}
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_site_has_html_css_js_and_an_image() {
        let site = StaticSite::built_in();
        for (path, ct) in [
            ("/about.html", "text/html; charset=utf-8"),
            ("/static/style.css", "text/css; charset=utf-8"),
            ("/static/app.js", "text/javascript; charset=utf-8"),
            ("/static/logo.png", "image/png"),
        ] {
            let f = site.get(path).unwrap_or_else(|| panic!("{path} missing"));
            assert_eq!(f.content_type, ct, "{path}");
        }
        assert!(site.get("/").is_none(), "the front page is the app's");
        assert!(site.get("/nope").is_none());
    }

    #[test]
    fn conditional_requests_get_304() {
        let site = StaticSite::built_in();
        let f = site.get("/static/style.css").expect("css");
        let mut h = HeaderMap::new();
        assert_eq!(respond(&Method::GET, &h, f).status(), StatusCode::OK);
        h.insert(header::IF_NONE_MATCH, f.etag.clone());
        let r = respond(&Method::GET, &h, f);
        assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
        assert!(r.body().is_empty());
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"other\""));
        h.insert(header::IF_MODIFIED_SINCE, f.last_modified.clone());
        assert_eq!(
            respond(&Method::GET, &h, f).status(),
            StatusCode::OK,
            "If-None-Match wins over If-Modified-Since"
        );
        h.remove(header::IF_NONE_MATCH);
        assert_eq!(
            respond(&Method::GET, &h, f).status(),
            StatusCode::NOT_MODIFIED
        );
        h.insert(
            header::IF_MODIFIED_SINCE,
            HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT"),
        );
        assert_eq!(respond(&Method::GET, &h, f).status(), StatusCode::OK);
        h.insert(
            header::IF_MODIFIED_SINCE,
            HeaderValue::from_static("garbage"),
        );
        assert_eq!(respond(&Method::GET, &h, f).status(), StatusCode::OK);
    }

    #[test]
    fn the_etag_is_the_length_and_sha256_of_the_bytes_on_any_build() {
        let f = make_file("/a.txt", Bytes::from_static(b"hello"), UNIX_EPOCH);
        // sha256("hello") = 2cf24dba5fb0a30e...
        assert_eq!(f.etag, "\"5-2cf24dba5fb0a30e\"");
    }

    #[test]
    fn rfc9110_14_1_2_byte_ranges_of_a_10000_byte_file() {
        let part = |first, last| Ranged::Part { first, last };
        for (value, want) in [
            ("bytes=0-499", part(0, 499)),
            ("bytes=500-999", part(500, 999)),
            ("bytes=-500", part(9500, 9999)),
            ("bytes=9500-", part(9500, 9999)),
            ("bytes=0-0", part(0, 0)),
            ("bytes=-1", part(9999, 9999)),
            ("BYTES = 0-1", part(0, 1)),
            // §14.1.2: a last-pos past the end means the end.
            ("bytes=0-99999", part(0, 9999)),
            // §14.1.3: a suffix longer than the file is the whole file.
            ("bytes=-20000", part(0, 9999)),
            // §14.1.2: a first-pos at or past the end: nothing to send.
            ("bytes=10000-", Ranged::Unsatisfiable),
            ("bytes=-0", Ranged::Unsatisfiable),
            // Ignored (§14.2): several ranges, invalid or unknown ones.
            ("bytes=0-0,-1", Ranged::Whole),
            ("bytes=500-400", Ranged::Whole),
            ("bytes=abc-", Ranged::Whole),
            ("bytes=1-x", Ranged::Whole),
            ("bytes=+1-2", Ranged::Whole),
            ("items=0-5", Ranged::Whole),
            ("bytes", Ranged::Whole),
        ] {
            assert_eq!(parse_range(value, 10_000), want, "{value}");
        }
        assert_eq!(parse_range("bytes=0-", 0), Ranged::Unsatisfiable);
        assert_eq!(parse_range("bytes=-5", 0), Ranged::Unsatisfiable);
    }

    #[test]
    fn rfc9110_14_a_range_gets_206_with_its_bytes_and_an_impossible_one_416() {
        let f = make_file(
            "/t.txt",
            Bytes::from_static(b"0123456789"),
            UNIX_EPOCH + std::time::Duration::from_secs(1_000_000),
        );
        let mut h = HeaderMap::new();
        let r = respond(&Method::GET, &h, &f);
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()[header::ACCEPT_RANGES], "bytes");
        h.insert(header::RANGE, HeaderValue::from_static("bytes=2-4"));
        let r = respond(&Method::GET, &h, &f);
        assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
        assert_eq!(&r.body()[..], b"234");
        assert_eq!(r.headers()[header::CONTENT_RANGE], "bytes 2-4/10");
        assert_eq!(
            r.headers()[header::CONTENT_TYPE],
            "text/plain; charset=utf-8"
        );
        // §14.2: Range means nothing to HEAD.
        let r = respond(&Method::HEAD, &h, &f);
        assert_eq!((r.status(), r.body().len()), (StatusCode::OK, 0));
        // §13.1.5: If-Range with this file's ETag or date keeps the range...
        h.insert(header::IF_RANGE, f.etag.clone());
        assert_eq!(
            respond(&Method::GET, &h, &f).status(),
            StatusCode::PARTIAL_CONTENT
        );
        h.insert(header::IF_RANGE, f.last_modified.clone());
        assert_eq!(
            respond(&Method::GET, &h, &f).status(),
            StatusCode::PARTIAL_CONTENT
        );
        // ...and with another one the whole file comes.
        h.insert(header::IF_RANGE, HeaderValue::from_static("\"1-deadbeef\""));
        let r = respond(&Method::GET, &h, &f);
        assert_eq!((r.status(), r.body().len()), (StatusCode::OK, 10));
        h.insert(
            header::IF_RANGE,
            HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT"),
        );
        assert_eq!(respond(&Method::GET, &h, &f).status(), StatusCode::OK);
        h.remove(header::IF_RANGE);
        h.insert(header::RANGE, HeaderValue::from_static("bytes=10-"));
        let r = respond(&Method::GET, &h, &f);
        assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
        assert_eq!(r.headers()[header::CONTENT_RANGE], "bytes */10");
        assert!(r.body().is_empty());
        // §13.2.2: a current copy gets 304 before any range is looked at.
        h.insert(header::IF_NONE_MATCH, f.etag.clone());
        assert_eq!(
            respond(&Method::GET, &h, &f).status(),
            StatusCode::NOT_MODIFIED
        );
    }

    #[test]
    fn head_has_length_but_no_body() {
        let site = StaticSite::built_in();
        let f = site.get("/static/logo.png").expect("png");
        let r = respond(&Method::HEAD, &HeaderMap::new(), f);
        assert!(r.body().is_empty());
        assert_eq!(
            r.headers()[header::CONTENT_LENGTH],
            f.body.len().to_string().as_str()
        );
    }

    #[test]
    fn loads_a_directory_from_disk() {
        let dir = std::env::temp_dir().join(format!("hastack-site-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("docs")).expect("mkdir");
        std::fs::write(dir.join("docs/index.html"), "<p>hi</p>").expect("write");
        let site = StaticSite::load(&dir).expect("load");
        assert_eq!(site.len(), 1);
        assert!(site.get("/docs/").is_some());
        let _ = std::fs::remove_dir_all(&dir);
        assert!(StaticSite::load(Path::new("/nonexistent-hastack")).is_err());
    }
}
