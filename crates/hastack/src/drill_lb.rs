//! `hastack drill lb-failover`: takes the master load balancer of a running isolated
//! stack away, three ways, under traffic from the client namespace, and reports what the
//! client saw.
//!
//! The client opens a new connection and sends `GET /` through the VIP every 20 ms
//! (connect timeout 0.2 s), from a thread inside the `client` network namespace — the
//! outside world of the stack. The faults, each followed by the master's return:
//!
//! - `link`: the master's link is cut (`ip link set eth0 down` in its namespace), as a
//!   dead host or a pulled cable would look; then the link comes back;
//! - `kill`: the master's process is SIGKILLed; then started again;
//! - `stop`: the master is stopped gracefully (it says priority 0 and drains); then
//!   started again.
//!
//! For each: the outage (fault → first success after the last failure), the failed
//! requests, which lb served afterwards, and whether the VIP returned to the original
//! master (preemption) with the failures during that return.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;

use hastack_config::{Role, Topology};

use crate::control::{self, Request, StatusReport};

/// Request interval of the client.
const EVERY: Duration = Duration::from_millis(20);
/// Connect timeout of the client.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(200);
/// How long the drill waits for a takeover or a return before calling it failed.
const WAIT: Duration = Duration::from_secs(15);

/// One fault and what the client saw.
#[derive(Debug, Serialize)]
struct FaultReport {
    fault: &'static str,
    master: String,
    outage_s: Option<f64>,
    failed_requests: usize,
    requests: usize,
    served_after: Option<String>,
    vip_returned: bool,
    return_failed_requests: usize,
    vip_holders_after: Vec<String>,
}

impl FaultReport {
    fn ok(&self) -> bool {
        self.outage_s.is_some() && self.vip_returned && self.vip_holders_after.len() == 1
    }
}

/// One request of the client.
#[derive(Debug, Clone)]
struct Sample {
    at: Instant,
    served_by: Option<String>,
}

/// The client: a thread in the client namespace sending a request every 20 ms.
struct Client {
    samples: Arc<Mutex<Vec<Sample>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One `GET /` on a new connection; the `X-Served-By` of a 200.
fn get(vip: SocketAddr, host: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&vip, CONNECT_TIMEOUT).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    s.set_write_timeout(Some(Duration::from_secs(1))).ok()?;
    s.write_all(format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes())
        .ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw);
    let head = text.split("\r\n\r\n").next()?;
    let mut lines = head.lines();
    if lines.next()?.split_whitespace().nth(1)? != "200" {
        return None;
    }
    Some(
        lines
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("x-served-by"))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default(),
    )
}

