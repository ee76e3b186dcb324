//! Bad input: every malformed packet or protocol violation gets the right
//! reason code (5.0) and a closed connection, never a panic or a hang, and
//! the broker keeps serving everyone else.
//!
//! Packets are hand-written byte vectors; each test names the rule it checks.

mod common;
use common::*;
use roost::codec::{Decoder, Packet, ProtocolVersion, QoS, ReasonCode};
use roost::Options;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

// ----- helpers ---------------------------------------------------------------

/// Frames `body` as one packet: `first` byte, remaining length, body.
fn frame(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    let mut n = body.len();
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
    out
}

/// A 3.1.1 CONNECT body: name, level, `flags`, keep-alive 60, then `payload`.
fn connect311(flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, flags, 0, 60];
    body.extend_from_slice(payload);
    frame(0x10, &body)
}

/// A 5.0 CONNECT body: name, level 5, `flags`, keep-alive 60, `props`
/// (without their length), then `payload`.
fn connect5(flags: u8, props: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut body = vec![
        0,
        4,
        b'M',
        b'Q',
        b'T',
        b'T',
        5,
        flags,
        0,
        60,
        props.len() as u8,
    ];
    body.extend_from_slice(props);
    body.extend_from_slice(payload);
    frame(0x10, &body)
}

/// Client id "c" as a CONNECT payload.
const ID_C: &[u8] = &[0, 1, b'c'];
/// Clean Session / Clean Start.
const CLEAN: u8 = 0x02;

/// Sends `bytes` on a fresh TCP connection and returns everything the broker
/// sent before it closed the connection; panics if it does not close in time.
async fn exchange(b: &TestBroker, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(b.addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    read_to_close(&mut s).await
}

async fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(WAIT, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return got,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!("connection not closed; got {got:02x?}"),
        }
    }
}

async fn broker() -> TestBroker {
    watched_broker(Options::default()).await
}

/// Connects a client of `version`, sends `bytes` after CONNACK and returns
/// what the broker sent before closing.
async fn violate(b: &TestBroker, version: ProtocolVersion, bytes: &[u8]) -> Vec<Packet> {
    let mut c = Raw::connected(b.addr, connect(version, &unique("x"), true)).await;
    c.send_bytes(bytes).await;
    c.expect_closed().await
}

/// A 5.0 client sends `bytes`: DISCONNECT with `code`, then close.
async fn expect_v5_disconnect(b: &TestBroker, bytes: &[u8], code: ReasonCode) {
    let got = violate(b, ProtocolVersion::V5, bytes).await;
    match &got[..] {
        [Packet::Disconnect(d)] => assert_eq!(d.reason, code, "{d:?}"),
        other => panic!("expected one DISCONNECT {code:?}, got {other:?}"),
    }
}

/// A 3.1.1 client sends `bytes`: the connection is closed without a word
/// (3.1.1 has no server DISCONNECT; [MQTT-4.8.0-1]).
async fn expect_v311_close(b: &TestBroker, bytes: &[u8]) {
    let got = violate(b, ProtocolVersion::V3_1_1, bytes).await;
    assert!(got.is_empty(), "expected a silent close, got {got:?}");
}

// ----- before CONNECT --------------------------------------------------------

/// [MQTT-3.1.0-1]: the first packet must be CONNECT.
#[tokio::test]
async fn pingreq_before_connect_is_closed_without_connack() {
    let b = broker().await;
    assert_eq!(exchange(&b, &[0xC0, 0x00]).await, b"");
    assert_serving(&b).await;
}

/// [MQTT-3.1.0-1]: a PUBLISH before CONNECT closes the connection and is
/// not routed.
#[tokio::test]
async fn publish_before_connect_is_closed_and_not_routed() {
    let b = broker().await;
    let mut sub = Raw::connected(b.addr, v5("watcher")).await;
    sub.subscribe(1, "#", QoS::AtMostOnce).await;
    // PUBLISH QoS 0 "a" payload "x".
    assert_eq!(exchange(&b, &[0x30, 0x04, 0, 1, b'a', b'x']).await, b"");
    sub.expect_nothing().await;
    assert_serving(&b).await;
}

/// Not MQTT at all: an HTTP request ('G' = 0x47 reads as PUBACK with
/// reserved flags set, [MQTT-2.1.3-1], and not CONNECT, [MQTT-3.1.0-1]).
#[tokio::test]
async fn http_request_is_closed() {
    let b = broker().await;
    let got = exchange(&b, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(got, b"");
    assert_serving(&b).await;
}

fn connect_timeout_1s() -> Options {
    let mut o = Options::default();
    o.limits.connect_timeout = Duration::from_secs(1);
    o
}

/// A connection that never sends anything is closed after the connect
/// timeout (3.1.1 section 3.1 "should close the Network Connection if it
/// does not receive a CONNECT Packet within a reasonable amount of time").
#[tokio::test]
async fn silent_connection_is_closed_after_connect_timeout() {
    let b = watched_broker(connect_timeout_1s()).await;
    let mut s = TcpStream::connect(b.addr).await.unwrap();
    let start = Instant::now();
    assert_eq!(read_to_close(&mut s).await, b"");
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "closed too early: {took:?}"
    );
    assert!(took < Duration::from_secs(3), "closed too late: {took:?}");
    assert_serving(&b).await;
}

/// Half a CONNECT then silence: the timeout covers the whole packet, not
/// just its first byte.
#[tokio::test]
async fn half_connect_then_silence_is_closed_after_connect_timeout() {
    let b = watched_broker(connect_timeout_1s()).await;
    let full = connect311(CLEAN, ID_C);
    let mut s = TcpStream::connect(b.addr).await.unwrap();
    s.write_all(&full[..6]).await.unwrap();
    let start = Instant::now();
    assert_eq!(read_to_close(&mut s).await, b"");
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "closed too early: {took:?}"
    );
    assert!(took < Duration::from_secs(3), "closed too late: {took:?}");
    assert_serving(&b).await;
}

