//! The public port's client connection: Pingora's stream with two duties added, one per
//! direction.
//!
//! **Writes: a response's header and body in one system call.** Pingora writes a response
//! header, then its body, as two writes. Its stream buffers writes smaller than one segment, so
//! the header waits in the buffer; but a body larger than the buffer first flushes the header
//! on its own and is then written separately: two `sendto` calls, two TCP pushes and two
//! wake-ups of the client per response (measured with `strace`: 1.95 sends per request on the
//! hot-file benchmark). This stream holds a small write back and sends it together with the
//! next one in a single vectored write; a flush (Pingora flushes whenever it needs bytes on the
//! wire: a header without body, the end of a body, a 1xx) sends it on its own. Holding is what
//! Pingora's own buffer already does for writes under one segment; this only lets the next
//! write join it instead of overtaking the flush.
//!
//! **Reads: limits on request heads.** Every read and write goes through a [`HeadGuard`]: a
//! connection idle past its idle timeout reads as closed; a request head that is too slow in
//! total, too large or malformed in its request line is answered `408`/`431`/`400` (best effort)
//! and the connection then reads as closed. The bytes of a head are held here until the head is
//! whole (at most the head limit), so Pingora only ever parses whole heads and sees a cut-off
//! connection as a client that left (no error logged per attack connection).

use std::fmt;
use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora_core::protocols::raw_connect::ProxyDigest;
use pingora_core::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl,
    TimingDigest, UniqueID, UniqueIDType,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use gitdeploy_core::head_guard::{Cutoff, HeadGuard, HeadLimits};

/// Writes up to this size are held back to join the next write (response headers are a few
/// hundred bytes).
const HOLD_MAX: usize = 4096;

/// A client connection: small writes wait to be sent with the next write or flush, and reads
/// are held to the head limits.
pub struct ClientStream<S> {
    inner: S,
    held: Vec<u8>,
    guard: HeadGuard,
    /// Bytes of a request head not yet complete (at most the head limit).
    holding: Vec<u8>,
    /// Bytes of a completed head (and what followed it) that did not fit the last read.
    released: Vec<u8>,
    /// Cut off: reads as closed from now on.
    cut: bool,
    /// Fires at the guard's deadline; reset whenever the deadline moves.
    timer: Pin<Box<tokio::time::Sleep>>,
    timer_at: Option<Instant>,
}

impl<S> ClientStream<S> {
    /// Wraps `inner`, a connection accepted now.
    pub fn new(inner: S, limits: HeadLimits) -> Self {
        let now = Instant::now();
        ClientStream {
            inner,
            held: Vec::new(),
            guard: HeadGuard::new(limits, now),
            holding: Vec::new(),
            released: Vec::new(),
            cut: false,
            timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
            timer_at: None,
        }
    }

    /// Points the timer at the guard's deadline when that came nearer. A deadline that moved
    /// later (each response moves the idle one) leaves the timer where it is: it wakes early
    /// once, [`Self::timed_out`] finds the real deadline not reached and only then moves it.
    /// Resetting a timer is a trip through the runtime's timer wheel; doing it on every
    /// kept-alive request cost more than one early wake per idle period.
    fn arm_timer(&mut self) -> Option<Cutoff> {
        let (at, cutoff) = self.guard.deadline()?;
        if self.timer_at.is_none_or(|armed| armed > at) {
            self.timer
                .as_mut()
                .reset(tokio::time::Instant::from_std(at));
            self.timer_at = Some(at);
        }
        Some(cutoff)
    }

    /// Whether the guard's deadline has passed, waking `cx` when it does; a timer that fired
    /// before the real deadline is moved to it.
    fn timed_out(&mut self, cx: &mut Context<'_>) -> Option<Cutoff> {
        loop {
            let cutoff = self.arm_timer()?;
            if self.timer.as_mut().poll(cx).is_pending() {
                return None;
            }
            let (at, _) = self.guard.deadline()?;
            if Instant::now() >= at {
                return Some(cutoff);
            }
            // Early: the deadline moved since the timer was set.
            self.timer_at = None;
        }
    }
}

impl<S> fmt::Debug for ClientStream<S>
where
    S: fmt::Debug,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientStream")
            .field("inner", &self.inner)
            .field("held", &self.held.len())
            .field("guard", &self.guard)
            .finish()
    }
}

