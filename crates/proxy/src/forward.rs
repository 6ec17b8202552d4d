//! Forwarding one request to a pool: header rewriting (hop-by-hop, `X-Forwarded-*`,
//! `X-Served-By`), retries on another server when that is safe, and the error answers
//! (502, 503, 504, 413) when no server can take the request.
//!
//! Retry rule ([`Failure`]): a request whose connection was refused never reached a
//! server, so it goes to the next one whatever its method; an idempotent request also
//! goes to the next server after a broken exchange; a POST that may have reached a
//! server is never sent twice; a connection this host could not open for want of its
//! own resources (descriptors, ephemeral ports) moves on too but never takes the
//! server out; a timeout is never retried (the server may still be
//! working on it, and retrying would double the load that made it slow).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::Either;
use hyper::body::Incoming;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tracing::{debug, warn};

use crate::access_log::AccessLog;
use crate::balance::{Balance, HashOn, hash};
use crate::body::ProxyBody;
use crate::body::{BodyRules, RequestBody};
use crate::conn::ProxyHeaderFor;
use crate::phase::{Call, Upstream};
use crate::pool::{NoServer, Pool};

/// The header every tier extends with its node name, so a response shows its path.
pub static X_SERVED_BY: HeaderName = HeaderName::from_static("x-served-by");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// How a proxy treats requests.
#[derive(Debug, Clone)]
pub struct ProxyOptions {
    /// This node's name, put in `X-Served-By`.
    pub node_name: String,
    /// The scheme clients used to reach this proxy (`X-Forwarded-Proto`).
    pub scheme: &'static str,
    /// Keep an incoming `X-Forwarded-Proto` (set by a proxy in front) instead of
    /// overwriting it. False at the edge, where clients could forge it.
    pub trust_forwarded_proto: bool,
    /// Largest request body accepted (413 above).
    pub max_body: usize,
    /// Longest wait for an upstream's response headers (504 after).
    pub response_timeout: Duration,
    /// Longest wait for a new upstream connection.
    pub connect_timeout: Duration,
    /// Longest wait for a client's whole request body (408 after).
    pub request_body_timeout: Duration,
    /// Bytes of request bodies held in memory for retries, all requests together.
    pub body_buffer: usize,
    /// Proxies in front of this one (the listener's own list): at the edge, their
    /// `X-Forwarded-For` is appended to and their `X-Forwarded-Proto` kept, not
    /// replaced.
    pub front_proxies: hastack_runtime::ProxyHeader,
    /// Where clients reach this proxy over HTTP and HTTPS: the destination in the PROXY
    /// headers sent upstream (`PoolOptions::send_proxy`).
    pub listen_http: Option<SocketAddr>,
    /// See [`ProxyOptions::listen_http`].
    pub listen_https: Option<SocketAddr>,
    /// Where each answered request is logged, if anywhere.
    pub access_log: Option<Arc<AccessLog>>,
}

impl ProxyOptions {
    /// Defaults for a proxy called `node_name`.
    pub fn new(node_name: &str) -> ProxyOptions {
        ProxyOptions {
            node_name: node_name.to_string(),
            scheme: "http",
            trust_forwarded_proto: false,
            max_body: 8 << 20,
            response_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(2),
            request_body_timeout: Duration::from_secs(30),
            body_buffer: 64 << 20,
            front_proxies: hastack_runtime::ProxyHeader::Never,
            listen_http: None,
            listen_https: None,
            access_log: None,
        }
    }

    /// These options with the body limits of the topology's `[http]` section.
    pub fn with_http(mut self, http: &hastack_config::HttpSettings) -> ProxyOptions {
        self.max_body = http.max_body;
        self.request_body_timeout = http.body_timeout;
        self.body_buffer = http.body_buffer;
        self
    }
}

/// The status classes responses are counted by, in the order of `Proxy::responses`.
const CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "other"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct ClassLabels {
    code: &'static str,
}

/// A reverse proxy in front of one pool.
#[derive(Debug)]
pub struct Proxy {
    opts: ProxyOptions,
    served_by: HeaderValue,
    pool: Arc<Pool>,
    responses: [Counter; 6],
    /// Requests sent to another server after an attempt failed.
    retries: Counter,
    /// What request bodies may be; a reload replaces them.
    body: ArcSwap<BodyRules>,
}

