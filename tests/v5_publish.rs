//! MQTT 5.0 publishing over real TCP: message expiry, flow control, topic
//! aliases, maximum packet size, forwarded properties and PUBACK reason
//! codes (the Paho MQTT 5.0 interoperability scenarios).

mod common;
use bytes::Bytes;
use common::*;
use roost::codec::{Packet, PubResp, Publish, QoS, ReasonCode};
use roost::Options;
use std::num::{NonZeroU16, NonZeroU32};

fn expiring(topic: &str, body: &str, qos: QoS, pid: u16, secs: u32) -> Publish {
    let mut p = publish(topic, body, qos, pid);
    p.properties.message_expiry_interval = Some(secs);
    p
}

fn aliased(topic: &str, body: &str, alias: u16) -> Publish {
    let mut p = publish(topic, body, QoS::AtMostOnce, 0);
    p.properties.topic_alias = NonZeroU16::new(alias);
    p
}

// ----- message expiry ----------------------------------------------------
// What takes time (expiry while queued, retained, behind receive maximum)
// runs in virtual time against the core: src/broker/tests/expiry.rs.

#[tokio::test]
async fn remaining_expiry_interval_is_forwarded() {
    let b = TestBroker::start().await;
    let mut s = Raw::connected(b.addr, v5("s")).await;
    s.subscribe(1, "me/t", QoS::AtLeastOnce).await;
    let mut p = Raw::connected(b.addr, v5("pub")).await;
    p.publish(expiring("me/t", "x", QoS::AtLeastOnce, 1, 10))
        .await;
    let m = s.recv_publish().await;
    let left = m.properties.message_expiry_interval.expect("expiry sent");
    assert!((9..=10).contains(&left), "received with {left}");
    s.ack(&m).await;
    // A message without expiry carries none.
    p.publish(publish("me/t", "y", QoS::AtLeastOnce, 2)).await;
    assert_eq!(
        s.recv_publish().await.properties.message_expiry_interval,
        None
    );
}

// ----- flow control ------------------------------------------------------

#[tokio::test]
async fn client_receive_maximum_limits_unacked_publishes() {
    let b = TestBroker::start().await;
    let mut c = v5("s");
    c.properties.receive_maximum = NonZeroU16::new(2);
    let mut s = Raw::connected(b.addr, c).await;
    s.subscribe(1, "fc", QoS::AtLeastOnce).await;
    let mut p = Raw::connected(b.addr, v5("pub")).await;
    for i in 0..5 {
        p.publish(publish("fc", &format!("m{i}"), QoS::AtLeastOnce, 1 + i))
            .await;
    }
    let a = s.recv_publish().await;
    let b2 = s.recv_publish().await;
    assert_eq!((payload(&a), payload(&b2)), ("m0", "m1"));
    s.expect_nothing().await; // [MQTT-3.3.4-9]: no more than 2 in flight
    s.ack(&a).await;
    let c3 = s.recv_publish().await;
    assert_eq!(payload(&c3), "m2");
    s.expect_nothing().await;
    s.ack(&b2).await;
    s.ack(&c3).await;
    let d = s.recv_publish().await;
    let e = s.recv_publish().await;
    assert_eq!((payload(&d), payload(&e)), ("m3", "m4"));
    s.ack(&d).await;
    s.ack(&e).await;
    s.expect_nothing().await;
}

#[tokio::test]
async fn client_receive_maximum_counts_qos2_until_pubcomp() {
    let b = TestBroker::start().await;
    let mut c = v5("s");
    c.properties.receive_maximum = NonZeroU16::new(1);
    let mut s = Raw::connected(b.addr, c).await;
    s.subscribe(1, "fc", QoS::ExactlyOnce).await;
    let mut p = Raw::connected(b.addr, v5("pub")).await;
    p.publish(publish("fc", "a", QoS::ExactlyOnce, 1)).await;
    p.publish(publish("fc", "b", QoS::ExactlyOnce, 2)).await;
    let a = s.recv_publish().await;
    let pid = a.qos_pid.packet_id().unwrap();
    s.send(Packet::PubRec(PubResp::new(pid))).await;
    assert!(matches!(s.recv().await, Packet::PubRel(_)));
    // PUBREC alone does not free the slot; PUBCOMP does.
    s.expect_nothing().await;
    s.send(Packet::PubComp(PubResp::new(pid))).await;
    assert_eq!(payload(&s.recv_publish().await), "b");
}

