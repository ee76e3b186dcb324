//! What a share group (`$share/<group>/<filter>`) is called in NATS, so
//! that every node with a member of the group names the same things and
//! each message goes to one member across the cluster:
//!
//! - QoS 1/2: durable pull consumers on the message stream, one per
//!   subject of the filter (nats-server 2.9 gives a consumer one filter
//!   subject, and `a/#` is the two subjects `a` and `a.>`, see
//!   `cluster::subject`), named `<name>_g_<hash>_<i>`; nodes pulling from
//!   one consumer get each message once between them.
//! - QoS 0: core NATS queue subscriptions on the filter's volatile
//!   subjects, in the queue group `<name>_g_<hash>`.
//!
//! `<hash>` is 32 hex digits of the 128-bit FNV-1a hash of the cluster
//! name, the group and the filter, each followed by a NUL (which no MQTT
//! string holds, so the input is unambiguous). A hash, because JetStream
//! names allow only part of what group names and filters may hold and are
//! bounded in length; FNV-1a, because every node and every release must
//! compute the same name (std's hasher promises neither); 128 bits, so
//! two groups of one cluster do not collide in practice (2^64 groups for
//! an even chance).

use crate::cluster::config::ClusterConfig;
use crate::cluster::subject::subjects_of_filter;

/// NATS names of one share group on one filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GroupNames {
    /// `(consumer name, filter subject)` of each durable consumer.
    pub durable: Vec<(String, String)>,
    /// The subjects the QoS 0 queue subscriptions listen on.
    pub volatile: Vec<String>,
    /// The queue group of those subscriptions.
    pub queue: String,
}

/// The names of share group `group` on `filter` (a valid plain filter).
pub(crate) fn names(config: &ClusterConfig, group: &str, filter: &str) -> GroupNames {
    let base = format!(
        "{}_g_{:032x}",
        config.name,
        hash(&config.name, group, filter)
    );
    let durable = subjects_of_filter(&config.durable_prefix(), filter)
        .into_iter()
        .enumerate()
        .map(|(i, subject)| (format!("{base}_{i}"), subject))
        .collect();
    GroupNames {
        durable,
        volatile: subjects_of_filter(&config.volatile_prefix(), filter),
        queue: base,
    }
}

/// FNV-1a, 128 bits (offset basis and prime as the FNV specification
/// gives them), over `name`, `group` and `filter`, each NUL-terminated.
fn hash(name: &str, group: &str, filter: &str) -> u128 {
    const OFFSET: u128 = 0x6c62272e07bb014262b821756295c58d;
    const PRIME: u128 = 0x0000000001000000000000000000013B;
    let mut h = OFFSET;
    for part in [name, group, filter] {
        for &b in part.as_bytes().iter().chain(&[0]) {
            h ^= u128::from(b);
            h = h.wrapping_mul(PRIME);
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(name: &str) -> ClusterConfig {
        ClusterConfig {
            name: name.into(),
            ..ClusterConfig::default()
        }
    }

    #[test]
    fn fnv1a_128_matches_the_reference_values() {
        // FNV-1a 128 of "" and "a" (the specification's test vectors);
        // `hash` adds a NUL after each part, so check the core directly.
        let fnv = |bytes: &[u8]| {
            let mut h: u128 = 0x6c62272e07bb014262b821756295c58d;
            for &b in bytes {
                h ^= u128::from(b);
                h = h.wrapping_mul(0x0000000001000000000000000000013B);
            }
            h
        };
        assert_eq!(fnv(b""), 0x6c62272e07bb014262b821756295c58d);
        assert_eq!(fnv(b"a"), 0xd228cb696f1a8caf78912b704e4a8964);
        assert_eq!(hash("a", "b", "c"), fnv(b"a\0b\0c\0"));
    }

    #[test]
    fn names_are_stable_valid_and_distinct() {
        let c = config("site1");
        let n = names(&c, "workers", "jobs/#");
        assert_eq!(n.durable.len(), 2);
        assert_eq!(n.durable[0].1, "site1.d.jobs");
        assert_eq!(n.durable[1].1, "site1.d.jobs.>");
        assert_eq!(n.volatile, ["site1.v.jobs", "site1.v.jobs.>"]);
        assert!(n.queue.starts_with("site1_g_") && n.queue.len() == 8 + 32);
        assert_eq!(n.durable[0].0, format!("{}_0", n.queue));
        // The same on every node and every run.
        assert_eq!(names(&c, "workers", "jobs/#"), n);
        // JetStream names: letters, digits, `-` and `_` only.
        let valid = |s: &str| s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        assert!(valid(&n.queue) && n.durable.iter().all(|(name, _)| valid(name)));
        // Another group, filter or cluster is another name; the parts do
        // not run into each other.
        for other in [
            names(&c, "worker", "sjobs/#"),
            names(&c, "workers", "jobs/+"),
            names(&config("site2"), "workers", "jobs/#"),
        ] {
            assert_ne!(other.queue, n.queue);
        }
        assert_eq!(names(&c, "g", "#").durable.len(), 1);
    }
}
