//! One test per decoding rule, on literal bytes. Test names carry the rule.

use super::{dec, dec_new, packet, MAX};
use crate::codec::ProtocolVersion::{V3_1, V3_1_1, V5};
use crate::codec::*;
use bytes::BytesMut;

fn pid(n: u16) -> PacketId {
    PacketId::new(n).unwrap()
}

/// CONNECT body with protocol `name`, `level`, `flags`, keep alive 60, no
/// properties, then `payload`.
fn connect_body(name: &[u8], level: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut b = vec![0, name.len() as u8];
    b.extend_from_slice(name);
    b.extend_from_slice(&[level, flags, 0, 60]);
    if level == 5 {
        b.push(0);
    }
    b.extend_from_slice(payload);
    b
}

fn connect(name: &[u8], level: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
    packet(0x10, &connect_body(name, level, flags, payload))
}

#[test]
fn size_limit_checked_from_fixed_header_mqtt_3_2_2_15() {
    // PUBLISH announcing 200 bytes; only the fixed header has arrived.
    let mut buf = BytesMut::from(&[0x30, 0xC8, 0x01][..]);
    let mut d = Decoder::with_version(100, V3_1_1);
    assert_eq!(
        d.decode(&mut buf),
        Err(DecodeError::PacketTooLarge {
            size: 203,
            max: 100
        })
    );
    assert_eq!(buf.len(), 3);
    // Exactly at the limit is fine.
    let mut d = Decoder::with_version(5, V3_1_1);
    let mut buf = BytesMut::from(&[0x30, 0x03, 0, 1, b'a'][..]);
    assert!(matches!(d.decode(&mut buf), Ok(Some(Packet::Publish(_)))));
}

#[test]
fn size_limit_applies_before_connect() {
    let mut buf = BytesMut::from(&[0x10, 0xFF, 0x7F][..]);
    assert_eq!(
        Decoder::new(1000).decode(&mut buf),
        Err(DecodeError::PacketTooLarge {
            size: 16_386,
            max: 1000
        })
    );
}

#[test]
fn not_enough_bytes_is_ok_none_and_consumes_nothing() {
    let full = connect(b"MQTT", 4, 0x02, &[0, 1, b'c']);
    for n in 0..full.len() {
        let mut buf = BytesMut::from(&full[..n]);
        assert_eq!(Decoder::new(MAX).decode(&mut buf), Ok(None), "prefix {n}");
        assert_eq!(buf.len(), n);
    }
}

#[test]
fn remaining_length_over_four_bytes_mqtt_1_5_5_1() {
    assert_eq!(
        dec(V5, &[0xC0, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]),
        Err(DecodeError::MalformedRemainingLength)
    );
}

#[test]
fn packet_type_zero_is_invalid() {
    assert_eq!(
        dec(V5, &[0x00, 0x00]),
        Err(DecodeError::InvalidPacketType(0))
    );
    assert_eq!(
        dec_new(&[0x00, 0x00]),
        Err(DecodeError::InvalidPacketType(0))
    );
}

#[test]
fn reserved_header_flags_mqtt_2_1_3_1() {
    for (bytes, kind) in [
        (&[0x60, 2, 0, 1][..], 6),
        (&[0x80, 2, 0, 1][..], 8),
        (&[0xA0, 2, 0, 1][..], 10),
        (&[0x63, 2, 0, 1][..], 6),
        (&[0xC1, 0][..], 12),
        (&[0x41, 2, 0, 1][..], 4),
        (&[0xE8, 0][..], 14),
    ] {
        assert_eq!(
            dec(V3_1_1, bytes),
            Err(DecodeError::InvalidHeaderFlags(kind))
        );
    }
}

#[test]
fn first_packet_must_be_connect_mqtt_3_1_0_1() {
    assert_eq!(dec_new(&[0xC0, 0x00]), Err(DecodeError::ExpectedConnect));
    assert_eq!(dec_new(&[0xF0, 0x00]), Err(DecodeError::ExpectedConnect));
}

