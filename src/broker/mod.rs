//! The broker core: sessions by client id, session takeover, routing through
//! the subscription tree, retained messages, wills, expiry and `$SYS`.
//!
//! Sans-IO: every entry point takes the current time ([`Now`], read by the
//! driver from its clock); output goes to connection [`Outbox`]es and
//! storage [`Op`]s. Connections note on their outbox when they start
//! waiting for their client, on the monotonic reading of the same clock,
//! for the keep-alive (see `keepalive`).
//! One task owns a `Broker` and feeds it [`Event`]s, so no lock is ever held
//! across I/O and the routing path has no contention.

pub(crate) mod admin;
mod bridges;
mod coalesce;
#[cfg(any(test, fuzzing))]
pub(crate) mod drive;
mod gate;
mod groups;
mod idhash;
mod keepalive;
mod lifecycle;
mod pages;
mod persist;
mod publish;
mod restore;
mod retained;
mod roaming;
mod saves;
mod session;
mod share;
mod spill;
mod subscribe;
mod sys;
#[cfg(test)]
mod tests;
mod throttle;
mod tick;
mod tracked;

pub(crate) use crate::message::{Message, MessageProperties, SessionId};
pub(crate) use bridges::{BridgeSession, QueueLimit, CLIENT_ID_PREFIX as BRIDGE_CLIENT_ID_PREFIX};
pub(crate) use coalesce::coalesce_staged;
#[cfg(feature = "cluster")]
pub(crate) use groups::{outcome as group_outcome, GroupInterest};
pub(crate) use pages::{Page, PageEntry, PageRequest};
pub(crate) use persist::Created;
pub(crate) use persist::{Commit, CommitProgress};
#[cfg(feature = "cluster")]
pub(crate) use retained::RetainedSync;
pub(crate) use retained::{RetainedPage, RetainedRead};
#[cfg_attr(not(feature = "cluster"), allow(unused_imports))]
pub(crate) use roaming::{Adopt, Export, InboundFlows, Replayed, Scope, SessionState};
pub(crate) use throttle::OncePerSecond;

use crate::codec::{
    AckProperties, ByteStr, ConnAck, ConnAckProperties, Connect, Disconnect, Packet,
    ProtocolVersion, PubResp, Publish, QoS, ReasonCode, RetainHandling, SubAck, UnsubAck,
    Unsubscribe,
};
use crate::config::{Durability, Options};
use crate::hooks::{Client, Hooks, PublishVerdict, WillMessage};
use crate::ingress::filter::too_deep;
pub(crate) use crate::ingress::CheckedSubscribe;
pub(crate) use crate::link::intake::Share;
use crate::router::{Match, SubscriptionTree};
use crate::stats::{self, Stats};
use crate::topic::{self, SharedFilter};
use idhash::{IdMap, IdSet};
use lifecycle::Established;
use persist::{message_record, Persist};
use roost_storage::{Op, SessionOwner, SessionRecord, SubscriptionRecord, WillRecord};
use session::{Conn, Ctx, Session, SubEntry, Will};
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
pub(crate) use tracked::{Burst, Delivery, Outbound, Outbox, Reclaim, Tracked};

pub(crate) use crate::clock::Now;

/// Identifies one network (or inline) connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct ConnId(pub u64);

/// Why a connection ended, as its connection task saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CloseReason {
    /// The peer closed the connection or it failed, without DISCONNECT.
    Lost,
    /// The peer broke the protocol; the core sends the reason code (5.0).
    ProtocolError(ReasonCode),
    /// The peer sent bytes that do not decode; the core sends the error's
    /// reason code and, as reason string, the rule it broke (5.0).
    Malformed(crate::codec::DecodeError),
    /// The client's TLS certificate was revoked since it connected (a new
    /// CRL); the core sends DISCONNECT 0x87 with a reason string (5.0).
    Revoked,
}

