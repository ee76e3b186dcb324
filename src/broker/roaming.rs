//! Sessions that move between the nodes of a cluster (issue 19): the
//! core's side, plain and synchronous. The cluster's edge
//! (`server::cluster_sessions`) keeps each persistent session's state in
//! the cluster's session bucket and asks the core for it ([`Event::Export`]),
//! takes a session away from this node when a client resumes it on another
//! ([`Event::Release`]), and gives this node a session another node held
//! ([`Event::Adopt`]).
//!
//! **The cursor.** Every QoS 1/2 delivery in a cluster comes from the
//! cluster's message stream, in its order, with its sequence number
//! (`Tracked::seq`; see `Broker::dispatch`). A session's queue and its
//! in-flight window are therefore in stream order, and the first entry
//! still owed names the first sequence the session may be owed: its
//! *cursor*. With nothing owed, the cursor is one past the last sequence
//! this node routed. An entry kept only in the local store (a spilled
//! queue, or one restored after a restart) keeps its sequence there
//! (`OutboundRecord::stream_seq`), so the cursor holds for it too: a stale
//! one would have the next node deliver again what the client completed,
//! QoS 2 included. A node that adopts the session reads the stream from
//! the cursor and delivers what matches the session's subscriptions: at
//! least once (what the old node delivered and had acknowledged after the
//! cursor was last saved comes again, which QoS 1 allows), and nothing
//! acknowledged to a publisher is missed, even when the old node died.
//!
//! **The seam.** An adopted session is installed with its subscriptions
//! when the adopting node's core has routed the stream up to some sequence
//! `h`; the replay the edge read goes up to `upto` (at least `h`). Live
//! messages up to `upto` are then skipped for that session (they were in
//! the replay), and the replay is queued before anything live: one order.
//!
//! **Saves.** What a packet vouches for must be in the bucket before the
//! packet goes, or a node that dies right after sending it leaves the
//! session's next node contradicting it: a SUBACK (its subscription), a
//! PUBREC (the inbound QoS 2 packet id, or the client's resend after the
//! move is delivered twice), a PUBCOMP (that id's end, or a new message
//! reusing it is taken for a resend and dropped), a PUBREL (the outbound
//! QoS 2 message is released: sending it again as a PUBLISH would be a
//! new message to a client that completed the first). Such a packet is
//! held in its outbox ([`Saves`](super::saves::Saves)), its session marked; the edge's writer,
//! woken, exports the marked sessions ([`Event::Export`]), writes them and
//! reports the export's generation written ([`Event::Saved`]), which lets
//! the packets go. One order per connection holds (see
//! `link::outbox`'s cluster waits). A PUBREC's packet id goes to the
//! bucket only once JetStream stored its message ([`Saves::expect_stored`](super::saves::Saves::expect_stored));
//! one the cluster refused frees its id ([`Broker::settle_refused`]).
//!
//! **Outbound QoS 2 across a node's death.** A message of the stream goes
//! out with a packet id that is a function of its sequence
//! ([`stream_pid`](super::saves::stream_pid)), so the next node, replaying from the cursor, sends a
//! message the dead node had sent under the same id: a client that still
//! holds the id (it has not had the PUBREL) takes it for the resend it
//! is ([MQTT-4.3.3-9]). What the dead node had released is in the bucket
//! (saved before the PUBREL went) and gets only its PUBREL again.
//!
//! **Inbound QoS 2 across a node's death.** A PUBREC waits for its
//! message in JetStream and then for its packet id in the bucket; a node
//! that dies between the two leaves the id out of the bucket while the
//! message is in the stream, and the client's resend (DUP, same id) on the
//! next node would be stored and delivered again. So each inbound QoS 2
//! flow of a session the cluster keeps gets a number, increasing over the
//! session's life on every node ([`Session::take_inbound_flow`]), which its
//! message carries into the stream with its packet id (header
//! `Roost-Flow`, beside `Roost-Client`). The saved state says which flows
//! may lack their id ([`InboundFlows`]): those numbered from `next` (begun
//! after the save) and those in `unstored` (JetStream had not stored their
//! message as far as this node knew), every one of whose messages lies
//! above `floor` (a flow's message is stored after the flow begins, so
//! above the last sequence the core had routed then). A node adopting the
//! session without its old node's answer (claimed from a dead node, or
//! rescued) reads the stream past `floor`, and every message of the
//! client's whose flow may lack its id puts that id among those awaiting
//! PUBREL; the resend is then answered PUBREC and not delivered.
//!
//! Such a flow cannot be one the client completed, which would turn its
//! next message under that id into a "resend" and lose it: its PUBCOMP
//! went only after a save without its id (see "Saves"), taken after
//! JetStream's store was known, so that save, and any later one (the
//! bucket holds the latest), lists the flow below `next` and not in
//! `unstored`. Nor is it one of an earlier session under the same client
//! id: a session's numbers start from its clock (`first_flow`).
//! The cost is one read of the stream past the floor when a session is
//! adopted that way, the floor being about where the stream was at the
//! session's last save (the replay from the cursor, when there is one,
//! shares the read). The other design, a `Nats-Msg-Id` fixed in the
//! bucket before the message goes to JetStream so that a resend elsewhere
//! is dropped as a duplicate, costs a bucket write before every QoS 2
//! message, and holds only within JetStream's duplicate window (2 min): a
//! client may resume much later.
//!
//! A live node handing a session over answers once JetStream stored (or
//! the router let go of) each of its inbound QoS 2 messages, with their
//! ids ([`Broker::release`]): its router may otherwise store one after the
//! next node read the stream, and the resend would be new there. Left
//! open: a message a node stores after the next node's scan, which takes
//! a node that does not answer a handover (2 s) but whose router still
//! reaches JetStream later (cut off from core NATS only, or stalled), and
//! a handover whose answer comes after that wait.
//!
//! [`Event::Export`]: super::Event::Export
//! [`Event::Saved`]: super::Event::Saved
//! [`Event::Release`]: super::Event::Release
//! [`Event::Adopt`]: super::Event::Adopt

