//! Share groups (`$share/<group>/<filter>`): which member a message goes
//! to, and, in a cluster, groups served across nodes (issue 19).
//!
//! **One node.** [`Broker::route`] picks one member per group and message
//! ([`pick`]): round-robin among connected members that may receive it,
//! an offline one only when no connected one may.
//!
//! **A cluster** (once [`Broker::serve_groups_through_cluster`] was
//! called): each message goes to one member across all nodes, so no node
//! may choose by itself. Routing skips share groups; the cluster's router
//! pulls each group's messages from NATS, where nodes with members share
//! one consumer (QoS 1/2) or one queue group (QoS 0), and hands each one
//! back to this node for one local member ([`Event::GroupPublish`],
//! [`Broker::on_group_publish`]). The core tells the router how many
//! connected members each group has here ([`GroupInterest`]), whenever
//! that may have changed (subscribe, unsubscribe, connect, disconnect,
//! session end): the router pulls while it is above zero. Offline members
//! do not count: a group whose members are all offline leaves its QoS 1/2
//! messages in its consumer, for whichever member connects first, rather
//! than queueing them on one node for one session.
//!
//! A SUBSCRIBE that makes a session a member is acknowledged only once the
//! router pulls for the group (it holds a [`Ready`]): a message published
//! after the SUBACK is then in a consumer this node reads.

use super::*;
use crate::hooks::DropReason;
use tokio::sync::mpsc::UnboundedSender;

/// Connected members of a share group on this node, as the cluster's
/// router is told.
#[derive(Debug)]
#[cfg_attr(not(feature = "cluster"), allow(dead_code))]
pub(crate) struct GroupInterest {
    /// The share name.
    pub group: ByteStr,
    /// The plain filter.
    pub filter: ByteStr,
    /// Connected local members now: the router pulls while above zero.
    pub members: usize,
    /// A SUBACK that waits until the router pulls for the group: the
    /// router drops it then (or when it gives up: a SUBACK is never held
    /// forever).
    pub ready: Option<Arc<Ready>>,
}

/// A held SUBACK: it goes (as soon as its commit, if any, and the packets
/// ahead of it let it) when the last clone is dropped.
#[derive(Debug)]
pub(crate) struct Ready {
    outbox: Arc<Outbox>,
    token: u64,
}

impl Drop for Ready {
    fn drop(&mut self) {
        self.outbox.open_cluster(self.token);
    }
}

/// What the core keeps to serve share groups through the cluster.
#[derive(Debug)]
pub(super) struct ClusterGroups {
    tx: UnboundedSender<GroupInterest>,
    /// The member count last sent per (group, filter); absent is zero.
    sent: HashMap<(ByteStr, ByteStr), usize>,
}

/// The outcome of a delivery addressed to a share group, as the reason
/// code of the acknowledgement the router gets.
pub(crate) mod outcome {
    use crate::codec::ReasonCode;
    /// Delivered to one local member.
    pub(crate) const DELIVERED: ReasonCode = ReasonCode::Success;
    /// No connected member here: another node's may take it.
    pub(crate) const NO_MEMBER: ReasonCode = ReasonCode::NoMatchingSubscribers;
    /// Connected members here, none of which may receive it (delivery ACL).
    pub(crate) const REFUSED: ReasonCode = ReasonCode::NotAuthorized;
    /// The chosen member's queue was full, or the store fails.
    pub(crate) const FULL: ReasonCode = ReasonCode::QuotaExceeded;
    /// The group's filter does not match the topic (a leading wildcard and
    /// a `$` topic, which NATS subjects do not tell apart): nobody's.
    pub(crate) const NOT_MATCHED: ReasonCode = ReasonCode::TopicNameInvalid;
}

/// The round-robin position of a group, created at 0.
pub(super) fn cursor<'c>(
    cursors: &'c mut SharedCursors,
    group: &str,
    filter: &str,
) -> &'c mut usize {
    if !cursors.get(group).is_some_and(|f| f.contains_key(filter)) {
        cursors
            .entry(group.into())
            .or_default()
            .insert(filter.into(), 0);
    }
    cursors
        .get_mut(group)
        .and_then(|f| f.get_mut(filter))
        .expect("inserted above")
}

