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

pub mod broker;
pub mod codec;
mod config;
pub mod hooks;
mod inline;
mod net;
pub mod outbox;
pub mod router;
mod server;
mod stats;
pub mod topic;

pub use config::{Capabilities, Durability, Limits, Options};
pub use inline::{InlineClient, InlineError, InlineMessage, PublishOptions, Subscription};
/// The storage trait and backends (the `roost-storage` crate).
pub use roost_storage as storage;
pub use server::{ServeError, Server};
pub use stats::{Stats, StatsSnapshot};

// The README's examples are compiled as doctests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