/// Input to the broker core from connection tasks.
// Packets move by value: boxing every packet would cost an allocation per
// message on the hot path, for a channel whose slots are reused anyway.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub(crate) enum Event {
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
        /// Enhanced authentication succeeded: the CONNECT's method stands,
        /// and its authentication data is the server's final answer.
        enhanced_auth: bool,
        /// The client sent an empty client id and the transport gave it
        /// the one in `connect` (a certificate's identity): the rules for
        /// an empty id hold as if the core had assigned it, and a 5.0
        /// client is told it (Assigned Client Identifier).
        id_assigned: bool,
    },
    /// A PUBLISH (topic alias resolved) with what the hooks decided.
    Publish {
        /// The connection.
        conn: ConnId,
        /// The packet, as the hooks left it.
        publish: Publish,
        /// The hooks' verdict.
        verdict: PublishVerdict,
        /// Its share of the intake budget, given back once it is routed.
        held: Share,
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
    /// Several packets one read brought, in order: acknowledgements,
    /// PINGREQ, and PUBLISH when no hook needs to see it (then delivered as
    /// [`Event::Publish`] with [`PublishVerdict::Deliver`]). One event for
    /// many packets: the channel to the core costs per event.
    Packets {
        /// The connection.
        conn: ConnId,
        /// The packets.
        packets: Vec<Packet>,
        /// Their PUBLISHes' share of the intake budget.
        held: Share,
    },
    /// The connection is gone.
    Closed {
        /// The connection.
        conn: ConnId,
        /// Why.
        reason: CloseReason,
    },
    /// A request of the admin API, and where its answer goes.
    Admin(Box<admin::AdminCall>),
    /// A message another node (or this one, through the cluster's log)
    /// published, injected by this node's cluster router: delivered to the
    /// local subscriptions without the publish hooks, which judged it
    /// where it was published.
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    Inject {
        /// The router's connection.
        conn: ConnId,
        /// The message, as its publisher's node forwarded it.
        publish: Publish,
        /// Who published it, where.
        origin: Box<Origin>,
    },
    /// A session another node held, for this one to resume before the
    /// client's CONNECT, which follows (see `roaming`).
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    Adopt(Box<roaming::Adopt>),
    /// A client resumes its session on another node: it leaves this one;
    /// its state, if it moves, is the answer.
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    Release {
        /// The client.
        client_id: ByteStr,
        /// It starts over there: the session ends here.
        clean_start: bool,
        /// Where the session's state goes.
        reply: tokio::sync::oneshot::Sender<Option<roaming::SessionState>>,
    },
    /// Another node took the session over without asking this one: it
    /// leaves without its will.
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    Lost {
        /// The client.
        client_id: ByteStr,
    },
    /// The persistent sessions' state, for the cluster's session bucket
    /// (see `roaming`'s "Saves").
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    Export {
        /// Which sessions.
        scope: roaming::Scope,
        /// Where it goes.
        reply: tokio::sync::oneshot::Sender<roaming::Export>,
    },
    /// The export of this generation is in the cluster's session bucket:
    /// the acknowledgements that waited for it go.
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    Saved {
        /// The export's generation.
        generation: u64,
    },
    /// A message the cluster's router pulled for a share group: to one
    /// connected member of the group on this node (see `groups`).
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    GroupPublish {
        /// The router's connection.
        conn: ConnId,
        /// The message; with a packet id if the router wants the outcome
        /// (a PUBACK, whatever the QoS).
        publish: Publish,
        /// The message's QoS.
        qos: QoS,
        /// The share name.
        group: ByteStr,
        /// The group's plain filter.
        filter: ByteStr,
        /// The router's last try with this message (it terminates it
        /// rather than give it back once more): if no connected member here
        /// may receive it, the core counts it as dropped.
        last: bool,
    },
    /// A retained message set or cleared elsewhere in the cluster, to
    /// apply here without delivering it.
    #[cfg(feature = "cluster")]
    SyncRetained(Box<RetainedSync>),
}

/// Where an injected message was published (see [`Event::Inject`]).
#[derive(Debug, Clone, Default)]
#[cfg_attr(not(feature = "cluster"), allow(dead_code))]
pub(crate) struct Origin {
    /// Its publisher's client id (No Local, hooks, the inline client's
    /// `publisher`), if the node that forwarded it said.
    pub client_id: Option<ByteStr>,
    /// Its sequence in the cluster's message stream (QoS 1/2).
    pub seq: Option<u64>,
}

