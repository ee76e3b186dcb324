//! How persistent backends encode record values.
//!
//! An encoded value is one byte of [`FORMAT_VERSION`] followed by the record
//! in bincode (1.x, `DefaultOptions`: variable-length integers, little
//! endian, trailing bytes rejected). The version byte lets a later release
//! read what an earlier one wrote, and makes an older release refuse data
//! from a newer one instead of misreading it.
//!
//! Versions:
//! 1. The first format.
//! 2. [`SessionRecord`] gained its [`owner`](SessionRecord::owner); the
//!    other records are unchanged. Version 1 records are still read (a
//!    session's owner is then [`SessionOwner::Unknown`](crate::SessionOwner::Unknown)).
//! 3. [`OutboundRecord`] gained its [`stream_seq`](OutboundRecord::stream_seq);
//!    the other records are as in version 2. Version 1 and 2 entries are
//!    still read (with stream sequence 0, "not from a stream").

use bincode::Options;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::record::{OutboundRecordV2, SessionRecordV1};
use crate::{
    MessageRecord, OutboundRecord, SessionRecord, StorageError, SubscriptionRecord, WillRecord,
};

/// The record format this build writes.
pub const FORMAT_VERSION: u8 = 3;

/// The oldest record format this build still reads.
pub const OLDEST_READABLE_VERSION: u8 = 1;

/// A record type, and how it reads what earlier format versions wrote.
pub trait Record: Serialize + DeserializeOwned {
    /// Decodes the bincode `body` of a record written in format `version`,
    /// from [`OLDEST_READABLE_VERSION`] up to (not including)
    /// [`FORMAT_VERSION`]. By default the layout did not change.
    fn decode_older(version: u8, body: &[u8]) -> Result<Self, StorageError> {
        let _ = version;
        deserialize(body)
    }
}

impl Record for MessageRecord {}
impl Record for WillRecord {}
impl Record for SubscriptionRecord {}

impl Record for OutboundRecord {
    fn decode_older(version: u8, body: &[u8]) -> Result<Self, StorageError> {
        let _ = version; // Versions 1 and 2: no stream sequence.
        deserialize::<OutboundRecordV2>(body).map(OutboundRecord::from)
    }
}

impl Record for SessionRecord {
    fn decode_older(version: u8, body: &[u8]) -> Result<Self, StorageError> {
        match version {
            // No owner.
            1 => deserialize::<SessionRecordV1>(body).map(SessionRecord::from),
            // As now.
            _ => deserialize(body),
        }
    }
}

/// What the operator can do about a record from another format version.
const NEWER_HINT: &str = "the data was written by a newer roost: upgrade roost, \
     or move the data directory aside to start empty";
const OLDER_HINT: &str = "the data was written in a format this roost no longer reads: \
     use a roost release that reads it, or move the data directory aside to start empty";

fn options() -> impl Options {
    bincode::DefaultOptions::new()
}

/// Encodes a record: [`FORMAT_VERSION`] followed by its bincode form.
///
/// # Panics
///
/// If `value`'s `Serialize` implementation reports an error, which the
/// record types of this crate never do (bincode only fails on custom errors
/// and on sequences of unknown length). Use [`try_encode`] for other types.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    match try_encode(value) {
        Ok(bytes) => bytes,
        Err(e) => panic!("record types always serialize: {e}"),
    }
}

/// Encodes a record like [`encode`], returning serialization errors.
pub fn try_encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, StorageError> {
    let size = options().serialized_size(value).map_err(encode_error)?;
    let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0).saturating_add(1));
    bytes.push(FORMAT_VERSION);
    options()
        .serialize_into(&mut bytes, value)
        .map_err(encode_error)?;
    Ok(bytes)
}

/// A bincode failure to encode; the backend names itself at its boundary.
fn encode_error(e: bincode::Error) -> StorageError {
    StorageError::Encode {
        backend: "",
        message: e.to_string(),
        source: Some(e),
    }
}

