//! The inline client against real network clients: messages flow both
//! ways at every QoS, retained messages, persistent offline sessions, the
//! ACL exemption, several subscriptions to one filter with their own
//! identifiers, the publisher's client id, and the stats.

mod common;
use common::*;
use roost::codec::{ProtocolVersion, QoS, ReasonCode};
use roost::hooks::{AclHook, BoxFuture, Client, Decision};
use roost::{InlineError, InlineMessage, Options, PublishOptions, Server, Subscription};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn id(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap()
}

/// The subscription's next message, within `WAIT`.
async fn next(sub: &mut Subscription) -> InlineMessage {
    tokio::time::timeout(WAIT, sub.recv())
        .await
        .unwrap_or_else(|_| panic!("nothing on {} within {WAIT:?}", sub.filter()))
        .unwrap_or_else(|| panic!("{} ended", sub.filter()))
}

fn text(m: &InlineMessage) -> &str {
    std::str::from_utf8(&m.payload).unwrap()
}

#[tokio::test]
async fn inline_publishes_reach_network_subscribers_at_every_qos() {
    let server = Server::new(Options::default());
    let app = server.inline_client("app");
    let b = TestBroker::with_server(server).await;
    let mut s = Raw::connected(b.addr, v311("s")).await;
    s.subscribe(1, "cmd/#", QoS::ExactlyOnce).await;
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        app.publish("cmd/1", format!("{qos:?}"), qos).await.unwrap();
        let m = s.recv_publish().await;
        assert_eq!(
            (payload(&m), m.qos_pid.qos()),
            (format!("{qos:?}").as_str(), qos)
        );
        s.ack(&m).await;
    }
    // Retained from the inline client is served to later subscribers.
    app.publish_with(
        "cfg/x",
        "v1",
        QoS::AtLeastOnce,
        PublishOptions {
            retain: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let mut late = Raw::connected(b.addr, v5("late")).await;
    late.subscribe(1, "cfg/#", QoS::AtMostOnce).await;
    let m = late.recv_publish().await;
    assert!(m.retain);
    assert_eq!(payload(&m), "v1");
}

#[tokio::test]
async fn network_publishes_reach_inline_subscriptions_and_callbacks() {
    let server = Server::new(Options::default());
    let app = server.inline_client("app");
    let b = TestBroker::with_server(server).await;
    let mut stream = app
        .subscribe("telemetry/+", QoS::ExactlyOnce)
        .await
        .unwrap();
    let (tx, mut called) = tokio::sync::mpsc::unbounded_channel();
    app.subscribe_with("alerts/#", QoS::AtLeastOnce, move |m| {
        let _ = tx.send(m);
    })
    .await
    .unwrap();

    let mut dev = Raw::connected(b.addr, v5("dev")).await;
    for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
        .into_iter()
        .enumerate()
    {
        dev.publish(publish("telemetry/t", &format!("m{i}"), qos, 1 + i as u16))
            .await;
        let m = tokio::time::timeout(WAIT, stream.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&m.payload[..], format!("m{i}").as_bytes());
        assert_eq!(m.qos, qos);
    }
    dev.publish(publish("alerts/fire", "!", QoS::AtLeastOnce, 9))
        .await;
    let m = tokio::time::timeout(WAIT, called.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.topic, "alerts/fire");

    stream.unsubscribe().await.unwrap();
    dev.publish(publish("telemetry/t", "after", QoS::AtLeastOnce, 20))
        .await;
    tokio::time::sleep(QUIET).await;
    assert_eq!(b.stats.snapshot().subscriptions, 1, "only alerts/# is left");
}

#[tokio::test]
async fn inline_publishes_are_queued_for_offline_persistent_sessions() {
    let server = Server::new(Options::default());
    let app = server.inline_client("app");
    let b = TestBroker::with_server(server).await;
    let mut c = v5("device").with_clean_start(false);
    c.properties.session_expiry_interval = Some(600);
    let mut d = Raw::connected(b.addr, c.clone()).await;
    d.subscribe(1, "devices/device/cmd", QoS::AtLeastOnce).await;
    d.disconnect().await;
    app.publish("devices/device/cmd", "reboot", QoS::AtLeastOnce)
        .await
        .unwrap();
    let (mut d, ack) = Raw::connect(b.addr, c).await;
    assert!(ack.session_present);
    assert_eq!(payload(&d.recv_publish().await), "reboot");
}

struct DenyAll;
impl AclHook for DenyAll {
    fn can_publish<'a>(&'a self, _: &'a Client, _: &'a str) -> BoxFuture<'a, Decision> {
        Box::pin(std::future::ready(Decision::Deny))
    }
}

