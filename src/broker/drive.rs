//! Drives the broker core with a sequence of operations read from bytes
//! (several clients connecting, publishing, subscribing, acknowledging,
//! dropping their connections, time passing, keep-alives running out) and
//! checks, after every step, what must always hold:
//!
//! - every packet that asks for an answer (QoS 1/2 PUBLISH, PUBREL,
//!   SUBSCRIBE, UNSUBSCRIBE, PINGREQ) gets it, or its connection is closed;
//! - what a session holds stays within the limits: queued messages (count
//!   and bytes, the subscription burst aside) and subscription filters;
//! - no client receives a message the ACL refuses it (here: client `c1`
//!   may not receive `secret/...`), whatever path created the delivery
//!   (publish, will, retained, shared subscription, session resume);
//! - and nothing panics.
//!
//! The unit tests run it on random input; `fuzz/fuzz_targets/core.rs`
//! runs it under cargo-fuzz (`--cfg fuzzing` exposes [`run`]).

use super::*;
use crate::codec::{
    ConnectProperties, Decoder, LastWill, PacketId, QosPid, Subscribe, SubscriptionOptions,
    Unsubscribe,
};
use crate::config::Limits;
use crate::hooks::{AclHook, Decision};
use crate::link::outbound::AckKind;
use std::collections::VecDeque;
use std::num::NonZeroU16;

const CLIENTS: u8 = 4;
const TOPICS: [&str; 6] = ["a", "a/b", "c", "secret/x", "secret/y/z", "$SYS/x"];
const FILTERS: [&str; 8] = [
    "#",
    "a/#",
    "+/b",
    "secret/#",
    "$share/g/a/#",
    "$share/g/secret/#",
    "c",
    "+",
];

/// Client `c1` may not read `secret/...`.
struct NoSecretsForC1;

impl AclHook for NoSecretsForC1 {
    fn can_receive(&self, client: &Client, message: &Message) -> Decision {
        if client.client_id.as_str() == "c1" && message.topic.starts_with("secret/") {
            Decision::Deny
        } else {
            Decision::Defer
        }
    }
}

/// The fuzz input, a byte at a time; zeros once it runs out.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }

    fn pick<'s>(&mut self, from: &[&'s str]) -> &'s str {
        from[usize::from(self.byte()) % from.len()]
    }

    fn qos(&mut self) -> QoS {
        QoS::from_u8(self.byte() % 3).unwrap_or_default()
    }

    fn pid(&mut self) -> PacketId {
        NonZeroU16::new(u16::from(self.byte() % 8) + 1).unwrap_or(PacketId::MIN)
    }
}

/// A client as the driver plays it.
struct Player {
    conn: Option<(ConnId, Arc<Outbox>, ProtocolVersion)>,
    /// Packet ids of QoS 1/2 deliveries it got and has not acknowledged.
    unacked: Vec<(PacketId, QoS)>,
}

/// What a run did, so a test can tell it exercised something.
// `pub` for `roost::fuzzing`, which re-exports it under `--cfg fuzzing`.
#[derive(Debug, Default)]
#[cfg_attr(not(fuzzing), allow(unreachable_pub))]
pub struct Summary {
    /// PUBLISHes delivered to clients.
    pub deliveries: usize,
    /// Answers awaited and found (or excused by a closed connection).
    pub answers: usize,
}