use super::saves::Unstored;
use super::session::Session;
use super::{
    session_record, split_shared, subscription_record, Broker, Message, SessionId, Tracked,
};
use crate::codec::{ByteStr, Publish, QoS};
use crate::escape::Escaped;
use roost_storage::{Op, OutboundState, Record, SessionRecord, SubscriptionRecord};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use tokio::sync::Notify;

/// Which sessions an export covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(feature = "cluster"), allow(dead_code))]
pub(crate) enum Scope {
    /// Those that changed in a way a client was told of, or that a node
    /// dying now must not lose (connected, disconnected, a will fired).
    Waiting,
    /// Those, and those whose queue moved (their cursor).
    Changed,
    /// Every one (now and then, whatever was missed).
    All,
}

/// What an export gives the edge to write.
#[derive(Debug, Default)]
#[cfg_attr(not(feature = "cluster"), allow(dead_code))]
pub(crate) struct Export {
    /// Its generation (see [`Event::Saved`](super::Event::Saved)).
    pub generation: u64,
    /// The sessions' state.
    pub sessions: Vec<SessionState>,
    /// The client ids of the sessions that ended here: their entries go
    /// (if still this node's).
    pub ended: Vec<ByteStr>,
}

/// A persistent session as the cluster keeps it: enough for another node
/// to resume it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SessionState {
    /// The session (its will, expiry, owner).
    pub session: SessionRecord,
    /// Its subscriptions.
    pub subscriptions: Vec<SubscriptionRecord>,
    /// Inbound QoS 2 packet ids awaiting PUBREL.
    pub inbound_qos2: Vec<u16>,
    /// The stream sequences of the outbound QoS 2 messages it released
    /// (PUBREL sent) and the client has not completed: only a PUBREL is
    /// owed for them, under their [`stream_pid`](super::saves::stream_pid).
    pub released: Vec<u64>,
    /// The first stream sequence it may still be owed; 0 if not known
    /// (the edge keeps the last known one).
    pub cursor: u64,
    /// What a node adopting it needs to find its client's QoS 2 messages
    /// the stream holds and `inbound_qos2` does not (see the module's
    /// "Inbound QoS 2 across a node's death").
    pub inbound: InboundFlows,
    /// Its queue moved since the last export (only then is a new cursor
    /// worth a write: an idle session's cursor follows the stream, but
    /// nothing between its old and new value is owed to it).
    #[serde(skip)]
    pub moved: bool,
}

