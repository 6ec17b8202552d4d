//! The files a `mariadbd` instance is made of: its `my.cnf` and the init file that
//! creates hastack's users on every start. Pure text generation, tested as such.
//!
//! With `tls.internal` the server presents its node's certificate of the stack's
//! internal CA and refuses TCP connections without TLS (`require_secure_transport`;
//! the unix socket stays open to hastack's own admin connections).

use std::path::{Path, PathBuf};

/// Where one instance keeps everything (all under the node's state directory).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// The node's directory.
    pub base: PathBuf,
    /// `datadir`.
    pub data: PathBuf,
    /// `tmpdir`: its own, since mariadbd deletes `#sql*` files in it at start.
    pub tmp: PathBuf,
    /// The unix socket.
    pub socket: PathBuf,
    /// The pid file.
    pub pid: PathBuf,
    /// The error log.
    pub error_log: PathBuf,
    /// The generated `my.cnf`.
    pub cnf: PathBuf,
    /// The generated init file.
    pub init: PathBuf,
    /// Written once `mariadb-install-db` has finished: the datadir is complete.
    pub installed: PathBuf,
}

impl Layout {
    /// The layout of node `name` under `state_dir`.
    pub fn new(state_dir: &Path, name: &str) -> Layout {
        let base = state_dir.join("db").join(name);
        Layout {
            data: base.join("data"),
            tmp: base.join("tmp"),
            socket: base.join("run").join("mysqld.sock"),
            pid: base.join("run").join("mysqld.pid"),
            error_log: base.join("mariadbd.err"),
            cnf: base.join("my.cnf"),
            init: base.join("init.sql"),
            installed: base.join("installed"),
            base,
        }
    }
}

/// The TLS files of one node, issued by the stack's internal CA (`<state_dir>/pki/`),
/// absolute paths.
pub type TlsFiles = hastack_tls::pki::NodeFiles;

/// What differs between instances.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    /// `server_id`, unique in the replication set.
    pub server_id: u32,
    /// `bind-address`.
    pub address: String,
    /// `port`.
    pub port: u16,
    /// `innodb_buffer_pool_size` in MiB.
    pub buffer_pool_mb: u32,
    /// `rpl_semi_sync_master_timeout` in ms (used once the agent makes it primary).
    pub semi_sync_timeout_ms: u64,
    /// Run as root (`user=root`), which mariadbd refuses without saying so.
    pub as_root: bool,
    /// TLS with the node's certificate, required over TCP; `None`: plain.
    pub tls: Option<TlsFiles>,
}

/// The `my.cnf` of one instance.
pub fn my_cnf(l: &Layout, i: &Instance) -> String {
    let mut s = String::from("# Written by hastack at every start; edits are lost.\n[mysqld]\n");
    let mut kv = |k: &str, v: &str| {
        s.push_str(k);
        s.push('=');
        s.push_str(v);
        s.push('\n');
    };
    if i.as_root {
        kv("user", "root");
    }
    kv("datadir", &l.data.display().to_string());
    kv("tmpdir", &l.tmp.display().to_string());
    kv("socket", &l.socket.display().to_string());
    kv("pid-file", &l.pid.display().to_string());
    kv("log_error", &l.error_log.display().to_string());
    kv("bind-address", &i.address);
    kv("port", &i.port.to_string());
    kv("server_id", &i.server_id.to_string());
    kv("skip_name_resolve", "ON");
    kv("performance_schema", "OFF");
    kv("character_set_server", "utf8mb4");
    kv("collation_server", "utf8mb4_unicode_ci");
    kv("innodb_buffer_pool_size", &format!("{}M", i.buffer_pool_mb));
    kv("max_connections", "200");
    // Replication: GTID everywhere; every node logs what it applies, so any replica
    // can become the primary of the others.
    kv("log_bin", "mysql-bin");
    kv("relay_log", "relay-bin");
    kv("binlog_format", "ROW");
    kv("log_slave_updates", "ON");
    kv("gtid_strict_mode", "ON");
    kv("sync_binlog", "1");
    kv("innodb_flush_log_at_trx_commit", "1");
    // Binlogs are kept a week, then purged: enough for a replica to come back from a
    // long outage, bounded on disk.
    kv("binlog_expire_logs_seconds", "604800");
    // Every server starts read-only: only the agent of the primary, holding its lease,
    // turns writes on. A restarted old primary can never come back writable.
    kv("read_only", "ON");
    // Semi-sync: the slave side everywhere, which also makes crash recovery of a
    // former primary drop transactions that no replica acknowledged (MDEV-21117), so
    // it can rejoin. The master side is off until the agent promotes this server (on a
    // replica it would stall the SQL thread); AFTER_SYNC is the lossless wait point.
    kv("rpl_semi_sync_slave_enabled", "ON");
    // ...which since MariaDB 10.11.8 (MDEV-33465) happens only with this role. A node
    // that crashed while primary does not resume as primary: it lets a replica that may
    // have more take over (see failover.rs), so truncating its tail loses nothing.
    kv("init_rpl_role", "SLAVE");
    kv("rpl_semi_sync_master_enabled", "OFF");
    kv("rpl_semi_sync_master_wait_point", "AFTER_SYNC");
    kv(
        "rpl_semi_sync_master_timeout",
        &i.semi_sync_timeout_ms.to_string(),
    );
    // A replica notices a silent primary within seconds, not the default minute.
    kv("slave_net_timeout", "5");
    if let Some(tls) = &i.tls {
        // The node's certificate for clients and replicas (which verify it against the
        // CA), the CA for their certificates; TCP without TLS is refused. `FLUSH SSL`
        // re-reads the files when they are re-issued.
        kv("ssl_ca", &tls.ca.display().to_string());
        kv("ssl_cert", &tls.cert.display().to_string());
        kv("ssl_key", &tls.key.display().to_string());
        kv("require_secure_transport", "ON");
    }
    s
}

