//! One connection's byte stream, driven in both directions from the
//! connection's single task: packets are read and decoded, what the
//! [`Outbox`] holds is encoded and written (everything queued in one write),
//! and the keep-alive is timed, all in one poll.
//!
//! Shaped for memory per idle connection: there is no second task to wait on
//! the outbox, and no buffer is held while the connection is quiet. Reads go
//! through a buffer on the poller's stack; only bytes that are being decoded
//! (or an incomplete packet) are copied to the heap, and that buffer is
//! dropped once it is empty. Packets decoded from a read share its
//! allocation, so the allocation lives on only as long as they do. The
//! write side keeps its buffers between bursts, and lets them go once idle
//! across a tick of the [`IdleSweep`].

use super::alias::OutboundAliases;
use super::encode::encode_into;
use super::preauth::Charge;
use super::shared::Shared;
use super::stall::Stall;
use super::sweep::IdleSweep;
use super::wbuf::WriteBuf;
use crate::broker::{Outbound, Outbox, Reclaim, Tracked};
use crate::codec::{DecodeError, Decoder, Packet, PacketType, ProtocolVersion};
use crate::config::Limits;
use crate::stats::{self, Stats};
use bytes::BytesMut;
use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Most bytes one read takes. It lives on the stack only while a read runs.
const READ_CHUNK: usize = 8 * 1024;

/// Room made in the heap buffer for one read while streaming.
const STREAM_CHUNK: usize = 16 * 1024;

/// Encoded bytes one write round prepares: the write buffer's size, which
/// a busy connection keeps. Encoding stops [`WRITE_SLACK`] short of it, so
/// the packet that crosses the line still fits (packets up to that size),
/// instead of doubling the buffer.
const WRITE_CHUNK: usize = 32 * 1024;
const WRITE_SLACK: usize = 2 * 1024;

/// What the connection should act on next.
// The packet moves by value: boxing it would cost an allocation per packet.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub(crate) enum Step {
    /// A packet arrived.
    Packet(Packet),
    /// The peer closed its end, or reading or writing failed.
    Lost,
    /// The peer sent bytes that do not decode.
    Malformed(DecodeError),
    /// A packet begun was not completed within `limits.packet_read_timeout`.
    Stalled,
    /// The stream accepted none of the bytes waiting to be written for
    /// `limits.write_timeout`: the client does not read (see
    /// [`super::stall`]).
    WriteTimeout,
    /// The outbox was closed and everything in it is written; the stream's
    /// write side is shut down.
    Finished,
}

/// The budget for connections before CONNACK has no room for more bytes
/// from this one.
#[derive(Debug)]
pub(crate) struct OverBudget;

/// Where the write direction stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Writing {
    /// Writing what the outbox holds.
    Open,
    /// The outbox finished; shutting the stream's write side down.
    ShuttingDown,
    /// Done: shut down after the outbox finished.
    Finished,
    /// A write failed: the connection is lost.
    Failed,
    /// Nothing written for `limits.write_timeout` (see [`super::stall`]):
    /// the connection is to be dropped.
    TimedOut,
}

/// Where the read direction stands between two packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reading {
    /// The last packet was handed out; the next one has not been asked for.
    Between,
    /// Reads are paused (backpressure) and `pause` bounds the pause.
    Paused,
    /// The client's answers not yet written are past their bound
    /// ([`Outbox::answers_full`]): nothing is read until they are. No
    /// timer: the bound must hold however long the client does not read.
    Full,
    /// Waiting for a packet.
    Waiting,
}