/// A session's inbound QoS 2 flows as the cluster keeps them beside its
/// awaited packet ids: every flow numbered below `next` and not in
/// `unstored` was known stored when the state was taken, so its id is in
/// `inbound_qos2` or its flow is complete.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct InboundFlows {
    /// The number the session's next flow gets.
    pub next: u64,
    /// The flows whose messages JetStream had not stored (as far as this
    /// node knew): their ids are left out of `inbound_qos2`.
    pub unstored: Vec<u64>,
    /// A stream sequence every message of those flows, and of the flows
    /// numbered from `next`, is above; 0 if not known (the edge keeps the
    /// last known one).
    pub floor: u64,
}

impl InboundFlows {
    /// For a state a node saved before it numbered flows (bucket format
    /// 2), read `now_ms` with its `cursor`: no message of the stream
    /// carries a flow of it, so none may be open, and every later flow of
    /// it lies past the stream's end now, which the cursor is at most one
    /// past.
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    pub(crate) fn unnumbered(cursor: u64, now_ms: u64) -> Self {
        InboundFlows {
            next: super::session::first_flow(now_ms),
            unstored: Vec::new(),
            floor: cursor.saturating_sub(1),
        }
    }

    /// Whether the flow numbered `flow`, whose message is in the stream,
    /// may still be open: its PUBREC may not have gone, its PUBCOMP has
    /// not (see the module's "Inbound QoS 2 across a node's death").
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    pub(crate) fn may_be_open(&self, flow: u64) -> bool {
        flow >= self.next || self.unstored.contains(&flow)
    }
}

/// Where a handed over session's state goes.
pub(super) type Reply = tokio::sync::oneshot::Sender<Option<SessionState>>;

/// A session handed over, its answer waiting (see [`Broker::release`]).
#[derive(Debug)]
pub(super) struct Handover {
    client_id: ByteStr,
    state: SessionState,
    reply: Reply,
}

/// A session another node held, for this node to resume.
#[derive(Debug)]
pub(crate) struct Adopt {
    /// Its state.
    pub state: SessionState,
    /// What the stream holds for it from its cursor, in stream order.
    pub replay: Vec<Replayed>,
    /// The last sequence the replay covers (read up to).
    pub upto: u64,
}

/// One stream message of a replay.
#[derive(Debug)]
pub(crate) struct Replayed {
    /// Its stream sequence.
    pub seq: u64,
    /// The message.
    pub publish: Publish,
    /// Its publisher's client id.
    pub publisher: Option<ByteStr>,
}

impl Broker {
    /// This node's persistent sessions live in a cluster's session bucket,
    /// whose writer `wake` wakes when packets wait for a save.
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    pub(crate) fn save_sessions_in_cluster(&mut self, wake: Arc<Notify>) {
        self.saves.wake = Some(wake);
    }

    /// Holds `packet` to `sid`'s client until its session's state is in
    /// the cluster's bucket (and, with a store, its commit): see the
    /// module's "Saves". Outside a cluster, or for a session the cluster
    /// does not keep, it is an ordinary acknowledgement.
    pub(super) fn ack_saved(&mut self, sid: SessionId, packet: crate::codec::Packet) {
        let Some(s) = self.sessions.get(&sid) else {
            return;
        };
        let Some(conn) = s.conn.as_ref().filter(|_| self.saves.on() && s.roams()) else {
            return self.ack(sid, packet);
        };
        // As `ack` decides: while the store fails, what a session that is
        // not stored may do needs no commit.
        let vouches_for_nothing = !s.stored && self.storage_failing();
        let commit = if self.persist.must_hold() && !vouches_for_nothing {
            self.persist.touched.push(conn.outbox.clone());
            self.persist.commit
        } else {
            0
        };
        self.saves.push(s.client_id(), &conn.outbox, commit, packet);
    }