#[tokio::test]
async fn exceeding_server_receive_maximum_is_disconnected_0x93() {
    let mut opts = Options::default();
    opts.limits.receive_maximum = 2;
    let b = TestBroker::with(opts).await;
    let (mut c, ack) = Raw::connect(b.addr, v5("c")).await;
    assert_eq!(ack.properties.receive_maximum.map(|r| r.get()), Some(2));
    for pid in 1..=3 {
        c.send(Packet::Publish(publish("rm", "x", QoS::ExactlyOnce, pid)))
            .await;
    }
    let got = c.expect_closed().await;
    let recs = got
        .iter()
        .filter(|p| matches!(p, Packet::PubRec(_)))
        .count();
    assert_eq!(recs, 2, "{got:?}");
    match got.last() {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason, ReasonCode::ReceiveMaximumExceeded),
        _ => panic!("expected DISCONNECT 0x93, got {got:?}"),
    }
}

/// A client that keeps writing after the broker disconnected it (PUBRELs
/// for the PUBRECs it got, as the Paho flow-control test does) still reads
/// the DISCONNECT: the broker lingers instead of resetting the connection.
#[tokio::test]
async fn a_client_writing_after_its_disconnect_still_reads_the_reason() {
    let mut opts = Options::default();
    opts.limits.receive_maximum = 2;
    let b = TestBroker::with(opts).await;
    let mut c = Raw::connected(b.addr, v5("c")).await;
    for pid in 1..=3 {
        c.send(Packet::Publish(publish("rm", "x", QoS::ExactlyOnce, pid)))
            .await;
    }
    let mut got = Vec::new();
    while let Some(p) = c.recv_within(WAIT).await {
        if let Packet::PubRec(r) = &p {
            // Written after the broker may already have sent its DISCONNECT.
            for _ in 0..50 {
                assert!(c.try_send(Packet::PubRel(PubResp::new(r.packet_id))).await);
            }
        }
        let done = matches!(p, Packet::Disconnect(_));
        got.push(p);
        if done {
            break;
        }
    }
    match got.last() {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason, ReasonCode::ReceiveMaximumExceeded),
        _ => panic!("expected DISCONNECT 0x93, got {got:?}"),
    }
}

#[tokio::test]
async fn server_receive_maximum_frees_after_pubrel() {
    let mut opts = Options::default();
    opts.limits.receive_maximum = 2;
    let b = TestBroker::with(opts).await;
    let mut c = Raw::connected(b.addr, v5("c")).await;
    // Completed QoS 2 flows do not count: many in a row are fine.
    for pid in 1..=5 {
        let r = c.publish(publish("rm", "x", QoS::ExactlyOnce, pid)).await;
        assert!(r.is_success());
    }
    c.send(Packet::PingReq).await;
    assert_eq!(c.recv().await, Packet::PingResp);
}

// ----- topic aliases -----------------------------------------------------

