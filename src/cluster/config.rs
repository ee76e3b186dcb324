//! What a node needs to know to join a cluster, and the names it derives
//! from it: plain data, validated here, used by the engine connection at
//! the edge (`net::cluster`).
//!
//! Every name the cluster creates in NATS derives from the cluster name
//! ([`ClusterConfig::name`], default `roost`), so two clusters (or a test
//! run beside a production one) can share a NATS account without touching
//! each other's streams, buckets or subjects:
//!
//! | what | name |
//! |------|------|
//! | QoS 1/2 messages (subjects in the stream) | `<name>.d.<topic levels>` |
//! | QoS 0 messages (core NATS, never stored) | `<name>.v.<topic levels>` |
//! | the message stream | `<name>_messages` |
//! | the session bucket (stream `KV_<name>_sessions`) | `<name>_sessions` |
//! | the retained bucket (stream `KV_<name>_retained`) | `<name>_retained` |
//! | a node's durable consumer | `<name>_<node>` |
//! | a share group's durable consumers (see `cluster::groups`) | `<name>_g_<hash>_<i>` |
//! | a share group's QoS 0 queue group | `<name>_g_<hash>` |
//!
//! Durable and volatile messages sit under different second tokens so the
//! stream, which captures `<name>.d.>`, never stores QoS 0 traffic.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// How a node joins a cluster whose shared state is in NATS JetStream.
///
/// ```
/// let config: roost::ClusterConfig = toml::from_str(r#"
///     servers = ["nats://10.0.0.1:4222", "nats://10.0.0.2:4222"]
///     node = "gw-1"
///     replicas = 3
/// "#).unwrap();
/// config.validate().unwrap();
/// assert_eq!(config.stream(), "roost_messages");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// NATS servers to connect to (`nats://host:port`, `tls://host:port`,
    /// or `host:port`). One is enough: the client learns the others from
    /// the server; more let a node start while one is down. Required.
    pub servers: Vec<String>,
    /// The cluster's name, the root of every NATS name it uses (see the
    /// module docs). Letters, digits, `-` and `_`. Default: `roost`.
    pub name: String,
    /// This node's name, unique in the cluster: it names the node's durable
    /// consumer and its session ownership. Letters, digits, `-` and `_`.
    /// Required.
    pub node: String,
    /// How the node authenticates to NATS. Default: not at all.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credentials: Option<Credentials>,
    /// A PEM file of certificate authorities to trust for the NATS
    /// servers' TLS certificates (instead of the system's roots).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_ca: Option<PathBuf>,
    /// Copies JetStream keeps of each stream and bucket: 1 (no fault
    /// tolerance) or 3 (survives one NATS server down). Default: 1.
    pub replicas: u8,
    /// How long a JetStream request (a durable publish's acknowledgement,
    /// an API call) may take before it fails. Default: 5 s.
    #[serde(with = "crate::config::duration")]
    pub timeout: Duration,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            servers: Vec::new(),
            name: "roost".to_owned(),
            node: String::new(),
            credentials: None,
            tls_ca: None,
            replicas: 1,
            timeout: Duration::from_secs(5),
        }
    }
}

/// How a node authenticates to NATS. Its `Debug` form leaves the secret
/// out, so a logged configuration never shows it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged, deny_unknown_fields)]
pub enum Credentials {
    /// A user name and password (`user = "..."`, `password = "..."`).
    UserPassword {
        /// The NATS user.
        user: String,
        /// Its password.
        password: String,
    },
    /// A token (`token = "..."`).
    Token {
        /// The token.
        token: String,
    },
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::UserPassword { user, .. } => f
                .debug_struct("UserPassword")
                .field("user", user)
                .field("password", &"<redacted>")
                .finish(),
            Credentials::Token { .. } => f
                .debug_struct("Token")
                .field("token", &"<redacted>")
                .finish(),
        }
    }
}

