//! The application's data layer: posts in the MariaDB tier, following its primary across
//! failovers, or everything in one embedded SQLite file.
//!
//! MariaDB: one pool per db node, and the monitor's view ([`crate::cluster`]) says which
//! node is the primary and which replicas serve reads.
//!
//! - **Reads never depend on the primary.** They go to a readable replica round-robin,
//!   then to the other replicas, then to the primary. A lookup by id that a replica has
//!   not seen yet asks the primary, then the other nodes (read-your-writes); a post found
//!   nowhere while some node could not be asked is [`StoreError::Unavailable`], not a
//!   false "no such post".
//! - **Writes go to the primary the view names.** With none, a write waits up to
//!   [`Limits::failover_wait`] for one to appear (riding through a failover), then gives
//!   up with [`StoreError::NoPrimary`].
//! - **A write is retried only when that is safe.** Each write is one transaction, so a
//!   failure before `COMMIT` was sent (connection refused or lost, the server read-only,
//!   a timeout) stored nothing and moves to the (new) primary. A failure during `COMMIT`
//!   is an unknown outcome: retried only when the request has an idempotency key (the
//!   retry then finds the post if it was stored), else [`StoreError::OutcomeUnknown`].
//! - **Idempotency keys** are stored with their post in one transaction; a repeated key
//!   returns the post stored the first time, and a race between duplicates is settled
//!   by the key's primary key (the loser rolls back and returns the winner's post).
//!
//! Every query or transaction is bounded by `db.query_timeout`, on the client and with
//! `max_statement_time` on the server.
//!
//! With [`ClientTls`] (`tls.internal`) every connection to a db node runs over TLS: the
//! app node's certificate of the internal CA as client certificate, the db node's
//! verified against the CA and the address connected to (its IP SAN). sqlx reads the
//! files at each new connection, so re-issued certificates need no restart.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::{NaiveDateTime, SecondsFormat, Utc};
use serde::Serialize;
use sqlx::mysql::{
    MySql, MySqlConnectOptions, MySqlConnection, MySqlDatabaseError, MySqlPoolOptions, MySqlSslMode,
};
use sqlx::pool::PoolConnection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::{Connection, Executor, Row};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::cluster::{self, Cluster, DbNode, View};
use crate::idempotency::{IdempotencyKey, request_hash};
use crate::metrics::{AppMetrics, NodeLabel};

/// A stored post, as the API returns it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Post {
    /// Assigned by the database.
    pub id: i64,
    /// Who wrote it.
    pub author: String,
    /// What they wrote.
    pub body: String,
    /// When it was stored, RFC 3339 UTC with milliseconds.
    pub created_at: String,
}

/// What a write did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    /// The post was stored by this request (201).
    New(Post),
    /// The request's idempotency key had already stored this post (200).
    Replayed(Post),
}

impl Created {
    /// The post, new or replayed.
    pub fn post(&self) -> &Post {
        match self {
            Created::New(p) | Created::Replayed(p) => p,
        }
    }
}

/// Why the store could not answer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No db node is a writable primary (failing over, or the tier is down).
    #[error("no writable primary ({0}); retry in a moment")]
    NoPrimary(String),
    /// No db node could serve the read, or could say for sure that a post is absent.
    #[error("no database node could answer ({0}); retry in a moment")]
    Unavailable(String),
    /// The write may have been stored (the connection failed during `COMMIT`, or timed
    /// out), and it has no idempotency key to retry it safely.
    #[error(
        "the post may or may not have been stored ({0}); send an Idempotency-Key header to retry safely"
    )]
    OutcomeUnknown(String),
    /// The idempotency key was used before for a different author or body.
    #[error("this Idempotency-Key was already used with a different author or body")]
    KeyReused,
    /// A database error.
    #[error("{which}: {cause}")]
    Db {
        /// The db node (or `sqlite`).
        which: String,
        /// The cause.
        #[source]
        cause: sqlx::Error,
    },
    /// A query took longer than `db.query_timeout`.
    #[error("{which}: no answer within {after:?}")]
    Timeout {
        /// The db node (or `sqlite`).
        which: String,
        /// The bound.
        after: Duration,
    },
    /// The schema could not be migrated.
    #[error("{which}: migrating the schema: {cause}")]
    Migrate {
        /// The db node (or `sqlite`).
        which: String,
        /// The cause.
        #[source]
        cause: sqlx::migrate::MigrateError,
    },
}

/// The bounds the store keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bound of every query or transaction.
    pub query_timeout: Duration,
    /// Replicas further behind stop serving reads.
    pub max_replica_lag: Duration,
    /// How long a write waits for a primary (and a read for a readable node) before
    /// answering 503: long enough to ride through a failover.
    pub failover_wait: Duration,
}

impl Limits {
    /// The shortest [`Limits::failover_wait`].
    pub const MIN_FAILOVER_WAIT: Duration = Duration::from_millis(1500);

