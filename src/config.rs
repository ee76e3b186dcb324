//! Broker options: capabilities and limits, each with a documented default.

use crate::codec::QoS;
use std::time::Duration;

/// Everything the broker can be told. `Options::default()` is a sensible
/// broker for a small gateway.
#[derive(Debug, Clone)]
pub struct Options {
    /// What the broker offers clients (advertised in CONNACK).
    pub capabilities: Capabilities,
    /// Resource limits.
    pub limits: Limits,
    /// How often `$SYS/broker/...` topics are published; `None` disables them.
    /// Default: 10 seconds.
    pub sys_interval: Option<Duration>,
    /// When acknowledgements leave relative to storage commits.
    /// Default: [`Durability::AckAfterCommit`].
    pub durability: Durability,
}

/// The durability contract with a persistent store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
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

impl Default for Options {
    fn default() -> Self {
        Options {
            capabilities: Capabilities::default(),
            limits: Limits::default(),
            sys_interval: Some(Duration::from_secs(10)),
            durability: Durability::default(),
        }
    }
}

/// Protocol features the broker offers.
#[derive(Debug, Clone)]
pub struct Capabilities {
    /// Highest QoS accepted from and granted to clients. Default: 2.
    pub maximum_qos: QoS,
    /// Whether retained messages are supported. Default: true.
    pub retain_available: bool,
    /// Whether wildcard subscriptions are allowed. Default: true.
    pub wildcard_subscriptions: bool,
    /// Whether subscription identifiers are supported. Default: true.
    pub subscription_identifiers: bool,
    /// Whether `$share/` subscriptions are supported. Default: true.
    pub shared_subscriptions: bool,
    /// Topic aliases a client may use towards the broker. Default: 65535.
    pub topic_alias_maximum: u16,
    /// Force this keep-alive on MQTT 5.0 clients (Server Keep Alive).
    /// Default: none (the client's value is used, capped by
    /// `maximum_keep_alive`).
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
            topic_alias_maximum: u16::MAX,
            server_keep_alive: None,
            maximum_keep_alive: u16::MAX,
            maximum_session_expiry_interval: u32::MAX,
        }
    }
}

/// Resource limits. Each protects the broker from one client.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest packet accepted, in bytes (fixed header included).
    /// Default: 1 MiB (the protocol allows up to 268,435,460).
    pub maximum_packet_size: u32,
    /// Receive Maximum: QoS 1/2 publishes a client may have unacknowledged
    /// towards the broker. Default: 1024.
    pub receive_maximum: u16,
    /// Most QoS 1/2 messages in flight towards one client, whatever its own
    /// Receive Maximum. Default: 1024.
    pub maximum_inflight: u16,
    /// Most QoS 1/2 messages queued for one session beyond those in flight
    /// (offline or over its receive maximum). For a client that is away, a
    /// message arriving at a full queue is dropped and counted. For a
    /// connected client, a full queue slows down the publishers feeding it
    /// (their reads pause, half a second at a time, until the queue has
    /// drained to half); only past four times this limit is a message
    /// dropped. Default: 10,000.
    pub maximum_queued_messages: usize,
    /// Most packets waiting to be written to one connection before QoS 0
    /// messages to it are dropped (a slow consumer). Default: 10,000.
    pub maximum_pending_writes: usize,
    /// Most concurrent connections. Default: 100,000.
    pub maximum_connections: usize,
    /// How long a new connection may take to send CONNECT. Default: 10 s.
    /// A TLS or WebSocket handshake (or an HTTP request head) gets the same
    /// bound before it, in the connection's own task.
    pub connect_timeout: std::time::Duration,
    /// Most subscriptions one session may hold. Default: 10,000.
    pub maximum_subscriptions_per_session: usize,
    /// Longest client id accepted, in bytes. Default: 65535.
    pub maximum_client_id_len: usize,
    /// Most levels in a topic name or filter (a 64 KiB topic can have
    /// 65,536). Deeper filters are refused in SUBACK (0x8F; 0x80 for 3.x),
    /// deeper topic names close the connection (5.0: DISCONNECT 0x90) and a
    /// deeper will topic refuses the CONNECT. Keeps the topic trees shallow.
    /// Default: 128.
    pub maximum_topic_levels: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            maximum_packet_size: 1024 * 1024,
            receive_maximum: 1024,
            maximum_inflight: 1024,
            maximum_queued_messages: 10_000,
            maximum_pending_writes: 10_000,
            maximum_connections: 100_000,
            connect_timeout: std::time::Duration::from_secs(10),
            maximum_subscriptions_per_session: 10_000,
            maximum_client_id_len: 65_535,
            maximum_topic_levels: 128,
        }
    }
}
