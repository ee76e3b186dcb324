//! The broker core: sessions by client id, session takeover, routing through
//! the subscription tree, retained messages, wills, expiry and `$SYS`.
//!
//! Sans-IO: every entry point takes the current wall-clock time in
//! milliseconds; output goes to connection [`Outbox`]es and storage [`Op`]s.
//! One task owns a `Broker` and feeds it [`Event`]s, so no lock is ever held
//! across I/O and the routing path has no contention.

mod message;
mod persist;
mod restore;
mod session;
mod sys;

pub use message::{Message, MessageProperties};
pub use persist::Commit;

use crate::codec::{
    AckProperties, ByteStr, ConnAck, ConnAckProperties, Connect, Disconnect, Packet,
    ProtocolVersion, PubResp, Publish, QoS, ReasonCode, RetainHandling, SubAck, Subscribe,
    UnsubAck, Unsubscribe,
};
use crate::config::{Durability, Options};
use crate::hooks::{Client, Hooks, PublishVerdict, WillMessage};
use crate::outbox::Outbox;
use crate::router::{Match, RetainedTree, SubscriptionTree};
use crate::stats::{self, Stats};
use crate::topic::{self, SharedFilter};
use persist::{message_record, Persist};
use roost_storage::{Op, SessionRecord, SubscriptionRecord, WillRecord};
use session::{Conn, Ctx, Session, SubEntry, Will};
use std::collections::{HashMap, HashSet};
use std::num::NonZeroU32;
use std::sync::Arc;

/// Identifies a session for its whole life (client ids can be reused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(u64);

/// Identifies one network (or inline) connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// Why a connection ended, as its connection task saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The peer closed the connection or it failed, without DISCONNECT.
    Lost,
    /// No packet within 1.5 times the keep-alive; the core sends
    /// DISCONNECT 0x8D (5.0).
    KeepAliveTimeout,
    /// The peer broke the protocol; the core sends the reason code (5.0).
    ProtocolError(ReasonCode),
    /// The peer sent bytes that do not decode; the core sends the error's
    /// reason code and, as reason string, the rule it broke (5.0).
    Malformed(crate::codec::DecodeError),
}

/// Input to the broker core from connection tasks.
// Packets move by value: boxing every packet would cost an allocation per
// message on the hot path, for a channel whose slots are reused anyway.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Event {
    /// A connection sent a valid CONNECT (already authenticated).
    Connect {
        /// The connection.
        conn: ConnId,
        /// Where its packets go.
        outbox: Arc<Outbox>,
        /// The packet.
        connect: Box<Connect>,
        /// Who the client is (its id may still be empty: the core assigns one).
        client: Arc<Client>,
    },
    /// A PUBLISH (topic alias resolved) with what the hooks decided.
    Publish {
        /// The connection.
        conn: ConnId,
        /// The packet, as the hooks left it.
        publish: Publish,
        /// The hooks' verdict.
        verdict: PublishVerdict,
    },
    /// A SUBSCRIBE after the hooks saw it.
    Subscribe {
        /// The connection.
        conn: ConnId,
        /// The filters as the hooks left them, each with its verdict.
        subscribe: CheckedSubscribe,
    },
    /// A packet after CONNECT (topic alias already resolved).
    Packet {
        /// The connection.
        conn: ConnId,
        /// The packet.
        packet: Packet,
    },
    /// The connection is gone.
    Closed {
        /// The connection.
        conn: ConnId,
        /// Why.
        reason: CloseReason,
    },
}

/// A SUBSCRIBE whose filters the hooks have seen: each filter carries
/// `Err(reason)` if a hook refused it.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckedSubscribe {
    /// Packet identifier.
    pub packet_id: crate::codec::PacketId,
    /// Filters, options and verdicts.
    pub filters: Vec<(
        ByteStr,
        crate::codec::SubscriptionOptions,
        Result<(), ReasonCode>,
    )>,
    /// Subscription identifier.
    pub subscription_identifier: Option<NonZeroU32>,
}

impl From<Subscribe> for CheckedSubscribe {
    fn from(s: Subscribe) -> Self {
        CheckedSubscribe {
            packet_id: s.packet_id,
            filters: s.filters.into_iter().map(|(f, o)| (f, o, Ok(()))).collect(),
            subscription_identifier: s.subscription_identifier,
        }
    }
}

/// The keep-alive a connection runs with, and the Server Keep Alive to
/// advertise if it differs from what the client asked for (5.0 only;
/// 3.x clients keep their own value).
pub fn effective_keep_alive(
    opts: &Options,
    version: ProtocolVersion,
    asked: u16,
) -> (u16, Option<u16>) {
    if !version.is_v5() {
        return (asked, None);
    }
    let caps = &opts.capabilities;
    let chosen = match caps.server_keep_alive {
        Some(k) => k,
        None if asked == 0 || asked > caps.maximum_keep_alive => caps.maximum_keep_alive,
        None => asked,
    };
    (chosen, (chosen != asked).then_some(chosen))
}

/// The broker core.
pub struct Broker {
    opts: Options,
    hooks: Hooks,
    stats: Arc<Stats>,
    persist: Persist,
    sessions: HashMap<SessionId, Session>,
    by_client_id: HashMap<ByteStr, SessionId>,
    conns: HashMap<ConnId, SessionId>,
    subs: SubscriptionTree<SessionId, SubEntry>,
    retained: RetainedTree<Arc<Message>>,
    /// Round-robin position per share group, keyed by "group/filter".
    shared_cursor: HashMap<Box<str>, usize>,
    /// Inline clients among `conns` (not counted as connected clients).
    inline_conns: usize,
    /// `$SYS` topics among the retained messages.
    sys_retained: usize,
    /// Disconnected sessions with a pending will or a finite expiry.
    timed: HashSet<SessionId>,
    next_session: u64,
    next_assigned: u64,
    last_sys_ms: u64,
    last_sweep_ms: u64,
    scratch: Vec<Target>,
}

/// One subscriber a message goes to.
#[derive(Debug)]
struct Target {
    sid: SessionId,
    shared: bool,
    qos: QoS,
    retain_as_published: bool,
    sub_ids: Vec<NonZeroU32>,
}

