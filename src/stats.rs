//! Broker counters and gauges, shared between the core, the connection tasks
//! and whoever reads them (the `$SYS` topics, the HTTP endpoint, the host
//! application).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// Live counters. Every field is updated with relaxed atomics: readers see a
/// recent value, not a consistent snapshot across fields.
#[derive(Debug)]
pub struct Stats {
    started: SystemTime,
    pub(crate) bytes_received: AtomicU64,
    pub(crate) bytes_sent: AtomicU64,
    pub(crate) packets_received: AtomicU64,
    pub(crate) packets_sent: AtomicU64,
    pub(crate) messages_received: AtomicU64,
    pub(crate) messages_sent: AtomicU64,
    pub(crate) messages_dropped: AtomicU64,
    pub(crate) clients_connected: AtomicU64,
    pub(crate) clients_disconnected: AtomicU64,
    pub(crate) clients_maximum: AtomicU64,
    pub(crate) clients_total: AtomicU64,
    pub(crate) inflight: AtomicU64,
    pub(crate) retained: AtomicU64,
    pub(crate) subscriptions: AtomicU64,
    pub(crate) storage_errors: AtomicU64,
    /// 1 while the last store write failed, 0 once one succeeds.
    pub(crate) storage_failing: AtomicU64,
    pub(crate) storage_commits: AtomicU64,
    pub(crate) storage_ops_written: AtomicU64,
    pub(crate) storage_ops_saved: AtomicU64,
    pub(crate) topic_alias_refused: AtomicU64,
    pub(crate) packet_read_timeouts: AtomicU64,
    pub(crate) write_timeouts: AtomicU64,
    pub(crate) connect_too_large: AtomicU64,
    pub(crate) unauthenticated_refused: AtomicU64,
    pub(crate) connections_refused: AtomicU64,
    pub(crate) handshakes_failed: AtomicU64,
    pub(crate) auth_refused: AtomicU64,
    pub(crate) acl_denied: AtomicU64,
    pub(crate) connections_refused_per_ip: AtomicU64,
    pub(crate) connect_rate_refused: AtomicU64,
    pub(crate) http_evicted: AtomicU64,
    pub(crate) tls_revoked_refused: AtomicU64,
    pub(crate) tls_revoked_closed: AtomicU64,
    pub(crate) retained_refused: AtomicU64,
    pub(crate) storage_refused: AtomicU64,
    pub(crate) cluster_refused: AtomicU64,
    pub(crate) packets_ignored: AtomicU64,
    pub(crate) answer_pauses: AtomicU64,
    pub(crate) queue_memory_bytes: AtomicU64,
    pub(crate) queue_disk_messages: AtomicU64,
    pub(crate) queue_disk_bytes: AtomicU64,
    pub(crate) queue_pages_read: AtomicU64,
    pub(crate) queue_messages_read: AtomicU64,
    pub(crate) retained_memory_bytes: AtomicU64,
    pub(crate) retained_disk_bytes: AtomicU64,
    pub(crate) retained_cache_hits: AtomicU64,
    pub(crate) retained_reads: AtomicU64,
    /// One entry per bridge, in configuration order; fixed once serving.
    pub(crate) bridges: std::sync::RwLock<Vec<Arc<BridgeStats>>>,
    /// The cluster as this node sees it (feature `cluster`), kept by its
    /// node registry task; `None` without a cluster.
    pub(crate) cluster: std::sync::RwLock<Option<ClusterSnapshot>>,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            started: SystemTime::now(),
            bytes_received: AtomicU64::new(0),
            bytes_sent: AtomicU64::new(0),
            packets_received: AtomicU64::new(0),
            packets_sent: AtomicU64::new(0),
            messages_received: AtomicU64::new(0),
            messages_sent: AtomicU64::new(0),
            messages_dropped: AtomicU64::new(0),
            clients_connected: AtomicU64::new(0),
            clients_disconnected: AtomicU64::new(0),
            clients_maximum: AtomicU64::new(0),
            clients_total: AtomicU64::new(0),
            inflight: AtomicU64::new(0),
            retained: AtomicU64::new(0),
            subscriptions: AtomicU64::new(0),
            storage_errors: AtomicU64::new(0),
            storage_failing: AtomicU64::new(0),
            storage_commits: AtomicU64::new(0),
            storage_ops_written: AtomicU64::new(0),
            storage_ops_saved: AtomicU64::new(0),
            topic_alias_refused: AtomicU64::new(0),
            packet_read_timeouts: AtomicU64::new(0),
            write_timeouts: AtomicU64::new(0),
            connect_too_large: AtomicU64::new(0),
            unauthenticated_refused: AtomicU64::new(0),
            connections_refused: AtomicU64::new(0),
            handshakes_failed: AtomicU64::new(0),
            auth_refused: AtomicU64::new(0),
            acl_denied: AtomicU64::new(0),
            connections_refused_per_ip: AtomicU64::new(0),
            connect_rate_refused: AtomicU64::new(0),
            http_evicted: AtomicU64::new(0),
            tls_revoked_refused: AtomicU64::new(0),
            tls_revoked_closed: AtomicU64::new(0),
            retained_refused: AtomicU64::new(0),
            storage_refused: AtomicU64::new(0),
            cluster_refused: AtomicU64::new(0),
            packets_ignored: AtomicU64::new(0),
            answer_pauses: AtomicU64::new(0),
            queue_memory_bytes: AtomicU64::new(0),
            queue_disk_messages: AtomicU64::new(0),
            queue_disk_bytes: AtomicU64::new(0),
            queue_pages_read: AtomicU64::new(0),
            queue_messages_read: AtomicU64::new(0),
            retained_memory_bytes: AtomicU64::new(0),
            retained_disk_bytes: AtomicU64::new(0),
            retained_cache_hits: AtomicU64::new(0),
            retained_reads: AtomicU64::new(0),
            bridges: std::sync::RwLock::new(Vec::new()),
            cluster: std::sync::RwLock::new(None),
        }
    }
}

