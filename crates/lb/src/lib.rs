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
//! The VIP listener is opened with `SO_REUSEPORT`, so during a hand-over the new master
//! can bind before the old one has let go; the old one stops accepting and drains its
//! open requests. The admin port (`/healthz`, `/metrics`) is on the node's own address,
//! so a backup answers too.

use std::net::{SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hastack_config::{Mode, Role, Topology};
use hastack_proxy::{HealthCheck, Pool, Proxy, ProxyOptions};
use hastack_runtime::{Admin, BindError, HealthProbe, HealthReport, bind_tcp};
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
}

/// Where the VRRP key of a topology lives: `<state_dir>/secrets/vrrp.key`.
pub fn vrrp_key_path(topo: &Topology) -> PathBuf {
    topo.state_dir.join("secrets").join("vrrp.key")
}

/// Opens and closes the VIP listener as VRRP decides. Called on the VRRP thread; the
/// listener and its connections live on the node's main runtime (`rt`).
struct VipListener {
    vip: SocketAddr,
    proxy: Arc<Proxy>,
    rt: tokio::runtime::Handle,
    stop: Option<watch::Sender<bool>>,
    /// The VIP server, kept so a stopping node can let it drain.
    task: Option<tokio::task::JoinHandle<()>>,
}

impl VipListener {
    /// Waits until the last VIP listener has drained its open requests.
    async fn drained(mut self) {
        self.release();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl VipHook for VipListener {
    fn take(&mut self) -> std::io::Result<()> {
        if self.stop.is_some() {
            return Ok(());
        }
        // Registered with the main runtime's reactor, not the VRRP thread's.
        let listener = {
            let _rt = self.rt.enter();
            bind_tcp(self.vip, "vip", true)
                .map_err(|e| std::io::Error::new(e.source.kind(), e.to_string()))?
        };
        let (tx, rx) = watch::channel(false);
        let proxy = self.proxy.clone();
        let vip = self.vip;
        self.task = Some(self.rt.spawn(async move {
            info!(%vip, "listening on the VIP");
            hastack_runtime::serve_http1(
                listener,
                move |req, peer| {
                    let proxy = proxy.clone();
                    async move { proxy.forward(req, peer).await }
                },
                rx,
            )
            .await;
        }));
        self.stop = Some(tx);
        Ok(())
    }

    fn release(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(true);
            info!(vip = %self.vip, "stopped listening on the VIP");
        }
    }
}

/// How often the lb re-evaluates its own health for VRRP.
const TRACK_EVERY: Duration = Duration::from_millis(100);

/// The lb's own health: at least one web node in its pool gets traffic (an empty pool
/// tracks nothing).
fn own_health(pool: &Pool) -> Health {
    let servers = pool.servers();
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

/// Runs lb node `name` until `shutdown` turns true.
pub async fn run(
    topo: &Topology,
    name: &str,
    shutdown: watch::Receiver<bool>,
) -> Result<(), LbError> {
    let node = topo
        .node(name)
        .filter(|n| n.role == Role::Lb)
        .ok_or_else(|| LbError::NotAnLb(name.to_string()))?;
    let mut registry = Registry::default();

    let pool = Pool::new("web", &topo.endpoints(Role::Web), &mut registry);
    let proxy = Proxy::new(ProxyOptions::new(name), pool.clone(), &mut registry);

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
        let name = name.to_string();
        Arc::new(move || {
            let state = stats.state();
            let fault = stats.fault();
            let body = serde_json::json!({
                "node": name,
                "role": "lb",
                "vrrp": state.as_str(),
                "fault": fault,
                "upstreams": pool.health_json(),
            });
            Box::pin(async move {
                HealthReport {
                    healthy: state != State::Fault,
                    body,
                }
            })
        })
    };
    let extra = {
        let stats = stats.clone();
        Arc::new(move |out: &mut String| stats.render(out))
    };

    pool.spawn_health_checks(HealthCheck::from(&topo.health), shutdown.clone());
    let admin = Admin::new(probe, registry, Some(extra));
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
    let hook = VipListener {
        vip: SocketAddr::from((topo.vip, topo.http_port)),
        proxy,
        rt: tokio::runtime::Handle::current(),
        stop: None,
        task: None,
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
