//! Allocations go back to the thread that made them: written messages to
//! the core to be freed, emptied batch vectors to the readers.
//!
//! The core allocates every shared message (`M`: whatever the outboxes
//! hold, see [`crate::link::outbound`]); a QoS 0 message's last reference
//! is usually dropped by the writer that sent its last copy, often on
//! another thread. glibc's allocator frees a block into the arena of the
//! thread that allocated it, under that arena's lock, so every such free
//! contended with the core's own allocations: measured, half of the
//! broker's futex calls and a tenth of its CPU in fan-in at QoS 0. Writers
//! instead hand messages they hold the last reference to back here, one
//! lock per write round, and the core drops them between its events.
//! Measured (fan-in, 10 publishers to one subscriber, QoS 0, 1 KiB): broker
//! futex calls 18k -> 5k per 400k messages; with the core as a runtime
//! task, 710-749k msg/s without this against 866-878k with it. (Reusing
//! the handed-back allocations for new messages measured no better.)
//!
//! The bin is bounded ([`BIN_MAX`]): past it, writers free as before, so a
//! busy core never holds more than that many written messages.
//!
//! The other way round, the vectors that carry batches of packets from the
//! readers to the core go back to the readers ([`Batches`]).

use crate::codec::Packet;
use std::sync::{Arc, Mutex};

/// Most messages waiting in the bin for the core.
pub(crate) const BIN_MAX: usize = 1024;

/// Written messages waiting to be freed by the core.
#[derive(Debug)]
pub(crate) struct Reclaim<M> {
    bin: Mutex<Vec<Arc<M>>>,
}

// By hand: derived, it would ask for `M: Default`.
impl<M> Default for Reclaim<M> {
    fn default() -> Self {
        Reclaim {
            bin: Mutex::default(),
        }
    }
}

impl<M> Reclaim<M> {
    /// Keeps `msg` for the core if nobody else holds it (otherwise it
    /// simply drops this reference).
    pub(crate) fn keep(kept: &mut Vec<Arc<M>>, msg: Arc<M>) {
        if Arc::strong_count(&msg) == 1 {
            kept.push(msg);
        }
    }

    /// Hands `kept` to the core, or frees it here if the bin is full.
    /// `kept` is left empty, with its capacity.
    pub(crate) fn give(&self, kept: &mut Vec<Arc<M>>) {
        if kept.is_empty() {
            return;
        }
        if let Ok(mut bin) = self.bin.lock() {
            if bin.len() + kept.len() <= BIN_MAX {
                bin.append(kept);
                return;
            }
        }
        kept.clear();
    }

    /// Frees what the writers handed back (called by the core). `spare`
    /// is swapped with the bin, so neither vector's buffer is reallocated.
    pub(crate) fn free(&self, spare: &mut Vec<Arc<M>>) {
        if let Ok(mut bin) = self.bin.lock() {
            if bin.is_empty() {
                return;
            }
            std::mem::swap(&mut *bin, spare);
        }
        spare.clear();
    }
}

/// Emptied batch vectors (the core's `Event::Packets`), for readers
/// to fill again: a reader allocates one per batch of packets and the core
/// freed it, a cross-thread free per batch like those above (a quarter of
/// the broker's remaining futex calls in fan-in).
#[derive(Debug, Default)]
pub(crate) struct Batches {
    spare: Mutex<Vec<Vec<Packet>>>,
}

impl Batches {
    /// Most kept (64 x 16 packets x 256 bytes: 256 KiB at most).
    const MAX: usize = 64;

    /// An empty vector with room for `capacity` packets, reused if one is
    /// kept.
    pub(crate) fn take(&self, capacity: usize) -> Vec<Packet> {
        match self.spare.lock().ok().and_then(|mut s| s.pop()) {
            Some(v) => v,
            None => Vec::with_capacity(capacity),
        }
    }

    /// Keeps `v` (emptied by the core) for [`Batches::take`].
    pub(crate) fn put(&self, mut v: Vec<Packet>) {
        v.clear();
        if v.capacity() == 0 {
            return;
        }
        if let Ok(mut spare) = self.spare.lock() {
            if spare.len() < Self::MAX {
                spare.push(v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{Publish, PublishProperties, QosPid};
    use crate::message::Message;

    /// Link's bin as its tests fill it: with bare messages.
    type Reclaim = super::Reclaim<Message>;

    fn message() -> Arc<Message> {
        let p = Publish {
            dup: false,
            qos_pid: QosPid::AtMostOnce,
            retain: false,
            topic: "t".into(),
            payload: bytes::Bytes::from_static(b"x"),
            properties: PublishProperties::default(),
        };
        Arc::new(Message::from_publish(p, 0, None))
    }

    #[test]
    fn only_last_references_are_kept_and_the_core_frees_them() {
        let reclaim = Reclaim::default();
        let (shared, last) = (message(), message());
        let mut kept = Vec::new();
        Reclaim::keep(&mut kept, shared.clone());
        Reclaim::keep(&mut kept, last.clone());
        // Both still had another holder here.
        assert!(kept.is_empty());
        let watch = Arc::downgrade(&last);
        Reclaim::keep(&mut kept, last);
        assert_eq!(kept.len(), 1);
        reclaim.give(&mut kept);
        assert!(kept.is_empty() && kept.capacity() > 0);
        assert!(watch.upgrade().is_some(), "waits in the bin for the core");
        let mut spare = Vec::new();
        reclaim.free(&mut spare);
        assert!(watch.upgrade().is_none(), "the core freed it");
        assert!(spare.is_empty());
        drop(shared);
    }

    #[test]
    fn a_full_bin_makes_the_writer_free_its_own() {
        let reclaim = Reclaim::default();
        let mut kept: Vec<_> = (0..BIN_MAX).map(|_| message()).collect();
        reclaim.give(&mut kept);
        kept.push(message());
        let watch = Arc::downgrade(&kept[0]);
        reclaim.give(&mut kept);
        assert!(kept.is_empty());
        assert!(watch.upgrade().is_none(), "freed by the writer");
        let mut spare = Vec::new();
        reclaim.free(&mut spare);
        assert_eq!(reclaim.bin.lock().unwrap().len(), 0);
    }

    #[test]
    fn emptied_batches_are_handed_out_again_up_to_a_bound() {
        let batches = Batches::default();
        let fresh = batches.take(16);
        assert!(fresh.is_empty() && fresh.capacity() >= 16);
        let mut used = fresh;
        used.push(Packet::PingReq);
        let at = used.as_ptr();
        batches.put(used);
        let again = batches.take(16);
        assert!(again.is_empty(), "handed back emptied");
        assert_eq!(again.as_ptr(), at, "the same allocation");
        for _ in 0..Batches::MAX + 10 {
            batches.put(Vec::with_capacity(16));
        }
        assert_eq!(batches.spare.lock().unwrap().len(), Batches::MAX);
        batches.put(Vec::new());
        assert_eq!(batches.spare.lock().unwrap().len(), Batches::MAX);
    }
}