#[tokio::test]
async fn the_inline_client_is_acl_exempt_unless_configured() {
    let server = Server::new(Options::default()).acl_hook(DenyAll);
    let app = server.inline_client("app");
    let b = TestBroker::with_server(server).await;
    app.publish("t", "ok", QoS::AtLeastOnce).await.unwrap();
    let mut net = Raw::connected(b.addr, connect(ProtocolVersion::V5, "n", true)).await;
    assert_eq!(
        net.publish(publish("t", "no", QoS::AtLeastOnce, 1)).await,
        ReasonCode::NotAuthorized
    );
    b.stop().await;

    let server = Server::new(Options::default())
        .acl_hook(DenyAll)
        .acl_applies_to_inline_client(true);
    let app = server.inline_client("app");
    let _b = TestBroker::with_server(server).await;
    assert_eq!(
        app.publish("t", "no", QoS::AtLeastOnce).await,
        Err(InlineError::Refused(ReasonCode::NotAuthorized))
    );
    assert_eq!(
        app.publish("a/+", "x", QoS::AtMostOnce).await,
        Err(InlineError::InvalidTopic)
    );
}

#[tokio::test]
async fn a_stopped_broker_is_an_error_not_a_hang() {
    let server = Server::new(Options::default());
    let app = server.inline_client("app");
    let b = TestBroker::with_server(server).await;
    app.publish("t", "x", QoS::AtLeastOnce).await.unwrap();
    b.stop().await;
    let r = tokio::time::timeout(
        Duration::from_secs(5),
        app.publish("t", "x", QoS::AtLeastOnce),
    )
    .await;
    assert!(matches!(r, Ok(Err(InlineError::Stopped))), "{r:?}");
}

#[tokio::test]
async fn two_subscriptions_to_one_filter_each_get_every_message_once_with_their_id() {
    let server = Server::new(Options::default());
    let app = server.inline_client("app");
    let b = TestBroker::with_server(server).await;
    let mut dev = Raw::connected(b.addr, v5("dev")).await;
    dev.publish(retained("plant/boiler", "hot", QoS::AtLeastOnce, 1))
        .await;

    let mut audit = app
        .subscribe_id("plant/#", QoS::AtLeastOnce, id(1))
        .await
        .unwrap();
    let r = next(&mut audit).await;
    assert!(r.retain);
    assert_eq!((text(&r), r.subscription_id), ("hot", Some(id(1))));
    // A second subscription to the same filter, at another QoS: it gets
    // the retained message too, and the first does not get it again.
    let mut alarms = app
        .subscribe_id("plant/#", QoS::AtMostOnce, id(2))
        .await
        .unwrap();
    assert_eq!(alarms.id(), Some(id(2)));
    let r = next(&mut alarms).await;
    assert!(r.retain);
    assert_eq!((text(&r), r.subscription_id), ("hot", Some(id(2))));

    for (i, payload) in ["m1", "m2", "m3"].into_iter().enumerate() {
        dev.publish(publish("plant/a", payload, QoS::AtLeastOnce, 2 + i as u16))
            .await;
    }
    // In order and once each: the next three of each are exactly these.
    for (sub, n, qos) in [
        (&mut audit, 1, QoS::AtLeastOnce),
        (&mut alarms, 2, QoS::AtMostOnce),
    ] {
        for payload in ["m1", "m2", "m3"] {
            let m = next(sub).await;
            assert_eq!((text(&m), m.retain, m.qos), (payload, false, qos));
            assert_eq!(m.subscription_id, Some(id(n)));
            assert_eq!(m.properties.subscription_identifiers, vec![id(n)]);
            assert_eq!(m.publisher.as_deref(), Some("dev"));
        }
    }
    // The broker holds one subscription for the two.
    assert_eq!(b.stats.snapshot().subscriptions, 1);

    // Ending one leaves the other; ending the last ends the broker's.
    app.unsubscribe_id("plant/#", id(1)).await.unwrap();
    assert_eq!(
        tokio::time::timeout(WAIT, audit.recv()).await.unwrap(),
        None
    );
    dev.publish(publish("plant/b", "m4", QoS::AtLeastOnce, 9))
        .await;
    assert_eq!(text(&next(&mut alarms).await), "m4");
    assert_eq!(b.stats.snapshot().subscriptions, 1);
    alarms.unsubscribe().await.unwrap();
    assert_eq!(b.stats.snapshot().subscriptions, 0);
    assert_eq!(
        dev.publish(publish("plant/c", "m5", QoS::AtLeastOnce, 10))
            .await,
        ReasonCode::NoMatchingSubscribers
    );
}

