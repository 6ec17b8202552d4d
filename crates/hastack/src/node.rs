//! `hastack node NAME`: one node process. Finds itself in the topology, runs its tier's
//! code until SIGTERM or SIGINT, then shuts down gracefully within a deadline.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use hastack_config::Role;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tracing::{info, warn};

/// Raises this process's soft limit on open descriptors to its hard limit (as nginx's
/// `worker_rlimit_nofile` and HAProxy do): the soft default of 1024 is a few hundred
/// idle clients for a proxy, which holds two descriptors per request.
fn raise_descriptor_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => tracing::debug!(from = soft, to = hard, "descriptor limit raised"),
            Err(e) => {
                tracing::warn!(soft, hard, error = %e, "could not raise the descriptor limit")
            }
        },
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "could not read the descriptor limit"),
    }
}

/// An app node's options for the team's app (`[app]`), set by `hastack deploy`.
#[derive(Debug, Clone, Default, clap::Args)]
pub(crate) struct AppArgs {
    /// App nodes: run the app from this directory instead of `[app] dir` (a version
    /// being deployed).
    #[arg(long, value_name = "DIR")]
    app_dir: Option<PathBuf>,
    /// App nodes: do not run `[app] release` at start (the deploy ran it already).
    #[arg(long)]
    skip_release: bool,
    /// App nodes: run `[app] release` with the node's database endpoints, then exit.
    #[arg(long)]
    release_only: bool,
}

