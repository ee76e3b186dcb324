//! A wrapper backend that fails chosen writes and reads, for tests.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::{MessageId, MessageRecord, Op, OutboundRecord, Record, Snapshot, StorageError, Store};

/// Wraps any [`Store`] and makes chosen calls to [`Store::apply`] fail with
/// [`StorageError::Injected`].
///
/// A failed call applies nothing to the inner store (the batch is dropped
/// before it reaches it), exactly like a backend whose atomic write failed.
/// The broker's tests use it to prove that a write that failed is never
/// acknowledged: for example, make the next `apply` fail, publish at QoS 1,
/// and check that no PUBACK arrives and that nothing was stored.
///
/// Faults are set through a [`FaultHandle`] (from [`FaultyStore::handle`]),
/// which a test keeps after handing the store to the broker. Calls to `apply`
/// are numbered from 1 since the store was created; a call fails if any of
/// these holds:
///
/// - its number was chosen with [`FaultHandle::fail_call`] (one shot),
/// - its number is at or past [`FaultHandle::fail_from_call`],
/// - the switch [`FaultHandle::set_failing`] is on.
///
/// The reads ([`Store::outbound_page`], [`Store::messages`],
/// [`Store::retained`], [`Store::retained_many`] and [`Store::scan`]) are
/// counted together ([`FaultHandle::read_calls`]) and fail while
/// [`FaultHandle::set_read_failing`] is on, or from the call chosen with
/// [`FaultHandle::fail_reads_from_call`]: a failed read returns nothing and
/// changes nothing (a failed scan calls its visitor not once). A scan can
/// also fail part way, after passing some records
/// ([`FaultHandle::fail_scans_after`]), as a disk error in the middle of a
/// store would. `load` has its own counter and switch.
///
/// ```
/// use roost_storage::{FaultyStore, MemoryStore, Op, StorageError, Store};
///
/// let store = FaultyStore::new(MemoryStore::new());
/// let faults = store.handle();
/// faults.fail_next();
/// let op = Op::DeleteRetained { topic: "t".into() };
/// assert!(matches!(store.apply(&[op.clone()]), Err(StorageError::Injected { .. })));
/// assert!(store.apply(&[op]).is_ok());
/// assert_eq!((faults.apply_calls(), faults.failed_applies()), (2, 1));
/// ```
#[derive(Debug)]
pub struct FaultyStore<S: Store> {
    inner: S,
    faults: FaultHandle,
}

/// Controls and counters of a [`FaultyStore`]; cheap to clone, and every
/// clone controls the same store. All methods may be called from any thread
/// while the store is in use.
#[derive(Debug, Clone, Default)]
pub struct FaultHandle {
    state: Arc<FaultState>,
}

#[derive(Debug, Default)]
struct FaultState {
    /// Calls to `apply` so far (failed ones included).
    apply_calls: AtomicU64,
    /// Calls to `apply` that were made to fail.
    failed_applies: AtomicU64,
    /// Ops handed to the inner store by calls that were not made to fail.
    ops_forwarded: AtomicU64,
    /// Calls to `load` so far.
    load_calls: AtomicU64,
    /// Calls to `recover` so far.
    recover_calls: AtomicU64,
    /// Number of the one call to fail; 0 means none (calls count from 1).
    fail_at: AtomicU64,
    /// Number of the first of all calls to fail; 0 means none.
    fail_from: AtomicU64,
    /// Fail every `apply` while set.
    failing: AtomicBool,
    /// Fail every `load` while set.
    load_failing: AtomicBool,
    /// Calls to the reads (`outbound_page`, `messages`, `retained`,
    /// `retained_many`, `scan`) so far.
    read_calls: AtomicU64,
    /// Number of the first read call to fail; 0 means none.
    read_fail_from: AtomicU64,
    /// Fail every read while set.
    read_failing: AtomicBool,
    /// Records a scan passes before it fails; `None` means it does not.
    scan_fails_after: Mutex<Option<u64>>,
}

