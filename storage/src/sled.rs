//! The sled backend (feature `sled`).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use ::sled::transaction::{ConflictableTransactionError, TransactionError};
use ::sled::{Db, Transactional, Tree};

use crate::guard;
use crate::kv::{self, Table, Write};
use crate::reopen::Reopen;
use crate::{
    encoding, keys, MessageId, MessageRecord, Op, OutboundRecord, Record, Snapshot, StorageError,
    Store,
};

/// The backend's name in its errors.
const NAME: &str = "sled";

/// Stores everything in a [sled](https://docs.rs/sled/0.34) database
/// directory.
///
/// One sled tree per record kind (`sessions`, `subscriptions`, `outbound`,
/// `inbound_qos2`, `messages`, `retained`) plus `meta`, which holds the
/// store format version.
///
/// - **Atomic:** a batch is one multi-tree sled transaction.
/// - **Durable:** `apply` flushes the database (`Db::flush`, which fsyncs
///   sled's log) after the transaction commits and before returning. The
///   broker groups many clients' ops into one batch, so this one flush is
///   the group commit.
/// - **Disk space:** sled writes a log of segments and rewrites the live
///   data of mostly-empty segments in the background, so space freed by
///   deletes is reused and the directory stays bounded under churn (it is
///   larger than the live data: sled trades space for write speed).
/// - **Full disk:** after a failed write sled refuses every call until the
///   database is opened again; [`Store::recover`] does that (the broker
///   calls it before retrying), so writes resume once there is space. sled
///   needs some free space to open at all.
///
/// ```no_run
/// use roost_storage::{SledStore, Store};
///
/// # fn main() -> Result<(), roost_storage::StorageError> {
/// let store = SledStore::open("/var/lib/roost/sled")?;
/// let snapshot = store.load()?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct SledStore {
    /// Reopened by [`Store::recover`] after a failed write.
    db: Reopen<Handles>,
    path: PathBuf,
    /// sled's page cache, in bytes.
    cache_bytes: usize,
}

/// An open sled database and its trees.
#[derive(Debug)]
struct Handles {
    db: Db,
    /// Indexed by [`Table::index`].
    trees: [Tree; 6],
}

