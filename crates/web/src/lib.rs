//! The web node: serves the site's static files and reverse-proxies everything else to
//! the app nodes, with the same pool, balancing and health checks as the lb (one
//! implementation, in `hastack-proxy`).
//!
//! A request goes down the node's chain of layers (`hastack_proxy::phase`), one module
//! each: [`files::Static`] answers the site's files (nginx's `try_files $uri @app`),
//! [`files::ErrorPages`] puts the site's pages in place of the app tier's errors,
//! [`cache::Microcache`] keeps the app's GET answers a short time, [`compress::Compress`]
//! compresses them, and the proxy at the end sends what is left to an app node.
//! `/healthz` on the service port is answered before the chain, so the lb's health
//! check sees this node and not an app behind it.
//!
//! With `tls.internal`, the service port speaks TLS and takes only clients with a
//! certificate of the internal CA (the lbs), and the app nodes are reached the same
//! way. With `tls.mode = "passthrough"` the web node also terminates the site's HTTPS
//! itself, on `ports.web_https`, for the connections the lbs pass through.

pub mod cache;
pub mod compress;
pub mod files;

use std::net::SocketAddr;
use std::sync::Arc;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tracing::{info, warn};

use hastack_config::{Role, TlsMode, Topology};
use hastack_proxy::{Chain, HealthCheck, Layer, Pool, PoolTls, Proxy, ProxyBody, ProxyOptions};
use hastack_runtime::metrics::TrafficCounter;
use hastack_runtime::{Admin, BindError, bind_tcp, steady_probe};
use hastack_status::health::{Health, WebHealth};
use hastack_tls::NodeTls;

pub use files::{SiteOptions, StaticSite};

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
    /// An error page is not a file of the site.
    #[error(transparent)]
    ErrorPage(#[from] files::MissingPage),
    /// The certificates cannot be used.
    #[error(transparent)]
    Tls(#[from] hastack_tls::TlsError),
}

struct Web {
    chain: Chain,
    health_json: String,
    traffic: Arc<TrafficCounter>,
}

impl Web {
    /// Answers one request; `edge` is the scheme of a client connected directly (TLS
    /// passthrough), `None` for requests from the lb tier.
    async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: SocketAddr,
        edge: Option<&'static str>,
    ) -> Response<ProxyBody> {
        if req.uri().path() == "/healthz" {
            let mut resp = Response::new(ProxyBody::full(self.health_json.clone()));
            resp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            self.chain.proxy().stamp(&mut resp);
            return resp;
        }
        let resp = self.chain.handle(req, peer, edge).await;
        self.traffic.count(resp.status().as_u16());
        resp
    }
}

/// The web node's layers, outermost first, and its microcache when it is on (for the
/// admin port's purge).
pub struct Layers {
    /// The chain's layers.
    pub layers: Vec<Arc<dyn Layer>>,
    /// The microcache among them.
    pub cache: Option<Arc<cache::Microcache>>,
    /// The static files among them (a reload replaces the site).
    pub files: Arc<files::Static>,
}

/// The web node's layers in front of `proxy`, as `[web]` asks.
pub fn layers(
    web: &hastack_config::WebSettings,
    site: StaticSite,
    proxy: &Arc<Proxy>,
    registry: &mut Registry,
) -> Result<Layers, WebError> {
    let static_hits = Counter::default();
    registry.register(
        "hastack_static_responses",
        "Responses served from static files",
        static_hits.clone(),
    );
    let mut layers: Vec<Arc<dyn Layer>> = Vec::new();
    let pages = (!web.error_pages.is_empty())
        .then(|| files::ErrorPages::new(&web.error_pages, &site))
        .transpose()?;
    let files = files::Static::new(site, proxy.clone(), static_hits);
    layers.push(files.clone());
    if let Some(p) = pages {
        layers.push(p);
    }
    let cache = (!web.cache.ttl.is_zero())
        .then(|| cache::Microcache::new(web.cache.clone(), web.compress, registry));
    if let Some(c) = &cache {
        layers.push(c.clone());
    }
    if web.compress {
        layers.push(compress::Compress::new(web.compress_min_bytes, registry));
    }
    Ok(Layers {
        layers,
        cache,
        files,
    })
}

