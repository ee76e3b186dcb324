//! Running a resolved configuration: open the store, bind every listener,
//! print one line for each, serve until SIGINT or SIGTERM, and reload TLS
//! certificates and the auth ledger on SIGHUP.

use super::banner::{self, Banner};
use super::config::{Config, ListenerConfig, ListenerKind, StoreKind};
use super::error::{ConfigError, Place};
use super::ledger::Ledger;
use roost::storage::{StorageError, Store};
use roost::{Listener, ServerHandle, Transport};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// How long a shutdown may take once signalled; past it the process exits
/// with status 1 without waiting further. The server itself gives
/// connections 5 s to flush their last packets.
const SHUTDOWN_LIMIT: Duration = Duration::from_secs(15);

/// Connections the kernel queues for a listener until roost accepts them
/// (capped by `net.core.somaxconn`, 4096 on current kernels; tokio's
/// default is 1024). A reconnect storm arrives faster than any accept
/// loop takes it: past the queue the kernel drops the SYN, and the device
/// tries again only after 1 s, then 3 s, 7 s.
const LISTEN_BACKLOG: u32 = 4096;

/// A listening socket on `addr`, as `TcpListener::bind` makes it
/// (`SO_REUSEADDR`), with a [`LISTEN_BACKLOG`] queue.
fn bind(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = match addr {
        std::net::SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        std::net::SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// The TLS settings of a TLS listener.
#[cfg(feature = "tls")]
pub(crate) fn tls_config(l: &ListenerConfig) -> Option<roost::TlsConfig> {
    use super::config::{ClientAuthMode, ClientIdSource, UsernameSource};
    use roost::{ClientAuth, ClientIdFrom, TlsConfig, UsernameFrom};
    if !l.kind.is_tls() {
        return None;
    }
    let (cert, key) = (l.cert.clone()?, l.key.clone()?);
    let client_auth = match (&l.client_ca, l.client_auth) {
        (None, _) | (Some(_), Some(ClientAuthMode::None)) => ClientAuth::None,
        (Some(ca), Some(ClientAuthMode::Optional)) => ClientAuth::Optional { ca: ca.clone() },
        (Some(ca), Some(ClientAuthMode::Required) | None) => {
            ClientAuth::Required { ca: ca.clone() }
        }
    };
    let username_from = match l.username_from {
        None | Some(UsernameSource::Connect) => UsernameFrom::Connect,
        Some(UsernameSource::CommonName) => UsernameFrom::CommonName,
        Some(UsernameSource::SubjectAltName) => UsernameFrom::SubjectAltName,
    };
    let client_id_from = match l.client_id_from {
        None | Some(ClientIdSource::Connect) => ClientIdFrom::Connect,
        Some(ClientIdSource::CommonName) => ClientIdFrom::CommonName,
        Some(ClientIdSource::SubjectAltName) => ClientIdFrom::SubjectAltName,
    };
    let mut tls = TlsConfig::new(cert, key)
        .client_auth(client_auth)
        .username_from(username_from)
        .client_id_from(client_id_from);
    if let Some(crl) = &l.crl {
        tls = tls.crl(crl.clone());
    }
    if let Some(n) = l.session_cache {
        tls = tls.session_cache(n);
    }
    if let Some(on) = l.session_tickets {
        tls = tls.session_tickets(on);
    }
    if let Some(n) = l.handshakes_in_progress {
        tls = tls.handshakes_in_progress(n);
    }
    Some(tls)
}

#[cfg(feature = "ws")]
fn ws_config(l: &ListenerConfig) -> roost::WsConfig {
    let mut ws = roost::WsConfig::default();
    if let Some(path) = &l.path {
        ws = ws.path(path.clone());
    }
    if let Some(protocols) = &l.subprotocols {
        ws.subprotocols = protocols.clone();
    }
    ws
}

/// What the library calls the listener's transport. `None` when this
/// build lacks it (configurations are checked for that before running).
fn transport(l: &ListenerConfig) -> Option<Transport> {
    Some(match l.kind {
        ListenerKind::Tcp => Transport::Tcp,
        #[cfg(feature = "tls")]
        ListenerKind::Tls => Transport::Tls(tls_config(l)?),
        #[cfg(feature = "ws")]
        ListenerKind::Ws => Transport::Ws(ws_config(l)),
        #[cfg(all(feature = "ws", feature = "tls"))]
        ListenerKind::Wss => Transport::Wss(ws_config(l), tls_config(l)?),
        #[cfg(feature = "http")]
        ListenerKind::Http => Transport::Http,
        #[cfg(all(feature = "http", feature = "tls"))]
        ListenerKind::Https => Transport::Https(tls_config(l)?),
        #[allow(unreachable_patterns)] // Reached only without some features.
        _ => return None,
    })
}

/// The admin API's token of an HTTP(S) listener, read from its
/// `admin_token_file` or `admin_token_env`. An error names the key and the
/// file or variable, never the token.
pub(crate) fn admin_token(
    l: &ListenerConfig,
) -> Result<Option<roost::admin::AdminToken>, ConfigError> {
    let fail = |key: &str, message: String| {
        ConfigError::invalid(l.place.clone(), format!("{}: {key}: {message}", l.label()))
    };
    let (key, token) = if let Some(path) = &l.admin_token_file {
        let text = std::fs::read_to_string(path).map_err(|e| {
            fail(
                "admin_token_file",
                format!("cannot read {}: {e}", path.display()),
            )
        })?;
        ("admin_token_file", text)
    } else if let Some(var) = &l.admin_token_env {
        let text = std::env::var(var).map_err(|_| {
            fail(
                "admin_token_env",
                format!("the environment variable {var} is not set (or not UTF-8)"),
            )
        })?;
        ("admin_token_env", text)
    } else {
        return Ok(None);
    };
    // The newline an editor or `echo` leaves is not part of it.
    roost::admin::AdminToken::new(token.trim())
        .map(Some)
        .map_err(|e| fail(key, e.to_string()))
}

/// Gives `listener` the admin token, if there is one.
fn with_admin(
    listener: Listener,
    token: Option<roost::admin::AdminToken>,
) -> Result<Listener, roost::ListenerError> {
    #[cfg(feature = "http")]
    if let Some(token) = token {
        return listener.admin_token(token);
    }
    #[cfg(not(feature = "http"))]
    let _ = token;
    Ok(listener)
}

/// Exit status when the store is damaged or in a format this build cannot
/// read: it was left as it is, and starting again will not help until the
/// operator restores it or moves it aside (deploy/roost.service lists it in
/// `RestartPreventExitStatus`).
const EXIT_STORE_UNUSABLE: u8 = 3;

/// Why the store cannot be used: the message, and the exit status.
fn store_failure(e: &StorageError) -> (String, u8) {
    let code = match e {
        StorageError::Corrupt { .. } | StorageError::UnsupportedFormat { .. } => {
            EXIT_STORE_UNUSABLE
        }
        _ => 1,
    };
    (format!("cannot use the store: {e}"), code)
}

/// Opens the store; the text says what was opened, for the start-up line.
// Without a persistent backend there is no cache to size.
#[cfg_attr(not(any(feature = "sled", feature = "redb")), allow(unused_variables))]
fn open_store(
    kind: StoreKind,
    dir: &Path,
    cache: usize,
) -> Result<(Box<dyn Store>, String), (String, u8)> {
    match kind {
        StoreKind::Memory => Ok((
            Box::new(roost::storage::MemoryStore::new()),
            "memory (nothing persists)".into(),
        )),
        #[cfg(feature = "sled")]
        StoreKind::Sled => roost::storage::SledStore::open_with_cache(dir, cache)
            .map(|s| {
                (
                    Box::new(s) as Box<dyn Store>,
                    format!("sled in {}", dir.display()),
                )
            })
            .map_err(|e| store_failure(&e)),
        #[cfg(feature = "redb")]
        StoreKind::Redb => roost::storage::RedbStore::open_with_cache(dir, cache)
            .map(|s| {
                let path = s.path().display().to_string();
                (Box::new(s) as Box<dyn Store>, format!("redb in {path}"))
            })
            .map_err(|e| store_failure(&e)),
        #[allow(unreachable_patterns)] // Reached only without some features.
        other => Err((
            format!(
                "cannot open the store: this roost was built without the {other:?} store; \
                 cannot open {}",
                dir.display()
            ),
            1,
        )),
    }
}

fn fail(message: impl std::fmt::Display, code: u8) -> ExitCode {
    eprintln!("roost: {message}");
    ExitCode::from(code)
}

/// Serves `config` (already checked) until SIGINT or SIGTERM.
pub(crate) async fn run(config: Config) -> ExitCode {
    let version = env!("CARGO_PKG_VERSION");
    tracing::info!(
        workers = tokio::runtime::Handle::current().metrics().num_workers(),
        "runtime started"
    );
    // SIGHUP's default action ends the process: take it over first.
    #[cfg(unix)]
    let hangups = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot handle SIGHUP; reloading is unavailable");
            None
        }
    };
    let (store, store_text) = match open_store(
        config.store.backend,
        &config.store.data_dir,
        config.store.cache,
    ) {
        Ok(s) => s,
        Err((message, code)) => return fail(message, code),
    };
    // Read before any listener is bound: a store that cannot be read never
    // serves anyone.
    let server = match roost::Server::new(config.options())
        .store(store)
        .load_store()
        .await
    {
        Ok(s) => s,
        Err(roost::ServeError::Storage(e)) => {
            let (message, code) = store_failure(&e);
            return fail(message, code);
        }
        // ServeError is non-exhaustive: a kind added later fails plainly.
        Err(e) => return fail(format_args!("cannot start: {e}"), 1),
    };
    let ledger = match &config.auth.ledger {
        Some(path) => match Ledger::open(path) {
            Ok(l) => Some((Arc::new(l), path.clone())),
            Err(e) => {
                let place = config.auth.place.as_ref();
                let at = place.map(|p| format!("{p}: ")).unwrap_or_default();
                return fail(format_args!("{at}{e}"), 2);
            }
        },
        None => None,
    };
    let mut server = server;
    // Connected before any listener is bound or the banner says one is: a
    // node that cannot reach the engine fails (exit 1, naming the servers)
    // without ever having listened, and never serves alone.
    #[cfg(feature = "cluster")]
    if let Some(cluster) = &config.cluster {
        server = match server.cluster(cluster.clone()).connect_cluster().await {
            Ok(s) => s,
            Err(e) => return fail(e, 1),
        };
    }
    let mut banner = Banner::new(config.log.format);
    for (l, bind_addr) in config
        .listeners
        .iter()
        .flat_map(|l| l.bind.addrs().iter().map(move |a| (l, *a)))
    {
        let from = match &l.place {
            Place::Builtin => String::new(),
            place => format!(", from {place}"),
        };
        let tcp = match bind(bind_addr) {
            Ok(tcp) => tcp,
            Err(e) => {
                return fail(
                    format_args!("cannot listen on {bind_addr} ({}{from}): {e}", l.label()),
                    1,
                )
            }
        };
        let addr = match tcp.local_addr() {
            Ok(a) => a,
            Err(e) => return fail(format_args!("{}: {e}", l.label()), 1),
        };
        let Some(transport) = transport(l) else {
            return fail(
                format_args!("{}: not available in this build", l.label()),
                2,
            );
        };
        let token = match admin_token(l) {
            Ok(t) => t,
            Err(e) => return fail(e, 2),
        };
        let scheme = l.kind.describe().split(' ').next().unwrap_or("mqtt");
        let added = Listener::new(format!("{scheme}:{addr}"), tcp, transport)
            .and_then(|listener| with_admin(listener, token.clone()))
            .and_then(|listener| server.listener(listener));
        server = match added {
            Ok(s) => s,
            Err(e) => return fail(format_args!("{} ({}{from}): {e}", l.label(), addr), 2),
        };
        banner.info(
            format!("roost {version}: {} listening on {addr}", l.kind.describe()),
            &[
                ("listener", l.kind.describe().to_string()),
                ("addr", addr.to_string()),
            ],
        );
        if token.is_some() {
            banner.info(
                format!("roost {version}: admin API on {scheme}://{addr}/api/v1"),
                &[("admin_api", format!("{scheme}://{addr}/api/v1"))],
            );
            // Also logged at warn by the listener itself.
            if l.kind == ListenerKind::Http && !addr.ip().is_loopback() {
                banner.warn(
                    format!("roost {version}: warning: the admin API's token crosses the network in clear on http://{addr} (use https, or bind to 127.0.0.1)"),
                    &[("admin_api", format!("{scheme}://{addr}/api/v1"))],
                );
            }
        }
    }
    if let Some((ledger, path)) = &ledger {
        server = ledger.install(server);
        banner.info(
            format!("roost {version}: auth ledger {}", path.display()),
            &[("ledger", path.display().to_string())],
        );
    }
    let bridges = match bridges(&config) {
        Ok(b) => b,
        Err(e) => return fail(e, 2),
    };
    for bridge in bridges {
        let line = format!(
            "roost {version}: bridge {:?} to {}",
            bridge.name, bridge.remote
        );
        let fields = [
            ("bridge", bridge.name.to_string()),
            ("remote", bridge.remote.to_string()),
        ];
        server = match server.bridge(bridge) {
            Ok(s) => s,
            Err(e) => return fail(e, 2),
        };
        banner.info(line, &fields);
    }
    // Mosquitto 2.0 stopped serving anonymous clients on the network by
    // default; roost keeps its one-command quick start, and says so, in
    // the log and on the console, when that door is open.
    for (what, addr) in banner::open_doors(&config) {
        tracing::warn!(listener = what, %addr,
            "anyone who can reach this listener may connect, publish and subscribe: no auth ledger is configured ([auth] ledger; see README \"Operating roost\"), or bind it to 127.0.0.1");
        banner.warn(
            format!("roost {version}: warning: anyone who can reach {what} on {addr} may connect without credentials (no auth ledger)"),
            &[("listener", what), ("addr", addr.to_string())],
        );
    }
    // The store line comes last: scripts may read up to it.
    banner.info(
        format!("roost {version}: store {store_text}"),
        &[("store", store_text.clone())],
    );
    banner.print();
    tokio::spawn(super::logging::report_held_back());

    #[cfg(unix)]
    if let Some(hangups) = hangups {
        tokio::spawn(reload_on_hangup(
            hangups,
            server.handle(),
            ledger.map(|(l, _)| l),
            config
                .auth
                .disconnect_on_reload
                .unwrap_or(true)
                .then(|| server.admin()),
        ));
    }
    let (stopping_tx, mut stopping) = tokio::sync::watch::channel(false);
    // The core runs as a task of the runtime, not on the thread that
    // blocks on this function: a packet then goes from its connection's
    // task to the core and on to its subscriber's task on the same worker
    // thread when that one is free, instead of waking a thread at each
    // step. Measured at 5k msg/s, 50 pairs QoS 1: p50 0.47-0.49 -> 0.35 ms,
    // broker CPU -15%; fan-out QoS 1 at full speed 2.26-2.40M -> 2.42-2.64M.
    let serve = tokio::spawn(server.serve(async move {
        shutdown_signal().await;
        let _ = stopping_tx.send(true);
    }));
    let deadline = async {
        if stopping.wait_for(|s| *s).await.is_ok() {
            tokio::time::sleep(SHUTDOWN_LIMIT).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        result = serve => match result {
            Ok(Ok(())) => {
                tracing::info!("stopped");
                ExitCode::SUCCESS
            }
            Ok(Err(e)) => fail(e, 1),
            Err(e) => fail(format_args!("the broker failed: {e}"), 1),
        },
        _ = deadline => fail(
            format_args!("shutdown took longer than {SHUTDOWN_LIMIT:?}; exiting without waiting further"),
            1,
        ),
    }
}

/// On every SIGHUP: reloads each TLS listener's certificate, key, CA and
/// CRL, and the auth ledger. A reload that fails leaves the previous one in
/// force.
#[cfg(unix)]
async fn reload_on_hangup(
    mut hangups: tokio::signal::unix::Signal,
    handle: ServerHandle,
    ledger: Option<Arc<Ledger>>,
    disconnect_revoked: Option<roost::admin::Admin>,
) {
    while hangups.recv().await.is_some() {
        tracing::info!("SIGHUP: reloading TLS certificates and the auth ledger");
        let (mut reloaded, mut failed) = (0, 0);
        for l in handle.listeners() {
            if !matches!(l.scheme(), "mqtts" | "wss" | "https") {
                continue;
            }
            match l.reload() {
                Ok(()) => reloaded += 1,
                Err(e) => {
                    failed += 1;
                    tracing::error!(listener = l.id(), error = %e,
                        "TLS reload failed; the listener keeps its previous certificate and CRL");
                }
            }
        }
        if let Some(ledger) = &ledger {
            match ledger.reload() {
                Ok(revoked) => {
                    tracing::info!("auth ledger reloaded");
                    if let Some(admin) = &disconnect_revoked {
                        let options = roost::admin::DisconnectOptions::new()
                            .reason("user removed or disabled by a ledger reload");
                        match admin.disconnect_users(revoked, options).await {
                            Ok(0) => {}
                            Ok(n) => tracing::info!(clients = n,
                                "disconnected the clients of users the new ledger removes or disables"),
                            Err(e) => tracing::error!(error = %e,
                                "cannot disconnect the clients of removed or disabled users"),
                        }
                    }
                }
                Err(e) => tracing::error!(error = %e,
                    "auth ledger reload failed; the previous rules stay in force"),
            }
        }
        tracing::info!(
            tls_reloaded = reloaded,
            tls_failed = failed,
            "SIGHUP handled"
        );
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    tracing::info!("shutting down: closing connections and flushing the store");
}

/// Checks that this build can run the configuration and that every file
/// it names is usable: TLS certificates and keys are loaded, the ledger
/// is opened. Reads files; binds nothing.
pub(crate) fn check_files(config: &Config) -> Result<(), ConfigError> {
    for l in &config.listeners {
        if let Some(feature) = l.kind.missing_feature() {
            return Err(ConfigError::invalid(
                l.place.clone(),
                format!(
                    "{}: this roost was built without the `{feature}` feature",
                    l.label()
                ),
            ));
        }
        #[cfg(feature = "tls")]
        if let Some(tls) = tls_config(l) {
            if let Err(e) = tls.validate() {
                return Err(ConfigError::invalid(
                    l.place.clone(),
                    format!("{}: {e}", l.label()),
                ));
            }
        }
    }
    let missing = match config.store.backend {
        StoreKind::Sled => (!cfg!(feature = "sled")).then_some("sled"),
        StoreKind::Redb => (!cfg!(feature = "redb")).then_some("redb"),
        StoreKind::Memory => None,
    };
    if let Some(feature) = missing {
        return Err(ConfigError::invalid(
            Place::Key("store.backend"),
            format!(
                "this roost was built without the `{feature}` feature \
                 (rebuild with `cargo build --features {feature}`)"
            ),
        ));
    }
    bridges(config)?;
    for l in &config.listeners {
        admin_token(l)?;
    }
    if let Some(path) = &config.auth.ledger {
        let place = config
            .auth
            .place
            .clone()
            .unwrap_or(Place::Key("auth.ledger"));
        Ledger::open(path).map_err(|e| ConfigError::invalid(place, e))?;
    }
    Ok(())
}

/// The configured bridges, with their passwords read from `password_file`
/// or `password_env` and their TLS files checked to be readable. An error
/// names the key and the file or variable, never the password.
pub(crate) fn bridges(config: &Config) -> Result<Vec<roost::bridge::Bridge>, ConfigError> {
    let mut out = Vec::with_capacity(config.bridges.len());
    for b in &config.bridges {
        let fail = |key: &str, message: String| {
            ConfigError::invalid(
                b.place_of(key),
                format!("key {key:?} in [[bridges]]: {}: {message}", b.label()),
            )
        };
        let password = if let Some(path) = &b.password_file {
            let mut bytes = std::fs::read(path).map_err(|e| {
                fail(
                    "password_file",
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            // The newline an editor or `echo` leaves is not part of it.
            if bytes.ends_with(b"\n") {
                bytes.pop();
                if bytes.ends_with(b"\r") {
                    bytes.pop();
                }
            }
            Some(roost::bridge::Password::new(bytes))
        } else if let Some(var) = &b.password_env {
            let value = std::env::var_os(var).ok_or_else(|| {
                fail(
                    "password_env",
                    format!("the environment variable {var} is not set"),
                )
            })?;
            Some(roost::bridge::Password::new(value.into_encoded_bytes()))
        } else {
            None
        };
        if let Some(tls) = &b.tls {
            let files = [
                ("ca", Some(&tls.ca)),
                ("cert", tls.cert.as_ref()),
                ("key", tls.key.as_ref()),
            ];
            for (key, path) in files {
                let Some(path) = path else { continue };
                if let Err(e) = std::fs::File::open(path) {
                    return Err(ConfigError::invalid(
                        b.place_of(&format!("tls.{key}")),
                        format!(
                            "key {key:?} in [bridges.tls]: {}: cannot read {}: {e}",
                            b.label(),
                            path.display()
                        ),
                    ));
                }
            }
        }
        let bridge = b.bridge(password);
        if bridge.tls.is_some() {
            // Readable is not enough: the files must parse and pair up, as
            // serving will find out.
            let check = roost::Server::new(roost::Options::default()).bridge(bridge.clone());
            if let Err(e @ roost::bridge::BridgeError::TlsFile { .. }) = check {
                return Err(ConfigError::invalid(
                    b.place_of("tls"),
                    format!("key \"tls\" in [[bridges]]: {}: {e}", b.label()),
                ));
            }
        }
        out.push(bridge);
    }
    Ok(out)
}

#[cfg(all(test, feature = "tls"))]
mod tests {
    use super::*;

    #[test]
    fn listener_keys_reach_the_tls_settings() {
        let bind = "127.0.0.1:0".parse::<std::net::SocketAddr>().unwrap();
        let mut l = ListenerConfig::new(ListenerKind::Tls, bind.into(), Place::Builtin);
        l.cert = Some("s.pem".into());
        l.key = Some("s.key".into());
        let defaults = tls_config(&l).unwrap();
        assert!(defaults.session_tickets);
        assert_eq!(defaults.session_cache, 20_000);
        assert_eq!(defaults.handshakes_in_progress, 0);
        l.session_cache = Some(0);
        l.session_tickets = Some(false);
        l.handshakes_in_progress = Some(1000);
        let off = tls_config(&l).unwrap();
        assert!(!off.session_tickets);
        assert_eq!(off.session_cache, 0);
        assert_eq!(off.handshakes_in_progress, 1000);
    }
}
