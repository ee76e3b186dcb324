//! The connection driver: reads frames from any byte stream, feeds the
//! broker core, and writes what the core queues in the connection's
//! [`Outbox`], coalescing everything queued into one write; one task per
//! connection (see [`Duplex`] for the socket side).
//!
//! Transport-agnostic: TCP, TLS and WebSocket streams all come through
//! [`serve_connection`].

use super::alias::InboundAliases;
use super::duplex::{Duplex, OverBudget, Step};
use super::preauth::PreAuth;
use super::sweep::IdleSweep;
use crate::broker::{effective_keep_alive, CheckedSubscribe, CloseReason, ConnId, Event, Share};
use crate::codec::{
    encode, Auth, AuthProperties, ByteStr, ConnAck, DecodeError, Packet, ProtocolVersion,
    ReasonCode, Subscribe,
};
use crate::config::Options;
use crate::escape::Escaped;
use crate::hooks::{AuthStep, Client, Hooks, PublishVerdict};
use crate::link::intake::Intake;
use crate::link::outbox::Outbox;
use crate::stats::Stats;
use bytes::BytesMut;
use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc::{self, error::TrySendError};

/// What every connection task shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub opts: Options,
    pub stats: Arc<Stats>,
    pub events: mpsc::Sender<Event>,
    pub hooks: Hooks,
    /// Ticked by the listeners' task (see [`IdleSweep`]).
    pub sweep: IdleSweep,
    /// Written messages on their way back to the core.
    pub reclaim: Arc<crate::link::reclaim::Reclaim>,
    /// Bounds the PUBLISH bytes waiting for the core.
    pub intake: Arc<Intake>,
    /// Batch vectors the core emptied.
    pub batches: Arc<crate::link::reclaim::Batches>,
    /// Bytes buffered by connections before CONNACK.
    pub preauth: PreAuth,
    /// The core's clock: connections stamp when they start waiting for
    /// their client with its monotonic reading, which the core's keep-alive
    /// check is given too.
    pub clock: crate::clock::Clock,
}

/// The user name a transport established, if it is to establish one.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
#[cfg_attr(not(feature = "tls"), allow(dead_code))] // Only TLS names users.
pub(crate) enum TransportUser {
    /// The transport says nothing: the CONNECT's user name stands.
    #[default]
    FromConnect,
    /// A TLS client certificate's CN or SAN, when the listener is told to
    /// use it. It replaces the CONNECT's user name, so a client cannot
    /// claim someone else's.
    Named(String),
    /// The listener takes the user name from the client certificate, and
    /// the certificate presented has none. The connection is refused:
    /// falling back to the CONNECT's user name would let any certificate
    /// the CA signed claim any user.
    Missing,
}

/// What the listener learned about a connection before MQTT started.
#[derive(Debug, Default)]
pub(crate) struct Peer {
    /// The identity the transport established.
    pub username: TransportUser,
    /// The peer's address.
    pub remote_addr: Option<SocketAddr>,
    /// Set when the CONNECT exchange admits the client: a transport that
    /// meters what it reads before that ([`super::preauth::Metered`])
    /// stops then.
    pub admitted: Option<Arc<std::sync::atomic::AtomicBool>>,
}

impl Peer {
    /// A peer known only by its address.
    pub fn at(remote: SocketAddr) -> Self {
        Peer {
            username: TransportUser::FromConnect,
            remote_addr: Some(remote),
            admitted: None,
        }
    }
}

/// What a connection holds from CONNECT to its end, beside its stream.
struct Live {
    outbox: Arc<Outbox>,
    client: Arc<Client>,
    /// The method, when the client authenticated with enhanced
    /// authentication (it may re-authenticate). Boxed: rare, and it would
    /// take room in every connection's future.
    enhanced: Option<Box<ByteStr>>,
    inbound_aliases: InboundAliases,
}

