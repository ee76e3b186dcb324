//! Retained messages indexed by topic name, for matching new subscriptions.
//!
//! The index is what stays in memory for every retained topic, so it is
//! kept compact: a topic is stored once, as the path of its levels through
//! the trie (levels shared with other topics stored once for all of them),
//! and a node's children are a small sorted vector, or a B-tree once there
//! are many. Children are kept in order so that matches come out in a
//! stable order (level by level, bytewise), and a walk can resume after the
//! last topic it gave ([`RetainedTree::matches_after`]): a subscription
//! matching a million topics is served a page at a time without a copy of
//! the match list.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::{Bound, ControlFlow};
use std::str::Split;

/// Children kept in a sorted vector up to this many; past it, a B-tree
/// (inserting into a sorted vector moves everything after the new child).
const FEW: usize = 16;

/// Retained messages indexed by topic name, for finding those a new
/// subscription's filter matches.
///
/// A trie keyed by topic level: a literal filter level is one lookup, `+`
/// visits the children of one node and `#` one subtree, so the cost is
/// proportional to the nodes the filter can match. Nodes left empty by
/// [`remove`](Self::remove) or [`retain`](Self::retain) are pruned.
pub struct RetainedTree<V> {
    root: Node<V>,
    /// Number of retained topics.
    len: usize,
}

/// A trie node; the topic is the path from the root.
///
/// Invariant: every node other than the root holds a value or a non-empty
/// child. The root never holds a value: every topic has at least one level.
struct Node<V> {
    /// `None` for a leaf (most nodes): no allocation.
    children: Option<Box<Children<V>>>,
    value: Option<V>,
}

/// A node's children, in level order.
enum Children<V> {
    /// Sorted by level, at most [`FEW`] (or a few more, see `remove`).
    Few(Vec<(Box<str>, Node<V>)>),
    Many(BTreeMap<Box<str>, Node<V>>),
}

impl<V> Children<V> {
    fn len(&self) -> usize {
        match self {
            Children::Few(v) => v.len(),
            Children::Many(m) => m.len(),
        }
    }

    fn get(&self, level: &str) -> Option<&Node<V>> {
        match self {
            Children::Few(v) => v
                .binary_search_by(|(l, _)| (**l).cmp(level))
                .ok()
                .map(|i| &v[i].1),
            Children::Many(m) => m.get(level),
        }
    }

    fn get_mut(&mut self, level: &str) -> Option<&mut Node<V>> {
        match self {
            Children::Few(v) => match v.binary_search_by(|(l, _)| (**l).cmp(level)) {
                Ok(i) => Some(&mut v[i].1),
                Err(_) => None,
            },
            Children::Many(m) => m.get_mut(level),
        }
    }

    /// The child for `level`, created if need be (no allocation if it exists).
    fn entry(&mut self, level: &str) -> &mut Node<V> {
        if let Children::Few(v) = self {
            if v.len() >= FEW && v.binary_search_by(|(l, _)| (**l).cmp(level)).is_err() {
                let many = std::mem::take(v).into_iter().collect();
                *self = Children::Many(many);
            }
        }
        match self {
            Children::Few(v) => {
                let i = match v.binary_search_by(|(l, _)| (**l).cmp(level)) {
                    Ok(i) => i,
                    Err(i) => {
                        // Exactly as many slots as children: most nodes
                        // have a few, which doubling would leave a third
                        // empty (the copy is of at most FEW slots).
                        v.reserve_exact(1);
                        v.insert(i, (level.into(), Node::new()));
                        i
                    }
                };
                &mut v[i].1
            }
            Children::Many(m) => {
                if !m.contains_key(level) {
                    m.insert(level.into(), Node::new());
                }
                m.get_mut(level).expect("inserted above")
            }
        }
    }

    fn remove(&mut self, level: &str) {
        match self {
            Children::Few(v) => {
                if let Ok(i) = v.binary_search_by(|(l, _)| (**l).cmp(level)) {
                    v.remove(i);
                    // Gives memory back after churn, amortised.
                    if v.len() * 4 < v.capacity() {
                        v.shrink_to_fit();
                    }
                }
            }
            Children::Many(m) => {
                m.remove(level);
                // Back to a vector well below the threshold, so a node
                // around it does not flip at every insert and remove.
                if m.len() <= FEW / 2 {
                    let few = std::mem::take(m).into_iter().collect();
                    *self = Children::Few(few);
                }
            }
        }
    }

