//! The queue of packets waiting to be written to one connection.
//!
//! The broker core pushes packets under a short lock and never waits; the
//! connection's task drains everything that is queued in one go, so many
//! packets share one write (coalescing). The core reads the queue length to
//! apply its slow-consumer policy.
//!
//! An outbox has exactly one consumer (a connection's task, or the inline
//! client's relay), so one waker slot is enough: it is cheaper to keep per
//! connection than a `Notify`, and it lets the consumer wait on the outbox
//! and its socket in the same poll. An idle connection's outbox holds no
//! allocation (see [`Outbox::poll_drain`] and [`Outbox::trim`]).
//!
//! **Commit barrier.** With a persistent store, an acknowledgement may only
//! leave once what it acknowledges is committed. Such a packet is pushed
//! *held* with the number of the commit it waits for; every packet pushed
//! after it for this connection queues behind it, so the connection's order
//! is kept. The commit task releases held packets once their commit is
//! durable, or, if it failed, turns the acknowledgements into refusals.
//!
//! **Gates.** A QoS 1 PUBACK may also be released before its commit, once
//! every stored copy of the message has been acknowledged by its subscriber
//! (see `broker::gate`): it is pushed *gated* with a token, and
//! [`Outbox::open`] lets it go. Either way, order is kept: nothing leaves
//! before the packets pushed ahead of it.

use crate::codec::{Packet, ProtocolVersion, ReasonCode};
use crate::outbound::{AckKind, Outbound};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};

/// Packets for one connection, plus a "close after these" flag.
#[derive(Debug)]
pub struct Outbox {
    inner: Mutex<Inner>,
    /// False only while the consumer waits with its waker registered and
    /// nobody has woken it since: it can then skip the lock. Invariant:
    /// whoever takes the waker sets this (see [`Outbox::wake_consumer`]).
    ready: AtomicBool,
    version: ProtocolVersion,
    /// How many congested sessions asked this connection's reader to pause
    /// (backpressure on a publisher that outruns its subscribers).
    read_pauses: AtomicU32,
}

#[derive(Debug, Default)]
struct Inner {
    /// Ready to be written.
    queue: VecDeque<Outbound>,
    /// Waiting for a commit or a gate, in push order.
    /// Allocated only while something is held (`None` when empty): most
    /// connections never wait for a commit, and an empty deque would take
    /// room in every outbox.
    #[allow(
        clippy::box_collection,
        reason = "a pointer, not an empty deque, per outbox"
    )]
    held: Option<Box<VecDeque<Held>>>,
    closed: bool,
    /// The consumer, when it last found nothing to do: woken when packets
    /// become ready, the outbox closes, or reads resume.
    waker: Option<Waker>,
}

/// A packet that may not be written yet.
#[derive(Debug)]
struct Held {
    /// The commit it waits for; 0 for a packet that waits for nothing but
    /// the packets ahead of it.
    commit: u64,
    /// Its gate's token (0: none), and whether the gate opened.
    token: u64,
    open: bool,
    packet: Outbound,
}

impl Held {
    /// Free to go once everything ahead of it went.
    fn ready(&self) -> bool {
        self.commit == 0 || self.open
    }
}

impl Inner {
    /// Moves held packets that are free to go (their commit is done, or
    /// they are [ready](Held::ready)), from the front, to the ready queue;
    /// frees the held queue once it is empty. Returns whether any moved.
    ///
    /// `refuse_for`: the commit failed; acknowledgements that waited for it
    /// are rewritten for a client of this version ([`refuse`]), or the
    /// outbox is closed instead. Only what waited for the commit vouches
    /// for it: an open gate's acknowledgement is true whatever the commit
    /// did (every stored copy was delivered and acknowledged), and a packet
    /// that only kept its place in line vouches for nothing.
    fn release_ready(&mut self, commit: u64, refuse_for: Option<ProtocolVersion>) -> bool {
        let mut released = false;
        while let Some(held) = self.held.as_mut() {
            if !held
                .front()
                .is_some_and(|h| h.commit <= commit || h.ready())
            {
                break;
            }
            let Some(mut h) = held.pop_front() else { break };
            if held.is_empty() {
                self.held = None;
            }
            if let Some(version) = refuse_for.filter(|_| !h.ready()) {
                if refuse(&mut h.packet, version) {
                    self.held = None;
                    self.closed = true;
                    break;
                }
            }
            self.queue.push_back(h.packet);
            released = true;
        }
        released
    }

    fn held_len(&self) -> usize {
        self.held.as_ref().map_or(0, |h| h.len())
    }

