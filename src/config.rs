//! Broker options: capabilities and limits, each with a documented default.
//!
//! Every type here reads from (and writes to) a configuration file with
//! serde: missing keys take their defaults, unknown keys are errors,
//! durations are strings such as `"10s"` or `"500ms"` (or whole seconds),
//! and sizes strings such as `"1MiB"` (or whole bytes).

pub mod duration;
pub mod size;

use crate::codec::QoS;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Everything the broker can be told. `Options::default()` is a sensible
/// broker for a small gateway.
///
/// ```
/// let opts: roost::Options = serde_json::from_str(
///     r#"{ "sys_interval": "off", "limits": { "connect_timeout": "2s" } }"#,
/// ).unwrap();
/// assert_eq!(opts.sys_interval, None);
/// assert_eq!(opts.limits.connect_timeout, std::time::Duration::from_secs(2));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Options {
    /// What the broker offers clients (advertised in CONNACK).
    pub capabilities: Capabilities,
    /// Resource limits.
    pub limits: Limits,
    /// How often `$SYS/broker/...` topics are published; `None` disables them.
    /// Default: 10 seconds. In a file: a duration, or `"off"` (or 0).
    #[serde(with = "duration::optional")]
    pub sys_interval: Option<Duration>,
    /// When acknowledgements leave relative to storage commits.
    /// Default: [`Durability::AckAfterCommit`].
    pub durability: Durability,
    /// How much memory the broker's caches may use.
    pub memory: Memory,
}

/// Memory the broker's caches of stored data may use (in a file: the
/// `[memory]` table).
///
/// With a persistent store the store holds every queued message, and memory
/// only a window of each queue: what is in flight, and a read-ahead for a
/// connected client. `budget` bounds those windows all together: past it,
/// new messages for persistent sessions go to the store only (and are read
/// back when their client is ready for them), and messages for sessions the
/// store does not hold (with the in-memory store, or a session that ends with
/// its connection) are dropped and counted, as a full queue drops them.
/// Memory is then all those sessions have, so this is their bound.
///
/// The same budget bounds the cache of retained messages: with a persistent
/// store, every retained message is in the store and memory keeps an index
/// entry per topic (about 100 bytes) and the most recently retained
/// messages, up to an eighth of the budget; the others are read from the
/// store when a subscription matches them. The cache and the queues share
/// one account: queues spill that much earlier while the cache is full.
/// With the in-memory store the retained messages are memory, and a
/// quarter of the budget bounds them (beside
/// [`Limits::maximum_retained_bytes`]).
///
/// ```
/// let opts: roost::Options =
///     serde_json::from_str(r#"{ "memory": { "budget": "64MiB" } }"#).unwrap();
/// assert_eq!(opts.memory.budget, 64 << 20);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Memory {
    /// Most memory the queued and in-flight QoS 1/2 messages held in
    /// memory, and the cached retained messages (at most an eighth of it),
    /// may take, all sessions together, counting each message's topic,
    /// payload and about 350 bytes of bookkeeping once, and 64 bytes for
    /// each further queue that holds it (the sessions a message goes to
    /// share it). A size (`"256MiB"`) or whole bytes. Default: 256 MiB.
    #[serde(with = "size")]
    pub budget: usize,
}

impl Default for Memory {
    fn default() -> Self {
        Memory {
            budget: 256 * 1024 * 1024,
        }
    }
}

/// The durability contract with a persistent store.
///
/// In a file it is a table with a `mode` (`"ack-after-commit"` or
/// `"ack-before-commit"`) and, for the latter, a `flush_interval`
/// (default 1 s).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "DurabilityTable", into = "DurabilityTable")]
pub enum Durability {
    /// PUBACK, PUBREC (and SUBACK, UNSUBACK, PUBCOMP) leave only once what
    /// they acknowledge is committed: nothing acknowledged is lost, even to
    /// `kill -9` or power loss. Writes arriving together share one commit.
    #[default]
    AckAfterCommit,
    /// Acknowledge at once and commit on an interval, as Mosquitto does:
    /// faster, but a crash loses what was acknowledged since the last
    /// commit (at most `flush_interval` of traffic).
    AckBeforeCommit {
        /// How often recorded changes are committed.
        flush_interval: Duration,
    },
}