#[test]
fn second_connect_is_an_error_mqtt_3_1_0_2() {
    let c = connect(b"MQTT", 4, 0x02, &[0, 0]);
    let mut buf = BytesMut::from(&c[..]);
    buf.extend_from_slice(&c);
    let mut d = Decoder::new(MAX);
    assert!(matches!(d.decode(&mut buf), Ok(Some(Packet::Connect(_)))));
    assert_eq!(d.version(), Some(V3_1_1));
    assert_eq!(d.decode(&mut buf), Err(DecodeError::DuplicateConnect));
}

#[test]
fn connect_3_1_1_minimal() {
    let got = dec_new(&connect(b"MQTT", 4, 0x02, &[0, 0]))
        .unwrap()
        .unwrap();
    let Packet::Connect(c) = got else {
        panic!("{got:?}")
    };
    assert_eq!(c.protocol, V3_1_1);
    assert!(c.clean_start);
    assert_eq!(c.keep_alive, 60);
    assert_eq!(c.client_id, "");
    assert!(c.will.is_none() && c.username.is_none() && c.password.is_none());
}

#[test]
fn connect_3_1_mqisdp_with_will_user_password() {
    let payload = [
        &[0, 2, b'i', b'd'][..],
        &[0, 3, b'a', b'/', b'b'],
        &[0, 2, b'h', b'i'],
        &[0, 1, b'u'],
        &[0, 2, 1, 2],
    ]
    .concat();
    // will, will QoS 1, will retain, password, user name.
    let flags = 0x04 | 0x08 | 0x20 | 0x40 | 0x80;
    let mut d = Decoder::new(MAX);
    let mut buf = BytesMut::from(&connect(b"MQIsdp", 3, flags, &payload)[..]);
    let Some(Packet::Connect(c)) = d.decode(&mut buf).unwrap() else {
        panic!()
    };
    assert_eq!(d.version(), Some(V3_1));
    let w = c.will.unwrap();
    assert_eq!((w.topic.as_str(), &w.payload[..]), ("a/b", &b"hi"[..]));
    assert_eq!((w.qos, w.retain), (QoS::AtLeastOnce, true));
    assert_eq!(c.username.unwrap(), "u");
    assert_eq!(&c.password.unwrap()[..], &[1, 2]);
}

#[test]
fn connect_5_with_properties() {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 10];
    // Session Expiry 30, Receive Maximum 5, User Property ("k","v") twice.
    let props = [
        &[0x11, 0, 0, 0, 30][..],
        &[0x21, 0, 5],
        &[0x26, 0, 1, b'k', 0, 1, b'v'],
        &[0x26, 0, 1, b'k', 0, 1, b'w'],
    ]
    .concat();
    body.push(props.len() as u8);
    body.extend_from_slice(&props);
    body.extend_from_slice(&[0, 1, b'c']);
    let Some(Packet::Connect(c)) = dec_new(&packet(0x10, &body)).unwrap() else {
        panic!()
    };
    assert_eq!(c.protocol, V5);
    assert_eq!(c.properties.session_expiry_interval, Some(30));
    assert_eq!(c.properties.receive_maximum.map(|n| n.get()), Some(5));
    assert_eq!(c.properties.user_properties.len(), 2);
}

#[test]
fn protocol_name_must_match_level_mqtt_3_1_2_1() {
    for (name, level) in [
        (&b"MQTX"[..], 4),
        (&b"MQIsdp"[..], 4),
        (&b"MQTT"[..], 3),
        (&b"mqtt"[..], 4),
    ] {
        assert_eq!(
            dec_new(&connect(name, level, 0x02, &[0, 0])),
            Err(DecodeError::InvalidProtocolName),
            "{name:?} {level}"
        );
    }
}

#[test]
fn unknown_level_is_unsupported_version_mqtt_3_1_2_2() {
    // The rest of the packet is garbage for any version; the level decides.
    for level in [0, 2, 6, 0xFF] {
        let bytes = packet(0x10, &[0, 4, b'M', b'Q', b'T', b'T', level, 0xFF, 0xFF]);
        let err = dec_new(&bytes).unwrap_err();
        assert_eq!(err, DecodeError::UnsupportedProtocolVersion(level));
        assert_eq!(err.reason_code(), ReasonCode::UnsupportedProtocolVersion);
        let want = if level < 5 { V3_1_1 } else { V5 };
        assert_eq!(err.connack_version(), Some(want));
    }
    assert_eq!(DecodeError::InvalidProtocolName.connack_version(), None);
}