pub(crate) fn main(
    name: &str,
    config: &Option<PathBuf>,
    state_dir: Option<PathBuf>,
    sqlite: Option<PathBuf>,
    isolated: bool,
    app_args: AppArgs,
) -> anyhow::Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // openraft logs every failed heartbeat to a down peer at ERROR, twice a
                // second; the db agent logs what matters (leader changes, failovers).
                // rustls warns of what clients send (an IP address as SNI, from every
                // wrk connection): counted in the TLS metrics, not logged per client.
                .unwrap_or_else(|_| {
                    tracing_subscriber::EnvFilter::new("info,openraft=off,rustls=error")
                }),
        )
        .with_target(false)
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .init();
    raise_descriptor_limit();
    // Reads the topology as this node sees it; again on a reload.
    let load = {
        let config = config.clone();
        let state_dir = state_dir.clone();
        move || -> anyhow::Result<hastack_config::Topology> {
            let mut topo = crate::load(&crate::ConfigArg {
                config: config.clone(),
            })?;
            if isolated {
                topo = topo.isolated().map_err(|e| anyhow::anyhow!("{e}"))?;
            }
            if let Some(dir) = &state_dir {
                topo.state_dir = dir.clone();
            }
            Ok(topo)
        }
    };
    let mut topo = load()?;
    let node = topo
        .node(name)
        .with_context(|| format!("no node `{name}` in {}", topo.source.display()))?
        .clone();
    let state_dir = match state_dir {
        Some(d) => d,
        None => crate::state_dir(&topo)?,
    };
    // Every crate reads the state directory from the topology: make it this one.
    topo.state_dir = state_dir.clone();
    if let (Some(app), Some(dir)) = (&mut topo.app, &app_args.app_dir) {
        app.dir = dir.clone();
    }
    // Current-thread runtime: children (mariadbd) are spawned from the main thread,
    // which lives as long as the process (see hastack_runtime::child).
    let secrets = if matches!(node.role, Role::App | Role::Db) && sqlite.is_none() {
        Some(
            hastack_runtime::secrets::DbSecrets::load_or_create(
                &state_dir,
                topo.db.password.as_deref(),
                topo.db.repl_password.as_deref(),
            )
            .context("reading the database passwords")?,
        )
    } else {
        None
    };
    let app_settings = topo.app.clone().filter(|_| node.role == Role::App);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let span = tracing::info_span!("node", name = %name);
    let _enter = span.enter();
    rt.block_on(async move {
        let (tx, rx) = watch::channel(false);
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        // SIGHUP: the lb reloads its configuration; the other roles have nothing to
        // reload and say so (rather than die, SIGHUP's default).
        let mut hup = signal(SignalKind::hangup())?;
        let (reload_tx, reload_rx) = tokio::sync::mpsc::unbounded_channel();
        let role = node.role;
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                if matches!(role, Role::Lb | Role::Web) {
                    info!("SIGHUP: reloading the configuration");
                    let _ = reload_tx.send(());
                } else {
                    warn!("SIGHUP: a {} node has no configuration to reload; restart it to apply a change", role.as_str());
                }
            }
        });
        let run = async {
            let r: anyhow::Result<()> = match node.role {
                Role::Lb => {
                    let reloads = hastack_lb::Reloads {
                        load: Some(std::sync::Arc::new(move || {
                            load().map_err(|e| format!("{e:#}"))
                        })),
                        requests: Some(reload_rx),
                    };
                    hastack_lb::run_with(&topo, name, rx, reloads)
                        .await
                        .map_err(Into::into)
                }
                Role::Web => {
                    let load: hastack_web::Loader =
                        std::sync::Arc::new(move || load().map_err(|e| format!("{e:#}")));
                    hastack_web::run_with(&topo, name, rx, Some((load, reload_rx)))
                        .await
                        .map_err(Into::into)
                }
                Role::App if topo.app.is_some() => {
                    let database = match (sqlite, secrets.clone()) {
                        (None, Some(s)) => hastack_apphost::Database::MariaDb(s),
                        _ => hastack_apphost::Database::None,
                    };
                    let opts = hastack_apphost::RunOptions {
                        skip_release: app_args.skip_release,
                        release_only: app_args.release_only,
                    };
                    hastack_apphost::run(&topo, name, database, opts, rx)
                        .await
                        .map_err(Into::into)
                }
                Role::App => {
                    let data = match (sqlite, secrets.clone()) {
                        (Some(p), _) => hastack_app::DataSource::Sqlite(p),
                        (None, Some(s)) => hastack_app::DataSource::MariaDb(s),
                        (None, None) => anyhow::bail!("no database passwords for {name}"),
                    };
                    hastack_app::run(&topo, name, data, rx)
                        .await
                        .map_err(Into::into)
                }
                Role::Dns => crate::dns_node::run(&topo, name, rx).await,
                Role::Db => {
                    let secrets = secrets
                        .clone()
                        .with_context(|| format!("no database passwords for {name}"))?;
                    hastack_db::run(&topo, name, &state_dir, secrets, rx)
                        .await
                        .map_err(Into::into)
                }
            };
            r
        };
        tokio::pin!(run);
        let result = tokio::select! {
            r = &mut run => r,
            _ = term.recv() => stop(&tx, &mut run, node.role, app_settings.as_ref()).await,
            _ = int.recv() => stop(&tx, &mut run, node.role, app_settings.as_ref()).await,
        };
        match result {
            Ok(()) => {
                info!("stopped");
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                // Tier errors say everything in their own message.
                tracing::error!("{e}");
                eprintln!("{name}: error: {e}");
                Ok(ExitCode::FAILURE)
            }
        }
    })
}

async fn stop(
    tx: &watch::Sender<bool>,
    run: &mut std::pin::Pin<&mut impl std::future::Future<Output = anyhow::Result<()>>>,
    role: Role,
    app: Option<&hastack_config::AppSettings>,
) -> anyhow::Result<()> {
    info!("stopping");
    let _ = tx.send(true);
    match tokio::time::timeout(crate::deadlines::node_stop(role, app), run.as_mut()).await {
        Ok(r) => r,
        Err(_) => {
            warn!(
                "did not stop within {:?}; exiting anyway",
                crate::deadlines::node_stop(role, app)
            );
            Ok(())
        }
    }
}
