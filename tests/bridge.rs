//! Bridges between two real brokers in this process, over real sockets:
//! messages forwarded and received at every QoS with prefixes, loops
//! prevented, the state topic, link loss and the stats.

mod common;
use common::delivery::{finish, settled, take};
use common::*;
use roost::bridge::{Bridge, Protocol, Remote, Rule};
use roost::codec::{ProtocolVersion, QoS, ReasonCode};
use roost::{Options, Server};
use std::time::Duration;

/// An edge broker bridged to `remote` with `bridge`.
async fn edge(bridge: Bridge) -> TestBroker {
    let server = Server::new(Options::default()).bridge(bridge).unwrap();
    TestBroker::with_server(server).await
}

fn to(remote: &TestBroker) -> Remote {
    Remote::parse(&format!("mqtt://{}", remote.addr)).unwrap()
}

fn cloud(remote: &TestBroker, protocol: Protocol) -> Bridge {
    Bridge::new("cloud", to(remote))
        .protocol(protocol)
        .client_id(unique("gw"))
        .reconnect(Duration::from_millis(50), Duration::from_millis(200))
        .forward(Rule::new("devices/#", QoS::ExactlyOnce).remote_prefix("site-1/"))
        .subscribe(Rule::new("commands/#", QoS::ExactlyOnce).remote_prefix("site-1/"))
}

/// Waits until the bridge's stats say it is connected.
async fn connected(b: &TestBroker) {
    settled(b, |s| s.connected).await;
}

async fn both_ways(protocol: Protocol) {
    let remote = TestBroker::start().await;
    let edge = edge(cloud(&remote, protocol)).await;
    connected(&edge).await;
    let mut up = Raw::connected(remote.addr, v5("cloud-app")).await;
    up.subscribe(1, "site-1/devices/#", QoS::ExactlyOnce).await;
    let mut device = Raw::connected(edge.addr, v5("device")).await;
    device.subscribe(1, "commands/#", QoS::ExactlyOnce).await;
    // Give the bridge's remote SUBSCRIBE time to land.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
        .into_iter()
        .enumerate()
    {
        let pid = i as u16 + 10;
        let text = format!("up {qos:?}");
        assert!(device
            .publish(publish("devices/t1", &text, qos, pid))
            .await
            .is_success());
        let m = up.recv_publish().await;
        assert_eq!(
            (m.topic.as_str(), payload(&m), m.qos_pid.qos()),
            ("site-1/devices/t1", text.as_str(), qos)
        );
        up.ack(&m).await;

        let text = format!("down {qos:?}");
        assert!(up
            .publish(publish("site-1/commands/reboot", &text, qos, pid))
            .await
            .is_success());
        let m = device.recv_publish().await;
        assert_eq!(
            (m.topic.as_str(), payload(&m), m.qos_pid.qos()),
            ("commands/reboot", text.as_str(), qos)
        );
        device.ack(&m).await;
    }
    // Nothing echoes: the device's command is not sent back up, the
    // cloud's telemetry not back down.
    up.expect_nothing().await;
    device.expect_nothing().await;
    let s = &edge.stats.snapshot().bridges[0];
    assert_eq!((s.forwarded, s.received, s.inflight), (3, 3, 0), "{s:?}");
    edge.stop().await;
    remote.stop().await;
}

#[tokio::test]
async fn messages_cross_both_ways_at_every_qos_over_5() {
    both_ways(Protocol::V5).await;
}

#[tokio::test]
async fn messages_cross_both_ways_at_every_qos_over_3_1_1() {
    both_ways(Protocol::V3_1_1).await;
}

#[tokio::test]
async fn network_clients_cannot_take_a_bridge_session() {
    let b = TestBroker::start().await;
    let (_, ack) = Raw::connect(b.addr, v5("$bridge/cloud")).await;
    assert_eq!(ack.reason, ReasonCode::ClientIdentifierNotValid);
    let (_, ack) = Raw::connect(b.addr, connect(ProtocolVersion::V3_1_1, "$bridge/x", true)).await;
    assert!(!ack.reason.is_success());
}

