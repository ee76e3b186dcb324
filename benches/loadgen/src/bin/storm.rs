//! `storm`: a reconnect storm over TLS (issue 20, "TLS device fleets"):
//! `--clients` devices connect at the same instant, each through TCP, the
//! TLS handshake and CONNECT/CONNACK, and stay connected until all are in.
//! Three rounds per broker, in one run:
//! 1. `first`: first contact, full handshakes (each device keeps the
//!    session it is given, in a store of its own);
//! 2. `full`: everyone disconnects and reconnects without resuming;
//! 3. `resumed`: everyone reconnects resuming its session (skipped with
//!    `--resume off`).
//!
//! Reported per round: time until every device has its CONNACK (and the
//! handshake rate that makes), handshake p50/p99 (TCP connect started to
//! TLS done), CONNACK p50/p99 (from the same start), how many handshakes
//! the devices saw resumed, the broker's CPU time, and fairness while the
//! storm lasts: the round trip of a QoS 0 PUBLISH from a client connected
//! before the storm to itself, and (roost) the latency of `GET /healthz` on
//! the HTTP listener, each sampled every `--probe-ms`.
//!
//! Brokers are started here (`roost`, `roost-before` with `--baseline`,
//! `mosquitto`) from the certificates in `certs/`, or one already running
//! is driven with `--broker ADDR`.
//!
//! ```sh
//! cargo build --release -p roost -p roost-loadgen
//! ulimit -n 20000
//! target/release/storm --clients 10000 --brokers roost,mosquitto
//! target/release/storm --broker 127.0.0.1:8883 --label mine --clients 2000 --tls any
//! ```

use bytes::Bytes;
use clap::Parser;
use roost::codec::{
    ByteStr, Disconnect, Packet, ProtocolVersion, Publish, QoS, Subscribe, SubscriptionOptions,
};
use roost_loadgen::client::{self, ConnectOptions};
use roost_loadgen::histogram::Histogram;
use roost_loadgen::process::{roost_binary, Broker};
use roost_loadgen::procstat;
use roost_loadgen::tls::{self, TlsClient, Versions};
use std::io;
use std::io::BufRead;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tokio_rustls::rustls::ClientConfig;

/// Reconnect-storm benchmark over TLS: roost and Mosquitto in one run.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Devices connecting at once.
    #[arg(long, default_value_t = 10_000)]
    clients: usize,
    /// Brokers to start, comma-separated: roost, roost-before (needs
    /// --baseline), mosquitto.
    #[arg(long, default_value = "roost,mosquitto", value_delimiter = ',')]
    brokers: Vec<String>,
    /// Drive this broker (MQTT over TLS, on a loopback address) instead of
    /// starting any.
    #[arg(long)]
    broker: Option<SocketAddr>,
    /// With --broker: its name in the report.
    #[arg(long, default_value = "broker")]
    label: String,
    /// With --broker: its HTTP listener, for /healthz.
    #[arg(long)]
    http: Option<SocketAddr>,
    /// With --broker: its process id, for its CPU time.
    #[arg(long)]
    pid: Option<u32>,
    /// CA certificates the server's certificate must chain to.
    #[arg(long, default_value = "certs/ca.pem")]
    ca: PathBuf,
    /// Client certificate chain every device presents ("none": no client
    /// certificate; the brokers started here then do not ask for one).
    #[arg(long, default_value = "certs/client.pem")]
    cert: String,
    /// Client private key.
    #[arg(long, default_value = "certs/client.key")]
    key: PathBuf,
    /// Server certificate and key for the brokers started here.
    #[arg(long, default_value = "certs/server.pem")]
    server_cert: PathBuf,
    /// Server private key.
    #[arg(long, default_value = "certs/server.key")]
    server_key: PathBuf,
    /// Server name the devices ask for (SNI) and check the certificate for.
    #[arg(long, default_value = "localhost")]
    sni: String,
    /// TLS versions the devices offer: 1.3, 1.2 or any.
    #[arg(long, default_value = "1.3")]
    tls: Versions,
    /// Whether the devices keep and resume sessions ("off": no third round).
    #[arg(long, default_value = "on")]
    resume: String,
    /// Sampling interval of the fairness probes, milliseconds.
    #[arg(long, default_value_t = 20)]
    probe_ms: u64,
    /// Upper bound on one round, seconds.
    #[arg(long, default_value_t = 120)]
    round_timeout: u64,
    /// The roost binary (default: `roost` next to this one).
    #[arg(long)]
    roost: Option<PathBuf>,
    /// An older roost binary, run as `roost-before`.
    #[arg(long)]
    baseline: Option<PathBuf>,
    /// The mosquitto binary.
    #[arg(long, default_value = "/usr/sbin/mosquitto")]
    mosquitto: PathBuf,
    /// Where broker configuration files go.
    #[arg(long, default_value = "target/storm-bench")]
    dir: PathBuf,
}

