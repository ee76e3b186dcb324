//! The queue of packets waiting to be written to one connection.
//!
//! The broker core pushes packets under a short lock and never waits; the
//! connection's task drains everything that is queued in one go, so many
//! packets share one write (coalescing). The core reads the queue length to
//! apply its slow-consumer policy.
//!
//! An outbox has exactly one consumer (a connection's task, or the inline
//! client's relay), so one waker slot is enough: it is cheaper to keep per
//! connection than a `Notify`, and it lets the consumer wait on the outbox
//! and its socket in the same poll. An idle connection's outbox holds no
//! allocation (see [`Outbox::poll_drain`] and [`Outbox::trim`]).
//!
//! **Commit barrier.** With a persistent store, an acknowledgement may only
//! leave once what it acknowledges is committed. Such a packet is pushed
//! *held* with the number of the commit it waits for; every packet pushed
//! after it for this connection queues behind it, so the connection's order
//! is kept. The commit task releases held packets once their commit is
//! durable, or, if it failed for good (the commit task retries a write
//! that failed, and gives up only on an invalid batch or at shutdown),
//! turns the acknowledgements into refusals.
//!
//! **Gates.** A QoS 1 PUBACK may also be released before its commit, once
//! every stored copy of the message has been acknowledged by its subscriber
//! (see `broker::gate`): it is pushed *gated* with a token, and
//! [`Outbox::open`] lets it go. Either way, order is kept: nothing leaves
//! before the packets pushed ahead of it.
//!
//! **Cluster.** In a cluster, a publisher's acknowledgement also waits for
//! the cluster's engine to hold the message (issue 19), and an
//! acknowledgement that changes a session's state (a SUBACK, a PUBREC's
//! packet id, a PUBREL's "released") for the cluster's session bucket to
//! hold that: it is pushed with that many cluster waits, and goes only once
//! [`Outbox::open_cluster`] cleared each *and* its commit or gate let it
//! go, whichever order they come in.
//!
//! **Answers are bounded.** What the core queues because the client asked
//! for it (a PINGRESP, SUBACK, UNSUBACK, PUBACK, PUBREC, PUBCOMP) is up to
//! the client: one that sends requests and never reads, or whose answers
//! wait behind a held one (a slow commit, a cluster outage), would make
//! the queue grow without end. Past [`ANSWERS_MAX`] of them, queued or
//! held, [`Outbox::answers_full`] asks the connection's reader to stop
//! reading until they are written; nothing is dropped. Deliveries are not
//! counted: the core's queueing policy bounds them.

use crate::codec::{Packet, ProtocolVersion, ReasonCode};
use crate::link::outbound::{AckKind, Outbound, ANSWER_UNIT};
use crate::message::Message;
use std::collections::VecDeque;
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

/// The longest a connection whose writes fall behind pauses a publisher's
/// reads without draining anything (see [`Outbox::slow_down`]): a pause is
/// renewed for as long again each time it drains (within the episode's
/// [`EPISODE_MAX`], which the core enforces by letting go of it).
pub(crate) const BRIEF_PAUSE: Duration = Duration::from_millis(10);

/// The longest one episode of [`Outbox::slow_down`] pauses publishers.
pub(crate) const EPISODE_MAX: Duration = Duration::from_millis(100);

/// [`EPISODE_MAX`] for a link ([`Outbox::slow_down_while_draining`]): how
/// long it may go without draining before its publishers go on, and the
/// longest they wait at a time. A link drains in batches of
/// [`DRAIN_MAX`], which for the cluster's router (one message after the
/// other to NATS, on a busy machine, or in a debug build) can be close to
/// 100 ms apart while it makes steady progress; a second without any is a
/// stall (as for a congested session, `CONGESTED_EPISODE_MS`).
pub(crate) const LINK_EPISODE: Duration = Duration::from_secs(1);

/// The longest one pause for a congested session holds a publisher's reads
/// at a time (see [`Outbox::pause_reads`]).
pub(crate) const CONGESTED_PAUSE: Duration = Duration::from_millis(500);

/// Most answers ([`Outbound::answer_units`]) queued or held for one
/// connection before its reads pause: 64 KiB, about 1,000 bare
/// acknowledgements or 200 PINGRESPs. Answers are small and a client that
/// reads gets them within a write or two, so only a client that does not
/// read (or whose answers wait behind a held one) reaches it. Past it the
/// client's packets wait in its socket, where the kernel bounds them;
/// packets already read (a batch, and what waits in the core's queue,
/// which is bounded for all connections together) still add their
/// answers.
const ANSWERS_MAX: u32 = (64 * 1024 / ANSWER_UNIT) as u32;

/// Most packets one drain hands the consumer. What it has not taken yet
/// stays here, where [`Outbox::len`] counts it (the slow-consumer policy
/// sees the whole backlog), and the consumer's buffer stays small.
const DRAIN_MAX: usize = 512;

/// Packets for one connection, plus a "close after these" flag; `M` is
/// the shared message its deliveries hold (see [`crate::link::outbound`]).
#[derive(Debug)]
pub(crate) struct Outbox<M> {
    inner: Mutex<Inner<M>>,
    /// False only while the consumer waits with its waker registered and
    /// nobody has woken it since: it can then skip the lock. Invariant:
    /// whoever takes the waker sets this (see [`Outbox::wake_consumer`]).
    ready: AtomicBool,
    version: ProtocolVersion,
    /// How many congested sessions asked this connection's reader to pause
    /// (backpressure on a publisher that outruns its subscribers).
    read_pauses: AtomicU32,
    /// A subscriber's writes fell behind: reads pause briefly
    /// ([`NOT_PAUSED`], [`PAUSED`] or [`RENEWED`]). One byte: every
    /// connection has an outbox, and 16 more bytes here measured 100 more
    /// bytes of RSS per idle connection (its allocation changes class).
    brief: AtomicU8,
    /// Since when the connection waits for the client's next packet (the
    /// driver's monotonic clock, ms, low 32 bits), or [`HEARD`] while it is
    /// busy with what the client sent: the core closes a connection that
    /// waited one and a half keep-alives (see `broker::keepalive`).
    listening_since: AtomicU32,
    /// The answers queued or held are past [`ANSWERS_MAX`]: the reader
    /// waits (see [`Outbox::answers_full`]). Set and cleared under the
    /// lock, read without it.
    answers_full: AtomicBool,
}

/// [`Outbox::listening_since`] while the connection is not waiting for
/// the client (a clock reading of exactly this is nudged off it).
const HEARD: u32 = u32::MAX;

/// [`Outbox::listening_since`] for a connection waiting from `mono_ms`.
fn listening_since(mono_ms: u64) -> u32 {
    (mono_ms as u32).min(HEARD - 1)
}

/// [`Outbox::brief`] states.
const NOT_PAUSED: u8 = 0;
const PAUSED: u8 = 1;
/// Paused, and a subscriber that paused it drained since the reader last
/// looked: the pause goes on.
const RENEWED: u8 = 2;
/// Set with [`PAUSED`] or [`RENEWED`]: paused by a link
/// ([`Outbox::slow_down_while_draining`]), for up to [`LINK_EPISODE`] at
/// a time instead of [`BRIEF_PAUSE`]: a link drains in large batches, further
/// apart than a brief pause, and its publishers must not slip out between
/// two of them.
const BY_LINK: u8 = 4;

/// `brief` from `from` to `to` (either with its [`BY_LINK`] flag kept),
/// if it is `from`.
fn brief_step(brief: &AtomicU8, from: u8, to: u8) -> bool {
    brief
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
            (b & !BY_LINK == from).then_some((b & BY_LINK) | to)
        })
        .is_ok()
}