/// The error for data of format version `found` (not [`FORMAT_VERSION`]),
/// with the hint that fits: upgrade for newer data, an older release for
/// older data.
pub(crate) fn unsupported_format(found: u32) -> StorageError {
    StorageError::UnsupportedFormat {
        backend: "",
        found,
        supported: u32::from(FORMAT_VERSION),
        hint: if found > u32::from(FORMAT_VERSION) {
            NEWER_HINT
        } else {
            OLDER_HINT
        },
    }
}

/// Decodes a record written by [`encode`], in this format version or an
/// older one this build still reads.
///
/// A record of another format version is [`StorageError::UnsupportedFormat`]
/// (with a hint for the operator); anything that does not decode is
/// [`StorageError::Corrupt`]. Never panics, whatever the bytes.
pub fn decode<T: Record>(bytes: &[u8]) -> Result<T, StorageError> {
    let (&version, body) = bytes
        .split_first()
        .ok_or_else(|| StorageError::corrupt("", "empty record"))?;
    match version {
        FORMAT_VERSION => deserialize(body),
        OLDEST_READABLE_VERSION..FORMAT_VERSION => T::decode_older(version, body),
        _ => Err(unsupported_format(u32::from(version))),
    }
}

/// Whether a store written in format `version` can be opened.
#[cfg_attr(not(feature = "redb"), allow(dead_code))] // Only redb marks versions.
pub(crate) fn readable(version: u32) -> bool {
    (u32::from(OLDEST_READABLE_VERSION)..=u32::from(FORMAT_VERSION)).contains(&version)
}

