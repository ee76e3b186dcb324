//! Which of the inline client's subscriptions a delivered message goes to.
//!
//! The broker keeps one subscription per filter and session: MQTT's rule,
//! a second SUBSCRIBE to a filter replaces the first. The inline client
//! lets the application subscribe to one filter several times, each
//! subscription with its own identifier and its own receiver, so it
//! multiplexes: the core holds one subscription per filter (at the highest
//! QoS asked for it), and this table hands each message the core delivers
//! to every local subscription of the filters it matched, once each.
//! Several core sessions (one per local subscription) would have given
//! each its own queue too, but also a client id, a connection count and
//! hook calls of its own, none of which the application asked for.
//!
//! Every SUBSCRIBE the inline client sends carries a fresh subscription
//! identifier of its own, a *core id*, which names the filter and the local
//! subscription that sent it. The application's own identifiers never
//! reach the core (any `u32` but 0 will do; several subscriptions may
//! share one). How a delivery is routed:
//!
//! - a live message (RETAIN clear: the inline client never asks for Retain
//!   As Published) goes to every local subscription of each filter its
//!   core ids name;
//! - a retained message sent on subscribe (RETAIN set) goes only to the
//!   local subscription whose SUBSCRIBE the core answers with it, so the
//!   filter's earlier subscriptions do not get it a second time.
//!
//! A filter keeps the core id of its last acknowledged SUBSCRIBE and of a
//! SUBSCRIBE on its way; older ones retire when a newer one is
//! acknowledged, as nothing carrying them can follow that SUBACK (the core
//! queues in order, and a retained burst drains before what is behind it).
//!
//! Pure bookkeeping under the caller's lock: no I/O, no awaiting.

use super::InlineMessage;
use crate::codec::{ByteStr, QoS};
use std::collections::HashMap;
use std::num::NonZeroU32;
use tokio::sync::mpsc::Sender;

/// The largest subscription identifier MQTT can carry (a four-byte
/// variable byte integer).
const MAX_CORE_ID: u32 = 268_435_455;

/// The local subscriptions of the inline client, by filter.
#[derive(Debug, Default)]
pub(super) struct Routes {
    filters: HashMap<ByteStr, Filter>,
    /// Core id → the filter it subscribed.
    core_ids: HashMap<u32, ByteStr>,
    last_core_id: u32,
    last_key: u64,
}

#[derive(Debug, Default)]
struct Filter {
    locals: Vec<Local>,
    /// Core ids in use for this filter, oldest first, each with the key of
    /// the local subscription whose SUBSCRIBE carried it.
    core_ids: Vec<(u32, u64)>,
}

#[derive(Debug)]
struct Local {
    key: u64,
    id: Option<NonZeroU32>,
    qos: QoS,
    tx: Sender<InlineMessage>,
}

/// A local subscription just added, and what to ask the core for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Added {
    /// Names the local subscription (to remove it later).
    pub key: u64,
    /// The identifier its SUBSCRIBE carries.
    pub core_id: NonZeroU32,
    /// The QoS to subscribe the filter at: the highest of its local
    /// subscriptions', so that none is downgraded by another.
    pub qos: QoS,
}

/// One local subscription a message goes to.
#[derive(Debug)]
pub(super) struct Target {
    pub filter: ByteStr,
    pub key: u64,
    pub id: Option<NonZeroU32>,
    pub qos: QoS,
    pub tx: Sender<InlineMessage>,
}

impl Routes {
    /// Adds a local subscription to `filter`; its SUBSCRIBE is to carry
    /// [`Added::core_id`]. Until the core answers, live messages of the
    /// filter already reach it.
    pub(super) fn add(
        &mut self,
        filter: &ByteStr,
        id: Option<NonZeroU32>,
        qos: QoS,
        tx: Sender<InlineMessage>,
    ) -> Added {
        self.last_key += 1;
        let key = self.last_key;
        let core_id = loop {
            self.last_core_id = self.last_core_id % MAX_CORE_ID + 1;
            if !self.core_ids.contains_key(&self.last_core_id) {
                break self.last_core_id;
            }
        };
        self.core_ids.insert(core_id, filter.clone());
        let f = self.filters.entry(filter.clone()).or_default();
        f.core_ids.push((core_id, key));
        f.locals.push(Local { key, id, qos, tx });
        let qos = f.locals.iter().map(|l| l.qos).max().unwrap_or(qos);
        Added {
            key,
            core_id: NonZeroU32::new(core_id).expect("core ids start at 1"),
            qos,
        }
    }

