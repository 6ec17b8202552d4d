//! Which MariaDB node is the primary and which replicas may serve reads, learnt from the
//! db nodes themselves, never from the topology file alone.
//!
//! The db tier keeps one invariant: at any moment at most one node has
//! `@@global.read_only = 0`, and that node is the primary (every node starts read-only;
//! a fenced or old primary is read-only). The monitor ([`monitor`]) asks every db node
//! every [`PROBE_INTERVAL`], all at once, each probe bounded by [`PROBE_TIMEOUT`]:
//! `SELECT @@global.read_only` and, for a read-only node, `SHOW SLAVE STATUS`. A write
//! that fails in a way that says the primary moved asks for a probe at once
//! ([`Cluster::reprobe`]). [`decide`] turns the answers into a [`View`]; it is a pure
//! function of the probe results and the lag bound, so its rules are tested by tables.
//!
//! The rules:
//! - exactly one writable node is the primary; two or more is a broken invariant, and
//!   then there is **no** primary (writing to either could fork the data);
//! - a read-only node serves reads while its replication SQL thread runs and its lag is
//!   within `db.max_replica_lag`; an IO thread that is reconnecting (the primary just
//!   died) does not stop it: reads never depend on the primary.
//!
//! The probes run over connections made like the pools' (over TLS with `tls.internal`).
//! When it opens one, the monitor asks the session's cipher (`Ssl_cipher`), so the view
//! shows whether the app's sessions are encrypted ([`View::db_tls`]) at no cost per
//! request.

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use sqlx::mysql::{MySqlConnectOptions, MySqlConnection, MySqlPool};
use sqlx::{Connection, Executor, Row};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tracing::{error, info, warn};

use crate::metrics::{AppMetrics, NodeLabel};
use crate::store::Limits;

/// Time between two probes of the db nodes.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(100);

/// A node that takes longer to answer a probe is unreachable.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(300);

/// The state of a read-only node's replication IO thread (`Slave_IO_Running`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoThread {
    /// `Yes`: connected to its primary.
    Running,
    /// `Connecting` (or `Preparing`): trying to reach its primary.
    Connecting,
    /// `No`: stopped.
    Stopped,
}

/// A read-only node's replication, from `SHOW SLAVE STATUS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replication {
    /// Not asked (the node is writable).
    NotAsked,
    /// No replication configured (an empty `SHOW SLAVE STATUS`).
    NotConfigured,
    /// The replication threads.
    Threads {
        /// `Slave_IO_Running`.
        io: IoThread,
        /// `Slave_SQL_Running = Yes`.
        sql_running: bool,
        /// `Seconds_Behind_Master` (`NULL` when the server cannot tell).
        seconds_behind: Option<u64>,
    },
    /// `SHOW SLAVE STATUS` failed, e.g. the app's account lacks `SLAVE MONITOR`.
    Unknown(String),
}

/// What one probe of one db node found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// No answer (refused, timed out, lost connection…), with the reason.
    Unreachable(String),
    /// The node answered.
    Answered {
        /// `@@global.read_only`.
        read_only: bool,
        /// Its replication (read-only nodes only).
        replication: Replication,
    },
}

/// What the app may do with one db node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeState {
    /// The writable primary: writes, and reads when no replica can.
    Primary,
    /// A replica that serves reads.
    Replica {
        /// Seconds behind its primary, when known.
        lag_s: Option<u64>,
    },
    /// A node that answered but must not be used.
    Excluded {
        /// Why.
        reason: String,
        /// Seconds behind its primary, when known.
        lag_s: Option<u64>,
    },
    /// A node that did not answer.
    Unreachable {
        /// Why.
        reason: String,
    },
}

impl NodeState {
    /// `"ok"` for a node in use, else why not.
    pub fn status(&self) -> String {
        match self {
            NodeState::Primary | NodeState::Replica { .. } => "ok".to_string(),
            NodeState::Excluded { reason, .. } => reason.clone(),
            NodeState::Unreachable { reason } => format!("unreachable: {reason}"),
        }
    }

    /// Seconds behind the primary, when known.
    pub fn lag_s(&self) -> Option<u64> {
        match self {
            NodeState::Primary => Some(0),
            NodeState::Replica { lag_s } | NodeState::Excluded { lag_s, .. } => *lag_s,
            NodeState::Unreachable { .. } => None,
        }
    }

