//! Persistence through the storage trait, in process: a broker is stopped
//! and a new one started on the same store. A store that says it is
//! persistent (the in-memory reference backend, wrapped) makes the broker
//! record everything and hold acknowledgements for their commit; the
//! fault-injecting wrapper proves a failed write is never acknowledged.
//! Restarts of the real binary on sled and redb, with `kill -9`, are in
//! `tests/restart.rs`.

mod common;
use common::*;
use roost::codec::{Packet, ProtocolVersion, PubResp, QoS, QosPid, ReasonCode};
use roost::storage::{
    FaultyStore, MemoryStore, MessageId, MessageRecord, Op, OutboundRecord, Record, Snapshot,
    StorageError, Store,
};
use roost::{Options, Server};
use std::sync::Arc;

/// A persistent store whose writes wait while the test holds them: a disk
/// that has not caught up yet.
#[derive(Debug, Default)]
struct Stalled {
    inner: MemoryStore,
    stalled: std::sync::Mutex<bool>,
    resumed: std::sync::Condvar,
    /// Writes waiting now.
    waiting: std::sync::atomic::AtomicU32,
}

impl Stalled {
    fn stall(&self, on: bool) {
        *self.stalled.lock().unwrap() = on;
        self.resumed.notify_all();
    }

    /// Waits until a write is stuck.
    async fn until_stuck(&self) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.waiting.load(std::sync::atomic::Ordering::SeqCst) == 0 {
            assert!(tokio::time::Instant::now() < deadline, "no write arrived");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
}

impl Store for Stalled {
    fn apply(&self, ops: &[Op]) -> Result<(), StorageError> {
        let mut stalled = self.stalled.lock().unwrap();
        self.waiting
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        // Bounded, so that a failing test ends instead of hanging its
        // runtime on this write.
        let deadline = std::time::Instant::now() + 2 * WAIT;
        while *stalled && std::time::Instant::now() < deadline {
            stalled = self.resumed.wait_timeout(stalled, WAIT).unwrap().0;
        }
        self.waiting
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        drop(stalled);
        self.inner.apply(ops)
    }
    fn load(&self) -> Result<Snapshot, StorageError> {
        self.inner.load()
    }
    fn is_persistent(&self) -> bool {
        true
    }
    // Only writes stall; every read is forwarded, so that none falls back
    // to the trait's default built on `load`.
    fn flush(&self) -> Result<(), StorageError> {
        self.inner.flush()
    }
    fn outbound_page(
        &self,
        client_id: &str,
        after_seq: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, OutboundRecord)>, StorageError> {
        self.inner.outbound_page(client_id, after_seq, limit)
    }
    fn messages(&self, ids: &[MessageId]) -> Result<Vec<Option<MessageRecord>>, StorageError> {
        self.inner.messages(ids)
    }
    fn retained(&self, topic: &str) -> Result<Option<MessageRecord>, StorageError> {
        self.inner.retained(topic)
    }
    fn retained_many(&self, topics: &[&str]) -> Result<Vec<Option<MessageRecord>>, StorageError> {
        self.inner.retained_many(topics)
    }
    fn scan(
        &self,
        visit: &mut dyn FnMut(Record) -> Result<(), StorageError>,
    ) -> Result<(), StorageError> {
        self.inner.scan(visit)
    }
    fn recover(&self) -> Result<(), StorageError> {
        self.inner.recover()
    }
}

fn persistent(version: ProtocolVersion, id: &str) -> roost::codec::Connect {
    let mut c = connect(version, id, false);
    if version.is_v5() {
        c.properties.session_expiry_interval = Some(3600);
    }
    c
}

/// Receives `n` publishes, acknowledging each as a client would (PUBRELs
/// may arrive between later publishes).
async fn receive_all(c: &mut Raw, n: usize) -> Vec<(String, QoS)> {
    let mut got = Vec::new();
    let mut open_qos2 = 0;
    while got.len() < n || open_qos2 > 0 {
        match c.recv().await {
            Packet::Publish(m) => {
                got.push((payload(&m).to_owned(), m.qos_pid.qos()));
                match m.qos_pid {
                    QosPid::AtLeastOnce(pid) => c.send(Packet::PubAck(PubResp::new(pid))).await,
                    QosPid::ExactlyOnce(pid) => {
                        open_qos2 += 1;
                        c.send(Packet::PubRec(PubResp::new(pid))).await
                    }
                    QosPid::AtMostOnce => {}
                }
            }
            Packet::PubRel(r) => {
                open_qos2 -= 1;
                c.send(Packet::PubComp(PubResp::new(r.packet_id))).await
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    got
}

#[tokio::test]
async fn sessions_subscriptions_queues_and_retained_survive_a_restart() {
    let store = Arc::new(Durable::default());
    let b = TestBroker::with_store(Options::default(), store.clone()).await;
    for (v, id) in [(ProtocolVersion::V5, "s5"), (ProtocolVersion::V3_1_1, "s3")] {
        let mut s = Raw::connected(b.addr, persistent(v, id)).await;
        s.subscribe(1, "q/#", QoS::ExactlyOnce).await;
        s.disconnect().await;
    }
    let mut p = Raw::connected(b.addr, v5("pub")).await;
    assert!(p
        .publish(retained("r/1", "kept", QoS::AtLeastOnce, 1))
        .await
        .is_success());
    assert_eq!(
        p.publish(publish("q/a", "one", QoS::AtLeastOnce, 2)).await,
        ReasonCode::Success
    );
    assert_eq!(
        p.publish(publish("q/a", "two", QoS::ExactlyOnce, 3)).await,
        ReasonCode::Success
    );
    p.disconnect().await;
    b.stop().await;

    let b = TestBroker::with_store(Options::default(), store.clone()).await;
    // Subscriptions are live before the client is back.
    let mut p = Raw::connected(b.addr, v5("pub")).await;
    p.publish(publish("q/a", "three", QoS::AtLeastOnce, 4))
        .await;
    for (v, id) in [(ProtocolVersion::V5, "s5"), (ProtocolVersion::V3_1_1, "s3")] {
        let (mut s, ack) = Raw::connect(b.addr, persistent(v, id)).await;
        assert!(ack.session_present, "{id}: session present after restart");
        let got = receive_all(&mut s, 3).await;
        assert_eq!(
            got,
            vec![
                ("one".into(), QoS::AtLeastOnce),
                ("two".into(), QoS::ExactlyOnce),
                ("three".into(), QoS::AtLeastOnce)
            ],
            "{id}"
        );
        s.expect_nothing().await;
    }
    let mut r = Raw::connected(b.addr, v5("reader")).await;
    r.subscribe(1, "r/#", QoS::AtLeastOnce).await;
    let m = r.recv_publish().await;
    assert_eq!(
        (m.topic.as_str(), payload(&m), m.retain),
        ("r/1", "kept", true)
    );
    b.stop().await;
}

#[tokio::test]
async fn unacknowledged_deliveries_are_resent_with_dup_after_a_restart() {
    let store = Arc::new(Durable::default());
    let b = TestBroker::with_store(Options::default(), store.clone()).await;
    let mut s = Raw::connected(b.addr, persistent(ProtocolVersion::V5, "s")).await;
    s.subscribe(1, "t", QoS::ExactlyOnce).await;
    let mut p = Raw::connected(b.addr, v5("p")).await;
    p.publish(publish("t", "q1", QoS::AtLeastOnce, 1)).await;
    p.publish(publish("t", "q2", QoS::ExactlyOnce, 2)).await;
    let m1 = s.recv_publish().await;
    let m2 = s.recv_publish().await;
    // PUBREC the QoS 2 one: after the restart the broker owes a PUBREL.
    let QosPid::ExactlyOnce(pid2) = m2.qos_pid else {
        panic!("{m2:?}")
    };
    s.send(Packet::PubRec(PubResp::new(pid2))).await;
    assert!(matches!(s.recv().await, Packet::PubRel(r) if r.packet_id == pid2));
    s.drop_connection();
    p.disconnect().await;
    b.stop().await;

    let b = TestBroker::with_store(Options::default(), store).await;
    let (mut s, ack) = Raw::connect(b.addr, persistent(ProtocolVersion::V5, "s")).await;
    assert!(ack.session_present);
    let again = s.recv_publish().await;
    assert!(again.dup, "resent with DUP");
    assert_eq!(again.qos_pid, m1.qos_pid, "same packet id");
    assert_eq!(payload(&again), "q1");
    assert!(matches!(s.recv().await, Packet::PubRel(r) if r.packet_id == pid2));
    s.ack(&again).await;
    s.send(Packet::PubComp(PubResp::new(pid2))).await;
    s.expect_nothing().await;
    b.stop().await;
}

#[tokio::test]
async fn an_inbound_qos2_id_still_blocks_a_duplicate_after_a_restart() {
    let store = Arc::new(Durable::default());
    let b = TestBroker::with_store(Options::default(), store.clone()).await;
    let mut s = Raw::connected(b.addr, persistent(ProtocolVersion::V5, "s")).await;
    s.subscribe(1, "t", QoS::ExactlyOnce).await;
    let mut p = Raw::connected(b.addr, persistent(ProtocolVersion::V5, "p")).await;
    let msg = publish("t", "once", QoS::ExactlyOnce, 7);
    p.send(Packet::Publish(msg.clone())).await;
    assert!(matches!(p.recv().await, Packet::PubRec(r) if r.packet_id.get() == 7));
    let m = s.recv_publish().await;
    s.ack(&m).await;
    s.sync().await;
    p.drop_connection();
    b.stop().await;

    let b = TestBroker::with_store(Options::default(), store).await;
    let mut s = Raw::connected(b.addr, persistent(ProtocolVersion::V5, "s")).await;
    let (mut p, ack) = Raw::connect(b.addr, persistent(ProtocolVersion::V5, "p")).await;
    assert!(ack.session_present);
    // The publisher never saw PUBCOMP: it resends the PUBLISH with DUP.
    p.send(Packet::Publish(msg.with_dup(true))).await;
    assert!(matches!(p.recv().await, Packet::PubRec(r) if r.packet_id.get() == 7));
    p.send(Packet::PubRel(PubResp::new(pid_of(7)))).await;
    assert!(matches!(p.recv().await, Packet::PubComp(c) if c.reason == ReasonCode::Success));
    s.expect_nothing().await;
    b.stop().await;
}

/// A QoS 1 PUBACK means "safe": written, or delivered to and acknowledged
/// by every persistent session that got a copy. The second comes first
/// when the disk is slow, and the copies it makes unnecessary are never
/// written; a copy not yet acknowledged still waits for the disk.
#[tokio::test]
async fn a_puback_waits_for_the_disk_or_for_every_subscriber_whichever_comes_first() {
    let store = Arc::new(Stalled::default());
    let b = TestBroker::with_store(Options::default(), store.clone()).await;
    let mut s = Raw::connected(b.addr, persistent(ProtocolVersion::V5, "s")).await;
    s.subscribe(1, "t", QoS::AtLeastOnce).await;
    let mut p = Raw::connected(b.addr, v5("p")).await;
    let mut p0 = Raw::connected(b.addr, v5("p0")).await;

    // The disk stalls writing m0's copy (not acknowledged by anybody yet).
    store.stall(true);
    p0.send(Packet::Publish(publish("t", "m0", QoS::AtLeastOnce, 1)))
        .await;
    let m0 = s.recv_publish().await;
    store.until_stuck().await;
    for i in 1..=20u16 {
        p.send(Packet::Publish(publish(
            "t",
            &format!("m{i}"),
            QoS::AtLeastOnce,
            i,
        )))
        .await;
        let m = s.recv_publish().await;
        assert_eq!(payload(&m), format!("m{i}"));
        s.ack(&m).await;
        match p.recv().await {
            Packet::PubAck(a) => assert_eq!(
                (a.packet_id.get(), a.reason),
                (i, ReasonCode::Success),
                "acknowledged while the disk is stalled"
            ),
            other => panic!("expected PUBACK, got {other:?}"),
        }
    }
    // Not acknowledged by the subscriber: the PUBACK waits for the disk.
    p.send(Packet::Publish(publish("t", "m21", QoS::AtLeastOnce, 21)))
        .await;
    let m21 = s.recv_publish().await;
    assert_eq!(payload(&m21), "m21");
    p.expect_nothing().await;
    p0.expect_nothing().await;
    store.stall(false);
    for (c, pid) in [(&mut p0, 1), (&mut p, 21)] {
        match c.recv().await {
            Packet::PubAck(a) => {
                assert_eq!((a.packet_id.get(), a.reason), (pid, ReasonCode::Success))
            }
            other => panic!("expected PUBACK, got {other:?}"),
        }
    }
    // While the disk stalled, the copies of m2..m20 and their deletes
    // queued up together and cancelled out.
    let saved = b.stats.snapshot().storage_ops_saved;
    assert!(saved >= 20, "only {saved} operations saved");
    s.drop_connection();
    p.disconnect().await;
    p0.disconnect().await;
    b.stop().await;

    // What the store holds is exactly what is owed: m0 and m21, and
    // nothing the subscriber acknowledged.
    let b = TestBroker::with_store(Options::default(), store).await;
    let (mut s, ack) = Raw::connect(b.addr, persistent(ProtocolVersion::V5, "s")).await;
    assert!(ack.session_present);
    for (m, want) in [(&m0, "m0"), (&m21, "m21")] {
        let again = s.recv_publish().await;
        assert_eq!((payload(&again), again.dup), (want, true));
        assert_eq!(again.qos_pid, m.qos_pid);
        s.ack(&again).await;
    }
    s.expect_nothing().await;
    b.stop().await;
}

/// Exactly once across a crash: the stored packet id is what stops a
/// resent QoS 2 PUBLISH from being delivered again, so no copy is
/// delivered before that id is on disk.
#[tokio::test]
async fn a_qos2_message_is_delivered_only_once_its_packet_id_is_stored() {
    let store = Arc::new(Stalled::default());
    let b = TestBroker::with_store(Options::default(), store.clone()).await;
    let mut s = Raw::connected(b.addr, v5("s")).await;
    s.subscribe(1, "t", QoS::ExactlyOnce).await;
    let mut p = Raw::connected(b.addr, persistent(ProtocolVersion::V5, "p")).await;
    store.stall(true);
    p.send(Packet::Publish(publish("t", "once", QoS::ExactlyOnce, 1)))
        .await;
    store.until_stuck().await;
    s.expect_nothing().await;
    p.expect_nothing().await;
    store.stall(false);
    assert!(matches!(p.recv().await, Packet::PubRec(r) if r.packet_id.get() == 1));
    let m = s.recv_publish().await;
    assert_eq!(payload(&m), "once");
    s.ack(&m).await;
    b.stop().await;
}

/// A QoS 2 PUBLISH to a persistent session leaves only once its entry,
/// packet id included, is stored: otherwise a crash could hand the id to
/// another message, which the client (still waiting for the first one's
/// PUBREL) would drop as a resend.
#[tokio::test]
async fn a_qos2_delivery_waits_for_its_packet_id_to_be_stored() {
    let store = Arc::new(Stalled::default());
    let b = TestBroker::with_store(Options::default(), store.clone()).await;
    let mut s = Raw::connected(b.addr, persistent(ProtocolVersion::V5, "s")).await;
    s.subscribe(1, "t", QoS::ExactlyOnce).await;
    let mut p = Raw::connected(b.addr, v5("p")).await;
    store.stall(true);
    p.send(Packet::Publish(publish("t", "x", QoS::ExactlyOnce, 1)))
        .await;
    store.until_stuck().await;
    s.expect_nothing().await;
    store.stall(false);
    let m = s.recv_publish().await;
    assert_eq!(payload(&m), "x");
    assert!(matches!(m.qos_pid, QosPid::ExactlyOnce(_)));
    s.ack(&m).await;
    b.stop().await;
}

/// The sending side of exactly once: once the broker sent PUBREL it must
/// never send that PUBLISH again, even after a crash, so the PUBREL waits
/// until the "released" state is committed.
#[tokio::test]
async fn pubrel_waits_for_the_released_state_to_be_stored() {
    let store = Arc::new(Stalled::default());
    let b = TestBroker::with_store(Options::default(), store.clone()).await;
    let mut s = Raw::connected(b.addr, persistent(ProtocolVersion::V5, "s")).await;
    s.subscribe(1, "t", QoS::ExactlyOnce).await;
    let mut p = Raw::connected(b.addr, v5("p")).await;
    assert!(p
        .publish(publish("t", "x", QoS::ExactlyOnce, 1))
        .await
        .is_success());
    let m = s.recv_publish().await;
    let QosPid::ExactlyOnce(pid) = m.qos_pid else {
        panic!("{m:?}")
    };
    store.stall(true);
    s.send(Packet::PubRec(PubResp::new(pid))).await;
    store.until_stuck().await;
    s.expect_nothing().await;
    store.stall(false);
    assert!(matches!(s.recv().await, Packet::PubRel(r) if r.packet_id == pid));
    s.send(Packet::PubComp(PubResp::new(pid))).await;
    b.stop().await;
}

/// Waits until everything recorded so far is written: a retained QoS 1
/// PUBACK leaves only once its commit (and every one before it) is.
async fn settle(c: &mut Raw) {
    c.publish(retained("settled", "1", QoS::AtLeastOnce, 9))
        .await;
}

/// A write that fails (a full disk) is kept and tried again until it is
/// written: its acknowledgement waits for it, meanwhile new work that needs
/// storage is refused at once (5.0: 0x97; 3.1.1: closed without an ack),
/// and once writes succeed the held acknowledgement leaves and the message
/// reaches its subscriber, once.
#[tokio::test]
async fn a_failed_write_is_retried_and_acknowledged_only_once_written() {
    let store = FaultyStore::new(Durable::default());
    let faults = store.handle();
    let b = TestBroker::with_store(Options::default(), store).await;
    let mut s = Raw::connected(b.addr, persistent(ProtocolVersion::V5, "s")).await;
    s.subscribe(1, "t", QoS::AtLeastOnce).await;
    s.disconnect().await;
    let mut p5 = Raw::connected(b.addr, v5("p5")).await;
    settle(&mut p5).await;

    faults.set_failing(true);
    p5.send(Packet::Publish(publish("t", "x", QoS::AtLeastOnce, 1)))
        .await;
    eventually("the store to be seen failing", || {
        b.stats.snapshot().storage_failing
    })
    .await;
    p5.expect_nothing().await;
    // Now refused at once, before routing.
    let mut p5b = Raw::connected(b.addr, v5("p5b")).await;
    assert_eq!(
        p5b.publish(publish("t", "y", QoS::ExactlyOnce, 1)).await,
        ReasonCode::QuotaExceeded
    );
    // 3.1.1 has no negative PUBACK: no ack, and the connection is closed so
    // that the client publishes again.
    let mut p3 = Raw::connected(b.addr, v311("p3")).await;
    p3.send(Packet::Publish(publish("t", "z", QoS::AtLeastOnce, 1)))
        .await;
    let got = p3.expect_closed().await;
    assert!(got.is_empty(), "no PUBACK for a refused write: {got:?}");
    eventually("retries that recover the store first", || {
        faults.failed_applies() >= 3 && faults.recover_calls() >= 2
    })
    .await;
    assert_eq!(b.stats.snapshot().storage_refused, 2);

    faults.set_failing(false);
    match p5.recv().await {
        Packet::PubAck(r) => assert_eq!(r.reason, ReasonCode::Success),
        other => panic!("expected the held PUBACK, got {other:?}"),
    }
    eventually("the store to be healthy", || {
        !b.stats.snapshot().storage_failing
    })
    .await;
    let mut s = Raw::connected(b.addr, persistent(ProtocolVersion::V5, "s")).await;
    assert_eq!(payload(&s.recv_publish().await), "x");
    s.expect_nothing().await;
    let mut p = Raw::connected(b.addr, v5("p")).await;
    assert_eq!(
        p.publish(publish("t", "ok", QoS::AtLeastOnce, 1)).await,
        ReasonCode::Success
    );
    b.stop().await;
}

/// Shutting down while the store fails ends in bounded time; what was not
/// written was not acknowledged.
#[tokio::test]
async fn shutdown_while_the_store_fails_ends_without_acknowledging() {
    let store = FaultyStore::new(Durable::default());
    let faults = store.handle();
    let b = TestBroker::with_store(Options::default(), store).await;
    let mut s = Raw::connected(b.addr, persistent(ProtocolVersion::V5, "s")).await;
    s.subscribe(1, "t", QoS::AtLeastOnce).await;
    s.disconnect().await;
    let mut p = Raw::connected(b.addr, v5("p")).await;
    settle(&mut p).await;
    faults.set_failing(true);
    p.send(Packet::Publish(publish("t", "x", QoS::AtLeastOnce, 1)))
        .await;
    eventually("the store to be seen failing", || {
        b.stats.snapshot().storage_failing
    })
    .await;
    let started = std::time::Instant::now();
    b.stop().await;
    assert!(started.elapsed() < std::time::Duration::from_secs(8));
    for packet in p.expect_closed().await {
        assert!(
            !matches!(&packet, Packet::PubAck(r) if r.reason.is_success()),
            "acknowledged an unwritten message: {packet:?}"
        );
    }
}

#[tokio::test]
async fn the_relaxed_mode_acknowledges_first_and_commits_on_its_interval() {
    let store = FaultyStore::new(Durable::default());
    let faults = store.handle();
    let opts = Options {
        durability: roost::Durability::AckBeforeCommit {
            flush_interval: std::time::Duration::from_millis(200),
        },
        ..Options::default()
    };
    let b = TestBroker::with_store(opts, store).await;
    let mut s = Raw::connected(b.addr, persistent(ProtocolVersion::V5, "s")).await;
    s.subscribe(1, "t", QoS::AtLeastOnce).await;
    s.disconnect().await;
    // The session, its subscription and its disconnection are written
    // before the store starts failing.
    eventually("the subscriber's state to be written", || {
        b.stats.snapshot().storage_ops_written >= 3
    })
    .await;
    faults.set_failing(true);
    // Acknowledged although the write will fail: what this mode gives up.
    let mut p = Raw::connected(b.addr, v5("p")).await;
    assert_eq!(
        p.publish(publish("t", "x", QoS::AtLeastOnce, 1)).await,
        ReasonCode::Success
    );
    let deadline = tokio::time::Instant::now() + WAIT;
    while faults.failed_applies() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no commit attempted"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    faults.set_failing(false);
    b.stop().await;
}

/// `Server::load_store` reads the store before anything is bound, so the
/// `roost` binary refuses a store it cannot read before it listens (also
/// one whose scan fails part way); `serve` then restores what was read
/// instead of reading it again.
#[tokio::test]
async fn load_store_reads_before_serving_and_reports_a_failed_read() {
    let store = FaultyStore::new(Durable::default());
    let faults = store.handle();
    faults.set_read_failing(true);
    match Server::new(Options::default())
        .store(store)
        .load_store()
        .await
    {
        Err(roost::ServeError::Storage(StorageError::Injected { .. })) => {}
        other => panic!("expected the injected read failure, got {other:?}"),
    }

    let kept = || {
        let durable = Durable::default();
        durable
            .apply(&[Op::PutRetained {
                message: roost::storage::MessageRecord {
                    topic: "r".into(),
                    payload: bytes::Bytes::from_static(b"kept"),
                    qos: 1,
                    retain: true,
                    properties: Default::default(),
                    expires_at_ms: None,
                },
            }])
            .unwrap();
        durable
    };
    let store = FaultyStore::new(kept());
    store.handle().fail_scans_after(Some(0));
    match Server::new(Options::default())
        .store(store)
        .load_store()
        .await
    {
        Err(roost::ServeError::Storage(StorageError::Injected { .. })) => {}
        other => panic!("expected the injected scan failure, got {other:?}"),
    }

    let store = FaultyStore::new(kept());
    let faults = store.handle();
    let server = Server::new(Options::default())
        .store(store)
        .load_store()
        .await
        .unwrap();
    assert_eq!(faults.read_calls(), 1);
    let b = TestBroker::with_server(server).await;
    let mut r = Raw::connected(b.addr, v5("r")).await;
    r.subscribe(1, "r", QoS::AtMostOnce).await;
    assert_eq!(payload(&r.recv_publish().await), "kept");
    assert_eq!(faults.read_calls(), 1, "serve read the store again");
    b.stop().await;
}
