//! The broker's one clock: read by the driver (the core loop, connection
//! tasks, the inline client's relay) and handed to the core and the link
//! layer as `now`, so neither reads a clock itself and a test can run them
//! in virtual time.
//!
//! It gives two readings of the same moment ([`Now`]): wall-clock
//! milliseconds since the Unix epoch, what expiry and will delays count in
//! and what the store records (`disconnected_at_ms`); and milliseconds on a
//! monotonic clock, what the keep-alive counts silence in, so that a step
//! of the system clock neither ends every connection at once nor spares a
//! silent one. Connection tasks stamp their outboxes with the monotonic
//! reading of the same clock the core's keep-alive check is given.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The time, as the driver's clock read it for an event or a tick: the
/// core reads no clock itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Now {
    /// Milliseconds since the Unix epoch: what expiry and will delays count
    /// in, and what the store records.
    pub ms: u64,
    /// Milliseconds on a monotonic clock, the one connections stamp their
    /// outboxes with (`Outbox::listening`) for the keep-alive: a step of
    /// the system clock must neither end every connection at once nor
    /// spare a silent one.
    pub mono_ms: u64,
}

/// Where the time comes from. Cheap to clone; clones read the same time.
#[derive(Debug, Clone)]
pub(crate) struct Clock(Source);

#[derive(Debug, Clone)]
enum Source {
    /// The system's clocks; the monotonic one counts from `start`.
    System { start: Instant },
    /// Moves only when told ([`Clock::advance`]); both readings move
    /// together.
    #[cfg_attr(not(test), allow(dead_code))]
    Manual(Arc<AtomicU64>),
}

/// The monotonic reading of a manual clock, this far from its wall-clock
/// one: a reading taken on the wrong one of the two shows in a test.
#[cfg_attr(not(test), allow(dead_code))]
const MANUAL_MONO_OFFSET: u64 = 1_000_000_000_000;

impl Clock {
    /// The system's clock.
    pub(crate) fn system() -> Self {
        Clock(Source::System {
            start: Instant::now(),
        })
    }

    /// A clock whose wall-clock reading is `start_ms` until
    /// [`Clock::advance`]d.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn manual(start_ms: u64) -> Self {
        assert!(start_ms >= MANUAL_MONO_OFFSET, "a start after 2001");
        Clock(Source::Manual(Arc::new(AtomicU64::new(start_ms))))
    }

    /// Milliseconds since the Unix epoch.
    pub(crate) fn now_ms(&self) -> u64 {
        match &self.0 {
            Source::System { .. } => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
                .unwrap_or(0),
            Source::Manual(ms) => ms.load(Ordering::Relaxed),
        }
    }

    /// Milliseconds on a monotonic clock (from an arbitrary start): never
    /// less than an earlier reading of this clock or its clones.
    pub(crate) fn mono_ms(&self) -> u64 {
        match &self.0 {
            Source::System { start } => {
                u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
            }
            Source::Manual(ms) => ms.load(Ordering::Relaxed) - MANUAL_MONO_OFFSET,
        }
    }

    /// Both readings, for the core.
    pub(crate) fn now(&self) -> Now {
        Now {
            ms: self.now_ms(),
            mono_ms: self.mono_ms(),
        }
    }

    /// Moves a manual clock on by `by`.
    ///
    /// # Panics
    ///
    /// On the system clock, which nobody moves.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn advance(&self, by: Duration) {
        match &self.0 {
            Source::Manual(ms) => {
                let by = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
                ms.fetch_add(by, Ordering::Relaxed);
            }
            Source::System { .. } => panic!("the system clock cannot be advanced"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_system_clock_reads_the_wall_clock_and_a_monotonic_one() {
        let clock = Clock::system();
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let now = clock.now();
        assert!(now.ms.abs_diff(wall) < 1_000, "{} vs {wall}", now.ms);
        assert!(now.mono_ms < 1_000, "counts from the clock's creation");
        assert!(clock.clone().mono_ms() >= now.mono_ms);
    }

    #[test]
    fn a_manual_clock_moves_only_when_told_and_its_clones_follow() {
        let clock = Clock::manual(1_764_000_000_000);
        let seen_by_a_connection = clock.clone();
        let before = clock.now();
        assert_eq!(before.ms, 1_764_000_000_000);
        clock.advance(Duration::from_millis(1_500));
        let after = seen_by_a_connection.now();
        assert_eq!(after.ms - before.ms, 1_500);
        assert_eq!(after.mono_ms - before.mono_ms, 1_500);
        assert_ne!(after.ms, after.mono_ms);
    }
}
