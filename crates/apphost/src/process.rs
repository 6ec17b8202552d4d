//! The team's application process on an app node: started with its environment in its
//! directory, its output written into the node's log, its health path checked, and
//! started again with back-off after it exits or stops answering.
//!
//! One task owns the child ([`Supervisor::run`]); everyone else reads its published
//! [`Proc`] on a watch channel. The child leads a process group of its own, so a stop
//! reaches every process it started (SIGTERM, SIGKILL after `stop_timeout`), and it
//! gets SIGKILL if the node dies (`PR_SET_PDEATHSIG`).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use nix::sys::signal::Signal;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::watch;
use tracing::{info, warn};

/// Lines of the app's output kept to quote when it fails.
const TAIL_LINES: usize = 20;
/// First pause before a restart; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Longest pause between restarts.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// A process that stayed ready this long starts its back-off afresh.
const STABLE: Duration = Duration::from_secs(30);

/// What the process is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Started, not yet answering its health path.
    Starting,
    /// Answering its health path: it takes traffic.
    Ready,
    /// Running, but its health path stopped answering 2xx.
    Unhealthy,
    /// Exited (or killed for not answering); waiting to start again.
    Restarting,
    /// Stopped for good (the node is stopping).
    Stopped,
}

impl State {
    /// Its name in `/healthz`.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Ready => "ready",
            State::Unhealthy => "unhealthy",
            State::Restarting => "restarting",
            State::Stopped => "stopped",
        }
    }
}

/// The process as published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proc {
    /// What it is doing.
    pub state: State,
    /// Its pid while it runs.
    pub pid: Option<u32>,
    /// Where it listens.
    pub addr: Option<SocketAddr>,
    /// Restarts since the node started.
    pub restarts: u64,
    /// How it last exited.
    pub last_exit: Option<String>,
}

/// How to run the app.
#[derive(Debug, Clone)]
pub struct Spec {
    /// The program and its arguments.
    pub argv: Vec<String>,
    /// The directory it runs in.
    pub dir: PathBuf,
    /// The environment it gets (nothing else).
    pub env: Vec<(String, String)>,
    /// The address it is told to listen on (`HOST`); the port is picked per start.
    pub host: std::net::IpAddr,
    /// Its health path.
    pub health: String,
    /// How long a start may take to answer the health path.
    pub start_timeout: Duration,
    /// How long a stop may take before SIGKILL.
    pub stop_timeout: Duration,
    /// Time between health checks, and each check's bound.
    pub interval: Duration,
    /// Bound of one health check.
    pub check_timeout: Duration,
    /// Failed checks in a row that make a ready process unhealthy.
    pub fall: u32,
    /// Passed checks in a row that make an unhealthy process ready again.
    pub rise: u32,
    /// Where the running process group's id is kept, so that a node killed with its
    /// app still running finds and ends that app when it starts again.
    pub pgid_file: PathBuf,
}

/// The last lines the app wrote, shared with whoever reports its failure.
#[derive(Debug, Clone, Default)]
pub struct Tail(Arc<Mutex<VecDeque<String>>>);

impl Tail {
    fn push(&self, line: String) {
        let mut t = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if t.len() == TAIL_LINES {
            t.pop_front();
        }
        t.push_back(line);
    }

    /// The kept lines, oldest first, indented for an error message.
    pub fn quoted(&self) -> String {
        let t = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if t.is_empty() {
            return "    (the app wrote nothing)".into();
        }
        t.iter()
            .map(|l| format!("    {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Runs a command of the app (the release) to its end with the app's environment;
/// its output goes to the node's log and into `tail`.
pub async fn run_once(
    argv: &[String],
    dir: &Path,
    env: &[(String, String)],
    tail: &Tail,
    timeout: Duration,
) -> Result<(), String> {
    let mut cmd = command(argv, dir, env)?;
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("`{}` could not start: {e}", argv.join(" ")))?;
    let pumps = pump(&mut child, tail, "release");
    let status = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(s) => s.map_err(|e| e.to_string())?,
        Err(_) => {
            kill_group(child.id(), Signal::SIGKILL);
            let _ = child.wait().await;
            return Err(format!(
                "`{}` did not finish within {timeout:?}",
                argv.join(" ")
            ));
        }
    };
    for p in pumps {
        let _ = p.await;
    }
    if status.success() {
        Ok(())
    } else {
        Err(format!("`{}` failed ({status})", argv.join(" ")))
    }
}

fn command(
    argv: &[String],
    dir: &Path,
    env: &[(String, String)],
) -> Result<tokio::process::Command, String> {
    let program = argv.first().ok_or("the command is empty")?;
    let path =
        hastack_config::find_program(program, dir).map_err(|why| format!("`{program}` {why}"))?;
    let mut cmd = tokio::process::Command::new(path);
    cmd.args(&argv[1..])
        .current_dir(dir)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    hastack_runtime::child::die_with_parent(&mut cmd, Signal::SIGKILL);
    Ok(cmd)
}

/// Copies the child's output, line by line, into the node's log and `tail`.
fn pump(
    child: &mut tokio::process::Child,
    tail: &Tail,
    what: &'static str,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    let pid = child.id().unwrap_or(0);
    let out = child
        .stdout
        .take()
        .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>);
    let err = child
        .stderr
        .take()
        .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>);
    for stream in [out, err].into_iter().flatten() {
        let tail = tail.clone();
        tasks.push(tokio::spawn(async move {
            let mut lines = BufReader::new(stream).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                info!(target: "app", pid, "{what}| {line}");
                tail.push(line);
            }
        }));
    }
    tasks
}

