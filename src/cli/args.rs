//! The command line.

use super::bind::BindAddr;
use super::config::{
    check, check_workers, default_listeners, ClientAuthMode, ClientIdSource, Config,
    ListenerConfig, ListenerKind, LogFormat, StoreKind, UsernameSource,
};
use super::error::{ConfigError, Place};
use clap::{Parser, Subcommand};
use std::num::NonZeroUsize;
use std::path::PathBuf;

const ABOUT: &str = "roost: an embeddable, persistent MQTT 3.1/3.1.1/5.0 broker";

const LONG_ABOUT: &str = "\
roost: an embeddable, persistent MQTT 3.1/3.1.1/5.0 broker.

With no arguments it serves MQTT over TCP on 0.0.0.0:1883, MQTT over
WebSocket on 0.0.0.0:1882 (path /mqtt) and HTTP stats on 127.0.0.1:8080,
and keeps sessions and messages in a redb store in ./data.

Settings come from the built-in defaults, then the --config file, then
these flags: each later one overrides the earlier. Listeners: a listener
flag (--tcp, --tls, --ws, --wss, --http, --https) replaces the listeners
of its own kind, and `--KIND none` removes them; the default listeners
are used only when neither the file nor the command line names any. So
`roost --tcp 127.0.0.1:1884` serves MQTT on that address and nothing
else. Each listener flag may be repeated.";

const AFTER_HELP: &str = "\
Examples:
  roost                                   the defaults (TCP 1883, WebSocket 1882, HTTP 8080, ./data)
  roost --config /etc/roost/roost.toml    everything from a file (see deploy/roost.toml)
  roost --tcp 127.0.0.1:1883 --store memory
  roost --tcp 0.0.0.0:1883 --tls 0.0.0.0:8883 --cert server.pem --key server.key
  roost --tls 0.0.0.0:8883 --cert server.pem --key server.key --client-ca ca.pem \\
        --username-from common-name --client-id-from common-name
                                          devices known by their certificates alone
  roost passwd --file users.toml alice    add a user to an auth ledger (asks for the password)
  roost --config roost.toml --http none   the file's settings, without the HTTP listener
  roost --print-config > roost.toml       write out the configuration in effect
  roost check-config roost.toml           validate a file (exit 0 valid, 2 invalid, 1 unreadable)

Signals: SIGINT or SIGTERM stop accepting, send DISCONNECT (0x8B, server
shutting down) to MQTT 5 clients, flush the store and exit 0. SIGHUP
reloads TLS certificates, CRLs and the auth ledger; connections stay up,
except those whose client certificate a new CRL revokes.

Logs go to stderr; RUST_LOG (for example RUST_LOG=roost=debug) overrides
log.level and log.filter.

Exit status: 0 after a clean shutdown; 1 when the --config file cannot
be read, a listener cannot bind or the store cannot open; 2 when the
command line or the configuration is invalid (a key, a value, or a
certificate, key or ledger file it names); 3 when the store is damaged
or in a format this build cannot read: roost left it as it was and says
which file; restore it from a backup or move it aside.";

/// The `roost` command line.
#[derive(Debug, Parser)]
#[command(
    name = "roost",
    version,
    about = ABOUT,
    long_about = LONG_ABOUT,
    after_help = AFTER_HELP,
    args_conflicts_with_subcommands = true
)]
pub(crate) struct Args {
    /// A subcommand instead of serving.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Read settings from this TOML file (the flags below override it).
    #[arg(short, long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Print the configuration in effect as TOML and exit, binding nothing.
    #[arg(long)]
    pub print_config: bool,

    /// MQTT over TCP on ADDR (default 0.0.0.0:1883), or `none`.
    #[arg(long, value_name = "ADDR", value_parser = parse_bind, help_heading = "Listeners")]
    pub tcp: Vec<Bind>,

    /// MQTT over TLS on ADDR (usually port 8883), or `none`; needs --cert and --key.
    #[arg(long, value_name = "ADDR", value_parser = parse_bind, help_heading = "Listeners")]
    pub tls: Vec<Bind>,

