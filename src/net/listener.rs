//! The listener seam: every transport (TCP, TLS, WebSocket, WSS, HTTP)
//! is a bound [`TcpListener`] plus a [`Transport`] that says what to do with
//! each accepted socket. One accept loop serves them all; the transport's
//! handshake runs inside the connection's own task, under a timeout, so a
//! slow or hostile client never holds up accepting.

use super::connection::{serve_connection, Peer};
pub use super::error::ListenerError;
use super::per_ip::{Hold, Loud, PerIp, Refused};
use super::shared::Shared;
use crate::broker::ConnId;
use std::net::{Ipv4Addr, SocketAddr};
#[cfg(any(feature = "http", feature = "ws"))]
use std::sync::atomic::AtomicBool;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

#[cfg(feature = "ws")]
use super::metered::Metered;
#[cfg(feature = "tls")]
use super::tls::{TlsConfig, TlsState};
#[cfg(feature = "ws")]
use super::ws::WsConfig;

/// Most concurrent connections one HTTP listener serves; they do not count
/// against the MQTT connection limit. At the limit, a new connection
/// replaces the oldest one that has not sent its request head yet (see
/// [`HttpHeads`]), so idle sockets cannot keep health checks out.
#[cfg(feature = "http")]
const HTTP_MAX_CONNECTIONS: usize = 64;

/// How long an HTTP connection may take to send its request head (and,
/// for HTTPS, to finish the TLS handshake first), at most: a scraper or a
/// health check sends it at once. Shorter than the connect timeout, which
/// is the bound when that is shorter still.
#[cfg(feature = "http")]
const HTTP_HEAD_TIMEOUT: Duration = Duration::from_secs(3);

/// What a listener speaks. Variants appear with the cargo features that
/// provide them.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Transport {
    /// MQTT over plain TCP.
    Tcp,
    /// MQTT over TLS.
    #[cfg(feature = "tls")]
    Tls(TlsConfig),
    /// MQTT over WebSocket.
    #[cfg(feature = "ws")]
    Ws(WsConfig),
    /// MQTT over WebSocket over TLS.
    #[cfg(all(feature = "ws", feature = "tls"))]
    Wss(WsConfig, TlsConfig),
    /// The HTTP stats endpoint.
    #[cfg(feature = "http")]
    Http,
    /// The HTTP stats endpoint over TLS.
    #[cfg(all(feature = "http", feature = "tls"))]
    Https(TlsConfig),
}

/// A transport made ready to accept: TLS files loaded.
enum Kind {
    Tcp,
    #[cfg(feature = "tls")]
    Tls(Arc<TlsState>),
    #[cfg(feature = "ws")]
    Ws(WsConfig),
    #[cfg(all(feature = "ws", feature = "tls"))]
    Wss(WsConfig, Arc<TlsState>),
    /// HTTPS with its TLS state, and the admin API's token if it serves
    /// the admin API.
    #[cfg(feature = "http")]
    Http(Option<Arc<HttpTls>>, Option<crate::admin::AdminToken>),
}

/// HTTPS needs TLS only when the `tls` feature is on; this keeps `Kind`
/// the same shape either way.
#[cfg(feature = "http")]
#[cfg(feature = "tls")]
type HttpTls = TlsState;
#[cfg(feature = "http")]
#[cfg(not(feature = "tls"))]
type HttpTls = std::convert::Infallible;

impl Kind {
    fn scheme(&self) -> &'static str {
        match self {
            Kind::Tcp => "mqtt",
            #[cfg(feature = "tls")]
            Kind::Tls(_) => "mqtts",
            #[cfg(feature = "ws")]
            Kind::Ws(_) => "ws",
            #[cfg(all(feature = "ws", feature = "tls"))]
            Kind::Wss(..) => "wss",
            #[cfg(feature = "http")]
            Kind::Http(None, _) => "http",
            #[cfg(feature = "http")]
            Kind::Http(Some(_), _) => "https",
        }
    }

    #[cfg(feature = "tls")]
    fn tls(&self) -> Option<Arc<TlsState>> {
        match self {
            Kind::Tls(t) => Some(t.clone()),
            #[cfg(feature = "ws")]
            Kind::Wss(_, t) => Some(t.clone()),
            #[cfg(feature = "http")]
            Kind::Http(t, _) => t.clone(),
            _ => None,
        }
    }
}

