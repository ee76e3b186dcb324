//! The broker's one clock: read by the driver (the core loop, connection
//! tasks, the inline client's relay) and handed to the core and the link
//! layer as `now`, so neither reads a clock itself and a test can run them
//! in virtual time.
//!
//! Its readings are milliseconds since the Unix epoch, the time base of
//! everything the core times: keep-alive silence, will delays, session and
//! message expiry, and what the store records (`disconnected_at_ms`).
//! One base for all of them, so a connection task stamping "last heard"
//! and the core judging its keep-alive cannot disagree.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Where the time comes from. Cheap to clone; clones read the same time.
#[derive(Debug, Clone)]
pub(crate) struct Clock(Source);

#[derive(Debug, Clone)]
enum Source {
    /// The wall clock as it was at `start`, moved on by a monotonic clock:
    /// a step of the system clock (a bad NTP sync, a manual change) cannot
    /// make time go backwards, nor disconnect every client at once by
    /// jumping their silence forward.
    System { epoch_ms: u64, start: Instant },
    /// Moves only when told ([`Clock::advance`]).
    #[cfg_attr(not(test), allow(dead_code))]
    Manual(Arc<AtomicU64>),
}

impl Clock {
    /// The system's clock.
    pub fn system() -> Self {
        let epoch_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        Clock(Source::System {
            epoch_ms,
            start: Instant::now(),
        })
    }

    /// A clock that reads `start_ms` until [`Clock::advance`]d.
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn manual(start_ms: u64) -> Self {
        Clock(Source::Manual(Arc::new(AtomicU64::new(start_ms))))
    }

    /// Milliseconds since the Unix epoch; never less than an earlier
    /// reading of this clock or its clones.
    pub fn now_ms(&self) -> u64 {
        match &self.0 {
            Source::System { epoch_ms, start } => {
                let elapsed = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
                epoch_ms.saturating_add(elapsed)
            }
            Source::Manual(ms) => ms.load(Ordering::Relaxed),
        }
    }

    /// Moves a manual clock on by `by`.
    ///
    /// # Panics
    ///
    /// On the system clock, which nobody moves.
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn advance(&self, by: Duration) {
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
    fn the_system_clock_reads_the_wall_clock_and_never_goes_back() {
        let clock = Clock::system();
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let a = clock.now_ms();
        assert!(a.abs_diff(wall) < 1_000, "{a} vs {wall}");
        assert!(clock.clone().now_ms() >= a);
    }

    #[test]
    fn a_manual_clock_moves_only_when_told_and_its_clones_follow() {
        let clock = Clock::manual(5_000);
        let seen_by_a_connection = clock.clone();
        assert_eq!(clock.now_ms(), 5_000);
        clock.advance(Duration::from_millis(1_500));
        assert_eq!(seen_by_a_connection.now_ms(), 6_500);
    }
}
