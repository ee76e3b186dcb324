//! The link between the broker core and the connections it serves: what
//! a connection is owed and when it may be written ([`outbox`], with the
//! packets themselves in [`outbound`]), the budget on what readers hand the
//! core ([`intake`]), the return of spent buffers to their readers
//! ([`reclaim`]), and retained bursts asking the core for more ([`refill`]).
//!
//! It sits between the codec and the core: the core pushes into outboxes
//! and the connection drivers in `net` drain them, so neither has to know
//! the other's internals. It imports neither: its queues are generic over
//! the shared message (see [`outbound`]), and encoding for the wire is
//! `net`'s.

pub(crate) mod intake;
pub(crate) mod outbound;
pub(crate) mod outbox;
pub(crate) mod reclaim;
pub(crate) mod refill;

/// A message as this layer's tests (and the encoder's) queue it: bare,
/// without the core's bookkeeping.
#[cfg(test)]
#[derive(Debug)]
pub(crate) struct Bare(pub crate::message::Message);

#[cfg(test)]
impl std::ops::Deref for Bare {
    type Target = crate::message::Message;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}
