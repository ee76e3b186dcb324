//! The connection driver: reads frames from any byte stream, feeds the
//! broker core, and writes what the core queues in the connection's
//! [`Outbox`], coalescing everything queued into one write.
//!
//! Transport-agnostic: TCP, TLS and WebSocket streams all come through
//! [`serve_connection`].

use super::alias::{InboundAliases, OutboundAliases};
use crate::broker::{effective_keep_alive, CheckedSubscribe, CloseReason, ConnId, Event};
use crate::codec::{
    encode, Auth, AuthProperties, ByteStr, ConnAck, DecodeError, Decoder, Packet, ProtocolVersion,
    ReasonCode, Subscribe,
};
use crate::config::Options;
use crate::hooks::{AuthStep, Client, Hooks, PublishVerdict};
use crate::outbox::Outbox;
use crate::stats::{self, Stats};
use bytes::BytesMut;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

/// What every connection task shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub opts: Options,
    pub stats: Arc<Stats>,
    pub events: mpsc::Sender<Event>,
    pub hooks: Hooks,
}

/// What the listener learned about a connection before MQTT started.
#[derive(Debug, Default)]
pub(crate) struct Peer {
    /// The identity the transport established (a TLS client certificate's
    /// CN or SAN, when the listener is told to use it). It replaces the
    /// CONNECT's user name, so a client cannot claim someone else's.
    pub username: Option<String>,
    /// The peer's address.
    pub remote_addr: Option<SocketAddr>,
}

impl Peer {
    /// A peer known only by its address.
    pub fn at(remote: SocketAddr) -> Self {
        Peer {
            username: None,
            remote_addr: Some(remote),
        }
    }
}

const READ_CHUNK: usize = 4096;

/// The longest one backpressure pause holds a publisher's reads.
const PAUSE_BOUND: Duration = Duration::from_millis(500);

/// Reads until one packet is decoded. `Ok(None)` is a clean end of stream.
async fn read_packet<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
    decoder: &mut Decoder,
    stats: &Stats,
) -> Result<Option<Packet>, ReadError> {
    loop {
        if let Some(p) = decoder.decode(buf).map_err(ReadError::Decode)? {
            stats::add(&stats.packets_received, 1);
            return Ok(Some(p));
        }
        buf.reserve(READ_CHUNK);
        let n = rd.read_buf(buf).await.map_err(|_| ReadError::Io)?;
        if n == 0 {
            return Ok(None);
        }
        stats::add(&stats.bytes_received, n as u64);
    }
}

#[derive(Debug)]
enum ReadError {
    Io,
    Decode(DecodeError),
}

