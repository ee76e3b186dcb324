//! The `roost` broker binary.

use clap::Parser;
use std::io::Write;
use std::net::SocketAddr;

/// roost: an embeddable, persistent MQTT broker.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Address of the MQTT-over-TCP listener.
    #[arg(long, default_value = "0.0.0.0:1883")]
    tcp: SocketAddr,
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let listener = match tokio::net::TcpListener::bind(args.tcp).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("roost: cannot listen on {}: {e}", args.tcp);
            return std::process::ExitCode::FAILURE;
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
    let _ = writeln!(out, "roost {version}: store memory (nothing persists)");
    let _ = out.flush();
    let server = roost::Server::new(roost::Options::default()).tcp(listener);
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutting down");
    };
    match server.serve(shutdown).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("roost: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