    /// MQTT over WebSocket on ADDR (default 0.0.0.0:1882, path /mqtt), or `none`.
    #[arg(long, value_name = "ADDR", value_parser = parse_bind, help_heading = "Listeners")]
    pub ws: Vec<Bind>,

    /// MQTT over WebSocket over TLS on ADDR, or `none`; needs --cert and --key.
    #[arg(long, value_name = "ADDR", value_parser = parse_bind, help_heading = "Listeners")]
    pub wss: Vec<Bind>,

    /// HTTP stats (/stats, /metrics, /healthz) on ADDR (default 127.0.0.1:8080), or `none`.
    #[arg(long, value_name = "ADDR", value_parser = parse_bind, help_heading = "Listeners")]
    pub http: Vec<Bind>,

    /// HTTP stats over TLS on ADDR, or `none`; needs --cert and --key.
    #[arg(long, value_name = "ADDR", value_parser = parse_bind, help_heading = "Listeners")]
    pub https: Vec<Bind>,

    /// PEM certificate chain for every TLS listener (reloaded on SIGHUP).
    #[arg(long, value_name = "FILE", help_heading = "TLS")]
    pub cert: Option<PathBuf>,

    /// PEM private key for every TLS listener (reloaded on SIGHUP).
    #[arg(long, value_name = "FILE", help_heading = "TLS")]
    pub key: Option<PathBuf>,

    /// Require client certificates that chain to the CAs in this PEM file.
    #[arg(long, value_name = "FILE", help_heading = "TLS")]
    pub client_ca: Option<PathBuf>,

    /// Whether clients must present a certificate [default: required with --client-ca].
    #[arg(long, value_enum, value_name = "MODE", help_heading = "TLS")]
    pub client_auth: Option<ClientAuthMode>,

    /// PEM revocation lists for client certificates (reloaded on SIGHUP and when changed).
    #[arg(long, value_name = "FILE", help_heading = "TLS")]
    pub crl: Option<PathBuf>,

    /// Take the MQTT user name from the client certificate [default: connect].
    #[arg(long, value_enum, value_name = "SOURCE", help_heading = "TLS")]
    pub username_from: Option<UsernameSource>,

    /// Take the client id (and so the session) from the client certificate [default: connect].
    #[arg(long, value_enum, value_name = "SOURCE", help_heading = "TLS")]
    pub client_id_from: Option<ClientIdSource>,

    /// Where sessions and messages are kept [default: redb].
    #[arg(long, value_enum, value_name = "BACKEND", help_heading = "Storage")]
    pub store: Option<StoreKind>,

    /// Directory of the persistent store [default: ./data].
    #[arg(long, value_name = "DIR", help_heading = "Storage")]
    pub data_dir: Option<PathBuf>,

    /// Authenticate and authorize clients with this ledger file (reloaded on SIGHUP).
    #[arg(long, value_name = "FILE", help_heading = "Access")]
    pub auth: Option<PathBuf>,

    /// Log line format on stderr [default: text].
    #[arg(long, value_enum, value_name = "FORMAT", help_heading = "Logging")]
    pub log_format: Option<LogFormat>,

    /// Runtime threads serving connections [default: one per CPU]. One
    /// costs less CPU at low message rates; full speed needs one per CPU.
    #[arg(long, value_name = "N", value_parser = parse_workers, help_heading = "Runtime")]
    pub workers: Option<NonZeroUsize>,

    /// Join a cluster through this NATS server (nats://host:port; repeat
    /// for more); replaces `[cluster] servers`. Needs `--cluster-node` or
    /// `[cluster] node`, and the `cluster` feature.
    #[arg(long, value_name = "URL", help_heading = "Cluster")]
    pub cluster: Vec<String>,

