//! The conformance cases of [`Store::scan`] and [`Store::retained_many`]:
//! a scan passes what `load` returns, in the documented order, and stops
//! at its visitor's error; retained messages are read many at a time.

use std::panic::{self, AssertUnwindSafe};
use std::path::Path;

use super::{
    apply, everything, full_message, load, message, open, outbound, put_inbound, put_message,
    put_outbound, put_session, put_sub, session, subscription, Opener,
};
use crate::{
    MessageRecord, Op, OutboundRecord, OutboundState, Record, Snapshot, StorageError, Store,
};

fn scan_all(store: &dyn Store) -> Vec<Record> {
    let mut records = Vec::new();
    let result = store.scan(&mut |record| {
        records.push(record);
        Ok(())
    });
    if let Err(e) = result {
        panic!("scan failed after {} records: {e}", records.len());
    }
    records
}

fn read_retained_many(store: &dyn Store, topics: &[&str]) -> Vec<Option<MessageRecord>> {
    match store.retained_many(topics) {
        Ok(found) => found,
        Err(e) => panic!("retained_many({topics:?}) failed: {e}"),
    }
}

/// An outbound entry carrying its body inline (its only reference).
fn inline(topic: &str) -> OutboundRecord {
    OutboundRecord {
        message_id: 0,
        qos: 2,
        retain: true,
        packet_id: Some(9),
        state: OutboundState::Sent,
        subscription_identifiers: vec![4],
        message: Some(full_message(topic)),
        stream_seq: 77,
    }
}

/// A store with a bit of everything, written in several batches:
/// [`everything`], plus entries with inline bodies, a session with nothing
/// else, client ids that extend or neighbour others (`"a"`, `"a/"`,
/// `"aa"`, `"ab"`, `""`), and orphans of several kinds: per-client records
/// of clients that never had a session (`"aa"`, `"a/"`), and of one whose
/// session was deleted before they were written (`"gone"`).
fn varied(store: &dyn Store) {
    apply(store, &everything());
    apply(
        store,
        &[
            put_session(""),
            put_inbound("", 2),
            put_session("gone"),
            put_sub("gone", "g/#", 1),
            put_outbound("gone", 5, 10),
            put_session("empty"),
            Op::PutOutbound {
                client_id: "ab".into(),
                seq: 3,
                entry: inline("inline/ab"),
            },
            Op::PutOutbound {
                client_id: "a".into(),
                seq: 2,
                entry: inline("inline/a"),
            },
            put_sub("ab", "", 2),
        ],
    );
    apply(
        store,
        &[
            Op::DeleteSession {
                client_id: "gone".into(),
            },
            // Orphans written after the delete, by per-client puts.
            put_sub("gone", "late", 0),
            put_outbound("gone", 6, 10),
            put_inbound("gone", 7),
            put_sub("aa", "orphan", 1),
            put_outbound("aa", 0, 10),
            put_inbound("aa", 1),
            put_sub("a/", "orphan", 1),
            put_outbound("a/", u64::MAX, 11),
            put_message(3, "third"),
            Op::PutRetained {
                message: message("", b"empty topic"),
            },
        ],
    );
}

/// A scan of a new store passes nothing.
pub fn scan_of_empty_store_passes_nothing(store: &dyn Store) {
    assert_eq!(scan_all(store), []);
}