    fn same_kind(&self, other: &NodeState) -> bool {
        std::mem::discriminant(self) == std::mem::discriminant(other)
    }
}

/// [`decide`]'s answer: the primary (an index into the probes) and each node's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The one writable node, if there is exactly one.
    pub primary: Option<usize>,
    /// Every node's state, in probe order.
    pub states: Vec<NodeState>,
}

/// Turns one round of probes into who is primary and who serves reads.
pub fn decide(probes: &[Probe], max_lag: Duration) -> Decision {
    let writable: Vec<usize> = probes
        .iter()
        .enumerate()
        .filter(|(_, p)| {
            matches!(
                p,
                Probe::Answered {
                    read_only: false,
                    ..
                }
            )
        })
        .map(|(i, _)| i)
        .collect();
    let primary = match writable.as_slice() {
        [one] => Some(*one),
        _ => None,
    };
    let states = probes
        .iter()
        .map(|probe| match probe {
            Probe::Unreachable(reason) => NodeState::Unreachable {
                reason: reason.clone(),
            },
            Probe::Answered {
                read_only: false, ..
            } => {
                if primary.is_some() {
                    NodeState::Primary
                } else {
                    NodeState::Excluded {
                        reason: format!(
                            "writable along with {} other node(s): none is the primary",
                            writable.len() - 1
                        ),
                        lag_s: None,
                    }
                }
            }
            Probe::Answered {
                read_only: true,
                replication,
            } => replica_state(replication, max_lag, primary.is_some()),
        })
        .collect::<Vec<NodeState>>();
    let mut states = states;
    // Last resort for reads: with no primary and no replica to read from, a read-only
    // server that replicates from nobody is a primary that fenced itself (say, refusing
    // writes while no replica acknowledges): it has the newest data.
    let readable = |s: &NodeState| matches!(s, NodeState::Primary | NodeState::Replica { .. });
    if !states.iter().any(readable) {
        for (state, probe) in states.iter_mut().zip(probes) {
            if matches!(
                probe,
                Probe::Answered {
                    read_only: true,
                    replication: Replication::NotConfigured,
                }
            ) {
                *state = NodeState::Replica { lag_s: None };
            }
        }
    }
    Decision { primary, states }
}

fn replica_state(replication: &Replication, max_lag: Duration, have_primary: bool) -> NodeState {
    let excluded = |reason: String, lag_s| NodeState::Excluded { reason, lag_s };
    match replication {
        Replication::NotAsked => excluded("read-only".into(), None),
        Replication::NotConfigured => excluded("read-only and not replicating".into(), None),
        Replication::Unknown(e) => excluded(format!("replication state unknown: {e}"), None),
        Replication::Threads {
            sql_running: false,
            seconds_behind,
            ..
        } => excluded("replication SQL thread stopped".into(), *seconds_behind),
        Replication::Threads {
            seconds_behind: Some(lag),
            ..
        } if Duration::from_secs(*lag) > max_lag => excluded(
            format!(
                "{lag} s behind the primary (at most {} s allowed)",
                max_lag.as_secs_f64()
            ),
            Some(*lag),
        ),
        Replication::Threads {
            io: IoThread::Stopped,
            seconds_behind: None,
            ..
        } if have_primary => excluded(
            "replication IO thread stopped: its lag is unknown".into(),
            None,
        ),
        Replication::Threads { seconds_behind, .. } => NodeState::Replica {
            lag_s: *seconds_behind,
        },
    }
}

/// One db node as the view shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    /// The node's name.
    pub name: String,
    /// What the app may do with it.
    pub state: NodeState,
}

/// What the app knows of the db tier after a probe round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    /// Probe rounds completed (0: none yet, nothing is known).
    pub round: u64,
    /// The primary, an index into `nodes`.
    pub primary: Option<usize>,
    /// Every db node, in topology order.
    pub nodes: Vec<NodeView>,
    /// The TLS cipher of the app's session with the primary (or, with none, with the
    /// first node that answered); `None` when that session is not encrypted or there is
    /// none.
    pub db_tls: Option<String>,
}

