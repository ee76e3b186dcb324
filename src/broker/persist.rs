//! The broker's side of persistence: turns state changes into storage
//! [`Op`]s, keeps message bodies stored once with a reference count, and
//! knows which acknowledgements must wait for the next commit.

use super::idhash::{IdMap, IdSet};
use super::{Message, MessageProperties, Outbound, Outbox, Tracked};
use crate::codec::{ByteStr, QoS};
use roost_storage::{
    MessageProperties as StoredProps, MessageRecord, Op, OutboundRecord, OutboundState,
};
use std::collections::HashMap;
use std::num::NonZeroU32;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

/// Pending storage operations and message-body reference counts.
#[derive(Debug, Default)]
pub(crate) struct Persist {
    /// False for a non-persistent store: then no operation is recorded.
    pub enabled: bool,
    /// Acknowledge before commit (the relaxed mode): nothing is held.
    pub ack_first: bool,
    /// Operations recorded since the last commit, in order.
    pub ops: Vec<Pending>,
    /// Number of the commit being assembled.
    pub commit: u64,
    /// How far the commit task got.
    pub progress: Arc<CommitProgress>,
    /// Outboxes holding packets for the commit being assembled.
    pub touched: Vec<Arc<Outbox>>,
    /// Outbound entries first written in the commit being assembled
    /// (client id, sequence number): if they are also deleted in it, the
    /// store never needs to hear of them.
    pub created: Created,
    /// Outbound entries of stored sessions created so far (a counter: the
    /// difference across one routing is how many copies it stored).
    pub copies_created: u64,
    pub(super) next_message_id: u64,
    pub(super) refs: IdMap<u64, u32>,
}

/// Outbound entries first written in a commit: sequence numbers by client
/// id (looked up by `&str`, so checking costs no allocation).
pub(crate) type Created = HashMap<String, IdSet<u64>>;

/// What the commit task reports back to the core.
#[derive(Debug, Default)]
pub(crate) struct CommitProgress {
    /// Commits handed to the store whose held packets are not yet released.
    pub in_flight: AtomicU64,
    /// The number of the last commit released (applied, or failed).
    pub done: AtomicU64,
    /// Wakes those waiting for a commit ([`CommitProgress::reached`]).
    advanced: tokio::sync::Notify,
}

impl CommitProgress {
    /// Commit `number` (and every one before it) is released.
    pub(crate) fn released(&self, number: u64) {
        self.done.fetch_max(number, Relaxed);
        self.in_flight.fetch_sub(1, Relaxed);
        self.advanced.notify_waiters();
    }

    /// Waits until commit `number` is released (a store read that must see
    /// what it wrote).
    pub(crate) async fn reached(&self, number: u64) {
        loop {
            let advanced = self.advanced.notified();
            let mut advanced = std::pin::pin!(advanced);
            // Registered before the check, so a release between the check
            // and the wait still wakes it.
            advanced.as_mut().enable();
            if self.done.load(Relaxed) >= number {
                return;
            }
            advanced.await;
        }
    }
}

/// One group of storage operations, and the outboxes whose held packets
/// wait for it.
#[derive(Debug)]
pub(crate) struct Commit {
    /// Its number (increasing).
    pub number: u64,
    /// What to apply, in order.
    pub ops: Vec<Pending>,
    /// Release held packets up to `number` in these once applied.
    pub outboxes: Vec<Arc<Outbox>>,
    /// Outbound entries first written in this commit.
    pub created: Created,
}

impl Persist {
    pub(crate) fn new(enabled: bool) -> Self {
        Persist {
            enabled,
            commit: 1,
            next_message_id: 1,
            ..Default::default()
        }
    }

    /// True if an acknowledgement sent now must wait for a commit: some
    /// operation is recorded or a commit is still being written (it may hold
    /// what the acknowledgement vouches for).
    pub(crate) fn must_hold(&self) -> bool {
        self.enabled
            && !self.ack_first
            && (!self.ops.is_empty() || self.progress.in_flight.load(Relaxed) > 0)
    }

    /// Closes the commit being assembled, if it has anything in it.
    pub(crate) fn take_commit(&mut self) -> Option<Commit> {
        if self.ops.is_empty() && self.touched.is_empty() {
            return None;
        }
        let mut outboxes = std::mem::take(&mut self.touched);
        outboxes.sort_by_key(|o| Arc::as_ptr(o) as usize);
        outboxes.dedup_by(|a, b| Arc::ptr_eq(a, b));
        // The next commit is likely about as large: no regrowing.
        let capacity = self.ops.len();
        let commit = Commit {
            number: self.commit,
            ops: std::mem::replace(&mut self.ops, Vec::with_capacity(capacity)),
            outboxes,
            created: std::mem::take(&mut self.created),
        };
        self.commit += 1;
        self.progress.in_flight.fetch_add(1, Relaxed);
        Some(commit)
    }

    /// Queues `packet` in `outbox` until commit `commit` (this one or an
    /// earlier one still on its way) is released, or until gate `gate`
    /// opens (0: no gate). The outbox is remembered with the commit being
    /// assembled, whose release also releases anything earlier.
    pub(crate) fn hold(
        &mut self,
        outbox: &Arc<Outbox>,
        commit: u64,
        gate: u64,
        packet: impl Into<Outbound>,
    ) {
        outbox.push_gated(commit, gate, packet);
        self.touched.push(outbox.clone());
    }

