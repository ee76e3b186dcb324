//! The link driven as a remote broker would drive it. Every packet crosses
//! the real codec both ways (encoded, then decoded by the other side), so
//! what the link sends is what a broker would read.

use super::*;
use crate::codec::{encode, ConnAckProperties, Decoder, SubscriptionOptions};
use bytes::BytesMut;
use std::num::NonZeroU16;

const V5: ProtocolVersion = ProtocolVersion::V5;
const V311: ProtocolVersion = ProtocolVersion::V3_1_1;

fn pid(n: u16) -> PacketId {
    PacketId::new(n).unwrap()
}

fn settings(protocol: ProtocolVersion) -> Settings {
    Settings {
        client_id: "gw-17".into(),
        protocol,
        keep_alive: 10,
        session_expiry: 7 * 86_400,
        username: Some("gw".into()),
        password: Some(Bytes::from_static(b"secret")),
        max_inflight: 100,
        subscriptions: vec![("commands/#".into(), QoS::AtLeastOnce)],
        receive_maximum: 1024,
        maximum_packet_size: 1 << 20,
    }
}

/// [`settings`] without subscriptions: for tests of other flows, where a
/// SUBSCRIBE at every connection would only get in the way.
fn plain(protocol: ProtocolVersion) -> Settings {
    Settings {
        subscriptions: Vec::new(),
        ..settings(protocol)
    }
}

fn msg(topic: &str) -> Outgoing {
    Outgoing {
        topic: topic.into(),
        payload: Bytes::from_static(b"x"),
        retain: false,
        properties: PublishProperties::default(),
    }
}

fn bytes(p: &Packet, v: ProtocolVersion) -> BytesMut {
    let mut b = BytesMut::new();
    encode(p, v, &mut b).unwrap();
    b
}

/// `p` as the peer reads it.
fn wire(p: &Packet, v: ProtocolVersion) -> Packet {
    let mut b = bytes(p, v);
    let mut d = match p {
        Packet::Connect(_) => Decoder::new(1 << 20),
        _ => Decoder::with_version(1 << 20, v),
    };
    let out = d.decode(&mut b).unwrap().unwrap();
    assert!(b.is_empty());
    out
}

/// What the link has to send, as the remote reads it.
fn sent(link: &mut Link, now: u64) -> Vec<Packet> {
    let v = link.protocol();
    std::iter::from_fn(|| link.poll_transmit(now))
        .map(|p| wire(&p, v))
        .collect()
}

fn events(link: &mut Link) -> Vec<Event> {
    std::iter::from_fn(|| link.poll_event()).collect()
}

fn feed(link: &mut Link, p: Packet, now: u64) {
    let v = link.protocol();
    link.on_packet(wire(&p, v), now);
}

fn connack(session_present: bool) -> Packet {
    Packet::ConnAck(ConnAck::new(ReasonCode::Success, session_present))
}

fn connack_with(properties: ConnAckProperties) -> Packet {
    let mut a = ConnAck::new(ReasonCode::Success, true);
    a.properties = properties;
    Packet::ConnAck(a)
}

/// A link connected at time 0 (session present), its SUBSCRIBE answered,
/// drained.
fn up(settings: Settings) -> Link {
    let mut link = Link::new(settings);
    link.connect(0);
    feed(&mut link, connack(true), 0);
    suback_all(&mut link);
    assert_eq!(
        events(&mut link),
        vec![Event::Connected {
            session_present: true
        }]
    );
    link
}

/// Takes what the link sent, which must be just its SUBSCRIBE (if it has
/// subscriptions), and grants every filter.
fn suback_all(link: &mut Link) {
    let out = sent(link, 0);
    match out.as_slice() {
        [] => {}
        [Packet::Subscribe(sub)] => {
            let granted = vec![ReasonCode::GrantedQos1; sub.filters.len()];
            feed(link, Packet::SubAck(SubAck::new(sub.packet_id, granted)), 0);
        }
        other => panic!("expected only a SUBSCRIBE, got {other:?}"),
    }
}

fn publish_of(p: &Packet) -> (QosPid, bool, &str) {
    match p {
        Packet::Publish(p) => (p.qos_pid, p.dup, p.topic.as_str()),
        other => panic!("expected PUBLISH, got {other:?}"),
    }
}

fn ack(id: u16) -> PubResp {
    PubResp::new(pid(id))
}