    fn register(&mut self, cx: &Context<'_>) {
        match &mut self.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
    }
}

impl Outbox {
    /// An empty, open outbox for a client speaking `version`.
    pub fn new(version: ProtocolVersion) -> Self {
        Outbox {
            inner: Mutex::default(),
            ready: AtomicBool::new(true),
            version,
            read_pauses: AtomicU32::new(0),
        }
    }

    /// The consumer's waker, to be woken once the lock is released. Taken
    /// together with setting `ready`: a consumer that finds `ready` false
    /// is then sure its waker is still registered.
    fn wake_consumer(&self, inner: &mut Inner) -> Option<Waker> {
        self.ready.store(true, Ordering::Release);
        inner.waker.take()
    }

    /// Releases the lock, then wakes the consumer if `wake` (a waker is
    /// never called under the lock: it may run the consumer right away).
    fn unlock(&self, mut inner: std::sync::MutexGuard<'_, Inner>, wake: bool) {
        let waker = if wake {
            self.wake_consumer(&mut inner)
        } else {
            None
        };
        drop(inner);
        if let Some(w) = waker {
            w.wake();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave the queue in a broken
        // state (every method is a few plain collection calls), so a
        // poisoned lock is usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a packet (behind any held ones). Returns false (and drops
    /// it) once closed.
    pub fn push(&self, packet: impl Into<Outbound>) -> bool {
        let packet = packet.into();
        let mut inner = self.lock();
        if inner.closed {
            return false;
        }
        if let Some(held) = inner.held.as_mut() {
            held.push_back(Held {
                commit: 0,
                token: 0,
                open: false,
                packet,
            });
            return true;
        }
        inner.queue.push_back(packet);
        // Only the first packet of a batch needs to wake the consumer.
        let first = inner.queue.len() == 1;
        self.unlock(inner, first);
        true
    }

    /// Queues a packet that may only be written once commit `commit` is
    /// durable (see [`Outbox::release`]), or, if `token` is not 0, once
    /// [`Outbox::open`]`(token)` opens its gate, whichever comes first.
    pub fn push_gated(&self, commit: u64, token: u64, packet: impl Into<Outbound>) -> bool {
        let packet = packet.into();
        let mut inner = self.lock();
        if inner.closed {
            return false;
        }
        inner.held.get_or_insert_default().push_back(Held {
            commit,
            token,
            open: false,
            packet,
        });
        true
    }

    /// Opens the gate `token`: its packet may go without waiting for its
    /// commit (as soon as the packets ahead of it went).
    pub fn open(&self, token: u64) {
        let mut inner = self.lock();
        let Some(h) = inner
            .held
            .as_mut()
            .and_then(|held| held.iter_mut().find(|h| h.token == token))
        else {
            return; // Already released by its commit.
        };
        h.open = true;
        // Commit 0: only what is free to go on its own.
        let released = inner.release_ready(0, None);
        self.unlock(inner, released);
    }

    /// Commits up to `commit` are done: held packets waiting for them
    /// become ready. If the commit `failed`, the acknowledgements among them
    /// are not sent as such: a 5.0 client gets the refusal reason code
    /// 0x80 instead; a 3.x client, which has no way to hear "no", is
    /// disconnected so that it publishes again.
    pub fn release(&self, commit: u64, failed: bool) {
        let mut inner = self.lock();
        let released = inner.release_ready(commit, failed.then_some(self.version));
        let closed = inner.closed;
        self.unlock(inner, released || closed);
    }

    /// Asks the connection's reader to stop reading (until every pause is
    /// resumed, or the bound its reader puts on a pause passes).
    pub fn pause_reads(&self) {
        self.read_pauses.fetch_add(1, Ordering::Relaxed);
    }

    /// Withdraws one pause.
    pub fn resume_reads(&self) {
        let before = self
            .read_pauses
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(n.saturating_sub(1))
            })
            .unwrap_or(0);
        if before <= 1 {
            self.unlock(self.lock(), true);
        }
    }

    /// True while some congested session asks this connection not to read.
    pub fn reads_paused(&self) -> bool {
        self.read_pauses.load(Ordering::Relaxed) > 0
    }

    /// Ready when no pause is asked for; otherwise the consumer is woken
    /// when the last one is withdrawn. The caller bounds the wait: a pause
    /// slows a publisher down but never blocks it for good (two clients that
    /// publish to each other could otherwise wait on each other forever).
    pub fn poll_reads_allowed(&self, cx: &Context<'_>) -> Poll<()> {
        if self.read_pauses.load(Ordering::Relaxed) == 0 {
            return Poll::Ready(());
        }
        let mut inner = self.lock();
        inner.register(cx);
        // Checked again under the lock: a resume in between found no waker.
        if self.read_pauses.load(Ordering::Relaxed) == 0 {
            return Poll::Ready(());
        }
        Poll::Pending
    }

