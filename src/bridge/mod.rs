//! Bridges to upstream MQTT brokers: their configuration and the sans-IO
//! client side of their connections.
//!
//! A bridge is a persistent session that points outwards: `forward` rules
//! carry local messages to the remote broker, `subscribe` rules carry the
//! remote's messages into this one. Here it is plain, validated data and
//! sans-IO protocol logic: the configuration, `link` (the client side of
//! one bridge connection), `backoff` (reconnect delays) and `echo` (loop
//! prevention for 3.1.1). The driver that joins a link to the bridge's
//! local session over a socket is in `net`; [`crate::Server::bridge`]
//! adds one to a server.
//!
//! ```
//! use roost::bridge::{Bridge, Remote, Rule};
//! use roost::codec::QoS;
//!
//! let bridge = Bridge::new("cloud", Remote::parse("mqtts://broker.example.com")?)
//!     .forward(Rule::new("devices/#", QoS::AtLeastOnce).remote_prefix("site-17/"))
//!     .subscribe(Rule::new("commands/#", QoS::AtLeastOnce).remote_prefix("site-17/"))
//!     .tls(roost::bridge::BridgeTls::new("ca.pem"));
//! bridge.validate()?;
//! assert_eq!(bridge.client_id, "roost-bridge-cloud");
//! assert_eq!(bridge.forward[0].to_remote("devices/t1").as_deref(), Some("site-17/devices/t1"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod backoff;
mod config;
mod echo;
mod link;
mod remote;
mod rule;

pub use config::{validate_all, Bridge, BridgeError, BridgeTls, Password, Protocol};
pub use remote::{Remote, RemoteError, Scheme};
pub use rule::{Direction, Rule, RuleError};

pub(crate) use backoff::Backoff;
pub(crate) use echo::Echoes;
pub(crate) use link::{Event, Link, Outgoing, SendError, Settings};
