//! The MQTT control packets as plain data.
//!
//! One set of types serves MQTT 3.1, 3.1.1 and 5.0: fields that only exist in
//! 5.0 (properties, most reason codes) are simply left at their defaults for
//! 3.x peers, and the encoder leaves them out.
//!
//! The types are `#[non_exhaustive]`, so a later MQTT revision (or a field we
//! missed) can be added without breaking users: outside this crate, build a
//! packet with its `new` constructor and `with_` setters, and properties from
//! `Default` with fields assigned, and match with `..`.

use super::{ByteStr, ReasonCode};
use bytes::Bytes;
use std::num::{NonZeroU16, NonZeroU32};

/// The protocol level from CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum ProtocolVersion {
    /// MQTT 3.1, protocol name `MQIsdp`, level 3.
    V3_1,
    /// MQTT 3.1.1, protocol name `MQTT`, level 4.
    V3_1_1,
    /// MQTT 5.0, protocol name `MQTT`, level 5.
    V5,
}

impl ProtocolVersion {
    /// The protocol level byte.
    pub fn level(self) -> u8 {
        match self {
            ProtocolVersion::V3_1 => 3,
            ProtocolVersion::V3_1_1 => 4,
            ProtocolVersion::V5 => 5,
        }
    }

    /// The version for a level byte.
    pub fn from_level(level: u8) -> Option<Self> {
        match level {
            3 => Some(ProtocolVersion::V3_1),
            4 => Some(ProtocolVersion::V3_1_1),
            5 => Some(ProtocolVersion::V5),
            _ => None,
        }
    }

    /// True for MQTT 5.0.
    pub fn is_v5(self) -> bool {
        self == ProtocolVersion::V5
    }
}

/// Quality of service level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum QoS {
    /// At most once.
    #[default]
    AtMostOnce = 0,
    /// At least once.
    AtLeastOnce = 1,
    /// Exactly once.
    ExactlyOnce = 2,
}

impl QoS {
    /// Parses the two QoS bits; `None` for 3 (which is malformed).
    pub fn from_u8(b: u8) -> Option<Self> {
        match b {
            0 => Some(QoS::AtMostOnce),
            1 => Some(QoS::AtLeastOnce),
            2 => Some(QoS::ExactlyOnce),
            _ => None,
        }
    }
}

/// A packet identifier; zero is not a legal identifier ([MQTT-2.2.1-3]).
pub type PacketId = NonZeroU16;

/// The QoS of a PUBLISH together with its packet identifier, which exists
/// exactly when QoS > 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QosPid {
    /// QoS 0: no packet identifier.
    AtMostOnce,
    /// QoS 1 with its packet identifier.
    AtLeastOnce(PacketId),
    /// QoS 2 with its packet identifier.
    ExactlyOnce(PacketId),
}

impl QosPid {
    /// The QoS level.
    pub fn qos(self) -> QoS {
        match self {
            QosPid::AtMostOnce => QoS::AtMostOnce,
            QosPid::AtLeastOnce(_) => QoS::AtLeastOnce,
            QosPid::ExactlyOnce(_) => QoS::ExactlyOnce,
        }
    }

    /// The packet identifier, for QoS 1 and 2.
    pub fn packet_id(self) -> Option<PacketId> {
        match self {
            QosPid::AtMostOnce => None,
            QosPid::AtLeastOnce(p) | QosPid::ExactlyOnce(p) => Some(p),
        }
    }

    /// Builds from a QoS and an id; the id is ignored for QoS 0.
    pub fn new(qos: QoS, pid: PacketId) -> Self {
        match qos {
            QoS::AtMostOnce => QosPid::AtMostOnce,
            QoS::AtLeastOnce => QosPid::AtLeastOnce(pid),
            QoS::ExactlyOnce => QosPid::ExactlyOnce(pid),
        }
    }
}

/// User properties: ordered name/value pairs that may repeat.
pub type UserProperties = Vec<(ByteStr, ByteStr)>;

/// Every MQTT control packet.
#[derive(Debug, Clone, PartialEq)]
#[allow(missing_docs)]
#[non_exhaustive]
pub enum Packet {
    Connect(Box<Connect>),
    ConnAck(ConnAck),
    Publish(Publish),
    PubAck(PubResp),
    PubRec(PubResp),
    PubRel(PubResp),
    PubComp(PubResp),
    Subscribe(Subscribe),
    SubAck(SubAck),
    Unsubscribe(Unsubscribe),
    UnsubAck(UnsubAck),
    PingReq,
    PingResp,
    Disconnect(Disconnect),
    Auth(Auth),
}