fn deserialize<T: DeserializeOwned>(body: &[u8]) -> Result<T, StorageError> {
    // Reading from a slice, bincode checks every length prefix against the
    // bytes left before allocating, so garbage cannot ask for huge buffers.
    options()
        .deserialize(body)
        .map_err(|e| StorageError::corrupt("", format!("cannot decode record: {e}")).with_source(e))
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::{
        MessageProperties, MessageRecord, OutboundRecord, OutboundState, SessionOwner,
        SessionRecord, SubscriptionRecord, WillRecord,
    };

    fn message() -> MessageRecord {
        MessageRecord {
            topic: "温度/房间/1".into(),
            payload: Bytes::from_static(b"\x00\x01hello"),
            qos: 2,
            retain: true,
            properties: MessageProperties {
                payload_format_indicator: Some(1),
                content_type: Some("text/plain".into()),
                response_topic: Some("reply/to".into()),
                correlation_data: Some(Bytes::from_static(b"corr")),
                user_properties: vec![("k".into(), "v1".into()), ("k".into(), "v2".into())],
            },
            expires_at_ms: Some(1_700_000_000_000),
        }
    }

    fn session() -> SessionRecord {
        SessionRecord {
            client_id: "🦀-client".into(),
            protocol_level: 5,
            expiry_interval: u32::MAX,
            disconnected_at_ms: Some(42),
            will: Some(WillRecord {
                message: message(),
                delay_interval: 30,
                message_expiry_interval: None,
            }),
            owner: SessionOwner::User("管理者".into()),
        }
    }

    fn outbound() -> OutboundRecord {
        OutboundRecord {
            message_id: u64::MAX,
            qos: 2,
            retain: false,
            packet_id: Some(65_535),
            state: OutboundState::Released,
            subscription_identifiers: vec![1, 268_435_455],
            message: None,
            stream_seq: 1 << 40,
        }
    }

    fn subscription() -> SubscriptionRecord {
        SubscriptionRecord {
            filter: "$share/group/a/+/#".into(),
            qos: 1,
            no_local: true,
            retain_as_published: true,
            retain_handling: 2,
            subscription_identifier: Some(7),
        }
    }

    #[test]
    fn records_round_trip() {
        let m = message();
        assert_eq!(decode::<MessageRecord>(&encode(&m)).unwrap(), m);
        let s = session();
        assert_eq!(decode::<SessionRecord>(&encode(&s)).unwrap(), s);
        let o = outbound();
        assert_eq!(decode::<OutboundRecord>(&encode(&o)).unwrap(), o);
        let sub = subscription();
        assert_eq!(decode::<SubscriptionRecord>(&encode(&sub)).unwrap(), sub);
        let big = MessageRecord {
            payload: Bytes::from(vec![0xa5; 1 << 20]),
            ..message()
        };
        assert_eq!(decode::<MessageRecord>(&encode(&big)).unwrap(), big);
    }

    #[test]
    fn every_owner_round_trips() {
        for owner in [
            SessionOwner::Unknown,
            SessionOwner::Anonymous,
            SessionOwner::User(String::new()),
            SessionOwner::User("alice".into()),
        ] {
            let s = SessionRecord { owner, ..session() };
            assert_eq!(decode::<SessionRecord>(&encode(&s)).unwrap(), s);
        }
    }

    /// Records written by format version 1 still load: a session then has
    /// no known owner; the other records did not change.
    #[test]
    fn version_1_records_still_decode() {
        // Exactly the bytes version 1 wrote for client "c", level 5, expiry
        // 60 s, disconnected at 42, no will.
        let frozen = [1, 1, b'c', 5, 60, 1, 42, 0];
        assert_eq!(
            decode::<SessionRecord>(&frozen).unwrap(),
            SessionRecord {
                client_id: "c".into(),
                protocol_level: 5,
                expiry_interval: 60,
                disconnected_at_ms: Some(42),
                will: None,
                owner: SessionOwner::Unknown,
            }
        );
        // With a will, as version 1's own type encoded it.
        let v1 = crate::record::SessionRecordV1 {
            client_id: "🦀-client".into(),
            protocol_level: 4,
            expiry_interval: u32::MAX,
            disconnected_at_ms: None,
            will: session().will,
        };
        let mut bytes = vec![1];
        options().serialize_into(&mut bytes, &v1).unwrap();
        let s = decode::<SessionRecord>(&bytes).unwrap();
        assert_eq!(s.owner, SessionOwner::Unknown);
        assert_eq!(s.will, session().will);
        // Version 2 bytes are not misread as version 1, nor the reverse.
        let mut v2 = encode(&session());
        v2[0] = 1;
        assert!(decode::<SessionRecord>(&v2).is_err());
        let mut v1_as_v2 = bytes.clone();
        v1_as_v2[0] = 2;
        assert!(decode::<SessionRecord>(&v1_as_v2).is_err());
        // The others but outbound entries (see version 3) read the same.
        let mut m = encode(&message());
        m[0] = 1;
        assert_eq!(decode::<MessageRecord>(&m).unwrap(), message());
        let mut sub = encode(&subscription());
        sub[0] = 1;
        assert_eq!(decode::<SubscriptionRecord>(&sub).unwrap(), subscription());
    }

    /// Records written by format versions 1 and 2 still load: an outbound
    /// entry then has stream sequence 0 (not known, as before version 3);
    /// a version 2 session keeps its owner.
    #[test]
    fn version_2_records_still_decode() {
        // Exactly the bytes version 2 (and 1) wrote for an entry of body 7,
        // QoS 2, no retain, packet id 9, sent, subscription identifier 3,
        // body stored apart.
        let frozen = [2, 7, 2, 0, 1, 9, 1, 1, 3, 0];
        let expected = OutboundRecord {
            message_id: 7,
            qos: 2,
            retain: false,
            packet_id: Some(9),
            state: OutboundState::Sent,
            subscription_identifiers: vec![3],
            message: None,
            stream_seq: 0,
        };
        assert_eq!(decode::<OutboundRecord>(&frozen).unwrap(), expected);
        let mut v1 = frozen;
        v1[0] = 1;
        assert_eq!(decode::<OutboundRecord>(&v1).unwrap(), expected);
        // With its body inline, as version 2's own type encoded it.
        let v2 = crate::record::OutboundRecordV2 {
            message_id: 0,
            qos: 1,
            retain: true,
            packet_id: None,
            state: OutboundState::Queued,
            subscription_identifiers: Vec::new(),
            message: Some(message()),
        };
        let mut bytes = vec![2];
        options().serialize_into(&mut bytes, &v2).unwrap();
        let o = decode::<OutboundRecord>(&bytes).unwrap();
        assert_eq!(o, OutboundRecord::from(v2));
        assert_eq!((o.stream_seq, o.message), (0, Some(message())));
        // Version 3 bytes are not misread as version 2, nor the reverse.
        let mut v3_as_v2 = encode(&outbound());
        v3_as_v2[0] = 2;
        assert!(decode::<OutboundRecord>(&v3_as_v2).is_err());
        let mut v2_as_v3 = bytes.clone();
        v2_as_v3[0] = 3;
        assert!(decode::<OutboundRecord>(&v2_as_v3).is_err());
        // A version 2 session is read as it was written, owner and all.
        let mut s = encode(&session());
        s[0] = 2;
        assert_eq!(decode::<SessionRecord>(&s).unwrap(), session());
        // The records that did not change read the same in version 2.
        let mut m = encode(&message());
        m[0] = 2;
        assert_eq!(decode::<MessageRecord>(&m).unwrap(), message());
        let mut sub = encode(&subscription());
        sub[0] = 2;
        assert_eq!(decode::<SubscriptionRecord>(&sub).unwrap(), subscription());
    }

    #[test]
    fn encoded_values_start_with_the_format_version() {
        assert_eq!(encode(&session())[0], FORMAT_VERSION);
        assert_eq!(encode(&0u8), vec![FORMAT_VERSION, 0]);
    }

    #[test]
    fn other_versions_are_unsupported_with_a_hint() {
        let mut bytes = encode(&session());
        bytes[0] = FORMAT_VERSION + 1;
        match decode::<SessionRecord>(&bytes) {
            Err(
                e @ StorageError::UnsupportedFormat {
                    found,
                    supported,
                    hint,
                    ..
                },
            ) => {
                assert_eq!(
                    (found, supported),
                    (u32::from(FORMAT_VERSION) + 1, u32::from(FORMAT_VERSION))
                );
                assert!(hint.contains("upgrade roost"));
                assert!(e.to_string().contains("move the data directory aside"));
            }
            other => panic!("expected UnsupportedFormat, got {other:?}"),
        }
        bytes[0] = 0;
        assert!(matches!(
            decode::<SessionRecord>(&bytes),
            Err(StorageError::UnsupportedFormat { found: 0, .. })
        ));
    }

    #[test]
    fn empty_truncated_and_trailing_bytes_are_corrupt() {
        assert!(matches!(
            decode::<SessionRecord>(&[]),
            Err(StorageError::Corrupt { .. })
        ));
        let bytes = encode(&session());
        for len in 1..bytes.len() {
            assert!(
                matches!(
                    decode::<SessionRecord>(&bytes[..len]),
                    Err(StorageError::Corrupt { .. })
                ),
                "truncated to {len}"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(
            decode::<SessionRecord>(&longer),
            Err(StorageError::Corrupt { .. })
        ));
    }

    #[test]
    fn garbage_never_panics() {
        // A small xorshift generator keeps the test deterministic.
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for round in 0..20_000 {
            let len = (next() % 64) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if round % 2 == 0 && !bytes.is_empty() {
                bytes[0] = FORMAT_VERSION;
            }
            // Results do not matter, only that nothing panics or aborts.
            let _ = decode::<SessionRecord>(&bytes);
            let _ = decode::<MessageRecord>(&bytes);
            let _ = decode::<OutboundRecord>(&bytes);
            let _ = decode::<SubscriptionRecord>(&bytes);
        }
        // Huge length prefixes must fail cleanly rather than allocate.
        let mut huge = vec![FORMAT_VERSION, 0xff];
        huge.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(decode::<MessageRecord>(&huge).is_err());
        assert!(decode::<SessionRecord>(&huge).is_err());
    }
}
