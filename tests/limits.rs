//! Resource limits: each one holds against a client that pushes it, with
//! bounded memory and time, and the broker keeps serving everyone else.

mod common;
use common::*;
use roost::codec::{Packet, ProtocolVersion, QoS, ReasonCode};
use roost::Options;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

// ----- helpers ---------------------------------------------------------------

/// A 3.1.1 CONNECT for client id "c".
const CONNECT_C: &[u8] = &[
    0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60, 0, 1, b'c',
];

/// Reads until the broker closes; panics if it does not within `WAIT`.
async fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let r = tokio::time::timeout(WAIT, s.read_to_end(&mut got)).await;
    assert!(r.is_ok(), "connection not closed; got {got:02x?}");
    got
}

/// Connects, retrying while the broker refuses (a slot is being freed).
async fn connect_when_admitted(b: &TestBroker, id: &str) -> Raw {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut c = Raw::open(b.addr, ProtocolVersion::V5).await;
        c.send(Packet::Connect(Box::new(v5(id)))).await;
        match c.recv_within(QUIET).await {
            Some(Packet::ConnAck(a)) if a.reason == ReasonCode::Success => return c,
            other => assert!(
                tokio::time::Instant::now() < deadline,
                "never admitted; last answer {other:?}"
            ),
        }
    }
}

/// A broker queueing at most `max_queued` messages per session, and a 5.0
/// subscriber to `in/#` at QoS 1 that takes one message at a time
/// (Receive Maximum 1).
async fn queue_limited_broker_and_sink(max_queued: usize) -> (TestBroker, Raw) {
    let mut opts = Options::default();
    opts.limits.maximum_queued_messages = max_queued;
    let b = watched_broker(opts).await;
    let mut c = v5("sink");
    c.properties.receive_maximum = std::num::NonZeroU16::new(1);
    let mut sink = Raw::connected(b.addr, c).await;
    sink.subscribe(1, "in/#", QoS::AtLeastOnce).await;
    (b, sink)
}

// ----- connections -----------------------------------------------------------

/// `maximum_connections`: the 4th TCP connection is closed at once, without
/// CONNACK, while the 3 admitted ones keep working; closing one frees its
/// slot.
#[tokio::test]
async fn fourth_connection_is_refused_at_maximum_connections_3() {
    let mut o = Options::default();
    o.limits.maximum_connections = 3;
    let b = watched_broker(o).await;
    let mut c1 = Raw::connected(b.addr, v5("c1")).await;
    let mut c2 = Raw::connected(b.addr, v5("c2")).await;
    let c3 = Raw::connected(b.addr, v311("c3")).await;

    let mut fourth = TcpStream::connect(b.addr).await.unwrap();
    // The broker may close before the CONNECT is written.
    let _ = fourth.write_all(CONNECT_C).await;
    assert_eq!(read_to_close(&mut fourth).await, b"");

    assert_eq!(b.stats.snapshot().connections_refused, 1);

    // The admitted ones are unaffected.
    c1.subscribe(1, "t", QoS::AtLeastOnce).await;
    c2.publish(publish("t", "hi", QoS::AtLeastOnce, 1)).await;
    let p = c1.recv_publish().await;
    assert_eq!(payload(&p), "hi");
    c1.ack(&p).await;

    // A freed slot admits a new client.
    c3.disconnect().await;
    let mut c4 = connect_when_admitted(&b, "c4").await;
    c4.publish(publish("t", "from c4", QoS::AtMostOnce, 1))
        .await;
    assert_eq!(payload(&c1.recv_publish().await), "from c4");
    b.stop().await;
}

/// The accept loop survives many connections opened and abandoned in every
/// state (nothing sent, half a CONNECT, a full CONNECT), and their slots are
/// all given back: afterwards `maximum_connections` clients still connect.
#[tokio::test]
async fn abandoned_connections_give_their_slots_back() {
    let mut o = Options::default();
    o.limits.maximum_connections = 20;
    let b = watched_broker(o).await;
    for round in 0..15 {
        let mut open = Vec::new();
        for i in 0..20 {
            let mut s = TcpStream::connect(b.addr).await.unwrap();
            match (round + i) % 3 {
                0 => {}
                1 => s.write_all(&CONNECT_C[..7]).await.unwrap(),
                _ => {
                    let id = format!("a{round}-{i}");
                    let mut c = Raw::open(b.addr, ProtocolVersion::V3_1_1).await;
                    c.send(Packet::Connect(Box::new(v311(&id)))).await;
                    drop(s);
                    open.push(Ok(c));
                    continue;
                }
            }
            open.push(Err(s));
        }
        drop(open);
    }
    // All 20 slots come back.
    let mut clients = Vec::new();
    for i in 0..20 {
        clients.push(connect_when_admitted(&b, &format!("z{i}")).await);
    }
    eventually("20 clients connected", || {
        b.stats.snapshot().clients_connected == 20
    })
    .await;
    drop(clients);
    eventually("all gone", || b.stats.snapshot().clients_connected == 0).await;
    assert_serving(&b).await;
    b.stop().await;
}

/// `maximum_connections_per_ip` = 2: the third connection from 127.0.0.1
/// is closed as it is accepted, without CONNACK, and counted; the two
/// admitted ones keep working; when one goes, a new one is admitted.
#[tokio::test]
async fn a_third_connection_from_one_address_is_closed_at_maximum_connections_per_ip_2() {
    let mut o = Options::default();
    o.limits.maximum_connections_per_ip = 2;
    let b = watched_broker(o).await;
    let mut c1 = Raw::connected(b.addr, v5("c1")).await;
    let mut c2 = Raw::connected(b.addr, v311("c2")).await;

    let mut third = TcpStream::connect(b.addr).await.unwrap();
    // The broker may close before the CONNECT is written.
    let _ = third.write_all(CONNECT_C).await;
    assert_eq!(read_to_close(&mut third).await, b"", "no CONNACK");
    let mut third = Raw::open(b.addr, ProtocolVersion::V5).await;
    let _ = third.try_send(Packet::Connect(Box::new(v5("c3")))).await;
    assert_eq!(third.expect_closed().await, vec![], "no CONNACK");
    let s = b.stats.snapshot();
    assert_eq!(s.connections_refused_per_ip, 2);
    assert_eq!(s.connect_rate_refused, 0);
    assert_eq!(s.clients_total, 2, "never got as far as CONNECT");

    // The admitted ones are unaffected.
    c1.subscribe(1, "t", QoS::AtLeastOnce).await;
    c2.publish(publish("t", "hi", QoS::AtLeastOnce, 1)).await;
    let p = c1.recv_publish().await;
    assert_eq!(payload(&p), "hi");
    c1.ack(&p).await;

    // A connection that ends gives its place back.
    c2.disconnect().await;
    let mut c3 = connect_when_admitted(&b, "c3").await;
    c3.publish(publish("t", "from c3", QoS::AtMostOnce, 1))
        .await;
    assert_eq!(payload(&c1.recv_publish().await), "from c3");
    // Abandoned before CONNECT, or mid-CONNECT, a connection still gives
    // its place back.
    drop(c3);
    for _ in 0..5 {
        let mut s = TcpStream::connect(b.addr).await.unwrap();
        s.write_all(&CONNECT_C[..7]).await.unwrap();
        drop(s);
        let c = connect_when_admitted(&b, "c4").await;
        drop(c);
    }
    c1.disconnect().await;
    b.stop().await;
}

