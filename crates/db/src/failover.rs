//! Who is primary, and what each db node must do about it: the pure core of failover.
//!
//! Architecture invariant: this module does no I/O and reads no clock. The agent
//! (`agent.rs`) feeds it observations of the local `mariadbd`, the replicated
//! [`ClusterState`] and the current time, and carries out the [`Action`]s it returns.
//!
//! The rules, each tested below:
//!
//! - **One record decides.** [`ClusterState`] is changed only by [`Command`]s applied in
//!   the order the consensus log (Raft, `raft.rs`) commits them. A promotion is a
//!   compare-and-set on the epoch, so two arbiters can never promote twice.
//! - **The primary holds a lease.** It renews it through the log every
//!   `lease / 4`; a renewal counts from the moment it was *sent*, and holds for
//!   `lease − margin`. The record keeps the log index of the last renewal it granted. A primary whose lease has run out stops writing
//!   (`read_only = 1`) — fencing — whether or not it can reach anyone.
//! - **A primary is dead when its lease has surely expired.** Renewals need a majority
//!   of db nodes, so a lease lapses only when a majority cannot reach the primary (or
//!   its `mariadbd` stopped answering); a replica whose replication thread stopped does
//!   not make it lapse. The arbiter (the Raft leader) counts from the moment *it*
//!   applied the last renewal, which is after it was sent, and waits `lease + margin`:
//!   by then the old primary has stopped writing for at least `2 × margin`.
//! - **A renewal after the decision voids it.** Between the arbiter seeing the lease
//!   expire and its promotion reaching the log (fencing, reading the replicas: up to
//!   seconds), a slow primary's renewal may still be granted: it then holds a fresh
//!   lease and writes. The promotion names the log index the arbiter had applied when
//!   it decided and is refused if a renewal was granted after it (found by `hastack
//!   drill all`: two primaries' histories diverged when a promotion overtook a
//!   renewal). A log index, not a count: every node agrees on it whatever snapshot it
//!   started from.
//! - **The replica that received the most is promoted,** and becomes writable only after
//!   it has applied everything it received (`MASTER_GTID_WAIT`), holds the lease, and —
//!   with `semi-sync-or-refuse` — a replica acknowledges its commits.
//! - **Everyone else is read-only** and follows the primary of the record; a node whose
//!   history diverged from it stays out, with the reason.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// The replicated record of who is primary.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    /// Bumped by every change of primary; 0 until the first primary is set.
    pub epoch: u64,
    /// The primary of this epoch.
    pub primary: Option<String>,
    /// The last failover.
    pub last_failover: Option<FailoverRecord>,
    /// The log index of the last renewal granted (0: none since this node's snapshot
    /// of an earlier version): what a promotion is decided against.
    #[serde(default)]
    pub last_renewal_at: u64,
}

impl ClusterState {
    /// Whether `other` names the same primary and failover: the last renewal aside,
    /// which moves every `lease / 4` and changes nobody's role.
    pub fn same_record(&self, other: &ClusterState) -> bool {
        self.epoch == other.epoch
            && self.primary == other.primary
            && self.last_failover == other.last_failover
    }
}

/// What a failover did: kept in the replicated record and shown as it is by `/healthz`,
/// `status` and the dashboard (one type, so the log's JSON and the wire's keys agree).
pub use hastack_status::health::Failover as FailoverRecord;

/// A change to the record, proposed through the consensus log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Sets the first primary (the topology's `db.primary`); only at epoch 0.
    Bootstrap {
        /// The initial primary.
        primary: String,
    },
    /// The primary renews its lease.
    Renew {
        /// The renewing node.
        node: String,
        /// The epoch it believes it is primary of.
        epoch: u64,
    },
    /// Makes `to` primary in place of `from`, if the record is still at `expected_epoch`
    /// and no renewal was granted after the arbiter decided.
    Promote {
        /// The epoch the arbiter decided on.
        expected_epoch: u64,
        /// The log index the arbiter had applied when it decided (`None` in entries
        /// written before this check existed: not checked, so they replay as applied).
        #[serde(default)]
        decided_at: Option<u64>,
        /// What happened.
        record: FailoverRecord,
    },
}

/// What applying a command did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Applied; for `Bootstrap` and `Promote` the primary changed, for `Renew` the lease
    /// was granted.
    Granted,
    /// Refused; the record is unchanged.
    Refused(String),
}

