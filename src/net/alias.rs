//! Topic aliases the broker sets up towards the client (MQTT 5.0 section
//! 3.3.2.3.4), applied as PUBLISHes are encoded. Pure bookkeeping, no I/O.
//! The client's aliases towards the broker, and the byte accounting both
//! tables share, are the ingress's ([`crate::ingress`]).

use crate::codec::{ByteStr, Publish};
use crate::ingress::alias::{cost, Table};
use std::num::NonZeroU16;

/// Aliases the broker sets up towards the client: distinct topics get an
/// alias while aliases (the client's Topic Alias Maximum) and the byte
/// budget last; later topics are sent in full. A topic that already has
/// one is sent as alias plus empty topic name.
#[derive(Debug, Default)]
pub(crate) struct OutboundAliases {
    max: u16,
    /// As in the inbound table (`ingress::alias::InboundAliases`).
    budget: u32,
    table: Option<Box<Table<ByteStr, u16>>>,
}

impl OutboundAliases {
    /// A table using aliases 1..=`max` (the client's Topic Alias Maximum),
    /// costing at most `budget` bytes.
    pub(crate) fn new(max: u16, budget: usize) -> Self {
        OutboundAliases {
            max,
            budget: u32::try_from(budget).unwrap_or(u32::MAX),
            table: None,
        }
    }

    /// Rewrites an outbound PUBLISH to use an alias where possible.
    pub(crate) fn apply(&mut self, p: &mut Publish) {
        let (alias, with_name) = self.alias(&p.topic);
        p.properties.topic_alias = alias;
        if !with_name {
            p.topic = ByteStr::new();
        }
    }

    /// The alias to send `topic` under, if any, and whether the topic name
    /// must go with it (it must unless the client already knows the alias).
    pub(crate) fn alias(&mut self, topic: &ByteStr) -> (Option<NonZeroU16>, bool) {
        if self.max == 0 {
            return (None, true);
        }
        let table = self.table.get_or_insert_default();
        if let Some(&a) = table.map.get(topic) {
            return (NonZeroU16::new(a), false);
        }
        let bytes = table.bytes + cost(topic);
        if table.map.len() < usize::from(self.max) && bytes <= self.budget as usize {
            let a = table.map.len() as u16 + 1;
            table.bytes = bytes;
            // A copy: the message's topic may share a buffer with its
            // payload, which the table would otherwise keep alive.
            table.map.insert(topic.detach(), a);
            (NonZeroU16::new(a), true)
        } else {
            (None, true)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingress::alias::ALIAS_OVERHEAD;

    fn publish(topic: &str, alias: Option<u16>) -> Publish {
        crate::ingress::alias::aliased(topic, alias)
    }

    #[test]
    fn outbound_assigns_up_to_max() {
        let mut t = OutboundAliases::new(1, 1 << 20);
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

    #[test]
    fn outbound_topics_are_bounded_in_bytes() {
        let mut t = OutboundAliases::new(100, 4 + ALIAS_OVERHEAD);
        let mut p = publish("long/topic", None);
        t.apply(&mut p);
        assert_eq!(
            (p.topic.as_str(), p.properties.topic_alias),
            ("long/topic", None)
        );
        let mut p = publish("a/b", None);
        t.apply(&mut p);
        assert_eq!(p.properties.topic_alias.map(|a| a.get()), Some(1));
        let mut p = publish("c/d", None);
        t.apply(&mut p);
        assert_eq!((p.topic.as_str(), p.properties.topic_alias), ("c/d", None));
    }
}