    /// Calls `f` for the children whose level is `from` or after (all with
    /// `None`), in order, until it breaks.
    fn each_from<'a>(
        &'a self,
        from: Option<&str>,
        mut f: impl FnMut(&'a str, &'a Node<V>) -> ControlFlow<()>,
    ) -> ControlFlow<()> {
        match self {
            Children::Few(v) => {
                let start = from.map_or(0, |from| v.partition_point(|(l, _)| **l < *from));
                for (level, child) in &v[start..] {
                    f(level, child)?;
                }
            }
            Children::Many(m) => {
                let lower = from.map_or(Bound::Unbounded, Bound::Included);
                for (level, child) in m.range::<str, _>((lower, Bound::Unbounded)) {
                    f(level, child)?;
                }
            }
        }
        ControlFlow::Continue(())
    }

    fn retain_mut(&mut self, mut keep: impl FnMut(&str, &mut Node<V>) -> bool) {
        match self {
            Children::Few(v) => {
                v.retain_mut(|(level, child)| keep(level, child));
                if v.len() * 4 < v.capacity() {
                    v.shrink_to_fit();
                }
            }
            Children::Many(m) => {
                m.retain(|level, child| keep(level, child));
                if m.len() <= FEW / 2 {
                    let few = std::mem::take(m).into_iter().collect();
                    *self = Children::Few(few);
                }
            }
        }
    }

    /// Heap bytes these children take (estimated, see [`RetainedTree::heap_bytes`]).
    fn heap_bytes(&self) -> usize {
        let slot = std::mem::size_of::<(Box<str>, Node<V>)>();
        let own = std::mem::size_of::<Self>();
        match self {
            Children::Few(v) => {
                let mut n = alloc_size(own) + alloc_size(v.capacity() * slot);
                for (level, child) in v {
                    n += alloc_size(level.len()) + child.heap_bytes();
                }
                n
            }
            Children::Many(m) => {
                // A B-tree node holds up to 11 entries; assume two thirds
                // full, plus its header and edges.
                let nodes = m.len().div_ceil(7);
                let mut n = alloc_size(own) + nodes * alloc_size(11 * slot + 16 + 12 * 8);
                for (level, child) in m {
                    n += alloc_size(level.len()) + child.heap_bytes();
                }
                n
            }
        }
    }
}

/// What the allocator hands out for a request of `n` bytes (glibc:
/// 8 bytes of header, 16-byte granules, 32 bytes at least; nothing for 0).
fn alloc_size(n: usize) -> usize {
    match n {
        0 => 0,
        n => (n + 8).div_ceil(16).max(2) * 16,
    }
}

/// Where a walk stands against the topic it resumes after (`after`): on
/// that topic's path (the levels still to compare), or past it.
type After<'f> = Option<Split<'f, char>>;

impl<V> Node<V> {
    fn new() -> Self {
        Node {
            children: None,
            value: None,
        }
    }

    fn is_empty(&self) -> bool {
        self.value.is_none() && self.children.is_none()
    }

    #[cfg(test)]
    fn count(&self) -> usize {
        let mut n = 1;
        if let Some(c) = &self.children {
            let _ = c.each_from(None, |_, child| {
                n += child.count();
                ControlFlow::Continue(())
            });
        }
        n
    }

    fn heap_bytes(&self) -> usize {
        self.children.as_ref().map_or(0, |c| c.heap_bytes())
    }

    fn child(&self, level: &str) -> Option<&Node<V>> {
        self.children.as_ref()?.get(level)
    }

    fn get(&self, topic: &str) -> Option<&V> {
        let mut node = self;
        for level in topic.split('/') {
            node = node.child(level)?;
        }
        node.value.as_ref()
    }

    fn get_mut(&mut self, topic: &str) -> Option<&mut V> {
        let mut node = self;
        for level in topic.split('/') {
            node = node.children.as_mut()?.get_mut(level)?;
        }
        node.value.as_mut()
    }

