//! Retained messages: a compact index in memory, the messages in the store.
//!
//! Every retained topic has an [`Entry`] in the index ([`RetainedTree`]):
//! what limits and expiry need (expiry, size, a stamp), and the message
//! itself only if memory holds it (the topic is the entry's path in the
//! trie). Which it does
//! - always with the in-memory store (memory is all it has): the
//!   retained messages then take memory, and `limits.maximum_retained_bytes`
//!   bounds them together with a quarter of `memory.budget`
//!   ([`memory_bound`]), whichever is lower;
//! - always for the broker's own `$SYS` topics, which are never stored;
//! - with a persistent store, for the most recently retained messages up to
//!   the retained share of `memory.budget` ([`share`]): a cache, evicted
//!   oldest first. The others are read back from the store when a new
//!   subscription matches them.
//!
//! A new subscription gets its retained messages a page at a time
//! ([`PAGE`] topics, in index order) through a [`Stream`]: the page's
//! messages memory holds go at once; the others are read from the store off
//! the core's thread ([`RetainedRead`], answered by [`Broker::retained_page`])
//! once the commit holding the latest retained change is written. The next
//! page is matched once the connection has room: its QoS 0 burst has run
//! low (the burst posts to [`Refills`]) and at most half a page of its
//! QoS 1/2 retained entries wait for the in-flight window (checked as its
//! acknowledgements come). So a subscription to `#` over a million
//! retained messages holds about two pages of them in memory, never all.
//!
//! A message replaced or cleared between its match and its read is not
//! sent from the page: each entry carries a stamp, new with every
//! retained publish, and the page keeps it only while it is unchanged (a
//! replacement went to the subscriber as a live message already). A
//! stream ends with its connection.

use super::persist::{message_from_record, message_record};
use super::session::SubEntry;
use super::{retained_cost, stats, Broker, SessionId, Tracked};
use crate::codec::{ByteStr, QoS};
use crate::escape::Escaped;
use crate::link::refill::{More, Refills};
use crate::router::RetainedTree;
use roost_storage::{MessageRecord, Op, StorageError};
use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

/// A change to the retained messages made elsewhere (another node of a
/// cluster, through the cluster's retained bucket), applied to this
/// node's retained store as it is: stored (with the usual limits, the
/// store and the `on_retained` hook) but not delivered to anyone, as the
/// message itself reaches the subscribers through routing.
#[cfg(feature = "cluster")]
#[derive(Debug)]
// Boxed as a whole in `Event::SyncRetained`.
#[allow(clippy::large_enum_variant)]
pub(crate) enum RetainedSync {
    /// Retain `message` for its topic (an empty payload, or an expiry
    /// that has passed, clears it).
    Set(super::Message),
    /// Clear the topic's retained message.
    Clear(String),
    /// Clear every retained topic but `$SYS` ones not in the set (the
    /// cluster's truth at start-up), then answer.
    KeepOnly(
        std::collections::HashSet<String>,
        tokio::sync::oneshot::Sender<()>,
    ),
}

/// Retained topics matched (and read) at a time for a new subscription.
pub(crate) const PAGE: usize = 256;

/// A subscription's next page is matched once at most this many of its
/// retained messages wait to be sent.
const LOW: usize = PAGE / 2;

/// What a cached message takes beside its topic and payload: its
/// allocation, the payload's and topic's own, and properties (about).
const CACHED_OVERHEAD: usize = std::mem::size_of::<Tracked>() + 64;

/// The retained cache's share of `memory.budget`: an eighth. Queues are
/// the hot path (every message of a persistent session goes through them),
/// while retained messages are read back only when a subscription matches
/// them, and the index of every retained topic takes memory beside the
/// budget (about 100 bytes a topic: a million 5-level topics and the
/// default budget's cache fit a 256 MiB process). The budget is one
/// account, so queues spill a little earlier while the cache is full (see
/// `pages::Pages::over_budget`).
pub(crate) fn share(budget: usize) -> usize {
    budget / 8
}

