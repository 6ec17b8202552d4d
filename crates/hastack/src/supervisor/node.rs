//! One task per node: it owns the node's child process, its readiness probe and its
//! stop escalation, and publishes where the node is on a `watch` channel.
//!
//! Nobody else touches the child: the supervisor sends [`Command`]s through the
//! node's [`NodeHandle`] and reads its [`View`] from the channel, so there is no
//! shared process table to lock, search by name or poll. The rules of what may
//! happen when are the pure [`Lifecycle`]; this task only carries them out.
//!
//! The task runs on the supervisor's current-thread runtime, so every child is forked
//! from the main thread (`PR_SET_PDEATHSIG` fires when the forking *thread* exits).

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{Child, Command as Process};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use hastack_config::{Node, Role};

use super::lifecycle::{Lifecycle, Stop, View};
use crate::deadlines;
use crate::http_get;
use crate::logs;

/// Everything needed to spawn `hastack node NAME`.
#[derive(Debug)]
pub(super) struct Launch {
    pub(super) exe: PathBuf,
    pub(super) config_path: PathBuf,
    pub(super) state_dir: PathBuf,
    /// For an app node of a stack without MariaDB: the SQLite file.
    pub(super) sqlite: Option<PathBuf>,
    /// Isolated mode: the node's network namespace.
    pub(super) netns: Option<PathBuf>,
    /// Where `/healthz` is answered.
    pub(super) admin: SocketAddr,
    /// App nodes with `[app]`: the version of the app to run (`None`: `[app] dir`),
    /// and whether its release already ran (a deploy runs it once for all nodes).
    pub(super) app: Option<(PathBuf, bool)>,
    /// App nodes with `[app]`: its settings (its deadlines derive from them).
    pub(super) app_settings: Option<hastack_config::AppSettings>,
}

impl Launch {
    pub(super) fn log_path(&self, name: &str) -> PathBuf {
        self.state_dir.join("logs").join(format!("{name}.log"))
    }
}

/// What the supervisor asks of a node's task.
enum Command {
    /// Spawn the node and answer once it is ready (how long that took) or failed.
    Start(oneshot::Sender<Result<Duration, String>>),
    /// Stop it and answer once its process has exited. `quiet`: a node that is not
    /// running is no error (the supervisor shutting down).
    Stop {
        how: Stop,
        quiet: bool,
        reply: oneshot::Sender<Result<String, String>>,
    },
    /// From the next start on, run the app from this directory; `true`: its release ran.
    UseApp(PathBuf, bool),
    /// Send the node a signal: SIGUSR1 takes an app node out of the web tier's pools
    /// (its checks fail from now), SIGHUP has an lb or web node read the file again.
    Signal(Signal, oneshot::Sender<Result<(), String>>),
    /// Run `[app] release` of the app in this directory with the node's identity (its
    /// namespace, its certificate), in a process of its own; its output's last lines.
    Release(PathBuf, oneshot::Sender<Result<String, String>>),
}

/// How long a deploy's release (migrations) may run.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(600);

/// The supervisor's side of one node.
#[derive(Clone)]
pub(super) struct NodeHandle {
    pub(super) node: Node,
    commands: mpsc::Sender<Command>,
    view: watch::Receiver<View>,
}

impl NodeHandle {
    /// Starts the node's task (no process yet).
    pub(super) fn spawn(node: Node, launch: Launch) -> NodeHandle {
        let (commands, rx) = mpsc::channel(16);
        let (publish, view) = watch::channel(Lifecycle::default().view().clone());
        let task = Task {
            node: node.clone(),
            launch,
            lifecycle: Lifecycle::default(),
            publish,
            child: None,
            pumps: Vec::new(),
            starting: None,
            probe: None,
            stopping: None,
        };
        tokio::spawn(task.run(rx));
        NodeHandle {
            node,
            commands,
            view,
        }
    }

    /// Where the node is now.
    pub(super) fn view(&self) -> View {
        self.view.borrow().clone()
    }

