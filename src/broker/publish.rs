//! Inbound PUBLISH and its acknowledgements, routing to subscribers,
//! backpressure and retained messages.

use super::*;
use crate::escape::Escaped;
use session::Pushback;

impl Broker {
    /// Every acknowledgement goes through here: with a persistent store it
    /// waits for the commit of what it acknowledges (the durability
    /// contract: PUBACK/PUBREC mean "this message is safe").
    pub(super) fn ack(&mut self, sid: SessionId, packet: Packet) {
        let Some(s) = self.sessions.get(&sid) else {
            return;
        };
        let Some(conn) = s.conn.as_ref() else {
            return;
        };
        // While the store fails, what a session that is not stored is
        // allowed to do needs no storage (the rest was refused), so its
        // acknowledgement need not wait for the writes being retried.
        let vouches_for_nothing = !s.stored && self.storage_failing();
        if self.persist.must_hold() && !vouches_for_nothing {
            self.persist
                .hold(&conn.outbox, self.persist.commit, 0, packet);
        } else {
            conn.outbox.push(packet);
        }
    }

    /// True if a QoS 1/2 PUBLISH from session `sid` would need storage
    /// before its acknowledgement: it is retained, it is QoS 2 from a
    /// stored session (its packet id is stored), or a stored session
    /// subscribes to its topic at QoS 1/2 (its copy is stored). Share groups
    /// count if any member would store a copy: the choice is made later.
    /// Looked at only while the store fails.
    fn publish_needs_storage(&self, sid: SessionId, p: &Publish) -> bool {
        let qos = p.qos_pid.qos();
        if qos == QoS::AtMostOnce {
            return false;
        }
        let stored = |sid: &SessionId| self.sessions.get(sid).is_some_and(|s| s.stored);
        if p.retain || (qos == QoS::ExactlyOnce && stored(&sid)) {
            return true;
        }
        let mut needs = false;
        self.subs.for_each_match(&p.topic, |m| match m {
            Match::Direct { key, value, .. } => {
                needs |= value.options.qos > QoS::AtMostOnce && stored(key);
            }
            Match::Shared { members, .. } => {
                needs |= members
                    .iter()
                    .any(|(key, value)| value.options.qos > QoS::AtMostOnce && stored(key));
            }
        });
        needs
    }

    /// Refuses a QoS 1/2 PUBLISH that needs storage while the store fails,
    /// before it is routed or retained: a 5.0 publisher gets 0x97 (Quota
    /// exceeded: the server is out of a resource, try later), a 3.x one has
    /// no negative acknowledgement and is disconnected without one, so that
    /// it publishes again (the durability contract).
    fn refuse_for_storage(&mut self, conn: ConnId, sid: SessionId, p: &Publish, now_ms: u64) {
        stats::add(&self.stats.storage_refused, 1);
        static WARNED: super::throttle::OncePerSecond = super::throttle::OncePerSecond::new();
        if WARNED.ready(now_ms) {
            tracing::warn!(topic = %Escaped(p.topic.as_str()),
                "store failing: QoS 1/2 PUBLISH that needs storage refused (more within a second not logged)");
        }
        let Some(s) = self.sessions.get(&sid) else {
            return;
        };
        if !s.protocol.is_v5() {
            return self.disconnect_with(conn, ReasonCode::QuotaExceeded, None, now_ms);
        }
        let Some(pid) = p.qos_pid.packet_id() else {
            return;
        };
        let mut resp = PubResp::new(pid);
        resp.reason = ReasonCode::QuotaExceeded;
        let packet = match p.qos_pid.qos() {
            QoS::ExactlyOnce => Packet::PubRec(resp),
            _ => Packet::PubAck(resp),
        };
        // It vouches for nothing: it waits only for the packets ahead of it.
        s.send(packet);
    }

    /// A QoS 1 PUBACK vouches only for the copies its message made: with
    /// none (and nothing retained) it waits for nothing but the packets
    /// ahead of it; with some, for its commit or for every copy to be
    /// acknowledged, whichever comes first (see [`super::gate`]).
    fn ack_qos1(&mut self, sid: SessionId, packet: Packet, routed: Option<(Arc<Tracked>, u64)>) {
        let retained = routed.as_ref().is_some_and(|(m, _)| m.retain);
        if !self.persist.must_hold() || retained {
            return self.ack(sid, packet);
        }
        let Some(conn) = self.sessions.get(&sid).and_then(|s| s.conn.as_ref()) else {
            return;
        };
        match routed {
            Some((msg, copies)) if copies > 0 => {
                self.next_gate += 1;
                let token = self.next_gate;
                self.persist
                    .hold(&conn.outbox, self.persist.commit, token, packet);
                msg.gate.arm(conn.outbox.clone(), token, copies);
            }
            _ => {
                conn.outbox.push(packet);
            }
        }
    }

