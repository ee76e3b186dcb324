//! The `roost` broker binary.

use clap::{Parser, ValueEnum};
use roost::storage::Store;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

/// roost: an embeddable, persistent MQTT broker.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Address of the MQTT-over-TCP listener.
    #[arg(long, default_value = "0.0.0.0:1883")]
    tcp: SocketAddr,
    /// Where sessions, queued messages and retained messages are kept.
    #[arg(long, value_enum, default_value_t = StoreKind::Redb)]
    store: StoreKind,
    /// Directory of the persistent store.
    #[arg(long, default_value = "./data")]
    data_dir: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum StoreKind {
    /// In memory: nothing survives a restart.
    Memory,
    /// sled, in the data directory (cargo feature `sled`).
    Sled,
    /// redb, in the data directory (cargo feature `redb`, the default).
    Redb,
}

/// Opens the chosen store; the text says what was opened, for the
/// start-up line.
fn open_store(kind: StoreKind, dir: &std::path::Path) -> Result<(Box<dyn Store>, String), String> {
    match kind {
        StoreKind::Memory => Ok((
            Box::new(roost::storage::MemoryStore::new()),
            "memory (nothing persists)".into(),
        )),
        #[cfg(feature = "sled")]
        StoreKind::Sled => roost::storage::SledStore::open(dir)
            .map(|s| {
                (
                    Box::new(s) as Box<dyn Store>,
                    format!("sled in {}", dir.display()),
                )
            })
            .map_err(|e| e.to_string()),
        #[cfg(not(feature = "sled"))]
        StoreKind::Sled => Err(format!(
            "--store sled: this roost was built without the `sled` feature \
             (rebuild with `cargo build --features sled`); cannot open {}",
            dir.display()
        )),
        #[cfg(feature = "redb")]
        StoreKind::Redb => roost::storage::RedbStore::open(dir)
            .map(|s| {
                let path = s.path().display().to_string();
                (Box::new(s) as Box<dyn Store>, format!("redb in {path}"))
            })
            .map_err(|e| e.to_string()),
        #[cfg(not(feature = "redb"))]
        StoreKind::Redb => Err(format!(
            "--store redb: this roost was built without the `redb` feature \
             (rebuild with `cargo build --features redb`); cannot open {}",
            dir.display()
        )),
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
    tracing::info!("shutting down");
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let (store, store_text) = match open_store(args.store, &args.data_dir) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("roost: cannot open the store: {e}");
            return ExitCode::FAILURE;
        }
    };
    let listener = match tokio::net::TcpListener::bind(args.tcp).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("roost: cannot listen on {} (--tcp): {e}", args.tcp);
            return ExitCode::FAILURE;
        }
    };
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    // One line per listener and store, on stdout, for operators and scripts.
    let version = env!("CARGO_PKG_VERSION");
    // Written with errors ignored: a closed stdout must not stop the broker.
    let mut out = std::io::stdout();
    let _ = writeln!(out, "roost {version}: mqtt tcp listening on {addr}");
    let _ = writeln!(out, "roost {version}: store {store_text}");
    let _ = out.flush();
    let server = roost::Server::new(roost::Options::default())
        .store(store)
        .tcp(listener);
    match server.serve(shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("roost: {e}");
            ExitCode::FAILURE
        }
    }
}
