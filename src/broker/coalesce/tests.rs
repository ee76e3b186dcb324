//! The coalescing rules checked against the reference store: examples, and
//! a property over operation sequences shaped like the broker's.

use super::*;
use proptest::prelude::*;
use roost_storage::{
    MemoryStore, MessageRecord, OutboundRecord, OutboundState, SessionRecord, Snapshot, Store,
};

fn msg(id: u64) -> Op {
    Op::PutMessage {
        id,
        message: MessageRecord {
            topic: "t".into(),
            payload: bytes::Bytes::from_static(b"x"),
            qos: 1,
            retain: false,
            properties: Default::default(),
            expires_at_ms: None,
        },
    }
}

fn out(client: &str, seq: u64, id: u64, state: OutboundState) -> Op {
    Op::PutOutbound {
        client_id: client.into(),
        seq,
        entry: OutboundRecord {
            message_id: id,
            qos: 1,
            retain: false,
            packet_id: Some(1),
            state,
            subscription_identifiers: vec![],
            message: None,
            stream_seq: 0,
        },
    }
}

fn del_out(client: &str, seq: u64) -> Op {
    Op::DeleteOutbound {
        client_id: client.into(),
        seq,
    }
}

fn session(client: &str) -> Op {
    Op::PutSession(SessionRecord {
        client_id: client.into(),
        protocol_level: 5,
        expiry_interval: 60,
        disconnected_at_ms: None,
        will: None,
        owner: roost_storage::SessionOwner::Anonymous,
    })
}

/// The coalesced group leaves the store exactly as the original one.
fn same_effect(before: &[Op], group: Vec<Op>) -> usize {
    same_effect_created(before, group, &Created::new())
}

fn same_effect_created(before: &[Op], group: Vec<Op>, created: &Created) -> usize {
    let a = MemoryStore::new();
    let b = MemoryStore::new();
    a.apply(before).unwrap();
    b.apply(before).unwrap();
    a.apply(&group).unwrap();
    let short = coalesce(group, created);
    b.apply(&short).unwrap();
    assert_eq!(a.load().unwrap(), b.load().unwrap());
    short.len()
}

#[test]
fn a_message_delivered_within_the_group_leaves_one_delete() {
    let before = [session("s")];
    let group = vec![
        msg(1),
        out("s", 1, 1, OutboundState::Sent),
        del_out("s", 1),
        Op::DeleteMessage { id: 1 },
    ];
    assert_eq!(same_effect(&before, group), 1);
}

#[test]
fn an_entry_created_and_delivered_within_the_group_leaves_nothing() {
    let before = [session("s")];
    let group = vec![
        msg(1),
        out("s", 1, 1, OutboundState::Sent),
        del_out("s", 1),
        Op::DeleteMessage { id: 1 },
    ];
    let created = created(&[("s", 1)]);
    assert_eq!(same_effect_created(&before, group, &created), 0);
}

#[test]
fn entries_from_earlier_groups_are_still_deleted() {
    let before = [session("s"), msg(1), out("s", 1, 1, OutboundState::Sent)];
    let group = vec![
        out("s", 1, 1, OutboundState::Released),
        del_out("s", 1),
        Op::DeleteMessage { id: 1 },
    ];
    // The body was stored earlier: its delete must stay.
    assert_eq!(same_effect(&before, group), 2);
}

#[test]
fn only_the_last_write_of_an_entry_is_kept() {
    let before = [session("s")];
    let group = vec![
        msg(1),
        out("s", 1, 1, OutboundState::Queued),
        out("s", 1, 1, OutboundState::Sent),
        out("s", 1, 1, OutboundState::Released),
        msg(2),
        out("s", 2, 2, OutboundState::Queued),
    ];
    assert_eq!(same_effect(&before, group), 4);
}

#[test]
fn a_session_deleted_in_the_group_keeps_its_order() {
    let before = [session("s")];
    let group = vec![
        out("s", 1, 7, OutboundState::Queued),
        Op::DeleteSession {
            client_id: "s".into(),
        },
        session("s"),
        out("s", 1, 7, OutboundState::Sent),
    ];
    assert_eq!(same_effect(&before, group), 4);
}

