//! One client's session: its subscriptions, its outbound QoS 1/2 flows
//! (in flight and queued) and its inbound QoS 2 packet ids.
//!
//! A session outlives connections: `conn` is `None` while the client is away.

use super::pages::{Pages, Spill};
use super::persist::{Pending, Persist};
use super::saves::stream_pid;
use super::ConnId;
use super::{Burst, Delivery, Outbound, Outbox, Tracked};
use crate::codec::{
    ByteStr, Packet, PacketId, ProtocolVersion, PubResp, QoS, QosPid, SubscriptionOptions,
};
use crate::config::Limits;
use crate::escape::Escaped;
use crate::hooks::{Client, DropReason, Hooks};
use crate::stats::{self, Stats};
use roost_storage::OutboundState;
use std::collections::{HashMap, HashSet, VecDeque};
use std::num::{NonZeroU16, NonZeroU32};
use std::sync::Arc;

/// A subscription as the session and the router hold it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SubEntry {
    pub options: SubscriptionOptions,
    pub id: Option<NonZeroU32>,
}

/// The live connection a session is attached to.
#[derive(Debug)]
pub(crate) struct Conn {
    pub id: ConnId,
    pub outbox: Arc<Outbox>,
    /// Most QoS 1/2 publishes in flight towards the client.
    pub send_quota: u16,
    /// The client's Maximum Packet Size, if it set one.
    pub max_packet_size: Option<NonZeroU32>,
    /// When it connected, ms since the Unix epoch (for the admin API).
    pub connected_at_ms: u64,
}

/// A will waiting for its connection to end badly.
#[derive(Debug, Clone)]
pub(crate) struct Will {
    pub message: Arc<Tracked>,
    pub delay_interval: u32,
    /// The will's Message Expiry Interval: it runs from when the will is
    /// published, not from CONNECT (3.1.3.2.4).
    pub expiry_interval: Option<u32>,
}

/// One outbound QoS 1/2 message in a session's queue or in flight.
#[derive(Debug)]
pub(crate) struct Outgoing {
    pub seq: u64,
    pub msg: Arc<Tracked>,
    pub qos: QoS,
    pub retain: bool,
    pub sub_ids: Box<[NonZeroU32]>,
    pub pid: Option<PacketId>,
    pub state: OutboundState,
    /// Stored with its body inline (its only reference), so the body has
    /// no record and no reference count of its own.
    pub inline: bool,
    /// Stored when it was created: one of the copies its message's
    /// [gate](super::gate) waits for.
    pub stored_copy: bool,
    /// A retained message sent for a new subscription: the broker's own
    /// burst, outside the queue limits (see [`Session::deliver`]).
    pub burst: bool,
}

/// QoS 0 bytes the cluster's router holds unwritten (estimated from the
/// message at hand; or `limits.maximum_queued_bytes`, if lower) before it
/// drops: its publishers pause long before (see [`BEHIND_BYTES`]), this is
/// the room for what arrives meanwhile.
const ROUTER_QOS0_BYTES: usize = 16 * 1024 * 1024;

/// QoS 0 bytes unwritten to one connection (estimated from the message at
/// hand) from which its publishers are paused briefly.
const BEHIND_BYTES: usize = 256 * 1024;

/// The longest one congested session pauses its publishers without its
/// queue draining to half. Past it the session is taken for stuck (or far
/// slower than what feeds it): its publishers go on at full speed, its
/// queue takes what comes up to its hard bound and drops (and counts) the
/// rest, and it pauses nobody until it has drained. A consumer that stops
/// reading, or never acknowledges, so costs its publishers about this
/// long (plus one reader's pause, [`crate::link::outbox::CONGESTED_PAUSE`]),
/// not the rest of its connection's life.
pub(crate) const CONGESTED_EPISODE_MS: u64 = 1000;

/// The queue length from which a connected client's publishers are paused
/// (or `limits.maximum_queued_messages`, if lower): with queues on disk the
/// limit is far higher, but a client this far behind is slower than what
/// feeds it, and pausing is what keeps it from falling further behind.
const PAUSE_QUEUED: usize = 10_000;

/// The queued bytes from which a connected client's publishers are paused
/// (or half of `limits.maximum_queued_bytes`, if lower).
const PAUSE_BYTES: usize = 8 * 1024 * 1024;

/// From which queue length and bytes a connected client's publishers are
/// paused; they go on once it has drained to half of both.
fn pause_thresholds(limits: &Limits) -> (usize, usize) {
    (
        limits.maximum_queued_messages.min(PAUSE_QUEUED),
        (limits.maximum_queued_bytes / 2).min(PAUSE_BYTES),
    )
}

/// What a delivery asks of its publisher (see [`Session::deliver`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pushback {
    /// Nothing.
    None,
    /// The QoS 1/2 queue is congested: pause until it drains.
    Congested,
    /// Writes fell behind: pause briefly ([`Outbox::slow_down`]).
    Behind,
}

/// What a session needs from the broker while it works.
pub(crate) struct Ctx<'a> {
    pub persist: &'a mut Persist,
    pub hooks: &'a Hooks,
    pub stats: &'a Stats,
    pub limits: &'a Limits,
    /// Page reads of spilled queues, and the memory budget of queues.
    pub pages: &'a mut Pages,
    /// Packets waiting for the cluster's session bucket (see `roaming`).
    pub saves: &'a mut super::saves::Saves,
    pub now_ms: u64,
    /// Messages dropped while this context lived (see [`Session::deliver`]).
    pub drops: std::cell::Cell<u32>,
}