/// How [`Durability`] is written in a file.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct DurabilityTable {
    mode: DurabilityMode,
    #[serde(with = "duration::optional", skip_serializing_if = "Option::is_none")]
    flush_interval: Option<Duration>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum DurabilityMode {
    #[default]
    AckAfterCommit,
    AckBeforeCommit,
}

impl Default for DurabilityTable {
    fn default() -> Self {
        Durability::default().into()
    }
}

/// The flush interval of [`Durability::AckBeforeCommit`] when a file does
/// not give one.
const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_secs(1);

impl TryFrom<DurabilityTable> for Durability {
    type Error = &'static str;

    fn try_from(t: DurabilityTable) -> Result<Self, Self::Error> {
        match (t.mode, t.flush_interval) {
            (DurabilityMode::AckAfterCommit, None) => Ok(Durability::AckAfterCommit),
            (DurabilityMode::AckAfterCommit, Some(_)) => {
                Err("flush_interval applies only to mode = \"ack-before-commit\"")
            }
            (DurabilityMode::AckBeforeCommit, interval) => Ok(Durability::AckBeforeCommit {
                flush_interval: interval.unwrap_or(DEFAULT_FLUSH_INTERVAL),
            }),
        }
    }
}

impl From<Durability> for DurabilityTable {
    fn from(d: Durability) -> Self {
        match d {
            Durability::AckAfterCommit => DurabilityTable {
                mode: DurabilityMode::AckAfterCommit,
                flush_interval: None,
            },
            Durability::AckBeforeCommit { flush_interval } => DurabilityTable {
                mode: DurabilityMode::AckBeforeCommit,
                flush_interval: Some(flush_interval),
            },
        }
    }
}

impl Default for Options {
    fn default() -> Self {
        Options {
            capabilities: Capabilities::default(),
            limits: Limits::default(),
            sys_interval: Some(Duration::from_secs(10)),
            durability: Durability::default(),
            memory: Memory::default(),
        }
    }
}

/// Protocol features the broker offers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Capabilities {
    /// Highest QoS accepted from and granted to clients. Default: 2.
    /// In a file: 0, 1 or 2.
    #[serde(with = "qos")]
    pub maximum_qos: QoS,
    /// Whether retained messages are supported. Default: true.
    pub retain_available: bool,
    /// Whether wildcard subscriptions are allowed. Default: true.
    pub wildcard_subscriptions: bool,
    /// Whether subscription identifiers are supported. Default: true.
    pub subscription_identifiers: bool,
    /// Whether `$share/` subscriptions are supported. Default: true.
    pub shared_subscriptions: bool,
    /// Topic aliases a client may use towards the broker. Default: 256
    /// (with `limits.maximum_topic_alias_bytes` at its default, enough
    /// for every one of them on topics of up to 224 bytes).
    pub topic_alias_maximum: u16,
    /// Force this keep-alive on MQTT 5.0 clients (Server Keep Alive).
    /// Default: none (the client's value is used, capped by
    /// `maximum_keep_alive`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_keep_alive: Option<u16>,
    /// The longest keep-alive accepted; a 5.0 client asking for more (or for
    /// 0) is told this value. Default: 65535 (no cap).
    pub maximum_keep_alive: u16,
    /// Longest Session Expiry Interval granted, in seconds; a 3.x
    /// persistent session gets this too. Default: `u32::MAX` (never expire).
    pub maximum_session_expiry_interval: u32,
}

impl Default for Capabilities {
    fn default() -> Self {
        Capabilities {
            maximum_qos: QoS::ExactlyOnce,
            retain_available: true,
            wildcard_subscriptions: true,
            subscription_identifiers: true,
            shared_subscriptions: true,
            topic_alias_maximum: 256,
            server_keep_alive: None,
            maximum_keep_alive: u16::MAX,
            maximum_session_expiry_interval: u32::MAX,
        }
    }
}