/// A broker serving on a chosen address, stopped and restarted at will
/// (the bridge's remote must come back where the bridge looks for it).
struct Upstream {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<Result<(), roost::ServeError>>>,
}

impl Upstream {
    /// An address nothing listens on yet.
    fn vacant() -> std::net::SocketAddr {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    }

    async fn start(addr: std::net::SocketAddr, server: Server) -> Upstream {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let handle = tokio::spawn(server.tcp(listener).serve(async {
            let _ = rx.await;
        }));
        Upstream {
            stop: Some(tx),
            handle: Some(handle),
        }
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.handle.take().unwrap().await.unwrap().unwrap();
    }
}

fn remote_at(addr: std::net::SocketAddr) -> Remote {
    Remote::parse(&format!("mqtt://{addr}")).unwrap()
}

#[tokio::test]
async fn messages_wait_on_disk_while_the_link_is_down_and_go_in_order_when_it_returns() {
    let addr = Upstream::vacant();
    let dir = tempfile::tempdir().unwrap();
    let store = roost::storage::RedbStore::open(dir.path().join("edge.redb")).unwrap();
    let bridge = Bridge::new("cloud", remote_at(addr))
        .reconnect(Duration::from_millis(20), Duration::from_millis(100))
        .forward(Rule::new("devices/#", QoS::ExactlyOnce));
    let edge = TestBroker::with_server(
        Server::new(Options::default())
            .store(store)
            .bridge(bridge)
            .unwrap(),
    )
    .await;
    let mut device = Raw::connected(edge.addr, v5("device")).await;
    for i in 0..300u16 {
        let qos = if i % 2 == 0 {
            QoS::AtLeastOnce
        } else {
            QoS::ExactlyOnce
        };
        let r = device
            .publish(publish("devices/d", &i.to_string(), qos, i % 1000 + 1))
            .await;
        assert!(r.is_success(), "{i}: {r:?}");
    }
    // The queue length is sampled about once a second.
    let s = settled(&edge, |s| s.queued == 300).await;
    assert!(!s.connected);
    assert!(
        s.last_error
            .as_deref()
            .is_some_and(|e| e.contains("refused")),
        "{s:?}"
    );

    // The remote comes up with a subscriber already there.
    let remote = Upstream::start(addr, Server::new(Options::default())).await;
    let mut up = Raw::connected(addr, v5_session("cloud-app", false, 3600)).await;
    up.subscribe(1, "devices/#", QoS::ExactlyOnce).await;
    let got: Vec<u16> = take(&mut up, 300)
        .await
        .iter()
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(got, (0..300).collect::<Vec<_>>(), "all, once, in order");
    finish(&mut up).await;
    let s = &edge.stats.snapshot().bridges[0];
    assert_eq!((s.forwarded, s.inflight), (300, 0), "{s:?}");
    edge.stop().await;
    remote.stop().await;
}

#[tokio::test]
async fn a_full_bridge_queue_refuses_publishers_and_counts_it() {
    let bridge = Bridge::new("cloud", remote_at(Upstream::vacant()))
        .max_queued_messages(5)
        .forward(Rule::new("devices/#", QoS::AtLeastOnce));
    let edge = edge(bridge).await;
    let mut device = Raw::connected(edge.addr, v5("device")).await;
    let mut reasons = Vec::new();
    for i in 1..=8u16 {
        reasons.push(
            device
                .publish(publish("devices/d", "x", QoS::AtLeastOnce, i))
                .await,
        );
    }
    // Five in the queue; the bridge was the only recipient of the rest.
    assert_eq!(
        reasons,
        [
            [ReasonCode::Success; 5].as_slice(),
            &[ReasonCode::QuotaExceeded; 3]
        ]
        .concat()
    );
    let s = settled(&edge, |s| s.queued == 5).await;
    assert_eq!(s.refused, 3, "{s:?}");
    edge.stop().await;
}

