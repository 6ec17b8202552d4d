//! Compression: which encoding a client gets (`Accept-Encoding`, RFC 9110 §12.5.3),
//! whole bodies compressed once (static files, at start) and the app tier's answers
//! compressed as they stream through ([`Compress`], a layer of the web node's chain).
//!
//! gzip (flate2), brotli and zstd, each from its own crate. The streaming adapter — an
//! encoder fed each body frame, whose output so far becomes the next frame — is
//! written here: it is what async-compression does over `AsyncRead`, but a body is a
//! stream of frames and this needs no reader between them.
//!
//! An answer is compressed when it is of a text type (`text/*` but event streams, JSON,
//! JavaScript, XML, SVG, WASM), has no `Content-Encoding` yet, is not marked
//! `no-transform`, is at least `compress_min_bytes` long when its length is known, and
//! the client accepts an encoding. Every such answer gets `Vary: Accept-Encoding`,
//! whichever encoding the client got, so a cache between never gives one client
//! another's encoding. A compressed answer's `ETag` becomes weak (its bytes are not
//! the identity's) and its `Content-Length` goes (it is sent chunked).

use std::io::Write;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};
use hyper::body::{Body, Frame, SizeHint};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use hastack_proxy::{BoxError, Call, Layer, Next, ProxyBody, Reply};

/// A content coding this server can send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// Brotli (RFC 7932).
    Brotli,
    /// Zstandard (RFC 8878).
    Zstd,
    /// gzip (RFC 1952).
    Gzip,
    /// As it is.
    Identity,
}

impl Encoding {
    /// The token in `Content-Encoding`.
    pub fn token(self) -> &'static str {
        match self {
            Encoding::Brotli => "br",
            Encoding::Zstd => "zstd",
            Encoding::Gzip => "gzip",
            Encoding::Identity => "identity",
        }
    }

    /// The suffix of a precompressed sibling file (`style.css.br`).
    pub fn suffix(self) -> Option<&'static str> {
        match self {
            Encoding::Brotli => Some(".br"),
            Encoding::Zstd => Some(".zst"),
            Encoding::Gzip => Some(".gz"),
            Encoding::Identity => None,
        }
    }

    /// Every coding, best ratio first: the order for bodies compressed once.
    pub const STORED: [Encoding; 3] = [Encoding::Brotli, Encoding::Zstd, Encoding::Gzip];

    /// Fastest first: the order for bodies compressed on every request.
    pub const STREAMED: [Encoding; 3] = [Encoding::Zstd, Encoding::Brotli, Encoding::Gzip];
}

