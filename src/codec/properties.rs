//! MQTT 5.0 properties (section 2.2.2): identifiers, which packet may carry
//! which property, decoding with duplicate and value checks, and encoding.

use super::reader::Reader;
use super::writer::{Properties, Sink};
use super::{
    AckProperties, AuthProperties, ByteStr, ConnAckProperties, ConnectProperties, DecodeError,
    DisconnectProperties, PublishProperties, QoS, WillProperties,
};
use bytes::Bytes;
use std::num::{NonZeroU16, NonZeroU32};

// Property identifiers (table 2.2.2.2).
pub(crate) const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
pub(crate) const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
pub(crate) const CONTENT_TYPE: u8 = 0x03;
pub(crate) const RESPONSE_TOPIC: u8 = 0x08;
pub(crate) const CORRELATION_DATA: u8 = 0x09;
pub(crate) const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
pub(crate) const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
pub(crate) const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
pub(crate) const SERVER_KEEP_ALIVE: u8 = 0x13;
pub(crate) const AUTHENTICATION_METHOD: u8 = 0x15;
pub(crate) const AUTHENTICATION_DATA: u8 = 0x16;
pub(crate) const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
pub(crate) const WILL_DELAY_INTERVAL: u8 = 0x18;
pub(crate) const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
pub(crate) const RESPONSE_INFORMATION: u8 = 0x1A;
pub(crate) const SERVER_REFERENCE: u8 = 0x1C;
pub(crate) const REASON_STRING: u8 = 0x1F;
pub(crate) const RECEIVE_MAXIMUM: u8 = 0x21;
pub(crate) const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
pub(crate) const TOPIC_ALIAS: u8 = 0x23;
pub(crate) const MAXIMUM_QOS: u8 = 0x24;
pub(crate) const RETAIN_AVAILABLE: u8 = 0x25;
pub(crate) const USER_PROPERTY: u8 = 0x26;
pub(crate) const MAXIMUM_PACKET_SIZE: u8 = 0x27;
pub(crate) const WILDCARD_SUBSCRIPTION_AVAILABLE: u8 = 0x28;
pub(crate) const SUBSCRIPTION_IDENTIFIER_AVAILABLE: u8 = 0x29;
pub(crate) const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2A;

const fn bits(ids: &[u8]) -> u64 {
    let mut m = 0u64;
    let mut i = 0;
    while i < ids.len() {
        m |= 1 << ids[i];
        i += 1;
    }
    m
}

/// Which properties a packet may carry, and which of those may repeat.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Allowed {
    once: u64,
    repeat: u64,
}

impl Allowed {
    const fn new(once: &[u8], repeat: &[u8]) -> Self {
        Allowed {
            once: bits(once),
            repeat: bits(repeat),
        }
    }
}

pub(crate) const CONNECT: Allowed = Allowed::new(
    &[
        SESSION_EXPIRY_INTERVAL,
        RECEIVE_MAXIMUM,
        MAXIMUM_PACKET_SIZE,
        TOPIC_ALIAS_MAXIMUM,
        REQUEST_RESPONSE_INFORMATION,
        REQUEST_PROBLEM_INFORMATION,
        AUTHENTICATION_METHOD,
        AUTHENTICATION_DATA,
    ],
    &[USER_PROPERTY],
);
pub(crate) const WILL: Allowed = Allowed::new(
    &[
        WILL_DELAY_INTERVAL,
        PAYLOAD_FORMAT_INDICATOR,
        MESSAGE_EXPIRY_INTERVAL,
        CONTENT_TYPE,
        RESPONSE_TOPIC,
        CORRELATION_DATA,
    ],
    &[USER_PROPERTY],
);
pub(crate) const CONNACK: Allowed = Allowed::new(
    &[
        SESSION_EXPIRY_INTERVAL,
        RECEIVE_MAXIMUM,
        MAXIMUM_QOS,
        RETAIN_AVAILABLE,
        MAXIMUM_PACKET_SIZE,
        ASSIGNED_CLIENT_IDENTIFIER,
        TOPIC_ALIAS_MAXIMUM,
        REASON_STRING,
        WILDCARD_SUBSCRIPTION_AVAILABLE,
        SUBSCRIPTION_IDENTIFIER_AVAILABLE,
        SHARED_SUBSCRIPTION_AVAILABLE,
        SERVER_KEEP_ALIVE,
        RESPONSE_INFORMATION,
        SERVER_REFERENCE,
        AUTHENTICATION_METHOD,
        AUTHENTICATION_DATA,
    ],
    &[USER_PROPERTY],
);
pub(crate) const PUBLISH: Allowed = Allowed::new(
    &[
        PAYLOAD_FORMAT_INDICATOR,
        MESSAGE_EXPIRY_INTERVAL,
        TOPIC_ALIAS,
        RESPONSE_TOPIC,
        CORRELATION_DATA,
        CONTENT_TYPE,
    ],
    &[USER_PROPERTY, SUBSCRIPTION_IDENTIFIER],
);
/// PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK and UNSUBACK.
pub(crate) const ACK: Allowed = Allowed::new(&[REASON_STRING], &[USER_PROPERTY]);
pub(crate) const SUBSCRIBE: Allowed = Allowed::new(&[SUBSCRIPTION_IDENTIFIER], &[USER_PROPERTY]);
pub(crate) const UNSUBSCRIBE: Allowed = Allowed::new(&[], &[USER_PROPERTY]);
pub(crate) const DISCONNECT: Allowed = Allowed::new(
    &[SESSION_EXPIRY_INTERVAL, REASON_STRING, SERVER_REFERENCE],
    &[USER_PROPERTY],
);
pub(crate) const AUTH: Allowed = Allowed::new(
    &[AUTHENTICATION_METHOD, AUTHENTICATION_DATA, REASON_STRING],
    &[USER_PROPERTY],
);

