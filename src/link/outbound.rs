//! What the broker core queues for a connection, in the form it is queued.
//!
//! Most of what a busy connection is sent is PUBLISHes of messages the
//! broker shares between subscribers, and bare acknowledgements. Both are
//! queued compactly: a [`Delivery`] is a reference to the shared
//! [`Message`] plus what differs per subscriber (packet id, flags, expiry,
//! subscription identifiers), and borrows topic, payload and properties
//! from the message only when it is encoded; an acknowledgement without
//! properties is three small fields. Everything else is a boxed [`Packet`].
//!
//! Why it matters: a slow subscriber can have thousands of entries queued,
//! so the size of an entry is the broker's memory under load (40 bytes
//! here against 256 for a `Packet`), and building, moving and dropping a
//! full `Publish` per delivery (a clone of each property, two reference
//! counts touched from two threads) was a fifth of fan-out's CPU.
//!
//! **Generic over the shared message** (`M`: anything that derefs to the
//! plain [`Message`]). The core queues its `broker::Tracked`, the message
//! with the core's own bookkeeping beside it in the same allocation; the
//! tests queue a bare one (`link::Bare`). A delivery is so still one thin
//! `Arc` to the one copy the core shares (no larger entry, no second
//! reference count per delivery, no second allocation per message), while
//! this layer imports nothing of the core. The alternatives cost at run
//! time: a trait object doubles the pointer (and the entry past 40 bytes);
//! keeping the core's part apart from a shared `Arc<Message>` costs an
//! allocation per message. Encoding for the wire (topic aliases, write
//! buffers) is the connection's business, in `net::encode`.

use crate::codec::{
    publish_len, Packet, PacketId, PropertiesView, ProtocolVersion, PubResp, Publish,
    PublishProperties, PublishView, QosPid, ReasonCode,
};
use crate::message::Message;
use std::num::{NonZeroU16, NonZeroU32};
use std::ops::Deref;
use std::sync::Arc;

/// One packet queued for a connection; `M` is the shared message (see the
/// module docs).
#[derive(Debug)]
pub(crate) enum Outbound<M> {
    /// A PUBLISH of a broker message.
    Deliver(Delivery<M>),
    /// A PUBACK, PUBREC, PUBREL or PUBCOMP without properties.
    Ack(AckKind, PacketId, ReasonCode),
    /// Any other packet.
    Other(Box<Packet>),
    /// Retained messages for a new subscription, to be sent at QoS 0.
    /// Expanded into [`Outbound::Deliver`]s by [`crate::link::outbox::Outbox`]
    /// as the connection drains, so its consumer never sees one.
    Burst(Box<Burst<M>>),
}

impl<M> PartialEq for Outbound<M> {
    /// Deliveries and bursts compare by the message they share (see
    /// [`Delivery`]'s), so `M` needs no equality of its own.
    fn eq(&self, o: &Self) -> bool {
        match (self, o) {
            (Outbound::Deliver(a), Outbound::Deliver(b)) => a == b,
            (Outbound::Ack(k, p, r), Outbound::Ack(k2, p2, r2)) => (k, p, r) == (k2, p2, r2),
            (Outbound::Other(a), Outbound::Other(b)) => a == b,
            (Outbound::Burst(a), Outbound::Burst(b)) => a == b,
            _ => false,
        }
    }
}

/// Retained messages sent for a new subscription at QoS 0, as PUBLISHes
/// with RETAIN set ([MQTT-3.3.1-8]), a few at a time as the connection
/// drains: a subscription matching many retained messages is the broker's
/// own burst, paced by the client instead of being dropped by the
/// slow-consumer policy. Holds a reference per message, nothing more.
#[derive(Debug)]
pub(crate) struct Burst<M> {
    pub msgs: std::collections::VecDeque<Arc<M>>,
    /// The subscription's identifier, if any (5.0).
    pub sub_ids: Box<[NonZeroU32]>,
    /// More are to come: asked for once this burst runs low (see
    /// [`crate::link::refill`]).
    pub more: Option<crate::link::refill::More>,
}