impl Client {
    fn start(netns: PathBuf, vip: SocketAddr, host: String) -> anyhow::Result<Client> {
        let ns = std::fs::File::open(&netns)
            .with_context(|| format!("the client's namespace {}", netns.display()))?;
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (samples.clone(), stop.clone());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let entered = nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| e.to_string());
            let ok = entered.is_ok();
            let _ = ready_tx.send(entered);
            if !ok {
                return;
            }
            let mut next = Instant::now();
            while !st.load(Ordering::Relaxed) {
                let at = Instant::now();
                let served_by = get(vip, &host);
                lock(&s).push(Sample { at, served_by });
                next += EVERY;
                let now = Instant::now();
                if next > now {
                    std::thread::sleep(next - now);
                } else {
                    next = now;
                }
            }
        });
        ready_rx
            .recv()
            .context("the client thread")?
            .map_err(|e| anyhow::anyhow!("entering the client's namespace: {e}"))?;
        Ok(Client {
            samples,
            stop,
            thread: Some(thread),
        })
    }

    fn since(&self, t: Instant) -> Vec<Sample> {
        lock(&self.samples)
            .iter()
            .filter(|s| s.at >= t)
            .cloned()
            .collect()
    }

    /// Waits until requests have succeeded for `steady` in a row, all served by an lb
    /// for which `by` holds; false after `deadline`.
    fn wait_steady(
        &self,
        since: Instant,
        steady: Duration,
        deadline: Duration,
        by: impl Fn(&str) -> bool,
    ) -> bool {
        let start = Instant::now();
        while start.elapsed() < deadline {
            let samples = self.since(since);
            let tail_ok = samples
                .iter()
                .rev()
                .take_while(|s| s.served_by.as_deref().is_some_and(&by))
                .collect::<Vec<_>>();
            if let (Some(first), Some(last)) = (tail_ok.last(), tail_ok.first())
                && last.at.duration_since(first.at) >= steady
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    fn finish(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `(outage, failed, total)` of the samples after the fault at `t0`: outage is from the
/// fault to the first success after the last failure.
fn outage(samples: &[Sample], t0: Instant) -> (Option<Duration>, usize) {
    let failed = samples.iter().filter(|s| s.served_by.is_none()).count();
    let last_failure = samples.iter().rposition(|s| s.served_by.is_none());
    let recovered = match last_failure {
        None => samples.first(),
        Some(i) => samples.get(i + 1),
    };
    (
        recovered.map(|s| s.at.saturating_duration_since(t0)),
        failed,
    )
}

/// The lb nodes whose namespace holds the VIP now.
fn vip_holders(topo: &Topology, status: &StatusReport) -> Vec<String> {
    status
        .nodes
        .iter()
        .filter(|n| n.role == Role::Lb.as_str())
        .filter(|n| {
            n.netns
                .as_deref()
                .is_some_and(|ns| addresses(ns).contains(&topo.vip))
        })
        .map(|n| n.name.clone())
        .collect()
}

/// The IPv4 addresses in network namespace `ns`.
fn addresses(ns: &str) -> Vec<Ipv4Addr> {
    let Ok(out) = Command::new("ip")
        .args(["-n", ns, "-4", "-o", "addr", "show"])
        .output()
    else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            w.position(|x| x == "inet")?;
            w.next()?.split('/').next()?.parse().ok()
        })
        .collect()
}

fn status(state_dir: &Path) -> anyhow::Result<StatusReport> {
    let resp = control::send(
        state_dir,
        &Request {
            cmd: "status".into(),
            node: String::new(),
            source: None,
        },
    )?;
    resp.status.context("no status from the supervisor")
}

fn order(state_dir: &Path, cmd: &str, node: &str) -> anyhow::Result<()> {
    let resp = control::send(
        state_dir,
        &Request {
            cmd: cmd.into(),
            node: node.into(),
            source: None,
        },
    )?;
    if resp.ok {
        Ok(())
    } else {
        bail!(
            "{cmd} {node}: {}",
            resp.error.unwrap_or_else(|| "failed".into())
        )
    }
}

fn link(ns: &str, up: bool) -> anyhow::Result<()> {
    let state = if up { "up" } else { "down" };
    let out = Command::new("ip")
        .args(["-n", ns, "link", "set", "eth0", state])
        .output()
        .context("running ip (apt-get install iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip -n {ns} link set eth0 {state}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Runs the drill: each of `faults` (`link`, `kill`, `stop`) in turn.
pub(crate) fn lb_failover(
    topo: &Topology,
    faults: &[String],
    json: bool,
) -> anyhow::Result<ExitCode> {
    let state_dir = crate::state_dir(topo)?;
    let st = status(&state_dir)?;
    let Some(client_ns) = st.client_netns.clone() else {
        bail!(
            "the lb-failover drill needs an isolated stack (VRRP on the wire, the VIP on an interface): start one with `hastack up --isolated`"
        );
    };
    let vip = SocketAddr::from((topo.vip, topo.http_port));
    let netns_of = |st: &StatusReport, name: &str| -> Option<String> {
        st.nodes
            .iter()
            .find(|n| n.name == name)
            .and_then(|n| n.netns.clone())
    };
    let mut reports = Vec::new();
    for fault in faults {
        let fault: &'static str = match fault.as_str() {
            "link" => "link",
            "kill" => "kill",
            "stop" => "stop",
            other => bail!("unknown fault `{other}`: the faults are link, kill, stop"),
        };
        let st = status(&state_dir)?;
        let holders = vip_holders(topo, &st);
        let [master] = holders.as_slice() else {
            bail!("the VIP should be on exactly one lb before the drill, it is on {holders:?}");
        };
        let master = master.clone();
        let ns = netns_of(&st, &master).context("the master's namespace")?;
        if !json {
            println!("lb-failover drill: {fault} — the master is {master}");
        }
        let client = Client::start(
            Path::new("/run/netns").join(&client_ns),
            vip,
            topo.site.clone(),
        )?;
        let before = Instant::now();
        if !client.wait_steady(before, Duration::from_secs(1), WAIT, |_| true) {
            client.finish();
            bail!("the site does not answer the client steadily through {vip}");
        }
        let t0 = Instant::now();
        match fault {
            "link" => link(&ns, false)?,
            "kill" => order(&state_dir, "kill", &master)?,
            _ => order(&state_dir, "stop", &master)?,
        }
        let other = |by: &str| !by.starts_with(master.as_str()) && !by.is_empty();
        let took_over = client.wait_steady(t0, Duration::from_secs(1), WAIT, other);
        let during = client.since(t0);
        let (out, failed) = outage(&during, t0);
        let served_after = during
            .iter()
            .rev()
            .find_map(|s| s.served_by.clone())
            .and_then(|b| b.split(',').next().map(|s| s.trim().to_string()));
        // The master comes back and, with a higher priority, takes the VIP again.
        let t1 = Instant::now();
        match fault {
            "link" => link(&ns, true)?,
            _ => order(&state_dir, "start", &master)?,
        }
        let returned = client.wait_steady(t1, Duration::from_secs(1), WAIT, |by| {
            by.starts_with(master.as_str())
        });
        let back = client.since(t1);
        client.finish();
        let st = status(&state_dir)?;
        reports.push(FaultReport {
            fault,
            master: master.clone(),
            outage_s: took_over.then(|| out.map(|d| d.as_secs_f64())).flatten(),
            failed_requests: failed,
            requests: during.len(),
            served_after,
            vip_returned: returned,
            return_failed_requests: back.iter().filter(|s| s.served_by.is_none()).count(),
            vip_holders_after: vip_holders(topo, &st),
        });
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    } else {
        print_table(&reports);
    }
    Ok(if reports.iter().all(FaultReport::ok) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn print_table(reports: &[FaultReport]) {
    println!(
        "\n{:<6} {:<7} {:>10} {:>8} {:<14} {:<13} {:>15}",
        "fault", "master", "outage", "failed", "served after", "VIP returned", "failed (return)"
    );
    for r in reports {
        println!(
            "{:<6} {:<7} {:>10} {:>8} {:<14} {:<13} {:>15}",
            r.fault,
            r.master,
            r.outage_s
                .map_or("no takeover".into(), |s| format!("{s:.3} s")),
            format!("{}/{}", r.failed_requests, r.requests),
            r.served_after.as_deref().unwrap_or("-"),
            if r.vip_returned { "yes" } else { "NO" },
            r.return_failed_requests,
        );
    }
    let ok = reports.iter().all(FaultReport::ok);
    println!("result: {}", if ok { "PASS" } else { "FAIL" });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(t0: Instant, ms: u64, ok: bool) -> Sample {
        Sample {
            at: t0 + Duration::from_millis(ms),
            served_by: ok.then(|| "lb2".to_string()),
        }
    }

    #[test]
    fn the_outage_runs_from_the_fault_to_the_first_success_after_the_last_failure() {
        let t0 = Instant::now();
        let s = vec![
            sample(t0, 10, false),
            sample(t0, 30, true),
            sample(t0, 50, false),
            sample(t0, 70, true),
            sample(t0, 90, true),
        ];
        let (out, failed) = outage(&s, t0);
        assert_eq!(out, Some(Duration::from_millis(70)));
        assert_eq!(failed, 2);
        let clean = vec![sample(t0, 10, true)];
        assert_eq!(outage(&clean, t0), (Some(Duration::from_millis(10)), 0));
        let dead = vec![sample(t0, 10, false)];
        assert_eq!(outage(&dead, t0), (None, 1));
    }
}
