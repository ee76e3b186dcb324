//! The embeddable server: build it from [`Options`], give it listeners, and
//! serve it as a future that ends when a shutdown signal fires.
//!
//! Here the parts are wired together: the listeners' task, the core's task
//! (`core_loop`), the commit task (`commit`) and the one [`Clock`] they and
//! every connection read.

mod bridging;
#[cfg(feature = "cluster")]
mod clustering;
mod commit;
mod core_loop;
#[cfg(feature = "cluster")]
mod node_registry;
mod reader;
#[cfg(feature = "cluster")]
mod retained_bucket;
#[cfg(feature = "cluster")]
mod sharing;

use crate::admin::{Admin, AdminState};
use crate::bridge::{Bridge, BridgeError};
use crate::broker::Reclaim;
use crate::broker::{Broker, Commit, ConnId, Event};
use crate::clock::Clock;
use crate::config::Options;
use crate::hooks::{AclHook, AuthHook, EventHook, Hooks};
use crate::inline::InlineClient;
use crate::link::intake::Intake;
use crate::link::reclaim::Batches;
use crate::net::listener::{self, Accepting, Listener, ListenerError, ServerHandle};
use crate::net::shared::Shared;
use crate::stats::{Stats, StatsSnapshot};
use core_loop::CoreLoop;
use roost_storage::{MemoryStore, StorageError, Store};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
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
    /// The cluster's engine (NATS JetStream) cannot be reached or set up:
    /// a node refuses to serve alone rather than split the cluster.
    #[cfg(feature = "cluster")]
    #[error(transparent)]
    Cluster(#[from] crate::net::cluster::ClusterError),
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
    /// The core as [`Server::load_store`] restored it from the store,
    /// for `serve` to run.
    loaded: Option<Broker>,
    handle: ServerHandle,
    incoming: mpsc::UnboundedReceiver<Listener>,
    /// Read by the core, the connections and the inline clients alike.
    clock: Clock,
    /// Bridges to upstream brokers, with their dialers, started by `serve`.
    bridges: Vec<(Bridge, Arc<crate::net::dial::Dialer>)>,
    /// What the [`Admin`] handles share.
    admin: Arc<AdminState>,
    /// The cluster this node joins: configured, then connected by
    /// [`Server::connect_cluster`] or `serve`.
    #[cfg(feature = "cluster")]
    cluster: Option<Joining>,
}

/// A cluster on the way to being joined.
#[cfg(feature = "cluster")]
enum Joining {
    /// Configured, not connected yet.
    Configured(crate::cluster::config::ClusterConfig),
    /// Connected and subscribed (what `serve` would do first), before the
    /// application binds its listeners. Boxed: a server lives in this
    /// state for a moment, and configured in the rest.
    Connected(Arc<crate::net::cluster::Engine>, Box<clustering::Inbound>),
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("opts", &self.opts)
            .field("listeners", &self.handle.listeners())
            .finish_non_exhaustive()
    }
}

/// Events the core's queue holds before connections wait for room. Small,
/// because what it holds is beyond the reach of backpressure: a publisher
/// paused for a subscriber that is behind still has its queued events
/// delivered (1,024 let fan-in at QoS 0 overrun the slow-consumer limit).
const EVENT_QUEUE: usize = 256;

/// Connects to the cluster's engine and subscribes to what the node
/// receives from it.
#[cfg(feature = "cluster")]
async fn connect_cluster(
    config: &crate::cluster::config::ClusterConfig,
) -> Result<(Arc<crate::net::cluster::Engine>, clustering::Inbound), ServeError> {
    let engine = Arc::new(crate::net::cluster::connect(config).await?);
    let inbound = clustering::subscribe(&engine).await?;
    Ok((engine, inbound))
}

