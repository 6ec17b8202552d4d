//! One client connection: the handshake as a server, the login upstream, and the relay
//! of commands and answers, with the session moved or closed when its server leaves.

use std::io;
use std::sync::Arc;
use std::time::Instant;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::watch;
use tracing::{debug, info};

use crate::packet::{self, Handshake, HandshakeResponse, MAX_PAYLOAD, NATIVE_PASSWORD, cap, com};
use crate::response::{Shape, Step, Tracker};
use crate::session::Session;
use crate::upstream::{Upstream, Want, read_packet, write_packet};
use crate::{Endpoint, OpenError};

/// MySQL's error for a statement refused by `read_only`: it surely did not run.
const ER_READ_ONLY: u16 = 1290;

/// Why the relay ended.
enum End {
    /// The client left (or sent `COM_QUIT`).
    Client,
    /// The endpoint closed the session (the reason is logged).
    Closed(&'static str),
}

struct Client {
    r: BufReader<OwnedReadHalf>,
    w: BufWriter<OwnedWriteHalf>,
}

impl Client {
    async fn send(&mut self, seq: u8, payload: &[u8]) -> io::Result<()> {
        write_packet(&mut self.w, seq, payload).await?;
        self.w.flush().await
    }
}

/// Serves one client until it leaves or the node stops.
pub(crate) async fn serve(
    ep: Arc<Endpoint>,
    stream: TcpStream,
    mut shutdown: watch::Receiver<bool>,
) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let (r, w) = stream.into_split();
    let mut client = Client {
        r: BufReader::with_capacity(16 * 1024, r),
        w: BufWriter::with_capacity(64 * 1024, w),
    };
    let Some((want, up)) = login(&ep, &mut client).await? else {
        return Ok(());
    };
    let end = relay(&ep, &mut client, want, up, &mut shutdown).await?;
    if let End::Closed(why) = end {
        info!(endpoint = ep.side.as_str(), why, "client session closed");
    }
    Ok(())
}

/// The handshake with the client, checked against the endpoint's account, then the
/// login upstream. `None` when the client was refused (it has been told why).
async fn login(ep: &Endpoint, client: &mut Client) -> io::Result<Option<(Want, Upstream)>> {
    let seed: Vec<u8> = {
        use rand::Rng;
        let mut rng = rand::thread_rng();
        (0..20).map(|_| rng.gen_range(0x21u8..0x7f)).collect()
    };
    let hello = Handshake {
        server_version: ep.version(),
        connection_id: ep.next_connection_id(),
        seed: seed.clone(),
        capabilities: cap::OFFERED,
        charset: 45,
        status: packet::status::AUTOCOMMIT,
        auth_plugin: NATIVE_PASSWORD.into(),
    };
    client.send(0, &hello.encode()).await?;
    let mut buf = Vec::with_capacity(256);
    let mut seq = read_packet(&mut client.r, &mut buf).await?;
    let asks_tls = buf.len() == 32
        && buf
            .get(..4)
            .is_some_and(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) & cap::SSL != 0);
    if asks_tls {
        let msg = "TLS is not offered on this local endpoint: connect without TLS (the hop to the database is TLS)";
        client
            .send(seq.wrapping_add(1), &packet::err(1043, "08S01", msg))
            .await?;
        return Ok(None);
    }
    let resp = match HandshakeResponse::parse(&buf) {
        Ok(r) => r,
        Err(e) => {
            client
                .send(
                    seq.wrapping_add(1),
                    &packet::err(1043, "08S01", &e.to_string()),
                )
                .await?;
            return Ok(None);
        }
    };
    let mut auth = resp.auth.clone();
    if resp
        .auth_plugin
        .as_deref()
        .is_some_and(|p| p != NATIVE_PASSWORD)
    {
        seq = seq.wrapping_add(1);
        client.send(seq, &packet::auth_switch(&seed)).await?;
        seq = read_packet(&mut client.r, &mut buf).await?;
        auth = buf.clone();
    }
    seq = seq.wrapping_add(1);
    let password_ok = packet::native_verify(ep.login.password.as_bytes(), &seed, &auth);
    if resp.user != ep.login.user || !password_ok {
        ep.metrics.refused.inc();
        info!(endpoint = ep.side.as_str(), user = %resp.user, "login refused");
        let msg = format!(
            "Access denied for user '{}' (using password: {})",
            resp.user,
            if auth.is_empty() { "NO" } else { "YES" }
        );
        client.send(seq, &packet::err(1045, "28000", &msg)).await?;
        return Ok(None);
    }
    let want = Want {
        capabilities: resp.capabilities & cap::OFFERED,
        charset: resp.charset,
        database: resp.database.clone(),
    };
    match ep.open(&want, &Session::default(), None).await {
        Ok(up) => {
            client
                .send(seq, &packet::ok(0, 0, packet::status::AUTOCOMMIT))
                .await?;
            Ok(Some((want, up)))
        }
        Err(e) => {
            client.send(seq, &e.err_packet()).await?;
            Ok(None)
        }
    }
}

