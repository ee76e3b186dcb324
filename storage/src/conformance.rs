//! The conformance suite every [`Store`] backend must pass, written once.
//!
//! Each case is a function taking a fresh, empty store; the
//! [`conformance_tests!`](crate::conformance_tests) macro turns them into
//! `#[test]` functions for one backend:
//!
//! ```ignore
//! mod memory_store {
//!     roost_storage::conformance_tests!(roost_storage::MemoryStore::new());
//! }
//! ```
//!
//! The expression is evaluated once per test, so each test gets its own
//! store (a persistent backend would open one in a fresh temporary
//! directory, and its store should own that directory). [`MemoryStore`] is
//! the reference: where this suite is silent, backends behave like it.
//!
//! Persistent backends also run the reopen cases through
//! [`reopen_tests!`](crate::reopen_tests): each opens a store in a
//! directory, writes, drops it, and checks what a store reopened there
//! loads.
//!
//! [`MemoryStore`]: crate::MemoryStore

use std::path::Path;

use bytes::Bytes;

use crate::{
    MessageId, MessageProperties, MessageRecord, Op, OutboundRecord, OutboundState, SessionRecord,
    Snapshot, StorageError, Store, StoredSession, SubscriptionRecord, WillRecord,
};

/// Expands to one `#[test]` per conformance case, each running the case on
/// a fresh store made by evaluating the given expression (its type must
/// implement [`Store`](crate::Store)). Invoke it inside a module of its own
/// to keep the test names apart:
///
/// ```
/// mod memory_store {
///     roost_storage::conformance_tests!(roost_storage::MemoryStore::new());
/// }
/// ```
#[macro_export]
macro_rules! conformance_tests {
    (@cases $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                let store = $make;
                $crate::conformance::$case(&store);
            }
        )*
    };
    ($make:expr $(,)?) => {
        $crate::conformance_tests!(@cases $make;
            empty_store_loads_empty,
            empty_batch_is_accepted,
            session_round_trips,
            session_put_replaces,
            session_delete,
            sessions_ordered_by_client_id,
            subscription_put_replace_delete,
            shared_subscriptions_are_distinct_filters,
            outbound_put_replace_delete,
            outbound_ordered_by_seq,
            inbound_qos2_put_delete_ordered,
            message_put_replace_delete,
            messages_ordered_by_id,
            message_bodies_shared_by_id,
            retained_put_replace_delete,
            delete_session_cascades,
            delete_session_spares_other_clients,
            orphans_are_omitted,
            deleting_absent_records_is_a_no_op,
            batch_put_then_delete_leaves_nothing,
            batch_delete_then_put_leaves_record,
            invalid_batch_applies_nothing,
            large_payloads,
            unicode_ids_and_topics,
            many_ops_in_one_batch,
            load_does_not_change_state,
            recover_keeps_state_and_takes_writes,
            outbound_pages_in_seq_order,
            outbound_page_bounds,
            outbound_page_of_unknown_and_neighbouring_clients,
            outbound_page_follows_writes,
            messages_by_id,
            retained_by_topic,
            reads_agree_with_load,
            scan_of_empty_store_passes_nothing,
            scan_equals_load,
            scan_order_is_documented_order,
            visitor_error_stops_the_scan,
            visitor_panic_unwinds,
            retained_many_in_order,
        );
    };
}

/// Expands to one `#[test]` per reopen case, for a persistent backend.
///
/// Takes an expression making a fresh directory (evaluated once per test;
/// anything that is `AsRef<Path>`, such as a `tempfile::TempDir`, and is
/// kept alive for the test), and a closure opening a store in a directory,
/// returning `Result<impl Store, StorageError>`. Each case opens, drops and
/// reopens stores in that directory:
///
/// ```ignore
/// mod redb_reopen {
///     roost_storage::reopen_tests!(
///         tempfile::tempdir().unwrap(),
///         |dir: &std::path::Path| roost_storage::RedbStore::open(dir),
///     );
/// }
/// ```
#[macro_export]
macro_rules! reopen_tests {
    (@cases $dir:expr, $open:expr; $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                let dir = $dir;
                let open = $open;
                let opener = |path: &::std::path::Path| {
                    open(path).map(|store| {
                        ::std::boxed::Box::new(store) as ::std::boxed::Box<dyn $crate::Store>
                    })
                };
                $crate::conformance::$case(
                    &opener,
                    ::std::convert::AsRef::<::std::path::Path>::as_ref(&dir),
                );
            }
        )*
    };
    ($dir:expr, $open:expr $(,)?) => {
        $crate::reopen_tests!(@cases $dir, $open;
            reopen_empty_store_loads_empty,
            reopen_keeps_everything,
            reopen_keeps_deletes_and_takes_new_writes,
            reopen_after_rejected_batch,
            reopen_after_flush,
            reopen_reads_see_everything,
            reopen_scan_sees_everything,
        );
    };
}

