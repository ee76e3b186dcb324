//! One bridge: where it connects, as whom, with which limits, and its
//! rules. Built with [`Bridge::new`] and checked with [`Bridge::validate`].

use super::remote::Remote;
use super::rule::{Direction, Rule, RuleError};
use crate::topic::valid_name;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// Why a bridge's configuration cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BridgeError {
    /// A bridge without a name.
    #[error("a bridge needs a name")]
    EmptyName,
    /// A name with characters that a store key, a metrics label or a
    /// `$SYS` topic level cannot hold safely, or longer than 64 bytes.
    #[error(
        "bridge name {name:?} may hold only ASCII letters, digits, \"-\" and \"_\" (at most 64)"
    )]
    BadName {
        /// The name.
        name: String,
    },
    /// Two bridges with one name.
    #[error("bridge name {name:?} is used by another bridge")]
    DuplicateName {
        /// The name.
        name: String,
    },
    /// An empty client identifier, or one longer than 65,535 bytes.
    #[error("bridge {bridge:?}: client_id must be 1 to 65535 bytes")]
    BadClientId {
        /// The bridge.
        bridge: String,
    },
    /// A password without a user name, which MQTT 3.1.1 cannot send
    /// ([MQTT-3.1.2-22]).
    #[error("bridge {bridge:?}: MQTT 3.1.1 sends a password only with a username [MQTT-3.1.2-22]")]
    PasswordWithoutUsername {
        /// The bridge.
        bridge: String,
    },
    /// A duration longer than its field in the protocol can carry.
    #[error("bridge {bridge:?}: {key} {value:?} is longer than the protocol allows ({max:?})")]
    TooLong {
        /// The bridge.
        bridge: String,
        /// `keep_alive` or `session_expiry`.
        key: &'static str,
        /// The value given.
        value: Duration,
        /// The longest allowed.
        max: Duration,
    },
    /// A limit or interval of zero.
    #[error("bridge {bridge:?}: {key} must be more than zero")]
    Zero {
        /// The bridge.
        bridge: String,
        /// `reconnect_min`, `max_inflight`, `max_queued_messages` or
        /// `max_queued_bytes`.
        key: &'static str,
    },
    /// `reconnect_min` above `reconnect_max`.
    #[error("bridge {bridge:?}: reconnect_min ({min:?}) is more than reconnect_max ({max:?})")]
    Reconnect {
        /// The bridge.
        bridge: String,
        /// `reconnect_min`.
        min: Duration,
        /// `reconnect_max`.
        max: Duration,
    },
    /// A state topic that is not a valid topic name.
    #[error("bridge {bridge:?}: state_topic {topic:?} is not a valid topic name")]
    BadStateTopic {
        /// The bridge.
        bridge: String,
        /// The topic.
        topic: String,
    },
    /// TLS settings for an `mqtt://` or `ws://` remote.
    #[error("bridge {bridge:?}: tls applies only to mqtts:// and wss:// remotes")]
    TlsNotUsed {
        /// The bridge.
        bridge: String,
    },
    /// An `mqtts://` or `wss://` remote without TLS settings.
    #[error("bridge {bridge:?}: an mqtts:// or wss:// remote needs tls settings with a ca")]
    TlsMissing {
        /// The bridge.
        bridge: String,
    },
    /// A TLS file that cannot be read or used (checked when the bridge is
    /// added to a server).
    #[error("bridge {bridge:?}: {reason}")]
    TlsFile {
        /// The bridge.
        bridge: String,
        /// The file and what is wrong with it.
        reason: String,
    },
    /// A client certificate without its key, or a key without its
    /// certificate.
    #[error("bridge {bridge:?}: {key} is missing (tls cert and key go together)")]
    TlsPair {
        /// The bridge.
        bridge: String,
        /// The missing one: `tls.cert` or `tls.key`.
        key: &'static str,
    },
    /// No forward and no subscribe rule.
    #[error("bridge {bridge:?} has no forward or subscribe rule")]
    NoRules {
        /// The bridge.
        bridge: String,
    },
    /// A rule that cannot be used.
    #[error("bridge {bridge:?}: {direction} rule {}: {source}", index + 1)]
    Rule {
        /// The bridge.
        bridge: String,
        /// Which list the rule is in.
        direction: Direction,
        /// Its index in that list, from 0.
        index: usize,
        /// What is wrong with it.
        source: RuleError,
    },
}

