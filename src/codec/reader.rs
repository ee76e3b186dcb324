//! A cursor over one packet's bytes. Every read is bounds-checked: running
//! past the end is [`DecodeError::LengthMismatch`], never a panic. Strings and
//! binaries are sliced out of the shared buffer without copying.

use super::varint::{self, VarInt};
use super::{ByteStr, DecodeError, PacketId};
use bytes::{Buf, Bytes};

/// The unread rest of a packet.
#[derive(Debug)]
pub(crate) struct Reader(Bytes);

impl Reader {
    pub(crate) fn new(bytes: Bytes) -> Self {
        Reader(bytes)
    }

    pub(crate) fn remaining(&self) -> usize {
        self.0.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Fails with `LengthMismatch` if bytes are left over.
    pub(crate) fn finish(&self) -> Result<(), DecodeError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::LengthMismatch)
        }
    }

    /// Everything that is left (a PUBLISH payload).
    pub(crate) fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.0)
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<Bytes, DecodeError> {
        if n > self.0.len() {
            return Err(DecodeError::LengthMismatch);
        }
        Ok(self.0.split_to(n))
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        if self.0.is_empty() {
            return Err(DecodeError::LengthMismatch);
        }
        Ok(self.0.get_u8())
    }

    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        if self.0.len() < 2 {
            return Err(DecodeError::LengthMismatch);
        }
        Ok(self.0.get_u16())
    }

    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        if self.0.len() < 4 {
            return Err(DecodeError::LengthMismatch);
        }
        Ok(self.0.get_u32())
    }

    /// A variable byte integer inside the packet body.
    pub(crate) fn varint(&mut self) -> Result<u32, DecodeError> {
        match varint::read(&self.0)? {
            VarInt::Value(v, n) => {
                self.0.advance(n);
                Ok(v)
            }
            VarInt::Incomplete => Err(DecodeError::LengthMismatch),
        }
    }

    /// A non-zero packet identifier ([MQTT-2.2.1-3]).
    pub(crate) fn packet_id(&mut self) -> Result<PacketId, DecodeError> {
        PacketId::new(self.u16()?).ok_or(DecodeError::ZeroPacketId)
    }

    /// Binary data: two-byte length, then the bytes (section 1.5.6).
    pub(crate) fn binary(&mut self) -> Result<Bytes, DecodeError> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }

    /// A UTF-8 encoded string (section 1.5.4): well-formed, no U+0000
    /// ([MQTT-1.5.4-1], [MQTT-1.5.4-2]).
    pub(crate) fn string(&mut self) -> Result<ByteStr, DecodeError> {
        let bytes = self.binary()?;
        if bytes.contains(&0) {
            return Err(DecodeError::InvalidUtf8);
        }
        ByteStr::from_utf8(bytes).map_err(|_| DecodeError::InvalidUtf8)
    }

    /// Splits off the next `n` bytes as their own reader (a property block).
    pub(crate) fn sub(&mut self, n: usize) -> Result<Reader, DecodeError> {
        self.take(n).map(Reader)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_rejects_nul_mqtt_1_5_4_2() {
        let mut r = Reader::new(Bytes::from_static(&[0, 3, b'a', 0, b'b']));
        assert_eq!(r.string(), Err(DecodeError::InvalidUtf8));
    }

    #[test]
    fn string_rejects_ill_formed_utf8_mqtt_1_5_4_1() {
        // An encoded surrogate (U+D800) and a lone continuation byte.
        for bad in [&[0, 3, 0xED, 0xA0, 0x80][..], &[0, 1, 0x80][..]] {
            let mut r = Reader::new(Bytes::copy_from_slice(bad));
            assert_eq!(r.string(), Err(DecodeError::InvalidUtf8));
        }
    }

    #[test]
    fn reads_past_end_are_length_mismatch() {
        let mut r = Reader::new(Bytes::from_static(&[0, 5, b'a']));
        assert_eq!(r.string(), Err(DecodeError::LengthMismatch));
        let mut r = Reader::new(Bytes::from_static(&[1]));
        assert_eq!(r.u16(), Err(DecodeError::LengthMismatch));
        let mut r = Reader::new(Bytes::from_static(&[0x80]));
        assert_eq!(r.varint(), Err(DecodeError::LengthMismatch));
    }

    #[test]
    fn zero_packet_id_mqtt_2_2_1_3() {
        let mut r = Reader::new(Bytes::from_static(&[0, 0]));
        assert_eq!(r.packet_id(), Err(DecodeError::ZeroPacketId));
    }
}
