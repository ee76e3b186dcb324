//! The core's task: owns the [`Broker`], feeds it the connections' events
//! and the clock's ticks with the time read from the server's [`Clock`],
//! and hands what it recorded to the commit task (see `commit`).
//!
//! The broker itself reads no clock and does no I/O; this loop is the one
//! place that decides when it runs, at what time, and when its changes go
//! to the store.

use super::reader::{Answer, Request};
use crate::broker::{Broker, Commit, Event, Reclaim};
use crate::clock::Clock;
use crate::config::Durability;
use crate::link::intake::Intake;
use crate::link::reclaim::Batches;
use crate::link::refill::Refills;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Operations the relaxed mode holds before it commits without waiting
/// for its interval.
const RELAXED_MAX_PENDING_OPS: usize = 10_000;

/// Most events handled between two commits: the core must get back to its
/// clock and its commits even while events keep coming.
const MAX_EVENTS_PER_COMMIT: usize = 1024;

/// How often the core looks at what time brings (keep-alives, will delays,
/// expiry, `$SYS`): see [`Broker::tick`].
const TICK: Duration = Duration::from_secs(1);

/// The core and what it needs to run: built by `Server::serve`.
pub(super) struct CoreLoop {
    pub broker: Broker,
    pub events: mpsc::Receiver<Event>,
    pub clock: Clock,
    /// What the core gives back to connections as it goes: PUBLISH bytes
    /// of intake budget, emptied batch vectors, written messages.
    pub intake: Arc<Intake>,
    pub batches: Arc<Batches>,
    pub reclaim: Arc<Reclaim>,
    pub durability: Durability,
    pub commits: mpsc::Sender<Commit>,
    /// Page reads of spilled queues and retained messages, to the reader
    /// task (see `reader`).
    pub page_requests: mpsc::UnboundedSender<Request>,
    /// What it read.
    pub pages: mpsc::UnboundedReceiver<Answer>,
    /// Where retained bursts ask for their next page (the broker's).
    pub refills: Arc<Refills>,
}

impl CoreLoop {
    /// Runs the core until `shutdown` completes, every connection's event
    /// sender is gone, or the commit task is.
    pub(super) async fn run(&mut self, shutdown: impl Future<Output = ()>) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // In the relaxed mode changes are committed on an interval, not after
        // every batch of events.
        let mut flush = match self.durability {
            Durability::AckAfterCommit => None,
            Durability::AckBeforeCommit { flush_interval } => {
                let mut i = tokio::time::interval(flush_interval.max(Duration::from_millis(1)));
                i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                Some(i)
            }
        };
        let mut freeing = Vec::new();
        let mut tokens = Vec::new();
        let refills = self.refills.clone();
        tokio::pin!(shutdown);
        loop {
            let mut flush_now = flush.is_none();
            tokio::select! {
                biased;
                _ = &mut shutdown => break,
                ev = self.events.recv() => {
                    let Some(ev) = ev else { break };
                    let now = self.clock.now();
                    let mut routed = 0;
                    let Self { broker, events, intake, batches, reclaim, .. } = self;
                    // This event and what else is ready, so one commit
                    // covers many. Every few events, what the core is done
                    // with goes back: intake budget, batch vectors, written
                    // messages.
                    drain_ready(ev, events, MAX_EVENTS_PER_COMMIT, |i, ev| {
                        routed += ev.held().kib();
                        if let Some(v) = broker.handle(ev, now) {
                            batches.put(v);
                        }
                        if i % 16 == 0 {
                            intake.release(std::mem::take(&mut routed));
                            reclaim.free(&mut freeing);
                        }
                    });
                    intake.release(routed);
                    reclaim.free(&mut freeing);
                }
                _ = tick.tick() => self.broker.tick(self.clock.now()),
                Some(answer) = self.pages.recv() => match answer {
                    Answer::Queue(page) => self.broker.page(page, self.clock.now_ms()),
                    Answer::Retained(page) => self.broker.retained_page(page, self.clock.now_ms()),
                },
                _ = std::future::poll_fn(|cx| refills.poll_take(cx, &mut tokens)) => {
                    self.broker.refill(&tokens, self.clock.now_ms());
                    tokens.clear();
                }
                _ = async {
                    match flush.as_mut() {
                        Some(f) => f.tick().await,
                        None => std::future::pending().await,
                    }
                } => flush_now = true,
            }
            // The reader outlives the core loop; if it is gone, so is the
            // server.
            for request in self.broker.take_page_requests() {
                let _ = self.page_requests.send(Request::Queue(request));
            }
            for request in self.broker.take_retained_reads() {
                let _ = self.page_requests.send(Request::Retained(request));
            }
            // In the relaxed mode a burst may not wait for the interval: what
            // is recorded meanwhile is held in memory.
            if !flush_now && self.broker.pending_ops() < RELAXED_MAX_PENDING_OPS {
                continue;
            }
            if let Some(commit) = self.broker.take_commit() {
                if self.commits.send(commit).await.is_err() {
                    break;
                }
            }
        }
    }

    /// Closes every connection and hands the commit task what that
    /// recorded, as the last commit. Returns the events' receiver: the
    /// caller drops it once the commit task is done, which lets connection
    /// tasks still waiting to report to the core finish.
    pub(super) async fn finish(self) -> mpsc::Receiver<Event> {
        let CoreLoop {
            mut broker,
            events,
            clock,
            commits,
            ..
        } = self;
        broker.shutdown(clock.now_ms());
        if let Some(commit) = broker.take_commit() {
            let _ = commits.send(commit).await;
        }
        events
    }
}

/// Hands `first`, then what else is queued, to `handle` with its 1-based
/// position, `max` at most; returns how many. An event is taken off the
/// queue only once it is sure to be handled: one taken past the bound would
/// be dropped, its packets never answered and its intake budget never
/// given back.
fn drain_ready<T>(
    first: T,
    queue: &mut mpsc::Receiver<T>,
    max: usize,
    mut handle: impl FnMut(usize, T),
) -> usize {
    let mut next = first;
    let mut i = 1;
    loop {
        handle(i, next);
        if i >= max {
            return i;
        }
        match queue.try_recv() {
            Ok(ev) => next = ev,
            Err(_) => return i,
        }
        i += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Past the bound, what is still queued stays queued: nothing is taken
    /// and dropped (the core once lost one event in every 1,025 this way).
    #[test]
    fn draining_stops_at_the_bound_without_taking_an_event() {
        let (tx, mut rx) = mpsc::channel::<usize>(4096);
        for n in 0..3000 {
            tx.try_send(n).unwrap();
        }
        let mut seen = Vec::new();
        let mut handled = 0;
        while let Ok(first) = rx.try_recv() {
            handled += drain_ready(first, &mut rx, MAX_EVENTS_PER_COMMIT, |i, n| {
                assert!(i <= MAX_EVENTS_PER_COMMIT);
                seen.push(n);
            });
        }
        assert_eq!(handled, 3000);
        assert_eq!(seen, (0..3000).collect::<Vec<_>>());
    }
}