/// What the retained messages may take with the in-memory store, where
/// they are memory (not a cache): a quarter of `memory.budget`.
pub(crate) fn memory_bound(budget: usize) -> usize {
    budget / 4
}

/// One retained topic in the index: 24 bytes beside the trie's own.
#[derive(Debug)]
pub(crate) struct Entry {
    /// The message, if memory holds it.
    cached: Option<Arc<Tracked>>,
    /// When it expires, in whole seconds since the Unix epoch rounded up
    /// (0: never). Rounded up, it is never taken for expired too early;
    /// what is sent is checked against the message's exact expiry.
    expires_s: u32,
    /// Topic and payload bytes.
    size: u32,
    /// Changes with every retained publish on the topic.
    stamp: u32,
}

impl Entry {
    fn expired(&self, now_ms: u64) -> bool {
        self.expires_s != 0 && u64::from(self.expires_s) * 1000 <= now_ms
    }

    /// What it counts against `limits.maximum_retained_bytes`.
    pub(crate) fn cost(&self) -> usize {
        self.size as usize + super::RETAINED_OVERHEAD
    }

    /// Topic and payload bytes.
    pub(crate) fn size(&self) -> usize {
        self.size as usize
    }

    /// When it expires, in whole seconds since the Unix epoch, rounded
    /// up; `None` if never.
    pub(crate) fn expires_s(&self) -> Option<u32> {
        (self.expires_s != 0).then_some(self.expires_s)
    }
}

/// The retained messages and the subscriptions being sent them.
#[derive(Debug)]
pub(crate) struct Retained {
    pub tree: RetainedTree<Entry>,
    /// The store outlives the process: memory is a cache of it.
    persistent: bool,
    /// `$SYS` topics among them.
    pub sys: usize,
    /// What the clients' retained messages take ([`Entry::cost`]),
    /// bounded by `limits.maximum_retained_bytes`.
    pub bytes: usize,
    /// Entries with an expiry: the sweep runs only if there are some.
    expiring: usize,
    next_stamp: u32,
    cache: Cache,
    /// New subscriptions being sent their retained messages.
    streams: super::idhash::IdMap<SessionId, Vec<Stream>>,
    next_stream: u64,
    /// Reads to hand to the driver.
    pub reads: Vec<RetainedRead>,
    /// Reads that failed: asked again at the next tick.
    retry: Vec<RetainedRead>,
    /// The last commit with a retained message's change: reads wait for it.
    pub commit: u64,
    /// Where bursts ask for their next page.
    pub refills: Arc<Refills>,
}

/// Retained messages memory holds.
#[derive(Debug, Default)]
struct Cache {
    /// Bytes of those the store also holds (which may be evicted).
    bytes: usize,
    /// Bytes of those only memory holds (in-memory store, `$SYS`).
    pinned: usize,
    count: usize,
    /// Most `bytes`.
    share: usize,
    /// Evictable ones in the order they were cached (topic and stamp); an
    /// element whose entry changed since is skipped, and dropped when the
    /// queue is compacted.
    order: VecDeque<(ByteStr, u32)>,
}

/// A new subscription being sent its retained messages.
#[derive(Debug)]
struct Stream {
    id: u64,
    filter: ByteStr,
    entry: SubEntry,
    /// The last topic matched: the next page starts after it.
    after: Option<Box<str>>,
    /// The page matched was the last.
    last: bool,
    /// The page being read from the store.
    reading: Option<Vec<Item>>,
    done: bool,
}

/// A topic of a page, as matched.
#[derive(Debug)]
struct Item {
    topic: Box<str>,
    stamp: u32,
    msg: Option<Arc<Tracked>>,
}

/// Retained messages to read from the store, for a page of a stream.
#[derive(Debug)]
pub(crate) struct RetainedRead {
    pub sid: SessionId,
    pub stream: u64,
    /// In order.
    pub topics: Vec<String>,
    /// Not before this commit is written (released by the commit task).
    pub after_commit: u64,
}

