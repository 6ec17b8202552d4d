//! The whole stack at one moment ([`StackStatus`]: every node's process state and
//! health) and what readers derive from a series of them ([`Tracker`]: requests and
//! errors per second per node, and the events between two moments — a node that died, an
//! lb that took the VIP, a new db primary).
//!
//! The tracker is pure: it is fed snapshots with their time and does no I/O, so its rules
//! are unit-tested without a stack or a clock.

use std::collections::{HashMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::health::{Health, Traffic};

/// The stack as one reader sees it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StackStatus {
    /// Site name.
    pub site: String,
    /// Site URL through the VIP (in isolated mode: as seen from the client namespace).
    pub url: String,
    /// The site's HTTPS URL (by name; resolve the name to the VIP), when it has HTTPS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub https_url: Option<String>,
    /// The internal CA's certificate, which HTTPS clients of the stack trust.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
    /// The VIP's address.
    #[serde(default)]
    pub vip: String,
    /// `loopback`, `isolated` or `hosts`.
    #[serde(default)]
    pub mode: String,
    /// Isolated mode: the client's network namespace (`hastack exec client -- CMD`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_netns: Option<String>,
    /// State directory (empty when seen from an lb node).
    #[serde(default)]
    pub state_dir: String,
    /// `mariadb` or `sqlite`.
    #[serde(default)]
    pub db_engine: String,
    /// When this picture was taken, Unix milliseconds.
    #[serde(default)]
    pub at_unix_ms: i64,
    /// The live dashboard's URL, when `hastack up` serves one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dashboard: Option<String>,
    /// Every node, in the topology's order.
    pub nodes: Vec<NodeStatus>,
}

/// One node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Name.
    pub name: String,
    /// Tier: `dns`, `lb`, `web`, `app` or `db`.
    pub role: String,
    /// Address.
    pub address: String,
    /// Isolated mode: the node's network namespace (`hastack exec NODE -- CMD`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
    /// The process as its supervisor sees it: `running`, `starting`, `stopped`,
    /// `killed`, `exited (…)`, `not started`; to a reader that is not the supervisor
    /// (an lb's dashboard), `running` when it answers and `not answering` otherwise.
    pub state: String,
    /// Process id while it runs, when the reader is its supervisor.
    #[serde(default)]
    pub pid: Option<u32>,
    /// The node's `/healthz` URL.
    pub admin: String,
    /// Whether `/healthz` answered 200 (`None`: it did not answer).
    #[serde(default)]
    pub healthy: Option<bool>,
    /// The `/healthz` document.
    #[serde(default)]
    pub health: Option<Health>,
}

impl NodeStatus {
    /// Node `n` of `topo` as the topology says it (name, role, address, admin URL),
    /// in `state`; what a reader saw of it is set by the reader.
    pub fn of(
        topo: &hastack_config::Topology,
        n: &hastack_config::Node,
        state: String,
    ) -> NodeStatus {
        NodeStatus {
            name: n.name.clone(),
            role: n.role.to_string(),
            address: n.address.to_string(),
            netns: None,
            state,
            pid: None,
            admin: format!("http://{}/healthz", topo.admin_addr(n)),
            healthy: None,
            health: None,
        }
    }

    /// `ok`, `failing`, or `-` when it did not answer.
    pub fn health_word(&self) -> &'static str {
        match self.healthy {
            Some(true) => "ok",
            Some(false) => "failing",
            None => "-",
        }
    }
}

impl StackStatus {
    /// The stack of `topo` with `nodes`, taken now; what only a supervisor knows (its
    /// state directory, the database engine it chose, …) is set by the supervisor.
    pub fn of(topo: &hastack_config::Topology, nodes: Vec<NodeStatus>) -> StackStatus {
        StackStatus {
            site: topo.site.clone(),
            url: topo.site_url(),
            https_url: topo.site_https_url(),
            vip: topo.vip.to_string(),
            mode: topo.mode.as_str().to_string(),
            at_unix_ms: chrono::Utc::now().timestamp_millis(),
            nodes,
            ..StackStatus::default()
        }
    }

    /// The lb that holds the VIP (VRRP master), if one does.
    pub fn vip_holder(&self) -> Option<&str> {
        self.nodes.iter().find_map(|n| match &n.health {
            Some(Health::Lb(h)) if h.vrrp == "master" => Some(n.name.as_str()),
            _ => None,
        })
    }

    /// The db node that is the writable primary, if one says so.
    pub fn db_primary(&self) -> Option<&str> {
        self.nodes.iter().find_map(|n| match &n.health {
            Some(Health::Db(h)) if h.db_role == "primary" => Some(n.name.as_str()),
            _ => None,
        })
    }

