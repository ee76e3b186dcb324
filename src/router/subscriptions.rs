//! The subscription trie: from a published topic name to the matching
//! ordinary subscriptions and share groups.

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::str::Split;

/// Subscriptions indexed by topic filter, for matching topic names.
///
/// A trie keyed by filter level. Each node keeps its literal children in a
/// map and its `+` and `#` children apart, so matching a topic walks only the
/// branches that can match: the cost is proportional to the matching nodes
/// (at most three lookups per topic level and node reached), not to the number
/// of subscriptions. Nodes left empty by [`remove`](Self::remove) are pruned.
///
/// `K` identifies a session; `V` is whatever the broker keeps per
/// subscription (options, subscription identifier).
pub struct SubscriptionTree<K, V> {
    root: Node<K, V>,
    /// Number of (filter, group, key) subscriptions.
    len: usize,
}

/// One subscription, or one share group, that matches a topic.
///
/// A session subscribed with several overlapping filters appears once per
/// filter; merging those is the caller's choice ([MQTT-3.3.4-2]).
pub enum Match<'a, K, V> {
    /// An ordinary (non-shared) subscription.
    Direct {
        /// The filter as subscribed (without any `$share` prefix).
        filter: &'a str,
        /// The subscribing session.
        key: &'a K,
        /// The subscription's value.
        value: &'a V,
    },
    /// A share group: the caller picks one member to deliver to.
    Shared {
        /// The plain filter the group subscribed to.
        filter: &'a str,
        /// The share name.
        group: &'a str,
        /// The members in order of first subscription; never empty.
        members: &'a [(K, V)],
    },
}

// Derived Clone/Copy would demand `K: Copy, V: Copy`; only references are copied.
impl<K, V> Clone for Match<'_, K, V> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<K, V> Copy for Match<'_, K, V> {}

impl<K: fmt::Debug, V: fmt::Debug> fmt::Debug for Match<'_, K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Match::Direct { filter, key, value } => f
                .debug_struct("Direct")
                .field("filter", filter)
                .field("key", key)
                .field("value", value)
                .finish(),
            Match::Shared {
                filter,
                group,
                members,
            } => f
                .debug_struct("Shared")
                .field("filter", filter)
                .field("group", group)
                .field("members", members)
                .finish(),
        }
    }
}

/// A trie node: the filter prefix is the path from the root.
///
/// Invariant: every node other than the root has a subscriber or a non-empty
/// child (empty nodes are pruned), and `subs`/`hash` are `None` rather than
/// empty.
struct Node<K, V> {
    literal: HashMap<Box<str>, Node<K, V>>,
    plus: Option<Box<Node<K, V>>>,
    /// Subscribers of `{prefix}/#`. A `#` level is always last, so it needs no node.
    hash: Option<Box<Subscribers<K, V>>>,
    /// Subscribers of exactly `{prefix}`.
    subs: Option<Box<Subscribers<K, V>>>,
}

/// Everything subscribed to one filter.
struct Subscribers<K, V> {
    /// The filter, stored once and handed out in every [`Match`].
    filter: Box<str>,
    direct: HashMap<K, V>,
    /// Share groups, few per filter; a linear scan beats hashing here.
    groups: Vec<Group<K, V>>,
}

struct Group<K, V> {
    name: Box<str>,
    /// In order of first subscription; never empty.
    members: Vec<(K, V)>,
}

impl<K, V> Node<K, V> {
    fn new() -> Self {
        Node {
            literal: HashMap::new(),
            plus: None,
            hash: None,
            subs: None,
        }
    }

    fn is_empty(&self) -> bool {
        self.literal.is_empty() && self.plus.is_none() && self.hash.is_none() && self.subs.is_none()
    }

    #[cfg(test)]
    fn count(&self) -> usize {
        1 + self.literal.values().map(Node::count).sum::<usize>()
            + self.plus.as_ref().map_or(0, |p| p.count())
    }
}

impl<K: Eq + Hash, V> Node<K, V> {
    /// The subscriber slot for `filter`, if it has nodes.
    fn slot(&self, filter: &str) -> Option<&Subscribers<K, V>> {
        let mut node = self;
        let mut levels = filter.split('/');
        while let Some(level) = levels.next() {
            let last = levels.clone().next().is_none();
            node = match level {
                "#" if last => return node.hash.as_deref(),
                "+" => node.plus.as_deref()?,
                _ => node.literal.get(level)?,
            };
        }
        node.subs.as_deref()
    }

