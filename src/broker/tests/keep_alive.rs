//! Keep-alive: a client silent for one and a half times its keep-alive is
//! disconnected ([MQTT-3.1.2-24]), any packet counts as activity, 0 turns
//! it off. Moved here from `tests/v311.rs` and `tests/v5_session.rs`, where
//! they slept for up to 4 s each; `tests/v5_session.rs` keeps
//! `client_keep_alive_is_enforced` to test the wiring over a socket.

use super::*;

const STEP: Duration = Duration::from_millis(100);

fn keep_alive(mut c: Connect, secs: u16) -> Connect {
    c.keep_alive = secs;
    c
}

#[test]
fn silent_client_is_disconnected_after_one_and_a_half_keep_alives() {
    // [MQTT-3.1.2-24]: 2 s keep alive, so closed after ~3 s; its will goes out.
    let mut core = Core::new(Options::default());
    let mut watcher = core.subscriber(v311("watcher"), "ka/#");
    let mut c = v311("silent");
    c.will = Some(will("ka/silent", "timed out", QoS::AtLeastOnce, false));
    let (mut silent, _) = core.connect(keep_alive(c, 2));
    let elapsed = core.advance_until_closed(&mut silent, STEP, Duration::from_secs(6));
    assert!(
        elapsed >= Duration::from_millis(2900) && elapsed <= Duration::from_millis(4800),
        "closed after {elapsed:?}"
    );
    // Within the 1.5 x 2 s and the next tick, never before.
    assert!(
        elapsed >= Duration::from_millis(3000) && elapsed <= Duration::from_millis(4000),
        "closed after {elapsed:?}"
    );
    let p = watcher.recv_publish();
    assert_eq!(payload(&p), "timed out");
    core.ack(&watcher, &p);
}

#[test]
fn pings_keep_a_connection_alive() {
    // [MQTT-3.12.4-1]: PINGREQ is answered with PINGRESP and counts as
    // activity.
    let mut core = Core::new(Options::default());
    let mut c = core.connected(keep_alive(v311("pinger"), 1));
    // 2.5 s is well past the 1.5 s timeout.
    for _ in 0..5 {
        core.advance(Duration::from_millis(500));
        core.send(&c, Packet::PingReq);
        assert_eq!(c.recv(), Some(Packet::PingResp));
    }
}

#[test]
fn any_packet_counts_as_activity_and_silence_after_it_still_ends() {
    // [MQTT-3.1.2-24] counts any control packet: QoS 0 PUBLISHes alone,
    // well past 1.5 x a 1 s keep-alive, keep the connection; once they
    // stop, the broker closes it within the 1.5 s plus its 1 s check.
    let mut core = Core::new(Options::default());
    let mut c = core.connected(keep_alive(v311("chatty"), 1));
    for i in 0..6 {
        core.advance(Duration::from_millis(500));
        let p = publish("chat", &i.to_string(), QoS::AtMostOnce, 0);
        core.send(&c, Packet::Publish(p));
    }
    core.send(&c, Packet::PingReq);
    assert_eq!(
        c.recv(),
        Some(Packet::PingResp),
        "still connected after 3 s"
    );
    let after = core.advance_until_closed(&mut c, STEP, Duration::from_secs(5));
    assert!(
        after >= Duration::from_millis(1400) && after <= Duration::from_millis(3500),
        "closed {after:?} after the last packet"
    );
    assert!(
        after >= Duration::from_millis(1500) && after <= Duration::from_millis(2500),
        "closed {after:?} after the last packet"
    );
}

#[test]
fn keep_alive_zero_never_times_out() {
    // 3.1.2.10: a keep alive of 0 turns the mechanism off. A
    // control client with keep alive 1 shows the timer would have fired.
    let mut core = Core::new(Options::default());
    let mut forever = core.connected(keep_alive(v311("forever"), 0));
    let mut control = core.connected(keep_alive(v311("control"), 1));
    core.advance_until_closed(&mut control, STEP, Duration::from_secs(5));
    // And for much longer than any keep-alive.
    core.advance(Duration::from_secs(3600));
    forever.expect_nothing();
    core.send(&forever, Packet::PingReq);
    assert_eq!(forever.recv(), Some(Packet::PingResp));
}

#[test]
fn server_keep_alive_is_advertised_and_enforced() {
    let mut opts = Options::default();
    opts.capabilities.server_keep_alive = Some(2);
    let mut core = Core::new(opts);
    let (mut c, ack) = core.connect(keep_alive(v5("idle"), 60));
    assert_eq!(ack.properties.server_keep_alive, Some(2));
    // Idle: the broker gives up after 1.5 x 2 s ([MQTT-3.1.2-22]).
    let waited = core.advance_until_closed(&mut c, STEP, Duration::from_secs(6));
    assert_eq!(c.expect_disconnect(), ReasonCode::KeepAliveTimeout);
    assert!(
        waited >= Duration::from_millis(2500) && waited <= Duration::from_millis(4500),
        "disconnected after {waited:?}"
    );
}

#[test]
fn pings_keep_a_server_keep_alive_connection_open() {
    let mut opts = Options::default();
    opts.capabilities.server_keep_alive = Some(1);
    let mut core = Core::new(opts);
    let (mut c, ack) = core.connect(v5("busy"));
    assert_eq!(ack.properties.server_keep_alive, Some(1));
    for _ in 0..5 {
        core.advance(Duration::from_millis(700));
        core.send(&c, Packet::PingReq);
        assert_eq!(c.recv(), Some(Packet::PingResp));
    }
}

/// A connection busy with what its client sent (its reads paused behind a
/// congested subscriber, or waiting for the core) is not silent, however
/// long that takes; once it waits for the client again, the count starts.
#[test]
fn a_connection_busy_with_its_client_is_not_silent() {
    let mut core = Core::new(Options::default());
    let mut c = core.connected(keep_alive(v5("busy"), 1));
    c.outbox.heard();
    core.advance(Duration::from_secs(10));
    core.send(&c, Packet::PingReq);
    assert_eq!(c.recv(), Some(Packet::PingResp), "still connected");
    let after = core.advance_until_closed(&mut c, STEP, Duration::from_secs(5));
    assert!(
        after <= Duration::from_millis(2500),
        "closed after {after:?}"
    );
}