    /// The limits the topology's db settings ask for. A failover takes about the
    /// primary's lease plus a probe or two, so writes wait that long, at least
    /// [`Limits::MIN_FAILOVER_WAIT`].
    pub fn from_settings(db: &hastack_config::DbSettings) -> Limits {
        Limits {
            query_timeout: db.query_timeout,
            max_replica_lag: db.max_replica_lag,
            failover_wait: Limits::MIN_FAILOVER_WAIT
                .max(db.failover_lease + Duration::from_millis(900)),
        }
    }
}

/// Connection settings of one MariaDB node as the app sees it.
#[derive(Debug, Clone)]
pub struct MariaDbTarget {
    /// Node name.
    pub name: String,
    /// Host address.
    pub host: String,
    /// Port.
    pub port: u16,
}

/// The files of TLS to the db nodes: the app node's certificate of the internal CA and
/// the CA that signed the db nodes'.
pub type ClientTls = hastack_tls::pki::NodeFiles;

/// The app's MariaDB account.
#[derive(Clone)]
pub struct MariaDbAccount {
    /// The application's database.
    pub database: String,
    /// The user.
    pub user: String,
    /// Its password.
    pub password: String,
    /// TLS to the db nodes (`tls.internal`); `None`: no TLS options.
    pub tls: Option<ClientTls>,
}

impl std::fmt::Debug for MariaDbAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MariaDbAccount")
            .field("database", &self.database)
            .field("user", &self.user)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

/// How one db node looks from the app: the `/healthz` document's own type.
pub use hastack_status::health::ReplicaView as ReplicaHealth;

/// What the store can do right now, for `/healthz`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbHealth {
    /// Some node can serve reads.
    pub can_read: bool,
    /// There is a writable primary.
    pub can_write: bool,
    /// The primary's name.
    pub primary: Option<String>,
    /// Every other db node.
    pub replicas: Vec<ReplicaHealth>,
    /// Why writes or reads cannot be served, if they cannot.
    pub problem: Option<String>,
    /// The TLS cipher of one of the app's sessions (with the primary if there is one),
    /// as the last probe found it; `None` when not encrypted (or SQLite).
    pub db_tls: Option<String>,
}

impl DbHealth {
    /// The `/healthz` document of app node `node` whose database is `db` (`mariadb`,
    /// `sqlite`) and that answered `traffic`; no process or endpoints of a team's app.
    pub fn app_health(
        self,
        node: &str,
        db: &str,
        traffic: hastack_status::health::Traffic,
    ) -> hastack_status::health::AppHealth {
        hastack_status::health::AppHealth {
            node: node.to_string(),
            db: db.to_string(),
            can_read: self.can_read,
            can_write: self.can_write,
            primary: self.primary,
            replicas: self.replicas,
            problem: self.problem,
            db_tls: self.db_tls,
            traffic,
            process: None,
            endpoints: Vec::new(),
        }
    }
}

/// Where posts live. Clones share pools, view and counters.
#[derive(Debug, Clone)]
pub struct Store {
    backend: Backend,
    limits: Limits,
    metrics: AppMetrics,
}

#[derive(Debug, Clone)]
enum Backend {
    MariaDb(Arc<Cluster>),
    Sqlite(SqlitePool),
}

/// How long a pool waits for a connection to a db node.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(1);
/// Connections per db node and app node.
const POOL_SIZE: u32 = 16;
/// Bound of a migration run.
const MIGRATE_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound of the SQLite health ping.
const PING_TIMEOUT: Duration = Duration::from_millis(400);
/// The label of the SQLite file in metrics and errors.
const SQLITE: &str = "sqlite";

const LIST_SQL: &str = "SELECT id, author, body, created_at FROM posts ORDER BY id DESC LIMIT ?";
const GET_SQL: &str = "SELECT id, author, body, created_at FROM posts WHERE id = ?";
const INSERT_POST_SQL: &str = "INSERT INTO posts (author, body, created_at) VALUES (?, ?, ?)";
const INSERT_KEY_SQL: &str = "INSERT INTO idempotency_keys (idem_key, post_id, request_hash, created_at) VALUES (?, ?, ?, ?)";
const FIND_KEY_SQL: &str = "SELECT k.request_hash, p.id, p.author, p.body, p.created_at \
     FROM idempotency_keys k JOIN posts p ON p.id = k.post_id WHERE k.idem_key = ?";

fn iso(ts: NaiveDateTime) -> String {
    ts.and_utc().to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Now, truncated to the milliseconds the schema keeps, so what a POST returns is
/// exactly what a later GET reads.
fn now_millis() -> NaiveDateTime {
    let ms = Utc::now().timestamp_millis();
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|d| d.naive_utc())
        .unwrap_or_default()
}

