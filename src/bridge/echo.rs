//! Loop prevention for 3.1.1 remotes, which have no No Local: a message
//! this bridge forwarded that comes back on one of its remote
//! subscriptions is recognised and not published here again.
//!
//! The bridge remembers a hash of each forwarded message (remote topic and
//! payload) for [`WINDOW_MS`]; an inbound message with a remembered hash
//! takes one remembered copy and is dropped. The cost is that a remote
//! client publishing the very same payload on the very same topic within
//! the window is taken for an echo: the price of 3.1.1 (a 5.0 remote is
//! asked for No Local instead, and this is not used).

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;

/// How long a forwarded message is remembered (a remote echoes within
/// milliseconds; a link that drops resends within a reconnect).
pub(crate) const WINDOW_MS: u64 = 60_000;

/// Most messages remembered at once: the memory is bounded whatever the
/// rate (some 40 bytes each).
pub(crate) const CAPACITY: usize = 100_000;

/// Forwarded messages not yet echoed back, by hash.
#[derive(Debug, Default)]
pub(crate) struct Echoes {
    hasher: RandomState,
    /// Hash to the times its copies were forwarded, oldest first. An echo
    /// uses up the oldest copy.
    copies: HashMap<u64, VecDeque<u64>>,
    /// Every copy in the order forwarded, with the time: what expires.
    order: VecDeque<(u64, u64)>,
}

impl Echoes {
    fn hash(&self, topic: &str, payload: &[u8]) -> u64 {
        self.hasher.hash_one((topic, payload))
    }

    /// `topic`/`payload` was forwarded at `now` (ms).
    pub(crate) fn forwarded(&mut self, topic: &str, payload: &[u8], now: u64) {
        self.expire(now);
        if self.order.len() >= CAPACITY {
            self.forget_oldest();
        }
        let h = self.hash(topic, payload);
        self.copies.entry(h).or_default().push_back(now);
        self.order.push_back((h, now));
    }

    /// Is `topic`/`payload`, received at `now`, an echo of a forwarded
    /// message? If so, that copy is used up.
    pub(crate) fn is_echo(&mut self, topic: &str, payload: &[u8], now: u64) -> bool {
        self.expire(now);
        let h = self.hash(topic, payload);
        let Some(times) = self.copies.get_mut(&h) else {
            return false;
        };
        times.pop_front();
        if times.is_empty() {
            self.copies.remove(&h);
        }
        true
    }

    fn expire(&mut self, now: u64) {
        while self
            .order
            .front()
            .is_some_and(|&(_, at)| at.saturating_add(WINDOW_MS) <= now)
        {
            self.forget_oldest();
        }
    }

    /// Forgets the oldest copy remembered, unless an echo used it already
    /// (then the hash's oldest remaining copy is younger).
    fn forget_oldest(&mut self) {
        let Some((h, at)) = self.order.pop_front() else {
            return;
        };
        if let Some(times) = self.copies.get_mut(&h) {
            if times.front() == Some(&at) {
                times.pop_front();
            }
            if times.is_empty() {
                self.copies.remove(&h);
            }
        }
    }

    /// Copies remembered (for tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.copies.values().map(VecDeque::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_echo_is_recognised_once_per_copy_forwarded() {
        let mut e = Echoes::default();
        e.forwarded("a/b", b"1", 0);
        e.forwarded("a/b", b"1", 1);
        assert!(!e.is_echo("a/b", b"2", 2), "other payload");
        assert!(!e.is_echo("a/c", b"1", 2), "other topic");
        assert!(e.is_echo("a/b", b"1", 3));
        assert!(e.is_echo("a/b", b"1", 4));
        assert!(!e.is_echo("a/b", b"1", 5), "both copies used up");
    }

    #[test]
    fn forwarded_messages_are_forgotten_after_the_window() {
        let mut e = Echoes::default();
        e.forwarded("t", b"x", 0);
        assert!(!e.is_echo("t", b"x", WINDOW_MS));
        assert_eq!(e.len(), 0);
    }

    #[test]
    fn memory_is_bounded() {
        let mut e = Echoes::default();
        for i in 0..(CAPACITY as u64 + 10) {
            e.forwarded("t", &i.to_be_bytes(), 1);
        }
        assert_eq!(e.len(), CAPACITY);
        assert!(!e.is_echo("t", &0u64.to_be_bytes(), 1), "the oldest went");
        assert!(e.is_echo("t", &(CAPACITY as u64).to_be_bytes(), 1));
    }

    #[test]
    fn a_used_copy_expiring_later_does_not_take_a_newer_one() {
        let mut e = Echoes::default();
        e.forwarded("t", b"x", 0);
        assert!(e.is_echo("t", b"x", 1));
        e.forwarded("t", b"x", 2);
        // The first entry expires: the count it would take is the second's.
        assert!(e.is_echo("t", b"x", WINDOW_MS + 1));
    }
}