/// The keep-alive a connection runs with, and the Server Keep Alive to
/// advertise if it differs from what the client asked for (5.0 only;
/// 3.x clients keep their own value).
pub(crate) fn effective_keep_alive(
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
pub(crate) struct Broker {
    opts: Options,
    hooks: Hooks,
    stats: Arc<Stats>,
    persist: Persist,
    /// Boxed: the map keeps spare slots (it is at most 7/8 full, and
    /// grows by doubling), which should cost a pointer, not a session.
    sessions: IdMap<SessionId, Box<Session>>,
    by_client_id: HashMap<ByteStr, SessionId>,
    conns: IdMap<ConnId, SessionId>,
    subs: SubscriptionTree<SessionId, SubEntry>,
    /// Retained messages, and new subscriptions being sent them (see
    /// `retained`).
    retained: retained::Retained,
    /// Round-robin position per share group: group, then filter. Looked
    /// up by `&str` (no allocation per message); an entry goes when a member
    /// leaves its group, so the map does not grow with group churn.
    shared_cursor: SharedCursors,
    /// Inline clients among `conns` (not counted as connected clients).
    inline_conns: usize,
    /// Disconnected sessions with a pending will or a finite expiry.
    timed: IdSet<SessionId>,
    next_session: u64,
    next_assigned: u64,
    last_sys_ms: u64,
    last_sweep_ms: u64,
    scratch: Vec<Target>,
    /// The last gate token handed out (see [`gate`]).
    next_gate: u64,
    /// Connections whose keep-alive is watched.
    keepalives: keepalive::KeepAlives,
    /// Queues on disk: page reads, and the memory budget (see `spill`).
    pages: pages::Pages,
    /// The store's writes fail: read from the commit task's flag once per
    /// event (see [`Broker::storage_failing`]).
    failing: bool,
    /// Bridges' local sessions, by client id (see `bridges`).
    bridges: HashMap<ByteStr, BridgeSession>,
    /// The session of this node's cluster router (`$cluster/<node>`), once
    /// connected: QoS 1/2 acknowledgements wait for it to acknowledge its
    /// copy, which it does once the cluster's engine stored the message.
    cluster_router: Option<SessionId>,
    /// The last stream sequence the router injected (0: none yet): every
    /// QoS 1/2 message of the cluster up to it has been routed here.
    cluster_seq: u64,
    /// Sessions adopted from another node, each with the last sequence its
    /// replay covered: live messages up to it are not delivered to it
    /// again (see `roaming`).
    cluster_skip: HashMap<SessionId, u64>,
    /// Sessions handed over whose answer waits for JetStream to store or
    /// refuse their inbound QoS 2 messages (see `roaming`).
    handovers: Vec<roaming::Handover>,
    /// Share groups served through the cluster (see `groups`); `None` on
    /// one node.
    cluster_groups: Option<groups::ClusterGroups>,
    /// Acknowledgements waiting for their sessions' state to be in the
    /// cluster's session bucket (see `roaming`); off on one node.
    saves: saves::Saves,
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
    pub(crate) fn new(opts: Options, hooks: Hooks, stats: Arc<Stats>, persistent: bool) -> Self {
        let ack_first = matches!(opts.durability, Durability::AckBeforeCommit { .. });
        let budget = opts.memory.budget;
        Broker {
            opts,
            hooks,
            stats,
            persist: Persist {
                ack_first,
                ..Persist::new(persistent)
            },
            sessions: IdMap::default(),
            by_client_id: HashMap::new(),
            conns: IdMap::default(),
            subs: SubscriptionTree::new(),
            retained: retained::Retained::new(budget, persistent),
            shared_cursor: HashMap::new(),
            inline_conns: 0,
            timed: IdSet::default(),
            next_session: 1,
            next_assigned: 1,
            last_sys_ms: 0,
            last_sweep_ms: 0,
            scratch: Vec::new(),
            next_gate: 0,
            keepalives: Default::default(),
            pages: pages::Pages::new(budget),
            failing: false,
            bridges: HashMap::new(),
            cluster_router: None,
            cluster_seq: 0,
            cluster_skip: HashMap::new(),
            handovers: Vec::new(),
            cluster_groups: None,
            saves: saves::Saves::default(),
        }
    }

    /// Closes the group of storage operations recorded since the last call,
    /// if any. The caller applies it, then releases the held packets of its
    /// outboxes and reports to [`Broker::commit_progress`].
    pub(crate) fn take_commit(&mut self) -> Option<Commit> {
        self.persist.take_commit()
    }

    /// True while the store's writes fail (the commit task sets and clears
    /// the flag: see `server::commit`). Work that would need storage is then
    /// refused before it changes anything, so the operations waiting for the
    /// store stay bounded and memory never gets ahead of what will be
    /// written.
    ///
    /// Read once per event ([`Broker::watch_storage`]), never halfway: an
    /// acknowledgement let go early because the flag was raised after its
    /// message was routed would vouch for a write that has not happened.
    pub(super) fn storage_failing(&self) -> bool {
        self.failing
    }

    /// Reads the commit task's flag (see [`Broker::storage_failing`]).
    fn watch_storage(&mut self) {
        self.failing = self.persist.enabled
            && self
                .stats
                .storage_failing
                .load(std::sync::atomic::Ordering::Relaxed)
                != 0;
    }

    /// Storage operations recorded since the last commit was taken.
    pub(crate) fn pending_ops(&self) -> usize {
        self.persist.ops.len()
    }

    /// Where the commit task reports the commits it released.
    pub(crate) fn commit_progress(&self) -> Arc<CommitProgress> {
        self.persist.progress.clone()
    }

    /// Handles one event. Returns the vector of an [`Event::Packets`],
    /// emptied, for a reader to fill again.
    pub(crate) fn handle(&mut self, event: Event, now: Now) -> Option<Vec<Packet>> {
        let emptied = self.handle_one(event, now);
        if !self.handovers.is_empty() {
            self.answer_handovers();
        }
        emptied
    }

    fn handle_one(&mut self, event: Event, now: Now) -> Option<Vec<Packet>> {
        let now_ms = now.ms;
        self.watch_storage();
        match event {
            Event::Connect {
                conn,
                outbox,
                connect,
                client,
                enhanced_auth,
                id_assigned,
            } => {
                let established = Established {
                    enhanced_auth,
                    id_assigned,
                };
                self.connect(conn, outbox, *connect, client, established, now)
            }
            Event::Packet { conn, packet } => self.packet(conn, packet, now_ms),
            Event::Packets {
                conn, mut packets, ..
            } => {
                for packet in packets.drain(..) {
                    match packet {
                        // Looked up for each: a packet before it may have
                        // ended the connection.
                        Packet::Publish(publish) => {
                            if let Some(sid) = self.live(conn) {
                                let verdict = PublishVerdict::Deliver;
                                self.on_publish(conn, sid, publish, verdict, None, now_ms);
                            }
                        }
                        packet => self.packet(conn, packet, now_ms),
                    }
                }
                return Some(packets);
            }
            Event::Publish {
                conn,
                publish,
                verdict,
                ..
            } => {
                if let Some(sid) = self.live(conn) {
                    self.on_publish(conn, sid, publish, verdict, None, now_ms);
                }
            }
            Event::Adopt(adopt) => self.adopt(*adopt, now_ms),
            Event::Release {
                client_id,
                clean_start,
                reply,
            } => {
                self.release(&client_id, clean_start, reply, now_ms);
            }
            Event::Lost { client_id } => self.lost_session(&client_id, now_ms),
            Event::Export { scope, reply } => {
                let _ = reply.send(self.export_sessions(scope, now_ms));
            }
            Event::Saved { generation } => self.sessions_saved(generation),
            Event::Inject {
                conn,
                publish,
                origin,
            } => {
                // Only the router injects; anyone else's is an ordinary
                // publish (never reached: the event is crate-private).
                if let Some(sid) = self.live(conn) {
                    let origin = (self.cluster_router == Some(sid)).then_some(&*origin);
                    self.on_publish(conn, sid, publish, PublishVerdict::Deliver, origin, now_ms);
                }
            }
            Event::Subscribe { conn, subscribe } => {
                if let Some(sid) = self.live(conn) {
                    self.on_subscribe(conn, sid, subscribe, now_ms);
                }
            }
            Event::Closed { conn, reason } => self.closed(conn, reason, now_ms),
            Event::Admin(call) => {
                let admin::AdminCall { query, reply } = *call;
                // The caller may have given up waiting: nothing to undo.
                let _ = reply.send(self.admin(query, now_ms));
            }
            Event::GroupPublish {
                conn,
                publish,
                qos,
                group,
                filter,
                last,
            } => self.on_group_publish(conn, publish, qos, (&group, &filter), last, now_ms),
            #[cfg(feature = "cluster")]
            Event::SyncRetained(change) => self.sync_retained(*change, now_ms),
        }
        None
    }

    pub(super) fn ctx(&mut self, now_ms: u64) -> (Ctx<'_>, &mut IdMap<SessionId, Box<Session>>) {
        (
            Ctx {
                persist: &mut self.persist,
                hooks: &self.hooks,
                stats: &self.stats,
                limits: &self.opts.limits,
                pages: &mut self.pages,
                saves: &mut self.saves,
                now_ms,
                drops: std::cell::Cell::new(0),
            },
            &mut self.sessions,
        )
    }

    // ----- packets ----------------------------------------------------

    /// The session of a connection the broker still serves. A packet from
    /// one it has closed (refused, taken over, ended by a protocol error),
    /// which its reader sent before it saw the close, is counted as
    /// ignored: every packet read is handled or counted.
    fn live(&self, conn: ConnId) -> Option<SessionId> {
        let sid = self.conns.get(&conn).copied();
        if sid.is_none() {
            stats::add(&self.stats.packets_ignored, 1);
        }
        sid
    }

    pub(super) fn packet(&mut self, conn: ConnId, packet: Packet, now_ms: u64) {
        let Some(sid) = self.live(conn) else {
            return;
        };
        match packet {
            Packet::Publish(p) => {
                self.on_publish(conn, sid, p, PublishVerdict::Deliver, None, now_ms)
            }
            Packet::PubAck(r) => {
                let (mut ctx, sessions) = self.ctx(now_ms);
                if let Some(s) = sessions.get_mut(&sid) {
                    s.on_puback(r.packet_id, &mut ctx);
                }
                self.acknowledged(sid, now_ms);
            }
            Packet::PubRec(r) => {
                let (mut ctx, sessions) = self.ctx(now_ms);
                if let Some(s) = sessions.get_mut(&sid) {
                    s.on_pubrec(&r, &mut ctx);
                }
                self.acknowledged(sid, now_ms);
            }
            Packet::PubComp(r) => {
                let (mut ctx, sessions) = self.ctx(now_ms);
                if let Some(s) = sessions.get_mut(&sid) {
                    s.on_pubcomp(r.packet_id, &mut ctx);
                }
                self.acknowledged(sid, now_ms);
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
                // protocol error ([MQTT-4.12.0-7]).
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
}

/// What a retained message counts against `limits.maximum_retained_bytes`:
/// its topic and payload, and about what the tree and the message take
/// beside them (so a million one-byte messages are not counted as a
/// megabyte).
fn retained_cost(m: &Message) -> usize {
    m.size() + RETAINED_OVERHEAD
}

/// See [`retained_cost`].
const RETAINED_OVERHEAD: usize = 128;

type SharedCursors = HashMap<Box<str>, HashMap<Box<str>, usize>>;

/// Forgets the round-robin position of a share group whose membership
/// changed (starting over at the first member is harmless).
fn forget_cursor(cursors: &mut SharedCursors, group: Option<&str>, filter: &str) {
    let Some(group) = group else { return };
    if let Some(filters) = cursors.get_mut(group) {
        filters.remove(filter);
        if filters.is_empty() {
            cursors.remove(group);
        }
    }
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
        client_id: s.client_id().as_str().to_owned(),
        protocol_level: s.protocol.level(),
        expiry_interval: s.expiry_interval,
        disconnected_at_ms: s.disconnected_at_ms,
        will: s.will.as_ref().map(|w| WillRecord {
            message: message_record(&w.message),
            delay_interval: w.delay_interval,
            message_expiry_interval: w.expiry_interval,
        }),
        owner: match &s.client.username {
            _ if s.owner_unknown => SessionOwner::Unknown,
            None => SessionOwner::Anonymous,
            Some(user) => SessionOwner::User(user.as_str().to_owned()),
        },
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
