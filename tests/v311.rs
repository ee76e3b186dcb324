//! MQTT 3.1.1 (and 3.1) behaviour over real TCP with the raw client: the
//! scenarios of the Eclipse Paho 3.1.1 interoperability suite and the
//! normative statements they exercise. One test per behaviour.

mod common;
use common::*;
use roost::codec::{Packet, ProtocolVersion, PubResp, QoS, QosPid, ReasonCode};
use roost::Options;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

// ----- helpers local to this file -------------------------------------

const V311: ProtocolVersion = ProtocolVersion::V3_1_1;

/// A 3.1.1 CONNECT with the given Clean Session flag.
fn c311(id: &str, clean: bool) -> roost::codec::Connect {
    connect(V311, id, clean)
}

/// A connected 3.1.1 client subscribed to `filter` at `qos`.
async fn subscriber(addr: SocketAddr, id: &str, filter: &str, qos: QoS) -> Raw {
    let mut c = Raw::connected(addr, v311(id)).await;
    let ack = c.subscribe(1, filter, qos).await;
    assert_eq!(ack.reasons, vec![granted(qos)]);
    c
}

fn granted(qos: QoS) -> ReasonCode {
    match qos {
        QoS::AtMostOnce => ReasonCode::Success,
        QoS::AtLeastOnce => ReasonCode::GrantedQos1,
        QoS::ExactlyOnce => ReasonCode::GrantedQos2,
    }
}

fn pid(p: &roost::codec::Publish) -> u16 {
    p.qos_pid
        .packet_id()
        .expect("QoS > 0 has a packet id")
        .get()
}

/// A CONNECT with a will and the given keep-alive.
fn with_will(id: &str, w: roost::codec::LastWill, keep_alive: u16) -> roost::codec::Connect {
    v311(id).with_will(w).with_keep_alive(keep_alive)
}

fn sys_every_second() -> Options {
    Options {
        sys_interval: Some(Duration::from_secs(1)),
        ..Options::default()
    }
}

/// Counts panics per thread name. Under `#[tokio::test]` (a current-thread
/// runtime) the broker's tasks run on the test's own thread, which libtest
/// names after the test, so a test can see its broker's task panics.
fn panics_on_this_thread() -> usize {
    use std::sync::{Mutex, Once};
    static HOOK: Once = Once::new();
    static PANICS: Mutex<Vec<String>> = Mutex::new(Vec::new());
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let name = std::thread::current().name().unwrap_or("").to_owned();
            PANICS.lock().unwrap_or_else(|e| e.into_inner()).push(name);
            previous(info);
        }));
    });
    let me = std::thread::current().name().unwrap_or("").to_owned();
    let panics = PANICS.lock().unwrap_or_else(|e| e.into_inner());
    panics.iter().filter(|n| **n == me).count()
}

// ----- publish / subscribe -------------------------------------------

#[tokio::test]
async fn basic_pubsub_at_each_qos() {
    let b = TestBroker::start().await;
    let mut sub = subscriber(b.addr, "sub", "basic/+", QoS::ExactlyOnce).await;
    let mut publ = Raw::connected(b.addr, v311("pub")).await;
    for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
        .into_iter()
        .enumerate()
    {
        let reason = publ
            .publish(publish("basic/t", &format!("m{i}"), qos, 1 + i as u16))
            .await;
        assert_eq!(reason, ReasonCode::Success);
        let p = sub.recv_publish().await;
        assert_eq!(p.topic, "basic/t");
        assert_eq!(payload(&p), format!("m{i}"));
        assert_eq!(p.qos_pid.qos(), qos);
        assert!(!p.dup, "a first delivery has DUP=0 (3.3.1.1)");
        assert!(!p.retain);
        sub.ack(&p).await;
    }
    sub.expect_nothing().await;
}

#[tokio::test]
async fn delivered_qos_is_minimum_of_publish_and_subscription() {
    // [MQTT-3.8.4-6]: the QoS of a delivered message is the lower of the
    // published QoS and the granted QoS.
    let b = TestBroker::start().await;
    let mut s0 = subscriber(b.addr, "s0", "down/t", QoS::AtMostOnce).await;
    let mut s1 = subscriber(b.addr, "s1", "down/t", QoS::AtLeastOnce).await;
    let mut publ = Raw::connected(b.addr, v311("pub")).await;
    publ.publish(publish("down/t", "x", QoS::ExactlyOnce, 5))
        .await;
    let p0 = s0.recv_publish().await;
    assert_eq!(p0.qos_pid, QosPid::AtMostOnce);
    let p1 = s1.recv_publish().await;
    assert_eq!(p1.qos_pid.qos(), QoS::AtLeastOnce);
    s1.ack(&p1).await;
}

#[tokio::test]
async fn v31_and_v311_clients_interoperate() {
    let b = TestBroker::start().await;
    let mut old = Raw::connected(b.addr, connect(ProtocolVersion::V3_1, "old-client", true)).await;
    assert_eq!(
        old.subscribe(1, "mix/#", QoS::AtLeastOnce).await.reasons,
        vec![ReasonCode::GrantedQos1]
    );
    let mut new = Raw::connected(b.addr, v311("new-client")).await;
    new.publish(publish("mix/a", "from 3.1.1", QoS::AtLeastOnce, 3))
        .await;
    let p = old.recv_publish().await;
    assert_eq!(payload(&p), "from 3.1.1");
    old.ack(&p).await;
}

#[tokio::test]
async fn suback_has_one_return_code_per_filter_in_order() {
    // [MQTT-3.8.4-5]
    let b = TestBroker::start().await;
    let mut c = Raw::connected(b.addr, v311("multi")).await;
    let ack = c
        .subscribe_with(subscribe(
            42,
            &[
                ("m/2", opts(QoS::ExactlyOnce)),
                ("m/0", opts(QoS::AtMostOnce)),
                ("m/1", opts(QoS::AtLeastOnce)),
            ],
        ))
        .await;
    assert_eq!(ack.packet_id.get(), 42, "[MQTT-3.8.4-2]");
    assert_eq!(
        ack.reasons,
        vec![
            ReasonCode::GrantedQos2,
            ReasonCode::Success,
            ReasonCode::GrantedQos1
        ]
    );
}