#[test]
fn connect_v5_resumes_a_session_and_subscribes_without_loops() {
    let mut link = Link::new(settings(V5));
    let connect = link.connect(1_000);
    let Packet::Connect(c) = wire(&Packet::Connect(Box::new(connect)), V5) else {
        panic!()
    };
    assert!(!c.clean_start);
    assert_eq!((c.keep_alive, c.client_id.as_str()), (10, "gw-17"));
    assert_eq!(c.properties.session_expiry_interval, Some(604_800));
    assert_eq!(c.username.as_ref().map(|u| u.as_str()), Some("gw"));
    assert_eq!(c.password.as_deref(), Some(&b"secret"[..]));
    assert_eq!(
        link.send(1, msg("a"), QoS::AtLeastOnce),
        Err(SendError::NotConnected)
    );

    feed(&mut link, connack(false), 1_000);
    assert_eq!(
        events(&mut link),
        vec![Event::Connected {
            session_present: false
        }]
    );
    let out = sent(&mut link, 1_000);
    let [Packet::Subscribe(s)] = &out[..] else {
        panic!("{out:?}")
    };
    let expected = SubscriptionOptions::new(QoS::AtLeastOnce)
        .with_no_local(true)
        .with_retain_as_published(true)
        .with_retain_handling(RetainHandling::SendAtSubscribeIfNew);
    assert_eq!(s.filters, vec![("commands/#".into(), expected)]);
    // Byte for byte: the options byte is QoS 1 | No Local | RAP | RH 1.
    let b = bytes(&Packet::Subscribe(s.clone()), V5);
    assert_eq!(b[b.len() - 1], 0b0001_1101);

    let granted = SubAck::new(s.packet_id, vec![ReasonCode::GrantedQos1]);
    feed(&mut link, Packet::SubAck(granted), 1_100);
    assert_eq!(events(&mut link), vec![]);
    assert!(link.is_connected());
}

#[test]
fn connect_v311_sets_clean_session_0_and_plain_options() {
    let mut link = Link::new(settings(V311));
    let connect = Packet::Connect(Box::new(link.connect(0)));
    let b = bytes(&connect, V311);
    // 0x10, length, "\0\x04MQTT", level 4, flags: user + password, Clean
    // Session 0, no will.
    assert_eq!(&b[2..10], b"\x00\x04MQTT\x04\xC0");
    let Packet::Connect(c) = wire(&connect, V311) else {
        panic!()
    };
    assert_eq!(c.properties, Default::default());

    // A 3.1.1 remote's CONNACK, straight from the wire: accepted, no session.
    link.on_packet(
        Decoder::with_version(64, V311)
            .decode(&mut BytesMut::from(&[0x20, 0x02, 0x00, 0x00][..]))
            .unwrap()
            .unwrap(),
        0,
    );
    let out = sent(&mut link, 0);
    let [Packet::Subscribe(s)] = &out[..] else {
        panic!("{out:?}")
    };
    assert_eq!(s.filters[0].1, SubscriptionOptions::new(QoS::AtLeastOnce));
    // 3.1.1 says failure as 0x80.
    feed(
        &mut link,
        Packet::SubAck(SubAck::new(s.packet_id, vec![ReasonCode::UnspecifiedError])),
        0,
    );
    assert_eq!(
        events(&mut link),
        vec![
            Event::Connected {
                session_present: false
            },
            Event::SubscribeFailed {
                filter: "commands/#".into(),
                reason: ReasonCode::UnspecifiedError
            }
        ]
    );
}

#[test]
fn a_password_without_a_user_only_on_v5() {
    for (v, expected) in [(V5, true), (V311, false)] {
        let mut s = settings(v);
        s.username = None;
        let c = Link::new(s).connect(0);
        assert_eq!(c.password.is_some(), expected, "{v:?}");
        wire(&Packet::Connect(Box::new(c)), v);
    }
}

#[test]
fn refused_connack_ends_the_connection() {
    // 3.1.1 return code 5, from the wire.
    let mut link = Link::new(settings(V311));
    link.connect(0);
    let mut raw = BytesMut::from(&[0x20, 0x02, 0x00, 0x05][..]);
    let refused = Decoder::with_version(64, V311)
        .decode(&mut raw)
        .unwrap()
        .unwrap();
    link.on_packet(refused, 0);
    assert_eq!(
        events(&mut link),
        vec![Event::Closed(LinkError::Refused(ReasonCode::NotAuthorized))]
    );
    assert!(!link.is_connected());
    assert_eq!(sent(&mut link, 0), vec![], "no DISCONNECT after a refusal");

    let mut link = Link::new(settings(V5));
    link.connect(0);
    let no = Packet::ConnAck(ConnAck::new(ReasonCode::BadUserNameOrPassword, false));
    feed(&mut link, no, 0);
    assert_eq!(
        events(&mut link),
        vec![Event::Closed(LinkError::Refused(
            ReasonCode::BadUserNameOrPassword
        ))]
    );
    assert_eq!(link.next_timeout(), None);
}

