//! Encoding packets into a byte buffer.

use super::publish::PublishView;
use super::writer::{Counter, Sink, Writer};
use super::{ack, connect, disconnect, subscribe, varint};
use super::{EncodeError, Packet, ProtocolVersion, MAX_REMAINING_LENGTH};
use bytes::{BufMut, BytesMut};

/// Appends `packet`, encoded for `version`, to `buf`.
///
/// Fields the version does not have (5.0 properties for 3.x peers) are left
/// out. A CONNECT is always encoded in the format of its own `protocol`
/// field. On error nothing is written.
pub fn encode(
    packet: &Packet,
    version: ProtocolVersion,
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    match packet {
        Packet::Auth(_) if !version.is_v5() => Err(EncodeError::UnsupportedPacket),
        // The view built once, not per pass.
        Packet::Publish(p) => encode_frame(&p.view(), version, buf),
        _ => encode_frame(packet, version, buf),
    }
}

/// The number of bytes [`encode`] would write, fixed header included.
/// (Meaningless when `encode` would fail.)
pub fn encoded_len(packet: &Packet, version: ProtocolVersion) -> usize {
    match packet {
        Packet::Publish(p) => frame_len(&p.view(), version),
        _ => frame_len(packet, version),
    }
}

/// [`encode`] for a borrowed PUBLISH.
pub(crate) fn encode_publish(
    p: &PublishView<'_>,
    version: ProtocolVersion,
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    encode_frame(p, version, buf)
}

/// [`encode_publish`] up to the payload, which the caller writes right
/// after these bytes (the remaining length counts it).
pub(crate) fn encode_publish_head(
    p: &PublishView<'_>,
    version: ProtocolVersion,
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    // The payload is the body's last field: the head is the same packet
    // with none, framed with the whole packet's length.
    let head = PublishView { payload: &[], ..*p };
    encode_framed(p, &head, p.payload.len(), version, buf)
}

/// [`encoded_len`] for a borrowed PUBLISH.
pub(crate) fn publish_len(p: &PublishView<'_>, version: ProtocolVersion) -> usize {
    frame_len(p, version)
}

/// A fixed header's first byte and a body: what [`encode_frame`] frames.
trait Frame {
    fn first_byte(&self) -> u8;
    fn body<S: Sink>(&self, v: ProtocolVersion, s: &mut S);
}

impl Frame for Packet {
    fn first_byte(&self) -> u8 {
        first_byte(self)
    }
    fn body<S: Sink>(&self, v: ProtocolVersion, s: &mut S) {
        body(self, v, s)
    }
}

impl Frame for PublishView<'_> {
    fn first_byte(&self) -> u8 {
        PublishView::first_byte(self)
    }
    fn body<S: Sink>(&self, v: ProtocolVersion, s: &mut S) {
        PublishView::body(self, v, s)
    }
}

/// Counts the body, then writes the fixed header and the body.
fn encode_frame<F: Frame>(
    f: &F,
    version: ProtocolVersion,
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    encode_framed(f, f, 0, version, buf)
}

/// Writes `f`'s fixed header, then the body of `written`: `f` itself, or
/// `f` without its last `left_out` bytes, which the caller writes next.
fn encode_framed<F: Frame>(
    f: &F,
    written: &F,
    left_out: usize,
    version: ProtocolVersion,
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    let mut c = Counter::default();
    f.body(version, &mut c);
    if let Some(e) = c.err {
        return Err(e);
    }
    let remaining = u32::try_from(c.n)
        .ok()
        .filter(|&n| n <= MAX_REMAINING_LENGTH)
        .ok_or(EncodeError::PacketTooLarge)?;
    buf.reserve(1 + varint::len(remaining) + c.n - left_out);
    buf.put_u8(f.first_byte());
    varint::write(remaining, buf);
    written.body(version, &mut Writer(buf));
    Ok(())
}

fn frame_len<F: Frame>(f: &F, version: ProtocolVersion) -> usize {
    let mut c = Counter::default();
    f.body(version, &mut c);
    let remaining = u32::try_from(c.n).unwrap_or(u32::MAX);
    1 + varint::len(remaining) + c.n
}

fn first_byte(packet: &Packet) -> u8 {
    match packet {
        Packet::Connect(_) => 0x10,
        Packet::ConnAck(_) => 0x20,
        Packet::Publish(p) => p.view().first_byte(),
        Packet::PubAck(_) => 0x40,
        Packet::PubRec(_) => 0x50,
        // PUBREL, SUBSCRIBE and UNSUBSCRIBE carry flags 0b0010 [MQTT-2.1.3-1].
        Packet::PubRel(_) => 0x62,
        Packet::PubComp(_) => 0x70,
        Packet::Subscribe(_) => 0x82,
        Packet::SubAck(_) => 0x90,
        Packet::Unsubscribe(_) => 0xA2,
        Packet::UnsubAck(_) => 0xB0,
        Packet::PingReq => 0xC0,
        Packet::PingResp => 0xD0,
        Packet::Disconnect(_) => 0xE0,
        Packet::Auth(_) => 0xF0,
    }
}

/// Describes the variable header and payload to `s`.
fn body<S: Sink>(packet: &Packet, v: ProtocolVersion, s: &mut S) {
    match packet {
        Packet::Connect(c) => connect::encode_connect(c, s),
        Packet::ConnAck(c) => connect::encode_connack(c, v, s),
        Packet::Publish(p) => p.view().body(v, s),
        Packet::PubAck(p) | Packet::PubRec(p) | Packet::PubRel(p) | Packet::PubComp(p) => {
            ack::encode(p, v, s)
        }
        Packet::Subscribe(p) => subscribe::encode_subscribe(p, v, s),
        Packet::SubAck(p) => subscribe::encode_suback(p, v, s),
        Packet::Unsubscribe(p) => subscribe::encode_unsubscribe(p, v, s),
        Packet::UnsubAck(p) => subscribe::encode_unsuback(p, v, s),
        Packet::PingReq | Packet::PingResp => {}
        Packet::Disconnect(d) => disconnect::encode_disconnect(d, v, s),
        Packet::Auth(a) => disconnect::encode_auth(a, s),
    }
}
