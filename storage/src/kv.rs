//! What the ordered key-value backends (sled, redb) share: the tables, the
//! translation of a batch of [`Op`]s into key-value writes, the store format
//! version check, and the scan of sorted tables.
//!
//! Layout on disk, for both engines: one table (sled tree, redb table) per
//! [`Table`], keyed as [`keys`](crate::keys) describes, with values encoded by
//! [`encoding`](crate::encoding) (inbound QoS 2 values are empty: the key is
//! the whole record). A `meta` table holds [`VERSION_KEY`]: the store format
//! version, a big-endian `u32`.

#[cfg(feature = "sled")]
use std::collections::BTreeSet;
use std::path::Path;

use crate::encoding::{self, try_encode, FORMAT_VERSION};
use crate::keys::{self, client_range};
use crate::{Op, Record, SessionRecord, StorageError, Visit};

/// Name of the table holding store-wide metadata.
pub(crate) const META_TABLE: &str = "meta";

/// Key, in the meta table, of the store format version.
pub(crate) const VERSION_KEY: &str = "format_version";

/// One table per record kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Table {
    Sessions = 0,
    Subscriptions = 1,
    Outbound = 2,
    InboundQos2 = 3,
    Messages = 4,
    Retained = 5,
}

impl Table {
    /// Every table, in the order of their indexes.
    pub(crate) const ALL: [Table; 6] = [
        Table::Sessions,
        Table::Subscriptions,
        Table::Outbound,
        Table::InboundQos2,
        Table::Messages,
        Table::Retained,
    ];

    /// The per-client tables a session delete cascades to.
    const PER_CLIENT: [Table; 3] = [Table::Subscriptions, Table::Outbound, Table::InboundQos2];

    /// The table's name on disk.
    pub(crate) const fn name(self) -> &'static str {
        match self {
            Table::Sessions => "sessions",
            Table::Subscriptions => "subscriptions",
            Table::Outbound => "outbound",
            Table::InboundQos2 => "inbound_qos2",
            Table::Messages => "messages",
            Table::Retained => "retained",
        }
    }

    /// Position in [`Table::ALL`].
    pub(crate) const fn index(self) -> usize {
        self as usize
    }
}

/// One key-value change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Write {
    /// Insert or replace.
    Put {
        table: Table,
        key: Vec<u8>,
        value: Vec<u8>,
    },
    /// Remove one key (absent is fine).
    Delete { table: Table, key: Vec<u8> },
    /// Remove every key in `[start, end)`.
    DeleteRange {
        table: Table,
        start: Vec<u8>,
        end: Vec<u8>,
    },
}