impl ClusterState {
    /// Applies `cmd`, the log's entry at index `at`, deterministically (every node
    /// applies the same commands in the same order and ends in the same state).
    pub fn apply(&mut self, at: u64, cmd: &Command) -> Outcome {
        match cmd {
            Command::Bootstrap { primary } => {
                if self.epoch != 0 {
                    return Outcome::Refused(format!(
                        "already bootstrapped (epoch {})",
                        self.epoch
                    ));
                }
                self.epoch = 1;
                self.primary = Some(primary.clone());
                Outcome::Granted
            }
            Command::Renew { node, epoch } => {
                if *epoch == self.epoch && self.primary.as_deref() == Some(node) {
                    self.last_renewal_at = at;
                    Outcome::Granted
                } else {
                    Outcome::Refused(format!(
                        "{node} is not the primary of epoch {epoch} (epoch {}, primary {})",
                        self.epoch,
                        self.primary.as_deref().unwrap_or("none")
                    ))
                }
            }
            Command::Promote {
                expected_epoch,
                decided_at,
                record,
            } => {
                if *expected_epoch != self.epoch
                    || self.primary.as_deref() != Some(record.from.as_str())
                {
                    return Outcome::Refused(format!(
                        "stale promotion: decided at epoch {expected_epoch} against {}, record is at epoch {} with primary {}",
                        record.from,
                        self.epoch,
                        self.primary.as_deref().unwrap_or("none")
                    ));
                }
                if let Some(decided_at) = decided_at
                    && self.last_renewal_at > *decided_at
                {
                    return Outcome::Refused(format!(
                        "{} renewed its lease after the failover was decided (renewal at log index {}, decided at {decided_at})",
                        record.from, self.last_renewal_at
                    ));
                }
                self.epoch += 1;
                self.primary = Some(record.to.clone());
                let mut record = record.clone();
                record.epoch = self.epoch;
                self.last_failover = Some(record);
                Outcome::Granted
            }
        }
    }
}

/// The lease's timing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// How long a renewal holds (`db.failover_lease`).
    pub lease: Duration,
    /// Safety between the holder's and the arbiter's view of the same lease.
    pub margin: Duration,
}

impl Timing {
    /// The timing of a lease of `lease`: a margin of a tenth of it (at least 20 ms).
    pub fn new(lease: Duration) -> Timing {
        Timing {
            lease,
            margin: (lease / 10).max(Duration::from_millis(20)),
        }
    }

    /// How often the primary renews: four chances within one lease.
    pub fn renew_every(&self) -> Duration {
        self.lease / 4
    }

    /// The arbiter's rule: the primary's lease has surely expired when a full lease plus
    /// the margin has passed since the arbiter applied the last grant.
    pub fn expired(&self, last_grant_applied: Instant, now: Instant) -> bool {
        now >= last_grant_applied + self.lease + self.margin
    }
}

/// The primary's side of the lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    timing: Timing,
    until: Option<Instant>,
}

impl Lease {
    /// No lease.
    pub fn new(timing: Timing) -> Lease {
        Lease {
            timing,
            until: None,
        }
    }

    /// A renewal sent at `sent_at` was granted: the lease holds until
    /// `sent_at + lease − margin`.
    pub fn granted(&mut self, sent_at: Instant) {
        let until = sent_at + self.timing.lease - self.timing.margin;
        self.until = Some(self.until.map_or(until, |u| u.max(until)));
    }

    /// The lease is gone (refused, or another node is primary).
    pub fn lost(&mut self) {
        self.until = None;
    }

    /// Whether writes may be accepted at `now`.
    pub fn valid(&self, now: Instant) -> bool {
        self.until.is_some_and(|u| now < u)
    }

    /// Until when, if held.
    pub fn until(&self) -> Option<Instant> {
        self.until
    }
}

/// A GTID position, `domain-server-seq` per domain, as MariaDB prints it
/// (`0-1-42,1-3-7`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GtidPos(BTreeMap<u32, (u32, u64)>);

impl GtidPos {
    /// Parses MariaDB's text; `None` if malformed. The empty string is the empty position.
    pub fn parse(text: &str) -> Option<GtidPos> {
        let mut map = BTreeMap::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let mut it = part.split('-');
            let domain = it.next()?.parse().ok()?;
            let server = it.next()?.parse().ok()?;
            let seq = it.next()?.parse().ok()?;
            if it.next().is_some() {
                return None;
            }
            map.insert(domain, (server, seq));
        }
        Some(GtidPos(map))
    }

    /// The sequence number in `domain` (0 if none).
    pub fn seq(&self, domain: u32) -> u64 {
        self.0.get(&domain).map_or(0, |&(_, s)| s)
    }

    /// The total of sequence numbers: orders positions that no domain-wise order does.
    fn total(&self) -> u64 {
        self.0.values().map(|&(_, s)| s).sum()
    }

    /// Domain-wise comparison: `Some(Greater)` when `self` has at least as much in every
    /// domain and more in one; `None` when each has more somewhere.
    pub fn compare(&self, other: &GtidPos) -> Option<Ordering> {
        let mut ord = Ordering::Equal;
        for d in self.0.keys().chain(other.0.keys()) {
            match (self.seq(*d).cmp(&other.seq(*d)), ord) {
                (Ordering::Equal, _) => {}
                (o, Ordering::Equal) => ord = o,
                (o, prev) if o != prev => return None,
                _ => {}
            }
        }
        Some(ord)
    }

    /// The larger of two positions in each domain.
    pub fn max(&self, other: &GtidPos) -> GtidPos {
        let mut out = self.clone();
        for (d, &(server, seq)) in &other.0 {
            let e = out.0.entry(*d).or_insert((server, seq));
            if seq > e.1 {
                *e = (server, seq);
            }
        }
        out
    }
}