#[tokio::test]
async fn the_state_topic_says_1_while_connected_and_0_after() {
    let remote = TestBroker::start().await;
    let mut watcher = Raw::connected(remote.addr, v5("watcher")).await;
    watcher.subscribe(1, "gw/state", QoS::AtLeastOnce).await;
    let edge = edge(cloud(&remote, Protocol::V5).state_topic("gw/state")).await;
    let m = watcher.recv_publish().await;
    assert_eq!(
        (payload(&m), m.retain),
        ("1", false),
        "live, not from the store"
    );
    watcher.ack(&m).await;
    edge.stop().await;
    let m = watcher.recv_publish().await;
    assert_eq!(payload(&m), "0");
    watcher.ack(&m).await;
    // Retained for whoever looks later.
    let mut late = Raw::connected(remote.addr, v5("late")).await;
    late.subscribe(1, "gw/state", QoS::AtLeastOnce).await;
    let m = late.recv_publish().await;
    assert_eq!((payload(&m), m.retain), ("0", true));
    remote.stop().await;
}

#[tokio::test]
async fn a_remote_with_lower_limits_gets_what_fits_and_nothing_blocks_the_queue() {
    // The remote takes QoS 1 at most and packets of 200 bytes at most.
    let mut opts = Options::default();
    opts.capabilities.maximum_qos = QoS::AtLeastOnce;
    opts.limits.maximum_packet_size = 200;
    let remote = TestBroker::with(opts).await;
    let mut up = Raw::connected(remote.addr, v5("cloud-app")).await;
    up.subscribe(1, "site-1/devices/#", QoS::AtLeastOnce).await;
    let edge = edge(cloud(&remote, Protocol::V5)).await;
    connected(&edge).await;
    let mut device = Raw::connected(edge.addr, v5("device")).await;
    let big = "x".repeat(300);
    for (i, text) in ["small-1", big.as_str(), "small-2"].into_iter().enumerate() {
        let r = device
            .publish(publish("devices/t", text, QoS::ExactlyOnce, i as u16 + 1))
            .await;
        assert!(r.is_success(), "{r:?}");
    }
    // The QoS 2 messages arrive at QoS 1; the one too large for the remote
    // is dropped and counted instead of closing the link at every resend.
    let got = take(&mut up, 2).await;
    assert_eq!(got, ["small-1", "small-2"]);
    let s = settled(&edge, |s| s.inflight == 0 && s.queued == 0).await;
    assert_eq!((s.forwarded, s.dropped, s.reconnects), (2, 1, 0), "{s:?}");
    edge.stop().await;
    remote.stop().await;
}

#[tokio::test]
async fn the_event_hook_hears_the_bridge_connect_and_disconnect() {
    use std::sync::{Arc, Mutex};
    #[derive(Default, Clone)]
    struct Seen(Arc<Mutex<Vec<String>>>);
    impl roost::hooks::EventHook for Seen {
        fn on_bridge_connected(&self, name: &str) {
            self.0.lock().unwrap().push(format!("up {name}"));
        }
        fn on_bridge_disconnected(&self, name: &str, _reason: &str) {
            self.0.lock().unwrap().push(format!("down {name}"));
        }
    }
    let seen = Seen::default();
    let remote = TestBroker::start().await;
    let server = Server::new(Options::default())
        .event_hook(seen.clone())
        .bridge(cloud(&remote, Protocol::V5))
        .unwrap();
    let edge = TestBroker::with_server(server).await;
    connected(&edge).await;
    remote.stop().await;
    settled(&edge, |s| !s.connected).await;
    assert_eq!(*seen.0.lock().unwrap(), ["up cloud", "down cloud"]);
    edge.stop().await;
}