/// How the serving loop ended.
enum Ending {
    /// The connection ends it, for this reason (the core is told).
    Close(CloseReason),
    /// The client sent DISCONNECT.
    Disconnected,
    /// The core closed the outbox and everything in it was written.
    ClosedByBroker,
    /// The core has stopped.
    BrokerStopped,
    /// A packet was not completed in time (`limits.packet_read_timeout`).
    Stalled,
}

/// Runs one connection to its end, in the task that awaits it: reading,
/// writing and the keep-alive share this one future.
///
/// The future stays small for as long as the connection lives: the CONNECT
/// exchange and the closing steps run once, in futures of their own that
/// are boxed (allocated only while they run), and so do the rarer packets'
/// hook calls. Idle, a connection holds its stream and a few handles: no
/// buffers, no timer (the core watches the keep-alive). Not an `async fn`:
/// its arguments would stay in the future for its whole life, beside the
/// stream they were moved into.
pub(crate) fn serve_connection<S>(
    stream: S,
    conn: ConnId,
    shared: Arc<Shared>,
    peer: Peer,
) -> impl Future<Output = ()> + Send
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let limits = &shared.opts.limits;
    let io = Duplex::new(
        stream,
        limits.maximum_connect_size.min(limits.maximum_packet_size),
    );
    let admitting = Box::pin(admit(io, conn, shared.clone(), peer));
    async move {
        let Some((mut io, mut live)) = admitting.await else {
            return;
        };
        // The connection's life after CONNECT: packets in, the outbox out,
        // until either side ends it. Written out here rather than called:
        // a callee's future would hold its own references to all of this.
        let ending = loop {
            // A block, so that the packet and its event (a few hundred
            // bytes) are dead before the next await and take no room in
            // this future: across it lives only a boxed future, if anything.
            let wait = {
                let step = poll_fn(|cx| io.poll_step(cx, &live.outbox, &shared)).await;
                let packet = match step {
                    Step::Packet(p) => p,
                    // The core closed the outbox and the writer finished:
                    // stop reading.
                    Step::Finished => break Ending::ClosedByBroker,
                    Step::Lost => break Ending::Close(CloseReason::Lost),
                    Step::Stalled => {
                        crate::stats::add(&shared.stats.packet_read_timeouts, 1);
                        break Ending::Stalled;
                    }
                    Step::Malformed(e) => {
                        tracing::debug!(conn = conn.0, error = %e, "protocol error");
                        break Ending::Close(CloseReason::Malformed(e));
                    }
                };
                // Even PINGREQ goes through the core: only the core's order
                // puts the CONNACK first ([MQTT-3.2.0-1]) when a client
                // pipelines packets behind its CONNECT.
                let mut routed = route(packet, &mut live, conn, &shared);
                let mut then = None;
                if let Routed::Event(first) = routed {
                    (routed, then) = gather(first, &mut io, &mut live, conn, &shared);
                }
                let dispatched = match (dispatch(routed, &live, conn, &shared), then) {
                    (d, None) => d,
                    // A gathered packet ended the connection: after the
                    // packets before it are handed over.
                    (Dispatched::Sent, Some(ending)) => Dispatched::End(ending),
                    (Dispatched::Wait(wait), Some(ending)) => {
                        Dispatched::Wait(Box::pin(async move {
                            wait.await?;
                            Err(ending)
                        }))
                    }
                    (Dispatched::End(ending), Some(_)) => Dispatched::End(ending),
                };
                match dispatched {
                    Dispatched::Sent => continue,
                    Dispatched::Wait(wait) => wait,
                    Dispatched::End(ending) => break ending,
                }
            };
            if let Err(ending) = io.while_writing(&live.outbox, &shared, wait).await {
                break ending;
            }
        };
        Box::pin(close(io, live, conn, shared, ending)).await;
    }
}