pub(crate) fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Relaxed);
}

impl Stats {
    /// A point-in-time copy of every counter.
    pub fn snapshot(&self) -> StatsSnapshot {
        self.snapshot_at(SystemTime::now())
    }

    /// [`Stats::snapshot`] with the uptime counted to `now`: the core
    /// reads no clock, it is given the time.
    pub(crate) fn snapshot_at(&self, now: SystemTime) -> StatsSnapshot {
        let g = |c: &AtomicU64| c.load(Relaxed);
        StatsSnapshot {
            started: self.started,
            uptime_secs: now
                .duration_since(self.started)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            bytes_received: g(&self.bytes_received),
            bytes_sent: g(&self.bytes_sent),
            packets_received: g(&self.packets_received),
            packets_sent: g(&self.packets_sent),
            messages_received: g(&self.messages_received),
            messages_sent: g(&self.messages_sent),
            messages_dropped: g(&self.messages_dropped),
            clients_connected: g(&self.clients_connected),
            clients_disconnected: g(&self.clients_disconnected),
            clients_maximum: g(&self.clients_maximum),
            clients_total: g(&self.clients_total),
            inflight: g(&self.inflight),
            retained: g(&self.retained),
            subscriptions: g(&self.subscriptions),
            storage_errors: g(&self.storage_errors),
            storage_failing: g(&self.storage_failing) != 0,
            storage_commits: g(&self.storage_commits),
            storage_ops_written: g(&self.storage_ops_written),
            storage_ops_saved: g(&self.storage_ops_saved),
            topic_alias_refused: g(&self.topic_alias_refused),
            packet_read_timeouts: g(&self.packet_read_timeouts),
            write_timeouts: g(&self.write_timeouts),
            connect_too_large: g(&self.connect_too_large),
            unauthenticated_refused: g(&self.unauthenticated_refused),
            connections_refused: g(&self.connections_refused),
            handshakes_failed: g(&self.handshakes_failed),
            auth_refused: g(&self.auth_refused),
            acl_denied: g(&self.acl_denied),
            connections_refused_per_ip: g(&self.connections_refused_per_ip),
            connect_rate_refused: g(&self.connect_rate_refused),
            http_evicted: g(&self.http_evicted),
            tls_revoked_refused: g(&self.tls_revoked_refused),
            tls_revoked_closed: g(&self.tls_revoked_closed),
            retained_refused: g(&self.retained_refused),
            storage_refused: g(&self.storage_refused),
            cluster_refused: g(&self.cluster_refused),
            packets_ignored: g(&self.packets_ignored),
            answer_pauses: g(&self.answer_pauses),
            queue_memory_bytes: g(&self.queue_memory_bytes),
            queue_disk_messages: g(&self.queue_disk_messages),
            queue_disk_bytes: g(&self.queue_disk_bytes),
            queue_pages_read: g(&self.queue_pages_read),
            queue_messages_read: g(&self.queue_messages_read),
            retained_memory_bytes: g(&self.retained_memory_bytes),
            retained_disk_bytes: g(&self.retained_disk_bytes),
            retained_cache_hits: g(&self.retained_cache_hits),
            retained_reads: g(&self.retained_reads),
            bridges: self
                .bridges
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .map(|b| b.snapshot())
                .collect(),
            cluster: self
                .cluster
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }
}

/// A copy of the broker's counters at one moment.
///
/// It serializes (serde) to the keys of the HTTP `/stats` document, which
/// is made from it: the field names, except `started` as seconds since the
/// Unix epoch, `uptime_secs` as `uptime` and `messages_dropped` as
/// `dropped`. (`/stats` adds `version` and `memory`, which are not
/// counters.)
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[allow(missing_docs)] // Field names say what they count.
#[non_exhaustive]
pub struct StatsSnapshot {
    #[serde(serialize_with = "unix_secs")]
    pub started: SystemTime,
    #[serde(rename = "uptime")]
    pub uptime_secs: u64,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub packets_received: u64,
    pub packets_sent: u64,
    pub messages_received: u64,
    /// PUBLISH packets sent to network clients, and messages delivered to
    /// inline clients (one per message, however many of the inline
    /// client's subscriptions share it).
    pub messages_sent: u64,
    /// Messages not delivered because a queue was full, the client was too
    /// slow, or the message was too large for the client.
    #[serde(rename = "dropped")]
    pub messages_dropped: u64,
    pub clients_connected: u64,
    /// Persistent sessions whose client is not connected.
    pub clients_disconnected: u64,
    pub clients_maximum: u64,
    pub clients_total: u64,
    pub inflight: u64,
    pub retained: u64,
    pub subscriptions: u64,
    pub storage_errors: u64,
    /// True while the store's writes fail: the batch that failed is tried
    /// again until it is written (its acknowledgements wait for it), new
    /// work that needs storage is refused (see `storage_refused`), and
    /// `/healthz` answers 503. Clears once a write succeeds.
    pub storage_failing: bool,
    /// Store transactions (each a group of the core's commits).
    pub storage_commits: u64,
    /// Storage operations written.
    pub storage_ops_written: u64,
    /// Storage operations never written because a later one in the same
    /// or the next group undid them (a message acknowledged by its
    /// subscriber before its copy reached the disk).
    pub storage_ops_saved: u64,
    /// Connections closed for registering topic aliases past
    /// `limits.maximum_topic_alias_bytes`.
    pub topic_alias_refused: u64,
    /// Connections closed for not completing a packet within
    /// `limits.packet_read_timeout`.
    pub packet_read_timeouts: u64,
    /// Connections dropped because their socket took none of the bytes
    /// waiting for it for `limits.write_timeout`: a client that does not
    /// read (or a peer whose TCP window stays shut).
    pub write_timeouts: u64,
    /// CONNECT or AUTH packets refused for being larger than
    /// `limits.maximum_connect_size`.
    pub connect_too_large: u64,
    /// Connections closed before CONNACK because connections not yet
    /// through CONNECT held `limits.maximum_unauthenticated_bytes`.
    pub unauthenticated_refused: u64,
    /// Connections closed as they were accepted because the broker held
    /// `limits.maximum_connections` (HTTP connections have a limit of their
    /// own and are not counted here).
    pub connections_refused: u64,
    /// TLS or WebSocket handshakes that failed or did not complete within
    /// `limits.connect_timeout` (a connection closed before sending
    /// anything is not counted: a port probe).
    pub handshakes_failed: u64,
    /// Network clients refused at CONNECT as not authorized: bad user name
    /// or password, an authentication hook's refusal, a failed enhanced
    /// authentication, a certificate without the identity the listener
    /// takes, a will the ACL denies.
    pub auth_refused: u64,
    /// PUBLISHes and SUBSCRIBE filters of network clients that the ACL
    /// denied.
    pub acl_denied: u64,
    /// Connections closed as they were accepted because their source (an
    /// IPv4 address or an IPv6 /64) held
    /// `limits.maximum_connections_per_ip` connections.
    pub connections_refused_per_ip: u64,
    /// Connections closed as they were accepted because their source had
    /// opened `limits.maximum_connect_rate_per_ip` in the last second.
    pub connect_rate_refused: u64,
    /// HTTP connections that had not sent a request head, closed to make
    /// room for a new one at the listener's connection limit.
    pub http_evicted: u64,
    /// TLS handshakes refused because the client certificate is on the
    /// listener's CRL.
    pub tls_revoked_refused: u64,
    /// Open connections closed because a new CRL revoked their client
    /// certificate.
    pub tls_revoked_closed: u64,
    /// Retained messages not retained because the store held
    /// `limits.maximum_retained_bytes` (they were still delivered).
    pub retained_refused: u64,
    /// Packets refused because the store was failing: QoS 1/2 PUBLISH that
    /// would have needed storage (5.0: PUBACK/PUBREC 0x97; 3.x: connection
    /// closed without an acknowledgement), SUBSCRIBE of a persistent
    /// session (SUBACK failure), CONNECT that would have written a session
    /// (CONNACK Server unavailable), and retained messages delivered but
    /// not retained.
    pub storage_refused: u64,
    /// QoS 1/2 PUBLISH refused because this node's cluster router let go
    /// of its copy before JetStream stored it (its queue full while NATS
    /// was unreachable, or the router stopping): 5.0 publishers got
    /// PUBACK/PUBREC 0x97, 3.x ones were disconnected without an
    /// acknowledgement. Always 0 without a cluster.
    pub cluster_refused: u64,
    /// Packets read from connections the broker had already closed (by a
    /// protocol error, a takeover or a refusal), not acted on.
    pub packets_ignored: u64,
    /// Times a connection stopped being read because the answers the
    /// broker owed its client (PINGRESP, SUBACK, UNSUBACK, PUBACK, PUBREC,
    /// PUBCOMP), not yet written, were past their bound (64 KiB): a
    /// client that does not read, or whose answers wait behind one held
    /// for a commit or the cluster. Its reads resume once they are
    /// written; nothing is dropped.
    pub answer_pauses: u64,
    /// Memory taken by queued and in-flight QoS 1/2 messages (topic,
    /// payload and bookkeeping), all sessions together (bounded by
    /// `memory.budget`).
    pub queue_memory_bytes: u64,
    /// Queued messages of persistent sessions held only in the store, not
    /// in memory (read back a page at a time when their client is ready).
    pub queue_disk_messages: u64,
    /// Their topic and payload bytes.
    pub queue_disk_bytes: u64,
    /// Pages of queued messages read back from the store.
    pub queue_pages_read: u64,
    /// Messages those pages brought back.
    pub queue_messages_read: u64,
    /// Bytes of the retained messages held in memory (with a persistent
    /// store, the cache of them, within the retained share of
    /// `memory.budget`; with the in-memory store, all of them).
    pub retained_memory_bytes: u64,
    /// What the retained messages take in a persistent store (topic,
    /// payload and 128 bytes each, as `maximum_retained_bytes` counts
    /// them); 0 with the in-memory store.
    pub retained_disk_bytes: u64,
    /// Retained messages sent to new subscriptions from memory.
    pub retained_cache_hits: u64,
    /// Retained messages read from the store for new subscriptions.
    pub retained_reads: u64,
    /// One entry per bridge, in configuration order.
    pub bridges: Vec<BridgeSnapshot>,
    /// The cluster this node is part of, as it sees it (left out of
    /// `/stats` without a cluster).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterSnapshot>,
}

/// The nodes of the cluster alive, as one node sees them (its node
/// registry, refreshed every second).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct ClusterSnapshot {
    /// This node's name.
    pub node: String,
    /// The nodes alive (this one included while it reaches NATS), by name.
    pub nodes: Vec<ClusterNodeSnapshot>,
}

