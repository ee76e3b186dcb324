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

use crate::broker::Message;
use crate::codec::{
    encode, encode_publish, encode_publish_head, publish_len, EncodeError, Packet, PacketId,
    PropertiesView, ProtocolVersion, PubResp, Publish, PublishProperties, PublishView, QosPid,
    ReasonCode,
};
use crate::net::alias::OutboundAliases;
use crate::net::wbuf::{WriteBuf, SHARED_MIN};
use bytes::BytesMut;
use std::num::{NonZeroU16, NonZeroU32};
use std::sync::Arc;

/// One packet queued for a connection.
#[derive(Debug, PartialEq)]
pub(crate) enum Outbound {
    /// A PUBLISH of a broker message.
    Deliver(Delivery),
    /// A PUBACK, PUBREC, PUBREL or PUBCOMP without properties.
    Ack(AckKind, PacketId, ReasonCode),
    /// Any other packet.
    Other(Box<Packet>),
    /// Retained messages for a new subscription, to be sent at QoS 0.
    /// Expanded into [`Outbound::Deliver`]s by [`crate::link::outbox::Outbox`]
    /// as the connection drains, so its consumer never sees one.
    Burst(Box<Burst>),
}

/// Retained messages sent for a new subscription at QoS 0, as PUBLISHes
/// with RETAIN set ([MQTT-3.3.1-8]), a few at a time as the connection
/// drains: a subscription matching many retained messages is the broker's
/// own burst, paced by the client instead of being dropped by the
/// slow-consumer policy. Holds a reference per message, nothing more.
#[derive(Debug)]
pub(crate) struct Burst {
    pub msgs: std::collections::VecDeque<Arc<Message>>,
    /// The subscription's identifier, if any (5.0).
    pub sub_ids: Box<[NonZeroU32]>,
}

