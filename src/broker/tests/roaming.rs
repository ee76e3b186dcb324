//! Sessions that move between cluster nodes (`roaming`): the core's side,
//! driven by the events the cluster's edge sends.

use super::*;
use crate::broker::roaming::{Adopt, Replayed, SessionState};

/// Asks the core for every persistent session's state.
fn export(core: &mut Core) -> Vec<SessionState> {
    let (tx, mut rx) = tokio::sync::oneshot::channel();
    core.handle(Event::Export { reply: tx });
    rx.try_recv().expect("answered at once")
}

/// Asks the core to hand `client_id`'s session over.
fn release(core: &mut Core, client_id: &str, clean_start: bool) -> Option<SessionState> {
    let (tx, mut rx) = tokio::sync::oneshot::channel();
    core.handle(Event::Release {
        client_id: client_id.into(),
        clean_start,
        reply: tx,
    });
    rx.try_recv().expect("answered at once")
}

fn replayed(seq: u64, topic: &str, payload: &str) -> Replayed {
    Replayed {
        seq,
        publish: publish(topic, payload, QoS::AtLeastOnce, 1),
        publisher: Some("elsewhere".into()),
    }
}

#[test]
fn a_released_session_leaves_with_its_subscriptions_and_its_client_gets_0x8e() {
    let mut core = Core::new(Options::default());
    let mut dev = core.subscriber(v5_session("dev", true, 600), "cmd/#");
    let states = export(&mut core);
    assert_eq!(states.len(), 1);
    assert_eq!(states[0].subscriptions[0].filter, "cmd/#");
    let state = release(&mut core, "dev", false).expect("its state");
    assert_eq!(state.session.client_id, "dev");
    assert_eq!(state.subscriptions.len(), 1);
    assert_eq!(dev.expect_disconnect(), ReasonCode::SessionTakenOver);
    assert!(export(&mut core).is_empty(), "gone from this node");
    // A publish here no longer reaches it.
    let mut app = core.connected(v5("app"));
    let r = core.publish(&mut app, publish("cmd/x", "m", QoS::AtLeastOnce, 1));
    assert_eq!(r, ReasonCode::NoMatchingSubscribers);
}

#[test]
fn an_adopted_session_is_resumed_with_its_replay_and_its_cursor_follows_the_acks() {
    let mut core = Core::new(Options::default());
    let mut other = Core::new(Options::default());
    let _dev = other.subscriber(v5_session("dev", true, 600), "cmd/#");
    let state = release(&mut other, "dev", false).expect("its state");
    core.handle(Event::Adopt(Box::new(Adopt {
        state,
        replay: vec![
            replayed(5, "cmd/a", "five"),
            replayed(6, "other/b", "not for it"),
            replayed(7, "cmd/c", "seven"),
        ],
        upto: 9,
    })));
    // Away, owed 5 and 7: the cursor is the first of them.
    assert_eq!(export(&mut core)[0].cursor, 5);
    let (mut dev, ack) = core.connect(v5_session("dev", false, 600));
    assert!(ack.session_present);
    let first = dev.recv_publish();
    assert_eq!(payload(&first), "five");
    let second = dev.recv_publish();
    assert_eq!(payload(&second), "seven");
    dev.expect_nothing();
    core.ack(&dev, &first);
    let states = export(&mut core);
    assert_eq!(states[0].cursor, 7, "5 is acknowledged, 7 is still owed");
    assert!(states[0].moved);
    core.ack(&dev, &second);
    // Nothing owed: one past what this node routed (nothing yet).
    assert_eq!(export(&mut core)[0].cursor, 1);
    // Nothing moved since: the edge keeps what it wrote.
    assert!(!export(&mut core)[0].moved);
}

#[test]
fn a_session_started_over_elsewhere_ends_here_with_its_will() {
    let mut core = Core::new(Options::default());
    let mut w = core.watcher("w", "will/#");
    let mut c = v5_session("dev", true, 600);
    c.will = Some(will("will/dev", "gone", QoS::AtLeastOnce, false));
    let mut dev = core.connected(c);
    assert!(release(&mut core, "dev", true).is_none());
    assert_eq!(dev.expect_disconnect(), ReasonCode::SessionTakenOver);
    assert_eq!(payload(&w.recv_publish()), "gone");
}

#[test]
fn a_session_resumed_elsewhere_takes_its_will_along() {
    let mut core = Core::new(Options::default());
    let mut w = core.watcher("w", "will/#");
    let mut c = v5_session("dev", true, 600);
    let mut lw = will("will/dev", "moved", QoS::AtLeastOnce, false);
    lw.properties.will_delay_interval = Some(30);
    c.will = Some(lw);
    let _dev = core.connected(c);
    let state = release(&mut core, "dev", false).expect("its state");
    assert!(state.session.will.is_some(), "the will moves with it");
    // Past its delay: it did not fire here (the node that resumes the
    // session has it).
    core.advance(Duration::from_secs(40));
    w.expect_nothing();
}