/// One live node of the cluster, as its last registry record says.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct ClusterNodeSnapshot {
    /// Its name.
    pub name: String,
    /// Clients connected to it.
    pub clients: u64,
    /// Subscriptions held on it.
    pub subscriptions: u64,
    /// When it started, in seconds since the Unix epoch.
    pub started_at: u64,
    /// Its roost version.
    pub version: String,
}

/// Counters of one bridge, shared by its driver (the link to the remote)
/// and the core (its local session's queue).
#[derive(Debug, Default)]
pub(crate) struct BridgeStats {
    pub(crate) name: String,
    /// 1 while the remote has accepted the connection.
    pub(crate) connected: AtomicU64,
    /// Messages waiting in the bridge's queue (memory and disk), sampled
    /// by the core about once a second.
    pub(crate) queued: AtomicU64,
    /// Forwarded messages the remote has not acknowledged yet.
    pub(crate) inflight: AtomicU64,
    /// Messages the remote acknowledged (QoS 1/2) or was sent (QoS 0).
    pub(crate) forwarded: AtomicU64,
    /// Messages received from the remote and published here.
    pub(crate) received: AtomicU64,
    /// Messages not taken into the bridge's queue because it was full.
    pub(crate) refused: AtomicU64,
    /// Forwarded messages the remote refused with an error code, and
    /// QoS 0 messages that met the link down.
    pub(crate) dropped: AtomicU64,
    /// Connections to the remote that ended (each is retried).
    pub(crate) reconnects: AtomicU64,
    /// Why the last connection attempt or connection failed.
    pub(crate) last_error: Mutex<Option<String>>,
}