/// A byte stream with its decoder, buffers and outbound topic aliases.
pub(crate) struct Duplex<S> {
    stream: S,
    decoder: Decoder,
    /// Read and not yet decoded. Unallocated when empty.
    rbuf: BytesMut,
    /// The last read filled its buffer: the next reads straight into
    /// `rbuf` rather than through the stack.
    streaming: bool,
    /// While the connection writes (see [`Duplex::idle`]).
    write: Option<Box<WriteBuffers>>,
    /// The sweep's epoch when a batch was last drained (0: never).
    wrote_at: u32,
    /// Batches come often: two were drained within a tick of each other
    /// (cleared when the buffers are freed).
    busy: bool,
    /// The sweep's epoch when this connection last asked to be woken at
    /// the next tick.
    woken_after: u32,
    /// Written bytes not yet flushed (TLS and WebSocket streams buffer
    /// what they are given until flushed).
    unflushed: bool,
    /// `timer` is the read deadline of the packet partly read now.
    deadline_set: bool,
    writing: Writing,
    reading: Reading,
    /// While reads are paused, it bounds the pause; otherwise, once
    /// `deadline_set`, it is when the packet partly read must be complete
    /// (see [`Duplex::poll_step`]). One timer serves both, as they never
    /// run at once; it is allocated only while either runs, so an idle
    /// connection's task holds none. The keep-alive needs no timer here:
    /// the core watches it (see `broker::keepalive`).
    timer: Option<Pin<Box<Sleep>>>,
    version: ProtocolVersion,
    aliases: OutboundAliases,
}

