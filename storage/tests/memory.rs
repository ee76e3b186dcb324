//! The conformance suite, run against the in-memory reference backend.

mod memory_store {
    roost_storage::conformance_tests!(roost_storage::MemoryStore::new());
}

/// The suite also runs through the wrappers the broker's tests use.
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
