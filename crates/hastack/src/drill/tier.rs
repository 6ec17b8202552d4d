//! `drill web-failover` and `drill app-failover`: a node of the tier is SIGKILLed under
//! traffic (a crash, not a drain), stays down for a few seconds, and is started again.
//! With the team's own app (`[app]`), `app-failover` first SIGKILLs the app's process
//! on a node ([`app_process`]): its node must start it again, and the web tier route
//! around it meanwhile.
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
    let load = steady_load(ctx, drill)?;
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

#[derive(Serialize)]
struct ProcessDetails {
    node: String,
    pid: u32,
    /// From the kill to the app's first answer to its health path again.
    restarted_after_s: Option<f64>,
}

/// The app's process on the first healthy app node SIGKILLed under traffic; its node
/// starts it again with back-off.
pub(super) fn app_process(ctx: &Ctx) -> anyhow::Result<Figures> {
    let drill = "app-failover";
    let process_of = |node: &str| -> anyhow::Result<Option<hastack_status::health::AppProcess>> {
        let st = ctx.status()?;
        Ok(st
            .nodes
            .into_iter()
            .find(|n| n.name == node)
            .and_then(|n| match n.health {
                Some(hastack_status::Health::App(h)) => h.process,
                _ => None,
            }))
    };
    let st = ctx.status()?;
    let victim = st
        .nodes
        .iter()
        .find(|n| n.role == "app" && n.healthy == Some(true))
        .map(|n| n.name.clone())
        .ok_or_else(|| anyhow::anyhow!("{drill} needs a healthy app node"))?;
    let before = process_of(&victim)?
        .ok_or_else(|| anyhow::anyhow!("{victim} runs no app process of the team's"))?;
    let pid = before
        .pid
        .ok_or_else(|| anyhow::anyhow!("{victim}'s app process has no pid ({})", before.state))?;
    let load = steady_load(ctx, drill)?;
    ctx.say(format!(
        "{drill}: killing {victim}'s app process {pid} (SIGKILL) under traffic"
    ));
    let t0 = Instant::now();
    let raw = i32::try_from(pid).map_err(|_| anyhow::anyhow!("pid {pid}"))?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(raw),
        nix::sys::signal::Signal::SIGKILL,
    )
    .map_err(|e| anyhow::anyhow!("killing {victim}'s app process {pid}: {e}"))?;
    let mut restarted = None;
    while t0.elapsed() < WAIT {
        if let Some(p) = process_of(&victim)?
            && p.state == "ready"
            && p.pid != Some(pid)
        {
            restarted = Some(t0.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let t1 = Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    let traffic = load.finish();
    let mut f = Figures::of(
        drill,
        format!("kill {victim}'s app process"),
        &traffic,
        t0,
        t1,
    );
    f.check(
        restarted.is_some(),
        format!("{victim} did not start its app again within {WAIT:?}"),
    );
    Ok(f.done(ProcessDetails {
        node: victim,
        pid,
        restarted_after_s: restarted.map(|d| d.as_secs_f64()),
    }))
}

/// The users' traffic, once the site has answered it steadily for a second.
fn steady_load(ctx: &Ctx, drill: &str) -> anyhow::Result<super::load::Load> {
    let load = ctx.load(drill)?;
    if !load.wait_steady(Instant::now(), Duration::from_secs(1), WAIT, |_| true) {
        let _ = load.finish();
        bail!(
            "the site does not answer steadily through {} before the drill",
            ctx.vip
        );
    }
    Ok(load)
}
