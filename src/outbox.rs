//! The queue of packets waiting to be written to one connection.
//!
//! The broker core pushes packets under a short lock and never waits; the
//! connection's writer task drains everything that is queued in one go, so
//! many packets share one write (coalescing). The core reads the queue length
//! to apply its slow-consumer policy.
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
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use tokio::sync::Notify;

/// Packets for one connection, plus a "close after these" flag.
#[derive(Debug)]
pub struct Outbox {
    inner: Mutex<Inner>,
    notify: Notify,
    version: ProtocolVersion,
    /// How many congested sessions asked this connection's reader to pause
    /// (backpressure on a publisher that outruns its subscribers).
    read_pauses: AtomicU32,
    reads_resumed: Notify,
}

#[derive(Debug, Default)]
struct Inner {
    /// Ready to be written.
    queue: VecDeque<Packet>,
    /// Waiting for a commit or a gate, in push order.
    held: VecDeque<Held>,
    closed: bool,
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
    packet: Packet,
}

impl Held {
    /// Free to go once everything ahead of it went.
    fn ready(&self) -> bool {
        self.commit == 0 || self.open
    }
}

impl Outbox {
    /// An empty, open outbox for a client speaking `version`.
    pub fn new(version: ProtocolVersion) -> Self {
        Outbox {
            inner: Mutex::default(),
            notify: Notify::new(),
            version,
            read_pauses: AtomicU32::new(0),
            reads_resumed: Notify::new(),
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
    pub fn push(&self, packet: Packet) -> bool {
        let mut inner = self.lock();
        if inner.closed {
            return false;
        }
        if !inner.held.is_empty() {
            inner.held.push_back(Held {
                commit: 0,
                token: 0,
                open: false,
                packet,
            });
            return true;
        }
        let was_empty = inner.queue.is_empty();
        inner.queue.push_back(packet);
        drop(inner);
        if was_empty {
            self.notify.notify_one();
        }
        true
    }

    /// Queues a packet that may only be written once commit `commit` is
    /// durable (see [`Outbox::release`]).
    pub fn push_held(&self, commit: u64, packet: Packet) -> bool {
        self.push_gated(commit, 0, packet)
    }

    /// Like [`Outbox::push_held`], but [`Outbox::open`]`(token)` releases
    /// it too, whichever comes first. `token` is not 0.
    pub fn push_gated(&self, commit: u64, token: u64, packet: Packet) -> bool {
        let mut inner = self.lock();
        if inner.closed {
            return false;
        }
        inner.held.push_back(Held {
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
        let Some(h) = inner.held.iter_mut().find(|h| h.token == token) else {
            return; // Already released by its commit.
        };
        h.open = true;
        let mut released = false;
        while inner.held.front().is_some_and(Held::ready) {
            let Some(h) = inner.held.pop_front() else {
                break;
            };
            inner.queue.push_back(h.packet);
            released = true;
        }
        drop(inner);
        if released {
            self.notify.notify_one();
        }
    }

    /// Commits up to `commit` are done: held packets waiting for them
    /// become ready. If the commit `failed`, the acknowledgements among them
    /// are not sent as such: a 5.0 client gets the refusal reason code
    /// 0x80 instead; a 3.x client, which has no way to hear "no", is
    /// disconnected so that it publishes again.
    pub fn release(&self, commit: u64, failed: bool) {
        let mut inner = self.lock();
        let mut released = false;
        while inner
            .held
            .front()
            .is_some_and(|h| h.commit <= commit || h.open)
        {
            let Some(Held {
                mut packet, open, ..
            }) = inner.held.pop_front()
            else {
                break;
            };
            // An open gate's acknowledgement is true whatever the commit
            // did: every stored copy was delivered and acknowledged.
            if failed && !open && refuse(&mut packet, self.version) {
                inner.held.clear();
                inner.closed = true;
                break;
            }
            inner.queue.push_back(packet);
            released = true;
        }
        let closed = inner.closed;
        drop(inner);
        if released || closed {
            self.notify.notify_one();
        }
    }

    /// Asks the connection's reader to stop reading (until every pause is
    /// resumed, or [`Outbox::reads_allowed`]'s bound passes).
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
            self.reads_resumed.notify_waiters();
        }
    }

    /// Waits while reads are paused, at most `bound`: a pause slows a
    /// publisher down but never blocks it for good (two clients that
    /// publish to each other could otherwise wait on each other forever).
    pub async fn reads_allowed(&self, bound: std::time::Duration) {
        if self.read_pauses.load(Ordering::Relaxed) == 0 {
            return;
        }
        let _ = tokio::time::timeout(bound, async {
            loop {
                let resumed = self.reads_resumed.notified();
                tokio::pin!(resumed);
                resumed.as_mut().enable();
                if self.read_pauses.load(Ordering::Relaxed) == 0 {
                    return;
                }
                resumed.await;
            }
        })
        .await;
    }

    /// Packets waiting to be written (held ones included).
    pub fn len(&self) -> usize {
        let inner = self.lock();
        inner.queue.len() + inner.held.len()
    }

    /// Asks the writer to write what is queued, then close the connection.
    /// Later pushes are dropped; held packets still go out when released.
    pub fn close(&self) {
        self.lock().closed = true;
        self.notify.notify_one();
    }

    /// Moves everything ready into `into`. Returns false when the outbox is
    /// closed and nothing more will come.
    #[cfg(test)]
    pub fn try_drain(&self, into: &mut Vec<Packet>) -> bool {
        let mut inner = self.lock();
        into.extend(inner.queue.drain(..));
        !(inner.closed && inner.held.is_empty() && into.is_empty())
    }

    /// Waits until something is ready or the outbox is closed, then drains
    /// like [`Outbox::try_drain`].
    pub async fn drain(&self, into: &mut Vec<Packet>) -> bool {
        loop {
            {
                let mut inner = self.lock();
                let finished = inner.closed && inner.held.is_empty();
                if !inner.queue.is_empty() || finished {
                    into.extend(inner.queue.drain(..));
                    return !(finished && into.is_empty());
                }
            }
            // notify_one stores a permit when nobody waits, so a push between
            // the check above and this await is not missed.
            self.notify.notified().await;
        }
    }
}

/// Rewrites an acknowledgement whose commit failed. Returns true if the
/// connection must be closed instead.
fn refuse(packet: &mut Packet, version: ProtocolVersion) -> bool {
    match packet {
        Packet::PubAck(r) | Packet::PubRec(r) => {
            if !version.is_v5() {
                return true;
            }
            r.reason = ReasonCode::UnspecifiedError;
        }
        Packet::SubAck(s) => {
            // 0x80 is a failure code in 3.x SUBACKs too.
            for reason in &mut s.reasons {
                *reason = ReasonCode::UnspecifiedError;
            }
        }
        _ => {}
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::PubResp;
    use std::num::NonZeroU16;

    fn puback(n: u16) -> Packet {
        Packet::PubAck(PubResp::new(NonZeroU16::new(n).unwrap()))
    }

    #[test]
    fn push_drain_close() {
        let o = Outbox::new(ProtocolVersion::V5);
        assert!(o.push(Packet::PingResp));
        assert!(o.push(Packet::PingResp));
        let mut v = Vec::new();
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
        o.push_held(1, puback(1));
        o.push(Packet::PingResp); // behind the held ack
        o.push_held(2, puback(2));
        let mut v = Vec::new();
        o.try_drain(&mut v);
        assert_eq!(v, vec![Packet::PingResp]);
        v.clear();
        o.release(1, false);
        o.try_drain(&mut v);
        assert_eq!(v, vec![puback(1), Packet::PingResp]);
        v.clear();
        o.release(2, false);
        o.try_drain(&mut v);
        assert_eq!(v, vec![puback(2)]);
    }

    #[test]
    fn an_open_gate_releases_before_the_commit_but_never_ahead_of_order() {
        let o = Outbox::new(ProtocolVersion::V5);
        o.push_held(1, puback(1));
        o.push_gated(2, 7, puback(2));
        o.push(Packet::PingResp); // waits for nothing but order
        o.push_gated(2, 8, puback(3));
        let mut v = Vec::new();
        // Gate 7 opens, but puback(1) ahead of it still waits for commit 1.
        o.open(7);
        o.try_drain(&mut v);
        assert!(v.is_empty());
        o.release(1, false);
        o.try_drain(&mut v);
        assert_eq!(v, vec![puback(1), puback(2), Packet::PingResp]);
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
        o.push_held(1, puback(2));
        o.open(5);
        let mut v = Vec::new();
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
        o.push_held(1, puback(1));
        o.release(1, true);
        let mut v = Vec::new();
        o.try_drain(&mut v);
        let Packet::PubAck(r) = &v[0] else { panic!() };
        assert_eq!(r.reason, ReasonCode::UnspecifiedError);

        let o = Outbox::new(ProtocolVersion::V3_1_1);
        o.push_held(1, puback(1));
        o.release(1, true);
        v.clear();
        assert!(!o.try_drain(&mut v));
        assert!(v.is_empty(), "no ack for a failed write");
    }

    #[test]
    fn closed_outbox_still_delivers_released_packets() {
        let o = Outbox::new(ProtocolVersion::V5);
        o.push_held(3, puback(1));
        o.close();
        let mut v = Vec::new();
        assert!(o.try_drain(&mut v), "held packets are still to come");
        o.release(3, false);
        assert!(o.try_drain(&mut v));
        assert_eq!(v, vec![puback(1)]);
        v.clear();
        assert!(!o.try_drain(&mut v));
    }
}
