//! An event's share of the intake budget ([`crate::link::intake`]): the
//! reader asks the event how many PUBLISH bytes it holds and takes a share
//! for them; the event carries the share to the core, which gives it back
//! once it has routed the event.

use super::{Event, Share};
use crate::codec::Packet;

impl Event {
    /// Bytes of PUBLISH topics and payloads it holds (read buffers kept
    /// alive until the core routes it).
    pub(crate) fn publish_bytes(&self) -> usize {
        match self {
            Event::Publish { publish, .. } => publish.topic.len() + publish.payload.len(),
            Event::Packets { packets, .. } => packets
                .iter()
                .map(|p| match p {
                    Packet::Publish(p) => p.topic.len() + p.payload.len(),
                    _ => 0,
                })
                .sum(),
            _ => 0,
        }
    }

    /// It, holding `share` (an event without PUBLISHes holds none).
    pub(crate) fn holding(mut self, share: Share) -> Self {
        if let Event::Publish { held, .. } | Event::Packets { held, .. } = &mut self {
            *held = share;
        }
        self
    }

    /// The share it holds.
    pub(crate) fn held(&self) -> Share {
        match self {
            Event::Publish { held, .. } | Event::Packets { held, .. } => *held,
            _ => Share::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::{CloseReason, ConnId};
    use crate::codec::{PubResp, Publish, PublishProperties, QosPid};
    use crate::hooks::PublishVerdict;
    use crate::link::intake::{Intake, BUDGET_KIB};
    use bytes::Bytes;
    use std::num::NonZeroU16;

    fn publish(payload: usize) -> Publish {
        Publish {
            dup: false,
            qos_pid: QosPid::AtMostOnce,
            retain: false,
            topic: "t".into(),
            payload: Bytes::from(vec![0u8; payload]),
            properties: PublishProperties::default(),
        }
    }

    fn single(payload: usize) -> Event {
        Event::Publish {
            conn: ConnId(1),
            publish: publish(payload),
            verdict: PublishVerdict::Deliver,
            held: Share::default(),
        }
    }

    /// What the event holds, as the intake takes it.
    fn share(event: &Event) -> u32 {
        let intake = Intake::default();
        intake.try_take(event.publish_bytes()).unwrap().kib()
    }

    #[test]
    fn a_share_is_the_publishes_kib_rounded_up_and_at_most_the_budget() {
        assert_eq!(share(&single(0)), 1);
        assert_eq!(share(&single(1023)), 1);
        assert_eq!(share(&single(1024)), 2);
        assert_eq!(share(&single(64 << 20)), BUDGET_KIB);
        let pid = NonZeroU16::new(1).unwrap();
        let batch = Event::Packets {
            conn: ConnId(1),
            packets: vec![
                Packet::Publish(publish(1000)),
                Packet::PubAck(PubResp::new(pid)),
                Packet::Publish(publish(1000)),
            ],
            held: Share::default(),
        };
        assert_eq!(share(&batch), 2);
        let acks = Event::Packets {
            conn: ConnId(1),
            packets: vec![Packet::PubAck(PubResp::new(pid))],
            held: Share::default(),
        };
        assert_eq!(share(&acks), 0);
        let closed = Event::Closed {
            conn: ConnId(1),
            reason: CloseReason::Lost,
        };
        assert_eq!(share(&closed), 0);
    }

    #[test]
    fn the_share_travels_with_the_event() {
        let intake = Intake::default();
        let event = single(600 * 1024);
        let share = intake.try_take(event.publish_bytes()).unwrap();
        let event = event.holding(share);
        assert_eq!(event.held().kib(), 601);
        let closed = Event::Closed {
            conn: ConnId(1),
            reason: CloseReason::Lost,
        }
        .holding(share);
        assert_eq!(closed.held(), Share::default(), "nothing to hold");
        intake.release(event.held().kib());
        assert_eq!(intake.available(), BUDGET_KIB as usize);
    }
}