#[derive(Debug)]
struct Inner<M> {
    /// Ready to be written.
    queue: VecDeque<Outbound<M>>,
    /// What only some connections need, some of the time; allocated only
    /// then (`None` when both parts are empty): most connections never wait
    /// for a commit nor fall behind, and the empty parts would take room in
    /// every outbox.
    rare: Option<Box<Rare<M>>>,
    closed: bool,
    /// [`Outbound::Burst`]s queued or held: while there are any, a drain
    /// expands them in place instead of moving the queue wholesale.
    bursts: u32,
    /// [`Outbound::answer_units`] of what `queue` holds (those held are
    /// [`Rare::held_answers`]). Two bytes that fit in this struct's padding
    /// (see [`Outbox::brief`] for why that matters); saturates, which can
    /// only undercount (a pause ends early) and only far past the bound.
    answers: u16,
    /// The consumer, when it last found nothing to do: woken when packets
    /// become ready, the outbox closes, or reads resume.
    waker: Option<Waker>,
}

#[derive(Debug)]
struct Rare<M> {
    /// Waiting for a commit or a gate, in push order.
    held: VecDeque<Deferred<M>>,
    /// Publishers paused because this connection's writes fell behind.
    slowed: Option<Slowed<M>>,
    /// The last commit released while packets were held: a packet that
    /// waited for the cluster past its commit goes once the cluster lets
    /// it (commits only grow, so nothing pushed later waits for an older
    /// one, and losing this with `rare` loses nothing).
    released: u64,
    /// [`Outbound::answer_units`] of what `held` holds.
    held_answers: u32,
}

// By hand: derived, they would ask for `M: Default`.
impl<M> Default for Inner<M> {
    fn default() -> Self {
        Inner {
            queue: VecDeque::new(),
            rare: None,
            closed: false,
            bursts: 0,
            answers: 0,
            waker: None,
        }
    }
}

impl<M> Default for Rare<M> {
    fn default() -> Self {
        Rare {
            held: VecDeque::new(),
            slowed: None,
            released: 0,
            held_answers: 0,
        }
    }
}

/// Publishers paused by [`Outbox::slow_down`] in the current episode.
#[derive(Debug)]
struct Slowed<M> {
    /// Paused until this connection has (nearly) caught up.
    publishers: Vec<Arc<Outbox<M>>>,
    /// When the episode ends (the core's clock, ms) if the connection has
    /// not caught up by then; after that nobody is paused for it until it
    /// does.
    until_ms: u64,
    /// Drained since [`Outbox::slow_down_while_draining`] last looked: the
    /// consumer is slower than its publishers, not stuck.
    drained: bool,
}

/// A packet that may not be written yet.
#[derive(Debug)]
struct Deferred<M> {
    /// The commit it waits for; 0 for a packet that waits for nothing but
    /// the packets ahead of it.
    commit: u64,
    /// Its gate's token (0: none), and whether the gate opened.
    token: u64,
    open: bool,
    /// How many cluster waits it still has (see [`Outbox::open_cluster`]),
    /// on top of its commit or gate.
    cluster: u8,
    /// Its commit failed while it still waited for the cluster: refused
    /// when it goes, unless its gate opened meanwhile (see
    /// [`Inner::release_ready`]).
    commit_failed: bool,
    /// The cluster will never hold what it acknowledges
    /// ([`Outbox::refuse_cluster`]): refused, whatever its commit or gate.
    cluster_refused: bool,
    packet: Outbound<M>,
}

impl<M> Deferred<M> {
    /// Free to go once everything ahead of it went.
    fn ready(&self) -> bool {
        self.commit == 0 || self.open
    }

    /// Free to go now that commits up to `released` are done.
    fn free(&self, released: u64) -> bool {
        (self.commit <= released || self.ready() || self.cluster_refused) && self.cluster == 0
    }

    /// What it is sent as, if not as pushed: the reason it is refused.
    fn refusal(&self) -> Option<ReasonCode> {
        if self.cluster_refused {
            // Not a failure of this node's: a resource (the router's
            // queue, the engine) ran out, try later.
            Some(ReasonCode::QuotaExceeded)
        } else if self.commit_failed && !self.ready() {
            Some(ReasonCode::UnspecifiedError)
        } else {
            None
        }
    }
}

impl<M: Deref<Target = Message>> Inner<M> {
    /// Commit `commit` is done (`failed`: for good): every held packet
    /// that waited for it is marked as refused if it failed, then what is
    /// free to go goes ([`Inner::release_ready`]). Returns whether any
    /// moved.
    ///
    /// The mark stays with the packet, so one that also waits for the
    /// cluster, and goes only once the cluster lets it, is still refused
    /// then: a commit that failed is never acknowledged as a success.
    /// Commits are released in order, so the ones this commit covers are
    /// those past the last one released.
    fn commit_done(&mut self, commit: u64, failed: bool, version: ProtocolVersion) -> bool {
        if let Some(r) = self.rare.as_mut() {
            let before = r.released;
            r.released = before.max(commit);
            if failed {
                for h in r.held.iter_mut() {
                    if h.commit > before && h.commit <= commit {
                        h.commit_failed = true;
                    }
                }
            }
        }
        self.release_ready(version)
    }

    /// Moves held packets that are [free](Deferred::free) to go, from the
    /// front, to the ready queue; frees the held queue once it is empty.
    /// Returns whether any moved.
    ///
    /// A refused acknowledgement ([`Deferred::refusal`]) is rewritten for a
    /// client of `version` ([`refuse`]), or the outbox is closed instead.
    /// Only what waited for a failed commit vouches for it: an open gate's
    /// acknowledgement is true whatever the commit did (every stored copy
    /// was delivered and acknowledged), and a packet that only kept its
    /// place in line vouches for nothing.
    fn release_ready(&mut self, version: ProtocolVersion) -> bool {
        let mut released = false;
        let commit = self.rare.as_ref().map_or(0, |r| r.released);
        while let Some(r) = self.rare.as_mut() {
            if !r.held.front().is_some_and(|h| h.free(commit)) {
                break;
            }
            let Some(mut h) = r.held.pop_front() else {
                break;
            };
            if let Some(reason) = h.refusal() {
                if refuse(&mut h.packet, version, reason) {
                    r.held.clear();
                    r.held_answers = 0;
                    self.closed = true;
                    break;
                }
            }
            let units = h.packet.answer_units();
            r.held_answers = r.held_answers.saturating_sub(units);
            self.add_answers(units);
            self.queue.push_back(h.packet);
            released = true;
        }
        self.tidy();
        released
    }

    fn held_len(&self) -> usize {
        self.rare.as_ref().map_or(0, |r| r.held.len())
    }

    /// `units` more answers in `queue`.
    fn add_answers(&mut self, units: u32) {
        let units = u16::try_from(units).unwrap_or(u16::MAX);
        self.answers = self.answers.saturating_add(units);
    }

    /// `packet` left `queue` for the consumer.
    fn took(&mut self, packet: &Outbound<M>) {
        if self.answers > 0 {
            let units = u16::try_from(packet.answer_units()).unwrap_or(u16::MAX);
            self.answers = self.answers.saturating_sub(units);
        }
    }

    /// Past [`ANSWERS_MAX`], queued and held together.
    fn answers_over(&self) -> bool {
        let held = self.rare.as_ref().map_or(0, |r| r.held_answers);
        u32::from(self.answers).saturating_add(held) > ANSWERS_MAX
    }

