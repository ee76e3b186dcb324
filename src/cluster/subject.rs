//! MQTT topic names and filters as NATS subjects, one to one.
//!
//! A topic `a/b/c` under the prefix `mqtt` is the subject `mqtt.a.b.c`: one
//! token per level. NATS gives `.`, `*`, `>` and whitespace meaning, names
//! beginning with `$` are its own (`$JS`, `$KV`, `$SYS`), and it recommends
//! ASCII letters and digits only. MQTT allows any UTF-8 in a level except
//! `+`, `#` and NUL, and empty levels. So a level is written as its bytes:
//! ASCII letters, digits and `-` as they are, every other byte as `_` and
//! two lowercase hex digits (`$SYS` is `_24SYS`, `_` is `_5f`, `é` is
//! `_c3_a9`), and an empty level as the token `_` alone.
//!
//! Every topic has exactly one subject, and every subject this writes reads
//! back to its topic: [`topic_of`] refuses anything [`subject_of`] would not
//! have written (an uppercase hex digit, an escaped letter), so two
//! subjects never name one topic. Wildcards map level for level (`+` is
//! `*`), except that MQTT's `#` also matches its parent level and NATS's
//! `>` needs at least one token: `a/#` is the two subjects `mqtt.a` and
//! `mqtt.a.>`. A wildcard at the first level also matches `$` topics in
//! NATS, which MQTT's does not ([MQTT-4.7.2-1]); the receiving node matches
//! every message against its own subscriptions anyway, which drops them.
//!
//! A level of n bytes takes up to 3n bytes: a subject may be three times
//! its topic. NATS bounds a subject by its `max_control_line` (4 KiB by
//! default), so the cluster bounds topic lengths below that.

use crate::topic::valid_filter;

/// The subject of `topic` (a valid topic name) under `prefix` (a valid
/// subject without wildcards).
pub(crate) fn subject_of(prefix: &str, topic: &str) -> String {
    let mut s = String::with_capacity(prefix.len() + topic.len() + 8);
    s.push_str(prefix);
    for level in topic.split('/') {
        s.push('.');
        push_level(&mut s, level);
    }
    s
}

/// The subjects a NATS subscription needs to receive every topic `filter`
/// (a valid filter, not shared) matches: one, or two for a filter ending
/// in `#` below the first level.
pub(crate) fn subjects_of_filter(prefix: &str, filter: &str) -> Vec<String> {
    debug_assert!(valid_filter(filter), "{filter:?}");
    let mut s = String::with_capacity(prefix.len() + filter.len() + 8);
    s.push_str(prefix);
    let mut parent = None;
    for level in filter.split('/') {
        match level {
            "+" => s.push_str(".*"),
            "#" => {
                // `a/#` matches `a` itself ([MQTT-4.7.1-2]).
                if s.len() > prefix.len() {
                    parent = Some(s.clone());
                }
                s.push_str(".>");
            }
            _ => {
                s.push('.');
                push_level(&mut s, level);
            }
        }
    }
    parent.into_iter().chain(Some(s)).collect()
}

/// The topic `subject` names under `prefix`, if it is one [`subject_of`]
/// writes.
pub(crate) fn topic_of(prefix: &str, subject: &str) -> Option<String> {
    let rest = subject.strip_prefix(prefix)?.strip_prefix('.')?;
    let mut bytes = Vec::with_capacity(rest.len());
    for (i, token) in rest.split('.').enumerate() {
        if i > 0 {
            bytes.push(b'/');
        }
        if token == "_" {
            continue; // an empty level
        }
        read_level(token.as_bytes(), &mut bytes)?;
    }
    let topic = String::from_utf8(bytes).ok()?;
    crate::topic::valid_name(&topic).then_some(topic)
}

/// Bytes a level keeps as they are.
fn plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-'
}

