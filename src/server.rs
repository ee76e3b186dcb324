//! The embeddable server: build it from [`Options`], give it listeners, and
//! serve it as a future that ends when a shutdown signal fires.

use crate::broker::Reclaim;
use crate::broker::{Broker, Commit, ConnId, Event};
use crate::config::{Durability, Options};
use crate::hooks::{AclHook, AuthHook, EventHook, Hooks};
use crate::inline::InlineClient;
use crate::link::intake::Intake;
use crate::link::reclaim::Batches;
use crate::net::connection::Shared;
use crate::net::listener::{self, Accepting, Listener, ListenerError, ServerHandle};
use crate::stats::{Stats, StatsSnapshot};
use roost_storage::{MemoryStore, Snapshot, StorageError, Store};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, Semaphore};

#[cfg(feature = "tls")]
use crate::net::tls::TlsConfig;
#[cfg(feature = "ws")]
use crate::net::ws::WsConfig;

/// Errors from serving.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The storage backend failed.
    #[error(transparent)]
    Storage(#[from] roost_storage::StorageError),
}

/// An MQTT broker ready to serve.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:1883").await?;
/// let server = roost::Server::new(roost::Options::default()).tcp(listener);
/// server.serve(async { let _ = tokio::signal::ctrl_c().await; }).await?;
/// # Ok(()) }
/// ```
pub struct Server {
    opts: Options,
    hooks: Hooks,
    events_tx: mpsc::Sender<Event>,
    events: mpsc::Receiver<Event>,
    next_conn: Arc<AtomicU64>,
    stats: Arc<Stats>,
    store: Arc<dyn Store>,
    /// What [`Server::load_store`] read, for `serve` to restore.
    loaded: Option<Snapshot>,
    handle: ServerHandle,
    incoming: mpsc::UnboundedReceiver<Listener>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("opts", &self.opts)
            .field("listeners", &self.handle.listeners())
            .finish_non_exhaustive()
    }
}

/// Milliseconds since the Unix epoch: the broker's clock.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Operations the relaxed mode holds before it commits without waiting
/// for its interval.
const RELAXED_MAX_PENDING_OPS: usize = 10_000;

/// Events the core's queue holds before connections wait for room. Small,
/// because what it holds is beyond the reach of backpressure: a publisher
/// paused for a subscriber that is behind still has its queued events
/// delivered (1,024 let fan-in at QoS 0 overrun the slow-consumer limit).
const EVENT_QUEUE: usize = 256;

/// Most events handled between two commits: the core must get back to its
/// clock and its commits even while events keep coming.
const MAX_EVENTS_PER_COMMIT: usize = 1024;

/// Hands `first`, then what else is queued, to `handle` with its 1-based
/// position, `max` at most; returns how many. An event is taken off the
/// queue only once it is sure to be handled: one taken past the bound would
/// be dropped, its packets never answered and its intake budget never
/// given back.
fn drain_ready<T>(
    first: T,
    queue: &mut mpsc::Receiver<T>,
    max: usize,
    mut handle: impl FnMut(usize, T),
) -> usize {
    let mut next = first;
    let mut i = 1;
    loop {
        handle(i, next);
        if i >= max {
            return i;
        }
        match queue.try_recv() {
            Ok(ev) => next = ev,
            Err(_) => return i,
        }
        i += 1;
    }
}

/// Reads everything `store` holds, off the async runtime.
async fn load(store: Arc<dyn Store>) -> Result<Snapshot, StorageError> {
    tokio::task::spawn_blocking(move || store.load())
        .await
        .map_err(|e| StorageError::io("", format!("loading the store: {e}")).with_source(e))?
}

impl Server {
    /// A server with the in-memory store and no listeners.
    pub fn new(opts: Options) -> Self {
        // Bounded in events; an event carries at most 16 packets (see
        // `net::connection`), so a full queue holds at most ~16k packets.
        let (events_tx, events) = mpsc::channel::<Event>(EVENT_QUEUE);
        let (handle, incoming) = ServerHandle::new();
        Server {
            opts,
            hooks: Hooks::default(),
            events_tx,
            events,
            next_conn: Arc::new(AtomicU64::new(1)),
            stats: Arc::new(Stats::default()),
            store: Arc::new(MemoryStore::new()),
            loaded: None,
            handle,
            incoming,
        }
    }

