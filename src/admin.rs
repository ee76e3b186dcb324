//! Administration of a running broker: list and kick clients, look at a
//! session, list and clear retained messages, list subscriptions, publish.
//!
//! [`Admin`] is the embedder's handle ([`Server::admin`](crate::Server::admin));
//! the HTTP admin API (`/api/v1/...` on an HTTP listener given an
//! [`AdminToken`]) calls the same methods. Every request goes to the broker
//! core over its event channel and is answered there, between two events,
//! so what it sees is consistent (a client is either connected or not,
//! never half way).
//!
//! Lists come a page at a time ([`Paging`], [`Listing`]): each page is a
//! walk over all sessions (clients, subscriptions) or over the retained
//! topics the filter matches, on the core, keeping the `limit` first keys
//! after the cursor. A page of 100 over 100,000 sessions takes the core a
//! few milliseconds; ask for pages, not for everything at once.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use roost::admin::{DisconnectOptions, Paging};
//! let server = roost::Server::new(roost::Options::default());
//! let admin = server.admin();
//! tokio::spawn(server.serve(std::future::pending()));
//! for c in admin.clients(Paging::first(100)).await?.items {
//!     println!("{} ({:?}) queued {}", c.client_id, c.username, c.queued);
//! }
//! // mochi's `Clients.Get(id).Stop()`, and the session goes too:
//! admin
//!     .disconnect("sensor-17", DisconnectOptions::new().reason("retired").end_session(true))
//!     .await?;
//! # Ok(()) }
//! ```

use crate::broker::{ConnId, Event};
use crate::clock::Clock;
use crate::codec::{ProtocolVersion, QoS, ReasonCode, RetainHandling};
use crate::hooks::Hooks;
use crate::inline::{InlineClient, InlineError, PublishOptions};
use bytes::Bytes;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;
use tokio::sync::{mpsc, oneshot, Notify};

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

/// What [`Admin::disconnect`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Disconnected {
    /// A connection was closed (the session's client was connected).
    pub was_connected: bool,
    /// The session ended (asked for, or it was not persistent).
    pub session_ended: bool,
}

/// How [`Admin::disconnect`] goes about it.
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

/// A message for [`Admin::publish`].
#[derive(Debug, Clone, PartialEq)]
pub struct AdminPublish {
    /// Topic name.
    pub topic: String,
    /// Payload.
    pub payload: Bytes,
    /// QoS.
    pub qos: QoS,
    /// Retain flag.
    pub retain: bool,
}

/// The credential of the HTTP admin API: a bearer token, compared in
/// constant time. Its `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(Arc<str>);

/// The shortest token accepted: a guessable token is no credential.
pub const MIN_TOKEN_LEN: usize = 16;

impl AdminToken {
    /// A token: at least [`MIN_TOKEN_LEN`] characters, none of them white
    /// space or control characters (it travels in a header).
    pub fn new(token: impl Into<String>) -> Result<Self, AdminError> {
        let token: String = token.into();
        if token.chars().count() < MIN_TOKEN_LEN {
            return Err(AdminError::BadToken("shorter than 16 characters"));
        }
        if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(AdminError::BadToken(
                "holds white space or control characters",
            ));
        }
        Ok(AdminToken(token.into()))
    }

    /// Whether `presented` is this token. Takes the same time whatever
    /// prefix of the token it shares (only its length can tell).
    pub fn verify(&self, presented: &[u8]) -> bool {
        let mine = self.0.as_bytes();
        let mut diff = u8::from(mine.len() != presented.len());
        // Always the full length of the token: a shorter guess is
        // compared against zeros rather than ending early.
        for (i, b) in mine.iter().enumerate() {
            diff |= b ^ presented.get(i).copied().unwrap_or(0);
        }
        diff == 0
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

/// A request to the core and where its answer goes.
#[derive(Debug)]
pub(crate) struct AdminCall {
    pub query: AdminQuery,
    pub reply: oneshot::Sender<AdminAnswer>,
}

/// What the admin asks the core (validated by [`Admin`] first).
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

/// What every clone of an [`Admin`] shares: the way to the core, and the
/// publisher, connected when the server starts serving (with its final
/// hooks).
pub(crate) struct AdminState {
    events: mpsc::Sender<Event>,
    publisher: OnceLock<InlineClient>,
    /// Woken once the publisher is set.
    started: Notify,
}

impl AdminState {
    pub(crate) fn new(events: mpsc::Sender<Event>) -> Arc<Self> {
        Arc::new(AdminState {
            events,
            publisher: OnceLock::new(),
            started: Notify::new(),
        })
    }

    /// Connects the publisher: called by `Server::serve`, within the
    /// runtime, once the hooks are final.
    pub(crate) fn start(&self, next_conn: &AtomicU64, hooks: Hooks, clock: Clock) {
        let conn = ConnId(next_conn.fetch_add(1, Ordering::Relaxed));
        let events = self.events.clone();
        let _ = self
            .publisher
            .get_or_init(|| InlineClient::connect(ADMIN_CLIENT_ID, conn, events, hooks, clock));
        self.started.notify_waiters();
    }
}

/// The admin handle: cheap to clone, usable before the server serves (its
/// requests then wait) and while it does; once it has stopped, every call
/// answers [`AdminError::Stopped`].
#[derive(Clone)]
pub struct Admin {
    state: Arc<AdminState>,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin").finish_non_exhaustive()
    }
}

