//! `bridge`: what a bridge forwards, and what a backlog costs while its
//! link is down (issue 17), for the roost binary against Mosquitto's own
//! bridge, both bridging to the same remote broker.
//!
//! - `throughput`: the edge (roost on redb, or Mosquitto with persistence
//!   on) bridges `bench/#` out at QoS 1 to the remote; `--publishers`
//!   clients on the edge publish `--messages` QoS 1 messages of 64 bytes
//!   (`--window` in flight each) and a QoS 1 subscriber on the remote
//!   counts them. Reported: end to end (first publish to last arrival at
//!   the remote) and at the publishers (first publish to last PUBACK from
//!   the edge). `--rounds` rounds, the edges interleaved, a fresh edge each
//!   time; medians and the roost/Mosquitto ratio.
//! - `backlog`: the edge's bridge goes through a relay (`roost_loadgen::
//!   relay`) that is down, so the link is down as with a remote that is
//!   away; `--backlog` messages are published to the edge; its RSS idle and
//!   with the backlog queued; then the relay comes up and the remote's
//!   subscriber times the drain.
//!
//! The remote is `roost --store memory` unless `--remote mosquitto`; it
//! runs for the whole benchmark.
//!
//! ```sh
//! cargo build --release -p roost --bin roost -p roost-loadgen --bin bridge
//! target/release/bridge
//! target/release/bridge --phases backlog --edges roost
//! ```

use clap::Parser;
use roost::codec::{Packet, PacketId, ProtocolVersion, PubResp, Publish, QoS, QosPid};
use roost_loadgen::client::{self, ConnectOptions};
use roost_loadgen::flow::{self, FlowConfig, FlowReport, Topology};
use roost_loadgen::payload::{self, Header};
use roost_loadgen::process::{free_port, roost_binary, Broker};
use roost_loadgen::procstat::{self, ProcSample};
use roost_loadgen::relay::Relay;
use roost_loadgen::seqtrack::SeqTracker;
use roost_loadgen::Clock;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

/// Bridge benchmark: roost's bridge and Mosquitto's, to one remote.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Phases, comma-separated: throughput, backlog.
    #[arg(long, default_value = "throughput,backlog", value_delimiter = ',')]
    phases: Vec<String>,
    /// Edge brokers, comma-separated: roost, mosquitto.
    #[arg(long, default_value = "roost,mosquitto", value_delimiter = ',')]
    edges: Vec<String>,
    /// The remote broker: roost (its memory store) or mosquitto.
    #[arg(long, default_value = "roost")]
    remote: String,
    /// The bridges' MQTT version: 3.1.1 or 5.
    #[arg(long, default_value = "3.1.1")]
    protocol: String,
    /// Messages in flight on the bridge link (roost `max_inflight`,
    /// Mosquitto `max_inflight_messages`).
    #[arg(long, default_value_t = 100)]
    max_inflight: u16,
    /// Throughput: rounds (each runs every edge once).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Throughput: messages per run.
    #[arg(long, default_value_t = 200_000)]
    messages: u64,
    /// Publishers on the edge.
    #[arg(long, default_value_t = 4)]
    publishers: usize,
    /// QoS 1 publishes in flight per publisher.
    #[arg(long, default_value_t = 64)]
    window: u16,
    /// Backlog: messages queued while the link is down.
    #[arg(long, default_value_t = 1_000_000)]
    backlog: u64,
    /// Backlog: times the link goes down, a backlog builds and drains, on
    /// the same edge (to see whether memory comes back).
    #[arg(long, default_value_t = 1)]
    cycles: usize,
    /// Where the brokers' data directories go (removed after each run).
    #[arg(long, default_value = "target/bridge-bench")]
    dir: PathBuf,
    /// Keep the data directories.
    #[arg(long)]
    keep: bool,
    /// The roost binary (default: `roost` next to this one).
    #[arg(long)]
    roost: Option<PathBuf>,
    /// The mosquitto binary.
    #[arg(long, default_value = "/usr/sbin/mosquitto")]
    mosquitto: PathBuf,
}

fn io(e: impl std::fmt::Display) -> String {
    e.to_string()
}

