//! MQTT over WebSocket next to plain MQTT, plus the HTTP stats endpoint,
//! with a listener added while the broker already serves.
//!
//! Serves MQTT on 127.0.0.1:1883, MQTT over WebSocket on
//! ws://127.0.0.1:1882/mqtt (subprotocol `mqtt`) and, once serving, the
//! stats on http://127.0.0.1:8080 (`/stats`, `/metrics`, `/healthz`).
//! `ROOST_ADDR`, `ROOST_WS_ADDR` and `ROOST_HTTP_ADDR` move them.
//!
//! Run from the repository root:
//!
//! ```text
//! cargo run --example websocket
//! curl http://127.0.0.1:8080/stats
//! ```
//!
//! and point a browser MQTT client (for example MQTT.js) at
//! `ws://127.0.0.1:1882/mqtt`.

use roost::{Listener, Options, Server, Transport, WsConfig};
use tokio::net::TcpListener;

/// The address in the environment variable `var`, else `default`.
fn addr(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_owned())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = Server::new(Options::default())
        .tcp(TcpListener::bind(addr("ROOST_ADDR", "127.0.0.1:1883")).await?)
        .ws(
            TcpListener::bind(addr("ROOST_WS_ADDR", "127.0.0.1:1882")).await?,
            WsConfig::default().path("/mqtt"),
        )?;
    let handle = server.handle();
    let serving = tokio::spawn(server.serve(async {
        let _ = tokio::signal::ctrl_c().await;
    }));

    // Listeners can be added to a running broker.
    let http = Listener::new(
        "stats",
        TcpListener::bind(addr("ROOST_HTTP_ADDR", "127.0.0.1:8080")).await?,
        Transport::Http,
    )?;
    handle.add_listener(http)?;
    for l in handle.listeners() {
        println!(
            "listening: {} ({}://{})",
            l.id(),
            l.scheme(),
            l.local_addr()
        );
    }
    serving.await??;
    Ok(())
}
