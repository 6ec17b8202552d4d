//! Semi-synchronous replication is never silently asynchronous: with no replica
//! acknowledging, `semi-sync-or-refuse` refuses writes and `semi-sync-or-async` accepts
//! them — and either way `status`, `/healthz` and `/metrics` say so at once.

mod common;

use std::time::Duration;

use common::{Options, Stack, eventually, http, sql};

fn post(stack: &Stack, body: &str) -> common::Resp {
    http(
        stack.vip(),
        "POST",
        "/api/posts",
        &[("content-type", "application/json")],
        &format!(r#"{{"author":"t","body":"{body}"}}"#),
    )
    .expect("post")
}

/// The db node that holds the primary's role, writing or refusing to.
fn writer(stack: &Stack) -> Option<&'static str> {
    DBS.into_iter().find(|n| {
        stack.health(n).is_some_and(|h| {
            h["db_role"] == "primary"
                || h["db_role"]
                    .as_str()
                    .is_some_and(|r| r.contains("no replica acknowledges"))
        })
    })
}

const DBS: [&str; 3] = ["db1", "db2", "db3"];

/// Stops (or restarts) the IO thread of every replica of the current primary.
fn cut_replicas(stack: &Stack, cut: bool) -> &'static str {
    let w = eventually("a primary", Duration::from_secs(30), || writer(stack));
    for r in DBS.into_iter().filter(|n| *n != w) {
        let stmt = if cut {
            "STOP SLAVE IO_THREAD"
        } else {
            "START SLAVE IO_THREAD"
        };
        sql(stack, r, stmt).expect("replica");
    }
    w
}

/// How many db nodes hold the post with this id.
fn copies(stack: &Stack, id: u64) -> usize {
    DBS.into_iter()
        .filter(|n| {
            sql(
                stack,
                n,
                &format!("SELECT COUNT(*) FROM foobar.posts WHERE id = {id}"),
            )
            .as_deref()
                == Ok("1")
        })
        .count()
}

/// Waits for the primary to refuse writes for want of a replica; returns its health.
fn refusing(stack: &Stack) -> serde_json::Value {
    // Under a loaded machine a late lease renewal may briefly show another reason:
    // wait for this one.
    eventually(
        "the primary to refuse writes for want of a replica",
        Duration::from_secs(15),
        || {
            DBS.into_iter().find_map(|n| {
                stack.health(n).filter(|h| {
                    h["db_role"]
                        .as_str()
                        .is_some_and(|r| r.contains("no replica acknowledges"))
                        && h["read_only"] == true
                })
            })
        },
    )
}

fn metric(stack: &Stack, node: &str, name: &str) -> Option<f64> {
    let m = http(stack.admin(node), "GET", "/metrics", &[], "")
        .ok()?
        .body;
    m.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
}

#[test]
fn refuse_mode_refuses_writes_without_a_replica_and_says_so() {
    let stack = Stack::up(Options { sqlite: false });
    eventually(
        "db1 to acknowledge semi-synchronously",
        Duration::from_secs(20),
        || (stack.health("db1")?["semi_sync_clients"] == 2).then_some(()),
    );
    assert_eq!(post(&stack, "with replicas").status, 201);

    let primary = cut_replicas(&stack, true);
    let h = refusing(&stack);
    assert!(
        h["writes"]
            .as_str()
            .is_some_and(|w| w.starts_with("refused")),
        "{h}"
    );
    eventually(
        "the metric to show no acknowledging replica",
        Duration::from_secs(5),
        || (metric(&stack, primary, "hastack_db_semi_sync_clients") == Some(0.0)).then_some(()),
    );
    eventually("status to say why", Duration::from_secs(5), || {
        stack
            .ctl_ok(&["status"])
            .contains("no replica acknowledges writes")
            .then_some(())
    });
    // On a loaded machine a late lease renewal can start a failover: abandoning it
    // restarts the replicas' IO threads (undoing the cut), completing it moves the
    // primary. A write acknowledged then is right only if a replica had it: it must be
    // on a second node. Cut again and retry in that case only.
    let mut r = post(&stack, "without replicas");
    for _ in 0..3 {
        if r.status != 201 {
            break;
        }
        let made: serde_json::Value = serde_json::from_str(&r.body).expect("post json");
        let id = made["id"].as_u64().expect("post id");
        eventually(
            "the acknowledged write to be on a second db node",
            Duration::from_secs(15),
            || (copies(&stack, id) >= 2).then_some(()),
        );
        cut_replicas(&stack, true);
        refusing(&stack);
        r = post(&stack, "without replicas");
    }
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.header("retry-after").is_some(), "{:?}", r.headers);
    assert!(r.body.contains("error"), "{}", r.body);
    // Reads go on.
    assert_eq!(stack.get("/api/posts").expect("list").status, 200);

    cut_replicas(&stack, false);
    eventually(
        "writes to be accepted again",
        Duration::from_secs(15),
        || (post(&stack, "replicas are back").status == 201).then_some(()),
    );
}

#[test]
fn async_mode_accepts_writes_without_a_replica_and_says_so() {
    let stack = Stack::up_edited(Options { sqlite: false }, |t| {
        t.replace(
            "semi_sync_timeout_ms = 1000",
            "semi_sync_timeout_ms = 300\ndurability = \"semi-sync-or-async\"",
        )
    });
    eventually(
        "db1 to acknowledge semi-synchronously",
        Duration::from_secs(20),
        || (stack.health("db1")?["semi_sync_clients"] == 2).then_some(()),
    );
    cut_replicas(&stack, true);
    // The first commit waits the semi-sync timeout, then MariaDB goes asynchronous.
    let r = post(&stack, "no replica");
    assert_eq!(r.status, 201, "{}", r.body);
    let h = eventually(
        "db1 to show asynchronous writes",
        Duration::from_secs(10),
        || stack.health("db1").filter(|h| h["semi_sync"] == "OFF"),
    );
    assert!(
        h["writes"]
            .as_str()
            .is_some_and(|w| w.contains("ASYNCHRONOUSLY")),
        "{h}"
    );
    assert_eq!(metric(&stack, "db1", "hastack_db_semi_sync_on"), Some(0.0));
    let log = std::fs::read_to_string(stack.state_dir().join("logs/db1.log")).expect("log");
    assert!(
        log.contains("no replica acknowledges commits") && log.contains("ASYNCHRONOUS"),
        "the fallback is in the log"
    );
    cut_replicas(&stack, false);
}