#[test]
fn qos1_flow_and_packet_id_reuse() {
    let mut link = up(settings(V5));
    link.send(7, msg("a"), QoS::AtLeastOnce).unwrap();
    assert_eq!(
        events(&mut link),
        vec![Event::Assigned {
            token: 7,
            packet_id: pid(1)
        }]
    );
    let out = sent(&mut link, 0);
    assert_eq!(
        publish_of(&out[0]),
        (QosPid::AtLeastOnce(pid(1)), false, "a")
    );
    feed(&mut link, Packet::PubAck(ack(1)), 0);
    assert_eq!(events(&mut link), vec![Event::Delivered { token: 7 }]);
    // A late duplicate PUBACK is ignored.
    feed(&mut link, Packet::PubAck(ack(1)), 0);
    assert_eq!((events(&mut link), sent(&mut link, 0)), (vec![], vec![]));

    // Ids go round and skip the ones in flight.
    link.last_id = u16::MAX - 1;
    link.send(8, msg("b"), QoS::AtLeastOnce).unwrap(); // 65535
    link.send(9, msg("c"), QoS::AtLeastOnce).unwrap(); // 1, free again
    link.send(10, msg("d"), QoS::AtLeastOnce).unwrap(); // 2
    let ids: Vec<_> = sent(&mut link, 0).iter().map(|p| publish_of(p).0).collect();
    assert_eq!(
        ids,
        [u16::MAX, 1, 2]
            .map(|n| QosPid::AtLeastOnce(pid(n)))
            .to_vec()
    );
    feed(&mut link, Packet::PubAck(ack(1)), 0);
    link.last_id = 0;
    link.send(11, msg("e"), QoS::AtLeastOnce).unwrap();
    let out = sent(&mut link, 0);
    assert_eq!(
        publish_of(&out[0]).0,
        QosPid::AtLeastOnce(pid(1)),
        "1 was freed, 2 is taken"
    );
    link.send(12, msg("f"), QoS::AtLeastOnce).unwrap();
    assert_eq!(
        publish_of(&sent(&mut link, 0)[0]).0,
        QosPid::AtLeastOnce(pid(3))
    );
}

#[test]
fn qos2_waits_for_the_stored_id_and_the_stored_release() {
    let mut link = up(settings(V5));
    link.send(1, msg("a"), QoS::ExactlyOnce).unwrap();
    assert_eq!(
        events(&mut link),
        vec![Event::Assigned {
            token: 1,
            packet_id: pid(1)
        }]
    );
    assert_eq!(sent(&mut link, 0), vec![], "not before the id is stored");
    link.assign_ready(1);
    let out = sent(&mut link, 0);
    assert_eq!(publish_of(&out[0]).0, QosPid::ExactlyOnce(pid(1)));

    feed(&mut link, Packet::PubRec(ack(1)), 0);
    assert_eq!(
        events(&mut link),
        vec![Event::Released {
            token: 1,
            packet_id: pid(1)
        }]
    );
    assert_eq!(
        sent(&mut link, 0),
        vec![],
        "not before the release is stored"
    );
    // PUBCOMP before our PUBREL is a protocol error (checked below); here a
    // repeated PUBREC changes nothing.
    feed(&mut link, Packet::PubRec(ack(1)), 0);
    assert_eq!((events(&mut link), sent(&mut link, 0)), (vec![], vec![]));
    link.release_ready(1);
    assert_eq!(sent(&mut link, 0), vec![Packet::PubRel(ack(1))]);
    feed(&mut link, Packet::PubComp(ack(1)), 0);
    assert_eq!(events(&mut link), vec![Event::Delivered { token: 1 }]);
}

#[test]
fn qos0_goes_at_once() {
    let mut link = up(settings(V311));
    link.send(3, msg("a"), QoS::AtMostOnce).unwrap();
    assert_eq!(publish_of(&sent(&mut link, 0)[0]).0, QosPid::AtMostOnce);
    assert_eq!(events(&mut link), vec![Event::Delivered { token: 3 }]);
}

