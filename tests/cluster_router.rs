//! The cluster router under pressure (issue 19): two in-process nodes
//! joined through one real nats-server (`common::cluster`), real MQTT
//! clients on each. A publisher whose message the router had to let go of
//! is refused, never left waiting nor told "success" (5.0: 0x97; 3.x:
//! disconnected without an acknowledgement), and counted; a node stopping
//! while the router waits for JetStream still stops; pipelined publishes
//! arrive on the other node once each, in each publisher's order.
#![cfg(feature = "cluster")]

mod common;

use common::cluster::{nodes_with, two_nodes};
use common::nats::NatsCluster;
use common::{publish, v311, v5, Raw, WAIT};
use roost::codec::{Packet, QoS, ReasonCode};
use roost::{Options, Server};
use std::time::Duration;

/// Node options whose router holds little while NATS is down: 4 in flight
/// and 8 queued (a connected session's queue holds four times as many
/// before it drops: see `Session::deliver`).
fn small_router() -> Server {
    let mut opts = Options::default();
    opts.limits.maximum_inflight = 4;
    opts.limits.maximum_queued_messages = 8;
    Server::new(opts)
}

/// Sends QoS 1 messages `<who>-<pid>` on `full/<who>` without waiting.
async fn send(raw: &mut Raw, who: &str, pids: std::ops::Range<u16>) {
    for pid in pids {
        let body = format!("{who}-{pid}");
        raw.send(Packet::Publish(publish(
            &format!("full/{who}"),
            &body,
            QoS::AtLeastOnce,
            pid,
        )))
        .await;
    }
}

/// Reads `n` PUBACKs, which must come in packet id order from `first`.
async fn pubacks(raw: &mut Raw, first: u16, n: u16) -> Vec<ReasonCode> {
    let mut reasons = Vec::new();
    for pid in first..first + n {
        match raw.recv().await {
            Packet::PubAck(r) => {
                assert_eq!(r.packet_id.get(), pid, "acknowledged in order");
                reasons.push(r.reason);
            }
            other => panic!("expected PUBACK {pid}, got {other:?}"),
        }
    }
    reasons
}

