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
pub(crate) struct AckGate(Mutex<State>);

#[derive(Debug, Default)]
enum State {
    /// Gating nothing (not armed, or done).
    #[default]
    Idle,
    Waiting(Waiting),
    /// The cluster router could not take its copy while the message was
    /// routed, before the acknowledgement was pushed: the wait for the
    /// cluster, when armed, is refused at once.
    ClusterLost,
}

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
        *self.lock() = State::Waiting(Waiting {
            outbox,
            token,
            copies,
            cluster: false,
        });
    }

    /// The acknowledgement `token` in `outbox` waits for the cluster
    /// router, and, if `copies` is not 0, its gate opens once that many
    /// stored copies were acknowledged (as [`AckGate::arm`]). If the router
    /// already let go of its copy, it is refused at once: returns true then.
    pub(super) fn arm_after_cluster(&self, outbox: Arc<Outbox>, token: u64, copies: u64) -> bool {
        let mut state = self.lock();
        if matches!(*state, State::ClusterLost) {
            *state = State::Idle;
            drop(state);
            outbox.refuse_cluster(token);
            return true;
        }
        *state = State::Waiting(Waiting {
            outbox,
            token,
            copies: u32::try_from(copies).unwrap_or(0),
            cluster: true,
        });
        false
    }

    /// One stored copy was acknowledged or otherwise let go of (expired,
    /// dropped, its session ended): the broker owes it no more.
    pub(super) fn copy_done(&self) {
        let mut state = self.lock();
        let State::Waiting(w) = &mut *state else {
            return;
        };
        if w.copies == 0 {
            return;
        }
        w.copies -= 1;
        if w.copies > 0 {
            return;
        }
        let (outbox, token) = (w.outbox.clone(), w.token);
        if !w.cluster {
            *state = State::Idle;
        }
        drop(state);
        outbox.open(token);
    }

    /// The router acknowledged its copy: the cluster holds the message.
    /// Returns the token of the acknowledgement that waited for it.
    pub(super) fn cluster_done(&self) -> Option<u64> {
        let mut state = self.lock();
        let State::Waiting(w) = &mut *state else {
            return None;
        };
        if !w.cluster {
            return None;
        }
        w.cluster = false;
        let (outbox, token) = (w.outbox.clone(), w.token);
        if w.copies == 0 {
            *state = State::Idle;
        }
        drop(state);
        outbox.open_cluster(token);
        Some(token)
    }

    /// The router let go of its copy without the cluster storing it (its
    /// queue was full, its session ended): the acknowledgement becomes a
    /// refusal (see [`Outbox::refuse_cluster`]), whatever the copies here
    /// do. Returns the token of the one that waited, if one did.
    pub(super) fn cluster_refused(&self) -> Option<u64> {
        let mut state = self.lock();
        if !matches!(&*state, State::Waiting(w) if w.cluster) {
            return None;
        }
        let State::Waiting(w) = std::mem::take(&mut *state) else {
            return None;
        };
        drop(state);
        w.outbox.refuse_cluster(w.token);
        Some(w.token)
    }

    /// The router let go of its copy: a wait armed for the cluster is
    /// refused now ([`AckGate::cluster_refused`]); one not armed yet (the
    /// copy was dropped as the message was routed, before its publisher's
    /// acknowledgement was pushed) is refused as it is armed
    /// ([`AckGate::arm_after_cluster`]). Returns whether a refusal follows
    /// (none once the cluster already holds the message): the refused
    /// acknowledgement's token, or 0 for one refused as it is armed.
    pub(super) fn cluster_let_go(&self) -> Option<u64> {
        let mut state = self.lock();
        match &*state {
            State::Idle => {
                *state = State::ClusterLost;
                Some(0)
            }
            State::Waiting(_) => {
                drop(state);
                self.cluster_refused()
            }
            State::ClusterLost => None,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Every critical section is a plain read or write of the state.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}
