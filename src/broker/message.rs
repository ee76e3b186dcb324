//! An application message as the broker holds it: one shared copy routed to
//! every subscriber.

use crate::codec::{ByteStr, Publish, QoS, UserProperties};
use bytes::Bytes;
use std::sync::atomic::AtomicU64;

use super::SessionId;

/// A published message. Shared (`Arc`) between every session that holds it.
#[derive(Debug)]
pub struct Message {
    /// Topic name.
    pub topic: ByteStr,
    /// Payload.
    pub payload: Bytes,
    /// QoS as published.
    pub qos: QoS,
    /// Retain flag as published.
    pub retain: bool,
    /// Properties forwarded unchanged.
    pub properties: MessageProperties,
    /// Wall-clock expiry in ms since the Unix epoch.
    pub expires_at_ms: Option<u64>,
    /// The session that published it (for No Local); `None` for the broker
    /// itself (wills of ended sessions, `$SYS`, restored messages).
    pub publisher: Option<SessionId>,
    /// Storage id, assigned when first persisted (0 = not stored).
    pub(crate) store_id: AtomicU64,
    /// The publisher's PUBACK that this message's subscribers may release.
    pub(crate) gate: super::gate::AckGate,
    /// Deliveries wait for this commit (0: for none). It stores a QoS 2
    /// publisher's packet id, which is what stops a resent PUBLISH from
    /// being delivered twice: delivering before it is durable would let a
    /// crash undo that protection.
    pub(crate) deliver_after: AtomicU64,
}

/// The properties of a PUBLISH that belong to the message (not to one hop).
#[derive(Debug, Clone, PartialEq, Default)]
#[allow(missing_docs)]
pub struct MessageProperties {
    pub payload_format_indicator: Option<u8>,
    pub content_type: Option<ByteStr>,
    pub response_topic: Option<ByteStr>,
    pub correlation_data: Option<Bytes>,
    pub user_properties: UserProperties,
}

impl Message {
    /// The message carried by an inbound PUBLISH (topic alias already resolved).
    pub fn from_publish(p: Publish, now_ms: u64, publisher: Option<SessionId>) -> Self {
        let props = p.properties;
        Message {
            topic: p.topic,
            payload: p.payload,
            qos: p.qos_pid.qos(),
            retain: p.retain,
            expires_at_ms: props
                .message_expiry_interval
                .map(|s| now_ms.saturating_add(u64::from(s) * 1000)),
            properties: MessageProperties {
                payload_format_indicator: props.payload_format_indicator,
                content_type: props.content_type,
                response_topic: props.response_topic,
                correlation_data: props.correlation_data,
                user_properties: props.user_properties,
            },
            publisher,
            store_id: AtomicU64::new(0),
            gate: Default::default(),
            deliver_after: AtomicU64::new(0),
        }
    }

    /// Its topic and payload bytes: what queue byte limits count.
    pub fn size(&self) -> usize {
        self.topic.len() + self.payload.len()
    }

    /// True once its Message Expiry Interval has passed.
    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.expires_at_ms.is_some_and(|t| t <= now_ms)
    }

    /// A message read back from the store.
    pub(crate) fn from_record(rec: roost_storage::MessageRecord, store_id: u64) -> Self {
        let p = rec.properties;
        Message {
            topic: ByteStr::from(rec.topic),
            payload: rec.payload,
            qos: super::persist::qos_from_u8(rec.qos),
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
            store_id: AtomicU64::new(store_id),
            gate: Default::default(),
            deliver_after: AtomicU64::new(0),
        }
    }
}