// ----- retained messages ---------------------------------------------

#[tokio::test]
async fn retained_message_is_delivered_on_subscribe_with_retain_set() {
    // [MQTT-3.3.1-5], [MQTT-3.3.1-8]
    let b = TestBroker::start().await;
    let mut publ = Raw::connected(b.addr, v311("pub")).await;
    publ.publish(retained("ret/a", "kept", QoS::AtLeastOnce, 1))
        .await;
    publ.disconnect().await;

    let mut sub = Raw::connected(b.addr, v311("late")).await;
    sub.subscribe(1, "ret/#", QoS::AtLeastOnce).await;
    let p = sub.recv_publish().await;
    assert_eq!(p.topic, "ret/a");
    assert_eq!(payload(&p), "kept");
    assert!(p.retain, "retained message sent on subscribe has RETAIN=1");
    assert_eq!(p.qos_pid.qos(), QoS::AtLeastOnce);
    sub.ack(&p).await;
    sub.expect_nothing().await;
}

#[tokio::test]
async fn retain_flag_is_cleared_when_forwarding_to_existing_subscribers() {
    // [MQTT-3.3.1-9]: RETAIN is 0 on a message sent because it matched an
    // established subscription, whatever the publisher set.
    let b = TestBroker::start().await;
    let mut sub = subscriber(b.addr, "sub", "fwd/#", QoS::AtLeastOnce).await;
    let mut publ = Raw::connected(b.addr, v311("pub")).await;
    publ.publish(retained("fwd/a", "r", QoS::AtLeastOnce, 1))
        .await;
    let p = sub.recv_publish().await;
    assert_eq!(payload(&p), "r");
    assert!(!p.retain, "forwarded copy must have RETAIN=0");
    sub.ack(&p).await;

    // It was stored all the same: a new subscription gets it with RETAIN=1.
    sub.subscribe(2, "fwd/a", QoS::AtLeastOnce).await;
    let p = sub.recv_publish().await;
    assert!(p.retain);
    sub.ack(&p).await;
}

#[tokio::test]
async fn newer_retained_message_replaces_older_one() {
    // [MQTT-3.3.1-5]: the new retained message replaces any existing one.
    let b = TestBroker::start().await;
    let mut publ = Raw::connected(b.addr, v311("pub")).await;
    publ.publish(retained("rep/a", "old", QoS::AtLeastOnce, 1))
        .await;
    publ.publish(retained("rep/a", "new", QoS::AtLeastOnce, 2))
        .await;
    let mut sub = Raw::connected(b.addr, v311("sub")).await;
    sub.subscribe(1, "rep/a", QoS::AtLeastOnce).await;
    let p = sub.recv_publish().await;
    assert_eq!(payload(&p), "new");
    sub.ack(&p).await;
    sub.expect_nothing().await;
}

#[tokio::test]
async fn empty_retained_payload_clears_retained_message() {
    // [MQTT-3.3.1-10], [MQTT-3.3.1-11]
    let b = TestBroker::start().await;
    let mut publ = Raw::connected(b.addr, v311("pub")).await;
    publ.publish(retained("clr/a", "kept", QoS::AtLeastOnce, 1))
        .await;
    let mut watcher = subscriber(b.addr, "watcher", "clr/#", QoS::AtLeastOnce).await;
    let p = watcher.recv_publish().await; // the retained one
    assert_eq!(payload(&p), "kept");
    watcher.ack(&p).await;

    publ.publish(retained("clr/a", "", QoS::AtLeastOnce, 2))
        .await;
    // The empty message is processed as normal: existing subscribers get it.
    let p = watcher.recv_publish().await;
    assert_eq!(p.topic, "clr/a");
    assert!(p.payload.is_empty());
    assert!(!p.retain);
    watcher.ack(&p).await;

    // ...and nothing is retained any more.
    let mut late = Raw::connected(b.addr, v311("late")).await;
    late.subscribe(1, "clr/#", QoS::AtLeastOnce).await;
    late.expect_nothing().await;
}

#[tokio::test]
async fn retained_qos_is_minimum_of_message_and_granted_qos() {
    let b = TestBroker::start().await;
    let mut publ = Raw::connected(b.addr, v311("pub")).await;
    publ.publish(retained("rq/q0", "zero", QoS::AtMostOnce, 1))
        .await;
    publ.publish(retained("rq/q1", "one", QoS::AtLeastOnce, 2))
        .await;
    publ.publish(retained("rq/q2", "two", QoS::ExactlyOnce, 3))
        .await;

    let mut sub = Raw::connected(b.addr, v311("sub")).await;
    sub.subscribe(1, "rq/+", QoS::AtLeastOnce).await;
    let mut got = Vec::new();
    for _ in 0..3 {
        let p = sub.recv_publish().await;
        assert!(p.retain);
        got.push((p.topic.as_str().to_owned(), p.qos_pid.qos()));
        sub.ack(&p).await;
    }
    got.sort();
    assert_eq!(
        got,
        vec![
            ("rq/q0".to_owned(), QoS::AtMostOnce),
            ("rq/q1".to_owned(), QoS::AtLeastOnce),
            ("rq/q2".to_owned(), QoS::AtLeastOnce),
        ]
    );
    sub.expect_nothing().await;
}

// ----- will messages --------------------------------------------------

#[tokio::test]
async fn will_is_published_when_connection_drops_without_disconnect() {
    // [MQTT-3.1.2-8]
    let b = TestBroker::start().await;
    let mut watcher = subscriber(b.addr, "watcher", "will/#", QoS::ExactlyOnce).await;
    let dying = Raw::connected(
        b.addr,
        with_will(
            "dying",
            will("will/dying", "gone", QoS::AtLeastOnce, false),
            60,
        ),
    )
    .await;
    watcher.expect_nothing().await;
    dying.drop_connection();
    let p = watcher.recv_publish().await;
    assert_eq!(p.topic, "will/dying");
    assert_eq!(payload(&p), "gone");
    assert_eq!(p.qos_pid.qos(), QoS::AtLeastOnce, "will QoS is kept");
    assert!(!p.retain);
    watcher.ack(&p).await;
    watcher.expect_nothing().await;
}