/// [`connect_exchange`], owning the stream (its future is boxed).
async fn admit<S>(
    mut io: Duplex<S>,
    conn: ConnId,
    shared: Arc<Shared>,
    peer: Peer,
) -> Option<(Duplex<S>, Live)>
where
    S: AsyncRead + AsyncWrite + Send + Unpin,
{
    let live = connect_exchange(&mut io, conn, &shared, peer).await?;
    Some((io, live))
}

/// CONNECT, authentication, and the session's start in the core. `None`
/// when the connection ends here (any answer was already written).
async fn connect_exchange<S>(
    io: &mut Duplex<S>,
    conn: ConnId,
    shared: &Shared,
    peer: Peer,
) -> Option<Live>
where
    S: AsyncRead + AsyncWrite + Send + Unpin,
{
    let opts = &shared.opts;
    let peer_admitted = peer.admitted.clone();
    // What this connection buffers until the exchange ends, admitted or
    // not, is charged to the budget of unauthenticated bytes.
    let mut charge = shared
        .preauth
        .charge(opts.limits.maximum_unauthenticated_bytes);
    // CONNECT must arrive within the connect timeout.
    let first = tokio::time::timeout(
        opts.limits.connect_timeout,
        io.read_packet(&shared.stats, &mut charge),
    )
    .await;
    let mut connect = match first {
        Ok(Ok(Step::Packet(Packet::Connect(c)))) => c,
        Ok(Err(OverBudget)) => {
            crate::stats::add(&shared.stats.unauthenticated_refused, 1);
            tracing::debug!(
                conn = conn.0,
                "connections before CONNACK hold maximum_unauthenticated_bytes; refused"
            );
            return None;
        }
        Ok(Ok(Step::Malformed(DecodeError::PacketTooLarge { size, max }))) => {
            // Too large for a CONNECT: refused from its fixed header,
            // before its body is buffered. A 5.0 client is told why
            // (CONNACK 0x95); 3.x has no return code for it: closed.
            crate::stats::add(&shared.stats.connect_too_large, 1);
            tracing::debug!(
                conn = conn.0,
                size,
                max,
                "CONNECT larger than maximum_connect_size; refused"
            );
            let level = tokio::time::timeout(opts.limits.connect_timeout, io.connect_level()).await;
            if let Ok(Some(5)) = level {
                return refuse_connect(io, ProtocolVersion::V5, ReasonCode::PacketTooLarge).await;
            }
            return None;
        }
        Ok(Ok(Step::Malformed(DecodeError::UnsupportedProtocolVersion(level)))) => {
            // Answer in the form the client can read: 5.0 gets 0x84, anything
            // else the 3.1.1 return code 1 ([MQTT-3.1.2-2]).
            let reply: &[u8] = if level == 5 {
                &[0x20, 3, 0, 0x84, 0]
            } else {
                &[0x20, 2, 0, 1]
            };
            let _ = io.write_now(reply).await;
            io.shutdown().await;
            return None;
        }
        Ok(Ok(Step::Malformed(e))) => {
            tracing::debug!(conn = conn.0, error = %e, "bad CONNECT");
            return None;
        }
        _ => return None, // timeout, I/O error, EOF, or not a CONNECT
    };

    let version = connect.protocol;
    match peer.username {
        TransportUser::FromConnect => {}
        TransportUser::Named(username) => connect.username = Some(username.into()),
        TransportUser::Missing => {
            // Refused before any hook sees the CONNECT's user name. 0x87
            // (3.x: 5) rather than 0x86: the CONNECT's credentials are not
            // what is wrong, the certificate names nobody. Answered in
            // MQTT rather than by failing the TLS handshake, so the client
            // learns why and the log names its client id.
            tracing::warn!(conn = conn.0, client_id = %Escaped(&connect.client_id),
                remote = peer.remote_addr.map(tracing::field::display),
                "client certificate has no user name (CN or SAN) and the listener takes it from there; connection refused");
            return refuse_connect(io, version, ReasonCode::NotAuthorized).await;
        }
    }
    let mut client = Client {
        client_id: connect.client_id.clone(),
        username: connect.username.clone(),
        remote_addr: peer.remote_addr,
        protocol: version,
        inline: false,
    };
    // Enhanced authentication (5.0 section 4.12): AUTH packets go back and
    // forth here, before the session exists.
    let mut enhanced: Option<ByteStr> = None;
    if let (Some(method), true) = (
        connect.properties.authentication_method.clone(),
        version.is_v5(),
    ) {
        let mut data = connect.properties.authentication_data.clone();
        loop {
            match shared
                .hooks
                .enhanced_auth(&client, &method, data.as_deref())
                .await
            {
                AuthStep::Success(answer) => {
                    connect.properties.authentication_data = answer;
                    enhanced = Some(method);
                    break;
                }
                AuthStep::Continue(challenge) => {
                    let auth =
                        auth_packet(ReasonCode::ContinueAuthentication, &method, Some(challenge));
                    let mut out = BytesMut::new();
                    if encode(&auth, version, &mut out).is_err()
                        || io.write_now(&out).await.is_err()
                    {
                        return None;
                    }
                    let next = tokio::time::timeout(
                        opts.limits.connect_timeout,
                        io.read_packet(&shared.stats, &mut charge),
                    )
                    .await;
                    match next {
                        Ok(Err(OverBudget)) => {
                            crate::stats::add(&shared.stats.unauthenticated_refused, 1);
                            return refuse_connect(io, version, ReasonCode::ServerBusy).await;
                        }
                        Ok(Ok(Step::Malformed(DecodeError::PacketTooLarge { .. }))) => {
                            crate::stats::add(&shared.stats.connect_too_large, 1);
                            return refuse_connect(io, version, ReasonCode::PacketTooLarge).await;
                        }
                        Ok(Ok(Step::Packet(Packet::Auth(a))))
                            if a.reason == ReasonCode::ContinueAuthentication
                                && a.properties.authentication_method.as_ref() == Some(&method) =>
                        {
                            data = a.properties.authentication_data;
                        }
                        // Anything else during the exchange is a protocol error.
                        _ => return refuse_connect(io, version, ReasonCode::ProtocolError).await,
                    }
                }
                AuthStep::Fail(reason) => return refuse_connect(io, version, reason).await,
                // No hook offers the method ([MQTT-4.12.0-1]).
                AuthStep::Unsupported => {
                    return refuse_connect(io, version, ReasonCode::BadAuthenticationMethod).await
                }
            }
        }
    }
    if !shared.hooks.auth.is_empty() {
        // May do I/O: it runs here, in this connection's task, so a slow
        // check holds up only this client.
        if let Err(reason) = shared
            .hooks
            .connect(&client, &mut connect, enhanced.is_some())
            .await
        {
            // The user name helps an operator; the password is never logged.
            tracing::warn!(conn = conn.0, client_id = %Escaped(&client.client_id),
                username = client.username.as_deref().unwrap_or(""),
                remote = client.remote_addr.map(tracing::field::display), ?reason, "authentication failed; connection refused");
            return refuse_connect(io, version, reason).await;
        }
    }
    // The id and user name live as long as the session: copied out, they
    // do not keep the read that brought the CONNECT allocated.
    connect.client_id = connect.client_id.detach();
    connect.username = connect.username.as_ref().map(ByteStr::detach);
    client.client_id = connect.client_id.clone();
    client.username = connect.username.clone();
    if let Some(will) = &connect.will {
        // A will is a PUBLISH the client makes in advance: the publish ACL
        // judges it now, where a hook may do I/O, so that a refused will
        // is refused to the client rather than dropped silently later. It
        // is judged again when it fires (see `Broker::publish_will`). An
        // empty client id is judged as empty: the core assigns the id
        // after this.
        if !shared.hooks.can_publish(&client, &will.topic).await {
            tracing::warn!(conn = conn.0, client_id = %Escaped(&client.client_id),
                username = client.username.as_deref().unwrap_or(""),
                topic = %Escaped(&will.topic), "will refused by the publish ACL; connection refused");
            return refuse_connect(io, version, ReasonCode::NotAuthorized).await;
        }
    }
    let client = Arc::new(client);
    let (keep_alive, _) = effective_keep_alive(opts, version, connect.keep_alive);
    let alias_bytes = opts.limits.maximum_topic_alias_bytes;
    let inbound_aliases = InboundAliases::new(
        if version.is_v5() {
            opts.capabilities.topic_alias_maximum
        } else {
            0
        },
        alias_bytes,
    );
    io.connected(
        version,
        connect.properties.topic_alias_maximum.unwrap_or(0),
        &opts.limits,
    );
    let outbox = Arc::new(Outbox::new(version, shared.clock.mono_ms()));
    tracing::info!(conn = conn.0, client_id = %Escaped(&connect.client_id), remote = client.remote_addr.map(tracing::field::display),
        ?version, keep_alive, clean_start = connect.clean_start, "client connected");
    let event = Event::Connect {
        conn,
        outbox: outbox.clone(),
        connect,
        client: client.clone(),
        enhanced_auth: enhanced.is_some(),
    };
    shared.events.send(event).await.ok()?;
    if let Some(admitted) = &peer_admitted {
        admitted.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    Some(Live {
        outbox,
        client,
        enhanced: enhanced.map(Box::new),
        inbound_aliases,
    })
}

/// After a packet: go on, or end.
type Outcome = Result<(), Ending>;

/// A packet's way to the core.
enum Dispatched<'a> {
    /// Handed over at once; the connection goes on.
    Sent,
    /// The connection ends.
    End(Ending),
    /// Hooks, or room in the core's queue, must be waited for.
    Wait(Pin<Box<dyn Future<Output = Outcome> + Send + 'a>>),
}

fn dispatch<'a>(
    routed: Routed,
    live: &'a Live,
    conn: ConnId,
    shared: &'a Shared,
) -> Dispatched<'a> {
    let (event, last) = match routed {
        Routed::Close(reason) => return Dispatched::End(Ending::Close(reason)),
        Routed::Event(event) => (event, false),
        Routed::Last(event) => (event, true),
        Routed::Hooks(packet) => {
            return Dispatched::Wait(Box::pin(async move {
                match with_hooks(packet, live, conn, shared).await {
                    Ok(Some(event)) => send(shared, shared.intake.hold(event).await, false).await,
                    Ok(None) => Ok(()),
                    Err(reason) => Err(Ending::Close(reason)),
                }
            }))
        }
    };
    let event = match shared.intake.try_hold(event) {
        Ok(event) => event,
        // Too many PUBLISH bytes wait for the core: wait for some to go.
        Err(event) => {
            return Dispatched::Wait(Box::pin(async move {
                send(shared, shared.intake.hold(event).await, last).await
            }))
        }
    };
    match shared.events.try_send(event) {
        Ok(()) if last => Dispatched::End(Ending::Disconnected),
        Ok(()) => Dispatched::Sent,
        // The core is busy: wait for room.
        Err(TrySendError::Full(event)) => Dispatched::Wait(Box::pin(send(shared, event, last))),
        Err(TrySendError::Closed(_)) => Dispatched::End(Ending::BrokerStopped),
    }
}