impl Broker {
    /// A broker with no sessions. `persistent` says whether state changes
    /// should be recorded as storage operations.
    pub fn new(opts: Options, hooks: Hooks, stats: Arc<Stats>, persistent: bool) -> Self {
        let ack_first = matches!(opts.durability, Durability::AckBeforeCommit { .. });
        Broker {
            opts,
            hooks,
            stats,
            persist: Persist {
                ack_first,
                ..Persist::new(persistent)
            },
            sessions: HashMap::new(),
            by_client_id: HashMap::new(),
            conns: HashMap::new(),
            subs: SubscriptionTree::new(),
            retained: RetainedTree::new(),
            shared_cursor: HashMap::new(),
            inline_conns: 0,
            sys_retained: 0,
            timed: HashSet::new(),
            next_session: 1,
            next_assigned: 1,
            last_sys_ms: 0,
            last_sweep_ms: 0,
            scratch: Vec::new(),
        }
    }

    /// Closes the group of storage operations recorded since the last call,
    /// if any. The caller applies it, then releases the held packets of its
    /// outboxes and decrements [`Broker::commits_in_flight`].
    pub fn take_commit(&mut self) -> Option<Commit> {
        self.persist.take_commit()
    }

    /// Commits taken and not yet released; the commit task decrements it.
    pub fn commits_in_flight(&self) -> Arc<std::sync::atomic::AtomicU64> {
        self.persist.in_flight.clone()
    }

    /// Handles one event.
    pub fn handle(&mut self, event: Event, now_ms: u64) {
        match event {
            Event::Connect {
                conn,
                outbox,
                connect,
                client,
            } => self.connect(conn, outbox, *connect, client, now_ms),
            Event::Packet { conn, packet } => self.packet(conn, packet, now_ms),
            Event::Publish {
                conn,
                publish,
                verdict,
            } => {
                if let Some(&sid) = self.conns.get(&conn) {
                    self.on_publish(conn, sid, publish, verdict, now_ms);
                }
            }
            Event::Subscribe { conn, subscribe } => {
                if let Some(&sid) = self.conns.get(&conn) {
                    self.on_subscribe(conn, sid, subscribe, now_ms);
                }
            }
            Event::Closed { conn, reason } => self.closed(conn, reason, now_ms),
        }
    }

    fn ctx(&mut self, now_ms: u64) -> (Ctx<'_>, &mut HashMap<SessionId, Session>) {
        (
            Ctx {
                persist: &mut self.persist,
                hooks: &self.hooks,
                stats: &self.stats,
                limits: &self.opts.limits,
                now_ms,
            },
            &mut self.sessions,
        )
    }

    // ----- connecting -------------------------------------------------

    fn refuse(outbox: &Outbox, reason: ReasonCode) {
        outbox.push(Packet::ConnAck(ConnAck {
            session_present: false,
            reason,
            properties: ConnAckProperties::default(),
        }));
        outbox.close();
    }

