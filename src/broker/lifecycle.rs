//! Connecting and disconnecting: CONNECT validation, takeover, clean
//! start and resumption, wills (with delay), session end.

use super::*;
use crate::escape::Escaped;

/// What the connection established before it handed its CONNECT over.
#[derive(Debug, Clone, Copy)]
pub(super) struct Established {
    /// Enhanced authentication succeeded.
    pub enhanced_auth: bool,
    /// The transport gave the client id to a CONNECT that had none.
    pub id_assigned: bool,
}

impl Broker {
    pub(super) fn refuse(outbox: &Outbox, reason: ReasonCode) {
        outbox.push(Packet::ConnAck(ConnAck {
            session_present: false,
            reason,
            properties: ConnAckProperties::default(),
        }));
        outbox.close();
    }

    pub(super) fn connect(
        &mut self,
        conn: ConnId,
        outbox: Arc<Outbox>,
        c: Connect,
        client: Arc<Client>,
        established: Established,
        now: Now,
    ) {
        let Established {
            enhanced_auth,
            id_assigned,
        } = established;
        let now_ms = now.ms;
        let v = c.protocol;
        let mut assigned = None;
        if c.client_id.is_empty() || id_assigned {
            // 3.1 requires 1-23 characters; 3.1.1 allows an empty id only with
            // Clean Session 1 ([MQTT-3.1.3-8]), even when the transport
            // names the client; 5.0 always gets one assigned.
            if v == ProtocolVersion::V3_1 || (v == ProtocolVersion::V3_1_1 && !c.clean_start) {
                return Self::refuse(&outbox, ReasonCode::ClientIdentifierNotValid);
            }
        }
        let client_id = if c.client_id.is_empty() {
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
            // [MQTT-3.2.2-16]: the client that sent none is told its id.
            if id_assigned && v.is_v5() {
                assigned = Some(c.client_id.clone());
            }
            c.client_id.clone()
        };
        if !client.inline
            && (client_id.starts_with(bridges::CLIENT_ID_PREFIX)
                || client_id.starts_with(crate::cluster::CLIENT_ID_PREFIX)
                || client_id == super::admin::ADMIN_CLIENT_ID)
        {
            // Reserved for bridges' sessions, the cluster's routers and the admin's publisher,
            // which no device may take over.
            return Self::refuse(&outbox, ReasonCode::ClientIdentifierNotValid);
        }
        if c.properties.authentication_method.is_some() && !enhanced_auth {
            // No hook took up the method ([MQTT-4.12.0-1]).
            return Self::refuse(&outbox, ReasonCode::BadAuthenticationMethod);
        }
        if let Some(w) = &c.will {
            if too_deep(w.topic.as_bytes(), self.opts.limits.maximum_topic_levels) {
                // 3.x has no fitting return code: close without CONNACK
                // ([MQTT-3.2.2-6]).
                if v.is_v5() {
                    return Self::refuse(&outbox, ReasonCode::TopicNameInvalid);
                }
                return outbox.close();
            }
            if w.topic.as_bytes().starts_with(b"$SYS") {
                // The broker's own namespace, closed to wills as to PUBLISH.
                return Self::refuse(&outbox, ReasonCode::NotAuthorized);
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

        let existing = self.by_client_id.get(&client_id).copied();
        // While the store fails, a CONNECT that would write a session
        // (create, resume, take over or end a stored one) is refused with
        // Server unavailable (5.0 0x88, 3.x return code 3): both versions
        // have it, and clients retry on it. One that needs no storage (a
        // clean, non-persistent session) is admitted.
        let touches_stored = existing
            .and_then(|sid| self.sessions.get(&sid))
            .is_some_and(|s| s.stored);
        if self.storage_failing() && (expiry > 0 || touches_stored) {
            stats::add(&self.stats.storage_refused, 1);
            return Self::refuse(&outbox, ReasonCode::ServerUnavailable);
        }
        // Takeover: the old connection is closed as if it had dropped, so its
        // will follows the usual rules ([MQTT-3.1.4-3]).
        if let Some(sid) = existing {
            self.close_taken_over(sid, now_ms);
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
        // A session is resumed only by its owner: another user (or anyone,
        // when the owner is unknown) starts clean, as with Clean Start, so
        // the old session ends (its will, if pending, goes out).
        let resumable = |sid: &SessionId| {
            self.sessions.get(sid).is_some_and(|s| {
                let owned = s.owned_by(&client);
                if !owned && !c.clean_start {
                    tracing::info!(client_id = %Escaped(&client_id),
                        username = client.username.as_deref().unwrap_or(""),
                        "session belongs to another user; starting clean");
                }
                owned
            })
        };
        let (sid, session_present) = match existing {
            Some(sid) if !c.clean_start && resumable(&sid) => (sid, true),
            other => {
                if let Some(sid) = other {
                    self.end_session(sid, now_ms);
                }
                let sid = SessionId(self.next_session);
                self.next_session += 1;
                self.sessions
                    .insert(sid, Box::new(Session::new(client.clone())));
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
            message: Arc::new(Tracked::new(
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
                .with_qos(w.qos)
                .with_publisher_id(client_id.clone()),
            )),
        });

        let limits = &self.opts.limits;
        let send_quota = c
            .properties
            .receive_maximum
            .map_or(u16::MAX, |r| r.get())
            .min(limits.maximum_inflight)
            .max(1);
        let max_packet_size = c.properties.maximum_packet_size;
        let persist_enabled = self.persist.enabled;
        let session = self.sessions.get_mut(&sid).expect("session inserted above");
        session.protocol = v;
        session.client = client.clone();
        // Its owner is now known (see `Session::owned_by`).
        session.owner_unknown = false;
        session.expiry_interval = expiry;
        session.disconnected_at_ms = None;
        session.will_due_ms = None;
        session.will = will.map(Box::new);
        session.conn = Some(Conn {
            id: conn,
            outbox: outbox.clone(),
            send_quota,
            max_packet_size,
            connected_at_ms: now_ms,
        });
        if persist_enabled {
            if session.is_persistent() {
                session.stored = true;
                self.persist.push(Op::PutSession(session_record(session)));
            } else if session.stored {
                // It was persistent and is not any more.
                session.stored = false;
                self.persist.push(Op::DeleteSession {
                    client_id: session.client_id().as_str().to_owned(),
                });
            }
        }

        let caps = &self.opts.capabilities;
        let (keep_alive, server_keep_alive) = effective_keep_alive(&self.opts, v, c.keep_alive);
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
                // After enhanced authentication the CONNACK names the method
                // and carries the final data ([MQTT-4.12.0-5]).
                authentication_method: enhanced_auth
                    .then(|| c.properties.authentication_method.clone())
                    .flatten(),
                authentication_data: enhanced_auth
                    .then(|| c.properties.authentication_data.clone())
                    .flatten(),
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
        self.watch_keep_alive(conn, keep_alive, now.mono_ms);

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
        if !self.bridges.is_empty() {
            self.bridge_connected(sid);
        }
        if client.inline
            && client
                .client_id
                .starts_with(crate::cluster::CLIENT_ID_PREFIX)
        {
            // This node's cluster router: publishers' acknowledgements wait
            // for its (see `ack_after_cluster`).
            self.cluster_router = Some(sid);
        }
        // In a cluster, the bucket has it (and this node as its owner)
        // soon: were this node to die, another takes it over.
        self.touch_session(sid);
        if session_present {
            let (mut ctx, sessions) = self.ctx(now_ms);
            if let Some(s) = sessions.get_mut(&sid) {
                s.resume(&mut ctx);
            }
            // Its share groups have a connected member again.
            let groups = self.groups_of(sid);
            self.recount_groups(groups, None);
        }
    }

    /// Network clients connected now (the inline client is not counted).
    pub(super) fn update_connected_gauge(&self) -> u64 {
        let connected = self.conns.len().saturating_sub(self.inline_conns) as u64;
        self.stats
            .clients_connected
            .store(connected, std::sync::atomic::Ordering::Relaxed);
        connected
    }

    pub(super) fn update_disconnected_gauge(&self) {
        let offline = self.sessions.len().saturating_sub(self.conns.len()) as u64;
        self.stats
            .clients_disconnected
            .store(offline, std::sync::atomic::Ordering::Relaxed);
    }

    /// Detaches a connection from its session. `clean` means a normal
    /// DISCONNECT: the will is discarded. Otherwise the will is published
    /// now or scheduled after its delay. `reason` is the DISCONNECT reason
    /// (either side's), for the hooks.
    /// The session `sid` is taken over (here or on another node): its
    /// connection, if it has one, is told so (5.0: DISCONNECT 0x8E) and
    /// closed as if it had dropped, so its will follows the usual rules.
    pub(super) fn close_taken_over(&mut self, sid: SessionId, now_ms: u64) {
        let Some(old) = self.sessions.get(&sid).and_then(|s| s.conn.as_ref()) else {
            return;
        };
        let old_conn = old.id;
        if self.sessions[&sid].protocol.is_v5() {
            old.outbox.push(Packet::Disconnect(Disconnect {
                reason: ReasonCode::SessionTakenOver,
                ..Default::default()
            }));
        }
        self.detach(old_conn, false, Some(ReasonCode::SessionTakenOver), now_ms);
    }

    pub(super) fn detach(
        &mut self,
        conn: ConnId,
        clean: bool,
        reason: Option<ReasonCode>,
        now_ms: u64,
    ) {
        let Some(sid) = self.conns.remove(&conn) else {
            return;
        };
        // Its share groups lose a connected member (told at the end).
        let groups = self.groups_of(sid);
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
            // Its queue waits in the store, not in memory; so do the
            // retained messages still on their way to it (QoS 1/2, with a
            // persistent store: the streams end themselves otherwise).
            let (mut ctx, sessions) = self.ctx(now_ms);
            if let Some(s) = sessions.get_mut(&sid) {
                s.spill_queue(&mut ctx);
            }
            self.pump_retained(sid, now_ms);
            self.timed.insert(sid);
            // In a cluster, soon in the bucket: a will a clean DISCONNECT
            // cleared must not fire from another node if this one dies.
            self.touch_session(sid);
            // A will with no delay goes out now.
            self.fire_due_will(sid, now_ms);
        }
        self.update_connected_gauge();
        self.update_disconnected_gauge();
        self.recount_groups(groups, None);
    }

    pub(super) fn fire_due_will(&mut self, sid: SessionId, now_ms: u64) {
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
                let client = s.client.clone();
                // Fired once: the bucket must not keep it for another node.
                self.touch_session(sid);
                self.publish_will(&client, *w, now_ms);
            }
        }
    }