impl Packet {
    /// The packet's name, for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Packet::Connect(_) => "CONNECT",
            Packet::ConnAck(_) => "CONNACK",
            Packet::Publish(_) => "PUBLISH",
            Packet::PubAck(_) => "PUBACK",
            Packet::PubRec(_) => "PUBREC",
            Packet::PubRel(_) => "PUBREL",
            Packet::PubComp(_) => "PUBCOMP",
            Packet::Subscribe(_) => "SUBSCRIBE",
            Packet::SubAck(_) => "SUBACK",
            Packet::Unsubscribe(_) => "UNSUBSCRIBE",
            Packet::UnsubAck(_) => "UNSUBACK",
            Packet::PingReq => "PINGREQ",
            Packet::PingResp => "PINGRESP",
            Packet::Disconnect(_) => "DISCONNECT",
            Packet::Auth(_) => "AUTH",
        }
    }
}

/// CONNECT (section 3.1).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Connect {
    /// Protocol name and level.
    pub protocol: ProtocolVersion,
    /// Clean Session (3.x) / Clean Start (5.0).
    pub clean_start: bool,
    /// Keep alive in seconds; 0 disables it.
    pub keep_alive: u16,
    /// Client identifier; may be empty.
    pub client_id: ByteStr,
    /// The will message, if the Will Flag is set.
    pub will: Option<LastWill>,
    /// User name, if the flag is set.
    pub username: Option<ByteStr>,
    /// Password, if the flag is set.
    pub password: Option<Bytes>,
    /// CONNECT properties (5.0).
    pub properties: ConnectProperties,
}

impl Connect {
    /// A CONNECT with Clean Start set, keep-alive off (0), and no will,
    /// credentials or properties; set the rest with the `with_` methods or
    /// through the public fields.
    pub fn new(protocol: ProtocolVersion, client_id: impl Into<ByteStr>) -> Self {
        Connect {
            protocol,
            clean_start: true,
            keep_alive: 0,
            client_id: client_id.into(),
            will: None,
            username: None,
            password: None,
            properties: ConnectProperties::default(),
        }
    }

    /// Sets Clean Session (3.x) / Clean Start (5.0).
    pub fn with_clean_start(mut self, clean_start: bool) -> Self {
        self.clean_start = clean_start;
        self
    }

    /// Sets the keep-alive in seconds (0 turns it off).
    pub fn with_keep_alive(mut self, seconds: u16) -> Self {
        self.keep_alive = seconds;
        self
    }

    /// Sets the will message.
    pub fn with_will(mut self, will: LastWill) -> Self {
        self.will = Some(will);
        self
    }

    /// Sets the user name and, if given, the password.
    pub fn with_credentials(
        mut self,
        username: impl Into<ByteStr>,
        password: Option<Bytes>,
    ) -> Self {
        self.username = Some(username.into());
        self.password = password;
        self
    }

    /// Sets the CONNECT properties (5.0).
    pub fn with_properties(mut self, properties: ConnectProperties) -> Self {
        self.properties = properties;
        self
    }
}

/// CONNECT properties (3.1.2.11).
#[derive(Debug, Clone, PartialEq, Default)]
#[allow(missing_docs)]
#[non_exhaustive]
pub struct ConnectProperties {
    pub session_expiry_interval: Option<u32>,
    pub receive_maximum: Option<NonZeroU16>,
    pub maximum_packet_size: Option<NonZeroU32>,
    pub topic_alias_maximum: Option<u16>,
    pub request_response_information: Option<bool>,
    pub request_problem_information: Option<bool>,
    pub authentication_method: Option<ByteStr>,
    pub authentication_data: Option<Bytes>,
    pub user_properties: UserProperties,
}

/// The will message carried in CONNECT.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct LastWill {
    /// Will topic (a topic name; no wildcards).
    pub topic: ByteStr,
    /// Will payload; may be empty.
    pub payload: Bytes,
    /// Will QoS.
    pub qos: QoS,
    /// Will retain flag.
    pub retain: bool,
    /// Will properties (5.0).
    pub properties: WillProperties,
}

impl LastWill {
    /// A will that is not retained and has no properties.
    pub fn new(topic: impl Into<ByteStr>, payload: impl Into<Bytes>, qos: QoS) -> Self {
        LastWill {
            topic: topic.into(),
            payload: payload.into(),
            qos,
            retain: false,
            properties: WillProperties::default(),
        }
    }

    /// Sets the retain flag.
    pub fn with_retain(mut self, retain: bool) -> Self {
        self.retain = retain;
        self
    }