/// One decoded property value, typed by its identifier (section 2.2.2.2).
#[derive(Debug)]
pub(crate) enum Value {
    Byte(u8),
    U16(u16),
    U32(u32),
    VarInt(u32),
    Str(ByteStr),
    Bin(Bytes),
    Pair(ByteStr, ByteStr),
}

fn read_value(r: &mut Reader, id: u8) -> Result<Value, DecodeError> {
    let v = match id {
        PAYLOAD_FORMAT_INDICATOR
        | REQUEST_PROBLEM_INFORMATION
        | REQUEST_RESPONSE_INFORMATION
        | MAXIMUM_QOS
        | RETAIN_AVAILABLE
        | WILDCARD_SUBSCRIPTION_AVAILABLE
        | SUBSCRIPTION_IDENTIFIER_AVAILABLE
        | SHARED_SUBSCRIPTION_AVAILABLE => {
            // All of these are 0 or 1 (for Maximum QoS: QoS 0 or 1).
            let b = r.u8()?;
            if b > 1 {
                return Err(DecodeError::InvalidPropertyValue(id));
            }
            Value::Byte(b)
        }
        SERVER_KEEP_ALIVE | TOPIC_ALIAS_MAXIMUM => Value::U16(r.u16()?),
        RECEIVE_MAXIMUM | TOPIC_ALIAS => {
            // Zero is a protocol error for both (3.1.2.11.3, 3.3.2.3.4).
            let v = r.u16()?;
            if v == 0 {
                return Err(DecodeError::InvalidPropertyValue(id));
            }
            Value::U16(v)
        }
        MESSAGE_EXPIRY_INTERVAL | SESSION_EXPIRY_INTERVAL | WILL_DELAY_INTERVAL => {
            Value::U32(r.u32()?)
        }
        MAXIMUM_PACKET_SIZE => {
            let v = r.u32()?;
            if v == 0 {
                return Err(DecodeError::InvalidPropertyValue(id));
            }
            Value::U32(v)
        }
        SUBSCRIPTION_IDENTIFIER => {
            let v = r.varint()?;
            if v == 0 {
                return Err(DecodeError::InvalidPropertyValue(id));
            }
            Value::VarInt(v)
        }
        RESPONSE_TOPIC => {
            let topic = r.string()?;
            if topic.contains(['+', '#']) {
                return Err(DecodeError::WildcardInResponseTopic);
            }
            Value::Str(topic)
        }
        CONTENT_TYPE
        | ASSIGNED_CLIENT_IDENTIFIER
        | AUTHENTICATION_METHOD
        | RESPONSE_INFORMATION
        | SERVER_REFERENCE
        | REASON_STRING => Value::Str(r.string()?),
        CORRELATION_DATA | AUTHENTICATION_DATA => Value::Bin(r.binary()?),
        USER_PROPERTY => Value::Pair(r.string()?, r.string()?),
        _ => return Err(DecodeError::InvalidProperty(id)),
    };
    Ok(v)
}