/// A CONNECT sent a byte at a time, within the timeout, is fine: slow is
/// not malformed ("not enough bytes yet" is not an error).
#[tokio::test]
async fn connect_trickled_byte_by_byte_is_accepted() {
    let b = broker().await;
    let mut s = TcpStream::connect(b.addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    for byte in connect311(CLEAN, ID_C) {
        s.write_all(&[byte]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut ack = [0u8; 4];
    tokio::time::timeout(WAIT, s.read_exact(&mut ack))
        .await
        .expect("CONNACK in time")
        .unwrap();
    assert_eq!(ack, [0x20, 0x02, 0x00, 0x00]);
}

// ----- CONNECT ---------------------------------------------------------------

/// [MQTT-3.1.2-1]: a protocol name other than "MQTT" is not processed; the
/// broker closes without CONNACK.
#[tokio::test]
async fn connect_with_wrong_protocol_name_is_closed() {
    let b = broker().await;
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'X', 4, CLEAN, 0, 60];
    body.extend_from_slice(ID_C);
    assert_eq!(exchange(&b, &frame(0x10, &body)).await, b"");
    assert_serving(&b).await;
}

/// The 3.1 name "MQIsdp" with the 3.1.1 level 4 is an inconsistent CONNECT
/// ([MQTT-3.1.2-1]): closed without CONNACK.
#[tokio::test]
async fn connect_with_mqisdp_name_and_level_4_is_closed() {
    let b = broker().await;
    let mut body = vec![0, 6, b'M', b'Q', b'I', b's', b'd', b'p', 4, CLEAN, 0, 60];
    body.extend_from_slice(ID_C);
    assert_eq!(exchange(&b, &frame(0x10, &body)).await, b"");
}

/// [MQTT-3.1.2-2]: an unsupported protocol level gets CONNACK return code
/// 0x01 (unacceptable protocol level), then the connection is closed.
#[tokio::test]
async fn connect_with_protocol_level_6_gets_return_code_1() {
    let b = broker().await;
    // Level 6 with a 5.0-shaped rest; the level is read before the rest.
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 6, CLEAN, 0, 60, 0];
    body.extend_from_slice(ID_C);
    assert_eq!(
        exchange(&b, &frame(0x10, &body)).await,
        [0x20, 0x02, 0x00, 0x01]
    );
    assert_serving(&b).await;
}

/// [MQTT-3.1.2-2]: level 2 (older than 3.1) gets return code 0x01 too.
#[tokio::test]
async fn connect_with_protocol_level_2_gets_return_code_1() {
    let b = broker().await;
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 2, CLEAN, 0, 60];
    body.extend_from_slice(ID_C);
    assert_eq!(
        exchange(&b, &frame(0x10, &body)).await,
        [0x20, 0x02, 0x00, 0x01]
    );
}

/// 5.0 [MQTT-2.2.2-2] / section 2.2.2.2: an unknown property identifier in
/// CONNECT is a Malformed Packet. The broker closes without CONNACK (5.0
/// section 4.13.1: it MAY send a CONNACK first; it chooses not to).
#[tokio::test]
async fn v5_connect_with_unknown_property_is_closed() {
    let b = broker().await;
    let bytes = connect5(CLEAN, &[0x7F, 0x00], ID_C);
    assert_eq!(exchange(&b, &bytes).await, b"");
    assert_serving(&b).await;
}

/// 5.0 section 3.1.2.11.2: Session Expiry Interval twice is a Protocol Error.
#[tokio::test]
async fn v5_connect_with_duplicate_property_is_closed() {
    let b = broker().await;
    let props = [0x11, 0, 0, 0, 10, 0x11, 0, 0, 0, 20];
    assert_eq!(exchange(&b, &connect5(CLEAN, &props, ID_C)).await, b"");
}

/// 5.0 section 3.1.2.11.3: Receive Maximum 0 is a Protocol Error.
#[tokio::test]
async fn v5_connect_with_receive_maximum_zero_is_closed() {
    let b = broker().await;
    assert_eq!(
        exchange(&b, &connect5(CLEAN, &[0x21, 0, 0], ID_C)).await,
        b""
    );
}

/// A property length running past the end of the packet ([MQTT-2.1.4]).
#[tokio::test]
async fn v5_connect_with_property_length_past_the_end_is_closed() {
    let b = broker().await;
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 5, CLEAN, 0, 60, 50];
    body.extend_from_slice(ID_C);
    assert_eq!(exchange(&b, &frame(0x10, &body)).await, b"");
}

/// [MQTT-3.3.2-2] via [MQTT-3.1.3-?]: a will topic with a wildcard is not a
/// valid topic name; the CONNECT is refused by closing.
#[tokio::test]
async fn v5_connect_with_wildcard_will_topic_is_closed() {
    let b = broker().await;
    // Will flag + Clean Start; payload: id, will props (0), topic "a/#", payload "".
    let payload = [0, 1, b'c', 0, 0, 3, b'a', b'/', b'#', 0, 0];
    assert_eq!(
        exchange(&b, &connect5(0x04 | CLEAN, &[], &payload)).await,
        b""
    );
}

/// [MQTT-3.1.2-3]: the reserved CONNECT flag must be 0, else close.
#[tokio::test]
async fn connect_with_reserved_flag_is_closed() {
    let b = broker().await;
    assert_eq!(exchange(&b, &connect311(CLEAN | 0x01, ID_C)).await, b"");
    assert_eq!(exchange(&b, &connect5(CLEAN | 0x01, &[], ID_C)).await, b"");
    assert_serving(&b).await;
}

