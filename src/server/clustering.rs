//! Routing between the nodes of a cluster (issue 19): the driver that
//! joins this node's core to NATS, in the shape of a bridge whose remote
//! is every other node.
//!
//! The node's side is an inline client, `$cluster/<node>` (a reserved
//! prefix: no network client may take it), subscribed to `#`; the core
//! hands it every message published on this node directly
//! (`Broker::dispatch`), `$` topics other than `$SYS` included, never
//! what it injects itself. Its subscription's options say what it gets:
//! *Retain As Published* (the retain flag crosses as published) and
//! *Retain Handling 2* (the retained messages already here at start are not
//! re-published to the cluster).
//!
//! **The cluster's log.** A QoS 1/2 message is not delivered on the node
//! where it is published: the core gives it only to the router, which
//! stores it in the message stream at `<name>.d.<subject>`, waiting for
//! JetStream's acknowledgement and retrying with the same `Nats-Msg-Id`
//! (stored once within the stream's duplicate window) until it comes.
//! Every node, this one included, reads the whole stream through its
//! durable consumer and injects each message into its core, which
//! delivers it to the local subscriptions as on one node (ACL per
//! delivery, limits, counting, persistence). So all QoS 1/2 deliveries, on
//! every node, follow the stream's order and carry its sequence numbers:
//! the ground for sessions that move between nodes. A stream message is
//! acknowledged to JetStream after the core acknowledged it (for QoS 1/2
//! that is after its commit), so a node that dies before gets it again.
//! While JetStream is unreachable nothing is acknowledged to anyone; the
//! router's buffer, then the core's slow-consumer policy, take the
//! backlog.
//!
//! **QoS 0** is delivered on its own node at once and published on core
//! NATS at `<name>.v.<subject>`; the other nodes inject it, and a node
//! drops its own (header `Roost-Node`).
//!
//! An injection carries its publisher's client id (header `Roost-Client`,
//! for No Local and the hooks) and skips the publish hooks, which judged it
//! on its own node. A retained message is stored where it is published at
//! once, and where it is injected.
//!
//! **Durability.** A publisher's PUBACK/PUBREC for a QoS 1/2 message
//! waits, besides its local commit (or gate), for this router's
//! acknowledgement of its copy, and the router acknowledges (manually, see
//! `InlineClient::acknowledge_manually`) only after JetStream's ack: the
//! core pushes the publisher's acknowledgement with a cluster wait
//! (`Broker::ack_after_cluster`, `Outbox::push_held`), and the router's
//! PUBACK/PUBREC opens it (the message's `AckGate`). While JetStream is
//! unreachable no acknowledgement leaves. Nothing here blocks the core.
//! If the router lets go of its copy before JetStream stored it (its queue
//! full while NATS is down, an ACL that applies to inline clients, the
//! node stopping), the publisher is refused as when the store fails
//! (5.0: 0x97; 3.x: disconnected without an acknowledgement) and
//! `cluster_refused` counts it; a commit that failed meanwhile is a
//! refusal too, whenever the cluster lets the acknowledgement go.
//!
//! **Known gaps**, for the next piece:
//! - Retained messages are cluster-wide through the retained bucket
//!   (`retained_bucket`, written from `forward` before the stream), sessions
//!   through `net::roaming`; share groups are served by `server::sharing`,
//!   not routed here.
//! - A node that restarts resumes its durable consumer where it stopped,
//!   and injects what it missed: without sessions in the cluster, that
//!   goes to whoever is subscribed then.

use crate::broker::Origin;
use crate::cluster::config::ClusterConfig;
use crate::cluster::envelope::{self, FLOW, ORIGIN, PUBLISHER};
use crate::cluster::subject::subject_of;
use crate::codec::{ByteStr, Publish, QoS, QosPid, RetainHandling, SubscriptionOptions};
use crate::escape::Escaped;
use crate::inline::{InlineClient, InlineError, InlineMessage, Subscription};
use crate::net::cluster::{next, ClusterError, Engine, Stored};
use crate::server::retained_bucket::RetainedBucket;
use async_nats::jetstream;
use async_nats::HeaderMap;
use std::collections::VecDeque;
use std::future::Future;
use std::num::NonZeroU16;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{oneshot, watch};

/// First and last pause between retries of an unacknowledged durable
/// publish.
const RETRY_MIN: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// What the node receives from the cluster, subscribed before the node
/// serves anyone.
pub(super) struct Inbound {
    volatile: async_nats::Subscriber,
    durable: jetstream::consumer::pull::Stream,
}

