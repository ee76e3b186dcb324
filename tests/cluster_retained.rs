//! Cluster-wide retained messages, the node registry and the `$SYS`
//! cluster topics (issue 19): in-process roost nodes on 127.0.0.1:0 joined
//! through a real nats-server with JetStream (`common::nats`,
//! `common::cluster`), real MQTT clients on each. The retained bucket is
//! the truth: a node started later, or restarted with a persistent store
//! from before, serves what the bucket holds and nothing else; concurrent
//! writes to one topic on two nodes converge to the bucket's last.
#![cfg(feature = "cluster")]

mod common;

use common::cluster::{config, two_nodes};
use common::nats::NatsCluster;
use common::{retained, unique, v5, Raw, TestBroker};
use roost::codec::{Packet, Publish, QoS, ReasonCode};
use roost::{Options, Server};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// How long a change may take to reach every node.
const SETTLE: Duration = Duration::from_secs(15);

/// The retained messages a new subscriber to `filter` on `addr` gets,
/// topic to publish (live messages that arrive meanwhile are left out).
async fn retained_on(addr: std::net::SocketAddr, filter: &str) -> BTreeMap<String, Publish> {
    let mut sub = Raw::connected(addr, v5(&unique("look-"))).await;
    sub.subscribe(1, filter, QoS::AtLeastOnce).await;
    let mut got = BTreeMap::new();
    while let Some(p) = sub.recv_within(Duration::from_millis(300)).await {
        let Packet::Publish(p) = p else {
            panic!("expected PUBLISH, got {p:?}")
        };
        sub.ack(&p).await;
        if p.retain {
            got.insert(p.topic.to_string(), p);
        }
    }
    sub.disconnect().await;
    got
}

/// The payload retained for `topic` on `addr`, if any.
async fn retained_payload(addr: std::net::SocketAddr, topic: &str) -> Option<String> {
    retained_on(addr, topic)
        .await
        .remove(topic)
        .map(|p| common::payload(&p).to_owned())
}

