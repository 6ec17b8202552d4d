//! The db node: one supervised `mariadbd` (Debian's `mariadb-server`) and its part in
//! deciding who is primary.
//!
//! On start it initialises the datadir when new (`mariadb-install-db`), writes the
//! instance's `my.cnf`, starts `mariadbd` read-only as its child (which dies with it),
//! joins the db nodes' consensus (`raft.rs`) and hands over to the agent (`agent.rs`),
//! which makes the server the primary or a replica as the replicated record says, and
//! fails over when the primary's lease expires (`failover.rs`, the pure rules).
//! `/healthz` reports the role and the replication state. If `mariadbd` exits, the node
//! exits too: a dead database is shown as a dead node.
//!
//! With `tls.internal` the node first makes sure its certificate of the stack's internal
//! CA exists (`<state_dir>/pki/nodes/NAME.crt`, issued if not), and `mariadbd` serves
//! TCP only over TLS with it (`mycnf.rs`); replication and the agent's connections to
//! other nodes use it as their client certificate (`agent.rs`).

pub mod agent;
pub mod failover;
pub mod mycnf;
pub mod raft;
pub mod rebuild;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions, MySqlSslMode};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tracing::{info, warn};

use hastack_config::{Role, Topology};
use hastack_runtime::metrics::{FnCollector, Gather};
use hastack_runtime::secrets::DbSecrets;
use hastack_runtime::{Admin, BindError, HealthReport, bind_tcp};
use hastack_status::health::{ClusterView, DbHealth, Health};
use hastack_tls::pki::PkiError;
use mycnf::{Accounts, Instance, Layout};

