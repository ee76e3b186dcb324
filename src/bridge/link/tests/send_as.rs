//! Caller-chosen packet ids ([`Link::send_as`]): the bridge driver sends
//! under the local session's ids.

use super::*;

fn subscribe_id(out: &[Packet]) -> PacketId {
    match out {
        [Packet::Subscribe(s)] => s.packet_id,
        other => panic!("expected one SUBSCRIBE, got {other:?}"),
    }
}

#[test]
fn caller_ids_go_out_under_those_ids_with_the_dup_flag() {
    let mut link = up(settings(V5));
    link.send_as(1, pid(500), msg("a"), QoS::AtLeastOnce, false)
        .unwrap();
    link.send_as(2, pid(7), msg("b"), QoS::ExactlyOnce, true)
        .unwrap();
    link.send_as(3, pid(9), msg("c"), QoS::AtMostOnce, true)
        .unwrap();
    let out = sent(&mut link, 0);
    assert_eq!(
        out.iter().map(publish_of).collect::<Vec<_>>(),
        vec![
            (QosPid::AtLeastOnce(pid(500)), false, "a"),
            // QoS 2 leaves at once: the caller stored the id before.
            (QosPid::ExactlyOnce(pid(7)), true, "b"),
            // No id and no DUP at QoS 0 ([MQTT-3.3.1-2]).
            (QosPid::AtMostOnce, false, "c"),
        ]
    );
    // Byte for byte: the fixed header of the DUP QoS 2 PUBLISH is 0x3C.
    assert_eq!(bytes(&out[1], V5)[0], 0x3C);
    // No Assigned: the caller chose the ids.
    assert_eq!(events(&mut link), vec![Event::Delivered { token: 3 }]);
    feed(&mut link, Packet::PubAck(ack(500)), 0);
    assert_eq!(events(&mut link), vec![Event::Delivered { token: 1 }]);
}

#[test]
fn an_id_in_flight_is_refused_unless_resent_as_dup() {
    let mut link = up(plain(V311));
    assert_eq!(
        Link::new(plain(V311)).send_as(1, pid(1), msg("a"), QoS::AtLeastOnce, false),
        Err(SendError::NotConnected)
    );
    link.send_as(1, pid(1), msg("a"), QoS::AtLeastOnce, false)
        .unwrap();
    assert_eq!(sent(&mut link, 0).len(), 1);
    // Another message, another token, another QoS, or the same message
    // without DUP: all refused.
    for (token, m, qos, dup) in [
        (2, msg("other"), QoS::AtLeastOnce, true),
        (2, msg("a"), QoS::AtLeastOnce, true),
        (1, msg("a"), QoS::ExactlyOnce, true),
        (1, msg("a"), QoS::AtLeastOnce, false),
    ] {
        assert_eq!(
            link.send_as(token, pid(1), m, qos, dup),
            Err(SendError::IdInUse)
        );
    }
    // The same message as DUP on the same connection: accepted, not sent
    // twice (its PUBLISH went already).
    link.send_as(1, pid(1), msg("a"), QoS::AtLeastOnce, true)
        .unwrap();
    assert_eq!((sent(&mut link, 0), events(&mut link)), (vec![], vec![]));
    // After a reconnect the link resends it with DUP=1 once, and the
    // caller's own DUP resend (local reconnect) adds nothing.
    link.connect(10);
    feed(&mut link, connack(true), 10);
    link.send_as(1, pid(1), msg("a"), QoS::AtLeastOnce, true)
        .unwrap();
    let out = sent(&mut link, 10);
    assert_eq!(
        out.iter().map(publish_of).collect::<Vec<_>>(),
        vec![(QosPid::AtLeastOnce(pid(1)), true, "a")]
    );
    feed(&mut link, Packet::PubAck(ack(1)), 10);
    // Delivered once; the id is free again.
    assert_eq!(
        events(&mut link),
        vec![
            Event::Connected {
                session_present: true
            },
            Event::Delivered { token: 1 }
        ]
    );
    link.send_as(4, pid(1), msg("d"), QoS::AtLeastOnce, false)
        .unwrap();
    // A released QoS 2 id is refused even as DUP: the remote has it.
    link.send_as(5, pid(2), msg("e"), QoS::ExactlyOnce, false)
        .unwrap();
    feed(&mut link, Packet::PubRec(ack(2)), 10);
    assert_eq!(
        link.send_as(5, pid(2), msg("e"), QoS::ExactlyOnce, true),
        Err(SendError::IdInUse)
    );
}

