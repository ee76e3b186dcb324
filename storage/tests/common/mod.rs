//! Helpers shared by the persistent backends' tests.

#![allow(dead_code)] // Each test crate uses a part of this module.

use std::fs;
use std::path::Path;

use roost_storage::{
    MessageId, MessageRecord, Op, OutboundRecord, Record, Snapshot, StorageError, Store,
};
use tempfile::TempDir;

/// A store that owns the temporary directory it lives in (dropped after the
/// store, so the directory outlives every file handle).
pub(crate) struct TempStore<S> {
    pub store: S,
    pub dir: TempDir,
}

impl<S: Store> TempStore<S> {
    /// Opens a store with `open` in a fresh temporary directory.
    pub(crate) fn new(open: impl FnOnce(&Path) -> Result<S, StorageError>) -> Self {
        let dir = temp_dir();
        let store = open(dir.path()).expect("open a store in a fresh directory");
        Self { store, dir }
    }
}

impl<S: Store> Store for TempStore<S> {
    fn apply(&self, ops: &[Op]) -> Result<(), StorageError> {
        self.store.apply(ops)
    }

    fn load(&self) -> Result<Snapshot, StorageError> {
        self.store.load()
    }

    fn is_persistent(&self) -> bool {
        self.store.is_persistent()
    }

    fn flush(&self) -> Result<(), StorageError> {
        self.store.flush()
    }

    fn recover(&self) -> Result<(), StorageError> {
        self.store.recover()
    }

    // Forwarded, so that the suite checks the backend's own reads rather
    // than the trait's defaults.
    fn outbound_page(
        &self,
        client_id: &str,
        after_seq: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, OutboundRecord)>, StorageError> {
        self.store.outbound_page(client_id, after_seq, limit)
    }

    fn messages(&self, ids: &[MessageId]) -> Result<Vec<Option<MessageRecord>>, StorageError> {
        self.store.messages(ids)
    }

    fn retained(&self, topic: &str) -> Result<Option<MessageRecord>, StorageError> {
        self.store.retained(topic)
    }

    fn retained_many(&self, topics: &[&str]) -> Result<Vec<Option<MessageRecord>>, StorageError> {
        self.store.retained_many(topics)
    }

    fn scan(
        &self,
        visit: &mut dyn FnMut(Record) -> Result<(), StorageError>,
    ) -> Result<(), StorageError> {
        self.store.scan(visit)
    }
}

/// A fresh temporary directory, removed when dropped.
pub(crate) fn temp_dir() -> TempDir {
    tempfile::Builder::new()
        .prefix("roost-storage-test-")
        .tempdir()
        .expect("create a temporary directory")
}

/// Total size of the files under `path`, in bytes.
pub(crate) fn disk_usage(path: &Path) -> u64 {
    let meta = fs::metadata(path).expect("stat");
    if !meta.is_dir() {
        return meta.len();
    }
    fs::read_dir(path)
        .expect("read dir")
        .map(|entry| disk_usage(&entry.expect("dir entry").path()))
        .sum()
}

/// Batches number `batches` (a range, so churn can go on where it
/// stopped), each storing `per_batch` messages of `payload` bytes with a
/// session's outbound entries referencing them, and deleting those of the
/// batch before: the broker's steady state of messages in, messages acked.
pub(crate) fn churn(
    store: &dyn Store,
    batches: std::ops::Range<u64>,
    per_batch: u64,
    payload: usize,
) {
    use roost_storage::{
        MessageProperties, MessageRecord, OutboundRecord, OutboundState, SessionRecord,
    };

    store
        .apply(&[Op::PutSession(SessionRecord {
            client_id: "churn".into(),
            protocol_level: 5,
            expiry_interval: u32::MAX,
            disconnected_at_ms: None,
            will: None,
            owner: roost_storage::SessionOwner::Anonymous,
        })])
        .expect("put session");
    let body = bytes::Bytes::from(vec![0x5a; payload]);
    for batch in batches.clone() {
        let mut ops = Vec::new();
        for i in 0..per_batch {
            let id = batch * per_batch + i;
            ops.push(Op::PutMessage {
                id,
                message: MessageRecord {
                    topic: format!("churn/{}", id % 7),
                    payload: body.clone(),
                    qos: 1,
                    retain: false,
                    properties: MessageProperties::default(),
                    expires_at_ms: None,
                },
            });
            ops.push(Op::PutOutbound {
                client_id: "churn".into(),
                seq: id,
                entry: OutboundRecord {
                    message_id: id,
                    qos: 1,
                    retain: false,
                    packet_id: None,
                    state: OutboundState::Queued,
                    subscription_identifiers: Vec::new(),
                    message: None,
                    stream_seq: 0,
                },
            });
            if let Some(old) = id.checked_sub(per_batch) {
                ops.push(Op::DeleteOutbound {
                    client_id: "churn".into(),
                    seq: old,
                });
                ops.push(Op::DeleteMessage { id: old });
            }
        }
        store.apply(&ops).expect("churn batch");
    }
    let snapshot = store.load().expect("load");
    if !batches.is_empty() {
        assert_eq!(snapshot.messages.len() as u64, per_batch);
    }
}

