//! An app node that runs the team's own application (`[app]` in the topology), the way
//! a PaaS dyno and a database proxy would together.
//!
//! The node stays the tier's front: it takes the web tier's mTLS on `ports.app` and
//! proxies to the app's process on a local address (the same [`hastack_proxy::Proxy`]
//! as the other tiers), answers the web tier's `GET /healthz` from the process's state
//! (503 while it starts, restarts or fails its own health path), and runs the process
//! ([`process`]) with the 12-factor environment: `HOST`/`PORT` to listen on, and the
//! database as `DATABASE_URL` (the writer endpoint), `DATABASE_READ_URL` (the reader
//! endpoint) and the `DB_*` pieces. The endpoints ([`hastack_sqlproxy`]) listen on the
//! same local address and follow the db tier as this node's monitor sees it (the
//! built-in app's [`hastack_app::cluster`] monitor).
//!
//! At start the node runs `[app] release` once with that environment (serialized
//! across app nodes by a MariaDB named lock), then starts the app and is ready when the
//! app answers its health path.

pub mod process;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hyper::{Response, StatusCode};
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tracing::{info, warn};

use hastack_app::cluster::View;
use hastack_config::{AppSettings, Mode, Role, Topology};
use hastack_proxy::{Pool, Proxy, ProxyBody, ProxyOptions};
use hastack_runtime::secrets::DbSecrets;
use hastack_runtime::{Admin, BindError, HealthReport, bind_tcp};
use hastack_sqlproxy::{Endpoint, Login, Routes, Server, Side};
use hastack_status::health::{AppHealth, AppProcess, Health};

use process::{Proc, Spec, State, Supervisor, Tail};

/// How long a request that arrives while the app restarts waits for it.
const HOLD: Duration = Duration::from_secs(5);
/// How long a new writer session waits for a primary (a failover under way).
const DB_WAIT: Duration = Duration::from_secs(5);
/// How long the release (migrations) may run.
pub const RELEASE_TIMEOUT: Duration = Duration::from_secs(600);

/// Why the node could not run the app.
#[derive(Debug, thiserror::Error)]
pub enum AppHostError {
    /// The name is not an app node of the topology.
    #[error("`{0}` is not an app node of this topology")]
    NotAnApp(String),
    /// `[app]` points at something missing on this host.
    #[error("{0}")]
    Config(String),
    /// A socket could not be bound.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// The certificates cannot be used.
    #[error(transparent)]
    Tls(#[from] hastack_tls::TlsError),
    /// The release command failed.
    #[error(
        "{node}: the release command failed: {why}\n  its last lines:\n{tail}\n  help: run it by hand in the app's directory with the same DATABASE_URL to see why; nothing was started"
    )]
    Release {
        /// The node.
        node: String,
        /// What happened.
        why: String,
        /// The last lines it wrote.
        tail: String,
    },
    /// The app never became healthy.
    #[error(
        "{node}: {why}\n  the app's last lines:\n{tail}\n  help: the app must listen on $HOST:$PORT and answer GET {health} with 2xx; run it by hand with HOST and PORT set to see why"
    )]
    NeverHealthy {
        /// The node.
        node: String,
        /// What happened.
        why: String,
        /// The last lines it wrote.
        tail: String,
        /// The health path.
        health: String,
    },
}

/// The database the app gets.
#[derive(Debug, Clone)]
pub enum Database {
    /// The MariaDB tier, through this node's endpoints.
    MariaDb(DbSecrets),
    /// None (the stack runs without `mariadbd`): the app gets no `DATABASE_URL`.
    None,
}

/// The address the app and the endpoints listen on: only this node reaches it. In
/// loopback mode every node shares the host's loopback, so it is the node's own
/// 127.x address; in a namespace or on a server of its own, 127.0.0.1.
pub fn local_host(topo: &Topology, node_address: Ipv4Addr) -> IpAddr {
    match topo.mode {
        Mode::Loopback => IpAddr::V4(node_address),
        Mode::Isolated | Mode::Hosts => IpAddr::V4(Ipv4Addr::LOCALHOST),
    }
}

/// The routes of the endpoints, from the monitor's view of the db tier.
fn routes_of(view: &View, servers: &[Server]) -> Routes {
    Routes {
        writer: view.primary.and_then(|i| servers.get(i).cloned()),
        readers: view
            .readers()
            .filter_map(|i| servers.get(i).cloned())
            .collect(),
    }
}

