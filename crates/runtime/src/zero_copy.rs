//! Zero-copy sends of the files a node serves from memory (nginx's `sendfile on`).
//!
//! [`sealed`] puts a file's bytes in a memfd, seals it (nobody may write, grow or
//! shrink it any more) and maps it read-only; the `Bytes` it returns point into that
//! mapping, which is registered for as long as any of them lives. [`Socket`], a plain
//! TCP connection of a server, looks at each slice it is asked to write: one that lies
//! in a registered mapping leaves with `sendfile(2)` from its memfd, so the kernel
//! hands the file's pages to the socket instead of copying them from user memory; the
//! bytes before it (the response head) go with `sendmsg(MSG_MORE)` so that both leave
//! in the same segments. Any other slice is written as usual. hyper is unaware of it:
//! it is told how many bytes were written, as by `writev`.
//!
//! Over TLS the bytes are encrypted in user memory anyway, so TLS connections do not
//! use [`Socket`] (kernel TLS would be the way there).
//!
//! Safety argument, for the `unsafe` below:
//! - The mapping is of a sealed memfd (`F_SEAL_WRITE | F_SEAL_SHRINK | F_SEAL_GROW |
//!   F_SEAL_SEAL`) made here: its bytes never change and it never shrinks, so reading
//!   it as `&[u8]` is sound and cannot fault (`SIGBUS` needs a truncated file).
//! - A mapping is unregistered before it is unmapped, and both happen when the last
//!   `Bytes` of it is dropped. A slice being written belongs to a `Bytes` the writer
//!   holds, so a mapping found by a slice's address is alive, with its memfd open, for
//!   the whole write; an address reused after an unmapping is no longer registered.

use std::ffi::CStr;
use std::io::{IoSlice, Write};
use std::num::NonZeroUsize;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::ptr::NonNull;
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use nix::fcntl::{FcntlArg, SealFlag, fcntl};
use nix::sys::memfd::{MemFdCreateFlag, memfd_create};
use nix::sys::mman::{MapFlags, ProtFlags, mmap, munmap};
use nix::sys::socket::{MsgFlags, sendmsg};
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;
use tracing::debug;

/// Smaller files are copied as usual: a second system call costs more than the copy.
pub const ZERO_COPY_MIN: usize = 16 * 1024;

/// One registered mapping: its address range and its memfd.
#[derive(Clone, Copy)]
struct Region {
    start: usize,
    len: usize,
    fd: RawFd,
}

/// Bytes sent with `sendfile(2)` since start (`/metrics`, tests).
static SENT: AtomicU64 = AtomicU64::new(0);

/// Bytes this process has sent with `sendfile(2)`.
pub fn bytes_sent() -> u64 {
    SENT.load(Ordering::Relaxed)
}

/// How many mappings are registered.
static LIVE: AtomicUsize = AtomicUsize::new(0);

/// Every live mapping (a handful: the big files of a site).
static REGIONS: RwLock<Vec<Region>> = RwLock::new(Vec::new());

/// The memfd and offset holding `slice`, when it lies in a live mapping.
fn find(slice: &[u8]) -> Option<(RawFd, usize)> {
    // Nodes without sealed files (the lb, a proxying web node) take no lock.
    if slice.len() < ZERO_COPY_MIN || LIVE.load(Ordering::Relaxed) == 0 {
        return None;
    }
    let at = slice.as_ptr() as usize;
    let regions = REGIONS.read().unwrap_or_else(|e| e.into_inner());
    regions
        .iter()
        .find(|r| at >= r.start && at + slice.len() <= r.start + r.len)
        .map(|r| (r.fd, at - r.start))
}

/// A read-only mapping of a sealed memfd; the owner of the `Bytes` made of it.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
    fd: OwnedFd,
}

// SAFETY: the mapping is read-only and its bytes never change (sealed memfd); nothing
// in it is tied to a thread.
#[allow(unsafe_code)]
unsafe impl Send for Mapping {}

impl AsRef<[u8]> for Mapping {
    #[allow(unsafe_code)]
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `ptr` maps `len` bytes of a sealed memfd until `drop` (module docs).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for Mapping {
    #[allow(unsafe_code)]
    fn drop(&mut self) {
        let start = self.ptr.as_ptr() as usize;
        REGIONS
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|r| r.start != start);
        LIVE.fetch_sub(1, Ordering::Relaxed);
        // SAFETY: unregistered above, so no writer looks it up any more, and this was
        // the last owner of its bytes.
        if let Err(e) = unsafe { munmap(self.ptr.cast(), self.len) } {
            debug!(error = %e, "munmap of a sealed file failed");
        }
    }
}