impl<M> PartialEq for Burst<M> {
    fn eq(&self, o: &Self) -> bool {
        self.sub_ids == o.sub_ids
            && self.msgs.len() == o.msgs.len()
            && self
                .msgs
                .iter()
                .zip(&o.msgs)
                .all(|(a, b)| Arc::ptr_eq(a, b))
    }
}

impl<M: Deref<Target = Message>> Burst<M> {
    /// Moves up to `n` of its messages (those not expired by `now_ms`) to
    /// the back of `into` as deliveries; returns how many it took off.
    pub(crate) fn expand(
        &mut self,
        n: usize,
        now_ms: u64,
        into: &mut std::collections::VecDeque<Outbound<M>>,
    ) -> usize {
        let mut taken = 0;
        while taken < n {
            let Some(msg) = self.msgs.pop_front() else {
                break;
            };
            taken += 1;
            if msg.is_expired(now_ms) {
                continue;
            }
            let sub_ids = self.sub_ids.clone();
            let d = Delivery::new(&msg, QosPid::AtMostOnce, true, false, sub_ids, now_ms);
            into.push_back(Outbound::Deliver(d));
        }
        if self.more.as_ref().is_some_and(|m| self.msgs.len() <= m.low) {
            if let Some(m) = self.more.take() {
                m.refills.post(m.token);
            }
        }
        taken
    }
}

/// Bytes of memory one unit of [`Outbound::answer_units`] stands for: an
/// [`Outbound`] rounded up, so a bare acknowledgement is one unit.
pub(crate) const ANSWER_UNIT: usize = 64;

/// Which acknowledgement an [`Outbound::Ack`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AckKind {
    /// PUBACK.
    Ack,
    /// PUBREC.
    Rec,
    /// PUBREL.
    Rel,
    /// PUBCOMP.
    Comp,
}

/// A PUBLISH delivering a shared message to one subscriber.
#[derive(Debug)]
pub(crate) struct Delivery<M> {
    pub msg: Arc<M>,
    pub qos_pid: QosPid,
    pub retain: bool,
    pub dup: bool,
    /// The Message Expiry Interval to send: what was left of it when the
    /// delivery was made ([MQTT-3.3.2-6]).
    pub expiry: Option<NonZeroU32>,
    /// Subscription identifiers of the matching subscriptions (5.0).
    pub sub_ids: Box<[NonZeroU32]>,
}

impl<M> PartialEq for Delivery<M> {
    /// Same message (the same shared copy), same per-delivery fields.
    fn eq(&self, o: &Self) -> bool {
        Arc::ptr_eq(&self.msg, &o.msg)
            && (self.qos_pid, self.retain, self.dup, self.expiry)
                == (o.qos_pid, o.retain, o.dup, o.expiry)
            && self.sub_ids == o.sub_ids
    }
}

impl<M: Deref<Target = Message>> Delivery<M> {
    /// The delivery of `msg` at `now_ms`; the expiry interval sent is what
    /// remains, rounded up, and at least 1 (0 would mean "expired").
    pub(crate) fn new(
        msg: &Arc<M>,
        qos_pid: QosPid,
        retain: bool,
        dup: bool,
        sub_ids: Box<[NonZeroU32]>,
        now_ms: u64,
    ) -> Self {
        let expiry = msg.expires_at_ms.map(|t| {
            let left = u32::try_from(t.saturating_sub(now_ms).div_ceil(1000)).unwrap_or(u32::MAX);
            NonZeroU32::new(left).unwrap_or(NonZeroU32::MIN)
        });
        Delivery {
            msg: msg.clone(),
            qos_pid,
            retain,
            dup,
            expiry,
            sub_ids,
        }
    }