impl std::fmt::Display for GtidPos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|(d, (s, n))| format!("{d}-{s}-{n}"))
            .collect();
        f.write_str(&parts.join(","))
    }
}

/// A replica as the arbiter sees it when choosing whom to promote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Node name.
    pub name: String,
    /// Its `mariadbd` answered (and its receiving thread was stopped).
    pub reachable: bool,
    /// Everything it has received: the larger of `Gtid_IO_Pos` and `gtid_current_pos`.
    pub received: GtidPos,
    /// Why it cannot be promoted (diverged, replication error), if so.
    pub excluded: Option<String>,
}

/// Why nobody can be promoted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no replica can be promoted: {0}")]
pub struct NoCandidate(pub String);

/// The replica to promote: reachable, not excluded, with the most received; ties go to
/// the first in topology order.
pub fn choose<'a>(candidates: &'a [Candidate], old: &str) -> Result<&'a Candidate, NoCandidate> {
    let mut why = Vec::new();
    let mut best: Option<&Candidate> = None;
    for c in candidates {
        if c.name == old {
            continue;
        }
        if !c.reachable {
            why.push(format!("{} unreachable", c.name));
            continue;
        }
        if let Some(reason) = &c.excluded {
            why.push(format!("{} {reason}", c.name));
            continue;
        }
        best = match best {
            None => Some(c),
            Some(b) => {
                let more = match c.received.compare(&b.received) {
                    Some(o) => o == Ordering::Greater,
                    None => c.received.total() > b.received.total(),
                };
                Some(if more { c } else { b })
            }
        };
    }
    best.ok_or_else(|| {
        NoCandidate(if why.is_empty() {
            "no other db node".into()
        } else {
            why.join(", ")
        })
    })
}

/// The local `mariadbd` as the agent last saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observation {
    /// `@@read_only`.
    pub read_only: bool,
    /// The host it replicates from, if replication is configured.
    pub master_host: Option<String>,
    /// `Slave_IO_Running` is `Yes` or `Connecting`.
    pub io_running: bool,
    /// `Slave_SQL_Running` is `Yes`.
    pub sql_running: bool,
    /// The replication error that means this node's history is not the primary's
    /// (IO error 1236 or any SQL error), if any.
    pub replication_error: Option<String>,
    /// `Rpl_semi_sync_master_clients`.
    pub semi_sync_clients: u32,
    /// `Rpl_semi_sync_master_status` is ON.
    pub semi_sync_on: bool,
}

/// How the primary treats writes when no replica acknowledges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WritePolicy {
    /// Refuse writes unless a replica acknowledges (semi-sync-or-refuse).
    NeedReplicaAck,
    /// Accept writes anyway (semi-sync-or-async), or there are no replicas at all.
    Always,
}

/// What the agent must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Stop writes: `read_only = 1` and end the application's sessions.
    Fence(&'static str),
    /// Accept writes: `read_only = 0`.
    Unfence,
    /// Propose a lease renewal for this epoch.
    Renew {
        /// The epoch.
        epoch: u64,
    },
    /// Become the primary of `epoch`: stop receiving, apply everything received
    /// (`MASTER_GTID_WAIT`), drop the replica configuration, turn on the semi-sync
    /// master side. Report completion with [`Node::prepared`].
    PrepareToLead {
        /// The epoch.
        epoch: u64,
    },
    /// Replicate from `primary` (GTID, from what this node has).
    Follow {
        /// The primary's node name.
        primary: String,
        /// The epoch.
        epoch: u64,
    },
    /// Stop replicating: this node's history diverged.
    StopReplication,
}

/// What this node is, as `status` shows it (`db_role`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeRole {
    /// The record has no primary yet.
    Waiting,
    /// The primary, accepting writes.
    Primary,
    /// The primary of the record, not (yet) accepting writes, and why.
    PrimaryNotWriting(String),
    /// A replica of the primary.
    Replica,
    /// Out of the replication set, and why.
    Out(String),
}

impl NodeRole {
    /// `primary`, `replica`, or the reason it is neither.
    pub fn label(&self) -> String {
        match self {
            NodeRole::Waiting => "waiting for the first primary".into(),
            NodeRole::Primary => "primary".into(),
            NodeRole::PrimaryNotWriting(why) => format!("primary (not writing: {why})"),
            NodeRole::Replica => "replica".into(),
            NodeRole::Out(why) => format!("out: {why}"),
        }
    }
}

/// One db node's failover state machine.
#[derive(Debug, Clone)]
pub struct Node {
    me: String,
    timing: Timing,
    policy: WritePolicy,
    lease: Lease,
    renew_sent: Option<Instant>,
    prepared_epoch: Option<u64>,
    following: Option<(String, u64)>,
    out: Option<String>,
    role: NodeRole,
    after_crash: bool,
    quarantine_until: Option<Instant>,
}

impl Node {
    /// The machine of node `me`.
    pub fn new(me: &str, timing: Timing, policy: WritePolicy) -> Node {
        Node::restarted(me, timing, policy, false)
    }