    /// Removes `levels` below `self`, pruning nodes it leaves empty.
    fn remove(&mut self, mut levels: Split<'_, char>) -> Option<V> {
        let Some(level) = levels.next() else {
            return self.value.take();
        };
        let children = self.children.as_mut()?;
        let child = children.get_mut(level)?;
        let removed = child.remove(levels);
        if child.is_empty() {
            children.remove(level);
            if children.len() == 0 {
                self.children = None;
            }
        }
        removed
    }

    /// Visits, in order, the values below `self` matched by the remaining
    /// filter `levels` and after `after`, until `visit` breaks. `path` is
    /// this node's topic (its levels joined with `/`); `root` is true only
    /// at the root, where wildcards skip `$` topics.
    fn walk<F>(
        &self,
        mut levels: Split<'_, char>,
        mut after: After<'_>,
        root: bool,
        path: &mut String,
        visit: &mut F,
    ) -> ControlFlow<()>
    where
        F: FnMut(&str, &V) -> ControlFlow<()>,
    {
        // The level of `after` below this node: `Some(None)` if `after` is
        // this very topic, `None` if the walk is past `after` already.
        let bound = after.as_mut().map(|a| a.next());
        let Some(level) = levels.next() else {
            return self.visit_value(bound.is_none(), path, visit);
        };
        let last = levels.clone().next().is_none();
        match level {
            // `{prefix}/#` matches `{prefix}` and everything below it.
            "#" if last => self.visit_all_from(bound, after, root, path, visit),
            "+" => self.each_child(bound, after, root, path, |child, after, path| {
                child.walk(levels.clone(), after, false, path, visit)
            }),
            _ => {
                let Some(child) = self.child(level) else {
                    return ControlFlow::Continue(());
                };
                let Some(after) = child_after(bound, after, level) else {
                    return ControlFlow::Continue(());
                };
                let len = enter(path, root, level);
                let flow = child.walk(levels, after, false, path, visit);
                path.truncate(len);
                flow
            }
        }
    }

    fn visit_value<F>(&self, past: bool, path: &str, visit: &mut F) -> ControlFlow<()>
    where
        F: FnMut(&str, &V) -> ControlFlow<()>,
    {
        match &self.value {
            // A topic on the path to `after` (or `after` itself) comes
            // before it or is it: not after it.
            Some(value) if past => visit(path, value),
            _ => ControlFlow::Continue(()),
        }
    }

    /// Visits this node's value and everything below it (after `after`).
    fn visit_all_from<F>(
        &self,
        bound: Option<Option<&str>>,
        after: After<'_>,
        root: bool,
        path: &mut String,
        visit: &mut F,
    ) -> ControlFlow<()>
    where
        F: FnMut(&str, &V) -> ControlFlow<()>,
    {
        self.visit_value(bound.is_none(), path, visit)?;
        self.each_child(bound, after, root, path, |child, mut after, path| {
            let bound = after.as_mut().map(|a| a.next());
            child.visit_all_from(bound, after, false, path, visit)
        })
    }

    /// Calls `f` with each child a wildcard may enter (at the root, not `$`
    /// topics: [MQTT-4.7.2-1]) from `bound` on, in order, with the path
    /// extended to it and where it stands against `after`.
    fn each_child<'s, F>(
        &'s self,
        bound: Option<Option<&str>>,
        after: After<'_>,
        root: bool,
        path: &mut String,
        mut f: F,
    ) -> ControlFlow<()>
    where
        F: FnMut(&'s Node<V>, After<'_>, &mut String) -> ControlFlow<()>,
    {
        let Some(children) = &self.children else {
            return ControlFlow::Continue(());
        };
        children.each_from(bound.flatten(), |level, child| {
            if root && level.starts_with('$') {
                return ControlFlow::Continue(());
            }
            let Some(after) = child_after(bound, after.clone(), level) else {
                return ControlFlow::Continue(());
            };
            let len = enter(path, root, level);
            let flow = f(child, after, path);
            path.truncate(len);
            flow
        })
    }

    /// Drops the values `keep` rejects and prunes emptied nodes; returns how
    /// many values were dropped.
    fn retain<F>(&mut self, root: bool, path: &mut String, keep: &mut F) -> usize
    where
        F: FnMut(&str, &mut V) -> bool,
    {
        let mut dropped = 0;
        if let Some(value) = &mut self.value {
            if !keep(path, value) {
                self.value = None;
                dropped += 1;
            }
        }
        if let Some(children) = &mut self.children {
            children.retain_mut(|level, child| {
                let len = enter(path, root, level);
                dropped += child.retain(false, path, keep);
                path.truncate(len);
                !child.is_empty()
            });
            if children.len() == 0 {
                self.children = None;
            }
        }
        dropped
    }
}