/// A [`RetainedRead`]'s answer: a record per topic (`None`: not retained).
#[derive(Debug)]
pub(crate) struct RetainedPage {
    pub request: RetainedRead,
    pub records: Result<Vec<Option<MessageRecord>>, StorageError>,
}

fn cached_cost(m: &Tracked) -> usize {
    m.size() + CACHED_OVERHEAD
}

impl Retained {
    pub(crate) fn new(budget: usize, persistent: bool) -> Self {
        Retained {
            tree: RetainedTree::new(),
            persistent,
            sys: 0,
            bytes: 0,
            expiring: 0,
            next_stamp: 0,
            cache: Cache {
                share: share(budget),
                ..Default::default()
            },
            streams: Default::default(),
            next_stream: 0,
            reads: Vec::new(),
            retry: Vec::new(),
            commit: 0,
            refills: Arc::default(),
        }
    }

    /// Bytes of the cache the budget counts (messages the store also holds).
    pub(crate) fn cached_bytes(&self) -> usize {
        self.cache.bytes
    }

    /// Every retained message memory holds, in bytes.
    pub(crate) fn memory_bytes(&self) -> usize {
        self.cache.bytes + self.cache.pinned
    }

    /// Retains `msg` for its topic, in memory (until evicted, if the store
    /// holds it). Returns the entry it replaces.
    pub(crate) fn put(&mut self, msg: Arc<Tracked>) -> Option<Entry> {
        let evictable = self.evictable(&msg.topic);
        self.next_stamp = self.next_stamp.wrapping_add(1);
        let stamp = self.next_stamp;
        let cost = cached_cost(&msg);
        if evictable {
            self.cache.bytes += cost;
            self.cache.order.push_back((msg.topic.clone(), stamp));
        } else {
            self.cache.pinned += cost;
        }
        self.cache.count += 1;
        let expires_s = msg.expires_at_ms.map_or(0, |ms| {
            u32::try_from(ms.div_ceil(1000)).unwrap_or(u32::MAX).max(1)
        });
        if expires_s != 0 {
            self.expiring += 1;
        }
        let entry = Entry {
            expires_s,
            size: u32::try_from(msg.size()).unwrap_or(u32::MAX),
            stamp,
            cached: None,
        };
        let topic = msg.topic.clone();
        let entry = Entry {
            cached: Some(msg),
            ..entry
        };
        let old = self.tree.insert(&topic, entry);
        if let Some(old) = &old {
            self.forget(old, &topic);
        }
        self.evict();
        old
    }

    /// Clears `topic`; returns what it held.
    pub(crate) fn remove(&mut self, topic: &str) -> Option<Entry> {
        let old = self.tree.remove(topic)?;
        self.forget(&old, topic);
        Some(old)
    }

    /// An entry left the index: its memory and expiry leave the accounts.
    fn forget(&mut self, e: &Entry, topic: &str) {
        if e.expires_s != 0 {
            self.expiring -= 1;
        }
        if let Some(m) = &e.cached {
            self.uncount(m, topic);
        }
    }

    fn uncount(&mut self, m: &Tracked, topic: &str) {
        let cost = cached_cost(m);
        self.cache.count -= 1;
        if self.evictable(topic) {
            self.cache.bytes -= cost;
        } else {
            self.cache.pinned -= cost;
        }
    }

    /// Does the store hold `topic`'s message too, so memory may let it go?
    /// Not with the in-memory store, and never for `$SYS`.
    fn evictable(&self, topic: &str) -> bool {
        self.persistent && !topic.starts_with("$SYS")
    }

