//! The keep-alive: a client that sends nothing for one and a half times its
//! Keep Alive is disconnected ([MQTT-3.1.2-24]; 5.0 with DISCONNECT 0x8D).
//!
//! The core watches it rather than each connection's task: a timer in the
//! task was 112 of its bytes, and with it the task took tokio's 512-byte
//! cell instead of the 384-byte one, for every connection, idle or not.
//! Connections only note when they start waiting for the client and when
//! it speaks ([`crate::link::outbox::Outbox::listening`], `heard`): as with the
//! timer before, the keep-alive runs only while a connection waits for its
//! client, never while the broker is busy with what the client sent
//! (paused reads behind a congested subscriber, a wait for the core). Here,
//! one entry per watched connection says when to look next. Looking
//! happens on the core's tick (every second), so a silent client goes at
//! most about a second after its time, never before.

use super::ConnId;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// Connections with a keep-alive, by when to look at them next.
#[derive(Debug, Default)]
pub(super) struct KeepAlives {
    /// (when to look, ms on the monotonic clock connections stamp
    /// [`crate::link::outbox::Outbox::listening`] with, `Now::mono_ms`;
    /// the connection; its allowed silence in ms).
    due: BinaryHeap<Reverse<(u64, ConnId, u32)>>,
}

/// What a look at a connection found.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Look {
    /// Silent too long: disconnect it.
    Expired,
    /// Look again at this time.
    Later(u64),
}

impl KeepAlives {
    /// Watches `conn`, whose keep-alive is `keep_alive` seconds (0: none),
    /// from `now`.
    pub(super) fn watch(&mut self, conn: ConnId, keep_alive: u16, now: u64) {
        if keep_alive == 0 {
            return;
        }
        // [MQTT-3.1.2-24]: one and a half times the Keep Alive.
        let allowed = u32::from(keep_alive) * 1500;
        self.due
            .push(Reverse((now + u64::from(allowed), conn, allowed)));
    }

    /// True when entries outnumber the `live` connections by so much that
    /// those of connections gone (kept until their time comes) should be
    /// dropped: a churn of clients with long keep-alives would otherwise
    /// pile them up.
    pub(super) fn crowded(&self, live: usize) -> bool {
        self.due.len() > 2 * live + 64
    }

    /// Drops the entries of connections `exists` no longer knows.
    pub(super) fn forget_gone(&mut self, exists: impl Fn(ConnId) -> bool) {
        self.due.retain(|Reverse((_, conn, _))| exists(*conn));
    }

    /// The next connection due at `now`, with its allowed silence.
    pub(super) fn next_due(&mut self, now: u64) -> Option<(ConnId, u32)> {
        let Reverse((at, conn, allowed)) = *self.due.peek()?;
        if at > now {
            return None;
        }
        self.due.pop();
        Some((conn, allowed))
    }

    /// Decides on a due connection silent for `silent` ms, and watches it
    /// again if it may go on.
    pub(super) fn look(&mut self, conn: ConnId, allowed: u32, silent: u32, now: u64) -> Look {
        if silent >= allowed {
            return Look::Expired;
        }
        let at = now + u64::from(allowed - silent);
        self.due.push(Reverse((at, conn, allowed)));
        Look::Later(at)
    }

    /// Connections watched (gone ones included until dropped).
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.due.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_is_looked_at_when_its_time_comes() {
        let mut k = KeepAlives::default();
        k.watch(ConnId(1), 2, 1_000);
        k.watch(ConnId(2), 0, 1_000);
        assert_eq!(k.len(), 1, "no keep-alive, nothing to watch");
        assert_eq!(k.next_due(3_999), None);
        assert_eq!(k.next_due(4_000), Some((ConnId(1), 3_000)));
        assert_eq!(k.next_due(4_000), None);
    }

    #[test]
    fn a_connection_heard_from_is_looked_at_again_later() {
        let mut k = KeepAlives::default();
        k.watch(ConnId(1), 2, 0);
        let (conn, allowed) = k.next_due(3_000).unwrap();
        // Read a packet 1.2 s ago: 1.8 s left.
        assert_eq!(k.look(conn, allowed, 1_200, 3_000), Look::Later(4_800));
        assert_eq!(k.next_due(4_799), None);
        let (conn, allowed) = k.next_due(4_800).unwrap();
        assert_eq!(k.look(conn, allowed, 2_999, 4_800), Look::Later(4_801));
        let (conn, allowed) = k.next_due(4_801).unwrap();
        assert_eq!(k.look(conn, allowed, 3_000, 4_801), Look::Expired);
        assert_eq!(k.len(), 0);
    }

    #[test]
    fn entries_of_gone_connections_do_not_pile_up() {
        let mut k = KeepAlives::default();
        // A churn of short connections, one live at a time (the last).
        for i in 0..10_000 {
            k.watch(ConnId(i), 60, 0);
            if k.crowded(1) {
                k.forget_gone(|c| c == ConnId(i));
            }
        }
        assert!(k.len() <= 2 + 64 + 1, "{} entries", k.len());
        // The live one is still watched.
        let due: Vec<_> = std::iter::from_fn(|| k.next_due(90_000)).collect();
        assert!(due.contains(&(ConnId(9_999), 90_000)));
    }
}
