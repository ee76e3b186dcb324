//! The commit task: applies the core's commits to the store, many at a
//! time, and releases the acknowledgements each one held.
//!
//! It runs on one thread of tokio's blocking pool for the life of the
//! server, so a commit costs no task hop: the core hands commits over a
//! channel, this thread writes them, and releasing the held packets wakes
//! the connections directly.
//!
//! **Group commit in two stages.** Commits that queue up while the store is
//! busy form the next group: one transaction, one flush for many clients.
//! Under load, a group does not go to the disk at once: it waits one round
//! while the one before it is written, so that the deletes arriving
//! meanwhile (a subscriber's PUBACK, typically) cancel the writes they undo
//! ([`coalesce_staged`]). A message delivered and acknowledged within a
//! round or two never touches the disk. When nothing else is queued, a
//! group is written at once: waiting only pays when the next one comes.
//!
//! **A failed write is retried, never dropped** (a full disk, say): the
//! batch and everything after it wait, in order, and are tried again with
//! backoff, the store [recovering](roost_storage::Store::recover) before
//! each try, until written; their acknowledgements wait with them. The
//! `storage_failing` flag tells the core meanwhile to refuse new work that
//! needs storage, which keeps the backlog bounded. Only a batch no retry can
//! fix (an invalid op) fails, and at shutdown what is still unwritten after
//! [`SHUTDOWN_GRACE`]: their acknowledgements turn into refusals.

use crate::broker::{coalesce_staged, Commit, CommitProgress, Created};
use crate::stats::{self, Stats};
use roost_storage::{Op, StorageError, Store};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// How long a group that creates outbound entries, when nothing followed
/// it, waits before it is written, for the acknowledgements that would
/// undo it: a subscriber's PUBACK usually comes within a millisecond. Only
/// acknowledgements the [gate](crate::broker) cannot release (copies for
/// clients that are away, or that have not acknowledged yet) pay it as
/// latency.
const LINGER: Duration = Duration::from_millis(1);

/// Commits merged into one stage.
#[derive(Default)]
struct Stage {
    ops: Vec<Op>,
    created: Created,
    commits: Vec<Commit>,
    /// When its first commit arrived.
    since: Option<Instant>,
}

impl Stage {
    fn add(&mut self, mut commit: Commit) {
        self.since.get_or_insert_with(Instant::now);
        // Built here, not on the core's thread (see `Pending`).
        self.ops.extend(commit.ops.drain(..).map(|op| op.into_op()));
        if self.created.is_empty() {
            self.created = std::mem::take(&mut commit.created);
        } else {
            for (client, seqs) in std::mem::take(&mut commit.created) {
                self.created.entry(client).or_default().extend(seqs);
            }
        }
        self.commits.push(commit);
    }

    fn is_empty(&self) -> bool {
        self.commits.is_empty()
    }

    /// Appends `later`, whose commits follow this stage's.
    fn absorb(&mut self, later: Stage) {
        self.ops.extend(later.ops);
        for (client, seqs) in later.created {
            self.created.entry(client).or_default().extend(seqs);
        }
        self.commits.extend(later.commits);
        if self.since.is_none() {
            self.since = later.since;
        }
    }
}