impl BridgeError {
    /// The key, in a configuration file's `[[bridges]]` table, that holds
    /// the bad value: `name`, `client_id`, `password`, `keep_alive`,
    /// `tls.cert`, ... For a rule, the key inside the rule (see
    /// [`BridgeError::rule`] for which rule).
    pub fn key(&self) -> &'static str {
        match self {
            BridgeError::EmptyName | BridgeError::BadName { .. } => "name",
            BridgeError::DuplicateName { .. } => "name",
            BridgeError::BadClientId { .. } => "client_id",
            BridgeError::PasswordWithoutUsername { .. } => "password",
            BridgeError::TooLong { key, .. } | BridgeError::Zero { key, .. } => key,
            BridgeError::Reconnect { .. } => "reconnect_min",
            BridgeError::BadStateTopic { .. } => "state_topic",
            BridgeError::TlsNotUsed { .. }
            | BridgeError::TlsMissing { .. }
            | BridgeError::TlsFile { .. } => "tls",
            BridgeError::TlsPair { key, .. } => key,
            BridgeError::NoRules { .. } => "forward",
            BridgeError::Rule { source, .. } => source.key(),
        }
    }

    /// For an error in a rule: which list it is in and its index there.
    pub fn rule(&self) -> Option<(Direction, usize)> {
        match self {
            BridgeError::Rule {
                direction, index, ..
            } => Some((*direction, *index)),
            _ => None,
        }
    }
}

/// The MQTT version a bridge speaks to its remote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum Protocol {
    /// MQTT 3.1.1 (in a file: `"3.1.1"`). Loops are prevented by tracking
    /// where a message came from.
    #[serde(rename = "3.1.1")]
    V3_1_1,
    /// MQTT 5.0 (in a file: `"5"`), the default: subscriptions at the
    /// remote use No Local and Retain As Published, and a full queue is
    /// reported with reason codes.
    #[default]
    #[serde(rename = "5")]
    V5,
}

impl Protocol {
    /// The version as the codec names it.
    pub fn version(self) -> crate::codec::ProtocolVersion {
        match self {
            Protocol::V3_1_1 => crate::codec::ProtocolVersion::V3_1_1,
            Protocol::V5 => crate::codec::ProtocolVersion::V5,
        }
    }
}

/// A password for the remote broker. Its `Debug` output hides it, so a
/// logged configuration never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(Vec<u8>);

impl Password {
    /// A password (MQTT passwords are binary data).
    pub fn new(bytes: impl Into<Vec<u8>>) -> Password {
        Password(bytes.into())
    }

    /// The password itself.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<hidden>)")
    }
}

/// TLS settings for an `mqtts://` or `wss://` remote: PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BridgeTls {
    /// CA certificates the remote's certificate must chain to.
    pub ca: PathBuf,
    /// A client certificate chain, to authenticate to the remote (with
    /// `key`).
    pub cert: Option<PathBuf>,
    /// The client certificate's private key.
    pub key: Option<PathBuf>,
    /// The name the remote's certificate must hold. Default: the remote's
    /// host.
    pub server_name: Option<String>,
}

impl BridgeTls {
    /// Trust the CA certificates in `ca`, with no client certificate.
    pub fn new(ca: impl Into<PathBuf>) -> BridgeTls {
        BridgeTls {
            ca: ca.into(),
            cert: None,
            key: None,
            server_name: None,
        }
    }

