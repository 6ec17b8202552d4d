//! The db node: one supervised `mariadbd` (Debian's `mariadb-server`).
//!
//! On start it initialises the datadir when new (`mariadb-install-db`), writes the
//! instance's `my.cnf`, starts `mariadbd` as its child (which dies with it), waits until
//! it answers, and on a replica points replication at the primary with
//! `MASTER_USE_GTID=slave_pos`. `/healthz` reports the role and the replication state.
//! If `mariadbd` exits, the node exits too: a dead database is shown as a dead node.

pub mod mycnf;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use sqlx::Row;
use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tracing::{info, warn};

use hastack_config::{Role, Topology};
use hastack_runtime::{Admin, BindError, HealthReport, bind_tcp};
use mycnf::{Accounts, Instance, Layout};
use serde_json::json;

/// How long `mariadb-install-db` may take.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(180);
/// How long a starting `mariadbd` may take to answer.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a stopping `mariadbd` may take before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

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
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DbError + '_ {
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

/// The admin password of an instance, made once and kept in its directory.
fn admin_secret(layout: &Layout) -> Result<String, DbError> {
    if let Ok(s) = std::fs::read_to_string(&layout.secret) {
        let s = s.trim().to_string();
        if !s.is_empty() {
            return Ok(s);
        }
    }
    use rand::Rng;
    let secret: String = rand::thread_rng()
        .sample_iter(&rand::distributions::Alphanumeric)
        .take(32)
        .map(char::from)
        .collect();
    write_private(&layout.secret, &secret)?;
    Ok(secret)
}