    /// Sets the will properties (5.0).
    pub fn with_properties(mut self, properties: WillProperties) -> Self {
        self.properties = properties;
        self
    }
}

/// Will properties (3.1.3.2).
#[derive(Debug, Clone, PartialEq, Default)]
#[allow(missing_docs)]
#[non_exhaustive]
pub struct WillProperties {
    pub will_delay_interval: Option<u32>,
    pub payload_format_indicator: Option<u8>,
    pub message_expiry_interval: Option<u32>,
    pub content_type: Option<ByteStr>,
    pub response_topic: Option<ByteStr>,
    pub correlation_data: Option<Bytes>,
    pub user_properties: UserProperties,
}

/// CONNACK (section 3.2).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ConnAck {
    /// Session Present flag.
    pub session_present: bool,
    /// Connect reason; mapped to a return code for 3.x.
    pub reason: ReasonCode,
    /// CONNACK properties (5.0).
    pub properties: ConnAckProperties,
}

impl ConnAck {
    /// A CONNACK with no properties.
    pub fn new(reason: ReasonCode, session_present: bool) -> Self {
        ConnAck {
            session_present,
            reason,
            properties: ConnAckProperties::default(),
        }
    }
}

/// CONNACK properties (3.2.2.3).
#[derive(Debug, Clone, PartialEq, Default)]
#[allow(missing_docs)]
#[non_exhaustive]
pub struct ConnAckProperties {
    pub session_expiry_interval: Option<u32>,
    pub receive_maximum: Option<NonZeroU16>,
    pub maximum_qos: Option<QoS>,
    pub retain_available: Option<bool>,
    pub maximum_packet_size: Option<NonZeroU32>,
    pub assigned_client_identifier: Option<ByteStr>,
    pub topic_alias_maximum: Option<u16>,
    pub reason_string: Option<ByteStr>,
    pub user_properties: UserProperties,
    pub wildcard_subscription_available: Option<bool>,
    pub subscription_identifiers_available: Option<bool>,
    pub shared_subscription_available: Option<bool>,
    pub server_keep_alive: Option<u16>,
    pub response_information: Option<ByteStr>,
    pub server_reference: Option<ByteStr>,
    pub authentication_method: Option<ByteStr>,
    pub authentication_data: Option<Bytes>,
}

/// PUBLISH (section 3.3).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Publish {
    /// DUP flag.
    pub dup: bool,
    /// QoS and packet identifier.
    pub qos_pid: QosPid,
    /// RETAIN flag.
    pub retain: bool,
    /// Topic name; empty when a 5.0 topic alias stands in for it.
    pub topic: ByteStr,
    /// Application payload.
    pub payload: Bytes,
    /// PUBLISH properties (5.0).
    pub properties: PublishProperties,
}

impl Publish {
    /// A QoS 0 PUBLISH without DUP, RETAIN or properties; set the rest with
    /// the `with_` methods or through the public fields.
    pub fn new(topic: impl Into<ByteStr>, payload: impl Into<Bytes>) -> Self {
        Publish {
            dup: false,
            qos_pid: QosPid::AtMostOnce,
            retain: false,
            topic: topic.into(),
            payload: payload.into(),
            properties: PublishProperties::default(),
        }
    }

    /// Sets the QoS and packet identifier.
    pub fn with_qos_pid(mut self, qos_pid: QosPid) -> Self {
        self.qos_pid = qos_pid;
        self
    }

    /// Sets the DUP flag.
    pub fn with_dup(mut self, dup: bool) -> Self {
        self.dup = dup;
        self
    }

    /// Sets the RETAIN flag.
    pub fn with_retain(mut self, retain: bool) -> Self {
        self.retain = retain;
        self
    }

    /// Sets the PUBLISH properties (5.0).
    pub fn with_properties(mut self, properties: PublishProperties) -> Self {
        self.properties = properties;
        self
    }
}

/// PUBLISH properties (3.3.2.3).
#[derive(Debug, Clone, PartialEq, Default)]
#[allow(missing_docs)]
#[non_exhaustive]
pub struct PublishProperties {
    pub payload_format_indicator: Option<u8>,
    pub message_expiry_interval: Option<u32>,
    pub topic_alias: Option<NonZeroU16>,
    pub response_topic: Option<ByteStr>,
    pub correlation_data: Option<Bytes>,
    pub user_properties: UserProperties,
    /// Zero or more; only the server sends them.
    pub subscription_identifiers: Vec<NonZeroU32>,
    pub content_type: Option<ByteStr>,
}