    /// Whether an acknowledgement to `sid`'s client also waits for a save.
    pub(super) fn saved_first(&self, sid: SessionId) -> bool {
        self.saves.on() && self.sessions.get(&sid).is_some_and(|s| s.roams())
    }

    /// `sid`'s session changed in a way a node dying now must not lose
    /// (it connected, disconnected, its will fired): written soon.
    pub(super) fn touch_session(&mut self, sid: SessionId) {
        if let Some(s) = self.sessions.get(&sid).filter(|s| s.roams()) {
            if self.saves.on() {
                let client_id = s.client_id().clone();
                self.saves.touch(&client_id);
            }
        }
    }

    /// `s` ends here: its entry goes (see [`Export::ended`]).
    pub(super) fn session_ended(&mut self, s: &Session) {
        if self.saves.on() && s.roams() {
            self.saves.ended.push(s.client_id().clone());
        }
    }

    /// The persistent sessions of network clients in `scope`, with their
    /// cursors: what the cluster's session bucket is to hold for this
    /// node; with the export's generation (for [`Broker::sessions_saved`])
    /// and the sessions that ended here since the last export.
    pub(super) fn export_sessions(&mut self, scope: Scope, now_ms: u64) -> Export {
        self.settle_refused();
        let routed = self.cluster_seq;
        let (generation, dirty, ended) = self.saves.export();
        let unstored = self.saves.unstored();
        let wanted = |s: &Session| match scope {
            Scope::All => true,
            Scope::Changed => dirty.contains(s.client_id()) || s.flows().is_some_and(|f| f.moved),
            Scope::Waiting => dirty.contains(s.client_id()),
        };
        let sessions = self
            .sessions
            .values_mut()
            .filter(|s| s.roams() && wanted(s))
            .map(|s| {
                let flows = unstored.get(s.client_id()).map_or(&[][..], |u| &u[..]);
                let mut state = session_state(s, routed, now_ms, flows);
                if let Some(f) = s.flows.as_mut() {
                    state.moved = std::mem::take(&mut f.moved);
                }
                state
            })
            .collect();
        Export {
            generation,
            sessions,
            ended,
        }
    }

    /// Inbound QoS 2 flows whose PUBREC was refused (the router let go of
    /// their message) are over: their packet ids are no longer awaited, so
    /// the client's next message under one is a new message, not a resend.
    pub(super) fn settle_refused(&mut self) {
        if self.saves.refused.is_empty() {
            return;
        }
        for (sid, pid) in std::mem::take(&mut self.saves.refused) {
            self.forget_inbound_qos2(sid, pid);
        }
    }

    /// `sid` no longer awaits the PUBREL of inbound QoS 2 flow `pid`.
    pub(super) fn forget_inbound_qos2(&mut self, sid: SessionId, pid: u16) {
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        if s.release_inbound_qos2(pid) && s.stored {
            let client_id = s.client_id().as_str().to_owned();
            self.persist.push(Op::DeleteInboundQos2 {
                client_id,
                packet_id: pid,
            });
        }
    }

    /// The export `generation` is in the bucket: the packets that waited
    /// for it go.
    pub(super) fn sessions_saved(&mut self, generation: u64) {
        self.saves.saved(generation);
    }
}

/// What the cluster keeps of `s`, `routed` being the last stream sequence
/// this node routed, and `unstored` its inbound QoS 2 flows whose
/// messages JetStream has not stored yet (their ids are left out).
fn session_state(s: &mut Session, routed: u64, now_ms: u64, unstored: &[Unstored]) -> SessionState {
    let floor = unstored.iter().map(|u| u.floor).fold(routed, u64::min);
    let inbound = InboundFlows {
        next: s.inbound_next(now_ms),
        unstored: unstored.iter().map(|u| u.flow).collect(),
        floor,
    };
    let mut state = SessionState {
        session: session_record(s),
        subscriptions: s
            .subscriptions
            .iter()
            .map(|(f, e)| subscription_record(f, e))
            .collect(),
        inbound_qos2: s
            .inbound_qos2()
            .map(|q| {
                let mut ids: Vec<u16> = q.iter().copied().collect();
                ids.sort_unstable();
                ids
            })
            .unwrap_or_default(),
        released: s
            .flows()
            .map(|f| {
                f.inflight
                    .iter()
                    .filter(|o| o.state == OutboundState::Released && o.msg.seq() != 0)
                    .map(|o| o.msg.seq())
                    .collect()
            })
            .unwrap_or_default(),
        cursor: cursor(s, routed),
        inbound,
        moved: false,
    };
    state
        .inbound_qos2
        .retain(|id| !unstored.iter().any(|u| u.pid == *id));
    state
}

