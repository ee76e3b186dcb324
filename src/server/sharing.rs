//! Share groups across the cluster (issue 19): each message to one member
//! of the group across all nodes.
//!
//! The core serves no share group by itself in a cluster; it tells this
//! driver how many connected members each group has on this node
//! ([`GroupInterest`], see `broker::groups`), and while that is above zero
//! the node pulls the group's messages from NATS, under the names every
//! node derives alike (`cluster::groups`):
//!
//! - **QoS 1/2**: the group's durable pull consumers on the message stream
//!   (one per subject of the filter), shared by every node with members.
//!   A node pulls in small batches (`PULL_BATCH`, each request open for up
//!   to `PULL_WAIT`), so it stops within `PULL_WAIT` of its last member
//!   leaving and never leaves a request open that no one reads. Each
//!   message goes to one local member through the core
//!   (`InlineClient::deliver_to_group`), and is acknowledged to JetStream
//!   once the core has it committed; if no connected member here may take
//!   it any more, it is given back (`nak`) for another node (soon, when
//!   nobody here is connected; after a pause, when the delivery ACL
//!   refused every member or a queue was full). A message nobody may
//!   receive goes round `GROUP_MAX_DELIVER` times (see `net::cluster`),
//!   then the consumer drops it, as one node drops it at once.
//! - **QoS 0**: core NATS queue subscriptions in the group's queue group:
//!   NATS gives each message to one subscription of the group. A node's
//!   own QoS 0 messages reach its members this way too (its routing skips
//!   share groups), so nothing here is dropped as the node's own.
//!
//! A member's SUBSCRIBE is acknowledged once the node pulls for its group
//! (the core holds the SUBACK until the interest's `ready` is dropped
//! here): a message published after the SUBACK is in a consumer this node
//! reads, or reaches its queue subscription.
//!
//! **Order**: messages of a group go to the node's members one at a time,
//! in the order pulled; across nodes, a group has no order (as with
//! several members on one node, whose in-flight windows interleave).
//!
//! **Known gaps**: one delivery at a time per consumer (each waits for its
//! commit); a node that dies holding pulled messages delays them by the
//! consumer's ack wait (30 s), then another node gets them (at least
//! once, as QoS 1/2 across a crash always is).

use crate::broker::{group_outcome as outcome, GroupInterest};
use crate::cluster::envelope;
use crate::cluster::groups::{self, GroupNames};
use crate::codec::{ByteStr, ReasonCode};
use crate::escape::Escaped;
use crate::inline::InlineClient;
use crate::net::cluster::next;
use crate::net::cluster::{ClusterError, Engine};
use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::AckKind;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// Messages one pull request asks for.
const PULL_BATCH: usize = 64;
/// How long one pull request stays open: how soon a node stops pulling
/// for a group after its last member left, and how often an idle group's
/// node asks.
const PULL_WAIT: Duration = Duration::from_secs(1);
/// A message given back because nobody is connected here: another node
/// should take it at once (this one stops pulling soon).
const NAK_SOON: Duration = Duration::from_millis(50);
/// A message given back because every member here was refused it, or the
/// chosen one's queue was full.
const NAK_LATER: Duration = Duration::from_secs(1);
/// First and last pause between attempts to bind a group's consumers.
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// A group this node pulls for: telling its tasks to stop.
struct Pulling {
    stop: watch::Sender<bool>,
}