/// The write side's buffers.
#[derive(Default)]
struct WriteBuffers {
    /// Encoded and not yet written.
    out: WriteBuf,
    /// Drained from the outbox; empty between drains.
    batch: VecDeque<Outbound>,
    /// Written messages for the core to free (see [`crate::link::reclaim`]);
    /// empty between write rounds.
    kept: Vec<Arc<Tracked>>,
    /// The write-progress deadline. Here, as bytes can only be blocked
    /// while these buffers exist: an idle connection holds no timer.
    stall: Stall,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Duplex<S> {
    /// A stream whose CONNECT is yet to come, accepting packets of up to
    /// `maximum_connect_size` bytes until [`Duplex::connected`].
    pub(super) fn new(stream: S, maximum_connect_size: u32) -> Self {
        Duplex {
            stream,
            decoder: Decoder::new(maximum_connect_size),
            rbuf: BytesMut::new(),
            streaming: false,
            write: None,
            wrote_at: 0,
            busy: false,
            woken_after: 0,
            unflushed: false,
            deadline_set: false,
            writing: Writing::Open,
            reading: Reading::Between,
            timer: None,
            version: ProtocolVersion::V3_1_1,
            aliases: OutboundAliases::new(0, 0),
        }
    }

    /// After the CONNECT exchange: the version to encode for, the client's
    /// topic alias maximum, and the limits past CONNACK (the largest packet
    /// accepted, the bytes aliases may take).
    pub(super) fn connected(&mut self, version: ProtocolVersion, aliases: u16, limits: &Limits) {
        self.version = version;
        self.aliases = OutboundAliases::new(aliases, limits.maximum_topic_alias_bytes);
        self.decoder.set_max_packet_size(limits.maximum_packet_size);
    }

    /// Reads until one packet is decoded (before the session exists: no
    /// outbox, no keep-alive). `Step::Lost` is a clean end of stream too.
    ///
    /// Every byte is charged to `charge` before it is buffered, and so is
    /// the room the decoder makes for a packet its fixed header declares;
    /// `Err` when the budget has no room (the connection is to be refused).
    pub(super) async fn read_packet(
        &mut self,
        stats: &Stats,
        charge: &mut Charge<'_>,
    ) -> Result<Step, OverBudget> {
        poll_fn(|cx| loop {
            let declared = self.decoder.frame_len(&self.rbuf).unwrap_or(0);
            if !charge.hold(self.rbuf.len().max(declared)) {
                return Poll::Ready(Err(OverBudget));
            }
            if let Some(step) = self.decode(stats) {
                if matches!(step, Step::Packet(_)) {
                    charge.settle();
                }
                return Poll::Ready(Ok(step));
            }
            // Through the stack, so nothing is buffered before it is
            // charged.
            let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
            let mut rb = ReadBuf::uninit(&mut chunk);
            if ready!(Pin::new(&mut self.stream).poll_read(cx, &mut rb)).is_err() {
                return Poll::Ready(Ok(Step::Lost));
            }
            let n = rb.filled().len();
            if n == 0 {
                return Poll::Ready(Ok(Step::Lost));
            }
            if !charge.hold(self.rbuf.len() + n) {
                return Poll::Ready(Err(OverBudget));
            }
            self.rbuf.extend_from_slice(rb.filled());
            stats::add(&stats.bytes_received, n as u64);
        })
        .await
    }

    /// The protocol level of a CONNECT refused from its fixed header alone
    /// (too large), read from the bytes after it; reads at most the few
    /// bytes it needs. `None` if the stream ends or the bytes are not a
    /// CONNECT's.
    pub(super) async fn connect_level(&mut self) -> Option<u8> {
        use tokio::io::AsyncReadExt;
        // The fixed header, then the protocol name ("MQTT" or "MQIsdp")
        // with its length, then the level.
        let header = 1
            + self
                .rbuf
                .get(1..)?
                .iter()
                .take(4)
                .position(|b| b & 0x80 == 0)?
            + 1;
        loop {
            let at = match self.rbuf.get(header..header + 2) {
                Some(&[hi, lo]) => header + 2 + usize::from(u16::from_be_bytes([hi, lo])),
                _ => header + 2,
            };
            if at > header + 8 {
                return None;
            }
            if let Some(&level) = self.rbuf.get(at) {
                return Some(level);
            }
            let mut more = [0u8; 16];
            let want = (at + 1 - self.rbuf.len()).min(more.len());
            let n = self.stream.read(&mut more[..want]).await.ok()?;
            if n == 0 {
                return None;
            }
            self.rbuf.extend_from_slice(&more[..n]);
        }
    }

    /// Writes `bytes` and flushes (before the session exists).
    pub(super) async fn write_now(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        use tokio::io::AsyncWriteExt;
        self.stream.write_all(bytes).await?;
        self.stream.flush().await
    }

    /// Shuts the write side down (before the session exists).
    pub(super) async fn shutdown(&mut self) {
        use tokio::io::AsyncWriteExt;
        let _ = self.stream.shutdown().await;
    }

    /// Waits for what the connection must act on next, writing what the
    /// outbox holds meanwhile, and tells the outbox when it starts waiting
    /// for the client and when the client spoke (for the keep-alive).
    pub(super) fn poll_step(
        &mut self,
        cx: &mut Context<'_>,
        outbox: &Outbox,
        shared: &Shared,
    ) -> Poll<Step> {
        let stats = &*shared.stats;
        match self.poll_write(cx, outbox, shared) {
            Poll::Ready(Writing::Finished) => return Poll::Ready(Step::Finished),
            Poll::Ready(Writing::TimedOut) => return Poll::Ready(Step::WriteTimeout),
            Poll::Ready(_) => return Poll::Ready(Step::Lost),
            Poll::Pending => {}
        }
        if matches!(self.reading, Reading::Between | Reading::Full) {
            if outbox.answers_full() {
                // The client does not read what it asked for, or its
                // answers wait behind a held one: its next packets wait in
                // the socket. The write side's waker (the socket, or the
                // outbox for held answers) wakes this when they move.
                if self.reading == Reading::Between {
                    stats::add(&stats.answer_pauses, 1);
                    self.reading = Reading::Full;
                    // As for a pause: the time is the broker's, a packet
                    // partly read gets its full read timeout afterwards.
                    self.deadline_set = false;
                }
                return Poll::Pending;
            }
            self.reading = Reading::Between;
        }
        if self.reading == Reading::Between {
            if let Some(bound) = outbox.poll_paused(cx) {
                // Backpressure: a subscriber this client publishes to is
                // behind. Packets already read wait too.
                let until = Instant::now() + bound;
                match self.timer.as_mut() {
                    Some(timer) => timer.as_mut().reset(until),
                    None => self.timer = Some(Box::pin(tokio::time::sleep_until(until))),
                }
                // The time paused is the broker's: a packet partly read
                // gets its full read timeout again afterwards.
                self.deadline_set = false;
                self.reading = Reading::Paused;
                outbox.watch_brief_pause();
            }
        }
        if let (Reading::Paused, Some(timer)) = (self.reading, self.timer.as_mut()) {
            while outbox.poll_paused(cx).is_some() {
                if timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                // The bound passed; a brief pause renewed meanwhile goes on.
                if !outbox.brief_pause_renewed() {
                    break;
                }
                timer.as_mut().reset(Instant::now() + outbox.brief_bound());
            }
            // Lifted, or its bound passed: a brief pause is then over.
            outbox.end_brief_pause();
            self.reading = Reading::Between;
            if self.rbuf.is_empty() {
                self.timer = None;
            }
        }
        if self.reading != Reading::Waiting {
            // Packets already buffered are taken first: the keep-alive
            // runs only while the connection waits for the client (one
            // clock read per socket read, not per packet).
            if let Some(step) = self.decode(stats) {
                return Poll::Ready(step);
            }
            outbox.listening(shared.clock.mono_ms());
            self.reading = Reading::Waiting;
        }
        let step = match self.poll_read(cx, stats) {
            Poll::Ready(step) => step,
            Poll::Pending => return self.poll_deadline(cx, &shared.opts.limits),
        };
        // The client spoke: it is not silent until the connection waits
        // for it again, however long the broker takes (paused reads, a
        // wait for the core) to get through what it sent.
        outbox.heard();
        Poll::Ready(step)
    }

    /// Waiting for the client with part of a packet read: the rest must
    /// come within `packet_read_timeout` of the time the connection
    /// started waiting for it. The keep-alive does not bound this: it is
    /// 0 (none) if the client asks, and a client trickling a large packet
    /// a byte at a time would hold its buffer forever. Between packets
    /// (nothing buffered) no timer runs.
    fn poll_deadline(&mut self, cx: &mut Context<'_>, limits: &Limits) -> Poll<Step> {
        if self.rbuf.is_empty() {
            return Poll::Pending;
        }
        let timer = match self.timer.as_mut() {
            Some(timer) if self.deadline_set => timer,
            Some(timer) => {
                timer
                    .as_mut()
                    .reset(Instant::now() + limits.packet_read_timeout);
                self.deadline_set = true;
                timer
            }
            None => {
                self.deadline_set = true;
                self.timer
                    .insert(Box::pin(tokio::time::sleep(limits.packet_read_timeout)))
            }
        };
        ready!(timer.as_mut().poll(cx));
        self.timer = None;
        self.deadline_set = false;
        Poll::Ready(Step::Stalled)
    }

    /// Writes until the outbox is finished and the write side shut down,
    /// or writing fails. Reads nothing. True if it finished.
    pub(super) async fn finish_writing(&mut self, outbox: &Outbox, shared: &Shared) -> bool {
        poll_fn(|cx| self.poll_write(cx, outbox, shared)).await == Writing::Finished
    }

    /// Runs `fut` while writing what the outbox holds (reading nothing),
    /// so a connection that waits on the broker core or on a hook still
    /// delivers.
    pub(super) fn while_writing<'a, F: Future + ?Sized + 'a>(
        &'a mut self,
        outbox: &'a Outbox,
        shared: &'a Shared,
        mut fut: Pin<Box<F>>,
    ) -> impl Future<Output = F::Output> + 'a {
        poll_fn(move |cx| {
            // A write failure or the end surfaces at the next poll_step.
            let _ = self.poll_write(cx, outbox, shared);
            fut.as_mut().poll(cx)
        })
    }

