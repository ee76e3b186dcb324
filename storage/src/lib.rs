//! Storage for the roost MQTT broker: a small synchronous trait and its
//! backends.
//!
//! The broker describes every change to its durable state as an [`Op`] and
//! hands a batch of them to [`Store::apply`]. At start-up it reads everything
//! back, one record at a time with [`Store::scan`] (keeping only what it
//! wants), or all at once with [`Store::load`]; while running it can read
//! parts of the state back ([`Store::outbound_page`], [`Store::messages`],
//! [`Store::retained`], [`Store::retained_many`]), so that queued and
//! retained messages need not all stay in memory.
//!
//! This crate knows nothing about MQTT packets or sockets: records are plain
//! data, so a backend can be tested on its own.
//!
//! # The contract of [`Store`]
//!
//! - **Atomic.** `apply` applies a batch in order, all or nothing: if it
//!   returns an error, nothing of the batch was applied, and a crash during
//!   `apply` leaves either the whole batch or none of it. A later op in a
//!   batch sees the effect of earlier ones (put then delete leaves nothing).
//! - **Durable on return.** A persistent backend ([`Store::is_persistent`])
//!   returns `Ok` only once the batch would survive a crash or power loss.
//!   The broker acknowledges a QoS 1/2 publish only after that, so a failed
//!   `apply` must never be reported as success.
//! - **Synchronous.** Calls block (a disk flush can take milliseconds). The
//!   broker keeps them off its async runtime, on a dedicated writer thread or
//!   through `spawn_blocking`, and batches many clients' ops into one `apply`
//!   (group commit).
//! - **Keys.** Sessions are keyed by client id; subscriptions by client id
//!   and filter; outbound entries by client id and sequence number;
//!   inbound QoS 2 ids by client id and packet id; message bodies by id;
//!   retained messages by topic. A put replaces what has the same key;
//!   deleting something absent is not an error. A client id must not contain
//!   U+0000 ([`Op::validate`]).
//! - **Cascade.** [`Op::DeleteSession`] also removes the session's
//!   subscriptions, outbound entries and inbound QoS 2 ids, but not message
//!   bodies: the broker deletes a body with [`Op::DeleteMessage`] once no
//!   entry references it.
//! - **Snapshot.** [`Store::load`] returns everything ordered (see
//!   [`Snapshot`]); per-client entries whose client has no session record are
//!   kept but left out of the snapshot.
//! - **Scan.** [`Store::scan`] passes the same content as `load`, one
//!   [`Record`] at a time, in `load`'s order: each session followed by its
//!   subscriptions, outbound entries and inbound QoS 2 ids, then message
//!   bodies by id, then retained messages by topic. An error from the
//!   visitor stops it and is returned as it is. This crate's backends build
//!   `load` on their `scan` ([`Snapshot::from_scan`]), and keep nothing
//!   per record while scanning.
//! - **Reads.** The point and range reads see every batch whose `apply`
//!   returned `Ok` before the read began, and agree with what `load` would
//!   return at that moment (orphans left out here too). Their default
//!   implementations go through `load` (`scan` too; `retained_many` through
//!   `retained`), so a third-party backend keeps compiling; this crate's
//!   backends read only what is asked for.
//!
//! Every backend passes the same conformance suite,
//! [`conformance_tests!`], persistent ones also [`reopen_tests!`] (drop the
//! store, reopen its directory, find the same state), and `FaultyStore`
//! (feature `faulty`) wraps any backend to make chosen writes and reads
//! fail.
//!
//! # Example
//!
//! ```
//! use roost_storage::{
//!     MemoryStore, Op, Record, SessionOwner, SessionRecord, Store, SubscriptionRecord,
//! };
//!
//! # fn main() -> Result<(), roost_storage::StorageError> {
//! let store = MemoryStore::new();
//! store.apply(&[
//!     Op::PutSession(SessionRecord {
//!         client_id: "sensor-1".into(),
//!         protocol_level: 5,
//!         expiry_interval: 3600,
//!         disconnected_at_ms: None,
//!         will: None,
//!         owner: SessionOwner::User("device".into()),
//!     }),
//!     Op::PutSubscription {
//!         client_id: "sensor-1".into(),
//!         subscription: SubscriptionRecord {
//!             filter: "cmd/sensor-1/#".into(),
//!             qos: 1,
//!             no_local: false,
//!             retain_as_published: false,
//!             retain_handling: 0,
//!             subscription_identifier: None,
//!         },
//!     },
//! ])?;
//!
//! let snapshot = store.load()?;
//! assert_eq!(snapshot.sessions.len(), 1);
//! assert_eq!(snapshot.sessions[0].subscriptions[0].filter, "cmd/sensor-1/#");
//!
//! // The same, one record at a time, keeping only the filters.
//! let mut filters = Vec::new();
//! store.scan(&mut |record| {
//!     if let Record::Subscription { subscription, .. } = record {
//!         filters.push(subscription.filter);
//!     }
//!     Ok(())
//! })?;
//! assert_eq!(filters, ["cmd/sensor-1/#"]);
//!
//! // Deleting the session takes its subscriptions with it.
//! store.apply(&[Op::DeleteSession { client_id: "sensor-1".into() }])?;
//! assert!(store.load()?.sessions.is_empty());
//! # Ok(())
//! # }
//! ```
//!
//! # Modules for backend authors
//!
//! - [`encoding`]: versioned record values ([`encoding::encode`],
//!   [`encoding::decode`]).
//! - [`keys`]: composite keys that sort correctly in byte order.
//!
//! # Backends
//!
//! | backend         | persistent | atomic batch                  | durable on return                 |
//! |-----------------|------------|-------------------------------|-----------------------------------|
//! | [`MemoryStore`] | no         | one lock held for the batch   | n/a                               |
//! | `SledStore`     | yes        | one multi-tree transaction    | `Db::flush` (fsync) after commit  |
//! | `RedbStore`     | yes        | one write transaction         | commit fsyncs (default durability) |
//!
//! Both persistent backends refuse a store written in another format
//! version ([`StorageError::UnsupportedFormat`], with a hint for the
//! operator) and report damaged files as errors naming the path; they never
//! wipe data on their own. A panic inside sled or redb (which both raise on
//! some damaged files) is caught at this crate's boundary and returned as an
//! error naming the path: [`StorageError::Corrupt`] when opening or
//! loading, [`StorageError::Io`] when writing. redb refuses a damaged file
//! before writing a byte to it; sled's own recovery may rewrite its log
//! while opening.
//!
//! # Cargo features
//!
//! Every feature is additive and off by default here; the `roost` crate
//! forwards them (features of the same names) and turns `redb` on by
//! default.
//!
//! | feature | enables | dependency |
//! |---------|---------|------------|
//! | `sled`  | `SledStore`: a sled 0.34 database directory, one tree per record kind | `sled` 0.34 |
//! | `redb`  | `RedbStore`: one `roost.redb` file in a directory, one table per record kind | `redb` 2 |
//! | `faulty` | `FaultyStore`: wraps any store and fails chosen calls, for tests of what sits above a store | none |

