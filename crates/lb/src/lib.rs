//! The load balancer node: VRRP decides whether this node holds the VIP; while it does,
//! it listens on VIP:port and balances requests over the healthy web nodes.
//!
//! VRRP runs on a thread of its own (`hastack_vrrp::runner::start`), so a proxy
//! saturated by traffic cannot delay adverts. In loopback mode adverts travel in UDP
//! and holding the VIP means listening on the 127.x VIP; in isolated and hosts modes
//! they are IP protocol 112 and the master also adds the VIP to its interface and
//! announces it with gratuitous ARP.
//!
//! The lb's own health is tracked: while its pool has no healthy web node, it is in
//! FAULT and hands the VIP to a peer that can serve; a VIP it cannot listen on does the
//! same. `/healthz` answers 503 then, with the reason.
//!
//! On the VIP the lb serves HTTP and HTTPS. HTTPS is terminated here (rustls; HTTP/2 or
//! HTTP/1.1 by ALPN; SNI picks the certificate) or, in `tls.mode = "passthrough"`,
//! routed undecrypted by its SNI to a web node's HTTPS port ([`passthrough`]). With
//! `tls.internal`, the lb reaches the web nodes over TLS with its own certificate.
//!
//! The VIP listeners are opened with `SO_REUSEPORT`, so during a hand-over the new master
//! can bind before the old one has let go; the old one stops accepting and drains its
//! open requests. The admin port (`/healthz`, `/metrics`) is on the node's own address,
//! so a backup answers too.

