//! The network edge: listeners (TCP, TLS, WebSocket, HTTP), the
//! per-connection driver, dialing a bridge's remote (`dial`), the
//! cluster's engine connection to NATS (`cluster`), and wire
//! encoding of what the core queued (`encode`). The only code that touches
//! sockets. It drives the layers below it (the ingress's rules, the core's
//! events, the link's outboxes); none of them imports it.

#[cfg(feature = "http")]
mod admin_api;
pub(crate) mod alias;
pub(crate) mod bridge;
#[cfg(feature = "cluster")]
pub(crate) mod cluster;
pub(crate) mod connection;
#[cfg(feature = "tls")]
pub(crate) mod crl;
pub(crate) mod dial;
mod duplex;
pub(crate) mod encode;
pub(crate) mod error;
#[cfg(feature = "http")]
pub(crate) mod http;
pub(crate) mod listener;
#[cfg(feature = "ws")]
mod metered;
#[cfg(feature = "tls")]
mod pace;
pub(crate) mod per_ip;
pub(crate) mod preauth;
#[cfg(feature = "tls")]
mod resumption;
#[cfg(feature = "cluster")]
pub(crate) mod roaming;
pub(crate) mod shared;
mod stall;
pub(crate) mod sweep;
#[cfg(feature = "tls")]
pub(crate) mod tls;
pub(crate) mod wbuf;
#[cfg(feature = "ws")]
pub(crate) mod ws;
#[cfg(feature = "tls")]
mod x509;
