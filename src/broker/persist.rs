//! The broker's side of persistence: turns state changes into storage
//! [`Op`]s, keeps message bodies stored once with a reference count, and
//! knows which acknowledgements must wait for the next commit.

use super::message::Message;
use crate::codec::{ByteStr, QoS};
use crate::outbox::Outbox;
use roost_storage::{MessageProperties as StoredProps, MessageRecord, Op};
use std::collections::{HashMap, HashSet};
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
    pub ops: Vec<Op>,
    /// Number of the commit being assembled.
    pub commit: u64,
    /// Commits handed to the store whose held packets are not yet released.
    pub in_flight: Arc<AtomicU64>,
    /// Outboxes holding packets for the commit being assembled.
    pub touched: Vec<Arc<Outbox>>,
    /// Outbound entries first written in the commit being assembled
    /// (client id, sequence number): if they are also deleted in it, the
    /// store never needs to hear of them.
    pub created: Created,
    pub(super) next_message_id: u64,
    pub(super) refs: HashMap<u64, u32>,
}

/// Outbound entries first written in a commit: sequence numbers by client
/// id (looked up by `&str`, so checking costs no allocation).
pub type Created = HashMap<String, HashSet<u64>>;

fn was_created(created: &Created, client_id: &str, seq: u64) -> bool {
    created.get(client_id).is_some_and(|s| s.contains(&seq))
}

/// One group of storage operations, and the outboxes whose held packets
/// wait for it.
#[derive(Debug)]
pub struct Commit {
    /// Its number (increasing).
    pub number: u64,
    /// What to apply, in order.
    pub ops: Vec<Op>,
    /// Release held packets up to `number` in these once applied.
    pub outboxes: Vec<Arc<Outbox>>,
    /// Outbound entries first written in this commit.
    pub created: Created,
}

