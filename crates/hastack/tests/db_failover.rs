//! Failure drills on a loopback stack with MariaDB (`hastack drill all`): the master lb
//! killed and stopped, a web and an app node killed, the database primary killed —
//! each under traffic, each reporting the same figures. The database primary's death
//! loses no acknowledged write, stores none twice, never leaves two writable servers,
//! and the old primary comes back as a replica; a second variant cuts replication
//! first (`hastack drill db-failover --cut-replication`).

mod common;

use std::time::Duration;

use common::{Options, Stack, eventually};

/// Runs `hastack drill ARGS --json`; the document and its exit status.
fn drill(stack: &Stack, args: &[&str]) -> (serde_json::Value, bool) {
    let mut args = [&["drill"][..], args, &["--json"][..]].concat();
    args.retain(|a| !a.is_empty());
    let out = stack.ctl(&args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let doc = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "drill output is not JSON ({e}): {stdout}{}\n--- up:\n{}",
            String::from_utf8_lossy(&out.stderr),
            stack.output()
        )
    });
    (doc, out.status.success())
}

/// The rows of a drill document.
fn rows_of(doc: &serde_json::Value) -> Vec<serde_json::Value> {
    doc["drills"].as_array().cloned().unwrap_or_default()
}

#[test]
fn every_drill_passes_and_killing_the_primary_loses_nothing() {
    let stack = Stack::up(Options { sqlite: false });
    eventually("db1 to be the primary", Duration::from_secs(20), || {
        (common::primary(&stack).as_deref() == Some("db1")).then_some(())
    });

    let (doc, ok) = drill(&stack, &["all"]);
    let show = serde_json::to_string_pretty(&doc).unwrap_or_default();
    assert!(ok && doc["passed"] == true, "every drill passes: {show}");
    let rows = rows_of(&doc);
    let names: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| {
            (
                r["drill"].as_str().unwrap_or(""),
                r["fault"].as_str().unwrap_or(""),
            )
        })
        .collect();
    // On loopback the lb's link cannot be cut: the process faults only.
    assert_eq!(
        names,
        [
            ("lb-failover", "kill lb1"),
            ("lb-failover", "stop lb1"),
            ("web-failover", "kill web1"),
            ("app-failover", "kill app1"),
            ("db-failover", "kill db1"),
        ],
        "{show}"
    );
    for r in &rows {
        // The same figures for every drill.
        for key in ["outage_s", "slowest_request_s"] {
            assert!(r[key].as_f64().is_some_and(|v| v >= 0.0), "{key}: {r}");
        }
        assert!(r["requests"].as_u64().unwrap_or(0) > 50, "traffic ran: {r}");
        assert!(r["writes_acknowledged"].as_u64().unwrap_or(0) >= 10, "{r}");
        assert_eq!(r["writes_lost"], 0, "acknowledged writes lost: {r}");
        assert_eq!(r["problems"], serde_json::json!([]), "{r}");
    }
    // The lb came back and took the VIP again; the killed nodes served again and their
    // peers served meanwhile.
    for r in &rows[..2] {
        assert_eq!(r["details"]["vip_returned"], true, "{r}");
        assert_eq!(
            r["details"]["vip_holders_after"],
            serde_json::json!(["lb1"]),
            "{r}"
        );
        assert_eq!(r["details"]["served_after"], "lb2", "{r}");
    }
    assert_eq!(
        rows[2]["details"]["served_while_down_by"],
        serde_json::json!(["web2"])
    );
    assert_eq!(
        rows[3]["details"]["served_while_down_by"],
        serde_json::json!(["app2"])
    );
    for r in &rows[2..4] {
        assert!(r["details"]["back_in_rotation_after_s"].is_number(), "{r}");
    }

    let r = &rows[4]["details"];
    let show = serde_json::to_string_pretty(&rows[4]).unwrap_or_default();
    assert_eq!(r["old_primary"], "db1", "{show}");
    assert!(
        r["new_primary"] == "db2" || r["new_primary"] == "db3",
        "a replica is promoted: {show}"
    );
    assert_eq!(r["missing_on_primary"], 0, "{show}");
    assert_eq!(
        r["duplicate_writes"], 0,
        "retried keys stored twice: {show}"
    );
    assert_eq!(
        r["reads_failed"], 0,
        "reads never depend on the primary: {show}"
    );
    assert_eq!(
        r["max_writable_at_once"], 1,
        "never two writable primaries: {show}"
    );
    assert!(
        r["old_primary_replica_after_s"].is_number() && r["converged"] == true,
        "the old primary rejoins as a replica on the same GTID position: {show}"
    );

    // The status shows the failover.
    let st = stack.status();
    let new = r["new_primary"].as_str().unwrap_or_default();
    let node = |name: &str| {
        st["nodes"]
            .as_array()
            .and_then(|a| a.iter().find(|n| n["name"] == name))
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(node(new)["health"]["db_role"], "primary");
    assert_eq!(node(new)["health"]["read_only"], false);
    assert_eq!(node("db1")["health"]["db_role"], "replica");
    assert_eq!(node("db1")["health"]["read_only"], true);
    let last = &node(new)["health"]["cluster"]["last_failover"];
    assert_eq!(last["from"], "db1", "{last}");
    assert_eq!(last["to"], new, "{last}");
    let table = stack.ctl_ok(&["status"]);
    assert!(
        table.contains(&format!("last failover: db1 → {new}")),
        "{table}"
    );

    // Second variant: the replicas' stream is cut for a second before the kill, so
    // the primary has nobody to acknowledge its commits.
    let (doc, ok) = drill(&stack, &["db-failover", "--cut-replication"]);
    let show = serde_json::to_string_pretty(&doc).unwrap_or_default();
    assert!(ok, "{show}");
    let row = &rows_of(&doc)[0];
    assert_eq!(row["writes_lost"], 0, "acknowledged writes lost: {show}");
    let r = &row["details"];
    assert_eq!(r["old_primary"], new, "{show}");
    assert!(r["new_primary"].is_string(), "{show}");
    assert_eq!(r["missing_on_primary"], 0, "{show}");
    assert_eq!(r["duplicate_writes"], 0, "{show}");
    assert_eq!(r["max_writable_at_once"], 1, "{show}");
    // Crash recovery drops the commits no replica acknowledged (init_rpl_role = SLAVE),
    // so the old primary rejoins here too.
    assert!(
        r["old_primary_replica_after_s"].is_number()
            && r["old_primary_role"] == "replica"
            && r["converged"] == true,
        "{show}"
    );
}
