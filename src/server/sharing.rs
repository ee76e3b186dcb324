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
//!   A node holds up to `IN_FLIGHT` messages per consumer, asking for no
//!   more than it has room for, each request open for up to `PULL_WAIT`
//!   (so it stops within `PULL_WAIT` of its last member leaving and never
//!   leaves a request open that no one reads). Each message goes to one
//!   local member through the core (`InlineClient::deliver_to_group_sent`),
//!   and is acknowledged to JetStream once the core has it committed; a
//!   delivery that takes longer gets in-progress acks, so the consumer's
//!   short ack wait only redelivers what a dead (or stalled) node held.
//!   If no connected member here may take it any more, it is given back
//!   (`nak`) for another node (soon, when nobody here is connected; after
//!   a pause, when the delivery ACL refused every member or a queue was
//!   full). A message the ACL refuses to every member here is given back
//!   `REFUSED_ROUNDS` times across the nodes, then the node refusing it
//!   terminates it and the core counts it as dropped (`NotAuthorized`).
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
//! **Order**: messages of a group go to the node's members in the order
//! pulled; across nodes, a group has no order (as with several members on
//! one node, whose in-flight windows interleave). A message given back
//! comes again after later ones.
//!
//! **A node that dies** holding pulled messages (at most `IN_FLIGHT` per
//! consumer) delays them by the consumer's ack wait (5 s, see
//! `net::cluster`), then another node gets them (at least once, as QoS 1/2
//! across a crash always is). A node whose core stops gives back what it
//! holds at once.

use crate::broker::{group_outcome as outcome, GroupInterest};
use crate::cluster::envelope;
use crate::cluster::groups::{self, GroupNames};
use crate::codec::{ByteStr, ReasonCode};
use crate::escape::Escaped;
use crate::inline::InlineClient;
use crate::inline::InlineError;
use crate::net::cluster::next;
use crate::net::cluster::{ClusterError, Engine};
use async_nats::jetstream::consumer::pull::Batch;
use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::{self, AckKind};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// Messages of one group consumer this node holds at once: pulled, handed
/// to the core, awaiting its outcome. One at a time costs a round trip to
/// the core (and its commit) per message; a window lets the core take them
/// back to back and commit many in one group commit. 64 keeps a window
/// per consumer and node far below the consumer's cap across all nodes
/// (`GROUP_MAX_ACK_PENDING` in `net::cluster`, 1000: room for 15 nodes),
/// and bounds what a node that dies delays by the ack wait. A group has
/// one consumer per subject of its filter (two for `a/#`), each with its
/// window.
const IN_FLIGHT: usize = 64;
/// How long one pull request stays open: how soon a node stops pulling
/// for a group after its last member left, and how often an idle group's
/// node asks.
const PULL_WAIT: Duration = Duration::from_secs(1);
/// A message held this long without an outcome gets an in-progress ack,
/// and again at this interval: JetStream then keeps it for this node
/// however long the core takes, so the consumer's ack wait (5 s,
/// `GROUP_ACK_WAIT` in `net::cluster`) only has to outlast a node that
/// stopped answering, not the slowest delivery. A message that waits in
/// the core's event queue before it is handed over is not covered; that
/// wait is a queue slot's, not a delivery's.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// A message given back because nobody is connected here: another node
/// should take it soon. Not sooner than this: until its last pull request
/// expires (`PULL_WAIT`), this node may be the only one asking, and a
/// message given back to it every few milliseconds would use up the
/// consumer's deliveries (`GROUP_MAX_DELIVER`, 20) and be dropped
/// unseen.
const NAK_SOON: Duration = Duration::from_millis(250);
/// A message given back because every member here was refused it, or the
/// chosen one's queue was full.
const NAK_LATER: Duration = Duration::from_secs(1);
/// How often a message every connected member of a node was refused (the
/// delivery ACL) is given back before the node refusing it terminates it,
/// counted as dropped: a member on another node may be allowed it, and
/// JetStream gives a consumer's messages to the nodes' pull requests in
/// turn, so a few rounds reach it; a message nobody may receive stops
/// there (about 5 s of `NAK_LATER`), not at the consumer's 20th delivery,
/// after which JetStream drops it uncounted. A cluster with members refused
/// on more nodes than this may terminate a message before the one node
/// allowed it has seen it.
const REFUSED_ROUNDS: i64 = 5;
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

/// A message pulled from a group's consumer and handed to the core,
/// awaiting its outcome.
struct Held {
    m: jetstream::Message,
    /// When it was pulled: held longer than [`PROGRESS_EVERY`], it is kept
    /// from redelivery with in-progress acks.
    since: Instant,
    /// The core's outcome (see [`after`]).
    outcome: OutcomeFuture,
    /// Whether this was the message's last round (see [`REFUSED_ROUNDS`]).
    last: bool,
}

/// The core's outcome of one group delivery.
type OutcomeFuture = Pin<Box<dyn Future<Output = Result<ReasonCode, InlineError>> + Send>>;

/// The next message of the batch being read (pending while there is none).
async fn next_pulled(batch: &mut Option<Batch>) -> Option<<Batch as futures_core::Stream>::Item> {
    match batch {
        Some(b) => next(b).await,
        None => std::future::pending().await,
    }
}

/// The core's outcome of the oldest message held (pending while none is).
async fn oldest_outcome(window: &mut VecDeque<Held>) -> Result<ReasonCode, InlineError> {
    match window.front_mut() {
        Some(h) => h.outcome.as_mut().await,
        None => std::future::pending().await,
    }
}

