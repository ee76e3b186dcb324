//! The cluster's engine connection: a node's link to NATS JetStream, where
//! the cluster's shared state lives (issue 19).
//!
//! [`connect`] connects to the configured servers, checks that JetStream
//! answers (a node without the engine refuses to start rather than run
//! split-brained), and creates, or binds to when they exist, what the
//! cluster keeps there. Every name derives from the cluster name (see
//! `cluster::config`).
//!
//! - **The message stream** (`<name>_messages`, subjects `<name>.d.>`)
//!   carries QoS 1/2 messages between nodes: a message a node acknowledged
//!   to its publisher is in it, on `replicas` servers, before the
//!   acknowledgement leaves ([`Engine::publish_durable`] waits for
//!   JetStream's). Each node reads it through its own durable consumer
//!   ([`Engine::node_consumer`]).
//!   - *Limits retention* with a maximum age (24 h), not interest or
//!     work-queue: a work queue lets one consumer take each message, but
//!     every node needs every message; interest retention drops a message
//!     once the consumers that exist when it arrives have acked it, so a
//!     node that joins (or whose consumer is recreated) after a publish
//!     loses it, and a consumer deleted by mistake deletes messages. With
//!     limits, JetStream keeps what a slow or restarting node still needs,
//!     bounded by age (and by the servers' disk limits), and nodes track
//!     their own positions. 24 h outlasts any node restart; messages owed
//!     to persistent sessions longer than that belong in the session's own
//!     state, not in this transit stream.
//!   - *File storage*: "acknowledged" must survive a NATS server restart.
//!   - *A duplicate window* (2 min): a publish retried after a lost
//!     acknowledgement (a NATS server died mid-request) carries the same
//!     `Nats-Msg-Id` and is stored once; the window covers the retries of
//!     one publish, which end within the configured timeout.
//! - **Key-value buckets** `<name>_sessions` (persistent sessions) and
//!   `<name>_retained` (retained messages), history 1: only the latest
//!   value of a key matters, and compare-and-set on its revision is what
//!   serialises two nodes writing one session.
//! - **The node registry** `<name>_nodes`: each node's record, with the
//!   bucket's `max_age` as its TTL (`cluster::nodes`), so a node that died
//!   without deleting its record leaves no trace after it; the live set
//!   this node reads from it is [`Engine::nodes`].
//!
//! Binding is idempotent: a node finds the stream and buckets another node
//! created and uses them. One whose replica count differs from the
//! configuration is refused ([`ClusterError::Replicas`]) rather than
//! silently changed: nodes of one cluster must agree, and changing the
//! replica count of live data is an operator's decision (`nats stream edit
//! <stream> --replicas N`).

use crate::cluster::config::{ClusterConfig, ClusterConfigError, Credentials};
use crate::cluster::nodes::{NodeSet, TTL};
use async_nats::jetstream::response::Response;
use async_nats::jetstream::{self, consumer, kv, stream};
use async_nats::{Client, ConnectOptions, HeaderMap, ServerAddr};
use bytes::Bytes;
use serde::de::IgnoredAny;
use std::time::Duration;

/// How long a message stays in the message stream.
const MESSAGE_MAX_AGE: Duration = Duration::from_secs(24 * 60 * 60);
/// How long JetStream remembers a `Nats-Msg-Id` to drop a retried publish.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// How long a share group's consumer waits for a node to acknowledge, give
/// back or touch (an in-progress ack) a message it pulled before giving it
/// to a node again: a node that died holding messages delays them this
/// long. A node touches a message whose delivery is still running every
/// second (`server::sharing`), so this only has to outlast a node that
/// stopped answering: a stall of its runtime or its NATS connection longer
/// than this gets its messages delivered again elsewhere (at least once,
/// as across a crash). Shorter means less delay after a crash and more
/// duplicates after a stall.
const GROUP_ACK_WAIT: Duration = Duration::from_secs(5);
/// Messages of one share group pulled and not yet acknowledged, across
/// all nodes: bounds what a node that dies may delay by `GROUP_ACK_WAIT`.
const GROUP_MAX_ACK_PENDING: i64 = 1000;
/// How often a message is given to a node before the group's consumer
/// drops it: only messages no member anywhere may receive (an ACL) are
/// given back that often (see `server::sharing`).
const GROUP_MAX_DELIVER: i64 = 20;

