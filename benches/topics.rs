//! Routing micro-benchmarks: matching topic names against a
//! `SubscriptionTree` of 1M subscriptions (with `+` and `#` wildcards), and
//! filters against a `RetainedTree` of 100k retained topics. Each tree is
//! built once per group (the 1M tree takes a few seconds and ~1 GiB).
//!
//! Run: `cargo bench --bench topics --features _bench` (the tries are
//! crate-private; the `_bench` feature exposes them as `roost::bench`).

// criterion_group! expands to an undocumented public function.
#![allow(missing_docs)]

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use roost::bench::{Match, RetainedTree, SubscriptionTree};

/// Devices with four subscriptions each; plus `+/x/{j}/#` ones.
const DEVICES: u32 = 249_750;
const PLUS_FIRST: u32 = 1_000;

fn subscription_tree() -> SubscriptionTree<u32, u8> {
    let mut t = SubscriptionTree::new();
    let mut key = 0u32;
    let mut add = |t: &mut SubscriptionTree<u32, u8>, f: &str| {
        t.insert(f, None, key, 1);
        key += 1;
    };
    for i in 0..DEVICES {
        add(&mut t, &format!("devices/{i}/+/state"));
        add(&mut t, &format!("devices/{i}/#"));
        add(&mut t, &format!("devices/{i}/sensors/temperature"));
        add(&mut t, &format!("site/{}/devices/{i}/alarm", i % 100));
    }
    for j in 0..PLUS_FIRST {
        add(&mut t, &format!("+/x/{j}/#"));
    }
    t
}

fn count(t: &SubscriptionTree<u32, u8>, topic: &str) -> usize {
    let mut n = 0;
    t.for_each_match(topic, |m| {
        if let Match::Direct { .. } = m {
            n += 1;
        }
    });
    n
}

fn bench_subscriptions(c: &mut Criterion) {
    let tree = subscription_tree();
    assert!(tree.len() >= 1_000_000);
    let mut g = c.benchmark_group("subscriptions-1M");
    let cases = [
        ("plus-and-hash", "devices/123456/sensors/state", 2),
        ("literal-and-hash", "devices/123456/sensors/temperature", 2),
        ("deep-literal", "site/56/devices/123456/alarm", 1),
        ("leading-plus", "a/x/77/b/c", 1),
        ("miss", "nothing/matches/this/topic", 0),
        ("sys-topic", "$SYS/broker/clients/connected", 0),
    ];
    for (name, topic, expected) in cases {
        assert_eq!(count(&tree, topic), expected, "{topic}");
        g.bench_function(name, |b| b.iter(|| count(&tree, black_box(topic))));
    }
    g.bench_function("insert-remove", |b| {
        let mut tree = subscription_tree_small();
        b.iter(|| {
            tree.insert("devices/999999/+/state", None, u32::MAX, 1);
            black_box(tree.remove("devices/999999/+/state", None, &u32::MAX))
        })
    });
    g.finish();
    drop(tree);
}

/// A small tree for the insert/remove bench (the big one is borrowed).
fn subscription_tree_small() -> SubscriptionTree<u32, u8> {
    let mut t = SubscriptionTree::new();
    for i in 0..10_000u32 {
        t.insert(&format!("devices/{i}/+/state"), None, i, 1);
    }
    t
}

fn bench_retained(c: &mut Criterion) {
    let mut tree = RetainedTree::new();
    for i in 0..100_000u32 {
        tree.insert(&format!("devices/{}/{}/state", i / 100, i % 100), i);
    }
    let mut g = c.benchmark_group("retained-100k");
    let cases = [
        ("exact", "devices/500/50/state", 1),
        ("plus-last-levels", "devices/500/+/state", 100),
        ("plus-first-levels", "devices/+/50/state", 1000),
        ("hash-subtree", "devices/500/#", 100),
        ("hash-all", "#", 100_000),
    ];
    for (name, filter, expected) in cases {
        let mut n = 0;
        tree.for_each_match(filter, |_, _| n += 1);
        assert_eq!(n, expected, "{filter}");
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut n = 0usize;
                tree.for_each_match(black_box(filter), |_, v| n += *v as usize & 1);
                n
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench_subscriptions, bench_retained);
criterion_main!(benches);
