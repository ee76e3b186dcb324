//! Codec tests: spec rules on literal bytes, and property tests over
//! generated packets.

mod client_rules;
mod encode_rules;
mod props;
mod roundtrip;
mod rules;
mod strategies;

use super::{DecodeError, Decoder, Packet, ProtocolVersion};
use bytes::BytesMut;

const MAX: u32 = 1 << 20;

/// Decodes `bytes` with a decoder already past CONNECT (version `v`), and
/// asserts the whole input was consumed on success.
fn dec(v: ProtocolVersion, bytes: &[u8]) -> Result<Option<Packet>, DecodeError> {
    let mut buf = BytesMut::from(bytes);
    let out = Decoder::with_version(MAX, v).decode(&mut buf);
    if let Ok(Some(_)) = out {
        assert!(buf.is_empty(), "left over: {buf:?}");
    }
    out
}

/// Decodes `bytes` with a fresh server-side decoder (CONNECT expected).
fn dec_new(bytes: &[u8]) -> Result<Option<Packet>, DecodeError> {
    let mut buf = BytesMut::from(bytes);
    Decoder::new(MAX).decode(&mut buf)
}

/// Prefixes `body` with a fixed header of first byte `first`.
fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    super::varint::write(body.len() as u32, &mut out);
    out.extend_from_slice(body);
    out
}
