//! Retained messages cluster-wide, as plain data: how a retained message is
//! keyed and written in the retained bucket (`<name>_retained`), and which
//! of the bucket's entries a node applies to its own retained store.
//!
//! **Key**: the topic's subject tokens (`cluster::subject`, without a
//! prefix): `a/b` is `a.b`, `$foo/x y` is `_24foo.x_20y`. Tokens hold only
//! ASCII letters, digits, `-` and `_`, are never empty, and are joined by
//! `.`: exactly what a NATS key allows (`[-/_=.a-zA-Z0-9]+`, no leading or
//! trailing `.`), one key per topic and back.
//!
//! **Value**: a version byte, the message's absolute expiry (milliseconds
//! since the Unix epoch, big-endian, 0 for none), then the message as it
//! crosses between nodes (`cluster::envelope`). The absolute expiry is what
//! makes a Message Expiry Interval count from the original publish on a
//! node that reads the value minutes later. A cleared topic is a delete
//! (a KV delete marker), not a value.
//!
//! **Order**: the bucket's revisions order every write to a topic, and
//! every node applies the entries in that order, so all converge to the
//! bucket's last value. The node that published a retained message
//! stores it at once in its own core (read-your-writes), before its write
//! reaches the bucket; [`OwnWrites`] keeps the bucket's older entries for
//! that topic, which the watcher may still be delivering, from undoing it
//! meanwhile.

use crate::cluster::envelope;
use crate::cluster::subject::{subject_of, topic_of};
use crate::codec::Publish;
use bytes::{BufMut, Bytes, BytesMut};
use std::collections::HashMap;

/// The prefix `subject_of` writes under, cut off again: keys are the
/// tokens alone.
const P: &str = "k";

/// The bucket key of `topic` (a valid topic name).
pub(crate) fn key_of(topic: &str) -> String {
    subject_of(P, topic)[P.len() + 1..].to_owned()
}

/// The topic `key` names, if it is one [`key_of`] writes.
pub(crate) fn topic_of_key(key: &str) -> Option<String> {
    topic_of(P, &format!("{P}.{key}"))
}

/// The format of a value; another first byte is refused, so a later
/// format can be told apart.
const VERSION: u8 = 1;

/// The bucket value of the retained message `publish`, which expires at
/// `expires_at_ms` (milliseconds since the Unix epoch).
pub(crate) fn encode(publish: &Publish, expires_at_ms: Option<u64>) -> Bytes {
    let body = envelope::encode(publish);
    let mut v = BytesMut::with_capacity(9 + body.len());
    v.put_u8(VERSION);
    v.put_u64(expires_at_ms.unwrap_or(0));
    v.put_slice(&body);
    v.freeze()
}

/// Why a bucket entry is not a retained message of ours.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ValueError {
    /// The key does not name a topic.
    #[error("retained bucket key {0:?} does not name a topic")]
    Key(String),
    /// The value's header is missing or of an unknown version.
    #[error("retained bucket value for {0:?} is not in a format this node reads")]
    Format(String),
    /// The message in it does not decode, or names another topic.
    #[error(transparent)]
    Envelope(#[from] envelope::EnvelopeError),
}

/// The retained message stored under `key`, and its absolute expiry.
pub(crate) fn decode(key: &str, value: &[u8]) -> Result<(Publish, Option<u64>), ValueError> {
    let topic = topic_of_key(key).ok_or_else(|| ValueError::Key(key.to_owned()))?;
    let (head, body) = match value.split_first() {
        Some((&VERSION, rest)) if rest.len() >= 8 => rest.split_at(8),
        _ => return Err(ValueError::Format(topic)),
    };
    let expires = u64::from_be_bytes(head.try_into().expect("8 bytes"));
    let publish = envelope::decode(P, &subject_of(P, &topic), body)?;
    Ok((publish, (expires != 0).then_some(expires)))
}

/// What the watcher does with a bucket entry (see [`OwnWrites`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Judged<E> {
    /// Apply it to the local retained store.
    Apply(E),
    /// Older than (or the same as) this node's own write, which the local
    /// store already holds: skip.
    Skip,
    /// This node's own write to the topic is on its way to the bucket:
    /// held until it is stored ([`OwnWrites::stored`] hands it back if it
    /// is to be applied then).
    Hold,
}

/// This node's retained writes on their way to the bucket, by topic, for
/// the watcher; `E` is an entry the watcher holds.
///
/// The core stored each of them locally at once. Until the bucket has the
/// write (revision R), an entry the watcher delivers for the topic is
/// older than the local value or concurrent with it, so it is held; once
/// the write is stored, the held entry is applied only if the bucket
/// ordered it after R (another node's write that won), and later entries
/// up to R are skipped as older. A topic leaves the map once the watcher
/// has passed R: nothing older can come after.
///
/// One gap remains: an entry delivered between the core's local store and
/// the router's [`OwnWrites::begin`] is applied and briefly undoes the
/// local value, until the node's own write comes through the watcher,
/// which applies it again (a few milliseconds; only with writes to one
/// topic on two nodes at once).
#[derive(Debug)]
pub(crate) struct OwnWrites<E> {
    topics: HashMap<String, Own<E>>,
}