fn mib(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Lets the broker finish what it was doing (asynchronously: the relay
/// runs on this runtime).
async fn settle() {
    tokio::time::sleep(Duration::from_millis(1500)).await;
}

/// The remote, for the whole benchmark.
fn start_remote(a: &Args) -> Result<Broker, String> {
    let dir = a.dir.join("remote");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(io)?;
    match a.remote.as_str() {
        "roost" => {
            let mut command = Command::new(roost_binary(a.roost.clone())?);
            command.args(["--store", "memory", "--tcp", "127.0.0.1:0"]);
            Broker::roost(command, Duration::from_secs(30))
        }
        "mosquitto" => Broker::mosquitto(
            &a.mosquitto,
            &dir,
            &format!(
                "allow_anonymous true\npersistence false\nmax_inflight_messages {}\n\
                 max_queued_messages 0\nmax_queued_bytes 0\n",
                a.max_inflight
            ),
        ),
        other => Err(format!("unknown remote {other:?} (roost or mosquitto)")),
    }
}

/// An edge broker, and for roost where it serves `/stats`.
struct Edge {
    broker: Broker,
    stats: Option<SocketAddr>,
}

impl Edge {
    fn addr(&self) -> SocketAddr {
        self.broker.addr
    }

    fn pid(&self) -> u32 {
        self.broker.pid()
    }

    /// roost: queued messages read back from the store so far (they went
    /// to disk because the bridge's queue outgrew its window in memory).
    async fn read_back(&self) -> Option<u64> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut c = tokio::net::TcpStream::connect(self.stats?).await.ok()?;
        c.write_all(b"GET /stats HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .await
            .ok()?;
        let mut body = String::new();
        c.read_to_string(&mut body).await.ok()?;
        json_u64(&body, "queue_messages_read")
    }
}

/// The number after `"key":` in a JSON text.
fn json_u64(text: &str, key: &str) -> Option<u64> {
    let rest = &text[text.find(&format!("\"{key}\""))? + key.len() + 2..];
    let rest = rest.trim_start().strip_prefix(':')?.trim_start();
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// An edge bridging `bench/#` out at QoS 1 to `remote`, on a fresh data
/// directory `dir`, its bridge's client id at the remote `client_id`.
fn start_edge(
    kind: &str,
    a: &Args,
    dir: &Path,
    remote: SocketAddr,
    client_id: &str,
) -> Result<Edge, String> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).map_err(io)?;
    match kind {
        "roost" => {
            let protocol = match a.protocol.as_str() {
                "3.1.1" | "5" => a.protocol.as_str(),
                other => return Err(format!("unknown protocol {other:?} (3.1.1 or 5)")),
            };
            let stats = SocketAddr::from(([127, 0, 0, 1], free_port()?));
            // Reconnecting every second, as Mosquitto's `restart_timeout 1`.
            let config = format!(
                r#"[store]
backend = "redb"
data_dir = "{data}"

[[listener]]
type = "tcp"
bind = "127.0.0.1:0"

[[listener]]
type = "http"
bind = "{stats}"

[[bridges]]
name = "cloud"
remote = "mqtt://{remote}"
protocol = "{protocol}"
client_id = "{client_id}"
max_inflight = {inflight}
reconnect_min = "1s"
reconnect_max = "1s"

[[bridges.forward]]
filter = "bench/#"
qos = 1
"#,
                data = dir.join("data").display(),
                inflight = a.max_inflight,
            );
            let path = dir.join("edge.toml");
            std::fs::write(&path, config).map_err(io)?;
            let mut command = Command::new(roost_binary(a.roost.clone())?);
            command.arg("--config").arg(&path);
            Ok(Edge {
                broker: Broker::roost(command, Duration::from_secs(30))?,
                stats: Some(stats),
            })
        }
        "mosquitto" => {
            let protocol = match a.protocol.as_str() {
                "3.1.1" => "mqttv311",
                "5" => "mqttv50",
                other => return Err(format!("unknown protocol {other:?} (3.1.1 or 5)")),
            };
            // Persistence on (saved every `autosave_interval`, 30 min, and
            // at exit: the queue itself is in memory); `user root` so that
            // it may write there when started as root (it would switch to
            // the `mosquitto` user); the bridge's queue unbounded; as many in
            // flight as roost's bridge.
            let conf = format!(
                "user root\nallow_anonymous true\npersistence true\npersistence_location {}/\n\
                 max_inflight_messages {}\nmax_queued_messages 0\nmax_queued_bytes 0\n\
                 connection cloud\naddress {remote}\nclientid {client_id}\n\
                 topic bench/# out 1\ncleansession false\nbridge_protocol_version {protocol}\n\
                 try_private false\nnotifications false\nrestart_timeout 1\n",
                dir.display(),
                a.max_inflight,
            );
            Ok(Edge {
                broker: Broker::mosquitto(&a.mosquitto, dir, &conf)?,
                stats: None,
            })
        }
        other => Err(format!("unknown edge {other:?} (roost or mosquitto)")),
    }
}

fn opts(id: &str) -> ConnectOptions {
    ConnectOptions {
        client_id: id.into(),
        version: ProtocolVersion::V3_1_1,
        clean_start: true,
        keep_alive: 600,
    }
}

/// Waits until a QoS 1 message published on the edge reaches the remote
/// (the bridge is up), within 30 s.
async fn await_bridge(edge: SocketAddr, remote: SocketAddr, id: &str) -> Result<Duration, String> {
    let t = Instant::now();
    let topic = format!("bench/probe/{id}");
    let mut sub = client::connect(remote, None, &opts(&format!("{id}-probe-s")))
        .await
        .map_err(io)?;
    sub.subscribe(std::slice::from_ref(&topic), QoS::AtMostOnce)
        .await
        .map_err(io)?;
    let mut publisher = client::connect(edge, None, &opts(&format!("{id}-probe-p")))
        .await
        .map_err(io)?;
    let mut pid = 0u16;
    while t.elapsed() < Duration::from_secs(30) {
        pid = pid % u16::MAX + 1;
        let p = Publish::new(topic.as_str(), bytes::Bytes::from_static(b"probe"))
            .with_qos_pid(QosPid::AtLeastOnce(PacketId::new(pid).expect("from 1")));
        publisher.writer.queue(&Packet::Publish(p)).map_err(io)?;
        publisher.writer.flush().await.map_err(io)?;
        let arrived = tokio::time::timeout(Duration::from_millis(250), async {
            loop {
                match sub.reader.next().await {
                    Ok(Some(Packet::Publish(_))) => return true,
                    Ok(Some(_)) => {}
                    _ => return false,
                }
            }
        })
        .await;
        if arrived == Ok(true) {
            return Ok(t.elapsed());
        }
    }
    Err("the bridge did not carry a message within 30 s".into())
}

/// One throughput run's figures.
struct Run {
    report: FlowReport,
    edge_cpu: f64,
    remote_cpu: f64,
    /// This process's CPU time (publishers, subscriber).
    loadgen_cpu: f64,
    edge_peak_mib: f64,
    /// roost: messages that went to the store and were read back.
    read_back: Option<u64>,
}

async fn throughput_run(
    kind: &str,
    round: usize,
    a: &Args,
    remote: &Broker,
) -> Result<Run, String> {
    let id = format!("t{round}-{kind}");
    let dir = a.dir.join(&id);
    let edge = start_edge(kind, a, &dir, remote.addr, &format!("edge-{id}"))?;
    let result = async {
        await_bridge(edge.addr(), remote.addr, &id).await?;
        procstat::reset_peak(edge.pid()).map_err(io)?;
        let me = std::process::id();
        let (e0, r0, l0) = (sample(edge.pid())?, sample(remote.pid())?, sample(me)?);
        let report = flow::run(
            FlowConfig {
                addr: edge.addr(),
                sub_addr: Some(remote.addr),
                version: ProtocolVersion::V3_1_1,
                topology: Topology::FanIn(a.publishers),
                qos: QoS::AtLeastOnce,
                size: 64,
                messages: a.messages,
                rate: None,
                duration: Duration::from_secs(120),
                window: a.window,
                persistent: false,
                drain_timeout: Duration::from_secs(20),
                run_id: id.clone(),
            },
            Clock::new(),
            || {},
        )
        .await
        .map_err(io)?;
        let (e1, r1, l1) = (sample(edge.pid())?, sample(remote.pid())?, sample(me)?);
        let read_back = edge.read_back().await;
        Ok::<_, String>(Run {
            report,
            edge_cpu: e0.cpu_secs_until(&e1),
            remote_cpu: r0.cpu_secs_until(&r1),
            loadgen_cpu: l0.cpu_secs_until(&l1),
            edge_peak_mib: mib(e1.hwm_kb),
            read_back,
        })
    }
    .await;
    edge.broker.stop();
    if !a.keep {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

fn sample(pid: u32) -> Result<ProcSample, String> {
    procstat::sample(pid).map_err(|e| format!("/proc/{pid}: {e}"))
}

async fn throughput(a: &Args, remote: &Broker) -> Result<(), String> {
    println!(
        "throughput: {} x {} QoS 1 messages of 64 B, {} publishers x {} in flight; bridge MQTT {}, {} in flight; remote {}",
        a.rounds, a.messages, a.publishers, a.window, a.protocol, a.max_inflight, a.remote
    );
    let mut runs: Vec<(String, Vec<Run>)> = a.edges.iter().map(|e| (e.clone(), vec![])).collect();
    for round in 0..a.rounds {
        // Alternate who goes first.
        let mut order: Vec<usize> = (0..runs.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for i in order {
            let kind = runs[i].0.clone();
            let run = throughput_run(&kind, round, a, remote).await?;
            let r = &run.report;
            println!(
                "  round {round} {kind}: {}/{} arrived in {:.2} s = {:.0} msg/s end to end; acked {} in {:.2} s = {:.0} msg/s; lost {}, dup {}; latency p50 {:.1} ms p99 {:.1} ms; edge CPU {:.2} s, peak RSS {:.1} MiB; remote CPU {:.2} s; load generator CPU {:.2} s{}{}",
                r.delivered,
                r.sent,
                r.elapsed_secs,
                r.delivered_per_sec(),
                r.acked,
                r.acked_secs,
                r.acked_per_sec(),
                r.lost,
                r.duplicates,
                r.latency.quantile(0.5) as f64 / 1e6,
                r.latency.quantile(0.99) as f64 / 1e6,
                run.edge_cpu,
                run.edge_peak_mib,
                run.remote_cpu,
                run.loadgen_cpu,
                run.read_back.map_or(String::new(), |n| format!("; read back from the store {n}")),
                if r.errors.is_empty() { String::new() } else { format!("; errors: {:?}", r.errors) },
            );
            runs[i].1.push(run);
        }
    }
    println!("| edge | end to end msg/s (median) | per round | publisher acks msg/s (median) | edge CPU s per run | edge peak RSS MiB | remote CPU s | load generator CPU s | lost | dup |");
    println!("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|");
    let mut medians = Vec::new();
    for (kind, rs) in &runs {
        let e2e: Vec<f64> = rs.iter().map(|r| r.report.delivered_per_sec()).collect();
        let acks: Vec<f64> = rs.iter().map(|r| r.report.acked_per_sec()).collect();
        let cpu: Vec<f64> = rs.iter().map(|r| r.edge_cpu).collect();
        let rss: Vec<f64> = rs.iter().map(|r| r.edge_peak_mib).collect();
        let rcpu: Vec<f64> = rs.iter().map(|r| r.remote_cpu).collect();
        let lcpu: Vec<f64> = rs.iter().map(|r| r.loadgen_cpu).collect();
        let lost: u64 = rs.iter().map(|r| r.report.lost).sum();
        let dup: u64 = rs.iter().map(|r| r.report.duplicates).sum();
        let per: Vec<String> = e2e.iter().map(|v| format!("{v:.0}")).collect();
        println!(
            "| {kind} | {:.0} | {} | {:.0} | {:.2} | {:.1} | {:.2} | {:.2} | {lost} | {dup} |",
            median(&e2e),
            per.join(", "),
            median(&acks),
            median(&cpu),
            median(&rss),
            median(&rcpu),
            median(&lcpu),
        );
        medians.push((kind.clone(), median(&e2e), median(&acks), e2e, acks));
    }
    if let (Some(r), Some(m)) = (
        medians.iter().find(|m| m.0 == "roost"),
        medians.iter().find(|m| m.0 == "mosquitto"),
    ) {
        let per: Vec<String> =
            r.3.iter()
                .zip(&m.3)
                .map(|(x, y)| format!("{:.2}", x / y))
                .collect();
        println!(
            "roost/mosquitto: end to end {:.2} (per round {}), publisher acks {:.2}",
            r.1 / m.1,
            per.join(", "),
            r.2 / m.2
        );
    }
    Ok(())
}

/// Publishes `n` QoS 1 messages of 64 bytes from `publishers` clients
/// (`window` in flight each) to `bench/backlog/<i>`. Returns the PUBACKs
/// and the time from the first publish to the last PUBACK.
async fn publish_backlog(
    addr: SocketAddr,
    n: u64,
    publishers: usize,
    window: u16,
    cycle: usize,
) -> Result<(u64, Duration), String> {
    let t = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let clock = Clock::new();
    for i in 0..publishers {
        let count = n / publishers as u64 + u64::from((i as u64) < n % publishers as u64);
        let clock = clock.clone();
        tasks.spawn(async move {
            let mut c = client::connect(addr, None, &opts(&format!("backlog-{cycle}-p{i}")))
                .await
                .map_err(io)?;
            let topic = format!("bench/backlog/{i}");
            let window = usize::from(window.clamp(1, c.receive_maximum()));
            let mut free: Vec<u16> = (1..=window as u16).rev().collect();
            let (mut sent, mut acked) = (0u64, 0u64);
            while acked < count {
                while sent < count {
                    let Some(pid) = free.pop() else { break };
                    let body = payload::build(
                        Header {
                            sent_ns: clock.now_ns(),
                            publisher: i as u32,
                            seq: sent,
                        },
                        64,
                    );
                    let p = Publish::new(topic.as_str(), body)
                        .with_qos_pid(QosPid::AtLeastOnce(PacketId::new(pid).expect("from 1")));
                    c.writer.queue(&Packet::Publish(p)).map_err(io)?;
                    sent += 1;
                }
                c.writer.flush().await.map_err(io)?;
                let packet = tokio::time::timeout(Duration::from_secs(60), c.reader.next())
                    .await
                    .map_err(|_| format!("publisher {i}: no PUBACK for 60 s"))?
                    .map_err(io)?;
                match packet {
                    Some(Packet::PubAck(ack)) if ack.reason.is_success() => {
                        acked += 1;
                        free.push(ack.packet_id.get());
                    }
                    Some(Packet::PubAck(ack)) => {
                        return Err(format!("publisher {i}: PUBACK {:?}", ack.reason))
                    }
                    Some(_) => {}
                    None => return Err(format!("publisher {i}: closed")),
                }
            }
            c.writer.shutdown().await.map_err(io)?;
            Ok::<u64, String>(acked)
        });
    }
    let mut acked = 0;
    while let Some(r) = tasks.join_next().await {
        acked += r.map_err(io)??;
    }
    Ok((acked, t.elapsed()))
}

/// How the backlog drained: from the link's return to the first and the
/// last arrival at the remote.
struct Drain {
    unique: u64,
    duplicates: u64,
    first: Duration,
    last: Duration,
}

/// A QoS 1 subscriber on the remote takes `n` distinct messages; the clock
/// starts when it brings the relay up. Ends after 30 s without one.
async fn drain(remote: SocketAddr, n: u64, id: &str, relay: &mut Relay) -> Result<Drain, String> {
    let mut c = client::connect(remote, None, &opts(&format!("{id}-drain")))
        .await
        .map_err(io)?;
    c.subscribe(&["bench/#".to_owned()], QoS::AtLeastOnce)
        .await
        .map_err(io)?;
    relay.up().await.map_err(io)?;
    let t = Instant::now();
    let mut tracker = SeqTracker::new();
    let mut first = None;
    let mut last = Duration::ZERO;
    while tracker.unique() < n {
        let mut any = false;
        while let Some(packet) = c.reader.try_next().map_err(io)? {
            if let Packet::Publish(p) = packet {
                if let Some(h) = payload::parse(&p.payload) {
                    tracker.record(h.publisher, h.seq);
                    any = true;
                }
                if let QosPid::AtLeastOnce(pid) = p.qos_pid {
                    c.writer
                        .queue(&Packet::PubAck(PubResp::new(pid)))
                        .map_err(io)?;
                }
            }
        }
        if any {
            last = t.elapsed();
            first.get_or_insert(last);
            if tracker.unique() >= n {
                break;
            }
        }
        c.writer.flush().await.map_err(io)?;
        match tokio::time::timeout(Duration::from_secs(30), c.reader.fill()).await {
            Ok(Ok(0)) => return Err("the remote closed the subscriber".into()),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(io(e)),
            Err(_) => break,
        }
    }
    c.writer.flush().await.map_err(io)?;
    Ok(Drain {
        unique: tracker.unique(),
        duplicates: tracker.duplicates(),
        first: first.unwrap_or_default(),
        last,
    })
}

async fn backlog_run(kind: &str, a: &Args, remote: &Broker) -> Result<(), String> {
    let id = format!("b-{kind}");
    let dir = a.dir.join(&id);
    let mut relay = Relay::new(remote.addr).map_err(io)?;
    let edge = start_edge(kind, a, &dir, relay.addr, &format!("edge-{id}"))?;
    let result = async {
        // The bridge has tried the remote and found it down by now.
        settle().await;
        let idle = sample(edge.pid())?;
        for cycle in 0..a.cycles {
            if cycle > 0 {
                // The link goes down again; the bridge notices at once
                // (its connection is cut).
                relay.down();
                settle().await;
            }
            let before = sample(edge.pid())?;
            procstat::reset_peak(edge.pid()).map_err(io)?;
            let (acked, took) =
                publish_backlog(edge.addr(), a.backlog, a.publishers, a.window, cycle).await?;
            settle().await;
            let loaded = sample(edge.pid())?;
            println!(
                "  {kind} #{cycle}: {acked} of {} acknowledged in {:.2} s ({:.0} msg/s) with the link down; edge RSS idle {:.1} MiB, before {:.1}, with the backlog {:.1} MiB: +{:.1} MiB over idle (peak {:.1}); edge CPU {:.2} s; data directory {:.1} MiB",
                a.backlog,
                took.as_secs_f64(),
                acked as f64 / took.as_secs_f64(),
                mib(idle.rss_kb),
                mib(before.rss_kb),
                mib(loaded.rss_kb),
                mib(loaded.rss_kb) - mib(idle.rss_kb),
                mib(loaded.hwm_kb),
                before.cpu_secs_until(&loaded),
                dir_size(&dir) as f64 / (1024.0 * 1024.0),
            );
            procstat::reset_peak(edge.pid()).map_err(io)?;
            let d = drain(remote.addr, a.backlog, &format!("{id}-{cycle}"), &mut relay).await?;
            let drained = sample(edge.pid())?;
            settle().await;
            let after = sample(edge.pid())?;
            let span = d.last.saturating_sub(d.first).as_secs_f64();
            println!(
                "  {kind} #{cycle}: link up; {} of {} at the remote (dup {}): first after {:.2} s, last after {:.2} s: {:.0} msg/s from link up, {:.0} msg/s first to last; edge CPU {:.2} s; edge RSS at the end {:.1} MiB (peak {:.1}), 1.5 s later {:.1} MiB",
                d.unique,
                a.backlog,
                d.duplicates,
                d.first.as_secs_f64(),
                d.last.as_secs_f64(),
                d.unique as f64 / d.last.as_secs_f64().max(1e-9),
                d.unique as f64 / span.max(1e-9),
                loaded.cpu_secs_until(&drained),
                mib(drained.rss_kb),
                mib(drained.hwm_kb),
                mib(after.rss_kb),
            );
            if d.unique < a.backlog {
                return Err(format!("{} of {} arrived", d.unique, a.backlog));
            }
        }
        Ok(())
    }
    .await;
    relay.down();
    edge.broker.stop();
    if !a.keep {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

/// Bytes in the files under `dir`.
fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

async fn backlog(a: &Args, remote: &Broker) -> Result<(), String> {
    println!(
        "backlog: {} QoS 1 messages of 64 B with the link down, {} publishers x {} in flight; then the link returns (bridge MQTT {}, {} in flight; remote {})",
        a.backlog, a.publishers, a.window, a.protocol, a.max_inflight, a.remote
    );
    for kind in &a.edges {
        backlog_run(kind, a, remote).await?;
    }
    Ok(())
}

fn main() -> ExitCode {
    let a = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let remote = match start_remote(&a) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("bridge: remote: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut failed = false;
    for phase in &a.phases {
        let r = rt.block_on(async {
            match phase.as_str() {
                "throughput" => throughput(&a, &remote).await,
                "backlog" => backlog(&a, &remote).await,
                other => Err(format!("unknown phase {other:?} (throughput or backlog)")),
            }
        });
        if let Err(e) = r {
            eprintln!("bridge: {phase}: {e}");
            failed = true;
        }
    }
    remote.stop();
    if !a.keep {
        let _ = std::fs::remove_dir_all(a.dir.join("remote"));
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