/// The environment of the app (and of its release command).
fn environment(
    topo: &Topology,
    app: &AppSettings,
    db: Option<(&DbSecrets, SocketAddr, SocketAddr)>,
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = [
        "PATH", "HOME", "LANG", "LC_ALL", "TZ", "USER", "LOGNAME", "TMPDIR",
    ]
    .iter()
    .filter_map(|k| std::env::var(k).ok().map(|v| (k.to_string(), v)))
    .collect();
    if !env.iter().any(|(k, _)| k == "PATH") {
        env.push(("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into()));
    }
    env.extend(app.env.iter().cloned());
    if let Some((secrets, writer, reader)) = db {
        use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
        let user = &topo.db.user;
        let pass = utf8_percent_encode(&secrets.app, NON_ALPHANUMERIC).to_string();
        let name = &topo.db.database;
        let url = |a: SocketAddr| format!("mysql://{user}:{pass}@{}:{}/{name}", a.ip(), a.port());
        env.extend([
            ("DATABASE_URL".into(), url(writer)),
            ("DATABASE_READ_URL".into(), url(reader)),
            ("DB_HOST".into(), writer.ip().to_string()),
            ("DB_PORT".into(), writer.port().to_string()),
            ("DB_READ_PORT".into(), reader.port().to_string()),
            ("DB_USER".into(), user.clone()),
            ("DB_PASSWORD".into(), secrets.app.clone()),
            ("DB_NAME".into(), name.clone()),
        ]);
    }
    env
}

/// The database side of the node: the monitor of the db tier and the two endpoints.
struct DbSide {
    store: hastack_app::Store,
    writer: Arc<Endpoint>,
    reader: Arc<Endpoint>,
    writer_addr: SocketAddr,
    reader_addr: SocketAddr,
}

async fn open_db(
    topo: &Topology,
    node: &hastack_config::Node,
    secrets: &DbSecrets,
    host: IpAddr,
    registry: &mut Registry,
    shutdown: &watch::Receiver<bool>,
) -> Result<DbSide, AppHostError> {
    let tls = if topo.tls.internal {
        Some(
            hastack_tls::pki::node_files(&topo.state_dir, &node.name, IpAddr::V4(node.address))
                .map_err(|e| AppHostError::Config(format!("internal CA: {e}")))?,
        )
    } else {
        None
    };
    let targets: Vec<hastack_app::MariaDbTarget> = topo
        .tier(Role::Db)
        .map(|n| hastack_app::MariaDbTarget {
            name: n.name.clone(),
            host: n.address.to_string(),
            port: topo.ports.db,
        })
        .collect();
    let account = hastack_app::MariaDbAccount {
        database: topo.db.database.clone(),
        user: topo.db.user.clone(),
        password: secrets.app.clone(),
        tls: tls.clone(),
    };
    let store = hastack_app::Store::mariadb(
        &targets,
        &account,
        hastack_app::Limits::from_settings(&topo.db),
        hastack_app::AppMetrics::default(),
    );
    // The monitor runs as long as the node.
    let _monitor = store.spawn_monitor(shutdown.clone());
    let servers: Vec<Server> = topo
        .tier(Role::Db)
        .map(|n| Server {
            name: n.name.clone(),
            addr: SocketAddr::from((n.address, topo.ports.db)),
        })
        .collect();
    let view = store
        .view()
        .ok_or_else(|| AppHostError::Config("the MariaDB store has no monitor".into()))?;
    let (routes_tx, routes) = watch::channel(Arc::new(routes_of(&view.borrow(), &servers)));
    {
        let mut view = view.clone();
        let mut shutdown = shutdown.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    r = view.changed() => if r.is_err() { return },
                    _ = shutdown.changed() => return,
                }
                let next = routes_of(&view.borrow_and_update(), &servers);
                routes_tx.send_if_modified(|r| {
                    if **r == next {
                        false
                    } else {
                        *r = Arc::new(next);
                        true
                    }
                });
            }
        });
    }
    let client_tls = match &tls {
        Some(_) => {
            let node_tls = hastack_tls::NodeTls::open(topo, node, &mut Registry::default())?;
            Some(node_tls.db_client()?)
        }
        None => None,
    };
    let login = Login {
        user: topo.db.user.clone(),
        password: secrets.app.clone(),
        tls: client_tls,
    };
    let mut endpoint = |side: Side| -> Result<
        (Arc<Endpoint>, tokio::net::TcpListener, SocketAddr),
        AppHostError,
    > {
        let listener = bind_tcp(SocketAddr::new(host, 0), "database endpoint", false)?;
        let addr = listener.local_addr().map_err(|e| BindError {
            addr: SocketAddr::new(host, 0),
            what: "database endpoint",
            source: e,
        })?;
        Ok((
            Endpoint::new(side, login.clone(), DB_WAIT, routes.clone(), registry),
            listener,
            addr,
        ))
    };
    let (writer, wl, writer_addr) = endpoint(Side::Writer)?;
    let (reader, rl, reader_addr) = endpoint(Side::Reader)?;
    tokio::spawn(writer.clone().serve(wl, shutdown.clone()));
    tokio::spawn(reader.clone().serve(rl, shutdown.clone()));
    info!(writer = %writer_addr, reader = %reader_addr, "database endpoints ready");
    Ok(DbSide {
        store,
        writer,
        reader,
        writer_addr,
        reader_addr,
    })
}

