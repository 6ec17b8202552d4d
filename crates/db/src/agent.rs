//! The db node's agent: the I/O around the pure failover core (`failover.rs`).
//!
//! Two loops run in every db node:
//!
//! - **the reconciler** observes the local `mariadbd` every tick (read-only flag,
//!   replication threads and errors, semi-sync), feeds [`failover::Node`] with it and the
//!   replicated [`ClusterState`], and carries out what it returns: fence and unfence,
//!   renew the lease through the consensus, prepare to lead (apply the relay log, drop
//!   the replica configuration, turn on the semi-sync master side), follow a primary;
//! - **the arbiter** acts only while this node leads the consensus: it sets the first
//!   primary, and when the primary's lease has surely expired it fences the old primary
//!   if it can still reach its `mariadbd`, stops every replica's receiving thread, picks
//!   the one that received the most ([`failover::choose`]) and commits its promotion.
//!
//! What the node shows on `/healthz` is the reconciler's last [`Snapshot`], so a health
//! check costs no query.
//!
//! With `tls.internal`, every TCP connection the agent makes or configures runs over
//! TLS with the node's certificate of the internal CA, verifying the other side's
//! against it: its own connections to other nodes' `mariadbd` (fencing, failover) and
//! the replication `CHANGE MASTER`. The reconciler notices a re-issued certificate
//! (the file replaced) and has the local `mariadbd` re-read it (`FLUSH LOCAL SSL`).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use sqlx::Row;
use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions, MySqlSslMode};
use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};

use hastack_config::{Durability, Topology};

use crate::failover::{
    self, Action, Candidate, ClusterState, Command, FailoverRecord, GtidPos, Observation, Outcome,
    Timing,
};
use crate::lock;
use crate::mycnf::{TlsFiles, sql_string};
use crate::raft::{self, Raft, Shared};

/// How often the reconciler and the arbiter look.
const TICK: Duration = Duration::from_millis(50);
/// How long the first leader waits for the topology's primary to join before it starts
/// with another node as primary.
const BOOTSTRAP_GRACE: Duration = Duration::from_secs(30);
/// After this process starts, how long the arbiter waits for the record's primary to
/// renew before failing it over: when the whole tier restarts, the primary's server may
/// simply be slower to start than the others. A primary that renewed while this process
/// ran is failed over on the lease alone.
const RESTART_GRACE: Duration = Duration::from_secs(10);
/// Bound of one query the agent makes.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the reconciler looks whether the node's certificate was re-issued.
const CERT_CHECK: Duration = Duration::from_secs(3);

/// One db node of the topology, as the agent addresses it.
#[derive(Debug, Clone)]
pub struct Peer {
    /// Node name.
    pub name: String,
    /// Consensus id (position in the db tier, from 1).
    pub id: u64,
    /// `mariadbd`'s address.
    pub host: String,
    /// `mariadbd`'s port.
    pub port: u16,
}

/// What the agent needs to know.
#[derive(Debug, Clone)]
pub struct Settings {
    /// This node.
    pub me: Peer,
    /// Every db node, this one included, in topology order.
    pub peers: Vec<Peer>,
    /// The topology's initial primary.
    pub initial_primary: String,
    /// Lease timing.
    pub timing: Timing,
    /// Durability setting.
    pub durability: Durability,
    /// Semi-sync timeout for `semi-sync-or-async`.
    pub semi_sync_timeout: Duration,
    /// The replication account's password.
    pub repl_password: String,
    /// hastack's admin password (the same on every node).
    pub admin_password: String,
    /// The application's database user (whose sessions a fence ends).
    pub app_user: String,
    /// The server's last stop was a crash, not a clean shutdown.
    pub after_crash: bool,
    /// TLS between db nodes (`tls.internal`): this node's certificate of the internal
    /// CA; `None`: plain.
    pub tls: Option<TlsFiles>,
}

impl Settings {
    /// The settings of db node `name` of `topo`.
    pub fn new(
        topo: &Topology,
        name: &str,
        secrets: &hastack_runtime::secrets::DbSecrets,
    ) -> Option<Settings> {
        let peers: Vec<Peer> = topo
            .tier(hastack_config::Role::Db)
            .enumerate()
            .map(|(i, n)| Peer {
                name: n.name.clone(),
                id: i as u64 + 1,
                host: n.address.to_string(),
                port: topo.ports.db,
            })
            .collect();
        let me = peers.iter().find(|p| p.name == name)?.clone();
        Some(Settings {
            me,
            peers,
            initial_primary: topo.db.primary.clone(),
            timing: Timing::new(topo.db.failover_lease),
            durability: topo.db.durability,
            semi_sync_timeout: topo.db.semi_sync_timeout,
            repl_password: secrets.repl.clone(),
            admin_password: secrets.admin.clone(),
            app_user: topo.db.user.clone(),
            after_crash: false,
            tls: None,
        })
    }

    fn write_policy(&self) -> failover::WritePolicy {
        if self.durability == Durability::SemiSyncOrRefuse && self.peers.len() > 1 {
            failover::WritePolicy::NeedReplicaAck
        } else {
            failover::WritePolicy::Always
        }
    }

