//! What a client can make the broker hold in answers (PINGRESP, SUBACK,
//! UNSUBACK, PUBACK, PUBREC, PUBCOMP): a client that sends requests and
//! never reads, or whose answers wait behind one held for a commit, stops
//! being read once its unwritten answers reach their bound (64 KiB), gets
//! every answer in order once it reads (or the commit is done), and
//! nobody else notices.
//!
//! The broker's unwritten answers are measured from its own counters:
//! packets read minus packets written (`packets_received - packets_sent`),
//! once the core has handled everything read (a PINGREQ of another client
//! answered behind it).

mod common;
use bytes::BytesMut;
use common::*;
use roost::codec::{
    encode, ByteStr, Connect, Decoder, Packet, ProtocolVersion, Publish, QoS, QosPid, Unsubscribe,
};
use roost::storage::{MemoryStore, Op, Snapshot, StorageError, Store};
use roost::Options;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Unwritten answers the broker may hold for one client in these tests,
/// in packets: the bound (64 KiB: about 200 PINGRESPs, 1,000 PUBACKs),
/// plus one drain handed to the writer (512 packets), plus the answers to
/// packets already read when reads stopped (a batch of 16, and what waits
/// in the core's queue: at most 256 events of 16 packets). Without the
/// bound, the first test's broker held over a million.
const MOST_UNWRITTEN: u64 = 1_000 + 512 + 16 + 256 * 16;

/// A 3.1.1 client on a socket with a small receive buffer (no autotuning,
/// so the kernel absorbs little of what the broker writes), past CONNACK.
async fn flooder(b: &TestBroker, id: &str) -> TcpStream {
    small_window(b, v311(id)).await
}

/// [`flooder`], connecting with `connect` (a 3.1.1 one).
async fn small_window(b: &TestBroker, connect: Connect) -> TcpStream {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let mut s = sock.connect(b.addr).await.unwrap();
    s.write_all(&bytes_of(&[Packet::Connect(Box::new(connect))]))
        .await
        .unwrap();
    let mut answers = Answers::new();
    assert!(matches!(answers.next(&mut s).await, Packet::ConnAck(_)));
    assert!(answers.buf.is_empty());
    s
}

fn bytes_of(packets: &[Packet]) -> Vec<u8> {
    let mut out = BytesMut::new();
    for p in packets {
        encode(p, ProtocolVersion::V3_1_1, &mut out).unwrap();
    }
    out.to_vec()
}

/// Decodes what the broker writes to a 3.1.1 client.
struct Answers {
    buf: BytesMut,
    decoder: Decoder,
}

impl Answers {
    fn new() -> Self {
        Answers {
            buf: BytesMut::new(),
            decoder: Decoder::with_version(u32::MAX, ProtocolVersion::V3_1_1),
        }
    }

    async fn next(&mut self, s: &mut (impl AsyncReadExt + Unpin)) -> Packet {
        loop {
            if let Some(p) = self.decoder.decode(&mut self.buf).unwrap() {
                return p;
            }
            self.buf.reserve(64 * 1024);
            let n = tokio::time::timeout(WAIT, s.read_buf(&mut self.buf))
                .await
                .expect("the broker answers")
                .unwrap();
            assert!(n > 0, "closed by the broker");
        }
    }
}

/// Waits, for up to `limit` (a slow debug build takes longer than `WAIT`
/// to read a flood), until the broker reads nothing more for `QUIET`:
/// its reads stopped (or, without a bound, it read everything). Returns
/// the packets it read.
async fn until_reads_stop(b: &TestBroker, limit: Duration) -> u64 {
    let deadline = tokio::time::Instant::now() + limit;
    let mut last = b.stats.snapshot().packets_received;
    loop {
        tokio::time::sleep(QUIET).await;
        let now = b.stats.snapshot().packets_received;
        if now == last {
            return now;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still reading: {now}"
        );
        last = now;
    }
}

/// Packets the broker read and has not written (all clients together).
fn unwritten(b: &TestBroker) -> u64 {
    let s = b.stats.snapshot();
    s.packets_received - s.packets_sent
}

/// The test process's resident memory, KiB (reported, not asserted:
/// the broker shares the process with its clients).
fn rss_kib() -> i64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let line = status.lines().find(|l| l.starts_with("VmRSS:"));
    line.and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// PINGREQs past what the kernel's socket buffers absorb of the PINGRESPs
