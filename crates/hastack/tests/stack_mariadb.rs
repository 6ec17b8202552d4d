//! The whole seed stack on a real MariaDB: VIP → lb → web → app → primary and replicas.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Options, Stack, alive, eventually, http, listening, sql};

#[test]
fn the_site_works_end_to_end_and_down_leaves_nothing_behind() {
    let mut stack = Stack::up(Options { sqlite: false });
    let vip = stack.vip();

    // The page, through the VIP, served by every tier.
    let page = eventually("the front page", Duration::from_secs(10), || {
        stack.get("/").ok().filter(|r| r.status == 200)
    });
    assert!(
        page.header("content-type")
            .unwrap_or("")
            .starts_with("text/html"),
        "{:?}",
        page.headers
    );
    assert!(page.body.contains("<form id=\"new-post\""), "{}", page.body);
    let by = page.header("x-served-by").unwrap_or("");
    let parts: Vec<&str> = by.split(", ").collect();
    assert!(
        parts.len() == 3
            && parts[0].starts_with("lb")
            && parts[1].starts_with("web")
            && parts[2].starts_with("app"),
        "X-Served-By: {by}"
    );

    // Static files with validators and 304s.
    let css = stack.get("/static/style.css").expect("css");
    assert_eq!(css.status, 200);
    assert_eq!(css.header("content-type"), Some("text/css; charset=utf-8"));
    let etag = css.header("etag").expect("etag").to_string();
    assert!(css.header("last-modified").is_some());
    let again = http(
        vip,
        "GET",
        "/static/style.css",
        &[("If-None-Match", &etag)],
        "",
    )
    .expect("css again");
    assert_eq!(again.status, 304);
    let png = stack.get("/static/logo.png").expect("png");
    assert_eq!(png.header("content-type"), Some("image/png"));

    // A post written through the VIP is read back through the VIP.
    let created = http(
        vip,
        "POST",
        "/api/posts",
        &[("content-type", "application/json")],
        r#"{"author":"ann","body":"hello from the primary"}"#,
    )
    .expect("post");
    assert_eq!(created.status, 201, "{}", created.body);
    let post: serde_json::Value = serde_json::from_str(&created.body).expect("json");
    assert_eq!(post["author"], "ann");
    assert!(
        post["id"].as_i64().is_some() && post["created_at"].as_str().is_some(),
        "{post}"
    );
    let id = post["id"].as_i64().expect("id");
    let one = stack.get(&format!("/api/posts/{id}")).expect("get");
    assert_eq!(one.status, 200);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&one.body).expect("json"),
        post
    );
    // Reads go to either replica: wait until every replica has the post, then every
    // read must show it.
    // The primary's position from the server itself (its health is a snapshot up to
    // one tick old, which may predate the post).
    let primary_pos = sql(&stack, "db1", "SELECT @@gtid_current_pos").expect("db1 position");
    for replica in ["db2", "db3"] {
        eventually(
            &format!("{replica} to apply the post"),
            Duration::from_secs(10),
            || {
                let h = stack.health(replica)?;
                (h["gtid_current_pos"].as_str() == Some(primary_pos.as_str())).then_some(())
            },
        );
    }
    for _ in 0..4 {
        let list = stack.get("/api/posts").expect("list");
        let v: serde_json::Value = serde_json::from_str(&list.body).expect("json");
        assert_eq!(
            v.as_array().and_then(|a| a.first()),
            Some(&post),
            "{}",
            list.body
        );
        let page = stack.get("/").expect("page");
        assert!(
            page.body.contains("hello from the primary"),
            "{}",
            page.body
        );
    }

    // Bad input gets a 400 with a JSON error; a missing post a 404.
    for body in [
        r#"{"author":"","body":"x"}"#,
        r#"{"author":"a"}"#,
        "not json",
        r#"{"author":"a","body":"x","extra":1}"#,
    ] {
        let r = http(
            vip,
            "POST",
            "/api/posts",
            &[("content-type", "application/json")],
            body,
        )
        .expect("post");
        assert_eq!(r.status, 400, "{body} → {}", r.body);
        assert!(
            serde_json::from_str::<serde_json::Value>(&r.body).expect("json error")["error"]
                .is_string()
        );
    }
    assert_eq!(stack.get("/api/posts/999999").expect("get").status, 404);
    assert_eq!(stack.get("/api/posts/abc").expect("get").status, 400);

    // Replication: both replicas run GTID replication and catch up with the primary.
    let st = stack.status();
    let nodes = st["nodes"].as_array().expect("nodes").clone();
    assert_eq!(st["db_engine"], "mariadb");
    let primary_pos = |st: &serde_json::Value| {
        st["nodes"]
            .as_array()?
            .iter()
            .find(|n| n["name"] == "db1")?["health"]["gtid_current_pos"]
            .as_str()
            .map(str::to_string)
    };
    let pos = primary_pos(&st).expect("primary gtid");
    assert!(!pos.is_empty());
    for replica in ["db2", "db3"] {
        eventually(
            &format!("{replica} to catch up to {pos}"),
            Duration::from_secs(10),
            || {
                let h = stack.health(replica)?;
                let rep = &h["replication"];
                (h["db_role"] == "replica"
                    && h["read_only"] == true
                    && rep["io_running"] == "Yes"
                    && rep["sql_running"] == "Yes"
                    && h["gtid_current_pos"] == pos.as_str())
                .then_some(())
            },
        );
    }
    let primary = stack.health("db1").expect("db1 healthz");
    assert_eq!(primary["db_role"], "primary", "{primary}");
    assert_eq!(primary["read_only"], false, "{primary}");
    assert_eq!(
        primary["semi_sync"], "ON",
        "semi-sync is on with replicas connected: {primary}"
    );

    // Internal TLS (on by default): the app's sessions and replication run over TLS with
    // the internal CA's certificates, and a db node refuses plain TCP.
    let cipher = eventually(
        "the app's health to show its db sessions' TLS cipher",
        Duration::from_secs(10),
        || {
            let h = stack.health("app1")?;
            h["db_tls"].as_str().map(str::to_string)
        },
    );
    assert!(!cipher.is_empty(), "db_tls is empty");
    for replica in ["db2", "db3"] {
        // Vertical output with column names (the `sql` helper leaves names out).
        let sock = stack
            .state_dir()
            .join(format!("db/{replica}/run/mysqld.sock"));
        let out = Command::new("mariadb")
            .arg("-S")
            .arg(&sock)
            .args([
                "--skip-ssl",
                "-u",
                "root",
                "--connect-timeout=2",
                "-e",
                "SHOW SLAVE STATUS\\G",
            ])
            .output()
            .expect("run the mariadb client");
        let st = String::from_utf8_lossy(&out.stdout);
        for line in [
            "Master_SSL_Allowed: Yes",
            "Master_SSL_Verify_Server_Cert: Yes",
            "Slave_IO_Running: Yes",
        ] {
            assert!(
                st.lines().any(|l| l.trim() == line),
                "{replica}: no `{line}` in\n{st}"
            );
        }
    }
    let cnf = std::fs::read_to_string(stack.state_dir().join("db/db1/my.cnf")).expect("my.cnf");
    let setting = |key: &str| {
        cnf.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("no {key} in\n{cnf}"))
            .to_string()
    };
    assert_eq!(setting("require_secure_transport"), "ON");
    let (host, port, ca) = (setting("bind-address"), setting("port"), setting("ssl_ca"));
    let password = std::fs::read_to_string(stack.state_dir().join("secrets/db-app.password"))
        .expect("the app's password");
    let client = |tls: &[&str]| {
        Command::new("mariadb")
            .args(["-h", &host, "-P", &port, "-u", "foobar", "-N", "-B"])
            .arg(format!("-p{}", password.trim()))
            .args([
                "--connect-timeout=2",
                "-e",
                "SHOW SESSION STATUS LIKE 'Ssl_cipher'",
            ])
            .args(tls)
            .output()
            .expect("run the mariadb client")
    };
    // MariaDB answers a plain TCP login under require_secure_transport with "Access
    // denied"; the same account and password over TLS (the server's certificate
    // verified against the CA and the address) gets in.
    let plain = client(&["--skip-ssl"]);
    let err = String::from_utf8_lossy(&plain.stderr);
    assert!(
        !plain.status.success() && err.contains("Access denied"),
        "plain TCP to db1 was not refused: {err}{}",
        String::from_utf8_lossy(&plain.stdout)
    );
    let tls = client(&[
        "--ssl",
        &format!("--ssl-ca={ca}"),
        "--ssl-verify-server-cert",
    ]);
    let session = String::from_utf8_lossy(&tls.stdout);
    assert!(
        tls.status.success() && session.starts_with("Ssl_cipher\tTLS"),
        "the same account over TLS: {session}{}",
        String::from_utf8_lossy(&tls.stderr)
    );

    // Every node exposes Prometheus metrics.
    for node in ["lb1", "web1", "app1", "db1"] {
        let m = http(stack.admin(node), "GET", "/metrics", &[], "").expect("metrics");
        assert_eq!(m.status, 200, "{node}");
        assert!(m.body.ends_with("# EOF\n"), "{node}: {}", m.body);
    }
    let lb_metrics = http(stack.admin("lb1"), "GET", "/metrics", &[], "")
        .expect("metrics")
        .body;
    assert!(lb_metrics.contains("hastack_vrrp_state 2"), "{lb_metrics}");
    assert!(
        lb_metrics.contains("hastack_upstream_requests_total{pool=\"web\",server=\"web1\"}"),
        "{lb_metrics}"
    );

    // A crashed db node takes its mariadbd with it.
    let mysqld_pid: u32 = std::fs::read_to_string(stack.state_dir().join("db/db3/run/mysqld.pid"))
        .expect("pid file")
        .trim()
        .parse()
        .expect("pid");
    assert!(alive(mysqld_pid));
    stack.ctl_ok(&["kill", "db3"]);
    eventually(
        "db3's mariadbd to die with its node",
        Duration::from_secs(10),
        || (!alive(mysqld_pid)).then_some(()),
    );
    // Writes go on without it; restarted, it recovers and catches up.
    let r = http(
        vip,
        "POST",
        "/api/posts",
        &[("content-type", "application/json")],
        r#"{"author":"bob","body":"while db3 was down"}"#,
    )
    .expect("post");
    assert_eq!(r.status, 201, "{}", r.body);
    stack.ctl_ok(&["start", "db3"]);
    eventually(
        "db3 to catch up after its restart",
        Duration::from_secs(20),
        || {
            let primary = stack.health("db1")?;
            let h = stack.health("db3")?;
            (h["replication"]["sql_running"] == "Yes"
                && h["gtid_current_pos"] == primary["gtid_current_pos"])
                .then_some(())
        },
    );

    // `down` stops everything: no process, socket or listener is left.
    let pids: Vec<u32> = stack
        .pids()
        .into_iter()
        .map(|(_, p)| p)
        .chain(
            nodes
                .iter()
                .filter_map(|n| n["pid"].as_u64())
                .map(|p| p as u32),
        )
        .collect();
    let mut mysqld_pids = Vec::new();
    for db in ["db1", "db2", "db3"] {
        let p = std::fs::read_to_string(stack.state_dir().join(format!("db/{db}/run/mysqld.pid")))
            .expect("pid file");
        mysqld_pids.push(p.trim().parse::<u32>().expect("pid"));
    }
    let out = stack.ctl_ok(&["down"]);
    assert!(out.contains("all nodes stopped"), "{out}");
    let status = stack.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "{}", stack.output());
    for p in pids.iter().chain(&mysqld_pids) {
        assert!(!alive(*p), "pid {p} outlived `hastack down`");
    }
    assert!(
        !stack.state_dir().join("control.sock").exists(),
        "control socket left behind"
    );
    for db in ["db1", "db2", "db3"] {
        assert!(
            !stack
                .state_dir()
                .join(format!("db/{db}/run/mysqld.sock"))
                .exists(),
            "{db}'s socket left behind"
        );
    }
    assert!(!listening(vip), "the VIP still answers");
    for node in [
        "lb1", "lb2", "web1", "web2", "app1", "app2", "db1", "db2", "db3",
    ] {
        assert!(!listening(stack.admin(node)), "{node} still listening");
    }
}