use std::net::{SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub mod control;
mod edge;
mod passthrough;
pub mod rate;
mod stats;

use hastack_config::{Mode, Role, TlsMode, Topology};
use hastack_proxy::{Chain, HealthCheck, Layer, Pool, PoolTls, Proxy, ProxyOptions};
use hastack_runtime::{Admin, BindError, HealthProbe, HealthReport, bind_tcp};
use hastack_status::health::LbHealth;
use hastack_tls::{Acceptor, NodeTls, TlsError};
use hastack_vrrp::auth::{Key, KeyError};
use hastack_vrrp::{Health, Network, Setup, StartError, State, Stats, VipHook};
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tracing::info;

/// Why an lb node could not run.
#[derive(Debug, thiserror::Error)]
pub enum LbError {
    /// The name is not an lb node of the topology.
    #[error("`{0}` is not an lb node of this topology")]
    NotAnLb(String),
    /// A socket could not be bound.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// VRRP could not start (its sockets, the interface, the netlink socket).
    #[error(transparent)]
    Vrrp(#[from] StartError),
    /// `vrrp.authenticate` is on and the key cannot be used.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The certificates cannot be used.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The control socket could not be made.
    #[error("control socket {path}: {source}")]
    Control {
        /// The socket.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// Where the VRRP key of a topology lives: `<state_dir>/secrets/vrrp.key`.
pub fn vrrp_key_path(topo: &Topology) -> PathBuf {
    topo.state_dir.join("secrets").join("vrrp.key")
}

/// What the lb does with HTTPS on the VIP.
#[derive(Clone)]
enum Https {
    /// Decrypts it and balances the requests, like HTTP.
    Terminate(Acceptor),
    /// Routes each connection by SNI to a web node's HTTPS port, undecrypted.
    Passthrough(Arc<passthrough::Passthrough>),
}

/// How the lb answers on the VIP: plain HTTP, HTTPS, and the options of both.
#[derive(Clone)]
struct Site {
    http: SocketAddr,
    https: Option<(SocketAddr, Https)>,
    /// What plain HTTP goes through: the rate limit, the redirect to HTTPS ([`edge`]).
    http_chain: Chain,
    /// What decrypted HTTPS goes through: HSTS, the rate limit.
    https_chain: Chain,
    /// The strict front door of the VIP listeners.
    door: Arc<hastack_runtime::front_door::FrontDoor>,
    /// Open-connection limits of the VIP listeners (`lb.max_conn`, `max_conn_per_client`).
    limits: Arc<hastack_runtime::conn_limits::ConnLimits>,
    /// Proxies in front (`lb.front_proxies`) whose connections may start with a
    /// PROXY v2 header.
    front_proxies: hastack_runtime::ProxyHeader,
}

impl Site {
    /// The chains of both listeners in front of `proxy`, as `[tls]` and `[lb]` ask.
    fn chains(
        topo: &Topology,
        proxy: Arc<Proxy>,
        rate: edge::RateLimit,
        https_port: Option<u16>,
    ) -> (Chain, Chain) {
        let rate: Arc<dyn Layer> = Arc::new(rate);
        let mut http = vec![rate.clone()];
        if let (Some(port), true) = (https_port, topo.tls.redirect_http) {
            http.push(Arc::new(edge::RedirectToHttps {
                port,
                site: topo.site.clone(),
            }));
        }
        let mut https: Vec<Arc<dyn Layer>> = Vec::new();
        if topo.tls.hsts {
            https.push(Arc::new(edge::Hsts));
        }
        https.push(rate);
        (Chain::new(proxy.clone(), http), Chain::new(proxy, https))
    }
}

/// Opens and closes the VIP listeners as VRRP decides. Called on the VRRP thread; the
/// listeners and their connections live on the node's main runtime (`rt`).
struct VipListener {
    site: Arc<Site>,
    rt: tokio::runtime::Handle,
    stop: Option<watch::Sender<bool>>,
    /// The VIP servers, kept so a stopping node can let them drain.
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl VipListener {
    /// Waits until the last VIP listeners have drained their open requests.
    async fn drained(mut self) {
        self.release();
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
    }
}

impl VipHook for VipListener {
    fn take(&mut self) -> std::io::Result<()> {
        if self.stop.is_some() {
            return Ok(());
        }
        let as_io = |e: BindError| std::io::Error::new(e.source.kind(), e.to_string());
        // Registered with the main runtime's reactor, not the VRRP thread's.
        let (http, https) = {
            let _rt = self.rt.enter();
            let http = bind_tcp(self.site.http, "vip", true).map_err(as_io)?;
            let https = match &self.site.https {
                Some((addr, _)) => Some(bind_tcp(*addr, "vip https", true).map_err(as_io)?),
                None => None,
            };
            (http, https)
        };
        let (tx, rx) = watch::channel(false);
        self.tasks.retain(|t| !t.is_finished());
        let site = self.site.clone();
        let vip = site.http;
        let door = site.door.clone();
        let limits = Some(site.limits.clone());
        let front_proxies = site.front_proxies.clone();
        let stop = rx.clone();
        self.tasks.push(self.rt.spawn(async move {
            info!(%vip, "listening on the VIP");
            let handler = move |req, peer| {
                let site = site.clone();
                async move { site.http_chain.handle(req, peer, Some("http")).await }
            };
            let serving = hastack_runtime::Serving {
                door,
                limits,
                proxy_header: front_proxies,
                ..Default::default()
            };
            hastack_runtime::serve_with(http, serving, handler, stop).await;
        }));
        if let (Some(listener), Some((addr, mode))) = (https, self.site.https.clone()) {
            let site = self.site.clone();
            let door = site.door.clone();
            let limits = Some(site.limits.clone());
            let front_proxies = site.front_proxies.clone();
            let stop = rx;
            self.tasks.push(self.rt.spawn(async move {
                info!(vip = %addr, tls = match mode { Https::Terminate(_) => "terminate", Https::Passthrough(_) => "passthrough" }, "listening for HTTPS on the VIP");
                match mode {
                    Https::Terminate(acceptor) => {
                        let handler = move |req, peer| {
                            let site = site.clone();
                            async move { site.https_chain.handle(req, peer, Some("https")).await }
                        };
                        let serving = hastack_runtime::Serving {
                            tls: Some(acceptor),
                            proxy_header: front_proxies,
                            door,
                            limits,
                        };
                        hastack_runtime::serve_with(listener, serving, handler, stop).await;
                    }
                    Https::Passthrough(p) => p.serve(listener, stop).await,
                }
            }));
        }
        self.stop = Some(tx);
        Ok(())
    }

    fn release(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(true);
            info!(vip = %self.site.http, "stopped listening on the VIP");
        }
    }
}

/// How often the lb re-evaluates its own health for VRRP.
const TRACK_EVERY: Duration = Duration::from_millis(100);

/// The lb's own health: at least one web node in its pool gets traffic (an empty pool
/// tracks nothing).
fn own_health(pool: &Pool) -> Health {
    let set = pool.set();
    let servers = set.servers();
    if servers.is_empty() || servers.iter().any(|s| s.is_healthy()) {
        None
    } else {
        Some(format!(
            "no healthy server in pool {} ({} down)",
            pool.name(),
            servers.len()
        ))
    }
}

/// How a running lb node gets a new configuration: `load` reads the topology file
/// again (`None`: there is none to read); each message on `requests` asks for a
/// reload (SIGHUP).
#[derive(Default)]
pub struct Reloads {
    /// Reads the file again.
    pub load: Option<control::Loader>,
    /// Reload requests.
    pub requests: Option<tokio::sync::mpsc::UnboundedReceiver<()>>,
}

/// Runs lb node `name` until `shutdown` turns true.
pub async fn run(
    topo: &Topology,
    name: &str,
    shutdown: watch::Receiver<bool>,
) -> Result<(), LbError> {
    run_with(topo, name, shutdown, Reloads::default()).await
}

/// Like [`run`], reloading its configuration as `reloads` say and answering on its
/// control socket ([`control`]).
pub async fn run_with(
    topo: &Topology,
    name: &str,
    shutdown: watch::Receiver<bool>,
    reloads: Reloads,
) -> Result<(), LbError> {
    let node = topo
        .node(name)
        .filter(|n| n.role == Role::Lb)
        .ok_or_else(|| LbError::NotAnLb(name.to_string()))?;
    let mut registry = Registry::default();

    let mut tls = if topo.tls.internal || topo.https_port.is_some() {
        Some(NodeTls::open(topo, node, &mut registry)?)
    } else {
        None
    };
    let pool_tls = match (&tls, topo.tls.internal) {
        (Some(t), true) => Some(PoolTls {
            config: t.internal_client()?,
            metrics: t.metrics().clone(),
        }),
        _ => None,
    };
    let pool = Pool::with_options(
        "web",
        &topo.endpoints(Role::Web),
        pool_tls,
        hastack_proxy::PoolOptions::for_lb(topo),
        &mut registry,
    );
    let mut opts = ProxyOptions::new(name).with_http(&topo.http);
    opts.access_log = hastack_proxy::access_log::open_for(topo, name, shutdown.clone());
    let front_proxies = hastack_runtime::ProxyHeader::from_networks(&topo.lb.front_proxies);
    opts.front_proxies = front_proxies.clone();
    opts.listen_http = Some(SocketAddr::from((topo.vip, topo.http_port)));
    opts.listen_https = topo.https_port.map(|p| SocketAddr::from((topo.vip, p)));
    let proxy = Proxy::new(opts, pool.clone(), &mut registry);
    let door = hastack_runtime::front_door::FrontDoor::for_topology(&topo.http, &mut registry);
    let limits = hastack_runtime::conn_limits::ConnLimits::new(
        topo.lb.max_conn,
        topo.lb.max_conn_per_client,
        &mut registry,
    );
    let rate = Arc::new(rate::RateLimiter::new(
        topo.lb.rate_limit,
        topo.lb.rate_burst,
    ));
    let rate_limited = prometheus_client::metrics::counter::Counter::default();
    registry.register(
        "hastack_lb_rate_limited",
        "Requests answered 429: the client was over lb.rate_limit",
        rate_limited.clone(),
    );
    {
        // Forget clients that went quiet, so memory follows the active ones.
        let rate = rate.clone();
        let mut shutdown = shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(10));
            loop {
                tokio::select! {
                    _ = shutdown.changed() => break,
                    _ = tick.tick() => rate.prune(std::time::Instant::now()),
                }
            }
        });
    }
    let https = match (topo.https_port, &mut tls) {
        (Some(port), Some(t)) => {
            let addr = SocketAddr::from((topo.vip, port));
            let mode = match topo.tls.mode {
                TlsMode::Terminate => Https::Terminate(t.site_acceptor(topo)?),
                TlsMode::Passthrough => Https::Passthrough(Arc::new(
                    passthrough::Passthrough::new(topo, pool.clone(), &mut registry),
                )),
            };
            Some((addr, mode))
        }
        _ => None,
    };
    if let Some(t) = &tls {
        t.spawn_reloader(shutdown.clone());
    }

    let admin_listener = bind_tcp(topo.admin_addr(node), "admin", false)?;
    let peers = topo.tier(Role::Lb).filter(|n| n.name != name);
    let network = if topo.mode.real_network() {
        Network::Real {
            local: node.address,
            peers: peers.map(|n| n.address).collect(),
            unicast: topo.vrrp.unicast,
            prefix: topo.subnet.prefix,
        }
    } else {
        Network::Loopback {
            local: SocketAddrV4::new(node.address, topo.ports.vrrp),
            peers: peers
                .map(|n| SocketAddrV4::new(n.address, topo.ports.vrrp))
                .collect(),
        }
    };
    let key = if topo.vrrp.authenticate {
        // Hosts mode: each server has its own state dir, so a key made here would
        // differ from the peers'; the operator copies one key to every lb.
        Some(Key::load_or_create(
            &vrrp_key_path(topo),
            topo.mode != Mode::Hosts,
        )?)
    } else {
        None
    };

    let stats = Arc::new(Stats::default());
    let probe: HealthProbe = {
        let stats = stats.clone();
        let pool = pool.clone();
        let proxy = proxy.clone();
        let name = name.to_string();
        let vip = topo.vip.to_string();
        Arc::new(move || {
            let state = stats.state();
            let body = hastack_status::Health::Lb(LbHealth {
                node: name.clone(),
                vrrp: state.as_str().to_string(),
                fault: stats.fault(),
                vip: vip.clone(),
                upstreams: pool.upstreams(),
                traffic: proxy.traffic(),
            });
            Box::pin(async move {
                HealthReport {
                    healthy: state != State::Fault,
                    body,
                }
            })
        })
    };
    registry.register_collector(Box::new(hastack_vrrp::stats::StatsCollector(stats.clone())));

    let check = HealthCheck {
        proxy_header: topo.lb.send_proxy,
        ..HealthCheck::from(&topo.health)
    };
    pool.spawn_health_checks(check, shutdown.clone());
    let live = Arc::new(control::Live {
        name: name.to_string(),
        pool: pool.clone(),
        proxy: proxy.clone(),
        door: door.clone(),
        limits: limits.clone(),
        rate: rate.clone(),
        running: std::sync::Mutex::new(topo.clone()),
        load: reloads.load,
    });
    let control_listener =
        control::bind(&topo.state_dir, name).map_err(|source| LbError::Control {
            path: control::socket_path(&topo.state_dir, name),
            source,
        })?;
    tokio::spawn(control::serve(
        control_listener,
        live.clone(),
        shutdown.clone(),
    ));
    if let Some(mut requests) = reloads.requests {
        let live = live.clone();
        let mut shutdown = shutdown.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.changed() => break,
                    r = requests.recv() => match r {
                        None => break,
                        Some(()) => {
                            let live = live.clone();
                            let _ = tokio::task::spawn_blocking(move || live.reload()).await;
                        }
                    },
                }
            }
        });
    }
    let stats_page: hastack_runtime::Page = {
        let (name, site, proxy, limited) = (
            name.to_string(),
            topo.site.clone(),
            proxy.clone(),
            rate_limited.clone(),
        );
        Arc::new(move || stats::page(&name, &site, &proxy, limited.get()))
    };
    let dashboard = {
        let topo = topo.clone();
        hastack_status::dashboard::Dashboard::spawn(
            move || {
                let topo = topo.clone();
                async move { hastack_status::poll::stack(&topo).await }
            },
            shutdown.clone(),
        )
    };
    let admin = Admin::new(probe, registry)
        .with_page("/stats", stats_page)
        .with_dashboard(dashboard);
    let admin_task = tokio::spawn(admin.serve(admin_listener, shutdown.clone()));

    let (health_tx, health_rx) = watch::channel(own_health(&pool));
    let tracker = {
        let pool = pool.clone();
        let mut shutdown = shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(TRACK_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.changed() => break,
                    _ = tick.tick() => {
                        let h = own_health(&pool);
                        health_tx.send_if_modified(|cur| {
                            let changed = *cur != h;
                            *cur = h;
                            changed
                        });
                    }
                }
            }
        })
    };

    let setup = Setup {
        machine: hastack_vrrp::Config {
            vrid: topo.vrrp.vrid,
            priority: node.priority.unwrap_or(100),
            advert_interval_cs: topo.vrrp.advert_interval_cs,
            preempt: topo.vrrp.preempt,
            primary_address: node.address,
            addresses: vec![topo.vip],
            peers: topo
                .tier(Role::Lb)
                .filter(|n| n.name != name)
                .map(|n| n.address)
                .collect(),
            preempt_delay: topo.vrrp.preempt_delay,
        },
        network,
        key,
        notify: topo.vrrp.notify.clone(),
        instance: format!("vrid{}", topo.vrrp.vrid),
    };
    let rate = edge::RateLimit {
        limiter: rate,
        limited: rate_limited,
    };
    let (http_chain, https_chain) =
        Site::chains(topo, proxy, rate, https.as_ref().map(|(a, _)| a.port()));
    let hook = VipListener {
        site: Arc::new(Site {
            http: SocketAddr::from((topo.vip, topo.http_port)),
            https,
            http_chain,
            https_chain,
            door,
            limits,
            front_proxies,
        }),
        rt: tokio::runtime::Handle::current(),
        stop: None,
        tasks: Vec::new(),
    };
    let running = hastack_vrrp::runner::start(setup, hook, stats, health_rx, shutdown).await?;
    info!(node = name, vip = %topo.vip, port = topo.http_port, mode = topo.mode.as_str(), "lb ready");
    // Returns after a graceful shutdown: priority 0 sent, VIP released.
    if let Some(hook) = running.finished().await {
        hook.drained().await;
    }
    let _ = tracker.await;
    let _ = admin_task.await;
    Ok(())
}
