//! A deadline for a connection's first bytes.
//!
//! hyper-util's auto builder reads up to 24 bytes to tell HTTP/2's preface
//! from an HTTP/1 request line before either protocol's timers exist, and
//! that read has no timeout: a client that connects and sends nothing, or
//! drips `PRI * HTTP/2.0` a byte at a time, would hold its connection
//! forever. This wrapper fails the read with `TimedOut` when those bytes
//! have not arrived by the deadline. After them, hyper's own timers take
//! over (HTTP/1 header read timeout, HTTP/2 keep-alive pings).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// The HTTP/2 connection preface is 24 bytes: hyper-util decides the
/// protocol within them.
pub const PREFACE_LEN: usize = 24;

/// An I/O stream whose reads fail once `deadline` passes before
/// [`PREFACE_LEN`] bytes were read.
#[derive(Debug)]
pub struct PrefaceDeadline<I> {
    inner: I,
    /// `None` once enough bytes arrived.
    deadline: Option<Pin<Box<Sleep>>>,
    read: usize,
}

impl<I> PrefaceDeadline<I> {
    pub fn new(inner: I, timeout: Duration) -> PrefaceDeadline<I> {
        PrefaceDeadline {
            inner,
            deadline: Some(Box::pin(tokio::time::sleep(timeout))),
            read: 0,
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for PrefaceDeadline<I> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(result) => {
                this.read = this.read.saturating_add(buf.filled().len() - before);
                if this.read >= PREFACE_LEN {
                    this.deadline = None;
                }
                Poll::Ready(result)
            }
            Poll::Pending => match this.deadline.as_mut().map(|d| d.as_mut().poll(cx)) {
                Some(Poll::Ready(())) => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "client sent too little within the header read timeout",
                ))),
                _ => Poll::Pending,
            },
        }
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for PrefaceDeadline<I> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const SHORT: Duration = Duration::from_millis(200);

    #[tokio::test]
    async fn a_silent_peer_times_out() {
        let (client, server) = tokio::io::duplex(64);
        let mut io = PrefaceDeadline::new(server, SHORT);
        let mut buf = [0u8; 8];
        let err = io.read(&mut buf).await.expect_err("deadline");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        drop(client);
    }

    #[tokio::test]
    async fn a_dripping_peer_times_out_before_the_preface_is_complete() {
        let (mut client, server) = tokio::io::duplex(64);
        let mut io = PrefaceDeadline::new(server, SHORT);
        let mut buf = [0u8; 32];
        client.write_all(b"PRI * HT").await.expect("write");
        assert_eq!(io.read(&mut buf).await.expect("first bytes"), 8);
        let err = io.read(&mut buf).await.expect_err("deadline");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test]
    async fn no_deadline_after_the_preface_length() {
        let (mut client, server) = tokio::io::duplex(64);
        let mut io = PrefaceDeadline::new(server, SHORT);
        let mut buf = [0u8; 64];
        client
            .write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n")
            .await
            .expect("write");
        assert!(io.read(&mut buf).await.expect("request line") >= PREFACE_LEN);
        tokio::time::sleep(SHORT * 3).await;
        client.write_all(b"\r\n").await.expect("write");
        assert_eq!(io.read(&mut buf).await.expect("later bytes are not timed"), 2);
    }
}
