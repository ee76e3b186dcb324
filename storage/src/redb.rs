//! The redb backend (feature `redb`).

use std::fs;
use std::path::{Path, PathBuf};

use ::redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};

use ::redb::backends::FileBackend;

use crate::guard;
use crate::kv::{self, SnapshotBuilder, Table, Write};
use crate::overlay::Overlay;
use crate::{
    encoding, keys, MessageId, MessageRecord, Op, OutboundRecord, Snapshot, StorageError, Store,
};

/// The backend's name in its errors.
const NAME: &str = "redb";

/// A record table: composite key to encoded value.
type RecordTable = TableDefinition<'static, &'static [u8], &'static [u8]>;

/// The meta table: name to value (the format version, see `kv`).
const META: TableDefinition<'static, &'static str, &'static [u8]> =
    TableDefinition::new(kv::META_TABLE);

const fn definition(table: Table) -> RecordTable {
    TableDefinition::new(table.name())
}

/// Stores everything in one [redb](https://docs.rs/redb/2) file,
/// `roost.redb` ([`RedbStore::FILE_NAME`]) in a directory.
///
/// One table per record kind (`sessions`, `subscriptions`, `outbound`,
/// `inbound_qos2`, `messages`, `retained`) plus `meta`, which holds the
/// store format version.
///
/// - **Atomic:** a batch is one write transaction; a session delete
///   cascades with range deletes inside it.
/// - **Durable:** the transaction commits with redb's default durability,
///   which fsyncs before `commit` returns, so `apply` is durable on return
///   and [`Store::flush`] has nothing left to do.
/// - **Damage:** a damaged file is refused when opening (see
///   [`RedbStore::open`]); a panic inside redb on any call is returned as
///   an error naming the file.
/// - **Disk space:** redb is copy-on-write; pages freed by a commit are
///   reused by later ones, so the file stops growing under churn once it
///   holds the working set. It does not shrink by itself:
///   [`RedbStore::compact`] gives free space back to the file system.
///
/// ```no_run
/// use roost_storage::{RedbStore, Store};
///
/// # fn main() -> Result<(), roost_storage::StorageError> {
/// let store = RedbStore::open("/var/lib/roost")?; // uses /var/lib/roost/roost.redb
/// let snapshot = store.load()?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct RedbStore {
    db: Database,
    /// The database file.
    path: PathBuf,
}

impl RedbStore {
    /// Name of the database file inside the store's directory.
    pub const FILE_NAME: &'static str = "roost.redb";

    /// Opens the store in directory `dir` (its file is `dir/roost.redb`),
    /// creating the directory and the file if missing.
    ///
    /// An existing file is checked before redb may write to it: redb opens
    /// a view of it that keeps writes in memory, runs its crash recovery
    /// there if the file needs it, and verifies the checksum of every page
    /// in use, and the format version is checked. So opening reads the
    /// whole file once more, and a damaged file is refused unchanged.
    ///
    /// # Errors
    ///
    /// - [`StorageError::UnsupportedFormat`] if the store was written in
    ///   another format version (the error says what to do);
    /// - [`StorageError::Corrupt`] if the file is not a redb database or is
    ///   damaged (cut short, pages failing their checksums, or anything
    ///   redb panics on), or holds records but no format version;
    /// - [`StorageError::Io`] if the directory or file cannot be read or
    ///   written, or the file is open in another process.
    ///
    /// Every message names the file. Nothing is wiped on error, and a file
    /// refused as damaged or of another format version is not written to.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, StorageError> {
        let dir = dir.as_ref();
        fs::create_dir_all(dir).map_err(|e| {
            StorageError::io(
                NAME,
                format!("cannot create directory {}: {e}", dir.display()),
            )
            .with_source(e)
        })?;
        let path = dir.join(Self::FILE_NAME);
        // redb writes to a file as soon as it opens it, so a file that holds
        // anything is checked first through a view that keeps redb's writes
        // in memory. A missing or empty file has nothing to lose.
        if fs::metadata(&path).is_ok_and(|m| m.len() > 0) {
            verify(&path).map_err(|e| left_alone(e.in_backend(NAME)))?;
        }
        // `Database::create` initialises only a missing or empty file; it
        // refuses anything that is not a redb database.
        let db = guard::catch(|| Database::builder().set_cache_size(CACHE).create(&path))
            .map_err(|panic| damaged(&path, &panic))?
            .map_err(|e| open_error(&path, e))?;
        let store = Self { db, path };
        guard::catch(|| init(&store.db, &store.path))
            .map_err(|panic| damaged(&store.path, &panic))?
            .map_err(|e| e.in_backend(NAME))?;
        Ok(store)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Rewrites the file to give the space of deleted records back to the
    /// file system; returns whether anything was compacted. Not needed for
    /// bounded growth (freed pages are reused), but shrinks the file after
    /// a burst. Takes `&mut self`: no transaction may be open meanwhile.
    ///
    /// # Errors
    ///
    /// [`StorageError::Io`] if redb cannot compact (for example while a
    /// read of this store is still in progress).
    pub fn compact(&mut self) -> Result<bool, StorageError> {
        let path = self.path.clone();
        self.db
            .compact()
            .map_err(|e| error(&path, "cannot compact", e))
    }