#[tokio::test]
async fn will_is_not_published_after_disconnect() {
    // [MQTT-3.1.2-10], [MQTT-3.14.4-3]
    let b = TestBroker::start().await;
    let mut watcher = subscriber(b.addr, "watcher", "will/#", QoS::AtLeastOnce).await;
    let polite = Raw::connected(
        b.addr,
        with_will(
            "polite",
            will("will/polite", "gone", QoS::AtLeastOnce, false),
            60,
        ),
    )
    .await;
    polite.disconnect().await;
    watcher.expect_nothing().await;
}

#[tokio::test]
async fn will_with_retain_is_stored_as_retained() {
    // [MQTT-3.1.2-17]
    let b = TestBroker::start().await;
    let dying = Raw::connected(
        b.addr,
        with_will(
            "dying",
            will("willret/dying", "last words", QoS::AtLeastOnce, true),
            60,
        ),
    )
    .await;
    dying.drop_connection();
    // The will is published asynchronously: poll with fresh subscribers
    // until the retained copy is there.
    let deadline = Instant::now() + WAIT;
    let mut n = 0;
    let p = loop {
        n += 1;
        let mut late = Raw::connected(b.addr, v311(&format!("late{n}"))).await;
        late.subscribe(1, "willret/#", QoS::AtLeastOnce).await;
        if let Some(Packet::Publish(p)) = late.recv_within(QUIET).await {
            break p;
        }
        assert!(Instant::now() < deadline, "retained will never appeared");
    };
    assert_eq!(p.topic, "willret/dying");
    assert_eq!(payload(&p), "last words");
    assert!(p.retain);
}

#[tokio::test]
async fn will_with_empty_payload_is_legal_and_published() {
    // 3.1.3.3: the Will Message may be zero length.
    let b = TestBroker::start().await;
    let mut watcher = subscriber(b.addr, "watcher", "will/#", QoS::AtMostOnce).await;
    let (dying, ack) = Raw::connect(
        b.addr,
        with_will("dying", will("will/empty", "", QoS::AtMostOnce, false), 60),
    )
    .await;
    assert_eq!(ack.reason, ReasonCode::Success);
    dying.drop_connection();
    let p = watcher.recv_publish().await;
    assert_eq!(p.topic, "will/empty");
    assert!(p.payload.is_empty());
}

// ----- client identifiers ---------------------------------------------

#[tokio::test]
async fn zero_length_client_id_with_clean_session_is_accepted() {
    // [MQTT-3.1.3-6], [MQTT-3.1.3-7]: the server assigns a unique id, so two
    // such clients do not take each other over.
    let b = TestBroker::start().await;
    let (mut a, ack_a) = Raw::connect(b.addr, c311("", true)).await;
    assert_eq!(ack_a.reason, ReasonCode::Success);
    assert!(!ack_a.session_present);
    let (mut c, ack_c) = Raw::connect(b.addr, c311("", true)).await;
    assert_eq!(ack_c.reason, ReasonCode::Success);

    a.subscribe(1, "anon/a", QoS::AtLeastOnce).await;
    c.publish(publish("anon/a", "hi", QoS::AtLeastOnce, 1))
        .await;
    let p = a.recv_publish().await;
    assert_eq!(payload(&p), "hi");
    a.ack(&p).await;
}

#[tokio::test]
async fn zero_length_client_id_without_clean_session_is_refused() {
    // [MQTT-3.1.3-8]: CONNACK return code 0x02 (identifier rejected), then
    // the connection is closed.
    let b = TestBroker::start().await;
    let (mut c, ack) = Raw::connect(b.addr, c311("", false)).await;
    assert_eq!(ack.reason, ReasonCode::ClientIdentifierNotValid);
    assert_eq!(ack.reason.v3_connack_code(), 2);
    assert!(!ack.session_present, "[MQTT-3.2.2-4]");
    c.expect_closed().await;
}

#[tokio::test]
async fn v31_empty_client_id_is_refused() {
    // MQTT 3.1 (MQIsdp) requires a client id of 1 to 23 characters.
    let b = TestBroker::start().await;
    let (mut c, ack) = Raw::connect(b.addr, connect(ProtocolVersion::V3_1, "", true)).await;
    assert_eq!(ack.reason, ReasonCode::ClientIdentifierNotValid);
    c.expect_closed().await;
}

#[tokio::test]
async fn connack_return_code_2_on_the_wire() {
    // The exact bytes a 3.1.1 client sees: 20 02 00 02.
    let b = TestBroker::start().await;
    let mut c = Raw::open(b.addr, V311).await;
    // CONNECT, "MQTT" level 4, flags 0 (clean session 0), keep alive 60,
    // empty client id.
    c.send_bytes(&[0x10, 12, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x00, 0, 60, 0, 0])
        .await;
    let got = c.expect_closed().await;
    assert_eq!(got.len(), 1, "{got:?}");
    let mut bytes = bytes::BytesMut::new();
    roost::codec::encode(&got[0], V311, &mut bytes).unwrap();
    assert_eq!(&bytes[..], &[0x20, 2, 0, 2]);
}

#[tokio::test]
async fn unsupported_protocol_level_gets_return_code_1() {
    // [MQTT-3.1.2-2]
    let b = TestBroker::start().await;
    let mut c = Raw::open(b.addr, V311).await;
    c.send_bytes(&[
        0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 9, 0x02, 0, 60, 0, 1, b'x',
    ])
    .await;
    let got = c.expect_closed().await;
    assert!(
        matches!(&got[..], [Packet::ConnAck(a)] if a.reason == ReasonCode::UnsupportedProtocolVersion),
        "{got:?}"
    );
}

#[tokio::test]
async fn first_packet_must_be_connect() {
    // [MQTT-3.1.0-1]
    let b = TestBroker::start().await;
    let mut c = Raw::open(b.addr, V311).await;
    c.send(Packet::Subscribe(subscribe(
        1,
        &[("x", opts(QoS::AtMostOnce))],
    )))
    .await;
    let got = c.expect_closed().await;
    assert!(got.is_empty(), "{got:?}");
}