/// Applies commits until the channel closes and everything received is
/// written (or, if the store is failing then, until [`SHUTDOWN_GRACE`] has
/// passed). Blocks: run it on the blocking pool.
pub(crate) fn run(
    mut commits: mpsc::Receiver<Commit>,
    store: Arc<dyn Store>,
    stats: Arc<Stats>,
    progress: Arc<CommitProgress>,
) {
    let mut older = Stage::default();
    let mut health = Health::default();
    loop {
        if older.is_empty() {
            match commits.blocking_recv() {
                Some(c) => older.add(c),
                None => return,
            }
        }
        let mut newer = Stage::default();
        while let Ok(c) = commits.try_recv() {
            newer.add(c);
        }
        // Only a stage that creates outbound entries can be undone by what
        // follows; anything else (subscriptions, retained messages, QoS 2
        // state) is written at once.
        if newer.is_empty() && !older.created.is_empty() {
            let age = older.since.map_or(LINGER, |t| t.elapsed());
            if age < LINGER {
                std::thread::sleep(LINGER - age);
                while let Ok(c) = commits.try_recv() {
                    newer.add(c);
                }
            }
        }
        coalesce(&mut older, &mut newer, &stats);
        match write(store.as_ref(), &older.ops, &stats) {
            Err(e) if retryable(&e) => {
                health.record(Err(e), &stats);
                // Kept, with what follows it, until it is written.
                older.absorb(newer);
                let stuck = Retry {
                    store: store.as_ref(),
                    stats: &stats,
                    progress: &progress,
                    health: &mut health,
                };
                if !stuck.until_written(older, &mut commits) {
                    return;
                }
                older = Stage::default();
            }
            result => {
                release(older.commits, result, &stats, &progress, &mut health);
                older = newer;
            }
        }
    }
}

/// First wait before a failed batch is tried again; it doubles with each
/// failure, up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(50);

/// Longest wait between two tries of a failed batch.
const RETRY_MAX: Duration = Duration::from_secs(5);

/// How often new commits are taken in while a failed batch waits for its
/// next try: the core must never wait long for room in the channel.
const INTAKE_POLL: Duration = Duration::from_millis(10);

/// How long a failed batch is still tried once the server is shutting
/// down: a full disk must not keep the process from ending. What is not
/// written then was never acknowledged.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Errors that trying again cannot fix: the batch itself is wrong, so it
/// fails (and its acknowledgements turn into refusals) as before. Anything
/// else (a full disk, an I/O error, a backend that panicked, a fault a test
/// injected) is retried: a batch is never dropped because the disk failed.
fn retryable(e: &StorageError) -> bool {
    !matches!(
        e,
        StorageError::InvalidOp { .. } | StorageError::Encode { .. }
    )
}

/// Drops from `older` and `newer` what the two cancel out, counting it.
fn coalesce(older: &mut Stage, newer: &mut Stage, stats: &Stats) {
    let before = older.ops.len() + newer.ops.len();
    coalesce_staged(
        &mut older.ops,
        &mut newer.ops,
        [&older.created, &newer.created],
    );
    stats::add(
        &stats.storage_ops_saved,
        (before - older.ops.len() - newer.ops.len()) as u64,
    );
}

/// Applies `ops` (nothing to do if empty), counting what was written.
fn write(store: &dyn Store, ops: &[Op], stats: &Stats) -> Result<(), StorageError> {
    if ops.is_empty() {
        return Ok(());
    }
    apply(store, ops)?;
    stats::add(&stats.storage_commits, 1);
    stats::add(&stats.storage_ops_written, ops.len() as u64);
    Ok(())
}

/// A batch whose write failed, tried again until it is written.
struct Retry<'a> {
    store: &'a dyn Store,
    stats: &'a Stats,
    progress: &'a CommitProgress,
    health: &'a mut Health,
}

