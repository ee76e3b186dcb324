//! Share groups served through the cluster (see `groups`), in virtual
//! time: what the core tells the cluster's router about a group's
//! connected members, the SUBACK that waits for the router, and the
//! targeted delivery of what the router pulled.

use super::*;
use crate::codec::SubscriptionOptions;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

fn clustered() -> (Core, UnboundedReceiver<GroupInterest>) {
    let mut core = Core::new(Options::default());
    let (tx, rx) = unbounded_channel();
    core.broker.serve_groups_through_cluster(tx);
    (core, rx)
}

fn join(core: &mut Core, peer: &Peer, filter: &str) {
    core.send(
        peer,
        Packet::Subscribe(Subscribe {
            packet_id: PacketId::new(1).unwrap(),
            filters: vec![(filter.into(), SubscriptionOptions::new(QoS::AtLeastOnce))],
            subscription_identifier: None,
            user_properties: Vec::new(),
        }),
    );
}

/// The next interest: (group, filter, members, whether a SUBACK waits).
fn next(rx: &mut UnboundedReceiver<GroupInterest>) -> (String, String, usize, bool) {
    let i = rx.try_recv().expect("an interest for the router");
    (
        i.group.to_string(),
        i.filter.to_string(),
        i.members,
        i.ready.is_some(),
    )
}

/// The router hands the core `topic` for group `g` on `filter`; returns
/// the outcome it is answered.
fn hand(core: &mut Core, router: &mut Peer, filter: &str, topic: &str, pid: u16) -> ReasonCode {
    core.handle(Event::GroupPublish {
        conn: router.conn,
        publish: publish(topic, "m", QoS::AtLeastOnce, pid),
        qos: QoS::AtLeastOnce,
        group: "g".into(),
        filter: filter.into(),
        last: false,
    });
    match router.recv() {
        Some(Packet::PubAck(r)) if r.packet_id.get() == pid => r.reason,
        other => panic!("expected PUBACK {pid}, got {other:?}"),
    }
}

#[test]
fn the_suback_waits_until_the_router_pulls_for_the_group() {
    let (mut core, mut rx) = clustered();
    let mut m1 = core.connected(v5("m1"));
    join(&mut core, &m1, "$share/g/t/#");
    let interest = rx.try_recv().expect("the router is told");
    assert_eq!(
        (
            interest.group.as_str(),
            interest.filter.as_str(),
            interest.members
        ),
        ("g", "t/#", 1)
    );
    assert!(interest.ready.is_some());
    assert!(rx.try_recv().is_err(), "one interest per change");
    m1.expect_nothing();
    core.send(&m1, Packet::PingReq); // what follows the SUBACK waits too
    m1.expect_nothing();
    // The router pulls: it lets the SUBACK go.
    drop(interest);
    assert!(matches!(m1.recv(), Some(Packet::SubAck(_))));
    assert!(matches!(m1.recv(), Some(Packet::PingResp)));
    // A second member: told too (its SUBACK waits as well, the group may
    // still be joining), with the count.
    let mut m2 = core.connected(v5("m2"));
    join(&mut core, &m2, "$share/g/t/#");
    assert_eq!(next(&mut rx).2, 2);
    assert!(matches!(m2.recv(), Some(Packet::SubAck(_))));
}

#[test]
fn routing_skips_groups_and_the_router_delivers_to_one_connected_member() {
    let (mut core, mut rx) = clustered();
    let mut router = core.connected(v5("router"));
    let mut m1 = core.connected(v5_session("m1", true, 600));
    join(&mut core, &m1, "$share/g/t/#");
    let mut m2 = core.connected(v5("m2"));
    join(&mut core, &m2, "$share/g/t/#");
    while rx.try_recv().is_ok() {}
    assert!(matches!(m1.recv(), Some(Packet::SubAck(_))));
    assert!(matches!(m2.recv(), Some(Packet::SubAck(_))));
    // A local publish does not reach the group by itself.
    let mut p = core.connected(v5("p"));
    assert_eq!(
        core.publish(&mut p, publish("t/x", "local", QoS::AtLeastOnce, 1)),
        ReasonCode::NoMatchingSubscribers
    );
    m1.expect_nothing();
    m2.expect_nothing();
    // What the router hands over goes to one member, round-robin.
    assert_eq!(
        hand(&mut core, &mut router, "t/#", "t/x", 1),
        group_outcome::DELIVERED
    );
    assert_eq!(
        hand(&mut core, &mut router, "t/#", "t/y", 2),
        group_outcome::DELIVERED
    );
    let a = m1.recv_publish();
    let b = m2.recv_publish();
    assert_ne!(a.topic, b.topic);
    core.ack(&m1, &a);
    core.ack(&m2, &b);
    m1.expect_nothing();
    m2.expect_nothing();
    // A topic the filter does not match is nobody's (`$` under `#`).
    assert_eq!(
        hand(&mut core, &mut router, "#", "$x", 3),
        group_outcome::NOT_MATCHED
    );
    // m1 goes offline (its session stays): one connected member left, and
    // it gets everything; the offline one queues nothing.
    core.drop_connection(m1);
    assert_eq!(next(&mut rx).2, 1);
    for pid in 4..8 {
        assert_eq!(
            hand(&mut core, &mut router, "t/#", "t/z", pid),
            group_outcome::DELIVERED
        );
    }
    for _ in 4..8 {
        let m = m2.recv_publish();
        core.ack(&m2, &m);
    }
    // m2 leaves: none connected, the router stops; what it still hands
    // over it gives back.
    core.send(
        &m2,
        Packet::Unsubscribe(crate::codec::Unsubscribe {
            packet_id: PacketId::new(9).unwrap(),
            filters: vec!["$share/g/t/#".into()],
            user_properties: Vec::new(),
        }),
    );
    assert_eq!(next(&mut rx).2, 0);
    assert_eq!(
        hand(&mut core, &mut router, "t/#", "t/z", 9),
        group_outcome::NO_MEMBER
    );
    // m1 comes back: its group has a connected member again, and m1's
    // queue is empty (nothing was queued for it while offline).
    let (mut m1, ack) = core.connect(v5_session("m1", false, 600));
    assert!(ack.session_present);
    assert_eq!(next(&mut rx), ("g".into(), "t/#".into(), 1, false));
    m1.expect_nothing();
    assert!(rx.try_recv().is_err());
}
