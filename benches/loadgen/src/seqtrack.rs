//! Lost and duplicated messages: which sequence numbers of which publisher
//! one subscriber has seen.

/// Highest publisher index accepted; anything above is not ours.
const MAX_PUBLISHERS: u32 = 1 << 16;
/// Highest sequence number accepted (a bitset this long is 512 MiB).
const MAX_SEQ: u64 = 1 << 32;

/// The sequence numbers seen, per publisher.
#[derive(Debug, Clone, Default)]
pub struct SeqTracker {
    /// One bitset per publisher index.
    seen: Vec<Vec<u64>>,
    /// Distinct sequence numbers seen, per publisher index.
    unique: Vec<u64>,
    received: u64,
    foreign: u64,
}

impl SeqTracker {
    /// An empty tracker.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records message `seq` of `publisher`; true if it was new.
    pub fn record(&mut self, publisher: u32, seq: u64) -> bool {
        if publisher >= MAX_PUBLISHERS || seq >= MAX_SEQ {
            self.foreign += 1;
            return false;
        }
        self.received += 1;
        let p = publisher as usize;
        if self.seen.len() <= p {
            self.seen.resize_with(p + 1, Vec::new);
            self.unique.resize(p + 1, 0);
        }
        let bits = &mut self.seen[p];
        let word = (seq / 64) as usize;
        if bits.len() <= word {
            bits.resize((word + 1).next_power_of_two(), 0);
        }
        let mask = 1u64 << (seq % 64);
        if bits[word] & mask != 0 {
            return false;
        }
        bits[word] |= mask;
        self.unique[p] += 1;
        true
    }

    /// Messages received, duplicates included (foreign ones excluded).
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Distinct messages received.
    pub fn unique(&self) -> u64 {
        self.unique.iter().sum()
    }

    /// Messages received more than once (each extra copy counts).
    pub fn duplicates(&self) -> u64 {
        self.received - self.unique()
    }

    /// Payloads that did not carry a plausible publisher and sequence.
    pub fn foreign(&self) -> u64 {
        self.foreign
    }

    /// Messages never received, given what each publisher this subscriber
    /// listens to has sent: `(publisher, sent)`.
    pub fn lost(&self, expected: impl IntoIterator<Item = (u32, u64)>) -> u64 {
        expected
            .into_iter()
            .map(|(p, sent)| {
                let got = self.unique.get(p as usize).copied().unwrap_or(0);
                sent.saturating_sub(got)
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_lost_and_duplicates() {
        let mut t = SeqTracker::new();
        for seq in 0..100 {
            if seq != 42 {
                assert!(t.record(0, seq));
            }
        }
        assert!(!t.record(0, 7));
        assert!(t.record(3, 0));
        assert_eq!(t.received(), 101);
        assert_eq!(t.unique(), 100);
        assert_eq!(t.duplicates(), 1);
        // Publisher 0 sent 100 (one lost), 3 sent 2 (one lost), 5 sent 1.
        assert_eq!(t.lost([(0, 100), (3, 2), (5, 1)]), 3);
    }

    #[test]
    fn ignores_implausible_ids() {
        let mut t = SeqTracker::new();
        assert!(!t.record(u32::MAX, 0));
        assert!(!t.record(0, u64::MAX));
        assert_eq!(t.received(), 0);
        assert_eq!(t.foreign(), 2);
    }
}