/// A broker under test.
struct Target {
    label: String,
    mqtts: SocketAddr,
    http: Option<SocketAddr>,
    pid: Option<u32>,
    process: Option<Broker>,
}

fn start(name: &str, a: &Args) -> Result<Target, String> {
    let dir = a.dir.join(name);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let abs = |p: &Path| std::fs::canonicalize(p).map_err(|e| format!("{}: {e}", p.display()));
    let client_ca = (a.cert != "none").then(|| abs(&a.ca)).transpose()?;
    let (cert, key) = (abs(&a.server_cert)?, abs(&a.server_key)?);
    match name {
        "mosquitto" => start_mosquitto(a, &dir, &cert, &key, client_ca.as_deref()),
        "roost" | "roost-before" => {
            let binary = if name == "roost" {
                roost_binary(a.roost.clone())?
            } else {
                a.baseline.clone().ok_or("roost-before needs --baseline")?
            };
            start_roost(name, &binary, &dir, &cert, &key, client_ca.as_deref())
        }
        _ => Err(format!("unknown broker {name:?}")),
    }
}

fn start_roost(
    name: &str,
    binary: &Path,
    dir: &Path,
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<Target, String> {
    let ca = client_ca.map_or(String::new(), |ca| format!("client_ca = {:?}\n", ca));
    let conf = dir.join("roost.toml");
    std::fs::write(
        &conf,
        format!(
            "[store]\nbackend = \"memory\"\n\n[[listener]]\ntype = \"tls\"\n\
             bind = \"127.0.0.1:0\"\ncert = {cert:?}\nkey = {key:?}\n{ca}\n\
             [[listener]]\ntype = \"http\"\nbind = \"127.0.0.1:0\"\n"
        ),
    )
    .map_err(|e| e.to_string())?;
    let mut child = Command::new(binary)
        .arg("--config")
        .arg(&conf)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let (mut mqtts, mut http) = (None, None);
    let deadline = Instant::now() + Duration::from_secs(30);
    while mqtts.is_none() || http.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(line) = rx.recv_timeout(left) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{name} never said where it listens"));
        };
        let addr = |l: &str, what: &str| l.split(what).nth(1).and_then(|a| a.trim().parse().ok());
        mqtts = mqtts.or(addr(&line, "mqtts tls listening on "));
        http = http.or(addr(&line, "http stats listening on "));
    }
    let mqtts: SocketAddr = mqtts.expect("seen");
    Ok(Target {
        label: name.into(),
        mqtts,
        http,
        pid: Some(child.id()),
        process: Some(Broker::adopt(child, mqtts)),
    })
}

