//! The in-memory backend: the reference implementation of [`Store`].

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::{
    MessageId, MessageRecord, Op, OutboundRecord, Record, SessionRecord, Snapshot, StorageError,
    Store, SubscriptionRecord, Visit,
};

/// Keeps everything in memory; nothing survives the process.
///
/// This is the reference implementation: the conformance suite
/// ([`conformance_tests!`](crate::conformance_tests)) describes its behaviour,
/// and every other backend must match it.
#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Mutex<State>,
}

/// Everything stored. Per-client data is grouped under the client id so
/// that `DeleteSession` can drop it in one step.
#[derive(Debug, Default)]
struct State {
    clients: BTreeMap<String, ClientState>,
    messages: BTreeMap<MessageId, MessageRecord>,
    retained: BTreeMap<String, MessageRecord>,
}

/// One client's data. `session` is `None` while only orphans exist (entries
/// written before, or without, the session record); such a client is left
/// out of snapshots. Invariant: a `ClientState` that holds nothing at all is
/// removed from `State::clients`.
#[derive(Debug, Default)]
struct ClientState {
    session: Option<SessionRecord>,
    subscriptions: BTreeMap<String, SubscriptionRecord>,
    outbound: BTreeMap<u64, OutboundRecord>,
    inbound_qos2: BTreeSet<u16>,
}

impl ClientState {
    fn is_empty(&self) -> bool {
        self.session.is_none()
            && self.subscriptions.is_empty()
            && self.outbound.is_empty()
            && self.inbound_qos2.is_empty()
    }
}

impl State {
    fn client(&mut self, client_id: &str) -> &mut ClientState {
        self.clients.entry(client_id.to_owned()).or_default()
    }

    /// Runs `f` on an existing client's data, then drops the entry if it
    /// became empty (keeps the invariant on `ClientState`).
    fn with_existing_client(&mut self, client_id: &str, f: impl FnOnce(&mut ClientState)) {
        if let Some(client) = self.clients.get_mut(client_id) {
            f(client);
            if client.is_empty() {
                self.clients.remove(client_id);
            }
        }
    }

    /// Applies one op. Infallible: validation happened before the first
    /// change, which is what makes a batch all-or-nothing.
    fn apply(&mut self, op: &Op) {
        match op {
            Op::PutSession(session) => {
                self.client(&session.client_id).session = Some(session.clone());
            }
            Op::DeleteSession { client_id } => {
                // Cascades to subscriptions, outbound entries and inbound
                // ids, not to message bodies (the broker deletes those).
                self.clients.remove(client_id.as_str());
            }
            Op::PutSubscription {
                client_id,
                subscription,
            } => {
                self.client(client_id)
                    .subscriptions
                    .insert(subscription.filter.clone(), subscription.clone());
            }
            Op::DeleteSubscription { client_id, filter } => {
                self.with_existing_client(client_id, |c| {
                    c.subscriptions.remove(filter.as_str());
                });
            }
            Op::PutMessage { id, message } => {
                self.messages.insert(*id, message.clone());
            }
            Op::DeleteMessage { id } => {
                self.messages.remove(id);
            }
            Op::PutOutbound {
                client_id,
                seq,
                entry,
            } => {
                self.client(client_id).outbound.insert(*seq, entry.clone());
            }
            Op::DeleteOutbound { client_id, seq } => {
                self.with_existing_client(client_id, |c| {
                    c.outbound.remove(seq);
                });
            }
            Op::PutInboundQos2 {
                client_id,
                packet_id,
            } => {
                self.client(client_id).inbound_qos2.insert(*packet_id);
            }
            Op::DeleteInboundQos2 {
                client_id,
                packet_id,
            } => {
                self.with_existing_client(client_id, |c| {
                    c.inbound_qos2.remove(packet_id);
                });
            }
            Op::PutRetained { message } => {
                self.retained.insert(message.topic.clone(), message.clone());
            }
            Op::DeleteRetained { topic } => {
                self.retained.remove(topic.as_str());
            }
        }
    }

    /// Passes every record to `visit`, in the order of `Store::scan`.
    fn scan(&self, visit: Visit<'_>) -> Result<(), StorageError> {
        for client in self.clients.values() {
            // Orphans (no session record) are left out.
            let Some(session) = &client.session else {
                continue;
            };
            let client_id = &session.client_id;
            visit(Record::Session(session.clone()))?;
            for subscription in client.subscriptions.values() {
                visit(Record::Subscription {
                    client_id: client_id.clone(),
                    subscription: subscription.clone(),
                })?;
            }
            for (seq, entry) in &client.outbound {
                visit(Record::Outbound {
                    client_id: client_id.clone(),
                    seq: *seq,
                    entry: entry.clone(),
                })?;
            }
            for packet_id in &client.inbound_qos2 {
                visit(Record::InboundQos2 {
                    client_id: client_id.clone(),
                    packet_id: *packet_id,
                })?;
            }
        }
        for (id, message) in &self.messages {
            visit(Record::Message {
                id: *id,
                message: message.clone(),
            })?;
        }
        for message in self.retained.values() {
            visit(Record::Retained(message.clone()))?;
        }
        Ok(())
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing that changes the state panics while the lock is held
        // (`State::apply` cannot fail; a scan's visitor may panic, but a
        // scan changes nothing), so a poisoned lock still guards a
        // consistent state.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Store for MemoryStore {
    fn apply(&self, ops: &[Op]) -> Result<(), StorageError> {
        // All-or-nothing: every op is checked before the first change, and
        // the lock is held for the whole batch so `load` never sees half of
        // it.
        for op in ops {
            op.validate().map_err(|e| e.in_backend("memory"))?;
        }
        let mut state = self.lock();
        for op in ops {
            state.apply(op);
        }
        Ok(())
    }

    fn load(&self) -> Result<Snapshot, StorageError> {
        Snapshot::from_scan(|visit| self.scan(visit))
    }

    fn is_persistent(&self) -> bool {
        false
    }

    fn outbound_page(
        &self,
        client_id: &str,
        after_seq: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, OutboundRecord)>, StorageError> {
        let state = self.lock();
        // Orphans are left out, as in a snapshot.
        let Some(client) = state.clients.get(client_id).filter(|c| c.session.is_some()) else {
            return Ok(Vec::new());
        };
        let from = match after_seq {
            None => Bound::Unbounded,
            Some(after) => Bound::Excluded(after),
        };
        Ok(client
            .outbound
            .range((from, Bound::Unbounded))
            .take(limit)
            .map(|(seq, entry)| (*seq, entry.clone()))
            .collect())
    }

    fn messages(&self, ids: &[MessageId]) -> Result<Vec<Option<MessageRecord>>, StorageError> {
        let state = self.lock();
        Ok(ids
            .iter()
            .map(|id| state.messages.get(id).cloned())
            .collect())
    }

    fn retained(&self, topic: &str) -> Result<Option<MessageRecord>, StorageError> {
        Ok(self.lock().retained.get(topic).cloned())
    }

    fn retained_many(&self, topics: &[&str]) -> Result<Vec<Option<MessageRecord>>, StorageError> {
        let state = self.lock();
        Ok(topics
            .iter()
            .map(|topic| state.retained.get(*topic).cloned())
            .collect())
    }

    /// Holds the lock for the whole scan: one consistent state, and writes
    /// wait until the scan ends.
    fn scan(
        &self,
        visit: &mut dyn FnMut(Record) -> Result<(), StorageError>,
    ) -> Result<(), StorageError> {
        self.lock().scan(visit)
    }
}
