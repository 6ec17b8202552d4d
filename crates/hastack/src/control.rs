//! The control socket of a running `hastack up` (`<state_dir>/control.sock`): one JSON
//! request per line, one JSON response per line. The client side is the `status`,
//! `stop`, `start`, `kill` and `down` commands.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use hastack_status::Health;
use serde::{Deserialize, Serialize};

use crate::ConfigArg;

/// A command for the supervisor.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Request {
    /// `status`, `stop`, `start`, `kill` or `down`.
    pub(crate) cmd: String,
    /// The node, for `stop`, `start`, `kill` and `rebuild`.
    #[serde(default)]
    pub(crate) node: String,
    /// For `rebuild`: the db node to copy from (default: a healthy replica); for
    /// `deploy`: the directory of the app's new version (default: `[app] dir`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) source: Option<String>,
}

/// The supervisor's answer.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Response {
    /// Whether the command was carried out.
    pub(crate) ok: bool,
    /// What went wrong.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) error: Option<String>,
    /// What was done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) message: Option<String>,
    /// For `status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) status: Option<StatusReport>,
}

/// The stack as the supervisor sees it (the one model `status`, `top`, the dashboard
/// and the drills read).
pub(crate) type StatusReport = hastack_status::StackStatus;
/// One node of it.
pub(crate) type NodeStatus = hastack_status::NodeStatus;

/// The control socket of a state directory.
pub(crate) fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join("control.sock")
}

/// Sends one request to the supervisor of `state_dir`.
pub(crate) fn send(state_dir: &Path, req: &Request) -> anyhow::Result<Response> {
    let path = socket_path(state_dir);
    let stream = UnixStream::connect(&path).with_context(|| {
        format!(
            "no running stack: cannot connect to {} (start one with `hastack up`)",
            path.display()
        )
    })?;
    // `start` and `down` wait for nodes; the supervisor has its own deadlines. A deploy
    // runs a release (up to 10 minutes) and then restarts every app node.
    let wait = if req.cmd == "deploy" { 3600 } else { 300 };
    stream.set_read_timeout(Some(Duration::from_secs(wait)))?;
    let mut line = serde_json::to_string(req)?;
    line.push('\n');
    (&stream).write_all(line.as_bytes())?;
    let mut answer = String::new();
    BufReader::new(&stream)
        .read_line(&mut answer)
        .context("reading the supervisor's answer")?;
    serde_json::from_str(&answer)
        .with_context(|| format!("unreadable answer from the supervisor: {answer:?}"))
}

/// The state directory of the stack `config` names.
pub(crate) fn target(config: &ConfigArg) -> anyhow::Result<PathBuf> {
    let topo = crate::load(config)?;
    crate::state_dir(&topo)
}

/// `stop`, `start`, `kill`, `down`.
pub(crate) fn simple(config: &ConfigArg, cmd: &str, node: &str) -> anyhow::Result<ExitCode> {
    command(config, cmd, node, None)
}

/// Sends one command and prints the supervisor's message (or fails with its error).
fn command(
    config: &ConfigArg,
    cmd: &str,
    node: &str,
    source: Option<String>,
) -> anyhow::Result<ExitCode> {
    let message = order(&target(config)?, cmd, node, source)?;
    println!("{}", if message.is_empty() { "ok" } else { &message });
    Ok(ExitCode::SUCCESS)
}

/// Has the supervisor of `state_dir` carry out `cmd` on `node`: its message, or its
/// error.
pub(crate) fn order(
    state_dir: &Path,
    cmd: &str,
    node: &str,
    source: Option<String>,
) -> anyhow::Result<String> {
    let resp = send(
        state_dir,
        &Request {
            cmd: cmd.into(),
            node: node.into(),
            source,
        },
    )?;
    if resp.ok {
        Ok(resp.message.unwrap_or_default())
    } else {
        anyhow::bail!("{}", resp.error.unwrap_or_else(|| "failed".into()))
    }
}

/// `down`: stops the running stack; with none running, removes the network namespaces
/// a crashed isolated stack of this state directory left behind.
pub(crate) fn down(config: &ConfigArg) -> anyhow::Result<ExitCode> {
    let state_dir = target(config)?;
    if UnixStream::connect(socket_path(&state_dir)).is_err() {
        let net = crate::netns::Network::of(&state_dir);
        if net.exists() {
            let n = net.destroy();
            let _ = std::fs::remove_file(crate::isolated_marker(&state_dir));
            println!("no running stack; removed {n} network namespaces left by a crashed one");
            return Ok(ExitCode::SUCCESS);
        }
    }
    command(config, "down", "", None)
}