/// Runs `[app] release` with the app's environment, holding a MariaDB named lock on
/// the writer endpoint (when there is a database) so that app nodes starting together
/// run it one after another.
async fn release(
    node: &str,
    app: &AppSettings,
    env: &[(String, String)],
    tail: &Tail,
) -> Result<(), AppHostError> {
    let Some(argv) = &app.release else {
        return Ok(());
    };
    let lock = match env.iter().find(|(k, _)| k == "DATABASE_URL") {
        Some((_, url)) => match lock_release(url).await {
            Ok(c) => Some(c),
            Err(e) => {
                warn!(error = %e, "could not take the release lock; running the release without it");
                None
            }
        },
        None => None,
    };
    info!(command = %argv.join(" "), "running the release command");
    let r = process::run_once(argv, &app.dir, env, tail, RELEASE_TIMEOUT).await;
    if let Some(c) = lock {
        use sqlx::Connection;
        let _ = c.close().await;
    }
    r.map_err(|why| AppHostError::Release {
        node: node.into(),
        why,
        tail: tail.quoted(),
    })
}

async fn lock_release(url: &str) -> Result<sqlx::MySqlConnection, sqlx::Error> {
    use sqlx::{Connection, Executor};
    let mut conn = sqlx::MySqlConnection::connect(url).await?;
    conn.execute("SELECT GET_LOCK('hastack_release', 600)")
        .await?;
    Ok(conn)
}

/// How an app node runs the team's app.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// Do not run `[app] release` at start (a deploy ran it once before the rollout).
    pub skip_release: bool,
    /// Run `[app] release` with this node's endpoints, then return.
    pub release_only: bool,
}