#[test]
fn connect_reserved_flag_mqtt_3_1_2_3() {
    assert_eq!(
        dec_new(&connect(b"MQTT", 4, 0x03, &[0, 0])),
        Err(DecodeError::ConnectReservedFlag)
    );
}

#[test]
fn will_flags_without_will_mqtt_3_1_2_11_13_15() {
    for flags in [0x08, 0x10, 0x20] {
        assert_eq!(
            dec_new(&connect(b"MQTT", 4, flags, &[0, 0])),
            Err(DecodeError::InvalidWillFlags)
        );
    }
}

#[test]
fn will_qos_3_mqtt_3_1_2_14() {
    let payload = [0, 0, 0, 1, b't', 0, 0];
    assert_eq!(
        dec_new(&connect(b"MQTT", 4, 0x04 | 0x18, &payload)),
        Err(DecodeError::InvalidWillFlags)
    );
}

#[test]
fn will_topic_must_be_a_topic_name_mqtt_3_1_3_11() {
    let payload = [0, 0, 0, 3, b'a', b'/', b'#', 0, 0];
    assert_eq!(
        dec_new(&connect(b"MQTT", 4, 0x04, &payload)),
        Err(DecodeError::WildcardInTopicName)
    );
}

#[test]
fn password_without_username_mqtt_3_1_2_22() {
    let payload = [0, 0, 0, 1, b'p'];
    assert_eq!(
        dec_new(&connect(b"MQTT", 4, 0x40, &payload)),
        Err(DecodeError::PasswordWithoutUsername)
    );
    assert_eq!(
        dec_new(&connect(b"MQIsdp", 3, 0x40, &payload)),
        Err(DecodeError::PasswordWithoutUsername)
    );
    // 5.0 allows it (3.1.2.9).
    let Some(Packet::Connect(c)) = dec_new(&connect(b"MQTT", 5, 0x40, &payload)).unwrap() else {
        panic!()
    };
    assert_eq!(c.username, None);
    assert_eq!(c.password.as_deref(), Some(&b"p"[..]));
}

#[test]
fn connect_trailing_bytes_are_length_mismatch() {
    assert_eq!(
        dec_new(&connect(b"MQTT", 4, 0x02, &[0, 0, 0xAA])),
        Err(DecodeError::LengthMismatch)
    );
    assert_eq!(
        dec_new(&connect(b"MQTT", 4, 0x02, &[0, 5, b'a'])),
        Err(DecodeError::LengthMismatch)
    );
}

#[test]
fn client_id_must_be_utf8_mqtt_1_5_4_1() {
    assert_eq!(
        dec_new(&connect(b"MQTT", 4, 0x02, &[0, 2, 0xC3, 0x28])),
        Err(DecodeError::InvalidUtf8)
    );
    assert_eq!(
        dec_new(&connect(b"MQTT", 4, 0x02, &[0, 1, 0])),
        Err(DecodeError::InvalidUtf8)
    );
}

#[test]
fn publish_qos_3_mqtt_3_3_1_4() {
    assert_eq!(
        dec(V3_1_1, &[0x36, 3, 0, 1, b'a']),
        Err(DecodeError::InvalidQoS)
    );
}

#[test]
fn publish_dup_on_qos0_mqtt_3_3_1_2() {
    assert_eq!(
        dec(V3_1_1, &[0x38, 3, 0, 1, b'a']),
        Err(DecodeError::DupOnQoS0)
    );
    assert_eq!(
        dec(V5, &[0x38, 4, 0, 1, b'a', 0]),
        Err(DecodeError::DupOnQoS0)
    );
}

#[test]
fn publish_zero_packet_id_mqtt_2_2_1_3() {
    assert_eq!(
        dec(V3_1_1, &[0x32, 5, 0, 1, b'a', 0, 0]),
        Err(DecodeError::ZeroPacketId)
    );
}

#[test]
fn publish_wildcard_topic_mqtt_3_3_2_2() {
    assert_eq!(
        dec(V3_1_1, &[0x30, 3, 0, 1, b'+']),
        Err(DecodeError::WildcardInTopicName)
    );
    assert_eq!(
        dec(V5, &[0x30, 4, 0, 1, b'#', 0]),
        Err(DecodeError::WildcardInTopicName)
    );
}