/// Runs the operations `data` describes; panics if an invariant breaks.
#[cfg_attr(not(fuzzing), allow(unreachable_pub))]
pub fn run(data: &[u8]) -> Summary {
    let mut summary = Summary::default();
    let mut opts = Options::default();
    opts.limits.maximum_queued_messages = 8;
    opts.limits.maximum_queued_bytes = 256;
    opts.limits.maximum_subscription_bytes = 40;
    opts.limits.maximum_inflight = 2;
    opts.limits.maximum_retained_bytes = 600;
    opts.sys_interval = None;
    let limits = opts.limits.clone();
    let mut hooks = Hooks::default();
    hooks.acl.push(Arc::new(NoSecretsForC1));
    let mut broker = Broker::new(opts, hooks, Arc::new(Stats::default()), false);
    let mut players: Vec<Player> = (0..CLIENTS)
        .map(|_| Player {
            conn: None,
            unacked: Vec::new(),
        })
        .collect();
    let mut next_conn = 1;
    let mut now = 1_000_000;
    let mut input = Input(data);
    while !input.0.is_empty() {
        let k = input.byte() % CLIENTS;
        let op = input.byte() % 9;
        let client_id = format!("c{k}");
        let p = &mut players[usize::from(k)];
        // What the operation asks to be answered: (packet type, id).
        let mut expect: Option<(&str, Option<PacketId>)> = None;
        match (op, &p.conn) {
            (0, _) => {
                if let Some((conn, ..)) = p.conn.take() {
                    broker.handle(
                        Event::Closed {
                            conn,
                            reason: CloseReason::Lost,
                        },
                        at(now),
                    );
                }
                let protocol = match input.byte() % 3 {
                    0 => ProtocolVersion::V3_1,
                    1 => ProtocolVersion::V3_1_1,
                    _ => ProtocolVersion::V5,
                };
                let flags = input.byte();
                let will = (flags & 2 != 0).then(|| LastWill {
                    topic: input.pick(&TOPICS).into(),
                    payload: bytes::Bytes::from_static(b"will"),
                    qos: input.qos(),
                    retain: flags & 4 != 0,
                    properties: Default::default(),
                });
                let connect = Connect {
                    protocol,
                    clean_start: flags & 1 != 0,
                    // A 1 s keep-alive, for the time steps to end.
                    keep_alive: u16::from(flags & 8 != 0),
                    client_id: client_id.as_str().into(),
                    will,
                    username: None,
                    password: None,
                    properties: ConnectProperties {
                        session_expiry_interval: Some(u32::from(flags >> 4) * 10),
                        receive_maximum: NonZeroU16::new(u16::from(flags >> 6) + 1),
                        ..Default::default()
                    },
                };
                let conn = ConnId(next_conn);
                next_conn += 1;
                let outbox = Arc::new(Outbox::new(protocol, now));
                let client = Arc::new(Client {
                    client_id: client_id.as_str().into(),
                    username: None,
                    remote_addr: None,
                    certificate: None,
                    protocol,
                    inline: false,
                });
                broker.handle(
                    Event::Connect {
                        conn,
                        outbox: outbox.clone(),
                        connect: Box::new(connect),
                        client,
                        enhanced_auth: false,
                        id_assigned: false,
                    },
                    at(now),
                );
                p.conn = Some((conn, outbox, protocol));
                p.unacked.clear();
                expect = Some(("CONNACK", None));
            }
            (1, Some((conn, _, version))) => {
                // Raw bytes, decoded as the connection would.
                let len = usize::from(input.byte()).min(input.0.len());
                let (raw, rest) = input.0.split_at(len);
                input.0 = rest;
                let mut buf = bytes::BytesMut::from(raw);
                let mut decoder = Decoder::with_version(1 << 16, *version);
                let conn = *conn;
                while let Ok(Some(packet)) = decoder.decode(&mut buf) {
                    if matches!(&packet, Packet::Publish(p) if p.topic.is_empty()) {
                        continue; // An alias: the connection resolves it.
                    }
                    broker.handle(Event::Packet { conn, packet }, at(now));
                }
            }
            (2, Some((conn, ..))) => {
                let qos = input.qos();
                let pid = input.pid();
                let publish = Publish {
                    dup: false,
                    qos_pid: QosPid::new(qos, pid),
                    retain: input.byte() % 4 == 0,
                    topic: input.pick(&TOPICS).into(),
                    payload: bytes::Bytes::from(vec![b'x'; usize::from(input.byte() % 40)]),
                    properties: Default::default(),
                };
                broker.handle(
                    Event::Publish {
                        conn: *conn,
                        publish,
                        verdict: PublishVerdict::Deliver,
                        held: Share::default(),
                    },
                    at(now),
                );
                expect = match qos {
                    QoS::AtMostOnce => None,
                    QoS::AtLeastOnce => Some(("PUBACK", Some(pid))),
                    QoS::ExactlyOnce => Some(("PUBREC", Some(pid))),
                };
            }
            (3, Some((conn, ..))) => {
                let pid = input.pid();
                let subscribe = Subscribe {
                    packet_id: pid,
                    filters: vec![(
                        input.pick(&FILTERS).into(),
                        SubscriptionOptions {
                            qos: input.qos(),
                            ..Default::default()
                        },
                    )],
                    subscription_identifier: None,
                    user_properties: Vec::new(),
                };
                let packet = Packet::Subscribe(subscribe);
                let conn = *conn;
                broker.handle(Event::Packet { conn, packet }, at(now));
                expect = Some(("SUBACK", Some(pid)));
            }
            (4, Some((conn, ..))) => {
                let pid = input.pid();
                let packet = Packet::Unsubscribe(Unsubscribe {
                    packet_id: pid,
                    filters: vec![input.pick(&FILTERS).into()],
                    user_properties: Vec::new(),
                });
                let conn = *conn;
                broker.handle(Event::Packet { conn, packet }, at(now));
                expect = Some(("UNSUBACK", Some(pid)));
            }
            (5, Some((conn, ..))) => {
                // Acknowledge what was received, as a client would.
                let conn = *conn;
                for (pid, qos) in std::mem::take(&mut p.unacked) {
                    let packet = match qos {
                        QoS::ExactlyOnce => Packet::PubRec(PubResp::new(pid)),
                        _ => Packet::PubAck(PubResp::new(pid)),
                    };
                    broker.handle(Event::Packet { conn, packet }, at(now));
                }
            }
            (6, Some((conn, ..))) => {
                let conn = *conn;
                let packet = if input.byte() % 2 == 0 {
                    expect = Some(("PINGRESP", None));
                    Packet::PingReq
                } else {
                    let pid = input.pid();
                    expect = Some(("PUBCOMP", Some(pid)));
                    Packet::PubRel(PubResp::new(pid))
                };
                broker.handle(Event::Packet { conn, packet }, at(now));
            }
            (7, Some((conn, ..))) => {
                let conn = *conn;
                let reason = if input.byte() % 2 == 0 {
                    let packet = Packet::Disconnect(Disconnect::default());
                    broker.handle(Event::Packet { conn, packet }, at(now));
                    None
                } else {
                    Some(CloseReason::Lost)
                };
                if let Some(reason) = reason {
                    broker.handle(Event::Closed { conn, reason }, at(now));
                }
                p.conn = None;
            }
            (8, _) => {
                now += u64::from(input.byte()) * 1000;
                broker.tick(at(now));
            }
            _ => {}
        }
        // The client's connection waits for it again (see `keepalive`).
        if let Some((_, outbox, _)) = &players[usize::from(k)].conn {
            outbox.listening(now);
        }
        check(
            &mut broker,
            &mut players,
            k,
            expect,
            &limits,
            now,
            &mut summary,
        );
    }
    summary
}