/// `maximum_connect_rate_per_ip` = 2: of a burst of 10 connections from
/// 127.0.0.1, 2 are admitted and the others closed as they are accepted,
/// counted; a second later the bucket is full again and clients connect.
#[tokio::test]
async fn a_burst_past_maximum_connect_rate_per_ip_is_closed_and_counted() {
    const BURST: u64 = 10;
    let mut o = Options::default();
    o.limits.maximum_connect_rate_per_ip = 2;
    let b = watched_broker(o).await;
    let mut burst = Vec::new();
    for _ in 0..BURST {
        burst.push(TcpStream::connect(b.addr).await.unwrap());
    }
    // The broker closes the refused ones at once; the admitted ones wait
    // for their CONNECT.
    let mut admitted = Vec::new();
    for mut s in burst {
        let mut byte = [0u8; 1];
        match tokio::time::timeout(QUIET, s.read(&mut byte)).await {
            Ok(Ok(0) | Err(_)) => {}
            Ok(Ok(_)) => panic!("the broker sent something unasked"),
            Err(_) => admitted.push(s),
        }
    }
    // A token comes back every half second: one more may have, if the
    // burst took that long.
    assert!(
        (2..=3).contains(&admitted.len()),
        "{} admitted",
        admitted.len()
    );
    let refused = BURST - admitted.len() as u64;
    let s = b.stats.snapshot();
    assert_eq!(s.connect_rate_refused, refused);
    assert_eq!(s.connections_refused_per_ip, 0);
    // The admitted ones are served.
    for (i, mut s) in admitted.into_iter().enumerate() {
        let mut connect = CONNECT_C.to_vec();
        *connect.last_mut().unwrap() = b'a' + i as u8;
        s.write_all(&connect).await.unwrap();
        let mut connack = [0u8; 4];
        s.read_exact(&mut connack).await.unwrap();
        assert_eq!(connack, [0x20, 2, 0, 0]);
    }

    // A second later the bucket is full again.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let c1 = Raw::connected(b.addr, v5("later-1")).await;
    let c2 = Raw::connected(b.addr, v311("later-2")).await;
    assert_eq!(b.stats.snapshot().connect_rate_refused, refused);
    c1.disconnect().await;
    c2.disconnect().await;
    b.stop().await;
}

// ----- queues ----------------------------------------------------------------

/// `maximum_queued_messages` = 5: an offline persistent session keeps the
/// 5 oldest QoS 1 messages, drops the rest and counts the drops; the 5 are
/// delivered in order on reconnect.
#[tokio::test]
async fn offline_queue_keeps_the_oldest_five_and_counts_drops() {
    let mut o = Options::default();
    o.limits.maximum_queued_messages = 5;
    let b = watched_broker(o).await;
    let mut sub = Raw::connected(b.addr, connect(ProtocolVersion::V3_1_1, "offline", false)).await;
    sub.subscribe(1, "q", QoS::AtLeastOnce).await;
    sub.disconnect().await;
    eventually("the session to go offline", || {
        b.stats.snapshot().clients_disconnected == 1
    })
    .await;

    let mut publ = Raw::connected(b.addr, v5("pub")).await;
    for i in 0..8 {
        let reason = publ
            .publish(publish("q", &format!("m{i}"), QoS::AtLeastOnce, 1 + i))
            .await;
        // A 5.0 publisher hears that its message went nowhere.
        let want = if i < 5 {
            ReasonCode::Success
        } else {
            ReasonCode::QuotaExceeded
        };
        assert_eq!(reason, want, "m{i}");
    }
    assert_eq!(b.stats.snapshot().messages_dropped, 3);

    let (mut sub, ack) =
        Raw::connect(b.addr, connect(ProtocolVersion::V3_1_1, "offline", false)).await;
    assert!(ack.session_present);
    for i in 0..5 {
        let p = sub.recv_publish().await;
        assert_eq!(payload(&p), format!("m{i}"));
        sub.ack(&p).await;
    }
    sub.expect_nothing().await;
    assert_eq!(b.stats.snapshot().messages_dropped, 3);
    assert_serving(&b).await;
}

/// A QoS 1 subscriber that stops reading (and so never acknowledges)
/// costs its publishers one bounded pause, not its connection's life: once
/// the congestion episode is over the publisher goes on at full speed, the
/// stuck session's queue takes up to four times `maximum_queued_messages`
/// and every message past that is dropped, counted, and (5.0) answered
/// with 0x97. (Publishers used to be paused half a second per PUBLISH for
/// as long as the subscriber stayed connected: 2 messages a second.)
#[tokio::test]
async fn a_stuck_qos1_subscriber_pauses_publishers_once_then_its_queue_drops() {
    let mut o = Options::default();
    o.limits.maximum_queued_messages = 100;
    let b = watched_broker(o).await;
    let mut c = v5("stuck");
    c.keep_alive = 0;
    c.properties.receive_maximum = std::num::NonZeroU16::new(10);
    let mut stuck = Raw::connected(b.addr, c).await;
    stuck.subscribe(1, "t/#", QoS::AtLeastOnce).await;
    // From here on it reads nothing.

    let mut publ = Raw::connected(b.addr, v5("pub")).await;
    let (mut ok, mut quota) = (0, 0);
    let mut count = |reason: ReasonCode| match reason {
        ReasonCode::Success => ok += 1,
        ReasonCode::QuotaExceeded => quota += 1,
        other => panic!("PUBACK {other:?}"),
    };
    // A burst congests its queue (10 in flight, 140 queued)...
    let mut burst = bytes::BytesMut::new();
    for i in 1..=150 {
        let p = publish("t/x", &i.to_string(), QoS::AtLeastOnce, i);
        roost::codec::encode(&Packet::Publish(p), ProtocolVersion::V5, &mut burst).unwrap();
    }
    publ.send_bytes(&burst).await;
    for _ in 1..=150 {
        match publ.recv().await {
            Packet::PubAck(a) => count(a.reason),
            other => panic!("expected PUBACK, got {other:?}"),
        }
    }
    // ...then one message at a time, each waiting for its PUBACK: 2 a
    // second would take minutes; one pause of about a second, and then
    // full speed, takes a few.
    let rest = async {
        for i in 151..=1000u16 {
            count(publ.publish(publish("t/x", "m", QoS::AtLeastOnce, i)).await);
        }
    };
    tokio::time::timeout(Duration::from_secs(30), rest)
        .await
        .expect("the publisher is not held back for long by a stuck subscriber");
    // 10 in flight, 400 queued, the rest dropped.
    assert_eq!((ok, quota), (410, 590));
    let s = b.stats.snapshot();
    assert_eq!(s.messages_dropped, 590);
    assert_eq!(s.inflight, 410);
    drop(stuck);
    assert_serving(&b).await;
}

