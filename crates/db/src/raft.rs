//! The db nodes' consensus on who is primary: openraft over HTTP, with the log, the
//! vote and the state machine kept in files under `<state_dir>/db/NAME/raft/`.
//!
//! The replicated state is [`ClusterState`] (`failover.rs`); its commands are the lease
//! renewals and promotions. Every db node is a voter; the topology's db tier is the
//! membership, and each node initialises the cluster with it (openraft allows the same
//! membership on every node).
//!
//! Hand-written here because openraft leaves them to the application: the file store
//! (a JSON-lines log, fsynced before an append is acknowledged; vote and snapshot
//! written whole and renamed into place) and the transport (JSON over HTTP/1 with
//! hyper, one kept-alive connection per peer).
//!
//! Besides the state, the state machine records *when* this process applied the last
//! lease grant ([`Shared::last_grant_applied`]): the arbiter's clock for deciding that a
//! primary's lease has expired — and whether any grant applied was *new*, appended after
//! this process started ([`Shared::live_grant`]), rather than replayed from the log. It
//! is not part of the replicated state.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::io::{Cursor, Write};
use std::net::SocketAddr;
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use openraft::error::{
    ClientWriteError, InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError,
    Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::storage::{LogFlushed, RaftLogStorage, RaftStateMachine};
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, LogState, RaftLogReader, RaftSnapshotBuilder, Snapshot,
    SnapshotMeta, StorageError, StorageIOError, StoredMembership, Vote,
};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::failover::{ClusterState, Command, Outcome};

