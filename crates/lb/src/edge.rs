//! What the lb adds at the edge, each a [`Layer`] of the VIP's chain in front of the
//! proxy: the per-client request rate ([`RateLimit`], HAProxy's `http-request deny`
//! with a stick table), the redirect of plain HTTP to HTTPS ([`RedirectToHttps`],
//! `http-request redirect scheme https`) and HSTS on HTTPS answers ([`Hsts`]).
//!
//! Plain HTTP goes through `RateLimit`, then `RedirectToHttps` when `tls.redirect_http`
//! is on; HTTPS through `Hsts` when `tls.hsts` is on, then `RateLimit`, so a 429 over
//! HTTPS carries HSTS too.

use std::sync::Arc;
use std::time::Instant;

use hastack_proxy::{Call, Layer, Next, Reply};
use http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use prometheus_client::metrics::counter::Counter;

use crate::rate::RateLimiter;

/// Answers 429 with `Retry-After` to a client over its request rate; nothing goes
/// upstream then.
pub(crate) struct RateLimit {
    pub(crate) limiter: Arc<RateLimiter>,
    /// Requests answered 429.
    pub(crate) limited: Counter,
}

impl Layer for RateLimit {
    fn handle(self: Arc<Self>, call: Call, next: Next) -> Reply {
        let Err(wait) = self.limiter.admit(call.peer.ip(), Instant::now()) else {
            return next.run(call);
        };
        self.limited.inc();
        let mut resp = next.proxy().local_response(
            StatusCode::TOO_MANY_REQUESTS,
            "too many requests from your address; retry after the time in Retry-After",
        );
        let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        Box::pin(std::future::ready(resp))
    }
}

/// Answers every request with a permanent redirect (308, which keeps the method and
/// body) to the same path over HTTPS.
pub(crate) struct RedirectToHttps {
    /// The HTTPS port of the VIP.
    pub(crate) port: u16,
    /// The site's name, for a request without a usable `Host`.
    pub(crate) site: String,
}

impl Layer for RedirectToHttps {
    fn handle(self: Arc<Self>, call: Call, next: Next) -> Reply {
        let location = https_location(call.req.headers(), call.req.uri(), &self.site, self.port);
        let mut resp = next.proxy().local_response(
            StatusCode::PERMANENT_REDIRECT,
            "this site is served over HTTPS",
        );
        if let Ok(v) = HeaderValue::from_str(&location) {
            resp.headers_mut().insert(header::LOCATION, v);
        }
        Box::pin(std::future::ready(resp))
    }
}

/// Where a plain-HTTP request is sent: the host it named (without its port), else the
/// site's name; the HTTPS port unless it is 443; the same path and query.
fn https_location(headers: &HeaderMap, uri: &Uri, site: &str, port: u16) -> String {
    let authority = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.parse::<http::uri::Authority>().ok());
    let host = authority.as_ref().map_or(site, |a| a.host());
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    match port {
        443 => format!("https://{host}{path}"),
        p => format!("https://{host}:{p}{path}"),
    }
}

/// One year, the max-age HSTS preload lists ask for.
const HSTS: HeaderValue = HeaderValue::from_static("max-age=31536000");

/// Adds `Strict-Transport-Security` to every answer.
pub(crate) struct Hsts;

impl Layer for Hsts {
    fn handle(self: Arc<Self>, call: Call, next: Next) -> Reply {
        Box::pin(async move {
            let mut resp = next.run(call).await;
            resp.headers_mut()
                .insert(header::STRICT_TRANSPORT_SECURITY, HSTS);
            resp
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn location(host: Option<&str>, uri: &str, port: u16) -> String {
        let mut headers = HeaderMap::new();
        if let Some(h) = host {
            headers.insert(header::HOST, HeaderValue::from_str(h).expect("host"));
        }
        https_location(&headers, &uri.parse().expect("uri"), "www.foobar.com", port)
    }

    #[test]
    fn the_redirect_keeps_host_path_and_query_and_names_the_https_port() {
        assert_eq!(
            location(Some("www.foobar.com:8080"), "/a/b?c=1", 8443),
            "https://www.foobar.com:8443/a/b?c=1",
            "the Host's own port is the plain one: it is replaced"
        );
        assert_eq!(
            location(Some("example.org"), "/", 443),
            "https://example.org/",
            "443 is not written"
        );
    }

    #[test]
    fn a_missing_or_unusable_host_redirects_to_the_site() {
        assert_eq!(location(None, "/x", 443), "https://www.foobar.com/x");
        assert_eq!(
            location(Some("bad host/with path"), "/x", 443),
            "https://www.foobar.com/x"
        );
    }
}
