//! The microcache: the app tier's GET answers kept for a short time (`[web.cache]`),
//! what nginx does with `proxy_cache`, `proxy_cache_lock` and `proxy_cache_use_stale`.
//!
//! - **Fresh** for the app's `Cache-Control: s-maxage`/`max-age`, else `ttl`; answers
//!   that are personal or say not to be kept (`private`, `no-store`, `no-cache`,
//!   `Set-Cookie`, a `Vary` beyond `Accept-Encoding`) are never stored, and requests
//!   with `Authorization` or a session cookie bypass the cache both ways.
//! - **Coalescing**: concurrent misses of one answer send one request upstream; the
//!   others wait for it (at most `lock_timeout`) and are answered from what it stored.
//!   If it stores nothing (a personal answer, too large, the client went away) they go
//!   upstream themselves.
//! - **Stale-while-revalidate**: for `stale_while_revalidate` after it goes stale an
//!   answer is still served while one background request fetches the new one.
//! - **Stale-if-error**: for `stale_if_error` after it goes stale an answer replaces a
//!   5xx or a failure of every app node.
//! - **Memory bound**: entries weigh their bytes; past `max_bytes` the least likely to
//!   be used again go first (moka's TinyLFU).
//! - **Purge**: [`Microcache::purge`], by path prefix, from the node's admin port.
//!
//! Each answer says what happened in `X-Cache` (`HIT`, `MISS`, `STALE`, `UPDATING`,
//! `BYPASS`), as nginx's `$upstream_cache_status` does, and a kept answer gets `Age`
//! (RFC 9111 §5.1). The key is the host, the path with its query and the encoding the
//! client is given (the [`Compress`](crate::compress::Compress) layer runs below this
//! one), so each encoding is kept once.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tracing::{debug, warn};

use hastack_config::CacheSettings;
use hastack_proxy::{BoxError, Call, Layer, Next, ProxyBody, Reply, X_SERVED_BY};

use crate::compress::{Encoding, negotiate};

/// The header saying what the cache did.
pub static X_CACHE: HeaderName = HeaderName::from_static("x-cache");

/// What the cache did for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Answered from a fresh entry.
    Hit,
    /// Fetched upstream (and stored when it could be).
    Miss,
    /// A stale entry in place of a failure upstream.
    Stale,
    /// A stale entry while a background request fetches the new one.
    Updating,
    /// Personal or not cacheable: straight through.
    Bypass,
}

impl Outcome {
    /// Its `X-Cache` value and its metric label.
    fn names(self) -> (&'static str, &'static str) {
        match self {
            Outcome::Hit => ("HIT", "hit"),
            Outcome::Miss => ("MISS", "miss"),
            Outcome::Stale => ("STALE", "stale"),
            Outcome::Updating => ("UPDATING", "updating"),
            Outcome::Bypass => ("BYPASS", "bypass"),
        }
    }
}

/// What an answer is kept under.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    host: String,
    target: String,
    encoding: Encoding,
}

/// One kept answer.
#[derive(Debug)]
struct Entry {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    stored: Instant,
    fresh_for: Duration,
}

impl Entry {
    fn weight(&self) -> u32 {
        let headers: usize = self
            .headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 32)
            .sum();
        u32::try_from(self.body.len() + headers + 256).unwrap_or(u32::MAX)
    }
}

/// How old an entry is, against what the settings allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Freshness {
    Fresh,
    /// Stale, but within `stale_while_revalidate`.
    Revalidate,
    /// Stale beyond that, but within `stale_if_error`.
    IfError,
    /// Of no use.
    Dead,
}

fn freshness(age: Duration, fresh_for: Duration, s: &CacheSettings) -> Freshness {
    if age < fresh_for {
        Freshness::Fresh
    } else if age < fresh_for + s.stale_while_revalidate {
        Freshness::Revalidate
    } else if age < fresh_for + s.stale_if_error {
        Freshness::IfError
    } else {
        Freshness::Dead
    }
}

