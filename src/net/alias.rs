//! Topic aliases (MQTT 5.0 section 3.3.2.3.4), one table per direction per
//! connection. Pure bookkeeping, no I/O.
//!
//! Most connections never use an alias, so a table is allocated (and
//! takes room in the connection) only once the first alias is set up.

use crate::codec::{ByteStr, Publish, ReasonCode};
use std::collections::HashMap;
use std::num::NonZeroU16;

/// Aliases the client set up towards the broker.
#[derive(Debug, Default)]
pub struct InboundAliases {
    max: u16,
    #[allow(
        clippy::box_collection,
        reason = "a pointer, not an empty map, per connection"
    )]
    map: Option<Box<HashMap<u16, ByteStr>>>,
}

impl InboundAliases {
    /// A table accepting aliases 1..=`max` (0: none).
    pub fn new(max: u16) -> Self {
        InboundAliases { max, map: None }
    }

    /// Resolves or records the alias of an inbound PUBLISH, leaving its
    /// topic filled in. Errors are the reason code to disconnect with.
    pub fn resolve(&mut self, p: &mut Publish) -> Result<(), ReasonCode> {
        let Some(alias) = p.properties.topic_alias.take() else {
            return Ok(());
        };
        if alias.get() > self.max {
            // [MQTT-3.3.2-9], [MQTT-3.3.2-10]
            return Err(ReasonCode::TopicAliasInvalid);
        }
        if p.topic.is_empty() {
            match self.map.as_ref().and_then(|m| m.get(&alias.get())) {
                Some(t) => p.topic = t.clone(),
                // An alias that was never set up is a protocol error.
                None => return Err(ReasonCode::ProtocolError),
            }
        } else {
            // Keep our own copy so the table does not pin read buffers.
            self.map
                .get_or_insert_default()
                .insert(alias.get(), p.topic.detach());
        }
        Ok(())
    }
}

/// Aliases the broker sets up towards the client: the first `max` distinct
/// topics get an alias; later topics are sent in full. A topic that already
/// has one is sent as alias plus empty topic name.
#[derive(Debug, Default)]
pub struct OutboundAliases {
    max: u16,
    #[allow(
        clippy::box_collection,
        reason = "a pointer, not an empty map, per connection"
    )]
    map: Option<Box<HashMap<ByteStr, u16>>>,
}

impl OutboundAliases {
    /// A table using aliases 1..=`max` (the client's Topic Alias Maximum).
    pub fn new(max: u16) -> Self {
        OutboundAliases { max, map: None }
    }

    /// Rewrites an outbound PUBLISH to use an alias where possible.
    pub fn apply(&mut self, p: &mut Publish) {
        let (alias, with_name) = self.alias(&p.topic);
        p.properties.topic_alias = alias;
        if !with_name {
            p.topic = ByteStr::new();
        }
    }

    /// The alias to send `topic` under, if any, and whether the topic name
    /// must go with it (it must unless the client already knows the alias).
    pub fn alias(&mut self, topic: &ByteStr) -> (Option<NonZeroU16>, bool) {
        if self.max == 0 {
            return (None, true);
        }
        let map = self.map.get_or_insert_default();
        if let Some(&a) = map.get(topic) {
            (NonZeroU16::new(a), false)
        } else if map.len() < usize::from(self.max) {
            let a = map.len() as u16 + 1;
            map.insert(topic.clone(), a);
            (NonZeroU16::new(a), true)
        } else {
            (None, true)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{PublishProperties, QosPid};
    use bytes::Bytes;

    fn publish(topic: &str, alias: Option<u16>) -> Publish {
        Publish {
            dup: false,
            qos_pid: QosPid::AtMostOnce,
            retain: false,
            topic: topic.into(),
            payload: Bytes::new(),
            properties: PublishProperties {
                topic_alias: alias.and_then(NonZeroU16::new),
                ..Default::default()
            },
        }
    }

    #[test]
    fn inbound_sets_then_uses() {
        let mut t = InboundAliases::new(2);
        let mut p = publish("a/b", Some(1));
        t.resolve(&mut p).unwrap();
        let mut q = publish("", Some(1));
        t.resolve(&mut q).unwrap();
        assert_eq!(q.topic, "a/b");
        assert_eq!(
            t.resolve(&mut publish("x", Some(3))),
            Err(ReasonCode::TopicAliasInvalid)
        );
        assert_eq!(
            t.resolve(&mut publish("", Some(2))),
            Err(ReasonCode::ProtocolError)
        );
    }

    #[test]
    fn inbound_disabled() {
        let mut t = InboundAliases::new(0);
        assert_eq!(
            t.resolve(&mut publish("x", Some(1))),
            Err(ReasonCode::TopicAliasInvalid)
        );
    }

    #[test]
    fn outbound_assigns_up_to_max() {
        let mut t = OutboundAliases::new(1);
        let mut p = publish("a", None);
        t.apply(&mut p);
        assert_eq!(p.properties.topic_alias.map(|a| a.get()), Some(1));
        assert_eq!(p.topic, "a");
        let mut p = publish("a", None);
        t.apply(&mut p);
        assert_eq!(p.topic, "");
        let mut p = publish("b", None);
        t.apply(&mut p);
        assert_eq!((p.topic.as_str(), p.properties.topic_alias), ("b", None));
    }
}