/// The coding of `offer` (server preference order) the client's `Accept-Encoding`
/// rates highest; ties go to the earlier in `offer`. Identity when the client names
/// none of them (or sends no header: RFC 9110 §12.5.3 lets any coding through then,
/// but browsers always send one and tools that send none want the bytes as they are).
pub fn negotiate(
    accept: Option<&HeaderValue>,
    offer: impl IntoIterator<Item = Encoding>,
) -> Encoding {
    let Some(accept) = accept.and_then(|v| v.to_str().ok()) else {
        return Encoding::Identity;
    };
    let mut star = None;
    let mut rated = [None; 3];
    for item in accept.split(',') {
        let mut parts = item.split(';');
        let name = parts.next().unwrap_or("").trim();
        let q = parts
            .filter_map(|p| p.trim().strip_prefix("q=").or(p.trim().strip_prefix("Q=")))
            .find_map(|q| q.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        if name == "*" {
            star = Some(q);
        }
        for (i, e) in Encoding::STORED.iter().enumerate() {
            let alias = *e == Encoding::Gzip && name.eq_ignore_ascii_case("x-gzip");
            if name.eq_ignore_ascii_case(e.token()) || alias {
                rated[i] = Some(q);
            }
        }
    }
    let rating = |e: Encoding| -> f32 {
        let i = Encoding::STORED.iter().position(|s| *s == e);
        i.and_then(|i| rated[i]).or(star).unwrap_or(0.0)
    };
    let mut best = (Encoding::Identity, 0.0f32);
    for e in offer {
        let q = rating(e);
        if q > best.1 {
            best = (e, q);
        }
    }
    best.0
}

/// Whether answers of this `Content-Type` shrink when compressed.
pub fn compressible(content_type: Option<&HeaderValue>) -> bool {
    let Some(ct) = content_type.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let mime = ct.split(';').next().unwrap_or("").trim();
    let Some((kind, sub)) = mime.split_once('/') else {
        return false;
    };
    let is = |a: &str, b: &str| a.eq_ignore_ascii_case(b);
    let ends = |suffix: &str| {
        let sub = sub.as_bytes();
        sub.len() >= suffix.len()
            && sub[sub.len() - suffix.len()..].eq_ignore_ascii_case(suffix.as_bytes())
    };
    if is(kind, "text") {
        !is(sub, "event-stream")
    } else if is(kind, "application") {
        ["json", "javascript", "xml", "wasm"]
            .iter()
            .any(|s| is(sub, s))
            || ends("+json")
            || ends("+xml")
    } else {
        is(kind, "image") && is(sub, "svg+xml")
    }
}

/// An encoder writing into memory.
enum Encoder {
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
    Brotli(Box<brotli::CompressorWriter<Vec<u8>>>),
    Zstd(zstd::stream::write::Encoder<'static, Vec<u8>>),
}

/// brotli's window (2^22 bytes) and its working buffer.
const BROTLI_WINDOW: u32 = 22;
const BROTLI_BUFFER: usize = 16 * 1024;

impl Encoder {
    /// An encoder for `e` at `level` (the coding's own scale), or `None` for identity.
    fn new(e: Encoding, level: u32) -> std::io::Result<Option<Encoder>> {
        Ok(Some(match e {
            Encoding::Gzip => Encoder::Gzip(flate2::write::GzEncoder::new(
                Vec::new(),
                flate2::Compression::new(level),
            )),
            Encoding::Brotli => Encoder::Brotli(Box::new(brotli::CompressorWriter::new(
                Vec::new(),
                BROTLI_BUFFER,
                level,
                BROTLI_WINDOW,
            ))),
            Encoding::Zstd => {
                Encoder::Zstd(zstd::stream::write::Encoder::new(Vec::new(), level as i32)?)
            }
            Encoding::Identity => return Ok(None),
        }))
    }

    fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        match self {
            Encoder::Gzip(w) => w.write_all(data),
            Encoder::Brotli(w) => w.write_all(data),
            Encoder::Zstd(w) => w.write_all(data),
        }
    }

    /// What the encoder has put out so far.
    fn take(&mut self) -> Vec<u8> {
        match self {
            Encoder::Gzip(w) => std::mem::take(w.get_mut()),
            Encoder::Brotli(w) => std::mem::take(w.get_mut()),
            Encoder::Zstd(w) => std::mem::take(w.get_mut()),
        }
    }

    /// Ends the stream: the rest of the output.
    fn finish(self) -> std::io::Result<Vec<u8>> {
        match self {
            Encoder::Gzip(w) => w.finish(),
            Encoder::Brotli(w) => Ok(w.into_inner()),
            Encoder::Zstd(w) => w.finish(),
        }
    }
}

/// `data` compressed whole with `e` at the highest level worth it for a body that is
/// compressed once and sent many times. The encoders are sized to the input (zstd's
/// bulk API, a brotli window no larger than the data), so compressing a small file at
/// start does not take the tens of MiB a streaming encoder at these levels would.
pub fn compress_whole(e: Encoding, data: &[u8]) -> std::io::Result<Vec<u8>> {
    match e {
        Encoding::Gzip => {
            let mut w = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(9));
            w.write_all(data)?;
            w.finish()
        }
        Encoding::Brotli => {
            let bits = usize::BITS - data.len().max(1).leading_zeros();
            let window = bits.clamp(16, BROTLI_WINDOW);
            let mut w = brotli::CompressorWriter::new(
                Vec::new(),
                BROTLI_BUFFER,
                brotli_whole_quality(data.len()),
                window,
            );
            w.write_all(data)?;
            Ok(w.into_inner())
        }
        Encoding::Zstd => zstd::bulk::compress(data, 15),
        Encoding::Identity => Ok(data.to_vec()),
    }
}