/// Where the child of [`recovers_after_a_write_limit`] keeps its store.
const CHILD_DIR: &str = "ROOST_STORAGE_WRITE_LIMIT_DIR";

/// A full disk, for real: writes past a file size limit fail with EFBIG as
/// they would with ENOSPC. The test runs itself again (`test`, its name in
/// this test binary) in a child process under `prlimit --fsize=limit`
/// (util-linux), with SIGXFSZ ignored so a write past the limit fails
/// instead of killing the process. The child writes batches of messages
/// until one fails, checks that the store keeps failing, raises its own
/// limit (`prlimit --pid`), and then checks that [`Store::recover`] makes
/// the store work again with every batch written before the failure there
/// and none of the failed one, before and after reopening.
pub(crate) fn recovers_after_a_write_limit<S: Store>(
    test: &str,
    limit: u64,
    open: impl Fn(&Path) -> Result<S, StorageError>,
) {
    use std::process::Command;
    let Some(dir) = std::env::var_os(CHILD_DIR) else {
        let dir = temp_dir();
        let status = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "trap '' XFSZ; exec prlimit --fsize={limit}:unlimited \"$0\" \"$@\""
            ))
            .arg(std::env::current_exe().expect("the test binary"))
            .args(["--exact", test, "--nocapture", "--test-threads=1"])
            .env(CHILD_DIR, dir.path())
            .status()
            .expect("run sh (and prlimit, from util-linux)");
        assert!(status.success(), "the child test failed: {status}");
        return;
    };
    let dir = Path::new(&dir);
    let store = open(dir).expect("open under the limit");
    let mut written = Vec::new();
    let mut failure = None;
    for id in 1..=10_000u64 {
        match store.apply(&[message(id, 16 << 10)]) {
            Ok(()) => written.push(id),
            Err(e) => {
                failure = Some((id, e));
                break;
            }
        }
    }
    let (failed, error) = failure.expect("a write past the limit fails");
    eprintln!(
        "write {failed} failed after {} written: {error}",
        written.len()
    );
    assert!(!written.is_empty(), "the limit left room for some writes");
    assert!(
        matches!(error, StorageError::Io { .. }),
        "a full disk is an I/O error: {error:?}"
    );
    // Still no room: writing again fails, and so may recovering.
    assert!(store.apply(&[message(failed, 16 << 10)]).is_err());
    let _ = store.recover();

    let raised = Command::new("prlimit")
        .args([
            "--pid",
            &std::process::id().to_string(),
            "--fsize=unlimited",
        ])
        .status()
        .expect("run prlimit");
    assert!(raised.success());
    // A handle dropped by a failed reopen may hold its lock a moment.
    let mut recovered = store.recover();
    for _ in 0..50 {
        if recovered.is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        recovered = store.recover();
    }
    if let Err(e) = recovered {
        panic!("recover once there is room: {e}");
    }
    let next = failed + 1;
    store
        .apply(&[message(next, 16 << 10)])
        .expect("a write after recovering");
    written.push(next);
    let ids = |s: Snapshot| s.messages.iter().map(|(id, _)| *id).collect::<Vec<_>>();
    assert_eq!(ids(store.load().expect("load")), written);
    drop(store);
    let mut reopened = open(dir);
    for _ in 0..50 {
        if reopened.is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        reopened = open(dir);
    }
    let reopened = reopened.expect("reopen");
    assert_eq!(ids(reopened.load().expect("load")), written);
}

/// A message body of `size` bytes under `id`.
fn message(id: MessageId, size: usize) -> Op {
    Op::PutMessage {
        id,
        message: MessageRecord {
            topic: format!("limit/{id}"),
            payload: bytes::Bytes::from(vec![0xa5; size]),
            qos: 1,
            retain: false,
            properties: Default::default(),
            expires_at_ms: None,
        },
    }
}
