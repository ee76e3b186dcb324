//! The `$SYS/broker/...` topics: the broker's counters, each bridge's
//! under `bridge/<name>/`, and in a cluster the cluster's under `cluster/`,
//! published as retained messages on an interval, as Mosquitto does.

use super::{Broker, Message, MessageProperties, Tracked};
use crate::codec::{ByteStr, QoS};
use bytes::Bytes;
use std::sync::Arc;

impl Broker {
    pub(super) fn publish_sys(&mut self, now_ms: u64) {
        let now = std::time::UNIX_EPOCH + std::time::Duration::from_millis(now_ms);
        let s = self.stats.snapshot_at(now);
        let topics: [(&str, String); 50] = [
            ("version", format!("roost {}", env!("CARGO_PKG_VERSION"))),
            ("uptime", format!("{} seconds", s.uptime_secs)),
            ("time", (now_ms / 1000).to_string()),
            ("clients/connected", s.clients_connected.to_string()),
            ("clients/disconnected", s.clients_disconnected.to_string()),
            ("clients/maximum", s.clients_maximum.to_string()),
            ("clients/total", s.clients_total.to_string()),
            ("bytes/received", s.bytes_received.to_string()),
            ("bytes/sent", s.bytes_sent.to_string()),
            ("packets/received", s.packets_received.to_string()),
            ("packets/sent", s.packets_sent.to_string()),
            ("packets/ignored", s.packets_ignored.to_string()),
            ("packets/answer_pauses", s.answer_pauses.to_string()),
            ("messages/received", s.messages_received.to_string()),
            ("messages/sent", s.messages_sent.to_string()),
            ("messages/dropped", s.messages_dropped.to_string()),
            ("messages/inflight", s.inflight.to_string()),
            ("retained messages/count", s.retained.to_string()),
            ("subscriptions/count", s.subscriptions.to_string()),
            ("store/errors", s.storage_errors.to_string()),
            ("store/failing", u64::from(s.storage_failing).to_string()),
            ("store/commits", s.storage_commits.to_string()),
            ("store/ops/written", s.storage_ops_written.to_string()),
            ("store/ops/saved", s.storage_ops_saved.to_string()),
            ("queue/memory/bytes", s.queue_memory_bytes.to_string()),
            ("queue/disk/messages", s.queue_disk_messages.to_string()),
            ("queue/disk/bytes", s.queue_disk_bytes.to_string()),
            ("queue/pages/read", s.queue_pages_read.to_string()),
            ("queue/messages/read", s.queue_messages_read.to_string()),
            (
                "retained messages/memory/bytes",
                s.retained_memory_bytes.to_string(),
            ),
            (
                "retained messages/disk/bytes",
                s.retained_disk_bytes.to_string(),
            ),
            (
                "retained messages/cache/hits",
                s.retained_cache_hits.to_string(),
            ),
            ("retained messages/reads", s.retained_reads.to_string()),
            // What the limits refused: a client testing them shows here.
            ("refused/topic_alias", s.topic_alias_refused.to_string()),
            (
                "refused/packet_read_timeouts",
                s.packet_read_timeouts.to_string(),
            ),
            ("refused/write_timeouts", s.write_timeouts.to_string()),
            ("refused/connect_too_large", s.connect_too_large.to_string()),
            (
                "refused/unauthenticated",
                s.unauthenticated_refused.to_string(),
            ),
            ("refused/connections", s.connections_refused.to_string()),
            ("refused/handshakes", s.handshakes_failed.to_string()),
            ("refused/auth", s.auth_refused.to_string()),
            ("refused/acl", s.acl_denied.to_string()),
            (
                "refused/connections_per_ip",
                s.connections_refused_per_ip.to_string(),
            ),
            ("refused/connect_rate", s.connect_rate_refused.to_string()),
            ("refused/http_evicted", s.http_evicted.to_string()),
            ("refused/tls_revoked", s.tls_revoked_refused.to_string()),
            (
                "refused/tls_revoked_closed",
                s.tls_revoked_closed.to_string(),
            ),
            ("refused/retained", s.retained_refused.to_string()),
            ("refused/storage", s.storage_refused.to_string()),
            ("refused/cluster", s.cluster_refused.to_string()),
        ];
        for (name, value) in topics {
            self.publish_sys_value(name, value, now_ms);
        }
        // Each bridge's figures under `bridge/<name>/` (names are plain
        // topic levels: `Bridge::valid_name`).
        for b in &s.bridges {
            let figures: [(&str, String); 9] = [
                ("connected", u64::from(b.connected).to_string()),
                ("queued", b.queued.to_string()),
                ("inflight", b.inflight.to_string()),
                ("forwarded", b.forwarded.to_string()),
                ("received", b.received.to_string()),
                ("refused", b.refused.to_string()),
                ("dropped", b.dropped.to_string()),
                ("reconnects", b.reconnects.to_string()),
                ("last_error", b.last_error.clone().unwrap_or_default()),
            ];
            for (figure, value) in figures {
                let name = format!("bridge/{}/{figure}", b.name);
                self.publish_sys_value(&name, value, now_ms);
            }
        }
        if let Some(cluster) = &s.cluster {
            self.publish_sys_cluster(cluster, now_ms);
        }
    }

    /// `cluster/nodes` (how many are alive), `cluster/node_name` (this
    /// one's), and `cluster/node/<name>/clients` and `.../subscriptions`
    /// for each node alive; a node's figures are cleared once it is gone.
    /// (Node names are plain topic levels: `ClusterConfig::validate`, and
    /// the registry takes no other.)
    fn publish_sys_cluster(&mut self, c: &crate::stats::ClusterSnapshot, now_ms: u64) {
        self.publish_sys_value("cluster/nodes", c.nodes.len().to_string(), now_ms);
        self.publish_sys_value("cluster/node_name", c.node.clone(), now_ms);
        for n in &c.nodes {
            let clients = format!("cluster/node/{}/clients", n.name);
            self.publish_sys_value(&clients, n.clients.to_string(), now_ms);
            let subscriptions = format!("cluster/node/{}/subscriptions", n.name);
            self.publish_sys_value(&subscriptions, n.subscriptions.to_string(), now_ms);
        }
        let mut gone: Vec<String> = Vec::new();
        self.retained
            .tree
            .matches_after("$SYS/broker/cluster/node/+/+", None, |topic, _| {
                let name = topic.split('/').nth(4).unwrap_or_default();
                if !c.nodes.iter().any(|n| n.name == name) {
                    gone.push(topic["$SYS/broker/".len()..].to_owned());
                }
                std::ops::ControlFlow::Continue(())
            });
        for name in gone {
            self.publish_sys_value(&name, String::new(), now_ms);
        }
    }

    /// Publishes `$SYS/broker/<name>` to its subscribers and retains it. An
    /// empty value is delivered, and clears the retained one instead
    /// ([MQTT-3.3.1-11]: a zero-byte retained message is not stored).
    fn publish_sys_value(&mut self, name: &str, value: String, now_ms: u64) {
        let msg = Arc::new(Tracked::new(Message {
            topic: ByteStr::from(format!("$SYS/broker/{name}")),
            payload: Bytes::from(value),
            qos: QoS::AtMostOnce,
            retain: true,
            properties: MessageProperties::default(),
            expires_at_ms: None,
            publisher: None,
            publisher_id: None,
        }));
        // $SYS values are live figures: kept in memory, never stored.
        if msg.payload.is_empty() {
            self.remove_sys_retained(&msg.topic);
        } else {
            self.put_sys_retained(msg.clone());
        }
        self.route(&msg, now_ms);
    }
}
