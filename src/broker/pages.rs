//! The core's bookkeeping of queues on disk (see `spill`): what one
//! session's spilled tail is ([`Spill`]), the page reads the core asks for
//! and gets back ([`PageRequest`], [`Page`]), and the memory its queues
//! take against the budget ([`Pages`]). Plain data, so that the session
//! can hold it without knowing how spilling works.

use super::Tracked;
use crate::codec::ByteStr;
use crate::stats::Stats;
use roost_storage::{MessageRecord, OutboundRecord, StorageError};
use std::sync::atomic::Ordering::Relaxed;

/// Most queued entries a connected session keeps in memory (beyond those in
/// flight) before its queue spills to the store.
pub(crate) const QUEUE_WINDOW: usize = 1024;

/// Entries one read brings back; a session asks for the next page once its
/// queue in memory is down to this many, so the next page is on its way
/// while the client takes these.
pub(crate) const PAGE: usize = QUEUE_WINDOW / 2;

/// What a page may bring, in bytes, for the budget's sake: a page is
/// read only if this much more still fits (or the whole spill, if less).
pub(crate) const PAGE_BYTES: usize = 256 * 1024;

/// Entries a page brings while memory is over its budget.
pub(crate) const LEAN_PAGE: usize = 16;

/// The tail of a session's queue that is only in the store.
#[derive(Debug, Default)]
pub(crate) struct Spill {
    /// Entries spilled and not yet read back.
    pub count: usize,
    /// Their topic and payload bytes.
    pub bytes: usize,
    /// Every spilled entry has a sequence number after this one; every
    /// entry in memory has this one or an earlier one.
    pub after: u64,
    /// The commit that holds the last entry spilled: a read must not begin
    /// before it is written.
    pub commit: u64,
    /// Tells this spill's pages from those of an earlier one (0: none yet).
    pub epoch: u64,
    /// A page is on its way.
    pub reading: bool,
    /// No spilled entry from a cluster's message stream has a stream
    /// sequence below this one (0: none spilled has one). Exact while
    /// nothing is read back; after a page, one past the last stream
    /// sequence read, which is as good a cursor (see `roaming`): the
    /// stream between the two holds nothing for the session.
    pub stream: u64,
}

impl Spill {
    /// `count` entries of `bytes`, the lowest with sequence number `first`,
    /// go to the store in commit `commit`; `stream` is the lowest stream
    /// sequence among them (0: none is from the stream). A spill that
    /// starts, or whose boundary moves back (a queue in memory spilled
    /// ahead of it), takes a new epoch: a page on its way was read from the
    /// old boundary.
    #[allow(clippy::too_many_arguments)] // Plain data, each named for its use.
    pub(crate) fn add(
        &mut self,
        first: u64,
        stream: u64,
        count: usize,
        bytes: usize,
        commit: u64,
        pages: &mut Pages,
        stats: &Stats,
    ) {
        let after = first - 1;
        if self.count == 0 {
            self.stream = 0;
        }
        if self.count == 0 || after < self.after {
            self.after = after;
            self.epoch = pages.epoch();
            self.reading = false;
        }
        self.stream = lowest_stream(self.stream, stream);
        self.count += count;
        self.bytes += bytes;
        self.commit = commit;
        crate::stats::add(&stats.queue_disk_messages, count as u64);
        crate::stats::add(&stats.queue_disk_bytes, bytes as u64);
    }
}

/// The lower of two stream sequences, 0 standing for "none".
pub(crate) fn lowest_stream(a: u64, b: u64) -> u64 {
    match (a, b) {
        (0, x) | (x, 0) => x,
        (a, b) => a.min(b),
    }
}

/// The core's side of the queues on disk: the page reads it asks for, and
/// the memory its queues take against the budget.
#[derive(Debug, Default)]
pub(crate) struct Pages {
    /// Reads to hand to the driver.
    pub requests: Vec<PageRequest>,
    /// Sessions whose last read failed: asked again at the next tick.
    pub retry: Vec<ByteStr>,
    next_epoch: u64,
    /// Topic and payload bytes of the QoS 1/2 messages queued or in flight
    /// in memory (retained bursts aside, which have their own bound).
    pub cached: usize,
    /// Bytes of the retained messages memory holds that the store holds
    /// too (the retained cache): the same budget counts them.
    pub retained: usize,
    /// `memory.budget`.
    pub budget: usize,
}

impl Pages {
    pub(crate) fn new(budget: usize) -> Self {
        Pages {
            budget,
            ..Default::default()
        }
    }