/// Why the engine connection failed. Messages name the servers or the
/// stream involved.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ClusterConfigError),
    /// No configured server could be reached (or none accepted the
    /// credentials).
    #[error("cluster: cannot connect to NATS at {servers}: {reason}")]
    Unreachable {
        /// The servers tried, comma-separated.
        servers: String,
        /// The client's last error.
        reason: String,
    },
    /// The servers answer, but JetStream does not.
    #[error(
        "cluster: NATS at {servers} does not offer JetStream ({reason}); the cluster keeps its \
         state there: start nats-server with JetStream enabled (`-js`, or a `jetstream {{}}` block)"
    )]
    NoJetStream {
        /// The servers tried, comma-separated.
        servers: String,
        /// What the JetStream API answered.
        reason: String,
    },
    /// Creating or binding a stream or bucket failed.
    #[error("cluster: cannot create or bind {what} {name:?}: {reason}")]
    Setup {
        /// `stream`, `bucket` or `consumer`.
        what: &'static str,
        /// Its name.
        name: String,
        /// JetStream's answer.
        reason: String,
    },
    /// A stream or bucket exists with another replica count than the
    /// configuration's.
    #[error(
        "cluster: stream {name:?} exists with {existing} replica(s), the configuration asks for \
         {wanted}; set `replicas` to {existing}, or change the stream with \
         `nats stream edit {name} --replicas {wanted}`"
    )]
    Replicas {
        /// The JetStream stream (a bucket's is `KV_<bucket>`).
        name: String,
        /// Its replica count.
        existing: usize,
        /// The configuration's.
        wanted: u8,
    },
    /// A durable publish was not acknowledged: it may or may not be stored
    /// (publish it again with the same `Nats-Msg-Id`).
    #[error("cluster: publish to {subject:?} not acknowledged by JetStream: {reason}")]
    Publish {
        /// The subject.
        subject: String,
        /// Why.
        reason: String,
    },
}

/// Where JetStream stored a durable publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    /// Its sequence in the message stream (for a duplicate, the first
    /// copy's).
    pub sequence: u64,
    /// JetStream had it already (same `Nats-Msg-Id` within the duplicate
    /// window).
    pub duplicate: bool,
}

/// A durable publish sent to JetStream, its acknowledgement not awaited
/// yet (see [`Engine::send_durable`]).
#[derive(Debug)]
pub struct Sending {
    subject: String,
    ack: jetstream::context::PublishAckFuture,
}

impl Sending {
    /// Waits for JetStream's acknowledgement: the message is stored (or
    /// was already, as a duplicate). Fails like [`Engine::publish_durable`].
    pub async fn stored(self) -> Result<Stored, ClusterError> {
        let ack = self.ack.await.map_err(|e| ClusterError::Publish {
            subject: self.subject,
            reason: e.to_string(),
        })?;
        Ok(Stored {
            sequence: ack.sequence,
            duplicate: ack.duplicate,
        })
    }
}

/// A node's live connection to the cluster's engine.
#[derive(Debug)]
pub struct Engine {
    config: ClusterConfig,
    client: Client,
    js: jetstream::Context,
    stream: stream::Stream,
    sessions: kv::Store,
    retained: kv::Store,
    registry: kv::Store,
    nodes: NodeSet,
}

/// Connects to NATS, checks JetStream, and creates or binds the message
/// stream and the buckets (see the module docs).
pub async fn connect(config: &ClusterConfig) -> Result<Engine, ClusterError> {
    config.validate()?;
    let servers = config.servers.join(", ");
    let addrs = config
        .servers
        .iter()
        .map(|s| s.parse::<ServerAddr>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ClusterError::Unreachable {
            servers: servers.clone(),
            reason: e.to_string(),
        })?;
    let mut options = ConnectOptions::new()
        .name(format!("roost {}/{}", config.name, config.node))
        .connection_timeout(config.timeout)
        .request_timeout(Some(config.timeout));
    options = match &config.credentials {
        None => options,
        Some(Credentials::UserPassword { user, password }) => {
            options.user_and_password(user.clone(), password.clone())
        }
        Some(Credentials::Token { token }) => options.token(token.clone()),
    };
    if let Some(ca) = &config.tls_ca {
        options = options.add_root_certificates(ca.clone());
    }
    let client = options
        .connect(addrs)
        .await
        .map_err(|e| ClusterError::Unreachable {
            servers: servers.clone(),
            reason: e.to_string(),
        })?;
    let js = jetstream::ContextBuilder::new()
        .timeout(config.timeout)
        .build(client.clone());
    // The account info request is JetStream's cheapest: without JetStream
    // there is no responder, or an error saying it is off. Its body is
    // ignored: async-nats's `Account` wants fields nats-server 2.9 does not
    // send (`reserved_memory`, `reserved_storage`, from 2.10), so
    // `query_account` fails on 2.9 even when JetStream is there.
    let no_js = |reason: String| ClusterError::NoJetStream {
        servers: servers.clone(),
        reason,
    };
    match js
        .request::<_, _, Response<IgnoredAny>>("INFO", &())
        .await
        .map_err(|e| no_js(e.to_string()))?
    {
        Response::Ok(_) => {}
        Response::Err { error } => return Err(no_js(error.to_string())),
    }

    let stream = bind_stream(&js, config).await?;
    let forever = Duration::ZERO;
    let sessions = bind_bucket(&js, config, config.sessions_bucket(), forever).await?;
    let retained = bind_bucket(&js, config, config.retained_bucket(), forever).await?;
    let registry = bind_bucket(&js, config, config.nodes_bucket(), TTL).await?;
    Ok(Engine {
        config: config.clone(),
        client,
        js,
        stream,
        sessions,
        retained,
        registry,
        nodes: NodeSet::default(),
    })
}