#[test]
fn max_inflight_and_receive_maximum() {
    let mut s = plain(V5);
    s.max_inflight = 3;
    let mut link = Link::new(s.clone());
    link.connect(0);
    let p = ConnAckProperties {
        receive_maximum: NonZeroU16::new(2),
        ..Default::default()
    };
    feed(&mut link, connack_with(p), 0);
    link.send(1, msg("a"), QoS::AtLeastOnce).unwrap();
    link.send(2, msg("b"), QoS::AtLeastOnce).unwrap();
    assert_eq!(
        link.send(3, msg("c"), QoS::AtLeastOnce),
        Err(SendError::Full)
    );
    assert_eq!(sent(&mut link, 0).len(), 2);
    feed(&mut link, Packet::PubAck(ack(1)), 0);
    link.send(3, msg("c"), QoS::AtLeastOnce).unwrap();
    assert_eq!(sent(&mut link, 0).len(), 1);

    // Our own limit when the remote allows more.
    let mut link = up(s);
    for t in 0..3 {
        link.send(t, msg("a"), QoS::ExactlyOnce).unwrap();
    }
    assert_eq!(
        link.send(3, msg("d"), QoS::AtLeastOnce),
        Err(SendError::Full)
    );
}

#[test]
fn a_qos2_message_waiting_for_its_id_holds_back_later_ones() {
    let mut link = up(settings(V5));
    link.send(1, msg("first"), QoS::ExactlyOnce).unwrap();
    link.send(2, msg("second"), QoS::AtLeastOnce).unwrap();
    assert_eq!(sent(&mut link, 0), vec![]);
    link.assign_ready(1);
    let topics: Vec<_> = sent(&mut link, 0)
        .iter()
        .map(|p| publish_of(p).2.to_string())
        .collect();
    assert_eq!(topics, ["first", "second"]);
}

/// Three messages in three states, then the connection is lost.
fn three_in_flight(v: ProtocolVersion) -> Link {
    let mut link = up(settings(v));
    link.send(1, msg("q1"), QoS::AtLeastOnce).unwrap();
    link.send(2, msg("q2"), QoS::ExactlyOnce).unwrap();
    link.send(3, msg("q2-released"), QoS::ExactlyOnce).unwrap();
    link.assign_ready(2);
    link.assign_ready(3);
    feed(&mut link, Packet::PubRec(ack(3)), 0);
    link.release_ready(3);
    assert_eq!(sent(&mut link, 0).len(), 4);
    events(&mut link);
    link
}

#[test]
fn resume_with_session_present_resends_with_dup_in_order() {
    let mut link = three_in_flight(V5);
    link.connect(5_000);
    feed(&mut link, connack(true), 5_000);
    let out = sent(&mut link, 5_000);
    // Then the SUBSCRIBE, as at every connection.
    assert_eq!(out.len(), 4, "{out:?}");
    assert!(matches!(out[3], Packet::Subscribe(_)), "{out:?}");
    assert_eq!(
        publish_of(&out[0]),
        (QosPid::AtLeastOnce(pid(1)), true, "q1")
    );
    assert_eq!(
        publish_of(&out[1]),
        (QosPid::ExactlyOnce(pid(2)), true, "q2")
    );
    assert_eq!(out[2], Packet::PubRel(ack(3)));
    feed(&mut link, Packet::PubComp(ack(3)), 5_000);
    feed(&mut link, Packet::PubAck(ack(1)), 5_000);
    assert_eq!(
        events(&mut link),
        vec![
            Event::Connected {
                session_present: true
            },
            Event::Delivered { token: 3 },
            Event::Delivered { token: 1 }
        ]
    );
}

#[test]
fn resume_without_session_sends_as_new_and_subscribes_again() {
    let mut link = three_in_flight(V311);
    link.connect(5_000);
    feed(&mut link, connack(false), 5_000);
    let out = sent(&mut link, 5_000);
    assert_eq!(out.len(), 4, "{out:?}");
    assert_eq!(
        publish_of(&out[0]),
        (QosPid::AtLeastOnce(pid(1)), false, "q1")
    );
    assert_eq!(
        publish_of(&out[1]),
        (QosPid::ExactlyOnce(pid(2)), false, "q2")
    );
    // The remote answers PUBCOMP to a PUBREL it does not know.
    assert_eq!(out[2], Packet::PubRel(ack(3)));
    let Packet::Subscribe(s) = &out[3] else {
        panic!("{out:?}")
    };
    assert_ne!(s.packet_id, pid(1));
    assert_ne!(s.packet_id, pid(2));
    assert_ne!(s.packet_id, pid(3));
}

