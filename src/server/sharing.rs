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
/// chosen one's queue was full. At least `PULL_WAIT`: the pull request
/// that brought it has expired when it is available again (see [`Quiet`]).
const NAK_LATER: Duration = Duration::from_secs(1);
const _: () = assert!(NAK_LATER.as_millis() >= PULL_WAIT.as_millis());
/// How long before and after a message given back with [`NAK_LATER`] is
/// available again the node that gave it back keeps from asking for more
/// ([`Quiet`]): the server's timer starts when the nak arrives (a little
/// later than the node's), and another node's request, renewed as soon as
/// its previous one ends, is then open.
const QUIET_BEFORE: Duration = Duration::from_millis(100);
const QUIET_AFTER: Duration = Duration::from_millis(300);
/// The shortest pull request worth asking for before a quiet span.
const SHORTEST_REQUEST: Duration = Duration::from_millis(50);
/// How often a message every connected member of a node was refused (the
/// delivery ACL) is given back before the node refusing it terminates it,
/// counted as dropped. A member on another node may be allowed it: a node
/// that gave a message back has no pull request open when it comes back
/// ([`Quiet`]), so JetStream hands it to another node pulling for the
/// group, if any; the rounds are then the nodes refusing it in turn. A
/// message nobody may receive stops here (about 5 s), not at the
/// consumer's 20th delivery, after which JetStream drops it uncounted.
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

/// When a node must have no pull request open on a group's consumer:
/// around the moments the messages it gave back (after a refusal, or a
/// full queue) become available again, so that JetStream hands them to
/// another node's open request rather than back to this one. Without it,
/// the same node may get a message every round (its requests renew on
/// the same one-second beat as the delay), and terminate it while a
/// member on another node may receive it. Time is passed in.
#[derive(Debug, Default)]
struct Quiet {
    /// (start, end) of each quiet span, in order, not overlapping.
    spans: VecDeque<(Instant, Instant)>,
}

impl Quiet {
    /// A message was given back at `now`, available again after `delay`.
    fn gave_back(&mut self, now: Instant, delay: Duration) {
        let start = (now + delay).checked_sub(QUIET_BEFORE).unwrap_or(now);
        let end = now + delay + QUIET_AFTER;
        match self.spans.back_mut() {
            Some(last) if start <= last.1 => last.1 = last.1.max(end),
            _ => self.spans.push_back((start, end)),
        }
    }

    /// How long a pull request asked for at `now` may stay open, or
    /// `Err(until)`: ask nothing before `until`.
    fn ask(&mut self, now: Instant) -> Result<Duration, Instant> {
        while self.spans.front().is_some_and(|&(_, end)| end <= now) {
            self.spans.pop_front();
        }
        match self.spans.front() {
            None => Ok(PULL_WAIT),
            Some(&(start, end)) if start <= now + SHORTEST_REQUEST => Err(end),
            Some(&(start, _)) => Ok((start - now).min(PULL_WAIT)),
        }
    }
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
/// (`Sync` too: the window is read across awaits.)
type OutcomeFuture = Pin<Box<dyn Future<Output = Result<ReasonCode, InlineError>> + Send + Sync>>;

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
    let mut quiet = Quiet::default();
    let mut progress = tokio::time::interval(PROGRESS_EVERY);
    progress.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let stopping = *t.stop.borrow();
        let now = Instant::now();
        let may_ask = retry_at.is_none_or(|at| now >= at);
        let expires = match quiet.ask(now) {
            Ok(expires) => Some(expires),
            Err(until) => {
                retry_at = Some(retry_at.map_or(until, |at| at.max(until)));
                None
            }
        };
        let room = window.len() < IN_FLIGHT;
        if let Some(expires) = expires.filter(|_| batch.is_none() && !stopping && room && may_ask) {
            match consumer
                .batch()
                .max_messages(IN_FLIGHT - window.len())
                .expires(expires)
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
                if !held.last && matches!(code, outcome::REFUSED | outcome::FULL) {
                    quiet.gave_back(Instant::now(), NAK_LATER);
                }
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
                let long = window.iter().take_while(|h| h.since.elapsed() >= PROGRESS_EVERY);
                for h in long {
                    if let Err(e) = h.m.ack_with(AckKind::Progress).await {
                        tracing::debug!(error = %e, "cluster: in-progress ack of a share group message");
                    }
                }
            }
            // Time to ask again (after an error, or a quiet span).
            _ = tokio::time::sleep_until(retry_at.unwrap_or_else(Instant::now)), if retry_at.is_some() => {
                retry_at = None;
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_node_asks_nothing_while_what_it_gave_back_comes_back() {
        let t = Instant::now();
        let mut q = Quiet::default();
        assert_eq!(
            q.ask(t),
            Ok(PULL_WAIT),
            "nothing given back: a full request"
        );
        q.gave_back(t, NAK_LATER);
        // Requests asked before end before the message is available again.
        let start = t + NAK_LATER - QUIET_BEFORE;
        assert_eq!(q.ask(t + 200 * MS), Ok(start - (t + 200 * MS)));
        assert!(t + 200 * MS + q.ask(t + 200 * MS).unwrap() <= start);
        // Too close to the span, and inside it: wait for its end.
        let end = t + NAK_LATER + QUIET_AFTER;
        assert_eq!(q.ask(start - 10 * MS), Err(end));
        assert_eq!(q.ask(t + NAK_LATER), Err(end));
        // After it: full requests again, and the span is forgotten.
        assert_eq!(q.ask(end), Ok(PULL_WAIT));
        assert!(q.spans.is_empty());
    }

    #[test]
    fn overlapping_spans_merge_and_later_ones_wait_their_turn() {
        let t = Instant::now();
        let mut q = Quiet::default();
        q.gave_back(t, NAK_LATER);
        q.gave_back(t + 100 * MS, NAK_LATER); // overlaps: one longer span
        q.gave_back(t + 2_000 * MS, NAK_LATER); // apart: a second span
        assert_eq!(q.spans.len(), 2);
        let first_end = t + 100 * MS + NAK_LATER + QUIET_AFTER;
        assert_eq!(q.ask(t + NAK_LATER), Err(first_end));
        // Between the spans: a request that ends before the second.
        let second = t + 2_000 * MS + NAK_LATER - QUIET_BEFORE;
        assert_eq!(q.ask(first_end), Ok(PULL_WAIT.min(second - first_end)));
        assert_eq!(q.spans.len(), 1);
    }

    #[test]
    fn the_core_s_outcome_decides_what_jetstream_is_told() {
        let later = |k| matches!(k, AckKind::Nak(Some(d)) if d == NAK_LATER);
        assert!(matches!(after(outcome::DELIVERED, false), AckKind::Ack));
        assert!(matches!(after(outcome::NOT_MATCHED, false), AckKind::Term));
        assert!(matches!(after(outcome::NO_MEMBER, true), AckKind::Nak(Some(d)) if d == NAK_SOON));
        assert!(later(after(outcome::REFUSED, false)));
        // The last round: the core counted it dropped.
        assert!(matches!(after(outcome::REFUSED, true), AckKind::Term));
        assert!(later(after(outcome::FULL, true)));
    }
}
