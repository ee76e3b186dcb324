//! Load generation for the roost MQTT broker (and any other MQTT broker):
//! message flows, idle connections, connection rate, and the figures they
//! report. Speaks MQTT 3.1.1 and 5.0 through `roost::codec`; no external
//! MQTT client is involved.
//!
//! The binaries are `loadgen` (the scenarios; `loadgen --help`), `restore`
//! (how long a broker takes to restore a large store), `queue` and
//! `retained` (messages on disk), `bridge` (forwarding to a remote broker,
//! and a backlog while the link is down), and `storm` (thousands of TLS
//! clients connecting at once, with and without session resumption).

pub mod client;
pub mod conns;
pub mod flow;
pub mod histogram;
pub mod monitor;
pub mod payload;
pub mod process;
pub mod procstat;
pub mod relay;
pub mod report;
pub mod secure;
pub mod seqtrack;
pub mod tls;

use std::sync::Arc;
use std::time::Instant;

/// The run's shared start: every timestamp is nanoseconds since it, so a
/// publisher's send time and a subscriber's receive time compare directly.
#[derive(Debug, Clone)]
pub struct Clock(Arc<Instant>);

impl Default for Clock {
    fn default() -> Self {
        Clock(Arc::new(Instant::now()))
    }
}

impl Clock {
    /// A clock starting now.
    pub fn new() -> Self {
        Self::default()
    }

    /// Monotonic nanoseconds since the start.
    pub fn now_ns(&self) -> u64 {
        self.0.elapsed().as_nanos() as u64
    }
}
