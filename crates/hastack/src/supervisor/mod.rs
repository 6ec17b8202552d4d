//! `hastack up`: runs every node of the topology as a child process, tier by tier
//! (db, app, web, lb, dns), shows progress until each answers `/healthz`, then serves the
//! control socket until Ctrl-C, SIGTERM or `hastack down`, and stops the tiers in the
//! opposite order (dns, lb, web, app, db).
//!
//! Its parts:
//! - [`lifecycle`]: the pure rules of a node's process (start, ready, stop, exit);
//! - [`node`]: one task per node that owns its child process, probes its readiness,
//!   escalates its stop, and publishes its [`lifecycle::View`] on a `watch` channel;
//! - [`control_server`]: the control socket's commands;
//! - this module: the order of the tiers, the status picture and the dashboard.
//!
//! Architecture invariants:
//! - No child outlives the supervisor: children are spawned from the main thread of a
//!   current-thread runtime with `PR_SET_PDEATHSIG` (SIGTERM), so even a SIGKILLed
//!   supervisor takes them down; each db node in turn takes its `mariadbd`.
//! - Only a node's own task touches its process; everyone else sends it commands and
//!   reads its published view.
//! - A node that dies stays down and is shown so; only `hastack start` restarts it.
//! - Every wait has a deadline ([`crate::deadlines`]).
//! - In isolated mode every node runs in its own network namespace ([`crate::netns`]),
//!   created before the first node starts and removed after the last one stopped (and,
//!   if the supervisor crashed, by the next `up` or `down`).

mod control_server;
mod deploy;
mod lifecycle;
mod node;
mod reload;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::Notify;
use tokio::task::JoinSet;

use hastack_config::{Role, Topology};

use crate::control::{self, NodeStatus, StatusReport};
use crate::http_get;
use crate::netns::{self, Network};
use lifecycle::Stop;
use node::{Launch, NodeHandle};