/// A bound socket with an id and a transport, ready to be given to a
/// [`Server`](crate::Server) (before or while it serves).
pub struct Listener {
    id: String,
    addr: SocketAddr,
    tcp: TcpListener,
    kind: Kind,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("id", &self.id)
            .field("addr", &self.addr)
            .field("scheme", &self.kind.scheme())
            .finish_non_exhaustive()
    }
}

impl Listener {
    /// A listener on `listener` speaking `transport`. TLS certificate, key
    /// and CA files are read now; errors name the file.
    pub fn new(
        id: impl Into<String>,
        listener: TcpListener,
        transport: Transport,
    ) -> Result<Listener, ListenerError> {
        let addr = listener.local_addr()?;
        let kind = match transport {
            Transport::Tcp => Kind::Tcp,
            #[cfg(feature = "tls")]
            Transport::Tls(cfg) => Kind::Tls(Arc::new(TlsState::load(cfg)?)),
            #[cfg(feature = "ws")]
            Transport::Ws(cfg) => Kind::Ws(cfg),
            #[cfg(all(feature = "ws", feature = "tls"))]
            Transport::Wss(ws, tls) => Kind::Wss(ws, Arc::new(TlsState::load(tls)?)),
            #[cfg(feature = "http")]
            Transport::Http => Kind::Http(None, None),
            #[cfg(all(feature = "http", feature = "tls"))]
            Transport::Https(tls) => Kind::Http(Some(Arc::new(TlsState::load(tls)?)), None),
        };
        Ok(Listener {
            id: id.into(),
            addr,
            tcp: listener,
            kind,
        })
    }

    /// The listener's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves the admin API (`/api/v1/...`, see [`crate::admin`]) on this
    /// HTTP or HTTPS listener to requests bearing `token`
    /// (`Authorization: Bearer <token>`). Without a token the admin routes
    /// answer 404. Warns when the listener is plain HTTP on an address
    /// other than loopback: the token then crosses the network in clear.
    /// Fails for a listener of another transport.
    #[cfg(feature = "http")]
    pub fn admin_token(mut self, token: crate::admin::AdminToken) -> Result<Self, ListenerError> {
        let Kind::Http(tls, admin) = &mut self.kind else {
            return Err(ListenerError::NotHttp(self.id));
        };
        if tls.is_none() && !self.addr.ip().is_loopback() {
            tracing::warn!(addr = %self.addr,
                "the admin API is served over plain HTTP on a non-loopback address: its token crosses the network in clear (use an https listener, or bind to 127.0.0.1)");
        }
        *admin = Some(token);
        Ok(self)
    }

    fn handle(&self) -> ListenerHandle {
        ListenerHandle {
            id: self.id.clone(),
            addr: self.addr,
            scheme: self.kind.scheme(),
            #[cfg(feature = "tls")]
            tls: self.kind.tls(),
        }
    }
}

/// A running (or about to run) listener: its id, its address, and the
/// certificate reload switch for TLS listeners.
#[derive(Clone)]
pub struct ListenerHandle {
    id: String,
    addr: SocketAddr,
    scheme: &'static str,
    #[cfg(feature = "tls")]
    tls: Option<Arc<TlsState>>,
}

impl std::fmt::Debug for ListenerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerHandle")
            .field("id", &self.id)
            .field("addr", &self.addr)
            .field("scheme", &self.scheme)
            .finish()
    }
}

impl ListenerHandle {
    /// The listener's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// What it speaks, as a URL scheme: `mqtt`, `mqtts`, `ws`, `wss`,
    /// `http` or `https`.
    pub fn scheme(&self) -> &'static str {
        self.scheme
    }

    /// Reads the certificate chain, key, CA and CRL files again and uses
    /// them for new connections; connections already up keep theirs, but
    /// those whose client certificate a new CRL revokes are closed. On
    /// error the listener keeps serving with what it had.
    pub fn reload(&self) -> Result<(), ListenerError> {
        #[cfg(feature = "tls")]
        if let Some(tls) = &self.tls {
            return tls.reload();
        }
        Err(ListenerError::NotTls(self.id.clone()))
    }
}

/// Adds listeners to a server, before or while it serves. Cheap to clone.
#[derive(Clone)]
pub struct ServerHandle {
    inner: Arc<HandleInner>,
}

struct HandleInner {
    incoming: mpsc::UnboundedSender<Listener>,
    listeners: Mutex<Vec<ListenerHandle>>,
}