/// The edge publishes each bridge's figures under
/// `$SYS/broker/bridge/<name>/`: what was forwarded while the remote was
/// up, then the link down, retried, and why.
#[tokio::test]
async fn sys_topics_show_the_bridge_up_and_down() {
    use std::collections::HashMap;
    let remote = TestBroker::start().await;
    let server = Server::new(Options {
        sys_interval: Some(Duration::from_secs(1)),
        ..Options::default()
    })
    .bridge(cloud(&remote, Protocol::V5))
    .unwrap();
    let edge = TestBroker::with_server(server).await;
    connected(&edge).await;
    let mut up = Raw::connected(remote.addr, v5("cloud-app")).await;
    up.subscribe(1, "site-1/devices/#", QoS::AtLeastOnce).await;
    let mut device = Raw::connected(edge.addr, v5("device")).await;
    for i in 1..=2u16 {
        let r = device
            .publish(publish("devices/t1", "x", QoS::AtLeastOnce, i))
            .await;
        assert!(r.is_success(), "{r:?}");
        let m = up.recv_publish().await;
        up.ack(&m).await;
    }

    let mut sys = Raw::connected(edge.addr, v5("sys-watcher")).await;
    sys.subscribe(1, "$SYS/broker/bridge/#", QoS::AtMostOnce)
        .await;
    let mut figures = HashMap::<String, String>::new();
    // The latest figures once `done` holds for them (published every
    // second); panics with them after a while.
    async fn until(
        sys: &mut Raw,
        figures: &mut HashMap<String, String>,
        done: impl Fn(&HashMap<String, String>) -> bool,
    ) {
        let deadline = tokio::time::Instant::now() + 3 * WAIT;
        while !done(figures) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "not seen: {figures:?}"
            );
            if let Some(roost::codec::Packet::Publish(p)) = sys.recv_within(WAIT).await {
                let figure = p
                    .topic
                    .strip_prefix("$SYS/broker/bridge/cloud/")
                    .unwrap_or_else(|| panic!("{}", p.topic));
                figures.insert(figure.to_owned(), payload(&p).to_owned());
            }
        }
    }
    let is =
        |f: &HashMap<String, String>, k: &str, v: &str| f.get(k).map(String::as_str) == Some(v);
    until(&mut sys, &mut figures, |f| {
        is(f, "connected", "1") && is(f, "forwarded", "2") && is(f, "inflight", "0")
    })
    .await;
    for (figure, value) in [
        ("received", "0"),
        ("refused", "0"),
        ("dropped", "0"),
        ("reconnects", "0"),
    ] {
        assert_eq!(figures[figure], value, "{figure}: {figures:?}");
    }
    assert!(figures["queued"].parse::<u64>().is_ok(), "{figures:?}");
    // No error yet: an empty value, live only (never retained).
    until(&mut sys, &mut figures, |f| is(f, "last_error", "")).await;

    up.disconnect().await;
    remote.stop().await;
    until(&mut sys, &mut figures, |f| {
        is(f, "connected", "0")
            && f.get("reconnects")
                .and_then(|r| r.parse::<u64>().ok())
                .is_some_and(|r| r >= 1)
            && f.get("last_error").is_some_and(|e| !e.is_empty())
    })
    .await;
    assert_eq!(figures["forwarded"], "2", "{figures:?}");
    // Retained for whoever looks later, all nine.
    let mut late = Raw::connected(edge.addr, v5("sys-late")).await;
    late.subscribe(1, "$SYS/broker/bridge/cloud/+", QoS::AtMostOnce)
        .await;
    // (A live update may come meanwhile: only the retained ones count.)
    let mut retained = std::collections::BTreeSet::new();
    while retained.len() < 9 {
        match late.recv_within(WAIT).await {
            Some(roost::codec::Packet::Publish(p)) if p.retain => {
                retained.insert(p.topic.to_string());
            }
            Some(_) => {}
            None => break,
        }
    }
    let all = [
        "connected",
        "dropped",
        "forwarded",
        "inflight",
        "last_error",
        "queued",
        "received",
        "reconnects",
        "refused",
    ];
    assert_eq!(
        retained,
        all.iter()
            .map(|f| format!("$SYS/broker/bridge/cloud/{f}"))
            .collect(),
    );
    device.disconnect().await;
    edge.stop().await;
}

