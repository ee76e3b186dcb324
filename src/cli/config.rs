//! The configuration file (`roost --config roost.toml`), the built-in
//! defaults, and how command-line flags override both.
//!
//! The file holds the library's [`Options`] at its top level
//! (`sys_interval`, `[durability]`, `[capabilities]`, `[limits]`) beside
//! the binary's own tables (`[[listener]]`, `[store]`, `[auth]`, `[log]`).
//! `deploy/roost.toml` documents every key with its default.

use super::bind::BindAddr;
use super::error::{parse_error, ConfigError, Place};
use roost::bridge::{Bridge, BridgeTls, Password, Protocol, Remote, Rule};
use roost::codec::QoS;
use roost::{Capabilities, Durability, Limits, Memory, Options};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Everything the binary can be told, as the file is written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct Config {
    /// How often `$SYS/broker/...` is published; `None` (`"off"`) for never.
    #[serde(with = "roost::duration::optional")]
    pub sys_interval: Option<Duration>,
    /// Threads of the runtime that serves connections; `None` is one per
    /// CPU (or `TOKIO_WORKER_THREADS`).
    #[serde(deserialize_with = "workers", skip_serializing_if = "Option::is_none")]
    pub workers: Option<NonZeroUsize>,
    /// Where sessions, queues and retained messages are kept.
    pub store: StoreConfig,
    /// When acknowledgements leave relative to storage commits.
    pub durability: Durability,
    /// Who may connect, publish and subscribe.
    pub auth: AuthConfig,
    /// Logging to stderr.
    pub log: LogConfig,
    /// Protocol features offered to clients.
    pub capabilities: Capabilities,
    /// Resource limits.
    pub limits: Limits,
    /// Memory the caches may use.
    pub memory: Memory,
    /// The listeners; empty means the built-in defaults.
    #[serde(rename = "listener", skip_serializing_if = "Vec::is_empty")]
    pub listeners: Vec<ListenerConfig>,
    /// Bridges to upstream brokers (`[[bridges]]`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub bridges: Vec<BridgeConfig>,
    /// The cluster this node joins (`[cluster]`, feature `cluster`).
    #[cfg(feature = "cluster")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<roost::ClusterConfig>,
    /// `[cluster]` in a build without the feature: kept to be refused by
    /// [`check`] with a message that says how to get it, rather than as an
    /// unknown key.
    #[cfg(not(feature = "cluster"))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterNotBuilt>,
}

/// A `[cluster]` table read by a build without the `cluster` feature:
/// its keys are ignored, its presence refused by [`check`].
#[cfg(not(feature = "cluster"))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub(crate) struct ClusterNotBuilt {}

#[cfg(not(feature = "cluster"))]
impl<'de> Deserialize<'de> for ClusterNotBuilt {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        serde::de::IgnoredAny::deserialize(d)?;
        Ok(ClusterNotBuilt {})
    }
}

impl Default for Config {
    fn default() -> Self {
        let opts = Options::default();
        Config {
            sys_interval: opts.sys_interval,
            workers: None,
            store: StoreConfig::default(),
            durability: opts.durability,
            auth: AuthConfig::default(),
            log: LogConfig::default(),
            capabilities: opts.capabilities,
            limits: opts.limits,
            memory: opts.memory,
            listeners: Vec::new(),
            bridges: Vec::new(),
            cluster: None,
        }
    }
}

impl Config {
    /// The library's options.
    pub(crate) fn options(&self) -> Options {
        Options {
            capabilities: self.capabilities.clone(),
            limits: self.limits.clone(),
            sys_interval: self.sys_interval,
            durability: self.durability,
            memory: self.memory.clone(),
        }
    }
}

/// Most runtime threads accepted: more is a typo, not a machine.
const MAX_WORKERS: usize = 1024;

/// `workers`: 1 to [`MAX_WORKERS`].
fn workers<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<NonZeroUsize>, D::Error> {
    let n = usize::deserialize(d)?;
    check_workers(n).map(Some).map_err(serde::de::Error::custom)
}

/// A worker thread count, or why it is not one.
pub(crate) fn check_workers(n: usize) -> Result<NonZeroUsize, String> {
    NonZeroUsize::new(n)
        .filter(|n| n.get() <= MAX_WORKERS)
        .ok_or_else(|| format!("expected 1 to {MAX_WORKERS} worker threads, found {n}"))
}