use std::sync::Arc;

#[doc(hidden)]
pub mod conformance;
pub mod encoding;
#[cfg(feature = "faulty")]
mod faulty;
#[cfg(any(feature = "sled", feature = "redb"))]
mod guard;
pub mod keys;
#[cfg(any(feature = "sled", feature = "redb"))]
mod kv;
mod memory;
#[cfg(feature = "redb")]
mod overlay;
mod record;
#[cfg(feature = "redb")]
mod redb;
#[cfg(any(feature = "sled", feature = "redb"))]
mod reopen;
mod scan;
#[cfg(feature = "sled")]
mod sled;

#[cfg(feature = "redb")]
pub use crate::redb::RedbStore;
#[cfg(feature = "sled")]
pub use crate::sled::SledStore;
#[cfg(feature = "faulty")]
pub use faulty::{FaultHandle, FaultyStore};
pub use memory::MemoryStore;
pub use record::*;
pub use scan::{Record, Visit};

/// The underlying error a [`StorageError`] carries as its
/// [`source`](std::error::Error::source): an I/O, sled, redb or bincode
/// error, or a third-party backend's own. Boxed because each backend has its
/// own error types and the broker only reports them; the variant and the
/// backend's name are what code decides on.
pub type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Errors from a storage backend.
///
/// Each names the backend it came from (`"memory"`, `"sled"`, `"redb"`, or
/// a third-party backend's name) in its text and in [`backend`](Self::backend),
/// and carries the underlying error, where there is one, as its
/// [`source`](std::error::Error::source). The text also includes the
/// source's, as operators read this error on its own (in the log, or as the
/// binary's last words).
///
/// Backends build errors with [`io`](Self::io), [`corrupt`](Self::corrupt)
/// and [`with_source`](Self::with_source); errors from the shared helpers
/// ([`encoding`], [`keys`]) name no backend until the backend's boundary
/// names it with [`in_backend`](Self::in_backend).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The backend's I/O failed.
    #[error("{}: I/O failed: {message}", store(backend))]
    Io {
        /// The backend's name.
        backend: &'static str,
        /// What failed, naming the file or directory.
        message: String,
        /// The underlying error.
        #[source]
        source: Option<Source>,
    },
    /// Stored data could not be decoded, or the files are damaged.
    #[error("{}: stored data is corrupt: {message}", store(backend))]
    Corrupt {
        /// The backend's name.
        backend: &'static str,
        /// What is damaged and what the operator can do.
        message: String,
        /// The underlying error.
        #[source]
        source: Option<Source>,
    },
    /// The store was written by a format version this build cannot read.
    #[error(
        "{}: store format version {found} is not supported (this build reads version \
         {supported}); {hint}",
        store(backend)
    )]
    UnsupportedFormat {
        /// The backend's name.
        backend: &'static str,
        /// Version found on disk.
        found: u32,
        /// Version this build writes.
        supported: u32,
        /// What the operator can do.
        hint: &'static str,
    },
    /// A failure [`FaultyStore`] made on purpose (feature `faulty`).
    #[cfg(feature = "faulty")]
    #[error("faulty store: injected failure: {message}")]
    Injected {
        /// Which call failed.
        message: String,
    },
    /// An operation no backend can store (for example a client id containing
    /// U+0000); the batch holding it was rejected as a whole.
    #[error("{}: invalid storage operation: {message}", store(backend))]
    InvalidOp {
        /// The backend's name.
        backend: &'static str,
        /// What is wrong with the operation.
        message: String,
    },
    /// A record could not be encoded.
    #[error("{}: cannot encode record: {message}", store(backend))]
    Encode {
        /// The backend's name.
        backend: &'static str,
        /// What could not be encoded.
        message: String,
        /// The underlying error.
        #[source]
        source: Option<Source>,
    },
}