impl Credentials {
    /// The same, with the password or token replaced by `<redacted>`: for
    /// printing a configuration.
    pub fn redacted(&self) -> Credentials {
        match self {
            Credentials::UserPassword { user, .. } => Credentials::UserPassword {
                user: user.clone(),
                password: "<redacted>".into(),
            },
            Credentials::Token { .. } => Credentials::Token {
                token: "<redacted>".into(),
            },
        }
    }
}

/// Why a [`ClusterConfig`] cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClusterConfigError {
    /// `servers` is empty.
    #[error("cluster: no NATS server given (`servers`)")]
    NoServers,
    /// A server entry is empty or holds whitespace or a comma (one URL per
    /// entry).
    #[error("cluster: {0:?} is not a NATS server URL (one `nats://host:port` per entry)")]
    BadServer(String),
    /// `replicas` is not 1 or 3.
    #[error("cluster: replicas must be 1 or 3, not {0}")]
    Replicas(u8),
    /// A name is empty, too long, or has a character other than letters,
    /// digits, `-` and `_`.
    #[error(
        "cluster: {what} {value:?} is not a valid name (1 to {MAX_NAME} letters, digits, `-` or `_`)"
    )]
    Name {
        /// Which name (`cluster name`, `node name`).
        what: &'static str,
        /// The name given.
        value: String,
    },
    /// `timeout` is zero.
    #[error("cluster: timeout must be more than zero")]
    Timeout,
}

/// The longest cluster or node name. JetStream names (streams, consumers)
/// are file names on the NATS servers; kept well below the 255 bytes a
/// file system allows, with room for the suffixes.
pub(crate) const MAX_NAME: usize = 64;