/// `[store]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct StoreConfig {
    /// `memory`, `sled` or `redb`. Default: `redb`.
    pub backend: StoreKind,
    /// Directory of the persistent store. Default: `./data`.
    pub data_dir: PathBuf,
    /// The persistent backend's page cache (sled and redb would take
    /// 1 GiB each). Default: 16 MiB.
    #[serde(with = "roost::size")]
    pub cache: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            backend: StoreKind::Redb,
            data_dir: PathBuf::from("./data"),
            cache: roost::storage::DEFAULT_CACHE_BYTES,
        }
    }
}

/// The storage backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub(crate) enum StoreKind {
    /// In memory: nothing survives a restart.
    Memory,
    /// sled, in the data directory (cargo feature `sled`).
    Sled,
    /// redb, in the data directory (cargo feature `redb`, the default).
    Redb,
}

/// `[auth]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct AuthConfig {
    /// The auth and ACL ledger file. Default: none (anyone may connect,
    /// publish and subscribe).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ledger: Option<PathBuf>,
    /// On SIGHUP, disconnect the clients of users the new ledger disables
    /// or no longer has (their sessions stay, for no one else to resume).
    /// Default: true; false keeps them connected until they reconnect, as
    /// Mosquitto does with its password file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disconnect_on_reload: Option<bool>,
    /// Where `ledger` was set, for messages.
    #[serde(skip)]
    pub place: Option<Place>,
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct LogConfig {
    /// The level of every target. Default: `info`.
    pub level: LogLevel,
    /// A `RUST_LOG`-style filter (`"info,roost=debug"`); replaces `level`
    /// when set. The `RUST_LOG` environment variable replaces both.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    /// `text` or `json` (one JSON object a line). Default: `text`.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: LogLevel::Info,
            filter: None,
            format: LogFormat::Text,
        }
    }
}

/// A log level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[allow(missing_docs)]
pub(crate) enum LogLevel {
    Off,
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    /// As a filter directive.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            LogLevel::Off => "off",
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub(crate) enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object a line.
    Json,
}

/// What a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum ListenerKind {
    /// MQTT over TCP.
    Tcp,
    /// MQTT over TLS.
    Tls,
    /// MQTT over WebSocket.
    Ws,
    /// MQTT over WebSocket over TLS.
    Wss,
    /// The HTTP stats endpoint.
    Http,
    /// The HTTP stats endpoint over TLS.
    Https,
}

impl ListenerKind {
    /// Every kind, in the order the start-up lines list them.
    pub(crate) const ALL: [ListenerKind; 6] = [
        ListenerKind::Tcp,
        ListenerKind::Tls,
        ListenerKind::Ws,
        ListenerKind::Wss,
        ListenerKind::Http,
        ListenerKind::Https,
    ];

    /// The name in a file and the command-line flag without its dashes.
    pub(crate) fn name(self) -> &'static str {
        match self {
            ListenerKind::Tcp => "tcp",
            ListenerKind::Tls => "tls",
            ListenerKind::Ws => "ws",
            ListenerKind::Wss => "wss",
            ListenerKind::Http => "http",
            ListenerKind::Https => "https",
        }
    }

    /// What the start-up line calls it: `mqtt tcp`, `mqtts tls`,
    /// `ws websocket`, `wss websocket`, `http stats`, `https stats`.
    pub(crate) fn describe(self) -> &'static str {
        match self {
            ListenerKind::Tcp => "mqtt tcp",
            ListenerKind::Tls => "mqtts tls",
            ListenerKind::Ws => "ws websocket",
            ListenerKind::Wss => "wss websocket",
            ListenerKind::Http => "http stats",
            ListenerKind::Https => "https stats",
        }
    }

    /// Whether it needs a certificate.
    pub(crate) fn is_tls(self) -> bool {
        matches!(
            self,
            ListenerKind::Tls | ListenerKind::Wss | ListenerKind::Https
        )
    }

    /// Whether it speaks WebSocket.
    pub(crate) fn is_ws(self) -> bool {
        matches!(self, ListenerKind::Ws | ListenerKind::Wss)
    }

    /// The cargo feature that provides it, if the binary lacks it.
    pub(crate) fn missing_feature(self) -> Option<&'static str> {
        let tls = cfg!(feature = "tls");
        let ws = cfg!(feature = "ws");
        let http = cfg!(feature = "http");
        match self {
            ListenerKind::Tcp => None,
            ListenerKind::Tls => (!tls).then_some("tls"),
            ListenerKind::Ws => (!ws).then_some("ws"),
            ListenerKind::Wss => (!ws).then_some("ws").or((!tls).then_some("tls")),
            ListenerKind::Http => (!http).then_some("http"),
            ListenerKind::Https => (!http).then_some("http").or((!tls).then_some("tls")),
        }
    }
}

