//! Start-up: rebuilding the broker's state from the store, one record at a
//! time ([`Restore`], fed by `Store::scan`), so that what the store holds
//! never has to fit in memory at once.
//!
//! Every stored session comes back disconnected, with its subscriptions
//! live in the router at once (a publish arriving before the client
//! reconnects is queued for it), its in-flight messages (resent with DUP
//! on reconnect), its queued messages left in the store (read back a page
//! at a time once the client is back: see `spill`), and its inbound QoS 2
//! packet ids (so a resent QoS 2 PUBLISH is still not delivered twice).
//! Expiry counts wall-clock time across the downtime
//! ([`Broker::restored`] runs what fell due).

use super::persist::{message_from_record, qos_from_u8};
use super::session::{Outgoing, Session, SubEntry, Will};
use super::{split_shared, Broker, SessionId, Tracked};
use crate::codec::{ByteStr, ProtocolVersion, RetainHandling, SubscriptionOptions};
use crate::escape::Escaped;
use crate::hooks::{Client, Hooks};
use crate::stats;
use roost_storage::{
    MessageId, MessageRecord, Op, OutboundRecord, OutboundState, Record, SessionOwner,
    SessionRecord, SubscriptionRecord,
};
use std::collections::{HashMap, HashSet};
use std::num::{NonZeroU16, NonZeroU32};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

/// Rebuilds a broker's state from the records of a store, as a scan
/// passes them: a session's record, then what belongs to it, then message
/// bodies, then retained messages.
pub(crate) struct Restore<'a> {
    broker: &'a mut Broker,
    now_ms: u64,
    /// The session whose records are coming (`None` after one that was
    /// dropped, whose records are then deleted as they come).
    current: Option<(SessionId, Box<Session>)>,
    /// Outbound entries whose body is stored apart, by body: those in
    /// flight wait for it to come back into memory, queued ones to be
    /// rewritten with it inline (see `spill`).
    waiting: HashMap<MessageId, Vec<Waiting>>,
    /// Sessions that got in-flight entries out of send order (see `body`).
    unsorted: HashSet<SessionId>,
}

/// An outbound entry waiting for its body.
struct Waiting {
    sid: SessionId,
    seq: u64,
    entry: OutboundRecord,
}

impl Broker {
    /// Starts restoring into this (empty) broker: feed it
    /// [`Restore::record`]s, then call [`Restore::finish`] and, once the
    /// broker has its hooks, [`Broker::restored`].
    pub(crate) fn restore(&mut self, now_ms: u64) -> Restore<'_> {
        Restore {
            broker: self,
            now_ms,
            current: None,
            waiting: HashMap::new(),
            unsorted: HashSet::new(),
        }
    }

    /// Gives a broker built before its hooks were known (see
    /// `Server::load_store`) the hooks it serves with.
    pub(crate) fn set_hooks(&mut self, hooks: Hooks) {
        self.hooks = hooks;
    }

    /// After a restore: runs what fell due while the broker was down
    /// (expired sessions end, delayed wills go out), with the hooks.
    pub(crate) fn restored(&mut self, now_ms: u64) {
        self.run_timers(now_ms);
    }
}

