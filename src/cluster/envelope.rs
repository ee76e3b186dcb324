//! How a message crosses between nodes: the body of a NATS message is the
//! MQTT 5.0 PUBLISH packet itself, encoded by our own codec, and a header
//! names the node it came from.
//!
//! The packet carries everything a subscriber on another node must see as
//! the publisher sent it: QoS, the retain flag, and the 5.0 properties that
//! travel with a message (payload format, message expiry, content type,
//! response topic, correlation data, user properties). Per-hop properties
//! (topic alias, subscription identifiers) and DUP are cleared before it
//! leaves; its packet id is a placeholder (the receiving node gives it to
//! its own client). Reusing the codec, rather than a second format, means
//! one encoder and one property-tested decoder for both wires.
//!
//! The topic is also in the NATS subject (`cluster::subject`), which is
//! what NATS routes on; [`decode`] checks that the two agree, so a
//! message whose subject and body disagree (a bug, or a foreign publisher
//! on our subjects) is refused instead of delivered under either name.

use crate::codec::{self, DecodeError, Decoder, Packet, ProtocolVersion, Publish, QosPid};
use bytes::{Bytes, BytesMut};
use std::num::NonZeroU16;

/// The NATS header naming the node a message was published on: a node
/// drops what it published itself (core NATS echoes a subscriber's own
/// publishes, and the node's consumer reads the whole stream).
pub(crate) const ORIGIN: &str = "Roost-Node";

/// The NATS header naming the client that published a message (No Local
/// and the hooks on the nodes that deliver it). Absent for the broker's own
/// messages.
pub(crate) const PUBLISHER: &str = "Roost-Client";

/// The NATS header naming the inbound QoS 2 flow a message is, for a
/// client whose session the cluster keeps: `<packet id>.<flow number>`
/// (see `broker::roaming`'s "Inbound QoS 2 across a node's death").
pub(crate) const FLOW: &str = "Roost-Flow";

/// The [`FLOW`] header's value for flow `flow` under packet id `pid`.
pub(crate) fn flow_header(pid: u16, flow: u64) -> String {
    format!("{pid}.{flow}")
}

/// The packet id and flow number a [`FLOW`] header names.
pub(crate) fn parse_flow(value: &str) -> Option<(u16, u64)> {
    let (pid, flow) = value.split_once('.')?;
    let pid = pid.parse::<u16>().ok().filter(|p| *p != 0)?;
    let flow = flow.parse::<u64>().ok().filter(|f| *f != 0)?;
    Some((pid, flow))
}

/// Why a NATS message is not one of ours.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum EnvelopeError {
    /// The body is not one MQTT 5.0 PUBLISH packet.
    #[error("cluster message body is not an MQTT PUBLISH: {0}")]
    Codec(String),
    /// The subject does not name a topic under the cluster's prefix.
    #[error("cluster subject {0:?} does not name a topic")]
    Subject(String),
    /// Subject and body name different topics.
    #[error("cluster message for topic {body:?} arrived on the subject of {subject:?}")]
    Mismatch {
        /// The topic the subject names.
        subject: String,
        /// The topic in the body.
        body: String,
    },
}

/// The body of `publish` as it crosses to other nodes.
pub(crate) fn encode(publish: &Publish) -> Bytes {
    let mut p = publish.clone();
    p.dup = false;
    p.properties.topic_alias = None;
    p.properties.subscription_identifiers.clear();
    // Any id: the receiving node's own client numbers its publishes.
    let pid = NonZeroU16::MIN;
    p.qos_pid = QosPid::new(p.qos_pid.qos(), pid);
    let packet = Packet::Publish(p);
    let mut buf = BytesMut::with_capacity(codec::encoded_len(&packet, ProtocolVersion::V5));
    codec::encode(&packet, ProtocolVersion::V5, &mut buf)
        .expect("a PUBLISH a client sent, or the core built, encodes");
    buf.freeze()
}