/// How client certificates are treated on a TLS listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub(crate) enum ClientAuthMode {
    /// Not asked for.
    None,
    /// Verified when presented.
    Optional,
    /// Required.
    Required,
}

/// Where the MQTT user name comes from on a TLS listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum UsernameSource {
    /// The CONNECT packet.
    Connect,
    /// The client certificate's subject Common Name.
    CommonName,
    /// The client certificate's first DNS, e-mail or URI Subject
    /// Alternative Name.
    SubjectAltName,
}

/// Where the client id comes from on a TLS listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum ClientIdSource {
    /// The CONNECT packet.
    Connect,
    /// The client certificate's subject Common Name.
    CommonName,
    /// The client certificate's first DNS, e-mail or URI Subject
    /// Alternative Name.
    SubjectAltName,
}

/// One `[[listener]]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListenerConfig {
    /// `tcp`, `tls`, `ws`, `wss`, `http` or `https`.
    #[serde(rename = "type")]
    pub kind: ListenerKind,
    /// IP address and port (port 0 picks a free one), or a host name and
    /// port, resolved now to every address it names.
    pub bind: BindAddr,
    /// PEM certificate chain (tls, wss, https).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// PEM private key (tls, wss, https).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// PEM CA certificates that client certificates must chain to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<PathBuf>,
    /// `none`, `optional` or `required`; default `required` with a
    /// `client_ca`, else `none`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_auth: Option<ClientAuthMode>,
    /// PEM certificate revocation lists for client certificates; read
    /// again on SIGHUP and when the file changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crl: Option<PathBuf>,
    /// `connect`, `common-name` or `subject-alt-name`. Default: `connect`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username_from: Option<UsernameSource>,
    /// `connect`, `common-name` or `subject-alt-name`. Default: `connect`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id_from: Option<ClientIdSource>,
    /// Sessions kept for resumption by session id (tls, wss, https); 0
    /// keeps none. Default: 20000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_cache: Option<usize>,
    /// Whether clients get session tickets (tls, wss, https). Default:
    /// true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_tickets: Option<bool>,
    /// Most TLS handshakes in progress at once (tls, wss, https); the rest
    /// wait their turn. Default: 64 per core.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handshakes_in_progress: Option<usize>,
    /// WebSocket upgrade path (ws, wss). Default: `/mqtt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// WebSocket subprotocols, in order of preference (ws, wss).
    /// Default: `["mqtt", "mqttv3.1"]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subprotocols: Option<Vec<String>>,
    /// A file holding the admin API's bearer token (http, https; white
    /// space around it is ignored). Without it or `admin_token_env` the
    /// listener serves no admin API. The token itself never appears in the
    /// configuration (as bridges' passwords), so `--print-config` cannot
    /// leak it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_token_file: Option<PathBuf>,
    /// An environment variable holding the admin API's bearer token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_token_env: Option<String>,
    /// Where it was configured, for messages.
    #[serde(skip, default = "Place::builtin")]
    pub place: Place,
}

impl ListenerConfig {
    /// A listener of `kind` on `bind` with nothing else set.
    pub(crate) fn new(kind: ListenerKind, bind: BindAddr, place: Place) -> Self {
        ListenerConfig {
            kind,
            bind,
            cert: None,
            key: None,
            client_ca: None,
            client_auth: None,
            crl: None,
            username_from: None,
            client_id_from: None,
            session_cache: None,
            session_tickets: None,
            handshakes_in_progress: None,
            path: None,
            subprotocols: None,
            admin_token_file: None,
            admin_token_env: None,
            place,
        }
    }

    /// How the messages name it: `tls listener 0.0.0.0:8883`.
    pub(crate) fn label(&self) -> String {
        format!("{} listener {}", self.kind.name(), self.bind)
    }
}