    /// The core accepted the SUBSCRIBE that carried `core_id`: the filter's
    /// older core ids retire (see the module docs).
    pub(super) fn acknowledged(&mut self, filter: &str, core_id: NonZeroU32) {
        let Some(f) = self.filters.get_mut(filter) else {
            return;
        };
        let core_id = core_id.get();
        for (old, _) in f.core_ids.iter().filter(|(c, _)| *c != core_id) {
            self.core_ids.remove(old);
        }
        f.core_ids.retain(|(c, _)| *c == core_id);
    }

    /// The core refused the SUBSCRIBE that carried `core_id` (and kept
    /// whatever subscription to the filter it had): the local subscription
    /// goes, and so does its core id.
    pub(super) fn refused(&mut self, filter: &str, key: u64, core_id: NonZeroU32) {
        if let Some(f) = self.filters.get_mut(filter) {
            f.core_ids.retain(|(c, _)| *c != core_id.get());
            self.core_ids.remove(&core_id.get());
        }
        self.remove(filter, |l| l.key == key);
    }

    /// Removes the local subscriptions of `filter` that `which` picks;
    /// returns how many it removed and whether the filter has none left
    /// (then the core's subscription is to go too).
    fn remove(&mut self, filter: &str, which: impl Fn(&Local) -> bool) -> (usize, bool) {
        let Some(f) = self.filters.get_mut(filter) else {
            return (0, true);
        };
        let before = f.locals.len();
        f.locals.retain(|l| !which(l));
        let removed = before - f.locals.len();
        if !f.locals.is_empty() {
            return (removed, false);
        }
        if let Some(f) = self.filters.remove(filter) {
            for (c, _) in f.core_ids {
                self.core_ids.remove(&c);
            }
        }
        (removed, true)
    }

    /// Removes the local subscription `key`; true if `filter` has none left.
    pub(super) fn remove_key(&mut self, filter: &str, key: u64) -> bool {
        self.remove(filter, |l| l.key == key).1
    }

    /// Removes the local subscriptions of `filter` with identifier `id`;
    /// true if the filter has none left.
    pub(super) fn remove_id(&mut self, filter: &str, id: NonZeroU32) -> bool {
        self.remove(filter, |l| l.id == Some(id)).1
    }

    /// Removes every local subscription of `filter`.
    pub(super) fn remove_filter(&mut self, filter: &str) {
        self.remove(filter, |_| true);
    }

    /// Removes everything (the broker stopped): every receiver ends.
    pub(super) fn clear(&mut self) {
        self.filters.clear();
        self.core_ids.clear();
    }

