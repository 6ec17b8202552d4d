//! Static files, held in memory: the site built into the binary or a directory on disk.
//!
//! Every file is read once at start, with its Content-Type, its `Cache-Control` (from
//! `[web.cache_control]`; a fingerprinted name such as `site.3f9a1c2e.css` is immutable
//! for a year), Last-Modified, and its representations: the bytes as they are and,
//! for text types, compressed ones — the precompressed siblings on disk
//! (`style.css.br`, `.zst`, `.gz`) when there are, else compressed here once at start.
//! Each representation has a strong ETag (length and SHA-256 of its bytes: the same on
//! every build and host, so every web node gives it the same tag). A request then
//! costs one map lookup and an `Accept-Encoding` negotiation, and the bytes go out
//! as they are held (hyper writes a `Bytes` body without copying it).
//!
//! Answers 304 to `If-None-Match` / `If-Modified-Since` as RFC 9110 §13 orders them,
//! and one byte range of a GET with 206 (or 416) as §14 does, `If-Range` included.
//! Several ranges in one request get the whole file (200), which §14.2 allows.
//!
//! Nothing outside the document root can be served: the site is the map of files read
//! at start (regular files only; a symlink is not followed), and a request path is
//! percent-decoded once and refused (400) when it holds a `.` or `..` segment, a NUL or
//! a backslash, before any lookup ([`site_path`]).

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};
use include_dir::{Dir, include_dir};
use prometheus_client::metrics::counter::Counter;
use sha2::{Digest, Sha256};

use hastack_proxy::{Call, Layer, Next, Proxy, ProxyBody, Reply};

use crate::compress::{Encoding, compress_whole, compressible, negotiate};

static BUILT_IN: Dir<'_> = include_dir!("$CARGO_MANIFEST_DIR/../../site");

/// Files larger than this are not compressed at start (nor held compressed).
const COMPRESS_AT_START_MAX: usize = 8 << 20;

/// One encoding of a file, ready to send.
#[derive(Debug, Clone)]
pub struct Representation {
    encoding: Encoding,
    body: Bytes,
    etag: HeaderValue,
}

/// One file ready to send.
#[derive(Debug, Clone)]
pub struct StaticFile {
    /// The identity first, then the encodings in [`Encoding::STORED`] order.
    reps: Vec<Representation>,
    content_type: HeaderValue,
    cache_control: HeaderValue,
    last_modified: HeaderValue,
    modified: SystemTime,
    /// Whether the answer depends on `Accept-Encoding`.
    varies: bool,
}

/// How files become answers: the `[web]` settings that shape them.
#[derive(Debug, Clone)]
pub struct SiteOptions {
    /// Compress text files once at start when no precompressed sibling exists.
    pub compress: bool,
    /// Smallest file compressed.
    pub compress_min_bytes: usize,
    /// `Cache-Control` by path prefix (`/static/`) or extension (`*.css`).
    pub cache_control: Vec<(String, String)>,
}

impl Default for SiteOptions {
    fn default() -> SiteOptions {
        SiteOptions {
            compress: true,
            compress_min_bytes: 1024,
            cache_control: Vec::new(),
        }
    }
}

impl SiteOptions {
    /// The options of a topology's `[web]` section.
    pub fn of(web: &hastack_config::WebSettings) -> SiteOptions {
        SiteOptions {
            compress: web.compress,
            compress_min_bytes: web.compress_min_bytes,
            cache_control: web.cache_control.clone(),
        }
    }

    /// The `Cache-Control` of the file at `url`: the longest matching rule, else a
    /// year for a fingerprinted name, else a minute.
    fn cache_control(&self, url: &str) -> HeaderValue {
        let matching = self
            .cache_control
            .iter()
            .filter(|(pattern, _)| match pattern.strip_prefix('*') {
                Some(ext) => url.ends_with(ext),
                None => url.starts_with(pattern.as_str()),
            })
            .max_by_key(|(pattern, _)| pattern.len());
        if let Some(v) = matching.and_then(|(_, v)| HeaderValue::from_str(v).ok()) {
            return v;
        }
        if fingerprinted(url) {
            HeaderValue::from_static("public, max-age=31536000, immutable")
        } else {
            HeaderValue::from_static("public, max-age=60")
        }
    }
}