/// Translates a batch into writes, in order.
///
/// Every op is validated and every record encoded before anything is
/// returned, so a batch that cannot be stored fails here, before a backend
/// opens a transaction: an invalid batch changes nothing.
pub(crate) fn plan(ops: &[Op]) -> Result<Vec<Write>, StorageError> {
    for op in ops {
        op.validate()?;
    }
    let mut writes = Vec::with_capacity(ops.len());
    for op in ops {
        match op {
            Op::PutSession(session) => writes.push(Write::Put {
                table: Table::Sessions,
                key: keys::session_key(&session.client_id),
                value: try_encode(session)?,
            }),
            Op::DeleteSession { client_id } => {
                writes.push(Write::Delete {
                    table: Table::Sessions,
                    key: keys::session_key(client_id),
                });
                // The cascade: every composite key of this client, and no
                // other client's (see `keys::client_range`).
                let (start, end) = client_range(client_id);
                for table in Table::PER_CLIENT {
                    writes.push(Write::DeleteRange {
                        table,
                        start: start.clone(),
                        end: end.clone(),
                    });
                }
            }
            Op::PutSubscription {
                client_id,
                subscription,
            } => writes.push(Write::Put {
                table: Table::Subscriptions,
                key: keys::subscription_key(client_id, &subscription.filter),
                value: try_encode(subscription)?,
            }),
            Op::DeleteSubscription { client_id, filter } => writes.push(Write::Delete {
                table: Table::Subscriptions,
                key: keys::subscription_key(client_id, filter),
            }),
            Op::PutMessage { id, message } => writes.push(Write::Put {
                table: Table::Messages,
                key: keys::message_key(*id).to_vec(),
                value: try_encode(message)?,
            }),
            Op::DeleteMessage { id } => writes.push(Write::Delete {
                table: Table::Messages,
                key: keys::message_key(*id).to_vec(),
            }),
            Op::PutOutbound {
                client_id,
                seq,
                entry,
            } => writes.push(Write::Put {
                table: Table::Outbound,
                key: keys::outbound_key(client_id, *seq),
                value: try_encode(entry)?,
            }),
            Op::DeleteOutbound { client_id, seq } => writes.push(Write::Delete {
                table: Table::Outbound,
                key: keys::outbound_key(client_id, *seq),
            }),
            Op::PutInboundQos2 {
                client_id,
                packet_id,
            } => writes.push(Write::Put {
                table: Table::InboundQos2,
                key: keys::inbound_qos2_key(client_id, *packet_id),
                value: Vec::new(),
            }),
            Op::DeleteInboundQos2 {
                client_id,
                packet_id,
            } => writes.push(Write::Delete {
                table: Table::InboundQos2,
                key: keys::inbound_qos2_key(client_id, *packet_id),
            }),
            Op::PutRetained { message } => writes.push(Write::Put {
                table: Table::Retained,
                key: keys::retained_key(&message.topic),
                value: try_encode(message)?,
            }),
            Op::DeleteRetained { topic } => writes.push(Write::Delete {
                table: Table::Retained,
                key: keys::retained_key(topic),
            }),
        }
    }
    Ok(writes)
}

/// Replaces every [`Write::DeleteRange`] by single deletes, for an engine
/// that cannot scan a range inside its transaction.
///
/// `existing(table, start, end)` lists the keys stored in the range before
/// the batch. Keys put by earlier writes of the same batch are added, so a
/// put followed by a session delete in one batch still leaves nothing.
#[cfg(feature = "sled")]
pub(crate) fn expand_ranges(
    writes: Vec<Write>,
    mut existing: impl FnMut(Table, &[u8], &[u8]) -> Result<Vec<Vec<u8>>, StorageError>,
) -> Result<Vec<Write>, StorageError> {
    // Keys put so far in this batch, per table.
    let mut put: [BTreeSet<Vec<u8>>; 6] = Default::default();
    let mut out = Vec::with_capacity(writes.len());
    for write in writes {
        match write {
            Write::Put { table, ref key, .. } => {
                put[table.index()].insert(key.clone());
                out.push(write);
            }
            Write::Delete { .. } => out.push(write),
            Write::DeleteRange { table, start, end } => {
                let mut doomed: BTreeSet<Vec<u8>> =
                    existing(table, &start, &end)?.into_iter().collect();
                doomed.extend(
                    put[table.index()]
                        .range(start.clone()..end.clone())
                        .cloned(),
                );
                out.extend(doomed.into_iter().map(|key| Write::Delete { table, key }));
            }
        }
    }
    Ok(out)
}

/// The key range `[start, end)` of the outbound entries of `client_id`
/// with a seq greater than `after_seq` (every entry if `None`), for
/// [`Store::outbound_page`](crate::Store::outbound_page).
///
/// `None` if nothing can be in it: after `u64::MAX`, or a client id holding
/// U+0000, which no stored key has (`apply` refuses it) and whose prefix
/// could otherwise reach into the keys of a shorter id (`"a\0"` into
/// `"a"`'s).
pub(crate) fn outbound_range(
    client_id: &str,
    after_seq: Option<u64>,
) -> Option<(Vec<u8>, Vec<u8>)> {
    keys::check_client_id(client_id).ok()?;
    let (prefix, end) = client_range(client_id);
    let start = match after_seq {
        None => prefix,
        Some(after) => keys::outbound_key(client_id, after.checked_add(1)?),
    };
    Some((start, end))
}