/// The time at `ms`, on one clock for both readings: the driver stamps
/// the outboxes with the same number.
fn at(ms: u64) -> Now {
    Now { ms, mono_ms: ms }
}

/// Reads every client's outbox and checks the invariants.
fn check(
    broker: &mut Broker,
    players: &mut [Player],
    actor: u8,
    expect: Option<(&str, Option<PacketId>)>,
    limits: &Limits,
    now: u64,
    summary: &mut Summary,
) {
    for (k, p) in players.iter_mut().enumerate() {
        let Some((conn, outbox, _)) = &p.conn else {
            continue;
        };
        let mut got = VecDeque::new();
        outbox.try_drain(now, &mut got);
        let mut answered = false;
        for packet in got {
            if let Outbound::Deliver(d) = &packet {
                summary.deliveries += 1;
                assert!(
                    !(k == 1 && d.msg.topic.starts_with("secret/")),
                    "c1 received {} despite the ACL",
                    d.msg.topic
                );
                if let Some(pid) = d.qos_pid.packet_id() {
                    p.unacked.push((pid, d.qos_pid.qos()));
                }
            }
            let Some((name, pid)) = expect.filter(|_| k == usize::from(actor)) else {
                continue;
            };
            let (got_name, got_pid) = answer(&packet);
            answered |= got_name == name && (pid.is_none() || got_pid == pid);
        }
        if k == usize::from(actor) {
            if let Some((name, pid)) = expect {
                let alive = broker.conns.contains_key(conn);
                assert!(
                    answered || !alive,
                    "c{k} got no {name} {pid:?} and is still connected"
                );
                summary.answers += 1;
            }
        }
        if !broker.conns.contains_key(conn) {
            p.conn = None;
        }
    }
    // Retained bursts that ran low get their next page (their outboxes are
    // read at the next step).
    let mut tokens = Vec::new();
    broker.refills().take(&mut tokens);
    broker.refill(&tokens, now);
    let mut retained = 0;
    broker
        .retained
        .tree
        .for_each_match("#", |_, e| retained += e.cost());
    assert_eq!(retained, broker.retained.bytes, "retained bytes accounted");
    broker.retained.check_accounts();
    assert!(
        retained <= limits.maximum_retained_bytes,
        "{retained} retained bytes"
    );
    for s in broker.sessions.values() {
        assert!(s.subscriptions.bytes() <= limits.maximum_subscription_bytes);
        if let Some(f) = s.flows() {
            assert!(f.bytes <= limits.maximum_queued_bytes, "{} bytes", f.bytes);
            let queued = f.queue.len() - f.burst_queued + f.spill.count;
            let bound = limits
                .maximum_queued_messages
                .max(4 * limits.maximum_queued_messages.min(10_000));
            assert!(queued <= bound, "{queued} queued");
            assert!(f.spill.bytes <= f.bytes, "spilled bytes within the total");
        }
    }
}

