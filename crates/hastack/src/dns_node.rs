//! A dns node: the authoritative server of the site's zone ([`hastack_dns`]) on the
//! node's address and `ports.dns`, with the admin port's `/healthz` and `/metrics` like
//! every node. The zone comes from the topology: the site's name → the VIP, and one NS
//! record (with glue) per dns node, so every dns node serves the same zone.

use std::net::{IpAddr, SocketAddr};

use anyhow::Context;
use hastack_config::{Role, Topology};
use hastack_runtime::{Admin, bind_tcp, steady_probe};
use hastack_status::health::{DnsHealth, Health};
use tokio::sync::watch;

/// The zone every dns node of `topo` serves.
pub(crate) fn zone(topo: &Topology) -> hastack_dns::ZoneSpec {
    hastack_dns::ZoneSpec {
        site: topo.site.clone(),
        vips: vec![IpAddr::V4(topo.vip)],
        nameservers: topo
            .tier(Role::Dns)
            .map(|n| (n.name.clone(), IpAddr::V4(n.address)))
            .collect(),
        ttl: topo.dns.ttl,
    }
}

/// Runs dns node `name` until `shutdown`.
pub(crate) async fn run(
    topo: &Topology,
    name: &str,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let node = topo
        .node(name)
        .with_context(|| format!("no node `{name}` in the topology"))?;
    let mut registry = prometheus_client::registry::Registry::default();
    let limit = hastack_dns::RateLimit {
        per_second: topo.dns.rate_limit,
        burst: topo.dns.rate_burst,
    };
    let server = hastack_dns::Server::new(&zone(topo), limit, &mut registry)?;
    let stats = server.stats_handle();
    let probe = {
        let name = name.to_string();
        steady_probe(move || {
            let s = stats.snapshot();
            Health::Dns(DnsHealth {
                node: name.clone(),
                zone: s.zone,
                serial: s.serial,
                answered: s.answered,
                refused: s.refused,
                rate_limited: s.rate_limited,
            })
        })
    };
    let admin_listener = bind_tcp(topo.admin_addr(node), "admin", false)?;
    let admin_task =
        tokio::spawn(Admin::new(probe, registry).serve(admin_listener, shutdown.clone()));
    let addr = SocketAddr::from((node.address, topo.ports.dns));
    let served = server.serve(addr, shutdown).await;
    let _ = admin_task.await;
    served.map_err(Into::into)
}
