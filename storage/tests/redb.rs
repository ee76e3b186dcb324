//! The redb backend: the shared conformance and reopen suites, the format
//! version check, damaged files, and bounded disk use under churn.
#![cfg(feature = "redb")]

mod common;

use std::fs;
use std::path::Path;
use std::time::Instant;

use common::{churn, disk_usage, temp_dir, TempStore};
use redb::{Database, TableDefinition};
use roost_storage::{RedbStore, StorageError, Store};

mod redb_store {
    roost_storage::conformance_tests!(super::TempStore::new(|dir| roost_storage::RedbStore::open(
        dir
    )));
}

mod redb_reopen {
    roost_storage::reopen_tests!(super::temp_dir(), |dir: &std::path::Path| {
        roost_storage::RedbStore::open(dir)
    });
}

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

fn set_version(dir: &Path, version: u32) {
    let db = Database::create(dir.join(RedbStore::FILE_NAME)).unwrap();
    let txn = db.begin_write().unwrap();
    txn.open_table(META)
        .unwrap()
        .insert("format_version", &version.to_be_bytes()[..])
        .unwrap();
    txn.commit().unwrap();
}

#[test]
fn opens_roost_redb_in_a_new_directory() {
    let dir = temp_dir();
    let nested = dir.path().join("a/b");
    let store = RedbStore::open(&nested).unwrap();
    assert_eq!(store.path(), nested.join("roost.redb"));
    assert!(store.path().is_file());
    assert!(store.is_persistent());
}

#[test]
fn other_format_version_is_refused_with_a_hint() {
    let dir = temp_dir();
    drop(RedbStore::open(dir.path()).unwrap());
    set_version(dir.path(), 99);
    match RedbStore::open(dir.path()) {
        Err(e @ StorageError::UnsupportedFormat { found: 99, .. }) => {
            assert!(e.to_string().contains("upgrade roost"), "{e}");
        }
        other => panic!("expected UnsupportedFormat, got {other:?}"),
    }
    set_version(dir.path(), 0);
    match RedbStore::open(dir.path()) {
        Err(e @ StorageError::UnsupportedFormat { found: 0, .. }) => {
            assert!(
                e.to_string().contains("move the data directory aside"),
                "{e}"
            );
        }
        other => panic!("expected UnsupportedFormat, got {other:?}"),
    }
    // Refusing wiped nothing: the right version opens again.
    set_version(dir.path(), 1);
    RedbStore::open(dir.path()).unwrap();
}

/// A store written by format version 1 (before sessions recorded their
/// owner) opens, its sessions load with an unknown owner, and it is marked
/// as version 2 from then on.
#[test]
fn a_version_1_store_loads_and_is_marked_as_the_current_format() {
    let dir = temp_dir();
    drop(RedbStore::open(dir.path()).unwrap());
    set_version(dir.path(), 1);
    {
        const SESSIONS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("sessions");
        let db = Database::create(dir.path().join(RedbStore::FILE_NAME)).unwrap();
        let txn = db.begin_write().unwrap();
        // Session "c" as version 1 encoded it: level 5, expiry 60 s,
        // disconnected at 42, no will.
        txn.open_table(SESSIONS)
            .unwrap()
            .insert(
                &roost_storage::keys::session_key("c")[..],
                &[1, 1, b'c', 5, 60, 1, 42, 0][..],
            )
            .unwrap();
        txn.commit().unwrap();
    }
    let store = RedbStore::open(dir.path()).unwrap();
    let snapshot = store.load().unwrap();
    assert_eq!(snapshot.sessions.len(), 1);
    let session = &snapshot.sessions[0].session;
    assert_eq!(
        (session.client_id.as_str(), session.expiry_interval),
        ("c", 60)
    );
    assert_eq!(session.owner, roost_storage::SessionOwner::Unknown);
    drop(store);
    let db = Database::create(dir.path().join(RedbStore::FILE_NAME)).unwrap();
    let txn = db.begin_read().unwrap();
    let version = txn
        .open_table(META)
        .unwrap()
        .get("format_version")
        .unwrap()
        .unwrap()
        .value()
        .to_vec();
    assert_eq!(
        version,
        u32::from(roost_storage::encoding::FORMAT_VERSION).to_be_bytes()
    );
}

#[test]
fn garbage_file_is_a_clear_error_and_is_left_alone() {
    let dir = temp_dir();
    let file = dir.path().join(RedbStore::FILE_NAME);
    let garbage: Vec<u8> = (0..64 * 1024u32).map(|i| (i * 7 + 3) as u8).collect();
    fs::write(&file, &garbage).unwrap();
    let err = RedbStore::open(dir.path()).unwrap_err();
    assert!(matches!(err, StorageError::Corrupt { .. }), "{err:?}");
    assert!(err.to_string().contains("move the file aside"), "{err}");
    assert!(
        err.to_string().contains(&file.display().to_string()),
        "{err}"
    );
    assert_eq!(fs::read(&file).unwrap(), garbage, "the file was changed");
}