#[test]
fn resume_after_a_restart() {
    // The caller's stored state comes back as a release owed (before the
    // connection) and resends under the stored ids with DUP (after it).
    let mut s = plain(V5);
    s.max_inflight = 2;
    let mut link = Link::new(s);
    link.released(10, pid(40));
    link.connect(0);
    feed(&mut link, connack(true), 0);
    assert_eq!(sent(&mut link, 0), vec![Packet::PubRel(ack(40))]);
    link.send_as(11, pid(41), msg("a"), QoS::ExactlyOnce, true)
        .unwrap();
    assert_eq!(
        publish_of(&sent(&mut link, 0)[0]),
        (QosPid::ExactlyOnce(pid(41)), true, "a")
    );
    // The limit is 2: "b" waits for room.
    assert_eq!(
        link.send_as(12, pid(42), msg("b"), QoS::AtLeastOnce, true),
        Err(SendError::Full)
    );
    feed(&mut link, Packet::PubComp(ack(40)), 0);
    assert_eq!(
        events(&mut link),
        vec![
            Event::Connected {
                session_present: true
            },
            Event::Delivered { token: 10 }
        ]
    );
    link.send_as(12, pid(42), msg("b"), QoS::AtLeastOnce, true)
        .unwrap();
    assert_eq!(
        publish_of(&sent(&mut link, 0)[0]),
        (QosPid::AtLeastOnce(pid(42)), true, "b")
    );
    // A release the link already tracks is the ordinary one.
    feed(&mut link, Packet::PubRec(ack(41)), 0);
    assert_eq!(
        events(&mut link),
        vec![Event::Released {
            token: 11,
            packet_id: pid(41)
        }]
    );
    link.released(11, pid(41));
    assert_eq!(sent(&mut link, 0), vec![Packet::PubRel(ack(41))]);
}

#[test]
fn inbound_qos2_is_delivered_once() {
    let mut link = up(plain(V5));
    let p = Publish::new("commands/x", Bytes::from_static(b"on"))
        .with_qos_pid(QosPid::ExactlyOnce(pid(7)));
    feed(&mut link, Packet::Publish(p.clone()), 0);
    assert_eq!(
        events(&mut link),
        vec![Event::Received { publish: p.clone() }]
    );
    assert_eq!(
        sent(&mut link, 0),
        vec![],
        "PUBREC only after the local commit"
    );
    // Resent before the commit: not delivered, not acknowledged yet.
    feed(&mut link, Packet::Publish(p.clone().with_dup(true)), 0);
    assert_eq!((events(&mut link), sent(&mut link, 0)), (vec![], vec![]));
    link.ack_inbound(pid(7));
    assert_eq!(sent(&mut link, 0), vec![Packet::PubRec(ack(7))]);
    // Resent after the PUBREC (say after a reconnect): PUBREC again only.
    link.connect(100);
    feed(&mut link, connack(true), 100);
    feed(&mut link, Packet::Publish(p.clone().with_dup(true)), 100);
    assert_eq!(sent(&mut link, 100), vec![Packet::PubRec(ack(7))]);
    assert_eq!(
        events(&mut link),
        vec![Event::Connected {
            session_present: true
        }]
    );
    feed(&mut link, Packet::PubRel(ack(7)), 100);
    assert_eq!(sent(&mut link, 100), vec![Packet::PubComp(ack(7))]);
    assert_eq!(
        events(&mut link),
        vec![Event::InboundDone { packet_id: pid(7) }]
    );
    // A PUBREL for an id we do not hold: PUBCOMP, 0x92 on 5.0, and the
    // driver is told (its local session may hold the id from before a
    // restart).
    feed(&mut link, Packet::PubRel(ack(7)), 100);
    let not_found = ack(7).with_reason(ReasonCode::PacketIdentifierNotFound);
    assert_eq!(sent(&mut link, 100), vec![Packet::PubComp(not_found)]);
    assert_eq!(
        events(&mut link),
        vec![Event::InboundDone { packet_id: pid(7) }]
    );
    // The id is free again: a new message under it is delivered.
    feed(&mut link, Packet::Publish(p.clone()), 100);
    assert_eq!(events(&mut link), vec![Event::Received { publish: p }]);
}

#[test]
fn inbound_qos1_is_acknowledged_after_the_commit() {
    let mut link = up(settings(V311));
    let p = Publish::new("commands/x", Bytes::new()).with_qos_pid(QosPid::AtLeastOnce(pid(4)));
    feed(&mut link, Packet::Publish(p.clone()), 0);
    assert_eq!(events(&mut link), vec![Event::Received { publish: p }]);
    assert_eq!(sent(&mut link, 0), vec![]);
    link.ack_inbound(pid(4));
    link.ack_inbound(pid(4));
    assert_eq!(sent(&mut link, 0), vec![Packet::PubAck(ack(4))]);
}

