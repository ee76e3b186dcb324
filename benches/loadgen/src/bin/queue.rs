//! `queue`: what queued messages for clients that are away cost, and how
//! fast they come back (issue 16, "edge memory").
//!
//! Two scenarios, each run against every broker named with `--brokers`:
//! - `one`: a persistent QoS 1 subscriber goes away; a publisher sends it
//!   `--messages` QoS 1 messages (64-byte payloads, `--window` in flight);
//!   the broker's RSS growth is measured; the subscriber comes back and
//!   takes them all, checked in order, at a measured rate.
//! - `many`: `--sessions` persistent subscribers to one topic go away; the
//!   publisher sends `--per-session` QoS 1 messages to that topic, so each
//!   session holds that many queued; RSS is measured, then (roost on a
//!   persistent store) again after a restart; a sample of the sessions
//!   comes back and must get every message.
//!
//! Brokers: `roost-redb`, `roost-sled` (the binary on those stores),
//! `roost-memory` (the in-memory store: every queue in memory, the baseline
//! for the drain rate) and `mosquitto` (Debian's, in-memory queues, with
//! `max_queued_messages` raised to hold the load).
//!
//! ```sh
//! cargo build --release --all-features -p roost -p roost-loadgen
//! target/release/queue --scenario one --brokers roost-redb,roost-memory,mosquitto
//! target/release/queue --scenario many --brokers roost-redb,roost-sled,mosquitto
//! ```

use bytes::Bytes;
use clap::Parser;
use roost::codec::{Disconnect, Packet, PacketId, ProtocolVersion, PubResp, Publish, QoS, QosPid};
use roost_loadgen::client::{self, Conn, ConnectOptions};
use roost_loadgen::conns::source;
use roost_loadgen::process::{roost_binary, Broker};
use roost_loadgen::procstat;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Queue benchmark for the roost broker (and Mosquitto beside it).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// `one` (one session, many messages) or `many` (many sessions, a few
    /// messages each).
    #[arg(long, default_value = "one")]
    scenario: String,
    /// Brokers, comma-separated: roost-redb, roost-sled, roost-memory, mosquitto.
    #[arg(long, default_value = "roost-redb,roost-memory", value_delimiter = ',')]
    brokers: Vec<String>,
    /// `one`: messages queued for the session.
    #[arg(long, default_value_t = 1_000_000)]
    messages: u64,
    /// `many`: sessions.
    #[arg(long, default_value_t = 100_000)]
    sessions: u64,
    /// `many`: messages queued for each session.
    #[arg(long, default_value_t = 10)]
    per_session: u64,
    /// QoS 1 publishes in flight from the publisher.
    #[arg(long, default_value_t = 256)]
    window: usize,
    /// Where store directories go.
    #[arg(long, default_value = "target/queue-bench")]
    dir: PathBuf,
    /// The roost binary (default: `roost` next to this one).
    #[arg(long)]
    roost: Option<PathBuf>,
    /// A configuration file for roost (for instance to raise the queue
    /// limits of a build from before queues went to disk, to compare).
    #[arg(long)]
    roost_config: Option<PathBuf>,
    /// The mosquitto binary.
    #[arg(long, default_value = "mosquitto")]
    mosquitto: PathBuf,
}

/// A broker process and where it listens.
struct Running(Broker);

impl Running {
    fn rss_mib(&self) -> f64 {
        procstat::sample(self.0.pid()).map_or(0.0, |s| s.rss_kb as f64 / 1024.0)
    }

    fn peak_mib(&self) -> f64 {
        procstat::sample(self.0.pid()).map_or(0.0, |s| s.hwm_kb as f64 / 1024.0)
    }

    fn addr(&self) -> SocketAddr {
        self.0.addr
    }

    /// SIGTERM, then wait (kill after 60 s).
    fn stop(self) {
        self.0.stop();
    }
}

/// Starts `broker`; `fresh` empties its store directory first.
fn start(broker: &str, a: &Args, fresh: bool) -> Result<Running, String> {
    let dir = a.dir.join(broker);
    if fresh {
        let _ = std::fs::remove_dir_all(&dir);
    }
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    if broker == "mosquitto" {
        return start_mosquitto(a, &dir);
    }
    let store = broker
        .strip_prefix("roost-")
        .ok_or_else(|| format!("unknown broker {broker:?}"))?;
    let roost = roost_binary(a.roost.clone())?;
    let mut command = Command::new(&roost);
    if let Some(config) = &a.roost_config {
        command.arg("--config").arg(config);
    }
    command
        .args(["--store", store, "--tcp", "127.0.0.1:0", "--data-dir"])
        .arg(dir.join("data"));
    Broker::roost(command, Duration::from_secs(300)).map(Running)
}