/// PUBACK, PUBREC, PUBREL and PUBCOMP share one shape (3.4-3.7).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct PubResp {
    /// Packet identifier of the flow.
    pub packet_id: PacketId,
    /// Reason code (5.0); `Success` for 3.x.
    pub reason: ReasonCode,
    /// Reason string and user properties (5.0).
    pub properties: AckProperties,
}

impl PubResp {
    /// A successful response with no properties.
    pub fn new(packet_id: PacketId) -> Self {
        PubResp {
            packet_id,
            reason: ReasonCode::Success,
            properties: AckProperties::default(),
        }
    }

    /// Sets the reason code.
    pub fn with_reason(mut self, reason: ReasonCode) -> Self {
        self.reason = reason;
        self
    }
}

/// The properties acknowledgements carry: a reason string and user properties.
#[derive(Debug, Clone, PartialEq, Default)]
#[allow(missing_docs)]
#[non_exhaustive]
pub struct AckProperties {
    pub reason_string: Option<ByteStr>,
    pub user_properties: UserProperties,
}

/// What to do with retained messages when a subscription is made (5.0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RetainHandling {
    /// 0: send retained messages at the time of the subscribe.
    #[default]
    SendAtSubscribe = 0,
    /// 1: send them only if the subscription did not exist.
    SendAtSubscribeIfNew = 1,
    /// 2: do not send them.
    DoNotSend = 2,
}

/// Subscription options byte (3.8.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[allow(missing_docs)]
#[non_exhaustive]
pub struct SubscriptionOptions {
    pub qos: QoS,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub retain_handling: RetainHandling,
}

impl SubscriptionOptions {
    /// Options with the given maximum QoS, and the other flags at their
    /// defaults (local messages delivered, retain flag cleared, retained
    /// messages sent at subscribe).
    pub fn new(qos: QoS) -> Self {
        SubscriptionOptions {
            qos,
            ..Default::default()
        }
    }

    /// Sets No Local (5.0).
    pub fn with_no_local(mut self, no_local: bool) -> Self {
        self.no_local = no_local;
        self
    }

    /// Sets Retain As Published (5.0).
    pub fn with_retain_as_published(mut self, retain_as_published: bool) -> Self {
        self.retain_as_published = retain_as_published;
        self
    }

    /// Sets Retain Handling (5.0).
    pub fn with_retain_handling(mut self, retain_handling: RetainHandling) -> Self {
        self.retain_handling = retain_handling;
        self
    }
}

/// SUBSCRIBE (section 3.8).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Subscribe {
    /// Packet identifier.
    pub packet_id: PacketId,
    /// At least one filter with its options ([MQTT-3.8.3-3]).
    pub filters: Vec<(ByteStr, SubscriptionOptions)>,
    /// Subscription identifier (5.0).
    pub subscription_identifier: Option<NonZeroU32>,
    /// User properties (5.0).
    pub user_properties: UserProperties,
}

impl Subscribe {
    /// A SUBSCRIBE for `filters`, with no subscription identifier or user
    /// properties. The encoder refuses an empty list ([MQTT-3.8.3-3]).
    pub fn new(packet_id: PacketId, filters: Vec<(ByteStr, SubscriptionOptions)>) -> Self {
        Subscribe {
            packet_id,
            filters,
            subscription_identifier: None,
            user_properties: UserProperties::new(),
        }
    }

    /// Sets the subscription identifier (5.0).
    pub fn with_subscription_identifier(mut self, id: NonZeroU32) -> Self {
        self.subscription_identifier = Some(id);
        self
    }
}

/// SUBACK (section 3.9).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct SubAck {
    /// Packet identifier of the SUBSCRIBE.
    pub packet_id: PacketId,
    /// One per filter: granted QoS (0x00-0x02) or a failure code.
    /// 3.x peers get 0x80 for any failure.
    pub reasons: Vec<ReasonCode>,
    /// Reason string and user properties (5.0).
    pub properties: AckProperties,
}

impl SubAck {
    /// A SUBACK with one reason per filter and no properties.
    pub fn new(packet_id: PacketId, reasons: Vec<ReasonCode>) -> Self {
        SubAck {
            packet_id,
            reasons,
            properties: AckProperties::default(),
        }
    }
}

/// UNSUBSCRIBE (section 3.10).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Unsubscribe {
    /// Packet identifier.
    pub packet_id: PacketId,
    /// At least one filter ([MQTT-3.10.3-2]).
    pub filters: Vec<ByteStr>,
    /// User properties (5.0).
    pub user_properties: UserProperties,
}