    /// The PUBLISH, borrowed, with `topic` sent as the topic name.
    pub(crate) fn view<'a>(
        &'a self,
        topic: &'a str,
        topic_alias: Option<NonZeroU16>,
    ) -> PublishView<'a> {
        let p = &self.msg.properties;
        PublishView {
            dup: self.dup,
            qos_pid: self.qos_pid,
            retain: self.retain,
            topic,
            payload: &self.msg.payload,
            properties: PropertiesView {
                payload_format_indicator: p.payload_format_indicator,
                message_expiry_interval: self.expiry.map(NonZeroU32::get),
                topic_alias,
                response_topic: p.response_topic.as_ref(),
                correlation_data: p.correlation_data.as_ref(),
                user_properties: &p.user_properties,
                subscription_identifiers: &self.sub_ids,
                content_type: p.content_type.as_ref(),
            },
        }
    }

    /// Its encoded size for a client of `version`, full topic name
    /// included (an alias can only make it smaller).
    pub(crate) fn encoded_len(&self, version: ProtocolVersion) -> usize {
        publish_len(&self.view(&self.msg.topic, None), version)
    }

    /// The same PUBLISH as a packet of its own.
    pub(crate) fn into_publish(self) -> Publish {
        let p = &self.msg.properties;
        Publish {
            dup: self.dup,
            qos_pid: self.qos_pid,
            retain: self.retain,
            topic: self.msg.topic.clone(),
            payload: self.msg.payload.clone(),
            properties: PublishProperties {
                payload_format_indicator: p.payload_format_indicator,
                message_expiry_interval: self.expiry.map(NonZeroU32::get),
                topic_alias: None,
                response_topic: p.response_topic.clone(),
                correlation_data: p.correlation_data.clone(),
                user_properties: p.user_properties.clone(),
                subscription_identifiers: self.sub_ids.into_vec(),
                content_type: p.content_type.clone(),
            },
        }
    }
}

impl<M> Outbound<M> {
    /// True for a PUBLISH.
    pub(crate) fn is_publish(&self) -> bool {
        match self {
            Outbound::Deliver(_) => true,
            Outbound::Other(p) => matches!(**p, Packet::Publish(_)),
            Outbound::Ack(..) | Outbound::Burst(_) => false,
        }
    }

    /// The memory this packet holds while it waits in an outbox, in
    /// [`ANSWER_UNIT`]s, if it answers something the client sent (or is
    /// otherwise the broker's own: CONNACK, DISCONNECT, AUTH); 0 for a
    /// PUBLISH, which the core's queueing policy bounds instead. A client
    /// decides how many answers it is owed, so they are bounded apart (see
    /// `Outbox::answers_full`). Rounded up, so a bare acknowledgement is
    /// 1 and any other packet is its box plus its reason codes (a SUBACK
    /// has one per filter, up to a packet's worth).
    pub(crate) fn answer_units(&self) -> u32 {
        /// An entry holding a boxed [`Packet`].
        const BOXED: usize = std::mem::size_of::<Outbound<()>>() + std::mem::size_of::<Packet>();
        let bytes = match self {
            Outbound::Deliver(_) | Outbound::Burst(_) => return 0,
            Outbound::Ack(..) => return 1,
            Outbound::Other(p) => match &**p {
                Packet::Publish(_) => return 0,
                Packet::SubAck(a) => BOXED + a.reasons.len(),
                Packet::UnsubAck(a) => BOXED + a.reasons.len(),
                _ => BOXED,
            },
        };
        u32::try_from(bytes.div_ceil(ANSWER_UNIT)).unwrap_or(u32::MAX)
    }

    /// The packet type's name, for logs.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Outbound::Deliver(_) => "PUBLISH",
            Outbound::Ack(kind, ..) => kind.packet(PubResp::new(PacketId::MIN)).name(),
            Outbound::Other(p) => p.name(),
            Outbound::Burst(_) => "retained messages",
        }
    }
}

impl<M: Deref<Target = Message>> Outbound<M> {
    /// The same packet as a [`Packet`] (for the inline client, and tests);
    /// `None` for a [`Outbound::Burst`], which is no packet.
    pub(crate) fn into_packet(self) -> Option<Packet> {
        Some(match self {
            Outbound::Deliver(d) => Packet::Publish(d.into_publish()),
            Outbound::Ack(kind, pid, reason) => kind.bare(pid, reason),
            Outbound::Other(p) => *p,
            Outbound::Burst(_) => return None,
        })
    }
}