    /// The subscriber slot for `filter`, creating nodes on the way.
    fn slot_mut(&mut self, filter: &str) -> &mut Option<Box<Subscribers<K, V>>> {
        let mut node = self;
        let mut levels = filter.split('/');
        while let Some(level) = levels.next() {
            let last = levels.clone().next().is_none();
            node = match level {
                "#" if last => return &mut node.hash,
                "+" => node.plus.get_or_insert_with(|| Box::new(Node::new())),
                _ => {
                    // Look up first so an existing level costs no allocation.
                    if !node.literal.contains_key(level) {
                        node.literal.insert(level.into(), Node::new());
                    }
                    node.literal.get_mut(level).expect("inserted above")
                }
            };
        }
        &mut node.subs
    }

    /// Removes a subscription below `self`, pruning nodes it leaves empty.
    fn remove(&mut self, mut levels: Split<'_, char>, group: Option<&str>, key: &K) -> Option<V> {
        let Some(level) = levels.next() else {
            return Subscribers::remove_from(&mut self.subs, group, key);
        };
        let last = levels.clone().next().is_none();
        match level {
            "#" if last => Subscribers::remove_from(&mut self.hash, group, key),
            "+" => {
                let child = self.plus.as_deref_mut()?;
                let removed = child.remove(levels, group, key);
                if child.is_empty() {
                    self.plus = None;
                }
                removed
            }
            _ => {
                let child = self.literal.get_mut(level)?;
                let removed = child.remove(levels, group, key);
                if child.is_empty() {
                    self.literal.remove(level);
                    shrink(&mut self.literal);
                }
                removed
            }
        }
    }

    /// Visits the subscribers of every filter below `self` that matches the
    /// remaining `levels`. `wildcards` is false only at the root of a `$` topic.
    fn walk<'a, F>(&'a self, mut levels: Split<'_, char>, wildcards: bool, visit: &mut F)
    where
        F: FnMut(Match<'a, K, V>),
    {
        #[cfg(test)]
        tests::WALKED.with(|n| n.set(n.get() + 1));
        match levels.next() {
            None => {
                if let Some(subs) = &self.subs {
                    subs.emit(visit);
                }
                // `{prefix}/#` also matches `{prefix}` itself.
                if let Some(hash) = &self.hash {
                    hash.emit(visit);
                }
            }
            Some(level) => {
                if wildcards {
                    if let Some(hash) = &self.hash {
                        hash.emit(visit);
                    }
                    if let Some(plus) = &self.plus {
                        plus.walk(levels.clone(), true, visit);
                    }
                }
                if let Some(child) = self.literal.get(level) {
                    child.walk(levels, true, visit);
                }
            }
        }
    }
}

impl<K: Eq + Hash, V> Subscribers<K, V> {
    fn new(filter: &str) -> Self {
        Subscribers {
            filter: filter.into(),
            direct: HashMap::new(),
            groups: Vec::new(),
        }
    }

    fn insert(&mut self, group: Option<&str>, key: K, value: V) -> Option<V> {
        let Some(name) = group else {
            return self.direct.insert(key, value);
        };
        let Some(group) = self.groups.iter_mut().find(|g| &*g.name == name) else {
            self.groups.push(Group {
                name: name.into(),
                members: vec![(key, value)],
            });
            return None;
        };
        match group.members.iter_mut().find(|(k, _)| *k == key) {
            // Replacing keeps the member's place in the rotation.
            Some((_, old)) => Some(std::mem::replace(old, value)),
            None => {
                group.members.push((key, value));
                None
            }
        }
    }

    /// Removes from `slot`, emptying the slot when the last subscriber goes.
    fn remove_from(slot: &mut Option<Box<Self>>, group: Option<&str>, key: &K) -> Option<V> {
        let subs = slot.as_deref_mut()?;
        let removed = match group {
            None => {
                let removed = subs.direct.remove(key);
                shrink(&mut subs.direct);
                removed
            }
            Some(name) => {
                let g = subs.groups.iter().position(|g| &*g.name == name)?;
                let members = &mut subs.groups[g].members;
                let m = members.iter().position(|(k, _)| k == key)?;
                let (_, value) = members.remove(m);
                if members.is_empty() {
                    subs.groups.remove(g);
                }
                Some(value)
            }
        };
        if subs.direct.is_empty() && subs.groups.is_empty() {
            *slot = None;
        }
        removed
    }