/// Decodes one row of the outbound table for a page: the seq from the key,
/// the entry from the value.
pub(crate) fn outbound_row(
    key: &[u8],
    value: &[u8],
) -> Result<(u64, crate::OutboundRecord), StorageError> {
    let (_, seq) = keys::decode_outbound_key(key)?;
    Ok((seq, encoding::decode(value)?))
}

/// Decides what to do with the format version found in a store's meta
/// table when opening it: `Ok(true)` if the version must be written (the
/// store is new, or in an older format this build reads), `Ok(false)` if
/// it matches.
///
/// `stored` is the raw value (`None` if absent); `has_records` tells
/// whether any record table holds something. A store with records but no
/// version was not written by roost (or lost its meta table): it is
/// refused rather than adopted.
pub(crate) fn check_version(
    stored: Option<&[u8]>,
    has_records: bool,
    path: &Path,
) -> Result<bool, StorageError> {
    let Some(raw) = stored else {
        if has_records {
            return Err(StorageError::corrupt(
                "",
                format!(
                    "{}: holds records but no store format version; it was not written by roost, \
                     or its metadata is lost: move it aside to start empty",
                    path.display()
                ),
            ));
        }
        return Ok(true);
    };
    let version = <[u8; 4]>::try_from(raw)
        .map(u32::from_be_bytes)
        .map_err(|_| {
            StorageError::corrupt(
                "",
                format!(
                    "{}: the store format version is {} bytes long, expected 4",
                    path.display(),
                    raw.len()
                ),
            )
        })?;
    if !encoding::readable(version) {
        return Err(encoding::unsupported_format(version));
    }
    // An older format is read as it is, record by record, and the store
    // is marked with this one: records written from now on are in it, and
    // a release that reads only the older one must refuse the store.
    Ok(version != u32::from(FORMAT_VERSION))
}

/// The stored form of [`FORMAT_VERSION`] under [`VERSION_KEY`].
pub(crate) fn version_bytes() -> [u8; 4] {
    u32::from(FORMAT_VERSION).to_be_bytes()
}

/// What [`Rows::rows`] calls for each row, with its key and value.
pub(crate) type Row<'a> = &'a mut dyn FnMut(&[u8], &[u8]) -> Result<(), StorageError>;

/// Ordered reads of the tables, as an engine provides them for [`scan`].
pub(crate) trait Rows {
    /// Passes each row of `table` whose key is in `[start, end)` (every row
    /// if `range` is `None`) to `row`, in key order, holding only the
    /// current row; stops at the first error and returns it (an error of
    /// `row` unchanged).
    fn rows(
        &self,
        table: Table,
        range: Option<(&[u8], &[u8])>,
        row: Row<'_>,
    ) -> Result<(), StorageError>;
}

/// [`Store::scan`](crate::Store::scan) over sorted tables.
///
/// Reads the sessions table front to back; after each session, the range
/// of its client in each per-client table (see [`client_range`]): so the
/// records come in the documented order, orphans are never read, and
/// nothing is kept from one row to the next. Then the messages and
/// retained tables front to back.
pub(crate) fn scan(rows: &dyn Rows, visit: Visit<'_>) -> Result<(), StorageError> {
    rows.rows(Table::Sessions, None, &mut |key, value| {
        let session = session_row(key, value)?;
        let (start, end) = client_range(&session.client_id);
        let range = Some((start.as_slice(), end.as_slice()));
        visit(Record::Session(session))?;
        rows.rows(Table::Subscriptions, range, &mut |key, value| {
            let (client_id, _) = keys::decode_subscription_key(key)?;
            visit(Record::Subscription {
                client_id,
                subscription: encoding::decode(value)?,
            })
        })?;
        rows.rows(Table::Outbound, range, &mut |key, value| {
            let (client_id, seq) = keys::decode_outbound_key(key)?;
            visit(Record::Outbound {
                client_id,
                seq,
                entry: encoding::decode(value)?,
            })
        })?;
        rows.rows(Table::InboundQos2, range, &mut |key, _| {
            let (client_id, packet_id) = keys::decode_inbound_qos2_key(key)?;
            visit(Record::InboundQos2 {
                client_id,
                packet_id,
            })
        })
    })?;
    rows.rows(Table::Messages, None, &mut |key, value| {
        visit(Record::Message {
            id: keys::decode_message_key(key)?,
            message: encoding::decode(value)?,
        })
    })?;
    rows.rows(Table::Retained, None, &mut |_, value| {
        visit(Record::Retained(encoding::decode(value)?))
    })
}