    pub(crate) fn push(&mut self, op: impl Into<Pending>) {
        if self.enabled {
            self.ops.push(op.into());
        }
    }

    /// Takes one reference to the stored body of `msg`, storing it first if
    /// this is the first reference. Returns the storage id.
    pub(crate) fn reference(&mut self, msg: &Tracked) -> u64 {
        if !self.enabled {
            return 0;
        }
        let mut id = msg.store_id.load(Relaxed);
        if id == 0 || !self.refs.contains_key(&id) {
            id = self.next_message_id;
            self.next_message_id += 1;
            msg.store_id.store(id, Relaxed);
            self.push(Op::PutMessage {
                id,
                message: message_record(msg),
            });
        }
        *self.refs.entry(id).or_insert(0) += 1;
        id
    }

    /// Drops one reference; the body is deleted with the last one.
    pub(crate) fn release(&mut self, msg: &Tracked) {
        if !self.enabled {
            return;
        }
        let id = msg.store_id.load(Relaxed);
        if let Some(n) = self.refs.get_mut(&id) {
            *n -= 1;
            if *n == 0 {
                self.refs.remove(&id);
                self.push(Op::DeleteMessage { id });
            }
        }
    }
}

/// A storage operation as the core records it. The two it records for
/// every stored message (an outbound entry written, then deleted once
/// acknowledged) keep a reference to the message and the client id instead
/// of owned copies: the commit task makes them into [`Op`]s
/// ([`Pending::into_op`]), off the core's thread, and most of them cancel
/// out there anyway.
#[derive(Debug)]
pub(crate) enum Pending {
    /// Any other operation, as is (boxed: an `Op` is 264 bytes, and the
    /// two hot variants are a third of that).
    Op(Box<Op>),
    /// [`Op::PutOutbound`].
    PutOutbound {
        client_id: ByteStr,
        seq: u64,
        entry: LazyOutbound,
    },
    /// [`Op::DeleteOutbound`].
    DeleteOutbound { client_id: ByteStr, seq: u64 },
}

/// An [`OutboundRecord`], not yet built.
#[derive(Debug)]
pub(crate) struct LazyOutbound {
    pub msg: Arc<Tracked>,
    /// Its body goes inline (its only reference), else by this id.
    pub inline: bool,
    pub message_id: u64,
    pub qos: QoS,
    pub retain: bool,
    pub packet_id: Option<u16>,
    pub state: OutboundState,
    pub sub_ids: Box<[NonZeroU32]>,
}

impl From<Op> for Pending {
    fn from(op: Op) -> Self {
        Pending::Op(Box::new(op))
    }
}

impl Pending {
    /// The storage operation.
    pub(crate) fn into_op(self) -> Op {
        match self {
            Pending::Op(op) => *op,
            Pending::PutOutbound {
                client_id,
                seq,
                entry: e,
            } => {
                // Once released the body is no longer needed (PUBREL only).
                let message = (e.inline && e.state != OutboundState::Released)
                    .then(|| message_record(&e.msg));
                Op::PutOutbound {
                    client_id: string(&client_id),
                    seq,
                    entry: OutboundRecord {
                        message_id: if e.inline { 0 } else { e.message_id },
                        qos: e.qos as u8,
                        retain: e.retain,
                        packet_id: e.packet_id,
                        state: e.state,
                        subscription_identifiers: e.sub_ids.iter().map(|s| s.get()).collect(),
                        message,
                        stream_seq: e.msg.seq(),
                    },
                }
            }
            Pending::DeleteOutbound { client_id, seq } => Op::DeleteOutbound {
                client_id: string(&client_id),
                seq,
            },
        }
    }
}

fn string(s: &ByteStr) -> String {
    s.as_str().to_owned()
}

/// The stored form of a message.
pub(crate) fn message_record(msg: &Message) -> MessageRecord {
    let p = &msg.properties;
    MessageRecord {
        topic: string(&msg.topic),
        payload: msg.payload.clone(),
        qos: msg.qos as u8,
        retain: msg.retain,
        properties: StoredProps {
            payload_format_indicator: p.payload_format_indicator,
            content_type: p.content_type.as_ref().map(string),
            response_topic: p.response_topic.as_ref().map(string),
            correlation_data: p.correlation_data.clone(),
            user_properties: p
                .user_properties
                .iter()
                .map(|(k, v)| (string(k), string(v)))
                .collect(),
        },
        expires_at_ms: msg.expires_at_ms,
    }
}

/// A message read back from the store (the inverse of [`message_record`]).
pub(crate) fn message_from_record(rec: MessageRecord) -> Message {
    let p = rec.properties;
    Message {
        topic: ByteStr::from(rec.topic),
        payload: rec.payload,
        qos: qos_from_u8(rec.qos),
        retain: rec.retain,
        properties: MessageProperties {
            payload_format_indicator: p.payload_format_indicator,
            content_type: p.content_type.map(ByteStr::from),
            response_topic: p.response_topic.map(ByteStr::from),
            correlation_data: p.correlation_data,
            user_properties: p
                .user_properties
                .into_iter()
                .map(|(k, v)| (ByteStr::from(k), ByteStr::from(v)))
                .collect(),
        },
        expires_at_ms: rec.expires_at_ms,
        publisher: None,
        publisher_id: None,
    }
}

/// QoS from a stored byte (anything out of range reads as QoS 0).
pub(crate) fn qos_from_u8(b: u8) -> QoS {
    QoS::from_u8(b).unwrap_or(QoS::AtMostOnce)
}