impl Unsubscribe {
    /// An UNSUBSCRIBE for `filters`, with no user properties.
    pub fn new(packet_id: PacketId, filters: Vec<ByteStr>) -> Self {
        Unsubscribe {
            packet_id,
            filters,
            user_properties: UserProperties::new(),
        }
    }
}

/// UNSUBACK (section 3.11).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct UnsubAck {
    /// Packet identifier of the UNSUBSCRIBE.
    pub packet_id: PacketId,
    /// One per filter (5.0); not encoded for 3.x.
    pub reasons: Vec<ReasonCode>,
    /// Reason string and user properties (5.0).
    pub properties: AckProperties,
}

impl UnsubAck {
    /// An UNSUBACK with one reason per filter (5.0) and no properties.
    pub fn new(packet_id: PacketId, reasons: Vec<ReasonCode>) -> Self {
        UnsubAck {
            packet_id,
            reasons,
            properties: AckProperties::default(),
        }
    }
}

/// DISCONNECT (section 3.14).
#[derive(Debug, Clone, PartialEq, Default)]
#[non_exhaustive]
pub struct Disconnect {
    /// Reason code (5.0); `Success` is normal disconnection.
    pub reason: ReasonCode,
    /// DISCONNECT properties (5.0).
    pub properties: DisconnectProperties,
}

impl Disconnect {
    /// A DISCONNECT with this reason and no properties.
    pub fn new(reason: ReasonCode) -> Self {
        Disconnect {
            reason,
            properties: DisconnectProperties::default(),
        }
    }

    /// Sets the DISCONNECT properties (5.0).
    pub fn with_properties(mut self, properties: DisconnectProperties) -> Self {
        self.properties = properties;
        self
    }
}

/// DISCONNECT properties (3.14.2.2).
#[derive(Debug, Clone, PartialEq, Default)]
#[allow(missing_docs)]
#[non_exhaustive]
pub struct DisconnectProperties {
    pub session_expiry_interval: Option<u32>,
    pub reason_string: Option<ByteStr>,
    pub user_properties: UserProperties,
    pub server_reference: Option<ByteStr>,
}

/// AUTH (section 3.15), 5.0 only.
#[derive(Debug, Clone, PartialEq, Default)]
#[non_exhaustive]
pub struct Auth {
    /// Success, Continue authentication or Re-authenticate.
    pub reason: ReasonCode,
    /// AUTH properties.
    pub properties: AuthProperties,
}

impl Auth {
    /// An AUTH with this reason and no properties.
    pub fn new(reason: ReasonCode) -> Self {
        Auth {
            reason,
            properties: AuthProperties::default(),
        }
    }

    /// Sets the AUTH properties.
    pub fn with_properties(mut self, properties: AuthProperties) -> Self {
        self.properties = properties;
        self
    }
}

/// AUTH properties (3.15.2.2).
#[derive(Debug, Clone, PartialEq, Default)]
#[allow(missing_docs)]
#[non_exhaustive]
pub struct AuthProperties {
    pub authentication_method: Option<ByteStr>,
    pub authentication_data: Option<Bytes>,
    pub reason_string: Option<ByteStr>,
    pub user_properties: UserProperties,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The constructors give what a literal with every other field at its
    /// zero value would, so code outside the crate builds the same packets.
    #[test]
    fn constructors_leave_the_rest_at_defaults() {
        let pid = PacketId::new(3).unwrap();
        let publish = Publish::new("a/b", Bytes::from_static(b"x"))
            .with_qos_pid(QosPid::AtLeastOnce(pid))
            .with_retain(true);
        assert_eq!(
            publish,
            Publish {
                dup: false,
                qos_pid: QosPid::AtLeastOnce(pid),
                retain: true,
                topic: "a/b".into(),
                payload: Bytes::from_static(b"x"),
                properties: PublishProperties::default(),
            }
        );
        let connect = Connect::new(ProtocolVersion::V5, "c").with_keep_alive(30);
        assert!(connect.clean_start && connect.will.is_none() && connect.username.is_none());
        assert_eq!((connect.keep_alive, connect.client_id.as_str()), (30, "c"));
        assert_eq!(
            SubscriptionOptions::new(QoS::ExactlyOnce),
            SubscriptionOptions {
                qos: QoS::ExactlyOnce,
                ..Default::default()
            }
        );
        assert_eq!(Disconnect::new(ReasonCode::Success), Disconnect::default());
        assert_eq!(
            PubResp::new(pid)
                .with_reason(ReasonCode::NoMatchingSubscribers)
                .reason,
            ReasonCode::NoMatchingSubscribers
        );
    }
}
