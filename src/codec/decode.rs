//! Decoding packets from a byte buffer.

use super::reader::Reader;
use super::reason::{PUBACK_REASONS, PUBREL_REASONS};
use super::varint::{self, VarInt};
use super::{ack, connect, disconnect, publish, subscribe};
use super::{DecodeError, Packet, PacketType, ProtocolVersion};
use bytes::{Buf, BytesMut};

// Packet types (table 2.1), as `u8` for matching on the header's nibble.
const CONNECT: u8 = PacketType::Connect as u8;
const CONNACK: u8 = PacketType::ConnAck as u8;
const PUBLISH: u8 = PacketType::Publish as u8;
const PUBACK: u8 = PacketType::PubAck as u8;
const PUBREC: u8 = PacketType::PubRec as u8;
const PUBREL: u8 = PacketType::PubRel as u8;
const PUBCOMP: u8 = PacketType::PubComp as u8;
const SUBSCRIBE: u8 = PacketType::Subscribe as u8;
const SUBACK: u8 = PacketType::SubAck as u8;
const UNSUBSCRIBE: u8 = PacketType::Unsubscribe as u8;
const UNSUBACK: u8 = PacketType::UnsubAck as u8;
const PINGREQ: u8 = PacketType::PingReq as u8;
const PINGRESP: u8 = PacketType::PingResp as u8;
const DISCONNECT: u8 = PacketType::Disconnect as u8;
const AUTH: u8 = PacketType::Auth as u8;

/// A stateful decoder for one connection.
///
/// Before CONNECT it accepts only CONNECT; the CONNECT fixes the protocol
/// version used for every later packet.
#[derive(Debug, Clone)]
pub struct Decoder {
    max_packet_size: u32,
    version: Option<ProtocolVersion>,
    /// The server's side: packets come from a client, and the rules that
    /// bind only what a client sends apply ([MQTT-3.3.4-6]).
    from_client: bool,
}

impl Decoder {
    /// The server's decoder for a new connection: refuses packets larger
    /// than `max_packet_size` bytes (fixed header included), expects
    /// CONNECT first, and applies the rules that bind only what a client
    /// sends (no Subscription Identifier in a PUBLISH, [MQTT-3.3.4-6]).
    pub fn new(max_packet_size: u32) -> Self {
        Decoder {
            max_packet_size,
            version: None,
            from_client: true,
        }
    }

    /// A decoder for a connection whose version is already known, as on the
    /// client side (or in tests): it skips the CONNECT-first rule, and a
    /// CONNECT is then [`DecodeError::DuplicateConnect`]. It reads packets
    /// of either direction: a server's PUBLISH may carry Subscription
    /// Identifiers.
    pub fn with_version(max_packet_size: u32, version: ProtocolVersion) -> Self {
        Decoder {
            max_packet_size,
            version: Some(version),
            from_client: false,
        }
    }

    /// Changes the largest packet accepted from now on (a connection
    /// allows less before CONNACK than after it).
    pub fn set_max_packet_size(&mut self, max_packet_size: u32) {
        self.max_packet_size = max_packet_size;
    }

    /// The size of the packet at the front of `buf` as its fixed header
    /// declares it, fixed header included: what [`Decoder::decode`] will
    /// make room for before the packet is complete. `None` while the fixed
    /// header is incomplete or invalid, or when the packet is over the
    /// limit (`decode` refuses it without buffering).
    pub fn frame_len(&self, buf: &[u8]) -> Option<usize> {
        match varint::read(buf.get(1..)?) {
            Ok(VarInt::Value(remaining, n)) => {
                let size = 1 + n as u32 + remaining;
                (size <= self.max_packet_size).then_some(size as usize)
            }
            _ => None,
        }
    }

    /// The protocol version, once CONNECT was decoded.
    pub fn version(&self) -> Option<ProtocolVersion> {
        self.version
    }

    /// Decodes one packet from the front of `buf`.
    ///
    /// `Ok(None)`: not enough bytes yet (nothing is consumed). On success the
    /// packet's bytes are removed from `buf`; payloads and strings share the
    /// buffer's memory.
    ///
    /// Errors found in the fixed header (bad type or flags, wrong connection
    /// state, a packet over the size limit) are reported as soon as the
    /// header is readable, before the body arrives, and consume nothing.
    /// Errors in the body consume the packet. Either way the connection is
    /// unusable afterwards.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Packet>, DecodeError> {
        let Some(&first) = buf.first() else {
            return Ok(None);
        };
        let kind = first >> 4;
        let flags = first & 0x0F;
        check_header(kind, flags)?;
        match (self.version, kind) {
            (None, CONNECT) => {}
            (None, _) => return Err(DecodeError::ExpectedConnect),
            (Some(_), CONNECT) => return Err(DecodeError::DuplicateConnect),
            (Some(v), AUTH) if !v.is_v5() => return Err(DecodeError::UnsupportedPacket(AUTH)),
            (Some(_), _) => {}
        }