impl std::fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerHandle")
            .field("listeners", &self.listeners())
            .finish()
    }
}

impl ServerHandle {
    /// A handle and the receiving end the server's accept task reads.
    pub(crate) fn new() -> (ServerHandle, mpsc::UnboundedReceiver<Listener>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let inner = HandleInner {
            incoming: tx,
            listeners: Mutex::new(Vec::new()),
        };
        (
            ServerHandle {
                inner: Arc::new(inner),
            },
            rx,
        )
    }

    /// Starts accepting on `listener` (at once if the server is serving,
    /// else when it starts). Fails if the id is taken or the server has
    /// stopped.
    pub fn add_listener(&self, listener: Listener) -> Result<ListenerHandle, ListenerError> {
        // A poisoned list is still a valid list: pushes are atomic.
        let mut list = self
            .inner
            .listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if list.iter().any(|l| l.id == listener.id) {
            return Err(ListenerError::DuplicateId(listener.id));
        }
        let handle = listener.handle();
        self.inner
            .incoming
            .send(listener)
            .map_err(|_| ListenerError::Stopped)?;
        list.push(handle.clone());
        Ok(handle)
    }

    /// Like [`add_listener`](Self::add_listener), with an id made from the
    /// scheme and address (`mqtt:127.0.0.1:1883`), made unique if needed.
    pub(crate) fn add_auto(
        &self,
        tcp: TcpListener,
        transport: Transport,
    ) -> Result<ListenerHandle, ListenerError> {
        let mut listener = Listener::new(String::new(), tcp, transport)?;
        let base = format!("{}:{}", listener.kind.scheme(), listener.addr);
        let mut id = base.clone();
        let mut n = 2;
        while self.listener(&id).is_some() {
            id = format!("{base}#{n}");
            n += 1;
        }
        listener.id = id;
        self.add_listener(listener)
    }

