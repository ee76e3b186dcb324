//! The conformance cases of the reads: [`Store::outbound_page`],
//! [`Store::messages`] and [`Store::retained`], checked against what was
//! applied and against [`Store::load`].

use std::path::Path;

use super::{
    apply, everything, find, full_message, load, message, open, outbound, put_message,
    put_outbound, put_session, shuffled, Opener, BOUNDARY_SEQS,
};
use crate::{MessageId, MessageRecord, Op, OutboundRecord, OutboundState, Store};

fn page(
    store: &dyn Store,
    client_id: &str,
    after_seq: Option<u64>,
    limit: usize,
) -> Vec<(u64, OutboundRecord)> {
    match store.outbound_page(client_id, after_seq, limit) {
        Ok(page) => page,
        Err(e) => panic!("outbound_page({client_id:?}, {after_seq:?}, {limit}) failed: {e}"),
    }
}

fn page_seqs(store: &dyn Store, client_id: &str, after_seq: Option<u64>, limit: usize) -> Vec<u64> {
    page(store, client_id, after_seq, limit)
        .into_iter()
        .map(|(seq, _)| seq)
        .collect()
}

/// Every outbound entry of a client, read page by page of `limit`.
fn all_pages(store: &dyn Store, client_id: &str, limit: usize) -> Vec<(u64, OutboundRecord)> {
    let mut all: Vec<(u64, OutboundRecord)> = Vec::new();
    loop {
        let after = all.last().map(|(seq, _)| *seq);
        let next = page(store, client_id, after, limit);
        assert!(
            next.len() <= limit,
            "a page of {} over limit {limit}",
            next.len()
        );
        let last = next.len() < limit;
        all.extend(next);
        if last {
            return all;
        }
    }
}

fn read_messages(store: &dyn Store, ids: &[MessageId]) -> Vec<Option<MessageRecord>> {
    match store.messages(ids) {
        Ok(found) => found,
        Err(e) => panic!("messages({ids:?}) failed: {e}"),
    }
}

fn read_retained(store: &dyn Store, topic: &str) -> Option<MessageRecord> {
    match store.retained(topic) {
        Ok(found) => found,
        Err(e) => panic!("retained({topic:?}) failed: {e}"),
    }
}

/// Checks every read against what `load` returns: each session's outbound
/// entries paged (by 1, 3 and all at once), each body by id and all of them
/// in one call, each retained message by topic.
fn assert_reads_agree_with_load(store: &dyn Store) {
    let snapshot = load(store);
    for s in &snapshot.sessions {
        let id = &s.session.client_id;
        for limit in [1, 3, usize::MAX] {
            assert_eq!(all_pages(store, id, limit), s.outbound, "{id:?} by {limit}");
        }
    }
    let ids: Vec<MessageId> = snapshot.messages.iter().map(|(id, _)| *id).collect();
    let bodies: Vec<Option<MessageRecord>> = snapshot
        .messages
        .iter()
        .map(|(_, m)| Some(m.clone()))
        .collect();
    assert_eq!(read_messages(store, &ids), bodies);
    for m in &snapshot.retained {
        assert_eq!(read_retained(store, &m.topic).as_ref(), Some(m));
    }
}

/// Outbound entries read page by page come in seq order, numerically
/// across byte boundaries up to `u64::MAX`, each with its own entry, and no
/// page is longer than asked.
pub fn outbound_pages_in_seq_order(store: &dyn Store) {
    let mut ops = vec![put_session("c")];
    for i in shuffled(BOUNDARY_SEQS.len()) {
        ops.push(put_outbound("c", BOUNDARY_SEQS[i], i as MessageId));
    }
    apply(store, &ops);
    for limit in [1, 2, 3, 4, BOUNDARY_SEQS.len(), BOUNDARY_SEQS.len() + 1] {
        let all = all_pages(store, "c", limit);
        let seqs: Vec<u64> = all.iter().map(|(seq, _)| *seq).collect();
        assert_eq!(seqs, BOUNDARY_SEQS, "pages of {limit}");
        for (seq, entry) in &all {
            assert_eq!(BOUNDARY_SEQS[entry.message_id as usize], *seq);
        }
    }
    assert_eq!(page_seqs(store, "c", None, 4), BOUNDARY_SEQS[..4]);
    assert_eq!(
        page(store, "c", None, usize::MAX),
        find(&load(store), "c").outbound
    );
}

