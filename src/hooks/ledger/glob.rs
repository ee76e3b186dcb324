//! `*` globs for client ids and user names.

/// A compiled glob: `*` matches any run of characters (including none and
/// including `/`); every other character matches itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Glob {
    /// The literal pieces between the `*`s; `parts.len() == stars + 1`.
    parts: Vec<String>,
}

impl Glob {
    /// Compiles `pattern`. An empty pattern, and the characters `? [ ] { }`
    /// (reserved so that a richer syntax can come later without changing
    /// what an existing file means), are refused.
    pub(crate) fn new(pattern: &str) -> Result<Glob, String> {
        if pattern.is_empty() {
            return Err(
                "an empty pattern matches nothing; leave the key out to match anyone".into(),
            );
        }
        if let Some(c) = pattern.chars().find(|c| "?[]{}".contains(*c)) {
            return Err(format!(
                "`{c}` is not supported in patterns (only `*` is a wildcard)"
            ));
        }
        Ok(Glob {
            parts: pattern.split('*').map(str::to_owned).collect(),
        })
    }

    /// Whether `text` matches.
    pub(crate) fn matches(&self, text: &str) -> bool {
        let (first, rest) = self.parts.split_first().expect("at least one part");
        let Some(mut text) = text.strip_prefix(first.as_str()) else {
            return false;
        };
        let Some((last, middle)) = rest.split_last() else {
            // No `*`: the whole text must be the literal.
            return text.is_empty();
        };
        // Invariant: each middle piece is found at its leftmost place, which
        // leaves the most room for the rest (greedy is exact for `*` only).
        for piece in middle {
            match text.find(piece.as_str()) {
                Some(i) => text = &text[i + piece.len()..],
                None => return false,
            }
        }
        text.len() >= last.len() && text.ends_with(last.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, t: &str) -> bool {
        Glob::new(p).unwrap().matches(t)
    }

    #[test]
    fn literals_and_stars() {
        assert!(m("alice", "alice"));
        assert!(!m("alice", "alicex"));
        assert!(!m("alice", "xalice"));
        assert!(m("*", ""));
        assert!(m("*", "a/b+#"));
        assert!(m("dev-*", "dev-"));
        assert!(m("dev-*", "dev-42"));
        assert!(!m("dev-*", "de"));
        assert!(m("*-sensor", "kitchen-sensor"));
        assert!(!m("*-sensor", "kitchen-sensors"));
        assert!(m("a*b*c", "abc"));
        assert!(m("a*b*c", "axxbyyc"));
        assert!(!m("a*b*c", "axxcyyb"));
        assert!(m("a*a", "aa"));
        assert!(!m("a*a", "a"));
        assert!(m("*ab*ab", "abab"));
        assert!(m("**", "x"));
    }

    #[test]
    fn bad_patterns_are_refused() {
        assert!(Glob::new("").is_err());
        assert!(Glob::new("dev-?").is_err());
        assert!(Glob::new("[ab]").is_err());
    }
}
