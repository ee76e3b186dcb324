//! Session expiry and message expiry, moved here from
//! `tests/v5_session.rs` and `tests/v5_publish.rs`, where they waited for
//! up to 3.5 s each.

use super::*;
use crate::codec::DisconnectProperties;

// ----- session expiry ----------------------------------------------------

#[test]
fn session_survives_within_expiry_and_is_gone_after() {
    let mut core = Core::new(Options::default());
    let mut s = core.connected(v5_session("s", true, 2));
    core.subscribe(&mut s, "exp/t", QoS::AtLeastOnce);
    core.disconnect(s);

    let mut p = core.connected(v5("pub"));
    assert_eq!(
        core.publish(&mut p, publish("exp/t", "queued", QoS::AtLeastOnce, 1)),
        ReasonCode::Success,
        "the offline session's subscription still matches"
    );
    core.advance(Duration::from_millis(500));
    let (mut s, ack) = core.connect(v5_session("s", false, 2));
    assert!(ack.session_present, "reconnected within the expiry");
    let m = s.recv_publish();
    assert_eq!(payload(&m), "queued");
    core.ack(&s, &m);
    core.disconnect(s);

    // Expires 2 s after the disconnect; the broker ticks once a second.
    core.advance(Duration::from_millis(3500));
    assert_eq!(
        core.publish(&mut p, publish("exp/t", "late", QoS::AtLeastOnce, 2)),
        ReasonCode::NoMatchingSubscribers,
        "the expired session's subscription is gone"
    );
    let (mut s, ack) = core.connect(v5_session("s", false, 2));
    assert!(!ack.session_present, "session expired");
    s.expect_nothing();
}

#[test]
fn a_session_lives_exactly_its_expiry_interval_to_the_next_tick() {
    let mut core = Core::new(Options::default());
    core.advance(Duration::from_millis(400));
    let s = core.connected(v5_session("s", true, 2));
    core.disconnect(s);
    // Disconnected at +0.4 s: ends at the first tick from +2.4 s on.
    core.advance(Duration::from_millis(2500));
    let (s, ack) = core.connect(v5_session("s", false, 2));
    assert!(ack.session_present, "2.5 s after: not yet at a tick");
    core.disconnect(s);
    core.advance(Duration::from_millis(2600));
    let (_s, ack) = core.connect(v5_session("s", false, 2));
    assert!(!ack.session_present, "expired at the tick after 2 s");
}

#[test]
fn disconnect_can_lengthen_session_expiry() {
    let mut core = Core::new(Options::default());
    let mut s = core.connected(v5_session("s", true, 1));
    core.subscribe(&mut s, "t", QoS::AtLeastOnce);
    core.send(
        &s,
        Packet::Disconnect(Disconnect {
            reason: ReasonCode::Success,
            properties: DisconnectProperties {
                session_expiry_interval: Some(60),
                ..Default::default()
            },
        }),
    );
    assert!(s.is_closed());
    // Well past the original 1 s expiry.
    core.advance(Duration::from_millis(2500));
    let (_s, ack) = core.connect(v5_session("s", false, 60));
    assert!(ack.session_present, "DISCONNECT set the expiry to 60 s");
}

// ----- message expiry ----------------------------------------------------

#[test]
fn expired_message_is_not_delivered_to_offline_session() {
    let mut core = Core::new(Options::default());
    let mut s = core.connected(v5_session("s", true, 60));
    core.subscribe(&mut s, "me/t", QoS::AtLeastOnce);
    core.disconnect(s);

    let mut p = core.connected(v5("pub"));
    core.publish(&mut p, expiring("me/t", "short", QoS::AtLeastOnce, 1, 1));
    core.publish(&mut p, publish("me/t", "forever", QoS::AtLeastOnce, 2));
    core.advance(Duration::from_millis(2000));

    let (mut s, ack) = core.connect(v5_session("s", false, 60));
    assert!(ack.session_present);
    let m = s.recv_publish();
    assert_eq!(payload(&m), "forever", "the expired message was dropped");
    core.ack(&s, &m);
    s.expect_nothing();
}

#[test]
fn expiry_interval_counts_down_while_queued() {
    let mut core = Core::new(Options::default());
    let mut s = core.connected(v5_session("s", true, 60));
    core.subscribe(&mut s, "me/t", QoS::AtLeastOnce);
    core.disconnect(s);
    let mut p = core.connected(v5("pub"));
    core.publish(&mut p, expiring("me/t", "x", QoS::AtLeastOnce, 1, 10));
    core.advance(Duration::from_millis(1200));
    let (mut s, _) = core.connect(v5_session("s", false, 60));
    let m = s.recv_publish();
    let left = m.properties.message_expiry_interval.expect("expiry sent");
    // [MQTT-3.3.2-6]: the interval sent is what is left of it.
    assert!((1..=9).contains(&left), "received with {left}");
    // 8.8 s left, rounded up.
    assert_eq!(left, 9);
}

#[test]
fn expired_retained_message_is_not_delivered() {
    let mut core = Core::new(Options::default());
    let mut p = core.connected(v5("pub"));
    let mut r = expiring("rex/short", "gone", QoS::AtLeastOnce, 1, 1);
    r.retain = true;
    core.publish(&mut p, r);
    let mut r = publish("rex/keep", "kept", QoS::AtLeastOnce, 2);
    r.retain = true;
    core.publish(&mut p, r);
    core.advance(Duration::from_millis(2000));
    let mut s = core.connected(v5("s"));
    core.subscribe(&mut s, "rex/#", QoS::AtLeastOnce);
    let m = s.recv_publish();
    assert_eq!(m.topic, "rex/keep");
    assert!(m.retain);
    core.ack(&s, &m);
    s.expect_nothing();
}

#[test]
fn message_expiring_behind_receive_maximum_is_dropped() {
    let mut core = Core::new(Options::default());
    let mut c = v5("s");
    c.properties.receive_maximum = std::num::NonZeroU16::new(1);
    let mut s = core.connected(c);
    core.subscribe(&mut s, "rmx", QoS::AtLeastOnce);
    let mut p = core.connected(v5("pub"));
    core.publish(&mut p, publish("rmx", "first", QoS::AtLeastOnce, 1));
    core.publish(&mut p, expiring("rmx", "short", QoS::AtLeastOnce, 2, 1));
    core.publish(&mut p, publish("rmx", "last", QoS::AtLeastOnce, 3));
    let first = s.recv_publish();
    assert_eq!(payload(&first), "first");
    core.advance(Duration::from_millis(1500));
    core.ack(&s, &first);
    let next = s.recv_publish();
    assert_eq!(payload(&next), "last", "the expired message was skipped");
}

#[test]
fn retained_message_carries_remaining_expiry() {
    let mut core = Core::new(Options::default());
    let mut p = core.connected(v5("pub"));
    let mut r = expiring("rexp", "x", QoS::AtLeastOnce, 1, 30);
    r.retain = true;
    core.publish(&mut p, r);
    core.advance(Duration::from_millis(1100));
    let mut s = core.connected(v5("s"));
    core.subscribe(&mut s, "rexp", QoS::AtLeastOnce);
    let m = s.recv_publish();
    assert!(m.retain);
    let left = m.properties.message_expiry_interval.expect("expiry sent");
    assert!((28..=29).contains(&left), "received with {left}");
    // 28.9 s left, rounded up.
    assert_eq!(left, 29);
}