/// A message from the remote that the edge cannot store (its store's writes
/// fail) is not acknowledged to the remote: the bridge reconnects so the
/// remote sends it again, and it arrives once the store is back.
#[tokio::test]
async fn an_inbound_message_the_edge_cannot_store_is_not_acknowledged_and_comes_again() {
    use roost::storage::FaultyStore;
    let remote = TestBroker::start().await;
    let store = FaultyStore::new(Durable::default());
    let faults = store.handle();
    let server = Server::new(Options::default())
        .store(store)
        .bridge(cloud(&remote, Protocol::V5))
        .unwrap();
    let edge = TestBroker::with_server(server).await;
    connected(&edge).await;
    // A persistent subscriber here: its copy must be stored.
    let mut device = Raw::connected(edge.addr, v5_session("device", false, 3600)).await;
    device.subscribe(1, "commands/#", QoS::AtLeastOnce).await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    faults.set_failing(true);
    let mut cloud_app = Raw::connected(remote.addr, v5("cloud-app")).await;
    let command = |text: &str, pid| {
        roost::codec::Packet::Publish(publish(
            "site-1/commands/reboot",
            text,
            QoS::AtLeastOnce,
            pid,
        ))
    };
    // The first one's write fails and is retried: its acknowledgement
    // waits for it.
    cloud_app.send(command("first", 1)).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !edge.stats.snapshot().storage_failing {
        assert!(
            std::time::Instant::now() < deadline,
            "the store never failed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The next is refused here (0x97, queued behind the first's held
    // acknowledgement): the bridge will hang up to have it sent again.
    cloud_app.send(command("second", 2)).await;
    tokio::time::sleep(QUIET).await;
    // Neither is acknowledged to the remote while the store fails (the
    // first may already be delivered to the connected device).
    assert_eq!(edge.stats.snapshot().bridges[0].received, 0);

    faults.set_failing(false);
    let mut got = take(&mut device, 2).await;
    got.sort();
    assert_eq!(got, ["first", "second"]);
    let s = settled(&edge, |s| s.received == 2 && s.connected).await;
    assert!(s.reconnects >= 1, "the refusal made it reconnect: {s:?}");
    edge.stop().await;
    remote.stop().await;
}

/// Retain flags cross as published, both ways: a retained message here is
/// retained at the remote, and one from the remote is retained here.
#[tokio::test]
async fn retained_messages_stay_retained_across_the_bridge() {
    let remote = TestBroker::start().await;
    let edge = edge(cloud(&remote, Protocol::V5)).await;
    connected(&edge).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut device = Raw::connected(edge.addr, v5("device")).await;
    assert!(device
        .publish(retained("devices/t1/config", "v1", QoS::AtLeastOnce, 1))
        .await
        .is_success());
    let mut cloud_app = Raw::connected(remote.addr, v5("cloud-app")).await;
    assert!(cloud_app
        .publish(retained("site-1/commands/mode", "eco", QoS::AtLeastOnce, 1))
        .await
        .is_success());
    // Late subscribers on either side get them as retained messages.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut late = Raw::connected(remote.addr, v5(&unique("late"))).await;
        late.subscribe(1, "site-1/devices/#", QoS::AtLeastOnce)
            .await;
        if let Some(roost::codec::Packet::Publish(m)) = late.recv_within(QUIET).await {
            assert_eq!(
                (m.topic.as_str(), payload(&m), m.retain),
                ("site-1/devices/t1/config", "v1", true)
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not retained at the remote"
        );
    }
    loop {
        let mut late = Raw::connected(edge.addr, v5(&unique("late"))).await;
        late.subscribe(1, "commands/#", QoS::AtLeastOnce).await;
        if let Some(roost::codec::Packet::Publish(m)) = late.recv_within(QUIET).await {
            assert_eq!(
                (m.topic.as_str(), payload(&m), m.retain),
                ("commands/mode", "eco", true)
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not retained at the edge"
        );
    }
    edge.stop().await;
    remote.stop().await;
}
