//! This node in the cluster's node registry (issue 19; the record and the
//! liveness rules are in `cluster::nodes`): writes its record every
//! heartbeat, watches everyone's, keeps [`Engine::nodes`] and the
//! `cluster` part of the stats (`$SYS/broker/cluster/...`, `/stats`,
//! `/metrics`) up to date, and deletes its record when it stops cleanly.

use crate::cluster::config::valid_name;
use crate::cluster::nodes::{NodeRecord, HEARTBEAT};
use crate::escape::Escaped;
use crate::net::cluster::Engine;
use crate::stats::{ClusterNodeSnapshot, ClusterSnapshot, Stats};
use async_nats::jetstream::kv;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

/// How often the live set is pruned and copied to the stats: the `$SYS`
/// figures and `/stats` lag a node's death by at most this beyond the TTL.
const REFRESH: Duration = Duration::from_secs(1);

/// Runs the registry until `stop`, then deletes this node's record
/// (bounded by the configured timeout): the others see it gone at once
/// rather than after the TTL.
pub(super) async fn run(engine: Arc<Engine>, stats: Arc<Stats>, mut stop: watch::Receiver<bool>) {
    let config = engine.config();
    let node = config.node.clone();
    let started_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let registry = engine.registry().clone();
    let running = async {
        let mut watch = loop {
            match registry.watch_with_history(">").await {
                Ok(w) => break w,
                Err(e) => {
                    tracing::warn!(error = %e, "cluster: cannot watch the node registry; retrying");
                    tokio::time::sleep(HEARTBEAT).await;
                }
            }
        };
        let mut beat = tokio::time::interval(HEARTBEAT);
        let mut refresh = tokio::time::interval(REFRESH);
        loop {
            tokio::select! {
                _ = beat.tick() => {
                    let record = NodeRecord {
                        node: node.clone(),
                        started_at,
                        clients: stats.clients_connected.load(Relaxed),
                        subscriptions: stats.subscriptions.load(Relaxed),
                        version: env!("CARGO_PKG_VERSION").to_owned(),
                    };
                    let value = serde_json::to_vec(&record).expect("a record serializes");
                    // Not retried: the next beat writes it again.
                    if let Err(e) = registry.put(&node, value.into()).await {
                        tracing::warn!(error = %e, "cluster: node registry record not written");
                    }
                }
                entry = crate::net::cluster::next(&mut watch) => match entry {
                    Some(Ok(entry)) => seen(&engine, entry),
                    Some(Err(e)) => tracing::warn!(error = %e, "cluster: reading the node registry"),
                    None => {
                        tracing::error!("cluster: the node registry's watch ended");
                        return;
                    }
                },
                _ = refresh.tick() => publish(&engine, &stats),
            }
        }
    };
    tokio::select! {
        _ = running => {}
        _ = stop.wait_for(|s| *s) => {}
    }
    match tokio::time::timeout(config.timeout, registry.delete(&node)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "cluster: node registry record not deleted"),
        Err(_) => tracing::warn!("cluster: node registry record not deleted in time"),
    }
}

/// Takes a registry entry into the live set.
fn seen(engine: &Engine, entry: kv::Entry) {
    let nodes = engine.nodes();
    match entry.operation {
        kv::Operation::Put => {
            let record = match serde_json::from_slice::<NodeRecord>(&entry.value) {
                Ok(r) if r.node == entry.key && valid_name(&r.node) => r,
                _ => {
                    tracing::warn!(key = %Escaped(&entry.key),
                        "cluster: node registry record ignored (not one of ours)");
                    return;
                }
            };
            let written_ns = entry.created.unix_timestamp_nanos();
            let now_ns = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as i128);
            // Clocks of machines differ: a record "from the future" is
            // taken as new.
            let age = Duration::from_nanos(u64::try_from(now_ns - written_ns).unwrap_or(0));
            nodes.seen(record, age, Instant::now());
        }
        kv::Operation::Delete | kv::Operation::Purge => nodes.gone(&entry.key),
    }
}

/// Prunes the live set and copies it to the stats.
fn publish(engine: &Engine, stats: &Stats) {
    let nodes = engine.nodes();
    let now = Instant::now();
    nodes.prune(now);
    let snapshot = ClusterSnapshot {
        node: engine.config().node.clone(),
        nodes: nodes
            .live(now)
            .into_iter()
            .map(|r| ClusterNodeSnapshot {
                name: r.node,
                clients: r.clients,
                subscriptions: r.subscriptions,
                started_at: r.started_at,
                version: r.version,
            })
            .collect(),
    };
    *stats.cluster.write().unwrap_or_else(|e| e.into_inner()) = Some(snapshot);
}
