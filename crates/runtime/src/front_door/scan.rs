//! The pure part of the front door: a scanner that follows an HTTP/1.1 byte stream
//! request by request (heads, `Content-Length` bodies, chunked bodies) and says, for
//! the bytes buffered so far, how many may go on to the HTTP parser and whether the
//! request they belong to must be refused instead.
//!
//! It does no I/O and reads no clock: bytes go in, a [`Step`] comes out. The head
//! deadline is the I/O wrapper's business (`io.rs`).
//!
//! Rules (RFC 9112 and what a front door should refuse rather than re-frame):
//! - a header line longer than `max_line`, or more than `max_headers` lines: 431; a
//!   request line longer than `max_line`: 414;
//! - an HTTP/1.1 request without `Host`, two `Host` lines, or a `Host` that is not
//!   `host[:port]`: 400 (RFC 9112 §3.2);
//! - `Content-Length` together with `Transfer-Encoding`, two `Content-Length` lines,
//!   one that is not a decimal number: 400 (§6.3: the framing is ambiguous);
//! - a second `Transfer-Encoding` line, any coding but a lone `chunked`, or
//!   `Transfer-Encoding` in HTTP/1.0: 400 (§6.1);
//! - anything `httparse` (hyper's own parser) rejects, and malformed chunk framing: 400.

/// The limits of the front door.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadLimits {
    /// Longest request line or header line, in bytes (without its CRLF).
    pub max_line: usize,
    /// Most header lines in one request head (at most [`MAX_HEADERS_CAP`]).
    pub max_headers: usize,
}

/// The most header lines any configuration may allow (hyper's own default is 100).
pub const MAX_HEADERS_CAP: usize = 128;

/// The longest whole request head, request line and headers together: HAProxy's
/// 16 KiB buffer and nginx's 4 x 8 KiB header buffers bound it likewise. Below the
/// HTTP parser's own buffer ([`crate::MAX_CONN_BUFFER`]), so the front door refuses
/// a long head (counted) before the parser would.
pub const MAX_HEAD: usize = 48 * 1024;
const _: () = assert!(
    MAX_HEAD < crate::MAX_CONN_BUFFER,
    "the parser's buffer must hold a head"
);

/// The longest chunk-size line (with extensions) or trailer line accepted.
const MAX_CHUNK_LINE: usize = 4096;

/// The most bytes of trailers accepted after a chunked body.
const MAX_TRAILERS: usize = 16 * 1024;

impl Default for HeadLimits {
    fn default() -> HeadLimits {
        HeadLimits {
            max_line: 8 * 1024,
            max_headers: 100,
        }
    }
}

/// Why a request was refused: its status and a short reason (also a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// 400, 408, 414 or 431.
    pub status: u16,
    /// A label such as `two_hosts`.
    pub reason: &'static str,
    /// What the client is told.
    pub text: &'static str,
}

impl Refusal {
    const fn new(status: u16, reason: &'static str, text: &'static str) -> Refusal {
        Refusal {
            status,
            reason,
            text,
        }
    }
}

