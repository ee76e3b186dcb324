//! The page reader: reads the spilled tails of session queues back from
//! the store for the core (see `broker::spill`), off the core's thread.
//!
//! A page is read only once the commit holding the entries it should find
//! has been released by the commit task: before that, the store may not
//! have them yet, and a short page would look like the end of the queue.

use crate::broker::{CommitProgress, Page, PageEntry, PageRequest};
use roost_storage::{StorageError, Store};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// How often a read waiting for its commit looks again. Reads are rare
/// (one per page of a queue) and a commit takes about a millisecond, so
/// polling costs less than a wake-up on every commit.
const POLL: Duration = Duration::from_millis(1);

/// Reads pages as the core asks for them, in order, until the core stops
/// asking (its sender is dropped) or stops listening.
pub(super) async fn run(
    mut requests: mpsc::UnboundedReceiver<PageRequest>,
    pages: mpsc::UnboundedSender<Page>,
    store: Arc<dyn Store>,
    progress: Arc<CommitProgress>,
) {
    while let Some(request) = requests.recv().await {
        while progress.done.load(Relaxed) < request.after_commit {
            tokio::time::sleep(POLL).await;
        }
        let store = store.clone();
        let page = tokio::task::spawn_blocking(move || read(store.as_ref(), request))
            .await
            .expect("reading a page does not panic");
        if pages.send(page).is_err() {
            return;
        }
    }
}

/// Reads one page: the entries, then the bodies of those stored apart.
pub(crate) fn read(store: &dyn Store, request: PageRequest) -> Page {
    let entries = read_entries(store, &request);
    Page { request, entries }
}

fn read_entries(store: &dyn Store, r: &PageRequest) -> Result<Vec<PageEntry>, StorageError> {
    // A backend that panics fails this read, like one that errs.
    let page = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        store.outbound_page(r.client_id.as_str(), Some(r.after_seq), r.limit)
    }))
    .unwrap_or_else(|_| Err(StorageError::io("", "the storage backend panicked")))?;
    let apart: Vec<u64> = page
        .iter()
        .filter(|(_, e)| e.message.is_none() && e.message_id != 0)
        .map(|(_, e)| e.message_id)
        .collect();
    let mut bodies = if apart.is_empty() {
        Vec::new()
    } else {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| store.messages(&apart)))
            .unwrap_or_else(|_| Err(StorageError::io("", "the storage backend panicked")))?
    }
    .into_iter();
    Ok(page
        .into_iter()
        .map(|(seq, entry)| {
            let body = if entry.message.is_none() && entry.message_id != 0 {
                bodies.next().flatten()
            } else {
                None
            };
            PageEntry { seq, entry, body }
        })
        .collect())
}