    fn begin_write(&self) -> Result<::redb::WriteTransaction, StorageError> {
        self.db
            .begin_write()
            .map_err(|e| self.error("cannot begin a write transaction", e))
    }

    fn error(&self, what: &str, e: impl Into<::redb::Error>) -> StorageError {
        error(&self.path, what, e)
    }
}

impl RedbStore {
    fn apply_unguarded(&self, ops: &[Op]) -> Result<(), StorageError> {
        let writes = kv::plan(ops)?;
        if writes.is_empty() {
            return Ok(());
        }
        let txn = self.begin_write()?;
        {
            let mut tables = Vec::with_capacity(Table::ALL.len());
            for table in Table::ALL {
                tables.push(
                    txn.open_table(definition(table))
                        .map_err(|e| self.error("cannot open a table", e))?,
                );
            }
            for write in &writes {
                // `tables` holds every table, in `Table::ALL` order.
                let (table, result) = match write {
                    Write::Put { table, key, value } => (
                        table,
                        tables[table.index()]
                            .insert(key.as_slice(), value.as_slice())
                            .map(drop),
                    ),
                    Write::Delete { table, key } => (
                        table,
                        tables[table.index()].remove(key.as_slice()).map(drop),
                    ),
                    Write::DeleteRange { table, start, end } => (
                        table,
                        tables[table.index()]
                            .retain_in(start.as_slice()..end.as_slice(), |_, _| false),
                    ),
                };
                // On error, dropping `txn` aborts the whole batch.
                result.map_err(|e| self.error(&format!("cannot write to {}", table.name()), e))?;
            }
        }
        // Default durability (`Immediate`): fsynced before `commit` returns.
        txn.commit()
            .map_err(|e| self.error("cannot commit a batch", e))
    }

    fn load_unguarded(&self) -> Result<Snapshot, StorageError> {
        // One read transaction: a consistent view of every table.
        let txn = self
            .db
            .begin_read()
            .map_err(|e| self.error("cannot begin a read transaction", e))?;
        let mut builder = SnapshotBuilder::default();
        for table in Table::ALL {
            let t = txn
                .open_table(definition(table))
                .map_err(|e| self.error("cannot open a table", e))?;
            let rows = t.iter().map_err(|e| self.error("cannot read", e))?;
            for row in rows {
                let (key, value) = row.map_err(|e| self.error("cannot read", e))?;
                builder.add(table, key.value(), value.value())?;
            }
        }
        Ok(builder.finish())
    }
}

/// The reads of a running broker: each is one read transaction, so it sees
/// one committed state.
impl RedbStore {
    fn begin_read(&self) -> Result<::redb::ReadTransaction, StorageError> {
        self.db
            .begin_read()
            .map_err(|e| self.error("cannot begin a read transaction", e))
    }