/// The existing stream `name` if there is one, checked against the
/// configured replica count.
async fn existing(
    js: &jetstream::Context,
    name: &str,
    wanted: u8,
) -> Result<Option<stream::Stream>, ClusterError> {
    match js.get_stream(name).await {
        Ok(mut s) => {
            let existing = s.cached_info().config.num_replicas;
            if existing != usize::from(wanted) {
                return Err(ClusterError::Replicas {
                    name: name.to_owned(),
                    existing,
                    wanted,
                });
            }
            // Refresh, so `cached_info` is no older than the bind.
            let _ = s.info().await;
            Ok(Some(s))
        }
        Err(e)
            if matches!(
                e.kind(),
                jetstream::context::GetStreamErrorKind::JetStream(ref js)
                    if js.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(ClusterError::Setup {
            what: "stream",
            name: name.to_owned(),
            reason: e.to_string(),
        }),
    }
}

async fn bind_stream(
    js: &jetstream::Context,
    config: &ClusterConfig,
) -> Result<stream::Stream, ClusterError> {
    let name = config.stream();
    if let Some(s) = existing(js, &name, config.replicas).await? {
        return Ok(s);
    }
    let stream_config = stream::Config {
        name: name.clone(),
        subjects: vec![format!("{}.>", config.durable_prefix())],
        retention: stream::RetentionPolicy::Limits,
        storage: stream::StorageType::File,
        max_age: MESSAGE_MAX_AGE,
        duplicate_window: DUPLICATE_WINDOW,
        num_replicas: usize::from(config.replicas),
        discard: stream::DiscardPolicy::Old,
        ..Default::default()
    };
    // Two nodes starting together may both get here: creating a stream
    // with the same configuration again succeeds, so the second one binds.
    js.create_stream(stream_config)
        .await
        .map_err(|e| ClusterError::Setup {
            what: "stream",
            name,
            reason: e.to_string(),
        })
}

/// Binds `bucket`, creating it if missing; its entries expire after
/// `max_age` (zero: never).
async fn bind_bucket(
    js: &jetstream::Context,
    config: &ClusterConfig,
    bucket: String,
    max_age: Duration,
) -> Result<kv::Store, ClusterError> {
    let setup = |e: &dyn std::fmt::Display| ClusterError::Setup {
        what: "bucket",
        name: bucket.clone(),
        reason: e.to_string(),
    };
    if existing(js, &format!("KV_{bucket}"), config.replicas)
        .await?
        .is_some()
    {
        return js.get_key_value(&bucket).await.map_err(|e| setup(&e));
    }
    // The bucket's stream as a key-value bucket needs it (NATS ADR-8),
    // created directly: async-nats's `create_key_value` first asks for the
    // account info, which it cannot read from nats-server 2.9 (see
    // `connect`).
    js.create_stream(stream::Config {
        name: format!("KV_{bucket}"),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        discard: stream::DiscardPolicy::New,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        max_age,
        storage: stream::StorageType::File,
        num_replicas: usize::from(config.replicas),
        ..Default::default()
    })
    .await
    .map_err(|e| setup(&e))?;
    js.get_key_value(&bucket).await.map_err(|e| setup(&e))
}

impl Engine {
    /// The configuration it connected with.
    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    /// The NATS connection (core NATS: QoS 0 traffic, requests).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The JetStream context.
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    /// The message stream.
    pub fn stream(&self) -> &stream::Stream {
        &self.stream
    }

    /// The session bucket.
    pub fn sessions(&self) -> &kv::Store {
        &self.sessions
    }

    /// The retained message bucket.
    pub fn retained(&self) -> &kv::Store {
        &self.retained
    }

    /// The node registry's bucket.
    pub fn registry(&self) -> &kv::Store {
        &self.registry
    }

    /// The nodes alive, as this node's registry task last read them (empty
    /// until it runs: a node serving is in it).
    pub fn nodes(&self) -> &NodeSet {
        &self.nodes
    }

    /// Publishes to the message stream and waits for JetStream's
    /// acknowledgement: `Ok` means stored on a majority of the stream's
    /// replicas. Bounded by the configured timeout, also when no server is
    /// reachable (the client then buffers the publish, and gives up when
    /// the acknowledgement does not come). On an error the message may
    /// still have been stored: a retry with the same `Nats-Msg-Id` header
    /// within the duplicate window is stored once. While the stream elects
    /// a new leader (about 4 s with nats-server 2.9's defaults after its
    /// leader dies) publishes fail at once with no responders, which
    /// async-nats words "no stream found for given subject": retryable,
    /// not a missing stream.
    pub async fn publish_durable(
        &self,
        subject: String,
        headers: HeaderMap,
        payload: Bytes,
    ) -> Result<Stored, ClusterError> {
        self.send_durable(subject, headers, payload)
            .await?
            .stored()
            .await
    }

    /// Sends a durable publish, as [`Engine::publish_durable`], without
    /// waiting for JetStream's acknowledgement: many can be in flight at
    /// once, and JetStream stores them in the order they were sent (one
    /// connection) while nothing fails. Awaiting the result of
    /// [`Sending::stored`] is the acknowledgement.
    pub async fn send_durable(
        &self,
        subject: String,
        headers: HeaderMap,
        payload: Bytes,
    ) -> Result<Sending, ClusterError> {
        match self
            .js
            .publish_with_headers(subject.clone(), headers, payload)
            .await
        {
            Ok(ack) => Ok(Sending { subject, ack }),
            Err(e) => Err(ClusterError::Publish {
                subject,
                reason: e.to_string(),
            }),
        }
    }

    /// The durable pull consumer `name` of a share group on the message
    /// stream, filtered to `subject`, created or bound (see
    /// `cluster::groups`): every node with members of the group pulls
    /// from it, and each message goes to one of them. It starts at the
    /// messages published after its creation (a group has no history),
    /// with explicit acks. The server deletes it after the stream's
    /// maximum message age (24 h) without a node pulling (`inactive_threshold`,
    /// which nats-server applies to durable consumers since 2.9): by then
    /// what it held has left the stream anyway. A group that keeps a
    /// connected member somewhere never loses its consumer.
    pub async fn group_consumer(
        &self,
        name: &str,
        subject: &str,
    ) -> Result<consumer::PullConsumer, ClusterError> {
        self.stream
            .get_or_create_consumer(
                name,
                consumer::pull::Config {
                    durable_name: Some(name.to_owned()),
                    filter_subject: subject.to_owned(),
                    deliver_policy: consumer::DeliverPolicy::New,
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: GROUP_ACK_WAIT,
                    max_ack_pending: GROUP_MAX_ACK_PENDING,
                    max_deliver: GROUP_MAX_DELIVER,
                    inactive_threshold: MESSAGE_MAX_AGE,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| ClusterError::Setup {
                what: "consumer",
                name: name.to_owned(),
                reason: e.to_string(),
            })
    }

    /// This node's durable pull consumer on the message stream (named
    /// `<name>_<node>`), created or bound: it survives the node's restart,
    /// so a node resumes where it stopped. It takes every durable subject
    /// and starts at the messages published after its creation; acks are
    /// explicit. With nats-server 2.9 a consumer has at most one filter
    /// subject, so a node cannot narrow it to its own subscriptions.
    pub async fn node_consumer(&self) -> Result<consumer::PullConsumer, ClusterError> {
        let name = self.config.consumer();
        self.stream
            .get_or_create_consumer(
                &name,
                consumer::pull::Config {
                    durable_name: Some(name.clone()),
                    deliver_policy: consumer::DeliverPolicy::New,
                    ack_policy: consumer::AckPolicy::Explicit,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| ClusterError::Setup {
                what: "consumer",
                name,
                reason: e.to_string(),
            })
    }
}

/// The next item of a stream (a subscription, a consumer's messages, a
/// bucket's watch), without a futures utility crate.
pub(crate) async fn next<S: futures_core::Stream + Unpin>(s: &mut S) -> Option<S::Item> {
    std::future::poll_fn(|cx| std::pin::Pin::new(&mut *s).poll_next(cx)).await
}