/// What an outbound packet is, and the packet id it answers (if any).
fn answer(packet: &Outbound) -> (&'static str, Option<PacketId>) {
    match packet {
        Outbound::Ack(kind, pid, _) => {
            let name = match kind {
                AckKind::Ack => "PUBACK",
                AckKind::Rec => "PUBREC",
                AckKind::Rel => "PUBREL",
                AckKind::Comp => "PUBCOMP",
            };
            (name, Some(*pid))
        }
        Outbound::Other(p) => {
            let pid = match &**p {
                Packet::PubAck(r) | Packet::PubRec(r) | Packet::PubComp(r) => Some(r.packet_id),
                Packet::SubAck(a) => Some(a.packet_id),
                Packet::UnsubAck(a) => Some(a.packet_id),
                _ => None,
            };
            (p.name(), pid)
        }
        other => (other.name(), None),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// The core keeps its invariants whatever several clients do.
        #[test]
        fn the_core_keeps_its_invariants(data in proptest::collection::vec(any::<u8>(), 0..1500)) {
            let _ = super::run(&data);
        }
    }

    /// A fixed scenario through every kind of operation: connect, subscribe
    /// to everything, publish retained and live at every QoS, drop, resume.
    #[test]
    fn a_scripted_run_keeps_the_invariants() {
        let mut data = Vec::new();
        for k in 0..4u8 {
            data.extend([k, 0, 2, 0b0011_0010, 3, 1]); // v5, a will, expiry 30
            data.extend([k, 3, 1, 0, 2]); // subscribe "#" at QoS 2
        }
        for i in 0..60u8 {
            data.extend([i % 4, 2, i % 3, i, 0, i % 6, i]); // publish
            data.extend([(i + 1) % 4, 5]); // acknowledge
            if i % 7 == 0 {
                data.extend([i % 4, 7, 1]); // drop the connection
                data.extend([i % 4, 0, 2, 0b0011_0000]); // and come back
            }
        }
        data.extend([0, 8, 100]);
        let summary = super::run(&data);
        assert!(summary.deliveries > 80, "{summary:?}");
        assert!(summary.answers > 50, "{summary:?}");
    }
}