/// [MQTT-3.1.2-14]: Will QoS 3 is not allowed.
#[tokio::test]
async fn connect_with_will_qos_3_is_closed() {
    let b = broker().await;
    // Will flag, Will QoS 3 (0x18), Clean Session; id "c", will topic "w", payload "x".
    let payload = [0, 1, b'c', 0, 1, b'w', 0, 1, b'x'];
    assert_eq!(
        exchange(&b, &connect311(0x04 | 0x18 | CLEAN, &payload)).await,
        b""
    );
}

/// [MQTT-3.1.2-13]: Will QoS must be 0 when the Will Flag is 0.
#[tokio::test]
async fn connect_with_will_qos_without_will_flag_is_closed() {
    let b = broker().await;
    assert_eq!(exchange(&b, &connect311(0x08 | CLEAN, ID_C)).await, b"");
}

/// [MQTT-3.1.2-15]: Will Retain must be 0 when the Will Flag is 0.
#[tokio::test]
async fn connect_with_will_retain_without_will_flag_is_closed() {
    let b = broker().await;
    assert_eq!(exchange(&b, &connect311(0x20 | CLEAN, ID_C)).await, b"");
}

/// [MQTT-3.1.2-22] (3.1.1): a password flag without the user name flag is
/// refused by closing.
#[tokio::test]
async fn v311_password_without_username_is_closed() {
    let b = broker().await;
    // Password flag; id "c", password "pw".
    let payload = [0, 1, b'c', 0, 2, b'p', b'w'];
    assert_eq!(exchange(&b, &connect311(0x40 | CLEAN, &payload)).await, b"");
}

/// 5.0 section 3.1.2.9 lifts that rule: a password alone is accepted.
#[tokio::test]
async fn v5_password_without_username_is_accepted() {
    let b = broker().await;
    let payload = [0, 1, b'c', 0, 2, b'p', b'w'];
    let mut s = TcpStream::connect(b.addr).await.unwrap();
    s.write_all(&connect5(0x40 | CLEAN, &[], &payload))
        .await
        .unwrap();
    let mut head = [0u8; 4];
    tokio::time::timeout(WAIT, s.read_exact(&mut head))
        .await
        .expect("CONNACK in time")
        .unwrap();
    // CONNACK, some remaining length, no session present, reason Success.
    assert_eq!([head[0], head[2], head[3]], [0x20, 0x00, 0x00]);
}

/// [MQTT-3.1.0-2]: a second CONNECT is a Protocol Error; 5.0 gets
/// DISCONNECT 0x82 first.
#[tokio::test]
async fn v5_second_connect_gets_disconnect_0x82() {
    let b = broker().await;
    let again = connect5(CLEAN, &[], ID_C);
    expect_v5_disconnect(&b, &again, ReasonCode::ProtocolError).await;
    assert_serving(&b).await;
}

/// [MQTT-3.1.0-2] (3.1.1): a second CONNECT closes the connection.
#[tokio::test]
async fn v311_second_connect_is_closed() {
    let b = broker().await;
    expect_v311_close(&b, &connect311(CLEAN, ID_C)).await;
    assert_serving(&b).await;
}

fn client_id_max_8() -> Options {
    let mut o = Options::default();
    o.limits.maximum_client_id_len = 8;
    o
}

/// 5.0 section 3.2.2.2: a client id the server does not accept gets
/// CONNACK 0x85 (Client Identifier not valid), then close.
#[tokio::test]
async fn v5_client_id_too_long_gets_connack_0x85() {
    let b = watched_broker(client_id_max_8()).await;
    let payload = b"\x00\x09123456789";
    assert_eq!(
        exchange(&b, &connect5(CLEAN, &[], payload)).await,
        // CONNACK, length 3, no session, 0x85, no properties.
        [0x20, 0x03, 0x00, 0x85, 0x00]
    );
    // Exactly at the limit is fine.
    Raw::connected(b.addr, v5("12345678")).await;
    assert_serving(&b).await;
}

/// [MQTT-3.1.3-9] (3.1.1): a rejected client id gets return code 0x02
/// (identifier rejected), then close.
#[tokio::test]
async fn v311_client_id_too_long_gets_return_code_2() {
    let b = watched_broker(client_id_max_8()).await;
    let payload = b"\x00\x09123456789";
    assert_eq!(
        exchange(&b, &connect311(CLEAN, payload)).await,
        [0x20, 0x02, 0x00, 0x02]
    );
    Raw::connected(b.addr, v311("12345678")).await;
    assert_serving(&b).await;
}

// ----- after CONNECT: PUBLISH ------------------------------------------------

/// [MQTT-3.3.1-4]: QoS 3 in PUBLISH is malformed.
#[tokio::test]
async fn publish_qos_3_is_malformed() {
    let b = broker().await;
    // Flags 0b0110: QoS 3; topic "a", packet id 1, no properties.
    let bytes = [0x36, 6, 0, 1, b'a', 0, 1, 0];
    expect_v5_disconnect(&b, &bytes, ReasonCode::MalformedPacket).await;
    expect_v311_close(&b, &[0x36, 5, 0, 1, b'a', 0, 1]).await;
    assert_serving(&b).await;
}

/// [MQTT-3.3.1-2]: DUP must be 0 on QoS 0; the broker treats it as
/// malformed.
#[tokio::test]
async fn publish_dup_on_qos_0_is_malformed() {
    let b = broker().await;
    expect_v5_disconnect(&b, &[0x38, 4, 0, 1, b'a', 0], ReasonCode::MalformedPacket).await;
    expect_v311_close(&b, &[0x38, 3, 0, 1, b'a']).await;
    assert_serving(&b).await;
}