#[tokio::test]
async fn client_topic_alias_set_then_used() {
    let b = TestBroker::start().await;
    let mut s = Raw::connected(b.addr, v5("s")).await;
    s.subscribe(1, "ta/+", QoS::AtMostOnce).await;
    let mut p = Raw::connected(b.addr, v5("pub")).await;
    p.publish(aliased("ta/one", "1", 1)).await;
    p.publish(aliased("", "2", 1)).await;
    // Re-pointing an alias at another topic is allowed (3.3.2.3.4).
    p.publish(aliased("ta/two", "3", 1)).await;
    p.publish(aliased("", "4", 1)).await;
    for (topic, body) in [
        ("ta/one", "1"),
        ("ta/one", "2"),
        ("ta/two", "3"),
        ("ta/two", "4"),
    ] {
        let m = s.recv_publish().await;
        assert_eq!((m.topic.as_str(), payload(&m)), (topic, body));
        assert_eq!(m.properties.topic_alias, None, "s allowed no aliases");
    }
}

#[tokio::test]
async fn topic_alias_above_maximum_is_disconnected_0x94() {
    let mut opts = Options::default();
    opts.capabilities.topic_alias_maximum = 5;
    let b = TestBroker::with(opts).await;
    let (mut p, ack) = Raw::connect(b.addr, v5("pub")).await;
    assert_eq!(ack.properties.topic_alias_maximum, Some(5));
    p.publish(aliased("t", "ok", 5)).await;
    p.send(Packet::Publish(aliased("t", "bad", 6))).await;
    assert_eq!(
        expect_disconnect(&mut p).await,
        ReasonCode::TopicAliasInvalid
    );
}

#[tokio::test]
async fn topic_alias_when_server_allows_none_is_disconnected_0x94() {
    let mut opts = Options::default();
    opts.capabilities.topic_alias_maximum = 0;
    let b = TestBroker::with(opts).await;
    let (mut p, ack) = Raw::connect(b.addr, v5("pub")).await;
    assert_eq!(ack.properties.topic_alias_maximum, None);
    p.send(Packet::Publish(aliased("t", "bad", 1))).await;
    assert_eq!(
        expect_disconnect(&mut p).await,
        ReasonCode::TopicAliasInvalid
    );
}

#[tokio::test]
async fn unknown_topic_alias_is_protocol_error() {
    let b = TestBroker::start().await;
    let mut p = Raw::connected(b.addr, v5("pub")).await;
    p.send(Packet::Publish(aliased("", "bad", 3))).await;
    assert_eq!(expect_disconnect(&mut p).await, ReasonCode::ProtocolError);
}

#[tokio::test]
async fn server_uses_topic_aliases_only_when_client_allows() {
    let b = TestBroker::start().await;
    let mut c = v5("with");
    c.properties.topic_alias_maximum = Some(10);
    let mut with = Raw::connected(b.addr, c).await;
    with.subscribe(1, "sa/#", QoS::AtMostOnce).await;
    let mut c = v5("without");
    c.properties.topic_alias_maximum = Some(0);
    let mut without = Raw::connected(b.addr, c).await;
    without.subscribe(1, "sa/#", QoS::AtMostOnce).await;

    let mut p = Raw::connected(b.addr, v5("pub")).await;
    for body in ["1", "2", "3"] {
        p.publish(publish("sa/t", body, QoS::AtMostOnce, 0)).await;
    }
    let first = with.recv_publish().await;
    assert_eq!(first.topic, "sa/t");
    let alias = first.properties.topic_alias.expect("alias set up");
    assert!(alias.get() <= 10);
    for body in ["2", "3"] {
        let m = with.recv_publish().await;
        assert_eq!(payload(&m), body);
        assert_eq!(m.topic, "", "the alias stands in for the topic");
        assert_eq!(m.properties.topic_alias, Some(alias));
    }
    for body in ["1", "2", "3"] {
        let m = without.recv_publish().await;
        assert_eq!((m.topic.as_str(), payload(&m)), ("sa/t", body));
        assert_eq!(m.properties.topic_alias, None, "[MQTT-3.3.2-8]");
    }
}

// ----- maximum packet size -----------------------------------------------

