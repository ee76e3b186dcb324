//! SUBSCRIBE and UNSUBSCRIBE, and retained messages for new subscriptions.

use super::*;
use crate::ingress::filter;

impl Broker {
    pub(super) fn on_subscribe(
        &mut self,
        conn: ConnId,
        sid: SessionId,
        sub: CheckedSubscribe,
        now_ms: u64,
    ) {
        let caps = self.opts.capabilities.clone();
        if sub.subscription_identifier.is_some() && !caps.subscription_identifiers {
            return self.protocol_error(
                conn,
                ReasonCode::SubscriptionIdentifiersNotSupported,
                now_ms,
            );
        }
        if self.storage_failing() && self.sessions.get(&sid).is_some_and(|s| s.stored) {
            return self.refuse_subscribe(sid, sub);
        }
        let max_subs = self.opts.limits.maximum_subscriptions_per_session;
        let max_bytes = self.opts.limits.maximum_subscription_bytes;
        let max_levels = self.opts.limits.maximum_topic_levels;
        let mut reasons = Vec::with_capacity(sub.filters.len());
        let mut retained_for: Vec<(ByteStr, SubEntry)> = Vec::new();
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        let version = s.protocol;
        let watching = self.hooks.has_events();
        let mut names: Vec<ByteStr> = Vec::new();
        // Share groups joined, served through the cluster: the SUBACK waits
        // until this node pulls for them (see `groups`).
        let clustered = self.cluster_groups.is_some();
        let mut joined: Vec<(ByteStr, ByteStr)> = Vec::new();
        for (filter, options, verdict) in sub.filters {
            if watching {
                names.push(filter.clone());
            }
            if let Err(code) = verdict {
                reasons.push(code);
                continue;
            }
            let granted = filter::check(&filter, options, &caps, max_levels, version);
            let (group, plain, options) = match granted {
                Ok(g) => (g.group, g.plain, g.options),
                Err(code) => {
                    reasons.push(code);
                    continue;
                }
            };
            let is_new = !s.subscriptions.contains(&filter);
            let too_many = s.subscriptions.len() >= max_subs
                || s.subscriptions.bytes() + filter.len() > max_bytes;
            if is_new && too_many {
                reasons.push(ReasonCode::QuotaExceeded);
                continue;
            }
            let entry = SubEntry {
                options,
                id: sub.subscription_identifier,
            };
            s.subscriptions.insert(filter.clone(), entry);
            self.subs.insert(plain, group, sid, entry);
            if let (Some(group), true) = (group, clustered) {
                joined.push((ByteStr::from(group), ByteStr::from(plain)));
            }
            if s.stored {
                self.persist.push(Op::PutSubscription {
                    client_id: s.client_id().as_str().to_owned(),
                    subscription: subscription_record(&filter, &entry),
                });
            }
            reasons.push(match options.qos {
                QoS::AtMostOnce => ReasonCode::Success,
                QoS::AtLeastOnce => ReasonCode::GrantedQos1,
                QoS::ExactlyOnce => ReasonCode::GrantedQos2,
            });
            // Retained messages go to new ordinary subscriptions, per Retain
            // Handling; never to shared ones (5.0 §4.8.2, which gives no rule number).
            let send_retained = group.is_none()
                && match options.retain_handling {
                    RetainHandling::SendAtSubscribe => true,
                    RetainHandling::SendAtSubscribeIfNew => is_new,
                    RetainHandling::DoNotSend => false,
                };
            if send_retained {
                retained_for.push((filter, entry));
            }
        }
        self.stats
            .subscriptions
            .store(self.subs.len() as u64, std::sync::atomic::Ordering::Relaxed);
        if watching {
            let client = self.sessions.get(&sid).map(|s| s.client.clone());
            if let Some(client) = client {
                let done: Vec<(ByteStr, ReasonCode)> =
                    names.into_iter().zip(reasons.iter().copied()).collect();
                self.hooks.each(|h| h.on_subscribed(&client, &done));
            }
        }
        let suback = Packet::SubAck(SubAck {
            packet_id: sub.packet_id,
            reasons: reasons.clone(),
            properties: AckProperties::default(),
        });
        if joined.is_empty() {
            // In a cluster, once the subscriptions are in the session
            // bucket: a node resuming the session must know them.
            self.ack_saved(sid, suback);
        } else {
            let ready = self.ack_when_pulling(sid, suback);
            self.recount_groups(joined, ready);
        }
        for (filter, entry) in retained_for {
            self.send_retained(sid, &filter, entry, now_ms);
        }
    }
    /// Refuses every filter of a persistent session's SUBSCRIBE while the
    /// store fails, changing nothing: 5.0 gets 0x97 (Quota exceeded, as for
    /// a refused PUBLISH), 3.x its only failure code, 0x80. The SUBACK
    /// vouches for nothing, so it does not wait for the writes being retried.
    fn refuse_subscribe(&mut self, sid: SessionId, sub: CheckedSubscribe) {
        stats::add(&self.stats.storage_refused, 1);
        let Some(s) = self.sessions.get(&sid) else {
            return;
        };
        let code = if s.protocol.is_v5() {
            ReasonCode::QuotaExceeded
        } else {
            ReasonCode::UnspecifiedError
        };
        if self.hooks.has_events() {
            let done: Vec<(ByteStr, ReasonCode)> = sub
                .filters
                .iter()
                .map(|(f, ..)| (f.clone(), code))
                .collect();
            self.hooks.each(|h| h.on_subscribed(&s.client, &done));
        }
        s.send(Packet::SubAck(SubAck {
            packet_id: sub.packet_id,
            reasons: vec![code; sub.filters.len()],
            properties: AckProperties::default(),
        }));
    }

