//! `retained`: memory and speed with many retained messages (issue 16).
//!
//! For each store: starts `roost --store X` on an empty data directory,
//! publishes N retained messages (64-byte payloads, 5-level topics) at
//! QoS 1 from one client, and measures the broker's RSS; a subscriber to
//! `#` then receives all of them (rate, RSS). The broker is stopped
//! (SIGTERM) and started again on the same directory: time from spawn to a
//! first CONNACK (the restore), RSS after it (and its peak, which includes
//! what `Store::load()` materialises at start-up), and a `#` subscriber
//! again.
//!
//! ```sh
//! cargo build --release --all-features -p roost -p roost-loadgen
//! target/release/retained --stores redb,sled
//! ```

use bytes::Bytes;
use clap::Parser;
use roost::codec::{Packet, ProtocolVersion, Publish, QoS, QosPid};
use roost_loadgen::client::{self, ConnectOptions};
use roost_loadgen::process::{self, roost_binary};
use roost_loadgen::procstat;
use std::net::SocketAddr;
use std::num::NonZeroU16;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

/// Retained-message benchmark for the roost broker's persistent stores.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Backends to measure, comma-separated: redb, sled.
    #[arg(long, default_value = "redb,sled", value_delimiter = ',')]
    stores: Vec<String>,
    /// Where the data directories go (`DIR/redb`, `DIR/sled`).
    #[arg(long, default_value = "target/retained-bench")]
    dir: PathBuf,
    /// Retained messages (64-byte payloads).
    #[arg(long, default_value_t = 1_000_000)]
    retained: usize,
    /// QoS 1 publishes in flight.
    #[arg(long, default_value_t = 1000)]
    window: usize,
    /// Extra arguments for the broker (e.g. `--config FILE`).
    #[arg(long, allow_hyphen_values = true)]
    broker_arg: Vec<String>,
    /// The roost binary (default: `roost` next to this one).
    #[arg(long)]
    roost: Option<PathBuf>,
    /// Longest wait for any step, seconds.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
}

fn topic(i: usize) -> String {
    format!("site/{}/dev/{}/m{}", i / 10_000, i / 10 % 1000, i % 10)
}

struct Broker {
    roost: process::Broker,
    pid: u32,
    addr: SocketAddr,
}

impl Broker {
    fn start(kind: &str, dir: &Path, a: &Args, roost: &Path) -> Result<Broker, String> {
        let mut command = Command::new(roost);
        command
            .args(["--store", kind, "--tcp", "127.0.0.1:0", "--data-dir"])
            .arg(dir)
            .args(&a.broker_arg);
        let roost = process::Broker::roost(command, Duration::from_secs(a.timeout))?;
        Ok(Broker {
            pid: roost.pid(),
            addr: roost.addr,
            roost,
        })
    }

    fn rss(&self) -> String {
        match procstat::sample(self.pid) {
            Ok(m) => format!(
                "RSS {:.0} MiB (peak {:.0} MiB)",
                m.rss_kb as f64 / 1024.0,
                m.hwm_kb as f64 / 1024.0
            ),
            Err(e) => format!("RSS unknown ({e})"),
        }
    }

    /// SIGTERM lets the broker close its store cleanly; killed if it hangs.
    fn stop(self) {
        self.roost.stop();
    }
}

fn opts(id: &str, version: ProtocolVersion) -> ConnectOptions {
    ConnectOptions {
        client_id: id.into(),
        version,
        clean_start: true,
        keep_alive: 600,
    }
}

