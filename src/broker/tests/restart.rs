//! What time does to stored state while the broker is down, moved here
//! from `tests/persistence.rs`, where the test slept through the downtime.

use super::*;

fn persistent(version: ProtocolVersion, id: &str) -> Connect {
    let mut c = connect(version, id, false);
    if version.is_v5() {
        c.properties.session_expiry_interval = Some(3600);
    }
    c
}

#[test]
fn a_will_whose_delay_passed_while_down_is_published_at_start() {
    let store = Arc::new(MemoryStore::new());
    let mut core = Core::persistent(Options::default(), store);
    let mut c = persistent(ProtocolVersion::V5, "dying");
    let mut w = will("wills/dying", "gone", QoS::AtLeastOnce, true);
    w.properties.will_delay_interval = Some(1);
    c.will = Some(w);
    let d = core.connected(c);
    core.drop_connection(d);
    // Stopped before the delay ends: the will is still pending in the store.
    let mut core = core.restart(Options::default(), Duration::from_millis(1200));

    let mut r = core.connected(v5("reader"));
    core.subscribe(&mut r, "wills/#", QoS::AtLeastOnce);
    let m = r.recv_publish();
    assert_eq!(payload(&m), "gone");
}

#[test]
fn a_will_whose_delay_has_not_passed_waits_after_a_restart() {
    let store = Arc::new(MemoryStore::new());
    let mut core = Core::persistent(Options::default(), store);
    let mut c = persistent(ProtocolVersion::V5, "dying");
    let mut w = will("wills/dying", "gone", QoS::AtLeastOnce, false);
    w.properties.will_delay_interval = Some(10);
    c.will = Some(w);
    let d = core.connected(c);
    core.drop_connection(d);
    let mut core = core.restart(Options::default(), Duration::from_secs(4));
    let mut r = core.watcher("reader", "wills/#");
    core.advance(Duration::from_secs(5));
    r.expect_nothing();
    core.advance(Duration::from_secs(1));
    assert_eq!(payload(&r.recv_publish()), "gone");
}

#[test]
fn a_session_that_expired_while_down_is_gone() {
    let store = Arc::new(MemoryStore::new());
    let mut core = Core::persistent(Options::default(), store.clone());
    let mut c = persistent(ProtocolVersion::V5, "brief");
    c.properties.session_expiry_interval = Some(1);
    let mut s = core.connected(c.clone());
    core.subscribe(&mut s, "t", QoS::AtLeastOnce);
    core.disconnect(s);
    let mut core = core.restart(Options::default(), Duration::from_millis(1200));

    let (_s, ack) = core.connect(c);
    assert!(!ack.session_present, "expired during the downtime");
    let core = core.restart(Options::default(), Duration::ZERO);
    drop(core);
    let snap = store.load().unwrap();
    assert!(snap.messages.is_empty());
}
