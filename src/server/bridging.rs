//! Starting and stopping the bridges: each gets its counters, its local
//! session registered with the core, a dialer for its remote, and a task.

use crate::bridge::Bridge;
use crate::broker::{BridgeSession, Broker, ConnId, Event, QueueLimit};
use crate::clock::Clock;
use crate::codec::ByteStr;
use crate::hooks::Hooks;
use crate::net::bridge::{self as driver, Wiring};
use crate::net::dial::Dialer;
use crate::stats::{BridgeStats, Stats};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// What the bridges' tasks share with the server.
pub(super) struct Start<'a> {
    pub(super) next_conn: &'a AtomicU64,
    pub(super) events: &'a mpsc::Sender<Event>,
    pub(super) hooks: &'a Hooks,
    pub(super) clock: &'a Clock,
    pub(super) stop: &'a watch::Receiver<bool>,
    pub(super) stats: &'a Arc<Stats>,
    pub(super) max_packet_size: u32,
    pub(super) receive_maximum: u16,
}

/// Registers every bridge with the core and spawns its task.
pub(super) fn start(
    bridges: Vec<(Bridge, Arc<Dialer>)>,
    broker: &mut Broker,
    s: Start<'_>,
) -> Vec<JoinHandle<()>> {
    if bridges.is_empty() {
        // Sessions of bridges configured before still end.
        broker.set_bridges(Vec::new(), s.clock.now_ms());
        return Vec::new();
    }
    let mut sessions = Vec::with_capacity(bridges.len());
    let mut tasks = Vec::with_capacity(bridges.len());
    let mut all_stats = Vec::with_capacity(bridges.len());
    for (bridge, dialer) in bridges {
        let stats = Arc::new(BridgeStats::new(&bridge.name));
        all_stats.push(stats.clone());
        sessions.push(BridgeSession {
            client_id: ByteStr::from(driver::local_client_id(&bridge.name)),
            filters: bridge
                .forward
                .iter()
                .map(|r| ByteStr::from(r.local_filter()))
                .collect(),
            limit: Arc::new(QueueLimit {
                messages: usize::try_from(bridge.max_queued_messages).unwrap_or(usize::MAX),
                bytes: bridge.max_queued_bytes,
                stats: stats.clone(),
            }),
        });
        let wiring = Wiring {
            conn: ConnId(s.next_conn.fetch_add(1, Ordering::Relaxed)),
            events: s.events.clone(),
            hooks: s.hooks.clone(),
            clock: s.clock.clone(),
            stop: s.stop.clone(),
            stats,
            max_packet_size: s.max_packet_size,
            receive_maximum: s.receive_maximum,
        };
        tasks.push(tokio::spawn(driver::run(bridge, dialer, wiring)));
    }
    *s.stats.bridges.write().unwrap_or_else(|e| e.into_inner()) = all_stats;
    broker.set_bridges(sessions, s.clock.now_ms());
    tasks
}

/// Waits for the bridges' tasks to end (they were told to stop), within a
/// bound: a remote that does not take the DISCONNECT holds nobody up.
pub(super) async fn stopped(tasks: Vec<JoinHandle<()>>) {
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(3), t).await;
    }
}
