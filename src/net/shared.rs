//! What every connection task shares with the others and with the server:
//! the options, counters, the channel to the core, the hooks, the budgets
//! and the clock. Its own module so that the listeners, the connection
//! driver and the transports can all name it without importing each other.

use super::preauth::PreAuth;
use super::sweep::IdleSweep;
use crate::broker::Event;
use crate::config::Options;
use crate::hooks::Hooks;
use crate::link::intake::Intake;
use crate::stats::Stats;
use std::sync::Arc;
use tokio::sync::mpsc;

/// What every connection task shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub opts: Options,
    pub stats: Arc<Stats>,
    pub events: mpsc::Sender<Event>,
    pub hooks: Hooks,
    /// Ticked by the listeners' task (see [`IdleSweep`]).
    pub sweep: IdleSweep,
    /// Written messages on their way back to the core.
    pub reclaim: Arc<crate::broker::Reclaim>,
    /// Bounds the PUBLISH bytes waiting for the core.
    pub intake: Arc<Intake>,
    /// Batch vectors the core emptied.
    pub batches: Arc<crate::link::reclaim::Batches>,
    /// Bytes buffered by connections before CONNACK.
    pub preauth: PreAuth,
    /// The core's clock: connections stamp when they start waiting for
    /// their client with its monotonic reading, which the core's keep-alive
    /// check is given too.
    pub clock: crate::clock::Clock,
    /// The admin API's way to the core (the HTTP listeners').
    #[cfg(feature = "http")]
    pub admin: crate::admin::Admin,
    /// In a cluster: where a CONNECT claims its session first.
    #[cfg(feature = "cluster")]
    pub roaming: Option<Arc<super::roaming::Roaming>>,
}