    /// `rpl_semi_sync_master_timeout` in ms: with semi-sync-or-refuse a commit waits
    /// (the agent fences the primary as soon as no replica is connected, and the app's
    /// own query timeout answers the client); otherwise the configured fallback.
    pub fn semi_sync_timeout_ms(&self) -> u64 {
        match self.durability {
            Durability::SemiSyncOrRefuse => 3_600_000,
            Durability::SemiSyncOrAsync => self.semi_sync_timeout.as_millis() as u64,
        }
    }
}

/// What the node shows on `/healthz` and `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// `mariadbd` answered the last observation.
    pub answering: bool,
    /// What the node is; `None` until the agent's first look.
    pub role: Option<failover::NodeRole>,
    /// The last observation.
    pub observation: Observation,
    /// More of it, for people (`None` until the first look, and when the last failed).
    pub detail: Option<hastack_status::health::DbObservation>,
    /// Why the last look failed.
    pub error: Option<String>,
    /// The replicated record.
    pub cluster: ClusterState,
    /// The consensus leader's name, if known.
    pub leader: Option<String>,
    /// Milliseconds of lease left, on the primary.
    pub lease_left_ms: Option<u64>,
    /// Fences carried out by this node (on itself or, as arbiter, on an old primary).
    pub fences: u64,
    /// Failovers this node decided as arbiter.
    pub failovers: u64,
}

/// The agent's shared view, read by `/healthz`.
pub type SharedSnapshot = Arc<Mutex<Snapshot>>;

/// How to reach a peer's `mariadbd` over TCP as hastack's admin account: with `tls`,
/// over TLS with this node's certificate, the peer's verified against the CA and its
/// address (the certificate's IP SAN). The files are read at each new connection, so
/// a re-issued certificate is picked up.
fn admin_options(p: &Peer, password: &str, tls: Option<&TlsFiles>) -> MySqlConnectOptions {
    let opts = MySqlConnectOptions::new()
        .host(&p.host)
        .port(p.port)
        .username("hastack_admin")
        .password(password);
    match tls {
        Some(t) => opts
            .ssl_mode(MySqlSslMode::VerifyIdentity)
            .ssl_ca(&t.ca)
            .ssl_client_cert(&t.cert)
            .ssl_client_key(&t.key),
        None => opts,
    }
}

/// A pool to a peer's `mariadbd` over TCP as hastack's admin account.
fn peer_pool(p: &Peer, password: &str, tls: Option<&TlsFiles>) -> MySqlPool {
    let opts = admin_options(p, password, tls);
    MySqlPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_millis(500))
        .connect_lazy_with(opts)
}