/// Decodes a row of the sessions table, checking that the record is the
/// key's.
fn session_row(key: &[u8], value: &[u8]) -> Result<SessionRecord, StorageError> {
    let client_id = keys::decode_session_key(key)?;
    let session: SessionRecord = encoding::decode(value)?;
    if session.client_id != client_id {
        return Err(StorageError::corrupt(
            "",
            format!(
                "session stored under {client_id:?} is for {:?}",
                session.client_id
            ),
        ));
    }
    Ok(session)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(feature = "sled")]
    fn put(table: Table, key: &[u8]) -> Write {
        Write::Put {
            table,
            key: key.to_vec(),
            value: Vec::new(),
        }
    }

    #[cfg(feature = "sled")]
    #[test]
    fn expanded_ranges_cover_stored_and_batch_keys_only() {
        let (start, end) = client_range("a");
        let writes = vec![
            put(Table::Outbound, &keys::outbound_key("a", 7)),
            put(Table::Outbound, &keys::outbound_key("ab", 1)),
            Write::DeleteRange {
                table: Table::Outbound,
                start: start.clone(),
                end: end.clone(),
            },
            put(Table::Outbound, &keys::outbound_key("a", 8)),
        ];
        let out = expand_ranges(writes, |table, s, e| {
            assert_eq!((table, s, e), (Table::Outbound, &start[..], &end[..]));
            Ok(vec![keys::outbound_key("a", 1)])
        })
        .unwrap();
        let deleted: Vec<_> = out
            .iter()
            .filter_map(|w| match w {
                Write::Delete { key, .. } => Some(keys::decode_outbound_key(key).unwrap()),
                _ => None,
            })
            .collect();
        assert_eq!(deleted, [("a".to_string(), 1), ("a".to_string(), 7)]);
        assert_eq!(out.len(), 5);
        assert_eq!(out[4], put(Table::Outbound, &keys::outbound_key("a", 8)));
    }

    #[test]
    fn outbound_ranges_stay_within_the_client_and_after_the_seq() {
        let (start, end) = outbound_range("a", None).unwrap();
        assert_eq!(
            (start.as_slice(), end.as_slice()),
            (&b"a\0"[..], &b"a\x01"[..])
        );
        let (start, _) = outbound_range("a", Some(255)).unwrap();
        assert_eq!(start, keys::outbound_key("a", 256));
        assert!(start < keys::outbound_key("a", 256 + 1));
        assert!(outbound_range("a", Some(u64::MAX)).is_none());
        assert!(outbound_range("a\0", None).is_none());
    }

    #[test]
    fn version_check() {
        let path = Path::new("/data/roost");
        assert!(check_version(None, false, path).unwrap());
        assert!(!check_version(Some(&version_bytes()), true, path).unwrap());
        let err = check_version(None, true, path).unwrap_err();
        assert!(err.to_string().contains("/data/roost"), "{err}");
        // Format 1 is read, and marked as the current one.
        assert!(check_version(Some(&1u32.to_be_bytes()), true, path).unwrap());
        assert!(matches!(
            check_version(Some(&0u32.to_be_bytes()), true, path),
            Err(StorageError::UnsupportedFormat { found: 0, .. })
        ));
        assert!(matches!(
            check_version(Some(&99u32.to_be_bytes()), true, path),
            Err(StorageError::UnsupportedFormat { found: 99, .. })
        ));
        assert!(matches!(
            check_version(Some(b"x"), false, path),
            Err(StorageError::Corrupt { .. })
        ));
    }
}
