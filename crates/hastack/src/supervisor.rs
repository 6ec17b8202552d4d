//! `hastack up`: runs every node of the topology as a child process, tier by tier
//! (db, app, web, lb), shows progress until each answers `/healthz`, then serves the
//! control socket until Ctrl-C, SIGTERM or `hastack down`, and stops the tiers in the
//! opposite order (lb, web, app, db).
//!
//! Architecture invariants:
//! - No child outlives the supervisor: children are spawned from the main thread of a
//!   current-thread runtime with `PR_SET_PDEATHSIG` (SIGTERM), so even a SIGKILLed
//!   supervisor takes them down; each db node in turn takes its `mariadbd`.
//! - A node that dies stays down and is shown so; only `hastack start` restarts it.
//! - Every wait has a deadline.
//! - In isolated mode every node runs in its own network namespace ([`crate::netns`]),
//!   created before the first node starts and removed after the last one stopped (and,
//!   if the supervisor crashed, by the next `up` or `down`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::process::Command;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::Notify;
use tokio::task::JoinSet;

use hastack_config::{Node, Role, Topology};

use crate::control::{self, NodeStatus, Request, Response, StatusReport};
use crate::deadlines;
use crate::http_get;
use crate::logs;
use crate::netns::{self, Network};

#[derive(Debug, Clone, PartialEq, Eq)]
enum NodeState {
    NotStarted,
    Starting,
    Running,
    Stopping,
    Stopped,
    Killed,
    Exited(String),
}

impl NodeState {
    fn label(&self) -> String {
        match self {
            NodeState::NotStarted => "not started".into(),
            NodeState::Starting => "starting".into(),
            NodeState::Running => "running".into(),
            NodeState::Stopping => "stopping".into(),
            NodeState::Stopped => "stopped".into(),
            NodeState::Killed => "killed".into(),
            NodeState::Exited(why) => format!("exited ({why})"),
        }
    }

    fn alive(&self) -> bool {
        matches!(
            self,
            NodeState::Starting | NodeState::Running | NodeState::Stopping
        )
    }
}

struct Slot {
    node: Node,
    state: NodeState,
    pid: Option<u32>,
    generation: u64,
}

struct Supervisor {
    topo: Topology,
    exe: PathBuf,
    config_path: PathBuf,
    state_dir: PathBuf,
    sqlite: Option<PathBuf>,
    /// Isolated mode: the nodes' network namespaces.
    network: Option<Network>,
    slots: Mutex<Vec<Slot>>,
    /// Signalled whenever a child exits.
    exited: Notify,
    /// Signalled when `down` has stopped everything.
    done: Notify,
    /// Set once every tier is up; until then only `status` is served.
    ready: AtomicBool,
    /// The dashboard's URL, once it listens.
    dashboard_url: std::sync::OnceLock<String>,
}