/// How long an answer stays fresh, or `None` when it must not be kept.
fn keep_for(status: StatusCode, headers: &HeaderMap, default_ttl: Duration) -> Option<Duration> {
    let storable_status = matches!(status.as_u16(), 200 | 203 | 301 | 404 | 410);
    if !storable_status || headers.contains_key(header::SET_COOKIE) {
        return None;
    }
    let vary_ok = headers
        .get_all(header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .all(|t| t.trim().eq_ignore_ascii_case("accept-encoding") || t.trim().is_empty());
    if !vary_ok {
        return None;
    }
    let mut max_age = None;
    let mut s_maxage = None;
    for directive in headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
    {
        let d = directive.trim().to_ascii_lowercase();
        if matches!(d.as_str(), "private" | "no-store" | "no-cache")
            || d.starts_with("private=")
            || d.starts_with("no-cache=")
        {
            return None;
        }
        let secs = |v: &str| v.trim_matches('"').parse::<u64>().ok();
        if let Some(v) = d.strip_prefix("s-maxage=") {
            s_maxage = secs(v);
        } else if let Some(v) = d.strip_prefix("max-age=") {
            max_age = secs(v);
        }
    }
    let ttl = s_maxage
        .or(max_age)
        .map_or(default_ttl, Duration::from_secs);
    (!ttl.is_zero()).then_some(ttl)
}

/// Whether a request is personal: it carries credentials or a session cookie.
fn personal(headers: &HeaderMap, session_cookies: &[String]) -> bool {
    if headers.contains_key(header::AUTHORIZATION) {
        return true;
    }
    let mut names = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.split_once('=').map(|(k, _)| k.trim()))
        .peekable();
    if session_cookies.is_empty() {
        names.peek().is_some()
    } else {
        names.any(|n| session_cookies.iter().any(|s| s == n))
    }
}

/// The in-flight fetches: a follower waits on the leader's channel.
type Locks = Mutex<HashMap<Key, watch::Receiver<Option<Arc<Entry>>>>>;

/// The microcache layer.
pub struct Microcache {
    settings: CacheSettings,
    /// Whether the layers below compress (the key then holds the encoding).
    compress: bool,
    store: moka::sync::Cache<Key, Arc<Entry>>,
    locks: Arc<Locks>,
    outcomes: Family<OutcomeLabel, Counter>,
    bytes: Gauge,
    entries: Gauge,
}

impl std::fmt::Debug for Microcache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Microcache")
            .field("entries", &self.store.entry_count())
            .field("bytes", &self.store.weighted_size())
            .finish()
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

/// Releases a key's lock when the leader is done, however it ends (a leader whose
/// client went away drops it too, and its followers go upstream themselves).
struct Leading {
    locks: Arc<Locks>,
    key: Key,
    tx: watch::Sender<Option<Arc<Entry>>>,
}

impl Drop for Leading {
    fn drop(&mut self) {
        let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        locks.remove(&self.key);
    }
}

/// Whether this request leads the fetch of its key or follows another's.
enum Role {
    Lead(Leading),
    Follow(watch::Receiver<Option<Arc<Entry>>>),
}

