//! Bridges to real peers: Debian's `mosquitto` as the remote (over TCP
//! with MQTT 5.0 and 3.1.1, over TLS with client certificates, a CA that
//! does not fit, loops with 3.1.1, a restart that must keep the bridge's
//! session), and a second roost as the remote over TLS, WebSocket and
//! WSS. The edge is an in-process roost; the clients at the remote are
//! the raw client from `tests/common`.
//!
//! mosquitto must be installed (`.ci/run` installs it); without it the
//! mosquitto tests fail, saying so.

mod common;
use common::delivery::{finish, settled, take};
use common::mosquitto::{example_cert, Mosquitto};
use common::*;
use roost::bridge::{Bridge, BridgeTls, Protocol, Remote, Rule};
use roost::codec::{Packet, PubResp, QoS, QosPid};
use roost::{ClientAuth, Options, Server, TlsConfig, WsConfig};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

/// How long the bridge may take to (re)connect, or its stats to settle,
/// on a loaded machine.
const LINK_WAIT: Duration = Duration::from_secs(15);

/// An edge broker (in memory) with `bridge`.
async fn edge(bridge: Bridge) -> TestBroker {
    TestBroker::with_server(Server::new(Options::default()).bridge(bridge).unwrap()).await
}

fn remote(url: String) -> Remote {
    Remote::parse(&url).unwrap_or_else(|e| panic!("{url}: {e}"))
}

/// TLS as the example certificates make it: trust `certs/ca.pem`, present
/// `certs/client.pem`, expect `localhost` in the server's certificate.
fn example_tls() -> BridgeTls {
    BridgeTls::new(example_cert("ca.pem"))
        .client_cert(example_cert("client.pem"), example_cert("client.key"))
        .server_name("localhost")
}

/// A bridge named `cloud` carrying `devices/#` up to `site-1/devices/#`
/// and `site-1/commands/#` down to `commands/#`, at QoS 2, reconnecting
/// quickly, announcing itself on `state`.
fn cloud(to: Remote, protocol: Protocol, state: &str) -> Bridge {
    Bridge::new("cloud", to)
        .protocol(protocol)
        .client_id(unique("gw-"))
        .reconnect(Duration::from_millis(50), Duration::from_millis(500))
        .state_topic(state)
        .forward(Rule::new("devices/#", QoS::ExactlyOnce).remote_prefix("site-1/"))
        .subscribe(Rule::new("commands/#", QoS::ExactlyOnce).remote_prefix("site-1/"))
}

/// Waits for the live `1` the bridge publishes on `state` once connected.
/// The remote handles the bridge's SUBSCRIBE before that PUBLISH (the link
/// sends it first on the same connection), so from here on what is
/// published at the remote reaches the bridge.
async fn live(watcher: &mut Raw, state: &str, edge: &TestBroker) {
    let deadline = tokio::time::Instant::now() + LINK_WAIT;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match watcher.recv_within(left).await {
            Some(Packet::Publish(p)) => {
                watcher.ack(&p).await;
                if p.topic.as_str() == state && payload(&p) == "1" {
                    return;
                }
            }
            Some(other) => panic!("expected the state topic, got {other:?}"),
            None => panic!(
                "no 1 on {state} within {LINK_WAIT:?}: the bridge did not connect: {:?}",
                edge.stats.snapshot().bridges
            ),
        }
    }
}

/// A client at the remote watching `state` (subscribed before the bridge
/// starts, so it sees the live `1`).
async fn watcher(addr: SocketAddr, state: &str) -> Raw {
    let mut w = Raw::connected(addr, v5(&unique("watcher-"))).await;
    w.subscribe(1, state, QoS::AtLeastOnce).await;
    w
}