/// Hands an event to the core, waiting for room. `last`: the client's
/// DISCONNECT, after which the connection stops reading (the core still
/// answers, as an invalid DISCONNECT gets DISCONNECT 0x82
/// [MQTT-3.14.2-2], and then closes the outbox itself).
async fn send(shared: &Shared, event: Event, last: bool) -> Outcome {
    match shared.events.send(event).await {
        Ok(()) if last => Err(Ending::Disconnected),
        Ok(()) => Ok(()),
        Err(_) => Err(Ending::BrokerStopped),
    }
}

/// Logs the end, tells the core, lets the last packets out, and lingers.
async fn close<S>(mut io: Duplex<S>, live: Live, conn: ConnId, shared: Arc<Shared>, ending: Ending)
where
    S: AsyncRead + AsyncWrite + Send + Unpin,
{
    let client = &live.client;
    let why = match &ending {
        Ending::Disconnected => "DISCONNECT from the client".to_string(),
        Ending::ClosedByBroker => "closed by the broker".to_string(),
        Ending::BrokerStopped => "broker stopped".to_string(),
        Ending::Stalled => "packet not completed within the packet read timeout".to_string(),
        Ending::Close(CloseReason::Lost) => "connection lost".to_string(),
        Ending::Close(CloseReason::ProtocolError(code)) => format!("protocol error ({code:?})"),
        Ending::Close(CloseReason::Malformed(e)) => format!("malformed packet: {e}"),
    };
    let (reason, writer_done) = match ending {
        Ending::Close(reason) => (Some(reason), false),
        // The client is too slow, as with the keep-alive: 0x8D is the
        // reason the spec has for a client that failed to send in time.
        Ending::Stalled => (
            Some(CloseReason::ProtocolError(ReasonCode::KeepAliveTimeout)),
            false,
        ),
        Ending::ClosedByBroker => (None, true),
        Ending::Disconnected | Ending::BrokerStopped => (None, false),
    };
    tracing::info!(conn = conn.0, client_id = %Escaped(&client.client_id), reason = %why, "client disconnected");
    if let Some(reason) = reason {
        // The core sends the DISCONNECT (5.0): queued from here it could
        // overtake a CONNACK the core has not queued yet.
        let send = Box::pin(shared.events.send(Event::Closed { conn, reason }));
        let _ = io.while_writing(&live.outbox, &shared, send).await;
    }
    let peer_still_talking = !matches!(reason, Some(CloseReason::Lost));
    if !writer_done {
        // The core closes the outbox when it detaches the connection, after
        // queueing any final DISCONNECT; closing it from here first would
        // drop that. Give the writer a moment to flush, then close it
        // ourselves (the core is gone or never saw this connection).
        let flushed = io.finish_writing(&live.outbox, &shared);
        if tokio::time::timeout(Duration::from_secs(5), flushed)
            .await
            .is_err()
        {
            live.outbox.close();
            return;
        }
    }
    if peer_still_talking {
        // After the broker's last packet and FIN, read (and discard) what
        // the peer still sends, briefly. Closing a socket with unread data
        // makes the kernel answer with a reset, which can destroy the
        // DISCONNECT still waiting in the peer's receive buffer; a client
        // that keeps writing (acknowledgements in flight) must get to read
        // why it was disconnected.
        const LINGER: Duration = Duration::from_secs(1);
        const MAX_BYTES: usize = 1 << 20;
        let _ = tokio::time::timeout(LINGER, io.discard(MAX_BYTES)).await;
    }
}

