//! MQTT over WebSocket and WSS with a real tokio-tungstenite client: the
//! upgrade (path, subprotocol), packets split over frames and frames that
//! carry several packets, and frames MQTT forbids.

mod common;
use bytes::BytesMut;
use common::listeners::*;
use common::*;
use roost::codec::{encode, Packet, ProtocolVersion, QoS, ReasonCode};
use tokio::net::TcpStream;

fn bytes_of(p: Packet) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode(&p, ProtocolVersion::V5, &mut out).unwrap();
    out.to_vec()
}

#[tokio::test]
async fn subprotocol_mqtt_is_negotiated() {
    let b = MultiBroker::start().await;
    for (offered, chosen) in [
        ("mqtt", Some("mqtt")),
        ("mqttv3.1", Some("mqttv3.1")),
        ("chat, mqtt", Some("mqtt")),
    ] {
        let tcp = TcpStream::connect(b.ws).await.unwrap();
        let (io, got) = ws_connect(tcp, "ws://localhost/mqtt", offered)
            .await
            .unwrap();
        assert_eq!(got.as_deref(), chosen, "offered {offered}");
        let mut c = Client::new(Box::new(io), ProtocolVersion::V5);
        assert_eq!(c.connect(v5("p")).await.reason, ReasonCode::Success);
        c.disconnect().await;
    }
    b.stop().await;
}

#[tokio::test]
async fn wrong_path_is_refused_with_404() {
    let b = MultiBroker::start().await;
    let tcp = TcpStream::connect(b.ws).await.unwrap();
    let err = ws_connect(tcp, "ws://localhost/other", "mqtt")
        .await
        .err()
        .expect("the upgrade is refused");
    match err {
        tokio_tungstenite::tungstenite::Error::Http(resp) => assert_eq!(resp.status(), 404),
        other => panic!("expected an HTTP 404, got {other:?}"),
    }
    b.stop().await;
}

#[tokio::test]
async fn packet_split_across_frames_and_packets_sharing_a_frame() {
    let b = MultiBroker::start().await;
    let mut sub = b.connected(Kind::Ws, v5("sub")).await;
    sub.subscribe(1, "f/#", QoS::AtMostOnce).await;

    let tcp = TcpStream::connect(b.ws).await.unwrap();
    let (mut io, _) = ws_connect(tcp, "ws://localhost/mqtt", "mqtt")
        .await
        .unwrap();
    // CONNECT split in two frames, the cut inside the variable header.
    let connect = bytes_of(Packet::Connect(Box::new(v5("pub"))));
    let (a, rest) = connect.split_at(5);
    io.send_frame(a).await;
    io.send_frame(rest).await;
    // Two PUBLISHes in one frame, then one PUBLISH in three frames.
    let mut two = bytes_of(Packet::Publish(publish("f/1", "one", QoS::AtMostOnce, 1)));
    two.extend(bytes_of(Packet::Publish(publish(
        "f/2",
        "two",
        QoS::AtMostOnce,
        1,
    ))));
    io.send_frame(&two).await;
    let three = bytes_of(Packet::Publish(publish("f/3", "three", QoS::AtMostOnce, 1)));
    for chunk in three.chunks(three.len() / 3 + 1) {
        io.send_frame(chunk).await;
    }
    let mut publ = Client::new(Box::new(io), ProtocolVersion::V5);
    match publ.recv().await {
        Packet::ConnAck(ack) => assert_eq!(ack.reason, ReasonCode::Success),
        other => panic!("expected CONNACK, got {other:?}"),
    }
    for want in ["one", "two", "three"] {
        let p = sub.recv_publish().await;
        assert_eq!(payload(&p), want);
    }
    b.stop().await;
}

#[tokio::test]
async fn text_frames_close_the_connection() {
    let b = MultiBroker::start().await;
    let tcp = TcpStream::connect(b.ws).await.unwrap();
    let (mut io, _) = ws_connect(tcp, "ws://localhost/mqtt", "mqtt")
        .await
        .unwrap();
    use futures_util::SinkExt;
    io.ws
        .send(tokio_tungstenite::tungstenite::Message::Text(
            "hello".into(),
        ))
        .await
        .unwrap();
    // [MQTT-6.0.0-1]: not a binary frame, so the connection is closed.
    let mut c = Client::new(Box::new(io), ProtocolVersion::V5);
    assert!(c.recv_within(WAIT).await.is_none());
    b.stop().await;
}

