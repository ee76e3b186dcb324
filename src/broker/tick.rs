//! What time brings: delayed wills, session and retained-message expiry,
//! `$SYS` updates, and shutdown.

use super::*;

impl Broker {
    /// Runs what is due: keep-alives run out, delayed wills, session
    /// expiry, retained expiry and `$SYS` updates. Call about once a second.
    pub(crate) fn tick(&mut self, now: Now) {
        self.watch_storage();
        self.check_keep_alives(now);
        self.retry_pages(now.ms);
        self.retry_retained_reads();
        self.run_timers(now.ms);
        self.sample_bridges();
    }

    /// What [`Broker::tick`] runs after the keep-alives: what is due at
    /// `now_ms` (Unix-epoch ms).
    pub(super) fn run_timers(&mut self, now_ms: u64) {
        if self.saves.on() && self.cluster_router.is_none() {
            // In a cluster, what time brings waits for this node's router:
            // a will fired before it is connected (one that fell due while
            // the node was down) would reach this node's subscribers only.
            return;
        }
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
                        let id = s.client_id().clone();
                        self.hooks.each(|h| h.on_session_expired(&id));
                    }
                    self.end_session(sid, now_ms);
                }
            }
        }
        if now_ms.saturating_sub(self.last_sweep_ms) >= 60_000 {
            self.last_sweep_ms = now_ms;
            self.sweep_retained(now_ms);
        }
        if let Some(every) = self.opts.sys_interval {
            if now_ms.saturating_sub(self.last_sys_ms) >= every.as_millis() as u64 {
                self.last_sys_ms = now_ms;
                self.publish_sys(now_ms);
            }
        }
    }

    /// Closes every connection (v5 clients get DISCONNECT 0x8B).
    pub(crate) fn shutdown(&mut self, now_ms: u64) {
        // The cluster router's copies that JetStream has not stored now never
        // will be: their publishers' acknowledgements are refused, not left
        // waiting (which would also keep their connections open past the
        // shutdown). Its session is not stored: nothing is lost with it.
        if let Some(sid) = self.cluster_router.take() {
            let (mut ctx, sessions) = self.ctx(now_ms);
            if let Some(s) = sessions.get_mut(&sid) {
                s.clear_outbound(&mut ctx);
            }
        }
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
            self.end_streams(sid);
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

    /// Watches a new connection's keep-alive (seconds; 0: none) from
    /// `mono_ms` ([`Now::mono_ms`]), dropping the entries of connections
    /// gone once they pile up.
    pub(super) fn watch_keep_alive(&mut self, conn: ConnId, keep_alive: u16, mono_ms: u64) {
        self.keepalives.watch(conn, keep_alive, mono_ms);
        if self.keepalives.crowded(self.conns.len()) {
            let conns = &self.conns;
            self.keepalives.forget_gone(|c| conns.contains_key(&c));
        }
    }

    /// Disconnects the clients silent for longer than their keep-alive
    /// allows (see [`keepalive`]).
    fn check_keep_alives(&mut self, now: Now) {
        // Silence is measured on the monotonic clock the connections stamp.
        let mono = now.mono_ms;
        while let Some((conn, allowed)) = self.keepalives.next_due(mono) {
            let Some(silent) = self
                .conns
                .get(&conn)
                .and_then(|sid| self.sessions.get(sid))
                .and_then(|s| s.conn.as_ref())
                .map(|c| c.outbox.silent_ms(mono))
            else {
                continue; // gone meanwhile
            };
            // Busy with what the client sent: as good as just heard.
            let silent = silent.unwrap_or(0);
            if self.keepalives.look(conn, allowed, silent, mono) == keepalive::Look::Expired {
                tracing::info!(conn = conn.0, silent_ms = silent, "keep-alive timeout");
                self.protocol_error(conn, ReasonCode::KeepAliveTimeout, now.ms);
            }
        }
    }
}
