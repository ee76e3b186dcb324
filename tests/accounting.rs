//! The books must balance under load: every PUBLISH the broker reads is
//! routed (or refused) and counted, every delivery reaches its subscriber
//! or is counted as dropped, every QoS 1/2 PUBLISH is acknowledged, and
//! the budget for PUBLISH bytes waiting for the core is whole again once
//! the load stops.
//!
//! Publishers pipeline bursts of mixed QoS (some retained) from 3.1.1 and
//! 5.0 connections, end each burst with PINGREQ, then leave with
//! DISCONNECT or by dropping the connection. Short by default; a soak:
//!
//! ```sh
//! ROOST_SOAK_SECS=300 cargo test --release --test accounting -- --nocapture
//! ```

mod common;

use bytes::{Bytes, BytesMut};
use common::*;
use roost::codec::{encode, Packet, ProtocolVersion, PubResp, Publish, QoS, QosPid, ReasonCode};
use roost::Options;
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const PUBLISHERS: usize = 8;
const BURST: usize = 3_000;

/// Rounds per publisher, or as many as fit in `ROOST_SOAK_SECS`.
fn run_for() -> Result<Duration, usize> {
    match std::env::var("ROOST_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        Some(secs) => Ok(Duration::from_secs(secs)),
        None => Err(4),
    }
}

/// What the subscribers saw: (publisher, round, index) of each message, and
/// how many copies arrived (a QoS 1/2 copy must arrive exactly once here:
/// the subscriber never reconnects).
#[derive(Default)]
struct Seen {
    ids: Mutex<HashSet<(u32, u32, u32)>>,
    copies: AtomicU64,
    qos12: AtomicU64,
}

/// Reads and acknowledges everything for one subscriber until the test ends.
async fn subscriber(mut raw: Raw, seen: Arc<Seen>) {
    loop {
        let Some(packet) = raw.recv_within(Duration::from_secs(3600)).await else {
            return;
        };
        match packet {
            Packet::Publish(p) => {
                seen.copies.fetch_add(1, Ordering::Relaxed);
                let id = parse_id(&p.payload);
                match p.qos_pid {
                    QosPid::AtMostOnce => {}
                    QosPid::AtLeastOnce(pid) => {
                        seen.qos12.fetch_add(1, Ordering::Relaxed);
                        assert!(seen.ids.lock().unwrap().insert(id), "{id:?} twice");
                        raw.send(Packet::PubAck(PubResp::new(pid))).await;
                    }
                    QosPid::ExactlyOnce(pid) => {
                        seen.qos12.fetch_add(1, Ordering::Relaxed);
                        assert!(seen.ids.lock().unwrap().insert(id), "{id:?} twice");
                        raw.send(Packet::PubRec(PubResp::new(pid))).await;
                    }
                }
            }
            Packet::PubRel(r) => raw.send(Packet::PubComp(PubResp::new(r.packet_id))).await,
            other => panic!("subscriber got {other:?}"),
        }
    }
}

fn parse_id(payload: &[u8]) -> (u32, u32, u32) {
    let s = std::str::from_utf8(payload).unwrap();
    let mut it = s.split(':').map(|n| n.parse::<u32>().unwrap());
    (it.next().unwrap(), it.next().unwrap(), it.next().unwrap())
}

