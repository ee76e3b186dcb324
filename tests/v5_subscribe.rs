//! MQTT 5.0 subscriptions over real TCP: subscription options, subscription
//! identifiers, overlapping and shared subscriptions (the Paho MQTT 5.0
//! interoperability scenarios).

mod common;
use common::*;
use roost::codec::{
    ProtocolVersion, Publish, QoS, ReasonCode, RetainHandling, Subscribe, SubscriptionOptions,
};
use std::collections::BTreeSet;
use std::num::NonZeroU32;

fn with_id(mut s: Subscribe, id: u32) -> Subscribe {
    s.subscription_identifier = NonZeroU32::new(id);
    s
}

fn sub_opts(qos: QoS, f: impl FnOnce(&mut SubscriptionOptions)) -> SubscriptionOptions {
    let mut o = opts(qos);
    f(&mut o);
    o
}

fn ids(p: &Publish) -> Vec<u32> {
    let mut v: Vec<u32> = p
        .properties
        .subscription_identifiers
        .iter()
        .map(|i| i.get())
        .collect();
    v.sort_unstable();
    v
}

/// Receives every PUBLISH until the connection is quiet, acknowledging each.
async fn drain(raw: &mut Raw) -> Vec<Publish> {
    let mut got = Vec::new();
    while let Some(p) = raw.recv_within(QUIET).await {
        match p {
            roost::codec::Packet::Publish(p) => {
                raw.ack(&p).await;
                got.push(p);
            }
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }
    got
}

// ----- subscription options ----------------------------------------------

#[tokio::test]
async fn no_local_suppresses_own_messages() {
    let b = TestBroker::start().await;
    let mut me = Raw::connected(b.addr, v5("me")).await;
    me.subscribe_with(subscribe(
        1,
        &[("nl/t", sub_opts(QoS::AtLeastOnce, |o| o.no_local = true))],
    ))
    .await;
    let mut other = Raw::connected(b.addr, v5("other")).await;
    other.subscribe(1, "nl/t", QoS::AtLeastOnce).await;

    me.publish(publish("nl/t", "mine", QoS::AtLeastOnce, 2))
        .await;
    assert_eq!(payload(&other.recv_publish().await), "mine");
    me.expect_nothing().await; // [MQTT-3.8.3-3]

    // Messages from others still arrive (QoS 0: `other` gets its own copy
    // too, before any acknowledgement could be read).
    other
        .publish(publish("nl/t", "theirs", QoS::AtMostOnce, 0))
        .await;
    assert_eq!(payload(&me.recv_publish().await), "theirs");
    assert_eq!(payload(&other.recv_publish().await), "theirs");
}

#[tokio::test]
async fn without_no_local_own_messages_arrive() {
    let b = TestBroker::start().await;
    let mut me = Raw::connected(b.addr, v5("me")).await;
    me.subscribe(1, "nl/t", QoS::AtMostOnce).await;
    me.publish(publish("nl/t", "mine", QoS::AtMostOnce, 0))
        .await;
    assert_eq!(payload(&me.recv_publish().await), "mine");
}

#[tokio::test]
async fn retain_as_published_keeps_the_retain_flag() {
    let b = TestBroker::start().await;
    let mut rap = Raw::connected(b.addr, v5("rap")).await;
    rap.subscribe_with(subscribe(
        1,
        &[(
            "rap/t",
            sub_opts(QoS::AtMostOnce, |o| o.retain_as_published = true),
        )],
    ))
    .await;
    let mut plain = Raw::connected(b.addr, v5("plain")).await;
    plain.subscribe(1, "rap/t", QoS::AtMostOnce).await;

    let mut p = Raw::connected(b.addr, v5("pub")).await;
    p.publish(retained("rap/t", "r", QoS::AtMostOnce, 0)).await;
    p.publish(publish("rap/t", "n", QoS::AtMostOnce, 0)).await;
    // [MQTT-3.3.1-12] / [MQTT-3.3.1-13]
    let (r, n) = (rap.recv_publish().await, rap.recv_publish().await);
    assert_eq!((payload(&r), r.retain), ("r", true));
    assert_eq!((payload(&n), n.retain), ("n", false));
    let (r, n) = (plain.recv_publish().await, plain.recv_publish().await);
    assert_eq!((payload(&r), r.retain), ("r", false));
    assert_eq!((payload(&n), n.retain), ("n", false));
}

async fn retained_broker(topic: &str) -> TestBroker {
    let b = TestBroker::start().await;
    let mut p = Raw::connected(b.addr, v5("pub")).await;
    p.publish(retained(topic, "kept", QoS::AtLeastOnce, 1))
        .await;
    p.disconnect().await;
    b
}

fn rh(filter: &str, handling: RetainHandling) -> Subscribe {
    subscribe(
        1,
        &[(
            filter,
            sub_opts(QoS::AtLeastOnce, |o| o.retain_handling = handling),
        )],
    )
}

#[tokio::test]
async fn retain_handling_0_sends_on_every_subscribe() {
    let b = retained_broker("rh/t").await;
    let mut s = Raw::connected(b.addr, v5("s")).await;
    for _ in 0..2 {
        s.subscribe_with(rh("rh/t", RetainHandling::SendAtSubscribe))
            .await;
        let m = s.recv_publish().await;
        assert_eq!((payload(&m), m.retain), ("kept", true));
        s.ack(&m).await;
    }
    s.expect_nothing().await;
}

#[tokio::test]
async fn retain_handling_1_sends_only_for_a_new_subscription() {
    let b = retained_broker("rh/t").await;
    let mut s = Raw::connected(b.addr, v5("s")).await;
    s.subscribe_with(rh("rh/t", RetainHandling::SendAtSubscribeIfNew))
        .await;
    let m = s.recv_publish().await;
    assert_eq!((payload(&m), m.retain), ("kept", true));
    s.ack(&m).await;
    // Re-subscribing replaces the subscription: it is not new.
    let ack = s
        .subscribe_with(rh("rh/t", RetainHandling::SendAtSubscribeIfNew))
        .await;
    assert_eq!(ack.reasons, vec![ReasonCode::GrantedQos1]);
    s.expect_nothing().await;
    // After unsubscribing it is new again.
    s.unsubscribe(2, &["rh/t"]).await;
    s.subscribe_with(rh("rh/t", RetainHandling::SendAtSubscribeIfNew))
        .await;
    assert_eq!(payload(&s.recv_publish().await), "kept");
}

#[tokio::test]
async fn retain_handling_2_never_sends_retained() {
    let b = retained_broker("rh/t").await;
    let mut s = Raw::connected(b.addr, v5("s")).await;
    s.subscribe_with(rh("rh/t", RetainHandling::DoNotSend))
        .await;
    s.expect_nothing().await;
    // The subscription itself works.
    let mut p = Raw::connected(b.addr, v5("pub2")).await;
    p.publish(publish("rh/t", "live", QoS::AtLeastOnce, 1))
        .await;
    assert_eq!(payload(&s.recv_publish().await), "live");
}

// ----- subscription identifiers ------------------------------------------

#[tokio::test]
async fn subscription_identifier_is_delivered() {
    let b = TestBroker::start().await;
    let mut s = Raw::connected(b.addr, v5("s")).await;
    s.subscribe_with(with_id(
        subscribe(1, &[("sid/a", opts(QoS::AtLeastOnce))]),
        42,
    ))
    .await;
    s.subscribe(2, "sid/b", QoS::AtLeastOnce).await;
    let mut p = Raw::connected(b.addr, v5("pub")).await;
    p.publish(publish("sid/a", "a", QoS::AtLeastOnce, 1)).await;
    let m = s.recv_publish().await;
    assert_eq!(ids(&m), vec![42]);
    s.ack(&m).await;
    p.publish(publish("sid/b", "b", QoS::AtLeastOnce, 2)).await;
    let m = s.recv_publish().await;
    assert_eq!(ids(&m), Vec::<u32>::new(), "no identifier on that one");
}

#[tokio::test]
async fn overlapping_subscriptions_carry_every_identifier() {
    let b = TestBroker::start().await;
    let mut s = Raw::connected(b.addr, v5("s")).await;
    s.subscribe_with(with_id(
        subscribe(1, &[("sid/+", opts(QoS::AtLeastOnce))]),
        1,
    ))
    .await;
    s.subscribe_with(with_id(
        subscribe(2, &[("sid/x", opts(QoS::AtLeastOnce))]),
        2,
    ))
    .await;
    s.subscribe_with(with_id(subscribe(3, &[("#", opts(QoS::AtMostOnce))]), 3))
        .await;
    let mut p = Raw::connected(b.addr, v5("pub")).await;
    p.publish(publish("sid/x", "x", QoS::AtLeastOnce, 1)).await;
    // [MQTT-3.3.4-3]: one message with all the identifiers.
    let m = s.recv_publish().await;
    assert_eq!(ids(&m), vec![1, 2, 3]);
    s.ack(&m).await;
    s.expect_nothing().await;
    p.publish(publish("sid/y", "y", QoS::AtLeastOnce, 2)).await;
    let m = s.recv_publish().await;
    assert_eq!(ids(&m), vec![1, 3]);
    s.ack(&m).await;
    s.expect_nothing().await;
}

#[tokio::test]
async fn retained_message_carries_subscription_identifier() {
    let b = retained_broker("sid/r").await;
    let mut s = Raw::connected(b.addr, v5("s")).await;
    s.subscribe_with(with_id(
        subscribe(1, &[("sid/#", opts(QoS::AtLeastOnce))]),
        7,
    ))
    .await;
    let m = s.recv_publish().await;
    assert!(m.retain);
    assert_eq!(ids(&m), vec![7]);
}

#[tokio::test]
async fn resubscribe_replaces_the_identifier() {
    let b = TestBroker::start().await;
    let mut s = Raw::connected(b.addr, v5("s")).await;
    s.subscribe_with(with_id(
        subscribe(1, &[("sid/t", opts(QoS::AtMostOnce))]),
        5,
    ))
    .await;
    s.subscribe_with(with_id(
        subscribe(2, &[("sid/t", opts(QoS::AtMostOnce))]),
        6,
    ))
    .await;
    let mut p = Raw::connected(b.addr, v5("pub")).await;
    p.publish(publish("sid/t", "t", QoS::AtMostOnce, 0)).await;
    assert_eq!(ids(&s.recv_publish().await), vec![6]);
    s.expect_nothing().await;
}

#[tokio::test]
async fn unsubscribe_reports_each_filter() {
    let b = TestBroker::start().await;
    let mut s = Raw::connected(b.addr, v5("s")).await;
    s.subscribe(1, "u/a", QoS::AtLeastOnce).await;
    let ack = s.unsubscribe(2, &["u/a", "u/never"]).await;
    assert_eq!(
        ack.reasons,
        vec![ReasonCode::Success, ReasonCode::NoSubscriptionExisted]
    );
    let ack = s.unsubscribe(3, &["u/a"]).await;
    assert_eq!(ack.reasons, vec![ReasonCode::NoSubscriptionExisted]);
    let mut p = Raw::connected(b.addr, v5("pub")).await;
    assert_eq!(
        p.publish(publish("u/a", "x", QoS::AtLeastOnce, 1)).await,
        ReasonCode::NoMatchingSubscribers
    );
}

// ----- overlapping subscriptions -----------------------------------------

#[tokio::test]
async fn overlapping_subscriptions_give_one_copy_at_highest_qos() {
    let b = TestBroker::start().await;
    let mut s = Raw::connected(b.addr, v5("s")).await;
    s.subscribe(1, "ov/#", QoS::AtMostOnce).await;
    s.subscribe(2, "ov/+", QoS::ExactlyOnce).await;
    s.subscribe(3, "ov/t", QoS::AtLeastOnce).await;
    let mut p = Raw::connected(b.addr, v5("pub")).await;
    for (i, qos) in [QoS::ExactlyOnce, QoS::AtLeastOnce, QoS::AtMostOnce]
        .into_iter()
        .enumerate()
    {
        p.publish(publish("ov/t", "x", qos, 1 + i as u16)).await;
        let m = s.recv_publish().await;
        // min(published, highest granted) = the published QoS here.
        assert_eq!(m.qos_pid.qos(), qos);
        s.ack(&m).await;
        s.expect_nothing().await;
    }
}

#[tokio::test]
async fn overlapping_subscriptions_on_v311_give_one_copy() {
    let b = TestBroker::start().await;
    let mut s = Raw::connected(b.addr, connect(ProtocolVersion::V3_1_1, "s", true)).await;
    s.subscribe(1, "ov/#", QoS::AtLeastOnce).await;
    s.subscribe(2, "ov/t", QoS::AtMostOnce).await;
    let mut p = Raw::connected(b.addr, v5("pub")).await;
    p.publish(publish("ov/t", "x", QoS::ExactlyOnce, 1)).await;
    let m = s.recv_publish().await;
    assert_eq!(m.qos_pid.qos(), QoS::AtLeastOnce);
    s.ack(&m).await;
    s.expect_nothing().await;
}

// ----- shared subscriptions ----------------------------------------------

#[tokio::test]
async fn shared_subscription_distributes_and_plain_gets_all() {
    let b = TestBroker::start().await;
    let mut m1 = Raw::connected(b.addr, v5("m1")).await;
    let mut m2 = Raw::connected(b.addr, v5("m2")).await;
    let mut all = Raw::connected(b.addr, v5("all")).await;
    for m in [&mut m1, &mut m2] {
        let ack = m.subscribe(1, "$share/g/sh/t", QoS::AtLeastOnce).await;
        assert_eq!(ack.reasons, vec![ReasonCode::GrantedQos1]);
    }
    all.subscribe(1, "sh/t", QoS::AtLeastOnce).await;

    const N: usize = 10;
    let mut p = Raw::connected(b.addr, v5("pub")).await;
    for i in 0..N {
        let r = p
            .publish(publish(
                "sh/t",
                &format!("{i}"),
                QoS::AtLeastOnce,
                1 + i as u16,
            ))
            .await;
        assert_eq!(r, ReasonCode::Success);
    }
    let got1 = drain(&mut m1).await;
    let got2 = drain(&mut m2).await;
    let got_all = drain(&mut all).await;
    assert!(
        !got1.is_empty() && !got2.is_empty(),
        "both members get some"
    );
    assert_eq!(got1.len() + got2.len(), N, "each message to one member");
    let union: BTreeSet<String> = got1
        .iter()
        .chain(&got2)
        .map(|m| payload(m).to_owned())
        .collect();
    assert_eq!(union.len(), N, "no duplicates");
    assert_eq!(got_all.len(), N, "the plain subscriber gets all");
    for m in got1.iter().chain(&got2) {
        assert_eq!(m.topic, "sh/t");
    }
}

#[tokio::test]
async fn shared_subscriptions_in_different_groups_each_get_a_copy() {
    let b = TestBroker::start().await;
    let mut a = Raw::connected(b.addr, v5("a")).await;
    let mut bb = Raw::connected(b.addr, v5("b")).await;
    a.subscribe(1, "$share/one/sh/t", QoS::AtMostOnce).await;
    bb.subscribe(1, "$share/two/sh/t", QoS::AtMostOnce).await;
    let mut p = Raw::connected(b.addr, v5("pub")).await;
    p.publish(publish("sh/t", "x", QoS::AtMostOnce, 0)).await;
    assert_eq!(payload(&a.recv_publish().await), "x");
    assert_eq!(payload(&bb.recv_publish().await), "x");
}

#[tokio::test]
async fn retained_not_sent_to_new_shared_subscription() {
    let b = retained_broker("sh/r").await;
    let mut s = Raw::connected(b.addr, v5("s")).await;
    let ack = s.subscribe(1, "$share/g/sh/r", QoS::AtLeastOnce).await;
    assert_eq!(ack.reasons, vec![ReasonCode::GrantedQos1]);
    // 5.0 section 4.8.2: retained messages are not sent to shared subscriptions.
    s.expect_nothing().await;
    // A plain subscription on the same connection does get it.
    s.subscribe(2, "sh/r", QoS::AtLeastOnce).await;
    let m = s.recv_publish().await;
    assert_eq!((payload(&m), m.retain), ("kept", true));
}

#[tokio::test]
async fn unsubscribe_from_shared_group() {
    let b = TestBroker::start().await;
    let mut m1 = Raw::connected(b.addr, v5("m1")).await;
    let mut m2 = Raw::connected(b.addr, v5("m2")).await;
    m1.subscribe(1, "$share/g/sh/u", QoS::AtMostOnce).await;
    m2.subscribe(1, "$share/g/sh/u", QoS::AtMostOnce).await;
    let ack = m1.unsubscribe(2, &["$share/g/sh/u"]).await;
    assert_eq!(ack.reasons, vec![ReasonCode::Success]);
    let mut p = Raw::connected(b.addr, v5("pub")).await;
    for i in 0..4 {
        p.publish(publish("sh/u", &i.to_string(), QoS::AtMostOnce, 0))
            .await;
    }
    assert_eq!(drain(&mut m2).await.len(), 4);
    m1.expect_nothing().await;
}

#[tokio::test]
async fn no_local_on_shared_subscription_is_protocol_error() {
    let b = TestBroker::start().await;
    let mut s = Raw::connected(b.addr, v5("s")).await;
    s.send(roost::codec::Packet::Subscribe(subscribe(
        1,
        &[(
            "$share/g/nl",
            sub_opts(QoS::AtMostOnce, |o| o.no_local = true),
        )],
    )))
    .await;
    // [MQTT-3.8.3-4]: "It is a Protocol Error to set the No Local bit to 1
    // on a Shared Subscription".
    let got = s.expect_closed().await;
    match got.last() {
        Some(roost::codec::Packet::Disconnect(d)) => {
            assert_eq!(d.reason, ReasonCode::ProtocolError)
        }
        _ => panic!("expected DISCONNECT, got {got:?}"),
    }
}