    fn open_read(
        &self,
        txn: &::redb::ReadTransaction,
        table: Table,
    ) -> Result<::redb::ReadOnlyTable<&'static [u8], &'static [u8]>, StorageError> {
        txn.open_table(definition(table))
            .map_err(|e| self.error(&format!("cannot open {}", table.name()), e))
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
        if limit == 0 {
            return Ok(Vec::new());
        }
        let txn = self.begin_read()?;
        // Orphans are left out, as `load` leaves them out.
        let sessions = self.open_read(&txn, Table::Sessions)?;
        let session_key = keys::session_key(client_id);
        if sessions
            .get(session_key.as_slice())
            .map_err(|e| self.error("cannot read a session", e))?
            .is_none()
        {
            return Ok(Vec::new());
        }
        let outbound = self.open_read(&txn, Table::Outbound)?;
        let rows = outbound
            .range(start.as_slice()..end.as_slice())
            .map_err(|e| self.error("cannot read outbound entries", e))?;
        rows.take(limit)
            .map(|row| {
                let (key, value) =
                    row.map_err(|e| self.error("cannot read outbound entries", e))?;
                kv::outbound_row(key.value(), value.value())
            })
            .collect()
    }

    fn messages_unguarded(
        &self,
        ids: &[MessageId],
    ) -> Result<Vec<Option<MessageRecord>>, StorageError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let txn = self.begin_read()?;
        let table = self.open_read(&txn, Table::Messages)?;
        ids.iter()
            .map(|id| {
                table
                    .get(&keys::message_key(*id)[..])
                    .map_err(|e| self.error("cannot read a message", e))?
                    .map(|value| encoding::decode(value.value()))
                    .transpose()
            })
            .collect()
    }

    fn retained_unguarded(&self, topic: &str) -> Result<Option<MessageRecord>, StorageError> {
        let txn = self.begin_read()?;
        let table = self.open_read(&txn, Table::Retained)?;
        let key = keys::retained_key(topic);
        let value = table
            .get(key.as_slice())
            .map_err(|e| self.error("cannot read a retained message", e))?;
        value.map(|v| encoding::decode(v.value())).transpose()
    }
}

impl RedbStore {
    /// Runs a read of the files under the panic guard: a panic becomes
    /// an error saying the files are damaged, and errors name the backend.
    fn reading<T>(&self, f: impl FnOnce() -> Result<T, StorageError>) -> Result<T, StorageError> {
        guard::catch(f)
            .map_err(|panic| damaged(&self.path, &panic))?
            .map_err(|e| e.in_backend(NAME))
    }
}

/// Every call into redb runs under `guard::catch`: a panic on a damaged
/// file becomes an error naming it.
impl Store for RedbStore {
    fn apply(&self, ops: &[Op]) -> Result<(), StorageError> {
        guard::catch(|| self.apply_unguarded(ops))
            .map_err(|panic| {
                StorageError::io(
                    NAME,
                    format!(
                        "{}: redb failed while writing a batch (nothing of it is \
                         acknowledged): {panic}",
                        self.path.display()
                    ),
                )
            })?
            .map_err(|e| e.in_backend(NAME))
    }