#[tokio::test]
async fn pings_are_answered_during_a_session() {
    let b = MultiBroker::start().await;
    let tcp = TcpStream::connect(b.ws).await.unwrap();
    let (mut io, _) = ws_connect(tcp, "ws://localhost/mqtt", "mqtt")
        .await
        .unwrap();
    use futures_util::{SinkExt, StreamExt};
    io.send_frame(&bytes_of(Packet::Connect(Box::new(v5("ping")))))
        .await;
    io.ws
        .send(tokio_tungstenite::tungstenite::Message::Ping("x".into()))
        .await
        .unwrap();
    let mut saw_pong = false;
    let mut saw_connack = false;
    while !(saw_pong && saw_connack) {
        match tokio::time::timeout(WAIT, io.ws.next()).await.unwrap() {
            Some(Ok(tokio_tungstenite::tungstenite::Message::Pong(p))) => {
                assert_eq!(&p[..], b"x");
                saw_pong = true;
            }
            Some(Ok(tokio_tungstenite::tungstenite::Message::Binary(b))) => {
                assert_eq!(b[0], 0x20, "CONNACK");
                saw_connack = true;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    b.stop().await;
}

#[tokio::test]
async fn wss_round_trip() {
    let b = MultiBroker::start().await;
    let tls = tls_connect(b.wss, b.certs.client_config(None))
        .await
        .unwrap();
    let (io, chosen) = ws_connect(tls, "wss://localhost/mqtt", "mqtt")
        .await
        .unwrap();
    assert_eq!(chosen.as_deref(), Some("mqtt"));
    let mut sub = Client::new(Box::new(io), ProtocolVersion::V3_1_1);
    assert_eq!(
        sub.connect(v311("wss-sub")).await.reason,
        ReasonCode::Success
    );
    sub.subscribe(1, "wss", QoS::AtLeastOnce).await;
    let mut publ = b.connected(Kind::Wss, v311("wss-pub")).await;
    publ.publish(publish("wss", "secret", QoS::AtLeastOnce, 3))
        .await;
    let p = sub.recv_publish().await;
    assert_eq!(payload(&p), "secret");
    sub.ack(&p).await;
    // A wrong path is refused over WSS too.
    let tls = tls_connect(b.wss, b.certs.client_config(None))
        .await
        .unwrap();
    assert!(ws_connect(tls, "wss://localhost/", "mqtt").await.is_err());
    b.stop().await;
}

/// The WebSocket layer assembles a whole message before the MQTT decoder
/// sees any of it, so before CONNACK what it reads is metered: a client may
/// make the broker buffer `maximum_connect_size` (and a little for the
/// upgrade), not a message of twice `maximum_packet_size`. One that
/// declares a 1 MB message and sends 200 KB of it without a CONNECT is cut
/// off at once (it used to be held until the connect timeout); clients
/// that connect as usual still do.
#[tokio::test]
async fn a_large_message_before_connect_is_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut opts = roost::Options::default();
    opts.limits.connect_timeout = std::time::Duration::from_secs(60);
    let b = MultiBroker::with(opts, None).await;
    let mut tcp = TcpStream::connect(b.ws).await.unwrap();
    tcp.write_all(
        b"GET /mqtt HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
          Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8];
        tcp.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{head:?}");
    // A masked binary frame (as a client's must be) of 1,000,000 bytes.
    let mut frame = vec![0x82, 0x80 | 127];
    frame.extend(1_000_000u64.to_be_bytes());
    frame.extend([1, 2, 3, 4]);
    tcp.write_all(&frame).await.unwrap();
    let chunk = vec![0u8; 16 * 1024];
    for _ in 0..13 {
        if tcp.write_all(&chunk).await.is_err() {
            break; // Already cut off.
        }
    }
    let closed = tokio::time::timeout(WAIT, async {
        let mut rest = Vec::new();
        let _ = tcp.read_to_end(&mut rest).await;
    })
    .await;
    assert!(
        closed.is_ok(),
        "held open with 200 KB of a message and no CONNECT"
    );
    assert!(b.stats.snapshot().unauthenticated_refused >= 1);
    let c = b.connected(Kind::Ws, v5("after")).await;
    c.disconnect().await;
    b.stop().await;
}