/// Boxed in the broker's map; kept small because every session, connected
/// or not, busy or idle, has one: what only some sessions use is allocated
/// on first use ([`Subscriptions`], [`Flows`]).
#[derive(Debug)]
pub(crate) struct Session {
    /// Who the client is, as hooks see it (from its latest connection).
    /// Its id is the session's, for the session's whole life.
    pub client: Arc<Client>,
    pub protocol: ProtocolVersion,
    pub conn: Option<Conn>,
    /// Session Expiry Interval in seconds; `u32::MAX` never expires.
    pub expiry_interval: u32,
    pub disconnected_at_ms: Option<u64>,
    /// Boxed: most clients set none.
    pub will: Option<Box<Will>>,
    /// When a pending will (of a closed connection) is due.
    pub will_due_ms: Option<u64>,
    pub subscriptions: Subscriptions,
    pub(super) flows: Option<Box<Flows>>,
    /// True while the store holds this session: every persistence step
    /// (outbound entries, body references) is taken only then, so a session
    /// that stops being persistent releases exactly what it took.
    pub stored: bool,
    /// Restored from a record that did not say who owns the session
    /// (format version 1): the first client to resume it adopts it.
    pub owner_unknown: bool,
    next_pid: u16,
    /// How many ids after `next_pid` are known to be free (see
    /// [`Session::alloc_pid`]).
    free_pids: u16,
    /// Last sequence number given to an outbound entry (storage order).
    pub(super) next_seq: u64,
    /// A bridge's session: its queue limits (see `bridges`).
    pub(super) queue_limit: Option<Arc<super::bridges::QueueLimit>>,
}

/// A session's subscriptions, by filter. Allocated on the first one.
#[derive(Debug, Default)]
pub(crate) struct Subscriptions(Option<Box<SubMap>>);

#[derive(Debug, Default)]
struct SubMap {
    by_filter: HashMap<ByteStr, SubEntry>,
    /// Bytes of the filters (`limits.maximum_subscription_bytes`).
    bytes: usize,
}

impl Subscriptions {
    pub(crate) fn contains(&self, filter: &str) -> bool {
        self.0
            .as_ref()
            .is_some_and(|m| m.by_filter.contains_key(filter))
    }

    pub(crate) fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |m| m.by_filter.len())
    }

    /// Bytes of all the filters.
    pub(crate) fn bytes(&self) -> usize {
        self.0.as_ref().map_or(0, |m| m.bytes)
    }

    pub(crate) fn insert(&mut self, filter: ByteStr, entry: SubEntry) {
        let m = self.0.get_or_insert_default();
        let len = filter.len();
        if m.by_filter.insert(filter, entry).is_none() {
            m.bytes += len;
        }
    }

    pub(crate) fn get(&self, filter: &str) -> Option<&SubEntry> {
        self.0.as_ref()?.by_filter.get(filter)
    }

    pub(crate) fn remove(&mut self, filter: &str) -> Option<SubEntry> {
        let m = self.0.as_mut()?;
        let removed = m.by_filter.remove(filter)?;
        m.bytes -= filter.len();
        Some(removed)
    }

    /// The filters subscribed to.
    /// Every subscription, in no order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&ByteStr, &SubEntry)> {
        self.0.iter().flat_map(|m| m.by_filter.iter())
    }

    pub(crate) fn filters(&self) -> impl Iterator<Item = &ByteStr> {
        self.0.iter().flat_map(|m| m.by_filter.keys())
    }

    /// Takes every subscription, freeing the map.
    pub(crate) fn take(&mut self) -> impl Iterator<Item = (ByteStr, SubEntry)> {
        self.0
            .take()
            .into_iter()
            .flat_map(|m| m.by_filter.into_iter())
    }
}

/// A session's QoS 1/2 state, and the publishers it slows down. Allocated
/// on first use: idle and QoS 0 sessions never need it, and its empty
/// collections alone would take some 140 bytes in each of them.
#[derive(Debug, Default)]
pub(crate) struct Flows {
    /// QoS 1/2 messages sent and not yet completed, in send order.
    pub inflight: VecDeque<Outgoing>,
    /// QoS 1/2 messages waiting for room in flight (or for the client).
    pub queue: VecDeque<Outgoing>,
    /// Inbound QoS 2 packet ids awaiting PUBREL.
    pub inbound_qos2: HashSet<u16>,
    /// Publishers slowed down because this session's queue is congested.
    pub blocked: Vec<Arc<Outbox>>,
    /// Topic and payload bytes of the messages in `inflight` and `queue`
    /// (see [`Message::size`](super::Message::size)): bounded by `limits.maximum_queued_bytes`.
    pub bytes: usize,
    /// The current congestion episode: since when (the core's clock) this
    /// session has been pausing its publishers, and whether the episode
    /// ran out before the queue drained (see [`Session::block`]).
    pub congested_since_ms: Option<u64>,
    pub stuck: bool,
    /// Entries of `queue` that are retained messages of a subscription's
    /// burst: the queue limits count only the others.
    pub burst_queued: usize,
    /// The queue's tail that is only in the store (see `spill`).
    pub spill: Spill,
    /// Something was queued or completed since the cluster last saved the
    /// session's cursor (see `roaming`).
    pub moved: bool,
    /// The number the next inbound QoS 2 flow gets in a cluster (0: none
    /// numbered yet here; see `roaming`'s "Inbound QoS 2 across a node's
    /// death").
    pub inbound_next: u64,
}

/// Where a session that has numbered no inbound QoS 2 flow on this node
/// starts: its clock in ms times 2^20, above every number an earlier
/// incarnation of the session (same client id) or this node before a
/// restart gave, unless that one numbered more than a million flows a
/// millisecond or the clock went back. Fits a `u64` until about the year
/// 2500.
pub(crate) fn first_flow(now_ms: u64) -> u64 {
    now_ms.saturating_mul(1 << 20).max(1)
}

impl Session {
    pub(crate) fn new(client: Arc<Client>) -> Self {
        Session {
            protocol: client.protocol,
            client,
            conn: None,
            expiry_interval: 0,
            disconnected_at_ms: None,
            will: None,
            will_due_ms: None,
            subscriptions: Subscriptions::default(),
            flows: None,
            stored: false,
            owner_unknown: false,
            next_pid: 0,
            free_pids: 0,
            next_seq: 0,
            queue_limit: None,
        }
    }

    /// May `client` resume this session? Only a client of the user who
    /// owns it (the same user name, from CONNECT or a certificate, or none
    /// for both): another user must not get its subscriptions and queued
    /// messages by claiming its client id. A session whose owner is
    /// unknown (stored before owners were) goes to the first client the
    /// auth hooks admit with its id, as it did then: dropping every queue
    /// at the upgrade would lose what was acknowledged for it, and the
    /// devices come back as soon as the broker does.
    pub(crate) fn owned_by(&self, client: &Client) -> bool {
        self.owner_unknown || self.client.username == client.username
    }

