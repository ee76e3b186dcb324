//! Reconnect backoff: exponential, with full jitter, as a pure helper (the
//! caller supplies the random number and the clock).

/// Delays between reconnect attempts, in milliseconds.
///
/// Attempt `n` (from 0) waits a uniformly chosen time in
/// `[min, min(max, min * 2^n)]`: the ceiling doubles on every failure, and
/// the jitter spreads gateways that lost the same remote at the same moment.
/// Invariant: `min <= max` (the constructor orders them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Backoff {
    min: u64,
    max: u64,
    attempt: u32,
}

impl Backoff {
    /// Backoff between `min` and `max` milliseconds (swapped if reversed).
    pub(crate) fn new(min: u64, max: u64) -> Self {
        Backoff {
            min: min.min(max),
            max: max.max(min),
            attempt: 0,
        }
    }

    /// The delay before the next attempt, from a caller-provided random
    /// number (any `u64`, uniformly distributed), and counts the attempt.
    pub(crate) fn next_delay(&mut self, random: u64) -> u64 {
        // A `min` of 0 still grows (1, 2, 4, ... ms).
        let base = self.min.max(1);
        let ceiling = base
            .checked_shl(self.attempt)
            .filter(|c| c >> self.attempt == base)
            .map_or(self.max, |c| c.clamp(self.min, self.max));
        self.attempt = self.attempt.saturating_add(1);
        let span = ceiling - self.min;
        match span.checked_add(1) {
            Some(n) => self.min + random % n,
            // The whole u64 range: any number will do.
            None => random,
        }
    }

    /// A connection ended after `lasted` milliseconds: one that stayed up at
    /// least as long as the longest delay counts as a success, and the next
    /// failure starts again from `min`. A connection that drops at once
    /// (refused, closed after CONNACK) keeps the delays growing.
    pub(crate) fn connection_lasted(&mut self, lasted: u64) {
        if lasted >= self.max {
            self.attempt = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Backoff;

    #[test]
    fn delays_stay_within_min_and_a_doubling_ceiling() {
        let mut b = Backoff::new(1_000, 60_000);
        // Random 0 gives the floor, u64::MAX % span the top of the range.
        for (attempt, ceiling) in [1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 60_000, 60_000]
            .into_iter()
            .enumerate()
        {
            let mut low = b.clone();
            let mut high = b.clone();
            assert_eq!(low.next_delay(0), 1_000, "attempt {attempt}");
            assert_eq!(
                high.next_delay(ceiling - 1_000),
                ceiling,
                "attempt {attempt}"
            );
            let d = b.next_delay(0x9E37_79B9_7F4A_7C15);
            assert!((1_000..=ceiling).contains(&d), "attempt {attempt}: {d}");
        }
        // Far past the doubling range the ceiling is `max`, with no overflow.
        for _ in 0..100 {
            assert!(b.next_delay(u64::MAX) <= 60_000);
        }
    }

    #[test]
    fn jitter_spreads_over_the_range() {
        let mut seen = std::collections::BTreeSet::new();
        for r in 0..64u64 {
            let mut b = Backoff::new(100, 10_000);
            for _ in 0..5 {
                b.next_delay(0);
            }
            // Attempt 5: [100, 3200].
            seen.insert(b.next_delay(r.wrapping_mul(0x9E37_79B9_7F4A_7C15)) / 400);
        }
        assert!(seen.len() >= 6, "{seen:?}");
    }

    #[test]
    fn resets_after_a_connection_that_lasted() {
        let mut b = Backoff::new(1_000, 8_000);
        for _ in 0..5 {
            b.next_delay(0);
        }
        b.connection_lasted(500);
        // Not long enough: still at the ceiling ([1000, 8000]).
        assert_eq!(b.next_delay(7_000), 8_000);
        b.connection_lasted(8_000);
        assert_eq!(b.next_delay(7_000), 1_000);
    }

    #[test]
    fn edge_cases() {
        let mut same = Backoff::new(5, 5);
        assert_eq!(same.next_delay(123), 5);
        let mut swapped = Backoff::new(10, 1);
        assert_eq!(swapped.next_delay(7), 1, "min and max swapped");
        let mut wide = Backoff::new(0, u64::MAX);
        for _ in 0..70 {
            wide.next_delay(u64::MAX);
        }
        assert_eq!(wide.next_delay(42), 42);
        let mut zero = Backoff::new(0, 1_000);
        assert_eq!(zero.next_delay(999), 999 % 2);
        for _ in 0..3 {
            zero.next_delay(0);
        }
        assert_eq!(zero.next_delay(16), 16, "min 0 still grows: [0, 16]");
    }
}