/// Both stages coalesced, `created` covering both (split between the two
/// maps the way the commit task would not matter: either is checked).
fn staged(mut older: Vec<Op>, mut newer: Vec<Op>, created: &Created) -> (Vec<Op>, Vec<Op>) {
    coalesce_staged(&mut older, &mut newer, [created, &Created::new()]);
    (older, newer)
}

fn created(entries: &[(&str, u64)]) -> Created {
    let mut c = Created::new();
    for &(client, seq) in entries {
        c.entry(client.to_owned()).or_default().insert(seq);
    }
    c
}

#[test]
fn an_entry_created_in_one_stage_and_acknowledged_in_the_next_is_never_written() {
    let older = vec![msg(1), out("s", 1, 1, OutboundState::Sent)];
    let newer = vec![del_out("s", 1), Op::DeleteMessage { id: 1 }, msg(2)];
    let (now, later) = staged(older, newer, &created(&[("s", 1)]));
    assert!(now.is_empty(), "{now:?}");
    assert_eq!(later, vec![msg(2)]);
}

#[test]
fn the_older_stage_keeps_its_last_state_when_the_newer_one_only_updates() {
    let older = vec![msg(1), out("s", 1, 1, OutboundState::Sent)];
    let newer = vec![out("s", 1, 1, OutboundState::Released)];
    let (now, later) = staged(older.clone(), newer.clone(), &created(&[("s", 1)]));
    // Acknowledgements of the older stage vouch for the entry: it is
    // written now, not only in its newer form later.
    assert_eq!(now, older);
    assert_eq!(later, newer);
}

#[test]
fn a_body_still_referred_to_by_a_kept_entry_is_written() {
    // Client "s" is deleted in the newer stage: its entries keep their
    // order, so the body they name must stay too.
    let older = vec![msg(1), out("s", 1, 1, OutboundState::Queued)];
    let newer = vec![
        Op::DeleteSession {
            client_id: "s".into(),
        },
        Op::DeleteMessage { id: 1 },
    ];
    let (now, later) = staged(older.clone(), newer.clone(), &created(&[("s", 1)]));
    assert_eq!(now, older);
    assert_eq!(later, newer);
}

/// A broker-shaped sequence of operations: sessions "a" and "b" exist
/// before; messages go to one or both (shared body, or inline when sole),
/// entries change state, are acknowledged, and sessions are replaced.
#[derive(Debug, Default)]
struct Model {
    ops: Vec<Op>,
    created: Vec<(String, u64)>,
    /// Live entries: (client, seq, body id or 0 for inline).
    live: Vec<(String, u64, u64)>,
    refs: std::collections::HashMap<u64, u32>,
    next_seq: u64,
    next_body: u64,
}

impl Model {
    fn release(&mut self, body: u64) {
        if body == 0 {
            return;
        }
        let n = self.refs.get_mut(&body).expect("a live body");
        *n -= 1;
        if *n == 0 {
            self.refs.remove(&body);
            self.ops.push(Op::DeleteMessage { id: body });
        }
    }