    /// A publisher's acknowledgement in a cluster (issue 19): it waits,
    /// as on one node, for its commit (or, plain QoS 1, for its stored
    /// copies' acknowledgements, see [`Broker::ack_qos1`]), and also for
    /// the cluster router's acknowledgement of its copy, which the router
    /// gives once JetStream stored the message: "acknowledged on this
    /// node" then means "on its way to every node, whatever happens to
    /// this one". `routed` is the message and its stored copies.
    fn ack_after_cluster(
        &mut self,
        sid: SessionId,
        packet: Packet,
        routed: Option<(Arc<Tracked>, u64)>,
    ) {
        let Some((msg, copies)) = routed else {
            return self.ack(sid, packet);
        };
        let Some(s) = self.sessions.get(&sid) else {
            return;
        };
        let Some(conn) = s.conn.as_ref() else {
            return;
        };
        let outbox = conn.outbox.clone();
        let qos1 = matches!(packet, Packet::PubAck(_));
        let vouches_for_nothing = !s.stored && self.storage_failing();
        self.next_gate += 1;
        let token = self.next_gate;
        // As `ack` and `ack_qos1` decide: a plain QoS 1 message without
        // stored copies needs no commit.
        let commit_needed = self.persist.must_hold()
            && !vouches_for_nothing
            && !(qos1 && !msg.retain && copies == 0);
        // A successful PUBREC also waits, once its message is stored, for
        // its packet id to be in the session bucket (see `roaming`'s
        // "Saves"): two cluster waits.
        let rec = match &packet {
            Packet::PubRec(r) if r.reason.is_success() => Some(r.packet_id.get()),
            _ => None,
        };
        let saved = rec.is_some() && self.saved_first(sid);
        let client_id = s.client_id().clone();
        let waits = 1 + u8::from(saved);
        let mut gated_copies = 0;
        if commit_needed {
            outbox.push_held(self.persist.commit, token, waits, packet);
            self.persist.touched.push(outbox.clone());
            if qos1 && !msg.retain {
                gated_copies = copies;
            }
        } else {
            outbox.push_held(0, token, waits, packet);
        }
        let save = saved.then(|| outbox.clone());
        let refused = msg.gate.arm_after_cluster(outbox, token, gated_copies);
        if let Some(pid) = rec {
            if refused {
                self.forget_inbound_qos2(sid, pid);
            } else {
                let flow = msg.inbound_flow().map_or(0, |(_, n)| n);
                let floor = self.cluster_seq;
                self.saves
                    .expect_stored(token, sid, client_id, pid, (flow, floor), save);
            }
        }
    }