#[tokio::test]
async fn a_subscription_ends_alone_and_others_of_its_filter_go_on() {
    let server = Server::new(Options::default());
    let app = server.inline_client("app");
    let b = TestBroker::with_server(server).await;
    let plain = app.subscribe("t", QoS::AtLeastOnce).await.unwrap();
    let mut labelled = app
        .subscribe_id("t", QoS::AtLeastOnce, id(5))
        .await
        .unwrap();
    let (tx, mut called) = tokio::sync::mpsc::unbounded_channel();
    app.subscribe_id("t", QoS::AtLeastOnce, id(6))
        .await
        .unwrap()
        .spawn_handler(move |m| {
            let _ = tx.send(m);
        });
    plain.unsubscribe().await.unwrap();
    // Nothing to end is no error, and ends nothing.
    app.unsubscribe_id("t", id(99)).await.unwrap();
    app.publish("t", "x", QoS::AtLeastOnce).await.unwrap();
    let m = next(&mut labelled).await;
    assert_eq!((text(&m), m.subscription_id), ("x", Some(id(5))));
    assert_eq!(m.publisher.as_deref(), Some("app"));
    let m = tokio::time::timeout(WAIT, called.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.subscription_id, Some(id(6)));
    // `unsubscribe(filter)` ends them all.
    app.unsubscribe("t").await.unwrap();
    assert_eq!(
        tokio::time::timeout(WAIT, labelled.recv()).await.unwrap(),
        None
    );
    assert_eq!(
        tokio::time::timeout(WAIT, called.recv()).await.unwrap(),
        None
    );
    assert_eq!(b.stats.snapshot().subscriptions, 0);
}

#[tokio::test]
async fn the_publishers_client_id_arrives() {
    let server = Server::new(Options::default());
    let app = server.inline_client("app");
    let other = server.inline_client("other-app");
    let b = TestBroker::with_server(server).await;
    let mut sub = app.subscribe("in/#", QoS::AtLeastOnce).await.unwrap();

    // A client we did not write.
    let mut o = rumqttc::MqttOptions::new("sensor-7", "127.0.0.1", b.addr.port());
    o.set_clean_session(true);
    let (client, mut events) = rumqttc::AsyncClient::new(o, 10);
    tokio::spawn(async move { while events.poll().await.is_ok() {} });
    client
        .publish("in/temp", rumqttc::QoS::AtLeastOnce, true, "21")
        .await
        .unwrap();
    let m = next(&mut sub).await;
    assert_eq!((text(&m), m.publisher.as_deref()), ("21", Some("sensor-7")));

    // Another inline client.
    other.publish("in/x", "y", QoS::ExactlyOnce).await.unwrap();
    let m = next(&mut sub).await;
    assert_eq!((text(&m), m.publisher.as_deref()), ("y", Some("other-app")));

    // A retained message keeps its publisher while the broker holds it.
    let mut late = other.subscribe("in/temp", QoS::AtMostOnce).await.unwrap();
    let m = next(&mut late).await;
    assert!(m.retain);
    assert_eq!(m.publisher.as_deref(), Some("sensor-7"));
}