    /// Lets the oldest cached messages go until the cache is within its
    /// share.
    fn evict(&mut self) {
        while self.cache.bytes > self.cache.share {
            let Some((topic, stamp)) = self.cache.order.pop_front() else {
                break;
            };
            if let Some(e) = self.tree.get_mut(&topic) {
                if e.stamp == stamp {
                    if let Some(m) = e.cached.take() {
                        self.cache.count -= 1;
                        self.cache.bytes -= cached_cost(&m);
                    }
                }
            }
        }
        // Elements of replaced or cleared entries are dropped when they
        // outnumber the live ones (amortised: at most one pass per as many
        // changes as there are cached messages).
        if self.cache.order.len() > 2 * self.cache.count + 64 {
            let tree = &self.tree;
            self.cache.order.retain(|(topic, stamp)| {
                tree.get(topic)
                    .is_some_and(|e| e.stamp == *stamp && e.cached.is_some())
            });
        }
    }

    /// Checks the cache's accounts against the index (the core driver's
    /// invariant).
    #[cfg(any(test, fuzzing))]
    pub(crate) fn check_accounts(&self) {
        let (mut bytes, mut pinned, mut count, mut expiring) = (0, 0, 0, 0);
        self.tree
            .for_each_match("#", |_, e| expiring += usize::from(e.expires_s != 0));
        let mut sys = 0;
        self.tree.for_each_match("$SYS/#", |_, e| {
            sys += 1;
            expiring += usize::from(e.expires_s != 0);
        });
        let mut visit = |topic: &str, e: &Entry| {
            if let Some(m) = &e.cached {
                count += 1;
                match self.evictable(topic) {
                    true => bytes += cached_cost(m),
                    false => pinned += cached_cost(m),
                }
            }
        };
        self.tree.for_each_match("#", &mut visit);
        self.tree.for_each_match("$SYS/#", &mut visit);
        assert_eq!(sys, self.sys, "$SYS topics counted");
        assert_eq!(expiring, self.expiring, "expiring entries counted");
        assert_eq!(
            (bytes, pinned, count),
            (self.cache.bytes, self.cache.pinned, self.cache.count),
            "retained cache accounted"
        );
        assert!(
            self.cache.bytes <= self.cache.share,
            "cache within its share"
        );
    }

    /// Whether a stream is running for `sid`.
    fn streaming(&self, sid: SessionId) -> bool {
        self.streams.contains_key(&sid)
    }
}

impl Broker {
    /// What the clients' retained messages may take: the limit, and with
    /// the in-memory store (where they are memory) a quarter of the memory
    /// budget too.
    fn retained_limit(&self) -> usize {
        let limit = self.opts.limits.maximum_retained_bytes;
        match self.persist.enabled {
            true => limit,
            false => limit.min(memory_bound(self.opts.memory.budget)),
        }
    }

    /// A retained publish: stores, replaces or (empty) clears its topic's
    /// retained message.
    pub(super) fn store_retained(&mut self, msg: &Arc<Tracked>, now_ms: u64) {
        let topic = msg.topic.as_str();
        let old_cost = self.retained.tree.get(topic).map_or(0, Entry::cost);
        let over = self.retained.bytes.saturating_sub(old_cost) + retained_cost(msg)
            > self.retained_limit();
        // While the store fails a retained message (QoS 0 or a will: QoS
        // 1/2 PUBLISH was refused) is delivered, not retained, as past the
        // limit; clearing the old one is a delete, bounded by the topics.
        let failing = !msg.payload.is_empty() && self.storage_failing();
        if failing {
            stats::add(&self.stats.storage_refused, 1);
        }
        let over = over || failing;
        if over && !failing && !msg.payload.is_empty() {
            // The store is full: delivered, not retained. Whatever was
            // retained for the topic goes too, or later subscribers would
            // get a value its publisher has replaced.
            stats::add(&self.stats.retained_refused, 1);
            static WARNED: super::throttle::OncePerSecond = super::throttle::OncePerSecond::new();
            if WARNED.ready(now_ms) {
                tracing::warn!(topic = %Escaped(topic),
                    retained_bytes = self.retained.bytes,
                    "retained messages hold limits.maximum_retained_bytes: not retained (more within a second not logged)");
            }
        }
        if msg.payload.is_empty() || over {
            // An empty retained message clears the topic ([MQTT-3.3.1-6]).
            self.clear_retained(topic);
        } else {
            // Copy out of the read buffer so a long-lived retained message
            // does not pin a whole socket buffer.
            let kept = Arc::new(Tracked::new(super::Message {
                topic: msg.topic.detach(),
                payload: bytes::Bytes::copy_from_slice(&msg.payload),
                qos: msg.qos,
                retain: true,
                properties: msg.properties.clone(),
                expires_at_ms: msg.expires_at_ms,
                publisher: msg.publisher,
                // Detached like the topic: kept as long as the message.
                publisher_id: msg.publisher_id.as_ref().map(ByteStr::detach),
            }));
            self.persist.push(Op::PutRetained {
                message: message_record(&kept),
            });
            self.retained.commit = self.persist.commit;
            self.hooks.each(|h| h.on_retained(topic, Some(&kept)));
            self.retained.bytes += retained_cost(&kept);
            if let Some(old) = self.retained.put(kept) {
                self.retained.bytes = self.retained.bytes.saturating_sub(old.cost());
            }
        }
        self.update_retained_gauge();
    }

