//! An accepted WebSocket connection seen as a byte stream, with framing of
//! our own ([`super::frame`]) so that an idle connection holds no buffer.
//!
//! Reads go straight into the caller's buffer: the bytes read from the
//! transport are decoded there in place (headers and control frames taken
//! out, payloads unmasked), so the only read buffer is the connection
//! driver's, which it lets go when the connection is idle. Each write goes
//! out as one binary frame, its header and payload in one vectored write.
//! Pongs and the close frame are written between data frames, never
//! inside one.

use super::frame::{self, Decoder, FrameError};
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The server side of a WebSocket connection after the upgrade.
pub(crate) struct ServerStream<S> {
    inner: S,
    decoder: Decoder,
    /// Bytes read past the upgrade request, served before the stream's;
    /// unallocated once served.
    early: Vec<u8>,
    /// The header of the data frame being written, while part of it is
    /// not written yet: `head.0[head_at..head.1]` is left.
    head: frame::Head,
    head_at: usize,
    /// Payload bytes the data frame being written still owes.
    owed: u64,
    /// Whole control frames to send (pongs, a close), and how much of the
    /// first is written. Unallocated when empty.
    control: Vec<u8>,
    control_at: usize,
    /// Control frames were written and not flushed yet.
    control_unflushed: bool,
    /// A close frame is queued or sent: nothing more may be.
    close_queued: bool,
    /// Decoding failed: the close frame says why, and reads fail.
    failed: Option<FrameError>,
}

impl<S> ServerStream<S> {
    /// `early`: what the upgrade read past the request head.
    pub(crate) fn new(inner: S, early: Vec<u8>) -> Self {
        ServerStream {
            inner,
            decoder: Decoder::default(),
            early,
            head: ([0; 10], 0),
            head_at: 0,
            owed: 0,
            control: Vec::new(),
            control_at: 0,
            control_unflushed: false,
            close_queued: false,
            failed: None,
        }
    }

    /// Between data frames: a control frame may go out now.
    fn between_frames(&self) -> bool {
        self.owed == 0 && self.head_at == self.head.1
    }

    /// Queues a pong answering a ping with `payload`. A pong queued and
    /// not begun is replaced (only the latest ping needs an answer, RFC
    /// 6455 section 5.5.3); nothing goes after a close.
    fn queue_pong(&mut self, payload: &[u8]) {
        if self.close_queued {
            return;
        }
        // Keep the frame partly written, if any, and drop the rest.
        let mut keep = 0;
        while keep < self.control_at {
            keep += frame::frame_len(&self.control[keep..]);
        }
        self.control.truncate(keep);
        self.control.extend_from_slice(&frame::pong(payload));
    }

    /// Queues the close frame (once).
    fn queue_close(&mut self, code: Option<u16>) {
        if !self.close_queued {
            self.close_queued = true;
            self.control.extend_from_slice(&frame::close(code));
        }
    }
}

