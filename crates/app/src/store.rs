//! The application's data layer: posts, with writes on the primary and reads on the
//! replicas (MariaDB), or everything in one embedded SQLite file.
//!
//! Reads go round-robin to the replicas. A replica that fails falls back to the primary,
//! and so does a lookup by id that a replica has not seen yet: a client that has just
//! created a post can always read it back (read-your-writes), whatever the lag.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use chrono::{NaiveDateTime, SecondsFormat, Utc};
use serde::Serialize;
use sqlx::Row;
use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};

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

/// A database error, with the pool it came from.
#[derive(Debug, thiserror::Error)]
#[error("{which}: {cause}")]
pub struct StoreError {
    which: &'static str,
    cause: sqlx::Error,
}

fn err(which: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |cause| StoreError { which, cause }
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct StoreStats {
    /// Reads a replica could not serve that went to the primary.
    pub replica_fallbacks: AtomicU64,
}

/// Where posts live.
#[derive(Debug, Clone)]
pub enum Store {
    /// MariaDB: one primary, any number of replicas.
    MariaDb {
        /// Writes (and read fallbacks).
        primary: MySqlPool,
        /// Reads, by replica node name.
        replicas: Arc<Vec<(String, MySqlPool)>>,
        /// Round-robin cursor.
        next: Arc<AtomicUsize>,
        /// Counters.
        stats: Arc<StoreStats>,
    },
    /// One SQLite file shared by the app nodes of one machine.
    Sqlite(SqlitePool),
}

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

/// Connection settings of the MariaDB tier as the app sees it.
#[derive(Debug, Clone)]
pub struct MariaDbTarget {
    /// Node name.
    pub name: String,
    /// Host address.
    pub host: String,
    /// Port.
    pub port: u16,
}

impl Store {
    /// Pools to a MariaDB primary and its replicas. Connections are made on first use,
    /// so the app starts whatever the state of the database.
    pub fn mariadb(
        primary: &MariaDbTarget,
        replicas: &[MariaDbTarget],
        database: &str,
        user: &str,
        password: &str,
    ) -> Store {
        let opts = |t: &MariaDbTarget| {
            MySqlConnectOptions::new()
                .host(&t.host)
                .port(t.port)
                .username(user)
                .password(password)
                .database(database)
                .charset("utf8mb4")
        };
        let pool = |t: &MariaDbTarget, max| {
            MySqlPoolOptions::new()
                .max_connections(max)
                .acquire_timeout(Duration::from_secs(3))
                .connect_lazy_with(opts(t))
        };
        Store::MariaDb {
            primary: pool(primary, 16),
            replicas: Arc::new(
                replicas
                    .iter()
                    .map(|r| (r.name.clone(), pool(r, 16)))
                    .collect(),
            ),
            next: Arc::new(AtomicUsize::new(0)),
            stats: Arc::new(StoreStats::default()),
        }
    }

    /// An SQLite file (created if missing), in WAL mode so several processes share it.
    pub async fn sqlite(path: &std::path::Path) -> Result<Store, StoreError> {
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts)
            .await
            .map_err(err("sqlite"))?;
        Ok(Store::Sqlite(pool))
    }

    /// Which engine, for `/healthz`.
    pub fn engine(&self) -> &'static str {
        match self {
            Store::MariaDb { .. } => "mariadb",
            Store::Sqlite(_) => "sqlite",
        }
    }

    /// Counters (MariaDB only).
    pub fn stats(&self) -> Option<&StoreStats> {
        match self {
            Store::MariaDb { stats, .. } => Some(stats),
            Store::Sqlite(_) => None,
        }
    }

    /// Applies the schema migrations (on the primary).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        match self {
            Store::MariaDb { primary, .. } => sqlx::migrate!("migrations/mysql")
                .run(primary)
                .await
                .map_err(|e| StoreError {
                    which: "primary",
                    cause: e.into(),
                }),
            Store::Sqlite(pool) => {
                sqlx::migrate!("migrations/sqlite")
                    .run(pool)
                    .await
                    .map_err(|e| StoreError {
                        which: "sqlite",
                        cause: e.into(),
                    })
            }
        }
    }

    /// Stores a post (on the primary).
    pub async fn create(&self, author: &str, body: &str) -> Result<Post, StoreError> {
        let created = now_millis();
        let id = match self {
            Store::MariaDb { primary, .. } => {
                sqlx::query("INSERT INTO posts (author, body, created_at) VALUES (?, ?, ?)")
                    .bind(author)
                    .bind(body)
                    .bind(created)
                    .execute(primary)
                    .await
                    .map_err(err("primary"))?
                    .last_insert_id() as i64
            }
            Store::Sqlite(pool) => {
                sqlx::query("INSERT INTO posts (author, body, created_at) VALUES (?, ?, ?)")
                    .bind(author)
                    .bind(body)
                    .bind(created)
                    .execute(pool)
                    .await
                    .map_err(err("sqlite"))?
                    .last_insert_rowid()
            }
        };
        Ok(Post {
            id,
            author: author.to_string(),
            body: body.to_string(),
            created_at: iso(created),
        })
    }

    /// The newest `limit` posts, newest first (from a replica).
    pub async fn list(&self, limit: i64) -> Result<Vec<Post>, StoreError> {
        const SQL: &str = "SELECT id, author, body, created_at FROM posts ORDER BY id DESC LIMIT ?";
        match self {
            Store::MariaDb { primary, .. } => {
                if let Some((name, replica)) = self.replica() {
                    match sqlx::query(SQL).bind(limit).fetch_all(replica).await {
                        Ok(rows) => return rows.iter().map(post_from_mysql).collect(),
                        Err(e) => self.fell_back(name, &e),
                    }
                }
                let rows = sqlx::query(SQL)
                    .bind(limit)
                    .fetch_all(primary)
                    .await
                    .map_err(err("primary"))?;
                rows.iter().map(post_from_mysql).collect()
            }
            Store::Sqlite(pool) => {
                let rows = sqlx::query(SQL)
                    .bind(limit)
                    .fetch_all(pool)
                    .await
                    .map_err(err("sqlite"))?;
                rows.iter().map(post_from_sqlite).collect()
            }
        }
    }

    /// One post by id: from a replica, or from the primary if the replica fails or has
    /// not seen it yet.
    pub async fn get(&self, id: i64) -> Result<Option<Post>, StoreError> {
        const SQL: &str = "SELECT id, author, body, created_at FROM posts WHERE id = ?";
        match self {
            Store::MariaDb { primary, .. } => {
                if let Some((name, replica)) = self.replica() {
                    match sqlx::query(SQL).bind(id).fetch_optional(replica).await {
                        Ok(Some(row)) => return post_from_mysql(&row).map(Some),
                        Ok(None) => {}
                        Err(e) => self.fell_back(name, &e),
                    }
                }
                let row = sqlx::query(SQL)
                    .bind(id)
                    .fetch_optional(primary)
                    .await
                    .map_err(err("primary"))?;
                row.as_ref().map(post_from_mysql).transpose()
            }
            Store::Sqlite(pool) => {
                let row = sqlx::query(SQL)
                    .bind(id)
                    .fetch_optional(pool)
                    .await
                    .map_err(err("sqlite"))?;
                row.as_ref().map(post_from_sqlite).transpose()
            }
        }
    }

    /// Checks the write path (primary, or the SQLite file) and each replica, all at once.
    pub async fn health(&self) -> (Result<(), String>, Vec<(String, Result<(), String>)>) {
        const PING_TIMEOUT: Duration = Duration::from_millis(400);
        async fn ping<DB: sqlx::Database>(pool: sqlx::Pool<DB>) -> Result<(), String>
        where
            for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
            for<'q> <DB as sqlx::Database>::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
        {
            match tokio::time::timeout(PING_TIMEOUT, sqlx::query("SELECT 1").execute(&pool)).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("no answer within {PING_TIMEOUT:?}")),
            }
        }
        match self {
            Store::MariaDb {
                primary, replicas, ..
            } => {
                let mut set = tokio::task::JoinSet::new();
                for (i, (_, pool)) in replicas.iter().enumerate() {
                    let pool = pool.clone();
                    set.spawn(async move { (i, ping(pool).await) });
                }
                let p = ping(primary.clone()).await;
                let mut r: Vec<(String, Result<(), String>)> = replicas
                    .iter()
                    .map(|(n, _)| (n.clone(), Err("not checked".to_string())))
                    .collect();
                while let Some(Ok((i, res))) = set.join_next().await {
                    r[i].1 = res;
                }
                (p, r)
            }
            Store::Sqlite(pool) => (ping(pool.clone()).await, Vec::new()),
        }
    }

    fn replica(&self) -> Option<(&str, &MySqlPool)> {
        match self {
            Store::MariaDb { replicas, next, .. } if !replicas.is_empty() => {
                let i = next.fetch_add(1, Ordering::Relaxed) % replicas.len();
                let (n, p) = &replicas[i];
                Some((n.as_str(), p))
            }
            _ => None,
        }
    }

    fn fell_back(&self, replica: &str, e: &sqlx::Error) {
        if let Some(stats) = self.stats() {
            stats.replica_fallbacks.fetch_add(1, Ordering::Relaxed);
        }
        tracing::warn!(replica, error = %e, "replica read failed; reading from the primary");
    }
}