/// [MQTT-3.3.2-2]: no wildcards in a topic name. The broker documents
/// 0x90 Topic Name invalid for it (`DecodeError::WildcardInTopicName`).
#[tokio::test]
async fn publish_topic_with_wildcard_gets_0x90() {
    let b = broker().await;
    let mut sub = Raw::connected(b.addr, v5("watcher")).await;
    sub.subscribe(1, "#", QoS::AtMostOnce).await;
    // Topic "a/#".
    expect_v5_disconnect(
        &b,
        &[0x30, 6, 0, 3, b'a', b'/', b'#', 0],
        ReasonCode::TopicNameInvalid,
    )
    .await;
    // Topic "+".
    expect_v5_disconnect(&b, &[0x30, 4, 0, 1, b'+', 0], ReasonCode::TopicNameInvalid).await;
    expect_v311_close(&b, &[0x30, 5, 0, 3, b'a', b'/', b'+']).await;
    sub.expect_nothing().await;
    assert_serving(&b).await;
}

/// The DISCONNECT for undecodable input names the broken rule in its reason
/// string (a DISCONNECT may carry one regardless of Request Problem
/// Information, [MQTT-3.1.2-29]), unless that would exceed the client's
/// Maximum Packet Size ([MQTT-3.14.2-3]).
#[tokio::test]
async fn malformed_disconnect_names_the_rule_within_the_clients_size_limit() {
    let b = broker().await;
    let got = violate(&b, ProtocolVersion::V5, &[0x30, 4, 0, 1, b'+', 0]).await;
    let [Packet::Disconnect(d)] = &got[..] else {
        panic!("expected one DISCONNECT, got {got:?}")
    };
    let text = d
        .properties
        .reason_string
        .as_ref()
        .expect("a reason string");
    assert!(text.contains("[MQTT-3.3.2-2]"), "{text}");

    let mut c = v5("tiny");
    // Room for our CONNACK (16 bytes) but not for a reason string.
    c.properties.maximum_packet_size = std::num::NonZeroU32::new(20);
    let mut raw = Raw::connected(b.addr, c).await;
    raw.send_bytes(&[0x30, 4, 0, 1, b'+', 0]).await;
    let got = raw.expect_closed().await;
    let [Packet::Disconnect(d)] = &got[..] else {
        panic!("expected one DISCONNECT, got {got:?}")
    };
    assert_eq!(d.reason, ReasonCode::TopicNameInvalid);
    assert_eq!(d.properties.reason_string, None);
    assert_serving(&b).await;
}

/// [MQTT-2.2.1-3]: a QoS > 0 PUBLISH needs a non-zero packet identifier.
#[tokio::test]
async fn publish_packet_id_0_is_malformed() {
    let b = broker().await;
    expect_v5_disconnect(
        &b,
        &[0x32, 6, 0, 1, b'a', 0, 0, 0],
        ReasonCode::MalformedPacket,
    )
    .await;
    expect_v311_close(&b, &[0x34, 5, 0, 1, b'a', 0, 0]).await;
    assert_serving(&b).await;
}

/// [MQTT-1.5.4-1]: ill-formed UTF-8 in a topic is a Malformed Packet.
#[tokio::test]
async fn publish_topic_with_invalid_utf8_is_malformed() {
    let b = broker().await;
    // 0xC3 0x28: a two-byte lead followed by a non-continuation byte.
    expect_v5_disconnect(
        &b,
        &[0x30, 5, 0, 2, 0xC3, 0x28, 0],
        ReasonCode::MalformedPacket,
    )
    .await;
    // An encoded surrogate (U+D800) is not allowed either.
    expect_v5_disconnect(
        &b,
        &[0x30, 6, 0, 3, 0xED, 0xA0, 0x80, 0],
        ReasonCode::MalformedPacket,
    )
    .await;
    expect_v311_close(&b, &[0x30, 4, 0, 2, 0xC3, 0x28]).await;
    assert_serving(&b).await;
}

/// [MQTT-1.5.4-2]: U+0000 in a string is a Malformed Packet.
#[tokio::test]
async fn publish_topic_with_nul_is_malformed() {
    let b = broker().await;
    expect_v5_disconnect(
        &b,
        &[0x30, 6, 0, 3, b'a', 0, b'b', 0],
        ReasonCode::MalformedPacket,
    )
    .await;
    expect_v311_close(&b, &[0x30, 5, 0, 3, b'a', 0, b'b']).await;
    assert_serving(&b).await;
}

// ----- after CONNECT: SUBSCRIBE ----------------------------------------------

/// [MQTT-3.8.1-1] / [MQTT-2.1.3-1]: SUBSCRIBE's fixed header flags must be
/// 0b0010; 0x80 is malformed.
#[tokio::test]
async fn subscribe_with_reserved_flags_0_is_malformed() {
    let b = broker().await;
    // Packet id 1, no properties, filter "a", options 0.
    expect_v5_disconnect(
        &b,
        &[0x80, 7, 0, 1, 0, 0, 1, b'a', 0],
        ReasonCode::MalformedPacket,
    )
    .await;
    expect_v311_close(&b, &[0x80, 6, 0, 1, 0, 1, b'a', 0]).await;
    assert_serving(&b).await;
}

/// 5.0 [MQTT-3.8.3-2]: "A SUBSCRIBE packet with no Payload is a Protocol
/// Error" (0x82); 3.1.1 [MQTT-3.8.3-3]: close.
#[tokio::test]
async fn subscribe_without_filters_is_a_protocol_error() {
    let b = broker().await;
    expect_v5_disconnect(&b, &[0x82, 3, 0, 1, 0], ReasonCode::ProtocolError).await;
    expect_v311_close(&b, &[0x82, 2, 0, 1]).await;
    assert_serving(&b).await;
}

