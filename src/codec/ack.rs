//! PUBACK, PUBREC, PUBREL and PUBCOMP (sections 3.4-3.7): a packet
//! identifier and, in 5.0, an optional reason code and properties.

use super::reader::Reader;
use super::writer::Sink;
use super::{AckProperties, DecodeError, ProtocolVersion, PubResp, ReasonCode};

/// Decodes a PUBACK-shaped body; `allowed` lists the reason codes of the
/// packet type.
pub(crate) fn decode(
    r: &mut Reader,
    v: ProtocolVersion,
    allowed: &[u8],
) -> Result<PubResp, DecodeError> {
    let packet_id = r.packet_id()?;
    if !v.is_v5() {
        r.finish()?;
        return Ok(PubResp::new(packet_id));
    }
    // Remaining length 2: Success, no properties; 3: no property length
    // (3.4.2.1, 3.4.2.2.1).
    let reason = if r.is_empty() {
        ReasonCode::Success
    } else {
        super::reason::parse(r.u8()?, allowed)?
    };
    let properties = if r.is_empty() {
        AckProperties::default()
    } else {
        AckProperties::decode(r)?
    };
    r.finish()?;
    Ok(PubResp {
        packet_id,
        reason,
        properties,
    })
}

/// Encodes a PUBACK-shaped body, in the shortest form that says it all.
pub(crate) fn encode<S: Sink>(p: &PubResp, v: ProtocolVersion, s: &mut S) {
    s.u16(p.packet_id.get());
    if !v.is_v5() {
        return;
    }
    let props = !p.properties.is_empty();
    if p.reason != ReasonCode::Success || props {
        s.u8(p.reason.code());
    }
    if props {
        s.properties(&p.properties);
    }
}
