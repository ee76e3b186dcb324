//! Pacing for handshakes, so that a reconnect storm cannot crowd out the
//! connections that are already up.
//!
//! A full TLS handshake costs a key exchange and a signature (and, with
//! client certificates, a chain verification) in a single poll of its
//! task. When thousands of devices reconnect at once, thousands of such
//! tasks are runnable together, and the runtime polls them in turn with
//! everything else: an established client's PUBLISH or a health check
//! waits behind all of them (seconds, on two cores).
//!
//! [`paced`] makes every poll of a handshake take a slot of a listener's
//! gate first, and give it back when the poll ends: at most
//! [`slots`] handshake steps of a listener are runnable at once, the rest
//! wait in the gate's queue (first come, first served) where they cost the
//! runtime nothing. A handshake waiting for its client's next bytes holds
//! no slot, so slow or idle clients cannot block the gate.

use std::future::{poll_fn, Future};
use std::task::Poll;
use tokio::sync::Semaphore;

/// Slots per listener: two per core, enough to keep every core busy with
/// handshakes while leaving the run queue short.
pub(crate) fn slots() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get()) * 2
}

/// Runs `fut`, holding a slot of `gate` during each of its polls.
pub(crate) async fn paced<F: Future>(gate: &Semaphore, fut: F) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    loop {
        // The gate is never closed; were it, the step would run unpaced.
        let slot = gate.acquire().await.ok();
        let step = poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await;
        drop(slot);
        match step {
            Poll::Ready(out) => return out,
            // The step registered this task's waker with whatever it
            // waits for: sleep until that (or another wake-up) comes.
            Poll::Pending => woken().await,
        }
    }
}

/// Pending once, then ready: the next time the task is polled.
fn woken() -> impl Future<Output = ()> {
    let mut first = true;
    poll_fn(move |_| {
        if std::mem::take(&mut first) {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn a_handshake_waiting_for_its_client_holds_no_slot() {
        let gate = Arc::new(Semaphore::new(1));
        let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
        let idle = tokio::spawn({
            let gate = gate.clone();
            async move { paced(&gate, rx).await.unwrap() }
        });
        tokio::task::yield_now().await;
        let busy = paced(&gate, async { 7 });
        let got = tokio::time::timeout(Duration::from_secs(5), busy).await;
        assert_eq!(got.ok(), Some(7), "the idle one blocked the gate");
        tx.send(3).unwrap();
        assert_eq!(idle.await.unwrap(), 3);
        assert_eq!(gate.available_permits(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn at_most_the_gate_s_slots_run_at_once() {
        let gate = Arc::new(Semaphore::new(1));
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..4)
            .map(|_| {
                let (gate, running, most) = (gate.clone(), running.clone(), most.clone());
                tokio::spawn(async move {
                    let work = async {
                        for _ in 0..5 {
                            // A step of CPU work, then a wait.
                            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                            most.fetch_max(now, Ordering::SeqCst);
                            std::thread::sleep(Duration::from_millis(2));
                            running.fetch_sub(1, Ordering::SeqCst);
                            tokio::task::yield_now().await;
                        }
                    };
                    paced(&gate, work).await
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(most.load(Ordering::SeqCst), 1);
    }
}