    /// The machine of node `me`, whose server last stopped by crashing
    /// (`after_crash`) when that is so. A node that crashed while primary does not
    /// resume as primary for three leases: crash recovery may have dropped the
    /// transactions at the tail of its binlog that no replica acknowledged, and a
    /// replica that received them is promoted instead. Only if none takes over does it
    /// resume.
    pub fn restarted(me: &str, timing: Timing, policy: WritePolicy, after_crash: bool) -> Node {
        Node {
            me: me.to_string(),
            timing,
            policy,
            lease: Lease::new(timing),
            renew_sent: None,
            prepared_epoch: None,
            following: None,
            out: None,
            role: NodeRole::Waiting,
            after_crash,
            quarantine_until: None,
        }
    }

    /// What the node is now.
    pub fn role(&self) -> &NodeRole {
        &self.role
    }

    /// The lease, if this node holds one.
    pub fn lease(&self) -> &Lease {
        &self.lease
    }

    /// A renewal sent at `sent_at` was answered: granted or refused.
    pub fn renewed(&mut self, sent_at: Instant, granted: bool) {
        if self.renew_sent == Some(sent_at) {
            self.renew_sent = None;
        }
        if granted {
            self.lease.granted(sent_at);
        } else {
            self.lease.lost();
        }
    }

    /// A renewal sent at `sent_at` got no answer (the consensus is unreachable).
    pub fn renew_failed(&mut self, sent_at: Instant) {
        if self.renew_sent == Some(sent_at) {
            self.renew_sent = None;
        }
    }

    /// `PrepareToLead { epoch }` is done.
    pub fn prepared(&mut self, epoch: u64) {
        self.prepared_epoch = Some(epoch);
    }

    /// `Follow` is done.
    pub fn followed(&mut self, primary: &str, epoch: u64) {
        self.following = Some((primary.to_string(), epoch));
    }

    /// The node was rebuilt or its operator cleared it: let it rejoin.
    pub fn clear_out(&mut self) {
        self.out = None;
    }