/// A NATS token JetStream also accepts as (part of) a stream, bucket or
/// consumer name: no `.`, `*`, `>`, whitespace or path separators.
fn valid_name(s: &str) -> bool {
    (1..=MAX_NAME).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl ClusterConfig {
    /// Checks what can be checked without a network.
    pub fn validate(&self) -> Result<(), ClusterConfigError> {
        if self.servers.is_empty() {
            return Err(ClusterConfigError::NoServers);
        }
        if let Some(bad) = self
            .servers
            .iter()
            .find(|s| s.is_empty() || s.contains(|c: char| c.is_whitespace() || c == ','))
        {
            return Err(ClusterConfigError::BadServer(bad.clone()));
        }
        if !matches!(self.replicas, 1 | 3) {
            return Err(ClusterConfigError::Replicas(self.replicas));
        }
        for (what, value) in [("cluster name", &self.name), ("node name", &self.node)] {
            if !valid_name(value) {
                return Err(ClusterConfigError::Name {
                    what,
                    value: value.clone(),
                });
            }
        }
        if self.timeout.is_zero() {
            return Err(ClusterConfigError::Timeout);
        }
        Ok(())
    }

    /// The subject prefix of QoS 1/2 messages (`<name>.d`): what the
    /// message stream stores.
    pub fn durable_prefix(&self) -> String {
        format!("{}.d", self.name)
    }

    /// The subject prefix of QoS 0 messages (`<name>.v`), which only core
    /// NATS carries.
    pub fn volatile_prefix(&self) -> String {
        format!("{}.v", self.name)
    }

    /// The message stream's name (`<name>_messages`).
    pub fn stream(&self) -> String {
        format!("{}_messages", self.name)
    }

    /// The session bucket's name (`<name>_sessions`).
    pub fn sessions_bucket(&self) -> String {
        format!("{}_sessions", self.name)
    }

    /// The retained message bucket's name (`<name>_retained`).
    pub fn retained_bucket(&self) -> String {
        format!("{}_retained", self.name)
    }

    /// This node's durable consumer on the message stream
    /// (`<name>_<node>`).
    pub fn consumer(&self) -> String {
        format!("{}_{}", self.name, self.node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> ClusterConfig {
        ClusterConfig {
            servers: vec!["nats://127.0.0.1:4222".into()],
            node: "gw-1".into(),
            ..ClusterConfig::default()
        }
    }

    #[test]
    fn a_complete_config_is_valid() {
        valid().validate().unwrap();
        ClusterConfig {
            replicas: 3,
            name: "site_A-2".into(),
            ..valid()
        }
        .validate()
        .unwrap();
    }

    #[test]
    fn servers_are_required_one_url_each() {
        let c = ClusterConfig {
            servers: vec![],
            ..valid()
        };
        assert_eq!(c.validate(), Err(ClusterConfigError::NoServers));
        for bad in ["", "nats://a:1,nats://b:2", "nats://a :1"] {
            let c = ClusterConfig {
                servers: vec!["nats://ok:4222".into(), bad.into()],
                ..valid()
            };
            assert_eq!(
                c.validate(),
                Err(ClusterConfigError::BadServer(bad.into())),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn replicas_are_one_or_three() {
        for (replicas, ok) in [(0, false), (1, true), (2, false), (3, true), (5, false)] {
            let c = ClusterConfig {
                replicas,
                ..valid()
            };
            let want = if ok {
                Ok(())
            } else {
                Err(ClusterConfigError::Replicas(replicas))
            };
            assert_eq!(c.validate(), want, "{replicas}");
        }
    }

    #[test]
    fn names_are_nats_tokens() {
        let long = "n".repeat(MAX_NAME + 1);
        for bad in [
            "",
            "a.b",
            "a*",
            ">",
            "a b",
            "a/b",
            "é",
            "$SYS",
            long.as_str(),
        ] {
            let c = ClusterConfig {
                node: bad.into(),
                ..valid()
            };
            assert_eq!(
                c.validate(),
                Err(ClusterConfigError::Name {
                    what: "node name",
                    value: bad.into()
                }),
                "{bad:?}"
            );
            let c = ClusterConfig {
                name: bad.into(),
                ..valid()
            };
            assert!(
                matches!(
                    c.validate(),
                    Err(ClusterConfigError::Name {
                        what: "cluster name",
                        ..
                    })
                ),
                "{bad:?}"
            );
        }
        let c = ClusterConfig {
            node: "n".repeat(MAX_NAME),
            ..valid()
        };
        c.validate().unwrap();
    }

    #[test]
    fn a_zero_timeout_is_refused() {
        let c = ClusterConfig {
            timeout: Duration::ZERO,
            ..valid()
        };
        assert_eq!(c.validate(), Err(ClusterConfigError::Timeout));
    }

    #[test]
    fn names_derive_from_the_cluster_name() {
        let c = ClusterConfig {
            name: "site1".into(),
            ..valid()
        };
        assert_eq!(c.durable_prefix(), "site1.d");
        assert_eq!(c.volatile_prefix(), "site1.v");
        assert_eq!(c.stream(), "site1_messages");
        assert_eq!(c.sessions_bucket(), "site1_sessions");
        assert_eq!(c.retained_bucket(), "site1_retained");
        assert_eq!(c.consumer(), "site1_gw-1");
        // The durable prefix's subjects are not the volatile prefix's.
        assert!(!format!("{}.x", c.volatile_prefix()).starts_with(&c.durable_prefix()));
    }

    #[test]
    fn reads_from_toml_with_defaults_and_credentials() {
        let c: ClusterConfig = toml::from_str(
            r#"
            servers = ["nats://a:4222"]
            node = "n1"
            credentials = { user = "u", password = "p" }
            timeout = "2s"
            "#,
        )
        .unwrap();
        assert_eq!(c.name, "roost");
        assert_eq!(c.replicas, 1);
        assert_eq!(c.timeout, Duration::from_secs(2));
        assert_eq!(
            c.credentials,
            Some(Credentials::UserPassword {
                user: "u".into(),
                password: "p".into()
            })
        );
        let c: ClusterConfig =
            toml::from_str("servers = [\"a:1\"]\nnode = \"n\"\ncredentials = { token = \"t\" }")
                .unwrap();
        assert_eq!(
            c.credentials,
            Some(Credentials::Token { token: "t".into() })
        );
        assert!(toml::from_str::<ClusterConfig>("servers = []\nreplica = 3").is_err());
    }
}
