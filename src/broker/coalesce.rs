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

use super::persist::Created;
use roost_storage::Op;
use std::collections::{HashMap, HashSet};

/// Shrinks one group on its own (no newer stage).
#[cfg(test)]
pub(crate) fn coalesce(ops: Vec<Op>, created: &Created) -> Vec<Op> {
    coalesce_staged(ops, Vec::new(), created).0
}

/// Merges two consecutive stages and returns what is left of each, in
/// order. `created` holds the outbound entries first written in either.
pub(crate) fn coalesce_staged(
    older: Vec<Op>,
    newer: Vec<Op>,
    created: &Created,
) -> (Vec<Op>, Vec<Op>) {
    let boundary = older.len();
    let mut ops = older;
    ops.extend(newer);
    let keep = plan(&ops, boundary, created);
    let mut now = Vec::with_capacity(boundary);
    let mut later = Vec::with_capacity(ops.len() - boundary);
    for (i, (op, keep)) in ops.into_iter().zip(keep).enumerate() {
        if keep {
            if i < boundary {
                now.push(op);
            } else {
                later.push(op);
            }
        }
    }
    (now, later)
}

/// Per outbound entry: the index of its last operation in each stage.
type LastOps<'a> = HashMap<(&'a str, u64), [Option<usize>; 2]>;

/// Which operations to keep (the rules in the module docs).
fn plan(ops: &[Op], boundary: usize, created: &Created) -> Vec<bool> {
    let stage = |i: usize| usize::from(i >= boundary);
    let mut barriers: HashSet<&str> = HashSet::new();
    let mut last: LastOps = HashMap::new();
    let mut put_msgs: HashSet<u64> = HashSet::new();
    let mut deleted_msgs: HashSet<u64> = HashSet::new();
    for (i, op) in ops.iter().enumerate() {
        match op {
            Op::DeleteSession { client_id } => {
                barriers.insert(client_id);
            }
            Op::PutOutbound { client_id, seq, .. } | Op::DeleteOutbound { client_id, seq } => {
                last.entry((client_id, *seq)).or_default()[stage(i)] = Some(i);
            }
            Op::PutMessage { id, .. } => {
                put_msgs.insert(*id);
            }
            Op::DeleteMessage { id } if put_msgs.contains(id) => {
                deleted_msgs.insert(*id);
            }
            _ => {}
        }
    }
    // Entries that never need to reach the disk.
    let vanishing = |client_id: &str, seq: u64| -> bool {
        !barriers.contains(client_id)
            && created.get(client_id).is_some_and(|s| s.contains(&seq))
            && last.get(&(client_id, seq)).is_some_and(|l| {
                let final_op = l[1].or(l[0]).expect("an entry in `last` has an operation");
                matches!(ops[final_op], Op::DeleteOutbound { .. })
            })
    };
    let keep_outbound = |i: usize, client_id: &str, seq: u64| -> bool {
        barriers.contains(client_id)
            || (!vanishing(client_id, seq)
                && last
                    .get(&(client_id, seq))
                    .is_some_and(|l| l[stage(i)] == Some(i)))
    };
    let mut keep: Vec<bool> = ops
        .iter()
        .enumerate()
        .map(|(i, op)| match op {
            Op::PutOutbound { client_id, seq, .. } | Op::DeleteOutbound { client_id, seq } => {
                keep_outbound(i, client_id, *seq)
            }
            _ => true,
        })
        .collect();
    if deleted_msgs.is_empty() {
        return keep;
    }
    // A body goes only if no kept entry still refers to it.
    for (op, &kept) in ops.iter().zip(&keep) {
        if let (Op::PutOutbound { entry, .. }, true) = (op, kept) {
            deleted_msgs.remove(&entry.message_id);
        }
    }
    for (op, keep) in ops.iter().zip(keep.iter_mut()) {
        if let Op::PutMessage { id, .. } | Op::DeleteMessage { id } = op {
            if deleted_msgs.contains(id) {
                *keep = false;
            }
        }
    }
    keep
}

#[cfg(test)]
mod tests;