#[test]
fn publish_empty_topic_only_with_alias_mqtt_3_3_2_1() {
    assert_eq!(
        dec(V3_1_1, &[0x30, 2, 0, 0]),
        Err(DecodeError::InvalidTopicName)
    );
    // 5.0 section 3.3.2.3.4: a Protocol Error, not an invalid topic name.
    assert_eq!(
        dec(V5, &[0x30, 3, 0, 0, 0]),
        Err(DecodeError::EmptyTopicWithoutAlias)
    );
    assert_eq!(
        DecodeError::EmptyTopicWithoutAlias.reason_code(),
        ReasonCode::ProtocolError
    );
    let got = dec(V5, &[0x30, 7, 0, 0, 3, 0x23, 0, 7, b'x'])
        .unwrap()
        .unwrap();
    let Packet::Publish(p) = got else { panic!() };
    assert_eq!(p.topic, "");
    assert_eq!(p.properties.topic_alias.map(|a| a.get()), Some(7));
    assert_eq!(&p.payload[..], b"x");
}

#[test]
fn publish_topic_alias_zero_mqtt_3_3_2_8() {
    assert_eq!(
        dec(V5, &[0x30, 6, 0, 0, 3, 0x23, 0, 0]),
        Err(DecodeError::InvalidPropertyValue(0x23))
    );
}

#[test]
fn publish_3_1_1_qos1_fields() {
    let got = dec(V3_1_1, &[0x3B, 7, 0, 1, b't', 0, 9, b'h', b'i'])
        .unwrap()
        .unwrap();
    let Packet::Publish(p) = got else { panic!() };
    assert!(p.dup && p.retain);
    assert_eq!(p.qos_pid, QosPid::AtLeastOnce(pid(9)));
    assert_eq!((p.topic.as_str(), &p.payload[..]), ("t", &b"hi"[..]));
}

#[test]
fn publish_decoding_is_zero_copy() {
    let bytes = [0x30, 7, 0, 1, b't', b'a', b'b', b'c', b'd'];
    let mut buf = BytesMut::from(&bytes[..]);
    let base = buf.as_ptr() as usize;
    let Some(Packet::Publish(p)) = Decoder::with_version(MAX, V3_1_1).decode(&mut buf).unwrap()
    else {
        panic!()
    };
    assert_eq!(p.payload.as_ptr() as usize, base + 5);
    assert_eq!(p.topic.as_bytes().as_ptr() as usize, base + 4);
}

#[test]
fn several_packets_in_one_buffer() {
    let mut buf = BytesMut::from(&[0xC0, 0, 0xD0, 0, 0xE0][..]);
    let mut d = Decoder::with_version(MAX, V3_1_1);
    assert_eq!(d.decode(&mut buf), Ok(Some(Packet::PingReq)));
    assert_eq!(d.decode(&mut buf), Ok(Some(Packet::PingResp)));
    assert_eq!(d.decode(&mut buf), Ok(None));
    assert_eq!(buf.len(), 1);
}

#[test]
fn ping_with_body_is_length_mismatch() {
    assert_eq!(dec(V3_1_1, &[0xC0, 1, 0]), Err(DecodeError::LengthMismatch));
}

#[test]
fn subscribe_needs_a_filter_mqtt_3_8_3_3() {
    assert_eq!(
        dec(V3_1_1, &[0x82, 2, 0, 1]),
        Err(DecodeError::NoTopicFilter)
    );
    assert_eq!(
        dec(V5, &[0x82, 3, 0, 1, 0]),
        Err(DecodeError::NoTopicFilter)
    );
}

#[test]
fn subscribe_filter_must_be_valid_mqtt_4_7_1_1() {
    assert_eq!(
        dec(V3_1_1, &[0x82, 7, 0, 1, 0, 2, b'a', b'#', 0]),
        Err(DecodeError::InvalidTopicFilter)
    );
}

#[test]
fn subscribe_v3_options_only_qos_mqtt_3_8_3_4() {
    assert_eq!(
        dec(V3_1_1, &[0x82, 6, 0, 1, 0, 1, b'a', 0x04]),
        Err(DecodeError::InvalidSubscriptionOptions)
    );
    // QoS 3 is a well-formed byte with a forbidden value.
    assert_eq!(
        dec(V3_1, &[0x82, 6, 0, 1, 0, 1, b'a', 0x03]),
        Err(DecodeError::ForbiddenSubscriptionOptions)
    );
}

