//! One MQTT suite (connect, QoS 0/1/2, retained, will) written once and run
//! over every transport: TCP, TLS, WebSocket and WSS. And a flood of
//! hostile connections that must not keep honest clients out.

mod common;
use common::listeners::*;
use common::*;
use roost::codec::{ProtocolVersion, QoS, ReasonCode};
use roost::Options;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

async fn pubsub_all_qos(b: &MultiBroker, kind: Kind) {
    for version in [ProtocolVersion::V5, ProtocolVersion::V3_1_1] {
        let mut sub = b.connected(kind, connect(version, "sub", true)).await;
        let ack = sub.subscribe(1, "t/+", QoS::ExactlyOnce).await;
        assert_eq!(ack.reasons, vec![ReasonCode::GrantedQos2]);
        let mut publ = b.connected(kind, connect(version, "pub", true)).await;
        for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
            .into_iter()
            .enumerate()
        {
            let body = format!("{kind:?}-{i}");
            publ.publish(publish("t/x", &body, qos, 1 + i as u16)).await;
            let p = sub.recv_publish().await;
            assert_eq!((payload(&p), p.qos_pid.qos()), (body.as_str(), qos));
            sub.ack(&p).await;
        }
        sub.disconnect().await;
        publ.disconnect().await;
    }
}

async fn retained_message(b: &MultiBroker, kind: Kind) {
    let topic = format!("r/{kind:?}");
    let mut publ = b.connected(kind, v5("r-pub")).await;
    publ.publish(retained(&topic, "kept", QoS::AtLeastOnce, 1))
        .await;
    publ.disconnect().await;
    let mut sub = b.connected(kind, v5("r-sub")).await;
    sub.subscribe(1, &topic, QoS::AtLeastOnce).await;
    let p = sub.recv_publish().await;
    assert!(p.retain);
    assert_eq!(payload(&p), "kept");
    sub.ack(&p).await;
    sub.disconnect().await;
}

async fn will_on_lost_connection(b: &MultiBroker, kind: Kind) {
    let topic = format!("w/{kind:?}");
    let mut watcher = b.connected(kind, v311("watcher")).await;
    watcher.subscribe(1, &topic, QoS::AtLeastOnce).await;
    let mut c = v311("dying");
    c.will = Some(will(&topic, "gone", QoS::AtLeastOnce, false));
    let dying = b.connected(kind, c).await;
    drop(dying); // no DISCONNECT: the will goes out
    let p = watcher.recv_publish().await;
    assert_eq!(payload(&p), "gone");
    watcher.ack(&p).await;
    watcher.disconnect().await;
}

#[tokio::test]
async fn mqtt_suite_runs_over_every_transport() {
    let b = MultiBroker::start().await;
    for kind in ALL {
        pubsub_all_qos(&b, kind).await;
        retained_message(&b, kind).await;
        will_on_lost_connection(&b, kind).await;
    }
    b.stop().await;
}

/// Payloads from 4 KiB on are written from the message itself (a vectored
/// write, not a copy) where the stream allows: mixed with small ones, and
/// at QoS 1 with topic aliases, every byte still arrives in order, on every
/// transport and in both versions.
#[tokio::test]
async fn large_payloads_arrive_intact_over_every_transport() {
    let b = MultiBroker::start().await;
    let sizes = [10, 4096, 5000, 20, 65_536, 300_000, 7, 8192];
    let body = |i: usize, n: usize| -> String {
        (0..n)
            .map(|j| char::from(b'a' + ((i * 7 + j) % 26) as u8))
            .collect()
    };
    for kind in ALL {
        for version in [ProtocolVersion::V5, ProtocolVersion::V3_1_1] {
            let mut c = connect(version, "big-sub", true);
            c.properties.topic_alias_maximum = Some(4);
            let mut sub = b.connected(kind, c).await;
            sub.subscribe(1, "big/#", QoS::AtLeastOnce).await;
            let mut publ = b.connected(kind, connect(version, "big-pub", true)).await;
            for (i, &n) in sizes.iter().enumerate() {
                let qos = [QoS::AtMostOnce, QoS::AtLeastOnce][i % 2];
                publ.publish(publish("big/x", &body(i, n), qos, 1 + i as u16))
                    .await;
            }
            for (i, &n) in sizes.iter().enumerate() {
                let p = sub.recv_publish().await;
                assert_eq!(p.payload.len(), n, "{kind:?} {version:?} message {i}");
                assert!(
                    payload(&p) == body(i, n),
                    "{kind:?} {version:?} message {i}"
                );
                sub.ack(&p).await;
            }
            sub.disconnect().await;
            publ.disconnect().await;
        }
    }
    b.stop().await;
}

