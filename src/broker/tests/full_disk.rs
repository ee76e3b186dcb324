//! While the store's writes fail (a full disk), the core refuses work that
//! needs storage before it changes anything, and lets the rest through.
//! The commit task raises and lowers the flag; here the test does.

use super::*;
use std::sync::atomic::Ordering::Relaxed;

fn persistent(version: ProtocolVersion, id: &str) -> Connect {
    let mut c = connect(version, id, false);
    if version.is_v5() {
        c.properties.session_expiry_interval = Some(3600);
    }
    c
}

fn set_failing(core: &Core, failing: bool) {
    core.broker
        .stats
        .storage_failing
        .store(u64::from(failing), Relaxed);
}

fn retained(topic: &str, payload: &str, qos: QoS, pid: u16) -> Publish {
    Publish {
        retain: true,
        ..publish(topic, payload, qos, pid)
    }
}

#[test]
fn publishes_that_need_storage_are_refused_before_routing_the_rest_flows() {
    let store = Arc::new(MemoryStore::new());
    let mut core = Core::persistent(Options::default(), store.clone());
    // A persistent subscriber, away, and a clean one, connected.
    let away = core.subscriber(persistent(ProtocolVersion::V5, "away"), "stored/#");
    core.disconnect(away);
    let mut live = core.watcher("live", "#");
    set_failing(&core, true);

    let mut p5 = core.connected(v5("p5"));
    assert_eq!(
        core.publish(&mut p5, publish("stored/a", "x", QoS::AtLeastOnce, 1)),
        ReasonCode::QuotaExceeded
    );
    let pid = PacketId::new(2).unwrap();
    core.send(
        &p5,
        Packet::Publish(publish("stored/b", "y", QoS::ExactlyOnce, 2)),
    );
    match p5.recv() {
        Some(Packet::PubRec(r)) if r.packet_id == pid => {
            assert_eq!(r.reason, ReasonCode::QuotaExceeded)
        }
        other => panic!("expected PUBREC, got {other:?}"),
    }
    assert_eq!(
        core.publish(&mut p5, retained("plain", "r", QoS::AtLeastOnce, 3)),
        ReasonCode::QuotaExceeded
    );
    // Not routed, not even to the live subscriber that needs no storage.
    live.expect_nothing();

    // 3.1.1 has no negative PUBACK: closed without one.
    let mut p3 = core.connected(v311("p3"));
    core.send(
        &p3,
        Packet::Publish(publish("stored/c", "z", QoS::AtLeastOnce, 1)),
    );
    assert!(p3.is_closed());
    assert!(p3.recv().is_none(), "no PUBACK");
    assert_eq!(core.broker.stats.snapshot().storage_refused, 4);

    // What needs no storage flows: QoS 0 anywhere, QoS 1 to clean sessions.
    core.publish(&mut p5, publish("stored/d", "qos0", QoS::AtMostOnce, 0));
    assert_eq!(payload(&live.recv_publish()), "qos0");
    let m = {
        assert_eq!(
            core.publish(&mut p5, publish("plain", "qos1", QoS::AtLeastOnce, 4)),
            ReasonCode::Success
        );
        live.recv_publish()
    };
    assert_eq!(payload(&m), "qos1");
    core.ack(&live, &m);
    // A retained QoS 0 message is delivered, not retained.
    core.publish(&mut p5, retained("plain", "kept?", QoS::AtMostOnce, 0));
    assert_eq!(payload(&live.recv_publish()), "kept?");
    assert!(core.broker.retained.tree.get("plain").is_none());
    let snap = store.load().unwrap();
    assert!(
        snap.messages.is_empty() && snap.retained.is_empty(),
        "{snap:?}"
    );
    assert!(snap
        .sessions
        .iter()
        .all(|s| s.outbound.is_empty() && s.inbound_qos2.is_empty()));

    set_failing(&core, false);
    assert_eq!(
        core.publish(&mut p5, publish("stored/e", "after", QoS::AtLeastOnce, 5)),
        ReasonCode::Success
    );
    let mut away = core.connected(persistent(ProtocolVersion::V5, "away"));
    assert_eq!(payload(&away.recv_publish()), "after");
    away.expect_nothing();
}

#[test]
fn subscribe_and_connect_that_need_storage_are_refused() {
    let store = Arc::new(MemoryStore::new());
    let mut core = Core::persistent(Options::default(), store.clone());
    let mut stored = core.connected(persistent(ProtocolVersion::V5, "stored"));
    let mut stored3 = core.connected(persistent(ProtocolVersion::V3_1_1, "stored3"));
    let kept = core.subscriber(persistent(ProtocolVersion::V5, "kept"), "k");
    core.disconnect(kept);
    set_failing(&core, true);

    assert_eq!(
        core.subscribe(&mut stored, "t", QoS::AtLeastOnce),
        ReasonCode::QuotaExceeded
    );
    assert_eq!(
        core.subscribe(&mut stored3, "t", QoS::AtLeastOnce),
        ReasonCode::UnspecifiedError
    );
    // A clean session's subscription is not stored.
    let mut clean = core.connected(v5("clean"));
    assert_eq!(
        core.subscribe(&mut clean, "t", QoS::AtLeastOnce),
        ReasonCode::GrantedQos1
    );

    // Creating, resuming or ending a stored session is refused.
    for c in [
        persistent(ProtocolVersion::V5, "new"),
        persistent(ProtocolVersion::V3_1_1, "new3"),
        persistent(ProtocolVersion::V5, "kept"),
        v5("kept"),
    ] {
        let (mut peer, ack) = core.connect(c);
        assert_eq!(ack.reason, ReasonCode::ServerUnavailable);
        assert!(peer.is_closed());
    }
    assert_eq!(core.broker.stats.snapshot().storage_refused, 6);
    let snap = store.load().unwrap();
    let ids: Vec<_> = snap
        .sessions
        .iter()
        .map(|s| s.session.client_id.as_str())
        .collect();
    assert_eq!(ids, ["kept", "stored", "stored3"]);
    assert!(snap
        .sessions
        .iter()
        .all(|s| s.subscriptions.len() == usize::from(s.session.client_id == "kept")));

    set_failing(&core, false);
    assert_eq!(
        core.subscribe(&mut stored, "t", QoS::AtLeastOnce),
        ReasonCode::GrantedQos1
    );
    let (_kept, ack) = core.connect(persistent(ProtocolVersion::V5, "kept"));
    assert!(ack.session_present);
}
