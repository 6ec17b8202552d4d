//! `hastack drill lb-failover|web-failover|app-failover|db-failover|all`: breaks one
//! part of a running stack under traffic and reports what users saw, the same figures
//! for every drill:
//!
//! - **outage**: the longest time, from the fault until the part is brought back, in
//!   which reads or writes got no successful answer — failed requests and stalled ones
//!   (a SYN retransmitted after a second, a write waiting for a new primary) both
//!   count; the clients send every 20 ms, so an unharmed site shows about that; none
//!   when the site never recovered;
//! - **failed requests** out of all in flight at the fault or sent after it, to the end
//!   (the part's return included);
//! - **slowest request** in that time (a request that timed out counts its timeout);
//! - **writes lost**: acknowledged writes not found by id afterwards.
//!
//! The traffic ([`load`]) runs from the client's side: from the client namespace of an
//! isolated stack, from this machine on a loopback one. Each drill adds its own checks
//! (the VIP on exactly one lb, the killed node back in rotation, never two writable
//! database servers, the old primary a replica again); a drill passes when the site
//! recovered, no acknowledged write was lost and its checks hold. Output: a table, or
//! with `--json` `{"passed": …, "drills": [rows]}`, each row with the drill's details.

mod db;
mod lb;
mod load;
mod tier;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

use hastack_config::{Role, Topology};

use crate::control::{self, StatusReport};

pub(crate) use lb::Fault;

/// Which drill to run.
#[derive(Debug, Clone)]
pub(crate) enum Which {
    /// The master lb, each of these faults in turn (default: all the mode allows).
    Lb(Option<Vec<Fault>>),
    /// A web node killed and started again.
    Web,
    /// An app node killed and started again.
    App,
    /// The database primary killed (optionally with replication cut first).
    Db {
        /// Stop the replicas' receiving threads for a second before the kill.
        cut_replication: bool,
    },
    /// lb, web, app and db, in that order.
    All,
}

/// One drill's row: the figures every drill reports, its verdict and its details.
#[derive(Debug, Serialize)]
pub(crate) struct Figures {
    /// `lb-failover`, `web-failover`, `app-failover` or `db-failover`.
    pub(crate) drill: &'static str,
    /// What was done: `kill lb1`, `cut lb1's link`, ….
    pub(crate) fault: String,
    /// The longest time reads or writes got no successful answer while the fault
    /// lasted; `None`: the site did not recover.
    pub(crate) outage_s: Option<f64>,
    /// Requests in flight at the fault or sent after it, to the end.
    pub(crate) requests: usize,
    /// Of which failed (an error answer, a refused or reset connection, a timeout).
    pub(crate) failed_requests: usize,
    /// The slowest of them.
    pub(crate) slowest_request_s: f64,
    /// Writes acknowledged during the whole drill.
    pub(crate) writes_acknowledged: u64,
    /// Acknowledged writes not found afterwards.
    pub(crate) writes_lost: u64,
    /// Posts not found by id right after their acknowledgement.
    pub(crate) read_your_writes_misses: u64,
    /// Whether the drill passed.
    pub(crate) passed: bool,
    /// Why not, one line each.
    pub(crate) problems: Vec<String>,
    /// The drill's own findings.
    pub(crate) details: serde_json::Value,
}

impl Figures {
    /// The figures of `traffic`, for a fault at `fault` lasting until `until`.
    fn of(
        drill: &'static str,
        fault: String,
        traffic: &load::Verified,
        at: Instant,
        until: Instant,
    ) -> Figures {
        // Requests in flight at the fault count: a write waiting on the dying primary
        // is the fault's, though it was sent a moment before.
        let after: Vec<&load::Sample> = traffic
            .samples
            .iter()
            .filter(|s| s.at + s.took >= at)
            .collect();
        let during: Vec<&load::Sample> = after.iter().copied().filter(|s| s.at < until).collect();
        // Reads and writes each: a write waiting for a new primary is an outage for
        // whoever posts, though reads go on.
        let of = |kind| -> Vec<&load::Sample> {
            during.iter().copied().filter(|s| s.kind == kind).collect()
        };
        let (reads, writes) = (of(load::Kind::Read), of(load::Kind::Write));
        let outage = match (outage(&reads, at, until), outage(&writes, at, until)) {
            (Some(r), Some(w)) => Some(r.max(w)),
            _ => None,
        };
        let mut problems = Vec::new();
        if outage.is_none() {
            problems.push("the site did not recover while the fault lasted".to_string());
        }
        if !traffic.lost.is_empty() {
            problems.push(format!(
                "{} acknowledged writes lost (e.g. {})",
                traffic.lost.len(),
                traffic.lost[0]
            ));
        }
        if traffic.unverified > 0 {
            problems.push(format!(
                "{} acknowledged writes could not be read back (the site did not answer)",
                traffic.unverified
            ));
        }
        if traffic.acknowledged == 0 {
            problems.push("no write was acknowledged".to_string());
        }
        Figures {
            drill,
            fault,
            outage_s: outage.map(|d| d.as_secs_f64()),
            requests: after.len(),
            failed_requests: after.iter().filter(|s| !s.ok).count(),
            slowest_request_s: after
                .iter()
                .map(|s| s.took)
                .max()
                .unwrap_or_default()
                .as_secs_f64(),
            writes_acknowledged: traffic.acknowledged,
            writes_lost: traffic.lost.len() as u64,
            read_your_writes_misses: traffic.read_your_writes_misses,
            passed: false,
            problems,
            details: serde_json::Value::Null,
        }
    }

