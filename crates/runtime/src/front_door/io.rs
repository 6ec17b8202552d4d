//! The front door's I/O: a wrapper around a client connection that hands the HTTP/1.1
//! parser only bytes the [`Scanner`] has checked. A request head is held back until it
//! is complete and valid; a body goes on as it arrives.
//!
//! When a request must be refused, the parser gets in its place a small request of our
//! own (`GET / HTTP/1.1`, `Host: refused.invalid`) and then nothing more: the service
//! recognises it by its index on the connection ([`ConnGuard::refusal_for_next`]) and answers
//! the refusal with `Connection: close`. Nothing of a refused request reaches a handler,
//! and the answer goes out in order, after those to the requests before it.
//!
//! A head that has begun but is not complete within the head timeout is refused with
//! 408 the same way (slowloris). A write that waits longer than the write timeout for
//! the client to read fails, and the connection ends: a client that stops reading
//! cannot hold the connection, and the upstream exchange behind it, for ever.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::scan::{Refusal, Scanner, Step, refusals};

/// What the parser reads in place of a refused request.
const STAND_IN: &[u8] = b"GET / HTTP/1.1\r\nHost: refused.invalid\r\n\r\n";

/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 16 * 1024;

/// What a connection's reader and its service share: the refused request, once there
/// is one (at most one: nothing is read after it).
#[derive(Debug, Default)]
pub struct ConnGuard {
    /// The refused request's index on the connection, and why.
    refusal: OnceLock<(u64, Refusal)>,
    /// Requests the service has seen on this connection.
    seen: AtomicU64,
}

impl ConnGuard {
    /// Called by the service for each request in order: the refusal to answer instead
    /// of handling it, when this is the stand-in for a refused request.
    pub fn refusal_for_next(&self) -> Option<Refusal> {
        let index = self.seen.fetch_add(1, Ordering::Relaxed);
        self.refusal
            .get()
            .filter(|(i, _)| *i == index)
            .map(|(_, r)| *r)
    }
}

/// Where the reader is.
enum Phase {
    /// Checking requests as they come.
    Open,
    /// A request was refused: these stand-in bytes are still to be read.
    StandIn(&'static [u8]),
    /// The stand-in was read: nothing more is read from this connection.
    Done,
    /// A body was malformed: reads fail.
    Broken(Refusal),
}

/// A client connection seen through the front door.
pub struct Guarded<IO> {
    io: IO,
    scanner: Scanner,
    guard: Arc<ConnGuard>,
    /// Read from the socket, not yet passed on; of those, the first `checked` bytes may
    /// go to the parser. Read into without zeroing first (a `Vec` resized for each
    /// connection cost a 16 KiB memset per connection: 2% of the lb's CPU with a new
    /// connection per request).
    buf: BytesMut,
    checked: usize,
    eof: bool,
    phase: Phase,
    head_timeout: Duration,
    /// Runs while a head has begun and is not complete.
    deadline: Option<Pin<Box<Sleep>>>,
    /// Counts and logs each refusal.
    on_refuse: Box<dyn Fn(Refusal) + Send + Sync>,
    write_timeout: Duration,
    /// Runs while a write waits for the client to read.
    write_stall: Option<Pin<Box<Sleep>>>,
}

impl<IO> Guarded<IO> {
    /// Wraps `io`; `guard` is shared with the connection's service.
    pub fn new(
        io: IO,
        scanner: Scanner,
        head_timeout: Duration,
        guard: Arc<ConnGuard>,
        on_refuse: Box<dyn Fn(Refusal) + Send + Sync>,
    ) -> Self {
        Guarded {
            io,
            scanner,
            guard,
            buf: BytesMut::new(),
            checked: 0,
            eof: false,
            phase: Phase::Open,
            head_timeout,
            deadline: None,
            on_refuse,
            write_timeout: super::WRITE_TIMEOUT,
            write_stall: None,
        }
    }

    /// Writes may wait `d` for the client to read, then fail.
    pub fn with_write_timeout(mut self, d: Duration) -> Self {
        self.write_timeout = d;
        self
    }

    /// Passes on a write's result; a write that has waited longer than the write
    /// timeout for the client fails instead.
    fn watch_write<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        if polled.is_ready() {
            self.write_stall = None;
            return polled;
        }
        let timeout = self.write_timeout;
        let stall = self
            .write_stall
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        if stall.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("the client read nothing of its answer for {timeout:?}"),
            )));
        }
        Poll::Pending
    }

    fn refuse(&mut self, r: Refusal) {
        self.deadline = None;
        (self.on_refuse)(r);
        if self.scanner.in_head() {
            let _ = self.guard.refusal.set((self.scanner.requests(), r));
            self.phase = Phase::StandIn(STAND_IN);
        } else {
            // The body of a request already handed on is malformed: its reader gets
            // an error, and the connection ends.
            self.phase = Phase::Broken(r);
        }
    }

    /// Runs the scanner over the unchecked bytes until it needs more or refuses.
    fn check(&mut self) {
        let before = self.scanner.requests();
        while self.checked < self.buf.len() {
            let unchecked = &self.buf[self.checked..];
            match self.scanner.scan(unchecked) {
                Step::Pass(n) => {
                    self.checked += n;
                    if self.scanner.requests() != before {
                        // A head is complete: the next one gets a deadline of its own.
                        self.deadline = None;
                    }
                }
                Step::Need => break,
                Step::Refuse(r) => {
                    self.refuse(r);
                    return;
                }
            }
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Guarded<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        loop {
            // Checked bytes go first: they come before whatever was refused.
            if this.checked > 0 {
                let n = this.checked.min(out.remaining());
                out.put_slice(&this.buf[..n]);
                this.buf.advance(n);
                this.checked -= n;
                return Poll::Ready(Ok(()));
            }
            match this.phase {
                Phase::Done => return Poll::Pending,
                Phase::Broken(r) => {
                    return Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        r.text,
                    )));
                }
                Phase::StandIn(rest) => {
                    let n = rest.len().min(out.remaining());
                    out.put_slice(&rest[..n]);
                    this.phase = if n == rest.len() {
                        Phase::Done
                    } else {
                        Phase::StandIn(&rest[n..])
                    };
                    return Poll::Ready(Ok(()));
                }
                Phase::Open => {}
            }
            if this.eof {
                // Whatever is left is an incomplete request: the client gave up.
                return Poll::Ready(Ok(()));
            }
            // A head that has begun must be complete by its deadline.
            if this.scanner.in_head() && !this.buf.is_empty() {
                let deadline = this.deadline.get_or_insert_with(|| {
                    Box::pin(tokio::time::sleep_until(Instant::now() + this.head_timeout))
                });
                if deadline.as_mut().poll(cx).is_ready() {
                    this.refuse(refusals::HEAD_TIMEOUT);
                    continue;
                }
            } else {
                this.deadline = None;
            }
            // Room for another read (the bytes passed on are reclaimed first).
            this.buf.reserve(READ_CHUNK);
            match tokio_util::io::poll_read_buf(Pin::new(&mut this.io), cx, &mut this.buf) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(n)) => {
                    if n == 0 {
                        this.eof = true;
                    }
                    this.check();
                }
            }
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Guarded<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write(cx, buf);
        this.watch_write(cx, polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.watch_write(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_flush(cx);
        this.watch_write(cx, polled)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