/// Publishes `n` retained messages at QoS 1 with `window` in flight.
async fn publish_all(addr: SocketAddr, n: usize, window: usize) -> std::io::Result<()> {
    let mut c = client::connect(addr, None, &opts("retainer", ProtocolVersion::V5)).await?;
    let window = window.min(usize::from(c.receive_maximum())).max(1);
    let payload = Bytes::from(vec![0x5a; 64]);
    let (mut sent, mut acked) = (0usize, 0usize);
    while acked < n {
        while sent < n && sent - acked < window {
            let pid = NonZeroU16::new((sent % 65_535 + 1) as u16).expect("non-zero");
            let p = Publish::new(topic(sent), payload.clone())
                .with_qos_pid(QosPid::AtLeastOnce(pid))
                .with_retain(true);
            c.writer.queue(&Packet::Publish(p))?;
            sent += 1;
        }
        c.writer.flush().await?;
        match c.reader.next().await? {
            Some(Packet::PubAck(_)) => acked += 1,
            Some(_) => {}
            None => return Err(std::io::ErrorKind::UnexpectedEof.into()),
        }
        while let Some(p) = c.reader.try_next()? {
            if let Packet::PubAck(_) = p {
                acked += 1;
            }
        }
    }
    c.writer.shutdown().await
}

/// Subscribes to `#` at QoS 0 and receives `n` retained messages.
async fn receive_all(addr: SocketAddr, n: usize) -> std::io::Result<usize> {
    let mut c = client::connect(addr, None, &opts("everything", ProtocolVersion::V3_1_1)).await?;
    c.subscribe(&["#".to_owned()], QoS::AtMostOnce).await?;
    let mut got = 0;
    while got < n {
        match c.reader.next().await? {
            Some(Packet::Publish(p)) if p.retain => got += 1,
            Some(_) => {}
            None => break,
        }
    }
    let _ = c.writer.shutdown().await;
    Ok(got)
}

fn bench(kind: &str, a: &Args, roost: &Path) -> Result<(), String> {
    let dir = a.dir.join(kind);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let n = a.retained;
    println!(
        "{kind}: {n} retained x 64 B, 5-level topics, in {}",
        dir.display()
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let timeout = Duration::from_secs(a.timeout);
    let run =
        |what: &str,
         f: std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<usize>>>>| {
            rt.block_on(async { tokio::time::timeout(timeout, f).await })
                .map_err(|_| format!("{what}: timed out"))?
                .map_err(|e| format!("{what}: {e}"))
        };

    let b = Broker::start(kind, &dir, a, roost)?;
    println!("  started: {}", b.rss());
    let t = Instant::now();
    let (addr, window) = (b.addr, a.window);
    run(
        "publish",
        Box::pin(async move { publish_all(addr, n, window).await.map(|()| n) }),
    )?;
    let took = t.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(1));
    println!(
        "  published {n} at QoS 1 in {took:.1} s ({:.0} msg/s): {}",
        n as f64 / took,
        b.rss()
    );
    subscriber(&rt, timeout, &b, n)?;
    b.stop();

    let t = Instant::now();
    let b = Broker::start(kind, &dir, a, roost)?;
    let addr = b.addr;
    run(
        "probe",
        Box::pin(async move {
            client::connect(addr, None, &opts("probe", ProtocolVersion::V3_1_1))
                .await
                .map(|_| 0)
        }),
    )?;
    println!(
        "  restart: {:.2} s from spawn to CONNACK; {}",
        t.elapsed().as_secs_f64(),
        b.rss()
    );
    subscriber(&rt, timeout, &b, n)?;
    b.stop();
    Ok(())
}

fn subscriber(
    rt: &tokio::runtime::Runtime,
    timeout: Duration,
    b: &Broker,
    n: usize,
) -> Result<(), String> {
    let t = Instant::now();
    let addr = b.addr;
    let got = rt
        .block_on(async { tokio::time::timeout(timeout, receive_all(addr, n)).await })
        .map_err(|_| "subscriber: timed out".to_owned())?
        .map_err(|e| format!("subscriber: {e}"))?;
    let took = t.elapsed().as_secs_f64();
    println!(
        "  `#` subscriber: {got} of {n} in {took:.1} s ({:.0} msg/s): {}",
        got as f64 / took,
        b.rss()
    );
    if got < n {
        return Err(format!("the subscriber got {got} of {n}"));
    }
    Ok(())
}

fn main() -> ExitCode {
    let a = Args::parse();
    let roost = match roost_binary(a.roost.clone()) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("retained: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut failed = false;
    for kind in &a.stores {
        if let Err(e) = bench(kind, &a, &roost) {
            eprintln!("retained: {kind}: {e}");
            failed = true;
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
