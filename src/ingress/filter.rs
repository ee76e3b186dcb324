//! The protocol's rules for one filter of a SUBSCRIBE: what the broker
//! refuses whatever the session holds, and the options it grants. Pure;
//! the core applies them after the hooks judged the filter (a hook may
//! have changed it) and before the session's own limits.

use crate::codec::{ProtocolVersion, ReasonCode, RetainHandling, SubscriptionOptions};
use crate::config::Capabilities;
use crate::topic::{self, SharedFilter};

/// A filter the rules admit, split for the subscription tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Granted<'f> {
    /// The share group of a `$share/` filter.
    pub group: Option<&'f str>,
    /// The filter topics are matched against.
    pub plain: &'f str,
    /// The options granted.
    pub options: SubscriptionOptions,
}

/// Checks one filter a `version` client subscribes to with `options`:
/// `Err` is its SUBACK reason code.
pub(crate) fn check<'f>(
    filter: &'f str,
    mut options: SubscriptionOptions,
    caps: &Capabilities,
    max_levels: usize,
    version: ProtocolVersion,
) -> Result<Granted<'f>, ReasonCode> {
    if !topic::valid_filter(filter) {
        // Only a hook can have produced it: the codec checks filters.
        return Err(ReasonCode::TopicFilterInvalid);
    }
    let (group, plain) = match topic::parse_filter(filter) {
        SharedFilter::Plain(f) => (None, f),
        SharedFilter::Shared { group, filter } => (Some(group), filter),
    };
    if too_deep(plain.as_bytes(), max_levels) {
        return Err(ReasonCode::TopicFilterInvalid);
    }
    if group.is_some() && !caps.shared_subscriptions {
        return Err(ReasonCode::SharedSubscriptionsNotSupported);
    }
    if !caps.wildcard_subscriptions && plain.contains(['+', '#']) {
        return Err(ReasonCode::WildcardSubscriptionsNotSupported);
    }
    options.qos = options.qos.min(caps.maximum_qos);
    if !version.is_v5() {
        // 3.x has none of these options: its subscriptions behave as the
        // 5.0 defaults.
        options.no_local = false;
        options.retain_as_published = false;
        options.retain_handling = RetainHandling::SendAtSubscribe;
    }
    Ok(Granted {
        group,
        plain,
        options,
    })
}

/// More than `max` levels: the topic trees walk levels recursively, so an
/// unbounded depth would let one packet overflow the broker's stack.
pub(crate) fn too_deep(topic: &[u8], max: usize) -> bool {
    // Cheap when short: n bytes hold at most n + 1 levels.
    topic.len() >= max && topic.iter().filter(|&&b| b == b'/').count() >= max
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::QoS;

    fn opts(qos: QoS) -> SubscriptionOptions {
        SubscriptionOptions {
            qos,
            no_local: true,
            retain_as_published: true,
            retain_handling: RetainHandling::DoNotSend,
        }
    }

    #[test]
    fn outcomes() {
        let caps = Capabilities::default();
        let v5 = ProtocolVersion::V5;
        let ok = check("$share/g/a/+", opts(QoS::AtLeastOnce), &caps, 8, v5).unwrap();
        assert_eq!(
            (ok.group, ok.plain, ok.options),
            (Some("g"), "a/+", opts(QoS::AtLeastOnce))
        );
        // Only a hook could produce an invalid filter.
        assert_eq!(
            check("a/#/b", opts(QoS::AtMostOnce), &caps, 8, v5),
            Err(ReasonCode::TopicFilterInvalid)
        );
        // Deeper than the limit: 4 levels, at most 3.
        assert_eq!(
            check("a/b/c/d", opts(QoS::AtMostOnce), &caps, 3, v5),
            Err(ReasonCode::TopicFilterInvalid)
        );
        assert!(check("a/b/c", opts(QoS::AtMostOnce), &caps, 3, v5).is_ok());
    }

    #[test]
    fn capabilities_refuse_and_cap() {
        let caps = Capabilities {
            shared_subscriptions: false,
            wildcard_subscriptions: false,
            maximum_qos: QoS::AtLeastOnce,
            ..Default::default()
        };
        let v5 = ProtocolVersion::V5;
        assert_eq!(
            check("$share/g/a", opts(QoS::AtMostOnce), &caps, 8, v5),
            Err(ReasonCode::SharedSubscriptionsNotSupported)
        );
        assert_eq!(
            check("a/#", opts(QoS::AtMostOnce), &caps, 8, v5),
            Err(ReasonCode::WildcardSubscriptionsNotSupported)
        );
        let granted = check("a", opts(QoS::ExactlyOnce), &caps, 8, v5).unwrap();
        assert_eq!(granted.options.qos, QoS::AtLeastOnce);
    }

    #[test]
    fn a_3_x_subscription_has_the_5_0_defaults() {
        let caps = Capabilities::default();
        let granted = check(
            "a",
            opts(QoS::ExactlyOnce),
            &caps,
            8,
            ProtocolVersion::V3_1_1,
        )
        .unwrap();
        assert_eq!(
            granted.options,
            SubscriptionOptions {
                qos: QoS::ExactlyOnce,
                ..Default::default()
            }
        );
    }

    #[test]
    fn depth() {
        assert!(!too_deep(b"a/b", 2));
        assert!(too_deep(b"a/b/c", 2));
        assert!(!too_deep(b"////", 5));
    }
}
