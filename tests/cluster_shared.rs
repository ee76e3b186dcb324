//! Shared subscriptions across a cluster (issue 19): each message to one
//! member of the group across all nodes. Two in-process nodes joined
//! through a real nats-server with JetStream (`common::cluster`,
//! `common::nats`), real MQTT clients (the project's raw client) on each.

#![cfg(feature = "cluster")]

mod common;

use async_nats::jetstream;
use common::cluster::{config, nodes_with, two_nodes};
use common::nats::NatsCluster;
use common::{opts, publish, subscribe, unique, v5, v5_session, Raw, TestBroker, WAIT};
use roost::codec::{Packet, PubResp, QoS, QosPid, ReasonCode};
use roost::hooks::{AclHook, Client as HookClient, Decision};
use roost::storage::{StorageError, Store};
use roost::{Options, Server};
use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// How long cross-node deliveries may take to arrive on a loaded 2-core
/// machine.
const ARRIVE: Duration = Duration::from_secs(30);
/// How long a member must stay quiet to show that nothing more comes.
const SETTLE: Duration = Duration::from_millis(700);

/// What one member received: payload -> how often, per subscription
/// identifier (0 without one).
type Got = BTreeMap<(u32, String), usize>;

/// Reads every member (acknowledging what it gets) until together they
/// received `total` messages, then until each has been quiet for
/// [`SETTLE`], so late duplicates would be counted too.
async fn read_all(members: &mut [&mut Raw], total: usize) -> Vec<Got> {
    let mut got = vec![Got::new(); members.len()];
    let count = |got: &[Got]| got.iter().flat_map(|g| g.values()).sum::<usize>();
    let deadline = Instant::now() + ARRIVE;
    while count(&got) < total {
        assert!(
            Instant::now() < deadline,
            "only {} of {total} messages arrived: {got:?}",
            count(&got)
        );
        for (i, raw) in members.iter_mut().enumerate() {
            while let Some(p) = raw.recv_within(Duration::from_millis(20)).await {
                take(raw, p, &mut got[i]).await;
            }
        }
    }
    for (i, raw) in members.iter_mut().enumerate() {
        while let Some(p) = raw.recv_within(SETTLE).await {
            take(raw, p, &mut got[i]).await;
        }
    }
    got
}

/// Counts a PUBLISH and acknowledges it; answers a PUBREL. A QoS 2 flow
/// is not awaited here: more PUBLISHes may come before its PUBREL.
async fn take(raw: &mut Raw, p: Packet, got: &mut Got) {
    let p = match p {
        Packet::Publish(p) => p,
        Packet::PubRel(r) => {
            return raw.send(Packet::PubComp(PubResp::new(r.packet_id))).await;
        }
        other => panic!("expected PUBLISH or PUBREL, got {other:?}"),
    };
    match p.qos_pid {
        QosPid::ExactlyOnce(pid) => raw.send(Packet::PubRec(PubResp::new(pid))).await,
        _ => raw.ack(&p).await,
    }
    let id = p
        .properties
        .subscription_identifiers
        .first()
        .map_or(0, |id| id.get());
    *got.entry((id, common::payload(&p).to_owned())).or_default() += 1;
}

/// Every payload of `got` (all subscription identifiers) with its count.
fn merged<'a>(got: impl IntoIterator<Item = &'a Got>) -> BTreeMap<String, usize> {
    let mut all = BTreeMap::new();
    for g in got {
        for ((_, payload), n) in g {
            *all.entry(payload.clone()).or_default() += n;
        }
    }
    all
}

fn payloads(prefix: &str, n: usize) -> BTreeMap<String, usize> {
    (0..n).map(|i| (format!("{prefix}{i}"), 1)).collect()
}

/// Publishes `n` messages at `qos` on `topic`, alternately from the two
/// publishers, payloads `<prefix><i>`; every acknowledgement a success.
async fn publish_from_both(pubs: [&mut Raw; 2], topic: &str, prefix: &str, n: usize, qos: QoS) {
    let [a, b] = pubs;
    for i in 0..n {
        let raw = if i % 2 == 0 { &mut *a } else { &mut *b };
        let pid = (i % 60_000) as u16 + 1;
        let r = raw
            .publish(publish(topic, &format!("{prefix}{i}"), qos, pid))
            .await;
        assert_eq!(r, ReasonCode::Success, "message {i}");
    }
}

