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
//! | `faulty` | no     | `storage::FaultyStore`, a wrapper that fails chosen storage calls, for testing how an application copes |
//!
//! Features are additive; a library user who wants plain TCP only can set
//! `default-features = false`.

// serde_json's `json!` recurses once per key: `/stats` has more keys than
// the default limit of 128 allows.
#![recursion_limit = "256"]

pub mod bridge;
mod broker;
mod clock;
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

pub use config::{duration, qos, size, Capabilities, Durability, Limits, Memory, Options};
pub use inline::{InlineClient, InlineError, InlineMessage, PublishOptions, Subscription};
pub use message::{Message, MessageProperties};
pub use net::listener::{Listener, ListenerError, ListenerHandle, ServerHandle, Transport};
#[cfg(feature = "tls")]
pub use net::tls::{ClientAuth, ClientIdFrom, TlsConfig, UsernameFrom};
#[cfg(feature = "ws")]
pub use net::ws::WsConfig;
/// The storage trait and backends (the `roost-storage` crate).
pub use roost_storage as storage;
pub use server::{ServeError, Server};
pub use stats::{BridgeSnapshot, Stats, StatsSnapshot};

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
