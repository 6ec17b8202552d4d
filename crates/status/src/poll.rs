//! A picture of the stack taken from outside its supervisor: every node's `/healthz`,
//! asked at once, each with a deadline. A node that does not answer is shown so; one
//! whose document does not parse is shown unhealthy with the reason logged.

use std::net::SocketAddr;
use std::time::Duration;

use hastack_config::{Node, Topology};
use tracing::debug;

use crate::health::Health;
use crate::http;
use crate::stack::{NodeStatus, StackStatus};

/// How long one `/healthz` may take before the node counts as not answering.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(800);

/// What one node's `/healthz` said: whether it answered 200, and its document.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Probe {
    /// `None`: it did not answer.
    pub healthy: Option<bool>,
    /// The document, when it answered one this version understands.
    pub health: Option<Health>,
}

/// Asks `admin`'s `/healthz`.
pub async fn probe(admin: SocketAddr, timeout: Duration) -> Probe {
    match http::get(admin, "/healthz", timeout).await {
        Ok((code, body)) => {
            let health = match serde_json::from_str::<Health>(&body) {
                Ok(h) => Some(h),
                Err(e) => {
                    debug!(%admin, "unreadable /healthz: {e}: {body}");
                    None
                }
            };
            Probe {
                healthy: Some(code == 200),
                health,
            }
        }
        Err(_) => Probe::default(),
    }
}

/// Asks every node of `topo` at once; the probes in the topology's order.
pub async fn probe_all(topo: &Topology, nodes: &[Node]) -> Vec<Probe> {
    let futures = nodes
        .iter()
        .map(|n| probe(topo.admin_addr(n), PROBE_TIMEOUT));
    futures_util::future::join_all(futures).await
}

/// The picture an lb's dashboard shows: no process table, only what the nodes answer.
pub async fn stack(topo: &Topology) -> StackStatus {
    let probes = probe_all(topo, &topo.nodes).await;
    let nodes = topo
        .nodes
        .iter()
        .zip(probes)
        .map(|(n, p)| {
            let state = if p.healthy.is_some() {
                "running"
            } else {
                "not answering"
            };
            NodeStatus {
                healthy: p.healthy,
                health: p.health,
                ..NodeStatus::of(topo, n, state.into())
            }
        })
        .collect();
    StackStatus::of(topo, nodes)
}