    /// Clears `topic`'s retained message, if there is one (an empty
    /// retained publish, or the admin API); returns whether there was. The
    /// caller updates the gauge.
    pub(super) fn clear_retained(&mut self, topic: &str) -> bool {
        let Some(old) = self.retained.remove(topic) else {
            return false;
        };
        self.retained.bytes = self.retained.bytes.saturating_sub(old.cost());
        self.persist.push(Op::DeleteRetained {
            topic: topic.to_owned(),
        });
        self.retained.commit = self.persist.commit;
        self.hooks.each(|h| h.on_retained(topic, None));
        true
    }

    /// Applies a change made elsewhere (see [`RetainedSync`]). `$SYS`
    /// topics are each node's own and never applied.
    #[cfg(feature = "cluster")]
    pub(super) fn sync_retained(&mut self, change: RetainedSync, now_ms: u64) {
        match change {
            RetainedSync::Set(msg) if msg.topic.starts_with("$SYS") => {}
            RetainedSync::Set(msg) if msg.is_expired(now_ms) => {
                if self.clear_retained(&msg.topic) {
                    self.update_retained_gauge();
                }
            }
            RetainedSync::Set(mut msg) => {
                msg.retain = true;
                self.store_retained(&Arc::new(Tracked::new(msg)), now_ms);
            }
            RetainedSync::Clear(topic) => {
                if !topic.starts_with("$SYS") && self.clear_retained(&topic) {
                    self.update_retained_gauge();
                }
            }
            RetainedSync::KeepOnly(keep, done) => {
                let mut gone = Vec::new();
                self.retained.tree.retain(|topic, _| {
                    if !topic.starts_with("$SYS") && !keep.contains(topic) {
                        gone.push(topic.to_owned());
                    }
                    true
                });
                for topic in &gone {
                    self.clear_retained(topic);
                }
                if !gone.is_empty() {
                    tracing::info!(
                        cleared = gone.len(),
                        "cluster: retained messages the cluster's bucket does not hold were cleared"
                    );
                    self.update_retained_gauge();
                }
                let _ = done.send(());
            }
        }
    }

    /// A retained record read from the store at start-up. (One record at
    /// a time, so that the restore can stream them.)
    pub(super) fn restore_retained(&mut self, rec: MessageRecord, now_ms: u64) {
        let msg = message_from_record(rec);
        if msg.is_expired(now_ms) {
            self.persist.push(Op::DeleteRetained {
                topic: msg.topic.as_str().to_owned(),
            });
            return;
        }
        // What the store holds comes back whatever the limit says now: it
        // was accepted. Only new messages are refused past it.
        self.retained.bytes += retained_cost(&msg);
        // Cached, then evicted oldest first: the last ones read stay.
        if let Some(old) = self.retained.put(Arc::new(Tracked::new(msg))) {
            self.retained.bytes = self.retained.bytes.saturating_sub(old.cost());
        }
    }