    /// Publishes the will of `client`'s session, if the hooks let it.
    pub(super) fn publish_will(&mut self, client: &Client, w: Will, now_ms: u64) {
        let client_id = client.client_id.as_str();
        let connect_topic = w.message.topic.clone();
        let w = match self.intercept_will(client_id, w) {
            Some(w) => w,
            None => return,
        };
        if !self.will_allowed(client, &w.message.topic, w.message.topic == connect_topic) {
            return;
        }
        let msg = match w.expiry_interval {
            // Restart the expiry clock: it was set at CONNECT time.
            Some(secs) => Arc::new(Tracked::new(Message {
                topic: w.message.topic.clone(),
                payload: w.message.payload.clone(),
                qos: w.message.qos,
                retain: w.message.retain,
                properties: w.message.properties.clone(),
                expires_at_ms: Some(now_ms.saturating_add(u64::from(secs) * 1000)),
                publisher: w.message.publisher,
                publisher_id: w.message.publisher_id.clone(),
            })),
            None => w.message,
        };
        self.dispatch(&msg, false, true, now_ms);
        if self.hooks.has_events() {
            self.hooks.each(|h| h.on_will_sent(client_id, &msg));
        }
    }

    /// The publish ACL for a will about to fire. It was judged at CONNECT,
    /// but the ACL may have changed since (a reloaded ledger), and an event
    /// hook may have changed the topic (`as_connected` is false then).
    ///
    /// The core cannot wait, so each ACL hook's future is polled once. A
    /// hook that is not ready at once (it really does I/O) cannot be heard
    /// here: for the topic judged at CONNECT, that verdict stands; a topic
    /// only a hook chose, which no ACL has judged, is refused.
    fn will_allowed(&self, client: &Client, topic: &str, as_connected: bool) -> bool {
        let allowed = if topic.starts_with("$SYS") {
            Some(false)
        } else {
            self.hooks.can_publish_now(client, topic)
        };
        match allowed {
            Some(true) => true,
            None if as_connected => true,
            _ => {
                tracing::warn!(client_id = %Escaped(&client.client_id),
                    username = client.username.as_deref().unwrap_or(""), topic,
                    pending = allowed.is_none(), "will refused by the publish ACL; not published");
                false
            }
        }
    }