    fn connect(
        &mut self,
        conn: ConnId,
        outbox: Arc<Outbox>,
        c: Connect,
        client: Arc<Client>,
        now_ms: u64,
    ) {
        let v = c.protocol;
        let mut assigned = None;
        let client_id = if c.client_id.is_empty() {
            // 3.1 requires 1-23 characters; 3.1.1 allows an empty id only with
            // Clean Session 1 ([MQTT-3.1.3-8]); 5.0 always gets one assigned.
            if v == ProtocolVersion::V3_1 || (v == ProtocolVersion::V3_1_1 && !c.clean_start) {
                return Self::refuse(&outbox, ReasonCode::ClientIdentifierNotValid);
            }
            let id = loop {
                let id = ByteStr::from(format!(
                    "roost-{:016x}",
                    self.next_assigned ^ now_ms.rotate_left(20)
                ));
                self.next_assigned += 1;
                if !self.by_client_id.contains_key(&id) {
                    break id;
                }
            };
            if v.is_v5() {
                assigned = Some(id.clone());
            }
            id
        } else if c.client_id.len() > self.opts.limits.maximum_client_id_len {
            return Self::refuse(&outbox, ReasonCode::ClientIdentifierNotValid);
        } else {
            c.client_id.clone()
        };
        if c.properties.authentication_method.is_some() {
            // No enhanced authentication method is offered ([MQTT-4.12.0-1]).
            return Self::refuse(&outbox, ReasonCode::BadAuthenticationMethod);
        }
        if let Some(w) = &c.will {
            if too_deep(&w.topic, self.opts.limits.maximum_topic_levels) {
                // 3.x has no fitting return code: close without CONNACK
                // ([MQTT-3.2.2-6]).
                if v.is_v5() {
                    return Self::refuse(&outbox, ReasonCode::TopicNameInvalid);
                }
                return outbox.close();
            }
            if w.qos > self.opts.capabilities.maximum_qos {
                return Self::refuse(&outbox, ReasonCode::QosNotSupported);
            }
            if w.retain && !self.opts.capabilities.retain_available {
                return Self::refuse(&outbox, ReasonCode::RetainNotSupported);
            }
        }

        let requested_expiry = match v {
            ProtocolVersion::V5 => c.properties.session_expiry_interval.unwrap_or(0),
            _ if c.clean_start => 0,
            _ => u32::MAX,
        };
        let expiry = requested_expiry.min(self.opts.capabilities.maximum_session_expiry_interval);

        // Takeover: the old connection is closed as if it had dropped, so its
        // will follows the usual rules ([MQTT-3.1.4-3]).
        let existing = self.by_client_id.get(&client_id).copied();
        if let Some(sid) = existing {
            if let Some(old) = self.sessions.get(&sid).and_then(|s| s.conn.as_ref()) {
                let old_conn = old.id;
                if self.sessions[&sid].protocol.is_v5() {
                    old.outbox.push(Packet::Disconnect(Disconnect {
                        reason: ReasonCode::SessionTakenOver,
                        ..Default::default()
                    }));
                }
                self.detach(old_conn, false, Some(ReasonCode::SessionTakenOver), now_ms);
            }
        }
        // Hooks see the id the client goes by, assigned or its own.
        let client = if client.client_id == client_id {
            client
        } else {
            Arc::new(Client {
                client_id: client_id.clone(),
                ..(*client).clone()
            })
        };
        let (sid, session_present) = match existing {
            Some(sid) if !c.clean_start && self.sessions.contains_key(&sid) => (sid, true),
            other => {
                if let Some(sid) = other {
                    self.end_session(sid, now_ms);
                }
                let sid = SessionId(self.next_session);
                self.next_session += 1;
                self.sessions.insert(sid, Session::new(client.clone()));
                self.by_client_id.insert(client_id.clone(), sid);
                (sid, false)
            }
        };
        self.timed.remove(&sid);
        self.conns.insert(conn, sid);

        let now_s = now_ms;
        let will = c.will.map(|w| Will {
            delay_interval: w.properties.will_delay_interval.unwrap_or(0),
            expiry_interval: w.properties.message_expiry_interval,
            message: Arc::new(
                Message::from_publish(
                    Publish {
                        dup: false,
                        qos_pid: crate::codec::QosPid::AtMostOnce,
                        retain: w.retain,
                        topic: w.topic,
                        payload: w.payload,
                        properties: crate::codec::PublishProperties {
                            payload_format_indicator: w.properties.payload_format_indicator,
                            message_expiry_interval: w.properties.message_expiry_interval,
                            response_topic: w.properties.response_topic,
                            correlation_data: w.properties.correlation_data,
                            user_properties: w.properties.user_properties,
                            content_type: w.properties.content_type,
                            ..Default::default()
                        },
                    },
                    now_s,
                    Some(sid),
                )
                .with_qos(w.qos),
            ),
        });

        let limits = &self.opts.limits;
        let send_quota = c
            .properties
            .receive_maximum
            .map_or(u16::MAX, |r| r.get())
            .min(limits.maximum_inflight)
            .max(1);
        let max_packet_size = c.properties.maximum_packet_size.map(|m| m.get());
        let persist_enabled = self.persist.enabled;
        let session = self.sessions.get_mut(&sid).expect("session inserted above");
        session.protocol = v;
        session.client = client.clone();
        session.expiry_interval = expiry;
        session.disconnected_at_ms = None;
        session.will_due_ms = None;
        session.will = will;
        session.conn = Some(Conn {
            id: conn,
            outbox: outbox.clone(),
            send_quota,
            max_packet_size,
        });
        if persist_enabled {
            if session.is_persistent() {
                session.stored = true;
                self.persist.push(Op::PutSession(session_record(session)));
            } else if session.stored {
                // It was persistent and is not any more.
                session.stored = false;
                self.persist.push(Op::DeleteSession {
                    client_id: session.client_id.as_str().to_owned(),
                });
            }
        }

        let caps = &self.opts.capabilities;
        let (_, server_keep_alive) = effective_keep_alive(&self.opts, v, c.keep_alive);
        let properties = if v.is_v5() {
            ConnAckProperties {
                session_expiry_interval: (expiry != requested_expiry).then_some(expiry),
                receive_maximum: std::num::NonZeroU16::new(limits.receive_maximum),
                maximum_qos: (caps.maximum_qos < QoS::ExactlyOnce).then_some(caps.maximum_qos),
                retain_available: (!caps.retain_available).then_some(false),
                maximum_packet_size: NonZeroU32::new(limits.maximum_packet_size),
                assigned_client_identifier: assigned,
                topic_alias_maximum: (caps.topic_alias_maximum > 0)
                    .then_some(caps.topic_alias_maximum),
                wildcard_subscription_available: (!caps.wildcard_subscriptions).then_some(false),
                subscription_identifiers_available: (!caps.subscription_identifiers)
                    .then_some(false),
                shared_subscription_available: (!caps.shared_subscriptions).then_some(false),
                server_keep_alive,
                ..Default::default()
            }
        } else {
            ConnAckProperties::default()
        };
        outbox.push(Packet::ConnAck(ConnAck {
            session_present,
            reason: ReasonCode::Success,
            properties,
        }));

        if client.inline {
            self.inline_conns += 1;
        } else {
            stats::add(&self.stats.clients_total, 1);
        }
        let connected = self.update_connected_gauge();
        self.stats
            .clients_maximum
            .fetch_max(connected, std::sync::atomic::Ordering::Relaxed);
        self.update_disconnected_gauge();

        if self.hooks.has_events() {
            self.hooks
                .each(|h| h.on_session_established(&client, session_present));
        }
        if session_present {
            let (mut ctx, sessions) = self.ctx(now_ms);
            if let Some(s) = sessions.get_mut(&sid) {
                s.resume(&mut ctx);
            }
        }
    }

    /// Network clients connected now (the inline client is not counted).
    fn update_connected_gauge(&self) -> u64 {
        let connected = self.conns.len().saturating_sub(self.inline_conns) as u64;
        self.stats
            .clients_connected
            .store(connected, std::sync::atomic::Ordering::Relaxed);
        connected
    }

    fn update_disconnected_gauge(&self) {
        let offline = self.sessions.len().saturating_sub(self.conns.len()) as u64;
        self.stats
            .clients_disconnected
            .store(offline, std::sync::atomic::Ordering::Relaxed);
    }

    /// Detaches a connection from its session. `clean` means a normal
    /// DISCONNECT: the will is discarded. Otherwise the will is published
    /// now or scheduled after its delay. `reason` is the DISCONNECT reason
    /// (either side's), for the hooks.
    fn detach(&mut self, conn: ConnId, clean: bool, reason: Option<ReasonCode>, now_ms: u64) {
        let Some(sid) = self.conns.remove(&conn) else {
            return;
        };
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        if let Some(c) = s.conn.take() {
            c.outbox.close();
        }
        // Nobody waits for this session's queue to drain any more.
        s.release_blocked();
        if s.client.inline {
            self.inline_conns = self.inline_conns.saturating_sub(1);
        }
        if clean {
            s.will = None;
        }
        s.disconnected_at_ms = Some(now_ms);
        if let Some(w) = &s.will {
            let delay = w.delay_interval.min(s.expiry_interval);
            s.will_due_ms = Some(now_ms.saturating_add(u64::from(delay) * 1000));
        }
        if self.hooks.has_events() {
            let ends = !s.is_persistent();
            self.hooks
                .each(|h| h.on_disconnect(&s.client, reason, ends));
        }
        if !s.is_persistent() {
            self.end_session(sid, now_ms);
        } else {
            if s.stored {
                let rec = session_record(s);
                self.persist.push(Op::PutSession(rec));
            }
            self.timed.insert(sid);
            // A will with no delay goes out now.
            self.fire_due_will(sid, now_ms);
        }
        self.update_connected_gauge();
        self.update_disconnected_gauge();
    }

