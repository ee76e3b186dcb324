//! Queued packets ([`Outbound`]) onto the wire: each encoded for the
//! client's protocol version with outbound topic aliases, into the
//! connection's [`WriteBuf`] (a large payload is left in its message and
//! written from there). The link layer queues packets without knowing any
//! of this; it is the connection's side of the hand-over.

use super::alias::OutboundAliases;
use super::wbuf::{WriteBuf, SHARED_MIN};
use crate::codec::{encode_publish, encode_publish_head, EncodeError, Packet, ProtocolVersion};
use crate::link::outbound::Outbound;
use crate::message::Message;
use bytes::BytesMut;
use std::ops::Deref;

/// Appends `packet` to `out` as [`encode`] does, leaving a large payload
/// where it is (written from there) if `share_payloads`.
pub(crate) fn encode_into<M: Deref<Target = Message>>(
    packet: &mut Outbound<M>,
    version: ProtocolVersion,
    aliases: &mut OutboundAliases,
    out: &mut WriteBuf,
    share_payloads: bool,
) -> Result<(), EncodeError> {
    match packet {
        Outbound::Deliver(d) if share_payloads && d.msg.payload.len() >= SHARED_MIN => {
            let (alias, with_name) = aliases.alias(&d.msg.topic);
            let topic = if with_name { d.msg.topic.as_str() } else { "" };
            let view = d.view(topic, alias);
            out.encode_with_payload(
                |buf| encode_publish_head(&view, version, buf),
                &d.msg.payload,
            )
        }
        _ => out.encode(|buf| encode(packet, version, aliases, buf)),
    }
}

/// Appends `packet`, encoded for `version`, to `buf`, using (and setting
/// up) outbound topic aliases. On error nothing is written.
pub(crate) fn encode<M: Deref<Target = Message>>(
    packet: &mut Outbound<M>,
    version: ProtocolVersion,
    aliases: &mut OutboundAliases,
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    match packet {
        Outbound::Deliver(d) => {
            let (alias, with_name) = aliases.alias(&d.msg.topic);
            let topic = if with_name { d.msg.topic.as_str() } else { "" };
            encode_publish(&d.view(topic, alias), version, buf)
        }
        Outbound::Ack(kind, pid, reason) => {
            crate::codec::encode(&kind.bare(*pid, *reason), version, buf)
        }
        Outbound::Other(p) => {
            if let Packet::Publish(p) = &mut **p {
                aliases.apply(p);
            }
            crate::codec::encode(p, version, buf)
        }
        // Never drained as such (see `Outbound::Burst`).
        Outbound::Burst(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{Decoder, PacketId, Publish, PublishProperties, QoS, QosPid};
    use crate::link::outbound::Delivery;
    use crate::message::MessageProperties;
    use bytes::Bytes;
    use std::num::NonZeroU32;
    use std::sync::Arc;

    /// Queued as link's tests queue them: bare messages.
    use crate::link::Bare;
    type Outbound = super::Outbound<Bare>;

    fn message(properties: MessageProperties, expires_at_ms: Option<u64>) -> Arc<Bare> {
        message_with(Bytes::from_static(b"hello"), properties, expires_at_ms)
    }

    fn message_with(
        payload: Bytes,
        properties: MessageProperties,
        expires_at_ms: Option<u64>,
    ) -> Arc<Bare> {
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
        Arc::new(Bare(m))
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
                crate::codec::encode(&Packet::Publish(publish.clone()), version, &mut expected)
                    .unwrap();
                let mut got = BytesMut::new();
                let aliases = &mut OutboundAliases::new(0, 0);
                encode(&mut Outbound::Deliver(d), version, aliases, &mut got).unwrap();
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
            crate::codec::encode(&Packet::Publish(d().into_publish()), version, &mut expected)
                .unwrap();
            let mut out = WriteBuf::default();
            let aliases = &mut OutboundAliases::new(0, 0);
            encode_into(
                &mut Outbound::Deliver(d()),
                version,
                aliases,
                &mut out,
                true,
            )
            .unwrap();
            let ping = &mut Outbound::from(Packet::PingResp);
            encode_into(ping, version, aliases, &mut out, true).unwrap();
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
            encode(
                &mut Outbound::Deliver(d),
                ProtocolVersion::V5,
                &mut aliases,
                &mut buf,
            )
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
}