    /// The held packets, if any.
    fn held_mut(&mut self) -> Option<&mut VecDeque<Deferred<M>>> {
        self.rare
            .as_mut()
            .map(|r| &mut r.held)
            .filter(|h| !h.is_empty())
    }

    /// Frees the rare parts once both are empty.
    fn tidy(&mut self) {
        if self
            .rare
            .as_ref()
            .is_some_and(|r| r.held.is_empty() && r.slowed.is_none())
        {
            self.rare = None;
        }
    }

    /// Ends the episode of slowing publishers down, if one runs.
    fn take_slowed(&mut self) -> Option<Slowed<M>> {
        let slowed = self.rare.as_mut()?.slowed.take();
        self.tidy();
        slowed
    }

    /// Moves up to [`DRAIN_MAX`] packets from the front of the queue to
    /// `into`, expanding retained bursts in place: a burst that is not
    /// done stays at the front, and what was queued behind it waits.
    fn drain_with_bursts(&mut self, now_ms: u64, into: &mut VecDeque<Outbound<M>>) {
        let mut moved = 0;
        while moved < DRAIN_MAX {
            match self.queue.front_mut() {
                None => break,
                Some(Outbound::Burst(b)) => {
                    moved += b.expand(DRAIN_MAX - moved, now_ms, into);
                    if !b.msgs.is_empty() {
                        break;
                    }
                    self.queue.pop_front();
                    self.bursts = self.bursts.saturating_sub(1);
                }
                Some(_) => {
                    if let Some(p) = self.queue.pop_front() {
                        self.took(&p);
                        into.push_back(p);
                    }
                    moved += 1;
                }
            }
        }
    }

    fn register(&mut self, cx: &Context<'_>) {
        match &mut self.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
    }
}

impl<M: Deref<Target = Message>> Outbox<M> {
    /// An empty, open outbox for a client speaking `version`, whose
    /// connection waits for it from `mono_ms` on (see [`Outbox::listening`]).
    pub(crate) fn new(version: ProtocolVersion, mono_ms: u64) -> Self {
        Outbox {
            inner: Mutex::default(),
            ready: AtomicBool::new(true),
            version,
            read_pauses: AtomicU32::new(0),
            brief: AtomicU8::new(NOT_PAUSED),
            listening_since: AtomicU32::new(listening_since(mono_ms)),
            answers_full: AtomicBool::new(false),
        }
    }

    /// The connection waits for the client's next packet from `mono_ms`
    /// on: the monotonic reading of the clock whose readings the core's
    /// keep-alive check is given (`broker::Now::mono_ms`).
    pub(crate) fn listening(&self, mono_ms: u64) {
        self.listening_since
            .store(listening_since(mono_ms), Ordering::Relaxed);
    }

    /// The client sent something: the connection is busy with it, not
    /// waiting (the keep-alive stops until [`Outbox::listening`]).
    pub(crate) fn heard(&self) {
        self.listening_since.store(HEARD, Ordering::Relaxed);
    }

    /// Milliseconds the connection has been waiting for the client at
    /// `mono_ms` (on the clock [`Outbox::listening`] was given); `None` while
    /// it is busy with what the client sent. Exact while under 2^31 ms
    /// (24 days): far more than the longest keep-alive (65,535 s x 1.5).
    /// A connection that started waiting after `mono_ms` (its task read the
    /// clock after the core did) has been silent for 0 ms, not for nearly
    /// 2^32.
    pub(crate) fn silent_ms(&self, mono_ms: u64) -> Option<u32> {
        match self.listening_since.load(Ordering::Relaxed) {
            HEARD => None,
            since => {
                let silent = (mono_ms as u32).wrapping_sub(since);
                Some(if silent > i32::MAX as u32 { 0 } else { silent })
            }
        }
    }

    /// The consumer's waker, to be woken once the lock is released. Taken
    /// together with setting `ready`: a consumer that finds `ready` false
    /// is then sure its waker is still registered.
    fn wake_consumer(&self, inner: &mut Inner<M>) -> Option<Waker> {
        self.ready.store(true, Ordering::Release);
        inner.waker.take()
    }

