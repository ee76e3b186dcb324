//! DISCONNECT (section 3.14) and AUTH (section 3.15). Both are a reason
//! code and properties in 5.0, with short forms when those are defaults.

use super::reader::Reader;
use super::reason::{self, AUTH_REASONS, DISCONNECT_REASONS};
use super::writer::{Properties, Sink};
use super::{
    Auth, AuthProperties, DecodeError, Disconnect, DisconnectProperties, ProtocolVersion,
    ReasonCode,
};

/// Decodes a DISCONNECT body (3.x: empty).
pub(crate) fn decode_disconnect(
    r: &mut Reader,
    v: ProtocolVersion,
) -> Result<Disconnect, DecodeError> {
    if !v.is_v5() {
        r.finish()?;
        return Ok(Disconnect::default());
    }
    // Remaining length 0: normal disconnection; 1: no property length
    // (3.14.2.1, 3.14.2.2.1).
    let reason = if r.is_empty() {
        ReasonCode::Success
    } else {
        reason::parse(r.u8()?, DISCONNECT_REASONS)?
    };
    let properties = if r.is_empty() {
        DisconnectProperties::default()
    } else {
        DisconnectProperties::decode(r)?
    };
    r.finish()?;
    Ok(Disconnect { reason, properties })
}

/// Decodes an AUTH body (5.0 only; the caller rejects it for 3.x).
pub(crate) fn decode_auth(r: &mut Reader) -> Result<Auth, DecodeError> {
    let reason = if r.is_empty() {
        ReasonCode::Success
    } else {
        reason::parse(r.u8()?, AUTH_REASONS)?
    };
    let properties = if r.is_empty() {
        AuthProperties::default()
    } else {
        AuthProperties::decode(r)?
    };
    r.finish()?;
    Ok(Auth { reason, properties })
}

/// A reason code and properties, omitted from the end when defaults.
fn encode_reason_props<S: Sink, P: Properties>(
    reason: ReasonCode,
    props: &P,
    empty: bool,
    s: &mut S,
) {
    if reason != ReasonCode::Success || !empty {
        s.u8(reason.code());
    }
    if !empty {
        s.properties(props);
    }
}

/// Encodes a DISCONNECT body (nothing for 3.x).
pub(crate) fn encode_disconnect<S: Sink>(d: &Disconnect, v: ProtocolVersion, s: &mut S) {
    if v.is_v5() {
        encode_reason_props(d.reason, &d.properties, d.properties.is_empty(), s);
    }
}

/// Encodes an AUTH body.
pub(crate) fn encode_auth<S: Sink>(a: &Auth, s: &mut S) {
    encode_reason_props(a.reason, &a.properties, a.properties.is_empty(), s);
}
