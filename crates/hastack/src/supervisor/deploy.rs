//! `hastack deploy [--dir DIR]`: a new version of the team's app, node by node, with
//! no request failed.
//!
//! 1. The version is checked (its directory and programs), then `[app] release` runs
//!    once, as the first running app node would run it (its namespace, its database
//!    endpoints). A release that fails aborts with no node changed.
//! 2. Then one app node at a time: it is drained (SIGUSR1: its health checks fail, the
//!    requests it has go on), the deploy waits until every web node has taken it out
//!    of its pool, stops it gracefully (its requests in flight finish within the
//!    node's drain deadline, then the app gets SIGTERM), starts it with the new
//!    version, waits for the app's health, and waits until every web node has it back
//!    before it moves on. A node whose new version never gets healthy is started
//!    again with the version it ran, and the rollout stops there: the nodes not yet
//!    reached were never touched.
//! 3. Every web node reads `[web] root` again (SIGHUP), so the site's static files are
//!    those on disk now (with `root` under a `current` link, the new release's).

use std::path::PathBuf;
use std::time::Instant;

use hastack_config::Role;

use super::Supervisor;
use super::lifecycle::Stop;
use super::reload::{InPool, POOLS_DEADLINE};

impl Supervisor {
    pub(super) async fn deploy(&self, dir: Option<&str>) -> Result<String, String> {
        let topo = self.topo();
        let Some(app) = &topo.app else {
            return Err(
                "the topology has no [app]: the built-in app is part of the hastack binary; add [app] to deploy your own"
                    .into(),
            );
        };
        let _one = self
            .deploying
            .try_lock()
            .map_err(|_| "a deploy is already under way".to_string())?;
        let dir = dir.map_or_else(|| app.dir.clone(), PathBuf::from);
        app.check_in(&dir).map_err(|errors| errors.to_string())?;
        let previous = self
            .app_dir
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or_else(|| app.dir.clone());
        let apps: Vec<_> = self
            .nodes()
            .into_iter()
            .filter(|h| h.node.role == Role::App)
            .collect();
        let mut report = Vec::new();
        let started = Instant::now();
        if app.release.is_some() {
            let first = apps
                .iter()
                .find(|h| h.view().state.alive())
                .ok_or("no app node is running to run the release from: start one first")?;
            println!(
                "hastack: deploy: running the release on {}",
                first.node.name
            );
            let t = Instant::now();
            first.release(dir.clone()).await.map_err(|tail| {
                format!("the release failed; no node was changed. Its last lines:\n{tail}")
            })?;
            report.push(format!(
                "release: ran once on {} in {:.1} s",
                first.node.name,
                t.elapsed().as_secs_f64()
            ));
        }
        let mut done: Vec<String> = Vec::new();
        for (i, h) in apps.iter().enumerate() {
            let name = &h.node.name;
            if !h.view().state.alive() {
                h.use_app(dir.clone(), true).await?;
                report.push(format!(
                    "{name}: not running; it will run the new version when started"
                ));
                continue;
            }
            let t = Instant::now();
            println!(
                "hastack: deploy: {name} ({}/{}): draining",
                i + 1,
                apps.len()
            );
            h.drain().await?;
            if !self.wait_in_pools(name, Role::Web, InPool::Down).await {
                println!(
                    "hastack: deploy: the web tier did not take {name} out within {POOLS_DEADLINE:?}; going on (a request may land on the stopping node and be retried)"
                );
            }
            h.stop(Stop::Graceful).await?;
            h.use_app(dir.clone(), true).await?;
            println!("hastack: deploy: {name}: starting the new version");
            if let Err(e) = h.start().await {
                println!(
                    "hastack: deploy: {name} failed with the new version; starting the one it ran"
                );
                h.use_app(previous.clone(), true).await?;
                let restored = match h.start().await {
                    Ok(_) => format!("{name} runs the version it ran before"),
                    Err(e) => format!("{name} could not be started again either: {e}"),
                };
                let updated = if done.is_empty() {
                    "no node runs the new version".to_string()
                } else {
                    format!("{} run(s) the new version", done.join(", "))
                };
                return Err(format!(
                    "{name} did not become healthy with {}: {e}\nrollout stopped: {restored}; {updated}; the others were not touched",
                    dir.display()
                ));
            }
            if !self.wait_in_pools(name, Role::Web, InPool::Up).await {
                println!(
                    "hastack: deploy: the web tier did not take {name} back within {POOLS_DEADLINE:?}"
                );
            }
            report.push(format!(
                "{name}: new version serving after {:.1} s",
                t.elapsed().as_secs_f64()
            ));
            done.push(name.clone());
        }
        *self.app_dir.lock().unwrap_or_else(|e| e.into_inner()) = Some(dir.clone());
        // The web tier's static files, as they are on disk now.
        if topo.web.root.is_some() {
            for h in self.nodes() {
                if h.node.role == Role::Web && h.view().state.alive() {
                    h.reload().await?;
                }
            }
            report.push("web nodes: the site's files read again".into());
        }
        report.push(format!(
            "deployed {} in {:.1} s",
            dir.display(),
            started.elapsed().as_secs_f64()
        ));
        Ok(report.join("\n"))
    }
}
