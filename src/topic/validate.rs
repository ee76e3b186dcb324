//! Validation of topic names and topic filters.

/// A valid topic name: non-empty, at most 65,535 bytes, no wildcard
/// characters and no U+0000 ([MQTT-4.7.3-1], [MQTT-3.3.2-2], [MQTT-4.7.3-2]).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= usize::from(u16::MAX)
        && !name.bytes().any(|b| b == b'+' || b == b'#' || b == 0)
}

/// A valid topic filter: non-empty, no U+0000, `#` only as the whole last
/// level, `+` only as a whole level ([MQTT-4.7.1-1], [MQTT-4.7.1-2]).
/// A `$share/{group}/{filter}` filter is also checked: the group must be
/// non-empty without wildcards and the filter must be valid
/// ([MQTT-4.8.2-1], [MQTT-4.8.2-2]).
pub fn valid_filter(filter: &str) -> bool {
    if let Some(rest) = filter.strip_prefix("$share/") {
        return match rest.split_once('/') {
            Some((group, inner)) => {
                !group.is_empty() && !group.contains(['+', '#']) && valid_plain_filter(inner)
            }
            None => false,
        };
    }
    valid_plain_filter(filter)
}

fn valid_plain_filter(filter: &str) -> bool {
    if filter.is_empty() || filter.len() > usize::from(u16::MAX) || filter.contains('\0') {
        return false;
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        let last = levels.peek().is_none();
        match level {
            "#" if last => {}
            "+" => {}
            _ if level.contains(['+', '#']) => return false,
            _ => {}
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(valid_name("a/b"));
        assert!(valid_name("/"));
        assert!(valid_name("$SYS/x"));
        assert!(!valid_name(""));
        assert!(!valid_name("a/+"));
        assert!(!valid_name("a/#"));
        assert!(!valid_name("a\0b"));
    }

    #[test]
    fn filters() {
        for ok in [
            "#",
            "+",
            "a/#",
            "a/+/b",
            "+/+",
            "/",
            "$share/g/a/#",
            "$share/g/#",
        ] {
            assert!(valid_filter(ok), "{ok}");
        }
        for bad in [
            "",
            "a#",
            "a/#/b",
            "a+/b",
            "#/a",
            "$share/g",
            "$share//a",
            "$share/g+/a",
            "$share/g/",
        ] {
            assert!(!valid_filter(bad), "{bad}");
        }
    }
}
