//! Queues on disk: with a persistent store, a persistent session's queue
//! lives in the store, and memory holds a window of it.
//!
//! Every queued entry of a stored session is written to the store anyway
//! (that is what makes its publisher's acknowledgement safe). So an entry
//! need not stay in memory: past the window, the queue's tail is *spilled*,
//! kept only in the store, and memory keeps its count and bytes ([`Spill`](super::pages::Spill)).
//! A session spills
//! - everything new while its client is away (its queue in memory goes to
//!   the store when it disconnects, and comes back a page at a time when it
//!   reconnects);
//! - past [`QUEUE_WINDOW`] queued entries while connected;
//! - anything, when the queues in memory hold `memory.budget` bytes.
//!
//! Once a session has spilled, every new entry goes to the store too, so the
//! spilled entries are always the queue's tail, in order: those with a
//! sequence number after [`Spill::after`](super::pages::Spill::after). A spilled entry always carries its
//! body inline (its own copy on disk), so nothing in memory refers to it: a
//! session that ends drops its spill with its stored record, and no body's
//! reference count is left waiting for it.
//!
//! Reading back is asynchronous: when a connected session's queue in memory
//! runs low, it asks for a page ([`PageRequest`]); the driver reads it off
//! the core's thread, once the commit holding the spilled entries is
//! written, and hands it back ([`Broker::page`]). A page that arrives after
//! the spill changed (the session ended, or spilled again) is recognised by
//! its epoch and ignored.
//!
//! Sessions the store does not hold (the in-memory backend, or one that
//! ends with its connection) cannot spill: for them the budget is a bound,
//! past which messages are dropped ([`DropReason::MemoryBudget`](crate::hooks::DropReason::MemoryBudget)).

use super::pages::{
    lowest_stream, Page, PageEntry, PageRequest, Pages, LEAN_PAGE, PAGE, PAGE_BYTES, QUEUE_WINDOW,
};
use super::persist::{message_from_record, Pending, Persist};
use super::session::{Ctx, Outgoing, Session};
use super::{Broker, Tracked};
use crate::escape::Escaped;
use crate::stats::{self, Stats};
use roost_storage::{Op, OutboundRecord, OutboundState};
use std::num::{NonZeroU16, NonZeroU32};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

impl Session {
    /// Can this session's queue live in the store? Only if the store holds
    /// the session and outlives the process.
    pub(super) fn spillable(&self, ctx: &Ctx) -> bool {
        self.stored && ctx.persist.enabled
    }

    /// Entries of the queue that are only in the store.
    pub(crate) fn spilled(&self) -> usize {
        self.flows().map_or(0, |f| f.spill.count)
    }

    /// Does a new queued copy of `msg` go to the store only?
    pub(super) fn spills(&self, msg: &Tracked, ctx: &Ctx) -> bool {
        self.spillable(ctx)
            && (self.spilled() > 0
                || self.conn.is_none()
                || self.flows().is_some_and(|f| f.queue.len() >= QUEUE_WINDOW)
                || ctx.pages.over_budget_copy(msg))
    }

    /// `o` was just stored (inline) and goes to the spill, not to memory.
    pub(super) fn spill_entry(&mut self, o: Outgoing, ctx: &mut Ctx) {
        debug_assert!(o.inline && !o.burst);
        let commit = ctx.persist.commit;
        let f = self.flows_mut();
        f.spill.add(
            o.seq,
            o.msg.seq(),
            1,
            o.msg.size(),
            commit,
            ctx.pages,
            ctx.stats,
        );
        // The copy's gate (if any) is left armed: the commit that stores the
        // entry releases its publisher's acknowledgement.
        drop(o);
        self.want_page(ctx);
    }

    /// The client went away: its queue in memory goes to the store, to
    /// come back a page at a time when it reconnects. Entries whose body is
    /// stored apart are rewritten with the body inline (see the module
    /// docs); those in flight stay, since their packet ids do.
    pub(crate) fn spill_queue(&mut self, ctx: &mut Ctx) {
        if !self.spillable(ctx) {
            return;
        }
        let client_id = self.client_id().clone();
        let Some(f) = self.flows.as_mut() else { return };
        let Some(first) = f.queue.front().map(|o| o.seq) else {
            return;
        };
        let (mut count, mut bytes) = (0, 0);
        let mut stream = 0;
        for mut o in f.queue.drain(..) {
            let size = o.msg.size();
            stream = lowest_stream(stream, o.msg.seq());
            if o.burst {
                // A retained burst's entry becomes a plain queued one.
                f.burst_queued -= 1;
                f.bytes += size;
            } else {
                ctx.pages.free_copy(ctx.stats, &o.msg);
            }
            if !o.inline {
                o.inline = true;
                ctx.persist.push(Pending::PutOutbound {
                    client_id: client_id.clone(),
                    seq: o.seq,
                    entry: o.lazy(),
                });
                ctx.persist.release(&o.msg);
            }
            count += 1;
            bytes += size;
        }
        // Entries spilled before these come after them.
        let commit = ctx.persist.commit;
        f.spill
            .add(first, stream, count, bytes, commit, ctx.pages, ctx.stats);
    }

