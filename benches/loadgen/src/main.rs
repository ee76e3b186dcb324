//! `loadgen`: drives an MQTT broker with message flows, idle connections or
//! short connections, and reports throughput, latency, lost and duplicated
//! messages, and (given `--pid`) the broker's CPU time and peak RSS.
//!
//! ```sh
//! loadgen --broker 127.0.0.1:1883 --pid $(pidof roost) fan-in --qos 1 --size 64
//! loadgen fan-out --qos 0 --rate 5000 --messages 10000
//! loadgen idle --connections 10000 --sources 4
//! loadgen --broker 127.0.0.1:8883 idle --connections 10000 --tls-ca certs/ca.pem
//! loadgen --broker 127.0.0.1:1883 --sub-broker 127.0.0.1:1884 --pid $A --pid $B pairs
//! loadgen table --input results.tsv
//! ```

use clap::{Args, Parser, Subcommand, ValueEnum};
use roost::codec::{ProtocolVersion, QoS};
use roost_loadgen::conns::{self, ConnReport};
use roost_loadgen::flow::{self, FlowConfig, Topology};
use roost_loadgen::histogram::Histogram;
use roost_loadgen::monitor::{Usage, Watch};
use roost_loadgen::report::{self, Record};
use roost_loadgen::secure::{self, Secure};
use roost_loadgen::Clock;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::time::Instant;

