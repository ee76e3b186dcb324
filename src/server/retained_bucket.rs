//! Retained messages cluster-wide (issue 19): this node's side of the
//! retained bucket `<name>_retained` (format and ordering rules in
//! `cluster::retained`).
//!
//! **Writer** ([`RetainedBucket::write`], called by the router's
//! `forward` for every message it forwards): a retained message is put in
//! the bucket (an empty one deletes the key: "clear retained"), awaiting
//! JetStream's acknowledgement and retrying with the same `Nats-Msg-Id`
//! until it comes, *before* the message goes to the stream and before the
//! core is acknowledged: an acknowledged retained message is in the bucket.
//! QoS 0 retained messages too (the bucket is the retained truth, whatever
//! the QoS of its delivery).
//!
//! **Reader** ([`RetainedBucket::load`], then [`RetainedBucket::follow`]):
//! every node watches the bucket from the start (the last value of each
//! key, then every change) and applies each entry to its local retained
//! store without delivering it (`Event::SyncRetained`): the message itself
//! reached the subscribers through routing. The load ends with clearing
//! the local retained topics the bucket does not hold (a persistent local
//! store from before, or the local state of a node that was down while a
//! topic was cleared): the bucket is the truth. The node's listeners open
//! only after the load.
//!
//! **Expiry**: a node never serves an expired retained message (its core
//! checks the expiry on every send and sweeps expired ones), wherever the
//! message came from, as the bucket value carries its absolute expiry. The
//! bucket's own copy is deleted lazily: when a node reads an entry that has
//! expired (at its start, or as an update), it deletes the key *if its
//! revision is still that entry's* (compare-and-delete), so a newer value
//! another node put meanwhile is never lost. A bucket `max_age` is no
//! option: it would expire the retained messages without an expiry too,
//! which MQTT keeps for ever, and nats-server 2.9 has no per-key TTL.
//! Entries that expire after every node loaded them stay in the bucket,
//! unseen, until their topic is written again or a node restarts: one
//! stale value per such topic.

use crate::broker::{Event, Message, RetainedSync};
use crate::clock::Clock;
use crate::cluster::retained::{self, Judged, OwnWrites};
use crate::codec::Publish;
use crate::escape::Escaped;
use crate::net::cluster::{ClusterError, Engine};
use async_nats::jetstream::kv;
use async_nats::HeaderMap;
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch, Mutex};

/// First and last pause between retries of an unacknowledged write.
const RETRY_MIN: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// This node's link between its retained store and the bucket.
pub(super) struct RetainedBucket {
    engine: Arc<Engine>,
    /// To the core.
    events: mpsc::Sender<Event>,
    clock: Clock,
    /// Held while an entry is judged and sent to the core, so changes
    /// reach the core in the order they were judged.
    own: Mutex<OwnWrites<RetainedSync>>,
    /// Message ids unique across restarts: node, start time, counter.
    boot: u128,
    seq: AtomicU64,
}

impl RetainedBucket {
    pub(super) fn new(engine: Arc<Engine>, events: mpsc::Sender<Event>, clock: Clock) -> Self {
        RetainedBucket {
            engine,
            events,
            clock,
            own: Mutex::new(OwnWrites::default()),
            boot: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
            seq: AtomicU64::new(0),
        }
    }

