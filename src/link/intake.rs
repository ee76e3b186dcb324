//! A bound on the bytes of PUBLISHes read but not yet routed by the core.
//!
//! The core's event queue is bounded in events, and one event can carry a
//! batch of PUBLISHes, each holding (by reference) the read buffer it was
//! decoded from. Under a burst from many publishers the queue filled with
//! batches: measured, that queue was most of the broker's peak memory (50
//! publisher/subscriber pairs at 1 KiB: peak RSS 33-43 MiB, 18-20 MiB with
//! the queue a quarter as long). Bounding the queue by events alone either
//! holds too much payload or starves the small events (acknowledgements
//! from many subscribers) that keep QoS 1 flowing, so payload gets its
//! own budget: a reader takes a share of [`BUDGET_KIB`] for each event
//! with PUBLISHes, the core gives it back once it has routed the event,
//! and a reader waits when the budget is spent. (The inline client's
//! publishes take no share: its host awaits each one.)

use crate::broker::Event;
use crate::codec::Packet;
use tokio::sync::Semaphore;

/// KiB of PUBLISH topics and payloads that may wait for the core.
pub(crate) const BUDGET_KIB: u32 = 1024;

/// The budget, shared by every connection and the core.
#[derive(Debug)]
pub(crate) struct Intake(Semaphore);

impl Default for Intake {
    fn default() -> Self {
        Intake(Semaphore::new(BUDGET_KIB as usize))
    }
}

/// The share of the budget an event holds, in KiB; the core gives it
/// back ([`Intake::release`]) once it has routed the event. A plain
/// number rather than a permit that releases itself on drop: the core
/// gives back the shares of many events at once, one lock instead of one
/// per event.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Share(u32);

impl Intake {
    /// Puts the event's share in it if the share is there now; `Err` gives
    /// the event back, for [`Intake::hold`].
    // Like the channel's `TrySendError`, the event comes back by value.
    #[allow(clippy::result_large_err)]
    pub fn try_hold(&self, mut event: Event) -> Result<Event, Event> {
        let kib = share(&event);
        if kib == 0 {
            return Ok(event);
        }
        match self.0.try_acquire_many(kib) {
            Ok(permit) => {
                permit.forget();
                set(&mut event, kib);
                Ok(event)
            }
            Err(_) => Err(event),
        }
    }

    /// Puts the event's share in it, waiting for the share if need be.
    /// Once the intake is closed it waits no more (and takes no share).
    pub async fn hold(&self, mut event: Event) -> Event {
        let kib = share(&event);
        if kib > 0 {
            if let Ok(permit) = self.0.acquire_many(kib).await {
                permit.forget();
                set(&mut event, kib);
            }
        }
        event
    }

    /// The core has stopped: readers waiting for a share go on (to find
    /// the core's queue closed).
    pub fn close(&self) {
        self.0.close();
    }

    /// Gives back shares the core is done with (the sum of [`held`]).
    pub fn release(&self, kib: u32) {
        if kib > 0 {
            self.0.add_permits(kib as usize);
        }
    }

    /// KiB of budget free now.
    #[cfg(test)]
    pub fn available(&self) -> usize {
        self.0.available_permits()
    }
}

/// The share an event holds.
pub(crate) fn held(event: &Event) -> u32 {
    match event {
        Event::Publish { held, .. } | Event::Packets { held, .. } => held.0,
        _ => 0,
    }
}

/// The KiB an event needs: its PUBLISHes' topics and payloads, rounded up,
/// and never more than the whole budget (a PUBLISH larger than it waits
/// for all of it).
fn share(event: &Event) -> u32 {
    let bytes = match event {
        Event::Publish { publish, .. } => publish.topic.len() + publish.payload.len(),
        Event::Packets { packets, .. } => packets
            .iter()
            .map(|p| match p {
                Packet::Publish(p) => p.topic.len() + p.payload.len(),
                _ => 0,
            })
            .sum(),
        _ => 0,
    };
    let kib = bytes.div_ceil(1024);
    u32::try_from(kib).unwrap_or(u32::MAX).min(BUDGET_KIB)
}

fn set(event: &mut Event, kib: u32) {
    if let Event::Publish { held, .. } | Event::Packets { held, .. } = event {
        *held = Share(kib);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::ConnId;
    use crate::codec::{PubResp, Publish, PublishProperties, QosPid};
    use crate::hooks::PublishVerdict;
    use bytes::Bytes;
    use std::num::NonZeroU16;
    use std::sync::Arc;

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
    }

    #[test]
    fn the_share_comes_back_when_the_core_releases_it() {
        let intake = Intake::default();
        let a = intake.try_hold(single(600 * 1024)).unwrap();
        assert_eq!(held(&a), 601);
        assert_eq!(intake.available(), BUDGET_KIB as usize - 601);
        // Not enough left for a second one; events without PUBLISH pass.
        let b = intake.try_hold(single(600 * 1024)).unwrap_err();
        assert!(intake
            .try_hold(Event::Closed {
                conn: ConnId(1),
                reason: crate::broker::CloseReason::Lost,
            })
            .is_ok());
        intake.release(held(&a));
        assert_eq!(intake.available(), BUDGET_KIB as usize);
        let b = intake.try_hold(b).unwrap();
        intake.release(held(&b));
        assert_eq!(intake.available(), BUDGET_KIB as usize);
    }

    #[tokio::test]
    async fn a_reader_waits_for_the_core_to_route_what_is_held() {
        let intake = Arc::new(Intake::default());
        // Larger than the whole budget: it takes all of it, not more.
        let big = intake.hold(single(5 << 20)).await;
        assert_eq!(intake.available(), 0);
        let waiter = {
            let intake = intake.clone();
            tokio::spawn(async move { held(&intake.hold(single(10)).await) })
        };
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "no budget left, yet it went on");
        intake.release(held(&big));
        let small = tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("the released budget let it go on")
            .unwrap();
        assert_eq!(small, 1);
        assert_eq!(intake.available(), BUDGET_KIB as usize - 1);
    }

    #[tokio::test]
    async fn closing_lets_waiting_readers_go() {
        let intake = Arc::new(Intake::default());
        let _all = intake.hold(single(5 << 20)).await;
        let waiter = {
            let intake = intake.clone();
            tokio::spawn(async move { held(&intake.hold(single(10)).await) })
        };
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        intake.close();
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("closing let it go on")
            .unwrap();
        assert_eq!(got, 0, "no share taken after closing");
    }
}