    /// The row of a drill that could not run to its end.
    fn failed(drill: &'static str, error: &anyhow::Error) -> Figures {
        Figures {
            drill,
            fault: "-".into(),
            outage_s: None,
            requests: 0,
            failed_requests: 0,
            slowest_request_s: 0.0,
            writes_acknowledged: 0,
            writes_lost: 0,
            read_your_writes_misses: 0,
            passed: false,
            problems: vec![format!("{error:#}")],
            details: serde_json::Value::Null,
        }
    }

    /// Adds a check of the drill's own: `problem` when it does not hold.
    fn check(&mut self, holds: bool, problem: impl Into<String>) {
        if !holds {
            self.problems.push(problem.into());
        }
    }

    /// Sets the verdict and the details.
    fn done(mut self, details: impl Serialize) -> Figures {
        self.passed = self.problems.is_empty();
        self.details = serde_json::to_value(details).unwrap_or_default();
        self
    }
}

/// The longest time from the fault at `t0` until `until` in which no request of
/// `samples` (sent from `t0` on, in order) got a successful answer: the gaps between
/// successive successful answers, the first from `t0`. Only answers before `until`
/// count (one that came because the part was back is not a recovery). `None` when no
/// request sent after the last failed one was answered successfully before `until`.
fn outage(samples: &[&load::Sample], t0: Instant, until: Instant) -> Option<Duration> {
    let answered_in_time = |s: &load::Sample| s.ok && s.at + s.took <= until;
    if let Some(i) = samples.iter().rposition(|s| !s.ok)
        && !samples[i + 1..].iter().any(|s| answered_in_time(s))
    {
        return None;
    }
    let mut answered: Vec<Instant> = samples
        .iter()
        .filter(|s| answered_in_time(s))
        .map(|s| s.at + s.took)
        .collect();
    answered.sort();
    let mut last = t0;
    let mut longest = Duration::ZERO;
    for at in answered {
        longest = longest.max(at.saturating_duration_since(last));
        last = last.max(at);
    }
    Some(longest)
}

/// What every drill needs: where the stack is and how to reach it.
pub(crate) struct Ctx {
    topo: Topology,
    state_dir: PathBuf,
    /// The client's namespace of an isolated stack.
    client_netns: Option<PathBuf>,
    vip: SocketAddr,
    json: bool,
}

impl Ctx {
    fn new(topo: &Topology, json: bool) -> anyhow::Result<Ctx> {
        let state_dir = crate::state_dir(topo)?;
        let st = control::fetch_status(&state_dir)?;
        Ok(Ctx {
            client_netns: st
                .client_netns
                .as_ref()
                .map(|ns| Path::new("/run/netns").join(ns)),
            vip: SocketAddr::from((topo.vip, topo.http_port)),
            topo: topo.clone(),
            state_dir,
            json,
        })
    }

    fn isolated(&self) -> bool {
        self.client_netns.is_some()
    }

    /// Progress, on the terminal only (JSON output stays one document).
    fn say(&self, text: impl AsRef<str>) {
        if !self.json {
            println!("{}", text.as_ref());
        }
    }

    /// Starts the users' traffic, tagged with `drill` so its posts are its own.
    fn load(&self, drill: &str) -> anyhow::Result<load::Load> {
        let tag = format!(
            "{drill}-{}-{}",
            std::process::id(),
            chrono::Utc::now().timestamp_millis() % 1_000_000_000
        );
        let traffic = match &self.topo.app {
            None => hastack_config::DrillTraffic::default(),
            Some(app) => app.drill.clone().context(
                "the topology runs your own app, and the drills need to know how to read and write through it: add [app.drill] with read, write and body (see `hastack config`)",
            )?,
        };
        load::Load::start(
            self.client_netns.clone(),
            self.vip,
            self.topo.site.clone(),
            tag,
            traffic,
        )
    }