/// The listeners started when neither the file nor the command line
/// names one: MQTT on 1883, WebSocket on 1882, HTTP stats on 8080 of
/// loopback only (the counters are the operator's, not the network's: a
/// file or `--http 0.0.0.0:8080` opens it up, as Mosquitto 2.0 asks for
/// its listeners).
pub(crate) fn default_listeners() -> Vec<ListenerConfig> {
    let any = |port| BindAddr::from(SocketAddr::from(([0, 0, 0, 0], port)));
    let loopback = |port| BindAddr::from(SocketAddr::from(([127, 0, 0, 1], port)));
    vec![
        ListenerConfig::new(ListenerKind::Tcp, any(1883), Place::builtin()),
        ListenerConfig::new(ListenerKind::Ws, any(1882), Place::builtin()),
        ListenerConfig::new(ListenerKind::Http, loopback(8080), Place::builtin()),
    ]
}

/// One `[[bridges]]`: [`roost::bridge::Bridge`] as the file writes it,
/// with the password's source instead of the password.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BridgeConfig {
    /// Names the bridge in logs, stats and the store.
    pub name: String,
    /// `mqtt://`, `mqtts://`, `ws://` or `wss://` address of the remote.
    pub remote: Remote,
    /// `"3.1.1"` or `"5"`. Default: `"5"`.
    #[serde(default)]
    pub protocol: Protocol,
    /// Default: `roost-bridge-<name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// The user name at the remote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// A file holding the password (one trailing newline is ignored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// An environment variable holding the password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_env: Option<String>,
    /// Keep alive. Default: 30 s.
    #[serde(default = "keep_alive", with = "roost::duration")]
    pub keep_alive: Duration,
    /// Session expiry at the remote. Default: 7 days.
    #[serde(default = "session_expiry", with = "roost::duration")]
    pub session_expiry: Duration,
    /// First reconnect delay. Default: 1 s.
    #[serde(default = "reconnect_min", with = "roost::duration")]
    pub reconnect_min: Duration,
    /// Longest reconnect delay. Default: 60 s.
    #[serde(default = "reconnect_max", with = "roost::duration")]
    pub reconnect_max: Duration,
    /// Messages in flight to the remote. Default: 100 with 5.0, 20 with
    /// 3.1.1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_inflight: Option<u16>,
    /// Messages queued for the remote. Default: 8,640,000.
    #[serde(default = "max_queued_messages")]
    pub max_queued_messages: u64,
    /// Bytes queued for the remote. Default: 1 GiB.
    #[serde(default = "max_queued_bytes", with = "roost::size")]
    pub max_queued_bytes: usize,
    /// Retained `1`/`0` connection state at the remote. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_topic: Option<String>,
    /// `[bridges.tls]`, for mqtts:// and wss://.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<BridgeTlsConfig>,
    /// `[[bridges.forward]]`: local to remote.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub forward: Vec<RuleConfig>,
    /// `[[bridges.subscribe]]`: remote to local.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subscribe: Vec<RuleConfig>,
    /// Lines of the bridge (key `""`) and of its keys (`remote`,
    /// `tls.ca`, `forward.0.filter`, ...), for messages.
    #[serde(skip)]
    pub lines: BTreeMap<String, usize>,
    /// The file it came from, for messages.
    #[serde(skip, default = "Place::builtin")]
    pub place: Place,
}

fn keep_alive() -> Duration {
    Bridge::DEFAULT_KEEP_ALIVE
}
fn session_expiry() -> Duration {
    Bridge::DEFAULT_SESSION_EXPIRY
}
fn reconnect_min() -> Duration {
    Bridge::DEFAULT_RECONNECT_MIN
}
fn reconnect_max() -> Duration {
    Bridge::DEFAULT_RECONNECT_MAX
}
fn max_queued_messages() -> u64 {
    Bridge::DEFAULT_MAX_QUEUED_MESSAGES
}
fn max_queued_bytes() -> usize {
    Bridge::DEFAULT_MAX_QUEUED_BYTES
}

/// `[bridges.tls]`: PEM files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BridgeTlsConfig {
    /// CA certificates the remote's certificate must chain to.
    pub ca: PathBuf,
    /// Client certificate chain (with `key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// Client private key (with `cert`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// Name expected in the remote's certificate. Default: its host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
}

/// One `[[bridges.forward]]` or `[[bridges.subscribe]]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RuleConfig {
    /// Topic filter, without the prefixes.
    pub filter: String,
    /// 0, 1 or 2: the highest QoS carried.
    #[serde(with = "roost::qos")]
    pub qos: QoS,
    /// Prefix of the topic here. Default: empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub local_prefix: String,
    /// Prefix of the topic at the remote. Default: empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub remote_prefix: String,
}

