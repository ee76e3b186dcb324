//! A fast hash for keys the broker assigns itself: session and connection
//! ids, message ids, queue sequence numbers.
//!
//! std's default SipHash resists hash flooding, which matters for keys a
//! client chooses (client ids, topics) and costs a few percent of the
//! broker's time on these hot maps. Keys the broker hands out cannot be
//! chosen by anyone, so one multiply per word is enough (the FxHash
//! scheme; hashbrown takes its bucket from the well-mixed high bits).

use std::hash::{BuildHasherDefault, Hasher};

/// Builds [`IdHasher`]s; use only for keys the broker assigns.
pub(crate) type IdBuild = BuildHasherDefault<IdHasher>;

/// A `HashMap` keyed by broker-assigned ids.
pub(crate) type IdMap<K, V> = std::collections::HashMap<K, V, IdBuild>;

/// A `HashSet` of broker-assigned ids.
pub(crate) type IdSet<K> = std::collections::HashSet<K, IdBuild>;

#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct IdHasher(u64);

const K: u64 = 0xf135_7aea_2e62_a9c5;

impl IdHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(26) ^ word).wrapping_mul(K);
    }
}

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
    }

    fn write_u8(&mut self, n: u8) {
        self.add(u64::from(n));
    }

    fn write_u16(&mut self, n: u16) {
        self.add(u64::from(n));
    }

    fn write_u32(&mut self, n: u32) {
        self.add(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }

    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequential_ids_spread_over_buckets() {
        // hashbrown picks buckets from the low bits and tags from the top
        // seven: both must vary for consecutive ids.
        let hashes: Vec<u64> = (0..1024u64)
            .map(|i| {
                let mut h = IdHasher::default();
                h.write_u64(i);
                h.finish()
            })
            .collect();
        let low: IdSet<u64> = hashes.iter().map(|h| h & 1023).collect();
        let top: IdSet<u64> = hashes.iter().map(|h| h >> 57).collect();
        assert!(low.len() > 600, "{} distinct low bit patterns", low.len());
        assert_eq!(top.len(), 128);
    }
}
