//! `drill db-failover`: SIGKILLs the database primary under the users' traffic, then
//! starts it again.
//!
//! Beside the common figures, meanwhile every db node's `read_only` is sampled to catch
//! two writable primaries, and afterwards the posts are counted on the new primary
//! (writes stored twice, or missing there). With `--cut-replication`, the replicas'
//! receiving threads are stopped for a second first, so the primary has no replica to
//! acknowledge its commits. The drill's own checks: a replica is promoted, never two
//! writable servers, nothing stored twice, the old primary a replica again, and every
//! db node on one GTID position. With the team's own app (`[app]`) the drill knows no
//! table of it: the posts are not counted in SQL (the writes are still read back
//! through the VIP, which is what "writes lost" counts).
//!
//! The database servers are read directly (SQL as `hastack_admin`, the account db
//! nodes use among themselves): on an isolated stack from a db node's namespace, where
//! the firewall and the account's hosts let it in (the namespace outlives its node's
//! process, so the killed primary's would do too; the last db node's is used).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;
use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions};
use tokio::sync::watch;

use hastack_config::Role;
use hastack_status::health::{DbHealth, Health};

use super::lock;
use super::{Ctx, Figures};
use crate::control;

/// What the drill found beside the common figures.
#[derive(Debug, Serialize)]
struct Details {
    variant: &'static str,
    old_primary: String,
    new_primary: Option<String>,
    /// Posts of this drill stored twice (a retried key written again).
    duplicate_writes: usize,
    /// Acknowledged posts missing on the new primary (counted there by SQL).
    missing_on_primary: usize,
    /// Reads (not writes) that failed from the kill on: reads need no primary.
    reads_failed: usize,
    max_writable_at_once: usize,
    failover_detected_after_ms: Option<u64>,
    fencing: Option<String>,
    old_primary_replica_after_s: Option<f64>,
    old_primary_role: String,
    converged: bool,
    gtid_positions: HashMap<String, String>,
}

/// `control::order` off the drill's thread, whose watcher must not stall.
async fn order(state_dir: PathBuf, cmd: &'static str, node: String) -> anyhow::Result<String> {
    let what = format!("{cmd} {node}");
    tokio::task::spawn_blocking(move || control::order(&state_dir, cmd, &node, None))
        .await
        .context("control request")?
        .context(what)
}

/// A db node's name and what its `/healthz` says (`None`: it does not answer).
type DbNode = (String, Option<DbHealth>);

async fn db_nodes(state_dir: &std::path::Path) -> anyhow::Result<Vec<DbNode>> {
    let dir = state_dir.to_path_buf();
    let status = tokio::task::spawn_blocking(move || control::fetch_status(&dir))
        .await
        .context("control request")??;
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
pub(super) fn run(ctx: &Ctx, cut: bool) -> anyhow::Result<Figures> {
    let secrets = hastack_runtime::secrets::DbSecrets::load_or_create(
        &ctx.state_dir,
        ctx.topo.db.password.as_deref(),
        ctx.topo.db.repl_password.as_deref(),
    )?;
    // Where SQL can reach the db nodes from: here, or a db node's namespace.
    let sql_netns = if ctx.isolated() {
        let st = ctx.status()?;
        let ns = st
            .nodes
            .iter()
            .rev()
            .find(|n| n.role == Role::Db.as_str())
            .and_then(|n| n.netns.clone())
            .context("an isolated stack without a db node's namespace")?;
        Some(std::path::Path::new("/run/netns").join(ns))
    } else {
        None
    };
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                if let Some(path) = &sql_netns {
                    let ns = std::fs::File::open(path)
                        .with_context(|| format!("the namespace {}", path.display()))?;
                    nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                        .with_context(|| format!("entering {}", path.display()))?;
                }
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?
                    .block_on(drill(ctx, secrets, cut))
            })
            .join()
            .map_err(|_| anyhow::anyhow!("the db drill's thread panicked"))?
    })
}