    /// A `$SYS` value: retained in memory only, and not counted.
    pub(super) fn put_sys_retained(&mut self, msg: Arc<Tracked>) {
        if self.retained.put(msg).is_none() {
            self.retained.sys += 1;
        }
    }

    /// Clears a `$SYS` value (one that is now empty).
    pub(super) fn remove_sys_retained(&mut self, topic: &str) {
        if self.retained.remove(topic).is_some() {
            self.retained.sys -= 1;
        }
    }

    /// Drops the expired retained messages (once a minute; only if some
    /// retained message has an expiry at all).
    pub(super) fn sweep_retained(&mut self, now_ms: u64) {
        if self.retained.expiring == 0 {
            return;
        }
        let mut gone = Vec::new();
        self.retained.tree.retain(|topic, e| {
            let keep = !e.expired(now_ms);
            if !keep {
                gone.push((topic.to_owned(), e.cost(), e.cached.take()));
            }
            keep
        });
        for (topic, cost, cached) in &gone {
            self.retained.expiring -= 1;
            if let Some(m) = cached {
                self.retained.uncount(m, topic);
            }
            if !topic.starts_with("$SYS") {
                self.retained.bytes = self.retained.bytes.saturating_sub(*cost);
            } else {
                self.retained.sys = self.retained.sys.saturating_sub(1);
            }
        }
        for (topic, ..) in gone {
            self.hooks.each(|h| h.on_retained_expired(&topic));
            self.persist.push(Op::DeleteRetained { topic });
        }
        self.retained.evict();
        self.update_retained_gauge();
    }

    /// Retained messages held for clients (the broker's own `$SYS` topics
    /// are not counted), and what they take in memory and in the store.
    pub(super) fn update_retained_gauge(&mut self) {
        let r = &self.retained;
        let n = r.tree.len().saturating_sub(r.sys);
        self.stats.retained.store(n as u64, Relaxed);
        self.stats
            .retained_memory_bytes
            .store(r.memory_bytes() as u64, Relaxed);
        let stored = if self.persist.enabled { r.bytes } else { 0 };
        self.stats.retained_disk_bytes.store(stored as u64, Relaxed);
        self.pages.retained = r.cached_bytes();
    }

    // ----- sending them to new subscriptions ---------------------------

    /// A new subscription of `sid` to `filter` gets the retained messages
    /// it matches, a page at a time (see the module docs).
    pub(super) fn send_retained(
        &mut self,
        sid: SessionId,
        filter: &ByteStr,
        entry: SubEntry,
        now_ms: u64,
    ) {
        self.retained.next_stream += 1;
        // A subscription made again starts over: a session has at most one
        // stream per filter, so at most its subscriptions' worth.
        if let Some(streams) = self.retained.streams.get_mut(&sid) {
            streams.retain(|st| st.filter != *filter);
        }
        let stream = Stream {
            id: self.retained.next_stream,
            filter: filter.clone(),
            entry,
            after: None,
            last: false,
            reading: None,
            done: false,
        };
        self.retained.streams.entry(sid).or_default().push(stream);
        self.pump_retained(sid, now_ms);
    }

    /// Sends the next pages of `sid`'s streams while its connection has room.
    pub(super) fn pump_retained(&mut self, sid: SessionId, now_ms: u64) {
        let Some(mut streams) = self.retained.streams.remove(&sid) else {
            return;
        };
        for st in &mut streams {
            self.pump_stream(sid, st, now_ms);
        }
        streams.retain(|st| !st.done);
        if !streams.is_empty() {
            self.retained.streams.insert(sid, streams);
        }
    }

