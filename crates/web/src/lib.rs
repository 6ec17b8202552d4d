//! The web node: serves the site's static files and reverse-proxies everything else to
//! the app nodes, with the same pool, balancing and health checks as the lb (one
//! implementation, in `hastack-proxy`).
//!
//! Routing is nginx's `try_files $uri @app`: a path that names a static file is served
//! from memory; any other goes to the application. `/healthz` on the service port is
//! answered here, so the lb's health check sees this node and not an app behind it.

pub mod files;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tracing::info;

use hastack_config::{Role, Topology};
use hastack_proxy::{HealthCheck, Pool, Proxy, ProxyBody, ProxyOptions};
use hastack_runtime::{Admin, BindError, bind_tcp, steady_probe};

pub use files::StaticSite;

/// Why a web node could not run.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    /// The name is not a web node of the topology.
    #[error("`{0}` is not a web node of this topology")]
    NotAWeb(String),
    /// A socket could not be bound.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// The configured site directory could not be read.
    #[error(transparent)]
    Site(#[from] files::LoadError),
}

struct Web {
    site: StaticSite,
    proxy: Arc<Proxy>,
    health_json: String,
    static_hits: Counter,
}

impl Web {
    async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> Response<ProxyBody> {
        let path = req.uri().path();
        if path == "/healthz" {
            let mut resp = Response::new(Either::Right(Full::new(Bytes::from(
                self.health_json.clone(),
            ))));
            resp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            self.proxy.stamp(&mut resp);
            return resp;
        }
        if req.method() == Method::GET || req.method() == Method::HEAD {
            if let Some(file) = self.site.get(path) {
                self.static_hits.inc();
                let resp = files::respond(req.method(), req.headers(), file);
                let mut resp = resp.map(|b| Either::Right(Full::new(b)));
                self.proxy.stamp(&mut resp);
                return resp;
            }
        } else if self.site.get(path).is_some() {
            return self.proxy.local_response(
                StatusCode::METHOD_NOT_ALLOWED,
                "static files answer GET and HEAD only",
            );
        }
        self.proxy.forward(req, peer).await
    }
}

/// Runs web node `name` until `shutdown` turns true.
pub async fn run(
    topo: &Topology,
    name: &str,
    shutdown: watch::Receiver<bool>,
) -> Result<(), WebError> {
    let node = topo
        .node(name)
        .filter(|n| n.role == Role::Web)
        .ok_or_else(|| WebError::NotAWeb(name.to_string()))?;
    let site = match &topo.web.root {
        Some(root) => StaticSite::load(root)?,
        None => StaticSite::built_in(),
    };
    let mut registry = Registry::default();
    let pool = Pool::new("app", &topo.endpoints(Role::App), &mut registry);
    let mut opts = ProxyOptions::new(name);
    opts.trust_forwarded_proto = true;
    let proxy = Proxy::new(opts, pool.clone(), &mut registry);
    let static_hits = Counter::default();
    registry.register(
        "hastack_static_responses",
        "Responses served from static files",
        static_hits.clone(),
    );

    let service_addr = SocketAddr::from((node.address, topo.ports.web));
    let listener = bind_tcp(service_addr, "http", false)?;
    let admin_listener = bind_tcp(topo.admin_addr(node), "admin", false)?;

    // `/healthz` on the service port is what the lb checks: fixed, cheap, no upstreams.
    let health_json =
        serde_json::json!({ "node": name, "role": "web", "static_files": site.len() }).to_string();
    let probe = {
        let pool = pool.clone();
        let name = name.to_string();
        let files = site.len();
        steady_probe(move || {
            serde_json::json!({
                "node": name,
                "role": "web",
                "static_files": files,
                "upstreams": pool.health_json(),
            })
        })
    };
    pool.spawn_health_checks(HealthCheck::from(&topo.health), shutdown.clone());
    let admin = Admin::new(probe, registry, None);
    let admin_task = tokio::spawn(admin.serve(admin_listener, shutdown.clone()));
    let web = Arc::new(Web {
        site,
        proxy,
        health_json,
        static_hits,
    });
    info!(node = name, addr = %service_addr, files = web.site.len(), "web ready");
    hastack_runtime::serve_http1(
        listener,
        move |req, peer| {
            let web = web.clone();
            web.handle(req, peer)
        },
        shutdown,
    )
    .await;
    let _ = admin_task.await;
    Ok(())
}