/// Reads a property block (length, then properties) and hands each property
/// to `f`. Rejects identifiers the packet may not carry and duplicates of
/// once-only properties ([MQTT-2.2.2-2]).
pub(crate) fn read(
    r: &mut Reader,
    allowed: Allowed,
    mut f: impl FnMut(u8, Value) -> Result<(), DecodeError>,
) -> Result<(), DecodeError> {
    let len = r.varint()?;
    let mut p = r.sub(usize::try_from(len).map_err(|_| DecodeError::LengthMismatch)?)?;
    let mut seen = 0u64;
    while !p.is_empty() {
        // Identifiers are variable byte integers, but every defined one is
        // below 0x80, so a multi-byte identifier is unknown on its first byte.
        let id = p.u8()?;
        let bit = if id < 64 { 1u64 << id } else { 0 };
        if bit == 0 || (allowed.once | allowed.repeat) & bit == 0 {
            return Err(DecodeError::InvalidProperty(id));
        }
        if seen & bit != 0 && allowed.repeat & bit == 0 {
            return Err(DecodeError::DuplicateProperty(id));
        }
        seen |= bit;
        let v = read_value(&mut p, id)?;
        f(id, v)?;
    }
    Ok(())
}

fn nz16(id: u8, v: u16) -> Result<NonZeroU16, DecodeError> {
    NonZeroU16::new(v).ok_or(DecodeError::InvalidPropertyValue(id))
}

fn nz32(id: u8, v: u32) -> Result<NonZeroU32, DecodeError> {
    NonZeroU32::new(v).ok_or(DecodeError::InvalidPropertyValue(id))
}

/// The mask in [`read`] guarantees only allowed identifiers reach the
/// per-packet match, with the value type [`read_value`] gives them; this is
/// the fallback arm for the impossible rest.
fn unexpected(id: u8) -> Result<(), DecodeError> {
    Err(DecodeError::InvalidProperty(id))
}

/// Authentication Data needs an Authentication Method (5.0 sections
/// 3.1.2.11.10, 3.2.2.3.18, 3.15.2.2.3).
fn check_authentication(method: &Option<ByteStr>, data: &Option<Bytes>) -> Result<(), DecodeError> {
    if data.is_some() && method.is_none() {
        return Err(DecodeError::AuthenticationDataWithoutMethod);
    }
    Ok(())
}

impl ConnectProperties {
    pub(crate) fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        let mut p = Self::default();
        read(r, CONNECT, |id, v| {
            match (id, v) {
                (SESSION_EXPIRY_INTERVAL, Value::U32(x)) => p.session_expiry_interval = Some(x),
                (RECEIVE_MAXIMUM, Value::U16(x)) => p.receive_maximum = Some(nz16(id, x)?),
                (MAXIMUM_PACKET_SIZE, Value::U32(x)) => p.maximum_packet_size = Some(nz32(id, x)?),
                (TOPIC_ALIAS_MAXIMUM, Value::U16(x)) => p.topic_alias_maximum = Some(x),
                (REQUEST_RESPONSE_INFORMATION, Value::Byte(x)) => {
                    p.request_response_information = Some(x == 1)
                }
                (REQUEST_PROBLEM_INFORMATION, Value::Byte(x)) => {
                    p.request_problem_information = Some(x == 1)
                }
                (AUTHENTICATION_METHOD, Value::Str(x)) => p.authentication_method = Some(x),
                (AUTHENTICATION_DATA, Value::Bin(x)) => p.authentication_data = Some(x),
                (USER_PROPERTY, Value::Pair(k, x)) => p.user_properties.push((k, x)),
                (id, _) => return unexpected(id),
            }
            Ok(())
        })?;
        check_authentication(&p.authentication_method, &p.authentication_data)?;
        Ok(p)
    }
}

impl Properties for ConnectProperties {
    fn visit<S: Sink>(&self, s: &mut S) {
        s.prop_u32(SESSION_EXPIRY_INTERVAL, self.session_expiry_interval);
        s.prop_u16(RECEIVE_MAXIMUM, self.receive_maximum.map(NonZeroU16::get));
        s.prop_u32(
            MAXIMUM_PACKET_SIZE,
            self.maximum_packet_size.map(NonZeroU32::get),
        );
        s.prop_u16(TOPIC_ALIAS_MAXIMUM, self.topic_alias_maximum);
        s.prop_bool(
            REQUEST_RESPONSE_INFORMATION,
            self.request_response_information,
        );
        s.prop_bool(
            REQUEST_PROBLEM_INFORMATION,
            self.request_problem_information,
        );
        s.prop_str(AUTHENTICATION_METHOD, self.authentication_method.as_ref());
        s.prop_bin(AUTHENTICATION_DATA, self.authentication_data.as_ref());
        s.user_properties(USER_PROPERTY, &self.user_properties);
    }
}