fn write_private(path: &Path, text: &str) -> Result<(), DbError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err(path))?;
    f.write_all(text.as_bytes()).map_err(io_err(path))
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
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), DbError> {
    let node = topo
        .node(name)
        .filter(|n| n.role == Role::Db)
        .ok_or_else(|| DbError::NotADb(name.to_string()))?;
    let primary_node = topo
        .node(&topo.db.primary)
        .ok_or_else(|| DbError::NotADb(topo.db.primary.clone()))?;
    let is_primary = name == topo.db.primary;
    let server_id = topo
        .tier(Role::Db)
        .position(|n| n.name == name)
        .unwrap_or(0) as u32
        + 1;

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
    let admin_password = admin_secret(&layout)?;
    let instance = Instance {
        server_id,
        address: node.address.to_string(),
        port: topo.ports.db,
        primary: is_primary,
        buffer_pool_mb: topo.db.buffer_pool_mb,
        semi_sync_timeout_ms: topo.db.semi_sync_timeout.as_millis() as u64,
        as_root: nix::unistd::geteuid().is_root(),
    };
    std::fs::write(&layout.cnf, mycnf::my_cnf(&layout, &instance)).map_err(io_err(&layout.cnf))?;
    write_private(
        &layout.init,
        &mycnf::init_sql(&Accounts {
            admin_password: &admin_password,
            repl_password: &topo.db.repl_password,
            database: &topo.db.database,
            user: &topo.db.user,
            password: &topo.db.password,
        }),
    )?;

    // Bind the admin port before the slow part, so a taken port fails fast.
    let admin_addr = topo.admin_addr(node);
    let admin_listener = bind_tcp(admin_addr, "admin", false)?;

    if !layout.installed.exists() {
        install(&install_db, &layout).await?;
    }
    let mut child = start(&mariadbd, &layout)?;
    let pool = match wait_until_up(&mut child, &layout, &admin_password, &mut shutdown).await {
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
    if !is_primary {
        let setup = configure_replica(
            &pool,
            &primary_node.address.to_string(),
            topo.ports.db,
            &topo.db.repl_password,
        )
        .await;
        if let Err(e) = setup {
            stop(&mut child).await;
            return Err(e);
        }
    }
    info!(node = name, role = if is_primary { "primary" } else { "replica" }, addr = %node.address, port = topo.ports.db, "mariadbd ready");

    let probe = {
        let pool = pool.clone();
        let name: Arc<str> = name.into();
        Arc::new(move || {
            let pool = pool.clone();
            let name = name.clone();
            Box::pin(async move { health(&pool, &name, is_primary).await }) as _
        })
    };
    let admin = Admin::new(
        probe,
        prometheus_client::registry::Registry::default(),
        None,
    );
    let admin_task = tokio::spawn(admin.serve(admin_listener, shutdown.clone()));

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
    pool.close().await;
    stop(&mut child).await;
    let _ = admin_task.await;
    result
}

/// Initialises the datadir. It counts as done only once the marker file is written, so
/// a datadir left half-made by an interrupted install is wiped and made again.
async fn install(install_db: &Path, layout: &Layout) -> Result<(), DbError> {
    if layout.data.exists() {
        warn!(datadir = %layout.data.display(), "datadir without a finished install; making it again");
        std::fs::remove_dir_all(&layout.data).map_err(io_err(&layout.data))?;
    }
    info!(datadir = %layout.data.display(), "initialising a new datadir");
    let mut cmd = Command::new(install_db);
    cmd.arg(format!("--defaults-file={}", layout.cnf.display()))
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
        let _ = std::fs::remove_dir_all(&layout.data);
        let text = String::from_utf8_lossy(&out.stderr);
        let last: Vec<&str> = text.lines().rev().take(5).collect();
        return Err(DbError::Install(format!(
            "{}: {}",
            out.status,
            last.into_iter().rev().collect::<Vec<_>>().join(" | ")
        )));
    }
    std::fs::write(&layout.installed, "mariadb-install-db finished\n")
        .map_err(io_err(&layout.installed))
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
    let opts = MySqlConnectOptions::new()
        .socket(&layout.socket)
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
                .max_connections(2)
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

async fn configure_replica(
    pool: &MySqlPool,
    host: &str,
    port: u16,
    repl_password: &str,
) -> Result<(), DbError> {
    let sql = |what: &'static str| move |source| DbError::Sql { what, source };
    sqlx::query("STOP SLAVE")
        .execute(pool)
        .await
        .map_err(sql("STOP SLAVE"))?;
    let change = format!(
        "CHANGE MASTER TO MASTER_HOST={}, MASTER_PORT={port}, MASTER_USER='hastack_repl', MASTER_PASSWORD={}, \
         MASTER_USE_GTID=slave_pos, MASTER_CONNECT_RETRY=1, MASTER_HEARTBEAT_PERIOD=1",
        mycnf::sql_string(host),
        mycnf::sql_string(repl_password)
    );
    sqlx::raw_sql(&change)
        .execute(pool)
        .await
        .map_err(sql("CHANGE MASTER"))?;
    sqlx::query("START SLAVE")
        .execute(pool)
        .await
        .map_err(sql("START SLAVE"))?;
    Ok(())
}

async fn health(pool: &MySqlPool, name: &str, is_primary: bool) -> HealthReport {
    let (healthy, mut body) =
        match tokio::time::timeout(Duration::from_secs(2), replication_state(pool, is_primary))
            .await
        {
            Ok(Ok(state)) => state,
            Ok(Err(e)) => (false, json!({ "error": e.to_string() })),
            Err(_) => (
                false,
                json!({ "error": "mariadbd did not answer within 2 s" }),
            ),
        };
    body["node"] = json!(name);
    body["role"] = json!("db");
    HealthReport { healthy, body }
}

/// Role, GTID position and replication threads; healthy when it answers and, on a
/// replica, the SQL thread runs.
async fn replication_state(
    pool: &MySqlPool,
    is_primary: bool,
) -> Result<(bool, serde_json::Value), sqlx::Error> {
    let row = sqlx::query("SELECT @@read_only AS ro, @@gtid_current_pos AS pos")
        .fetch_one(pool)
        .await?;
    let read_only: i64 = row.try_get("ro")?;
    let pos: String = row.try_get("pos")?;
    let mut body = json!({
        "db_role": if is_primary { "primary" } else { "replica" },
        "read_only": read_only != 0,
        "gtid_current_pos": pos,
    });
    if is_primary {
        let status = |name: &'static str| async move {
            let row = sqlx::query(&format!("SHOW GLOBAL STATUS LIKE '{name}'"))
                .fetch_optional(pool)
                .await?;
            Ok::<_, sqlx::Error>(
                row.and_then(|r| r.try_get::<String, _>(1).ok())
                    .unwrap_or_default(),
            )
        };
        body["semi_sync"] = json!(status("Rpl_semi_sync_master_status").await?);
        body["semi_sync_clients"] = json!(
            status("Rpl_semi_sync_master_clients")
                .await?
                .parse::<u32>()
                .unwrap_or(0)
        );
        return Ok((true, body));
    }
    let Some(s) = sqlx::query("SHOW SLAVE STATUS")
        .fetch_optional(pool)
        .await?
    else {
        body["replication"] = serde_json::Value::Null;
        return Ok((false, body));
    };
    let text = |col: &str| s.try_get::<String, _>(col).unwrap_or_default();
    let sql = text("Slave_SQL_Running");
    let healthy = sql == "Yes";
    body["replication"] = json!({
        "master_host": text("Master_Host"),
        "io_running": text("Slave_IO_Running"),
        "sql_running": sql,
        "seconds_behind_master": s.try_get::<Option<u64>, _>("Seconds_Behind_Master").ok().flatten(),
        "gtid_io_pos": text("Gtid_IO_Pos"),
        "last_error": format!("{}{}", text("Last_IO_Error"), text("Last_SQL_Error")),
    });
    Ok((healthy, body))
}

async fn stop(child: &mut Child) {
    let Some(pid) = child.id() else { return };
    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
    if tokio::time::timeout(STOP_TIMEOUT, child.wait())
        .await
        .is_err()
    {
        warn!("mariadbd did not stop within {STOP_TIMEOUT:?}; killing it");
        let _ = child.kill().await;
    }
}