/// `maximum_queued_bytes`: an offline session holds at most that many
/// bytes of messages (topic and payload); past it messages are dropped and
/// counted, whatever the count limit says.
#[tokio::test]
async fn offline_queue_is_bounded_in_bytes() {
    let mut o = Options::default();
    o.limits.maximum_queued_bytes = 10_000;
    let b = watched_broker(o).await;
    let mut sub = Raw::connected(b.addr, v5_session("bytes", false, 600)).await;
    sub.subscribe(1, "q", QoS::AtLeastOnce).await;
    sub.disconnect().await;
    eventually("the session to go offline", || {
        b.stats.snapshot().clients_disconnected == 1
    })
    .await;

    let mut publ = Raw::connected(b.addr, v5("pub")).await;
    let body = "x".repeat(999); // 1,000 bytes with the topic
    let mut kept = 0;
    for i in 0..30 {
        let reason = publ
            .publish(publish("q", &body, QoS::AtLeastOnce, 1 + i))
            .await;
        if reason == ReasonCode::Success {
            kept += 1;
        } else {
            assert_eq!(reason, ReasonCode::QuotaExceeded);
        }
    }
    assert_eq!(kept, 10);
    assert_eq!(b.stats.snapshot().messages_dropped, 20);
    let (mut sub, ack) = Raw::connect(b.addr, v5_session("bytes", false, 600)).await;
    assert!(ack.session_present);
    for _ in 0..10 {
        let p = sub.recv_publish().await;
        sub.ack(&p).await;
    }
    sub.expect_nothing().await;
    // What is acknowledged no longer counts: many times the limit goes
    // through a client that keeps up.
    for i in 0..100 {
        let reason = publ
            .publish(publish("q", &body, QoS::AtLeastOnce, 1 + i))
            .await;
        assert_eq!(reason, ReasonCode::Success, "message {i}");
        let p = sub.recv_publish().await;
        sub.ack(&p).await;
    }
    assert_eq!(b.stats.snapshot().messages_dropped, 20);
    assert_serving(&b).await;
}

/// Publishes `n` retained messages `r/0` .. `r/{n-1}` at `qos`, pipelined.
async fn retain_many(b: &TestBroker, n: usize, qos: QoS) {
    let mut publ = Raw::connected(b.addr, v5("retainer")).await;
    let mut burst = bytes::BytesMut::new();
    for i in 0..n {
        let p = retained(&format!("r/{i}"), "v", qos, (i % 60_000 + 1) as u16);
        roost::codec::encode(&Packet::Publish(p), ProtocolVersion::V5, &mut burst).unwrap();
    }
    roost::codec::encode(&Packet::PingReq, ProtocolVersion::V5, &mut burst).unwrap();
    publ.send_bytes(&burst).await;
    loop {
        match publ.recv().await {
            Packet::PingResp => break,
            Packet::PubAck(_) => {}
            other => panic!("expected PUBACK or PINGRESP, got {other:?}"),
        }
    }
    eventually("every retained message stored", || {
        b.stats.snapshot().retained == n as u64
    })
    .await;
}

/// The retained messages a subscription matches are the broker's own
/// burst: a subscriber that reads as fast as it can gets every one of
/// them, at QoS 0 and at QoS 1, however far past the slow-consumer and
/// queue limits they go, and nothing is counted as dropped. (They used to
/// be subject to those limits: 9,999 of 30,000 arrived.)
#[tokio::test]
async fn every_retained_message_reaches_a_new_subscriber_that_keeps_up() {
    const N: usize = 10_000;
    let mut o = Options::default();
    o.limits.maximum_pending_writes = 1_000;
    o.limits.maximum_queued_messages = 1_000;
    let b = watched_broker(o).await;
    retain_many(&b, N, QoS::AtLeastOnce).await;
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
        let mut sub = Raw::connected(b.addr, v5(&unique("reader"))).await;
        let ack = sub.subscribe(1, "r/#", qos).await;
        assert!(ack.reasons[0].is_success());
        let mut seen = std::collections::HashSet::new();
        for _ in 0..N {
            let p = sub.recv_publish().await;
            assert!(p.retain, "RETAIN set on messages for a new subscription");
            assert_eq!(p.qos_pid.qos(), qos);
            assert!(seen.insert(p.topic.to_string()), "{} twice", p.topic);
            sub.ack(&p).await;
        }
        sub.expect_nothing().await;
        assert_eq!(b.stats.snapshot().messages_dropped, 0, "at {qos:?}");
        sub.disconnect().await;
    }
    assert_serving(&b).await;
}

/// A client that subscribes again and again to everything while it reads
/// nothing holds little waiting: retained messages are matched a page at a
/// time as it reads, a subscription made again starts over, and what its
/// connection holds is at most one copy of the retained store (one
/// reference per message; past it, dropped and counted). Once it reads, it
/// gets every one.
#[tokio::test]
async fn resubscribing_without_reading_holds_little_and_then_gets_them_all() {
    const N: usize = 2_000;
    let b = watched_broker(Options::default()).await;
    retain_many(&b, N, QoS::AtMostOnce).await;
    let mut c = v5("greedy");
    c.keep_alive = 0;
    let mut greedy = Raw::connected(b.addr, c).await;
    let mut subs = bytes::BytesMut::new();
    for i in 1..=20u16 {
        let s = subscribe(i, &[("r/#", opts(QoS::AtMostOnce))]);
        roost::codec::encode(&Packet::Subscribe(s), ProtocolVersion::V5, &mut subs).unwrap();
    }
    greedy.send_bytes(&subs).await;
    // 20 subscriptions to 2,000: each started with a page of 256, the
    // connection held at most 2,000 of them, and a page at a time follows.
    let mut topics = std::collections::BTreeSet::new();
    let mut subacks = 0;
    while topics.len() < N || subacks < 20 {
        match greedy.recv().await {
            Packet::Publish(p) => {
                topics.insert(p.topic.as_str().to_owned());
            }
            Packet::SubAck(_) => subacks += 1,
            other => panic!("expected PUBLISH or SUBACK, got {other:?}"),
        }
    }
    let dropped = b.stats.snapshot().messages_dropped;
    assert!(dropped <= 20 * 256, "{dropped} dropped");
    drop(greedy);
    assert_serving(&b).await;
}