/// The member of a share group that gets `msg`: round-robin from `cursor`
/// among connected members that may receive it, and with `offline`, an
/// offline one when no connected one may. The delivery ACL is part of the
/// choice: a member refused later would lose the message for the whole
/// group. `None` if nobody may receive it.
pub(super) fn pick(
    members: &[(SessionId, SubEntry)],
    cursor: usize,
    sessions: &IdMap<SessionId, Box<Session>>,
    hooks: &Hooks,
    msg: &Message,
    offline: bool,
) -> Option<usize> {
    let n = members.len();
    let order = || (0..n).map(|i| (cursor + i) % n);
    let may = |i: usize, connected: bool| {
        sessions
            .get(&members[i].0)
            .is_some_and(|s| (!connected || s.conn.is_some()) && hooks.can_receive(&s.client, msg))
    };
    order()
        .find(|&i| may(i, true))
        .or_else(|| offline.then(|| order().find(|&i| may(i, false))).flatten())
}

impl Broker {
    /// Serves share groups through the cluster from now on (see the module
    /// docs): routing skips them, and changes in their connected members
    /// go to `tx`. Called once, before serving.
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    pub(crate) fn serve_groups_through_cluster(&mut self, tx: UnboundedSender<GroupInterest>) {
        self.cluster_groups = Some(ClusterGroups {
            tx,
            sent: HashMap::new(),
        });
    }

    /// Whether share groups are served through the cluster.
    pub(super) fn groups_clustered(&self) -> bool {
        self.cluster_groups.is_some()
    }

    /// The share groups session `sid` is a member of, as (group, filter);
    /// empty (and no allocation) when not clustered.
    pub(super) fn groups_of(&self, sid: SessionId) -> Vec<(ByteStr, ByteStr)> {
        if !self.groups_clustered() {
            return Vec::new();
        }
        let Some(s) = self.sessions.get(&sid) else {
            return Vec::new();
        };
        s.subscriptions
            .filters()
            .filter_map(|f| match split_shared(f) {
                (Some(group), plain) => Some((ByteStr::from(group), ByteStr::from(plain))),
                (None, _) => None,
            })
            .collect()
    }

    /// Tells the router the connected members of `groups` where their
    /// count changed, and for all of them if a SUBACK waits (`ready`).
    pub(super) fn recount_groups(
        &mut self,
        groups: Vec<(ByteStr, ByteStr)>,
        ready: Option<Arc<Ready>>,
    ) {
        let Some(cg) = &mut self.cluster_groups else {
            return;
        };
        for (group, filter) in groups {
            let members = self
                .subs
                .group_members(&filter, &group)
                .iter()
                .filter(|(k, _)| self.sessions.get(k).is_some_and(|s| s.conn.is_some()))
                .count();
            let key = (group, filter);
            let last = cg.sent.get(&key).copied().unwrap_or(0);
            if members == last && ready.is_none() {
                continue;
            }
            if members == 0 {
                cg.sent.remove(&key);
            } else {
                cg.sent.insert(key.clone(), members);
            }
            let (group, filter) = key;
            // The router gone means the node is stopping: nothing to tell.
            let _ = cg.tx.send(GroupInterest {
                group,
                filter,
                members,
                ready: ready.clone(),
            });
        }
    }

    /// Pushes session `sid`'s SUBACK to wait for the router (and, as
    /// [`Broker::ack`] decides, for its commit); the returned [`Ready`]
    /// lets it go when dropped.
    pub(super) fn ack_when_pulling(
        &mut self,
        sid: SessionId,
        packet: Packet,
    ) -> Option<Arc<Ready>> {
        let s = self.sessions.get(&sid)?;
        let outbox = s.conn.as_ref()?.outbox.clone();
        let vouches_for_nothing = !s.stored && self.storage_failing();
        let client_id = s.client_id().clone();
        // A persistent session's SUBACK also waits for the session bucket
        // to have the subscription (see `roaming`'s "Saves").
        let saved = self.saved_first(sid);
        let waits = 1 + u8::from(saved);
        self.next_gate += 1;
        let token = self.next_gate;
        if self.persist.must_hold() && !vouches_for_nothing {
            outbox.push_held(self.persist.commit, token, waits, packet);
            self.persist.touched.push(outbox.clone());
        } else {
            outbox.push_held(0, token, waits, packet);
        }
        if saved {
            self.saves.hold(&client_id, outbox.clone(), token);
        }
        Some(Arc::new(Ready { outbox, token }))
    }