fn start_mosquitto(
    a: &Args,
    dir: &Path,
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<Target, String> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())?
        .port();
    let auth = match client_ca {
        Some(ca) => format!("cafile {}\nrequire_certificate true\n", ca.display()),
        None => String::new(),
    };
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\ncertfile {}\nkeyfile {}\n{auth}\
             allow_anonymous true\npersistence false\nmax_connections -1\n\
             connection_messages false\nlog_dest stderr\nlog_type error\nlog_type warning\n",
            cert.display(),
            key.display()
        ),
    )
    .map_err(|e| e.to_string())?;
    let child = Command::new(&a.mosquitto)
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", a.mosquitto.display()))?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("an address");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_err() {
        if Instant::now() > deadline {
            return Err("mosquitto does not listen".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(Target {
        label: "mosquitto".into(),
        mqtts: addr,
        http: None,
        pid: Some(child.id()),
        process: Some(Broker::adopt(child, addr)),
    })
}

fn opts(id: &str) -> ConnectOptions {
    ConnectOptions {
        client_id: id.into(),
        version: ProtocolVersion::V3_1_1,
        clean_start: true,
        keep_alive: 900,
    }
}

/// What one device measured, from the instant the round started.
struct Sample {
    /// TCP connect started to TLS handshake done.
    handshake: Duration,
    /// TCP connect started to CONNACK.
    connack: Duration,
    /// Round start to CONNACK.
    done: Duration,
    resumed: bool,
}

/// One round's figures.
#[derive(Default)]
struct RoundReport {
    round: &'static str,
    ok: usize,
    failed: usize,
    first_error: Option<String>,
    all_in: Duration,
    handshake: Histogram,
    connack: Histogram,
    resumed: usize,
    cpu_s: Option<f64>,
    probe: Histogram,
    probe_lost: usize,
    healthz: Histogram,
    healthz_failed: usize,
}

/// Samples of the fairness probes, tagged with the round they fell in
/// (0: between rounds).
#[derive(Default)]
struct Probes {
    phase: AtomicUsize,
    rtt: Mutex<Vec<(usize, Option<Duration>)>>,
    healthz: Mutex<Vec<(usize, Option<Duration>)>>,
}

async fn round(
    t: &Target,
    tls: &TlsClient,
    configs: &[Arc<ClientConfig>],
    name: &'static str,
    phase: usize,
    probes: &Probes,
    limit: Duration,
) -> RoundReport {
    let n = configs.len();
    let (go_tx, go) = watch::channel(None::<Instant>);
    let (release_tx, release) = watch::channel(false);
    let (done_tx, mut done) = mpsc::unbounded_channel::<Result<Sample, String>>();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, config) in configs.iter().enumerate() {
        let (mut go, mut release, done) = (go.clone(), release.clone(), done_tx.clone());
        let (config, tls, addr) = (config.clone(), tls.clone(), t.mqtts);
        tasks.spawn(async move {
            let Ok(start) = go.wait_for(Option::is_some).await.map(|s| s.expect("set")) else {
                return;
            };
            let t0 = Instant::now();
            let connected = async {
                let tcp = client::tcp_connect(addr, None).await?;
                let stream = tls.handshake(config, tcp).await?;
                let handshake = t0.elapsed();
                let resumed = tls::resumed(&stream);
                let conn = client::handshake_over(stream, &opts(&format!("storm-{i}"))).await?;
                let sample = Sample {
                    handshake,
                    connack: t0.elapsed(),
                    done: start.elapsed(),
                    resumed,
                };
                Ok::<_, io::Error>((conn, sample))
            }
            .await;
            let (mut reader, mut writer, _) = match connected {
                Ok((conn, sample)) => {
                    let _ = done.send(Ok(sample));
                    conn
                }
                Err(e) => {
                    let _ = done.send(Err(e.to_string()));
                    return;
                }
            };
            // Everyone stays until all are in, then leaves cleanly: the
            // broker closes after DISCONNECT, so its side keeps the
            // TIME_WAIT and this side's ports stay free.
            let _ = release.wait_for(|r| *r).await;
            let _ = writer.queue(&Packet::Disconnect(Disconnect::default()));
            let _ = writer.flush().await;
            let _ = tokio::time::timeout(Duration::from_secs(10), reader.next()).await;
        });
    }
    drop(done_tx);
    // Let every task reach its start line.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cpu_before = t.pid.and_then(|p| procstat::sample(p).ok());
    let start = Instant::now();
    probes.phase.store(phase, Ordering::SeqCst);
    let _ = go_tx.send(Some(start));
    let mut r = RoundReport {
        round: name,
        ..Default::default()
    };
    let deadline = tokio::time::Instant::from_std(start + limit);
    while r.ok + r.failed < n {
        match tokio::time::timeout_at(deadline, done.recv()).await {
            Ok(Some(Ok(s))) => {
                r.ok += 1;
                r.handshake.record(s.handshake.as_nanos() as u64);
                r.connack.record(s.connack.as_nanos() as u64);
                r.all_in = r.all_in.max(s.done);
                r.resumed += usize::from(s.resumed);
            }
            Ok(Some(Err(e))) => {
                r.failed += 1;
                r.first_error.get_or_insert(e);
            }
            Ok(None) => break,
            Err(_) => {
                r.failed += n - r.ok - r.failed;
                r.first_error.get_or_insert("round timed out".into());
                break;
            }
        }
    }
    probes.phase.store(0, Ordering::SeqCst);
    let cpu_after = t.pid.and_then(|p| procstat::sample(p).ok());
    r.cpu_s = cpu_before.zip(cpu_after).map(|(b, a)| b.cpu_secs_until(&a));
    let _ = release_tx.send(true);
    let drained = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(15), drained)
        .await
        .is_err()
    {
        eprintln!("storm: {}: some devices did not leave in time", t.label);
    }
    for (p, rtt) in probes.rtt.lock().expect("not poisoned").iter() {
        if *p == phase {
            match rtt {
                Some(d) => r.probe.record(d.as_nanos() as u64),
                None => r.probe_lost += 1,
            }
        }
    }
    for (p, h) in probes.healthz.lock().expect("not poisoned").iter() {
        if *p == phase {
            match h {
                Some(d) => r.healthz.record(d.as_nanos() as u64),
                None => r.healthz_failed += 1,
            }
        }
    }
    r
}