/// Waits until `addr` retains `want` for `topic` (`None`: nothing).
async fn until_retained(addr: std::net::SocketAddr, topic: &str, want: Option<&str>) {
    let deadline = Instant::now() + SETTLE;
    loop {
        let got = retained_payload(addr, topic).await;
        if got.as_deref() == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{topic} on {addr}: retained {got:?}, expected {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_on_one_node_reaches_a_new_subscriber_on_the_other_and_a_clear_crosses_back() {
    let nats = NatsCluster::start(1).await;
    let (a, b) = two_nodes(&nats).await;
    let mut on_a = Raw::connected(a.addr, v5("pub-a")).await;
    for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
        .into_iter()
        .enumerate()
    {
        let topic = format!("r/{i}");
        let r = on_a
            .publish(retained(&topic, &format!("v{i}"), qos, i as u16 + 1))
            .await;
        assert_eq!(r, ReasonCode::Success);
    }
    for i in 0..3 {
        until_retained(b.addr, &format!("r/{i}"), Some(&format!("v{i}"))).await;
    }
    // Cleared on B: gone on A too.
    let mut on_b = Raw::connected(b.addr, v5("pub-b")).await;
    let r = on_b.publish(retained("r/1", "", QoS::AtLeastOnce, 1)).await;
    assert_eq!(r, ReasonCode::Success);
    until_retained(a.addr, "r/1", None).await;
    assert_eq!(retained_payload(b.addr, "r/1").await, None);
    assert_eq!(
        retained_payload(a.addr, "r/2").await.as_deref(),
        Some("v2"),
        "the others stay"
    );
    drop((a, b));
}

/// A node that joins after the publish loads the bucket before it serves:
/// its very first client gets the retained message, with its expiry
/// counted from the original publish; one that expired meanwhile is not
/// served, and its bucket entry is deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_started_after_the_publish_serves_it_from_its_first_client_on() {
    let nats = NatsCluster::start(1).await;
    let name = unique("late");
    let a = common::nats::node(Server::new(Options::default()).cluster(config(&nats, &name, "a")))
        .await;
    let mut on_a = Raw::connected(a.addr, v5("pub-a")).await;
    let mut kept = retained("late/kept", "here", QoS::AtLeastOnce, 1);
    kept.properties.message_expiry_interval = Some(300);
    let mut gone = retained("late/gone", "brief", QoS::AtLeastOnce, 2);
    gone.properties.message_expiry_interval = Some(1);
    let published = Instant::now();
    assert_eq!(on_a.publish(kept).await, ReasonCode::Success);
    assert_eq!(on_a.publish(gone).await, ReasonCode::Success);
    // Time passes (not an assertion): the short one expires, the long one
    // ages by more than a second.
    tokio::time::sleep_until(published + Duration::from_millis(2100)).await;

    let b = common::nats::node(Server::new(Options::default()).cluster(config(&nats, &name, "b")))
        .await;
    let got = retained_on(b.addr, "late/#").await;
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        ["late/kept"],
        "the first client on B gets the live one only"
    );
    let interval = got["late/kept"].properties.message_expiry_interval;
    assert!(
        interval.is_some_and(|s| s <= 298),
        "expiry counts from the publish on A, not from B's load: {interval:?}"
    );
    // B deleted the expired entry from the bucket (compare-and-delete).
    let probe = roost::cluster_engine::connect(&config(&nats, &name, "probe"))
        .await
        .unwrap();
    let deadline = Instant::now() + SETTLE;
    while probe.retained().get("late.gone").await.unwrap().is_some() {
        assert!(
            Instant::now() < deadline,
            "the expired entry stays in the bucket"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(probe.retained().get("late.kept").await.unwrap().is_some());
    drop((a, b));
}

/// A node with a persistent store, stopped while a retained message is
/// cleared and another replaced, serves the bucket's state when it comes
/// back, not its store's stale one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_with_a_persistent_store_serves_the_bucket_not_its_stale_copy() {
    let nats = NatsCluster::start(1).await;
    let name = unique("restart");
    let store = Arc::new(common::Durable::default());
    let node_b = || {
        Server::new(Options::default())
            .store(store.clone())
            .cluster(config(&nats, &name, "b"))
    };
    let a = common::nats::node(Server::new(Options::default()).cluster(config(&nats, &name, "a")))
        .await;
    let b = common::nats::node(node_b()).await;
    let mut on_a = Raw::connected(a.addr, v5("pub-a")).await;
    for (pid, (topic, value)) in [("p/stale", "old"), ("p/kept", "v1")].iter().enumerate() {
        let r = on_a
            .publish(retained(topic, value, QoS::AtLeastOnce, pid as u16 + 1))
            .await;
        assert_eq!(r, ReasonCode::Success);
    }
    until_retained(b.addr, "p/stale", Some("old")).await;
    until_retained(b.addr, "p/kept", Some("v1")).await;
    b.stop().await;

    // While B is down.
    let r = on_a
        .publish(retained("p/stale", "", QoS::AtLeastOnce, 3))
        .await;
    assert_eq!(r, ReasonCode::Success);
    let r = on_a
        .publish(retained("p/kept", "v2", QoS::AtLeastOnce, 4))
        .await;
    assert_eq!(r, ReasonCode::Success);

    let b = common::nats::node(node_b()).await;
    let got: BTreeMap<_, _> = retained_on(b.addr, "p/#")
        .await
        .into_iter()
        .map(|(t, p)| (t, common::payload(&p).to_owned()))
        .collect();
    assert_eq!(
        got,
        BTreeMap::from([("p/kept".to_owned(), "v2".to_owned())]),
        "B's first client after the restart sees the bucket's state"
    );
    drop((a, b));
}

/// Two publishers, one per node, write one topic as fast as they can: every
/// node ends with the value the bucket ordered last.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_retained_writes_on_two_nodes_converge_to_the_buckets_last() {
    let nats = NatsCluster::start(1).await;
    let name = unique("race");
    let a = common::nats::node(Server::new(Options::default()).cluster(config(&nats, &name, "a")))
        .await;
    let b = common::nats::node(Server::new(Options::default()).cluster(config(&nats, &name, "b")))
        .await;
    let n = 100u16;
    let write = |addr, who: &'static str| async move {
        let mut c = Raw::connected(addr, v5(&format!("w-{who}"))).await;
        for i in 1..=n {
            let r = c
                .publish(retained("c/x", &format!("{who}{i}"), QoS::AtLeastOnce, i))
                .await;
            assert_eq!(r, ReasonCode::Success);
        }
    };
    tokio::join!(write(a.addr, "a"), write(b.addr, "b"));
    let probe = roost::cluster_engine::connect(&config(&nats, &name, "probe"))
        .await
        .unwrap();
    let last = probe
        .retained()
        .get("c.x")
        .await
        .unwrap()
        .expect("in the bucket");
    let last = [format!("a{n}"), format!("b{n}")]
        .into_iter()
        .find(|v| last.ends_with(v.as_bytes()))
        .expect("the bucket holds one writer's last value");
    until_retained(a.addr, "c/x", Some(&last)).await;
    until_retained(b.addr, "c/x", Some(&last)).await;
    drop((a, b));
}

