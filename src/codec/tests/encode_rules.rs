//! Encoding on literal bytes: 3.x leaves out what it does not have, 5.0
//! uses the short forms.

use crate::codec::ProtocolVersion::{V3_1, V3_1_1, V5};
use crate::codec::*;
use bytes::{Bytes, BytesMut};

fn enc(p: &Packet, v: ProtocolVersion) -> Vec<u8> {
    let mut buf = BytesMut::new();
    encode(p, v, &mut buf).unwrap();
    assert_eq!(buf.len(), encoded_len(p, v));
    buf.to_vec()
}

fn pid(n: u16) -> PacketId {
    PacketId::new(n).unwrap()
}

#[test]
fn v3_connack_maps_reason_to_return_code() {
    let p = Packet::ConnAck(ConnAck {
        session_present: true,
        reason: ReasonCode::BadAuthenticationMethod,
        properties: ConnAckProperties {
            reason_string: Some("no".into()),
            ..Default::default()
        },
    });
    assert_eq!(enc(&p, V3_1_1), [0x20, 2, 1, 4]);
    // 3.1 has no session present flag.
    assert_eq!(enc(&p, V3_1), [0x20, 2, 0, 4]);
    assert_eq!(enc(&p, V5), [0x20, 8, 1, 0x8C, 5, 0x1F, 0, 2, b'n', b'o']);
}

#[test]
fn v3_suback_failures_are_0x80() {
    let p = Packet::SubAck(SubAck {
        packet_id: pid(1),
        reasons: vec![ReasonCode::GrantedQos1, ReasonCode::NotAuthorized],
        properties: AckProperties::default(),
    });
    assert_eq!(enc(&p, V3_1_1), [0x90, 4, 0, 1, 1, 0x80]);
    assert_eq!(enc(&p, V5), [0x90, 5, 0, 1, 0, 1, 0x87]);
}

#[test]
fn v3_unsuback_has_no_payload() {
    let p = Packet::UnsubAck(UnsubAck {
        packet_id: pid(1),
        reasons: vec![ReasonCode::Success],
        properties: AckProperties::default(),
    });
    assert_eq!(enc(&p, V3_1_1), [0xB0, 2, 0, 1]);
    assert_eq!(enc(&p, V5), [0xB0, 4, 0, 1, 0, 0]);
}

#[test]
fn disconnect_forms() {
    let normal = Packet::Disconnect(Disconnect::default());
    assert_eq!(enc(&normal, V3_1_1), [0xE0, 0]);
    assert_eq!(enc(&normal, V5), [0xE0, 0]);
    let with_will = Packet::Disconnect(Disconnect {
        reason: ReasonCode::DisconnectWithWillMessage,
        properties: DisconnectProperties::default(),
    });
    assert_eq!(enc(&with_will, V3_1_1), [0xE0, 0]);
    assert_eq!(enc(&with_will, V5), [0xE0, 1, 0x04]);
}

#[test]
fn puback_forms() {
    let ok = Packet::PubAck(PubResp::new(pid(1)));
    assert_eq!(enc(&ok, V3_1_1), [0x40, 2, 0, 1]);
    assert_eq!(enc(&ok, V5), [0x40, 2, 0, 1]);
    let no_subs = Packet::PubRec(PubResp {
        reason: ReasonCode::NoMatchingSubscribers,
        ..PubResp::new(pid(1))
    });
    assert_eq!(enc(&no_subs, V3_1), [0x50, 2, 0, 1]);
    assert_eq!(enc(&no_subs, V5), [0x50, 3, 0, 1, 0x10]);
    let rel = Packet::PubRel(PubResp::new(pid(2)));
    assert_eq!(enc(&rel, V5), [0x62, 2, 0, 2]);
}

#[test]
fn connect_uses_its_own_protocol() {
    let c = Connect {
        protocol: V3_1,
        clean_start: true,
        keep_alive: 0,
        client_id: "c".into(),
        will: None,
        username: None,
        password: None,
        properties: ConnectProperties::default(),
    };
    let bytes = enc(&Packet::Connect(Box::new(c)), V5);
    assert_eq!(&bytes[2..10], &[0, 6, b'M', b'Q', b'I', b's', b'd', b'p']);
    assert_eq!(bytes[10], 3);
}

#[test]
fn publish_header_flags() {
    let p = Packet::Publish(Publish {
        dup: true,
        qos_pid: QosPid::ExactlyOnce(pid(3)),
        retain: true,
        topic: "a".into(),
        payload: Bytes::from_static(b"x"),
        properties: PublishProperties::default(),
    });
    assert_eq!(enc(&p, V3_1_1), [0x3D, 6, 0, 1, b'a', 0, 3, b'x']);
    assert_eq!(enc(&p, V5), [0x3D, 7, 0, 1, b'a', 0, 3, 0, b'x']);
}

#[test]
fn auth_cannot_be_encoded_for_3x() {
    let mut buf = BytesMut::new();
    assert_eq!(
        encode(&Packet::Auth(Auth::default()), V3_1_1, &mut buf),
        Err(EncodeError::UnsupportedPacket)
    );
    assert!(buf.is_empty());
}

#[test]
fn overlong_field_fails_and_writes_nothing() {
    let p = Packet::Publish(Publish {
        dup: false,
        qos_pid: QosPid::AtMostOnce,
        retain: false,
        topic: "a".repeat(70_000).into(),
        payload: Bytes::new(),
        properties: PublishProperties::default(),
    });
    let mut buf = BytesMut::from(&b"keep"[..]);
    assert_eq!(encode(&p, V5, &mut buf), Err(EncodeError::FieldTooLong));
    assert_eq!(&buf[..], b"keep");
}

#[test]
fn subscription_identifier_out_of_range() {
    let p = Packet::Subscribe(Subscribe {
        packet_id: pid(1),
        filters: vec![("a".into(), SubscriptionOptions::default())],
        subscription_identifier: std::num::NonZeroU32::new(MAX_REMAINING_LENGTH + 1),
        user_properties: Vec::new(),
    });
    let mut buf = BytesMut::new();
    assert_eq!(encode(&p, V5, &mut buf), Err(EncodeError::ValueOutOfRange));
    assert!(buf.is_empty());
}

#[test]
fn large_remaining_length_uses_more_bytes() {
    let p = Packet::Publish(Publish {
        dup: false,
        qos_pid: QosPid::AtMostOnce,
        retain: false,
        topic: "a".into(),
        payload: Bytes::from(vec![7; 20_000]),
        properties: PublishProperties::default(),
    });
    let bytes = enc(&p, V3_1_1);
    assert_eq!(bytes.len(), 1 + 3 + 3 + 20_000);
    let mut buf = BytesMut::from(&bytes[..]);
    let got = Decoder::with_version(1 << 20, V3_1_1)
        .decode(&mut buf)
        .unwrap();
    assert_eq!(got, Some(p));
}
