//! Matching a topic name against a topic filter (MQTT 5.0 section 4.7).

/// Whether the topic name `topic` is matched by the plain topic filter
/// `filter` (without any `$share/{group}/` prefix).
///
/// Levels are separated by `/` and may be empty (`"/a"` has the levels `""`
/// and `"a"`). `+` matches exactly one level, including an empty one
/// ([MQTT-4.7.1-2]); `#` as the last level matches its parent level and any
/// number of child levels, so `"sport/#"` matches `"sport"` ([MQTT-4.7.1-1]).
/// A topic starting with `$` is not matched by a filter whose first level is
/// `+` or `#` ([MQTT-4.7.2-1]).
///
/// Both arguments are assumed valid (see [`valid_filter`](super::valid_filter)
/// and [`valid_name`](super::valid_name)); a `#` that is not the last level
/// is compared literally.
///
/// ```
/// use roost::topic::matches;
/// assert!(matches("sport/#", "sport"));
/// assert!(matches("+/+", "/"));
/// assert!(!matches("+", "/"));
/// assert!(!matches("#", "$SYS/uptime"));
/// ```
pub fn matches(filter: &str, topic: &str) -> bool {
    let mut filter_levels = filter.split('/');
    let mut topic_levels = topic.split('/');
    // Wildcards in the first level never match a `$` topic; later levels are free.
    let mut wildcards = !topic.starts_with('$');
    loop {
        match (filter_levels.next(), topic_levels.next()) {
            (Some("#"), _) if filter_levels.clone().next().is_none() => return wildcards,
            (Some("+"), Some(_)) if wildcards => {}
            (Some(f), Some(t)) if f == t => {}
            (None, None) => return true,
            _ => return false,
        }
        wildcards = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topic::strategy::{filter_strategy, topic_strategy};
    use proptest::prelude::*;

    #[test]
    fn spec_4_7_1_2_multi_level() {
        let f = "sport/tennis/player1/#";
        assert!(matches(f, "sport/tennis/player1"));
        assert!(matches(f, "sport/tennis/player1/ranking"));
        assert!(matches(f, "sport/tennis/player1/score/wimbledon"));
        assert!(!matches(f, "sport/tennis/player2"));
        assert!(!matches(f, "sport/tennis"));
        assert!(matches("sport/#", "sport"));
        assert!(matches("sport/#", "sport/"));
        assert!(!matches("sport/#", "sports"));
        assert!(matches("#", "sport"));
        assert!(matches("#", "/"));
        assert!(matches("#", ""));
    }

    #[test]
    fn spec_4_7_1_3_single_level() {
        assert!(matches("sport/tennis/+", "sport/tennis/player1"));
        assert!(matches("sport/tennis/+", "sport/tennis/player2"));
        assert!(!matches("sport/tennis/+", "sport/tennis/player1/ranking"));
        assert!(!matches("sport/+", "sport"));
        assert!(matches("sport/+", "sport/"));
        assert!(matches("+/+", "/finance"));
        assert!(matches("/+", "/finance"));
        assert!(!matches("+", "/finance"));
        // "/" has two empty levels.
        assert!(!matches("+", "/"));
        assert!(matches("+/+", "/"));
        assert!(matches("/+", "/"));
        assert!(matches("+", ""));
        assert!(matches("+/tennis/#", "sport/tennis/player1"));
        assert!(matches("+/tennis/#", "sport/tennis"));
        assert!(!matches("+/tennis/#", "sport/golf"));
        assert!(matches("+/#", "a"));
        assert!(matches("a/+/#", "a/b"));
        assert!(!matches("a/+/#", "a"));
    }

    #[test]
    fn spec_4_7_2_dollar_topics() {
        assert!(!matches("#", "$SYS/monitor/Clients"));
        assert!(!matches("+/monitor/Clients", "$SYS/monitor/Clients"));
        assert!(matches("$SYS/#", "$SYS/monitor/Clients"));
        assert!(matches("$SYS/#", "$SYS/x"));
        assert!(matches("$SYS/#", "$SYS"));
        assert!(matches("$SYS/monitor/+", "$SYS/monitor/Clients"));
        assert!(!matches("+", "$SYS"));
        assert!(!matches("+/#", "$SYS"));
        // Only the first level of the topic matters.
        assert!(matches("a/+", "a/$b"));
        assert!(matches("a/#", "a/$b"));
        assert!(matches("#", "a$"));
    }

    #[test]
    fn literals() {
        assert!(matches("a/b", "a/b"));
        assert!(!matches("a/b", "a/b/"));
        assert!(!matches("a/b/", "a/b"));
        assert!(!matches("a", "b"));
        assert!(matches("/", "/"));
        assert!(!matches("a/b", "a"));
        assert!(!matches("a", "a/b"));
    }

    /// A direct transcription of section 4.7 over level slices, as a reference.
    fn reference(filter: &[&str], topic: &[&str], first: bool) -> bool {
        let dollar = first && topic.first().is_some_and(|t| t.starts_with('$'));
        match (filter.split_first(), topic.split_first()) {
            (Some((&"#", [])), _) => !dollar,
            (Some((&"+", f)), Some((_, t))) => !dollar && reference(f, t, false),
            (Some((f, fs)), Some((t, ts))) => f == t && reference(fs, ts, false),
            (None, None) => true,
            _ => false,
        }
    }

    proptest! {
        #[test]
        fn agrees_with_reference(filter in filter_strategy(), topic in topic_strategy()) {
            // The alphabet includes the empty level, so "" may come up; it is not a valid name or filter.
            prop_assert!(filter.is_empty() || crate::topic::valid_filter(&filter));
            prop_assert!(topic.is_empty() || crate::topic::valid_name(&topic));
            let f: Vec<&str> = filter.split('/').collect();
            let t: Vec<&str> = topic.split('/').collect();
            prop_assert_eq!(matches(&filter, &topic), reference(&f, &t, true));
        }
    }
}
