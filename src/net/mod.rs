//! Listeners and the per-connection driver. The only code that touches
//! sockets.

pub(crate) mod alias;
pub(crate) mod connection;
mod duplex;
pub(crate) mod encode;
pub(crate) mod error;
#[cfg(feature = "http")]
pub(crate) mod http;
pub(crate) mod listener;
#[cfg(feature = "ws")]
mod metered;
pub(crate) mod preauth;
pub(crate) mod shared;
pub(crate) mod sweep;
#[cfg(feature = "tls")]
pub(crate) mod tls;
pub(crate) mod wbuf;
#[cfg(feature = "ws")]
pub(crate) mod ws;
#[cfg(feature = "tls")]
mod x509;