    /// A message the cluster's router pulled for share group `group` on
    /// `filter`: to one connected local member. With a packet id, the
    /// router is answered with a PUBACK whose reason code is the
    /// [`outcome`], once what the delivery stored is committed (it then
    /// acknowledges the message to NATS, or gives it back). With `last`,
    /// the router will not give it back again: refused to every connected
    /// member here, it is counted as dropped ([`DropReason::NotAuthorized`]).
    pub(super) fn on_group_publish(
        &mut self,
        conn: ConnId,
        publish: Publish,
        qos: QoS,
        (group, filter): (&str, &str),
        last: bool,
        now_ms: u64,
    ) {
        let Some(sid) = self.live(conn) else {
            return;
        };
        stats::add(&self.stats.messages_received, 1);
        let pid = publish.qos_pid.packet_id();
        let reason = self.deliver_to_group(sid, publish, qos, (group, filter), last, now_ms);
        if let Some(pid) = pid {
            let mut resp = PubResp::new(pid);
            resp.reason = reason;
            self.ack(sid, Packet::PubAck(resp));
        }
    }

    fn deliver_to_group(
        &mut self,
        sid: SessionId,
        publish: Publish,
        qos: QoS,
        (group, filter): (&str, &str),
        last: bool,
        now_ms: u64,
    ) -> ReasonCode {
        if !topic::matches(filter, &publish.topic) {
            return outcome::NOT_MATCHED;
        }
        let members = self.subs.group_members(filter, group);
        if members.is_empty() {
            return outcome::NO_MEMBER;
        }
        let msg = Arc::new(Tracked::new(
            Message::from_publish(publish, now_ms, Some(sid)).with_qos(qos),
        ));
        let at = cursor(&mut self.shared_cursor, group, filter);
        let Some(i) = pick(members, *at, &self.sessions, &self.hooks, &msg, false) else {
            // The first connected member in round-robin order: the one the
            // message would have gone to.
            let n = members.len();
            let Some(refused) = (0..n)
                .map(|k| members[(*at + k) % n].0)
                .find(|k| self.sessions.get(k).is_some_and(|s| s.conn.is_some()))
            else {
                return outcome::NO_MEMBER;
            };
            if last {
                // Counted once, for the member that would have had it (as a
                // queued message the ACL refuses at delivery is), never
                // silently: the router terminates it in NATS.
                let (mut ctx, sessions) = self.ctx(now_ms);
                if let Some(s) = sessions.get(&refused) {
                    s.dropped(&msg, DropReason::NotAuthorized, &mut ctx);
                }
            }
            return outcome::REFUSED;
        };
        *at = (i + 1) % members.len();
        let (member, entry) = members[i];
        let failing = self.storage_failing();
        let (mut ctx, sessions) = self.ctx(now_ms);
        let Some(s) = sessions.get_mut(&member) else {
            return outcome::NO_MEMBER;
        };
        let qos = qos.min(entry.options.qos);
        if failing && s.stored && qos > QoS::AtMostOnce {
            return outcome::FULL;
        }
        // As `route` does: 3.1.1 clears RETAIN, 5.0 keeps it with Retain As
        // Published.
        let retain = msg.retain && entry.options.retain_as_published && s.protocol.is_v5();
        let sub_ids = entry.id.into_iter().collect();
        // No publisher to slow down here: the router hands over a bounded
        // window of QoS 1/2 messages per group consumer, each awaiting its
        // answer (a full queue is answered FULL and the message given back),
        // and QoS 0 is dropped by the member's queue limit as on one node.
        let _ = s.deliver(&msg, qos, retain, sub_ids, true, None, &mut ctx);
        if ctx.drops.get() > 0 {
            outcome::FULL
        } else {
            outcome::DELIVERED
        }
    }
}
