//! What each node answers on `/healthz`: one typed document per role, written by the
//! node and read back by `status`, `top`, the dashboard and the drills. The wire form is
//! JSON with the role in `"role"` (`{"node":"lb1","role":"lb","vrrp":"master",…}`); a
//! reader that deserializes it gets the same type the node serialized, so a field that
//! is renamed on one side fails to compile on the other instead of reading as missing.

use serde::{Deserialize, Serialize};

/// A node's `/healthz` document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "role", rename_all = "lowercase")]
// One document per `/healthz` answer or status picture, never stored in bulk: the size
// of the db variant costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
pub enum Health {
    /// A load balancer.
    Lb(LbHealth),
    /// A web server.
    Web(WebHealth),
    /// An application server.
    App(AppHealth),
    /// A database node.
    Db(DbHealth),
    /// An authoritative DNS server.
    Dns(DnsHealth),
}

impl Health {
    /// The node's name.
    pub fn node(&self) -> &str {
        match self {
            Health::Lb(h) => &h.node,
            Health::Web(h) => &h.node,
            Health::App(h) => &h.node,
            Health::Db(h) => &h.node,
            Health::Dns(h) => &h.node,
        }
    }

    /// The requests the node answered so far, and how many of them were errors, for the
    /// tiers that serve HTTP.
    pub fn traffic(&self) -> Option<Traffic> {
        match self {
            Health::Lb(h) => Some(h.traffic),
            Health::Web(h) => Some(h.traffic),
            Health::App(h) => Some(h.traffic),
            Health::Db(_) => None,
            // Refusals (outside the zone, `ANY`) are policy, not server errors.
            Health::Dns(h) => Some(Traffic {
                requests: h.answered,
                errors: 0,
            }),
        }
    }

    /// What the node is doing in a few words (`master`, `primary, semi-sync ON (2
    /// acking)`, `db mariadb, reads ok, writes ok`), as `status` and `top` print it.
    pub fn summary(&self) -> String {
        match self {
            Health::Lb(h) => match &h.fault {
                Some(why) => format!("vrrp {} ({why})", h.vrrp),
                None => format!("vrrp {}", h.vrrp),
            },
            Health::Web(h) => {
                let up = h.upstreams.iter().filter(|u| u.healthy).count();
                format!("{up}/{} app nodes up", h.upstreams.len())
            }
            Health::App(h) => {
                let db = format!(
                    "db {}, reads {}, writes {}",
                    h.db,
                    if h.can_read { "ok" } else { "NO" },
                    if h.can_write { "ok" } else { "NO" }
                );
                match &h.process {
                    // The team's app: its process, then where its writer points.
                    Some(p) => {
                        let writer = h
                            .endpoints
                            .iter()
                            .find(|e| e.name == "writer")
                            .map(|e| match &e.target {
                                Some(t) => format!(", writer → {t}"),
                                None => ", writer waiting".into(),
                            })
                            .unwrap_or_default();
                        format!("app {}, {db}{writer}", p.state)
                    }
                    None => db,
                }
            }
            Health::Db(h) => h.summary(),
            Health::Dns(h) => format!("zone {} serial {}", h.zone, h.serial),
        }
    }
}

/// Requests answered since the node started; readers turn two of them into rates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Traffic {
    /// Requests answered.
    pub requests: u64,
    /// Of those, answers that were server errors (5xx).
    pub errors: u64,
}

/// One server of a pool (the lb's web nodes, a web node's app nodes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Upstream {
    /// The node's name.
    pub name: String,
    /// Where it is reached.
    pub addr: String,
    /// Its health checks pass.
    pub healthy: bool,
    /// Operator state: `ready`, `drain` or `maint`.
    pub state: String,
    /// Its balancing weight.
    pub weight: u32,
    /// Requests it is serving now.
    pub in_flight: u32,
}

/// A load balancer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LbHealth {
    /// The node's name.
    pub node: String,
    /// VRRP state: `initialize`, `backup`, `master` (it holds the VIP) or `fault`.
    pub vrrp: String,
    /// Why it is in fault, or was last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<String>,
    /// The VIP this node's VRRP instance guards.
    pub vip: String,
    /// The web nodes.
    pub upstreams: Vec<Upstream>,
    /// The site's requests through this node.
    #[serde(default)]
    pub traffic: Traffic,
}

