//! The client side of one bridge connection, sans-IO.
//!
//! [`Link`] takes the packets the remote broker sends and the current time
//! (milliseconds from any fixed origin), and queues packets to send
//! ([`Link::poll_transmit`]) and [`Event`]s for its driver
//! ([`Link::poll_event`]). The driver owns the socket, the clock, the store
//! and the local broker; the link owns the protocol: packet ids, the QoS 1
//! and 2 flows in both directions, resumption after a reconnect, keep alive.
//!
//! Outgoing packet ids come from one of two places:
//! - [`Link::send_as`]: the caller's own id. The bridge driver passes the
//!   local session's packet id, which the local broker has stored already
//!   (with the QoS 2 state), so nothing new is persisted before the PUBLISH
//!   leaves, and after a restart the local session resends under the same
//!   ids with DUP=1. The caller keeps its ids unique (its in-flight window
//!   is at most `max_inflight`); the link refuses an id it still holds, and
//!   the SUBSCRIBE's id, rather than letting two flows share it;
//! - [`Link::send`]: the link allocates the id and reports
//!   [`Event::Assigned`], for a caller with no stored id of its own.
//!
//! Durability handshakes (the driver persists, then tells the link):
//! - an outgoing QoS 2 PUBLISH from [`Link::send`] leaves only after
//!   [`Event::Assigned`] has been stored and [`Link::assign_ready`] called,
//!   so a restart resends it under the same packet id and the remote drops
//!   the duplicate ([`Link::send_as`] ids are stored before the call);
//! - its PUBREL leaves only after [`Event::Released`] has been stored and
//!   [`Link::release_ready`] called, so a restart never resends a PUBLISH the
//!   remote has already taken responsibility for;
//! - an inbound QoS 1/2 PUBLISH ([`Event::Received`]) is acknowledged only
//!   when the driver calls [`Link::ack_inbound`] after the local commit.
//!
//! The link object outlives connections: after [`Event::Closed`] (or a lost
//! socket) the driver calls [`Link::connect`] again and the flows resume.
//! After a restart the caller resumes from its own stored state: it resends
//! with [`Link::send_as`] (DUP) and reports releases owed with
//! [`Link::released`]; a PUBREL for an inbound id the link forgot is
//! answered and reported ([`Event::InboundDone`]), for the caller's store
//! may still hold it.

use crate::codec::RetainHandling;
use crate::codec::{
    ByteStr, ConnAck, Connect, Disconnect, Packet, PacketId, ProtocolVersion, PubResp, Publish,
    PublishProperties, QoS, QosPid, ReasonCode, SubAck, Subscribe, SubscriptionOptions,
};
use bytes::Bytes;
use std::collections::{HashMap, VecDeque};

/// The driver's handle for an outgoing message (its store id, say; with
/// [`Link::send_as`] the packet id itself does).
pub(crate) type Token = u64;

/// What a link is built from: the bridge's configuration, as plain values.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Settings {
    pub(crate) client_id: String,
    /// 3.1.1 or 5.0.
    pub(crate) protocol: ProtocolVersion,
    /// Seconds; 0 turns keep alive off.
    pub(crate) keep_alive: u16,
    /// Seconds the remote keeps the session after a disconnect (5.0; a
    /// 3.1.1 remote keeps it until the client connects with Clean Session).
    pub(crate) session_expiry: u32,
    pub(crate) username: Option<String>,
    pub(crate) password: Option<Bytes>,
    /// Outgoing QoS 1/2 messages in flight at once (at least 1).
    pub(crate) max_inflight: u16,
    /// Filters subscribed at the remote, with their maximum QoS.
    pub(crate) subscriptions: Vec<(String, QoS)>,
    /// Inbound QoS 1/2 messages the remote may have unacknowledged at once
    /// (5.0: CONNECT's Receive Maximum).
    pub(crate) receive_maximum: u16,
    /// The largest packet we take (5.0: CONNECT's Maximum Packet Size, so
    /// the remote drops what we could not read instead of sending it).
    pub(crate) maximum_packet_size: u32,
}

/// An outgoing message without its QoS, packet id or DUP flag, which the
/// link decides.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Outgoing {
    pub(crate) topic: ByteStr,
    pub(crate) payload: Bytes,
    pub(crate) retain: bool,
    /// 5.0 properties; a 3.1.1 remote never sees them.
    pub(crate) properties: PublishProperties,
}

