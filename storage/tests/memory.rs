//! The conformance suite, run against the in-memory reference backend.

mod memory_store {
    roost_storage::conformance_tests!(roost_storage::MemoryStore::new());
}

/// The suite also runs through the wrappers the broker's tests use.
#[cfg(feature = "faulty")]
mod faulty_memory_store {
    roost_storage::conformance_tests!(roost_storage::FaultyStore::new(
        roost_storage::MemoryStore::new()
    ));
}

mod boxed_memory_store {
    roost_storage::conformance_tests!(
        Box::new(roost_storage::MemoryStore::new()) as Box<dyn roost_storage::Store>
    );
}

mod arc_memory_store {
    roost_storage::conformance_tests!(std::sync::Arc::new(roost_storage::MemoryStore::new()));
}

/// A store implementing only the required methods, as a third-party backend
/// written before the reads were added: the suite then checks the trait's
/// default reads, built on `load`.
#[derive(Debug, Default)]
struct RequiredOnly(roost_storage::MemoryStore);

impl roost_storage::Store for RequiredOnly {
    fn apply(&self, ops: &[roost_storage::Op]) -> Result<(), roost_storage::StorageError> {
        self.0.apply(ops)
    }

    fn load(&self) -> Result<roost_storage::Snapshot, roost_storage::StorageError> {
        self.0.load()
    }

    fn is_persistent(&self) -> bool {
        false
    }
}

mod default_reads {
    roost_storage::conformance_tests!(super::RequiredOnly::default());
}

/// An error names the backend it came from, in its text too.
#[test]
fn errors_name_the_memory_backend() {
    use roost_storage::{MemoryStore, Op, StorageError, Store};
    let err = MemoryStore::new()
        .apply(&[Op::DeleteSession {
            client_id: "bad\0id".into(),
        }])
        .unwrap_err();
    assert!(matches!(err, StorageError::InvalidOp { .. }), "{err:?}");
    assert_eq!(err.backend(), "memory");
    assert!(
        err.to_string()
            .starts_with("memory store: invalid storage operation: "),
        "{err}"
    );
}