impl BridgeStats {
    pub(crate) fn new(name: &str) -> BridgeStats {
        BridgeStats {
            name: name.to_owned(),
            ..Default::default()
        }
    }

    pub(crate) fn set_error(&self, error: Option<String>) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = error;
    }

    fn snapshot(&self) -> BridgeSnapshot {
        let g = |c: &AtomicU64| c.load(Relaxed);
        BridgeSnapshot {
            name: self.name.clone(),
            connected: g(&self.connected) != 0,
            queued: g(&self.queued),
            inflight: g(&self.inflight),
            forwarded: g(&self.forwarded),
            received: g(&self.received),
            refused: g(&self.refused),
            dropped: g(&self.dropped),
            reconnects: g(&self.reconnects),
            last_error: self
                .last_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }
}

/// A copy of one bridge's counters (serialized as in `/stats`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct BridgeSnapshot {
    /// The bridge's name.
    pub name: String,
    /// The remote has accepted the connection.
    pub connected: bool,
    /// Messages waiting to be forwarded (in memory and on disk).
    pub queued: u64,
    /// Forwarded messages the remote has not acknowledged yet.
    pub inflight: u64,
    /// Messages the remote has taken (acknowledged at QoS 1/2).
    pub forwarded: u64,
    /// Messages received from the remote and published here.
    pub received: u64,
    /// Messages refused because the bridge's queue was full
    /// (`max_queued_messages` / `max_queued_bytes`).
    pub refused: u64,
    /// Messages the remote refused with an error code, and QoS 0 messages
    /// that met the link down.
    pub dropped: u64,
    /// Connections to the remote that ended (and were retried).
    pub reconnects: u64,
    /// Why the last connection attempt or connection failed.
    pub last_error: Option<String>,
}