    /// Releases the lock, then wakes the consumer if `wake` (a waker is
    /// never called under the lock: it may run the consumer right away).
    fn unlock(&self, mut inner: std::sync::MutexGuard<'_, Inner<M>>, wake: bool) {
        let waker = if wake {
            self.wake_consumer(&mut inner)
        } else {
            None
        };
        drop(inner);
        if let Some(w) = waker {
            w.wake();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<M>> {
        // A panic while holding this lock cannot leave the queue in a broken
        // state (every method is a few plain collection calls), so a
        // poisoned lock is usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a packet (behind any held ones). Returns false (and drops
    /// it) once closed.
    pub(crate) fn push(&self, packet: impl Into<Outbound<M>>) -> bool {
        let packet = packet.into();
        let units = packet.answer_units();
        let mut inner = self.lock();
        if inner.closed {
            return false;
        }
        if matches!(packet, Outbound::Burst(_)) {
            inner.bursts += 1;
        }
        if let Some(r) = inner.rare.as_mut().filter(|r| !r.held.is_empty()) {
            r.held_answers = r.held_answers.saturating_add(units);
            r.held.push_back(Deferred {
                commit: 0,
                token: 0,
                open: false,
                cluster: 0,
                commit_failed: false,
                cluster_refused: false,
                packet,
            });
            self.note_answers(&inner, units);
            return true;
        }
        if units > 0 {
            inner.add_answers(units);
            self.note_answers(&inner, units);
        }
        inner.queue.push_back(packet);
        // Only the first packet of a batch needs to wake the consumer.
        let first = inner.queue.len() == 1;
        self.unlock(inner, first);
        true
    }

    /// Queues a packet that may only be written once commit `commit` is
    /// durable (see [`Outbox::release`]), or, if `token` is not 0, once
    /// [`Outbox::open`]`(token)` opens its gate, whichever comes first.
    pub(crate) fn push_gated(
        &self,
        commit: u64,
        token: u64,
        packet: impl Into<Outbound<M>>,
    ) -> bool {
        self.push_held(commit, token, 0, packet)
    }

    /// [`Outbox::push_gated`], and also until [`Outbox::open_cluster`]`(token)`
    /// was called `cluster` times (`token` is then not 0): once for each
    /// thing in the cluster it waits for. With `commit` 0 it waits for the
    /// cluster alone.
    pub(crate) fn push_held(
        &self,
        commit: u64,
        token: u64,
        cluster: u8,
        packet: impl Into<Outbound<M>>,
    ) -> bool {
        debug_assert!(cluster == 0 || token != 0, "a cluster wait needs its token");
        let packet = packet.into();
        let units = packet.answer_units();
        let mut inner = self.lock();
        if inner.closed {
            return false;
        }
        let rare = inner.rare.get_or_insert_default();
        rare.held_answers = rare.held_answers.saturating_add(units);
        rare.held.push_back(Deferred {
            commit,
            token,
            open: false,
            cluster,
            commit_failed: false,
            cluster_refused: false,
            packet,
        });
        self.note_answers(&inner, units);
        true
    }

    /// After `units` answers were added: the reader stops once they are
    /// past the bound.
    fn note_answers(&self, inner: &Inner<M>, units: u32) {
        if units > 0 && inner.answers_over() {
            self.answers_full.store(true, Ordering::Relaxed);
        }
    }

    /// After answers left: the reader may go on once they are within the
    /// bound. No wake: the consumer that drains is the reader (one task
    /// per connection), which looks right after.
    fn recount_answers(&self, inner: &Inner<M>) {
        if self.answers_full.load(Ordering::Relaxed) && !inner.answers_over() {
            self.answers_full.store(false, Ordering::Relaxed);
        }
    }

    /// True while the answers queued or held for the client (not its
    /// deliveries) are past [`ANSWERS_MAX`]: its connection should read
    /// nothing more until they are written, as the client reads them (or
    /// until the held ones are released). Nothing is dropped: the client
    /// is just not read. Its consumer, draining, lifts it.
    pub(crate) fn answers_full(&self) -> bool {
        self.answers_full.load(Ordering::Relaxed)
    }

    /// The cluster holds what the packet `token` acknowledges (one of its
    /// waits is over): it goes once the others are, its commit or gate
    /// lets it, and the packets ahead of it went.
    pub(crate) fn open_cluster(&self, token: u64) {
        let mut inner = self.lock();
        let Some(h) = inner
            .held_mut()
            .and_then(|held| held.iter_mut().find(|h| h.token == token))
        else {
            return;
        };
        h.cluster = h.cluster.saturating_sub(1);
        let released = inner.release_ready(self.version);
        self.unlock(inner, released);
    }

    /// The cluster will never hold what the packet `token` acknowledges
    /// (the router let go of its copy): it goes, as soon as the packets
    /// ahead of it went, as a refusal, 0x97 (Quota exceeded) for a 5.0
    /// client; a 3.x client, which has no way to hear "no", is
    /// disconnected instead, so that it publishes again.
    pub(crate) fn refuse_cluster(&self, token: u64) {
        let mut inner = self.lock();
        let Some(h) = inner
            .held_mut()
            .and_then(|held| held.iter_mut().find(|h| h.token == token && h.cluster > 0))
        else {
            return;
        };
        h.cluster = 0;
        h.cluster_refused = true;
        let released = inner.release_ready(self.version);
        let closed = inner.closed;
        self.unlock(inner, released || closed);
    }

    /// Opens the gate `token`: its packet may go without waiting for its
    /// commit (as soon as the packets ahead of it went).
    pub(crate) fn open(&self, token: u64) {
        let mut inner = self.lock();
        let Some(h) = inner
            .held_mut()
            .and_then(|held| held.iter_mut().find(|h| h.token == token))
        else {
            return; // Already released by its commit.
        };
        h.open = true;
        let released = inner.release_ready(self.version);
        self.unlock(inner, released);
    }

    /// Commits up to `commit` are done: held packets waiting for them
    /// become ready. If the commit `failed`, the acknowledgements among them
    /// are not sent as such: a 5.0 client gets the refusal reason code
    /// 0x80 instead; a 3.x client, which has no way to hear "no", is
    /// disconnected so that it publishes again.
    pub(crate) fn release(&self, commit: u64, failed: bool) {
        let mut inner = self.lock();
        let released = inner.commit_done(commit, failed, self.version);
        let closed = inner.closed;
        self.unlock(inner, released || closed);
    }

    /// Asks the connection's reader to stop reading (until every pause is
    /// resumed, or the bound its reader puts on a pause passes).
    pub(crate) fn pause_reads(&self) {
        self.read_pauses.fetch_add(1, Ordering::Relaxed);
    }

    /// Withdraws one pause.
    pub(crate) fn resume_reads(&self) {
        let before = self
            .read_pauses
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(n.saturating_sub(1))
            })
            .unwrap_or(0);
        if before <= 1 {
            self.unlock(self.lock(), true);
        }
    }

    /// This connection's writes fell behind (`now_ms` on the core's clock):
    /// pauses `publisher`'s reads until this connection has nearly caught
    /// up. One episode of pausing lasts at most [`EPISODE_MAX`]; one that
    /// ends before the connection caught up (a slow link, or a stuck
    /// client) starts no other until it has.
    pub(crate) fn slow_down(&self, publisher: &Arc<Self>, now_ms: u64) {
        self.slow_publisher(publisher, now_ms, false);
    }

    /// [`Outbox::slow_down`] for a consumer that stands for a link rather
    /// than one client (the cluster's router): its episode goes on for as
    /// long as it drains at least once per [`LINK_EPISODE`], so its
    /// publishers go at its pace instead of outrunning it and having most
    /// of their QoS 0 messages dropped. Only one that stops draining for
    /// that long (NATS unreachable) lets them go, until it drains again.
    pub(crate) fn slow_down_while_draining(&self, publisher: &Arc<Self>, now_ms: u64) {
        self.slow_publisher(publisher, now_ms, true);
    }

    fn slow_publisher(&self, publisher: &Arc<Self>, now_ms: u64, while_draining: bool) {
        if std::ptr::eq(self, &**publisher) {
            return; // A client must keep reading its own acknowledgements.
        }
        let mut inner = self.lock();
        let rare = inner.rare.get_or_insert_default();
        let episode = if while_draining {
            LINK_EPISODE
        } else {
            EPISODE_MAX
        };
        let episode = episode.as_millis() as u64;
        let slowed = rare.slowed.get_or_insert_with(|| Slowed {
            publishers: Vec::new(),
            until_ms: now_ms + episode,
            drained: false,
        });
        if while_draining && std::mem::take(&mut slowed.drained) {
            slowed.until_ms = now_ms + episode;
        }
        if now_ms >= slowed.until_ms {
            slowed.publishers.clear();
            return;
        }
        // Flagged again even if listed: another connection may have let
        // it go meanwhile.
        let flag = if while_draining { BY_LINK } else { 0 };
        let _ = publisher
            .brief
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                Some((b & BY_LINK) | flag | (b & !BY_LINK).max(PAUSED))
            });
        if !slowed.publishers.iter().any(|p| Arc::ptr_eq(p, publisher)) {
            slowed.publishers.push(publisher.clone());
        }
    }

    /// Ends a brief pause (its bound passed).
    pub(crate) fn end_brief_pause(&self) {
        self.brief.store(NOT_PAUSED, Ordering::Relaxed);
    }

    /// The reader begins a pause: only renewals from here on extend it.
    pub(crate) fn watch_brief_pause(&self) {
        brief_step(&self.brief, RENEWED, PAUSED);
    }

    /// For the reader whose pause bound passed: true (and the pause goes
    /// on for another [`Outbox::brief_bound`]) if a brief pause was renewed
    /// since the reader began it or last asked, and no congested session
    /// pauses it (whose bound is its own).
    pub(crate) fn brief_pause_renewed(&self) -> bool {
        let renewed = brief_step(&self.brief, RENEWED, PAUSED);
        renewed && self.read_pauses.load(Ordering::Relaxed) == 0
    }

    /// How long a brief pause lasts without a renewal: [`BRIEF_PAUSE`], or
    /// [`LINK_EPISODE`] for one a link asked for.
    pub(crate) fn brief_bound(&self) -> Duration {
        if self.brief.load(Ordering::Relaxed) & BY_LINK != 0 {
            LINK_EPISODE
        } else {
            BRIEF_PAUSE
        }
    }

    /// Lets publishers slowed down for this connection go on.
    fn resume_slowed(slowed: Option<Slowed<M>>) {
        for p in slowed.into_iter().flat_map(|s| s.publishers) {
            if p.brief.swap(NOT_PAUSED, Ordering::Relaxed) != NOT_PAUSED {
                p.unlock(p.lock(), true);
            }
        }
    }

    /// True while some congested session, or a brief pause, asks this
    /// connection not to read.
    pub(crate) fn reads_paused(&self) -> bool {
        self.read_pauses.load(Ordering::Relaxed) > 0
            || self.brief.load(Ordering::Relaxed) != NOT_PAUSED
    }

    /// `None` when reads are allowed; otherwise the longest a reader
    /// should wait (see [`Outbox::poll_paused`]), for one that is not this
    /// outbox's consumer and looks for itself.
    pub(crate) fn pause_bound(&self) -> Option<Duration> {
        if self.read_pauses.load(Ordering::Relaxed) > 0 {
            Some(CONGESTED_PAUSE)
        } else {
            match self.brief.load(Ordering::Relaxed) {
                NOT_PAUSED => None,
                _ => Some(self.brief_bound()),
            }
        }
    }

    /// `None` when reads are allowed; otherwise the longest the reader
    /// should wait (a brief pause or a congested session's), and the
    /// consumer is woken when the pause is lifted. The caller bounds the
    /// wait: a pause slows a publisher down but never blocks it for good
    /// (two clients that publish to each other could otherwise wait on each
    /// other forever).
    pub(crate) fn poll_paused(&self, cx: &Context<'_>) -> Option<Duration> {
        if !self.reads_paused() {
            return None;
        }

        let mut inner = self.lock();
        inner.register(cx);
        // Checked again under the lock: a resume in between found no waker.
        self.pause_bound()
    }

    /// Retained messages of bursts not yet handed to the consumer.
    pub(crate) fn burst_len(&self) -> usize {
        let inner = self.lock();
        if inner.bursts == 0 {
            return 0;
        }
        let held = inner
            .rare
            .iter()
            .flat_map(|r| r.held.iter().map(|h| &h.packet));
        let queued = inner.queue.iter().chain(held);
        queued
            .map(|p| match p {
                Outbound::Burst(b) => b.msgs.len(),
                _ => 0,
            })
            .sum()
    }

    /// Packets waiting to be written (held ones included; a retained
    /// burst counts as one).
    pub(crate) fn len(&self) -> usize {
        let inner = self.lock();
        inner.queue.len() + inner.held_len()
    }

    /// Asks the writer to write what is queued, then close the connection.
    /// Later pushes are dropped; held packets still go out when released.
    pub(crate) fn close(&self) {
        let mut inner = self.lock();
        inner.closed = true;
        let slowed = inner.take_slowed();
        self.unlock(inner, true);
        Self::resume_slowed(slowed);
    }

    /// Moves everything ready to the back of `into`. Returns false when the
    /// outbox is closed and nothing more will come.
    /// Retained bursts are expanded at `now_ms`.
    #[cfg(any(test, fuzzing))]
    pub(crate) fn try_drain(&self, now_ms: u64, into: &mut VecDeque<Outbound<M>>) -> bool {
        let mut inner = self.lock();
        if inner.bursts > 0 {
            while !inner.queue.is_empty() {
                inner.drain_with_bursts(now_ms, into);
            }
        }
        into.append(&mut inner.queue);
        inner.answers = 0;
        self.recount_answers(&inner);
        !(inner.closed && inner.held_len() == 0 && into.is_empty())
    }

    /// When something is ready or the outbox is finished, moves what is
    /// ready to the back of `into`, and is false once the outbox is closed
    /// and nothing more will come; otherwise `Pending`, and the consumer is
    /// woken when that changes. Retained bursts are expanded at the time
    /// `now_ms` returns; it is asked only then (bursts are rare, and this is
    /// polled often: no clock read per poll).
    ///
    /// The packets are moved out, the queue keeps its allocation: the core
    /// writes into the same (cache-warm) buffer batch after batch, which
    /// swapping buffers with the consumer was measurably slower at. A
    /// consumer gone idle [`Outbox::trim`]s it.
    pub(crate) fn poll_drain(
        &self,
        cx: &Context<'_>,
        now_ms: impl FnOnce() -> u64,
        into: &mut VecDeque<Outbound<M>>,
    ) -> Poll<bool> {
        // Without the lock while waiting: the consumer is polled for its
        // socket too, often once per packet read.
        if !self.ready.load(Ordering::Acquire) {
            return Poll::Pending;
        }
        let mut inner = self.lock();
        let finished = inner.closed && inner.held_len() == 0;
        if !inner.queue.is_empty() || finished {
            if inner.bursts > 0 {
                inner.drain_with_bursts(now_ms(), into);
            } else if inner.queue.len() <= DRAIN_MAX {
                into.append(&mut inner.queue);
                inner.answers = 0;
            } else if inner.answers == 0 {
                into.extend(inner.queue.drain(..DRAIN_MAX));
            } else {
                // Behind, with answers among the deliveries: counted out
                // one by one (only here, the slow path of a backlog).
                for _ in 0..DRAIN_MAX {
                    let Some(p) = inner.queue.pop_front() else {
                        break;
                    };
                    inner.took(&p);
                    into.push_back(p);
                }
            }
            self.recount_answers(&inner);
            // Within one drain of caught up: those it slowed down may go on.
            let caught_up = inner.queue.len() < DRAIN_MAX;
            let slowed = if caught_up {
                inner.take_slowed()
            } else {
                // Draining, but still behind: its publishers' brief pauses
                // go on.
                if let Some(s) = inner.rare.as_mut().and_then(|r| r.slowed.as_mut()) {
                    s.drained = true;
                    for p in &s.publishers {
                        brief_step(&p.brief, PAUSED, RENEWED);
                    }
                }
                None
            };
            drop(inner);
            Self::resume_slowed(slowed);
            return Poll::Ready(!(finished && into.is_empty()));
        }
        // Nothing is queued: no answer either (the count only follows what
        // is queued, so this keeps a pause from outliving its cause).
        inner.answers = 0;
        self.recount_answers(&inner);
        // Registered under the lock that pushes take, so a push right after
        // the check above finds the waker (and sets `ready` again).
        inner.register(cx);
        self.ready.store(false, Ordering::Relaxed);
        Poll::Pending
    }

    /// Frees the queue's allocation if it is empty: for a consumer that
    /// has gone idle.
    pub(crate) fn trim(&self) {
        let mut inner = self.lock();
        let spare = if inner.queue.is_empty() {
            std::mem::take(&mut inner.queue)
        } else {
            VecDeque::new()
        };
        drop(inner);
        drop(spare);
    }

    /// [`Outbox::poll_drain`] as a future.
    pub(crate) async fn drain(
        &self,
        now_ms: impl Fn() -> u64,
        into: &mut VecDeque<Outbound<M>>,
    ) -> bool {
        std::future::poll_fn(|cx| self.poll_drain(cx, &now_ms, into)).await
    }
}

