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

/// Each bridge's figures come under `$SYS/broker/bridge/<name>/`,
/// retained like the others; `last_error` is empty once there is none,
/// which clears its retained value rather than storing an empty one
/// ([MQTT-3.3.1-11]).
#[test]
fn bridge_figures_are_published_and_an_empty_error_is_not_retained() {
    use crate::stats::BridgeStats;
    use std::collections::BTreeMap;
    use std::sync::atomic::Ordering::Relaxed;
    let mut core = Core::new(Options {
        sys_interval: Some(Duration::from_secs(1)),
        ..Options::default()
    });
    let cloud = Arc::new(BridgeStats::new("cloud"));
    cloud.forwarded.store(3, Relaxed);
    cloud.reconnects.store(1, Relaxed);
    cloud.set_error(Some("connection refused".into()));
    *core.broker.stats.bridges.write().unwrap() = vec![cloud.clone()];
    core.advance(Duration::from_secs(1));
    let figures = |c: &mut Peer| {
        let mut got = BTreeMap::new();
        while let Some(p) = c.recv() {
            let Packet::Publish(p) = p else { continue };
            got.insert(p.topic.to_string(), payload(&p).to_owned());
        }
        got
    };
    let mut early = core.subscriber(v311("early"), "$SYS/broker/bridge/#");
    let at = |f: &str| format!("$SYS/broker/bridge/cloud/{f}");
    let retained = figures(&mut early);
    assert_eq!(retained.len(), 9, "{retained:?}");
    for (f, v) in [
        ("connected", "0"),
        ("queued", "0"),
        ("forwarded", "3"),
        ("reconnects", "1"),
        ("last_error", "connection refused"),
    ] {
        assert_eq!(retained[&at(f)], v, "{f}");
    }

    cloud.connected.store(1, Relaxed);
    cloud.set_error(None);
    core.advance(Duration::from_secs(1));
    let live = figures(&mut early);
    assert_eq!(
        (
            live[&at("connected")].as_str(),
            live[&at("last_error")].as_str()
        ),
        ("1", "")
    );
    let mut late = core.subscriber(v311("late"), "$SYS/broker/bridge/#");
    let retained = figures(&mut late);
    assert_eq!(retained.len(), 8, "no last_error: {retained:?}");
    assert!(!retained.contains_key(&at("last_error")));
    core.broker.retained.check_accounts();
    assert_eq!(core.broker.stats.snapshot().retained, 0, "$SYS not counted");
}
