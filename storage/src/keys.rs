//! Composite keys for ordered key-value backends (sled, redb).
//!
//! Every key sorts in plain byte order exactly as the snapshot must be
//! ordered, so a backend can read a table front to back:
//!
//! | table         | key                                    | order                  |
//! |---------------|----------------------------------------|------------------------|
//! | sessions      | `client_id`                            | by client id           |
//! | subscriptions | `client_id` 0x00 `filter`              | by client, then filter |
//! | outbound      | `client_id` 0x00 `seq` (u64 big-endian)| by client, then seq    |
//! | inbound QoS 2 | `client_id` 0x00 `packet_id` (u16 BE)  | by client, then id     |
//! | messages      | `id` (u64 big-endian)                  | by id                  |
//! | retained      | `topic`                                | by topic               |
//!
//! Why 0x00 is a safe separator: a client id may hold any UTF-8 except
//! U+0000 ([MQTT-1.5.4-2]; [`check_client_id`] enforces it), and U+0000 is
//! the only UTF-8 sequence containing the byte 0x00. So the first 0x00 in a
//! key ends the client id, and because 0x00 is the smallest byte, `"a"` with
//! its entries sorts wholly before `"ab"` and its entries. Everything after
//! the separator is the rest of the key, so a filter needs no such rule.
//! Big-endian integers sort numerically in byte order (255 before 256).

use crate::{MessageId, StorageError};

/// Separates the client id from the rest of a composite key.
pub const SEPARATOR: u8 = 0x00;

/// Rejects a client id that cannot be part of a composite key (it contains
/// U+0000).
pub fn check_client_id(client_id: &str) -> Result<(), StorageError> {
    if client_id.as_bytes().contains(&SEPARATOR) {
        return Err(StorageError::InvalidOp {
            backend: "",
            message: format!("client id {client_id:?} contains U+0000 [MQTT-1.5.4-2]"),
        });
    }
    Ok(())
}

/// Key of a session record: the client id's bytes.
pub fn session_key(client_id: &str) -> Vec<u8> {
    client_id.as_bytes().to_vec()
}

/// Decodes a session key back into the client id.
pub fn decode_session_key(key: &[u8]) -> Result<String, StorageError> {
    utf8(key, "session key")
}

/// The prefix shared by every composite key of one client: the client id
/// followed by [`SEPARATOR`].
pub fn client_prefix(client_id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(client_id.len() + 1);
    key.extend_from_slice(client_id.as_bytes());
    key.push(SEPARATOR);
    key
}

/// The key range `[start, end)` holding every composite key of one client;
/// used to delete a session's subscriptions, outbound entries and inbound
/// ids.
pub fn client_range(client_id: &str) -> (Vec<u8>, Vec<u8>) {
    let start = client_prefix(client_id);
    let mut end = start.clone();
    // The prefix ends in 0x00, so bumping that byte to 0x01 gives the first
    // key past every key of this client (and before any longer client id,
    // whose next byte is at least 0x01).
    if let Some(last) = end.last_mut() {
        *last = SEPARATOR + 1;
    }
    (start, end)
}

/// Key of a subscription: client id, 0x00, filter.
pub fn subscription_key(client_id: &str, filter: &str) -> Vec<u8> {
    let mut key = client_prefix(client_id);
    key.extend_from_slice(filter.as_bytes());
    key
}

/// Decodes a subscription key into `(client_id, filter)`.
pub fn decode_subscription_key(key: &[u8]) -> Result<(String, String), StorageError> {
    let (client, rest) = split_client(key, "subscription key")?;
    Ok((client, utf8(rest, "subscription key filter")?))
}

/// Key of an outbound entry: client id, 0x00, big-endian sequence number.
pub fn outbound_key(client_id: &str, seq: u64) -> Vec<u8> {
    let mut key = client_prefix(client_id);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// Decodes an outbound key into `(client_id, seq)`.
pub fn decode_outbound_key(key: &[u8]) -> Result<(String, u64), StorageError> {
    let (client, rest) = split_client(key, "outbound key")?;
    let seq = rest
        .try_into()
        .map(u64::from_be_bytes)
        .map_err(|_| corrupt("outbound key", "sequence number is not 8 bytes"))?;
    Ok((client, seq))
}

/// Key of an inbound QoS 2 packet id: client id, 0x00, big-endian packet id.
pub fn inbound_qos2_key(client_id: &str, packet_id: u16) -> Vec<u8> {
    let mut key = client_prefix(client_id);
    key.extend_from_slice(&packet_id.to_be_bytes());
    key
}

/// Decodes an inbound QoS 2 key into `(client_id, packet_id)`.
pub fn decode_inbound_qos2_key(key: &[u8]) -> Result<(String, u16), StorageError> {
    let (client, rest) = split_client(key, "inbound QoS 2 key")?;
    let packet_id = rest
        .try_into()
        .map(u16::from_be_bytes)
        .map_err(|_| corrupt("inbound QoS 2 key", "packet id is not 2 bytes"))?;
    Ok((client, packet_id))
}

/// Key of a message body: the big-endian id.
pub fn message_key(id: MessageId) -> [u8; 8] {
    id.to_be_bytes()
}

/// Decodes a message key into the id.
pub fn decode_message_key(key: &[u8]) -> Result<MessageId, StorageError> {
    key.try_into()
        .map(MessageId::from_be_bytes)
        .map_err(|_| corrupt("message key", "id is not 8 bytes"))
}

/// Key of a retained message: the topic's bytes.
pub fn retained_key(topic: &str) -> Vec<u8> {
    topic.as_bytes().to_vec()
}

/// Decodes a retained key back into the topic.
pub fn decode_retained_key(key: &[u8]) -> Result<String, StorageError> {
    utf8(key, "retained key")
}

/// Splits a composite key at the first separator.
fn split_client<'a>(key: &'a [u8], what: &str) -> Result<(String, &'a [u8]), StorageError> {
    let at = key
        .iter()
        .position(|&b| b == SEPARATOR)
        .ok_or_else(|| corrupt(what, "no separator after the client id"))?;
    let (client, rest) = key.split_at(at);
    Ok((utf8(client, what)?, &rest[1..]))
}