impl Broker {
    /// A client resumes (or starts over, `clean_start`) its session on
    /// another node: its connection here closes as in a takeover (5.0:
    /// DISCONNECT 0x8E), and the session leaves this node. Resumed, it
    /// moves with its will (its state is returned for the other node);
    /// started over, it ends here as a session ends (its pending will goes
    /// out, once, from here). The state goes to `reply`, at once, or once
    /// JetStream stored (or the router let go of) every inbound QoS 2
    /// message of the session it had not stored yet: see the module's
    /// "Inbound QoS 2 across a node's death".
    pub(super) fn release(
        &mut self,
        client_id: &str,
        clean_start: bool,
        reply: Reply,
        now_ms: u64,
    ) {
        let Some(&sid) = self.by_client_id.get(client_id) else {
            let _ = reply.send(None);
            return;
        };
        if !self.sessions.get(&sid).is_some_and(|s| s.roams()) {
            let _ = reply.send(None);
            return;
        }
        self.close_taken_over(sid, now_ms);
        tracing::info!(client_id = %Escaped(client_id), clean_start,
            "cluster: session taken over on another node");
        if clean_start {
            self.end_session(sid, now_ms);
            let _ = reply.send(None);
            return;
        }
        let routed = self.cluster_seq;
        let Some(s) = self.sessions.get_mut(&sid) else {
            let _ = reply.send(None);
            return;
        };
        // Every awaited id goes with it, those whose message is still on
        // its way to JetStream too; the answer waits for those (below).
        let state = session_state(s, routed, now_ms, &[]);
        let client_id = s.client_id().clone();
        self.forget_session(sid, now_ms);
        if self.saves.any_unstored(&client_id) {
            self.saves.handing.insert(client_id.clone(), Vec::new());
            self.handovers.push(Handover {
                client_id,
                state,
                reply,
            });
        } else {
            let _ = reply.send(Some(state));
        }
    }

    /// Answers the handovers (see [`Broker::release`]) whose inbound QoS 2
    /// messages are all stored or let go of now: the ids of those let go
    /// of leave the state (their flows are over, refused).
    pub(super) fn answer_handovers(&mut self) {
        let mut i = 0;
        while i < self.handovers.len() {
            let h = &self.handovers[i];
            if self.saves.any_unstored(&h.client_id) {
                i += 1;
                continue;
            }
            let mut h = self.handovers.swap_remove(i);
            let refused = self.saves.handing.remove(&h.client_id).unwrap_or_default();
            h.state.inbound_qos2.retain(|id| !refused.contains(id));
            let _ = h.reply.send(Some(h.state));
        }
    }

    /// The cluster says another node owns the session now (it took it while
    /// this node could not be asked): it leaves this node without its will,
    /// which went with it.
    pub(super) fn lost_session(&mut self, client_id: &str, now_ms: u64) {
        let Some(&sid) = self.by_client_id.get(client_id) else {
            return;
        };
        self.close_taken_over(sid, now_ms);
        tracing::warn!(client_id = %Escaped(client_id),
            "cluster: another node took this session over; dropped here");
        self.forget_session(sid, now_ms);
    }

    /// The client ids of the sessions the cluster keeps (see `roams`).
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    pub(crate) fn roaming_client_ids(&self) -> Vec<String> {
        self.sessions
            .values()
            .filter(|s| s.roams())
            .map(|s| s.client_id().as_str().to_owned())
            .collect()
    }