/// Runs one connection to its end.
pub(crate) async fn serve_connection<S>(stream: S, conn: ConnId, shared: Arc<Shared>, peer: Peer)
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let opts = &shared.opts;
    let mut buf = BytesMut::new();
    let mut decoder = Decoder::new(opts.limits.maximum_packet_size);

    // CONNECT must arrive within the connect timeout.
    let first = tokio::time::timeout(
        opts.limits.connect_timeout,
        read_packet(&mut rd, &mut buf, &mut decoder, &shared.stats),
    )
    .await;
    let mut connect = match first {
        Ok(Ok(Some(Packet::Connect(c)))) => c,
        Ok(Err(ReadError::Decode(DecodeError::UnsupportedProtocolVersion(level)))) => {
            // Answer in the form the client can read: 5.0 gets 0x84, anything
            // else the 3.1.1 return code 1 ([MQTT-3.1.2-2]).
            let reply: &[u8] = if level == 5 {
                &[0x20, 3, 0, 0x84, 0]
            } else {
                &[0x20, 2, 0, 1]
            };
            let _ = wr.write_all(reply).await;
            let _ = wr.shutdown().await;
            return;
        }
        Ok(Err(ReadError::Decode(e))) => {
            tracing::debug!(conn = conn.0, error = %e, "bad CONNECT");
            return;
        }
        _ => return, // timeout, I/O error, EOF, or not a CONNECT
    };

    if let Some(username) = peer.username {
        connect.username = Some(username.into());
    }
    let version = connect.protocol;
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
                        || wr.write_all(&out).await.is_err()
                    {
                        return;
                    }
                    let next = tokio::time::timeout(
                        opts.limits.connect_timeout,
                        read_packet(&mut rd, &mut buf, &mut decoder, &shared.stats),
                    )
                    .await;
                    match next {
                        Ok(Ok(Some(Packet::Auth(a))))
                            if a.reason == ReasonCode::ContinueAuthentication
                                && a.properties.authentication_method.as_ref() == Some(&method) =>
                        {
                            data = a.properties.authentication_data;
                        }
                        // Anything else during the exchange is a protocol error.
                        _ => {
                            return refuse_connect(&mut wr, version, ReasonCode::ProtocolError)
                                .await
                        }
                    }
                }
                AuthStep::Fail(reason) => return refuse_connect(&mut wr, version, reason).await,
                // No hook offers the method ([MQTT-4.12.0-1]).
                AuthStep::Unsupported => {
                    return refuse_connect(&mut wr, version, ReasonCode::BadAuthenticationMethod)
                        .await
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
            tracing::warn!(conn = conn.0, client_id = %client.client_id,
                username = client.username.as_deref().unwrap_or(""),
                remote = client.remote_addr.map(tracing::field::display), ?reason, "authentication failed; connection refused");
            return refuse_connect(&mut wr, version, reason).await;
        }
        client.client_id = connect.client_id.clone();
        client.username = connect.username.clone();
    }
    let client = Arc::new(client);
    let (keep_alive, _) = effective_keep_alive(opts, version, connect.keep_alive);
    let mut inbound_aliases = InboundAliases::new(if version.is_v5() {
        opts.capabilities.topic_alias_maximum
    } else {
        0
    });
    let outbound_aliases =
        OutboundAliases::new(connect.properties.topic_alias_maximum.unwrap_or(0));
    let outbox = Arc::new(Outbox::new(version));
    let mut writer = tokio::spawn(write_loop(
        wr,
        outbox.clone(),
        version,
        outbound_aliases,
        shared.stats.clone(),
    ));
    tracing::info!(conn = conn.0, client_id = %connect.client_id, remote = client.remote_addr.map(tracing::field::display),
        ?version, keep_alive, clean_start = connect.clean_start, "client connected");
    if shared
        .events
        .send(Event::Connect {
            conn,
            outbox: outbox.clone(),
            connect,
            client: client.clone(),
            enhanced_auth: enhanced.is_some(),
        })
        .await
        .is_err()
    {
        return;
    }

    // A keep-alive of 0 means no timeout ([MQTT-3.1.2-22]: 1.5 times the interval).
    let idle = (keep_alive > 0).then(|| Duration::from_millis(u64::from(keep_alive) * 1500));
    // A JoinHandle panics if polled again after it completed.
    let mut writer_done = false;
    let mut said_disconnect = false;
    let reason = loop {
        // Backpressure: a subscriber this client publishes to is full.
        outbox.reads_allowed(PAUSE_BOUND).await;
        // Packets already buffered are taken without arming the keep-alive
        // timer: one timer (and clock read) per socket read, not per packet.
        let buffered = match decoder.decode(&mut buf) {
            Ok(Some(p)) => {
                stats::add(&shared.stats.packets_received, 1);
                Some(Ok(Ok(Some(p))))
            }
            Ok(None) => None,
            Err(e) => Some(Ok(Err(ReadError::Decode(e)))),
        };
        let result = if let Some(r) = buffered {
            r
        } else {
            let read = read_packet(&mut rd, &mut buf, &mut decoder, &shared.stats);
            tokio::select! {
                r = async {
                    match idle {
                        Some(d) => tokio::time::timeout(d, read).await.map_err(|_| ()),
                        None => Ok(read.await),
                    }
                } => r,
                // The core closed the outbox and the writer finished: stop reading.
                _ = &mut writer => {
                    writer_done = true;
                    break None;
                }
            }
        };
        let packet = match result {
            Err(()) => break Some(CloseReason::KeepAliveTimeout),
            Ok(Ok(Some(p))) => p,
            Ok(Ok(None)) | Ok(Err(ReadError::Io)) => break Some(CloseReason::Lost),
            Ok(Err(ReadError::Decode(e))) => {
                tracing::debug!(conn = conn.0, error = %e, "protocol error");
                break Some(CloseReason::Malformed(e));
            }
        };
        // Even PINGREQ goes through the core: only the core's order puts
        // the CONNACK first ([MQTT-3.2.0-1]) when a client pipelines
        // packets behind its CONNECT.
        let last = matches!(packet, Packet::Disconnect(_));
        let event = match packet {
            // Re-authentication, for a client that used enhanced
            // authentication at CONNECT (5.0 section 4.12.1).
            Packet::Auth(a) if enhanced.is_some() => {
                let method = enhanced.clone().unwrap_or_default();
                let same_method = a.properties.authentication_method.as_ref() == Some(&method);
                let expected = matches!(
                    a.reason,
                    ReasonCode::ReAuthenticate | ReasonCode::ContinueAuthentication
                );
                if !same_method || !expected {
                    break Some(CloseReason::ProtocolError(ReasonCode::ProtocolError));
                }
                let data = a.properties.authentication_data;
                match shared
                    .hooks
                    .enhanced_auth(&client, &method, data.as_deref())
                    .await
                {
                    AuthStep::Success(answer) => {
                        outbox.push(auth_packet(ReasonCode::Success, &method, answer));
                    }
                    AuthStep::Continue(challenge) => {
                        outbox.push(auth_packet(
                            ReasonCode::ContinueAuthentication,
                            &method,
                            Some(challenge),
                        ));
                    }
                    AuthStep::Fail(code) => break Some(CloseReason::ProtocolError(code)),
                    AuthStep::Unsupported => {
                        break Some(CloseReason::ProtocolError(
                            ReasonCode::BadAuthenticationMethod,
                        ))
                    }
                }
                continue;
            }
            Packet::Publish(mut publish) => {
                if let Err(code) = inbound_aliases.resolve(&mut publish) {
                    break Some(CloseReason::ProtocolError(code));
                }
                let verdict = if shared.hooks.is_empty() {
                    PublishVerdict::Deliver
                } else {
                    shared.hooks.publish(&client, &mut publish).await
                };
                Event::Publish {
                    conn,
                    publish,
                    verdict,
                }
            }
            Packet::Subscribe(sub) if !shared.hooks.is_empty() => Event::Subscribe {
                conn,
                subscribe: intercept_subscribe(&shared.hooks, &client, sub).await,
            },
            Packet::Unsubscribe(mut unsub) if shared.hooks.has_events() => {
                shared
                    .hooks
                    .each(|h| h.on_unsubscribe(&client, &mut unsub.filters));
                Event::Packet {
                    conn,
                    packet: Packet::Unsubscribe(unsub),
                }
            }
            packet => Event::Packet { conn, packet },
        };
        if shared.events.send(event).await.is_err() {
            break None;
        }
        if last {
            said_disconnect = true;
            // The core still answers (an invalid DISCONNECT gets DISCONNECT
            // 0x82, [MQTT-3.14.2-2]) and then closes the outbox itself.
            break None;
        }
    };
    let why = match &reason {
        None if said_disconnect => "DISCONNECT from the client".to_string(),
        None if writer_done => "closed by the broker".to_string(),
        None => "broker stopped".to_string(),
        Some(CloseReason::Lost) => "connection lost".to_string(),
        Some(CloseReason::KeepAliveTimeout) => "keep-alive timeout".to_string(),
        Some(CloseReason::ProtocolError(code)) => format!("protocol error ({code:?})"),
        Some(CloseReason::Malformed(e)) => format!("malformed packet: {e}"),
    };
    tracing::info!(conn = conn.0, client_id = %client.client_id, reason = %why, "client disconnected");
    if let Some(reason) = reason {
        // The core sends the DISCONNECT (5.0): queued from here it could
        // overtake a CONNACK the core has not queued yet.
        let _ = shared.events.send(Event::Closed { conn, reason }).await;
    }
    let peer_still_talking = !matches!(reason, Some(CloseReason::Lost));
    if !writer_done {
        // The core closes the outbox when it detaches the connection, after
        // queueing any final DISCONNECT; closing it from here first would
        // drop that. Give the writer a moment to flush, then close it
        // ourselves (the core is gone or never saw this connection).
        if tokio::time::timeout(Duration::from_secs(5), &mut writer)
            .await
            .is_err()
        {
            outbox.close();
            writer.abort();
            return;
        }
    }
    if peer_still_talking {
        linger(&mut rd).await;
    }
}