/// (measured here: about 1.5 million, 3 MB, before the broker holds any).
const PINGS: usize = 3_000_000;

/// A QoS 1 PUBLISH, SUBSCRIBE, UNSUBSCRIBE and PINGREQ with packet id `n`.
fn four_kinds(n: u16) -> [Packet; 4] {
    let pid = pid_of(n);
    [
        Packet::Publish(publish("t/answers", "", QoS::AtLeastOnce, n)),
        Packet::Subscribe(subscribe(n, &[("f/answers", opts(QoS::AtMostOnce))])),
        Packet::Unsubscribe(Unsubscribe::new(pid, vec![ByteStr::from("f/answers")])),
        Packet::PingReq,
    ]
}

/// Asserts `p` answers the `i`th packet of [`four_kinds`]`(n)`.
fn assert_answers(p: &Packet, n: u16, i: usize) {
    let pid = pid_of(n);
    let ok = match (i, p) {
        (0, Packet::PubAck(a)) => a.packet_id == pid,
        (1, Packet::SubAck(a)) => a.packet_id == pid && a.reasons.len() == 1,
        (2, Packet::UnsubAck(a)) => a.packet_id == pid,
        (3, Packet::PingResp) => true,
        _ => false,
    };
    assert!(ok, "answer {i} to packets {n}: got {p:?}");
}

/// A client that floods requests and never reads is read only until its
/// unwritten answers reach their bound, and then not at all while it does
/// not read; everyone else is served meanwhile; once it reads it gets
/// every answer, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_not_read_past_its_answers_bound() {
    let b = watched_broker(Options::default()).await;
    let s = flooder(&b, "flood").await;
    let tail: u16 = 1_000;
    let mut flood = [0xC0u8, 0].repeat(PINGS);
    for n in 1..=tail {
        flood.extend(bytes_of(&four_kinds(n)));
    }
    let packets = (PINGS + 4 * usize::from(tail)) as u64;
    let rss = rss_kib();
    let (mut r, mut w) = s.into_split();
    let writer = tokio::spawn(async move {
        w.write_all(&flood).await.unwrap();
        w
    });
    // Reads stop (or, without the bound, the broker reads it all).
    let read = until_reads_stop(&b, Duration::from_secs(120)).await;
    // Everything read is through the core: another client's PINGREQ is
    // answered behind it.
    let mut other = Raw::connected(b.addr, v5("other")).await;
    other.sync().await;
    let held = unwritten(&b);
    let grown = rss_kib() - rss;
    eprintln!("unwritten answers: {held}; resident memory grew {grown} KiB");
    assert!(
        held <= MOST_UNWRITTEN,
        "{held} answers unwritten (bound {MOST_UNWRITTEN})"
    );
    assert!(read < packets, "stopped before the end of the flood");
    assert!(b.stats.snapshot().answer_pauses >= 1);
    // Others are served.
    assert_serving(&b).await;

    // The client reads: every answer, in order.
    let mut answers = Answers::new();
    for i in 0..PINGS {
        match answers.next(&mut r).await {
            Packet::PingResp => {}
            p => panic!("answer {i}: {p:?}"),
        }
    }
    for n in 1..=tail {
        for i in 0..4 {
            assert_answers(&answers.next(&mut r).await, n, i);
        }
    }
    let _w = writer.await.unwrap();
    other.sync().await;
    assert!(answers.buf.is_empty(), "nothing more");
    let s = b.stats.snapshot();
    assert!(s.answer_pauses >= 1);
    assert_eq!(s.messages_dropped, 0);
}

/// A store whose writes wait while its gate is closed: a slow commit, for
/// as long as the test wants.
#[derive(Default)]
struct SlowStore {
    store: MemoryStore,
    closed: Mutex<bool>,
    opened: Condvar,
}

impl SlowStore {
    fn set_closed(&self, closed: bool) {
        *self.closed.lock().unwrap() = closed;
        self.opened.notify_all();
    }
}

/// Opens the gate when dropped, so that a test that fails with the gate
/// closed still lets its broker (and the runtime's blocking pool) stop.
struct Opens(Arc<SlowStore>);

impl Drop for Opens {
    fn drop(&mut self) {
        self.0.set_closed(false);
    }
}

impl Store for SlowStore {
    fn apply(&self, ops: &[Op]) -> Result<(), StorageError> {
        let mut closed = self.closed.lock().unwrap();
        while *closed {
            closed = self.opened.wait(closed).unwrap();
        }
        self.store.apply(ops)
    }
    fn load(&self) -> Result<Snapshot, StorageError> {
        self.store.load()
    }
    fn is_persistent(&self) -> bool {
        true
    }
}

