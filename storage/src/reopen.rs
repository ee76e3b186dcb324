//! A database handle that can be closed and opened again while the store is
//! shared: how the persistent backends recover from a failed write.
//!
//! After an I/O error (a full disk, typically) neither sled nor redb will
//! write again: redb answers "Previous I/O error occurred" to every call,
//! sled keeps a global error. Only a new handle on the same files helps,
//! and both lock their files, so the old handle must be gone before the new
//! one opens.
//!
//! Invariants: a call holds an `Arc` of the handle for as long as it uses
//! it, so a reopen never pulls a handle from under a running call (the old
//! one lives until its last call ends; its file lock too, so a reopen racing
//! a long read fails and is retried by the next [`Reopen::reopen`]). While
//! no handle is open, [`Reopen::get`] is `None`: every call returns an
//! error, none panics.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use crate::StorageError;

#[derive(Debug)]
pub(crate) struct Reopen<T> {
    current: RwLock<Option<Arc<T>>>,
    /// A write failed since the handle was opened: the next reopen must
    /// really reopen.
    broken: AtomicBool,
}

impl<T> Reopen<T> {
    pub(crate) fn new(handle: T) -> Self {
        Reopen {
            current: RwLock::new(Some(Arc::new(handle))),
            broken: AtomicBool::new(false),
        }
    }

    /// The open handle; `None` while the last reopen failed.
    pub(crate) fn get(&self) -> Option<Arc<T>> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The open handle, for a caller that has the store to itself.
    #[cfg(feature = "redb")]
    pub(crate) fn get_mut(&mut self) -> Option<&mut T> {
        self.current
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .as_mut()
            .and_then(Arc::get_mut)
    }

    /// Notes that a write failed: the handle may refuse everything from now
    /// on.
    pub(crate) fn mark_broken(&self) {
        self.broken.store(true, Ordering::SeqCst);
    }

    /// Closes the handle and opens a new one with `open`, if a write failed
    /// since it was opened or it is closed; otherwise does nothing. On error
    /// the store stays closed until a later call succeeds.
    pub(crate) fn reopen(
        &self,
        open: impl FnOnce() -> Result<T, StorageError>,
    ) -> Result<(), StorageError> {
        let mut current = self.current.write().unwrap_or_else(PoisonError::into_inner);
        if current.is_some() && !self.broken.load(Ordering::SeqCst) {
            return Ok(());
        }
        // Closed first: the new handle needs the file lock the old one holds.
        *current = None;
        let handle = open()?;
        *current = Some(Arc::new(handle));
        self.broken.store(false, Ordering::SeqCst);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::Reopen;
    use crate::StorageError;

    #[test]
    fn reopens_only_when_broken_and_stays_closed_after_a_failed_open() {
        let r = Reopen::new(1);
        r.reopen(|| panic!("a healthy handle is not reopened"))
            .unwrap();
        assert_eq!(r.get().as_deref(), Some(&1));

        r.mark_broken();
        let held = r.get();
        assert!(r
            .reopen(|| Err(StorageError::io("test", "disk full")))
            .is_err());
        assert!(r.get().is_none(), "closed after a failed reopen");
        assert_eq!(held.as_deref(), Some(&1), "a running call keeps its handle");

        r.reopen(|| Ok(2)).unwrap();
        assert_eq!(r.get().as_deref(), Some(&2));
        r.reopen(|| panic!("healthy again")).unwrap();
    }
}
