//! The lb node's runtime control (HAProxy's admin-level stats socket): a Unix socket
//! at `<state_dir>/lb/NAME.sock`, in a directory only its owner may enter, one JSON
//! command per line and one JSON answer per line. The commands:
//!
//! - `show`: every web node as the lb sees it (health, operator state, weight, requests
//!   in flight);
//! - `state SERVER ready|drain|maint`: drain takes a server out for new clients (those
//!   stuck to it by the sticky cookie stay), maint takes it out entirely;
//! - `weight SERVER N`: a new weight until the next reload;
//! - `reload`: reads the topology file again and applies what changed (servers,
//!   weights, `[lb]` and `[http]` settings) without closing a listener or dropping a
//!   request; SIGHUP does the same. What cannot change without a restart is listed in
//!   the answer and left as it runs.
//!
//! The client side is `hastack lb ...` and `hastack reload` ([`send`]).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hastack_config::{Role, Topology};
use hastack_proxy::{AdminState, Pool, PoolOptions};
use hastack_runtime::conn_limits::ConnLimits;
use hastack_runtime::front_door::FrontDoor;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::net::UnixListener;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::rate::RateLimiter;

/// Reads the topology file again, as the node read it at start.
pub type Loader = Arc<dyn Fn() -> Result<Topology, String> + Send + Sync>;

/// A command for an lb node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Command {
    /// The web nodes as this lb sees them.
    Show,
    /// Puts a web node in an operator state (`ready`, `drain`, `maint`).
    State {
        /// The web node.
        server: String,
        /// `ready`, `drain` or `maint`.
        state: String,
    },
    /// Gives a web node a new weight.
    Weight {
        /// The web node.
        server: String,
        /// 0..=256.
        weight: u32,
    },
    /// Reads the topology file again and applies it.
    Reload,
}

/// An lb node's answer.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Answer {
    /// Whether the command was carried out.
    pub ok: bool,
    /// What went wrong.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What was done, one line per change.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<String>,
    /// Changes in the file that need a restart of the node, left as they run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub needs_restart: Vec<String>,
    /// The web nodes after the command.
    #[serde(default)]
    pub servers: Vec<hastack_status::health::Upstream>,
}

/// Why a control command could not be sent or answered.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// No lb node listens on the socket.
    #[error("{path}: {source} (is lb node `{node}` running with this state directory?)")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// The node.
        node: String,
        /// The error.
        source: std::io::Error,
    },
    /// The exchange broke.
    #[error("{path}: {source}")]
    Io {
        /// The socket.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The answer was not one.
    #[error("{path}: not an answer: {why}")]
    Answer {
        /// The socket.
        path: PathBuf,
        /// What was wrong.
        why: String,
    },
}

/// Where lb node `node` listens for commands.
pub fn socket_path(state_dir: &Path, node: &str) -> PathBuf {
    state_dir.join("lb").join(format!("{node}.sock"))
}

/// Sends `cmd` to lb node `node` of `state_dir` and waits for its answer (a reload
/// may take a moment: up to 30 s).
pub fn send(state_dir: &Path, node: &str, cmd: &Command) -> Result<Answer, ControlError> {
    let path = socket_path(state_dir, node);
    let io = |source| ControlError::Io {
        path: path.clone(),
        source,
    };
    let mut stream =
        std::os::unix::net::UnixStream::connect(&path).map_err(|source| ControlError::Connect {
            path: path.clone(),
            node: node.to_string(),
            source,
        })?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(io)?;
    let mut line = serde_json::to_string(cmd).map_err(|e| ControlError::Answer {
        path: path.clone(),
        why: e.to_string(),
    })?;
    line.push('\n');
    stream.write_all(line.as_bytes()).map_err(io)?;
    let mut answer = String::new();
    BufReader::new(&stream).read_line(&mut answer).map_err(io)?;
    serde_json::from_str(&answer).map_err(|e| ControlError::Answer {
        path: path.clone(),
        why: format!("{e}: {answer:?}"),
    })
}

/// Binds the control socket of `node`: its directory is created 0700 (so no other
/// user can reach the socket, whatever the socket's own mode while it is created),
/// and a stale socket of a previous run is replaced.
pub(crate) fn bind(state_dir: &Path, node: &str) -> std::io::Result<UnixListener> {
    let path = socket_path(state_dir, node);
    let dir = path.parent().unwrap_or(state_dir);
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    hastack_runtime::control_socket::bind(&path)
}