    pub(crate) fn epoch(&mut self) -> u64 {
        self.next_epoch += 1;
        self.next_epoch
    }

    /// One more queued copy of `msg` in memory. The message itself (its
    /// topic, payload and bookkeeping) counts with its first copy only:
    /// the sessions it goes to share one body, and counting it for each
    /// made a fan-out of large messages hit the budget (and drop
    /// acknowledged messages) with a small fraction of it in use.
    pub(crate) fn hold_copy(&mut self, stats: &Stats, msg: &Tracked) {
        let first = msg.budgeted.fetch_add(1, Relaxed) == 0;
        self.cached += copy_cost(first, msg.size());
        stats.queue_memory_bytes.store(self.cached as u64, Relaxed);
    }

    /// One copy of `msg` fewer (one [`Pages::hold_copy`] counted); the
    /// message's own cost goes with its last.
    pub(crate) fn free_copy(&mut self, stats: &Stats, msg: &Tracked) {
        let before = msg
            .budgeted
            .fetch_update(Relaxed, Relaxed, |n| Some(n.saturating_sub(1)))
            .unwrap_or(0);
        self.cached = self
            .cached
            .saturating_sub(copy_cost(before == 1, msg.size()));
        stats.queue_memory_bytes.store(self.cached as u64, Relaxed);
    }

    /// Are the queues in memory (with the retained cache) past three
    /// quarters of the budget? Publishers to sessions that only memory
    /// holds are then paused while those sessions have a queue, so the
    /// budget is a bound that backpressure keeps them under, not a cliff
    /// that drops acknowledged messages.
    pub(crate) fn tight(&self) -> bool {
        self.cached.saturating_add(self.retained) > self.budget - self.budget / 4
    }

    /// Would one more copy of `msg` take the queues in memory past the
    /// budget? See [`Pages::hold_copy`] for what it costs.
    pub(crate) fn over_budget_copy(&self, msg: &Tracked) -> bool {
        let first = msg.budgeted.load(Relaxed) == 0;
        self.cached
            .saturating_add(self.retained)
            .saturating_add(copy_cost(first, msg.size()))
            > self.budget
    }

    /// Would `entries` more of `bytes` take the queues in memory past the
    /// budget? The retained cache counts in it (up to its share, see
    /// `retained::share`): queues spill that much earlier while it is full.
    pub(crate) fn over_budget(&self, entries: usize, bytes: usize) -> bool {
        self.cached
            .saturating_add(self.retained)
            .saturating_add(cost(entries, bytes))
            > self.budget
    }
}

/// What one queued copy of a message costs in memory: its queue entry
/// (about 50 bytes).
pub(crate) const COPY_COST: usize = 64;

/// What one message in memory costs beyond its topic and payload, however
/// many queues hold it: the message with its properties and bookkeeping
/// (about 270 bytes) and the two heap blocks of topic and payload.
pub(crate) const MESSAGE_COST: usize = 288;

/// What one entry with a message of its own costs beyond its topic and
/// payload. Measured: 1,000,000 queued messages of 74 bytes took 428 MB in
/// memory.
pub(crate) const ENTRY_COST: usize = COPY_COST + MESSAGE_COST;

/// What `entries` entries of `bytes` topic and payload cost in memory,
/// each with a message of its own.
fn cost(entries: usize, bytes: usize) -> usize {
    entries.saturating_mul(ENTRY_COST).saturating_add(bytes)
}

/// What one copy of a message of `bytes` topic and payload costs: with
/// the message's own cost if it is the `only` copy counted.
fn copy_cost(only: bool, bytes: usize) -> usize {
    if only {
        ENTRY_COST + bytes
    } else {
        COPY_COST
    }
}

/// A page of a session's spilled queue to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PageRequest {
    pub client_id: ByteStr,
    pub epoch: u64,
    /// Entries with a sequence number after this one.
    pub after_seq: u64,
    /// At most this many.
    pub limit: usize,
    /// Not before this commit is written (released by the commit task).
    pub after_commit: u64,
}

/// One entry of a page, with its body if it is stored apart.
#[derive(Debug)]
pub(crate) struct PageEntry {
    pub seq: u64,
    pub entry: OutboundRecord,
    pub body: Option<MessageRecord>,
}

/// A page read back for a [`PageRequest`].
#[derive(Debug)]
pub(crate) struct Page {
    pub request: PageRequest,
    pub entries: Result<Vec<PageEntry>, StorageError>,
}