    /// Spawns the node and waits until it answers `/healthz` (or fails).
    pub(super) async fn start(&self) -> Result<Duration, String> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Start(tx)).await?;
        rx.await.map_err(|_| self.gone())?
    }

    /// Stops the node and waits until its process has exited.
    pub(super) async fn stop(&self, how: Stop) -> Result<String, String> {
        self.stop_with(how, false).await
    }

    /// Stops the node if it runs (or is about to: the command queues behind a `Start`
    /// sent before it), for the supervisor's shutdown.
    pub(super) async fn shut_down(&self) -> Result<String, String> {
        self.stop_with(Stop::Graceful, true).await
    }

    async fn stop_with(&self, how: Stop, quiet: bool) -> Result<String, String> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Stop {
            how,
            quiet,
            reply: tx,
        })
        .await?;
        rx.await.map_err(|_| self.gone())?
    }

    /// Makes the node run the app from `dir` from its next start on.
    pub(super) async fn use_app(&self, dir: PathBuf, released: bool) -> Result<(), String> {
        self.send(Command::UseApp(dir, released)).await
    }

    /// Takes the node out of the web tier's pools: its health checks fail from now.
    pub(super) async fn drain(&self) -> Result<(), String> {
        self.signal(Signal::SIGUSR1).await
    }

    /// Has the node read the topology file again (an lb or web node).
    pub(super) async fn reload(&self) -> Result<(), String> {
        self.signal(Signal::SIGHUP).await
    }

    async fn signal(&self, signal: Signal) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Signal(signal, tx)).await?;
        rx.await.map_err(|_| self.gone())?
    }

    /// Runs the app's release from `dir` as this node would.
    pub(super) async fn release(&self, dir: PathBuf) -> Result<String, String> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Release(dir, tx)).await?;
        rx.await.map_err(|_| self.gone())?
    }

    async fn send(&self, cmd: Command) -> Result<(), String> {
        self.commands.send(cmd).await.map_err(|_| self.gone())
    }

    fn gone(&self) -> String {
        format!("{}'s supervisor task has ended", self.node.name)
    }
}

/// A start in progress: who waits, since when, until when.
struct Starting {
    since: Instant,
    deadline: Instant,
    waiters: Vec<oneshot::Sender<Result<Duration, String>>>,
    last: String,
}

/// A stop in progress.
struct Stopping {
    pid: Pid,
    /// When to send SIGKILL (graceful stops), then when to give up.
    next: tokio::time::Instant,
    escalated: bool,
    waiters: Vec<oneshot::Sender<Result<String, String>>>,
    verb: &'static str,
}

type Probe = Pin<Box<dyn Future<Output = Result<(u16, String), String>> + Send>>;

struct Task {
    node: Node,
    launch: Launch,
    lifecycle: Lifecycle,
    publish: watch::Sender<View>,
    child: Option<Child>,
    pumps: Vec<JoinHandle<()>>,
    starting: Option<Starting>,
    probe: Option<Probe>,
    stopping: Option<Stopping>,
}

/// How often a starting node's `/healthz` is asked; past its ready deadline, slower (it
/// is still watched, so that it shows running if it ever answers).
const PROBE_EVERY: Duration = Duration::from_millis(100);
const PROBE_SLOW: Duration = Duration::from_secs(1);