/// 5.0 [MQTT-3.10.3-2]: "An UNSUBSCRIBE packet with no Payload is a
/// Protocol Error" (0x82).
#[tokio::test]
async fn unsubscribe_without_filters_is_a_protocol_error() {
    let b = broker().await;
    expect_v5_disconnect(&b, &[0xA2, 3, 0, 1, 0], ReasonCode::ProtocolError).await;
    expect_v311_close(&b, &[0xA2, 2, 0, 1]).await;
}

/// 5.0 [MQTT-3.8.3-5]: reserved bits 6-7 of the subscription options must
/// be 0, else malformed; 3.1.1 [MQTT-3-8.3-4]: bits 2-7.
#[tokio::test]
async fn subscription_options_reserved_bits_are_malformed() {
    let b = broker().await;
    expect_v5_disconnect(
        &b,
        &[0x82, 7, 0, 1, 0, 0, 1, b'a', 0xC0],
        ReasonCode::MalformedPacket,
    )
    .await;
    // No Local (0x04) is a reserved bit in 3.1.1.
    expect_v311_close(&b, &[0x82, 6, 0, 1, 0, 1, b'a', 0x04]).await;
    assert_serving(&b).await;
}

/// 5.0 section 3.8.3.1: "It is a Protocol Error to send a Retain Handling
/// value of 3" (0x82).
#[tokio::test]
async fn subscription_retain_handling_3_is_a_protocol_error() {
    let b = broker().await;
    expect_v5_disconnect(
        &b,
        &[0x82, 7, 0, 1, 0, 0, 1, b'a', 0x30],
        ReasonCode::ProtocolError,
    )
    .await;
    assert_serving(&b).await;
}

/// 5.0 section 3.8.3.1: "It is a Protocol Error if the Maximum QoS field
/// has the value 3"; 3.1.1 [MQTT-3-8.3-4]: malformed, close.
#[tokio::test]
async fn subscription_qos_3_is_a_protocol_error() {
    let b = broker().await;
    expect_v5_disconnect(
        &b,
        &[0x82, 7, 0, 1, 0, 0, 1, b'a', 0x03],
        ReasonCode::ProtocolError,
    )
    .await;
    expect_v311_close(&b, &[0x82, 6, 0, 1, 0, 1, b'a', 0x03]).await;
}

/// [MQTT-4.7.1-1]: "a/#/b" is not a valid filter; the broker treats it as
/// malformed.
#[tokio::test]
async fn subscribe_with_misplaced_wildcard_is_malformed() {
    let b = broker().await;
    expect_v5_disconnect(
        &b,
        &[0x82, 11, 0, 1, 0, 0, 5, b'a', b'/', b'#', b'/', b'b', 0],
        ReasonCode::MalformedPacket,
    )
    .await;
    assert_serving(&b).await;
}

// ----- after CONNECT: framing ------------------------------------------------

/// [MQTT-1.5.5-1]: a variable byte integer has at most 4 bytes; a fifth
/// continuation byte is malformed.
#[tokio::test]
async fn remaining_length_with_five_bytes_is_malformed() {
    let b = broker().await;
    let bytes = [0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01];
    expect_v5_disconnect(&b, &bytes, ReasonCode::MalformedPacket).await;
    expect_v311_close(&b, &bytes).await;
    assert_serving(&b).await;
}

/// [MQTT-2.1.4] (remaining length = bytes that follow): a remaining length
/// shorter than the fields it must hold is malformed.
#[tokio::test]
async fn remaining_length_shorter_than_contents_is_malformed() {
    let b = broker().await;
    // Remaining length 3, but the topic length says 5 bytes follow.
    let bytes = [0x30, 3, 0, 5, b'a', b'b', b'c', b'd', b'e', 0];
    expect_v5_disconnect(&b, &bytes, ReasonCode::MalformedPacket).await;
    expect_v311_close(&b, &bytes).await;
}

/// [MQTT-2.1.4]: a remaining length longer than the packet's contents
/// (PINGREQ has none) is malformed.
#[tokio::test]
async fn remaining_length_longer_than_contents_is_malformed() {
    let b = broker().await;
    expect_v5_disconnect(&b, &[0xC0, 1, 0], ReasonCode::MalformedPacket).await;
    expect_v311_close(&b, &[0xC0, 1, 0]).await;
    assert_serving(&b).await;
}

/// 5.0 section 3.8.2.1.2: "It is a Protocol Error if the Subscription
/// Identifier has a value of 0".
#[tokio::test]
async fn subscription_identifier_0_is_a_protocol_error() {
    let b = broker().await;
    // Packet id 1, properties: Subscription Identifier (0x0B) = 0; "a", QoS 0.
    expect_v5_disconnect(
        &b,
        &[0x82, 9, 0, 1, 2, 0x0B, 0, 0, 1, b'a', 0],
        ReasonCode::ProtocolError,
    )
    .await;
    assert_serving(&b).await;
}

/// [MQTT-3.3.2-8]: a Topic Alias of 0 is not permitted; 0x94 Topic Alias
/// invalid.
#[tokio::test]
async fn topic_alias_0_gets_0x94() {
    let b = broker().await;
    // PUBLISH "a", properties: Topic Alias (0x23) = 0.
    expect_v5_disconnect(
        &b,
        &[0x30, 7, 0, 1, b'a', 3, 0x23, 0, 0],
        ReasonCode::TopicAliasInvalid,
    )
    .await;
    assert_serving(&b).await;
}

/// Section 2.2.2.2: an unknown property identifier is malformed.
#[tokio::test]
async fn unknown_property_is_malformed() {
    let b = broker().await;
    // PUBLISH "a", properties: 0x7F (no such property) with one byte.
    expect_v5_disconnect(
        &b,
        &[0x30, 6, 0, 1, b'a', 2, 0x7F, 0],
        ReasonCode::MalformedPacket,
    )
    .await;
    assert_serving(&b).await;
}