#[tokio::test]
async fn second_connect_is_a_protocol_violation() {
    // [MQTT-3.1.0-2]
    let b = TestBroker::start().await;
    let mut c = Raw::connected(b.addr, v311("twice")).await;
    c.send(Packet::Connect(Box::new(v311("twice")))).await;
    let got = c.expect_closed().await;
    assert!(got.is_empty(), "{got:?}");
}

// ----- sessions -------------------------------------------------------

#[tokio::test]
async fn offline_messages_are_queued_for_a_persistent_session() {
    let b = TestBroker::start().await;
    let (mut sub, ack) = Raw::connect(b.addr, c311("offline", false)).await;
    assert!(!ack.session_present, "new session [MQTT-3.2.2-3]");
    sub.subscribe(1, "off/#", QoS::ExactlyOnce).await;
    sub.disconnect().await;

    let mut publ = Raw::connected(b.addr, v311("pub")).await;
    // One topic: ordering is guaranteed per topic ([MQTT-4.6.0-6]).
    publ.publish(publish("off/a", "q1", QoS::AtLeastOnce, 1))
        .await;
    publ.publish(publish("off/a", "q2", QoS::ExactlyOnce, 2))
        .await;
    publ.publish(publish("off/a", "q1 again", QoS::AtLeastOnce, 3))
        .await;

    let (mut sub, ack) = Raw::connect(b.addr, c311("offline", false)).await;
    assert!(ack.session_present, "[MQTT-3.2.2-2]");
    // All three are sent at once (the in-flight window has room); read them
    // before acknowledging, since a QoS 2 ack waits for PUBREL.
    let mut msgs = Vec::new();
    for _ in 0..3 {
        msgs.push(sub.recv_publish().await);
    }
    let mut got = Vec::new();
    for p in &msgs {
        got.push((payload(p).to_owned(), p.qos_pid.qos()));
        sub.ack(p).await;
    }
    assert_eq!(
        got,
        vec![
            ("q1".to_owned(), QoS::AtLeastOnce),
            ("q2".to_owned(), QoS::ExactlyOnce),
            ("q1 again".to_owned(), QoS::AtLeastOnce),
        ],
        "in publish order [MQTT-4.6.0-6]"
    );
    sub.expect_nothing().await;

    // The subscription itself survived too.
    publ.publish(publish("off/4", "live", QoS::AtLeastOnce, 4))
        .await;
    let p = sub.recv_publish().await;
    assert_eq!(payload(&p), "live");
    sub.ack(&p).await;
}

#[tokio::test]
async fn clean_session_discards_previous_session() {
    // [MQTT-3.1.2-6], [MQTT-3.2.2-1]
    let b = TestBroker::start().await;
    let mut c = Raw::connected(b.addr, c311("cleaner", false)).await;
    c.subscribe(1, "cs/#", QoS::AtLeastOnce).await;
    c.disconnect().await;
    let mut publ = Raw::connected(b.addr, v311("pub")).await;
    publ.publish(publish("cs/queued", "while away", QoS::AtLeastOnce, 1))
        .await;

    let (mut c, ack) = Raw::connect(b.addr, c311("cleaner", true)).await;
    assert!(!ack.session_present, "clean session has session present 0");
    // Neither the queued message nor the subscription survived.
    c.expect_nothing().await;
    publ.publish(publish("cs/live", "x", QoS::AtLeastOnce, 2))
        .await;
    c.expect_nothing().await;
    c.disconnect().await;

    // And a clean session leaves nothing behind when it ends.
    let (_c, ack) = Raw::connect(b.addr, c311("cleaner", false)).await;
    assert!(!ack.session_present);
}

#[tokio::test]
async fn session_takeover_closes_the_first_connection() {
    // [MQTT-3.1.4-2]
    let b = TestBroker::start().await;
    let mut first = Raw::connected(b.addr, c311("same", false)).await;
    first.subscribe(1, "take/#", QoS::AtLeastOnce).await;

    let (mut second, ack) = Raw::connect(b.addr, c311("same", false)).await;
    assert_eq!(ack.reason, ReasonCode::Success);
    assert!(ack.session_present, "session carried over");
    first.expect_closed().await;

    // The subscription made on the first connection delivers to the second.
    let mut publ = Raw::connected(b.addr, v311("pub")).await;
    publ.publish(publish("take/a", "to second", QoS::AtLeastOnce, 1))
        .await;
    let p = second.recv_publish().await;
    assert_eq!(payload(&p), "to second");
    second.ack(&p).await;
    // And the second connection is fully usable.
    second.subscribe(2, "take2/#", QoS::AtLeastOnce).await;
    publ.publish(publish("take2/b", "again", QoS::ExactlyOnce, 9))
        .await;
    let p = second.recv_publish().await;
    assert_eq!(payload(&p), "again");
    second.ack(&p).await;
}

#[tokio::test]
async fn takeover_with_clean_session_starts_fresh() {
    let b = TestBroker::start().await;
    let mut first = Raw::connected(b.addr, c311("same", false)).await;
    first.subscribe(1, "fresh/#", QoS::AtLeastOnce).await;
    let (mut second, ack) = Raw::connect(b.addr, c311("same", true)).await;
    assert!(!ack.session_present);
    first.expect_closed().await;
    let mut publ = Raw::connected(b.addr, v311("pub")).await;
    publ.publish(publish("fresh/a", "x", QoS::AtLeastOnce, 1))
        .await;
    second.expect_nothing().await;
}