/// A client connected before the storm that publishes to itself (QoS 0)
/// every `every` and records each round trip, until `stop`.
async fn probe_publish(
    t_addr: SocketAddr,
    tls: TlsClient,
    probes: Arc<Probes>,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) -> io::Result<()> {
    let tcp = client::tcp_connect(t_addr, None).await?;
    let stream = tls.handshake(tls.device(false), tcp).await?;
    let (mut reader, mut writer, _) = client::handshake_over(stream, &opts("storm-probe")).await?;
    let topic = "storm/probe";
    writer.queue(&Packet::Subscribe(Subscribe::new(
        std::num::NonZeroU16::MIN,
        vec![(
            ByteStr::from(topic),
            SubscriptionOptions::new(QoS::AtMostOnce),
        )],
    )))?;
    writer.flush().await?;
    while !matches!(reader.next().await?, Some(Packet::SubAck(_)) | None) {}
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return Ok(()),
        }
        let phase = probes.phase.load(Ordering::SeqCst);
        let sent = Instant::now();
        writer.queue(&Packet::Publish(Publish::new(
            topic,
            Bytes::from_static(b"ping"),
        )))?;
        writer.flush().await?;
        let back = async {
            loop {
                match reader.next().await? {
                    Some(Packet::Publish(_)) => return Ok(()),
                    Some(_) => continue,
                    None => return Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
                }
            }
        };
        let rtt = match tokio::time::timeout(Duration::from_secs(30), back).await {
            Ok(r) => r.map(|()| sent.elapsed()).ok(),
            Err(_) => None,
        };
        probes.rtt.lock().expect("not poisoned").push((phase, rtt));
        if rtt.is_none() {
            return Err(io::Error::other("the probe's message did not come back"));
        }
    }
}

/// `GET /healthz` on a new connection every `every`, as a load balancer's
/// health check would, until `stop`.
async fn probe_healthz(
    addr: SocketAddr,
    probes: Arc<Probes>,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let phase = probes.phase.load(Ordering::SeqCst);
        let sent = Instant::now();
        let check = async {
            let mut s = tokio::net::TcpStream::connect(addr).await?;
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: storm\r\nConnection: close\r\n\r\n")
                .await?;
            let mut body = Vec::new();
            s.read_to_end(&mut body).await?;
            if body.starts_with(b"HTTP/1.1 200") {
                Ok(())
            } else {
                Err(io::Error::other("not 200"))
            }
        };
        let took = match tokio::time::timeout(Duration::from_secs(30), check).await {
            Ok(Ok(())) => Some(sent.elapsed()),
            _ => None,
        };
        probes
            .healthz
            .lock()
            .expect("not poisoned")
            .push((phase, took));
    }
}

