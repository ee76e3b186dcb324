//! The inline client: the host application publishes and subscribes in
//! process, with no socket, through the same routing, retained messages,
//! hooks and persistence as any network client.
//!
//! It is an MQTT 5.0 client whose packets travel over the broker's event
//! channel instead of a socket: a QoS 1 or 2 publish returns once the broker
//! acknowledged it, which with a persistent store means it is committed.
//! The ACL hooks do not judge it unless
//! [`Server::acl_applies_to_inline_client`](crate::Server::acl_applies_to_inline_client)
//! says so.
//!
//! **Several subscriptions to one filter.** The application may subscribe
//! to a filter more than once, each subscription with its own identifier
//! (or none) and its own receiver or handler; each receives every message
//! of the filter once, tagged with its identifier, and unsubscribing one
//! leaves the others. The broker itself holds one subscription per filter
//! for the inline client, as MQTT has it; the inline client multiplexes
//! (see `routes`). Each SUBSCRIBE still goes through the subscribe hooks
//! and the ACL (when it applies to the inline client), and brings the
//! retained messages of the filter to the subscription that asked only.
//!
//! **Counting.** Messages delivered to the inline client count in
//! [`StatsSnapshot::messages_sent`](crate::StatsSnapshot::messages_sent),
//! once per message the broker delivers (however many local subscriptions
//! share it), like a network client's PUBLISH; the byte and packet
//! counters are the network's only. Its publishes count in
//! `messages_received`, as they always have. Several local subscriptions
//! to one filter count as one in `subscriptions`.

mod routes;

use crate::broker::{ConnId, Event, Outbox};
use crate::clock::Clock;
use crate::codec::{
    ByteStr, Connect, ConnectProperties, Packet, ProtocolVersion, PubResp, Publish,
    PublishProperties, QoS, QosPid, ReasonCode, Subscribe, SubscriptionOptions, Unsubscribe,
    UserProperties,
};
use crate::hooks::{Client, Hooks};
use crate::ingress::{self, Ask, Inbound, ToCore};
use crate::link::outbound::Outbound;
use crate::stats::{self, Stats};
use bytes::Bytes;
use routes::Routes;
use std::collections::HashMap;
use std::num::{NonZeroU16, NonZeroU32};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot};

/// Errors from the inline client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InlineError {
    /// The broker refused: the reason code it answered with.
    #[error("refused by the broker: {0:?}")]
    Refused(ReasonCode),
    /// The broker has stopped.
    #[error("the broker is not running")]
    Stopped,
    /// The topic name or filter is not valid.
    #[error("invalid topic name or filter")]
    InvalidTopic,
    /// Too many operations waiting for an answer (65,535).
    #[error("too many operations in flight")]
    Busy,
}

/// A message delivered to an inline subscription.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct InlineMessage {
    /// Topic name.
    pub topic: ByteStr,
    /// Payload.
    pub payload: Bytes,
    /// QoS it was delivered at: the lower of the message's and the
    /// subscription's.
    pub qos: QoS,
    /// Retain flag (set for retained messages sent on subscribe).
    pub retain: bool,
    /// Properties as published; the subscription identifiers are this
    /// subscription's (none, or [`InlineMessage::subscription_id`]).
    pub properties: PublishProperties,
    /// The client id of the publisher: a network client, this or another
    /// inline client, a bridge, or for a will the client whose will it is.
    /// A retained message keeps its publisher's id while the broker holds
    /// it in memory; `None` for one read back from the store (after a
    /// restart, or once evicted from the retained cache), for queued
    /// messages restored at start-up, and for the broker's `$SYS` values.
    pub publisher: Option<ByteStr>,
    /// The identifier the subscription that received it was given
    /// ([`InlineClient::subscribe_id`]); `None` for one without.
    pub subscription_id: Option<NonZeroU32>,
    /// With manual acknowledgements (the cluster router), the PUBACK or
    /// PUBREC to send once the message is taken care of
    /// ([`InlineClient::acknowledge`]).
    pub(crate) ack: Option<Packet>,
    /// For the cluster router: the inbound QoS 2 flow the message is, if
    /// the core numbered it (its packet id and number; see
    /// `Tracked::inbound_flow`).
    pub(crate) flow: Option<(u16, u64)>,
}

