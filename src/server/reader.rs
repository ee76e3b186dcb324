//! The page reader: reads the spilled tails of session queues (see
//! `broker::spill`) and the retained messages new subscriptions match (see
//! `broker::retained`) back from the store for the core, off the core's
//! thread.
//!
//! A page is read only once the commit holding the entries it should find
//! has been released by the commit task: before that, the store may not
//! have them yet, and a short page would look like the end of the queue.

use crate::broker::{CommitProgress, Page, PageEntry, PageRequest, RetainedPage, RetainedRead};
use roost_storage::{MessageRecord, StorageError, Store};
use std::sync::Arc;
use tokio::sync::mpsc;

/// A read the core asks for.
#[derive(Debug)]
pub(super) enum Request {
    Queue(PageRequest),
    Retained(RetainedRead),
}

/// What a read brought back.
#[derive(Debug)]
pub(super) enum Answer {
    Queue(Page),
    Retained(RetainedPage),
}

/// Reads pages as the core asks for them, in order, until the core stops
/// asking (its sender is dropped) or stops listening.
pub(super) async fn run(
    mut requests: mpsc::UnboundedReceiver<Request>,
    pages: mpsc::UnboundedSender<Answer>,
    store: Arc<dyn Store>,
    progress: Arc<CommitProgress>,
) {
    while let Some(request) = requests.recv().await {
        let after_commit = match &request {
            Request::Queue(r) => r.after_commit,
            Request::Retained(r) => r.after_commit,
        };
        progress.reached(after_commit).await;
        let store = store.clone();
        let answer = tokio::task::spawn_blocking(move || match request {
            Request::Queue(r) => Answer::Queue(read(store.as_ref(), r)),
            Request::Retained(r) => {
                let records = read_retained(store.as_ref(), &r.topics);
                Answer::Retained(RetainedPage {
                    request: r,
                    records,
                })
            }
        })
        .await
        .expect("reading a page does not panic");
        if pages.send(answer).is_err() {
            return;
        }
    }
}

/// The retained messages of `topics`, in order (`None`: not retained).
/// One function for the batch, so that a batch read of the store is a
/// change here only.
pub(crate) fn read_retained(
    store: &dyn Store,
    topics: &[String],
) -> Result<Vec<Option<MessageRecord>>, StorageError> {
    let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
    // One read transaction for the page, where the backend has them.
    guarded(|| store.retained_many(&topics))
}

/// Calls the store: a backend that panics fails the call, like one that
/// errs (nothing of ours is left half-changed: the store only reads what it
/// is given, and its own state is its business).
pub(super) fn guarded<T>(
    call: impl FnOnce() -> Result<T, StorageError>,
) -> Result<T, StorageError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(call))
        .unwrap_or_else(|_| Err(StorageError::io("", "the storage backend panicked")))
}

/// Reads one page: the entries, then the bodies of those stored apart.
pub(crate) fn read(store: &dyn Store, request: PageRequest) -> Page {
    let entries = read_entries(store, &request);
    Page { request, entries }
}

fn read_entries(store: &dyn Store, r: &PageRequest) -> Result<Vec<PageEntry>, StorageError> {
    let page = guarded(|| store.outbound_page(r.client_id.as_str(), Some(r.after_seq), r.limit))?;
    let apart: Vec<u64> = page
        .iter()
        .filter(|(_, e)| e.message.is_none() && e.message_id != 0)
        .map(|(_, e)| e.message_id)
        .collect();
    let mut bodies = if apart.is_empty() {
        Vec::new()
    } else {
        guarded(|| store.messages(&apart))?
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
