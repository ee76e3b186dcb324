//! Several roost nodes as one broker over NATS JetStream (issue 19), as
//! plain data: how MQTT topics and filters are named as NATS subjects
//! (`subject`), and what a node is told to join one (`config`, with the
//! `cluster` feature). The driver that talks to NATS lives at the edge
//! (`net::cluster`).

// The cluster's driver is being built (issue 19); until it lands, these
// are exercised by their tests only.
#![cfg_attr(
    not(test),
    allow(dead_code, reason = "the cluster driver (issue 19) is not in yet")
)]

#[cfg(feature = "cluster")]
pub(crate) mod config;
#[cfg(feature = "cluster")]
pub(crate) mod envelope;
pub(crate) mod subject;

/// Client ids under this prefix belong to the nodes' routers
/// (`$cluster/<node>`, inline clients): network clients may not use them.
pub(crate) const CLIENT_ID_PREFIX: &str = "$cluster/";