    /// Packets waiting to be written (held ones included).
    pub fn len(&self) -> usize {
        let inner = self.lock();
        inner.queue.len() + inner.held_len()
    }

    /// Asks the writer to write what is queued, then close the connection.
    /// Later pushes are dropped; held packets still go out when released.
    pub fn close(&self) {
        let mut inner = self.lock();
        inner.closed = true;
        self.unlock(inner, true);
    }

    /// Moves everything ready to the back of `into`. Returns false when the
    /// outbox is closed and nothing more will come.
    #[cfg(test)]
    pub fn try_drain(&self, into: &mut VecDeque<Outbound>) -> bool {
        let mut inner = self.lock();
        into.append(&mut inner.queue);
        !(inner.closed && inner.held.is_none() && into.is_empty())
    }

    /// When something is ready or the outbox is finished, moves what is
    /// ready to the back of `into`, and is false once the outbox is closed
    /// and nothing more will come; otherwise `Pending`, and the consumer is
    /// woken when that changes.
    ///
    /// The packets are moved out, the queue keeps its allocation: the core
    /// writes into the same (cache-warm) buffer batch after batch, which
    /// swapping buffers with the consumer was measurably slower at. A
    /// consumer gone idle [`Outbox::trim`]s it.
    pub fn poll_drain(&self, cx: &Context<'_>, into: &mut VecDeque<Outbound>) -> Poll<bool> {
        // Without the lock while waiting: the consumer is polled for its
        // socket too, often once per packet read.
        if !self.ready.load(Ordering::Acquire) {
            return Poll::Pending;
        }
        let mut inner = self.lock();
        let finished = inner.closed && inner.held.is_none();
        if !inner.queue.is_empty() || finished {
            into.append(&mut inner.queue);
            return Poll::Ready(!(finished && into.is_empty()));
        }
        // Registered under the lock that pushes take, so a push right after
        // the check above finds the waker (and sets `ready` again).
        inner.register(cx);
        self.ready.store(false, Ordering::Relaxed);
        Poll::Pending
    }

    /// Frees the queue's allocation if it is empty: for a consumer that
    /// has gone idle.
    pub fn trim(&self) {
        let mut inner = self.lock();
        let spare = if inner.queue.is_empty() {
            std::mem::take(&mut inner.queue)
        } else {
            VecDeque::new()
        };
        drop(inner);
        drop(spare);
    }

    /// [`Outbox::poll_drain`] as a future.
    pub async fn drain(&self, into: &mut VecDeque<Outbound>) -> bool {
        std::future::poll_fn(|cx| self.poll_drain(cx, into)).await
    }
}