impl SledStore {
    /// Opens the store in directory `dir`, creating it (and the directory)
    /// if missing.
    ///
    /// # Errors
    ///
    /// - [`StorageError::UnsupportedFormat`] if the store was written in
    ///   another format version (the error says what to do);
    /// - [`StorageError::Corrupt`] if sled finds the files damaged, or the
    ///   store holds records but no format version;
    /// - [`StorageError::Io`] if the directory cannot be read or written, or
    ///   is still locked by another handle after waiting two seconds (a
    ///   handle dropped in this process releases it shortly after the drop).
    ///
    /// Every message names the directory. Nothing is wiped on error.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, StorageError> {
        Self::open_with_cache(dir, crate::DEFAULT_CACHE_BYTES)
    }

    /// [`open`](Self::open), with sled's page cache bounded to
    /// `cache_bytes` instead of [`DEFAULT_CACHE_BYTES`](crate::DEFAULT_CACHE_BYTES)
    /// (sled's own default is 1 GiB, too much for a small gateway).
    ///
    /// # Errors
    ///
    /// As [`open`](Self::open).
    pub fn open_with_cache(
        dir: impl AsRef<Path>,
        cache_bytes: usize,
    ) -> Result<Self, StorageError> {
        let path = dir.as_ref().to_path_buf();
        guard::catch(|| Self::open_unguarded(path.clone(), cache_bytes))
            .map_err(|panic| damaged(&path, &panic))?
            .map_err(|e| e.in_backend(NAME))
    }

    fn open_unguarded(path: PathBuf, cache_bytes: usize) -> Result<Self, StorageError> {
        let handles = open_handles(&path, cache_bytes)?;
        Ok(Self {
            db: Reopen::new(handles),
            path,
            cache_bytes,
        })
    }

    /// The directory this store lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open database; an error while a failed write left it closed.
    fn handles(&self) -> Result<Arc<Handles>, StorageError> {
        self.db.get().ok_or_else(|| {
            StorageError::io(
                NAME,
                format!(
                    "{}: closed after a failed write, and not yet reopened (a full \
                     disk?); the broker reopens it when it retries",
                    self.path.display()
                ),
            )
        })
    }

    fn tree(&self, table: Table) -> Result<Tree, StorageError> {
        Ok(self.handles()?.trees[table.index()].clone())
    }

    /// Keys stored in `[start, end)` of `table`.
    fn keys_in(
        &self,
        table: Table,
        start: &[u8],
        end: &[u8],
    ) -> Result<Vec<Vec<u8>>, StorageError> {
        self.tree(table)?
            .range(start..end)
            .keys()
            .map(|key| {
                key.map(|k| k.to_vec())
                    .map_err(|e| error(&self.path, "cannot scan a session's keys", e))
            })
            .collect()
    }

    fn apply_unguarded(&self, ops: &[Op]) -> Result<(), StorageError> {
        let writes = kv::plan(ops)?;
        if writes.is_empty() {
            return Ok(());
        }
        // A sled transaction cannot scan a range, so a session delete's
        // cascade is turned into single-key deletes here, from the trees as
        // they are before the transaction. That is still exact because the
        // broker has a single writer: nothing else adds keys between this
        // scan and the commit, and keys put earlier in the batch itself are
        // added by `expand_ranges`.
        let writes =
            kv::expand_ranges(writes, |table, start, end| self.keys_in(table, start, end))?;
        let handles = self.handles()?;
        let [t0, t1, t2, t3, t4, t5] = &handles.trees;
        let result = (t0, t1, t2, t3, t4, t5).transaction(|(v0, v1, v2, v3, v4, v5)| {
            let views = [v0, v1, v2, v3, v4, v5];
            // The closure may run again on a conflict; it only replays the
            // precomputed writes, so that is harmless.
            for write in &writes {
                match write {
                    Write::Put { table, key, value } => {
                        views[table.index()].insert(key.as_slice(), value.as_slice())?;
                    }
                    Write::Delete { table, key } => {
                        views[table.index()].remove(key.as_slice())?;
                    }
                    // `expand_ranges` left none.
                    Write::DeleteRange { .. } => {}
                }
            }
            Ok::<(), ConflictableTransactionError<std::convert::Infallible>>(())
        });
        match result {
            Ok(()) => {}
            Err(TransactionError::Storage(e)) => {
                return Err(error(&self.path, "cannot commit a batch", e))
            }
            Err(TransactionError::Abort(never)) => match never {},
        }
        self.flush()
    }

    fn outbound_page_unguarded(
        &self,
        client_id: &str,
        after_seq: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, OutboundRecord)>, StorageError> {
        let Some((start, end)) = kv::outbound_range(client_id, after_seq) else {
            return Ok(Vec::new());
        };
        if limit == 0 || !self.has_session(client_id)? {
            return Ok(Vec::new());
        }
        // Not a snapshot: a batch committing meanwhile may be seen in part
        // (the trait documents this for sled).
        self.tree(Table::Outbound)?
            .range(start..end)
            .take(limit)
            .map(|row| {
                let (key, value) =
                    row.map_err(|e| error(&self.path, "cannot read outbound entries", e))?;
                kv::outbound_row(&key, &value)
            })
            .collect()
    }

    /// True if a session record exists: pages leave orphans out, as `load`
    /// does.
    fn has_session(&self, client_id: &str) -> Result<bool, StorageError> {
        self.tree(Table::Sessions)?
            .contains_key(keys::session_key(client_id))
            .map_err(|e| error(&self.path, "cannot read a session", e))
    }

    fn messages_unguarded(
        &self,
        ids: &[MessageId],
    ) -> Result<Vec<Option<MessageRecord>>, StorageError> {
        let tree = self.tree(Table::Messages)?;
        ids.iter()
            .map(|id| {
                tree.get(keys::message_key(*id))
                    .map_err(|e| error(&self.path, "cannot read a message", e))?
                    .map(|value| encoding::decode(&value))
                    .transpose()
            })
            .collect()
    }

    fn retained_unguarded(&self, topic: &str) -> Result<Option<MessageRecord>, StorageError> {
        self.tree(Table::Retained)?
            .get(keys::retained_key(topic))
            .map_err(|e| error(&self.path, "cannot read a retained message", e))?
            .map(|value| encoding::decode(&value))
            .transpose()
    }

    fn retained_many_unguarded(
        &self,
        topics: &[&str],
    ) -> Result<Vec<Option<MessageRecord>>, StorageError> {
        topics
            .iter()
            .map(|topic| self.retained_unguarded(topic))
            .collect()
    }

    /// The error for a panic inside sled while it wrote.
    fn failed_writing(&self, panic: &str) -> StorageError {
        StorageError::io(
            NAME,
            format!(
                "{}: sled failed while writing: {panic}",
                self.path.display()
            ),
        )
    }
}

