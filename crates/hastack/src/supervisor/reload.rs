//! `hastack reload`: the topology file read again, and the web and app tiers scaled
//! to it without a failed request.
//!
//! - A node added to the file is started and, once ready, the tier above takes it into
//!   its pools: every lb and web node reads the file again (SIGHUP) and checks the new
//!   node until it passes (a new server starts down). The reload returns when every
//!   pool above has it up.
//! - A node removed from the file leaves the pools first (the same SIGHUP: it gets no
//!   new request, those it has finish), then it is stopped gracefully.
//!
//! Only web and app nodes come and go this way. An lb, db or dns node, a node whose
//! address or role changed, and any node of an isolated stack (each needs a namespace
//! and a firewall of its own) need a restart of the stack; the reload says so and
//! changes nothing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hastack_config::{Node, Role, Topology};
use hastack_status::Health;

use super::Supervisor;
use super::lifecycle::Stop;
use super::node::{Launch, NodeHandle};

/// How long the tier above may take to take a node into its pools, or out.
pub(super) const POOLS_DEADLINE: Duration = Duration::from_secs(15);

/// What the pools of the tier above should say of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum InPool {
    /// Listed and healthy.
    Up,
    /// Not healthy (or not listed): it gets no new request.
    Down,
    /// Not listed at all.
    Gone,
}