fn start_mosquitto(a: &Args, dir: &Path) -> Result<Running, String> {
    let conf = format!(
        "allow_anonymous true\npersistence false\n\
         max_queued_messages {}\nmax_queued_bytes 0\nmax_connections -1\n",
        a.messages.max(a.per_session) + 1
    );
    Broker::mosquitto(&a.mosquitto, dir, &conf).map(Running)
}

fn opts(id: &str, clean: bool) -> ConnectOptions {
    ConnectOptions {
        client_id: id.into(),
        version: ProtocolVersion::V3_1_1,
        clean_start: clean,
        keep_alive: 600,
    }
}

fn io(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// Connects `id` with a persistent session, subscribes to `filter` at
/// QoS 1, and leaves with DISCONNECT.
async fn subscribe_and_leave(
    addr: SocketAddr,
    id: &str,
    filter: &str,
    from: Option<std::net::IpAddr>,
) -> Result<(), String> {
    let mut c = client::connect(addr, from, &opts(id, false))
        .await
        .map_err(io)?;
    c.subscribe(&[filter.to_owned()], QoS::AtLeastOnce)
        .await
        .map_err(io)?;
    leave(c).await
}

async fn leave(mut c: Conn) -> Result<(), String> {
    c.writer
        .queue(&Packet::Disconnect(Disconnect::default()))
        .map_err(io)?;
    c.writer.shutdown().await.map_err(io)?;
    // Wait for the broker to close, so the session is away when we go on.
    while let Ok(Some(_)) = c.reader.next().await {}
    Ok(())
}

/// Publishes `n` QoS 1 messages to `topic`, numbered from 0 in the first
/// eight bytes of a 64-byte payload, `window` in flight. Returns the time.
async fn publish(addr: SocketAddr, topic: &str, n: u64, window: usize) -> Result<Duration, String> {
    let mut c = client::connect(addr, None, &opts("q-pub", true))
        .await
        .map_err(io)?;
    let window = window.clamp(1, usize::from(c.receive_maximum()));
    let t = Instant::now();
    let (mut sent, mut acked) = (0u64, 0u64);
    let mut free: Vec<u16> = (1..=window as u16).rev().collect();
    while acked < n {
        while sent < n {
            let Some(pid) = free.pop() else { break };
            let mut payload = vec![0x5a; 64];
            payload[..8].copy_from_slice(&sent.to_be_bytes());
            let p = Publish::new(topic, Bytes::from(payload))
                .with_qos_pid(QosPid::new(QoS::AtLeastOnce, PacketId::new(pid).unwrap()));
            c.writer.queue(&Packet::Publish(p)).map_err(io)?;
            sent += 1;
        }
        c.writer.flush().await.map_err(io)?;
        match c.reader.next().await.map_err(io)? {
            Some(Packet::PubAck(a)) if a.reason.is_success() => {
                acked += 1;
                free.push(a.packet_id.get());
            }
            Some(Packet::PubAck(a)) => return Err(format!("PUBACK {:?}", a.reason)),
            Some(_) => {}
            None => return Err("publisher closed".into()),
        }
    }
    let took = t.elapsed();
    leave(c).await?;
    Ok(took)
}

/// Comes back as `id` and takes `n` messages, acknowledging each; checks
/// they are numbered 0.. in order when `ordered`. Returns the time from
/// CONNACK to the last one.
async fn drain(
    addr: SocketAddr,
    id: &str,
    n: u64,
    ordered: bool,
    from: Option<std::net::IpAddr>,
) -> Result<Duration, String> {
    let mut c = client::connect(addr, from, &opts(id, false))
        .await
        .map_err(io)?;
    let t = Instant::now();
    let mut got = 0u64;
    let mut next = 0u64;
    let mut dups = 0u64;
    while got < n {
        let packet = match c.reader.try_next().map_err(io)? {
            Some(packet) => packet,
            None => {
                // Everything read is handled: the acknowledgements go now
                // (a broker with a small in-flight window waits for them).
                c.writer.flush().await.map_err(io)?;
                let read = tokio::time::timeout(Duration::from_secs(30), c.reader.fill())
                    .await
                    .map_err(|_| format!("{id}: {got} of {n} after 30 s of silence"))?
                    .map_err(io)?;
                if read == 0 {
                    return Err(format!("{id}: closed after {got} of {n}"));
                }
                continue;
            }
        };
        if let Packet::Publish(p) = packet {
            if let QosPid::AtLeastOnce(pid) = p.qos_pid {
                c.writer
                    .queue(&Packet::PubAck(PubResp::new(pid)))
                    .map_err(io)?;
            }
            let seq = u64::from_be_bytes(p.payload[..8].try_into().map_err(io)?);
            if ordered {
                if seq < next {
                    dups += 1;
                    continue;
                }
                if seq != next {
                    return Err(format!("{id}: got message {seq}, expected {next}"));
                }
                next += 1;
            }
            got += 1;
        }
    }
    c.writer.flush().await.map_err(io)?;
    let took = t.elapsed();
    if dups > 0 {
        println!("    ({id}: {dups} redelivered)");
    }
    leave(c).await?;
    Ok(took)
}

fn settle() {
    std::thread::sleep(Duration::from_millis(1500));
}

async fn one(broker: &str, a: &Args) -> Result<(), String> {
    let b = start(broker, a, true)?;
    subscribe_and_leave(b.addr(), "q-sub", "q/#", None).await?;
    settle();
    let before = b.rss_mib();
    let took = publish(b.addr(), "q/a/b/c/d", a.messages, a.window).await?;
    settle();
    let after = b.rss_mib();
    println!(
        "  {broker}: {} queued in {:.2} s ({:.0} msg/s); RSS {before:.1} -> {after:.1} MiB (growth {:.1} MiB)",
        a.messages,
        took.as_secs_f64(),
        a.messages as f64 / took.as_secs_f64(),
        after - before,
    );
    let took = drain(b.addr(), "q-sub", a.messages, true, None).await?;
    settle();
    println!(
        "  {broker}: drained in order in {:.2} s ({:.0} msg/s); RSS after {:.1} MiB, peak {:.1} MiB",
        took.as_secs_f64(),
        a.messages as f64 / took.as_secs_f64(),
        b.rss_mib(),
        b.peak_mib(),
    );
    b.stop();
    Ok(())
}

async fn many(broker: &str, a: &Args) -> Result<(), String> {
    let b = start(broker, a, true)?;
    let t = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..64 {
        let (next, addr, sessions) = (next.clone(), b.addr(), a.sessions);
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Relaxed);
                if i >= sessions {
                    return Ok::<(), String>(());
                }
                subscribe_and_leave(addr, &format!("dev-{i:06}"), "fleet/all", source(i, 8))
                    .await?;
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.map_err(io)??;
    }
    println!(
        "  {broker}: {} sessions subscribed and away in {:.1} s",
        a.sessions,
        t.elapsed().as_secs_f64()
    );
    settle();
    let before = b.rss_mib();
    let took = publish(b.addr(), "fleet/all", a.per_session, 1).await?;
    settle();
    let after = b.rss_mib();
    println!(
        "  {broker}: {} x {} queued in {:.2} s; RSS {before:.1} MiB with the sessions, {after:.1} MiB with their queues (peak {:.1})",
        a.sessions,
        a.per_session,
        took.as_secs_f64(),
        b.peak_mib(),
    );
    let b = if broker.starts_with("roost-") && broker != "roost-memory" {
        b.stop();
        let t = Instant::now();
        let b = start(broker, a, false)?;
        let c = client::connect(b.addr(), None, &opts("probe", true))
            .await
            .map_err(io)?;
        let up = t.elapsed();
        settle();
        println!(
            "  {broker}: restarted in {:.2} s (spawn to CONNACK); RSS {:.1} MiB (peak {:.1})",
            up.as_secs_f64(),
            b.rss_mib(),
            b.peak_mib()
        );
        drop(c);
        b
    } else {
        b
    };
    let step = (a.sessions / 100).max(1);
    let mut checked = 0;
    for i in (0..a.sessions).step_by(step as usize) {
        drain(
            b.addr(),
            &format!("dev-{i:06}"),
            a.per_session,
            true,
            source(i, 8),
        )
        .await?;
        checked += 1;
    }
    println!(
        "  {broker}: {checked} sessions checked, each got all {} in order",
        a.per_session
    );
    b.stop();
    Ok(())
}

fn main() -> ExitCode {
    let a = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let mut failed = false;
    println!("scenario {}:", a.scenario);
    for broker in &a.brokers {
        let r = rt.block_on(async {
            match a.scenario.as_str() {
                "one" => one(broker, &a).await,
                "many" => many(broker, &a).await,
                other => Err(format!("unknown scenario {other:?} (one or many)")),
            }
        });
        if let Err(e) = r {
            eprintln!("queue: {broker}: {e}");
            failed = true;
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
