//! What the admin API asks the core and what the core answers with: the
//! public data of [`crate::admin`] (re-exported there), defined here so
//! that the core, which builds it, needs nothing from the layers above.

use crate::codec::{ProtocolVersion, QoS, ReasonCode, RetainHandling};
use std::net::SocketAddr;
use std::time::SystemTime;
use tokio::sync::oneshot;

/// The client id the admin publishes under: an inline client's, reserved
/// (a network client asking for it is refused), so that an ACL can name it.
pub const ADMIN_CLIENT_ID: &str = "$admin";

/// Most items in one page.
pub const MAX_PAGE: usize = 1000;

/// Errors from the admin API.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// No session has this client id.
    #[error("no client `{0}`")]
    NotFound(String),
    /// The client is the broker's own (an inline client or a bridge's
    /// session): its owner ends it, not the admin API.
    #[error("client `{0}` is an inline client or a bridge; it cannot be disconnected")]
    Inline(String),
    /// The topic filter is not valid.
    #[error("invalid topic filter `{0}`")]
    InvalidFilter(String),
    /// The topic name is not valid (or is the broker's own `$SYS`).
    #[error("invalid topic name `{0}`")]
    InvalidTopic(String),
    /// The publish was refused (by an ACL or a publish hook), with the
    /// reason code the broker answered.
    #[error("publish refused: {0:?}")]
    Refused(ReasonCode),
    /// The server is not serving (not yet, or no more).
    #[error("the broker is not running")]
    Stopped,
    /// An admin token that is too short or holds white space or control
    /// characters.
    #[error("admin token: {0}")]
    BadToken(&'static str),
}

/// Which page of a list: at most `limit` items after the cursor `after`
/// (`None`: from the start). Items come in a stable order (clients by id,
/// retained messages by topic, subscriptions by client id then filter),
/// so a page's [`Listing::next`] given back as `after` resumes after it,
/// whatever changed meanwhile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paging {
    /// At most this many items (1 to [`MAX_PAGE`]; clamped).
    pub limit: usize,
    /// The previous page's [`Listing::next`].
    pub after: Option<String>,
}

impl Paging {
    /// The first `limit` items.
    pub fn first(limit: usize) -> Self {
        Paging { limit, after: None }
    }

    /// The `limit` items after the cursor `after` (a [`Listing::next`]).
    pub fn after(limit: usize, after: impl Into<String>) -> Self {
        Paging {
            limit,
            after: Some(after.into()),
        }
    }

    pub(crate) fn clamped(&self) -> usize {
        self.limit.clamp(1, MAX_PAGE)
    }
}

impl Default for Paging {
    /// The first 100 items.
    fn default() -> Self {
        Paging::first(100)
    }
}

/// A page of a list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing<T> {
    /// The items, in order.
    pub items: Vec<T>,
    /// The cursor for the next page (as [`Paging::after`]); `None` if this
    /// page is the last.
    pub next: Option<String>,
}

/// A client's session as the admin API shows it, connected or not.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientInfo {
    /// Client identifier (the assigned one, if the broker assigned it).
    pub client_id: String,
    /// User name, from CONNECT or (on a listener configured so) from the
    /// client's TLS certificate.
    pub username: Option<String>,
    /// The peer's address (of its latest connection); `None` for inline
    /// clients.
    pub remote_addr: Option<SocketAddr>,
    /// The subject of the TLS client certificate it connected with, if
    /// any (`CN=dev-17,O=Fleet`).
    pub certificate: Option<String>,
    /// Protocol version.
    pub protocol: ProtocolVersion,
    /// Whether a connection is attached to the session now.
    pub connected: bool,
    /// When the current connection was established (`None` if not
    /// connected).
    pub connected_at: Option<SystemTime>,
    /// When the session's client went away (`None` if connected).
    pub disconnected_at: Option<SystemTime>,
    /// Session Expiry Interval in seconds (`u32::MAX`: never).
    pub session_expiry_interval: u32,
    /// QoS 1/2 messages sent and not yet acknowledged.
    pub inflight: usize,
    /// QoS 1/2 messages waiting to be sent (in memory and on disk).
    pub queued: usize,
    /// Subscriptions held.
    pub subscriptions: usize,
    /// An in-process client (the inline client, a bridge, the admin's
    /// publisher).
    pub inline: bool,
}

