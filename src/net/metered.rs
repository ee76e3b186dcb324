//! A stream metered against the budget of unauthenticated bytes (see
//! [`super::preauth`]) until its client is admitted.

use super::shared::Shared;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What a transport may read before CONNECT beyond the CONNECT itself
/// (a WebSocket upgrade request and frame headers).
const HANDSHAKE_ALLOWANCE: usize = 16 * 1024;

/// A stream whose reads are charged to the budget until its client is
/// admitted, for transports that read bytes the MQTT decoder never sees
/// (and so never charges): the WebSocket upgrade request and frame
/// headers. One
/// connection may read `limits.maximum_connect_size` plus a little for the
/// handshake before CONNACK, all of them together
/// `limits.maximum_unauthenticated_bytes`; past either, the read fails and
/// the connection ends.
pub(crate) struct Metered<S> {
    inner: S,
    shared: Arc<Shared>,
    /// Set once the CONNECT exchange admitted the client (see
    /// `connection::Peer::admitted`): reads are free from then on.
    admitted: Arc<AtomicBool>,
    held: usize,
}

impl<S> Metered<S> {
    /// Meters `inner` until `admitted` is set.
    pub(super) fn new(inner: S, shared: Arc<Shared>, admitted: Arc<AtomicBool>) -> Self {
        Metered {
            inner,
            shared,
            admitted,
            held: 0,
        }
    }

    fn release(&mut self) {
        self.shared.preauth.give(std::mem::take(&mut self.held));
    }
}

impl<S> Drop for Metered<S> {
    fn drop(&mut self) {
        self.release();
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Metered<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        if this.admitted.load(Ordering::Relaxed) {
            if this.held > 0 {
                this.release();
            }
            return Poll::Ready(Ok(()));
        }
        let n = buf.filled().len() - before;
        let limits = &this.shared.opts.limits;
        let cap = (limits.maximum_connect_size as usize).saturating_add(HANDSHAKE_ALLOWANCE);
        let fits = this.held + n <= cap
            && this
                .shared
                .preauth
                .take(n, limits.maximum_unauthenticated_bytes);
        if !fits {
            crate::stats::add(&this.shared.stats.unauthenticated_refused, 1);
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "more bytes before CONNACK than maximum_connect_size allows",
            )));
        }
        this.held += n;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Metered<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
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

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