/// `after_seq` is exclusive and need not be stored; past the last seq, at
/// `u64::MAX`, or with `limit` 0, a page is empty.
pub fn outbound_page_bounds(store: &dyn Store) {
    let mut ops = vec![put_session("c")];
    ops.extend([10, 20, 30, 40].map(|seq| put_outbound("c", seq, 1)));
    apply(store, &ops);
    let all = usize::MAX;
    assert_eq!(page_seqs(store, "c", Some(20), all), [30, 40]);
    assert_eq!(page_seqs(store, "c", Some(25), all), [30, 40]);
    assert_eq!(page_seqs(store, "c", Some(20), 1), [30]);
    assert_eq!(page_seqs(store, "c", Some(0), 2), [10, 20]);
    assert_eq!(page_seqs(store, "c", Some(9), all), [10, 20, 30, 40]);
    assert_eq!(page_seqs(store, "c", Some(39), all), [40]);
    assert!(page(store, "c", Some(40), all).is_empty());
    assert!(page(store, "c", Some(41), all).is_empty());
    assert!(page(store, "c", Some(u64::MAX), all).is_empty());
    assert!(page(store, "c", None, 0).is_empty());
    assert!(page(store, "c", Some(10), 0).is_empty());

    // The extremes of the seq range.
    apply(
        store,
        &[put_outbound("c", 0, 2), put_outbound("c", u64::MAX, 3)],
    );
    assert_eq!(page_seqs(store, "c", None, 1), [0]);
    assert_eq!(page_seqs(store, "c", Some(0), 1), [10]);
    assert_eq!(page_seqs(store, "c", Some(40), all), [u64::MAX]);
    assert_eq!(page_seqs(store, "c", Some(u64::MAX - 1), all), [u64::MAX]);
    assert!(page(store, "c", Some(u64::MAX), all).is_empty());
}

/// A page holds one client's entries only: not those of ids that extend it
/// or sort next to it (`"a"` against `"ab"`, `"a/b"`, `"a0"`, `"a\u{1}"`
/// and `""`), nothing for an unknown client or one without a session
/// record (orphans are left out, as `load` leaves them out), and nothing
/// for an id no client can have (`"a\0"`, whose key prefix would reach into
/// `"a"`'s keys).
pub fn outbound_page_of_unknown_and_neighbouring_clients(store: &dyn Store) {
    let ids = ["", "a", "a/b", "a0", "ab", "a\u{1}", "b"];
    let mut ops = Vec::new();
    for (n, id) in ids.iter().enumerate() {
        let n = n as u64;
        ops.push(put_session(id));
        // Each client's seqs are its own: 100n + 0..3, and one at the top.
        for seq in [100 * n, 100 * n + 1, 100 * n + 2, u64::MAX - n] {
            ops.push(put_outbound(id, seq, n));
        }
    }
    ops.push(put_outbound("ghost", 1, 1));
    apply(store, &ops);
    for (n, id) in ids.iter().enumerate() {
        let n = n as u64;
        let got = page(store, id, None, usize::MAX);
        let seqs: Vec<u64> = got.iter().map(|(seq, _)| *seq).collect();
        assert_eq!(
            seqs,
            [100 * n, 100 * n + 1, 100 * n + 2, u64::MAX - n],
            "{id:?}"
        );
        assert!(got.iter().all(|(_, e)| e.message_id == n), "{id:?}");
        assert_eq!(page_seqs(store, id, Some(100 * n + 2), 1), [u64::MAX - n]);
    }
    assert!(page(store, "zz", None, usize::MAX).is_empty());
    assert!(page(store, "a\0", None, usize::MAX).is_empty());
    assert!(page(store, "a\0\0", Some(0), usize::MAX).is_empty());
    assert!(page(store, "ghost", None, usize::MAX).is_empty());
    apply(store, &[put_session("ghost")]);
    assert_eq!(page_seqs(store, "ghost", None, usize::MAX), [1]);
}

/// A page reflects every applied batch: replaced entries come back new,
/// deleted ones (alone, by a session delete, or put and deleted in one
/// batch) are gone, and a new session with the same id starts empty.
pub fn outbound_page_follows_writes(store: &dyn Store) {
    let mut ops = vec![put_session("c"), put_session("other")];
    ops.extend((1..=6).map(|seq| put_outbound("c", seq, seq)));
    ops.push(put_outbound("other", 3, 3));
    apply(store, &ops);
    let sent = OutboundRecord {
        packet_id: Some(17),
        state: OutboundState::Sent,
        ..outbound(2)
    };
    apply(
        store,
        &[
            Op::DeleteOutbound {
                client_id: "c".into(),
                seq: 1,
            },
            Op::DeleteOutbound {
                client_id: "c".into(),
                seq: 4,
            },
            Op::PutOutbound {
                client_id: "c".into(),
                seq: 2,
                entry: sent.clone(),
            },
            put_outbound("c", 7, 7),
            Op::DeleteOutbound {
                client_id: "c".into(),
                seq: 7,
            },
        ],
    );
    assert_eq!(page_seqs(store, "c", None, usize::MAX), [2, 3, 5, 6]);
    assert_eq!(page(store, "c", None, 1), [(2, sent)]);
    assert_eq!(page_seqs(store, "c", Some(2), 2), [3, 5]);

    apply(
        store,
        &[Op::DeleteSession {
            client_id: "c".into(),
        }],
    );
    assert!(page(store, "c", None, usize::MAX).is_empty());
    assert_eq!(page_seqs(store, "other", None, usize::MAX), [3]);
    apply(store, &[put_session("c")]);
    assert!(page(store, "c", None, usize::MAX).is_empty());
}

