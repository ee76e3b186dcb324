//! A broker that keeps sessions, queued messages and retained messages on
//! disk (redb), so nothing it acknowledged is lost across a restart or a
//! crash.
//!
//! Run it, publish a retained message and queue one for an offline
//! persistent session, stop it (Ctrl-C, or even `kill -9`), run it again
//! and find both still there:
//!
//! ```text
//! cargo run --example persistent
//! mosquitto_sub -h 127.0.0.1 -i phone -c -q 1 -t alerts   # then Ctrl-C
//! mosquitto_pub -h 127.0.0.1 -q 1 -t alerts -m "door open"
//! mosquitto_pub -h 127.0.0.1 -q 1 -r -t config -m "v2"
//! # restart the example, then:
//! mosquitto_sub -h 127.0.0.1 -i phone -c -q 1 -t alerts   # gets "door open"
//! ```
//!
//! It listens on 127.0.0.1:1883 (`ROOST_ADDR` moves it); the store goes
//! to `./data-example` (`ROOST_DATA` moves it).

use roost::storage::RedbStore;
use roost::{Durability, Options, Server};
use tokio::net::TcpListener;

/// The address in the environment variable `var`, else `default`.
fn addr(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_owned())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::var("ROOST_DATA").unwrap_or_else(|_| "./data-example".into());
    let mqtt = addr("ROOST_ADDR", "127.0.0.1:1883");
    // Opening is blocking file I/O: done once, before serving.
    let store = RedbStore::open(&dir)?;
    let options = Options {
        // The default: PUBACK/PUBREC leave only once the message is
        // committed. `Durability::AckBeforeCommit { flush_interval }` trades
        // that guarantee for speed, as Mosquitto does.
        durability: Durability::AckAfterCommit,
        ..Options::default()
    };
    let server = Server::new(options)
        .store(store)
        .tcp(TcpListener::bind(&mqtt).await?);
    println!("persistent broker on {mqtt}, store in {dir}");
    server
        .serve(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