    fn fire_due_will(&mut self, sid: SessionId, now_ms: u64) {
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        if s.will_due_ms.is_some_and(|t| t <= now_ms) {
            s.will_due_ms = None;
            if let Some(w) = s.will.take() {
                if s.stored {
                    let rec = session_record(s);
                    self.persist.push(Op::PutSession(rec));
                }
                let client_id = s.client_id.clone();
                self.publish_will(&client_id, w, now_ms);
            }
        }
    }

    fn publish_will(&mut self, client_id: &str, w: Will, now_ms: u64) {
        let w = match self.intercept_will(client_id, w) {
            Some(w) => w,
            None => return,
        };
        let msg = match w.expiry_interval {
            // Restart the expiry clock: it was set at CONNECT time.
            Some(secs) => Arc::new(Message {
                topic: w.message.topic.clone(),
                payload: w.message.payload.clone(),
                qos: w.message.qos,
                retain: w.message.retain,
                properties: w.message.properties.clone(),
                expires_at_ms: Some(now_ms.saturating_add(u64::from(secs) * 1000)),
                publisher: w.message.publisher,
                store_id: Default::default(),
            }),
            None => w.message,
        };
        if msg.retain {
            self.store_retained(&msg, now_ms);
        }
        self.route(&msg, now_ms);
        if self.hooks.has_events() {
            self.hooks.each(|h| h.on_will_sent(client_id, &msg));
        }
    }

    /// Lets the event hooks change or cancel a will.
    fn intercept_will(&self, client_id: &str, w: Will) -> Option<Will> {
        if !self.hooks.has_events() {
            return Some(w);
        }
        let m = &w.message;
        let mut view = WillMessage {
            topic: m.topic.clone(),
            payload: m.payload.clone(),
            qos: m.qos,
            retain: m.retain,
        };
        let mut keep = true;
        self.hooks
            .each(|h| keep = keep && h.on_will(client_id, &mut view));
        if !keep || !topic::valid_name(&view.topic) {
            return None;
        }
        let unchanged = view.topic == m.topic
            && view.payload == m.payload
            && view.qos == m.qos
            && view.retain == m.retain;
        if unchanged {
            return Some(w);
        }
        let message = Arc::new(Message {
            topic: view.topic,
            payload: view.payload,
            qos: view.qos.min(self.opts.capabilities.maximum_qos),
            retain: view.retain && self.opts.capabilities.retain_available,
            properties: m.properties.clone(),
            expires_at_ms: m.expires_at_ms,
            publisher: m.publisher,
            store_id: Default::default(),
        });
        Some(Will { message, ..w })
    }

    /// Ends a session: its pending will goes out, its subscriptions and
    /// queues are dropped, its stored record deleted.
    fn end_session(&mut self, sid: SessionId, now_ms: u64) {
        let Some(mut s) = self.sessions.remove(&sid) else {
            return;
        };
        self.timed.remove(&sid);
        if self.by_client_id.get(&s.client_id) == Some(&sid) {
            self.by_client_id.remove(&s.client_id);
        }
        if let Some(c) = s.conn.take() {
            self.conns.remove(&c.id);
            c.outbox.close();
        }
        s.release_blocked();
        for (filter, _) in s.subscriptions.drain() {
            let (group, plain) = split_shared(&filter);
            self.subs.remove(plain, group, &sid);
        }
        self.stats
            .subscriptions
            .store(self.subs.len() as u64, std::sync::atomic::Ordering::Relaxed);
        {
            let mut ctx = Ctx {
                persist: &mut self.persist,
                hooks: &self.hooks,
                stats: &self.stats,
                limits: &self.opts.limits,
                now_ms,
            };
            s.clear_outbound(&mut ctx);
        }
        if s.stored {
            self.persist.push(Op::DeleteSession {
                client_id: s.client_id.as_str().to_owned(),
            });
        }
        // A will still pending when the session ends is sent now: the
        // earlier of its delay and the session's end ([MQTT-3.1.3-9]).
        if let Some(w) = s.will.take() {
            if s.will_due_ms.is_some() {
                self.publish_will(&s.client_id, w, now_ms);
            }
        }
        self.update_disconnected_gauge();
    }

    fn closed(&mut self, conn: ConnId, reason: CloseReason, now_ms: u64) {
        // The DISCONNECT is queued here, after the CONNACK, never before it
        // ([MQTT-3.2.0-1]).
        match reason {
            CloseReason::ProtocolError(code) => self.protocol_error(conn, code, now_ms),
            CloseReason::Malformed(e) => {
                self.disconnect_with(conn, e.reason_code(), Some(e.to_string()), now_ms)
            }
            CloseReason::KeepAliveTimeout => {
                self.protocol_error(conn, ReasonCode::KeepAliveTimeout, now_ms)
            }
            CloseReason::Lost => self.detach(conn, false, None, now_ms),
        }
    }

    // ----- packets ----------------------------------------------------