    /// Uses `store` for sessions, queues and retained messages.
    pub fn store(mut self, store: impl Store) -> Self {
        self.store = Arc::new(store);
        self.loaded = None;
        self
    }

    /// Reads the store now rather than when [`Server::serve`] starts, so
    /// that a store that cannot be read is reported before the caller binds
    /// any listener (the `roost` binary does so). `serve` then restores
    /// what was read. Does nothing for a store that does not persist.
    ///
    /// # Errors
    ///
    /// [`ServeError::Storage`] if the store cannot be read; nothing was
    /// served.
    pub async fn load_store(mut self) -> Result<Self, ServeError> {
        if self.store.is_persistent() && self.loaded.is_none() {
            self.loaded = Some(load(self.store.clone()).await?);
        }
        Ok(self)
    }

    /// Adds an authentication hook (called after those added before it).
    pub fn auth_hook(mut self, hook: impl AuthHook) -> Self {
        self.hooks.auth.push(Arc::new(hook));
        self
    }

    /// Adds an ACL hook (called after those added before it).
    pub fn acl_hook(mut self, hook: impl AclHook) -> Self {
        self.hooks.acl.push(Arc::new(hook));
        self
    }

    /// Adds an event hook (called after those added before it).
    pub fn event_hook(mut self, hook: impl EventHook) -> Self {
        self.hooks.events.push(Arc::new(hook));
        self
    }

    /// Whether the ACL hooks also judge the inline client. Default: false
    /// (the host application is trusted).
    pub fn acl_applies_to_inline_client(mut self, applies: bool) -> Self {
        self.hooks.acl_inline = applies;
        self
    }

    /// An in-process client of this broker. Call it within a Tokio
    /// runtime, after adding hooks (it uses the hooks added so far). It
    /// starts working once [`Server::serve`] runs.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// use roost::codec::QoS;
    /// let server = roost::Server::new(roost::Options::default());
    /// let app = server.inline_client("app");
    /// tokio::spawn(server.serve(std::future::pending()));
    /// let mut commands = app.subscribe("devices/+/status", QoS::AtLeastOnce).await?;
    /// app.publish("devices/42/cmd", "reboot", QoS::AtLeastOnce).await?;
    /// while let Some(m) = commands.recv().await {
    ///     println!("{}: {:?}", m.topic, m.payload);
    /// }
    /// # Ok(()) }
    /// ```
    pub fn inline_client(&self, client_id: &str) -> InlineClient {
        let conn = ConnId(self.next_conn.fetch_add(1, Ordering::Relaxed));
        InlineClient::connect(client_id, conn, self.events_tx.clone(), self.hooks.clone())
    }

    /// Adds a TCP listener (id `mqtt:<address>`).
    pub fn tcp(self, listener: TcpListener) -> Self {
        self.handle.add_tcp(listener);
        self
    }

    /// Adds an MQTT over TLS listener (id `mqtts:<address>`). Fails if a
    /// certificate, key or CA file cannot be read or used.
    #[cfg(feature = "tls")]
    pub fn tls(self, listener: TcpListener, tls: TlsConfig) -> Result<Self, ListenerError> {
        self.handle.add_auto(listener, crate::Transport::Tls(tls))?;
        Ok(self)
    }

    /// Adds an MQTT over WebSocket listener (id `ws:<address>`). Fails if
    /// the listener's address cannot be read or its id is taken.
    #[cfg(feature = "ws")]
    pub fn ws(self, listener: TcpListener, ws: WsConfig) -> Result<Self, ListenerError> {
        self.handle.add_auto(listener, crate::Transport::Ws(ws))?;
        Ok(self)
    }

