//! Static files, held in memory: the site built into the binary or a directory on disk.
//!
//! Every file is read once at start, with its Content-Type, a strong ETag (length and a
//! hash of the bytes) and Last-Modified; a request then costs one map lookup. Answers
//! 304 to `If-None-Match` / `If-Modified-Since` as RFC 9110 §13 orders them.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};
use include_dir::{Dir, include_dir};

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
    let mut h = std::collections::hash_map::DefaultHasher::new();
    body.hash(&mut h);
    let etag = format!("\"{:x}-{:016x}\"", body.len(), h.finish());
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

/// The response for `file`: 200 with the bytes (none for HEAD) or 304.
pub fn respond(method: &Method, req: &HeaderMap, file: &StaticFile) -> Response<Bytes> {
    let status = if not_modified(req, file) {
        StatusCode::NOT_MODIFIED
    } else {
        StatusCode::OK
    };
    let body = if status == StatusCode::OK && method != Method::HEAD {
        file.body.clone()
    } else {
        Bytes::new()
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
    if status == StatusCode::OK {
        h.insert(header::CONTENT_TYPE, file.content_type.clone());
        if method == Method::HEAD {
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(file.body.len()));
        }
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