    /// Whether the cluster keeps this session (see `roaming`): a network
    /// client's persistent session (not an inline client's, a bridge's or
    /// a router's).
    pub(crate) fn roams(&self) -> bool {
        !self.client.inline && self.is_persistent()
    }

    /// A session that outlives its connection is persisted.
    pub(crate) fn is_persistent(&self) -> bool {
        self.expiry_interval > 0
    }

    pub(crate) fn client_id(&self) -> &ByteStr {
        &self.client.client_id
    }

    fn client(&self) -> String {
        self.client_id().as_str().to_owned()
    }

    pub(crate) fn flows(&self) -> Option<&Flows> {
        self.flows.as_deref()
    }

    /// The QoS 1/2 state, allocated if need be.
    pub(crate) fn flows_mut(&mut self) -> &mut Flows {
        self.flows.get_or_insert_default()
    }

    pub(crate) fn inflight_len(&self) -> usize {
        self.flows().map_or(0, |f| f.inflight.len())
    }

    /// Messages waiting to be sent, in memory and on disk.
    pub(crate) fn queued_len(&self) -> usize {
        self.queue_len() + self.spilled()
    }

    fn queue_len(&self) -> usize {
        self.flows().map_or(0, |f| f.queue.len())
    }

    /// Messages owed to the client: in flight, queued in memory and on disk.
    pub(crate) fn queued_total(&self) -> usize {
        self.inflight_len() + self.queue_len() + self.spilled()
    }

    /// Inbound QoS 2 packet ids awaiting PUBREL.
    pub(crate) fn inbound_qos2(&self) -> Option<&HashSet<u16>> {
        self.flows().map(|f| &f.inbound_qos2)
    }

    /// PUBREL for an inbound QoS 2 packet id: true if it was awaited.
    /// The number the next inbound QoS 2 flow gets, without taking it
    /// (see [`Session::take_inbound_flow`]).
    pub(crate) fn inbound_next(&mut self, now_ms: u64) -> u64 {
        let f = self.flows_mut();
        f.inbound_next = f.inbound_next.max(first_flow(now_ms));
        f.inbound_next
    }

    /// Numbers a new inbound QoS 2 flow. The numbers only grow, across the
    /// nodes the session moves between (an adopted session goes on from
    /// what it brings) and across its incarnations under one client id or
    /// a node's restart (a session that numbers nothing yet starts from
    /// its clock: see [`first_flow`]).
    pub(crate) fn take_inbound_flow(&mut self, now_ms: u64) -> u64 {
        let n = self.inbound_next(now_ms);
        self.flows_mut().inbound_next = n + 1;
        n
    }

    /// The flow numbers go on from at least `next`.
    pub(crate) fn inbound_from(&mut self, next: u64) {
        let f = self.flows_mut();
        f.inbound_next = f.inbound_next.max(next);
    }

    pub(crate) fn release_inbound_qos2(&mut self, pid: u16) -> bool {
        self.flows
            .as_mut()
            .is_some_and(|f| f.inbound_qos2.remove(&pid))
    }

    /// Sends a packet if connected; returns false if not.
    pub(crate) fn send(&self, packet: Packet) -> bool {
        match &self.conn {
            Some(c) => c.outbox.push(packet),
            None => false,
        }
    }

    /// Sends a PUBREL once this session's stored state says "released":
    /// a broker that crashed before committing that would resend the
    /// PUBLISH after a restart, which it must not do once it has sent the
    /// PUBREL ([MQTT-4.3.3-5]); a client that already completed the flow
    /// would take it as a new message.
    ///
    /// In a cluster, the same holds for the session bucket: the PUBREL
    /// waits until "released" is there too (see `roaming`'s "Saves").
    fn send_pubrel(&self, pid: PacketId, ctx: &mut Ctx) {
        let Some(c) = &self.conn else { return };
        let packet = Packet::PubRel(PubResp::new(pid));
        if ctx.saves.on() && self.roams() {
            let commit = if self.stored && ctx.persist.must_hold() {
                ctx.persist.touched.push(c.outbox.clone());
                ctx.persist.commit
            } else {
                0
            };
            ctx.saves.push(self.client_id(), &c.outbox, commit, packet);
        } else if self.stored && ctx.persist.must_hold() {
            ctx.persist.hold(&c.outbox, ctx.persist.commit, 0, packet);
        } else {
            c.outbox.push(packet);
        }
    }

    /// The next free packet id after the last one given.
    ///
    /// Scanning the in-flight window for every id was a tenth of the core's
    /// time in fan-out, so one scan counts how many ids ahead are free, and
    /// the next that many allocations need none: about one scan per wrap
    /// of the id space. Sound because, between scans, ids enter flight only
    /// through this function (restored entries are in flight before the
    /// first scan, since `free_pids` starts at 0); leaving flight only
    /// frees ids.
    fn alloc_pid(&mut self) -> PacketId {
        loop {
            if self.free_pids == 0 {
                self.free_pids = self.free_after(self.next_pid);
            }
            self.next_pid = self.next_pid.wrapping_add(1);
            if self.free_pids > 0 {
                self.free_pids -= 1;
                if let Some(pid) = NonZeroU16::new(self.next_pid) {
                    return pid;
                }
            }
            // Taken (or 0, which is no id): step over it and count again.
            // The window is bounded far below 65535, so this ends soon.
        }
    }

    /// How many ids right after `start` are free in a row, stopping before
    /// 0 (where the ids wrap around).
    fn free_after(&self, start: u16) -> u16 {
        let inflight = self.flows().map(|f| &f.inflight).into_iter().flatten();
        inflight
            .filter_map(|o| o.pid)
            .filter(|p| p.get() > start)
            .map(|p| p.get() - start - 1)
            .fold(u16::MAX - start, u16::min)
    }

    pub(super) fn store_outgoing(&self, o: &Outgoing, ctx: &mut Ctx) {
        if self.stored {
            ctx.persist.push(Pending::PutOutbound {
                client_id: self.client_id().clone(),
                seq: o.seq,
                entry: o.lazy(),
            });
        }
    }

