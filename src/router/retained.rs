//! Retained messages indexed by topic name, for matching new subscriptions.

use std::collections::HashMap;
use std::fmt;
use std::str::Split;

/// Retained messages indexed by topic name, for finding those a new
/// subscription's filter matches.
///
/// A trie keyed by topic level: a literal filter level is one map lookup,
/// `+` visits the children of one node and `#` one subtree, so the cost is
/// proportional to the nodes the filter can match. Nodes left empty by
/// [`remove`](Self::remove) or [`retain`](Self::retain) are pruned.
pub struct RetainedTree<V> {
    root: Node<V>,
    /// Number of retained topics.
    len: usize,
}

/// A trie node; the topic prefix is the path from the root.
///
/// Invariant: every node other than the root holds a value or a non-empty
/// child. The root never holds a value: every topic has at least one level.
struct Node<V> {
    children: HashMap<Box<str>, Node<V>>,
    /// The topic name, stored once to hand out in matches, and its value.
    value: Option<(Box<str>, V)>,
}

impl<V> Node<V> {
    fn new() -> Self {
        Node {
            children: HashMap::new(),
            value: None,
        }
    }

    fn is_empty(&self) -> bool {
        self.value.is_none() && self.children.is_empty()
    }

    #[cfg(test)]
    fn count(&self) -> usize {
        1 + self.children.values().map(Node::count).sum::<usize>()
    }

    fn get(&self, topic: &str) -> Option<&V> {
        let mut node = self;
        for level in topic.split('/') {
            node = node.children.get(level)?;
        }
        node.value.as_ref().map(|(_, value)| value)
    }

    /// Removes `levels` below `self`, pruning nodes it leaves empty.
    fn remove(&mut self, mut levels: Split<'_, char>) -> Option<V> {
        let Some(level) = levels.next() else {
            return self.value.take().map(|(_, value)| value);
        };
        let child = self.children.get_mut(level)?;
        let removed = child.remove(levels);
        if child.is_empty() {
            self.children.remove(level);
            shrink(&mut self.children);
        }
        removed
    }

    /// Visits the values below `self` matched by the remaining filter `levels`.
    /// `root` is true only at the root, where wildcards skip `$` topics.
    fn walk<'a, F>(&'a self, mut levels: Split<'_, char>, root: bool, visit: &mut F)
    where
        F: FnMut(&'a str, &'a V),
    {
        let Some(level) = levels.next() else {
            if let Some((topic, value)) = &self.value {
                visit(topic, value);
            }
            return;
        };
        let last = levels.clone().next().is_none();
        match level {
            // `{prefix}/#` matches `{prefix}` and everything below it.
            "#" if last => {
                if let Some((topic, value)) = &self.value {
                    visit(topic, value);
                }
                for child in self.wildcard_children(root) {
                    child.visit_all(visit);
                }
            }
            "+" => {
                for child in self.wildcard_children(root) {
                    child.walk(levels.clone(), false, visit);
                }
            }
            _ => {
                if let Some(child) = self.children.get(level) {
                    child.walk(levels, false, visit);
                }
            }
        }
    }

    /// The children a wildcard level may enter: at the root, not `$` topics
    /// ([MQTT-4.7.2-1]).
    fn wildcard_children(&self, root: bool) -> impl Iterator<Item = &Node<V>> {
        self.children
            .iter()
            .filter(move |(level, _)| !(root && level.starts_with('$')))
            .map(|(_, child)| child)
    }

    fn visit_all<'a, F>(&'a self, visit: &mut F)
    where
        F: FnMut(&'a str, &'a V),
    {
        if let Some((topic, value)) = &self.value {
            visit(topic, value);
        }
        for child in self.children.values() {
            child.visit_all(visit);
        }
    }

    /// Drops the values `keep` rejects and prunes emptied nodes; returns how
    /// many values were dropped.
    fn retain<F>(&mut self, keep: &mut F) -> usize
    where
        F: FnMut(&str, &mut V) -> bool,
    {
        let mut dropped = 0;
        if let Some((topic, value)) = &mut self.value {
            if !keep(topic, value) {
                self.value = None;
                dropped += 1;
            }
        }
        if !self.children.is_empty() {
            self.children.retain(|_, child| {
                dropped += child.retain(keep);
                !child.is_empty()
            });
            shrink(&mut self.children);
        }
        dropped
    }
}