    /// Where a message that carries `core_ids` goes: each local
    /// subscription at most once (see the module docs for `retained`).
    pub(super) fn targets(&self, core_ids: &[NonZeroU32], retained: bool) -> Vec<Target> {
        let mut out: Vec<Target> = Vec::new();
        for c in core_ids {
            let Some((filter, f)) = self
                .core_ids
                .get(&c.get())
                .and_then(|name| self.filters.get_key_value(name))
            else {
                continue;
            };
            let owner = f
                .core_ids
                .iter()
                .find(|(id, _)| *id == c.get())
                .map(|(_, key)| *key);
            for l in &f.locals {
                if retained && Some(l.key) != owner {
                    continue;
                }
                // Two core ids of one filter can meet in a message only if
                // the core delivered to one subscription twice: never, but
                // a local subscription is still given a message once.
                if out.iter().any(|t| t.key == l.key) {
                    continue;
                }
                out.push(Target {
                    filter: filter.clone(),
                    key: l.key,
                    id: l.id,
                    qos: l.qos,
                    tx: l.tx.clone(),
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc;

    fn chan() -> Sender<InlineMessage> {
        mpsc::channel(1).0
    }

    fn id(n: u32) -> Option<NonZeroU32> {
        NonZeroU32::new(n)
    }

    fn keys(t: &[Target]) -> Vec<u64> {
        t.iter().map(|t| t.key).collect()
    }

    #[test]
    fn one_filter_many_locals_each_once() {
        let mut r = Routes::default();
        let f = ByteStr::from("a/+");
        let a = r.add(&f, id(1), QoS::AtLeastOnce, chan());
        r.acknowledged(&f, a.core_id);
        let b = r.add(&f, id(2), QoS::AtMostOnce, chan());
        assert_eq!(b.qos, QoS::AtLeastOnce, "the filter keeps the highest QoS");
        assert_ne!(a.core_id, b.core_id);
        // A live message queued before the second SUBSCRIBE carries the
        // first core id, one after it the second: both reach both.
        assert_eq!(keys(&r.targets(&[a.core_id], false)), [a.key, b.key]);
        r.acknowledged(&f, b.core_id);
        assert_eq!(keys(&r.targets(&[b.core_id], false)), [a.key, b.key]);
        assert!(
            r.targets(&[a.core_id], false).is_empty(),
            "a.core_id retired"
        );
        // Retained on subscribe: only the subscription that asked.
        assert_eq!(keys(&r.targets(&[b.core_id], true)), [b.key]);
        // Removing one leaves the other, and the core's subscription.
        assert!(!r.remove_key(&f, b.key));
        assert_eq!(keys(&r.targets(&[b.core_id], false)), [a.key]);
        assert!(
            r.targets(&[b.core_id], true).is_empty(),
            "its owner is gone"
        );
        assert!(r.remove_key(&f, a.key));
        assert!(r.core_ids.is_empty() && r.filters.is_empty());
    }

    #[test]
    fn overlapping_filters_and_ids() {
        let mut r = Routes::default();
        let (f, g) = (ByteStr::from("a/#"), ByteStr::from("a/b"));
        let a = r.add(&f, id(7), QoS::AtMostOnce, chan());
        let b = r.add(&g, id(7), QoS::AtMostOnce, chan());
        let c = r.add(&g, None, QoS::ExactlyOnce, chan());
        let t = r.targets(&[a.core_id, c.core_id], false);
        assert_eq!(keys(&t), [a.key, b.key, c.key]);
        assert_eq!(t[2].id, None);
        // Unsubscribing id 7 from `a/b` leaves `a/#` (also id 7) alone.
        assert!(!r.remove_id(&g, NonZeroU32::new(7).unwrap()));
        assert_eq!(
            keys(&r.targets(&[a.core_id, c.core_id], false)),
            [a.key, c.key]
        );
    }

    #[test]
    fn a_refused_subscribe_leaves_the_filter_as_it_was() {
        let mut r = Routes::default();
        let f = ByteStr::from("x");
        let a = r.add(&f, None, QoS::AtMostOnce, chan());
        r.acknowledged(&f, a.core_id);
        let b = r.add(&f, None, QoS::AtMostOnce, chan());
        r.refused(&f, b.key, b.core_id);
        assert_eq!(keys(&r.targets(&[a.core_id], false)), [a.key]);
        assert!(r.targets(&[b.core_id], false).is_empty());
        // The first subscribe to a filter refused: nothing is left of it.
        let g = ByteStr::from("y");
        let c = r.add(&g, None, QoS::AtMostOnce, chan());
        r.refused(&g, c.key, c.core_id);
        assert!(!r.filters.contains_key("y") && !r.core_ids.contains_key(&c.core_id.get()));
    }

    #[test]
    fn core_ids_wrap_and_skip_those_in_use() {
        let mut r = Routes {
            last_core_id: MAX_CORE_ID - 1,
            ..Default::default()
        };
        let f = ByteStr::from("f");
        let a = r.add(&f, None, QoS::AtMostOnce, chan());
        assert_eq!(a.core_id.get(), MAX_CORE_ID);
        r.last_core_id = MAX_CORE_ID - 1;
        let b = r.add(&f, None, QoS::AtMostOnce, chan());
        assert_eq!(b.core_id.get(), 1, "wrapped, skipping the one in use");
    }
}