    fn packet(&mut self, conn: ConnId, packet: Packet, now_ms: u64) {
        let Some(&sid) = self.conns.get(&conn) else {
            // The connection was refused, taken over or closed: ignore.
            return;
        };
        match packet {
            Packet::Publish(p) => self.on_publish(conn, sid, p, PublishVerdict::Deliver, now_ms),
            Packet::PubAck(r) => {
                let (mut ctx, sessions) = self.ctx(now_ms);
                if let Some(s) = sessions.get_mut(&sid) {
                    s.on_puback(r.packet_id, &mut ctx);
                }
            }
            Packet::PubRec(r) => {
                let (mut ctx, sessions) = self.ctx(now_ms);
                if let Some(s) = sessions.get_mut(&sid) {
                    s.on_pubrec(&r, &mut ctx);
                }
            }
            Packet::PubComp(r) => {
                let (mut ctx, sessions) = self.ctx(now_ms);
                if let Some(s) = sessions.get_mut(&sid) {
                    s.on_pubcomp(r.packet_id, &mut ctx);
                }
            }
            Packet::PubRel(r) => self.on_pubrel(sid, r),
            Packet::Subscribe(sub) => self.on_subscribe(conn, sid, sub.into(), now_ms),
            Packet::Unsubscribe(u) => self.on_unsubscribe(sid, u),
            Packet::PingReq => {
                self.sessions[&sid].send(Packet::PingResp);
            }
            Packet::Disconnect(d) => self.on_disconnect(conn, sid, d, now_ms),
            Packet::Auth(_) => {
                // No enhanced authentication was negotiated, so AUTH is a
                // protocol error ([MQTT-4.12.0-?]; 5.0 §4.12).
                self.protocol_error(conn, ReasonCode::ProtocolError, now_ms);
            }
            Packet::Connect(_) => {
                self.protocol_error(conn, ReasonCode::ProtocolError, now_ms);
            }
            Packet::ConnAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PingResp => {
                // Server-to-client packets from a client.
                self.protocol_error(conn, ReasonCode::ProtocolError, now_ms);
            }
        }
    }

    /// Sends DISCONNECT with `reason` (5.0) and drops the connection; the
    /// will is published ([MQTT-4.13.1-1]).
    pub fn protocol_error(&mut self, conn: ConnId, reason: ReasonCode, now_ms: u64) {
        self.disconnect_with(conn, reason, None, now_ms);
    }

    /// Like [`Broker::protocol_error`], with a reason string. DISCONNECT may
    /// carry one whatever Request Problem Information says ([MQTT-3.1.2-29]).
    fn disconnect_with(
        &mut self,
        conn: ConnId,
        reason: ReasonCode,
        text: Option<String>,
        now_ms: u64,
    ) {
        if let Some(s) = self.conns.get(&conn).and_then(|sid| self.sessions.get(sid)) {
            if s.protocol.is_v5() {
                let mut d = Disconnect {
                    reason,
                    ..Default::default()
                };
                d.properties.reason_string = text.map(ByteStr::from);
                let mut packet = Packet::Disconnect(d);
                let max = s.conn.as_ref().and_then(|c| c.max_packet_size);
                if max.is_some_and(|m| crate::codec::encoded_len(&packet, s.protocol) > m as usize)
                {
                    // [MQTT-3.14.2-3]: leave the reason string out.
                    if let Packet::Disconnect(d) = &mut packet {
                        d.properties.reason_string = None;
                    }
                }
                s.send(packet);
            }
        }
        self.detach(conn, false, Some(reason), now_ms);
    }

    fn on_disconnect(&mut self, conn: ConnId, sid: SessionId, d: Disconnect, now_ms: u64) {
        if let Some(new_expiry) = d.properties.session_expiry_interval {
            let s = &self.sessions[&sid];
            if s.expiry_interval == 0 && new_expiry != 0 {
                // [MQTT-3.14.2-2]
                return self.protocol_error(conn, ReasonCode::ProtocolError, now_ms);
            }
            let capped = new_expiry.min(self.opts.capabilities.maximum_session_expiry_interval);
            if let Some(s) = self.sessions.get_mut(&sid) {
                s.expiry_interval = capped;
            }
        }
        let with_will = d.reason == ReasonCode::DisconnectWithWillMessage;
        self.detach(conn, !with_will, Some(d.reason), now_ms);
    }

    /// Every acknowledgement goes through here: with a persistent store it
    /// waits for the commit of what it acknowledges (the durability
    /// contract: PUBACK/PUBREC mean "this message is safe").
    fn ack(&mut self, sid: SessionId, packet: Packet) {
        let Some(conn) = self.sessions.get(&sid).and_then(|s| s.conn.as_ref()) else {
            return;
        };
        if self.persist.must_hold() {
            conn.outbox.push_held(self.persist.commit, packet);
            self.persist.touched.push(conn.outbox.clone());
        } else {
            conn.outbox.push(packet);
        }
    }

    fn on_publish(
        &mut self,
        conn: ConnId,
        sid: SessionId,
        p: Publish,
        verdict: PublishVerdict,
        now_ms: u64,
    ) {
        stats::add(&self.stats.messages_received, 1);
        let qos = p.qos_pid.qos();
        if too_deep(&p.topic, self.opts.limits.maximum_topic_levels) {
            return self.protocol_error(conn, ReasonCode::TopicNameInvalid, now_ms);
        }
        let caps = &self.opts.capabilities;
        if qos > caps.maximum_qos {
            return self.protocol_error(conn, ReasonCode::QosNotSupported, now_ms);
        }
        if p.retain && !caps.retain_available {
            return self.protocol_error(conn, ReasonCode::RetainNotSupported, now_ms);
        }
        let v5 = self.sessions[&sid].protocol.is_v5();
        let pid = p.qos_pid.packet_id();
        if let (QoS::ExactlyOnce, Some(pid)) = (qos, pid) {
            let s = &self.sessions[&sid];
            if s.inbound_qos2.contains(&pid.get()) {
                // A resent QoS 2 PUBLISH: acknowledge, do not deliver again
                // ([MQTT-4.3.3-9]).
                return self.ack(sid, Packet::PubRec(PubResp::new(pid)));
            }
            if s.inbound_qos2.len() >= usize::from(self.opts.limits.receive_maximum) {
                // [MQTT-3.3.4-9]
                return self.protocol_error(conn, ReasonCode::ReceiveMaximumExceeded, now_ms);
            }
        }
        let mut reason = ReasonCode::Success;
        if p.topic.starts_with("$SYS") {
            // $SYS is the broker's own namespace.
            reason = ReasonCode::NotAuthorized;
        } else if let PublishVerdict::Refuse(code) = verdict {
            reason = code;
        } else if verdict == PublishVerdict::Deliver {
            let msg = Arc::new(Message::from_publish(p, now_ms, Some(sid)));
            if msg.retain {
                self.store_retained(&msg, now_ms);
            }
            let matched = self.route(&msg, now_ms);
            if matched == 0 {
                reason = ReasonCode::NoMatchingSubscribers;
            }
            if self.hooks.has_events() {
                let client = self.sessions.get(&sid).map(|s| s.client.clone());
                self.hooks
                    .each(|h| h.on_published(client.as_deref(), &msg, matched));
            }
        }
        let Some(pid) = pid else { return };
        let mut resp = PubResp::new(pid);
        if v5 {
            resp.reason = reason;
        }
        match qos {
            QoS::AtLeastOnce => self.ack(sid, Packet::PubAck(resp)),
            QoS::ExactlyOnce => {
                if reason.is_success() {
                    if let Some(s) = self.sessions.get_mut(&sid) {
                        s.inbound_qos2.insert(pid.get());
                        if s.stored {
                            let client_id = s.client_id.as_str().to_owned();
                            self.persist.push(Op::PutInboundQos2 {
                                client_id,
                                packet_id: pid.get(),
                            });
                        }
                    }
                }
                self.ack(sid, Packet::PubRec(resp))
            }
            QoS::AtMostOnce => {}
        }
    }