/// Rewrites an acknowledgement whose commit failed. Returns true if the
/// connection must be closed instead.
fn refuse(packet: &mut Outbound, version: ProtocolVersion) -> bool {
    let reason = match packet {
        Outbound::Ack(AckKind::Ack | AckKind::Rec, _, reason) => reason,
        Outbound::Other(p) => match &mut **p {
            Packet::PubAck(r) | Packet::PubRec(r) => &mut r.reason,
            Packet::SubAck(s) => {
                // 0x80 is a failure code in 3.x SUBACKs too.
                for reason in &mut s.reasons {
                    *reason = ReasonCode::UnspecifiedError;
                }
                return false;
            }
            _ => return false,
        },
        _ => return false,
    };
    if !version.is_v5() {
        return true;
    }
    *reason = ReasonCode::UnspecifiedError;
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::PubResp;
    use std::num::NonZeroU16;
    use std::sync::Arc;

    fn puback(n: u16) -> Outbound {
        Packet::PubAck(PubResp::new(NonZeroU16::new(n).unwrap())).into()
    }

    fn ping() -> Outbound {
        Packet::PingResp.into()
    }

    #[test]
    fn push_drain_close() {
        let o = Outbox::new(ProtocolVersion::V5);
        assert!(o.push(Packet::PingResp));
        assert!(o.push(Packet::PingResp));
        let mut v = VecDeque::new();
        assert!(o.try_drain(&mut v));
        assert_eq!(v.len(), 2);
        o.close();
        assert!(!o.push(Packet::PingResp));
        v.clear();
        assert!(!o.try_drain(&mut v));
    }

    #[test]
    fn held_packets_wait_for_their_commit_and_keep_order() {
        let o = Outbox::new(ProtocolVersion::V5);
        o.push(Packet::PingResp);
        o.push_gated(1, 0, puback(1));
        o.push(Packet::PingResp); // behind the held ack
        o.push_gated(2, 0, puback(2));
        let mut v = VecDeque::new();
        o.try_drain(&mut v);
        assert_eq!(v, vec![ping()]);
        v.clear();
        o.release(1, false);
        o.try_drain(&mut v);
        assert_eq!(v, vec![puback(1), ping()]);
        v.clear();
        o.release(2, false);
        o.try_drain(&mut v);
        assert_eq!(v, vec![puback(2)]);
    }

    #[test]
    fn an_open_gate_releases_before_the_commit_but_never_ahead_of_order() {
        let o = Outbox::new(ProtocolVersion::V5);
        o.push_gated(1, 0, puback(1));
        o.push_gated(2, 7, puback(2));
        o.push(Packet::PingResp); // waits for nothing but order
        o.push_gated(2, 8, puback(3));
        let mut v = VecDeque::new();
        // Gate 7 opens, but puback(1) ahead of it still waits for commit 1.
        o.open(7);
        o.try_drain(&mut v);
        assert!(v.is_empty());
        o.release(1, false);
        o.try_drain(&mut v);
        assert_eq!(v, vec![puback(1), puback(2), ping()]);
        v.clear();
        o.open(8);
        o.try_drain(&mut v);
        assert_eq!(v, vec![puback(3)]);
        v.clear();
        // Commit 2 finds nothing left; a late open is harmless.
        o.release(2, false);
        o.open(8);
        o.try_drain(&mut v);
        assert!(v.is_empty());
    }

    #[test]
    fn an_open_gate_keeps_its_ack_when_the_commit_fails() {
        let o = Outbox::new(ProtocolVersion::V3_1_1);
        o.push_gated(1, 5, puback(1));
        o.push_gated(1, 0, puback(2));
        o.open(5);
        let mut v = VecDeque::new();
        o.try_drain(&mut v);
        assert_eq!(v, vec![puback(1)]);
        v.clear();
        // The failed commit closes the 3.1.1 connection without puback(2).
        o.release(1, true);
        assert!(!o.try_drain(&mut v));
        assert!(v.is_empty());
    }

    #[test]
    fn failed_commit_refuses_v5_acks_and_closes_v3() {
        let o = Outbox::new(ProtocolVersion::V5);
        o.push_gated(1, 0, puback(1));
        o.release(1, true);
        let mut v = VecDeque::new();
        o.try_drain(&mut v);
        let Outbound::Ack(AckKind::Ack, _, reason) = &v[0] else {
            panic!()
        };
        assert_eq!(*reason, ReasonCode::UnspecifiedError);

        let o = Outbox::new(ProtocolVersion::V3_1_1);
        o.push_gated(1, 0, puback(1));
        o.release(1, true);
        v.clear();
        assert!(!o.try_drain(&mut v));
        assert!(v.is_empty(), "no ack for a failed write");
    }

    /// Counts its wakes.
    struct Counter(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Counter {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn a_consumer_woken_for_any_reason_is_woken_by_the_next_push() {
        let counter = Arc::new(Counter(Default::default()));
        let waker = Waker::from(counter.clone());
        let cx = Context::from_waker(&waker);
        let woken = || counter.0.load(Ordering::Relaxed);
        let o = Outbox::new(ProtocolVersion::V5);
        let mut v = VecDeque::new();
        o.pause_reads();
        assert!(o.poll_drain(&cx, &mut v).is_pending());
        assert!(o.poll_reads_allowed(&cx).is_pending());
        o.resume_reads();
        assert_eq!(woken(), 1);
        // The resume took the waker: this poll must register it again.
        assert!(o.poll_drain(&cx, &mut v).is_pending());
        o.push(Packet::PingResp);
        assert_eq!(woken(), 2);
        assert_eq!(o.poll_drain(&cx, &mut v), Poll::Ready(true));
        assert_eq!(v, vec![ping()]);
    }

    #[test]
    fn closed_outbox_still_delivers_released_packets() {
        let o = Outbox::new(ProtocolVersion::V5);
        o.push_gated(3, 0, puback(1));
        o.close();
        let mut v = VecDeque::new();
        assert!(o.try_drain(&mut v), "held packets are still to come");
        o.release(3, false);
        assert!(o.try_drain(&mut v));
        assert_eq!(v, vec![puback(1)]);
        v.clear();
        assert!(!o.try_drain(&mut v));
    }
}