impl<S: AsyncWrite + Unpin> ClientStream<S> {
    /// Sends what is held; `Ready(Ok)` once nothing is.
    fn poll_send_held(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.held.is_empty() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.held))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.held.drain(..n);
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ClientStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.guard.on_write(buf, Instant::now());
        if this.held.is_empty() {
            if buf.len() <= HOLD_MAX {
                this.held.extend_from_slice(buf);
                return Poll::Ready(Ok(buf.len()));
            }
            return Pin::new(&mut this.inner).poll_write(cx, buf);
        }
        if this.held.len() + buf.len() <= HOLD_MAX {
            this.held.extend_from_slice(buf);
            return Poll::Ready(Ok(buf.len()));
        }
        // Held bytes first, then as much of `buf` as the socket takes, in one call.
        loop {
            let parts = [IoSlice::new(&this.held), IoSlice::new(buf)];
            let n = ready!(Pin::new(&mut this.inner).poll_write_vectored(cx, &parts))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            let held = this.held.len();
            if n > held {
                this.held.clear();
                return Poll::Ready(Ok(n - held));
            }
            this.held.drain(..n);
            if this.held.is_empty() {
                // Only the held bytes went out: `buf` is written on its own (reporting zero
                // bytes of it would read as a closed stream).
                return Pin::new(&mut this.inner).poll_write(cx, buf);
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send_held(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send_held(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for ClientStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.cut {
            return Poll::Ready(Ok(()));
        }
        if !this.released.is_empty() {
            let n = this.released.len().min(buf.remaining());
            buf.put_slice(&this.released[..n]);
            this.released.drain(..n);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        loop {
            match Pin::new(&mut this.inner).poll_read(cx, buf) {
                Poll::Ready(Ok(())) => {
                    let read = &buf.filled()[before..];
                    if read.is_empty() {
                        // The client closed; a head it never finished is dropped with it.
                        this.holding.clear();
                        return Poll::Ready(Ok(()));
                    }
                    if let Err(cutoff) = this.guard.on_read(read, Instant::now()) {
                        buf.set_filled(before);
                        return this.cut_off(cx, cutoff);
                    }
                    if this.guard.in_head() {
                        // Held until the head is whole: Pingora sees whole heads only.
                        this.holding.extend_from_slice(read);
                        buf.set_filled(before);
                        continue;
                    }
                    if !this.holding.is_empty() {
                        // The head ended: what was held goes first, then this read.
                        let mut released = std::mem::take(&mut this.holding);
                        released.extend_from_slice(read);
                        buf.set_filled(before);
                        let n = released.len().min(buf.remaining());
                        buf.put_slice(&released[..n]);
                        released.drain(..n);
                        this.released = released;
                    }
                    return Poll::Ready(Ok(()));
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    return match this.timed_out(cx) {
                        Some(cutoff) => this.cut_off(cx, cutoff),
                        None => Poll::Pending,
                    };
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> ClientStream<S> {
    /// Ends the connection for `cutoff`: its response, if it has one, is written if the socket
    /// takes it at once, and the connection then reads as closed. Pingora, which has seen no
    /// byte of the unfinished head (it is held here), closes it as a client that went away.
    fn cut_off(&mut self, cx: &mut Context<'_>, cutoff: Cutoff) -> Poll<io::Result<()>> {
        tracing::debug!(
            ?cutoff,
            held = self.holding.len(),
            "client connection cut off"
        );
        if let Some(response) = cutoff.response() {
            self.held.clear();
            let _ = Pin::new(&mut self.inner).poll_write(cx, response);
            let _ = Pin::new(&mut self.inner).poll_flush(cx);
        }
        self.cut = true;
        self.holding = Vec::new();
        Poll::Ready(Ok(()))
    }
}

#[async_trait]
impl<S: AsyncWrite + Shutdown + Unpin + Send> Shutdown for ClientStream<S> {
    async fn shutdown(&mut self) {
        if std::future::poll_fn(|cx| self.poll_send_held(cx))
            .await
            .is_ok()
        {
            self.inner.shutdown().await;
        }
    }
}

impl<S: UniqueID> UniqueID for ClientStream<S> {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl<S: Ssl> Ssl for ClientStream<S> {
    fn get_ssl(&self) -> Option<&pingora_core::protocols::tls::TlsRef> {
        self.inner.get_ssl()
    }
    fn get_ssl_digest(&self) -> Option<Arc<pingora_core::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }
    fn selected_alpn_proto(&self) -> Option<pingora_core::protocols::ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl<S: GetTimingDigest> GetTimingDigest for ClientStream<S> {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }
    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }
    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl<S: GetProxyDigest> GetProxyDigest for ClientStream<S> {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl<S: GetSocketDigest> GetSocketDigest for ClientStream<S> {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }
    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[async_trait]
impl<S: Peek + Send> Peek for ClientStream<S> {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// Records each write call it gets.
    #[derive(Default)]
    struct Calls {
        writes: Vec<Vec<u8>>,
        /// Accept at most this many bytes per call.
        limit: Option<usize>,
    }

    impl AsyncWrite for Calls {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let n = self.limit.map_or(buf.len(), |l| l.min(buf.len()));
            self.writes.push(buf[..n].to_vec());
            Poll::Ready(Ok(n))
        }
        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let mut all: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
            if let Some(l) = self.limit {
                all.truncate(l);
            }
            let n = all.len();
            self.writes.push(all);
            Poll::Ready(Ok(n))
        }
        fn is_write_vectored(&self) -> bool {
            true
        }
        fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn header_and_body_leave_in_one_call() {
        let mut s = ClientStream::new(Calls::default(), HeadLimits::default());
        let body = vec![7u8; 50_000];
        s.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
        assert!(s.inner.writes.is_empty(), "a small write waits");
        s.write_all(&body).await.unwrap();
        s.flush().await.unwrap();
        assert_eq!(s.inner.writes.len(), 1);
        assert_eq!(s.inner.writes[0].len(), 19 + body.len());
    }

    #[tokio::test]
    async fn flush_sends_what_is_held() {
        let mut s = ClientStream::new(Calls::default(), HeadLimits::default());
        s.write_all(b"HTTP/1.1 304 Not Modified\r\n\r\n")
            .await
            .unwrap();
        s.write_all(b"small").await.unwrap();
        s.flush().await.unwrap();
        assert_eq!(
            s.inner.writes,
            vec![b"HTTP/1.1 304 Not Modified\r\n\r\nsmall".to_vec()]
        );
        s.flush().await.unwrap();
        assert_eq!(s.inner.writes.len(), 1, "nothing held, nothing sent");
    }

    #[tokio::test]
    async fn partial_writes_keep_every_byte_in_order() {
        for limit in [1, 3, 10, 4096, 4097, 9000] {
            let mut s = ClientStream::new(
                Calls {
                    limit: Some(limit),
                    ..Calls::default()
                },
                HeadLimits::default(),
            );
            let head: Vec<u8> = (0..100u8).collect();
            let body: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
            s.write_all(&head).await.unwrap();
            s.write_all(&body).await.unwrap();
            s.write_all(b"tail").await.unwrap();
            s.shutdown().await.unwrap();
            let sent: Vec<u8> = s.inner.writes.concat();
            let want = [head.as_slice(), body.as_slice(), b"tail"].concat();
            assert_eq!(sent, want, "limit {limit}");
        }
    }

    #[tokio::test]
    async fn an_idle_deadline_that_moved_later_is_the_one_kept() {
        // The timer is left at the earlier deadline when a response moves it later (see
        // `arm_timer`): waking then must not cut the connection, only move the timer.
        use tokio::io::AsyncReadExt;
        let limits = HeadLimits {
            idle: Duration::from_millis(300),
            ..HeadLimits::default()
        };
        let (_client, server) = tokio::io::duplex(1 << 16);
        let mut s = ClientStream::new(server, limits);
        let start = Instant::now();
        let mut buf = [0u8; 8];
        // Arms the timer at start + 300 ms.
        let first = tokio::time::timeout(Duration::from_millis(150), s.read(&mut buf)).await;
        assert!(first.is_err(), "nothing to read yet");
        // A response moves the idle deadline to about start + 450 ms; the timer stays.
        let moved_to = Instant::now() + limits.idle;
        s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .await
            .unwrap();
        s.flush().await.unwrap();
        // Idle past the deadline: closed quietly (reads as the end), not before it.
        assert_eq!(s.read(&mut buf).await.unwrap(), 0);
        let closed = Instant::now();
        assert!(closed >= moved_to, "closed {:?} early", moved_to - closed);
        assert!(closed - start < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn heads_are_handed_on_whole_and_cut_offs_read_as_closed() {
        use tokio::io::AsyncReadExt;
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let mut s = ClientStream::new(server, HeadLimits::default());
        client.write_all(b"GET / HTTP/1.1\r\nHo").await.unwrap();
        let mut buf = [0u8; 8];
        let early =
            tokio::time::timeout(std::time::Duration::from_millis(50), s.read(&mut buf)).await;
        assert!(early.is_err(), "half a head is not handed on");
        client.write_all(b"st: a\r\n\r\nGET /next").await.unwrap();
        let want = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /next";
        let mut got = Vec::new();
        while got.len() < want.len() {
            let n = s.read(&mut buf).await.unwrap();
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(
            got, b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /next",
            "in order, in small reads"
        );
        // A malformed request line: the 400 goes out, and the stream reads as closed.
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let mut s = ClientStream::new(server, HeadLimits::default());
        client.write_all(b"GET /a b HTTP/1.1\r\n").await.unwrap();
        assert_eq!(s.read(&mut buf).await.unwrap(), 0);
        assert_eq!(s.read(&mut buf).await.unwrap(), 0);
        let mut answer = vec![0u8; 12];
        client.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"HTTP/1.1 400");
    }
}