impl Restore<'_> {
    /// Takes one record.
    pub(crate) fn record(&mut self, record: Record) {
        match record {
            Record::Session(rec) => {
                self.end_session();
                self.session(rec);
            }
            Record::Subscription { subscription, .. } => self.subscription(subscription),
            Record::Outbound { seq, entry, .. } => self.outbound(seq, entry),
            Record::InboundQos2 { packet_id, .. } => {
                if let Some((_, s)) = &mut self.current {
                    s.flows_mut().inbound_qos2.insert(packet_id);
                }
            }
            Record::Message { id, message } => {
                self.end_session();
                self.body(id, message);
            }
            Record::Retained(message) => {
                self.end_session();
                self.retained(message);
            }
            // A record kind this build does not know: nothing to restore.
            _ => {}
        }
    }

    fn session(&mut self, rec: SessionRecord) {
        let b = &mut *self.broker;
        let Some(version) = ProtocolVersion::from_level(rec.protocol_level) else {
            tracing::warn!(client_id = %Escaped(&rec.client_id), level = rec.protocol_level,
                "stored session has an unknown protocol level; dropping it");
            b.persist.push(Op::DeleteSession {
                client_id: rec.client_id,
            });
            return;
        };
        let client_id = ByteStr::from(rec.client_id);
        let sid = SessionId(b.next_session);
        b.next_session += 1;
        let (username, owner_unknown) = match rec.owner {
            SessionOwner::Unknown => (None, true),
            SessionOwner::Anonymous => (None, false),
            SessionOwner::User(user) => (Some(ByteStr::from(user)), false),
        };
        // Hooks judge a restored session (its will, its deliveries) as its
        // owner until the owner connects again (an unknown owner, as a
        // client without a user name).
        let mut s = Box::new(Session::new(Arc::new(Client {
            client_id,
            username,
            remote_addr: None,
            certificate: None,
            protocol: version,
            inline: false,
        })));
        s.stored = true;
        s.owner_unknown = owner_unknown;
        s.expiry_interval = rec.expiry_interval;
        // A session that was connected when the broker stopped lost its
        // connection then; the moment is unknown, so it counts from now.
        let disconnected_at = rec.disconnected_at_ms.unwrap_or(self.now_ms);
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
        self.current = Some((sid, s));
    }

    fn subscription(&mut self, sub: SubscriptionRecord) {
        let Some((sid, s)) = &mut self.current else {
            return;
        };
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
        self.broker.subs.insert(plain, group, *sid, entry);
        s.subscriptions.insert(filter, entry);
    }

    /// One outbound entry: in flight, it comes back into memory; queued, it
    /// stays in the store (the session is away).
    fn outbound(&mut self, seq: u64, mut entry: OutboundRecord) {
        let Some((sid, s)) = &mut self.current else {
            return;
        };
        s.next_seq = s.next_seq.max(seq);
        let pid = entry.packet_id.and_then(NonZeroU16::new);
        if pid.is_none() || !matches!(entry.state, OutboundState::Sent | OutboundState::Released) {
            entry.state = OutboundState::Queued;
        }
        // With its stream sequence: a cluster's cursor, and the packet id of
        // the stream's messages, depend on it (see `roaming`).
        let body = match entry.message.take() {
            Some(rec) => {
                Arc::new(Tracked::new(message_from_record(rec)).with_seq(entry.stream_seq))
            }
            // Released: only the PUBREL is owed, the body is not needed.
            None if entry.state == OutboundState::Released => Arc::new(
                Tracked::new(message_from_record(MessageRecord {
                    topic: String::new(),
                    payload: bytes::Bytes::new(),
                    qos: entry.qos,
                    retain: false,
                    properties: Default::default(),
                    expires_at_ms: None,
                }))
                .with_seq(entry.stream_seq),
            ),
            None => {
                // Stored apart: bodies come after the sessions.
                let id = entry.message_id;
                self.waiting.entry(id).or_default().push(Waiting {
                    sid: *sid,
                    seq,
                    entry,
                });
                return;
            }
        };
        let o = Outgoing::from_record(seq, &entry, body, entry.message_id == 0);
        let b = &mut *self.broker;
        place(s, o, &mut b.persist, &mut b.pages, &b.stats);
    }

    /// The session whose records were coming is complete.
    fn end_session(&mut self) {
        let Some((sid, s)) = self.current.take() else {
            return;
        };
        let b = &mut *self.broker;
        b.by_client_id.insert(s.client_id().clone(), sid);
        b.sessions.insert(sid, s);
        b.timed.insert(sid);
    }

    /// A message body: the entries waiting for it get it.
    fn body(&mut self, id: MessageId, rec: MessageRecord) {
        let b = &mut *self.broker;
        b.persist.next_message_id = b.persist.next_message_id.max(id + 1);
        let Some(waiting) = self.waiting.remove(&id) else {
            // Nothing refers to it any more.
            b.persist.push(Op::DeleteMessage { id });
            return;
        };
        // One message, routed once: its entries name one stream sequence
        // (the highest, should an entry written before they were stored
        // say 0).
        let seq = waiting.iter().map(|w| w.entry.stream_seq).max();
        let msg =
            Arc::new(Tracked::stored(message_from_record(rec), id).with_seq(seq.unwrap_or(0)));
        let mut referenced = false;
        for w in waiting {
            let Some(s) = b.sessions.get_mut(&w.sid) else {
                continue;
            };
            let o = Outgoing::from_record(w.seq, &w.entry, msg.clone(), false);
            let in_flight = o.state != OutboundState::Queued;
            referenced |= in_flight;
            place(s, o, &mut b.persist, &mut b.pages, &b.stats);
            if in_flight {
                // Bodies come in id order, not the entries': put back in
                // send order once all are in (`finish`).
                self.unsorted.insert(w.sid);
            }
        }
        if !referenced {
            // Every entry that used it was rewritten with it inline.
            b.persist.push(Op::DeleteMessage { id });
        }
    }

    fn retained(&mut self, rec: MessageRecord) {
        self.broker.restore_retained(rec, self.now_ms);
    }

    /// The records of one session were passed (a session adopted from
    /// another node of a cluster, see `roaming`): it is in place.
    pub(crate) fn finish_one(mut self) {
        self.end_session();
        let b = &mut *self.broker;
        b.stats.subscriptions.store(b.subs.len() as u64, Relaxed);
        b.update_disconnected_gauge();
    }

    /// Every record was passed.
    pub(crate) fn finish(mut self) {
        self.end_session();
        let b = &mut *self.broker;
        for sid in self.unsorted.drain() {
            if let Some(f) = b.sessions.get_mut(&sid).and_then(|s| s.flows.as_mut()) {
                f.inflight.make_contiguous().sort_by_key(|o| o.seq);
            }
        }
        // Entries whose body is gone: nothing to deliver.
        for (_, waiting) in self.waiting.drain() {
            for w in waiting {
                if let Some(s) = b.sessions.get(&w.sid) {
                    b.persist.push(Op::DeleteOutbound {
                        client_id: s.client_id().as_str().to_owned(),
                        seq: w.seq,
                    });
                }
            }
        }
        b.update_retained_gauge();
        b.stats.subscriptions.store(b.subs.len() as u64, Relaxed);
        b.update_disconnected_gauge();
        tracing::info!(
            sessions = b.sessions.len(),
            retained = b.retained.tree.len(),
            queued_on_disk = b.stats.queue_disk_messages.load(Relaxed),
            "restored from the store"
        );
    }
}

/// Puts a restored entry where it belongs: in flight, in memory (holding a
/// reference to its body if stored apart); queued, in the store only.
fn place(
    s: &mut Session,
    o: Outgoing,
    persist: &mut super::persist::Persist,
    pages: &mut super::pages::Pages,
    stats: &crate::stats::Stats,
) {
    stats::add(&stats.inflight, 1);
    let size = o.msg.size();
    s.flows_mut().bytes += size;
    if o.state == OutboundState::Queued && persist.enabled {
        s.restore_spilled(o, persist, pages, stats);
        return;
    }
    if !o.inline {
        let id = o.msg.store_id.load(Relaxed);
        *persist.refs.entry(id).or_insert(0) += 1;
    }
    pages.hold_copy(stats, &o.msg);
    if o.state == OutboundState::Queued {
        s.flows_mut().queue.push_back(o);
    } else {
        s.flows_mut().inflight.push_back(o);
    }
}