/// How an error names its backend: "redb store", or "storage" for an error
/// no backend has named yet.
fn store(backend: &str) -> std::borrow::Cow<'static, str> {
    if backend.is_empty() {
        "storage".into()
    } else {
        format!("{backend} store").into()
    }
}

impl StorageError {
    /// An I/O failure of `backend`; `message` says what failed.
    pub fn io(backend: &'static str, message: impl Into<String>) -> Self {
        StorageError::Io {
            backend,
            message: message.into(),
            source: None,
        }
    }

    /// Damaged data or files in `backend`; `message` says what and what the
    /// operator can do.
    pub fn corrupt(backend: &'static str, message: impl Into<String>) -> Self {
        StorageError::Corrupt {
            backend,
            message: message.into(),
            source: None,
        }
    }

    /// Attaches the underlying error, on the kinds that carry one (`Io`,
    /// `Corrupt`, `Encode`); the others are returned unchanged.
    pub fn with_source(mut self, error: impl Into<Source>) -> Self {
        if let StorageError::Io { source, .. }
        | StorageError::Corrupt { source, .. }
        | StorageError::Encode { source, .. } = &mut self
        {
            *source = Some(error.into());
        }
        self
    }

    /// The name of the backend the error came from; empty if none named it.
    pub fn backend(&self) -> &'static str {
        match self {
            StorageError::Io { backend, .. }
            | StorageError::Corrupt { backend, .. }
            | StorageError::UnsupportedFormat { backend, .. }
            | StorageError::InvalidOp { backend, .. }
            | StorageError::Encode { backend, .. } => backend,
            #[cfg(feature = "faulty")]
            StorageError::Injected { .. } => "faulty",
        }
    }

    /// Names the backend of an error that names none yet (one from
    /// [`encoding`] or [`keys`]); a backend calls it at its boundary. An
    /// error that already names its backend keeps it: a wrapper (such as
    /// `FaultyStore`, feature `faulty`) passes its inner store's errors on as
    /// they are.
    pub fn in_backend(mut self, name: &'static str) -> Self {
        match &mut self {
            StorageError::Io { backend, .. }
            | StorageError::Corrupt { backend, .. }
            | StorageError::UnsupportedFormat { backend, .. }
            | StorageError::InvalidOp { backend, .. }
            | StorageError::Encode { backend, .. } => {
                if backend.is_empty() {
                    *backend = name;
                }
            }
            #[cfg(feature = "faulty")]
            StorageError::Injected { .. } => {}
        }
        self
    }
}

