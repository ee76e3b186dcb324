//! A forward or subscribe rule: a filter, a QoS and the prefixes that map
//! topics between the two brokers, as in Mosquitto's `topic` line.

use crate::codec::{ByteStr, QoS};
use crate::topic::{matches, valid_filter, valid_name};
use std::fmt;

/// Which way a rule carries messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Local to remote (`forward`).
    Forward,
    /// Remote to local (`subscribe`).
    Subscribe,
}

impl Direction {
    /// The key of its list in a configuration file.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Forward => "forward",
            Direction::Subscribe => "subscribe",
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a forward or subscribe rule cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RuleError {
    /// The filter is not a valid topic filter.
    #[error("filter {filter:?} is not a valid topic filter")]
    BadFilter {
        /// The filter.
        filter: String,
    },
    /// A `$share/...` filter: a bridge maps topics, it does not share them.
    #[error("filter {filter:?}: a shared subscription cannot be bridged")]
    SharedFilter {
        /// The filter.
        filter: String,
    },
    /// A prefix with a wildcard or U+0000.
    #[error("{key} {prefix:?} must not contain \"+\", \"#\" or U+0000")]
    BadPrefix {
        /// `local_prefix` or `remote_prefix`.
        key: &'static str,
        /// The prefix.
        prefix: String,
    },
    /// The prefix and the filter together are not a valid filter (a
    /// prefix that does not end with `/` before a `+` or `#` level).
    #[error("{key} {prefix:?} followed by filter {filter:?} is not a valid filter (end the prefix with \"/\")")]
    PrefixedFilter {
        /// `local_prefix` or `remote_prefix`.
        key: &'static str,
        /// The prefix.
        prefix: String,
        /// The filter.
        filter: String,
    },
}

impl RuleError {
    /// The key of the rule that holds the bad value: `filter`,
    /// `local_prefix` or `remote_prefix`.
    pub fn key(&self) -> &'static str {
        match self {
            RuleError::BadFilter { .. } | RuleError::SharedFilter { .. } => "filter",
            RuleError::BadPrefix { key, .. } | RuleError::PrefixedFilter { key, .. } => key,
        }
    }
}

/// Which topics a bridge carries, and how their names change on the way.
///
/// For a topic `T` matching `filter`, the local topic is
/// `local_prefix + T` and the remote topic is `remote_prefix + T`. The
/// prefixes are plain text (no wildcards) and usually end with `/`.
///
/// ```
/// use roost::bridge::Rule;
/// use roost::codec::QoS;
/// let rule = Rule::new("sensors/#", QoS::AtLeastOnce)
///     .local_prefix("plant/")
///     .remote_prefix("site-17/");
/// assert_eq!(rule.local_filter(), "plant/sensors/#");
/// assert_eq!(rule.remote_filter(), "site-17/sensors/#");
/// assert_eq!(rule.to_remote("plant/sensors/t1").as_deref(), Some("site-17/sensors/t1"));
/// assert_eq!(rule.to_local("site-17/sensors/t1").as_deref(), Some("plant/sensors/t1"));
/// assert_eq!(rule.to_remote("sensors/t1"), None);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Rule {
    /// The topic filter, without either prefix.
    pub filter: String,
    /// The highest QoS the rule carries a message at (a message keeps a
    /// lower QoS it was published with).
    pub qos: QoS,
    /// Prepended to a topic on this broker. Default: empty.
    pub local_prefix: String,
    /// Prepended to a topic on the remote broker. Default: empty.
    pub remote_prefix: String,
}

impl Rule {
    /// A rule for `filter` at up to `qos`, with empty prefixes.
    pub fn new(filter: impl Into<String>, qos: QoS) -> Rule {
        Rule {
            filter: filter.into(),
            qos,
            local_prefix: String::new(),
            remote_prefix: String::new(),
        }
    }

    /// Sets the prefix of topics on this broker.
    pub fn local_prefix(mut self, prefix: impl Into<String>) -> Rule {
        self.local_prefix = prefix.into();
        self
    }

    /// Sets the prefix of topics on the remote broker.
    pub fn remote_prefix(mut self, prefix: impl Into<String>) -> Rule {
        self.remote_prefix = prefix.into();
        self
    }

    /// The filter on this broker: `local_prefix + filter`.
    pub fn local_filter(&self) -> String {
        format!("{}{}", self.local_prefix, self.filter)
    }

    /// The filter on the remote broker (what a subscribe rule subscribes
    /// to there): `remote_prefix + filter`.
    pub fn remote_filter(&self) -> String {
        format!("{}{}", self.remote_prefix, self.filter)
    }

    /// The remote topic for a local topic the rule carries, or `None` when
    /// it does not carry it (another prefix, or no match).
    pub fn to_remote(&self, local_topic: &str) -> Option<String> {
        map(
            local_topic,
            &self.local_prefix,
            &self.filter,
            &self.remote_prefix,
        )
    }

    /// [`Rule::to_remote`] for a local topic already known to match the
    /// rule's local filter (the broker matched it): only the prefixes
    /// change, and with equal prefixes (both empty, typically) the topic
    /// is shared rather than copied.
    pub(crate) fn to_remote_matched(&self, local_topic: &ByteStr) -> Option<ByteStr> {
        if self.local_prefix == self.remote_prefix {
            return Some(local_topic.clone());
        }
        let rest = local_topic.strip_prefix(self.local_prefix.as_str())?;
        let mapped = format!("{}{rest}", self.remote_prefix);
        valid_name(&mapped).then(|| ByteStr::from(mapped))
    }