fn push_level(s: &mut String, level: &str) {
    if level.is_empty() {
        s.push('_');
        return;
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for &b in level.as_bytes() {
        if plain(b) {
            s.push(char::from(b));
        } else {
            s.push('_');
            s.push(char::from(HEX[usize::from(b >> 4)]));
            s.push(char::from(HEX[usize::from(b & 0xf)]));
        }
    }
}

/// Appends the level `token` names; `None` if [`push_level`] would not have
/// written it.
fn read_level(token: &[u8], out: &mut Vec<u8>) -> Option<()> {
    if token.is_empty() {
        return None;
    }
    let mut i = 0;
    while i < token.len() {
        let b = token[i];
        if plain(b) {
            out.push(b);
            i += 1;
        } else if b == b'_' {
            let hi = hex(*token.get(i + 1)?)?;
            let lo = hex(*token.get(i + 2)?)?;
            let byte = hi << 4 | lo;
            if plain(byte) || byte == b'/' {
                // Written as itself, or a level separator: not ours.
                return None;
            }
            out.push(byte);
            i += 3;
        } else {
            return None;
        }
    }
    Some(())
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topic::matches;
    use proptest::prelude::*;

    const P: &str = "mqtt";

    /// NATS's matching: `*` one token, `>` one or more at the end.
    fn nats_matches(pattern: &str, subject: &str) -> bool {
        let (mut p, mut s) = (pattern.split('.'), subject.split('.'));
        loop {
            match (p.next(), s.next()) {
                (Some(">"), Some(_)) => return true,
                (Some("*"), Some(_)) => {}
                (Some(a), Some(b)) if a == b => {}
                (None, None) => return true,
                _ => return false,
            }
        }
    }

    /// A NATS subject token: what the server and clients accept without
    /// question (the recommended characters, plus `_` and `-`).
    fn is_clean_subject(s: &str) -> bool {
        s.split('.').all(|t| {
            !t.is_empty()
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        })
    }

    #[test]
    fn examples() {
        assert_eq!(subject_of(P, "a/b/c"), "mqtt.a.b.c");
        assert_eq!(subject_of(P, "$SYS/broker"), "mqtt._24SYS.broker");
        assert_eq!(subject_of(P, "/"), "mqtt._._");
        assert_eq!(subject_of(P, "a.b/c d"), "mqtt.a_2eb.c_20d");
        assert_eq!(subject_of(P, "x_y/*/>"), "mqtt.x_5fy._2a._3e");
        assert_eq!(subject_of(P, "café"), "mqtt.caf_c3_a9");
        assert_eq!(subjects_of_filter(P, "a/+/c"), ["mqtt.a.*.c"]);
        assert_eq!(subjects_of_filter(P, "a/#"), ["mqtt.a", "mqtt.a.>"]);
        assert_eq!(subjects_of_filter(P, "#"), ["mqtt.>"]);
        assert_eq!(subjects_of_filter(P, "+/#"), ["mqtt.*", "mqtt.*.>"]);
        assert_eq!(topic_of(P, "mqtt._24SYS.broker").unwrap(), "$SYS/broker");
        assert_eq!(topic_of(P, "mqtt._._").unwrap(), "/");
    }

    #[test]
    fn subjects_it_would_not_write_are_refused() {
        for s in [
            "mqtt", "mqtt.", "mqtt..a", "mqtt._2E", // uppercase hex
            "mqtt._61", // `a`, which is written as itself
            "mqtt._2",  // cut short
            "mqtt.a*",  // not a character of ours
            "mqtt.*",   // a wildcard is no topic
            "mqtt._c3", // half a UTF-8 character
            "mqtt._2b", // `+`: not in a topic name
            "mqtt._00", // NUL
            "other.a",  // another prefix
            "mqttx.a",
        ] {
            assert_eq!(topic_of(P, s), None, "{s}");
        }
    }

    fn any_topic() -> impl Strategy<Value = String> {
        // Levels of any characters MQTT allows in a topic name, from a
        // set heavy in the ones NATS treats specially.
        let ch = prop_oneof![
            prop::sample::select(vec![
                'a', 'Z', '0', '-', '_', '.', '*', '>', ' ', '$', '/', 'é', '☃', '\t'
            ]),
            any::<char>().prop_filter("MQTT forbids", |c| !matches!(c, '+' | '#' | '\0')),
        ];
        prop::collection::vec(ch, 1..24).prop_map(|cs| cs.into_iter().collect::<String>())
    }

    proptest! {
        #[test]
        fn every_topic_has_a_clean_subject_that_reads_back(topic in any_topic()) {
            let subject = subject_of(P, &topic);
            prop_assert!(is_clean_subject(&subject), "{subject}");
            prop_assert_eq!(topic_of(P, &subject), Some(topic));
        }

        #[test]
        fn a_subject_that_reads_is_the_one_its_topic_writes(
            tokens in prop::collection::vec("[a-f0-9_A-]{1,6}", 1..5)
        ) {
            let subject = format!("{P}.{}", tokens.join("."));
            if let Some(topic) = topic_of(P, &subject) {
                prop_assert_eq!(subject_of(P, &topic), subject);
            }
        }

        #[test]
        fn nats_matches_what_mqtt_matches(
            filter in crate::topic::strategy::filter_strategy(),
            topic in crate::topic::strategy::topic_strategy(),
        ) {
            prop_assume!(crate::topic::valid_filter(&filter) && crate::topic::valid_name(&topic));
            let subject = subject_of(P, &topic);
            let nats = subjects_of_filter(P, &filter).iter().any(|f| nats_matches(f, &subject));
            // NATS sees no `$` rule: it may match more, never less.
            let mqtt = matches(&filter, &topic);
            if topic.starts_with('$') {
                prop_assert!(nats || !mqtt);
            } else {
                prop_assert_eq!(nats, mqtt, "{} {} {:?}", filter, topic, subjects_of_filter(P, &filter));
            }
        }
    }
}