/// Restores `broker` from everything `store` holds, one record at a time
/// (the store is never all in memory at once), off the async runtime.
async fn restore(
    store: Arc<dyn Store>,
    mut broker: Broker,
    now_ms: u64,
) -> Result<Broker, StorageError> {
    tokio::task::spawn_blocking(move || {
        let mut restore = broker.restore(now_ms);
        let scanned = store.scan(&mut |record| {
            restore.record(record);
            Ok(())
        });
        restore.finish();
        scanned.map(|()| broker)
    })
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
        let admin = AdminState::new(events_tx.clone());
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
            clock: Clock::system(),
            bridges: Vec::new(),
            admin,
            #[cfg(feature = "cluster")]
            cluster: None,
        }
    }

    /// Joins the cluster `config` describes (feature `cluster`): messages
    /// published on this node reach subscribers on every node, and theirs
    /// this node's, and each message of a share group goes to one member
    /// across the nodes (see issue 19 for what is clustered so far).
    /// [`Server::serve`] connects to NATS first and fails with
    /// [`ServeError::Cluster`] when it cannot, before serving anyone; so
    /// does [`Server::connect_cluster`], earlier.
    #[cfg(feature = "cluster")]
    pub fn cluster(mut self, config: crate::cluster::config::ClusterConfig) -> Self {
        self.cluster = Some(Joining::Configured(config));
        self
    }

    /// Connects to the cluster's engine now (NATS, the stream, the node's
    /// consumer), as [`Server::serve`] otherwise does first: an application
    /// that binds its own listeners calls this before binding them, so a
    /// node that cannot reach NATS fails before anything listens or says
    /// it does (like [`Server::load_store`] for the store). Does nothing
    /// without a cluster, or once connected.
    #[cfg(feature = "cluster")]
    pub async fn connect_cluster(mut self) -> Result<Self, ServeError> {
        if let Some(Joining::Configured(config)) = self.cluster.take() {
            let (engine, inbound) = connect_cluster(&config).await?;
            self.cluster = Some(Joining::Connected(engine, Box::new(inbound)));
        }
        Ok(self)
    }

    /// Uses `store` for sessions, queues and retained messages.
    pub fn store(mut self, store: impl Store) -> Self {
        self.store = Arc::new(store);
        self.loaded = None;
        self
    }

    /// A core with this server's options and no hooks yet (`serve` gives
    /// it the hooks).
    fn broker(&self) -> Broker {
        Broker::new(
            self.opts.clone(),
            Hooks::default(),
            self.stats.clone(),
            self.store.is_persistent(),
        )
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
            let broker = self.broker();
            let now_ms = self.clock.now_ms();
            self.loaded = Some(restore(self.store.clone(), broker, now_ms).await?);
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
        InlineClient::connect(
            client_id,
            conn,
            self.events_tx.clone(),
            self.hooks.clone(),
            self.clock.clone(),
            self.stats.clone(),
        )
    }

    /// The admin handle: list and disconnect clients, list and clear
    /// retained messages, list subscriptions, publish (see
    /// [`crate::admin`]). Cheap to clone; works once [`Server::serve`]
    /// runs, and answers [`AdminError::Stopped`](crate::admin::AdminError::Stopped)
    /// once it has returned.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use roost::admin::{AdminPublish, Paging};
    /// use roost::codec::QoS;
    /// let server = roost::Server::new(roost::Options::default());
    /// let admin = server.admin();
    /// let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    /// let serving = tokio::spawn(server.serve(async { let _ = stopped.await; }));
    ///
    /// admin.publish(AdminPublish {
    ///     topic: "config/site".into(),
    ///     payload: "v2".into(),
    ///     qos: QoS::AtLeastOnce,
    ///     retain: true,
    /// }).await?;
    /// let retained = admin.retained("config/#", Paging::first(10)).await?;
    /// assert_eq!(retained.items[0].topic, "config/site");
    /// assert!(admin.delete_retained("config/site").await?);
    /// // The admin's own publisher is the one client so far.
    /// let clients = admin.clients(Paging::default()).await?;
    /// assert_eq!(clients.items[0].client_id, roost::admin::ADMIN_CLIENT_ID);
    ///
    /// let _ = stop.send(());
    /// serving.await??;
    /// # Ok(()) }
    /// ```
    pub fn admin(&self) -> Admin {
        Admin::new(self.admin.clone())
    }

    /// Adds a bridge to an upstream broker: a persistent session whose
    /// forward rules carry local messages to the remote and whose subscribe
    /// rules bring the remote's messages here (see [`crate::bridge`]). It
    /// connects when [`Server::serve`] runs, and reconnects until it stops.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// use roost::bridge::{Bridge, Remote, Rule};
    /// use roost::codec::QoS;
    /// let server = roost::Server::new(roost::Options::default()).bridge(
    ///     Bridge::new("cloud", Remote::parse("mqtt://127.0.0.1:1884")?)
    ///         .forward(Rule::new("devices/#", QoS::AtLeastOnce).remote_prefix("site-17/"))
    ///         .subscribe(Rule::new("commands/#", QoS::AtLeastOnce).remote_prefix("site-17/")),
    /// )?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`BridgeError`] if the bridge is not valid, another bridge has its
    /// name or client id, or its TLS files cannot be read or used.
    pub fn bridge(mut self, bridge: Bridge) -> Result<Self, BridgeError> {
        let mut all: Vec<Bridge> = self.bridges.iter().map(|(b, _)| b.clone()).collect();
        all.push(bridge.clone());
        crate::bridge::validate_all(&all)?;
        // The TLS files are read now, as a TLS listener's: a bridge that
        // could never connect is an error at start, not a retry loop.
        let dialer =
            crate::net::dial::Dialer::new(&bridge.remote, bridge.tls.as_ref()).map_err(|e| {
                BridgeError::TlsFile {
                    bridge: bridge.name.clone(),
                    reason: e.to_string(),
                }
            })?;
        self.bridges.push((bridge, Arc::new(dialer)));
        Ok(self)
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
    pub async fn serve(mut self, shutdown: impl Future<Output = ()>) -> Result<(), ServeError> {
        // The cluster's engine first: a node that cannot reach it refuses to
        // serve (rather than run alone, split from the others).
        #[cfg(feature = "cluster")]
        let cluster = match self.cluster.take() {
            None => None,
            Some(Joining::Configured(config)) => Some(connect_cluster(&config).await?),
            Some(Joining::Connected(engine, inbound)) => Some((engine, *inbound)),
        };
        // The stored state is restored before any listener accepts: a store
        // that cannot be read ends `serve` without serving anyone.
        let persistent = self.store.is_persistent();
        let mut broker = match self.loaded.take() {
            Some(broker) => broker,
            None if persistent => {
                let now_ms = self.clock.now_ms();
                restore(self.store.clone(), self.broker(), now_ms).await?
            }
            None => self.broker(),
        };
        let Server {
            opts,
            hooks,
            events_tx,
            events,
            next_conn,
            stats,
            store,
            loaded: _,
            handle,
            incoming,
            clock,
            bridges,
            admin,
            #[cfg(feature = "cluster")]
                cluster: _,
        } = self;
        broker.set_hooks(hooks.clone());
        // The admin's publisher will have the hooks as they are now final.
        admin.start(
            next_conn.clone(),
            hooks.clone(),
            clock.clone(),
            stats.clone(),
        );
        #[cfg(feature = "cluster")]
        let roaming = cluster.as_ref().map(|(engine, _)| {
            Arc::new(crate::net::roaming::Roaming::new(
                engine.clone(),
                events_tx.clone(),
                &opts.limits,
            ))
        });
        // From now on, in a cluster, acknowledgements that change a
        // session wait for the session bucket, and timers for the router.
        #[cfg(feature = "cluster")]
        if let Some(roaming) = &roaming {
            broker.save_sessions_in_cluster(roaming.wake());
        }
        // In a cluster, a restored session that another node took over
        // while this one was down is no longer this node's: it goes before
        // its will could fire here a second time.
        #[cfg(feature = "cluster")]
        if let (true, Some((engine, _))) = (persistent, &cluster) {
            let ids = broker.roaming_client_ids();
            let gone = crate::net::roaming::owned_elsewhere(engine, ids).await;
            broker.forget_sessions(&gone, clock.now_ms());
        }
        if persistent {
            // What fell due while the broker was down, with the hooks.
            broker.restored(clock.now_ms());
        }
        let reclaim = Arc::new(Reclaim::default());
        let intake = Arc::new(Intake::default());
        let batches = Arc::new(Batches::default());
        let shared = Arc::new(Shared {
            opts: opts.clone(),
            stats: stats.clone(),
            events: events_tx.clone(),
            hooks: hooks.clone(),
            sweep: Default::default(),
            reclaim: reclaim.clone(),
            intake: intake.clone(),
            batches: batches.clone(),
            preauth: Default::default(),
            clock: clock.clone(),
            #[cfg(feature = "http")]
            admin: Admin::new(admin),
            #[cfg(feature = "cluster")]
            roaming: roaming.clone(),
        });
        let (stop_tx, stop_rx) = watch::channel(false);
        // With a cluster, the listeners open once the node's router is
        // subscribed (the core must run to answer, so this waits in a task).
        #[allow(unused_mut)]
        let mut routing: Vec<tokio::sync::oneshot::Receiver<()>> = Vec::new();
        // The node registry's task, which deletes the node's record once
        // stopped: waited for before `serve` returns.
        #[allow(unused_mut)]
        let mut registry: Option<tokio::task::JoinHandle<()>> = None;
        #[cfg(feature = "cluster")]
        if let Some((engine, inbound)) = cluster {
            // And once the retained bucket is loaded: a client served
            // before could miss a retained message, or get a stale one.
            let bucket = Arc::new(retained_bucket::RetainedBucket::new(
                engine.clone(),
                events_tx.clone(),
                clock.clone(),
            ));
            registry = Some(tokio::spawn(node_registry::run(
                engine.clone(),
                stats.clone(),
                stop_rx.clone(),
            )));
            let (loaded, loaded_rx) = tokio::sync::oneshot::channel();
            routing.push(loaded_rx);
            tokio::spawn(retained_bucket::run(
                bucket.clone(),
                loaded,
                stop_rx.clone(),
            ));
            let client = InlineClient::connect(
                &clustering::client_id(&engine.config().node),
                ConnId(next_conn.fetch_add(1, Ordering::Relaxed)),
                events_tx.clone(),
                hooks.clone(),
                clock.clone(),
                stats.clone(),
            );
            // Share groups are served through the cluster from the first
            // event on (see `broker::groups`).
            let (interest, interest_rx) = tokio::sync::mpsc::unbounded_channel();
            broker.serve_groups_through_cluster(interest);
            tokio::spawn(sharing::run(
                engine.clone(),
                client.clone(),
                interest_rx,
                stop_rx.clone(),
            ));
            let (ready, ready_rx) = tokio::sync::oneshot::channel();
            routing.push(ready_rx);
            tokio::spawn(clustering::run(
                engine,
                inbound,
                client,
                bucket,
                ready,
                stop_rx.clone(),
            ));
            if let Some(roaming) = roaming {
                tokio::spawn(crate::net::roaming::answer_loop(
                    roaming.clone(),
                    stop_rx.clone(),
                ));
                tokio::spawn(crate::net::roaming::write_loop(
                    roaming.clone(),
                    stop_rx.clone(),
                ));
                tokio::spawn(crate::net::roaming::rescue_loop(roaming, stop_rx.clone()));
            }
        }
        let permits = Arc::new(Semaphore::new(opts.limits.maximum_connections));
        // Listeners given before serving are waiting in `incoming`; those
        // added through a handle while serving arrive there too.
        let accepting = Accepting {
            shared: shared.clone(),
            next_conn: next_conn.clone(),
            permits: permits.clone(),
            per_ip: crate::net::per_ip::PerIp::new(&opts.limits),
            stop: stop_rx.clone(),
        };
        tokio::spawn(async move {
            for ready in routing {
                if ready.await.is_err() {
                    // The router could not subscribe, or the retained
                    // bucket not load (logged): not serving.
                    return;
                }
            }
            listener::run(incoming, accepting).await;
        });
        drop((shared, handle));
        let bridge_tasks = bridging::start(
            bridges,
            &mut broker,
            bridging::Start {
                next_conn: &next_conn,
                events: &events_tx,
                hooks: &hooks,
                clock: &clock,
                stop: &stop_rx,
                stats: &stats,
                max_packet_size: opts.limits.maximum_packet_size,
                receive_maximum: opts.limits.receive_maximum,
            },
        );
        drop(events_tx);

        let opts_max_connections = opts.limits.maximum_connections;
        let durability = opts.durability;
        // Storage work runs on one thread of the blocking pool, one group
        // commit at a time; a bounded queue of commits pushes back on the
        // core if the disk cannot keep up.
        let (commits, commit_rx) = mpsc::channel::<Commit>(64);
        let committer = {
            let (store, stats, progress) = (store.clone(), stats.clone(), broker.commit_progress());
            tokio::task::spawn_blocking(move || commit::run(commit_rx, store, stats, progress))
        };
        // Spilled queues and retained messages are read back by their own
        // task, so a read never waits behind the commits, nor the core
        // behind a read.
        let (page_requests, requests_rx) = mpsc::unbounded_channel();
        let (pages_tx, pages) = mpsc::unbounded_channel();
        tokio::spawn(reader::run(
            requests_rx,
            pages_tx,
            store.clone(),
            broker.commit_progress(),
        ));
        let refills = broker.refills();
        let mut core = CoreLoop {
            broker,
            refills,
            events,
            clock,
            intake: intake.clone(),
            batches,
            reclaim,
            durability,
            commits,
            page_requests,
            pages,
        };
        hooks.each(|h| h.on_started());
        core.run(shutdown).await;
        let _ = stop_tx.send(true);
        bridging::stopped(bridge_tasks).await;
        if let Some(registry) = registry {
            let _ = registry.await;
        }
        let events = core.finish().await;
        // Everything recorded is written before serve returns (`finish`
        // dropped the last sender of commits).
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