/// Refusals the scanner makes (the I/O wrapper adds [`HEAD_TIMEOUT`]).
pub mod refusals {
    use super::Refusal;
    /// An HTTP/1.1 request without `Host`.
    pub const NO_HOST: Refusal =
        Refusal::new(400, "no_host", "an HTTP/1.1 request needs a Host header");
    /// Two `Host` lines.
    pub const TWO_HOSTS: Refusal =
        Refusal::new(400, "two_hosts", "a request may carry one Host header only");
    /// A `Host` that is not `host[:port]`.
    pub const BAD_HOST: Refusal = Refusal::new(
        400,
        "bad_host",
        "the Host header is not a valid host[:port]",
    );
    /// Both framings at once.
    pub const LENGTH_AND_CHUNKED: Refusal = Refusal::new(
        400,
        "length_and_encoding",
        "Content-Length and Transfer-Encoding together make the body's length ambiguous",
    );
    /// Two `Content-Length` lines or a bad value.
    pub const BAD_LENGTH: Refusal = Refusal::new(
        400,
        "bad_content_length",
        "Content-Length must appear once, as a decimal number",
    );
    /// Two `Transfer-Encoding` lines.
    pub const TWO_ENCODINGS: Refusal = Refusal::new(
        400,
        "two_transfer_encodings",
        "Transfer-Encoding may appear once only",
    );
    /// A coding other than `chunked`, or `Transfer-Encoding` in HTTP/1.0.
    pub const BAD_ENCODING: Refusal = Refusal::new(
        400,
        "bad_transfer_encoding",
        "the only Transfer-Encoding accepted is a lone chunked, in HTTP/1.1",
    );
    /// Malformed chunk framing.
    pub const BAD_CHUNK: Refusal = Refusal::new(400, "bad_chunk", "the chunked body is malformed");
    /// Anything the HTTP parser rejects.
    pub const MALFORMED: Refusal = Refusal::new(400, "malformed", "the request head is malformed");
    /// A header line over the limit.
    pub const LINE_TOO_LONG: Refusal = Refusal::new(
        431,
        "header_too_large",
        "a header line is longer than this server accepts",
    );
    /// Too many header lines.
    pub const TOO_MANY_HEADERS: Refusal = Refusal::new(
        431,
        "too_many_headers",
        "the request has more header lines than this server accepts",
    );
    /// A head longer than [`MAX_HEAD`] in all.
    pub const HEAD_TOO_LARGE: Refusal = Refusal::new(
        431,
        "head_too_large",
        "the request head is longer than this server accepts",
    );
    /// A request line over the limit.
    pub const URI_TOO_LONG: Refusal = Refusal::new(
        414,
        "uri_too_long",
        "the request line is longer than this server accepts",
    );
    /// The head did not arrive whole in time (set by the I/O wrapper).
    pub const HEAD_TIMEOUT: Refusal = Refusal::new(
        408,
        "head_timeout",
        "the request head did not arrive in time",
    );
}

use refusals::*;

/// What to do with the bytes buffered so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The first `n` bytes are checked: pass them on (n > 0).
    Pass(usize),
    /// Nothing can be decided until more bytes arrive.
    Need,
    /// The request being read must be refused; nothing more of the stream goes on.
    Refuse(Refusal),
}

/// Where in the stream the scanner is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for (the rest of) a request head.
    Head,
    /// Inside a body of known length: this many bytes left.
    Body(u64),
    /// Waiting for a chunk-size line.
    ChunkSize,
    /// Inside a chunk's data: this many bytes left, then CRLF.
    ChunkData(u64),
    /// The CRLF after a chunk's data.
    ChunkEnd,
    /// Trailer lines after the last chunk, up to an empty line; bytes seen so far.
    Trailers(usize),
}

/// Follows one connection's request stream.
#[derive(Debug, Clone)]
pub struct Scanner {
    limits: HeadLimits,
    state: State,
    /// Requests whose head has been passed on.
    requests: u64,
    /// How far the lines of an incomplete head have been checked, so that a head
    /// arriving in many small pieces is scanned once, not once per piece.
    progress: HeadProgress,
}

/// The lines of the current head checked so far.
#[derive(Debug, Clone, Copy)]
struct HeadProgress {
    /// Where the first unchecked line starts.
    start: usize,
    /// Header lines seen.
    lines: usize,
    /// Still before the request line.
    first: bool,
}

impl Default for HeadProgress {
    fn default() -> HeadProgress {
        HeadProgress {
            start: 0,
            lines: 0,
            first: true,
        }
    }
}

impl Scanner {
    /// A scanner at the start of a connection.
    pub fn new(limits: HeadLimits) -> Scanner {
        Scanner {
            limits: HeadLimits {
                max_line: limits.max_line.max(64),
                max_headers: limits.max_headers.clamp(1, MAX_HEADERS_CAP),
            },
            state: State::Head,
            requests: 0,
            progress: HeadProgress::default(),
        }
    }

    /// Whether the scanner waits for a request head (so a deadline for it may run).
    pub fn in_head(&self) -> bool {
        self.state == State::Head
    }

    /// How many request heads have been passed on: the index the next one will have.
    pub fn requests(&self) -> u64 {
        self.requests
    }