impl AckKind {
    /// The acknowledgement of `pid` with `reason`, without properties, as
    /// a packet of this kind.
    pub(crate) fn bare(self, pid: PacketId, reason: ReasonCode) -> Packet {
        let mut r = PubResp::new(pid);
        r.reason = reason;
        self.packet(r)
    }

    fn packet(self, r: PubResp) -> Packet {
        match self {
            AckKind::Ack => Packet::PubAck(r),
            AckKind::Rec => Packet::PubRec(r),
            AckKind::Rel => Packet::PubRel(r),
            AckKind::Comp => Packet::PubComp(r),
        }
    }
}

impl<M> From<Packet> for Outbound<M> {
    fn from(p: Packet) -> Self {
        let (kind, r) = match &p {
            Packet::PubAck(r) => (AckKind::Ack, r),
            Packet::PubRec(r) => (AckKind::Rec, r),
            Packet::PubRel(r) => (AckKind::Rel, r),
            Packet::PubComp(r) => (AckKind::Comp, r),
            _ => return Outbound::Other(Box::new(p)),
        };
        if r.properties.reason_string.is_some() || !r.properties.user_properties.is_empty() {
            return Outbound::Other(Box::new(p));
        }
        Outbound::Ack(kind, r.packet_id, r.reason)
    }
}

impl<M> From<Delivery<M>> for Outbound<M> {
    fn from(d: Delivery<M>) -> Self {
        Outbound::Deliver(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::AckProperties;

    /// Link's queues as its tests fill them: with bare messages.
    use crate::link::Bare;
    type Outbound = super::Outbound<Bare>;

    #[test]
    fn stays_small() {
        // What a queued entry costs a slow subscriber, per message. The
        // same for any `M`: a delivery holds it by a thin `Arc`.
        assert!(std::mem::size_of::<Outbound>() <= 40);
    }

    /// Bare acknowledgements are one unit; a boxed answer its box (a few
    /// units) plus its reason codes; deliveries count nothing.
    #[test]
    fn answers_are_weighed_by_the_memory_they_hold() {
        let pid = PacketId::new(1).unwrap();
        assert_eq!(
            Outbound::from(Packet::PubAck(PubResp::new(pid))).answer_units(),
            1
        );
        let ping = Outbound::from(Packet::PingResp).answer_units();
        assert!((2..=8).contains(&ping), "{ping}");
        let suback = |n| {
            Outbound::from(Packet::SubAck(crate::codec::SubAck {
                packet_id: pid,
                reasons: vec![ReasonCode::Success; n],
                properties: Default::default(),
            }))
            .answer_units()
        };
        assert_eq!(suback(1), ping);
        assert!(suback(64 * 100) >= ping + 100);
        let p = crate::codec::Publish {
            dup: false,
            qos_pid: QosPid::AtMostOnce,
            retain: false,
            topic: "t".into(),
            payload: bytes::Bytes::new(),
            properties: Default::default(),
        };
        assert_eq!(Outbound::from(Packet::Publish(p)).answer_units(), 0);
    }

    #[test]
    fn bare_acks_are_compact_and_others_are_kept_whole() {
        let pid = PacketId::new(9).unwrap();
        let mut r = PubResp::new(pid);
        r.reason = ReasonCode::NoMatchingSubscribers;
        let o = Outbound::from(Packet::PubAck(r.clone()));
        assert_eq!(
            o,
            Outbound::Ack(AckKind::Ack, pid, ReasonCode::NoMatchingSubscribers)
        );
        assert_eq!(o.into_packet(), Some(Packet::PubAck(r.clone())));
        r.properties = AckProperties {
            reason_string: Some("why".into()),
            ..Default::default()
        };
        let o = Outbound::from(Packet::PubRel(r.clone()));
        assert!(matches!(o, Outbound::Other(_)));
        assert_eq!(o.into_packet(), Some(Packet::PubRel(r)));
    }
}
