//! The bridge to upstream MQTT brokers (issue 17): roost as a client of a
//! remote broker, forwarding local messages up and remote commands down.
//!
//! [`link`] is the sans-IO client side of one bridge connection;
//! [`backoff`] spaces reconnect attempts.

// Nothing uses the bridge yet: the driver (sockets, the broker's queue,
// storage) wires it in with issue 17's next step (then the re-exports
// below are used too).
#![allow(dead_code, unused_imports)]

mod backoff;
mod link;

pub(crate) use backoff::Backoff;
pub(crate) use link::{Event, Inflight, Link, LinkError, Outgoing, SendError, Settings, Token};