/// Runs app node `name` with the team's app until `shutdown` turns true.
pub async fn run(
    topo: &Topology,
    name: &str,
    database: Database,
    opts: RunOptions,
    shutdown: watch::Receiver<bool>,
) -> Result<(), AppHostError> {
    let node = topo
        .node(name)
        .filter(|n| n.role == Role::App)
        .ok_or_else(|| AppHostError::NotAnApp(name.to_string()))?;
    let Some(app) = &topo.app else {
        return Err(AppHostError::Config("the topology has no [app]".into()));
    };
    app.check_on_this_host()
        .map_err(|errors| AppHostError::Config(errors.to_string()))?;
    let host = local_host(topo, node.address);
    let mut registry = Registry::default();
    // The order of a stop: the front drains its requests, then the app stops, then the
    // database endpoints close (the app's last requests still use them). Until the
    // front serves, the node's stop reaches both at once.
    let (app_stop_tx, app_stop) = watch::channel(false);
    let (db_stop_tx, db_stop) = watch::channel(false);
    let early_stop = {
        let mut shutdown = shutdown.clone();
        let (app_stop_tx, db_stop_tx) = (app_stop_tx.clone(), db_stop_tx.clone());
        tokio::spawn(async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
            app_stop_tx.send_replace(true);
            db_stop_tx.send_replace(true);
        })
    };
    let db = match &database {
        Database::MariaDb(secrets) => {
            Some(open_db(topo, node, secrets, host, &mut registry, &db_stop).await?)
        }
        Database::None => {
            warn!(
                "no MariaDB in this stack (mariadbd is not installed): the app gets no DATABASE_URL"
            );
            None
        }
    };
    let env = environment(
        topo,
        app,
        match (&database, &db) {
            (Database::MariaDb(s), Some(d)) => Some((s, d.writer_addr, d.reader_addr)),
            _ => None,
        },
    );
    let tail = Tail::default();
    if opts.release_only {
        return release(name, app, &env, &tail).await;
    }
    let run_dir = topo.state_dir.join("app");
    std::fs::create_dir_all(&run_dir)
        .map_err(|e| AppHostError::Config(format!("{}: {e}", run_dir.display())))?;
    let pgid_file = run_dir.join(format!("{name}.pgid"));
    let reaped = process::reap_leftovers(&pgid_file);
    if reaped > 0 {
        warn!(
            processes = reaped,
            "ended the app processes a previous run of this node left behind"
        );
    }
    if !opts.skip_release {
        release(name, app, &env, &tail).await?;
    }

    let spec = Spec {
        argv: app.command.clone(),
        dir: app.dir.clone(),
        env,
        host,
        health: app.health.clone(),
        start_timeout: app.start_timeout,
        stop_timeout: app.stop_timeout,
        interval: topo.health.interval,
        check_timeout: topo.health.timeout,
        fall: topo.health.fall,
        rise: topo.health.rise,
        pgid_file,
    };
    let (supervisor, proc) = Supervisor::new(spec, tail.clone());
    let (first_tx, first_rx) = tokio::sync::oneshot::channel();
    let supervisor_task = tokio::spawn(supervisor.run(app_stop, first_tx));
    match first_rx.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            let _ = supervisor_task.await;
            return Err(AppHostError::NeverHealthy {
                node: name.into(),
                why: e.0,
                tail: tail.quoted(),
                health: app.health.clone(),
            });
        }
        // The supervisor stopped before a verdict: the node is stopping.
        Err(_) => return Ok(()),
    }
    early_stop.abort();

    let pool = process_pool(name, proc.clone(), &mut registry, shutdown.clone());
    let opts = ProxyOptions::new(name).with_http(&topo.http);
    let proxy = Proxy::new(opts, pool, &mut registry);

    let acceptor =
        hastack_tls::NodeTls::internal_acceptor_of(topo, node, &mut registry, shutdown.clone())?;
    let service_addr = SocketAddr::from((node.address, topo.ports.app));
    let listener = bind_tcp(service_addr, "http", false)?;
    let admin_listener = bind_tcp(topo.admin_addr(node), "admin", false)?;
    let door = hastack_runtime::front_door::FrontDoor::for_topology(&topo.http, &mut registry);

    let draining = drain_on_usr1()?;
    let db = db.map(Arc::new);
    let probe = {
        let proc = proc.clone();
        let db = db.clone();
        let name = name.to_string();
        let dir = app.dir.display().to_string();
        let proxy = proxy.clone();
        Arc::new(move || {
            let proc = proc.borrow().clone();
            let db = db.clone();
            let name = name.clone();
            let dir = dir.clone();
            let traffic = proxy.traffic();
            Box::pin(async move { health_report(&name, &dir, &proc, db.as_deref(), traffic).await })
                as _
        })
    };
    let admin = Admin::new(probe, registry);
    let admin_task = tokio::spawn(admin.serve(admin_listener, shutdown.clone()));

    info!(node = name, addr = %service_addr, "app node ready (the team's app)");
    let serving = hastack_runtime::Serving {
        tls: acceptor,
        proxy_header: hastack_runtime::ProxyHeader::Never,
        door,
        limits: None,
    };
    hastack_runtime::serve_with(
        listener,
        serving,
        move |req: hyper::Request<hyper::body::Incoming>, peer| {
            handle(
                proxy.clone(),
                proc.clone(),
                draining.load(Ordering::Relaxed),
                req,
                peer,
            )
        },
        shutdown,
    )
    .await;
    app_stop_tx.send_replace(true);
    let _ = supervisor_task.await;
    db_stop_tx.send_replace(true);
    let _ = admin_task.await;
    Ok(())
}