/// Section 2.2.2.2: a property not valid for the packet (Session Expiry
/// Interval in PUBLISH) is malformed.
#[tokio::test]
async fn property_not_allowed_in_packet_is_malformed() {
    let b = broker().await;
    expect_v5_disconnect(
        &b,
        &[0x30, 9, 0, 1, b'a', 5, 0x11, 0, 0, 0, 1],
        ReasonCode::MalformedPacket,
    )
    .await;
}

/// Section 3.3.2.3.2: "It is a Protocol Error to include the Payload
/// Format Indicator more than once".
#[tokio::test]
async fn duplicate_property_is_a_protocol_error() {
    let b = broker().await;
    expect_v5_disconnect(
        &b,
        &[0x30, 8, 0, 1, b'a', 4, 0x01, 0, 0x01, 0],
        ReasonCode::ProtocolError,
    )
    .await;
    assert_serving(&b).await;
}

fn max_packet_1k() -> Options {
    let mut o = Options::default();
    o.limits.maximum_packet_size = 1024;
    o
}

/// 5.0 section 3.1.2.11.4 / [MQTT-3.2.2-15]: a packet over the Maximum
/// Packet Size gets DISCONNECT 0x95, decided from the fixed header alone:
/// only a header announcing 10 MB is sent, never the body.
#[tokio::test]
async fn oversized_packet_is_refused_from_the_fixed_header() {
    let b = watched_broker(max_packet_1k()).await;
    // Remaining length 0x80 0x80 0x80 0x05 = 5 * 128^3 = 10,485,760.
    let header = [0x30, 0x80, 0x80, 0x80, 0x05];
    expect_v5_disconnect(&b, &header, ReasonCode::PacketTooLarge).await;
    expect_v311_close(&b, &header).await;
    // Just over the limit: 1,024 + 1 bytes in all.
    let mut just_over = vec![0x30, 0xFE, 0x07, 0, 1, b'a', 0];
    just_over.resize(1025, b'x');
    expect_v5_disconnect(&b, &just_over, ReasonCode::PacketTooLarge).await;
    assert_serving(&b).await;
}

/// A packet exactly at the maximum packet size is accepted.
#[tokio::test]
async fn packet_at_the_size_limit_is_accepted() {
    let b = watched_broker(max_packet_1k()).await;
    let mut sub = Raw::connected(b.addr, v5("sub")).await;
    sub.subscribe(1, "a", QoS::AtMostOnce).await;
    let mut c = Raw::connected(b.addr, v5("pub")).await;
    // 1 + 2 (remaining length 1,021) + 2 + 1 (topic) + 1 (properties) + 1,017.
    let mut bytes = vec![0x30, 0xFD, 0x07, 0, 1, b'a', 0];
    bytes.resize(1024, b'x');
    c.send_bytes(&bytes).await;
    let p = sub.recv_publish().await;
    assert_eq!(p.payload.len(), 1017);
}

/// [MQTT-3.6.1-1] / [MQTT-2.1.3-1]: PUBREL's flags must be 0b0010.
#[tokio::test]
async fn pubrel_with_wrong_flags_is_malformed() {
    let b = broker().await;
    expect_v5_disconnect(&b, &[0x60, 2, 0, 1], ReasonCode::MalformedPacket).await;
    expect_v311_close(&b, &[0x60, 2, 0, 1]).await;
    assert_serving(&b).await;
}

/// Table 2.1: packet type 0 is reserved.
#[tokio::test]
async fn packet_type_0_is_malformed() {
    let b = broker().await;
    expect_v5_disconnect(&b, &[0x00, 0], ReasonCode::MalformedPacket).await;
    expect_v311_close(&b, &[0x00, 0]).await;
    assert_serving(&b).await;
}

/// 3.1.1 table 2.1: type 15 is reserved (AUTH exists only in 5.0).
#[tokio::test]
async fn v311_auth_is_closed() {
    let b = broker().await;
    expect_v311_close(&b, &[0xF0, 0]).await;
    assert_serving(&b).await;
}

/// 5.0 [MQTT-4.12.0-6]: AUTH without an authentication method in CONNECT
/// is a Protocol Error.
#[tokio::test]
async fn v5_auth_without_auth_method_is_a_protocol_error() {
    let b = broker().await;
    expect_v5_disconnect(&b, &[0xF0, 0], ReasonCode::ProtocolError).await;
}

/// A CONNACK from a client (a server-to-client packet) is a Protocol Error.
#[tokio::test]
async fn connack_from_client_is_a_protocol_error() {
    let b = broker().await;
    expect_v5_disconnect(&b, &[0x20, 3, 0, 0, 0], ReasonCode::ProtocolError).await;
    expect_v311_close(&b, &[0x20, 2, 0, 0]).await;
    assert_serving(&b).await;
}

/// A SUBACK from a client is a Protocol Error.
#[tokio::test]
async fn suback_from_client_is_a_protocol_error() {
    let b = broker().await;
    // Packet id 1, no properties, Granted QoS 0.
    expect_v5_disconnect(&b, &[0x90, 4, 0, 1, 0, 0], ReasonCode::ProtocolError).await;
    expect_v311_close(&b, &[0x90, 3, 0, 1, 0]).await;
    assert_serving(&b).await;
}

/// A PINGRESP from a client is a Protocol Error.
#[tokio::test]
async fn pingresp_from_client_is_a_protocol_error() {
    let b = broker().await;
    expect_v5_disconnect(&b, &[0xD0, 0], ReasonCode::ProtocolError).await;
    expect_v311_close(&b, &[0xD0, 0]).await;
}