/// Whether a file name carries a content hash (`app.3f9a1c2e.js`, `app-3f9a1c2e.js`):
/// 8 or more hex digits as the segment before the extension.
pub fn fingerprinted(url: &str) -> bool {
    let name = url.rsplit('/').next().unwrap_or(url);
    let Some((stem, _ext)) = name.rsplit_once('.') else {
        return false;
    };
    let Some(hash) = stem
        .rsplit(['.', '-'])
        .next()
        .filter(|h| h.len() < stem.len())
    else {
        return false;
    };
    hash.len() >= 8 && hash.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The files of a site by URL path (`/static/style.css`).
#[derive(Debug, Default)]
pub struct StaticSite {
    files: HashMap<String, StaticFile>,
    /// The `index.html` of each directory that has one, by the directory's path
    /// without its `/` (`/docs`): a request costs one lookup, never a path built.
    indexes: HashMap<String, StaticFile>,
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

fn representation(encoding: Encoding, body: Bytes) -> Representation {
    // A large body goes out with sendfile(2) on plain connections.
    let body = hastack_runtime::zero_copy::sealed(body);
    let digest = format!("{:x}", Sha256::digest(&body));
    let etag = format!("\"{:x}-{}\"", body.len(), &digest[..16]);
    Representation {
        encoding,
        etag: HeaderValue::from_str(&etag).unwrap_or_else(|_| HeaderValue::from_static("\"0\"")),
        body,
    }
}

/// A file's bytes as found: the file itself and its precompressed siblings.
struct Found {
    body: Bytes,
    modified: SystemTime,
    siblings: Vec<(Encoding, Bytes)>,
}

fn make_file(url_path: &str, found: Found, opts: &SiteOptions) -> StaticFile {
    // HTTP dates have second resolution; compare at that resolution too.
    let secs = found
        .modified
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let modified = UNIX_EPOCH + std::time::Duration::from_secs(secs);
    let content_type = content_type(url_path);
    let text = compressible(Some(&content_type));
    let mut reps = vec![representation(Encoding::Identity, found.body.clone())];
    let worth = text && found.body.len() >= opts.compress_min_bytes;
    for e in Encoding::STORED {
        let sibling = found.siblings.iter().find(|(s, _)| *s == e);
        let packed = match sibling {
            Some((_, bytes)) => Some(bytes.clone()),
            None if opts.compress && worth && found.body.len() <= COMPRESS_AT_START_MAX => {
                compress_whole(e, &found.body).ok().map(Bytes::from)
            }
            None => None,
        };
        // Kept only when it saves something (a sibling is trusted as it is).
        if let Some(p) = packed.filter(|p| sibling.is_some() || p.len() < found.body.len()) {
            reps.push(representation(e, p));
        }
    }
    StaticFile {
        varies: reps.len() > 1 || worth,
        reps,
        content_type,
        cache_control: opts.cache_control(url_path),
        last_modified: HeaderValue::from_str(&httpdate::fmt_http_date(modified))
            .unwrap_or_else(|_| HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT")),
        modified,
    }
}

impl StaticFile {
    /// The representation for a client whose `Accept-Encoding` is `accept`.
    fn pick(&self, accept: Option<&HeaderValue>) -> &Representation {
        if self.reps.len() > 1 {
            let e = negotiate(accept, self.reps[1..].iter().map(|r| r.encoding));
            if let Some(r) = self.reps.iter().find(|r| r.encoding == e) {
                return r;
            }
        }
        &self.reps[0]
    }

    /// The file as it is.
    pub fn bytes(&self) -> &Bytes {
        &self.reps[0].body
    }
}

impl StaticSite {
    /// The site built into the binary; Last-Modified is the binary's own mtime.
    pub fn built_in(opts: &SiteOptions) -> StaticSite {
        let modified = std::env::current_exe()
            .and_then(std::fs::metadata)
            .and_then(|m| m.modified())
            .unwrap_or(UNIX_EPOCH);
        let mut found = HashMap::new();
        let mut stack = vec![&BUILT_IN];
        while let Some(dir) = stack.pop() {
            for f in dir.files() {
                let url = format!("/{}", f.path().to_string_lossy());
                found.insert(url, (Bytes::from_static(f.contents()), modified));
            }
            stack.extend(dir.dirs());
        }
        StaticSite::assemble(found, opts)
    }

    /// Every regular file under `root` (symlinks are not followed, in the root or out
    /// of it); `FILE.br`, `FILE.zst` and `FILE.gz` beside a file become its encodings.
    pub fn load(root: &Path, opts: &SiteOptions) -> Result<StaticSite, LoadError> {
        let err = |path: &Path, source| LoadError {
            path: path.display().to_string(),
            source,
        };
        let mut found = HashMap::new();
        let mut stack: Vec<PathBuf> = vec![root.to_path_buf()];
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
                    found.insert(
                        url,
                        (Bytes::from(body), meta.modified().unwrap_or(UNIX_EPOCH)),
                    );
                }
            }
        }
        Ok(StaticSite::assemble(found, opts))
    }

    /// The files by URL, each with its precompressed siblings.
    fn assemble(found: HashMap<String, (Bytes, SystemTime)>, opts: &SiteOptions) -> StaticSite {
        let files: HashMap<String, StaticFile> = found
            .iter()
            .map(|(url, (body, modified))| {
                let siblings = Encoding::STORED
                    .iter()
                    .filter_map(|e| {
                        let (b, _) = found.get(&format!("{url}{}", e.suffix()?))?;
                        Some((*e, b.clone()))
                    })
                    .collect();
                let f = Found {
                    body: body.clone(),
                    modified: *modified,
                    siblings,
                };
                (url.clone(), make_file(url, f, opts))
            })
            .collect();
        // The site's own `/index.html` is not an index: the front page is the app's.
        let indexes = files
            .iter()
            .filter_map(|(url, f)| {
                let dir = url.strip_suffix("/index.html")?;
                (!dir.is_empty()).then(|| (dir.to_string(), f.clone()))
            })
            .collect();
        StaticSite { files, indexes }
    }

    /// Number of files.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// Whether the site has no files.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// The file at a (decoded) URL path; a path ending in `/` means its `index.html`.
    pub fn get(&self, path: &str) -> Option<&StaticFile> {
        match path.strip_suffix('/') {
            Some(dir) => self.indexes.get(dir),
            None => self.files.get(path),
        }
    }

    /// Whether `path` (no trailing `/`) is a directory with an index file.
    pub fn is_index_dir(&self, path: &str) -> bool {
        self.indexes.contains_key(path)
    }
}