#[test]
fn ids_from_send_and_send_as_never_collide() {
    let mut link = up(settings(V5));
    link.send(1, msg("a"), QoS::AtLeastOnce).unwrap(); // 1
    assert_eq!(
        link.send_as(2, pid(1), msg("b"), QoS::AtLeastOnce, false),
        Err(SendError::IdInUse)
    );
    link.send_as(2, pid(2), msg("b"), QoS::AtLeastOnce, false)
        .unwrap();
    link.send(3, msg("c"), QoS::AtLeastOnce).unwrap(); // skips 2
    let ids: Vec<_> = sent(&mut link, 0).iter().map(|p| publish_of(p).0).collect();
    assert_eq!(ids, [1, 2, 3].map(|n| QosPid::AtLeastOnce(pid(n))).to_vec());

    // A QoS 2 message from `send` waiting for its stored id: resending it
    // through `send_as` says the id is stored, so it leaves.
    link.send(4, msg("d"), QoS::ExactlyOnce).unwrap(); // 4
    assert_eq!(sent(&mut link, 0), vec![]);
    link.send_as(4, pid(4), msg("d"), QoS::ExactlyOnce, true)
        .unwrap();
    assert_eq!(
        publish_of(&sent(&mut link, 0)[0]),
        (QosPid::ExactlyOnce(pid(4)), false, "d"),
        "never sent before: DUP 0"
    );
}

#[test]
fn the_subscribe_id_never_collides_with_caller_ids() {
    let mut s = settings(V5);
    s.max_inflight = 3;
    // A restarted caller's window at the top of the id range, plus a
    // restored release.
    let mut link = Link::new(s);
    link.released(65_535, pid(65_535));
    link.connect(0);
    feed(&mut link, connack(false), 0);
    let out = sent(&mut link, 0);
    assert_eq!(out[0], Packet::PubRel(ack(65_535)));
    // Not an id in flight: from the top down, the first free one.
    let sub = subscribe_id(&out[1..]);
    assert_eq!(sub, pid(65_534));
    // The pending SUBSCRIBE's id is refused, even as DUP.
    assert_eq!(
        link.send_as(1, sub, msg("a"), QoS::AtLeastOnce, true),
        Err(SendError::IdInUse)
    );
    link.send_as(2, pid(65_533), msg("b"), QoS::ExactlyOnce, true)
        .unwrap();
    let granted = SubAck::new(sub, vec![ReasonCode::GrantedQos1]);
    feed(&mut link, Packet::SubAck(granted), 0);
    // After the SUBACK the id is the caller's.
    link.send_as(1, sub, msg("a"), QoS::AtLeastOnce, true)
        .unwrap();
    let out = sent(&mut link, 0);
    assert_eq!(
        out.iter().map(publish_of).collect::<Vec<_>>(),
        vec![
            (QosPid::ExactlyOnce(pid(65_533)), true, "b"),
            (QosPid::AtLeastOnce(pid(65_534)), true, "a"),
        ]
    );
    // The next connection's SUBSCRIBE avoids all three.
    link.connect(1);
    feed(&mut link, connack(false), 1);
    let out = sent(&mut link, 1);
    assert_eq!(out.len(), 4, "{out:?}");
    assert_eq!(subscribe_id(&out[3..]), pid(65_532));
}

