//! Shared subscriptions: splitting `$share/{group}/{filter}` (section 4.8.2).

/// A topic filter as given in SUBSCRIBE, split into its share group (if any)
/// and the plain filter that is matched against topic names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SharedFilter<'a> {
    /// An ordinary subscription: the filter as given.
    Plain(&'a str),
    /// A shared subscription `$share/{group}/{filter}`.
    Shared {
        /// The share name (non-empty, no wildcards, no `/`).
        group: &'a str,
        /// The plain filter after the share name; may start with `+` or `#`.
        filter: &'a str,
    },
}

impl<'a> SharedFilter<'a> {
    /// The plain filter matched against topic names.
    pub fn filter(&self) -> &'a str {
        match *self {
            SharedFilter::Plain(filter) | SharedFilter::Shared { filter, .. } => filter,
        }
    }

    /// The share group, `None` for an ordinary subscription.
    pub fn group(&self) -> Option<&'a str> {
        match *self {
            SharedFilter::Plain(_) => None,
            SharedFilter::Shared { group, .. } => Some(group),
        }
    }
}

/// Splits `$share/{group}/{filter}` into its group and plain filter; any other
/// filter is [`SharedFilter::Plain`].
///
/// Assumes `filter` passed [`valid_filter`](super::valid_filter); a malformed
/// `$share` filter (no second `/`) is returned as `Plain`.
///
/// ```
/// use roost::topic::{parse_filter, SharedFilter};
/// assert_eq!(parse_filter("$share/g/a/#"), SharedFilter::Shared { group: "g", filter: "a/#" });
/// assert_eq!(parse_filter("$SYS/#"), SharedFilter::Plain("$SYS/#"));
/// ```
pub fn parse_filter(filter: &str) -> SharedFilter<'_> {
    if let Some((group, inner)) = filter
        .strip_prefix("$share/")
        .and_then(|rest| rest.split_once('/'))
    {
        return SharedFilter::Shared {
            group,
            filter: inner,
        };
    }
    SharedFilter::Plain(filter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_share_prefix() {
        assert_eq!(
            parse_filter("$share/g/a/b"),
            SharedFilter::Shared {
                group: "g",
                filter: "a/b"
            }
        );
        assert_eq!(
            parse_filter("$share/group/#"),
            SharedFilter::Shared {
                group: "group",
                filter: "#"
            }
        );
        assert_eq!(
            parse_filter("$share/g//"),
            SharedFilter::Shared {
                group: "g",
                filter: "/"
            }
        );
        let s = parse_filter("$share/g/+/x");
        assert_eq!(s.group(), Some("g"));
        assert_eq!(s.filter(), "+/x");
    }

    #[test]
    fn plain_filters() {
        for f in [
            "a/b",
            "#",
            "+/x",
            "$SYS/#",
            "$share",
            "$sharex/g/a",
            "$share/g",
        ] {
            assert_eq!(parse_filter(f), SharedFilter::Plain(f));
            assert_eq!(parse_filter(f).group(), None);
        }
    }
}