impl Admin {
    pub(crate) fn new(state: Arc<AdminState>) -> Self {
        Admin { state }
    }

    async fn ask(&self, query: AdminQuery) -> Result<AdminAnswer, AdminError> {
        let (reply, answer) = oneshot::channel();
        let call = Box::new(AdminCall { query, reply });
        self.state
            .events
            .send(Event::Admin(call))
            .await
            .map_err(|_| AdminError::Stopped)?;
        answer.await.map_err(|_| AdminError::Stopped)
    }

    /// A page of the sessions, connected or not, by client id.
    pub async fn clients(&self, paging: Paging) -> Result<Listing<ClientInfo>, AdminError> {
        match self.ask(AdminQuery::Clients(paging)).await? {
            AdminAnswer::Clients(l) => Ok(l),
            other => unreachable!("clients answered with {other:?}"),
        }
    }

    /// One client's session and subscriptions; `None` if no session has
    /// this client id.
    pub async fn client(&self, client_id: &str) -> Result<Option<SessionInfo>, AdminError> {
        match self.ask(AdminQuery::Client(client_id.to_owned())).await? {
            AdminAnswer::Client(s) => Ok(s),
            other => unreachable!("client answered with {other:?}"),
        }
    }

    /// Disconnects a client: a 5.0 client gets DISCONNECT 0x98
    /// (Administrative action) with the reason string, then the connection
    /// closes. See [`DisconnectOptions`] for the session and the will. A
    /// session whose client is away is ended if asked, else left alone.
    pub async fn disconnect(
        &self,
        client_id: &str,
        options: DisconnectOptions,
    ) -> Result<Disconnected, AdminError> {
        match self
            .ask(AdminQuery::Disconnect(client_id.to_owned(), options))
            .await?
        {
            AdminAnswer::Disconnect(r) => r,
            other => unreachable!("disconnect answered with {other:?}"),
        }
    }

    /// Disconnects every connected network client whose user name
    /// `revoked` says has lost its access (a ledger reload: see
    /// [`Ledger::revokes`](crate::hooks::Ledger::revokes)), with `options`;
    /// returns how many. Clients are taken a page at a time, so the core
    /// is never held for long.
    pub async fn disconnect_users(
        &self,
        revoked: impl Fn(&str) -> bool,
        options: DisconnectOptions,
    ) -> Result<usize, AdminError> {
        let mut paging = Paging::first(MAX_PAGE);
        let mut kicked = 0;
        loop {
            let page = self.clients(paging.clone()).await?;
            for c in &page.items {
                let user = c.username.as_deref();
                if c.connected && !c.inline && user.is_some_and(&revoked) {
                    match self.disconnect(&c.client_id, options.clone()).await {
                        Ok(_) => kicked += 1,
                        // Gone meanwhile: nothing to do.
                        Err(AdminError::NotFound(_)) => {}
                        Err(e) => return Err(e),
                    }
                }
            }
            match page.next {
                Some(next) => paging.after = Some(next),
                None => return Ok(kicked),
            }
        }
    }

