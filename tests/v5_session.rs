//! MQTT 5.0 connection and session behaviour over real TCP: CONNACK
//! properties, disabled capabilities, session expiry, takeover, keep-alive,
//! wills and authentication (the Paho MQTT 5.0 interoperability scenarios).

mod common;
use common::*;
use roost::codec::{
    Auth, Connect, Disconnect, DisconnectProperties, Packet, ProtocolVersion, QoS, ReasonCode,
};
use roost::{Capabilities, Options};
use std::num::NonZeroU16;
use std::time::{Duration, Instant};

/// A subscriber to `topic` at QoS 1 (for observing wills).
async fn watcher(b: &TestBroker, topic: &str) -> Raw {
    let mut w = Raw::connected(b.addr, v5("watcher")).await;
    w.subscribe(1, topic, QoS::AtLeastOnce).await;
    w
}

// ----- CONNACK properties ------------------------------------------------

#[tokio::test]
async fn connack_advertises_limits_and_no_disabled_features_by_default() {
    let b = TestBroker::start().await;
    let (_c, ack) = Raw::connect(b.addr, v5("c")).await;
    assert_eq!(ack.reason, ReasonCode::Success);
    assert!(!ack.session_present);
    let p = &ack.properties;
    let limits = roost::Limits::default();
    assert_eq!(
        p.receive_maximum.map(|r| r.get()),
        Some(limits.receive_maximum)
    );
    assert_eq!(
        p.maximum_packet_size.map(|m| m.get()),
        Some(limits.maximum_packet_size)
    );
    assert_eq!(
        p.topic_alias_maximum,
        Some(roost::Capabilities::default().topic_alias_maximum)
    );
    // Everything is available: the properties are absent, which means
    // "available" (3.2.2.3.4 ff.).
    assert_eq!(p.maximum_qos, None);
    assert_eq!(p.retain_available, None);
    assert_eq!(p.wildcard_subscription_available, None);
    assert_eq!(p.subscription_identifiers_available, None);
    assert_eq!(p.shared_subscription_available, None);
    assert_eq!(p.server_keep_alive, None);
    assert_eq!(p.session_expiry_interval, None);
    assert_eq!(p.assigned_client_identifier, None);
}

#[tokio::test]
async fn connack_reflects_configured_limits() {
    let mut opts = Options::default();
    opts.limits.receive_maximum = 7;
    opts.limits.maximum_packet_size = 4096;
    opts.capabilities.topic_alias_maximum = 3;
    let b = TestBroker::with(opts).await;
    let (_c, ack) = Raw::connect(b.addr, v5("c")).await;
    assert_eq!(ack.properties.receive_maximum.map(|r| r.get()), Some(7));
    assert_eq!(
        ack.properties.maximum_packet_size.map(|m| m.get()),
        Some(4096)
    );
    assert_eq!(ack.properties.topic_alias_maximum, Some(3));
}

#[tokio::test]
async fn empty_client_id_gets_assigned_one_that_resumes_the_session() {
    let b = TestBroker::start().await;
    let (mut c, ack) = Raw::connect(b.addr, v5_session("", true, 60)).await;
    assert_eq!(ack.reason, ReasonCode::Success);
    let id = ack
        .properties
        .assigned_client_identifier
        .clone()
        .expect("Assigned Client Identifier for an empty client id");
    assert!(!id.is_empty());
    c.subscribe(1, "assigned/t", QoS::AtLeastOnce).await;
    c.disconnect().await;

    // A message for the offline session, then resume it by the assigned id.
    let mut p = Raw::connected(b.addr, v5("pub")).await;
    assert_eq!(
        p.publish(publish("assigned/t", "hello", QoS::AtLeastOnce, 1))
            .await,
        ReasonCode::Success
    );
    let (mut c, ack) = Raw::connect(b.addr, v5_session(id.as_str(), false, 60)).await;
    assert_eq!(ack.reason, ReasonCode::Success);
    assert!(ack.session_present, "the assigned id names the session");
    assert_eq!(ack.properties.assigned_client_identifier, None);
    let m = c.recv_publish().await;
    assert_eq!(payload(&m), "hello");
}

#[tokio::test]
async fn two_empty_client_ids_get_distinct_assigned_ids() {
    let b = TestBroker::start().await;
    let (_a, ack_a) = Raw::connect(b.addr, v5("")).await;
    let (_b, ack_b) = Raw::connect(b.addr, v5("")).await;
    let a = ack_a.properties.assigned_client_identifier.unwrap();
    let bb = ack_b.properties.assigned_client_identifier.unwrap();
    assert_ne!(a, bb);
}