    /// One step. `obs` is `None` when the local `mariadbd` did not answer.
    pub fn tick(
        &mut self,
        now: Instant,
        state: &ClusterState,
        obs: Option<&Observation>,
    ) -> Vec<Action> {
        let mut actions = Vec::new();
        let Some(obs) = obs else {
            // Nothing can be done to a server that does not answer; the lease runs out
            // by itself because no renewal is sent.
            self.role = NodeRole::Out("mariadbd does not answer".into());
            return actions;
        };
        let fence = |actions: &mut Vec<Action>, why| {
            if !obs.read_only {
                actions.push(Action::Fence(why));
            }
        };
        let Some(primary) = state.primary.clone() else {
            fence(&mut actions, "no primary has been chosen yet");
            self.role = NodeRole::Waiting;
            return actions;
        };

        if self.after_crash && self.quarantine_until.is_none() {
            self.quarantine_until = Some(now + 3 * self.timing.lease);
        }
        if primary == self.me {
            self.following = None;
            if self.prepared_epoch != Some(state.epoch)
                && self.quarantine_until.is_some_and(|u| now < u)
            {
                fence(&mut actions, "restarted after a crash");
                self.role = NodeRole::PrimaryNotWriting(
                    "restarted after a crash: a replica that may have more takes over".into(),
                );
                return actions;
            }
            if self.prepared_epoch != Some(state.epoch) {
                fence(&mut actions, "promoted, still applying what it received");
                actions.push(Action::PrepareToLead { epoch: state.epoch });
                self.role = NodeRole::PrimaryNotWriting("applying its relay log".into());
                return actions;
            }
            let renew_due = self.lease.until().is_none_or(|u| {
                now + self.timing.lease - self.timing.margin >= u + self.timing.renew_every()
            });
            if renew_due && self.renew_sent.is_none() {
                self.renew_sent = Some(now);
                actions.push(Action::Renew { epoch: state.epoch });
            }
            if !self.lease.valid(now) {
                fence(&mut actions, "lease not held");
                self.role = NodeRole::PrimaryNotWriting(
                    "no lease: a majority of db nodes does not confirm it".into(),
                );
                return actions;
            }
            if self.policy == WritePolicy::NeedReplicaAck
                && (obs.semi_sync_clients == 0 || !obs.semi_sync_on)
            {
                fence(&mut actions, "no replica acknowledges");
                self.role = NodeRole::PrimaryNotWriting(
                    "no replica acknowledges writes (durability = semi-sync-or-refuse)".into(),
                );
                return actions;
            }
            if obs.read_only {
                actions.push(Action::Unfence);
            }
            self.role = NodeRole::Primary;
            return actions;
        }

        // Another node is primary.
        self.quarantine_until = Some(now);
        self.lease.lost();
        self.prepared_epoch = None;
        fence(&mut actions, "another node is primary");
        if let Some(why) = &self.out {
            self.role = NodeRole::Out(why.clone());
            return actions;
        }
        if let Some(err) = &obs.replication_error
            && self.following.as_ref().is_some_and(|(p, _)| *p == primary)
        {
            let why = format!(
                "its history diverged from {primary}'s ({err}); run `hastack db rebuild {}`",
                self.me
            );
            self.out = Some(why.clone());
            actions.push(Action::StopReplication);
            self.role = NodeRole::Out(why);
            return actions;
        }
        if self.following != Some((primary.clone(), state.epoch)) {
            actions.push(Action::Follow {
                primary,
                epoch: state.epoch,
            });
        }
        self.role = NodeRole::Replica;
        actions
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn timing() -> Timing {
        Timing::new(ms(600))
    }

    fn state(epoch: u64, primary: &str) -> ClusterState {
        ClusterState {
            epoch,
            primary: Some(primary.into()),
            last_failover: None,
            last_renewal_at: 0,
        }
    }

    fn record(from: &str, to: &str) -> FailoverRecord {
        FailoverRecord {
            from: from.into(),
            to: to.into(),
            epoch: 0,
            at_unix_ms: 0,
            detected_after_ms: 0,
            fencing: "lease expired".into(),
            gtid: String::new(),
        }
    }

    fn obs(read_only: bool) -> Observation {
        Observation {
            read_only,
            semi_sync_clients: 1,
            semi_sync_on: true,
            ..Observation::default()
        }
    }

    fn pos(s: &str) -> GtidPos {
        GtidPos::parse(s).expect("gtid")
    }

    /// A log: applies commands at increasing indices, as the consensus does.
    struct Log {
        state: ClusterState,
        at: u64,
    }

    impl Log {
        fn of(state: ClusterState) -> Log {
            Log { state, at: 100 }
        }

        fn apply(&mut self, cmd: &Command) -> Outcome {
            self.at += 1;
            self.state.apply(self.at, cmd)
        }
    }

    #[test]
    fn bootstrap_happens_once() {
        let mut s = Log::of(ClusterState::default());
        assert_eq!(
            s.apply(&Command::Bootstrap {
                primary: "db1".into()
            }),
            Outcome::Granted
        );
        assert_eq!(
            (s.state.epoch, s.state.primary.as_deref()),
            (1, Some("db1"))
        );
        assert!(
            matches!(
                s.apply(&Command::Bootstrap {
                    primary: "db2".into()
                }),
                Outcome::Refused(_)
            ),
            "the topology's primary is only the initial one: a restart must not reset the record"
        );
        assert_eq!(s.state.primary.as_deref(), Some("db1"));
    }

    #[test]
    fn only_the_primary_of_the_current_epoch_renews() {
        let mut s = Log::of(state(3, "db2"));
        let renew = |node: &str, epoch| Command::Renew {
            node: node.into(),
            epoch,
        };
        assert_eq!(s.apply(&renew("db2", 3)), Outcome::Granted);
        assert_eq!(s.state.last_renewal_at, s.at);
        assert!(
            matches!(s.apply(&renew("db1", 3)), Outcome::Refused(_)),
            "a node that is not the primary gets no lease"
        );
        assert!(
            matches!(s.apply(&renew("db2", 2)), Outcome::Refused(_)),
            "a renewal from an old epoch (sent before a failover) is refused"
        );
        assert_eq!(
            s.state.last_renewal_at,
            s.at - 2,
            "a refused renewal is no renewal"
        );
    }

    #[test]
    fn a_promotion_is_a_compare_and_set_on_the_epoch() {
        let mut s = Log::of(state(1, "db1"));
        let promote = |epoch, from: &str, to: &str| Command::Promote {
            expected_epoch: epoch,
            decided_at: None,
            record: record(from, to),
        };
        assert_eq!(s.apply(&promote(1, "db1", "db2")), Outcome::Granted);
        assert_eq!(
            (s.state.epoch, s.state.primary.as_deref()),
            (2, Some("db2"))
        );
        assert_eq!(s.state.last_failover.as_ref().map(|r| r.epoch), Some(2));
        assert!(
            matches!(s.apply(&promote(1, "db1", "db3")), Outcome::Refused(_)),
            "a second arbiter deciding on the same epoch must not promote again"
        );
        assert!(
            matches!(s.apply(&promote(2, "db1", "db3")), Outcome::Refused(_)),
            "a promotion against a node that is no longer primary is stale"
        );
        assert_eq!(s.state.primary.as_deref(), Some("db2"));
    }

    #[test]
    fn a_renewal_granted_after_the_decision_voids_the_promotion() {
        // Rule: a renewal after the decision voids it.
        let mut s = Log::of(state(4, "db2"));
        let renew = Command::Renew {
            node: "db2".into(),
            epoch: 4,
        };
        assert_eq!(s.apply(&renew), Outcome::Granted);
        // The arbiter decides with everything up to here applied.
        let decided_at = s.at;
        let promote = Command::Promote {
            expected_epoch: 4,
            decided_at: Some(decided_at),
            record: record("db2", "db3"),
        };
        // The slow primary's renewal reaches the log before the promotion.
        assert_eq!(s.apply(&renew), Outcome::Granted);
        assert!(
            matches!(s.apply(&promote), Outcome::Refused(ref why) if why.contains("renewed its lease")),
            "a primary holding a fresh lease is not replaced"
        );
        assert_eq!(
            (s.state.epoch, s.state.primary.as_deref()),
            (4, Some("db2"))
        );
        // Decided after the last renewal, it goes through; the old primary's next
        // renewal is refused.
        let promote = Command::Promote {
            expected_epoch: 4,
            decided_at: Some(s.at),
            record: record("db2", "db3"),
        };
        assert_eq!(s.apply(&promote), Outcome::Granted);
        assert!(matches!(s.apply(&renew), Outcome::Refused(_)));
        // The last renewal does not change who is primary.
        let mut t = s.state.clone();
        t.last_renewal_at += 7;
        assert!(s.state.same_record(&t));
    }

    #[test]
    fn nodes_started_from_different_snapshots_decide_a_promotion_alike() {
        // Rule: a log index, not a count: a node restored from a snapshot of an earlier
        // version knows no renewal before it (0), another replayed the whole log; both
        // must grant or refuse the same promotion.
        let old_snapshot = r#"{"epoch":4,"primary":"db2","last_failover":null}"#;
        let restored: ClusterState = serde_json::from_str(old_snapshot).expect("old state");
        assert_eq!(restored.last_renewal_at, 0);
        let mut replayed = state(4, "db2");
        replayed.last_renewal_at = 90;
        let renew = Command::Renew {
            node: "db2".into(),
            epoch: 4,
        };
        for (decided_at, renewal_between) in [(100, false), (100, true)] {
            let mut nodes = [Log::of(restored.clone()), Log::of(replayed.clone())];
            let mut outcomes = Vec::new();
            for n in &mut nodes {
                if renewal_between {
                    n.apply(&renew);
                }
                outcomes.push(n.apply(&Command::Promote {
                    expected_epoch: 4,
                    decided_at: Some(decided_at),
                    record: record("db2", "db3"),
                }));
            }
            assert_eq!(outcomes[0], outcomes[1], "decided at {decided_at}");
            assert!(nodes[0].state.same_record(&nodes[1].state));
            assert_eq!(outcomes[0] == Outcome::Granted, !renewal_between);
        }
    }

    #[test]
    fn a_promotion_written_before_the_check_replays_as_applied() {
        // An old log entry has no decision index: deserialized as None, not checked.
        let old = r#"{"Promote":{"expected_epoch":1,"record":{"from":"db1","to":"db2","epoch":0,"at_unix_ms":0,"detected_after_ms":0,"fencing":"lease expired","gtid":""}}}"#;
        let cmd: Command = serde_json::from_str(old).expect("old entry");
        let mut s = state(1, "db1");
        s.last_renewal_at = 1_000;
        assert_eq!(s.apply(1_001, &cmd), Outcome::Granted);
    }

    #[test]
    fn the_holder_stops_writing_before_the_arbiter_may_promote() {
        let t = timing();
        let t0 = Instant::now();
        let mut lease = Lease::new(t);
        lease.granted(t0);
        // The arbiter applies the grant after it was sent; even at once:
        let applied = t0;
        let holder_stops = lease.until().expect("held");
        let mut at = t0;
        while !t.expired(applied, at) {
            at += ms(1);
        }
        assert!(
            holder_stops + 2 * t.margin <= at,
            "the old primary stops writing at least 2 × margin before anyone is promoted"
        );
        assert!(lease.valid(holder_stops - ms(1)));
        assert!(
            !lease.valid(holder_stops),
            "no writes once the lease ran out"
        );
    }

    #[test]
    fn a_late_answer_does_not_shorten_a_later_grant() {
        let mut lease = Lease::new(timing());
        let t0 = Instant::now();
        lease.granted(t0 + ms(150));
        lease.granted(t0);
        assert_eq!(lease.until(), Some(t0 + ms(150) + ms(540)));
    }

    #[test]
    fn gtid_positions_compare_by_domain() {
        assert_eq!(pos("0-1-5").compare(&pos("0-2-4")), Some(Ordering::Greater));
        assert_eq!(pos("0-1-5").compare(&pos("0-1-5")), Some(Ordering::Equal));
        assert_eq!(pos("").compare(&pos("0-1-1")), Some(Ordering::Less));
        assert_eq!(pos("0-1-5,1-2-1").compare(&pos("0-1-4,1-2-3")), None);
        assert_eq!(pos("0-1-5,1-2-9").to_string(), "0-1-5,1-2-9");
        assert_eq!(pos("0-1-5").max(&pos("0-2-7,1-1-1")), pos("0-2-7,1-1-1"));
        assert_eq!(GtidPos::parse("0-1"), None);
        assert_eq!(GtidPos::parse("a-b-c"), None);
    }

    fn cand(name: &str, received: &str) -> Candidate {
        Candidate {
            name: name.into(),
            reachable: true,
            received: pos(received),
            excluded: None,
        }
    }

    #[test]
    fn the_replica_that_received_the_most_is_promoted() {
        let c = [
            cand("db1", "0-1-99"),
            cand("db2", "0-1-40"),
            cand("db3", "0-1-42"),
        ];
        assert_eq!(
            choose(&c, "db1").map(|c| c.name.as_str()),
            Ok("db3"),
            "the dead primary is never a candidate; the most received wins"
        );
        let tie = [cand("db2", "0-1-42"), cand("db3", "0-1-42")];
        assert_eq!(choose(&tie, "db1").map(|c| c.name.as_str()), Ok("db2"));
    }

    #[test]
    fn unreachable_or_diverged_replicas_are_not_promoted() {
        let mut c = [cand("db2", "0-1-50"), cand("db3", "0-1-42")];
        c[0].reachable = false;
        assert_eq!(choose(&c, "db1").map(|c| c.name.as_str()), Ok("db3"));
        c[1].excluded = Some("diverged".into());
        let err = choose(&c, "db1").expect_err("nobody");
        assert!(err.0.contains("db2 unreachable") && err.0.contains("db3 diverged"));
    }

    #[test]
    fn every_node_is_read_only_until_a_primary_is_chosen() {
        let mut n = Node::new("db1", timing(), WritePolicy::NeedReplicaAck);
        let acts = n.tick(Instant::now(), &ClusterState::default(), Some(&obs(false)));
        assert_eq!(acts, vec![Action::Fence("no primary has been chosen yet")]);
        assert_eq!(n.role(), &NodeRole::Waiting);
    }

    #[test]
    fn a_promoted_replica_writes_only_after_applying_its_relay_log_and_holding_the_lease() {
        let now = Instant::now();
        let mut n = Node::new("db2", timing(), WritePolicy::NeedReplicaAck);
        let s = state(2, "db2");
        assert_eq!(
            n.tick(now, &s, Some(&obs(true))),
            vec![Action::PrepareToLead { epoch: 2 }],
            "first apply what was received (MASTER_GTID_WAIT), writes stay off"
        );
        n.prepared(2);
        assert_eq!(
            n.tick(now, &s, Some(&obs(true))),
            vec![Action::Renew { epoch: 2 }],
            "prepared, but no lease yet: renew, do not unfence"
        );
        n.renewed(now, true);
        assert_eq!(
            n.tick(now + ms(1), &s, Some(&obs(true))),
            vec![Action::Unfence]
        );
        assert_eq!(n.role(), &NodeRole::Primary);
    }

    #[test]
    fn a_primary_that_cannot_renew_fences_itself() {
        let t0 = Instant::now();
        let mut n = Node::new("db1", timing(), WritePolicy::Always);
        let s = state(1, "db1");
        n.prepared(1);
        let _ = n.tick(t0, &s, Some(&obs(true)));
        n.renewed(t0, true);
        assert_eq!(n.tick(t0, &s, Some(&obs(true))), vec![Action::Unfence]);
        // Renewals go out but never come back (the node is cut off).
        let mut at = t0;
        let mut fenced_at = None;
        while at < t0 + ms(1000) {
            at += ms(10);
            for a in n.tick(at, &s, Some(&obs(false))) {
                match a {
                    Action::Renew { .. } => n.renew_failed(at),
                    Action::Fence(_) => {
                        fenced_at.get_or_insert(at);
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
        let fenced_at = fenced_at.expect("fenced");
        assert!(
            fenced_at <= t0 + timing().lease - timing().margin,
            "fenced at {:?}, the lease held until {:?}",
            fenced_at - t0,
            timing().lease - timing().margin
        );
    }

    #[test]
    fn renewals_go_out_four_times_a_lease_and_one_at_a_time() {
        let t0 = Instant::now();
        let mut n = Node::new("db1", timing(), WritePolicy::Always);
        let s = state(1, "db1");
        n.prepared(1);
        assert_eq!(
            n.tick(t0, &s, Some(&obs(true))),
            vec![Action::Renew { epoch: 1 }]
        );
        assert_eq!(
            n.tick(t0 + ms(10), &s, Some(&obs(true))),
            vec![],
            "no second renewal while one is in flight (and no lease yet: no writes)"
        );
        n.renewed(t0, true);
        assert_eq!(
            n.tick(t0 + ms(20), &s, Some(&obs(true))),
            vec![Action::Unfence]
        );
        assert!(
            !n.tick(t0 + ms(100), &s, Some(&obs(false)))
                .contains(&Action::Renew { epoch: 1 })
        );
        assert!(
            n.tick(t0 + ms(150), &s, Some(&obs(false)))
                .contains(&Action::Renew { epoch: 1 }),
            "renewed every lease / 4"
        );
    }

    #[test]
    fn semi_sync_or_refuse_stops_writes_while_no_replica_acknowledges() {
        let t0 = Instant::now();
        let mut n = Node::new("db1", timing(), WritePolicy::NeedReplicaAck);
        let s = state(1, "db1");
        n.prepared(1);
        let _ = n.tick(t0, &s, Some(&obs(true)));
        n.renewed(t0, true);
        let alone = Observation {
            semi_sync_clients: 0,
            ..obs(false)
        };
        assert_eq!(
            n.tick(t0 + ms(1), &s, Some(&alone)),
            vec![Action::Fence("no replica acknowledges")]
        );
        assert!(matches!(n.role(), NodeRole::PrimaryNotWriting(_)));
        let fell_back = Observation {
            semi_sync_on: false,
            ..obs(false)
        };
        assert_eq!(
            n.tick(t0 + ms(2), &s, Some(&fell_back)),
            vec![Action::Fence("no replica acknowledges")],
            "semi-sync that went asynchronous is not an acknowledgement"
        );
        let mut lax = Node::new("db1", timing(), WritePolicy::Always);
        lax.prepared(1);
        let _ = lax.tick(t0, &s, Some(&obs(true)));
        lax.renewed(t0, true);
        assert_eq!(
            lax.tick(
                t0 + ms(1),
                &s,
                Some(&Observation {
                    read_only: true,
                    ..alone
                })
            ),
            vec![Action::Unfence],
            "semi-sync-or-async writes anyway"
        );
    }

    #[test]
    fn a_deposed_primary_fences_at_once_and_follows_the_new_one() {
        let t0 = Instant::now();
        let mut n = Node::new("db1", timing(), WritePolicy::Always);
        n.prepared(1);
        let _ = n.tick(t0, &state(1, "db1"), Some(&obs(true)));
        n.renewed(t0, true);
        let acts = n.tick(t0 + ms(1), &state(2, "db2"), Some(&obs(false)));
        assert_eq!(
            acts,
            vec![
                Action::Fence("another node is primary"),
                Action::Follow {
                    primary: "db2".into(),
                    epoch: 2
                }
            ]
        );
        assert!(
            !n.lease().valid(t0 + ms(1)),
            "its lease is gone with the epoch"
        );
        n.followed("db2", 2);
        assert_eq!(
            n.tick(t0 + ms(2), &state(2, "db2"), Some(&obs(true))),
            vec![]
        );
        assert_eq!(n.role(), &NodeRole::Replica);
    }

    #[test]
    fn a_diverged_node_stays_out_with_the_reason() {
        let t0 = Instant::now();
        let mut n = Node::new("db1", timing(), WritePolicy::Always);
        let s = state(2, "db2");
        let _ = n.tick(t0, &s, Some(&obs(true)));
        n.followed("db2", 2);
        let broken = Observation {
            replication_error: Some("1236: GTID 0-1-77 is not in the master's binlog".into()),
            ..obs(true)
        };
        assert_eq!(n.tick(t0, &s, Some(&broken)), vec![Action::StopReplication]);
        let NodeRole::Out(why) = n.role().clone() else {
            panic!("not out: {:?}", n.role())
        };
        assert!(why.contains("diverged from db2") && why.contains("hastack db rebuild db1"));
        assert_eq!(
            n.tick(t0, &s, Some(&obs(true))),
            vec![],
            "it stays out: no attempt to follow again"
        );
        n.clear_out();
        assert_eq!(
            n.tick(t0, &state(3, "db3"), Some(&obs(true))),
            vec![Action::Follow {
                primary: "db3".into(),
                epoch: 3
            }]
        );
    }

    #[test]
    fn a_replica_follows_again_after_every_change_of_epoch() {
        let t0 = Instant::now();
        let mut n = Node::new("db3", timing(), WritePolicy::Always);
        let _ = n.tick(t0, &state(1, "db1"), Some(&obs(true)));
        n.followed("db1", 1);
        assert_eq!(
            n.tick(t0, &state(2, "db2"), Some(&obs(true))),
            vec![Action::Follow {
                primary: "db2".into(),
                epoch: 2
            }]
        );
    }

    #[test]
    fn a_primary_back_from_a_crash_lets_a_replica_take_over_and_resumes_only_if_none_does() {
        let t0 = Instant::now();
        let s = state(4, "db1");
        let mut n = Node::restarted("db1", timing(), WritePolicy::Always, true);
        assert_eq!(
            n.tick(t0, &s, Some(&obs(true))),
            vec![],
            "no renewal, no promotion steps: its lease lapses and a replica is promoted"
        );
        assert!(matches!(n.role(), NodeRole::PrimaryNotWriting(_)));
        assert_eq!(
            n.tick(t0 + ms(1799), &s, Some(&obs(false))),
            vec![Action::Fence("restarted after a crash")]
        );
        assert_eq!(
            n.tick(t0 + ms(1800), &s, Some(&obs(true))),
            vec![Action::PrepareToLead { epoch: 4 }],
            "after three leases with nobody taking over, it resumes"
        );
        let mut clean = Node::restarted("db1", timing(), WritePolicy::Always, false);
        assert_eq!(
            clean.tick(t0, &s, Some(&obs(true))),
            vec![Action::PrepareToLead { epoch: 4 }],
            "after a clean stop the primary resumes at once"
        );
    }
}
