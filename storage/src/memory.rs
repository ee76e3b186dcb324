//! The in-memory backend: the reference implementation of [`Store`].

use crate::{Op, Snapshot, StorageError, Store};

/// Keeps everything in memory; nothing survives the process.
#[derive(Debug, Default)]
pub struct MemoryStore {}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Store for MemoryStore {
    fn apply(&self, ops: &[Op]) -> Result<(), StorageError> {
        let _ = ops;
        unimplemented!("storage helper")
    }

    fn load(&self) -> Result<Snapshot, StorageError> {
        unimplemented!("storage helper")
    }

    fn is_persistent(&self) -> bool {
        false
    }
}
