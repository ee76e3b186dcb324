//! Warnings that a client can make frequent (dropped messages, a full
//! retained store) go to the log at most once a second each; the rest go
//! to debug, so a flood of events is not a flood of log lines too.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// When a kind of warning was last logged, on the core's clock.
pub(crate) struct OncePerSecond(AtomicU64);

impl OncePerSecond {
    pub(crate) const fn new() -> Self {
        OncePerSecond(AtomicU64::new(0))
    }

    /// True if a second has passed since it last said true (and the next
    /// second starts now).
    pub(crate) fn ready(&self, now_ms: u64) -> bool {
        if now_ms < self.0.load(Relaxed).saturating_add(1000) {
            return false;
        }
        self.0.store(now_ms, Relaxed);
        true
    }
}