    fn emit<'a, F>(&'a self, visit: &mut F)
    where
        F: FnMut(Match<'a, K, V>),
    {
        for (key, value) in &self.direct {
            visit(Match::Direct {
                filter: &self.filter,
                key,
                value,
            });
        }
        for group in &self.groups {
            visit(Match::Shared {
                filter: &self.filter,
                group: &group.name,
                members: &group.members,
            });
        }
    }
}

/// Gives memory back after churn; the quarter threshold keeps it amortised.
fn shrink<K: Eq + Hash, V>(map: &mut HashMap<K, V>) {
    if map.len() * 4 < map.capacity() {
        map.shrink_to_fit();
    }
}

impl<K, V> Default for SubscriptionTree<K, V> {
    fn default() -> Self {
        SubscriptionTree {
            root: Node::new(),
            len: 0,
        }
    }
}

impl<K: Clone + Eq + Hash, V> SubscriptionTree<K, V> {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces the subscription of `key` to `filter` (a plain filter,
    /// without any `$share` prefix) in share group `group` (`None` for an
    /// ordinary subscription). Returns the previous value if one existed.
    ///
    /// A new share group member goes last; a replaced one keeps its place.
    /// `filter` is assumed valid ([`valid_filter`](crate::topic::valid_filter)).
    pub fn insert(&mut self, filter: &str, group: Option<&str>, key: K, value: V) -> Option<V> {
        let slot = self.root.slot_mut(filter);
        let subs = slot.get_or_insert_with(|| Box::new(Subscribers::new(filter)));
        let previous = subs.insert(group, key, value);
        if previous.is_none() {
            self.len += 1;
        }
        previous
    }

    /// Removes the subscription of `key` to `filter` in `group`, returning its
    /// value if it existed. Nodes and groups left empty are pruned.
    pub fn remove(&mut self, filter: &str, group: Option<&str>, key: &K) -> Option<V> {
        let removed = self.root.remove(filter.split('/'), group, key);
        if removed.is_some() {
            self.len -= 1;
        }
        removed
    }

    /// Calls `visit` once per ordinary subscription and once per share group
    /// whose filter matches the topic name `topic` (section 4.7, including
    /// [MQTT-4.7.2-1]: a `$` topic is not matched by a leading `+` or `#`).
    ///
    /// The order of calls is unspecified. Allocates nothing.
    pub fn for_each_match<'a>(&'a self, topic: &str, mut visit: impl FnMut(Match<'a, K, V>)) {
        self.root
            .walk(topic.split('/'), !topic.starts_with('$'), &mut visit);
    }

    /// The members of share group `group` on `filter` (a plain filter), in
    /// order of first subscription; empty if it has none. A direct lookup,
    /// for a delivery addressed to the group rather than matched.
    pub fn group_members(&self, filter: &str, group: &str) -> &[(K, V)] {
        self.root
            .slot(filter)
            .and_then(|s| s.groups.iter().find(|g| &*g.name == group))
            .map_or(&[], |g| &g.members)
    }

    /// The number of (filter, group, key) subscriptions.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no subscriptions.
    // Only tests call it; it stays beside `len`, which the `_bench` feature
    // exposes (clippy: len_without_is_empty).
    #[allow(dead_code)]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The number of trie nodes, the root included.
    #[cfg(test)]
    fn node_count(&self) -> usize {
        self.root.count()
    }
}

impl<K, V> fmt::Debug for SubscriptionTree<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubscriptionTree")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topic::matches;
    use crate::topic::strategy::{filter_strategy, topic_strategy};
    use proptest::prelude::*;
    use std::cell::Cell;
    use std::collections::BTreeSet;

    thread_local! {
        /// Nodes visited by `walk` on this thread.
        pub(super) static WALKED: Cell<usize> = const { Cell::new(0) };
    }

    /// What matched, flattened for comparison: (filter, group, members).
    type Found = BTreeSet<(String, Option<String>, Vec<u32>)>;

    fn found(tree: &SubscriptionTree<u32, u8>, topic: &str) -> Found {
        let mut out = Found::new();
        tree.for_each_match(topic, |m| {
            let entry = match m {
                Match::Direct { filter, key, .. } => (filter.to_owned(), None, vec![*key]),
                Match::Shared {
                    filter,
                    group,
                    members,
                } => {
                    assert!(!members.is_empty());
                    let keys = members.iter().map(|(k, _)| *k).collect();
                    (filter.to_owned(), Some(group.to_owned()), keys)
                }
            };
            assert!(out.insert(entry), "visited twice");
        });
        out
    }

