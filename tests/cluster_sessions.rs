//! Sessions that move between roost nodes (issue 19): a persistent session
//! lives in the cluster's session bucket, so a client that comes back on
//! another node resumes it and gets what it is owed; a client connected
//! on one node and connecting on another takes its session over (the old
//! connection gets DISCONNECT 0x8E); a node killed with `kill -9` loses
//! nothing its clients were owed.
#![cfg(feature = "cluster")]

mod common;

use common::cluster::config;
use common::nats::NatsCluster;
use common::process::{Broker, Logs};
use common::{publish, unique, v5, v5_session, Raw, TestBroker};
use roost::codec::{Packet, QoS, ReasonCode};
use roost::{ClusterConfig, Options, Server};
use std::collections::BTreeMap;
use std::time::Duration;

async fn two_nodes(nats: &NatsCluster, name: &str) -> (TestBroker, TestBroker) {
    let a = common::nats::node(Server::new(Options::default()).cluster(config(nats, name, "a")));
    let a = a.await;
    let b = common::nats::node(Server::new(Options::default()).cluster(config(nats, name, "b")));
    (a, b.await)
}

/// Waits until the cluster's bucket says `node` owns `client_id`'s session
/// with `filters` (the owner writes it within a second).
async fn stored(cfg: &ClusterConfig, client_id: &str, node: &str, filters: &[&str]) {
    let probe = ClusterConfig {
        node: unique("probe"),
        ..cfg.clone()
    };
    let engine = roost::cluster_engine::connect(&probe).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let got = roost::cluster_engine::stored_session(&engine, client_id).await;
        if let Some((owner, subs, _)) = &got {
            if owner == node && filters.iter().all(|f| subs.iter().any(|s| s == f)) {
                return;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the bucket never said {node} owns {client_id} with {filters:?}: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Receives `n` distinct payloads (acknowledging each), counting copies.
async fn receive(raw: &mut Raw, n: usize) -> BTreeMap<String, usize> {
    let mut got = BTreeMap::new();
    while got.len() < n {
        let Some(Packet::Publish(p)) = raw.recv_within(Duration::from_secs(20)).await else {
            panic!("received only {} of {n}: {got:?}", got.len());
        };
        raw.ack(&p).await;
        *got.entry(common::payload(&p).to_owned()).or_insert(0) += 1;
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_resumes_on_another_node_with_what_it_was_owed() {
    let nats = NatsCluster::start(1).await;
    let name = unique("roam");
    let (a, b) = two_nodes(&nats, &name).await;
    let mut dev = Raw::connected(a.addr, v5_session("dev-1", false, 600)).await;
    dev.subscribe(1, "cmd/dev-1/#", QoS::AtLeastOnce).await;
    stored(&config(&nats, &name, "x"), "dev-1", "a", &["cmd/dev-1/#"]).await;
    dev.disconnect().await;
    // Published on B while the device is away: queued for it on A.
    let mut app = Raw::connected(b.addr, v5("app")).await;
    for i in 1..=10u16 {
        let r = app
            .publish(publish(
                "cmd/dev-1/set",
                &format!("c{i}"),
                QoS::AtLeastOnce,
                i,
            ))
            .await;
        assert_eq!(r, ReasonCode::Success);
    }
    // It comes back on B.
    let (mut dev, ack) = Raw::connect(b.addr, v5_session("dev-1", false, 600)).await;
    assert_eq!(ack.reason, ReasonCode::Success);
    assert!(ack.session_present, "the session came from A");
    let got = receive(&mut dev, 10).await;
    assert!(got.values().all(|c| *c == 1), "each once: {got:?}");
    dev.expect_nothing().await;
    // Its subscription came along: a new message reaches it on B.
    app.publish(publish("cmd/dev-1/set", "later", QoS::AtLeastOnce, 11))
        .await;
    assert_eq!(common::payload(&dev.recv_publish().await), "later");
    stored(&config(&nats, &name, "x"), "dev-1", "b", &["cmd/dev-1/#"]).await;
    drop((a, b));
}

/// A session that moves gets at most its queue's bounds of what it was
/// owed, in bytes as well as in messages. (The replay read from the stream
/// is bounded so before it reaches the new node's core, which bounds the
/// queue again: this checks the whole, not the read's memory alone.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moving_session_gets_at_most_its_queue_bytes_of_what_it_was_owed() {
    let nats = NatsCluster::start(1).await;
    let name = unique("replaybytes");
    let mut opts = Options::default();
    opts.limits.maximum_queued_bytes = 2_000;
    let node =
        |n: &str| common::nats::node(Server::new(opts.clone()).cluster(config(&nats, &name, n)));
    let a = node("a").await;
    let b = node("b").await;
    let mut dev = Raw::connected(a.addr, v5_session("dev-rb", false, 600)).await;
    dev.subscribe(1, "rb/#", QoS::AtLeastOnce).await;
    stored(&config(&nats, &name, "x"), "dev-rb", "a", &["rb/#"]).await;
    // It acknowledges nothing on A: its cursor stays at the first.
    let mut app = Raw::connected(b.addr, v5("app-rb")).await;
    let body = "x".repeat(500);
    for i in 1..=20u16 {
        app.publish(publish("rb/x", &body, QoS::AtLeastOnce, i))
            .await;
    }
    let mut seen = 0;
    while let Some(p) = dev.recv_within(Duration::from_millis(500)).await {
        seen += usize::from(matches!(p, Packet::Publish(_)));
    }
    assert!(seen > 0, "A delivered some before the move");
    let (mut moved, ack) = Raw::connect(b.addr, v5_session("dev-rb", false, 600)).await;
    assert!(ack.session_present);
    let mut replayed = 0;
    while let Some(p) = moved.recv_within(Duration::from_millis(1_000)).await {
        if let Packet::Publish(p) = p {
            moved.ack(&p).await;
            replayed += 1;
        }
    }
    // 2,000 bytes hold three 500-byte messages with their topics, not 20.
    assert!(
        (1..=3).contains(&replayed),
        "replayed {replayed} (A sent {seen})"
    );
    drop((a, b));
}

/// While NATS is down, a SUBACK to a persistent session waits: the session
/// bucket cannot have the subscription, and a node dying then would
/// resume the session elsewhere without it. Once NATS is back, the SUBACK
/// goes, and by then the bucket has it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suback_waits_for_the_session_bucket_through_a_nats_outage() {
    let mut nats = NatsCluster::start(1).await;
    let name = unique("outage");
    let (a, b) = two_nodes(&nats, &name).await;
    let cfg = config(&nats, &name, "x");
    let mut dev = Raw::connected(a.addr, v5_session("dev-8", false, 600)).await;
    stored(&cfg, "dev-8", "a", &[]).await;
    nats.kill_all();
    dev.send(Packet::Subscribe(common::subscribe(
        1,
        &[("out/#", common::opts(QoS::AtLeastOnce))],
    )))
    .await;
    // Longer than a write's timeout (2 s here, and as long again to read
    // the entry after a failure): the write fails, and is tried again.
    if let Some(p) = dev.recv_within(Duration::from_secs(7)).await {
        panic!("acknowledged while the bucket cannot be written: {p:?}");
    }
    nats.restart_all().await;
    match dev.recv_within(Duration::from_secs(30)).await {
        Some(Packet::SubAck(a)) => assert_eq!(a.reasons, [ReasonCode::GrantedQos1]),
        other => panic!("expected the SUBACK once NATS is back, got {other:?}"),
    }
    let probe = ClusterConfig {
        node: unique("probe"),
        ..cfg
    };
    let engine = roost::cluster_engine::connect(&probe).await.unwrap();
    let got = roost::cluster_engine::stored_session(&engine, "dev-8").await;
    let (owner, filters, _) = got.expect("in the bucket");
    assert_eq!(owner, "a");
    assert_eq!(filters, ["out/#"], "in the bucket before the SUBACK went");
    drop((a, b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connecting_on_another_node_takes_the_session_over_with_0x8e() {
    let nats = NatsCluster::start(1).await;
    let name = unique("takeover");
    let (a, b) = two_nodes(&nats, &name).await;
    let mut old = Raw::connected(a.addr, v5_session("dev-2", false, 600)).await;
    old.subscribe(1, "t/#", QoS::AtLeastOnce).await;
    stored(&config(&nats, &name, "x"), "dev-2", "a", &["t/#"]).await;
    let (mut new, ack) = Raw::connect(b.addr, v5_session("dev-2", false, 600)).await;
    assert_eq!(ack.reason, ReasonCode::Success);
    assert!(ack.session_present);
    match old.recv_within(Duration::from_secs(5)).await {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason, ReasonCode::SessionTakenOver),
        other => panic!("the old connection should get DISCONNECT 0x8E, got {other:?}"),
    }
    let mut app = Raw::connected(a.addr, v5("app-2")).await;
    app.publish(publish("t/x", "after", QoS::AtLeastOnce, 1))
        .await;
    assert_eq!(common::payload(&new.recv_publish().await), "after");
    new.expect_nothing().await;
    drop((a, b));
}

/// Two `roost` processes; the one holding a persistent session is killed
/// with `kill -9` while QoS 1 traffic for it flows from the other. The
/// client comes back on the survivor and gets every message whose PUBACK
/// its publisher had (at least once: what the dead node delivered after it
/// last saved the session's cursor may come again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_with_sigkill_loses_nothing_its_sessions_were_owed() {
    let nats = NatsCluster::start(1).await;
    let name = unique("kill");
    let dir = tempfile::tempdir().unwrap();
    let start = |node: &str| binary_node(&nats, &name, node, dir.path());
    let mut a = Some(start("a"));
    let b = start("b");
    let a_addr = a.as_ref().unwrap().addr;
    let mut watcher = Raw::connected(b.addr, v5("watch-3")).await;
    watcher.subscribe(1, "gone/#", QoS::AtLeastOnce).await;
    let mut dev = Raw::connected(
        a_addr,
        with_will(v5_session("dev-3", false, 600), "gone/dev-3", 0),
    )
    .await;
    dev.subscribe(1, "k/#", QoS::AtLeastOnce).await;
    stored(&config(&nats, &name, "x"), "dev-3", "a", &["k/#"]).await;
    let mut app = Raw::connected(b.addr, v5("app-3")).await;
    let n = 40u16;
    let mut received = BTreeMap::new();
    for i in 1..=n {
        let r = app
            .publish(publish("k/x", &format!("m{i}"), QoS::AtLeastOnce, i))
            .await;
        assert_eq!(r, ReasonCode::Success, "message {i} acknowledged");
        if i == n / 2 {
            // The device took part of it on A, then A dies.
            for (m, c) in receive(&mut dev, 5).await {
                *received.entry(m).or_insert(0) += c;
            }
            a.take().expect("killed once").kill9().await;
        }
    }
    let (mut dev, ack) = Raw::connect(b.addr, v5_session("dev-3", false, 600)).await;
    assert_eq!(ack.reason, ReasonCode::Success);
    assert!(ack.session_present, "B resumed the session from the bucket");
    let mut rest = BTreeMap::new();
    while (1..=n).any(|i| {
        let m = format!("m{i}");
        !received.contains_key(&m) && !rest.contains_key(&m)
    }) {
        let Some(Packet::Publish(p)) = dev.recv_within(Duration::from_secs(20)).await else {
            panic!("after the kill, received {rest:?}; before it {received:?}");
        };
        dev.ack(&p).await;
        *rest.entry(common::payload(&p).to_owned()).or_insert(0) += 1;
    }
    assert!(
        rest.values().all(|c| *c == 1),
        "nothing twice on B: {rest:?}"
    );
    // Its connection died with A: its will went out, once.
    let will = watcher.recv_publish().await;
    assert_eq!(will.topic, "gone/dev-3");
    watcher.ack(&will).await;
    watcher.expect_nothing().await;
    drop(b);
}

/// A QoS 2 receiver as the specification has it (method B): it delivers a
/// PUBLISH at once and holds its packet id until the PUBREL, taking any
/// PUBLISH under a held id for a resend, not a new message.
#[derive(Default)]
struct Qos2Receiver {
    held: std::collections::HashSet<u16>,
    delivered: BTreeMap<String, usize>,
}

impl Qos2Receiver {
    /// Handles one packet; `answer`: sends PUBREC / PUBCOMP (a receiver
    /// that is about to lose its connection does not).
    async fn handle(&mut self, raw: &mut Raw, packet: Packet, answer: bool) {
        use roost::codec::PubResp;
        match packet {
            Packet::Publish(p) => {
                let pid = p.qos_pid.packet_id().expect("QoS 2");
                assert_eq!(p.qos_pid.qos(), QoS::ExactlyOnce);
                if self.held.insert(pid.get()) {
                    *self
                        .delivered
                        .entry(common::payload(&p).to_owned())
                        .or_insert(0) += 1;
                }
                if answer {
                    raw.send(Packet::PubRec(PubResp::new(pid))).await;
                }
            }
            Packet::PubRel(r) => {
                self.held.remove(&r.packet_id.get());
                if answer {
                    raw.send(Packet::PubComp(PubResp::new(r.packet_id))).await;
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    /// Answers what comes on `raw` until `n` distinct messages were
    /// delivered; `at` names the stage in the failure.
    async fn receive(&mut self, raw: &mut Raw, n: usize, at: &str) {
        while self.delivered.len() < n {
            let packet = raw.recv_within(Duration::from_secs(20)).await;
            let packet = packet.unwrap_or_else(|| panic!("{at}, only {:?}", self.delivered));
            self.handle(raw, packet, true).await;
        }
    }

    /// Then answers what still comes until `quiet` passes without a
    /// packet: the flows still open finish, and a copy delivered twice
    /// would show.
    async fn settle(&mut self, raw: &mut Raw, quiet: Duration) {
        while let Some(packet) = raw.recv_within(quiet).await {
            self.handle(raw, packet, true).await;
        }
    }

    /// No message was delivered more than once.
    fn assert_once(&self) {
        let twice: Vec<_> = self.delivered.iter().filter(|(_, c)| **c > 1).collect();
        assert!(twice.is_empty(), "delivered more than once: {twice:?}");
    }
}

/// A QoS 2 publisher's side of `n` flows on `raw`: a PUBREL for every
/// PUBREC, until every flow's PUBCOMP came, all successes.
async fn complete_qos2(raw: &mut Raw, n: u16) {
    let mut completed = std::collections::BTreeSet::new();
    while completed.len() < usize::from(n) {
        match raw.recv_within(Duration::from_secs(20)).await {
            Some(Packet::PubRec(r)) => {
                assert!(r.reason.is_success(), "PUBREC {r:?}");
                raw.send(Packet::PubRel(roost::codec::PubResp::new(r.packet_id)))
                    .await;
            }
            Some(Packet::PubComp(c)) => {
                assert!(c.reason.is_success(), "PUBCOMP {c:?}");
                completed.insert(c.packet_id.get());
            }
            other => panic!("after {} completed: {other:?}", completed.len()),
        }
    }
}

/// As [`a_node_killed_with_sigkill_loses_nothing_its_sessions_were_owed`],
/// at QoS 2: the device is cut off with flows in every state (delivered
/// and not acknowledged, PUBREC sent, PUBREL received and PUBCOMP never
/// sent); on the survivor it gets every message exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_with_sigkill_delivers_qos2_exactly_once_on_the_survivor() {
    let nats = NatsCluster::start(1).await;
    let name = unique("kill2");
    let dir = tempfile::tempdir().unwrap();
    let start = |node: &str| binary_node(&nats, &name, node, dir.path());
    let mut a = Some(start("a"));
    let b = start("b");
    let a_addr = a.as_ref().unwrap().addr;
    let mut dev = Raw::connected(a_addr, v5_session("dev-q2", false, 600)).await;
    dev.subscribe(1, "q2/#", QoS::ExactlyOnce).await;
    stored(&config(&nats, &name, "x"), "dev-q2", "a", &["q2/#"]).await;
    let mut app = Raw::connected(b.addr, v5("app-q2")).await;
    // Others' messages first: the device's are not the stream's first, so
    // their sequences are not the packet ids a fresh session counts out.
    for i in 1..=5u16 {
        app.publish(publish("noise/x", "n", QoS::AtLeastOnce, i))
            .await;
    }
    let n = 40u16;
    for i in 1..=n / 2 {
        let r = app
            .publish(publish("q2/x", &format!("m{i}"), QoS::ExactlyOnce, i))
            .await;
        assert!(r.is_success(), "message {i} acknowledged: {r:?}");
    }
    let mut rx = Qos2Receiver::default();
    rx.receive(&mut dev, 8, "on A").await;
    // Then it stops answering: what arrives now is delivered (PUBLISH) or
    // released (PUBREL) here and never acknowledged.
    while let Some(packet) = dev.recv_within(Duration::from_millis(300)).await {
        rx.handle(&mut dev, packet, false).await;
    }
    a.take().expect("killed once").kill9().await;
    drop(dev);
    for i in n / 2 + 1..=n {
        let r = app
            .publish(publish("q2/x", &format!("m{i}"), QoS::ExactlyOnce, i))
            .await;
        assert!(r.is_success(), "message {i} acknowledged: {r:?}");
    }
    let (mut dev, ack) = Raw::connect(b.addr, v5_session("dev-q2", false, 600)).await;
    assert_eq!(ack.reason, ReasonCode::Success);
    assert!(ack.session_present, "B resumed the session from the bucket");
    rx.receive(&mut dev, usize::from(n), "in all").await;
    // The flows still open finish; nothing comes as new.
    rx.settle(&mut dev, Duration::from_millis(500)).await;
    rx.assert_once();
    assert!(rx.held.is_empty(), "every flow completed: {:?}", rx.held);
    drop(b);
}

/// The publisher's side of QoS 2 across a node's death: a publisher on
/// node A pipelines QoS 2 messages and reads nothing back; A is killed
/// (SIGKILL) once the subscriber on B has some of them, so some are in the
/// cluster's stream without their packet id in the session bucket (their
/// PUBREC had not gone). The publisher resumes on B and, as MQTT requires,
/// resends every PUBLISH it has no PUBREC for, DUP set, same packet id; B
/// found its flows in the stream, answers those resends PUBREC without
/// delivering them again, and the subscriber gets every message exactly
/// once ([MQTT-4.3.3]).
///
/// Whether some messages are in the stream and not yet saved at the kill
/// is a race (the kill follows the subscriber's first deliveries): a
/// round where B found none is run again with a new node A, up to five.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qos2_publisher_whose_node_is_killed_resends_on_another_and_each_is_delivered_once() {
    let nats = NatsCluster::start(1).await;
    let name = unique("pubkill");
    let dir = tempfile::tempdir().unwrap();
    let (b, mut b_logs) = binary_node_with(&nats, &name, "b", dir.path(), &["--store", "memory"]);
    let mut sub = Raw::connected(b.addr, v5("sub-pq2")).await;
    sub.subscribe(1, "in/#", QoS::ExactlyOnce).await;
    let mut found = None;
    for round in 1..=5 {
        let node = format!("a{round}");
        let a = binary_node(&nats, &name, &node, dir.path());
        let client_id = format!("pub-q2-{round}");
        publisher_killed_mid_pipeline(&nats, &name, (a, &node), b.addr, &mut sub, &client_id).await;
        // B found flows of the dead node's in the stream: the case under
        // test happened.
        let needle = "inbound QoS 2 messages of the session found in the stream";
        let quiet = Duration::from_secs(2);
        while let Some(line) = b_logs.next(quiet) {
            if line.contains(needle) && line.contains(&client_id) {
                found = Some(round);
            }
        }
        if found.is_some() {
            break;
        }
    }
    assert!(
        found.is_some(),
        "no round left messages stored and unsaved at the kill"
    );
    drop(b);
}

/// One round of the test above: `client_id` pipelines QoS 2 messages on
/// `a` (cluster node `node`), which is killed after `sub` (on `b`) got some; on `b` it resends
/// them all; `sub` must get each exactly once.
async fn publisher_killed_mid_pipeline(
    nats: &NatsCluster,
    name: &str,
    (a, node): (Broker, &str),
    b: std::net::SocketAddr,
    sub: &mut Raw,
    client_id: &str,
) {
    let mut dev = Raw::connected(a.addr, v5_session(client_id, false, 600)).await;
    stored(&config(nats, name, "x"), client_id, node, &[]).await;
    let n = 1000u16;
    let message = |i: u16, dup: bool| {
        let mut p = publish("in/x", &format!("{client_id}-m{i}"), QoS::ExactlyOnce, i);
        p.dup = dup;
        Packet::Publish(p)
    };
    for i in 1..=n {
        dev.send(message(i, false)).await;
    }
    // Stored in the stream (B delivers only what it read there), and most
    // of the rest on their way: A dies now, the publisher having read no
    // PUBREC at all.
    let mut rx = Qos2Receiver::default();
    rx.receive(sub, 20, "before the kill").await;
    a.kill9().await;
    drop(dev);
    let (mut dev, ack) = Raw::connect(b, v5_session(client_id, false, 600)).await;
    assert_eq!(ack.reason, ReasonCode::Success);
    assert!(ack.session_present, "B resumed the session {node} had");
    for i in 1..=n {
        dev.send(message(i, true)).await;
    }
    complete_qos2(&mut dev, n).await;
    rx.receive(sub, usize::from(n), "in all").await;
    // A copy stored twice would follow its first: none comes.
    rx.settle(sub, Duration::from_secs(1)).await;
    rx.assert_once();
    assert!(rx.held.is_empty(), "every flow completed: {:?}", rx.held);
    dev.disconnect().await;
}

/// As [`a_qos2_publisher_whose_node_is_killed_resends_on_another_and_each_is_delivered_once`],
/// with node A alive: the publisher moves to B while A's router still has
/// its messages on their way to JetStream. A hands the session over once
/// they are stored, with their packet ids, so the resends on B are
/// answered without being delivered again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qos2_publisher_moving_between_live_nodes_resends_and_each_is_delivered_once() {
    let nats = NatsCluster::start(1).await;
    let name = unique("pubmove");
    let (a, b) = two_nodes(&nats, &name).await;
    let mut sub = Raw::connected(b.addr, v5("sub-pm")).await;
    sub.subscribe(1, "in/#", QoS::ExactlyOnce).await;
    let mut dev = Raw::connected(a.addr, v5_session("pub-move", false, 600)).await;
    stored(&config(&nats, &name, "x"), "pub-move", "a", &[]).await;
    let n = 400u16;
    let message = |i: u16, dup: bool| {
        let mut p = publish("in/x", &format!("m{i}"), QoS::ExactlyOnce, i);
        p.dup = dup;
        Packet::Publish(p)
    };
    for i in 1..=n {
        dev.send(message(i, false)).await;
    }
    // At once, reading nothing from A: the takeover races the router.
    let (mut moved, ack) = Raw::connect(b.addr, v5_session("pub-move", false, 600)).await;
    assert_eq!(ack.reason, ReasonCode::Success);
    assert!(ack.session_present, "A handed the session over");
    drop(dev);
    for i in 1..=n {
        moved.send(message(i, true)).await;
    }
    complete_qos2(&mut moved, n).await;
    let mut rx = Qos2Receiver::default();
    rx.receive(&mut sub, usize::from(n), "in all").await;
    rx.settle(&mut sub, Duration::from_secs(1)).await;
    rx.assert_once();
    drop((a, b));
}

/// As [`a_node_killed_with_sigkill_delivers_qos2_exactly_once_on_the_survivor`],
/// with the session's queue on disk: node B has a persistent store, and
/// what is published while the device is away lives only there (spilled),
/// to be read back a page at a time when it returns. It completes some of
/// it on B, B is killed, and on A it gets every message exactly once: the
/// entries read back from B's store kept their place in the cluster's
/// stream, so B's saved cursor was never left behind what it completed.
// Its nodes run with the redb store and read B's stats over HTTP.
#[cfg(all(feature = "redb", feature = "http"))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spilled_queue_is_delivered_exactly_once_after_its_node_is_killed() {
    let nats = NatsCluster::start(1).await;
    let name = unique("spillkill");
    let dir = tempfile::tempdir().unwrap();
    let data = |node: &str| dir.path().join(format!("{node}-data"));
    let (a_data, b_data) = (data("a"), data("b"));
    let a_flags = ["--store", "redb", "--data-dir", a_data.to_str().unwrap()];
    let b_flags = [
        "--store",
        "redb",
        "--data-dir",
        b_data.to_str().unwrap(),
        "--http",
        "127.0.0.1:0",
    ];
    let a = binary_node_with(&nats, &name, "a", dir.path(), &a_flags).0;
    let mut b = Some(binary_node_with(&nats, &name, "b", dir.path(), &b_flags).0);
    let b_addr = b.as_ref().unwrap().addr;
    let b_http = b.as_ref().unwrap().listener("http stats");
    let mut dev = Raw::connected(b_addr, v5_session("dev-sq", false, 600)).await;
    dev.subscribe(1, "sq/#", QoS::ExactlyOnce).await;
    stored(&config(&nats, &name, "x"), "dev-sq", "b", &["sq/#"]).await;
    dev.disconnect().await;
    let mut app = Raw::connected(a.addr, v5("app-sq")).await;
    // Others' messages first, so that the device's sequences are not the
    // packet ids a fresh session counts out.
    for i in 1..=5u16 {
        app.publish(publish("noise/x", "n", QoS::AtLeastOnce, i))
            .await;
    }
    let n = 60u16;
    for i in 1..=n {
        let r = app
            .publish(publish("sq/x", &format!("m{i}"), QoS::ExactlyOnce, i))
            .await;
        assert!(r.is_success(), "message {i} acknowledged: {r:?}");
    }
    // All of it reached B while the device was away: on B's disk only.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let stats = common::http::get(b_http, "/stats").await.json();
        if stats["queue_disk_messages"] == u64::from(n) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "B never spilled the {n} messages: {stats}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Back on B, a few flows at a time: it completes a third, then stops
    // answering, its flows in every state.
    let mut back = v5_session("dev-sq", false, 600);
    back.properties.receive_maximum = std::num::NonZeroU16::new(5);
    let (mut dev, ack) = Raw::connect(b_addr, back).await;
    assert!(ack.session_present);
    let mut rx = Qos2Receiver::default();
    rx.receive(&mut dev, usize::from(n / 3), "on B").await;
    while let Some(packet) = dev.recv_within(Duration::from_millis(300)).await {
        rx.handle(&mut dev, packet, false).await;
    }
    b.take().expect("killed once").kill9().await;
    drop(dev);
    let more = 10u16;
    for i in n + 1..=n + more {
        let r = app
            .publish(publish("sq/x", &format!("m{i}"), QoS::ExactlyOnce, i))
            .await;
        assert!(r.is_success(), "message {i} acknowledged: {r:?}");
    }
    let (mut dev, ack) = Raw::connect(a.addr, v5_session("dev-sq", false, 600)).await;
    assert_eq!(ack.reason, ReasonCode::Success);
    assert!(ack.session_present, "A resumed the session from the bucket");
    rx.receive(&mut dev, usize::from(n + more), "in all").await;
    // The flows still open finish; nothing comes as new.
    rx.settle(&mut dev, Duration::from_millis(500)).await;
    rx.assert_once();
    assert!(rx.held.is_empty(), "every flow completed: {:?}", rx.held);
    drop(a);
}

/// A session whose node died and whose client does not come back is taken
/// over by a live node once the dead one leaves the node registry: its
/// will fires there, once, and what is published for it meanwhile waits
/// there for the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sessions_of_a_dead_node_are_taken_over_with_their_wills() {
    let nats = NatsCluster::start(1).await;
    let name = unique("rescue");
    let dir = tempfile::tempdir().unwrap();
    let mut a = Some(binary_node(&nats, &name, "a", dir.path()));
    let b = binary_node(&nats, &name, "b", dir.path());
    let a_addr = a.as_ref().unwrap().addr;
    let mut watcher = Raw::connected(b.addr, v5("watch-4")).await;
    watcher.subscribe(1, "gone/#", QoS::AtLeastOnce).await;
    let mut dev = Raw::connected(
        a_addr,
        with_will(v5_session("dev-4", false, 600), "gone/dev-4", 0),
    )
    .await;
    dev.subscribe(1, "r/#", QoS::AtLeastOnce).await;
    stored(&config(&nats, &name, "x"), "dev-4", "a", &["r/#"]).await;
    a.take().expect("killed once").kill9().await;
    drop(dev);
    let mut app = Raw::connected(b.addr, v5("app-4")).await;
    for i in 1..=5u16 {
        let r = app
            .publish(publish("r/x", &format!("o{i}"), QoS::AtLeastOnce, i))
            .await;
        assert_eq!(r, ReasonCode::Success);
    }
    // A leaves the registry within its TTL (15 s); B scans within 5 s.
    let Some(Packet::Publish(will)) = watcher.recv_within(Duration::from_secs(45)).await else {
        panic!("the dead node's session's will never came");
    };
    assert_eq!(will.topic, "gone/dev-4");
    watcher.ack(&will).await;
    stored(&config(&nats, &name, "x"), "dev-4", "b", &["r/#"]).await;
    let (mut dev, ack) = Raw::connect(b.addr, v5_session("dev-4", false, 600)).await;
    assert!(ack.session_present, "B holds the session now");
    let got = receive(&mut dev, 5).await;
    assert!(got.values().all(|c| *c == 1), "each once: {got:?}");
    watcher.expect_nothing().await;
    drop(b);
}

/// A node with a persistent store, killed while its sessions' node is
/// gone long enough for another to take them over, comes back with those
/// sessions in its store: it drops them instead of firing their wills a
/// second time, and a client of one resumes it from the node that has it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_from_its_store_drops_the_sessions_taken_over_meanwhile() {
    let nats = NatsCluster::start(1).await;
    let name = unique("restart");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("a-data");
    let a_store = ["--store", "redb", "--data-dir", data.to_str().unwrap()];
    let mut a = Some(binary_node_with(&nats, &name, "a", dir.path(), &a_store).0);
    let b = binary_node(&nats, &name, "b", dir.path());
    let a_addr = a.as_ref().unwrap().addr;
    let mut watcher = Raw::connected(b.addr, v5("watch-5")).await;
    watcher.subscribe(1, "gone/#", QoS::AtLeastOnce).await;
    let dev = Raw::connected(
        a_addr,
        with_will(v5_session("dev-5", false, 600), "gone/dev-5", 0),
    )
    .await;
    stored(&config(&nats, &name, "x"), "dev-5", "a", &[]).await;
    a.take().expect("killed once").kill9().await;
    drop(dev);
    let Some(Packet::Publish(will)) = watcher.recv_within(Duration::from_secs(45)).await else {
        panic!("the dead node's session's will never came");
    };
    watcher.ack(&will).await;
    stored(&config(&nats, &name, "x"), "dev-5", "b", &[]).await;
    let (a, mut logs) = binary_node_with(&nats, &name, "a", dir.path(), &a_store);
    // Its store still had the session, with its will due: dropped, not
    // fired again.
    logs.wait_for("belongs to another node now; dropped here");
    watcher.expect_nothing().await;
    let (_dev, ack) = Raw::connect(a.addr, v5_session("dev-5", false, 600)).await;
    assert!(ack.session_present, "handed over from B");
    stored(&config(&nats, &name, "x"), "dev-5", "a", &[]).await;
    watcher.expect_nothing().await;
    drop((a, b));
}

/// A node stopped with a session whose will has a delay comes back after
/// the delay: the will, due at its start, goes out through the cluster
/// (once its router is connected), so a subscriber on another node gets
/// it, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_will_that_fell_due_while_its_node_was_down_reaches_the_other_nodes() {
    let nats = NatsCluster::start(1).await;
    let name = unique("duewill");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("a-data");
    let a_store = ["--store", "redb", "--data-dir", data.to_str().unwrap()];
    let a = binary_node_with(&nats, &name, "a", dir.path(), &a_store).0;
    let b = binary_node(&nats, &name, "b", dir.path());
    let mut watcher = Raw::connected(b.addr, v5("watch-7")).await;
    watcher.subscribe(1, "gone/#", QoS::AtLeastOnce).await;
    let _dev = Raw::connected(
        a.addr,
        with_will(v5_session("dev-7", false, 600), "gone/dev-7", 2),
    )
    .await;
    stored(&config(&nats, &name, "x"), "dev-7", "a", &[]).await;
    assert!(a.terminate().await.success());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_a, mut logs) = binary_node_with(&nats, &name, "a", dir.path(), &a_store);
    let Some(Packet::Publish(will)) = watcher.recv_within(Duration::from_secs(30)).await else {
        while let Some(l) = logs.next(Duration::from_millis(200)) {
            eprintln!("A: {l}");
        }
        panic!("the will that fell due while A was down never reached B");
    };
    assert_eq!(will.topic, "gone/dev-7");
    watcher.ack(&will).await;
    watcher.expect_nothing().await;
    drop(b);
}