#[test]
fn keep_alive_pings_and_declares_death() {
    let mut link = Link::new(plain(V5));
    link.connect(0);
    assert_eq!(
        link.next_timeout(),
        Some(15_000),
        "CONNACK within 1.5 x 10 s"
    );
    feed(&mut link, connack(true), 100);
    assert_eq!(
        link.next_timeout(),
        Some(10_000),
        "a keep alive after CONNECT"
    );
    link.on_timeout(9_999);
    assert_eq!(sent(&mut link, 9_999), vec![]);
    link.on_timeout(10_000);
    assert_eq!(sent(&mut link, 10_000), vec![Packet::PingReq]);
    assert_eq!(link.next_timeout(), Some(15_100));
    feed(&mut link, Packet::PingResp, 10_200);
    assert_eq!(link.next_timeout(), Some(20_000));
    // No answer this time.
    link.on_timeout(20_000);
    assert_eq!(sent(&mut link, 20_000), vec![Packet::PingReq]);
    link.on_timeout(25_199);
    assert!(link.is_connected());
    link.on_timeout(25_200);
    assert_eq!(
        events(&mut link),
        vec![
            Event::Connected {
                session_present: true
            },
            Event::Closed(LinkError::KeepAliveTimeout)
        ]
    );
    assert_eq!(link.next_timeout(), None);

    // A silent remote while we keep sending still gets pinged.
    let mut link = up(plain(V5));
    for t in (1_000..10_000).step_by(1_000) {
        link.send(t, msg("a"), QoS::AtMostOnce).unwrap();
        sent(&mut link, t);
    }
    link.on_timeout(10_000);
    assert_eq!(sent(&mut link, 10_000), vec![Packet::PingReq]);

    // The server's Keep Alive wins; 0 turns it off.
    let mut link = Link::new(plain(V5));
    link.connect(0);
    let p = ConnAckProperties {
        server_keep_alive: Some(0),
        ..Default::default()
    };
    feed(&mut link, connack_with(p), 0);
    assert_eq!(link.next_timeout(), None);
}

#[test]
fn a_connack_that_never_comes() {
    let mut link = Link::new(settings(V311));
    link.connect(0);
    link.on_timeout(14_999);
    assert_eq!(sent(&mut link, 14_999), vec![], "no PINGREQ before CONNACK");
    link.on_timeout(15_000);
    assert_eq!(
        events(&mut link),
        vec![Event::Closed(LinkError::KeepAliveTimeout)]
    );
}

#[test]
fn error_codes_from_the_remote_end_the_flow() {
    let mut link = up(settings(V5));
    link.send(1, msg("a"), QoS::AtLeastOnce).unwrap();
    link.send(2, msg("b"), QoS::ExactlyOnce).unwrap();
    link.assign_ready(2);
    sent(&mut link, 0);
    events(&mut link);
    feed(
        &mut link,
        Packet::PubAck(ack(1).with_reason(ReasonCode::NotAuthorized)),
        0,
    );
    feed(
        &mut link,
        Packet::PubRec(ack(2).with_reason(ReasonCode::QuotaExceeded)),
        0,
    );
    assert_eq!(
        events(&mut link),
        vec![
            Event::Rejected {
                token: 1,
                reason: ReasonCode::NotAuthorized
            },
            Event::Rejected {
                token: 2,
                reason: ReasonCode::QuotaExceeded
            }
        ]
    );
    assert_eq!(
        sent(&mut link, 0),
        vec![],
        "no PUBREL after a failed PUBREC"
    );
    // "No matching subscribers" is a success.
    link.send(3, msg("c"), QoS::AtLeastOnce).unwrap();
    sent(&mut link, 0);
    let none = ack(3).with_reason(ReasonCode::NoMatchingSubscribers);
    feed(&mut link, Packet::PubAck(none), 0);
    assert!(events(&mut link).contains(&Event::Delivered { token: 3 }));
}

#[test]
fn unknown_packet_ids_from_the_remote() {
    let mut link = up(settings(V5));
    feed(&mut link, Packet::PubAck(ack(5)), 0);
    feed(&mut link, Packet::PubComp(ack(5)), 0);
    assert_eq!(sent(&mut link, 0), vec![]);
    feed(&mut link, Packet::PubRec(ack(5)), 0);
    let not_found = ack(5).with_reason(ReasonCode::PacketIdentifierNotFound);
    assert_eq!(sent(&mut link, 0), vec![Packet::PubRel(not_found)]);
    // An id assigned but not sent yet is unknown to the remote too.
    link.send(1, msg("a"), QoS::ExactlyOnce).unwrap();
    feed(&mut link, Packet::PubAck(ack(1)), 0);
    assert!(link.is_connected());
    assert_eq!(
        events(&mut link),
        vec![Event::Assigned {
            token: 1,
            packet_id: pid(1)
        }]
    );
}

