//! The payload layout: what a subscriber needs to measure latency and find
//! lost or duplicated messages.
//!
//! Bytes 0..8: send time, nanoseconds since the run's shared start
//! [`Instant`](std::time::Instant) (big-endian); 8..12: publisher index;
//! 12..20: the publisher's sequence number; the rest is padding.

use bytes::{BufMut, Bytes, BytesMut};

/// The shortest payload that holds the header.
pub const HEADER_LEN: usize = 20;

/// What a payload carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Send time, nanoseconds since the shared start.
    pub sent_ns: u64,
    /// Index of the publisher.
    pub publisher: u32,
    /// The publisher's sequence number, from 0.
    pub seq: u64,
}

/// A payload of `size` bytes (at least [`HEADER_LEN`]) carrying `h`.
pub fn build(h: Header, size: usize) -> Bytes {
    let mut b = BytesMut::with_capacity(size.max(HEADER_LEN));
    b.put_u64(h.sent_ns);
    b.put_u32(h.publisher);
    b.put_u64(h.seq);
    b.resize(size.max(HEADER_LEN), 0);
    b.freeze()
}

/// Reads the header; `None` if the payload is too short to be ours.
pub fn parse(payload: &[u8]) -> Option<Header> {
    let h = payload.get(..HEADER_LEN)?;
    Some(Header {
        sent_ns: u64::from_be_bytes(h[0..8].try_into().ok()?),
        publisher: u32::from_be_bytes(h[8..12].try_into().ok()?),
        seq: u64::from_be_bytes(h[12..20].try_into().ok()?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let h = Header {
            sent_ns: 123_456_789,
            publisher: 7,
            seq: 99,
        };
        let p = build(h, 64);
        assert_eq!(p.len(), 64);
        assert_eq!(parse(&p), Some(h));
        assert_eq!(build(h, 1).len(), HEADER_LEN);
        assert_eq!(parse(&p[..10]), None);
    }
}