/// Load generator for MQTT brokers (MQTT 3.1.1 and 5.0, loopback only).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Args)]
struct Common {
    /// Broker address (a 127.0.0.0/8 address).
    #[arg(long, global = true, default_value = "127.0.0.1:1883")]
    broker: SocketAddr,
    /// Protocol version of every client.
    #[arg(long, global = true, value_enum, default_value_t = Mqtt::V311)]
    mqtt: Mqtt,
    /// Where the subscribers of a flow (fan-in, fan-out, pairs) connect,
    /// when not to --broker: another node of a cluster, or the far end of
    /// a bridge (a 127.0.0.0/8 address). Publishers stay on --broker.
    #[arg(long, global = true, value_name = "ADDR")]
    sub_broker: Option<SocketAddr>,
    /// Broker process id: report its CPU time and peak RSS. Repeat it for a
    /// broker made of several processes (cluster nodes, their NATS
    /// server): each one's CPU is reported, the record's CPU and peak RSS
    /// are their sums, and its `cpu_each` column holds each one's CPU
    /// seconds in the order given.
    #[arg(long, global = true, value_name = "PID")]
    pid: Vec<u32>,
    /// Broker label for `--record`.
    #[arg(long, global = true, default_value = "broker")]
    label: String,
    /// Append the result as a tab-separated record to this file.
    #[arg(long, global = true)]
    record: Option<PathBuf>,
    /// Scenario name for `--record` (default: derived from the arguments).
    #[arg(long, global = true)]
    name: Option<String>,
    /// Upper bound on the run's main phase, seconds.
    #[arg(long, global = true, default_value_t = 60.0)]
    duration: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mqtt {
    /// MQTT 3.1.1.
    #[value(name = "3.1.1")]
    V311,
    /// MQTT 5.0.
    #[value(name = "5")]
    V5,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// N publishers to one subscriber on one topic.
    FanIn(FlowArgs),
    /// One publisher to N subscribers of one topic.
    FanOut(FlowArgs),
    /// N publisher/subscriber pairs, a topic each.
    Pairs(FlowArgs),
    /// Open N idle connections and report the broker's RSS per connection.
    Idle(IdleArgs),
    /// CONNECT/CONNACK/DISCONNECT over many short connections (the broker
    /// closes each, as MQTT has it after a DISCONNECT).
    Connrate(RateArgs),
    /// Print the Markdown tables for a file of records.
    Table {
        /// The records (written with --record).
        #[arg(long)]
        input: PathBuf,
    },
}

#[derive(Debug, Args)]
struct FlowArgs {
    /// Publishers (fan-in), subscribers (fan-out) or pairs (pairs); default
    /// 10, 100 and 50.
    #[arg(long)]
    clients: Option<usize>,
    /// QoS of publishes and subscriptions.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=1))]
    qos: u8,
    /// Payload size, bytes (at least 20: timestamp, publisher, sequence).
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Messages published in total.
    #[arg(long, default_value_t = 50_000)]
    messages: u64,
    /// Total delivery rate, messages per second (default: full speed). For
    /// fan-out the publisher sends this divided by the subscribers. The
    /// publishers' schedules are spread evenly, for a steady total rate.
    #[arg(long)]
    rate: Option<f64>,
    /// QoS 1 publishes in flight per publisher.
    #[arg(long, default_value_t = 64)]
    window: u16,
    /// Persistent sessions (Clean Session 0; 5.0: Session Expiry 1 hour).
    #[arg(long)]
    persistent: bool,
    /// Seconds without deliveries after which the run ends.
    #[arg(long, default_value_t = 3.0)]
    drain_timeout: f64,
}

#[derive(Debug, Args)]
struct IdleArgs {
    /// Connections to open.
    #[arg(long, default_value_t = 10_000)]
    connections: u64,
    /// Source addresses 127.0.0.1..127.0.0.K to spread them over (about
    /// 28,000 connections each).
    #[arg(long, default_value_t = 1)]
    sources: u32,
    /// Handshakes in progress at once.
    #[arg(long, default_value_t = 128)]
    concurrency: usize,
    /// Seconds to wait after the last CONNACK before reading the RSS.
    #[arg(long, default_value_t = 1.0)]
    settle: f64,
    /// Seconds to hold the connections open after that.
    #[arg(long, default_value_t = 0.0)]
    hold: f64,
    /// Connect over TLS, trusting the CA certificates in this PEM file.
    #[arg(long)]
    tls_ca: Option<PathBuf>,
    /// TLS server name (SNI) to ask for and verify.
    #[arg(long, default_value = "localhost", requires = "tls_ca")]
    tls_sni: String,
    /// Client certificate chain (PEM) to present: mutual TLS.
    #[arg(long, requires_all = ["tls_ca", "tls_key"])]
    tls_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// MQTT over WebSocket on TLS (WSS) with this upgrade path.
    #[arg(long, requires = "tls_ca")]
    wss_path: Option<String>,
}

#[derive(Debug, Args)]
struct RateArgs {
    /// Connections to make.
    #[arg(long, default_value_t = 5_000)]
    connections: u64,
    /// Connections in progress at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Source addresses 127.0.0.1..127.0.0.K to spread them over (1: let
    /// connect() choose, which reuses TIME_WAIT ports; best here).
    #[arg(long, default_value_t = 1)]
    sources: u32,
}

/// Starts watching the broker's processes (`--pid`); a process that
/// cannot be read is reported and the run goes on unmeasured.
fn watch(pids: &[u32]) -> Option<Watch> {
    match Watch::start(pids) {
        Ok(w) => Some(w),
        Err(e) => {
            eprintln!("loadgen: cannot watch the broker: {e}");
            None
        }
    }
}

/// What the watched processes used, once the run is over.
fn usage_of(watch: Option<Watch>) -> Option<Usage> {
    match watch?.finish() {
        Ok(u) => u,
        Err(e) => {
            eprintln!("loadgen: cannot read the broker's usage: {e}");
            None
        }
    }
}

fn run_id() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{:x}", (nanos as u64) ^ u64::from(std::process::id()) << 40)
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

fn latency_line(h: &Histogram) -> String {
    format!(
        "p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms ({} samples)",
        ms(h.quantile(0.5)),
        ms(h.quantile(0.99)),
        ms(h.max()),
        h.count()
    )
}

fn usage_line(u: &Option<Usage>) -> String {
    match u {
        Some(u) => {
            let mut line = format!(
                "broker CPU {:.2} s, peak RSS {:.1} MiB",
                u.cpu_s(),
                u.peak_rss_kb() as f64 / 1024.0
            );
            if u.each.len() > 1 {
                let each: Vec<String> = u
                    .each
                    .iter()
                    .map(|p| {
                        format!(
                            "pid {} {:.2} s, {:.1} MiB",
                            p.pid,
                            p.cpu_s,
                            p.peak_rss_kb as f64 / 1024.0
                        )
                    })
                    .collect();
                line.push_str(&format!(" (sums of: {})", each.join("; ")));
            }
            line
        }
        None => "broker CPU/RSS not measured (no --pid)".into(),
    }
}

/// CPU microseconds per delivered message, for each watched process.
fn cpu_per_message_line(u: &Option<Usage>, delivered: u64) -> Option<String> {
    let u = u.as_ref()?;
    if delivered == 0 {
        return None;
    }
    let each: Vec<String> = u
        .each
        .iter()
        .map(|p| format!("pid {} {:.2} us", p.pid, p.cpu_s * 1e6 / delivered as f64))
        .collect();
    Some(format!("CPU per delivered message: {}", each.join(", ")))
}

fn record_of(common: &Common, scenario: String, unit: &str, value: f64, h: &Histogram) -> Record {
    Record {
        scenario: common.name.clone().unwrap_or(scenario),
        broker: common.label.clone(),
        value,
        unit: unit.into(),
        p50_us: h.quantile(0.5) as f64 / 1e3,
        p99_us: h.quantile(0.99) as f64 / 1e3,
        max_us: h.max() as f64 / 1e3,
        cpu_s: f64::NAN,
        ..Default::default()
    }
}

fn with_usage(mut r: Record, u: &Option<Usage>) -> Record {
    if let Some(u) = u {
        r.cpu_s = u.cpu_s();
        r.peak_rss_kb = u.peak_rss_kb();
        r.cpu_each = u.each.iter().map(|p| p.cpu_s).collect();
    }
    r
}

fn save(common: &Common, r: &Record) -> Result<(), String> {
    if let Some(path) = &common.record {
        r.append_to(path)
            .map_err(|e| format!("cannot append to {}: {e}", path.display()))?;
    }
    Ok(())
}

async fn run_flow(common: &Common, kind: &str, a: FlowArgs) -> Result<(), String> {
    let topology = match kind {
        "fan-in" => Topology::FanIn(a.clients.unwrap_or(10)),
        "fan-out" => Topology::FanOut(a.clients.unwrap_or(100)),
        _ => Topology::Pairs(a.clients.unwrap_or(50)),
    };
    let qos = if a.qos == 1 {
        QoS::AtLeastOnce
    } else {
        QoS::AtMostOnce
    };
    let version = match common.mqtt {
        Mqtt::V311 => ProtocolVersion::V3_1_1,
        Mqtt::V5 => ProtocolVersion::V5,
    };
    let size_name = if a.size % 1024 == 0 {
        format!("{}KiB", a.size / 1024)
    } else {
        format!("{}B", a.size)
    };
    let mut scenario = format!("{kind} q{} {size_name}", a.qos);
    if let Some(r) = a.rate {
        scenario.push_str(&format!(" @{r:.0}/s"));
    }
    if a.persistent {
        scenario.push_str(" persistent");
    }
    if common.mqtt == Mqtt::V5 {
        scenario.push_str(" v5");
    }
    let cfg = FlowConfig {
        addr: common.broker,
        sub_addr: common.sub_broker,
        version,
        topology,
        qos,
        size: a.size,
        messages: a.messages,
        rate: a.rate,
        duration: Duration::from_secs_f64(common.duration),
        window: a.window,
        persistent: a.persistent,
        drain_timeout: Duration::from_secs_f64(a.drain_timeout),
        run_id: run_id(),
    };
    let mut watching = None;
    let report = flow::run(cfg, Clock::new(), || watching = watch(&common.pid))
        .await
        .map_err(|e| format!("{scenario}: {e}"))?;
    let usage = usage_of(watching);
    println!(
        "{scenario} [{}]: sent {} (acked {}), delivered {}/{} in {:.3} s = {:.0} msg/s; lost {}, dup {}",
        common.label,
        report.sent,
        report.acked,
        report.delivered,
        report.expected,
        report.elapsed_secs,
        report.delivered_per_sec(),
        report.lost,
        report.duplicates
    );
    println!("  latency {}", latency_line(&report.latency));
    println!("  {}", usage_line(&usage));
    if let Some(line) = cpu_per_message_line(&usage, report.delivered) {
        println!("  {line}");
    }
    for e in &report.errors {
        println!("  error: {e}");
    }
    let mut r = record_of(
        common,
        scenario,
        "msg/s",
        report.delivered_per_sec(),
        &report.latency,
    );
    r.lost = report.lost;
    r.dup = report.duplicates;
    r.count = report.delivered;
    r.note = format!("{}/{} delivered", report.delivered, report.expected);
    if let Some(e) = report.errors.first() {
        r.note
            .push_str(&format!("; {} errors, first: {e}", report.errors.len()));
    }
    save(common, &with_usage(r, &usage))
}

fn conn_summary(r: &ConnReport) -> String {
    let mut s = format!("{} ok, {} failed", r.ok, r.failed);
    if let Some(e) = &r.first_error {
        s.push_str(&format!(" (first error: {e})"));
    }
    s
}

/// The connections `idle` holds open.
enum Held {
    Tcp(#[allow(dead_code)] Vec<tokio::net::TcpStream>),
    Secure(#[allow(dead_code)] Vec<secure::Held>),
}

async fn run_idle(common: &Common, a: IdleArgs) -> Result<(), String> {
    let watching = watch(&common.pid);
    let version = match common.mqtt {
        Mqtt::V311 => ProtocolVersion::V3_1_1,
        Mqtt::V5 => ProtocolVersion::V5,
    };
    let deadline = Instant::now() + Duration::from_secs_f64(common.duration);
    let (open, report) = match &a.tls_ca {
        None => {
            let (open, report) = conns::open_idle(
                common.broker,
                version,
                a.connections,
                a.sources,
                a.concurrency,
                &run_id(),
                deadline,
            )
            .await;
            (Held::Tcp(open), report)
        }
        Some(ca) => {
            let client = a.tls_cert.as_deref().zip(a.tls_key.as_deref());
            let secure = Secure::new(ca, &a.tls_sni, client, a.wss_path.clone())
                .map_err(|e| e.to_string())?;
            let (open, report) = secure::open_idle(
                &secure,
                common.broker,
                version,
                a.connections,
                a.sources,
                a.concurrency,
                &run_id(),
                deadline,
            )
            .await;
            (Held::Secure(open), report)
        }
    };
    tokio::time::sleep(Duration::from_secs_f64(a.settle)).await;
    let usage = usage_of(watching);
    let transport = match (&a.tls_ca, &a.wss_path, &a.tls_cert) {
        (None, ..) => "",
        (Some(_), None, None) => " tls",
        (Some(_), None, Some(_)) => " mtls",
        (Some(_), Some(_), None) => " wss",
        (Some(_), Some(_), Some(_)) => " mwss",
    };
    let scenario = format!("idle{transport} {}k conns", a.connections / 1000);
    println!(
        "{scenario} [{}]: {} in {:.2} s ({:.0}/s); handshake {}",
        common.label,
        conn_summary(&report),
        report.elapsed_secs,
        report.per_sec(),
        latency_line(&report.latency)
    );
    let per_conn_kib = usage.as_ref().map_or(0.0, |u| {
        u.rss_after_kb().saturating_sub(u.rss_before_kb()) as f64 / report.ok.max(1) as f64
    });
    if let Some(u) = &usage {
        println!(
            "  broker RSS {:.1} -> {:.1} MiB: {:.2} KiB per connection; {}",
            u.rss_before_kb() as f64 / 1024.0,
            u.rss_after_kb() as f64 / 1024.0,
            per_conn_kib,
            usage_line(&usage)
        );
        if u.each.len() > 1 {
            let each: Vec<String> = u
                .each
                .iter()
                .map(|p| {
                    let grown = p.rss_after_kb.saturating_sub(p.rss_before_kb);
                    format!(
                        "pid {} {:.2} KiB",
                        p.pid,
                        grown as f64 / report.ok.max(1) as f64
                    )
                })
                .collect();
            println!("  RSS growth per connection: {}", each.join(", "));
        }
    }
    if a.hold > 0.0 {
        tokio::time::sleep(Duration::from_secs_f64(a.hold)).await;
    }
    drop(open);
    let mut r = record_of(common, scenario, "KiB/conn", per_conn_kib, &report.latency);
    r.lost = report.failed;
    r.count = report.ok;
    r.note = format!("{} connected", conn_summary(&report));
    save(common, &with_usage(r, &usage))
}

async fn run_connrate(common: &Common, a: RateArgs) -> Result<(), String> {
    let watching = watch(&common.pid);
    let version = match common.mqtt {
        Mqtt::V311 => ProtocolVersion::V3_1_1,
        Mqtt::V5 => ProtocolVersion::V5,
    };
    let deadline = Instant::now() + Duration::from_secs_f64(common.duration);
    let report = conns::connect_rate(
        common.broker,
        version,
        a.connections,
        a.sources,
        a.concurrency,
        &run_id(),
        deadline,
    )
    .await;
    let usage = usage_of(watching);
    let scenario = format!("connect rate x{}", a.concurrency);
    println!(
        "{scenario} [{}]: {} in {:.2} s = {:.0} conn/s; handshake {}",
        common.label,
        conn_summary(&report),
        report.elapsed_secs,
        report.per_sec(),
        latency_line(&report.latency)
    );
    println!("  {}", usage_line(&usage));
    let mut r = record_of(
        common,
        scenario,
        "conn/s",
        report.per_sec(),
        &report.latency,
    );
    r.lost = report.failed;
    r.count = report.ok;
    r.note = conn_summary(&report);
    save(common, &with_usage(r, &usage))
}

/// The load generator drives brokers on this machine only: it would
/// flood anything else.
fn check_loopback(common: &Common) -> Result<(), String> {
    let addrs = [
        ("--broker", Some(common.broker)),
        ("--sub-broker", common.sub_broker),
    ];
    for (flag, addr) in addrs {
        if let Some(addr) = addr.filter(|a| !a.ip().is_loopback()) {
            return Err(format!(
                "{flag} {addr}: only loopback addresses are allowed"
            ));
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let common = &cli.common;
    let result = match cli.cmd {
        Cmd::Table { input } => std::fs::read_to_string(&input)
            .map_err(|e| format!("cannot read {}: {e}", input.display()))
            .map(|text| {
                let records: Vec<Record> = text.lines().filter_map(Record::from_tsv).collect();
                print!("{}", report::markdown(&records));
            }),
        cmd => match check_loopback(common) {
            Err(e) => Err(e),
            Ok(()) => match cmd {
                Cmd::FanIn(a) => run_flow(common, "fan-in", a).await,
                Cmd::FanOut(a) => run_flow(common, "fan-out", a).await,
                Cmd::Pairs(a) => run_flow(common, "pairs", a).await,
                Cmd::Idle(a) => run_idle(common, a).await,
                Cmd::Connrate(a) => run_connrate(common, a).await,
                Cmd::Table { .. } => Ok(()),
            },
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadgen: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("loadgen").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn subscribers_may_go_to_another_broker() {
        let cli = parse(&[
            "--broker",
            "127.0.0.1:18831",
            "--sub-broker",
            "127.0.0.1:18832",
            "--pid",
            "10",
            "--pid",
            "11",
            "pairs",
            "--clients",
            "4",
        ]);
        assert_eq!(cli.common.broker.port(), 18831);
        assert_eq!(cli.common.sub_broker.map(|a| a.port()), Some(18832));
        assert_eq!(cli.common.pid, vec![10, 11]);
        assert_eq!(check_loopback(&cli.common), Ok(()));
        // Global: also after the subcommand.
        let cli = parse(&["fan-out", "--sub-broker", "127.0.0.1:18832"]);
        assert_eq!(cli.common.sub_broker.map(|a| a.port()), Some(18832));
        assert_eq!(parse(&["fan-in"]).common.sub_broker, None);
    }

    #[test]
    fn only_loopback_brokers() {
        let cli = parse(&["--sub-broker", "10.0.0.1:1883", "pairs"]);
        let e = check_loopback(&cli.common).unwrap_err();
        assert!(e.starts_with("--sub-broker 10.0.0.1:1883"), "{e}");
        let cli = parse(&["--broker", "10.0.0.1:1883", "pairs"]);
        let e = check_loopback(&cli.common).unwrap_err();
        assert!(e.starts_with("--broker 10.0.0.1:1883"), "{e}");
    }
}