/// [MQTT-4.13.1-1] / [MQTT-3.1.2-8]: a connection closed for a protocol
/// error publishes its will.
#[tokio::test]
async fn will_is_published_after_a_protocol_error() {
    let b = broker().await;
    let mut sub = Raw::connected(b.addr, v5("sub")).await;
    sub.subscribe(1, "wills/#", QoS::AtMostOnce).await;
    let mut c = v5("dies");
    c.will = Some(will("wills/dies", "gone", QoS::AtMostOnce, false));
    let mut dies = Raw::connected(b.addr, c).await;
    dies.send_bytes(&[0x00, 0]).await;
    let got = dies.expect_closed().await;
    assert!(
        matches!(&got[..], [Packet::Disconnect(d)] if d.reason == ReasonCode::MalformedPacket),
        "{got:?}"
    );
    let p = sub.recv_publish().await;
    assert_eq!(p.topic, "wills/dies");
    assert_eq!(payload(&p), "gone");
}

/// [MQTT-3.2.0-1]: the first packet from the server is CONNACK, even when
/// a bad packet arrives in the same segment as the CONNECT.
#[tokio::test]
async fn connack_comes_before_disconnect_when_pipelined() {
    let b = broker().await;
    let mut bytes = connect5(CLEAN, &[], ID_C);
    bytes.extend_from_slice(&[0x00, 0x00]); // Packet type 0.
    let got = exchange(&b, &bytes).await;
    let packets = decode_all(ProtocolVersion::V5, &got);
    assert!(
        matches!(
            &packets[..],
            [Packet::ConnAck(a), Packet::Disconnect(d)]
                if a.reason == ReasonCode::Success && d.reason == ReasonCode::MalformedPacket
        ),
        "{packets:?}"
    );
    assert_serving(&b).await;
}

/// [MQTT-3.2.0-1]: a PINGREQ pipelined behind CONNECT is answered after
/// the CONNACK.
#[tokio::test]
async fn connack_comes_before_pingresp_when_pipelined() {
    let b = broker().await;
    let mut bytes = connect311(CLEAN, ID_C);
    bytes.extend_from_slice(&[0xC0, 0x00, 0xE0, 0x00]); // PINGREQ, DISCONNECT.
    let got = exchange(&b, &bytes).await;
    assert_eq!(got, [0x20, 2, 0, 0, 0xD0, 0]);
}

// ----- robustness ------------------------------------------------------------

/// xorshift64*: a tiny deterministic generator, so a failure replays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// Sends `bytes` on a new connection and reads what comes back for up to
/// `dur` (or until close). Returns (bytes received, closed by the broker).
async fn poke(addr: std::net::SocketAddr, bytes: &[u8], dur: Duration) -> (Vec<u8>, bool) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    // The broker may close before everything is written.
    let _ = s.write_all(bytes).await;
    let deadline = tokio::time::Instant::now() + dur;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (got, true),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => return (got, false),
        }
    }
}

/// Everything the broker sent decodes as valid packets of `version`.
fn decode_all(version: ProtocolVersion, bytes: &[u8]) -> Vec<Packet> {
    let mut buf = bytes::BytesMut::from(bytes);
    let mut d = Decoder::with_version(u32::MAX, version);
    let mut out = Vec::new();
    while let Some(p) = d
        .decode(&mut buf)
        .unwrap_or_else(|e| panic!("broker sent an invalid packet ({e}): {bytes:02x?}"))
    {
        out.push(p);
    }
    assert!(buf.is_empty(), "broker sent a partial packet: {bytes:02x?}");
    out
}

/// 200 connections of pure garbage (random length and bytes, some starting
/// like a CONNECT); afterwards a normal client still works.
#[tokio::test]
async fn two_hundred_garbage_connections_leave_the_broker_serving() {
    let b = watched_broker(connect_timeout_1s()).await;
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200 {
        let len = 1 + rng.below(300);
        let mut bytes = rng.bytes(len);
        if i % 4 == 0 {
            bytes[0] = 0x10; // Looks like a CONNECT at first.
        }
        let addr = b.addr;
        tasks.spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            let _ = s.write_all(&bytes).await;
            let mut got = Vec::new();
            // Every one of them ends within the connect timeout.
            let r = tokio::time::timeout(WAIT, s.read_to_end(&mut got)).await;
            assert!(r.is_ok(), "garbage connection left open: {bytes:02x?}");
            (bytes, got)
        });
    }
    while let Some(r) = tasks.join_next().await {
        let (sent, got) = r.unwrap();
        // Garbage never gets a CONNACK 0x00; at most a refusal of the level.
        assert!(
            got.is_empty() || got == [0x20, 2, 0, 1] || got == [0x20, 3, 0, 0x84, 0],
            "sent {sent:02x?}, got {got:02x?}"
        );
    }
    assert_serving(&b).await;
    b.stop().await;
}