    /// The local topic for a remote topic the rule carries, or `None` when
    /// it does not carry it.
    pub fn to_local(&self, remote_topic: &str) -> Option<String> {
        map(
            remote_topic,
            &self.remote_prefix,
            &self.filter,
            &self.local_prefix,
        )
    }

    /// Checks the filter and prefixes: the filter is a valid, unshared
    /// topic filter; a prefix holds no wildcard; each prefix followed by
    /// the filter is a valid filter.
    pub fn validate(&self) -> Result<(), RuleError> {
        if self.filter.starts_with("$share/") {
            return Err(RuleError::SharedFilter {
                filter: self.filter.clone(),
            });
        }
        if !valid_filter(&self.filter) {
            return Err(RuleError::BadFilter {
                filter: self.filter.clone(),
            });
        }
        for (key, prefix) in [
            ("local_prefix", &self.local_prefix),
            ("remote_prefix", &self.remote_prefix),
        ] {
            if prefix.contains(['+', '#', '\0']) {
                return Err(RuleError::BadPrefix {
                    key,
                    prefix: prefix.clone(),
                });
            }
            let whole = format!("{prefix}{}", self.filter);
            // `$share/` here would make the prefixed filter a shared one.
            if !valid_filter(&whole) || whole.starts_with("$share/") {
                return Err(RuleError::PrefixedFilter {
                    key,
                    prefix: prefix.clone(),
                    filter: self.filter.clone(),
                });
            }
        }
        Ok(())
    }
}

/// `to + T` for `topic = from + T` with `T` matched by `filter`.
fn map(topic: &str, from: &str, filter: &str, to: &str) -> Option<String> {
    let rest = topic.strip_prefix(from)?;
    // `T` itself must be a topic name: `matches` assumes one.
    if !valid_name(rest) || !matches(filter, rest) {
        return None;
    }
    let mapped = format!("{to}{rest}");
    valid_name(&mapped).then_some(mapped)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topic::strategy::{filter_strategy, topic_strategy};
    use proptest::prelude::*;

    fn prefix() -> impl Strategy<Value = String> {
        prop::sample::select(vec!["", "a/", "site-17/", "$x/", "a", "/"]).prop_map(String::from)
    }

    proptest! {
        /// A topic the rule carries out comes back in as itself, and the
        /// remote topic is carried by the remote filter.
        #[test]
        fn there_and_back(
            filter in filter_strategy(),
            t in topic_strategy(),
            local in prefix(),
            remote in prefix(),
        ) {
            let rule = Rule::new(filter, QoS::AtLeastOnce).local_prefix(local).remote_prefix(remote);
            prop_assume!(rule.validate().is_ok() && valid_name(&t));
            let local_topic = format!("{}{t}", rule.local_prefix);
            match rule.to_remote(&local_topic) {
                Some(remote_topic) => {
                    prop_assert!(matches(&rule.filter, &t));
                    // The shortcut for a topic the broker matched agrees.
                    let matched = rule.to_remote_matched(&ByteStr::from(local_topic.as_str()));
                    prop_assert_eq!(matched.as_deref(), Some(remote_topic.as_str()));
                    prop_assert_eq!(&remote_topic, &format!("{}{t}", rule.remote_prefix));
                    prop_assert_eq!(rule.to_local(&remote_topic), Some(local_topic));
                }
                None => prop_assert!(!matches(&rule.filter, &t)),
            }
            let remote_topic = format!("{}{t}", rule.remote_prefix);
            if let Some(back) = rule.to_local(&remote_topic) {
                prop_assert_eq!(rule.to_remote(&back), Some(remote_topic));
            }
        }
    }

    #[test]
    fn prefixes_map_as_mosquitto_topic_lines_do() {
        let rule = Rule::new("devices/#", QoS::AtLeastOnce).remote_prefix("site-17/");
        assert_eq!(
            rule.to_remote("devices/a").as_deref(),
            Some("site-17/devices/a")
        );
        assert_eq!(
            rule.to_remote("devices").as_deref(),
            Some("site-17/devices")
        );
        assert_eq!(rule.to_remote("other/a"), None);
        assert_eq!(
            rule.to_local("site-17/devices/a").as_deref(),
            Some("devices/a")
        );
        assert_eq!(rule.to_local("devices/a"), None);
        assert_eq!(rule.remote_filter(), "site-17/devices/#");
        assert_eq!(rule.local_filter(), "devices/#");
        // The prefix is stripped whole, and what is left must match.
        let rule = Rule::new("+", QoS::AtMostOnce).local_prefix("a/");
        assert_eq!(rule.to_remote("a/x").as_deref(), Some("x"));
        assert_eq!(rule.to_remote("a/x/y"), None);
        assert_eq!(rule.to_remote("a/"), None, "an empty rest is no topic");
    }

    #[test]
    fn bad_filters_and_prefixes_are_named() {
        let q = QoS::AtLeastOnce;
        let cases = [
            (Rule::new("a/#/b", q), "filter"),
            (Rule::new("", q), "filter"),
            (Rule::new("$share/g/a", q), "filter"),
            (Rule::new("a", q).local_prefix("x/+/"), "local_prefix"),
            (Rule::new("a", q).remote_prefix("#"), "remote_prefix"),
            (Rule::new("#", q).remote_prefix("site"), "remote_prefix"),
            (Rule::new("a", q).local_prefix("$share/"), "local_prefix"),
        ];
        for (rule, key) in cases {
            let e = rule.validate().expect_err(&rule.filter);
            assert_eq!(e.key(), key, "{rule:?}: {e}");
        }
        assert!(Rule::new("#", q).remote_prefix("site/").validate().is_ok());
    }
}