#[test]
fn qos2_flow_under_a_caller_id() {
    let mut link = up(settings(V5));
    link.send_as(300, pid(300), msg("a"), QoS::ExactlyOnce, false)
        .unwrap();
    let out = sent(&mut link, 0);
    assert_eq!(
        publish_of(&out[0]),
        (QosPid::ExactlyOnce(pid(300)), false, "a")
    );
    assert_eq!(events(&mut link), vec![]);
    feed(&mut link, Packet::PubRec(ack(300)), 0);
    assert_eq!(
        events(&mut link),
        vec![Event::Released {
            token: 300,
            packet_id: pid(300)
        }]
    );
    assert_eq!(
        sent(&mut link, 0),
        vec![],
        "not before the release is stored"
    );
    link.release_ready(300);
    assert_eq!(sent(&mut link, 0), vec![Packet::PubRel(ack(300))]);
    feed(&mut link, Packet::PubComp(ack(300)), 0);
    assert_eq!(events(&mut link), vec![Event::Delivered { token: 300 }]);
}

#[test]
fn a_send_as_window_beyond_receive_maximum_waits_in_order() {
    let mut s = plain(V5);
    s.max_inflight = 3;
    let mut link = Link::new(s);
    link.connect(0);
    let p = ConnAckProperties {
        receive_maximum: NonZeroU16::new(1),
        ..Default::default()
    };
    feed(&mut link, connack_with(p), 0);
    for n in 1..=3 {
        link.send_as(n.into(), pid(n), msg("m"), QoS::AtLeastOnce, true)
            .unwrap();
    }
    assert_eq!(
        link.send_as(4, pid(4), msg("m"), QoS::AtLeastOnce, false),
        Err(SendError::Full)
    );
    let one = |link: &mut Link| {
        let out = sent(link, 0);
        assert_eq!(out.len(), 1, "{out:?}");
        publish_of(&out[0]).0
    };
    assert_eq!(one(&mut link), QosPid::AtLeastOnce(pid(1)));
    feed(&mut link, Packet::PubAck(ack(1)), 0);
    assert_eq!(one(&mut link), QosPid::AtLeastOnce(pid(2)));
}

#[test]
fn restart_resends_under_the_old_ids_with_dup() {
    // Before the restart: two messages out under the local session's ids.
    let mut link = up(plain(V311));
    link.send_as(17, pid(17), msg("q1"), QoS::AtLeastOnce, false)
        .unwrap();
    link.send_as(18, pid(18), msg("q2"), QoS::ExactlyOnce, false)
        .unwrap();
    assert_eq!(sent(&mut link, 0).len(), 2);
    drop(link);

    // A fresh link; the remote kept the session; the local session resends
    // its in-flight messages with DUP under the same ids.
    let mut link = Link::new(plain(V311));
    link.connect(1_000);
    feed(&mut link, connack(true), 1_000);
    assert_eq!(sent(&mut link, 1_000), vec![], "no SUBSCRIBE: session kept");
    link.send_as(17, pid(17), msg("q1"), QoS::AtLeastOnce, true)
        .unwrap();
    link.send_as(18, pid(18), msg("q2"), QoS::ExactlyOnce, true)
        .unwrap();
    let out = sent(&mut link, 1_000);
    assert_eq!(
        out.iter().map(publish_of).collect::<Vec<_>>(),
        vec![
            (QosPid::AtLeastOnce(pid(17)), true, "q1"),
            (QosPid::ExactlyOnce(pid(18)), true, "q2"),
        ]
    );
    // DUP=1 on the wire: fixed headers 0x3A (QoS 1) and 0x3C (QoS 2).
    assert_eq!(
        out.iter().map(|p| bytes(p, V311)[0]).collect::<Vec<_>>(),
        [0x3A, 0x3C]
    );
    feed(&mut link, Packet::PubAck(ack(17)), 1_000);
    feed(&mut link, Packet::PubRec(ack(18)), 1_000);
    link.release_ready(18);
    assert_eq!(sent(&mut link, 1_000), vec![Packet::PubRel(ack(18))]);
    feed(&mut link, Packet::PubComp(ack(18)), 1_000);
    assert_eq!(
        events(&mut link),
        vec![
            Event::Connected {
                session_present: true
            },
            Event::Delivered { token: 17 },
            Event::Released {
                token: 18,
                packet_id: pid(18)
            },
            Event::Delivered { token: 18 },
        ]
    );
}
