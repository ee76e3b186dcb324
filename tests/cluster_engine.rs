//! The cluster's engine connection (issue 19) against real NATS clusters:
//! Debian's `nats-server` 2.9, 1 or 3 processes with JetStream on loopback
//! ports (`common::nats`). Creating and binding the stream and buckets,
//! durable publishes through a NATS server's `kill -9` and through the
//! whole NATS cluster going down, and the refusals of a node that finds no
//! engine.

mod common;

use async_nats::HeaderMap;
use bytes::Bytes;
use common::nats::{NatsCluster, READY};
use roost::cluster_engine::{connect, ClusterError, Engine, Stored};
use roost::ClusterConfig;
use std::time::Duration;
use tokio::time::Instant;

fn config(nats: &NatsCluster, node: &str, replicas: u8) -> ClusterConfig {
    ClusterConfig {
        servers: nats.urls(),
        name: common::unique("t"),
        node: node.into(),
        replicas,
        timeout: Duration::from_secs(2),
        ..ClusterConfig::default()
    }
}

fn msg_id(id: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("Nats-Msg-Id", id);
    h
}

/// Publishes with the message id `id` until JetStream acknowledges it,
/// retrying (same id, so stored once) until `READY` has passed.
async fn publish_until_acked(engine: &Engine, subject: &str, id: &str, payload: &[u8]) -> Stored {
    let deadline = Instant::now() + READY;
    loop {
        match engine
            .publish_durable(
                subject.to_owned(),
                msg_id(id),
                Bytes::copy_from_slice(payload),
            )
            .await
        {
            Ok(stored) => return stored,
            Err(e) if Instant::now() < deadline => {
                eprintln!("{id}: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("{id} not acknowledged within {READY:?}: {e}"),
        }
    }
}

/// The stream's info, fresh from JetStream.
async fn stream_info(engine: &Engine, name: &str) -> async_nats::jetstream::stream::Info {
    engine
        .jetstream()
        .get_stream(name)
        .await
        .unwrap_or_else(|e| panic!("stream {name}: {e}"))
        .cached_info()
        .clone()
}

/// Every message in the stream, by sequence, checked against `acked`
/// (sequence, payload): each acknowledged message is there, in its place,
/// and nothing else is.
async fn assert_stream_holds(engine: &Engine, acked: &[(u64, Vec<u8>)]) {
    let info = stream_info(engine, &engine.config().stream()).await;
    assert_eq!(
        info.state.messages,
        acked.len() as u64,
        "the stream holds each acknowledged message once: {:?}",
        info.state
    );
    for (seq, payload) in acked {
        let m = engine
            .stream()
            .get_raw_message(*seq)
            .await
            .unwrap_or_else(|e| panic!("message {seq} acknowledged but not readable: {e}"));
        assert_eq!(&m.payload[..], &payload[..], "message {seq}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creates_r3_stream_and_buckets_then_binds_them_and_refuses_another_replica_count() {
    let nats = NatsCluster::start(3).await;
    let a = config(&nats, "a", 3);
    let engine = connect(&a).await.expect("connect to a 3-server cluster");

    let stream = stream_info(&engine, &a.stream()).await;
    assert_eq!(stream.config.num_replicas, 3);
    assert_eq!(stream.config.subjects, vec![format!("{}.d.>", a.name)]);
    assert_eq!(
        stream.config.retention,
        async_nats::jetstream::stream::RetentionPolicy::Limits
    );
    assert_eq!(
        stream.config.storage,
        async_nats::jetstream::stream::StorageType::File
    );
    assert_eq!(stream.config.max_age, Duration::from_secs(24 * 3600));
    assert_eq!(stream.config.duplicate_window, Duration::from_secs(120));
    let peers = stream.cluster.as_ref().expect("clustered stream");
    assert!(peers.leader.is_some(), "{peers:?}");
    assert_eq!(peers.replicas.len(), 2, "two followers: {peers:?}");
    for bucket in [a.sessions_bucket(), a.retained_bucket()] {
        let kv = stream_info(&engine, &format!("KV_{bucket}")).await;
        assert_eq!(kv.config.num_replicas, 3, "{bucket}");
        assert_eq!(kv.config.max_messages_per_subject, 1, "{bucket}: history 1");
    }
    // The buckets work.
    engine
        .sessions()
        .put("client-1", Bytes::from_static(b"s"))
        .await
        .unwrap();

    // A second node (and the first again) binds what is there.
    let b = ClusterConfig {
        node: "b".into(),
        ..a.clone()
    };
    let engine_b = connect(&b).await.expect("a second node binds");
    let again = stream_info(&engine_b, &b.stream()).await;
    assert_eq!(
        again.created, stream.created,
        "the same stream, not a new one"
    );
    assert_eq!(
        engine_b.sessions().get("client-1").await.unwrap(),
        Some(Bytes::from_static(b"s")),
        "the same session bucket"
    );
    connect(&a).await.expect("reconnecting binds too");

    // Node consumers: one per node, created once, bound after.
    let c1 = engine.node_consumer().await.unwrap();
    let c2 = engine.node_consumer().await.unwrap();
    assert_eq!(c1.cached_info().created, c2.cached_info().created);
    assert_eq!(c1.cached_info().name, a.consumer());
    let cb = engine_b.node_consumer().await.unwrap();
    assert_eq!(cb.cached_info().name, b.consumer());

    // Another replica count is refused, naming the stream and both counts.
    let r1 = ClusterConfig {
        replicas: 1,
        ..a.clone()
    };
    match connect(&r1).await {
        Err(e @ ClusterError::Replicas { .. }) => {
            let text = e.to_string();
            assert!(
                text.contains(&a.stream()) && text.contains("3 replica") && text.contains("for 1"),
                "{text}"
            );
        }
        other => panic!("replicas 1 against an R3 stream: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_one_server_of_three_keeps_acknowledging_and_loses_nothing() {
    let mut nats = NatsCluster::start(3).await;
    let cfg = config(&nats, "a", 3);
    let engine = connect(&cfg).await.unwrap();
    let subject = format!("{}.t.x", cfg.durable_prefix());
    let mut acked: Vec<(u64, Vec<u8>)> = Vec::new();
    let publish = |i: usize| {
        let payload = format!("message {i}").into_bytes();
        let (engine, subject) = (&engine, &subject);
        async move {
            let stored = publish_until_acked(engine, subject, &format!("m{i}"), &payload).await;
            (stored, payload)
        }
    };
    for i in 0..50 {
        let (stored, payload) = publish(i).await;
        acked.push((stored.sequence, payload));
    }

    // Kill the stream's leader: the worst server to lose.
    let leader = stream_info(&engine, &cfg.stream())
        .await
        .cluster
        .and_then(|c| c.leader)
        .expect("the stream has a leader");
    let victim: usize = leader.trim_start_matches('n').parse().unwrap();
    nats.kill(victim);
    let killed_at = Instant::now();
    for i in 50..150 {
        let (stored, payload) = publish(i).await;
        acked.push((stored.sequence, payload));
    }
    eprintln!(
        "100 publishes after killing the leader {leader} took {:?}",
        killed_at.elapsed()
    );

    nats.restart(victim).await;
    // Each acknowledged message has its own sequence: a retried publish
    // was stored once.
    let mut seqs: Vec<u64> = acked.iter().map(|(s, _)| *s).collect();
    seqs.dedup();
    assert_eq!(seqs.len(), 150, "sequences {seqs:?}");
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in order: {seqs:?}");
    assert_stream_holds(&engine, &acked).await;

    // The restarted server catches up with the others.
    let deadline = Instant::now() + READY;
    loop {
        let info = stream_info(&engine, &cfg.stream()).await;
        let cluster = info.cluster.expect("clustered");
        if cluster.replicas.len() == 2 && cluster.replicas.iter().all(|p| p.current && !p.offline) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "replicas not current after restart: {cluster:?}\n{}",
            nats.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_all_servers_down_publish_fails_in_bounded_time_and_recovers() {
    let mut nats = NatsCluster::start(3).await;
    let cfg = config(&nats, "a", 3);
    let engine = connect(&cfg).await.unwrap();
    let subject = format!("{}.t.y", cfg.durable_prefix());
    let before = publish_until_acked(&engine, &subject, "before", b"before").await;

    nats.kill_all();
    for i in 0..3 {
        let started = Instant::now();
        let outcome = engine
            .publish_durable(
                subject.clone(),
                msg_id(&format!("down{i}")),
                Bytes::from_static(b"lost"),
            )
            .await;
        let took = started.elapsed();
        eprintln!("publish {i} with NATS down: {took:?} {outcome:?}");
        match outcome {
            Err(e @ ClusterError::Publish { .. }) => {
                assert!(e.to_string().contains(&subject), "{e}");
            }
            other => panic!("publish with every NATS server down: {other:?}"),
        }
        // The send and the acknowledgement each wait up to the timeout.
        assert!(
            took <= cfg.timeout * 2 + Duration::from_secs(1),
            "took {took:?}"
        );
    }

    nats.restart_all().await;
    let after = publish_until_acked(&engine, &subject, "after", b"after").await;
    assert!(after.sequence > before.sequence);
    // The one acknowledged before the outage is still there, and so is the
    // one after. A publish that was refused may still have been stored
    // (the client may send what it buffered once it reconnects: "not
    // acknowledged" is "unknown", which is why a retry keeps its message
    // id); nothing else is.
    let info = stream_info(&engine, &cfg.stream()).await;
    let mut stored = Vec::new();
    for seq in info.state.first_sequence..=info.state.last_sequence {
        if let Ok(m) = engine.stream().get_raw_message(seq).await {
            stored.push(m.payload);
        }
    }
    assert_eq!(stored.first().map(|b| &b[..]), Some(&b"before"[..]));
    assert!(stored.iter().any(|b| &b[..] == b"after"), "{stored:?}");
    assert!(
        stored
            .iter()
            .all(|b| [&b"before"[..], b"after", b"lost"].contains(&&b[..])),
        "{stored:?}"
    );
    eprintln!("stored across the outage: {stored:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_to_start_without_a_reachable_server() {
    // Ports nothing listens on.
    let dead: Vec<String> = (0..2)
        .map(|_| {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("nats://{}", l.local_addr().unwrap())
        })
        .collect();
    let cfg = ClusterConfig {
        servers: dead.clone(),
        node: "a".into(),
        timeout: Duration::from_secs(2),
        ..ClusterConfig::default()
    };
    let started = Instant::now();
    match connect(&cfg).await {
        Err(e @ ClusterError::Unreachable { .. }) => {
            let text = e.to_string();
            assert!(dead.iter().all(|s| text.contains(s.as_str())), "{text}");
        }
        other => panic!("no server: {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_to_start_on_a_nats_without_jetstream() {
    let nats = NatsCluster::without_jetstream().await;
    let cfg = config(&nats, "a", 1);
    match connect(&cfg).await {
        Err(e @ ClusterError::NoJetStream { .. }) => {
            let text = e.to_string();
            assert!(text.contains(&nats.urls()[0]), "{text}");
            assert!(text.contains("JetStream"), "{text}");
        }
        other => panic!("NATS without JetStream: {other:?}"),
    }
}

#[tokio::test]
async fn refuses_an_invalid_configuration_before_connecting() {
    let cfg = ClusterConfig {
        servers: vec!["nats://127.0.0.1:1".into()],
        node: "a.b".into(),
        ..ClusterConfig::default()
    };
    assert!(matches!(connect(&cfg).await, Err(ClusterError::Config(_))));
}

/// Durable publish rate and acknowledgement latency against a 3-server
/// R3 cluster on this machine: `cargo test --release --features cluster
/// --test cluster_engine -- --ignored --nocapture measure`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a test"]
async fn measure_durable_publish_r3() {
    let nats = NatsCluster::start(3).await;
    let cfg = config(&nats, "a", 3);
    let engine = std::sync::Arc::new(connect(&cfg).await.unwrap());
    let subject = format!("{}.bench.t", cfg.durable_prefix());
    let payload = Bytes::from(vec![b'x'; 256]);
    // Warm up.
    for i in 0..200 {
        publish_until_acked(&engine, &subject, &format!("w{i}"), &payload).await;
    }
    for in_flight in [1usize, 16, 128] {
        let total = if in_flight == 1 { 2_000 } else { 20_000 };
        let started = Instant::now();
        let mut tasks = Vec::new();
        for t in 0..in_flight {
            let (engine, subject, payload) = (engine.clone(), subject.clone(), payload.clone());
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::with_capacity(total / in_flight);
                for i in 0..total / in_flight {
                    let t0 = Instant::now();
                    engine
                        .publish_durable(
                            subject.clone(),
                            msg_id(&format!("c{in_flight}-{t}-{i}")),
                            payload.clone(),
                        )
                        .await
                        .unwrap();
                    lat.push(t0.elapsed());
                }
                lat
            }));
        }
        let mut lat = Vec::new();
        for t in tasks {
            lat.extend(t.await.unwrap());
        }
        let secs = started.elapsed().as_secs_f64();
        lat.sort();
        let q = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
        println!(
            "R3, 256 B, {in_flight:>3} in flight: {:>6.0} msg/s, ack p50 {:?} p99 {:?} max {:?} ({} msgs)",
            lat.len() as f64 / secs,
            q(0.50),
            q(0.99),
            lat[lat.len() - 1],
            lat.len()
        );
    }
}