/// The page cache a persistent backend of this crate keeps by default,
/// in bytes: 16 MiB. sled and redb would each keep 1 GiB, which on a
/// gateway with 1-4 GB of memory decides more than the broker's own
/// budget; `open_with_cache` sets another bound. The operating system's
/// page cache still holds the files: with redb, a queue of 1,000,000
/// messages drained as fast with 16 MiB as with 64 MiB (BENCHMARKS.md).
pub const DEFAULT_CACHE_BYTES: usize = 16 * 1024 * 1024;

/// A storage backend.
///
/// Implementations are synchronous; the broker calls them off its async
/// runtime (on a writer thread), never from a reactor thread. See the
/// [crate docs](crate) for the full contract.
pub trait Store: Send + Sync + 'static {
    /// Applies `ops` in order, atomically: after a crash either all of them
    /// or none are visible, and on error none were applied. A persistent
    /// backend returns only once the batch is durable.
    fn apply(&self, ops: &[Op]) -> Result<(), StorageError>;

    /// Reads the whole stored state at once (at start-up).
    ///
    /// [`scan`](Self::scan) passes the same records one at a time, so that
    /// a caller need not hold them all; a backend that implements `scan`
    /// can build `load` on it with [`Snapshot::from_scan`], as this crate's
    /// backends do.
    fn load(&self) -> Result<Snapshot, StorageError>;

    /// True if the data outlives the process.
    fn is_persistent(&self) -> bool;

    /// Makes everything applied so far durable. Called at shutdown; a backend
    /// whose `apply` is already durable on return has nothing to do, which is
    /// the default.
    fn flush(&self) -> Result<(), StorageError> {
        Ok(())
    }

    /// Makes a store whose writes failed usable again, if it can: the
    /// broker calls it before it retries a batch that failed, so that a full
    /// disk (or another I/O failure that passes) ends by itself once the
    /// cause is gone.
    ///
    /// `RedbStore` and `SledStore` need it: after an I/O error both refuse
    /// every later call until their files are closed and opened again, and
    /// that is what they do here (only if a write failed since they were
    /// last opened; otherwise it costs nothing). Until a reopen succeeds,
    /// every call returns an error; none panics. What was committed before
    /// the failure is read back as it was: a failed `apply` applied nothing.
    ///
    /// The default does nothing: a store that recovers on its own (or never
    /// fails) has nothing to do.
    fn recover(&self) -> Result<(), StorageError> {
        Ok(())
    }

    /// Reads one page of a session's outbound entries (queued and in
    /// flight): those with a sequence number greater than `after_seq` (all
    /// of them if `None`), in ascending seq order, at most `limit` of them.
    ///
    /// It exists so that a queue can live on disk and be fed into memory a
    /// page at a time: pass the last seq of a page as `after_seq` of the
    /// next; a page shorter than `limit` is the last one. `limit` 0 reads
    /// nothing.
    ///
    /// Returns exactly what [`load`](Self::load) would list for the session
    /// (paged): nothing for a client without a session record (orphans are
    /// left out, as in a snapshot) or for an id no client can have (one
    /// containing U+0000).
    ///
    /// # Consistency
    ///
    /// A read sees every batch whose `apply` returned `Ok` before the read
    /// began. A page read while another batch is being applied may see part
    /// of that batch on a backend that does not read from a snapshot
    /// (`SledStore`); `MemoryStore` and `RedbStore` see all of it or none.
    /// Pages read one after the other are separate reads.
    ///
    /// The default implementation calls [`load`](Self::load): correct, but
    /// it reads the whole store on every call. It exists so that a
    /// third-party backend written before this method keeps compiling;
    /// every backend of this crate reads only the page.
    fn outbound_page(
        &self,
        client_id: &str,
        after_seq: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, OutboundRecord)>, StorageError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let snapshot = self.load()?;
        let Some(session) = snapshot
            .sessions
            .into_iter()
            .find(|s| s.session.client_id == client_id)
        else {
            return Ok(Vec::new());
        };
        Ok(session
            .outbound
            .into_iter()
            .filter(|(seq, _)| after_seq.is_none_or(|after| *seq > after))
            .take(limit)
            .collect())
    }

    /// Reads message bodies by id: one answer per id, in the order of
    /// `ids` (a repeated id is answered each time), `None` for an id with
    /// no body stored.
    ///
    /// It exists so that outbound entries and the retained index can stay
    /// in memory without their payloads: a page of a queue needs its bodies
    /// in one call, hence the batch.
    ///
    /// Consistency is that of [`outbound_page`](Self::outbound_page); the
    /// answers of one call may come from different moments on `SledStore`
    /// if a batch is applied meanwhile. The default implementation calls
    /// [`load`](Self::load) (correct, slow; see `outbound_page`).
    fn messages(&self, ids: &[MessageId]) -> Result<Vec<Option<MessageRecord>>, StorageError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        // A snapshot lists bodies ordered by id.
        let stored = self.load()?.messages;
        Ok(ids
            .iter()
            .map(|id| {
                stored
                    .binary_search_by_key(id, |(stored, _)| *stored)
                    .ok()
                    .map(|at| stored[at].1.clone())
            })
            .collect())
    }

    /// Reads the retained message of one topic (an exact topic name, not a
    /// filter), `None` if there is none.
    ///
    /// It exists so that the retained index can keep topics in memory and
    /// read payloads from the store when a subscription matches them.
    ///
    /// Consistency is that of [`outbound_page`](Self::outbound_page). The
    /// default implementation calls [`load`](Self::load) (correct, slow;
    /// see `outbound_page`).
    fn retained(&self, topic: &str) -> Result<Option<MessageRecord>, StorageError> {
        Ok(self.load()?.retained.into_iter().find(|m| m.topic == topic))
    }

    /// Reads the retained messages of many topics (exact topic names):
    /// one answer per topic, in the order of `topics` (a repeated topic is
    /// answered each time), `None` for a topic with none.
    ///
    /// It exists for a subscription whose filter matches many retained
    /// topics whose payloads are not in memory: one call, and one read
    /// transaction where the backend has them (`MemoryStore` and
    /// `RedbStore` answer from one state; `SledStore` reads topic by topic,
    /// as [`messages`](Self::messages) reads ids).
    ///
    /// Consistency is that of [`outbound_page`](Self::outbound_page). The
    /// default implementation calls [`retained`](Self::retained) for each
    /// topic: right for a backend that reads a topic at a time, slow for
    /// one that keeps `retained`'s default.
    fn retained_many(&self, topics: &[&str]) -> Result<Vec<Option<MessageRecord>>, StorageError> {
        topics.iter().map(|topic| self.retained(topic)).collect()
    }

    /// Reads the whole stored state one record at a time, passing each to
    /// `visit`, so that a caller keeps only what it wants (an index instead
    /// of every payload) where [`load`](Self::load) would hold everything
    /// at once.
    ///
    /// It passes what `load` returns, in the order `load` lists it
    /// ([`Snapshot::into_records`] gives exactly that sequence), orphans
    /// (per-client records of a client without a session record) left out:
    ///
    /// 1. every session, by client id (byte order), each followed at once by
    ///    what belongs to it: its subscriptions (by filter), then its
    ///    outbound entries (by seq), then its inbound QoS 2 ids
    ///    (ascending), before the next session;
    /// 2. then the message bodies, by id;
    /// 3. then the retained messages, by topic.
    ///
    /// A session's records stay together so that a caller can finish one
    /// session before it sees the next, and so that a key-value backend
    /// reads each session's records with one range read per kind, never
    /// visiting an orphan.
    ///
    /// An error returned by `visit` stops the scan: `scan` returns that
    /// error as it is, and calls `visit` no more. A panic in `visit`
    /// unwinds out of `scan`. `visit` must not call into the store: a
    /// backend may hold a lock for the whole scan (`MemoryStore` does, so a
    /// write from `visit` would deadlock).
    ///
    /// Memory: this crate's backends keep nothing per record while they
    /// scan (they iterate their tables, holding only the current row, and
    /// the engine's own page cache), so what the scan costs is what
    /// `visit` keeps. The default implementation calls `load` and passes
    /// its snapshot's records: correct, but it holds the whole snapshot.
    ///
    /// # Consistency
    ///
    /// `MemoryStore` (holding its lock) and `RedbStore` (in one read
    /// transaction) pass one committed state. `SledStore` reads its trees
    /// as they are while it goes, so a batch applied during the scan may be
    /// seen in part; the broker scans at start-up, before it writes.
    fn scan(
        &self,
        visit: &mut dyn FnMut(Record) -> Result<(), StorageError>,
    ) -> Result<(), StorageError> {
        self.load()?.into_records().try_for_each(visit)
    }
}

