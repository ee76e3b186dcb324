//! Tests that drive the core as the server does, in virtual time: events
//! in, packets (read from the clients' outboxes) and store operations out,
//! the clock moved by the test. What only time shows (keep-alive, will
//! delay, session and message expiry, what survives a restart) runs here in
//! microseconds instead of seconds of real sleeping.
//!
//! [`Core`] plays the server's core loop (one tick a second, every commit
//! applied to a store at once) and each [`Peer`] plays a connection task:
//! it notes on its outbox when it waits for its client, as the connection
//! driver does, so the keep-alive sees what it sees in production.

mod admin;
mod expiry;
mod full_disk;
#[cfg(feature = "cluster")]
mod groups;
mod identity;
mod keep_alive;
mod restart;
mod retained;
mod roaming;
mod spill;
mod sys;
mod will;

use super::*;
use crate::clock::Clock;
use crate::codec::{ConnectProperties, LastWill, PacketId, Subscribe};
use roost_storage::{MemoryStore, Store};
use std::collections::VecDeque;
use std::time::Duration;

/// An arbitrary start, far from 0 so that nothing relies on small times.
const START_MS: u64 = 1_764_000_000_000;

/// How often the core ticks (the server's interval).
const TICK_MS: u64 = 1_000;

/// The core with its clock, its store and its tick.
pub(super) struct Core {
    pub broker: Broker,
    /// The virtual clock: moved only by [`Core::advance`].
    clock: Clock,
    next_tick: u64,
    next_conn: u64,
    /// Where commits go when the core is persistent.
    pub store: Arc<MemoryStore>,
    /// Pages of spilled queues read back so far.
    pub pages_read: usize,
    /// Reads of retained messages so far.
    pub retained_reads: usize,
}

/// One client's connection, as the core sees it.
pub(super) struct Peer {
    pub conn: ConnId,
    outbox: Arc<Outbox>,
    /// The core's clock, which the connection reads too.
    clock: Clock,
    /// Drained from the outbox, not yet looked at.
    got: VecDeque<Packet>,
    /// The outbox closed: nothing more will come.
    closed: bool,
}

impl Core {
    /// A core that persists nothing.
    pub(super) fn new(opts: Options) -> Self {
        Self::build(opts, None, Clock::manual(START_MS), 1)
    }

    /// A core that records its state in `store` (committed after every
    /// event and tick, as if the disk took no time), restoring what `store`
    /// already holds.
    pub(super) fn persistent(opts: Options, store: Arc<MemoryStore>) -> Self {
        Self::build(opts, Some(store), Clock::manual(START_MS), 1)
    }

    /// A core that records its state in `store`, with `hooks`.
    pub(super) fn persistent_with(opts: Options, store: Arc<MemoryStore>, hooks: Hooks) -> Self {
        Self::build_with(opts, hooks, Some(store), Clock::manual(START_MS), 1)
    }

    fn build(opts: Options, store: Option<Arc<MemoryStore>>, clock: Clock, next_conn: u64) -> Self {
        Self::build_with(opts, Hooks::default(), store, clock, next_conn)
    }

    fn build_with(
        opts: Options,
        hooks: Hooks,
        store: Option<Arc<MemoryStore>>,
        clock: Clock,
        next_conn: u64,
    ) -> Self {
        let persistent = store.is_some();
        let broker = Broker::new(opts, hooks, Arc::new(Stats::default()), persistent);
        let mut core = Core {
            broker,
            next_tick: clock.now_ms(),
            clock,
            next_conn,
            store: store.unwrap_or_default(),
            pages_read: 0,
            retained_reads: 0,
        };
        if persistent {
            let now = core.now();
            let mut restore = core.broker.restore(now);
            core.store
                .scan(&mut |record| {
                    restore.record(record);
                    Ok(())
                })
                .expect("the memory store scans");
            restore.finish();
            core.broker.restored(now);
            core.commit();
        }
        // The server's interval ticks at once, then every second.
        core.advance(Duration::ZERO);
        core
    }

    /// The virtual time, ms since the Unix epoch (the clock's monotonic
    /// reading moves with it).
    pub(super) fn now(&self) -> u64 {
        self.clock.now_ms()
    }

    /// Shuts this core down (its connections are closed, as by the server
    /// stopping) and starts a new one `downtime` later on the same store.
    pub(super) fn restart(mut self, opts: Options, downtime: Duration) -> Self {
        self.broker.shutdown(self.now());
        self.commit();
        self.clock.advance(downtime);
        Self::build(opts, Some(self.store), self.clock, self.next_conn)
    }