/// `data` as `Bytes` that a [`Socket`] sends without copying: in a sealed memfd, when
/// it is large enough to be worth it ([`ZERO_COPY_MIN`]) and the system allows;
/// otherwise `data` itself.
pub fn sealed(data: Bytes) -> Bytes {
    if data.len() < ZERO_COPY_MIN {
        return data;
    }
    match seal(&data) {
        Ok(m) => Bytes::from_owner(m),
        Err(e) => {
            debug!(error = %e, "no sealed memfd; the file is sent by copy");
            data
        }
    }
}

#[allow(unsafe_code)]
fn seal(data: &[u8]) -> std::io::Result<Mapping> {
    const NAME: &CStr = c"hastack-file";
    let fd = memfd_create(
        NAME,
        MemFdCreateFlag::MFD_CLOEXEC | MemFdCreateFlag::MFD_ALLOW_SEALING,
    )?;
    let mut file = std::fs::File::from(fd);
    file.write_all(data)?;
    let fd = OwnedFd::from(file);
    fcntl(
        fd.as_raw_fd(),
        FcntlArg::F_ADD_SEALS(
            SealFlag::F_SEAL_WRITE
                | SealFlag::F_SEAL_SHRINK
                | SealFlag::F_SEAL_GROW
                | SealFlag::F_SEAL_SEAL,
        ),
    )?;
    let len = NonZeroUsize::new(data.len()).ok_or(std::io::ErrorKind::InvalidInput)?;
    // SAFETY: a new read-only shared mapping of a memfd sealed above (module docs); it
    // aliases no Rust object.
    let ptr = unsafe {
        mmap(
            None,
            len,
            ProtFlags::PROT_READ,
            MapFlags::MAP_SHARED,
            &fd,
            0,
        )
    }?;
    let mapping = Mapping {
        ptr: ptr.cast(),
        len: data.len(),
        fd,
    };
    REGIONS
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .push(Region {
            start: ptr.as_ptr() as usize,
            len: data.len(),
            fd: mapping.fd.as_raw_fd(),
        });
    LIVE.fetch_add(1, Ordering::Relaxed);
    Ok(mapping)
}

/// A server's plain TCP connection that sends sealed files with `sendfile(2)`.
#[derive(Debug)]
pub struct Socket {
    io: TcpStream,
}

impl Socket {
    /// Wraps an accepted connection.
    pub fn new(io: TcpStream) -> Socket {
        Socket { io }
    }
}

