//! Proptest strategies for topic names and filters over a small alphabet of
//! levels, so that random filters and topics often match.

use proptest::prelude::*;

fn level() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec!["", "$SYS", "a", "b", "+", "#"])
}

/// A valid filter over a small alphabet: `#` only as the last level.
pub(crate) fn filter_strategy() -> impl Strategy<Value = String> {
    prop::collection::vec(level(), 1..5).prop_map(|mut levels| {
        let last = levels.len() - 1;
        for l in &mut levels[..last] {
            if *l == "#" {
                *l = "b";
            }
        }
        levels.join("/")
    })
}

/// A valid topic name over the same alphabet, without wildcards.
pub(crate) fn topic_strategy() -> impl Strategy<Value = String> {
    let level = prop::sample::select(vec!["", "$SYS", "a", "b"]);
    prop::collection::vec(level, 1..5).prop_map(|levels| levels.join("/"))
}