/// `maximum_retained_bytes`: the retained store holds at most that much
/// (topic, payload and 128 bytes a message). Past it a retained message is
/// delivered to the subscribers there are but not retained, and counted;
/// one that would replace a smaller one clears the topic rather than leave
/// the stale value; clearing a topic makes room again.
#[tokio::test]
async fn the_retained_store_is_bounded_in_bytes() {
    let mut o = Options::default();
    o.limits.maximum_retained_bytes = 1_000; // four of 100 + 3 + 128 bytes
    let b = watched_broker(o).await;
    let mut live = Raw::connected(b.addr, v5("live")).await;
    live.subscribe(1, "r/#", QoS::AtMostOnce).await;
    let mut publ = Raw::connected(b.addr, v5("pub")).await;
    let body = "x".repeat(100);
    for i in 0..5u16 {
        publ.publish(retained(&format!("r/{i}"), &body, QoS::AtLeastOnce, i + 1))
            .await;
        assert_eq!(payload(&live.recv_publish().await), body, "delivered live");
    }
    let s = b.stats.snapshot();
    assert_eq!((s.retained, s.retained_refused), (4, 1));
    // Growing r/0 past the limit clears it: no stale value stays.
    publ.publish(retained("r/0", &"y".repeat(400), QoS::AtLeastOnce, 6))
        .await;
    let s = b.stats.snapshot();
    assert_eq!((s.retained, s.retained_refused), (3, 2));
    // Clearing r/1 makes room for r/4.
    publ.publish(retained("r/1", "", QoS::AtLeastOnce, 7)).await;
    publ.publish(retained("r/4", &body, QoS::AtLeastOnce, 8))
        .await;
    let mut late = Raw::connected(b.addr, v5("late")).await;
    late.subscribe(1, "r/#", QoS::AtMostOnce).await;
    let mut topics = Vec::new();
    for _ in 0..3 {
        topics.push(late.recv_publish().await.topic.to_string());
    }
    topics.sort();
    assert_eq!(topics, ["r/2", "r/3", "r/4"]);
    late.expect_nothing().await;
    assert_serving(&b).await;
}