    fn forget_outgoing(&mut self, o: &Outgoing, ctx: &mut Ctx) {
        if self.stored {
            ctx.persist.push(Pending::DeleteOutbound {
                client_id: self.client_id().clone(),
                seq: o.seq,
            });
            if !o.inline {
                ctx.persist.release(&o.msg);
            }
        }
        if o.stored_copy {
            o.msg.gate.copy_done();
        }
        stats::sub(&ctx.stats.inflight, 1);
        if let Some(f) = self.flows.as_mut().filter(|_| !o.burst) {
            let size = o.msg.size();
            f.bytes = f.bytes.saturating_sub(size);
            ctx.pages.free_copy(ctx.stats, &o.msg);
        }
    }

    pub(super) fn dropped(&self, msg: &Tracked, reason: DropReason, ctx: &mut Ctx) {
        if self.is_cluster_router() {
            self.router_let_go(msg, reason, ctx);
        }
        stats::add(&ctx.stats.messages_dropped, 1);
        ctx.drops.set(ctx.drops.get() + 1);
        // At most one warning a second, so a flood of drops does not flood
        // the log too; the others, and expiries, go to debug. The topic is
        // logged, never the payload.
        static WARNED: super::throttle::OncePerSecond = super::throttle::OncePerSecond::new();
        if !matches!(reason, DropReason::Expired) && WARNED.ready(ctx.now_ms) {
            tracing::warn!(client_id = %Escaped(self.client_id()), topic = %Escaped(&msg.topic), ?reason,
                total = ctx.stats.messages_dropped.load(std::sync::atomic::Ordering::Relaxed),
                "message dropped (more within a second are logged at debug level)");
        } else {
            tracing::debug!(client_id = %Escaped(self.client_id()), topic = %Escaped(&msg.topic), ?reason, "message dropped");
        }
        if ctx.hooks.has_events() {
            ctx.hooks
                .each(|h| h.on_dropped(self.client_id(), msg, reason));
        }
    }

    /// This node's cluster router let go of its copy of `msg` before
    /// JetStream stored it: the publisher's acknowledgement, which waits
    /// for the router's, is refused instead (see `AckGate::cluster_refused`),
    /// and counted. A copy that expired is not refused: its publisher
    /// allowed it to end so (as on one node, where the acknowledgement
    /// does not wait for delivery), and it is let go.
    fn router_let_go(&self, msg: &Tracked, reason: DropReason, ctx: &mut Ctx) {
        if msg.qos == QoS::AtMostOnce {
            return; // No acknowledgement waits for QoS 0.
        }
        if reason == DropReason::Expired {
            if let Some(token) = msg.gate.cluster_done() {
                ctx.saves.stored(token);
            }
            return;
        }
        if let Some(token) = msg.gate.cluster_let_go() {
            ctx.saves.refused(token);
            stats::add(&ctx.stats.cluster_refused, 1);
            static WARNED: super::throttle::OncePerSecond = super::throttle::OncePerSecond::new();
            if WARNED.ready(ctx.now_ms) {
                tracing::warn!(topic = %Escaped(&msg.topic), ?reason,
                    "cluster: the router let go of a message JetStream has not stored; its publisher is refused (more within a second not logged)");
            }
        }
    }

    fn completed(&self, o: &Outgoing, ctx: &Ctx) {
        if ctx.hooks.has_events() {
            if let Some(pid) = o.pid {
                ctx.hooks
                    .each(|h| h.on_qos_complete(&self.client, pid.get(), o.qos));
            }
        }
    }

