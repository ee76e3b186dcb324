//! The local side of bridges. Each bridge is a persistent session under a
//! reserved client id (`$bridge/<name>`), served by the bridge's driver as
//! an in-process client: its forward rules are its subscriptions, its
//! queue is the session's queue (stored, spilled to disk past the memory
//! window), its in-flight window the remote's. What the core does
//! differently for it is here: the queue limits are the bridge's own and
//! never pause publishers (a link that is down for a day is the normal
//! case, and the disk is the buffer), a full queue is counted as the
//! bridge's refusal, and subscriptions no rule asks for any more are
//! dropped when the bridge connects.

use super::*;
use crate::escape::Escaped;
use crate::stats::BridgeStats;

/// Client ids under this prefix belong to bridges: network clients may not
/// use them (CONNACK 0x85 / 0x02), so none can take a bridge's session.
pub(crate) const CLIENT_ID_PREFIX: &str = "$bridge/";

/// The local session of one bridge, as the core needs to know it.
#[derive(Debug, Clone)]
pub(crate) struct BridgeSession {
    /// `$bridge/<name>`.
    pub(crate) client_id: ByteStr,
    /// The forward rules' local filters: any other subscription the stored
    /// session still has came from an older configuration.
    pub(crate) filters: Vec<ByteStr>,
    pub(crate) limit: Arc<QueueLimit>,
}

/// A bridge's queue bounds, in place of `maximum_queued_*`.
#[derive(Debug)]
pub(crate) struct QueueLimit {
    pub(crate) messages: usize,
    pub(crate) bytes: usize,
    /// Where refusals are counted and the queue length is sampled.
    pub(crate) stats: Arc<BridgeStats>,
}

impl Broker {
    /// Registers the bridges' local sessions: sessions restored under their
    /// ids get their limits now, new ones when they connect. The session of
    /// a bridge no longer configured ends, queue and all: nothing would
    /// ever forward it, and it would keep taking copies of what its rules
    /// matched. `now_ms` is the current time.
    pub(crate) fn set_bridges(&mut self, bridges: Vec<BridgeSession>, now_ms: u64) {
        let stale: Vec<(ByteStr, SessionId)> = self
            .by_client_id
            .iter()
            .filter(|(id, _)| {
                id.starts_with(CLIENT_ID_PREFIX) && !bridges.iter().any(|b| &b.client_id == *id)
            })
            .map(|(id, sid)| (id.clone(), *sid))
            .collect();
        for (id, sid) in stale {
            let queued = self.sessions.get(&sid).map_or(0, |s| s.queued_total());
            tracing::warn!(client_id = %Escaped(&id), queued,
                "bridge no longer configured: its session ends, with the messages it had queued");
            self.end_session(sid, now_ms);
        }
        for b in &bridges {
            if let Some(s) = self
                .by_client_id
                .get(&b.client_id)
                .and_then(|sid| self.sessions.get_mut(sid))
            {
                s.queue_limit = Some(b.limit.clone());
            }
        }
        self.bridges = bridges
            .into_iter()
            .map(|b| (b.client_id.clone(), b))
            .collect();
    }

    /// A bridge's session connected: it gets the bridge's limits, and loses
    /// the subscriptions of rules no longer configured (their messages
    /// would have no rule to be forwarded by).
    pub(super) fn bridge_connected(&mut self, sid: SessionId) {
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        let Some(b) = self.bridges.get(s.client_id()) else {
            return;
        };
        s.queue_limit = Some(b.limit.clone());
        let stale: Vec<ByteStr> = s
            .subscriptions
            .filters()
            .filter(|f| !b.filters.contains(f))
            .cloned()
            .collect();
        if !stale.is_empty() {
            tracing::info!(client_id = %Escaped(s.client_id()), filters = ?stale,
                "bridge: subscriptions of rules no longer configured removed");
            self.remove_subscriptions(sid, stale);
        }
    }

    /// Samples each bridge's queue length for its stats.
    pub(super) fn sample_bridges(&self) {
        for b in self.bridges.values() {
            let queued = self
                .by_client_id
                .get(&b.client_id)
                .and_then(|sid| self.sessions.get(sid))
                .map_or(0, |s| s.queued_total());
            b.limit
                .stats
                .queued
                .store(queued as u64, std::sync::atomic::Ordering::Relaxed);
        }
    }
}
