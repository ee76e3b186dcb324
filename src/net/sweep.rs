//! When busy connections let go of their write buffers.
//!
//! A connection that writes keeps its buffers between bursts: freeing them
//! each time its outbox runs dry cost fan-out a tenth of its throughput
//! (allocator work and lock contention between the core, which fills
//! outboxes, and the connections, which empty them). Kept for good, though,
//! they would make every connection that ever wrote cost as much as a busy
//! one. So a connection frees them once it has been idle across a sweep:
//! the sweep ticks every second and wakes the connections that asked, and
//! one that has written nothing since the tick lets its buffers go. Only
//! busy connections wait for a tick (see `Duplex::idle`): the others free
//! their buffers at once.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::task::Waker;

/// Ticks of one second, and the connections waiting for the next one.
#[derive(Debug)]
pub(crate) struct IdleSweep {
    /// Starts at 1, so that 0 can mean "never" to a connection.
    epoch: AtomicU32,
    waiting: Mutex<Vec<Waker>>,
}

impl Default for IdleSweep {
    fn default() -> Self {
        IdleSweep {
            epoch: AtomicU32::new(1),
            waiting: Mutex::new(Vec::new()),
        }
    }
}

impl IdleSweep {
    /// How many ticks have passed (plus one).
    pub(crate) fn epoch(&self) -> u32 {
        self.epoch.load(Ordering::Relaxed)
    }

    /// Wakes `waker` at the next tick.
    pub(crate) fn wake_at_next_tick(&self, waker: &Waker) {
        self.lock().push(waker.clone());
    }

    /// A tick: wakes everyone who asked.
    pub(crate) fn tick(&self) {
        self.epoch.fetch_add(1, Ordering::Relaxed);
        let waiting = std::mem::take(&mut *self.lock());
        for w in waiting {
            w.wake();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Waker>> {
        // A list of wakers is consistent whatever panicked.
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }
}