    /// Adds a plain TCP listener; cannot fail while the server is not yet
    /// serving (the builder's case).
    pub(crate) fn add_tcp(&self, tcp: TcpListener) {
        // A bound socket always has an address; should reading it fail,
        // fall back to an id without one rather than lose the listener.
        let result = match tcp.local_addr() {
            Ok(_) => self.add_auto(tcp, Transport::Tcp).map(drop),
            Err(_) => {
                let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0));
                let listener = Listener {
                    id: format!("mqtt#{}", self.listeners().len() + 1),
                    addr,
                    tcp,
                    kind: Kind::Tcp,
                };
                self.add_listener(listener).map(drop)
            }
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "cannot add TCP listener");
        }
    }

    /// The listener with this id.
    pub fn listener(&self, id: &str) -> Option<ListenerHandle> {
        self.listeners().into_iter().find(|l| l.id == id)
    }

    /// Every listener added so far, in order.
    pub fn listeners(&self) -> Vec<ListenerHandle> {
        self.inner
            .listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// What every accept loop shares.
#[derive(Clone)]
pub(crate) struct Accepting {
    pub shared: Arc<Shared>,
    pub next_conn: Arc<AtomicU64>,
    pub permits: Arc<Semaphore>,
    /// The per-source limits of MQTT listeners, if any are set.
    pub per_ip: Option<Arc<PerIp>>,
    pub stop: watch::Receiver<bool>,
}

/// Starts an accept loop for every listener that arrives, until shutdown.
/// Also ticks the connections' [`IdleSweep`](super::sweep::IdleSweep).
pub(crate) async fn run(mut incoming: mpsc::UnboundedReceiver<Listener>, ctx: Accepting) {
    let mut stop = ctx.stop.clone();
    let mut sweep = tokio::time::interval(Duration::from_secs(1));
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Listeners arrive until every handle is gone; the sweep goes on.
    let mut open = true;
    loop {
        tokio::select! {
            l = incoming.recv(), if open => match l {
                Some(l) => {
                    tracing::info!(id = %l.id, addr = %l.addr, scheme = l.kind.scheme(), "listening");
                    tokio::spawn(accept_loop(l, ctx.clone()));
                }
                None => open = false,
            },
            _ = sweep.tick() => {
                ctx.shared.sweep.tick();
                if let Some(per_ip) = &ctx.per_ip {
                    per_ip.sweep(ctx.shared.clock.mono_ms());
                }
            }
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

async fn accept_loop(listener: Listener, ctx: Accepting) {
    let Listener { id, tcp, kind, .. } = listener;
    let kind = Arc::new(kind);
    // HTTP connections have their own small limit, so stats scrapers never
    // take a slot from an MQTT client; nor do they count per source.
    let (permits, per_ip) = match &*kind {
        #[cfg(feature = "http")]
        Kind::Http(..) => (Arc::new(Semaphore::new(HTTP_MAX_CONNECTIONS)), None),
        _ => (ctx.permits.clone(), ctx.per_ip.clone()),
    };
    // A CRL is watched for as long as the listener accepts.
    #[cfg(feature = "tls")]
    if let Some(tls) = kind.tls().filter(|t| t.has_crl()) {
        tokio::spawn(tls.watch_crl(id.clone(), ctx.shared.clone(), ctx.stop.clone()));
    }
    let mut stop = ctx.stop.clone();
    let mut backoff = Duration::from_millis(5);
    let mut warned_full: Option<u64> = None;
    #[cfg(feature = "http")]
    let mut http_heads = HttpHeads::default();
    // Every connection's task: after shutdown the connections get a grace
    // period to flush, then whatever is left is aborted (dropping the set
    // aborts its tasks). Costs a connection less than its task watching
    // for shutdown itself.
    let mut tasks = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            r = tcp.accept() => r,
            // Finished tasks leave the set as they end.
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
            _ = stop.wait_for(|s| *s) => break,
        };
        let (stream, peer) = match accepted {
            Ok(x) => {
                backoff = Duration::from_millis(5);
                x
            }
            Err(e) => {
                // Out of file descriptors and the like: back off, never spin
                // or give up.
                tracing::warn!(listener = %id, error = %e, "accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let permit = match permits.clone().try_acquire_owned() {
            Ok(permit) => Some(permit),
            #[cfg(feature = "http")]
            Err(_) if matches!(&*kind, Kind::Http(..)) => {
                http_heads.evict(&permits, &ctx.shared.stats).await
            }
            Err(_) => None,
        };
        let Some(permit) = permit else {
            crate::stats::add(&ctx.shared.stats.connections_refused, 1);
            // At the limit every accept refuses: one warning a minute, the
            // counter has them all.
            let now = ctx.shared.clock.mono_ms();
            if warned_full.is_none_or(|at| now.saturating_sub(at) >= 60_000) {
                warned_full = Some(now);
                tracing::warn!(listener = %id, %peer, limit = "maximum_connections",
                    "connection refused: the broker is at its connection limit (further refusals on this listener are logged at debug for a minute)");
            } else {
                tracing::debug!(listener = %id, %peer, limit = "maximum_connections",
                    "connection refused: the broker is at its connection limit");
            }
            continue;
        };
        // Per source: closed here, before any handshake (see `per_ip`).
        let source = match &per_ip {
            None => None,
            Some(per_ip) => match per_ip.admit(peer.ip(), ctx.shared.clock.mono_ms()) {
                Ok(hold) => hold,
                Err((why, loud)) => {
                    refused_per_ip(&ctx.shared.stats, &id, peer, why, loud);
                    continue;
                }
            },
        };
        let slot = match source {
            None => Slot::Permit(permit),
            Some(hold) => Slot::Counted(Box::new((permit, hold))),
        };
        let _ = stream.set_nodelay(true);
        let accepted = Accepted {
            stream,
            conn: ConnId(ctx.next_conn.fetch_add(1, Ordering::Relaxed)),
            remote: peer,
            shared: ctx.shared.clone(),
            #[cfg(any(feature = "tls", feature = "ws", feature = "http"))]
            kind: kind.clone(),
            #[cfg(any(feature = "tls", feature = "ws", feature = "http"))]
            stop: ctx.stop.clone(),
        };
        let task = Box::new((accepted, slot));
        // One task type per transport: a plain TCP connection's task then
        // holds only what TCP needs (TLS and WebSocket state is far larger).
        match &*kind {
            Kind::Tcp => {
                tasks.spawn(supervise(task, |a| {
                    serve_connection(a.stream, a.conn, a.shared, Peer::at(a.remote))
                }));
            }
            #[cfg(feature = "http")]
            Kind::Http(..) => {
                let head = Arc::new(AtomicBool::new(false));
                let served = head.clone();
                let abort = tasks.spawn(supervise(task, move |a| http(a, served)));
                http_heads.push(abort, head);
            }
            #[cfg(any(feature = "tls", feature = "ws"))]
            _ => {
                tasks.spawn(supervise(task, layered));
            }
        };
    }
    drop(tcp);
    let drained = async { while tasks.join_next().await.is_some() {} };
    let _ = tokio::time::timeout(Duration::from_secs(5), drained).await;
}

/// A connection just accepted, with what serving it needs.
struct Accepted {
    stream: TcpStream,
    conn: ConnId,
    remote: SocketAddr,
    shared: Arc<Shared>,
    /// What the layered transports need.
    #[cfg(any(feature = "tls", feature = "ws", feature = "http"))]
    kind: Arc<Kind>,
    /// Handshakes end at shutdown.
    #[cfg(any(feature = "tls", feature = "ws", feature = "http"))]
    stop: watch::Receiver<bool>,
}

/// Logs and counts a connection refused for its source.
fn refused_per_ip(
    stats: &crate::stats::Stats,
    listener: &str,
    peer: SocketAddr,
    why: Refused,
    loud: Loud,
) {
    let (counter, limit) = match why {
        Refused::Connections => (
            &stats.connections_refused_per_ip,
            "maximum_connections_per_ip",
        ),
        Refused::Rate => (&stats.connect_rate_refused, "maximum_connect_rate_per_ip"),
    };
    crate::stats::add(counter, 1);
    let source = super::per_ip::Source::of(peer.ip());
    match loud {
        // Once a minute per source: the counters count every one.
        Loud::Warn => tracing::warn!(%listener, %peer, %source, limit,
            "connection refused: its source is at a per-source limit (further refusals of this source are logged at debug for a minute)"),
        Loud::Quiet => tracing::debug!(%listener, %peer, %source, limit,
            "connection refused: its source is at a per-source limit"),
    }
}

/// What an accepted connection holds until it ends: its place under
/// `maximum_connections`, and in its source's count when that is limited.
/// Dropping it gives both back. An enum with a box, not a struct with an
/// option: it is then no larger than the permit alone (the box fits beside
/// the permit's pointer), and a TCP connection's task has no byte to spare
/// (see the test below).
#[allow(dead_code, reason = "held for their `Drop` only")]
enum Slot {
    Permit(OwnedSemaphorePermit),
    Counted(Box<(OwnedSemaphorePermit, Hold)>),
}

/// Runs one accepted connection, holding its slot under the connection
/// limits until it ends.
///
/// The connection comes boxed and its future is made in here: what an
/// `async fn` is given stays in its future for its whole life, even once
/// moved on, so every connection would carry its arguments twice.
async fn supervise<F, Fut>(task: Box<(Accepted, Slot)>, serve: F)
where
    F: FnOnce(Accepted) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    // A block, so that nothing but the connection's future (and the slot)
    // lives across the await.
    let (serving, slot) = {
        let (accepted, slot) = unbox(task);
        (serve(accepted), slot)
    };
    serving.await;
    drop(slot);
}

/// Moves a value out of its box and frees the box now (moved out of in
/// place, the box would be freed only when the task ends).
#[allow(clippy::boxed_local, reason = "freeing the box is the point")]
fn unbox<T>(b: Box<T>) -> T {
    *b
}

/// Runs the transport's handshake (bounded by the connect timeout) and then
/// the connection, all inside the connection's own task: TLS, WebSocket
/// and WSS. Plain TCP and HTTP(S) have task types of their own.
///
/// The task's allocation is this future's size, the largest state of any
/// of its arms, and it lives as long as the connection. So each handshake
/// future is boxed: inline, the WebSocket upgrade's made the future 22 KiB,
/// which every idle TLS connection carried (issue 20); boxed, it is freed
/// once the handshake ends, and an idle connection's task holds its
/// stream and not much more (see the test below).
#[cfg(any(feature = "tls", feature = "ws"))]
async fn layered(accepted: Accepted) {
    #[allow(unused_variables)] // Only handshakes watch `stop`.
    let Accepted {
        stream,
        conn,
        remote,
        kind,
        shared,
        stop,
    } = accepted;
    #[allow(unused_variables)] // Only the TLS and WebSocket transports use it.
    let handshake_timeout = shared.opts.limits.connect_timeout;
    match &*kind {
        Kind::Tcp => serve_connection(stream, conn, shared, Peer::at(remote)).await,
        #[cfg(feature = "tls")]
        Kind::Tls(tls) => {
            // Boxed, as every handshake here: its future is transient and
            // large, and inline it would size the task for the
            // connection's whole life (see `layered`).
            let accept = Box::pin(tls.accept(stream, remote));
            let stats = &shared.stats;
            let Some(stream) = handshake(
                (conn, remote),
                handshake_timeout,
                stop.clone(),
                stats,
                accept,
            )
            .await
            else {
                return;
            };
            // Held while the connection lives.
            let Some(tracked) = tls.track(conn, &stream, stats) else {
                return;
            };
            let peer = Peer {
                username: tls.username(&stream),
                client_id: tls.client_id(&stream),
                remote_addr: Some(remote),
                admitted: None,
                revoked: tracked.revoked(),
                certificate: tls.certificate(&stream),
            };
            serve_connection(stream, conn, shared, peer).await;
            drop(tracked);
        }
        #[cfg(feature = "ws")]
        Kind::Ws(cfg) => {
            // The upgrade request and frame headers are bytes the MQTT
            // decoder never sees: what the transport reads before CONNACK
            // is metered.
            let admitted = Arc::new(AtomicBool::new(false));
            let stream = Metered::new(stream, shared.clone(), admitted.clone());
            let Some(ws) = handshake(
                (conn, remote),
                handshake_timeout,
                stop.clone(),
                &shared.stats,
                Box::pin(super::ws::accept(stream, cfg)),
            )
            .await
            else {
                return;
            };
            let peer = Peer {
                admitted: Some(admitted),
                ..Peer::at(remote)
            };
            serve_connection(ws, conn, shared, peer).await
        }
        #[cfg(all(feature = "ws", feature = "tls"))]
        Kind::Wss(cfg, tls) => {
            let admitted = Arc::new(AtomicBool::new(false));
            let metering = (shared.clone(), admitted.clone());
            let upgrade = Box::pin(async {
                let stream = tls.accept(stream, remote).await?;
                let identity = (
                    tls.username(&stream),
                    tls.client_id(&stream),
                    tls.certificate(&stream),
                );
                let Some(tracked) = tls.track(conn, &stream, &metering.0.stats) else {
                    return Err(HandshakeError::Revoked);
                };
                let stream = Metered::new(stream, metering.0, metering.1);
                let ws = super::ws::accept(stream, cfg).await?;
                Ok::<_, HandshakeError>((ws, identity, tracked))
            });
            let stats = &shared.stats;
            let Some((ws, (username, client_id, certificate), tracked)) = handshake(
                (conn, remote),
                handshake_timeout,
                stop.clone(),
                stats,
                upgrade,
            )
            .await
            else {
                return;
            };
            let peer = Peer {
                username,
                client_id,
                remote_addr: Some(remote),
                admitted: Some(admitted),
                revoked: tracked.revoked(),
                certificate,
            };
            serve_connection(ws, conn, shared, peer).await;
            drop(tracked);
        }
        // Served by `http`, never from here.
        #[cfg(feature = "http")]
        Kind::Http(..) => {}
    }
}

/// Serves an HTTP(S) connection; `head` is set once its request head is
/// read (from then on it is not idle, and never evicted).
#[cfg(feature = "http")]
async fn http(accepted: Accepted, head: Arc<AtomicBool>) {
    #[allow(unused_variables)] // Only HTTPS watches `stop`.
    let Accepted {
        stream,
        conn,
        kind,
        shared,
        stop,
        ..
    } = accepted;
    let limit = shared.opts.limits.connect_timeout.min(HTTP_HEAD_TIMEOUT);
    let remote = accepted.remote;
    match &*kind {
        Kind::Http(None, admin) => {
            let ctx = super::http::Ctx::new(&shared, admin.as_ref(), remote, limit);
            super::http::serve(stream, ctx, &head).await
        }
        #[cfg(feature = "tls")]
        Kind::Http(Some(tls), admin) => {
            let accept = tls.accept(stream, remote);
            if let Some(s) = handshake((conn, remote), limit, stop, &shared.stats, accept).await {
                let ctx = super::http::Ctx::new(&shared, admin.as_ref(), remote, limit);
                super::http::serve(s, ctx, &head).await
            }
        }
        #[cfg(not(feature = "tls"))]
        Kind::Http(Some(never), _) => match **never {},
        // Only HTTP listeners spawn this.
        _ => {}
    }
}

/// One HTTP listener's connections, oldest first, with whether each has
/// sent its request head.
#[cfg(feature = "http")]
#[derive(Default)]
struct HttpHeads {
    conns: std::collections::VecDeque<(tokio::task::AbortHandle, Arc<AtomicBool>)>,
}

#[cfg(feature = "http")]
impl HttpHeads {
    fn push(&mut self, task: tokio::task::AbortHandle, head: Arc<AtomicBool>) {
        // At most the listener's limit of live ones, plus those that ended
        // since the last connection came.
        self.conns.retain(|(t, _)| !t.is_finished());
        self.conns.push_back((task, head));
    }

    /// At the limit: ends the oldest connection still waiting for its
    /// request head (sockets opened and left idle) and takes its slot.
    /// `None` if every connection is busy with a request.
    async fn evict(
        &mut self,
        permits: &Arc<Semaphore>,
        stats: &crate::stats::Stats,
    ) -> Option<OwnedSemaphorePermit> {
        self.conns.retain(|(t, _)| !t.is_finished());
        let at = self
            .conns
            .iter()
            .position(|(_, head)| !head.load(Ordering::Relaxed))?;
        let (task, _) = self.conns.remove(at)?;
        task.abort();
        crate::stats::add(&stats.http_evicted, 1);
        tracing::debug!("HTTP connection limit reached; the oldest idle connection was closed");
        // The aborted task gives its slot back as the runtime drops it,
        // which it does at once; the bound is only a safeguard.
        let slot = permits.clone().acquire_owned();
        tokio::time::timeout(Duration::from_secs(1), slot)
            .await
            .ok()?
            .ok()
    }
}

/// Why a transport handshake failed; logged, never returned to a caller.
#[cfg(any(feature = "tls", feature = "ws"))]
#[derive(Debug, thiserror::Error)]
pub(crate) enum HandshakeError {
    /// TLS (tokio-rustls reports its errors as I/O errors).
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[cfg(feature = "ws")]
    #[error("WebSocket: {0}")]
    Ws(#[from] super::ws::UpgradeError),
    /// A new CRL revoked the client certificate during the handshake
    /// (WSS; over TLS the connection just ends).
    #[cfg(all(feature = "tls", feature = "ws"))]
    #[error("client certificate revoked")]
    Revoked,
}

#[cfg(any(feature = "tls", feature = "ws"))]
impl HandshakeError {
    /// The peer closed before a handshake began (or reset it): a probe
    /// rather than a client.
    fn is_silent_close(&self) -> bool {
        use std::io::ErrorKind::{ConnectionReset, UnexpectedEof};
        match self {
            HandshakeError::Io(e) => matches!(e.kind(), UnexpectedEof | ConnectionReset),
            #[allow(unreachable_patterns)] // Only with `ws`.
            _ => false,
        }
    }

    /// TLS refused the client's certificate as revoked (see
    /// [`TlsConfig::crl`]).
    fn revoked_by_tls(&self) -> bool {
        #[cfg(feature = "tls")]
        #[allow(irrefutable_let_patterns)] // Without `ws`, Io is all there is.
        if let HandshakeError::Io(e) = self {
            use tokio_rustls::rustls::{CertificateError, Error};
            let tls = e.get_ref().and_then(|e| e.downcast_ref::<Error>());
            return matches!(
                tls,
                Some(Error::InvalidCertificate(CertificateError::Revoked))
            );
        }
        false
    }
}

/// Awaits a handshake for at most `limit`, or until shutdown (a connection
/// still in its handshake has nothing to flush, so it gets no grace
/// period); failures are logged and the connection dropped.
///
/// A failure is logged at `info` with the peer's address, under the target
/// `roost::refusal` (which the binary rate-limits): a client whose
/// certificate is refused, or that refuses the broker's, is what an
/// operator looks for. A connection closed before it sent anything (a port
/// probe, a load balancer's health check) is logged at `debug` only.
#[cfg(any(feature = "tls", feature = "ws"))]
async fn handshake<T, E>(
    (conn, remote): (ConnId, SocketAddr),
    limit: Duration,
    mut stop: watch::Receiver<bool>,
    stats: &crate::stats::Stats,
    fut: impl std::future::Future<Output = Result<T, E>>,
) -> Option<T>
where
    HandshakeError: From<E>,
{
    let outcome = tokio::select! {
        r = tokio::time::timeout(limit, fut) => r,
        _ = stop.wait_for(|s| *s) => return None,
    };
    match outcome {
        Ok(Ok(t)) => Some(t),
        Ok(Err(e)) => {
            let e = HandshakeError::from(e);
            if e.revoked_by_tls() {
                // Logged with the certificate by the verifier.
                crate::stats::add(&stats.tls_revoked_refused, 1);
            }
            if e.is_silent_close() {
                tracing::debug!(conn = conn.0, %remote, error = %e, "handshake failed");
            } else {
                crate::stats::add(&stats.handshakes_failed, 1);
                tracing::info!(target: crate::REFUSAL, conn = conn.0, %remote, error = %e,
                    "handshake failed; connection closed");
            }
            None
        }
        Err(_) => {
            crate::stats::add(&stats.handshakes_failed, 1);
            tracing::info!(target: crate::REFUSAL, conn = conn.0, %remote, ?limit,
                "handshake not completed within the connect timeout; connection closed");
            None
        }
    }
}

#[cfg(all(test, target_pointer_width = "64"))]
mod tests {
    use super::*;

    /// A tripwire for memory per connection. tokio allocates a task as one
    /// cell, aligned (and so sized) to 128 bytes: a header and trailer of
    /// about 100 bytes plus this future. Past 280 bytes of future, every
    /// TCP connection's task grows from 384 to 512 bytes (measured: 1.35
    /// against 1.45 KiB per idle connection). If a change must cross the
    /// line, move rarely used state into a box instead, or raise the bound
    /// knowingly (see the idle benchmark).
    #[tokio::test]
    async fn a_tcp_connection_task_fits_in_384_bytes() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stream = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (events, _rx) = mpsc::channel(1);
        let shared = Arc::new(Shared {
            #[cfg(feature = "http")]
            admin: crate::admin::Admin::new(crate::admin::AdminState::new(events.clone())),
            opts: crate::Options::default(),
            stats: Default::default(),
            events,
            hooks: Default::default(),
            sweep: Default::default(),
            reclaim: Default::default(),
            intake: Default::default(),
            batches: Default::default(),
            preauth: Default::default(),
            clock: crate::clock::Clock::system(),
            #[cfg(feature = "cluster")]
            roaming: None,
        });
        #[allow(unused_variables)]
        let (stop_tx, stop) = watch::channel(false);
        let remote = stream.peer_addr().unwrap();
        let permit = Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap();
        // With the per-source count on, as a connection's task is then.
        let limits = crate::config::Limits {
            maximum_connections_per_ip: 1,
            ..Default::default()
        };
        let per_ip = PerIp::new(&limits).unwrap();
        let hold = per_ip.admit(remote.ip(), 0).unwrap().unwrap();
        let slot = Slot::Counted(Box::new((permit, hold)));
        assert_eq!(
            std::mem::size_of::<Slot>(),
            std::mem::size_of::<OwnedSemaphorePermit>()
        );
        let accepted = Accepted {
            stream,
            conn: ConnId(1),
            remote,
            shared,
            #[cfg(any(feature = "tls", feature = "ws", feature = "http"))]
            kind: Arc::new(Kind::Tcp),
            #[cfg(any(feature = "tls", feature = "ws", feature = "http"))]
            stop,
        };
        let task = supervise(Box::new((accepted, slot)), |a| {
            serve_connection(a.stream, a.conn, a.shared, Peer::at(a.remote))
        });
        let size = std::mem::size_of_val(&task);
        assert!(size <= 280, "a TCP connection's future is {size} bytes");
    }

    /// The size of a future `f` returns, without making one.
    #[cfg(any(feature = "tls", feature = "ws"))]
    fn future_size<A, F>(_: impl FnOnce(A) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// The tripwire for TLS and WebSocket connections: their task is sized
    /// by the largest state of `layered`, for the connection's whole life.
    /// Serving a WSS stream needs about 1.8 KiB (release build); a
    /// handshake future left inline (the WebSocket upgrade's) made it
    /// 22 KiB, most of an idle TLS connection's cost (issue 20).
    #[cfg(any(feature = "tls", feature = "ws"))]
    #[test]
    fn a_layered_connection_task_holds_no_handshake() {
        let size = future_size(|t: Box<(Accepted, Slot)>| supervise(t, layered));
        // Debug builds lay futures out less tightly than release ones.
        let bound = if cfg!(debug_assertions) {
            6 * 1024
        } else {
            3 * 1024
        };
        assert!(
            size <= bound,
            "a TLS/WebSocket connection's future is {size} bytes"
        );
    }
}