    /// Authenticates with a client certificate chain and its key.
    pub fn client_cert(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> BridgeTls {
        self.cert = Some(cert.into());
        self.key = Some(key.into());
        self
    }

    /// Expects this name in the remote's certificate instead of its host.
    pub fn server_name(mut self, name: impl Into<String>) -> BridgeTls {
        self.server_name = Some(name.into());
        self
    }
}

/// One bridge to a remote broker.
///
/// Fields are public to read; build one with [`Bridge::new`] and the
/// setters, then [`validate`](Bridge::validate) it (or every bridge
/// together with [`validate_all`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Bridge {
    /// Names the bridge in logs, `/stats`, `/metrics`, `$SYS` and the
    /// store: ASCII letters, digits, `-` and `_`, 1 to 64 of them.
    pub name: String,
    /// The remote broker.
    pub remote: Remote,
    /// The MQTT version spoken to it. Default: 5.
    pub protocol: Protocol,
    /// The client identifier at the remote. Default: `roost-bridge-<name>`.
    pub client_id: String,
    /// The user name at the remote.
    pub username: Option<String>,
    /// The password at the remote.
    pub password: Option<Password>,
    /// Keep alive asked for in CONNECT. Default: 30 s; at most 65,535 s.
    pub keep_alive: Duration,
    /// How long the remote keeps the bridge's session while the link is
    /// down (MQTT 5; an MQTT 3.1.1 session is kept until it is cleaned).
    /// Default: 7 days; at most 2^32 - 1 s.
    pub session_expiry: Duration,
    /// The first wait before reconnecting; it doubles (with jitter) up to
    /// `reconnect_max`. Default: 1 s.
    pub reconnect_min: Duration,
    /// The longest wait between attempts. Default: 60 s.
    pub reconnect_max: Duration,
    /// Messages sent to the remote and not yet acknowledged; `None`: the
    /// protocol's default (see [`Bridge::inflight_window`]).
    pub max_inflight: Option<u16>,
    /// Messages queued for the remote, on disk, before new ones are
    /// refused. Default: [`Bridge::DEFAULT_MAX_QUEUED_MESSAGES`].
    pub max_queued_messages: u64,
    /// Bytes (topic, payload and properties) queued for the remote before
    /// new messages are refused. Default:
    /// [`Bridge::DEFAULT_MAX_QUEUED_BYTES`].
    pub max_queued_bytes: usize,
    /// A topic at the remote that holds, retained, `1` while the bridge is
    /// connected and `0` after (its will), like Mosquitto's
    /// `notifications`. Default: none.
    pub state_topic: Option<String>,
    /// TLS settings; required for `mqtts://` and `wss://`, refused otherwise.
    pub tls: Option<BridgeTls>,
    /// Rules carrying local messages to the remote.
    pub forward: Vec<Rule>,
    /// Rules carrying the remote's messages here.
    pub subscribe: Vec<Rule>,
}

impl Bridge {
    /// Default [`keep_alive`](Bridge::keep_alive).
    pub const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(30);
    /// Default [`session_expiry`](Bridge::session_expiry): 7 days.
    pub const DEFAULT_SESSION_EXPIRY: Duration = Duration::from_secs(7 * 24 * 3600);
    /// Default [`reconnect_min`](Bridge::reconnect_min).
    pub const DEFAULT_RECONNECT_MIN: Duration = Duration::from_secs(1);
    /// Default [`reconnect_max`](Bridge::reconnect_max).
    pub const DEFAULT_RECONNECT_MAX: Duration = Duration::from_secs(60);
    /// Default [`max_inflight`](Bridge::max_inflight) with MQTT 5.0 (the
    /// remote's Receive Maximum may lower it).
    pub const DEFAULT_MAX_INFLIGHT: u16 = 100;
    /// Default [`max_inflight`](Bridge::max_inflight) with MQTT 3.1.1,
    /// whose remote cannot say how many it takes: Mosquitto's
    /// `max_inflight_messages` default. Mosquitto answers a QoS 2 message
    /// past it with a PUBREC that a 3.1.1 client cannot tell from success,
    /// and drops it.
    pub const DEFAULT_MAX_INFLIGHT_V3: u16 = 20;
    /// Default [`max_queued_messages`](Bridge::max_queued_messages): a
    /// day-long outage at 100 messages a second (86,400 s x 100).
    pub const DEFAULT_MAX_QUEUED_MESSAGES: u64 = 8_640_000;
    /// Default [`max_queued_bytes`](Bridge::max_queued_bytes): 1 GiB, the
    /// same day at about 124 bytes a message (a 64-byte payload and its
    /// topic), so that for small telemetry the message count binds first.
    pub const DEFAULT_MAX_QUEUED_BYTES: usize = 1 << 30;

    /// Longest name: a store key and a metrics label stay short.
    const MAX_NAME: usize = 64;