    /// This node's name in the cluster, unique among its nodes; replaces
    /// `[cluster] node`.
    #[arg(long, value_name = "NAME", help_heading = "Cluster")]
    pub cluster_node: Option<String>,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Validate a configuration file without starting
    ///
    /// Parses FILE, checks its settings together and loads the TLS
    /// certificates and keys it names, binding nothing. Exit status: 0 when
    /// valid, 2 when invalid (the reason on stderr), 1 when FILE cannot be
    /// read.
    CheckConfig {
        /// The file.
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Hash a password for the auth ledger, or set one in a ledger file
    ///
    /// The password is asked for twice on the terminal, without echo, or read
    /// from one line of standard input with --stdin (for scripts). It is never
    /// taken from the command line, where `ps` and shell history would keep it.
    ///
    ///   roost passwd                          print a hash for a `password = ...` key
    ///   roost passwd alice                    print a [[users]] entry for alice
    ///   roost passwd --file users.toml alice  add alice, or change her password, in place
    ///   roost passwd --file users.toml --delete alice
    ///   echo "$PW" | roost passwd --stdin --file users.toml alice
    ///
    /// --file edits only the [[users]] entry concerned: other entries, rules and
    /// comments stay as they are. The new file is checked as the broker would
    /// load it, then replaces the old one atomically, keeping its permissions and
    /// owner (a new file is readable by its owner only). A running broker picks
    /// it up on SIGHUP. A new user connects only once an [[auth]] rule allows it.
    ///
    /// Exit status: 0 done; 2 the passwords differ, the password is empty,
    /// no such user to delete, or the edited ledger would not load (nothing
    /// is written); 1 a file or the terminal cannot be read or written.
    #[cfg(feature = "ledger")]
    #[command(verbatim_doc_comment)]
    Passwd(Passwd),
}

/// `roost passwd`.
#[cfg(feature = "ledger")]
#[derive(Debug, clap::Args)]
#[command(
    group(clap::ArgGroup::new("who").args(["user", "delete"]))
)]
pub(crate) struct Passwd {
    /// The user whose entry to print, or to add or update in --file.
    #[arg(value_name = "USER")]
    pub user: Option<String>,

    /// Edit this ledger file in place (created if missing).
    #[arg(long, value_name = "FILE", requires = "who")]
    pub file: Option<PathBuf>,

    /// Remove USER's entry from --file.
    #[arg(long, value_name = "USER", requires = "file", conflicts_with_all = ["stdin", "cost"])]
    pub delete: Option<String>,

    /// Read the password from one line of standard input instead of the terminal.
    #[arg(long)]
    pub stdin: bool,

    /// bcrypt cost, 4 to 31: each step doubles the time a check takes (a
    /// login, and a guess). 10 takes about 50 ms of one core.
    #[arg(long, value_name = "N", default_value_t = roost::hooks::DEFAULT_BCRYPT_COST,
          value_parser = clap::value_parser!(u32).range(4..=31))]
    pub cost: u32,
}

/// A listener flag's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Bind {
    /// Listen here.
    Addr(BindAddr),
    /// No listener of this kind.
    None,
}

fn parse_bind(s: &str) -> Result<Bind, String> {
    if s.eq_ignore_ascii_case("none") {
        return Ok(Bind::None);
    }
    BindAddr::parse(s)
        .map(Bind::Addr)
        .map_err(|e| format!("{e} (or `none` for no listener of this kind)"))
}

fn parse_workers(s: &str) -> Result<NonZeroUsize, String> {
    let n = s
        .parse()
        .map_err(|_| format!("expected a number of threads, found {s:?}"))?;
    check_workers(n)
}

/// Sets one key of a listener from a flag.
type SetKey<'a> = dyn Fn(&mut ListenerConfig) + 'a;

