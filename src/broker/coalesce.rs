//! Shrinking groups of storage operations before they reach the disk.
//!
//! Under load most messages are delivered and acknowledged by their
//! subscriber within a millisecond or two: the outbound entry written for
//! them is deleted again almost at once. Writing both is pure cost, so the
//! commit task merges what it is about to apply (the *older* stage) with
//! what arrived while it was busy (the *newer* stage) and drops what the
//! two cancel out. The older stage is applied now, the newer one stays for
//! the next round, when it is in turn merged with what arrives next.
//!
//! What is dropped never changes what the store holds once both stages are
//! applied, and each stage on its own still leaves the store holding
//! everything its acknowledgements vouch for:
//!
//! - An outbound entry created in the two stages (see [`Created`]) and
//!   deleted by their end is never written: its obligation ended before it
//!   reached the disk (delivered and acknowledged, expired or dropped).
//! - Otherwise an entry keeps, in each stage, its last operation of that
//!   stage: the older stage's final state must be on disk when its
//!   acknowledgements leave, whatever the newer stage does to it later.
//! - A message body stored and deleted in the two stages is never written
//!   when no kept outbound entry refers to it: [`Persist::reference`] gives
//!   every body a fresh id, so nothing older can refer to it.
//! - A client whose session is deleted in the two stages keeps its outbound
//!   operations as they are (the delete cascades, so their order matters).
//! - Every other operation is kept, in order.
//!
//! [`Persist::reference`]: super::persist::Persist::reference

use super::idhash::{IdMap, IdSet};
use super::persist::Created;
use roost_storage::Op;
use std::collections::{HashMap, HashSet};

/// Shrinks one group on its own (no newer stage).
#[cfg(test)]
pub(crate) fn coalesce(mut ops: Vec<Op>, created: &Created) -> Vec<Op> {
    coalesce_staged(&mut ops, &mut Vec::new(), [created, &Created::new()]);
    ops
}

/// Merges two consecutive stages, leaving in each what must still be
/// written, in order. `created` holds the outbound entries first written
/// in either stage (one map per stage).
pub(crate) fn coalesce_staged(older: &mut Vec<Op>, newer: &mut Vec<Op>, created: [&Created; 2]) {
    let keep = plan(older, newer, created);
    let (keep_older, keep_newer) = keep.split_at(older.len());
    retain_marked(older, keep_older);
    retain_marked(newer, keep_newer);
}

fn retain_marked(ops: &mut Vec<Op>, keep: &[bool]) {
    let mut flags = keep.iter();
    ops.retain(|_| flags.next().copied().unwrap_or(true));
}

/// Client ids seen in a group, numbered: each string is hashed once per run
/// of operations on other clients, not once per operation (a group is
/// mostly runs of one client's operations).
struct Clients<'a> {
    ids: HashMap<&'a str, u32>,
    last: Option<(&'a str, u32)>,
}

impl<'a> Clients<'a> {
    fn id(&mut self, client: &'a str) -> u32 {
        if let Some((name, id)) = self.last {
            if name == client {
                return id;
            }
        }
        let next = u32::try_from(self.ids.len()).unwrap_or(u32::MAX);
        let id = *self.ids.entry(client).or_insert(next);
        self.last = Some((client, id));
        id
    }
}

/// What one outbound entry does in the two stages.
#[derive(Default, Clone, Copy)]
struct Entry {
    /// Index of its last operation in each stage.
    last: [Option<usize>; 2],
    /// First written in the two stages.
    created: bool,
    /// Its client's session is deleted in the two stages.
    barrier: bool,
}

/// Which operations to keep (the rules in the module docs), older stage
/// first.
fn plan(older: &[Op], newer: &[Op], created: [&Created; 2]) -> Vec<bool> {
    let n = older.len() + newer.len();
    let op = |i: usize| {
        if i < older.len() {
            &older[i]
        } else {
            &newer[i - older.len()]
        }
    };
    let all = || older.iter().chain(newer.iter()).enumerate();
    let mut barriers: HashSet<&str> = HashSet::new();
    for (_, o) in all() {
        if let Op::DeleteSession { client_id } = o {
            barriers.insert(client_id);
        }
    }
    let mut clients = Clients {
        ids: HashMap::new(),
        last: None,
    };
    let mut entries: IdMap<(u32, u64), Entry> = IdMap::default();
    let mut put_msgs: IdSet<u64> = IdSet::default();
    let mut deleted_msgs: IdSet<u64> = IdSet::default();
    // Per outbound operation: its entry's key.
    let mut keys: Vec<Option<(u32, u64)>> = Vec::with_capacity(n);
    for (i, o) in all() {
        let mut key = None;
        match o {
            Op::PutOutbound { client_id, seq, .. } | Op::DeleteOutbound { client_id, seq } => {
                let k = (clients.id(client_id), *seq);
                let e = entries.entry(k).or_insert_with(|| Entry {
                    created: created
                        .iter()
                        .any(|c| c.get(client_id.as_str()).is_some_and(|s| s.contains(seq))),
                    barrier: barriers.contains(client_id.as_str()),
                    last: [None; 2],
                });
                e.last[usize::from(i >= older.len())] = Some(i);
                key = Some(k);
            }
            Op::PutMessage { id, .. } => {
                put_msgs.insert(*id);
            }
            Op::DeleteMessage { id } if put_msgs.contains(id) => {
                deleted_msgs.insert(*id);
            }
            _ => {}
        }
        keys.push(key);
    }
    let mut keep: Vec<bool> = keys
        .iter()
        .enumerate()
        .map(|(i, key)| {
            let Some(k) = key else { return true };
            let e = &entries[k];
            if e.barrier {
                return true;
            }
            let final_op = e.last[1].or(e.last[0]);
            let vanishes =
                e.created && final_op.is_some_and(|f| matches!(op(f), Op::DeleteOutbound { .. }));
            !vanishes && e.last[usize::from(i >= older.len())] == Some(i)
        })
        .collect();
    if deleted_msgs.is_empty() {
        return keep;
    }
    // A body goes only if no kept entry still refers to it.
    for ((_, o), &kept) in all().zip(&keep) {
        if let (Op::PutOutbound { entry, .. }, true) = (o, kept) {
            deleted_msgs.remove(&entry.message_id);
        }
    }
    for ((_, o), keep) in all().zip(keep.iter_mut()) {
        if let Op::PutMessage { id, .. } | Op::DeleteMessage { id } = o {
            if deleted_msgs.contains(id) {
                *keep = false;
            }
        }
    }
    keep
}

#[cfg(test)]
mod tests;
