//! A bridge's driver: the task that joins the bridge's local session (an
//! in-process MQTT 5.0 client of the core, like the inline client, but
//! persistent) to its [`Link`] with the remote broker, over a socket.
//!
//! Outbound, the local session's subscriptions are the forward rules: the
//! core queues what matches (stored, spilled to disk past the memory
//! window, bounded by the bridge's limits) and sends it under the
//! session's packet ids, which the link reuses at the remote
//! ([`Link::send_as`]). The local acknowledgement follows the remote's:
//! PUBACK after the remote's PUBACK; PUBREC after the remote's PUBREC, then
//! the local PUBREL (sent by the core once "released" is committed) lets
//! the remote PUBREL go, and PUBCOMP follows the remote's PUBCOMP. So a
//! message leaves the local store only once the remote has it, and QoS 2
//! state is the local session's, stored by the same group commit.
//!
//! Inbound, a remote PUBLISH is published here through the bridge's
//! session under the remote's packet id, and acknowledged to the remote
//! only when the core acknowledges it (after its commit).

use crate::bridge::{
    Backoff, Bridge, Echoes, Event as LinkEvent, Link, Outgoing, Rule, SendError, Settings,
};
use crate::broker::{ConnId, Event, OncePerSecond, Outbox, BRIDGE_CLIENT_ID_PREFIX};
use crate::clock::Clock;
use crate::codec::{
    ByteStr, Connect, ConnectProperties, Decoder, Packet, PacketId, ProtocolVersion, PubResp,
    Publish, QoS, QosPid, ReasonCode, RetainHandling, Subscribe, SubscriptionOptions,
    UserProperties,
};
use crate::escape::Escaped;
use crate::hooks::{Client, Hooks};
use crate::ingress::{self, Ask, Inbound, ToCore};
use crate::net::dial::{DialError, Dialer, RemoteStream};
use crate::stats::{self, BridgeStats};
use bytes::BytesMut;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::hash::BuildHasher;
use std::num::{NonZeroU16, NonZeroU32};
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

type Dialing = Pin<Box<dyn Future<Output = Result<RemoteStream, DialError>> + Send>>;

/// Longest a connection attempt (DNS, TCP, TLS, WebSocket) may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the remote has to answer CONNECT, keep alive or not.
const CONNACK_TIMEOUT_MS: u64 = 10_000;

/// Inbound messages waiting for room at the core beyond which the socket
/// is not read.
const INBOUND_BACKLOG: usize = 1024;

/// Tokens at or above this are the driver's own messages (the state
/// topic); below, a token is the local packet id.
const OWN_TOKENS: u64 = 1 << 32;

/// What a bridge's task needs from the server.
pub(crate) struct Wiring {
    pub(crate) conn: ConnId,
    pub(crate) events: mpsc::Sender<Event>,
    pub(crate) hooks: Hooks,
    pub(crate) clock: Clock,
    pub(crate) stop: watch::Receiver<bool>,
    pub(crate) stats: Arc<BridgeStats>,
    /// Largest packet taken from the remote.
    pub(crate) max_packet_size: u32,
    /// The core's Receive Maximum: the remote may have as many inbound
    /// QoS 1/2 messages unacknowledged.
    pub(crate) receive_maximum: u16,
}

/// The local session's client id for bridge `name`.
pub(crate) fn local_client_id(name: &str) -> String {
    format!("{BRIDGE_CLIENT_ID_PREFIX}{name}")
}

/// Runs bridge `bridge` until the server stops.
pub(crate) async fn run(bridge: Bridge, dialer: Arc<Dialer>, wiring: Wiring) {
    let mut driver = Driver::new(bridge, dialer, wiring);
    driver.serve().await;
}

/// A forwarded message the link has not taken yet.
struct Waiting {
    packet_id: PacketId,
    msg: Outgoing,
    qos: QoS,
    dup: bool,
}

/// A forwarded message in flight.
#[derive(Debug, Clone, Copy)]
struct Forwarding {
    /// Its QoS here (the remote's may be lower: its Maximum QoS).
    qos: QoS,
    /// QoS 2: PUBREC went to the core, whose PUBREL is expected.
    released: bool,
}

/// Something to hand the core, in order.
enum ToLocal {
    Packet(Packet),
    Publish(Publish),
}