impl Task {
    async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        loop {
            tokio::select! {
                cmd = commands.recv() => match cmd {
                    Some(Command::Start(reply)) => self.start(reply),
                    Some(Command::Stop { how, quiet, reply }) => self.stop(how, quiet, reply),
                    Some(Command::UseApp(dir, released)) => self.launch.app = Some((dir, released)),
                    Some(Command::Signal(signal, reply)) => {
                        let _ = reply.send(self.signal(signal));
                    }
                    Some(Command::Release(dir, reply)) => self.release(dir, reply),
                    // The supervisor is gone; its process ending takes the child
                    // (PR_SET_PDEATHSIG).
                    None => return,
                },
                status = wait(&mut self.child) => self.exited(status).await,
                probe = poll(&mut self.probe) => self.probed(probe),
                () = escalation(&self.stopping) => self.escalate(),
            }
        }
    }

    fn publish(&self) {
        self.publish.send_replace(self.lifecycle.view().clone());
    }

    fn name(&self) -> &str {
        &self.node.name
    }

    fn start(&mut self, reply: oneshot::Sender<Result<Duration, String>>) {
        if let Some(s) = &mut self.starting {
            if Instant::now() > s.deadline {
                let _ = reply.send(Err(format!(
                    "{} is still starting: not ready within {:?} (last: {})",
                    self.node.name,
                    deadlines::ready(self.node.role, self.launch.app_settings.as_ref()),
                    s.last
                )));
            } else {
                // Already starting: wait with the others.
                s.waiters.push(reply);
            }
            return;
        }
        if let Err(why) = self.lifecycle.may_start() {
            let _ = reply.send(Err(format!("{} {why}", self.name())));
            return;
        }
        match self.spawn() {
            Ok(()) => {
                let now = Instant::now();
                self.starting = Some(Starting {
                    since: now,
                    deadline: now
                        + deadlines::ready(self.node.role, self.launch.app_settings.as_ref()),
                    waiters: vec![reply],
                    last: "no answer yet".into(),
                });
                self.probe = Some(probe(self.launch.admin, Duration::ZERO));
                self.publish();
            }
            Err(e) => {
                let _ = reply.send(Err(format!("{} failed to start: {e}", self.name())));
            }
        }
    }

    fn signal(&self, signal: Signal) -> Result<(), String> {
        let pid = self
            .child
            .as_ref()
            .and_then(Child::id)
            .and_then(|p| i32::try_from(p).ok())
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("{} is not running", self.name()))?;
        kill(Pid::from_raw(pid), signal).map_err(|e| format!("{}: {e}", self.name()))
    }

    /// `hastack node NAME` with the node's config, state and namespace: the base of
    /// the node's process and of its release.
    fn command(&self) -> Result<Process, String> {
        let launch = &self.launch;
        let mut cmd = Process::new(&launch.exe);
        cmd.arg("node")
            .arg(&self.node.name)
            .arg("--config")
            .arg(&launch.config_path)
            .arg("--state-dir")
            .arg(&launch.state_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Ctrl-C reaches the supervisor only, which stops the tiers in order.
            .process_group(0);
        if let (Some(db), Role::App) = (&launch.sqlite, self.node.role) {
            cmd.arg("--sqlite").arg(db);
        }
        if let Some(path) = &launch.netns {
            cmd.arg("--isolated");
            let ns = std::fs::File::open(path)
                .map_err(|e| format!("network namespace {}: {e}", path.display()))?;
            hastack_runtime::child::enter_netns(&mut cmd, ns);
        }
        hastack_runtime::child::die_with_parent(&mut cmd, Signal::SIGTERM);
        Ok(cmd)
    }

    /// Starts the release of the app in `dir`; `reply` gets its outcome.
    fn release(&self, dir: PathBuf, reply: oneshot::Sender<Result<String, String>>) {
        let name = self.name().to_string();
        let spawned = self.command().and_then(|mut cmd| {
            cmd.arg("--release-only").arg("--app-dir").arg(&dir);
            cmd.spawn().map_err(|e| e.to_string())
        });
        let child = match spawned {
            Ok(c) => c,
            Err(e) => {
                let _ = reply.send(Err(format!("{name}: the release could not start: {e}")));
                return;
            }
        };
        tokio::spawn(async move {
            let out = tokio::time::timeout(RELEASE_TIMEOUT, child.wait_with_output()).await;
            let answer = match out {
                Err(_) => Err(format!(
                    "{name}: the release did not finish within {RELEASE_TIMEOUT:?}"
                )),
                Ok(Err(e)) => Err(format!("{name}: the release: {e}")),
                Ok(Ok(o)) => {
                    let text = format!(
                        "{}{}",
                        String::from_utf8_lossy(&o.stdout),
                        String::from_utf8_lossy(&o.stderr)
                    );
                    let tail: Vec<&str> = text.lines().rev().take(30).collect();
                    let tail = tail.into_iter().rev().collect::<Vec<_>>().join("\n");
                    if o.status.success() {
                        Ok(tail)
                    } else {
                        Err(tail)
                    }
                }
            };
            let _ = reply.send(answer);
        });
    }

    /// Spawns `hastack node NAME`, its output pumped into its rotating log.
    fn spawn(&mut self) -> Result<(), String> {
        let name = self.node.name.clone();
        let launch = &self.launch;
        let log_path = launch.log_path(&name);
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
        let mut cmd = self.command()?;
        if let Some((dir, released)) = &launch.app {
            cmd.arg("--app-dir").arg(dir);
            if *released {
                cmd.arg("--skip-release");
            }
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("spawning {}: {e}", launch.exe.display()))?;
        // `id` is `None` only once the child has been waited for, which it has not.
        let pid = child.id().unwrap_or(0);
        if let Err(why) = self.lifecycle.spawned(pid) {
            let _ = child.start_kill();
            return Err(format!("{name} {why}"));
        }
        self.pumps = [
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
        self.child = Some(child);
        Ok(())
    }

    fn probed(&mut self, answer: Result<(u16, String), String>) {
        self.probe = None;
        let Some(starting) = &mut self.starting else {
            return;
        };
        match answer {
            Ok((200, _)) => {
                let took = starting.since.elapsed();
                if let Some(s) = self.starting.take() {
                    for w in s.waiters {
                        let _ = w.send(Ok(took));
                    }
                }
                if self.lifecycle.ready() {
                    self.publish();
                }
                return;
            }
            Ok((code, body)) => starting.last = format!("/healthz answered {code}: {body}"),
            Err(e) => starting.last = e,
        }
        let mut every = PROBE_EVERY;
        if Instant::now() > starting.deadline {
            every = PROBE_SLOW;
            if !starting.waiters.is_empty() {
                let why = format!(
                    "{} failed to start: not ready within {:?} (last: {}; log: {})",
                    self.node.name,
                    deadlines::ready(self.node.role, self.launch.app_settings.as_ref()),
                    starting.last,
                    last_error_line(&self.launch.log_path(&self.node.name))
                );
                for w in starting.waiters.drain(..) {
                    let _ = w.send(Err(why.clone()));
                }
            }
        }
        self.probe = Some(probe(self.launch.admin, every));
    }

    fn stop(&mut self, how: Stop, quiet: bool, reply: oneshot::Sender<Result<String, String>>) {
        let verb = match how {
            Stop::Kill => "killed",
            Stop::Graceful => "stopped",
        };
        let pid = match self.lifecycle.stop(how) {
            Ok(pid) => Pid::from_raw(pid),
            Err(_) if quiet && self.stopping.is_none() => {
                let _ = reply.send(Ok(String::new()));
                return;
            }
            Err(why) => {
                let _ = reply.send(Err(format!("{} {why}", self.name())));
                return;
            }
        };
        let sig = match how {
            Stop::Kill => Signal::SIGKILL,
            Stop::Graceful => Signal::SIGTERM,
        };
        let _ = kill(pid, sig);
        self.publish();
        // Whoever waited for it to start learns it will not.
        if let Some(s) = self.starting.take() {
            let why = match how {
                Stop::Kill => format!("{} was killed while starting", self.node.name),
                Stop::Graceful => format!("{} is being stopped", self.node.name),
            };
            for w in s.waiters {
                let _ = w.send(Err(why.clone()));
            }
        }
        self.probe = None;
        let grace = deadlines::supervisor_stop(self.node.role, self.launch.app_settings.as_ref());
        match &mut self.stopping {
            Some(s) => {
                s.waiters.push(reply);
                let soon = tokio::time::Instant::now() + Duration::from_secs(10);
                if how == Stop::Kill {
                    s.verb = verb;
                    s.escalated = true;
                    s.next = soon;
                } else if s.escalated {
                    // Already SIGKILLed (and perhaps given up on): kill again and answer
                    // this waiter within 10 s too, not at the old, far deadline.
                    let _ = kill(s.pid, Signal::SIGKILL);
                    s.next = s.next.min(soon);
                }
            }
            None => {
                self.stopping = Some(Stopping {
                    pid,
                    next: tokio::time::Instant::now()
                        + match how {
                            Stop::Kill => Duration::from_secs(10),
                            Stop::Graceful => grace,
                        },
                    escalated: how == Stop::Kill,
                    waiters: vec![reply],
                    verb,
                })
            }
        }
    }

    /// The stop deadline passed: SIGKILL, and after 10 s more give up waiting.
    fn escalate(&mut self) {
        let Some(s) = &mut self.stopping else {
            return;
        };
        if !s.escalated {
            println!(
                "hastack: {} did not stop within {:?}; killing it",
                self.node.name,
                deadlines::supervisor_stop(self.node.role, self.launch.app_settings.as_ref())
            );
            let _ = kill(s.pid, Signal::SIGKILL);
            s.escalated = true;
            s.next = tokio::time::Instant::now() + Duration::from_secs(10);
            return;
        }
        let why = format!("{} (pid {}) would not exit", self.node.name, s.pid);
        for w in s.waiters.drain(..) {
            let _ = w.send(Err(why.clone()));
        }
        // Keep watching the process; nobody waits any more.
        s.next = tokio::time::Instant::now() + Duration::from_secs(3600);
    }

    async fn exited(&mut self, status: std::io::Result<std::process::ExitStatus>) {
        self.child = None;
        // Its last words are in the log before anyone reads it (a process it left
        // behind may hold the pipe open: not for long).
        let pumps = std::mem::take(&mut self.pumps);
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
        let unexpected = self.lifecycle.exited(why);
        self.publish();
        self.probe = None;
        let log = self.launch.log_path(&self.node.name);
        if let Some(why) = unexpected {
            let last = last_error_line(&log);
            println!("hastack: {} exited ({why}): {last}", self.node.name);
            if let Some(s) = self.starting.take() {
                for w in s.waiters {
                    let _ = w.send(Err(format!(
                        "{} failed to start: exited ({why}): {last}",
                        self.node.name
                    )));
                }
            }
        }
        if let Some(s) = self.stopping.take() {
            let msg = format!("{} {}", self.node.name, s.verb);
            for w in s.waiters {
                let _ = w.send(Ok(msg.clone()));
            }
        }
    }
}

/// The child's exit; never, when there is no child.
async fn wait(child: &mut Option<Child>) -> std::io::Result<std::process::ExitStatus> {
    match child {
        Some(c) => c.wait().await,
        None => std::future::pending().await,
    }
}

/// The probe's answer; never, when no probe runs.
async fn poll(probe: &mut Option<Probe>) -> Result<(u16, String), String> {
    match probe {
        Some(p) => p.await,
        None => std::future::pending().await,
    }
}

/// The stop's next deadline; never, when no stop is in progress.
async fn escalation(stopping: &Option<Stopping>) {
    match stopping {
        Some(s) => tokio::time::sleep_until(s.next).await,
        None => std::future::pending().await,
    }
}

/// One `/healthz` request after `after`.
fn probe(admin: SocketAddr, after: Duration) -> Probe {
    Box::pin(async move {
        tokio::time::sleep(after).await;
        http_get::get(admin, "/healthz", Duration::from_millis(1000)).await
    })
}

/// The last line of a node's log that says something went wrong (or the last line).
pub(super) fn last_error_line(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    // The last error and what follows it (a node's error may span lines: the app
    // tier quotes its app's last lines and says what to fix).
    let from = lines
        .iter()
        .rposition(|l| l.contains("error") || l.contains("ERROR"))
        .unwrap_or(lines.len().saturating_sub(1));
    let block: Vec<&str> = lines
        .iter()
        .skip(from)
        .take(30)
        .map(|l| l.trim_end())
        .collect();
    if block.is_empty() {
        format!("(nothing in {})", log.display())
    } else {
        block.join("\n").trim_start().to_string()
    }
}
