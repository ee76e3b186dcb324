//! Shared helpers for the integration tests: a real broker on
//! `127.0.0.1:0`, and a raw MQTT client built on roost's codec that can send
//! exactly the bytes a rule needs.

#![allow(dead_code)] // Each test binary uses a different subset.

#[cfg(feature = "cluster")]
pub(crate) mod cluster;
pub(crate) mod delivery;
#[cfg(feature = "http")]
pub(crate) mod http;
pub(crate) mod mosquitto;
pub(crate) mod nats;
pub(crate) mod process;

use bytes::{Bytes, BytesMut};
use roost::codec::{
    encode, ByteStr, ConnAck, Connect, Decoder, Disconnect, LastWill, Packet, PacketId,
    ProtocolVersion, PubResp, Publish, QoS, QosPid, ReasonCode, SubAck, Subscribe,
    SubscriptionOptions, UnsubAck, Unsubscribe,
};
use roost::{Options, Server, Stats};
use std::net::SocketAddr;
use std::num::NonZeroU16;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long a test waits for something that should happen.
pub(crate) const WAIT: Duration = Duration::from_secs(5);
/// How long a test waits to be sure something does NOT happen.
pub(crate) const QUIET: Duration = Duration::from_millis(300);

thread_local! {
    /// Panics on this thread. `#[tokio::test]` runs the broker, its
    /// connection tasks and the test on one thread, so this counts the
    /// broker's panics too, even those tokio catches in spawned tasks.
    static PANICS: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Installs (once per test binary) a panic hook that counts each thread's
/// panics and still prints them.
pub(crate) fn count_panics() {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.with(|p| p.set(p.get() + 1));
            prev(info);
        }));
    });
}

/// Panics counted on this thread since [`count_panics`].
pub(crate) fn panics_on_this_thread() -> u32 {
    PANICS.with(|p| p.get())
}