        let (remaining, len_bytes) = match varint::read(&buf[1..])? {
            VarInt::Value(v, n) => (v, n),
            VarInt::Incomplete => return Ok(None),
        };
        let header = 1 + len_bytes;
        // At most 1 + 4 + 268,435,455: fits in u32.
        let size = header as u32 + remaining;
        if size > self.max_packet_size {
            return Err(DecodeError::PacketTooLarge {
                size,
                max: self.max_packet_size,
            });
        }
        let size = size as usize;
        if buf.len() < size {
            buf.reserve(size - buf.len());
            return Ok(None);
        }

        if let Some(packet) = bare_ack(kind, &buf[header..size]) {
            buf.advance(size);
            return packet.map(Some);
        }
        let frame = buf.split_to(size).freeze();
        let mut r = Reader::new(frame.slice(header..));
        let Some(v) = self.version else {
            // Only CONNECT gets here without a version (checked above).
            let c = connect::decode_connect(&mut r)?;
            self.version = Some(c.protocol);
            return Ok(Some(Packet::Connect(Box::new(c))));
        };
        let packet = match kind {
            CONNACK => Packet::ConnAck(connect::decode_connack(&mut r, v)?),
            PUBLISH => Packet::Publish(publish::decode(&mut r, flags, v, self.from_client)?),
            PUBACK => Packet::PubAck(ack::decode(&mut r, v, PUBACK_REASONS)?),
            PUBREC => Packet::PubRec(ack::decode(&mut r, v, PUBACK_REASONS)?),
            PUBREL => Packet::PubRel(ack::decode(&mut r, v, PUBREL_REASONS)?),
            PUBCOMP => Packet::PubComp(ack::decode(&mut r, v, PUBREL_REASONS)?),
            SUBSCRIBE => Packet::Subscribe(subscribe::decode_subscribe(&mut r, v)?),
            SUBACK => Packet::SubAck(subscribe::decode_suback(&mut r, v)?),
            UNSUBSCRIBE => Packet::Unsubscribe(subscribe::decode_unsubscribe(&mut r, v)?),
            UNSUBACK => Packet::UnsubAck(subscribe::decode_unsuback(&mut r, v)?),
            PINGREQ => {
                r.finish()?;
                Packet::PingReq
            }
            PINGRESP => {
                r.finish()?;
                Packet::PingResp
            }
            DISCONNECT => Packet::Disconnect(disconnect::decode_disconnect(&mut r, v)?),
            AUTH => Packet::Auth(disconnect::decode_auth(&mut r)?),
            // CONNECT was handled above and 0 by `check_header`.
            other => return Err(DecodeError::InvalidPacketType(other)),
        };
        Ok(Some(packet))
    }
}

/// Checks the packet type and its fixed header flags ([MQTT-2.1.3-1]).
fn check_header(kind: u8, flags: u8) -> Result<(), DecodeError> {
    match kind {
        0 => Err(DecodeError::InvalidPacketType(0)),
        PUBLISH => publish::check_flags(flags).map(drop),
        PUBREL | SUBSCRIBE | UNSUBSCRIBE if flags == 0b0010 => Ok(()),
        PUBREL | SUBSCRIBE | UNSUBSCRIBE => Err(DecodeError::InvalidHeaderFlags(kind)),
        _ if flags == 0 => Ok(()),
        _ => Err(DecodeError::InvalidHeaderFlags(kind)),
    }
}

/// A PUBACK, PUBREC, PUBREL or PUBCOMP that is just a packet id (Success,
/// no properties: every 3.x acknowledgement, most 5.0 ones) or a PINGREQ,
/// decoded without splitting the buffer. Half of a QoS 1 subscriber's
/// packets are such acknowledgements, and splitting a frame off the read
/// buffer (a shared handle, two reference counts) cost more than decoding
/// it. `None`: not such a packet (the general path decodes it).
fn bare_ack(kind: u8, body: &[u8]) -> Option<Result<Packet, DecodeError>> {
    let packet = match (kind, body) {
        (PINGREQ, []) => return Some(Ok(Packet::PingReq)),
        (PUBACK..=PUBCOMP, &[hi, lo]) => {
            let Some(id) = super::PacketId::new(u16::from_be_bytes([hi, lo])) else {
                return Some(Err(DecodeError::ZeroPacketId));
            };
            let r = super::PubResp::new(id);
            match kind {
                PUBACK => Packet::PubAck(r),
                PUBREC => Packet::PubRec(r),
                PUBREL => Packet::PubRel(r),
                _ => Packet::PubComp(r),
            }
        }
        _ => return None,
    };
    Some(Ok(packet))
}