/// A web server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebHealth {
    /// The node's name.
    pub node: String,
    /// Files of the site it serves.
    pub static_files: usize,
    /// The app nodes.
    pub upstreams: Vec<Upstream>,
    /// Requests answered.
    #[serde(default)]
    pub traffic: Traffic,
}

/// How one db node looks from an app node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaView {
    /// The db node.
    pub name: String,
    /// `"ok"` when it serves reads, else why not.
    pub status: String,
    /// Seconds behind the primary, when known.
    #[serde(default)]
    pub lag_s: Option<u64>,
}

/// An application server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppHealth {
    /// The node's name.
    pub node: String,
    /// `mariadb` or `sqlite`.
    pub db: String,
    /// Some db node serves reads.
    pub can_read: bool,
    /// There is a writable primary.
    pub can_write: bool,
    /// The primary's name.
    #[serde(default)]
    pub primary: Option<String>,
    /// Every other db node.
    #[serde(default)]
    pub replicas: Vec<ReplicaView>,
    /// Why reads or writes cannot be served.
    #[serde(default)]
    pub problem: Option<String>,
    /// The TLS cipher of the app's database sessions; `None` when not encrypted.
    #[serde(default)]
    pub db_tls: Option<String>,
    /// Requests answered.
    #[serde(default)]
    pub traffic: Traffic,
    /// The team's own application process (`None`: the built-in app).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<AppProcess>,
    /// The local database endpoints given to the team's app (writer, reader).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<DbEndpoint>,
}

/// The team's application process on an app node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct AppProcess {
    /// `starting`, `ready`, `unhealthy`, `restarting`, `draining` or `stopped`.
    pub state: String,
    /// Its pid, while it runs.
    #[serde(default)]
    pub pid: Option<u32>,
    /// Where it listens (`HOST:PORT`).
    #[serde(default)]
    pub address: Option<String>,
    /// The directory of the version it runs.
    pub dir: String,
    /// Times it was started again after it exited or stopped answering.
    pub restarts: u64,
    /// How it last exited, if it did.
    #[serde(default)]
    pub last_exit: Option<String>,
}

/// One local database endpoint of an app node (what ProxySQL or RDS Proxy would be).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct DbEndpoint {
    /// `writer` (the primary) or `reader` (the replicas).
    pub name: String,
    /// Where the app connects (`HOST:PORT`).
    pub address: String,
    /// The server new sessions go to now (the reader's next pick); `None` while waiting.
    #[serde(default)]
    pub target: Option<String>,
    /// Client connections open now.
    pub connections: u64,
    /// Logins that had to wait for a server (a failover under way).
    pub waits: u64,
    /// Logins and commands that gave up waiting.
    pub wait_timeouts: u64,
    /// Idle sessions moved to another server without the app noticing.
    pub moved: u64,
    /// Sessions closed because their server left and they could not move.
    pub closed: u64,
}

/// A db node's replication from the primary (`SHOW SLAVE STATUS`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replication {
    /// The primary it replicates from.
    pub master_host: String,
    /// `Yes` or `No`.
    pub io_running: String,
    /// `Yes` or `No`.
    pub sql_running: String,
    /// Seconds behind the primary, when known.
    #[serde(default)]
    pub seconds_behind_master: Option<u64>,
    /// GTID position received.
    #[serde(default)]
    pub gtid_io_pos: String,
    /// The replication error, if any (empty when none).
    #[serde(default)]
    pub last_error: String,
}

/// The db nodes' replicated record of who is primary.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterView {
    /// Epoch of the record; each failover starts one.
    pub epoch: u64,
    /// The primary.
    #[serde(default)]
    pub primary: Option<String>,
    /// The consensus leader, if known.
    #[serde(default)]
    pub consensus_leader: Option<String>,
    /// The last failover.
    #[serde(default)]
    pub last_failover: Option<Failover>,
}

