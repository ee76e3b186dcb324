//! The connection driver: reads frames from any byte stream, feeds the
//! broker core, and writes what the core queues in the connection's
//! [`Outbox`], coalescing everything queued into one write; one task per
//! connection (see [`Duplex`] for the socket side).
//!
//! Transport-agnostic: TCP, TLS and WebSocket streams all come through
//! [`serve_connection`].
//!
//! The protocol rules a client's packets pass (CONNECT admission,
//! authentication, which hooks run, topic aliases) are the ingress's
//! ([`crate::ingress`]); this drives them: it reads and writes, awaits the
//! hooks, and keeps the network's limits (connect and packet read
//! timeouts, the bytes buffered before CONNACK).

use super::duplex::{Duplex, OverBudget, Step};
use super::shared::Shared;
use crate::broker::{effective_keep_alive, CloseReason, ConnId, Event, Outbox, Share};
use crate::codec::{encode, DecodeError, Packet, ProtocolVersion, ReasonCode};
use crate::escape::Escaped;
use crate::hooks::{Hooks, PublishVerdict};
use crate::ingress::admit::{self, Admission, Admitted, Malformed, Next};
pub(crate) use crate::ingress::admit::{TransportClientId, TransportUser};
use crate::ingress::{Ask, Inbound, Ingress, ToCore};
use bytes::BytesMut;
use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc::error::TrySendError;

/// What the listener learned about a connection before MQTT started.
#[derive(Debug, Default)]
pub(crate) struct Peer {
    /// The user name the transport established.
    pub username: TransportUser,
    /// The client id the transport established.
    pub client_id: TransportClientId,
    /// The peer's address.
    pub remote_addr: Option<SocketAddr>,
    /// Set when the CONNECT exchange admits the client: a transport that
    /// meters what it reads before that ([`super::metered::Metered`])
    /// stops then.
    pub admitted: Option<Arc<std::sync::atomic::AtomicBool>>,
    /// Set when a new CRL revokes the client's TLS certificate (see
    /// `net::crl`).
    pub revoked: Option<Arc<std::sync::atomic::AtomicBool>>,
    /// The subject of the client's TLS certificate, for the log line that
    /// says who connected; dropped once it is written.
    pub certificate: Option<Box<str>>,
}

impl Peer {
    /// A peer known only by its address.
    pub(crate) fn at(remote: SocketAddr) -> Self {
        Peer {
            username: TransportUser::FromConnect,
            client_id: TransportClientId::FromConnect,
            remote_addr: Some(remote),
            admitted: None,
            revoked: None,
            certificate: None,
        }
    }
}