/// Gives memory back after churn; the quarter threshold keeps it amortised.
fn shrink<V>(map: &mut HashMap<Box<str>, V>) {
    if map.len() * 4 < map.capacity() {
        map.shrink_to_fit();
    }
}

impl<V> Default for RetainedTree<V> {
    fn default() -> Self {
        RetainedTree {
            root: Node::new(),
            len: 0,
        }
    }
}

impl<V> RetainedTree<V> {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Retains `value` for the topic name `topic`, returning the value it
    /// replaces. `topic` is assumed valid ([`valid_name`](crate::topic::valid_name)).
    pub fn insert(&mut self, topic: &str, value: V) -> Option<V> {
        let mut node = &mut self.root;
        for level in topic.split('/') {
            // Look up first so an existing level costs no allocation.
            if !node.children.contains_key(level) {
                node.children.insert(level.into(), Node::new());
            }
            node = node.children.get_mut(level).expect("inserted above");
        }
        match &mut node.value {
            Some((_, old)) => Some(std::mem::replace(old, value)),
            slot @ None => {
                *slot = Some((topic.into(), value));
                self.len += 1;
                None
            }
        }
    }

    /// Removes the message retained for `topic`, pruning emptied nodes.
    pub fn remove(&mut self, topic: &str) -> Option<V> {
        let removed = self.root.remove(topic.split('/'));
        if removed.is_some() {
            self.len -= 1;
        }
        removed
    }

    /// The message retained for exactly `topic`.
    pub fn get(&self, topic: &str) -> Option<&V> {
        self.root.get(topic)
    }

    /// Calls `visit(topic, value)` for every retained topic matched by the
    /// plain filter `filter` (section 4.7), honouring [MQTT-4.7.2-1]: a filter
    /// starting with `+` or `#` does not match topics starting with `$`.
    ///
    /// The order of calls is unspecified. Allocates nothing.
    pub fn for_each_match<'a>(&'a self, filter: &str, mut visit: impl FnMut(&'a str, &'a V)) {
        self.root.walk(filter.split('/'), true, &mut visit);
    }

    /// Keeps only the messages for which `keep(topic, value)` returns true,
    /// as an expiry sweep would, and prunes the nodes left empty.
    pub fn retain(&mut self, mut keep: impl FnMut(&str, &mut V) -> bool) {
        self.len -= self.root.retain(&mut keep);
    }

    /// The number of retained topics.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no message is retained.
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

