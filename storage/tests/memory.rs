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
