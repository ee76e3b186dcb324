//! Several roost nodes as one broker over NATS JetStream (issue 19), as
//! plain data: how MQTT topics and filters are named as NATS subjects
//! (`subject`), and what a node is told to join one (`config`, with the
//! `cluster` feature), and how a message travels between nodes
//! (`envelope`). The engine connection lives at the edge (`net::cluster`),
//! the router that joins it to the core in `server::clustering`.

// Routing uses part of these (issue 19); filter subjects, the buckets'
// names and the like wait for sessions, retained and shared subscriptions.
#![cfg_attr(
    not(test),
    allow(
        dead_code,
        reason = "issue 19: sessions and retained are not clustered yet"
    )
)]

#[cfg(feature = "cluster")]
pub(crate) mod config;
#[cfg(feature = "cluster")]
pub(crate) mod envelope;
#[cfg(feature = "cluster")]
pub(crate) mod groups;
pub(crate) mod subject;

/// Client ids under this prefix belong to the nodes' routers
/// (`$cluster/<node>`, inline clients): network clients may not use them.
pub(crate) const CLIENT_ID_PREFIX: &str = "$cluster/";