fn ms(h: &Histogram, q: f64) -> String {
    if h.count() == 0 {
        return "-".into();
    }
    let ns = if q >= 1.0 { h.max() } else { h.quantile(q) };
    format!("{:.1}", ns as f64 / 1e6)
}

async fn run_broker(t: &Target, a: &Args, tls: &TlsClient) -> Result<Vec<RoundReport>, String> {
    let resume = a.resume != "off";
    let every = Duration::from_millis(a.probe_ms.max(1));
    let limit = Duration::from_secs(a.round_timeout);
    let probes = Arc::new(Probes::default());
    let (stop_tx, stop) = watch::channel(false);
    // The probes get a thread and a runtime of their own: on the storm's
    // runtime they would wait behind thousands of this side's handshakes,
    // and measure the load generator instead of the broker.
    let probing = {
        let (addr, http, tls, probes) = (t.mqtts, t.http, tls.clone(), probes.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(async move {
                let health = http
                    .map(|h| tokio::spawn(probe_healthz(h, probes.clone(), every, stop.clone())));
                let published = probe_publish(addr, tls, probes, every, stop).await;
                if let Some(h) = health {
                    let _ = h.await;
                }
                published.map_err(|e| e.to_string())
            })
        })
    };
    // Each device keeps its own sessions, as a real one does.
    let devices: Vec<_> = (0..a.clients).map(|_| tls.device(resume)).collect();
    let forgetful = vec![tls.device(false); a.clients];
    let mut rounds = vec![
        round(t, tls, &devices, "first", 1, &probes, limit).await,
        round(t, tls, &forgetful, "full", 2, &probes, limit).await,
    ];
    if resume {
        rounds.push(round(t, tls, &devices, "resumed", 3, &probes, limit).await);
    }
    let _ = stop_tx.send(true);
    let joined = tokio::task::spawn_blocking(move || probing.join()).await;
    match joined {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => eprintln!("storm: {}: publish probe: {e}", t.label),
        _ => eprintln!("storm: {}: the probe thread failed", t.label),
    }
    Ok(rounds)
}

fn print_round(label: &str, clients: usize, r: &RoundReport) {
    println!(
        "{label} {}: {}/{clients} connected in {:.2} s ({:.0}/s), {} resumed; handshake p50 {} ms p99 {} ms; \
         CONNACK p50 {} ms p99 {} ms; broker CPU {}; probe RTT p50 {} p99 {} max {} ms ({} lost); \
         /healthz p50 {} p99 {} max {} ms ({} failed){}",
        r.round,
        r.ok,
        r.all_in.as_secs_f64(),
        r.ok as f64 / r.all_in.as_secs_f64().max(1e-9),
        r.resumed,
        ms(&r.handshake, 0.5),
        ms(&r.handshake, 0.99),
        ms(&r.connack, 0.5),
        ms(&r.connack, 0.99),
        r.cpu_s.map_or("-".into(), |c| format!("{c:.2} s")),
        ms(&r.probe, 0.5),
        ms(&r.probe, 0.99),
        ms(&r.probe, 1.0),
        r.probe_lost,
        ms(&r.healthz, 0.5),
        ms(&r.healthz, 0.99),
        ms(&r.healthz, 1.0),
        r.healthz_failed,
        r.first_error
            .as_ref()
            .map_or(String::new(), |e| format!("; {} failed, first: {e}", r.failed)),
    );
}