fn disabled() -> Options {
    Options {
        capabilities: Capabilities {
            maximum_qos: QoS::AtLeastOnce,
            retain_available: false,
            wildcard_subscriptions: false,
            subscription_identifiers: false,
            shared_subscriptions: false,
            ..Capabilities::default()
        },
        ..Options::default()
    }
}

#[tokio::test]
async fn connack_says_which_features_are_disabled() {
    let b = TestBroker::with(disabled()).await;
    let (_c, ack) = Raw::connect(b.addr, v5("c")).await;
    let p = &ack.properties;
    assert_eq!(p.maximum_qos, Some(QoS::AtLeastOnce));
    assert_eq!(p.retain_available, Some(false));
    assert_eq!(p.wildcard_subscription_available, Some(false));
    assert_eq!(p.subscription_identifiers_available, Some(false));
    assert_eq!(p.shared_subscription_available, Some(false));
}

#[tokio::test]
async fn retain_when_unavailable_is_disconnected_0x9a() {
    let b = TestBroker::with(disabled()).await;
    let mut c = Raw::connected(b.addr, v5("c")).await;
    c.send(Packet::Publish(retained("r", "x", QoS::AtMostOnce, 0)))
        .await;
    assert_eq!(
        expect_disconnect(&mut c).await,
        ReasonCode::RetainNotSupported
    );
}

#[tokio::test]
async fn qos2_above_maximum_qos_is_disconnected_0x9b() {
    let b = TestBroker::with(disabled()).await;
    let mut c = Raw::connected(b.addr, v5("c")).await;
    // QoS 1 is within the maximum and works.
    let mut s = Raw::connected(b.addr, v5("s")).await;
    s.subscribe(1, "q", QoS::AtLeastOnce).await;
    assert_eq!(
        c.publish(publish("q", "one", QoS::AtLeastOnce, 1)).await,
        ReasonCode::Success
    );
    assert_eq!(payload(&s.recv_publish().await), "one");
    c.send(Packet::Publish(publish("q", "two", QoS::ExactlyOnce, 2)))
        .await;
    assert_eq!(expect_disconnect(&mut c).await, ReasonCode::QosNotSupported);
    s.expect_nothing().await;
}

#[tokio::test]
async fn subscribe_is_granted_at_most_maximum_qos() {
    let b = TestBroker::with(disabled()).await;
    let mut c = Raw::connected(b.addr, v5("c")).await;
    let ack = c.subscribe(1, "q", QoS::ExactlyOnce).await;
    assert_eq!(ack.reasons, vec![ReasonCode::GrantedQos1]);
}

#[tokio::test]
async fn wildcard_and_shared_subscribe_refused_when_unavailable() {
    let b = TestBroker::with(disabled()).await;
    let mut c = Raw::connected(b.addr, v5("c")).await;
    let ack = c
        .subscribe_with(subscribe(
            1,
            &[
                ("a/+", opts(QoS::AtMostOnce)),
                ("a/#", opts(QoS::AtMostOnce)),
                ("$share/g/a", opts(QoS::AtMostOnce)),
                ("a/b", opts(QoS::AtMostOnce)),
            ],
        ))
        .await;
    assert_eq!(
        ack.reasons,
        vec![
            ReasonCode::WildcardSubscriptionsNotSupported,
            ReasonCode::WildcardSubscriptionsNotSupported,
            ReasonCode::SharedSubscriptionsNotSupported,
            ReasonCode::Success,
        ]
    );
}

#[tokio::test]
async fn subscription_identifier_when_unavailable_is_disconnected_0xa1() {
    let b = TestBroker::with(disabled()).await;
    let mut c = Raw::connected(b.addr, v5("c")).await;
    let mut s = subscribe(1, &[("a", opts(QoS::AtMostOnce))]);
    s.subscription_identifier = std::num::NonZeroU32::new(5);
    c.send(Packet::Subscribe(s)).await;
    assert_eq!(
        expect_disconnect(&mut c).await,
        ReasonCode::SubscriptionIdentifiersNotSupported
    );
}