#[tokio::test]
async fn message_larger_than_client_maximum_is_not_sent() {
    let b = TestBroker::start().await;
    let mut c = v5("small");
    c.properties.maximum_packet_size = NonZeroU32::new(100);
    let mut s = Raw::connected(b.addr, c).await;
    s.subscribe(1, "mps", QoS::AtLeastOnce).await;
    let mut p = Raw::connected(b.addr, v5("pub")).await;
    let big = "x".repeat(200);
    p.publish(publish("mps", &big, QoS::AtLeastOnce, 1)).await;
    p.publish(publish("mps", &big, QoS::AtMostOnce, 0)).await;
    p.publish(publish("mps", "small", QoS::AtLeastOnce, 2))
        .await;
    // [MQTT-3.1.2-24]: the big one is discarded as if delivered.
    let m = s.recv_publish().await;
    assert_eq!(payload(&m), "small");
    s.ack(&m).await;
    s.expect_nothing().await;
}

#[tokio::test]
async fn packet_larger_than_server_maximum_is_disconnected_0x95() {
    let mut opts = Options::default();
    opts.limits.maximum_packet_size = 1024;
    let b = TestBroker::with(opts).await;
    let (mut p, ack) = Raw::connect(b.addr, v5("pub")).await;
    assert_eq!(
        ack.properties.maximum_packet_size.map(|m| m.get()),
        Some(1024)
    );
    let mut s = Raw::connected(b.addr, v5("s")).await;
    s.subscribe(1, "big", QoS::AtMostOnce).await;
    p.publish(publish("big", &"x".repeat(900), QoS::AtMostOnce, 0))
        .await;
    assert_eq!(s.recv_publish().await.payload.len(), 900);
    p.send(Packet::Publish(publish(
        "big",
        &"x".repeat(2000),
        QoS::AtMostOnce,
        0,
    )))
    .await;
    assert_eq!(expect_disconnect(&mut p).await, ReasonCode::PacketTooLarge);
    s.expect_nothing().await;
}

// ----- forwarded properties ----------------------------------------------

#[tokio::test]
async fn request_response_properties_are_forwarded() {
    let b = TestBroker::start().await;
    let mut responder = Raw::connected(b.addr, v5("responder")).await;
    responder.subscribe(1, "svc/req", QoS::AtLeastOnce).await;
    let mut requester = Raw::connected(b.addr, v5("requester")).await;
    requester
        .subscribe(1, "svc/resp/requester", QoS::AtLeastOnce)
        .await;

    let mut req = publish("svc/req", "ping", QoS::AtLeastOnce, 2);
    req.properties.response_topic = Some("svc/resp/requester".into());
    req.properties.correlation_data = Some(Bytes::from_static(b"\x00\xffid-42"));
    requester.publish(req).await;

    let got = responder.recv_publish().await;
    responder.ack(&got).await;
    let topic = got
        .properties
        .response_topic
        .clone()
        .expect("response topic");
    assert_eq!(topic, "svc/resp/requester");
    let corr = got
        .properties
        .correlation_data
        .clone()
        .expect("correlation");
    assert_eq!(&corr[..], b"\x00\xffid-42");

    let mut resp = publish(topic.as_str(), "pong", QoS::AtLeastOnce, 3);
    resp.properties.correlation_data = Some(corr);
    responder.publish(resp).await;
    let answer = requester.recv_publish().await;
    assert_eq!(payload(&answer), "pong");
    assert_eq!(
        answer.properties.correlation_data.as_deref(),
        Some(&b"\x00\xffid-42"[..])
    );
    assert_eq!(answer.properties.response_topic, None);
}