fn utf8(bytes: &[u8], what: &str) -> Result<String, StorageError> {
    String::from_utf8(bytes.to_vec()).map_err(|e| corrupt(what, "not UTF-8").with_source(e))
}

fn corrupt(what: &str, why: &str) -> StorageError {
    StorageError::corrupt("", format!("{what}: {why}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENTS: &[&str] = &["", "a", "a/b", "a0", "ab", "a\u{1}", "é", "客户端", "🦀"];
    const SEQS: &[u64] = &[
        0,
        1,
        255,
        256,
        65_535,
        65_536,
        u32::MAX as u64,
        u32::MAX as u64 + 1,
        1 << 56,
        u64::MAX - 1,
        u64::MAX,
    ];

    #[test]
    fn outbound_keys_round_trip_and_sort_like_tuples() {
        let mut pairs = Vec::new();
        for c in CLIENTS {
            for s in SEQS {
                pairs.push((c.to_string(), *s));
            }
        }
        for (c, s) in &pairs {
            assert_eq!(
                decode_outbound_key(&outbound_key(c, *s)).unwrap(),
                (c.clone(), *s)
            );
        }
        let mut by_key = pairs.clone();
        by_key.sort_by_key(|(c, s)| outbound_key(c, *s));
        pairs.sort();
        assert_eq!(by_key, pairs);
    }

    #[test]
    fn subscription_keys_round_trip_and_sort_like_tuples() {
        let filters = [
            "",
            "#",
            "+/x",
            "$share/g/a/#",
            "$share/h/a/#",
            "a",
            "a/b",
            "é/#",
        ];
        let mut pairs = Vec::new();
        for c in CLIENTS {
            for f in filters {
                pairs.push((c.to_string(), f.to_string()));
            }
        }
        for (c, f) in &pairs {
            assert_eq!(
                decode_subscription_key(&subscription_key(c, f)).unwrap(),
                (c.clone(), f.clone())
            );
        }
        let mut by_key = pairs.clone();
        by_key.sort_by_key(|(c, f)| subscription_key(c, f));
        pairs.sort();
        assert_eq!(by_key, pairs);
    }

    #[test]
    fn inbound_keys_round_trip_and_sort_like_tuples() {
        let ids = [1u16, 2, 255, 256, 4096, 65_535];
        let mut pairs = Vec::new();
        for c in CLIENTS {
            for id in ids {
                pairs.push((c.to_string(), id));
            }
        }
        for (c, id) in &pairs {
            assert_eq!(
                decode_inbound_qos2_key(&inbound_qos2_key(c, *id)).unwrap(),
                (c.clone(), *id)
            );
        }
        let mut by_key = pairs.clone();
        by_key.sort_by_key(|(c, id)| inbound_qos2_key(c, *id));
        pairs.sort();
        assert_eq!(by_key, pairs);
    }

    #[test]
    fn simple_keys_round_trip_and_sort() {
        for c in CLIENTS {
            assert_eq!(decode_session_key(&session_key(c)).unwrap(), *c);
            assert_eq!(decode_retained_key(&retained_key(c)).unwrap(), *c);
        }
        let mut ids = SEQS.to_vec();
        for id in &ids {
            assert_eq!(decode_message_key(&message_key(*id)).unwrap(), *id);
        }
        ids.reverse();
        ids.sort_by_key(|id| message_key(*id));
        assert_eq!(ids, SEQS);
    }

    #[test]
    fn client_range_holds_exactly_that_clients_keys() {
        for c in CLIENTS {
            let (start, end) = client_range(c);
            for other in CLIENTS {
                for s in SEQS {
                    let key = outbound_key(other, *s);
                    let inside = start <= key && key < end;
                    assert_eq!(inside, c == other, "client {c:?}, key of {other:?}");
                }
                let key = subscription_key(other, "a/#");
                assert_eq!(start <= key && key < end, c == other);
            }
        }
    }

    #[test]
    fn malformed_keys_are_corrupt_not_panics() {
        let bad: &[&[u8]] = &[b"", b"abc", b"a\0", b"a\0\0", b"\xff\0", b"a\x00123456789"];
        for key in bad {
            assert!(matches!(
                decode_outbound_key(key),
                Err(StorageError::Corrupt { .. })
            ));
            assert!(matches!(
                decode_inbound_qos2_key(key),
                Err(StorageError::Corrupt { .. })
            ));
            assert!(decode_message_key(key).is_err());
        }
        assert!(matches!(
            decode_subscription_key(b"no separator"),
            Err(StorageError::Corrupt { .. })
        ));
        assert!(matches!(
            decode_subscription_key(b"a\0\xff"),
            Err(StorageError::Corrupt { .. })
        ));
        assert!(decode_session_key(b"\xc3").is_err());
    }

    #[test]
    fn client_ids_with_nul_are_rejected() {
        assert!(check_client_id("ok").is_ok());
        assert!(check_client_id("").is_ok());
        assert!(matches!(
            check_client_id("a\0b"),
            Err(StorageError::InvalidOp { .. })
        ));
    }
}