    /// Reads and discards what the peer still sends, for at most `limit`
    /// bytes; ends at end of stream or on an error.
    pub(super) async fn discard(&mut self, limit: usize) {
        let mut total = 0;
        poll_fn(|cx| {
            while total < limit {
                let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
                let mut rb = ReadBuf::uninit(&mut chunk);
                match ready!(Pin::new(&mut self.stream).poll_read(cx, &mut rb)) {
                    Ok(()) if !rb.filled().is_empty() => total += rb.filled().len(),
                    _ => break,
                }
            }
            Poll::Ready(())
        })
        .await
    }

    /// A packet from what is already buffered, if a whole one is there.
    fn decode(&mut self, stats: &Stats) -> Option<Step> {
        match self.decoder.decode(&mut self.rbuf) {
            Ok(Some(p)) => {
                stats::add(&stats.packets_received, 1);
                // The next packet's read deadline starts when the
                // connection waits for its rest (never while paused: the
                // pause handling does not decode).
                self.deadline_set = false;
                if self.rbuf.is_empty() {
                    // Drop the handle: the allocation lives on in the
                    // decoded packets only as long as they do.
                    self.rbuf = BytesMut::new();
                    self.timer = None;
                }
                self.reading = Reading::Between;
                Some(Step::Packet(p))
            }
            Ok(None) => None,
            Err(e) => Some(Step::Malformed(e)),
        }
    }

