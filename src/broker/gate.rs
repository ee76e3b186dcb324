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
//!
//! **Cluster** (issue 19). The same gate carries a publisher's wait for the
//! cluster: its acknowledgement goes only once this node's cluster router
//! acknowledged its copy (JetStream stored it),.
//! One gate, not two: both name the same acknowledgement (one outbox, one
//! token), and a broker without a cluster pays nothing for it.

use super::Outbox;
use std::sync::{Arc, Mutex};

/// A message's gate: which acknowledgement it opens, how many stored
/// copies are still unacknowledged, and whether it waits for the cluster.
#[derive(Debug, Default)]
pub(crate) struct AckGate(Mutex<Option<Waiting>>);

#[derive(Debug)]
struct Waiting {
    outbox: Arc<Outbox>,
    token: u64,
    /// Stored copies still unacknowledged; 0: the copies do not (or no
    /// longer) gate it. A `u32` keeps the gate as small as before the
    /// cluster's flag: more copies than that are not counted at all (the
    /// commit alone releases their acknowledgement).
    copies: u32,
    /// Still waits for the cluster router's acknowledgement.
    cluster: bool,
}

impl AckGate {
    /// The acknowledgement `token` in `outbox` waits for `copies` stored
    /// copies (at least one) to be acknowledged.
    pub(super) fn arm(&self, outbox: Arc<Outbox>, token: u64, copies: u64) {
        let Ok(copies) = u32::try_from(copies) else {
            return;
        };
        *self.lock() = Some(Waiting {
            outbox,
            token,
            copies,
            cluster: false,
        });
    }

    /// The acknowledgement `token` in `outbox` waits for the cluster
    /// router, and, if `copies` is not 0, its gate opens once that many
    /// stored copies were acknowledged (as [`AckGate::arm`]).
    pub(super) fn arm_after_cluster(&self, outbox: Arc<Outbox>, token: u64, copies: u64) {
        *self.lock() = Some(Waiting {
            outbox,
            token,
            copies: u32::try_from(copies).unwrap_or(0),
            cluster: true,
        });
    }

    /// One stored copy was acknowledged or otherwise let go of (expired,
    /// dropped, its session ended): the broker owes it no more.
    pub(super) fn copy_done(&self) {
        let mut waiting = self.lock();
        let Some(w) = waiting.as_mut().filter(|w| w.copies > 0) else {
            return;
        };
        w.copies -= 1;
        if w.copies > 0 {
            return;
        }
        let (outbox, token) = (w.outbox.clone(), w.token);
        if !w.cluster {
            *waiting = None;
        }
        drop(waiting);
        outbox.open(token);
    }

    /// The router acknowledged its copy: the cluster holds the message.
    pub(super) fn cluster_done(&self) {
        let mut waiting = self.lock();
        let Some(w) = waiting.as_mut().filter(|w| w.cluster) else {
            return;
        };
        w.cluster = false;
        let (outbox, token) = (w.outbox.clone(), w.token);
        if w.copies == 0 {
            *waiting = None;
        }
        drop(waiting);
        outbox.open_cluster(token);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Waiting>> {
        // Every critical section is a plain read or write of the option.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}
