//! Start-up: rebuilding the broker's state from a storage snapshot.
//!
//! Every stored session comes back disconnected, with its subscriptions
//! live in the router at once (a publish arriving before the client
//! reconnects is queued for it), its queued and in-flight messages (resent
//! with DUP on reconnect), and its inbound QoS 2 packet ids (so a resent
//! QoS 2 PUBLISH is still not delivered twice). Expiry counts wall-clock
//! time across the downtime.

use super::persist::{message_from_record, qos_from_u8};
use super::session::{Outgoing, Session, SubEntry, Will};
use super::{split_shared, Broker, SessionId, Tracked};
use crate::codec::{ByteStr, ProtocolVersion, RetainHandling, SubscriptionOptions};
use crate::escape::Escaped;
use crate::hooks::Client;
use crate::stats;
use roost_storage::{Op, OutboundState, SessionOwner, Snapshot};
use std::collections::HashMap;
use std::num::{NonZeroU16, NonZeroU32};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

impl Broker {
    /// Loads `snapshot` into an empty broker, then runs what fell due while
    /// the broker was down (expired sessions end, delayed wills go out).
    pub(crate) fn restore(&mut self, snapshot: Snapshot, now_ms: u64) {
        let mut bodies: HashMap<u64, Arc<Tracked>> = HashMap::new();
        for (id, rec) in snapshot.messages {
            self.persist.next_message_id = self.persist.next_message_id.max(id + 1);
            bodies.insert(id, Arc::new(Tracked::stored(message_from_record(rec), id)));
        }

        for rec in snapshot.retained {
            self.restore_retained(rec, now_ms);
        }

        for stored in snapshot.sessions {
            let rec = stored.session;
            let Some(version) = ProtocolVersion::from_level(rec.protocol_level) else {
                tracing::warn!(client_id = %Escaped(&rec.client_id), level = rec.protocol_level,
                    "stored session has an unknown protocol level; dropping it");
                self.persist.push(Op::DeleteSession {
                    client_id: rec.client_id,
                });
                continue;
            };
            let client_id = ByteStr::from(rec.client_id);
            let sid = SessionId(self.next_session);
            self.next_session += 1;
            let (username, owner_unknown) = match rec.owner {
                SessionOwner::Unknown => (None, true),
                SessionOwner::Anonymous => (None, false),
                SessionOwner::User(user) => (Some(ByteStr::from(user)), false),
            };
            // Hooks judge a restored session (its will, its deliveries) as
            // its owner until the owner connects again (an unknown owner, as
            // a client without a user name).
            let mut s = Box::new(Session::new(Arc::new(Client {
                client_id: client_id.clone(),
                username,
                remote_addr: None,
                protocol: version,
                inline: false,
            })));
            s.stored = true;
            s.owner_unknown = owner_unknown;
            s.expiry_interval = rec.expiry_interval;
            // A session that was connected when the broker stopped lost its
            // connection then; the moment is unknown, so it counts from now.
            let disconnected_at = rec.disconnected_at_ms.unwrap_or(now_ms);
            s.disconnected_at_ms = Some(disconnected_at);
            if let Some(w) = rec.will {
                let delay = w.delay_interval.min(s.expiry_interval);
                s.will_due_ms = Some(disconnected_at.saturating_add(u64::from(delay) * 1000));
                s.will = Some(Box::new(Will {
                    message: Arc::new(Tracked::new(message_from_record(w.message))),
                    delay_interval: w.delay_interval,
                    expiry_interval: w.message_expiry_interval,
                }));
            }

            for sub in stored.subscriptions {
                let entry = SubEntry {
                    options: SubscriptionOptions {
                        qos: qos_from_u8(sub.qos),
                        no_local: sub.no_local,
                        retain_as_published: sub.retain_as_published,
                        retain_handling: match sub.retain_handling {
                            1 => RetainHandling::SendAtSubscribeIfNew,
                            2 => RetainHandling::DoNotSend,
                            _ => RetainHandling::SendAtSubscribe,
                        },
                    },
                    id: sub.subscription_identifier.and_then(NonZeroU32::new),
                };
                let filter = ByteStr::from(sub.filter);
                let (group, plain) = split_shared(&filter);
                self.subs.insert(plain, group, sid, entry);
                s.subscriptions.insert(filter, entry);
            }

            // What is in flight (and anything queued before it) comes back
            // into memory; the queued tail after it stays in the store and
            // is read back a page at a time once the client is back (see
            // `spill`).
            let spill_from = match self.persist.enabled {
                true => stored
                    .outbound
                    .iter()
                    .rposition(|(_, e)| e.state != OutboundState::Queued && e.packet_id.is_some())
                    .map_or(0, |i| i + 1),
                false => stored.outbound.len(),
            };
            for (i, (seq, entry)) in stored.outbound.into_iter().enumerate() {
                s.next_seq = s.next_seq.max(seq);
                let inline = entry.message_id == 0;
                let released = entry.state == OutboundState::Released && entry.packet_id.is_some();
                let body = match (entry.message, bodies.get(&entry.message_id)) {
                    (Some(rec), _) => Arc::new(Tracked::new(message_from_record(rec))),
                    (None, Some(body)) => body.clone(),
                    // Released: only the PUBREL is owed, the body is not needed.
                    (None, None) if released => Arc::new(Tracked::new(message_from_record(
                        roost_storage::MessageRecord {
                            topic: String::new(),
                            payload: bytes::Bytes::new(),
                            qos: entry.qos,
                            retain: false,
                            properties: Default::default(),
                            expires_at_ms: None,
                        },
                    ))),
                    (None, None) => {
                        // Its body is gone: nothing to deliver.
                        self.persist.push(Op::DeleteOutbound {
                            client_id: client_id.as_str().to_owned(),
                            seq,
                        });
                        continue;
                    }
                };
                let pid = entry.packet_id.and_then(NonZeroU16::new);
                let state = match (entry.state, pid) {
                    (OutboundState::Sent | OutboundState::Released, Some(_)) => entry.state,
                    _ => OutboundState::Queued,
                };
                let o = Outgoing {
                    seq,
                    msg: body,
                    qos: qos_from_u8(entry.qos),
                    retain: entry.retain,
                    sub_ids: entry
                        .subscription_identifiers
                        .iter()
                        .filter_map(|&i| NonZeroU32::new(i))
                        .collect(),
                    pid: pid.filter(|_| state != OutboundState::Queued),
                    state,
                    inline,
                    // Restored messages have no publisher waiting.
                    stored_copy: false,
                    burst: false,
                };
                stats::add(&self.stats.inflight, 1);
                let size = o.msg.size();
                s.flows_mut().bytes += size;
                if i >= spill_from {
                    s.restore_spilled(o, &mut self.persist, &mut self.pages, &self.stats);
                    continue;
                }
                if !inline {
                    *self.persist.refs.entry(entry.message_id).or_insert(0) += 1;
                }
                self.pages.hold(&self.stats, size);
                if state == OutboundState::Queued {
                    s.flows_mut().queue.push_back(o);
                } else {
                    s.flows_mut().inflight.push_back(o);
                }
            }
            if !stored.inbound_qos2.is_empty() {
                s.flows_mut().inbound_qos2.extend(stored.inbound_qos2);
            }

            self.by_client_id.insert(client_id, sid);
            self.sessions.insert(sid, s);
            self.timed.insert(sid);
        }

        // Bodies nothing refers to any more.
        for id in bodies.keys() {
            if !self.persist.refs.contains_key(id) {
                self.persist.push(Op::DeleteMessage { id: *id });
            }
        }

        self.update_retained_gauge();
        self.stats
            .subscriptions
            .store(self.subs.len() as u64, Relaxed);
        self.update_disconnected_gauge();
        tracing::info!(
            sessions = self.sessions.len(),
            retained = self.retained.tree.len(),
            "restored from the store"
        );
        // Wills that fell due and sessions that expired while down.
        self.run_timers(now_ms);
    }
}
