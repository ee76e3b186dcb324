//! An application message as plain data: what a PUBLISH (or a will, or a
//! retained or `$SYS` value) carries from its publisher to its subscribers,
//! and [`SessionId`], which names its publisher.
//!
//! Plain on purpose: hooks and the link layer read it without knowing the
//! broker. What the core keeps beside a message it routes (its storage id,
//! the publisher's acknowledgement gate, the commit its deliveries wait
//! for) is in the core's wrapper, `broker::Tracked`.

use crate::codec::{ByteStr, Publish, QoS, UserProperties};
use bytes::Bytes;

/// Identifies a session for its whole life (client ids can be reused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub(crate) u64);

/// A published message. One copy is shared (by reference) between every
/// session that holds it.
// Non-exhaustive: hooks read messages, only the broker makes them.
#[non_exhaustive]
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
    /// The client id of its publisher (a network client, the inline
    /// client, a bridge; a will: the client whose will it is). `None` for
    /// the broker's own `$SYS` messages and for messages read back from the
    /// store (queued or retained before a restart, or a retained message
    /// no longer cached in memory): the store does not keep it.
    pub publisher_id: Option<ByteStr>,
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
            publisher_id: None,
        }
    }

    /// The same message, published by the client `id`.
    pub(crate) fn with_publisher_id(mut self, id: ByteStr) -> Self {
        self.publisher_id = Some(id);
        self
    }

    /// Its topic and payload bytes: what queue byte limits count.
    pub fn size(&self) -> usize {
        self.topic.len() + self.payload.len()
    }

    /// True once its Message Expiry Interval has passed.
    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.expires_at_ms.is_some_and(|t| t <= now_ms)
    }

    /// The same message at `qos`.
    pub(crate) fn with_qos(mut self, qos: QoS) -> Self {
        self.qos = qos;
        self
    }
}
