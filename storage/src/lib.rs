//! Storage for the roost MQTT broker: a small synchronous trait and its
//! backends.
//!
//! The broker describes every change to its durable state as an [`Op`] and
//! hands a batch of them to [`Store::apply`], which must make the whole batch
//! durable (for persistent backends) before it returns. At start-up the broker
//! reads everything back with [`Store::load`].
//!
//! This crate knows nothing about MQTT packets or sockets: records are plain
//! data, so a backend can be tested on its own.

mod memory;
mod record;

pub use memory::MemoryStore;
pub use record::*;

/// Errors from a storage backend.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The backend's I/O failed.
    #[error("storage I/O failed: {0}")]
    Io(String),
    /// Stored data could not be decoded.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The store was written by a format version this build cannot read.
    #[error("store format version {found} is not supported (this build reads version {supported}); {hint}")]
    UnsupportedFormat {
        /// Version found on disk.
        found: u32,
        /// Version this build writes.
        supported: u32,
        /// What the operator can do.
        hint: &'static str,
    },
    /// An injected failure (tests).
    #[error("injected failure: {0}")]
    Injected(String),
}

/// A storage backend.
///
/// Implementations are synchronous; the broker calls them off its async
/// runtime (on a writer thread), never from a reactor thread.
pub trait Store: Send + Sync + 'static {
    /// Applies `ops` in order, atomically: after a crash either all of them
    /// or none are visible. A persistent backend returns only once the batch
    /// is durable.
    fn apply(&self, ops: &[Op]) -> Result<(), StorageError>;

    /// Reads the whole stored state (used once, at start-up).
    fn load(&self) -> Result<Snapshot, StorageError>;

    /// True if the data outlives the process.
    fn is_persistent(&self) -> bool;
}