impl Microcache {
    /// A cache as `settings` say, keyed by encoding when `compress`; its metrics go
    /// into `registry`.
    pub fn new(settings: CacheSettings, compress: bool, registry: &mut Registry) -> Arc<Self> {
        let keep = settings.stale_while_revalidate.max(settings.stale_if_error);
        let store = moka::sync::Cache::builder()
            .max_capacity(settings.max_bytes)
            .weigher(|_: &Key, e: &Arc<Entry>| e.weight())
            .expire_after(Expire { keep })
            .build();
        let outcomes = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "hastack_web_cache_requests",
            "Requests that could use the microcache, by what it did (hit, miss, stale, updating, bypass)",
            outcomes.clone(),
        );
        let bytes = Gauge::default();
        registry.register(
            "hastack_web_cache_bytes",
            "Bytes the microcache holds",
            bytes.clone(),
        );
        let entries = Gauge::default();
        registry.register(
            "hastack_web_cache_entries",
            "Answers the microcache holds",
            entries.clone(),
        );
        Arc::new(Microcache {
            settings,
            compress,
            store,
            locks: Arc::new(Mutex::new(HashMap::new())),
            outcomes,
            bytes,
            entries,
        })
    }

    /// Drops every entry whose path starts with `prefix` ("/" for all); how many.
    pub fn purge(&self, prefix: &str) -> u64 {
        let doomed: Vec<Arc<Key>> = self
            .store
            .iter()
            .filter(|(k, _)| k.target.starts_with(prefix))
            .map(|(k, _)| k)
            .collect();
        for k in &doomed {
            self.store.invalidate(k.as_ref());
        }
        self.store.run_pending_tasks();
        self.gauge();
        doomed.len() as u64
    }

    fn gauge(&self) {
        self.bytes
            .set(i64::try_from(self.store.weighted_size()).unwrap_or(i64::MAX));
        self.entries
            .set(i64::try_from(self.store.entry_count()).unwrap_or(i64::MAX));
    }

    fn count(&self, o: Outcome) {
        self.outcomes
            .get_or_create(&OutcomeLabel {
                outcome: o.names().1,
            })
            .inc();
    }

    /// An answer from upstream that the cache did not keep, counted and marked MISS.
    fn missed(&self, mut resp: Response<ProxyBody>) -> Response<ProxyBody> {
        self.count(Outcome::Miss);
        resp.headers_mut()
            .insert(X_CACHE.clone(), HeaderValue::from_static("MISS"));
        resp
    }

    fn key(&self, call: &Call) -> Key {
        let req = &call.req;
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri().authority().map(|a| a.as_str()))
            .unwrap_or("")
            .to_ascii_lowercase();
        let target = req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        let encoding = if self.compress {
            negotiate(
                req.headers().get(header::ACCEPT_ENCODING),
                Encoding::STREAMED,
            )
        } else {
            Encoding::Identity
        };
        Key {
            host,
            target,
            encoding,
        }
    }

    /// Leads the fetch of `key`, or follows the request already leading it.
    fn role(&self, key: &Key) -> Role {
        let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(rx) = locks.get(key) {
            return Role::Follow(rx.clone());
        }
        let (tx, rx) = watch::channel(None);
        locks.insert(key.clone(), rx);
        Role::Lead(Leading {
            locks: self.locks.clone(),
            key: key.clone(),
            tx,
        })
    }

    /// The answer of `entry` to a request of `method`.
    fn serve(
        &self,
        entry: &Entry,
        method: &Method,
        outcome: Outcome,
        next: &Next,
    ) -> Response<ProxyBody> {
        self.count(outcome);
        let body = if *method == Method::HEAD {
            Bytes::new()
        } else {
            entry.body.clone()
        };
        let mut resp = Response::new(ProxyBody::full(body));
        *resp.status_mut() = entry.status;
        *resp.headers_mut() = entry.headers.clone();
        let age = entry.stored.elapsed().as_secs();
        resp.headers_mut()
            .insert(header::AGE, HeaderValue::from(age));
        resp.headers_mut()
            .insert(X_CACHE.clone(), HeaderValue::from_static(outcome.names().0));
        next.proxy().stamp(&mut resp);
        resp
    }

    /// Reads `resp` whole when it may be kept: the entry (stored), or the answer
    /// to pass on as it is. A body that breaks off is an error.
    async fn fill(
        &self,
        key: &Key,
        resp: Response<ProxyBody>,
    ) -> Result<Result<Arc<Entry>, Response<ProxyBody>>, BoxError> {
        let Some(fresh_for) = keep_for(resp.status(), resp.headers(), self.settings.ttl) else {
            return Ok(Err(resp));
        };
        let max = self.settings.max_object_bytes;
        if resp.body().size_hint().lower() > max as u64 {
            return Ok(Err(resp));
        }
        let (mut parts, mut body) = resp.into_parts();
        let mut held = BytesMut::new();
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame?.into_data() else {
                continue;
            };
            held.extend_from_slice(&data);
            if held.len() > max {
                // Too large to keep: what was read goes first, the rest as it comes.
                let rest = Prefixed {
                    prefix: Some(held.freeze()),
                    rest: body,
                };
                return Ok(Err(Response::from_parts(parts, ProxyBody::layered(rest))));
            }
        }
        parts.headers.remove(&X_SERVED_BY);
        let entry = Arc::new(Entry {
            status: parts.status,
            headers: parts.headers,
            body: held.freeze(),
            stored: Instant::now(),
            fresh_for,
        });
        self.store.insert(key.clone(), entry.clone());
        self.gauge();
        Ok(Ok(entry))
    }

    /// Fetches `call` upstream as the leader of `key`; `stale` is the entry to fall
    /// back on when the app tier fails.
    async fn fetch(
        self: &Arc<Self>,
        key: &Key,
        call: Call,
        next: Next,
        lead: Leading,
        stale: Option<Arc<Entry>>,
    ) -> Response<ProxyBody> {
        let method = call.req.method().clone();
        let resp = next.clone().run(call).await;
        if resp.status().is_server_error()
            && let Some(old) = stale
        {
            debug!(target = %key.target, status = %resp.status(), "the app tier failed; serving the stale answer");
            let _ = lead.tx.send(Some(old.clone()));
            return self.serve(&old, &method, Outcome::Stale, &next);
        }
        match self.fill(key, resp).await {
            Ok(Ok(entry)) => {
                let _ = lead.tx.send(Some(entry.clone()));
                drop(lead);
                self.serve(&entry, &method, Outcome::Miss, &next)
            }
            Ok(Err(passed)) => {
                drop(lead);
                self.missed(passed)
            }
            Err(e) => {
                drop(lead);
                warn!(target = %key.target, error = %e, "the app's answer broke off while the cache read it");
                match stale {
                    Some(old) => self.serve(&old, &method, Outcome::Stale, &next),
                    None => next
                        .proxy()
                        .local_response(StatusCode::BAD_GATEWAY, "the app's answer broke off"),
                }
            }
        }
    }

    async fn lookup(self: Arc<Self>, call: Call, next: Next) -> Response<ProxyBody> {
        let key = self.key(&call);
        let method = call.req.method().clone();
        let now = Instant::now();
        let found = self.store.get(&key);
        let state = found.as_ref().map(|e| {
            freshness(
                now.saturating_duration_since(e.stored),
                e.fresh_for,
                &self.settings,
            )
        });
        match (&found, state) {
            (Some(e), Some(Freshness::Fresh)) => {
                return self.serve(e, &method, Outcome::Hit, &next);
            }
            (Some(e), Some(Freshness::Revalidate)) => {
                if let Role::Lead(lead) = self.role(&key) {
                    let refresh = Call::internal(&call);
                    let me = self.clone();
                    let next2 = next.clone();
                    let key2 = key.clone();
                    tokio::spawn(async move {
                        let _ = me.fetch(&key2, refresh, next2, lead, None).await;
                    });
                }
                return self.serve(e, &method, Outcome::Updating, &next);
            }
            _ => {}
        }
        if method == Method::HEAD {
            // A HEAD's answer has no body to keep: it goes through, and only a GET
            // fills the entry a later HEAD may use.
            return self.missed(next.run(call).await);
        }
        let stale = found.filter(|_| state == Some(Freshness::IfError));
        match self.role(&key) {
            Role::Lead(lead) => self.fetch(&key, call, next, lead, stale).await,
            Role::Follow(mut rx) => {
                let waited =
                    tokio::time::timeout(self.settings.lock_timeout, rx.wait_for(|e| e.is_some()))
                        .await
                        .ok()
                        .and_then(|r| r.ok().and_then(|e| e.clone()));
                if let Some(entry) = waited {
                    let fresh = entry.stored.elapsed() < entry.fresh_for;
                    let outcome = if fresh { Outcome::Hit } else { Outcome::Stale };
                    return self.serve(&entry, &method, outcome, &next);
                }
                // The leader stored nothing (or took too long): this one goes itself.
                self.missed(next.run(call).await)
            }
        }
    }
}