impl<S: Store> FaultyStore<S> {
    /// Wraps `inner`, with no faults set.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            faults: FaultHandle::default(),
        }
    }

    /// A handle to set faults and read counters, usable after the store has
    /// been moved elsewhere.
    pub fn handle(&self) -> FaultHandle {
        self.faults.clone()
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// Unwraps the store.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl FaultHandle {
    /// Makes the `n`th call to `apply` (counting from 1 since the store was
    /// created) fail; replaces an earlier choice. A call number already past
    /// never fails; `n == 0` clears the choice.
    pub fn fail_call(&self, n: u64) {
        self.state.fail_at.store(n, Ordering::SeqCst);
    }

    /// Makes the next call to `apply` fail (once).
    pub fn fail_next(&self) {
        self.fail_after(0);
    }

    /// Lets `k` more calls to `apply` through, then makes the one after them
    /// fail (once).
    pub fn fail_after(&self, k: u64) {
        let next = self.apply_calls().saturating_add(1);
        self.fail_call(next.saturating_add(k));
    }

    /// Makes the `n`th call to `apply` and every later one fail; `n == 0`
    /// clears it.
    pub fn fail_from_call(&self, n: u64) {
        self.state.fail_from.store(n, Ordering::SeqCst);
    }

    /// Turns failing of every `apply` on or off.
    pub fn set_failing(&self, failing: bool) {
        self.state.failing.store(failing, Ordering::SeqCst);
    }

    /// True while every `apply` fails because of [`set_failing`](Self::set_failing).
    pub fn is_failing(&self) -> bool {
        self.state.failing.load(Ordering::SeqCst)
    }

    /// Turns failing of every `load` on or off.
    pub fn set_load_failing(&self, failing: bool) {
        self.state.load_failing.store(failing, Ordering::SeqCst);
    }

    /// Turns failing of every read (`outbound_page`, `messages`,
    /// `retained`, `retained_many`, `scan`) on or off.
    pub fn set_read_failing(&self, failing: bool) {
        self.state.read_failing.store(failing, Ordering::SeqCst);
    }

    /// Makes the `n`th read call (counting from 1 since the store was
    /// created, all the reads together) and every later one fail; `n == 0`
    /// clears it.
    pub fn fail_reads_from_call(&self, n: u64) {
        self.state.read_fail_from.store(n, Ordering::SeqCst);
    }

    /// Makes every scan pass `records` records (fewer if the store holds
    /// fewer) and then fail, instead of passing the next one; `None` clears
    /// it. `Some(0)` fails a scan before its first record.
    pub fn fail_scans_after(&self, records: Option<u64>) {
        *self.scan_fails_after() = records;
    }

    fn scan_fails_after(&self) -> MutexGuard<'_, Option<u64>> {
        // Only an `Option<u64>` is kept under it: poison changes nothing.
        self.state
            .scan_fails_after
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Removes every fault; counters are kept.
    pub fn clear(&self) {
        self.fail_scans_after(None);
        self.fail_call(0);
        self.fail_from_call(0);
        self.set_failing(false);
        self.set_load_failing(false);
        self.set_read_failing(false);
        self.fail_reads_from_call(0);
    }

    /// Calls to `apply` so far, failed ones included.
    pub fn apply_calls(&self) -> u64 {
        self.state.apply_calls.load(Ordering::SeqCst)
    }

    /// Calls to `apply` that were made to fail.
    pub fn failed_applies(&self) -> u64 {
        self.state.failed_applies.load(Ordering::SeqCst)
    }

    /// Ops passed on to the inner store (by calls not made to fail; the
    /// inner store may still have rejected them).
    pub fn ops_forwarded(&self) -> u64 {
        self.state.ops_forwarded.load(Ordering::SeqCst)
    }

    /// Calls to `load` so far, failed ones included.
    pub fn load_calls(&self) -> u64 {
        self.state.load_calls.load(Ordering::SeqCst)
    }

    /// Calls to `recover` so far.
    pub fn recover_calls(&self) -> u64 {
        self.state.recover_calls.load(Ordering::SeqCst)
    }

    /// Calls to the reads (`outbound_page`, `messages`, `retained`,
    /// `retained_many`, `scan`) so far, failed ones included.
    pub fn read_calls(&self) -> u64 {
        self.state.read_calls.load(Ordering::SeqCst)
    }

    /// Counts a read call and fails it if a fault says so.
    fn admit_read(&self, what: &str) -> Result<(), StorageError> {
        let s = &self.state;
        let n = s
            .read_calls
            .fetch_add(1, Ordering::SeqCst)
            .saturating_add(1);
        let from = s.read_fail_from.load(Ordering::SeqCst);
        if s.read_failing.load(Ordering::SeqCst) || (from != 0 && n >= from) {
            return Err(StorageError::Injected {
                message: format!("read call #{n} ({what}) failed on purpose"),
            });
        }
        Ok(())
    }

    /// Counts a call to `apply` and decides whether it fails; `Err` carries
    /// the call's number.
    fn admit_apply(&self) -> Result<(), u64> {
        let s = &self.state;
        // Each concurrent call gets its own number.
        let n = s
            .apply_calls
            .fetch_add(1, Ordering::SeqCst)
            .saturating_add(1);
        let fail_from = s.fail_from.load(Ordering::SeqCst);
        let fail = s.failing.load(Ordering::SeqCst)
            || s.fail_at.load(Ordering::SeqCst) == n
            || (fail_from != 0 && n >= fail_from);
        if fail {
            s.failed_applies.fetch_add(1, Ordering::SeqCst);
            Err(n)
        } else {
            Ok(())
        }
    }
}