/// Sends `signal` to the process group led by `pid`.
fn kill_group(pid: Option<u32>, signal: Signal) {
    let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()).filter(|p| *p > 0) else {
        return;
    };
    let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), signal);
}

/// Ends what a previous life of this node left running: the processes of the group
/// recorded in `pgid_file` that still run in the directory recorded beside it (a node killed by SIGKILL takes only
/// its direct child with it; the app's own children would live on). Returns how many.
pub fn reap_leftovers(pgid_file: &Path) -> usize {
    let Ok(text) = std::fs::read_to_string(pgid_file) else {
        return 0;
    };
    let Some((pgid, dir)) = text.trim().split_once(' ') else {
        return 0;
    };
    let Some(pgid) = pgid.parse::<i32>().ok().filter(|p| *p > 1) else {
        return 0;
    };
    let Ok(dir) = std::fs::canonicalize(dir) else {
        return 0;
    };
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut ended = 0;
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // "pid (comm) state ppid pgrp …": the name may hold spaces and parentheses.
        let group = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.split_whitespace().nth(2))
            .and_then(|g| g.parse::<i32>().ok());
        let in_dir =
            std::fs::read_link(e.path().join("cwd")).is_ok_and(|cwd| cwd.starts_with(&dir));
        if group == Some(pgid) && in_dir {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
            ended += 1;
        }
    }
    ended
}

/// A free port on `host` for the next start (the app binds it itself).
fn free_port(host: std::net::IpAddr) -> std::io::Result<SocketAddr> {
    let l = std::net::TcpListener::bind((host, 0))?;
    l.local_addr()
}

/// One GET of the health path; `Ok` on 2xx.
pub async fn check(addr: SocketAddr, path: &str, timeout: Duration) -> Result<(), String> {
    let attempt = async {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        let driver = tokio::spawn(conn);
        let req = hyper::Request::get(path)
            .header(hyper::header::HOST, addr.to_string())
            .header(hyper::header::USER_AGENT, "hastack-health")
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let _ = resp.into_body().collect().await;
        driver.abort();
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("{path} answered {status}"))
        }
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or_else(|_| Err(format!("{path}: no answer within {timeout:?}")))
}

/// The owner of the app's process.
pub struct Supervisor {
    spec: Spec,
    tail: Tail,
    tx: watch::Sender<Proc>,
}

/// Why the first start failed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StartError(pub String);

impl Supervisor {
    /// A supervisor of `spec`, and the channel its state is published on.
    pub fn new(spec: Spec, tail: Tail) -> (Supervisor, watch::Receiver<Proc>) {
        let (tx, rx) = watch::channel(Proc {
            state: State::Starting,
            pid: None,
            addr: None,
            restarts: 0,
            last_exit: None,
        });
        (Supervisor { spec, tail, tx }, rx)
    }