/// Rewrites a refused acknowledgement with `code`. Returns true if the
/// connection must be closed instead.
fn refuse<M>(packet: &mut Outbound<M>, version: ProtocolVersion, code: ReasonCode) -> bool {
    let reason = match packet {
        Outbound::Ack(AckKind::Ack | AckKind::Rec, _, reason) => reason,
        Outbound::Other(p) => match &mut **p {
            Packet::PubAck(r) | Packet::PubRec(r) => &mut r.reason,
            Packet::SubAck(s) => {
                // 0x80 is a failure code in 3.x SUBACKs too.
                for reason in &mut s.reasons {
                    *reason = ReasonCode::UnspecifiedError;
                }
                return false;
            }
            _ => return false,
        },
        _ => return false,
    };
    if !version.is_v5() {
        return true;
    }
    *reason = code;
    false
}

#[cfg(test)]
mod tests {
    /// Every connection has an outbox: see [`Outbox::brief`]. 88 bytes
    /// is the most that keeps its `Arc` in glibc's 112-byte chunks.
    #[test]
    #[cfg(target_pointer_width = "64")]
    fn an_outbox_stays_small() {
        assert!(std::mem::size_of::<Outbox>() <= 88);
    }

    use super::*;

    /// Link's queues as its tests fill them: with bare messages.
    use crate::link::Bare;
    type Outbox = super::Outbox<Bare>;
    type Outbound = super::Outbound<Bare>;