/// What a running lb may change without a restart, and how.
pub(crate) struct Live {
    pub(crate) name: String,
    pub(crate) pool: Arc<Pool>,
    pub(crate) proxy: Arc<hastack_proxy::Proxy>,
    pub(crate) door: Arc<FrontDoor>,
    pub(crate) limits: Arc<ConnLimits>,
    pub(crate) rate: Arc<RateLimiter>,
    /// The configuration in force.
    pub(crate) running: Mutex<Topology>,
    pub(crate) load: Option<Loader>,
}

impl Live {
    /// Carries out one command.
    pub(crate) fn handle(&self, cmd: Command) -> Answer {
        let result = match cmd {
            Command::Show => Ok((Vec::new(), Vec::new())),
            Command::State { server, state } => match AdminState::parse(&state) {
                None => Err(format!(
                    "`{state}` is not a server state: use ready, drain or maint"
                )),
                Some(to) => self
                    .pool
                    .set_admin(&server, to)
                    .map(|from| {
                        (
                            vec![format!("{server}: {} -> {}", from.as_str(), to.as_str())],
                            Vec::new(),
                        )
                    })
                    .map_err(|e| e.to_string()),
            },
            Command::Weight { server, weight } if weight > 256 => Err(format!(
                "weight {weight} for {server} is over 256, the most a server may have"
            )),
            Command::Weight { server, weight } => self
                .pool
                .set_weight(&server, weight)
                .map(|from| {
                    (
                        vec![format!("{server}: weight {from} -> {weight}")],
                        Vec::new(),
                    )
                })
                .map_err(|e| e.to_string()),
            Command::Reload => self.reload(),
        };
        let servers = self.pool.upstreams();
        match result {
            Ok((changes, needs_restart)) => Answer {
                ok: true,
                changes,
                needs_restart,
                servers,
                ..Answer::default()
            },
            Err(e) => Answer {
                ok: false,
                error: Some(e),
                servers,
                ..Answer::default()
            },
        }
    }

    /// Reads the topology file again and applies it: `(changes, needs_restart)`.
    /// A file that does not load changes nothing.
    pub(crate) fn reload(&self) -> Result<(Vec<String>, Vec<String>), String> {
        let Some(load) = &self.load else {
            return Err("this lb was started without a file to read again".into());
        };
        let applied = load()
            .map_err(|e| format!("the new configuration is not applied: {e}"))
            .and_then(|new| self.apply(new));
        match &applied {
            Ok((changes, needs_restart)) => {
                info!(
                    changes = changes.len(),
                    "configuration reloaded{}",
                    if changes.is_empty() {
                        ": nothing changed".to_string()
                    } else {
                        format!(": {}", changes.join("; "))
                    }
                );
                if !needs_restart.is_empty() {
                    warn!(
                        "these changes need a restart of {} and are not applied: {}",
                        self.name,
                        needs_restart.join("; ")
                    );
                }
            }
            Err(e) => warn!("reload refused: {e}"),
        }
        applied
    }