impl Store {
    /// Pools to every MariaDB node of the tier. Connections are made on first use, so the
    /// app starts whatever the state of the database; nothing is known of the primary
    /// until the monitor ([`Store::spawn_monitor`]) has probed the nodes.
    pub fn mariadb(
        targets: &[MariaDbTarget],
        account: &MariaDbAccount,
        limits: Limits,
        metrics: AppMetrics,
    ) -> Store {
        let statement_time = limits.query_timeout.as_secs_f64();
        let nodes = targets
            .iter()
            .map(|t| {
                let base = MySqlConnectOptions::new()
                    .host(&t.host)
                    .port(t.port)
                    .username(&account.user)
                    .password(&account.password)
                    .charset("utf8mb4");
                let base = match &account.tls {
                    Some(tls) => base
                        .ssl_mode(MySqlSslMode::VerifyIdentity)
                        .ssl_ca(&tls.ca)
                        .ssl_client_cert(&tls.cert)
                        .ssl_client_key(&tls.key),
                    None => base,
                };
                let pool = MySqlPoolOptions::new()
                    .max_connections(POOL_SIZE)
                    .acquire_timeout(ACQUIRE_TIMEOUT)
                    .after_connect(move |conn, _| {
                        Box::pin(async move {
                            let sql =
                                format!("SET SESSION max_statement_time = {statement_time:.3}");
                            conn.execute(sql.as_str()).await?;
                            Ok(())
                        })
                    })
                    .connect_lazy_with(base.clone().database(&account.database));
                DbNode {
                    name: t.name.clone(),
                    pool,
                    probe_options: base,
                }
            })
            .collect();
        Store {
            backend: Backend::MariaDb(Arc::new(Cluster::new(nodes, limits, metrics.clone()))),
            limits,
            metrics,
        }
    }

    /// An SQLite file (created if missing), in WAL mode so several processes share it.
    pub async fn sqlite(
        path: &std::path::Path,
        limits: Limits,
        metrics: AppMetrics,
    ) -> Result<Store, StoreError> {
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts)
            .await
            .map_err(sqlite_err)?;
        Ok(Store {
            backend: Backend::Sqlite(pool),
            limits,
            metrics,
        })
    }

    /// Which engine, for `/healthz`.
    pub fn engine(&self) -> &'static str {
        match self.backend {
            Backend::MariaDb(_) => "mariadb",
            Backend::Sqlite(_) => "sqlite",
        }
    }

    /// The counters the store and the routes update.
    pub fn metrics(&self) -> &AppMetrics {
        &self.metrics
    }

    /// The bounds the store keeps.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Starts the monitor that probes the db nodes until `shutdown` turns true
    /// (MariaDB only: an SQLite file has nothing to monitor).
    pub fn spawn_monitor(
        &self,
        shutdown: watch::Receiver<bool>,
    ) -> Option<tokio::task::JoinHandle<()>> {
        match &self.backend {
            Backend::MariaDb(c) => Some(tokio::spawn(cluster::monitor(c.clone(), shutdown))),
            Backend::Sqlite(_) => None,
        }
    }

    /// The monitor's view of the db tier (MariaDB only).
    pub fn view(&self) -> Option<watch::Receiver<Arc<View>>> {
        match &self.backend {
            Backend::MariaDb(c) => Some(c.view.subscribe()),
            Backend::Sqlite(_) => None,
        }
    }

    /// Applies the schema migrations (on the primary, waiting a little for one).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        match &self.backend {
            Backend::MariaDb(c) => {
                let deadline = Instant::now() + self.limits.failover_wait;
                let Some((idx, _)) = c.wait_for_primary(None, deadline).await else {
                    return Err(StoreError::NoPrimary(c.view.borrow().why_no_primary()));
                };
                let node = &c.nodes[idx];
                let run = sqlx::migrate!("migrations/mysql").run(&node.pool);
                match tokio::time::timeout(MIGRATE_TIMEOUT, run).await {
                    Ok(r) => r.map_err(|cause| StoreError::Migrate {
                        which: node.name.clone(),
                        cause,
                    }),
                    Err(_) => Err(StoreError::Timeout {
                        which: node.name.clone(),
                        after: MIGRATE_TIMEOUT,
                    }),
                }
            }
            Backend::Sqlite(pool) => {
                let run = sqlx::migrate!("migrations/sqlite").run(pool);
                match tokio::time::timeout(MIGRATE_TIMEOUT, run).await {
                    Ok(r) => r.map_err(|cause| StoreError::Migrate {
                        which: SQLITE.into(),
                        cause,
                    }),
                    Err(_) => Err(StoreError::Timeout {
                        which: SQLITE.into(),
                        after: MIGRATE_TIMEOUT,
                    }),
                }
            }
        }
    }

    /// Stores a post (on the primary). With `key`, a post already stored under that key
    /// is returned instead ([`Created::Replayed`]), or [`StoreError::KeyReused`] if it
    /// was stored for a different author or body.
    pub async fn create(
        &self,
        author: &str,
        body: &str,
        key: Option<&IdempotencyKey>,
    ) -> Result<Created, StoreError> {
        let hash = key.map(|_| request_hash(author, body));
        let keyed = key
            .zip(hash.as_deref())
            .map(|(key, hash)| Keyed { key, hash });
        let created = match &self.backend {
            Backend::MariaDb(c) => c.create(author, body, keyed.as_ref()).await,
            Backend::Sqlite(pool) => {
                create_sqlite(
                    pool,
                    author,
                    body,
                    keyed.as_ref(),
                    self.limits.query_timeout,
                )
                .await
            }
        }?;
        match &created {
            Created::New(_) => self.metrics.posts_created.inc(),
            Created::Replayed(_) => self.metrics.idempotent_replays.inc(),
        };
        Ok(created)
    }

    /// The newest `limit` posts, newest first (from a replica when one can serve).
    pub async fn list(&self, limit: i64) -> Result<Vec<Post>, StoreError> {
        match &self.backend {
            Backend::MariaDb(c) => c.list(limit).await,
            Backend::Sqlite(pool) => {
                let q = sqlx::query(LIST_SQL).bind(limit).fetch_all(pool);
                let rows = self.bounded_sqlite(q).await?;
                self.metrics
                    .reads
                    .get_or_create(&NodeLabel::new(SQLITE))
                    .inc();
                rows.iter()
                    .map(post_from_sqlite)
                    .collect::<Result<_, _>>()
                    .map_err(sqlite_err)
            }
        }
    }

    /// One post by id: from a replica, else from the primary or any other node that has
    /// it (read-your-writes whatever the lag).
    pub async fn get(&self, id: i64) -> Result<Option<Post>, StoreError> {
        match &self.backend {
            Backend::MariaDb(c) => c.get(id).await,
            Backend::Sqlite(pool) => {
                let q = sqlx::query(GET_SQL).bind(id).fetch_optional(pool);
                let row = self.bounded_sqlite(q).await?;
                self.metrics
                    .reads
                    .get_or_create(&NodeLabel::new(SQLITE))
                    .inc();
                row.as_ref()
                    .map(post_from_sqlite)
                    .transpose()
                    .map_err(sqlite_err)
            }
        }
    }

    /// What the store can do now: from the monitor's view (no query) for MariaDB; a
    /// bounded ping of the file for SQLite.
    pub async fn health(&self) -> DbHealth {
        match &self.backend {
            Backend::MariaDb(c) => {
                let v = c.view.borrow().clone();
                let problem = if v.primary.is_some() {
                    None
                } else {
                    Some(format!("no writable primary: {}", v.why_no_primary()))
                };
                DbHealth {
                    can_read: v.can_read(),
                    can_write: v.primary.is_some(),
                    primary: v.primary_name().map(str::to_string),
                    replicas: v
                        .nodes
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| !v.is_primary(*i))
                        .map(|(_, n)| ReplicaHealth {
                            name: n.name.clone(),
                            status: n.state.status(),
                            lag_s: n.state.lag_s(),
                        })
                        .collect(),
                    problem,
                    db_tls: v.db_tls.clone(),
                }
            }
            Backend::Sqlite(pool) => {
                let ping = sqlx::query("SELECT 1").execute(pool);
                let problem = match tokio::time::timeout(PING_TIMEOUT, ping).await {
                    Ok(Ok(_)) => None,
                    Ok(Err(e)) => Some(e.to_string()),
                    Err(_) => Some(format!("no answer within {PING_TIMEOUT:?}")),
                };
                DbHealth {
                    can_read: problem.is_none(),
                    can_write: problem.is_none(),
                    primary: None,
                    replicas: Vec::new(),
                    problem,
                    db_tls: None,
                }
            }
        }
    }

    async fn bounded_sqlite<T>(
        &self,
        q: impl Future<Output = Result<T, sqlx::Error>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.limits.query_timeout, q).await {
            Ok(r) => r.map_err(sqlite_err),
            Err(_) => Err(StoreError::Timeout {
                which: SQLITE.into(),
                after: self.limits.query_timeout,
            }),
        }
    }
}