/// A client whose node died starts over (Clean Start) on another node: its
/// old session ends there, and its will, with a delay it had not reached,
/// goes out then, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starting_over_after_the_node_died_ends_the_old_session_with_its_will() {
    let nats = NatsCluster::start(1).await;
    let name = unique("restart-clean");
    let dir = tempfile::tempdir().unwrap();
    let mut a = Some(binary_node(&nats, &name, "a", dir.path()));
    let b = binary_node(&nats, &name, "b", dir.path());
    let a_addr = a.as_ref().unwrap().addr;
    let mut watcher = Raw::connected(b.addr, v5("watch-6")).await;
    watcher.subscribe(1, "gone/#", QoS::AtLeastOnce).await;
    let dev = Raw::connected(
        a_addr,
        with_will(v5_session("dev-6", false, 600), "gone/dev-6", 300),
    )
    .await;
    stored(&config(&nats, &name, "x"), "dev-6", "a", &[]).await;
    a.take().expect("killed once").kill9().await;
    drop(dev);
    let (_dev, ack) = Raw::connect(b.addr, v5_session("dev-6", true, 600)).await;
    assert_eq!(ack.reason, ReasonCode::Success);
    assert!(!ack.session_present);
    let will = watcher.recv_publish().await;
    assert_eq!(will.topic, "gone/dev-6");
    watcher.ack(&will).await;
    watcher.expect_nothing().await;
    drop(b);
}

