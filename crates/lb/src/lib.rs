//! The load balancer node: VRRP decides whether this node holds the VIP; while it does,
//! it listens on VIP:port and balances requests over the healthy web nodes.
//!
//! The VIP listener is opened with `SO_REUSEPORT`, so during a hand-over the new master
//! can bind before the old one has let go; the old one stops accepting and drains its
//! open requests. The admin port (`/healthz`, `/metrics`) is on the node's own address,
//! so a backup answers too.

use std::net::{SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hastack_config::{Role, Topology};
use hastack_proxy::{HealthCheck, Pool, Proxy, ProxyOptions};
use hastack_runtime::{Admin, BindError, bind_tcp, steady_probe};
use hastack_vrrp::{Machine, Stats, UdpTransport, VipHook};
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tracing::{error, info};

/// Why an lb node could not run.
#[derive(Debug, thiserror::Error)]
pub enum LbError {
    /// The name is not an lb node of the topology.
    #[error("`{0}` is not an lb node of this topology")]
    NotAnLb(String),
    /// A socket could not be bound.
    #[error(transparent)]
    Bind(#[from] BindError),
}

/// Opens and closes the VIP listener as VRRP decides.
struct VipListener {
    vip: SocketAddr,
    proxy: Arc<Proxy>,
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
    fn take(&mut self) {
        if self.stop.is_some() {
            return;
        }
        let (tx, mut rx) = watch::channel(false);
        let proxy = self.proxy.clone();
        let vip = self.vip;
        self.task = Some(tokio::spawn(async move {
            // The VIP's port may be held by someone else for a moment (or for good, by
            // another user's process): keep trying, loudly, until released.
            let mut delay = Duration::from_millis(20);
            let listener = loop {
                match bind_tcp(vip, "vip", true) {
                    Ok(l) => break l,
                    Err(e) => {
                        error!(%vip, error = %e, "cannot listen on the VIP; retrying in {delay:?}");
                        tokio::select! {
                            _ = rx.changed() => return,
                            _ = tokio::time::sleep(delay) => {}
                        }
                        delay = (delay * 2).min(Duration::from_secs(1));
                    }
                }
            };
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
    }

    fn release(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(true);
            info!(vip = %self.vip, "stopped listening on the VIP");
        }
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
    let vrrp_addr = SocketAddrV4::new(node.address, topo.ports.vrrp);
    let peers: Vec<SocketAddrV4> = topo
        .tier(Role::Lb)
        .filter(|n| n.name != name)
        .map(|n| SocketAddrV4::new(n.address, topo.ports.vrrp))
        .collect();
    let transport = UdpTransport::bind(vrrp_addr, peers)
        .await
        .map_err(|source| BindError {
            addr: SocketAddr::V4(vrrp_addr),
            what: "vrrp",
            source,
        })?;

    let stats = Arc::new(Stats::default());
    let probe = {
        let stats = stats.clone();
        let pool = pool.clone();
        let name = name.to_string();
        steady_probe(move || {
            serde_json::json!({
                "node": name,
                "role": "lb",
                "vrrp": stats.state_name(),
                "upstreams": pool.health_json(),
            })
        })
    };
    let extra = {
        let stats = stats.clone();
        Arc::new(move |out: &mut String| {
            use std::fmt::Write;
            let l = Ordering::Relaxed;
            let _ = write!(
                out,
                "# HELP hastack_vrrp_state VRRP state: 0 initialize, 1 backup, 2 master.\n# TYPE hastack_vrrp_state gauge\nhastack_vrrp_state {}\n\
                 # HELP hastack_vrrp_adverts_sent Adverts sent.\n# TYPE hastack_vrrp_adverts_sent counter\nhastack_vrrp_adverts_sent_total {}\n\
                 # HELP hastack_vrrp_adverts_received Adverts accepted.\n# TYPE hastack_vrrp_adverts_received counter\nhastack_vrrp_adverts_received_total {}\n\
                 # HELP hastack_vrrp_adverts_rejected Datagrams rejected.\n# TYPE hastack_vrrp_adverts_rejected counter\nhastack_vrrp_adverts_rejected_total {}\n\
                 # HELP hastack_vrrp_became_master Transitions to master.\n# TYPE hastack_vrrp_became_master counter\nhastack_vrrp_became_master_total {}\n",
                stats.state.load(l),
                stats.adverts_sent.load(l),
                stats.adverts_received.load(l),
                stats.adverts_rejected.load(l),
                stats.became_master.load(l),
            );
        })
    };

    pool.spawn_health_checks(HealthCheck::from(&topo.health), shutdown.clone());
    let admin = Admin::new(probe, registry, Some(extra));
    let admin_task = tokio::spawn(admin.serve(admin_listener, shutdown.clone()));

    let machine = Machine::new(hastack_vrrp::Config {
        vrid: topo.vrrp.vrid,
        priority: node.priority.unwrap_or(100),
        advert_interval_cs: topo.vrrp.advert_interval_cs,
        preempt: topo.vrrp.preempt,
        primary_address: node.address,
        addresses: vec![topo.vip],
    });
    let hook = VipListener {
        vip: SocketAddr::from((topo.vip, topo.http_port)),
        proxy,
        stop: None,
        task: None,
    };
    info!(node = name, vip = %topo.vip, port = topo.http_port, "lb ready");
    // Returns after a graceful shutdown: priority 0 sent, VIP released.
    let hook = hastack_vrrp::runner::run(machine, transport, hook, stats, shutdown).await;
    hook.drained().await;
    let _ = admin_task.await;
    Ok(())
}