    /// Drops the sessions of `client_ids` without their wills: restored
    /// from this node's store, they were taken over by another node while
    /// this one was down.
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    pub(crate) fn forget_sessions(&mut self, client_ids: &[String], now_ms: u64) {
        for id in client_ids {
            if let Some(&sid) = self.by_client_id.get(id.as_str()) {
                tracing::info!(client_id = %Escaped(id),
                    "cluster: restored session belongs to another node now; dropped here");
                self.forget_session(sid, now_ms);
            }
        }
    }

    /// Ends a session here without its will (it moved with the session).
    /// Its entry stays: it is another node's now.
    fn forget_session(&mut self, sid: SessionId, now_ms: u64) {
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        s.will = None;
        s.will_due_ms = None;
        let client_id = s.client_id().clone();
        self.end_session(sid, now_ms);
        if self.saves.ended.last() == Some(&client_id) {
            self.saves.ended.pop();
        }
    }

    /// Installs a session another node held, disconnected, so that the
    /// client's CONNECT (which follows) resumes it; queues the replay.
    /// A session of that id already here and connected stays (this node
    /// owns it); one here and away is stale (it moved since) and is
    /// replaced.
    pub(super) fn adopt(&mut self, adopt: Adopt, now_ms: u64) {
        let Adopt {
            state,
            replay,
            upto,
        } = adopt;
        let client_id = state.session.client_id.clone();
        if let Some(&sid) = self.by_client_id.get(client_id.as_str()) {
            if self.sessions.get(&sid).is_some_and(|s| s.conn.is_some()) {
                return;
            }
            self.forget_session(sid, now_ms);
        }
        let mut state = state;
        state.inbound_qos2.sort_unstable();
        state.inbound_qos2.dedup();
        let mut restore = self.restore(now_ms);
        restore.record(Record::Session(state.session.clone()));
        for sub in &state.subscriptions {
            restore.record(Record::Subscription {
                client_id: client_id.clone(),
                subscription: sub.clone(),
            });
        }
        for &packet_id in &state.inbound_qos2 {
            restore.record(Record::InboundQos2 {
                client_id: client_id.clone(),
                packet_id,
            });
        }
        restore.finish_one();
        let Some(&sid) = self.by_client_id.get(client_id.as_str()) else {
            return;
        };
        if let Some(s) = self.sessions.get_mut(&sid) {
            // Its flows go on from where they were numbered (the edge
            // counted what it found in the stream).
            s.inbound_from(state.inbound.next);
        }
        if self.persist.enabled {
            if let Some(s) = self.sessions.get_mut(&sid) {
                s.stored = true;
            }
            self.persist.push(Op::PutSession(state.session.clone()));
            for sub in state.subscriptions {
                self.persist.push(Op::PutSubscription {
                    client_id: client_id.clone(),
                    subscription: sub,
                });
            }
            for packet_id in state.inbound_qos2 {
                self.persist.push(Op::PutInboundQos2 {
                    client_id: client_id.clone(),
                    packet_id,
                });
            }
        } else if let Some(s) = self.sessions.get_mut(&sid) {
            s.stored = false;
        }
        // The QoS 2 flows the old node released come first (they are the
        // oldest owed), in flight with only their PUBREL owed; the rest of
        // the replay is delivered as routing would.
        let mut replay = replay;
        let mut released = state.released;
        released.sort_unstable();
        for seq in released {
            let publish = match replay.iter().position(|r| r.seq == seq) {
                Some(i) => replay.remove(i).publish,
                // Aged out of the stream, or past the replay's bound: the
                // message is not needed, only its packet id.
                None => Publish::new("", bytes::Bytes::new()),
            };
            let msg =
                Arc::new(Tracked::new(Message::from_publish(publish, now_ms, None)).with_seq(seq));
            let (mut ctx, sessions) = self.ctx(now_ms);
            if let Some(s) = sessions.get_mut(&sid) {
                s.adopt_released(&msg, &mut ctx);
            }
        }
        let replayed = replay.len();
        for r in replay {
            self.replay_one(sid, r, now_ms);
        }
        if upto > self.cluster_seq {
            self.cluster_skip.insert(sid, upto);
        }
        // A session whose node died while its client was connected lost
        // that connection now, as far as anyone can tell: a will without
        // delay goes out at once (one with a delay waits, and the client's
        // CONNECT, if one follows, cancels it), as a dropped connection's.
        // One handed over by a live node was detached there already.
        self.fire_due_will(sid, now_ms);
        tracing::info!(client_id = %Escaped(&client_id), replayed, upto,
            "cluster: session adopted from another node");
    }