    fn direct_filters(tree: &SubscriptionTree<u32, u8>, topic: &str) -> Vec<String> {
        found(tree, topic).into_iter().map(|(f, _, _)| f).collect()
    }

    #[test]
    fn spec_examples() {
        let mut tree = SubscriptionTree::new();
        let filters = [
            "sport/tennis/player1/#",
            "sport/#",
            "sport/tennis/+",
            "+",
            "+/+",
            "/+",
            "+/tennis/#",
            "#",
            "$SYS/#",
            "+/monitor/Clients",
            "$SYS/monitor/+",
        ];
        for (i, f) in filters.iter().enumerate() {
            assert_eq!(tree.insert(f, None, i as u32, 0), None);
        }
        assert_eq!(tree.len(), filters.len());
        let cases: &[(&str, &[&str])] = &[
            (
                "sport/tennis/player1",
                &[
                    "#",
                    "+/tennis/#",
                    "sport/#",
                    "sport/tennis/+",
                    "sport/tennis/player1/#",
                ],
            ),
            (
                "sport/tennis/player1/score/wimbledon",
                &["#", "+/tennis/#", "sport/#", "sport/tennis/player1/#"],
            ),
            ("sport", &["#", "+", "sport/#"]),
            ("sport/", &["#", "+/+", "sport/#"]),
            ("/", &["#", "+/+", "/+"]),
            ("/finance", &["#", "+/+", "/+"]),
            ("", &["#", "+"]),
            ("$SYS/monitor/Clients", &["$SYS/#", "$SYS/monitor/+"]),
            ("$SYS", &["$SYS/#"]),
            ("a/monitor/Clients", &["#", "+/monitor/Clients"]),
        ];
        for (topic, expected) in cases {
            assert_eq!(direct_filters(&tree, topic), *expected, "{topic}");
            for f in filters {
                assert_eq!(expected.contains(&f), matches(f, topic), "{f} vs {topic}");
            }
        }
    }

    #[test]
    fn insert_replaces_and_remove_returns() {
        let mut tree = SubscriptionTree::new();
        assert!(tree.is_empty());
        assert_eq!(tree.insert("a/+", None, 1u32, 10u8), None);
        assert_eq!(tree.insert("a/+", None, 1, 11), Some(10));
        assert_eq!(tree.insert("a/+", None, 2, 20), None);
        assert_eq!(tree.insert("a/+", Some("g"), 1, 30), None);
        assert_eq!(tree.len(), 3);
        let mut values = Vec::new();
        tree.for_each_match("a/b", |m| {
            if let Match::Direct { key, value, .. } = m {
                values.push((*key, *value));
            }
        });
        values.sort();
        assert_eq!(values, [(1, 11), (2, 20)]);
        assert_eq!(tree.remove("a/+", None, &3), None);
        assert_eq!(tree.remove("a/b", None, &1), None);
        assert_eq!(tree.remove("a/#", None, &1), None);
        assert_eq!(tree.remove("a/+", Some("h"), &1), None);
        assert_eq!(tree.remove("a/+", None, &1), Some(11));
        assert_eq!(tree.remove("a/+", None, &1), None);
        assert_eq!(tree.remove("a/+", Some("g"), &1), Some(30));
        assert_eq!(tree.remove("a/+", None, &2), Some(20));
        assert!(tree.is_empty());
        assert_eq!(tree.node_count(), 1);
    }

    #[test]
    fn group_members_are_looked_up_by_filter_and_name() {
        let mut tree = SubscriptionTree::new();
        tree.insert("a/+/#", Some("g"), 2u32, 0u8);
        tree.insert("a/+/#", Some("g"), 1, 0);
        tree.insert("a/+/#", Some("h"), 3, 0);
        tree.insert("a/+/#", None, 4, 0);
        tree.insert("#", Some("g"), 5, 0);
        let keys = |f: &str, g: &str| -> Vec<u32> {
            tree.group_members(f, g).iter().map(|&(k, _)| k).collect()
        };
        assert_eq!(keys("a/+/#", "g"), [2, 1]);
        assert_eq!(keys("a/+/#", "h"), [3]);
        assert_eq!(keys("#", "g"), [5]);
        // Other filters and groups, matching or not, have none.
        for (f, g) in [
            ("a/+", "g"),
            ("a/x/#", "g"),
            ("a/+/#", "x"),
            ("b", "g"),
            ("", "g"),
        ] {
            assert!(keys(f, g).is_empty(), "{f:?} {g:?}");
        }
    }

