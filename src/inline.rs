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

use crate::broker::{ConnId, Event, Outbox};
use crate::clock::Clock;
use crate::codec::{
    ByteStr, Connect, ConnectProperties, Packet, ProtocolVersion, PubResp, Publish,
    PublishProperties, QoS, QosPid, ReasonCode, Subscribe, SubscriptionOptions, Unsubscribe,
    UserProperties,
};
use crate::hooks::{Client, Hooks};
use crate::ingress::{self, Ask, Inbound, ToCore};
use bytes::Bytes;
use std::collections::HashMap;
use std::num::{NonZeroU16, NonZeroU32};
use std::sync::atomic::{AtomicU32, Ordering};
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
pub struct InlineMessage {
    /// Topic name.
    pub topic: ByteStr,
    /// Payload.
    pub payload: Bytes,
    /// QoS it was delivered at.
    pub qos: QoS,
    /// Retain flag (set for retained messages sent on subscribe).
    pub retain: bool,
    /// Properties as published.
    pub properties: PublishProperties,
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
    next_sub_id: AtomicU32,
    subscriptions: Mutex<HashMap<u32, mpsc::Sender<InlineMessage>>>,
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
#[derive(Debug)]
pub struct Subscription {
    filter: ByteStr,
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

    /// Unsubscribes.
    pub async fn unsubscribe(self) -> Result<(), InlineError> {
        self.client.unsubscribe(&self.filter).await
    }
}

/// How many delivered messages an inline subscription buffers before the
/// broker has to wait for the application (then the usual slow-consumer
/// policy applies).
const SUBSCRIPTION_BUFFER: usize = 1024;

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
    ) -> InlineClient {
        let client = Arc::new(Client {
            client_id: ByteStr::from(client_id),
            username: None,
            remote_addr: None,
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
            next_sub_id: AtomicU32::new(1),
            subscriptions: Mutex::new(HashMap::new()),
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
        let (qos_pid, answer) = match qos {
            QoS::AtMostOnce => (QosPid::AtMostOnce, None),
            _ => {
                let (pid, rx) = self.wait_for_answer()?;
                (QosPid::new(qos, pid), Some(rx))
            }
        };
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
        self.inner
            .events
            .send(Event::Publish {
                conn: self.inner.conn,
                publish,
                verdict,
                held: Default::default(),
            })
            .await
            .map_err(|_| InlineError::Stopped)?;
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

    /// Subscribes to `filter`; messages arrive on the returned
    /// [`Subscription`]. One subscription per filter: subscribing to the
    /// same filter again replaces the earlier one, which then receives
    /// nothing more.
    pub async fn subscribe(&self, filter: &str, qos: QoS) -> Result<Subscription, InlineError> {
        if !crate::topic::valid_filter(filter) {
            return Err(InlineError::InvalidTopic);
        }
        let id = self.inner.next_sub_id.fetch_add(1, Ordering::Relaxed);
        let sub_id = NonZeroU32::new(id).ok_or(InlineError::Busy)?;
        let (tx, rx) = mpsc::channel(SUBSCRIPTION_BUFFER);
        lock(&self.inner.subscriptions).insert(id, tx);
        let (pid, answer) = self.wait_for_answer()?;
        let subscribe = Subscribe {
            packet_id: pid,
            filters: vec![(
                ByteStr::from(filter),
                SubscriptionOptions {
                    qos,
                    ..Default::default()
                },
            )],
            subscription_identifier: Some(sub_id),
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
                Some(r) if r.is_success() => Ok(Subscription {
                    filter: ByteStr::from(filter),
                    rx,
                    client: self.clone(),
                }),
                Some(r) => {
                    lock(&self.inner.subscriptions).remove(&id);
                    Err(InlineError::Refused(*r))
                }
                None => Err(InlineError::Refused(ReasonCode::UnspecifiedError)),
            },
            _ => Err(InlineError::Refused(ReasonCode::UnspecifiedError)),
        }
    }

    /// Subscribes and calls `handler` for every message, on a task of its
    /// own, until the broker stops.
    pub async fn subscribe_with<F>(
        &self,
        filter: &str,
        qos: QoS,
        mut handler: F,
    ) -> Result<(), InlineError>
    where
        F: FnMut(InlineMessage) + Send + 'static,
    {
        let mut sub = self.subscribe(filter, qos).await?;
        tokio::spawn(async move {
            while let Some(m) = sub.recv().await {
                handler(m);
            }
        });
        Ok(())
    }

    /// Unsubscribes from `filter`.
    pub async fn unsubscribe(&self, filter: &str) -> Result<(), InlineError> {
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
            let Some(packet) = packet.into_packet() else {
                continue;
            };
            let reply = match packet {
                Packet::Publish(p) => deliver(&inner, p).await,
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
        lock(&inner.subscriptions).clear();
    }
}

fn answer(inner: &Inner, pid: u16, packet: Packet) {
    if let Some(tx) = lock(&inner.waiting).remove(&pid) {
        let _ = tx.send(Ok(packet));
    }
}

/// Hands a message to every subscription it matched; returns the
/// acknowledgement to send.
async fn deliver(inner: &Inner, p: Publish) -> Option<Packet> {
    let message = InlineMessage {
        topic: p.topic,
        payload: p.payload,
        qos: p.qos_pid.qos(),
        retain: p.retain,
        properties: p.properties,
    };
    let targets: Vec<mpsc::Sender<InlineMessage>> = {
        let subs = lock(&inner.subscriptions);
        message
            .properties
            .subscription_identifiers
            .iter()
            .filter_map(|id| subs.get(&id.get()).cloned())
            .collect()
    };
    for tx in targets {
        // Waits when the application is behind: the broker then applies its
        // slow-consumer policy to this client.
        let _ = tx.send(message.clone()).await;
    }
    match p.qos_pid {
        QosPid::AtMostOnce => None,
        QosPid::AtLeastOnce(pid) => Some(Packet::PubAck(PubResp::new(pid))),
        QosPid::ExactlyOnce(pid) => Some(Packet::PubRec(PubResp::new(pid))),
    }
}
