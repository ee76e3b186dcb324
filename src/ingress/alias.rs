//! Topic aliases the client sets up towards the broker (MQTT 5.0 section
//! 3.3.2.3.4): pure bookkeeping, no I/O. The table the broker keeps towards
//! the client is the wire encoder's (`net::alias`); the byte accounting
//! both share is here.
//!
//! Most connections never use an alias, so a table is allocated (and
//! takes room in the connection) only once the first alias is set up.
//!
//! Each table is bounded in bytes as well as in aliases
//! (`limits.maximum_topic_alias_bytes`): a topic name can be 64 KiB, so a
//! count alone let one connection pin gigabytes of topic names.

use crate::codec::{ByteStr, Publish, ReasonCode};
use std::collections::HashMap;

/// What an alias costs against the byte budget beyond its topic's bytes:
/// about what the map spends on the entry (the key, a string handle, its
/// heap header, and the map's own slack), so that many short topics are
/// bounded too.
pub(crate) const ALIAS_OVERHEAD: usize = 32;

/// What `topic` costs an alias table.
pub(crate) fn cost(topic: &str) -> usize {
    topic.len() + ALIAS_OVERHEAD
}

/// A table's entries with their total cost (see [`ALIAS_OVERHEAD`]).
#[derive(Debug)]
pub(crate) struct Table<K, V> {
    pub(crate) map: HashMap<K, V>,
    pub(crate) bytes: usize,
}

impl<K, V> Default for Table<K, V> {
    fn default() -> Self {
        Table {
            map: HashMap::new(),
            bytes: 0,
        }
    }
}

/// Aliases the client set up towards the broker.
#[derive(Debug, Default)]
pub(crate) struct InboundAliases {
    max: u16,
    /// Most bytes the table may cost (saturated at `u32::MAX`: a pointer
    /// and two small numbers keep the connection's state small).
    budget: u32,
    table: Option<Box<Table<u16, ByteStr>>>,
}

impl InboundAliases {
    /// A table accepting aliases 1..=`max` (0: none), costing at most
    /// `budget` bytes.
    pub(crate) fn new(max: u16, budget: usize) -> Self {
        InboundAliases {
            max,
            budget: u32::try_from(budget).unwrap_or(u32::MAX),
            table: None,
        }
    }

    /// Resolves or records the alias of an inbound PUBLISH, leaving its
    /// topic filled in. Errors are the reason code to disconnect with.
    ///
    /// A new or changed alias whose topic would take the table past its
    /// byte budget is refused with Quota exceeded (0x97: "an implementation
    /// or administratively imposed limit has been exceeded"). Topic Alias
    /// invalid (0x94) would be wrong: the spec keeps it for an alias above
    /// the Topic Alias Maximum, which the client did respect.
    pub(crate) fn resolve(&mut self, p: &mut Publish) -> Result<(), ReasonCode> {
        let Some(alias) = p.properties.topic_alias.take() else {
            return Ok(());
        };
        if alias.get() > self.max {
            // [MQTT-3.3.2-9], [MQTT-3.3.2-10]
            return Err(ReasonCode::TopicAliasInvalid);
        }
        if p.topic.is_empty() {
            match self.table.as_ref().and_then(|t| t.map.get(&alias.get())) {
                Some(t) => p.topic = t.clone(),
                // An alias that was never set up is a protocol error.
                None => return Err(ReasonCode::ProtocolError),
            }
        } else {
            let table = self.table.get_or_insert_default();
            let freed = table.map.get(&alias.get()).map_or(0, |t| cost(t));
            let bytes = table.bytes - freed + cost(&p.topic);
            if bytes > self.budget as usize {
                return Err(ReasonCode::QuotaExceeded);
            }
            table.bytes = bytes;
            // Keep our own copy so the table does not pin read buffers.
            table.map.insert(alias.get(), p.topic.detach());
        }
        Ok(())
    }
}

/// A QoS 0 PUBLISH of `topic` with an empty payload and, if given, topic
/// alias `alias` (0 stands for an invalid alias): what the alias tables'
/// tests feed them.
#[cfg(test)]
pub(crate) fn aliased(topic: &str, alias: Option<u16>) -> Publish {
    Publish::new(topic, bytes::Bytes::new()).with_properties(crate::codec::PublishProperties {
        topic_alias: alias.and_then(std::num::NonZeroU16::new),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish(topic: &str, alias: Option<u16>) -> Publish {
        aliased(topic, alias)
    }

    #[test]
    fn inbound_sets_then_uses() {
        let mut t = InboundAliases::new(2, 1 << 20);
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
        let mut t = InboundAliases::new(0, 1 << 20);
        assert_eq!(
            t.resolve(&mut publish("x", Some(1))),
            Err(ReasonCode::TopicAliasInvalid)
        );
    }

    #[test]
    fn inbound_topics_are_bounded_in_bytes() {
        // Room for two 8-byte topics, not three.
        let mut t = InboundAliases::new(10, 2 * (8 + ALIAS_OVERHEAD));
        t.resolve(&mut publish("aaaaaaaa", Some(1))).unwrap();
        t.resolve(&mut publish("bbbbbbbb", Some(2))).unwrap();
        assert_eq!(
            t.resolve(&mut publish("cccccccc", Some(3))),
            Err(ReasonCode::QuotaExceeded)
        );
        // Replacing an alias frees its old topic's bytes.
        t.resolve(&mut publish("dddddddd", Some(2))).unwrap();
        assert_eq!(
            t.resolve(&mut publish("ddddddddd", Some(1))),
            Err(ReasonCode::QuotaExceeded)
        );
        let mut q = publish("", Some(2));
        t.resolve(&mut q).unwrap();
        assert_eq!(q.topic, "dddddddd");
    }
}
