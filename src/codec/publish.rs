//! PUBLISH (section 3.3).

use super::reader::Reader;
use super::writer::{Properties, Sink};
use super::{
    ByteStr, DecodeError, ProtocolVersion, Publish, PublishProperties, QoS, QosPid, UserProperties,
};
use crate::topic::valid_name;
use bytes::Bytes;
use std::num::{NonZeroU16, NonZeroU32};

const DUP: u8 = 0x08;
const RETAIN: u8 = 0x01;

/// Checks a topic name ([MQTT-3.3.2-2], [MQTT-4.7.3-1]).
pub(crate) fn check_topic_name(topic: &str) -> Result<(), DecodeError> {
    if valid_name(topic) {
        Ok(())
    } else if topic.contains(['+', '#']) {
        Err(DecodeError::WildcardInTopicName)
    } else {
        Err(DecodeError::InvalidTopicName)
    }
}

/// Checks the PUBLISH fixed header flags: QoS 3 is malformed
/// ([MQTT-3.3.1-4]) and so is DUP on QoS 0 ([MQTT-3.3.1-2]).
pub(crate) fn check_flags(flags: u8) -> Result<QoS, DecodeError> {
    let qos = QoS::from_u8((flags >> 1) & 0b11).ok_or(DecodeError::InvalidQoS)?;
    if qos == QoS::AtMostOnce && flags & DUP != 0 {
        return Err(DecodeError::DupOnQoS0);
    }
    Ok(qos)
}

/// Decodes a PUBLISH body; `flags` are the low 4 bits of the fixed header.
/// `from_client`: the PUBLISH was sent by a client, which may not set what
/// only a server sends (a Subscription Identifier).
pub(crate) fn decode(
    r: &mut Reader,
    flags: u8,
    v: ProtocolVersion,
    from_client: bool,
) -> Result<Publish, DecodeError> {
    let qos = check_flags(flags)?;
    let topic = r.string()?;
    let qos_pid = match qos {
        QoS::AtMostOnce => QosPid::AtMostOnce,
        QoS::AtLeastOnce => QosPid::AtLeastOnce(r.packet_id()?),
        QoS::ExactlyOnce => QosPid::ExactlyOnce(r.packet_id()?),
    };
    let properties = if v.is_v5() {
        PublishProperties::decode(r)?
    } else {
        PublishProperties::default()
    };
    // An empty topic stands for the one a 5.0 topic alias maps to; without
    // an alias it is a Protocol Error there (3.3.2.3.4), and malformed in 3.x.
    if topic.is_empty() && v.is_v5() {
        if properties.topic_alias.is_none() {
            return Err(DecodeError::EmptyTopicWithoutAlias);
        }
    } else {
        check_topic_name(&topic)?;
    }
    if from_client && !properties.subscription_identifiers.is_empty() {
        return Err(DecodeError::SubscriptionIdentifierFromClient);
    }
    Ok(Publish {
        dup: flags & DUP != 0,
        qos_pid,
        retain: flags & RETAIN != 0,
        topic,
        payload: r.rest(),
        properties,
    })
}

/// An outbound PUBLISH, borrowed from wherever its parts live: a
/// [`Publish`], or a message the broker shares between its subscribers
/// (which then never needs a `Publish` of its own per delivery). Every
/// PUBLISH is encoded through this one description.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PublishView<'a> {
    pub dup: bool,
    pub qos_pid: QosPid,
    pub retain: bool,
    /// Empty when `properties.topic_alias` stands in for it.
    pub topic: &'a str,
    pub payload: &'a [u8],
    pub properties: PropertiesView<'a>,
}

/// PUBLISH properties, borrowed (see [`PublishView`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct PropertiesView<'a> {
    pub payload_format_indicator: Option<u8>,
    pub message_expiry_interval: Option<u32>,
    pub topic_alias: Option<NonZeroU16>,
    pub response_topic: Option<&'a ByteStr>,
    pub correlation_data: Option<&'a Bytes>,
    pub user_properties: &'a UserProperties,
    pub subscription_identifiers: &'a [NonZeroU32],
    pub content_type: Option<&'a ByteStr>,
}

impl Publish {
    pub(crate) fn view(&self) -> PublishView<'_> {
        PublishView {
            dup: self.dup,
            qos_pid: self.qos_pid,
            retain: self.retain,
            topic: &self.topic,
            payload: &self.payload,
            properties: self.properties.view(),
        }
    }
}

impl PublishProperties {
    pub(crate) fn view(&self) -> PropertiesView<'_> {
        PropertiesView {
            payload_format_indicator: self.payload_format_indicator,
            message_expiry_interval: self.message_expiry_interval,
            topic_alias: self.topic_alias,
            response_topic: self.response_topic.as_ref(),
            correlation_data: self.correlation_data.as_ref(),
            user_properties: &self.user_properties,
            subscription_identifiers: &self.subscription_identifiers,
            content_type: self.content_type.as_ref(),
        }
    }
}

impl PublishView<'_> {
    /// The fixed header's first byte.
    pub(crate) fn first_byte(&self) -> u8 {
        let mut b = 0x30 | ((self.qos_pid.qos() as u8) << 1);
        if self.dup {
            b |= DUP;
        }
        if self.retain {
            b |= RETAIN;
        }
        b
    }

    /// Describes the body to `s`.
    pub(crate) fn body<S: Sink>(&self, v: ProtocolVersion, s: &mut S) {
        s.string(self.topic);
        if let Some(pid) = self.qos_pid.packet_id() {
            s.u16(pid.get());
        }
        if v.is_v5() {
            s.properties(&self.properties);
        }
        s.raw(self.payload);
    }
}

impl Properties for PropertiesView<'_> {
    fn visit<S: Sink>(&self, s: &mut S) {
        use super::properties::*;
        s.prop_u8(PAYLOAD_FORMAT_INDICATOR, self.payload_format_indicator);
        s.prop_u32(MESSAGE_EXPIRY_INTERVAL, self.message_expiry_interval);
        s.prop_u16(TOPIC_ALIAS, self.topic_alias.map(NonZeroU16::get));
        s.prop_str(RESPONSE_TOPIC, self.response_topic);
        s.prop_bin(CORRELATION_DATA, self.correlation_data);
        s.user_properties(USER_PROPERTY, self.user_properties);
        for id in self.subscription_identifiers {
            s.prop_varint(SUBSCRIPTION_IDENTIFIER, id.get());
        }
        s.prop_str(CONTENT_TYPE, self.content_type);
    }
}