/// Quotes a string as an SQL literal.
pub fn sql_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            '\0' => out.push_str("\\0"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// Accounts and database, made on every start, the same on every node and kept out of
/// the binlog so no node ever has a transaction the others lack. Each account is
/// scoped to the addresses that use it.
#[derive(Debug, Clone)]
pub struct Accounts<'a> {
    /// hastack's own administrative account: over the unix socket, and from the other
    /// db nodes (fencing and promotion).
    pub admin_password: &'a str,
    /// Replication account, from the db nodes.
    pub repl_password: &'a str,
    /// The application's database.
    pub database: &'a str,
    /// The application's account, from the app nodes.
    pub user: &'a str,
    /// Its password.
    pub password: &'a str,
    /// The db nodes' addresses.
    pub db_hosts: &'a [String],
    /// The app nodes' addresses.
    pub app_hosts: &'a [String],
}

/// The SQL of the init file.
pub fn init_sql(a: &Accounts<'_>) -> String {
    let admin = sql_string(a.admin_password);
    let repl = sql_string(a.repl_password);
    let app = sql_string(a.password);
    let db = a.database;
    let user = a.user;
    let mut s = String::from("SET sql_log_bin = 0;\n");
    // Accounts of earlier versions that any host could use.
    s.push_str(&format!(
        "DROP USER IF EXISTS 'hastack_repl'@'%';\nDROP USER IF EXISTS '{user}'@'%';\n"
    ));
    let mut account = |name: &str, host: &str, password: &str, grants: &[String]| {
        let who = format!("'{name}'@{}", sql_string(host));
        s.push_str(&format!(
            "CREATE USER IF NOT EXISTS {who} IDENTIFIED BY {password};\n\
             ALTER USER {who} IDENTIFIED BY {password};\n"
        ));
        for g in grants {
            s.push_str(&format!("GRANT {g} TO {who};\n"));
        }
    };
    let all = ["ALL PRIVILEGES ON *.*".to_string()];
    account("hastack_admin", "localhost", &admin, &all);
    for h in a.db_hosts {
        account("hastack_admin", h, &admin, &all);
        account(
            "hastack_repl",
            h,
            &repl,
            &["REPLICATION SLAVE ON *.*".to_string()],
        );
    }
    for h in a.app_hosts {
        account(
            user,
            h,
            &app,
            &[
                format!("ALL PRIVILEGES ON `{db}`.*"),
                // SHOW SLAVE STATUS: the app measures replica lag itself.
                "SLAVE MONITOR ON *.*".to_string(),
            ],
        );
    }
    s.push_str(&format!(
        "CREATE DATABASE IF NOT EXISTS `{db}` CHARACTER SET utf8mb4;\nSET sql_log_bin = 1;\n"
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst() -> Instance {
        Instance {
            server_id: 2,
            address: "127.0.4.2".into(),
            port: 3306,
            buffer_pool_mb: 64,
            semi_sync_timeout_ms: 1000,
            as_root: true,
            tls: None,
        }
    }

    #[test]
    fn internal_tls_gives_the_node_certificate_and_refuses_plain_tcp() {
        let l = Layout::new(Path::new("/s"), "db2");
        let tls = TlsFiles {
            ca: "/s/pki/ca.crt".into(),
            cert: "/s/pki/nodes/db2.crt".into(),
            key: "/s/pki/nodes/db2.key".into(),
        };
        let cnf = my_cnf(
            &l,
            &Instance {
                tls: Some(tls),
                ..inst()
            },
        );
        for line in [
            "ssl_ca=/s/pki/ca.crt",
            "ssl_cert=/s/pki/nodes/db2.crt",
            "ssl_key=/s/pki/nodes/db2.key",
            "require_secure_transport=ON",
        ] {
            assert!(cnf.lines().any(|l| l == line), "missing {line} in\n{cnf}");
        }
        let plain = my_cnf(&l, &inst());
        assert!(
            !plain
                .lines()
                .any(|l| l.starts_with("ssl_") || l.starts_with("require_secure_transport")),
            "no TLS lines without tls.internal:\n{plain}"
        );
    }

    #[test]
    fn every_instance_has_its_own_dirs_and_starts_read_only() {
        let l = Layout::new(Path::new("/s"), "db2");
        let cnf = my_cnf(&l, &inst());
        for line in [
            "datadir=/s/db/db2/data",
            "tmpdir=/s/db/db2/tmp",
            "socket=/s/db/db2/run/mysqld.sock",
            "pid-file=/s/db/db2/run/mysqld.pid",
            "port=3306",
            "server_id=2",
            "log_slave_updates=ON",
            "gtid_strict_mode=ON",
            "read_only=ON",
            "rpl_semi_sync_slave_enabled=ON",
            "rpl_semi_sync_master_enabled=OFF",
            "rpl_semi_sync_master_wait_point=AFTER_SYNC",
            "binlog_expire_logs_seconds=604800",
            "init_rpl_role=SLAVE",
            "innodb_buffer_pool_size=64M",
            "user=root",
        ] {
            assert!(cnf.lines().any(|l| l == line), "missing {line} in\n{cnf}");
        }
    }

    fn accounts<'a>(db: &'a [String], app: &'a [String]) -> Accounts<'a> {
        Accounts {
            admin_password: "x'; DROP",
            repl_password: "r",
            database: "foobar",
            user: "foobar",
            password: "p",
            db_hosts: db,
            app_hosts: app,
        }
    }

    #[test]
    fn passwords_are_quoted_and_accounts_never_replicated() {
        assert_eq!(sql_string("a'b\\c"), "'a''b\\\\c'");
        let sql = init_sql(&accounts(&[], &[]));
        assert!(sql.contains("'x''; DROP'"));
        assert!(
            sql.starts_with("SET sql_log_bin = 0;"),
            "accounts are never replicated"
        );
    }

    #[test]
    fn accounts_are_scoped_to_the_nodes_that_use_them() {
        let db = vec!["127.0.4.1".to_string(), "127.0.4.2".to_string()];
        let app = vec!["127.0.3.1".to_string()];
        let sql = init_sql(&accounts(&db, &app));
        assert!(!sql.contains("CREATE USER IF NOT EXISTS 'foobar'@'%'"));
        assert!(!sql.contains("CREATE USER IF NOT EXISTS 'hastack_repl'@'%'"));
        assert!(
            sql.contains("DROP USER IF EXISTS 'foobar'@'%'"),
            "old open accounts go"
        );
        assert!(sql.contains("GRANT ALL PRIVILEGES ON `foobar`.* TO 'foobar'@'127.0.3.1'"));
        assert!(sql.contains("GRANT SLAVE MONITOR ON *.* TO 'foobar'@'127.0.3.1'"));
        assert!(sql.contains("GRANT REPLICATION SLAVE ON *.* TO 'hastack_repl'@'127.0.4.2'"));
        assert!(sql.contains("'hastack_admin'@'127.0.4.1'"));
        assert!(
            !sql.contains("'foobar'@'127.0.4.1'"),
            "db hosts get no app account"
        );
    }
}