fn qos_of(i: usize) -> QoS {
    match i % 3 {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

/// One burst from a fresh connection: every QoS 1/2 PUBLISH must be
/// acknowledged by the time PINGRESP arrives (the broker answers in order),
/// and every QoS 2 flow must complete.
async fn burst(addr: std::net::SocketAddr, publisher: u32, round: u32) -> u64 {
    let version = if (publisher + round) % 2 == 0 {
        ProtocolVersion::V5
    } else {
        ProtocolVersion::V3_1_1
    };
    let id = unique(&format!("pub{publisher}-"));
    let mut raw = Raw::connected(addr, connect(version, &id, true)).await;
    let mut out = BytesMut::new();
    let mut expected = (0, 0); // PUBACKs, PUBRECs
    for i in 0..BURST {
        let qos = qos_of(i);
        let pid = pid_of((i % 60_000 + 1) as u16);
        let p = Publish::new(
            format!("acct/{publisher}/{}", i % 50),
            Bytes::from(format!("{publisher}:{round}:{i}")),
        )
        .with_qos_pid(QosPid::new(qos, pid))
        // A few retained topics per publisher, rewritten each round.
        .with_retain(i % 97 == 0);
        match qos {
            QoS::AtLeastOnce => expected.0 += 1,
            QoS::ExactlyOnce => expected.1 += 1,
            QoS::AtMostOnce => {}
        }
        encode(&Packet::Publish(p), version, &mut out).unwrap();
    }
    encode(&Packet::PingReq, version, &mut out).unwrap();
    raw.send_bytes(&out).await;
    let (mut pubacks, mut pubrecs) = (0, 0);
    let mut rels = BytesMut::new();
    loop {
        match raw.recv().await {
            Packet::PubAck(a) => {
                assert!(a.reason.is_success() || a.reason == ReasonCode::NoMatchingSubscribers);
                pubacks += 1;
            }
            Packet::PubRec(r) => {
                pubrecs += 1;
                encode(
                    &Packet::PubRel(PubResp::new(r.packet_id)),
                    version,
                    &mut rels,
                )
                .unwrap();
            }
            Packet::PingResp => break,
            other => panic!("publisher got {other:?}"),
        }
    }
    assert_eq!(
        (pubacks, pubrecs),
        expected,
        "acknowledgements before PINGRESP"
    );
    raw.send_bytes(&rels).await;
    for _ in 0..expected.1 {
        assert!(matches!(raw.recv().await, Packet::PubComp(_)));
    }
    if round % 2 == 0 {
        raw.disconnect().await;
    } else {
        raw.drop_connection();
    }
    BURST as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_publish_is_routed_acknowledged_and_counted() {
    let b = TestBroker::with(Options::default()).await;
    let seen = Arc::new(Seen::default());
    let mut fast = Raw::connected(b.addr, v5("acct-q2")).await;
    fast.subscribe(1, "acct/#", QoS::ExactlyOnce).await;
    let mut plain = Raw::connected(b.addr, v5("acct-q0")).await;
    plain.subscribe(1, "acct/#", QoS::AtMostOnce).await;
    let readers = [
        tokio::spawn(subscriber(fast, seen.clone())),
        tokio::spawn(subscriber(plain, seen.clone())),
    ];

    let limit = run_for();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for publisher in 0..PUBLISHERS as u32 {
        let addr = b.addr;
        tasks.push(tokio::spawn(async move {
            let mut sent = 0;
            for round in 0.. {
                let more = match limit {
                    Ok(d) => started.elapsed() < d,
                    Err(rounds) => round < rounds as u32,
                };
                if !more {
                    break;
                }
                sent += burst(addr, publisher, round).await;
            }
            sent
        }));
    }
    let mut sent = 0;
    for t in tasks {
        sent += t.await.unwrap();
    }
    let per_burst = (0..BURST).filter(|&i| qos_of(i) != QoS::AtMostOnce).count() as u64;
    let qos12_sent = sent / BURST as u64 * per_burst;

    // Every message goes to both subscribers: each copy arrives or is
    // counted as dropped.
    let deadline = Instant::now() + Duration::from_secs(60);
    let books = || {
        let s = b.stats.snapshot();
        (
            s.messages_received,
            seen.copies.load(Ordering::Relaxed) + s.messages_dropped,
        )
    };
    while books() != (sent, 2 * sent) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let s = b.stats.snapshot();
    eprintln!(
        "sent {sent} in {:?}: received {}, copies {}, dropped {}",
        started.elapsed(),
        s.messages_received,
        seen.copies.load(Ordering::Relaxed),
        s.messages_dropped
    );
    assert_eq!(s.messages_received, sent, "every PUBLISH read is routed");
    assert_eq!(
        books().1,
        2 * sent,
        "every copy delivered or counted as dropped"
    );
    // The QoS 2 subscriber gets every QoS 1/2 message, once: nothing queued
    // for it is ever dropped (its queue never comes near its limit).
    assert_eq!(seen.qos12.load(Ordering::Relaxed), qos12_sent);

    // The intake budget is whole again: a PUBLISH as large as the packet
    // limit allows, which needs all of it, gets through.
    let mut big = Raw::connected(b.addr, v5("acct-big")).await;
    let mut p = publish("acct-big/x", "", QoS::AtLeastOnce, 1);
    p.payload = Bytes::from(vec![b'x'; 1_000_000]);
    let reason = tokio::time::timeout(Duration::from_secs(10), big.publish(p))
        .await
        .expect("a large PUBLISH is acknowledged: the intake budget was given back");
    assert_eq!(reason, ReasonCode::NoMatchingSubscribers);
    for r in readers {
        r.abort();
    }
}