    #[test]
    fn silence_counts_only_while_listening() {
        let now = 1_764_000_000_000;
        let o = Outbox::new(ProtocolVersion::V5, now);
        assert!(
            o.silent_ms(now + 500).unwrap() >= 500,
            "listening from the start"
        );
        o.heard();
        assert_eq!(
            o.silent_ms(now + 10_000),
            None,
            "busy with the client's packets"
        );
        let later = now + 20_000;
        o.listening(later);
        assert!(o.silent_ms(later + 1_500).unwrap() >= 1_500);
        assert_eq!(
            o.silent_ms(later - 5),
            Some(0),
            "started waiting after the core read its clock"
        );
    }

    /// Silence is counted on the low 32 bits of the clock, across their
    /// wrap (every 49 days of uptime).
    #[test]
    fn silence_is_counted_across_the_clock_wrapping_32_bits() {
        let wrap = 1u64 << 40;
        let o = Outbox::new(ProtocolVersion::V5, wrap - 1_000);
        assert_eq!(o.silent_ms(wrap + 500), Some(1_500));
        o.listening(wrap - 1); // low 32 bits: the HEARD mark, nudged off it
        assert_eq!(o.silent_ms(wrap + 2), Some(4));
    }
    use crate::codec::PubResp;
    use std::num::NonZeroU16;
    use std::sync::Arc;

    fn puback(n: u16) -> Outbound {
        Packet::PubAck(PubResp::new(NonZeroU16::new(n).unwrap())).into()
    }

    fn ping() -> Outbound {
        Packet::PingResp.into()
    }

    fn retained(topic: &str) -> Arc<Bare> {
        let p = crate::codec::Publish {
            dup: false,
            qos_pid: crate::codec::QosPid::AtMostOnce,
            retain: true,
            topic: topic.into(),
            payload: bytes::Bytes::from_static(b"v"),
            properties: Default::default(),
        };
        Arc::new(Bare(Message::from_publish(p, 0, None)))
    }

    /// A retained burst keeps its place in line (after what was queued
    /// before it, before what comes after), counts as one packet, and is
    /// handed out at most a drain's worth at a time.
    #[test]
    fn a_burst_is_expanded_in_place_a_drain_at_a_time() {
        let o = Outbox::new(ProtocolVersion::V5, 0);
        o.push(ping());
        let msgs = (0..DRAIN_MAX + 10).map(|i| retained(&format!("r/{i}")));
        let refills = Arc::new(crate::link::refill::Refills::default());
        let burst = crate::link::outbound::Burst {
            msgs: msgs.collect(),
            sub_ids: Box::new([]),
            more: Some(crate::link::refill::More {
                refills: refills.clone(),
                token: 42,
                low: 10,
            }),
        };
        o.push(Outbound::Burst(Box::new(burst)));
        o.push(puback(1));
        assert_eq!(o.len(), 3);
        assert_eq!(o.burst_len(), DRAIN_MAX + 10);
        let waker = std::task::Waker::noop();
        let cx = Context::from_waker(waker);
        let mut v = VecDeque::new();
        assert_eq!(o.poll_drain(&cx, || 0, &mut v), Poll::Ready(true));
        assert_eq!(v.len(), DRAIN_MAX);
        assert_eq!(v.pop_front(), Some(ping()));
        let Some(Outbound::Deliver(d)) = v.front() else {
            panic!("{v:?}")
        };
        assert_eq!((d.msg.topic.as_str(), d.retain), ("r/0", true));
        assert_eq!(o.burst_len(), 11);
        let mut posted = Vec::new();
        refills.take(&mut posted);
        assert!(posted.is_empty(), "11 left: not low yet");
        v.clear();
        assert_eq!(o.poll_drain(&cx, || 0, &mut v), Poll::Ready(true));
        assert_eq!(v.len(), 12, "the rest of the burst, then the PUBACK");
        refills.take(&mut posted);
        assert_eq!(posted, [42], "asked for more once");
        assert_eq!(v.pop_back(), Some(puback(1)));
        assert_eq!(o.len(), 0);
    }

    /// PINGRESPs past [`ANSWERS_MAX`] ask the reader to stop; a drain
    /// lifts it, a partial one only once what is left is within it.
    #[test]
    fn answers_past_the_bound_stop_reads_until_drained() {
        let o = Outbox::new(ProtocolVersion::V3_1_1, 0);
        let per_ping = ping().answer_units();
        let fit = (ANSWERS_MAX / per_ping) as usize;
        for _ in 0..fit {
            o.push(Packet::PingResp);
        }
        assert!(!o.answers_full(), "{fit} PINGRESPs fit");
        o.push(Packet::PingResp);
        assert!(o.answers_full());
        let waker = std::task::Waker::noop();
        let cx = Context::from_waker(waker);
        let mut v = VecDeque::new();
        assert!(o.poll_drain(&cx, || 0, &mut v).is_ready());
        assert!(!o.answers_full());

        // A backlog drained a batch at a time.
        let many = 2 * DRAIN_MAX + fit;
        for _ in 0..many {
            o.push(Packet::PingResp);
        }
        v.clear();
        assert!(o.poll_drain(&cx, || 0, &mut v).is_ready());
        assert!(o.answers_full(), "{} left", many - DRAIN_MAX);
        assert!(o.poll_drain(&cx, || 0, &mut v).is_ready());
        assert!(!o.answers_full(), "{fit} left");
        assert_eq!(o.len(), fit);
    }

    /// Held answers count, and so do those queued behind them; a release
    /// moves them to the ready queue (still counted) and the drain that
    /// takes them lifts the pause.
    #[test]
    fn held_answers_count_until_released_and_drained() {
        let o = Outbox::new(ProtocolVersion::V5, 0);
        let mut v = VecDeque::new();
        o.push_held(1, 7, 0, puback(1));
        for n in 2..=ANSWERS_MAX {
            o.push(puback(n as u16));
        }
        assert!(!o.answers_full(), "{ANSWERS_MAX} bare acks fit");
        o.push(Packet::PingResp);
        assert!(o.answers_full());
        o.try_drain(0, &mut v);
        assert!(v.is_empty() && o.answers_full(), "all held");
        o.release(1, false);
        assert!(o.answers_full(), "released, not written yet");
        o.try_drain(0, &mut v);
        assert_eq!(v.len(), ANSWERS_MAX as usize + 1);
        assert!(!o.answers_full());
        assert_eq!(v.pop_back(), Some(ping()), "in order");
    }

    /// Deliveries are the core's to bound: any number of them leaves
    /// reads alone.
    #[test]
    fn deliveries_are_not_answers() {
        let o = Outbox::new(ProtocolVersion::V5, 0);
        let msg = retained("t");
        for _ in 0..4 * ANSWERS_MAX {
            let d = crate::link::outbound::Delivery::new(
                &msg,
                crate::codec::QosPid::AtMostOnce,
                false,
                false,
                Box::new([]),
                0,
            );
            o.push(Outbound::Deliver(d));
        }
        assert!(!o.answers_full());
    }