impl SledStore {
    /// Runs a read of the files under the panic guard: a panic becomes
    /// an error saying the files are damaged, and errors name the backend.
    fn reading<T>(&self, f: impl FnOnce() -> Result<T, StorageError>) -> Result<T, StorageError> {
        guard::catch(f)
            .map_err(|panic| damaged(&self.path, &panic))?
            .map_err(|e| e.in_backend(NAME))
    }
}

/// sled's iterators read a tree a page at a time: a scan holds the current
/// row, not the tree.
impl kv::Rows for SledStore {
    fn rows(
        &self,
        table: Table,
        range: Option<(&[u8], &[u8])>,
        row: kv::Row<'_>,
    ) -> Result<(), StorageError> {
        let tree = self.tree(table)?;
        let rows = match range {
            None => tree.iter(),
            Some((start, end)) => tree.range(start..end),
        };
        for next in rows {
            let (key, value) =
                next.map_err(|e| error(&self.path, &format!("cannot read {}", table.name()), e))?;
            row(&key, &value)?;
        }
        Ok(())
    }
}

/// Every call into sled runs under `guard::catch`: a panic on damaged
/// files becomes an error naming the directory.
impl Store for SledStore {
    fn apply(&self, ops: &[Op]) -> Result<(), StorageError> {
        guard::catch(|| self.apply_unguarded(ops))
            .map_err(|panic| self.failed_writing(&panic))
            .and_then(|r| r.map_err(|e| e.in_backend(NAME)))
            .inspect_err(|e| {
                // A batch rejected before it reached sled leaves it as it was.
                if !matches!(
                    e,
                    StorageError::InvalidOp { .. } | StorageError::Encode { .. }
                ) {
                    self.db.mark_broken();
                }
            })
    }

    /// Reopens the database if a write failed since it was opened. sled
    /// recovers its log on opening, back to the last flush; a handle
    /// dropped here releases its lock a moment later, which opening waits
    /// for (up to two seconds).
    fn recover(&self) -> Result<(), StorageError> {
        self.db.reopen(|| {
            guard::catch(|| open_handles(&self.path, self.cache_bytes))
                .map_err(|panic| damaged(&self.path, &panic))?
                .map_err(|e| e.in_backend(NAME))
        })
    }

    fn load(&self) -> Result<Snapshot, StorageError> {
        Snapshot::from_scan(|visit| self.scan(visit))
    }

    /// Not a snapshot: the trees are read as they are while the scan goes
    /// (the trait documents this for sled). At start-up, before the writer
    /// runs, that is one consistent state.
    fn scan(
        &self,
        visit: &mut dyn FnMut(Record) -> Result<(), StorageError>,
    ) -> Result<(), StorageError> {
        guard::scan(
            NAME,
            visit,
            |panic| damaged(&self.path, panic),
            |visit| kv::scan(self, visit),
        )
    }

    fn is_persistent(&self) -> bool {
        true
    }

    fn outbound_page(
        &self,
        client_id: &str,
        after_seq: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, OutboundRecord)>, StorageError> {
        self.reading(|| self.outbound_page_unguarded(client_id, after_seq, limit))
    }

    fn messages(&self, ids: &[MessageId]) -> Result<Vec<Option<MessageRecord>>, StorageError> {
        self.reading(|| self.messages_unguarded(ids))
    }

    fn retained(&self, topic: &str) -> Result<Option<MessageRecord>, StorageError> {
        self.reading(|| self.retained_unguarded(topic))
    }

    fn retained_many(&self, topics: &[&str]) -> Result<Vec<Option<MessageRecord>>, StorageError> {
        self.reading(|| self.retained_many_unguarded(topics))
    }

