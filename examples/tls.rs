//! MQTT over TLS with client certificates, embedded in an application.
//!
//! Serves plain MQTT on 127.0.0.1:1883 and MQTT over TLS on 127.0.0.1:8883
//! (`ROOST_ADDR` and `ROOST_TLS_ADDR` move them) with the example
//! certificates in `certs/` (regenerate them with
//! `certs/generate.sh`). Clients must present a certificate signed by
//! `certs/ca.pem`; its Common Name becomes their MQTT user name. Sending
//! SIGHUP is not wired here: the example reloads the certificate every
//! hour instead, to show `ListenerHandle::reload`.
//!
//! Run from the repository root:
//!
//! ```text
//! cargo run --example tls
//! mosquitto_sub -h localhost -p 8883 --cafile certs/ca.pem \
//!     --cert certs/client.pem --key certs/client.key -t '#' -v
//! ```

use roost::{ClientAuth, Options, Server, TlsConfig, UsernameFrom};
use std::time::Duration;
use tokio::net::TcpListener;

/// The address in the environment variable `var`, else `default`.
fn addr(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_owned())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let tls = TlsConfig::new("certs/server.pem", "certs/server.key")
        .client_auth(ClientAuth::Required {
            ca: "certs/ca.pem".into(),
        })
        .username_from(UsernameFrom::CommonName);
    let server = Server::new(Options::default())
        .tcp(TcpListener::bind(addr("ROOST_ADDR", "127.0.0.1:1883")).await?)
        .tls(
            TcpListener::bind(addr("ROOST_TLS_ADDR", "127.0.0.1:8883")).await?,
            tls,
        )?;

    let handle = server.handle();
    for l in handle.listeners() {
        println!(
            "listening: {} ({}://{})",
            l.id(),
            l.scheme(),
            l.local_addr()
        );
    }
    // New certificates on disk are picked up by new connections; the
    // connections already up keep the ones they started with.
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            for l in handle.listeners().iter().filter(|l| l.scheme() == "mqtts") {
                if let Err(e) = l.reload() {
                    eprintln!("reload failed, keeping the old certificate: {e}");
                }
            }
        }
    });

    server
        .serve(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
