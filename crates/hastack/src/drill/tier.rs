//! `drill web-failover` and `drill app-failover`: a node of the tier is SIGKILLed under
//! traffic (a crash, not a drain), stays down for a few seconds, and is started again.
//!
//! The tier above must route around it (the lb's or web node's health checks and
//! retries of requests that are safe to retry) and take it back once it answers. The
//! drill's own check: after its start the node serves requests again (its name is in
//! the `X-Served-By` of an answer).

use std::time::{Duration, Instant};

use anyhow::bail;
use serde::Serialize;

use hastack_config::Role;

use super::{Ctx, Figures};

/// How long the node stays down.
const DOWN: Duration = Duration::from_secs(3);
/// How long the drill waits for the site, and for the node to serve again.
const WAIT: Duration = Duration::from_secs(20);

#[derive(Serialize)]
struct Details {
    node: String,
    /// From its start command to its first answer seen by a client.
    back_in_rotation_after_s: Option<f64>,
    /// The tier's nodes that served while it was down.
    served_while_down_by: Vec<String>,
}

/// Runs the drill on the first healthy node of `role` (the web or app tier).
pub(super) fn run(ctx: &Ctx, role: Role) -> anyhow::Result<Figures> {
    let drill = match role {
        Role::Web => "web-failover",
        Role::App => "app-failover",
        other => bail!("no tier drill for the {other} tier"),
    };
    let st = ctx.status()?;
    let healthy: Vec<String> = st
        .nodes
        .iter()
        .filter(|n| n.role == role.as_str() && n.healthy == Some(true))
        .map(|n| n.name.clone())
        .collect();
    let [victim, _, ..] = healthy.as_slice() else {
        bail!(
            "{drill} needs two healthy {role} nodes, the stack has {healthy:?}; see `hastack status`"
        );
    };
    let victim = victim.clone();
    let tier: Vec<String> = st
        .nodes
        .iter()
        .filter(|n| n.role == role.as_str())
        .map(|n| n.name.clone())
        .collect();
    let load = ctx.load(drill)?;
    if !load.wait_steady(Instant::now(), Duration::from_secs(1), WAIT, |_| true) {
        let _ = load.finish();
        bail!(
            "the site does not answer steadily through {} before the drill",
            ctx.vip
        );
    }
    ctx.say(format!("{drill}: killing {victim} (SIGKILL) under traffic"));
    let t0 = Instant::now();
    ctx.order("kill", &victim)?;
    let dead = Instant::now();
    std::thread::sleep(DOWN);
    let t1 = Instant::now();
    ctx.say(format!("{drill}: starting {victim} again"));
    let started = ctx.order("start", &victim);
    // Back in rotation: a client's answer passed through it.
    let mine = |s: &super::load::Sample| {
        s.ok && s
            .served_by
            .as_deref()
            .is_some_and(|b| b.split(',').any(|n| n.trim() == victim))
    };
    let mut back = None;
    while started.is_ok() && t1.elapsed() < WAIT {
        if let Some(s) = load.since(t1).iter().find(|s| mine(s)) {
            back = Some(s.at.saturating_duration_since(t1));
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // A second of traffic after its return.
    std::thread::sleep(Duration::from_secs(1));
    let traffic = load.finish();
    let mut served_while_down_by: Vec<String> = traffic
        .samples
        .iter()
        .filter(|s| s.ok && s.at >= dead && s.at < t1)
        .filter_map(|s| {
            s.served_by
                .as_deref()?
                .split(',')
                .map(str::trim)
                .find(|n| tier.iter().any(|t| t == n))
                .map(str::to_string)
        })
        .collect();
    served_while_down_by.sort();
    served_while_down_by.dedup();
    let mut f = Figures::of(drill, format!("kill {victim}"), &traffic, t0, t1);
    if let Err(e) = &started {
        f.check(false, format!("{victim} did not start again: {e}"));
    }
    f.check(
        back.is_some(),
        format!("{victim} served no request within {WAIT:?} of its start"),
    );
    Ok(f.done(Details {
        node: victim,
        back_in_rotation_after_s: back.map(|d| d.as_secs_f64()),
        served_while_down_by,
    }))
}