    fn on_pubrel(&mut self, sid: SessionId, r: PubResp) {
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        let mut comp = PubResp::new(r.packet_id);
        if s.inbound_qos2.remove(&r.packet_id.get()) {
            if s.stored {
                let client_id = s.client_id.as_str().to_owned();
                self.persist.push(Op::DeleteInboundQos2 {
                    client_id,
                    packet_id: r.packet_id.get(),
                });
            }
        } else if s.protocol.is_v5() {
            comp.reason = ReasonCode::PacketIdentifierNotFound;
        }
        self.ack(sid, Packet::PubComp(comp));
    }

    // ----- routing ----------------------------------------------------

    /// Delivers `msg` to every matching subscription; returns how many
    /// sessions it went to.
    pub fn route(&mut self, msg: &Arc<Message>, now_ms: u64) -> usize {
        let mut targets = std::mem::take(&mut self.scratch);
        let sessions = &self.sessions;
        let cursors = &mut self.shared_cursor;
        self.subs.for_each_match(&msg.topic, |m| match m {
            Match::Direct { key, value, .. } => {
                if value.options.no_local && msg.publisher == Some(*key) {
                    return; // [MQTT-3.8.3-3]
                }
                targets.push(Target {
                    sid: *key,
                    shared: false,
                    qos: value.options.qos,
                    retain_as_published: value.options.retain_as_published,
                    sub_ids: value.id.into_iter().collect(),
                });
            }
            Match::Shared {
                filter,
                group,
                members,
            } => {
                if members.is_empty() {
                    return;
                }
                let key = format!("{group}/{filter}");
                let cursor = cursors.entry(key.into_boxed_str()).or_insert(0);
                let n = members.len();
                // Round-robin among connected members; queue for an offline
                // member only when none is connected.
                let pick = (0..n)
                    .map(|i| (*cursor + i) % n)
                    .find(|&i| {
                        sessions
                            .get(&members[i].0)
                            .is_some_and(|s| s.conn.is_some())
                    })
                    .unwrap_or(*cursor % n);
                *cursor = (pick + 1) % n;
                let (key, value) = &members[pick];
                targets.push(Target {
                    sid: *key,
                    shared: true,
                    qos: value.options.qos,
                    retain_as_published: value.options.retain_as_published,
                    sub_ids: value.id.into_iter().collect(),
                });
            }
        });
        // Overlapping ordinary subscriptions of one client get one copy at
        // the highest QoS with every identifier ([MQTT-3.3.4-2], [MQTT-3.3.4-3]).
        targets.sort_by_key(|t| (t.sid, t.shared));
        let mut merged: Vec<Target> = Vec::with_capacity(targets.len());
        for t in targets.drain(..) {
            match merged.last_mut() {
                Some(last) if last.sid == t.sid && !last.shared && !t.shared => {
                    last.qos = last.qos.max(t.qos);
                    last.retain_as_published |= t.retain_as_published;
                    last.sub_ids.extend(t.sub_ids);
                }
                _ => merged.push(t),
            }
        }
        self.scratch = targets;
        let count = merged.len();
        let (mut ctx, sessions) = self.ctx(now_ms);
        let mut congested = Vec::new();
        for t in merged {
            let Some(s) = sessions.get_mut(&t.sid) else {
                continue;
            };
            if !ctx.hooks.can_receive(&s.client, msg) {
                continue;
            }
            let qos = msg.qos.min(t.qos);
            // 3.1.1 clears RETAIN on forwarded messages ([MQTT-3.3.1-9]);
            // 5.0 keeps it only with Retain As Published ([MQTT-3.3.1-12]).
            let retain = msg.retain && t.retain_as_published && s.protocol.is_v5();
            let mut sub_ids = t.sub_ids;
            sub_ids.sort_unstable();
            sub_ids.dedup();
            if s.deliver(msg, qos, retain, sub_ids, &mut ctx) {
                congested.push(t.sid);
            }
        }
        if !congested.is_empty() {
            self.slow_down_publisher(msg, &congested);
        }
        count
    }

    /// Backpressure: a connected subscriber's queue is full, so the
    /// publisher's reads pause until it drains (bounded: see
    /// [`Outbox::reads_allowed`]). QoS 1/2 messages are then kept rather
    /// than dropped, and the publisher slows to what its subscribers take.
    fn slow_down_publisher(&mut self, msg: &Message, congested: &[SessionId]) {
        let Some(publisher) = msg.publisher else {
            return;
        };
        let Some(outbox) = self
            .sessions
            .get(&publisher)
            .and_then(|p| p.conn.as_ref())
            .map(|c| c.outbox.clone())
        else {
            return;
        };
        for sid in congested {
            // A client that publishes to itself must keep reading its own
            // acknowledgements.
            if *sid == publisher {
                continue;
            }
            if let Some(s) = self.sessions.get_mut(sid) {
                s.block(&outbox);
            }
        }
    }