/// Follows the core's [`GroupInterest`]s until `stop`: starts pulling for a
/// group when it has connected members here, stops when it has none.
pub(super) async fn run(
    engine: Arc<Engine>,
    client: InlineClient,
    mut interest: mpsc::UnboundedReceiver<GroupInterest>,
    mut stop: watch::Receiver<bool>,
) {
    let mut pulling: HashMap<(ByteStr, ByteStr), Pulling> = HashMap::new();
    loop {
        let change = tokio::select! {
            change = interest.recv() => change,
            _ = stop.wait_for(|s| *s) => None,
        };
        let Some(change) = change else { break };
        let key = (change.group.clone(), change.filter.clone());
        if change.members == 0 {
            if let Some(p) = pulling.remove(&key) {
                let _ = p.stop.send(true);
            }
            continue;
        }
        if !pulling.contains_key(&key) {
            // Until it pulls, the SUBACK waits: retried while JetStream
            // does not answer, as publishers' acknowledgements wait.
            let mut pause = RETRY_MIN;
            loop {
                match start(&engine, &client, &change.group, &change.filter).await {
                    Ok(p) => {
                        pulling.insert(key, p);
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(group = %Escaped(&change.group),
                            filter = %Escaped(&change.filter), error = %e,
                            retry_in_ms = pause.as_millis() as u64,
                            "cluster: cannot pull for a share group yet");
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
                pause = (pause * 2).min(RETRY_MAX);
            }
        }
        // Pulling: the SUBACK may go.
        drop(change.ready);
    }
    for p in pulling.into_values() {
        let _ = p.stop.send(true);
    }
}

/// Binds the group's consumers and queue subscriptions, and starts their
/// tasks; returns once the node pulls (the subscriptions flushed).
async fn start(
    engine: &Engine,
    client: &InlineClient,
    group: &ByteStr,
    filter: &ByteStr,
) -> Result<Pulling, ClusterError> {
    let config = engine.config();
    let GroupNames {
        durable,
        volatile,
        queue,
    } = groups::names(config, group, filter);
    let mut consumers = Vec::with_capacity(durable.len());
    for (name, subject) in &durable {
        consumers.push(engine.group_consumer(name, subject).await?);
    }
    let mut subscribers = Vec::with_capacity(volatile.len());
    for subject in volatile {
        let setup = |e: &dyn std::fmt::Display| ClusterError::Setup {
            what: "subscription",
            name: subject.clone(),
            reason: e.to_string(),
        };
        let sub = engine
            .client()
            .queue_subscribe(subject.clone(), queue.clone())
            .await
            .map_err(|e| setup(&e))?;
        subscribers.push(sub);
    }
    // Once flushed, the server has the queue subscriptions.
    engine
        .client()
        .flush()
        .await
        .map_err(|e| ClusterError::Setup {
            what: "subscription",
            name: queue.clone(),
            reason: e.to_string(),
        })?;
    let (stop, stopped) = watch::channel(false);
    let target = Target {
        client: client.clone(),
        group: group.clone(),
        filter: filter.clone(),
        stop: stopped,
    };
    for consumer in consumers {
        let prefix = config.durable_prefix();
        tokio::spawn(pull(consumer, prefix, target.clone()));
    }
    for sub in subscribers {
        let prefix = config.volatile_prefix();
        tokio::spawn(listen(sub, prefix, target.clone()));
    }
    Ok(Pulling { stop })
}

/// Where a group's messages go, and when its tasks stop.
#[derive(Clone)]
struct Target {
    client: InlineClient,
    group: ByteStr,
    filter: ByteStr,
    stop: watch::Receiver<bool>,
}

/// Pulls one consumer of a group until told to stop (finishing the batch
/// it has asked for: what arrives then is given back if nobody here may
/// take it) or the core stops.
async fn pull(consumer: PullConsumer, prefix: String, t: Target) {
    let mut pause = RETRY_MIN;
    while !*t.stop.borrow() {
        let batch = consumer
            .batch()
            .max_messages(PULL_BATCH)
            .expires(PULL_WAIT)
            .messages()
            .await;
        let mut batch = match batch {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(group = %Escaped(&t.group), error = %e,
                    "cluster: pulling a share group's messages; retrying");
                let mut stop = t.stop.clone();
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
                pause = (pause * 2).min(RETRY_MAX);
                continue;
            }
        };
        pause = RETRY_MIN;
        while let Some(item) = next(&mut batch).await {
            let m = match item {
                Ok(m) => m,
                Err(e) => {
                    // What the batch still had comes again after the ack wait.
                    tracing::warn!(group = %Escaped(&t.group), error = %e,
                        "cluster: reading a share group's batch");
                    break;
                }
            };
            let kind = match envelope::decode(&prefix, &m.subject, &m.payload) {
                Ok(publish) => {
                    match t
                        .client
                        .deliver_to_group(&t.group, &t.filter, publish, true)
                        .await
                    {
                        Ok(code) => after(code),
                        // The core stopped: not acknowledged, so another
                        // node (or this one, restarted) gets it.
                        Err(_) => return,
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cluster: share group message dropped");
                    AckKind::Term
                }
            };
            if let Err(e) = m.ack_with(kind).await {
                tracing::warn!(error = %e, "cluster: acknowledging a share group message");
            }
        }
    }
}

/// What JetStream is told after the core's answer.
fn after(code: ReasonCode) -> AckKind {
    match code {
        outcome::DELIVERED => AckKind::Ack,
        // Nobody's: a `$` topic under a filter's leading wildcard.
        outcome::NOT_MATCHED => AckKind::Term,
        outcome::NO_MEMBER => AckKind::Nak(Some(NAK_SOON)),
        _ => AckKind::Nak(Some(NAK_LATER)),
    }
}

/// Hands a group's QoS 0 messages from one queue subscription to a local
/// member until told to stop (dropping the subscription unsubscribes it).
async fn listen(mut sub: async_nats::Subscriber, prefix: String, t: Target) {
    let mut stop = t.stop.clone();
    loop {
        let m = tokio::select! {
            m = next(&mut sub) => m,
            _ = stop.wait_for(|s| *s) => None,
        };
        let Some(m) = m else { return };
        match envelope::decode(&prefix, &m.subject, &m.payload) {
            Ok(publish) => {
                // At most once: no answer awaited, nothing given back.
                let sent = t
                    .client
                    .deliver_to_group(&t.group, &t.filter, publish, false)
                    .await;
                if sent.is_err() {
                    return;
                }
            }
            Err(e) => tracing::warn!(error = %e, "cluster: QoS 0 share group message dropped"),
        }
    }
}