#[test]
fn truncated_file_is_an_error_not_a_panic() {
    let dir = temp_dir();
    {
        let store = RedbStore::open(dir.path()).unwrap();
        common::churn(&store, 0..2, 50, 100);
    }
    let file = dir.path().join(RedbStore::FILE_NAME);
    let bytes = fs::read(&file).unwrap();
    fs::write(&file, &bytes[..bytes.len().min(100)]).unwrap();
    let err = RedbStore::open(dir.path()).unwrap_err();
    assert!(matches!(err, StorageError::Corrupt { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&file.display().to_string()),
        "{err}"
    );
}

#[test]
fn the_file_is_locked_while_open() {
    let dir = temp_dir();
    let _store = RedbStore::open(dir.path()).unwrap();
    let err = RedbStore::open(dir.path()).unwrap_err();
    assert!(matches!(err, StorageError::Io { .. }), "{err:?}");
}

/// An error names its backend (in its text too) and carries redb's own
/// error as its source.
#[test]
fn errors_name_the_backend_and_carry_their_source() {
    use std::error::Error as _;
    let dir = temp_dir();
    let _store = RedbStore::open(dir.path()).unwrap();
    let err = RedbStore::open(dir.path()).unwrap_err();
    assert_eq!(err.backend(), "redb");
    assert!(err.to_string().starts_with("redb store: "), "{err}");
    let source = err.source().expect("the underlying error");
    assert!(err.to_string().contains(&source.to_string()), "{err}");
}

/// redb reuses the pages that deletes free, so the file stops growing once
/// it holds the working set: 20 000 messages of 1 KiB (about 20 MiB
/// written) with at most 200 live at a time. `compact` then shrinks it.
#[test]
fn disk_use_stays_bounded_under_churn() {
    let dir = temp_dir();
    let mut store = RedbStore::open(dir.path()).unwrap();
    let started = Instant::now();
    // Four rounds of 25 batches of 200 messages of 1 KiB: 20 000 messages,
    // about 20 MiB written, at most 200 (200 KiB) live at any time.
    let mut sizes = Vec::new();
    for round in 0..4 {
        churn(&store, round * 25..(round + 1) * 25, 200, 1024);
        sizes.push(disk_usage(dir.path()));
    }
    eprintln!(
        "redb: bytes on disk after each 5 000 messages: {sizes:?} ({:?})",
        started.elapsed()
    );
    let last = sizes[3];
    // Bounded: far below the 20 MiB written...
    assert!(last < 4 << 20, "redb grew to {last} bytes");
    // ...and not growing with the amount written: the largest size of the
    // second half of the churn is within half again the first half's.
    let early = sizes[..2].iter().max().copied().unwrap_or(0);
    let late = sizes[2..].iter().max().copied().unwrap_or(0);
    assert!(late < early + early / 2, "redb keeps growing: {sizes:?}");
    store.compact().unwrap();
    let compacted = disk_usage(dir.path());
    eprintln!("redb: {compacted} bytes after compact");
    assert!(compacted <= last);
}

/// A store with some of everything, closed cleanly; returns its file.
fn written_store(dir: &Path) -> std::path::PathBuf {
    let store = RedbStore::open(dir).unwrap();
    common::churn(&store, 0..3, 50, 100);
    store.path().to_path_buf()
}

/// `count` bytes of `bytes` flipped (inverted), at places a fixed xorshift
/// sequence picks: the same damage on every run.
fn flip(bytes: &mut [u8], count: usize, mut seed: u64) {
    for _ in 0..count {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let at = (seed % bytes.len() as u64) as usize;
        bytes[at] = !bytes[at];
    }
}

/// Opens the damaged `file` and checks the refusal: `Corrupt`, naming the
/// file and what to do, and not a byte of the file changed.
fn assert_refused_untouched(dir: &Path, file: &Path, damaged: &[u8]) {
    fs::write(file, damaged).unwrap();
    let err = RedbStore::open(dir).unwrap_err();
    assert!(matches!(err, StorageError::Corrupt { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains(&file.display().to_string()), "{text}");
    assert!(text.contains("move the file aside"), "{text}");
    assert!(text.contains("roost wrote nothing to it"), "{text}");
    assert!(
        fs::read(file).unwrap() == damaged,
        "the failed open wrote to the file"
    );
}

/// A store file cut to half its length: redb asserts on it when it opens
/// it; that is an error naming the file, and the file is left as it is.
#[test]
fn file_cut_to_half_is_refused_untouched() {
    let dir = temp_dir();
    let file = written_store(dir.path());
    let bytes = fs::read(&file).unwrap();
    assert_refused_untouched(dir.path(), &file, &bytes[..bytes.len() / 2]);
}

/// 200 flipped bytes: redb used to open the file (writing its header) and
/// panic while reading it; now the checksums refuse it before any write.
#[test]
fn file_with_flipped_bytes_is_refused_untouched() {
    let dir = temp_dir();
    let file = written_store(dir.path());
    let original = fs::read(&file).unwrap();
    for seed in [1, 2, 3] {
        let mut bytes = original.clone();
        flip(&mut bytes, 200, seed);
        assert_refused_untouched(dir.path(), &file, &bytes);
    }
}

/// The check before opening does not refuse what a crash leaves: a copy of
/// the file taken while the store is open (as after `kill -9`, which skips
/// the clean close) opens, after redb's recovery, with everything in it.
#[test]
fn file_left_by_a_crash_still_opens() {
    let dir = temp_dir();
    let crashed = temp_dir();
    let expected = {
        let store = RedbStore::open(dir.path()).unwrap();
        common::churn(&store, 0..3, 50, 100);
        fs::copy(store.path(), crashed.path().join(RedbStore::FILE_NAME)).unwrap();
        store.load().unwrap()
    };
    let store = RedbStore::open(crashed.path()).unwrap();
    assert_eq!(store.load().unwrap(), expected);
}

/// A full disk (a file size limit, for real) fails writes; once there is
/// room again, `recover` makes the store work again and nothing written
/// before is lost.
#[test]
fn redb_recovers_after_a_write_limit() {
    common::recovers_after_a_write_limit("redb_recovers_after_a_write_limit", 4194304, |dir| {
        RedbStore::open(dir)
    });
}