/// How long `mariadb-install-db` may take.
pub const INSTALL_TIMEOUT: Duration = Duration::from_secs(180);
/// How long a starting `mariadbd` may take to answer.
pub const START_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a stopping `mariadbd` may take before it is killed.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a db node could not run.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The name is not a db node of the topology.
    #[error("`{0}` is not a db node of this topology")]
    NotADb(String),
    /// MariaDB is not installed.
    #[error("{0} not found: install MariaDB (apt-get install mariadb-server)")]
    NotInstalled(String),
    /// A file or directory could not be made.
    #[error("{path}: {source}")]
    Io {
        /// Which.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// A path too long for a unix socket.
    #[error("socket path {0} is longer than 107 bytes; use a shorter state_dir")]
    SocketPath(PathBuf),
    /// `mariadb-install-db` failed.
    #[error("mariadb-install-db failed: {0}")]
    Install(String),
    /// `mariadbd` did not come up.
    #[error("mariadbd did not start: {0}")]
    Start(String),
    /// `mariadbd` exited while the node ran.
    #[error("mariadbd exited unexpectedly ({0}); see {1}")]
    Died(String, PathBuf),
    /// A statement failed.
    #[error("{what}: {source}")]
    Sql {
        /// What was being done.
        what: &'static str,
        /// Cause.
        source: sqlx::Error,
    },
    /// The admin port could not be bound.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// A datadir exists without the marker of a finished install.
    #[error(
        "{0} holds data but has no install marker ({1}); hastack never deletes a datadir. If it is a complete MariaDB datadir (e.g. restored from a backup), create the marker: `touch {1}`; if it is left from a failed install, remove it: `rm -r {0}`"
    )]
    Unmarked(PathBuf, PathBuf),
    /// The consensus could not start.
    #[error("consensus: {0}")]
    Consensus(String),
    /// A re-seed failed.
    #[error("rebuild: {0}")]
    Rebuild(String),
    /// The node's certificate of the internal CA could not be read or issued.
    #[error("internal CA: {0}")]
    Pki(#[from] PkiError),
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DbError + '_ {
    move |source| DbError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Finds a program by name in PATH, /usr/sbin and /usr/local/sbin, or checks a path.
pub fn find_program(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        let p = PathBuf::from(name);
        return p.is_file().then_some(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/usr/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

pub(crate) fn write_private(path: &Path, text: &str) -> Result<(), DbError> {
    hastack_runtime::secrets::write_private(path, text).map_err(io_err(path))
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Runs db node `name` (state under `state_dir`) until `shutdown` turns true.
pub async fn run(
    topo: &Topology,
    name: &str,
    state_dir: &Path,
    secrets: DbSecrets,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), DbError> {
    let node = topo
        .node(name)
        .filter(|n| n.role == Role::Db)
        .ok_or_else(|| DbError::NotADb(name.to_string()))?;
    let settings =
        agent::Settings::new(topo, name, &secrets).ok_or_else(|| DbError::NotADb(name.into()))?;

    let mariadbd = find_program(&topo.db.mariadbd)
        .ok_or_else(|| DbError::NotInstalled(topo.db.mariadbd.clone()))?;
    let install_db = find_program("mariadb-install-db")
        .ok_or_else(|| DbError::NotInstalled("mariadb-install-db".into()))?;

    let layout = Layout::new(state_dir, name);
    if layout.socket.as_os_str().len() > 107 {
        return Err(DbError::SocketPath(layout.socket.clone()));
    }
    for dir in [
        &layout.base,
        &layout.tmp,
        layout.socket.parent().unwrap_or(&layout.base),
    ] {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    }
    let tls = if topo.tls.internal {
        Some(hastack_tls::pki::node_files(
            state_dir,
            name,
            IpAddr::V4(node.address),
        )?)
    } else {
        None
    };
    let instance = Instance {
        server_id: settings.me.id as u32,
        address: node.address.to_string(),
        port: topo.ports.db,
        buffer_pool_mb: topo.db.buffer_pool_mb,
        semi_sync_timeout_ms: settings.semi_sync_timeout_ms(),
        as_root: nix::unistd::geteuid().is_root(),
        tls: tls.clone(),
    };
    std::fs::write(&layout.cnf, mycnf::my_cnf(&layout, &instance)).map_err(io_err(&layout.cnf))?;
    // Accounts are scoped to the addresses their users connect from. On loopback every
    // connection to a 127.x address leaves from 127.0.0.1 (neither sqlx nor MariaDB's
    // replication can bind a source address), so there that is the one address.
    let hosts = |role| -> Vec<String> {
        match topo.mode {
            hastack_config::Mode::Loopback => vec!["127.0.0.1".to_string()],
            hastack_config::Mode::Isolated | hastack_config::Mode::Hosts => Vec::new(),
        }
        .into_iter()
        .chain(topo.tier(role).map(|n| n.address.to_string()))
        .collect()
    };
    let (db_hosts, app_hosts) = (hosts(Role::Db), hosts(Role::App));
    write_private(
        &layout.init,
        &mycnf::init_sql(&Accounts {
            admin_password: &secrets.admin,
            repl_password: &secrets.repl,
            database: &topo.db.database,
            user: &topo.db.user,
            password: &secrets.app,
            db_hosts: &db_hosts,
            app_hosts: &app_hosts,
        }),
    )?;
    // The per-instance admin secret of earlier versions is replaced by the shared one.
    let _ = std::fs::remove_file(layout.base.join("admin.secret"));

    // Bind the listeners before the slow part, so a taken port fails fast.
    let admin_listener = bind_tcp(topo.admin_addr(node), "admin", false)?;
    let raft_listener = bind_tcp(topo.raft_addr(node), "raft", false)?;

    // Whether mariadbd last stopped cleanly: the marker is written after a clean stop
    // and removed at start, so its absence on an installed datadir means a crash.
    let clean_marker = layout.base.join("stopped-cleanly");
    let mut settings = settings;
    settings.tls = tls;
    settings.after_crash = layout.installed.exists() && !clean_marker.exists();
    let _ = std::fs::remove_file(&clean_marker);
    if settings.after_crash {
        warn!("mariadbd did not stop cleanly last time: crash recovery runs");
    }
    if !layout.installed.exists() {
        install(&install_db, &layout).await?;
    }
    let mut child = start(&mariadbd, &layout)?;
    let pool = match wait_until_up(&mut child, &layout, &secrets.admin, &mut shutdown).await {
        Ok(Some(p)) => p,
        Ok(None) => {
            stop(&mut child).await;
            return Ok(());
        }
        Err(e) => {
            stop(&mut child).await;
            return Err(e);
        }
    };

    // A datadir re-seeded by `hastack db rebuild` starts from the copy's position.
    let gtid_file = rebuild::gtid_file(&layout);
    if let Ok(gtid) = std::fs::read_to_string(&gtid_file) {
        let set = format!(
            "STOP SLAVE; RESET SLAVE ALL; SET GLOBAL gtid_slave_pos = {}",
            mycnf::sql_string(gtid.trim())
        );
        if let Err(e) = sqlx::raw_sql(&set).execute(&pool).await {
            stop(&mut child).await;
            return Err(DbError::Sql {
                what: "setting the re-seeded GTID position",
                source: e,
            });
        }
        info!(
            gtid = gtid.trim(),
            "re-seeded datadir: replication starts from its copy's position"
        );
        let _ = std::fs::remove_file(&gtid_file);
    }

    let members = settings
        .peers
        .iter()
        .map(|p| {
            let addr = topo
                .node(&p.name)
                .map(|n| topo.raft_addr(n).to_string())
                .unwrap_or_default();
            (p.id, openraft::BasicNode { addr })
        })
        .collect();
    let (raft, cluster, shared) =
        match raft::start(settings.me.id, &layout.base.join("raft"), members).await {
            Ok(r) => r,
            Err(e) => {
                stop(&mut child).await;
                return Err(DbError::Consensus(e));
            }
        };
    let raft_task = tokio::spawn(raft::serve(raft.clone(), raft_listener, shutdown.clone()));
    info!(node = name, addr = %node.address, port = topo.ports.db, "mariadbd ready (read-only until the consensus says otherwise)");

    let agent = agent::Agent::new(settings, pool.clone(), raft.clone(), cluster, shared);
    let snapshot = agent.snapshot();
    let durability = topo.db.durability;
    let probe = {
        let snapshot = snapshot.clone();
        let name: Arc<str> = name.into();
        Arc::new(move || {
            let report = health(&lock(&snapshot), &name, durability);
            Box::pin(async move { report }) as _
        })
    };
    let mut registry = prometheus_client::registry::Registry::default();
    {
        let snapshot = snapshot.clone();
        registry.register_collector(Box::new(FnCollector(move |g: &mut Gather<'_, '_>| {
            metrics(&lock(&snapshot), g)
        })));
    }
    let admin = Admin::new(probe, registry);
    let admin_task = tokio::spawn(admin.serve(admin_listener, shutdown.clone()));
    let agent_task = tokio::spawn(agent.run(shutdown.clone()));

    let result = tokio::select! {
        _ = shutdown.changed() => Ok(()),
        status = child.wait() => {
            let why = match status {
                Ok(s) => s.to_string(),
                Err(e) => e.to_string(),
            };
            warn!("mariadbd exited: {why}\n{}", tail(&layout.error_log, 5));
            Err(DbError::Died(why, layout.error_log.clone()))
        }
    };
    // The agent fences a primary on its way out, before mariadbd stops.
    let _ = tokio::time::timeout(Duration::from_secs(5), agent_task).await;
    let _ = raft.shutdown().await;
    raft_task.abort();
    pool.close().await;
    if stop(&mut child).await && result.is_ok() {
        let _ = write_private(&clean_marker, "mariadbd stopped cleanly\n");
    }
    let _ = admin_task.await;
    result
}

/// A lock that survives a panicked holder (the data is plain state, still usable).
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// `/healthz` from the agent's last look: healthy while `mariadbd` answers.
fn health(
    snap: &agent::Snapshot,
    name: &str,
    durability: hastack_config::Durability,
) -> HealthReport {
    let writes = match &snap.role {
        Some(failover::NodeRole::Primary) => Some(
            if snap.observation.semi_sync_on && snap.observation.semi_sync_clients > 0 {
                "accepted (semi-sync: a replica acknowledges each commit)".to_string()
            } else {
                "accepted ASYNCHRONOUSLY: no replica acknowledges, a failover may lose them"
                    .to_string()
            },
        ),
        Some(r @ failover::NodeRole::PrimaryNotWriting(_)) => {
            Some(format!("refused: {}", r.label()))
        }
        _ => None,
    };
    let body = DbHealth {
        node: name.to_string(),
        db_role: snap
            .role
            .as_ref()
            .map_or_else(|| "starting".to_string(), failover::NodeRole::label),
        durability: durability.as_str().to_string(),
        observed: snap.detail.clone(),
        error: snap.error.clone(),
        lease_left_ms: writes.as_ref().and(snap.lease_left_ms),
        writes,
        cluster: ClusterView {
            epoch: snap.cluster.epoch,
            primary: snap.cluster.primary.clone(),
            consensus_leader: snap.leader.clone(),
            last_failover: snap.cluster.last_failover.clone(),
        },
    };
    HealthReport {
        healthy: snap.answering,
        body: Health::Db(body),
    }
}

/// The db node's figures for `/metrics`, read from the agent's last look at each scrape.
fn metrics(snap: &agent::Snapshot, g: &mut Gather<'_, '_>) -> std::fmt::Result {
    let o = &snap.observation;
    let flag = |b: bool| f64::from(u8::from(b));
    g.gauge("hastack_db_up", "mariadbd answers", flag(snap.answering))?;
    g.gauge(
        "hastack_db_primary",
        "This node is the primary and accepts writes",
        flag(snap.role == Some(failover::NodeRole::Primary)),
    )?;
    g.gauge("hastack_db_read_only", "@@read_only", flag(o.read_only))?;
    g.gauge(
        "hastack_db_epoch",
        "Epoch of the replicated primary record",
        snap.cluster.epoch as f64,
    )?;
    g.gauge(
        "hastack_db_semi_sync_clients",
        "Replicas acknowledging commits (on the primary)",
        f64::from(o.semi_sync_clients),
    )?;
    g.gauge(
        "hastack_db_semi_sync_on",
        "Semi-sync replication is active (on the primary)",
        flag(o.semi_sync_on),
    )?;
    g.gauge(
        "hastack_db_replicating",
        "Both replication threads run (on a replica)",
        flag(o.io_running && o.sql_running),
    )?;
    let lag = snap
        .detail
        .as_ref()
        .and_then(|d| d.replication.as_ref())
        .and_then(|r| r.seconds_behind_master);
    if let Some(lag) = lag {
        g.gauge(
            "hastack_db_replication_lag_seconds",
            "Seconds_Behind_Master",
            lag as f64,
        )?;
    }
    if let Some(ms) = snap.lease_left_ms {
        g.gauge(
            "hastack_db_lease_left_seconds",
            "Lease left on the primary",
            ms as f64 / 1000.0,
        )?;
    }
    g.counter(
        "hastack_db_fences",
        "Fences carried out by this node",
        snap.fences,
    )?;
    g.counter(
        "hastack_db_failovers",
        "Failovers decided by this node as arbiter",
        snap.failovers,
    )
}

/// Initialises the datadir: `mariadb-install-db` into `data.installing`, then renamed to
/// `data` and the marker written (fsynced), so `data` exists only when complete. A
/// `data` without the marker (an older hastack's, or one restored by hand) is never
/// deleted: the node refuses to start and says what to do.
async fn install(install_db: &Path, layout: &Layout) -> Result<(), DbError> {
    if layout.data.exists() {
        let holds_data = std::fs::read_dir(&layout.data)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true);
        if holds_data {
            return Err(DbError::Unmarked(
                layout.data.clone(),
                layout.installed.clone(),
            ));
        }
        std::fs::remove_dir(&layout.data).map_err(io_err(&layout.data))?;
    }
    let staging = layout.base.join("data.installing");
    if staging.exists() {
        warn!(dir = %staging.display(), "removing an interrupted install");
        std::fs::remove_dir_all(&staging).map_err(io_err(&staging))?;
    }
    info!(datadir = %layout.data.display(), "initialising a new datadir");
    let mut cmd = Command::new(install_db);
    cmd.arg(format!("--defaults-file={}", layout.cnf.display()))
        .arg(format!("--datadir={}", staging.display()))
        .arg("--skip-test-db")
        .arg("--auth-root-authentication-method=socket")
        .kill_on_drop(true);
    hastack_runtime::child::die_with_parent(&mut cmd, Signal::SIGKILL);
    let out = cmd.output();
    let out = tokio::time::timeout(INSTALL_TIMEOUT, out)
        .await
        .map_err(|_| DbError::Install(format!("no result within {INSTALL_TIMEOUT:?}")))?
        .map_err(|e| DbError::Install(e.to_string()))?;
    if !out.status.success() {
        let _ = std::fs::remove_dir_all(&staging);
        let text = String::from_utf8_lossy(&out.stderr);
        let last: Vec<&str> = text.lines().rev().take(5).collect();
        return Err(DbError::Install(format!(
            "{}: {}",
            out.status,
            last.into_iter().rev().collect::<Vec<_>>().join(" | ")
        )));
    }
    std::fs::rename(&staging, &layout.data).map_err(io_err(&layout.data))?;
    hastack_runtime::secrets::write_private(&layout.installed, "mariadb-install-db finished\n")
        .map_err(io_err(&layout.installed))?;
    std::fs::File::open(&layout.base)
        .and_then(|d| d.sync_all())
        .map_err(io_err(&layout.base))
}

fn start(mariadbd: &Path, layout: &Layout) -> Result<Child, DbError> {
    let mut cmd = Command::new(mariadbd);
    cmd.arg(format!("--defaults-file={}", layout.cnf.display()))
        .arg(format!("--init-file={}", layout.init.display()))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // A crashed db node takes its database with it.
    hastack_runtime::child::die_with_parent(&mut cmd, Signal::SIGKILL);
    cmd.spawn()
        .map_err(|e| DbError::Start(format!("{}: {e}", mariadbd.display())))
}

async fn wait_until_up(
    child: &mut Child,
    layout: &Layout,
    admin_password: &str,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<Option<MySqlPool>, DbError> {
    // Plain over the socket: sqlx would otherwise negotiate TLS whenever the server
    // offers it (it does with `tls.internal`), for nothing.
    let opts = MySqlConnectOptions::new()
        .socket(&layout.socket)
        .ssl_mode(MySqlSslMode::Disabled)
        .username("hastack_admin")
        .password(admin_password);
    let started = Instant::now();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(DbError::Start(format!(
                "mariadbd exited ({status}): {}",
                tail(&layout.error_log, 5)
            )));
        }
        if layout.socket.exists() {
            match MySqlPoolOptions::new()
                // Observation, a fence that may wait, promotion steps, health.
                .max_connections(4)
                .acquire_timeout(Duration::from_secs(2))
                .connect_with(opts.clone())
                .await
            {
                Ok(pool) => return Ok(Some(pool)),
                Err(e) if started.elapsed() > START_TIMEOUT => {
                    return Err(DbError::Start(format!(
                        "no answer within {START_TIMEOUT:?}: {e}"
                    )));
                }
                Err(_) => {}
            }
        } else if started.elapsed() > START_TIMEOUT {
            return Err(DbError::Start(format!(
                "no socket within {START_TIMEOUT:?}: {}",
                tail(&layout.error_log, 5)
            )));
        }
        tokio::select! {
            _ = shutdown.changed() => return Ok(None),
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
}

/// Stops `mariadbd`; true when it shut down cleanly (exit status 0).
async fn stop(child: &mut Child) -> bool {
    let Some(pid) = child.id() else { return false };
    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
    match tokio::time::timeout(STOP_TIMEOUT, child.wait()).await {
        Ok(Ok(status)) => status.success(),
        Ok(Err(_)) => false,
        Err(_) => {
            warn!("mariadbd did not stop within {STOP_TIMEOUT:?}; killing it");
            let _ = child.kill().await;
            false
        }
    }
}
