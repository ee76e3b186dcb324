//! Hooks: how the host application takes part in what the broker does.
//!
//! Three small traits, each with default methods that do nothing (or
//! allow), so an implementation writes only what it needs:
//!
//! - [`AuthHook`]: refuse a CONNECT, authenticate it (may do I/O, such as a
//!   database lookup: the methods return futures and run in the
//!   connection's own task, never blocking the broker).
//! - [`AclHook`]: may this client publish to, subscribe to, or receive a
//!   topic (publish and subscribe checks are async, in the connection's
//!   task; the per-delivery check is synchronous, on the broker core).
//! - [`EventHook`]: notifications of everything that happens, and the
//!   points where a publish, a subscription or a will may be changed.
//!   Publish and subscribe interception runs in the connection's task;
//!   every other event runs on the broker core, so it must be quick: hand
//!   slow work to a channel.
//!
//! Hooks are called in the order they were added. How several combine:
//!
//! | point | rule |
//! | --- | --- |
//! | [`AuthHook::on_connect`] | each in turn; the first refusal refuses |
//! | [`AuthHook::authenticate`], every [`AclHook`] check | the first hook that does not [`Decision::Defer`] decides; if all defer, the answer is allow |
//! | [`EventHook::on_publish`], [`EventHook::on_subscribe`], [`EventHook::on_will`] | each sees the previous one's changes; the first refusal stops the chain |
//! | notifications | every hook, in order |
//!
//! With no hooks added, none of this costs anything: every point checks an
//! empty list first.

mod allow_all;
#[cfg(feature = "ledger")]
mod ledger;

pub use allow_all::AllowAll;
#[cfg(feature = "ledger")]
pub use ledger::{
    hash_password, hash_password_with_cost, Ledger, LedgerError, LedgerLocation, SharedLedger,
    DEFAULT_BCRYPT_COST,
};

use crate::codec::{
    ByteStr, Connect, ProtocolVersion, Publish, QoS, ReasonCode, SubscriptionOptions,
};
use crate::escape::Escaped;
use crate::message::Message;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

/// A boxed future, as hook methods that may do I/O return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

fn ready<'a, T: Send + 'a>(value: T) -> BoxFuture<'a, T> {
    Box::pin(std::future::ready(value))
}

/// Who a client is, as hooks see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    /// Client identifier (the assigned one, if the broker assigned it).
    pub client_id: ByteStr,
    /// User name from CONNECT (or from the TLS client certificate).
    pub username: Option<ByteStr>,
    /// The peer's address; `None` for the inline client.
    pub remote_addr: Option<SocketAddr>,
    /// The subject of the TLS client certificate it presented
    /// (`CN=dev-17,O=Fleet`), if any.
    pub certificate: Option<Arc<str>>,
    /// Protocol version.
    pub protocol: ProtocolVersion,
    /// True for the in-process inline client.
    pub inline: bool,
}

/// An answer from an authentication or ACL hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Allow, and stop asking later hooks.
    Allow,
    /// Refuse, and stop asking later hooks.
    Deny,
    /// No opinion: ask the next hook.
    Defer,
}

/// One step of enhanced authentication (MQTT 5.0 section 4.12).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthStep {
    /// Authenticated; the data (if any) goes back in CONNACK (or in the
    /// final AUTH of a re-authentication).
    Success(Option<bytes::Bytes>),
    /// Send this challenge to the client in AUTH 0x18 and call again with
    /// its answer.
    Continue(bytes::Bytes),
    /// Refuse with this reason code (0x80 or above).
    Fail(ReasonCode),
    /// This hook does not know the method: ask the next one.
    Unsupported,
}

/// What an [`EventHook::on_publish`] decides for a PUBLISH.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishVerdict {
    /// Route it (as possibly modified).
    Deliver,
    /// Refuse it: a 5.0 publisher's PUBACK/PUBREC carries this reason code
    /// (0x80 or above); a 3.x publisher is acknowledged as usual.
    Refuse(ReasonCode),
    /// Acknowledge it as accepted, but deliver it to nobody.
    Swallow,
}

