//! `hastack`: the one binary that plays every role of the topology.
//!
//! - `up` runs the whole topology on this machine ([`supervisor`]);
//! - `node NAME` runs one node (what `up` spawns and what systemd would run) ([`node`]);
//! - `status`, `stop`, `start`, `kill`, `down`, `db rebuild` talk to a running `up`
//!   ([`control`]);
//! - `drill lb-failover|web-failover|app-failover|db-failover|all` inject a failure
//!   under traffic and report what users saw, the same figures for each ([`drill`]);
//! - `exec NODE -- CMD` runs a command in a node's namespace of an isolated stack
//!   ([`netns`] makes them);
//! - `top` shows the stack live in the terminal, `metrics` prints the Prometheus scrape
//!   configuration of its nodes ([`top`]); `up` also serves the live dashboard
//!   ([`hastack_status::dashboard`]);
//! - `check` validates a topology file, `config` prints the built-in one;
//! - `export haproxy|keepalived|nginx` prints the incumbents' configuration of a node
//!   ([`export`](mod@export)).

mod control;
mod deadlines;
mod dns_node;
mod drill;
mod export;
use hastack_status::http as http_get;
mod lb_ctl;
mod logs;
mod netns;
mod node;
mod supervisor;
mod systemd;
mod top;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use hastack_config::Topology;