impl Supervisor {
    pub(super) async fn reload(&self) -> Result<String, String> {
        let _one = self
            .deploying
            .try_lock()
            .map_err(|_| "a deploy or a reload is under way".to_string())?;
        let mut new = Topology::load(&self.launch.config_path).map_err(|e| e.to_string())?;
        if self.network.is_some() {
            new = new.isolated()?;
        }
        new.state_dir = self.state_dir.clone();
        let old = self.topo();
        let added: Vec<Node> = new
            .nodes
            .iter()
            .filter(|n| old.node(&n.name).is_none())
            .cloned()
            .collect();
        let removed: Vec<Node> = old
            .nodes
            .iter()
            .filter(|n| new.node(&n.name).is_none())
            .cloned()
            .collect();
        for n in &new.nodes {
            if let Some(before) = old.node(&n.name)
                && (before.role != n.role || before.address != n.address)
            {
                return Err(format!(
                    "{}: its role or address changed; remove it, reload, then add it back (nothing changed)",
                    n.name
                ));
            }
        }
        for n in added.iter().chain(&removed) {
            if !matches!(n.role, Role::Web | Role::App) {
                return Err(format!(
                    "{}: only web and app nodes are added or removed by reload; a {} node needs a restart of the stack (nothing changed)",
                    n.name, n.role
                ));
            }
            if self.network.is_some() {
                return Err(format!(
                    "{}: the nodes of an isolated stack change only with a restart (each has a namespace and a firewall of its own); nothing changed",
                    n.name
                ));
            }
        }
        if let Some(app) = &new.app {
            app.check_on_this_host()
                .map_err(|errors| errors.to_string())?;
        }
        if new.tls.internal && !added.is_empty() {
            hastack_tls::pki::Pki::new(&self.state_dir)
                .ensure(&hastack_tls::node::identities(&new), false)
                .map_err(|e| format!("certificates of the new nodes: {e}"))?;
        }
        let started = Instant::now();
        let mut report = Vec::new();

        // New nodes, bottom tier first: each ready before the tier above learns of it.
        let mut added = added;
        added.sort_by_key(|n| n.role != Role::App);
        let mut new_handles = Vec::new();
        for n in &added {
            let h = self.add_node(n, &new);
            println!("hastack: reload: starting {}", n.name);
            if let Err(e) = h.start().await {
                let _ = h.stop(Stop::Graceful).await;
                for h in new_handles.iter().chain(std::iter::once(&h)) {
                    self.forget(h);
                }
                let _ = self.stop_handles(&new_handles).await;
                return Err(format!(
                    "{e}\nreload stopped: the nodes it added are stopped again; the file's other changes were not applied"
                ));
            }
            new_handles.push(h);
        }
        *self.topo.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(new);

        // The tiers above read the file: added nodes join their pools once healthy,
        // removed ones leave them. The lbs answer with what they changed.
        for h in self.nodes() {
            if !h.view().state.alive() {
                continue;
            }
            match h.node.role {
                Role::Web => {
                    if let Err(e) = h.reload().await {
                        println!("hastack: reload: {e}");
                    }
                }
                Role::Lb => {
                    let (state_dir, name) = (self.state_dir.clone(), h.node.name.clone());
                    let cmd = hastack_lb::control::Command::Reload;
                    let answer = tokio::task::spawn_blocking(move || {
                        hastack_lb::control::send(&state_dir, &name, &cmd)
                    })
                    .await;
                    match answer {
                        Ok(Ok(a)) => report.push(
                            crate::lb_ctl::render(
                                &h.node.name,
                                &hastack_lb::control::Command::Reload,
                                &a,
                            )
                            .trim_end()
                            .to_string(),
                        ),
                        _ => {
                            if let Err(e) = h.reload().await {
                                println!("hastack: reload: {e}");
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        for h in &new_handles {
            let n = &h.node;
            let ok = self.wait_in_pools(&n.name, above(n.role), InPool::Up).await;
            report.push(if ok {
                format!("{}: added, serving", n.name)
            } else {
                format!(
                    "{}: added, but not yet healthy in every pool above it after {POOLS_DEADLINE:?}",
                    n.name
                )
            });
        }
        for n in &removed {
            let ok = self
                .wait_in_pools(&n.name, above(n.role), InPool::Gone)
                .await;
            if !ok {
                println!(
                    "hastack: reload: {} still listed above after {POOLS_DEADLINE:?}; stopping it anyway",
                    n.name
                );
            }
            if let Ok(h) = self.node(&n.name) {
                if h.view().state.alive() {
                    h.stop(Stop::Graceful).await?;
                }
                self.forget(&h);
            }
            report.push(format!("{}: drained and stopped", n.name));
        }
        if report.is_empty() {
            report
                .push("no node added or removed; the lbs and web nodes read the file again".into());
        }
        report.push(format!(
            "reloaded in {:.1} s",
            started.elapsed().as_secs_f64()
        ));
        let report = report.join("\n");
        println!("hastack: reload:\n{report}");
        Ok(report)
    }

    /// A handle for new node `n` of `topo`, in the supervisor's list in file order.
    fn add_node(&self, n: &Node, topo: &Topology) -> NodeHandle {
        let app = match (
            n.role,
            &*self.app_dir.lock().unwrap_or_else(|e| e.into_inner()),
        ) {
            (Role::App, Some(dir)) => Some((dir.clone(), true)),
            _ => None,
        };
        let launch = Launch {
            exe: self.launch.exe.clone(),
            config_path: self.launch.config_path.clone(),
            state_dir: self.state_dir.clone(),
            sqlite: self.sqlite.clone(),
            netns: None,
            admin: topo.admin_addr(n),
            app,
            app_settings: topo.app.clone().filter(|_| n.role == Role::App),
        };
        let h = NodeHandle::spawn(n.clone(), launch);
        let mut nodes = self.nodes.write().unwrap_or_else(|e| e.into_inner());
        nodes.push(h.clone());
        let position = |name: &str| topo.nodes.iter().position(|m| m.name == name);
        nodes.sort_by_key(|h| position(&h.node.name).unwrap_or(usize::MAX));
        h
    }

    /// Drops `h` from the supervisor's list (its task ends with its last handle).
    fn forget(&self, h: &NodeHandle) {
        self.nodes
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|n| n.node.name != h.node.name);
    }

    async fn stop_handles(&self, handles: &[NodeHandle]) -> Result<(), String> {
        for h in handles {
            h.stop(Stop::Graceful).await?;
        }
        Ok(())
    }

    /// Waits until every running node of tier `above` says `want` of `node` in its
    /// pool; `false` if that did not happen within [`POOLS_DEADLINE`].
    pub(super) async fn wait_in_pools(&self, node: &str, above: Role, want: InPool) -> bool {
        let deadline = Instant::now() + POOLS_DEADLINE;
        loop {
            let report = self.status().await;
            let settled = report
                .nodes
                .iter()
                .filter(|n| n.role == above.as_str() && n.pid.is_some())
                .all(|n| {
                    let upstreams = match &n.health {
                        Some(Health::Web(w)) => &w.upstreams,
                        Some(Health::Lb(l)) => &l.upstreams,
                        // A node that does not answer sends nothing anywhere.
                        _ => return true,
                    };
                    let listed = upstreams.iter().find(|u| u.name == node);
                    match want {
                        InPool::Up => listed.is_some_and(|u| u.healthy),
                        InPool::Down => listed.is_none_or(|u| !u.healthy),
                        InPool::Gone => listed.is_none(),
                    }
                });
            if settled {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The tier whose pools hold nodes of `role`.
fn above(role: Role) -> Role {
    match role {
        Role::App => Role::Web,
        _ => Role::Lb,
    }
}
