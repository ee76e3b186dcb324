//! The inline client against real network clients: messages flow both
//! ways at every QoS, retained messages, persistent offline sessions, and
//! the ACL exemption.

mod common;
use common::*;
use roost::codec::{ProtocolVersion, QoS, ReasonCode};
use roost::hooks::{AclHook, BoxFuture, Client, Decision};
use roost::{InlineError, Options, PublishOptions, Server};
use std::time::Duration;

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