/// brotli's quality for a body compressed once: 11, the smallest output, while that
/// takes at most ~0.7 s; 5 beyond (ship a precompressed `.br` sibling for such files).
/// Measured on a 100 KiB CSS: 11 gives 15,145 bytes in 126 ms with 8 MiB of memory;
/// 9 gives 16,654 bytes but takes 24 MiB (its hash table), 5 gives 17,652 with 3 MiB.
fn brotli_whole_quality(len: usize) -> u32 {
    if len <= 512 * 1024 { 11 } else { 5 }
}

/// Levels for bodies compressed on every request: cheap ones (nginx's default
/// `gzip_comp_level` is 1).
fn streaming_level(e: Encoding) -> u32 {
    match e {
        Encoding::Gzip => 1,
        Encoding::Brotli => 4,
        Encoding::Zstd => 3,
        Encoding::Identity => 0,
    }
}

/// A body compressed frame by frame as it streams through.
pub struct Compressing {
    inner: ProxyBody,
    encoder: Option<Encoder>,
}

impl Body for Compressing {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            let Some(encoder) = this.encoder.as_mut() else {
                return Poll::Ready(None);
            };
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Some(Ok(frame))) => {
                    // Trailers have no place in a compressed body: dropped.
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    if let Err(e) = encoder.write(&data) {
                        return Poll::Ready(Some(Err(e.into())));
                    }
                    let out = encoder.take();
                    if !out.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
                    }
                }
                Poll::Ready(None) => {
                    let Some(encoder) = this.encoder.take() else {
                        return Poll::Ready(None);
                    };
                    return match encoder.finish() {
                        Ok(out) if out.is_empty() => Poll::Ready(None),
                        Ok(out) => Poll::Ready(Some(Ok(Frame::data(Bytes::from(out))))),
                        Err(e) => Poll::Ready(Some(Err(e.into()))),
                    };
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.encoder.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// Adds `Accept-Encoding` to the answer's `Vary` unless it is there.
pub fn vary_on_encoding(headers: &mut HeaderMap) {
    let present = headers
        .get_all(header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("accept-encoding") || t.trim() == "*");
    if !present {
        headers.append(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    }
}

/// The layer compressing the app tier's answers.
#[derive(Debug)]
pub struct Compress {
    min_bytes: u64,
    compressed: Family<EncodingLabel, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct EncodingLabel {
    encoding: &'static str,
}

impl Compress {
    /// Compresses answers of `min_bytes` and more; counts them in `registry`.
    pub fn new(min_bytes: usize, registry: &mut Registry) -> Arc<Compress> {
        let compressed = Family::<EncodingLabel, Counter>::default();
        registry.register(
            "hastack_web_compressed_responses",
            "Answers from the app tier compressed on their way through, by encoding",
            compressed.clone(),
        );
        Arc::new(Compress {
            min_bytes: min_bytes as u64,
            compressed,
        })
    }

    /// Whether `resp` may be compressed at all (for any client).
    fn eligible(&self, resp: &Response<ProxyBody>) -> bool {
        let h = resp.headers();
        let no_transform = h
            .get_all(header::CACHE_CONTROL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|d| d.trim().eq_ignore_ascii_case("no-transform"));
        let long_enough = resp
            .body()
            .size_hint()
            .exact()
            .is_none_or(|n| n >= self.min_bytes);
        matches!(
            resp.status(),
            StatusCode::OK
                | StatusCode::CREATED
                | StatusCode::NON_AUTHORITATIVE_INFORMATION
                | StatusCode::NOT_FOUND
                | StatusCode::GONE
        ) && !h.contains_key(header::CONTENT_ENCODING)
            && !h.contains_key(header::CONTENT_RANGE)
            && !no_transform
            && long_enough
            && compressible(h.get(header::CONTENT_TYPE))
    }

    /// `resp` compressed as `accept` asks, if it is worth it.
    pub fn apply(
        &self,
        method: &Method,
        accept: Option<&HeaderValue>,
        mut resp: Response<ProxyBody>,
    ) -> Response<ProxyBody> {
        if !self.eligible(&resp) {
            return resp;
        }
        vary_on_encoding(resp.headers_mut());
        let encoding = negotiate(accept, Encoding::STREAMED);
        if *method == Method::HEAD {
            return resp;
        }
        let encoder = match Encoder::new(encoding, streaming_level(encoding)) {
            Ok(Some(e)) => e,
            Ok(None) => return resp,
            Err(e) => {
                tracing::warn!(error = %e, encoding = encoding.token(), "cannot start an encoder; the answer goes as it is");
                return resp;
            }
        };
        self.compressed
            .get_or_create(&EncodingLabel {
                encoding: encoding.token(),
            })
            .inc();
        let h = resp.headers_mut();
        h.remove(header::CONTENT_LENGTH);
        h.remove(header::ACCEPT_RANGES);
        h.insert(
            header::CONTENT_ENCODING,
            HeaderValue::from_static(encoding.token()),
        );
        if let Some(tag) = h.get(header::ETAG).cloned()
            && !tag.as_bytes().starts_with(b"W/")
        {
            let mut weak = b"W/".to_vec();
            weak.extend_from_slice(tag.as_bytes());
            if let Ok(v) = HeaderValue::from_bytes(&weak) {
                h.insert(header::ETAG, v);
            }
        }
        resp.map(|inner| {
            ProxyBody::layered(Compressing {
                inner,
                encoder: Some(encoder),
            })
        })
    }
}

impl Layer for Compress {
    fn handle(self: Arc<Self>, call: Call, next: Next) -> Reply {
        let method = call.req.method().clone();
        let accept = call.req.headers().get(header::ACCEPT_ENCODING).cloned();
        Box::pin(async move {
            let resp = next.run(call).await;
            self.apply(&method, accept.as_ref(), resp)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::io::Read;

    fn accept(v: &'static str) -> HeaderValue {
        HeaderValue::from_static(v)
    }

    #[test]
    fn negotiation_takes_the_highest_quality_and_breaks_ties_by_the_servers_order() {
        // RFC 9110 §12.5.3: a coding with q=0 is not acceptable; "*" matches any coding
        // not listed; the server picks among the acceptable ones.
        let n = |v, offer: &[Encoding]| negotiate(Some(&accept(v)), offer.iter().copied());
        assert_eq!(
            n("gzip, deflate, br, zstd", &Encoding::STORED),
            Encoding::Brotli
        );
        assert_eq!(
            n("gzip, deflate, br, zstd", &Encoding::STREAMED),
            Encoding::Zstd
        );
        assert_eq!(n("gzip;q=1.0, br;q=0.5", &Encoding::STORED), Encoding::Gzip);
        assert_eq!(n("br;q=0, *", &Encoding::STORED), Encoding::Zstd);
        assert_eq!(n("*;q=0", &Encoding::STORED), Encoding::Identity);
        assert_eq!(n("deflate", &Encoding::STORED), Encoding::Identity);
        assert_eq!(n("x-gzip", &Encoding::STORED), Encoding::Gzip);
        assert_eq!(n("GZIP; q=0.8", &Encoding::STORED), Encoding::Gzip);
        assert_eq!(negotiate(None, Encoding::STORED), Encoding::Identity);
        assert_eq!(n("gzip, br", &[Encoding::Gzip]), Encoding::Gzip);
    }

    #[test]
    fn text_types_compress_and_media_and_event_streams_do_not() {
        for (ct, yes) in [
            ("text/html; charset=utf-8", true),
            ("text/css", true),
            ("application/json", true),
            ("application/javascript; charset=utf-8", true),
            ("application/problem+json", true),
            ("image/svg+xml", true),
            ("text/event-stream", false),
            ("image/png", false),
            ("application/octet-stream", false),
            ("video/mp4", false),
        ] {
            assert_eq!(compressible(Some(&accept(ct))), yes, "{ct}");
        }
        assert!(!compressible(None));
    }

    fn decode(e: Encoding, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        match e {
            Encoding::Gzip => {
                flate2::read::GzDecoder::new(data)
                    .read_to_end(&mut out)
                    .expect("gunzip");
            }
            Encoding::Brotli => {
                brotli::Decompressor::new(data, 4096)
                    .read_to_end(&mut out)
                    .expect("unbrotli");
            }
            Encoding::Zstd => out = zstd::decode_all(data).expect("unzstd"),
            Encoding::Identity => out = data.to_vec(),
        }
        out
    }

    #[test]
    fn whole_bodies_round_trip_in_every_coding_and_shrink() {
        let text = "<p>hello, compressible world</p>\n".repeat(500);
        for e in Encoding::STORED {
            let packed = compress_whole(e, text.as_bytes()).expect("compress");
            assert!(packed.len() < text.len() / 10, "{e:?}: {}", packed.len());
            assert_eq!(decode(e, &packed), text.as_bytes(), "{e:?}");
        }
    }

    #[tokio::test]
    async fn a_streamed_body_is_compressed_frame_by_frame_and_ends_whole() {
        let text = "{\"post\": \"a line of json\"}\n".repeat(2000);
        let mut registry = Registry::default();
        let layer = Compress::new(1024, &mut registry);
        for (e, header) in [
            (Encoding::Gzip, "gzip"),
            (Encoding::Brotli, "br"),
            (Encoding::Zstd, "zstd"),
        ] {
            let mut resp = Response::new(ProxyBody::full(text.clone()));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            resp.headers_mut()
                .insert(header::ETAG, HeaderValue::from_static("\"abc\""));
            let out = layer.apply(&Method::GET, Some(&accept(header)), resp);
            assert_eq!(out.headers()[header::CONTENT_ENCODING], header);
            assert_eq!(out.headers()[header::VARY], "Accept-Encoding");
            assert_eq!(out.headers()[header::ETAG], "W/\"abc\"");
            let body = out.into_body().collect().await.expect("body").to_bytes();
            assert_eq!(decode(e, &body), text.as_bytes(), "{e:?}");
        }
    }

    #[tokio::test]
    async fn small_binary_ranged_or_already_encoded_answers_go_as_they_are() {
        let mut registry = Registry::default();
        let layer = Compress::new(1024, &mut registry);
        let make = |body: &'static str, ct: &'static str| {
            let mut r = Response::new(ProxyBody::full(body));
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
            r
        };
        let small = layer.apply(
            &Method::GET,
            Some(&accept("gzip")),
            make("tiny", "text/html"),
        );
        assert!(!small.headers().contains_key(header::CONTENT_ENCODING));
        let big = "x".repeat(4096).leak();
        let png = layer.apply(&Method::GET, Some(&accept("gzip")), make(big, "image/png"));
        assert!(!png.headers().contains_key(header::CONTENT_ENCODING));
        let mut enc = make(big, "text/html");
        enc.headers_mut()
            .insert(header::CONTENT_ENCODING, HeaderValue::from_static("br"));
        let enc = layer.apply(&Method::GET, Some(&accept("gzip")), enc);
        assert_eq!(enc.headers()[header::CONTENT_ENCODING], "br");
        let mut nt = make(big, "text/html");
        nt.headers_mut().insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("public, no-transform"),
        );
        let nt = layer.apply(&Method::GET, Some(&accept("gzip")), nt);
        assert!(!nt.headers().contains_key(header::CONTENT_ENCODING));
        // Eligible but the client accepts nothing: identity, still with Vary.
        let plain = layer.apply(&Method::GET, None, make(big, "text/html"));
        assert!(!plain.headers().contains_key(header::CONTENT_ENCODING));
        assert_eq!(plain.headers()[header::VARY], "Accept-Encoding");
    }
}