fn with_will(mut c: roost::codec::Connect, topic: &str, delay: u32) -> roost::codec::Connect {
    let mut w = roost::codec::LastWill::new(topic, &b"bye"[..], QoS::AtLeastOnce);
    w.properties.will_delay_interval = Some(delay);
    c.will = Some(w);
    c
}

/// A `roost` process, node `node` of cluster `name` on `nats`, its config
/// in `dir`.
fn binary_node(nats: &NatsCluster, name: &str, node: &str, dir: &std::path::Path) -> Broker {
    binary_node_with(nats, name, node, dir, &["--store", "memory"]).0
}

/// [`binary_node`] with `flags` for its store (and an HTTP listener, if
/// they name one), and its log.
fn binary_node_with(
    nats: &NatsCluster,
    name: &str,
    node: &str,
    dir: &std::path::Path,
    flags: &[&str],
) -> (Broker, Logs) {
    let url = nats.urls().remove(0);
    // The cluster's name has no flag: a config file per node.
    let file = dir.join(format!("{node}.toml"));
    std::fs::write(
        &file,
        format!("[cluster]\nservers = [\"{url}\"]\nname = \"{name}\"\nnode = \"{node}\"\n"),
    )
    .unwrap();
    let mut args = vec!["--config", file.to_str().unwrap()];
    args.extend_from_slice(flags);
    args.extend_from_slice(&["--tcp", "127.0.0.1:0", "--ws", "none"]);
    if !flags.contains(&"--http") {
        args.extend_from_slice(&["--http", "none"]);
    }
    let mut cmd = common::process::roost(&args);
    cmd.stderr(std::process::Stdio::piped());
    let mut broker = Broker::spawn(cmd);
    // Read on a thread whether or not the test looks: the node never
    // blocks on a full pipe.
    let logs = Logs::of(&mut broker);
    (broker, logs)
}