openraft::declare_raft_types!(
    /// The consensus's types: commands in, outcomes out.
    pub TypeConfig:
        D = Command,
        R = Outcome,
        NodeId = u64,
        Node = BasicNode,
        Entry = Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A Raft node of this consensus.
pub type Raft = openraft::Raft<TypeConfig>;
type Sto = StorageError<u64>;

/// How openraft is tuned for loopback and LAN: heartbeats every 50 ms, elections after
/// 150–300 ms of silence, a snapshot every 1000 entries.
pub fn config() -> openraft::Config {
    openraft::Config {
        cluster_name: "hastack-db".into(),
        heartbeat_interval: 50,
        election_timeout_min: 150,
        election_timeout_max: 300,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(1000),
        max_in_snapshot_log_to_keep: 200,
        purge_batch_size: 200,
        ..Default::default()
    }
}

// ---------------------------------------------------------------------------------
// Files

fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> std::io::Result<Option<T>> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| std::io::Error::other(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn io_write(e: impl std::error::Error + 'static) -> Sto {
    StorageIOError::write_logs(&e).into()
}

// ---------------------------------------------------------------------------------
// The log

#[derive(Debug)]
struct LogInner {
    dir: PathBuf,
    vote: Option<Vote<u64>>,
    committed: Option<LogId<u64>>,
    last_purged: Option<LogId<u64>>,
    log: BTreeMap<u64, Entry<TypeConfig>>,
    file: std::fs::File,
}

impl LogInner {
    fn log_path(&self) -> PathBuf {
        self.dir.join("log.jsonl")
    }

    /// Rewrites the whole log file from memory (after a truncate or purge).
    fn rewrite(&mut self) -> std::io::Result<()> {
        let mut text = Vec::new();
        for e in self.log.values() {
            serde_json::to_writer(&mut text, e)?;
            text.push(b'\n');
        }
        write_atomic(&self.log_path(), &text)?;
        self.file = std::fs::OpenOptions::new()
            .append(true)
            .open(self.log_path())?;
        Ok(())
    }
}

/// The Raft log, vote and commit index in files.
#[derive(Debug, Clone)]
pub struct LogStore(Arc<Mutex<LogInner>>);

impl LogStore {
    /// Opens (or creates) the log in `dir`. A torn last line (a crash during an append,
    /// which was then never acknowledged) is dropped.
    pub fn open(dir: &Path) -> std::io::Result<LogStore> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("log.jsonl");
        let mut log = BTreeMap::new();
        let mut torn = false;
        if let Ok(text) = std::fs::read_to_string(&path) {
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                match serde_json::from_str::<Entry<TypeConfig>>(line) {
                    Ok(e) => {
                        log.insert(e.log_id.index, e);
                    }
                    Err(_) => torn = true,
                }
            }
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?;
        let mut inner = LogInner {
            dir: dir.to_path_buf(),
            vote: read_json(&dir.join("vote.json"))?,
            committed: read_json(&dir.join("committed.json"))?,
            last_purged: read_json(&dir.join("purged.json"))?,
            log,
            file,
        };
        if torn {
            warn!(path = %path.display(), "dropping a torn entry at the end of the raft log");
            inner.rewrite()?;
        }
        Ok(LogStore(Arc::new(Mutex::new(inner))))
    }

    /// The index of the last entry, appended or purged (0 for an empty log).
    fn last_index(&self) -> u64 {
        let inner = self.inner();
        let last = inner.log.keys().next_back().copied();
        last.or(inner.last_purged.map(|l| l.index)).unwrap_or(0)
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, LogInner> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, Sto> {
        Ok(self
            .inner()
            .log
            .range(range)
            .map(|(_, e)| e.clone())
            .collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, Sto> {
        let inner = self.inner();
        let last = inner
            .log
            .values()
            .next_back()
            .map(|e| e.log_id)
            .or(inner.last_purged);
        Ok(LogState {
            last_purged_log_id: inner.last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), Sto> {
        let mut inner = self.inner();
        let data = serde_json::to_vec(vote).map_err(|e| StorageIOError::write_vote(&e))?;
        write_atomic(&inner.dir.join("vote.json"), &data)
            .map_err(|e| StorageIOError::write_vote(&e))?;
        inner.vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, Sto> {
        Ok(self.inner().vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId<u64>>) -> Result<(), Sto> {
        let mut inner = self.inner();
        // A hint for a faster restart, not needed for safety: no fsync of the directory.
        let data = serde_json::to_vec(&committed).map_err(io_write)?;
        let path = inner.dir.join("committed.json");
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, data)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(io_write)?;
        inner.committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<u64>>, Sto> {
        Ok(self.inner().committed)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), Sto>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut inner = self.inner();
        let mut text = Vec::new();
        let mut new = Vec::new();
        for e in entries {
            serde_json::to_writer(&mut text, &e).map_err(io_write)?;
            text.push(b'\n');
            new.push(e);
        }
        let written = inner
            .file
            .write_all(&text)
            .and_then(|()| inner.file.sync_data());
        match written {
            Ok(()) => {
                for e in new {
                    inner.log.insert(e.log_id.index, e);
                }
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                let shown = std::io::Error::new(e.kind(), e.to_string());
                callback.log_io_completed(Err(e));
                Err(io_write(shown))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> Result<(), Sto> {
        let mut inner = self.inner();
        let _ = inner.log.split_off(&log_id.index);
        inner.rewrite().map_err(io_write)
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> Result<(), Sto> {
        let mut inner = self.inner();
        let data = serde_json::to_vec(&Some(log_id)).map_err(io_write)?;
        write_atomic(&inner.dir.join("purged.json"), &data).map_err(io_write)?;
        inner.last_purged = Some(log_id);
        let keep = inner.log.split_off(&(log_id.index + 1));
        inner.log = keep;
        inner.rewrite().map_err(io_write)
    }
}

// ---------------------------------------------------------------------------------
// The state machine

/// What the state machine shares with the rest of the node.
#[derive(Debug)]
pub struct Shared {
    /// When this process last applied a granted command (renewal, bootstrap or
    /// promotion) — or started, which is as late as any grant it may not have seen.
    pub last_grant_applied: Instant,
    /// A granted command beyond the log this process started with has been applied:
    /// the record's primary (or the arbiter that promoted it) was alive while this
    /// process was. False after a restart until then — the grants replayed from the log
    /// say nothing about whether the primary came back.
    pub live_grant: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct SmData {
    last_applied: Option<LogId<u64>>,
    last_membership: StoredMembership<u64, BasicNode>,
    state: ClusterState,
}

#[derive(Debug, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<u64, BasicNode>,
    data: Vec<u8>,
}

/// The state machine: [`ClusterState`] in memory, published on a watch channel, its
/// snapshots in a file.
#[derive(Debug, Clone)]
pub struct StateMachine {
    dir: PathBuf,
    data: Arc<Mutex<SmData>>,
    shared: Arc<Mutex<Shared>>,
    publish: Arc<watch::Sender<ClusterState>>,
    /// The last log index when this process started: grants after it are live.
    start_index: u64,
}

impl StateMachine {
    /// Opens the state machine in `dir`, starting from its last snapshot; `start_index`
    /// is the last index of the log this process starts with.
    pub fn open(
        dir: &Path,
        start_index: u64,
    ) -> std::io::Result<(
        StateMachine,
        watch::Receiver<ClusterState>,
        Arc<Mutex<Shared>>,
    )> {
        let mut data = SmData::default();
        if let Some(snap) = read_json::<StoredSnapshot>(&dir.join("snapshot.json"))? {
            data = serde_json::from_slice(&snap.data).map_err(std::io::Error::other)?;
        }
        let (tx, rx) = watch::channel(data.state.clone());
        let shared = Arc::new(Mutex::new(Shared {
            last_grant_applied: Instant::now(),
            live_grant: false,
        }));
        Ok((
            StateMachine {
                dir: dir.to_path_buf(),
                data: Arc::new(Mutex::new(data)),
                shared: shared.clone(),
                publish: Arc::new(tx),
                start_index,
            },
            rx,
            shared,
        ))
    }

    fn data(&self) -> std::sync::MutexGuard<'_, SmData> {
        self.data.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn snapshot_of(data: &SmData) -> serde_json::Result<(SnapshotMeta<u64, BasicNode>, Vec<u8>)> {
    let bytes = serde_json::to_vec(data)?;
    let id = data
        .last_applied
        .map(|l| format!("{}-{}", l.leader_id, l.index))
        .unwrap_or_else(|| "empty".into());
    Ok((
        SnapshotMeta {
            last_log_id: data.last_applied,
            last_membership: data.last_membership.clone(),
            snapshot_id: id,
        },
        bytes,
    ))
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, Sto> {
        let (meta, bytes) =
            snapshot_of(&self.data()).map_err(|e| StorageIOError::read_state_machine(&e))?;
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: bytes.clone(),
        };
        let file =
            serde_json::to_vec(&stored).map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        write_atomic(&self.dir.join("snapshot.json"), &file)
            .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<u64>>, StoredMembership<u64, BasicNode>), Sto> {
        let d = self.data();
        Ok((d.last_applied, d.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Outcome>, Sto>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut out = Vec::new();
        let (mut granted, mut live) = (false, false);
        let state = {
            let mut d = self.data();
            for e in entries {
                d.last_applied = Some(e.log_id);
                match e.payload {
                    EntryPayload::Blank => out.push(Outcome::Granted),
                    EntryPayload::Normal(cmd) => {
                        let r = d.state.apply(e.log_id.index, &cmd);
                        let ok = r == Outcome::Granted;
                        granted |= ok;
                        live |= ok && e.log_id.index > self.start_index;
                        out.push(r);
                    }
                    EntryPayload::Membership(m) => {
                        d.last_membership = StoredMembership::new(Some(e.log_id), m);
                        out.push(Outcome::Granted);
                    }
                }
            }
            d.state.clone()
        };
        if granted {
            let mut shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
            shared.last_grant_applied = Instant::now();
            shared.live_grant |= live;
        }
        // Watchers wake for a change of primary, not for every renewal.
        self.publish.send_if_modified(|s| {
            let changed = !s.same_record(&state);
            *s = state;
            changed
        });
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, Sto> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), Sto> {
        let bytes = snapshot.into_inner();
        let data: SmData = serde_json::from_slice(&bytes)
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: bytes,
        };
        let file = serde_json::to_vec(&stored)
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        write_atomic(&self.dir.join("snapshot.json"), &file)
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        let state = data.state.clone();
        *self.data() = data;
        self.shared
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last_grant_applied = Instant::now();
        self.publish.send_replace(state);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, Sto> {
        let stored = read_json::<StoredSnapshot>(&self.dir.join("snapshot.json"))
            .map_err(|e| StorageIOError::read_snapshot(None, &e))?;
        Ok(stored.map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}

// ---------------------------------------------------------------------------------
// Transport: JSON over HTTP/1

/// Largest RPC body accepted (a snapshot chunk or a batch of entries is far smaller).
const MAX_BODY: usize = 4 << 20;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct TransportError(String);

/// One kept-alive HTTP/1 connection to `addr`.
#[derive(Debug)]
struct Conn {
    addr: SocketAddr,
    sender: Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>>,
}

impl Conn {
    /// POSTs `body` as JSON to `path`; the answer's JSON. The error says whether the
    /// peer could be reached at all (`true`: unreachable).
    async fn post(&mut self, path: &str, body: Vec<u8>) -> Result<Bytes, (bool, TransportError)> {
        if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
            let stream = tokio::net::TcpStream::connect(self.addr)
                .await
                .map_err(|e| (true, TransportError(format!("connect {}: {e}", self.addr))))?;
            let _ = stream.set_nodelay(true);
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| (true, TransportError(e.to_string())))?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            self.sender = Some(sender);
        }
        let Some(sender) = self.sender.as_mut() else {
            return Err((true, TransportError("no connection".into())));
        };
        let req = Request::post(path)
            .header("host", self.addr.to_string())
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| (false, TransportError(e.to_string())))?;
        let resp = match sender.send_request(req).await {
            Ok(r) => r,
            Err(e) => {
                self.sender = None;
                return Err((false, TransportError(e.to_string())));
            }
        };
        let status = resp.status();
        let bytes = Limited::new(resp.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| {
                self.sender = None;
                (false, TransportError(e.to_string()))
            })?
            .to_bytes();
        if status != StatusCode::OK {
            return Err((
                false,
                TransportError(format!(
                    "{path}: {status}: {}",
                    String::from_utf8_lossy(&bytes)
                )),
            ));
        }
        Ok(bytes)
    }
}

/// Makes a [`Network`] per peer.
#[derive(Debug, Clone, Default)]
pub struct NetworkFactory;

/// The connection to one peer.
#[derive(Debug)]
pub struct Network {
    target: u64,
    conn: Conn,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = Network;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> Network {
        let addr = node
            .addr
            .parse()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        Network {
            target,
            conn: Conn { addr, sender: None },
        }
    }
}

impl Network {
    async fn call<Req, Resp, E>(
        &mut self,
        path: &str,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<u64, BasicNode, RaftError<u64, E>>>
    where
        Req: Serialize,
        Resp: serde::de::DeserializeOwned,
        E: std::error::Error + serde::de::DeserializeOwned,
    {
        let body = serde_json::to_vec(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let answer = tokio::time::timeout(option.hard_ttl(), self.conn.post(path, body)).await;
        let bytes = match answer {
            Err(elapsed) => {
                self.conn.sender = None;
                return Err(RPCError::Unreachable(Unreachable::new(&elapsed)));
            }
            Ok(Err((true, e))) => return Err(RPCError::Unreachable(Unreachable::new(&e))),
            Ok(Err((false, e))) => return Err(RPCError::Network(NetworkError::new(&e))),
            Ok(Ok(b)) => b,
        };
        let result: Result<Resp, RaftError<u64, E>> =
            serde_json::from_slice(&bytes).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for Network {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        self.call("/raft/append", &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, BasicNode, RaftError<u64, InstallSnapshotError>>,
    > {
        self.call("/raft/snapshot", &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        self.call("/raft/vote", &rpc, &option).await
    }
}

/// Serves the consensus RPCs of `raft` on `listener`: `/raft/append`, `/raft/vote`,
/// `/raft/snapshot`, and `/raft/write` (a command forwarded by a node that is not the
/// leader).
pub async fn serve(raft: Raft, listener: TcpListener, shutdown: watch::Receiver<bool>) {
    hastack_runtime::serve_http1(
        listener,
        move |req, _peer| {
            let raft = raft.clone();
            async move { handle(raft, req).await }
        },
        shutdown,
    )
    .await;
}

fn json<T: Serialize>(v: &T) -> Response<Full<Bytes>> {
    match serde_json::to_vec(v) {
        Ok(b) => Response::new(Full::new(Bytes::from(b))),
        Err(e) => plain(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

fn plain(status: StatusCode, text: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(text)));
    *r.status_mut() = status;
    r
}

async fn handle(raft: Raft, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != hyper::Method::POST {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "POST only".into());
    }
    let path = req.uri().path().to_string();
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return plain(StatusCode::BAD_REQUEST, e.to_string()),
    };
    macro_rules! rpc {
        ($ty:ty, $call:ident) => {
            match serde_json::from_slice::<$ty>(&body) {
                Ok(r) => json(&raft.$call(r).await),
                Err(e) => {
                    debug!(path, error = %e, "malformed consensus request");
                    plain(StatusCode::BAD_REQUEST, format!("malformed request: {e}"))
                }
            }
        };
    }
    match path.as_str() {
        "/raft/append" => rpc!(AppendEntriesRequest<TypeConfig>, append_entries),
        "/raft/vote" => rpc!(VoteRequest<u64>, vote),
        "/raft/snapshot" => rpc!(InstallSnapshotRequest<TypeConfig>, install_snapshot),
        "/raft/write" => match serde_json::from_slice::<Command>(&body) {
            Ok(cmd) => {
                let r = raft
                    .client_write(cmd)
                    .await
                    .map(|resp| resp.data)
                    .map_err(|e| e.to_string());
                json(&r)
            }
            Err(e) => plain(StatusCode::BAD_REQUEST, format!("malformed request: {e}")),
        },
        _ => plain(StatusCode::NOT_FOUND, "unknown consensus endpoint".into()),
    }
}

/// Why a command was not decided.
#[derive(Debug, thiserror::Error)]
pub enum ProposeError {
    /// No leader is known (an election is going on, or no majority is reachable).
    #[error("no leader: {0}")]
    NoLeader(String),
    /// The leader could not be reached, or did not answer in time.
    #[error("the leader did not answer: {0}")]
    Unreachable(String),
    /// The consensus refused the command for another reason.
    #[error("{0}")]
    Other(String),
}

/// Proposes `cmd` and waits until it is committed and applied: on this node if it
/// leads, else forwarded to the leader. Bounded by `within`.
pub async fn propose(raft: &Raft, cmd: Command, within: Duration) -> Result<Outcome, ProposeError> {
    let attempt = async {
        match raft.client_write(cmd.clone()).await {
            Ok(resp) => Ok(resp.data),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(fwd))) => {
                let Some(node) = fwd.leader_node else {
                    return Err(ProposeError::NoLeader("no leader elected yet".into()));
                };
                let addr: SocketAddr = node.addr.parse().map_err(|_| {
                    ProposeError::Other(format!("bad leader address {}", node.addr))
                })?;
                let mut conn = Conn { addr, sender: None };
                let body =
                    serde_json::to_vec(&cmd).map_err(|e| ProposeError::Other(e.to_string()))?;
                let bytes = conn
                    .post("/raft/write", body)
                    .await
                    .map_err(|(_, e)| ProposeError::Unreachable(e.0))?;
                let r: Result<Outcome, String> = serde_json::from_slice(&bytes)
                    .map_err(|e| ProposeError::Other(e.to_string()))?;
                r.map_err(ProposeError::Other)
            }
            Err(e) => Err(ProposeError::Other(e.to_string())),
        }
    };
    tokio::time::timeout(within, attempt)
        .await
        .map_err(|_| ProposeError::Unreachable(format!("no decision within {within:?}")))?
}

/// Starts this node's Raft member with its files in `dir`, and initialises the cluster
/// with `members` if it never was. Returns the node, the state it publishes and the
/// shared timing record.
pub async fn start(
    id: u64,
    dir: &Path,
    members: BTreeMap<u64, BasicNode>,
) -> Result<(Raft, watch::Receiver<ClusterState>, Arc<Mutex<Shared>>), String> {
    let log = LogStore::open(dir).map_err(|e| format!("raft log in {}: {e}", dir.display()))?;
    let start_index = log.last_index();
    let (sm, rx, shared) = StateMachine::open(dir, start_index)
        .map_err(|e| format!("raft state in {}: {e}", dir.display()))?;
    let cfg = Arc::new(config().validate().map_err(|e| e.to_string())?);
    let raft = Raft::new(id, cfg, NetworkFactory, log, sm)
        .await
        .map_err(|e| e.to_string())?;
    if !raft.is_initialized().await.map_err(|e| e.to_string())? {
        let ids: BTreeSet<u64> = members.keys().copied().collect();
        debug!(?ids, "initialising the consensus");
        // Every node initialises with the same membership; "not allowed" means a peer
        // got there first, which is the goal.
        if let Err(e) = raft.initialize(members).await {
            debug!(error = %e, "initialise");
        }
    }
    Ok((raft, rx, shared))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(term: u64, index: u64, cmd: Option<Command>) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(openraft::CommittedLeaderId::new(term, 1), index),
            payload: cmd.map_or(EntryPayload::Blank, EntryPayload::Normal),
        }
    }

    #[tokio::test]
    async fn the_log_survives_a_restart_and_truncation() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut s = LogStore::open(dir.path()).expect("open");
            {
                let mut inner = s.inner();
                for i in 1..=5 {
                    let e = entry(1, i, None);
                    let line = serde_json::to_string(&e).expect("json");
                    writeln!(inner.file, "{line}").expect("write");
                    inner.log.insert(i, e);
                }
            }
            s.save_vote(&Vote::new(3, 2)).await.expect("vote");
            s.truncate(LogId::new(openraft::CommittedLeaderId::new(1, 1), 4))
                .await
                .expect("truncate");
        }
        // A crash in the middle of an append leaves half a line.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join("log.jsonl"))
            .expect("open");
        f.write_all(b"{\"log_id\":").expect("torn");
        let mut s = LogStore::open(dir.path()).expect("reopen");
        assert_eq!(s.read_vote().await.expect("vote"), Some(Vote::new(3, 2)));
        let entries = s.try_get_log_entries(0..100).await.expect("entries");
        assert_eq!(
            entries.iter().map(|e| e.log_id.index).collect::<Vec<_>>(),
            vec![1, 2, 3],
            "truncated entries stay gone and the torn line is dropped"
        );
        s.purge(LogId::new(openraft::CommittedLeaderId::new(1, 1), 2))
            .await
            .expect("purge");
        let st = LogStore::open(dir.path())
            .expect("reopen")
            .get_log_state()
            .await
            .expect("state");
        assert_eq!(st.last_purged_log_id.map(|l| l.index), Some(2));
        assert_eq!(st.last_log_id.map(|l| l.index), Some(3));
    }

    #[tokio::test]
    async fn the_state_machine_applies_commands_and_restores_from_its_snapshot() {
        let dir = tempfile::tempdir().expect("tempdir");
        // The log held entries 1 and 2 when this process started: they are replayed.
        let (mut sm, rx, shared) = StateMachine::open(dir.path(), 2).expect("open");
        let before = shared.lock().expect("lock").last_grant_applied;
        let out = sm
            .apply(vec![
                entry(
                    1,
                    1,
                    Some(Command::Bootstrap {
                        primary: "db1".into(),
                    }),
                ),
                entry(
                    1,
                    2,
                    Some(Command::Renew {
                        node: "db2".into(),
                        epoch: 1,
                    }),
                ),
            ])
            .await
            .expect("apply");
        assert_eq!(out[0], Outcome::Granted);
        assert!(matches!(out[1], Outcome::Refused(_)));
        assert_eq!(rx.borrow().primary.as_deref(), Some("db1"));
        assert!(shared.lock().expect("lock").last_grant_applied >= before);
        assert!(
            !shared.lock().expect("lock").live_grant,
            "a grant replayed from the log says nothing about the primary being back"
        );
        let out = sm
            .apply(vec![entry(
                1,
                3,
                Some(Command::Renew {
                    node: "db1".into(),
                    epoch: 1,
                }),
            )])
            .await
            .expect("apply");
        assert_eq!(out[0], Outcome::Granted);
        assert!(
            shared.lock().expect("lock").live_grant,
            "a renewal appended after the start is live"
        );
        sm.build_snapshot().await.expect("snapshot");
        let (mut again, rx2, _) = StateMachine::open(dir.path(), 3).expect("reopen");
        assert_eq!(rx2.borrow().primary.as_deref(), Some("db1"));
        assert_eq!(
            again
                .applied_state()
                .await
                .expect("applied")
                .0
                .map(|l| l.index),
            Some(3)
        );
    }
}