    /// A bridge named `name` to `remote`, with the defaults and no rules.
    pub fn new(name: impl Into<String>, remote: Remote) -> Bridge {
        let name = name.into();
        Bridge {
            client_id: format!("roost-bridge-{name}"),
            name,
            remote,
            protocol: Protocol::default(),
            username: None,
            password: None,
            keep_alive: Self::DEFAULT_KEEP_ALIVE,
            session_expiry: Self::DEFAULT_SESSION_EXPIRY,
            reconnect_min: Self::DEFAULT_RECONNECT_MIN,
            reconnect_max: Self::DEFAULT_RECONNECT_MAX,
            max_inflight: None,
            max_queued_messages: Self::DEFAULT_MAX_QUEUED_MESSAGES,
            max_queued_bytes: Self::DEFAULT_MAX_QUEUED_BYTES,
            state_topic: None,
            tls: None,
            forward: Vec::new(),
            subscribe: Vec::new(),
        }
    }

    /// Sets the MQTT version.
    pub fn protocol(mut self, protocol: Protocol) -> Bridge {
        self.protocol = protocol;
        self
    }

    /// Sets the client identifier at the remote.
    pub fn client_id(mut self, id: impl Into<String>) -> Bridge {
        self.client_id = id.into();
        self
    }

    /// Sets the user name at the remote.
    pub fn username(mut self, username: impl Into<String>) -> Bridge {
        self.username = Some(username.into());
        self
    }

    /// Sets the password at the remote.
    pub fn password(mut self, password: Password) -> Bridge {
        self.password = Some(password);
        self
    }

    /// Sets the keep alive.
    pub fn keep_alive(mut self, keep_alive: Duration) -> Bridge {
        self.keep_alive = keep_alive;
        self
    }

    /// Sets the session expiry at the remote.
    pub fn session_expiry(mut self, expiry: Duration) -> Bridge {
        self.session_expiry = expiry;
        self
    }

    /// Sets the first and the longest wait between connection attempts.
    pub fn reconnect(mut self, min: Duration, max: Duration) -> Bridge {
        self.reconnect_min = min;
        self.reconnect_max = max;
        self
    }

    /// Sets the most messages in flight to the remote.
    pub fn max_inflight(mut self, n: u16) -> Bridge {
        self.max_inflight = Some(n);
        self
    }

    /// The most messages in flight to the remote: `max_inflight`, else
    /// [`Bridge::DEFAULT_MAX_INFLIGHT`] (5.0) or
    /// [`Bridge::DEFAULT_MAX_INFLIGHT_V3`] (3.1.1).
    ///
    /// ```
    /// use roost::bridge::{Bridge, Protocol, Remote};
    /// let b = Bridge::new("cloud", Remote::parse("mqtt://127.0.0.1")?);
    /// assert_eq!(b.inflight_window(), 100);
    /// assert_eq!(b.clone().protocol(Protocol::V3_1_1).inflight_window(), 20);
    /// assert_eq!(b.protocol(Protocol::V3_1_1).max_inflight(50).inflight_window(), 50);
    /// # Ok::<(), roost::bridge::RemoteError>(())
    /// ```
    pub fn inflight_window(&self) -> u16 {
        self.max_inflight.unwrap_or(match self.protocol {
            Protocol::V3_1_1 => Self::DEFAULT_MAX_INFLIGHT_V3,
            Protocol::V5 => Self::DEFAULT_MAX_INFLIGHT,
        })
    }

    /// Sets the most messages queued for the remote.
    pub fn max_queued_messages(mut self, n: u64) -> Bridge {
        self.max_queued_messages = n;
        self
    }

    /// Sets the most bytes queued for the remote.
    pub fn max_queued_bytes(mut self, bytes: usize) -> Bridge {
        self.max_queued_bytes = bytes;
        self
    }

    /// Sets the state topic at the remote.
    pub fn state_topic(mut self, topic: impl Into<String>) -> Bridge {
        self.state_topic = Some(topic.into());
        self
    }

    /// Sets the TLS settings.
    pub fn tls(mut self, tls: BridgeTls) -> Bridge {
        self.tls = Some(tls);
        self
    }

    /// Adds a rule carrying local messages to the remote.
    pub fn forward(mut self, rule: Rule) -> Bridge {
        self.forward.push(rule);
        self
    }