    /// The type (the fixed header's high nibble) of the next packet already
    /// read, if any byte of it is.
    pub(super) fn next_type(&self) -> Option<PacketType> {
        self.rbuf.first().and_then(|&b| PacketType::from_header(b))
    }

    /// The next packet if it is already read in full; no I/O.
    pub(super) fn buffered(&mut self, stats: &Stats) -> Option<Step> {
        self.decode(stats)
    }

    /// Reads until a packet is decoded or the stream has nothing more now.
    fn poll_read(&mut self, cx: &mut Context<'_>, stats: &Stats) -> Poll<Step> {
        loop {
            let n = if self.streaming {
                // More is probably waiting: read straight into the heap
                // buffer the packets will share, saving a copy of every
                // byte (a busy connection needs the buffer anyway).
                self.rbuf.reserve(STREAM_CHUNK);
                let read = tokio::io::AsyncReadExt::read_buf(&mut self.stream, &mut self.rbuf);
                match ready!(std::pin::pin!(read).poll(cx)) {
                    Ok(n) => n,
                    Err(_) => return Poll::Ready(Step::Lost),
                }
            } else {
                let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
                let mut rb = ReadBuf::uninit(&mut chunk);
                if ready!(Pin::new(&mut self.stream).poll_read(cx, &mut rb)).is_err() {
                    return Poll::Ready(Step::Lost);
                }
                self.rbuf.extend_from_slice(rb.filled());
                rb.filled().len()
            };
            if n == 0 {
                return Poll::Ready(Step::Lost);
            }
            // A read that filled its buffer left more behind, most likely.
            self.streaming = n >= READ_CHUNK;
            stats::add(&stats.bytes_received, n as u64);
            if let Some(step) = self.decode(stats) {
                return Poll::Ready(step);
            }
        }
    }