    /// Runs the process until `shutdown`: the first start must answer its health path
    /// within the start timeout (else the error says why, with the app's last lines);
    /// after that every exit or lasting unhealthiness is followed by a restart.
    pub async fn run(
        self,
        mut shutdown: watch::Receiver<bool>,
        first: tokio::sync::oneshot::Sender<Result<(), StartError>>,
    ) {
        let mut first = Some(first);
        let mut backoff = FIRST_BACKOFF;
        let mut restarts = 0u64;
        loop {
            let outcome = self.one_life(&mut shutdown, &mut first).await;
            let (exit, ready_for) = match outcome {
                Life::Shutdown => {
                    self.tx.send_modify(|p| {
                        p.state = State::Stopped;
                        p.pid = None;
                    });
                    return;
                }
                Life::FailedFirst(why) => {
                    if let Some(f) = first.take() {
                        let _ = f.send(Err(StartError(why)));
                    }
                    self.tx.send_modify(|p| p.state = State::Stopped);
                    return;
                }
                Life::Ended { exit, ready_for } => (exit, ready_for),
            };
            if ready_for >= STABLE {
                backoff = FIRST_BACKOFF;
            }
            restarts += 1;
            warn!(exit = %exit, pause = ?backoff, "the app stopped; starting it again");
            self.tx.send_modify(|p| {
                p.state = State::Restarting;
                p.pid = None;
                p.restarts = restarts;
                p.last_exit = Some(exit.clone());
            });
            tokio::select! {
                _ = shutdown.changed() => {
                    self.tx.send_modify(|p| p.state = State::Stopped);
                    return;
                }
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    async fn one_life(
        &self,
        shutdown: &mut watch::Receiver<bool>,
        first: &mut Option<tokio::sync::oneshot::Sender<Result<(), StartError>>>,
    ) -> Life {
        let spec = &self.spec;
        let addr = match free_port(spec.host) {
            Ok(a) => a,
            Err(e) => {
                return Life::Ended {
                    exit: format!("no free port on {}: {e}", spec.host),
                    ready_for: Duration::ZERO,
                };
            }
        };
        let mut env = spec.env.clone();
        env.push(("HOST".into(), addr.ip().to_string()));
        env.push(("PORT".into(), addr.port().to_string()));
        let spawned = command(&spec.argv, &spec.dir, &env).and_then(|mut c| {
            c.spawn()
                .map_err(|e| format!("`{}` could not start: {e}", spec.argv.join(" ")))
        });
        let mut child = match spawned {
            Ok(c) => c,
            Err(why) if first.is_some() => return Life::FailedFirst(why),
            Err(why) => {
                return Life::Ended {
                    exit: why,
                    ready_for: Duration::ZERO,
                };
            }
        };
        let pid = child.id();
        if let Some(pid) = pid
            && let Err(e) = std::fs::write(&spec.pgid_file, format!("{pid} {}", spec.dir.display()))
        {
            warn!(file = %spec.pgid_file.display(), error = %e, "cannot record the app's process group");
        }
        let pumps = pump(&mut child, &self.tail, "app");
        info!(pid, %addr, dir = %spec.dir.display(), "app process started");
        self.tx.send_modify(|p| {
            p.state = State::Starting;
            p.pid = pid;
            p.addr = Some(addr);
        });
        let started = Instant::now();
        let mut ready_since: Option<Instant> = None;
        let mut unhealthy_since: Option<Instant> = None;
        let (mut passed, mut failed) = (0u32, 0u32);
        let mut next = Instant::now();
        loop {
            tokio::select! {
                _ = shutdown.changed() => {
                    self.stop(&mut child).await;
                    break Life::Shutdown;
                }
                status = child.wait() => {
                    let exit = match status {
                        Ok(s) => s.to_string(),
                        Err(e) => e.to_string(),
                    };
                    kill_group(pid, Signal::SIGKILL);
                    if first.is_some() {
                        for p in pumps { let _ = p.await; }
                        break Life::FailedFirst(format!(
                            "the app exited before it answered {} ({exit})", spec.health
                        ));
                    }
                    break Life::Ended { exit, ready_for: ready_since.map(|s| s.elapsed()).unwrap_or_default() };
                }
                _ = tokio::time::sleep_until(next.into()) => {}
            }
            let result = check(addr, &spec.health, spec.check_timeout).await;
            next = Instant::now() + spec.interval;
            let state = self.tx.borrow().state;
            match (&result, state) {
                (Ok(()), State::Starting) => {
                    ready_since = Some(Instant::now());
                    info!(pid, after = ?started.elapsed(), "app ready");
                    self.tx.send_modify(|p| p.state = State::Ready);
                    if let Some(f) = first.take() {
                        let _ = f.send(Ok(()));
                    }
                }
                (Err(why), State::Starting) if started.elapsed() >= spec.start_timeout => {
                    let why = format!(
                        "the app did not answer {} with 2xx within {:?} (last: {why})",
                        spec.health, spec.start_timeout
                    );
                    self.stop(&mut child).await;
                    if first.is_some() {
                        break Life::FailedFirst(why);
                    }
                    break Life::Ended {
                        exit: why,
                        ready_for: Duration::ZERO,
                    };
                }
                (Ok(()), State::Ready) => failed = 0,
                (Err(why), State::Ready) => {
                    failed += 1;
                    if failed >= spec.fall {
                        warn!(pid, why, "app unhealthy");
                        unhealthy_since = Some(Instant::now());
                        passed = 0;
                        self.tx.send_modify(|p| p.state = State::Unhealthy);
                    }
                }
                (Ok(()), State::Unhealthy) => {
                    passed += 1;
                    if passed >= spec.rise {
                        info!(pid, "app healthy again");
                        failed = 0;
                        self.tx.send_modify(|p| p.state = State::Ready);
                    }
                }
                (Err(why), State::Unhealthy) => {
                    passed = 0;
                    if unhealthy_since.is_some_and(|s| s.elapsed() >= spec.start_timeout) {
                        let why = format!("unhealthy for {:?}, last: {why}", spec.start_timeout);
                        self.stop(&mut child).await;
                        break Life::Ended {
                            exit: why,
                            ready_for: Duration::ZERO,
                        };
                    }
                }
                _ => {}
            }
        }
    }

    /// SIGTERM to the group, SIGKILL after the stop timeout.
    async fn stop(&self, child: &mut tokio::process::Child) {
        let pid = child.id();
        kill_group(pid, Signal::SIGTERM);
        if tokio::time::timeout(self.spec.stop_timeout, child.wait())
            .await
            .is_err()
        {
            warn!(?pid, timeout = ?self.spec.stop_timeout, "the app did not stop in time: SIGKILL");
        }
        kill_group(pid, Signal::SIGKILL);
        let _ = child.wait().await;
    }
}

enum Life {
    Shutdown,
    FailedFirst(String),
    Ended { exit: String, ready_for: Duration },
}