fn table(all: &[(String, Vec<RoundReport>)], clients: usize) {
    println!();
    println!(
        "| broker | round | connected | all in (s) | handshakes/s | handshake p50 / p99 (ms) \
         | CONNACK p50 / p99 (ms) | resumed | broker CPU (s) | probe RTT p50 / p99 / max (ms) \
         | /healthz p50 / p99 / max (ms) |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (label, rounds) in all {
        for r in rounds {
            let health = if r.healthz.count() == 0 && r.healthz_failed == 0 {
                "n/a".to_string()
            } else {
                format!(
                    "{} / {} / {}",
                    ms(&r.healthz, 0.5),
                    ms(&r.healthz, 0.99),
                    ms(&r.healthz, 1.0)
                )
            };
            // With failures nobody can say when all would have been in.
            let all_in = if r.failed == 0 {
                format!("{:.2}", r.all_in.as_secs_f64())
            } else {
                format!("never ({} failed)", r.failed)
            };
            println!(
                "| {label} | {} | {}/{clients} | {all_in} | {:.0} | {} / {} | {} / {} | {} | {} | {} / {} / {} | {health} |",
                r.round,
                r.ok,
                r.ok as f64 / r.all_in.as_secs_f64().max(1e-9),
                ms(&r.handshake, 0.5),
                ms(&r.handshake, 0.99),
                ms(&r.connack, 0.5),
                ms(&r.connack, 0.99),
                r.resumed,
                r.cpu_s.map_or("-".into(), |c| format!("{c:.2}")),
                ms(&r.probe, 0.5),
                ms(&r.probe, 0.99),
                ms(&r.probe, 1.0),
            );
        }
    }
    // Ratios: each broker's resumed round against its full one, and the
    // first broker against each other, round by round.
    println!();
    for (label, rounds) in all {
        let by = |n: &str| rounds.iter().find(|r| r.round == n);
        let complete = |r: &&RoundReport| r.failed == 0;
        if let (Some(f), Some(r)) = (by("full").filter(complete), by("resumed").filter(complete)) {
            println!(
                "{label}: resumed / full time to all connected = {:.2}, CPU {:.2}",
                r.all_in.as_secs_f64() / f.all_in.as_secs_f64(),
                r.cpu_s.unwrap_or(f64::NAN) / f.cpu_s.unwrap_or(f64::NAN)
            );
        }
    }
    if let Some((first, base)) = all.first() {
        for (label, rounds) in &all[1..] {
            for r in rounds {
                let both = |b: &&RoundReport| b.round == r.round && b.failed == 0 && r.failed == 0;
                if let Some(b) = base.iter().find(both) {
                    println!(
                        "{first} / {label}, {}: time to all connected {:.2}",
                        r.round,
                        b.all_in.as_secs_f64() / r.all_in.as_secs_f64()
                    );
                }
            }
        }
    }
}

async fn run(a: Args) -> Result<(), String> {
    let identity = (a.cert != "none").then(|| (Path::new(&a.cert), a.key.as_path()));
    let tls = TlsClient::new(&a.ca, identity, &a.sni, a.tls)?;
    let names = match a.broker {
        Some(addr) if !addr.ip().is_loopback() => {
            return Err(format!("--broker {addr}: only loopback addresses"))
        }
        Some(_) => vec![None],
        None => a.brokers.iter().cloned().map(Some).collect(),
    };
    let mut all = Vec::new();
    for name in names {
        let t = match (name, a.broker) {
            (Some(name), _) => start(&name, &a)?,
            (None, Some(addr)) => Target {
                label: a.label.clone(),
                mqtts: addr,
                http: a.http,
                pid: a.pid,
                process: None,
            },
            (None, None) => unreachable!("a name for every broker to start"),
        };
        eprintln!("storm: {} on {}", t.label, t.mqtts);
        let rounds = run_broker(&t, &a, &tls).await;
        if let Some(p) = t.process {
            p.stop();
        }
        let rounds = rounds?;
        for r in &rounds {
            print_round(&t.label, a.clients, r);
        }
        all.push((t.label, rounds));
    }
    table(&all, a.clients);
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Args::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("storm: {e}");
            ExitCode::FAILURE
        }
    }
}
