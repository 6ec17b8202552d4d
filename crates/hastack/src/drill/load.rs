//! The drills' users: traffic through the VIP while a drill breaks something, and what
//! each request saw.
//!
//! Two clients, each opening a new connection per request (as browsers behind NAT
//! do), so that a moved VIP or a dead server shows on the next request:
//! - a reader: `GET /api/posts?limit=5` every 20 ms, through every tier to the database;
//! - a writer: `POST /api/posts` with a unique body and an `Idempotency-Key`, retrying
//!   the same key until it is acknowledged (as a careful client would), then reading
//!   the post back by id at once (read-your-writes).
//!
//! Those are the built-in app's paths; a team's app names its own in `[app.drill]`
//! ([`DrillTraffic`]).
//!
//! At the end, every acknowledged post is read back by id through the VIP: one that is
//! not there is a write lost.
//!
//! The clients run on their own thread with their own runtime; for an isolated stack
//! that thread first enters the client's network namespace, the outside world of the
//! stack, so every socket it opens is a client's.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::watch;

use hastack_config::DrillTraffic;

use super::lock;
use crate::http_get;

/// How often each client sends a request.
const EVERY: Duration = Duration::from_millis(20);
/// How long a request may take before it counts as failed.
const TIMEOUT: Duration = Duration::from_secs(2);

/// One request and what came of it.
#[derive(Debug, Clone)]
pub(super) struct Sample {
    /// When it was sent.
    pub(super) at: Instant,
    /// How long it took (to its answer, its error or its timeout).
    pub(super) took: Duration,
    /// Whether it succeeded (2xx).
    pub(super) ok: bool,
    /// `X-Served-By` of its answer: `lb1, web2, app1`.
    pub(super) served_by: Option<String>,
    /// What it was.
    pub(super) kind: Kind,
}

/// What a request was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// The reader's `GET /api/posts?limit=5`: served by any replica.
    Read,
    /// The writer's `POST /api/posts`.
    Write,
    /// The writer's `GET /api/posts/ID` right after its post was acknowledged.
    ReadBack,
}

impl Sample {
    /// The lb that answered (the first name in `X-Served-By`).
    pub(super) fn lb(&self) -> Option<&str> {
        self.served_by.as_deref()?.split(',').next().map(str::trim)
    }
}

#[derive(Default)]
struct Shared {
    samples: Mutex<Vec<Sample>>,
    /// Acknowledged writes: idempotency key and the post's id.
    acked: Mutex<Vec<(String, i64)>>,
    read_your_writes_misses: AtomicU64,
}

/// The traffic of a drill, running.
pub(super) struct Load {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<Verified>>,
}

/// What the final read-back found.
#[derive(Debug, Default)]
pub(super) struct Verified {
    /// Acknowledged writes.
    pub(super) acknowledged: u64,
    /// Acknowledged writes not found by id afterwards: their keys.
    pub(super) lost: Vec<String>,
    /// Acknowledged writes that could not be read back (the site did not answer).
    pub(super) unverified: u64,
    /// Posts not found right after their acknowledgement.
    pub(super) read_your_writes_misses: u64,
    /// Every request the clients sent.
    pub(super) samples: Vec<Sample>,
    /// What every post's body of this run starts with (`TAG-N`).
    pub(super) tag: String,
    /// The keys (bodies) of the acknowledged posts.
    pub(super) acked_keys: Vec<String>,
}

