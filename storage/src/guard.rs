//! The storage boundary's panic guard.
//!
//! sled and redb can panic on files that were damaged outside them (an
//! assertion on a truncated redb file, an index out of range on a flipped
//! byte) instead of returning an error. A panic must not take the broker
//! down, and the operator needs a message naming the file, not a backtrace:
//! every backend call that reads or writes the files goes through [`catch`],
//! which turns a panic into an error text for a [`StorageError`].
//!
//! The default panic hook would still print the panic to stderr, so the
//! first call installs a hook that keeps quiet (and records the message
//! instead) for panics raised inside [`catch`] on the same thread, and hands
//! every other panic to the hook that was installed before it.
//!
//! A scan also calls the caller's visitor from inside the backend; [`scan`]
//! keeps the visitor's errors and panics apart from the backend's.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::panic::{self, AssertUnwindSafe};
use std::sync::Once;

use crate::{StorageError, Visit};

thread_local! {
    /// True while this thread runs a call through [`catch`].
    static CATCHING: Cell<bool> = const { Cell::new(false) };
    /// The message of the panic [`catch`] is unwinding from.
    static MESSAGE: RefCell<Option<String>> = const { RefCell::new(None) };
}

static HOOK: Once = Once::new();

/// Runs `f`; a panic inside it comes back as `Err` with the panic's message
/// and location, and is not printed.
///
/// What `f` touched may be left half-changed by the panic; the callers only
/// hand in calls into a backend whose own state is its business (the error
/// says the file is damaged or the write failed).
pub(crate) fn catch<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    HOOK.call_once(install_hook);
    let outer = CATCHING.replace(true);
    let result = panic::catch_unwind(AssertUnwindSafe(f));
    CATCHING.set(outer);
    result.map_err(|payload| {
        MESSAGE
            .take()
            .unwrap_or_else(|| text(payload.as_ref()).to_string())
    })
}

/// Runs a backend's scan under [`catch`] while the caller's visitor stays
/// the caller's: an error the visitor returns comes back unchanged (not
/// named as the backend's), and a panic in it is printed and unwinds on as
/// usual instead of being reported as damaged files.
///
/// `scan` is the backend's scan, given the visitor to call; `damaged`
/// turns a panic inside the backend into its error; `name` names the
/// backend in its own errors (see [`StorageError::in_backend`]).
pub(crate) fn scan(
    name: &'static str,
    visit: Visit<'_>,
    damaged: impl FnOnce(&str) -> StorageError,
    scan: impl FnOnce(Visit<'_>) -> Result<(), StorageError>,
) -> Result<(), StorageError> {
    /// Why the visitor stopped the scan.
    enum Stop {
        Error(StorageError),
        Panic(Box<dyn Any + Send>),
    }
    let mut stop = None;
    let result = catch(|| {
        scan(&mut |record| {
            // The visitor's panics are not ours to quiet or catch for good.
            let outer = CATCHING.replace(false);
            let visited = panic::catch_unwind(AssertUnwindSafe(|| visit(record)));
            CATCHING.set(outer);
            let why = match visited {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) => Stop::Error(e),
                Err(payload) => Stop::Panic(payload),
            };
            stop = Some(why);
            // Only ends the backend's loops: `stop` is what is returned.
            Err(StorageError::io(
                name,
                "the scan was stopped by its visitor",
            ))
        })
    });
    match stop {
        Some(Stop::Error(e)) => Err(e),
        Some(Stop::Panic(payload)) => panic::resume_unwind(payload),
        None => result
            .map_err(|panic| damaged(&panic))?
            .map_err(|e| e.in_backend(name)),
    }
}

fn install_hook() {
    let previous = panic::take_hook();
    panic::set_hook(Box::new(move |info| {
        if CATCHING.try_with(Cell::get).unwrap_or(false) {
            let message = match info.location() {
                Some(at) => format!("{} (at {at})", text(info.payload())),
                None => text(info.payload()).to_string(),
            };
            let _ = MESSAGE.try_with(|m| *m.borrow_mut() = Some(message));
        } else {
            previous(info);
        }
    }));
}

fn text(payload: &(dyn Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a panic without a message")
}

#[cfg(test)]
mod tests {
    use super::catch;

    #[test]
    fn a_panic_becomes_its_message_and_nesting_restores_the_state() {
        assert_eq!(catch(|| 7), Ok(7));
        let err = catch(|| -> u8 { panic!("boom {}", 1) }).unwrap_err();
        assert!(err.starts_with("boom 1 (at "), "{err}");
        assert!(err.contains("guard.rs"), "{err}");
        // An inner catch does not end the outer one.
        let outer = catch(|| {
            let inner = catch(|| -> u8 { panic!("inner") });
            assert!(inner.unwrap_err().starts_with("inner"));
            panic!("outer")
        })
        .unwrap_err();
        assert!(outer.starts_with("outer"), "{outer}");
    }
}