    /// Applies what the core recorded and releases the packets it held,
    /// as the commit task does; then reads the pages the core asked for, as
    /// the page reader does (every commit is written by then), and hands
    /// them back, and hands the core the refills its retained bursts asked
    /// for, until it asks for no more.
    pub(super) fn commit(&mut self) {
        loop {
            while let Some(mut commit) = self.broker.take_commit() {
                let ops: Vec<Op> = commit.ops.drain(..).map(|op| op.into_op()).collect();
                self.store.apply(&ops).expect("memory store applies");
                for outbox in &commit.outboxes {
                    outbox.release(commit.number, false);
                }
                self.broker.commit_progress().released(commit.number);
            }
            let requests = self.broker.take_page_requests();
            let reads = self.broker.take_retained_reads();
            let mut tokens = Vec::new();
            self.broker.refills().take(&mut tokens);
            if requests.is_empty() && reads.is_empty() && tokens.is_empty() {
                return;
            }
            for request in requests {
                self.pages_read += 1;
                let page = read_page(self.store.as_ref(), request);
                self.broker.page(page, self.now());
            }
            for request in reads {
                self.retained_reads += 1;
                // As the server's reader reads them (`server::reader`).
                let topics: Vec<&str> = request.topics.iter().map(String::as_str).collect();
                let records = self.store.retained_many(&topics);
                self.broker
                    .retained_page(RetainedPage { request, records }, self.now());
            }
            self.broker.refill(&tokens, self.now());
        }
    }

    fn handle(&mut self, event: Event) {
        self.broker.handle(event, self.clock.now());
        self.commit();
    }

    /// Moves the clock on by `by`, ticking the core on the way as the
    /// server's one-second interval would.
    pub(super) fn advance(&mut self, by: Duration) {
        let until = self.now() + ms(by);
        while self.next_tick <= until {
            self.clock
                .advance(Duration::from_millis(self.next_tick - self.now()));
            self.broker.tick(self.clock.now());
            self.commit();
            self.next_tick += TICK_MS;
        }
        self.clock
            .advance(Duration::from_millis(until - self.now()));
    }

    /// Moves the clock on in steps of `step` until `peer` is closed, and
    /// returns how long that took; panics past `limit`.
    pub(super) fn advance_until_closed(
        &mut self,
        peer: &mut Peer,
        step: Duration,
        limit: Duration,
    ) -> Duration {
        let from = self.now();
        while !peer.is_closed() {
            assert!(
                self.now() - from <= ms(limit),
                "still connected after {limit:?}"
            );
            self.advance(step);
        }
        Duration::from_millis(self.now() - from)
    }

    /// A connection sends `connect`; returns it with its CONNACK.
    pub(super) fn connect(&mut self, connect: Connect) -> (Peer, ConnAck) {
        self.connect_assigned(connect, false)
    }

    /// [`Core::connect`], saying whether the transport gave the client id
    /// to a CONNECT that had none (`Event::Connect::id_assigned`).
    pub(super) fn connect_assigned(
        &mut self,
        connect: Connect,
        id_assigned: bool,
    ) -> (Peer, ConnAck) {
        self.connect_client(connect, id_assigned, false)
    }

    /// An inline client connects (as the server's own do, a cluster's
    /// router among them).
    pub(super) fn connect_inline(&mut self, connect: Connect) -> Peer {
        let (peer, ack) = self.connect_client(connect, false, true);
        assert_eq!(ack.reason, ReasonCode::Success);
        peer
    }