/// Answers a CONNECT with a refusal and closes.
async fn refuse_connect<S: AsyncRead + AsyncWrite + Unpin, T>(
    io: &mut Duplex<S>,
    version: ProtocolVersion,
    reason: ReasonCode,
) -> Option<T> {
    let mut out = BytesMut::new();
    let refusal = Packet::ConnAck(ConnAck {
        session_present: false,
        reason,
        properties: Default::default(),
    });
    if encode(&refusal, version, &mut out).is_ok() {
        let _ = io.write_now(&out).await;
    }
    io.shutdown().await;
    None
}

fn auth_packet(reason: ReasonCode, method: &ByteStr, data: Option<bytes::Bytes>) -> Packet {
    Packet::Auth(Auth {
        reason,
        properties: AuthProperties {
            authentication_method: Some(method.clone()),
            authentication_data: data,
            ..Default::default()
        },
    })
}

/// Most packets in one [`Event::Packets`]. The core's queue is bounded in
/// events, so this also bounds how many packets a full queue holds (256
/// events of 16); their PUBLISH payloads are bounded by the intake budget
/// ([`crate::link::intake`]).
const MAX_BATCH: usize = 16;

/// Packet types gathered into one [`Event::Packets`]: those [`route`]
/// always turns into a plain event (PUBLISH only without hooks).
fn batchable(packet_type: u8, hooks: &Hooks) -> bool {
    match packet_type {
        3 => hooks.is_empty(), // PUBLISH
        4..=7 | 12 => true,    // PUBACK, PUBREC, PUBREL, PUBCOMP, PINGREQ
        _ => false,
    }
}

