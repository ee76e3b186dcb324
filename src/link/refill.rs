//! Retained bursts asking the core for more: a subscription matching many
//! retained messages gets them a page at a time (see `broker::retained`),
//! and its connection says when it has sent most of a page by posting the
//! burst's token here as it expands it. The core's task waits on this
//! board beside its other inputs, and answers with the next page.
//!
//! One board for all connections, with one waker: posts are rare (one per
//! page of retained messages), so a lock per post costs nothing worth a
//! finer scheme.

use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

/// Tokens of the bursts that want their next page, for the core.
#[derive(Debug, Default)]
pub(crate) struct Refills {
    board: Mutex<Board>,
}

#[derive(Debug, Default)]
struct Board {
    tokens: Vec<u64>,
    waker: Option<Waker>,
}

impl Refills {
    /// Asks the core for more for `token`, and wakes it.
    pub(crate) fn post(&self, token: u64) {
        let waker = match self.board.lock() {
            Ok(mut board) => {
                board.tokens.push(token);
                board.waker.take()
            }
            Err(_) => None,
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Moves the tokens posted so far to `into`.
    #[cfg(any(test, fuzzing))]
    pub(crate) fn take(&self, into: &mut Vec<u64>) {
        if let Ok(mut board) = self.board.lock() {
            into.append(&mut board.tokens);
        }
    }

    /// Moves the tokens posted so far to `into` when there are some;
    /// otherwise `Pending`, and the caller is woken by the next post.
    pub(crate) fn poll_take(&self, cx: &Context<'_>, into: &mut Vec<u64>) -> Poll<()> {
        let Ok(mut board) = self.board.lock() else {
            return Poll::Pending;
        };
        if board.tokens.is_empty() {
            board.waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        into.append(&mut board.tokens);
        Poll::Ready(())
    }
}

/// What a burst posts when it runs low: its token, once.
#[derive(Debug)]
pub(crate) struct More {
    pub refills: Arc<Refills>,
    pub token: u64,
    /// Posts once this many messages or fewer are left to expand.
    pub low: usize,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn a_post_wakes_the_waiting_core_once() {
        let refills = Refills::default();
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let cx = Context::from_waker(&waker);
        let mut got = Vec::new();
        assert!(refills.poll_take(&cx, &mut got).is_pending());
        refills.post(7);
        refills.post(8);
        assert_eq!(count.0.load(Ordering::Relaxed), 1);
        assert!(refills.poll_take(&cx, &mut got).is_ready());
        assert_eq!(got, [7, 8]);
        refills.take(&mut got);
        assert_eq!(got, [7, 8]);
    }
}