    fn status(&self) -> anyhow::Result<StatusReport> {
        control::fetch_status(&self.state_dir)
    }

    /// Sends `cmd node` to the supervisor; an error unless it was carried out.
    fn order(&self, cmd: &str, node: &str) -> anyhow::Result<String> {
        control::order(&self.state_dir, cmd, node, None).with_context(|| format!("{cmd} {node}"))
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `which` on the stack of `topo`; exit status 0 when every drill passed.
pub(crate) fn run(topo: &Topology, which: Which, json: bool) -> anyhow::Result<ExitCode> {
    let ctx = Ctx::new(topo, json)?;
    let mut rows = Vec::new();
    // A drill that cannot run to its end is a failed row; the others still run.
    let mut record = |drill: &'static str, r: anyhow::Result<Vec<Figures>>| match r {
        Ok(done) => rows.extend(done),
        Err(e) => {
            ctx.say(format!("{drill}: {e:#}"));
            rows.push(Figures::failed(drill, &e));
        }
    };
    let all = matches!(which, Which::All);
    match &which {
        Which::Lb(faults) => record("lb-failover", lb::run(&ctx, faults.clone())),
        Which::All => record("lb-failover", lb::run(&ctx, None)),
        _ => {}
    }
    if matches!(which, Which::Web) || all {
        record("web-failover", tier::run(&ctx, Role::Web).map(|f| vec![f]));
    }
    if matches!(which, Which::App) || all {
        let rows = if ctx.topo.app.is_some() {
            tier::app_process(&ctx)
                .and_then(|process| Ok(vec![process, tier::run(&ctx, Role::App)?]))
        } else {
            tier::run(&ctx, Role::App).map(|f| vec![f])
        };
        record("app-failover", rows);
    }
    match which {
        Which::Db { cut_replication } => {
            record("db-failover", db::run(&ctx, cut_replication).map(|f| vec![f]))
        }
        Which::All if ctx.status()?.db_engine != "mariadb" => ctx.say(
            "db-failover: skipped, the stack runs on SQLite (install mariadb-server for the MariaDB tier)",
        ),
        Which::All => record("db-failover", db::run(&ctx, false).map(|f| vec![f])),
        _ => {}
    }
    let passed = rows.iter().all(|r| r.passed);
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "passed": passed, "drills": rows }))?
        );
    } else {
        print!("\n{}", table(&rows));
    }
    Ok(if passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The rows as a table, then each failed row's problems.
fn table(rows: &[Figures]) -> String {
    use std::fmt::Write;
    let mut out = format!(
        "{:<13} {:<28} {:>9} {:>11} {:>9} {:>12}  {}\n",
        "drill", "fault", "outage", "failed", "slowest", "writes lost", "result"
    );
    for r in rows {
        let _ = writeln!(
            out,
            "{:<13} {:<28} {:>9} {:>11} {:>9} {:>12}  {}",
            r.drill,
            r.fault,
            r.outage_s.map_or("none".into(), |s| format!("{s:.3} s")),
            format!("{}/{}", r.failed_requests, r.requests),
            format!("{:.3} s", r.slowest_request_s),
            format!("{}/{}", r.writes_lost, r.writes_acknowledged),
            if r.passed { "PASS" } else { "FAIL" }
        );
    }
    for r in rows.iter().filter(|r| !r.passed) {
        for p in &r.problems {
            let _ = writeln!(out, "  {} ({}): {p}", r.drill, r.fault);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(t0: Instant, ms: u64, ok: bool) -> load::Sample {
        timed(t0, ms, 2, ok)
    }

    fn timed(t0: Instant, ms: u64, took_ms: u64, ok: bool) -> load::Sample {
        load::Sample {
            at: t0 + Duration::from_millis(ms),
            took: Duration::from_millis(took_ms),
            ok,
            served_by: ok.then(|| "lb2, web1, app1".to_string()),
            kind: load::Kind::Read,
        }
    }

    fn outage_of(samples: &[load::Sample], t0: Instant) -> Option<Duration> {
        outage(
            &samples.iter().collect::<Vec<_>>(),
            t0,
            t0 + Duration::from_secs(60),
        )
    }

    #[test]
    fn the_outage_is_the_longest_time_without_a_successful_answer() {
        let t0 = Instant::now();
        // Answered at 12, (failed), 72, 92: the gap 12 → 72.
        let s = [
            sample(t0, 10, true),
            sample(t0, 30, false),
            sample(t0, 50, false),
            sample(t0, 70, true),
            sample(t0, 90, true),
        ];
        assert_eq!(outage_of(&s, t0), Some(Duration::from_millis(60)));
        // Nothing failed, but requests stalled for a second (a retransmitted SYN).
        let stalled = [
            sample(t0, 0, true),
            timed(t0, 20, 1000, true),
            timed(t0, 40, 980, true),
            sample(t0, 1040, true),
        ];
        assert_eq!(outage_of(&stalled, t0), Some(Duration::from_millis(1018)));
        // An unharmed site: about the clients' interval.
        let clean = [sample(t0, 20, true), sample(t0, 40, true)];
        assert_eq!(outage_of(&clean, t0), Some(Duration::from_millis(22)));
        // Never recovered.
        let dead = [sample(t0, 10, true), sample(t0, 30, false)];
        assert_eq!(outage_of(&dead, t0), None);
    }

    #[test]
    fn an_answer_that_came_only_after_the_part_was_back_is_no_recovery() {
        let t0 = Instant::now();
        let until = t0 + Duration::from_secs(3);
        // Failures until the end of the fault; one request sent before the end was
        // answered after it.
        let s = [
            sample(t0, 10, false),
            sample(t0, 2900, false),
            timed(t0, 2950, 500, true),
        ];
        let refs: Vec<&load::Sample> = s.iter().collect();
        assert_eq!(outage(&refs, t0, until), None);
        assert_eq!(
            outage(&refs, t0, until + Duration::from_secs(1)),
            Some(Duration::from_millis(3450))
        );
    }

    #[test]
    fn a_write_waiting_for_a_new_primary_is_an_outage_though_reads_go_on() {
        let t0 = Instant::now();
        let mut samples: Vec<load::Sample> = (0..50).map(|i| sample(t0, i * 20, true)).collect();
        let mut write = timed(t0, 5, 1500, true);
        write.kind = load::Kind::Write;
        samples.push(write);
        let mut after = timed(t0, 1530, 3, true);
        after.kind = load::Kind::Write;
        samples.push(after);
        samples.sort_by_key(|s| s.at);
        let traffic = load::Verified {
            acknowledged: 2,
            samples,
            ..Default::default()
        };
        let f = Figures::of(
            "db-failover",
            "kill db1".into(),
            &traffic,
            t0,
            t0 + Duration::from_secs(2),
        );
        assert_eq!(f.outage_s, Some(1.505));
        assert_eq!(f.failed_requests, 0);
    }

    #[test]
    fn figures_count_from_the_fault_and_the_outage_only_while_it_lasts() {
        let t0 = Instant::now() + Duration::from_secs(1);
        let before = load::Sample {
            at: t0 - Duration::from_millis(500),
            took: Duration::from_millis(400),
            ok: false,
            served_by: None,
            kind: load::Kind::Write,
        };
        // Sent before the fault, answered after it: the fault's.
        let in_flight = timed(t0 - Duration::from_millis(10), 0, 700, true);
        let mut samples = vec![before, in_flight];
        samples.extend([
            sample(t0, 0, false),
            sample(t0, 20, true),
            // After the fault ended (the node's return): failed, but not outage.
            sample(t0, 3000, false),
            sample(t0, 3020, true),
        ]);
        let traffic = load::Verified {
            acknowledged: 10,
            lost: vec!["k-3".into()],
            samples,
            ..Default::default()
        };
        let f = Figures::of(
            "web-failover",
            "kill web1".into(),
            &traffic,
            t0,
            t0 + Duration::from_secs(2),
        );
        assert_eq!(f.requests, 5);
        assert_eq!(f.failed_requests, 2);
        // Answered at 22 and 690 after the fault: the longest gap while it lasted.
        assert_eq!(f.outage_s, Some(0.668));
        // The failed request done before the fault is not the drill's; the one in
        // flight is.
        assert_eq!(f.slowest_request_s, 0.7);
        assert_eq!(f.writes_lost, 1);
        let f = f.done(serde_json::json!({}));
        assert!(!f.passed);
        assert_eq!(f.problems, vec!["1 acknowledged writes lost (e.g. k-3)"]);
        let t = table(&[f]);
        assert!(t.contains("web-failover  kill web1"), "{t}");
        assert!(t.contains("2/5"), "{t}");
        assert!(t.contains("1/10"), "{t}");
        assert!(t.contains("FAIL"), "{t}");
    }
}