#[test]
fn subscribe_v5_options_mqtt_3_8_3_5() {
    for opts in [0x40, 0x80] {
        assert_eq!(
            dec(V5, &[0x82, 7, 0, 1, 0, 0, 1, b'a', opts]),
            Err(DecodeError::InvalidSubscriptionOptions),
            "{opts:#x}"
        );
    }
    // Retain Handling 3 and QoS 3 are Protocol Errors (5.0 section 3.8.3.1).
    for opts in [0x30, 0x03] {
        assert_eq!(
            dec(V5, &[0x82, 7, 0, 1, 0, 0, 1, b'a', opts]),
            Err(DecodeError::ForbiddenSubscriptionOptions),
            "{opts:#x}"
        );
    }
    let got = dec(V5, &[0x82, 7, 0, 1, 0, 0, 1, b'a', 0x2E])
        .unwrap()
        .unwrap();
    let Packet::Subscribe(s) = got else { panic!() };
    let o = s.filters[0].1;
    assert_eq!(o.qos, QoS::ExactlyOnce);
    assert!(o.no_local && o.retain_as_published);
    assert_eq!(o.retain_handling, RetainHandling::DoNotSend);
}

#[test]
fn shared_subscription_no_local_mqtt_3_8_3_4() {
    let mut body = vec![0, 1, 0, 0, 11];
    body.extend_from_slice(b"$share/g/a/");
    body.push(0x04);
    assert_eq!(
        dec(V5, &packet(0x82, &body)),
        Err(DecodeError::ForbiddenSubscriptionOptions)
    );
}

#[test]
fn unsubscribe_needs_a_valid_filter_mqtt_3_10_3_2() {
    assert_eq!(
        dec(V3_1_1, &[0xA2, 2, 0, 1]),
        Err(DecodeError::NoTopicFilter)
    );
    assert_eq!(
        dec(V5, &[0xA2, 6, 0, 1, 0, 0, 1, b'#']).map(|p| p.is_some()),
        Ok(true)
    );
    assert_eq!(
        dec(V5, &[0xA2, 7, 0, 1, 0, 0, 2, b'#', b'a']),
        Err(DecodeError::InvalidTopicFilter)
    );
}

#[test]
fn v5_reason_codes_must_fit_the_packet() {
    let cases: [(&[u8], u8); 9] = [
        (&[0x40, 3, 0, 1, 0x92], 0x92),    // PUBACK
        (&[0x50, 3, 0, 1, 0x11], 0x11),    // PUBREC
        (&[0x62, 3, 0, 1, 0x10], 0x10),    // PUBREL
        (&[0x70, 3, 0, 1, 0x80], 0x80),    // PUBCOMP
        (&[0xE0, 1, 0x01], 0x01),          // DISCONNECT
        (&[0xF0, 1, 0x04], 0x04),          // AUTH
        (&[0x90, 4, 0, 1, 0, 0x03], 0x03), // SUBACK
        (&[0xB0, 4, 0, 1, 0, 0x01], 0x01), // UNSUBACK
        (&[0x20, 3, 0, 0x01, 0], 0x01),    // CONNACK
    ];
    for (bytes, code) in cases {
        assert_eq!(
            dec(V5, bytes),
            Err(DecodeError::InvalidReasonCode(code)),
            "{bytes:x?}"
        );
    }
}

#[test]
fn v3_return_codes() {
    assert_eq!(
        dec(V3_1_1, &[0x20, 2, 0, 6]),
        Err(DecodeError::InvalidReasonCode(6))
    );
    assert_eq!(
        dec(V3_1_1, &[0x90, 3, 0, 1, 0x81]),
        Err(DecodeError::InvalidReasonCode(0x81))
    );
    let Some(Packet::ConnAck(c)) = dec(V3_1_1, &[0x20, 2, 1, 5]).unwrap() else {
        panic!()
    };
    assert!(c.session_present);
    assert_eq!(c.reason, ReasonCode::NotAuthorized);
}

