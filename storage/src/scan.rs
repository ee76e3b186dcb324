//! The whole store one record at a time: [`Record`], what
//! [`Store::scan`](crate::Store::scan) passes, and the ways between records
//! and a [`Snapshot`] ([`Snapshot::into_records`], [`Snapshot::from_scan`]).

use crate::{
    MessageId, MessageRecord, OutboundRecord, SessionRecord, Snapshot, StorageError, StoredSession,
    SubscriptionRecord,
};

/// What [`Store::scan`](crate::Store::scan) calls for each record: an
/// error it returns stops the scan.
pub type Visit<'a> = &'a mut dyn FnMut(Record) -> Result<(), StorageError>;

/// One stored record, as [`Store::scan`](crate::Store::scan) passes it.
///
/// A scan passes a session's record first and then, right after it and
/// before the next session, everything that belongs to the session (see
/// the order in the docs of `scan`), so per-client records name their
/// client only for convenience: it is always the last session's.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Record {
    /// A session record; its subscriptions, outbound entries and inbound
    /// QoS 2 ids follow.
    Session(SessionRecord),
    /// A subscription of the session just passed.
    Subscription {
        /// Client identifier.
        client_id: String,
        /// The subscription.
        subscription: SubscriptionRecord,
    },
    /// An outbound entry of the session just passed.
    Outbound {
        /// Client identifier.
        client_id: String,
        /// Position in the session's queue.
        seq: u64,
        /// The entry (with its body inline, if it is the body's only
        /// reference).
        entry: OutboundRecord,
    },
    /// An inbound QoS 2 packet id of the session just passed.
    InboundQos2 {
        /// Client identifier.
        client_id: String,
        /// Packet identifier.
        packet_id: u16,
    },
    /// A message body.
    Message {
        /// Its id.
        id: MessageId,
        /// The message.
        message: MessageRecord,
    },
    /// A retained message (its topic is the key).
    Retained(MessageRecord),
}

impl Record {
    /// The client the record belongs to, if it belongs to a session.
    pub fn client_id(&self) -> Option<&str> {
        match self {
            Record::Session(session) => Some(&session.client_id),
            Record::Subscription { client_id, .. }
            | Record::Outbound { client_id, .. }
            | Record::InboundQos2 { client_id, .. } => Some(client_id),
            Record::Message { .. } | Record::Retained(_) => None,
        }
    }
}

impl Snapshot {
    /// The snapshot's records in the order [`Store::scan`](crate::Store::scan)
    /// passes them: what a scan of the store the snapshot was loaded from
    /// would have passed.
    pub fn into_records(self) -> impl Iterator<Item = Record> {
        let messages = self.messages.into_iter();
        self.sessions
            .into_iter()
            .flat_map(session_records)
            .chain(messages.map(|(id, message)| Record::Message { id, message }))
            .chain(self.retained.into_iter().map(Record::Retained))
    }