    /// Bursts that ran low (their tokens: session ids) want their next page.
    pub(crate) fn refill(&mut self, tokens: &[u64], now_ms: u64) {
        for &t in tokens {
            self.pump_retained(SessionId(t), now_ms);
        }
    }

    /// Where bursts ask for their next page: the driver waits on it and
    /// hands what it takes to [`Broker::refill`].
    pub(crate) fn refills(&self) -> Arc<Refills> {
        self.retained.refills.clone()
    }

    /// A client acknowledged a QoS 1/2 message: a stream waiting for room
    /// in its window may go on.
    pub(super) fn acknowledged(&mut self, sid: SessionId, now_ms: u64) {
        if self.retained.streaming(sid) {
            self.pump_retained(sid, now_ms);
        }
    }

    /// The connection of `sid` ended: so do its streams.
    pub(super) fn end_streams(&mut self, sid: SessionId) {
        self.retained.streams.remove(&sid);
    }

    fn pump_stream(&mut self, sid: SessionId, st: &mut Stream, now_ms: u64) {
        let mut pages = 0;
        while !st.done && st.reading.is_none() {
            if st.last {
                st.done = true;
                return;
            }
            let Some(s) = self.sessions.get(&sid) else {
                st.done = true;
                return;
            };
            match &s.conn {
                Some(conn) => {
                    let waiting = s.flows().map_or(0, |f| f.burst_queued);
                    if waiting > LOW || conn.outbox.burst_len() > LOW {
                        // A refill or an acknowledgement pumps again.
                        return;
                    }
                }
                // Away: a session the store holds keeps its QoS 1/2
                // retained messages, in the store (see `spill`), as it
                // keeps any message queued for it; QoS 0 is not queued.
                None if !s.stored
                    || !self.persist.enabled
                    || st.entry.options.qos == QoS::AtMostOnce =>
                {
                    st.done = true;
                    return;
                }
                // A page per turn, so that a large set does not hold the
                // core: the refill board brings the next turn.
                None if pages > 0 => {
                    self.retained.refills.post(sid.0);
                    return;
                }
                None => {}
            }
            pages += 1;
            let mut items = Vec::new();
            let mut last = String::new();
            let mut seen = 0;
            self.retained
                .tree
                .matches_after(&st.filter, st.after.as_deref(), |topic, e| {
                    seen += 1;
                    last.clear();
                    last.push_str(topic);
                    if !e.expired(now_ms) {
                        items.push(Item {
                            topic: topic.into(),
                            stamp: e.stamp,
                            msg: e.cached.clone(),
                        });
                    }
                    match seen >= PAGE {
                        true => ControlFlow::Break(()),
                        false => ControlFlow::Continue(()),
                    }
                });
            st.last = seen < PAGE;
            if seen == 0 {
                st.done = true;
                return;
            }
            st.after = Some(last.into());
            let topics: Vec<String> = items
                .iter()
                .filter(|i| i.msg.is_none())
                .map(|i| i.topic.to_string())
                .collect();
            let hits = items.len() - topics.len();
            stats::add(&self.stats.retained_cache_hits, hits as u64);
            if topics.is_empty() {
                let msgs = items.into_iter().filter_map(|i| i.msg).collect();
                self.deliver_page(sid, st, msgs, now_ms);
            } else {
                st.reading = Some(items);
                self.retained.reads.push(RetainedRead {
                    sid,
                    stream: st.id,
                    topics,
                    after_commit: self.retained.commit,
                });
            }
        }
    }

