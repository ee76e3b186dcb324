//! The records the broker stores, and the operations that change them.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::StorageError;

/// A message identifier, unique for the life of a store. A message body is
/// stored once and referenced by id from every session that must receive it.
pub type MessageId = u64;

/// Application message properties that travel with a message (MQTT 5.0).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct MessageProperties {
    /// Payload Format Indicator.
    pub payload_format_indicator: Option<u8>,
    /// Content Type.
    pub content_type: Option<String>,
    /// Response Topic.
    pub response_topic: Option<String>,
    /// Correlation Data.
    pub correlation_data: Option<Bytes>,
    /// User properties, in order.
    pub user_properties: Vec<(String, String)>,
}

/// A stored application message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageRecord {
    /// Topic name.
    pub topic: String,
    /// Payload.
    pub payload: Bytes,
    /// QoS it was published with (0-2).
    pub qos: u8,
    /// Retain flag as published.
    pub retain: bool,
    /// Properties.
    pub properties: MessageProperties,
    /// Wall-clock expiry, milliseconds since the Unix epoch, if it expires.
    pub expires_at_ms: Option<u64>,
}

/// A will message stored with its session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WillRecord {
    /// The message to publish.
    pub message: MessageRecord,
    /// Will Delay Interval in seconds.
    pub delay_interval: u32,
    /// The will's Message Expiry Interval in seconds: it starts when the
    /// will is published, so it is kept as an interval, not a deadline.
    pub message_expiry_interval: Option<u32>,
}

/// Who a session belongs to: only a client of the same user may resume it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum SessionOwner {
    /// Not known: the record was written before owners were stored
    /// (format version 1). The first client admitted with its id resumes
    /// it and becomes its owner.
    #[default]
    Unknown,
    /// A client without a user name.
    Anonymous,
    /// A client with this user name (from CONNECT or its certificate).
    User(String),
}

/// A stored session (without its subscriptions and queues).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// Client identifier.
    pub client_id: String,
    /// MQTT protocol level (3, 4 or 5).
    pub protocol_level: u8,
    /// Session Expiry Interval in seconds (`u32::MAX`: never).
    pub expiry_interval: u32,
    /// When the client disconnected, milliseconds since the Unix epoch;
    /// `None` while connected.
    pub disconnected_at_ms: Option<u64>,
    /// The will, if one is pending.
    pub will: Option<WillRecord>,
    /// Who the session belongs to (since format version 2).
    pub owner: SessionOwner,
}

/// [`SessionRecord`] as format version 1 wrote it: without its owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SessionRecordV1 {
    pub client_id: String,
    pub protocol_level: u8,
    pub expiry_interval: u32,
    pub disconnected_at_ms: Option<u64>,
    pub will: Option<WillRecord>,
}

impl From<SessionRecordV1> for SessionRecord {
    fn from(v1: SessionRecordV1) -> Self {
        SessionRecord {
            client_id: v1.client_id,
            protocol_level: v1.protocol_level,
            expiry_interval: v1.expiry_interval,
            disconnected_at_ms: v1.disconnected_at_ms,
            will: v1.will,
            owner: SessionOwner::Unknown,
        }
    }
}

/// A stored subscription.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionRecord {
    /// The filter as subscribed, including any `$share/{group}/` prefix.
    pub filter: String,
    /// Maximum QoS granted (0-2).
    pub qos: u8,
    /// No Local option.
    pub no_local: bool,
    /// Retain As Published option.
    pub retain_as_published: bool,
    /// Retain Handling option (0-2).
    pub retain_handling: u8,
    /// Subscription Identifier, if any.
    pub subscription_identifier: Option<u32>,
}

/// Where an outbound QoS 1/2 message stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OutboundState {
    /// Not yet sent (queued while offline or over the receive maximum).
    Queued,
    /// PUBLISH sent, waiting for PUBACK (QoS 1) or PUBREC (QoS 2).
    Sent,
    /// PUBREL sent, waiting for PUBCOMP (QoS 2). The message body is no
    /// longer needed.
    Released,
}

/// One entry of a session's outbound queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboundRecord {
    /// The message body.
    pub message_id: MessageId,
    /// QoS to deliver at (1 or 2).
    pub qos: u8,
    /// Retain flag to deliver with.
    pub retain: bool,
    /// Packet identifier, once assigned.
    pub packet_id: Option<u16>,
    /// Progress of the flow.
    pub state: OutboundState,
    /// Subscription identifiers to deliver with.
    pub subscription_identifiers: Vec<u32>,
    /// The message body itself, when this entry is its only reference:
    /// one record instead of two. `message_id` is then 0 and no
    /// [`Op::PutMessage`] exists for it.
    pub message: Option<MessageRecord>,
    /// The message's sequence number in a cluster's message stream, 0 if
    /// it did not come from one (or the entry was written before format
    /// version 3). A cluster reads it back with the entry to know how far
    /// in its stream the session is. Kept here rather than in
    /// [`MessageRecord`], which also holds wills and retained messages
    /// (never from the stream) and sits inside other records.
    pub stream_seq: u64,
}