#[tokio::test]
async fn unacknowledged_messages_are_redelivered_with_dup_on_reconnect() {
    // [MQTT-4.4.0-1]: resent with the original packet ids, DUP=1 [MQTT-3.3.1-1].
    let b = TestBroker::start().await;
    let mut sub = Raw::connected(b.addr, c311("redeliver", false)).await;
    sub.subscribe(1, "rd/#", QoS::ExactlyOnce).await;
    let mut publ = Raw::connected(b.addr, v311("pub")).await;
    publ.publish(publish("rd/1", "one", QoS::AtLeastOnce, 1))
        .await;
    publ.publish(publish("rd/2", "two", QoS::ExactlyOnce, 2))
        .await;
    let p1 = sub.recv_publish().await;
    let p2 = sub.recv_publish().await;
    assert_eq!((payload(&p1), payload(&p2)), ("one", "two"));
    sub.drop_connection(); // no PUBACK, no PUBREC

    let (mut sub, ack) = Raw::connect(b.addr, c311("redeliver", false)).await;
    assert!(ack.session_present);
    let r1 = sub.recv_publish().await;
    let r2 = sub.recv_publish().await;
    for (orig, again) in [(&p1, &r1), (&p2, &r2)] {
        assert_eq!(again.topic, orig.topic);
        assert_eq!(again.payload, orig.payload);
        assert_eq!(again.qos_pid, orig.qos_pid, "same QoS and packet id");
        assert!(again.dup, "a resent PUBLISH has DUP=1");
    }
    sub.ack(&r1).await;
    sub.ack(&r2).await;
    sub.expect_nothing().await;

    // Acknowledged now: a further reconnect resends nothing.
    sub.drop_connection();
    let (mut sub, _) = Raw::connect(b.addr, c311("redeliver", false)).await;
    sub.expect_nothing().await;
}

#[tokio::test]
async fn pubrel_is_resent_on_reconnect_after_pubrec() {
    // [MQTT-4.4.0-1]: once PUBREC was received the server resends PUBREL,
    // not the PUBLISH [MQTT-4.3.3-1].
    let b = TestBroker::start().await;
    let mut sub = Raw::connected(b.addr, c311("half", false)).await;
    sub.subscribe(1, "half/#", QoS::ExactlyOnce).await;
    let mut publ = Raw::connected(b.addr, v311("pub")).await;
    publ.publish(publish("half/x", "q2", QoS::ExactlyOnce, 1))
        .await;
    let p = sub.recv_publish().await;
    let id = pid(&p);
    sub.send(Packet::PubRec(PubResp::new(pid_of(id)))).await;
    match sub.recv().await {
        Packet::PubRel(r) => assert_eq!(r.packet_id.get(), id),
        other => panic!("expected PUBREL, got {other:?}"),
    }
    sub.drop_connection(); // no PUBCOMP

    let (mut sub, ack) = Raw::connect(b.addr, c311("half", false)).await;
    assert!(ack.session_present);
    match sub.recv().await {
        Packet::PubRel(r) => assert_eq!(r.packet_id.get(), id),
        other => panic!("expected PUBREL again, got {other:?}"),
    }
    sub.send(Packet::PubComp(PubResp::new(pid_of(id)))).await;
    sub.expect_nothing().await;
}

// ----- subscriptions --------------------------------------------------

#[tokio::test]
async fn overlapping_subscriptions_deliver_one_copy_at_highest_qos() {
    // [MQTT-3.3.5-1]: the maximum QoS of all matching subscriptions is
    // respected; roost sends a single copy.
    let b = TestBroker::start().await;
    let mut sub = Raw::connected(b.addr, v311("overlap")).await;
    let ack = sub
        .subscribe_with(subscribe(
            1,
            &[
                ("ov/#", opts(QoS::AtMostOnce)),
                ("ov/+", opts(QoS::ExactlyOnce)),
                ("ov/a", opts(QoS::AtLeastOnce)),
            ],
        ))
        .await;
    assert_eq!(ack.reasons.len(), 3);
    let mut publ = Raw::connected(b.addr, v311("pub")).await;
    publ.publish(publish("ov/a", "once", QoS::ExactlyOnce, 1))
        .await;
    let p = sub.recv_publish().await;
    assert_eq!(payload(&p), "once");
    assert_eq!(p.qos_pid.qos(), QoS::ExactlyOnce);
    sub.ack(&p).await;
    sub.expect_nothing().await;
}

#[tokio::test]
async fn resubscribing_replaces_the_subscription_qos() {
    // [MQTT-3.8.4-3]: an identical filter replaces the existing subscription.
    let b = TestBroker::start().await;
    let mut sub = subscriber(b.addr, "resub", "rs/a", QoS::ExactlyOnce).await;
    sub.subscribe(2, "rs/a", QoS::AtMostOnce).await;
    let mut publ = Raw::connected(b.addr, v311("pub")).await;
    publ.publish(publish("rs/a", "x", QoS::ExactlyOnce, 1))
        .await;
    let p = sub.recv_publish().await;
    assert_eq!(p.qos_pid, QosPid::AtMostOnce);
    sub.expect_nothing().await;
}

#[tokio::test]
async fn malformed_subscribe_filter_closes_the_connection() {
    // The "subscribe failure" scenario: roost treats an invalid filter as a
    // malformed SUBSCRIBE and closes the connection ([MQTT-4.7.1-2],
    // [MQTT-4.7.1-3], [MQTT-4.8.0-1]); no SUBACK is sent.
    let b = TestBroker::start().await;
    for (i, bad) in ["a/#/b", "a/b#", "a+/b", "#/"].into_iter().enumerate() {
        let mut c = Raw::connected(b.addr, v311(&format!("bad{i}"))).await;
        c.send(Packet::Subscribe(subscribe(
            1,
            &[
                ("ok/filter", opts(QoS::AtMostOnce)),
                (bad, opts(QoS::AtMostOnce)),
            ],
        )))
        .await;
        let got = c.expect_closed().await;
        assert!(got.is_empty(), "filter {bad:?}: got {got:?}");
    }
}

#[tokio::test]
async fn unsubscribe_stops_delivery() {
    // [MQTT-3.10.4-1], [MQTT-3.10.4-4]
    let b = TestBroker::start().await;
    let mut sub = Raw::connected(b.addr, v311("unsub")).await;
    sub.subscribe(1, "us/a", QoS::AtLeastOnce).await;
    sub.subscribe(2, "us/b", QoS::AtLeastOnce).await;
    let ack = sub.unsubscribe(3, &["us/a"]).await;
    assert_eq!(ack.packet_id.get(), 3, "[MQTT-3.10.4-4]");

    let mut publ = Raw::connected(b.addr, v311("pub")).await;
    publ.publish(publish("us/a", "gone", QoS::AtLeastOnce, 1))
        .await;
    publ.publish(publish("us/b", "kept", QoS::AtLeastOnce, 2))
        .await;
    let p = sub.recv_publish().await;
    assert_eq!(p.topic, "us/b", "only the remaining subscription delivers");
    sub.ack(&p).await;
    sub.expect_nothing().await;
}