    pub(super) fn on_unsubscribe(&mut self, sid: SessionId, u: Unsubscribe) {
        let reasons = self.remove_subscriptions(sid, u.filters);
        // In a cluster, once the session bucket no longer has them.
        self.ack_saved(
            sid,
            Packet::UnsubAck(UnsubAck {
                packet_id: u.packet_id,
                reasons,
                properties: AckProperties::default(),
            }),
        );
    }

    /// Removes `filters` from session `sid`'s subscriptions: a reason code
    /// for each (Success, or No subscription existed).
    pub(super) fn remove_subscriptions(
        &mut self,
        sid: SessionId,
        filters: Vec<ByteStr>,
    ) -> Vec<ReasonCode> {
        let Some(s) = self.sessions.get_mut(&sid) else {
            return Vec::new();
        };
        let mut reasons = Vec::with_capacity(filters.len());
        let mut removed = Vec::new();
        let mut left: Vec<(ByteStr, ByteStr)> = Vec::new();
        for filter in filters {
            if s.subscriptions.remove(&filter).is_some() {
                let (group, plain) = split_shared(&filter);
                self.subs.remove(plain, group, &sid);
                forget_cursor(&mut self.shared_cursor, group, plain);
                if let (Some(group), true) = (group, self.cluster_groups.is_some()) {
                    left.push((ByteStr::from(group), ByteStr::from(plain)));
                }
                if s.stored {
                    self.persist.push(Op::DeleteSubscription {
                        client_id: s.client_id().as_str().to_owned(),
                        filter: filter.as_str().to_owned(),
                    });
                }
                reasons.push(ReasonCode::Success);
                removed.push(filter);
            } else {
                reasons.push(ReasonCode::NoSubscriptionExisted);
            }
        }
        if self.hooks.has_events() && !removed.is_empty() {
            let client = s.client.clone();
            self.hooks.each(|h| h.on_unsubscribed(&client, &removed));
        }
        self.stats
            .subscriptions
            .store(self.subs.len() as u64, std::sync::atomic::Ordering::Relaxed);
        self.recount_groups(left, None);
        reasons
    }
}