/// Subscribes to the cluster's subjects: core NATS for QoS 0, the node's
/// consumer for QoS 1/2. Fails like `connect` does, so a node that cannot
/// receive refuses to start.
pub(super) async fn subscribe(engine: &Engine) -> Result<Inbound, ClusterError> {
    let config = engine.config();
    let subject = format!("{}.>", config.volatile_prefix());
    let volatile = engine
        .client()
        .subscribe(subject.clone())
        .await
        .map_err(|e| ClusterError::Setup {
            what: "subscription",
            name: subject,
            reason: e.to_string(),
        })?;
    // Once flushed, the server has the subscription: a QoS 0 message
    // another node publishes after this node serves is not missed.
    engine
        .client()
        .flush()
        .await
        .map_err(|e| ClusterError::Setup {
            what: "subscription",
            name: format!("{}.>", config.volatile_prefix()),
            reason: e.to_string(),
        })?;
    // What the consumer fetches ahead is bounded in bytes too, but never
    // below twice NATS's largest message: a pull whose first message is
    // larger than its byte bound would fail, again and again.
    let fetched = INJECTING_BYTES.max(engine.client().server_info().max_payload * 2);
    let durable = engine
        .node_consumer()
        .await?
        .stream()
        .max_bytes_per_batch(fetched)
        // As `messages()` has it: a lost connection is noticed.
        .heartbeat(Duration::from_secs(15))
        .messages()
        .await
        .map_err(|e| ClusterError::Setup {
            what: "consumer",
            name: config.consumer(),
            reason: e.to_string(),
        })?;
    Ok(Inbound { volatile, durable })
}

/// The inline client id of node `node`.
pub(super) fn client_id(node: &str) -> String {
    format!("{}{node}", crate::cluster::CLIENT_ID_PREFIX)
}

/// Routes until `stop`: subscribes the node's forwarding subscription,
/// says so on `ready` (the listeners wait for it: a client served before
/// would publish into a node that does not forward yet), then forwards
/// and injects.
pub(super) async fn run(
    engine: Arc<Engine>,
    inbound: Inbound,
    client: InlineClient,
    bucket: Arc<RetainedBucket>,
    ready: oneshot::Sender<()>,
    stop: watch::Receiver<bool>,
) {
    // Its deliveries are acknowledged once JetStream has them, and the
    // publishers' acknowledgements wait for that.
    client.acknowledge_manually();
    let options = SubscriptionOptions::new(QoS::ExactlyOnce)
        .with_no_local(true)
        .with_retain_as_published(true)
        .with_retain_handling(RetainHandling::DoNotSend);
    let outgoing = match client.subscribe_options("#", options).await {
        Ok(s) => s,
        Err(e) => {
            // Dropping `ready` keeps the listeners closed: a node that
            // cannot forward must not serve as part of the cluster.
            tracing::error!(error = %e, "cluster: cannot subscribe the node's router; not serving");
            return;
        }
    };
    let _ = ready.send(());
    let Inbound { volatile, durable } = inbound;
    let forward = tokio::spawn(forward(
        engine.clone(),
        client.clone(),
        bucket,
        outgoing,
        stop.clone(),
    ));
    let volatile = tokio::spawn(inject_volatile(engine.clone(), volatile, client.clone()));
    let durable = tokio::spawn(inject_durable(engine, durable, client));
    let mut stop = stop;
    let _ = stop.wait_for(|s| *s).await;
    forward.abort();
    volatile.abort();
    durable.abort();
}

/// Durable publishes the router has sent and not yet seen stored, at
/// most. One at a time costs a round trip to JetStream per message (about
/// 1.2k msg/s cross-node in a debug build); a window lets JetStream store
/// them back to back. 256 bounds what is sent again after a failure and
/// what the router holds itself (the core's queue takes the rest, under
/// its slow-consumer policy), far below async-nats's own bound on
/// acknowledgements in flight (5,000, where it would make sends wait).
const IN_FLIGHT: usize = 256;

/// Bytes of durable publishes the router holds in flight, at most (bodies
/// and subjects; one larger message still goes, alone). With 1 KiB
/// messages [`IN_FLIGHT`] binds first (about 300 KiB); with 64 KiB ones
/// 64 fill it, which keeps JetStream as busy (at that size it is bound by
/// bytes, not round trips) while a node's memory stays bounded whatever
/// the message size (256 of NATS's largest, 1 MiB by default, would be
/// 256 MiB).
const IN_FLIGHT_BYTES: usize = 4 * 1024 * 1024;