/// A client id (or topic) no other test in this binary uses.
pub(crate) fn unique(prefix: &str) -> String {
    static NEXT_ID: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    format!(
        "{prefix}{}",
        NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

/// The in-memory store, claiming to be persistent so that the broker
/// records and commits everything as it would on disk.
///
/// Every method but `is_persistent` is forwarded: one left out would fall
/// back to the trait's default, built on `load`, without a word.
#[derive(Debug, Default)]
pub(crate) struct Durable(roost::storage::MemoryStore);

impl roost::storage::Store for Durable {
    fn apply(&self, ops: &[roost::storage::Op]) -> Result<(), roost::storage::StorageError> {
        self.0.apply(ops)
    }
    fn load(&self) -> Result<roost::storage::Snapshot, roost::storage::StorageError> {
        self.0.load()
    }
    fn is_persistent(&self) -> bool {
        true
    }
    fn flush(&self) -> Result<(), roost::storage::StorageError> {
        self.0.flush()
    }
    fn outbound_page(
        &self,
        client_id: &str,
        after_seq: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, roost::storage::OutboundRecord)>, roost::storage::StorageError> {
        self.0.outbound_page(client_id, after_seq, limit)
    }
    fn messages(
        &self,
        ids: &[roost::storage::MessageId],
    ) -> Result<Vec<Option<roost::storage::MessageRecord>>, roost::storage::StorageError> {
        self.0.messages(ids)
    }
    fn retained(
        &self,
        topic: &str,
    ) -> Result<Option<roost::storage::MessageRecord>, roost::storage::StorageError> {
        self.0.retained(topic)
    }
    fn retained_many(
        &self,
        topics: &[&str],
    ) -> Result<Vec<Option<roost::storage::MessageRecord>>, roost::storage::StorageError> {
        self.0.retained_many(topics)
    }
    fn scan(
        &self,
        visit: &mut dyn FnMut(roost::storage::Record) -> Result<(), roost::storage::StorageError>,
    ) -> Result<(), roost::storage::StorageError> {
        self.0.scan(visit)
    }
    fn recover(&self) -> Result<(), roost::storage::StorageError> {
        self.0.recover()
    }
}

/// Polls `cond` until it holds, for up to `WAIT`.
pub(crate) async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A broker whose panics this thread counts (see [`panics_on_this_thread`]).
pub(crate) async fn watched_broker(opts: Options) -> TestBroker {
    count_panics();
    TestBroker::with(opts).await
}

/// The broker still serves: a fresh subscriber gets a fresh publisher's
/// QoS 1 message, and nothing panicked.
pub(crate) async fn assert_serving(b: &TestBroker) {
    assert_eq!(panics_on_this_thread(), 0, "the broker panicked");
    let topic = unique("alive/");
    let mut sub = Raw::connected(b.addr, v5(&unique("s"))).await;
    let ack = sub.subscribe(1, &topic, QoS::AtLeastOnce).await;
    assert_eq!(ack.reasons, vec![ReasonCode::GrantedQos1]);
    let mut publ = Raw::connected(b.addr, v311(&unique("p"))).await;
    publ.publish(publish(&topic, "still here", QoS::AtLeastOnce, 1))
        .await;
    let p = sub.recv_publish().await;
    assert_eq!(payload(&p), "still here");
    sub.ack(&p).await;
    sub.disconnect().await;
    publ.disconnect().await;
    // Give the connection tasks time to end, then look again.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(panics_on_this_thread(), 0, "the broker panicked");
}

/// A broker serving on an ephemeral port until dropped or stopped.
pub(crate) struct TestBroker {
    pub addr: SocketAddr,
    pub stats: Arc<Stats>,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<Result<(), roost::ServeError>>>,
}

impl TestBroker {
    pub(crate) async fn start() -> TestBroker {
        Self::with(Options::default()).await
    }

    pub(crate) async fn with(opts: Options) -> TestBroker {
        Self::serve(Server::new(opts)).await
    }

    /// A broker from a configured [`Server`] (hooks, inline clients).
    pub(crate) async fn with_server(server: Server) -> TestBroker {
        Self::serve(server).await
    }

    /// A broker on `store` (restart tests pass the same store again).
    pub(crate) async fn with_store(opts: Options, store: impl roost::storage::Store) -> TestBroker {
        Self::serve(Server::new(opts).store(store)).await
    }

    async fn serve(server: Server) -> TestBroker {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = server.tcp(listener);
        let stats = server.stats();
        let (tx, rx) = oneshot::channel();
        let handle = tokio::spawn(server.serve(async {
            let _ = rx.await;
        }));
        TestBroker {
            addr,
            stats,
            stop: Some(tx),
            handle: Some(handle),
        }
    }

    /// Stops the broker and waits for `serve` to return.
    pub(crate) async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            tokio::time::timeout(WAIT, h)
                .await
                .expect("broker stops in time")
                .unwrap()
                .unwrap();
        }
    }

    pub(crate) fn host_port(&self) -> (String, u16) {
        (self.addr.ip().to_string(), self.addr.port())
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// A raw MQTT client over a real TCP socket.
pub(crate) struct Raw {
    stream: TcpStream,
    buf: BytesMut,
    decoder: Decoder,
    pub version: ProtocolVersion,
}

impl Raw {
    pub(crate) async fn open(addr: SocketAddr, version: ProtocolVersion) -> Raw {
        let stream = TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        Raw {
            stream,
            buf: BytesMut::new(),
            decoder: Decoder::with_version(u32::MAX, version),
            version,
        }
    }

    /// Opens a connection and completes CONNECT/CONNACK.
    pub(crate) async fn connect(addr: SocketAddr, connect: Connect) -> (Raw, ConnAck) {
        let mut raw = Raw::open(addr, connect.protocol).await;
        raw.send(Packet::Connect(Box::new(connect))).await;
        match raw.recv().await {
            Packet::ConnAck(ack) => (raw, ack),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    /// Connects and asserts success.
    pub(crate) async fn connected(addr: SocketAddr, connect: Connect) -> Raw {
        let (raw, ack) = Self::connect(addr, connect).await;
        assert_eq!(ack.reason, ReasonCode::Success, "{ack:?}");
        raw
    }

    pub(crate) async fn send(&mut self, p: Packet) {
        let mut out = BytesMut::new();
        encode(&p, self.version, &mut out).unwrap();
        self.stream.write_all(&out).await.unwrap();
    }

    /// Like [`Raw::send`], but a dead connection is an answer, not a panic.
    pub(crate) async fn try_send(&mut self, p: Packet) -> bool {
        let mut out = BytesMut::new();
        encode(&p, self.version, &mut out).unwrap();
        self.stream.write_all(&out).await.is_ok()
    }

    pub(crate) async fn send_bytes(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// The next packet within `dur`; `None` on timeout or end of stream.
    pub(crate) async fn recv_within(&mut self, dur: Duration) -> Option<Packet> {
        let deadline = tokio::time::Instant::now() + dur;
        loop {
            if let Some(p) = self
                .decoder
                .decode(&mut self.buf)
                .expect("server sent valid packet")
            {
                return Some(p);
            }
            self.buf.reserve(4096);
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return None,
                Ok(Ok(_)) => {}
            }
        }
    }

    /// The next packet; panics if none arrives in time.
    pub(crate) async fn recv(&mut self) -> Packet {
        self.recv_within(WAIT)
            .await
            .expect("a packet from the broker")
    }

    pub(crate) async fn recv_publish(&mut self) -> Publish {
        match self.recv().await {
            Packet::Publish(p) => p,
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }

    /// Asserts nothing arrives for a short while.
    pub(crate) async fn expect_nothing(&mut self) {
        if let Some(p) = self.recv_within(QUIET).await {
            panic!("expected nothing, got {p:?}");
        }
    }

    /// Waits until the broker closes the connection; returns what it sent
    /// before closing.
    pub(crate) async fn expect_closed(&mut self) -> Vec<Packet> {
        let mut got = Vec::new();
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            while let Ok(Some(p)) = self.decoder.decode(&mut self.buf) {
                got.push(p);
            }
            self.buf.reserve(4096);
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return got,
                Ok(Ok(_)) => {}
                Err(_) => panic!("connection not closed; got {got:?}"),
            }
        }
    }

    /// Subscribes and returns the SUBACK.
    pub(crate) async fn subscribe(&mut self, pid: u16, filter: &str, qos: QoS) -> SubAck {
        self.subscribe_with(subscribe(pid, &[(filter, opts(qos))]))
            .await
    }

    pub(crate) async fn subscribe_with(&mut self, s: Subscribe) -> SubAck {
        self.send(Packet::Subscribe(s)).await;
        match self.recv().await {
            Packet::SubAck(a) => a,
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }

    pub(crate) async fn unsubscribe(&mut self, pid: u16, filters: &[&str]) -> UnsubAck {
        self.send(Packet::Unsubscribe(Unsubscribe::new(
            pid_of(pid),
            filters.iter().map(|f| ByteStr::from(*f)).collect(),
        )))
        .await;
        match self.recv().await {
            Packet::UnsubAck(a) => a,
            other => panic!("expected UNSUBACK, got {other:?}"),
        }
    }

    /// Publishes and completes the QoS flow from the publisher's side.
    /// Returns the acknowledgement's reason (Success for QoS 0).
    pub(crate) async fn publish(&mut self, p: Publish) -> ReasonCode {
        let qos_pid = p.qos_pid;
        self.send(Packet::Publish(p)).await;
        match qos_pid {
            QosPid::AtMostOnce => ReasonCode::Success,
            QosPid::AtLeastOnce(pid) => match self.recv().await {
                Packet::PubAck(a) if a.packet_id == pid => a.reason,
                other => panic!("expected PUBACK, got {other:?}"),
            },
            QosPid::ExactlyOnce(pid) => {
                let reason = match self.recv().await {
                    Packet::PubRec(a) if a.packet_id == pid => a.reason,
                    other => panic!("expected PUBREC, got {other:?}"),
                };
                if reason.is_success() {
                    self.send(Packet::PubRel(PubResp::new(pid))).await;
                    match self.recv().await {
                        Packet::PubComp(c) if c.packet_id == pid => {}
                        other => panic!("expected PUBCOMP, got {other:?}"),
                    }
                }
                reason
            }
        }
    }

    /// Acknowledges a received PUBLISH as a well-behaved client would.
    pub(crate) async fn ack(&mut self, p: &Publish) {
        match p.qos_pid {
            QosPid::AtMostOnce => {}
            QosPid::AtLeastOnce(pid) => self.send(Packet::PubAck(PubResp::new(pid))).await,
            QosPid::ExactlyOnce(pid) => {
                self.send(Packet::PubRec(PubResp::new(pid))).await;
                match self.recv().await {
                    Packet::PubRel(r) if r.packet_id == pid => {}
                    other => panic!("expected PUBREL, got {other:?}"),
                }
                self.send(Packet::PubComp(PubResp::new(pid))).await;
            }
        }
    }

    /// Waits until the broker has handled everything sent before: it
    /// answers PINGREQ in order with the other packets.
    pub(crate) async fn sync(&mut self) {
        self.send(Packet::PingReq).await;
        match self.recv().await {
            Packet::PingResp => {}
            other => panic!("expected PINGRESP, got {other:?}"),
        }
    }

    pub(crate) async fn disconnect(mut self) {
        self.send(Packet::Disconnect(Disconnect::default())).await;
        let _ = self.stream.shutdown().await;
    }

    /// Drops the TCP connection without DISCONNECT.
    pub(crate) fn drop_connection(self) {
        drop(self);
    }
}

pub(crate) fn pid_of(n: u16) -> PacketId {
    NonZeroU16::new(n).expect("non-zero packet id")
}

pub(crate) fn connect(version: ProtocolVersion, client_id: &str, clean: bool) -> Connect {
    Connect::new(version, client_id)
        .with_clean_start(clean)
        .with_keep_alive(60)
}

pub(crate) fn v5(client_id: &str) -> Connect {
    connect(ProtocolVersion::V5, client_id, true)
}

/// A 5.0 CONNECT with a Session Expiry Interval and the given Clean Start.
pub(crate) fn v5_session(client_id: &str, clean: bool, expiry: u32) -> Connect {
    let mut c = connect(ProtocolVersion::V5, client_id, clean);
    c.properties.session_expiry_interval = Some(expiry);
    c
}

/// Waits for the broker to close the connection and returns the reason of
/// the DISCONNECT it sent last.
pub(crate) async fn expect_disconnect(raw: &mut Raw) -> ReasonCode {
    let got = raw.expect_closed().await;
    match got.last() {
        Some(Packet::Disconnect(d)) => d.reason,
        _ => panic!("expected DISCONNECT before close, got {got:?}"),
    }
}

pub(crate) fn v311(client_id: &str) -> Connect {
    connect(ProtocolVersion::V3_1_1, client_id, true)
}

pub(crate) fn will(topic: &str, payload: &str, qos: QoS, retain: bool) -> LastWill {
    LastWill::new(topic, Bytes::copy_from_slice(payload.as_bytes()), qos).with_retain(retain)
}

pub(crate) fn publish(topic: &str, payload: &str, qos: QoS, pid: u16) -> Publish {
    Publish::new(topic, Bytes::copy_from_slice(payload.as_bytes()))
        .with_qos_pid(QosPid::new(qos, pid_of(pid.max(1))))
}

pub(crate) fn retained(topic: &str, payload: &str, qos: QoS, pid: u16) -> Publish {
    publish(topic, payload, qos, pid).with_retain(true)
}

pub(crate) fn opts(qos: QoS) -> SubscriptionOptions {
    SubscriptionOptions::new(qos)
}

pub(crate) fn subscribe(pid: u16, filters: &[(&str, SubscriptionOptions)]) -> Subscribe {
    Subscribe::new(
        pid_of(pid),
        filters
            .iter()
            .map(|(f, o)| (ByteStr::from(*f), *o))
            .collect(),
    )
}

pub(crate) fn payload(p: &Publish) -> &str {
    std::str::from_utf8(&p.payload).unwrap()
}

#[cfg(all(feature = "tls", feature = "ws", feature = "http"))]
pub(crate) mod listeners;