#[tokio::test]
async fn inline_deliveries_count_as_messages_sent() {
    let server = Server::new(Options::default());
    let app = server.inline_client("app");
    let b = TestBroker::with_server(server).await;
    let mut one = app
        .subscribe_id("c/#", QoS::AtLeastOnce, id(1))
        .await
        .unwrap();
    let mut two = app
        .subscribe_id("c/+", QoS::AtLeastOnce, id(2))
        .await
        .unwrap();
    let before = b.stats.snapshot().messages_sent;
    let mut dev = Raw::connected(b.addr, v5("dev")).await;
    for i in 0..3u16 {
        dev.publish(publish("c/x", "v", QoS::AtLeastOnce, 1 + i))
            .await;
    }
    for _ in 0..3 {
        next(&mut one).await;
        next(&mut two).await;
    }
    // One message delivered to the inline client per publish (carrying
    // both subscriptions), however many local subscriptions share it; no
    // network client subscribes.
    let s = b.stats.snapshot();
    assert_eq!(s.messages_sent - before, 3);
    assert_eq!(s.subscriptions, 2);
}

/// Denies subscriptions to `secret/#` always, and every subscription while
/// `closed` is set.
struct Guard {
    closed: Arc<AtomicBool>,
}

impl AclHook for Guard {
    fn can_subscribe<'a>(&'a self, _: &'a Client, filter: &'a str) -> BoxFuture<'a, Decision> {
        let deny = filter.starts_with("secret/") || self.closed.load(Ordering::Relaxed);
        Box::pin(std::future::ready(if deny {
            Decision::Deny
        } else {
            Decision::Allow
        }))
    }
}

#[tokio::test]
async fn the_acl_judges_each_inline_subscription_when_it_applies() {
    let closed = Arc::new(AtomicBool::new(false));
    let server = Server::new(Options::default())
        .acl_hook(Guard {
            closed: closed.clone(),
        })
        .acl_applies_to_inline_client(true);
    let app = server.inline_client("app");
    let b = TestBroker::with_server(server).await;
    assert_eq!(
        app.subscribe("secret/#", QoS::AtLeastOnce)
            .await
            .unwrap_err(),
        InlineError::Refused(ReasonCode::NotAuthorized)
    );
    let mut first = app
        .subscribe_id("open/#", QoS::AtLeastOnce, id(1))
        .await
        .unwrap();
    // A second subscription to the filter, refused: the first goes on.
    closed.store(true, Ordering::Relaxed);
    assert_eq!(
        app.subscribe_id("open/#", QoS::AtLeastOnce, id(2))
            .await
            .unwrap_err(),
        InlineError::Refused(ReasonCode::NotAuthorized)
    );
    let mut dev = Raw::connected(b.addr, v5("dev")).await;
    assert_eq!(
        dev.publish(publish("secret/a", "s", QoS::AtLeastOnce, 1))
            .await,
        ReasonCode::NoMatchingSubscribers,
        "the refused filter is not subscribed"
    );
    dev.publish(publish("open/a", "o", QoS::AtLeastOnce, 2))
        .await;
    let m = next(&mut first).await;
    assert_eq!((text(&m), m.subscription_id), ("o", Some(id(1))));
    assert_eq!(b.stats.snapshot().subscriptions, 1);
}