async fn drill(
    ctx: &Ctx,
    secrets: hastack_runtime::secrets::DbSecrets,
    cut: bool,
) -> anyhow::Result<Figures> {
    let topo = &ctx.topo;
    let state_dir = ctx.state_dir.clone();
    let nodes = db_nodes(&state_dir).await?;
    let old =
        primary_of(&nodes).context("no db node is a writable primary now; see `hastack status`")?;
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
    let load = ctx.load("db-failover")?;
    ctx.say(format!(
        "db-failover: traffic through {}; primary is {old}",
        ctx.vip
    ));
    tokio::time::sleep(Duration::from_secs(2)).await;
    if cut {
        ctx.say("db-failover: cutting the replicas' replication stream for 1 s");
        for (name, pool) in pools.iter().filter(|(n, _)| *n != old) {
            sqlx::raw_sql("STOP SLAVE IO_THREAD")
                .execute(pool)
                .await
                .with_context(|| format!("stopping {name}'s receiving thread"))?;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    ctx.say(format!("db-failover: killing {old} (SIGKILL)"));
    let fault = Instant::now();
    order(state_dir.clone(), "kill", old.clone()).await?;
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
        Some(p) => ctx.say(format!(
            "db-failover: {p} is primary after {:.2} s",
            fault.elapsed().as_secs_f64()
        )),
        None => ctx.say("db-failover: no new primary within 30 s"),
    }
    // Keep the traffic going until a write is acknowledged on the new primary, and
    // two seconds more.
    let acked = load.acknowledged();
    let after = Instant::now();
    while after.elapsed() < Duration::from_secs(10) && load.acknowledged() <= acked {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let fault_end = Instant::now();

    ctx.say(format!("db-failover: starting {old} again"));
    let started = Instant::now();
    if let Err(e) = order(state_dir.clone(), "start", old.clone()).await {
        ctx.say(format!("db-failover: {e:#}"));
    }
    // A replica again: replicating from the primary, both threads running (under
    // traffic, so its position is a moving target: compared once the traffic ends).
    let mut rejoined = None;
    while started.elapsed() < Duration::from_secs(30) {
        let nodes = db_nodes(&state_dir).await?;
        let replicating = nodes
            .iter()
            .find(|(name, _)| *name == old)
            .and_then(|(_, h)| h.as_ref())
            .is_some_and(|h| {
                h.db_role == "replica"
                    && h.observed
                        .as_ref()
                        .and_then(|o| o.replication.as_ref())
                        .is_some_and(|r| r.sql_running == "Yes" && r.io_running == "Yes")
            });
        if replicating {
            rejoined = Some(started.elapsed().as_secs_f64());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The traffic ends; every acknowledged post is read back.
    let traffic = load.finish();
    // With nothing written any more, every db node reaches one GTID position.
    let mut converged = false;
    let mut positions = HashMap::new();
    let quiet = Instant::now();
    while quiet.elapsed() < Duration::from_secs(30) {
        positions = db_nodes(&state_dir)
            .await?
            .iter()
            .filter_map(|(name, h)| {
                Some((
                    name.clone(),
                    h.as_ref()?.observed.as_ref()?.gtid_current_pos.clone(),
                ))
            })
            .collect::<HashMap<_, _>>();
        let first = positions.values().next().cloned().unwrap_or_default();
        converged = positions.len() == pools.len() && positions.values().all(|p| *p == first);
        if converged {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = stop_tx.send(true);
    let _ = watcher.await;
    let old_role = db_nodes(&state_dir)
        .await?
        .iter()
        .find(|(name, _)| *name == old)
        .and_then(|(_, h)| h.as_ref().map(|h| h.db_role.clone()))
        .unwrap_or_else(|| "not answering".into());

    // What is stored, counted on the primary: the built-in app's posts table. A team's
    // app has tables the drill does not know; its writes are read back through the
    // VIP instead (the traffic's own check), and duplicates are not counted.
    let (missing, duplicates) = if topo.app.is_some() {
        (0, 0)
    } else {
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
        .bind(format!("{}-%", traffic.tag))
        .fetch_all(pool)
        .await
        .context("reading the posts back from the primary")?;
        let stored: HashMap<String, i64> = rows.into_iter().collect();
        let missing = traffic
            .acked_keys
            .iter()
            .filter(|k| !stored.contains_key(*k))
            .count();
        let dups = stored.values().filter(|c| **c > 1).count();
        (missing, dups)
    };
    let last_failover = db_nodes(&state_dir)
        .await?
        .into_iter()
        .filter_map(|(_, h)| h?.cluster.last_failover)
        .max_by_key(|f| f.epoch);
    let max_writable_at_once = *lock(&max_writable);
    let reads_failed = traffic
        .samples
        .iter()
        .filter(|s| s.at >= fault && s.kind == super::load::Kind::Read && !s.ok)
        .count();
    let mut f = Figures::of(
        "db-failover",
        if cut {
            format!("kill {old}, replication cut")
        } else {
            format!("kill {old}")
        },
        &traffic,
        fault,
        fault_end,
    );
    f.check(new_primary.is_some(), "no replica was promoted within 30 s");
    f.check(
        max_writable_at_once <= 1,
        format!("{max_writable_at_once} writable servers at once"),
    );
    f.check(duplicates == 0, format!("{duplicates} posts stored twice"));
    f.check(
        missing == 0,
        format!("{missing} acknowledged posts missing on the primary"),
    );
    f.check(
        rejoined.is_some(),
        format!("{old} was not a replica again within 30 s of its start"),
    );
    f.check(
        converged,
        "the db nodes did not reach one GTID position within 30 s of the traffic's end",
    );
    Ok(f.done(Details {
        variant: if cut {
            "kill primary, replication cut 1 s before"
        } else {
            "kill primary"
        },
        old_primary: old,
        new_primary,
        duplicate_writes: duplicates,
        missing_on_primary: missing,
        reads_failed,
        max_writable_at_once,
        failover_detected_after_ms: last_failover.as_ref().map(|f| f.detected_after_ms),
        fencing: last_failover.as_ref().map(|f| f.fencing.clone()),
        old_primary_replica_after_s: rejoined,
        old_primary_role: old_role,
        converged,
        gtid_positions: positions,
    }))
}