/// How many of `reasons` lead with Success; the rest must all be `rest`.
fn successes_then(reasons: &[ReasonCode], rest: ReasonCode) -> usize {
    let ok = reasons.iter().take_while(|r| r.is_success()).count();
    assert!(
        reasons[ok..].iter().all(|r| *r == rest),
        "successes, then only {rest:?}: {reasons:?}"
    );
    ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishers_whose_copy_the_router_dropped_are_refused_and_counted() {
    let mut nats = NatsCluster::start(1).await;
    let (a, b) = nodes_with(&nats, small_router).await;
    let mut sub = Raw::connected(b.addr, v5("sub-b")).await;
    sub.subscribe(1, "full/#", QoS::AtLeastOnce).await;
    let mut p5 = Raw::connected(a.addr, v5("p5")).await;
    let mut p3 = Raw::connected(a.addr, v311("p3")).await;
    // Up: the path works.
    assert_eq!(
        p5.publish(publish("full/up", "up", QoS::AtLeastOnce, 1))
            .await,
        ReasonCode::Success
    );
    let got = sub.recv_publish().await;
    sub.ack(&got).await;
    // A's own copy of it, read back from the stream (the cluster's log),
    // is the second message A's core received.
    let received = || a.stats.snapshot().messages_received;
    common::eventually("A to inject its own message", || received() >= 2).await;

    // Down: the router keeps what its window and queue hold, and lets go
    // of the rest. Both publishers start inside those bounds and end
    // beyond them.
    nats.kill_all();
    send(&mut p5, "p5", 2..12).await;
    send(&mut p3, "p3", 1..6).await;
    // Those are in before the rest (two connections: read in any order).
    common::eventually("the first 15 to reach A's core", || received() >= 17).await;
    send(&mut p5, "p5", 12..62).await;
    send(&mut p3, "p3", 6..56).await;
    // The refusals queue behind the acknowledgements that wait for
    // JetStream (acknowledgements go in order): nothing comes yet.
    if let Some(p) = p5.recv_within(Duration::from_secs(1)).await {
        panic!("acknowledged while JetStream is down: {p:?}");
    }
    nats.restart_all().await;

    let reasons = pubacks(&mut p5, 2, 60).await;
    let p5_ok = successes_then(&reasons, ReasonCode::QuotaExceeded);
    assert!(
        (1..60).contains(&p5_ok),
        "some kept, some refused: {reasons:?}"
    );
    // 3.x has no refusal: its successes, then the connection closes.
    let closed = p3.expect_closed().await;
    let mut p3_ok = 0u16;
    for p in &closed {
        match p {
            Packet::PubAck(r) => {
                p3_ok += 1;
                assert_eq!(r.packet_id.get(), p3_ok, "in order, none skipped");
            }
            other => panic!("expected PUBACK, got {other:?}"),
        }
    }
    assert!(
        (1..55).contains(&p3_ok),
        "some acknowledged before the refusal: {closed:?}"
    );
    let refused = (60 - p5_ok) as u64 + u64::from(55 - p3_ok);
    assert_eq!(a.stats.snapshot().cluster_refused, refused);

    // The other node got exactly what was acknowledged, once, in each
    // publisher's order.
    let mut got = Vec::new();
    while let Some(p) = sub.recv_within(Duration::from_secs(1)).await {
        let Packet::Publish(p) = p else {
            panic!("expected PUBLISH, got {p:?}")
        };
        sub.ack(&p).await;
        got.push(common::payload(&p).to_owned());
    }
    let of =
        |who: &str| -> Vec<String> { got.iter().filter(|g| g.starts_with(who)).cloned().collect() };
    let expect = |who: &str, first: u16, n: usize| -> Vec<String> {
        (first..)
            .take(n)
            .map(|pid| format!("{who}-{pid}"))
            .collect()
    };
    assert_eq!(of("p5-"), expect("p5", 2, p5_ok));
    assert_eq!(of("p3-"), expect("p3", 1, usize::from(p3_ok)));
    drop((a, b));
}

/// A node stopping while its router waits for JetStream stops in time,
/// and its publisher was never told "success".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_stopping_while_jetstream_is_down_stops_and_acknowledges_nothing() {
    let mut nats = NatsCluster::start(1).await;
    let (a, b) = two_nodes(&nats).await;
    let mut publ = Raw::connected(a.addr, v5("pub-a")).await;
    nats.kill_all();
    for pid in 1..=3 {
        publ.send(Packet::Publish(publish(
            "stop/x",
            "x",
            QoS::AtLeastOnce,
            pid,
        )))
        .await;
    }
    assert!(publ.recv_within(Duration::from_millis(500)).await.is_none());
    // `stop` fails the test unless `serve` returns within WAIT.
    let started = std::time::Instant::now();
    a.stop().await;
    assert!(started.elapsed() < WAIT);
    for p in publ.expect_closed().await {
        assert!(
            !matches!(&p, Packet::PubAck(r) if r.reason.is_success()),
            "acknowledged what JetStream never stored: {p:?}"
        );
    }
    drop(b);
}

