//! The receiving side of the durability tests: a subscriber that records
//! what it got across connections and keeps its end of QoS 2; and the
//! bridge tests' waits on a bridge's figures.

use super::{payload, Raw, TestBroker};
use roost::codec::{Packet, PubResp, QosPid};
use std::collections::{HashMap, HashSet};
use std::time::Duration;

/// What a subscriber received, across connections: every payload with how
/// many times it was delivered, and the QoS 2 packet ids it answered with
/// PUBREC and has not seen PUBREL for (a PUBLISH resent under such an id
/// is the same delivery: the receiver's side of exactly once).
#[derive(Default)]
pub(crate) struct Received {
    pub seen: HashMap<String, usize>,
    pub open_qos2: HashSet<u16>,
}

/// Receives and acknowledges, recording into `got`, until the connection
/// ends or stays quiet for `quiet`.
pub(crate) async fn receive_until_gone(mut s: Raw, got: &mut Received, quiet: Duration) {
    while let Some(packet) = s.recv_within(quiet).await {
        let ok = match packet {
            Packet::Publish(m) => match m.qos_pid {
                QosPid::AtLeastOnce(pid) => {
                    *got.seen.entry(payload(&m).to_owned()).or_default() += 1;
                    s.try_send(Packet::PubAck(PubResp::new(pid))).await
                }
                QosPid::ExactlyOnce(pid) => {
                    if got.open_qos2.insert(pid.get()) {
                        *got.seen.entry(payload(&m).to_owned()).or_default() += 1;
                    }
                    s.try_send(Packet::PubRec(PubResp::new(pid))).await
                }
                QosPid::AtMostOnce => true,
            },
            Packet::PubRel(r) => {
                got.open_qos2.remove(&r.packet_id.get());
                s.try_send(Packet::PubComp(PubResp::new(r.packet_id))).await
            }
            other => panic!("unexpected {other:?}"),
        };
        if !ok {
            return;
        }
    }
}

/// Receives `n` messages as a subscriber that keeps up (acknowledging
/// each at once, QoS 2 flows interleaved); their payloads in order.
pub(crate) async fn take(c: &mut Raw, n: usize) -> Vec<String> {
    let mut got = Vec::new();
    while got.len() < n {
        match c.recv().await {
            Packet::Publish(p) => {
                got.push(payload(&p).to_owned());
                match p.qos_pid {
                    QosPid::AtMostOnce => {}
                    QosPid::AtLeastOnce(pid) => c.send(Packet::PubAck(PubResp::new(pid))).await,
                    QosPid::ExactlyOnce(pid) => c.send(Packet::PubRec(PubResp::new(pid))).await,
                }
            }
            Packet::PubRel(r) => c.send(Packet::PubComp(PubResp::new(r.packet_id))).await,
            other => panic!("unexpected {other:?}"),
        }
    }
    got
}

/// Completes the QoS 2 flows [`take`] left open; panics on any further
/// message (a duplicate).
pub(crate) async fn finish(c: &mut Raw) {
    while let Some(p) = c.recv_within(Duration::from_millis(500)).await {
        match p {
            Packet::PubRel(r) => c.send(Packet::PubComp(PubResp::new(r.packet_id))).await,
            other => panic!("nothing more expected: {other:?}"),
        }
    }
}

/// A subscriber that takes its QoS 1 messages slowly, on a task of its
/// own: it waits `pause` before acknowledging each, until it has `n`
/// distinct ones (told apart by their payload's first 6 bytes) or nothing
/// came for 30 s. The task's result: the distinct messages it got.
pub(crate) fn slow_reader(
    mut sub: Raw,
    n: usize,
    pause: Duration,
) -> tokio::task::JoinHandle<std::collections::BTreeSet<String>> {
    tokio::spawn(async move {
        let mut got = std::collections::BTreeSet::new();
        while got.len() < n {
            let Some(p) = sub.recv_within(Duration::from_secs(30)).await else {
                break;
            };
            let Packet::Publish(p) = p else { continue };
            got.insert(payload(&p)[..6].to_owned());
            tokio::time::sleep(pause).await;
            sub.ack(&p).await;
        }
        got
    })
}

/// How long [`settled`] waits: a bridge may be between reconnect attempts.
const SETTLE_WAIT: Duration = Duration::from_secs(15);

/// The first bridge's stats once `done` says so (some are sampled about
/// once a second); panics with them after [`SETTLE_WAIT`].
pub(crate) async fn settled(
    b: &TestBroker,
    done: impl Fn(&roost::BridgeSnapshot) -> bool,
) -> roost::BridgeSnapshot {
    let deadline = tokio::time::Instant::now() + SETTLE_WAIT;
    loop {
        // The list is empty until the bridge's task has started.
        let s = b.stats.snapshot().bridges.first().cloned();
        if let Some(s) = s.as_ref().filter(|s| done(s)) {
            return s.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "bridge stats did not settle: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