impl<E> Default for OwnWrites<E> {
    fn default() -> Self {
        OwnWrites {
            topics: HashMap::new(),
        }
    }
}

#[derive(Debug)]
struct Own<E> {
    /// Writes not yet stored.
    pending: u32,
    /// The revision of the last one stored (0: none yet).
    stored: u64,
    /// The newest entry the watcher delivered while writes were pending,
    /// with its revision.
    held: Option<(u64, E)>,
}

impl<E> OwnWrites<E> {
    /// A write to `topic` is about to go to the bucket.
    pub(crate) fn begin(&mut self, topic: &str) {
        self.topics
            .entry(topic.to_owned())
            .or_insert(Own {
                pending: 0,
                stored: 0,
                held: None,
            })
            .pending += 1;
    }

    /// The write to `topic` was stored as `revision` (`None`: given up, the
    /// node stops). Returns the held entry if it is now to be applied.
    pub(crate) fn stored(&mut self, topic: &str, revision: Option<u64>) -> Option<E> {
        let own = self.topics.get_mut(topic)?;
        own.pending = own.pending.saturating_sub(1);
        if let Some(r) = revision {
            own.stored = own.stored.max(r);
        }
        if own.pending > 0 {
            return None;
        }
        let stored = own.stored;
        match own.held.take() {
            // The watcher delivered our write or one after it: it has
            // passed it, nothing older follows. Our own is applied again
            // too: an older entry may have reached the core between its
            // local store and `begin` (see the type's gap).
            Some((h, e)) if h >= stored => {
                self.topics.remove(topic);
                Some(e)
            }
            _ if stored == 0 => {
                self.topics.remove(topic);
                None
            }
            _ => None,
        }
    }

    /// What to do with the entry `revision` for `topic` (`entry` is kept
    /// if held).
    pub(crate) fn judge(&mut self, topic: &str, revision: u64, entry: E) -> Judged<E> {
        let Some(own) = self.topics.get_mut(topic) else {
            return Judged::Apply(entry);
        };
        if own.pending > 0 {
            if own.held.as_ref().is_none_or(|(h, _)| revision > *h) {
                own.held = Some((revision, entry));
            }
            return Judged::Hold;
        }
        let stored = own.stored;
        if revision >= stored {
            // The watcher has passed our write: nothing older follows.
            self.topics.remove(topic);
        }
        // Our own write coming back is applied again (harmless when the
        // local store has it; it closes the type's gap when it does not).
        match revision >= stored {
            true => Judged::Apply(entry),
            false => Judged::Skip,
        }
    }

    /// Topics with an own write not yet stored: the local store's value is
    /// newer than the bucket's.
    pub(crate) fn pending(&self) -> impl Iterator<Item = &str> {
        self.topics
            .iter()
            .filter(|(_, o)| o.pending > 0)
            .map(|(t, _)| t.as_str())
    }

    /// Topics with writes in flight or not yet passed by the watcher.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.topics.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{ByteStr, PublishProperties, QoS, QosPid};
    use proptest::prelude::*;
    use std::num::NonZeroU16;

    /// What NATS accepts as a key (async-nats's check).
    fn valid_key(k: &str) -> bool {
        !k.is_empty()
            && !k.starts_with('.')
            && !k.ends_with('.')
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-/_=.".contains(&b))
    }

    #[test]
    fn examples() {
        assert_eq!(key_of("a/b"), "a.b");
        assert_eq!(key_of("$SYS/x"), "_24SYS.x");
        assert_eq!(key_of("/"), "_._");
        assert_eq!(topic_of_key("a.b").unwrap(), "a/b");
        assert_eq!(topic_of_key("a..b"), None);
        assert_eq!(topic_of_key(""), None);
    }

    fn any_topic() -> impl Strategy<Value = String> {
        let ch = prop_oneof![
            prop::sample::select(vec![
                'a', 'Z', '0', '-', '_', '.', '=', '*', '>', ' ', '$', '/', 'é'
            ]),
            any::<char>().prop_filter("MQTT forbids", |c| !matches!(c, '+' | '#' | '\0')),
        ];
        prop::collection::vec(ch, 1..24).prop_map(|cs| cs.into_iter().collect::<String>())
    }