impl Persist {
    pub fn new(enabled: bool) -> Self {
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
    pub fn must_hold(&self) -> bool {
        self.enabled
            && !self.ack_first
            && (!self.ops.is_empty() || self.in_flight.load(Relaxed) > 0)
    }

    /// Closes the commit being assembled, if it has anything in it.
    pub fn take_commit(&mut self) -> Option<Commit> {
        if self.ops.is_empty() && self.touched.is_empty() {
            return None;
        }
        let mut outboxes = std::mem::take(&mut self.touched);
        outboxes.sort_by_key(|o| Arc::as_ptr(o) as usize);
        outboxes.dedup_by(|a, b| Arc::ptr_eq(a, b));
        let commit = Commit {
            number: self.commit,
            ops: std::mem::take(&mut self.ops),
            outboxes,
            created: std::mem::take(&mut self.created),
        };
        self.commit += 1;
        self.in_flight.fetch_add(1, Relaxed);
        Some(commit)
    }

    pub fn push(&mut self, op: Op) {
        if self.enabled {
            self.ops.push(op);
        }
    }

    /// Takes one reference to the stored body of `msg`, storing it first if
    /// this is the first reference. Returns the storage id.
    pub fn reference(&mut self, msg: &Arc<Message>) -> u64 {
        if !self.enabled {
            return 0;
        }
        let mut id = msg.store_id.load(Relaxed);
        if id == 0 || !self.refs.contains_key(&id) {
            id = self.next_message_id;
            self.next_message_id += 1;
            msg.store_id.store(id, Relaxed);
            self.ops.push(Op::PutMessage {
                id,
                message: message_record(msg),
            });
        }
        *self.refs.entry(id).or_insert(0) += 1;
        id
    }

    /// Drops one reference; the body is deleted with the last one.
    pub fn release(&mut self, msg: &Message) {
        if !self.enabled {
            return;
        }
        let id = msg.store_id.load(Relaxed);
        if let Some(n) = self.refs.get_mut(&id) {
            *n -= 1;
            if *n == 0 {
                self.refs.remove(&id);
                self.ops.push(Op::DeleteMessage { id });
            }
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

/// QoS from a stored byte (anything out of range reads as QoS 0).
#[allow(dead_code)] // Used by restore, which comes with the persistent backends.
pub(crate) fn qos_from_u8(b: u8) -> QoS {
    QoS::from_u8(b).unwrap_or(QoS::AtMostOnce)
}

/// Shrinks a group of operations without changing what it does to the
/// store, so that a message delivered and acknowledged while its commit
/// was still being assembled costs (almost) nothing on disk.
///
/// - A message body stored and deleted in the same group is never written:
///   [`Persist::reference`] stores every body under a fresh id, so the
///   delete leaves the store as it was.
/// - An outbound entry deleted in the group loses the writes before its
///   delete; the delete itself goes too if the entry was `created` in the
///   group (otherwise it may be older than the group).
/// - Of several writes to one outbound entry, only the last is kept.
///
/// A client whose session is deleted in the group keeps its operations as
/// they are (the cascade makes their order matter).
pub(crate) fn coalesce(ops: Vec<Op>, created: &Created) -> Vec<Op> {
    let mut put_msgs = HashSet::new();
    let mut cancelled_msgs = HashSet::new();
    let mut barriers: HashSet<&str> = HashSet::new();
    // Position of the last write or delete of each outbound entry.
    let mut last_out: HashMap<(&str, u64), usize> = HashMap::new();
    let mut out_ops = 0;
    for (i, op) in ops.iter().enumerate() {
        match op {
            Op::PutMessage { id, .. } => {
                put_msgs.insert(*id);
            }
            Op::DeleteMessage { id } if put_msgs.contains(id) => {
                cancelled_msgs.insert(*id);
            }
            Op::DeleteSession { client_id } => {
                barriers.insert(client_id);
            }
            Op::PutOutbound { client_id, seq, .. } | Op::DeleteOutbound { client_id, seq } => {
                last_out.insert((client_id, *seq), i);
                out_ops += 1;
            }
            _ => {}
        }
    }
    if cancelled_msgs.is_empty() && out_ops == last_out.len() && created.is_empty() {
        // Every entry is written once and no body comes and goes: nothing
        // to leave out.
        return ops;
    }
    let keep: Vec<bool> = ops
        .iter()
        .enumerate()
        .map(|(i, op)| match op {
            Op::PutMessage { id, .. } | Op::DeleteMessage { id } => !cancelled_msgs.contains(id),
            Op::PutOutbound { client_id, seq, .. } => {
                barriers.contains(client_id.as_str())
                    || (last_out.get(&(client_id.as_str(), *seq)) == Some(&i)
                        && !deleted_new(&ops, &last_out, created, client_id, *seq))
            }
            Op::DeleteOutbound { client_id, seq } => {
                barriers.contains(client_id.as_str()) || !was_created(created, client_id, *seq)
            }
            _ => true,
        })
        .collect();
    ops.into_iter()
        .zip(keep)
        .filter_map(|(op, keep)| keep.then_some(op))
        .collect()
}

/// True if the entry was created in the group and its last operation there
/// is a delete.
fn deleted_new(
    ops: &[Op],
    last_out: &HashMap<(&str, u64), usize>,
    created: &Created,
    client_id: &str,
    seq: u64,
) -> bool {
    was_created(created, client_id, seq)
        && last_out
            .get(&(client_id, seq))
            .is_some_and(|&i| matches!(ops[i], Op::DeleteOutbound { .. }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use roost_storage::{MemoryStore, OutboundRecord, OutboundState, SessionRecord, Store};

    fn msg(id: u64) -> Op {
        Op::PutMessage {
            id,
            message: MessageRecord {
                topic: "t".into(),
                payload: bytes::Bytes::from_static(b"x"),
                qos: 1,
                retain: false,
                properties: Default::default(),
                expires_at_ms: None,
            },
        }
    }

    fn out(client: &str, seq: u64, id: u64, state: OutboundState) -> Op {
        Op::PutOutbound {
            client_id: client.into(),
            seq,
            entry: OutboundRecord {
                message_id: id,
                qos: 1,
                retain: false,
                packet_id: Some(1),
                state,
                subscription_identifiers: vec![],
                message: None,
            },
        }
    }

    fn del_out(client: &str, seq: u64) -> Op {
        Op::DeleteOutbound {
            client_id: client.into(),
            seq,
        }
    }

    fn session(client: &str) -> Op {
        Op::PutSession(SessionRecord {
            client_id: client.into(),
            protocol_level: 5,
            expiry_interval: 60,
            disconnected_at_ms: None,
            will: None,
        })
    }

    /// The coalesced group leaves the store exactly as the original one.
    fn same_effect(before: &[Op], group: Vec<Op>) -> usize {
        same_effect_created(before, group, &Created::new())
    }

    fn same_effect_created(before: &[Op], group: Vec<Op>, created: &Created) -> usize {
        let a = MemoryStore::new();
        let b = MemoryStore::new();
        a.apply(before).unwrap();
        b.apply(before).unwrap();
        a.apply(&group).unwrap();
        let short = coalesce(group, created);
        b.apply(&short).unwrap();
        assert_eq!(a.load().unwrap(), b.load().unwrap());
        short.len()
    }

    #[test]
    fn a_message_delivered_within_the_group_leaves_one_delete() {
        let before = [session("s")];
        let group = vec![
            msg(1),
            out("s", 1, 1, OutboundState::Sent),
            del_out("s", 1),
            Op::DeleteMessage { id: 1 },
        ];
        assert_eq!(same_effect(&before, group), 1);
    }

    #[test]
    fn an_entry_created_and_delivered_within_the_group_leaves_nothing() {
        let before = [session("s")];
        let group = vec![
            msg(1),
            out("s", 1, 1, OutboundState::Sent),
            del_out("s", 1),
            Op::DeleteMessage { id: 1 },
        ];
        let created = Created::from([("s".to_owned(), HashSet::from([1]))]);
        assert_eq!(same_effect_created(&before, group, &created), 0);
    }

    #[test]
    fn entries_from_earlier_groups_are_still_deleted() {
        let before = [session("s"), msg(1), out("s", 1, 1, OutboundState::Sent)];
        let group = vec![
            out("s", 1, 1, OutboundState::Released),
            del_out("s", 1),
            Op::DeleteMessage { id: 1 },
        ];
        // The body was stored earlier: its delete must stay.
        assert_eq!(same_effect(&before, group), 2);
    }

    #[test]
    fn only_the_last_write_of_an_entry_is_kept() {
        let before = [session("s")];
        let group = vec![
            msg(1),
            out("s", 1, 1, OutboundState::Queued),
            out("s", 1, 1, OutboundState::Sent),
            out("s", 1, 1, OutboundState::Released),
            msg(2),
            out("s", 2, 2, OutboundState::Queued),
        ];
        assert_eq!(same_effect(&before, group), 4);
    }

    #[test]
    fn a_session_deleted_in_the_group_keeps_its_order() {
        let before = [session("s")];
        let group = vec![
            out("s", 1, 7, OutboundState::Queued),
            Op::DeleteSession {
                client_id: "s".into(),
            },
            session("s"),
            out("s", 1, 7, OutboundState::Sent),
        ];
        assert_eq!(same_effect(&before, group), 4);
    }
}
