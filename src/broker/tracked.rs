//! A message as the core routes it: the plain [`Message`] and, beside it in
//! the same allocation, what only the core keeps about it. Named for that:
//! the core tracks where the message is stored, which acknowledgement of
//! its publisher it may release, and which commit its deliveries wait for.
//!
//! One `Arc<Tracked>` is the one shared copy of a message: sessions' queues,
//! the retained store, storage operations and the link layer's deliveries
//! all hold it. Link is generic over what it holds (see
//! [`crate::link::outbound`]), so it sees a `Message` through [`Deref`] and
//! never these fields; the aliases below name link's types as the core
//! fills them.

use super::gate::AckGate;
use crate::message::Message;
use std::ops::Deref;
use std::sync::atomic::{AtomicU32, AtomicU64};

/// A routed message with the core's bookkeeping.
#[derive(Debug)]
pub(crate) struct Tracked {
    msg: Message,
    /// Storage id, assigned when first persisted (0 = not stored).
    pub(super) store_id: AtomicU64,
    /// The publisher's acknowledgement that this message's subscribers may
    /// release, or that waits for the cluster router's (one gate for both:
    /// they name the same acknowledgement, and a broker without a cluster
    /// pays nothing for the second).
    pub(super) gate: AckGate,
    /// Deliveries wait for this commit (0: for none). It stores a QoS 2
    /// publisher's packet id, which is what stops a resent PUBLISH from
    /// being delivered twice: delivering before it is durable would let a
    /// crash undo that protection.
    pub(super) deliver_after: AtomicU64,
    /// Copies of it in memory queues that the memory budget counts (see
    /// `Pages::hold_copy`): its own cost counts once, not per copy.
    pub(super) budgeted: AtomicU32,
    /// A QoS 2 message from a roaming session's client on its way to the
    /// cluster's stream: that flow's packet id (in `budgeted`'s padding);
    /// 0 for any other message. See [`Tracked::inbound_flow`].
    flow_pid: u16,
    /// Its place in the cluster (see `roaming`): with `flow_pid` 0, its
    /// sequence in the cluster's message stream (0: not from the stream;
    /// [`Tracked::seq`]); otherwise that flow's number. One field for
    /// both: a message goes to the stream as one `Tracked` and comes back
    /// as another, so none is both, and 8 bytes more would take the
    /// allocation into glibc's next chunk size (see the size test).
    cluster: u64,
}

impl Tracked {
    /// `msg`, not stored yet, gating nothing, delivered at once.
    pub(crate) fn new(msg: Message) -> Self {
        Tracked::stored(msg, 0)
    }

    /// `msg`, stored as `store_id` (0: not stored).
    pub(crate) fn stored(msg: Message, store_id: u64) -> Self {
        Tracked {
            msg,
            store_id: AtomicU64::new(store_id),
            gate: AckGate::default(),
            deliver_after: AtomicU64::new(0),
            budgeted: AtomicU32::new(0),
            flow_pid: 0,
            cluster: 0,
        }
    }

    /// The inbound QoS 2 flow it is, if it is one the cluster tags: its
    /// packet id and flow number (the cluster's router writes them in a
    /// header, `cluster::envelope::FLOW`).
    pub(crate) fn inbound_flow(&self) -> Option<(u16, u64)> {
        (self.flow_pid != 0).then_some((self.flow_pid, self.cluster))
    }

    /// The same, the inbound QoS 2 flow `flow` of its publisher, under
    /// packet id `pid` (see [`Tracked::inbound_flow`]).
    pub(crate) fn with_flow(mut self, pid: u16, flow: u64) -> Self {
        debug_assert!(pid != 0 && self.cluster == 0, "a flow, not from the stream");
        self.flow_pid = pid;
        self.cluster = flow;
        self
    }

    /// The same, read from the cluster's stream at `seq`.
    pub(crate) fn with_seq(mut self, seq: u64) -> Self {
        debug_assert!(self.flow_pid == 0, "from the stream, not a flow");
        self.cluster = seq;
        self
    }

    /// Its sequence in the cluster's message stream (0: none; see
    /// `roaming`).
    pub(crate) fn seq(&self) -> u64 {
        if self.flow_pid == 0 {
            self.cluster
        } else {
            0
        }
    }
}

impl Deref for Tracked {
    type Target = Message;

    fn deref(&self) -> &Message {
        &self.msg
    }
}

/// An outbox as the core fills it.
pub(crate) type Outbox = crate::link::outbox::Outbox<Tracked>;
/// A queued packet as the core queues it.
pub(crate) type Outbound = crate::link::outbound::Outbound<Tracked>;
/// A delivery of a tracked message.
pub(crate) type Delivery = crate::link::outbound::Delivery<Tracked>;
/// Retained messages for a new subscription.
pub(crate) type Burst = crate::link::outbound::Burst<Tracked>;
/// Written messages on their way back to the core.
pub(crate) type Reclaim = crate::link::reclaim::Reclaim<Tracked>;

#[cfg(test)]
mod tests {
    /// One per message in memory (queues, the retained cache): 328 bytes
    /// on 64-bit targets. The cluster's wait moved into the ack gate (it
    /// was a field of its own, 24 bytes, with or without `cluster`); the
    /// cluster's place (a stream sequence or an inbound flow's number)
    /// takes 8, the budget's count of copies with a flow's packet id 8.
    /// With `Arc`'s two counts the allocation is 344 bytes: glibc's
    /// 352-byte chunk (a request's size plus 8, to a multiple of 16). At
    /// 336 it would be 368.
    #[test]
    #[cfg(target_pointer_width = "64")]
    fn a_tracked_message_stays_small() {
        assert!(
            std::mem::size_of::<super::Tracked>() <= 328,
            "{}",
            std::mem::size_of::<super::Tracked>()
        );
    }
}