#[tokio::test]
async fn unsubscribe_of_unknown_filter_still_gets_unsuback() {
    // [MQTT-3.10.4-5]
    let b = TestBroker::start().await;
    let mut c = Raw::connected(b.addr, v311("nosub")).await;
    let ack = c.unsubscribe(7, &["never/subscribed", "nor/#"]).await;
    assert_eq!(ack.packet_id.get(), 7);
}

// ----- keep alive -----------------------------------------------------
// Run in virtual time against the core: src/broker/tests/keep_alive.rs.

// ----- $ topics -------------------------------------------------------
// That leading wildcards miss live $SYS updates runs in virtual time
// against the core: src/broker/tests/sys.rs.

#[tokio::test]
async fn sys_topics_are_published() {
    let b = TestBroker::with(sys_every_second()).await;
    let mut sys = subscriber(
        b.addr,
        "sys",
        "$SYS/broker/clients/connected",
        QoS::AtMostOnce,
    )
    .await;
    let p = sys.recv_publish().await;
    assert_eq!(p.topic, "$SYS/broker/clients/connected");
    let n: u64 = payload(&p).parse().expect("a number");
    assert!(n >= 1, "at least this client is connected: {n}");

    let mut all = subscriber(b.addr, "all", "$SYS/#", QoS::AtMostOnce).await;
    let mut seen = std::collections::HashSet::new();
    let wanted = [
        "$SYS/broker/version",
        "$SYS/broker/uptime",
        "$SYS/broker/messages/dropped",
        "$SYS/broker/refused/unauthenticated",
    ];
    while !wanted.iter().all(|t| seen.contains(*t)) {
        let p = all.recv_publish().await;
        seen.insert(p.topic.as_str().to_owned());
    }
}

#[tokio::test]
async fn clients_cannot_publish_to_sys() {
    let b = TestBroker::start().await;
    let mut sys = subscriber(b.addr, "sys", "$SYS/broker/fake/#", QoS::AtLeastOnce).await;
    let mut publ = Raw::connected(b.addr, v311("pub")).await;
    // 3.1.1 has no way to refuse a PUBLISH other than closing; roost
    // acknowledges and discards it.
    publ.publish(publish("$SYS/broker/fake/a", "spoof", QoS::AtLeastOnce, 1))
        .await;
    publ.publish(retained("$SYS/broker/fake/b", "spoof", QoS::AtMostOnce, 1))
        .await;
    sys.expect_nothing().await;
    // Nothing was retained either.
    let mut late = Raw::connected(b.addr, v311("late")).await;
    late.subscribe(1, "$SYS/broker/fake/#", QoS::AtLeastOnce)
        .await;
    late.expect_nothing().await;
}

// ----- QoS 2 exactly once ---------------------------------------------

#[tokio::test]
async fn qos2_duplicate_publish_before_pubrel_is_delivered_once() {
    // [MQTT-4.3.3-2] method B: the receiver must not deliver again until
    // PUBREL; a resent PUBLISH is just acknowledged.
    let b = TestBroker::start().await;
    let mut sub = subscriber(b.addr, "sub", "once/#", QoS::ExactlyOnce).await;
    let mut publ = Raw::connected(b.addr, v311("pub")).await;
    let first = publish("once/a", "exactly once", QoS::ExactlyOnce, 7);
    publ.send(Packet::Publish(first.clone())).await;
    match publ.recv().await {
        Packet::PubRec(r) => assert_eq!(r.packet_id.get(), 7),
        other => panic!("expected PUBREC, got {other:?}"),
    }
    let dup = first.with_dup(true);
    publ.send(Packet::Publish(dup)).await;
    match publ.recv().await {
        Packet::PubRec(r) => assert_eq!(r.packet_id.get(), 7),
        other => panic!("expected PUBREC again, got {other:?}"),
    }
    publ.send(Packet::PubRel(PubResp::new(pid_of(7)))).await;
    match publ.recv().await {
        Packet::PubComp(c) => assert_eq!(c.packet_id.get(), 7),
        other => panic!("expected PUBCOMP, got {other:?}"),
    }

    let p = sub.recv_publish().await;
    assert_eq!(payload(&p), "exactly once");
    sub.ack(&p).await;
    sub.expect_nothing().await;
}

#[tokio::test]
async fn packet_id_can_be_reused_after_pubcomp() {
    // 2.3.1: once the flow completes the id is free again, and a
    // new PUBLISH with it is a new message.
    let b = TestBroker::start().await;
    let mut sub = subscriber(b.addr, "sub", "reuse/#", QoS::ExactlyOnce).await;
    let mut publ = Raw::connected(b.addr, v311("pub")).await;
    for text in ["first", "second", "third"] {
        publ.publish(publish("reuse/a", text, QoS::ExactlyOnce, 9))
            .await;
        let p = sub.recv_publish().await;
        assert_eq!(payload(&p), text);
        sub.ack(&p).await;
    }
    // The same for QoS 1 after PUBACK.
    for text in ["q1 first", "q1 second"] {
        publ.publish(publish("reuse/b", text, QoS::AtLeastOnce, 9))
            .await;
        let p = sub.recv_publish().await;
        assert_eq!(payload(&p), text);
        sub.ack(&p).await;
    }
    sub.expect_nothing().await;
}

#[tokio::test]
async fn pubrel_for_unknown_packet_id_gets_pubcomp() {
    // [MQTT-4.3.3-2]: a PUBREL is answered with PUBCOMP, even if the id is no
    // longer known (e.g. a resent PUBREL after the first PUBCOMP was lost).
    let b = TestBroker::start().await;
    let mut c = Raw::connected(b.addr, v311("rel")).await;
    c.send(Packet::PubRel(PubResp::new(pid_of(33)))).await;
    match c.recv().await {
        Packet::PubComp(p) => assert_eq!(p.packet_id.get(), 33),
        other => panic!("expected PUBCOMP, got {other:?}"),
    }
}