/// Why a message did not reach a subscriber. Non-exhaustive: new limits
/// (a full disk, say) bring new reasons, and a hook's `match` should not
/// stop compiling for that.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DropReason {
    /// The session's queue was full (`limits.maximum_queued_messages`).
    QueueFull,
    /// The client was not reading fast enough (`limits.maximum_pending_writes`).
    SlowClient,
    /// Larger than the client's Maximum Packet Size.
    TooLarge,
    /// Its Message Expiry Interval passed before delivery.
    Expired,
    /// The memory for queued messages (`memory.budget`) was used up, and
    /// the session has no store to hold the message instead (the in-memory
    /// backend, or a session that ends with its connection).
    MemoryBudget,
    /// Queued or in flight for the client, which may no longer receive it
    /// ([`AclHook::can_receive`] refused it at delivery: the ACL changed,
    /// or the session is resumed by a client the ACL judges differently).
    NotAuthorized,
}

/// Authentication: who may connect.
pub trait AuthHook: Send + Sync + 'static {
    /// A CONNECT arrived. Return a reason code (0x80 or above) to refuse it;
    /// the CONNECT may be changed (for instance its client id).
    fn on_connect<'a>(
        &'a self,
        client: &'a Client,
        connect: &'a mut Connect,
    ) -> BoxFuture<'a, Result<(), ReasonCode>> {
        let _ = (client, connect);
        ready(Ok(()))
    }

    /// Enhanced authentication: a step of the exchange for `method`, with
    /// the client's data from its CONNECT or its latest AUTH packet. Used
    /// at CONNECT and for re-authentication; a client whose CONNECT names a
    /// method no hook supports gets CONNACK 0x8C. A client authenticated
    /// this way skips [`AuthHook::authenticate`].
    fn enhanced_auth<'a>(
        &'a self,
        client: &'a Client,
        method: &'a str,
        data: Option<&'a [u8]>,
    ) -> BoxFuture<'a, AuthStep> {
        let _ = (client, method, data);
        ready(AuthStep::Unsupported)
    }

    /// May this client connect with these credentials? A refusal answers
    /// CONNACK 0x86 (bad user name or password; 3.x return code 4).
    fn authenticate<'a>(
        &'a self,
        client: &'a Client,
        connect: &'a Connect,
    ) -> BoxFuture<'a, Decision> {
        let _ = (client, connect);
        ready(Decision::Defer)
    }
}

/// Authorisation: which topics a client may use.
pub trait AclHook: Send + Sync + 'static {
    /// May `client` publish to `topic`? Asked for every PUBLISH, and for a
    /// will: at CONNECT (a refusal answers CONNACK 0x87, 3.x return code
    /// 5) and again when it fires, on the broker core. There the future is
    /// polled once: if it is not ready at once, the CONNECT-time answer
    /// stands (a will topic an [`EventHook::on_will`] chose is refused).
    fn can_publish<'a>(&'a self, client: &'a Client, topic: &'a str) -> BoxFuture<'a, Decision> {
        let _ = (client, topic);
        ready(Decision::Defer)
    }

    /// May `client` subscribe to `filter`? A refusal answers SUBACK 0x87
    /// (0x80 for 3.x) for that filter.
    fn can_subscribe<'a>(&'a self, client: &'a Client, filter: &'a str) -> BoxFuture<'a, Decision> {
        let _ = (client, filter);
        ready(Decision::Defer)
    }

    /// May `client` receive `message`? Called for every delivery, on the
    /// broker core: keep it quick and non-blocking.
    fn can_receive(&self, client: &Client, message: &Message) -> Decision {
        let _ = (client, message);
        Decision::Defer
    }
}

