//! Routing indexes: which subscriptions match a published topic, and which
//! retained messages match a new subscription.
//!
//! Both are tries keyed by topic level, pure and synchronous; the broker core
//! owns them and decides locking. Operations recurse once per level of the
//! filter or topic involved (and dropping a tree once per level of its deepest
//! branch), so the broker must bound the number of topic levels it accepts.

mod retained;
mod subscriptions;

pub use retained::RetainedTree;
pub use subscriptions::{Match, SubscriptionTree};