    fn flush(&self) -> Result<(), StorageError> {
        let handles = self.handles()?;
        let flushed = guard::catch(|| handles.db.flush())
            .map_err(|panic| self.failed_writing(&panic))
            .and_then(|r| {
                r.map(drop)
                    .map_err(|e| error(&self.path, "cannot flush", e))
            });
        if flushed.is_err() {
            self.db.mark_broken();
        }
        flushed
    }
}

/// Opens the sled database in `path` and its trees, and checks or writes
/// the format version.
fn open_handles(path: &Path, cache_bytes: usize) -> Result<Handles, StorageError> {
    let db = open_db(path, cache_bytes)?;
    let mut trees = Vec::with_capacity(Table::ALL.len());
    for table in Table::ALL {
        let tree = db
            .open_tree(table.name())
            .map_err(|e| error(path, "cannot open tree", e))?;
        trees.push(tree);
    }
    let trees: [Tree; 6] = trees
        .try_into()
        .map_err(|_| StorageError::io(NAME, "wrong number of trees"))?;

    let meta = db
        .open_tree(kv::META_TABLE)
        .map_err(|e| error(path, "cannot open tree", e))?;
    let stored = meta
        .get(kv::VERSION_KEY)
        .map_err(|e| error(path, "cannot read the format version", e))?;
    let has_records = trees.iter().any(|t| !t.is_empty());
    if kv::check_version(stored.as_deref(), has_records, path)? {
        meta.insert(kv::VERSION_KEY, &kv::version_bytes()[..])
            .map_err(|e| error(path, "cannot write the format version", e))?;
        db.flush()
            .map_err(|e| error(path, "cannot flush the format version", e))?;
    }
    Ok(Handles { db, trees })
}

/// The error for a panic inside sled on the store in `path`.
fn damaged(path: &Path, panic: &str) -> StorageError {
    StorageError::corrupt(
        NAME,
        format!(
            "{} is damaged (sled failed on it: {panic}). Restore the directory \
             from a backup, or move it aside (keep it for inspection) to start with an empty store",
            path.display()
        ),
    )
}

/// How long `open` waits for sled's lock on the directory to be released.
const LOCK_WAIT: Duration = Duration::from_secs(2);

/// Opens the sled database in `path`.
///
/// Dropping a sled 0.34 `Db` does not release its lock on the directory at
/// once: a background thread lets go of it a moment later (sled issues
/// #1234, #1289). So reopening right after a drop, in the same process, can
/// find the lock taken; `open` retries for up to [`LOCK_WAIT`] before
/// reporting the directory as in use. Other errors are reported at once.
fn open_db(path: &Path, cache_bytes: usize) -> Result<Db, StorageError> {
    let started = Instant::now();
    loop {
        // sled 0.34 can panic on some damaged files instead of returning an
        // error: `SledStore::open` catches that.
        let opened = ::sled::Config::new()
            .path(path)
            .cache_capacity(cache_bytes as u64)
            .open();
        match opened {
            Ok(db) => return Ok(db),
            Err(e) if is_lock_contention(&e) && started.elapsed() < LOCK_WAIT => {
                thread::sleep(Duration::from_millis(10));
            }
            Err(e) if is_lock_contention(&e) => {
                return Err(StorageError::io(
                    NAME,
                    format!(
                        "{}: the directory is locked (is another roost using it?): {e}",
                        path.display()
                    ),
                )
                .with_source(e));
            }
            Err(e) => return Err(error(path, "cannot open", e)),
        }
    }
}

/// True if sled could not lock the directory because another handle holds
/// the lock. sled 0.34 reports it as an `Other` I/O error whose message
/// starts with "could not acquire lock", wrapping the `WouldBlock` error.
fn is_lock_contention(e: &::sled::Error) -> bool {
    matches!(e, ::sled::Error::Io(err) if err.kind() == io::ErrorKind::WouldBlock
        || (err.kind() == io::ErrorKind::Other
            && err.to_string().starts_with("could not acquire lock")))
}

/// Maps a sled error, naming the store's directory.
fn error(path: &Path, what: &str, e: ::sled::Error) -> StorageError {
    let message = format!("{}: {what}: {e}", path.display());
    let error = match e {
        ::sled::Error::Corruption { .. } => StorageError::corrupt(NAME, message),
        _ => StorageError::io(NAME, message),
    };
    error.with_source(e)
}
