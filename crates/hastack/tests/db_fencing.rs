//! A primary whose agent hangs (SIGSTOP, as a partitioned node would look) is fenced
//! before a replica is promoted; a returned old primary whose history diverged stays
//! out until `hastack db rebuild` re-seeds it; the current primary survives a restart of
//! the whole stack, even when its server comes back seconds after the others.

mod common;

use std::time::Duration;

use common::{Options, Stack, WritableWatch, eventually, sql};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

#[test]
fn a_hung_primary_is_fenced_before_promotion_and_a_diverged_one_stays_out() {
    let mut stack = Stack::up(Options { sqlite: false });
    // Writable by its health and by the server itself (its health is a snapshot; at
    // start the primary is read-only until a replica acknowledges).
    eventually(
        "db1 to be the writable primary",
        Duration::from_secs(20),
        || {
            (common::primary(&stack).as_deref() == Some("db1")
                && sql(&stack, "db1", "SELECT @@global.read_only").as_deref() == Ok("0"))
            .then_some(())
        },
    );
    let pid = stack
        .pids()
        .into_iter()
        .find(|(n, _)| n == "db1")
        .map(|(_, p)| p)
        .expect("db1 pid");

    let watch = WritableWatch::start(&stack);
    // The agent stops; its mariadbd serves on, writable, unless someone fences it.
    kill(Pid::from_raw(pid as i32), Signal::SIGSTOP).expect("SIGSTOP");
    let new = eventually("a replica to be promoted", Duration::from_secs(20), || {
        ["db2", "db3"]
            .into_iter()
            .find(|n| stack.health(n).is_some_and(|h| h["db_role"] == "primary"))
    });
    assert_eq!(
        sql(&stack, "db1", "SELECT @@global.read_only").as_deref(),
        Ok("1"),
        "the hung primary's server was fenced"
    );
    let last = stack.health(new).expect("health")["cluster"]["last_failover"].clone();
    assert!(
        last["fencing"]
            .as_str()
            .is_some_and(|f| f.starts_with("fenced remotely")),
        "{last}"
    );
    // A write goes to the new primary.
    let r = common::http(
        stack.vip(),
        "POST",
        "/api/posts",
        &[
            ("content-type", "application/json"),
            ("idempotency-key", "fence-1"),
        ],
        r#"{"author":"t","body":"after the fence"}"#,
    )
    .expect("post");
    assert_eq!(r.status, 201, "{}", r.body);
    kill(Pid::from_raw(pid as i32), Signal::SIGCONT).expect("SIGCONT");
    eventually(
        "db1 to follow the new primary",
        Duration::from_secs(20),
        || {
            stack
                .health("db1")
                .filter(|h| h["db_role"] == "replica")
                .map(|_| ())
        },
    );
    let (max, samples) = watch.finish();
    assert!(samples > 10, "only {samples} samples of read_only");
    assert_eq!(max, 1, "two servers were writable at once");

    // db1 gets a transaction of its own that the primary never had: its history
    // diverges. Back from a restart it must stay out and say why.
    sql(
        &stack,
        "db1",
        "STOP SLAVE; INSERT INTO foobar.posts (author, body, created_at) VALUES ('x', 'errant', NOW(3))",
    )
    .expect("errant write");
    stack.ctl_ok(&["stop", "db1"]);
    stack.ctl_ok(&["start", "db1"]);
    let role = eventually("db1 to be out", Duration::from_secs(20), || {
        let h = stack.health("db1")?;
        let role = h["db_role"].as_str()?.to_string();
        role.starts_with("out:").then_some(role)
    });
    assert!(role.contains("diverged from"), "{role}");
    assert!(role.contains("hastack db rebuild db1"), "{role}");
    assert_eq!(stack.health("db1").expect("health")["read_only"], true);
    let table = stack.ctl_ok(&["status"]);
    assert!(table.contains("out: its history diverged"), "{table}");

    // `hastack db rebuild db1` re-seeds it from a running node; it rejoins.
    let out = stack.ctl_ok(&["db", "rebuild", "db1"]);
    assert!(out.contains("db1 re-seeded from"), "{out}");
    let primary_pos = || {
        stack
            .health(new)
            .and_then(|h| h["gtid_current_pos"].as_str().map(str::to_string))
    };
    eventually(
        "db1 to replicate again after the rebuild",
        Duration::from_secs(30),
        || {
            let h = stack.health("db1")?;
            (h["db_role"] == "replica"
                && h["replication"]["io_running"] == "Yes"
                && h["gtid_current_pos"].as_str() == primary_pos().as_deref())
            .then_some(())
        },
    );
    let kept = std::fs::read_dir(stack.state_dir().join("db/db1"))
        .expect("db1 dir")
        .filter_map(Result::ok)
        .any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("data.replaced-")
        });
    assert!(kept, "the diverged datadir is kept, not deleted");

    // The primary is the db nodes' decision, not the file's: it survives a restart of
    // the whole stack.
    stack.ctl_ok(&["down"]);
    stack.wait_exit(Duration::from_secs(90));
    stack.spawn_up();
    eventually(
        "the stack to be ready again",
        Duration::from_secs(120),
        || (stack.output().matches("ready in").count() >= 2).then_some(()),
    );
    eventually(
        "the same primary after the restart",
        Duration::from_secs(20),
        || (common::primary(&stack).as_deref() == Some(new)).then_some(()),
    );
    assert_eq!(
        sql(&stack, "db1", "SELECT @@global.read_only").as_deref(),
        Ok("1")
    );

    // The db tier restarts and the primary's server is the slowest to come back: the
    // others form a majority without it, and must wait for it rather than fail it over.
    let replicas: Vec<&str> = ["db1", "db2", "db3"]
        .into_iter()
        .filter(|n| *n != new)
        .collect();
    for n in &replicas {
        stack.ctl_ok(&["stop", n]);
    }
    stack.ctl_ok(&["stop", new]);
    for n in &replicas {
        stack.ctl_ok(&["start", n]);
    }
    eventually(
        "the replicas' consensus to have a leader",
        Duration::from_secs(30),
        || {
            replicas
                .iter()
                .any(|n| {
                    stack
                        .health(n)
                        .is_some_and(|h| h["cluster"]["consensus_leader"].is_string())
                })
                .then_some(())
        },
    );
    // Several leases (0.6 s each) pass without the primary.
    std::thread::sleep(Duration::from_secs(3));
    for n in &replicas {
        let h = stack.health(n).expect("health");
        assert_eq!(h["db_role"], "replica", "{n} was promoted: {h}");
        assert_eq!(h["cluster"]["primary"], new, "{h}");
    }
    stack.ctl_ok(&["start", new]);
    eventually(
        "the primary to lead again after coming back last",
        Duration::from_secs(20),
        || (common::primary(&stack).as_deref() == Some(new)).then_some(()),
    );
}