#[tokio::test]
async fn user_properties_content_type_and_format_are_forwarded() {
    let b = TestBroker::start().await;
    let mut s = Raw::connected(b.addr, v5("s")).await;
    s.subscribe(1, "props", QoS::ExactlyOnce).await;
    let mut p = Raw::connected(b.addr, v5("pub")).await;
    let user = vec![
        ("a".into(), "1".into()),
        ("b".into(), "2".into()),
        ("a".into(), "3".into()),
        ("a".into(), "1".into()),
        ("".into(), "".into()),
    ];
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        let mut m = publish("props", "{\"k\":1}", qos, 7);
        m.properties.user_properties = user.clone();
        m.properties.payload_format_indicator = Some(1);
        m.properties.content_type = Some("application/json".into());
        p.publish(m).await;
        let got = s.recv_publish().await;
        // [MQTT-3.3.2-17], [MQTT-3.3.2-18]: unchanged and in order.
        assert_eq!(got.properties.user_properties, user);
        assert_eq!(got.properties.payload_format_indicator, Some(1));
        assert_eq!(
            got.properties.content_type.as_deref(),
            Some("application/json")
        );
        s.ack(&got).await;
    }
}

#[tokio::test]
async fn payload_format_zero_is_forwarded() {
    let b = TestBroker::start().await;
    let mut s = Raw::connected(b.addr, v5("s")).await;
    s.subscribe(1, "pfi", QoS::AtMostOnce).await;
    let mut p = Raw::connected(b.addr, v5("pub")).await;
    let mut m = publish("pfi", "\u{0}\u{1}", QoS::AtMostOnce, 0);
    m.properties.payload_format_indicator = Some(0);
    p.publish(m).await;
    assert_eq!(
        s.recv_publish().await.properties.payload_format_indicator,
        Some(0)
    );
}

// ----- acknowledgement reason codes --------------------------------------

#[tokio::test]
async fn puback_no_matching_subscribers_0x10() {
    let b = TestBroker::start().await;
    let mut p = Raw::connected(b.addr, v5("pub")).await;
    assert_eq!(
        p.publish(publish("nobody/here", "x", QoS::AtLeastOnce, 1))
            .await,
        ReasonCode::NoMatchingSubscribers
    );
    // QoS 2 too; 0x10 is a success code, so the flow completes
    // ([MQTT-4.3.3-?]: PUBREL follows a PUBREC below 0x80).
    assert_eq!(
        p.publish(publish("nobody/here", "x", QoS::ExactlyOnce, 2))
            .await,
        ReasonCode::NoMatchingSubscribers
    );
    let mut s = Raw::connected(b.addr, v5("s")).await;
    s.subscribe(1, "nobody/+", QoS::AtMostOnce).await;
    assert_eq!(
        p.publish(publish("nobody/here", "x", QoS::AtLeastOnce, 3))
            .await,
        ReasonCode::Success
    );
}

#[tokio::test]
async fn publish_to_sys_is_refused_0x87() {
    let b = TestBroker::start().await;
    let mut s = Raw::connected(b.addr, v5("s")).await;
    s.subscribe(1, "$SYS/x", QoS::AtMostOnce).await;
    let mut p = Raw::connected(b.addr, v5("pub")).await;
    assert_eq!(
        p.publish(publish("$SYS/x", "x", QoS::AtLeastOnce, 1)).await,
        ReasonCode::NotAuthorized
    );
    s.expect_nothing().await;
    // The connection stays usable.
    p.send(Packet::PingReq).await;
    assert_eq!(p.recv().await, Packet::PingResp);
}

// ----- redelivery and duplicates -----------------------------------------

#[tokio::test]
async fn unacknowledged_messages_are_resent_on_reconnect() {
    let b = TestBroker::start().await;
    let mut s = Raw::connected(b.addr, v5_session("s", true, 60)).await;
    s.subscribe(1, "rd/#", QoS::ExactlyOnce).await;
    let mut p = Raw::connected(b.addr, v5("pub")).await;
    p.publish(publish("rd/1", "one", QoS::AtLeastOnce, 1)).await;
    p.publish(publish("rd/2", "two", QoS::ExactlyOnce, 2)).await;
    let one = s.recv_publish().await;
    let two = s.recv_publish().await;
    assert!(!one.dup && !two.dup);
    let two_pid = two.qos_pid.packet_id().unwrap();
    s.send(Packet::PubRec(PubResp::new(two_pid))).await;
    assert_eq!(s.recv().await, Packet::PubRel(PubResp::new(two_pid)));
    s.drop_connection();

    let (mut s, ack) = Raw::connect(b.addr, v5_session("s", false, 60)).await;
    assert!(ack.session_present);
    // [MQTT-4.4.0-1]: PUBLISH again with DUP, PUBREL again, in order.
    let again = s.recv_publish().await;
    assert_eq!(payload(&again), "one");
    assert!(again.dup);
    assert_eq!(again.qos_pid, one.qos_pid);
    assert_eq!(s.recv().await, Packet::PubRel(PubResp::new(two_pid)));
    s.ack(&again).await;
    s.send(Packet::PubComp(PubResp::new(two_pid))).await;
    s.expect_nothing().await;
}