impl WillProperties {
    pub(crate) fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        let mut p = Self::default();
        read(r, WILL, |id, v| {
            match (id, v) {
                (WILL_DELAY_INTERVAL, Value::U32(x)) => p.will_delay_interval = Some(x),
                (PAYLOAD_FORMAT_INDICATOR, Value::Byte(x)) => p.payload_format_indicator = Some(x),
                (MESSAGE_EXPIRY_INTERVAL, Value::U32(x)) => p.message_expiry_interval = Some(x),
                (CONTENT_TYPE, Value::Str(x)) => p.content_type = Some(x),
                (RESPONSE_TOPIC, Value::Str(x)) => p.response_topic = Some(x),
                (CORRELATION_DATA, Value::Bin(x)) => p.correlation_data = Some(x),
                (USER_PROPERTY, Value::Pair(k, x)) => p.user_properties.push((k, x)),
                (id, _) => return unexpected(id),
            }
            Ok(())
        })?;
        Ok(p)
    }
}

impl Properties for WillProperties {
    fn visit<S: Sink>(&self, s: &mut S) {
        s.prop_u32(WILL_DELAY_INTERVAL, self.will_delay_interval);
        s.prop_u8(PAYLOAD_FORMAT_INDICATOR, self.payload_format_indicator);
        s.prop_u32(MESSAGE_EXPIRY_INTERVAL, self.message_expiry_interval);
        s.prop_str(CONTENT_TYPE, self.content_type.as_ref());
        s.prop_str(RESPONSE_TOPIC, self.response_topic.as_ref());
        s.prop_bin(CORRELATION_DATA, self.correlation_data.as_ref());
        s.user_properties(USER_PROPERTY, &self.user_properties);
    }
}

impl ConnAckProperties {
    pub(crate) fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        let mut p = Self::default();
        read(r, CONNACK, |id, v| {
            match (id, v) {
                (SESSION_EXPIRY_INTERVAL, Value::U32(x)) => p.session_expiry_interval = Some(x),
                (RECEIVE_MAXIMUM, Value::U16(x)) => p.receive_maximum = Some(nz16(id, x)?),
                (MAXIMUM_QOS, Value::Byte(x)) => {
                    p.maximum_qos =
                        Some(QoS::from_u8(x).ok_or(DecodeError::InvalidPropertyValue(id))?)
                }
                (RETAIN_AVAILABLE, Value::Byte(x)) => p.retain_available = Some(x == 1),
                (MAXIMUM_PACKET_SIZE, Value::U32(x)) => p.maximum_packet_size = Some(nz32(id, x)?),
                (ASSIGNED_CLIENT_IDENTIFIER, Value::Str(x)) => {
                    p.assigned_client_identifier = Some(x)
                }
                (TOPIC_ALIAS_MAXIMUM, Value::U16(x)) => p.topic_alias_maximum = Some(x),
                (REASON_STRING, Value::Str(x)) => p.reason_string = Some(x),
                (USER_PROPERTY, Value::Pair(k, x)) => p.user_properties.push((k, x)),
                (WILDCARD_SUBSCRIPTION_AVAILABLE, Value::Byte(x)) => {
                    p.wildcard_subscription_available = Some(x == 1)
                }
                (SUBSCRIPTION_IDENTIFIER_AVAILABLE, Value::Byte(x)) => {
                    p.subscription_identifiers_available = Some(x == 1)
                }
                (SHARED_SUBSCRIPTION_AVAILABLE, Value::Byte(x)) => {
                    p.shared_subscription_available = Some(x == 1)
                }
                (SERVER_KEEP_ALIVE, Value::U16(x)) => p.server_keep_alive = Some(x),
                (RESPONSE_INFORMATION, Value::Str(x)) => p.response_information = Some(x),
                (SERVER_REFERENCE, Value::Str(x)) => p.server_reference = Some(x),
                (AUTHENTICATION_METHOD, Value::Str(x)) => p.authentication_method = Some(x),
                (AUTHENTICATION_DATA, Value::Bin(x)) => p.authentication_data = Some(x),
                (id, _) => return unexpected(id),
            }
            Ok(())
        })?;
        check_authentication(&p.authentication_method, &p.authentication_data)?;
        Ok(p)
    }
}