    /// Adds an MQTT over WebSocket over TLS listener (id `wss:<address>`).
    #[cfg(all(feature = "ws", feature = "tls"))]
    pub fn wss(
        self,
        listener: TcpListener,
        ws: WsConfig,
        tls: TlsConfig,
    ) -> Result<Self, ListenerError> {
        self.handle
            .add_auto(listener, crate::Transport::Wss(ws, tls))?;
        Ok(self)
    }

    /// Adds the HTTP stats endpoint (id `http:<address>`). Fails if the
    /// listener's address cannot be read or its id is taken.
    #[cfg(feature = "http")]
    pub fn http(self, listener: TcpListener) -> Result<Self, ListenerError> {
        self.handle.add_auto(listener, crate::Transport::Http)?;
        Ok(self)
    }

    /// Adds the HTTP stats endpoint over TLS (id `https:<address>`).
    #[cfg(all(feature = "http", feature = "tls"))]
    pub fn https(self, listener: TcpListener, tls: TlsConfig) -> Result<Self, ListenerError> {
        self.handle
            .add_auto(listener, crate::Transport::Https(tls))?;
        Ok(self)
    }

    /// Adds a listener built with [`Listener::new`], under its own id.
    pub fn listener(self, listener: Listener) -> Result<Self, ListenerError> {
        self.handle.add_listener(listener)?;
        Ok(self)
    }

    /// A handle to add listeners and reload TLS certificates, before or
    /// while the server serves.
    pub fn handle(&self) -> ServerHandle {
        self.handle.clone()
    }

    /// The live counters (cheap to clone; read them at any time).
    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// A copy of the counters now.
    pub fn info(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }

