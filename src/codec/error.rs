//! Codec errors. Each decode error names the specification rule it enforces
//! and maps to the reason code the server answers with.

use super::{ProtocolVersion, ReasonCode};

/// Why bytes could not be decoded into a packet.
///
/// Small and `Copy` so the session layer can match on it cheaply. The
/// `Display` text names the violated rule where the specification numbers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Remaining length is more than 4 bytes or otherwise invalid.
    #[error("malformed remaining length [MQTT-1.5.5-1]")]
    MalformedRemainingLength,
    /// The packet (fixed header included) is larger than the maximum allowed.
    #[error("packet of {size} bytes exceeds the maximum packet size of {max} [MQTT-3.2.2-15]")]
    PacketTooLarge {
        /// Total packet size announced by the fixed header.
        size: u32,
        /// The limit in force.
        max: u32,
    },
    /// Packet type 0 or 15 (15 is AUTH, legal only in 5.0).
    #[error("invalid packet type {0}")]
    InvalidPacketType(u8),
    /// Reserved fixed header flags have the wrong value.
    #[error("invalid fixed header flags for packet type {0} [MQTT-2.1.3-1]")]
    InvalidHeaderFlags(u8),
    /// Something other than CONNECT arrived first.
    #[error("first packet must be CONNECT [MQTT-3.1.0-1]")]
    ExpectedConnect,
    /// A second CONNECT on the same connection.
    #[error("second CONNECT on a connection [MQTT-3.1.0-2]")]
    DuplicateConnect,
    /// Protocol name is not `MQTT` / `MQIsdp`.
    #[error("invalid protocol name [MQTT-3.1.2-1]")]
    InvalidProtocolName,
    /// Protocol level is not 3, 4 or 5 (answered with CONNACK 0x01 / 0x84).
    #[error("unsupported protocol level {0} [MQTT-3.1.2-2]")]
    UnsupportedProtocolVersion(u8),
    /// The reserved CONNECT flag is set.
    #[error("reserved CONNECT flag is set [MQTT-3.1.2-3]")]
    ConnectReservedFlag,
    /// Will QoS or Will Retain set without the Will Flag, or Will QoS 3.
    #[error("invalid will flags [MQTT-3.1.2-13]")]
    InvalidWillFlags,
    /// Password flag without user name flag (3.1.1 only).
    #[error("password flag set without user name flag [MQTT-3.1.2-22]")]
    PasswordWithoutUsername,
    /// QoS bits are 3.
    #[error("QoS 3 is not allowed [MQTT-3.3.1-4]")]
    InvalidQoS,
    /// DUP set on a QoS 0 PUBLISH.
    #[error("DUP flag set on QoS 0 PUBLISH [MQTT-3.3.1-2]")]
    DupOnQoS0,
    /// A topic name contains a wildcard character.
    #[error("topic name contains a wildcard [MQTT-3.3.2-2]")]
    WildcardInTopicName,
    /// A topic name is not valid (contains U+0000, or is empty in 3.x).
    #[error("invalid topic name [MQTT-4.7.3-1]")]
    InvalidTopicName,
    /// A 5.0 PUBLISH with an empty topic name and no Topic Alias: a Protocol
    /// Error (5.0 section 3.3.2.3.4).
    #[error("empty topic name without a topic alias (MQTT 5.0 section 3.3.2.3.4)")]
    EmptyTopicWithoutAlias,
    /// A PUBLISH from a client carries a Subscription Identifier: only the
    /// server sets those.
    #[error("subscription identifier in a PUBLISH from a client [MQTT-3.3.4-6]")]
    SubscriptionIdentifierFromClient,
    /// A Response Topic (of a PUBLISH or a will) contains a wildcard.
    #[error("response topic contains a wildcard [MQTT-3.3.2-14]")]
    WildcardInResponseTopic,
    /// Authentication Data without an Authentication Method (CONNECT,
    /// CONNACK or AUTH): a Protocol Error (5.0 sections 3.1.2.11.10,
    /// 3.2.2.3.18 and 3.15.2.2.3).
    #[error("authentication data without an authentication method (MQTT 5.0 section 3.1.2.11.10)")]
    AuthenticationDataWithoutMethod,
    /// A topic filter is malformed (misplaced wildcard, empty, U+0000).
    #[error("invalid topic filter [MQTT-4.7.1-1]")]
    InvalidTopicFilter,
    /// Packet identifier is zero.
    #[error("packet identifier is zero [MQTT-2.2.1-3]")]
    ZeroPacketId,
    /// A string is not well-formed UTF-8 or contains U+0000.
    #[error("malformed UTF-8 string [MQTT-1.5.4-1]")]
    InvalidUtf8,
    /// The packet ended before a field was complete, or has trailing bytes.
    #[error("packet length does not match its contents [MQTT-2.1.4]")]
    LengthMismatch,
    /// SUBSCRIBE or UNSUBSCRIBE without any topic filter.
    #[error("no topic filter in SUBSCRIBE/UNSUBSCRIBE [MQTT-3.8.3-3]")]
    NoTopicFilter,
    /// Reserved bits of the subscription options are set.
    #[error("invalid subscription options [MQTT-3.8.3-5]")]
    InvalidSubscriptionOptions,
    /// Well-formed subscription options with a forbidden value: QoS 3,
    /// Retain Handling 3, or No Local on a shared subscription (5.0 section
    /// 3.8.3.1 calls each a Protocol Error; [MQTT-3.8.3-4]).
    #[error("forbidden subscription options [MQTT-3.8.3-4]")]
    ForbiddenSubscriptionOptions,
    /// An unknown property identifier, or one not allowed in this packet.
    #[error("invalid property identifier 0x{0:02x} [MQTT-2.2.2-2]")]
    InvalidProperty(u8),
    /// A property that may appear once appears twice.
    #[error("duplicate property 0x{0:02x} [MQTT-2.2.2-2]")]
    DuplicateProperty(u8),
    /// A property value is out of range (e.g. Receive Maximum 0).
    #[error("invalid value for property 0x{0:02x}")]
    InvalidPropertyValue(u8),
    /// A reason code this packet may not carry.
    #[error("invalid reason code 0x{0:02x}")]
    InvalidReasonCode(u8),
    /// The packet type does not exist in the negotiated protocol version (AUTH before 5.0).
    #[error("packet type {0} is not valid in this protocol version")]
    UnsupportedPacket(u8),
    /// Reserved bits of the CONNACK acknowledge flags are set (3.1.1 and 5.0).
    #[error("reserved CONNACK flags are set [MQTT-3.2.2-1]")]
    ConnAckReservedFlag,
}