    #[test]
    fn shared_groups() {
        let mut tree = SubscriptionTree::new();
        tree.insert("a/#", Some("g"), 3u32, 0u8);
        tree.insert("a/#", Some("g"), 1, 0);
        tree.insert("a/#", Some("g"), 2, 0);
        tree.insert("a/#", Some("h"), 1, 0);
        tree.insert("#", Some("g"), 9, 0);
        tree.insert("a/#", None, 1, 0);
        let g = |keys: &[u32]| ("a/#".to_owned(), Some("g".to_owned()), keys.to_vec());
        let h = ("a/#".to_owned(), Some("h".to_owned()), vec![1]);
        let root_g = ("#".to_owned(), Some("g".to_owned()), vec![9]);
        let direct = ("a/#".to_owned(), None, vec![1]);
        let expect = |items: Vec<(String, Option<String>, Vec<u32>)>| items.into_iter().collect();
        assert_eq!(
            found(&tree, "a/x"),
            expect(vec![
                g(&[3, 1, 2]),
                h.clone(),
                root_g.clone(),
                direct.clone()
            ])
        );
        // Replacing keeps the member's place; a new member goes last.
        assert_eq!(tree.insert("a/#", Some("g"), 1, 5), Some(0));
        tree.remove("a/#", Some("g"), &3);
        tree.insert("a/#", Some("g"), 3, 0);
        let mut members = Vec::new();
        tree.for_each_match("a", |m| {
            if let Match::Shared {
                group: "g",
                filter: "a/#",
                members: ms,
            } = m
            {
                members = ms.iter().map(|&(k, v)| (k, v)).collect();
            }
        });
        assert_eq!(members, [(1, 5), (2, 0), (3, 0)]);
        // Removing the last member removes the group.
        assert_eq!(tree.remove("a/#", Some("h"), &1), Some(0));
        assert_eq!(
            found(&tree, "a"),
            expect(vec![g(&[1, 2, 3]), root_g.clone(), direct])
        );
        // A shared `#` group at the root still honours the `$` rule.
        assert_eq!(found(&tree, "$SYS/x"), Found::new());
        for k in [1, 2, 3] {
            tree.remove("a/#", Some("g"), &k);
        }
        tree.remove("a/#", None, &1);
        tree.remove("#", Some("g"), &9);
        assert!(tree.is_empty());
        assert_eq!(tree.node_count(), 1);
    }

    #[test]
    fn filter_is_stored_once_per_node() {
        let mut tree = SubscriptionTree::new();
        tree.insert("x/+/z", None, 1u32, 0u8);
        tree.insert("x/+/z", None, 2, 0);
        let mut ptrs = Vec::new();
        tree.for_each_match("x/y/z", |m| {
            if let Match::Direct { filter, .. } = m {
                ptrs.push(filter.as_ptr());
            }
        });
        assert_eq!(ptrs.len(), 2);
        assert_eq!(ptrs[0], ptrs[1]);
    }

    #[test]
    fn many_devices_walk_few_nodes() {
        let mut tree = SubscriptionTree::new();
        for id in 0..5_000u32 {
            tree.insert(&format!("devices/{id}/+/state"), None, id, 0u8);
        }
        tree.insert("devices/#", None, 100_000, 0);
        tree.insert("+/123/#", Some("g"), 100_001, 0);
        tree.insert("devices/+/x/+", None, 100_002, 0);
        WALKED.with(|n| n.set(0));
        let got = found(&tree, "devices/123/x/state");
        // root, devices, +, 123, 123/+, 123/+/state, +/123, devices/+, +/x, +/x/+
        assert_eq!(WALKED.with(Cell::get), 10);
        let expected: Found = [
            ("devices/123/+/state".to_owned(), None, vec![123]),
            ("devices/#".to_owned(), None, vec![100_000]),
            ("+/123/#".to_owned(), Some("g".to_owned()), vec![100_001]),
            ("devices/+/x/+".to_owned(), None, vec![100_002]),
        ]
        .into_iter()
        .collect();
        assert_eq!(got, expected);
        // root, devices, 5000 ids, 5000 `+`, 5000 state, +/x/+ (3), +/123 (2)
        assert_eq!(tree.node_count(), 2 + 3 * 5_000 + 3 + 2);
    }

    /// A tiny deterministic generator, so the churn test needs no seed plumbing.
    struct Lcg(u64);