impl<S: AsyncWrite + Unpin> ServerStream<S> {
    /// Writes the queued control frames, if between data frames (else
    /// `Ready` at once: they wait for the frame to end).
    fn poll_write_control(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.between_frames() {
            return Poll::Ready(Ok(()));
        }
        while self.control_at < self.control.len() {
            let n =
                ready!(Pin::new(&mut self.inner).poll_write(cx, &self.control[self.control_at..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.control_at += n;
            self.control_unflushed = true;
        }
        if !self.control.is_empty() {
            self.control = Vec::new();
            self.control_at = 0;
        }
        Poll::Ready(Ok(()))
    }

    /// Writes and flushes the queued control frames (when the reader
    /// answers a ping, nobody else flushes them).
    fn poll_send_control(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_write_control(cx))?;
        if self.control_unflushed && self.control.is_empty() {
            ready!(Pin::new(&mut self.inner).poll_flush(cx))?;
            self.control_unflushed = false;
        }
        Poll::Ready(Ok(()))
    }

    /// The read side ended (a close came, or a frame was refused): the
    /// close frame goes out before the reader hears of it, unless a data
    /// frame is in the middle of being written (then it goes at shutdown).
    fn poll_closing(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.between_frames() {
            // A failure to write is the writer's to find.
            let _ = ready!(self.poll_send_control(cx));
        }
        Poll::Ready(())
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for ServerStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if let Some(e) = this.failed {
                ready!(this.poll_closing(cx));
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
            }
            if let Some(code) = this.decoder.closed() {
                // The client's close is answered (echoing its code, as RFC
                // 6455 section 5.5.1 suggests); then the end of stream.
                this.queue_close(code);
                ready!(this.poll_closing(cx));
                return Poll::Ready(Ok(()));
            }
            // A pong waiting is sent when it can be; if the transport is
            // full, its waker is set and reading goes on.
            if !this.control.is_empty() {
                if let Poll::Ready(Err(e)) = this.poll_send_control(cx) {
                    return Poll::Ready(Err(e));
                }
            }
            if buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            let start = buf.filled().len();
            if !this.early.is_empty() {
                let n = this.early.len().min(buf.remaining());
                buf.put_slice(&this.early[..n]);
                this.early.drain(..n);
                if this.early.is_empty() {
                    this.early = Vec::new();
                }
            } else {
                ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
                if buf.filled().len() == start {
                    return Poll::Ready(Ok(()));
                }
            }
            match this.decoder.decode(&mut buf.filled_mut()[start..]) {
                Ok(n) => {
                    buf.set_filled(start + n);
                    if let Some(ping) = this.decoder.take_ping() {
                        this.queue_pong(&ping);
                    }
                    if n > 0 {
                        // A pong goes now if it can (else at the next
                        // read, or flush); a close after the data is seen
                        // at the next read.
                        if !this.control.is_empty() && this.decoder.closed().is_none() {
                            if let Poll::Ready(Err(e)) = this.poll_send_control(cx) {
                                return Poll::Ready(Err(e));
                            }
                        }
                        return Poll::Ready(Ok(()));
                    }
                    // Only frame headers and control frames: read on (the
                    // top of the loop answers a ping or a close).
                }
                Err(e) => {
                    buf.set_filled(start);
                    tracing::debug!(error = %e, "WebSocket frame refused");
                    this.failed = Some(e);
                    this.queue_close(Some(e.close_code()));
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> ServerStream<S> {
    /// Writes what `bufs` holds as data: the rest of the frame being
    /// written, or a new frame of all of it. Returns the payload bytes
    /// taken.
    fn poll_write_data(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if bufs.iter().all(|b| b.is_empty()) {
            return Poll::Ready(Ok(0));
        }
        loop {
            while self.head_at < self.head.1 {
                let rest = &self.head.0[self.head_at..self.head.1];
                let n = ready!(Pin::new(&mut self.inner).poll_write(cx, rest))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.head_at += n;
            }
            if self.owed > 0 {
                let n = ready!(write_at_most(&mut self.inner, cx, bufs, self.owed))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.owed -= n as u64;
                return Poll::Ready(Ok(n));
            }
            // Between frames: control frames first.
            ready!(self.poll_write_control(cx))?;
            if self.close_queued {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "the WebSocket connection is closing",
                )));
            }
            // One frame of what is given (up to MAX_SLICES slices).
            let bufs = &bufs[..bufs.len().min(MAX_SLICES)];
            let len: usize = bufs.iter().map(|b| b.len()).sum();
            let (head, head_len) = frame::binary_head(len as u64);
            let written = if self.inner.is_write_vectored() {
                let mut slices = [IoSlice::new(&[]); MAX_SLICES + 1];
                slices[0] = IoSlice::new(&head[..head_len]);
                slices[1..=bufs.len()].copy_from_slice(bufs);
                let slices = &slices[..=bufs.len()];
                ready!(Pin::new(&mut self.inner).poll_write_vectored(cx, slices))?
            } else {
                ready!(Pin::new(&mut self.inner).poll_write(cx, &head[..head_len]))?
            };
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            let payload = written.saturating_sub(head_len);
            self.head = (head, head_len);
            self.head_at = written.min(head_len);
            self.owed = (len - payload) as u64;
            if payload > 0 {
                return Poll::Ready(Ok(payload));
            }
            // Only (part of) the header went: the payload follows, from
            // the same bytes, which the caller offers again if this
            // returns `Pending`.
        }
    }
}

/// Most slices one write passes on.
const MAX_SLICES: usize = 64;

/// Writes at most `limit` bytes of `bufs`, in order.
fn write_at_most<S: AsyncWrite + Unpin>(
    inner: &mut S,
    cx: &mut Context<'_>,
    bufs: &[IoSlice<'_>],
    limit: u64,
) -> Poll<io::Result<usize>> {
    let mut slices = [IoSlice::new(&[]); MAX_SLICES];
    let mut count = 0;
    let mut left = usize::try_from(limit).unwrap_or(usize::MAX);
    for b in bufs.iter().take(MAX_SLICES) {
        if left == 0 {
            break;
        }
        let k = b.len().min(left);
        slices[count] = IoSlice::new(&b[..k]);
        count += 1;
        left -= k;
    }
    if count == 1 || !inner.is_write_vectored() {
        let first = slices[..count].iter().find(|s| !s.is_empty());
        return Pin::new(inner).poll_write(cx, first.map_or(&[][..], |s| &s[..]));
    }
    Pin::new(inner).poll_write_vectored(cx, &slices[..count])
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for ServerStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_data(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_data(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_write_control(cx))?;
        ready!(Pin::new(&mut self.inner).poll_flush(cx))?;
        self.control_unflushed = false;
        Poll::Ready(Ok(()))
    }

    /// Sends a close frame (1000, unless one is queued already) and shuts
    /// the transport's write side down. With a data frame cut short, no
    /// close frame can follow: the transport just ends.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.between_frames() {
            self.queue_close(Some(frame::NORMAL));
            ready!(self.poll_write_control(cx))?;
        }
        ready!(Pin::new(&mut self.inner).poll_flush(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