/// [`OutboundRecord`] as format versions 1 and 2 wrote it: without its
/// stream sequence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct OutboundRecordV2 {
    pub message_id: MessageId,
    pub qos: u8,
    pub retain: bool,
    pub packet_id: Option<u16>,
    pub state: OutboundState,
    pub subscription_identifiers: Vec<u32>,
    pub message: Option<MessageRecord>,
}

impl From<OutboundRecordV2> for OutboundRecord {
    fn from(v2: OutboundRecordV2) -> Self {
        OutboundRecord {
            message_id: v2.message_id,
            qos: v2.qos,
            retain: v2.retain,
            packet_id: v2.packet_id,
            state: v2.state,
            subscription_identifiers: v2.subscription_identifiers,
            message: v2.message,
            stream_seq: 0,
        }
    }
}

/// One change to the stored state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Insert or replace a session record.
    PutSession(SessionRecord),
    /// Remove a session and everything that belongs to it (subscriptions,
    /// outbound entries, inbound QoS 2 ids).
    DeleteSession {
        /// Client identifier.
        client_id: String,
    },
    /// Insert or replace a subscription (keyed by client id and filter).
    PutSubscription {
        /// Client identifier.
        client_id: String,
        /// The subscription.
        subscription: SubscriptionRecord,
    },
    /// Remove a subscription.
    DeleteSubscription {
        /// Client identifier.
        client_id: String,
        /// The filter as subscribed.
        filter: String,
    },
    /// Store a message body.
    PutMessage {
        /// Its id.
        id: MessageId,
        /// The message.
        message: MessageRecord,
    },
    /// Remove a message body (its last reference is gone).
    DeleteMessage {
        /// Its id.
        id: MessageId,
    },
    /// Insert or replace an outbound entry, keyed by client id and sequence
    /// number (delivery order).
    PutOutbound {
        /// Client identifier.
        client_id: String,
        /// Position in the session's queue.
        seq: u64,
        /// The entry.
        entry: OutboundRecord,
    },
    /// Remove an outbound entry.
    DeleteOutbound {
        /// Client identifier.
        client_id: String,
        /// Position in the session's queue.
        seq: u64,
    },
    /// Remember an inbound QoS 2 packet id awaiting PUBREL.
    PutInboundQos2 {
        /// Client identifier.
        client_id: String,
        /// Packet identifier.
        packet_id: u16,
    },
    /// Forget an inbound QoS 2 packet id (PUBREL arrived).
    DeleteInboundQos2 {
        /// Client identifier.
        client_id: String,
        /// Packet identifier.
        packet_id: u16,
    },
    /// Insert or replace the retained message of a topic.
    PutRetained {
        /// The message (its topic is the key).
        message: MessageRecord,
    },
    /// Remove the retained message of a topic.
    DeleteRetained {
        /// Topic name.
        topic: String,
    },
}

/// A session with everything that belongs to it, as loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSession {
    /// The session record.
    pub session: SessionRecord,
    /// Its subscriptions, ordered by filter.
    pub subscriptions: Vec<SubscriptionRecord>,
    /// Its outbound entries, ordered by sequence number.
    pub outbound: Vec<(u64, OutboundRecord)>,
    /// Inbound QoS 2 packet ids awaiting PUBREL, ascending.
    pub inbound_qos2: Vec<u16>,
}

/// Everything a store holds.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Snapshot {
    /// Sessions, ordered by client id.
    pub sessions: Vec<StoredSession>,
    /// Message bodies, ordered by id.
    pub messages: Vec<(MessageId, MessageRecord)>,
    /// Retained messages, ordered by topic.
    pub retained: Vec<MessageRecord>,
}

impl Op {
    /// The client id this operation is keyed by, if it belongs to a session.
    pub fn client_id(&self) -> Option<&str> {
        match self {
            Op::PutSession(session) => Some(&session.client_id),
            Op::DeleteSession { client_id }
            | Op::PutSubscription { client_id, .. }
            | Op::DeleteSubscription { client_id, .. }
            | Op::PutOutbound { client_id, .. }
            | Op::DeleteOutbound { client_id, .. }
            | Op::PutInboundQos2 { client_id, .. }
            | Op::DeleteInboundQos2 { client_id, .. } => Some(client_id),
            Op::PutMessage { .. }
            | Op::DeleteMessage { .. }
            | Op::PutRetained { .. }
            | Op::DeleteRetained { .. } => None,
        }
    }

    /// Checks that every backend can store this operation.
    ///
    /// A client id must not contain U+0000 ([MQTT-1.5.4-2] forbids it on the
    /// wire, and persistent backends use 0x00 as the separator in composite
    /// keys, see [`keys`](crate::keys)). Backends call this for every op of a
    /// batch before changing anything, so an invalid op rejects the whole
    /// batch.
    pub fn validate(&self) -> Result<(), StorageError> {
        match self.client_id() {
            Some(client_id) => crate::keys::check_client_id(client_id),
            None => Ok(()),
        }
    }
}
