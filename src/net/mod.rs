//! Listeners and the per-connection driver. The only code that touches
//! sockets.

pub(crate) mod alias;
pub(crate) mod connection;