/// One failover of the database primary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failover {
    /// The dead primary.
    pub from: String,
    /// The promoted replica.
    pub to: String,
    /// The epoch it started.
    pub epoch: u64,
    /// When it was decided, Unix milliseconds.
    pub at_unix_ms: i64,
    /// From the last lease renewal the arbiter saw to the decision.
    pub detected_after_ms: u64,
    /// How the old primary was kept from writing.
    pub fencing: String,
    /// What the promoted replica had received (GTID position).
    #[serde(default)]
    pub gtid: String,
}

/// What the db node saw of its `mariadbd` last time it looked.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DbObservation {
    /// `@@read_only`.
    pub read_only: bool,
    /// `@@gtid_current_pos`.
    pub gtid_current_pos: String,
    /// `@@gtid_binlog_pos`.
    pub gtid_binlog_pos: String,
    /// Semi-sync on the primary side: `ON` or `OFF` (absent when not enabled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub semi_sync: Option<String>,
    /// Replicas acknowledging commits (primary side).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub semi_sync_clients: Option<u64>,
    /// Its replication, when it is a replica.
    #[serde(default)]
    pub replication: Option<Replication>,
}

/// A database node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DbHealth {
    /// The node's name.
    pub node: String,
    /// `primary`, `replica`, `starting`, or why a primary does not write.
    pub db_role: String,
    /// `semi-sync-or-refuse` or `semi-sync-or-async`.
    pub durability: String,
    /// The last observation (absent until the first, and when the last failed).
    #[serde(flatten, default)]
    pub observed: Option<DbObservation>,
    /// Why the last observation failed (`mariadbd` did not answer, a query failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// On a primary: whether writes are accepted, and how.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub writes: Option<String>,
    /// On a primary: milliseconds of lease left.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_left_ms: Option<u64>,
    /// The replicated record.
    pub cluster: ClusterView,
}

impl DbHealth {
    /// Seconds this replica is behind its primary, when it is one and knows.
    pub fn lag_s(&self) -> Option<u64> {
        self.observed
            .as_ref()?
            .replication
            .as_ref()?
            .seconds_behind_master
    }

    /// `primary, semi-sync ON (2 acking), gtid 0-1-42` or `replica, replicating: Yes`.
    pub fn summary(&self) -> String {
        let obs = self.observed.as_ref();
        let mut d = match obs.and_then(|o| o.replication.as_ref()) {
            Some(r) if self.db_role == "replica" => {
                format!("{}, replicating: {}", self.db_role, r.sql_running)
            }
            _ => self.db_role.clone(),
        };
        if self.db_role == "primary" {
            let semi = obs.and_then(|o| o.semi_sync.as_deref()).unwrap_or("OFF");
            let clients = obs.and_then(|o| o.semi_sync_clients).unwrap_or(0);
            d.push_str(&format!(", semi-sync {semi} ({clients} acking)"));
        }
        if let Some(lag) = self.lag_s().filter(|l| *l > 0) {
            d.push_str(&format!(", {lag} s behind"));
        }
        if let Some(pos) = obs
            .map(|o| o.gtid_current_pos.as_str())
            .filter(|p| !p.is_empty())
        {
            d.push_str(&format!(", gtid {pos}"));
        }
        d
    }
}