/// Resource limits. Each protects the broker from one client.
///
/// In a file, the limits in bytes take a size with a unit (`"1MiB"`,
/// `"512KiB"`, `"1GB"`) or whole bytes, as [`size`] reads them.
///
/// ```
/// let limits: roost::Limits = serde_json::from_str(
///     r#"{ "maximum_packet_size": "256KiB", "maximum_connect_size": 4096 }"#,
/// ).unwrap();
/// assert_eq!(limits.maximum_packet_size, 256 << 10);
/// assert_eq!(limits.maximum_connect_size, 4096);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest packet accepted, in bytes (fixed header included).
    /// Default: 1 MiB (the protocol allows up to 268,435,460).
    #[serde(with = "size")]
    pub maximum_packet_size: u32,
    /// Receive Maximum: QoS 1/2 publishes a client may have unacknowledged
    /// towards the broker. Default: 1024.
    pub receive_maximum: u16,
    /// Most QoS 1/2 messages in flight towards one client, whatever its own
    /// Receive Maximum. Default: 1024.
    pub maximum_inflight: u16,
    /// Most QoS 1/2 messages queued for one session beyond those in flight
    /// (offline or over its receive maximum). With a persistent store this
    /// is a bound on disk: the queue lives in the store, and memory holds
    /// only a window of it (see [`Memory`]). For a client that is away, a
    /// message arriving at a full queue is dropped and counted (a 5.0
    /// publisher that was its only reason to be stored gets 0x97). For a
    /// connected client, a queue of 10,000 messages (or of this limit, if
    /// lower) slows down the publishers feeding it (their reads pause until
    /// the queue has drained to half), for at most about a second per
    /// episode: a client that does not drain by then (it stopped reading,
    /// or never acknowledges) pauses nobody until it has drained, and its
    /// queue takes what comes up to this limit (or four times that pausing
    /// threshold, if more); past that a message is dropped and counted.
    /// Default: 1,000,000.
    pub maximum_queued_messages: usize,
    /// Most topic and payload bytes of the QoS 1/2 messages one session
    /// holds, queued and in flight, connected or not (on disk, with a
    /// persistent store): a message that would take it past this is dropped
    /// and counted. A connected client holding 8 MiB (or half of this, if
    /// lower) slows its publishers down as a full queue does.
    /// Default: 256 MiB.
    #[serde(with = "size")]
    pub maximum_queued_bytes: usize,
    /// Most packets waiting to be written to one connection before QoS 0
    /// messages to it are dropped (a slow consumer; also once they are
    /// about `maximum_queued_bytes`). From an eighth of it
    /// on (or from about 256 KiB of QoS 0 messages), the connection is
    /// behind: its publishers' reads pause while it catches up, for at most
    /// 100 ms per episode (a slow or stuck client never holds them up for
    /// longer). Default: 10,000.
    pub maximum_pending_writes: usize,
    /// Most concurrent connections. Default: 100,000.
    pub maximum_connections: usize,
    /// Most concurrent MQTT connections from one source: an IPv4 address,
    /// or an IPv6 /64 (one site's network, where a single host can take
    /// any number of addresses; IPv4-mapped IPv6 addresses count as IPv4).
    /// A connection past it is closed as soon as it is accepted, before
    /// any TLS or WebSocket handshake, and counted as
    /// `connections_refused_per_ip`. 0: no limit. Default: 0, because one
    /// address may be a whole fleet (devices behind a NAT, a carrier's
    /// CGNAT, a reverse proxy): set it when every device has an address of
    /// its own. HTTP listeners do not count.
    pub maximum_connections_per_ip: usize,
    /// Most new MQTT connections one source (as for
    /// `maximum_connections_per_ip`) may open per second: a token bucket
    /// holding a second's worth, so a source may open this many at once
    /// and then this many a second. A connection past it is closed as soon
    /// as it is accepted, before any handshake, and counted as
    /// `connect_rate_refused`; one refused for the count above takes no
    /// token. 0: no limit. Default: 0, for the same reason (a fleet behind
    /// one address reconnects all at once after a power cut).
    pub maximum_connect_rate_per_ip: u32,
    /// How long a new connection may take to send CONNECT. Default: 10 s.
    /// A TLS or WebSocket handshake (or an HTTP request head) gets the same
    /// bound before it, in the connection's own task.
    #[serde(with = "duration")]
    pub connect_timeout: Duration,
    /// Most subscriptions one session may hold. Default: 10,000.
    pub maximum_subscriptions_per_session: usize,
    /// Most bytes the retained messages of all clients may take together
    /// (topic, payload, and about 128 bytes of bookkeeping each). A
    /// retained message that would take the store past it is delivered
    /// to the current subscribers but not retained (it replaces nothing: an
    /// older message on its topic is cleared, so no stale value stays),
    /// counted in `retained_refused` and logged. With a persistent store
    /// this bounds the store (memory holds an index and a cache within
    /// [`Memory::budget`]); with the in-memory store, where retained
    /// messages are memory, a quarter of [`Memory::budget`] bounds them
    /// too. Default: 1 GiB.
    #[serde(with = "size")]
    pub maximum_retained_bytes: usize,
    /// Most bytes of topic filters one session may hold, all its
    /// subscriptions together. A filter that would take it past this is
    /// refused in SUBACK with 0x97 Quota exceeded (0x80 for 3.x).
    /// Default: 1 MiB.
    #[serde(with = "size")]
    pub maximum_subscription_bytes: usize,
    /// Longest client id accepted, in bytes. Default: 65535.
    pub maximum_client_id_len: usize,
    /// Most levels in a topic name or filter (a 64 KiB topic can have
    /// 65,536). Deeper filters are refused in SUBACK (0x8F; 0x80 for 3.x),
    /// deeper topic names close the connection (5.0: DISCONNECT 0x90) and a
    /// deeper will topic refuses the CONNECT. Keeps the topic trees shallow.
    /// Default: 128.
    pub maximum_topic_levels: usize,
    /// Most bytes of topic aliases one connection holds in each direction:
    /// the topic names plus 32 bytes per alias. A client registering an
    /// alias past it is disconnected (5.0: DISCONNECT 0x97 Quota exceeded,
    /// counted as `topic_alias_refused`); towards a client, topics past it
    /// are sent in full. Default: 64 KiB.
    #[serde(with = "size")]
    pub maximum_topic_alias_bytes: usize,
    /// How long a packet may take to arrive once its first byte has: past
    /// it the connection is closed (5.0: DISCONNECT 0x8D Keep Alive
    /// timeout), and counted as `packet_read_timeouts`. The keep-alive
    /// bounds a client's silence only between packets, and not at all when
    /// it is 0. Raise it for large packets over slow links (the default
    /// asks a 1 MiB packet for 35 KB/s). Default: 30 s.
    #[serde(with = "duration")]
    pub packet_read_timeout: Duration,
    /// How long a connection may have bytes to write that its client's
    /// socket accepts none of (the client stopped reading, or its TCP
    /// window stays closed): past it the connection is dropped, without a
    /// DISCONNECT the client would not read (its will is published), and
    /// counted as `write_timeouts`. The time runs only while a write is
    /// blocked and starts again at every byte written, so a client on a
    /// slow link taking a large backlog is never cut off, however long it
    /// takes. The keep-alive cannot see such a client: the broker stops
    /// reading a client whose answers it does not read. `"off"` (or 0)
    /// never times writes out. Default: 30 s (as `packet_read_timeout`;
    /// longer than a mobile link's usual outage).
    #[serde(with = "duration::optional")]
    pub write_timeout: Option<Duration>,
    /// Largest packet accepted before CONNACK (a CONNECT, with its will
    /// message, or an AUTH), in bytes; `maximum_packet_size` applies after.
    /// Checked from the fixed header, before the body is buffered: a 5.0
    /// client gets CONNACK 0x95 (Packet too large), a 3.x one is closed.
    /// Counted as `connect_too_large`. Default: 64 KiB.
    #[serde(with = "size")]
    pub maximum_connect_size: u32,
    /// Most bytes buffered, all together, by connections that have not
    /// finished their CONNECT exchange (none of them authenticated yet).
    /// A connection whose next bytes would take the total past it is
    /// closed (counted as `unauthenticated_refused`), so unauthenticated
    /// clients cannot hold more than this however many connect at once.
    /// Default: 16 MiB.
    #[serde(with = "size")]
    pub maximum_unauthenticated_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            maximum_packet_size: 1024 * 1024,
            receive_maximum: 1024,
            maximum_inflight: 1024,
            maximum_queued_messages: 1_000_000,
            maximum_queued_bytes: 256 * 1024 * 1024,
            maximum_pending_writes: 10_000,
            maximum_connections: 100_000,
            maximum_connections_per_ip: 0,
            maximum_connect_rate_per_ip: 0,
            connect_timeout: Duration::from_secs(10),
            maximum_subscriptions_per_session: 10_000,
            maximum_subscription_bytes: 1024 * 1024,
            maximum_retained_bytes: 1024 * 1024 * 1024,
            maximum_client_id_len: 65_535,
            maximum_topic_levels: 128,
            maximum_topic_alias_bytes: 64 * 1024,
            packet_read_timeout: Duration::from_secs(30),
            write_timeout: Some(Duration::from_secs(30)),
            maximum_connect_size: 64 * 1024,
            maximum_unauthenticated_bytes: 16 * 1024 * 1024,
        }
    }
}