/// One message at each QoS each way (topics, payloads and QoS as sent,
/// prefixes mapped), then 50 QoS 2 messages each way: every one once, in
/// order. `far` is the remote's plain TCP address, for the clients there.
async fn every_qos_both_ways(to: Remote, far: SocketAddr, protocol: Protocol) {
    let state = unique("state/gw-");
    let mut w = watcher(far, &state).await;
    let version = protocol.version();
    let mut up = Raw::connected(far, connect(version, &unique("cloud-app-"), true)).await;
    up.subscribe(1, "site-1/devices/#", QoS::ExactlyOnce).await;
    let bridge = cloud(to, protocol, &state);
    let edge = edge(bridge).await;
    let mut device = Raw::connected(edge.addr, v5("device")).await;
    device.subscribe(1, "commands/#", QoS::ExactlyOnce).await;
    live(&mut w, &state, &edge).await;

    for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
        .into_iter()
        .enumerate()
    {
        let pid = i as u16 + 10;
        let text = format!("up {qos:?}");
        let r = device.publish(publish("devices/t1", &text, qos, pid)).await;
        assert!(r.is_success(), "{r:?}");
        let m = up.recv_publish().await;
        assert_eq!(
            (m.topic.as_str(), payload(&m), m.qos_pid.qos()),
            ("site-1/devices/t1", text.as_str(), qos)
        );
        up.ack(&m).await;

        let text = format!("down {qos:?}");
        let r = up
            .publish(publish("site-1/commands/reboot", &text, qos, pid))
            .await;
        assert!(r.is_success(), "{r:?}");
        let m = device.recv_publish().await;
        assert_eq!(
            (m.topic.as_str(), payload(&m), m.qos_pid.qos()),
            ("commands/reboot", text.as_str(), qos)
        );
        device.ack(&m).await;
    }

    // A burst of QoS 2 each way: the publishers do not wait for delivery,
    // so many flows are open at once on every hop.
    let burst: Vec<String> = (0..50).map(|i| i.to_string()).collect();
    for (i, text) in burst.iter().enumerate() {
        let pid = 100 + i as u16;
        let r = device
            .publish(publish("devices/burst", text, QoS::ExactlyOnce, pid))
            .await;
        assert!(r.is_success(), "{r:?}");
    }
    assert_eq!(take(&mut up, 50).await, burst, "up: each once, in order");
    finish(&mut up).await;
    for (i, text) in burst.iter().enumerate() {
        let pid = 100 + i as u16;
        let r = up
            .publish(publish(
                "site-1/commands/burst",
                text,
                QoS::ExactlyOnce,
                pid,
            ))
            .await;
        assert!(r.is_success(), "{r:?}");
    }
    assert_eq!(
        take(&mut device, 50).await,
        burst,
        "down: each once, in order"
    );
    finish(&mut device).await;

    let s = settled(&edge, |s| s.inflight == 0 && s.forwarded == 53).await;
    assert_eq!((s.received, s.dropped, s.reconnects), (53, 0, 0), "{s:?}");
    edge.stop().await;
}

#[tokio::test]
async fn mosquitto_over_tcp_with_5_takes_every_qos_both_ways_once_and_in_order() {
    let m = Mosquitto::start().await;
    let to = remote(format!("mqtt://{}", m.tcp));
    every_qos_both_ways(to, m.tcp, Protocol::V5).await;
}

#[tokio::test]
async fn mosquitto_over_tcp_with_3_1_1_takes_every_qos_both_ways_once_and_in_order() {
    let m = Mosquitto::start().await;
    let to = remote(format!("mqtt://{}", m.tcp));
    every_qos_both_ways(to, m.tcp, Protocol::V3_1_1).await;
}