    fn store_retained(&mut self, msg: &Arc<Message>, _now_ms: u64) {
        let topic = msg.topic.as_str();
        if msg.payload.is_empty() {
            // An empty retained message clears the topic ([MQTT-3.3.1-6]).
            if self.retained.remove(topic).is_some() {
                self.persist.push(Op::DeleteRetained {
                    topic: topic.to_owned(),
                });
                self.hooks.each(|h| h.on_retained(topic, None));
            }
        } else {
            // Copy out of the read buffer so a long-lived retained message
            // does not pin a whole socket buffer.
            let kept = Arc::new(Message {
                topic: msg.topic.detach(),
                payload: bytes::Bytes::copy_from_slice(&msg.payload),
                qos: msg.qos,
                retain: true,
                properties: msg.properties.clone(),
                expires_at_ms: msg.expires_at_ms,
                publisher: msg.publisher,
                store_id: Default::default(),
            });
            self.persist.push(Op::PutRetained {
                message: message_record(&kept),
            });
            self.hooks.each(|h| h.on_retained(topic, Some(&kept)));
            self.retained.insert(topic, kept);
        }
        self.update_retained_gauge();
    }

    /// Retained messages held for clients (the broker's own `$SYS` topics
    /// are not counted).
    fn update_retained_gauge(&self) {
        let n = self.retained.len().saturating_sub(self.sys_retained);
        self.stats
            .retained
            .store(n as u64, std::sync::atomic::Ordering::Relaxed);
    }

    // ----- subscriptions ----------------------------------------------

    fn on_subscribe(&mut self, conn: ConnId, sid: SessionId, sub: CheckedSubscribe, now_ms: u64) {
        let caps = self.opts.capabilities.clone();
        if sub.subscription_identifier.is_some() && !caps.subscription_identifiers {
            return self.protocol_error(
                conn,
                ReasonCode::SubscriptionIdentifiersNotSupported,
                now_ms,
            );
        }
        let max_subs = self.opts.limits.maximum_subscriptions_per_session;
        let max_levels = self.opts.limits.maximum_topic_levels;
        let mut reasons = Vec::with_capacity(sub.filters.len());
        let mut retained_for: Vec<(ByteStr, SubEntry)> = Vec::new();
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        let v5 = s.protocol.is_v5();
        let watching = self.hooks.has_events();
        let mut names: Vec<ByteStr> = Vec::new();
        for (filter, mut options, verdict) in sub.filters {
            if watching {
                names.push(filter.clone());
            }
            if let Err(code) = verdict {
                reasons.push(code);
                continue;
            }
            if !topic::valid_filter(&filter) {
                // Only a hook can have produced it: the codec checks filters.
                reasons.push(ReasonCode::TopicFilterInvalid);
                continue;
            }
            let parsed = topic::parse_filter(&filter);
            let (group, plain) = match parsed {
                SharedFilter::Plain(f) => (None, f),
                SharedFilter::Shared { group, filter } => (Some(group), filter),
            };
            if too_deep(plain, max_levels) {
                reasons.push(ReasonCode::TopicFilterInvalid);
                continue;
            }
            if group.is_some() && !caps.shared_subscriptions {
                reasons.push(ReasonCode::SharedSubscriptionsNotSupported);
                continue;
            }
            if !caps.wildcard_subscriptions && plain.contains(['+', '#']) {
                reasons.push(ReasonCode::WildcardSubscriptionsNotSupported);
                continue;
            }
            let is_new = !s.subscriptions.contains_key(&filter);
            if is_new && s.subscriptions.len() >= max_subs {
                reasons.push(ReasonCode::QuotaExceeded);
                continue;
            }
            options.qos = options.qos.min(caps.maximum_qos);
            if !v5 {
                options.no_local = false;
                options.retain_as_published = false;
                options.retain_handling = RetainHandling::SendAtSubscribe;
            }
            let entry = SubEntry {
                options,
                id: sub.subscription_identifier,
            };
            s.subscriptions.insert(filter.clone(), entry);
            self.subs.insert(plain, group, sid, entry);
            if s.stored {
                self.persist.push(Op::PutSubscription {
                    client_id: s.client_id.as_str().to_owned(),
                    subscription: subscription_record(&filter, &entry),
                });
            }
            reasons.push(match options.qos {
                QoS::AtMostOnce => ReasonCode::Success,
                QoS::AtLeastOnce => ReasonCode::GrantedQos1,
                QoS::ExactlyOnce => ReasonCode::GrantedQos2,
            });
            // Retained messages go to new ordinary subscriptions, per Retain
            // Handling; never to shared ones ([MQTT-3.8.4-?]; 5.0 §4.8.2).
            let send_retained = group.is_none()
                && match options.retain_handling {
                    RetainHandling::SendAtSubscribe => true,
                    RetainHandling::SendAtSubscribeIfNew => is_new,
                    RetainHandling::DoNotSend => false,
                };
            if send_retained {
                retained_for.push((filter, entry));
            }
        }
        self.stats
            .subscriptions
            .store(self.subs.len() as u64, std::sync::atomic::Ordering::Relaxed);
        if watching {
            let client = self.sessions.get(&sid).map(|s| s.client.clone());
            if let Some(client) = client {
                let done: Vec<(ByteStr, ReasonCode)> =
                    names.into_iter().zip(reasons.iter().copied()).collect();
                self.hooks.each(|h| h.on_subscribed(&client, &done));
            }
        }
        self.ack(
            sid,
            Packet::SubAck(SubAck {
                packet_id: sub.packet_id,
                reasons: reasons.clone(),
                properties: AckProperties::default(),
            }),
        );
        for (filter, entry) in retained_for {
            self.send_retained(sid, &filter, entry, now_ms);
        }
    }

    fn send_retained(&mut self, sid: SessionId, filter: &str, entry: SubEntry, now_ms: u64) {
        let mut found: Vec<Arc<Message>> = Vec::new();
        self.retained.for_each_match(filter, |_, m| {
            if !m.is_expired(now_ms) {
                found.push(m.clone());
            }
        });
        let (mut ctx, sessions) = self.ctx(now_ms);
        let Some(s) = sessions.get_mut(&sid) else {
            return;
        };
        for m in found {
            // The delivery ACL applies to retained messages as to live ones.
            if !ctx.hooks.can_receive(&s.client, &m) {
                continue;
            }
            let qos = m.qos.min(entry.options.qos);
            // Sent because of a new subscription: RETAIN is 1 ([MQTT-3.3.1-8]).
            s.deliver(&m, qos, true, entry.id.into_iter().collect(), &mut ctx);
        }
    }

