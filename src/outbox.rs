//! The queue of packets waiting to be written to one connection.
//!
//! The broker core pushes packets under a short lock and never waits; the
//! connection's writer task drains everything that is queued in one go, so
//! many packets share one write (coalescing). The core reads the queue length
//! to apply its slow-consumer policy.

use crate::codec::Packet;
use std::collections::VecDeque;
use std::sync::Mutex;
use tokio::sync::Notify;

/// Packets for one connection, plus a "close after these" flag.
#[derive(Debug, Default)]
pub struct Outbox {
    inner: Mutex<Inner>,
    notify: Notify,
}

#[derive(Debug, Default)]
struct Inner {
    queue: VecDeque<Packet>,
    closed: bool,
}

impl Outbox {
    /// An empty, open outbox.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave the queue in a broken
        // state (push/drain are single calls), so a poisoned lock is usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a packet. Returns false (and drops it) once closed.
    pub fn push(&self, packet: Packet) -> bool {
        let mut inner = self.lock();
        if inner.closed {
            return false;
        }
        let was_empty = inner.queue.is_empty();
        inner.queue.push_back(packet);
        drop(inner);
        if was_empty {
            self.notify.notify_one();
        }
        true
    }

    /// Packets waiting to be written.
    pub fn len(&self) -> usize {
        self.lock().queue.len()
    }

    /// True when nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Asks the writer to write what is queued, then close the connection.
    /// Later pushes are dropped.
    pub fn close(&self) {
        self.lock().closed = true;
        self.notify.notify_one();
    }

    /// True once [`Outbox::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Moves everything queued into `into`. Returns false when the outbox is
    /// closed and nothing more will come.
    pub fn try_drain(&self, into: &mut Vec<Packet>) -> bool {
        let mut inner = self.lock();
        into.extend(inner.queue.drain(..));
        !(inner.closed && into.is_empty())
    }

    /// Waits until something is queued or the outbox is closed, then drains
    /// like [`Outbox::try_drain`].
    pub async fn drain(&self, into: &mut Vec<Packet>) -> bool {
        loop {
            {
                let mut inner = self.lock();
                if !inner.queue.is_empty() || inner.closed {
                    into.extend(inner.queue.drain(..));
                    return !(inner.closed && into.is_empty());
                }
            }
            // notify_one stores a permit when nobody waits, so a push between
            // the check above and this await is not missed.
            self.notify.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_drain_close() {
        let o = Outbox::new();
        assert!(o.push(Packet::PingResp));
        assert!(o.push(Packet::PingResp));
        let mut v = Vec::new();
        assert!(o.try_drain(&mut v));
        assert_eq!(v.len(), 2);
        o.close();
        assert!(!o.push(Packet::PingResp));
        v.clear();
        assert!(!o.try_drain(&mut v));
    }
}