/// The supervisor: the topology, one [`NodeHandle`] per node (each node's task owns
/// its process), the control socket and the dashboard.
struct Supervisor {
    /// The topology in force (replaced by `hastack reload`).
    topo: std::sync::RwLock<Arc<Topology>>,
    state_dir: PathBuf,
    sqlite: Option<PathBuf>,
    /// Isolated mode: the nodes' network namespaces.
    network: Option<Network>,
    /// In topology order (the handles' state is on their channels); `reload` adds and
    /// removes web and app nodes.
    nodes: std::sync::RwLock<Vec<NodeHandle>>,
    /// What a node added by `reload` is launched with (its own name and address aside).
    launch: Launch,
    /// Signalled when `down` has stopped everything.
    done: Notify,
    /// Set once every tier is up; until then only `status` is served.
    ready: AtomicBool,
    /// The dashboard's URL, once it listens.
    dashboard_url: std::sync::OnceLock<String>,
    /// Held while `hastack deploy` runs (one at a time).
    deploying: tokio::sync::Mutex<()>,
    /// The version of the team's app the last deploy put in place (`None`: `[app] dir`).
    app_dir: std::sync::Mutex<Option<PathBuf>>,
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
    if let Some(app) = &topo.app {
        app.check_on_this_host()
            .map_err(|errors| anyhow::anyhow!("{errors}"))?;
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
    let exe = std::env::current_exe().context("locating the hastack binary")?;
    // Current-thread: children are forked from the main thread (see module docs).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let sup = rt.block_on(async {
        let nodes = topo
            .nodes
            .iter()
            .filter(|n| !(sqlite.is_some() && n.role == Role::Db))
            .map(|n| {
                let launch = Launch {
                    exe: exe.clone(),
                    config_path: config_path.clone(),
                    state_dir: state_dir.clone(),
                    sqlite: sqlite.clone(),
                    netns: network.as_ref().map(|net| net.path(&n.name)),
                    admin: topo.admin_addr(n),
                    app: None,
                    app_settings: topo.app.clone().filter(|_| n.role == Role::App),
                };
                NodeHandle::spawn(n.clone(), launch)
            })
            .collect();
        let launch = Launch {
            exe: exe.clone(),
            config_path: config_path.clone(),
            state_dir: state_dir.clone(),
            sqlite: sqlite.clone(),
            netns: None,
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            app: None,
            app_settings: None,
        };
        Arc::new(Supervisor {
            launch,
            state_dir,
            sqlite,
            network,
            nodes: std::sync::RwLock::new(nodes),
            done: Notify::new(),
            ready: AtomicBool::new(false),
            dashboard_url: std::sync::OnceLock::new(),
            deploying: tokio::sync::Mutex::new(()),
            app_dir: std::sync::Mutex::new(None),
            topo: std::sync::RwLock::new(Arc::new(topo)),
        })
    });
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

    /// The topology in force.
    fn topo(&self) -> Arc<Topology> {
        self.topo.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Every node's handle, in topology order.
    fn nodes(&self) -> Vec<NodeHandle> {
        self.nodes.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The handle of node `name`.
    fn node(&self, name: &str) -> Result<NodeHandle, String> {
        self.nodes()
            .into_iter()
            .find(|h| h.node.name == name)
            .ok_or_else(|| format!("no node named `{name}`"))
    }

    /// Serves the live dashboard on `[dashboard] address` (a picture of [`Self::status`]
    /// every second). An address that cannot be bound is said and skipped: the stack
    /// runs without it.
    async fn serve_dashboard(self: Arc<Self>) {
        let Some(addr) = self.topo().dashboard else {
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
        let total = self.nodes().len();
        println!(
            "hastack: starting {} — {total} nodes, state in {}",
            self.topo().site,
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
        let topo = self.topo();
        if topo.tls.internal || topo.https_port.is_some() {
            let mut t = (*topo).clone();
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
            self.topo().site,
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

    /// Starts the tiers in order, each once the one below it is ready.
    async fn start_all(self: Arc<Self>) -> Result<(), String> {
        let nodes = self.nodes();
        let total = nodes.len();
        let mut ready = 0usize;
        for role in [Role::Db, Role::App, Role::Web, Role::Lb, Role::Dns] {
            let tier: Vec<&NodeHandle> = nodes.iter().filter(|h| h.node.role == role).collect();
            if tier.is_empty() {
                continue;
            }
            let names: Vec<String> = tier.iter().map(|h| h.node.name.clone()).collect();
            let tier_start = Instant::now();
            let mut waits = JoinSet::new();
            for h in tier {
                let h = h.clone();
                waits.spawn(async move {
                    let r = h.start().await;
                    (h.node.name, r)
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
                        r?;
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
        let topo = self.topo();
        let vip = SocketAddr::from((topo.vip, topo.http_port));
        let waited = Instant::now();
        let deadline = Duration::from_secs(15);
        loop {
            match http_get::get(vip, "/healthz", Duration::from_millis(500)).await {
                Ok((200, _)) => break,
                // HTTP redirected to HTTPS: the lb answered, which is what is checked.
                Ok((308, _)) if topo.tls.redirect_http => break,
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

    /// Stops every running node, tier by tier from the top.
    async fn stop_all(self: &Arc<Self>) {
        for role in [Role::Dns, Role::Lb, Role::Web, Role::App, Role::Db] {
            // Every node of the tier, not only those shown alive: a `start` queued
            // before this is carried out first, and its node stopped after.
            let mut set = JoinSet::new();
            for h in self.nodes().into_iter().filter(|h| h.node.role == role) {
                let h = h.clone();
                set.spawn(async move { h.shut_down().await });
            }
            while let Some(r) = set.join_next().await {
                if let Ok(Err(e)) = r {
                    println!("hastack: {e}");
                }
            }
        }
    }

    /// Starts node `name` (an operator's `hastack start`) and waits until it is ready.
    async fn start_node(&self, name: &str) -> Result<String, String> {
        let took = self.node(name)?.start().await?;
        let msg = format!("{name} started, ready after {:.1} s", took.as_secs_f64());
        println!("hastack: {msg}");
        Ok(msg)
    }

    /// Stops or kills node `name` and waits until its process has exited.
    async fn stop_node(&self, name: &str, how: Stop) -> Result<String, String> {
        self.node(name)?.stop(how).await
    }

    async fn status(&self) -> StatusReport {
        let topo = self.topo();
        let handles = self.nodes();
        let snapshot: Vec<_> = handles.iter().map(|h| (&h.node, h.view())).collect();
        let alive: Vec<_> = snapshot
            .iter()
            .filter(|(_, v)| v.state.alive())
            .map(|(n, _)| (*n).clone())
            .collect();
        let probes = hastack_status::poll::probe_all(&topo, &alive).await;
        let mut health: HashMap<String, hastack_status::poll::Probe> =
            alive.into_iter().map(|n| n.name).zip(probes).collect();
        let nodes = snapshot
            .into_iter()
            .map(|(node, view)| {
                let h = health.remove(&node.name);
                NodeStatus {
                    netns: self.network.as_ref().map(|n| n.namespace(&node.name)),
                    pid: view.pid,
                    // A live process that does not answer is failing, not unknown.
                    healthy: h.as_ref().map(|p| p.healthy.unwrap_or(false)),
                    health: h.and_then(|p| p.health),
                    ..NodeStatus::of(&topo, node, view.state.to_string())
                }
            })
            .collect();
        StatusReport {
            ca: (topo.https_port.is_some() && topo.tls.certificates.is_empty()).then(|| {
                hastack_tls::pki::Pki::new(&self.state_dir)
                    .ca_cert()
                    .display()
                    .to_string()
            }),
            client_netns: self.network.as_ref().map(|n| n.namespace("client")),
            state_dir: self.state_dir.display().to_string(),
            db_engine: if self.sqlite.is_some() {
                "sqlite".into()
            } else {
                "mariadb".into()
            },
            dashboard: self.dashboard_url.get().cloned(),
            ..StatusReport::of(&topo, nodes)
        }
    }
}
