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

/// A frame's declared length is not a reason to buffer anything: its
/// payload streams to the MQTT decoder as it arrives, and the decoder
/// refuses a CONNECT over `maximum_connect_size` from its fixed header. A
/// client that declares a 1 MB frame holding a 1 MB CONNECT and sends
/// 200 KB of it is cut off at once (before issue 20's framing layer,
/// tungstenite assembled the message and the pre-CONNACK meter cut it
/// off); clients that connect as usual still do.
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
    let mask = [1, 2, 3, 4];
    frame.extend(mask);
    // A CONNECT fixed header declaring 999,996 bytes, masked.
    let connect = [0x10, 0xbc, 0x84, 0x3d];
    frame.extend(connect.iter().zip(mask).map(|(b, m)| b ^ m));
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
    assert!(b.stats.snapshot().connect_too_large >= 1);
    let c = b.connected(Kind::Ws, v5("after")).await;
    c.disconnect().await;
    b.stop().await;
}

// Raw frames over a real socket: what a client library would not send, and
// exactly what the broker answers.

const UPGRADE: &[u8] = b"GET /mqtt HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
    Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
    Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n";

/// A masked client frame with first byte `first` (FIN, opcode).
fn masked(first: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x5a, 0x01, 0xc3, 0x7e];
    let mut f = vec![first];
    if payload.len() < 126 {
        f.push(0x80 | payload.len() as u8);
    } else {
        f.push(0x80 | 126);
        f.extend((payload.len() as u16).to_be_bytes());
    }
    f.extend(mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// Upgrades over a new socket, sending `then` in the same write as the
/// request (so the broker reads them together); returns once the 101 head
/// is read.
async fn raw_ws(addr: std::net::SocketAddr, then: &[u8]) -> TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let mut first = UPGRADE.to_vec();
    first.extend(then);
    tcp.write_all(&first).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8];
        tcp.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{head:?}");
    tcp
}

/// The next server frame: (first byte, payload); `None` at end of stream.
async fn server_frame(tcp: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    use tokio::io::AsyncReadExt;
    let read = async {
        let mut h = [0u8; 2];
        tcp.read_exact(&mut h).await.ok()?;
        assert_eq!(h[1] & 0x80, 0, "server frames are unmasked");
        let len = match h[1] & 0x7f {
            126 => tcp.read_u16().await.ok()? as usize,
            127 => tcp.read_u64().await.ok()? as usize,
            n => n as usize,
        };
        let mut payload = vec![0; len];
        tcp.read_exact(&mut payload).await.ok()?;
        Some((h[0], payload))
    };
    tokio::time::timeout(WAIT, read)
        .await
        .expect("a frame or the end in time")
}

/// The MQTT packet types in `bytes`, if it holds whole packets back to
/// back (`None` while the last is incomplete).
fn packet_types(mut bytes: &[u8]) -> Option<Vec<u8>> {
    let mut types = Vec::new();
    while let Some(&first) = bytes.first() {
        let (mut len, mut at) = (0usize, 1);
        loop {
            let b = *bytes.get(at)?;
            len |= usize::from(b & 0x7f) << (7 * (at - 1));
            at += 1;
            if b & 0x80 == 0 {
                break;
            }
        }
        types.push(first >> 4);
        bytes = bytes.get(at + len..)?;
    }
    Some(types)
}

/// The frames until the end of stream.
async fn frames_to_end(tcp: &mut TcpStream) -> Vec<(u8, Vec<u8>)> {
    let mut all = Vec::new();
    while let Some(f) = server_frame(tcp).await {
        all.push(f);
    }
    all
}

/// A CONNECT that comes in the same read as the upgrade request, in three
/// fragments of one message with a ping between them, then a SUBSCRIBE and
/// a PINGREQ in one frame: a CONNACK, a pong, a SUBACK and a PINGRESP come
/// back, each its own whole frame.
#[tokio::test]
async fn fragments_pings_and_bytes_sent_with_the_upgrade() {
    let b = MultiBroker::start().await;
    let connect = bytes_of(Packet::Connect(Box::new(v5("raw"))));
    let mut first = masked(0x02, &connect[..3]);
    first.extend(masked(0x89, b"hi"));
    first.extend(masked(0x00, &connect[3..7]));
    let mut tcp = raw_ws(b.ws, &first).await;
    use tokio::io::AsyncWriteExt;
    tcp.write_all(&masked(0x80, &connect[7..])).await.unwrap();
    let mut two = bytes_of(Packet::Subscribe(subscribe(
        1,
        &[("r/#", opts(QoS::AtMostOnce))],
    )));
    two.extend([0xc0, 0x00]); // PINGREQ
    tcp.write_all(&masked(0x82, &two)).await.unwrap();
    // Packets and frames are independent: the broker may put several
    // packets in one frame.
    let (mut pong, mut mqtt) = (false, Vec::new());
    while !pong || packet_types(&mqtt).is_none_or(|t| t.len() < 3) {
        match server_frame(&mut tcp).await.expect("a frame") {
            (0x8A, p) => {
                assert_eq!(p, b"hi");
                pong = true;
            }
            (0x82, p) => mqtt.extend(p),
            other => panic!("{other:?}"),
        }
    }
    // CONNACK, SUBACK, PINGRESP.
    assert_eq!(packet_types(&mqtt).unwrap(), [2, 9, 13]);
    b.stop().await;
}

