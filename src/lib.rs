//! roost: an embeddable, persistent MQTT 3.1, 3.1.1 and 5.0 broker.

pub mod codec;
pub mod router;
pub mod topic;