/// Publishes `n` QoS 1 messages on `topic` from `raw`, payloads
/// `<prefix><i>`, packet ids from `first_pid` on; every acknowledgement a
/// success.
async fn publish_numbered(raw: &mut Raw, topic: &str, prefix: &str, n: usize, first_pid: u16) {
    for i in 0..n {
        let pid = first_pid + i as u16;
        let r = raw
            .publish(publish(
                topic,
                &format!("{prefix}{i}"),
                QoS::AtLeastOnce,
                pid,
            ))
            .await;
        assert_eq!(r, ReasonCode::Success, "message {i}");
    }
}

async fn member(node: &TestBroker, id: &str, filter: &str, qos: QoS) -> Raw {
    let mut raw = Raw::connected(node.addr, v5(id)).await;
    let ack = raw.subscribe(1, filter, qos).await;
    assert!(ack.reasons[0].is_success(), "{ack:?}");
    raw
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos1_from_both_nodes_goes_to_one_member_across_the_nodes_exactly_once() {
    let nats = NatsCluster::start(1).await;
    let (a, b) = two_nodes(&nats).await;
    qos1_from_both_nodes(a, b).await;
}

/// The same with persistent stores and persistent members: a pulled
/// message is acknowledged to JetStream after the member's copy is
/// committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_persistent_stores_too() {
    let nats = NatsCluster::start(1).await;
    let (a, b) = nodes_with(&nats, || {
        Server::new(Options::default()).store(common::Durable::default())
    })
    .await;
    qos1_from_both_nodes(a, b).await;
}