/// Resolves when the idle server connection says anything or closes (`None`: never).
async fn upstream_stirs(up: &mut Option<Upstream>) {
    match up {
        Some(u) => {
            let _ = u.io.fill_buf().await;
        }
        None => std::future::pending().await,
    }
}

enum Idle {
    Command,
    ClientGone,
    Routes,
    UpstreamGone,
    Shutdown,
}

async fn relay(
    ep: &Endpoint,
    client: &mut Client,
    want: Want,
    up: Upstream,
    shutdown: &mut watch::Receiver<bool>,
) -> io::Result<End> {
    let mut up = Some(up);
    let mut session = Session::default();
    let mut routes = ep.routes.clone();
    let mut buf = Vec::with_capacity(16 * 1024);
    // The answers' packets, one buffer for the connection's life.
    let mut answer_buf = Vec::with_capacity(16 * 1024);
    loop {
        let idle = tokio::select! {
            r = client.r.fill_buf() => match r {
                Ok(b) if !b.is_empty() => Idle::Command,
                _ => Idle::ClientGone,
            },
            r = routes.changed() => match r {
                Ok(()) => Idle::Routes,
                Err(_) => Idle::Shutdown,
            },
            _ = upstream_stirs(&mut up) => Idle::UpstreamGone,
            _ = shutdown.changed() => Idle::Shutdown,
        };
        match idle {
            Idle::ClientGone => return Ok(End::Client),
            Idle::Shutdown => return Ok(End::Closed("the node is stopping")),
            Idle::Routes | Idle::UpstreamGone => {
                let gone = matches!(idle, Idle::UpstreamGone);
                let Some(u) = &up else { continue };
                if !gone && ep.acceptable(&u.server) {
                    continue;
                }
                match session.movable() {
                    Ok(()) => {
                        debug!(endpoint = ep.side.as_str(), server = %u.server.name, "idle session leaves its server");
                        up = None;
                    }
                    Err(why) => {
                        ep.metrics.closed.inc();
                        info!(endpoint = ep.side.as_str(), server = %u.server.name, why, "the session's server left and the session cannot move: closing it");
                        return Ok(End::Closed("its server left"));
                    }
                }
                continue;
            }
            Idle::Command => {}
        }
        let seq = read_packet(&mut client.r, &mut buf).await?;
        let Some(&command) = buf.first() else {
            return Ok(End::Client);
        };
        if command == com::QUIT {
            if let Some(mut u) = up.take() {
                let _ = write_packet(&mut u.io, 0, &[com::QUIT]).await;
                let _ = u.io.flush().await;
            }
            return Ok(End::Client);
        }
        let Some(shape) = Shape::of(command) else {
            let msg = format!(
                "command {command:#04x} is not relayed by the hastack endpoint (replication and COM_CHANGE_USER are not)"
            );
            client
                .send(seq.wrapping_add(1), &packet::err(1047, "08S01", &msg))
                .await?;
            continue;
        };
        // A session whose server left moves now, before its next command.
        let movable = session.movable().is_ok();
        if let Some(u) = &up
            && !ep.acceptable(&u.server)
        {
            if !movable {
                ep.metrics.closed.inc();
                return Ok(End::Closed("its server left"));
            }
            up = None;
        }
        let started = Instant::now();
        let mut retried = false;
        let mut avoid = None;
        loop {
            let u = match up.as_mut() {
                Some(u) => u,
                None => match ep.open(&want, &session, avoid.as_ref()).await {
                    Ok(new) => {
                        ep.metrics.moved.inc();
                        up.insert(new)
                    }
                    Err(e) => {
                        // Drain a long command's continuation packets first.
                        let mut len = buf.len();
                        while len == MAX_PAYLOAD {
                            read_packet(&mut client.r, &mut buf).await?;
                            len = buf.len();
                        }
                        client.send(seq.wrapping_add(1), &e.err_packet()).await?;
                        break;
                    }
                },
            };
            // The command: its first packet, then any continuations.
            write_packet(&mut u.io, seq, &buf).await?;
            let mut len = buf.len();
            let mut more = Vec::new();
            while len == MAX_PAYLOAD {
                let s = read_packet(&mut client.r, &mut more).await?;
                write_packet(&mut u.io, s, &more).await?;
                len = more.len();
            }
            if !retried {
                session.command(&buf);
            }
            if let Err(e) = u.io.flush().await {
                return lost(ep, &mut up, &e);
            }
            if shape == Shape::None {
                session.answered(&Default::default());
                break;
            }
            // Only a command of one packet can be sent again: the continuations of a
            // long one are gone.
            let may_resend = movable && !retried && buf.len() < MAX_PAYLOAD;
            match answer(ep, client, &mut up, shape, may_resend, &mut answer_buf).await? {
                Answered::Done(outcome) => {
                    session.answered(&outcome);
                    break;
                }
                Answered::ReadOnly => {
                    // The write surely did not run: the server was fenced under it.
                    // Send it again to the new primary, within the wait.
                    ep.metrics.retried.inc();
                    debug!(endpoint = ep.side.as_str(), waited = ?started.elapsed(), "a write refused by a fenced server goes to the new primary");
                    if let Some(u) = up.take() {
                        avoid = Some(u.server.clone());
                    }
                    retried = true;
                }
                Answered::Lost(e) => return lost(ep, &mut up, &e),
            }
        }
        client.w.flush().await?;
    }
}

