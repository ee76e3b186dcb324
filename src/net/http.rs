//! The HTTP stats endpoint: a minimal HTTP/1.1 server, one request per
//! connection (`Connection: close`), three read-only routes.
//!
//! - `GET /stats`: the counters as JSON.
//! - `GET /metrics`: the counters in the Prometheus text exposition format.
//! - `GET /healthz`: `200 ok` while the broker serves; `503 storage failing`
//!   while its store's last write failed (nothing that needs storage is
//!   acknowledged then, so an orchestrator should know).
//!
//! Anything else is 404 (405 for another method on a known path). Hand
//! rolled: the routes are fixed and small, and an HTTP framework would be
//! the largest dependency in the crate.

use super::shared::Shared;
use crate::admin::AdminToken;
use crate::stats::{BridgeSnapshot, Stats, StatsSnapshot};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, UNIX_EPOCH};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Longest request head accepted.
const MAX_HEAD: usize = 8 * 1024;

/// What serving a request needs beside its stream.
pub(crate) struct Ctx<'a> {
    pub shared: &'a Shared,
    /// The admin API's token, if this listener serves the admin API.
    pub admin: Option<&'a AdminToken>,
    pub peer: SocketAddr,
    /// For the request head (and body), and again for the response.
    pub timeout: Duration,
}

impl<'a> Ctx<'a> {
    pub(crate) fn new(
        shared: &'a Shared,
        admin: Option<&'a AdminToken>,
        peer: SocketAddr,
        timeout: Duration,
    ) -> Self {
        Ctx {
            shared,
            admin,
            peer,
            timeout,
        }
    }
}

/// Serves one request on `stream`; the whole request head must arrive
/// within the context's timeout. Sets `read` once it has.
pub(crate) async fn serve<S>(mut stream: S, ctx: Ctx<'_>, read: &AtomicBool)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (head, rest) = match tokio::time::timeout(ctx.timeout, read_head(&mut stream)).await {
        Ok(Some(read)) => read,
        _ => return,
    };
    read.store(true, Ordering::Relaxed);
    let response = if super::admin_api::is_admin(&head) {
        let admin = super::admin_api::AdminCtx {
            token: ctx.admin,
            admin: &ctx.shared.admin,
            peer: ctx.peer,
            now_ms: ctx.shared.clock.now_ms(),
            timeout: ctx.timeout,
        };
        let r = super::admin_api::serve(&mut stream, &head, rest, admin).await;
        response_with(r.status, r.content_type, r.headers, &r.body, false)
    } else {
        respond(&head, &ctx.shared.stats)
    };
    let _ = tokio::time::timeout(ctx.timeout, async {
        stream.write_all(&response).await?;
        stream.flush().await?;
        stream.shutdown().await
    })
    .await;
}

/// Reads up to the blank line that ends the request head; returns the head
/// and what was read past it (the start of a body).
async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> Option<(Vec<u8>, Vec<u8>)> {
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        // Searched from a little before the new bytes: the blank line may
        // straddle two reads.
        let from = head.len().saturating_sub(3);
        head.extend_from_slice(&chunk[..n]);
        if let Some(at) = head[from..].windows(4).position(|w| w == b"\r\n\r\n") {
            let end = from + at + 4;
            let rest = head.split_off(end);
            return Some((head, rest));
        }
        if head.len() > MAX_HEAD {
            return None;
        }
    }
}

/// The whole response (status line, headers and body) for a request head.
fn respond(head: &[u8], stats: &Stats) -> Vec<u8> {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let known = matches!(path, "/stats" | "/metrics" | "/healthz");
    if known && method != "GET" && method != "HEAD" {
        return response(
            "405 Method Not Allowed",
            "text/plain",
            b"method not allowed\n",
            method == "HEAD",
        );
    }
    let (status, content_type, body) = match path {
        "/stats" => (
            "200 OK",
            "application/json",
            json(&stats.snapshot()).into_bytes(),
        ),
        "/metrics" => (
            "200 OK",
            "text/plain; version=0.0.4",
            prometheus(&stats.snapshot()).into_bytes(),
        ),
        "/healthz" if stats.snapshot().storage_failing => (
            "503 Service Unavailable",
            "text/plain",
            b"storage failing".to_vec(),
        ),
        "/healthz" => ("200 OK", "text/plain", b"ok".to_vec()),
        _ => ("404 Not Found", "text/plain", b"not found\n".to_vec()),
    };
    response(status, content_type, &body, method == "HEAD")
}

