//! The control socket of a running `hastack up` (`<state_dir>/control.sock`): one JSON
//! request per line, one JSON response per line. The client side is the `status`,
//! `stop`, `start`, `kill` and `down` commands.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
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
    /// For `rebuild`: the db node to copy from (default: a healthy replica).
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

/// The stack as the supervisor sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StatusReport {
    /// Site name.
    pub(crate) site: String,
    /// Site URL through the VIP (in isolated mode: as seen from the client namespace).
    pub(crate) url: String,
    /// The site's HTTPS URL (by name; resolve the name to the VIP), when it has HTTPS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) https_url: Option<String>,
    /// The internal CA's certificate, which HTTPS clients of the stack trust.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) ca: Option<String>,
    /// The VIP's address (for `curl --resolve NAME:PORT:VIP`).
    #[serde(default)]
    pub(crate) vip: String,
    /// `loopback` or `isolated`.
    #[serde(default)]
    pub(crate) mode: String,
    /// Isolated mode: the client's network namespace (`hastack exec client -- CMD`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) client_netns: Option<String>,
    /// State directory.
    pub(crate) state_dir: String,
    /// `mariadb` or `sqlite`.
    pub(crate) db_engine: String,
    /// Every node.
    pub(crate) nodes: Vec<NodeStatus>,
}

/// One node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct NodeStatus {
    /// Name.
    pub(crate) name: String,
    /// Tier.
    pub(crate) role: String,
    /// Address.
    pub(crate) address: String,
    /// Isolated mode: the node's network namespace (`hastack exec NODE -- CMD`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) netns: Option<String>,
    /// `running`, `starting`, `stopped`, `killed`, `exited: …`, `not started`.
    pub(crate) state: String,
    /// Process id while it runs.
    pub(crate) pid: Option<u32>,
    /// `/healthz` of the node.
    pub(crate) admin: String,
    /// Whether `/healthz` answered 200.
    pub(crate) healthy: Option<bool>,
    /// The `/healthz` document.
    pub(crate) health: Option<serde_json::Value>,
}

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
    // `start` and `down` wait for nodes; the supervisor has its own deadlines.
    stream.set_read_timeout(Some(Duration::from_secs(300)))?;
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

fn target(config: &ConfigArg) -> anyhow::Result<PathBuf> {
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
    let resp = send(
        &target(config)?,
        &Request {
            cmd: cmd.into(),
            node: node.into(),
            source,
        },
    )?;
    if resp.ok {
        println!("{}", resp.message.unwrap_or_else(|| "ok".into()));
        Ok(ExitCode::SUCCESS)
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

/// `status [--json]`.
pub(crate) fn status(config: &ConfigArg, json: bool) -> anyhow::Result<ExitCode> {
    let resp = send(
        &target(config)?,
        &Request {
            cmd: "status".into(),
            node: String::new(),
            source: None,
        },
    )?;
    let Some(report) = resp.status else {
        anyhow::bail!("{}", resp.error.unwrap_or_else(|| "no status".into()));
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render_table(&report));
    }
    Ok(ExitCode::SUCCESS)
}

/// What a node's health says in one word or two.
fn detail(n: &NodeStatus) -> String {
    let Some(h) = &n.health else {
        return String::new();
    };
    let field = |k: &str| h.get(k).and_then(|v| v.as_str()).unwrap_or("");
    match n.role.as_str() {
        "lb" => format!("vrrp {}", field("vrrp")),
        "db" => {
            let role = field("db_role");
            let mut d = match h
                .get("replication")
                .and_then(|r| r.get("sql_running"))
                .and_then(|v| v.as_str())
            {
                Some(sql) if role == "replica" => format!("{role}, replicating: {sql}"),
                _ => role.to_string(),
            };
            if role == "primary" {
                let semi = h.get("semi_sync").and_then(|v| v.as_str()).unwrap_or("OFF");
                let clients = h
                    .get("semi_sync_clients")
                    .and_then(|v| v.as_u64())
                    .unwrap_or(0);
                d.push_str(&format!(", semi-sync {semi} ({clients} acking)"));
            }
            if let Some(lag) = h
                .get("replication")
                .and_then(|r| r.get("seconds_behind_master"))
                .and_then(|v| v.as_u64())
                .filter(|l| *l > 0)
            {
                d.push_str(&format!(", {lag} s behind"));
            }
            let pos = field("gtid_current_pos");
            if !pos.is_empty() {
                d.push_str(&format!(", gtid {pos}"));
            }
            d
        }
        "app" => {
            let can = |k: &str| h.get(k).and_then(|v| v.as_bool()).unwrap_or(false);
            format!(
                "db {}, reads {}, writes {}",
                field("db"),
                if can("can_read") { "ok" } else { "NO" },
                if can("can_write") { "ok" } else { "NO" }
            )
        }
        _ => String::new(),
    }
}

/// The node table.
pub(crate) fn render_table(r: &StatusReport) -> String {
    let mut out = format!(
        "{:<8} {:<4} {:<15} {:<8} {:<16} {}\n",
        "NODE", "ROLE", "ADDRESS", "PID", "STATE", "HEALTH"
    );
    for n in &r.nodes {
        let health = match n.healthy {
            Some(true) => "ok",
            Some(false) => "failing",
            None => "-",
        };
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
    if let Some(f) = last_failover(r) {
        let field = |k: &str| {
            f.get(k)
                .map(|v| v.to_string().trim_matches('"').to_string())
                .unwrap_or_default()
        };
        let when = f
            .get("at_unix_ms")
            .and_then(|v| v.as_i64())
            .and_then(utc_time)
            .unwrap_or_default();
        out.push_str(&format!(
            "last failover: {} → {} at {when} (epoch {}; lease expiry seen after {} ms; {})\n",
            field("from"),
            field("to"),
            field("epoch"),
            field("detected_after_ms"),
            field("fencing"),
        ));
    }
    out
}

/// The most recent failover any db node reports.
fn last_failover(r: &StatusReport) -> Option<serde_json::Value> {
    r.nodes
        .iter()
        .filter_map(|n| {
            n.health
                .as_ref()?
                .get("cluster")?
                .get("last_failover")
                .cloned()
        })
        .filter(|f| !f.is_null())
        .max_by_key(|f| f.get("epoch").and_then(|e| e.as_u64()).unwrap_or(0))
}

/// `YYYY-MM-DD HH:MM:SS UTC` of Unix milliseconds.
fn utc_time(ms: i64) -> Option<String> {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|d| d.format("%Y-%m-%d %H:%M:%S UTC").to_string())
}
