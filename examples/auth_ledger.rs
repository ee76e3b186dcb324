//! Authentication and ACL from a ledger file (feature `ledger`).
//!
//! Serves MQTT on 127.0.0.1:1883 (`ROOST_ADDR` moves it) with the users
//! and rules of `examples/ledger.toml` installed as both the auth and the
//! ACL hook, through a `SharedLedger` so the file can be reloaded while
//! clients stay connected: send SIGHUP (on Unix) after editing it. Ctrl-C
//! stops.
//!
//! Run from the repository root, then try it with any MQTT client:
//!
//! ```text
//! cargo run --example auth_ledger
//! mosquitto_sub -h localhost -u admin -P admin-secret -t '#' -v
//! mosquitto_pub -h localhost -i sensor-1 -u device -P device-secret \
//!     -t devices/sensor-1/temp -m 21      # allowed
//! mosquitto_pub -h localhost -i sensor-1 -u device -P device-secret \
//!     -t devices/sensor-2/temp -m 21      # refused (not its tree)
//! mosquitto_sub -h localhost -t '#'       # refused (anonymous)
//! ```

use roost::hooks::SharedLedger;
use roost::{Options, Server};
use tokio::net::TcpListener;

const LEDGER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/ledger.toml");

/// The address in the environment variable `var`, else `default`.
fn addr(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_owned())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A load error names the file, line and key: print it and stop.
    let ledger = SharedLedger::load(LEDGER)?;
    let mqtt = addr("ROOST_ADDR", "127.0.0.1:1883");
    let server = Server::new(Options::default())
        .auth_hook(ledger.clone())
        .acl_hook(ledger.clone())
        .tcp(TcpListener::bind(&mqtt).await?);
    println!("listening on {mqtt} with the ledger {LEDGER}");

    #[cfg(unix)]
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            return;
        };
        while hup.recv().await.is_some() {
            // Reading a small file: quick enough to do here. On error the
            // ledger in force stays.
            match ledger.reload_from(LEDGER) {
                Ok(()) => println!("ledger reloaded"),
                Err(e) => eprintln!("ledger not reloaded: {e}"),
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