/// Gathers `first` and the packets that follow it in what was already read
/// into one event, while they are of the kinds [`batchable`] names and
/// reads are not paused. Returns what to hand to the core, and how the
/// connection ends right after it if a gathered packet ended it
/// (malformed, or a topic alias error).
fn gather<S>(
    first: Event,
    io: &mut Duplex<S>,
    live: &mut Live,
    conn: ConnId,
    shared: &Shared,
) -> (Routed, Option<Ending>)
where
    S: AsyncRead + AsyncWrite + Send + Unpin,
{
    if !io.next_type().is_some_and(|t| batchable(t, &shared.hooks)) {
        return (Routed::Event(first), None);
    }
    let first = match first {
        Event::Packet { packet, .. } => packet,
        Event::Publish {
            publish,
            verdict: PublishVerdict::Deliver,
            ..
        } => Packet::Publish(publish),
        other => return (Routed::Event(other), None),
    };
    let mut packets = shared.batches.take(MAX_BATCH);
    packets.push(first);
    let mut ending = None;
    while packets.len() < MAX_BATCH
        && io.next_type().is_some_and(|t| batchable(t, &shared.hooks))
        && !live.outbox.reads_paused()
    {
        match io.buffered(&shared.stats) {
            // Of what `route` does, the kinds `batchable` admits need only
            // a PUBLISH's topic alias resolved: done in place, as a packet
            // is a few hundred bytes to move and every move is a copy.
            Some(Step::Packet(p)) => {
                packets.push(p);
                if let Some(Packet::Publish(publish)) = packets.last_mut() {
                    if let Err(reason) = resolve_alias(publish, live, &shared.stats) {
                        packets.pop();
                        ending = Some(Ending::Close(reason));
                        break;
                    }
                }
            }
            Some(Step::Malformed(e)) => {
                tracing::debug!(conn = conn.0, error = %e, "protocol error");
                ending = Some(Ending::Close(CloseReason::Malformed(e)));
                break;
            }
            // Not read in full yet.
            _ => break,
        }
    }
    let held = Share::default();
    (
        Routed::Event(Event::Packets {
            conn,
            packets,
            held,
        }),
        ending,
    )
}