    /// The most recent database failover any db node reports.
    pub fn last_failover(&self) -> Option<&crate::health::Failover> {
        self.nodes
            .iter()
            .filter_map(|n| match &n.health {
                Some(Health::Db(h)) => h.cluster.last_failover.as_ref(),
                _ => None,
            })
            .max_by_key(|f| f.epoch)
    }
}

/// Requests and errors per second of one node between two pictures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Rate {
    /// Requests per second.
    pub requests_per_s: f64,
    /// Server errors per second.
    pub errors_per_s: f64,
}

/// Something that changed between two pictures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// When it was seen, Unix milliseconds.
    pub at_unix_ms: i64,
    /// The node it is about.
    pub node: String,
    /// What happened, for people: `lb2 took the VIP`, `db1 stopped answering`.
    pub what: String,
}

/// A picture with the rates and recent events a [`Tracker`] derived: what the
/// dashboard's event stream and `top` show.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct View {
    /// The picture.
    pub status: StackStatus,
    /// Rates per node name, for the nodes that serve requests.
    pub rates: HashMap<String, Rate>,
    /// The lb holding the VIP.
    pub vip_holder: Option<String>,
    /// The db primary.
    pub db_primary: Option<String>,
    /// Recent events, newest first.
    pub events: Vec<Event>,
}

/// How many events a [`Tracker`] keeps.
pub const EVENTS_KEPT: usize = 50;

/// Turns a series of pictures into [`View`]s. Pure: no clock, no I/O.
#[derive(Debug, Default)]
pub struct Tracker {
    last: Option<StackStatus>,
    traffic: HashMap<String, (i64, Traffic)>,
    rates: HashMap<String, Rate>,
    events: VecDeque<Event>,
}

impl Tracker {
    /// A tracker that has seen nothing.
    pub fn new() -> Tracker {
        Tracker::default()
    }

    /// Takes the next picture and says what it shows.
    pub fn observe(&mut self, status: StackStatus) -> View {
        let now = status.at_unix_ms;
        for n in &status.nodes {
            let Some(t) = n.health.as_ref().and_then(Health::traffic) else {
                self.rates.remove(&n.name);
                continue;
            };
            if let Some((then, before)) = self.traffic.get(&n.name)
                && now > *then
                && t.requests >= before.requests
            {
                let dt = (now - then) as f64 / 1000.0;
                self.rates.insert(
                    n.name.clone(),
                    Rate {
                        requests_per_s: (t.requests - before.requests) as f64 / dt,
                        errors_per_s: t.errors.saturating_sub(before.errors) as f64 / dt,
                    },
                );
            } else {
                // First sight, or the node restarted (its counters went back).
                self.rates.insert(n.name.clone(), Rate::default());
            }
            self.traffic.insert(n.name.clone(), (now, t));
        }
        if let Some(prev) = &self.last {
            for e in changes(prev, &status) {
                self.events.push_front(e);
            }
            self.events.truncate(EVENTS_KEPT);
        }
        let view = View {
            rates: self.rates.clone(),
            vip_holder: status.vip_holder().map(str::to_owned),
            db_primary: status.db_primary().map(str::to_owned),
            events: self.events.iter().cloned().collect(),
            status: status.clone(),
        };
        self.last = Some(status);
        view
    }
}

