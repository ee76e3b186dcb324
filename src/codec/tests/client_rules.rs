//! Property tests for the 5.0 "MUST NOT" rules the server-side decoder
//! enforces on what a client sends: valid packets are tainted with what the
//! rules forbid (a Subscription Identifier in a PUBLISH, a wildcard in a
//! Response Topic, Authentication Data without a Method, an empty topic
//! without an alias), and whatever the decoder accepts must keep every rule.
//! Decoding garbage and mutated packets checks the same (`roundtrip.rs`).

use super::strategies::versioned_packet;
use super::{packet, MAX};
use crate::codec::*;
use bytes::{Bytes, BytesMut};
use proptest::collection::vec;
use proptest::option::of;
use proptest::prelude::*;
use std::num::NonZeroU32;

/// `Err` naming the first client rule `p` breaks.
pub(super) fn client_rules_hold(p: &Packet, v: ProtocolVersion) -> Result<(), String> {
    let wildcard = |t: &Option<ByteStr>| t.as_ref().is_some_and(|t| t.contains(['+', '#']));
    match p {
        Packet::Publish(p) => {
            if !p.properties.subscription_identifiers.is_empty() {
                return Err("[MQTT-3.3.4-6] subscription identifier".into());
            }
            if wildcard(&p.properties.response_topic) {
                return Err("[MQTT-3.3.2-14] wildcard in response topic".into());
            }
            if p.topic.is_empty() && !(v.is_v5() && p.properties.topic_alias.is_some()) {
                return Err("3.3.2.3.4 empty topic without alias".into());
            }
        }
        Packet::Connect(c) => {
            let p = &c.properties;
            if p.authentication_data.is_some() && p.authentication_method.is_none() {
                return Err("3.1.2.11.10 authentication data without method".into());
            }
            if c.will
                .as_ref()
                .is_some_and(|w| wildcard(&w.properties.response_topic))
            {
                return Err("[MQTT-3.3.2-14] wildcard in the will's response topic".into());
            }
        }
        Packet::Auth(a) => {
            let p = &a.properties;
            if p.authentication_data.is_some() && p.authentication_method.is_none() {
                return Err("3.15.2.2.3 authentication data without method".into());
            }
        }
        _ => {}
    }
    Ok(())
}

/// A server-side decoder past a CONNECT of version `v`.
pub(super) fn from_client(v: ProtocolVersion) -> Decoder {
    let mut body = match v {
        ProtocolVersion::V3_1 => vec![0, 6, b'M', b'Q', b'I', b's', b'd', b'p', 3],
        ProtocolVersion::V3_1_1 => vec![0, 4, b'M', b'Q', b'T', b'T', 4],
        ProtocolVersion::V5 => vec![0, 4, b'M', b'Q', b'T', b'T', 5],
    };
    body.extend_from_slice(&[0x02, 0, 60]);
    if v.is_v5() {
        body.push(0);
    }
    body.extend_from_slice(&[0, 1, b'c']);
    let mut d = Decoder::new(MAX);
    let mut buf = BytesMut::from(&packet(0x10, &body)[..]);
    assert!(matches!(d.decode(&mut buf), Ok(Some(Packet::Connect(_)))));
    d
}

/// What a packet gets tainted with.
#[derive(Debug, Clone)]
struct Taint {
    subscription_identifiers: Vec<NonZeroU32>,
    response_topic: Option<ByteStr>,
    authentication_method: Option<ByteStr>,
    authentication_data: Option<Bytes>,
    empty_topic: bool,
}

fn taint() -> impl Strategy<Value = Taint> {
    (
        vec(
            (1..=1000u32).prop_map(|n| NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN)),
            0..2,
        ),
        of("[a/+#]{1,4}".prop_map(ByteStr::from)),
        of("[a-z]{0,3}".prop_map(ByteStr::from)),
        of(vec(any::<u8>(), 0..3).prop_map(Bytes::from)),
        any::<bool>(),
    )
        .prop_map(|(ids, rt, method, data, empty_topic)| Taint {
            subscription_identifiers: ids,
            response_topic: rt,
            authentication_method: method,
            authentication_data: data,
            empty_topic,
        })
}

fn tainted(mut p: Packet, t: Taint) -> Packet {
    match &mut p {
        Packet::Publish(p) => {
            p.properties.subscription_identifiers = t.subscription_identifiers;
            p.properties.response_topic = t.response_topic;
            if t.empty_topic {
                p.topic = ByteStr::new();
            }
        }
        Packet::Connect(c) => {
            c.properties.authentication_method = t.authentication_method;
            c.properties.authentication_data = t.authentication_data;
            if let Some(w) = &mut c.will {
                w.properties.response_topic = t.response_topic;
            }
        }
        Packet::Auth(a) => {
            a.properties.authentication_method = t.authentication_method;
            a.properties.authentication_data = t.authentication_data;
        }
        _ => {}
    }
    p
}

/// Failing cases are saved beside this file, as in `roundtrip.rs`.
fn config() -> ProptestConfig {
    ProptestConfig {
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::WithSource("proptest-regressions"),
        )),
        ..ProptestConfig::with_cases(512)
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn what_a_client_may_not_send_is_never_accepted(
        (v, p) in versioned_packet(),
        t in taint(),
    ) {
        let p = tainted(p, t);
        let mut buf = BytesMut::new();
        // 3.x drops properties when encoding; nothing else fails here.
        if encode(&p, v, &mut buf).is_err() {
            return Ok(());
        }
        let mut d = match p {
            Packet::Connect(_) => Decoder::new(MAX),
            _ => from_client(v),
        };
        if let Ok(Some(got)) = d.decode(&mut buf) {
            prop_assert_eq!(client_rules_hold(&got, v), Ok(()), "accepted {:?}", got);
        }
    }
}