impl RuleConfig {
    fn rule(&self) -> Rule {
        Rule::new(self.filter.clone(), self.qos)
            .local_prefix(self.local_prefix.clone())
            .remote_prefix(self.remote_prefix.clone())
    }
}

impl BridgeConfig {
    /// The library's bridge, with `password` (read by the caller from
    /// `password_file` or `password_env`).
    pub(crate) fn bridge(&self, password: Option<Password>) -> Bridge {
        let mut b = Bridge::new(self.name.clone(), self.remote.clone())
            .protocol(self.protocol)
            .keep_alive(self.keep_alive)
            .session_expiry(self.session_expiry)
            .reconnect(self.reconnect_min, self.reconnect_max)
            .max_queued_messages(self.max_queued_messages)
            .max_queued_bytes(self.max_queued_bytes);
        if let Some(n) = self.max_inflight {
            b = b.max_inflight(n);
        }
        if let Some(id) = &self.client_id {
            b = b.client_id(id.clone());
        }
        if let Some(user) = &self.username {
            b = b.username(user.clone());
        }
        if let Some(p) = password {
            b = b.password(p);
        }
        if let Some(topic) = &self.state_topic {
            b = b.state_topic(topic.clone());
        }
        if let Some(t) = &self.tls {
            let mut tls = BridgeTls::new(t.ca.clone());
            // The library checks that cert and key come together.
            tls.cert.clone_from(&t.cert);
            tls.key.clone_from(&t.key);
            tls.server_name.clone_from(&t.server_name);
            b = b.tls(tls);
        }
        for r in &self.forward {
            b = b.forward(r.rule());
        }
        for r in &self.subscribe {
            b = b.subscribe(r.rule());
        }
        b
    }

    /// Where `key` (as [`roost::bridge::BridgeError::key`] names it, or
    /// `forward.0.filter`) was set: its line, else the nearest enclosing
    /// table's, else the bridge's.
    pub(crate) fn place_of(&self, key: &str) -> Place {
        let mut key = key;
        loop {
            if let Some(line) = self.lines.get(key) {
                return self.at(*line);
            }
            match key.rsplit_once('.') {
                Some((parent, _)) => key = parent,
                None => break,
            }
        }
        match self.lines.get("") {
            Some(line) => self.at(*line),
            None => self.place.clone(),
        }
    }

    fn at(&self, line: usize) -> Place {
        match &self.place {
            Place::File { path, .. } => Place::file(path, line),
            other => other.clone(),
        }
    }

    /// How messages name it: `bridge "cloud"`.
    pub(crate) fn label(&self) -> String {
        format!("bridge {:?}", self.name)
    }
}

/// Where some keys sit in the file, found in a second, lenient pass, so
/// that checks made after parsing can still name a line.
#[derive(Default, Deserialize)]
#[serde(default)]
struct Spans {
    listener: Vec<toml::Spanned<serde::de::IgnoredAny>>,
    auth: AuthSpans,
    bridges: Vec<toml::Spanned<BTreeMap<String, toml::Spanned<serde::de::IgnoredAny>>>>,
}

/// The keys of a table, with where each one's value is.
type KeySpans = BTreeMap<String, toml::Spanned<serde::de::IgnoredAny>>;

/// The tables inside a `[[bridges]]`, in a third lenient pass (the second
/// one sees only their spans as wholes).
#[derive(Default, Deserialize)]
#[serde(default)]
struct NestedSpans {
    bridges: Vec<BridgeNestedSpans>,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct BridgeNestedSpans {
    tls: KeySpans,
    forward: Vec<KeySpans>,
    subscribe: Vec<KeySpans>,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct AuthSpans {
    ledger: Option<toml::Spanned<serde::de::IgnoredAny>>,
}

/// Reads and parses a configuration file. Unknown keys, wrong types and
/// bad values are errors naming the file, line and key.
pub(crate) fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Unreadable {
        path: path.to_owned(),
        source,
    })?;
    parse(path, &text)
}

