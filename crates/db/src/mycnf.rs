//! The files a `mariadbd` instance is made of: its `my.cnf` and the init file that
//! creates hastack's users on every start. Pure text generation, tested as such.

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
    /// hastack's admin password for this instance.
    pub secret: PathBuf,
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
            secret: base.join("admin.secret"),
            installed: base.join("installed"),
            base,
        }
    }
}

/// What differs between instances.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    /// `server_id`, unique in the replication set.
    pub server_id: u32,
    /// `bind-address`.
    pub address: String,
    /// `port`.
    pub port: u16,
    /// Primary (writable, semi-sync master side) or replica (read-only, semi-sync slave side).
    pub primary: bool,
    /// `innodb_buffer_pool_size` in MiB.
    pub buffer_pool_mb: u32,
    /// `rpl_semi_sync_master_timeout` in ms.
    pub semi_sync_timeout_ms: u64,
    /// Run as root (`user=root`), which mariadbd refuses without saying so.
    pub as_root: bool,
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
    if i.primary {
        kv("read_only", "OFF");
        // Semi-sync, master side only on the primary (on a replica it stalls the SQL
        // thread); AFTER_SYNC is the lossless wait point.
        kv("rpl_semi_sync_master_enabled", "ON");
        kv("rpl_semi_sync_master_wait_point", "AFTER_SYNC");
        kv(
            "rpl_semi_sync_master_timeout",
            &i.semi_sync_timeout_ms.to_string(),
        );
    } else {
        kv("read_only", "ON");
        kv("rpl_semi_sync_slave_enabled", "ON");
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
/// the binlog so no node ever has a transaction the others lack.
#[derive(Debug, Clone)]
pub struct Accounts<'a> {
    /// hastack's own administrative account (over the unix socket only).
    pub admin_password: &'a str,
    /// Replication account.
    pub repl_password: &'a str,
    /// The application's database.
    pub database: &'a str,
    /// The application's account.
    pub user: &'a str,
    /// Its password.
    pub password: &'a str,
}

/// The SQL of the init file.
pub fn init_sql(a: &Accounts<'_>) -> String {
    let admin = sql_string(a.admin_password);
    let repl = sql_string(a.repl_password);
    let app = sql_string(a.password);
    let db = a.database;
    let user = a.user;
    format!(
        "SET sql_log_bin = 0;\n\
         CREATE USER IF NOT EXISTS 'hastack_admin'@'localhost' IDENTIFIED BY {admin};\n\
         ALTER USER 'hastack_admin'@'localhost' IDENTIFIED BY {admin};\n\
         GRANT ALL PRIVILEGES ON *.* TO 'hastack_admin'@'localhost' WITH GRANT OPTION;\n\
         CREATE USER IF NOT EXISTS 'hastack_repl'@'%' IDENTIFIED BY {repl};\n\
         ALTER USER 'hastack_repl'@'%' IDENTIFIED BY {repl};\n\
         GRANT REPLICATION SLAVE ON *.* TO 'hastack_repl'@'%';\n\
         CREATE DATABASE IF NOT EXISTS `{db}` CHARACTER SET utf8mb4;\n\
         CREATE USER IF NOT EXISTS '{user}'@'%' IDENTIFIED BY {app};\n\
         ALTER USER '{user}'@'%' IDENTIFIED BY {app};\n\
         GRANT ALL PRIVILEGES ON `{db}`.* TO '{user}'@'%';\n\
         SET sql_log_bin = 1;\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst(primary: bool) -> Instance {
        Instance {
            server_id: 2,
            address: "127.0.4.2".into(),
            port: 3306,
            primary,
            buffer_pool_mb: 64,
            semi_sync_timeout_ms: 1000,
            as_root: true,
        }
    }

    #[test]
    fn every_instance_has_its_own_dirs_and_gtid_replication() {
        let l = Layout::new(Path::new("/s"), "db2");
        let cnf = my_cnf(&l, &inst(false));
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
            "innodb_buffer_pool_size=64M",
            "user=root",
        ] {
            assert!(cnf.lines().any(|l| l == line), "missing {line} in\n{cnf}");
        }
        assert!(
            !cnf.contains("rpl_semi_sync_master_enabled"),
            "semi-sync master side only on the primary"
        );
    }

    #[test]
    fn the_primary_waits_lossless() {
        let cnf = my_cnf(&Layout::new(Path::new("/s"), "db1"), &inst(true));
        assert!(cnf.contains("rpl_semi_sync_master_wait_point=AFTER_SYNC"));
        assert!(cnf.contains("read_only=OFF"));
    }

    #[test]
    fn passwords_are_quoted() {
        assert_eq!(sql_string("a'b\\c"), "'a''b\\\\c'");
        let sql = init_sql(&Accounts {
            admin_password: "x'; DROP",
            repl_password: "r",
            database: "foobar",
            user: "foobar",
            password: "p",
        });
        assert!(sql.contains("'x''; DROP'"));
        assert!(
            sql.starts_with("SET sql_log_bin = 0;"),
            "accounts are never replicated"
        );
    }
}