    #[test]
    fn push_drain_close() {
        let o = Outbox::new(ProtocolVersion::V5, 0);
        assert!(o.push(Packet::PingResp));
        assert!(o.push(Packet::PingResp));
        let mut v = VecDeque::new();
        assert!(o.try_drain(0, &mut v));
        assert_eq!(v.len(), 2);
        o.close();
        assert!(!o.push(Packet::PingResp));
        v.clear();
        assert!(!o.try_drain(0, &mut v));
    }

    #[test]
    fn a_cluster_wait_holds_an_ack_past_its_commit_and_its_commit_past_the_cluster() {
        let o = Outbox::new(ProtocolVersion::V5, 0);
        let mut v = VecDeque::new();
        // Commit first, then the cluster.
        o.push_held(1, 7, 1, puback(1));
        o.push(Packet::PingResp); // behind it
        o.release(1, false);
        o.try_drain(0, &mut v);
        assert!(v.is_empty(), "the commit alone does not let it go");
        o.open_cluster(7);
        o.try_drain(0, &mut v);
        assert_eq!(v, vec![puback(1), ping()]);
        v.clear();
        // The cluster first, then the commit.
        o.push_held(2, 8, 1, puback(2));
        o.open_cluster(8);
        o.try_drain(0, &mut v);
        assert!(v.is_empty(), "the cluster alone does not let it go");
        o.release(2, false);
        o.try_drain(0, &mut v);
        assert_eq!(v, vec![puback(2)]);
        v.clear();
        // No store: the cluster alone.
        o.push_held(0, 9, 1, puback(3));
        o.try_drain(0, &mut v);
        assert!(v.is_empty());
        o.open_cluster(9);
        o.try_drain(0, &mut v);
        assert_eq!(v, vec![puback(3)]);
    }

    #[test]
    fn held_packets_wait_for_their_commit_and_keep_order() {
        let o = Outbox::new(ProtocolVersion::V5, 0);
        o.push(Packet::PingResp);
        o.push_gated(1, 0, puback(1));
        o.push(Packet::PingResp); // behind the held ack
        o.push_gated(2, 0, puback(2));
        let mut v = VecDeque::new();
        o.try_drain(0, &mut v);
        assert_eq!(v, vec![ping()]);
        v.clear();
        o.release(1, false);
        o.try_drain(0, &mut v);
        assert_eq!(v, vec![puback(1), ping()]);
        v.clear();
        o.release(2, false);
        o.try_drain(0, &mut v);
        assert_eq!(v, vec![puback(2)]);
    }

    #[test]
    fn an_open_gate_releases_before_the_commit_but_never_ahead_of_order() {
        let o = Outbox::new(ProtocolVersion::V5, 0);
        o.push_gated(1, 0, puback(1));
        o.push_gated(2, 7, puback(2));
        o.push(Packet::PingResp); // waits for nothing but order
        o.push_gated(2, 8, puback(3));
        let mut v = VecDeque::new();
        // Gate 7 opens, but puback(1) ahead of it still waits for commit 1.
        o.open(7);
        o.try_drain(0, &mut v);
        assert!(v.is_empty());
        o.release(1, false);
        o.try_drain(0, &mut v);
        assert_eq!(v, vec![puback(1), puback(2), ping()]);
        v.clear();
        o.open(8);
        o.try_drain(0, &mut v);
        assert_eq!(v, vec![puback(3)]);
        v.clear();
        // Commit 2 finds nothing left; a late open is harmless.
        o.release(2, false);
        o.open(8);
        o.try_drain(0, &mut v);
        assert!(v.is_empty());
    }

    #[test]
    fn an_open_gate_keeps_its_ack_when_the_commit_fails() {
        let o = Outbox::new(ProtocolVersion::V3_1_1, 0);
        o.push_gated(1, 5, puback(1));
        o.push_gated(1, 0, puback(2));
        o.open(5);
        let mut v = VecDeque::new();
        o.try_drain(0, &mut v);
        assert_eq!(v, vec![puback(1)]);
        v.clear();
        // The failed commit closes the 3.1.1 connection without puback(2).
        o.release(1, true);
        assert!(!o.try_drain(0, &mut v));
        assert!(v.is_empty());
    }

    #[test]
    fn failed_commit_refuses_v5_acks_and_closes_v3() {
        let o = Outbox::new(ProtocolVersion::V5, 0);
        o.push_gated(1, 0, puback(1));
        o.release(1, true);
        let mut v = VecDeque::new();
        o.try_drain(0, &mut v);
        let Outbound::Ack(AckKind::Ack, _, reason) = &v[0] else {
            panic!()
        };
        assert_eq!(*reason, ReasonCode::UnspecifiedError);

        let o = Outbox::new(ProtocolVersion::V3_1_1, 0);
        o.push_gated(1, 0, puback(1));
        o.release(1, true);
        v.clear();
        assert!(!o.try_drain(0, &mut v));
        assert!(v.is_empty(), "no ack for a failed write");
    }

    /// The reason code of the acknowledgement at `v[i]`.
    fn reason_of(v: &VecDeque<Outbound>, i: usize) -> ReasonCode {
        match &v[i] {
            Outbound::Ack(AckKind::Ack | AckKind::Rec, _, reason) => *reason,
            Outbound::Other(p) => match &**p {
                Packet::PubAck(r) | Packet::PubRec(r) => r.reason,
                p => panic!("not an acknowledgement: {p:?}"),
            },
            p => panic!("not an acknowledgement: {p:?}"),
        }
    }

    /// A commit that fails while its acknowledgement still waits for the
    /// cluster is a refusal when the cluster lets it go, as it would have
    /// been without the cluster; one that succeeded is not, though a later
    /// commit failed by then; an open gate's acknowledgement stays true.
    #[test]
    fn a_failed_commit_refuses_an_ack_the_cluster_lets_go_later() {
        let o = Outbox::new(ProtocolVersion::V5, 0);
        let mut v = VecDeque::new();
        o.push_held(1, 7, 1, puback(1)); // commit 1 succeeds
        o.push_held(2, 8, 1, puback(2)); // commit 2 fails
        o.push_held(2, 9, 1, puback(3)); // commit 2, gate opens
        o.release(1, false);
        o.release(2, true);
        o.open(9);
        o.try_drain(0, &mut v);
        assert!(v.is_empty(), "all still wait for the cluster");
        o.open_cluster(8);
        o.open_cluster(9);
        o.try_drain(0, &mut v);
        assert!(v.is_empty(), "the first still waits, and keeps its place");
        o.open_cluster(7);
        o.try_drain(0, &mut v);
        assert_eq!(v.len(), 3);
        assert_eq!(reason_of(&v, 0), ReasonCode::Success);
        assert_eq!(reason_of(&v, 1), ReasonCode::UnspecifiedError);
        assert_eq!(reason_of(&v, 2), ReasonCode::Success);

        // 3.x: no acknowledgement, the connection closes.
        let o = Outbox::new(ProtocolVersion::V3_1_1, 0);
        o.push_held(1, 7, 1, puback(1));
        o.release(1, true);
        v.clear();
        assert!(o.try_drain(0, &mut v), "still open while it waits");
        o.open_cluster(7);
        assert!(!o.try_drain(0, &mut v), "closed");
        assert!(v.is_empty(), "no ack for a failed write");
    }

