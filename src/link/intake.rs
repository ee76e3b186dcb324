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
//! publishes take no share: its host awaits each one.) It deals in bytes
//! and shares only: the reader says how many bytes an event holds, and
//! the event carries its share to the core.

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
pub(crate) struct Share(u32);

impl Share {
    /// Its size in KiB, for [`Intake::release`].
    pub(crate) fn kib(self) -> u32 {
        self.0
    }
}

impl Intake {
    /// The share for PUBLISHes of `bytes` (topics and payloads: what
    /// reading them holds) if it is there now; `None` if it must be waited
    /// for ([`Intake::take`]). Nothing to hold takes an empty share.
    pub(crate) fn try_take(&self, bytes: usize) -> Option<Share> {
        let kib = kib(bytes);
        if kib == 0 {
            return Some(Share(0));
        }
        let permit = self.0.try_acquire_many(kib).ok()?;
        permit.forget();
        Some(Share(kib))
    }

    /// The share for PUBLISHes of `bytes`, waiting for it if need be.
    /// Once the intake is closed it waits no more (and takes no share).
    pub(crate) async fn take(&self, bytes: usize) -> Share {
        let kib = kib(bytes);
        if kib > 0 {
            if let Ok(permit) = self.0.acquire_many(kib).await {
                permit.forget();
                return Share(kib);
            }
        }
        Share(0)
    }

    /// The core has stopped: readers waiting for a share go on (to find
    /// the core's queue closed).
    pub(crate) fn close(&self) {
        self.0.close();
    }

    /// Gives back shares the core is done with (the sum of their
    /// [`Share::kib`]).
    pub(crate) fn release(&self, kib: u32) {
        if kib > 0 {
            self.0.add_permits(kib as usize);
        }
    }

    /// KiB of budget free now.
    #[cfg(test)]
    pub(crate) fn available(&self) -> usize {
        self.0.available_permits()
    }
}

/// The KiB PUBLISHes of `bytes` need, rounded up, and never more than the
/// whole budget (a PUBLISH larger than it waits for all of it).
fn kib(bytes: usize) -> u32 {
    let kib = bytes.div_ceil(1024);
    u32::try_from(kib).unwrap_or(u32::MAX).min(BUDGET_KIB)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_share_is_the_publishes_kib_rounded_up_and_at_most_the_budget() {
        assert_eq!(kib(1), 1);
        assert_eq!(kib(1 + 1023), 1);
        assert_eq!(kib(1 + 1024), 2);
        assert_eq!(kib(1 + (64 << 20)), BUDGET_KIB);
        assert_eq!(kib(2 * (1 + 1000)), 2);
        assert_eq!(kib(0), 0);
        let intake = Intake::default();
        assert_eq!(intake.try_take(0), Some(Share(0)));
        assert_eq!(intake.available(), BUDGET_KIB as usize);
    }

    #[test]
    fn the_share_comes_back_when_the_core_releases_it() {
        let intake = Intake::default();
        let a = intake.try_take(1 + 600 * 1024).unwrap();
        assert_eq!(a.kib(), 601);
        assert_eq!(intake.available(), BUDGET_KIB as usize - 601);
        // Not enough left for a second one; what holds nothing passes.
        assert_eq!(intake.try_take(1 + 600 * 1024), None);
        assert!(intake.try_take(0).is_some());
        intake.release(a.kib());
        assert_eq!(intake.available(), BUDGET_KIB as usize);
        let b = intake.try_take(1 + 600 * 1024).unwrap();
        intake.release(b.kib());
        assert_eq!(intake.available(), BUDGET_KIB as usize);
    }

    #[tokio::test]
    async fn a_reader_waits_for_the_core_to_route_what_is_held() {
        let intake = Arc::new(Intake::default());
        // Larger than the whole budget: it takes all of it, not more.
        let big = intake.take(1 + (5 << 20)).await;
        assert_eq!(intake.available(), 0);
        let waiter = {
            let intake = intake.clone();
            tokio::spawn(async move { intake.take(1 + 10).await.kib() })
        };
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "no budget left, yet it went on");
        intake.release(big.kib());
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
        let _all = intake.take(1 + (5 << 20)).await;
        let waiter = {
            let intake = intake.clone();
            tokio::spawn(async move { intake.take(1 + 10).await.kib() })
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