impl Layer for Microcache {
    fn handle(self: Arc<Self>, call: Call, next: Next) -> Reply {
        let readable = matches!(*call.req.method(), Method::GET | Method::HEAD);
        let cacheable = readable
            && !call.req.headers().contains_key(header::RANGE)
            && !personal(call.req.headers(), &self.settings.session_cookies);
        if !cacheable {
            if readable {
                self.count(Outcome::Bypass);
            }
            return next.run(call);
        }
        Box::pin(self.lookup(call, next))
    }
}

/// moka's per-entry lifetime: fresh, then as long as a stale copy may still serve.
struct Expire {
    keep: Duration,
}

impl moka::Expiry<Key, Arc<Entry>> for Expire {
    fn expire_after_create(
        &self,
        _: &Key,
        e: &Arc<Entry>,
        _: std::time::Instant,
    ) -> Option<Duration> {
        Some(e.fresh_for + self.keep)
    }
}

/// A body whose first bytes were already read.
struct Prefixed {
    prefix: Option<Bytes>,
    rest: ProxyBody,
}

impl Body for Prefixed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(p) = self.prefix.take() {
            return Poll::Ready(Some(Ok(Frame::data(p))));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_none() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let mut h = self.rest.size_hint();
        if let Some(p) = &self.prefix {
            let n = p.len() as u64;
            h.set_lower(h.lower() + n);
            if let Some(u) = h.upper() {
                h.set_upper(u + n);
            }
        }
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    const TTL: Duration = Duration::from_secs(1);