fn sqlite_err(cause: sqlx::Error) -> StoreError {
    StoreError::Db {
        which: SQLITE.into(),
        cause,
    }
}

/// An idempotency key with the hash of the request it came with.
#[derive(Debug, Clone, Copy)]
struct Keyed<'a> {
    key: &'a IdempotencyKey,
    hash: &'a str,
}

/// How far a write transaction got: only a failure during `COMMIT` may have stored it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    BeforeCommit,
    Commit,
}

/// Why one write transaction did not store a post.
#[derive(Debug)]
enum InsertFail {
    KeyReused,
    Sql(sqlx::Error),
}

impl From<sqlx::Error> for InsertFail {
    fn from(e: sqlx::Error) -> InsertFail {
        InsertFail::Sql(e)
    }
}

/// The answer for a key found stored with `hash` and `post`.
fn replay(keyed: &Keyed<'_>, hash: &str, post: Post) -> Result<Created, InsertFail> {
    if hash == keyed.hash {
        Ok(Created::Replayed(post))
    } else {
        Err(InsertFail::KeyReused)
    }
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

/// One write on a MariaDB connection: look the key up, then insert the post (and key)
/// in one transaction. `stage` says how far it got, for the caller's retry decision.
async fn insert_mysql(
    conn: &mut MySqlConnection,
    author: &str,
    body: &str,
    keyed: Option<&Keyed<'_>>,
    stage: &mut Stage,
) -> Result<Created, InsertFail> {
    async fn find(
        conn: &mut MySqlConnection,
        keyed: &Keyed<'_>,
    ) -> Result<Option<Result<Created, InsertFail>>, sqlx::Error> {
        let row = sqlx::query(FIND_KEY_SQL)
            .bind(keyed.key.as_str())
            .fetch_optional(&mut *conn)
            .await?;
        match row {
            None => Ok(None),
            Some(row) => {
                let hash: String = row.try_get("request_hash")?;
                Ok(Some(replay(keyed, &hash, post_from_mysql(&row)?)))
            }
        }
    }
    if let Some(k) = keyed
        && let Some(found) = find(conn, k).await?
    {
        return found;
    }
    let created = now_millis();
    let mut tx = conn.begin().await?;
    let id = sqlx::query(INSERT_POST_SQL)
        .bind(author)
        .bind(body)
        .bind(created)
        .execute(&mut *tx)
        .await?
        .last_insert_id() as i64;
    if let Some(k) = keyed {
        let inserted = sqlx::query(INSERT_KEY_SQL)
            .bind(k.key.as_str())
            .bind(id)
            .bind(k.hash)
            .bind(created)
            .execute(&mut *tx)
            .await;
        if let Err(e) = inserted {
            if !is_unique_violation(&e) {
                return Err(e.into());
            }
            // A concurrent request with the same key committed first: its post is ours.
            tx.rollback().await?;
            return match find(conn, k).await? {
                Some(found) => found,
                None => Err(e.into()),
            };
        }
    }
    *stage = Stage::Commit;
    tx.commit().await?;
    Ok(Created::New(Post {
        id,
        author: author.to_string(),
        body: body.to_string(),
        created_at: iso(created),
    }))
}

/// The same write on the SQLite file.
async fn insert_sqlite(
    pool: &SqlitePool,
    author: &str,
    body: &str,
    keyed: Option<&Keyed<'_>>,
    stage: &mut Stage,
) -> Result<Created, InsertFail> {
    async fn find(
        pool: &SqlitePool,
        keyed: &Keyed<'_>,
    ) -> Result<Option<Result<Created, InsertFail>>, sqlx::Error> {
        let row = sqlx::query(FIND_KEY_SQL)
            .bind(keyed.key.as_str())
            .fetch_optional(pool)
            .await?;
        match row {
            None => Ok(None),
            Some(row) => {
                let hash: String = row.try_get("request_hash")?;
                Ok(Some(replay(keyed, &hash, post_from_sqlite(&row)?)))
            }
        }
    }
    if let Some(k) = keyed
        && let Some(found) = find(pool, k).await?
    {
        return found;
    }
    let created = now_millis();
    // The first statement writes, so the transaction takes the write lock at once.
    let mut tx = pool.begin().await?;
    let id = sqlx::query(INSERT_POST_SQL)
        .bind(author)
        .bind(body)
        .bind(created)
        .execute(&mut *tx)
        .await?
        .last_insert_rowid();
    if let Some(k) = keyed {
        let inserted = sqlx::query(INSERT_KEY_SQL)
            .bind(k.key.as_str())
            .bind(id)
            .bind(k.hash)
            .bind(created)
            .execute(&mut *tx)
            .await;
        if let Err(e) = inserted {
            if !is_unique_violation(&e) {
                return Err(e.into());
            }
            tx.rollback().await?;
            return match find(pool, k).await? {
                Some(found) => found,
                None => Err(e.into()),
            };
        }
    }
    *stage = Stage::Commit;
    tx.commit().await?;
    Ok(Created::New(Post {
        id,
        author: author.to_string(),
        body: body.to_string(),
        created_at: iso(created),
    }))
}

async fn create_sqlite(
    pool: &SqlitePool,
    author: &str,
    body: &str,
    keyed: Option<&Keyed<'_>>,
    timeout: Duration,
) -> Result<Created, StoreError> {
    let mut stage = Stage::BeforeCommit;
    let attempt = insert_sqlite(pool, author, body, keyed, &mut stage);
    match tokio::time::timeout(timeout, attempt).await {
        Ok(Ok(created)) => Ok(created),
        Ok(Err(InsertFail::KeyReused)) => Err(StoreError::KeyReused),
        Ok(Err(InsertFail::Sql(e))) => Err(sqlite_err(e)),
        Err(_) if stage == Stage::Commit => Err(StoreError::OutcomeUnknown(format!(
            "{SQLITE}: COMMIT had no answer within {timeout:?}"
        ))),
        Err(_) => Err(StoreError::Timeout {
            which: SQLITE.into(),
            after: timeout,
        }),
    }
}

/// What a failed write attempt on one node means for the request.
#[derive(Debug)]
enum Attempt {
    /// Nothing was stored: the write may go to the (new) primary.
    Safe(String),
    /// It may have been stored.
    Unknown(String),
    /// Retrying would not help.
    Fatal(StoreError),
}

/// What kind of failure a database error is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// The connection failed (refused, lost, no connection in time).
    Connection,
    /// The server refused the statement for a passing reason: read-only (1290), shutting
    /// down, killed, statement or lock timeout, deadlock.
    Refused,
    /// Anything else.
    Other,
}