/// What MQTT over WebSocket refuses, and the close code that says why: a
/// text frame (1003, [MQTT-6.0.0-1]), an unmasked frame (1002, RFC 6455
/// section 5.1), a 64-bit length with its top bit set (1002).
#[tokio::test]
async fn refused_frames_are_closed_with_their_code() {
    let b = MultiBroker::start().await;
    let mut unmasked = masked(0x82, b"\x10\x00");
    unmasked[1] &= 0x7f;
    unmasked.drain(2..6);
    let mut top_bit = vec![0x82, 0x80 | 127];
    top_bit.extend((1u64 << 63).to_be_bytes());
    top_bit.extend([0; 4]);
    for (frame, code) in [
        (masked(0x81, b"hello"), 1003u16),
        (unmasked, 1002),
        (top_bit, 1002),
    ] {
        let mut tcp = raw_ws(b.ws, &frame).await;
        let frames = frames_to_end(&mut tcp).await;
        assert_eq!(
            frames,
            [(0x88, code.to_be_bytes().to_vec())],
            "answer to {frame:?}"
        );
    }
    b.stop().await;
}

/// A close frame from the client, mid-session, is answered with a close
/// echoing its code, and the connection ends.
#[tokio::test]
async fn a_close_frame_is_answered() {
    let b = MultiBroker::start().await;
    let connect = bytes_of(Packet::Connect(Box::new(v5("closer"))));
    let mut tcp = raw_ws(b.ws, &masked(0x82, &connect)).await;
    let (_, connack) = server_frame(&mut tcp).await.unwrap();
    assert_eq!(connack[0], 0x20);
    use tokio::io::AsyncWriteExt;
    tcp.write_all(&masked(0x88, &1001u16.to_be_bytes()))
        .await
        .unwrap();
    let frames = frames_to_end(&mut tcp).await;
    assert_eq!(frames, [(0x88, 1001u16.to_be_bytes().to_vec())]);
    b.stop().await;
}

/// A frame that declares 2^40 bytes allocates nothing for them: its
/// payload is read as it comes, here a CONNECT and a PINGREQ, answered as
/// usual while the frame is still open.
#[tokio::test]
async fn a_huge_declared_frame_streams() {
    let b = MultiBroker::start().await;
    let mask = [9, 8, 7, 6];
    let mut frame = vec![0x82, 0x80 | 127];
    frame.extend((1u64 << 40).to_be_bytes());
    frame.extend(mask);
    let mut packets = bytes_of(Packet::Connect(Box::new(v5("huge"))));
    packets.extend([0xc0, 0x00]);
    frame.extend(packets.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    let mut tcp = raw_ws(b.ws, &frame).await;
    let mut mqtt = Vec::new();
    while packet_types(&mqtt).is_none_or(|t| t.len() < 2) {
        let (op, p) = server_frame(&mut tcp).await.expect("a frame");
        assert_eq!(op, 0x82);
        mqtt.extend(p);
    }
    let kinds = packet_types(&mqtt).unwrap();
    assert_eq!(kinds, [2, 13], "CONNACK, PINGRESP");
    b.stop().await;
}

/// A wrong WebSocket version gets 426 with the version served (RFC 6455
/// section 4.4), a plain GET 400.
#[tokio::test]
async fn bad_upgrades_get_http_errors() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let b = MultiBroker::start().await;
    let v8 = String::from_utf8(UPGRADE.to_vec())
        .unwrap()
        .replace("Version: 13", "Version: 8");
    for (request, status) in [
        (v8, "426"),
        ("GET /mqtt HTTP/1.1\r\nHost: x\r\n\r\n".to_string(), "400"),
    ] {
        let mut tcp = TcpStream::connect(b.ws).await.unwrap();
        tcp.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(WAIT, tcp.read_to_end(&mut answer))
            .await
            .unwrap()
            .unwrap();
        let answer = String::from_utf8(answer).unwrap();
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status} ")),
            "{answer}"
        );
        if status == "426" {
            assert!(answer.contains("Sec-WebSocket-Version: 13\r\n"), "{answer}");
        }
    }
    b.stop().await;
}
