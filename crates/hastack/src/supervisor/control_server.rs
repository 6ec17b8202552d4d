//! The supervisor's control socket: `status`, `stop`, `kill`, `start`, `rebuild`,
//! `deploy`, `reload` and `down` from `hastack` commands on this machine (0600 socket, peer uid checked), one
//! JSON request and one JSON answer per connection.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use hastack_config::Role;

use super::Supervisor;
use super::lifecycle::Stop;
use crate::control::{NodeStatus, Request, Response};

impl Supervisor {
    pub(super) async fn accept_control(self: Arc<Self>, listener: UnixListener) {
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
                let r = self.stop_node(&req.node, Stop::Graceful).await;
                if let Ok(m) = &r {
                    println!("hastack: {m}");
                }
                done(r)
            }
            "kill" => {
                let r = self.stop_node(&req.node, Stop::Kill).await;
                if let Ok(m) = &r {
                    println!("hastack: {m}");
                }
                done(r)
            }
            "start" => done(self.start_node(&req.node).await),
            "rebuild" => done(self.rebuild_node(&req.node, req.source.as_deref()).await),
            "reload" => done(self.reload().await),
            "deploy" => {
                let r = self.deploy(req.source.as_deref()).await;
                match &r {
                    Ok(m) => println!("hastack: deploy done:\n{m}"),
                    Err(e) => println!("hastack: deploy failed: {e}"),
                }
                done(r)
            }
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
        if self.node(name)?.node.role != Role::Db {
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
        if self.node(name)?.view().state.alive() {
            self.stop_node(name, Stop::Graceful).await?;
        }
        let secrets = hastack_runtime::secrets::DbSecrets::load_or_create(
            &self.state_dir,
            self.topo().db.password.as_deref(),
            self.topo().db.repl_password.as_deref(),
        )
        .map_err(|e| e.to_string())?;
        let done = hastack_db::rebuild::reseed(&self.state_dir, name, &source, &secrets.admin)
            .await
            .map_err(|e| e.to_string())?;
        println!("hastack: {done}");
        let started = self.start_node(name).await?;
        Ok(format!("{done}\n{started}"))
    }
}