    fn connect_client(
        &mut self,
        connect: Connect,
        id_assigned: bool,
        inline: bool,
    ) -> (Peer, ConnAck) {
        let conn = ConnId(self.next_conn);
        self.next_conn += 1;
        let protocol = connect.protocol;
        let outbox = Arc::new(Outbox::new(protocol, self.clock.mono_ms()));
        let client = Arc::new(Client {
            client_id: connect.client_id.clone(),
            username: None,
            remote_addr: None,
            certificate: None,
            protocol,
            inline,
        });
        // Busy with the CONNECT until the core has it, then waiting for the
        // client's next packet: the connection driver's order.
        outbox.heard();
        self.handle(Event::Connect {
            conn,
            outbox: outbox.clone(),
            connect: Box::new(connect),
            client,
            enhanced_auth: false,
            id_assigned,
        });
        outbox.listening(self.clock.mono_ms());
        let mut peer = Peer {
            conn,
            outbox,
            clock: self.clock.clone(),
            got: VecDeque::new(),
            closed: false,
        };
        match peer.recv() {
            Some(Packet::ConnAck(ack)) => (peer, ack),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    /// Connects, expecting success.
    pub(super) fn connected(&mut self, connect: Connect) -> Peer {
        let (peer, ack) = self.connect(connect);
        assert_eq!(ack.reason, ReasonCode::Success);
        peer
    }

    /// `peer`'s client sends `packet`, handled by the core but not yet
    /// committed (nor are the reads it asks for made): what happens before
    /// the next [`Core::commit`] happens in between.
    pub(super) fn send_uncommitted(&mut self, peer: &Peer, packet: Packet) {
        self.broker.handle(
            Event::Packet {
                conn: peer.conn,
                packet,
            },
            self.clock.now(),
        );
    }

    /// `peer`'s client sends `packet` (a PUBLISH as the connection hands it
    /// over when no hook needs to see it).
    pub(super) fn send(&mut self, peer: &Peer, packet: Packet) {
        peer.outbox.heard();
        self.handle(Event::Packet {
            conn: peer.conn,
            packet,
        });
        peer.outbox.listening(self.clock.mono_ms());
    }

    /// Publishes `p` from `peer`; returns the reason code of its
    /// acknowledgement (QoS 1; `Success` for QoS 0).
    pub(super) fn publish(&mut self, peer: &mut Peer, p: Publish) -> ReasonCode {
        let pid = p.qos_pid.packet_id();
        self.send(peer, Packet::Publish(p));
        let Some(pid) = pid else {
            return ReasonCode::Success;
        };
        match peer.recv() {
            Some(Packet::PubAck(r)) if r.packet_id == pid => r.reason,
            other => panic!("expected PUBACK {pid}, got {other:?}"),
        }
    }

    /// `peer` subscribes to `filter`; returns the SUBACK's reason.
    pub(super) fn subscribe(&mut self, peer: &mut Peer, filter: &str, qos: QoS) -> ReasonCode {
        let pid = PacketId::new(1).unwrap();
        let subscribe = Subscribe {
            packet_id: pid,
            filters: vec![(
                filter.into(),
                crate::codec::SubscriptionOptions {
                    qos,
                    ..Default::default()
                },
            )],
            subscription_identifier: None,
            user_properties: Vec::new(),
        };
        self.send(peer, Packet::Subscribe(subscribe));
        match peer.recv() {
            Some(Packet::SubAck(a)) if a.packet_id == pid => a.reasons[0],
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }

    /// Acknowledges a QoS 1 delivery, as the client would.
    pub(super) fn ack(&mut self, peer: &Peer, m: &Publish) {
        let pid = m.qos_pid.packet_id().expect("a QoS 1 delivery");
        self.send(peer, Packet::PubAck(PubResp::new(pid)));
    }

    /// The client sends DISCONNECT (normal) and closes its connection.
    pub(super) fn disconnect(&mut self, peer: Peer) {
        self.send(&peer, Packet::Disconnect(Disconnect::default()));
        self.drop_connection(peer);
    }

    /// The connection is lost without DISCONNECT.
    pub(super) fn drop_connection(&mut self, peer: Peer) {
        self.handle(Event::Closed {
            conn: peer.conn,
            reason: CloseReason::Lost,
        });
    }

    /// A 5.0 client subscribed to `filter` at QoS 1, to watch what is
    /// published.
    pub(super) fn watcher(&mut self, id: &str, filter: &str) -> Peer {
        self.subscriber(v5(id), filter)
    }

    /// A client connected with `connect` and subscribed to `filter` at
    /// QoS 1.
    pub(super) fn subscriber(&mut self, connect: Connect, filter: &str) -> Peer {
        let mut w = self.connected(connect);
        let reason = self.subscribe(&mut w, filter, QoS::AtLeastOnce);
        assert_eq!(reason, ReasonCode::GrantedQos1);
        w
    }
}

impl Peer {
    fn fill(&mut self) {
        let mut batch = VecDeque::new();
        let open = self.outbox.try_drain(self.clock.now_ms(), &mut batch);
        self.got
            .extend(batch.into_iter().filter_map(|o| o.into_packet()));
        self.closed |= !open;
    }

    /// The next packet the core sent this connection, if any.
    pub(super) fn recv(&mut self) -> Option<Packet> {
        if self.got.is_empty() {
            self.fill();
        }
        self.got.pop_front()
    }

    /// The next packet, which must be a PUBLISH.
    pub(super) fn recv_publish(&mut self) -> Publish {
        match self.recv() {
            Some(Packet::Publish(p)) => p,
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }

    /// Nothing was sent to this connection.
    pub(super) fn expect_nothing(&mut self) {
        let got = self.recv();
        assert!(got.is_none(), "expected nothing, got {got:?}");
    }

    /// The core closed this connection (what it sent before may still be
    /// unread).
    pub(super) fn is_closed(&mut self) -> bool {
        self.fill();
        self.closed
    }

    /// The reason of the DISCONNECT the core sent last before closing.
    pub(super) fn expect_disconnect(&mut self) -> ReasonCode {
        // A drain that takes the last packets may report the close only
        // on the next one.
        self.fill();
        self.fill();
        assert!(self.closed, "still open");
        match self.got.drain(..).last() {
            Some(Packet::Disconnect(d)) => d.reason,
            other => panic!("expected DISCONNECT before close, got {other:?}"),
        }
    }
}

/// A page as the server's reader reads it (spilled entries carry their
/// bodies, and restored ones are rewritten so, so no body is read apart).
fn read_page(store: &MemoryStore, request: PageRequest) -> Page {
    let entries = store
        .outbound_page(
            request.client_id.as_str(),
            Some(request.after_seq),
            request.limit,
        )
        .map(|entries| {
            entries
                .into_iter()
                .map(|(seq, entry)| {
                    assert!(
                        entry.message.is_some()
                            || entry.state != roost_storage::OutboundState::Queued,
                        "a queued entry past the window carries its body"
                    );
                    PageEntry {
                        seq,
                        entry,
                        body: None,
                    }
                })
                .collect()
        });
    Page { request, entries }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).expect("a test's durations are short")
}

/// A CONNECT as the socket tests build it (`tests/common`): keep-alive 60.
pub(super) fn connect(version: ProtocolVersion, client_id: &str, clean: bool) -> Connect {
    Connect {
        protocol: version,
        clean_start: clean,
        keep_alive: 60,
        client_id: client_id.into(),
        will: None,
        username: None,
        password: None,
        properties: ConnectProperties::default(),
    }
}

pub(super) fn v5(client_id: &str) -> Connect {
    connect(ProtocolVersion::V5, client_id, true)
}

pub(super) fn v311(client_id: &str) -> Connect {
    connect(ProtocolVersion::V3_1_1, client_id, true)
}

/// A 5.0 CONNECT with a Session Expiry Interval and the given Clean Start.
pub(super) fn v5_session(client_id: &str, clean: bool, expiry: u32) -> Connect {
    let mut c = connect(ProtocolVersion::V5, client_id, clean);
    c.properties.session_expiry_interval = Some(expiry);
    c
}

pub(super) fn will(topic: &str, payload: &str, qos: QoS, retain: bool) -> LastWill {
    LastWill {
        topic: topic.into(),
        payload: bytes::Bytes::copy_from_slice(payload.as_bytes()),
        qos,
        retain,
        properties: Default::default(),
    }
}

pub(super) fn publish(topic: &str, payload: &str, qos: QoS, pid: u16) -> Publish {
    Publish {
        dup: false,
        qos_pid: crate::codec::QosPid::new(qos, PacketId::new(pid.max(1)).unwrap()),
        retain: false,
        topic: topic.into(),
        payload: bytes::Bytes::copy_from_slice(payload.as_bytes()),
        properties: Default::default(),
    }
}

/// A PUBLISH with a Message Expiry Interval of `secs`.
pub(super) fn expiring(topic: &str, payload: &str, qos: QoS, pid: u16, secs: u32) -> Publish {
    let mut p = publish(topic, payload, qos, pid);
    p.properties.message_expiry_interval = Some(secs);
    p
}

pub(super) fn payload(p: &Publish) -> &str {
    std::str::from_utf8(&p.payload).expect("UTF-8 payload")
}

/// The harness itself: the clock only moves when told, and ticks come
/// once a second.
#[test]
fn the_core_ticks_once_a_second_of_virtual_time() {
    let mut core = Core::new(Options {
        sys_interval: Some(Duration::from_secs(1)),
        ..Options::default()
    });
    let mut w = core.watcher("w", "$SYS/broker/time");
    // Published at the first tick, as the server starts: retained.
    let m = w.recv_publish();
    assert_eq!(payload(&m), (START_MS / 1000).to_string());
    core.advance(Duration::from_millis(999));
    w.expect_nothing();
    core.advance(Duration::from_millis(1));
    let m = w.recv_publish();
    assert_eq!(payload(&m), ((START_MS + 1_000) / 1000).to_string());
}