/// QoS in configuration files: the number 0, 1 or 2. For a host
/// application's settings too:
///
/// ```
/// #[derive(serde::Deserialize)]
/// struct Settings {
///     #[serde(with = "roost::qos")]
///     qos: roost::codec::QoS,
/// }
/// let s: Settings = serde_json::from_str(r#"{ "qos": 1 }"#).unwrap();
/// assert_eq!(s.qos, roost::codec::QoS::AtLeastOnce);
/// ```
pub mod qos {
    use crate::codec::QoS;
    use serde::{de, Deserialize, Deserializer, Serializer};

    /// Serializes a QoS as its number.
    pub fn serialize<S: Serializer>(q: &QoS, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u8(*q as u8)
    }

    /// Deserializes 0, 1 or 2.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<QoS, D::Error> {
        let n = u8::deserialize(d)?;
        QoS::from_u8(n).ok_or_else(|| {
            de::Error::invalid_value(de::Unexpected::Unsigned(n.into()), &"0, 1 or 2")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_round_trip_through_json() {
        let opts = Options::default();
        let text = serde_json::to_string(&opts).unwrap();
        assert_eq!(serde_json::from_str::<Options>(&text).unwrap(), opts);
        assert_eq!(serde_json::from_str::<Options>("{}").unwrap(), opts);
    }

    #[test]
    fn durability_modes() {
        let relaxed: Durability =
            serde_json::from_str(r#"{"mode":"ack-before-commit","flush_interval":"250ms"}"#)
                .unwrap();
        assert_eq!(
            relaxed,
            Durability::AckBeforeCommit {
                flush_interval: Duration::from_millis(250)
            }
        );
        let text = serde_json::to_string(&relaxed).unwrap();
        assert_eq!(serde_json::from_str::<Durability>(&text).unwrap(), relaxed);
        let err = serde_json::from_str::<Durability>(
            r#"{"mode":"ack-after-commit","flush_interval":"1s"}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("flush_interval"), "{err}");
    }

    #[test]
    fn write_timeout_parses_and_turns_off() {
        let limits: Limits = serde_json::from_str(r#"{"write_timeout":"1m30s"}"#).unwrap();
        assert_eq!(limits.write_timeout, Some(Duration::from_secs(90)));
        for off in [r#"{"write_timeout":"off"}"#, r#"{"write_timeout":0}"#] {
            let limits: Limits = serde_json::from_str(off).unwrap();
            assert_eq!(limits.write_timeout, None, "{off}");
        }
        assert_eq!(
            Limits::default().write_timeout,
            Some(Duration::from_secs(30))
        );
        let text = serde_json::to_string(&Limits {
            write_timeout: None,
            ..Limits::default()
        })
        .unwrap();
        assert!(text.contains(r#""write_timeout":"off""#), "{text}");
        let err = serde_json::from_str::<Limits>(r#"{"write_timeout":"soon"}"#).unwrap_err();
        assert!(err.to_string().contains("invalid duration"), "{err}");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        let err = serde_json::from_str::<Capabilities>(r#"{"maxium_qos":1}"#).unwrap_err();
        assert!(err.to_string().contains("maxium_qos"), "{err}");
        let err = serde_json::from_str::<Capabilities>(r#"{"maximum_qos":3}"#).unwrap_err();
        assert!(err.to_string().contains("0, 1 or 2"), "{err}");
        let err = serde_json::from_str::<Limits>(r#"{"connect_timeout":"soon"}"#).unwrap_err();
        assert!(err.to_string().contains("invalid duration"), "{err}");
    }
}