    /// Routes one message to this session at `qos` (already reduced to the
    /// granted QoS), following the queueing policy:
    /// - QoS 0 goes straight to the connection, and is dropped if the
    ///   client is away or has `maximum_pending_writes` packets unwritten.
    ///   From an eighth of that on (or [`BEHIND_BYTES`]), the connection
    ///   is behind: its publishers are paused briefly while it catches up.
    /// - QoS 1/2 is sent at once if the in-flight window has room and
    ///   nothing is queued ahead of it; otherwise it is queued. For a client
    ///   that is away, the queue holds `maximum_queued_messages`; beyond
    ///   that a message is dropped. For a connected client, a full queue is
    ///   congestion: the message is kept and the caller is told (it slows
    ///   the publisher down, for one episode: see [`Session::block`]), up
    ///   to four times the limit, beyond which the message is dropped.
    ///   Whatever the counts, a session holds at most
    ///   `maximum_queued_bytes` of messages (congested from half of it).
    ///
    /// `sole`: this session is the message's only recipient, so a stored
    /// entry carries the body inline (one record instead of two).
    ///
    /// Returns what the publisher should do.
    /// `burst = Some(cap)`: a QoS 1/2 retained message for a new
    /// subscription, the broker's own burst, which the queue limits (count
    /// and bytes) do not apply to, nor congestion; it is paced by the
    /// in-flight window instead, and at most `cap` of its entries (the size
    /// of the retained store) wait in the queue at a time.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn deliver(
        &mut self,
        msg: &Arc<Tracked>,
        qos: QoS,
        retain: bool,
        sub_ids: Vec<NonZeroU32>,
        sole: bool,
        burst: Option<usize>,
        ctx: &mut Ctx,
    ) -> Pushback {
        if msg.is_expired(ctx.now_ms) {
            return Pushback::None;
        }
        if qos == QoS::AtMostOnce {
            let Some(conn) = &self.conn else {
                return Pushback::None;
            };
            let pending = conn.outbox.len();
            // Bytes estimated from the message at hand, as below: 10,000
            // unwritten 64 KiB messages would be 640 MiB for one
            // connection (or the cluster's router).
            let size = msg.payload.len() + msg.topic.len();
            let (max_pending, max_bytes) = if self.is_cluster_router() {
                // The router pauses its publishers for as long as it
                // makes progress; what it must absorb is what reaches it
                // before they pause (the core's event queue and what they
                // had read), which at 64 B messages outgrew 10,000
                // packets. Bounded in bytes instead.
                let bytes = ROUTER_QOS0_BYTES.min(ctx.limits.maximum_queued_bytes);
                (usize::MAX, bytes)
            } else {
                let limits = ctx.limits;
                (limits.maximum_pending_writes, limits.maximum_queued_bytes)
            };
            if pending >= max_pending || pending.saturating_mul(size) >= max_bytes {
                self.dropped(msg, DropReason::SlowClient, ctx);
                return Pushback::None;
            }
            let sub_ids = sub_ids.into_boxed_slice();
            let d = Delivery::new(msg, QosPid::AtMostOnce, retain, false, sub_ids, ctx.now_ms);
            self.push_publish(d, ctx);
            // Behind by an eighth of the limit, or by about BEHIND_BYTES of
            // messages like this one (large messages fill memory sooner).
            if pending >= ctx.limits.maximum_pending_writes / 8
                || pending.saturating_mul(size) >= BEHIND_BYTES
            {
                return Pushback::Behind;
            }
            return Pushback::None;
        }
        if self.conn.is_none() && !self.is_persistent() {
            if self.is_cluster_router() {
                // The router stopped: nothing will take this copy to the
                // cluster.
                self.router_let_go(msg, DropReason::QueueFull, ctx);
            }
            return Pushback::None;
        }
        let limits = ctx.limits;
        let burst_queued = self.flows().map_or(0, |f| f.burst_queued);
        if let Some(cap) = burst {
            if burst_queued >= cap {
                self.dropped(msg, DropReason::QueueFull, ctx);
                return Pushback::None;
            }
        }
        let queued = self.queue_len() - burst_queued + self.spilled();
        let bytes = self.flows().map_or(0, |f| f.bytes);
        let connected = self.conn.is_some();
        // A connected client's queue absorbs what arrives while its
        // publishers are paused, hence the room between the length where it
        // pushes back and the one where it drops.
        let (pause_at, pause_bytes) = pause_thresholds(limits);
        // Memory nearly spent, for a session the store cannot take over
        // from: its publishers wait for it too, rather than a later copy
        // being dropped at the budget.
        // (Not for one with nothing outstanding: it keeps up.)
        let tight = bytes > 0 && !self.spillable(ctx) && ctx.pages.tight();
        let mut congested = connected && (queued >= pause_at || bytes >= pause_bytes || tight);
        let mut hard_limit = if connected {
            limits
                .maximum_queued_messages
                .max(pause_at.saturating_mul(4))
        } else {
            limits.maximum_queued_messages
        };
        let mut max_bytes = limits.maximum_queued_bytes;
        let mut queued = queued;
        if let Some(bridge) = &self.queue_limit {
            // A bridge's queue waits for its link, which may be down for a
            // day: it never pauses publishers, and its bounds are its own,
            // counting what is in flight (with the bridge's driver, not
            // yet at the remote).
            queued += self.inflight_len();
            congested = false;
            hard_limit = bridge.messages;
            max_bytes = bridge.bytes;
        }
        let pushback = if congested && burst.is_none() {
            Pushback::Congested
        } else {
            Pushback::None
        };
        let size = msg.size();
        let room = self
            .conn
            .as_ref()
            .is_some_and(|c| self.inflight_len() < usize::from(c.send_quota));
        let direct = room
            && self.queue_len() == 0
            && self.spilled() == 0
            && !self.stream_pid_taken(msg.seq());
        // Past the window or the budget, the entry is kept by the store
        // only (see `spill`); a session the store does not hold has only
        // memory, and the budget bounds it.
        let spill = !direct && self.spills(msg, ctx);
        // A retained burst is outside the queue limits while it waits in
        // memory, paced by the client; one that goes to the store is an
        // entry like any other, or a client away could have every retained
        // message stored again for each subscription it makes.
        let full = queued >= hard_limit || bytes.saturating_add(size) > max_bytes;
        if full && (burst.is_none() || spill) {
            if let Some(bridge) = &self.queue_limit {
                stats::add(&bridge.stats.refused, 1);
            }
            self.dropped(msg, DropReason::QueueFull, ctx);
            return pushback;
        }
        if !spill && burst.is_none() && !self.spillable(ctx) && ctx.pages.over_budget_copy(msg) {
            self.dropped(msg, DropReason::MemoryBudget, ctx);
            return pushback;
        }
        self.next_seq += 1;
        let o = Outgoing {
            seq: self.next_seq,
            msg: msg.clone(),
            qos,
            retain,
            sub_ids: sub_ids.into_boxed_slice(),
            pid: None,
            state: OutboundState::Queued,
            // A spilled entry carries its body: nothing in memory may refer
            // to it.
            inline: self.stored && (sole || spill),
            stored_copy: self.stored,
            burst: burst.is_some() && !spill,
        };
        stats::add(&ctx.stats.inflight, 1);
        self.flows_mut().moved = true;
        if !o.burst {
            self.flows_mut().bytes += size;
            if !spill {
                ctx.pages.hold_copy(ctx.stats, msg);
            }
        }
        if self.stored {
            ctx.persist.copies_created += 1;
            if !o.inline {
                ctx.persist.reference(msg);
            }
            // A spilled entry is not acknowledged within a commit or two,
            // so there is no delete for the commit task to cancel it with:
            // not noted (a fan-out to many offline sessions would note a
            // client id for each, in every commit).
            if !spill {
                match ctx.persist.created.get_mut(self.client_id().as_str()) {
                    Some(seqs) => {
                        seqs.insert(o.seq);
                    }
                    None => {
                        let mut seqs = super::idhash::IdSet::default();
                        seqs.insert(o.seq);
                        ctx.persist.created.insert(self.client(), seqs);
                    }
                }
            }
        }
        if direct {
            self.send_outgoing(o, false, ctx);
        } else if spill {
            self.store_outgoing(&o, ctx);
            self.spill_entry(o, ctx);
        } else {
            self.store_outgoing(&o, ctx);
            let f = self.flows_mut();
            f.burst_queued += usize::from(o.burst);
            f.queue.push_back(o);
        }
        pushback
    }

    /// Sends retained messages for a new subscription at QoS 0 as one
    /// [`Burst`], which the connection expands as it drains: paced by the
    /// client, not subject to the slow-consumer policy. Those larger than
    /// the client accepts are dropped; at most `cap` (the size of the
    /// retained store) wait for the connection at a time, the rest are
    /// dropped and counted. `more`: what the burst posts when it runs low,
    /// for the next page (posted at once if nothing is left to send).
    pub(crate) fn send_burst(
        &self,
        msgs: Vec<Arc<Tracked>>,
        sub_ids: Vec<NonZeroU32>,
        cap: usize,
        more: Option<crate::link::refill::More>,
        ctx: &mut Ctx,
    ) {
        let Some(conn) = &self.conn else { return };
        let sub_ids = sub_ids.into_boxed_slice();
        let mut room = cap.saturating_sub(conn.outbox.burst_len());
        let mut kept = std::collections::VecDeque::with_capacity(msgs.len().min(room));
        for msg in msgs {
            if let Some(max) = conn.max_packet_size {
                let d = Delivery::new(&msg, QosPid::AtMostOnce, true, false, sub_ids.clone(), 0);
                if d.encoded_len(self.protocol) > max.get() as usize {
                    self.dropped(&msg, DropReason::TooLarge, ctx);
                    continue;
                }
            }
            if room == 0 {
                self.dropped(&msg, DropReason::QueueFull, ctx);
                continue;
            }
            room -= 1;
            kept.push_back(msg);
        }
        if kept.is_empty() {
            if let Some(m) = more {
                m.refills.post(m.token);
            }
        } else {
            let burst = Burst {
                msgs: kept,
                sub_ids,
                more,
            };
            conn.outbox.push(Outbound::Burst(Box::new(burst)));
        }
    }

    /// Slows `publisher` down until this session's queue has drained to
    /// half its limits (once per publisher), for one congestion episode of
    /// at most [`CONGESTED_EPISODE_MS`]: a session whose episode ran out
    /// lets its publishers go and pauses nobody until it has drained.
    pub(crate) fn block(&mut self, publisher: &Arc<Outbox>, now_ms: u64) {
        let f = self.flows_mut();
        if f.stuck {
            return;
        }
        let since = *f.congested_since_ms.get_or_insert(now_ms);
        if now_ms.saturating_sub(since) >= CONGESTED_EPISODE_MS {
            f.stuck = true;
            let queued = f.queue.len();
            tracing::debug!(client_id = %Escaped(self.client_id()), queued,
                "queue still congested after its episode: publishers go on, the queue drops past its bound");
            self.release_blocked();
            return;
        }
        if !f.blocked.iter().any(|o| Arc::ptr_eq(o, publisher)) {
            publisher.pause_reads();
            f.blocked.push(publisher.clone());
        }
    }

    /// Lets every publisher this session slowed down go again.
    pub(crate) fn release_blocked(&mut self) {
        if let Some(f) = self.flows.as_mut() {
            for o in f.blocked.drain(..) {
                o.resume_reads();
            }
        }
    }

    /// Pushes a PUBLISH unless it is larger than the client accepts
    /// ([MQTT-3.1.2-24]); returns false if it was dropped.
    fn push_publish(&self, d: Delivery, ctx: &mut Ctx) -> bool {
        let Some(conn) = &self.conn else { return false };
        if let Some(max) = conn.max_packet_size {
            if d.encoded_len(self.protocol) > max.get() as usize {
                self.dropped(&d.msg, DropReason::TooLarge, ctx);
                return false;
            }
        }
        let mut after = d
            .msg
            .deliver_after
            .load(std::sync::atomic::Ordering::Relaxed);
        if self.stored
            && matches!(d.qos_pid, QosPid::ExactlyOnce(_))
            && ctx.persist.enabled
            && !ctx.persist.ack_first
        {
            // A QoS 2 PUBLISH goes out only once its entry, packet id
            // included, is stored (it is recorded in this commit). After a
            // crash that lost the entry, the id would be given to another
            // message, which the client, still waiting for the PUBREL of
            // the first, would take for a resend and drop.
            after = after.max(ctx.persist.commit);
        }
        if after
            > ctx
                .persist
                .progress
                .done
                .load(std::sync::atomic::Ordering::Relaxed)
        {
            // Released by commit `after`, or (if that one is already on its
            // way and releases before this is recorded) by the next.
            ctx.persist.hold(&conn.outbox, after, 0, d);
        } else {
            conn.outbox.push(d);
        }
        true
    }

    /// Assigns a packet id and sends a queued message (connected only).
    /// `stored_queued`: the entry is already stored, as queued.
    fn send_outgoing(&mut self, mut o: Outgoing, stored_queued: bool, ctx: &mut Ctx) {
        let pid = match stream_pid(o.msg.seq()) {
            Some(pid) => {
                // An id that did not come from `alloc_pid`: its count of
                // free ids ahead no longer holds.
                self.free_pids = 0;
                pid
            }
            None => self.alloc_pid(),
        };
        o.pid = Some(pid);
        o.state = OutboundState::Sent;
        let d = Delivery::new(
            &o.msg,
            QosPid::new(o.qos, pid),
            o.retain,
            false,
            o.sub_ids.clone(),
            ctx.now_ms,
        );
        if self.push_publish(d, ctx) {
            // A QoS 1 entry stored as queued stays so: after a restart it is
            // sent again under a new packet id, which at-least-once allows,
            // and one write per message is saved. QoS 2 must keep its packet
            // id, or a client could receive it twice.
            if !(stored_queued && o.qos == QoS::AtLeastOnce) {
                self.store_outgoing(&o, ctx);
            }
            self.flows_mut().inflight.push_back(o);
        } else {
            // Too large for this client: treated as delivered ([MQTT-3.1.2-25]).
            self.forget_outgoing(&o, ctx);
        }
    }

    /// Moves queued messages into flight while the window has room.
    pub(crate) fn fill(&mut self, ctx: &mut Ctx) {
        let (pause_at, pause_bytes) = pause_thresholds(ctx.limits);
        // See `deliver`: memory nearly spent pauses too, until it is not.
        let tight = !self.spillable(ctx) && ctx.pages.tight();
        if let Some(f) = self.flows.as_mut() {
            let queued = f.queue.len() - f.burst_queued + f.spill.count;
            if f.congested_since_ms.is_some()
                && queued <= pause_at / 2
                && f.bytes <= pause_bytes / 2
                && !tight
            {
                // Drained: the episode is over, and the next congestion may
                // pause publishers again.
                f.congested_since_ms = None;
                f.stuck = false;
                self.release_blocked();
            }
        }
        let Some(quota) = self.conn.as_ref().map(|c| usize::from(c.send_quota)) else {
            return;
        };
        while let Some(f) = self.flows.as_mut().filter(|f| f.inflight.len() < quota) {
            let next_seq = f.queue.front().map(|o| o.msg.seq());
            if next_seq.is_some_and(|seq| self.stream_pid_taken(seq)) {
                // Its packet id is still in flight: it waits (see
                // `stream_pid`), and so does what is behind it.
                break;
            }
            let Some(f) = self.flows.as_mut() else { break };
            let Some(o) = f.queue.pop_front() else {
                break;
            };
            f.burst_queued -= usize::from(o.burst);
            if o.msg.is_expired(ctx.now_ms) {
                self.dropped(&o.msg, DropReason::Expired, ctx);
                self.forget_outgoing(&o, ctx);
                continue;
            }
            // Queued is not delivered: the ACL judges it now, for the
            // client now connected (it may have changed since routing).
            if !ctx.hooks.can_receive(&self.client, &o.msg) {
                self.dropped(&o.msg, DropReason::NotAuthorized, ctx);
                self.forget_outgoing(&o, ctx);
                continue;
            }
            self.send_outgoing(o, true, ctx);
        }
        self.want_page(ctx);
    }

    /// After a reconnect: resends everything in flight (PUBLISH with DUP,
    /// or PUBREL), then fills the window from the queue ([MQTT-4.4.0-1]).
    /// What the client may no longer receive (the delivery ACL, asked
    /// again for the client now connected) is dropped instead.
    pub(crate) fn resume(&mut self, ctx: &mut Ctx) {
        let mut gone = Vec::new();
        // QoS 2 messages sent before that are not sent again (expired, or
        // refused by the ACL): the client may hold their packet ids,
        // waiting for a PUBREL, so the flow is released instead of dropped.
        let mut release = Vec::new();
        let inflight = self.flows().map(|f| &f.inflight).into_iter().flatten();
        for (i, o) in inflight.enumerate() {
            let Some(pid) = o.pid else { continue };
            let sent_qos2 = o.qos == QoS::ExactlyOnce && o.state == OutboundState::Sent;
            match o.state {
                OutboundState::Released => {
                    // Only the PUBREL is owed: no message goes out.
                    self.send_pubrel(pid, ctx);
                }
                _ if o.msg.is_expired(ctx.now_ms) && o.state == OutboundState::Sent => {
                    // An expired message is not redelivered.
                    match sent_qos2 {
                        true => release.push((i, None)),
                        false => gone.push((i, DropReason::Expired)),
                    }
                }
                _ if !ctx.hooks.can_receive(&self.client, &o.msg) => match sent_qos2 {
                    true => release.push((i, Some(DropReason::NotAuthorized))),
                    false => gone.push((i, DropReason::NotAuthorized)),
                },
                _ => {
                    let d = Delivery::new(
                        &o.msg,
                        QosPid::new(o.qos, pid),
                        o.retain,
                        true,
                        o.sub_ids.clone(),
                        ctx.now_ms,
                    );
                    self.push_publish(d, ctx);
                }
            }
        }
        for (i, reason) in release {
            if let Some(reason) = reason {
                let msg = self.flows_mut().inflight[i].msg.clone();
                self.dropped(&msg, reason, ctx);
            }
            self.release(i, ctx);
        }
        for (i, reason) in gone.into_iter().rev() {
            if let Some(o) = self.remove_inflight(i) {
                if reason == DropReason::NotAuthorized {
                    self.dropped(&o.msg, reason, ctx);
                }
                self.forget_outgoing(&o, ctx);
            }
        }
        self.fill(ctx);
    }

    /// Whether the packet id a message of the cluster's stream with
    /// sequence `seq` goes out with ([`stream_pid`]) is in flight.
    fn stream_pid_taken(&self, seq: u64) -> bool {
        stream_pid(seq).is_some_and(|pid| self.inflight_entry(pid).is_some())
    }

    /// Takes over from another node an outbound QoS 2 flow of the stream
    /// message `msg` that node had released: in flight, released, under
    /// its [`stream_pid`], so that only its PUBREL goes (on resume).
    pub(crate) fn adopt_released(&mut self, msg: &Arc<Tracked>, ctx: &mut Ctx) {
        let Some(pid) = stream_pid(msg.seq()) else {
            return;
        };
        if self.inflight_entry(pid).is_some() {
            return;
        }
        // Straight into flight, not through `deliver`: a session adopted
        // away from its client on a persistent store spills what
        // `deliver` queues, and a spilled entry is a queued one, sent
        // again as a new PUBLISH to a client that completed it. Only its
        // PUBREL is owed, so no queue bound applies either.
        self.next_seq += 1;
        let o = Outgoing {
            seq: self.next_seq,
            msg: msg.clone(),
            qos: QoS::ExactlyOnce,
            retain: false,
            sub_ids: Box::default(),
            pid: Some(pid),
            state: OutboundState::Released,
            // Stored without a body: a released entry needs none.
            inline: true,
            stored_copy: false,
            burst: false,
        };
        let size = o.msg.size();
        stats::add(&ctx.stats.inflight, 1);
        ctx.pages.hold_copy(ctx.stats, &o.msg);
        let f = self.flows_mut();
        f.bytes += size;
        f.moved = true;
        self.store_outgoing(&o, ctx);
        self.flows_mut().inflight.push_back(o);
        self.free_pids = 0;
    }

    /// Where the in-flight message with this packet id is, and it.
    fn inflight_entry(&self, pid: PacketId) -> Option<(usize, &Outgoing)> {
        let inflight = &self.flows()?.inflight;
        inflight
            .iter()
            .enumerate()
            .find(|(_, o)| o.pid == Some(pid))
    }

    fn remove_inflight(&mut self, i: usize) -> Option<Outgoing> {
        self.flows.as_mut()?.inflight.remove(i)
    }

    /// Whether this is a node's cluster router, whose acknowledgements say
    /// "the cluster's engine stored it" (see `Broker::ack_after_cluster`).
    fn is_cluster_router(&self) -> bool {
        self.client.inline
            && self
                .client_id()
                .starts_with(crate::cluster::CLIENT_ID_PREFIX)
    }

    /// PUBACK from the client: the QoS 1 flow is complete.
    pub(crate) fn on_puback(&mut self, pid: PacketId, ctx: &mut Ctx) {
        let Some((i, o)) = self.inflight_entry(pid) else {
            return;
        };
        if o.qos == QoS::AtLeastOnce {
            if self.is_cluster_router() {
                o.msg.gate.cluster_done();
            }
            self.complete_inflight(i, ctx);
        }
    }

    /// The in-flight flow at `i` completed: it leaves, and the window
    /// refills from the queue.
    fn complete_inflight(&mut self, i: usize, ctx: &mut Ctx) {
        self.flows_mut().moved = true;
        if let Some(o) = self.remove_inflight(i) {
            self.completed(&o, ctx);
            self.forget_outgoing(&o, ctx);
        }
        self.fill(ctx);
    }

    /// PUBREC from the client: answer PUBREL, or end the flow on an error code.
    pub(crate) fn on_pubrec(&mut self, r: &PubResp, ctx: &mut Ctx) {
        let Some((i, o)) = self.inflight_entry(r.packet_id) else {
            if self.protocol.is_v5() {
                let mut rel = PubResp::new(r.packet_id);
                rel.reason = crate::codec::ReasonCode::PacketIdentifierNotFound;
                self.send(Packet::PubRel(rel));
            }
            return;
        };
        if o.qos != QoS::ExactlyOnce {
            return;
        }
        if r.reason.is_success() && self.is_cluster_router() {
            if let Some(token) = o.msg.gate.cluster_done() {
                ctx.saves.stored(token);
            }
        }
        if !r.reason.is_success() {
            // A failure code ends the flow: PUBREL answers only a PUBREC below
            // 0x80 ([MQTT-4.3.3-4]).
            if let Some(o) = self.remove_inflight(i) {
                self.forget_outgoing(&o, ctx);
            }
            self.fill(ctx);
            return;
        }
        if o.state == OutboundState::Sent {
            self.release(i, ctx);
        } else {
            self.send_pubrel(r.packet_id, ctx);
        }
    }

    /// Moves the in-flight QoS 2 entry at `i` to "released" (stored as
    /// such) and sends its PUBREL.
    fn release(&mut self, i: usize, ctx: &mut Ctx) {
        let Some(o) = self.flows.as_mut().and_then(|f| f.inflight.get_mut(i)) else {
            return;
        };
        o.state = OutboundState::Released;
        let pid = o.pid;
        if let Some(o) = self.flows().and_then(|f| f.inflight.get(i)) {
            self.store_outgoing(o, ctx);
        }
        if let Some(pid) = pid {
            self.send_pubrel(pid, ctx);
        }
    }

    /// PUBCOMP from the client: the QoS 2 flow is complete.
    pub(crate) fn on_pubcomp(&mut self, pid: PacketId, ctx: &mut Ctx) {
        let Some((i, o)) = self.inflight_entry(pid) else {
            return;
        };
        if o.state == OutboundState::Released {
            self.complete_inflight(i, ctx);
        }
    }

    /// Drops every outbound message (the session is ending).
    pub(crate) fn clear_outbound(&mut self, ctx: &mut Ctx) {
        let Some(f) = self.flows.as_mut() else {
            return;
        };
        for o in f.inflight.iter().chain(&f.queue).filter(|o| !o.burst) {
            ctx.pages.free_copy(ctx.stats, &o.msg);
        }
        f.bytes = 0;
        f.burst_queued = 0;
        self.forget_spill(ctx);
        let Some(f) = self.flows.as_mut() else {
            return;
        };
        let all: Vec<Outgoing> = f.inflight.drain(..).chain(f.queue.drain(..)).collect();
        for o in &all {
            // The session's record is deleted as a whole; only the bodies'
            // reference counts need releasing.
            if self.stored && !o.inline {
                ctx.persist.release(&o.msg);
            }
            if o.stored_copy {
                o.msg.gate.copy_done();
            }
            // The router ends (its node stops): what it had not
            // acknowledged is refused. A QoS 2 copy it released did reach
            // the cluster.
            if self.is_cluster_router() && o.state != OutboundState::Released {
                self.router_let_go(&o.msg, DropReason::QueueFull, ctx);
            }
            stats::sub(&ctx.stats.inflight, 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Publish;

    fn session() -> Session {
        Session::new(Arc::new(Client {
            client_id: ByteStr::from("c"),
            username: None,
            remote_addr: None,
            certificate: None,
            protocol: ProtocolVersion::V5,
            inline: false,
        }))
    }

    fn in_flight(s: &mut Session, pid: u16) {
        let msg = Arc::new(Tracked::new(crate::Message::from_publish(
            Publish {
                dup: false,
                qos_pid: QosPid::AtMostOnce,
                retain: false,
                topic: "t".into(),
                payload: Default::default(),
                properties: Default::default(),
            },
            0,
            None,
        )));
        s.flows_mut().inflight.push_back(Outgoing {
            seq: 0,
            msg,
            qos: QoS::AtLeastOnce,
            retain: false,
            sub_ids: Box::new([]),
            pid: NonZeroU16::new(pid),
            state: OutboundState::Sent,
            inline: false,
            stored_copy: false,
            burst: false,
        });
    }

    /// Ids come in order, skip those in flight (restored ones included)
    /// and 0, and wrap around; every id given is free when given.
    #[test]
    fn packet_ids_skip_those_in_flight_across_wraps() {
        let mut s = session();
        for pid in [2, 3, 100, 65535] {
            in_flight(&mut s, pid);
        }
        let mut given = Vec::new();
        for _ in 0..3 * 65536 {
            let pid = s.alloc_pid();
            let flows = s.flows.as_mut().unwrap();
            assert!(
                flows.inflight.iter().all(|o| o.pid != Some(pid)),
                "{pid} is in flight"
            );
            if given.len() < 4 {
                given.push(pid.get());
            }
            // Keep a window of 50 in flight, acknowledged in order (after
            // the four restored ones, which stay for good).
            in_flight(&mut s, pid.get());
            let flows = s.flows.as_mut().unwrap();
            if flows.inflight.len() > 54 {
                flows.inflight.remove(4);
            }
        }
        assert_eq!(given, [1, 4, 5, 6]);
    }
}
