//! A connection's bytes waiting to be written, without copying large
//! payloads.
//!
//! Encoded packets are appended to one buffer, except the payloads of large
//! PUBLISHes: those stay in the message they belong to (shared with every
//! other subscriber, and with the read buffer they arrived in) and are
//! written from there with a vectored write. Copying them into the buffer
//! costs CPU and keeps a second copy of every payload in memory while it
//! waits (a 64 KiB message to 100 subscribers: 6.4 MB of copies). TLS
//! takes the slices too (rustls copies them into records as it encrypts);
//! a stream that does not write vectored (WebSocket) gets everything
//! copied, as before.

use bytes::{Buf, Bytes, BytesMut};
use std::collections::VecDeque;
use std::io::IoSlice;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::AsyncWrite;

/// Payloads from this size on are not copied (when the stream can write
/// vectored). Below it a copy costs less than a slice of its own: at 1 KiB,
/// sharing measured 5-10% slower in fan-in (a reference count touched from
/// two threads per payload, and writev gathering 64 small slices).
pub(crate) const SHARED_MIN: usize = 4 * 1024;

/// Most slices one write takes.
const MAX_SLICES: usize = 64;

/// Bytes to write, in order: runs of the own buffer, and shared payloads.
#[derive(Debug, Default)]
pub(crate) struct WriteBuf {
    /// Encoded bytes, minus the shared payloads.
    own: BytesMut,
    /// Write order, when any payload is shared (empty otherwise: then
    /// `own` is all there is).
    parts: VecDeque<Part>,
    /// Bytes in all.
    len: usize,
}

#[derive(Debug)]
enum Part {
    /// The next this many bytes of `own`.
    Own(usize),
    /// A payload, not copied.
    Shared(Bytes),
}

impl WriteBuf {
    /// Bytes waiting in all.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends with `encode`, which writes into the own buffer (and writes
    /// nothing if it fails).
    pub(crate) fn encode<E>(
        &mut self,
        encode: impl FnOnce(&mut BytesMut) -> Result<(), E>,
    ) -> Result<(), E> {
        let before = self.own.len();
        encode(&mut self.own)?;
        self.owned(self.own.len() - before);
        Ok(())
    }

    /// Appends a packet whose head `encode` writes into the own buffer and
    /// whose last bytes are `payload`, which is not copied.
    pub(crate) fn encode_with_payload<E>(
        &mut self,
        encode_head: impl FnOnce(&mut BytesMut) -> Result<(), E>,
        payload: &Bytes,
    ) -> Result<(), E> {
        self.encode(encode_head)?;
        if self.parts.is_empty() {
            // Everything so far is one run of the own buffer.
            self.parts.push_back(Part::Own(self.own.len()));
        }
        self.parts.push_back(Part::Shared(payload.clone()));
        self.len += payload.len();
        Ok(())
    }

    /// `n` more bytes were appended to the own buffer.
    fn owned(&mut self, n: usize) {
        self.len += n;
        if self.parts.is_empty() || n == 0 {
            return;
        }
        match self.parts.back_mut() {
            Some(Part::Own(k)) => *k += n,
            _ => self.parts.push_back(Part::Own(n)),
        }
    }