// ----- ordering and capacity -----------------------------------------

#[tokio::test]
async fn thousand_qos1_messages_arrive_in_order() {
    // [MQTT-4.6.0-2], [MQTT-4.6.0-6]
    const N: u16 = 1000;
    let b = TestBroker::start().await;
    let mut sub = subscriber(b.addr, "sub", "order/#", QoS::AtLeastOnce).await;
    let mut publ = Raw::connected(b.addr, v311("pub")).await;
    // Pipelined: all PUBLISHes first, then the PUBACKs.
    for i in 1..=N {
        publ.send(Packet::Publish(publish(
            "order/a",
            &i.to_string(),
            QoS::AtLeastOnce,
            i,
        )))
        .await;
    }
    for i in 1..=N {
        let p = sub.recv_publish().await;
        assert_eq!(payload(&p), i.to_string(), "message {i} out of order");
        sub.ack(&p).await;
    }
    for i in 1..=N {
        match publ.recv().await {
            Packet::PubAck(a) => assert_eq!(a.packet_id.get(), i, "PUBACKs in order"),
            other => panic!("expected PUBACK, got {other:?}"),
        }
    }
    sub.expect_nothing().await;
}

#[tokio::test]
async fn maximum_qos_capability_caps_granted_qos() {
    let mut opts_ = Options::default();
    opts_.capabilities.maximum_qos = QoS::AtLeastOnce;
    let b = TestBroker::with(opts_).await;
    let mut sub = Raw::connected(b.addr, v311("sub")).await;
    let ack = sub.subscribe(1, "cap/#", QoS::ExactlyOnce).await;
    assert_eq!(ack.reasons, vec![ReasonCode::GrantedQos1]);
    let mut publ = Raw::connected(b.addr, v311("pub")).await;
    publ.publish(publish("cap/a", "x", QoS::AtLeastOnce, 1))
        .await;
    let p = sub.recv_publish().await;
    assert_eq!(p.qos_pid.qos(), QoS::AtLeastOnce);
    sub.ack(&p).await;
}

#[tokio::test]
async fn connections_closed_by_the_broker_end_without_panicking() {
    // The broker closes a connection itself on takeover and on a refused
    // CONNECT; the connection task must wind down cleanly, not panic.
    assert_eq!(panics_on_this_thread(), 0);
    let b = TestBroker::start().await;
    let mut first = Raw::connected(b.addr, v311("victim")).await;
    let mut second = Raw::connected(b.addr, v311("victim")).await;
    first.expect_closed().await;
    let (mut refused, _) = Raw::connect(b.addr, c311("", false)).await;
    refused.expect_closed().await;
    // Let the connection tasks finish.
    second.send(Packet::PingReq).await;
    assert_eq!(second.recv().await, Packet::PingResp);
    tokio::time::sleep(QUIET).await;
    assert_eq!(panics_on_this_thread(), 0, "a connection task panicked");
}

// ----- more sessions, $ topics and malformed packets ------------------

#[tokio::test]
async fn inflight_messages_move_to_the_new_connection_on_takeover() {
    // [MQTT-4.4.0-1] applies to a takeover with clean session 0 as well.
    let b = TestBroker::start().await;
    let mut first = Raw::connected(b.addr, c311("mover", false)).await;
    first.subscribe(1, "mv/#", QoS::AtLeastOnce).await;
    let mut publ = Raw::connected(b.addr, v311("pub")).await;
    publ.publish(publish("mv/a", "unacked", QoS::AtLeastOnce, 1))
        .await;
    let p = first.recv_publish().await; // never acknowledged

    let (mut second, ack) = Raw::connect(b.addr, c311("mover", false)).await;
    assert!(ack.session_present);
    first.expect_closed().await;
    let again = second.recv_publish().await;
    assert_eq!(again.qos_pid, p.qos_pid);
    assert!(again.dup);
    assert_eq!(payload(&again), "unacked");
    second.ack(&again).await;
    second.expect_nothing().await;
}

#[tokio::test]
async fn inbound_qos2_state_survives_a_reconnect() {
    // [MQTT-4.3.3-2] across connections: a publisher that lost the PUBREC
    // resends the PUBLISH with DUP=1 after reconnecting; it must not be
    // delivered twice, and its PUBREL must be completed.
    let b = TestBroker::start().await;
    let mut sub = subscriber(b.addr, "sub", "q2r/#", QoS::ExactlyOnce).await;
    let mut publ = Raw::connected(b.addr, c311("q2pub", false)).await;
    let msg = publish("q2r/a", "only once", QoS::ExactlyOnce, 5);
    publ.send(Packet::Publish(msg.clone())).await;
    assert!(matches!(publ.recv().await, Packet::PubRec(r) if r.packet_id.get() == 5));
    publ.drop_connection();

    let (mut publ, ack) = Raw::connect(b.addr, c311("q2pub", false)).await;
    assert!(ack.session_present);
    publ.send(Packet::Publish(msg.with_dup(true))).await;
    assert!(matches!(publ.recv().await, Packet::PubRec(r) if r.packet_id.get() == 5));
    publ.send(Packet::PubRel(PubResp::new(pid_of(5)))).await;
    assert!(matches!(publ.recv().await, Packet::PubComp(c) if c.packet_id.get() == 5));

    let p = sub.recv_publish().await;
    assert_eq!(payload(&p), "only once");
    sub.ack(&p).await;
    sub.expect_nothing().await;
}