mod reads;
mod scan;
pub use reads::*;
pub use scan::*;

/// Opens a store in a directory (the reopen cases).
pub type Opener<'a> = &'a dyn Fn(&Path) -> Result<Box<dyn Store>, StorageError>;

// ---- fixtures ----

fn session(client_id: &str) -> SessionRecord {
    SessionRecord {
        client_id: client_id.into(),
        protocol_level: 5,
        expiry_interval: 3600,
        disconnected_at_ms: None,
        will: None,
        owner: crate::SessionOwner::Anonymous,
    }
}

fn message(topic: &str, payload: &'static [u8]) -> MessageRecord {
    MessageRecord {
        topic: topic.into(),
        payload: Bytes::from_static(payload),
        qos: 1,
        retain: false,
        properties: MessageProperties::default(),
        expires_at_ms: None,
    }
}

/// A message with every field set.
fn full_message(topic: &str) -> MessageRecord {
    MessageRecord {
        topic: topic.into(),
        payload: Bytes::from_static(b"\x00\xffbinary"),
        qos: 2,
        retain: true,
        properties: MessageProperties {
            payload_format_indicator: Some(1),
            content_type: Some("application/json".into()),
            response_topic: Some("reply/here".into()),
            correlation_data: Some(Bytes::from_static(b"\x01\x02")),
            user_properties: vec![
                ("z".into(), "1".into()),
                ("a".into(), "2".into()),
                ("z".into(), "3".into()),
            ],
        },
        expires_at_ms: Some(1_900_000_000_000),
    }
}

fn subscription(filter: &str, qos: u8) -> SubscriptionRecord {
    SubscriptionRecord {
        filter: filter.into(),
        qos,
        no_local: false,
        retain_as_published: false,
        retain_handling: 0,
        subscription_identifier: None,
    }
}

fn outbound(message_id: MessageId) -> OutboundRecord {
    OutboundRecord {
        message_id,
        qos: 1,
        retain: false,
        packet_id: None,
        state: OutboundState::Queued,
        subscription_identifiers: Vec::new(),
        message: None,
        stream_seq: 0,
    }
}

fn put_session(client_id: &str) -> Op {
    Op::PutSession(session(client_id))
}

fn put_sub(client_id: &str, filter: &str, qos: u8) -> Op {
    Op::PutSubscription {
        client_id: client_id.into(),
        subscription: subscription(filter, qos),
    }
}

fn put_outbound(client_id: &str, seq: u64, message_id: MessageId) -> Op {
    Op::PutOutbound {
        client_id: client_id.into(),
        seq,
        entry: outbound(message_id),
    }
}

fn put_inbound(client_id: &str, packet_id: u16) -> Op {
    Op::PutInboundQos2 {
        client_id: client_id.into(),
        packet_id,
    }
}

fn put_message(id: MessageId, topic: &str) -> Op {
    Op::PutMessage {
        id,
        message: message(topic, b"body"),
    }
}

// ---- helpers ----

fn apply(store: &dyn Store, ops: &[Op]) {
    if let Err(e) = store.apply(ops) {
        panic!("apply of {} ops failed: {e}", ops.len());
    }
}

fn load(store: &dyn Store) -> Snapshot {
    match store.load() {
        Ok(snapshot) => snapshot,
        Err(e) => panic!("load failed: {e}"),
    }
}

fn client_ids(snapshot: &Snapshot) -> Vec<&str> {
    snapshot
        .sessions
        .iter()
        .map(|s| s.session.client_id.as_str())
        .collect()
}

fn find<'a>(snapshot: &'a Snapshot, client_id: &str) -> &'a StoredSession {
    match snapshot
        .sessions
        .iter()
        .find(|s| s.session.client_id == client_id)
    {
        Some(s) => s,
        None => panic!("session {client_id:?} missing from snapshot"),
    }
}

fn filters(s: &StoredSession) -> Vec<&str> {
    s.subscriptions.iter().map(|s| s.filter.as_str()).collect()
}

fn seqs(s: &StoredSession) -> Vec<u64> {
    s.outbound.iter().map(|(seq, _)| *seq).collect()
}

fn topics(snapshot: &Snapshot) -> Vec<&str> {
    snapshot.retained.iter().map(|m| m.topic.as_str()).collect()
}