    /// Applies `new`, a loaded and checked topology.
    fn apply(&self, new: Topology) -> Result<(Vec<String>, Vec<String>), String> {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let (Some(me), Some(was)) = (new.node(&self.name), running.node(&self.name)) else {
            return Err(format!(
                "{} is not a node of the new file: stop it instead",
                self.name
            ));
        };
        if me.role != Role::Lb {
            return Err(format!("{} is no longer an lb in the new file", self.name));
        }
        let mut needs_restart = Vec::new();
        let mut differs = |what: &str, before: String, after: String| {
            if before != after {
                needs_restart.push(format!("{what}: {before} -> {after}"));
            }
        };
        let d = |v: &dyn std::fmt::Debug| format!("{v:?}");
        differs("this node's address", d(&was.address), d(&me.address));
        differs("this node's priority", d(&was.priority), d(&me.priority));
        differs("vip.address", d(&running.vip), d(&new.vip));
        differs("vip.port", d(&running.http_port), d(&new.http_port));
        differs("vip.https_port", d(&running.https_port), d(&new.https_port));
        differs(
            "mode",
            running.mode.as_str().to_string(),
            new.mode.as_str().to_string(),
        );
        differs("[ports]", d(&running.ports), d(&new.ports));
        differs("[vrrp]", d(&running.vrrp), d(&new.vrrp));
        differs("[tls]", d(&running.tls), d(&new.tls));
        differs("[health]", d(&running.health), d(&new.health));
        differs(
            "lb.front_proxies",
            d(&running.lb.front_proxies),
            d(&new.lb.front_proxies),
        );
        differs(
            "http.access_log",
            d(&running.http.access_log),
            d(&new.http.access_log),
        );
        differs(
            "lb.send_proxy",
            d(&running.lb.send_proxy),
            d(&new.lb.send_proxy),
        );
        let lbs = |t: &Topology| {
            t.tier(Role::Lb)
                .map(|n| format!("{}={}", n.name, n.address))
                .collect::<Vec<_>>()
                .join(",")
        };
        differs("the lb nodes", lbs(&running), lbs(&new));

        // The web nodes expect PROXY headers or not as they started: that stays.
        let opts = PoolOptions {
            send_proxy: running.lb.send_proxy,
            ..PoolOptions::for_lb(&new)
        };
        let mut changes = self.pool.update(&new.endpoints(Role::Web), opts);
        let (o, n) = (&running.lb, &new.lb);
        if (o.rate_limit, o.rate_burst) != (n.rate_limit, n.rate_burst) {
            changes.push(format!(
                "rate_limit/rate_burst: {}/{} -> {}/{}",
                o.rate_limit, o.rate_burst, n.rate_limit, n.rate_burst
            ));
        }
        self.rate.set(n.rate_limit, n.rate_burst);
        if (o.max_conn, o.max_conn_per_client) != (n.max_conn, n.max_conn_per_client) {
            changes.push(format!(
                "max_conn/max_conn_per_client: {}/{} -> {}/{}",
                o.max_conn, o.max_conn_per_client, n.max_conn, n.max_conn_per_client
            ));
        }
        self.limits.set(n.max_conn, n.max_conn_per_client);
        if d(&running.http) != d(&new.http) {
            changes.push(format!(
                "[http]: {:?} -> {:?} (for new connections)",
                running.http, new.http
            ));
        }
        self.door.set(&new.http);
        self.proxy.set_http(&new.http);
        // What needs a restart keeps its running value in what is remembered, so the
        // next reload reports it again until the node restarts.
        let mut kept = new;
        kept.vip = running.vip;
        kept.http_port = running.http_port;
        kept.https_port = running.https_port;
        kept.mode = running.mode;
        kept.ports = running.ports;
        kept.vrrp = running.vrrp.clone();
        kept.tls = running.tls.clone();
        kept.health = running.health;
        kept.lb.front_proxies = running.lb.front_proxies.clone();
        kept.lb.send_proxy = running.lb.send_proxy;
        kept.http.access_log = running.http.access_log;
        kept.nodes.retain(|n| n.role != Role::Lb);
        kept.nodes
            .extend(running.nodes.iter().filter(|n| n.role == Role::Lb).cloned());
        *running = kept;
        Ok((changes, needs_restart))
    }
}

/// Answers commands on `listener` until `shutdown`.
pub(crate) async fn serve(
    listener: UnixListener,
    live: Arc<Live>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let stream = tokio::select! {
            _ = shutdown.changed() => return,
            accepted = listener.accept() => match accepted {
                Ok((s, _)) => s,
                Err(e) => {
                    warn!(error = %e, "control socket: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if let Err(why) = hastack_runtime::control_socket::admit(&stream) {
            warn!(%why, "control connection refused");
            continue;
        }
        let live = live.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut lines = tokio::io::BufReader::new(read).lines();
            while let Ok(Ok(Some(line))) =
                tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await
            {
                let answer = match serde_json::from_str::<Command>(&line) {
                    Ok(cmd) => {
                        let live = live.clone();
                        // A reload reads files and may take a moment: off the
                        // request-serving thread.
                        tokio::task::spawn_blocking(move || live.handle(cmd))
                            .await
                            .unwrap_or_else(|e| Answer {
                                error: Some(format!("the command failed: {e}")),
                                ..Answer::default()
                            })
                    }
                    Err(e) => Answer {
                        error: Some(format!("not a command: {e}")),
                        ..Answer::default()
                    },
                };
                let mut out = serde_json::to_string(&answer).unwrap_or_else(|_| "{}".into());
                out.push('\n');
                if write.write_all(out.as_bytes()).await.is_err() {
                    break;
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_one_json_object_each() {
        let c = Command::State {
            server: "web1".into(),
            state: "drain".into(),
        };
        let line = serde_json::to_string(&c).expect("json");
        assert_eq!(line, r#"{"cmd":"state","server":"web1","state":"drain"}"#);
        assert_eq!(serde_json::from_str::<Command>(&line).expect("parse"), c);
        assert_eq!(
            serde_json::from_str::<Command>(r#"{"cmd":"reload"}"#).expect("parse"),
            Command::Reload
        );
        assert!(serde_json::from_str::<Command>(r#"{"cmd":"format_disk"}"#).is_err());
    }
}
