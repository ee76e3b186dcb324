//! The receiving side of the durability tests: a subscriber that records
//! what it got across connections and keeps its end of QoS 2.

use super::{payload, Raw};
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