    /// Adds a rule carrying the remote's messages here.
    pub fn subscribe(mut self, rule: Rule) -> Bridge {
        self.subscribe.push(rule);
        self
    }

    /// Whether `name` may name a bridge: 1 to 64 ASCII letters, digits,
    /// `-` and `_`, so it is safe as a store key, a Prometheus label value,
    /// a `$SYS` topic level and a part of a client identifier.
    pub fn valid_name(name: &str) -> bool {
        !name.is_empty()
            && name.len() <= Self::MAX_NAME
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    }

    /// Checks the bridge on its own (see [`validate_all`] for several).
    /// Reads no file: TLS files are loaded when the bridge starts.
    pub fn validate(&self) -> Result<(), BridgeError> {
        let bridge = || self.name.clone();
        if self.name.is_empty() {
            return Err(BridgeError::EmptyName);
        }
        if !Self::valid_name(&self.name) {
            return Err(BridgeError::BadName { name: bridge() });
        }
        if self.client_id.is_empty() || self.client_id.len() > usize::from(u16::MAX) {
            return Err(BridgeError::BadClientId { bridge: bridge() });
        }
        if self.protocol == Protocol::V3_1_1 && self.password.is_some() && self.username.is_none() {
            return Err(BridgeError::PasswordWithoutUsername { bridge: bridge() });
        }
        for (key, value, max) in [
            ("keep_alive", self.keep_alive, u64::from(u16::MAX)),
            ("session_expiry", self.session_expiry, u64::from(u32::MAX)),
        ] {
            let max = Duration::from_secs(max);
            if value > max {
                return Err(BridgeError::TooLong {
                    bridge: bridge(),
                    key,
                    value,
                    max,
                });
            }
        }
        for (key, zero) in [
            ("reconnect_min", self.reconnect_min.is_zero()),
            ("max_inflight", self.max_inflight == Some(0)),
            ("max_queued_messages", self.max_queued_messages == 0),
            ("max_queued_bytes", self.max_queued_bytes == 0),
        ] {
            if zero {
                return Err(BridgeError::Zero {
                    bridge: bridge(),
                    key,
                });
            }
        }
        if self.reconnect_min > self.reconnect_max {
            return Err(BridgeError::Reconnect {
                bridge: bridge(),
                min: self.reconnect_min,
                max: self.reconnect_max,
            });
        }
        if let Some(topic) = &self.state_topic {
            if !valid_name(topic) {
                return Err(BridgeError::BadStateTopic {
                    bridge: bridge(),
                    topic: topic.clone(),
                });
            }
        }
        match (&self.tls, self.remote.scheme().is_tls()) {
            (Some(_), false) => return Err(BridgeError::TlsNotUsed { bridge: bridge() }),
            (None, true) => return Err(BridgeError::TlsMissing { bridge: bridge() }),
            (Some(tls), true) => {
                let missing = match (&tls.cert, &tls.key) {
                    (Some(_), None) => Some("tls.key"),
                    (None, Some(_)) => Some("tls.cert"),
                    _ => None,
                };
                if let Some(key) = missing {
                    return Err(BridgeError::TlsPair {
                        bridge: bridge(),
                        key,
                    });
                }
            }
            (None, false) => {}
        }
        if self.forward.is_empty() && self.subscribe.is_empty() {
            return Err(BridgeError::NoRules { bridge: bridge() });
        }
        let rules = [
            (Direction::Forward, &self.forward),
            (Direction::Subscribe, &self.subscribe),
        ];
        for (direction, list) in rules {
            for (index, rule) in list.iter().enumerate() {
                rule.validate().map_err(|source| BridgeError::Rule {
                    bridge: bridge(),
                    direction,
                    index,
                    source,
                })?;
            }
        }
        Ok(())
    }
}

