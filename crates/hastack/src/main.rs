//! `hastack`: the one binary that plays every role of the topology.
//!
//! - `up` runs the whole topology on this machine ([`supervisor`]);
//! - `node NAME` runs one node (what `up` spawns and what systemd would run) ([`node`]);
//! - `status`, `stop`, `start`, `kill`, `down`, `db rebuild` talk to a running `up`
//!   ([`control`]);
//! - `drill db-failover` injects a failure under traffic and reports ([`drill`]);
//! - `check` validates a topology file, `config` prints the built-in one.

mod control;
mod drill;
mod http_get;
mod node;
mod supervisor;

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
    },
    /// Validate a topology file.
    Check {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Print the built-in topology, a starting point for your own file.
    Config,
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
    /// Stop every node and the supervisor.
    Down {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Database tier operations.
    Db {
        #[command(subcommand)]
        op: DbOp,
    },
    /// Inject a failure into the running stack under traffic and report what users saw.
    Drill {
        #[command(subcommand)]
        drill: Drill,
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
    /// SIGKILL the database primary under writes and reads; start it again; report write
    /// and read gaps, acknowledged writes lost, duplicates, and the old primary's rejoin.
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
}

/// Loads the topology named by `--config`, or the built-in one.
fn load(config: &ConfigArg) -> anyhow::Result<Topology> {
    match &config.config {
        Some(path) => Topology::load(path).map_err(|e| anyhow::anyhow!("{e}")),
        None => Ok(Topology::default_topology()),
    }
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
        Cmd::Up { config } => supervisor::up(&config.config),
        Cmd::Node {
            name,
            config,
            state_dir,
            sqlite,
        } => node::main(&name, &config.config, state_dir, sqlite),
        Cmd::Status { config, json } => control::status(&config, json),
        Cmd::Stop { node, config } => control::simple(&config, "stop", &node),
        Cmd::Start { node, config } => control::simple(&config, "start", &node),
        Cmd::Kill { node, config } => control::simple(&config, "kill", &node),
        Cmd::Down { config } => control::simple(&config, "down", ""),
        Cmd::Db {
            op: DbOp::Rebuild { node, from, config },
        } => control::rebuild(&config, &node, from),
        Cmd::Drill {
            drill:
                Drill::DbFailover {
                    config,
                    cut_replication,
                    json,
                },
        } => load(&config).and_then(|t| drill::db_failover(&t, cut_replication, json)),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("hastack: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check(config: &ConfigArg) -> anyhow::Result<ExitCode> {
    match load(config) {
        Ok(t) => {
            let source = t.source.display();
            println!(
                "{source}: ok — {} nodes ({} lb, {} web, {} app, {} db), site {} on {}",
                t.nodes.len(),
                t.tier(hastack_config::Role::Lb).count(),
                t.tier(hastack_config::Role::Web).count(),
                t.tier(hastack_config::Role::App).count(),
                t.tier(hastack_config::Role::Db).count(),
                t.site,
                t.site_url()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("{e}");
            Ok(ExitCode::from(2))
        }
    }
}