impl DecodeError {
    /// The reason code to answer with (CONNACK before the session exists,
    /// DISCONNECT after) for MQTT 5.0 peers.
    pub fn reason_code(self) -> ReasonCode {
        match self {
            DecodeError::PacketTooLarge { .. } => ReasonCode::PacketTooLarge,
            DecodeError::UnsupportedProtocolVersion(_) => ReasonCode::UnsupportedProtocolVersion,
            DecodeError::InvalidTopicName | DecodeError::WildcardInTopicName => {
                ReasonCode::TopicNameInvalid
            }
            // A Topic Alias of 0 ([MQTT-3.3.2-8]).
            DecodeError::InvalidPropertyValue(0x23) => ReasonCode::TopicAliasInvalid,
            // Parsed fine but not allowed: the specification names each of
            // these a Protocol Error, not a Malformed Packet (5.0 sections
            // 2.2.2.2, 3.3.2.3.4, 3.8.3, 3.8.3.1, 3.10.3 and the property
            // definitions). The Subscription Identifier and Response Topic
            // rules name no code; they too are well-formed packets carrying
            // what the protocol forbids, which is what 0x82 means (1.2).
            DecodeError::ExpectedConnect
            | DecodeError::DuplicateConnect
            | DecodeError::DuplicateProperty(_)
            | DecodeError::InvalidPropertyValue(_)
            | DecodeError::NoTopicFilter
            | DecodeError::ForbiddenSubscriptionOptions
            | DecodeError::UnsupportedPacket(_)
            | DecodeError::EmptyTopicWithoutAlias
            | DecodeError::SubscriptionIdentifierFromClient
            | DecodeError::WildcardInResponseTopic
            | DecodeError::AuthenticationDataWithoutMethod => ReasonCode::ProtocolError,
            _ => ReasonCode::MalformedPacket,
        }
    }

    /// For [`DecodeError::UnsupportedProtocolVersion`], the version to encode
    /// the refusing CONNACK with (reason
    /// [`ReasonCode::UnsupportedProtocolVersion`]): 3.1.1 for levels below 5,
    /// so old clients read return code 0x01 ([MQTT-3.1.2-2]), and 5.0 above,
    /// giving reason code 0x84. `None` for every other error.
    pub fn connack_version(self) -> Option<ProtocolVersion> {
        match self {
            DecodeError::UnsupportedProtocolVersion(level) if level < 5 => {
                Some(ProtocolVersion::V3_1_1)
            }
            DecodeError::UnsupportedProtocolVersion(_) => Some(ProtocolVersion::V5),
            _ => None,
        }
    }
}

/// Why a packet could not be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The encoded packet would exceed 268,435,455 bytes of remaining length.
    #[error("packet too large to encode")]
    PacketTooLarge,
    /// A string or binary field is longer than 65,535 bytes.
    #[error("field longer than 65535 bytes")]
    FieldTooLong,
    /// A variable byte integer value (a subscription identifier) is above
    /// 268,435,455.
    #[error("value too large for a variable byte integer [MQTT-1.5.5]")]
    ValueOutOfRange,
    /// The packet does not exist in the protocol version (AUTH before 5.0).
    #[error("packet not available in this protocol version")]
    UnsupportedPacket,
}