/// Whether the method may be sent twice (RFC 9110 §9.2.2).
fn idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// Removes the hop-by-hop headers of RFC 9110 §7.6.1, including those `Connection` names
/// — except the end-to-end headers this proxy itself manages, which a client must not
/// be able to strip that way.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if let Some(conn) = headers
        .get(header::CONNECTION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
    {
        for name in conn.split(',').map(str::trim) {
            let protected = [
                header::HOST.as_str(),
                X_FORWARDED_FOR.as_str(),
                X_FORWARDED_PROTO.as_str(),
                X_SERVED_BY.as_str(),
            ]
            .iter()
            .any(|p| p.eq_ignore_ascii_case(name));
            if !name.is_empty() && !protected {
                headers.remove(name);
            }
        }
    }
    for h in [
        header::CONNECTION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::PROXY_AUTHORIZATION,
    ] {
        headers.remove(h);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
}

/// Puts `name` in front of the `X-Served-By` of a response (`lb1, web2, app1`).
pub fn prepend_served_by(headers: &mut HeaderMap, name: &HeaderValue) {
    let value = match headers.get(&X_SERVED_BY) {
        Some(old) => {
            let mut v = Vec::with_capacity(name.len() + 2 + old.len());
            v.extend_from_slice(name.as_bytes());
            v.extend_from_slice(b", ");
            v.extend_from_slice(old.as_bytes());
            HeaderValue::from_bytes(&v).unwrap_or_else(|_| name.clone())
        }
        None => name.clone(),
    };
    headers.insert(X_SERVED_BY.clone(), value);
}

impl Proxy {
    /// A proxy to `pool`; its metrics go into `registry`.
    pub fn new(opts: ProxyOptions, pool: Arc<Pool>, registry: &mut Registry) -> Arc<Proxy> {
        let family = Family::<ClassLabels, Counter>::default();
        registry.register(
            "hastack_proxy_responses",
            "Responses sent to clients, by status class",
            family.clone(),
        );
        let responses = CLASSES.map(|code| family.get_or_create(&ClassLabels { code }).clone());
        let retries = Counter::default();
        registry.register(
            "hastack_proxy_retries",
            "Requests sent to another server after an attempt failed",
            retries.clone(),
        );
        let served_by = HeaderValue::from_str(&opts.node_name)
            .unwrap_or_else(|_| HeaderValue::from_static("hastack"));
        let body = ArcSwap::from_pointee(BodyRules::new(
            opts.max_body,
            opts.request_body_timeout,
            opts.body_buffer,
        ));
        Arc::new(Proxy {
            opts,
            served_by,
            pool,
            responses,
            retries,
            body,
        })
    }

    /// New body limits from `[http]` for the requests from now on (a reload). Bodies
    /// held under the old budget return their bytes to it, not to the new one.
    pub fn set_http(&self, http: &hastack_config::HttpSettings) {
        self.body.store(Arc::new(BodyRules::new(
            http.max_body,
            http.body_timeout,
            http.body_buffer,
        )));
    }

    /// The pool behind this proxy.
    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// Responses sent to clients by status class (`1xx` … `5xx`, `other`), and
    /// requests retried on another server, since start.
    pub fn totals(&self) -> ([(&'static str, u64); 6], u64) {
        let classes = std::array::from_fn(|i| (CLASSES[i], self.responses[i].get()));
        (classes, self.retries.get())
    }

    /// Requests answered and how many were 5xx, for `/healthz`.
    pub fn traffic(&self) -> hastack_status::health::Traffic {
        hastack_status::health::Traffic {
            requests: self.responses.iter().map(Counter::get).sum(),
            errors: self.responses[4].get(),
        }
    }

    fn count(&self, status: StatusCode) {
        let i = match status.as_u16() / 100 {
            1 => 0,
            2 => 1,
            3 => 2,
            4 => 3,
            5 => 4,
            _ => 5,
        };
        self.responses[i].inc();
    }

    /// A response made by this proxy itself.
    pub fn local_response(&self, status: StatusCode, msg: &str) -> Response<ProxyBody> {
        let mut body =
            serde_json::json!({ "error": msg, "proxy": self.opts.node_name }).to_string();
        body.push('\n');
        let mut resp = Response::new(ProxyBody::full(body));
        *resp.status_mut() = status;
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        resp.headers_mut()
            .insert(X_SERVED_BY.clone(), self.served_by.clone());
        self.count(status);
        resp
    }

    /// Prepends this node to `X-Served-By` of a response made outside [`Proxy::forward`].
    pub fn stamp(&self, resp: &mut Response<ProxyBody>) {
        prepend_served_by(resp.headers_mut(), &self.served_by);
        self.count(resp.status());
    }

    /// Forwards `req`, received from `peer`, to a server of the pool.
    pub async fn forward(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<ProxyBody> {
        self.forward_inner(req, peer, None).await
    }

    /// Forwards `req`, which came from a client over `scheme` (`http` or `https`): the
    /// edge, where `X-Forwarded-Proto` is set to `scheme` and `X-Forwarded-For` to the
    /// client's address, whatever the client sent.
    /// HTTP/2 and HTTP/1.1 requests alike go upstream as HTTP/1.1.
    pub async fn forward_as(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
        scheme: &'static str,
    ) -> Response<ProxyBody> {
        self.forward_inner(req, peer, Some(scheme)).await
    }

    async fn forward_inner(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
        edge: Option<&'static str>,
    ) -> Response<ProxyBody> {
        let call = Call::from_client(req, peer, edge);
        crate::phase::logged(self, call, |call| self.forward_call(call)).await
    }

    /// The access log, if this proxy keeps one.
    pub(crate) fn access_log(&self) -> Option<&Arc<AccessLog>> {
        self.opts.access_log.as_ref()
    }

    /// Forwards one request of a [`Chain`](crate::Chain) (its last stage) to a
    /// server of the pool; the answer names that server ([`Upstream`]) when an access
    /// log wants it.
    pub(crate) async fn forward_call(&self, call: Call) -> Response<ProxyBody> {
        let Call {
            req,
            peer,
            edge: edge_scheme,
        } = call;
        let (parts, body) = req.into_parts();
        // The servers and balancing options in force for this request, even if a
        // reload replaces them meanwhile.
        let set = self.pool.set();
        let may_repeat = idempotent(&parts.method);
        // An idempotent request may be sent again after a broken exchange, so its body
        // is held while there is another server to send it to.
        let may_retry = may_repeat && set.servers().len() > 1;
        let body = match crate::body::prepare(body, may_retry, &self.body).await {
            Ok(b) => b,
            Err(fault) => return self.local_response(fault.status(), fault.text()),
        };
        let mut headers = parts.headers;
        let key = match set.options().algorithm {
            Balance::Hash => hash_key(&set.options().hash_key, &headers, &parts.uri, peer),
            _ => 0,
        };
        // The sticky cookie names the client's server; it is this proxy's business
        // and does not go upstream.
        let sticky = set
            .options()
            .sticky_cookie
            .as_deref()
            .and_then(|name| take_cookie(&mut headers, name));
        strip_hop_by_hop(&mut headers);
        // A proxy in front of this one says who its client was.
        let behind_front_proxy = edge_scheme.is_some() && self.opts.front_proxies.trusts(peer.ip());
        if edge_scheme.is_some() && !behind_front_proxy {
            // At the edge a client's own X-Forwarded-For is a claim anyone can make:
            // the address this proxy saw replaces it.
            headers.remove(&X_FORWARDED_FOR);
        }
        append_forwarded_for(&mut headers, peer);
        let keep_proto = (behind_front_proxy
            || (edge_scheme.is_none() && self.opts.trust_forwarded_proto))
            && headers.contains_key(&X_FORWARDED_PROTO);
        if !keep_proto {
            headers.insert(
                X_FORWARDED_PROTO.clone(),
                HeaderValue::from_static(edge_scheme.unwrap_or(self.opts.scheme)),
            );
        }
        if !headers.contains_key(header::HOST) {
            // HTTP/2 carries it as `:authority` (in the URI); an HTTP/1.0 client may omit
            // it. Upstream HTTP/1.1 requires one.
            let host = parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
                .unwrap_or_else(|| HeaderValue::from_static("localhost"));
            headers.insert(header::HOST, host);
        }
        let path_and_query = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
        let mut request = Request::new(body.body);
        *request.method_mut() = parts.method;
        *request.uri_mut() = http::Uri::from(path_and_query);
        *request.version_mut() = Version::HTTP_11;
        *request.headers_mut() = headers;
        // A held body is kept for a second attempt; a streamed one cannot be.
        let spare = may_retry.then(|| copy_request(&request)).flatten();
        let proxy_header = set.options().send_proxy.then(|| ProxyHeaderFor {
            client: peer,
            local: match edge_scheme {
                Some("https") => self.opts.listen_https,
                _ => self.opts.listen_http,
            }
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0))),
        });
        let mut next = Some(request);
        let mut tried: Vec<u64> = Vec::new();
        let mut last_error = String::from("no healthy server");
        let mut last_failure: Option<Failure> = None;
        loop {
            let stuck = tried.is_empty().then_some(sticky.as_deref()).flatten();
            let picked = match stuck.and_then(|name| set.pick_named(name)) {
                Some(s) => Ok(s.clone()),
                None => self.pool.pick_queued(key, &tried).await,
            };
            let server = match picked {
                Ok(p) => p,
                Err(NoServer::QueueFull) => {
                    warn!(
                        pool = self.pool.name(),
                        "every server is at its connection limit and the queue wait ran out"
                    );
                    return self.local_response(
                        StatusCode::SERVICE_UNAVAILABLE,
                        &format!("{} pool: every server is busy", self.pool.name()),
                    );
                }
                Err(NoServer::Down) => {
                    // No server left: 503 when none was tried (or this host is what
                    // failed), the last failure's status otherwise.
                    let status =
                        last_failure.map_or(StatusCode::SERVICE_UNAVAILABLE, Failure::status);
                    warn!(pool = self.pool.name(), error = %last_error, "no server could take the request");
                    return self.local_response(
                        status,
                        &format!("{} pool: {last_error}", self.pool.name()),
                    );
                }
            };
            tried.push(server.id);
            let Some(request) = next
                .take()
                .or_else(|| spare.as_ref().and_then(copy_request))
            else {
                return self.local_response(StatusCode::BAD_GATEWAY, &last_error);
            };
            server.requests.inc();
            let in_flight = server.begin();
            let started = tokio::time::Instant::now();
            let sent = server.conns.send(
                server.addr,
                server.tls.as_ref(),
                request,
                self.opts.connect_timeout,
                proxy_header,
            );
            let (failure, why) = match tokio::time::timeout(self.opts.response_timeout, sent).await
            {
                Ok(Ok(mut resp)) => {
                    server.observe_latency(started.elapsed());
                    if resp.status().is_server_error() {
                        server.observe(Some(&format!("status {}", resp.status())), set.options());
                    } else {
                        server.observe(None, set.options());
                    }
                    resp.body_mut().hold(in_flight);
                    strip_hop_by_hop(resp.headers_mut());
                    prepend_served_by(resp.headers_mut(), &self.served_by);
                    if let Some(name) = &set.options().sticky_cookie
                        && sticky.as_deref() != Some(server.name.as_str())
                    {
                        set_sticky_cookie(resp.headers_mut(), name, &server.name);
                    }
                    self.count(resp.status());
                    if self.opts.access_log.is_some() {
                        resp.extensions_mut().insert(Upstream(server.name.clone()));
                    }
                    return resp.map(ProxyBody::Upstream);
                }
                Ok(Err(f)) => {
                    // A request that never left can go out again as it is.
                    next = f.request;
                    (
                        match (f.connect, f.local) {
                            (true, true) => Failure::Local,
                            (true, false) => Failure::Connect,
                            (false, _) => Failure::Exchange,
                        },
                        f.why,
                    )
                }
                Err(_) => (
                    Failure::Timeout,
                    format!("no response within {:?}", self.opts.response_timeout),
                ),
            };
            // A streamed body that broke on the client's side is the client's fault:
            // it gets the status of it, and the server is not blamed.
            if let Some(fault) = body.fault.as_ref().and_then(|f| f.get()) {
                debug!(server = %server.name, error = %why, "the client's request body failed on its way upstream");
                return self.local_response(fault.status(), fault.text());
            }
            last_failure = Some(failure);
            if failure != Failure::Local {
                server.failures.inc();
            }
            if failure == Failure::Exchange {
                server.observe(Some(&why), set.options());
            }
            last_error = format!("{}: {why}", server.name);
            if failure.takes_server_out() {
                server.mark_down(&why);
            }
            if failure.retry_safe(may_repeat) || next.is_some() {
                self.retries.inc();
                debug!(server = %server.name, error = %why, "upstream failed; trying the next server");
                continue;
            }
            warn!(server = %server.name, error = %why, "upstream failed; the request may have reached it, so it is not retried");
            return self.local_response(failure.status(), &last_error);
        }
    }
}

/// The request's key for `balance = "hash"`.
fn hash_key(on: &HashOn, headers: &HeaderMap, uri: &http::Uri, peer: SocketAddr) -> u64 {
    match on {
        HashOn::Source => match peer.ip() {
            std::net::IpAddr::V4(a) => hash(&a.octets()),
            std::net::IpAddr::V6(a) => hash(&a.octets()),
        },
        HashOn::Uri => hash(
            uri.path_and_query()
                .map_or(uri.path(), |p| p.as_str())
                .as_bytes(),
        ),
        HashOn::Header(name) => hash(
            headers
                .get(name.as_str())
                .map_or(&b""[..], |v| v.as_bytes()),
        ),
        HashOn::Cookie(name) => hash(cookie(headers, name).unwrap_or_default().as_bytes()),
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"'))
}

/// Removes cookie `name` from the request's `Cookie` headers and returns its value.
fn take_cookie(headers: &mut HeaderMap, name: &str) -> Option<String> {
    let value = cookie(headers, name)?.to_string();
    let rest: Vec<String> = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|pair| !pair.is_empty() && pair.split_once('=').is_none_or(|(k, _)| k != name))
        .map(str::to_owned)
        .collect();
    headers.remove(header::COOKIE);
    if !rest.is_empty()
        && let Ok(v) = HeaderValue::from_str(&rest.join("; "))
    {
        headers.insert(header::COOKIE, v);
    }
    Some(value)
}

/// Tells the client which server to come back to.
fn set_sticky_cookie(headers: &mut HeaderMap, name: &str, server: &str) {
    if let Ok(v) =
        HeaderValue::from_str(&format!("{name}={server}; Path=/; HttpOnly; SameSite=Lax"))
    {
        headers.append(header::SET_COOKIE, v);
    }
}

/// A copy of a request for a second attempt: possible when its body is held (as
/// `Bytes`, so copying is cheap), not when it streams.
fn copy_request(r: &Request<RequestBody>) -> Option<Request<RequestBody>> {
    let Either::Left(body) = r.body() else {
        return None;
    };
    let mut c = Request::new(Either::Left(body.clone()));
    *c.method_mut() = r.method().clone();
    *c.uri_mut() = r.uri().clone();
    *c.version_mut() = r.version();
    *c.headers_mut() = r.headers().clone();
    Some(c)
}

/// How an attempt at one server failed, and so what may happen next: the failure
/// carries the decision (retry elsewhere or not, take the server out or not).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// No connection could be made: the request never left this proxy.
    Connect,
    /// No connection could be made because this host ran out of something (file
    /// descriptors, ephemeral ports, memory): the request never left, and the server
    /// is not to blame.
    Local,
    /// The exchange broke after the request may have reached the server.
    Exchange,
    /// No response headers within the timeout: the server may be working on it.
    Timeout,
}