/// The proxy's pool: the one process, at its address of the moment (a restart moves
/// it to a new port).
fn process_pool(
    name: &str,
    mut proc: watch::Receiver<Proc>,
    registry: &mut Registry,
    mut shutdown: watch::Receiver<bool>,
) -> Arc<Pool> {
    let mut current = proc.borrow().addr;
    let server = |a: SocketAddr| vec![(name.to_string(), a)];
    let pool = Pool::new(
        "app",
        &current.map(server).unwrap_or_default(),
        None,
        registry,
    );
    let (pool2, name) = (pool.clone(), name.to_string());
    tokio::spawn(async move {
        loop {
            tokio::select! {
                r = proc.changed() => if r.is_err() { return },
                _ = shutdown.changed() => return,
            }
            let addr = proc.borrow_and_update().addr;
            if addr != current {
                current = addr;
                if let Some(a) = addr {
                    pool2.update(&[(name.clone(), a)], hastack_proxy::PoolOptions::default());
                }
            }
        }
    });
    pool
}

/// SIGUSR1 (from `hastack deploy`) sets the flag: the web tier's checks get 503, so it
/// takes this node out, while requests already sent here are still served.
fn drain_on_usr1() -> Result<Arc<AtomicBool>, AppHostError> {
    let draining = Arc::new(AtomicBool::new(false));
    let mut usr1 = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())
        .map_err(|e| AppHostError::Config(format!("SIGUSR1: {e}")))?;
    let flag = draining.clone();
    tokio::spawn(async move {
        while usr1.recv().await.is_some() {
            info!("draining: the web tier's checks now fail here; requests in flight go on");
            flag.store(true, Ordering::Relaxed);
        }
    });
    Ok(draining)
}

/// One request of the web tier: `/healthz` from the process's state, the rest to the
/// process. A request that comes while the app restarts waits for it a little (the
/// web tier stops sending here within a health-check interval).
async fn handle(
    proxy: Arc<Proxy>,
    mut proc: watch::Receiver<Proc>,
    draining: bool,
    req: hyper::Request<hyper::body::Incoming>,
    peer: SocketAddr,
) -> Response<ProxyBody> {
    if req.uri().path() == "/healthz" {
        return front_health(&proxy, &proc.borrow(), draining);
    }
    if proc.borrow().state != State::Ready {
        let ready = tokio::time::timeout(
            HOLD,
            proc.wait_for(|p| matches!(p.state, State::Ready | State::Stopped)),
        )
        .await;
        if !matches!(ready, Ok(Ok(p)) if p.state == State::Ready) {
            let mut resp = proxy.local_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "the app is not ready on this node",
            );
            resp.headers_mut().insert(
                hyper::header::RETRY_AFTER,
                hyper::header::HeaderValue::from_static("1"),
            );
            return resp;
        }
    }
    proxy.forward(req, peer).await
}

/// The web tier's health check: 200 while the app is ready and the node not draining.
fn front_health(proxy: &Proxy, p: &Proc, draining: bool) -> Response<ProxyBody> {
    let ready = p.state == State::Ready && !draining;
    let state = if draining {
        "draining"
    } else {
        p.state.as_str()
    };
    let body = serde_json::json!({ "role": "app", "app": state }).to_string();
    let mut resp = Response::new(ProxyBody::full(body));
    *resp.status_mut() = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    proxy.stamp(&mut resp);
    resp
}

async fn health_report(
    node: &str,
    dir: &str,
    p: &Proc,
    db: Option<&DbSide>,
    traffic: hastack_status::health::Traffic,
) -> HealthReport {
    let process = AppProcess {
        state: p.state.as_str().into(),
        pid: p.pid,
        address: p.addr.map(|a| a.to_string()),
        dir: dir.into(),
        restarts: p.restarts,
        last_exit: p.last_exit.clone(),
    };
    let (engine, h, endpoints) = match db {
        Some(d) => (
            "mariadb",
            Some(d.store.health().await),
            vec![d.writer.status(), d.reader.status()],
        ),
        None => ("none", None, Vec::new()),
    };
    let h = h.unwrap_or_else(|| hastack_app::store::DbHealth {
        can_read: false,
        can_write: false,
        primary: None,
        replicas: Vec::new(),
        problem: Some("no database in this stack".into()),
        db_tls: None,
    });
    HealthReport {
        healthy: p.state == State::Ready,
        body: Health::App(AppHealth {
            process: Some(process),
            endpoints,
            ..h.app_health(node, engine, traffic)
        }),
    }
}