fn response(status: &str, content_type: &str, body: &[u8], head_only: bool) -> Vec<u8> {
    response_with(status, content_type, "", body, head_only)
}

/// [`response`] with more header lines (each ending in CRLF).
fn response_with(
    status: &str,
    content_type: &str,
    headers: &str,
    body: &[u8],
    head_only: bool,
) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n{headers}\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body);
    }
    out
}

/// Resident set size in bytes, from `/proc/self/status` (`VmRSS`, in kB:
/// unlike `/proc/self/statm` it needs no page size); 0 where there is no
/// procfs.
fn resident_memory() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// The `/stats` document: the snapshot as it serializes, plus the version
/// and the resident memory.
fn json(s: &StatsSnapshot) -> String {
    let mut json = serde_json::to_value(s).unwrap_or_default();
    json["version"] = env!("CARGO_PKG_VERSION").into();
    json["memory"] = resident_memory().into();
    json.to_string()
}

fn prometheus(s: &StatsSnapshot) -> String {
    use std::fmt::Write;
    let counters: [(&str, &str, u64); 35] = [
        (
            "bytes_received",
            "Bytes read from clients.",
            s.bytes_received,
        ),
        ("bytes_sent", "Bytes written to clients.", s.bytes_sent),
        (
            "packets_received",
            "MQTT packets received.",
            s.packets_received,
        ),
        ("packets_sent", "MQTT packets sent.", s.packets_sent),
        (
            "messages_received",
            "PUBLISH packets received.",
            s.messages_received,
        ),
        ("messages_sent", "PUBLISH packets sent.", s.messages_sent),
        (
            "messages_dropped",
            "Messages dropped: full queue, slow or too small client.",
            s.messages_dropped,
        ),
        (
            "clients",
            "Client connections accepted (CONNECT received).",
            s.clients_total,
        ),
        (
            "storage_errors",
            "Failed storage commits.",
            s.storage_errors,
        ),
        (
            "storage_commits",
            "Store transactions written.",
            s.storage_commits,
        ),
        (
            "storage_ops_written",
            "Storage operations written.",
            s.storage_ops_written,
        ),
        (
            "storage_ops_saved",
            "Storage operations never written: undone before they reached the disk.",
            s.storage_ops_saved,
        ),
        (
            "topic_alias_refused",
            "Connections closed for topic aliases past maximum_topic_alias_bytes.",
            s.topic_alias_refused,
        ),
        (
            "packet_read_timeouts",
            "Connections closed for a packet not completed within packet_read_timeout.",
            s.packet_read_timeouts,
        ),
        (
            "write_timeouts",
            "Connections dropped for taking none of the bytes written to them within write_timeout.",
            s.write_timeouts,
        ),
        (
            "connect_too_large",
            "CONNECT or AUTH packets over maximum_connect_size.",
            s.connect_too_large,
        ),
        (
            "unauthenticated_refused",
            "Connections refused before CONNACK: maximum_unauthenticated_bytes held.",
            s.unauthenticated_refused,
        ),
        (
            "connections_refused",
            "Connections closed at accept: the broker held maximum_connections.",
            s.connections_refused,
        ),
        (
            "handshakes_failed",
            "TLS or WebSocket handshakes that failed or timed out.",
            s.handshakes_failed,
        ),
        (
            "auth_refused",
            "CONNECTs refused as not authorized (credentials, hooks, certificate identity, will ACL).",
            s.auth_refused,
        ),
        (
            "acl_denied",
            "PUBLISHes and SUBSCRIBE filters the ACL denied.",
            s.acl_denied,
        ),
        (
            "connections_refused_per_ip",
            "Connections closed at accept: their source held maximum_connections_per_ip.",
            s.connections_refused_per_ip,
        ),
        (
            "connect_rate_refused",
            "Connections closed at accept: their source passed maximum_connect_rate_per_ip.",
            s.connect_rate_refused,
        ),
        (
            "http_evicted",
            "Idle HTTP connections closed to make room for a new one.",
            s.http_evicted,
        ),
        (
            "tls_revoked_refused",
            "TLS handshakes refused: the client certificate is on the CRL.",
            s.tls_revoked_refused,
        ),
        (
            "tls_revoked_closed",
            "Connections closed: a new CRL revoked their client certificate.",
            s.tls_revoked_closed,
        ),
        (
            "retained_refused",
            "Retained messages not retained: maximum_retained_bytes held.",
            s.retained_refused,
        ),
        (
            "storage_refused",
            "Packets refused while the store's writes failed (PUBLISH, SUBSCRIBE, CONNECT, retain).",
            s.storage_refused,
        ),
        (
            "cluster_refused",
            "QoS 1/2 PUBLISH refused: the cluster router let go of its copy before JetStream stored it.",
            s.cluster_refused,
        ),
        (
            "packets_ignored",
            "Packets read from connections the broker had already closed.",
            s.packets_ignored,
        ),
        (
            "answer_pauses",
            "Times a connection stopped being read while the answers it had not read were past their bound.",
            s.answer_pauses,
        ),
        (
            "queue_pages_read",
            "Pages of queued messages read back from the store.",
            s.queue_pages_read,
        ),
        (
            "queue_messages_read",
            "Queued messages read back from the store.",
            s.queue_messages_read,
        ),
        (
            "retained_cache_hits",
            "Retained messages sent to new subscriptions from memory.",
            s.retained_cache_hits,
        ),
        (
            "retained_reads",
            "Retained messages read from the store for new subscriptions.",
            s.retained_reads,
        ),
    ];
    let gauges: [(&str, &str, u64); 15] = [
        (
            "retained_memory_bytes",
            "Bytes of retained messages held in memory.",
            s.retained_memory_bytes,
        ),
        (
            "retained_disk_bytes",
            "Bytes of retained messages in the store (as maximum_retained_bytes counts them).",
            s.retained_disk_bytes,
        ),
        (
            "queue_memory_bytes",
            "Bytes of queued and in-flight QoS 1/2 messages held in memory.",
            s.queue_memory_bytes,
        ),
        (
            "queue_disk_messages",
            "Queued messages held only in the store.",
            s.queue_disk_messages,
        ),
        (
            "queue_disk_bytes",
            "Bytes of queued messages held only in the store.",
            s.queue_disk_bytes,
        ),
        (
            "storage_failing",
            "1 while the store's writes fail (retried; work needing storage refused).",
            u64::from(s.storage_failing),
        ),
        (
            "clients_connected",
            "Clients connected now.",
            s.clients_connected,
        ),
        (
            "clients_disconnected",
            "Persistent sessions whose client is not connected.",
            s.clients_disconnected,
        ),
        (
            "clients_maximum",
            "Most clients connected at once.",
            s.clients_maximum,
        ),
        ("retained_messages", "Retained messages held.", s.retained),
        (
            "inflight_messages",
            "QoS 1 and 2 messages in flight.",
            s.inflight,
        ),
        ("subscriptions", "Subscriptions held.", s.subscriptions),
        (
            "uptime_seconds",
            "Seconds since the broker started.",
            s.uptime_secs,
        ),
        (
            "start_time_seconds",
            "When the broker started, in seconds since the Unix epoch.",
            s.started
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        ),
        (
            "resident_memory_bytes",
            "Resident set size of the process.",
            resident_memory(),
        ),
    ];
    let mut out = String::new();
    // Writing to a String cannot fail.
    for (name, help, value) in counters {
        let _ = writeln!(
            out,
            "# HELP roost_{name}_total {help}\n# TYPE roost_{name}_total counter\nroost_{name}_total {value}"
        );
    }
    for (name, help, value) in gauges {
        let _ = writeln!(
            out,
            "# HELP roost_{name} {help}\n# TYPE roost_{name} gauge\nroost_{name} {value}"
        );
    }
    bridge_metrics(&mut out, &s.bridges);
    if let Some(c) = &s.cluster {
        cluster_metrics(&mut out, c);
    }
    let _ = writeln!(
        out,
        "# HELP roost_build_info The broker's version.\n# TYPE roost_build_info gauge\n\
         roost_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    out
}

/// The bridges' series, one per bridge under each metric's HELP and TYPE
/// (none at all without bridges).
fn bridge_metrics(out: &mut String, bridges: &[BridgeSnapshot]) {
    use std::fmt::Write;
    type Figure = fn(&BridgeSnapshot) -> u64;
    let metrics: [(&str, &str, &str, Figure); 8] = [
        (
            "bridge_connected",
            "gauge",
            "1 while the remote broker has accepted the bridge's connection.",
            |b| u64::from(b.connected),
        ),
        (
            "bridge_queued_messages",
            "gauge",
            "Messages waiting to be forwarded (in memory and on disk).",
            |b| b.queued,
        ),
        (
            "bridge_inflight_messages",
            "gauge",
            "Forwarded messages the remote has not acknowledged yet.",
            |b| b.inflight,
        ),
        (
            "bridge_forwarded_messages_total",
            "counter",
            "Messages the remote has taken (acknowledged at QoS 1/2).",
            |b| b.forwarded,
        ),
        (
            "bridge_received_messages_total",
            "counter",
            "Messages received from the remote and published here.",
            |b| b.received,
        ),
        (
            "bridge_refused_messages_total",
            "counter",
            "Messages refused because the bridge's queue was full.",
            |b| b.refused,
        ),
        (
            "bridge_dropped_messages_total",
            "counter",
            "Messages the remote refused, and QoS 0 messages that met the link down.",
            |b| b.dropped,
        ),
        (
            "bridge_reconnects_total",
            "counter",
            "Connections to the remote that ended (each is retried).",
            |b| b.reconnects,
        ),
    ];
    if bridges.is_empty() {
        return;
    }
    // Writing to a String cannot fail.
    for (name, kind, help, figure) in metrics {
        let _ = writeln!(
            out,
            "# HELP roost_{name} {help}\n# TYPE roost_{name} {kind}"
        );
        for b in bridges {
            let _ = writeln!(
                out,
                "roost_{name}{{bridge=\"{}\"}} {}",
                LabelValue(&b.name),
                figure(b)
            );
        }
    }
}

/// The cluster's series: how many nodes are alive, and each one's clients
/// and subscriptions, as this node sees them.
fn cluster_metrics(out: &mut String, c: &crate::stats::ClusterSnapshot) {
    use std::fmt::Write;
    // Writing to a String cannot fail.
    let _ = writeln!(
        out,
        "# HELP roost_cluster_nodes Nodes of the cluster alive (the node registry).\n\
         # TYPE roost_cluster_nodes gauge\nroost_cluster_nodes {}",
        c.nodes.len()
    );
    type Figure = fn(&crate::stats::ClusterNodeSnapshot) -> u64;
    let per_node: [(&str, &str, Figure); 2] = [
        (
            "cluster_node_clients",
            "Clients connected to each live node.",
            |n| n.clients,
        ),
        (
            "cluster_node_subscriptions",
            "Subscriptions held on each live node.",
            |n| n.subscriptions,
        ),
    ];
    for (name, help, figure) in per_node {
        let _ = writeln!(out, "# HELP roost_{name} {help}\n# TYPE roost_{name} gauge");
        for n in &c.nodes {
            let _ = writeln!(
                out,
                "roost_{name}{{node=\"{}\"}} {}",
                LabelValue(&n.name),
                figure(n)
            );
        }
    }
}

/// A label value as the Prometheus text format writes it: backslash,
/// double quote and line feed escaped.
struct LabelValue<'a>(&'a str);