impl PartialEq for Burst {
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

impl Burst {
    /// Moves up to `n` of its messages (those not expired by `now_ms`) to
    /// the back of `into` as deliveries; returns how many it took off.
    pub fn expand(
        &mut self,
        n: usize,
        now_ms: u64,
        into: &mut std::collections::VecDeque<Outbound>,
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
        taken
    }
}

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
pub(crate) struct Delivery {
    pub msg: Arc<Message>,
    pub qos_pid: QosPid,
    pub retain: bool,
    pub dup: bool,
    /// The Message Expiry Interval to send: what was left of it when the
    /// delivery was made ([MQTT-3.3.2-6]).
    pub expiry: Option<NonZeroU32>,
    /// Subscription identifiers of the matching subscriptions (5.0).
    pub sub_ids: Box<[NonZeroU32]>,
}

impl PartialEq for Delivery {
    /// Same message (the same shared copy), same per-delivery fields.
    fn eq(&self, o: &Self) -> bool {
        Arc::ptr_eq(&self.msg, &o.msg)
            && (self.qos_pid, self.retain, self.dup, self.expiry)
                == (o.qos_pid, o.retain, o.dup, o.expiry)
            && self.sub_ids == o.sub_ids
    }
}

impl Delivery {
    /// The delivery of `msg` at `now_ms`; the expiry interval sent is what
    /// remains, rounded up, and at least 1 (0 would mean "expired").
    pub fn new(
        msg: &Arc<Message>,
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
    fn view<'a>(&'a self, topic: &'a str, topic_alias: Option<NonZeroU16>) -> PublishView<'a> {
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
    pub fn encoded_len(&self, version: ProtocolVersion) -> usize {
        publish_len(&self.view(&self.msg.topic, None), version)
    }

    /// The same PUBLISH as a packet of its own.
    pub fn into_publish(self) -> Publish {
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

impl Outbound {
    /// Appends it to `out` as [`Outbound::encode`] does, leaving a large
    /// payload where it is (written from there) if `share_payloads`.
    pub fn encode_into(
        &mut self,
        version: ProtocolVersion,
        aliases: &mut OutboundAliases,
        out: &mut WriteBuf,
        share_payloads: bool,
    ) -> Result<(), EncodeError> {
        match self {
            Outbound::Deliver(d) if share_payloads && d.msg.payload.len() >= SHARED_MIN => {
                let (alias, with_name) = aliases.alias(&d.msg.topic);
                let topic = if with_name { d.msg.topic.as_str() } else { "" };
                let view = d.view(topic, alias);
                out.encode_with_payload(
                    |buf| encode_publish_head(&view, version, buf),
                    &d.msg.payload,
                )
            }
            _ => out.encode(|buf| self.encode(version, aliases, buf)),
        }
    }

    /// Appends it, encoded for `version`, to `buf`, using (and setting up)
    /// outbound topic aliases. On error nothing is written.
    pub fn encode(
        &mut self,
        version: ProtocolVersion,
        aliases: &mut OutboundAliases,
        buf: &mut BytesMut,
    ) -> Result<(), EncodeError> {
        match self {
            Outbound::Deliver(d) => {
                let (alias, with_name) = aliases.alias(&d.msg.topic);
                let topic = if with_name { d.msg.topic.as_str() } else { "" };
                encode_publish(&d.view(topic, alias), version, buf)
            }
            Outbound::Ack(kind, pid, reason) => {
                let mut r = PubResp::new(*pid);
                r.reason = *reason;
                encode(&kind.packet(r), version, buf)
            }
            Outbound::Other(p) => {
                if let Packet::Publish(p) = &mut **p {
                    aliases.apply(p);
                }
                encode(p, version, buf)
            }
            // Never drained as such (see `Outbound::Burst`).
            Outbound::Burst(_) => Ok(()),
        }
    }

    /// True for a PUBLISH.
    pub fn is_publish(&self) -> bool {
        match self {
            Outbound::Deliver(_) => true,
            Outbound::Other(p) => matches!(**p, Packet::Publish(_)),
            Outbound::Ack(..) | Outbound::Burst(_) => false,
        }
    }

    /// The packet type's name, for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Outbound::Deliver(_) => "PUBLISH",
            Outbound::Ack(kind, ..) => kind.packet(PubResp::new(PacketId::MIN)).name(),
            Outbound::Other(p) => p.name(),
            Outbound::Burst(_) => "retained messages",
        }
    }

    /// The same packet as a [`Packet`] (for the inline client, and tests);
    /// `None` for a [`Outbound::Burst`], which is no packet.
    pub fn into_packet(self) -> Option<Packet> {
        Some(match self {
            Outbound::Deliver(d) => Packet::Publish(d.into_publish()),
            Outbound::Ack(kind, pid, reason) => {
                let mut r = PubResp::new(pid);
                r.reason = reason;
                kind.packet(r)
            }
            Outbound::Other(p) => *p,
            Outbound::Burst(_) => return None,
        })
    }
}

impl AckKind {
    fn packet(self, r: PubResp) -> Packet {
        match self {
            AckKind::Ack => Packet::PubAck(r),
            AckKind::Rec => Packet::PubRec(r),
            AckKind::Rel => Packet::PubRel(r),
            AckKind::Comp => Packet::PubComp(r),
        }
    }
}

impl From<Packet> for Outbound {
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

impl From<Delivery> for Outbound {
    fn from(d: Delivery) -> Self {
        Outbound::Deliver(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::MessageProperties;
    use crate::codec::{AckProperties, Decoder, QoS};
    use bytes::Bytes;

    fn message(properties: MessageProperties, expires_at_ms: Option<u64>) -> Arc<Message> {
        message_with(Bytes::from_static(b"hello"), properties, expires_at_ms)
    }

    fn message_with(
        payload: Bytes,
        properties: MessageProperties,
        expires_at_ms: Option<u64>,
    ) -> Arc<Message> {
        let mut m = Message::from_publish(
            Publish {
                dup: false,
                qos_pid: QosPid::AtMostOnce,
                retain: false,
                topic: "a/b".into(),
                payload,
                properties: PublishProperties::default(),
            },
            0,
            None,
        );
        m.properties = properties;
        m.expires_at_ms = expires_at_ms;
        Arc::new(m)
    }

    #[test]
    fn stays_small() {
        // What a queued entry costs a slow subscriber, per message.
        assert!(std::mem::size_of::<Outbound>() <= 40);
    }

    /// A delivery encodes exactly as the `Publish` it stands for, in both
    /// versions, and its length is what it writes.
    #[test]
    fn a_delivery_encodes_as_its_publish() {
        let props = MessageProperties {
            payload_format_indicator: Some(1),
            content_type: Some("text/plain".into()),
            response_topic: Some("r/t".into()),
            correlation_data: Some(Bytes::from_static(b"c")),
            user_properties: vec![("k".into(), "v".into())],
        };
        let pid = PacketId::new(7).unwrap();
        let sub_ids: Box<[NonZeroU32]> = Box::new([NonZeroU32::new(3).unwrap()]);
        for msg in [
            message(props, Some(2_500)),
            message(Default::default(), None),
        ] {
            for version in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
                let delivery = || {
                    let qos_pid = QosPid::AtLeastOnce(pid);
                    Delivery::new(&msg, qos_pid, true, true, sub_ids.clone(), 1_000)
                };
                let d = delivery();
                let len = d.encoded_len(version);
                let publish = delivery().into_publish();
                let mut expected = BytesMut::new();
                encode(&Packet::Publish(publish.clone()), version, &mut expected).unwrap();
                let mut got = BytesMut::new();
                Outbound::Deliver(d)
                    .encode(version, &mut OutboundAliases::new(0, 0), &mut got)
                    .unwrap();
                assert_eq!(got, expected);
                assert_eq!(got.len(), len);
                if version.is_v5() && msg.expires_at_ms.is_some() {
                    // 1.5 s left, rounded up.
                    assert_eq!(publish.properties.message_expiry_interval, Some(2));
                }
            }
        }
    }

    /// With its payload left in the message (vectored writes), a delivery
    /// still goes out byte for byte as its `Publish`.
    #[test]
    fn a_shared_payload_goes_out_in_place() {
        let props = MessageProperties {
            content_type: Some("x".into()),
            ..Default::default()
        };
        let msg = message_with(Bytes::from(vec![7u8; SHARED_MIN * 3]), props, None);
        for version in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
            let pid = QosPid::AtLeastOnce(PacketId::new(3).unwrap());
            let d = || Delivery::new(&msg, pid, false, false, Box::new([]), 0);
            let mut expected = BytesMut::new();
            encode(&Packet::Publish(d().into_publish()), version, &mut expected).unwrap();
            let mut out = WriteBuf::default();
            let aliases = &mut OutboundAliases::new(0, 0);
            Outbound::Deliver(d())
                .encode_into(version, aliases, &mut out, true)
                .unwrap();
            Outbound::from(Packet::PingResp)
                .encode_into(version, aliases, &mut out, true)
                .unwrap();
            expected.extend_from_slice(&[0xD0, 0]);
            let mut got: Vec<u8> = Vec::new();
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            while !out.is_empty() {
                let _ = out.poll_write_to(&mut got, &mut cx);
            }
            assert_eq!(got, expected);
        }
    }

    #[test]
    fn deliveries_use_topic_aliases() {
        let msg = message(Default::default(), None);
        let mut aliases = OutboundAliases::new(5, 1 << 20);
        let mut decoder = Decoder::with_version(1 << 20, ProtocolVersion::V5);
        let mut buf = BytesMut::new();
        for _ in 0..2 {
            let d = Delivery::new(&msg, QosPid::AtMostOnce, false, false, Box::new([]), 0);
            Outbound::Deliver(d)
                .encode(ProtocolVersion::V5, &mut aliases, &mut buf)
                .unwrap();
        }
        let Some(Packet::Publish(first)) = decoder.decode(&mut buf).unwrap() else {
            panic!()
        };
        let Some(Packet::Publish(second)) = decoder.decode(&mut buf).unwrap() else {
            panic!()
        };
        assert_eq!(
            (
                first.topic.as_str(),
                first.properties.topic_alias.map(|a| a.get())
            ),
            ("a/b", Some(1))
        );
        assert_eq!(
            (
                second.topic.as_str(),
                second.properties.topic_alias.map(|a| a.get())
            ),
            ("", Some(1))
        );
        assert_eq!(second.qos_pid.qos(), QoS::AtMostOnce);
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