/// Fuzz-ish: 300 connections each send a valid CONNECT and then random
/// bytes (pure noise, or valid packets with a few bits flipped), in the
/// same write. The broker answers only with valid packets, CONNACK first
/// ([MQTT-3.2.0-1]), closes or keeps each connection, never panics, and
/// serves a normal client afterwards; `stop()` unwraps the serve result.
#[tokio::test]
async fn connect_then_random_bytes_never_breaks_the_broker() {
    let b = broker().await;
    let mut rng = Rng(0x0DDB_1A5E_5BAD_5EED);
    // Valid 5.0 packets to mutate: PUBLISH QoS 1 with a Payload Format
    // Indicator, SUBSCRIBE "f/+", UNSUBSCRIBE "f/#", PUBREL with a reason
    // code, PINGREQ, DISCONNECT with will.
    let seeds: [&[u8]; 6] = [
        &[
            0x32, 12, 0, 3, b'f', b'/', b'z', 0, 7, 2, 0x01, 1, b'h', b'i',
        ],
        &[0x82, 9, 0, 2, 0, 0, 3, b'f', b'/', b'+', 0x2D],
        &[0xA2, 8, 0, 3, 0, 0, 3, b'f', b'/', b'#'],
        &[0x62, 4, 0, 7, 0x92, 0],
        &[0xC0, 0],
        &[0xE0, 2, 0x04, 0],
    ];
    let mut cases = Vec::new();
    for i in 0..300 {
        let v5 = i % 2 == 0;
        let id = format!("\x00\x04f{i:03}");
        let mut bytes = if v5 {
            connect5(CLEAN, &[], id.as_bytes())
        } else {
            connect311(CLEAN, id.as_bytes())
        };
        for _ in 0..=rng.below(4) {
            if rng.below(2) == 0 {
                let len = 1 + rng.below(64);
                bytes.extend(rng.bytes(len));
            } else {
                let mut p = seeds[rng.below(seeds.len())].to_vec();
                for _ in 0..=rng.below(3) {
                    let at = rng.below(p.len());
                    p[at] ^= 1 << rng.below(8);
                }
                bytes.extend(p);
            }
        }
        let version = if v5 {
            ProtocolVersion::V5
        } else {
            ProtocolVersion::V3_1_1
        };
        cases.push((version, bytes));
    }
    let (mut closed, mut kept) = (0, 0);
    for chunk in cases.chunks(50) {
        let mut tasks = tokio::task::JoinSet::new();
        for (version, bytes) in chunk.iter().cloned() {
            let addr = b.addr;
            tasks.spawn(async move {
                let (got, was_closed) = poke(addr, &bytes, Duration::from_millis(300)).await;
                (version, bytes, got, was_closed)
            });
        }
        while let Some(r) = tasks.join_next().await {
            let (version, bytes, got, was_closed) = r.unwrap();
            let packets = decode_all(version, &got);
            assert!(
                matches!(packets.first(), Some(Packet::ConnAck(a)) if a.reason == ReasonCode::Success),
                "sent {bytes:02x?}, got {packets:?}"
            );
            if let Some(Packet::Disconnect(d)) = packets.last() {
                assert!(!d.reason.is_success(), "{d:?}");
            }
            if was_closed {
                closed += 1;
            } else {
                kept += 1;
            }
        }
    }
    assert_eq!(closed + kept, 300);
    assert!(closed > 0, "no input was ever refused?");
    assert_serving(&b).await;
    b.stop().await;
}

// ----- 5.0 rules on what a client may send -------------------------------------

/// [MQTT-3.3.4-6]: a PUBLISH from a client MUST NOT carry a Subscription
/// Identifier (only the server sets one, on delivery). Protocol Error 0x82,
/// and the message goes nowhere.
#[tokio::test]
async fn publish_with_subscription_identifier_from_client_is_a_protocol_error() {
    let b = broker().await;
    let mut sub = Raw::connected(b.addr, v5("watcher")).await;
    sub.subscribe(1, "#", QoS::AtMostOnce).await;
    // PUBLISH "t", properties: Subscription Identifier (0x0B) = 1.
    expect_v5_disconnect(
        &b,
        &[0x30, 6, 0, 1, b't', 2, 0x0B, 1],
        ReasonCode::ProtocolError,
    )
    .await;
    sub.expect_nothing().await;
    assert_serving(&b).await;
}

/// [MQTT-3.3.2-14]: a Response Topic MUST NOT contain wildcards. Protocol
/// Error 0x82 for a PUBLISH; a will carrying one refuses the CONNECT.
#[tokio::test]
async fn response_topic_with_wildcard_is_a_protocol_error() {
    let b = broker().await;
    let mut sub = Raw::connected(b.addr, v5("watcher")).await;
    sub.subscribe(1, "#", QoS::AtMostOnce).await;
    // PUBLISH "t", properties: Response Topic (0x08) "a/+".
    expect_v5_disconnect(
        &b,
        &[0x30, 10, 0, 1, b't', 6, 0x08, 0, 3, b'a', b'/', b'+'],
        ReasonCode::ProtocolError,
    )
    .await;
    // Will flag + Clean Start; payload: id, will properties (Response Topic
    // "#"), will topic "w", empty will payload.
    let payload = [0, 1, b'c', 4, 0x08, 0, 1, b'#', 0, 1, b'w', 0, 0];
    assert_eq!(
        exchange(&b, &connect5(0x04 | CLEAN, &[], &payload)).await,
        b""
    );
    sub.expect_nothing().await;
    assert_serving(&b).await;
}

/// 5.0 section 3.1.2.11.10: Authentication Data without an Authentication
/// Method is a Protocol Error; the CONNECT is refused by closing.
#[tokio::test]
async fn v5_connect_with_authentication_data_without_method_is_closed() {
    let b = broker().await;
    // Properties: Authentication Data (0x16) = [0xAA].
    let bytes = connect5(CLEAN, &[0x16, 0, 1, 0xAA], ID_C);
    assert_eq!(exchange(&b, &bytes).await, b"");
    assert_serving(&b).await;
}

/// 5.0 section 3.3.2.3.4: "It is a Protocol Error if the Topic Name has zero
/// length and there is no Topic Alias": 0x82, not 0x90 Topic Name invalid.
/// In 3.1.1 an empty topic name is malformed ([MQTT-4.7.3-1]): closed.
#[tokio::test]
async fn publish_with_empty_topic_and_no_alias_is_a_protocol_error() {
    let b = broker().await;
    expect_v5_disconnect(&b, &[0x30, 3, 0, 0, 0], ReasonCode::ProtocolError).await;
    expect_v311_close(&b, &[0x30, 2, 0, 0]).await;
    assert_serving(&b).await;
}
