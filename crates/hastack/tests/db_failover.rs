//! The database primary dies under writes and reads: a replica is promoted, no
//! acknowledged write is lost or stored twice, reads never fail, never two writable
//! servers, and the old primary comes back as a replica (`hastack drill db-failover`).

mod common;

use std::time::Duration;

use common::{Options, Stack, eventually};

fn drill(stack: &Stack, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["drill", "db-failover", "--json"];
    args.extend_from_slice(extra);
    let out = stack.ctl(&args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "drill output is not JSON ({e}): {stdout}{}\n--- up:\n{}",
            String::from_utf8_lossy(&out.stderr),
            stack.output()
        )
    })
}

#[test]
fn killing_the_primary_under_writes_loses_nothing_and_it_rejoins() {
    let stack = Stack::up(Options { sqlite: false });
    eventually("db1 to be the primary", Duration::from_secs(20), || {
        (common::primary(&stack).as_deref() == Some("db1")).then_some(())
    });

    let r = drill(&stack, &[]);
    let show = serde_json::to_string_pretty(&r).unwrap_or_default();
    assert_eq!(r["old_primary"], "db1", "{show}");
    assert!(
        r["new_primary"] == "db2" || r["new_primary"] == "db3",
        "a replica is promoted: {show}"
    );
    assert!(
        r["acknowledged_writes"].as_u64().unwrap_or(0) >= 20,
        "{show}"
    );
    assert_eq!(r["lost_writes"], 0, "acknowledged writes lost: {show}");
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
    let r = drill(&stack, &["--cut-replication"]);
    let show = serde_json::to_string_pretty(&r).unwrap_or_default();
    assert_eq!(r["old_primary"], new, "{show}");
    assert!(r["new_primary"].is_string(), "{show}");
    assert_eq!(r["lost_writes"], 0, "acknowledged writes lost: {show}");
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