struct Driver {
    bridge: Bridge,
    dialer: Arc<Dialer>,
    link: Link,
    backoff: Backoff,
    conn: ConnId,
    client: Arc<Client>,
    events: mpsc::Sender<Event>,
    hooks: Hooks,
    clock: Clock,
    stop: watch::Receiver<bool>,
    stats: Arc<BridgeStats>,
    max_packet_size: u32,
    /// Forwarded messages the link has not taken, in order.
    waiting: VecDeque<Waiting>,
    /// Forwarded messages in flight, by local packet id.
    forwarding: HashMap<u16, Forwarding>,
    /// Inbound messages waiting for room at the core (its Receive Maximum).
    inbound: VecDeque<Publish>,
    /// Inbound QoS 1/2 messages the core has not completed, by packet id.
    at_core: HashMap<u16, QoS>,
    core_receive_maximum: usize,
    to_local: VecDeque<ToLocal>,
    /// 3.1.1 remotes with overlapping rules: what we forwarded, to know it
    /// when it comes back.
    echoes: Option<Echoes>,
    /// The reason of the last failure, logged once per change.
    last_error: Option<String>,
    /// When the current connection was accepted (mono ms).
    connected_at: Option<u64>,
    next_own_token: u64,
    /// Refused forwarded messages are logged at most once a second.
    refusal_log: OncePerSecond,
    /// Why we are ending the connection, once our DISCONNECT is written.
    hanging_up: Option<String>,
    /// The local session ended: reconnect it.
    local_closed: bool,
}

impl Driver {
    fn new(bridge: Bridge, dialer: Arc<Dialer>, w: Wiring) -> Driver {
        let protocol = bridge.protocol.version();
        let settings = Settings {
            client_id: bridge.client_id.clone(),
            protocol,
            keep_alive: u16::try_from(bridge.keep_alive.as_secs()).unwrap_or(u16::MAX),
            session_expiry: u32::try_from(bridge.session_expiry.as_secs()).unwrap_or(u32::MAX),
            username: bridge.username.clone(),
            password: bridge
                .password
                .as_ref()
                .map(|p| bytes::Bytes::copy_from_slice(p.as_bytes())),
            max_inflight: bridge.inflight_window(),
            subscriptions: bridge
                .subscribe
                .iter()
                .map(|r| (r.remote_filter(), r.qos))
                .collect(),
            receive_maximum: w.receive_maximum,
            maximum_packet_size: w.max_packet_size,
        };
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let backoff = Backoff::new(ms(bridge.reconnect_min), ms(bridge.reconnect_max));
        let echoes =
            (!protocol.is_v5() && !bridge.forward.is_empty() && !bridge.subscribe.is_empty())
                .then(Echoes::default);
        let client = Arc::new(Client {
            client_id: ByteStr::from(local_client_id(&bridge.name)),
            username: None,
            remote_addr: None,
            certificate: None,
            protocol: ProtocolVersion::V5,
            inline: true,
        });
        Driver {
            link: Link::new(settings),
            bridge,
            dialer,
            backoff,
            conn: w.conn,
            client,
            events: w.events,
            hooks: w.hooks,
            clock: w.clock,
            stop: w.stop,
            stats: w.stats,
            max_packet_size: w.max_packet_size,
            waiting: VecDeque::new(),
            forwarding: HashMap::new(),
            inbound: VecDeque::new(),
            at_core: HashMap::new(),
            core_receive_maximum: usize::from(u16::MAX),
            to_local: VecDeque::new(),
            echoes,
            last_error: None,
            connected_at: None,
            next_own_token: OWN_TOKENS,
            refusal_log: OncePerSecond::new(),
            hanging_up: None,
            local_closed: false,
        }
    }

    fn now(&self) -> u64 {
        self.clock.mono_ms()
    }

    /// The local session's CONNECT: persistent, never expiring (the queue
    /// must outlive any outage), as many in flight as the remote link may
    /// carry.
    fn local_connect(&self) -> Connect {
        Connect {
            protocol: ProtocolVersion::V5,
            clean_start: false,
            keep_alive: 0,
            client_id: self.client.client_id.clone(),
            will: None,
            username: None,
            password: None,
            properties: ConnectProperties {
                session_expiry_interval: Some(u32::MAX),
                receive_maximum: NonZeroU16::new(self.bridge.inflight_window().max(1)),
                ..Default::default()
            },
        }
    }