    /// A queued entry read from the store at start-up that stays there: the
    /// session comes back disconnected. One whose body is stored apart is
    /// rewritten with it inline (see the module docs).
    pub(super) fn restore_spilled(
        &mut self,
        mut o: Outgoing,
        persist: &mut Persist,
        pages: &mut Pages,
        stats: &Stats,
    ) {
        if !o.inline {
            o.inline = true;
            persist.push(Pending::PutOutbound {
                client_id: self.client_id().clone(),
                seq: o.seq,
                entry: o.lazy(),
            });
        }
        // Entries whose body was stored apart come after the others (the
        // bodies come last in a scan): `add` keeps the lowest boundary.
        let f = self.flows_mut();
        f.spill.add(
            o.seq,
            o.msg.seq(),
            1,
            o.msg.size(),
            persist.commit,
            pages,
            stats,
        );
    }

    /// Asks for the next page if the client is connected and its queue in
    /// memory is running low.
    pub(super) fn want_page(&mut self, ctx: &mut Ctx) {
        if self.conn.is_none() {
            return;
        }
        let client_id = self.client_id().clone();
        let Some(f) = self.flows.as_mut() else { return };
        let s = &mut f.spill;
        if s.count == 0 || s.reading || f.queue.len() > PAGE {
            return;
        }
        // Past the budget, a session reads back only once it has nothing
        // queued in memory, and a little at a time: it goes on, slowly,
        // while the budget is spent elsewhere.
        let limit = match ctx
            .pages
            .over_budget(s.count.min(PAGE), s.bytes.min(PAGE_BYTES))
        {
            false => PAGE,
            true if f.queue.is_empty() => LEAN_PAGE,
            true => return,
        };
        s.reading = true;
        ctx.pages.requests.push(PageRequest {
            client_id,
            epoch: s.epoch,
            after_seq: s.after,
            limit,
            after_commit: s.commit,
        });
    }

    /// Drops the spill (the session ends: its stored record goes with it).
    pub(super) fn forget_spill(&mut self, ctx: &mut Ctx) {
        let Some(f) = self.flows.as_mut() else { return };
        let s = std::mem::take(&mut f.spill);
        stats::sub(&ctx.stats.queue_disk_messages, s.count as u64);
        stats::sub(&ctx.stats.queue_disk_bytes, s.bytes as u64);
        stats::sub(&ctx.stats.inflight, s.count as u64);
    }