#[tokio::test]
async fn clients_on_different_transports_talk_to_each_other() {
    let b = MultiBroker::start().await;
    let mut subs = Vec::new();
    for (i, kind) in ALL.into_iter().enumerate() {
        let mut s = b.connected(kind, v5(&format!("s{i}"))).await;
        s.subscribe(1, "mix", QoS::AtLeastOnce).await;
        subs.push(s);
    }
    for kind in ALL {
        let mut p = b.connected(kind, v5("p")).await;
        p.publish(publish("mix", &format!("{kind:?}"), QoS::AtLeastOnce, 1))
            .await;
        for s in &mut subs {
            let m = s.recv_publish().await;
            assert_eq!(payload(&m), format!("{kind:?}"));
            s.ack(&m).await;
        }
        p.disconnect().await;
    }
    b.stop().await;
}

/// 200 hostile sockets (silent, half a TLS handshake, garbage, half a
/// WebSocket upgrade) with a 1 s handshake timeout: an honest client on
/// every transport still connects within 2 s, and the hostile ones are
/// dropped once their time is up.
#[tokio::test]
async fn hostile_connections_do_not_keep_honest_clients_out() {
    let mut opts = Options::default();
    opts.limits.connect_timeout = Duration::from_secs(1);
    let b = MultiBroker::with(opts, Some(false)).await;
    // The first bytes of a TLS ClientHello record, then nothing.
    let half_hello: &[u8] = &[
        0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
    ];
    let mut hostile = Vec::new();
    for i in 0..200 {
        let kind = ALL[i % 4];
        let mut s = TcpStream::connect(b.addr(kind)).await.unwrap();
        match i % 3 {
            0 => {} // say nothing
            1 => s.write_all(half_hello).await.unwrap(),
            _ if matches!(kind, Kind::Ws) => s
                .write_all(b"GET /mqtt HTTP/1.1\r\nHost: x\r\n")
                .await
                .unwrap(),
            _ => s
                .write_all(&[0xde, 0xad, 0xbe, 0xef, 0x00, 0x99])
                .await
                .unwrap(),
        }
        hostile.push(s);
    }
    for kind in ALL {
        let honest = tokio::time::timeout(Duration::from_secs(2), async {
            let c = b.connected(kind, v5(&format!("honest-{kind:?}"))).await;
            c.disconnect().await;
        })
        .await;
        assert!(honest.is_ok(), "{kind:?}: honest client not served in 2 s");
    }
    // After the timeout every hostile socket has been closed by the broker.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for mut s in hostile {
        let mut buf = [0u8; 64];
        let closed = tokio::time::timeout(WAIT, async {
            loop {
                match tokio::io::AsyncReadExt::read(&mut s, &mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {} // e.g. a TLS alert or an HTTP 400
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "a hostile socket was kept open");
    }
    b.stop().await;
}

#[tokio::test]
async fn listener_added_while_serving() {
    let b = MultiBroker::start().await;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let listener =
        roost::Listener::new("late-tls", l, roost::Transport::Tls(b.certs.tls(None))).unwrap();
    let h = b.handle.add_listener(listener).unwrap();
    assert_eq!(h.id(), "late-tls");
    assert_eq!(h.scheme(), "mqtts");
    let io = tls_connect(h.local_addr(), b.certs.client_config(None))
        .await
        .unwrap();
    let mut c = Client::new(Box::new(io), ProtocolVersion::V5);
    assert_eq!(c.connect(v5("late")).await.reason, ReasonCode::Success);
    // Ids are unique, and every listener is listed with its scheme.
    let again = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dup = roost::Listener::new("late-tls", again, roost::Transport::Tcp).unwrap();
    assert!(matches!(
        b.handle.add_listener(dup),
        Err(roost::ListenerError::DuplicateId(_))
    ));
    let schemes: Vec<_> = b.handle.listeners().iter().map(|l| l.scheme()).collect();
    assert_eq!(schemes, ["mqtt", "mqtts", "ws", "wss", "http", "mqtts"]);
    assert!(b.handle.listener(&format!("ws:{}", b.ws)).is_some());
    c.disconnect().await;
    b.stop().await;
}

#[tokio::test]
async fn no_listener_can_be_added_after_stop() {
    let b = MultiBroker::start().await;
    let handle = b.handle.clone();
    b.stop().await;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let listener = roost::Listener::new("late", l, roost::Transport::Tcp).unwrap();
    assert!(matches!(
        handle.add_listener(listener),
        Err(roost::ListenerError::Stopped)
    ));
}

/// Sockets stuck in a TLS or WebSocket handshake do not hold up shutdown
/// (they have nothing to flush, so they get no grace period).
#[tokio::test]
async fn shutdown_does_not_wait_for_handshakes() {
    let b = MultiBroker::start().await;
    let mut stuck = Vec::new();
    for kind in [Kind::Tls, Kind::Ws, Kind::Wss] {
        stuck.push(TcpStream::connect(b.addr(kind)).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = tokio::time::Instant::now();
    b.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "shutdown took {:?}",
        started.elapsed()
    );
    drop(stuck);
}