#[test]
fn connack_reserved_flags_mqtt_3_2_2_1() {
    assert_eq!(
        dec(V3_1_1, &[0x20, 2, 2, 0]),
        Err(DecodeError::ConnAckReservedFlag)
    );
    // 3.1 has no session present flag; the byte is unused.
    let Some(Packet::ConnAck(c)) = dec(V3_1, &[0x20, 2, 0xFF, 0]).unwrap() else {
        panic!()
    };
    assert!(!c.session_present);
}

#[test]
fn v5_short_acks_mean_success() {
    let want = PubResp::new(pid(1));
    assert_eq!(
        dec(V5, &[0x40, 2, 0, 1]),
        Ok(Some(Packet::PubAck(want.clone())))
    );
    assert_eq!(
        dec(V5, &[0x70, 3, 0, 1, 0]),
        Ok(Some(Packet::PubComp(want.clone())))
    );
    assert_eq!(
        dec(V5, &[0x62, 4, 0, 1, 0, 0]),
        Ok(Some(Packet::PubRel(want)))
    );
    assert_eq!(
        dec(V5, &[0xE0, 0]),
        Ok(Some(Packet::Disconnect(Disconnect::default())))
    );
    assert_eq!(dec(V5, &[0xF0, 0]), Ok(Some(Packet::Auth(Auth::default()))));
}

#[test]
fn v3_acks_are_exactly_two_bytes() {
    assert_eq!(
        dec(V3_1_1, &[0x40, 3, 0, 1, 0]),
        Err(DecodeError::LengthMismatch)
    );
    assert_eq!(dec(V3_1_1, &[0x40, 1, 0]), Err(DecodeError::LengthMismatch));
    assert_eq!(
        dec(V3_1_1, &[0xB0, 3, 0, 1, 0]),
        Err(DecodeError::LengthMismatch)
    );
    assert_eq!(dec(V3_1_1, &[0xE0, 1, 0]), Err(DecodeError::LengthMismatch));
    assert_eq!(
        dec(V3_1, &[0x50, 2, 0, 7]),
        Ok(Some(Packet::PubRec(PubResp::new(pid(7)))))
    );
}

#[test]
fn auth_is_5_0_only() {
    assert_eq!(
        dec(V3_1_1, &[0xF0, 0]),
        Err(DecodeError::UnsupportedPacket(15))
    );
    assert_eq!(
        dec(V3_1, &[0xF0, 0]),
        Err(DecodeError::UnsupportedPacket(15))
    );
}

#[test]
fn acks_with_zero_packet_id_mqtt_2_2_1_3() {
    assert_eq!(
        dec(V3_1_1, &[0x40, 2, 0, 0]),
        Err(DecodeError::ZeroPacketId)
    );
    assert_eq!(
        dec(V5, &[0x90, 4, 0, 0, 0, 0]),
        Err(DecodeError::ZeroPacketId)
    );
}

#[test]
fn bare_acks_in_a_row_each_take_their_own_bytes() {
    // The short path for two-byte acknowledgements and PINGREQ must
    // consume exactly one packet at a time, and leave a partial one.
    let mut buf = BytesMut::from(
        &[
            0x40, 2, 0, 1, // PUBACK 1
            0x50, 2, 0, 2, // PUBREC 2
            0x62, 2, 0, 3, // PUBREL 3
            0x70, 2, 0, 4, // PUBCOMP 4
            0xC0, 0, // PINGREQ
            0x62, 2, 0, 0, // PUBREL 0: malformed
            0x40, 2, 0, // half a PUBACK
        ][..],
    );
    let mut d = Decoder::with_version(MAX, V5);
    let r = |n| PubResp::new(pid(n));
    assert_eq!(d.decode(&mut buf), Ok(Some(Packet::PubAck(r(1)))));
    assert_eq!(d.decode(&mut buf), Ok(Some(Packet::PubRec(r(2)))));
    assert_eq!(d.decode(&mut buf), Ok(Some(Packet::PubRel(r(3)))));
    assert_eq!(d.decode(&mut buf), Ok(Some(Packet::PubComp(r(4)))));
    assert_eq!(d.decode(&mut buf), Ok(Some(Packet::PingReq)));
    assert_eq!(d.decode(&mut buf), Err(DecodeError::ZeroPacketId));
    assert_eq!(d.decode(&mut buf), Ok(None));
    assert_eq!(&buf[..], &[0x40, 2, 0]);
    // PUBREL's reserved flags are still checked first.
    let mut bad = BytesMut::from(&[0x60, 2, 0, 1][..]);
    assert_eq!(d.decode(&mut bad), Err(DecodeError::InvalidHeaderFlags(6)));
}

