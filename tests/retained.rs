//! Retained messages on redb with a small memory budget (issue 16): the
//! store holds them all, memory an index and a cache within an eighth of
//! `[memory] budget`; a subscriber to `#` gets every one, read from the
//! store a page at a time, before and after a restart.

mod common;
use common::*;
use roost::codec::{Packet, ProtocolVersion, QoS};
use roost::storage::RedbStore;
use roost::Options;
use std::collections::BTreeSet;

const N: usize = 20_000;
const BUDGET: usize = 1024 * 1024;

fn opts() -> Options {
    let mut o = Options::default();
    o.memory.budget = BUDGET;
    o.sys_interval = None;
    o
}

fn topic(i: usize) -> String {
    format!("site/{}/dev/{}/m{}", i / 1000, i / 10 % 100, i % 10)
}

/// Receives publishes until `n` came (acknowledging QoS 1 ones); returns
/// their topics, each once.
async fn receive(raw: &mut Raw, n: usize) -> BTreeSet<String> {
    let mut topics = BTreeSet::new();
    for _ in 0..n {
        let p = match raw.recv().await {
            Packet::Publish(p) => p,
            other => panic!("expected PUBLISH, got {other:?}"),
        };
        assert!(p.retain, "sent for a new subscription: RETAIN is set");
        assert_eq!(p.payload.len(), 64);
        raw.ack(&p).await;
        assert!(
            topics.insert(p.topic.as_str().to_owned()),
            "{} twice",
            p.topic
        );
    }
    raw.expect_nothing().await;
    topics
}

fn within_share(b: &TestBroker) {
    let s = b.stats.snapshot();
    assert_eq!(s.retained, N as u64);
    assert!(
        s.retained_memory_bytes <= (BUDGET / 8) as u64,
        "{} bytes of retained messages in memory",
        s.retained_memory_bytes
    );
    assert!(s.retained_disk_bytes >= (N * 64) as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_to_everything_gets_them_all_from_redb_with_a_small_budget() {
    let dir = tempfile::tempdir().unwrap();
    // One handle for both brokers (the first one's reader may still hold
    // it for a moment after it stops).
    let store = std::sync::Arc::new(RedbStore::open(dir.path()).unwrap());
    let b = TestBroker::with_store(opts(), store.clone()).await;
    let mut publ = Raw::connected(b.addr, v5("publisher")).await;
    let payload = "x".repeat(64);
    for i in 0..N {
        publ.send(Packet::Publish(retained(
            &topic(i),
            &payload,
            QoS::AtMostOnce,
            1,
        )))
        .await;
    }
    publ.sync().await;
    within_share(&b);

    let mut sub = Raw::connected(b.addr, v5("everything")).await;
    sub.subscribe(1, "#", QoS::AtMostOnce).await;
    let got = receive(&mut sub, N).await;
    assert_eq!(got, (0..N).map(topic).collect::<BTreeSet<_>>());
    let s = b.stats.snapshot();
    assert!(
        s.retained_reads > (N / 2) as u64,
        "{} read",
        s.retained_reads
    );
    assert_eq!(s.retained_reads + s.retained_cache_hits, N as u64);
    within_share(&b);
    sub.disconnect().await;
    publ.disconnect().await;
    b.stop().await;

    // After a restart: the same, at QoS 1 and for a 3.1.1 client.
    let b = TestBroker::with_store(opts(), store).await;
    // Its CONNACK comes once the broker has restored.
    let mut sub = Raw::connected(b.addr, connect(ProtocolVersion::V3_1_1, "again", true)).await;
    within_share(&b);
    sub.subscribe(1, "site/+/dev/#", QoS::AtLeastOnce).await;
    let got = receive(&mut sub, N).await;
    assert_eq!(got.len(), N);
    within_share(&b);
    sub.disconnect().await;
    b.stop().await;
}