/// mimalloc: the proxy path allocates per request (headers, bodies); glibc's malloc
/// measured slower under that load (bench/run.sh).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "hastack",
    version,
    about = "A highly available website in one binary: VRRP load balancers, web servers, app servers and MariaDB with replication."
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(clap::Args, Clone)]
struct ConfigArg {
    /// The topology file (default: the built-in seed topology; `hastack config` prints it).
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the whole topology on this machine, in the foreground (Ctrl-C stops it).
    Up {
        #[command(flatten)]
        config: ConfigArg,
        /// Every node in a network namespace of its own, on a bridge, firewalled per
        /// tier; real VRRP and a real VIP (root; needs iproute2 and nftables).
        #[arg(long)]
        isolated: bool,
    },
    /// Run one node of the topology.
    Node {
        /// The node's name in the topology.
        name: String,
        #[command(flatten)]
        config: ConfigArg,
        /// Where node state lives (default: the topology's state_dir, from the working directory).
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
        /// App nodes: keep data in this SQLite file instead of the MariaDB tier.
        #[arg(long, value_name = "FILE")]
        sqlite: Option<PathBuf>,
        /// Run as a node of `hastack up --isolated` (a loopback topology's nodes are
        /// placed in site.subnet).
        #[arg(long)]
        isolated: bool,
        #[command(flatten)]
        app: node::AppArgs,
    },
    /// Print the systemd unit that runs node NAME on its own server (mode "hosts").
    Systemd {
        /// The node's name in the topology.
        node: String,
        #[command(flatten)]
        config: ConfigArg,
        /// Where the hastack binary is installed on the server.
        #[arg(long, value_name = "PATH", default_value = "/usr/local/bin/hastack")]
        exe: PathBuf,
        /// The node's state directory on the server.
        #[arg(long, value_name = "DIR", default_value = "/var/lib/hastack")]
        state_dir: PathBuf,
    },
    /// Run a command in a node's (or the client's) network namespace of an isolated
    /// stack, e.g. `hastack exec client -- curl -s http://10.77.0.100:8080/`.
    Exec {
        /// A node's name, or `client`.
        node: String,
        #[command(flatten)]
        config: ConfigArg,
        /// The command and its arguments.
        #[arg(last = true, required = true, value_name = "CMD")]
        command: Vec<String>,
    },
    /// Validate a topology file.
    Check {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Print the built-in topology, a starting point for your own file.
    Config,
    /// Print the configuration of the incumbent that does what a node does (HAProxy or
    /// keepalived for an lb node, nginx for a web node), for teams that migrate or
    /// compare; what it cannot express is said in `# not translated:` comments.
    Export {
        /// Which configuration.
        #[arg(value_enum)]
        what: export::Target,
        /// The node (default: the first lb node, or for nginx the first web node).
        #[arg(long, value_name = "NAME")]
        node: Option<String>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// The running stack live in the terminal: the VIP's holder, the db primary, every
    /// node's health and requests per second, the last events (the dashboard's view).
    Top {
        #[command(flatten)]
        config: ConfigArg,
        /// Print this many pictures, one a second, and exit (default: until Ctrl-C).
        #[arg(long, value_name = "N")]
        frames: Option<u64>,
    },
    /// Print a Prometheus scrape configuration listing every node's /metrics.
    Metrics {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Show the nodes of the running stack.
    Status {
        #[command(flatten)]
        config: ConfigArg,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Stop a node gracefully (SIGTERM).
    Stop {
        /// Node name.
        node: String,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Start a stopped or dead node and wait until it is ready.
    Start {
        /// Node name.
        node: String,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Kill a node with SIGKILL, as a crash would.
    Kill {
        /// Node name.
        node: String,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Roll a new version of the team's app ([app]) through the app nodes, one at a
    /// time, with no failed request: `release` once, then drain, restart, check, re-add.
    Deploy {
        #[command(flatten)]
        config: ConfigArg,
        /// The new version's directory (default: [app] dir, as it is now).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Stop every node and the supervisor.
    Down {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// The internal CA (`<state_dir>/pki/`): its certificate for the site and one per node.
    Pki {
        #[command(subcommand)]
        op: PkiOp,
    },
    /// Database tier operations.
    Db {
        #[command(subcommand)]
        op: DbOp,
    },
    /// Runtime control of the load balancers: see and change how they use the web nodes,
    /// without a reload.
    Lb {
        #[command(subcommand)]
        op: LbOp,
    },
    /// Read the topology file again. Under `hastack up`: web and app nodes added to the
    /// file are started and taken into the pools above them once healthy, removed ones
    /// are drained and stopped, and every lb and web node reads the file (no request
    /// fails). Without a supervisor, or with --lb: the lb nodes apply what changed (web
    /// nodes, weights, [lb] and [http] settings), the same as SIGHUP to each.
    Reload {
        #[command(flatten)]
        target: LbTarget,
    },
    /// Inject a failure into the running stack under traffic and report what users saw.
    Drill {
        #[command(subcommand)]
        drill: Drill,
    },
}

#[derive(Subcommand)]
enum PkiOp {
    /// Create the CA and every certificate the topology needs (for hosts mode: run it
    /// once, then copy the pki/ directory to every server).
    Init {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Re-issue the certificates that expire within 30 days (all with --force); running
    /// nodes serve the new ones within a second, without a restart.
    Renew {
        #[command(flatten)]
        config: ConfigArg,
        /// Re-issue every certificate, due or not.
        #[arg(long)]
        force: bool,
    },
}

/// Which lb nodes a command goes to.
#[derive(clap::Args, Clone)]
struct LbTarget {
    #[command(flatten)]
    config: ConfigArg,
    /// Only this lb node (default: every lb node of the topology).
    #[arg(long, value_name = "NODE")]
    lb: Option<String>,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum LbOp {
    /// Show the web nodes as each lb sees them: health, state, weight, requests in flight.
    Show {
        #[command(flatten)]
        target: LbTarget,
    },
    /// Send no new clients to SERVER; clients stuck to it by the sticky cookie stay.
    Drain {
        /// The web node.
        server: String,
        #[command(flatten)]
        target: LbTarget,
    },
    /// Take SERVER out of service entirely (maintenance).
    Maint {
        /// The web node.
        server: String,
        #[command(flatten)]
        target: LbTarget,
    },
    /// Put SERVER back in service after drain or maint.
    Ready {
        /// The web node.
        server: String,
        #[command(flatten)]
        target: LbTarget,
    },
    /// Give SERVER a new weight (0..=256) until the next reload.
    Weight {
        /// The web node.
        server: String,
        /// The new weight.
        weight: u32,
        #[command(flatten)]
        target: LbTarget,
    },
}

#[derive(Subcommand)]
enum DbOp {
    /// Re-seed a db node whose history diverged: stop it, copy a running node's data
    /// with mariadb-backup (the old datadir is kept), start it as a replica.
    Rebuild {
        /// The db node to re-seed.
        node: String,
        /// The node to copy from (default: a healthy replica, else the primary).
        #[arg(long, value_name = "NODE")]
        from: Option<String>,
        #[command(flatten)]
        config: ConfigArg,
    },
}

#[derive(Subcommand)]
enum Drill {
    /// Take the master lb away under traffic (its link cut on an isolated stack, its
    /// process killed, a graceful stop), each followed by its return.
    LbFailover {
        #[command(flatten)]
        config: ConfigArg,
        /// The faults, in order (default: link,kill,stop isolated; kill,stop on loopback).
        #[arg(long, value_delimiter = ',')]
        faults: Option<Vec<drill::Fault>>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// SIGKILL a web node under traffic, then start it again.
    WebFailover {
        #[command(flatten)]
        config: ConfigArg,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// SIGKILL an app node under traffic, then start it again.
    AppFailover {
        #[command(flatten)]
        config: ConfigArg,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// SIGKILL the database primary under writes and reads, then start it again; also
    /// checks for duplicates, two writable servers and the old primary's rejoin.
    DbFailover {
        #[command(flatten)]
        config: ConfigArg,
        /// Stop the replicas' replication stream for a second before the kill.
        #[arg(long)]
        cut_replication: bool,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Every drill in turn: lb, web, app, db.
    All {
        #[command(flatten)]
        config: ConfigArg,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

/// Sends `cmd` to the lb nodes `target` names.
fn lb_command(target: &LbTarget, cmd: hastack_lb::control::Command) -> anyhow::Result<ExitCode> {
    lb_ctl::run(&target.config, target.lb.as_deref(), cmd, target.json)
}

/// Loads the topology named by `--config`, or the built-in one — as the running stack
/// sees it: placed in its subnet when it runs isolated.
fn load(config: &ConfigArg) -> anyhow::Result<Topology> {
    let topo = match &config.config {
        Some(path) => Topology::load(path).map_err(|e| anyhow::anyhow!("{e}"))?,
        None => Topology::default_topology(),
    };
    if topo.mode == hastack_config::Mode::Loopback && isolated_marker(&state_dir(&topo)?).exists() {
        return topo.isolated().map_err(|e| anyhow::anyhow!("{e}"));
    }
    Ok(topo)
}

/// The file whose presence says the stack of this state directory runs isolated.
fn isolated_marker(state_dir: &Path) -> PathBuf {
    state_dir.join("isolated")
}

/// `hastack systemd NAME`: prints the node's unit file.
fn systemd(
    config: &ConfigArg,
    node: &str,
    exe: &Path,
    state_dir: &Path,
) -> anyhow::Result<ExitCode> {
    let topo = load(config)?;
    let n = topo
        .node(node)
        .with_context(|| format!("no node `{node}` in {}", topo.source.display()))?;
    let cwd = std::env::current_dir().context("reading the working directory")?;
    let file = match &config.config {
        Some(p) => absolute(&cwd, p),
        None => anyhow::bail!(
            "give the topology file the server will read: hastack systemd {node} --config /etc/hastack/hastack.toml"
        ),
    };
    print!(
        "{}",
        systemd::unit(
            &topo,
            n,
            &absolute(&cwd, exe),
            &file,
            &absolute(&cwd, state_dir)
        )
    );
    Ok(ExitCode::SUCCESS)
}

/// `hastack export haproxy|keepalived|nginx [--node NAME]`: prints the incumbent's
/// configuration of the node.
fn export(
    config: &ConfigArg,
    what: export::Target,
    node: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let mut topo = load(config)?;
    // The files name the state directory, the site's root and the certificates: made
    // absolute, they hold wherever the incumbent is started from.
    let cwd = std::env::current_dir().context("reading the working directory")?;
    topo.state_dir = absolute(&cwd, &topo.state_dir);
    if let Some(root) = &topo.web.root {
        topo.web.root = Some(absolute(&cwd, root));
    }
    for c in &mut topo.tls.certificates {
        c.cert = absolute(&cwd, &c.cert);
        c.key = absolute(&cwd, &c.key);
    }
    print!("{}", export::export(&topo, what, node)?);
    Ok(ExitCode::SUCCESS)
}

/// `hastack exec NODE -- CMD`: runs CMD in the node's network namespace.
fn exec(config: &ConfigArg, node: &str, command: &[String]) -> anyhow::Result<ExitCode> {
    use std::os::unix::process::CommandExt;
    let topo = load(config)?;
    if node != "client" && topo.node(node).is_none() {
        anyhow::bail!(
            "no node `{node}` in {} (name a node, or `client`)",
            topo.source.display()
        );
    }
    let net = netns::Network::of(&state_dir(&topo)?);
    let path = net.path(node);
    let ns = std::fs::File::open(&path).with_context(|| {
        format!(
            "no isolated stack runs here: {} is missing (start one with `hastack up --isolated`)",
            path.display()
        )
    })?;
    nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
        .with_context(|| format!("entering {}", path.display()))?;
    let (prog, args) = command
        .split_first()
        .context("no command given: hastack exec NODE -- CMD [ARGS…]")?;
    let err = std::process::Command::new(prog).args(args).exec();
    Err(anyhow::anyhow!("running {prog}: {err}"))
}

/// The topology's state directory, absolute.
fn state_dir(topo: &Topology) -> anyhow::Result<PathBuf> {
    let cwd = std::env::current_dir().context("reading the working directory")?;
    Ok(absolute(&cwd, &topo.state_dir))
}

fn absolute(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Config => {
            print!("{}", hastack_config::DEFAULT_TOPOLOGY);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Check { config } => check(&config),
        Cmd::Export { what, node, config } => export(&config, what, node.as_deref()),
        Cmd::Up { config, isolated } => supervisor::up(&config.config, isolated),
        Cmd::Node {
            name,
            config,
            state_dir,
            sqlite,
            isolated,
            app,
        } => node::main(&name, &config.config, state_dir, sqlite, isolated, app),
        Cmd::Exec {
            node,
            config,
            command,
        } => exec(&config, &node, &command),
        Cmd::Systemd {
            node,
            config,
            exe,
            state_dir,
        } => systemd(&config, &node, &exe, &state_dir),
        Cmd::Status { config, json } => control::status(&config, json),
        Cmd::Top { config, frames } => top::top(&config, frames),
        Cmd::Metrics { config } => load(&config).map(|topo| {
            print!("{}", top::scrape_config(&topo));
            ExitCode::SUCCESS
        }),
        Cmd::Stop { node, config } => control::simple(&config, "stop", &node),
        Cmd::Start { node, config } => control::simple(&config, "start", &node),
        Cmd::Kill { node, config } => control::simple(&config, "kill", &node),
        Cmd::Down { config } => control::down(&config),
        Cmd::Deploy { config, dir } => control::deploy(&config, dir),
        Cmd::Db {
            op: DbOp::Rebuild { node, from, config },
        } => control::rebuild(&config, &node, from),
        Cmd::Pki {
            op: PkiOp::Init { config },
        } => pki(&config, false),
        Cmd::Pki {
            op: PkiOp::Renew { config, force },
        } => pki(&config, force),
        Cmd::Reload { target } if target.lb.is_none() && control::running(&target.config) => {
            control::reload(&target.config)
        }
        Cmd::Reload { target } => lb_command(&target, hastack_lb::control::Command::Reload),
        Cmd::Lb { op } => {
            use hastack_lb::control::Command as C;
            let state = |server: String, state: &str| C::State {
                server,
                state: state.to_string(),
            };
            match op {
                LbOp::Show { target } => lb_command(&target, C::Show),
                LbOp::Drain { server, target } => lb_command(&target, state(server, "drain")),
                LbOp::Maint { server, target } => lb_command(&target, state(server, "maint")),
                LbOp::Ready { server, target } => lb_command(&target, state(server, "ready")),
                LbOp::Weight {
                    server,
                    weight,
                    target,
                } => lb_command(&target, C::Weight { server, weight }),
            }
        }
        Cmd::Drill { drill } => {
            let (config, which, json) = match drill {
                Drill::LbFailover {
                    config,
                    faults,
                    json,
                } => (config, drill::Which::Lb(faults), json),
                Drill::WebFailover { config, json } => (config, drill::Which::Web, json),
                Drill::AppFailover { config, json } => (config, drill::Which::App, json),
                Drill::DbFailover {
                    config,
                    cut_replication,
                    json,
                } => (config, drill::Which::Db { cut_replication }, json),
                Drill::All { config, json } => (config, drill::Which::All, json),
            };
            load(&config).and_then(|t| drill::run(&t, which, json))
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("hastack: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Issues the certificates of the topology that are missing or due (all with `force`).
fn pki(config: &ConfigArg, force: bool) -> anyhow::Result<ExitCode> {
    let mut topo = load(config)?;
    topo.state_dir = state_dir(&topo)?;
    let pki = hastack_tls::pki::Pki::new(&topo.state_dir);
    let issued = pki
        .ensure(&hastack_tls::node::identities(&topo), force)
        .context("issuing certificates")?;
    if issued.is_empty() {
        println!("{}: every certificate is current", pki.dir().display());
    } else {
        for stem in &issued {
            println!("issued {}", pki.cert(stem).display());
        }
    }
    println!("CA: {}", pki.ca_cert().display());
    Ok(ExitCode::SUCCESS)
}

fn check(config: &ConfigArg) -> anyhow::Result<ExitCode> {
    match load(config) {
        Ok(t) => {
            // The topology's own certificates: they load, each key is its certificate's,
            // and one covers the site name.
            if !t.tls.certificates.is_empty()
                && let Err(e) = hastack_tls::node::site_certificates(&t)
            {
                eprintln!("{}: error: {e}", t.source.display());
                return Ok(ExitCode::from(2));
            }
            // The team's app: on one machine its directory and program are here to
            // look at; in hosts mode each app server checks them when its node starts.
            if let Some(app) = &t.app
                && t.mode != hastack_config::Mode::Hosts
                && let Err(errors) = app.check_on_this_host()
            {
                eprintln!("{errors}");
                return Ok(ExitCode::from(2));
            }
            let source = t.source.display();
            let tiers: Vec<String> = hastack_config::Role::ALL
                .iter()
                .map(|r| (r, t.tier(*r).count()))
                .filter(|(_, n)| *n > 0)
                .map(|(r, n)| format!("{n} {r}"))
                .collect();
            println!(
                "{source}: ok — {} nodes ({}), site {} on {}",
                t.nodes.len(),
                tiers.join(", "),
                t.site,
                t.site_url()
            );
            if let Some(app) = &t.app {
                println!(
                    "app: `{}` in {} (health {})",
                    app.command.join(" "),
                    app.dir.display(),
                    app.health
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("{e}");
            Ok(ExitCode::from(2))
        }
    }
}