impl Load {
    /// Starts the clients against `vip` with `Host: host`; `netns` is the client's
    /// namespace of an isolated stack. `tag` makes the posts' bodies unique to this run.
    pub(super) fn start(
        netns: Option<PathBuf>,
        vip: SocketAddr,
        host: String,
        tag: String,
        traffic: DrillTraffic,
    ) -> anyhow::Result<Load> {
        let ns = match &netns {
            Some(p) => Some(
                std::fs::File::open(p)
                    .with_context(|| format!("the client's namespace {}", p.display()))?,
            ),
            None => None,
        };
        let shared = Arc::new(Shared::default());
        let (stop, stopped) = watch::channel(false);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let sh = shared.clone();
        let thread = std::thread::spawn(move || {
            let entered = match &ns {
                Some(ns) => nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(|e| format!("entering the client's namespace: {e}")),
                None => Ok(()),
            };
            let rt = entered.and_then(|()| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| format!("the clients' runtime: {e}"))
            });
            let rt = match rt {
                Ok(rt) => {
                    let _ = ready_tx.send(Ok(()));
                    rt
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return Verified::default();
                }
            };
            rt.block_on(clients(sh, vip, host, tag, Arc::new(traffic), stopped))
        });
        ready_rx
            .recv()
            .context("the clients' thread")?
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(Load {
            shared,
            stop,
            thread: Some(thread),
        })
    }

    /// The requests sent at or after `t`.
    pub(super) fn since(&self, t: Instant) -> Vec<Sample> {
        lock(&self.shared.samples)
            .iter()
            .filter(|s| s.at >= t)
            .cloned()
            .collect()
    }

    /// Acknowledged writes so far.
    pub(super) fn acknowledged(&self) -> usize {
        lock(&self.shared.acked).len()
    }

    /// Waits until requests sent after `since` have succeeded for `steady` in a row,
    /// each answered by an lb for which `by` holds; false after `deadline`.
    pub(super) fn wait_steady(
        &self,
        since: Instant,
        steady: Duration,
        deadline: Duration,
        by: impl Fn(&str) -> bool,
    ) -> bool {
        let start = Instant::now();
        while start.elapsed() < deadline {
            let mut samples = self.since(since);
            samples.sort_by_key(|s| s.at);
            let tail: Vec<&Sample> = samples
                .iter()
                .rev()
                .take_while(|s| s.ok && s.lb().is_some_and(&by))
                .collect();
            if let (Some(first), Some(last)) = (tail.last(), tail.first())
                && last.at.duration_since(first.at) >= steady
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// Stops the clients and reads every acknowledged post back.
    pub(super) fn finish(mut self) -> Verified {
        let _ = self.stop.send(true);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

async fn clients(
    shared: Arc<Shared>,
    vip: SocketAddr,
    host: String,
    tag: String,
    traffic: Arc<DrillTraffic>,
    stop: watch::Receiver<bool>,
) -> Verified {
    let reader = tokio::spawn(reader(
        shared.clone(),
        vip,
        host.clone(),
        traffic.clone(),
        stop.clone(),
    ));
    let writer = tokio::spawn(writer(
        shared.clone(),
        vip,
        host.clone(),
        tag.clone(),
        traffic.clone(),
        stop,
    ));
    let _ = reader.await;
    let _ = writer.await;
    let acked = lock(&shared.acked).clone();
    let mut lost = Vec::new();
    let mut unverified = 0u64;
    // A site that stopped answering is not asked hundreds of times more: after a few
    // unanswered read-backs in a row the rest are counted unverified.
    let mut unanswered = 0;
    for (key, id) in &acked {
        if unanswered >= GIVE_UP_AFTER {
            unverified += 1;
            continue;
        }
        match read_back(vip, &host, &traffic, *id, key).await {
            Stored::Yes => unanswered = 0,
            Stored::No => {
                unanswered = 0;
                lost.push(key.clone());
            }
            Stored::Unknown => {
                unanswered += 1;
                unverified += 1;
            }
        }
    }
    let mut samples = std::mem::take(&mut *lock(&shared.samples));
    samples.sort_by_key(|s| s.at);
    Verified {
        acknowledged: acked.len() as u64,
        lost,
        unverified,
        read_your_writes_misses: shared.read_your_writes_misses.load(Ordering::Relaxed),
        samples,
        tag,
        acked_keys: acked.into_iter().map(|(k, _)| k).collect(),
    }
}

/// One request, recorded.
#[allow(clippy::too_many_arguments)]
async fn send(
    shared: &Shared,
    kind: Kind,
    vip: SocketAddr,
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Option<String> {
    let at = Instant::now();
    let mut all = vec![("host", host)];
    all.extend_from_slice(headers);
    let r = http_get::request(vip, method, path, &all, body, TIMEOUT).await;
    let took = at.elapsed();
    let (ok, served_by, body) = match r {
        Ok(a) => ((200..300).contains(&a.status), a.served_by, Some(a.body)),
        Err(_) => (false, None, None),
    };
    lock(&shared.samples).push(Sample {
        at,
        took,
        ok,
        served_by,
        kind,
    });
    body.filter(|_| ok)
}

async fn reader(
    shared: Arc<Shared>,
    vip: SocketAddr,
    host: String,
    traffic: Arc<DrillTraffic>,
    stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !*stop.borrow() {
        tick.tick().await;
        send(
            &shared,
            Kind::Read,
            vip,
            &host,
            "GET",
            &traffic.read,
            &[],
            "",
        )
        .await;
    }
}

async fn writer(
    shared: Arc<Shared>,
    vip: SocketAddr,
    host: String,
    tag: String,
    traffic: Arc<DrillTraffic>,
    stop: watch::Receiver<bool>,
) {
    let mut i = 0u64;
    while !*stop.borrow() {
        let key = format!("{tag}-{i}");
        i += 1;
        let body = traffic.body.replace("{key}", &key);
        let headers = [
            ("content-type", "application/json"),
            ("idempotency-key", key.as_str()),
        ];
        while !*stop.borrow() {
            let answer = send(
                &shared,
                Kind::Write,
                vip,
                &host,
                "POST",
                &traffic.write,
                &headers,
                &body,
            )
            .await;
            let id = answer.and_then(|b| {
                serde_json::from_str::<serde_json::Value>(&b)
                    .ok()
                    .and_then(|v| v["id"].as_i64())
            });
            if let Some(id) = id {
                lock(&shared.acked).push((key.clone(), id));
                // Read your write, at once, through the VIP.
                let back = send(
                    &shared,
                    Kind::ReadBack,
                    vip,
                    &host,
                    "GET",
                    &format!("{}/{id}", traffic.write),
                    &[],
                    "",
                )
                .await;
                if !back.is_some_and(|b| b.contains(&key)) {
                    shared
                        .read_your_writes_misses
                        .fetch_add(1, Ordering::Relaxed);
                }
                break;
            }
            tokio::time::sleep(EVERY).await;
        }
        tokio::time::sleep(EVERY).await;
    }
}

/// What the read-back of one acknowledged post found.
enum Stored {
    /// There, with its body.
    Yes,
    /// Not there (404), or another body.
    No,
    /// No answer.
    Unknown,
}

/// Consecutive unanswered read-backs after which the rest are not asked.
const GIVE_UP_AFTER: u32 = 5;

/// Whether post `id` holds `key`, asked through the VIP (three tries: the stack has
/// just been through a drill).
async fn read_back(
    vip: SocketAddr,
    host: &str,
    traffic: &DrillTraffic,
    id: i64,
    key: &str,
) -> Stored {
    for _ in 0..3 {
        let r = http_get::request(
            vip,
            "GET",
            &format!("{}/{id}", traffic.write),
            &[("host", host)],
            "",
            TIMEOUT,
        )
        .await;
        match r {
            Ok(a) if a.status == 200 && a.body.contains(key) => return Stored::Yes,
            Ok(a) if a.status == 200 || a.status == 404 => return Stored::No,
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    Stored::Unknown
}
