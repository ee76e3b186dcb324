//! MQTT 5.0 property rules (section 2.2.2) on literal bytes.

use super::{dec, packet};
use crate::codec::ProtocolVersion::V5;
use crate::codec::*;

/// A v5 PUBLISH QoS 0 to topic "t" with the given property bytes.
fn publish_with(props: &[u8]) -> Vec<u8> {
    let mut body = vec![0, 1, b't', props.len() as u8];
    body.extend_from_slice(props);
    packet(0x30, &body)
}

/// A v5 DISCONNECT (reason 0) with the given property bytes.
fn disconnect_with(props: &[u8]) -> Vec<u8> {
    let mut body = vec![0, props.len() as u8];
    body.extend_from_slice(props);
    packet(0xE0, &body)
}

/// A v5 CONNACK (reason 0) with the given property bytes.
fn connack_with(props: &[u8]) -> Vec<u8> {
    let mut body = vec![0, 0, props.len() as u8];
    body.extend_from_slice(props);
    packet(0x20, &body)
}

#[test]
fn unknown_property_mqtt_2_2_2_2() {
    for id in [0x00, 0x04, 0x2B, 0x7F, 0x80] {
        assert_eq!(
            dec(V5, &publish_with(&[id, 0])),
            Err(DecodeError::InvalidProperty(id))
        );
    }
}

#[test]
fn property_not_allowed_in_packet_mqtt_2_2_2_2() {
    // Session Expiry Interval in PUBLISH; Topic Alias in DISCONNECT;
    // Reason String in SUBSCRIBE.
    assert_eq!(
        dec(V5, &publish_with(&[0x11, 0, 0, 0, 1])),
        Err(DecodeError::InvalidProperty(0x11))
    );
    assert_eq!(
        dec(V5, &disconnect_with(&[0x23, 0, 1])),
        Err(DecodeError::InvalidProperty(0x23))
    );
    assert_eq!(
        dec(
            V5,
            &packet(0x82, &[0, 1, 4, 0x1F, 0, 1, b'r', 0, 1, b'a', 0])
        ),
        Err(DecodeError::InvalidProperty(0x1F))
    );
}

#[test]
fn duplicate_property_mqtt_2_2_2_2() {
    assert_eq!(
        dec(V5, &publish_with(&[0x02, 0, 0, 0, 1, 0x02, 0, 0, 0, 2])),
        Err(DecodeError::DuplicateProperty(0x02))
    );
    assert_eq!(
        dec(V5, &disconnect_with(&[0x1F, 0, 0, 0x1F, 0, 0])),
        Err(DecodeError::DuplicateProperty(0x1F))
    );
}

#[test]
fn user_property_and_publish_subscription_id_repeat() {
    let props = [
        0x26, 0, 1, b'a', 0, 0, 0x26, 0, 1, b'a', 0, 0, 0x0B, 1, 0x0B, 0x80, 0x01,
    ];
    let Some(Packet::Publish(p)) = dec(V5, &publish_with(&props)).unwrap() else {
        panic!()
    };
    assert_eq!(p.properties.user_properties.len(), 2);
    let ids: Vec<u32> = p
        .properties
        .subscription_identifiers
        .iter()
        .map(|i| i.get())
        .collect();
    assert_eq!(ids, [1, 128]);
}

#[test]
fn subscription_identifier_once_in_subscribe() {
    let body = [0, 1, 4, 0x0B, 1, 0x0B, 2, 0, 1, b'a', 0];
    assert_eq!(
        dec(V5, &packet(0x82, &body)),
        Err(DecodeError::DuplicateProperty(0x0B))
    );
}

#[test]
fn subscription_identifier_zero_mqtt_3_8_2_1_2() {
    assert_eq!(
        dec(V5, &publish_with(&[0x0B, 0])),
        Err(DecodeError::InvalidPropertyValue(0x0B))
    );
    let body = [0, 1, 2, 0x0B, 0, 0, 1, b'a', 0];
    assert_eq!(
        dec(V5, &packet(0x82, &body)),
        Err(DecodeError::InvalidPropertyValue(0x0B))
    );
}

#[test]
fn zero_receive_maximum_and_packet_size_mqtt_3_2_2_3() {
    assert_eq!(
        dec(V5, &connack_with(&[0x21, 0, 0])),
        Err(DecodeError::InvalidPropertyValue(0x21))
    );
    assert_eq!(
        dec(V5, &connack_with(&[0x27, 0, 0, 0, 0])),
        Err(DecodeError::InvalidPropertyValue(0x27))
    );
}

#[test]
fn byte_properties_must_be_0_or_1() {
    assert_eq!(
        dec(V5, &publish_with(&[0x01, 2])),
        Err(DecodeError::InvalidPropertyValue(0x01))
    );
    for id in [0x24, 0x25, 0x28, 0x29, 0x2A] {
        assert_eq!(
            dec(V5, &connack_with(&[id, 2])),
            Err(DecodeError::InvalidPropertyValue(id))
        );
    }
    // Request Problem / Response Information in CONNECT.
    for id in [0x17, 0x19] {
        let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 5, 2, 0, 0, 2, id, 2];
        body.extend_from_slice(&[0, 0]);
        assert_eq!(
            super::dec_new(&packet(0x10, &body)),
            Err(DecodeError::InvalidPropertyValue(id))
        );
    }
}

#[test]
fn property_length_past_end_is_length_mismatch() {
    // Property length 9, but the packet ends after 2 bytes.
    assert_eq!(
        dec(V5, &packet(0x30, &[0, 1, b't', 9, 0x01, 0])),
        Err(DecodeError::LengthMismatch)
    );
    // A property value runs past the property block.
    assert_eq!(
        dec(V5, &publish_with(&[0x02, 0, 0])),
        Err(DecodeError::LengthMismatch)
    );
}

#[test]
fn property_string_must_be_utf8_mqtt_1_5_4_1() {
    assert_eq!(
        dec(V5, &disconnect_with(&[0x1F, 0, 1, 0xFF])),
        Err(DecodeError::InvalidUtf8)
    );
}

#[test]
fn connack_properties_decode() {
    let props = [
        0x24, 1, 0x25, 0, 0x13, 0, 30, 0x12, 0, 2, b'i', b'd', 0x15, 0, 1, b'm', 0x16, 0, 1, 0xAB,
    ];
    let Some(Packet::ConnAck(c)) = dec(V5, &connack_with(&props)).unwrap() else {
        panic!()
    };
    let p = c.properties;
    assert_eq!(p.maximum_qos, Some(QoS::AtLeastOnce));
    assert_eq!(p.retain_available, Some(false));
    assert_eq!(p.server_keep_alive, Some(30));
    assert_eq!(p.assigned_client_identifier.as_deref(), Some("id"));
    assert_eq!(p.authentication_method.as_deref(), Some("m"));
    assert_eq!(p.authentication_data.as_deref(), Some(&[0xAB][..]));
}