/// Bodies read by id: one answer per id in the order asked (repeats
/// answered each time), `None` for ids never stored or deleted, every field
/// kept, and an empty question answered empty.
pub fn messages_by_id(store: &dyn Store) {
    assert!(read_messages(store, &[]).is_empty());
    assert_eq!(read_messages(store, &[1, u64::MAX]), [None, None]);
    let full = full_message("full");
    apply(
        store,
        &[
            put_message(0, "zero"),
            put_message(256, "t/256"),
            Op::PutMessage {
                id: u64::MAX,
                message: full.clone(),
            },
            put_message(7, "gone"),
        ],
    );
    apply(
        store,
        &[Op::DeleteMessage { id: 7 }, put_message(256, "t/256 again")],
    );
    let body = |topic: &str| Some(message(topic, b"body"));
    assert_eq!(
        read_messages(store, &[u64::MAX, 7, 0, 256, 1, 0]),
        [
            Some(full),
            None,
            body("zero"),
            body("t/256 again"),
            None,
            body("zero"),
        ]
    );
    assert!(read_messages(store, &[]).is_empty());
}

/// Retained messages read by exact topic: put, overwritten, deleted;
/// neighbouring topics (`"a"` against `"a/b"`, `"a/"`, `"ab"`) are
/// separate, and a filter is only a topic name like any other.
pub fn retained_by_topic(store: &dyn Store) {
    assert_eq!(read_retained(store, "a"), None);
    let topics = ["a", "a/b", "a/", "ab", "", "温度/🌡"];
    let ops: Vec<Op> = topics
        .iter()
        .map(|t| Op::PutRetained {
            message: message(t, b"first"),
        })
        .collect();
    apply(store, &ops);
    for t in topics {
        assert_eq!(read_retained(store, t), Some(message(t, b"first")), "{t:?}");
    }
    assert_eq!(read_retained(store, "a/#"), None);
    assert_eq!(read_retained(store, "a/c"), None);

    let full = full_message("a");
    apply(
        store,
        &[Op::PutRetained {
            message: full.clone(),
        }],
    );
    assert_eq!(read_retained(store, "a"), Some(full));
    apply(store, &[Op::DeleteRetained { topic: "a".into() }]);
    assert_eq!(read_retained(store, "a"), None);
    assert_eq!(read_retained(store, "a/b"), Some(message("a/b", b"first")));
    // Deleted then put again in one batch: the new one.
    apply(
        store,
        &[
            Op::DeleteRetained { topic: "ab".into() },
            Op::PutRetained {
                message: message("ab", b"second"),
            },
        ],
    );
    assert_eq!(read_retained(store, "ab"), Some(message("ab", b"second")));
}

/// The reads agree with `load` on a store holding a bit of everything,
/// after deletes, and after a session delete.
pub fn reads_agree_with_load(store: &dyn Store) {
    apply(store, &everything());
    assert_reads_agree_with_load(store);
    apply(
        store,
        &[
            Op::DeleteOutbound {
                client_id: "🦀".into(),
                seq: 7,
            },
            Op::DeleteMessage { id: 11 },
            Op::DeleteRetained {
                topic: "r/0".into(),
            },
            Op::DeleteSession {
                client_id: "a".into(),
            },
        ],
    );
    assert_reads_agree_with_load(store);
    assert!(page(store, "a", None, usize::MAX).is_empty());
    assert_eq!(read_messages(store, &[11]), [None]);
}

// ---- reopen case (persistent backends) ----

/// The reads of a reopened store find what was applied before, deletes
/// included, and agree with its `load`.
pub fn reopen_reads_see_everything(opener: Opener<'_>, dir: &Path) {
    let store = open(opener, dir);
    apply(&*store, &everything());
    apply(
        &*store,
        &[
            Op::DeleteOutbound {
                client_id: "🦀".into(),
                seq: 0,
            },
            Op::DeleteMessage { id: 11 },
            Op::DeleteRetained {
                topic: "r/0".into(),
            },
        ],
    );
    drop(store);

    let store = open(opener, dir);
    assert_reads_agree_with_load(&*store);
    let crab: Vec<u64> = (1..50).collect();
    assert_eq!(page_seqs(&*store, "🦀", None, usize::MAX), crab);
    assert_eq!(page_seqs(&*store, "🦀", Some(47), 10), [48, 49]);
    assert_eq!(page_seqs(&*store, "a", None, usize::MAX), [1, u64::MAX]);
    assert!(page(&*store, "ghost", None, usize::MAX).is_empty());
    assert_eq!(
        read_messages(&*store, &[10, 11, u64::MAX]),
        [
            Some(message("x/1", b"body")),
            None,
            Some(full_message("full"))
        ]
    );
    assert_eq!(read_retained(&*store, "r/1"), Some(full_message("r/1")));
    assert_eq!(read_retained(&*store, "r/0"), None);
}
