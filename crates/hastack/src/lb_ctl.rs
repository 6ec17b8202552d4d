//! `hastack lb show|drain|ready|maint|weight` and `hastack reload`: the client side of
//! the lb nodes' control sockets ([`hastack_lb::control`]). Each command goes to every
//! lb node of the topology that runs with this state directory (or to the one named
//! with `--lb`), as HAProxy's runtime API goes to each HAProxy.

use std::process::ExitCode;

use anyhow::Context;
use hastack_config::Role;
use hastack_lb::control::{Answer, Command, send};

use crate::ConfigArg;

/// Sends `cmd` to the lb nodes and prints their answers; fails when one failed.
pub(crate) fn run(
    config: &ConfigArg,
    lb: Option<&str>,
    cmd: Command,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let topo = crate::load(config)?;
    let state_dir = crate::state_dir(&topo)?;
    let nodes: Vec<String> = match lb {
        Some(name) => {
            let n = topo
                .node(name)
                .filter(|n| n.role == Role::Lb)
                .with_context(|| format!("no lb node `{name}` in {}", topo.source.display()))?;
            vec![n.name.clone()]
        }
        None => topo.tier(Role::Lb).map(|n| n.name.clone()).collect(),
    };
    let mut failed = false;
    let mut answers = serde_json::Map::new();
    for node in &nodes {
        match send(&state_dir, node, &cmd) {
            Ok(answer) => {
                failed |= !answer.ok;
                if json {
                    answers.insert(node.clone(), serde_json::to_value(&answer)?);
                } else {
                    print!("{}", render(node, &cmd, &answer));
                }
            }
            Err(e) => {
                failed = true;
                if json {
                    answers.insert(
                        node.clone(),
                        serde_json::json!({ "ok": false, "error": e.to_string() }),
                    );
                } else {
                    println!("{node}: error: {e}");
                }
            }
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&answers)?);
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// One lb's answer, for a terminal.
pub(crate) fn render(node: &str, cmd: &Command, a: &Answer) -> String {
    let mut out = String::new();
    match (&a.error, cmd) {
        (Some(e), _) => out.push_str(&format!("{node}: error: {e}\n")),
        (None, Command::Reload) if a.changes.is_empty() => {
            out.push_str(&format!("{node}: reloaded; nothing changed\n"));
        }
        (None, Command::Show) => {}
        (None, _) => {
            out.push_str(&format!("{node}: done\n"));
        }
    }
    for c in &a.changes {
        out.push_str(&format!("  {c}\n"));
    }
    for c in &a.needs_restart {
        out.push_str(&format!("  not applied (restart {node} for it): {c}\n"));
    }
    if matches!(cmd, Command::Show) {
        out.push_str(&format!(
            "{node}:\n  {:<12} {:<22} {:<8} {:<6} {:>6} {:>9}\n",
            "server", "address", "health", "state", "weight", "in flight"
        ));
        for s in &a.servers {
            out.push_str(&format!(
                "  {:<12} {:<22} {:<8} {:<6} {:>6} {:>9}\n",
                s.name,
                s.addr,
                if s.healthy { "UP" } else { "DOWN" },
                s.state,
                s.weight,
                s.in_flight
            ));
        }
    }
    out
}