/// After the broker's last packet and FIN, reads (and discards) what the
/// peer still sends, briefly. Closing a socket with unread data makes the
/// kernel answer with a reset, which can destroy the DISCONNECT still
/// waiting in the peer's receive buffer; a client that keeps writing
/// (acknowledgements in flight) must get to read why it was disconnected.
async fn linger<R: AsyncRead + Unpin>(rd: &mut R) {
    const LINGER: Duration = Duration::from_secs(1);
    const MAX_BYTES: usize = 1 << 20;
    let mut scratch = [0u8; 4096];
    let mut total = 0;
    let _ = tokio::time::timeout(LINGER, async {
        while total < MAX_BYTES {
            match rd.read(&mut scratch).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    })
    .await;
}

/// Answers a CONNECT with a refusal and closes.
async fn refuse_connect<W: AsyncWrite + Unpin>(
    wr: &mut W,
    version: ProtocolVersion,
    reason: ReasonCode,
) {
    let mut out = BytesMut::new();
    let refusal = Packet::ConnAck(ConnAck {
        session_present: false,
        reason,
        properties: Default::default(),
    });
    if encode(&refusal, version, &mut out).is_ok() {
        let _ = wr.write_all(&out).await;
    }
    let _ = wr.shutdown().await;
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

/// Writes everything the core queues, many packets per write.
async fn write_loop<W: AsyncWrite + Unpin>(
    mut wr: W,
    outbox: Arc<Outbox>,
    version: ProtocolVersion,
    mut aliases: OutboundAliases,
    stats: Arc<Stats>,
) {
    let mut batch = Vec::new();
    let mut buf = BytesMut::new();
    while outbox.drain(&mut batch).await {
        let mut publishes = 0u64;
        let packets = batch.len() as u64;
        // Encoded in place: a packet is a few hundred bytes, and moving each
        // one out of the batch showed up in profiles of fan-out.
        for packet in batch.iter_mut() {
            if let Packet::Publish(p) = packet {
                publishes += 1;
                aliases.apply(p);
            }
            if let Err(e) = encode(packet, version, &mut buf) {
                tracing::warn!(error = %e, packet = packet.name(), "cannot encode");
            }
        }
        batch.clear();
        // Flush each batch: TLS and WebSocket streams buffer what they
        // are given until flushed (for TCP this is a no-op).
        if wr.write_all(&buf).await.is_err() || wr.flush().await.is_err() {
            break;
        }
        stats::add(&stats.bytes_sent, buf.len() as u64);
        stats::add(&stats.packets_sent, packets);
        stats::add(&stats.messages_sent, publishes);
        buf.clear();
        // Idle connections should not keep a large buffer around.
        if buf.capacity() > 64 * 1024 {
            buf = BytesMut::new();
        }
    }
    let _ = wr.flush().await;
    let _ = wr.shutdown().await;
}