#[tokio::test]
async fn connack_reports_capped_session_expiry() {
    let mut opts = Options::default();
    opts.capabilities.maximum_session_expiry_interval = 30;
    let b = TestBroker::with(opts).await;
    let (_c, ack) = Raw::connect(b.addr, v5_session("long", true, 3600)).await;
    assert_eq!(ack.properties.session_expiry_interval, Some(30));
    // Within the cap: the client's value stands and is not echoed.
    let (_c, ack) = Raw::connect(b.addr, v5_session("short", true, 10)).await;
    assert_eq!(ack.properties.session_expiry_interval, None);
}

// ----- session expiry ----------------------------------------------------
// What takes time runs in virtual time against the core:
// src/broker/tests/expiry.rs.

#[tokio::test]
async fn session_with_zero_expiry_ends_at_disconnect() {
    let b = TestBroker::start().await;
    // No Session Expiry Interval property means 0 (3.1.2.11.2).
    let mut s = Raw::connected(b.addr, connect(ProtocolVersion::V5, "s", false)).await;
    s.subscribe(1, "t", QoS::AtLeastOnce).await;
    s.disconnect().await;
    let mut p = Raw::connected(b.addr, v5("pub")).await;
    assert_eq!(
        p.publish(publish("t", "x", QoS::AtLeastOnce, 1)).await,
        ReasonCode::NoMatchingSubscribers
    );
    let (_s, ack) = Raw::connect(b.addr, v5_session("s", false, 0)).await;
    assert!(!ack.session_present);
}

#[tokio::test]
async fn disconnect_can_shorten_session_expiry_to_zero() {
    let b = TestBroker::start().await;
    let mut s = Raw::connected(b.addr, v5_session("s", true, 600)).await;
    s.subscribe(1, "t", QoS::AtLeastOnce).await;
    s.send(Packet::Disconnect(disconnect_with_expiry(0))).await;
    s.expect_closed().await;
    let (_s, ack) = Raw::connect(b.addr, v5_session("s", false, 600)).await;
    assert!(!ack.session_present, "DISCONNECT set the expiry to 0");
}

#[tokio::test]
async fn disconnect_setting_expiry_after_zero_is_protocol_error() {
    let b = TestBroker::start().await;
    let mut s = Raw::connected(b.addr, v5_session("s", true, 0)).await;
    s.send(Packet::Disconnect(disconnect_with_expiry(30))).await;
    // [MQTT-3.14.2-2]: the server answers with DISCONNECT 0x82.
    assert_eq!(expect_disconnect(&mut s).await, ReasonCode::ProtocolError);
    let (_s, ack) = Raw::connect(b.addr, v5_session("s", false, 0)).await;
    assert!(!ack.session_present);
}

// ----- takeover ----------------------------------------------------------

#[tokio::test]
async fn second_connection_takes_over_with_0x8e() {
    let b = TestBroker::start().await;
    let mut first = Raw::connected(b.addr, v5_session("same", true, 60)).await;
    first.subscribe(1, "t", QoS::AtLeastOnce).await;
    let (mut second, ack) = Raw::connect(b.addr, v5_session("same", false, 60)).await;
    assert_eq!(ack.reason, ReasonCode::Success);
    assert!(
        ack.session_present,
        "the session moves to the new connection"
    );
    assert_eq!(
        expect_disconnect(&mut first).await,
        ReasonCode::SessionTakenOver
    );
    // The subscription now delivers to the second connection.
    let mut p = Raw::connected(b.addr, v5("pub")).await;
    p.publish(publish("t", "x", QoS::AtLeastOnce, 1)).await;
    assert_eq!(payload(&second.recv_publish().await), "x");
}

// ----- wills -------------------------------------------------------------
// Will delays and the will's expiry run in virtual time against the core:
// src/broker/tests/will.rs.

fn with_will(mut c: Connect, payload: &str, delay: Option<u32>) -> Connect {
    let mut w = will("will/t", payload, QoS::AtLeastOnce, false);
    w.properties.will_delay_interval = delay;
    c.will = Some(w);
    c
}

#[tokio::test]
async fn will_sent_on_abnormal_close() {
    let b = TestBroker::start().await;
    let mut w = watcher(&b, "will/t").await;
    let c = Raw::connected(b.addr, with_will(v5("c"), "gone", None)).await;
    c.drop_connection();
    let m = w.recv_publish().await;
    assert_eq!(m.topic, "will/t");
    assert_eq!(payload(&m), "gone");
    assert_eq!(m.qos_pid.qos(), QoS::AtLeastOnce);
}