/// The `$SYS/broker/cluster/...` values a subscriber on `addr` sees now
/// (retained, on subscribe), topic (after `cluster/`) to value.
async fn sys_cluster(addr: std::net::SocketAddr) -> BTreeMap<String, String> {
    retained_on(addr, "$SYS/broker/cluster/#")
        .await
        .into_iter()
        .map(|(t, p)| {
            let t = t.trim_start_matches("$SYS/broker/cluster/").to_owned();
            (t, common::payload(&p).to_owned())
        })
        .collect()
}

/// Waits (up to `within`) until `$SYS/broker/cluster/nodes` on `addr` says
/// `n`; returns the cluster values then.
async fn until_nodes(
    addr: std::net::SocketAddr,
    n: usize,
    within: Duration,
) -> BTreeMap<String, String> {
    let deadline = Instant::now() + within;
    loop {
        let sys = sys_cluster(addr).await;
        if sys.get("nodes").map(String::as_str) == Some(&n.to_string()) {
            return sys;
        }
        assert!(
            Instant::now() < deadline,
            "$SYS/broker/cluster on {addr}: {sys:?}, expected {n} nodes"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Three nodes; one stops cleanly (it deletes its registry record: gone at
/// once), then another loses its NATS connection (its record ages out
/// after the TTL): `$SYS/broker/cluster/nodes` on the first goes 3, 2, 1,
/// the per-node figures follow, and so does the Rust API's view.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_registry_counts_live_nodes_after_a_clean_stop_and_a_lost_connection() {
    let nats = NatsCluster::start(1).await;
    let name = unique("reg");
    let sys_every_second = || {
        Server::new(Options {
            sys_interval: Some(Duration::from_secs(1)),
            ..Options::default()
        })
    };
    let a = common::nats::node(sys_every_second().cluster(config(&nats, &name, "a"))).await;
    let b = common::nats::node(sys_every_second().cluster(config(&nats, &name, "b"))).await;
    // C reaches NATS through a relay the test cuts.
    let nats_addr = nats.urls()[0]
        .trim_start_matches("nats://")
        .parse()
        .unwrap();
    let relay = common::relay::Relay::start(nats_addr).await;
    let mut c_config = config(&nats, &name, "c");
    c_config.servers = vec![format!("nats://{}", relay.addr)];
    let c = common::nats::node(sys_every_second().cluster(c_config)).await;
    // A client on C, so its record counts one.
    let _on_c = Raw::connected(c.addr, v5("on-c")).await;

    let sys = until_nodes(a.addr, 3, SETTLE).await;
    assert_eq!(sys["node_name"], "a");
    for node in ["a", "b", "c"] {
        assert!(
            sys.contains_key(&format!("node/{node}/clients"))
                && sys.contains_key(&format!("node/{node}/subscriptions")),
            "{sys:?}"
        );
    }
    let deadline = Instant::now() + SETTLE;
    while sys_cluster(a.addr)
        .await
        .get("node/c/clients")
        .map(String::as_str)
        != Some("1")
    {
        assert!(Instant::now() < deadline, "C's client is counted");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A clean stop: gone well before the TTL.
    b.stop().await;
    let sys = until_nodes(a.addr, 2, roost::cluster_engine::TTL / 2).await;
    assert!(
        !sys.contains_key("node/b/clients"),
        "B's figures cleared: {sys:?}"
    );
    let live = |s: &TestBroker| {
        let cluster = s.stats.snapshot().cluster.expect("a cluster node");
        cluster
            .nodes
            .into_iter()
            .map(|n| n.name)
            .collect::<Vec<_>>()
    };
    assert_eq!(live(&a), ["a", "c"]);

    // C's NATS connection dies: C counts until its last record is a TTL old.
    relay.cut();
    let sys = until_nodes(
        a.addr,
        1,
        roost::cluster_engine::TTL + Duration::from_secs(10),
    )
    .await;
    assert!(
        !sys.contains_key("node/c/clients"),
        "C's figures cleared: {sys:?}"
    );
    assert_eq!(live(&a), ["a"]);
    drop((a, c));
}