/// A store behind a pointer forwards every method, the reads included: a
/// method left out would fall back to its slow default without a word, so
/// both pointers are written by one macro.
macro_rules! forward_store {
    ($(#[$doc:meta])* $ptr:ident) => {
        $(#[$doc])*
        impl<S: Store + ?Sized> Store for $ptr<S> {
            fn apply(&self, ops: &[Op]) -> Result<(), StorageError> {
                (**self).apply(ops)
            }

            fn load(&self) -> Result<Snapshot, StorageError> {
                (**self).load()
            }

            fn is_persistent(&self) -> bool {
                (**self).is_persistent()
            }

            fn flush(&self) -> Result<(), StorageError> {
                (**self).flush()
            }

            fn recover(&self) -> Result<(), StorageError> {
                (**self).recover()
            }

            fn outbound_page(
                &self,
                client_id: &str,
                after_seq: Option<u64>,
                limit: usize,
            ) -> Result<Vec<(u64, OutboundRecord)>, StorageError> {
                (**self).outbound_page(client_id, after_seq, limit)
            }

            fn messages(
                &self,
                ids: &[MessageId],
            ) -> Result<Vec<Option<MessageRecord>>, StorageError> {
                (**self).messages(ids)
            }

            fn retained(&self, topic: &str) -> Result<Option<MessageRecord>, StorageError> {
                (**self).retained(topic)
            }

            fn retained_many(
                &self,
                topics: &[&str],
            ) -> Result<Vec<Option<MessageRecord>>, StorageError> {
                (**self).retained_many(topics)
            }

            fn scan(
                &self,
                visit: &mut dyn FnMut(Record) -> Result<(), StorageError>,
            ) -> Result<(), StorageError> {
                (**self).scan(visit)
            }
        }
    };
}

forward_store!(
    /// Shares a store: lets a test keep a handle on a store the broker owns.
    Arc
);
forward_store!(
    /// Lets a backend chosen at run time (`Box<dyn Store>`) be used as a store.
    Box
);