    #[test]
    fn rfc9111_shared_caches_keep_what_the_origin_lets_them() {
        let ok = StatusCode::OK;
        // §5.2.2.10: s-maxage overrides max-age for a shared cache.
        assert_eq!(
            keep_for(
                ok,
                &headers(&[("cache-control", "max-age=5, s-maxage=30")]),
                TTL
            ),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            keep_for(ok, &headers(&[("cache-control", "public, max-age=5")]), TTL),
            Some(Duration::from_secs(5))
        );
        // Nothing said: the microcache's own TTL.
        assert_eq!(keep_for(ok, &HeaderMap::new(), TTL), Some(TTL));
        // §5.2.2.7 private, §5.2.2.5 no-store, §5.2.2.4 no-cache: not kept here.
        for cc in [
            "private",
            "no-store",
            "no-cache",
            "private=\"x\"",
            "max-age=0",
        ] {
            assert_eq!(
                keep_for(ok, &headers(&[("cache-control", cc)]), TTL),
                None,
                "{cc}"
            );
        }
        // A personal answer, one varying on more than the encoding, an error.
        assert_eq!(keep_for(ok, &headers(&[("set-cookie", "a=1")]), TTL), None);
        assert_eq!(keep_for(ok, &headers(&[("vary", "Cookie")]), TTL), None);
        assert_eq!(keep_for(ok, &headers(&[("vary", "*")]), TTL), None);
        assert_eq!(
            keep_for(ok, &headers(&[("vary", "Accept-Encoding")]), TTL),
            Some(TTL)
        );
        assert_eq!(
            keep_for(StatusCode::INTERNAL_SERVER_ERROR, &HeaderMap::new(), TTL),
            None
        );
        assert_eq!(
            keep_for(StatusCode::NOT_FOUND, &HeaderMap::new(), TTL),
            Some(TTL)
        );
        assert_eq!(keep_for(StatusCode::CREATED, &HeaderMap::new(), TTL), None);
    }

    #[test]
    fn an_entry_is_fresh_then_revalidated_then_kept_for_errors_then_dead() {
        let s = CacheSettings {
            stale_while_revalidate: Duration::from_secs(10),
            stale_if_error: Duration::from_secs(60),
            ..CacheSettings::default()
        };
        let f = |secs| freshness(Duration::from_secs(secs), TTL, &s);
        assert_eq!(f(0), Freshness::Fresh);
        assert_eq!(f(1), Freshness::Revalidate);
        assert_eq!(f(10), Freshness::Revalidate);
        assert_eq!(f(11), Freshness::IfError);
        assert_eq!(f(60), Freshness::IfError);
        assert_eq!(f(61), Freshness::Dead);
    }

    #[test]
    fn credentials_and_session_cookies_make_a_request_personal() {
        assert!(personal(&headers(&[("authorization", "Basic eA==")]), &[]));
        assert!(personal(&headers(&[("cookie", "theme=dark")]), &[]));
        assert!(!personal(&HeaderMap::new(), &[]));
        let session = ["sid".to_string()];
        assert!(!personal(&headers(&[("cookie", "theme=dark")]), &session));
        assert!(personal(
            &headers(&[("cookie", "theme=dark; sid=42")]),
            &session
        ));
    }
}