    /// The cluster's refusal: 0x97 for 5.0 (before its commit, whatever
    /// its gate; behind the packets ahead of it), a closed connection for
    /// 3.x; a second word about the same token changes nothing.
    #[test]
    fn a_cluster_refusal_is_quota_exceeded_or_a_disconnect() {
        let o = Outbox::new(ProtocolVersion::V5, 0);
        let mut v = VecDeque::new();
        o.push_held(1, 7, 1, puback(1));
        o.push_held(2, 8, 1, puback(2));
        o.open(8);
        o.refuse_cluster(8);
        o.open_cluster(8);
        o.try_drain(0, &mut v);
        assert!(v.is_empty(), "behind the first");
        o.release(1, false);
        o.open_cluster(7);
        o.try_drain(0, &mut v);
        assert_eq!(v.len(), 2);
        assert_eq!(reason_of(&v, 0), ReasonCode::Success);
        assert_eq!(reason_of(&v, 1), ReasonCode::QuotaExceeded);

        let o = Outbox::new(ProtocolVersion::V3_1_1, 0);
        o.push_held(0, 7, 1, puback(1));
        o.refuse_cluster(7);
        v.clear();
        assert!(!o.try_drain(0, &mut v), "closed");
        assert!(v.is_empty(), "no ack for what the cluster lost");
    }

    /// Counts its wakes.
    struct Counter(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Counter {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn a_consumer_woken_for_any_reason_is_woken_by_the_next_push() {
        let counter = Arc::new(Counter(Default::default()));
        let waker = Waker::from(counter.clone());
        let cx = Context::from_waker(&waker);
        let woken = || counter.0.load(Ordering::Relaxed);
        let o = Outbox::new(ProtocolVersion::V5, 0);
        let mut v = VecDeque::new();
        o.pause_reads();
        assert!(o.poll_drain(&cx, || 0, &mut v).is_pending());
        assert_eq!(o.poll_paused(&cx), Some(CONGESTED_PAUSE));
        o.resume_reads();
        assert_eq!(woken(), 1);
        // The resume took the waker: this poll must register it again.
        assert!(o.poll_drain(&cx, || 0, &mut v).is_pending());
        o.push(Packet::PingResp);
        assert_eq!(woken(), 2);
        assert_eq!(o.poll_drain(&cx, || 0, &mut v), Poll::Ready(true));
        assert_eq!(v, vec![ping()]);
    }

    #[test]
    fn closed_outbox_still_delivers_released_packets() {
        let o = Outbox::new(ProtocolVersion::V5, 0);
        o.push_gated(3, 0, puback(1));
        o.close();
        let mut v = VecDeque::new();
        assert!(o.try_drain(0, &mut v), "held packets are still to come");
        o.release(3, false);
        assert!(o.try_drain(0, &mut v));
        assert_eq!(v, vec![puback(1)]);
        v.clear();
        assert!(!o.try_drain(0, &mut v));
    }

    /// A connection behind on its writes pauses its publishers until it has
    /// nearly caught up, renews their pauses while it drains, and after an
    /// episode that ran out before it caught up pauses nobody until it has.
    #[test]
    fn slow_down_lasts_until_caught_up_and_one_episode_at_most() {
        let counter = Arc::new(Counter(Default::default()));
        let waker = Waker::from(counter.clone());
        let cx = Context::from_waker(&waker);
        let sub = Outbox::new(ProtocolVersion::V5, 0);
        let publ = Arc::new(Outbox::new(ProtocolVersion::V5, 0));
        assert_eq!(publ.poll_paused(&cx), None);

        for _ in 0..2 * DRAIN_MAX + 10 {
            sub.push(Packet::PingResp);
        }
        sub.slow_down(&publ, 1_000);
        assert_eq!(publ.poll_paused(&cx), Some(BRIEF_PAUSE));
        publ.watch_brief_pause(); // as its reader does when it pauses
                                  // A drain that leaves more than one drain's worth renews the pause.
        assert!(!publ.brief_pause_renewed());
        let mut v = VecDeque::new();
        assert_eq!(sub.poll_drain(&cx, || 0, &mut v), Poll::Ready(true));
        assert_eq!(v.len(), DRAIN_MAX);
        assert!(publ.brief_pause_renewed());
        assert!(!publ.brief_pause_renewed(), "once per renewal");
        assert!(publ.reads_paused());
        // Nearly caught up: the publisher goes on, and is woken.
        let woken = counter.0.load(Ordering::Relaxed);
        assert_eq!(sub.poll_drain(&cx, || 0, &mut v), Poll::Ready(true));
        assert_eq!(publ.poll_paused(&cx), None);
        assert!(counter.0.load(Ordering::Relaxed) > woken);

        // An episode that runs out before the connection catches up...
        for _ in 0..2 * DRAIN_MAX + 10 {
            sub.push(Packet::PingResp);
        }
        sub.slow_down(&publ, 2_000);
        publ.end_brief_pause(); // the reader's bound passed
        let end = 2_000 + EPISODE_MAX.as_millis() as u64;
        sub.slow_down(&publ, end);
        assert_eq!(publ.poll_paused(&cx), None, "episode over");
        v.clear();
        assert!(sub.poll_drain(&cx, || 0, &mut v).is_ready()); // still behind
        sub.slow_down(&publ, end + 1);
        assert_eq!(publ.poll_paused(&cx), None, "not until caught up");
        assert!(sub.poll_drain(&cx, || 0, &mut v).is_ready()); // caught up
        sub.push(Packet::PingResp);
        sub.slow_down(&publ, end + 2);
        assert_eq!(publ.poll_paused(&cx), Some(BRIEF_PAUSE), "a new episode");
        // A client is never paused for its own connection.
        sub.end_brief_pause();
        let sub = Arc::new(sub);
        sub.slow_down(&sub, end + 3);
        assert_eq!(sub.poll_paused(&cx), None);
    }

    #[test]
    fn a_link_slows_its_publishers_for_as_long_as_it_drains() {
        let counter = Arc::new(Counter(Default::default()));
        let waker = Waker::from(counter.clone());
        let cx = Context::from_waker(&waker);
        let link = Outbox::new(ProtocolVersion::V5, 0);
        let publ = Arc::new(Outbox::new(ProtocolVersion::V5, 0));
        for _ in 0..6 * DRAIN_MAX {
            link.push(Packet::PingResp);
        }
        link.slow_down_while_draining(&publ, 1_000);
        // Paused for an episode at a time, not a brief pause.
        assert_eq!(publ.poll_paused(&cx), Some(LINK_EPISODE));
        publ.watch_brief_pause();
        let mut v = VecDeque::new();
        assert!(link.poll_drain(&cx, || 0, &mut v).is_ready());
        assert!(publ.brief_pause_renewed(), "a drain renews it");
        assert_eq!(publ.brief_bound(), LINK_EPISODE, "as long again");
        // Long past one episode, but it drained since: still slowed down.
        let episode = LINK_EPISODE.as_millis() as u64;
        publ.end_brief_pause();
        link.slow_down_while_draining(&publ, 1_000 + 3 * episode);
        assert_eq!(publ.poll_paused(&cx), Some(LINK_EPISODE));
        // A link that stops draining for an episode lets them go...
        publ.end_brief_pause();
        link.slow_down_while_draining(&publ, 1_000 + 5 * episode);
        assert_eq!(publ.poll_paused(&cx), None, "stalled: let go");
        // ...until it drains again.
        assert!(link.poll_drain(&cx, || 0, &mut v).is_ready());
        link.slow_down_while_draining(&publ, 1_000 + 5 * episode + 1);
        assert_eq!(publ.poll_paused(&cx), Some(LINK_EPISODE));
        // Caught up: they go on.
        while link.len() > 0 {
            assert!(link.poll_drain(&cx, || 0, &mut v).is_ready());
        }
        assert_eq!(publ.poll_paused(&cx), None);
    }
}
