//! `drill lb-failover`: takes the master load balancer away under traffic, each fault in
//! turn, and brings it back.
//!
//! The faults, each followed by the master's return:
//! - `link` (isolated stacks): the master's link is cut (`ip link set eth0 down` in its
//!   namespace), as a dead host or a pulled cable would look; then it comes back;
//! - `kill`: the master's process is SIGKILLed; then started again;
//! - `stop`: the master is stopped gracefully (it says priority 0 and drains); then
//!   started again.
//!
//! The drill's own checks: the backup took the VIP (the clients were answered by
//! another lb), the VIP returned to the master once it was back (preemption), and
//! afterwards exactly one lb holds it — on an isolated stack read from the
//! interfaces (`ip -n NS addr`), on a loopback one from the lbs' VRRP state.

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;

use hastack_config::Role;
use hastack_status::Health;

use super::{Ctx, Figures};
use crate::control::StatusReport;

/// How long the drill waits for a takeover or a return before calling it failed.
const WAIT: Duration = Duration::from_secs(15);

/// A way to take the master away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Fault {
    /// Cut its link (isolated stacks).
    Link,
    /// SIGKILL its process.
    Kill,
    /// Stop it gracefully.
    Stop,
}

impl Fault {
    fn describe(self, master: &str) -> String {
        match self {
            Fault::Link => format!("cut {master}'s link"),
            Fault::Kill => format!("kill {master}"),
            Fault::Stop => format!("stop {master}"),
        }
    }
}

#[derive(Serialize)]
struct Details {
    master: String,
    /// The lb that answered the clients once the master was gone.
    served_after: Option<String>,
    /// Whether the VIP came back to the master after its return.
    vip_returned: bool,
    /// Failed requests during that return.
    return_failed_requests: usize,
    /// The lbs holding the VIP at the end.
    vip_holders_after: Vec<String>,
}

/// Runs each of `faults` (default: `link`, `kill`, `stop` on an isolated stack, `kill`
/// and `stop` on a loopback one).
pub(super) fn run(ctx: &Ctx, faults: Option<Vec<Fault>>) -> anyhow::Result<Vec<Figures>> {
    let faults = faults.unwrap_or_else(|| {
        if ctx.isolated() {
            vec![Fault::Link, Fault::Kill, Fault::Stop]
        } else {
            vec![Fault::Kill, Fault::Stop]
        }
    });
    if faults.contains(&Fault::Link) && !ctx.isolated() {
        bail!(
            "the link fault needs an isolated stack (the VIP on an interface): start one with `hastack up --isolated`, or run --faults kill,stop"
        );
    }
    let mut rows = Vec::new();
    for fault in faults {
        // A fault that cannot run to its end is a failed row; the next still runs.
        rows.push(one(ctx, fault).unwrap_or_else(|e| {
            ctx.say(format!("lb-failover: {e:#}"));
            let mut f = Figures::failed("lb-failover", &e);
            f.fault = format!("{fault:?}").to_lowercase();
            f
        }));
    }
    Ok(rows)
}

fn one(ctx: &Ctx, fault: Fault) -> anyhow::Result<Figures> {
    let st = ctx.status()?;
    let holders = vip_holders(ctx, &st);
    let [master] = holders.as_slice() else {
        bail!("the VIP should be on exactly one lb before the drill, it is on {holders:?}");
    };
    let master = master.clone();
    let ns = st
        .nodes
        .iter()
        .find(|n| n.name == master)
        .and_then(|n| n.netns.clone());
    ctx.say(format!(
        "lb-failover: {} under traffic",
        fault.describe(&master)
    ));
    let load = ctx.load("lb-failover")?;
    if !load.wait_steady(Instant::now(), Duration::from_secs(1), WAIT, |_| true) {
        let _ = load.finish();
        bail!(
            "the site does not answer the clients steadily through {}",
            ctx.vip
        );
    }
    let t0 = Instant::now();
    match fault {
        Fault::Link => link(ns.as_deref().context("the master's namespace")?, false)?,
        Fault::Kill => drop(ctx.order("kill", &master)?),
        Fault::Stop => drop(ctx.order("stop", &master)?),
    }
    let other = |lb: &str| lb != master;
    let took_over = load.wait_steady(t0, Duration::from_secs(1), WAIT, other);
    let served_after = load
        .since(t0)
        .iter()
        .rev()
        .find(|s| s.ok)
        .and_then(|s| s.lb().map(str::to_string));
    // The master comes back and, with a higher priority, takes the VIP again.
    let t1 = Instant::now();
    let back = match fault {
        Fault::Link => link(ns.as_deref().context("the master's namespace")?, true),
        _ => ctx.order("start", &master).map(drop),
    };
    let returned =
        back.is_ok() && load.wait_steady(t1, Duration::from_secs(1), WAIT, |lb| lb == master);
    let traffic = load.finish();
    let return_failed_requests = traffic
        .samples
        .iter()
        .filter(|s| s.at >= t1 && !s.ok)
        .count();
    let holders_after = vip_holders(ctx, &ctx.status()?);
    let mut f = Figures::of("lb-failover", fault.describe(&master), &traffic, t0, t1);
    if let Err(e) = &back {
        f.check(false, format!("bringing {master} back: {e:#}"));
    }
    f.check(
        took_over,
        format!("no other lb answered steadily within {WAIT:?}"),
    );
    f.check(
        returned,
        format!("the VIP did not return to {master} within {WAIT:?}"),
    );
    f.check(
        holders_after.len() == 1,
        format!("the VIP is on {holders_after:?} afterwards, not on one lb"),
    );
    Ok(f.done(Details {
        master,
        served_after,
        vip_returned: returned,
        return_failed_requests,
        vip_holders_after: holders_after,
    }))
}

/// The lb nodes holding the VIP now: on an isolated stack those whose namespace has
/// the address, on a loopback one those in VRRP state master.
fn vip_holders(ctx: &Ctx, status: &StatusReport) -> Vec<String> {
    status
        .nodes
        .iter()
        .filter(|n| n.role == Role::Lb.as_str())
        .filter(|n| match (&n.netns, &n.health) {
            (Some(ns), _) => addresses(ns).contains(&ctx.topo.vip),
            (None, Some(Health::Lb(h))) => h.vrrp == "master",
            (None, _) => false,
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