impl std::fmt::Display for LabelValue<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::fmt::Write;
        for c in self.0.chars() {
            match c {
                '\\' => f.write_str("\\\\")?,
                '"' => f.write_str("\\\"")?,
                '\n' => f.write_str("\\n")?,
                c => f.write_char(c)?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cluster_shows_as_a_json_object_and_labelled_series() {
        let stats = Stats::default();
        let body = |s: &Stats| prometheus(&s.snapshot());
        assert!(
            !body(&stats).contains("roost_cluster_node"),
            "no nodes without a cluster"
        );
        let node = |name: &str, clients| crate::stats::ClusterNodeSnapshot {
            name: name.into(),
            clients,
            subscriptions: 7,
            started_at: 1,
            version: "0.1.0".into(),
        };
        *stats.cluster.write().unwrap() = Some(crate::stats::ClusterSnapshot {
            node: "a".into(),
            nodes: vec![node("a", 2), node("b", 3)],
        });
        let text = body(&stats);
        assert!(text.contains("\nroost_cluster_nodes 2\n"), "{text}");
        assert!(
            text.contains("roost_cluster_node_clients{node=\"b\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("roost_cluster_node_subscriptions{node=\"a\"} 7\n"),
            "{text}"
        );
        let v: serde_json::Value = serde_json::from_str(&json(&stats.snapshot())).unwrap();
        assert_eq!(v["cluster"]["node"], "a");
        assert_eq!(v["cluster"]["nodes"][1]["clients"], 3);
    }

    #[test]
    fn routes() {
        let stats = Stats::default();
        let get = |req: &str| String::from_utf8(respond(req.as_bytes(), &stats)).unwrap();
        assert!(get("GET /healthz HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 200 OK"));
        assert!(get("GET /healthz HTTP/1.1\r\n\r\n").ends_with("\r\n\r\nok"));
        // A store whose last write failed makes the broker unhealthy, and
        // a write that succeeds makes it healthy again.
        stats.storage_failing.store(1, Ordering::Relaxed);
        let failing = get("GET /healthz HTTP/1.1\r\n\r\n");
        assert!(failing.starts_with("HTTP/1.1 503"), "{failing}");
        assert!(failing.ends_with("\r\n\r\nstorage failing"), "{failing}");
        stats.storage_failing.store(0, Ordering::Relaxed);
        assert!(get("GET /healthz HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 200 OK"));
        assert!(get("GET /stats?x=1 HTTP/1.1\r\n\r\n").contains("application/json"));
        assert!(get("GET /nope HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
        assert!(get("POST /stats HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405"));
        assert!(get("\r\n\r\n").starts_with("HTTP/1.1 404"));
        let head = get("HEAD /stats HTTP/1.1\r\n\r\n");
        assert!(head.ends_with("\r\n\r\n"), "{head}");
    }

    #[test]
    fn bridges_are_json_objects_and_labelled_series() {
        use crate::stats::BridgeStats;
        use std::sync::Arc;
        let stats = Stats::default();
        let body = |s: &Stats| prometheus(&s.snapshot());
        assert!(!body(&stats).contains("bridge"), "nothing without bridges");
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&json(&stats.snapshot())).unwrap()["bridges"],
            serde_json::json!([])
        );

        let cloud = Arc::new(BridgeStats::new("cloud"));
        cloud.connected.store(1, Ordering::Relaxed);
        cloud.forwarded.store(7, Ordering::Relaxed);
        // Names are validated to be safe; the exposition escapes anyway.
        let odd = Arc::new(BridgeStats::new("a\"b\\c\nd"));
        odd.reconnects.store(2, Ordering::Relaxed);
        odd.set_error(Some("connection refused".into()));
        *stats.bridges.write().unwrap() = vec![cloud, odd];

        let text = body(&stats);
        assert_eq!(
            text.matches("# TYPE roost_bridge_connected gauge\n")
                .count(),
            1,
            "{text}"
        );
        assert_eq!(
            text.matches("# HELP roost_bridge_reconnects_total ")
                .count(),
            1
        );
        for line in [
            "roost_bridge_connected{bridge=\"cloud\"} 1",
            "roost_bridge_forwarded_messages_total{bridge=\"cloud\"} 7",
            "roost_bridge_connected{bridge=\"a\\\"b\\\\c\\nd\"} 0",
            "roost_bridge_reconnects_total{bridge=\"a\\\"b\\\\c\\nd\"} 2",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in {text}");
        }

        let v: serde_json::Value = serde_json::from_str(&json(&stats.snapshot())).unwrap();
        assert_eq!(
            v["bridges"][0],
            serde_json::json!({
                "name": "cloud", "connected": true, "queued": 0, "inflight": 0,
                "forwarded": 7, "received": 0, "refused": 0, "dropped": 0,
                "reconnects": 0, "last_error": null,
            })
        );
        assert_eq!(v["bridges"][1]["last_error"], "connection refused");
        assert_eq!(v["bridges"][1]["name"], "a\"b\\c\nd");
    }
}
