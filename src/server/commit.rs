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
}

/// Applies commits until the channel closes and everything received is
/// written. Blocks: run it on the blocking pool.
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
        let before = older.ops.len() + newer.ops.len();
        coalesce_staged(
            &mut older.ops,
            &mut newer.ops,
            [&older.created, &newer.created],
        );
        let now = older.ops;
        stats::add(
            &stats.storage_ops_saved,
            (before - now.len() - newer.ops.len()) as u64,
        );
        let result = if now.is_empty() {
            Ok(())
        } else {
            stats::add(&stats.storage_commits, 1);
            stats::add(&stats.storage_ops_written, now.len() as u64);
            apply(store.as_ref(), &now)
        };
        release(older.commits, result, &stats, &progress, &mut health);
        older = newer;
    }
}

/// A backend that panics has failed this write, like one that returns an
/// error: its acknowledgements turn into refusals instead of hanging.
fn apply(store: &dyn Store, ops: &[Op]) -> Result<(), StorageError> {
    // Nothing of ours is left half-changed by a panic inside `apply`: the
    // ops are only read, and the store's own state is its business.
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| store.apply(ops)))
        .unwrap_or_else(|_| Err(StorageError::io("", "the storage backend panicked")))
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
                        failed_commits = failed,
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
                        failed_commits = failed,
                        "storage write failed; acknowledgements that need storage are withheld \
                         until a write succeeds (/healthz answers 503 meanwhile)"
                    );
                }
            }
        }
    }
}