fn post_from_mysql(row: &sqlx::mysql::MySqlRow) -> Result<Post, StoreError> {
    Ok(Post {
        id: row.try_get("id").map_err(err("mariadb row"))?,
        author: row.try_get("author").map_err(err("mariadb row"))?,
        body: row.try_get("body").map_err(err("mariadb row"))?,
        created_at: iso(row.try_get("created_at").map_err(err("mariadb row"))?),
    })
}

fn post_from_sqlite(row: &sqlx::sqlite::SqliteRow) -> Result<Post, StoreError> {
    Ok(Post {
        id: row.try_get("id").map_err(err("sqlite row"))?,
        author: row.try_get("author").map_err(err("sqlite row"))?,
        body: row.try_get("body").map_err(err("sqlite row"))?,
        created_at: iso(row.try_get("created_at").map_err(err("mariadb row"))?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sqlite_store_round_trips_posts_newest_first() {
        let dir = std::env::temp_dir().join(format!("hastack-store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let store = Store::sqlite(&dir.join("t.sqlite")).await.expect("open");
        store.migrate().await.expect("migrate");
        store.migrate().await.expect("migrations are idempotent");
        let a = store.create("ann", "first").await.expect("create");
        let b = store
            .create("bob", "second 'quoted' \"text\"")
            .await
            .expect("create");
        assert!(b.id > a.id);
        assert_eq!(store.get(a.id).await.expect("get"), Some(a.clone()));
        assert_eq!(store.get(9999).await.expect("get"), None);
        let list = store.list(10).await.expect("list");
        assert_eq!(list, vec![b, a]);
        assert!(list[0].created_at.ends_with('Z'));
        let (primary, replicas) = store.health().await;
        assert!(primary.is_ok());
        assert!(replicas.is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