/// Pulls one consumer of a group until told to stop (finishing the batch
/// it has asked for: what arrives then is given back if nobody here may
/// take it) or the core stops.
///
/// Up to [`IN_FLIGHT`] messages are out at once: handed to the core in
/// the order pulled, each to one member, and each acknowledged to
/// JetStream (or given back, or terminated) once the core gave its
/// outcome for it. A pull request asks for no more than the window has
/// room for, so nothing waits unread in the client's buffer while its ack
/// wait runs.
async fn pull(consumer: PullConsumer, prefix: String, t: Target) {
    let mut stop = t.stop.clone();
    let mut window: VecDeque<Held> = VecDeque::with_capacity(IN_FLIGHT);
    let mut batch: Option<Batch> = None;
    let mut pause = RETRY_MIN;
    let mut retry_at: Option<Instant> = None;
    let mut progress = tokio::time::interval(PROGRESS_EVERY);
    progress.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let stopping = *t.stop.borrow();
        let may_ask = retry_at.is_none_or(|at| Instant::now() >= at);
        if batch.is_none() && !stopping && window.len() < IN_FLIGHT && may_ask {
            match consumer
                .batch()
                .max_messages(IN_FLIGHT - window.len())
                .expires(PULL_WAIT)
                .messages()
                .await
            {
                Ok(b) => {
                    batch = Some(b);
                    (pause, retry_at) = (RETRY_MIN, None);
                }
                Err(e) => {
                    tracing::warn!(group = %Escaped(&t.group), error = %e,
                        "cluster: pulling a share group's messages; retrying");
                    retry_at = Some(Instant::now() + pause);
                    pause = (pause * 2).min(RETRY_MAX);
                }
            }
        }
        if stopping && batch.is_none() && window.is_empty() {
            return;
        }
        tokio::select! {
            // Outcomes first: they free room in the window.
            biased;
            outcome = oldest_outcome(&mut window), if !window.is_empty() => {
                let Some(held) = window.pop_front() else { continue };
                let Ok(code) = outcome else {
                    // The core stopped: what this node holds goes to
                    // another node now, not after the ack wait.
                    return give_back(held.m, window).await;
                };
                let kind = after(code, held.last);
                if let Err(e) = held.m.ack_with(kind).await {
                    tracing::warn!(error = %e, "cluster: acknowledging a share group message");
                }
            }
            item = next_pulled(&mut batch) => {
                let m = match item {
                    Some(Ok(m)) => m,
                    Some(Err(e)) => {
                        // What the batch still had comes again after the
                        // ack wait.
                        tracing::warn!(group = %Escaped(&t.group), error = %e,
                            "cluster: reading a share group's batch");
                        batch = None;
                        continue;
                    }
                    None => {
                        batch = None;
                        continue;
                    }
                };
                let publish = match envelope::decode(&prefix, &m.subject, &m.payload) {
                    Ok(publish) => publish,
                    Err(e) => {
                        tracing::warn!(error = %e, "cluster: share group message dropped");
                        if let Err(e) = m.ack_with(AckKind::Term).await {
                            tracing::warn!(error = %e,
                                "cluster: acknowledging a share group message");
                        }
                        continue;
                    }
                };
                let last = m.info().is_ok_and(|i| i.delivered >= REFUSED_ROUNDS);
                let sent = t
                    .client
                    .deliver_to_group_sent(&t.group, &t.filter, publish, last)
                    .await;
                match sent {
                    Ok(outcome) => window.push_back(Held {
                        m,
                        since: Instant::now(),
                        outcome: Box::pin(outcome),
                        last,
                    }),
                    Err(_) => {
                        window.push_back(Held {
                            m,
                            since: Instant::now(),
                            outcome: Box::pin(std::future::pending()),
                            last,
                        });
                        return give_back(None, window).await;
                    }
                }
            }
            _ = progress.tick() => {
                // A member's delivery still running here (a busy core, a
                // slow commit): JetStream must not give it to another
                // node meanwhile.
                let long = window.iter().take_while(|h| h.since.elapsed() >= PROGRESS_EVERY).count();
                for i in 0..long {
                    let m = &window[i].m;
                    if let Err(e) = m.ack_with(AckKind::Progress).await {
                        tracing::debug!(error = %e, "cluster: in-progress ack of a share group message");
                    }
                }
            }
            _ = tokio::time::sleep_until(retry_at.unwrap_or_else(Instant::now)), if retry_at.is_some() => {}
            // (The guard `wait_for` returns is not `Send`: dropped inside.)
            () = async { drop(stop.wait_for(|s| *s).await) }, if !stopping => {}
        }
    }
}

/// The core stopped: gives `first` and every message of `window` back to
/// JetStream at once, for another node (at least once: the core may have
/// committed a delivery it did not answer).
async fn give_back(first: impl Into<Option<jetstream::Message>>, window: VecDeque<Held>) {
    for m in first
        .into()
        .into_iter()
        .chain(window.into_iter().map(|h| h.m))
    {
        if let Err(e) = m.ack_with(AckKind::Nak(None)).await {
            tracing::debug!(error = %e, "cluster: giving back a share group message");
        }
    }
}

/// What JetStream is told after the core's answer; `last`: the message's
/// last round (see [`REFUSED_ROUNDS`]).
fn after(code: ReasonCode, last: bool) -> AckKind {
    match code {
        outcome::DELIVERED => AckKind::Ack,
        // Nobody's: a `$` topic under a filter's leading wildcard.
        outcome::NOT_MATCHED => AckKind::Term,
        outcome::NO_MEMBER => AckKind::Nak(Some(NAK_SOON)),
        // The core counted it as dropped.
        outcome::REFUSED if last => AckKind::Term,
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
                    .deliver_to_group(&t.group, &t.filter, publish)
                    .await;
                if sent.is_err() {
                    return;
                }
            }
            Err(e) => tracing::warn!(error = %e, "cluster: QoS 0 share group message dropped"),
        }
    }
}
