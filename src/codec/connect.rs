//! CONNECT (section 3.1) and CONNACK (section 3.2).

use super::publish::check_topic_name;
use super::reader::Reader;
use super::reason::{self, CONNACK_REASONS};
use super::writer::Sink;
use super::{
    ConnAck, ConnAckProperties, Connect, ConnectProperties, DecodeError, LastWill, ProtocolVersion,
    QoS, WillProperties,
};

const RESERVED: u8 = 0x01;
const CLEAN_START: u8 = 0x02;
const WILL: u8 = 0x04;
const WILL_QOS_SHIFT: u8 = 3;
const WILL_RETAIN: u8 = 0x20;
const PASSWORD: u8 = 0x40;
const USERNAME: u8 = 0x80;

fn protocol_name(v: ProtocolVersion) -> &'static str {
    match v {
        ProtocolVersion::V3_1 => "MQIsdp",
        ProtocolVersion::V3_1_1 | ProtocolVersion::V5 => "MQTT",
    }
}

/// Decodes a CONNECT body.
///
/// The protocol level is checked right after the name, before anything that
/// depends on the version, so an unknown level is always reported as
/// [`DecodeError::UnsupportedProtocolVersion`] and the server can answer it.
pub(crate) fn decode_connect(r: &mut Reader) -> Result<Connect, DecodeError> {
    let name = r.binary()?;
    if &name[..] != b"MQTT" && &name[..] != b"MQIsdp" {
        return Err(DecodeError::InvalidProtocolName);
    }
    let level = r.u8()?;
    let protocol =
        ProtocolVersion::from_level(level).ok_or(DecodeError::UnsupportedProtocolVersion(level))?;
    if name != protocol_name(protocol).as_bytes() {
        return Err(DecodeError::InvalidProtocolName);
    }
    let flags = r.u8()?;
    if flags & RESERVED != 0 {
        return Err(DecodeError::ConnectReservedFlag);
    }
    let will_flag = flags & WILL != 0;
    let will_qos = (flags >> WILL_QOS_SHIFT) & 0b11;
    let will_retain = flags & WILL_RETAIN != 0;
    // [MQTT-3.1.2-11], [MQTT-3.1.2-13], [MQTT-3.1.2-14], [MQTT-3.1.2-15]
    if !will_flag && (will_qos != 0 || will_retain) {
        return Err(DecodeError::InvalidWillFlags);
    }
    let will_qos = QoS::from_u8(will_qos).ok_or(DecodeError::InvalidWillFlags)?;
    let has_password = flags & PASSWORD != 0;
    let has_username = flags & USERNAME != 0;
    // [MQTT-3.1.2-22]; 5.0 allows a password alone.
    if has_password && !has_username && !protocol.is_v5() {
        return Err(DecodeError::PasswordWithoutUsername);
    }
    let keep_alive = r.u16()?;
    let properties = if protocol.is_v5() {
        ConnectProperties::decode(r)?
    } else {
        ConnectProperties::default()
    };
    let client_id = r.string()?;
    let will = if will_flag {
        let properties = if protocol.is_v5() {
            WillProperties::decode(r)?
        } else {
            WillProperties::default()
        };
        let topic = r.string()?;
        check_topic_name(&topic)?;
        let payload = r.binary()?;
        Some(LastWill {
            topic,
            payload,
            qos: will_qos,
            retain: will_retain,
            properties,
        })
    } else {
        None
    };
    let username = if has_username {
        Some(r.string()?)
    } else {
        None
    };
    let password = if has_password {
        Some(r.binary()?)
    } else {
        None
    };
    r.finish()?;
    Ok(Connect {
        protocol,
        clean_start: flags & CLEAN_START != 0,
        keep_alive,
        client_id,
        will,
        username,
        password,
        properties,
    })
}

/// Encodes a CONNECT body in the format of `c.protocol`.
pub(crate) fn encode_connect<S: Sink>(c: &Connect, s: &mut S) {
    let v5 = c.protocol.is_v5();
    s.string(protocol_name(c.protocol));
    s.u8(c.protocol.level());
    let mut flags = 0;
    if c.clean_start {
        flags |= CLEAN_START;
    }
    if let Some(w) = &c.will {
        flags |= WILL | ((w.qos as u8) << WILL_QOS_SHIFT);
        if w.retain {
            flags |= WILL_RETAIN;
        }
    }
    if c.username.is_some() {
        flags |= USERNAME;
    }
    if c.password.is_some() {
        flags |= PASSWORD;
    }
    s.u8(flags);
    s.u16(c.keep_alive);
    if v5 {
        s.properties(&c.properties);
    }
    s.string(&c.client_id);
    if let Some(w) = &c.will {
        if v5 {
            s.properties(&w.properties);
        }
        s.string(&w.topic);
        s.binary(&w.payload);
    }
    if let Some(u) = &c.username {
        s.string(u);
    }
    if let Some(p) = &c.password {
        s.binary(p);
    }
}

/// Decodes a CONNACK body.
pub(crate) fn decode_connack(r: &mut Reader, v: ProtocolVersion) -> Result<ConnAck, DecodeError> {
    let flags = r.u8()?;
    // In 3.1 the first byte is unused; from 3.1.1 on, bits 7-1 are reserved.
    let session_present = match v {
        ProtocolVersion::V3_1 => false,
        _ if flags & 0xFE != 0 => return Err(DecodeError::ConnAckReservedFlag),
        _ => flags & 1 != 0,
    };
    let code = r.u8()?;
    let (reason, properties) = if v.is_v5() {
        (
            reason::parse(code, CONNACK_REASONS)?,
            ConnAckProperties::decode(r)?,
        )
    } else {
        (reason::from_v3_connack(code)?, ConnAckProperties::default())
    };
    r.finish()?;
    Ok(ConnAck {
        session_present,
        reason,
        properties,
    })
}

/// Encodes a CONNACK body.
pub(crate) fn encode_connack<S: Sink>(c: &ConnAck, v: ProtocolVersion, s: &mut S) {
    let session_present = c.session_present && v != ProtocolVersion::V3_1;
    s.u8(u8::from(session_present));
    if v.is_v5() {
        s.u8(c.reason.code());
        s.properties(&c.properties);
    } else {
        s.u8(c.reason.v3_connack_code());
    }
}