/// Parses the text of the file at `path`.
pub(crate) fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
    let mut config: Config = toml::from_str(text).map_err(|e| parse_error(path, text, &e))?;
    // The first pass succeeded, so this one (which accepts anything the
    // first does) only fails on something unexpected; lines are a nicety.
    let spans: Spans = toml::from_str(text).unwrap_or_default();
    let line = |span: std::ops::Range<usize>| super::error::line_col(text, span.start).0;
    for (l, s) in config.listeners.iter_mut().zip(&spans.listener) {
        l.place = Place::file(path, line(s.span()));
    }
    let nested: NestedSpans = toml::from_str(text).unwrap_or_default();
    let empty = BridgeNestedSpans::default();
    for (i, b) in config.bridges.iter_mut().enumerate() {
        b.place = Place::File {
            path: path.to_owned(),
            line: None,
        };
        if let Some(s) = spans.bridges.get(i) {
            b.lines.insert(String::new(), line(s.span()));
            for (key, value) in s.get_ref() {
                b.lines.insert(key.clone(), line(value.span()));
            }
        }
        let n = nested.bridges.get(i).unwrap_or(&empty);
        let tables = n
            .forward
            .iter()
            .enumerate()
            .map(|(j, t)| (format!("forward.{j}"), t));
        let tables = tables.chain(
            n.subscribe
                .iter()
                .enumerate()
                .map(|(j, t)| (format!("subscribe.{j}"), t)),
        );
        for (prefix, table) in std::iter::once(("tls".to_string(), &n.tls)).chain(tables) {
            // A rule's own line: that of its first key.
            if let Some(first) = table.values().map(|v| line(v.span())).min() {
                b.lines.entry(prefix.clone()).or_insert(first);
            }
            for (key, value) in table {
                b.lines
                    .insert(format!("{prefix}.{key}"), line(value.span()));
            }
        }
    }
    if config.auth.ledger.is_some() {
        config.auth.place = Some(match spans.auth.ledger {
            Some(s) => Place::file(path, line(s.span())),
            None => Place::File {
                path: path.to_owned(),
                line: None,
            },
        });
    }
    Ok(config)
}

/// Checks what parsing cannot: settings that only make sense together.
/// Reads no file.
pub(crate) fn check(config: &Config) -> Result<(), ConfigError> {
    if config.listeners.is_empty() {
        return Err(ConfigError::invalid(
            Place::Builtin,
            "no listener is configured (every kind was set to `none`)",
        ));
    }
    for l in &config.listeners {
        let fail = |message: String| {
            Err(ConfigError::invalid(
                l.place.clone(),
                format!("{}: {message}", l.label()),
            ))
        };
        let tls_only = [
            ("cert", l.cert.is_some()),
            ("key", l.key.is_some()),
            ("client_ca", l.client_ca.is_some()),
            ("client_auth", l.client_auth.is_some()),
            ("crl", l.crl.is_some()),
            ("username_from", l.username_from.is_some()),
            ("client_id_from", l.client_id_from.is_some()),
            ("session_cache", l.session_cache.is_some()),
            ("session_tickets", l.session_tickets.is_some()),
            ("handshakes_in_progress", l.handshakes_in_progress.is_some()),
        ];
        if l.kind.is_tls() {
            let what = match (&l.cert, &l.key) {
                (Some(_), Some(_)) => None,
                (None, Some(_)) => Some("cert"),
                (Some(_), None) => Some("key"),
                (None, None) => Some("cert and key"),
            };
            if let Some(what) = what {
                return fail(format!(
                    "needs {what} (in the file, or --cert and --key on the command line)"
                ));
            }
            let auth = l.client_auth.unwrap_or(ClientAuthMode::None);
            let asks = l.client_ca.is_some() && l.client_auth != Some(ClientAuthMode::None);
            if l.crl.is_some() && !asks {
                return fail(
                    "crl needs client certificates (client_ca, and client_auth \
                     \"optional\" or \"required\")"
                        .into(),
                );
            }
            if auth != ClientAuthMode::None && l.client_ca.is_none() {
                return fail(format!(
                    "client_auth = \"{}\" needs client_ca",
                    if auth == ClientAuthMode::Optional {
                        "optional"
                    } else {
                        "required"
                    }
                ));
            }
            let certificates = l.client_ca.is_some() && l.client_auth != Some(ClientAuthMode::None);
            let from_certificate = l
                .client_id_from
                .is_some_and(|from| from != ClientIdSource::Connect);
            if from_certificate && !certificates {
                // Every client would be refused: none has a certificate.
                return fail(
                    "client_id_from takes the client id from client certificates, which \
                     need client_ca (and client_auth other than \"none\")"
                        .into(),
                );
            }
        } else if let Some((key, _)) = tls_only.iter().find(|(_, set)| *set) {
            return fail(format!(
                "{key} applies only to tls, wss and https listeners"
            ));
        }
        let http = matches!(l.kind, ListenerKind::Http | ListenerKind::Https);
        match (&l.admin_token_file, &l.admin_token_env) {
            (Some(_), Some(_)) => {
                return fail("give admin_token_file or admin_token_env, not both".into())
            }
            (Some(_), None) | (None, Some(_)) if !http => {
                return fail(
                    "admin_token_file and admin_token_env apply only to http and https listeners"
                        .into(),
                )
            }
            _ => {}
        }
        if l.kind.is_ws() {
            if let Some(path) = &l.path {
                if !path.starts_with('/') {
                    return fail(format!("path {path:?} must start with \"/\""));
                }
            }
        } else if l.path.is_some() || l.subprotocols.is_some() {
            let key = if l.path.is_some() {
                "path"
            } else {
                "subprotocols"
            };
            return fail(format!("{key} applies only to ws and wss listeners"));
        }
    }
    for (i, a) in config.listeners.iter().enumerate() {
        let twice = config.listeners[..i]
            .iter()
            .find_map(|b| a.bind.overlaps(&b.bind));
        if let Some(addr) = twice {
            return Err(ConfigError::invalid(
                a.place.clone(),
                format!("{}: another listener already uses {addr}", a.label()),
            ));
        }
    }
    check_bridges(config)?;
    check_cluster(config)?;
    if let Some(filter) = &config.log.filter {
        if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(filter) {
            return Err(ConfigError::invalid(
                Place::Key("log.filter"),
                format!("not a valid filter {filter:?}: {e}"),
            ));
        }
    }
    Ok(())
}