fn lost(ep: &Endpoint, up: &mut Option<Upstream>, e: &io::Error) -> io::Result<End> {
    if let Some(u) = up.take() {
        info!(endpoint = ep.side.as_str(), server = %u.server.name, error = %e, "the server connection broke during a command: closing the client's (the outcome is unknown to it)");
    }
    Ok(End::Closed("its server connection broke during a command"))
}

enum Answered {
    Done(crate::response::Outcome),
    /// The first packet was a read-only refusal, held back (not sent to the client).
    ReadOnly,
    Lost(io::Error),
}

/// Relays the server's answer to the client, packet by packet, until it ends.
async fn answer(
    ep: &Endpoint,
    client: &mut Client,
    up: &mut Option<Upstream>,
    shape: Shape,
    may_retry: bool,
    buf: &mut Vec<u8>,
) -> io::Result<Answered> {
    let Some(u) = up.as_mut() else {
        return Ok(Answered::Lost(io::Error::other("no server connection")));
    };
    let mut tracker = Tracker::new(shape);
    let mut continuation = false;
    let mut first = true;
    loop {
        let seq = match read_packet(&mut u.io, buf).await {
            Ok(s) => s,
            Err(e) => return Ok(Answered::Lost(e)),
        };
        if first
            && may_retry
            && ep.side == crate::Side::Writer
            && buf.first() == Some(&0xff)
            && packet::parse_err(buf).is_ok_and(|(code, _)| code == ER_READ_ONLY)
        {
            return Ok(Answered::ReadOnly);
        }
        first = false;
        client.w.write_all(&packet::header(buf.len(), seq)).await?;
        client.w.write_all(buf).await?;
        let was_continuation = continuation;
        continuation = buf.len() == MAX_PAYLOAD;
        if was_continuation {
            continue;
        }
        match tracker.feed(buf) {
            Ok(Step::More) => {}
            Ok(Step::Done(o)) if !continuation => return Ok(Answered::Done(o)),
            Ok(Step::Done(_)) => {
                return Ok(Answered::Lost(io::Error::other(
                    "an answer's last packet continues",
                )));
            }
            Err(e) => return Ok(Answered::Lost(io::Error::other(e.to_string()))),
        }
    }
}

impl OpenError {
    /// The ERR packet that tells the client.
    pub(crate) fn err_packet(&self) -> Vec<u8> {
        match self {
            OpenError::Refused(err) => err.clone(),
            OpenError::Replay(e) => packet::err(1053, "08S01", e),
            OpenError::NoServer { side, waited, last } => {
                let what = match side {
                    crate::Side::Writer => "no writable primary",
                    crate::Side::Reader => "no database server to read from",
                };
                let last = last
                    .as_deref()
                    .map(|l| format!("; last attempt: {l}"))
                    .unwrap_or_default();
                packet::err(
                    1053,
                    "08S01",
                    &format!(
                        "hastack endpoint: {what} within {:.1} s (a failover may be under way); try again{last}",
                        waited.as_secs_f64()
                    ),
                )
            }
        }
    }
}