/// Notifications, and the points where the broker's work may be changed.
#[allow(unused_variables)]
pub trait EventHook: Send + Sync + 'static {
    /// The server started serving.
    fn on_started(&self) {}
    /// The server stopped (after the store was flushed).
    fn on_stopped(&self) {}
    /// A client's CONNECT was accepted and its session is ready.
    fn on_session_established(&self, client: &Client, session_present: bool) {}
    /// A client's connection ended: `reason` is the DISCONNECT reason (the
    /// client's, or the broker's if it closed the connection), `None` if the
    /// connection just dropped; `session_ends` says whether the session
    /// ends with it (otherwise it waits for the client, up to its expiry).
    fn on_disconnect(&self, client: &Client, reason: Option<ReasonCode>, session_ends: bool) {}
    /// A SUBSCRIBE's filters, which may be changed; set an entry to
    /// `Err(code)` to refuse that filter (0x80 or above).
    fn on_subscribe(
        &self,
        client: &Client,
        filters: &mut [(ByteStr, SubscriptionOptions, Result<(), ReasonCode>)],
    ) {
    }
    /// Filters were subscribed: one reason code per filter, as in SUBACK.
    fn on_subscribed(&self, client: &Client, filters: &[(ByteStr, ReasonCode)]) {}
    /// An UNSUBSCRIBE's filters, which may be changed (not added or
    /// removed: the UNSUBACK answers each one).
    fn on_unsubscribe(&self, client: &Client, filters: &mut [ByteStr]) {}
    /// Filters were unsubscribed (those that existed).
    fn on_unsubscribed(&self, client: &Client, filters: &[ByteStr]) {}
    /// A PUBLISH from a client, before routing. Its topic, payload,
    /// properties and retain flag may be changed in place; its QoS and
    /// packet id may not (the acknowledgement flow follows the packet as
    /// the client sent it), and changes to them are undone.
    fn on_publish(&self, client: &Client, publish: &mut Publish) -> PublishVerdict {
        PublishVerdict::Deliver
    }
    /// A message was routed to `receivers` sessions.
    fn on_published(&self, client: Option<&Client>, message: &Message, receivers: usize) {}
    /// The retained message of `topic` was stored (`Some`) or cleared (`None`).
    fn on_retained(&self, topic: &str, message: Option<&Message>) {}
    /// A retained message expired and was removed.
    fn on_retained_expired(&self, topic: &str) {}
    /// A QoS 1 or 2 delivery to `client` completed (PUBACK or PUBCOMP).
    fn on_qos_complete(&self, client: &Client, packet_id: u16, qos: QoS) {}
    /// A message for `client_id` was dropped.
    fn on_dropped(&self, client_id: &str, message: &Message, reason: DropReason) {}
    /// A will is about to be published; it may be changed (the publish
    /// ACL then judges it as changed). Return false to cancel it.
    fn on_will(&self, client_id: &str, will: &mut WillMessage) -> bool {
        true
    }
    /// A will was published.
    fn on_will_sent(&self, client_id: &str, will: &Message) {}
    /// A session expired (its client did not come back in time).
    fn on_session_expired(&self, client_id: &str) {}
    /// Bridge `name`'s remote broker accepted its connection.
    fn on_bridge_connected(&self, name: &str) {}
    /// Bridge `name`'s connection to its remote ended, for `reason` (it
    /// reconnects with backoff).
    fn on_bridge_disconnected(&self, name: &str, reason: &str) {}
}

/// A will as [`EventHook::on_will`] may change it.
#[derive(Debug, Clone, PartialEq)]
pub struct WillMessage {
    /// Topic.
    pub topic: ByteStr,
    /// Payload.
    pub payload: bytes::Bytes,
    /// QoS.
    pub qos: QoS,
    /// Retain flag.
    pub retain: bool,
}

/// The hooks added to a server, in order.
#[derive(Clone, Default)]
pub(crate) struct Hooks {
    pub(crate) auth: Vec<Arc<dyn AuthHook>>,
    pub(crate) acl: Vec<Arc<dyn AclHook>>,
    pub(crate) events: Vec<Arc<dyn EventHook>>,
    /// Whether the inline client is subject to the ACL hooks.
    pub(crate) acl_inline: bool,
}

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hooks")
            .field("auth", &self.auth.len())
            .field("acl", &self.acl.len())
            .field("events", &self.events.len())
            .field("acl_inline", &self.acl_inline)
            .finish()
    }
}

fn first_decision(decisions: impl Iterator<Item = Decision>) -> bool {
    for d in decisions {
        match d {
            Decision::Allow => return true,
            Decision::Deny => return false,
            Decision::Defer => {}
        }
    }
    true
}

impl Hooks {
    /// One step of enhanced authentication: the first hook that knows the
    /// method answers.
    pub(crate) async fn enhanced_auth(
        &self,
        client: &Client,
        method: &str,
        data: Option<&[u8]>,
    ) -> AuthStep {
        for h in &self.auth {
            match h.enhanced_auth(client, method, data).await {
                AuthStep::Unsupported => {}
                step => return step,
            }
        }
        AuthStep::Unsupported
    }

    /// Runs the auth hooks for a CONNECT: `Err` is the CONNACK reason code.
    /// `authenticated`: enhanced authentication already succeeded.
    pub(crate) async fn connect(
        &self,
        client: &Client,
        connect: &mut Connect,
        authenticated: bool,
    ) -> Result<(), ReasonCode> {
        for h in &self.auth {
            h.on_connect(client, connect).await?;
        }
        if authenticated {
            return Ok(());
        }
        for h in &self.auth {
            match h.authenticate(client, connect).await {
                Decision::Allow => return Ok(()),
                Decision::Deny => return Err(ReasonCode::BadUserNameOrPassword),
                Decision::Defer => {}
            }
        }
        Ok(())
    }