/// A scan passes exactly what `load` returns, in `load`'s order
/// ([`Snapshot::into_records`]), orphans left out, and collecting it gives
/// `load`'s snapshot; again after deletes and a session delete.
pub fn scan_equals_load(store: &dyn Store) {
    varied(store);
    let check = |store: &dyn Store| {
        let snapshot = load(store);
        let records = scan_all(store);
        assert_eq!(records, snapshot.clone().into_records().collect::<Vec<_>>());
        let collected = Snapshot::from_scan(|visit| store.scan(visit));
        match collected {
            Ok(collected) => assert_eq!(collected, snapshot),
            Err(e) => panic!("collecting a scan failed: {e}"),
        }
        for orphan in ["gone", "aa", "a/", "ghost"] {
            assert!(
                records.iter().all(|r| r.client_id() != Some(orphan)),
                "the scan passed records of the orphan {orphan:?}"
            );
        }
        records
    };
    let records = check(store);
    let sessions: Vec<&str> = records
        .iter()
        .filter_map(|r| match r {
            Record::Session(s) => Some(s.client_id.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(sessions, ["", "a", "ab", "empty", "with-will", "🦀"]);
    assert!(records.contains(&Record::Outbound {
        client_id: "ab".into(),
        seq: 3,
        entry: inline("inline/ab"),
    }));

    apply(
        store,
        &[
            Op::DeleteSession {
                client_id: "a".into(),
            },
            Op::DeleteOutbound {
                client_id: "🦀".into(),
                seq: 0,
            },
            Op::DeleteMessage { id: 10 },
            Op::DeleteRetained {
                topic: "r/1".into(),
            },
        ],
    );
    let records = check(store);
    assert!(records.iter().all(|r| r.client_id() != Some("a")));
    // The session delete took "a"'s records, not those of "ab".
    assert!(records.contains(&Record::Subscription {
        client_id: "ab".into(),
        subscription: subscription("y", 0),
    }));
}

/// The documented order, record by record: each session (by client id,
/// byte order) followed at once by its subscriptions (by filter), outbound
/// entries (by seq, numerically) and inbound QoS 2 ids (ascending), then
/// message bodies by id, then retained messages by topic. Written in
/// scrambled order, with orphans of neighbouring ids (`"a0"`, `"aa"`)
/// that must not be passed as `"a"`'s.
pub fn scan_order_is_documented_order(store: &dyn Store) {
    apply(
        store,
        &[
            Op::PutRetained {
                message: message("r/b", b"b"),
            },
            put_sub("ab", "z", 0),
            put_inbound("a", 300),
            put_outbound("a", 256, 7),
            put_session("ab"),
            put_message(256, "t/256"),
            put_inbound("a", 2),
            put_sub("aa", "orphan", 1),
            put_outbound("a0", 1, 7),
            Op::PutOutbound {
                client_id: "a".into(),
                seq: 1,
                entry: inline("inline"),
            },
            put_sub("a", "b", 1),
            put_sub("a", "$share/g/b", 2),
            put_message(5, "t/5"),
            put_session("a"),
            Op::PutRetained {
                message: message("r/a", b"a"),
            },
            put_inbound("", 1),
            put_session(""),
        ],
    );
    let sub = |client_id: &str, filter: &str, qos: u8| Record::Subscription {
        client_id: client_id.into(),
        subscription: subscription(filter, qos),
    };
    let inbound = |client_id: &str, packet_id: u16| Record::InboundQos2 {
        client_id: client_id.into(),
        packet_id,
    };
    let expected = vec![
        Record::Session(session("")),
        inbound("", 1),
        Record::Session(session("a")),
        sub("a", "$share/g/b", 2),
        sub("a", "b", 1),
        Record::Outbound {
            client_id: "a".into(),
            seq: 1,
            entry: inline("inline"),
        },
        Record::Outbound {
            client_id: "a".into(),
            seq: 256,
            entry: outbound(7),
        },
        inbound("a", 2),
        inbound("a", 300),
        Record::Session(session("ab")),
        sub("ab", "z", 0),
        Record::Message {
            id: 5,
            message: message("t/5", b"body"),
        },
        Record::Message {
            id: 256,
            message: message("t/256", b"body"),
        },
        Record::Retained(message("r/a", b"a")),
        Record::Retained(message("r/b", b"b")),
    ];
    assert_eq!(scan_all(store), expected);
    assert_eq!(load(store).into_records().collect::<Vec<_>>(), expected);
}

/// An error returned by the visitor stops the scan at once, wherever it
/// comes (on a session, on a per-client record, on a body, on the last
/// record), and the scan returns that very error; the store is unchanged
/// and scans whole afterwards.
pub fn visitor_error_stops_the_scan(store: &dyn Store) {
    varied(store);
    let all = scan_all(store);
    let first_outbound = all
        .iter()
        .position(|r| matches!(r, Record::Outbound { .. }))
        .unwrap_or(0);
    let first_message = all
        .iter()
        .position(|r| matches!(r, Record::Message { .. }))
        .unwrap_or(0);
    for stop_at in [0, 1, first_outbound, first_message, all.len() - 1] {
        let mut seen = Vec::new();
        let result = store.scan(&mut |record| {
            seen.push(record);
            if seen.len() > stop_at {
                return Err(StorageError::io("visitor", format!("stop at {stop_at}")));
            }
            Ok(())
        });
        match result {
            Err(StorageError::Io {
                backend: "visitor",
                message,
                source: None,
            }) => assert_eq!(message, format!("stop at {stop_at}")),
            other => panic!("stopping at {stop_at}: expected the visitor's error, got {other:?}"),
        }
        assert_eq!(seen, all[..=stop_at], "stopping at {stop_at}");
    }
    // The visitor's error may name no backend; it still comes back as it
    // is, not as the store's.
    let result = store.scan(&mut |_| Err(StorageError::corrupt("", "mine")));
    match result {
        Err(e @ StorageError::Corrupt { .. }) => assert_eq!(e.backend(), "", "{e}"),
        other => panic!("expected the visitor's error, got {other:?}"),
    }
    assert_eq!(scan_all(store), all);
}

/// A panic in the visitor unwinds out of the scan with its own payload (it
/// is not turned into a storage error), and the store works on.
pub fn visitor_panic_unwinds(store: &dyn Store) {
    varied(store);
    let before = scan_all(store);
    let unwound = panic::catch_unwind(AssertUnwindSafe(|| {
        store.scan(&mut |record| {
            if matches!(record, Record::Outbound { .. }) {
                panic::panic_any("the visitor panics on purpose");
            }
            Ok(())
        })
    }));
    match unwound {
        Err(payload) => assert_eq!(
            payload.downcast_ref::<&str>(),
            Some(&"the visitor panics on purpose")
        ),
        Ok(result) => panic!("the visitor's panic did not unwind: {result:?}"),
    }
    assert_eq!(scan_all(store), before);
    apply(store, &[put_session("after")]);
    assert_eq!(scan_all(store).len(), before.len() + 1);
}

/// Retained messages read many at a time: one answer per topic in the
/// order asked, repeats answered each time, `None` for topics without one
/// (never stored, deleted, a filter, a neighbour of a stored topic), an
/// empty question answered empty, and each answer what `retained` gives.
pub fn retained_many_in_order(store: &dyn Store) {
    assert!(read_retained_many(store, &[]).is_empty());
    assert_eq!(read_retained_many(store, &["a", "a"]), [None, None]);
    let topics = ["a", "a/b", "ab", "", "温度/🌡", "gone"];
    let ops: Vec<Op> = topics
        .iter()
        .map(|t| Op::PutRetained {
            message: message(t, b"v"),
        })
        .collect();
    apply(store, &ops);
    let full = full_message("a/b");
    apply(
        store,
        &[
            Op::DeleteRetained {
                topic: "gone".into(),
            },
            Op::PutRetained {
                message: full.clone(),
            },
        ],
    );
    let asked = [
        "ab",
        "missing",
        "a",
        "ab",
        "",
        "a/#",
        "gone",
        "a/b",
        "a/",
        "温度/🌡",
    ];
    let v = |t: &str| Some(message(t, b"v"));
    assert_eq!(
        read_retained_many(store, &asked),
        [
            v("ab"),
            None,
            v("a"),
            v("ab"),
            v(""),
            None,
            None,
            Some(full),
            None,
            v("温度/🌡"),
        ]
    );
    for topic in asked {
        let one = match store.retained(topic) {
            Ok(found) => found,
            Err(e) => panic!("retained({topic:?}) failed: {e}"),
        };
        assert_eq!(read_retained_many(store, &[topic]), [one], "{topic:?}");
    }
    assert!(read_retained_many(store, &[]).is_empty());
}

// ---- reopen case (persistent backends) ----

/// A reopened store scans to what it loaded before it was dropped, and its
/// `retained_many` finds what was retained.
pub fn reopen_scan_sees_everything(opener: Opener<'_>, dir: &Path) {
    let store = open(opener, dir);
    varied(&*store);
    let before = load(&*store);
    drop(store);

    let store = open(opener, dir);
    assert_eq!(
        scan_all(&*store),
        before.clone().into_records().collect::<Vec<_>>()
    );
    assert_eq!(load(&*store), before);
    assert_eq!(
        read_retained_many(&*store, &["r/1", "nothing", "", "r/0"]),
        [
            Some(full_message("r/1")),
            None,
            Some(message("", b"empty topic")),
            Some(message("r/0", b"zero")),
        ]
    );
}