async fn qos1_from_both_nodes(a: TestBroker, b: TestBroker) {
    let filter = "$share/workers/jobs/#";
    let persistent = |id: &str| v5_session(id, false, 600);
    let mut on_a = Raw::connected(a.addr, persistent("m-a")).await;
    on_a.subscribe(1, filter, QoS::AtLeastOnce).await;
    let mut on_b1 = Raw::connected(b.addr, persistent("m-b1")).await;
    on_b1.subscribe(1, filter, QoS::AtLeastOnce).await;
    let mut on_b2 = member(&b, "m-b2", filter, QoS::ExactlyOnce).await;
    let mut pub_a = Raw::connected(a.addr, v5("pub-a")).await;
    let mut pub_b = Raw::connected(b.addr, v5("pub-b")).await;
    const N: usize = 300;
    publish_from_both([&mut pub_a, &mut pub_b], "jobs/x", "j", N, QoS::AtLeastOnce).await;
    let got = read_all(&mut [&mut on_a, &mut on_b1, &mut on_b2], N).await;
    assert_eq!(
        merged(&got),
        payloads("j", N),
        "each message once across the group"
    );
    let on_node_b = merged(&got[1..]).len();
    assert!(
        !got[0].is_empty() && on_node_b > 0,
        "both nodes' members got some: A {}, B {on_node_b}",
        got[0].len()
    );
    // Node B shares its part among its own members, as one node does.
    assert!(!got[1].is_empty() && !got[2].is_empty(), "{got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos0_from_both_nodes_goes_to_one_member_at_most_once() {
    let nats = NatsCluster::start(1).await;
    let (a, b) = two_nodes(&nats).await;
    let filter = "$share/g0/t0/+";
    let mut on_a = member(&a, "m-a", filter, QoS::AtMostOnce).await;
    let mut on_b = member(&b, "m-b", filter, QoS::AtLeastOnce).await;
    let mut pub_a = Raw::connected(a.addr, v5("pub-a")).await;
    let mut pub_b = Raw::connected(b.addr, v5("pub-b")).await;
    const N: usize = 300;
    publish_from_both([&mut pub_a, &mut pub_b], "t0/x", "z", N, QoS::AtMostOnce).await;
    // QoS 0 may lose messages, so wait for most of them, then for quiet.
    let got = read_all(&mut [&mut on_a, &mut on_b], N * 9 / 10).await;
    let all = merged(&got);
    assert!(
        all.iter()
            .all(|(p, n)| *n == 1 && payloads("z", N).contains_key(p)),
        "no duplicates, nothing unknown: {all:?}"
    );
    assert!(
        !got[0].is_empty() && !got[1].is_empty(),
        "both nodes' members got some: A {}, B {}",
        got[0].len(),
        got[1].len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_with_members_on_one_node_gets_everything_published_on_the_other() {
    let nats = NatsCluster::start(1).await;
    let (a, b) = two_nodes(&nats).await;
    let filter = "$share/remote/r/#";
    let mut m1 = member(&b, "m1", filter, QoS::ExactlyOnce).await;
    let mut m2 = member(&b, "m2", filter, QoS::ExactlyOnce).await;
    let mut publ = Raw::connected(a.addr, v5("pub-a")).await;
    // Published right after the SUBACKs: the node pulls for the group
    // before acknowledging a member's SUBSCRIBE.
    let mut sent = BTreeMap::new();
    for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
        .into_iter()
        .cycle()
        .take(60)
        .enumerate()
    {
        let topic = if i % 2 == 0 { "r" } else { "r/deeper/level" };
        let payload = format!("q{i}");
        let r = publ
            .publish(publish(topic, &payload, qos, i as u16 + 1))
            .await;
        assert_eq!(r, ReasonCode::Success);
        sent.insert(payload, 1);
    }
    let got = read_all(&mut [&mut m1, &mut m2], sent.len()).await;
    assert_eq!(merged(&got), sent, "everything, once");
}

/// A subscriber whose first SUBSCRIBE is to a group: the SUBACK comes
/// once the node pulls, and a message published on the other node right
/// after it arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_published_right_after_the_suback_is_not_missed() {
    let nats = NatsCluster::start(1).await;
    let (a, b) = two_nodes(&nats).await;
    let mut publ = Raw::connected(a.addr, v5("pub-a")).await;
    for i in 0..5u16 {
        let filter = format!("$share/fresh{i}/f{i}");
        let mut m = member(&b, &format!("m{i}"), &filter, QoS::AtLeastOnce).await;
        let r = publ
            .publish(publish(&format!("f{i}"), "now", QoS::AtLeastOnce, i + 1))
            .await;
        assert_eq!(r, ReasonCode::Success);
        let p = m.recv_publish().await;
        assert_eq!(common::payload(&p), "now");
        m.ack(&p).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ordinary_subscription_overlapping_a_shared_one_gets_its_own_copy() {
    let nats = NatsCluster::start(1).await;
    let (a, b) = two_nodes(&nats).await;
    // X on A: an ordinary subscription (id 1) and a group one (id 2).
    let mut x = Raw::connected(a.addr, v5("x")).await;
    let mut s = subscribe(1, &[("o/#", opts(QoS::AtLeastOnce))]);
    s.subscription_identifier = NonZeroU32::new(1);
    x.subscribe_with(s).await;
    let mut s = subscribe(2, &[("$share/g/o/#", opts(QoS::AtLeastOnce))]);
    s.subscription_identifier = NonZeroU32::new(2);
    x.subscribe_with(s).await;
    // Y on B: the group only.
    let mut y = member(&b, "y", "$share/g/o/#", QoS::AtLeastOnce).await;
    let mut pub_a = Raw::connected(a.addr, v5("pub-a")).await;
    let mut pub_b = Raw::connected(b.addr, v5("pub-b")).await;
    const N: usize = 100;
    publish_from_both([&mut pub_a, &mut pub_b], "o/k", "o", N, QoS::AtLeastOnce).await;
    // N ordinary copies to X, and N shared between X and Y.
    let got = read_all(&mut [&mut x, &mut y], 2 * N).await;
    let ordinary: Got = got[0]
        .iter()
        .filter(|((id, _), _)| *id == 1)
        .map(|(k, n)| (k.clone(), *n))
        .collect();
    assert_eq!(merged([&ordinary]), payloads("o", N), "X's own copies");
    let shared: Got = got[0]
        .iter()
        .filter(|((id, _), _)| *id == 2)
        .map(|(k, n)| (k.clone(), *n))
        .collect();
    assert_eq!(
        merged([&shared, &got[1]]),
        payloads("o", N),
        "the group's, once across X and Y"
    );
    assert!(!shared.is_empty() && !got[1].is_empty(), "{got:?}");
}

/// The group's consumers on the message stream, as JetStream reports
/// them: (messages waiting for a node, pulled and not acknowledged, pull
/// requests open).
async fn group_consumers(nats: &NatsCluster, cluster: &str) -> Vec<(u64, usize, usize)> {
    group_infos(nats, cluster)
        .await
        .into_iter()
        .map(|(_, info)| (info.num_pending, info.num_ack_pending, info.num_waiting))
        .collect()
}

/// Each group consumer of cluster `cluster` (name, what JetStream reports).
async fn group_infos(
    nats: &NatsCluster,
    cluster: &str,
) -> Vec<(String, jetstream::consumer::Info)> {
    let stream = messages(nats, cluster).await;
    let mut names = stream.consumer_names();
    let mut found = Vec::new();
    while let Some(name) = std::future::poll_fn(|cx| {
        futures_core::Stream::poll_next(std::pin::Pin::new(&mut names), cx)
    })
    .await
    {
        let name = name.unwrap();
        if !name.starts_with(&format!("{cluster}_g_")) {
            continue;
        }
        let info = stream
            .get_consumer::<jetstream::consumer::pull::Config>(&name)
            .await
            .unwrap()
            .info()
            .await
            .unwrap()
            .clone();
        found.push((name, info));
    }
    found
}

/// The message stream of cluster `cluster`, through a client of the test's.
async fn messages(nats: &NatsCluster, cluster: &str) -> jetstream::stream::Stream {
    let client = async_nats::connect(nats.urls().join(",")).await.unwrap();
    jetstream::new(client)
        .get_stream(format!("{cluster}_messages"))
        .await
        .unwrap()
}

/// Members leaving stop their node pulling: with the last connected member
/// gone, the group's messages wait in its consumer (nobody pulls them,
/// nobody gives them back until they are dropped) and reach the persistent
/// member that comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_leaving_stop_their_node_pulling_and_the_consumer_keeps_the_messages() {
    let nats = NatsCluster::start(1).await;
    let name = unique("share");
    let a = common::nats::node(Server::new(Options::default()).cluster(config(&nats, &name, "a")))
        .await;
    let b = common::nats::node(Server::new(Options::default()).cluster(config(&nats, &name, "b")))
        .await;
    let filter = "$share/keep/k";
    // A persistent member on A, an ordinary one on B.
    let mut on_a = Raw::connected(a.addr, v5_session("keeper", false, 600)).await;
    on_a.subscribe(1, filter, QoS::AtLeastOnce).await;
    let mut on_b = member(&b, "m-b", filter, QoS::AtLeastOnce).await;
    let mut publ = Raw::connected(b.addr, v5("pub-b")).await;
    assert_eq!(
        publ.publish(publish("k", "before", QoS::AtLeastOnce, 1))
            .await,
        ReasonCode::Success
    );
    let got = read_all(&mut [&mut on_a, &mut on_b], 1).await;
    assert_eq!(merged(&got), BTreeMap::from([("before".to_owned(), 1)]));
    // B's member leaves the group, A's disconnects: no node has a
    // connected member.
    let ack = on_b.unsubscribe(2, &[filter]).await;
    assert!(ack.reasons[0].is_success());
    on_a.disconnect().await;
    // Nobody pulls any more (a node's last pull request ends within a
    // second or so).
    let deadline = Instant::now() + WAIT * 2;
    loop {
        let consumers = group_consumers(&nats, &name).await;
        assert_eq!(
            consumers.len(),
            1,
            "one consumer for the group's one subject"
        );
        if consumers[0].2 == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "still pulled: {consumers:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    const N: usize = 20;
    publish_numbered(&mut publ, "k", "w", N, 2).await;
    // They wait in the consumer, untouched: none pulled, none given back
    // (which would count towards dropping them). Checked a few times over
    // a while; a node still pulling would take them at once.
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut checks = 0;
    while checks < 3 || Instant::now() < deadline {
        let consumers = group_consumers(&nats, &name).await;
        assert_eq!(consumers, [(N as u64, 0, 0)], "waiting, unpulled");
        checks += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    on_b.expect_nothing().await;
    // The persistent member comes back: its node pulls again, and it gets
    // every one of them.
    let mut on_a = Raw::connected(a.addr, v5_session("keeper", false, 600)).await;
    let got = read_all(&mut [&mut on_a], N).await;
    assert_eq!(merged(&got), payloads("w", N));
    on_b.expect_nothing().await;
}

/// Through a 3-server NATS cluster (the group's consumer replicated on
/// every server): nodes pulling a window of messages each still give each
/// message to one member once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_a_three_server_nats_cluster_each_message_once_with_windows_of_pulled_messages() {
    let nats = NatsCluster::start(3).await;
    let (a, b) = two_nodes(&nats).await;
    qos1_from_both_nodes(a, b).await;
}

/// Refuses messages under `secret/` to clients whose id starts with `no-`.
struct Locked;

impl AclHook for Locked {
    fn can_receive(&self, client: &HookClient, m: &roost::Message) -> Decision {
        if m.topic.starts_with("secret/") && client.client_id.starts_with("no-") {
            Decision::Deny
        } else {
            Decision::Defer
        }
    }
}

/// Two nodes of a fresh cluster, built by `server`, and the cluster's name.
async fn named_nodes(
    nats: &NatsCluster,
    server: impl Fn() -> Server,
) -> (String, TestBroker, TestBroker) {
    let name = unique("share");
    let a = common::nats::node(server().cluster(config(nats, &name, "a"))).await;
    let b = common::nats::node(server().cluster(config(nats, &name, "b"))).await;
    (name, a, b)
}

fn locked() -> Server {
    Server::new(Options::default()).acl_hook(Locked)
}

/// A message the delivery ACL refuses to every member of the group does
/// not go round until JetStream drops it unseen (20 deliveries): the node
/// terminates it after a few rounds, and counts each one dropped once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_every_member_is_refused_is_terminated_and_counted_once() {
    let nats = NatsCluster::start(1).await;
    let (name, a, b) = named_nodes(&nats, locked).await;
    let filter = "$share/locked/secret/#";
    let mut m1 = member(&b, "no-1", filter, QoS::AtLeastOnce).await;
    let mut m2 = member(&b, "no-2", filter, QoS::AtLeastOnce).await;
    let mut publ = Raw::connected(a.addr, v5("pub-a")).await;
    let dropped = |n: &TestBroker| n.stats.snapshot().messages_dropped;
    let before = (dropped(&a), dropped(&b));
    const N: u64 = 10;
    // Stored, whoever may read it.
    publish_numbered(&mut publ, "secret/x", "s", N as usize, 1).await;
    // Every one counted as dropped on the node refusing it, within a few
    // rounds of a second.
    let t = Instant::now();
    let deadline = t + ARRIVE;
    while dropped(&b) - before.1 < N {
        assert!(
            Instant::now() < deadline,
            "dropped {} of {N}",
            dropped(&b) - before.1
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = t.elapsed();
    // Nothing left in the consumer, and no delivery after the last: each
    // message went round at most 5 times (not 20).
    let deadline = Instant::now() + WAIT;
    let infos = loop {
        let infos = group_infos(&nats, &name).await;
        if infos
            .iter()
            .all(|(_, i)| i.num_pending == 0 && i.num_ack_pending == 0)
        {
            break infos;
        }
        assert!(Instant::now() < deadline, "still held: {infos:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let deliveries: u64 = infos
        .iter()
        .map(|(_, i)| i.delivered.consumer_sequence)
        .sum();
    assert!(
        (N..=5 * N).contains(&deliveries),
        "{deliveries} deliveries for {N} messages"
    );
    m1.expect_nothing().await;
    m2.expect_nothing().await;
    // Counted once each, on the refusing node only.
    assert_eq!(dropped(&b) - before.1, N);
    assert_eq!(dropped(&a), before.0);
    let again = group_infos(&nats, &name).await;
    let later: u64 = again
        .iter()
        .map(|(_, i)| i.delivered.consumer_sequence)
        .sum();
    assert_eq!(later, deliveries, "no delivery after the drop");
    println!("{N} refused messages dropped after {took:?}, {deliveries} deliveries");
}

/// A member refused on one node does not cost the group a message another
/// node's member may receive: the message is given back, not terminated
/// at once, and reaches the allowed member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_refused_on_one_node_reaches_a_member_allowed_on_the_other() {
    let nats = NatsCluster::start(1).await;
    let (name, a, b) = named_nodes(&nats, locked).await;
    let filter = "$share/mixed/secret/#";
    let mut allowed = member(&a, "yes-a", filter, QoS::AtLeastOnce).await;
    let mut refused = member(&b, "no-b", filter, QoS::AtLeastOnce).await;
    let mut publ = Raw::connected(b.addr, v5("pub-b")).await;
    let before = b.stats.snapshot().messages_dropped;
    const N: usize = 20;
    publish_numbered(&mut publ, "secret/y", "y", N, 1).await;
    let got = read_all(&mut [&mut allowed], N).await;
    assert_eq!(merged(&got), payloads("y", N), "everything, once");
    refused.expect_nothing().await;
    assert_eq!(
        b.stats.snapshot().messages_dropped,
        before,
        "nothing dropped"
    );
    // Some went to the refusing node first and were given back.
    let infos = group_infos(&nats, &name).await;
    let deliveries: u64 = infos
        .iter()
        .map(|(_, i)| i.delivered.consumer_sequence)
        .sum();
    println!("{N} messages refused on one node, allowed on the other: {deliveries} deliveries");
    assert!(
        deliveries > N as u64,
        "{deliveries} deliveries: B was never tried"
    );
}

/// A node that dies holding messages it pulled (here a NATS client of the
/// test's, pulling from the group's consumer and never answering) delays
/// them by the consumer's ack wait (5 s), not 30 s: then the group's
/// member on a live node gets them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_a_dead_node_pulled_reach_a_live_member_within_the_ack_wait() {
    let nats = NatsCluster::start(1).await;
    let (name, a, b) = named_nodes(&nats, || Server::new(Options::default())).await;
    let filter = "$share/dies/d";
    let mut m = Raw::connected(b.addr, v5_session("survivor", false, 600)).await;
    m.subscribe(1, filter, QoS::AtLeastOnce).await;
    // Nobody pulls while the member is away (see the test above).
    m.disconnect().await;
    let deadline = Instant::now() + WAIT * 2;
    while group_consumers(&nats, &name).await != [(0, 0, 0)] {
        assert!(Instant::now() < deadline, "still pulled");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut publ = Raw::connected(a.addr, v5("pub-a")).await;
    const N: usize = 10;
    publish_numbered(&mut publ, "d", "d", N, 1).await;
    // The doomed node pulls them all, and dies without a word.
    let (consumer, _) = group_infos(&nats, &name).await.remove(0);
    let doomed = async_nats::connect(nats.urls().join(",")).await.unwrap();
    let stream = jetstream::new(doomed.clone())
        .get_stream(format!("{name}_messages"))
        .await
        .unwrap();
    let mut fetched = stream
        .get_consumer::<jetstream::consumer::pull::Config>(&consumer)
        .await
        .unwrap()
        .fetch()
        .max_messages(N)
        .expires(Duration::from_secs(5))
        .messages()
        .await
        .unwrap();
    let mut held = 0;
    while held < N {
        let next = std::future::poll_fn(|cx| {
            futures_core::Stream::poll_next(std::pin::Pin::new(&mut fetched), cx)
        });
        let m = tokio::time::timeout(WAIT, next).await.expect("pulled");
        m.expect("a message").expect("not an error");
        held += 1;
    }
    let died = Instant::now();
    drop(fetched);
    drop(doomed);
    // The member comes back to a live node: its node pulls again and gets
    // them once JetStream gives up on the dead one.
    let mut m = Raw::connected(b.addr, v5_session("survivor", false, 600)).await;
    let got = read_all(&mut [&mut m], N).await;
    let took = died.elapsed();
    assert_eq!(merged(&got), payloads("d", N));
    assert!(
        took < Duration::from_secs(20),
        "redelivered after {took:?}: the ack wait is too long"
    );
    println!("{N} messages held by a dead node reached a live member after {took:?}");
}

/// A persistent store whose commits take [`SLOW_COMMIT`] while `slow` is
/// set: a disk that stalls.
#[derive(Debug, Default, Clone)]
struct Stalling {
    store: Arc<common::Durable>,
    slow: Arc<AtomicBool>,
}

/// Longer than a group consumer's ack wait (5 s).
const SLOW_COMMIT: Duration = Duration::from_secs(7);

impl Store for Stalling {
    fn apply(&self, ops: &[roost::storage::Op]) -> Result<(), StorageError> {
        if self.slow.load(Ordering::Relaxed) {
            std::thread::sleep(SLOW_COMMIT);
        }
        self.store.apply(ops)
    }
    fn load(&self) -> Result<roost::storage::Snapshot, StorageError> {
        self.store.load()
    }
    fn is_persistent(&self) -> bool {
        true
    }
    fn flush(&self) -> Result<(), StorageError> {
        self.store.flush()
    }
    fn outbound_page(
        &self,
        client_id: &str,
        after_seq: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, roost::storage::OutboundRecord)>, StorageError> {
        self.store.outbound_page(client_id, after_seq, limit)
    }
    fn messages(
        &self,
        ids: &[roost::storage::MessageId],
    ) -> Result<Vec<Option<roost::storage::MessageRecord>>, StorageError> {
        self.store.messages(ids)
    }
    fn retained(&self, topic: &str) -> Result<Option<roost::storage::MessageRecord>, StorageError> {
        self.store.retained(topic)
    }
    fn retained_many(
        &self,
        topics: &[&str],
    ) -> Result<Vec<Option<roost::storage::MessageRecord>>, StorageError> {
        self.store.retained_many(topics)
    }
    fn scan(
        &self,
        visit: &mut dyn FnMut(roost::storage::Record) -> Result<(), StorageError>,
    ) -> Result<(), StorageError> {
        self.store.scan(visit)
    }
    fn recover(&self) -> Result<(), StorageError> {
        self.store.recover()
    }
}

/// A delivery that outlasts the consumer's ack wait (the member's copy
/// takes 7 s to commit) is kept by its node with in-progress acks: not
/// given to the other node's member as well.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_slower_than_the_ack_wait_is_not_redelivered_elsewhere() {
    let nats = NatsCluster::start(1).await;
    let name = unique("share");
    let a = common::nats::node(Server::new(Options::default()).cluster(config(&nats, &name, "a")))
        .await;
    let stalling = Stalling::default();
    let store = stalling.clone();
    let b = common::nats::node(
        Server::new(Options::default())
            .store(store)
            .cluster(config(&nats, &name, "b")),
    )
    .await;
    let filter = "$share/stall/st";
    let mut on_a = member(&a, "fast", filter, QoS::AtLeastOnce).await;
    let mut on_b = Raw::connected(b.addr, v5_session("stored", false, 600)).await;
    on_b.subscribe(1, filter, QoS::AtLeastOnce).await;
    let mut publ = Raw::connected(a.addr, v5("pub-a")).await;
    stalling.slow.store(true, Ordering::Relaxed);
    let stalled = Instant::now();
    const N: usize = 20;
    publish_numbered(&mut publ, "st", "p", N, 1).await;
    // B's member gets its messages at once (its copies commit behind), but
    // B's outcomes wait for the commit: keep reading past the ack wait and
    // the commit, when a copy given to A as well would have arrived.
    let mut got = read_all(&mut [&mut on_a, &mut on_b], N).await;
    let until = stalled + SLOW_COMMIT + Duration::from_secs(3);
    while Instant::now() < until {
        for (i, raw) in [&mut on_a, &mut on_b].into_iter().enumerate() {
            while let Some(p) = raw.recv_within(Duration::from_millis(20)).await {
                take(raw, p, &mut got[i]).await;
            }
        }
    }
    stalling.slow.store(false, Ordering::Relaxed);
    assert_eq!(
        merged(&got),
        payloads("p", N),
        "each once, none given twice"
    );
    assert!(!got[1].is_empty(), "B's member got some: {got:?}");
    drop(b);
}

/// Cross-node QoS 1 through a share group whose one member is on the
/// other node: latency with one message in flight, and the rate with 64.
/// `cargo test --features cluster --test cluster_shared -- --ignored --nocapture --test-threads 1 measure`
/// (one at a time: the two measurements share the machine otherwise).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement"]
async fn measure_cross_node_group_qos1() {
    let nats = NatsCluster::start(1).await;
    let (a, b) = two_nodes(&nats).await;
    let sub = member(&b, "m-sub", "$share/m/m/#", QoS::AtLeastOnce).await;
    measure(a, b, sub, "").await;
}

/// The same with persistent stores and a persistent member: each of the
/// member's copies is committed before its node acknowledges it to
/// JetStream.
/// `cargo test --features cluster --test cluster_shared -- --ignored --nocapture --test-threads 1 measure`
/// (one at a time: the two measurements share the machine otherwise).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement"]
async fn measure_cross_node_group_qos1_persistent() {
    let nats = NatsCluster::start(1).await;
    let (a, b) = nodes_with(&nats, || {
        Server::new(Options::default()).store(common::Durable::default())
    })
    .await;
    let mut sub = Raw::connected(b.addr, v5_session("m-sub", false, 600)).await;
    sub.subscribe(1, "$share/m/m/#", QoS::AtLeastOnce).await;
    measure(a, b, sub, ", persistent").await;
}

async fn measure(a: TestBroker, b: TestBroker, mut sub: Raw, what: &str) {
    let mut publ = Raw::connected(a.addr, v5("m-pub")).await;
    let payload = "x".repeat(256);
    let n = 1000u16;
    let mut lat = Vec::with_capacity(usize::from(n));
    for i in 1..=n {
        let t = std::time::Instant::now();
        publ.send(Packet::Publish(publish(
            "m/lat",
            &payload,
            QoS::AtLeastOnce,
            i,
        )))
        .await;
        let got = sub.recv_publish().await;
        lat.push(t.elapsed());
        sub.ack(&got).await;
        assert!(matches!(publ.recv().await, Packet::PubAck(_)));
    }
    lat.sort();
    let pct = |p: usize| lat[lat.len() * p / 100];
    println!(
        "cross-node QoS 1 via a share group{what}, one in flight, {n} x 256 B: p50 {:?} p99 {:?}",
        pct(50),
        pct(99)
    );
    let total = 10_000u32;
    let window = 64u32;
    let t = std::time::Instant::now();
    let (mut sent, mut acked, mut received) = (0u32, 0u32, 0u32);
    while received < total {
        while sent < total && sent - acked < window {
            sent += 1;
            let pid = (sent % 65_000 + 1) as u16;
            publ.send(Packet::Publish(publish(
                "m/rate",
                &payload,
                QoS::AtLeastOnce,
                pid,
            )))
            .await;
        }
        while let Some(p) = publ.recv_within(Duration::ZERO).await {
            assert!(matches!(p, Packet::PubAck(_)));
            acked += 1;
        }
        let mut wait = Duration::from_millis(5);
        while let Some(p) = sub.recv_within(wait).await {
            let Packet::Publish(p) = p else {
                panic!("{p:?}")
            };
            sub.ack(&p).await;
            received += 1;
            wait = Duration::ZERO;
        }
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "cross-node QoS 1 via a share group{what}, window {window}, {total} x 256 B: {:.0} msg/s",
        f64::from(total) / secs
    );
    drop((a, b));
}