/// QoS 0 bytes the router hands NATS's client between two flushes, at
/// most. Its publish only queues (2,048 commands, whatever their size):
/// waiting for the flush (the socket write, not a round trip) every this
/// many bytes bounds what the client holds, and makes a router that NATS
/// does not keep up with fall behind in the core, whose queue pushes back
/// on the publishers, instead of growing in memory.
const VOLATILE_FLUSH_BYTES: usize = 1024 * 1024;

/// JetStream's acknowledgement of one durable publish, once sent.
type StoredFuture = Pin<Box<dyn Future<Output = Result<Stored, ClusterError>> + Send>>;

/// A durable message the router sent, and sends again until stored.
struct InFlight {
    topic: ByteStr,
    subject: String,
    /// With its `Nats-Msg-Id`, the same at every try.
    headers: HeaderMap,
    body: bytes::Bytes,
    /// The core's acknowledgement, given once JetStream stored it.
    ack: Option<crate::codec::Packet>,
    /// JetStream's acknowledgement of the latest try.
    stored: StoredFuture,
}

impl InFlight {
    /// What it holds, for [`IN_FLIGHT_BYTES`].
    fn size(&self) -> usize {
        self.body.len() + self.subject.len()
    }
}

/// Sends `f` (again), in the order of the calls; a send that fails at
/// once fails when its acknowledgement is awaited, like one that times
/// out.
async fn send(engine: &Engine, f: &mut InFlight) {
    let sent = engine
        .send_durable(f.subject.clone(), f.headers.clone(), f.body.clone())
        .await;
    f.stored = match sent {
        Ok(sending) => Box::pin(sending.stored()),
        Err(e) => Box::pin(std::future::ready(Err(e))),
    };
}

/// JetStream's acknowledgement of the oldest message in flight (pending
/// while none is).
async fn oldest_stored(window: &mut VecDeque<InFlight>) -> Result<Stored, ClusterError> {
    match window.front_mut() {
        Some(f) => f.stored.as_mut().await,
        None => std::future::pending().await,
    }
}