/// What the driver learns from the link.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Event {
    /// CONNACK accepted the connection. Without a session present the remote
    /// lost its state: the driver forgets stored inbound QoS 2 ids.
    Connected { session_present: bool },
    /// [`Link::send`] gave `token` `packet_id`; store it. A QoS 2 PUBLISH
    /// waits for [`Link::assign_ready`], a QoS 1 one has left already.
    /// Never sent for [`Link::send_as`], whose ids the caller chose.
    Assigned { token: Token, packet_id: PacketId },
    /// The remote has the message (PUBACK, PUBCOMP; QoS 0: handed to the
    /// transport); the driver removes it from its queue.
    Delivered { token: Token },
    /// The remote refused the message (PUBACK or PUBREC with an error
    /// code); the flow is over and will not be retried by the link.
    Rejected { token: Token, reason: ReasonCode },
    /// PUBREC: store `token` as released, then call [`Link::release_ready`].
    Released { token: Token, packet_id: PacketId },
    /// An inbound message; QoS 1/2 await [`Link::ack_inbound`].
    Received { publish: Publish },
    /// The remote released an inbound QoS 2 id (PUBREL): the driver may
    /// forget it.
    InboundDone { packet_id: PacketId },
    /// The remote refused a subscription.
    SubscribeFailed { filter: ByteStr, reason: ReasonCode },
    /// The connection is over; close the socket (after writing what
    /// [`Link::poll_transmit`] still has) and reconnect after a backoff.
    Closed(LinkError),
}

/// Why a connection ended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum LinkError {
    #[error("connection refused by the remote: {0:?} (0x{code:02X})", code = *.0 as u8)]
    Refused(ReasonCode),
    #[error("disconnected by the remote: {0:?} (0x{code:02X})", code = *.0 as u8)]
    Disconnected(ReasonCode),
    #[error("protocol violation by the remote: {0}")]
    Protocol(&'static str),
    #[error("nothing heard from the remote within 1.5 times the keep alive")]
    KeepAliveTimeout,
}

/// Why [`Link::send`] or [`Link::send_as`] did not take a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SendError {
    #[error("as many messages in flight as allowed")]
    Full,
    #[error("not connected")]
    NotConnected,
    /// [`Link::send_as`] with an id another flow of the link holds: an
    /// unfinished PUBLISH (other than a DUP resend of the same message) or
    /// the SUBSCRIBE awaiting its SUBACK. Two flows under one id would
    /// break [MQTT-2.2.1-3]; the SUBSCRIBE's id is free again after the
    /// SUBACK (or on the next connection).
    #[error("packet id in use by another flow")]
    IdInUse,
    /// The message, as a PUBLISH, is larger than the remote's Maximum
    /// Packet Size: it would close the connection, again at every resend.
    #[error("larger than the remote's maximum packet size")]
    TooLarge,
}

/// The phase of an outgoing QoS 1/2 message.
#[derive(Debug)]
enum Stage {
    /// QoS 2: waiting for the driver to store the packet id.
    Assigning(Outgoing),
    /// The PUBLISH may go, or went.
    Publish(Outgoing),
    /// PUBREC received: waiting for the driver to store "released".
    Releasing,
    /// Stored as released: the PUBREL may go, or went.
    Released,
}

#[derive(Debug)]
struct Entry {
    token: Token,
    packet_id: PacketId,
    exactly_once: bool,
    stage: Stage,
    /// The remote counts it against its Receive Maximum on this connection
    /// (its PUBLISH went, or it was released before).
    counted: bool,
    /// Its PUBLISH may have reached the remote before (DUP on resend).
    sent_before: bool,
}

/// An inbound QoS 1/2 packet id the link remembers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Inbound {
    /// QoS 1, delivered, waiting for the local commit.
    AtLeastOnce,
    /// QoS 2, delivered, waiting for the local commit.
    Pending,
    /// QoS 2, PUBREC sent: a resent PUBLISH is not delivered again.
    Acknowledged,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Idle,
    Connecting,
    Connected,
}

/// The client side of a bridge connection. See the module docs.
#[derive(Debug)]
pub(crate) struct Link {
    settings: Settings,
    state: State,
    /// Unfinished outgoing QoS 1/2 messages, in the order they were sent
    /// (order is kept per bridge). Lookups scan it: it holds at most
    /// `max_inflight` entries (typically 100).
    out: VecDeque<Entry>,
    inbound: HashMap<PacketId, Inbound>,
    /// The last packet id handed out; the next search starts after it.
    last_id: u16,
    /// The SUBSCRIBE in flight, whose id no PUBLISH may take.
    subscribe: Option<PacketId>,
    /// A SUBSCRIBE went on some connection of this link.
    subscribed: bool,
    // Limits from CONNACK (5.0).
    receive_maximum: u16,
    maximum_qos: QoS,
    retain_available: bool,
    maximum_packet_size: u32,
    // Keep alive, in milliseconds; 0: off.
    keep_alive: u64,
    last_sent: u64,
    last_received: u64,
    ping_outstanding: bool,
    transmit: VecDeque<Packet>,
    events: VecDeque<Event>,
}

