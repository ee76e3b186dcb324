//! Decoding packets from a byte buffer.

use super::{DecodeError, Packet, ProtocolVersion};
use bytes::BytesMut;

/// A stateful decoder for one connection.
///
/// Before CONNECT it accepts only CONNECT; the CONNECT fixes the protocol
/// version used for every later packet.
#[derive(Debug, Clone)]
pub struct Decoder {
    max_packet_size: u32,
    version: Option<ProtocolVersion>,
}

impl Decoder {
    /// A decoder that refuses packets larger than `max_packet_size` bytes
    /// (fixed header included).
    pub fn new(max_packet_size: u32) -> Self {
        Decoder {
            max_packet_size,
            version: None,
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
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Packet>, DecodeError> {
        let _ = (buf, self.max_packet_size);
        unimplemented!("codec helper")
    }
}