    /// Sends a page's messages, as for every delivery: the delivery ACL
    /// judges each, QoS 0 go as one burst that asks for the next page when
    /// it runs low, QoS 1/2 through the session's queue as the broker's own
    /// burst (outside the queue limits, paced by the in-flight window).
    fn deliver_page(&mut self, sid: SessionId, st: &Stream, msgs: Vec<Arc<Tracked>>, now_ms: u64) {
        let cap = self.retained.tree.len();
        let refills = self.retained.refills.clone();
        let entry = st.entry;
        let last = st.last;
        let (mut ctx, sessions) = self.ctx(now_ms);
        let Some(s) = sessions.get_mut(&sid) else {
            return;
        };
        let mut at_qos0 = Vec::new();
        for m in msgs {
            // The delivery ACL applies to retained messages as to live ones.
            if !ctx.hooks.can_receive(&s.client, &m) {
                continue;
            }
            let qos = m.qos.min(entry.options.qos);
            if qos == QoS::AtMostOnce {
                at_qos0.push(m);
                continue;
            }
            // Sent because of a new subscription: RETAIN is 1 ([MQTT-3.3.1-8]).
            let ids = entry.id.into_iter().collect();
            s.deliver(&m, qos, true, ids, true, Some(cap), &mut ctx);
        }
        if !at_qos0.is_empty() {
            let more = (!last).then(|| More {
                refills,
                token: sid.0,
                low: LOW,
            });
            s.send_burst(at_qos0, entry.id.into_iter().collect(), cap, more, &mut ctx);
        }
    }

    /// Retained reads the core asked for since the last call, for the
    /// driver to run ([`Broker::retained_page`] takes their answers).
    pub(crate) fn take_retained_reads(&mut self) -> Vec<RetainedRead> {
        std::mem::take(&mut self.retained.reads)
    }

    /// Asks again for the retained reads that failed (at each tick).
    pub(super) fn retry_retained_reads(&mut self) {
        let retry = std::mem::take(&mut self.retained.retry);
        self.retained.reads.extend(retry);
    }

    /// A page's retained messages, read back: sent in index order with
    /// those memory held, skipping any replaced or cleared since the match.
    pub(crate) fn retained_page(&mut self, page: RetainedPage, now_ms: u64) {
        let sid = page.request.sid;
        let Some(mut streams) = self.retained.streams.remove(&sid) else {
            return;
        };
        if let Some(st) = streams.iter_mut().find(|s| s.id == page.request.stream) {
            self.take_retained_page(sid, st, page, now_ms);
            self.pump_stream(sid, st, now_ms);
        }
        streams.retain(|st| !st.done);
        if !streams.is_empty() {
            self.retained.streams.insert(sid, streams);
        }
    }

    fn take_retained_page(
        &mut self,
        sid: SessionId,
        st: &mut Stream,
        page: RetainedPage,
        now_ms: u64,
    ) {
        let Some(items) = st.reading.take() else {
            return;
        };
        let records = match page.records {
            Ok(records) => records,
            Err(e) => {
                static WARNED: super::throttle::OncePerSecond =
                    super::throttle::OncePerSecond::new();
                if WARNED.ready(now_ms) {
                    tracing::warn!(error = %e,
                        "reading retained messages from the store failed; trying again in a second");
                }
                st.reading = Some(items);
                self.retained.retry.push(page.request);
                return;
            }
        };
        stats::add(&self.stats.retained_reads, records.len() as u64);
        let mut records = records.into_iter();
        let mut msgs = Vec::with_capacity(items.len());
        for item in items {
            let read = match item.msg {
                None => records.next().flatten(),
                Some(_) => None,
            };
            // Still retained, and not replaced since the match (a newer
            // message went to the subscriber live)?
            let Some(e) = self.retained.tree.get(&item.topic) else {
                continue;
            };
            if e.stamp != item.stamp {
                continue;
            }
            let msg = match (&e.cached, item.msg, read) {
                (Some(m), ..) => m.clone(),
                (None, Some(m), _) => m,
                (None, None, Some(rec)) => Arc::new(Tracked::new(message_from_record(rec))),
                // Not in the store (its commit failed): nothing to send.
                (None, None, None) => continue,
            };
            if !msg.is_expired(now_ms) {
                msgs.push(msg);
            }
        }
        self.deliver_page(sid, st, msgs, now_ms);
    }
}