impl Failure {
    /// Whether the request may go to another server.
    fn retry_safe(self, idempotent: bool) -> bool {
        match self {
            Failure::Connect | Failure::Local => true,
            Failure::Exchange => idempotent,
            Failure::Timeout => false,
        }
    }

    /// Whether the server leaves the rotation at once (active checks bring it back).
    fn takes_server_out(self) -> bool {
        self == Failure::Connect
    }

    /// The status the client gets when nothing else can be tried.
    fn status(self) -> StatusCode {
        match self {
            Failure::Timeout => StatusCode::GATEWAY_TIMEOUT,
            Failure::Local => StatusCode::SERVICE_UNAVAILABLE,
            Failure::Connect | Failure::Exchange => StatusCode::BAD_GATEWAY,
        }
    }
}

/// Appends the peer to `X-Forwarded-For`, folding several incoming lines into one.
fn append_forwarded_for(headers: &mut HeaderMap, peer: SocketAddr) {
    let mut value = String::new();
    for line in headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
    {
        value.push_str(line);
        value.push_str(", ");
    }
    value.push_str(&peer.ip().to_string());
    if let Ok(v) = HeaderValue::from_str(&value) {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_removed_with_those_connection_names() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::HOST, HeaderValue::from_static("www.foobar.com"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key(header::HOST));
    }

    #[test]
    fn served_by_lists_the_path_from_the_edge_down() {
        let mut h = HeaderMap::new();
        h.insert(X_SERVED_BY.clone(), HeaderValue::from_static("app1"));
        prepend_served_by(&mut h, &HeaderValue::from_static("web2"));
        prepend_served_by(&mut h, &HeaderValue::from_static("lb1"));
        assert_eq!(
            h.get(&X_SERVED_BY).map(|v| v.as_bytes()),
            Some(&b"lb1, web2, app1"[..])
        );
    }

    #[test]
    fn forwarded_for_folds_every_line() {
        let mut h = HeaderMap::new();
        h.append(
            X_FORWARDED_FOR.clone(),
            HeaderValue::from_static("10.0.0.1"),
        );
        h.append(
            X_FORWARDED_FOR.clone(),
            HeaderValue::from_static("10.0.0.2"),
        );
        append_forwarded_for(&mut h, SocketAddr::from(([127, 0, 0, 9], 1)));
        assert_eq!(h.get_all(&X_FORWARDED_FOR).iter().count(), 1);
        assert_eq!(
            h.get(&X_FORWARDED_FOR).map(|v| v.as_bytes()),
            Some(&b"10.0.0.1, 10.0.0.2, 127.0.0.9"[..])
        );
    }

    #[test]
    fn connection_cannot_strip_the_headers_the_proxy_manages() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("host, X-Forwarded-For, x-other"),
        );
        h.insert(header::HOST, HeaderValue::from_static("www.foobar.com"));
        h.insert(
            X_FORWARDED_FOR.clone(),
            HeaderValue::from_static("10.0.0.1"),
        );
        h.insert("x-other", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert!(h.contains_key(header::HOST) && h.contains_key(&X_FORWARDED_FOR));
        assert!(!h.contains_key("x-other"));
    }

    #[test]
    fn forwarded_for_is_appended() {
        let mut h = HeaderMap::new();
        append_forwarded_for(&mut h, SocketAddr::from(([127, 0, 0, 9], 1)));
        append_forwarded_for(&mut h, SocketAddr::from(([127, 0, 1, 1], 1)));
        assert_eq!(
            h.get(&X_FORWARDED_FOR).map(|v| v.as_bytes()),
            Some(&b"127.0.0.9, 127.0.1.1"[..])
        );
    }

    #[test]
    fn failures_decide_retries_and_blame() {
        // (failure, idempotent request) -> (retry elsewhere, take the server out, status)
        for (f, idem, retry, out, status) in [
            (Failure::Connect, false, true, true, 502),
            (Failure::Connect, true, true, true, 502),
            (Failure::Local, false, true, false, 503),
            (Failure::Local, true, true, false, 503),
            (Failure::Exchange, false, false, false, 502),
            (Failure::Exchange, true, true, false, 502),
            (Failure::Timeout, true, false, false, 504),
            (Failure::Timeout, false, false, false, 504),
        ] {
            assert_eq!(f.retry_safe(idem), retry, "{f:?} idempotent={idem}");
            assert_eq!(f.takes_server_out(), out, "{f:?}");
            assert_eq!(f.status().as_u16(), status, "{f:?}");
        }
    }

    #[test]
    fn only_safe_methods_are_repeated() {
        assert!(idempotent(&Method::GET));
        assert!(idempotent(&Method::PUT));
        assert!(!idempotent(&Method::POST));
        assert!(!idempotent(&Method::PATCH));
    }
}
