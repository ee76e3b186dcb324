//! Will delay ([MQTT-3.1.3-9]) and the will's message expiry, moved here
//! from `tests/v5_session.rs`, where they waited for up to 3.5 s each.

use super::*;

fn with_will(mut c: Connect, payload: &str, delay: Option<u32>) -> Connect {
    let mut w = will("will/t", payload, QoS::AtLeastOnce, false);
    w.properties.will_delay_interval = delay;
    c.will = Some(w);
    c
}

#[test]
fn will_delay_postpones_the_will() {
    let mut core = Core::new(Options::default());
    let mut w = core.watcher("w", "will/t");
    let c = core.connected(with_will(v5_session("c", true, 30), "late", Some(2)));
    core.drop_connection(c);
    core.advance(Duration::from_millis(1500));
    w.expect_nothing(); // "will sent before its delay"
    core.advance(Duration::from_millis(500));
    let m = w.recv_publish();
    assert_eq!(payload(&m), "late");
}

#[test]
fn will_delay_is_counted_to_the_tick_after_it() {
    let mut core = Core::new(Options::default());
    let mut w = core.watcher("w", "will/t");
    core.advance(Duration::from_millis(300));
    let c = core.connected(with_will(v5_session("c", true, 30), "late", Some(2)));
    core.drop_connection(c);
    core.advance(Duration::from_millis(2000));
    w.expect_nothing();
    // Due 2 s after the drop; the tick after that sends it.
    core.advance(Duration::from_millis(700));
    assert_eq!(payload(&w.recv_publish()), "late");
}

#[test]
fn reconnect_within_will_delay_cancels_the_will() {
    let mut core = Core::new(Options::default());
    let mut w = core.watcher("w", "will/t");
    let c = core.connected(with_will(v5_session("c", true, 30), "cancelled", Some(2)));
    core.drop_connection(c);
    core.advance(Duration::from_millis(500));
    let (_c, ack) = core.connect(v5_session("c", false, 30));
    assert!(ack.session_present);
    // Past the delay (and a tick): still nothing ([MQTT-3.1.3-9]).
    core.advance(Duration::from_millis(3000));
    w.expect_nothing(); // "will sent although the client came back"
}

#[test]
fn will_delay_longer_than_session_expiry_fires_at_expiry() {
    let mut core = Core::new(Options::default());
    let mut w = core.watcher("w", "will/t");
    let c = core.connected(with_will(v5_session("c", true, 1), "expired", Some(30)));
    core.drop_connection(c);
    // The will goes at the earlier of the delay and the session's end.
    core.advance(Duration::from_millis(900));
    w.expect_nothing();
    core.advance(Duration::from_millis(2100));
    let m = w.recv_publish();
    assert_eq!(payload(&m), "expired");
    let (_c, ack) = core.connect(v5_session("c", false, 1));
    assert!(!ack.session_present);
}

#[test]
fn will_message_expiry_counts_from_publication() {
    let mut core = Core::new(Options::default());
    let mut w = core.watcher("w", "will/t");
    let mut c = with_will(v5("c"), "still fresh", None);
    c.will.as_mut().unwrap().properties.message_expiry_interval = Some(1);
    let c = core.connected(c);
    // Connected for longer than the will's expiry interval.
    core.advance(Duration::from_millis(1500));
    core.drop_connection(c);
    // 3.1.3.2.4: the interval is "sent as the Publication Expiry Interval
    // when the Server publishes the Will Message", so it starts then.
    let m = w.recv_publish();
    assert_eq!(payload(&m), "still fresh");
    assert_eq!(m.properties.message_expiry_interval, Some(1));
}
