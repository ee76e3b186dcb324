//! Bridges between two real brokers in this process, over real sockets:
//! messages forwarded and received at every QoS with prefixes, loops
//! prevented, the state topic, link loss and the stats.

mod common;
use common::*;
use roost::bridge::{Bridge, Protocol, Remote, Rule};
use roost::codec::{ProtocolVersion, QoS, ReasonCode};
use roost::{Options, Server};
use std::time::Duration;

/// An edge broker bridged to `remote` with `bridge`.
async fn edge(bridge: Bridge) -> TestBroker {
    let server = Server::new(Options::default()).bridge(bridge).unwrap();
    TestBroker::with_server(server).await
}

fn to(remote: &TestBroker) -> Remote {
    Remote::parse(&format!("mqtt://{}", remote.addr)).unwrap()
}

fn cloud(remote: &TestBroker, protocol: Protocol) -> Bridge {
    Bridge::new("cloud", to(remote))
        .protocol(protocol)
        .client_id(unique("gw"))
        .reconnect(Duration::from_millis(50), Duration::from_millis(200))
        .forward(Rule::new("devices/#", QoS::ExactlyOnce).remote_prefix("site-1/"))
        .subscribe(Rule::new("commands/#", QoS::ExactlyOnce).remote_prefix("site-1/"))
}

/// Waits until the bridge's stats say it is connected.
async fn connected(b: &TestBroker) {
    for _ in 0..200 {
        if b.stats
            .snapshot()
            .bridges
            .first()
            .is_some_and(|s| s.connected)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("bridge did not connect: {:?}", b.stats.snapshot().bridges);
}

async fn both_ways(protocol: Protocol) {
    let remote = TestBroker::start().await;
    let edge = edge(cloud(&remote, protocol)).await;
    connected(&edge).await;
    let mut up = Raw::connected(remote.addr, v5("cloud-app")).await;
    up.subscribe(1, "site-1/devices/#", QoS::ExactlyOnce).await;
    let mut device = Raw::connected(edge.addr, v5("device")).await;
    device.subscribe(1, "commands/#", QoS::ExactlyOnce).await;
    // Give the bridge's remote SUBSCRIBE time to land.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
        .into_iter()
        .enumerate()
    {
        let pid = i as u16 + 10;
        let text = format!("up {qos:?}");
        assert!(device
            .publish(publish("devices/t1", &text, qos, pid))
            .await
            .is_success());
        let m = up.recv_publish().await;
        assert_eq!(
            (m.topic.as_str(), payload(&m), m.qos_pid.qos()),
            ("site-1/devices/t1", text.as_str(), qos)
        );
        up.ack(&m).await;

        let text = format!("down {qos:?}");
        assert!(up
            .publish(publish("site-1/commands/reboot", &text, qos, pid))
            .await
            .is_success());
        let m = device.recv_publish().await;
        assert_eq!(
            (m.topic.as_str(), payload(&m), m.qos_pid.qos()),
            ("commands/reboot", text.as_str(), qos)
        );
        device.ack(&m).await;
    }
    // Nothing echoes: the device's command is not sent back up, the
    // cloud's telemetry not back down.
    up.expect_nothing().await;
    device.expect_nothing().await;
    let s = &edge.stats.snapshot().bridges[0];
    assert_eq!((s.forwarded, s.received, s.inflight), (3, 3, 0), "{s:?}");
    edge.stop().await;
    remote.stop().await;
}

#[tokio::test]
async fn messages_cross_both_ways_at_every_qos_over_5() {
    both_ways(Protocol::V5).await;
}

#[tokio::test]
async fn messages_cross_both_ways_at_every_qos_over_3_1_1() {
    both_ways(Protocol::V3_1_1).await;
}

#[tokio::test]
async fn network_clients_cannot_take_a_bridge_session() {
    let b = TestBroker::start().await;
    let (_, ack) = Raw::connect(b.addr, v5("$bridge/cloud")).await;
    assert_eq!(ack.reason, ReasonCode::ClientIdentifierNotValid);
    let (_, ack) = Raw::connect(b.addr, connect(ProtocolVersion::V3_1_1, "$bridge/x", true)).await;
    assert!(!ack.reason.is_success());
}