    /// A page came back: its entries join the queue in memory, in order.
    fn take_page(&mut self, page: Page, ctx: &mut Ctx) {
        let client_id = self.client_id().clone();
        let Some(f) = self.flows.as_mut() else { return };
        if f.spill.epoch != page.request.epoch || !f.spill.reading {
            return;
        }
        f.spill.reading = false;
        let entries = match page.entries {
            Ok(entries) => entries,
            Err(e) => {
                static WARNED: super::throttle::OncePerSecond =
                    super::throttle::OncePerSecond::new();
                if WARNED.ready(ctx.now_ms) {
                    tracing::warn!(client_id = %Escaped(&client_id), error = %e,
                        "reading queued messages back from the store failed; trying again in a second");
                }
                ctx.pages.retry.push(client_id);
                return;
            }
        };
        stats::add(&ctx.stats.queue_pages_read, 1);
        let short = entries.len() < page.request.limit;
        let (mut read, mut bytes) = (0u64, 0usize);
        for PageEntry {
            seq,
            mut entry,
            body,
        } in entries
        {
            if seq <= f.spill.after {
                continue;
            }
            f.spill.after = seq;
            if entry.stream_seq != 0 {
                // What is still spilled comes after it in the stream too.
                f.spill.stream = f.spill.stream.max(entry.stream_seq + 1);
            }
            if entry.state != OutboundState::Queued {
                // In flight, so in memory already (a QoS 1/2 entry restored
                // as sent sits between queued ones).
                continue;
            }
            // With its stream sequence: the cursor and the packet id of a
            // cluster's message (see `roaming`) depend on it.
            let msg = match (entry.message.take(), body) {
                (Some(rec), _) => {
                    Arc::new(Tracked::new(message_from_record(rec)).with_seq(entry.stream_seq))
                }
                (None, Some(rec)) => Arc::new(
                    Tracked::stored(message_from_record(rec), entry.message_id)
                        .with_seq(entry.stream_seq),
                ),
                (None, None) => {
                    // Its body is gone: nothing to deliver.
                    ctx.persist.push(Op::DeleteOutbound {
                        client_id: client_id.as_str().to_owned(),
                        seq,
                    });
                    f.spill.count = f.spill.count.saturating_sub(1);
                    stats::sub(&ctx.stats.queue_disk_messages, 1);
                    stats::sub(&ctx.stats.inflight, 1);
                    continue;
                }
            };
            let size = msg.size();
            f.spill.count = f.spill.count.saturating_sub(1);
            f.spill.bytes = f.spill.bytes.saturating_sub(size);
            read += 1;
            bytes += size;
            let inline = entry.message_id == 0;
            ctx.pages.hold_copy(ctx.stats, &msg);
            f.queue
                .push_back(Outgoing::from_record(seq, &entry, msg, inline));
        }
        stats::add(&ctx.stats.queue_messages_read, read);
        stats::sub(&ctx.stats.queue_disk_messages, read);
        stats::sub(&ctx.stats.queue_disk_bytes, bytes as u64);
        // A short page read after everything spilled was written means the
        // store holds no more: what the counts still say was never stored
        // (its commit failed, and its publisher was refused).
        let exhausted =
            f.spill.count == 0 || (short && f.spill.commit <= page.request.after_commit);
        if exhausted {
            let lost = std::mem::take(&mut f.spill);
            f.bytes = f.bytes.saturating_sub(lost.bytes);
            stats::sub(&ctx.stats.queue_disk_messages, lost.count as u64);
            stats::sub(&ctx.stats.queue_disk_bytes, lost.bytes as u64);
            stats::sub(&ctx.stats.inflight, lost.count as u64);
        }
        self.fill(ctx);
    }
}

impl Outgoing {
    /// An entry read back from the store (at start-up or in a page): no
    /// publisher waits for it, and a queued one has no packet id yet.
    pub(super) fn from_record(
        seq: u64,
        entry: &OutboundRecord,
        msg: Arc<Tracked>,
        inline: bool,
    ) -> Outgoing {
        let pid = entry.packet_id.and_then(NonZeroU16::new);
        Outgoing {
            seq,
            msg,
            qos: super::persist::qos_from_u8(entry.qos),
            retain: entry.retain,
            sub_ids: entry
                .subscription_identifiers
                .iter()
                .filter_map(|&i| NonZeroU32::new(i))
                .collect(),
            pid: pid.filter(|_| entry.state != OutboundState::Queued),
            state: entry.state,
            inline,
            stored_copy: false,
            burst: false,
        }
    }

    /// Its stored form, to be built off the core's thread.
    pub(super) fn lazy(&self) -> super::persist::LazyOutbound {
        super::persist::LazyOutbound {
            msg: self.msg.clone(),
            inline: self.inline,
            message_id: self.msg.store_id.load(Relaxed),
            qos: self.qos,
            retain: self.retain,
            packet_id: self.pid.map(NonZeroU16::get),
            state: self.state,
            sub_ids: self.sub_ids.clone(),
        }
    }
}

impl Broker {
    /// Page reads the core asked for since the last call, for the driver
    /// to run ([`Broker::page`] takes their answers).
    pub(crate) fn take_page_requests(&mut self) -> Vec<PageRequest> {
        std::mem::take(&mut self.pages.requests)
    }

    /// A page of a session's spilled queue, read back.
    pub(crate) fn page(&mut self, page: Page, now_ms: u64) {
        let Some(sid) = self.by_client_id.get(&page.request.client_id).copied() else {
            return;
        };
        let (mut ctx, sessions) = self.ctx(now_ms);
        if let Some(s) = sessions.get_mut(&sid) {
            s.take_page(page, &mut ctx);
        }
    }

    /// Asks again for the pages whose read failed (at each tick).
    pub(super) fn retry_pages(&mut self, now_ms: u64) {
        let retry = std::mem::take(&mut self.pages.retry);
        for client_id in retry {
            let Some(sid) = self.by_client_id.get(&client_id).copied() else {
                continue;
            };
            let (mut ctx, sessions) = self.ctx(now_ms);
            if let Some(s) = sessions.get_mut(&sid) {
                s.want_page(&mut ctx);
            }
        }
    }
}