    pub(super) fn on_publish(
        &mut self,
        conn: ConnId,
        sid: SessionId,
        p: Publish,
        verdict: PublishVerdict,
        origin: Option<&Origin>,
        now_ms: u64,
    ) {
        stats::add(&self.stats.messages_received, 1);
        let qos = p.qos_pid.qos();
        if too_deep(p.topic.as_bytes(), self.opts.limits.maximum_topic_levels) {
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
            // A flow whose PUBREC the cluster refused is over: its id is
            // free again before this PUBLISH is judged a resend.
            self.settle_refused();
            let s = &self.sessions[&sid];
            let awaiting = s.inbound_qos2();
            if awaiting.is_some_and(|q| q.contains(&pid.get())) {
                // A resent QoS 2 PUBLISH: acknowledge, do not deliver again
                // ([MQTT-4.3.3-9]).
                return self.ack(sid, Packet::PubRec(PubResp::new(pid)));
            }
            if awaiting.map_or(0, |q| q.len()) >= usize::from(self.opts.limits.receive_maximum) {
                // [MQTT-3.3.4-9]
                return self.protocol_error(conn, ReasonCode::ReceiveMaximumExceeded, now_ms);
            }
        }
        if verdict == PublishVerdict::Deliver
            && qos != QoS::AtMostOnce
            && !p.topic.as_bytes().starts_with(b"$SYS")
            && self.storage_failing()
            && self.publish_needs_storage(sid, &p)
        {
            return self.refuse_for_storage(conn, sid, &p, now_ms);
        }
        // In a cluster, everything but `$SYS` (refused below) and the
        // router's own injections goes to the router: a QoS 1/2
        // acknowledgement waits for the cluster's engine as well.
        let to_cluster = qos != QoS::AtMostOnce && self.cluster_router.is_some_and(|r| r != sid);
        let mut reason = ReasonCode::Success;
        // The routed message and how many stored copies it made.
        let mut routed: Option<(Arc<Tracked>, u64)> = None;
        if p.topic.as_bytes().starts_with(b"$SYS") {
            // $SYS is the broker's own namespace.
            reason = ReasonCode::NotAuthorized;
        } else if let PublishVerdict::Refuse(code) = verdict {
            reason = code;
        } else if verdict == PublishVerdict::Deliver {
            // One lookup for what the message needs of its publisher: its
            // client id (for the inline client's subscribers and the hooks;
            // shared, not copied) and whether its session is stored.
            let (publisher_id, stored) = self
                .sessions
                .get(&sid)
                .map_or((None, false), |s| (Some(s.client_id().clone()), s.stored));
            let mut msg = Message::from_publish(p, now_ms, Some(sid));
            msg.publisher_id = publisher_id;
            if let Some(origin) = origin {
                // Its publisher, not the router, for No Local and the
                // hooks: the session of that client here, if it has one.
                msg.publisher_id = origin.client_id.clone();
                msg.publisher = origin
                    .client_id
                    .as_ref()
                    .and_then(|id| self.by_client_id.get(id).copied());
            }
            let seq = origin.and_then(|o| o.seq).unwrap_or(0);
            let mut tracked = Tracked::new(msg).with_seq(seq);
            if let (QoS::ExactlyOnce, Some(pid), true) = (qos, pid, to_cluster) {
                if self.saved_first(sid) {
                    // Numbered, so that a node adopting the session after
                    // this one died finds the flow in the stream (see
                    // `roaming`'s "Inbound QoS 2 across a node's death").
                    if let Some(s) = self.sessions.get_mut(&sid) {
                        tracked = tracked.with_flow(pid.get(), s.take_inbound_flow(now_ms));
                    }
                }
            }
            let msg = Arc::new(tracked);
            if qos == QoS::ExactlyOnce && stored && self.persist.enabled && !self.persist.ack_first
            {
                // Its packet id goes into this commit (below).
                msg.deliver_after
                    .store(self.persist.commit, std::sync::atomic::Ordering::Relaxed);
            }
            // Injected by the router: routed here only, and not retained:
            // a cluster's retained state comes from its retained bucket, in
            // the bucket's order (`server::retained_bucket`); the origin
            // stored its own at once.
            let injected = self.cluster_router == Some(sid);
            let retain_here = origin.is_none();
            let copies_before = self.persist.copies_created;
            let (matched, dropped) = self.dispatch(&msg, injected, retain_here, now_ms);
            if seq != 0 {
                // Routed: the stream up to it has reached this node's
                // subscribers (see `roaming`).
                self.cluster_seq = self.cluster_seq.max(seq);
                self.passed_seams();
            }
            routed = Some((msg.clone(), self.persist.copies_created - copies_before));
            if matched == 0 {
                reason = ReasonCode::NoMatchingSubscribers;
            } else if dropped == matched {
                // Every recipient's queue was full: say so rather than
                // claim success (a 3.x publisher has no way to hear it).
                reason = ReasonCode::QuotaExceeded;
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
        // Routed, so the router got its copy (refused and `$SYS` ones were
        // not routed).
        let to_cluster = to_cluster.then_some(routed.as_ref()).flatten().cloned();
        match qos {
            QoS::AtLeastOnce if to_cluster.is_some() => {
                self.ack_after_cluster(sid, Packet::PubAck(resp), to_cluster)
            }
            QoS::AtLeastOnce => self.ack_qos1(sid, Packet::PubAck(resp), routed),
            QoS::ExactlyOnce => {
                if reason.is_success() {
                    if let Some(s) = self.sessions.get_mut(&sid) {
                        s.flows_mut().inbound_qos2.insert(pid.get());
                        if s.stored {
                            let client_id = s.client_id().as_str().to_owned();
                            self.persist.push(Op::PutInboundQos2 {
                                client_id,
                                packet_id: pid.get(),
                            });
                        }
                    }
                }
                // In a cluster, the PUBREC also waits for the packet id to
                // be in the session bucket (see `roaming`'s "Saves").
                if to_cluster.is_some() {
                    self.ack_after_cluster(sid, Packet::PubRec(resp), to_cluster)
                } else if reason.is_success() {
                    self.ack_saved(sid, Packet::PubRec(resp))
                } else {
                    self.ack(sid, Packet::PubRec(resp))
                }
            }
            QoS::AtMostOnce => {}
        }
    }

    pub(super) fn on_pubrel(&mut self, sid: SessionId, r: PubResp) {
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        let mut comp = PubResp::new(r.packet_id);
        if s.release_inbound_qos2(r.packet_id.get()) {
            if s.stored {
                let client_id = s.client_id().as_str().to_owned();
                self.persist.push(Op::DeleteInboundQos2 {
                    client_id,
                    packet_id: r.packet_id.get(),
                });
            }
        } else if s.protocol.is_v5() {
            comp.reason = ReasonCode::PacketIdentifierNotFound;
        }
        // In a cluster, once the id's end is in the session bucket: a
        // node resuming the session with the id still there would take
        // the client's next message under it for a resend.
        self.ack_saved(sid, Packet::PubComp(comp));
    }

    // ----- routing ----------------------------------------------------

    /// Where a published message goes (a client's, an inline client's, a
    /// will): into the retained store if it is retained (and `retain_here`),
    /// then to the subscriptions, and unless it was `injected` from the
    /// cluster, to the cluster. Returns as [`Broker::route`] does.
    ///
    /// In a cluster the cluster's log orders deliveries: a QoS 1/2 message
    /// goes only to this node's router, which stores it in the cluster's
    /// message stream, and every node, this one included, delivers it to
    /// its own subscribers when it reads it back (an injection, routed
    /// here as on one node). So every QoS 1/2 delivery on every node has a
    /// stream sequence, in one order, which is what lets a session move
    /// between nodes. QoS 0 is routed here at once and also handed to the
    /// router for the other nodes (at most once needs no order).
    pub(super) fn dispatch(
        &mut self,
        msg: &Arc<Tracked>,
        injected: bool,
        retain_here: bool,
        now_ms: u64,
    ) -> (usize, usize) {
        if msg.retain && retain_here {
            self.store_retained(msg, now_ms);
        }
        let router = self
            .cluster_router
            .filter(|_| !injected && !msg.topic.as_bytes().starts_with(b"$SYS"));
        let Some(router) = router else {
            return self.route(msg, now_ms);
        };
        let (matched, dropped) = if msg.qos == QoS::AtMostOnce {
            self.route(msg, now_ms)
        } else {
            (0, 0)
        };
        let (more, lost) = self.hand_to_router(router, msg, now_ms);
        (matched + more, dropped + lost)
    }

    /// Hands `msg` to this node's cluster router as if its `#`
    /// subscription matched (it does not for `$` topics, which cross too).
    /// Returns how many copies were made and dropped (1 and 0, or 0 and 0
    /// if the router is not subscribed yet).
    fn hand_to_router(
        &mut self,
        router: SessionId,
        msg: &Arc<Tracked>,
        now_ms: u64,
    ) -> (usize, usize) {
        let (mut ctx, sessions) = self.ctx(now_ms);
        let Some(entry) = sessions
            .get(&router)
            .and_then(|s| s.subscriptions.get("#").copied())
        else {
            // No router to take it (its session is gone): the cluster will
            // never store it, so its publisher is refused, not left waiting.
            msg.gate.cluster_let_go();
            return (0, 0);
        };
        let Some(s) = sessions.get_mut(&router) else {
            return (0, 0);
        };
        let qos = msg.qos.min(entry.options.qos);
        let sub_ids = entry.id.into_iter().collect();
        let pushback = s.deliver(msg, qos, msg.retain, sub_ids, true, None, &mut ctx);
        let dropped = ctx.drops.get() as usize;
        if pushback != Pushback::None {
            // The cluster is slower than this publisher: it waits, as for a
            // slow local subscriber.
            self.slow_down_publisher(msg, &[(router, pushback)], now_ms);
        }
        (1, dropped)
    }

    /// Delivers `msg` to every matching subscription; returns how many
    /// sessions it went to, and for how many of them it was dropped.
    pub(crate) fn route(&mut self, msg: &Arc<Tracked>, now_ms: u64) -> (usize, usize) {
        let clustered = self.groups_clustered();
        let mut targets = std::mem::take(&mut self.scratch);
        let sessions = &self.sessions;
        let hooks = &self.hooks;
        let cursors = &mut self.shared_cursor;
        // The router gets its copy from `dispatch`, never by matching.
        let router = self.cluster_router;
        // Ordinary subscriptions of one filter belong to distinct sessions;
        // only matches from several filters can name a session twice.
        let mut last_filter: *const u8 = std::ptr::null();
        let mut direct_filters = 0;
        self.subs.for_each_match(&msg.topic, |m| match m {
            Match::Direct { filter, key, value } => {
                if router == Some(*key) {
                    return;
                }
                if value.options.no_local && msg.publisher == Some(*key) {
                    return; // [MQTT-3.8.3-3]
                }
                if filter.as_ptr() != last_filter {
                    last_filter = filter.as_ptr();
                    direct_filters += 1;
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
                // In a cluster the router serves share groups (see
                // `groups`): one member across all nodes.
                if members.is_empty() || clustered {
                    return;
                }
                let cursor = groups::cursor(cursors, group, filter);
                let n = members.len();
                // Offline members only when no connected one may have it.
                let Some(pick) = groups::pick(members, *cursor, sessions, hooks, msg, true) else {
                    return;
                };
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
        if direct_filters > 1 {
            targets.sort_unstable_by_key(|t| (t.sid, t.shared));
            targets.dedup_by(|t, last| {
                let same = last.sid == t.sid && !last.shared && !t.shared;
                if same {
                    last.qos = last.qos.max(t.qos);
                    last.retain_as_published |= t.retain_as_published;
                    last.sub_ids.append(&mut t.sub_ids);
                }
                same
            });
        }
        if msg.seq() != 0 && !self.cluster_skip.is_empty() {
            // Sessions adopted from another node got it in their replay.
            targets.retain(|t| !self.replayed_already(t.sid, msg));
        }
        let count = targets.len();
        let (mut ctx, sessions) = self.ctx(now_ms);
        let mut congested = Vec::new();
        for t in targets.drain(..) {
            let Some(s) = sessions.get_mut(&t.sid) else {
                continue;
            };
            // A share group's member was chosen as one that may receive it.
            if !t.shared && !ctx.hooks.can_receive(&s.client, msg) {
                continue;
            }
            let qos = msg.qos.min(t.qos);
            // 3.1.1 clears RETAIN on forwarded messages ([MQTT-3.3.1-9]);
            // 5.0 keeps it only with Retain As Published ([MQTT-3.3.1-12]).
            let retain = msg.retain && t.retain_as_published && s.protocol.is_v5();
            let mut sub_ids = t.sub_ids;
            sub_ids.sort_unstable();
            sub_ids.dedup();
            match s.deliver(msg, qos, retain, sub_ids, count == 1, None, &mut ctx) {
                Pushback::None => {}
                pushback => congested.push((t.sid, pushback)),
            }
        }
        let dropped = ctx.drops.get() as usize;
        self.scratch = targets;
        if !congested.is_empty() {
            self.slow_down_publisher(msg, &congested, now_ms);
        }
        (count, dropped)
    }

    /// Backpressure: a connected subscriber's queue is full, so the
    /// publisher's reads pause until it drains (bounded: see
    /// [`Outbox::poll_paused`]). QoS 1/2 messages are then kept rather
    /// than dropped, and the publisher slows to what its subscribers take.
    /// A subscriber whose writes fell behind pauses it only briefly
    /// ([`Outbox::slow_down`]).
    pub(super) fn slow_down_publisher(
        &mut self,
        msg: &Tracked,
        congested: &[(SessionId, Pushback)],
        now_ms: u64,
    ) {
        // A message of the cluster's stream was injected here by the
        // router: the router waits (the stream holds what waits), not the
        // publisher, which may be on another node, or has already had its
        // acknowledgement.
        let from_stream = msg.seq() != 0;
        let publisher = if from_stream {
            self.cluster_router
        } else {
            msg.publisher
        };
        let Some(publisher) = publisher else {
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
        for (sid, pushback) in congested {
            // A client that publishes to itself must keep reading its own
            // acknowledgements.
            if *sid == publisher {
                continue;
            }
            let Some(s) = self.sessions.get_mut(sid) else {
                continue;
            };
            match pushback {
                Pushback::Congested => s.block(&outbox, now_ms),
                Pushback::Behind => {
                    let Some(c) = &s.conn else { continue };
                    if self.cluster_router == Some(*sid) {
                        // The router stands for every other node's
                        // subscribers: while it makes progress its
                        // publishers go at its pace, or a QoS 0 flood
                        // would be dropped at its queue almost whole.
                        c.outbox.slow_down_while_draining(&outbox, now_ms);
                    } else {
                        c.outbox.slow_down(&outbox, now_ms);
                    }
                }
                Pushback::None => {}
            }
        }
    }
}
