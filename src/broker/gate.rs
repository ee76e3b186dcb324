//! Early acknowledgement of QoS 1 messages.
//!
//! The durability contract says a PUBACK leaves once the message is safe.
//! A commit makes it safe; so does delivery: once every persistent session
//! that got a stored copy has acknowledged it, nobody needs the copies any
//! more, and a crash can at worst redeliver (which QoS 1 allows). Under
//! load that happens long before the disk catches up, and the writes it
//! undoes never reach the disk at all (see `coalesce`). So the publisher's
//! PUBACK is pushed *gated*: its commit releases it, or the last of those
//! subscribers' acknowledgements does, whichever comes first.
//!
//! Only plain QoS 1 publishes are gated: a retained message must be stored
//! for later subscribers, and a QoS 2 PUBREC vouches for the stored packet
//! id that keeps the message from being delivered twice.

use super::Outbox;
use std::sync::{Arc, Mutex};

/// A message's gate: which acknowledgement it opens, and how many stored
/// copies are still unacknowledged.
#[derive(Debug, Default)]
pub(crate) struct AckGate(Mutex<Option<Waiting>>);

#[derive(Debug)]
struct Waiting {
    outbox: Arc<Outbox>,
    token: u64,
    remaining: u64,
}

impl AckGate {
    /// The acknowledgement `token` in `outbox` waits for `copies` stored
    /// copies (at least one) to be acknowledged.
    pub(super) fn arm(&self, outbox: Arc<Outbox>, token: u64, copies: u64) {
        *self.lock() = Some(Waiting {
            outbox,
            token,
            remaining: copies,
        });
    }

    /// One stored copy was acknowledged or otherwise let go of (expired,
    /// dropped, its session ended): the broker owes it no more.
    pub(super) fn copy_done(&self) {
        let mut waiting = self.lock();
        let Some(w) = waiting.as_mut() else { return };
        w.remaining -= 1;
        if w.remaining == 0 {
            if let Some(w) = waiting.take() {
                drop(waiting);
                w.outbox.open(w.token);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Waiting>> {
        // Every critical section is a plain read or write of the option.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A message's wait for the cluster (issue 19): the publisher's
/// acknowledgement that goes only once this node's cluster router has
/// acknowledged its copy, which it does once JetStream stored it.
#[derive(Debug, Default)]
pub(crate) struct ClusterGate(Mutex<Option<(Arc<Outbox>, u64)>>);

impl ClusterGate {
    /// The acknowledgement `token` in `outbox` waits for the router.
    pub(super) fn arm(&self, outbox: Arc<Outbox>, token: u64) {
        *self.lock() = Some((outbox, token));
    }

    /// The router acknowledged its copy (or let go of it: its session
    /// ended, and the cluster never will).
    pub(super) fn done(&self) {
        let armed = self.lock().take();
        if let Some((outbox, token)) = armed {
            outbox.open_cluster(token);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(Arc<Outbox>, u64)>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}