/// What to do with a packet from the client.
enum Routed {
    /// Hand it to the core.
    Event(Event),
    /// Hand it to the core, and read no more: the client's DISCONNECT.
    Last(Event),
    /// Hooks that may do I/O must see it first ([`with_hooks`]).
    Hooks(Packet),
    /// It ends the connection.
    Close(CloseReason),
}

/// The synchronous part of handling a packet: topic aliases, and what
/// needs no hook.
fn route(packet: Packet, live: &mut Live, conn: ConnId, shared: &Shared) -> Routed {
    let hooks = &shared.hooks;
    match packet {
        // Re-authentication, for a client that used enhanced
        // authentication at CONNECT (5.0 section 4.12.1).
        Packet::Auth(_) if live.enhanced.is_some() => Routed::Hooks(packet),
        Packet::Publish(mut publish) => {
            if let Err(reason) = resolve_alias(&mut publish, live, &shared.stats) {
                return Routed::Close(reason);
            }
            if hooks.is_empty() {
                Routed::Event(Event::Publish {
                    conn,
                    publish,
                    verdict: PublishVerdict::Deliver,
                    held: Share::default(),
                })
            } else {
                Routed::Hooks(Packet::Publish(publish))
            }
        }
        Packet::Subscribe(_) if !hooks.is_empty() => Routed::Hooks(packet),
        Packet::Unsubscribe(mut unsub) if hooks.has_events() => {
            hooks.each(|h| h.on_unsubscribe(&live.client, &mut unsub.filters));
            Routed::Event(Event::Packet {
                conn,
                packet: Packet::Unsubscribe(unsub),
            })
        }
        Packet::Disconnect(_) => Routed::Last(Event::Packet { conn, packet }),
        packet => Routed::Event(Event::Packet { conn, packet }),
    }
}