    /// One SUBSCRIBE per forward rule, its subscription identifier the
    /// rule's position (from 1): a delivered message names its rule.
    fn local_subscribes(&self) -> Vec<Subscribe> {
        self.bridge
            .forward
            .iter()
            .enumerate()
            .filter_map(|(i, rule)| {
                let options = SubscriptionOptions::new(rule.qos)
                    // What came in over this bridge does not go back out.
                    .with_no_local(true)
                    .with_retain_as_published(true)
                    // Retained messages once, when a rule is new, not at
                    // every start.
                    .with_retain_handling(RetainHandling::SendAtSubscribeIfNew);
                Some(Subscribe {
                    packet_id: PacketId::new(u16::try_from(i + 1).ok()?)?,
                    filters: vec![(ByteStr::from(rule.local_filter()), options)],
                    subscription_identifier: NonZeroU32::new(u32::try_from(i + 1).ok()?),
                    user_properties: UserProperties::new(),
                })
            })
            .collect()
    }

    /// Connects the local session; `None` when the core has stopped.
    async fn attach(&mut self) -> Option<Arc<Outbox>> {
        let outbox = Arc::new(Outbox::new(ProtocolVersion::V5, self.clock.mono_ms()));
        self.events
            .send(Event::Connect {
                conn: self.conn,
                outbox: outbox.clone(),
                connect: Box::new(self.local_connect()),
                client: self.client.clone(),
                enhanced_auth: false,
                id_assigned: false,
            })
            .await
            .ok()?;
        for subscribe in self.local_subscribes() {
            let subscribe = match ingress::subscribe(subscribe, &self.hooks) {
                Inbound::Ask(Ask::Subscribe(mut s)) => {
                    self.hooks.subscribe(&self.client, &mut s.filters).await;
                    s
                }
                Inbound::Core(ToCore::Subscribe(s)) => s,
                _ => continue,
            };
            let event = Event::Subscribe {
                conn: self.conn,
                subscribe,
            };
            self.events.send(event).await.ok()?;
        }
        Some(outbox)
    }