/// What a connection holds from CONNECT to its end, beside its stream.
struct Live {
    outbox: Arc<Outbox>,
    /// The client's protocol state (see [`crate::ingress`]).
    ingress: Ingress,
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
    /// Nothing written for `limits.write_timeout`: the client does not read.
    WriteTimeout,
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
                    Step::WriteTimeout => {
                        crate::stats::add(&shared.stats.write_timeouts, 1);
                        tracing::debug!(conn = conn.0,
                            client_id = %Escaped(&live.ingress.client().client_id),
                            write_timeout = ?shared.opts.limits.write_timeout,
                            "nothing written within the write timeout: the client does not read");
                        break Ending::WriteTimeout;
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
/// when the connection ends here (any answer was already written). The
/// rules are the ingress's ([`Admission`]); this reads, writes, awaits
/// the hooks and keeps the time and byte limits.
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
    let hooks = &shared.hooks;
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
    let connect = match first {
        Ok(Ok(Step::Packet(Packet::Connect(c)))) => c,
        Ok(Err(OverBudget)) => {
            crate::stats::add(&shared.stats.unauthenticated_refused, 1);
            tracing::debug!(
                conn = conn.0,
                "connections before CONNACK hold maximum_unauthenticated_bytes; refused"
            );
            return None;
        }
        Ok(Ok(Step::Malformed(e))) => match admit::malformed_connect(e) {
            Malformed::TooLarge => {
                // Refused from its fixed header, before its body is
                // buffered.
                crate::stats::add(&shared.stats.connect_too_large, 1);
                if let DecodeError::PacketTooLarge { size, max } = e {
                    tracing::debug!(
                        conn = conn.0,
                        size,
                        max,
                        "CONNECT larger than maximum_connect_size; refused"
                    );
                }
                let level =
                    tokio::time::timeout(opts.limits.connect_timeout, io.connect_level()).await;
                if let Some(version) = admit::too_large(level.ok().flatten()) {
                    let refusal = admit::refusal(ReasonCode::PacketTooLarge);
                    return refuse_connect(io, version, &refusal).await;
                }
                return None;
            }
            Malformed::Refuse(version, reason) => {
                return refuse_connect(io, version, &admit::refusal(reason)).await;
            }
            Malformed::Close => {
                tracing::debug!(conn = conn.0, error = %e, "bad CONNECT");
                return None;
            }
        },
        _ => return None, // timeout, I/O error, EOF, or not a CONNECT
    };

    let (mut admission, mut next) = Admission::start(
        connect,
        peer.username,
        peer.client_id,
        peer.remote_addr,
        peer.certificate,
        hooks,
        conn.0,
    );
    let version = admission.version();
    loop {
        next = match next {
            Next::EnhancedAuth(data) => {
                let step = hooks
                    .enhanced_auth(admission.client(), admission.auth_method(), data.as_deref())
                    .await;
                admission.enhanced_auth(step)
            }
            Next::Challenge(auth) => {
                let mut out = BytesMut::new();
                if encode(&auth, version, &mut out).is_err() || io.write_now(&out).await.is_err() {
                    return None;
                }
                let answer = tokio::time::timeout(
                    opts.limits.connect_timeout,
                    io.read_packet(&shared.stats, &mut charge),
                )
                .await;
                match answer {
                    Ok(Err(OverBudget)) => {
                        crate::stats::add(&shared.stats.unauthenticated_refused, 1);
                        admission.refuse(ReasonCode::ServerBusy)
                    }
                    Ok(Ok(Step::Malformed(DecodeError::PacketTooLarge { .. }))) => {
                        crate::stats::add(&shared.stats.connect_too_large, 1);
                        admission.refuse(ReasonCode::PacketTooLarge)
                    }
                    Ok(Ok(Step::Packet(p))) => admission.auth_answer(Some(p)),
                    _ => admission.auth_answer(None),
                }
            }
            Next::Authenticate => {
                let (client, connect, enhanced) = admission.connect_mut();
                let verdict = hooks.connect(client, connect, enhanced).await;
                admission.authenticated(verdict)
            }
            Next::CheckWill => {
                let allowed = hooks
                    .can_publish(admission.client(), admission.will_topic())
                    .await;
                admission.will_checked(allowed)
            }
            Next::Refuse(refusal) => {
                if let Packet::ConnAck(ack) = &refusal {
                    use ReasonCode::{
                        BadAuthenticationMethod, BadUserNameOrPassword, NotAuthorized,
                    };
                    if matches!(
                        ack.reason,
                        NotAuthorized | BadUserNameOrPassword | BadAuthenticationMethod
                    ) {
                        crate::stats::add(&shared.stats.auth_refused, 1);
                    }
                }
                return refuse_connect(io, version, &refusal).await;
            }
            Next::Admitted => break,
        };
    }
    let Admitted {
        connect,
        client,
        enhanced_auth,
        id_assigned,
        ingress,
    } = admission.admitted(opts);
    let (keep_alive, _) = effective_keep_alive(opts, version, connect.keep_alive);
    io.connected(
        version,
        connect.properties.topic_alias_maximum.unwrap_or(0),
        &opts.limits,
    );
    let outbox = Arc::new(Outbox::new(version, shared.clock.mono_ms()));
    // Who it is, in full: the id it got (assigned by the broker or taken
    // from its certificate), the user it authenticated as, and the
    // certificate it presented.
    tracing::info!(conn = conn.0, client_id = %Escaped(&connect.client_id), id_assigned,
        username = connect.username.as_deref().map(|u| tracing::field::display(Escaped(u))),
        certificate = client.certificate.as_deref().map(|c| tracing::field::display(Escaped(c))),
        remote = client.remote_addr.map(tracing::field::display),
        ?version, keep_alive, clean_start = connect.clean_start, "client connected");
    // In a cluster the session is claimed first: taken from the node that
    // had it, with what it is owed, before the CONNECT resumes it here.
    #[cfg(feature = "cluster")]
    if let (Some(roaming), false) = (&shared.roaming, connect.client_id.is_empty()) {
        // Boxed: the connection's task stays small (see the listener's
        // size test); a CONNECT is rare.
        let claim = Box::pin(roaming.claim(&connect.client_id, connect.clean_start));
        match claim.await {
            Ok(None) => {}
            Ok(Some(adopt)) => shared.events.send(Event::Adopt(adopt)).await.ok()?,
            Err(e) => {
                tracing::warn!(target: crate::REFUSAL, conn = conn.0,
                    client_id = %Escaped(&connect.client_id), error = %e,
                    "cluster: cannot claim the session; CONNECT refused (server unavailable)");
                let refusal = Packet::ConnAck(crate::codec::ConnAck {
                    session_present: false,
                    reason: ReasonCode::ServerUnavailable,
                    properties: Default::default(),
                });
                return refuse_connect(io, version, &refusal).await;
            }
        }
    }
    let event = Event::Connect {
        conn,
        outbox: outbox.clone(),
        connect,
        client,
        enhanced_auth,
        id_assigned,
    };
    shared.events.send(event).await.ok()?;
    // A new CRL that revoked the certificate before the core knew this
    // connection had nothing to close: closed now, after the CONNACK.
    // Looked at after the CONNECT went to the core, so a CRL that comes
    // later finds the connection there.
    let revoked = peer.revoked.as_ref();
    if revoked.is_some_and(|r| r.load(std::sync::atomic::Ordering::SeqCst)) {
        let closed = Event::Closed {
            conn,
            reason: CloseReason::Revoked,
        };
        shared.events.send(closed).await.ok()?;
    }
    if let Some(admitted) = &peer_admitted {
        admitted.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    Some(Live { outbox, ingress })
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
        Routed::Hooks(ask) => {
            return Dispatched::Wait(Box::pin(async move {
                match with_hooks(ask, live, conn, shared).await {
                    Ok(Some(event)) => {
                        let share = shared.intake.take(event.publish_bytes()).await;
                        send(shared, event.holding(share), false).await
                    }
                    Ok(None) => Ok(()),
                    Err(reason) => Err(Ending::Close(reason)),
                }
            }))
        }
    };
    let event = match shared.intake.try_take(event.publish_bytes()) {
        Some(share) => event.holding(share),
        // Too many PUBLISH bytes wait for the core: wait for some to go.
        None => {
            return Dispatched::Wait(Box::pin(async move {
                let share = shared.intake.take(event.publish_bytes()).await;
                send(shared, event.holding(share), last).await
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
    let client = live.ingress.client();
    let why = match &ending {
        Ending::Disconnected => "DISCONNECT from the client".to_string(),
        Ending::ClosedByBroker => "closed by the broker".to_string(),
        Ending::BrokerStopped => "broker stopped".to_string(),
        Ending::Stalled => "packet not completed within the packet read timeout".to_string(),
        Ending::WriteTimeout => "nothing written within the write timeout".to_string(),
        Ending::Close(CloseReason::Lost) => "connection lost".to_string(),
        Ending::Close(CloseReason::ProtocolError(code)) => format!("protocol error ({code:?})"),
        Ending::Close(CloseReason::Malformed(e)) => format!("malformed packet: {e}"),
        Ending::Close(CloseReason::Revoked) => "client certificate revoked".to_string(),
    };
    let (reason, writer_done) = match ending {
        Ending::Close(reason) => (Some(reason), false),
        // The client is too slow, as with the keep-alive: 0x8D is the
        // reason the spec has for a client that failed to send in time.
        Ending::Stalled => (
            Some(CloseReason::ProtocolError(ReasonCode::KeepAliveTimeout)),
            false,
        ),
        // As lost: a DISCONNECT would wait behind what the client does
        // not read, and the writer cannot finish; its will goes out.
        Ending::WriteTimeout => (Some(CloseReason::Lost), false),
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

/// Answers a CONNECT with a refusal (a CONNACK) and closes.
async fn refuse_connect<S: AsyncRead + AsyncWrite + Unpin, T>(
    io: &mut Duplex<S>,
    version: ProtocolVersion,
    refusal: &Packet,
) -> Option<T> {
    let mut out = BytesMut::new();
    if encode(refusal, version, &mut out).is_ok() {
        let _ = io.write_now(&out).await;
    }
    io.shutdown().await;
    None
}

/// Most packets in one [`Event::Packets`]. The core's queue is bounded in
/// events, so this also bounds how many packets a full queue holds (256
/// events of 16); their PUBLISH payloads are bounded by the intake budget
/// ([`crate::link::intake`]).
const MAX_BATCH: usize = 16;

/// Whether the next packet already read may join a batch
/// ([`Ingress::batchable`]).
fn next_batchable<S>(io: &Duplex<S>, hooks: &Hooks) -> bool
where
    S: AsyncRead + AsyncWrite + Send + Unpin,
{
    io.next_type().is_some_and(|t| Ingress::batchable(t, hooks))
}

/// Gathers `first` and the packets that follow it in what was already read
/// into one event, while they are of the kinds [`Ingress::batchable`]
/// names and reads are not paused. Returns what to hand to the core, and
/// how the connection ends right after it if a gathered packet ended it
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
    if !next_batchable(io, &shared.hooks) {
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
        && next_batchable(io, &shared.hooks)
        && !live.outbox.reads_paused()
        && !live.outbox.answers_full()
    {
        match io.buffered(&shared.stats) {
            // Of what the ingress does, the kinds it calls batchable need
            // only a PUBLISH's topic alias resolved: done in place, as a
            // packet is a few hundred bytes to move and every move is a
            // copy.
            Some(Step::Packet(p)) => {
                packets.push(p);
                if let Some(Packet::Publish(publish)) = packets.last_mut() {
                    if let Err(reason) = live.ingress.resolve_alias(publish, &shared.stats) {
                        packets.pop();
                        ending = Some(Ending::Close(CloseReason::ProtocolError(reason)));
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
    Hooks(Ask),
    /// It ends the connection.
    Close(CloseReason),
}

/// The synchronous part of handling a packet: what the ingress says, as
/// an event for the core.
fn route(packet: Packet, live: &mut Live, conn: ConnId, shared: &Shared) -> Routed {
    match live.ingress.packet(packet, &shared.hooks, &shared.stats) {
        Inbound::Core(to_core) => Routed::Event(event(conn, to_core)),
        Inbound::Last(packet) => Routed::Last(Event::Packet { conn, packet }),
        Inbound::Ask(ask) => Routed::Hooks(ask),
        Inbound::Close(reason) => Routed::Close(CloseReason::ProtocolError(reason)),
    }
}

/// The event that hands the core what the ingress passed on.
fn event(conn: ConnId, to_core: ToCore) -> Event {
    match to_core {
        ToCore::Publish(publish, verdict) => Event::Publish {
            conn,
            publish,
            verdict,
            held: Share::default(),
        },
        ToCore::Subscribe(subscribe) => Event::Subscribe { conn, subscribe },
        ToCore::Packet(packet) => Event::Packet { conn, packet },
    }
}

/// Awaits the hook an [`Ask`] names: the event for the core, `None` if
/// the packet was answered here, or the reason to close.
async fn with_hooks(
    ask: Ask,
    live: &Live,
    conn: ConnId,
    shared: &Shared,
) -> Result<Option<Event>, CloseReason> {
    let hooks = &shared.hooks;
    let ingress = &live.ingress;
    let client = &**ingress.client();
    let to_core = match ask {
        Ask::ReAuth(data) => {
            let step = hooks
                .enhanced_auth(client, ingress.auth_method(), data.as_deref())
                .await;
            let reply = ingress
                .reauthenticated(step)
                .map_err(CloseReason::ProtocolError)?;
            live.outbox.push(reply);
            return Ok(None);
        }
        Ask::Publish(mut publish) => {
            let verdict = hooks.publish(client, &mut publish).await;
            if verdict == PublishVerdict::Refuse(ReasonCode::NotAuthorized) {
                crate::stats::add(&shared.stats.acl_denied, 1);
            }
            ToCore::Publish(publish, verdict)
        }
        Ask::Subscribe(mut subscribe) => {
            hooks.subscribe(client, &mut subscribe.filters).await;
            let denied = subscribe
                .filters
                .iter()
                .filter(|(_, _, v)| *v == Err(ReasonCode::NotAuthorized))
                .count();
            if denied > 0 {
                crate::stats::add(&shared.stats.acl_denied, denied as u64);
            }
            ToCore::Subscribe(subscribe)
        }
    };
    Ok(Some(event(conn, to_core)))
}