    /// Puts (or, empty, deletes) the retained message `publish` in the
    /// bucket, until JetStream has it; does nothing for a message without
    /// the retain flag, or a `$SYS` one (each node's own). False if the
    /// node stopped first.
    pub(super) async fn write(&self, publish: &Publish, stop: &watch::Receiver<bool>) -> bool {
        if !publish.retain || publish.topic.starts_with("$SYS") {
            return true;
        }
        let topic = publish.topic.as_str();
        let config = self.engine.config();
        let subject = format!(
            "$KV.{}.{}",
            config.retained_bucket(),
            retained::key_of(topic)
        );
        let mut headers = HeaderMap::new();
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        headers.insert(
            async_nats::header::NATS_MESSAGE_ID,
            format!("{}-r-{}-{n}", config.node, self.boot).as_str(),
        );
        let value = if publish.payload.is_empty() {
            // A delete marker, as `kv::Store::delete` writes it (which
            // does not say the revision).
            headers.insert("KV-Operation", "DEL");
            bytes::Bytes::new()
        } else {
            // The interval counts from now, as the core's delivery to the
            // router has just passed it on.
            let expires = publish
                .properties
                .message_expiry_interval
                .map(|s| self.clock.now_ms().saturating_add(u64::from(s) * 1000));
            retained::encode(publish, expires)
        };
        self.own.lock().await.begin(topic);
        let mut pause = RETRY_MIN;
        let revision = loop {
            match self
                .engine
                .publish_durable(subject.clone(), headers.clone(), value.clone())
                .await
            {
                Ok(stored) => break Some(stored.sequence),
                Err(e) => {
                    tracing::warn!(topic = %Escaped(topic), error = %e,
                        retry_in_ms = pause.as_millis() as u64,
                        "cluster: retained message not stored in the bucket yet; retrying");
                }
            }
            if *stop.borrow() {
                break None;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(RETRY_MAX);
        };
        let mut own = self.own.lock().await;
        if let Some(change) = own.stored(topic, revision) {
            // Another node's write the bucket ordered after ours.
            let _ = self
                .events
                .send(Event::SyncRetained(Box::new(change)))
                .await;
        }
        revision.is_some()
    }

    /// Loads the bucket into the local retained store: watches it from
    /// the start, applies its values, then clears what it does not hold.
    /// Returns the watch, to [`follow`](Self::follow) from there.
    pub(super) async fn load(&self) -> Result<kv::Watch, ClusterError> {
        let kv = self.engine.retained();
        let setup = |e: &dyn std::fmt::Display| ClusterError::Setup {
            what: "bucket watch",
            name: kv.name.clone(),
            reason: e.to_string(),
        };
        let mut watch = kv.watch_with_history(">").await.map_err(|e| setup(&e))?;
        // The watch delivers the last entry of each key with the number
        // still pending; an empty bucket delivers nothing, so the stream's
        // count says whether to wait at all (a delete leaves a marker, so
        // a bucket that had a key when the watch began delivers an entry).
        let mut stream = kv.stream.clone();
        let info = stream.info().await.map_err(|e| setup(&e))?;
        let mut keep = HashSet::new();
        if info.state.messages > 0 {
            loop {
                let entry = match crate::net::cluster::next(&mut watch).await {
                    Some(Ok(entry)) => entry,
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "cluster: reading the retained bucket");
                        continue;
                    }
                    None => return Err(setup(&"the watch ended")),
                };
                let current = entry.delta == 0;
                if let Some(topic) = self.apply(entry).await {
                    keep.insert(topic);
                }
                if current {
                    break;
                }
            }
        }
        let (done, applied) = oneshot::channel();
        keep.extend(self.own.lock().await.pending().map(str::to_owned));
        let keep_only = RetainedSync::KeepOnly(keep, done);
        let stopped = |_| setup(&"the broker stopped");
        self.events
            .send(Event::SyncRetained(Box::new(keep_only)))
            .await
            .map_err(|_| setup(&"the broker stopped"))?;
        applied.await.map_err(stopped)?;
        Ok(watch)
    }

    /// Applies the bucket's changes as they come, until the watch ends.
    pub(super) async fn follow(&self, mut watch: kv::Watch) {
        while let Some(entry) = crate::net::cluster::next(&mut watch).await {
            match entry {
                Ok(entry) => {
                    self.apply(entry).await;
                }
                Err(e) => tracing::warn!(error = %e, "cluster: reading the retained bucket"),
            }
        }
        tracing::error!(
            "cluster: the retained bucket's watch ended; this node no longer follows retained changes"
        );
    }

    /// Applies one entry (unless this node's own write makes it stale);
    /// returns the topic it holds a message for.
    async fn apply(&self, entry: kv::Entry) -> Option<String> {
        let Some(topic) = retained::topic_of_key(&entry.key) else {
            tracing::warn!(key = %Escaped(&entry.key),
                "cluster: retained bucket key that names no topic, ignored");
            return None;
        };
        let (change, held) = match entry.operation {
            kv::Operation::Put => match retained::decode(&entry.key, &entry.value) {
                Ok((publish, expires_at_ms)) => {
                    if expires_at_ms.is_some_and(|t| t <= self.clock.now_ms()) {
                        self.delete_expired(&entry);
                    }
                    let mut msg = Message::from_publish(publish, 0, None);
                    msg.expires_at_ms = expires_at_ms;
                    (RetainedSync::Set(msg), Some(topic.clone()))
                }
                Err(e) => {
                    tracing::warn!(topic = %Escaped(&topic), error = %e,
                        "cluster: retained bucket value ignored");
                    return None;
                }
            },
            kv::Operation::Delete | kv::Operation::Purge => {
                (RetainedSync::Clear(topic.clone()), None)
            }
        };
        let mut own = self.own.lock().await;
        if let Judged::Apply(change) = own.judge(&topic, entry.revision, change) {
            let _ = self
                .events
                .send(Event::SyncRetained(Box::new(change)))
                .await;
        }
        held
    }

    /// Deletes the expired `entry` from the bucket if it is still the
    /// key's latest revision (in the background: nothing waits for it).
    fn delete_expired(&self, entry: &kv::Entry) {
        let kv = self.engine.retained().clone();
        let (key, revision) = (entry.key.clone(), entry.revision);
        tokio::spawn(async move {
            // Fails if the key changed since: the newer value stays.
            if let Err(e) = kv.delete_expect_revision(&key, Some(revision)).await {
                tracing::debug!(key = %Escaped(&key), error = %e,
                    "cluster: expired retained entry not deleted (changed meanwhile?)");
            }
        });
    }
}

/// Loads the bucket, says so on `loaded` (the listeners wait for it), then
/// follows it until `stop`. A load that fails drops `loaded`: the node does
/// not serve with a retained state it could not read.
pub(super) async fn run(
    bucket: Arc<RetainedBucket>,
    loaded: oneshot::Sender<()>,
    mut stop: watch::Receiver<bool>,
) {
    let follow = async {
        match bucket.load().await {
            Ok(watch) => {
                let _ = loaded.send(());
                bucket.follow(watch).await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cluster: cannot load the retained bucket; not serving");
            }
        }
    };
    tokio::select! {
        _ = follow => {}
        _ = stop.wait_for(|s| *s) => {}
    }
}
