//! roost: an embeddable, persistent MQTT 3.1, 3.1.1 and 5.0 broker.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:1883").await?;
//! roost::Server::new(roost::Options::default())
//!     .tcp(listener)
//!     .serve(std::future::pending())
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! # Where to look
//!
//! - [`Server`]: the builder (options, listeners, store, hooks, bridges)
//!   and [`Server::serve`], a future that ends on your shutdown signal
//!   after flushing the store. [`Options`] holds every setting, the same
//!   struct the `roost` binary reads from TOML.
//! - [`hooks`]: take part in what the broker does: authentication
//!   ([`hooks::AuthHook`]), ACL ([`hooks::AclHook`]), events and
//!   interception ([`hooks::EventHook`]), and the built-in
//!   [`hooks::Ledger`] of users and rules.
//! - [`InlineClient`] (from [`Server::inline_client`]): the application
//!   publishes and subscribes in process, through the same routing,
//!   retained messages and persistence as network clients. Several
//!   subscriptions to one filter, each with its own identifier
//!   ([`InlineClient::subscribe_id`]); each message it receives says who
//!   published it ([`InlineMessage::publisher`]).
//! - [`storage`]: the [`storage::Store`] trait and its backends
//!   ([`storage::MemoryStore`], and `RedbStore` / `SledStore` with the
//!   `redb` / `sled` features), given to [`Server::store`].
//! - [`Stats`] / [`StatsSnapshot`]: the counters behind `$SYS`, `/stats`
//!   and `/metrics`; a snapshot serializes (serde) to the `/stats` keys.
//! - [`bridge`]: forward to and subscribe from an upstream broker.
//! - The examples in the repository's `examples/`, each starting with what
//!   it shows and how to run it (`cargo run --example NAME`):
//!   `edge_gateway` (hooks on the application's device table, the inline
//!   client, the application's own HTTP API), `auth_ledger` (the ledger
//!   hook, reloaded on SIGHUP), `persistent` (redb), `tls` (client
//!   certificates, certificate reload) and `websocket` (WebSocket and the
//!   HTTP stats, a listener added while serving).
//!
//! # Listeners
//!
//! Every transport plugs into one seam: a bound `TcpListener` plus a
//! [`Transport`], given to the [`Server`] builder (`.tcp`, `.tls`, `.ws`,
//! `.wss`, `.http`, `.https`) or, while it serves, to
//! [`ServerHandle::add_listener`]. TLS and WebSocket handshakes run in the
//! connection's own task, bounded by [`Limits::connect_timeout`].
//!
//! # Cargo features
//!
//! | feature | default | what it adds |
//! |---------|---------|--------------|
//! | `cli`   | yes     | the `roost` binary (command line, TOML config file, logging, signals) |
//! | `tls`   | yes     | MQTT over TLS ([`TlsConfig`]), with tokio-rustls on the `ring` provider; WSS and HTTPS with `ws` / `http` |
//! | `ws`    | yes     | MQTT over WebSocket ([`WsConfig`]): framing of roost's own for listeners, tokio-tungstenite for a bridge's WebSocket remote |
//! | `http`  | yes     | the HTTP stats endpoint: `/stats` (JSON), `/metrics` (Prometheus), `/healthz` |
//! | `ledger` | yes    | the built-in auth/ACL hook [`hooks::Ledger`]: users with bcrypt or argon2 hashes and ordered rules, from a TOML file |
//! | `redb`  | yes     | the redb storage backend (`storage::RedbStore`), the binary's default persistent store |
//! | `sled`  | no      | the sled storage backend (`storage::SledStore`) |
//! | `cluster` | no    | several nodes as one broker over NATS JetStream ([`ClusterConfig`]; `Server::cluster`; in progress: routing, shared subscriptions, retained messages, persistent sessions, the node registry and `$SYS/broker/cluster/...` are cluster-wide), with the `async-nats` client |
//! | `faulty` | no     | `storage::FaultyStore`, a wrapper that fails chosen storage calls, for testing how an application copes |
//!
//! Features are additive; a library user who wants plain TCP only can set
//! `default-features = false`. Without `redb` or `sled` the broker keeps
//! its state in memory ([`storage::MemoryStore`]) unless given a
//! [`storage::Store`] of the application's own.