/// Checks every bridge, and that no two share a name. The error of the
/// first bridge that fails, in order.
pub fn validate_all(bridges: &[Bridge]) -> Result<(), BridgeError> {
    for (i, b) in bridges.iter().enumerate() {
        b.validate()?;
        if bridges[..i].iter().any(|a| a.name == b.name) {
            return Err(BridgeError::DuplicateName {
                name: b.name.clone(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::QoS;

    fn bridge(name: &str) -> Bridge {
        Bridge::new(name, Remote::parse("mqtt://127.0.0.1:1884").unwrap())
            .forward(Rule::new("devices/#", QoS::AtLeastOnce))
    }

    #[test]
    fn defaults() {
        let b = bridge("cloud");
        assert_eq!(b.client_id, "roost-bridge-cloud");
        assert_eq!(b.protocol, Protocol::V5);
        assert_eq!(b.max_queued_messages, 86_400 * 100);
        assert_eq!(b.validate(), Ok(()));
    }

    #[test]
    fn names() {
        for ok in ["cloud", "a", "Site_17-b", &"x".repeat(64)] {
            assert!(Bridge::valid_name(ok), "{ok}");
        }
        for bad in ["", "a/b", "a b", "a.b", "a+", "é", &"x".repeat(65), "a\"b"] {
            assert!(!Bridge::valid_name(bad), "{bad}");
        }
        assert_eq!(bridge("").validate(), Err(BridgeError::EmptyName));
        assert_eq!(bridge("a/b").validate().unwrap_err().key(), "name");
    }

    #[test]
    fn each_check_names_its_key() {
        let tls_remote = Remote::parse("mqtts://h").unwrap();
        let cases = [
            (bridge("b").client_id(""), "client_id"),
            (
                bridge("b")
                    .protocol(Protocol::V3_1_1)
                    .password(Password::new("p")),
                "password",
            ),
            (
                bridge("b").keep_alive(Duration::from_secs(65_536)),
                "keep_alive",
            ),
            (
                bridge("b").session_expiry(Duration::from_secs(1 << 32)),
                "session_expiry",
            ),
            (
                bridge("b").reconnect(Duration::ZERO, Duration::ZERO),
                "reconnect_min",
            ),
            (
                bridge("b").reconnect(Duration::from_secs(2), Duration::from_secs(1)),
                "reconnect_min",
            ),
            (bridge("b").max_inflight(0), "max_inflight"),
            (bridge("b").max_queued_messages(0), "max_queued_messages"),
            (bridge("b").max_queued_bytes(0), "max_queued_bytes"),
            (bridge("b").state_topic("a/+"), "state_topic"),
            (bridge("b").tls(BridgeTls::new("ca.pem")), "tls"),
            (
                Bridge {
                    remote: tls_remote.clone(),
                    ..bridge("b")
                },
                "tls",
            ),
            (
                Bridge {
                    remote: tls_remote,
                    tls: Some(BridgeTls {
                        cert: Some("c.pem".into()),
                        ..BridgeTls::new("ca.pem")
                    }),
                    ..bridge("b")
                },
                "tls.key",
            ),
            (
                Bridge::new("b", Remote::parse("mqtt://h").unwrap()),
                "forward",
            ),
            (
                bridge("b").subscribe(Rule::new("a", QoS::AtMostOnce).local_prefix("+/")),
                "local_prefix",
            ),
        ];
        for (b, key) in cases {
            let e = b.validate().expect_err(key);
            assert_eq!(e.key(), key, "{e}");
            assert!(e.to_string().contains("\"b\""), "names the bridge: {e}");
        }
        let e = bridge("b")
            .subscribe(Rule::new("a/#/b", QoS::AtMostOnce))
            .validate()
            .unwrap_err();
        assert_eq!(e.rule(), Some((Direction::Subscribe, 0)));
        assert!(e.to_string().contains("subscribe rule 1"), "{e}");
    }

    #[test]
    fn tls_with_a_tls_remote_is_fine() {
        let b = Bridge::new("b", Remote::parse("wss://h/ws").unwrap())
            .tls(BridgeTls::new("ca.pem").client_cert("c.pem", "k.pem"))
            .subscribe(Rule::new("#", QoS::ExactlyOnce));
        assert_eq!(b.validate(), Ok(()));
    }

    #[test]
    fn names_are_unique() {
        assert_eq!(validate_all(&[bridge("a"), bridge("b")]), Ok(()));
        assert_eq!(
            validate_all(&[bridge("a"), bridge("b"), bridge("a")]),
            Err(BridgeError::DuplicateName { name: "a".into() })
        );
    }

    #[test]
    fn the_password_is_not_in_debug_output() {
        let b = bridge("b").username("u").password(Password::new("s3cret"));
        assert!(!format!("{b:?}").contains("s3cret"));
    }
}