/// Why a request path cannot name a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadPath {
    /// A `.` or `..` segment, a NUL or a backslash, raw or percent-encoded: an attempt
    /// to leave the root, refused (400) before any lookup.
    Refused,
    /// Not UTF-8 once decoded: names no file (the app tier may still know it).
    NotAName,
}

/// A request path as the site's map knows paths: percent-decoded once, and checked.
pub fn site_path(raw: &str) -> Result<Cow<'_, str>, BadPath> {
    let decoded = percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| BadPath::NotAName)?;
    let bad =
        decoded.contains(['\0', '\\']) || decoded.split('/').any(|seg| seg == ".." || seg == ".");
    if bad {
        Err(BadPath::Refused)
    } else {
        Ok(decoded)
    }
}

/// Whether a request's preconditions say the client's copy is current (send 304).
fn not_modified(req: &HeaderMap, file: &StaticFile, rep: &Representation) -> bool {
    // RFC 9110 §13.2.2: If-None-Match takes precedence; If-Modified-Since is then ignored.
    if let Some(inm) = req.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) {
        let ours = rep.etag.to_str().unwrap_or("");
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
fn if_range_holds(req: &HeaderMap, file: &StaticFile, rep: &Representation) -> bool {
    let Some(v) = req.get(header::IF_RANGE) else {
        return true;
    };
    if v.as_bytes().starts_with(b"\"") {
        return v == rep.etag;
    }
    v.to_str()
        .ok()
        .and_then(|d| httpdate::parse_http_date(d).ok())
        .is_some_and(|d| d == file.modified)
}

/// The response for `file` in the encoding the client prefers: 200 with the bytes (none
/// for HEAD), 304, or for a GET with one satisfiable range 206 with those bytes of that
/// representation (416 when no byte of it exists).
pub fn respond(method: &Method, req: &HeaderMap, file: &StaticFile) -> Response<Bytes> {
    let rep = file.pick(req.get(header::ACCEPT_ENCODING));
    let len = rep.body.len() as u64;
    let ranged = match req.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        // Range is defined for GET only (§14.2).
        Some(r) if method == Method::GET && if_range_holds(req, file, rep) => parse_range(r, len),
        _ => Ranged::Whole,
    };
    let (status, body) = if not_modified(req, file, rep) {
        (StatusCode::NOT_MODIFIED, Bytes::new())
    } else {
        match ranged {
            Ranged::Whole if method == Method::HEAD => (StatusCode::OK, Bytes::new()),
            Ranged::Whole => (StatusCode::OK, rep.body.clone()),
            Ranged::Part { first, last } => (
                StatusCode::PARTIAL_CONTENT,
                rep.body.slice(first as usize..=last as usize),
            ),
            Ranged::Unsatisfiable => (StatusCode::RANGE_NOT_SATISFIABLE, Bytes::new()),
        }
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::ETAG, rep.etag.clone());
    h.insert(header::LAST_MODIFIED, file.last_modified.clone());
    h.insert(header::CACHE_CONTROL, file.cache_control.clone());
    if file.varies {
        h.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    }
    if rep.encoding != Encoding::Identity && status != StatusCode::RANGE_NOT_SATISFIABLE {
        h.insert(
            header::CONTENT_ENCODING,
            HeaderValue::from_static(rep.encoding.token()),
        );
    }
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

/// The layer answering requests for the site's files (nginx's `try_files $uri @app`):
/// a GET or HEAD of a file is answered here; a path that tries to leave the root gets
/// 400; a directory without its `/` is redirected to it; anything else goes on.
#[derive(Debug)]
pub struct Static {
    site: arc_swap::ArcSwap<StaticSite>,
    proxy: Arc<Proxy>,
    hits: Counter,
}

impl Static {
    /// `site` answered with `proxy`'s stamp; answers counted in `hits`.
    pub fn new(site: StaticSite, proxy: Arc<Proxy>, hits: Counter) -> Arc<Static> {
        Arc::new(Static {
            site: arc_swap::ArcSwap::from_pointee(site),
            proxy,
            hits,
        })
    }

    /// Serves `site` from now on (a reload); requests under way finish with the old
    /// one, whose files go when the last of them does.
    pub fn replace(&self, site: StaticSite) {
        self.site.store(Arc::new(site));
    }

    /// The answer for `call` when it is this layer's to give.
    fn answer(&self, call: &Call) -> Option<Response<ProxyBody>> {
        let site = self.site.load();
        let req = &call.req;
        let path = match site_path(req.uri().path()) {
            Ok(p) => p,
            Err(BadPath::Refused) => {
                return Some(self.proxy.local_response(
                    StatusCode::BAD_REQUEST,
                    "the path has a dot segment, a NUL or a backslash",
                ));
            }
            Err(BadPath::NotAName) => return None,
        };
        let readable = req.method() == Method::GET || req.method() == Method::HEAD;
        let Some(file) = site.get(&path) else {
            if readable && site.is_index_dir(&path) {
                let mut resp = self
                    .proxy
                    .local_response(StatusCode::MOVED_PERMANENTLY, "a directory: see Location");
                let query = req
                    .uri()
                    .query()
                    .map(|q| format!("?{q}"))
                    .unwrap_or_default();
                if let Ok(v) = HeaderValue::from_str(&format!("{}/{query}", req.uri().path())) {
                    resp.headers_mut().insert(header::LOCATION, v);
                }
                return Some(resp);
            }
            return None;
        };
        if !readable {
            let mut resp = self.proxy.local_response(
                StatusCode::METHOD_NOT_ALLOWED,
                "static files answer GET and HEAD only",
            );
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return Some(resp);
        }
        self.hits.inc();
        let mut resp = respond(req.method(), req.headers(), file).map(ProxyBody::full);
        self.proxy.stamp(&mut resp);
        Some(resp)
    }
}

impl Layer for Static {
    fn handle(self: Arc<Self>, call: Call, next: Next) -> Reply {
        match self.answer(&call) {
            Some(resp) => Box::pin(std::future::ready(resp)),
            None => next.run(call),
        }
    }
}

/// The layer that puts a page of the site in place of an error answer from further
/// down (nginx's `error_page` with `proxy_intercept_errors on`): the status stays,
/// the body becomes the page.
#[derive(Debug)]
pub struct ErrorPages {
    pages: HashMap<u16, StaticFile>,
}

/// An error page names no file of the site.
#[derive(Debug, thiserror::Error)]
#[error("web.error_pages.{status} is {path}, which is not a file of the site")]
pub struct MissingPage {
    status: u16,
    path: String,
}

impl ErrorPages {
    /// The pages of `pages` (status, URL path), each a file of `site`.
    pub fn new(pages: &[(u16, String)], site: &StaticSite) -> Result<Arc<ErrorPages>, MissingPage> {
        let mut map = HashMap::new();
        for (status, path) in pages {
            let file = site.get(path).ok_or_else(|| MissingPage {
                status: *status,
                path: path.clone(),
            })?;
            map.insert(*status, file.clone());
        }
        Ok(Arc::new(ErrorPages { pages: map }))
    }
}

impl Layer for ErrorPages {
    fn handle(self: Arc<Self>, call: Call, next: Next) -> Reply {
        let head = call.req.method() == Method::HEAD;
        Box::pin(async move {
            let resp = next.run(call).await;
            let Some(page) = self.pages.get(&resp.status().as_u16()) else {
                return resp;
            };
            let (mut parts, _) = resp.into_parts();
            for h in [
                header::CONTENT_LENGTH,
                header::CONTENT_ENCODING,
                header::ETAG,
                header::LAST_MODIFIED,
            ] {
                parts.headers.remove(h);
            }
            parts
                .headers
                .insert(header::CONTENT_TYPE, page.content_type.clone());
            parts
                .headers
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            let body = if head {
                Bytes::new()
            } else {
                page.bytes().clone()
            };
            Response::from_parts(parts, ProxyBody::full(body))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(url: &str, bytes: &'static [u8], modified: SystemTime) -> StaticFile {
        let found = Found {
            body: Bytes::from_static(bytes),
            modified,
            siblings: Vec::new(),
        };
        make_file(url, found, &SiteOptions::default())
    }

    #[test]
    fn built_in_site_has_html_css_js_and_an_image() {
        let site = StaticSite::built_in(&SiteOptions::default());
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
        let site = StaticSite::built_in(&SiteOptions::default());
        let f = site.get("/static/style.css").expect("css");
        let mut h = HeaderMap::new();
        assert_eq!(respond(&Method::GET, &h, f).status(), StatusCode::OK);
        h.insert(header::IF_NONE_MATCH, f.reps[0].etag.clone());
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
        let f = file("/a.txt", b"hello", UNIX_EPOCH);
        // sha256("hello") = 2cf24dba5fb0a30e...
        assert_eq!(f.reps[0].etag, "\"5-2cf24dba5fb0a30e\"");
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
        let f = file(
            "/t.txt",
            b"0123456789",
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
        h.insert(header::IF_RANGE, f.reps[0].etag.clone());
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
        h.insert(header::IF_NONE_MATCH, f.reps[0].etag.clone());
        assert_eq!(
            respond(&Method::GET, &h, &f).status(),
            StatusCode::NOT_MODIFIED
        );
    }

    #[test]
    fn head_has_length_but_no_body() {
        let site = StaticSite::built_in(&SiteOptions::default());
        let f = site.get("/static/logo.png").expect("png");
        let r = respond(&Method::HEAD, &HeaderMap::new(), f);
        assert!(r.body().is_empty());
        assert_eq!(
            r.headers()[header::CONTENT_LENGTH],
            f.bytes().len().to_string().as_str()
        );
    }

    #[test]
    fn loads_a_directory_from_disk() {
        let dir = std::env::temp_dir().join(format!("hastack-site-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("docs")).expect("mkdir");
        std::fs::write(dir.join("docs/index.html"), "<p>hi</p>").expect("write");
        let site = StaticSite::load(&dir, &SiteOptions::default()).expect("load");
        assert_eq!(site.len(), 1);
        assert!(site.get("/docs/").is_some());
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            StaticSite::load(Path::new("/nonexistent-hastack"), &SiteOptions::default()).is_err()
        );
    }
}
