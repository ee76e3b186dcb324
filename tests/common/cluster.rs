//! Roost nodes of one cluster, in process, for the cluster tests: each on
//! 127.0.0.1:0, joined through a real nats-server ([`super::nats`]) under
//! a fresh cluster name, so tests sharing NATS servers do not see each
//! other's streams, consumers or subjects.

use super::nats::NatsCluster;
use super::{unique, TestBroker};
use roost::{ClusterConfig, Options, Server};
use std::time::Duration;

/// The configuration of node `node` of cluster `name` on `nats`.
pub(crate) fn config(nats: &NatsCluster, name: &str, node: &str) -> ClusterConfig {
    ClusterConfig {
        servers: nats.urls(),
        name: name.into(),
        node: node.into(),
        timeout: Duration::from_secs(2),
        ..ClusterConfig::default()
    }
}

/// Two nodes of one cluster (a fresh cluster name on `nats`).
pub(crate) async fn two_nodes(nats: &NatsCluster) -> (TestBroker, TestBroker) {
    nodes_with(nats, || Server::new(Options::default())).await
}

/// Two nodes built by `server`, joined in a fresh cluster on `nats`.
pub(crate) async fn nodes_with(
    nats: &NatsCluster,
    server: impl Fn() -> Server,
) -> (TestBroker, TestBroker) {
    let name = unique("route");
    let a = server().cluster(config(nats, &name, "a"));
    let b = server().cluster(config(nats, &name, "b"));
    // Each once it serves (see `nats::node`).
    (super::nats::node(a).await, super::nats::node(b).await)
}
