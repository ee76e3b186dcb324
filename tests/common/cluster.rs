//! Nodes of one roost cluster in the test process: each a real broker on
//! 127.0.0.1:0 joined through a real nats-server ([`super::nats`]).

use super::nats::NatsCluster;
use super::{unique, TestBroker};
use roost::{ClusterConfig, Options, Server};
use std::time::Duration;

/// Node `node` of cluster `name` on `nats`.
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
    (
        TestBroker::with_server(a).await,
        TestBroker::with_server(b).await,
    )
}