    /// Queues one replayed message for `sid` if its subscriptions match it,
    /// as routing would (the highest QoS of its matching ordinary
    /// subscriptions, every identifier; No Local; the delivery ACL). Share
    /// groups are left out: their other members had it.
    fn replay_one(&mut self, sid: SessionId, r: Replayed, now_ms: u64) {
        let Some(s) = self.sessions.get(&sid) else {
            return;
        };
        let own = r.publisher.as_ref() == Some(s.client_id());
        let mut qos: Option<QoS> = None;
        let mut retain_as_published = false;
        let mut ids = Vec::new();
        for (filter, entry) in s.subscriptions.iter() {
            let (group, plain) = split_shared(filter);
            if group.is_some() || !crate::topic::matches(plain, &r.publish.topic) {
                continue;
            }
            if own && entry.options.no_local {
                continue;
            }
            qos = qos.max(Some(entry.options.qos));
            retain_as_published |= entry.options.retain_as_published;
            ids.extend(entry.id);
        }
        let Some(qos) = qos else { return };
        let mut msg = Message::from_publish(r.publish, now_ms, None);
        msg.publisher_id = r.publisher;
        let tracked = Tracked::new(msg).with_seq(r.seq);
        let msg = Arc::new(tracked);
        if !self.hooks.can_receive(&s.client, &msg) {
            return;
        }
        let qos = msg.qos.min(qos);
        let retain = msg.retain && retain_as_published && s.protocol.is_v5();
        ids.sort_unstable();
        ids.dedup();
        let (mut ctx, sessions) = self.ctx(now_ms);
        if let Some(s) = sessions.get_mut(&sid) {
            s.deliver(&msg, qos, retain, ids, true, None, &mut ctx);
        }
    }

    /// Whether `msg` is one a session adopted here already got in its
    /// replay (see the module's "seam").
    pub(super) fn replayed_already(&self, sid: SessionId, msg: &Tracked) -> bool {
        msg.seq() != 0 && self.cluster_skip.get(&sid).is_some_and(|u| msg.seq() <= *u)
    }

    /// Forgets the seams the stream has passed.
    pub(super) fn passed_seams(&mut self) {
        if !self.cluster_skip.is_empty() {
            let seq = self.cluster_seq;
            self.cluster_skip.retain(|_, upto| *upto > seq);
        }
    }
}

/// See the module's "cursor": the stream sequence of the first entry owed,
/// or one past `routed` with none.
///
/// Entries with sequence 0 are not from the stream (a retained message sent
/// for a subscription, a share group's message) and a replay could not
/// bring them back: the first owed entry that has a sequence counts. The
/// spilled tail comes after everything in memory, in stream order too, so
/// with nothing in memory from the stream the spill's lowest sequence is
/// the cursor; the spill keeps it (`Spill::stream`), read back with its
/// entries from the store. With nothing owed from the stream, in memory or
/// spilled, everything the stream held for the session up to `routed` is
/// done.
///
/// Never 0 now. What still reads back as 0 is an entry stored before the
/// store kept stream sequences (format version 2 and older): taken as not
/// from the stream, so a session restored from such a store and adopted
/// elsewhere before it drained may miss those entries in the replay (a
/// store upgraded while its node belongs to a cluster).
fn cursor(s: &Session, routed: u64) -> u64 {
    let Some(f) = s.flows() else {
        return routed + 1;
    };
    let in_memory = f.inflight.iter().chain(f.queue.iter());
    match in_memory.map(|o| o.msg.seq()).find(|&seq| seq != 0) {
        Some(seq) => seq,
        None if f.spill.count > 0 && f.spill.stream != 0 => f.spill.stream,
        None => routed + 1,
    }
}
