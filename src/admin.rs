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
//! after the cursor: its cost grows with the number of sessions (or
//! matched topics), not with the page; ask for pages, not for everything
//! at once.
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

pub(crate) use crate::broker::admin::{AdminAnswer, AdminCall, AdminQuery};
pub use crate::broker::admin::{
    AdminError, ClientInfo, DisconnectOptions, Disconnected, Listing, Paging, RetainedInfo,
    SessionInfo, SubscriptionInfo, ADMIN_CLIENT_ID, MAX_PAGE,
};
use crate::broker::{ConnId, Event};
use crate::clock::Clock;
use crate::codec::QoS;
use crate::hooks::Hooks;
use crate::inline::{InlineClient, InlineError, PublishOptions};
use bytes::Bytes;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use tokio::sync::{mpsc, oneshot, Notify};

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

/// What every clone of an [`Admin`] shares: the way to the core, and the
/// publisher, an inline client connected on the first publish (so that a
/// server whose admin never publishes has no such client: hooks and lists
/// never see it).
pub(crate) struct AdminState {
    events: mpsc::Sender<Event>,
    /// What the publisher is made of, once the server serves (its hooks
    /// are final then).
    serving: OnceLock<Serving>,
    publisher: OnceLock<InlineClient>,
    /// Woken once `serving` is set.
    started: Notify,
}

struct Serving {
    next_conn: Arc<AtomicU64>,
    hooks: Hooks,
    clock: Clock,
    stats: Arc<crate::Stats>,
}

impl AdminState {
    pub(crate) fn new(events: mpsc::Sender<Event>) -> Arc<Self> {
        Arc::new(AdminState {
            events,
            serving: OnceLock::new(),
            publisher: OnceLock::new(),
            started: Notify::new(),
        })
    }

    /// Called by `Server::serve` once the hooks are final.
    pub(crate) fn start(
        &self,
        next_conn: Arc<AtomicU64>,
        hooks: Hooks,
        clock: Clock,
        stats: Arc<crate::Stats>,
    ) {
        let _ = self.serving.set(Serving {
            next_conn,
            hooks,
            clock,
            stats,
        });
        self.started.notify_waiters();
    }

    /// The publisher, connected now if it is not yet. Within the runtime.
    fn publisher(&self, s: &Serving) -> &InlineClient {
        self.publisher.get_or_init(|| {
            let conn = ConnId(s.next_conn.fetch_add(1, Ordering::Relaxed));
            let (events, hooks, clock) = (self.events.clone(), s.hooks.clone(), s.clock.clone());
            InlineClient::connect(ADMIN_CLIENT_ID, conn, events, hooks, clock, s.stats.clone())
        })
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
        if self.state.serving.get().is_none() {
            if self.state.events.is_closed() {
                return Err(AdminError::Stopped);
            }
            started.await;
        }
        let serving = self.state.serving.get().ok_or(AdminError::Stopped)?;
        Ok(self.state.publisher(serving))
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
