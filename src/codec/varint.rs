//! The variable byte integer (section 1.5.5): 7 bits per byte, least
//! significant group first, at most 4 bytes.

use super::{DecodeError, MAX_REMAINING_LENGTH};

/// The outcome of reading a variable byte integer from the front of a slice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum VarInt {
    /// The value and how many bytes encoded it.
    Value(u32, usize),
    /// The slice ends before the last byte (continuation bit still set).
    Incomplete,
}

/// Reads a variable byte integer from the front of `bytes`.
///
/// A fifth byte (the fourth still has its continuation bit) is malformed
/// ([MQTT-1.5.5-1]); running out of bytes is `Incomplete`, not an error.
pub(crate) fn read(bytes: &[u8]) -> Result<VarInt, DecodeError> {
    let mut value: u32 = 0;
    for (i, &b) in bytes.iter().take(4).enumerate() {
        value |= u32::from(b & 0x7F) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(VarInt::Value(value, i + 1));
        }
    }
    if bytes.len() >= 4 {
        Err(DecodeError::MalformedRemainingLength)
    } else {
        Ok(VarInt::Incomplete)
    }
}

/// The number of bytes `value` takes; values above
/// [`MAX_REMAINING_LENGTH`] are counted as 4 (the caller rejects them).
pub(crate) fn len(value: u32) -> usize {
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Appends `value` (at most [`MAX_REMAINING_LENGTH`]) to `out`.
pub(crate) fn write(mut value: u32, out: &mut impl bytes::BufMut) {
    debug_assert!(value <= MAX_REMAINING_LENGTH);
    loop {
        // Truncation intended: the low 7 bits.
        let mut byte = (value & 0x7F) as u8;
        value >>= 7;
        if value > 0 {
            byte |= 0x80;
        }
        out.put_u8(byte);
        if value == 0 {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_examples_round_trip() {
        // Table 1.5.5 boundaries.
        for (v, n) in [
            (0, 1),
            (127, 1),
            (128, 2),
            (16_383, 2),
            (16_384, 3),
            (2_097_151, 3),
            (2_097_152, 4),
            (MAX_REMAINING_LENGTH, 4),
        ] {
            let mut out = Vec::new();
            write(v, &mut out);
            assert_eq!(out.len(), n);
            assert_eq!(len(v), n);
            assert_eq!(read(&out), Ok(VarInt::Value(v, n)));
        }
    }

    #[test]
    fn five_bytes_is_malformed_mqtt_1_5_5_1() {
        assert_eq!(
            read(&[0xFF, 0xFF, 0xFF, 0xFF, 0x01]),
            Err(DecodeError::MalformedRemainingLength)
        );
        assert_eq!(
            read(&[0xFF, 0xFF, 0xFF, 0x80]),
            Err(DecodeError::MalformedRemainingLength)
        );
    }

    #[test]
    fn incomplete_is_not_an_error() {
        assert_eq!(read(&[]), Ok(VarInt::Incomplete));
        assert_eq!(read(&[0x80]), Ok(VarInt::Incomplete));
        assert_eq!(read(&[0xFF, 0xFF, 0xFF]), Ok(VarInt::Incomplete));
    }
}
