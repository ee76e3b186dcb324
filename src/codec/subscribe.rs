//! SUBSCRIBE, SUBACK (sections 3.8, 3.9), UNSUBSCRIBE and UNSUBACK
//! (sections 3.10, 3.11).

use super::properties::{self, SubscribeProps, UserProps};
use super::reader::Reader;
use super::reason::{self, SUBACK_REASONS, UNSUBACK_REASONS, V3_SUBACK_CODES};
use super::writer::Sink;
use super::{
    AckProperties, DecodeError, ProtocolVersion, QoS, RetainHandling, SubAck, Subscribe,
    SubscriptionOptions, UnsubAck, Unsubscribe,
};
use crate::topic::valid_filter;

const NO_LOCAL: u8 = 0x04;
const RETAIN_AS_PUBLISHED: u8 = 0x08;
const RETAIN_HANDLING_SHIFT: u8 = 4;

fn filter(r: &mut Reader) -> Result<super::ByteStr, DecodeError> {
    let f = r.string()?;
    if !valid_filter(&f) {
        return Err(DecodeError::InvalidTopicFilter);
    }
    Ok(f)
}

/// Parses a subscription options byte (3.8.3.1).
fn options(b: u8, v: ProtocolVersion) -> Result<SubscriptionOptions, DecodeError> {
    // 3.x: only the QoS bits ([MQTT-3-8.3-4]); 5.0: bits 6 and 7 are
    // reserved ([MQTT-3.8.3-5]).
    let reserved = if v.is_v5() { 0xC0 } else { 0xFC };
    if b & reserved != 0 {
        return Err(DecodeError::InvalidSubscriptionOptions);
    }
    let qos = QoS::from_u8(b & 0b11).ok_or(DecodeError::InvalidSubscriptionOptions)?;
    let retain_handling = match (b >> RETAIN_HANDLING_SHIFT) & 0b11 {
        0 => RetainHandling::SendAtSubscribe,
        1 => RetainHandling::SendAtSubscribeIfNew,
        2 => RetainHandling::DoNotSend,
        _ => return Err(DecodeError::InvalidSubscriptionOptions),
    };
    Ok(SubscriptionOptions {
        qos,
        no_local: b & NO_LOCAL != 0,
        retain_as_published: b & RETAIN_AS_PUBLISHED != 0,
        retain_handling,
    })
}

fn options_byte(o: &SubscriptionOptions, v: ProtocolVersion) -> u8 {
    let mut b = o.qos as u8;
    if v.is_v5() {
        if o.no_local {
            b |= NO_LOCAL;
        }
        if o.retain_as_published {
            b |= RETAIN_AS_PUBLISHED;
        }
        b |= (o.retain_handling as u8) << RETAIN_HANDLING_SHIFT;
    }
    b
}

/// Decodes a SUBSCRIBE body.
pub(crate) fn decode_subscribe(
    r: &mut Reader,
    v: ProtocolVersion,
) -> Result<Subscribe, DecodeError> {
    let packet_id = r.packet_id()?;
    let (subscription_identifier, user_properties) = if v.is_v5() {
        properties::decode_subscribe(r)?
    } else {
        (None, Vec::new())
    };
    let mut filters = Vec::new();
    while !r.is_empty() {
        let f = filter(r)?;
        let o = options(r.u8()?, v)?;
        // No Local on a shared subscription is a protocol error [MQTT-3.8.3-4].
        if o.no_local && f.starts_with("$share/") {
            return Err(DecodeError::NoLocalOnSharedSubscription);
        }
        filters.push((f, o));
    }
    if filters.is_empty() {
        return Err(DecodeError::NoTopicFilter);
    }
    Ok(Subscribe {
        packet_id,
        filters,
        subscription_identifier,
        user_properties,
    })
}

/// Encodes a SUBSCRIBE body.
pub(crate) fn encode_subscribe<S: Sink>(p: &Subscribe, v: ProtocolVersion, s: &mut S) {
    s.u16(p.packet_id.get());
    if v.is_v5() {
        s.properties(&SubscribeProps {
            subscription_identifier: p.subscription_identifier,
            user_properties: &p.user_properties,
        });
    }
    for (f, o) in &p.filters {
        s.string(f);
        s.u8(options_byte(o, v));
    }
}

/// Decodes a SUBACK body.
pub(crate) fn decode_suback(r: &mut Reader, v: ProtocolVersion) -> Result<SubAck, DecodeError> {
    let packet_id = r.packet_id()?;
    let (properties, allowed) = if v.is_v5() {
        (AckProperties::decode(r)?, SUBACK_REASONS)
    } else {
        (AckProperties::default(), V3_SUBACK_CODES)
    };
    let mut reasons = Vec::with_capacity(r.remaining());
    while !r.is_empty() {
        reasons.push(reason::parse(r.u8()?, allowed)?);
    }
    Ok(SubAck {
        packet_id,
        reasons,
        properties,
    })
}

/// Encodes a SUBACK body; 3.x peers get 0x80 for every failure.
pub(crate) fn encode_suback<S: Sink>(p: &SubAck, v: ProtocolVersion, s: &mut S) {
    s.u16(p.packet_id.get());
    if v.is_v5() {
        s.properties(&p.properties);
    }
    for rc in &p.reasons {
        let code = rc.code();
        s.u8(if !v.is_v5() && code >= 0x80 {
            0x80
        } else {
            code
        });
    }
}

/// Decodes an UNSUBSCRIBE body.
pub(crate) fn decode_unsubscribe(
    r: &mut Reader,
    v: ProtocolVersion,
) -> Result<Unsubscribe, DecodeError> {
    let packet_id = r.packet_id()?;
    let user_properties = if v.is_v5() {
        properties::decode_unsubscribe(r)?
    } else {
        Vec::new()
    };
    let mut filters = Vec::new();
    while !r.is_empty() {
        filters.push(filter(r)?);
    }
    if filters.is_empty() {
        // [MQTT-3.10.3-2]
        return Err(DecodeError::NoTopicFilter);
    }
    Ok(Unsubscribe {
        packet_id,
        filters,
        user_properties,
    })
}

/// Encodes an UNSUBSCRIBE body.
pub(crate) fn encode_unsubscribe<S: Sink>(p: &Unsubscribe, v: ProtocolVersion, s: &mut S) {
    s.u16(p.packet_id.get());
    if v.is_v5() {
        s.properties(&UserProps(&p.user_properties));
    }
    for f in &p.filters {
        s.string(f);
    }
}

/// Decodes an UNSUBACK body (3.x: the packet identifier only).
pub(crate) fn decode_unsuback(r: &mut Reader, v: ProtocolVersion) -> Result<UnsubAck, DecodeError> {
    let packet_id = r.packet_id()?;
    if !v.is_v5() {
        r.finish()?;
        return Ok(UnsubAck {
            packet_id,
            reasons: Vec::new(),
            properties: AckProperties::default(),
        });
    }
    let properties = AckProperties::decode(r)?;
    let mut reasons = Vec::with_capacity(r.remaining());
    while !r.is_empty() {
        reasons.push(reason::parse(r.u8()?, UNSUBACK_REASONS)?);
    }
    Ok(UnsubAck {
        packet_id,
        reasons,
        properties,
    })
}

/// Encodes an UNSUBACK body; 3.x has no payload.
pub(crate) fn encode_unsuback<S: Sink>(p: &UnsubAck, v: ProtocolVersion, s: &mut S) {
    s.u16(p.packet_id.get());
    if v.is_v5() {
        s.properties(&p.properties);
        for rc in &p.reasons {
            s.u8(rc.code());
        }
    }
}