impl Retry<'_> {
    /// Tries `stuck` again, with backoff, asking the store to
    /// [recover](Store::recover) before each try, until it is written; its
    /// held acknowledgements stay held until then. Commits arriving
    /// meanwhile join it in order (what they undo is dropped from it), so
    /// the core never waits for room in the channel and memory and store
    /// never diverge: what the core did is what is eventually written.
    ///
    /// Returns false if the channel closed (shutdown) and the batch was
    /// still not written after [`SHUTDOWN_GRACE`]: it is then released as
    /// failed (nothing it holds is acknowledged) and the task ends.
    fn until_written(self, mut stuck: Stage, commits: &mut mpsc::Receiver<Commit>) -> bool {
        let mut backoff = RETRY_FIRST;
        let mut closing: Option<Instant> = None;
        loop {
            let until = Instant::now() + backoff;
            loop {
                let mut newer = Stage::default();
                loop {
                    match commits.try_recv() {
                        Ok(c) => newer.add(c),
                        Err(mpsc::error::TryRecvError::Empty) => break,
                        Err(mpsc::error::TryRecvError::Disconnected) => {
                            closing.get_or_insert_with(Instant::now);
                            break;
                        }
                    }
                }
                if !newer.is_empty() {
                    coalesce(&mut stuck, &mut newer, self.stats);
                    stuck.absorb(newer);
                }
                let left = until.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                std::thread::sleep(left.min(INTAKE_POLL));
            }
            // A panic while reopening fails this try, as one in `apply`.
            let result = super::reader::guarded(|| self.store.recover())
                .and_then(|()| write(self.store, &stuck.ops, self.stats));
            match result {
                Err(e) if retryable(&e) => {
                    if closing.is_some_and(|t| t.elapsed() >= SHUTDOWN_GRACE) {
                        tracing::error!(
                            error = %e,
                            unwritten_ops = stuck.ops.len(),
                            "shutting down while the store fails: what was not written was \
                             not acknowledged (deliveries acknowledged since the failure may \
                             come again after a restart)"
                        );
                        release(
                            stuck.commits,
                            Err(e),
                            self.stats,
                            self.progress,
                            self.health,
                        );
                        return false;
                    }
                    self.health.record(Err(e), self.stats);
                    backoff = (backoff * 2).min(RETRY_MAX);
                    if closing.is_some() {
                        backoff = backoff.min(RETRY_FIRST);
                    }
                }
                result => {
                    release(
                        stuck.commits,
                        result,
                        self.stats,
                        self.progress,
                        self.health,
                    );
                    return true;
                }
            }
        }
    }
}

/// A backend that panics has failed this write, like one that returns an
/// I/O error: the batch is kept and tried again, the task goes on.
fn apply(store: &dyn Store, ops: &[Op]) -> Result<(), StorageError> {
    super::reader::guarded(|| store.apply(ops))
}

/// Lets the held packets of applied commits go: acknowledgements if the
/// write succeeded, refusals if it failed.
fn release(
    commits: Vec<Commit>,
    result: Result<(), StorageError>,
    stats: &Stats,
    progress: &CommitProgress,
    health: &mut Health,
) {
    let failed = result.is_err();
    health.record(result, stats);
    for c in commits {
        for outbox in &c.outboxes {
            outbox.release(c.number, failed);
        }
        progress.released(c.number);
    }
}

/// Whether the store is failing, as the operator sees it: the
/// `storage_failing` gauge (and `/healthz`), and log lines at the edges of
/// an outage rather than one per failed commit, which a full disk turns
/// into a flood.
#[derive(Debug, Default)]
struct Health {
    /// When the current run of failed writes began, and how many failed.
    failing: Option<(Instant, u64)>,
    /// When a failure was last logged.
    logged: Option<Instant>,
}

/// How often a store that keeps failing is reported again.
const FAILING_LOG_EVERY: Duration = Duration::from_secs(60);

impl Health {
    fn record(&mut self, result: Result<(), StorageError>, stats: &Stats) {
        match result {
            Ok(()) => {
                if let Some((since, failed)) = self.failing.take() {
                    stats.storage_failing.store(0, Relaxed);
                    tracing::warn!(
                        failed_tries = failed,
                        after = ?since.elapsed(),
                        "storage writes succeed again"
                    );
                }
            }
            Err(e) => {
                stats::add(&stats.storage_errors, 1);
                stats.storage_failing.store(1, Relaxed);
                let now = Instant::now();
                let (_, failed) = self.failing.get_or_insert((now, 0));
                *failed += 1;
                let failed = *failed;
                if self
                    .logged
                    .is_none_or(|t| failed == 1 || now.duration_since(t) >= FAILING_LOG_EVERY)
                {
                    self.logged = Some(now);
                    tracing::error!(
                        error = %e,
                        failed_tries = failed,
                        "storage write failed; it is kept and tried again (backoff up to 5 s): \
                         the acknowledgements it holds wait for it, and new work that needs \
                         storage is refused until a write succeeds (/healthz answers 503 \
                         meanwhile)"
                    );
                }
            }
        }
    }
}