/// Resolves an inbound PUBLISH's topic alias (5.0 section 3.3.2.3.4).
fn resolve_alias(
    publish: &mut crate::codec::Publish,
    live: &mut Live,
    stats: &Stats,
) -> Result<(), CloseReason> {
    live.inbound_aliases.resolve(publish).map_err(|reason| {
        if reason == ReasonCode::QuotaExceeded {
            crate::stats::add(&stats.topic_alias_refused, 1);
        }
        CloseReason::ProtocolError(reason)
    })
}

/// Runs the hooks a packet needs: the event for the core, `None` if the
/// packet was answered here, or the reason to close.
async fn with_hooks(
    packet: Packet,
    live: &Live,
    conn: ConnId,
    shared: &Shared,
) -> Result<Option<Event>, CloseReason> {
    let hooks = &shared.hooks;
    let client = &*live.client;
    let event = match packet {
        Packet::Auth(a) => {
            let method = live.enhanced.as_deref().cloned().unwrap_or_default();
            let same_method = a.properties.authentication_method.as_ref() == Some(&method);
            let expected = matches!(
                a.reason,
                ReasonCode::ReAuthenticate | ReasonCode::ContinueAuthentication
            );
            if !same_method || !expected {
                return Err(CloseReason::ProtocolError(ReasonCode::ProtocolError));
            }
            let data = a.properties.authentication_data;
            let reply = match hooks.enhanced_auth(client, &method, data.as_deref()).await {
                AuthStep::Success(answer) => auth_packet(ReasonCode::Success, &method, answer),
                AuthStep::Continue(challenge) => {
                    auth_packet(ReasonCode::ContinueAuthentication, &method, Some(challenge))
                }
                AuthStep::Fail(code) => return Err(CloseReason::ProtocolError(code)),
                AuthStep::Unsupported => {
                    return Err(CloseReason::ProtocolError(
                        ReasonCode::BadAuthenticationMethod,
                    ))
                }
            };
            live.outbox.push(reply);
            return Ok(None);
        }
        Packet::Publish(mut publish) => {
            let verdict = hooks.publish(client, &mut publish).await;
            Event::Publish {
                conn,
                publish,
                verdict,
                held: Share::default(),
            }
        }
        Packet::Subscribe(sub) => Event::Subscribe {
            conn,
            subscribe: intercept_subscribe(hooks, client, sub).await,
        },
        packet => Event::Packet { conn, packet },
    };
    Ok(Some(event))
}

/// Runs the subscribe hooks: the filters as changed, with a verdict each.
async fn intercept_subscribe(hooks: &Hooks, client: &Client, sub: Subscribe) -> CheckedSubscribe {
    let mut filters: Vec<_> = sub
        .filters
        .into_iter()
        .map(|(f, o)| (f, o, Ok(())))
        .collect();
    hooks.subscribe(client, &mut filters).await;
    CheckedSubscribe {
        packet_id: sub.packet_id,
        filters,
        subscription_identifier: sub.subscription_identifier,
    }
}