impl Properties for ConnAckProperties {
    fn visit<S: Sink>(&self, s: &mut S) {
        s.prop_u32(SESSION_EXPIRY_INTERVAL, self.session_expiry_interval);
        s.prop_u16(RECEIVE_MAXIMUM, self.receive_maximum.map(NonZeroU16::get));
        s.prop_u8(MAXIMUM_QOS, self.maximum_qos.map(|q| q as u8));
        s.prop_bool(RETAIN_AVAILABLE, self.retain_available);
        s.prop_u32(
            MAXIMUM_PACKET_SIZE,
            self.maximum_packet_size.map(NonZeroU32::get),
        );
        s.prop_str(
            ASSIGNED_CLIENT_IDENTIFIER,
            self.assigned_client_identifier.as_ref(),
        );
        s.prop_u16(TOPIC_ALIAS_MAXIMUM, self.topic_alias_maximum);
        s.prop_str(REASON_STRING, self.reason_string.as_ref());
        s.user_properties(USER_PROPERTY, &self.user_properties);
        s.prop_bool(
            WILDCARD_SUBSCRIPTION_AVAILABLE,
            self.wildcard_subscription_available,
        );
        s.prop_bool(
            SUBSCRIPTION_IDENTIFIER_AVAILABLE,
            self.subscription_identifiers_available,
        );
        s.prop_bool(
            SHARED_SUBSCRIPTION_AVAILABLE,
            self.shared_subscription_available,
        );
        s.prop_u16(SERVER_KEEP_ALIVE, self.server_keep_alive);
        s.prop_str(RESPONSE_INFORMATION, self.response_information.as_ref());
        s.prop_str(SERVER_REFERENCE, self.server_reference.as_ref());
        s.prop_str(AUTHENTICATION_METHOD, self.authentication_method.as_ref());
        s.prop_bin(AUTHENTICATION_DATA, self.authentication_data.as_ref());
    }
}

impl PublishProperties {
    pub(crate) fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        let mut p = Self::default();
        read(r, PUBLISH, |id, v| {
            match (id, v) {
                (PAYLOAD_FORMAT_INDICATOR, Value::Byte(x)) => p.payload_format_indicator = Some(x),
                (MESSAGE_EXPIRY_INTERVAL, Value::U32(x)) => p.message_expiry_interval = Some(x),
                (TOPIC_ALIAS, Value::U16(x)) => p.topic_alias = Some(nz16(id, x)?),
                (RESPONSE_TOPIC, Value::Str(x)) => p.response_topic = Some(x),
                (CORRELATION_DATA, Value::Bin(x)) => p.correlation_data = Some(x),
                (USER_PROPERTY, Value::Pair(k, x)) => p.user_properties.push((k, x)),
                (SUBSCRIPTION_IDENTIFIER, Value::VarInt(x)) => {
                    p.subscription_identifiers.push(nz32(id, x)?)
                }
                (CONTENT_TYPE, Value::Str(x)) => p.content_type = Some(x),
                (id, _) => return unexpected(id),
            }
            Ok(())
        })?;
        Ok(p)
    }
}

impl AckProperties {
    pub(crate) fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        let mut p = Self::default();
        read(r, ACK, |id, v| {
            match (id, v) {
                (REASON_STRING, Value::Str(x)) => p.reason_string = Some(x),
                (USER_PROPERTY, Value::Pair(k, x)) => p.user_properties.push((k, x)),
                (id, _) => return unexpected(id),
            }
            Ok(())
        })?;
        Ok(p)
    }

    /// True when there is nothing to encode (the short packet forms apply).
    pub fn is_empty(&self) -> bool {
        self.reason_string.is_none() && self.user_properties.is_empty()
    }
}

impl Properties for AckProperties {
    fn visit<S: Sink>(&self, s: &mut S) {
        s.prop_str(REASON_STRING, self.reason_string.as_ref());
        s.user_properties(USER_PROPERTY, &self.user_properties);
    }
}