/// The configuration in effect: defaults, then the file, then the flags.
///
/// Listeners: the command line's for each kind it names (`--KIND none`
/// removing that kind), the file's for the others; the built-in defaults
/// only when neither names any listener. `--cert`, `--key`,
/// `--client-ca`, `--client-auth`, `--crl`, `--username-from` and
/// `--client-id-from` apply to every TLS listener.
pub(crate) fn resolve(file: Option<Config>, args: &Args) -> Result<Config, ConfigError> {
    let mut config = file.unwrap_or_default();
    let flags: [(ListenerKind, &[Bind]); 6] = [
        (ListenerKind::Tcp, &args.tcp),
        (ListenerKind::Tls, &args.tls),
        (ListenerKind::Ws, &args.ws),
        (ListenerKind::Wss, &args.wss),
        (ListenerKind::Http, &args.http),
        (ListenerKind::Https, &args.https),
    ];
    let named_on_command_line = flags.iter().any(|(_, binds)| !binds.is_empty());
    if config.listeners.is_empty() && !named_on_command_line {
        config.listeners = default_listeners();
    }
    for (kind, binds) in flags {
        if binds.is_empty() {
            continue;
        }
        let flag = Place::Flag(kind.name());
        if binds.len() > 1 && binds.contains(&Bind::None) {
            return Err(ConfigError::invalid(
                flag,
                "`none` cannot be combined with addresses",
            ));
        }
        config.listeners.retain(|l| l.kind != kind);
        for bind in binds {
            if let Bind::Addr(addr) = bind {
                config
                    .listeners
                    .push(ListenerConfig::new(kind, addr.clone(), flag.clone()));
            }
        }
    }
    // Keep the start-up lines in a stable order: by kind, then as given.
    config.listeners.sort_by_key(|l| {
        ListenerKind::ALL
            .iter()
            .position(|k| *k == l.kind)
            .unwrap_or(usize::MAX)
    });
    // Each TLS flag sets its key on every TLS listener.
    let tls_flags: [(&'static str, bool, &SetKey); 7] = [
        ("cert", args.cert.is_some(), &|l| {
            l.cert.clone_from(&args.cert)
        }),
        ("key", args.key.is_some(), &|l| l.key.clone_from(&args.key)),
        ("client-ca", args.client_ca.is_some(), &|l| {
            l.client_ca.clone_from(&args.client_ca)
        }),
        ("client-auth", args.client_auth.is_some(), &|l| {
            l.client_auth = args.client_auth
        }),
        ("crl", args.crl.is_some(), &|l| l.crl.clone_from(&args.crl)),
        ("username-from", args.username_from.is_some(), &|l| {
            l.username_from = args.username_from
        }),
        ("client-id-from", args.client_id_from.is_some(), &|l| {
            l.client_id_from = args.client_id_from
        }),
    ];
    for (flag, given, set) in tls_flags {
        if !given {
            continue;
        }
        let mut applied = false;
        for l in config.listeners.iter_mut().filter(|l| l.kind.is_tls()) {
            set(l);
            applied = true;
        }
        if !applied {
            return Err(ConfigError::invalid(
                Place::Flag(flag),
                "there is no TLS listener to use it (add --tls, --wss or --https)",
            ));
        }
    }
    if let Some(backend) = args.store {
        config.store.backend = backend;
    }
    if let Some(dir) = &args.data_dir {
        config.store.data_dir = dir.clone();
    }
    if let Some(ledger) = &args.auth {
        config.auth.ledger = Some(ledger.clone());
        config.auth.place = Some(Place::Flag("auth"));
    }
    if let Some(format) = args.log_format {
        config.log.format = format;
    }
    if let Some(n) = args.workers {
        config.workers = Some(n);
    }
    if !args.cluster.is_empty() || args.cluster_node.is_some() {
        let cluster = config.cluster.get_or_insert_with(Default::default);
        // Without the feature, `check` refuses the table this leaves.
        #[cfg(feature = "cluster")]
        {
            if !args.cluster.is_empty() {
                cluster.servers.clone_from(&args.cluster);
            }
            if let Some(node) = &args.cluster_node {
                cluster.node.clone_from(node);
            }
        }
        #[cfg(not(feature = "cluster"))]
        let _ = cluster;
    }
    check(&config)?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        Args::command().debug_assert();
    }
}