    /// Looks at `buf`, the bytes not yet passed on, and says what may go on.
    pub fn scan(&mut self, buf: &[u8]) -> Step {
        if buf.is_empty() {
            return Step::Need;
        }
        match self.state {
            State::Head => self.head(buf),
            State::Body(left) => {
                let n = left.min(buf.len() as u64);
                self.state = if n == left {
                    State::Head
                } else {
                    State::Body(left - n)
                };
                Step::Pass(n as usize)
            }
            State::ChunkSize => {
                let line = match line_end(buf, MAX_CHUNK_LINE, BAD_CHUNK) {
                    Ok(line) => line,
                    Err(step) => return step,
                };
                let Some(size) = chunk_size(&buf[..line.text]) else {
                    return Step::Refuse(BAD_CHUNK);
                };
                self.state = if size == 0 {
                    State::Trailers(0)
                } else {
                    State::ChunkData(size)
                };
                Step::Pass(line.next)
            }
            State::ChunkData(left) => {
                let n = left.min(buf.len() as u64);
                self.state = if n == left {
                    State::ChunkEnd
                } else {
                    State::ChunkData(left - n)
                };
                Step::Pass(n as usize)
            }
            State::ChunkEnd => match buf {
                [b'\r'] => Step::Need,
                [b'\r', b'\n', ..] => {
                    self.state = State::ChunkSize;
                    Step::Pass(2)
                }
                _ => Step::Refuse(BAD_CHUNK),
            },
            State::Trailers(seen) => {
                let line = match line_end(buf, MAX_CHUNK_LINE, BAD_CHUNK) {
                    Ok(line) => line,
                    Err(step) => return step,
                };
                if seen + line.next > MAX_TRAILERS {
                    return Step::Refuse(LINE_TOO_LONG);
                }
                if line.text == 0 {
                    self.state = State::Head;
                } else if !is_field_line(&buf[..line.text]) {
                    return Step::Refuse(BAD_CHUNK);
                } else {
                    self.state = State::Trailers(seen + line.next);
                }
                Step::Pass(line.next)
            }
        }
    }

    fn head(&mut self, buf: &[u8]) -> Step {
        // Line lengths first: a huge line is refused before the head is complete. The
        // lines checked by earlier calls are not checked again.
        let HeadProgress {
            mut start,
            mut lines,
            mut first,
        } = std::mem::take(&mut self.progress);
        let mut end = None;
        while start < buf.len() {
            let Some(nl) = memchr(b'\n', &buf[start..]) else {
                let partial = buf.len() - start;
                if partial > self.limits.max_line + 1 {
                    return Step::Refuse(if first { URI_TOO_LONG } else { LINE_TOO_LONG });
                }
                if buf.len() > MAX_HEAD {
                    return Step::Refuse(HEAD_TOO_LARGE);
                }
                break;
            };
            let text = nl - usize::from(nl > 0 && buf[start + nl - 1] == b'\r');
            if text == 0 {
                if first {
                    // Empty lines before the request line are ignored (RFC 9112 §2.2).
                    start += nl + 1;
                    continue;
                }
                end = Some(start + nl + 1);
                break;
            }
            if text > self.limits.max_line {
                return Step::Refuse(if first { URI_TOO_LONG } else { LINE_TOO_LONG });
            }
            if !first {
                lines += 1;
                if lines > self.limits.max_headers {
                    return Step::Refuse(TOO_MANY_HEADERS);
                }
            }
            first = false;
            start += nl + 1;
            if start > MAX_HEAD {
                return Step::Refuse(HEAD_TOO_LARGE);
            }
        }
        let Some(end) = end else {
            self.progress = HeadProgress {
                start,
                lines,
                first,
            };
            return Step::Need;
        };
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS_CAP];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf[..end]) {
            Ok(httparse::Status::Complete(n)) if n == end => {}
            Ok(_) | Err(_) => return Step::Refuse(MALFORMED),
        }
        let http11 = req.version == Some(1);
        let mut hosts = 0;
        let mut length: Option<u64> = None;
        let mut lengths = 0;
        let mut encodings = 0;
        let mut chunked = false;
        for h in req.headers.iter() {
            if h.name.eq_ignore_ascii_case("host") {
                hosts += 1;
                if !valid_host(h.value) {
                    return Step::Refuse(BAD_HOST);
                }
            } else if h.name.eq_ignore_ascii_case("content-length") {
                lengths += 1;
                length = decimal(h.value);
                if length.is_none() {
                    return Step::Refuse(BAD_LENGTH);
                }
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                encodings += 1;
                chunked = trim(h.value).eq_ignore_ascii_case(b"chunked");
                if !chunked || !http11 {
                    return Step::Refuse(BAD_ENCODING);
                }
            }
        }
        if hosts > 1 {
            return Step::Refuse(TWO_HOSTS);
        }
        if hosts == 0 && http11 {
            return Step::Refuse(NO_HOST);
        }
        if encodings > 1 {
            return Step::Refuse(TWO_ENCODINGS);
        }
        if lengths > 1 {
            return Step::Refuse(BAD_LENGTH);
        }
        if chunked && lengths > 0 {
            return Step::Refuse(LENGTH_AND_CHUNKED);
        }
        self.state = match (chunked, length) {
            (true, _) => State::ChunkSize,
            (false, Some(n)) if n > 0 => State::Body(n),
            _ => State::Head,
        };
        self.requests += 1;
        Step::Pass(end)
    }
}