/// An authoritative DNS server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsHealth {
    /// The node's name.
    pub node: String,
    /// The zone it answers for (`foobar.com.`).
    pub zone: String,
    /// The zone's SOA serial.
    pub serial: u32,
    /// Queries answered, whatever the response code.
    pub answered: u64,
    /// Of those, refused (outside the zone, `ANY`).
    pub refused: u64,
    /// Responses not sent because the client was over its rate.
    pub rate_limited: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> DbHealth {
        DbHealth {
            node: "db2".into(),
            db_role: "replica".into(),
            durability: "semi-sync-or-refuse".into(),
            observed: Some(DbObservation {
                read_only: true,
                gtid_current_pos: "0-1-7".into(),
                gtid_binlog_pos: "0-1-7".into(),
                semi_sync: None,
                semi_sync_clients: None,
                replication: Some(Replication {
                    master_host: "127.0.4.1".into(),
                    io_running: "Yes".into(),
                    sql_running: "Yes".into(),
                    seconds_behind_master: Some(3),
                    gtid_io_pos: "0-1-7".into(),
                    last_error: String::new(),
                }),
            }),
            error: None,
            writes: None,
            lease_left_ms: None,
            cluster: ClusterView {
                epoch: 2,
                primary: Some("db1".into()),
                consensus_leader: Some("db1".into()),
                last_failover: None,
            },
        }
    }

    #[test]
    fn the_wire_form_keeps_the_role_and_flat_observation_keys() {
        let v = serde_json::to_value(Health::Db(db())).expect("json");
        // Readers (and scripts) index these keys directly.
        assert_eq!(v["role"], "db");
        assert_eq!(v["db_role"], "replica");
        assert_eq!(v["read_only"], true);
        assert_eq!(v["gtid_current_pos"], "0-1-7");
        assert_eq!(v["replication"]["seconds_behind_master"], 3);
        assert_eq!(v["cluster"]["primary"], "db1");
    }

    #[test]
    fn every_role_reads_back_as_what_was_written() {
        let up = Upstream {
            name: "web1".into(),
            addr: "127.0.2.1:8081".into(),
            healthy: true,
            state: "ready".into(),
            weight: 1,
            in_flight: 0,
        };
        let all = [
            Health::Lb(LbHealth {
                node: "lb1".into(),
                vrrp: "master".into(),
                fault: None,
                vip: "127.0.0.100".into(),
                upstreams: vec![up.clone()],
                traffic: Traffic {
                    requests: 10,
                    errors: 1,
                },
            }),
            Health::Web(WebHealth {
                node: "web1".into(),
                static_files: 3,
                upstreams: vec![up],
                traffic: Traffic::default(),
            }),
            Health::App(AppHealth {
                node: "app1".into(),
                db: "mariadb".into(),
                can_read: true,
                can_write: false,
                primary: None,
                replicas: vec![],
                problem: Some("no primary".into()),
                db_tls: None,
                traffic: Traffic::default(),
                process: None,
                endpoints: Vec::new(),
            }),
            Health::Db(db()),
            Health::Dns(DnsHealth {
                node: "dns1".into(),
                zone: "foobar.com.".into(),
                serial: 1,
                answered: 5,
                refused: 1,
                rate_limited: 0,
            }),
        ];
        for h in all {
            let text = serde_json::to_string(&h).expect("json");
            let back: Health = serde_json::from_str(&text).expect("json");
            assert_eq!(back, h, "{text}");
        }
    }

    #[test]
    fn a_db_node_before_its_first_look_has_no_observation() {
        let mut h = db();
        h.observed = None;
        h.db_role = "starting".into();
        let text = serde_json::to_string(&Health::Db(h.clone())).expect("json");
        let Health::Db(back) = serde_json::from_str(&text).expect("json") else {
            panic!("not a db document: {text}");
        };
        assert_eq!(back.db_role, "starting");
        assert_eq!(back.summary(), "starting");
    }

    #[test]
    fn summaries_say_what_status_prints() {
        assert_eq!(
            db().summary(),
            "replica, replicating: Yes, 3 s behind, gtid 0-1-7"
        );
        let mut p = db();
        p.db_role = "primary".into();
        if let Some(o) = p.observed.as_mut() {
            o.replication = None;
            o.semi_sync = Some("ON".into());
            o.semi_sync_clients = Some(2);
        }
        assert_eq!(p.summary(), "primary, semi-sync ON (2 acking), gtid 0-1-7");

        let mut app = AppHealth {
            node: "app1".into(),
            db: "mariadb".into(),
            can_read: true,
            can_write: true,
            primary: Some("db2".into()),
            replicas: vec![],
            problem: None,
            db_tls: None,
            traffic: Traffic::default(),
            process: None,
            endpoints: vec![],
        };
        assert_eq!(
            Health::App(app.clone()).summary(),
            "db mariadb, reads ok, writes ok",
            "the built-in app"
        );
        app.process = Some(AppProcess {
            state: "ready".into(),
            ..AppProcess::default()
        });
        app.endpoints = vec![DbEndpoint {
            name: "writer".into(),
            target: Some("db2".into()),
            ..DbEndpoint::default()
        }];
        assert_eq!(
            Health::App(app.clone()).summary(),
            "app ready, db mariadb, reads ok, writes ok, writer → db2"
        );
        app.endpoints[0].target = None;
        assert!(Health::App(app).summary().ends_with("writer waiting"));
    }
}