/// While a retained QoS 1 message's PUBACK waits for its commit, every
/// answer behind it waits too: the broker reads the client only until
/// they reach their bound, however long the commit takes, and once it is
/// done the client gets the PUBACK and every PINGRESP, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_held_behind_a_slow_commit_stop_reads_until_it_is_done() {
    let store = Arc::new(SlowStore::default());
    let b = TestBroker::with_store(Options::default(), store.clone()).await;
    let s = flooder(&b, "held").await;
    let (mut r, mut w) = s.into_split();
    store.set_closed(true);
    let _opens = Opens(store.clone());
    let pings = 20_000;
    let mut retained = publish("r/held", "kept", QoS::AtLeastOnce, 1);
    retained.retain = true;
    let mut flood = bytes_of(&[Packet::Publish(retained)]);
    flood.extend([0xC0u8, 0].repeat(pings));
    let writer = tokio::spawn(async move {
        w.write_all(&flood).await.unwrap();
        w
    });
    let read = until_reads_stop(&b, Duration::from_secs(60)).await;
    let mut other = Raw::connected(b.addr, v5("other")).await;
    other.sync().await;
    let held = unwritten(&b);
    assert!(held <= MOST_UNWRITTEN, "{held} answers held");
    assert!(read < pings as u64, "stopped before the end of the flood");

    // The commit is done: the PUBACK, then every PINGRESP.
    store.set_closed(false);
    let mut answers = Answers::new();
    match answers.next(&mut r).await {
        Packet::PubAck(a) => assert_eq!(a.packet_id, pid_of(1)),
        p => panic!("expected the PUBACK first, got {p:?}"),
    }
    for i in 0..pings {
        match answers.next(&mut r).await {
            Packet::PingResp => {}
            p => panic!("answer {i}: {p:?}"),
        }
    }
    let _w = writer.await.unwrap();
    assert!(b.stats.snapshot().answer_pauses >= 1);
    // The retained message was kept.
    let mut sub = Raw::connected(b.addr, v5("sub")).await;
    sub.subscribe(1, "r/held", QoS::AtMostOnce).await;
    let p = sub.recv_publish().await;
    assert_eq!((payload(&p), p.qos_pid), ("kept", QosPid::AtMostOnce));
}

/// The write timeout of the test of a client that never reads: short, so
/// that it takes a second.
const WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// Payload bytes of each message the tests below publish.
const BIG: usize = 64 * 1024;

/// A broker whose write timeout is [`WRITE_TIMEOUT`].
async fn write_timeout_broker() -> TestBroker {
    let mut o = Options::default();
    o.limits.write_timeout = Some(WRITE_TIMEOUT);
    watched_broker(o).await
}

/// A QoS 0 message of [`BIG`] bytes to `topic`, its number first.
fn big(topic: &str, n: u32) -> Packet {
    let mut body = vec![b'x'; BIG];
    body[..4].copy_from_slice(&n.to_be_bytes());
    Packet::Publish(Publish::new(topic, body))
}

/// Subscribes `s` (a 3.1.1 client) to `filter` at QoS 0 and reads the
/// SUBACK.
async fn subscribe_raw(s: &mut TcpStream, filter: &str) {
    let sub = Packet::Subscribe(subscribe(1, &[(filter, opts(QoS::AtMostOnce))]));
    s.write_all(&bytes_of(&[sub])).await.unwrap();
    match Answers::new().next(s).await {
        Packet::SubAck(a) => assert_eq!(a.packet_id, pid_of(1)),
        p => panic!("expected SUBACK, got {p:?}"),
    }
}