/// Publishes what this node's core delivers to its router to NATS, in the
/// order the core delivered them: QoS 0 at once on core NATS, QoS 1/2 to
/// the stream with up to [`IN_FLIGHT`] awaiting JetStream's
/// acknowledgement. The core's acknowledgements (which release the
/// publishers') are given in that order too, each once its message and
/// every one before it are stored.
///
/// **Order.** While nothing fails, JetStream stores the messages in the
/// order they were sent (one connection). When an acknowledgement fails
/// (JetStream unreachable, a timeout, a leader election), every message
/// from that one on is sent again, in order, with the same `Nats-Msg-Id`:
/// those JetStream had stored already are dropped as duplicates (within
/// the stream's duplicate window), so each is stored once, and none is
/// acknowledged before it is stored. But one that was lost may now be
/// stored after later ones that were not: after a failure, the stream's
/// order can differ from the core's among the messages that were in flight
/// then (at most [`IN_FLIGHT`]); the order of everything else holds.
async fn forward(
    engine: Arc<Engine>,
    client: InlineClient,
    bucket: Arc<RetainedBucket>,
    mut outgoing: Subscription,
    stop: watch::Receiver<bool>,
) {
    let config = engine.config().clone();
    let (durable, volatile) = (config.durable_prefix(), config.volatile_prefix());
    // Message ids unique across the node's restarts: the node, the start
    // time, a counter.
    let boot = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut seq: u64 = 0;
    let mut window: VecDeque<InFlight> = VecDeque::with_capacity(IN_FLIGHT);
    // The bytes `window` holds (see `IN_FLIGHT_BYTES`).
    let mut held = 0usize;
    // QoS 0 bytes sent since the last flush (see `VOLATILE_FLUSH_BYTES`).
    let mut unflushed = 0usize;
    let mut open = true;
    let mut pause = RETRY_MIN;
    while open || !window.is_empty() {
        tokio::select! {
            // Acknowledgements first: they free room in the window.
            biased;
            stored = oldest_stored(&mut window), if !window.is_empty() => {
                if let Err(e) = stored {
                    let topic = window.front().map(|f| f.topic.clone()).unwrap_or_default();
                    tracing::warn!(topic = %Escaped(&topic), error = %e,
                        in_flight = window.len(), retry_in_ms = pause.as_millis() as u64,
                        "cluster: message not stored by JetStream yet; sending it and those after it again with the same ids");
                    if *stop.borrow() {
                        return;
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(RETRY_MAX);
                    for f in window.iter_mut() {
                        send(&engine, f).await;
                    }
                    continue;
                }
                pause = RETRY_MIN;
                let Some(f) = window.pop_front() else { continue };
                held -= f.size();
                // Stored: the publisher's acknowledgement, which waited
                // for this, may go.
                if let Some(ack) = f.ack {
                    if client.acknowledge(ack).await.is_err() {
                        return;
                    }
                }
            }
            m = outgoing.recv(), if open && window.len() < IN_FLIGHT && held < IN_FLIGHT_BYTES => {
                let Some(mut m) = m else {
                    // The router's subscription ended: what is in flight
                    // is still seen stored and acknowledged.
                    open = false;
                    continue;
                };
                let qos = m.qos;
                let ack = m.ack.take();
                let publisher = m.publisher.take();
                let flow = m.flow.take();
                let publish = as_publish(m);
                let body = envelope::encode(&publish);
                // A retained message is in the retained bucket before it
                // is in the stream, so before its publisher's
                // acknowledgement (see `retained_bucket`).
                if !bucket.write(&publish, &stop).await {
                    return;
                }
                let mut headers = HeaderMap::new();
                headers.insert(ORIGIN, config.node.as_str());
                if let Some(id) = &publisher {
                    headers.insert(PUBLISHER, id.as_str());
                    // Found again by a node adopting the session if this
                    // one dies before the flow's packet id is saved.
                    if let Some((pid, n)) = flow {
                        headers.insert(FLOW, envelope::flow_header(pid, n).as_str());
                    }
                }
                if qos == QoS::AtMostOnce {
                    let subject = subject_of(&volatile, &publish.topic);
                    unflushed += subject.len() + body.len();
                    if let Err(e) = engine
                        .client()
                        .publish_with_headers(subject, headers, body)
                        .await
                    {
                        // QoS 0 is at most once: not retried.
                        tracing::debug!(topic = %Escaped(&publish.topic), error = %e,
                            "cluster: QoS 0 message not sent to NATS");
                    }
                    if unflushed >= VOLATILE_FLUSH_BYTES {
                        unflushed = 0;
                        // Bounded: while NATS is unreachable the flush
                        // waits for the reconnection; QoS 0 goes on being
                        // queued (up to the client's bound) meanwhile.
                        let flush = engine.client().flush();
                        let _ = tokio::time::timeout(config.timeout, flush).await;
                    }
                    continue;
                }
                seq += 1;
                headers.insert(
                    async_nats::header::NATS_MESSAGE_ID,
                    format!("{}-{boot}-{seq}", config.node).as_str(),
                );
                let mut f = InFlight {
                    subject: subject_of(&durable, &publish.topic),
                    topic: publish.topic,
                    headers,
                    body,
                    ack,
                    stored: Box::pin(std::future::pending()),
                };
                send(&engine, &mut f).await;
                held += f.size();
                window.push_back(f);
            }
        }
    }
}

fn as_publish(m: InlineMessage) -> Publish {
    Publish {
        dup: false,
        qos_pid: QosPid::new(m.qos, NonZeroU16::MIN),
        retain: m.retain,
        topic: m.topic,
        payload: m.payload,
        properties: m.properties,
    }
}

/// Whether a message with `headers` was published by this node.
fn ours(config: &ClusterConfig, headers: Option<&HeaderMap>) -> bool {
    headers
        .and_then(|h| h.get(ORIGIN))
        .is_some_and(|v| v.as_str() == config.node)
}

/// Who published a message, as its headers say.
fn origin(headers: Option<&HeaderMap>, seq: Option<u64>) -> Origin {
    Origin {
        client_id: headers
            .and_then(|h| h.get(PUBLISHER))
            .map(|v| v.as_str().into()),
        seq,
    }
}

/// Publishes `publish` into the local core; `Ok` once the core took it
/// (for QoS 1/2: acknowledged it, after its commit), or refused it (a
/// verdict final on this node).
async fn inject(
    client: &InlineClient,
    publish: Publish,
    origin: Origin,
) -> Result<(), InlineError> {
    let topic = publish.topic.clone();
    match client.inject(publish, origin).await {
        Ok(()) => Ok(()),
        Err(InlineError::Refused(code)) => {
            tracing::debug!(topic = %Escaped(&topic), reason = ?code,
                "cluster: message from another node refused here");
            Ok(())
        }
        Err(e) => Err(e),
    }
}

async fn inject_volatile(
    engine: Arc<Engine>,
    mut volatile: async_nats::Subscriber,
    client: InlineClient,
) {
    let config = engine.config();
    let prefix = config.volatile_prefix();
    while let Some(m) = next(&mut volatile).await {
        // A QoS 0 message was delivered here when it was published.
        if ours(config, m.headers.as_ref()) {
            continue;
        }
        match envelope::decode(&prefix, &m.subject, &m.payload) {
            Ok(publish) => {
                let origin = origin(m.headers.as_ref(), None);
                if inject(&client, publish, origin).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cluster: QoS 0 message dropped");
            }
        }
    }
}

/// Stream messages handed to the core and awaiting its acknowledgement at
/// once, at most. One at a time costs a round trip through the core (and
/// with a persistent store, a commit) per message; the core takes them in
/// stream order however many wait, and its acknowledgements come in that
/// order. 256 bounds what the consumer gives again after a crash (every
/// message not acknowledged yet), well within the consumer's own bound on
/// acknowledgements pending (1,000 by default).
const INJECTING: usize = 256;

/// Bytes of stream messages the node holds between NATS and its core, at
/// most: those handed to the core and awaiting its acknowledgement
/// (beyond this, one more goes only once the oldest is acknowledged), and
/// again as much fetched from the consumer ahead of them (see
/// [`subscribe`]). As [`IN_FLIGHT_BYTES`]: the count binds for small
/// messages, this for large ones.
const INJECTING_BYTES: usize = 4 * 1024 * 1024;

/// The core's acknowledgement of one injection.
type InjectedFuture = Pin<Box<dyn Future<Output = Result<(), InlineError>> + Send>>;

/// The core's acknowledgement of the oldest injection waiting (pending
/// while none does).
async fn oldest_injected(
    window: &mut VecDeque<(jetstream::Message, InjectedFuture)>,
) -> Result<(), InlineError> {
    match window.front_mut() {
        Some((_, injected)) => injected.as_mut().await,
        None => std::future::pending().await,
    }
}

/// Injects the stream's messages into the core in stream order, up to
/// [`INJECTING`] awaiting the core's acknowledgement, and acknowledges each
/// to JetStream after the core's, in order.
async fn inject_durable(
    engine: Arc<Engine>,
    mut durable: jetstream::consumer::pull::Stream,
    client: InlineClient,
) {
    let config = engine.config();
    let prefix = config.durable_prefix();
    let mut window: VecDeque<(jetstream::Message, InjectedFuture)> =
        VecDeque::with_capacity(INJECTING);
    // The payload bytes `window` holds (see `INJECTING_BYTES`).
    let mut held = 0usize;
    let mut open = true;
    while open || !window.is_empty() {
        tokio::select! {
            // Acknowledgements first: they free room in the window.
            biased;
            injected = oldest_injected(&mut window), if !window.is_empty() => {
                let Some((m, _)) = window.pop_front() else { continue };
                held -= m.payload.len();
                match injected {
                    Ok(()) => {}
                    Err(InlineError::Refused(code)) => {
                        // A verdict final on this node.
                        tracing::debug!(reason = ?code,
                            "cluster: message from the stream refused here");
                    }
                    // The core stopped: this one and those after it are not
                    // acknowledged, so the consumer gives them again after
                    // the restart.
                    Err(_) => return,
                }
                if let Err(e) = m.ack().await {
                    tracing::warn!(error = %e, "cluster: acknowledging a stream message");
                }
            }
            item = next(&mut durable), if open && window.len() < INJECTING && held < INJECTING_BYTES => {
                let m = match item {
                    Some(Ok(m)) => m,
                    Some(Err(e)) => {
                        // Missed heartbeats and the like: the stream goes on.
                        tracing::warn!(error = %e, "cluster: reading the message stream");
                        continue;
                    }
                    None => {
                        open = false;
                        continue;
                    }
                };
                // This node's own messages too: a QoS 1/2 message is
                // delivered on every node, its origin included, in the
                // stream's order (see `Broker::dispatch`).
                let injected: InjectedFuture =
                    match envelope::decode(&prefix, &m.subject, &m.payload) {
                        Ok(publish) => {
                            let seq = m.info().ok().map(|i| i.stream_sequence);
                            let origin = origin(m.headers.as_ref(), seq);
                            // A subscriber here that falls behind holds the
                            // stream back, as it would a publisher here:
                            // what waits stays in the stream, not in this
                            // node's memory (or past its budget, dropped).
                            client.held_back().await;
                            match client.inject_sent(publish, origin).await {
                                Ok(injected) => Box::pin(injected),
                                // The core stopped (see above).
                                Err(_) => return,
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "cluster: stream message dropped");
                            // Acknowledged in its turn: it will never decode.
                            Box::pin(std::future::ready(Ok(())))
                        }
                    };
                held += m.payload.len();
                window.push_back((m, injected));
            }
        }
    }
    tracing::error!("cluster: the message stream's consumer ended; this node no longer receives QoS 1/2 messages from the others");
}