/// Options of an inline publish beyond topic, payload and QoS.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PublishOptions {
    /// Retain flag.
    pub retain: bool,
    /// MQTT 5.0 properties (topic alias and subscription identifiers are
    /// ignored).
    pub properties: PublishProperties,
}

type Waiter = oneshot::Sender<Result<Packet, InlineError>>;

struct Inner {
    conn: ConnId,
    /// Closed until the CONNECT is in the broker's queue: nothing may
    /// overtake it (the broker ignores packets of unknown connections).
    connected: tokio::sync::Semaphore,
    client: Arc<Client>,
    events: mpsc::Sender<Event>,
    hooks: Hooks,
    waiting: Mutex<HashMap<u16, Waiter>>,
    next_pid: Mutex<u16>,
    routes: Mutex<Routes>,
    /// Subscribes and unsubscribes one at a time, each until the broker
    /// answers: the local table and the core's subscriptions change in the
    /// same order (an UNSUBSCRIBE of a filter's last local subscription
    /// cannot overtake a new SUBSCRIBE to it).
    changing: tokio::sync::Mutex<()>,
    stats: Arc<Stats>,
    /// Deliveries are acknowledged by the application, not on receipt.
    manual_acks: std::sync::atomic::AtomicBool,
    /// What the broker sends this client, and its asks to hold back (see
    /// [`InlineClient::held_back`]).
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    outbox: Arc<Outbox>,
}

/// A handle to the inline client; cheap to clone.
#[derive(Clone)]
pub struct InlineClient {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for InlineClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InlineClient")
            .field("client_id", &self.inner.client.client_id)
            .finish_non_exhaustive()
    }
}

/// Messages of one inline subscription, in order.
///
/// Dropping it stops its messages; the broker keeps the filter subscribed
/// until [`Subscription::unsubscribe`] or [`InlineClient::unsubscribe`].
#[derive(Debug)]
pub struct Subscription {
    filter: ByteStr,
    id: Option<NonZeroU32>,
    key: u64,
    rx: mpsc::Receiver<InlineMessage>,
    client: InlineClient,
}

impl Subscription {
    /// The next message; `None` once the subscription or the broker ended.
    pub async fn recv(&mut self) -> Option<InlineMessage> {
        self.rx.recv().await
    }

    /// The filter subscribed to.
    pub fn filter(&self) -> &str {
        &self.filter
    }

    /// The identifier it was given, if any.
    pub fn id(&self) -> Option<NonZeroU32> {
        self.id
    }

    /// Calls `handler` for every message, on a task of its own, until the
    /// subscription or the broker ends.
    pub fn spawn_handler<F>(mut self, mut handler: F)
    where
        F: FnMut(InlineMessage) + Send + 'static,
    {
        tokio::spawn(async move {
            while let Some(m) = self.recv().await {
                handler(m);
            }
        });
    }

    /// Unsubscribes this subscription only; other subscriptions to the
    /// same filter go on.
    pub async fn unsubscribe(self) -> Result<(), InlineError> {
        let client = self.client.clone();
        let (filter, key) = (self.filter.clone(), self.key);
        drop(self);
        client
            .unsubscribe_where(&filter, |r| r.remove_key(&filter, key))
            .await
    }
}

/// How many delivered messages an inline subscription buffers before the
/// broker has to wait for the application (then the usual slow-consumer
/// policy applies).
const SUBSCRIPTION_BUFFER: usize = 1024;

/// A publish's acknowledgement from the core, if it has one (`answer`):
/// a refusal is an error.
async fn answered(
    answer: Option<oneshot::Receiver<Result<Packet, InlineError>>>,
) -> Result<(), InlineError> {
    match answer {
        None => Ok(()),
        Some(rx) => match rx.await.map_err(|_| InlineError::Stopped)?? {
            Packet::PubAck(r) | Packet::PubRec(r) | Packet::PubComp(r)
                if !r.reason.is_success() =>
            {
                Err(InlineError::Refused(r.reason))
            }
            _ => Ok(()),
        },
    }
}