/// Whether a supervisor (`hastack up`) runs the stack `config` names.
pub(crate) fn running(config: &ConfigArg) -> bool {
    target(config).is_ok_and(|dir| UnixStream::connect(socket_path(&dir)).is_ok())
}

/// `reload` under a supervisor: scale the web and app tiers to the file.
pub(crate) fn reload(config: &ConfigArg) -> anyhow::Result<ExitCode> {
    println!("hastack: reloading the topology (new nodes start, removed ones drain)…");
    command(config, "reload", "", None)
}

/// `deploy [--dir DIR]`.
pub(crate) fn deploy(config: &ConfigArg, dir: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let dir = match dir {
        Some(d) => Some(
            std::fs::canonicalize(&d)
                .with_context(|| format!("--dir {}", d.display()))?
                .display()
                .to_string(),
        ),
        None => None,
    };
    println!(
        "hastack: deploying (release once, then one app node at a time; progress in the output of `hastack up`)…"
    );
    command(config, "deploy", "", dir)
}

/// `db rebuild NODE [--from SOURCE]`.
pub(crate) fn rebuild(
    config: &ConfigArg,
    node: &str,
    source: Option<String>,
) -> anyhow::Result<ExitCode> {
    println!(
        "hastack: re-seeding {node} (it is stopped, copied from a running node with mariadb-backup, and started again)…"
    );
    command(config, "rebuild", node, source)
}

/// The picture of the stack whose supervisor serves `state_dir`.
pub(crate) fn fetch_status(state_dir: &Path) -> anyhow::Result<StatusReport> {
    let resp = send(
        state_dir,
        &Request {
            cmd: "status".into(),
            node: String::new(),
            source: None,
        },
    )?;
    resp.status
        .ok_or_else(|| anyhow::anyhow!("{}", resp.error.unwrap_or_else(|| "no status".into())))
}

/// `status [--json]`.
pub(crate) fn status(config: &ConfigArg, json: bool) -> anyhow::Result<ExitCode> {
    let report = fetch_status(&target(config)?)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render_table(&report));
    }
    Ok(ExitCode::SUCCESS)
}

/// What a node's health says in one word or two.
fn detail(n: &NodeStatus) -> String {
    n.health.as_ref().map(Health::summary).unwrap_or_default()
}

/// The node table.
pub(crate) fn render_table(r: &StatusReport) -> String {
    let mut out = format!(
        "{:<8} {:<4} {:<15} {:<8} {:<16} {}\n",
        "NODE", "ROLE", "ADDRESS", "PID", "STATE", "HEALTH"
    );
    for n in &r.nodes {
        let health = n.health_word();
        let d = detail(n);
        out.push_str(&format!(
            "{:<8} {:<4} {:<15} {:<8} {:<16} {}{}\n",
            n.name,
            n.role,
            n.address,
            n.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
            n.state,
            health,
            if d.is_empty() {
                String::new()
            } else {
                format!(" ({d})")
            }
        ));
    }
    out.push_str(&format!(
        "\nsite: {} → {}   database: {}\n",
        r.site, r.url, r.db_engine
    ));
    if let Some(https) = &r.https_url {
        let port = https
            .rsplit(':')
            .next()
            .map(|p| p.trim_end_matches('/'))
            .unwrap_or("443");
        out.push_str(&format!(
            "https: {https}   e.g. curl --cacert {} --resolve {}:{port}:{} {https}\n",
            r.ca.as_deref().unwrap_or("ca.crt"),
            r.site,
            r.vip
        ));
    }
    if let Some(ns) = &r.client_netns {
        out.push_str(&format!(
            "isolated: every node in its own network namespace; from the client ({ns}): hastack exec client -- curl -s {}\n",
            r.url
        ));
    }
    if let Some(f) = r.last_failover() {
        let when = utc_time(f.at_unix_ms).unwrap_or_default();
        out.push_str(&format!(
            "last failover: {} → {} at {when} (epoch {}; lease expiry seen after {} ms; {})\n",
            f.from, f.to, f.epoch, f.detected_after_ms, f.fencing,
        ));
    }
    out
}

/// `YYYY-MM-DD HH:MM:SS UTC` of Unix milliseconds.
fn utc_time(ms: i64) -> Option<String> {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|d| d.format("%Y-%m-%d %H:%M:%S UTC").to_string())
}