impl<V> fmt::Debug for RetainedTree<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetainedTree")
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
    use std::collections::{BTreeMap, BTreeSet};

    fn found<V>(tree: &RetainedTree<V>, filter: &str) -> Vec<String> {
        let mut out = BTreeSet::new();
        tree.for_each_match(filter, |topic, _| assert!(out.insert(topic.to_owned())));
        out.into_iter().collect()
    }

    const TOPICS: [&str; 10] = [
        "sport",
        "sport/",
        "sport/tennis/player1",
        "sport/tennis/player1/ranking",
        "sport/tennis/player1/score/wimbledon",
        "/",
        "/finance",
        "",
        "$SYS",
        "$SYS/monitor/Clients",
    ];

    #[test]
    fn spec_examples() {
        let mut tree = RetainedTree::new();
        for (i, t) in TOPICS.iter().enumerate() {
            assert_eq!(tree.insert(t, i), None);
        }
        assert_eq!(tree.len(), TOPICS.len());
        let cases: &[(&str, &[&str])] = &[
            (
                "sport/tennis/player1/#",
                &[
                    "sport/tennis/player1",
                    "sport/tennis/player1/ranking",
                    "sport/tennis/player1/score/wimbledon",
                ],
            ),
            (
                "sport/#",
                &[
                    "sport",
                    "sport/",
                    "sport/tennis/player1",
                    "sport/tennis/player1/ranking",
                    "sport/tennis/player1/score/wimbledon",
                ],
            ),
            ("+", &["", "sport"]),
            ("+/+", &["/", "/finance", "sport/"]),
            ("/+", &["/", "/finance"]),
            (
                "+/tennis/#",
                &[
                    "sport/tennis/player1",
                    "sport/tennis/player1/ranking",
                    "sport/tennis/player1/score/wimbledon",
                ],
            ),
            ("$SYS/#", &["$SYS", "$SYS/monitor/Clients"]),
            ("+/monitor/Clients", &[]),
            ("$SYS/monitor/+", &["$SYS/monitor/Clients"]),
            ("sport/tennis/player1", &["sport/tennis/player1"]),
            ("sport/tennis", &[]),
        ];
        for (filter, expected) in cases {
            assert_eq!(found(&tree, filter), *expected, "{filter}");
        }
        // `#` is everything but `$` topics.
        let all: Vec<&str> = {
            let mut v: Vec<&str> = TOPICS
                .iter()
                .copied()
                .filter(|t| !t.starts_with('$'))
                .collect();
            v.sort();
            v
        };
        assert_eq!(found(&tree, "#"), all);
    }

    #[test]
    fn insert_get_remove() {
        let mut tree = RetainedTree::new();
        assert!(tree.is_empty());
        assert_eq!(tree.insert("a/b", 1), None);
        assert_eq!(tree.insert("a/b", 2), Some(1));
        assert_eq!(tree.insert("a", 3), None);
        assert_eq!(tree.len(), 2);
        assert_eq!(tree.get("a/b"), Some(&2));
        assert_eq!(tree.get("a"), Some(&3));
        assert_eq!(tree.get("a/b/c"), None);
        assert_eq!(tree.get("b"), None);
        assert_eq!(tree.remove("a/c"), None);
        assert_eq!(tree.remove("a"), Some(3));
        assert_eq!(tree.remove("a"), None);
        assert_eq!(tree.get("a/b"), Some(&2));
        assert_eq!(tree.node_count(), 3);
        assert_eq!(tree.remove("a/b"), Some(2));
        assert!(tree.is_empty());
        assert_eq!(tree.node_count(), 1);
    }

    #[test]
    fn retain_sweeps_and_prunes() {
        let mut tree = RetainedTree::new();
        for (i, t) in TOPICS.iter().enumerate() {
            tree.insert(t, i);
        }
        tree.retain(|topic, value| {
            *value += 100;
            topic.starts_with("sport/tennis")
        });
        assert_eq!(tree.len(), 3);
        assert_eq!(tree.get("sport/tennis/player1"), Some(&102));
        assert_eq!(tree.get("sport"), None);
        // root, sport, tennis, player1, ranking, score, wimbledon
        assert_eq!(tree.node_count(), 7);
        tree.retain(|_, _| false);
        assert!(tree.is_empty());
        assert_eq!(tree.node_count(), 1);
    }

    #[test]
    fn churn_prunes_back_to_the_root() {
        let mut tree = RetainedTree::new();
        let mut topics = Vec::new();
        for i in 0..10_000u32 {
            let topic = format!("t/{}/{}/{}", i % 7, i % 131, i);
            tree.insert(&topic, i);
            topics.push(topic);
        }
        assert_eq!(tree.len(), 10_000);
        for topic in topics.iter().rev().step_by(2) {
            assert!(tree.remove(topic).is_some());
        }
        for topic in topics.iter().rev().skip(1).step_by(2) {
            assert!(tree.remove(topic).is_some());
        }
        assert!(tree.is_empty());
        assert_eq!(tree.node_count(), 1);
        assert!(tree.root.children.capacity() <= 8);
    }

    proptest! {
        #[test]
        fn agrees_with_matches(
            topics in prop::collection::vec(topic_strategy(), 0..40),
            removed in prop::collection::vec(topic_strategy(), 0..10),
            filters in prop::collection::vec(filter_strategy(), 1..10),
        ) {
            let mut tree = RetainedTree::new();
            let mut model = BTreeMap::new();
            for (i, topic) in topics.iter().enumerate() {
                prop_assert_eq!(tree.insert(topic, i), model.insert(topic.clone(), i));
            }
            for topic in &removed {
                prop_assert_eq!(tree.remove(topic), model.remove(topic));
            }
            prop_assert_eq!(tree.len(), model.len());
            for filter in &filters {
                let expected: Vec<String> =
                    model.keys().filter(|t| matches(filter, t)).cloned().collect();
                prop_assert_eq!(found(&tree, filter), expected, "filter {:?}", filter);
            }
            tree.retain(|_, _| false);
            prop_assert_eq!(tree.node_count(), 1);
        }
    }
}