pub mod admin;
pub mod bridge;
mod broker;
mod clock;
mod cluster;
pub mod codec;
mod config;
mod escape;
pub mod hooks;
mod ingress;
mod inline;
mod link;
mod message;
mod net;
// Its items are `pub` for `bench` (the `_bench` feature) and crate-private
// otherwise.
#[cfg_attr(not(feature = "_bench"), allow(unreachable_pub))]
mod router;
mod server;
mod stats;
pub mod topic;

#[cfg(feature = "cluster")]
pub use cluster::config::{ClusterConfig, ClusterConfigError, Credentials};
pub use config::{duration, qos, size, Capabilities, Durability, Limits, Memory, Options};
pub use inline::{InlineClient, InlineError, InlineMessage, PublishOptions, Subscription};
pub use message::{Message, MessageProperties};
pub use net::listener::{Listener, ListenerError, ListenerHandle, ServerHandle, Transport};
#[cfg(feature = "tls")]
pub use net::tls::{ClientAuth, ClientIdFrom, TlsConfig, UsernameFrom};
#[cfg(feature = "ws")]
pub use net::ws::WsConfig;
/// The storage trait and backends: the `roost-storage` crate, documented
/// here in full (its types are the same, whichever path names them).
#[doc(inline)]
pub use roost_storage as storage;
pub use server::{ServeError, Server};
pub use stats::{BridgeSnapshot, ClusterNodeSnapshot, ClusterSnapshot, Stats, StatsSnapshot};

/// The `tracing` target of the log lines that say a client was refused:
/// failed TLS and WebSocket handshakes, failed authentication, and
/// publishes and subscriptions the ACL denied. Each names who (client id,
/// user name, address) and why, at `info` or `warn`.
///
/// Anyone who can open a connection can make these, as fast as the network
/// allows, so a subscriber writing them to disk should limit their rate:
/// the `roost` binary lets through at most 10 a second of each kind (with
/// bursts of 50) and logs once a minute how many it held back. Every
/// refusal is also counted in [`StatsSnapshot`], whatever is logged.
///
/// ```
/// // For instance, to keep them out of an embedding's logs altogether:
/// let filter = format!("info,{}=off", roost::REFUSAL);
/// assert_eq!(filter, "info,roost::refusal=off");
/// ```
pub const REFUSAL: &str = "roost::refusal";

/// The routing tries, for `benches/topics.rs` only (feature `_bench`, which
/// is not part of the API: no semver promise, may change in any release).
///
/// A feature rather than a `--cfg` like `fuzzing`: a `--cfg` in RUSTFLAGS
/// rebuilds every dependency, and `cargo clippy --all-targets --all-features`
/// builds the bench with it.
#[cfg(feature = "_bench")]
#[doc(hidden)]
pub mod bench {
    pub use crate::router::{Match, RetainedTree, SubscriptionTree};
}

/// The cluster's engine connection, for `tests/cluster_engine.rs` only
/// (not an API yet: no semver promise; the embedding API comes with
/// routing).
#[cfg(feature = "cluster")]
#[doc(hidden)]
pub mod cluster_engine {
    pub use crate::cluster::nodes::{NodeRecord, NodeSet, TTL};
    pub use crate::net::cluster::{connect, ClusterError, Engine, Sending, Stored};
    pub use crate::net::roaming::stored_session;
}

/// Entry points for `fuzz/` (built with `--cfg fuzzing` only).
#[cfg(fuzzing)]
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::broker::drive::{run as drive_core, Summary};
}

// The README's examples are compiled as doctests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