#[tokio::test]
async fn will_not_sent_on_normal_disconnect() {
    let b = TestBroker::start().await;
    let mut w = watcher(&b, "will/t").await;
    let c = Raw::connected(b.addr, with_will(v5("c"), "gone", None)).await;
    c.disconnect().await;
    w.expect_nothing().await;
}

#[tokio::test]
async fn will_sent_on_disconnect_with_will_message() {
    let b = TestBroker::start().await;
    let mut w = watcher(&b, "will/t").await;
    let mut c = Raw::connected(b.addr, with_will(v5("c"), "asked", None)).await;
    c.send(Packet::Disconnect(Disconnect::new(
        ReasonCode::DisconnectWithWillMessage,
    )))
    .await;
    assert_eq!(payload(&w.recv_publish().await), "asked");
}

#[tokio::test]
async fn will_sent_on_takeover() {
    let b = TestBroker::start().await;
    let mut w = watcher(&b, "will/t").await;
    let _first = Raw::connected(b.addr, with_will(v5("same"), "taken", None)).await;
    let _second = Raw::connected(b.addr, v5("same")).await;
    // [MQTT-3.1.4-3]: the old connection is closed as if it had failed.
    assert_eq!(payload(&w.recv_publish().await), "taken");
}

#[tokio::test]
async fn empty_will_payload_is_legal() {
    let b = TestBroker::start().await;
    let mut w = watcher(&b, "will/t").await;
    let (c, ack) = Raw::connect(b.addr, with_will(v5("c"), "", None)).await;
    assert_eq!(ack.reason, ReasonCode::Success);
    c.drop_connection();
    let m = w.recv_publish().await;
    assert_eq!(m.topic, "will/t");
    assert!(m.payload.is_empty());
}

#[tokio::test]
async fn will_properties_are_forwarded() {
    let b = TestBroker::start().await;
    let mut w = watcher(&b, "will/t").await;
    let mut c = with_will(v5("c"), "{}", None);
    {
        let p = &mut c.will.as_mut().unwrap().properties;
        p.content_type = Some("application/json".into());
        p.payload_format_indicator = Some(1);
        p.response_topic = Some("resp".into());
        p.correlation_data = Some(bytes::Bytes::from_static(b"\x01\x02"));
        p.user_properties = vec![("k".into(), "v".into())];
    }
    Raw::connected(b.addr, c).await.drop_connection();
    let m = w.recv_publish().await;
    assert_eq!(
        m.properties.content_type.as_deref(),
        Some("application/json")
    );
    assert_eq!(m.properties.payload_format_indicator, Some(1));
    assert_eq!(m.properties.response_topic.as_deref(), Some("resp"));
    assert_eq!(
        m.properties.correlation_data.as_deref(),
        Some(&[1u8, 2][..])
    );
    assert_eq!(m.properties.user_properties, vec![("k".into(), "v".into())]);
}

// ----- authentication and problem information ----------------------------

#[tokio::test]
async fn authentication_method_is_refused_0x8c() {
    let b = TestBroker::start().await;
    let mut c = v5("c");
    c.properties.authentication_method = Some("SCRAM-SHA-1".into());
    c.properties.authentication_data = Some(bytes::Bytes::from_static(b"client-first"));
    let (mut raw, ack) = Raw::connect(b.addr, c).await;
    assert_eq!(ack.reason, ReasonCode::BadAuthenticationMethod);
    assert!(!ack.session_present);
    raw.expect_closed().await;
}

#[tokio::test]
async fn auth_without_negotiated_method_is_protocol_error() {
    let b = TestBroker::start().await;
    let mut c = Raw::connected(b.addr, v5("c")).await;
    c.send(Packet::Auth(Auth::new(ReasonCode::ReAuthenticate)))
        .await;
    assert_eq!(expect_disconnect(&mut c).await, ReasonCode::ProtocolError);
}