/// `maximum_pending_writes`: a subscriber that never reads its socket does
/// not slow anyone down. QoS 0 publishers are never blocked, QoS 0 messages
/// to the slow one are dropped (and counted) once its socket and outbox are
/// full, and a fast subscriber still receives every message, in order.
#[tokio::test]
async fn slow_consumer_drops_qos0_without_blocking_anyone() {
    const N: usize = 2_000;
    const BATCH: usize = 25;
    let mut o = Options::default();
    o.limits.maximum_pending_writes = 64;
    let b = watched_broker(o).await;

    let mut slow = Raw::connected(b.addr, v5("slow")).await;
    slow.subscribe(1, "s/#", QoS::AtMostOnce).await;
    // From here on `slow` is never read.
    let mut fast = Raw::connected(b.addr, v5("fast")).await;
    fast.subscribe(1, "s/#", QoS::AtMostOnce).await;
    let mut publ = Raw::connected(b.addr, v5("pub")).await;

    // 2,000 x 16 KiB = 32 MiB, far more than the slow socket's buffers.
    let body = "x".repeat(16 * 1024);
    let run = async {
        for start in (0..N).step_by(BATCH) {
            for i in start..start + BATCH {
                publ.send(Packet::Publish(publish(
                    &format!("s/{i}"),
                    &body,
                    QoS::AtMostOnce,
                    1,
                )))
                .await;
            }
            // Pace by the fast subscriber, so only the slow one falls behind.
            for i in start..start + BATCH {
                let p = fast.recv_publish().await;
                assert_eq!(p.topic.as_str(), format!("s/{i}"));
                assert_eq!(p.payload.len(), body.len());
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("publishing to a slow consumer finishes in time");

    let dropped = b.stats.snapshot().messages_dropped;
    assert!(dropped > 0, "nothing dropped for the slow consumer");
    assert!(dropped < N as u64, "{dropped} dropped");
    // The core is not blocked either: a QoS 1 round trip still works.
    let r = publ
        .publish(publish("s/end", "end", QoS::AtLeastOnce, 7))
        .await;
    assert_eq!(r, ReasonCode::Success);
    assert_eq!(payload(&fast.recv_publish().await), "end");
    drop(slow);
    assert_serving(&b).await;
    b.stop().await;
}

// ----- subscriptions ---------------------------------------------------------

/// Fan-in at QoS 1 into one subscriber that takes one message at a time:
/// when its queue passes `maximum_queued_messages` the publishers are
/// slowed down instead of having acknowledged messages dropped; all of them
/// arrive, in order per publisher.
#[tokio::test]
async fn fan_in_qos1_slows_publishers_instead_of_dropping() {
    let (b, mut sink) = queue_limited_broker_and_sink(200).await;

    const PUBLISHERS: usize = 3;
    const EACH: usize = 300;
    let mut tasks = Vec::new();
    for p in 0..PUBLISHERS {
        let addr = b.addr;
        tasks.push(tokio::spawn(async move {
            let mut publ = Raw::connected(addr, v5(&format!("pub{p}"))).await;
            // Everything at once: the broker has to push back.
            for i in 0..EACH {
                let pid = (i + 1) as u16;
                publ.send(Packet::Publish(publish(
                    &format!("in/{p}"),
                    &i.to_string(),
                    QoS::AtLeastOnce,
                    pid,
                )))
                .await;
            }
            let mut acked = 0;
            while acked < EACH {
                match publ.recv().await {
                    Packet::PubAck(_) => acked += 1,
                    other => panic!("unexpected {other:?}"),
                }
            }
            publ
        }));
    }
    let mut next = [0usize; PUBLISHERS];
    for _ in 0..PUBLISHERS * EACH {
        let m = sink.recv_publish().await;
        let p: usize = m.topic.strip_prefix("in/").unwrap().parse().unwrap();
        assert_eq!(
            payload(&m),
            next[p].to_string(),
            "in order for publisher {p}"
        );
        next[p] += 1;
        sink.ack(&m).await;
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(b.stats.snapshot().messages_dropped, 0);
    sink.expect_nothing().await;
}

/// Fan-in at QoS 0 into one subscriber that reads as fast as it can, which
/// is slower than three publishers send: past `maximum_pending_writes / 8`
/// unwritten packets (or about 256 KiB of them) the publishers are paused
/// while it catches up, so a
/// live subscriber gets every message (in order per publisher) instead of
/// losing them to the slow-consumer drop. (Without the pauses, thousands
/// are dropped here. A stuck subscriber costs its publishers at most one
/// brief episode: `slow_consumer_drops_qos0_without_blocking_anyone`.)
#[tokio::test]
async fn fan_in_qos0_paces_publishers_to_a_live_subscriber() {
    let mut opts = Options::default();
    // Room for what the core's event queue may still hold once the
    // publishers are asked to pause (the feedback is not instant).
    opts.limits.maximum_pending_writes = 16_000;
    let b = watched_broker(opts).await;
    let mut sink = Raw::connected(b.addr, v5("sink")).await;
    sink.subscribe(1, "in/#", QoS::AtMostOnce).await;

    const PUBLISHERS: usize = 3;
    // 3 x 12,000 x 2 KiB = 72 MiB: more than the sockets' buffers and the
    // pending-writes limit hold together.
    const EACH: usize = 12_000;
    let body = "x".repeat(2048);
    let mut tasks = Vec::new();
    for p in 0..PUBLISHERS {
        let (addr, body) = (b.addr, body.clone());
        tasks.push(tokio::spawn(async move {
            let mut publ = Raw::connected(addr, v5(&format!("pub{p}"))).await;
            for i in 0..EACH {
                let payload = format!("{i} {body}");
                publ.send(Packet::Publish(publish(
                    &format!("in/{p}"),
                    &payload,
                    QoS::AtMostOnce,
                    1,
                )))
                .await;
            }
            publ
        }));
    }
    let mut next = [0usize; PUBLISHERS];
    for n in 0..PUBLISHERS * EACH {
        let m = tokio::time::timeout(WAIT, sink.recv_publish())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "message {n} never came; {} dropped",
                    b.stats.snapshot().messages_dropped
                )
            });
        let p: usize = m.topic.strip_prefix("in/").unwrap().parse().unwrap();
        let i: usize = payload(&m).split(' ').next().unwrap().parse().unwrap();
        assert_eq!(i, next[p], "in order for publisher {p}");
        next[p] += 1;
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(b.stats.snapshot().messages_dropped, 0);
}

fn two_subscriptions() -> Options {
    let mut o = Options::default();
    o.limits.maximum_subscriptions_per_session = 2;
    o
}

/// 5.0 section 3.9.3: a subscription over the session's quota gets SUBACK
/// 0x97 (Quota exceeded) and is not made; replacing an existing one is not
/// a new subscription.
#[tokio::test]
async fn v5_third_subscription_gets_quota_exceeded() {
    let b = watched_broker(two_subscriptions()).await;
    let mut c = Raw::connected(b.addr, v5("c")).await;
    let ack = c
        .subscribe_with(subscribe(
            1,
            &[
                ("a", opts(QoS::AtLeastOnce)),
                ("b", opts(QoS::AtMostOnce)),
                ("c", opts(QoS::AtLeastOnce)),
            ],
        ))
        .await;
    assert_eq!(
        ack.reasons,
        vec![
            ReasonCode::GrantedQos1,
            ReasonCode::Success,
            ReasonCode::QuotaExceeded
        ]
    );
    // Replacing "b" is allowed at the limit ([MQTT-3.8.4-3]).
    let ack = c.subscribe(2, "b", QoS::AtLeastOnce).await;
    assert_eq!(ack.reasons, vec![ReasonCode::GrantedQos1]);
    // "c" was not subscribed.
    let mut p = Raw::connected(b.addr, v5("p")).await;
    p.publish(publish("c", "no", QoS::AtMostOnce, 1)).await;
    p.publish(publish("a", "yes", QoS::AtMostOnce, 1)).await;
    assert_eq!(payload(&c.recv_publish().await), "yes");
    c.expect_nothing().await;
    // Unsubscribing frees a place.
    c.unsubscribe(3, &["a"]).await;
    let ack = c.subscribe(4, "c", QoS::AtMostOnce).await;
    assert_eq!(ack.reasons, vec![ReasonCode::Success]);
}

/// [MQTT-3.9.3-2] (3.1.1): a refused subscription gets return code 0x80.
#[tokio::test]
async fn v311_third_subscription_gets_0x80() {
    let b = watched_broker(two_subscriptions()).await;
    let mut c = Raw::connected(b.addr, v311("c")).await;
    let ack = c
        .subscribe_with(subscribe(
            1,
            &[
                ("a", opts(QoS::AtMostOnce)),
                ("b", opts(QoS::AtMostOnce)),
                ("c", opts(QoS::AtMostOnce)),
            ],
        ))
        .await;
    let codes: Vec<u8> = ack.reasons.iter().map(|r| r.code()).collect();
    assert_eq!(codes, [0x00, 0x00, 0x80]);
}

/// `maximum_subscription_bytes`: filters are counted in bytes too; the
/// filter that would pass the limit is refused (0x97), and a resubscription
/// to a filter the session holds is not a new one.
#[tokio::test]
async fn subscription_filters_are_bounded_in_bytes() {
    let mut o = Options::default();
    o.limits.maximum_subscription_bytes = 250;
    let b = watched_broker(o).await;
    let mut c = Raw::connected(b.addr, v5("filters")).await;
    let long = |n: usize| format!("f/{}", "a".repeat(98 + n)); // 101 bytes and up
    let ack = c.subscribe(1, &long(1), QoS::AtMostOnce).await;
    assert_eq!(ack.reasons, vec![ReasonCode::Success]);
    let ack = c.subscribe(2, &long(2), QoS::AtMostOnce).await;
    assert_eq!(ack.reasons, vec![ReasonCode::Success]);
    let ack = c.subscribe(3, &long(3), QoS::AtMostOnce).await;
    assert_eq!(ack.reasons, vec![ReasonCode::QuotaExceeded]);
    let ack = c.subscribe(4, &long(1), QoS::AtLeastOnce).await;
    assert_eq!(
        ack.reasons,
        vec![ReasonCode::GrantedQos1],
        "not a new filter"
    );
    // Unsubscribing gives the room back.
    c.unsubscribe(5, &[&long(2)]).await;
    let ack = c.subscribe(6, &long(3), QoS::AtMostOnce).await;
    assert_eq!(ack.reasons, vec![ReasonCode::Success]);
    assert_serving(&b).await;
}

// ----- topic depth -----------------------------------------------------------

/// 10,000 levels: deep enough to overflow the stack of any recursive walk
/// of the subscription or retained tree.
fn deep(level: &str) -> String {
    vec![level; 10_000].join("/")
}

/// A SUBSCRIBE whose filter has 10,000 levels is refused with SUBACK 0x8F
/// (Topic Filter invalid; `Limits::maximum_topic_levels`), and the broker
/// survives it.
#[tokio::test]
async fn v5_subscribe_with_ten_thousand_levels_is_refused() {
    let b = watched_broker(Options::default()).await;
    let mut c = Raw::connected(b.addr, v5("deep")).await;
    for filter in [deep("a"), deep("+"), format!("{}/#", deep("a"))] {
        let ack = c.subscribe(1, &filter, QoS::AtMostOnce).await;
        assert_eq!(ack.reasons, vec![ReasonCode::TopicFilterInvalid]);
    }
    // A publish that would match: nothing arrives, nothing breaks.
    let mut p = Raw::connected(b.addr, v5("p")).await;
    p.publish(publish(&deep("a"), "x", QoS::AtMostOnce, 1))
        .await;
    c.expect_nothing().await;
    assert_serving(&b).await;
    b.stop().await;
}

/// 3.1.1: the same refusal is SUBACK return code 0x80.
#[tokio::test]
async fn v311_subscribe_with_ten_thousand_levels_is_refused() {
    let b = watched_broker(Options::default()).await;
    let mut c = Raw::connected(b.addr, v311("deep")).await;
    let ack = c.subscribe(1, &deep("+"), QoS::AtMostOnce).await;
    assert_eq!(
        ack.reasons.iter().map(|r| r.code()).collect::<Vec<_>>(),
        [0x80]
    );
    assert_serving(&b).await;
}

/// A PUBLISH whose topic has 10,000 levels gets DISCONNECT 0x90 (Topic
/// Name invalid) for 5.0 and a close for 3.1.1; it is neither routed nor
/// retained, even with a `#` subscriber present.
#[tokio::test]
async fn publish_with_ten_thousand_levels_is_refused() {
    let b = watched_broker(Options::default()).await;
    let mut all = Raw::connected(b.addr, v5("all")).await;
    all.subscribe(1, "#", QoS::AtMostOnce).await;

    let mut c = Raw::connected(b.addr, v5("p5")).await;
    c.send(Packet::Publish(retained(
        &deep("a"),
        "x",
        QoS::AtLeastOnce,
        1,
    )))
    .await;
    let got = c.expect_closed().await;
    assert!(
        matches!(&got[..], [Packet::Disconnect(d)] if d.reason == ReasonCode::TopicNameInvalid),
        "{got:?}"
    );
    let mut c = Raw::connected(b.addr, v311("p3")).await;
    c.send(Packet::Publish(publish(&deep(""), "x", QoS::AtMostOnce, 1)))
        .await;
    assert!(c.expect_closed().await.is_empty());

    all.expect_nothing().await;
    assert_eq!(b.stats.snapshot().retained, 0);
    assert_serving(&b).await;
    b.stop().await;
}

/// Packets a client pipelined behind one that made the broker close the
/// connection are read but not acted on: they are counted as ignored
/// (`packets_ignored`), so every packet read is handled or counted.
#[tokio::test]
async fn packets_behind_a_protocol_error_are_counted_as_ignored() {
    let mut o = Options::default();
    o.limits.maximum_topic_levels = 4;
    let b = watched_broker(o).await;
    let mut c = Raw::connected(b.addr, v5("late")).await;
    let mut burst = bytes::BytesMut::new();
    let p = publish("a/b/c/d/e/f", "x", QoS::AtMostOnce, 1);
    roost::codec::encode(&Packet::Publish(p), ProtocolVersion::V5, &mut burst).unwrap();
    roost::codec::encode(&Packet::PingReq, ProtocolVersion::V5, &mut burst).unwrap();
    c.send_bytes(&burst).await;
    let got = c.expect_closed().await;
    assert!(
        matches!(&got[..], [Packet::Disconnect(d)] if d.reason == ReasonCode::TopicNameInvalid),
        "{got:?}"
    );
    assert_eq!(b.stats.snapshot().packets_ignored, 1, "the PINGREQ");
    assert_serving(&b).await;
}

/// A will topic with 10,000 levels is refused at CONNECT: 5.0 gets CONNACK
/// 0x90; 3.1.1 has no fitting return code, so it is closed without
/// CONNACK ([MQTT-3.2.2-6]).
#[tokio::test]
async fn will_topic_with_ten_thousand_levels_is_refused() {
    let b = watched_broker(Options::default()).await;
    let mut all = Raw::connected(b.addr, v5("all")).await;
    all.subscribe(1, "#", QoS::AtMostOnce).await;
    let mut c5 = v5("w5");
    c5.will = Some(will(&deep("w"), "x", QoS::AtMostOnce, false));
    let (mut raw, ack) = Raw::connect(b.addr, c5).await;
    assert_eq!(ack.reason, ReasonCode::TopicNameInvalid);
    assert!(raw.expect_closed().await.is_empty());

    let mut c3 = v311("w3");
    c3.will = Some(will(&deep("w"), "x", QoS::AtMostOnce, false));
    let mut raw = Raw::open(b.addr, ProtocolVersion::V3_1_1).await;
    raw.send(Packet::Connect(Box::new(c3))).await;
    let got = raw.expect_closed().await;
    assert!(got.is_empty(), "{got:?}");
    all.expect_nothing().await;
    assert_serving(&b).await;
    b.stop().await;
}

/// Up to `maximum_topic_levels` (128 by default) levels work end to end.
#[tokio::test]
async fn topic_at_the_level_limit_works() {
    let b = watched_broker(Options::default()).await;
    let name = vec!["l"; 128].join("/");
    let filter = format!("{}/#", vec!["+"; 127].join("/"));
    let mut c = Raw::connected(b.addr, v5("c")).await;
    let ack = c.subscribe(1, &filter, QoS::AtMostOnce).await;
    assert_eq!(ack.reasons, vec![ReasonCode::Success]);
    let mut p = Raw::connected(b.addr, v311("p")).await;
    p.publish(retained(&name, "deep", QoS::AtLeastOnce, 1))
        .await;
    let got = c.recv_publish().await;
    assert_eq!(got.topic, name.as_str());
    // And the retained copy is found through the deep filter.
    let mut late = Raw::connected(b.addr, v5("late")).await;
    late.subscribe(1, &filter, QoS::AtMostOnce).await;
    assert_eq!(payload(&late.recv_publish().await), "deep");
    // One level more is refused.
    let ack = c.subscribe(2, &format!("{name}/x"), QoS::AtMostOnce).await;
    assert_eq!(ack.reasons, vec![ReasonCode::TopicFilterInvalid]);
}

// ----- the intake budget -----------------------------------------------------

/// An event hook with nothing to say: its presence sends every PUBLISH
/// through the hooks path (one event each) instead of batches.
struct Silent;
impl roost::hooks::EventHook for Silent {}

/// PUBLISHes read but not yet routed share a 1 MiB budget (`intake`); one
/// larger than all of it takes all of it. Three publishers each sending
/// three 1.5 MiB messages at once, with and without a hook (batched
/// events, single events), all get through, intact and acknowledged: the
/// budget makes readers wait, never wait forever.
#[tokio::test]
async fn publishes_larger_than_the_intake_budget_get_through() {
    for hooked in [false, true] {
        let mut opts = Options::default();
        opts.limits.maximum_packet_size = 4 * 1024 * 1024;
        let server = roost::Server::new(opts);
        let server = if hooked {
            server.event_hook(Silent)
        } else {
            server
        };
        let b = TestBroker::with_server(server).await;
        let mut sink = Raw::connected(b.addr, v5("sink")).await;
        sink.subscribe(1, "big/#", QoS::AtLeastOnce).await;
        const PUBLISHERS: usize = 3;
        const EACH: usize = 3;
        let body = |p: usize, i: usize| -> String {
            let c = char::from(b'a' + (p * EACH + i) as u8);
            std::iter::repeat_n(c, 1536 * 1024).collect()
        };
        let mut tasks = Vec::new();
        for p in 0..PUBLISHERS {
            let addr = b.addr;
            tasks.push(tokio::spawn(async move {
                let mut publ = Raw::connected(addr, v5(&format!("pub{p}"))).await;
                for i in 0..EACH {
                    let m = publish(
                        &format!("big/{p}"),
                        &body(p, i),
                        QoS::AtLeastOnce,
                        1 + i as u16,
                    );
                    publ.send(Packet::Publish(m)).await;
                }
                for _ in 0..EACH {
                    match publ.recv().await {
                        Packet::PubAck(a) => assert!(a.reason.is_success()),
                        other => panic!("unexpected {other:?}"),
                    }
                }
            }));
        }
        let mut next = [0usize; PUBLISHERS];
        for _ in 0..PUBLISHERS * EACH {
            let m = sink.recv_publish().await;
            let p: usize = m.topic.strip_prefix("big/").unwrap().parse().unwrap();
            assert!(
                payload(&m) == body(p, next[p]),
                "hooked {hooked}: publisher {p}"
            );
            next[p] += 1;
            sink.ack(&m).await;
        }
        for t in tasks {
            t.await.unwrap();
        }
        sink.expect_nothing().await;
    }
}

/// A publisher held back by a congested subscriber (its reads paused, its
/// packets waiting in the broker's buffers) is not silent: the keep-alive
/// does not count the time the broker spends not reading. Its 1 s
/// keep-alive would otherwise end it within 2.5 s here.
#[tokio::test]
async fn a_publisher_paused_by_congestion_is_not_timed_out() {
    let (b, stuck) = queue_limited_broker_and_sink(10).await;
    // `stuck` never acknowledges: its queue fills and stays congested.
    let mut pc = v5("publisher");
    pc.keep_alive = 1;
    let mut publ = Raw::connected(b.addr, pc).await;
    for i in 0..300u16 {
        publ.send(Packet::Publish(publish(
            "in/x",
            "m",
            QoS::AtLeastOnce,
            i + 1,
        )))
        .await;
    }
    // Four seconds of pings, all queued behind the held-back publishes.
    let start = tokio::time::Instant::now();
    while start.elapsed() < Duration::from_secs(4) {
        publ.send(Packet::PingReq).await;
        while let Some(p) = publ.recv_within(Duration::from_millis(500)).await {
            assert!(
                !matches!(p, Packet::Disconnect(_)),
                "disconnected after {:?}: {p:?}",
                start.elapsed()
            );
        }
    }
    drop(stuck);
    assert_serving(&b).await;
}

// ----- memory at the network edge --------------------------------------------

/// A QoS 0 PUBLISH on `topic` setting up (or using) topic alias `alias`.
fn aliased(topic: &str, alias: u16) -> roost::codec::Publish {
    let mut p = publish(topic, "x", QoS::AtMostOnce, 0);
    p.properties.topic_alias = std::num::NonZeroU16::new(alias);
    p
}

/// `maximum_topic_alias_bytes`: aliases on long topics are refused with
/// DISCONNECT 0x97 once they would hold more than the budget (by default
/// 64 KiB: one 60 KB topic fits, a second does not), however many aliases
/// the Topic Alias Maximum allows; the refusal is counted.
#[tokio::test]
async fn inbound_topic_aliases_are_bounded_in_bytes() {
    let b = watched_broker(Options::default()).await;
    let (mut c, ack) = Raw::connect(b.addr, v5("aliaser")).await;
    let max = ack.properties.topic_alias_maximum.expect("aliases offered");
    assert!(max >= 2, "{ack:?}");
    let long = |tag: char| format!("a/{}", tag.to_string().repeat(60_000));
    c.publish(aliased(&long('a'), 1)).await;
    // Re-pointing alias 1 frees what its old topic held.
    c.publish(aliased(&long('b'), 1)).await;
    c.sync().await;
    c.send(Packet::Publish(aliased(&long('c'), 2))).await;
    assert_eq!(expect_disconnect(&mut c).await, ReasonCode::QuotaExceeded);
    assert_eq!(b.stats.snapshot().topic_alias_refused, 1);
    assert_serving(&b).await;
}

/// Towards a subscriber, aliases stop at the same byte budget even when the
/// client allows thousands: later topics go in full, without an alias.
#[tokio::test]
async fn outbound_topic_aliases_are_bounded_in_bytes() {
    let b = watched_broker(Options::default()).await;
    let mut c = v5("alias-sub");
    c.properties.topic_alias_maximum = Some(u16::MAX);
    let mut sub = Raw::connected(b.addr, c).await;
    sub.subscribe(1, "big/#", QoS::AtMostOnce).await;
    let mut publ = Raw::connected(b.addr, v5("alias-pub")).await;
    let topics: Vec<String> = (0..3)
        .map(|i| format!("big/{i}/{}", "t".repeat(30_000)))
        .collect();
    for t in &topics {
        publ.publish(publish(t, "x", QoS::AtMostOnce, 0)).await;
    }
    let mut aliases = Vec::new();
    for t in &topics {
        let m = sub.recv_publish().await;
        assert_eq!(&m.topic, t.as_str(), "a first use carries the topic");
        aliases.push(m.properties.topic_alias.map(|a| a.get()));
    }
    assert_eq!(aliases, vec![Some(1), Some(2), None]);
}

/// `packet_read_timeout`: with keep-alive 0 (no keep-alive at all), a
/// PUBLISH declaring a megabyte and trickled a byte at a time no longer
/// holds its connection and buffer forever: once the timeout has passed
/// since its first bytes, the connection is closed with DISCONNECT 0x8D
/// and counted.
#[tokio::test]
async fn trickled_packet_is_cut_off_at_packet_read_timeout() {
    let mut o = Options::default();
    o.limits.packet_read_timeout = Duration::from_millis(500);
    let b = watched_broker(o).await;
    let mut c = v5("trickler");
    c.keep_alive = 0;
    let mut raw = Raw::connected(b.addr, c).await;
    // PUBLISH QoS 0, remaining length 1,000,000 (within the 1 MiB maximum).
    raw.send_bytes(&[0x30, 0xC0, 0x84, 0x3D, 0x00]).await;
    let start = tokio::time::Instant::now();
    let answer = loop {
        assert!(
            start.elapsed() < WAIT,
            "still open after {:?}",
            start.elapsed()
        );
        raw.send_bytes(b"t").await;
        if let Some(p) = raw.recv_within(Duration::from_millis(100)).await {
            break p;
        }
    };
    match answer {
        Packet::Disconnect(d) => assert_eq!(d.reason, ReasonCode::KeepAliveTimeout),
        other => panic!("expected DISCONNECT, got {other:?}"),
    }
    assert_eq!(b.stats.snapshot().packet_read_timeouts, 1);
    assert_serving(&b).await;
}

/// The packet read timeout runs only while a packet is partly read: a
/// connection with keep-alive 0 that sends nothing for longer is left
/// alone, and so is one whose packets arrive whole.
#[tokio::test]
async fn idle_connection_is_not_cut_off_by_packet_read_timeout() {
    let mut o = Options::default();
    o.limits.packet_read_timeout = Duration::from_millis(200);
    let b = watched_broker(o).await;
    let mut c = v5("idler");
    c.keep_alive = 0;
    let mut raw = Raw::connected(b.addr, c).await;
    for _ in 0..3 {
        raw.sync().await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    raw.sync().await;
    assert_eq!(b.stats.snapshot().packet_read_timeouts, 0);
}

/// The start of a CONNECT at protocol `level` whose fixed header declares
/// `size` bytes in all: the fixed header and the variable header, no more.
fn connect_declaring(level: u8, size: usize) -> Vec<u8> {
    let remaining = (1..=4)
        .map(|k| size - 1 - k)
        .find(|&r| varint(r).len() == size - 1 - r)
        .expect("a size a varint can declare");
    let mut out = vec![0x10];
    out.extend(varint(remaining));
    out.extend([0, 4, b'M', b'Q', b'T', b'T', level, 0x02, 0, 0]);
    out
}

fn varint(mut n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (n % 128) as u8;
        n /= 128;
        if n == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

/// `maximum_connect_size`: a CONNECT declaring a megabyte (within
/// `maximum_packet_size`) is refused from its fixed header, before its body
/// is buffered: CONNACK 0x95 for 5.0, a plain close for 3.1.1; counted.
#[tokio::test]
async fn connect_larger_than_maximum_connect_size_is_refused_at_once() {
    let b = watched_broker(Options::default()).await;
    let mut s = TcpStream::connect(b.addr).await.unwrap();
    s.write_all(&connect_declaring(5, 1_000_000)).await.unwrap();
    assert_eq!(read_to_close(&mut s).await, [0x20, 3, 0, 0x95, 0]);
    let mut s = TcpStream::connect(b.addr).await.unwrap();
    s.write_all(&connect_declaring(4, 1_000_000)).await.unwrap();
    assert_eq!(read_to_close(&mut s).await, b"");
    assert_eq!(b.stats.snapshot().connect_too_large, 2);

    // A whole CONNECT too: a 60 KB will fits the default 64 KiB, a 60 KB
    // will plus a 60 KB password only once the limit is raised.
    let big = |id: &str, password: bool| {
        let mut c = v5(id);
        c.will = Some(will("w", &"w".repeat(60_000), QoS::AtMostOnce, false));
        if password {
            c.username = Some("u".into());
            c.password = Some(vec![b'p'; 60_000].into());
        }
        c
    };
    let _ok = Raw::connected(b.addr, big("will", false)).await;
    let (_, ack) = Raw::connect(b.addr, big("will-and-password", true)).await;
    assert_eq!(ack.reason, ReasonCode::PacketTooLarge);
    assert_eq!(b.stats.snapshot().connect_too_large, 3);
    let mut o = Options::default();
    o.limits.maximum_connect_size = 200 * 1024;
    let b = watched_broker(o).await;
    let _ok = Raw::connected(b.addr, big("will-and-password", true)).await;
    assert_eq!(b.stats.snapshot().connect_too_large, 0);
}

/// `maximum_unauthenticated_bytes`: connections that declare large
/// CONNECTs and never finish them hold at most the budget between them;
/// past it a newcomer is refused (counted), and the budget comes back as
/// the holders go.
#[tokio::test]
async fn unauthenticated_bytes_are_bounded_across_connections() {
    const SIZE: usize = 16 * 1024;
    let mut o = Options::default();
    o.limits.maximum_connect_size = SIZE as u32;
    o.limits.maximum_unauthenticated_bytes = 4 * SIZE + 100;
    let b = watched_broker(o).await;
    // All but the last byte of a CONNECT of SIZE bytes.
    let mut partial = connect_declaring(4, SIZE);
    partial.resize(SIZE - 1, 0);
    let mut holders = Vec::new();
    for i in 1..=4u64 {
        let mut s = TcpStream::connect(b.addr).await.unwrap();
        s.write_all(&partial).await.unwrap();
        eventually("the partial CONNECT is read", || {
            b.stats.snapshot().bytes_received == i * (SIZE as u64 - 1)
        })
        .await;
        holders.push(s);
    }
    let mut newcomer = TcpStream::connect(b.addr).await.unwrap();
    newcomer.write_all(&partial).await.unwrap();
    assert_eq!(read_to_close(&mut newcomer).await, b"");
    assert_eq!(b.stats.snapshot().unauthenticated_refused, 1);
    drop(holders);
    let c = connect_when_admitted(&b, "after").await;
    c.disconnect().await;
    assert_eq!(b.stats.snapshot().unauthenticated_refused, 1);
}

// ----- the memory budget ---------------------------------------------------

/// Sessions only memory holds (the in-memory store) are bounded by
/// `memory.budget`: past it their messages are dropped. Publishers to
/// slow subscribers are paused before that (from three quarters of it),
/// so a load larger than the budget arrives whole, at the subscribers'
/// pace. Four pairs each send 100 x 64 KiB (26 MiB in all) through a
/// 16 MiB budget to subscribers that take about 300 a second: before,
/// about a third of the copies were dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_subscribers_pause_their_publishers_before_the_memory_budget_drops() {
    const PAIRS: usize = 4;
    const N: usize = 100;
    let mut opts = Options::default();
    opts.memory.budget = 16 * 1024 * 1024;
    let b = TestBroker::with(opts).await;
    let mut readers = Vec::new();
    for i in 0..PAIRS {
        let mut sub = Raw::connected(b.addr, v311(&format!("budget-sub-{i}"))).await;
        sub.subscribe(1, &format!("budget/{i}"), QoS::AtLeastOnce)
            .await;
        readers.push(delivery::slow_reader(sub, N, Duration::from_millis(3)));
    }
    let filler = "x".repeat(64 * 1024 - 6);
    let mut publishers = Vec::new();
    for i in 0..PAIRS {
        let (addr, filler) = (b.addr, filler.clone());
        publishers.push(tokio::spawn(async move {
            let mut publ = Raw::connected(addr, v311(&format!("budget-pub-{i}"))).await;
            for n in 0..N {
                let m = publish(
                    &format!("budget/{i}"),
                    &format!("{n:06}{filler}"),
                    QoS::AtLeastOnce,
                    n as u16 + 1,
                );
                publ.send(Packet::Publish(m)).await;
            }
            for _ in 0..N {
                match publ.recv_within(Duration::from_secs(60)).await {
                    Some(Packet::PubAck(_)) => {}
                    other => panic!("expected PUBACK, got {other:?}"),
                }
            }
        }));
    }
    for p in publishers {
        p.await.unwrap();
    }
    for r in readers {
        let got = r.await.unwrap().len();
        assert_eq!(
            got,
            N,
            "each subscriber gets every message ({} dropped)",
            b.stats.snapshot().messages_dropped
        );
    }
    assert_eq!(b.stats.snapshot().messages_dropped, 0);
}