/// A remote that breaks the protocol gets DISCONNECT 0x82 (5.0) and the
/// link ends.
fn assert_protocol_error(link: &mut Link, p: Packet) {
    feed(link, p, 0);
    assert!(!link.is_connected());
    let out = sent(link, 0);
    if link.protocol().is_v5() {
        assert_eq!(
            out,
            vec![Packet::Disconnect(Disconnect::new(
                ReasonCode::ProtocolError
            ))]
        );
    } else {
        assert_eq!(out, vec![]);
    }
    assert!(matches!(
        events(link).last(),
        Some(Event::Closed(LinkError::Protocol(_)))
    ));
}

#[test]
fn protocol_errors_from_the_remote() {
    for v in [V5, V311] {
        let mut link = up(settings(v));
        link.send(1, msg("a"), QoS::ExactlyOnce).unwrap();
        link.assign_ready(1);
        assert_protocol_error(&mut link, Packet::PubAck(ack(1)));

        let mut link = up(settings(v));
        link.send(1, msg("a"), QoS::AtLeastOnce).unwrap();
        assert_protocol_error(&mut link, Packet::PubRec(ack(1)));

        let mut link = up(settings(v));
        link.send(1, msg("a"), QoS::ExactlyOnce).unwrap();
        link.assign_ready(1);
        feed(&mut link, Packet::PubRec(ack(1)), 0);
        assert_protocol_error(&mut link, Packet::PubComp(ack(1)));

        let mut link = up(settings(v));
        assert_protocol_error(&mut link, connack(true));

        let mut link = up(settings(v));
        assert_protocol_error(&mut link, Packet::PingReq);

        let mut link = up(settings(v));
        assert_protocol_error(&mut link, Packet::SubAck(SubAck::new(pid(9), vec![])));

        let mut link = Link::new(settings(v));
        link.connect(0);
        assert_protocol_error(&mut link, Packet::PingResp);

        // A PUBREL for an id still waiting for the local commit.
        let mut link = up(settings(v));
        let p = Publish::new("c", Bytes::new()).with_qos_pid(QosPid::ExactlyOnce(pid(2)));
        feed(&mut link, Packet::Publish(p), 0);
        assert_protocol_error(&mut link, Packet::PubRel(ack(2)));
    }
}

#[test]
fn a_topic_alias_we_never_allowed() {
    let mut link = up(settings(V5));
    let mut p = Publish::new("a", Bytes::new());
    p.properties.topic_alias = NonZeroU16::new(1);
    feed(&mut link, Packet::Publish(p), 0);
    assert_eq!(
        sent(&mut link, 0),
        vec![Packet::Disconnect(Disconnect::new(
            ReasonCode::TopicAliasInvalid
        ))]
    );
    assert!(matches!(
        events(&mut link)[..],
        [Event::Closed(LinkError::Protocol(_))]
    ));
}

#[test]
fn disconnect_from_the_remote() {
    let mut link = up(settings(V5));
    link.send(1, msg("a"), QoS::AtLeastOnce).unwrap();
    let d = Disconnect::new(ReasonCode::ServerShuttingDown);
    feed(&mut link, Packet::Disconnect(d), 0);
    assert_eq!(
        sent(&mut link, 0),
        vec![],
        "nothing after the remote's DISCONNECT"
    );
    assert_eq!(
        events(&mut link).last(),
        Some(&Event::Closed(LinkError::Disconnected(
            ReasonCode::ServerShuttingDown
        )))
    );
    // Packets after the end are ignored; the message waits for the next
    // connection.
    feed(&mut link, Packet::PubAck(ack(1)), 0);
    assert_eq!(events(&mut link), vec![]);
    link.connect(0);
    feed(&mut link, connack(true), 0);
    assert_eq!(
        publish_of(&sent(&mut link, 0)[0]),
        (QosPid::AtLeastOnce(pid(1)), true, "a")
    );
}

#[test]
fn our_disconnect() {
    let mut link = up(settings(V5));
    link.send(1, msg("a"), QoS::AtLeastOnce).unwrap();
    link.disconnect();
    // What was queued goes first: the DISCONNECT ends the connection.
    let out = sent(&mut link, 0);
    assert_eq!(out.len(), 2, "{out:?}");
    assert!(matches!(out[0], Packet::Publish(_)), "{out:?}");
    assert_eq!(out[1], Packet::Disconnect(Disconnect::default()));
    assert!(!link.is_connected());
}