impl InlineClient {
    /// Connects an inline client over `events`. Must be called within a
    /// Tokio runtime: a task relays what the broker sends it, at the times
    /// `clock` (the core's) reads.
    pub(crate) fn connect(
        client_id: &str,
        conn: ConnId,
        events: mpsc::Sender<Event>,
        hooks: Hooks,
        clock: Clock,
        stats: Arc<Stats>,
    ) -> InlineClient {
        let client = Arc::new(Client {
            client_id: ByteStr::from(client_id),
            username: None,
            remote_addr: None,
            certificate: None,
            protocol: ProtocolVersion::V5,
            inline: true,
        });
        let outbox = Arc::new(Outbox::new(ProtocolVersion::V5, clock.mono_ms()));
        let inner = Arc::new(Inner {
            conn,
            connected: tokio::sync::Semaphore::new(0),
            client: client.clone(),
            events: events.clone(),
            hooks,
            waiting: Mutex::new(HashMap::new()),
            next_pid: Mutex::new(0),
            routes: Mutex::new(Routes::default()),
            changing: tokio::sync::Mutex::new(()),
            stats,
            manual_acks: Default::default(),
            outbox: outbox.clone(),
        });
        let connect = Connect {
            protocol: ProtocolVersion::V5,
            clean_start: true,
            keep_alive: 0,
            client_id: client.client_id.clone(),
            will: None,
            username: None,
            password: None,
            properties: ConnectProperties {
                receive_maximum: NonZeroU16::new(u16::MAX),
                ..Default::default()
            },
        };
        let relay = Arc::downgrade(&inner);
        let gate = inner.clone();
        let outbox_for_task = outbox.clone();
        tokio::spawn(async move {
            let sent = events
                .send(Event::Connect {
                    conn,
                    outbox,
                    connect: Box::new(connect),
                    client,
                    enhanced_auth: false,
                    id_assigned: false,
                })
                .await;
            if sent.is_err() {
                gate.connected.close();
                return;
            }
            gate.connected
                .add_permits(tokio::sync::Semaphore::MAX_PERMITS);
            drop(gate);
            relay_loop(relay, outbox_for_task, clock).await;
        });
        InlineClient { inner }
    }