impl<S: Store> Store for FaultyStore<S> {
    fn apply(&self, ops: &[Op]) -> Result<(), StorageError> {
        if let Err(n) = self.faults.admit_apply() {
            return Err(StorageError::Injected {
                message: format!(
                    "apply call #{n} ({} ops) failed on purpose; nothing was applied",
                    ops.len()
                ),
            });
        }
        let ops_len = u64::try_from(ops.len()).unwrap_or(u64::MAX);
        self.faults
            .state
            .ops_forwarded
            .fetch_add(ops_len, Ordering::SeqCst);
        self.inner.apply(ops)
    }

    fn load(&self) -> Result<Snapshot, StorageError> {
        let s = &self.faults.state;
        let n = s
            .load_calls
            .fetch_add(1, Ordering::SeqCst)
            .saturating_add(1);
        if s.load_failing.load(Ordering::SeqCst) {
            return Err(StorageError::Injected {
                message: format!("load call #{n} failed on purpose"),
            });
        }
        self.inner.load()
    }

    fn is_persistent(&self) -> bool {
        self.inner.is_persistent()
    }

    fn flush(&self) -> Result<(), StorageError> {
        self.inner.flush()
    }

    /// Counted ([`FaultHandle::recover_calls`]) and passed on: a fault set
    /// on this wrapper lasts until the test clears it, as a full disk lasts
    /// until space returns.
    fn recover(&self) -> Result<(), StorageError> {
        self.faults
            .state
            .recover_calls
            .fetch_add(1, Ordering::SeqCst);
        self.inner.recover()
    }

    fn outbound_page(
        &self,
        client_id: &str,
        after_seq: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, OutboundRecord)>, StorageError> {
        self.faults.admit_read("outbound_page")?;
        self.inner.outbound_page(client_id, after_seq, limit)
    }

    fn messages(&self, ids: &[MessageId]) -> Result<Vec<Option<MessageRecord>>, StorageError> {
        self.faults.admit_read("messages")?;
        self.inner.messages(ids)
    }

    fn retained(&self, topic: &str) -> Result<Option<MessageRecord>, StorageError> {
        self.faults.admit_read("retained")?;
        self.inner.retained(topic)
    }

    fn retained_many(&self, topics: &[&str]) -> Result<Vec<Option<MessageRecord>>, StorageError> {
        self.faults.admit_read("retained_many")?;
        self.inner.retained_many(topics)
    }