impl DisconnectProperties {
    pub(crate) fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        let mut p = Self::default();
        read(r, DISCONNECT, |id, v| {
            match (id, v) {
                (SESSION_EXPIRY_INTERVAL, Value::U32(x)) => p.session_expiry_interval = Some(x),
                (REASON_STRING, Value::Str(x)) => p.reason_string = Some(x),
                (USER_PROPERTY, Value::Pair(k, x)) => p.user_properties.push((k, x)),
                (SERVER_REFERENCE, Value::Str(x)) => p.server_reference = Some(x),
                (id, _) => return unexpected(id),
            }
            Ok(())
        })?;
        Ok(p)
    }

    /// True when there is nothing to encode (the short packet forms apply).
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

impl Properties for DisconnectProperties {
    fn visit<S: Sink>(&self, s: &mut S) {
        s.prop_u32(SESSION_EXPIRY_INTERVAL, self.session_expiry_interval);
        s.prop_str(REASON_STRING, self.reason_string.as_ref());
        s.user_properties(USER_PROPERTY, &self.user_properties);
        s.prop_str(SERVER_REFERENCE, self.server_reference.as_ref());
    }
}

impl AuthProperties {
    pub(crate) fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        let mut p = Self::default();
        read(r, AUTH, |id, v| {
            match (id, v) {
                (AUTHENTICATION_METHOD, Value::Str(x)) => p.authentication_method = Some(x),
                (AUTHENTICATION_DATA, Value::Bin(x)) => p.authentication_data = Some(x),
                (REASON_STRING, Value::Str(x)) => p.reason_string = Some(x),
                (USER_PROPERTY, Value::Pair(k, x)) => p.user_properties.push((k, x)),
                (id, _) => return unexpected(id),
            }
            Ok(())
        })?;
        check_authentication(&p.authentication_method, &p.authentication_data)?;
        Ok(p)
    }

    /// True when there is nothing to encode (the short packet forms apply).
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

impl Properties for AuthProperties {
    fn visit<S: Sink>(&self, s: &mut S) {
        s.prop_str(AUTHENTICATION_METHOD, self.authentication_method.as_ref());
        s.prop_bin(AUTHENTICATION_DATA, self.authentication_data.as_ref());
        s.prop_str(REASON_STRING, self.reason_string.as_ref());
        s.user_properties(USER_PROPERTY, &self.user_properties);
    }
}

/// SUBSCRIBE properties: the subscription identifier and user properties.
pub(crate) struct SubscribeProps<'a> {
    pub(crate) subscription_identifier: Option<NonZeroU32>,
    pub(crate) user_properties: &'a super::UserProperties,
}

impl Properties for SubscribeProps<'_> {
    fn visit<S: Sink>(&self, s: &mut S) {
        if let Some(id) = self.subscription_identifier {
            s.prop_varint(SUBSCRIPTION_IDENTIFIER, id.get());
        }
        s.user_properties(USER_PROPERTY, self.user_properties);
    }
}

/// UNSUBSCRIBE properties: user properties only.
pub(crate) struct UserProps<'a>(pub(crate) &'a super::UserProperties);

impl Properties for UserProps<'_> {
    fn visit<S: Sink>(&self, s: &mut S) {
        s.user_properties(USER_PROPERTY, self.0);
    }
}

/// Decodes SUBSCRIBE properties.
pub(crate) fn decode_subscribe(
    r: &mut Reader,
) -> Result<(Option<NonZeroU32>, super::UserProperties), DecodeError> {
    let mut sid = None;
    let mut user = Vec::new();
    read(r, SUBSCRIBE, |id, v| {
        match (id, v) {
            (SUBSCRIPTION_IDENTIFIER, Value::VarInt(x)) => sid = Some(nz32(id, x)?),
            (USER_PROPERTY, Value::Pair(k, x)) => user.push((k, x)),
            (id, _) => return unexpected(id),
        }
        Ok(())
    })?;
    Ok((sid, user))
}

/// Decodes UNSUBSCRIBE properties.
pub(crate) fn decode_unsubscribe(r: &mut Reader) -> Result<super::UserProperties, DecodeError> {
    let mut user = Vec::new();
    read(r, UNSUBSCRIBE, |id, v| {
        match (id, v) {
            (USER_PROPERTY, Value::Pair(k, x)) => user.push((k, x)),
            (id, _) => return unexpected(id),
        }
        Ok(())
    })?;
    Ok(user)
}
