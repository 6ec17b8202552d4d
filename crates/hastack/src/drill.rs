//! `hastack drill db-failover`: kills the database primary of a running stack under
//! traffic and reports what users saw.
//!
//! Through the VIP, a writer posts unique bodies, each with an `Idempotency-Key`, retrying
//! the same key until it is acknowledged (as a careful client would), and a reader lists
//! posts; meanwhile every db node's `read_only` is sampled to catch two writable
//! primaries. The fault: SIGKILL of the primary (with `--cut-replication`, the replicas'
//! receiving threads are stopped for a second first, so the primary has no replica to
//! acknowledge its commits). Then the old primary is started again. The report: the
//! longest gaps between acknowledged writes and between successful reads, acknowledged
//! writes missing afterwards, writes stored twice, posts not found by id right after
//! their acknowledgement (read-your-writes), the most writable servers seen at
//! once, the time until the old primary is a replica again, and whether every db node
//! ends on one GTID position.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;
use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions};
use tokio::sync::watch;

use hastack_config::{Role, Topology};
use hastack_status::health::{DbHealth, Health};

use crate::control::{self, Request};
use crate::http_get;

/// What the drill measured.
#[derive(Debug, Serialize)]
struct Report {
    variant: &'static str,
    old_primary: String,
    new_primary: Option<String>,
    acknowledged_writes: usize,
    lost_writes: usize,
    duplicate_writes: usize,
    write_gap_max_s: f64,
    read_gap_max_s: f64,
    reads_ok: u64,
    reads_failed: u64,
    read_your_writes_misses: u64,
    max_writable_at_once: usize,
    failover_detected_after_ms: Option<u64>,
    fencing: Option<String>,
    old_primary_replica_after_s: Option<f64>,
    old_primary_role: String,
    converged: bool,
    gtid_positions: HashMap<String, String>,
}

impl Report {
    fn ok(&self) -> bool {
        self.lost_writes == 0
            && self.duplicate_writes == 0
            && self.max_writable_at_once <= 1
            && self.new_primary.is_some()
            && self.old_primary_replica_after_s.is_some()
            && self.converged
    }
}

