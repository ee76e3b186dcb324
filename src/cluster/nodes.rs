//! The node registry (issue 19), as plain data: what each node says about
//! itself in the bucket `<name>_nodes`, and the set of nodes alive that a
//! node reads from it.
//!
//! Every node puts its [`NodeRecord`] under its name every [`HEARTBEAT`],
//! and deletes it when it stops cleanly. A node that dies, or loses its
//! NATS connection, stops writing: it counts as alive until [`TTL`] after
//! its last record, and the bucket's `max_age` (the same TTL) drops the
//! record itself. Liveness is judged by each reader from when it received
//! a record (and the record's age in the bucket, for the ones it loads at
//! start), not by comparing clocks of different machines.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often a node writes its record: a third of [`TTL`], so one record
/// lost or delayed (a NATS leader election takes about 4 s with
/// nats-server 2.9's defaults) does not make a live node look dead.
pub(crate) const HEARTBEAT: Duration = Duration::from_secs(5);

/// How long after its last record a node counts as alive; also the
/// bucket's `max_age`. Long enough for the heartbeat's (5 s) slack, short
/// enough that a dead node's clients and sessions are taken over within
/// seconds, not minutes.
pub const TTL: Duration = Duration::from_secs(15);

/// What a node says about itself in the registry (JSON in the bucket).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct NodeRecord {
    /// The node's name (its key in the bucket).
    pub node: String,
    /// When it started, in seconds since the Unix epoch.
    pub started_at: u64,
    /// Clients connected to it.
    pub clients: u64,
    /// Subscriptions held on it.
    pub subscriptions: u64,
    /// Its roost version.
    pub version: String,
}

/// The nodes alive as this node sees them. Cheap to clone; clones share
/// the set, which the node's registry task keeps up to date.
#[derive(Debug, Clone, Default)]
pub struct NodeSet(Arc<Mutex<BTreeMap<String, Seen>>>);

#[derive(Debug, Clone)]
struct Seen {
    record: NodeRecord,
    /// Alive until then, unless a newer record comes.
    until: Instant,
}

impl NodeSet {
    /// Whether node `node` is alive at `now`: its last record is younger than
    /// [`TTL`] and it has not stopped.
    pub fn is_alive(&self, node: &str, now: Instant) -> bool {
        self.lock().get(node).is_some_and(|s| s.until > now)
    }

    /// The records of the nodes alive at `now`, by name.
    pub fn live(&self, now: Instant) -> Vec<NodeRecord> {
        self.lock()
            .values()
            .filter(|s| s.until > now)
            .map(|s| s.record.clone())
            .collect()
    }

    /// `record` was read at `now`, `age` after it was written.
    pub(crate) fn seen(&self, record: NodeRecord, age: Duration, now: Instant) {
        let Some(until) = (now + TTL).checked_sub(age) else {
            return;
        };
        self.lock()
            .insert(record.node.clone(), Seen { record, until });
    }

    /// `node` stopped (its record was deleted).
    pub(crate) fn gone(&self, node: &str) {
        self.lock().remove(node);
    }

    /// Forgets the nodes whose records are older than [`TTL`] at `now`.
    pub(crate) fn prune(&self, now: Instant) {
        self.lock().retain(|_, s| s.until > now);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Seen>> {
        // A panic while holding it leaves a map, still consistent.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(node: &str) -> NodeRecord {
        NodeRecord {
            node: node.into(),
            started_at: 1,
            clients: 2,
            subscriptions: 3,
            version: "0.1.0".into(),
        }
    }

    #[test]
    fn a_node_is_alive_for_the_ttl_after_its_record_was_written() {
        let set = NodeSet::default();
        let now = Instant::now();
        set.seen(record("a"), Duration::ZERO, now);
        set.seen(record("old"), TTL + Duration::from_secs(1), now);
        set.seen(record("b"), TTL - Duration::from_secs(1), now);
        assert!(set.is_alive("a", now) && set.is_alive("b", now));
        assert!(!set.is_alive("old", now), "written longer than the TTL ago");
        let later = now + Duration::from_secs(2);
        assert!(!set.is_alive("b", later), "its TTL ran out");
        set.prune(later);
        assert_eq!(set.live(later), [record("a")]);
        set.gone("a");
        assert!(!set.is_alive("a", later) && set.live(later).is_empty());
    }

    #[test]
    fn records_are_the_json_the_issue_names() {
        let v = serde_json::to_value(record("gw-1")).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"node": "gw-1", "started_at": 1, "clients": 2,
                "subscriptions": 3, "version": "0.1.0"})
        );
        let back: NodeRecord = serde_json::from_value(v).unwrap();
        assert_eq!(back, record("gw-1"));
    }
}