#[tokio::test]
async fn resent_qos2_publish_is_delivered_once() {
    let b = TestBroker::start().await;
    let mut s = Raw::connected(b.addr, v5("s")).await;
    s.subscribe(1, "dup", QoS::AtLeastOnce).await;
    let mut p = Raw::connected(b.addr, v5("pub")).await;
    let m = publish("dup", "x", QoS::ExactlyOnce, 9);
    p.send(Packet::Publish(m.clone())).await;
    assert!(matches!(p.recv().await, Packet::PubRec(r) if r.packet_id.get() == 9));
    p.send(Packet::Publish(m.with_dup(true))).await;
    assert!(matches!(p.recv().await, Packet::PubRec(r) if r.packet_id.get() == 9));
    p.send(Packet::PubRel(PubResp::new(NonZeroU16::new(9).unwrap())))
        .await;
    assert!(matches!(p.recv().await, Packet::PubComp(c) if c.reason == ReasonCode::Success));
    let got = s.recv_publish().await;
    s.ack(&got).await;
    s.expect_nothing().await;
}

#[tokio::test]
async fn topic_aliases_do_not_survive_reconnect() {
    let b = TestBroker::start().await;
    let mut p = Raw::connected(b.addr, v5_session("pub", true, 60)).await;
    p.publish(aliased("al/t", "x", 1)).await;
    p.disconnect().await;
    let (mut p, ack) = Raw::connect(b.addr, v5_session("pub", false, 60)).await;
    assert!(ack.session_present);
    // Aliases belong to one network connection (3.3.2.3.4).
    p.send(Packet::Publish(aliased("", "y", 1))).await;
    assert_eq!(expect_disconnect(&mut p).await, ReasonCode::ProtocolError);
}

#[tokio::test]
async fn server_topic_aliases_stop_at_client_maximum() {
    let b = TestBroker::start().await;
    let mut c = v5("s");
    c.properties.topic_alias_maximum = Some(1);
    let mut s = Raw::connected(b.addr, c).await;
    s.subscribe(1, "sm/#", QoS::AtMostOnce).await;
    let mut p = Raw::connected(b.addr, v5("pub")).await;
    for t in ["sm/a", "sm/b", "sm/a", "sm/b"] {
        p.publish(publish(t, t, QoS::AtMostOnce, 0)).await;
    }
    let mut seen = Vec::new();
    for _ in 0..4 {
        let m = s.recv_publish().await;
        if let Some(a) = m.properties.topic_alias {
            assert_eq!(a.get(), 1, "[MQTT-3.3.2-8]: never above the maximum");
        }
        seen.push((m.topic.to_string(), payload(&m).to_owned()));
    }
    // Whatever the broker chose, every message must be resolvable: a
    // PUBLISH with an empty topic must use the alias of its topic.
    let mut alias_topic: Option<String> = None;
    for (topic, body) in &seen {
        if topic.is_empty() {
            assert_eq!(alias_topic.as_deref(), Some(body.as_str()));
        } else {
            assert_eq!(topic, body);
            if alias_topic.is_none() {
                alias_topic = Some(topic.clone());
            }
        }
    }
}