    /// Collects what a scan passes into a snapshot: a backend's `load` is
    /// `Snapshot::from_scan(|visit| self.scan(visit))`, so that `load` and
    /// `scan` are one code path and cannot disagree.
    ///
    /// `scan` must pass the records in [`Store::scan`](crate::Store::scan)'s
    /// order; the snapshot is then ordered as [`Snapshot`] documents. Only a
    /// backend that implements `scan` itself may build its `load` on it: the
    /// default `scan` calls `load`.
    ///
    /// # Errors
    ///
    /// What `scan` returns, or [`StorageError::Corrupt`] (naming no
    /// backend) if it passes a per-client record anywhere but among the
    /// records of that client's session, that is, out of order.
    pub fn from_scan(
        scan: impl FnOnce(Visit<'_>) -> Result<(), StorageError>,
    ) -> Result<Snapshot, StorageError> {
        let mut snapshot = Snapshot::default();
        scan(&mut |record| snapshot.add(record))?;
        Ok(snapshot)
    }

    /// Adds one record of a scan.
    fn add(&mut self, record: Record) -> Result<(), StorageError> {
        match record {
            Record::Session(session) => self.sessions.push(StoredSession {
                session,
                subscriptions: Vec::new(),
                outbound: Vec::new(),
                inbound_qos2: Vec::new(),
            }),
            Record::Subscription {
                client_id,
                subscription,
            } => self
                .current(&client_id, "a subscription")?
                .subscriptions
                .push(subscription),
            Record::Outbound {
                client_id,
                seq,
                entry,
            } => self
                .current(&client_id, "an outbound entry")?
                .outbound
                .push((seq, entry)),
            Record::InboundQos2 {
                client_id,
                packet_id,
            } => self
                .current(&client_id, "an inbound QoS 2 id")?
                .inbound_qos2
                .push(packet_id),
            Record::Message { id, message } => self.messages.push((id, message)),
            Record::Retained(message) => self.retained.push(message),
        }
        Ok(())
    }

    /// The session a per-client record of `client_id` belongs to: the last
    /// one passed, once the bodies have not started yet.
    fn current(&mut self, client_id: &str, what: &str) -> Result<&mut StoredSession, StorageError> {
        let in_place = self.messages.is_empty() && self.retained.is_empty();
        match self.sessions.last_mut() {
            Some(last) if in_place && last.session.client_id == client_id => Ok(last),
            _ => Err(StorageError::corrupt(
                "",
                format!(
                    "the scan passed {what} of client {client_id:?} outside the records of its \
                     session (the backend breaks the order of Store::scan)"
                ),
            )),
        }
    }
}

/// One session's records, in scan order.
fn session_records(stored: StoredSession) -> impl Iterator<Item = Record> {
    let StoredSession {
        session,
        subscriptions,
        outbound,
        inbound_qos2,
    } = stored;
    let id = session.client_id.clone();
    let (sub_id, out_id) = (id.clone(), id.clone());
    let subscriptions = subscriptions.into_iter().map(move |subscription| {
        let client_id = sub_id.clone();
        Record::Subscription {
            client_id,
            subscription,
        }
    });
    let outbound = outbound.into_iter().map(move |(seq, entry)| {
        let client_id = out_id.clone();
        Record::Outbound {
            client_id,
            seq,
            entry,
        }
    });
    let inbound = inbound_qos2.into_iter().map(move |packet_id| {
        let client_id = id.clone();
        Record::InboundQos2 {
            client_id,
            packet_id,
        }
    });
    std::iter::once(Record::Session(session))
        .chain(subscriptions)
        .chain(outbound)
        .chain(inbound)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{SessionOwner, StorageError};

    fn session(client_id: &str) -> SessionRecord {
        SessionRecord {
            client_id: client_id.into(),
            protocol_level: 4,
            expiry_interval: 0,
            disconnected_at_ms: None,
            will: None,
            owner: SessionOwner::Anonymous,
        }
    }

    fn inbound(client_id: &str, packet_id: u16) -> Record {
        Record::InboundQos2 {
            client_id: client_id.into(),
            packet_id,
        }
    }

    fn replay(records: Vec<Record>) -> Result<Snapshot, StorageError> {
        Snapshot::from_scan(|visit| records.into_iter().try_for_each(visit))
    }

    fn retained(topic: &str) -> Record {
        Record::Retained(crate::MessageRecord {
            topic: topic.into(),
            payload: bytes::Bytes::new(),
            qos: 0,
            retain: true,
            properties: Default::default(),
            expires_at_ms: None,
        })
    }

    #[test]
    fn records_round_trip_through_a_snapshot() {
        let records = vec![
            Record::Session(session("a")),
            inbound("a", 1),
            inbound("a", 2),
            Record::Session(session("b")),
            retained("t"),
        ];
        let snapshot = replay(records.clone()).unwrap();
        assert_eq!(snapshot.sessions.len(), 2);
        assert_eq!(snapshot.sessions[0].inbound_qos2, [1, 2]);
        assert_eq!(snapshot.into_records().collect::<Vec<_>>(), records);
        assert_eq!(records[1].client_id(), Some("a"));
        assert_eq!(records[4].client_id(), None);
    }

    #[test]
    fn a_record_outside_its_session_is_refused() {
        for records in [
            vec![inbound("a", 1)],
            vec![Record::Session(session("a")), inbound("b", 1)],
            vec![
                Record::Session(session("a")),
                Record::Session(session("b")),
                inbound("a", 1),
            ],
            vec![
                Record::Session(session("a")),
                retained("t"),
                inbound("a", 1),
            ],
        ] {
            let err = replay(records).unwrap_err();
            assert!(matches!(err, StorageError::Corrupt { .. }), "{err:?}");
            assert!(err.to_string().contains("Store::scan"), "{err}");
        }
    }

    #[test]
    fn an_error_of_the_scan_is_returned() {
        let err = Snapshot::from_scan(|visit| {
            visit(Record::Session(session("a")))?;
            Err(StorageError::io("test", "gone"))
        })
        .unwrap_err();
        assert_eq!(err.backend(), "test");
    }
}