/// A time as whole seconds since the Unix epoch (0 before it).
fn unix_secs<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    s.serialize_u64(secs)
}

pub(crate) fn sub(counter: &AtomicU64, n: u64) {
    // Gauges never go below zero, even if a bug unbalanced them.
    let _ = counter.fetch_update(Relaxed, Relaxed, |v| Some(v.saturating_sub(n)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_serializes_to_the_stats_keys() {
        let stats = Stats::default();
        add(&stats.messages_dropped, 3);
        add(&stats.storage_failing, 1);
        let b = Arc::new(BridgeStats::new("cloud"));
        b.set_error(Some("refused".into()));
        stats.bridges.write().unwrap().push(b);
        let now = stats.started + std::time::Duration::from_secs(61);
        let v = serde_json::to_value(stats.snapshot_at(now)).unwrap();
        assert_eq!(v["uptime"], 61);
        assert_eq!(v["dropped"], 3);
        assert_eq!(v["storage_failing"], true);
        let started = stats
            .started
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert_eq!(v["started"], started, "seconds since the epoch");
        assert!(v.get("uptime_secs").is_none() && v.get("messages_dropped").is_none());
        assert_eq!(v["bridges"][0]["name"], "cloud");
        assert_eq!(v["bridges"][0]["last_error"], "refused");
        assert_eq!(v["bridges"][0]["connected"], false);
    }
}
