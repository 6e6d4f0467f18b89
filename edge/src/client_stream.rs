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
//! total or too large is answered `408`/`431` (best effort) and the read fails, before Pingora
//! buffers more of it.

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
            timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
            timer_at: None,
        }
    }

    /// Points the timer at the guard's deadline when it moved.
    fn arm_timer(&mut self) -> Option<Cutoff> {
        let (at, cutoff) = self.guard.deadline()?;
        if self.timer_at != Some(at) {
            self.timer
                .as_mut()
                .reset(tokio::time::Instant::from_std(at));
            self.timer_at = Some(at);
        }
        Some(cutoff)
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
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let read = &buf.filled()[before..];
                match this.guard.on_read(read, Instant::now()) {
                    Ok(()) => Poll::Ready(Ok(())),
                    Err(cutoff) => {
                        buf.set_filled(before);
                        this.cut_off(cx, cutoff)
                    }
                }
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match this.arm_timer() {
                Some(cutoff) if this.timer.as_mut().poll(cx).is_ready() => this.cut_off(cx, cutoff),
                _ => Poll::Pending,
            },
        }
    }
}

impl<S: AsyncWrite + Unpin> ClientStream<S> {
    /// Ends the connection for `cutoff`: its response, if it has one, is written if the
    /// socket takes it at once; an idle connection reads as closed, the others fail.
    fn cut_off(&mut self, cx: &mut Context<'_>, cutoff: Cutoff) -> Poll<io::Result<()>> {
        if let Some(response) = cutoff.response() {
            self.held.clear();
            let _ = Pin::new(&mut self.inner).poll_write(cx, response);
            let _ = Pin::new(&mut self.inner).poll_flush(cx);
        }
        match cutoff {
            Cutoff::Idle => Poll::Ready(Ok(())),
            Cutoff::HeadTimeout => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "request head timeout",
            ))),
            Cutoff::HeadTooLarge => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "request head too large",
            ))),
            Cutoff::BadRequestLine => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "malformed request line",
            ))),
        }
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

impl<S> Ssl for ClientStream<S> {}

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
}