/// Runs web node `name` until `shutdown` turns true.
/// Reads the topology file again, for a reload.
pub type Loader = Arc<dyn Fn() -> Result<Topology, String> + Send + Sync>;

/// Runs web node `name` until `shutdown` turns true.
pub async fn run(
    topo: &Topology,
    name: &str,
    shutdown: watch::Receiver<bool>,
) -> Result<(), WebError> {
    run_with(topo, name, shutdown, None).await
}

/// Like [`run`]; each message on the receiver (SIGHUP, `hastack reload`, the end of
/// `hastack deploy`) reads the file again with the loader, takes its app nodes into the
/// pool (a new one once its health checks pass, a removed one gets no new request;
/// those it has finish) and reads `[web] root` again from disk. Nothing else of the
/// file is applied before a restart.
pub async fn run_with(
    topo: &Topology,
    name: &str,
    shutdown: watch::Receiver<bool>,
    reloads: Option<(Loader, tokio::sync::mpsc::UnboundedReceiver<()>)>,
) -> Result<(), WebError> {
    let node = topo
        .node(name)
        .filter(|n| n.role == Role::Web)
        .ok_or_else(|| WebError::NotAWeb(name.to_string()))?;
    let site_opts = SiteOptions::of(&topo.web);
    let site = match &topo.web.root {
        Some(root) => StaticSite::load(root, &site_opts)?,
        None => StaticSite::built_in(&site_opts),
    };
    let mut registry = Registry::default();
    let passthrough = topo.tls.mode == TlsMode::Passthrough && topo.https_port.is_some();
    let mut tls = if topo.tls.internal || passthrough {
        Some(NodeTls::open(topo, node, &mut registry)?)
    } else {
        None
    };
    let (internal, pool_tls) = match (&tls, topo.tls.internal) {
        (Some(t), true) => (
            Some(t.internal_acceptor()?),
            Some(PoolTls {
                config: t.internal_client()?,
                metrics: t.metrics().clone(),
            }),
        ),
        _ => (None, None),
    };
    let edge = match (&mut tls, passthrough) {
        (Some(t), true) => {
            let addr = SocketAddr::from((node.address, topo.ports.web_https));
            Some((bind_tcp(addr, "https", false)?, t.site_acceptor(topo)?))
        }
        _ => None,
    };
    if let Some(t) = &tls {
        t.spawn_reloader(shutdown.clone());
    }
    let opts = hastack_proxy::PoolOptions {
        weights: hastack_proxy::PoolOptions::weights_of(topo, Role::App),
        ..Default::default()
    };
    let pool = Pool::with_options(
        "app",
        &topo.endpoints(Role::App),
        pool_tls,
        opts,
        &mut registry,
    );
    let mut opts = ProxyOptions::new(name).with_http(&topo.http);
    opts.trust_forwarded_proto = true;
    opts.access_log = hastack_proxy::access_log::open_for(topo, name, shutdown.clone());
    let proxy = Proxy::new(opts, pool.clone(), &mut registry);
    let files = site.len();
    let Layers {
        layers,
        cache,
        files: static_files,
    } = layers(&topo.web, site, &proxy, &mut registry)?;

    let service_addr = SocketAddr::from((node.address, topo.ports.web));
    let door = hastack_runtime::front_door::FrontDoor::for_topology(&topo.http, &mut registry);
    let listener = bind_tcp(service_addr, "http", false)?;
    let admin_listener = bind_tcp(topo.admin_addr(node), "admin", false)?;

    // `/healthz` on the service port is what the lb checks: fixed, cheap, no upstreams.
    let health_json =
        serde_json::json!({ "node": name, "role": "web", "static_files": files }).to_string();
    let traffic = Arc::new(TrafficCounter::default());
    let probe = {
        let pool = pool.clone();
        let traffic = traffic.clone();
        let name = name.to_string();
        steady_probe(move || {
            Health::Web(WebHealth {
                node: name.clone(),
                static_files: files,
                upstreams: pool.upstreams(),
                traffic: traffic.get(),
            })
        })
    };
    pool.spawn_health_checks(HealthCheck::from(&topo.health), shutdown.clone());
    if let Some((load, mut requests)) = reloads {
        let pool = pool.clone();
        tokio::spawn(async move {
            while requests.recv().await.is_some() {
                let t = match load() {
                    Ok(t) => t,
                    Err(e) => {
                        warn!(error = %e, "reload: the file does not load; nothing changed");
                        continue;
                    }
                };
                let opts = hastack_proxy::PoolOptions {
                    weights: hastack_proxy::PoolOptions::weights_of(&t, Role::App),
                    ..Default::default()
                };
                let changes = pool.update(&t.endpoints(Role::App), opts);
                info!(changes = ?changes, "reload: the app nodes of the file");
                // The site's files as they are on disk now (a deploy's new version);
                // the built-in site is part of the binary.
                if let Some(root) = t.web.root.clone() {
                    let opts = SiteOptions::of(&t.web);
                    let loaded =
                        tokio::task::spawn_blocking(move || StaticSite::load(&root, &opts)).await;
                    match loaded {
                        Ok(Ok(site)) => {
                            info!(files = site.len(), "reload: the site's files read again");
                            static_files.replace(site);
                        }
                        Ok(Err(e)) => {
                            warn!(error = %e, "reload: the site's files do not load; the old ones stay")
                        }
                        Err(e) => warn!(error = %e, "reload: reading the site's files failed"),
                    }
                }
            }
        });
    }
    let mut admin = Admin::new(probe, registry);
    if let Some(cache) = cache {
        // POST /cache/purge?prefix=/api/ drops the answers under a path ("/" or none: all).
        admin = admin.with_action(
            "/cache/purge",
            Arc::new(move |query| {
                let prefix = query
                    .and_then(|q| serde_urlencoded::from_str::<Vec<(String, String)>>(q).ok())
                    .and_then(|pairs| pairs.into_iter().find(|(k, _)| k == "prefix"))
                    .map_or_else(|| "/".to_string(), |(_, v)| v);
                let purged = cache.purge(&prefix);
                info!(prefix, purged, "microcache purged");
                (
                    StatusCode::OK,
                    serde_json::json!({ "prefix": prefix, "purged": purged }).to_string(),
                )
            }),
        );
    }
    let admin_task = tokio::spawn(admin.serve(admin_listener, shutdown.clone()));
    let web = Arc::new(Web {
        chain: Chain::new(proxy, layers),
        health_json,
        traffic,
    });
    info!(node = name, addr = %service_addr, files, tls = internal.is_some(), "web ready");
    let edge_task = edge.map(|(listener, acceptor)| {
        let web = web.clone();
        let shutdown = shutdown.clone();
        info!(node = name, addr = ?listener.local_addr().ok(), "serving clients' HTTPS (passthrough)");
        // The lbs relay these connections with a PROXY v2 header: the client's
        // address is the peer (X-Forwarded-For), not the lb's.
        let serving = hastack_runtime::Serving {
            tls: Some(acceptor),
            proxy_header: hastack_runtime::ProxyHeader::Always,
            door: door.clone(),
            limits: None,
        };
        tokio::spawn(hastack_runtime::serve_with(
            listener,
            serving,
            move |req, peer| {
                let web = web.clone();
                web.handle(req, peer, Some("https"))
            },
            shutdown,
        ))
    });
    // With `[lb] send_proxy`, the lbs open every connection here with a PROXY v2
    // header naming the client (LOCAL for their health checks).
    let serving = hastack_runtime::Serving {
        tls: internal,
        proxy_header: if topo.lb.send_proxy {
            hastack_runtime::ProxyHeader::Always
        } else {
            hastack_runtime::ProxyHeader::Never
        },
        door,
        limits: None,
    };
    hastack_runtime::serve_with(
        listener,
        serving,
        move |req, peer| {
            let web = web.clone();
            web.handle(req, peer, None)
        },
        shutdown,
    )
    .await;
    if let Some(t) = edge_task {
        let _ = t.await;
    }
    let _ = admin_task.await;
    Ok(())
}
