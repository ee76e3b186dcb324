//! The write-progress deadline: a connection that has bytes to write and
//! whose stream has accepted none of them for `limits.write_timeout` is
//! closed.
//!
//! A client that stops reading (or a half-dead peer whose TCP window stays
//! at zero) would otherwise keep its connection, its socket buffers, its
//! outbox and its session's in-flight window for good: the keep-alive does
//! not see it while the broker's reads are stopped, and the kernel keeps
//! probing a zero window forever. Only progress counts, not speed: the
//! deadline restarts at every byte the stream takes, so a subscriber on a
//! slow link working through a large backlog is never cut off.
//!
//! Cheap on the hot path: nothing happens while writes complete. The
//! deadline is armed (one clock read) only when a write would block with
//! bytes left, and disarmed (a store) by the next write that moves
//! anything. Its timer is allocated at the first stall and kept with the
//! connection's write buffers; it is re-registered lazily: a timer still
//! running from an earlier stall fires early, and only then is moved to
//! the current deadline, so a connection that stalls and recovers many
//! times within one bound resets its timer at most once per bound.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

/// Whether the bytes waiting to be written are moving (see the module).
#[derive(Debug, Default)]
pub(super) struct Stall {
    /// When the bytes blocked now must have started to move; `None` while
    /// writes progress.
    due: Option<Instant>,
    /// Fires at or before `due` (see the module on why "before").
    timer: Option<Pin<Box<Sleep>>>,
}

impl Stall {
    /// The stream took bytes (or flushed): the deadline is off until a
    /// write blocks again.
    pub(super) fn progressed(&mut self) {
        self.due = None;
    }

    /// A write (or flush, or shutdown) would block with bytes left: `Ready`
    /// once nothing has moved for `bound` since the first such write after
    /// the last progress; until then `cx` is woken when it may be. `None`
    /// (no bound) never fires.
    pub(super) fn poll_expired(
        &mut self,
        cx: &mut Context<'_>,
        bound: Option<Duration>,
    ) -> Poll<()> {
        let Some(bound) = bound else {
            return Poll::Pending;
        };
        let due = match self.due {
            Some(due) => due,
            // A bound too large for the clock is no bound.
            None => match Instant::now().checked_add(bound) {
                Some(due) => *self.due.insert(due),
                None => return Poll::Pending,
            },
        };
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
        loop {
            std::task::ready!(timer.as_mut().poll(cx));
            if timer.deadline() >= due {
                return Poll::Ready(());
            }
            // Set for an earlier stall: wait for this one's deadline.
            timer.as_mut().reset(due);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;

    const BOUND: Duration = Duration::from_millis(50);

    /// Polls `stall` as a blocked write would, until it expires.
    async fn until_expired(stall: &mut Stall, bound: Duration) {
        poll_fn(|cx| stall.poll_expired(cx, Some(bound))).await;
    }

    #[tokio::test]
    async fn expires_a_bound_after_the_first_blocked_write() {
        let mut stall = Stall::default();
        let start = Instant::now();
        tokio::time::timeout(Duration::from_secs(5), until_expired(&mut stall, BOUND))
            .await
            .expect("expires");
        assert!(start.elapsed() >= BOUND, "after {:?}", start.elapsed());
        // It stays expired while nothing moves.
        let cx = &mut Context::from_waker(std::task::Waker::noop());
        assert!(stall.poll_expired(cx, Some(BOUND)).is_ready());
    }

    #[tokio::test]
    async fn progress_restarts_the_bound() {
        let mut stall = Stall::default();
        let cx = &mut Context::from_waker(std::task::Waker::noop());
        assert!(stall.poll_expired(cx, Some(BOUND)).is_pending());
        let first = stall.due.expect("armed");
        // Past the first deadline, bytes moved: a new stall gets a whole
        // bound from now, on the timer armed for the first one.
        tokio::time::sleep_until(first).await;
        stall.progressed();
        assert_eq!(stall.due, None);
        let restarted = Instant::now();
        tokio::time::timeout(Duration::from_secs(5), until_expired(&mut stall, BOUND))
            .await
            .expect("expires");
        assert!(
            restarted.elapsed() >= BOUND,
            "after {:?}",
            restarted.elapsed()
        );
        assert!(stall.due.unwrap() > first);
    }

    #[test]
    fn no_bound_or_one_past_the_clock_never_expires() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let _in = rt.enter();
        let cx = &mut Context::from_waker(std::task::Waker::noop());
        let mut stall = Stall::default();
        assert!(stall.poll_expired(cx, None).is_pending());
        assert!(stall.poll_expired(cx, Some(Duration::MAX)).is_pending());
        assert!(stall.timer.is_none(), "nothing to time");
    }
}