    fn step(&mut self, kind: u8, pick: usize) {
        let clients = ["a", "b"];
        match kind % 5 {
            0 | 1 => {
                // A message for one client (inline body) or both (shared).
                let both = kind % 5 == 1;
                let body = if both {
                    self.next_body += 1;
                    self.ops.push(msg(self.next_body));
                    self.refs.insert(self.next_body, 2);
                    self.next_body
                } else {
                    0
                };
                let targets: &[&str] = if both {
                    &clients
                } else {
                    &clients[pick % 2..pick % 2 + 1]
                };
                for c in targets {
                    self.next_seq += 1;
                    let seq = self.next_seq;
                    self.ops.push(out(c, seq, body, OutboundState::Queued));
                    self.created.push((c.to_string(), seq));
                    self.live.push((c.to_string(), seq, body));
                }
            }
            2 if !self.live.is_empty() => {
                let (c, seq, body) = self.live[pick % self.live.len()].clone();
                self.ops.push(out(&c, seq, body, OutboundState::Sent));
            }
            3 if !self.live.is_empty() => {
                let (c, seq, body) = self.live.remove(pick % self.live.len());
                self.ops.push(del_out(&c, seq));
                self.release(body);
            }
            4 if pick % 4 == 0 => {
                // A clean start: the session and all it holds go, then a
                // new session under the same id.
                let c = clients[pick / 4 % 2];
                self.ops.push(Op::DeleteSession {
                    client_id: c.into(),
                });
                let (gone, kept): (Vec<_>, Vec<_>) =
                    self.live.drain(..).partition(|(client, ..)| client == c);
                self.live = kept;
                for (_, _, body) in gone {
                    self.release(body);
                }
                self.ops.push(session(c));
            }
            _ => {}
        }
    }
}

fn state(ops: &[&[Op]]) -> Snapshot {
    let store = MemoryStore::new();
    for o in ops {
        store.apply(o).unwrap();
    }
    store.load().unwrap()
}

fn entries(s: &Snapshot) -> Vec<(String, u64, OutboundRecord)> {
    s.sessions
        .iter()
        .flat_map(|ss| {
            ss.outbound
                .iter()
                .map(|(seq, e)| (ss.session.client_id.clone(), *seq, e.clone()))
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig {
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::WithSource("proptest-regressions"),
        )),
        ..ProptestConfig::default()
    })]

    /// Applying both coalesced stages gives what applying both original
    /// stages gives, and the older stage alone still stores every entry
    /// (and its body) that the older stage's acknowledgements may vouch
    /// for: all but those created and gone by the end of the newer stage.
    #[test]
    fn staged_coalescing_keeps_what_was_promised(
        setup in proptest::collection::vec((any::<u8>(), any::<usize>()), 0..8),
        steps in proptest::collection::vec((any::<u8>(), any::<usize>()), 0..40),
        split in any::<prop::sample::Index>(),
    ) {
        let mut model = Model::default();
        model.ops.extend([session("a"), session("b")]);
        for (k, p) in setup {
            model.step(k, p);
        }
        let before = std::mem::take(&mut model.ops);
        model.created.clear();
        for (k, p) in steps {
            model.step(k, p);
        }
        let group = std::mem::take(&mut model.ops);
        let at = split.index(group.len() + 1);
        let (older, newer) = group.split_at(at);
        let created = created(
            &model.created.iter().map(|(c, s)| (c.as_str(), *s)).collect::<Vec<_>>(),
        );
        let (now, later) = staged(older.to_vec(), newer.to_vec(), &created);
        prop_assert!(now.len() <= older.len() && later.len() <= newer.len());

        let full = state(&[&before, older, newer]);
        prop_assert_eq!(&state(&[&before, &now, &later]), &full);

        let promised = state(&[&before, older]);
        let written = state(&[&before, &now]);
        prop_assert_eq!(&written.retained, &promised.retained);
        let finally: Vec<_> = entries(&full).into_iter().map(|(c, s, _)| (c, s)).collect();
        let kept = entries(&written);
        for (c, seq, e) in entries(&promised) {
            let was_created = created.get(&c).is_some_and(|s| s.contains(&seq));
            if !was_created || finally.contains(&(c.clone(), seq)) {
                prop_assert!(
                    kept.contains(&(c.clone(), seq, e.clone())),
                    "entry {}/{} is missing after the older stage", c, seq
                );
            }
        }
        for (c, seq, e) in &kept {
            prop_assert!(
                entries(&promised).iter().any(|(c2, s2, _)| c2 == c && s2 == seq),
                "entry {}/{} written that the older stage did not hold", c, seq
            );
            if e.message_id != 0 {
                prop_assert!(
                    written.messages.iter().any(|(id, _)| *id == e.message_id),
                    "entry {}/{} refers to body {} that is not stored", c, seq, e.message_id
                );
            }
        }
    }
}