/// A CRLF-terminated line at the start of `buf`: `text` bytes, then the next line at
/// `next`.
struct LineEnd {
    text: usize,
    next: usize,
}

/// The first line of `buf` if it is complete; `Err` with the step to take otherwise:
/// wait for more bytes, or refuse a line over `max` bytes or ended by a bare LF.
fn line_end(buf: &[u8], max: usize, refusal: Refusal) -> Result<LineEnd, Step> {
    match memchr(b'\n', buf) {
        None if buf.len() > max + 1 => Err(Step::Refuse(refusal)),
        None => Err(Step::Need),
        Some(nl) if nl == 0 || buf[nl - 1] != b'\r' || nl - 1 > max => Err(Step::Refuse(refusal)),
        Some(nl) => Ok(LineEnd {
            text: nl - 1,
            next: nl + 1,
        }),
    }
}

fn memchr(needle: u8, hay: &[u8]) -> Option<usize> {
    hay.iter().position(|&b| b == needle)
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &v[start..end.max(start)]
}

/// A non-negative decimal of at most 18 digits (no sign, no list, no spaces inside).
fn decimal(v: &[u8]) -> Option<u64> {
    let v = trim(v);
    if v.is_empty() || v.len() > 18 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    v.iter().try_fold(0u64, |n, d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// A chunk-size line: 1 to 15 hex digits, optionally followed by `;` extensions.
fn chunk_size(line: &[u8]) -> Option<u64> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 15 {
        return None;
    }
    let rest = &line[digits..];
    let rest_ok = rest.is_empty()
        || (rest.iter().find(|b| **b != b' ' && **b != b'\t') == Some(&b';')
            && rest
                .iter()
                .all(|b| *b == b'\t' || (b' '..=b'~').contains(b)));
    if !rest_ok {
        return None;
    }
    let hex = std::str::from_utf8(&line[..digits]).ok()?;
    u64::from_str_radix(hex, 16).ok()
}

/// A trailer field line: a token, a colon, visible characters.
fn is_field_line(line: &[u8]) -> bool {
    let Some(colon) = memchr(b':', line) else {
        return false;
    };
    colon > 0
        && line[..colon].iter().all(|b| is_tchar(*b))
        && line[colon + 1..]
            .iter()
            .all(|b| *b == b'\t' || (b' '..=b'~').contains(b) || *b >= 0x80)
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// `host[:port]`: a DNS name or IPv4 address (letters, digits, `-`, `.`, `_`) or a
/// bracketed IPv6 literal, then an optional port of 1 to 5 digits up to 65535.
pub fn valid_host(v: &[u8]) -> bool {
    let v = trim(v);
    let (host, port) = if v.first() == Some(&b'[') {
        let Some(close) = memchr(b']', v) else {
            return false;
        };
        let inner = &v[1..close];
        if inner.is_empty()
            || !inner
                .iter()
                .all(|b| b.is_ascii_hexdigit() || *b == b':' || *b == b'.')
        {
            return false;
        }
        match &v[close + 1..] {
            [] => (&v[..=close], None),
            [b':', port @ ..] => (&v[..=close], Some(port)),
            _ => return false,
        }
    } else {
        match memchr(b':', v) {
            Some(c) => (&v[..c], Some(&v[c + 1..])),
            None => (v, None),
        }
    };
    let host_ok = host.first() == Some(&b'[')
        || (!host.is_empty()
            && host.len() <= 253
            && host
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(b)));
    let port_ok = match port {
        None => true,
        Some(p) => {
            !p.is_empty()
                && p.len() <= 5
                && p.iter().all(u8::is_ascii_digit)
                && decimal(p).is_some_and(|n| n <= 65535)
        }
    };
    host_ok && port_ok
}

#[cfg(test)]
mod tests;