    /// Writes, flushes, drains the outbox, and again, until the stream or
    /// the outbox has nothing more now. `Ready` once the write side is done
    /// (finished or failed).
    fn poll_write(
        &mut self,
        cx: &mut Context<'_>,
        outbox: &Outbox,
        shared: &Shared,
    ) -> Poll<Writing> {
        let stats = &*shared.stats;
        loop {
            match self.writing {
                Writing::Open => {}
                Writing::ShuttingDown => {
                    // A failed shutdown changes nothing: nothing more is sent.
                    // A TLS stream writes its close_notify here, which a
                    // client that does not read can block too.
                    if Pin::new(&mut self.stream).poll_shutdown(cx).is_pending() {
                        return self.blocked(cx, shared);
                    }
                    self.writing = Writing::Finished;
                    return Poll::Ready(self.writing);
                }
                done => return Poll::Ready(done),
            }
            if let Some(w) = self.write.as_mut().filter(|w| !w.out.is_empty()) {
                match w.out.poll_write_to(&mut self.stream, cx) {
                    Poll::Ready(Ok(n)) if n > 0 => {
                        stats::add(&stats.bytes_sent, n as u64);
                        self.unflushed = true;
                        w.stall.progressed();
                    }
                    Poll::Ready(_) => self.writing = Writing::Failed,
                    Poll::Pending => return self.blocked(cx, shared),
                }
                continue;
            }
            if self.unflushed {
                match Pin::new(&mut self.stream).poll_flush(cx) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(_)) => {
                        self.writing = Writing::Failed;
                        continue;
                    }
                    Poll::Pending => return self.blocked(cx, shared),
                }
                self.unflushed = false;
                if let Some(w) = self.write.as_mut() {
                    w.stall.progressed();
                }
            }
            // What the last drain left unencoded goes first.
            if let Some(w) = self.write.as_mut().filter(|w| !w.batch.is_empty()) {
                let share = self.stream.is_write_vectored();
                encode(
                    &mut w.batch,
                    self.version,
                    &mut self.aliases,
                    (&mut w.out, share),
                    stats,
                    &mut w.kept,
                );
                shared.reclaim.give(&mut w.kept);
                continue;
            }
            let mut batch = match self.write.as_mut() {
                Some(w) => std::mem::take(&mut w.batch),
                None => VecDeque::new(),
            };
            match outbox.poll_drain(cx, || shared.clock.now_ms(), &mut batch) {
                Poll::Ready(true) => {
                    let epoch = shared.sweep.epoch();
                    self.busy |= self.wrote_at != 0 && self.wrote_at + 1 >= epoch;
                    self.wrote_at = epoch;
                    let w = self.write.get_or_insert_default();
                    let share = self.stream.is_write_vectored();
                    encode(
                        &mut batch,
                        self.version,
                        &mut self.aliases,
                        (&mut w.out, share),
                        stats,
                        &mut w.kept,
                    );
                    shared.reclaim.give(&mut w.kept);
                    w.batch = batch;
                }
                Poll::Ready(false) => self.writing = Writing::ShuttingDown,
                Poll::Pending => {
                    if let Some(w) = self.write.as_mut() {
                        w.batch = batch;
                        self.idle(cx, outbox, &shared.sweep);
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    /// The stream takes nothing more now, with bytes left to write (or
    /// flush, or a shutdown to finish): `Pending` while the write-progress
    /// deadline runs, `Ready(TimedOut)` once it passed.
    fn blocked(&mut self, cx: &mut Context<'_>, shared: &Shared) -> Poll<Writing> {
        let w = self.write.get_or_insert_default();
        ready!(w.stall.poll_expired(cx, shared.opts.limits.write_timeout));
        self.writing = Writing::TimedOut;
        Poll::Ready(self.writing)
    }

    /// Everything is written. A busy connection keeps its write buffers
    /// until it has drained nothing for a whole tick of the sweep (it asks
    /// to be woken at each tick to check); any other lets them go at once,
    /// so one that only got its CONNACK, or gets a message now and then,
    /// keeps nothing.
    fn idle(&mut self, cx: &Context<'_>, outbox: &Outbox, sweep: &IdleSweep) {
        let epoch = sweep.epoch();
        if !self.busy || epoch > self.wrote_at + 1 {
            self.write = None;
            self.busy = false;
            outbox.trim();
        } else if self.woken_after != epoch {
            sweep.wake_at_next_tick(cx.waker());
            self.woken_after = epoch;
        }
    }
}

/// Encodes the batch into `out`, leaving the batch empty.
/// Encodes packets from the front of `batch` into `out` until `out` holds
/// [`WRITE_CHUNK`] bytes or the batch is done; the rest wait in the batch.
/// A subscriber that fell behind can have thousands of packets queued:
/// encoding them all at once would keep a copy of every one of them in a
/// buffer that (while the connection stays busy) never shrinks again.
/// `out` comes with whether the stream writes vectored (then large
/// payloads are not copied into it).
fn encode(
    batch: &mut VecDeque<Outbound>,
    version: ProtocolVersion,
    aliases: &mut OutboundAliases,
    (out, share_payloads): (&mut WriteBuf, bool),
    stats: &Stats,
    kept: &mut Vec<Arc<Tracked>>,
) {
    let mut publishes = 0u64;
    let mut packets = 0;
    for packet in batch.iter_mut() {
        if out.len() >= WRITE_CHUNK - WRITE_SLACK {
            break;
        }
        packets += 1;
        publishes += u64::from(packet.is_publish());
        if let Err(e) = encode_into(packet, version, aliases, out, share_payloads) {
            tracing::warn!(error = %e, packet = packet.name(), "cannot encode");
        }
    }
    for packet in batch.drain(..packets) {
        if let Outbound::Deliver(d) = packet {
            Reclaim::keep(kept, d.msg);
        }
    }
    stats::add(&stats.packets_sent, packets as u64);
    stats::add(&stats.messages_sent, publishes);
}
