//! `$SYS` updates come with the core's ticks: cases that wait for one run
//! here (moved from `tests/v311.rs`, where they waited a real second).

use super::*;

#[test]
fn dollar_topics_are_not_matched_by_leading_wildcards() {
    // [MQTT-4.7.2-1]
    let mut core = Core::new(Options {
        sys_interval: Some(Duration::from_secs(1)),
        ..Options::default()
    });
    let mut hash = core.subscriber(v311("hash"), "#");
    let mut plus = core.subscriber(v311("plus"), "+/x");
    let mut sys_plus = core.subscriber(v311("sysplus"), "+/broker/#");
    let mut dollar = core.subscriber(v311("dollar"), "$app/#");

    let mut publ = core.connected(v311("pub"));
    core.publish(&mut publ, publish("$app/x", "dollar", QoS::AtLeastOnce, 1));
    let p = dollar.recv_publish();
    assert_eq!(p.topic, "$app/x", "an explicit $ filter matches");
    core.ack(&dollar, &p);

    // Wait for a live $SYS update (RETAIN=0 on forwarding) on an explicit
    // subscription: by then "#" and "+/broker/#" would have seen it too.
    let mut sys = core.subscriber(v311("sys"), "$SYS/#");
    while sys.recv().is_some() {} // the retained ones
    core.advance(Duration::from_secs(1));
    let p = sys.recv_publish();
    assert!(!p.retain);
    for c in [&mut hash, &mut plus, &mut sys_plus] {
        c.expect_nothing();
    }
}