    proptest! {
        #[test]
        fn every_topic_has_a_valid_key_that_reads_back(topic in any_topic()) {
            let key = key_of(&topic);
            prop_assert!(valid_key(&key), "{}", key);
            prop_assert_eq!(topic_of_key(&key), Some(topic));
        }

        #[test]
        fn a_key_that_reads_is_the_one_its_topic_writes(
            tokens in prop::collection::vec("[a-f0-9_A-]{1,6}", 1..5)
        ) {
            let key = tokens.join(".");
            if let Some(topic) = topic_of_key(&key) {
                prop_assert_eq!(key_of(&topic), key);
            }
        }
    }

    fn publish(topic: &str) -> Publish {
        Publish {
            dup: false,
            qos_pid: QosPid::new(QoS::AtLeastOnce, NonZeroU16::MIN),
            retain: true,
            topic: ByteStr::from(topic),
            payload: Bytes::from_static(b"on"),
            properties: PublishProperties {
                message_expiry_interval: Some(60),
                ..Default::default()
            },
        }
    }

    #[test]
    fn values_round_trip_with_their_absolute_expiry() {
        for expiry in [None, Some(1_700_000_000_123)] {
            let v = encode(&publish("a b/c"), expiry);
            let (p, e) = decode(&key_of("a b/c"), &v).unwrap();
            assert_eq!(e, expiry);
            assert_eq!(p.topic.as_str(), "a b/c");
            assert_eq!(&p.payload[..], b"on");
            assert!(p.retain);
        }
    }

    #[test]
    fn foreign_values_are_refused() {
        let v = encode(&publish("a/b"), None);
        assert!(matches!(decode("a.c", &v), Err(ValueError::Envelope(_))));
        assert!(matches!(decode("a..c", &v), Err(ValueError::Key(_))));
        assert!(matches!(decode("a.b", b"\x02"), Err(ValueError::Format(_))));
        assert!(matches!(
            decode("a.b", b"\x01\x00"),
            Err(ValueError::Format(_))
        ));
        assert!(matches!(decode("a.b", b""), Err(ValueError::Format(_))));
    }

    #[test]
    fn entries_older_than_an_own_write_never_undo_it() {
        let mut own = OwnWrites::default();
        // Two writes in flight; the watcher delivers older entries.
        own.begin("t");
        own.begin("t");
        assert_eq!(own.judge("t", 5, "e5"), Judged::Hold);
        assert_eq!(own.stored("t", Some(7)), None, "one still pending");
        assert_eq!(own.judge("t", 6, "e6"), Judged::Hold);
        assert_eq!(own.stored("t", Some(8)), None, "the held entry is older");
        assert_eq!(own.judge("t", 7, "e7"), Judged::Skip);
        assert_eq!(own.len(), 1);
        assert_eq!(
            own.judge("t", 8, "e8"),
            Judged::Apply("e8"),
            "our own value, again"
        );
        assert_eq!(own.len(), 0, "passed: forgotten");
        assert_eq!(own.judge("t", 9, "e9"), Judged::Apply("e9"));
        assert_eq!(own.judge("u", 1, "u1"), Judged::Apply("u1"), "no own write");
    }

    /// The gap: another node's older entry reached the core after our local
    /// store but before `begin`, so it was applied; our own write coming
    /// back through the watcher puts our value back (it is the bucket's
    /// last).
    #[test]
    fn an_older_entry_applied_before_begin_is_undone_by_our_own_write() {
        let mut own = OwnWrites::default();
        assert_eq!(own.judge("t", 4, "theirs"), Judged::Apply("theirs"));
        own.begin("t");
        assert_eq!(own.stored("t", Some(5)), None);
        assert_eq!(own.judge("t", 5, "ours"), Judged::Apply("ours"));
        assert_eq!(own.len(), 0);
        // Delivered while pending, it comes back from `stored`.
        own.begin("u");
        assert_eq!(own.judge("u", 2, "ours"), Judged::Hold);
        assert_eq!(own.stored("u", Some(2)), Some("ours"));
    }

    #[test]
    fn another_nodes_later_write_wins() {
        let mut own = OwnWrites::default();
        own.begin("t");
        // The other node's write landed after ours (8 > 7).
        assert_eq!(own.judge("t", 7, "e7"), Judged::Hold);
        assert_eq!(own.judge("t", 8, "e8"), Judged::Hold);
        assert_eq!(own.stored("t", Some(7)), Some("e8"), "apply the later one");
        assert_eq!(own.len(), 0);
        // And an entry after the store, newer than ours, applies at once.
        own.begin("u");
        assert_eq!(own.stored("u", Some(3)), None);
        assert_eq!(own.judge("u", 2, "u2"), Judged::Skip);
        assert_eq!(own.judge("u", 4, "u4"), Judged::Apply("u4"));
        assert_eq!(own.len(), 0);
        // A write given up (the node stops) protects nothing.
        own.begin("v");
        assert_eq!(own.stored("v", None), None);
        assert_eq!(own.len(), 0);
    }
}