    /// Writes what it can of the front; `Ready(Ok(n))` with the bytes
    /// written (and dropped from here).
    pub(crate) fn poll_write_to<S: AsyncWrite + Unpin>(
        &mut self,
        stream: &mut S,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<usize>> {
        let n = if self.parts.is_empty() {
            std::task::ready!(Pin::new(stream).poll_write(cx, &self.own))?
        } else {
            let mut slices = [IoSlice::new(&[]); MAX_SLICES];
            let mut count = 0;
            let mut at = 0;
            for part in self.parts.iter().take(MAX_SLICES) {
                slices[count] = match part {
                    Part::Own(k) => {
                        let s = IoSlice::new(&self.own[at..at + k]);
                        at += k;
                        s
                    }
                    Part::Shared(b) => IoSlice::new(b),
                };
                count += 1;
            }
            std::task::ready!(Pin::new(stream).poll_write_vectored(cx, &slices[..count]))?
        };
        self.advance(n);
        Poll::Ready(Ok(n))
    }

    /// Drops the first `n` bytes.
    fn advance(&mut self, n: usize) {
        self.drop_front(n);
        if self.len == 0 {
            // Everything is written: start the next round at the front of
            // the allocation again. Left where the written bytes ended, the
            // next round fills what is behind them, and once that runs out
            // `BytesMut` reallocates at twice the size (it moves bytes back
            // to the front only when fewer are kept than were written):
            // busy connections ended up with 64 KiB write buffers, not 32.
            // Asking for more than the tail holds makes it take the
            // written front back; it never allocates.
            let _ = self.own.try_reclaim(self.own.capacity() + 1);
        }
    }

    fn drop_front(&mut self, mut n: usize) {
        self.len -= n;
        if self.parts.is_empty() {
            self.own.advance(n);
            return;
        }
        while n > 0 {
            let Some(front) = self.parts.front_mut() else {
                break;
            };
            match front {
                Part::Own(k) => {
                    let m = n.min(*k);
                    self.own.advance(m);
                    *k -= m;
                    n -= m;
                    if *k == 0 {
                        self.parts.pop_front();
                    }
                }
                Part::Shared(b) => {
                    let m = n.min(b.len());
                    b.advance(m);
                    n -= m;
                    if b.is_empty() {
                        self.parts.pop_front();
                    }
                }
            }
        }
        if self.parts.iter().all(|p| matches!(p, Part::Own(_))) {
            // Back to one run of the own buffer.
            self.parts.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    /// A stream that takes at most `max` bytes per write, vectored or not.
    struct Trickle {
        got: Vec<u8>,
        max: usize,
        vectored_writes: usize,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let n = buf.len().min(self.max);
            self.got.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }
        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            self.vectored_writes += 1;
            let mut left = self.max;
            for b in bufs {
                let n = b.len().min(left);
                self.got.extend_from_slice(&b[..n]);
                left -= n;
            }
            Poll::Ready(Ok(self.max - left))
        }
        fn is_write_vectored(&self) -> bool {
            true
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn put(b: &[u8]) -> impl FnOnce(&mut BytesMut) -> Result<(), ()> + '_ {
        move |buf| {
            buf.extend_from_slice(b);
            Ok(())
        }
    }

    /// Writes all of `w` to a stream taking at most `max` bytes a write.
    fn write_all(w: &mut WriteBuf, max: usize) -> Trickle {
        let mut s = Trickle {
            got: Vec::new(),
            max,
            vectored_writes: 0,
        };
        let mut cx = Context::from_waker(std::task::Waker::noop());
        while !w.is_empty() {
            match w.poll_write_to(&mut s, &mut cx) {
                Poll::Ready(Ok(n)) => assert!(n > 0),
                other => panic!("{other:?}"),
            }
        }
        s
    }

    /// Rounds of writes reuse one allocation: a round that fits in the
    /// buffer never makes it grow, however the previous rounds left it.
    #[test]
    fn a_written_buffer_is_reused_from_its_front() {
        let packet = [7u8; 1000];
        let mut w = WriteBuf::default();
        for _ in 0..30 {
            w.encode(put(&packet)).unwrap();
        }
        let capacity = w.own.capacity();
        write_all(&mut w, usize::MAX);
        // A short round, then one as long as the first.
        for round in [3, 30, 1, 30] {
            for _ in 0..round {
                w.encode(put(&packet)).unwrap();
                assert!(
                    w.own.capacity() <= capacity,
                    "in a round of {round}: the allocation grew to {}",
                    w.own.capacity()
                );
            }
            write_all(&mut w, usize::MAX);
        }
    }

    /// Whatever the write sizes, the bytes come out in order, shared
    /// payloads in their place, and a failed encode adds nothing.
    #[test]
    fn writes_everything_in_order_across_partial_writes() {
        for max in [1, 3, 7, 64, 1 << 20] {
            let mut w = WriteBuf::default();
            let mut expected = Vec::new();
            for i in 0..20u8 {
                let head = vec![i; 5];
                expected.extend_from_slice(&head);
                if i % 3 == 0 {
                    let payload = Bytes::from(vec![100 + i; 40]);
                    expected.extend_from_slice(&payload);
                    w.encode_with_payload(put(&head), &payload).unwrap();
                } else {
                    w.encode(put(&head)).unwrap();
                }
                assert!(w.encode(|_| Err::<(), _>("no")).is_err());
            }
            assert_eq!(w.len(), expected.len());
            let s = write_all(&mut w, max);
            assert_eq!(s.got, expected, "max {max}");
            assert!(s.vectored_writes > 0);
            assert!(w.parts.is_empty() && w.own.is_empty());
        }
    }
}
