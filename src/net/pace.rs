//! Admission of TLS handshakes, so that a reconnect storm cannot crowd out
//! the connections that are already up.
//!
//! A full TLS handshake costs a key exchange and a signature (and, with
//! client certificates, a chain verification). When thousands of devices
//! reconnect at once, thousands of handshake tasks are runnable together,
//! and the runtime polls them in turn with everything else: an established
//! client's PUBLISH or a health check waits behind all of them.
//!
//! [`admitted`] bounds the handshakes in progress on a listener to
//! [`slots`] (`TlsConfig::handshakes_in_progress`); the rest wait in the gate's queue, first come first served,
//! where they cost the runtime nothing. A slot is taken only once the
//! client has sent its first bytes, so sockets opened and left idle do not
//! hold one, and kept for the whole handshake: handing slots out per poll
//! instead made every handshake queue again for each of its steps, so all
//! of them advanced in lockstep and none finished early (measured: the
//! storm took half as long again).

use std::future::Future;
use tokio::sync::Semaphore;

/// Handshakes in progress per listener: `configured`, or when that is 0,
/// enough to keep every core busy while clients take their round trips,
/// few enough that the run queue stays short.
pub(crate) fn slots(configured: usize) -> usize {
    match configured {
        0 => std::thread::available_parallelism().map_or(2, |n| n.get()) * 64,
        n => n.min(Semaphore::MAX_PERMITS),
    }
}

/// Runs `handshake` holding a slot of `gate` until it ends.
pub(crate) async fn admitted<F: Future>(gate: &Semaphore, handshake: F) -> F::Output {
    // The gate is never closed; were it, the handshake would run unpaced.
    let _slot = gate.acquire().await.ok();
    handshake.await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn a_configured_bound_is_taken_as_is_and_0_means_64_per_core() {
        assert_eq!(slots(5), 5);
        assert_eq!(slots(1), 1);
        assert_eq!(slots(0) % 64, 0);
        assert!(slots(0) >= 64);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn at_most_the_gate_s_slots_are_in_progress_and_all_finish() {
        let gate = Arc::new(Semaphore::new(2));
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let (gate, running, most) = (gate.clone(), running.clone(), most.clone());
                tokio::spawn(async move {
                    let handshake = async {
                        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        // A round trip to the client.
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        running.fetch_sub(1, Ordering::SeqCst);
                    };
                    admitted(&gate, handshake).await
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(most.load(Ordering::SeqCst), 2);
        assert_eq!(gate.available_permits(), 2);
    }
}