/// Thousands of QoS 1 messages from two publishers on A, sent without
/// waiting (the router publishes many at once): B's subscriber gets every
/// one once, in each publisher's order, and every publisher's
/// acknowledgement is a success.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_messages_arrive_once_each_in_each_publishers_order() {
    let nats = NatsCluster::start(1).await;
    let (a, b) = two_nodes(&nats).await;
    let mut sub = Raw::connected(b.addr, v5("sub-b")).await;
    sub.subscribe(1, "pipe/#", QoS::AtLeastOnce).await;
    let mut pubs = [
        Raw::connected(a.addr, v5("pipe-0")).await,
        Raw::connected(a.addr, v5("pipe-1")).await,
    ];
    const EACH: u32 = 2_000;
    const WINDOW: u32 = 500;
    let mut sent = [0u32; 2];
    let mut acked = [0u32; 2];
    let mut next = [0u32; 2];
    let mut received = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while received < 2 * EACH {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{received} of {} received",
            2 * EACH
        );
        for (i, p) in pubs.iter_mut().enumerate() {
            while sent[i] < EACH && sent[i] - acked[i] < WINDOW {
                sent[i] += 1;
                let pid = (sent[i] % 65_000 + 1) as u16;
                p.send(Packet::Publish(publish(
                    &format!("pipe/{i}"),
                    &format!("{i} {}", sent[i]),
                    QoS::AtLeastOnce,
                    pid,
                )))
                .await;
            }
            while let Some(ack) = p.recv_within(Duration::ZERO).await {
                let Packet::PubAck(r) = ack else {
                    panic!("expected PUBACK, got {ack:?}")
                };
                assert_eq!(r.reason, ReasonCode::Success);
                acked[i] += 1;
                assert_eq!(u32::from(r.packet_id.get()), acked[i] % 65_000 + 1);
            }
        }
        let mut wait = Duration::from_millis(20);
        while let Some(p) = sub.recv_within(wait).await {
            wait = Duration::ZERO;
            let Packet::Publish(p) = p else {
                panic!("expected PUBLISH, got {p:?}")
            };
            sub.ack(&p).await;
            let (who, n) = common::payload(&p).split_once(' ').unwrap();
            let who: usize = who.parse().unwrap();
            let n: u32 = n.parse().unwrap();
            next[who] += 1;
            assert_eq!(n, next[who], "publisher {who}: once each, in order");
            received += 1;
        }
    }
    sub.expect_nothing().await;
    for (i, p) in pubs.iter_mut().enumerate() {
        while acked[i] < EACH {
            let Packet::PubAck(r) = p.recv().await else {
                panic!("expected PUBACK")
            };
            assert_eq!(r.reason, ReasonCode::Success);
            acked[i] += 1;
        }
    }
    drop((a, b));
}