/// MariaDB error numbers that [`Failure::Refused`] covers.
const REFUSED_ERRORS: [u16; 9] = [
    1290, // ER_OPTION_PREVENTS_STATEMENT: running with --read-only
    1836, // ER_READ_ONLY_MODE
    1792, // ER_CANT_EXECUTE_IN_READ_ONLY_TRANSACTION
    1053, // ER_SERVER_SHUTDOWN
    1927, // ER_CONNECTION_KILLED
    1317, // ER_QUERY_INTERRUPTED
    1969, // ER_STATEMENT_TIMEOUT (max_statement_time)
    1205, // ER_LOCK_WAIT_TIMEOUT
    1213, // ER_LOCK_DEADLOCK
];

fn classify(e: &sqlx::Error) -> Failure {
    match e {
        sqlx::Error::Database(d) => match d.try_downcast_ref::<MySqlDatabaseError>() {
            Some(m) if REFUSED_ERRORS.contains(&m.number()) => Failure::Refused,
            _ => Failure::Other,
        },
        sqlx::Error::Io(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => Failure::Connection,
        _ => Failure::Other,
    }
}

/// A read of the MariaDB tier.
#[derive(Debug, Clone, Copy)]
enum Read {
    List(i64),
    Get(i64),
}

async fn read_mysql(conn: &mut MySqlConnection, q: Read) -> Result<Vec<Post>, sqlx::Error> {
    let rows = match q {
        Read::List(limit) => sqlx::query(LIST_SQL).bind(limit).fetch_all(conn).await?,
        Read::Get(id) => sqlx::query(GET_SQL).bind(id).fetch_all(conn).await?,
    };
    rows.iter().map(post_from_mysql).collect()
}

type StillUsable = fn(&View, usize) -> bool;

impl Cluster {
    /// A connection to node `idx`, given up (nothing was sent) as soon as the view says
    /// the node is no longer `still` usable: a dead primary is not waited for.
    async fn acquire(
        &self,
        idx: usize,
        still: StillUsable,
    ) -> Result<PoolConnection<MySql>, String> {
        let mut rx = self.view.subscribe();
        tokio::select! {
            biased;
            conn = self.nodes[idx].pool.acquire() => conn.map_err(|e| {
                self.reprobe();
                e.to_string()
            }),
            _ = rx.wait_for(|v| !still(v, idx)) => {
                Err("its role changed before a connection was made".to_string())
            }
        }
    }

    /// One read on node `idx`, bounded by the query timeout.
    async fn read_on(&self, idx: usize, still: StillUsable, q: Read) -> Result<Vec<Post>, String> {
        let mut conn = self.acquire(idx, still).await?;
        let timeout = self.limits.query_timeout;
        match tokio::time::timeout(timeout, read_mysql(&mut conn, q)).await {
            Ok(Ok(posts)) => {
                self.metrics
                    .reads
                    .get_or_create(&NodeLabel::new(&self.nodes[idx].name))
                    .inc();
                Ok(posts)
            }
            Ok(Err(e)) => {
                if classify(&e) != Failure::Other {
                    conn.close_on_drop();
                    self.reprobe();
                }
                Err(e.to_string())
            }
            Err(_) => {
                conn.close_on_drop();
                self.reprobe();
                Err(format!("no answer within {timeout:?}"))
            }
        }
    }

    /// The readable replicas, starting at the round-robin cursor.
    fn rotated_readers(&self, view: &View) -> Vec<usize> {
        let mut readers: Vec<usize> = view.readers().collect();
        if !readers.is_empty() {
            let start = self.next.fetch_add(1, Ordering::Relaxed) % readers.len();
            readers.rotate_left(start);
        }
        readers
    }

    /// A view in which some node can serve reads, waiting up to the failover wait.
    async fn readable_view(&self) -> Arc<View> {
        self.wait_until_readable(Instant::now() + self.limits.failover_wait)
            .await
    }

    async fn list(&self, limit: i64) -> Result<Vec<Post>, StoreError> {
        let view = self.readable_view().await;
        let mut order: Vec<(usize, StillUsable)> = self
            .rotated_readers(&view)
            .into_iter()
            .map(|i| (i, View::serves_reads as StillUsable))
            .collect();
        if let Some(p) = view.primary {
            order.push((p, View::serves_reads));
        }
        if order.is_empty() {
            return Err(StoreError::Unavailable(view.why_no_primary()));
        }
        let mut failures = Vec::new();
        for (n, &(idx, still)) in order.iter().enumerate() {
            match self.read_on(idx, still, Read::List(limit)).await {
                Ok(posts) => return Ok(posts),
                Err(e) => {
                    let name = &self.nodes[idx].name;
                    warn!(node = %name, error = %e, "read failed");
                    if n + 1 < order.len() {
                        self.metrics.read_fallbacks.inc();
                    }
                    failures.push(format!("{name}: {e}"));
                }
            }
        }
        Err(StoreError::Unavailable(failures.join("; ")))
    }

    async fn get(&self, id: i64) -> Result<Option<Post>, StoreError> {
        let view = self.readable_view().await;
        let readers = self.rotated_readers(&view);
        // A replica first; then the primary, which has every acknowledged write; then
        // every other node that answers, for when there is no primary to ask.
        let mut order: Vec<(usize, StillUsable)> = Vec::new();
        if let Some(&first) = readers.first() {
            order.push((first, View::serves_reads));
        }
        if let Some(p) = view.primary {
            order.push((p, View::is_primary));
        }
        for &r in readers.iter().skip(1) {
            order.push((r, View::serves_reads));
        }
        for i in 0..self.nodes.len() {
            if view.answers(i) && !order.iter().any(|(j, _)| *j == i) {
                order.push((i, View::answers));
            }
        }
        let mut absent = 0;
        let mut failures = Vec::new();
        for (idx, still) in order {
            let name = &self.nodes[idx].name;
            match self.read_on(idx, still, Read::Get(id)).await {
                Ok(posts) => match posts.into_iter().next() {
                    Some(post) => return Ok(Some(post)),
                    None if view.is_primary(idx) => return Ok(None),
                    None => absent += 1,
                },
                Err(e) => {
                    warn!(node = %name, error = %e, "read failed");
                    self.metrics.read_fallbacks.inc();
                    failures.push(format!("{name}: {e}"));
                }
            }
        }
        if absent == self.nodes.len() {
            // Every node answered and none has it.
            return Ok(None);
        }
        let mut why = format!(
            "post {id} is on none of the {absent} node(s) asked, and the others could not be asked"
        );
        if !failures.is_empty() {
            why.push_str(&format!(" ({})", failures.join("; ")));
        } else if view.primary.is_none() {
            why.push_str(&format!(" ({})", view.why_no_primary()));
        }
        Err(StoreError::Unavailable(why))
    }

    /// One write attempt on node `idx`, the primary of the current view.
    async fn write_on(
        &self,
        idx: usize,
        author: &str,
        body: &str,
        keyed: Option<&Keyed<'_>>,
    ) -> Result<Created, Attempt> {
        let mut conn = self
            .acquire(idx, View::is_primary)
            .await
            .map_err(Attempt::Safe)?;
        let mut stage = Stage::BeforeCommit;
        let timeout = self.limits.query_timeout;
        let attempt = insert_mysql(&mut conn, author, body, keyed, &mut stage);
        let e = match tokio::time::timeout(timeout, attempt).await {
            Ok(Ok(created)) => return Ok(created),
            Ok(Err(InsertFail::KeyReused)) => return Err(Attempt::Fatal(StoreError::KeyReused)),
            Ok(Err(InsertFail::Sql(e))) => e,
            Err(_) => {
                // The server rolls back what was not committed when the link closes.
                conn.close_on_drop();
                let msg = format!("no answer within {timeout:?}");
                return Err(match stage {
                    Stage::BeforeCommit => Attempt::Safe(msg),
                    Stage::Commit => Attempt::Unknown(format!("COMMIT: {msg}")),
                });
            }
        };
        let failure = classify(&e);
        if failure == Failure::Connection {
            conn.close_on_drop();
        }
        match (failure, stage) {
            (Failure::Other, _) => Err(Attempt::Fatal(StoreError::Db {
                which: self.nodes[idx].name.clone(),
                cause: e,
            })),
            (_, Stage::BeforeCommit) => Err(Attempt::Safe(e.to_string())),
            (_, Stage::Commit) => Err(Attempt::Unknown(format!("COMMIT: {e}"))),
        }
    }

    /// Stores a post on the primary, following it across a failover when that is safe.
    async fn create(
        &self,
        author: &str,
        body: &str,
        keyed: Option<&Keyed<'_>>,
    ) -> Result<Created, StoreError> {
        let deadline = Instant::now() + self.limits.failover_wait;
        let mut failed_round = None;
        let mut last_failure: Option<String> = None;
        let mut maybe_stored = false;
        loop {
            let found = if failed_round.is_some() && Instant::now() >= deadline {
                None
            } else {
                self.wait_for_primary(failed_round, deadline).await
            };
            let Some((idx, round)) = found else {
                self.metrics.writes_refused_no_primary.inc();
                let why = last_failure.unwrap_or_else(|| self.view.borrow().why_no_primary());
                warn!(reason = %why, "write refused: no writable primary");
                return Err(StoreError::NoPrimary(why));
            };
            let name = &self.nodes[idx].name;
            if let Some(previous) = &last_failure {
                self.metrics.writes_retried.inc();
                info!(primary = %name, previous = %previous, "retrying the write");
            }
            let why = match self.write_on(idx, author, body, keyed).await {
                // The post this request stored before its link failed: it is new to the client.
                Ok(Created::Replayed(post)) if maybe_stored => return Ok(Created::New(post)),
                Ok(created) => return Ok(created),
                Err(Attempt::Fatal(e)) => return Err(e),
                Err(Attempt::Unknown(e)) if keyed.is_none() => {
                    warn!(primary = %name, error = %e, "write outcome unknown");
                    self.reprobe();
                    return Err(StoreError::OutcomeUnknown(format!("{name}: {e}")));
                }
                Err(Attempt::Unknown(e)) => {
                    maybe_stored = true;
                    e
                }
                Err(Attempt::Safe(e)) => e,
            };
            warn!(primary = %name, error = %why, "write failed; looking for the primary again");
            self.reprobe();
            failed_round = Some(round);
            last_failure = Some(format!("{name}: {why}"));
        }
    }
}

fn post_from_mysql(row: &sqlx::mysql::MySqlRow) -> Result<Post, sqlx::Error> {
    Ok(Post {
        id: row.try_get("id")?,
        author: row.try_get("author")?,
        body: row.try_get("body")?,
        created_at: iso(row.try_get("created_at")?),
    })
}

fn post_from_sqlite(row: &sqlx::sqlite::SqliteRow) -> Result<Post, sqlx::Error> {
    Ok(Post {
        id: row.try_get("id")?,
        author: row.try_get("author")?,
        body: row.try_get("body")?,
        created_at: iso(row.try_get("created_at")?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const LIMITS: Limits = Limits {
        query_timeout: Duration::from_secs(5),
        max_replica_lag: Duration::from_secs(5),
        failover_wait: Duration::from_millis(200),
    };

    async fn sqlite_store(dir: &tempfile::TempDir) -> Store {
        let store = Store::sqlite(&dir.path().join("t.sqlite"), LIMITS, AppMetrics::default())
            .await
            .expect("open");
        store.migrate().await.expect("migrate");
        store
    }

    #[tokio::test]
    async fn sqlite_store_round_trips_posts_newest_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = sqlite_store(&dir).await;
        store.migrate().await.expect("migrations are idempotent");
        let a = store.create("ann", "first", None).await.expect("create");
        let b = store
            .create("bob", "second 'quoted' \"text\"", None)
            .await
            .expect("create");
        let (Created::New(a), Created::New(b)) = (a, b) else {
            panic!("unkeyed writes are new");
        };
        assert!(b.id > a.id);
        assert_eq!(store.get(a.id).await.expect("get"), Some(a.clone()));
        assert_eq!(store.get(9999).await.expect("get"), None);
        let list = store.list(10).await.expect("list");
        assert_eq!(list, vec![b, a]);
        assert!(list[0].created_at.ends_with('Z'));
        let health = store.health().await;
        assert!(health.can_read && health.can_write, "{health:?}");
        assert!(health.replicas.is_empty());
        assert_eq!(store.metrics().posts_created.get(), 2);
    }

    #[tokio::test]
    async fn sqlite_keys_replay_and_refuse_other_content() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = sqlite_store(&dir).await;
        let key = IdempotencyKey::parse("k-1").expect("key");
        let first = store.create("ann", "hi", Some(&key)).await.expect("create");
        let Created::New(post) = first else {
            panic!("first use stores: {first:?}");
        };
        let again = store.create("ann", "hi", Some(&key)).await.expect("replay");
        assert_eq!(again, Created::Replayed(post.clone()));
        assert!(matches!(
            store.create("ann", "other", Some(&key)).await,
            Err(StoreError::KeyReused)
        ));
        // Keys compare exactly.
        let upper = IdempotencyKey::parse("K-1").expect("key");
        let other = store
            .create("ann", "hi", Some(&upper))
            .await
            .expect("create");
        assert!(matches!(other, Created::New(ref p) if p.id != post.id));
        assert_eq!(store.list(10).await.expect("list").len(), 2);
        assert_eq!(store.metrics().idempotent_replays.get(), 1);
    }

    #[tokio::test]
    async fn sqlite_concurrent_duplicates_store_one_post() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = sqlite_store(&dir).await;
        let key = IdempotencyKey::parse("same").expect("key");
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let (store, key) = (store.clone(), key.clone());
            set.spawn(async move { store.create("ann", "once", Some(&key)).await });
        }
        let mut ids = Vec::new();
        let mut new = 0;
        while let Some(r) = set.join_next().await {
            let created = r.expect("task").expect("create");
            new += usize::from(matches!(created, Created::New(_)));
            ids.push(created.post().id);
        }
        assert_eq!(new, 1, "exactly one request stores the post");
        assert!(ids.windows(2).all(|w| w[0] == w[1]), "{ids:?}");
        assert_eq!(store.list(10).await.expect("list").len(), 1);
    }

    #[test]
    fn failover_wait_covers_the_lease() {
        let mut db = hastack_config::Topology::default_topology().db;
        db.failover_lease = Duration::from_millis(600);
        assert_eq!(
            Limits::from_settings(&db).failover_wait,
            Limits::MIN_FAILOVER_WAIT
        );
        db.failover_lease = Duration::from_secs(5);
        assert_eq!(
            Limits::from_settings(&db).failover_wait,
            Duration::from_millis(5900)
        );
    }

    #[test]
    fn failures_are_classified_for_retries() {
        assert_eq!(classify(&sqlx::Error::PoolTimedOut), Failure::Connection);
        assert_eq!(
            classify(&sqlx::Error::Io(std::io::Error::from(
                std::io::ErrorKind::ConnectionRefused
            ))),
            Failure::Connection
        );
        assert_eq!(classify(&sqlx::Error::RowNotFound), Failure::Other);
    }
}
