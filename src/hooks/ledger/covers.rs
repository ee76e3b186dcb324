//! Whether one topic filter covers another.

/// Whether every topic name that `inner` matches is also matched by
/// `outer` (both plain, valid filters: no `$share/` prefix).
///
/// Follows [`crate::topic::matches`] exactly, including the rule that a
/// wildcard in the first level never matches a topic starting with `$`
/// ([MQTT-4.7.2-1]): so `"#"` covers `"+/x"` but not `"$SYS/#"`.
pub(crate) fn covers(outer: &str, inner: &str) -> bool {
    // Every topic has at least one level, so at the root `+/#` matches
    // exactly what `#` does (both leave out `$` topics).
    let outer = if outer == "+/#" { "#" } else { outer };
    let outer: Vec<&str> = outer.split('/').collect();
    let inner: Vec<&str> = inner.split('/').collect();
    levels_cover(&outer, &inner, true)
}

fn levels_cover(outer: &[&str], inner: &[&str], first: bool) -> bool {
    // Topics that `inner` matches and that start with `$` (only possible
    // at the first level, through a literal `$...` level).
    let dollar = first && inner.first().is_some_and(|l| l.starts_with('$'));
    match (outer.split_first(), inner.split_first()) {
        // `#` last: matches the parent level and everything below, except
        // `$` topics when it stands first.
        (Some((&"#", [])), _) => !dollar,
        (None, None) => true,
        // `inner` has run out: it matches only the topic ending here, which
        // `outer` needs more levels for (a `#` here was handled above).
        (Some(_), None) => false,
        // `outer` has run out but `inner` has more levels (even `#`, which
        // matches longer topics as well as the parent).
        (None, Some(_)) => false,
        // `inner`'s `#` matches topics of any length from here: only an
        // `outer` `#` covers that.
        (Some(_), Some((&"#", _))) => false,
        // A `+` covers `+` and any literal, but not a first-level `$...`.
        (Some((&"+", o)), Some((_, i))) => !dollar && levels_cover(o, i, false),
        (Some((o_level, o)), Some((i_level, i))) => o_level == i_level && levels_cover(o, i, false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topic::matches;
    use crate::topic::strategy::filter_strategy;
    use proptest::prelude::*;

    #[test]
    fn examples() {
        assert!(covers("a/#", "a/b/+"));
        assert!(covers("a/#", "a/#"));
        assert!(covers("a/#", "a"));
        assert!(covers("a/#", "a/b/#"));
        assert!(!covers("a/+", "a/#"));
        assert!(!covers("a/+", "a"));
        assert!(covers("a/+", "a/b"));
        assert!(covers("a/+", "a/+"));
        assert!(!covers("a/b", "a/+"));
        assert!(covers("+/x", "a/x"));
        assert!(covers("+/x", "+/x"));
        assert!(!covers("+/x", "a/y"));
        assert!(!covers("+/x", "$SYS/x"));
        assert!(covers("#", "a/b/c"));
        assert!(covers("#", "+/#"));
        assert!(covers("#", "#"));
        assert!(covers("+/#", "#"), "one level or more is every topic");
        assert!(covers("+/#", "+/#"));
        assert!(!covers("+/#", "$SYS/#"));
        assert!(!covers("#", "$SYS/#"));
        assert!(!covers("#", "$SYS"));
        assert!(covers("$SYS/#", "$SYS/uptime"));
        assert!(covers("$SYS/+", "$SYS/+"));
        assert!(!covers("$SYS/+", "$SYS/#"));
        assert!(covers("a/+/#", "a/b"));
        assert!(!covers("a/+/#", "a/#"));
        assert!(!covers("a/+/#", "a"));
        assert!(covers("a/b/c", "a/b/c"));
        assert!(!covers("a/b/c", "a/b"));
        assert!(!covers("a", "a/#"));
        // Only the first level is special for `$`.
        assert!(covers("a/#", "a/$x"));
        assert!(covers("+/+", "a/$x"));
    }

    /// The topic names over the strategies' alphabet with up to four
    /// levels: enough to find any counterexample for filters of up to
    /// four levels (a longer topic behaves like a four-level one ending
    /// in a level that no literal names).
    fn all_topics() -> Vec<String> {
        let alphabet = ["", "$SYS", "a", "b", "z"];
        let mut all: Vec<String> = Vec::new();
        let mut frontier: Vec<String> = alphabet.iter().map(|s| s.to_string()).collect();
        for _ in 0..5 {
            all.extend(frontier.iter().cloned());
            frontier = frontier
                .iter()
                .flat_map(|t| alphabet.iter().map(move |l| format!("{t}/{l}")))
                .collect();
        }
        all
    }

    proptest! {
        #[test]
        fn agrees_with_matching(outer in filter_strategy(), inner in filter_strategy()) {
            let c = covers(&outer, &inner);
            if c {
                // Sound: anything `inner` matches, `outer` matches.
                for t in all_topics() {
                    if matches(&inner, &t) {
                        prop_assert!(matches(&outer, &t), "{outer} covers {inner} but not {t}");
                    }
                }
            } else {
                // Complete: some topic that `inner` matches escapes `outer`.
                let escape = all_topics().into_iter().any(|t| matches(&inner, &t) && !matches(&outer, &t));
                prop_assert!(escape, "{outer} should cover {inner}");
            }
        }

        #[test]
        fn a_filter_covers_itself(f in filter_strategy()) {
            prop_assert!(covers(&f, &f));
        }
    }
}