/// Where a child at `level` stands against `after`, given the `bound`
/// level of its parent: `None` if it comes before `after` (skip it).
fn child_after<'f>(
    bound: Option<Option<&str>>,
    after: After<'f>,
    level: &str,
) -> Option<After<'f>> {
    match bound {
        // Past `after`, or below `after` itself: every child is after it.
        None | Some(None) => Some(None),
        Some(Some(b)) => match level.cmp(b) {
            std::cmp::Ordering::Less => None,
            std::cmp::Ordering::Equal => Some(after),
            std::cmp::Ordering::Greater => Some(None),
        },
    }
}

/// Extends `path` with `level`; returns the length to truncate it back to.
fn enter(path: &mut String, root: bool, level: &str) -> usize {
    let len = path.len();
    if !root {
        path.push('/');
    }
    path.push_str(level);
    len
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
            node = node
                .children
                .get_or_insert_with(|| Box::new(Children::Few(Vec::new())))
                .entry(level);
        }
        let old = node.value.replace(value);
        if old.is_none() {
            self.len += 1;
        }
        old
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

    /// The message retained for exactly `topic`, to change in place.
    pub fn get_mut(&mut self, topic: &str) -> Option<&mut V> {
        self.root.get_mut(topic)
    }

    /// Calls `visit(topic, value)` for every retained topic matched by the
    /// plain filter `filter` (section 4.7), honouring [MQTT-4.7.2-1]: a filter
    /// starting with `+` or `#` does not match topics starting with `$`.
    ///
    /// Topics come in order: level by level, each compared bytewise (so a
    /// topic comes right before those it is a prefix of).
    #[cfg(any(test, fuzzing, feature = "_bench"))]
    pub fn for_each_match(&self, filter: &str, mut visit: impl FnMut(&str, &V)) {
        self.matches_after(filter, None, |topic, value| {
            visit(topic, value);
            ControlFlow::Continue(())
        });
    }

    /// As [`for_each_match`](Self::for_each_match), but only the topics
    /// after `after` in that order, and until `visit` breaks: a walk that
    /// stopped resumes after the last topic it gave, whatever was retained
    /// or cleared meanwhile. The cost is that of the filter's walk, less the
    /// subtrees before `after`, which are not entered.
    pub fn matches_after(
        &self,
        filter: &str,
        after: Option<&str>,
        mut visit: impl FnMut(&str, &V) -> ControlFlow<()>,
    ) {
        let mut path = String::new();
        let after = after.map(|a| a.split('/'));
        let _ = self
            .root
            .walk(filter.split('/'), after, true, &mut path, &mut visit);
    }

    /// Keeps only the messages for which `keep(topic, value)` returns true,
    /// as an expiry sweep would, and prunes the nodes left empty.
    pub fn retain(&mut self, mut keep: impl FnMut(&str, &mut V) -> bool) {
        let mut path = String::new();
        self.len -= self.root.retain(true, &mut path, &mut keep);
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

    /// An estimate of the heap bytes the index takes beside its values'
    /// own allocations (nodes, levels, child vectors and B-tree nodes, with
    /// the allocator's rounding): what a retained topic costs in memory.
    #[allow(dead_code)]
    pub fn heap_bytes(&self) -> usize {
        self.root.heap_bytes()
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
        assert!(tree.root.children.is_none());
    }

    /// Matches come in level order, and a walk resumes after any topic,
    /// retained or not, as the same walk would have gone on.
    #[test]
    fn matches_come_in_order_and_resume_after_a_topic() {
        let mut tree = RetainedTree::new();
        for (i, t) in TOPICS.iter().enumerate() {
            tree.insert(t, i);
        }
        let mut all = Vec::new();
        tree.for_each_match("#", |t, _| all.push(t.to_owned()));
        assert_eq!(
            all,
            [
                "",
                "/",
                "/finance",
                "sport",
                "sport/",
                "sport/tennis/player1",
                "sport/tennis/player1/ranking",
                "sport/tennis/player1/score/wimbledon",
            ]
        );
        for (i, after) in all.iter().enumerate() {
            let mut rest = Vec::new();
            tree.matches_after("#", Some(after), |t, _| {
                rest.push(t.to_owned());
                ControlFlow::Continue(())
            });
            assert_eq!(rest, all[i + 1..], "after {after:?}");
        }
        // After a topic that is not retained, and a page at a time.
        let mut rest = Vec::new();
        tree.matches_after("sport/#", Some("sport/tennis"), |t, _| {
            rest.push(t.to_owned());
            ControlFlow::Continue(())
        });
        assert_eq!(rest, all[5..]);
        let mut paged = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let mut page = Vec::new();
            tree.matches_after("#", after.as_deref(), |t, _| {
                page.push(t.to_owned());
                match page.len() {
                    3 => ControlFlow::Break(()),
                    _ => ControlFlow::Continue(()),
                }
            });
            let Some(last) = page.last() else { break };
            after = Some(last.clone());
            paged.extend(page);
        }
        assert_eq!(paged, all);
    }

    /// Many children (past the sorted vector) keep their order and prune.
    #[test]
    fn a_wide_node_turns_into_a_btree_and_back() {
        let mut tree = RetainedTree::new();
        for i in (0..100u32).rev() {
            tree.insert(&format!("w/{i:03}"), i);
        }
        let mut seen = Vec::new();
        tree.for_each_match("w/+", |_, v| seen.push(*v));
        assert_eq!(seen, (0..100).collect::<Vec<_>>());
        let mut rest = 0;
        tree.matches_after("w/#", Some("w/049"), |_, _| {
            rest += 1;
            ControlFlow::Continue(())
        });
        assert_eq!(rest, 50);
        for i in 0..95u32 {
            assert_eq!(tree.remove(&format!("w/{i:03}")), Some(i));
        }
        assert_eq!(tree.len(), 5);
        assert_eq!(tree.get("w/097"), Some(&97));
        assert_eq!(tree.node_count(), 7);
    }

    /// What the index costs per retained topic (the broker's entry is
    /// about 24 bytes): a million 5-level topics in well under 200 MB.
    #[test]
    fn a_retained_topic_costs_about_a_hundred_bytes_of_index() {
        let mut tree = RetainedTree::new();
        let n = 100_000u64;
        for i in 0..n {
            // As the restore benchmark's, one level deeper: 10 metrics
            // under each device, 100 devices under each site.
            let topic = format!("site/{}/dev/{}/m{}", i / 1000, i / 10 % 100, i % 10);
            tree.insert(&topic, [0u64; 3]);
        }
        let per_topic = tree.heap_bytes() as u64 / n;
        let entry = std::mem::size_of::<(Box<str>, Node<[u64; 3]>)>();
        assert_eq!(entry, 56, "a child's slot");
        assert!(per_topic <= 110, "{per_topic} bytes per topic");
        println!("{per_topic} bytes per retained topic");
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
                prop_assert_eq!(found(&tree, filter), expected.clone(), "filter {:?}", filter);
                // In order, and resumed after each topic retained or not.
                let mut ordered = Vec::new();
                tree.for_each_match(filter, |t, _| ordered.push(t.to_owned()));
                let by_levels = |t: &String| t.split('/').map(str::to_owned).collect::<Vec<_>>();
                let mut sorted = ordered.clone();
                sorted.sort_by_key(by_levels);
                prop_assert_eq!(&ordered, &sorted);
                for after in topics.iter().chain(&removed) {
                    let mut rest = Vec::new();
                    tree.matches_after(filter, Some(after), |t, _| {
                        rest.push(t.to_owned());
                        ControlFlow::Continue(())
                    });
                    let want: Vec<String> = ordered
                        .iter()
                        .filter(|t| by_levels(t) > by_levels(after))
                        .cloned()
                        .collect();
                    prop_assert_eq!(rest, want, "after {:?}", after);
                }
            }
            tree.retain(|_, _| false);
            prop_assert_eq!(tree.node_count(), 1);
        }
    }
}