#[tokio::test]
async fn request_problem_information_zero_is_accepted() {
    let b = TestBroker::start().await;
    let mut c = v5("c");
    c.properties.request_problem_information = Some(false);
    c.properties.request_response_information = Some(false);
    c.properties.receive_maximum = NonZeroU16::new(10);
    let (mut c, ack) = Raw::connect(b.addr, c).await;
    assert_eq!(ack.reason, ReasonCode::Success);
    let mut s = Raw::connected(b.addr, v5("s")).await;
    s.subscribe(1, "rpi", QoS::ExactlyOnce).await;
    assert_eq!(
        c.publish(publish("rpi", "x", QoS::ExactlyOnce, 2)).await,
        ReasonCode::Success
    );
    let m = s.recv_publish().await;
    assert_eq!(payload(&m), "x");
    s.ack(&m).await;
    // And in the other direction, towards the client that asked for no
    // problem information.
    c.subscribe(4, "back", QoS::AtLeastOnce).await;
    s.publish(publish("back", "y", QoS::AtLeastOnce, 5)).await;
    let m = c.recv_publish().await;
    assert_eq!(payload(&m), "y");
    c.ack(&m).await;
    // A refused publish still gets its reason code (a reason string may be
    // left out, [MQTT-3.1.2-29], but the code itself is always sent).
    assert_eq!(
        c.publish(publish("$SYS/x", "x", QoS::AtLeastOnce, 3)).await,
        ReasonCode::NotAuthorized
    );
}

#[tokio::test]
async fn empty_client_id_with_clean_start_0_is_accepted() {
    let b = TestBroker::start().await;
    // 5.0 allows it (3.1.3.1); the server assigns an identifier.
    let (_c, ack) = Raw::connect(b.addr, v5_session("", false, 30)).await;
    assert_eq!(ack.reason, ReasonCode::Success);
    assert!(!ack.session_present);
    assert!(ack.properties.assigned_client_identifier.is_some());
}

#[tokio::test]
async fn will_delay_with_session_expiry_zero_sends_will_at_once() {
    let b = TestBroker::start().await;
    let mut w = watcher(&b, "will/t").await;
    let c = Raw::connected(b.addr, with_will(v5_session("c", true, 0), "now", Some(30))).await;
    let start = Instant::now();
    c.drop_connection();
    // The session ends at the disconnect, which comes before the delay.
    assert_eq!(payload(&w.recv_publish().await), "now");
    assert!(start.elapsed() < Duration::from_millis(900));
}

#[tokio::test]
async fn keep_alive_above_maximum_is_lowered() {
    let mut opts = Options::default();
    opts.capabilities.maximum_keep_alive = 10;
    let b = TestBroker::with(opts).await;
    let mut c = v5("c");
    c.keep_alive = 60;
    let (_c, ack) = Raw::connect(b.addr, c).await;
    assert_eq!(ack.properties.server_keep_alive, Some(10));
    let mut c = v5("d");
    c.keep_alive = 5;
    let (_c, ack) = Raw::connect(b.addr, c).await;
    assert_eq!(ack.properties.server_keep_alive, None);
}

/// The keep-alive's one end-to-end case: the connection stamps when it
/// waits for its client on the server's clock, and the core's tick closes
/// it. Its timing cases run in virtual time in src/broker/tests/keep_alive.rs.
#[tokio::test]
async fn client_keep_alive_is_enforced() {
    let b = TestBroker::start().await;
    let mut c = v5("c");
    c.keep_alive = 1;
    let (mut c, ack) = Raw::connect(b.addr, c).await;
    assert_eq!(ack.properties.server_keep_alive, None);
    let start = Instant::now();
    assert_eq!(
        expect_disconnect(&mut c).await,
        ReasonCode::KeepAliveTimeout
    );
    assert!(start.elapsed() >= Duration::from_millis(1200));
}

#[tokio::test]
async fn retained_will_is_kept_for_later_subscribers() {
    let b = TestBroker::start().await;
    let mut c = v5("c");
    c.will = Some(will("will/r", "last words", QoS::AtLeastOnce, true));
    Raw::connected(b.addr, c).await.drop_connection();
    let mut s = Raw::connected(b.addr, v5("late")).await;
    // The will is published asynchronously; poll until it is retained.
    let deadline = Instant::now() + WAIT;
    let m = loop {
        s.subscribe(1, "will/r", QoS::AtLeastOnce).await;
        if let Some(Packet::Publish(m)) = s.recv_within(QUIET).await {
            break m;
        }
        assert!(Instant::now() < deadline, "retained will never appeared");
    };
    assert_eq!((payload(&m), m.retain), ("last words", true));
}

/// A normal DISCONNECT that sets the Session Expiry Interval.
fn disconnect_with_expiry(seconds: u32) -> Disconnect {
    let mut properties = DisconnectProperties::default();
    properties.session_expiry_interval = Some(seconds);
    Disconnect::new(ReasonCode::Success).with_properties(properties)
}