/// A server-side decoder past a 5.0 CONNECT: packets come from a client.
fn from_v5_client() -> Decoder {
    let mut d = Decoder::new(MAX);
    let mut buf = BytesMut::from(&connect(b"MQTT", 5, 0x02, &[0, 1, b'c'])[..]);
    assert!(matches!(d.decode(&mut buf), Ok(Some(Packet::Connect(_)))));
    d
}

#[test]
fn publish_from_client_without_subscription_identifier_mqtt_3_3_4_6() {
    // Topic "t", property Subscription Identifier 1.
    let bytes = [0x30, 6, 0, 1, b't', 2, 0x0B, 1];
    let mut buf = BytesMut::from(&bytes[..]);
    let err = from_v5_client().decode(&mut buf).unwrap_err();
    assert_eq!(err, DecodeError::SubscriptionIdentifierFromClient);
    assert_eq!(err.reason_code(), ReasonCode::ProtocolError);
    assert!(err.to_string().contains("[MQTT-3.3.4-6]"), "{err}");
    // From a server (a decoder reading either direction) it is how the
    // subscriber learns which subscription matched.
    let Some(Packet::Publish(p)) = dec(V5, &bytes).unwrap() else {
        panic!("a PUBLISH")
    };
    assert_eq!(p.properties.subscription_identifiers[0].get(), 1);
}

#[test]
fn response_topic_without_wildcards_mqtt_3_3_2_14() {
    for wildcard in [b'+', b'#'] {
        // PUBLISH "t" with Response Topic "a<wildcard>".
        let err = dec(V5, &[0x30, 9, 0, 1, b't', 5, 0x08, 0, 2, b'a', wildcard]).unwrap_err();
        assert_eq!(err, DecodeError::WildcardInResponseTopic);
        assert_eq!(err.reason_code(), ReasonCode::ProtocolError);
        // A will whose Response Topic is "<wildcard>": client id "c", will
        // properties, will topic "w", empty will payload.
        let payload = [0, 1, b'c', 4, 0x08, 0, 1, wildcard, 0, 1, b'w', 0, 0];
        assert_eq!(
            dec_new(&connect(b"MQTT", 5, 0x06, &payload)),
            Err(DecodeError::WildcardInResponseTopic)
        );
    }
    // Without a wildcard both are fine.
    assert!(dec(V5, &[0x30, 9, 0, 1, b't', 5, 0x08, 0, 2, b'a', b'/']).is_ok());
    let payload = [0, 1, b'c', 4, 0x08, 0, 1, b'r', 0, 1, b'w', 0, 0];
    assert!(dec_new(&connect(b"MQTT", 5, 0x06, &payload)).is_ok());
}

#[test]
fn authentication_data_needs_a_method() {
    let err = DecodeError::AuthenticationDataWithoutMethod;
    assert_eq!(err.reason_code(), ReasonCode::ProtocolError);
    // CONNECT (3.1.2.11.10): properties holding only Authentication Data.
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 60];
    body.extend_from_slice(&[4, 0x16, 0, 1, 0xAA, 0, 1, b'c']);
    assert_eq!(dec_new(&packet(0x10, &body)), Err(err));
    // CONNACK (3.2.2.3.18) and AUTH (3.15.2.2.3).
    assert_eq!(dec(V5, &[0x20, 7, 0, 0, 4, 0x16, 0, 1, 0xAA]), Err(err));
    assert_eq!(dec(V5, &[0xF0, 6, 0x18, 4, 0x16, 0, 1, 0xAA]), Err(err));
    // With a method, data is fine.
    assert!(matches!(
        dec(V5, &[0xF0, 10, 0x18, 8, 0x15, 0, 1, b'm', 0x16, 0, 1, 0xAA]),
        Ok(Some(Packet::Auth(_)))
    ));
}
