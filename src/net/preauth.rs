//! The budget of bytes held for connections that have not finished their
//! CONNECT exchange (`limits.maximum_unauthenticated_bytes`).
//!
//! Before CONNACK nobody knows who a client is, and each connection may
//! buffer a CONNECT (or AUTH) of up to `limits.maximum_connect_size`: a
//! few hundred connections that declare large packets and never finish
//! them held hundreds of MiB until the connect timeout. Every such byte is
//! charged here before it is buffered; a connection whose next bytes would
//! take the total past the budget is refused.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Bytes held by connections before CONNACK, shared by all listeners.
#[derive(Debug, Default)]
pub(crate) struct PreAuth {
    used: AtomicUsize,
}

impl PreAuth {
    /// A charge of nothing yet against this budget of `limit` bytes.
    pub(crate) fn charge(&self, limit: usize) -> Charge<'_> {
        Charge {
            budget: self,
            limit,
            held: 0,
            base: 0,
        }
    }

    /// Takes `n` bytes if the total stays within `limit`.
    pub(super) fn take(&self, n: usize, limit: usize) -> bool {
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                used.checked_add(n).filter(|&u| u <= limit)
            })
            .is_ok()
    }

    pub(super) fn give(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::Relaxed);
    }

    /// Bytes charged now.
    #[cfg(test)]
    pub(crate) fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }
}

/// One connection's part of the budget, given back when dropped (when its
/// CONNECT exchange ends, admitted or not).
#[derive(Debug)]
pub(crate) struct Charge<'a> {
    budget: &'a PreAuth,
    limit: usize,
    held: usize,
    /// Held for packets already decoded (the CONNECT, while AUTH packets
    /// follow): they stay in memory until the exchange ends.
    base: usize,
}

impl Charge<'_> {
    /// Makes sure `bytes` (beyond the packets already decoded) are
    /// charged; false if the budget has no room for them (nothing more is
    /// charged then).
    pub(crate) fn hold(&mut self, bytes: usize) -> bool {
        let want = self.base.saturating_add(bytes);
        if want <= self.held {
            return true;
        }
        if !self.budget.take(want - self.held, self.limit) {
            return false;
        }
        self.held = want;
        true
    }

    /// A packet was decoded: what is held stays held while it lives, and
    /// the next packet's bytes come on top.
    pub(crate) fn settle(&mut self) {
        self.base = self.held;
    }
}

impl Drop for Charge<'_> {
    fn drop(&mut self) {
        self.budget.give(self.held);
    }
}

#[cfg(test)]
mod tests {
    use super::PreAuth;

    #[test]
    fn charges_are_bounded_and_given_back() {
        let budget = PreAuth::default();
        let mut a = budget.charge(100);
        assert!(a.hold(60));
        assert!(a.hold(40), "already held");
        let mut b = budget.charge(100);
        assert!(!b.hold(41));
        assert!(b.hold(40));
        assert_eq!(budget.used(), 100);
        a.settle();
        assert!(!a.hold(1), "a decoded packet stays charged");
        drop(a);
        assert_eq!(budget.used(), 40);
        assert!(b.hold(100));
        drop(b);
        assert_eq!(budget.used(), 0);
    }
}