#[test]
fn the_remotes_maximum_qos_and_retain_support() {
    let mut link = Link::new(plain(V5));
    link.connect(0);
    let p = ConnAckProperties {
        maximum_qos: Some(QoS::AtLeastOnce),
        retain_available: Some(false),
        ..Default::default()
    };
    feed(&mut link, connack_with(p), 0);
    let mut m = msg("a");
    m.retain = true;
    link.send(1, m, QoS::ExactlyOnce).unwrap();
    let out = sent(&mut link, 0);
    let Packet::Publish(p) = &out[0] else {
        panic!("{out:?}")
    };
    assert_eq!((p.qos_pid, p.retain), (QosPid::AtLeastOnce(pid(1)), false));
}

#[test]
fn a_message_over_the_remotes_maximum_packet_size_is_refused_not_sent() {
    let mut link = Link::new(plain(V5));
    link.connect(0);
    let p = ConnAckProperties {
        maximum_packet_size: std::num::NonZeroU32::new(64),
        ..Default::default()
    };
    feed(&mut link, connack_with(p), 0);
    let mut big = msg("t");
    big.payload = Bytes::from(vec![b'x'; 64]);
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        assert_eq!(link.send(1, big.clone(), qos), Err(SendError::TooLarge));
        assert_eq!(
            link.send_as(2, pid(5), big.clone(), qos, false),
            Err(SendError::TooLarge)
        );
    }
    // A message that fits still goes, and nothing else went.
    link.send(3, msg("t"), QoS::AtLeastOnce).unwrap();
    let out = sent(&mut link, 0);
    assert_eq!(out.len(), 1, "{out:?}");
    // The limit is the connection's: the next one may allow more.
    link.connect(10);
    feed(&mut link, connack(true), 10);
    let _ = sent(&mut link, 10);
    link.send_as(4, pid(9), big, QoS::AtLeastOnce, false)
        .unwrap();
}

#[test]
fn connect_tells_a_5_remote_what_we_take_and_subscribes_every_time() {
    let mut s = settings(V5);
    s.receive_maximum = 20;
    s.maximum_packet_size = 4096;
    let mut link = Link::new(s);
    let c = link.connect(0);
    assert_eq!(c.properties.receive_maximum, NonZeroU16::new(20));
    assert_eq!(
        c.properties.maximum_packet_size,
        std::num::NonZeroU32::new(4096)
    );
    for at in [0, 100] {
        link.connect(at);
        feed(&mut link, connack(true), at);
        let out = sent(&mut link, at);
        assert!(
            matches!(&out[..], [Packet::Subscribe(_)]),
            "a SUBSCRIBE even with the session present: {out:?}"
        );
    }
    // 3.1.1 has neither property, and resubscribes with the session kept
    // only on the link's first connection (its remote would send the
    // retained messages again each time).
    let mut link = Link::new(settings(V311));
    let c = link.connect(0);
    assert_eq!(
        (
            c.properties.receive_maximum,
            c.properties.maximum_packet_size
        ),
        (None, None)
    );
    feed(&mut link, connack(true), 0);
    assert!(matches!(&sent(&mut link, 0)[..], [Packet::Subscribe(_)]));
    link.connect(100);
    feed(&mut link, connack(true), 100);
    assert_eq!(sent(&mut link, 100), vec![]);
    link.connect(200);
    feed(&mut link, connack(false), 200);
    assert!(matches!(&sent(&mut link, 200)[..], [Packet::Subscribe(_)]));
}

#[test]
fn an_inbound_message_the_caller_could_not_take_is_delivered_again_when_resent() {
    let mut link = up(plain(V5));
    for p in [
        Publish::new("c", Bytes::new()).with_qos_pid(QosPid::AtLeastOnce(pid(4))),
        Publish::new("c", Bytes::new()).with_qos_pid(QosPid::ExactlyOnce(pid(5))),
    ] {
        feed(&mut link, Packet::Publish(p.clone()), 0);
        assert_eq!(
            events(&mut link),
            vec![Event::Received { publish: p.clone() }]
        );
        let id = p.qos_pid.packet_id().unwrap();
        link.forget_inbound(id);
        assert_eq!(sent(&mut link, 0), vec![], "no acknowledgement");
        let resent = p.with_dup(true);
        feed(&mut link, Packet::Publish(resent.clone()), 0);
        assert_eq!(events(&mut link), vec![Event::Received { publish: resent }]);
    }
}

mod send_as;