impl View {
    /// The view before any probe: no primary, no readable node.
    pub fn unknown(names: &[String]) -> View {
        View {
            round: 0,
            primary: None,
            nodes: names
                .iter()
                .map(|n| NodeView {
                    name: n.clone(),
                    state: NodeState::Unreachable {
                        reason: "not probed yet".into(),
                    },
                })
                .collect(),
            db_tls: None,
        }
    }

    /// The view of probe round `round` of nodes `names` (as many as `probes`).
    pub fn from_probes(round: u64, names: &[String], probes: &[Probe], max_lag: Duration) -> View {
        let d = decide(probes, max_lag);
        View {
            round,
            primary: d.primary,
            nodes: names
                .iter()
                .zip(d.states)
                .map(|(name, state)| NodeView {
                    name: name.clone(),
                    state,
                })
                .collect(),
            db_tls: None,
        }
    }

    /// The primary's name.
    pub fn primary_name(&self) -> Option<&str> {
        self.primary
            .and_then(|i| self.nodes.get(i))
            .map(|n| n.name.as_str())
    }

    /// The replicas that serve reads, in topology order.
    pub fn readers(&self) -> impl Iterator<Item = usize> + '_ {
        self.nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| matches!(n.state, NodeState::Replica { .. }))
            .map(|(i, _)| i)
    }

    /// Whether node `i` may serve a read (a replica in use, or the primary).
    pub fn serves_reads(&self, i: usize) -> bool {
        self.nodes
            .get(i)
            .is_some_and(|n| matches!(n.state, NodeState::Replica { .. } | NodeState::Primary))
    }

    /// Whether node `i` answered the last probe.
    pub fn answers(&self, i: usize) -> bool {
        self.nodes
            .get(i)
            .is_some_and(|n| !matches!(n.state, NodeState::Unreachable { .. }))
    }

    /// Whether node `i` is the primary.
    pub fn is_primary(&self, i: usize) -> bool {
        self.primary == Some(i)
    }

    /// Whether some node can serve a read.
    pub fn can_read(&self) -> bool {
        self.primary.is_some() || self.readers().next().is_some()
    }

    /// Why there is no primary, in one line.
    pub fn why_no_primary(&self) -> String {
        if self.round == 0 {
            return "the database nodes have not been probed yet".into();
        }
        let each: Vec<String> = self
            .nodes
            .iter()
            .map(|n| match &n.state {
                NodeState::Primary => format!("{}: primary", n.name),
                NodeState::Replica { .. } => format!("{}: read-only", n.name),
                other => format!("{}: {}", n.name, other.status()),
            })
            .collect();
        each.join("; ")
    }
}

/// One db node: its name, the pool the app's queries use, and how to reach it for probes.
#[derive(Debug)]
pub(crate) struct DbNode {
    pub(crate) name: String,
    pub(crate) pool: MySqlPool,
    pub(crate) probe_options: MySqlConnectOptions,
}

/// The MariaDB tier as one app node sees it: a pool per node and the monitor's view.
#[derive(Debug)]
pub(crate) struct Cluster {
    pub(crate) nodes: Vec<DbNode>,
    pub(crate) view: watch::Sender<Arc<View>>,
    reprobe: Notify,
    /// Round-robin cursor over the readable replicas.
    pub(crate) next: AtomicUsize,
    pub(crate) limits: Limits,
    pub(crate) metrics: AppMetrics,
}

impl Cluster {
    pub(crate) fn new(nodes: Vec<DbNode>, limits: Limits, metrics: AppMetrics) -> Cluster {
        let names: Vec<String> = nodes.iter().map(|n| n.name.clone()).collect();
        let (view, _) = watch::channel(Arc::new(View::unknown(&names)));
        Cluster {
            nodes,
            view,
            reprobe: Notify::new(),
            next: AtomicUsize::new(0),
            limits,
            metrics,
        }
    }

    /// Asks the monitor for a probe round now rather than at the next tick.
    pub(crate) fn reprobe(&self) {
        self.reprobe.notify_one();
    }

    /// Waits until a view of a round after `newer_than` (any round when `None`) names a
    /// primary, or until `deadline`; returns the primary and that round.
    pub(crate) async fn wait_for_primary(
        &self,
        newer_than: Option<u64>,
        deadline: Instant,
    ) -> Option<(usize, u64)> {
        let mut rx = self.view.subscribe();
        loop {
            {
                let v = rx.borrow_and_update();
                if newer_than.is_none_or(|r| v.round > r)
                    && let Some(p) = v.primary
                {
                    return Some((p, v.round));
                }
            }
            if !matches!(
                tokio::time::timeout_at(deadline, rx.changed()).await,
                Ok(Ok(()))
            ) {
                return None;
            }
        }
    }