    impl Lcg {
        fn next(&mut self, n: usize) -> usize {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((self.0 >> 33) as usize) % n
        }
    }

    #[test]
    fn churn_prunes_back_to_the_root() {
        const LEVELS: [&str; 7] = ["", "a", "b", "c", "$SYS", "+", "#"];
        let mut rng = Lcg(7);
        let mut subs = Vec::new();
        let mut tree = SubscriptionTree::new();
        for i in 0..10_000u32 {
            let depth = 1 + rng.next(6);
            let mut levels: Vec<String> = (0..depth)
                .map(|_| LEVELS[rng.next(LEVELS.len())].to_owned())
                .collect();
            for l in &mut levels[..depth - 1] {
                if l == "#" {
                    *l = format!("x{i}");
                }
            }
            let filter = levels.join("/");
            let group = [None, Some("g1"), Some("g2")][rng.next(3)];
            let key = rng.next(50) as u32;
            if tree.insert(&filter, group, key, i).is_none() {
                subs.push((filter, group, key));
            }
        }
        assert_eq!(tree.len(), subs.len());
        assert!(tree.node_count() > 1_000);
        // Remove in a different order from insertion.
        while !subs.is_empty() {
            let (filter, group, key) = subs.swap_remove(rng.next(subs.len()));
            assert!(tree.remove(&filter, group, &key).is_some(), "{filter}");
        }
        assert!(tree.is_empty());
        assert_eq!(tree.node_count(), 1);
        assert!(tree.root.literal.capacity() <= 8);
    }

    #[test]
    fn deep_filters() {
        let mut tree = SubscriptionTree::new();
        let deep = vec!["+"; 1_000].join("/");
        tree.insert(&deep, None, 1u32, 0u8);
        let topic = vec!["a"; 1_000].join("/");
        assert_eq!(direct_filters(&tree, &topic), std::slice::from_ref(&deep));
        assert_eq!(tree.remove(&deep, None, &1), Some(0));
        assert_eq!(tree.node_count(), 1);
    }

    /// A model subscription slot: (filter, group).
    type Subscription = (String, Option<&'static str>);

    fn subscription() -> impl Strategy<Value = (String, Option<&'static str>, u32)> {
        (
            filter_strategy(),
            prop::sample::select(vec![None, Some("g"), Some("h")]),
            0..4u32,
        )
    }

    proptest! {
        #[test]
        fn agrees_with_matches(
            subs in prop::collection::vec(subscription(), 0..40),
            removals in prop::collection::vec(any::<prop::sample::Index>(), 0..20),
            topics in prop::collection::vec(topic_strategy(), 1..10),
        ) {
            let mut tree = SubscriptionTree::new();
            // The model: (filter, group) -> members in insertion order.
            let mut model: Vec<(Subscription, Vec<u32>)> = Vec::new();
            for (filter, group, key) in &subs {
                tree.insert(filter, *group, *key, 0u8);
                let id = (filter.clone(), *group);
                match model.iter_mut().find(|(i, _)| *i == id) {
                    Some((_, keys)) if !keys.contains(key) => keys.push(*key),
                    Some(_) => {}
                    None => model.push((id, vec![*key])),
                }
            }
            for index in removals {
                if subs.is_empty() {
                    break;
                }
                let (filter, group, key) = &subs[index.index(subs.len())];
                let was = tree.remove(filter, *group, key).is_some();
                let id = (filter.clone(), *group);
                let slot = model.iter().position(|(i, _)| *i == id);
                let member = slot.and_then(|s| model[s].1.iter().position(|k| k == key));
                prop_assert_eq!(was, member.is_some());
                if let (Some(s), Some(m)) = (slot, member) {
                    model[s].1.remove(m);
                    if model[s].1.is_empty() {
                        model.remove(s);
                    }
                }
            }
            let len: usize = model.iter().map(|(_, keys)| keys.len()).sum();
            prop_assert_eq!(tree.len(), len);
            for topic in &topics {
                let mut expected = Found::new();
                for ((filter, group), keys) in &model {
                    if !matches(filter, topic) {
                        continue;
                    }
                    match group {
                        None => {
                            for k in keys {
                                expected.insert((filter.clone(), None, vec![*k]));
                            }
                        }
                        Some(g) => {
                            expected.insert((filter.clone(), Some(g.to_string()), keys.clone()));
                        }
                    }
                }
                prop_assert_eq!(found(&tree, topic), expected, "topic {:?}", topic);
            }
        }
    }
}