/// The message in `body`, received on `subject` under `prefix`
/// (`<name>.d` or `<name>.v`).
pub(crate) fn decode(prefix: &str, subject: &str, body: &[u8]) -> Result<Publish, EnvelopeError> {
    let topic = crate::cluster::subject::topic_of(prefix, subject)
        .ok_or_else(|| EnvelopeError::Subject(subject.to_owned()))?;
    let mut buf = BytesMut::from(body);
    // As large as MQTT allows: the publishing node applied its limits.
    let mut decoder = Decoder::with_version(u32::MAX, ProtocolVersion::V5);
    let codec_err = |e: DecodeError| EnvelopeError::Codec(e.to_string());
    let publish = match decoder.decode(&mut buf).map_err(codec_err)? {
        Some(Packet::Publish(p)) if buf.is_empty() => p,
        _ => return Err(EnvelopeError::Codec("not exactly one PUBLISH".to_owned())),
    };
    if publish.topic.as_str() != topic {
        return Err(EnvelopeError::Mismatch {
            subject: topic,
            body: publish.topic.to_string(),
        });
    }
    Ok(publish)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::subject::subject_of;
    use crate::codec::{ByteStr, PublishProperties, QoS};

    fn publish(topic: &str, qos: QoS) -> Publish {
        Publish {
            dup: true,
            qos_pid: QosPid::new(qos, NonZeroU16::new(7).unwrap()),
            retain: true,
            topic: ByteStr::from(topic),
            payload: Bytes::from_static(b"\x00payload\xff"),
            properties: PublishProperties {
                payload_format_indicator: Some(0),
                message_expiry_interval: Some(30),
                topic_alias: NonZeroU16::new(3),
                response_topic: Some(ByteStr::from("re/ply")),
                correlation_data: Some(Bytes::from_static(b"\x01\x02")),
                user_properties: vec![
                    (ByteStr::from("k"), ByteStr::from("v")),
                    (ByteStr::from("k"), ByteStr::from("v2 ü")),
                ],
                subscription_identifiers: vec![std::num::NonZeroU32::new(9).unwrap()],
                content_type: Some(ByteStr::from("text/plain")),
            },
        }
    }

    #[test]
    fn round_trip_keeps_what_crosses_and_clears_per_hop_fields() {
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            let topic = "a.b/ c//ü/$x";
            let sent = publish(topic, qos);
            let subject = subject_of("r.d", topic);
            let got = decode("r.d", &subject, &encode(&sent)).unwrap();
            assert_eq!(got.topic, sent.topic);
            assert_eq!(got.qos_pid.qos(), qos);
            assert!(got.retain);
            assert!(!got.dup);
            assert_eq!(got.payload, sent.payload);
            let mut want = sent.properties.clone();
            want.topic_alias = None;
            want.subscription_identifiers.clear();
            assert_eq!(got.properties, want);
        }
    }

    #[test]
    fn a_flow_header_reads_back_and_garbage_does_not() {
        let v = flow_header(65535, u64::MAX);
        assert_eq!(parse_flow(&v), Some((65535, u64::MAX)));
        assert_eq!(parse_flow(&flow_header(1, 7)), Some((1, 7)));
        for bad in ["", "1", "0.5", "1.0", "x.5", "70000.5", "1.-2", "1.5.6"] {
            assert_eq!(parse_flow(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn subject_and_body_must_agree() {
        let body = encode(&publish("a/b", QoS::AtLeastOnce));
        assert!(matches!(
            decode("r.d", &subject_of("r.d", "a/c"), &body),
            Err(EnvelopeError::Mismatch { .. })
        ));
        assert!(matches!(
            decode("r.d", "other.d.a.b", &body),
            Err(EnvelopeError::Subject(_))
        ));
        assert!(matches!(
            decode("r.d", &subject_of("r.d", "a/b"), b"\x30\x05garbage"),
            Err(EnvelopeError::Codec(_))
        ));
    }
}