    /// The view, once some node can serve reads or `deadline` has passed.
    pub(crate) async fn wait_until_readable(&self, deadline: Instant) -> Arc<View> {
        let mut rx = self.view.subscribe();
        loop {
            {
                let v = rx.borrow_and_update();
                if v.can_read() {
                    return Arc::clone(&v);
                }
            }
            if !matches!(
                tokio::time::timeout_at(deadline, rx.changed()).await,
                Ok(Ok(()))
            ) {
                return Arc::clone(&rx.borrow());
            }
        }
    }

    /// Publishes a probe round and the TLS cipher of each node's probe session (`None`
    /// when plain or not connected), logging what changed.
    pub(crate) fn publish(&self, probes: &[Probe], ciphers: &[Option<String>]) {
        let old = self.view.borrow().clone();
        let names: Vec<String> = self.nodes.iter().map(|n| n.name.clone()).collect();
        let mut new = View::from_probes(old.round + 1, &names, probes, self.limits.max_replica_lag);
        let session = new
            .primary
            .or_else(|| (0..new.nodes.len()).find(|&i| new.answers(i)));
        new.db_tls = session.and_then(|i| ciphers.get(i).cloned().flatten());
        if new.db_tls != old.db_tls && session.is_some() {
            match &new.db_tls {
                Some(cipher) => info!(cipher, "sessions with the db nodes are encrypted (TLS)"),
                None => info!("sessions with the db nodes are not encrypted"),
            }
        }
        log_changes(&old, &new);
        if old.primary != new.primary || old.round == 0 {
            for (i, n) in new.nodes.iter().enumerate() {
                self.metrics
                    .primary
                    .get_or_create(&NodeLabel::new(&n.name))
                    .set(i64::from(new.primary == Some(i)));
            }
        }
        self.view.send_replace(Arc::new(new));
    }
}

fn log_changes(old: &View, new: &View) {
    let writable: Vec<&str> = new
        .nodes
        .iter()
        .filter(|n| match &n.state {
            NodeState::Primary => true,
            NodeState::Excluded { reason, .. } => reason.starts_with("writable"),
            _ => false,
        })
        .map(|n| n.name.as_str())
        .collect();
    if old.primary != new.primary || old.round == 0 {
        match new.primary_name() {
            Some(p) => info!(primary = p, "writing to the db primary"),
            None if writable.len() > 1 => error!(
                nodes = ?writable,
                "more than one db node is writable: writing to none of them"
            ),
            None => warn!(nodes = %new.why_no_primary(), "no writable db primary"),
        }
    }
    for (o, n) in old.nodes.iter().zip(&new.nodes) {
        if o.state.same_kind(&n.state) || matches!(n.state, NodeState::Primary) {
            continue;
        }
        match &n.state {
            NodeState::Replica { lag_s } => info!(node = %n.name, ?lag_s, "replica serves reads"),
            other => {
                if old.round > 0 || !matches!(other, NodeState::Unreachable { .. }) {
                    warn!(node = %n.name, status = %other.status(), "db node not used for reads");
                }
            }
        }
    }
}

/// Probes every db node every [`PROBE_INTERVAL`] (or at once when asked) and publishes
/// the view, until `shutdown` turns true.
pub(crate) async fn monitor(cluster: Arc<Cluster>, mut shutdown: watch::Receiver<bool>) {
    let mut conns: Vec<Option<ProbeConn>> = cluster.nodes.iter().map(|_| None).collect();
    let mut ticker =
        tokio::time::interval_at(tokio::time::Instant::now() + PROBE_INTERVAL, PROBE_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if *shutdown.borrow() {
            break;
        }
        let mut set = tokio::task::JoinSet::new();
        for (i, node) in cluster.nodes.iter().enumerate() {
            let options = node.probe_options.clone();
            let conn = conns[i].take();
            set.spawn(async move {
                let (conn, probe) = probe_node(&options, conn).await;
                (i, conn, probe)
            });
        }
        let mut probes: Vec<Probe> = cluster
            .nodes
            .iter()
            .map(|_| Probe::Unreachable("probe failed".into()))
            .collect();
        while let Some(joined) = set.join_next().await {
            match joined {
                Ok((i, conn, probe)) => {
                    conns[i] = conn;
                    probes[i] = probe;
                }
                Err(e) => error!(error = %e, "a db probe task failed"),
            }
        }
        let ciphers: Vec<Option<String>> = conns
            .iter()
            .map(|c| c.as_ref().and_then(|c| c.tls_cipher.clone()))
            .collect();
        cluster.publish(&probes, &ciphers);
        tokio::select! {
            changed = shutdown.changed() => {
                if changed.is_err() {
                    break;
                }
            }
            _ = ticker.tick() => {}
            _ = cluster.reprobe.notified() => {}
        }
    }
}