    fn acl_applies(&self, client: &Client) -> bool {
        !self.acl.is_empty() && (!client.inline || self.acl_inline)
    }

    /// May `client` publish to `topic` (the publish ACL)? May do I/O.
    pub(crate) async fn can_publish(&self, client: &Client, topic: &str) -> bool {
        if !self.acl_applies(client) {
            return true;
        }
        for h in &self.acl {
            match h.can_publish(client, topic).await {
                Decision::Allow => return true,
                Decision::Deny => return false,
                Decision::Defer => {}
            }
        }
        true
    }

    /// The publish ACL where nothing can wait (the broker core): each
    /// hook's future is polled once. `None` if one was not ready, that is,
    /// it really waits for I/O; the caller decides what that means.
    pub(crate) fn can_publish_now(&self, client: &Client, topic: &str) -> Option<bool> {
        if !self.acl_applies(client) {
            return Some(true);
        }
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        for h in &self.acl {
            match h.can_publish(client, topic).as_mut().poll(&mut cx) {
                std::task::Poll::Ready(Decision::Allow) => return Some(true),
                std::task::Poll::Ready(Decision::Deny) => return Some(false),
                std::task::Poll::Ready(Decision::Defer) => {}
                std::task::Poll::Pending => return None,
            }
        }
        Some(true)
    }

    /// The publish ACL and interception for one PUBLISH.
    pub(crate) async fn publish(&self, client: &Client, publish: &mut Publish) -> PublishVerdict {
        if !self.can_publish(client, &publish.topic).await {
            tracing::info!(target: crate::REFUSAL, client_id = %Escaped(&client.client_id),
                username = client.username.as_deref().map(|u| tracing::field::display(Escaped(u))),
                remote = client.remote_addr.map(tracing::field::display),
                topic = %Escaped(&publish.topic), "publish denied by the ACL");
            return PublishVerdict::Refuse(ReasonCode::NotAuthorized);
        }
        let qos_pid = publish.qos_pid;
        let mut verdict = PublishVerdict::Deliver;
        for h in &self.events {
            verdict = h.on_publish(client, publish);
            if verdict != PublishVerdict::Deliver {
                break;
            }
        }
        publish.qos_pid = qos_pid;
        if publish.topic.is_empty() || !crate::topic::valid_name(&publish.topic) {
            // A hook produced a topic that cannot be routed.
            return PublishVerdict::Refuse(ReasonCode::TopicNameInvalid);
        }
        verdict
    }

    /// Interception and ACL for a SUBSCRIBE: one verdict per filter.
    pub(crate) async fn subscribe(
        &self,
        client: &Client,
        filters: &mut [(ByteStr, SubscriptionOptions, Result<(), ReasonCode>)],
    ) {
        for h in &self.events {
            h.on_subscribe(client, filters);
        }
        if self.acl_applies(client) {
            for (filter, _, verdict) in filters.iter_mut() {
                if verdict.is_ok() {
                    let mut allowed = true;
                    for h in &self.acl {
                        match h.can_subscribe(client, filter).await {
                            Decision::Allow => break,
                            Decision::Deny => {
                                allowed = false;
                                break;
                            }
                            Decision::Defer => {}
                        }
                    }
                    if !allowed {
                        tracing::info!(target: crate::REFUSAL, client_id = %Escaped(&client.client_id),
                            username = client.username.as_deref().map(|u| tracing::field::display(Escaped(u))),
                            remote = client.remote_addr.map(tracing::field::display),
                            filter = %Escaped(filter), "subscription denied by the ACL");
                        *verdict = Err(ReasonCode::NotAuthorized);
                    }
                }
            }
        }
    }

    /// May `client` receive `message` (synchronous, on the core).
    pub(crate) fn can_receive(&self, client: &Client, message: &Message) -> bool {
        if !self.acl_applies(client) {
            return true;
        }
        first_decision(self.acl.iter().map(|h| h.can_receive(client, message)))
    }

    /// True if any event hook is installed (callers skip building
    /// arguments otherwise).
    pub(crate) fn has_events(&self) -> bool {
        !self.events.is_empty()
    }

    /// Calls `f` on every event hook, in order.
    pub(crate) fn each(&self, mut f: impl FnMut(&dyn EventHook)) {
        for h in &self.events {
            f(h.as_ref());
        }
    }

    /// True if no hook of any kind is installed.
    pub(crate) fn is_empty(&self) -> bool {
        self.auth.is_empty() && self.acl.is_empty() && self.events.is_empty()
    }
}
