//! The sled backend: the shared conformance and reopen suites, the format
//! version check, and bounded disk use under churn.
#![cfg(feature = "sled")]

mod common;

use std::path::Path;
use std::time::Instant;

use common::{churn, disk_usage, temp_dir, TempStore};
use roost_storage::{SledStore, StorageError, Store};

mod sled_store {
    roost_storage::conformance_tests!(super::TempStore::new(|dir| roost_storage::SledStore::open(
        dir
    )));
}

mod sled_reopen {
    roost_storage::reopen_tests!(super::temp_dir(), |dir: &std::path::Path| {
        roost_storage::SledStore::open(dir)
    });
}

/// Opens the sled database directly, waiting for a dropped store's lock
/// (sled releases it a moment after the drop).
fn raw_open(dir: &Path) -> sled::Db {
    for _ in 0..200 {
        match sled::open(dir) {
            Ok(db) => return db,
            Err(sled::Error::Io(e)) if e.to_string().contains("could not acquire lock") => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(e) => panic!("cannot open {}: {e}", dir.display()),
        }
    }
    panic!("{} stays locked", dir.display());
}

fn set_version(dir: &Path, version: u32) {
    let db = raw_open(dir);
    db.open_tree("meta")
        .unwrap()
        .insert("format_version", &version.to_be_bytes()[..])
        .unwrap();
    db.flush().unwrap();
}

#[test]
fn other_format_version_is_refused_with_a_hint() {
    let dir = temp_dir();
    drop(SledStore::open(dir.path()).unwrap());
    set_version(dir.path(), 99);
    match SledStore::open(dir.path()) {
        Err(e @ StorageError::UnsupportedFormat { found: 99, .. }) => {
            assert!(e.to_string().contains("upgrade roost"), "{e}");
        }
        other => panic!("expected UnsupportedFormat, got {other:?}"),
    }
    // Refusing wiped nothing: the right version opens again.
    set_version(dir.path(), 1);
    SledStore::open(dir.path()).unwrap();
}

#[test]
fn records_without_a_version_are_refused() {
    let dir = temp_dir();
    {
        let db = raw_open(dir.path());
        db.open_tree("sessions").unwrap().insert("x", "y").unwrap();
        db.flush().unwrap();
    }
    let err = SledStore::open(dir.path()).unwrap_err();
    assert!(matches!(err, StorageError::Corrupt { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&dir.path().display().to_string()),
        "{err}"
    );
}

#[test]
fn a_file_in_place_of_the_directory_is_a_clear_error() {
    let dir = temp_dir();
    let path = dir.path().join("store");
    std::fs::write(&path, b"not a directory").unwrap();
    let err = SledStore::open(&path).unwrap_err();
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
    assert_eq!(std::fs::read(&path).unwrap(), b"not a directory");
}

/// sled reclaims the segments that deletes emptied, in the background, so
/// the directory stays bounded: 20 000 messages of 1 KiB (about 20 MiB
/// written) with at most 200 live at a time.
#[test]
fn disk_use_stays_bounded_under_churn() {
    let dir = temp_dir();
    let store = SledStore::open(dir.path()).unwrap();
    let started = Instant::now();
    // Four rounds of 25 batches of 200 messages of 1 KiB: 20 000 messages,
    // about 20 MiB written, at most 200 (200 KiB) live at any time.
    let mut sizes = Vec::new();
    for round in 0..4 {
        churn(&store, round * 25..(round + 1) * 25, 200, 1024);
        store.flush().unwrap();
        sizes.push(disk_usage(dir.path()));
    }
    eprintln!(
        "sled: bytes on disk after each 5 000 messages: {sizes:?} ({:?})",
        started.elapsed()
    );
    let last = sizes[3];
    // Bounded: far below the 20 MiB written...
    assert!(last < 12 << 20, "sled grew to {last} bytes");
    // ...and not growing with the amount written: the largest size of the
    // second half of the churn is within half again the first half's.
    let early = sizes[..2].iter().max().copied().unwrap_or(0);
    let late = sizes[2..].iter().max().copied().unwrap_or(0);
    assert!(late < early + early / 2, "sled keeps growing: {sizes:?}");
}

#[test]
fn a_directory_in_use_is_reported_after_waiting() {
    let dir = temp_dir();
    let _store = SledStore::open(dir.path()).unwrap();
    let err = SledStore::open(dir.path()).unwrap_err();
    assert!(matches!(err, StorageError::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("locked"), "{err}");
    // It names its backend, and carries sled's own error as its source.
    assert_eq!(err.backend(), "sled");
    assert!(err.to_string().starts_with("sled store: "), "{err}");
    assert!(std::error::Error::source(&err).is_some(), "{err:?}");
}

/// A full disk (a file size limit, for real) fails writes; once there is
/// room again, `recover` makes the store work again and nothing written
/// before is lost.
#[test]
fn sled_recovers_after_a_write_limit() {
    common::recovers_after_a_write_limit("sled_recovers_after_a_write_limit", 4194304, |dir| {
        SledStore::open(dir)
    });
}