impl Link {
    /// A link that is not connected yet.
    pub(crate) fn new(settings: Settings) -> Self {
        Link {
            settings,
            state: State::Idle,
            out: VecDeque::new(),
            inbound: HashMap::new(),
            last_id: 0,
            subscribe: None,
            subscribed: false,
            receive_maximum: u16::MAX,
            maximum_qos: QoS::ExactlyOnce,
            retain_available: true,
            maximum_packet_size: u32::MAX,
            keep_alive: 0,
            last_sent: 0,
            last_received: 0,
            ping_outstanding: false,
            transmit: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// The protocol version to encode and decode with.
    pub(crate) fn protocol(&self) -> ProtocolVersion {
        self.settings.protocol
    }

    /// True between an accepting CONNACK and the end of the connection.
    pub(crate) fn is_connected(&self) -> bool {
        self.state == State::Connected
    }

    /// Starts a connection: the CONNECT to send first (Clean Start 0, so
    /// the remote keeps the session). Forgets what the last connection had
    /// still to send.
    pub(crate) fn connect(&mut self, now: u64) -> Connect {
        let s = &self.settings;
        self.state = State::Connecting;
        self.transmit.clear();
        self.subscribe = None;
        self.receive_maximum = u16::MAX;
        self.maximum_qos = QoS::ExactlyOnce;
        self.retain_available = true;
        self.maximum_packet_size = u32::MAX;
        self.keep_alive = u64::from(s.keep_alive) * 1000;
        self.last_sent = now;
        self.last_received = now;
        self.ping_outstanding = false;
        for e in &mut self.out {
            e.counted = false;
        }
        let mut c = Connect::new(s.protocol, s.client_id.as_str())
            .with_clean_start(false)
            .with_keep_alive(s.keep_alive);
        match (&s.username, s.protocol.is_v5()) {
            (Some(user), _) => c = c.with_credentials(user.as_str(), s.password.clone()),
            // 5.0 allows a password alone; 3.1.1 does not ([MQTT-3.1.2-22]).
            (None, true) => c.password = s.password.clone(),
            (None, false) => {}
        }
        if s.protocol.is_v5() {
            c.properties.session_expiry_interval = Some(s.session_expiry);
            c.properties.receive_maximum = std::num::NonZeroU16::new(s.receive_maximum);
            c.properties.maximum_packet_size = std::num::NonZeroU32::new(s.maximum_packet_size);
        }
        c
    }

    /// Queues a DISCONNECT (normal disconnection; the remote keeps the
    /// session) and ends the connection. What was queued before it still
    /// goes: acknowledgements dropped here would have the remote send their
    /// messages again.
    pub(crate) fn disconnect(&mut self) {
        if self.state != State::Idle {
            self.transmit
                .push_back(Packet::Disconnect(Disconnect::new(ReasonCode::Success)));
            self.state = State::Idle;
        }
    }

    /// The connection was lost (the socket closed or failed) without a
    /// DISCONNECT either way: nothing more is sent on it, and the flows
    /// resume on the next [`Link::connect`].
    pub(crate) fn lost(&mut self) {
        self.transmit.clear();
        self.state = State::Idle;
    }

    /// What both sends do first: refuse while not connected, fit the
    /// message to what the remote supports, and send it at once at QoS 0
    /// (`None`: done). Else the message and its QoS, for a packet id.
    fn admit(
        &mut self,
        token: Token,
        mut msg: Outgoing,
        qos: QoS,
    ) -> Result<Option<(Outgoing, QoS)>, SendError> {
        if self.state != State::Connected {
            return Err(SendError::NotConnected);
        }
        // A remote without retain support disconnects a retained PUBLISH
        // ([MQTT-3.3.1-8]): it gets the message, not the flag.
        msg.retain &= self.retain_available;
        let qos = qos.min(self.maximum_qos);
        if self.maximum_packet_size != u32::MAX {
            // Sized as sent at QoS 1/2 (a packet id more than QoS 0).
            let p = publish(msg.clone(), QosPid::AtLeastOnce(PacketId::MIN), false);
            let len = crate::codec::encoded_len(&Packet::Publish(p), self.settings.protocol);
            if len > self.maximum_packet_size as usize {
                return Err(SendError::TooLarge);
            }
        }
        if qos == QoS::AtMostOnce {
            // DUP is 0 at QoS 0 ([MQTT-3.3.1-2]).
            self.transmit
                .push_back(Packet::Publish(publish(msg, QosPid::AtMostOnce, false)));
            self.events.push_back(Event::Delivered { token });
            return Ok(None);
        }
        Ok(Some((msg, qos)))
    }

    /// Forwards a message at `qos` (lowered to the remote's Maximum QoS).
    /// QoS 0 leaves at once and is [`Event::Delivered`]; QoS 1/2 get a
    /// packet id ([`Event::Assigned`]) and count against the in-flight limit.
    pub(crate) fn send(&mut self, token: Token, msg: Outgoing, qos: QoS) -> Result<(), SendError> {
        let Some((msg, qos)) = self.admit(token, msg, qos)? else {
            return Ok(());
        };
        if self.out.len() >= usize::from(self.limit()) {
            return Err(SendError::Full);
        }
        let packet_id = self.allocate().ok_or(SendError::Full)?;
        let exactly_once = qos == QoS::ExactlyOnce;
        self.out.push_back(Entry {
            token,
            packet_id,
            exactly_once,
            stage: if exactly_once {
                Stage::Assigning(msg)
            } else {
                Stage::Publish(msg)
            },
            counted: false,
            sent_before: false,
        });
        self.events.push_back(Event::Assigned { token, packet_id });
        self.pump();
        Ok(())
    }

    /// Forwards a message at `qos` (lowered to the remote's Maximum QoS)
    /// under the caller's `packet_id`, already stored by the caller: QoS 2
    /// leaves without [`Event::Assigned`] and [`Link::assign_ready`]; the
    /// flow then goes on as for [`Link::send`] ([`Event::Released`],
    /// [`Link::release_ready`], [`Event::Delivered`], all with `token`). At
    /// QoS 0 the id is unused. `dup` marks a message the remote may have had
    /// before (the caller's resend after a restart): its QoS 1/2 PUBLISH has
    /// DUP=1. A caller resuming after a restart reports the ids it stored
    /// as released (PUBREL owed) with [`Link::released`].
    ///
    /// An id the link still holds is [`SendError::IdInUse`], except a DUP
    /// resend of the same message (same token, QoS and content, its PUBREC
    /// not received yet), which is accepted: the link resends it with DUP=1
    /// on the next connection, and not again on this one if it went already
    /// (MQTT resends only on a reconnect, [MQTT-4.4.0-1] in 5.0).
    ///
    /// Up to `max_inflight` messages are taken even when the remote's
    /// Receive Maximum is lower (the rest wait in order), so a restarted
    /// caller can resend its whole window.
    pub(crate) fn send_as(
        &mut self,
        token: Token,
        packet_id: PacketId,
        msg: Outgoing,
        qos: QoS,
        dup: bool,
    ) -> Result<(), SendError> {
        let Some((msg, qos)) = self.admit(token, msg, qos)? else {
            return Ok(());
        };
        let exactly_once = qos == QoS::ExactlyOnce;
        if self.subscribe == Some(packet_id) {
            return Err(SendError::IdInUse);
        }
        if let Some(i) = self.entry(packet_id) {
            let e = &mut self.out[i];
            let same = match &e.stage {
                Stage::Assigning(m) | Stage::Publish(m) => {
                    e.token == token && e.exactly_once == exactly_once && *m == msg
                }
                Stage::Releasing | Stage::Released => false,
            };
            if !(dup && same) {
                return Err(SendError::IdInUse);
            }
            if let Stage::Assigning(_) = e.stage {
                // The caller has stored the id: no need to wait.
                self.assign_ready(token);
            }
            return Ok(());
        }
        if self.out.len() >= usize::from(self.settings.max_inflight.max(1)) {
            return Err(SendError::Full);
        }
        self.out.push_back(Entry {
            token,
            packet_id,
            exactly_once,
            stage: Stage::Publish(msg),
            counted: false,
            sent_before: dup,
        });
        self.pump();
        Ok(())
    }

    /// The driver stored `token`'s packet id: its QoS 2 PUBLISH may go.
    pub(crate) fn assign_ready(&mut self, token: Token) {
        if let Some(e) = self.out.iter_mut().find(|e| e.token == token) {
            if let Stage::Assigning(_) = e.stage {
                let Stage::Assigning(m) = std::mem::replace(&mut e.stage, Stage::Released) else {
                    unreachable!("matched above")
                };
                e.stage = Stage::Publish(m);
                self.pump();
            }
        }
    }

    /// The driver stored `token` as released: its PUBREL may go.
    pub(crate) fn release_ready(&mut self, token: Token) {
        let connected = self.state == State::Connected;
        if let Some(e) = self.out.iter_mut().find(|e| e.token == token) {
            if let Stage::Releasing = e.stage {
                e.stage = Stage::Released;
                if connected && e.counted {
                    let pubrel = Packet::PubRel(PubResp::new(e.packet_id));
                    self.transmit.push_back(pubrel);
                }
            }
        }
    }

    /// The caller stored `token` (sent under `packet_id`) as released: its
    /// PUBREL may go. Unlike [`Link::release_ready`] it also takes a flow
    /// the link does not know, as when the caller learns after a restart
    /// that a message it had released still owes the remote its PUBREL
    /// (the link then sends it once connected, or at once if it is).
    pub(crate) fn released(&mut self, token: Token, packet_id: PacketId) {
        if self.entry(packet_id).is_some() {
            return self.release_ready(token);
        }
        self.out.push_back(Entry {
            token,
            packet_id,
            exactly_once: true,
            stage: Stage::Released,
            counted: false,
            sent_before: true,
        });
        self.pump();
    }

    /// The local commit holds the inbound message `packet_id`: acknowledge
    /// it (PUBACK for QoS 1, PUBREC for QoS 2). Offline, a QoS 1 id is
    /// forgotten (the remote resends it: at least once) and a QoS 2 one is
    /// remembered as acknowledged (its resend is answered, not delivered).
    pub(crate) fn ack_inbound(&mut self, packet_id: PacketId) {
        let connected = self.state == State::Connected;
        match self.inbound.get(&packet_id) {
            Some(Inbound::AtLeastOnce) => {
                self.inbound.remove(&packet_id);
                if connected {
                    self.transmit
                        .push_back(Packet::PubAck(PubResp::new(packet_id)));
                }
            }
            Some(Inbound::Pending) => {
                self.inbound.insert(packet_id, Inbound::Acknowledged);
                if connected {
                    self.transmit
                        .push_back(Packet::PubRec(PubResp::new(packet_id)));
                }
            }
            Some(Inbound::Acknowledged) | None => {}
        }
    }

    /// The caller could not take inbound `packet_id` (its store refused
    /// it): no acknowledgement goes, and the link forgets the id, so that
    /// the remote's resend (on the next connection: end this one) is
    /// delivered again rather than taken for a duplicate.
    pub(crate) fn forget_inbound(&mut self, packet_id: PacketId) {
        if self.inbound.get(&packet_id) != Some(&Inbound::Acknowledged) {
            self.inbound.remove(&packet_id);
        }
    }

    /// The next packet to write, if any; `now` is when it is written (keep
    /// alive counts from our last packet).
    pub(crate) fn poll_transmit(&mut self, now: u64) -> Option<Packet> {
        let p = self.transmit.pop_front()?;
        self.last_sent = now;
        Some(p)
    }

    /// The next event for the driver, if any.
    pub(crate) fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Link::on_timeout`] is due, if keep alive runs.
    pub(crate) fn next_timeout(&self) -> Option<u64> {
        if self.keep_alive == 0 || self.state == State::Idle {
            return None;
        }
        let dead = self.last_received + self.keep_alive * 3 / 2;
        if self.state == State::Connecting || self.ping_outstanding {
            return Some(dead);
        }
        // Ping after a keep alive of silence either way: ours is what the
        // spec asks for; theirs keeps a send-only link (QoS 0) from being
        // declared dead while a ping would have kept it alive.
        let ping = self.last_sent.min(self.last_received) + self.keep_alive;
        Some(ping.min(dead))
    }

    /// Time passed: sends a PINGREQ, or ends a connection whose remote has
    /// been silent for 1.5 times the keep alive (the CONNACK included).
    pub(crate) fn on_timeout(&mut self, now: u64) {
        if self.keep_alive == 0 || self.state == State::Idle {
            return;
        }
        if now >= self.last_received + self.keep_alive * 3 / 2 {
            self.close(LinkError::KeepAliveTimeout, None);
        } else if self.state == State::Connected
            && !self.ping_outstanding
            && now >= self.last_sent.min(self.last_received) + self.keep_alive
        {
            self.transmit.push_back(Packet::PingReq);
            self.ping_outstanding = true;
        }
    }

    /// A packet from the remote.
    pub(crate) fn on_packet(&mut self, packet: Packet, now: u64) {
        if self.state == State::Idle {
            return;
        }
        self.last_received = now;
        self.ping_outstanding = false;
        match (self.state, packet) {
            (State::Connecting, Packet::ConnAck(ack)) => self.on_connack(ack),
            (_, Packet::Disconnect(d)) => {
                // No DISCONNECT back ([MQTT-3.14.2-1] binds the sender).
                self.close(LinkError::Disconnected(d.reason), None)
            }
            (State::Connecting, _) => self.protocol_error("a packet other than CONNACK first"),
            (State::Connected, Packet::ConnAck(_)) => self.protocol_error("a second CONNACK"),
            (_, Packet::Publish(p)) => self.on_publish(p),
            (_, Packet::PubAck(r)) => self.on_puback(r),
            (_, Packet::PubRec(r)) => self.on_pubrec(r),
            (_, Packet::PubRel(r)) => self.on_pubrel(r),
            (_, Packet::PubComp(r)) => self.on_pubcomp(r),
            (_, Packet::SubAck(a)) => self.on_suback(a),
            (_, Packet::PingResp) => {}
            // We never UNSUBSCRIBE, never start AUTH, and a server sends no
            // CONNECT, SUBSCRIBE, UNSUBSCRIBE or PINGREQ.
            (_, _) => self.protocol_error("a packet a server does not send to this client"),
        }
    }

    fn on_connack(&mut self, ack: ConnAck) {
        if !ack.reason.is_success() {
            self.state = State::Idle;
            self.events
                .push_back(Event::Closed(LinkError::Refused(ack.reason)));
            return;
        }
        let p = &ack.properties;
        self.receive_maximum = p.receive_maximum.map_or(u16::MAX, |n| n.get());
        self.maximum_qos = p.maximum_qos.unwrap_or(QoS::ExactlyOnce);
        self.retain_available = p.retain_available.unwrap_or(true);
        self.maximum_packet_size = p.maximum_packet_size.map_or(u32::MAX, |n| n.get());
        if let Some(seconds) = p.server_keep_alive {
            // The server's value wins ([MQTT-3.2.2-21]).
            self.keep_alive = u64::from(seconds) * 1000;
        }
        self.state = State::Connected;
        let session_present = ack.session_present;
        self.events.push_back(Event::Connected { session_present });
        if !session_present {
            // The remote lost the session: it resends nothing inbound, and
            // our PUBLISHes are new to it (ids kept, DUP 0). A QoS 2 message
            // it had taken before the loss may arrive twice there; nothing
            // on this side can prevent that.
            self.inbound.clear();
            for e in &mut self.out {
                e.sent_before = false;
            }
        }
        self.pump();
        // Subscribed whenever the remote lost the session, and otherwise:
        // 5.0 on every connection (a rule added since is subscribed too; a
        // remote that kept the session takes the rest as a no-op, and
        // Retain Handling 1 sends no retained message again); 3.1.1 on the
        // link's first connection only, as its remote sends the retained
        // messages again at every SUBSCRIBE (a retained command replayed
        // at each flap of the link), and rules change only with a restart.
        let resubscribe = self.settings.protocol.is_v5() || !self.subscribed;
        if (!session_present || resubscribe) && !self.settings.subscriptions.is_empty() {
            self.subscribed = true;
            self.send_subscribe();
        }
    }

    /// Sends what may go, in order: PUBRELs for released entries the remote
    /// does not count yet, and PUBLISHes while the in-flight limit allows.
    /// A QoS 2 message still waiting for its id to be stored holds back the
    /// ones after it, so they reach the remote in order.
    fn pump(&mut self) {
        if self.state != State::Connected {
            return;
        }
        let limit = usize::from(self.limit());
        let mut counted = self.out.iter().filter(|e| e.counted).count();
        let mut blocked = false;
        for e in self.out.iter_mut().filter(|e| !e.counted) {
            match &e.stage {
                // The remote has the message and counts it, whatever the
                // limit says now (it may have lowered Receive Maximum).
                Stage::Releasing => {
                    e.counted = true;
                    counted += 1;
                }
                Stage::Released => {
                    e.counted = true;
                    counted += 1;
                    self.transmit
                        .push_back(Packet::PubRel(PubResp::new(e.packet_id)));
                }
                Stage::Assigning(_) => blocked = true,
                Stage::Publish(m) if !blocked && counted < limit => {
                    let qos_pid = if e.exactly_once {
                        QosPid::ExactlyOnce(e.packet_id)
                    } else {
                        QosPid::AtLeastOnce(e.packet_id)
                    };
                    let p = publish(m.clone(), qos_pid, e.sent_before);
                    self.transmit.push_back(Packet::Publish(p));
                    e.counted = true;
                    e.sent_before = true;
                    counted += 1;
                }
                Stage::Publish(_) => blocked = true,
            }
        }
    }

    fn send_subscribe(&mut self) {
        // From the top down, apart from the ids [`Link::send`] hands out
        // upwards and a caller's low ids, so that a restarted caller's
        // resends rarely meet [`SendError::IdInUse`].
        let Some(packet_id) = (1..=u16::MAX)
            .rev()
            .filter_map(PacketId::new)
            .find(|&pid| self.entry(pid).is_none())
        else {
            return;
        };
        let v5 = self.settings.protocol.is_v5();
        let filters = self
            .settings
            .subscriptions
            .iter()
            .map(|(f, q)| {
                let mut o = SubscriptionOptions::new(*q);
                if v5 {
                    // Nothing we forward comes back; retain flags are kept;
                    // a resumed subscription does not replay retained ones.
                    o = o
                        .with_no_local(true)
                        .with_retain_as_published(true)
                        .with_retain_handling(RetainHandling::SendAtSubscribeIfNew);
                }
                (ByteStr::from(f.as_str()), o)
            })
            .collect();
        self.subscribe = Some(packet_id);
        self.transmit
            .push_back(Packet::Subscribe(Subscribe::new(packet_id, filters)));
    }

    fn on_suback(&mut self, ack: SubAck) {
        if self.subscribe != Some(ack.packet_id) {
            return self.protocol_error("SUBACK for a packet id with no SUBSCRIBE");
        }
        self.subscribe = None;
        let subs = &self.settings.subscriptions;
        if ack.reasons.len() != subs.len() {
            // [MQTT-3.9.3-1]: one reason per filter.
            return self.protocol_error("SUBACK with a reason count unlike the SUBSCRIBE's");
        }
        for ((filter, _), reason) in subs.iter().zip(ack.reasons) {
            if !reason.is_success() {
                self.events.push_back(Event::SubscribeFailed {
                    filter: filter.as_str().into(),
                    reason,
                });
            }
        }
    }

    fn on_publish(&mut self, p: Publish) {
        if p.properties.topic_alias.is_some() {
            // We announce no Topic Alias Maximum, so 0 ([MQTT-3.2.2-18]
            // mirrored for the server, 3.3.2.3.4).
            self.close(
                LinkError::Protocol("a topic alias, none allowed"),
                Some(ReasonCode::TopicAliasInvalid),
            );
            return;
        }
        let deliver = match p.qos_pid {
            QosPid::AtMostOnce => true,
            QosPid::AtLeastOnce(id) => match self.inbound.get(&id) {
                // A resend of one still waiting for the commit.
                Some(Inbound::AtLeastOnce) => false,
                Some(_) => return self.protocol_error("QoS 1 PUBLISH with a QoS 2 id in use"),
                None => {
                    self.inbound.insert(id, Inbound::AtLeastOnce);
                    true
                }
            },
            QosPid::ExactlyOnce(id) => match self.inbound.get(&id) {
                None => {
                    self.inbound.insert(id, Inbound::Pending);
                    true
                }
                // Delivered already; its PUBREC goes after the commit.
                Some(Inbound::Pending) => false,
                // Delivered and acknowledged: only the PUBREC again.
                Some(Inbound::Acknowledged) => {
                    self.transmit.push_back(Packet::PubRec(PubResp::new(id)));
                    false
                }
                Some(Inbound::AtLeastOnce) => {
                    return self.protocol_error("QoS 2 PUBLISH with a QoS 1 id in use")
                }
            },
        };
        if deliver {
            self.events.push_back(Event::Received { publish: p });
        }
    }

    fn on_pubrel(&mut self, r: PubResp) {
        let id = r.packet_id;
        match self.inbound.get(&id) {
            Some(Inbound::Acknowledged) => {
                self.inbound.remove(&id);
                self.transmit.push_back(Packet::PubComp(PubResp::new(id)));
                self.events.push_back(Event::InboundDone { packet_id: id });
            }
            Some(_) => self.protocol_error("PUBREL before our PUBREC"),
            // Completed before (a resent PUBREL) or lost: answer so the
            // remote can finish (4.3.3, [MQTT-4.3.3-11] for 5.0's code).
            // The driver hears of it too: after a restart the local
            // session may still hold the id the link has forgotten.
            None => {
                self.transmit.push_back(Packet::PubComp(
                    PubResp::new(id).with_reason(ReasonCode::PacketIdentifierNotFound),
                ));
                self.events.push_back(Event::InboundDone { packet_id: id });
            }
        }
    }

    fn on_puback(&mut self, r: PubResp) {
        let Some(i) = self.sent_index(r.packet_id) else {
            // Not in flight (a late duplicate): nothing to do.
            return;
        };
        if self.out[i].exactly_once {
            return self.protocol_error("PUBACK for a QoS 2 PUBLISH");
        }
        self.finish(i, r.reason);
    }

    fn on_pubrec(&mut self, r: PubResp) {
        let Some(i) = self.sent_index(r.packet_id) else {
            // Unknown id: PUBREL with Packet Identifier not found lets the
            // remote end its flow (4.3.3; 3.1.1 has no code, it is dropped).
            let pubrel =
                PubResp::new(r.packet_id).with_reason(ReasonCode::PacketIdentifierNotFound);
            self.transmit.push_back(Packet::PubRel(pubrel));
            return;
        };
        let e = &mut self.out[i];
        if !e.exactly_once {
            return self.protocol_error("PUBREC for a QoS 1 PUBLISH");
        }
        match e.stage {
            Stage::Publish(_) if !r.reason.is_success() => self.finish(i, r.reason),
            Stage::Publish(_) => {
                e.stage = Stage::Releasing;
                let (token, packet_id) = (e.token, e.packet_id);
                self.events.push_back(Event::Released { token, packet_id });
            }
            // A repeated PUBREC: the PUBREL again, once it may go.
            Stage::Released => self
                .transmit
                .push_back(Packet::PubRel(PubResp::new(e.packet_id))),
            Stage::Releasing | Stage::Assigning(_) => {}
        }
    }

    fn on_pubcomp(&mut self, r: PubResp) {
        let Some(i) = self.sent_index(r.packet_id) else {
            return;
        };
        match self.out[i].stage {
            // Even 0x92 (not found) ends it: the remote had the message
            // (it sent PUBREC) and has forgotten only the id.
            Stage::Released => self.finish(i, ReasonCode::Success),
            _ => self.protocol_error("PUBCOMP before our PUBREL"),
        }
    }

    /// Ends the flow of `out[i]`: delivered, or refused with `reason`.
    fn finish(&mut self, i: usize, reason: ReasonCode) {
        let Some(e) = self.out.remove(i) else { return };
        let token = e.token;
        self.events.push_back(if reason.is_success() {
            Event::Delivered { token }
        } else {
            Event::Rejected { token, reason }
        });
        self.pump();
    }

    fn entry(&self, packet_id: PacketId) -> Option<usize> {
        self.out.iter().position(|e| e.packet_id == packet_id)
    }

    /// The entry for an acknowledgement: one the remote counts on this
    /// connection (an id whose PUBLISH has not gone is unknown to it).
    fn sent_index(&self, packet_id: PacketId) -> Option<usize> {
        self.entry(packet_id).filter(|&i| self.out[i].counted)
    }

    /// Outgoing QoS 1/2 messages allowed in flight.
    fn limit(&self) -> u16 {
        self.settings.max_inflight.clamp(1, self.receive_maximum)
    }

    /// A packet id no flow of ours uses; `None` when all 65,535 are taken.
    fn allocate(&mut self) -> Option<PacketId> {
        let mut id = self.last_id;
        for _ in 0..u16::MAX {
            id = id.checked_add(1).unwrap_or(1);
            let pid = PacketId::new(id)?;
            if self.subscribe != Some(pid) && self.entry(pid).is_none() {
                self.last_id = id;
                return Some(pid);
            }
        }
        None
    }

    fn protocol_error(&mut self, what: &'static str) {
        self.close(LinkError::Protocol(what), Some(ReasonCode::ProtocolError));
    }

    /// Ends the connection, with a DISCONNECT carrying `reason` on 5.0.
    fn close(&mut self, why: LinkError, reason: Option<ReasonCode>) {
        self.transmit.clear();
        if let (Some(reason), true) = (reason, self.settings.protocol.is_v5()) {
            self.transmit
                .push_back(Packet::Disconnect(Disconnect::new(reason)));
        }
        self.state = State::Idle;
        self.events.push_back(Event::Closed(why));
    }
}

fn publish(m: Outgoing, qos_pid: QosPid, dup: bool) -> Publish {
    Publish::new(m.topic, m.payload)
        .with_qos_pid(qos_pid)
        .with_dup(dup)
        .with_retain(m.retain)
        .with_properties(m.properties)
}

#[cfg(test)]
mod tests;
