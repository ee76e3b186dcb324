//! The allow-all hook, for development.

use super::{AclHook, AuthHook, BoxFuture, Client, Decision};
use crate::codec::Connect;
use crate::message::Message;

/// Allows every connection, publish and subscription. For development
/// only: anyone who can reach the broker can do anything. A broker with no
/// hooks behaves the same way; adding `AllowAll` states the intent and
/// logs a warning at start-up.
#[derive(Debug, Clone, Copy, Default)]
pub struct AllowAll;

impl AuthHook for AllowAll {
    fn authenticate<'a>(&'a self, _: &'a Client, _: &'a Connect) -> BoxFuture<'a, Decision> {
        Box::pin(std::future::ready(Decision::Allow))
    }
}

impl AclHook for AllowAll {
    fn can_publish<'a>(&'a self, _: &'a Client, _: &'a str) -> BoxFuture<'a, Decision> {
        Box::pin(std::future::ready(Decision::Allow))
    }
    fn can_subscribe<'a>(&'a self, _: &'a Client, _: &'a str) -> BoxFuture<'a, Decision> {
        Box::pin(std::future::ready(Decision::Allow))
    }
    fn can_receive(&self, _: &Client, _: &Message) -> Decision {
        Decision::Allow
    }
}