async fn bounded<T>(
    what: &str,
    f: impl std::future::Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, String> {
    match tokio::time::timeout(QUERY_TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => Err(format!("{what}: no answer within {QUERY_TIMEOUT:?}")),
    }
}

async fn exec(pool: &MySqlPool, sql: &str) -> Result<(), String> {
    bounded(sql, sqlx::raw_sql(sql).execute(pool))
        .await
        .map(|_| ())
}

/// Replication status of a server: `(Gtid_IO_Pos, replication error, io running, sql
/// running, master host, seconds behind)`.
struct SlaveStatus {
    master_host: String,
    io_running: bool,
    sql_running: bool,
    gtid_io_pos: String,
    io_errno: u32,
    io_error: String,
    sql_errno: u32,
    sql_error: String,
    seconds_behind: Option<u64>,
}

impl SlaveStatus {
    /// The error that means this server's history is not its master's.
    fn divergence(&self) -> Option<String> {
        if self.io_errno == 1236 {
            Some(format!("{}: {}", self.io_errno, self.io_error))
        } else if self.sql_errno != 0 {
            Some(format!("{}: {}", self.sql_errno, self.sql_error))
        } else {
            None
        }
    }
}

async fn slave_status(pool: &MySqlPool) -> Result<Option<SlaveStatus>, String> {
    let row = bounded(
        "SHOW SLAVE STATUS",
        sqlx::query("SHOW SLAVE STATUS").fetch_optional(pool),
    )
    .await?;
    Ok(row.map(|s| {
        let text = |col: &str| s.try_get::<String, _>(col).unwrap_or_default();
        let num = |col: &str| s.try_get::<u32, _>(col).unwrap_or(0);
        SlaveStatus {
            master_host: text("Master_Host"),
            io_running: matches!(text("Slave_IO_Running").as_str(), "Yes" | "Connecting"),
            sql_running: text("Slave_SQL_Running") == "Yes",
            gtid_io_pos: text("Gtid_IO_Pos"),
            io_errno: num("Last_IO_Errno"),
            io_error: text("Last_IO_Error"),
            sql_errno: num("Last_SQL_Errno"),
            sql_error: text("Last_SQL_Error"),
            seconds_behind: s
                .try_get::<Option<u64>, _>("Seconds_Behind_Master")
                .ok()
                .flatten(),
        }
    }))
}

/// The semi-sync master side's `(clients, status is ON)`, in one query.
async fn semi_sync_status(pool: &MySqlPool) -> Result<(u32, bool), String> {
    let rows: Vec<(String, String)> = bounded(
        "semi-sync status",
        sqlx::query_as(
            "SHOW GLOBAL STATUS WHERE Variable_name IN \
             ('Rpl_semi_sync_master_clients', 'Rpl_semi_sync_master_status')",
        )
        .fetch_all(pool),
    )
    .await?;
    let value = |name: &str| {
        rows.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    Ok((
        value("Rpl_semi_sync_master_clients")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        value("Rpl_semi_sync_master_status") == Some("ON"),
    ))
}

/// Looks at the local server.
async fn observe(
    pool: &MySqlPool,
) -> Result<(Observation, hastack_status::health::DbObservation), String> {
    let row = bounded(
        "SELECT @@read_only",
        sqlx::query(
            "SELECT @@global.read_only AS ro, @@gtid_current_pos AS pos, @@gtid_binlog_pos AS bpos, @@rpl_semi_sync_master_enabled AS ssm",
        )
        .fetch_one(pool),
    )
    .await?;
    let read_only = row.try_get::<i64, _>("ro").unwrap_or(1) != 0;
    let pos: String = row.try_get("pos").unwrap_or_default();
    let bpos: String = row.try_get("bpos").unwrap_or_default();
    let master_side = row.try_get::<i64, _>("ssm").unwrap_or(0) != 0;
    let slave = slave_status(pool).await?;
    let (clients, semi_on) = if master_side {
        semi_sync_status(pool).await?
    } else {
        (0, false)
    };
    let detail = hastack_status::health::DbObservation {
        read_only,
        gtid_current_pos: pos,
        gtid_binlog_pos: bpos,
        semi_sync: master_side.then(|| if semi_on { "ON" } else { "OFF" }.to_string()),
        semi_sync_clients: master_side.then_some(u64::from(clients)),
        replication: slave.as_ref().map(|s| hastack_status::health::Replication {
            master_host: s.master_host.clone(),
            io_running: if s.io_running { "Yes" } else { "No" }.into(),
            sql_running: if s.sql_running { "Yes" } else { "No" }.into(),
            seconds_behind_master: s.seconds_behind,
            gtid_io_pos: s.gtid_io_pos.clone(),
            last_error: s.divergence().unwrap_or_default(),
        }),
    };
    let obs = Observation {
        read_only,
        master_host: slave.as_ref().map(|s| s.master_host.clone()),
        io_running: slave.as_ref().is_some_and(|s| s.io_running),
        sql_running: slave.as_ref().is_some_and(|s| s.sql_running),
        replication_error: slave.as_ref().and_then(SlaveStatus::divergence),
        semi_sync_clients: clients,
        semi_sync_on: semi_on,
    };
    Ok((obs, detail))
}

/// Makes the server read-only, then ends the application's sessions.
///
/// The order is the safety argument. MariaDB commits a killed session locally when the
/// kill lands after its transaction reached the binary log and before a replica
/// acknowledged it (the semi-sync wait), which would leave this server with a
/// transaction no replica has, and the node could not rejoin. `SET GLOBAL read_only`
/// waits for every commit in progress (the backup-commit lock, acknowledgement wait
/// included), and a commit that starts after it is refused. So once it returns no
/// session is inside a commit and the kills only roll back. A commit still waiting for
/// an acknowledgement holds the fence back (new writes wait behind it); if the server
/// dies meanwhile, crash recovery drops it (`init_rpl_role = SLAVE`).
async fn fence(pool: &MySqlPool, app_user: &str) -> Result<(), String> {
    exec(pool, "SET GLOBAL read_only = 1").await?;
    // The sessions end so that the app's pools reconnect to the primary that is chosen.
    // A session in the acknowledgement wait is never killed, whatever the above.
    let ids: Vec<i64> = bounded(
        "processlist",
        sqlx::query_scalar(
            "SELECT ID FROM information_schema.PROCESSLIST WHERE USER = ? AND ID <> CONNECTION_ID() \
             AND COALESCE(STATE, '') NOT LIKE '%semi-sync%'",
        )
        .bind(app_user)
        .fetch_all(pool),
    )
    .await?;
    for id in ids {
        // A session that ended by itself meanwhile is fine.
        let _ = exec(pool, &format!("KILL CONNECTION {id}")).await;
    }
    Ok(())
}

/// The `CHANGE MASTER` that makes this server replicate from `primary`. With `tls`, the
/// replica connects over TLS with its node's certificate and verifies the primary's
/// against the CA and its address; without, plain (said explicitly: the settings of an
/// earlier `CHANGE MASTER` would otherwise stay).
fn change_master(primary: &Peer, repl_password: &str, tls: Option<&TlsFiles>) -> String {
    let ssl = match tls {
        Some(t) => format!(
            "MASTER_SSL=1, MASTER_SSL_CA={}, MASTER_SSL_CERT={}, MASTER_SSL_KEY={}, \
             MASTER_SSL_VERIFY_SERVER_CERT=1",
            sql_string(&t.ca.display().to_string()),
            sql_string(&t.cert.display().to_string()),
            sql_string(&t.key.display().to_string()),
        ),
        None => "MASTER_SSL=0, MASTER_SSL_VERIFY_SERVER_CERT=0".to_string(),
    };
    format!(
        "CHANGE MASTER TO MASTER_HOST={}, MASTER_PORT={}, MASTER_USER='hastack_repl', MASTER_PASSWORD={}, \
         MASTER_USE_GTID=current_pos, MASTER_CONNECT_RETRY=1, MASTER_HEARTBEAT_PERIOD=0.5, {ssl}",
        sql_string(&primary.host),
        primary.port,
        sql_string(repl_password)
    )
}

/// Notices when the node's certificate (or the CA) is replaced on disk: the files are
/// re-issued by a rename, so their inode and modification time change.
struct CertWatch {
    files: Vec<PathBuf>,
    /// What the files were when the server last (re-)read them; `None`: not known.
    seen: Option<Vec<Option<(u64, SystemTime)>>>,
    next: Instant,
}

impl CertWatch {
    fn new(tls: &TlsFiles) -> CertWatch {
        CertWatch {
            files: vec![tls.cert.clone(), tls.key.clone(), tls.ca.clone()],
            seen: None,
            next: Instant::now(),
        }
    }

    fn stamp(&self) -> Vec<Option<(u64, SystemTime)>> {
        use std::os::unix::fs::MetadataExt;
        self.files
            .iter()
            .map(|f| {
                let m = std::fs::metadata(f).ok()?;
                Some((m.ino(), m.modified().ok()?))
            })
            .collect()
    }

    /// At most every [`CERT_CHECK`]: the files' stamp when they changed since they were
    /// last read (or never were, by this watch), to pass to [`CertWatch::read`] once
    /// the server has re-read them.
    fn changed(&mut self, now: Instant) -> Option<Vec<Option<(u64, SystemTime)>>> {
        if now < self.next {
            return None;
        }
        self.next = now + CERT_CHECK;
        let stamp = self.stamp();
        (self.seen.as_ref() != Some(&stamp)).then_some(stamp)
    }

    fn read(&mut self, stamp: Vec<Option<(u64, SystemTime)>>) {
        self.seen = Some(stamp);
    }
}

/// The agent of one db node.
pub struct Agent {
    settings: Settings,
    local: MySqlPool,
    raft: Raft,
    cluster: watch::Receiver<ClusterState>,
    shared: Arc<Mutex<Shared>>,
    snapshot: SharedSnapshot,
    fencing: Arc<std::sync::atomic::AtomicBool>,
}

impl Agent {
    /// An agent over the local server (`local`, admin over the socket) and the consensus.
    pub fn new(
        settings: Settings,
        local: MySqlPool,
        raft: Raft,
        cluster: watch::Receiver<ClusterState>,
        shared: Arc<Mutex<Shared>>,
    ) -> Agent {
        Agent {
            settings,
            local,
            raft,
            cluster,
            shared,
            snapshot: Arc::new(Mutex::new(Snapshot::default())),
            fencing: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        }
    }

    /// The view `/healthz` reads.
    pub fn snapshot(&self) -> SharedSnapshot {
        self.snapshot.clone()
    }

    fn peer(&self, name: &str) -> Option<&Peer> {
        self.settings.peers.iter().find(|p| p.name == name)
    }

    fn leader_name(&self) -> Option<String> {
        let id = self.raft.metrics().borrow().current_leader?;
        self.settings
            .peers
            .iter()
            .find(|p| p.id == id)
            .map(|p| p.name.clone())
    }

    /// Runs both loops until `shutdown`; on the way out a primary fences itself.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let this = Arc::new(self);
        let arbiter = tokio::spawn(this.clone().arbiter(shutdown.clone()));
        this.clone().reconciler(&mut shutdown).await;
        arbiter.abort();
        let is_primary = this.cluster.borrow().primary.as_deref() == Some(&this.settings.me.name);
        if is_primary {
            match fence(&this.local, &this.settings.app_user).await {
                Ok(()) => info!("stopping: fenced (read_only = 1) before leaving"),
                Err(e) => warn!(error = %e, "stopping: could not fence"),
            }
        }
    }

    async fn reconciler(self: Arc<Self>, shutdown: &mut watch::Receiver<bool>) {
        let mut machine = failover::Node::restarted(
            &self.settings.me.name,
            self.settings.timing,
            self.settings.write_policy(),
            self.settings.after_crash && self.settings.peers.len() > 1,
        );
        // Renewal answers: (sent at, granted? or None when undecided).
        let (renew_tx, mut renew_rx) = mpsc::unbounded_channel::<(Instant, Option<bool>)>();
        let mut ticker = tokio::time::interval(TICK);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut cluster = self.cluster.clone();
        let mut last_role = None;
        let mut pending = Vec::new();
        let mut last_semi = None;
        let mut last_leader: Option<String> = None;
        let mut certs = self.settings.tls.as_ref().map(CertWatch::new);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = ticker.tick() => {}
                _ = cluster.changed() => {}
                Some(first) = renew_rx.recv() => pending.push(first),
            }
            while let Ok(more) = renew_rx.try_recv() {
                pending.push(more);
            }
            for (sent, answer) in pending.drain(..) {
                match answer {
                    Some(granted) => machine.renewed(sent, granted),
                    None => machine.renew_failed(sent),
                }
            }
            let state = cluster.borrow_and_update().clone();
            if let Some(w) = certs.as_mut() {
                self.reload_certificate(w).await;
            }
            let observed = observe(&self.local).await;
            let now = Instant::now();
            let (obs, detail, error) = match &observed {
                Ok((o, d)) => (Some(o), Some(d.clone()), None),
                Err(e) => (None, None, Some(e.clone())),
            };
            let actions = machine.tick(now, &state, obs);
            for action in actions {
                self.carry_out(action, now, &mut machine, &renew_tx, &state)
                    .await;
            }
            let role = machine.role().clone();
            if last_role.as_ref() != Some(&role) {
                info!(db_role = %role.label(), epoch = state.epoch, primary = state.primary.as_deref().unwrap_or("none"), "role");
                last_role = Some(role.clone());
            }
            if let Some(o) = obs
                && role == failover::NodeRole::Primary
            {
                let semi = (o.semi_sync_on, o.semi_sync_clients);
                if last_semi != Some(semi) {
                    if !o.semi_sync_on || o.semi_sync_clients == 0 {
                        warn!(
                            semi_sync = o.semi_sync_on,
                            clients = o.semi_sync_clients,
                            durability = self.settings.durability.as_str(),
                            "no replica acknowledges commits: {}",
                            match self.settings.durability {
                                Durability::SemiSyncOrRefuse => "writes are refused until one does",
                                Durability::SemiSyncOrAsync =>
                                    "writes are ASYNCHRONOUS and may be lost in a failover",
                            }
                        );
                    } else if last_semi.is_some() {
                        info!(
                            clients = o.semi_sync_clients,
                            "semi-synchronous again: replicas acknowledge commits"
                        );
                    }
                    last_semi = Some(semi);
                }
            } else {
                last_semi = None;
            }
            let lease_left = machine
                .lease()
                .until()
                .map(|u| u.saturating_duration_since(now).as_millis() as u64);
            let leader = self.leader_name();
            if leader != last_leader {
                match &leader {
                    Some(l) => info!(leader = l, "consensus leader"),
                    None => warn!(
                        "no consensus leader (an election, or no majority of db nodes reachable)"
                    ),
                }
                last_leader = leader.clone();
            }
            let mut snap = lock(&self.snapshot);
            snap.answering = obs.is_some();
            snap.role = Some(role);
            snap.observation = obs.cloned().unwrap_or_default();
            snap.detail = detail;
            snap.error = error;
            snap.cluster = state;
            snap.leader = leader;
            snap.lease_left_ms = lease_left;
        }
    }

    /// Has the local `mariadbd` re-read its certificate, key and CA (`FLUSH SSL`: new
    /// connections get them, established ones go on) when the files were replaced. The
    /// first look after start reloads too, in case they changed while it started.
    async fn reload_certificate(&self, w: &mut CertWatch) {
        let Some(stamp) = w.changed(Instant::now()) else {
            return;
        };
        let first = w.seen.is_none();
        // LOCAL: a plain FLUSH is written to the binlog, which would give this server a
        // transaction the others lack (a replica would diverge from its primary).
        match exec(&self.local, "FLUSH LOCAL SSL").await {
            Ok(()) => {
                if !first {
                    info!(
                        certificate = %w.files[0].display(),
                        "certificate re-issued: mariadbd re-read it (FLUSH LOCAL SSL)"
                    );
                }
                w.read(stamp);
            }
            // Retried at the next check (a certificate and key caught between their
            // two renames do not match).
            Err(e) => warn!(error = %e, "could not have mariadbd re-read its certificate"),
        }
    }

    async fn carry_out(
        &self,
        action: Action,
        now: Instant,
        machine: &mut failover::Node,
        renew_tx: &mpsc::UnboundedSender<(Instant, Option<bool>)>,
        state: &ClusterState,
    ) {
        let s = &self.settings;
        match action {
            Action::Fence(why) => {
                // In the background, one at a time: `SET GLOBAL read_only` waits for
                // commits that wait for a replica's acknowledgement, and the agent must
                // go on observing and renewing meanwhile. New commits wait behind it.
                if self.fencing.swap(true, std::sync::atomic::Ordering::AcqRel) {
                    return;
                }
                let (pool, user, flag, snapshot) = (
                    self.local.clone(),
                    s.app_user.clone(),
                    self.fencing.clone(),
                    self.snapshot.clone(),
                );
                tokio::spawn(async move {
                    match fence(&pool, &user).await {
                        Ok(()) => {
                            lock(&snapshot).fences += 1;
                            warn!(why, "fenced: read_only = 1");
                        }
                        Err(e) => {
                            warn!(why, error = %e, "fence not complete yet (commits waiting for a replica's acknowledgement hold it); new commits wait behind it")
                        }
                    }
                    flag.store(false, std::sync::atomic::Ordering::Release);
                });
            }
            // Never race a fence still in progress: the next tick decides again.
            Action::Unfence if self.fencing.load(std::sync::atomic::Ordering::Acquire) => {}
            Action::Unfence => match exec(&self.local, "SET GLOBAL read_only = 0").await {
                Ok(()) => info!(epoch = state.epoch, "accepting writes: read_only = 0"),
                Err(e) => warn!(error = %e, "could not unfence"),
            },
            Action::Renew { epoch } => {
                // The machine counts the lease from the tick that decided to renew.
                let sent = now;
                let raft = self.raft.clone();
                let tx = renew_tx.clone();
                let node = s.me.name.clone();
                let within = s.timing.lease / 2;
                tokio::spawn(async move {
                    let r = raft::propose(&raft, Command::Renew { node, epoch }, within).await;
                    let answer = match r {
                        Ok(Outcome::Granted) => Some(true),
                        Ok(Outcome::Refused(why)) => {
                            warn!(why, "lease renewal refused");
                            Some(false)
                        }
                        // No leader yet (an election, or this node just started).
                        Err(e @ raft::ProposeError::NoLeader(_)) => {
                            tracing::debug!(error = %e, "lease renewal undecided");
                            None
                        }
                        Err(e) => {
                            warn!(error = %e, "lease renewal undecided");
                            None
                        }
                    };
                    let _ = tx.send((sent, answer));
                });
            }
            Action::PrepareToLead { epoch } => match self.prepare_to_lead().await {
                Ok(true) => {
                    info!(
                        epoch,
                        "promoted: relay log applied, replica configuration dropped"
                    );
                    machine.prepared(epoch);
                }
                Ok(false) => info!(epoch, "promoted: still applying the relay log"),
                Err(e) => warn!(epoch, error = %e, "promotion step failed; retrying"),
            },
            Action::Follow { primary, epoch } => {
                let Some(p) = self.peer(&primary).cloned() else {
                    error!(primary, "the record names a primary that is not a db node");
                    return;
                };
                match self.follow(&p).await {
                    Ok(()) => {
                        info!(primary, epoch, "replicating from the primary");
                        machine.followed(&primary, epoch);
                    }
                    Err(e) => warn!(primary, error = %e, "could not start replicating; retrying"),
                }
            }
            Action::StopReplication => {
                if let Err(e) = exec(&self.local, "STOP SLAVE").await {
                    warn!(error = %e, "STOP SLAVE");
                }
                error!("out of the replication set: {}", machine.role().label());
            }
        }
    }

    /// Applies what was received, then drops the replica side and turns on the
    /// semi-sync master side. `Ok(false)`: not everything is applied yet.
    async fn prepare_to_lead(&self) -> Result<bool, String> {
        let pool = &self.local;
        if let Some(st) = slave_status(pool).await? {
            exec(pool, "STOP SLAVE IO_THREAD").await?;
            if !st.gtid_io_pos.is_empty() {
                if !st.sql_running && st.sql_errno == 0 {
                    exec(pool, "START SLAVE SQL_THREAD").await?;
                }
                let waited: i64 = bounded(
                    "MASTER_GTID_WAIT",
                    sqlx::query_scalar("SELECT MASTER_GTID_WAIT(?, 1)")
                        .bind(&st.gtid_io_pos)
                        .fetch_one(pool),
                )
                .await?;
                if waited != 0 {
                    return Ok(false);
                }
            }
            exec(pool, "STOP SLAVE").await?;
            exec(pool, "RESET SLAVE ALL").await?;
        }
        exec(
            pool,
            &format!(
                "SET GLOBAL rpl_semi_sync_master_timeout = {}",
                self.settings.semi_sync_timeout_ms()
            ),
        )
        .await?;
        exec(pool, "SET GLOBAL rpl_semi_sync_master_enabled = ON").await?;
        Ok(true)
    }

    async fn follow(&self, primary: &Peer) -> Result<(), String> {
        let pool = &self.local;
        exec(pool, "STOP SLAVE").await?;
        exec(pool, "SET GLOBAL rpl_semi_sync_master_enabled = OFF").await?;
        exec(pool, "SET GLOBAL rpl_semi_sync_slave_enabled = ON").await?;
        exec(
            pool,
            &change_master(
                primary,
                &self.settings.repl_password,
                self.settings.tls.as_ref(),
            ),
        )
        .await?;
        exec(pool, "START SLAVE").await
    }

    /// The arbiter: acts while this node leads the consensus.
    async fn arbiter(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let pools: Vec<(Peer, MySqlPool)> = self
            .settings
            .peers
            .iter()
            .map(|p| {
                let pool = if p.name == self.settings.me.name {
                    self.local.clone()
                } else {
                    peer_pool(p, &self.settings.admin_password, self.settings.tls.as_ref())
                };
                (p.clone(), pool)
            })
            .collect();
        let mut ticker = tokio::time::interval(TICK);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut backoff_until = Instant::now();
        let started = Instant::now();
        let mut told_grace = false;
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = ticker.tick() => {}
            }
            if Instant::now() < backoff_until
                || self.raft.metrics().borrow().current_leader != Some(self.settings.me.id)
            {
                continue;
            }
            let state = self.cluster.borrow().clone();
            let Some(old) = state.primary.clone() else {
                // The topology's primary, once it has joined (its server is up: a db
                // node joins the consensus only then); if it never does, this node.
                let initial = self.settings.initial_primary.clone();
                let joined = self.peer(&initial).is_some_and(|p| {
                    p.id == self.settings.me.id
                        || self
                            .raft
                            .metrics()
                            .borrow()
                            .replication
                            .as_ref()
                            .and_then(|r| r.get(&p.id).cloned())
                            .flatten()
                            .is_some()
                });
                let primary = if joined {
                    initial
                } else if started.elapsed() > BOOTSTRAP_GRACE {
                    warn!(
                        initial,
                        "the topology's primary has not joined within {BOOTSTRAP_GRACE:?}: starting with this node as primary"
                    );
                    self.settings.me.name.clone()
                } else {
                    continue;
                };
                match raft::propose(
                    &self.raft,
                    Command::Bootstrap {
                        primary: primary.clone(),
                    },
                    Duration::from_secs(2),
                )
                .await
                {
                    Ok(Outcome::Granted) => {
                        info!(primary, "first primary set (topology's db.primary)")
                    }
                    Ok(Outcome::Refused(_)) => {}
                    Err(e) => warn!(error = %e, "could not set the first primary"),
                }
                continue;
            };
            let (last_grant, live) = {
                let shared = lock(&self.shared);
                (shared.last_grant_applied, shared.live_grant)
            };
            if !self.settings.timing.expired(last_grant, Instant::now()) {
                continue;
            }
            if !live && started.elapsed() < RESTART_GRACE {
                if !told_grace {
                    info!(
                        primary = old,
                        "restarted: waiting up to {RESTART_GRACE:?} for the primary to come back before failing it over"
                    );
                    told_grace = true;
                }
                continue;
            }
            // Make sure this leader has applied everything committed before deciding.
            match tokio::time::timeout(Duration::from_secs(1), self.raft.ensure_linearizable())
                .await
            {
                Ok(Ok(_)) => {}
                _ => continue,
            }
            // What is applied, then the record, then the time of the last grant: every
            // renewal up to `decided_at` was applied, and its time noted, before the
            // index was reported. A renewal after it voids the promotion.
            let decided_at = self
                .raft
                .metrics()
                .borrow()
                .last_applied
                .map_or(0, |l| l.index);
            let state = self.cluster.borrow().clone();
            let last_grant = lock(&self.shared).last_grant_applied;
            if !self.settings.timing.expired(last_grant, Instant::now())
                || state.primary.as_deref() != Some(old.as_str())
            {
                continue;
            }
            let silent = last_grant.elapsed();
            warn!(
                primary = old,
                silent_ms = silent.as_millis() as u64,
                "the primary's lease expired: failing over"
            );
            match self
                .fail_over(&state, decided_at, &old, silent, &pools)
                .await
            {
                Ok(to) => {
                    lock(&self.snapshot).failovers += 1;
                    info!(from = old, to, "failover decided");
                }
                Err(e) => {
                    warn!(error = %e, "failover not possible now; retrying");
                    backoff_until = Instant::now() + Duration::from_millis(500);
                }
            }
        }
    }

    async fn fail_over(
        &self,
        state: &ClusterState,
        decided_at: u64,
        old: &str,
        silent: Duration,
        pools: &[(Peer, MySqlPool)],
    ) -> Result<String, String> {
        // 1. Fence the old primary if its server still answers (its agent may be hung
        //    while mariadbd serves on). Only a server that cannot be reached at all is
        //    left to its expired lease; one that answers but could not be fenced is not
        //    passed over: the failover waits and tries again.
        let fencing = match pools.iter().find(|(p, _)| p.name == old) {
            None => "lease expired".to_string(),
            Some((p, pool)) => {
                // One connection attempt: a refused connection answers at once, where
                // the pool would retry until its timeout.
                use sqlx::Connection;
                let opts =
                    admin_options(p, &self.settings.admin_password, self.settings.tls.as_ref());
                let attempt = sqlx::MySqlConnection::connect_with(&opts);
                match tokio::time::timeout(Duration::from_millis(500), attempt).await {
                    Err(_) => "lease expired; old primary's server did not answer".to_string(),
                    Ok(Err(e)) => format!("lease expired; old primary unreachable ({e})"),
                    Ok(Ok(conn)) => {
                        let _ = conn.close().await;
                        fence(pool, &self.settings.app_user).await.map_err(|e| {
                            format!("the old primary answers but could not be fenced: {e}")
                        })?;
                        lock(&self.snapshot).fences += 1;
                        "fenced remotely (read_only = 1, sessions ended)".to_string()
                    }
                }
            }
        };
        // 2. Freeze what every replica has received, and read it.
        let mut candidates = Vec::new();
        for (p, pool) in pools.iter().filter(|(p, _)| p.name != old) {
            let seen = async {
                let _ = exec(pool, "STOP SLAVE IO_THREAD").await;
                let st = slave_status(pool).await?;
                let cur: String = bounded(
                    "gtid_current_pos",
                    sqlx::query_scalar("SELECT @@gtid_current_pos").fetch_one(pool),
                )
                .await?;
                Ok::<_, String>((st, cur))
            };
            candidates.push(match seen.await {
                Ok((st, cur)) => {
                    let io = st
                        .as_ref()
                        .and_then(|s| GtidPos::parse(&s.gtid_io_pos))
                        .unwrap_or_default();
                    let cur = GtidPos::parse(&cur).unwrap_or_default();
                    Candidate {
                        name: p.name.clone(),
                        reachable: true,
                        received: io.max(&cur),
                        excluded: match &st {
                            None => Some("is not a replica".into()),
                            Some(s) => s
                                .divergence()
                                .map(|d| format!("has a replication error ({d})")),
                        },
                    }
                }
                Err(e) => {
                    info!(node = p.name, error = %e, "not a candidate");
                    Candidate {
                        name: p.name.clone(),
                        reachable: false,
                        received: GtidPos::default(),
                        excluded: None,
                    }
                }
            });
        }
        // Nobody promoted: the replicas go on receiving from the old primary, which may
        // come back (or, having renewed its lease, never left). Had another arbiter
        // promoted one of them meanwhile, they are left to follow the new record.
        let resume = || async {
            let unchanged = {
                let now = self.cluster.borrow();
                now.epoch == state.epoch && now.primary.as_deref() == Some(old)
            };
            if unchanged {
                for (_, pool) in pools.iter().filter(|(p, _)| p.name != old) {
                    let _ = exec(pool, "START SLAVE IO_THREAD").await;
                }
            }
        };
        let chosen = match failover::choose(&candidates, old) {
            Ok(c) => c.clone(),
            Err(e) => {
                resume().await;
                return Err(e.to_string());
            }
        };
        // 3. Commit the promotion (a compare-and-set on the epoch).
        let record = FailoverRecord {
            from: old.to_string(),
            to: chosen.name.clone(),
            epoch: state.epoch + 1,
            at_unix_ms: chrono::Utc::now().timestamp_millis(),
            detected_after_ms: silent.as_millis() as u64,
            fencing,
            gtid: chosen.received.to_string(),
        };
        match raft::propose(
            &self.raft,
            Command::Promote {
                expected_epoch: state.epoch,
                decided_at: Some(decided_at),
                record,
            },
            Duration::from_secs(2),
        )
        .await
        {
            Ok(Outcome::Granted) => Ok(chosen.name),
            // Refused (the primary renewed, or another promotion came first) or not
            // decided (no leader, a timeout): if the record still names the old
            // primary, nobody was promoted.
            Ok(Outcome::Refused(why)) => {
                resume().await;
                Err(why)
            }
            Err(e) => {
                resume().await;
                Err(e.to_string())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn primary() -> Peer {
        Peer {
            name: "db1".into(),
            id: 1,
            host: "127.0.4.1".into(),
            port: 3306,
        }
    }

    fn files(dir: &std::path::Path) -> TlsFiles {
        TlsFiles {
            ca: dir.join("ca.crt"),
            cert: dir.join("nodes/db2.crt"),
            key: dir.join("nodes/db2.key"),
        }
    }

    #[test]
    fn replication_runs_over_tls_verifying_the_primary_when_internal() {
        let tls = files(std::path::Path::new("/s/pki"));
        let sql = change_master(&primary(), "p'w", Some(&tls));
        for part in [
            "MASTER_HOST='127.0.4.1'",
            "MASTER_PASSWORD='p''w'",
            "MASTER_SSL=1",
            "MASTER_SSL_CA='/s/pki/ca.crt'",
            "MASTER_SSL_CERT='/s/pki/nodes/db2.crt'",
            "MASTER_SSL_KEY='/s/pki/nodes/db2.key'",
            "MASTER_SSL_VERIFY_SERVER_CERT=1",
        ] {
            assert!(sql.contains(part), "missing {part} in {sql}");
        }
        let plain = change_master(&primary(), "pw", None);
        assert!(
            plain.contains("MASTER_SSL=0") && !plain.contains("MASTER_SSL_CA"),
            "{plain}"
        );
    }

    #[test]
    fn a_certificate_replaced_by_a_rename_is_noticed() {
        let d = tempfile::tempdir().expect("tempdir");
        let tls = files(d.path());
        std::fs::create_dir_all(d.path().join("nodes")).expect("mkdir");
        for f in [&tls.ca, &tls.cert, &tls.key] {
            std::fs::write(f, "one").expect("write");
        }
        let mut w = CertWatch::new(&tls);
        let t0 = Instant::now();
        let first = w.changed(t0).expect("unknown at first: read once");
        w.read(first);
        assert!(w.changed(t0 + CERT_CHECK).is_none(), "unchanged");
        let tmp = d.path().join("nodes/db2.crt.tmp");
        std::fs::write(&tmp, "two").expect("write");
        std::fs::rename(&tmp, &tls.cert).expect("rename");
        assert!(
            w.changed(t0 + CERT_CHECK).is_none(),
            "not looked at again before CERT_CHECK"
        );
        let stamp = w
            .changed(t0 + CERT_CHECK * 2)
            .expect("the re-issued certificate is noticed");
        // Not re-read (FLUSH SSL failed): still changed at the next check.
        assert!(w.changed(t0 + CERT_CHECK * 3).is_some());
        w.read(stamp);
        assert!(w.changed(t0 + CERT_CHECK * 4).is_none());
    }
}
