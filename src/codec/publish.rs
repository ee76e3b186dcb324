//! PUBLISH (section 3.3).

use super::reader::Reader;
use super::writer::Sink;
use super::{DecodeError, ProtocolVersion, Publish, PublishProperties, QoS, QosPid};
use crate::topic::valid_name;

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
pub(crate) fn decode(
    r: &mut Reader,
    flags: u8,
    v: ProtocolVersion,
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
    // An empty topic stands for the one a 5.0 topic alias maps to (3.3.2.3.4).
    if !(topic.is_empty() && properties.topic_alias.is_some()) {
        check_topic_name(&topic)?;
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

/// The fixed header's first byte.
pub(crate) fn first_byte(p: &Publish) -> u8 {
    let mut b = 0x30 | ((p.qos_pid.qos() as u8) << 1);
    if p.dup {
        b |= DUP;
    }
    if p.retain {
        b |= RETAIN;
    }
    b
}

/// Encodes a PUBLISH body.
pub(crate) fn encode<S: Sink>(p: &Publish, v: ProtocolVersion, s: &mut S) {
    s.string(&p.topic);
    if let Some(pid) = p.qos_pid.packet_id() {
        s.u16(pid.get());
    }
    if v.is_v5() {
        s.properties(&p.properties);
    }
    s.raw(&p.payload);
}