/// A 3.1.1 server cannot announce how many QoS 2 messages it takes at once
/// (5.0 has Receive Maximum). mosquitto takes `max_inflight_messages` (20)
/// and answers the next with PUBREC "Quota exceeded", which 3.1.1 carries
/// as a plain PUBREC: the bridge releases the message, gets its PUBCOMP,
/// counts it forwarded, and mosquitto has dropped it. With the default
/// `max_inflight` of 5.0 (100) a 3.1.1 bridge with a backlog would lose
/// all but 20 of its first 100 QoS 2 messages, so 3.1.1's default is 20.
/// Made certain here by queueing 50 while mosquitto is down: they leave
/// together when it is back.
#[tokio::test]
async fn a_3_1_1_bridge_sends_mosquitto_no_more_qos_2_messages_than_it_takes() {
    let mut m = Mosquitto::start().await;
    let mut up = Raw::connected(m.tcp, v311_session("cloud-app")).await;
    up.subscribe(1, "site-1/devices/#", QoS::ExactlyOnce).await;
    drop(up);
    m.terminate().await;
    let edge = edge(cloud(
        remote(format!("mqtt://{}", m.tcp)),
        Protocol::V3_1_1,
        "state/gw",
    ))
    .await;
    let mut device = Raw::connected(edge.addr, v5("device")).await;
    let burst: Vec<String> = (0..50).map(|i| i.to_string()).collect();
    for (i, text) in burst.iter().enumerate() {
        let r = device
            .publish(publish(
                "devices/burst",
                text,
                QoS::ExactlyOnce,
                i as u16 + 1,
            ))
            .await;
        assert!(r.is_success(), "{r:?}");
    }
    m.restart().await;
    let s = settled(&edge, |s| s.forwarded == 50).await;
    assert_eq!(s.inflight, 0, "{s:?}");
    let mut up = Raw::connected(m.tcp, v311_session("cloud-app")).await;
    let mut got = Vec::new();
    while let Some(p) = up.recv_within(Duration::from_secs(2)).await {
        match p {
            Packet::Publish(p) => {
                got.push(payload(&p).to_owned());
                if let QosPid::ExactlyOnce(pid) = p.qos_pid {
                    up.send(Packet::PubRec(PubResp::new(pid))).await;
                }
            }
            Packet::PubRel(r) => up.send(Packet::PubComp(PubResp::new(r.packet_id))).await,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        got,
        burst,
        "forwarded 50, mosquitto has {}; its log says:\n{}",
        got.len(),
        m.log()
            .lines()
            .filter(|l| l.contains("rc151"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    edge.stop().await;
}

/// A 3.1.1 CONNECT keeping its session (Clean Session 0).
fn v311_session(client_id: &str) -> roost::codec::Connect {
    connect(roost::codec::ProtocolVersion::V3_1_1, client_id, false)
}

#[tokio::test]
async fn mosquitto_over_tls_with_a_client_certificate_takes_messages_both_ways() {
    let m = Mosquitto::start().await;
    // By address, the name checked being `localhost` (server_name).
    let to = remote(format!("mqtts://{}", m.tls));
    let bridge = cloud(to, Protocol::V5, "state/tls").tls(example_tls());
    let mut w = watcher(m.tcp, "state/tls").await;
    let mut up = Raw::connected(m.tcp, v5("cloud-app")).await;
    up.subscribe(1, "site-1/devices/#", QoS::AtLeastOnce).await;
    let edge = edge(bridge).await;
    let mut device = Raw::connected(edge.addr, v5("device")).await;
    device.subscribe(1, "commands/#", QoS::AtLeastOnce).await;
    live(&mut w, "state/tls", &edge).await;

    let r = device
        .publish(publish("devices/t1", "over tls", QoS::AtLeastOnce, 1))
        .await;
    assert!(r.is_success(), "{r:?}");
    let m1 = up.recv_publish().await;
    assert_eq!(
        (m1.topic.as_str(), payload(&m1)),
        ("site-1/devices/t1", "over tls")
    );
    up.ack(&m1).await;
    let r = up
        .publish(publish("site-1/commands/go", "back", QoS::AtLeastOnce, 1))
        .await;
    assert!(r.is_success(), "{r:?}");
    let m2 = device.recv_publish().await;
    assert_eq!((m2.topic.as_str(), payload(&m2)), ("commands/go", "back"));
    device.ack(&m2).await;
    let s = settled(&edge, |s| s.forwarded == 1 && s.received == 1).await;
    assert!(s.connected && s.last_error.is_none(), "{s:?}");
    edge.stop().await;
}

/// A CA that signed nothing mosquitto holds, made for the test.
fn unrelated_ca(dir: &std::path::Path) -> std::path::PathBuf {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "roost example CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let path = dir.join("other-ca.pem");
    std::fs::write(&path, cert.pem()).unwrap();
    path
}

#[tokio::test]
async fn a_bridge_that_does_not_trust_mosquittos_certificate_records_the_tls_failure() {
    let m = Mosquitto::start().await;
    let dir = tempfile::tempdir().unwrap();
    // Same subject as the real CA, another key.
    let tls = BridgeTls::new(unrelated_ca(dir.path()))
        .client_cert(example_cert("client.pem"), example_cert("client.key"))
        .server_name("localhost");
    let bridge = cloud(
        remote(format!("mqtts://{}", m.tls)),
        Protocol::V5,
        "state/x",
    )
    .tls(tls);
    let edge = edge(bridge).await;
    let s = settled(&edge, |s| s.last_error.is_some()).await;
    let error = s.last_error.clone().unwrap();
    assert!(
        error.contains("TLS handshake") && error.contains("certificate"),
        "{s:?}"
    );
    assert!(!s.connected, "{s:?}");
    // Still refused on the next attempts, and messages wait.
    let mut device = Raw::connected(edge.addr, v5("device")).await;
    let r = device
        .publish(publish("devices/t1", "waits", QoS::AtLeastOnce, 1))
        .await;
    assert!(r.is_success(), "{r:?}");
    let s = settled(&edge, |s| s.queued == 1).await;
    assert!(!s.connected && s.forwarded == 0, "{s:?}");
    edge.stop().await;
}

#[tokio::test]
async fn with_3_1_1_and_overlapping_rules_nothing_loops_through_mosquitto() {
    let m = Mosquitto::start().await;
    // Both rules cover the remote's site-1/loop/#: mosquitto sends the
    // bridge what it forwarded (3.1.1 has no No Local).
    let bridge = Bridge::new("cloud", remote(format!("mqtt://{}", m.tcp)))
        .protocol(Protocol::V3_1_1)
        .client_id(unique("gw-"))
        .reconnect(Duration::from_millis(50), Duration::from_millis(500))
        .state_topic("state/loop")
        .forward(Rule::new("loop/#", QoS::ExactlyOnce).remote_prefix("site-1/"))
        .subscribe(Rule::new("loop/#", QoS::ExactlyOnce).remote_prefix("site-1/"));
    let mut w = watcher(m.tcp, "state/loop").await;
    let mut far = Raw::connected(m.tcp, v311("far")).await;
    far.subscribe(1, "site-1/loop/#", QoS::ExactlyOnce).await;
    let mut pusher = Raw::connected(m.tcp, v311("pusher")).await;
    let edge = edge(bridge).await;
    let mut near = Raw::connected(edge.addr, v5("near")).await;
    near.subscribe(1, "loop/#", QoS::ExactlyOnce).await;
    let mut device = Raw::connected(edge.addr, v5("device")).await;
    live(&mut w, "state/loop", &edge).await;

    for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
        .into_iter()
        .enumerate()
    {
        let pid = i as u16 + 1;
        // Up once; the local subscriber has it from the device only.
        let text = format!("from the edge {qos:?}");
        let r = device.publish(publish("loop/up", &text, qos, pid)).await;
        assert!(r.is_success(), "{r:?}");
        assert_eq!(take(&mut far, 1).await, std::slice::from_ref(&text));
        assert_eq!(take(&mut near, 1).await, [text]);

        // Down once, and not back up to mosquitto (whose subscriber has
        // it once, from the publisher). An echo of the first would be
        // taken here instead.
        let text = format!("from mosquitto {qos:?}");
        let r = pusher
            .publish(publish("site-1/loop/down", &text, qos, pid))
            .await;
        assert!(r.is_success(), "{r:?}");
        assert_eq!(take(&mut near, 1).await, std::slice::from_ref(&text));
        assert_eq!(take(&mut far, 1).await, [text]);
        tokio::join!(finish(&mut near), finish(&mut far));
    }
    let s = settled(&edge, |s| s.inflight == 0 && s.forwarded == 3).await;
    assert_eq!((s.received, s.dropped), (3, 0), "{s:?}");
    edge.stop().await;
}

/// mosquitto stops (SIGTERM: it saves its sessions) and starts again
/// while a device keeps publishing QoS 1 at the edge: every message the
/// edge acknowledged reaches a persistent subscriber at mosquitto at
/// least once, and the bridge's own session there (its subscription, a
/// command queued for it) survives too.
async fn a_mosquitto_restart_loses_nothing(protocol: Protocol) {
    let mut m = Mosquitto::start().await;
    let state = unique("state/gw-");
    let mut w = watcher(m.tcp, &state).await;
    let version = protocol.version();
    let collector = || {
        let mut c = connect(version, "collector", false);
        c.properties.session_expiry_interval = version.is_v5().then_some(3600);
        c
    };
    let mut sink = Raw::connected(m.tcp, collector()).await;
    sink.subscribe(1, "site-1/devices/#", QoS::AtLeastOnce)
        .await;
    let edge = edge(cloud(remote(format!("mqtt://{}", m.tcp)), protocol, &state)).await;
    let mut commands = Raw::connected(edge.addr, v5("commands")).await;
    commands.subscribe(1, "commands/#", QoS::AtLeastOnce).await;
    live(&mut w, &state, &edge).await;
    drop(w);
    // A retained command, taken now; were the bridge's session lost, it
    // would subscribe again after the restart and get it a second time.
    let mut pusher = Raw::connected(m.tcp, v5("pusher")).await;
    let r = pusher
        .publish(retained("site-1/commands/mode", "eco", QoS::AtLeastOnce, 1))
        .await;
    assert!(r.is_success(), "{r:?}");
    let c = commands.recv_publish().await;
    assert_eq!((c.topic.as_str(), payload(&c)), ("commands/mode", "eco"));
    commands.ack(&c).await;
    drop(pusher);

    let sent = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut device = Raw::connected(edge.addr, v5("device")).await;
    let publishing = tokio::spawn({
        let (sent, stop) = (sent.clone(), stop.clone());
        async move {
            let mut acked = Vec::new();
            let mut i = 0u32;
            while !stop.load(Relaxed) {
                let pid = (i % 60_000 + 1) as u16;
                let text = i.to_string();
                let r = device
                    .publish(publish("devices/d", &text, QoS::AtLeastOnce, pid))
                    .await;
                if r.is_success() {
                    acked.push(i);
                }
                i += 1;
                sent.store(i as usize, Relaxed);
                // A steady trickle, so the restart falls mid-stream.
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            acked
        }
    });
    let reached = |n: usize| {
        let sent = sent.clone();
        async move {
            let deadline = tokio::time::Instant::now() + LINK_WAIT;
            while sent.load(Relaxed) < n {
                assert!(tokio::time::Instant::now() < deadline, "device stalled");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    reached(50).await;
    m.terminate().await;
    let down_at = sent.load(Relaxed);
    reached(down_at + 20).await;
    m.restart().await;
    // A command for the bridge as soon as mosquitto is back: queued in the
    // bridge's session there if the bridge has not reconnected yet.
    let mut pusher = Raw::connected(m.tcp, v5("pusher")).await;
    let r = pusher
        .publish(publish(
            "site-1/commands/after",
            "restart",
            QoS::AtLeastOnce,
            2,
        ))
        .await;
    assert!(r.is_success(), "{r:?}");
    settled(&edge, |s| s.connected && s.reconnects >= 1).await;
    let up_at = sent.load(Relaxed);
    reached(up_at + 50).await;
    stop.store(true, Relaxed);
    let acked = publishing.await.unwrap();
    assert!(acked.len() >= 120, "{} acknowledged", acked.len());

    // The command once, the retained one not again.
    let c = commands.recv_publish().await;
    assert_eq!(
        (c.topic.as_str(), payload(&c)),
        ("commands/after", "restart")
    );
    commands.ack(&c).await;
    commands.expect_nothing().await;

    // The subscriber's session, restored from mosquitto's file, has what
    // it had not acknowledged before the restart and all since.
    drop(sink);
    let (mut sink, ack) = Raw::connect(m.tcp, collector()).await;
    assert!(
        ack.reason.is_success() && ack.session_present,
        "{ack:?}\n{}",
        m.log()
    );
    let mut seen = vec![false; acked.last().map_or(0, |&i| i as usize + 1)];
    let mut missing = acked.len();
    while missing > 0 {
        let Some(p) = sink.recv_within(LINK_WAIT).await else {
            let lost: Vec<u32> = acked
                .iter()
                .copied()
                .filter(|&i| !seen[i as usize])
                .collect();
            panic!(
                "acknowledged by the edge, never at mosquitto: {lost:?} (stopped after {down_at}, \
                 back after {up_at}); bridge {:?}",
                edge.stats.snapshot().bridges[0]
            );
        };
        let Packet::Publish(p) = p else {
            panic!("expected PUBLISH, got {p:?}");
        };
        sink.ack(&p).await;
        let i: usize = payload(&p).parse().unwrap();
        if i < seen.len() && !seen[i] {
            seen[i] = true;
            if acked.binary_search(&(i as u32)).is_ok() {
                missing -= 1;
            }
        }
    }
    let s = settled(&edge, |s| s.inflight == 0).await;
    assert!(s.forwarded >= acked.len() as u64, "{s:?}");
    edge.stop().await;
}

#[tokio::test]
async fn a_mosquitto_restart_keeps_the_5_session_and_loses_nothing_acknowledged() {
    a_mosquitto_restart_loses_nothing(Protocol::V5).await;
}

#[tokio::test]
async fn a_mosquitto_restart_keeps_the_3_1_1_session_and_loses_nothing_acknowledged() {
    a_mosquitto_restart_loses_nothing(Protocol::V3_1_1).await;
}

/// A roost remote serving plain TCP (for the test's clients) and TLS, WSS
/// and WebSocket with the example certificates, client certificates
/// required.
struct RoostRemote {
    tcp: SocketAddr,
    tls: SocketAddr,
    ws: SocketAddr,
    wss: SocketAddr,
    broker: TestBroker,
}

impl RoostRemote {
    async fn start() -> RoostRemote {
        let bind = || async {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let a = l.local_addr().unwrap();
            (l, a)
        };
        let (tls_l, tls) = bind().await;
        let (ws_l, ws) = bind().await;
        let (wss_l, wss) = bind().await;
        let config = || {
            TlsConfig::new(example_cert("server.pem"), example_cert("server.key")).client_auth(
                ClientAuth::Required {
                    ca: example_cert("ca.pem"),
                },
            )
        };
        let server = Server::new(Options::default())
            .tls(tls_l, config())
            .unwrap()
            .ws(ws_l, WsConfig::default())
            .unwrap()
            .wss(wss_l, WsConfig::default(), config())
            .unwrap();
        let broker = TestBroker::with_server(server).await;
        RoostRemote {
            tcp: broker.addr,
            tls,
            ws,
            wss,
            broker,
        }
    }
}

async fn roost_remote_over(scheme: &str) {
    let r = RoostRemote::start().await;
    let (url, tls) = match scheme {
        "mqtts" => (format!("mqtts://{}", r.tls), Some(example_tls())),
        "wss" => (format!("wss://{}/mqtt", r.wss), Some(example_tls())),
        "ws" => (format!("ws://{}/mqtt", r.ws), None),
        other => unreachable!("{other}"),
    };
    let state = unique("state/gw-");
    let mut bridge = cloud(remote(url), Protocol::V5, &state);
    if let Some(tls) = tls {
        bridge = bridge.tls(tls);
    }
    let mut w = watcher(r.tcp, &state).await;
    let mut up = Raw::connected(r.tcp, v5("cloud-app")).await;
    up.subscribe(1, "site-1/devices/#", QoS::ExactlyOnce).await;
    let edge = edge(bridge).await;
    let mut device = Raw::connected(edge.addr, v5("device")).await;
    device.subscribe(1, "commands/#", QoS::ExactlyOnce).await;
    live(&mut w, &state, &edge).await;

    let texts: Vec<String> = (0..20).map(|i| format!("{scheme} {i}")).collect();
    for (i, text) in texts.iter().enumerate() {
        let qos = [QoS::AtLeastOnce, QoS::ExactlyOnce][i % 2];
        let r = device
            .publish(publish("devices/t", text, qos, i as u16 + 1))
            .await;
        assert!(r.is_success(), "{r:?}");
    }
    assert_eq!(take(&mut up, 20).await, texts, "{scheme}: up");
    finish(&mut up).await;
    for (i, text) in texts.iter().enumerate() {
        let qos = [QoS::AtLeastOnce, QoS::ExactlyOnce][i % 2];
        let r = up
            .publish(publish("site-1/commands/c", text, qos, i as u16 + 1))
            .await;
        assert!(r.is_success(), "{r:?}");
    }
    assert_eq!(take(&mut device, 20).await, texts, "{scheme}: down");
    finish(&mut device).await;
    let s = settled(&edge, |s| s.inflight == 0 && s.forwarded == 20).await;
    assert_eq!((s.received, s.reconnects), (20, 0), "{s:?}");
    edge.stop().await;
    r.broker.stop().await;
}

#[tokio::test]
async fn roost_over_tls_with_a_client_certificate_as_the_remote() {
    roost_remote_over("mqtts").await;
}

#[tokio::test]
async fn roost_over_wss_with_a_client_certificate_as_the_remote() {
    roost_remote_over("wss").await;
}

#[tokio::test]
async fn roost_over_websocket_as_the_remote() {
    roost_remote_over("ws").await;
}