/// Sequence numbers across byte boundaries, ascending.
const BOUNDARY_SEQS: &[u64] = &[
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

/// A fixed shuffle of `0..n`, so inserts do not arrive in order.
fn shuffled(n: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    for i in (1..n).rev() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let j = (state % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    order
}

// ---- cases ----

/// A new store loads as an empty snapshot.
pub fn empty_store_loads_empty(store: &dyn Store) {
    assert_eq!(load(store), Snapshot::default());
}

/// An empty batch succeeds and changes nothing.
pub fn empty_batch_is_accepted(store: &dyn Store) {
    apply(store, &[]);
    assert_eq!(load(store), Snapshot::default());
}

/// A session record, with a will, comes back unchanged.
pub fn session_round_trips(store: &dyn Store) {
    let record = SessionRecord {
        client_id: "client-1".into(),
        protocol_level: 5,
        expiry_interval: u32::MAX,
        disconnected_at_ms: Some(1_700_000_000_123),
        will: Some(WillRecord {
            message: full_message("will/topic"),
            delay_interval: 60,
            message_expiry_interval: None,
        }),
        owner: crate::SessionOwner::User("alice".into()),
    };
    apply(store, &[Op::PutSession(record.clone())]);
    let snapshot = load(store);
    assert_eq!(
        snapshot.sessions,
        vec![StoredSession {
            session: record,
            subscriptions: vec![],
            outbound: vec![],
            inbound_qos2: vec![],
        }]
    );
    assert!(snapshot.messages.is_empty());
    assert!(snapshot.retained.is_empty());
}

/// Putting a session again replaces the record and keeps what belongs to it.
pub fn session_put_replaces(store: &dyn Store) {
    apply(
        store,
        &[
            put_session("c"),
            put_sub("c", "a/#", 1),
            put_inbound("c", 7),
        ],
    );
    let mut replaced = session("c");
    replaced.protocol_level = 4;
    replaced.disconnected_at_ms = Some(5);
    apply(store, &[Op::PutSession(replaced.clone())]);
    let snapshot = load(store);
    assert_eq!(snapshot.sessions.len(), 1);
    let s = find(&snapshot, "c");
    assert_eq!(s.session, replaced);
    assert_eq!(filters(s), ["a/#"]);
    assert_eq!(s.inbound_qos2, [7]);
}

/// A deleted session is gone.
pub fn session_delete(store: &dyn Store) {
    apply(store, &[put_session("a"), put_session("b")]);
    apply(
        store,
        &[Op::DeleteSession {
            client_id: "a".into(),
        }],
    );
    assert_eq!(client_ids(&load(store)), ["b"]);
}

/// Sessions load ordered by client id (byte order of the UTF-8).
pub fn sessions_ordered_by_client_id(store: &dyn Store) {
    let ids = ["b", "", "ab", "a", "B", "a0", "a/b", "é", "z", "10", "9"];
    let ops: Vec<Op> = ids.iter().map(|id| put_session(id)).collect();
    apply(store, &ops);
    let mut expected = ids.to_vec();
    expected.sort();
    assert_eq!(client_ids(&load(store)), expected);
}

/// Subscriptions are keyed by (client, filter): put, replace and delete.
pub fn subscription_put_replace_delete(store: &dyn Store) {
    let mut detailed = subscription("x/+/y", 2);
    detailed.no_local = true;
    detailed.retain_as_published = true;
    detailed.retain_handling = 2;
    detailed.subscription_identifier = Some(268_435_455);
    apply(
        store,
        &[
            put_session("c"),
            put_sub("c", "b/#", 0),
            put_sub("c", "a", 1),
            Op::PutSubscription {
                client_id: "c".into(),
                subscription: detailed.clone(),
            },
        ],
    );
    let snapshot = load(store);
    let s = find(&snapshot, "c");
    assert_eq!(filters(s), ["a", "b/#", "x/+/y"]);
    assert_eq!(s.subscriptions[2], detailed);

    apply(store, &[put_sub("c", "a", 2)]);
    let snapshot = load(store);
    let s = find(&snapshot, "c");
    assert_eq!(s.subscriptions.len(), 3);
    assert_eq!(s.subscriptions[0], subscription("a", 2));

    apply(
        store,
        &[Op::DeleteSubscription {
            client_id: "c".into(),
            filter: "b/#".into(),
        }],
    );
    assert_eq!(filters(find(&load(store), "c")), ["a", "x/+/y"]);
}

/// `$share` filters are ordinary keys: each group and the plain filter are
/// separate subscriptions, and one client's filters do not touch another's.
pub fn shared_subscriptions_are_distinct_filters(store: &dyn Store) {
    apply(
        store,
        &[
            put_session("c1"),
            put_session("c2"),
            put_sub("c1", "$share/g1/t/#", 1),
            put_sub("c1", "$share/g2/t/#", 2),
            put_sub("c1", "t/#", 0),
            put_sub("c2", "$share/g1/t/#", 0),
        ],
    );
    apply(
        store,
        &[Op::DeleteSubscription {
            client_id: "c1".into(),
            filter: "$share/g1/t/#".into(),
        }],
    );
    let snapshot = load(store);
    let c1 = find(&snapshot, "c1");
    assert_eq!(filters(c1), ["$share/g2/t/#", "t/#"]);
    assert_eq!(c1.subscriptions[0].qos, 2);
    assert_eq!(filters(find(&snapshot, "c2")), ["$share/g1/t/#"]);
}

/// Outbound entries are keyed by (client, seq): put, replace and delete.
pub fn outbound_put_replace_delete(store: &dyn Store) {
    apply(
        store,
        &[
            put_session("c"),
            put_message(1, "t"),
            put_outbound("c", 1, 1),
            put_outbound("c", 2, 1),
        ],
    );
    let sent = OutboundRecord {
        message_id: 1,
        qos: 2,
        retain: true,
        packet_id: Some(65_535),
        state: OutboundState::Sent,
        subscription_identifiers: vec![3, 1],
        message: None,
        // The largest: every backend keeps all 64 bits.
        stream_seq: u64::MAX,
    };
    apply(
        store,
        &[Op::PutOutbound {
            client_id: "c".into(),
            seq: 1,
            entry: sent.clone(),
        }],
    );
    let snapshot = load(store);
    assert_eq!(find(&snapshot, "c").outbound, [(1, sent), (2, outbound(1))]);

    let released = OutboundRecord {
        state: OutboundState::Released,
        packet_id: Some(9),
        ..outbound(1)
    };
    apply(
        store,
        &[
            Op::DeleteOutbound {
                client_id: "c".into(),
                seq: 1,
            },
            Op::PutOutbound {
                client_id: "c".into(),
                seq: 2,
                entry: released.clone(),
            },
        ],
    );
    assert_eq!(find(&load(store), "c").outbound, [(2, released)]);
}

/// Outbound entries load ordered by seq, numerically, across byte
/// boundaries and up to `u64::MAX`.
pub fn outbound_ordered_by_seq(store: &dyn Store) {
    let mut ops = vec![put_session("c")];
    for i in shuffled(BOUNDARY_SEQS.len()) {
        ops.push(put_outbound("c", BOUNDARY_SEQS[i], i as MessageId));
    }
    apply(store, &ops);
    let snapshot = load(store);
    let s = find(&snapshot, "c");
    assert_eq!(seqs(s), BOUNDARY_SEQS);
    // Each entry stayed with its own seq.
    for (seq, entry) in &s.outbound {
        assert_eq!(BOUNDARY_SEQS[entry.message_id as usize], *seq);
    }
}

/// Inbound QoS 2 ids: put (idempotent), delete, ascending order.
pub fn inbound_qos2_put_delete_ordered(store: &dyn Store) {
    apply(
        store,
        &[
            put_session("c"),
            put_inbound("c", 256),
            put_inbound("c", 65_535),
            put_inbound("c", 1),
            put_inbound("c", 255),
            put_inbound("c", 2),
            put_inbound("c", 256),
            put_inbound("other", 3),
        ],
    );
    assert_eq!(
        find(&load(store), "c").inbound_qos2,
        [1, 2, 255, 256, 65_535]
    );
    apply(
        store,
        &[Op::DeleteInboundQos2 {
            client_id: "c".into(),
            packet_id: 255,
        }],
    );
    assert_eq!(find(&load(store), "c").inbound_qos2, [1, 2, 256, 65_535]);
}

/// Message bodies: put, replace and delete by id, with every field kept.
pub fn message_put_replace_delete(store: &dyn Store) {
    apply(store, &[put_message(7, "a"), put_message(8, "b")]);
    let full = full_message("c/d");
    apply(
        store,
        &[Op::PutMessage {
            id: 7,
            message: full.clone(),
        }],
    );
    let snapshot = load(store);
    assert_eq!(
        snapshot.messages,
        [(7, full.clone()), (8, message("b", b"body"))]
    );
    assert!(snapshot.sessions.is_empty());
    apply(store, &[Op::DeleteMessage { id: 8 }]);
    assert_eq!(load(store).messages, [(7, full)]);
}

/// Message bodies load ordered by id, numerically.
pub fn messages_ordered_by_id(store: &dyn Store) {
    let ops: Vec<Op> = shuffled(BOUNDARY_SEQS.len())
        .into_iter()
        .map(|i| put_message(BOUNDARY_SEQS[i], &format!("t/{i}")))
        .collect();
    apply(store, &ops);
    let ids: Vec<MessageId> = load(store).messages.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids, BOUNDARY_SEQS);
}

/// One body serves every outbound entry that names its id; deleting an
/// entry leaves the body, deleting the body leaves the entries.
pub fn message_bodies_shared_by_id(store: &dyn Store) {
    apply(
        store,
        &[
            put_message(42, "news"),
            put_session("a"),
            put_session("b"),
            put_outbound("a", 1, 42),
            put_outbound("b", 9, 42),
        ],
    );
    let snapshot = load(store);
    assert_eq!(snapshot.messages.len(), 1);
    assert_eq!(find(&snapshot, "a").outbound[0].1.message_id, 42);
    assert_eq!(find(&snapshot, "b").outbound[0].1.message_id, 42);

    apply(
        store,
        &[Op::DeleteOutbound {
            client_id: "a".into(),
            seq: 1,
        }],
    );
    assert_eq!(load(store).messages.len(), 1);

    apply(store, &[Op::DeleteMessage { id: 42 }]);
    let snapshot = load(store);
    assert!(snapshot.messages.is_empty());
    assert_eq!(seqs(find(&snapshot, "b")), [9]);
}

/// Retained messages are keyed by topic: put, replace, delete, ordered.
pub fn retained_put_replace_delete(store: &dyn Store) {
    apply(
        store,
        &[
            Op::PutRetained {
                message: message("b/c", b"1"),
            },
            Op::PutRetained {
                message: message("a", b"2"),
            },
            Op::PutRetained {
                message: message("b", b"3"),
            },
        ],
    );
    assert_eq!(topics(&load(store)), ["a", "b", "b/c"]);
    let full = full_message("b");
    apply(
        store,
        &[Op::PutRetained {
            message: full.clone(),
        }],
    );
    let snapshot = load(store);
    assert_eq!(topics(&snapshot), ["a", "b", "b/c"]);
    assert_eq!(snapshot.retained[1], full);
    apply(
        store,
        &[Op::DeleteRetained {
            topic: "b/c".into(),
        }],
    );
    assert_eq!(topics(&load(store)), ["a", "b"]);
}

/// Deleting a session deletes its subscriptions, outbound entries and
/// inbound ids, but not message bodies or retained messages; a new session
/// with the same id starts empty.
pub fn delete_session_cascades(store: &dyn Store) {
    apply(
        store,
        &[
            put_session("c"),
            put_sub("c", "a/#", 1),
            put_sub("c", "$share/g/b", 1),
            put_message(1, "a/x"),
            put_outbound("c", 1, 1),
            put_outbound("c", u64::MAX, 1),
            put_inbound("c", 10),
            Op::PutRetained {
                message: message("a/x", b"r"),
            },
        ],
    );
    apply(
        store,
        &[Op::DeleteSession {
            client_id: "c".into(),
        }],
    );
    let snapshot = load(store);
    assert!(snapshot.sessions.is_empty());
    assert_eq!(snapshot.messages.len(), 1);
    assert_eq!(snapshot.retained.len(), 1);

    apply(store, &[put_session("c")]);
    let snapshot = load(store);
    let s = find(&snapshot, "c");
    assert!(s.subscriptions.is_empty());
    assert!(s.outbound.is_empty());
    assert!(s.inbound_qos2.is_empty());
}

/// The cascade stays within one client id, even for ids that extend it or
/// sort next to it (`"a"` against `"ab"`, `"a/b"`, `"a0"` and `""`).
pub fn delete_session_spares_other_clients(store: &dyn Store) {
    let ids = ["", "a", "a/b", "a0", "ab", "a\u{1}", "b"];
    let mut ops = Vec::new();
    for id in ids {
        ops.extend([
            put_session(id),
            put_sub(id, "t", 1),
            put_outbound(id, 0, 1),
            put_outbound(id, 256, 1),
            put_inbound(id, 1),
        ]);
    }
    apply(store, &ops);
    apply(
        store,
        &[
            Op::DeleteSession {
                client_id: "a".into(),
            },
            Op::DeleteSession {
                client_id: "".into(),
            },
        ],
    );
    let snapshot = load(store);
    let mut expected: Vec<&str> = ids
        .into_iter()
        .filter(|id| !matches!(*id, "" | "a"))
        .collect();
    expected.sort();
    assert_eq!(client_ids(&snapshot), expected);
    for s in &snapshot.sessions {
        assert_eq!(filters(s), ["t"], "{:?}", s.session.client_id);
        assert_eq!(seqs(s), [0, 256], "{:?}", s.session.client_id);
        assert_eq!(s.inbound_qos2, [1], "{:?}", s.session.client_id);
    }
}

/// Entries for a client with no session record are stored but left out of
/// the snapshot; they appear once the session is written.
pub fn orphans_are_omitted(store: &dyn Store) {
    apply(
        store,
        &[
            put_session("live"),
            put_sub("ghost", "a", 1),
            put_outbound("ghost", 1, 1),
            put_inbound("ghost", 1),
        ],
    );
    assert_eq!(client_ids(&load(store)), ["live"]);

    apply(store, &[put_session("ghost")]);
    let snapshot = load(store);
    let ghost = find(&snapshot, "ghost");
    assert_eq!(filters(ghost), ["a"]);
    assert_eq!(seqs(ghost), [1]);
    assert_eq!(ghost.inbound_qos2, [1]);
}

/// Deleting what does not exist succeeds and changes nothing.
pub fn deleting_absent_records_is_a_no_op(store: &dyn Store) {
    apply(store, &[put_session("c"), put_sub("c", "a", 0)]);
    let before = load(store);
    apply(
        store,
        &[
            Op::DeleteSession {
                client_id: "nobody".into(),
            },
            Op::DeleteSubscription {
                client_id: "c".into(),
                filter: "zzz".into(),
            },
            Op::DeleteSubscription {
                client_id: "nobody".into(),
                filter: "a".into(),
            },
            Op::DeleteOutbound {
                client_id: "c".into(),
                seq: 5,
            },
            Op::DeleteInboundQos2 {
                client_id: "c".into(),
                packet_id: 5,
            },
            Op::DeleteMessage { id: 5 },
            Op::DeleteRetained { topic: "x".into() },
        ],
    );
    assert_eq!(load(store), before);
}

/// Ops of one batch apply in order: a put followed by its delete leaves
/// nothing.
pub fn batch_put_then_delete_leaves_nothing(store: &dyn Store) {
    apply(
        store,
        &[
            put_session("keep"),
            put_session("c"),
            put_sub("keep", "a", 0),
            Op::DeleteSubscription {
                client_id: "keep".into(),
                filter: "a".into(),
            },
            put_message(1, "t"),
            Op::DeleteMessage { id: 1 },
            put_outbound("keep", 1, 1),
            Op::DeleteOutbound {
                client_id: "keep".into(),
                seq: 1,
            },
            put_inbound("keep", 1),
            Op::DeleteInboundQos2 {
                client_id: "keep".into(),
                packet_id: 1,
            },
            Op::PutRetained {
                message: message("t", b"x"),
            },
            Op::DeleteRetained { topic: "t".into() },
            Op::DeleteSession {
                client_id: "c".into(),
            },
        ],
    );
    let snapshot = load(store);
    assert_eq!(
        snapshot.sessions,
        [StoredSession {
            session: session("keep"),
            subscriptions: vec![],
            outbound: vec![],
            inbound_qos2: vec![],
        }]
    );
    assert!(snapshot.messages.is_empty());
    assert!(snapshot.retained.is_empty());
}

/// Ops of one batch apply in order: a delete followed by a put leaves the
/// record.
pub fn batch_delete_then_put_leaves_record(store: &dyn Store) {
    apply(
        store,
        &[
            put_session("c"),
            put_sub("c", "old", 0),
            put_message(1, "t"),
        ],
    );
    apply(
        store,
        &[
            Op::DeleteSession {
                client_id: "c".into(),
            },
            put_session("c"),
            put_sub("c", "new", 1),
            Op::DeleteMessage { id: 1 },
            put_message(1, "t2"),
            Op::DeleteRetained { topic: "r".into() },
            Op::PutRetained {
                message: message("r", b"x"),
            },
            Op::DeleteOutbound {
                client_id: "c".into(),
                seq: 3,
            },
            put_outbound("c", 3, 1),
            Op::DeleteInboundQos2 {
                client_id: "c".into(),
                packet_id: 4,
            },
            put_inbound("c", 4),
        ],
    );
    let snapshot = load(store);
    let c = find(&snapshot, "c");
    assert_eq!(filters(c), ["new"]);
    assert_eq!(seqs(c), [3]);
    assert_eq!(c.inbound_qos2, [4]);
    assert_eq!(snapshot.messages, [(1, message("t2", b"body"))]);
    assert_eq!(topics(&snapshot), ["r"]);
}

/// A batch holding an op no backend can store (a client id with U+0000) is
/// rejected with [`StorageError::InvalidOp`], and none of it is applied.
pub fn invalid_batch_applies_nothing(store: &dyn Store) {
    apply(store, &[put_session("c")]);
    let before = load(store);
    let result = store.apply(&[
        put_session("new"),
        put_message(1, "t"),
        Op::DeleteSession {
            client_id: "c".into(),
        },
        put_sub("bad\0id", "a", 0),
    ]);
    assert!(
        matches!(result, Err(StorageError::InvalidOp { .. })),
        "expected InvalidOp, got {result:?}"
    );
    assert_eq!(load(store), before);
}

/// Payloads of 1 MiB are stored whole, as message bodies, retained messages
/// and wills.
pub fn large_payloads(store: &dyn Store) {
    let payload: Bytes = (0..1 << 20).map(|i: u32| (i % 251) as u8).collect();
    let big = MessageRecord {
        payload: payload.clone(),
        ..message("big", b"")
    };
    let mut with_will = session("c");
    with_will.will = Some(WillRecord {
        message: big.clone(),
        delay_interval: 0,
        message_expiry_interval: None,
    });
    apply(
        store,
        &[
            Op::PutMessage {
                id: 1,
                message: big.clone(),
            },
            Op::PutRetained {
                message: big.clone(),
            },
            Op::PutSession(with_will.clone()),
        ],
    );
    let snapshot = load(store);
    assert_eq!(snapshot.messages, [(1, big.clone())]);
    assert_eq!(snapshot.retained, [big]);
    assert_eq!(find(&snapshot, "c").session, with_will);
}

/// Client ids, filters and topics may hold any UTF-8 but U+0000; they come
/// back unchanged and ordered by their bytes.
pub fn unicode_ids_and_topics(store: &dyn Store) {
    let ids = [
        "客户端",
        "клиент-1",
        "🦀",
        "e\u{301}",
        "é",
        "\u{ffff}",
        "\u{1}",
    ];
    let mut ops = Vec::new();
    for id in ids {
        ops.push(put_session(id));
        ops.push(put_sub(id, "温度/+/🌡", 1));
        ops.push(put_sub(id, "$share/グループ/#", 0));
        ops.push(put_outbound(id, 1, 1));
        ops.push(Op::PutRetained {
            message: message(&format!("{id}/状态"), b"on"),
        });
    }
    apply(store, &ops);
    let snapshot = load(store);
    let mut expected = ids.to_vec();
    expected.sort();
    assert_eq!(client_ids(&snapshot), expected);
    for s in &snapshot.sessions {
        assert_eq!(filters(s), ["$share/グループ/#", "温度/+/🌡"]);
        assert_eq!(seqs(s), [1]);
    }
    let mut expected_topics: Vec<String> = ids.iter().map(|id| format!("{id}/状态")).collect();
    expected_topics.sort();
    assert_eq!(topics(&snapshot), expected_topics);

    apply(
        store,
        &[Op::DeleteSession {
            client_id: "🦀".into(),
        }],
    );
    assert_eq!(load(store).sessions.len(), ids.len() - 1);
}

/// One batch of 10 000 ops applies whole.
pub fn many_ops_in_one_batch(store: &dyn Store) {
    const N: u64 = 2_500;
    let mut ops = vec![put_session("bulk")];
    for i in 0..N {
        ops.push(put_message(i, "bulk/t"));
        ops.push(put_outbound("bulk", i, i));
        ops.push(put_sub("bulk", &format!("f/{i:05}"), 1));
    }
    for i in 0..N - 1 {
        ops.push(Op::PutRetained {
            message: message(&format!("r/{i:05}"), b"x"),
        });
    }
    assert_eq!(ops.len(), 10_000);
    apply(store, &ops);
    let snapshot = load(store);
    let s = find(&snapshot, "bulk");
    assert_eq!(s.outbound.len() as u64, N);
    assert!(s.outbound.windows(2).all(|w| w[0].0 < w[1].0));
    assert_eq!(s.subscriptions.len() as u64, N);
    assert_eq!(snapshot.messages.len() as u64, N);
    assert_eq!(snapshot.retained.len() as u64, N - 1);
}

/// Loading twice gives the same snapshot; loading changes nothing.
pub fn load_does_not_change_state(store: &dyn Store) {
    apply(
        store,
        &[
            put_session("c"),
            put_sub("c", "a", 1),
            put_message(1, "t"),
            put_outbound("c", 1, 1),
        ],
    );
    let first = load(store);
    assert_eq!(load(store), first);
    apply(store, &[put_inbound("c", 1)]);
    assert_eq!(find(&load(store), "c").inbound_qos2, [1]);
}

/// `recover` on a store whose writes did not fail (or only had a batch
/// rejected) changes nothing, and the store keeps working after it.
pub fn recover_keeps_state_and_takes_writes(store: &dyn Store) {
    apply(store, &[put_session("c"), put_sub("c", "a", 1)]);
    if let Err(e) = store.recover() {
        panic!("recover failed: {e}");
    }
    let before = load(store);
    let rejected = store.apply(&[put_session("lost"), put_session("bad\0id")]);
    assert!(matches!(rejected, Err(StorageError::InvalidOp { .. })));
    if let Err(e) = store.recover() {
        panic!("recover after a rejected batch failed: {e}");
    }
    assert_eq!(load(store), before);
    apply(store, &[put_message(1, "t"), put_outbound("c", 1, 1)]);
    assert_eq!(seqs(find(&load(store), "c")), [1]);
}

// ---- reopen cases (persistent backends) ----

fn open(opener: Opener<'_>, dir: &Path) -> Box<dyn Store> {
    match opener(dir) {
        Ok(store) => store,
        Err(e) => panic!("cannot open a store in {}: {e}", dir.display()),
    }
}

/// A batch touching every kind of record, including an orphan.
fn everything() -> Vec<Op> {
    let mut ops = vec![
        Op::PutSession(SessionRecord {
            client_id: "with-will".into(),
            protocol_level: 5,
            expiry_interval: u32::MAX,
            disconnected_at_ms: Some(1_700_000_000_000),
            will: Some(WillRecord {
                message: full_message("will/t"),
                delay_interval: 5,
                message_expiry_interval: Some(30),
            }),
            owner: crate::SessionOwner::User("bob".into()),
        }),
        put_session("a"),
        put_session("ab"),
        put_session("🦀"),
        put_sub("a", "x/#", 1),
        put_sub("a", "$share/g/x", 2),
        put_sub("ab", "y", 0),
        put_outbound("a", 1, 10),
        put_outbound("a", u64::MAX, 11),
        Op::PutOutbound {
            client_id: "ab".into(),
            seq: 256,
            entry: OutboundRecord {
                message_id: 10,
                qos: 2,
                retain: true,
                packet_id: Some(7),
                state: OutboundState::Released,
                subscription_identifiers: vec![1, 268_435_455],
                message: None,
                stream_seq: 4_000_000_001,
            },
        },
        put_inbound("a", 65_535),
        put_inbound("a", 1),
        put_inbound("🦀", 3),
        put_sub("ghost", "orphan", 1),
        put_outbound("ghost", 1, 10),
        put_message(10, "x/1"),
        put_message(11, "x/2"),
        Op::PutMessage {
            id: u64::MAX,
            message: full_message("full"),
        },
        Op::PutRetained {
            message: full_message("r/1"),
        },
        Op::PutRetained {
            message: message("r/0", b"zero"),
        },
    ];
    ops.extend(
        shuffled(50)
            .into_iter()
            .map(|i| put_outbound("🦀", i as u64, 11)),
    );
    ops
}

/// A store opened in a fresh directory is empty, and stays empty when
/// reopened.
pub fn reopen_empty_store_loads_empty(opener: Opener<'_>, dir: &Path) {
    let store = open(opener, dir);
    assert!(store.is_persistent());
    assert_eq!(load(&*store), Snapshot::default());
    drop(store);
    assert_eq!(load(&*open(opener, dir)), Snapshot::default());
}

/// Everything applied comes back, unchanged and in order, after the store
/// is dropped and reopened (twice).
pub fn reopen_keeps_everything(opener: Opener<'_>, dir: &Path) {
    let store = open(opener, dir);
    apply(&*store, &everything());
    apply(
        &*store,
        &[
            Op::DeleteOutbound {
                client_id: "a".into(),
                seq: 1,
            },
            Op::DeleteRetained {
                topic: "r/0".into(),
            },
        ],
    );
    let before = load(&*store);
    assert_eq!(client_ids(&before), ["a", "ab", "with-will", "🦀"]);
    drop(store);

    let store = open(opener, dir);
    assert_eq!(load(&*store), before);
    drop(store);
    assert_eq!(load(&*open(opener, dir)), before);
}

/// Deletes (a session's cascade included) are durable too, and a reopened
/// store takes new writes.
pub fn reopen_keeps_deletes_and_takes_new_writes(opener: Opener<'_>, dir: &Path) {
    let store = open(opener, dir);
    apply(&*store, &everything());
    drop(store);

    let store = open(opener, dir);
    apply(
        &*store,
        &[
            Op::DeleteSession {
                client_id: "a".into(),
            },
            Op::DeleteMessage { id: 11 },
            put_session("new"),
            put_sub("new", "n", 1),
        ],
    );
    let before = load(&*store);
    drop(store);

    let store = open(opener, dir);
    let after = load(&*store);
    assert_eq!(after, before);
    assert_eq!(client_ids(&after), ["ab", "new", "with-will", "🦀"]);
    // The cascade removed "a"'s entries on disk, not only from the snapshot.
    apply(&*store, &[put_session("a")]);
    let s = load(&*store);
    let a = find(&s, "a");
    assert!(a.subscriptions.is_empty() && a.outbound.is_empty() && a.inbound_qos2.is_empty());
}

/// A rejected batch leaves nothing on disk.
pub fn reopen_after_rejected_batch(opener: Opener<'_>, dir: &Path) {
    let store = open(opener, dir);
    apply(&*store, &[put_session("kept")]);
    let rejected = store.apply(&[put_session("lost"), put_session("bad\0id")]);
    assert!(matches!(rejected, Err(StorageError::InvalidOp { .. })));
    drop(store);
    assert_eq!(client_ids(&load(&*open(opener, dir))), ["kept"]);
}

/// `flush` succeeds, and what was applied before it survives reopening.
pub fn reopen_after_flush(opener: Opener<'_>, dir: &Path) {
    let store = open(opener, dir);
    apply(&*store, &everything());
    if let Err(e) = store.flush() {
        panic!("flush failed: {e}");
    }
    let before = load(&*store);
    drop(store);
    assert_eq!(load(&*open(opener, dir)), before);
}