#[tokio::test]
async fn wildcards_match_as_the_spec_describes() {
    // 4.7.1.2 and 4.7.1.3: "#" includes the parent level, "+" matches one
    // (possibly empty) level only.
    let b = TestBroker::start().await;
    let mut hash = subscriber(b.addr, "hash", "sport/tennis/#", QoS::AtMostOnce).await;
    let mut plus = subscriber(b.addr, "plus", "sport/+", QoS::AtMostOnce).await;
    let mut empty = subscriber(b.addr, "empty", "+/+", QoS::AtMostOnce).await;
    let mut publ = Raw::connected(b.addr, v311("pub")).await;
    for topic in [
        "sport/tennis",
        "sport/tennis/p1/ranking",
        "sport",
        "/finance",
    ] {
        publ.publish(publish(topic, topic, QoS::AtMostOnce, 1))
            .await;
    }
    let mut drain: Vec<Vec<String>> = Vec::new();
    for c in [&mut hash, &mut plus, &mut empty] {
        let mut v = Vec::new();
        while let Some(Packet::Publish(p)) = c.recv_within(QUIET).await {
            v.push(payload(&p).to_owned());
        }
        drain.push(v);
    }
    assert_eq!(drain[0], ["sport/tennis", "sport/tennis/p1/ranking"]);
    assert_eq!(
        drain[1],
        ["sport/tennis"],
        "\"sport/+\" does not match \"sport\""
    );
    assert_eq!(drain[2], ["sport/tennis", "/finance"]);
}

#[tokio::test]
async fn retained_dollar_topics_are_not_sent_to_leading_wildcards() {
    // [MQTT-4.7.2-1] holds for retained messages too.
    let b = TestBroker::with(sys_every_second()).await;
    // Wait until the broker has retained its $SYS topics.
    let mut sys = subscriber(b.addr, "sys", "$SYS/broker/version", QoS::AtMostOnce).await;
    sys.recv_publish().await;
    let mut publ = Raw::connected(b.addr, v311("pub")).await;
    publ.publish(retained("$app/r", "dollar", QoS::AtMostOnce, 1))
        .await;
    publ.publish(retained("plain/r", "plain", QoS::AtMostOnce, 1))
        .await;

    let mut all = Raw::connected(b.addr, v311("all")).await;
    all.subscribe(1, "#", QoS::AtMostOnce).await;
    let p = all.recv_publish().await;
    assert_eq!(p.topic, "plain/r");
    let mut plus = Raw::connected(b.addr, v311("plus")).await;
    plus.subscribe(1, "+/r", QoS::AtMostOnce).await;
    let p = plus.recv_publish().await;
    assert_eq!(p.topic, "plain/r");
    all.expect_nothing().await;
    plus.expect_nothing().await;
}

#[tokio::test]
async fn malformed_packets_close_the_connection() {
    // [MQTT-3.3.2-2] wildcard in a topic name, [MQTT-3.3.1-4] QoS 3,
    // [MQTT-3.8.1-1] bad SUBSCRIBE flags, [MQTT-3-8.3-4] requested QoS 3,
    // packet type 15 (reserved in 3.1.1, 2.2.1), and packets only a server
    // sends ([MQTT-4.8.0-1]).
    let cases: [(&str, &[u8]); 7] = [
        ("wildcard topic", &[0x30, 5, 0, 3, b'a', b'/', b'#']),
        ("QoS 3", &[0x36, 5, 0, 1, b'a', 0, 1]),
        ("SUBSCRIBE flags", &[0x80, 6, 0, 1, 0, 1, b'a', 0]),
        ("subscription QoS 3", &[0x82, 6, 0, 1, 0, 1, b'a', 3]),
        ("packet type 15", &[0xF0, 0]),
        ("PINGRESP from a client", &[0xD0, 0]),
        ("SUBACK from a client", &[0x90, 3, 0, 1, 0]),
    ];
    let b = TestBroker::start().await;
    let mut watcher = subscriber(b.addr, "watcher", "#", QoS::AtMostOnce).await;
    for (i, (what, bytes)) in cases.into_iter().enumerate() {
        let mut c = Raw::connected(
            b.addr,
            with_will(
                &format!("bad{i}"),
                will("bad/will", what, QoS::AtMostOnce, false),
                60,
            ),
        )
        .await;
        c.send_bytes(bytes).await;
        let got = c.expect_closed().await;
        assert!(got.is_empty(), "{what}: got {got:?}");
        // Closed for a protocol error, so the will goes out ([MQTT-3.1.2-8]).
        let p = watcher.recv_publish().await;
        assert_eq!(payload(&p), what, "only the will reaches subscribers");
    }
}

#[tokio::test]
async fn in_flight_window_is_respected_and_order_kept() {
    // With `maximum_inflight` 5, at most 5 QoS 1/2 messages are unacknowledged
    // at a time; the rest wait in order and follow as acks come in.
    let mut o = Options::default();
    o.limits.maximum_inflight = 5;
    let b = TestBroker::with(o).await;
    let mut sub = subscriber(b.addr, "sub", "fc/#", QoS::ExactlyOnce).await;
    let mut publ = Raw::connected(b.addr, v311("pub")).await;
    const N: usize = 40;
    for i in 0..N {
        let qos = if i % 2 == 0 {
            QoS::AtLeastOnce
        } else {
            QoS::ExactlyOnce
        };
        publ.publish(publish("fc/a", &i.to_string(), qos, 1 + i as u16))
            .await;
    }
    let mut window = std::collections::VecDeque::new();
    for _ in 0..5 {
        window.push_back(sub.recv_publish().await);
    }
    sub.expect_nothing().await; // the window is full
    let mut next = 5;
    for i in 0..N {
        let p = window.pop_front().expect("a message in the window");
        assert_eq!(payload(&p), i.to_string(), "in order");
        sub.ack(&p).await;
        if next < N {
            window.push_back(sub.recv_publish().await);
            next += 1;
        }
    }
    sub.expect_nothing().await;
}

#[tokio::test]
async fn resubscribing_resends_retained_messages() {
    // [MQTT-3.8.4-3]: retained messages matching the filter are re-sent when
    // a subscription is replaced.
    let b = TestBroker::start().await;
    let mut publ = Raw::connected(b.addr, v311("pub")).await;
    publ.publish(retained("rr/a", "kept", QoS::AtMostOnce, 1))
        .await;
    let mut sub = Raw::connected(b.addr, v311("sub")).await;
    for id in 1..=2 {
        sub.subscribe(id, "rr/#", QoS::AtMostOnce).await;
        let p = sub.recv_publish().await;
        assert_eq!(payload(&p), "kept");
        assert!(p.retain);
    }
    sub.expect_nothing().await;
}