    fn scan(
        &self,
        visit: &mut dyn FnMut(Record) -> Result<(), StorageError>,
    ) -> Result<(), StorageError> {
        self.faults.admit_read("scan")?;
        let Some(limit) = *self.faults.scan_fails_after() else {
            return self.inner.scan(visit);
        };
        let mut passed = 0;
        self.inner.scan(&mut |record| {
            if passed == limit {
                return Err(StorageError::Injected {
                    message: format!("scan failed on purpose after {passed} records"),
                });
            }
            passed += 1;
            visit(record)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::thread;

    use super::*;
    use crate::{MemoryStore, SessionRecord};

    fn put(id: &str) -> Op {
        Op::PutSession(SessionRecord {
            client_id: id.into(),
            protocol_level: 4,
            expiry_interval: 0,
            disconnected_at_ms: None,
            will: None,
            owner: crate::SessionOwner::Anonymous,
        })
    }

    fn ids(store: &impl Store) -> Vec<String> {
        store
            .load()
            .unwrap()
            .sessions
            .into_iter()
            .map(|s| s.session.client_id)
            .collect()
    }

    #[test]
    fn no_faults_passes_everything_through() {
        let store = FaultyStore::new(MemoryStore::new());
        let h = store.handle();
        store.apply(&[put("a"), put("b")]).unwrap();
        store.apply(&[]).unwrap();
        assert_eq!(ids(&store), ["a", "b"]);
        assert_eq!(h.apply_calls(), 2);
        assert_eq!(h.failed_applies(), 0);
        assert_eq!(h.ops_forwarded(), 2);
        assert_eq!(h.load_calls(), 1);
        assert!(!store.is_persistent());
        store.flush().unwrap();
    }

    #[test]
    fn nth_call_fails_once_and_applies_nothing() {
        let store = FaultyStore::new(MemoryStore::new());
        let h = store.handle();
        h.fail_call(2);
        store.apply(&[put("a")]).unwrap();
        let err = store.apply(&[put("b"), put("c")]).unwrap_err();
        assert!(matches!(err, StorageError::Injected { .. }));
        assert!(err.to_string().contains("#2"), "{err}");
        store.apply(&[put("d")]).unwrap();
        assert_eq!(ids(store.inner()), ["a", "d"]);
        assert_eq!((h.apply_calls(), h.failed_applies()), (3, 1));
        assert_eq!(h.ops_forwarded(), 2);
    }

    #[test]
    fn fail_after_counts_from_now() {
        let store = FaultyStore::new(MemoryStore::new());
        let h = store.handle();
        store.apply(&[put("a")]).unwrap();
        h.fail_after(1);
        store.apply(&[put("b")]).unwrap();
        assert!(store.apply(&[put("c")]).is_err());
        store.apply(&[put("d")]).unwrap();
        assert_eq!(ids(&store), ["a", "b", "d"]);
    }

    #[test]
    fn every_call_from_n_fails_until_cleared() {
        let store = FaultyStore::new(MemoryStore::new());
        let h = store.handle();
        h.fail_from_call(2);
        store.apply(&[put("a")]).unwrap();
        for id in ["b", "c", "d"] {
            assert!(store.apply(&[put(id)]).is_err());
        }
        h.clear();
        store.apply(&[put("e")]).unwrap();
        assert_eq!(ids(&store), ["a", "e"]);
        assert_eq!(h.failed_applies(), 3);
    }

    #[test]
    fn switch_toggles_at_run_time_from_another_thread() {
        let store = Arc::new(FaultyStore::new(MemoryStore::new()));
        let h = store.handle();
        thread::spawn({
            let h = h.clone();
            move || h.set_failing(true)
        })
        .join()
        .unwrap();
        assert!(h.is_failing());
        assert!(store.apply(&[put("a")]).is_err());
        h.set_failing(false);
        store.apply(&[put("b")]).unwrap();
        assert_eq!(ids(&store), ["b"]);
    }

    #[test]
    fn load_can_fail() {
        let store = FaultyStore::new(MemoryStore::new());
        let h = store.handle();
        h.set_load_failing(true);
        assert!(matches!(store.load(), Err(StorageError::Injected { .. })));
        h.clear();
        assert!(store.load().is_ok());
        assert_eq!(h.load_calls(), 2);
    }

    #[test]
    fn reads_are_counted_and_can_fail() {
        let store = FaultyStore::new(MemoryStore::new());
        let h = store.handle();
        store
            .apply(&[Op::PutRetained {
                message: crate::MessageRecord {
                    topic: "t".into(),
                    payload: bytes::Bytes::from_static(b"x"),
                    qos: 0,
                    retain: true,
                    properties: Default::default(),
                    expires_at_ms: None,
                },
            }])
            .unwrap();
        assert!(store.retained("t").unwrap().is_some());
        h.set_read_failing(true);
        for result in [
            store.outbound_page("c", None, 10).map(drop),
            store.messages(&[1]).map(drop),
            store.retained("t").map(drop),
        ] {
            assert!(matches!(result, Err(StorageError::Injected { .. })));
        }
        h.clear();
        h.fail_reads_from_call(6);
        assert!(store.messages(&[1]).unwrap()[0].is_none());
        let err = store.retained("t").unwrap_err();
        assert!(err.to_string().contains("#6 (retained)"), "{err}");
        h.clear();
        assert!(store.retained("t").unwrap().is_some());
        assert_eq!(h.read_calls(), 7);
        // Reads are not writes: the apply counters did not move.
        assert_eq!((h.apply_calls(), h.failed_applies()), (1, 0));
    }

    #[test]
    fn scans_and_retained_many_are_reads_and_a_scan_can_fail_part_way() {
        let store = FaultyStore::new(MemoryStore::new());
        let h = store.handle();
        store.apply(&[put("a"), put("b"), put("c")]).unwrap();
        let scanned = |store: &FaultyStore<MemoryStore>| {
            let mut seen = Vec::new();
            let result = store.scan(&mut |record| {
                seen.push(record.client_id().unwrap_or_default().to_owned());
                Ok(())
            });
            (result, seen)
        };
        assert_eq!(scanned(&store).1, ["a", "b", "c"]);
        assert!(store.retained_many(&["t", "u"]).unwrap() == [None, None]);

        h.set_read_failing(true);
        let (result, seen) = scanned(&store);
        assert!(matches!(result, Err(StorageError::Injected { .. })));
        assert!(seen.is_empty(), "a failed scan visited {seen:?}");
        let err = store.retained_many(&["t"]).unwrap_err();
        assert!(err.to_string().contains("(retained_many)"), "{err}");

        h.clear();
        h.fail_scans_after(Some(2));
        let (result, seen) = scanned(&store);
        let err = result.unwrap_err();
        assert!(matches!(err, StorageError::Injected { .. }), "{err:?}");
        assert!(err.to_string().contains("after 2 records"), "{err}");
        assert_eq!(seen, ["a", "b"]);
        // Past the store's end: the scan completes.
        h.fail_scans_after(Some(3));
        let (result, seen) = scanned(&store);
        assert!(result.is_ok());
        assert_eq!(seen, ["a", "b", "c"]);
        h.fail_scans_after(Some(0));
        assert!(scanned(&store).1.is_empty());
        h.clear();
        assert_eq!(scanned(&store).1.len(), 3);
        assert_eq!(h.read_calls(), 8);
        assert_eq!(h.load_calls(), 0);
    }

    #[test]
    fn concurrent_calls_get_distinct_numbers() {
        let store = Arc::new(FaultyStore::new(MemoryStore::new()));
        let h = store.handle();
        h.fail_call(50);
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let store = Arc::clone(&store);
                thread::spawn(move || {
                    (0..25)
                        .filter(|i| store.apply(&[put(&format!("{t}-{i}"))]).is_err())
                        .count()
                })
            })
            .collect();
        let failures: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(failures, 1);
        assert_eq!(h.apply_calls(), 100);
        assert_eq!(ids(&store).len(), 99);
    }

    #[test]
    fn inner_errors_pass_through() {
        let store = FaultyStore::new(MemoryStore::new());
        let err = store.apply(&[put("bad\0id")]).unwrap_err();
        assert!(matches!(err, StorageError::InvalidOp { .. }));
        assert_eq!(store.handle().failed_applies(), 0);
    }
}