/// A subscriber that stops reading (and goes on sending PINGREQs, so it
/// is not silent) while more is published to it than the sockets hold:
/// the broker drops it about `write_timeout` after its writes stopped
/// moving, counts it, publishes its will; everyone else is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_dropped_after_the_write_timeout() {
    let b = write_timeout_broker().await;
    let mut watcher = Raw::connected(b.addr, v5("watcher")).await;
    watcher.subscribe(1, "will/stuck", QoS::AtMostOnce).await;
    let mut connect = v311("stuck");
    connect.will = Some(will("will/stuck", "gone", QoS::AtMostOnce, false));
    let mut s = small_window(&b, connect).await;
    subscribe_raw(&mut s, "t/stuck").await;
    let (mut r, mut w) = s.into_split();
    let pinger = tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_millis(100));
        loop {
            every.tick().await;
            if w.write_all(&[0xC0, 0]).await.is_err() {
                break;
            }
        }
    });

    // 16 MiB: more than the broker's send buffer and the client's
    // receive buffer hold.
    let mut publisher = Raw::connected(b.addr, v5("publisher")).await;
    let start = tokio::time::Instant::now();
    for n in 0..256 {
        publisher.send(big("t/stuck", n)).await;
    }
    let deadline = start + WRITE_TIMEOUT + 2 * WAIT;
    while b.stats.snapshot().write_timeouts == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "still connected {:?} after the first publish",
            start.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let took = start.elapsed();
    assert!(took >= WRITE_TIMEOUT, "dropped after {took:?}");
    // Its will says it is gone.
    let p = watcher.recv_publish().await;
    assert_eq!((p.topic.as_str(), payload(&p)), ("will/stuck", "gone"));

    // The broker closed the socket: reading it now ends, once what the
    // kernel buffers held is read.
    let mut held = 0;
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        match tokio::time::timeout(WAIT, r.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => held += n,
            Err(_) => panic!("the socket is still open ({held} bytes read)"),
        }
    }
    eprintln!("dropped {took:?} after the first publish; {held} bytes were in the sockets");
    pinger.abort();

    // Everyone else is served, the publisher too.
    assert_serving(&b).await;
    publisher.sync().await;
    watcher.sync().await;
    let s = b.stats.snapshot();
    assert_eq!(s.write_timeouts, 1);
    assert_eq!(panics_on_this_thread(), 0);
}

/// A subscriber on a slow link, reading a little at a time while more is
/// published to it than the sockets hold, is not dropped, however long it
/// takes (longer than the write timeout): the bound restarts at every
/// byte the broker writes. It gets every message, in order.
///
/// The bound here is 6 s, not the 1 s of the test above: over loopback the
/// kernel lets a connection's send buffer grow to about 3 MB and wakes a
/// blocked writer only once much of it drained, which at this reader's
/// pace (about 350 KB/s) is seconds without a byte taken. The broker does
/// not shrink that buffer (`TCP_NOTSENT_LOWAT` did, and made fast fan-outs
/// drop QoS 0 at full speed); `limits.write_timeout` must outlast it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_is_not_dropped_and_gets_everything() {
    const BOUND: Duration = Duration::from_secs(6);
    let mut o = Options::default();
    o.limits.write_timeout = Some(BOUND);
    let b = watched_broker(o).await;
    let mut s = small_window(&b, v311("slow")).await;
    subscribe_raw(&mut s, "t/slow").await;
    // 10 MB: the broker's writes still block past the bound (the sockets
    // hold about 3 MB), so the bound must restart with each one.
    let messages: u32 = 160;
    let mut publisher = Raw::connected(b.addr, v5("publisher")).await;
    let publishing = tokio::spawn(async move {
        for n in 0..messages {
            publisher.send(big("t/slow", n)).await;
        }
        publisher
    });

    // A little at a time: 16 KiB every 10 ms, at most (1.6 MB/s).
    let start = tokio::time::Instant::now();
    let mut answers = Answers::new();
    let mut chunk = vec![0u8; 16 * 1024];
    let mut next = 0;
    while next < messages {
        if let Some(p) = answers.decoder.decode(&mut answers.buf).unwrap() {
            let Packet::Publish(p) = p else {
                panic!("expected message {next}, got {p:?}")
            };
            assert_eq!(p.payload.len(), BIG);
            assert_eq!(p.payload[..4], next.to_be_bytes(), "in order");
            next += 1;
            continue;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        let n = tokio::time::timeout(WAIT, s.read(&mut chunk))
            .await
            .expect("the broker writes")
            .unwrap();
        assert!(
            n > 0,
            "dropped after {next} messages, {:?}",
            start.elapsed()
        );
        answers.buf.extend_from_slice(&chunk[..n]);
    }
    let took = start.elapsed();
    eprintln!("{messages} messages of {BIG} bytes in {took:?}");
    assert!(took > 3 * BOUND, "took {took:?}: too fast to show anything");
    let mut publisher = publishing.await.unwrap();
    publisher.sync().await;
    let st = b.stats.snapshot();
    assert_eq!(st.write_timeouts, 0);
    assert_eq!(st.messages_dropped, 0);
}