    /// From now on, a QoS 1/2 delivery is acknowledged to the broker only
    /// when [`InlineClient::acknowledge`] says so: the cluster router
    /// acknowledges once the cluster's engine stored the message (the
    /// publisher's acknowledgement waits for that). Set before subscribing.
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    pub(crate) fn acknowledge_manually(&self) {
        self.inner
            .manual_acks
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Acknowledges a delivery (with manual acknowledgements).
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    pub(crate) async fn acknowledge(&self, ack: Packet) -> Result<(), InlineError> {
        self.send(ack).await
    }

    /// Hands `publish`, which the cluster's router pulled for share group
    /// `group` on `filter`, to one connected member of the group on this
    /// node (see `broker::groups`), whatever the subscriptions and without
    /// the publish hooks (the message was judged where it was published).
    /// Returns [`ReasonCode::Success`] once the core has it queued: at most
    /// once, no outcome awaited (QoS 0).
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    pub(crate) async fn deliver_to_group(
        &self,
        group: &str,
        filter: &str,
        publish: Publish,
    ) -> Result<ReasonCode, InlineError> {
        self.group_publish(group, filter, publish, None, false)
            .await
            .map(|_| ReasonCode::Success)
    }

    /// [`InlineClient::deliver_to_group`] with an outcome, in two steps for
    /// the router's window of group deliveries: hands the message to the
    /// core now (in the order of these calls) and returns the wait for its
    /// outcome (a `broker::group_outcome` reason code, given once what the
    /// delivery stored is committed), to await later while more are handed
    /// over. With `last` (the router will not give the message back again),
    /// a message that no connected member here may receive is counted as
    /// dropped by the core.
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    pub(crate) async fn deliver_to_group_sent(
        &self,
        group: &str,
        filter: &str,
        publish: Publish,
        last: bool,
    ) -> Result<
        impl std::future::Future<Output = Result<ReasonCode, InlineError>> + Send + 'static,
        InlineError,
    > {
        let (pid, rx) = self.wait_for_answer()?;
        self.group_publish(group, filter, publish, Some(pid), last)
            .await?;
        Ok(async move {
            match rx.await.map_err(|_| InlineError::Stopped)?? {
                Packet::PubAck(r) => Ok(r.reason),
                _ => Ok(ReasonCode::UnspecifiedError),
            }
        })
    }

    /// Sends the core a [`Event::GroupPublish`], with packet id `pid` when
    /// the outcome is wanted.
    async fn group_publish(
        &self,
        group: &str,
        filter: &str,
        publish: Publish,
        pid: Option<NonZeroU16>,
        last: bool,
    ) -> Result<(), InlineError> {
        let qos = publish.qos_pid.qos();
        let qos_pid = match pid {
            Some(pid) => QosPid::new(QoS::AtLeastOnce, pid),
            None => QosPid::AtMostOnce,
        };
        let publish = Publish {
            qos_pid,
            dup: false,
            ..publish
        };
        self.ready().await?;
        self.inner
            .events
            .send(Event::GroupPublish {
                conn: self.inner.conn,
                publish,
                qos,
                group: ByteStr::from(group),
                filter: ByteStr::from(filter),
                last,
            })
            .await
            .map_err(|_| InlineError::Stopped)
    }

    /// The client identifier.
    pub fn client_id(&self) -> &str {
        &self.inner.client.client_id
    }

    /// Waits until the CONNECT is queued ahead of anything this client sends.
    async fn ready(&self) -> Result<(), InlineError> {
        self.inner
            .connected
            .acquire()
            .await
            .map(drop)
            .map_err(|_| InlineError::Stopped)
    }

    async fn send(&self, packet: Packet) -> Result<(), InlineError> {
        self.ready().await?;
        self.inner
            .events
            .send(Event::Packet {
                conn: self.inner.conn,
                packet,
            })
            .await
            .map_err(|_| InlineError::Stopped)
    }

    /// Reserves a packet id and a slot for the broker's answer.
    fn wait_for_answer(
        &self,
    ) -> Result<(NonZeroU16, oneshot::Receiver<Result<Packet, InlineError>>), InlineError> {
        let mut waiting = lock(&self.inner.waiting);
        if self.inner.connected.is_closed() {
            return Err(InlineError::Stopped);
        }
        if waiting.len() >= usize::from(u16::MAX) {
            return Err(InlineError::Busy);
        }
        let mut next = lock(&self.inner.next_pid);
        let pid = loop {
            *next = next.wrapping_add(1);
            if let Some(pid) = NonZeroU16::new(*next) {
                if !waiting.contains_key(&pid.get()) {
                    break pid;
                }
            }
        };
        let (tx, rx) = oneshot::channel();
        waiting.insert(pid.get(), tx);
        Ok((pid, rx))
    }

    /// Publishes a message. For QoS 1 and 2 it returns once the broker has
    /// acknowledged it (with a persistent store: once it is committed). A
    /// refusal by the hooks (an ACL, a publish hook) is
    /// [`InlineError::Refused`], at QoS 0 too.
    pub async fn publish(
        &self,
        topic: &str,
        payload: impl Into<Bytes>,
        qos: QoS,
    ) -> Result<(), InlineError> {
        self.publish_with(topic, payload, qos, PublishOptions::default())
            .await
    }

    /// Publishes a message with a retain flag and properties.
    pub async fn publish_with(
        &self,
        topic: &str,
        payload: impl Into<Bytes>,
        qos: QoS,
        options: PublishOptions,
    ) -> Result<(), InlineError> {
        if !crate::topic::valid_name(topic) {
            return Err(InlineError::InvalidTopic);
        }
        let mut properties = options.properties;
        properties.topic_alias = None;
        properties.subscription_identifiers.clear();
        let (qos_pid, answer) = self.packet_id_for(qos)?;
        let publish = Publish {
            dup: false,
            qos_pid,
            retain: options.retain,
            topic: ByteStr::from(topic),
            payload: payload.into(),
            properties,
        };
        // The ingress's rule, as for a network client: the publish hooks
        // (ACL, interception) when any hook is installed.
        let (publish, verdict) = match ingress::publish(publish, &self.inner.hooks) {
            Inbound::Ask(Ask::Publish(mut publish)) => {
                let verdict = self
                    .inner
                    .hooks
                    .publish(&self.inner.client, &mut publish)
                    .await;
                (publish, verdict)
            }
            Inbound::Core(ToCore::Publish(publish, verdict)) => (publish, verdict),
            other => unreachable!("a PUBLISH goes on as a PUBLISH: {other:?}"),
        };
        if let (QoS::AtMostOnce, crate::hooks::PublishVerdict::Refuse(code)) = (qos, verdict) {
            // No acknowledgement will say so at QoS 0: the caller hears it
            // here (the core would only drop it).
            return Err(InlineError::Refused(code));
        }
        self.ready().await?;
        let event = Event::Publish {
            conn: self.inner.conn,
            publish,
            verdict,
            held: Default::default(),
        };
        self.submit(event, answer).await
    }

    /// Injects a message this node's cluster router read from the cluster
    /// (see `Event::Inject`), without the publish hooks: they judged it
    /// where it was published. `Ok` once the core took it (at QoS 1/2:
    /// acknowledged it, after its commit).
    #[cfg(feature = "cluster")]
    pub(crate) async fn inject(
        &self,
        publish: Publish,
        origin: crate::broker::Origin,
    ) -> Result<(), InlineError> {
        self.inject_sent(publish, origin).await?.await
    }

    /// [`InlineClient::inject`] in two steps, for the cluster router's
    /// pipeline: hands the message to the core now (the core takes
    /// injections in the order of these calls) and returns the wait for its
    /// acknowledgement, to await later, while more are handed over.
    #[cfg(feature = "cluster")]
    pub(crate) async fn inject_sent(
        &self,
        mut publish: Publish,
        origin: crate::broker::Origin,
    ) -> Result<
        impl std::future::Future<Output = Result<(), InlineError>> + Send + 'static,
        InlineError,
    > {
        let (qos_pid, answer) = self.packet_id_for(publish.qos_pid.qos())?;
        publish.qos_pid = qos_pid;
        self.ready().await?;
        let event = Event::Inject {
            conn: self.inner.conn,
            publish,
            origin: Box::new(origin),
        };
        self.inner
            .events
            .send(event)
            .await
            .map_err(|_| InlineError::Stopped)?;
        Ok(answered(answer))
    }

    /// Waits while the core asks this client to hold back, as a network
    /// client's reader waits before its next packet (`Outbox::pause_bound`):
    /// for the cluster router, whose injections the core pauses when a
    /// subscriber here falls behind (the stream keeps what waits). Each
    /// pause is bounded, as a reader's: a subscriber that stays behind
    /// runs out its episode and pauses nobody (`Session::block`).
    #[cfg(feature = "cluster")]
    pub(crate) async fn held_back(&self) {
        /// How often a pause is looked at: the outbox wakes its one
        /// consumer, the relay task, not this one.
        const LOOK: std::time::Duration = std::time::Duration::from_millis(1);
        let outbox = &self.inner.outbox;
        let Some(bound) = outbox.pause_bound() else {
            return;
        };
        outbox.watch_brief_pause();
        let mut until = tokio::time::Instant::now() + bound;
        while outbox.reads_paused() {
            if tokio::time::Instant::now() < until {
                tokio::time::sleep(LOOK).await;
            } else if outbox.brief_pause_renewed() {
                until = tokio::time::Instant::now() + outbox.brief_bound();
            } else {
                break;
            }
        }
        outbox.end_brief_pause();
    }

    /// The QoS and packet id for a publish at `qos`, and where its
    /// acknowledgement will arrive (none at QoS 0).
    #[allow(clippy::type_complexity)]
    fn packet_id_for(
        &self,
        qos: QoS,
    ) -> Result<
        (
            QosPid,
            Option<oneshot::Receiver<Result<Packet, InlineError>>>,
        ),
        InlineError,
    > {
        Ok(match qos {
            QoS::AtMostOnce => (QosPid::AtMostOnce, None),
            _ => {
                let (pid, rx) = self.wait_for_answer()?;
                (QosPid::new(qos, pid), Some(rx))
            }
        })
    }

    /// Sends a publish `event` to the core and waits for its
    /// acknowledgement, if it has one: a refusal is an error.
    async fn submit(
        &self,
        event: Event,
        answer: Option<oneshot::Receiver<Result<Packet, InlineError>>>,
    ) -> Result<(), InlineError> {
        self.inner
            .events
            .send(event)
            .await
            .map_err(|_| InlineError::Stopped)?;
        answered(answer).await
    }

    /// Subscribes to `filter`; messages arrive on the returned
    /// [`Subscription`]. Subscribing to a filter again adds a subscription:
    /// each receives every message of the filter once.
    pub async fn subscribe(&self, filter: &str, qos: QoS) -> Result<Subscription, InlineError> {
        self.subscribe_as(filter, SubscriptionOptions::new(qos), None)
            .await
    }

    /// Subscribes to `filter` with a subscription identifier, which every
    /// message it receives carries ([`InlineMessage::subscription_id`]).
    /// Identifiers are the application's labels: any but 0, and several
    /// subscriptions may share one. [`InlineClient::unsubscribe_id`] ends
    /// the subscriptions of a filter with a given identifier.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// use roost::codec::QoS;
    /// use std::num::NonZeroU32;
    /// let server = roost::Server::new(roost::Options::default());
    /// let app = server.inline_client("app");
    /// let (audit, alarms) = (NonZeroU32::new(1).unwrap(), NonZeroU32::new(2).unwrap());
    /// app.subscribe_id("plant/#", QoS::AtLeastOnce, audit).await?
    ///     .spawn_handler(|m| println!("audit: {} from {:?}", m.topic, m.publisher));
    /// let mut urgent = app.subscribe_id("plant/#", QoS::AtLeastOnce, alarms).await?;
    /// // Both get every message of plant/#; this ends the audit one only.
    /// app.unsubscribe_id("plant/#", audit).await?;
    /// # Ok(()) }
    /// ```
    pub async fn subscribe_id(
        &self,
        filter: &str,
        qos: QoS,
        id: NonZeroU32,
    ) -> Result<Subscription, InlineError> {
        self.subscribe_as(filter, SubscriptionOptions::new(qos), Some(id))
            .await
    }

    /// Subscribes with MQTT 5.0 subscription options (No Local, Retain As
    /// Published, Retain Handling): the cluster's router needs them.
    /// Several local subscriptions to one filter share the broker's one
    /// subscription, so the options of the first one hold for all.
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    pub(crate) async fn subscribe_options(
        &self,
        filter: &str,
        options: SubscriptionOptions,
    ) -> Result<Subscription, InlineError> {
        self.subscribe_as(filter, options, None).await
    }

    async fn subscribe_as(
        &self,
        filter: &str,
        options: SubscriptionOptions,
        id: Option<NonZeroU32>,
    ) -> Result<Subscription, InlineError> {
        let qos = options.qos;
        if !crate::topic::valid_filter(filter) {
            return Err(InlineError::InvalidTopic);
        }
        let filter = ByteStr::from(filter);
        let _one_at_a_time = self.inner.changing.lock().await;
        let (pid, answer) = self.wait_for_answer()?;
        let (tx, rx) = mpsc::channel(SUBSCRIPTION_BUFFER);
        let added = lock(&self.inner.routes).add(&filter, id, qos, tx);
        let refused = |code| {
            lock(&self.inner.routes).refused(&filter, added.key, added.core_id);
            Err(InlineError::Refused(code))
        };
        let subscribe = Subscribe {
            packet_id: pid,
            filters: vec![(
                filter.clone(),
                SubscriptionOptions {
                    qos: added.qos,
                    ..options
                },
            )],
            subscription_identifier: Some(added.core_id),
            user_properties: UserProperties::new(),
        };
        // The ingress's rule, as for a network client: the subscribe hooks
        // (interception, ACL) when any hook is installed.
        let subscribe = match ingress::subscribe(subscribe, &self.inner.hooks) {
            Inbound::Ask(Ask::Subscribe(mut subscribe)) => {
                self.inner
                    .hooks
                    .subscribe(&self.inner.client, &mut subscribe.filters)
                    .await;
                subscribe
            }
            Inbound::Core(ToCore::Subscribe(subscribe)) => subscribe,
            other => unreachable!("a SUBSCRIBE goes on as a SUBSCRIBE: {other:?}"),
        };
        let event = Event::Subscribe {
            conn: self.inner.conn,
            subscribe,
        };
        self.ready().await?;
        self.inner
            .events
            .send(event)
            .await
            .map_err(|_| InlineError::Stopped)?;
        match answer.await.map_err(|_| InlineError::Stopped)?? {
            Packet::SubAck(ack) => match ack.reasons.first() {
                Some(r) if r.is_success() => {
                    lock(&self.inner.routes).acknowledged(&filter, added.core_id);
                    Ok(Subscription {
                        filter,
                        id,
                        key: added.key,
                        rx,
                        client: self.clone(),
                    })
                }
                Some(r) => refused(*r),
                None => refused(ReasonCode::UnspecifiedError),
            },
            _ => refused(ReasonCode::UnspecifiedError),
        }
    }

    /// Subscribes and calls `handler` for every message, on a task of its
    /// own, until the subscription or the broker ends. With an
    /// identifier: `subscribe_id(..).await?.spawn_handler(handler)`.
    pub async fn subscribe_with<F>(
        &self,
        filter: &str,
        qos: QoS,
        handler: F,
    ) -> Result<(), InlineError>
    where
        F: FnMut(InlineMessage) + Send + 'static,
    {
        self.subscribe(filter, qos).await?.spawn_handler(handler);
        Ok(())
    }

    /// Unsubscribes from `filter`: every subscription to it ends.
    pub async fn unsubscribe(&self, filter: &str) -> Result<(), InlineError> {
        self.unsubscribe_where(filter, |r| {
            r.remove_filter(filter);
            true
        })
        .await
    }

    /// Ends the subscriptions to `filter` with identifier `id`; the
    /// filter's other subscriptions go on. Nothing to end is no error.
    pub async fn unsubscribe_id(&self, filter: &str, id: NonZeroU32) -> Result<(), InlineError> {
        self.unsubscribe_where(filter, |r| r.remove_id(filter, id))
            .await
    }

    /// Removes local subscriptions with `remove`, which says whether the
    /// filter has none left: then the broker's subscription ends too.
    async fn unsubscribe_where(
        &self,
        filter: &str,
        remove: impl FnOnce(&mut Routes) -> bool,
    ) -> Result<(), InlineError> {
        let _one_at_a_time = self.inner.changing.lock().await;
        if !remove(&mut lock(&self.inner.routes)) {
            return Ok(());
        }
        let (pid, answer) = self.wait_for_answer()?;
        self.send(Packet::Unsubscribe(Unsubscribe {
            packet_id: pid,
            filters: vec![ByteStr::from(filter)],
            user_properties: UserProperties::new(),
        }))
        .await?;
        match answer.await.map_err(|_| InlineError::Stopped)?? {
            Packet::UnsubAck(ack) => match ack.reasons.first() {
                Some(r) if !r.is_success() => Err(InlineError::Refused(*r)),
                _ => Ok(()),
            },
            _ => Ok(()),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Each critical section is a single map operation; a poisoned lock
    // holds a consistent map.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Relays what the broker sends the inline client: answers to whoever
/// waits for them, messages to their subscriptions (acknowledged as an MQTT
/// client would).
async fn relay_loop(inner: std::sync::Weak<Inner>, outbox: Arc<Outbox>, clock: Clock) {
    let mut batch = std::collections::VecDeque::new();
    while outbox.drain(|| clock.now_ms(), &mut batch).await {
        let Some(inner) = inner.upgrade() else { return };
        for packet in batch.drain(..) {
            // The publisher's id is the shared message's, which the packet
            // form does not carry.
            let (publisher, flow) = match &packet {
                Outbound::Deliver(d) => (d.msg.publisher_id.clone(), d.msg.inbound_flow()),
                _ => (None, None),
            };
            let Some(packet) = packet.into_packet() else {
                continue;
            };
            let reply = match packet {
                Packet::Publish(p) => {
                    stats::add(&inner.stats.messages_sent, 1);
                    deliver(&inner, p, publisher, flow).await
                }
                Packet::PubRec(r) if r.reason.is_success() => {
                    // Our QoS 2 publish: release it; the caller waits for PUBCOMP.
                    Some(Packet::PubRel(PubResp::new(r.packet_id)))
                }
                Packet::PubAck(ref r) | Packet::PubRec(ref r) | Packet::PubComp(ref r) => {
                    answer(&inner, r.packet_id.get(), packet.clone());
                    None
                }
                Packet::SubAck(ref a) => {
                    answer(&inner, a.packet_id.get(), packet.clone());
                    None
                }
                Packet::UnsubAck(ref a) => {
                    answer(&inner, a.packet_id.get(), packet.clone());
                    None
                }
                Packet::PubRel(r) => Some(Packet::PubComp(PubResp::new(r.packet_id))),
                _ => None,
            };
            if let Some(packet) = reply {
                let event = Event::Packet {
                    conn: inner.conn,
                    packet,
                };
                if inner.events.send(event).await.is_err() {
                    return;
                }
            }
        }
    }
    // The broker closed the connection: nobody will answer any more.
    if let Some(inner) = inner.upgrade() {
        inner.connected.close();
        lock(&inner.waiting).clear();
        lock(&inner.routes).clear();
    }
}

fn answer(inner: &Inner, pid: u16, packet: Packet) {
    if let Some(tx) = lock(&inner.waiting).remove(&pid) {
        let _ = tx.send(Ok(packet));
    }
}

/// Hands a message to every local subscription it is for (see `routes`),
/// once each; returns the acknowledgement to send.
async fn deliver(
    inner: &Inner,
    p: Publish,
    publisher: Option<ByteStr>,
    flow: Option<(u16, u64)>,
) -> Option<Packet> {
    let qos = p.qos_pid.qos();
    let reply = match p.qos_pid {
        QosPid::AtMostOnce => None,
        QosPid::AtLeastOnce(pid) => Some(Packet::PubAck(PubResp::new(pid))),
        QosPid::ExactlyOnce(pid) => Some(Packet::PubRec(PubResp::new(pid))),
    };
    let manual = inner.manual_acks.load(std::sync::atomic::Ordering::Relaxed);
    let targets = lock(&inner.routes).targets(&p.properties.subscription_identifiers, p.retain);
    let mut properties = p.properties;
    properties.subscription_identifiers.clear();
    // Whether a subscription took the acknowledgement (manual ones).
    let mut delivered = false;
    for t in targets {
        let mut properties = properties.clone();
        properties.subscription_identifiers.extend(t.id);
        let message = InlineMessage {
            topic: p.topic.clone(),
            payload: p.payload.clone(),
            qos: qos.min(t.qos),
            retain: p.retain,
            properties,
            publisher: publisher.clone(),
            subscription_id: t.id,
            ack: reply.clone().filter(|_| manual && !delivered),
            flow,
        };
        // Waits when the application is behind: the broker then applies its
        // slow-consumer policy to this client.
        if t.tx.send(message).await.is_err() {
            // Its receiver was dropped without unsubscribing.
            lock(&inner.routes).remove_key(&t.filter, t.key);
        } else {
            delivered = true;
        }
    }
    // With manual acknowledgements, the one subscription acknowledges (a
    // message that found no subscription is acknowledged here, or the
    // broker would wait for it forever).
    reply.filter(|_| !manual || !delivered)
}