    fn load(&self) -> Result<Snapshot, StorageError> {
        self.reading(|| self.load_unguarded())
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

    // `flush` keeps the default: every commit is already durable.
}

/// Checks the format version, and on a new store creates every table and
/// writes the version, in one transaction.
fn init(db: &Database, path: &Path) -> Result<(), StorageError> {
    let txn = db
        .begin_write()
        .map_err(|e| error(path, "cannot begin a write transaction", e))?;
    {
        let mut meta = txn
            .open_table(META)
            .map_err(|e| error(path, "cannot open the meta table", e))?;
        let stored = meta
            .get(kv::VERSION_KEY)
            .map_err(|e| error(path, "cannot read the format version", e))?
            .map(|v| v.value().to_vec());
        let mut has_records = false;
        for table in Table::ALL {
            let t = txn
                .open_table(definition(table))
                .map_err(|e| error(path, "cannot open a table", e))?;
            has_records |= !t
                .is_empty()
                .map_err(|e| error(path, "cannot read a table", e))?;
        }
        if kv::check_version(stored.as_deref(), has_records, path)? {
            meta.insert(kv::VERSION_KEY, &kv::version_bytes()[..])
                .map_err(|e| error(path, "cannot write the format version", e))?;
        }
    }
    // On an error above, dropping `txn` aborts it: nothing is written.
    txn.commit()
        .map_err(|e| error(path, "cannot commit the format version", e))
}

/// redb's page cache. Its default (1 GiB) would take most of a small
/// gateway's memory once the store is read through (a subscription to `#`
/// over a million retained messages reads every page of them); the broker
/// keeps what it needs hot itself, within `[memory] budget`, and the
/// operating system's page cache holds the file.
const CACHE: usize = 32 << 20;

/// Cache of the database that [`verify`] opens: the check reads every page
/// once, so a large cache would only hold memory.
const VERIFY_CACHE: usize = 16 << 20;

/// Checks the file at `path` without writing to it: opens it through an
/// [`Overlay`] (redb's crash recovery, if the file needs it, runs on the
/// in-memory view), verifies the checksum of every page in use, and checks
/// the format version. The file is locked meanwhile, as redb locks it.
///
/// A file that passes opens for real with the same result; one that fails
/// is reported as [`StorageError::Corrupt`] (or unsupported, or in use),
/// and has not been changed.
fn verify(path: &Path) -> Result<(), StorageError> {
    let file = fs::File::open(path).map_err(|e| {
        StorageError::io(NAME, format!("{}: cannot open: {e}", path.display())).with_source(e)
    })?;
    let file = FileBackend::new(file).map_err(|e| open_error(path, e))?;
    let view = Overlay::new(file).map_err(|e| open_error(path, e.into()))?;
    guard::catch(|| {
        let mut db = Database::builder()
            .set_cache_size(VERIFY_CACHE)
            .create_with_backend(view)
            .map_err(|e| open_error(path, e))?;
        // `false`: redb found damage that an unclean shutdown does not
        // explain, and repaired the view (for example by going back to the
        // previous commit). Doing that to the file could lose acknowledged
        // data, so it is the operator's call.
        if !db.check_integrity().map_err(|e| open_error(path, e))? {
            return Err(StorageError::corrupt(
                NAME,
                format!(
                    "{} is damaged: pages in use fail their checksums. {WHAT_TO_DO}",
                    path.display()
                ),
            ));
        }
        init(&db, path)
    })
    .map_err(|panic| damaged(path, &panic))?
}

/// What the operator can do about a damaged file.
const WHAT_TO_DO: &str = "Restore it from a backup, or move the file aside (keep it for \
                          inspection) to start with an empty store";

/// Says so in a [`StorageError::Corrupt`] from [`verify`], which wrote
/// nothing to the file.
fn left_alone(e: StorageError) -> StorageError {
    match e {
        StorageError::Corrupt {
            backend,
            message,
            source,
        } => StorageError::Corrupt {
            backend,
            message: format!("{message}. roost wrote nothing to it"),
            source,
        },
        other => other,
    }
}

/// The error for a panic inside redb on the file at `path`.
fn damaged(path: &Path, panic: &str) -> StorageError {
    StorageError::corrupt(
        NAME,
        format!(
            "{} is damaged (redb failed on it: {panic}). {WHAT_TO_DO}",
            path.display()
        ),
    )
}

/// Maps an error of `Database::create`. redb reports a file that is not a
/// database (bad magic number, short header) as an I/O error of kind
/// `InvalidData` or `UnexpectedEof`: that is a damaged file, not a failing
/// disk, and the operator needs to hear so.
fn open_error(path: &Path, e: ::redb::DatabaseError) -> StorageError {
    if let ::redb::DatabaseError::Storage(::redb::StorageError::Io(io)) = &e {
        if matches!(
            io.kind(),
            std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof
        ) {
            return StorageError::corrupt(
                NAME,
                format!(
                    "{}: not a redb database, or damaged ({io}). {WHAT_TO_DO}",
                    path.display()
                ),
            )
            .with_source(e);
        }
    }
    if let ::redb::DatabaseError::Storage(::redb::StorageError::Corrupted(why)) = &e {
        return StorageError::corrupt(
            NAME,
            format!("{} is damaged ({why}). {WHAT_TO_DO}", path.display()),
        )
        .with_source(e);
    }
    error(path, "cannot open", e)
}

/// Maps a redb error, naming the database file.
fn error(path: &Path, what: &str, e: impl Into<::redb::Error>) -> StorageError {
    let e = e.into();
    let message = format!("{}: {what}: {e}", path.display());
    let error = match e {
        ::redb::Error::Corrupted(_) => StorageError::corrupt(
            NAME,
            format!("{message}; move the file aside to start empty"),
        ),
        ::redb::Error::DatabaseAlreadyOpen => {
            StorageError::io(NAME, format!("{message} (is another roost using it?)"))
        }
        _ => StorageError::io(NAME, message),
    };
    error.with_source(e)
}