/// Writes `head` (with `MSG_MORE`), then up to `len` bytes of memfd `file` from
/// `offset`; the bytes written, or the error when none was.
#[allow(unsafe_code)]
fn send_with_file(
    sock: RawFd,
    head: &[IoSlice<'_>],
    file: RawFd,
    offset: usize,
    len: usize,
) -> std::io::Result<usize> {
    let head_len: usize = head.iter().map(|s| s.len()).sum();
    let mut sent = 0;
    if head_len > 0 {
        sent = sendmsg::<()>(
            sock,
            head,
            &[],
            MsgFlags::from_bits_retain(nix::libc::MSG_MORE) | MsgFlags::MSG_NOSIGNAL,
            None,
        )?;
        if sent < head_len {
            return Ok(sent);
        }
    }
    let mut off = offset as nix::libc::off_t;
    // SAFETY: both descriptors are open for the whole call: the socket is `self.io`'s,
    // the memfd is held by the `Bytes` being written (module docs).
    let (sock, file) = unsafe { (BorrowedFd::borrow_raw(sock), BorrowedFd::borrow_raw(file)) };
    match nix::sys::sendfile::sendfile(sock, file, Some(&mut off), len) {
        Ok(n) => {
            SENT.fetch_add(n as u64, Ordering::Relaxed);
            Ok(sent + n)
        }
        // What was sent counts; the error comes back on the next write.
        Err(_) if sent > 0 => Ok(sent),
        Err(e) => Err(e.into()),
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let Some((i, file, offset)) = bufs
            .iter()
            .enumerate()
            .find_map(|(i, b)| find(b).map(|(fd, off)| (i, fd, off)))
        else {
            return Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        };
        let sock = this.io.as_raw_fd();
        loop {
            ready!(this.io.poll_write_ready(cx))?;
            match this.io.try_io(Interest::WRITABLE, || {
                send_with_file(sock, &bufs[..i], file, offset, bufs[i].len())
            }) {
                Ok(n) => return Poll::Ready(Ok(n)),
                // Readiness was cleared: wait for the socket again.
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn file(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[test]
    fn a_sealed_file_is_found_by_any_slice_of_it_until_dropped() {
        let data = file(100 * 1024);
        let bytes = sealed(Bytes::from(data.clone()));
        assert_eq!(&bytes[..], &data[..]);
        let (fd, at) = find(&bytes[1000..40_000]).expect("a slice of a sealed file");
        assert_eq!(at, 1000);
        assert!(fd >= 0);
        assert!(find(&bytes[..100]).is_none(), "small slices are copied");
        let copy = data.clone();
        assert!(find(&copy).is_none(), "other memory is not a sealed file");
        let start = bytes.as_ptr() as usize;
        drop(bytes);
        assert!(
            !REGIONS
                .read()
                .expect("lock")
                .iter()
                .any(|r| r.start == start),
            "the last Bytes dropped unregisters the mapping"
        );
    }

    #[test]
    fn a_small_file_is_not_sealed() {
        let data = file(1024);
        let bytes = sealed(Bytes::from(data.clone()));
        assert_eq!(&bytes[..], &data[..]);
        assert!(find(&bytes).is_none());
    }

    /// Writes `parts` through a `Socket` with `write_vectored`, as hyper does, to a
    /// reader that reads slowly at first (the socket buffer fills: partial writes and
    /// waits); returns what the reader got.
    async fn through_socket(parts: Vec<Bytes>) -> Vec<u8> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let reader = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            let mut got = Vec::new();
            s.read_to_end(&mut got).await.expect("read");
            got
        });
        let mut sock = Socket::new(TcpStream::connect(addr).await.expect("connect"));
        let mut parts: Vec<Bytes> = parts;
        while parts.iter().any(|p| !p.is_empty()) {
            let slices: Vec<IoSlice<'_>> = parts
                .iter()
                .filter(|p| !p.is_empty())
                .map(|p| IoSlice::new(p))
                .collect();
            let mut n = sock.write_vectored(&slices).await.expect("write");
            assert!(n > 0);
            for p in parts.iter_mut() {
                let k = n.min(p.len());
                bytes::Buf::advance(p, k);
                n -= k;
            }
        }
        sock.shutdown().await.expect("shutdown");
        reader.await.expect("reader")
    }

    #[tokio::test]
    async fn a_head_and_a_sealed_body_arrive_whole_and_in_order_through_sendfile() {
        let body = file(4 * 1024 * 1024 + 123);
        let sealed_body = sealed(Bytes::from(body.clone()));
        let head = Bytes::from_static(b"HTTP/1.1 200 OK\r\ncontent-length: 4194427\r\n\r\n");
        let trailer = Bytes::from_static(b"next answer");
        let before = bytes_sent();
        let got = through_socket(vec![head.clone(), sealed_body.slice(..), trailer.clone()]).await;
        let mut want = head.to_vec();
        want.extend_from_slice(&body);
        want.extend_from_slice(&trailer);
        assert_eq!(got.len(), want.len());
        assert!(got == want, "the bytes differ");
        assert!(
            bytes_sent() - before >= body.len() as u64,
            "the body went with sendfile"
        );
    }

    #[tokio::test]
    async fn a_range_of_a_sealed_file_is_sent_from_its_offset() {
        let body = file(300 * 1024);
        let sealed_body = sealed(Bytes::from(body.clone()));
        let got = through_socket(vec![sealed_body.slice(70_000..250_000)]).await;
        assert!(got == body[70_000..250_000], "the bytes differ");
    }

    #[tokio::test]
    async fn other_memory_is_written_as_usual() {
        let body = Bytes::from(file(200 * 1024));
        let got = through_socket(vec![Bytes::from_static(b"head"), body.clone()]).await;
        assert_eq!(&got[..4], b"head");
        assert!(got[4..] == body[..]);
    }
}