/// A probe connection and its session's TLS cipher (`None`: not encrypted).
struct ProbeConn {
    conn: MySqlConnection,
    tls_cipher: Option<String>,
}

/// Opens a probe connection and asks its cipher, once: it holds for the session.
async fn connect(options: &MySqlConnectOptions) -> Result<ProbeConn, String> {
    let mut conn = MySqlConnection::connect_with(options)
        .await
        .map_err(|e| e.to_string())?;
    let tls_cipher = match conn
        .fetch_optional("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
        .await
    {
        Ok(row) => row
            .and_then(|r| r.try_get_unchecked::<Option<String>, _>(1).ok().flatten())
            .filter(|c| !c.is_empty()),
        Err(sqlx::Error::Database(_)) => None,
        Err(e) => return Err(e.to_string()),
    };
    Ok(ProbeConn { conn, tls_cipher })
}

/// One probe of one node over its probe connection (made if there is none, dropped
/// on failure), bounded by [`PROBE_TIMEOUT`].
async fn probe_node(
    options: &MySqlConnectOptions,
    conn: Option<ProbeConn>,
) -> (Option<ProbeConn>, Probe) {
    match tokio::time::timeout(PROBE_TIMEOUT, probe_inner(options, conn)).await {
        Ok(found) => found,
        Err(_) => (
            None,
            Probe::Unreachable(format!("no answer within {PROBE_TIMEOUT:?}")),
        ),
    }
}

async fn probe_inner(
    options: &MySqlConnectOptions,
    conn: Option<ProbeConn>,
) -> (Option<ProbeConn>, Probe) {
    let mut conn = match conn {
        Some(c) => c,
        None => match connect(options).await {
            Ok(c) => c,
            Err(e) => return (None, Probe::Unreachable(e)),
        },
    };
    // Plain-text queries (no prepared statement): every value comes back as text.
    let read_only = match conn.conn.fetch_one("SELECT @@global.read_only").await {
        Ok(row) => match row.try_get_unchecked::<Option<String>, _>(0) {
            Ok(v) => parse_read_only(v.as_deref()),
            Err(e) => return (Some(conn), Probe::Unreachable(e.to_string())),
        },
        Err(e) => return (None, Probe::Unreachable(e.to_string())),
    };
    if !read_only {
        return (
            Some(conn),
            Probe::Answered {
                read_only,
                replication: Replication::NotAsked,
            },
        );
    }
    let replication = match conn.conn.fetch_optional("SHOW SLAVE STATUS").await {
        Ok(None) => Replication::NotConfigured,
        Ok(Some(row)) => replication_from_row(&row),
        // The server answered with an error (e.g. a missing privilege): keep the link.
        Err(sqlx::Error::Database(e)) => Replication::Unknown(e.to_string()),
        Err(e) => return (None, Probe::Unreachable(e.to_string())),
    };
    (
        Some(conn),
        Probe::Answered {
            read_only,
            replication,
        },
    )
}

/// `@@global.read_only` as text: `0`/`1`, or `OFF`/`ON`/`NO_LOCK`… in newer MariaDB.
/// Anything unexpected counts as read-only: a node is never written by mistake.
pub fn parse_read_only(value: Option<&str>) -> bool {
    !matches!(
        value.map(|v| v.trim().to_ascii_uppercase()).as_deref(),
        Some("0" | "OFF")
    )
}

fn replication_from_row(row: &sqlx::mysql::MySqlRow) -> Replication {
    let text = |names: &[&str]| {
        names
            .iter()
            .find_map(|n| row.try_get_unchecked::<Option<String>, _>(*n).ok())
            .flatten()
    };
    let io = text(&["Slave_IO_Running", "Replica_IO_Running"]);
    let sql = text(&["Slave_SQL_Running", "Replica_SQL_Running"]);
    let behind = text(&["Seconds_Behind_Master", "Seconds_Behind_Source"]);
    replication_from_text(io.as_deref(), sql.as_deref(), behind.as_deref())
}

/// The replication threads from `SHOW SLAVE STATUS`'s text columns.
pub fn replication_from_text(
    io: Option<&str>,
    sql: Option<&str>,
    seconds_behind: Option<&str>,
) -> Replication {
    let io = match io.map(str::trim) {
        Some(v) if v.eq_ignore_ascii_case("yes") => IoThread::Running,
        Some(v) if v.eq_ignore_ascii_case("connecting") || v.eq_ignore_ascii_case("preparing") => {
            IoThread::Connecting
        }
        _ => IoThread::Stopped,
    };
    Replication::Threads {
        io,
        sql_running: sql.is_some_and(|v| v.trim().eq_ignore_ascii_case("yes")),
        seconds_behind: seconds_behind.and_then(|v| v.trim().parse().ok()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX_LAG: Duration = Duration::from_secs(5);

    fn writable() -> Probe {
        Probe::Answered {
            read_only: false,
            replication: Replication::NotAsked,
        }
    }

    fn replica(io: IoThread, sql_running: bool, lag: Option<u64>) -> Probe {
        Probe::Answered {
            read_only: true,
            replication: Replication::Threads {
                io,
                sql_running,
                seconds_behind: lag,
            },
        }
    }

    fn down() -> Probe {
        Probe::Unreachable("connection refused".into())
    }

    /// `P`: primary, `R`: serves reads, `x`: excluded, `-`: unreachable.
    fn summary(d: &Decision) -> String {
        d.states
            .iter()
            .map(|s| match s {
                NodeState::Primary => 'P',
                NodeState::Replica { .. } => 'R',
                NodeState::Excluded { .. } => 'x',
                NodeState::Unreachable { .. } => '-',
            })
            .collect()
    }

    #[test]
    fn who_is_primary_and_who_serves_reads() {
        use IoThread::*;
        let cases: Vec<(&str, Vec<Probe>, Option<usize>, &str)> = vec![
            (
                "healthy tier",
                vec![
                    writable(),
                    replica(Running, true, Some(0)),
                    replica(Running, true, Some(5)),
                ],
                Some(0),
                "PRR",
            ),
            (
                "the primary moved to the last node",
                vec![
                    replica(Running, true, Some(0)),
                    replica(Running, true, Some(1)),
                    writable(),
                ],
                Some(2),
                "RRP",
            ),
            (
                "a primary refusing writes (read-only, replicating from nobody) serves reads when no replica can",
                vec![
                    Probe::Answered {
                        read_only: true,
                        replication: Replication::NotConfigured,
                    },
                    replica(Stopped, false, None),
                    down(),
                ],
                None,
                "Rx-",
            ),
            (
                "primary dead: replicas reconnecting still serve reads",
                vec![
                    down(),
                    replica(Connecting, true, None),
                    replica(Connecting, true, None),
                ],
                None,
                "-RR",
            ),
            (
                "primary dead, IO threads stopped: replicas still serve reads",
                vec![
                    down(),
                    replica(Stopped, true, None),
                    replica(Connecting, true, None),
                ],
                None,
                "-RR",
            ),
            (
                "IO thread stopped with a primary alive: lag unknown, not used",
                vec![
                    writable(),
                    replica(Stopped, true, None),
                    replica(Running, true, Some(0)),
                ],
                Some(0),
                "PxR",
            ),
            (
                "every node starts read-only: no primary, replicas that replicate read",
                vec![
                    Probe::Answered {
                        read_only: true,
                        replication: Replication::NotConfigured,
                    },
                    replica(Connecting, true, None),
                    down(),
                ],
                None,
                "xR-",
            ),
            (
                "two writable nodes: no primary, neither used",
                vec![writable(), writable(), replica(Running, true, Some(0))],
                None,
                "xxR",
            ),
            (
                "three writable nodes: no primary",
                vec![writable(), writable(), writable()],
                None,
                "xxx",
            ),
            (
                "lag above the bound excludes, at the bound serves",
                vec![
                    writable(),
                    replica(Running, true, Some(6)),
                    replica(Running, true, Some(5)),
                ],
                Some(0),
                "PxR",
            ),
            (
                "SQL thread stopped excludes",
                vec![
                    writable(),
                    replica(Running, false, Some(0)),
                    replica(Running, true, None),
                ],
                Some(0),
                "PxR",
            ),
            (
                "replication state unknown (missing privilege) excludes",
                vec![
                    writable(),
                    Probe::Answered {
                        read_only: true,
                        replication: Replication::Unknown("access denied".into()),
                    },
                ],
                Some(0),
                "Px",
            ),
            ("nothing answers", vec![down(), down(), down()], None, "---"),
            ("one node, writable", vec![writable()], Some(0), "P"),
            ("no nodes", vec![], None, ""),
        ];
        for (what, probes, primary, want) in cases {
            let d = decide(&probes, MAX_LAG);
            assert_eq!(d.primary, primary, "{what}");
            assert_eq!(summary(&d), want, "{what}");
        }
    }

    #[test]
    fn lag_bound_is_inclusive_and_reported() {
        let d = decide(
            &[writable(), replica(IoThread::Running, true, Some(9))],
            Duration::from_secs(8),
        );
        assert_eq!(d.states[1].lag_s(), Some(9));
        assert!(
            d.states[1].status().contains("9 s behind"),
            "{:?}",
            d.states[1]
        );
        let d = decide(
            &[writable(), replica(IoThread::Running, true, Some(8))],
            Duration::from_secs(8),
        );
        assert_eq!(d.states[1], NodeState::Replica { lag_s: Some(8) });
        assert_eq!(d.states[1].status(), "ok");
    }

    #[test]
    fn view_answers_from_the_decision() {
        let names: Vec<String> = ["db1", "db2", "db3"].map(String::from).to_vec();
        let v = View::unknown(&names);
        assert!(!v.can_read());
        assert_eq!(v.primary_name(), None);
        assert!(v.why_no_primary().contains("not been probed"));

        let v = View::from_probes(
            7,
            &names,
            &[
                down(),
                replica(IoThread::Connecting, true, None),
                writable(),
            ],
            MAX_LAG,
        );
        assert_eq!(v.round, 7);
        assert_eq!(v.primary_name(), Some("db3"));
        assert_eq!(v.readers().collect::<Vec<_>>(), vec![1]);
        assert!(v.serves_reads(1) && v.serves_reads(2) && !v.serves_reads(0));
        assert!(!v.answers(0) && v.answers(1));
        assert!(v.can_read());

        let v = View::from_probes(8, &names, &[down(), down(), writable()], MAX_LAG);
        assert!(v.can_read(), "the primary alone serves reads");
        let v = View::from_probes(9, &names, &[writable(), writable(), down()], MAX_LAG);
        assert!(!v.can_read());
        let why = v.why_no_primary();
        assert!(
            why.contains("db1: writable") && why.contains("db3: unreachable"),
            "{why}"
        );
    }

    #[test]
    fn server_text_is_parsed_conservatively() {
        assert!(!parse_read_only(Some("0")));
        assert!(!parse_read_only(Some("OFF")));
        assert!(parse_read_only(Some("1")));
        assert!(parse_read_only(Some("ON")));
        assert!(parse_read_only(Some("NO_LOCK")));
        assert!(parse_read_only(None));
        assert!(parse_read_only(Some("garbage")));

        assert_eq!(
            replication_from_text(Some("Yes"), Some("Yes"), Some("3")),
            Replication::Threads {
                io: IoThread::Running,
                sql_running: true,
                seconds_behind: Some(3)
            }
        );
        assert_eq!(
            replication_from_text(Some("Connecting"), Some("Yes"), None),
            Replication::Threads {
                io: IoThread::Connecting,
                sql_running: true,
                seconds_behind: None
            }
        );
        assert_eq!(
            replication_from_text(Some("No"), Some("No"), Some("")),
            Replication::Threads {
                io: IoThread::Stopped,
                sql_running: false,
                seconds_behind: None
            }
        );
        assert_eq!(
            replication_from_text(None, None, None),
            Replication::Threads {
                io: IoThread::Stopped,
                sql_running: false,
                seconds_behind: None
            }
        );
    }
}