/// What changed from `prev` to `next`, in the topology's order.
pub fn changes(prev: &StackStatus, next: &StackStatus) -> Vec<Event> {
    let at = next.at_unix_ms;
    let mut out = Vec::new();
    let mut say = |node: &str, what: String| {
        out.push(Event {
            at_unix_ms: at,
            node: node.to_string(),
            what,
        })
    };
    for n in &next.nodes {
        let Some(p) = prev.nodes.iter().find(|p| p.name == n.name) else {
            continue;
        };
        if p.state != n.state {
            say(&n.name, format!("{} is {}", n.name, n.state));
        }
        match (p.healthy, n.healthy) {
            (Some(true), Some(false)) => say(&n.name, format!("{} is failing", n.name)),
            (Some(_), None) => say(&n.name, format!("{} stopped answering", n.name)),
            (None | Some(false), Some(true)) => say(&n.name, format!("{} is healthy", n.name)),
            _ => {}
        }
    }
    match (prev.vip_holder(), next.vip_holder()) {
        (Some(before), Some(now)) if before != now => {
            say(now, format!("{now} took the VIP from {before}"))
        }
        (None, Some(now)) => say(now, format!("{now} holds the VIP")),
        (Some(before), None) => say(before, format!("no lb holds the VIP (was {before})")),
        _ => {}
    }
    if let Some(now) = next.db_primary()
        && prev.db_primary() != Some(now)
    {
        say(now, format!("{now} is the db primary"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::{LbHealth, WebHealth};

    fn lb(name: &str, vrrp: &str, requests: u64, errors: u64) -> NodeStatus {
        NodeStatus {
            name: name.into(),
            role: "lb".into(),
            address: "127.0.1.1".into(),
            netns: None,
            state: "running".into(),
            pid: Some(1),
            admin: String::new(),
            healthy: Some(true),
            health: Some(Health::Lb(LbHealth {
                node: name.into(),
                vrrp: vrrp.into(),
                fault: None,
                vip: "127.0.0.100".into(),
                upstreams: vec![],
                traffic: Traffic { requests, errors },
            })),
        }
    }

    fn web(name: &str, requests: u64) -> NodeStatus {
        NodeStatus {
            name: name.into(),
            role: "web".into(),
            address: "127.0.2.1".into(),
            netns: None,
            state: "running".into(),
            pid: Some(2),
            admin: String::new(),
            healthy: Some(true),
            health: Some(Health::Web(WebHealth {
                node: name.into(),
                static_files: 1,
                upstreams: vec![],
                traffic: Traffic {
                    requests,
                    errors: 0,
                },
            })),
        }
    }

    fn at(ms: i64, nodes: Vec<NodeStatus>) -> StackStatus {
        StackStatus {
            site: "www.foobar.com".into(),
            vip: "127.0.0.100".into(),
            mode: "loopback".into(),
            db_engine: "sqlite".into(),
            at_unix_ms: ms,
            nodes,
            ..Default::default()
        }
    }

    #[test]
    fn rates_are_the_counters_difference_over_the_time_between_pictures() {
        let mut t = Tracker::new();
        let first = t.observe(at(1_000, vec![lb("lb1", "master", 100, 0)]));
        assert_eq!(
            first.rates["lb1"],
            Rate::default(),
            "one picture has no rate"
        );
        let v = t.observe(at(3_000, vec![lb("lb1", "master", 700, 20)]));
        assert_eq!(v.rates["lb1"].requests_per_s, 300.0);
        assert_eq!(v.rates["lb1"].errors_per_s, 10.0);
    }

    #[test]
    fn a_restarted_node_whose_counters_went_back_has_no_negative_rate() {
        let mut t = Tracker::new();
        t.observe(at(1_000, vec![web("web1", 500)]));
        let v = t.observe(at(2_000, vec![web("web1", 3)]));
        assert_eq!(v.rates["web1"], Rate::default());
    }

    #[test]
    fn a_vip_takeover_and_a_dead_node_are_events() {
        let mut t = Tracker::new();
        t.observe(at(
            1_000,
            vec![lb("lb1", "master", 0, 0), lb("lb2", "backup", 0, 0)],
        ));
        let mut dead = lb("lb1", "master", 0, 0);
        dead.state = "killed".into();
        dead.healthy = None;
        dead.health = None;
        let v = t.observe(at(2_000, vec![dead, lb("lb2", "master", 0, 0)]));
        let what: Vec<&str> = v.events.iter().map(|e| e.what.as_str()).collect();
        assert_eq!(
            what,
            [
                "lb2 took the VIP from lb1",
                "lb1 stopped answering",
                "lb1 is killed"
            ],
            "newest first"
        );
        assert_eq!(v.vip_holder.as_deref(), Some("lb2"));
        assert!(v.events.iter().all(|e| e.at_unix_ms == 2_000));
    }

    #[test]
    fn the_vip_moving_between_two_live_lbs_names_both() {
        let prev = at(
            0,
            vec![lb("lb1", "master", 0, 0), lb("lb2", "backup", 0, 0)],
        );
        let next = at(
            10,
            vec![lb("lb1", "backup", 0, 0), lb("lb2", "master", 0, 0)],
        );
        let e = changes(&prev, &next);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].what, "lb2 took the VIP from lb1");
    }

    #[test]
    fn events_are_bounded() {
        let mut t = Tracker::new();
        for i in 0..(EVENTS_KEPT as i64 + 20) {
            let mut n = web("web1", 0);
            n.state = if i % 2 == 0 { "running" } else { "killed" }.into();
            t.observe(at(i, vec![n]));
        }
        let v = t.observe(at(1_000, vec![web("web1", 0)]));
        assert_eq!(v.events.len(), EVENTS_KEPT);
    }
}