/// One subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SubscriptionInfo {
    /// The subscriber's client id.
    pub client_id: String,
    /// The filter as subscribed (`$share/{group}/...` for a shared one).
    pub filter: String,
    /// Maximum QoS granted.
    pub qos: QoS,
    /// No Local.
    pub no_local: bool,
    /// Retain As Published.
    pub retain_as_published: bool,
    /// Retain Handling.
    pub retain_handling: RetainHandling,
    /// Subscription Identifier, if the client set one.
    pub subscription_identifier: Option<u32>,
}

/// One client's session in full.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SessionInfo {
    /// The client.
    pub client: ClientInfo,
    /// Its subscriptions, by filter.
    pub subscriptions: Vec<SubscriptionInfo>,
    /// The topic of its will, if it has one pending or armed.
    pub will_topic: Option<String>,
}

/// One retained message, without its payload (which may live only in the
/// store; subscribe to the topic to read it).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetainedInfo {
    /// Topic name.
    pub topic: String,
    /// Payload size in bytes.
    pub payload_bytes: usize,
    /// When it expires (its Message Expiry Interval), rounded up to the
    /// second; `None` if never.
    pub expires_at: Option<SystemTime>,
}

/// What [`Admin::disconnect`](crate::admin::Admin::disconnect) did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Disconnected {
    /// A connection was closed (the session's client was connected).
    pub was_connected: bool,
    /// The session ended (asked for, or it was not persistent).
    pub session_ended: bool,
}

/// How [`Admin::disconnect`](crate::admin::Admin::disconnect) goes about it.
///
/// The will: an administrative disconnect is the server closing the
/// connection, not the client's normal DISCONNECT, so by MQTT 5.0 3.1.2.5
/// the will is published (after its delay; at once if the session ends
/// first, [MQTT-3.1.3-9]). [`DisconnectOptions::discard_will`] drops it
/// instead (a device retired on purpose should not announce that it died).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DisconnectOptions {
    pub(crate) reason: Option<String>,
    pub(crate) end_session: bool,
    pub(crate) discard_will: bool,
}

impl DisconnectOptions {
    /// Disconnect, keep the session (a persistent one can be resumed), will
    /// published, no reason string.
    pub fn new() -> Self {
        Self::default()
    }

    /// A reason string for the 5.0 client's DISCONNECT (and the log).
    pub fn reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }

    /// End the session too: its subscriptions and queued messages go, and
    /// a reconnect with Clean Start 0 gets Session Present 0.
    pub fn end_session(mut self, end: bool) -> Self {
        self.end_session = end;
        self
    }

    /// Drop the client's will instead of publishing it.
    pub fn discard_will(mut self, discard: bool) -> Self {
        self.discard_will = discard;
        self
    }
}

/// A request to the core and where its answer goes.
#[derive(Debug)]
pub(crate) struct AdminCall {
    pub query: AdminQuery,
    pub reply: oneshot::Sender<AdminAnswer>,
}

/// What the admin asks the core (validated by the admin handle first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AdminQuery {
    Clients(Paging),
    Client(String),
    Disconnect(String, DisconnectOptions),
    Retained(String, Paging),
    DeleteRetained(String),
    Subscriptions(String, Paging),
}

/// The core's answer to an [`AdminQuery`], variant for variant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AdminAnswer {
    Clients(Listing<ClientInfo>),
    Client(Option<SessionInfo>),
    Disconnect(Result<Disconnected, AdminError>),
    Retained(Listing<RetainedInfo>),
    DeleteRetained(bool),
    Subscriptions(Listing<SubscriptionInfo>),
}