    /// A page of the retained messages whose topics `filter` matches, by
    /// topic (level by level, bytewise). `#` does not match `$SYS` topics
    /// (ask for `$SYS/#`).
    pub async fn retained(
        &self,
        filter: &str,
        paging: Paging,
    ) -> Result<Listing<RetainedInfo>, AdminError> {
        if !crate::topic::valid_filter(filter) || filter.starts_with("$share/") {
            return Err(AdminError::InvalidFilter(filter.to_owned()));
        }
        match self
            .ask(AdminQuery::Retained(filter.to_owned(), paging))
            .await?
        {
            AdminAnswer::Retained(l) => Ok(l),
            other => unreachable!("retained answered with {other:?}"),
        }
    }

    /// Clears the retained message of `topic`, as an empty retained
    /// publish would (without delivering anything). Returns whether there
    /// was one. With a persistent store the deletion is in the next
    /// commit.
    pub async fn delete_retained(&self, topic: &str) -> Result<bool, AdminError> {
        if !crate::topic::valid_name(topic) || topic.starts_with("$SYS") {
            return Err(AdminError::InvalidTopic(topic.to_owned()));
        }
        match self
            .ask(AdminQuery::DeleteRetained(topic.to_owned()))
            .await?
        {
            AdminAnswer::DeleteRetained(found) => Ok(found),
            other => unreachable!("delete_retained answered with {other:?}"),
        }
    }

    /// A page of the subscriptions whose filters `filter` matches, read as
    /// topics: `sensors/#` lists `sensors/+/temp` and `sensors/1`; a
    /// shared subscription is matched by the filter after its
    /// `$share/{group}/`.
    pub async fn subscriptions(
        &self,
        filter: &str,
        paging: Paging,
    ) -> Result<Listing<SubscriptionInfo>, AdminError> {
        if !crate::topic::valid_filter(filter) || filter.starts_with("$share/") {
            return Err(AdminError::InvalidFilter(filter.to_owned()));
        }
        match self
            .ask(AdminQuery::Subscriptions(filter.to_owned(), paging))
            .await?
        {
            AdminAnswer::Subscriptions(l) => Ok(l),
            other => unreachable!("subscriptions answered with {other:?}"),
        }
    }

    /// Publishes a message as the inline client [`ADMIN_CLIENT_ID`], through
    /// the inline client's path: the publish hooks, and the ACL hooks if
    /// [`Server::acl_applies_to_inline_client`](crate::Server::acl_applies_to_inline_client)
    /// says so. QoS 1 and 2 return once the broker acknowledged it (with a
    /// persistent store: committed). Waits for the server to serve.
    pub async fn publish(&self, message: AdminPublish) -> Result<(), AdminError> {
        let AdminPublish {
            topic,
            payload,
            qos,
            retain,
        } = message;
        if !crate::topic::valid_name(&topic) || topic.starts_with("$SYS") {
            return Err(AdminError::InvalidTopic(topic));
        }
        let publisher = self.publisher().await?;
        let options = PublishOptions {
            retain,
            ..Default::default()
        };
        publisher
            .publish_with(&topic, payload, qos, options)
            .await
            .map_err(|e| match e {
                InlineError::Refused(code) => AdminError::Refused(code),
                InlineError::InvalidTopic => AdminError::InvalidTopic(topic),
                _ => AdminError::Stopped,
            })
    }

    /// The publisher, once the server serves.
    async fn publisher(&self) -> Result<&InlineClient, AdminError> {
        // Registered before the check, so a start between the two is
        // not missed.
        let started = self.state.started.notified();
        tokio::pin!(started);
        started.as_mut().enable();
        if let Some(p) = self.state.publisher.get() {
            return Ok(p);
        }
        if self.state.events.is_closed() {
            return Err(AdminError::Stopped);
        }
        started.await;
        self.state.publisher.get().ok_or(AdminError::Stopped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        let t = AdminToken::new("0123456789abcdef").unwrap();
        assert!(t.verify(b"0123456789abcdef"));
        assert!(!t.verify(b"0123456789abcdeF"));
        assert!(!t.verify(b"0123456789abcde"));
        assert!(!t.verify(b"0123456789abcdef0"));
        assert!(!t.verify(b""));
        assert_eq!(format!("{t:?}"), "AdminToken(..)");
        assert!(AdminToken::new("short").is_err());
        assert!(AdminToken::new("0123456789abcdef ").is_err());
    }

    #[test]
    fn pages_are_clamped() {
        assert_eq!(Paging::first(0).clamped(), 1);
        assert_eq!(Paging::first(5000).clamped(), MAX_PAGE);
        assert_eq!(Paging::default().clamped(), 100);
    }
}