    fn on_unsubscribe(&mut self, sid: SessionId, u: Unsubscribe) {
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        let mut reasons = Vec::with_capacity(u.filters.len());
        let mut removed = Vec::new();
        for filter in u.filters {
            if s.subscriptions.remove(&filter).is_some() {
                let (group, plain) = split_shared(&filter);
                self.subs.remove(plain, group, &sid);
                if s.stored {
                    self.persist.push(Op::DeleteSubscription {
                        client_id: s.client_id.as_str().to_owned(),
                        filter: filter.as_str().to_owned(),
                    });
                }
                reasons.push(ReasonCode::Success);
                removed.push(filter);
            } else {
                reasons.push(ReasonCode::NoSubscriptionExisted);
            }
        }
        if self.hooks.has_events() && !removed.is_empty() {
            let client = s.client.clone();
            self.hooks.each(|h| h.on_unsubscribed(&client, &removed));
        }
        self.stats
            .subscriptions
            .store(self.subs.len() as u64, std::sync::atomic::Ordering::Relaxed);
        self.ack(
            sid,
            Packet::UnsubAck(UnsubAck {
                packet_id: u.packet_id,
                reasons,
                properties: AckProperties::default(),
            }),
        );
    }

    // ----- time -------------------------------------------------------

    /// Runs what is due: delayed wills, session expiry, retained expiry and
    /// `$SYS` updates. Call about once a second.
    pub fn tick(&mut self, now_ms: u64) {
        let due: Vec<SessionId> = self.timed.iter().copied().collect();
        for sid in due {
            self.fire_due_will(sid, now_ms);
            let Some(s) = self.sessions.get(&sid) else {
                self.timed.remove(&sid);
                continue;
            };
            if s.expiry_interval == u32::MAX {
                // Never expires: once its will is out there is nothing left
                // to time.
                if s.will_due_ms.is_none() || s.conn.is_some() {
                    self.timed.remove(&sid);
                }
                continue;
            }
            if let Some(at) = s.disconnected_at_ms {
                if at.saturating_add(u64::from(s.expiry_interval) * 1000) <= now_ms {
                    if self.hooks.has_events() {
                        let id = s.client_id.clone();
                        self.hooks.each(|h| h.on_session_expired(&id));
                    }
                    self.end_session(sid, now_ms);
                }
            }
        }
        if now_ms.saturating_sub(self.last_sweep_ms) >= 60_000 {
            self.last_sweep_ms = now_ms;
            let mut gone = Vec::new();
            self.retained.retain(|topic, m| {
                let keep = !m.is_expired(now_ms);
                if !keep {
                    gone.push(topic.to_owned());
                }
                keep
            });
            for topic in gone {
                self.hooks.each(|h| h.on_retained_expired(&topic));
                self.persist.push(Op::DeleteRetained { topic });
            }
            self.update_retained_gauge();
        }
        if let Some(every) = self.opts.sys_interval {
            if now_ms.saturating_sub(self.last_sys_ms) >= every.as_millis() as u64 {
                self.last_sys_ms = now_ms;
                self.publish_sys(now_ms);
            }
        }
    }

    /// Closes every connection (v5 clients get DISCONNECT 0x8B).
    pub fn shutdown(&mut self, now_ms: u64) {
        let conns: Vec<ConnId> = self.conns.keys().copied().collect();
        for conn in conns {
            if let Some(s) = self.conns.get(&conn).and_then(|sid| self.sessions.get(sid)) {
                if s.protocol.is_v5() {
                    s.send(Packet::Disconnect(Disconnect {
                        reason: ReasonCode::ServerShuttingDown,
                        ..Default::default()
                    }));
                }
                if let Some(c) = &s.conn {
                    c.outbox.close();
                }
            }
            // Wills are not published on shutdown: the session is kept and
            // the broker comes back ([MQTT-3.1.2-10] allows either).
            let Some(sid) = self.conns.remove(&conn) else {
                continue;
            };
            if let Some(s) = self.sessions.get_mut(&sid) {
                s.conn = None;
                s.disconnected_at_ms = Some(now_ms);
                if s.stored {
                    let rec = session_record(s);
                    self.persist.push(Op::PutSession(rec));
                }
            }
        }
    }
}

impl Message {
    fn with_qos(mut self, qos: QoS) -> Self {
        self.qos = qos;
        self
    }
}

/// More than `max` levels: the topic trees walk levels recursively, so an
/// unbounded depth would let one packet overflow the broker's stack.
fn too_deep(topic: &str, max: usize) -> bool {
    // Cheap when short: n bytes hold at most n + 1 levels.
    topic.len() >= max && topic.bytes().filter(|&b| b == b'/').count() >= max
}

/// Splits a subscribed filter into (share group, plain filter).
fn split_shared(filter: &str) -> (Option<&str>, &str) {
    match topic::parse_filter(filter) {
        SharedFilter::Plain(f) => (None, f),
        SharedFilter::Shared { group, filter } => (Some(group), filter),
    }
}

fn session_record(s: &Session) -> SessionRecord {
    SessionRecord {
        client_id: s.client_id.as_str().to_owned(),
        protocol_level: s.protocol.level(),
        expiry_interval: s.expiry_interval,
        disconnected_at_ms: s.disconnected_at_ms,
        will: s.will.as_ref().map(|w| WillRecord {
            message: message_record(&w.message),
            delay_interval: w.delay_interval,
            message_expiry_interval: w.expiry_interval,
        }),
    }
}

fn subscription_record(filter: &str, e: &SubEntry) -> SubscriptionRecord {
    SubscriptionRecord {
        filter: filter.to_owned(),
        qos: e.options.qos as u8,
        no_local: e.options.no_local,
        retain_as_published: e.options.retain_as_published,
        retain_handling: e.options.retain_handling as u8,
        subscription_identifier: e.id.map(|i| i.get()),
    }
}