    async fn serve(&mut self) {
        let mut batch = VecDeque::new();
        let mut stream: Option<RemoteStream> = None;
        let mut dialing: Option<Dialing> = None;
        let mut retry_at: Option<u64> = Some(self.now());
        let mut rbuf = BytesMut::with_capacity(8 * 1024);
        let mut wbuf = BytesMut::new();
        let mut decoder = Decoder::with_version(self.max_packet_size, self.link.protocol());
        let mut connect_sent: Option<u64> = None;
        let Some(mut outbox) = self.attach().await else {
            return;
        };
        loop {
            if self.local_closed {
                // The core closed the session (it refused the CONNECT while
                // its store failed, or it is stopping): try again shortly.
                // The session resends what it had in flight, so what waited
                // for the link goes (forwarded flows stay, to be matched with
                // the resends); inbound messages it had not acknowledged are
                // lost with it, so the link reconnects too and the remote
                // sends them again.
                self.local_closed = false;
                self.waiting.clear();
                self.inbound.clear();
                self.at_core.clear();
                self.hang_up("the bridge's local session was closed".into());
                tokio::time::sleep(Duration::from_secs(1)).await;
                if *self.stop.borrow() {
                    break;
                }
                match self.attach().await {
                    Some(o) => outbox = o,
                    None => break,
                }
            }
            // What the link has to send goes out first.
            if let Some(s) = stream.as_mut() {
                wbuf.clear();
                let now = self.now();
                while let Some(p) = self.link.poll_transmit(now) {
                    if crate::codec::encode(&p, self.link.protocol(), &mut wbuf).is_err() {
                        tracing::warn!(bridge = %self.bridge.name, "bridge: a packet that does not encode, not sent");
                    }
                }
                if !wbuf.is_empty() && write_out(s, &wbuf).await.is_err() {
                    self.lost(
                        &mut stream,
                        "writing to the remote failed".into(),
                        &mut retry_at,
                    );
                }
            }
            if let Some(why) = self.hanging_up.take() {
                // Our DISCONNECT went above: the connection ends here.
                self.lost(&mut stream, why, &mut retry_at);
            }
            if self.deliver_local().await.is_err() {
                break;
            }
            let now = self.now();
            let deadline = if stream.is_some() {
                // Keep alive, and (keep alive or not) the CONNACK's time.
                let connack = connect_sent
                    .filter(|_| !self.link.is_connected())
                    .map(|at| at + CONNACK_TIMEOUT_MS);
                match (self.link.next_timeout(), connack) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            } else if dialing.is_none() {
                retry_at
            } else {
                None
            };
            let sleep = async {
                match deadline {
                    Some(at) => {
                        tokio::time::sleep(Duration::from_millis(at.saturating_sub(now))).await
                    }
                    None => std::future::pending().await,
                }
            };
            // Inbound messages waiting for the core hold back reading: the
            // remote then waits (TCP backpressure) instead of memory
            // growing.
            let reading = self.inbound.len() < INBOUND_BACKLOG;
            let read = async {
                match stream.as_mut() {
                    Some(s) if reading => s.read_buf(&mut rbuf).await,
                    _ => std::future::pending().await,
                }
            };
            let dial = async {
                match dialing.as_mut() {
                    Some(d) => d.await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = self.stop.changed() => {
                    self.shut_down(stream.as_mut()).await;
                    break;
                }
                more = outbox.drain(|| self.clock.now_ms(), &mut batch) => {
                    if !more {
                        self.local_closed = true;
                    }
                    for out in batch.drain(..) {
                        if let Some(p) = out.into_packet() {
                            self.on_local(p);
                        }
                    }
                }
                read = read => match read {
                    Ok(0) => self.lost(&mut stream, "the remote closed the connection".into(), &mut retry_at),
                    Err(e) => self.lost(&mut stream, format!("reading from the remote failed: {e}"), &mut retry_at),
                    Ok(_) => {
                        let now = self.now();
                        loop {
                            match decoder.decode(&mut rbuf) {
                                Ok(Some(p)) => self.link.on_packet(p, now),
                                Ok(None) => break,
                                Err(e) => {
                                    self.link.lost();
                                    self.lost(&mut stream, format!("the remote sent a malformed packet: {e}"), &mut retry_at);
                                    break;
                                }
                            }
                        }
                    }
                },
                dialed = dial => {
                    dialing = None;
                    match dialed {
                        Ok(s) => {
                            stream = Some(s);
                            rbuf.clear();
                            decoder = Decoder::with_version(self.max_packet_size, self.link.protocol());
                            let connect = self.connect_packet();
                            let mut buf = BytesMut::new();
                            let _ = crate::codec::encode(&Packet::Connect(Box::new(connect)), self.link.protocol(), &mut buf);
                            connect_sent = Some(self.now());
                            if let Some(s) = stream.as_mut() {
                                if write_out(s, &buf).await.is_err() {
                                    self.lost(&mut stream, "writing CONNECT to the remote failed".into(), &mut retry_at);
                                }
                            }
                        }
                        Err(e) => {
                            self.failed(e.kind(), e.to_string());
                            retry_at = Some(self.now() + self.next_delay());
                        }
                    }
                }
                _ = sleep => {
                    let now = self.now();
                    let no_connack = !self.link.is_connected()
                        && connect_sent.is_some_and(|at| now >= at + CONNACK_TIMEOUT_MS);
                    if stream.is_some() && no_connack {
                        self.link.lost();
                        self.lost(&mut stream, format!("no CONNACK within {} s", CONNACK_TIMEOUT_MS / 1000), &mut retry_at);
                    } else if stream.is_some() {
                        self.link.on_timeout(now);
                    } else if dialing.is_none() {
                        retry_at = None;
                        let dialer = self.dialer.clone();
                        dialing = Some(Box::pin(async move {
                            dialer.dial(DIAL_TIMEOUT).await
                        }));
                    }
                }
            }
            self.on_link_events(&mut stream, &mut retry_at);
            self.pump();
        }
        self.stats.connected.store(0, Relaxed);
    }

    /// The remote CONNECT: the link's, with the state topic's will.
    fn connect_packet(&mut self) -> Connect {
        let now = self.now();
        let mut c = self.link.connect(now);
        if let Some(topic) = &self.bridge.state_topic {
            c.will = Some(
                crate::codec::LastWill::new(
                    topic.as_str(),
                    bytes::Bytes::from_static(b"0"),
                    QoS::AtLeastOnce,
                )
                .with_retain(true),
            );
        }
        c
    }

    fn next_delay(&mut self) -> u64 {
        let random = std::collections::hash_map::RandomState::new().hash_one(self.now());
        self.backoff.next_delay(random)
    }

    /// A connection attempt failed: logged once per change of reason.
    fn failed(&mut self, step: &'static str, error: String) {
        if self.last_error.as_deref() != Some(error.as_str()) {
            tracing::warn!(bridge = %self.bridge.name, remote = %self.bridge.remote, step, %error,
                "bridge: cannot connect to the remote (retrying with backoff; logged again when the reason changes)");
            self.last_error = Some(error.clone());
        }
        self.stats.set_error(Some(error));
    }

    /// Ends the connection from our side (a DISCONNECT, then the socket
    /// closes) for `why`, to reconnect after the backoff.
    fn hang_up(&mut self, why: String) {
        if self.link.is_connected() {
            self.link.disconnect();
            self.hanging_up = Some(why);
        }
    }

    /// The connection ended (without the link saying why, or after it did).
    fn lost(&mut self, stream: &mut Option<RemoteStream>, why: String, retry_at: &mut Option<u64>) {
        if stream.take().is_none() {
            return;
        }
        self.link.lost();
        let now = self.now();
        if let Some(at) = self.connected_at.take() {
            self.backoff.connection_lasted(now.saturating_sub(at));
            self.stats.connected.store(0, Relaxed);
            stats::add(&self.stats.reconnects, 1);
            tracing::warn!(bridge = %self.bridge.name, remote = %self.bridge.remote, reason = %why,
                "bridge disconnected");
            if self.hooks.has_events() {
                let name = self.bridge.name.clone();
                self.hooks.each(|h| h.on_bridge_disconnected(&name, &why));
            }
            self.last_error = Some(why.clone());
            self.stats.set_error(Some(why));
        } else {
            // Before CONNACK: a refusal (a TLS alert after the handshake,
            // CONNACK with an error code) or a connection cut short.
            self.failed("connect", why);
        }
        *retry_at = Some(now + self.next_delay());
    }

    /// What the core sent the bridge's session.
    fn on_local(&mut self, packet: Packet) {
        match packet {
            Packet::ConnAck(ack) => {
                if ack.reason.is_success() {
                    self.core_receive_maximum = ack
                        .properties
                        .receive_maximum
                        .map_or(usize::from(u16::MAX), |n| usize::from(n.get()));
                } else {
                    tracing::warn!(bridge = %self.bridge.name, reason = ?ack.reason,
                        "bridge: the broker refused the bridge's local session; retrying");
                }
            }
            Packet::Publish(p) => self.forward(p),
            Packet::PubRel(r) => {
                let pid = r.packet_id;
                let f = self.forwarding.entry(pid.get()).or_insert_with(|| {
                    // Released before a restart: the session resumes with
                    // the PUBREL the remote is still owed.
                    stats::add(&self.stats.inflight, 1);
                    Forwarding {
                        qos: QoS::ExactlyOnce,
                        released: true,
                    }
                });
                if f.released {
                    // The core stored it as released (our PUBREC answered
                    // the remote's): the remote's PUBREL may go.
                    self.link.released(u64::from(pid.get()), pid);
                } else {
                    // The remote took it at a lower QoS and has it: the
                    // local flow just completes.
                    self.complete_forwarded(pid);
                }
            }
            Packet::PubAck(r) => self.core_acked(r, QoS::AtLeastOnce),
            Packet::PubRec(r) => self.core_acked(r, QoS::ExactlyOnce),
            Packet::PubComp(r) if self.at_core.remove(&r.packet_id.get()).is_some() => {
                stats::add(&self.stats.received, 1);
            }
            Packet::SubAck(ack) => {
                for (reason, rule) in ack
                    .reasons
                    .iter()
                    .zip(self.rule_of_subscribe(ack.packet_id))
                {
                    if !reason.is_success() {
                        tracing::warn!(bridge = %self.bridge.name, filter = %Escaped(&rule.local_filter()),
                            ?reason, "bridge: forward rule's local subscription refused");
                    }
                }
            }
            Packet::Disconnect(d) => {
                tracing::debug!(bridge = %self.bridge.name, reason = ?d.reason, "bridge: local session closed");
            }
            _ => {}
        }
    }

    fn rule_of_subscribe(&self, pid: PacketId) -> Option<&Rule> {
        self.bridge.forward.get(usize::from(pid.get()) - 1)
    }

    /// A local message for the remote: mapped by its rule, then handed to
    /// the link (or kept until the link takes it).
    fn forward(&mut self, p: Publish) {
        let qos = p.qos_pid.qos();
        // The subscription identifier names the rule whose local filter
        // the topic matched: only the prefixes change. Without one, each
        // rule is tried in full.
        let by_id = p
            .properties
            .subscription_identifiers
            .iter()
            .filter_map(|id| self.bridge.forward.get(id.get() as usize - 1))
            .find_map(|r| r.to_remote_matched(&p.topic));
        let mapped = by_id.or_else(|| {
            self.bridge
                .forward
                .iter()
                .find_map(|r| r.to_remote(&p.topic))
                .map(ByteStr::from)
        });
        let Some(remote_topic) = mapped else {
            // No rule carries it (a subscription left by an older
            // configuration, until the next start removes it): done here.
            stats::add(&self.stats.dropped, 1);
            if let Some(pid) = p.qos_pid.packet_id() {
                self.refuse_local(pid, qos, ReasonCode::UnspecifiedError);
            }
            return;
        };
        let mut properties = p.properties;
        properties.subscription_identifiers.clear();
        properties.topic_alias = None;
        let msg = Outgoing {
            topic: remote_topic,
            payload: p.payload,
            retain: p.retain,
            properties,
        };
        let Some(packet_id) = p.qos_pid.packet_id() else {
            // QoS 0: now or never.
            let sent = self.link.is_connected() && {
                self.note_forwarded(&msg);
                self.link
                    .send_as(0, PacketId::MIN, msg, QoS::AtMostOnce, false)
                    .is_ok()
            };
            if !sent {
                stats::add(&self.stats.dropped, 1);
            }
            return;
        };
        let f = Forwarding {
            qos,
            released: false,
        };
        if self.forwarding.insert(packet_id.get(), f).is_none() {
            stats::add(&self.stats.inflight, 1);
        }
        self.waiting.push_back(Waiting {
            packet_id,
            msg,
            qos,
            dup: p.dup,
        });
    }

    fn note_forwarded(&mut self, msg: &Outgoing) {
        if let Some(e) = self.echoes.as_mut() {
            e.forwarded(&msg.topic, &msg.payload, self.clock.mono_ms());
        }
    }

    /// The remote has forwarded message `pid`: the local flow completes
    /// (PUBACK, or PUBCOMP after the PUBREL), and the core drops it.
    fn complete_forwarded(&mut self, pid: PacketId) {
        let Some(f) = self.forwarding.remove(&pid.get()) else {
            return;
        };
        stats::sub(&self.stats.inflight, 1);
        stats::add(&self.stats.forwarded, 1);
        let packet = match f.qos {
            QoS::ExactlyOnce => Packet::PubComp(PubResp::new(pid)),
            _ => Packet::PubAck(PubResp::new(pid)),
        };
        self.to_local.push_back(ToLocal::Packet(packet));
    }

    /// The remote refused forwarded message `pid` (or it cannot be sent
    /// there): counted, and the local flow ends with `reason`.
    fn reject_forwarded(&mut self, pid: PacketId, reason: ReasonCode) {
        let Some(f) = self.forwarding.remove(&pid.get()) else {
            return;
        };
        stats::sub(&self.stats.inflight, 1);
        stats::add(&self.stats.dropped, 1);
        if self.refusal_log.ready(self.now()) {
            tracing::warn!(bridge = %self.bridge.name, ?reason,
                dropped = self.stats.dropped.load(Relaxed),
                "bridge: a forwarded message was refused by the remote or is too large for it (more within a second not logged)");
        }
        if f.released {
            // Refused after its PUBREC: the local flow is past refusing.
            let packet = Packet::PubComp(PubResp::new(pid));
            self.to_local.push_back(ToLocal::Packet(packet));
        } else {
            self.refuse_local(pid, f.qos, reason);
        }
    }

    /// Ends a forwarded flow here with `reason` (an error code: the core
    /// drops its entry).
    fn refuse_local(&mut self, pid: PacketId, qos: QoS, reason: ReasonCode) {
        let resp = PubResp::new(pid).with_reason(reason);
        let packet = match qos {
            QoS::ExactlyOnce => Packet::PubRec(resp),
            _ => Packet::PubAck(resp),
        };
        self.to_local.push_back(ToLocal::Packet(packet));
    }

    /// The core answered an inbound message: the remote hears of it only
    /// now, so what it gets acknowledged is committed here.
    fn core_acked(&mut self, r: PubResp, qos: QoS) {
        let pid = r.packet_id;
        if matches!(
            r.reason,
            ReasonCode::QuotaExceeded | ReasonCode::ServerUnavailable | ReasonCode::ServerBusy
        ) {
            // Not taken for want of a resource (the store is failing): no
            // acknowledgement, so the remote still owes it. A new
            // connection makes the remote send it again.
            self.at_core.remove(&pid.get());
            self.link.forget_inbound(pid);
            self.hang_up(format!(
                "an inbound message was refused here ({:?}); reconnecting so that the remote sends it again",
                r.reason
            ));
            return;
        }
        // QoS 1 is done; QoS 2 is done at PUBCOMP, unless refused now.
        let done = qos == QoS::AtLeastOnce || !r.reason.is_success();
        if done && self.at_core.remove(&pid.get()).is_some() && r.reason.is_success() {
            stats::add(&self.stats.received, 1);
        }
        self.link.ack_inbound(pid);
    }

    /// What the link reported.
    fn on_link_events(&mut self, stream: &mut Option<RemoteStream>, retry_at: &mut Option<u64>) {
        while let Some(event) = self.link.poll_event() {
            match event {
                LinkEvent::Connected { session_present } => {
                    self.connected_at = Some(self.now());
                    self.stats.connected.store(1, Relaxed);
                    self.stats.set_error(None);
                    self.last_error = None;
                    tracing::info!(bridge = %self.bridge.name, remote = %self.bridge.remote,
                        session_present, "bridge connected");
                    if self.hooks.has_events() {
                        let name = self.bridge.name.clone();
                        self.hooks.each(|h| h.on_bridge_connected(&name));
                    }
                    self.publish_state(b"1");
                }
                LinkEvent::Assigned { .. } => {}
                LinkEvent::Delivered { token } => match local_pid(token) {
                    Some(pid) => {
                        let Some(f) = self.forwarding.get_mut(&pid.get()) else {
                            continue;
                        };
                        if f.qos == QoS::ExactlyOnce && !f.released {
                            // Taken at QoS 0 or 1 (the remote's Maximum
                            // QoS): the local QoS 2 flow goes on, PUBREC
                            // first; its PUBREL completes it.
                            self.to_local
                                .push_back(ToLocal::Packet(Packet::PubRec(PubResp::new(pid))));
                        } else {
                            self.complete_forwarded(pid);
                        }
                    }
                    None if token == 0 => stats::add(&self.stats.forwarded, 1),
                    None => {}
                },
                LinkEvent::Rejected { token, reason } => {
                    if let Some(pid) = local_pid(token) {
                        self.reject_forwarded(pid, reason);
                    }
                }
                LinkEvent::Released { packet_id, .. } => {
                    // The remote has it: the core stores it as released and
                    // answers PUBREL, which lets the remote's PUBREL go.
                    if let Some(f) = self.forwarding.get_mut(&packet_id.get()) {
                        f.released = true;
                    }
                    self.to_local
                        .push_back(ToLocal::Packet(Packet::PubRec(PubResp::new(packet_id))));
                }
                LinkEvent::Received { publish } => self.receive(publish),
                LinkEvent::InboundDone { packet_id } => {
                    // Also for an id the link forgot in a restart: the
                    // session may still hold it.
                    self.to_local
                        .push_back(ToLocal::Packet(Packet::PubRel(PubResp::new(packet_id))));
                }
                LinkEvent::SubscribeFailed { filter, reason } => {
                    tracing::warn!(bridge = %self.bridge.name, filter = %Escaped(&filter), ?reason,
                        "bridge: the remote refused a subscription");
                }
                LinkEvent::Closed(e) => {
                    // Written out with the next round (a DISCONNECT, if any),
                    // then the socket goes.
                    let why = e.to_string();
                    self.lost(stream, why, retry_at);
                }
            }
        }
    }

    /// A message from the remote, for the local broker.
    fn receive(&mut self, p: Publish) {
        let pid = p.qos_pid.packet_id();
        let local = self
            .bridge
            .subscribe
            .iter()
            .find_map(|r| r.to_local(&p.topic));
        let echo = self
            .echoes
            .as_mut()
            .is_some_and(|e| e.is_echo(&p.topic, &p.payload, self.clock.mono_ms()));
        let Some(topic) = local.filter(|_| !echo) else {
            // Not ours to publish (no rule carries it, or we sent it):
            // acknowledged, so the remote does not resend it.
            if let Some(pid) = pid {
                self.link.ack_inbound(pid);
            }
            return;
        };
        if let Some(pid) = pid {
            if self.at_core.contains_key(&pid.get())
                || self
                    .inbound
                    .iter()
                    .any(|q| q.qos_pid.packet_id() == Some(pid))
            {
                // A resend of what the core has not answered yet: its
                // answer acknowledges both.
                return;
            }
        }
        let mut properties = p.properties;
        properties.subscription_identifiers.clear();
        properties.topic_alias = None;
        self.inbound.push_back(Publish {
            dup: p.dup,
            qos_pid: p.qos_pid,
            retain: p.retain,
            topic: ByteStr::from(topic),
            payload: p.payload,
            properties,
        });
    }

    /// Moves what may move: forwarded messages to the link, inbound ones to
    /// the core (within its Receive Maximum).
    fn pump(&mut self) {
        while let Some(w) = self.waiting.front() {
            if !self.link.is_connected() {
                break;
            }
            let token = u64::from(w.packet_id.get());
            match self
                .link
                .send_as(token, w.packet_id, w.msg.clone(), w.qos, w.dup)
            {
                Ok(()) => {
                    let w = self.waiting.pop_front().expect("front exists");
                    self.note_forwarded(&w.msg);
                }
                Err(SendError::TooLarge) => {
                    let w = self.waiting.pop_front().expect("front exists");
                    self.reject_forwarded(w.packet_id, ReasonCode::PacketTooLarge);
                }
                Err(SendError::Full | SendError::NotConnected | SendError::IdInUse) => break,
            }
        }
        while self.at_core.len() < self.core_receive_maximum {
            let Some(p) = self.inbound.pop_front() else {
                break;
            };
            match p.qos_pid {
                QosPid::AtMostOnce => stats::add(&self.stats.received, 1),
                QosPid::AtLeastOnce(pid) => {
                    self.at_core.insert(pid.get(), QoS::AtLeastOnce);
                }
                QosPid::ExactlyOnce(pid) => {
                    self.at_core.insert(pid.get(), QoS::ExactlyOnce);
                }
            }
            self.to_local.push_back(ToLocal::Publish(p));
        }
    }

    /// Hands the core what is for it, in order (publishes through the
    /// hooks, as the inline client's). Err: the core has stopped.
    async fn deliver_local(&mut self) -> Result<(), ()> {
        while let Some(item) = self.to_local.pop_front() {
            let event = match item {
                ToLocal::Packet(packet) => Event::Packet {
                    conn: self.conn,
                    packet,
                },
                ToLocal::Publish(publish) => {
                    let (publish, verdict) = match ingress::publish(publish, &self.hooks) {
                        Inbound::Ask(Ask::Publish(mut publish)) => {
                            let verdict = self.hooks.publish(&self.client, &mut publish).await;
                            (publish, verdict)
                        }
                        Inbound::Core(ToCore::Publish(publish, verdict)) => (publish, verdict),
                        _ => continue,
                    };
                    Event::Publish {
                        conn: self.conn,
                        publish,
                        verdict,
                        held: Default::default(),
                    }
                }
            };
            self.events.send(event).await.map_err(drop)?;
        }
        Ok(())
    }

    /// Publishes the state topic's value at the remote (retained, QoS 1).
    fn publish_state(&mut self, value: &'static [u8]) {
        let Some(topic) = &self.bridge.state_topic else {
            return;
        };
        let msg = Outgoing {
            topic: ByteStr::from(topic.as_str()),
            payload: bytes::Bytes::from_static(value),
            retain: true,
            properties: Default::default(),
        };
        let token = self.next_own_token;
        self.next_own_token += 1;
        let _ = self.link.send(token, msg, QoS::AtLeastOnce);
    }

    /// The server stops: `0` on the state topic, then a normal DISCONNECT
    /// (the remote keeps the session).
    async fn shut_down(&mut self, stream: Option<&mut RemoteStream>) {
        let Some(s) = stream else { return };
        if self.link.is_connected() {
            if let Some(topic) = &self.bridge.state_topic {
                let msg = Outgoing {
                    topic: ByteStr::from(topic.as_str()),
                    payload: bytes::Bytes::from_static(b"0"),
                    retain: true,
                    properties: Default::default(),
                };
                let _ = self
                    .link
                    .send_as(0, PacketId::MIN, msg, QoS::AtMostOnce, false);
            }
        }
        // What is queued (the state included) goes before the DISCONNECT.
        self.link.disconnect();
        let mut buf = BytesMut::new();
        let now = self.now();
        while let Some(p) = self.link.poll_transmit(now) {
            let _ = crate::codec::encode(&p, self.link.protocol(), &mut buf);
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            let _ = write_out(s, &buf).await;
            let _ = s.shutdown().await;
        })
        .await;
        tracing::info!(bridge = %self.bridge.name, "bridge stopped");
    }
}

/// Writes `buf` to the remote and flushes it: TLS and WebSocket streams
/// hold written bytes (tungstenite up to its write buffer's size) until
/// flushed, so without it the CONNECT of a `ws`/`wss` bridge never left.
async fn write_out(s: &mut RemoteStream, buf: &[u8]) -> std::io::Result<()> {
    s.write_all(buf).await?;
    s.flush().await
}

/// The local packet id a link token stands for (tokens of forwarded
/// messages are their local ids).
fn local_pid(token: u64) -> Option<PacketId> {
    u16::try_from(token).ok().and_then(PacketId::new)
}