/// Runs `hastack up` (`isolated`: `--isolated`).
pub(crate) fn up(config: &Option<PathBuf>, isolated: bool) -> anyhow::Result<ExitCode> {
    let mut topo = crate::load(&crate::ConfigArg {
        config: config.clone(),
    })?;
    if topo.mode == hastack_config::Mode::Hosts {
        anyhow::bail!(
            "{} is in mode \"hosts\": each node runs on its own server with `hastack node NAME --config FILE` (docs/deploy.md); `hastack up` runs a topology on this machine (mode \"loopback\", or --isolated)",
            topo.source.display()
        );
    }
    if isolated || topo.mode == hastack_config::Mode::Isolated {
        netns::check_prerequisites()?;
        topo = topo.isolated().map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let state_dir = crate::state_dir(&topo)?;
    std::fs::create_dir_all(state_dir.join("logs"))
        .with_context(|| format!("creating {}", state_dir.display()))?;
    let sock = control::socket_path(&state_dir);
    if sock.as_os_str().len() > 107 {
        anyhow::bail!(
            "the control socket path {} is too long for a unix socket; use a shorter state_dir",
            sock.display()
        );
    }
    if std::os::unix::net::UnixStream::connect(&sock).is_ok() {
        anyhow::bail!(
            "a stack is already running with state in {} (see `hastack status`, stop it with `hastack down`)",
            state_dir.display()
        );
    }
    let _ = std::fs::remove_file(&sock);
    let network = if topo.mode == hastack_config::Mode::Isolated {
        let net = Network::of(&state_dir);
        println!(
            "hastack: isolated mode — a network namespace per node on {} (the client's is {}), firewalled per tier",
            topo.subnet,
            net.namespace("client")
        );
        net.create(&topo)?;
        std::fs::write(crate::isolated_marker(&state_dir), net.namespace("client"))
            .context("writing the isolated-mode marker")?;
        Some(net)
    } else {
        let _ = std::fs::remove_file(crate::isolated_marker(&state_dir));
        None
    };

    if topo.tls.internal || topo.https_port.is_some() {
        // Every certificate before any node starts (nodes only reload them); the
        // topology's own site certificates are checked here, with a clear error.
        let mut t = topo.clone();
        t.state_dir = state_dir.clone();
        let issued = hastack_tls::pki::Pki::new(&state_dir)
            .ensure(&hastack_tls::node::identities(&t), false)
            .context("preparing the internal CA's certificates")?;
        if !issued.is_empty() {
            println!(
                "hastack: internal CA {} issued {} certificate(s)",
                hastack_tls::pki::Pki::new(&state_dir).ca_cert().display(),
                issued.len()
            );
        }
        hastack_tls::node::site_certificates(&t).context("checking the site's certificates")?;
    }
    let cwd = std::env::current_dir()?;
    let config_path = match config {
        Some(p) => crate::absolute(&cwd, p),
        None => {
            let p = state_dir.join("topology.toml");
            std::fs::write(&p, hastack_config::DEFAULT_TOPOLOGY)
                .with_context(|| format!("writing {}", p.display()))?;
            p
        }
    };
    let has_mariadb = hastack_db::find_program(&topo.db.mariadbd).is_some()
        && hastack_db::find_program("mariadb-install-db").is_some();
    let sqlite = if has_mariadb {
        None
    } else {
        let p = state_dir.join("app.sqlite");
        println!(
            "hastack: {} not found: the app tier uses embedded SQLite ({}) and db nodes are not started; install mariadb-server for the MariaDB tier with replicas",
            topo.db.mariadbd,
            p.display()
        );
        Some(p)
    };
    let slots = topo
        .nodes
        .iter()
        .filter(|n| !(sqlite.is_some() && n.role == Role::Db))
        .map(|n| Slot {
            node: n.clone(),
            state: NodeState::NotStarted,
            pid: None,
            generation: 0,
        })
        .collect();
    let sup = Arc::new(Supervisor {
        exe: std::env::current_exe().context("locating the hastack binary")?,
        config_path,
        state_dir,
        sqlite,
        network,
        slots: Mutex::new(slots),
        exited: Notify::new(),
        done: Notify::new(),
        ready: AtomicBool::new(false),
        dashboard_url: std::sync::OnceLock::new(),
        topo,
    });
    // Current-thread: children are forked from the main thread (see module docs).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = rt.block_on(sup.clone().run());
    sup.remove_network();
    result
}

impl Supervisor {
    /// Isolated mode: removes the nodes' namespaces (once every node has stopped);
    /// returns how many were removed.
    fn remove_network(&self) -> Option<usize> {
        let net = self.network.as_ref()?;
        let n = net.destroy();
        let _ = std::fs::remove_file(crate::isolated_marker(&self.state_dir));
        if n > 0 {
            println!("hastack: removed the {n} network namespaces of the stack");
        }
        Some(n)
    }

    fn slots(&self) -> MutexGuard<'_, Vec<Slot>> {
        // A panic while holding this lock is a bug; keep serving with the data as is.
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn log_path(&self, name: &str) -> PathBuf {
        self.state_dir.join("logs").join(format!("{name}.log"))
    }

    fn role_of(&self, name: &str) -> Option<Role> {
        self.slots()
            .iter()
            .find(|s| s.node.name == name)
            .map(|s| s.node.role)
    }

    fn admin_addr(&self, node: &Node) -> SocketAddr {
        self.topo.admin_addr(node)
    }

    /// Serves the live dashboard on `[dashboard] address` (a picture of [`Self::status`]
    /// every second). An address that cannot be bound is said and skipped: the stack
    /// runs without it.
    async fn serve_dashboard(self: Arc<Self>) {
        let Some(addr) = self.topo.dashboard else {
            return;
        };
        let listener = match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(e) => {
                println!(
                    "hastack: no dashboard: cannot listen on {addr}: {e} (set [dashboard] address)"
                );
                return;
            }
        };
        if let Ok(bound) = listener.local_addr() {
            let _ = self.dashboard_url.set(format!("http://{bound}/"));
        }
        // The supervisor's process ends the dashboard; nothing else stops it.
        let (_never, shutdown) = tokio::sync::watch::channel(false);
        let sup = self.clone();
        let dashboard = hastack_status::dashboard::Dashboard::spawn(
            move || {
                let sup = sup.clone();
                async move { sup.status().await }
            },
            shutdown.clone(),
        );
        tokio::spawn(async move {
            let _never = _never;
            hastack_runtime::serve_http1(
                listener,
                move |req: hyper::Request<hyper::body::Incoming>, _peer| {
                    let dashboard = dashboard.clone();
                    async move {
                        let path = req.uri().path().trim_start_matches('/');
                        dashboard.handle(path).unwrap_or_else(|| {
                            hastack_runtime::text_response(
                                hyper::StatusCode::NOT_FOUND,
                                "text/plain",
                                "not found: the dashboard is at /\n",
                            )
                            .map(http_body_util::BodyExt::boxed_unsync)
                        })
                    }
                },
                shutdown,
            )
            .await;
        });
    }

    async fn run(self: Arc<Self>) -> anyhow::Result<ExitCode> {
        let listener =
            hastack_runtime::control_socket::bind(&control::socket_path(&self.state_dir))
                .with_context(|| {
                    format!("binding the control socket in {}", self.state_dir.display())
                })?;
        let mut sigint = signal(SignalKind::interrupt())?;
        let mut sigterm = signal(SignalKind::terminate())?;
        let total = self.slots().len();
        println!(
            "hastack: starting {} — {total} nodes, state in {}",
            self.topo.site,
            self.state_dir.display()
        );
        // The control socket answers from the start (`status` shows progress), and so
        // does the dashboard.
        let control_task = tokio::spawn(self.clone().accept_control(listener));
        self.clone().serve_dashboard().await;
        let started = Instant::now();
        let startup = self.clone().start_all();
        tokio::pin!(startup);
        let ok = tokio::select! {
            r = &mut startup => r,
            _ = sigint.recv() => Err("interrupted".to_string()),
            _ = sigterm.recv() => Err("terminated".to_string()),
        };
        if let Err(why) = ok {
            println!("hastack: {why}; stopping what was started");
            control_task.abort();
            self.stop_all().await;
            let _ = std::fs::remove_file(control::socket_path(&self.state_dir));
            return Ok(ExitCode::FAILURE);
        }
        // Certificates are re-issued before they expire (the nodes reload them).
        if self.topo.tls.internal || self.topo.https_port.is_some() {
            let mut t = self.topo.clone();
            t.state_dir = self.state_dir.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(hastack_tls::node::RENEW_CHECK);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    let t = t.clone();
                    let r = tokio::task::spawn_blocking(move || {
                        hastack_tls::pki::Pki::new(&t.state_dir)
                            .ensure(&hastack_tls::node::identities(&t), false)
                    })
                    .await;
                    if let Ok(Ok(issued)) = r
                        && !issued.is_empty()
                    {
                        println!("hastack: renewed {} certificate(s)", issued.len());
                    }
                }
            });
        }
        self.ready.store(true, Ordering::Release);
        let report = self.status().await;
        print!("\n{}", control::render_table(&report));
        if let Some(url) = &report.dashboard {
            println!("dashboard: {url}   (live; also on every lb's admin port at /dashboard/)");
        }
        println!(
            "ready in {:.1} s — open {}   (Host: {})\ncontrol: hastack status | stop NODE | start NODE | kill NODE | down   (logs in {})",
            started.elapsed().as_secs_f64(),
            report.url,
            self.topo.site,
            self.state_dir.join("logs").display()
        );

        let by_down = tokio::select! {
            _ = sigint.recv() => false,
            _ = sigterm.recv() => false,
            _ = self.done.notified() => true,
        };
        control_task.abort();
        if !by_down {
            println!("hastack: stopping (lb, web, app, db)");
            self.stop_all().await;
        }
        let _ = std::fs::remove_file(control::socket_path(&self.state_dir));
        println!("hastack: {}", if by_down { "down" } else { "stopped" });
        Ok(ExitCode::SUCCESS)
    }

    async fn accept_control(self: Arc<Self>, listener: UnixListener) {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => match hastack_runtime::control_socket::admit(&stream) {
                    Ok(()) => {
                        tokio::spawn(self.clone().serve_control(stream));
                    }
                    Err(why) => println!("hastack: control connection refused: {why}"),
                },
                Err(e) => {
                    println!("hastack: control socket: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// Starts the tiers in order, each once the one below it is ready.
    async fn start_all(self: Arc<Self>) -> Result<(), String> {
        let total = self.slots().len();
        let mut ready = 0usize;
        for role in [Role::Db, Role::App, Role::Web, Role::Lb, Role::Dns] {
            let names: Vec<String> = self
                .slots()
                .iter()
                .filter(|s| s.node.role == role)
                .map(|s| s.node.name.clone())
                .collect();
            if names.is_empty() {
                continue;
            }
            let tier_start = Instant::now();
            let mut waits = JoinSet::new();
            for name in &names {
                self.spawn_node(name)
                    .map_err(|e| format!("{name} failed to start: {e}"))?;
                let sup = self.clone();
                let name = name.clone();
                waits.spawn(async move {
                    let r = sup.wait_ready(&name, deadlines::ready(role)).await;
                    (name, r)
                });
            }
            let mut pending: Vec<String> = names.clone();
            let mut ticker = tokio::time::interval(Duration::from_secs(5));
            ticker.tick().await;
            while !waits.is_empty() {
                tokio::select! {
                    joined = waits.join_next() => {
                        let (name, r) = match joined {
                            Some(Ok(done)) => done,
                            // A check that panicked proves nothing: the next tier waits.
                            Some(Err(e)) => return Err(format!("a readiness check of the {role} tier failed: {e}")),
                            None => continue,
                        };
                        r.map_err(|e| format!("{name} failed to start: {e}"))?;
                        ready += 1;
                        pending.retain(|n| *n != name);
                        println!("  [{ready}/{total}] {name:<6} {role:<3} ready after {:.1} s", tier_start.elapsed().as_secs_f64());
                    }
                    _ = ticker.tick() => {
                        println!("        waiting for {} … {:.0} s", pending.join(", "), tier_start.elapsed().as_secs_f64());
                    }
                }
            }
        }
        // Ready means the site answers through the VIP: a master has been elected.
        let vip = SocketAddr::from((self.topo.vip, self.topo.http_port));
        let waited = Instant::now();
        let deadline = Duration::from_secs(15);
        loop {
            match http_get::get(vip, "/healthz", Duration::from_millis(500)).await {
                Ok((200, _)) => break,
                // HTTP redirected to HTTPS: the lb answered, which is what is checked.
                Ok((308, _)) if self.topo.tls.redirect_http => break,
                Ok((code, body)) if waited.elapsed() > deadline => {
                    return Err(format!("the site answered {code} on {vip}: {body}"));
                }
                Err(e) if waited.elapsed() > deadline => {
                    return Err(format!(
                        "no lb answered on the VIP {vip} within {deadline:?}: {e}"
                    ));
                }
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        println!(
            "        site answering on the VIP {vip} after {:.2} s more",
            waited.elapsed().as_secs_f64()
        );
        Ok(())
    }

    /// Spawns node `name` as a child process.
    fn spawn_node(self: &Arc<Self>, name: &str) -> Result<u32, String> {
        let log_path = self.log_path(name);
        let mut log = logs::RotatingLog::open(&log_path, logs::MAX_BYTES, logs::KEEP)
            .map_err(|e| format!("{}: {e}", log_path.display()))?;
        let _ = log.write_line(
            format!(
                "=== hastack node {name}: started by the supervisor (pid {}) ===\n",
                std::process::id()
            )
            .as_bytes(),
        );
        let log = Arc::new(std::sync::Mutex::new(log));
        let mut cmd = Command::new(&self.exe);
        cmd.arg("node")
            .arg(name)
            .arg("--config")
            .arg(&self.config_path)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Ctrl-C reaches the supervisor only, which stops the tiers in order.
            .process_group(0);
        if let (Some(db), Some(Role::App)) = (&self.sqlite, self.role_of(name)) {
            cmd.arg("--sqlite").arg(db);
        }
        if let Some(net) = &self.network {
            cmd.arg("--isolated");
            let path = net.path(name);
            let ns = std::fs::File::open(&path)
                .map_err(|e| format!("network namespace {}: {e}", path.display()))?;
            hastack_runtime::child::enter_netns(&mut cmd, ns);
        }
        hastack_runtime::child::die_with_parent(&mut cmd, Signal::SIGTERM);
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("spawning {}: {e}", self.exe.display()))?;
        // `id` is `None` only once the child has been waited for, which it has not: but
        // a pid of 0 must never reach `kill` (it would signal our own process group).
        let pid = child
            .id()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("{name} has no process id"))?;
        let generation = {
            let mut slots = self.slots();
            let slot = slots
                .iter_mut()
                .find(|s| s.node.name == name)
                .ok_or_else(|| format!("no node {name}"))?;
            slot.generation += 1;
            slot.state = NodeState::Starting;
            slot.pid = Some(pid);
            slot.generation
        };
        let pumps: Vec<_> = [
            child
                .stdout
                .take()
                .map(|o| tokio::spawn(logs::pump(o, log.clone()))),
            child
                .stderr
                .take()
                .map(|e| tokio::spawn(logs::pump(e, log.clone()))),
        ]
        .into_iter()
        .flatten()
        .collect();
        let sup = self.clone();
        let name = name.to_string();
        tokio::spawn(async move {
            let status = child.wait().await;
            // Its last words are in the log before anyone reads it (a process it left
            // behind may hold the pipe open: not for long).
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                for pump in pumps {
                    let _ = pump.await;
                }
            })
            .await;
            let why = match status {
                Ok(s) => s.to_string(),
                Err(e) => e.to_string(),
            };
            let mut report = None;
            {
                let mut slots = sup.slots();
                if let Some(slot) = slots
                    .iter_mut()
                    .find(|s| s.node.name == name && s.generation == generation)
                {
                    slot.pid = None;
                    slot.state = match slot.state {
                        NodeState::Stopping => NodeState::Stopped,
                        NodeState::Killed => NodeState::Killed,
                        _ => {
                            report = Some(why.clone());
                            NodeState::Exited(why)
                        }
                    };
                }
            }
            if let Some(why) = report {
                println!(
                    "hastack: {name} exited ({why}): {}",
                    last_error_line(&sup.log_path(&name))
                );
            }
            sup.exited.notify_waiters();
        });
        Ok(pid)
    }

    /// Waits until `name` answers `/healthz` with 200, or fails if it exits first.
    async fn wait_ready(&self, name: &str, deadline: Duration) -> Result<(), String> {
        let started = Instant::now();
        let node = self
            .slots()
            .iter()
            .find(|s| s.node.name == name)
            .map(|s| s.node.clone())
            .ok_or("unknown node")?;
        let addr = self.admin_addr(&node);
        let mut last;
        loop {
            let state = self
                .slots()
                .iter()
                .find(|s| s.node.name == name)
                .map(|s| s.state.clone());
            match state {
                Some(NodeState::Starting | NodeState::Running) => {}
                Some(NodeState::Exited(why)) => {
                    return Err(format!(
                        "exited ({why}): {}",
                        last_error_line(&self.log_path(name))
                    ));
                }
                Some(other) => return Err(format!("is {}", other.label())),
                None => return Err("unknown node".into()),
            }
            match http_get::get(addr, "/healthz", Duration::from_millis(1000)).await {
                Ok((200, _)) => {
                    if let Some(s) = self
                        .slots()
                        .iter_mut()
                        .find(|s| s.node.name == name && s.state == NodeState::Starting)
                    {
                        s.state = NodeState::Running;
                    }
                    return Ok(());
                }
                Ok((code, body)) => last = format!("/healthz answered {code}: {body}"),
                Err(e) => last = e,
            }
            if started.elapsed() > deadline {
                return Err(format!(
                    "not ready within {deadline:?} (last: {last}; log: {})",
                    last_error_line(&self.log_path(name))
                ));
            }
            tokio::select! {
                _ = self.exited.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    }

    /// Sends `signal` to a node; with SIGTERM waits for it to exit (SIGKILL after the deadline).
    async fn stop_node(&self, name: &str, sig: Signal) -> Result<String, String> {
        let (pid, role, generation) = {
            let mut slots = self.slots();
            let slot = slots
                .iter_mut()
                .find(|s| s.node.name == name)
                .ok_or_else(|| format!("no node named `{name}`"))?;
            let Some(pid) = slot.pid.filter(|_| slot.state.alive()) else {
                return Err(format!("{name} is not running ({})", slot.state.label()));
            };
            // Only a positive pid names one process: 0 and negative ones are groups.
            let Some(pid) = i32::try_from(pid).ok().filter(|p| *p > 0) else {
                return Err(format!("{name} has an invalid process id {pid}"));
            };
            slot.state = if sig == Signal::SIGKILL {
                NodeState::Killed
            } else {
                NodeState::Stopping
            };
            (pid, slot.node.role, slot.generation)
        };
        let pid = Pid::from_raw(pid);
        let _ = kill(pid, sig);
        let started = Instant::now();
        let mut escalated = false;
        loop {
            // Wait for this process, not for a later one `start` may have made.
            let alive = self
                .slots()
                .iter()
                .find(|s| s.node.name == name)
                .is_some_and(|s| s.generation == generation && s.pid.is_some());
            if !alive {
                break;
            }
            if !escalated && started.elapsed() > deadlines::supervisor_stop(role) {
                println!(
                    "hastack: {name} did not stop within {:?}; killing it",
                    deadlines::supervisor_stop(role)
                );
                let _ = kill(pid, Signal::SIGKILL);
                escalated = true;
            }
            if started.elapsed() > deadlines::supervisor_stop(role) + Duration::from_secs(10) {
                return Err(format!("{name} (pid {pid}) would not exit"));
            }
            tokio::select! {
                _ = self.exited.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
        let verb = if sig == Signal::SIGKILL {
            "killed"
        } else {
            "stopped"
        };
        Ok(format!("{name} {verb}"))
    }

    /// Stops every running node, tier by tier from the top.
    async fn stop_all(self: &Arc<Self>) {
        for role in [Role::Dns, Role::Lb, Role::Web, Role::App, Role::Db] {
            let names: Vec<String> = self
                .slots()
                .iter()
                .filter(|s| s.node.role == role && s.state.alive())
                .map(|s| s.node.name.clone())
                .collect();
            let mut set = JoinSet::new();
            for name in names {
                let sup = self.clone();
                set.spawn(async move { sup.stop_node(&name, Signal::SIGTERM).await });
            }
            while let Some(r) = set.join_next().await {
                if let Ok(Err(e)) = r {
                    println!("hastack: {e}");
                }
            }
        }
    }

    async fn status(&self) -> StatusReport {
        let snapshot: Vec<(Node, NodeState, Option<u32>)> = self
            .slots()
            .iter()
            .map(|s| (s.node.clone(), s.state.clone(), s.pid))
            .collect();
        let alive: Vec<Node> = snapshot
            .iter()
            .filter(|(_, state, _)| state.alive())
            .map(|(n, _, _)| n.clone())
            .collect();
        let probes = hastack_status::poll::probe_all(&self.topo, &alive).await;
        let mut health: HashMap<String, hastack_status::poll::Probe> =
            alive.into_iter().map(|n| n.name).zip(probes).collect();
        let nodes = snapshot
            .into_iter()
            .map(|(node, state, pid)| {
                let h = health.remove(&node.name);
                NodeStatus {
                    admin: format!("http://{}/healthz", self.admin_addr(&node)),
                    netns: self.network.as_ref().map(|n| n.namespace(&node.name)),
                    name: node.name,
                    role: node.role.to_string(),
                    address: node.address.to_string(),
                    state: state.label(),
                    pid,
                    // A live process that does not answer is failing, not unknown.
                    healthy: h.as_ref().map(|p| p.healthy.unwrap_or(false)),
                    health: h.and_then(|p| p.health),
                }
            })
            .collect();
        StatusReport {
            site: self.topo.site.clone(),
            url: self.topo.site_url(),
            https_url: self.topo.site_https_url(),
            ca: (self.topo.https_port.is_some() && self.topo.tls.certificates.is_empty()).then(
                || {
                    hastack_tls::pki::Pki::new(&self.state_dir)
                        .ca_cert()
                        .display()
                        .to_string()
                },
            ),
            vip: self.topo.vip.to_string(),
            mode: self.topo.mode.as_str().to_string(),
            client_netns: self.network.as_ref().map(|n| n.namespace("client")),
            state_dir: self.state_dir.display().to_string(),
            db_engine: if self.sqlite.is_some() {
                "sqlite".into()
            } else {
                "mariadb".into()
            },
            at_unix_ms: chrono::Utc::now().timestamp_millis(),
            dashboard: self.dashboard_url.get().cloned(),
            nodes,
        }
    }

    async fn serve_control(self: Arc<Self>, stream: UnixStream) {
        let (read, mut write) = stream.into_split();
        // One short line, soon: a client that sends nothing or too much is dropped.
        let mut lines = BufReader::new(read.take(64 * 1024)).lines();
        let Ok(Ok(Some(line))) =
            tokio::time::timeout(Duration::from_secs(5), lines.next_line()).await
        else {
            return;
        };
        let resp = match serde_json::from_str::<Request>(&line) {
            Ok(req) => self.handle(req).await,
            Err(e) => Response {
                ok: false,
                error: Some(format!("bad request: {e}")),
                ..Default::default()
            },
        };
        let mut out = serde_json::to_string(&resp).unwrap_or_else(|_| "{\"ok\":false}".into());
        out.push('\n');
        let _ = write.write_all(out.as_bytes()).await;
        let _ = write.shutdown().await;
    }

    async fn handle(self: &Arc<Self>, req: Request) -> Response {
        let done = |r: Result<String, String>| match r {
            Ok(m) => Response {
                ok: true,
                message: Some(m),
                ..Default::default()
            },
            Err(e) => Response {
                ok: false,
                error: Some(e),
                ..Default::default()
            },
        };
        if req.cmd != "status" && !self.ready.load(Ordering::Acquire) {
            return done(Err(
                "the stack is still starting; try again once `hastack up` says ready".into(),
            ));
        }
        match req.cmd.as_str() {
            "status" => Response {
                ok: true,
                status: Some(self.status().await),
                ..Default::default()
            },
            "stop" => {
                let r = self.stop_node(&req.node, Signal::SIGTERM).await;
                if let Ok(m) = &r {
                    println!("hastack: {m}");
                }
                done(r)
            }
            "kill" => {
                let r = self.stop_node(&req.node, Signal::SIGKILL).await;
                if let Ok(m) = &r {
                    println!("hastack: {m}");
                }
                done(r)
            }
            "start" => done(self.start_node(&req.node).await),
            "rebuild" => done(self.rebuild_node(&req.node, req.source.as_deref()).await),
            "down" => {
                println!("hastack: down requested; stopping (lb, web, app, db)");
                self.stop_all().await;
                let removed = self.remove_network();
                self.done.notify_one();
                done(Ok(match removed {
                    Some(n) => format!("all nodes stopped; {n} network namespaces removed"),
                    None => "all nodes stopped".into(),
                }))
            }
            other => done(Err(format!("unknown command `{other}`"))),
        }
    }

    /// Re-seeds db node `name` from `source` (default: a healthy replica, else the
    /// primary): stops it, copies a running node's data with `mariadb-backup`, starts it.
    async fn rebuild_node(
        self: &Arc<Self>,
        name: &str,
        source: Option<&str>,
    ) -> Result<String, String> {
        if self.sqlite.is_some() {
            return Err("there is no MariaDB tier to rebuild (the stack runs on SQLite)".into());
        }
        if self.role_of(name) != Some(Role::Db) {
            return Err(format!("`{name}` is not a db node"));
        }
        let report = self.status().await;
        let running_db =
            |n: &&NodeStatus| n.role == "db" && n.name != name && n.healthy == Some(true);
        let role_of = |n: &NodeStatus| match &n.health {
            Some(hastack_status::Health::Db(h)) => h.db_role.clone(),
            _ => String::new(),
        };
        let source = match source {
            Some(s) => report
                .nodes
                .iter()
                .filter(running_db)
                .find(|n| n.name == s)
                .map(|n| n.name.clone())
                .ok_or_else(|| format!("{s} is not a running db node other than {name}"))?,
            None => report
                .nodes
                .iter()
                .filter(running_db)
                .find(|n| role_of(n) == "replica")
                .or_else(|| {
                    report
                        .nodes
                        .iter()
                        .filter(running_db)
                        .find(|n| role_of(n) == "primary")
                })
                .map(|n| n.name.clone())
                .ok_or_else(|| "no running db node to copy from".to_string())?,
        };
        let alive = self
            .slots()
            .iter()
            .any(|s| s.node.name == name && s.state.alive());
        if alive {
            self.stop_node(name, Signal::SIGTERM).await?;
        }
        let secrets = hastack_runtime::secrets::DbSecrets::load_or_create(
            &self.state_dir,
            self.topo.db.password.as_deref(),
            self.topo.db.repl_password.as_deref(),
        )
        .map_err(|e| e.to_string())?;
        let done = hastack_db::rebuild::reseed(&self.state_dir, name, &source, &secrets.admin)
            .await
            .map_err(|e| e.to_string())?;
        println!("hastack: {done}");
        let started = self.start_node(name).await?;
        Ok(format!("{done}\n{started}"))
    }

    async fn start_node(self: &Arc<Self>, name: &str) -> Result<String, String> {
        let role = {
            let slots = self.slots();
            let slot = slots
                .iter()
                .find(|s| s.node.name == name)
                .ok_or_else(|| format!("no node named `{name}`"))?;
            if slot.state.alive() {
                return Err(format!("{name} is already {}", slot.state.label()));
            }
            if slot.pid.is_some() {
                return Err(format!(
                    "{name} is {} but its process has not exited yet; try again",
                    slot.state.label()
                ));
            }
            slot.node.role
        };
        let started = Instant::now();
        self.spawn_node(name)?;
        self.wait_ready(name, deadlines::ready(role))
            .await
            .map_err(|e| format!("{name} failed to start: {e}"))?;
        let msg = format!(
            "{name} started, ready after {:.1} s",
            started.elapsed().as_secs_f64()
        );
        println!("hastack: {msg}");
        Ok(msg)
    }
}

/// The last line of a node's log that says something went wrong (or the last line).
fn last_error_line(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines
        .iter()
        .rev()
        .find(|l| l.contains("error") || l.contains("ERROR"))
        .or(lines.last())
        .map(|l| l.trim().to_string())
        .unwrap_or_else(|| format!("(nothing in {})", log.display()))
}