    /// Serves until `shutdown` completes, then disconnects every client
    /// (5.0 clients get DISCONNECT 0x8B), flushes the store and returns.
    ///
    /// The returned future is the broker's core. Spawn it on a
    /// multi-threaded runtime (`tokio::spawn(server.serve(..))`) rather
    /// than awaiting it in `block_on`: as a task, a message can go from
    /// its publisher's connection through the core to its subscriber on
    /// one worker thread, without waking another thread at each step
    /// (lower latency and CPU; the `roost` binary does so).
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> Result<(), ServeError> {
        let Server {
            opts,
            hooks,
            events_tx,
            mut events,
            next_conn,
            stats,
            store,
            loaded,
            handle,
            incoming,
        } = self;
        // The stored state is restored before any listener accepts: a store
        // that cannot be read ends `serve` without serving anyone.
        let snapshot = match loaded {
            Some(snapshot) => Some(snapshot),
            None if store.is_persistent() => Some(load(store.clone()).await?),
            None => None,
        };
        let reclaim = Arc::new(Reclaim::default());
        let intake = Arc::new(Intake::default());
        let batches = Arc::new(Batches::default());
        let mut freeing = Vec::new();
        let shared = Arc::new(Shared {
            opts: opts.clone(),
            stats: stats.clone(),
            events: events_tx,
            hooks: hooks.clone(),
            sweep: Default::default(),
            reclaim: reclaim.clone(),
            intake: intake.clone(),
            batches: batches.clone(),
            preauth: Default::default(),
        });
        let (stop_tx, stop_rx) = watch::channel(false);
        let permits = Arc::new(Semaphore::new(opts.limits.maximum_connections));
        // Listeners given before serving are waiting in `incoming`; those
        // added through a handle while serving arrive there too.
        tokio::spawn(listener::run(
            incoming,
            Accepting {
                shared: shared.clone(),
                next_conn: next_conn.clone(),
                permits: permits.clone(),
                stop: stop_rx.clone(),
            },
        ));
        drop((shared, handle));

        let opts_max_connections = opts.limits.maximum_connections;
        let durability = opts.durability;
        let mut broker = Broker::new(opts, hooks.clone(), stats.clone(), store.is_persistent());
        if let Some(snapshot) = snapshot {
            broker.restore(snapshot, now_ms());
        }
        // Storage work runs on one thread of the blocking pool, one group
        // commit at a time; a bounded queue of commits pushes back on the
        // core if the disk cannot keep up.
        let (commit_tx, commit_rx) = mpsc::channel::<Commit>(64);
        let committer = {
            let (store, stats, progress) = (store.clone(), stats.clone(), broker.commit_progress());
            tokio::task::spawn_blocking(move || {
                crate::commit::run(commit_rx, store, stats, progress)
            })
        };
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // In the relaxed mode changes are committed on an interval, not after
        // every batch of events.
        let mut flush = match durability {
            Durability::AckAfterCommit => None,
            Durability::AckBeforeCommit { flush_interval } => {
                let mut i = tokio::time::interval(flush_interval.max(Duration::from_millis(1)));
                i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                Some(i)
            }
        };
        hooks.each(|h| h.on_started());
        tokio::pin!(shutdown);
        loop {
            let mut flush_now = flush.is_none();
            tokio::select! {
                biased;
                _ = &mut shutdown => break,
                ev = events.recv() => {
                    let Some(ev) = ev else { break };
                    let now = now_ms();
                    let mut routed = 0;
                    // This event and what else is ready, so one commit
                    // covers many. Every few events, what the core is done
                    // with goes back: intake budget, batch vectors, written
                    // messages.
                    drain_ready(ev, &mut events, MAX_EVENTS_PER_COMMIT, |i, ev| {
                        routed += ev.held().kib();
                        if let Some(v) = broker.handle(ev, now) {
                            batches.put(v);
                        }
                        if i % 16 == 0 {
                            intake.release(std::mem::take(&mut routed));
                            reclaim.free(&mut freeing);
                        }
                    });
                    intake.release(routed);
                    reclaim.free(&mut freeing);
                }
                _ = tick.tick() => broker.tick(now_ms()),
                _ = async {
                    match flush.as_mut() {
                        Some(f) => f.tick().await,
                        None => std::future::pending().await,
                    }
                } => flush_now = true,
            }
            // In the relaxed mode a burst may not wait for the interval: what
            // is recorded meanwhile is held in memory.
            if !flush_now && broker.pending_ops() < RELAXED_MAX_PENDING_OPS {
                continue;
            }
            if let Some(commit) = broker.take_commit() {
                if commit_tx.send(commit).await.is_err() {
                    break;
                }
            }
        }
        let _ = stop_tx.send(true);
        broker.shutdown(now_ms());
        if let Some(commit) = broker.take_commit() {
            let _ = commit_tx.send(commit).await;
        }
        // Everything recorded is written before serve returns.
        drop(commit_tx);
        let _ = committer.await;
        // Connection tasks no longer need the core; closing the channel lets
        // them finish instead of waiting to report their end (or for intake
        // budget the core will never give back).
        drop(events);
        intake.close();
        // Each connection task holds a permit until its writer has flushed
        // (the final DISCONNECT included); wait for them, within a bound.
        let all = u32::try_from(opts_max_connections).unwrap_or(u32::MAX);
        let _ = tokio::time::timeout(Duration::from_secs(5), permits.acquire_many(all)).await;
        // A flush is disk work: off the runtime's threads, as the commits.
        tokio::task::spawn_blocking(move || store.flush())
            .await
            .map_err(|e| {
                StorageError::io("", format!("flushing the store: {e}")).with_source(e)
            })??;
        hooks.each(|h| h.on_stopped());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Past the bound, what is still queued stays queued: nothing is taken
    /// and dropped (the core once lost one event in every 1,025 this way).
    #[test]
    fn draining_stops_at_the_bound_without_taking_an_event() {
        let (tx, mut rx) = mpsc::channel::<usize>(4096);
        for n in 0..3000 {
            tx.try_send(n).unwrap();
        }
        let mut seen = Vec::new();
        let mut handled = 0;
        while let Ok(first) = rx.try_recv() {
            handled += drain_ready(first, &mut rx, MAX_EVENTS_PER_COMMIT, |i, n| {
                assert!(i <= MAX_EVENTS_PER_COMMIT);
                seen.push(n);
            });
        }
        assert_eq!(handled, 3000);
        assert_eq!(seen, (0..3000).collect::<Vec<_>>());
    }
}