#[derive(Default)]
struct Traffic {
    acked: HashMap<String, i64>,
    last_write: Option<Instant>,
    write_gap: Duration,
    last_read: Option<Instant>,
    read_gap: Duration,
    reads_ok: u64,
    reads_failed: u64,
    ryw_misses: u64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

async fn control(
    state_dir: std::path::PathBuf,
    cmd: &str,
    node: &str,
) -> anyhow::Result<control::Response> {
    let req = Request {
        cmd: cmd.into(),
        node: node.into(),
        source: None,
    };
    tokio::task::spawn_blocking(move || control::send(&state_dir, &req))
        .await
        .context("control request")?
}

/// A db node's name and what its `/healthz` says (`None`: it does not answer).
type DbNode = (String, Option<DbHealth>);

async fn db_nodes(state_dir: &std::path::Path) -> anyhow::Result<Vec<DbNode>> {
    let resp = control(state_dir.to_path_buf(), "status", "").await?;
    let status = resp.status.context("no status from the supervisor")?;
    if status.db_engine != "mariadb" {
        bail!(
            "the stack runs on {}: the db-failover drill needs the MariaDB tier (install mariadb-server)",
            status.db_engine
        );
    }
    Ok(status
        .nodes
        .into_iter()
        .filter(|n| n.role == "db")
        .map(|n| {
            let h = match n.health {
                Some(Health::Db(h)) => Some(h),
                _ => None,
            };
            (n.name, h)
        })
        .collect())
}

fn primary_of(nodes: &[DbNode]) -> Option<String> {
    nodes
        .iter()
        .find(|(_, h)| h.as_ref().is_some_and(|h| h.db_role == "primary"))
        .map(|(n, _)| n.clone())
}

/// Runs the drill; `cut` stops the replicas' receiving threads for a second first.
pub(crate) fn db_failover(topo: &Topology, cut: bool, json: bool) -> anyhow::Result<ExitCode> {
    let state_dir = crate::state_dir(topo)?;
    let secrets = hastack_runtime::secrets::DbSecrets::load_or_create(
        &state_dir,
        topo.db.password.as_deref(),
        topo.db.repl_password.as_deref(),
    )?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let report = rt.block_on(run(topo, state_dir, secrets, cut, json))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    Ok(if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn say(json: bool, text: &str) {
    if !json {
        println!("{text}");
    }
}

async fn run(
    topo: &Topology,
    state_dir: std::path::PathBuf,
    secrets: hastack_runtime::secrets::DbSecrets,
    cut: bool,
    json: bool,
) -> anyhow::Result<Report> {
    let nodes = db_nodes(&state_dir).await?;
    let old =
        primary_of(&nodes).context("no db node is a writable primary now; see `hastack status`")?;
    let vip = SocketAddr::from((topo.vip, topo.http_port));
    let pools: Vec<(String, MySqlPool)> = topo
        .tier(Role::Db)
        .map(|n| {
            let opts = MySqlConnectOptions::new()
                .host(&n.address.to_string())
                .port(topo.ports.db)
                .username("hastack_admin")
                .password(&secrets.admin);
            let pool = MySqlPoolOptions::new()
                .max_connections(2)
                .acquire_timeout(Duration::from_millis(300))
                .connect_lazy_with(opts);
            (n.name.clone(), pool)
        })
        .collect();
    let run_id = format!(
        "drill-{}-{}",
        std::process::id(),
        chrono::Utc::now().timestamp_millis() % 1_000_000_000
    );
    let traffic = Arc::new(Mutex::new(Traffic::default()));
    let (stop_tx, stop_rx) = watch::channel(false);

    // Never two writable servers: sample read_only everywhere.
    let max_writable = Arc::new(Mutex::new(0usize));
    let watcher = {
        let pools = pools.clone();
        let max = max_writable.clone();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            loop {
                let mut set = tokio::task::JoinSet::new();
                for (_, pool) in &pools {
                    let pool = pool.clone();
                    set.spawn(async move {
                        let q = sqlx::query_scalar::<_, i64>("SELECT @@global.read_only")
                            .fetch_one(&pool);
                        matches!(
                            tokio::time::timeout(Duration::from_millis(300), q).await,
                            Ok(Ok(0))
                        )
                    });
                }
                let mut writable = 0;
                while let Some(r) = set.join_next().await {
                    writable += usize::from(r.unwrap_or(false));
                }
                {
                    let mut m = lock(&max);
                    *m = (*m).max(writable);
                }
                tokio::select! {
                    _ = stop.changed() => return,
                    _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                }
            }
        })
    };
    let writer = {
        let traffic = traffic.clone();
        let stop = stop_rx.clone();
        let run_id = run_id.clone();
        tokio::spawn(async move {
            let mut i = 0u64;
            while !*stop.borrow() {
                let key = format!("{run_id}-{i}");
                i += 1;
                let body = serde_json::json!({ "author": "drill", "body": key }).to_string();
                while !*stop.borrow() {
                    let r = http_get::request(
                        vip,
                        "POST",
                        "/api/posts",
                        &[
                            ("content-type", "application/json"),
                            ("idempotency-key", &key),
                        ],
                        &body,
                        Duration::from_secs(3),
                    )
                    .await;
                    if let Ok(a) = &r
                        && (a.status == 200 || a.status == 201)
                    {
                        let id = serde_json::from_str::<serde_json::Value>(&a.body)
                            .ok()
                            .and_then(|v| v["id"].as_i64())
                            .unwrap_or(0);
                        let now = Instant::now();
                        {
                            let mut t = lock(&traffic);
                            t.acked.insert(key.clone(), id);
                            if let Some(last) = t.last_write {
                                t.write_gap = t.write_gap.max(now - last);
                            }
                            t.last_write = Some(now);
                        }
                        // Read your write, at once, through the VIP.
                        let back =
                            http_get::get(vip, &format!("/api/posts/{id}"), Duration::from_secs(3))
                                .await;
                        if !matches!(&back, Ok((200, b)) if b.contains(&key)) {
                            lock(&traffic).ryw_misses += 1;
                        }
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let reader = {
        let traffic = traffic.clone();
        let stop = stop_rx.clone();
        tokio::spawn(async move {
            while !*stop.borrow() {
                let r = http_get::get(vip, "/api/posts?limit=5", Duration::from_secs(3)).await;
                let now = Instant::now();
                {
                    let mut t = lock(&traffic);
                    if matches!(r, Ok((200, _))) {
                        t.reads_ok += 1;
                        if let Some(last) = t.last_read {
                            t.read_gap = t.read_gap.max(now - last);
                        }
                        t.last_read = Some(now);
                    } else {
                        t.reads_failed += 1;
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    say(
        json,
        &format!("drill: traffic through {vip}; primary is {old}"),
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    if cut {
        say(
            json,
            "drill: cutting the replicas' replication stream for 1 s",
        );
        for (name, pool) in pools.iter().filter(|(n, _)| *n != old) {
            sqlx::raw_sql("STOP SLAVE IO_THREAD")
                .execute(pool)
                .await
                .with_context(|| format!("stopping {name}'s receiving thread"))?;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    say(json, &format!("drill: killing {old} (SIGKILL)"));
    let fault = Instant::now();
    let killed = control(state_dir.clone(), "kill", &old).await?;
    if !killed.ok {
        bail!("kill {old}: {}", killed.error.unwrap_or_default());
    }
    let mut new_primary = None;
    while fault.elapsed() < Duration::from_secs(30) {
        let nodes = db_nodes(&state_dir).await?;
        if let Some(p) = primary_of(&nodes).filter(|p| *p != old) {
            new_primary = Some(p);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    match &new_primary {
        Some(p) => say(
            json,
            &format!(
                "drill: {p} is primary after {:.2} s",
                fault.elapsed().as_secs_f64()
            ),
        ),
        None => say(json, "drill: no new primary within 30 s"),
    }
    // Keep the traffic going a little after the first write on the new primary.
    let after = Instant::now();
    while after.elapsed() < Duration::from_secs(10) {
        let acked_after = lock(&traffic).last_write.is_some_and(|t| t > after);
        if acked_after {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _ = stop_tx.send(true);
    let _ = writer.await;
    let _ = reader.await;

    say(json, &format!("drill: starting {old} again"));
    let started = Instant::now();
    let resp = control(state_dir.clone(), "start", &old).await?;
    if !resp.ok {
        say(
            json,
            &format!("drill: start {old}: {}", resp.error.unwrap_or_default()),
        );
    }
    let mut rejoined = None;
    let mut converged = false;
    let mut positions = HashMap::new();
    while started.elapsed() < Duration::from_secs(30) {
        let nodes = db_nodes(&state_dir).await?;
        positions = nodes
            .iter()
            .filter_map(|(name, h)| {
                Some((
                    name.clone(),
                    h.as_ref()?.observed.as_ref()?.gtid_current_pos.clone(),
                ))
            })
            .collect();
        let first = positions.values().next().cloned().unwrap_or_default();
        converged = positions.len() == pools.len() && positions.values().all(|p| *p == first);
        // A replica again: replicating, both threads running, on the primary's position.
        let old_health = nodes
            .iter()
            .find(|(name, _)| *name == old)
            .and_then(|(_, h)| h.as_ref());
        if rejoined.is_none()
            && converged
            && old_health.is_some_and(|h| {
                h.db_role == "replica"
                    && h.observed
                        .as_ref()
                        .and_then(|o| o.replication.as_ref())
                        .is_some_and(|r| r.sql_running == "Yes" && r.io_running == "Yes")
            })
        {
            rejoined = Some(started.elapsed().as_secs_f64());
        }
        if rejoined.is_some() && converged {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = watcher.await;
    let old_role = db_nodes(&state_dir)
        .await?
        .iter()
        .find(|(name, _)| *name == old)
        .and_then(|(_, h)| h.as_ref().map(|h| h.db_role.clone()))
        .unwrap_or_else(|| "not answering".into());

    // What is stored, read on the primary.
    let (lost, duplicates, acked) = {
        let acked = lock(&traffic).acked.clone();
        let primary = new_primary.clone().unwrap_or_else(|| old.clone());
        let pool = &pools
            .iter()
            .find(|(n, _)| *n == primary)
            .context("primary pool")?
            .1;
        let rows: Vec<(String, i64)> = sqlx::query_as(&format!(
            "SELECT body, COUNT(*) FROM `{}`.posts WHERE body LIKE ? GROUP BY body",
            topo.db.database
        ))
        .bind(format!("{run_id}-%"))
        .fetch_all(pool)
        .await
        .context("reading the posts back from the primary")?;
        let stored: HashMap<String, i64> = rows.into_iter().collect();
        let lost = acked.keys().filter(|k| !stored.contains_key(*k)).count();
        let dups = stored.values().filter(|c| **c > 1).count();
        (lost, dups, acked.len())
    };
    let last_failover = db_nodes(&state_dir)
        .await?
        .into_iter()
        .filter_map(|(_, h)| h?.cluster.last_failover)
        .max_by_key(|f| f.epoch);
    let t = lock(&traffic);
    Ok(Report {
        variant: if cut {
            "kill primary, replication cut 1 s before"
        } else {
            "kill primary"
        },
        old_primary: old,
        new_primary,
        acknowledged_writes: acked,
        lost_writes: lost,
        duplicate_writes: duplicates,
        write_gap_max_s: t.write_gap.as_secs_f64(),
        read_gap_max_s: t.read_gap.as_secs_f64(),
        reads_ok: t.reads_ok,
        reads_failed: t.reads_failed,
        read_your_writes_misses: t.ryw_misses,
        max_writable_at_once: *lock(&max_writable),
        failover_detected_after_ms: last_failover.as_ref().map(|f| f.detected_after_ms),
        fencing: last_failover.as_ref().map(|f| f.fencing.clone()),
        old_primary_replica_after_s: rejoined,
        old_primary_role: old_role,
        converged,
        gtid_positions: positions,
    })
}

fn print_table(r: &Report) {
    let yes = |b: bool| if b { "yes" } else { "NO" };
    println!("\ndb-failover drill — {}", r.variant);
    let rows: Vec<(&str, String)> = vec![
        (
            "old primary → new primary",
            format!(
                "{} → {}",
                r.old_primary,
                r.new_primary.as_deref().unwrap_or("none")
            ),
        ),
        (
            "longest gap between acknowledged writes",
            format!("{:.3} s", r.write_gap_max_s),
        ),
        (
            "longest gap between successful reads",
            format!("{:.3} s", r.read_gap_max_s),
        ),
        (
            "reads ok / failed",
            format!("{} / {}", r.reads_ok, r.reads_failed),
        ),
        ("acknowledged writes", r.acknowledged_writes.to_string()),
        (
            "posts not found right after their 201",
            r.read_your_writes_misses.to_string(),
        ),
        ("acknowledged writes lost", r.lost_writes.to_string()),
        ("writes stored twice", r.duplicate_writes.to_string()),
        (
            "most writable servers at once",
            r.max_writable_at_once.to_string(),
        ),
        (
            "lease expiry detected after",
            r.failover_detected_after_ms
                .map_or("-".into(), |m| format!("{m} ms")),
        ),
        (
            "old primary fenced by",
            r.fencing.clone().unwrap_or_else(|| "-".into()),
        ),
        (
            "old primary a replica again after",
            r.old_primary_replica_after_s
                .map_or("not within 30 s".into(), |s| format!("{s:.2} s")),
        ),
        ("old primary now", r.old_primary_role.clone()),
        (
            "every db node on one GTID position",
            yes(r.converged).to_string(),
        ),
    ];
    for (k, v) in rows {
        println!("  {k:<40} {v}");
    }
    println!(
        "  {:<40} {}",
        "result",
        if r.ok() { "PASS" } else { "FAIL" }
    );
}