    /// Lets the event hooks change or cancel a will.
    pub(super) fn intercept_will(&self, client_id: &str, w: Will) -> Option<Will> {
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
        let message = Arc::new(Tracked::new(Message {
            topic: view.topic,
            payload: view.payload,
            qos: view.qos.min(self.opts.capabilities.maximum_qos),
            retain: view.retain && self.opts.capabilities.retain_available,
            properties: m.properties.clone(),
            expires_at_ms: m.expires_at_ms,
            publisher: m.publisher,
            publisher_id: m.publisher_id.clone(),
        }));
        Some(Will { message, ..w })
    }

    /// Ends a session: its pending will goes out, its subscriptions and
    /// queues are dropped, its stored record deleted.
    pub(super) fn end_session(&mut self, sid: SessionId, now_ms: u64) {
        let groups = self.groups_of(sid);
        let Some(mut s) = self.sessions.remove(&sid) else {
            return;
        };
        self.timed.remove(&sid);
        self.end_streams(sid);
        if self.by_client_id.get(s.client_id()) == Some(&sid) {
            self.by_client_id.remove(s.client_id());
        }
        if let Some(c) = s.conn.take() {
            self.conns.remove(&c.id);
            c.outbox.close();
        }
        s.release_blocked();
        for (filter, _) in s.subscriptions.take() {
            let (group, plain) = split_shared(&filter);
            self.subs.remove(plain, group, &sid);
            forget_cursor(&mut self.shared_cursor, group, plain);
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
                pages: &mut self.pages,
                saves: &mut self.saves,
                now_ms,
                drops: Default::default(),
            };
            s.clear_outbound(&mut ctx);
        }
        if s.stored {
            self.persist.push(Op::DeleteSession {
                client_id: s.client_id().as_str().to_owned(),
            });
        }
        self.session_ended(&s);
        // A will still pending when the session ends is sent now: the
        // earlier of its delay and the session's end ([MQTT-3.1.3-9]).
        if let Some(w) = s.will.take() {
            if s.will_due_ms.is_some() {
                self.publish_will(&s.client, *w, now_ms);
            }
        }
        self.update_disconnected_gauge();
        self.recount_groups(groups, None);
    }

    pub(super) fn closed(&mut self, conn: ConnId, reason: CloseReason, now_ms: u64) {
        // The DISCONNECT is queued here, after the CONNACK, never before it
        // ([MQTT-3.2.0-1]).
        match reason {
            CloseReason::ProtocolError(code) => self.protocol_error(conn, code, now_ms),
            CloseReason::Malformed(e) => {
                self.disconnect_with(conn, e.reason_code(), Some(e.to_string()), now_ms)
            }
            CloseReason::Lost => self.detach(conn, false, None, now_ms),
            CloseReason::Revoked => self.disconnect_with(
                conn,
                ReasonCode::NotAuthorized,
                Some("client certificate revoked".into()),
                now_ms,
            ),
        }
    }

    /// Sends DISCONNECT with `reason` (5.0) and drops the connection; the
    /// will is published ([MQTT-4.13.1-1]).
    pub(crate) fn protocol_error(&mut self, conn: ConnId, reason: ReasonCode, now_ms: u64) {
        self.disconnect_with(conn, reason, None, now_ms);
    }

    /// Like [`Broker::protocol_error`], with a reason string. DISCONNECT may
    /// carry one whatever Request Problem Information says ([MQTT-3.1.2-29]).
    pub(super) fn disconnect_with(
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
                if max.is_some_and(|m| {
                    crate::codec::encoded_len(&packet, s.protocol) > m.get() as usize
                }) {
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

    pub(super) fn on_disconnect(
        &mut self,
        conn: ConnId,
        sid: SessionId,
        d: Disconnect,
        now_ms: u64,
    ) {
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
}