/// Checks `[cluster]` (with `--cluster`/`--cluster-node` applied) as
/// the library would: servers, names, replicas.
fn check_cluster(config: &Config) -> Result<(), ConfigError> {
    let Some(cluster) = &config.cluster else {
        return Ok(());
    };
    #[cfg(feature = "cluster")]
    {
        cluster
            .validate()
            .map_err(|e| ConfigError::invalid(Place::Key("cluster"), e))
    }
    #[cfg(not(feature = "cluster"))]
    {
        let _ = cluster;
        Err(ConfigError::invalid(
            Place::Key("cluster"),
            "this roost was built without the `cluster` feature \
             (rebuild with `cargo build --features cluster`)",
        ))
    }
}

/// Checks the bridges as the library would run them, and that their names
/// differ. Reads no file: a password source stands in for the password.
fn check_bridges(config: &Config) -> Result<(), ConfigError> {
    for (i, b) in config.bridges.iter().enumerate() {
        if b.password_file.is_some() && b.password_env.is_some() {
            return Err(ConfigError::invalid(
                b.place_of("password_env"),
                format!(
                    "key \"password_env\" in [[bridges]]: {}: password_file and password_env \
                     cannot both be set",
                    b.label()
                ),
            ));
        }
        let stand_in = (b.password_file.is_some() || b.password_env.is_some())
            .then(|| Password::new(Vec::new()));
        if let Err(e) = b.bridge(stand_in).validate() {
            let (path, table, key) = match (e.rule(), e.key()) {
                (Some((direction, index)), key) => (
                    format!("{direction}.{index}.{key}"),
                    format!("[[bridges.{direction}]]"),
                    key,
                ),
                (None, "password") if b.password_env.is_some() => {
                    ("password_env".into(), "[[bridges]]".into(), "password_env")
                }
                (None, "password") => (
                    "password_file".into(),
                    "[[bridges]]".into(),
                    "password_file",
                ),
                (None, key) => (key.into(), "[[bridges]]".into(), key),
            };
            return Err(ConfigError::invalid(
                b.place_of(&path),
                format!("key {key:?} in {table}: {e}"),
            ));
        }
        if config.bridges[..i].iter().any(|a| a.name == b.name) {
            return Err(ConfigError::invalid(
                b.place_of("name"),
                format!(
                    "key \"name\" in [[bridges]]: {}",
                    roost::bridge::BridgeError::DuplicateName {
                        name: b.name.clone()
                    }
                ),
            ));
        }
    }
    Ok(())
}