/// QoS 0 at full speed across nodes: one publisher on A writes thousands
/// of messages in one go, a subscriber on B counts them. The router may
/// drop QoS 0 under genuine overload, but one that is merely slower than
/// the publisher must slow the publisher down (as a slow local subscriber
/// does), not let most of them go. A's router drops QoS 0 from 1 MiB
/// unwritten (`maximum_queued_bytes`), about 15,000 of these messages, and
/// the publisher sends 30,000: what the core's event queue holds beyond
/// the reach of backpressure (256 events of up to 16 packets) fits below
/// that, the rest must wait for the router.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos0_at_full_speed_crosses_nodes_with_little_loss() {
    let nats = NatsCluster::start(1).await;
    let name = common::unique("flood");
    let mut opts = Options::default();
    opts.limits.maximum_queued_bytes = 1024 * 1024;
    let a = Server::new(opts).cluster(common::cluster::config(&nats, &name, "a"));
    let b = Server::new(Options::default()).cluster(common::cluster::config(&nats, &name, "b"));
    let (a, b) = (common::nats::node(a).await, common::nats::node(b).await);

    let mut sub = Raw::connected(b.addr, v311("flood-sub")).await;
    sub.subscribe(1, "flood/#", QoS::AtMostOnce).await;
    // Subscribed on B before A publishes: wait until a probe crosses.
    let mut publ = Raw::connected(a.addr, v311("flood-pub")).await;
    let mut probe = 0u16;
    loop {
        probe += 1;
        publ.send(Packet::Publish(publish(
            "flood/probe",
            "probe",
            QoS::AtMostOnce,
            0,
        )))
        .await;
        if sub.recv_within(Duration::from_millis(200)).await.is_some() {
            break;
        }
        assert!(probe < 100, "no QoS 0 message crossed to B");
    }
    while sub.recv_within(Duration::from_millis(200)).await.is_some() {}

    // The subscriber reads on a task of its own, so it never falls behind.
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = count.clone();
    let reader = tokio::spawn(async move {
        while let Some(p) = sub.recv_within(Duration::from_secs(30)).await {
            if matches!(p, Packet::Publish(_)) {
                counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    });
    const N: usize = 30_000;
    let mut burst = bytes::BytesMut::new();
    for i in 0..N {
        let p = Packet::Publish(publish("flood/x", &format!("{i:060}"), QoS::AtMostOnce, 0));
        roost::codec::encode(&p, roost::codec::ProtocolVersion::V3_1_1, &mut burst).unwrap();
    }
    publ.send_bytes(&burst).await;
    // The publisher is done once A answers a PINGREQ sent after them
    // (which may take a while: the router slows the publisher down).
    publ.send(Packet::PingReq).await;
    let pong = publ.recv_within(Duration::from_secs(60)).await;
    assert!(matches!(pong, Some(Packet::PingResp)), "{pong:?}");

    // Then until everything arrived, or nothing more did for a while.
    let got = || count.load(std::sync::atomic::Ordering::Relaxed);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut last = usize::MAX;
    while got() < N && got() != last && tokio::time::Instant::now() < deadline {
        last = got();
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let (got, dropped) = (got(), a.stats.snapshot().messages_dropped);
    assert!(
        got * 10 >= N * 9,
        "{got} of {N} arrived on B ({dropped} dropped on A)"
    );
    reader.abort();
    drop((a, b));
}

/// Subscribers on one node that take large messages more slowly than
/// another node publishes them hold the stream back, as they would hold a
/// publisher on their own node back: the node's memory keeps a window and
/// the stream the rest, and nothing acknowledged is dropped. B's budget
/// (16 MiB) is less than what the publisher sends (400 x 64 KiB = 25 MiB):
/// before, B injected the stream as fast as NATS gave it and dropped
/// past its budget (about half of the copies, counted per subscriber).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_subscribers_on_the_far_node_hold_the_stream_back_and_lose_nothing() {
    const N: usize = 400;
    const SUBSCRIBERS: usize = 4;
    let nats = NatsCluster::start(1).await;
    let name = common::unique("far");
    let a = Server::new(Options::default()).cluster(common::cluster::config(&nats, &name, "a"));
    let mut opts = Options::default();
    opts.memory.budget = 16 * 1024 * 1024;
    let b = Server::new(opts).cluster(common::cluster::config(&nats, &name, "b"));
    let (a, b) = (common::nats::node(a).await, common::nats::node(b).await);

    let mut subs = Vec::new();
    for i in 0..SUBSCRIBERS {
        let mut sub = Raw::connected(b.addr, v311(&format!("far-sub-{i}"))).await;
        sub.subscribe(1, "far/#", QoS::AtLeastOnce).await;
        subs.push(sub);
    }
    let mut publ = Raw::connected(a.addr, v311("far-pub")).await;
    // Every subscriber hears a probe: the path is up.
    assert_eq!(
        publ.publish(publish("far/probe", "probe", QoS::AtLeastOnce, 1))
            .await,
        ReasonCode::Success
    );
    for sub in &mut subs {
        let p = sub.recv_publish().await;
        sub.ack(&p).await;
    }

    // Each reads at about 300 messages a second (20 MiB/s), acknowledging
    // each.
    let readers: Vec<_> = subs
        .into_iter()
        .map(|sub| common::delivery::slow_reader(sub, N, Duration::from_millis(3)))
        .collect();
    let filler = "x".repeat(64 * 1024 - 6);
    for i in 0..N {
        let pid = (i + 2) as u16;
        let payload = format!("{i:06}{filler}");
        publ.send(Packet::Publish(publish(
            "far/x",
            &payload,
            QoS::AtLeastOnce,
            pid,
        )))
        .await;
    }
    for _ in 0..N {
        match publ.recv_within(Duration::from_secs(60)).await {
            Some(Packet::PubAck(r)) => assert!(r.reason.is_success(), "{r:?}"),
            other => panic!("expected PUBACK, got {other:?}"),
        }
    }
    for reader in readers {
        let got = reader.await.unwrap();
        assert_eq!(
            got.len(),
            N,
            "each subscriber gets every message ({} dropped on B)",
            b.stats.snapshot().messages_dropped
        );
    }
    assert_eq!(b.stats.snapshot().messages_dropped, 0);
    drop((a, b));
}
