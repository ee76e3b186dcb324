//! `restore`: how long a broker takes to come back with a large store.
//!
//! Fills a store directory directly through the `roost_storage::Store`
//! trait (by default 100k persistent sessions with one subscription each and
//! 1M retained messages of 64 bytes, in large batches), then times
//! (a) opening the store and `Store::load()` (then `Store::scan()`, keeping
//! nothing), and (b) a full broker start on
//! that directory: `roost --store X --data-dir DIR --tcp 127.0.0.1:0`, from
//! spawning it to the CONNACK of a first client (the broker restores before
//! it handles the first CONNECT).
//!
//! ```sh
//! cargo build --release --all-features -p roost -p roost-loadgen
//! target/release/restore --stores redb,sled
//! ```

use bytes::Bytes;
use clap::Parser;
use roost::codec::ProtocolVersion;
use roost_loadgen::client::{self, ConnectOptions};
use roost_loadgen::procstat;
use roost_storage::{
    MessageRecord, Op, RedbStore, SessionRecord, SledStore, Store, SubscriptionRecord,
};
use std::io::BufRead;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Restore benchmark for the roost broker's persistent stores.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Backends to measure, comma-separated: redb, sled.
    #[arg(long, default_value = "redb,sled", value_delimiter = ',')]
    stores: Vec<String>,
    /// Where the store directories go (`DIR/redb`, `DIR/sled`).
    #[arg(long, default_value = "target/restore-bench")]
    dir: PathBuf,
    /// Persistent sessions, each with one subscription.
    #[arg(long, default_value_t = 100_000)]
    sessions: u64,
    /// Retained messages (64-byte payloads).
    #[arg(long, default_value_t = 1_000_000)]
    retained: u64,
    /// Ops per `Store::apply` while filling.
    #[arg(long, default_value_t = 50_000)]
    batch: usize,
    /// Reuse a store directory filled by an earlier run with the same counts.
    #[arg(long)]
    reuse: bool,
    /// The roost binary (default: `roost` next to this one).
    #[arg(long)]
    roost: Option<PathBuf>,
    /// Longest wait for the broker's CONNACK, seconds.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
}

fn open(kind: &str, dir: &Path) -> Result<Box<dyn Store>, String> {
    match kind {
        "redb" => RedbStore::open(dir)
            .map(|s| Box::new(s) as Box<dyn Store>)
            .map_err(|e| e.to_string()),
        "sled" => SledStore::open(dir)
            .map(|s| Box::new(s) as Box<dyn Store>)
            .map_err(|e| e.to_string()),
        other => Err(format!("unknown store {other:?} (redb or sled)")),
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Writes the data set in batches of `batch` ops.
fn fill(store: &dyn Store, a: &Args) -> Result<(), String> {
    let mut ops = Vec::with_capacity(a.batch);
    let flush = |ops: &mut Vec<Op>| -> Result<(), String> {
        if !ops.is_empty() {
            store.apply(ops).map_err(|e| e.to_string())?;
            ops.clear();
        }
        Ok(())
    };
    let disconnected = Some(now_ms());
    for i in 0..a.sessions {
        let client_id = format!("device-{i:07}");
        ops.push(Op::PutSession(SessionRecord {
            client_id: client_id.clone(),
            protocol_level: 4,
            expiry_interval: u32::MAX,
            disconnected_at_ms: disconnected,
            will: None,
            owner: roost_storage::SessionOwner::Anonymous,
        }));
        ops.push(Op::PutSubscription {
            client_id,
            subscription: SubscriptionRecord {
                filter: format!("devices/{i}/cmd/#"),
                qos: 1,
                no_local: false,
                retain_as_published: false,
                retain_handling: 0,
                subscription_identifier: None,
            },
        });
        if ops.len() >= a.batch {
            flush(&mut ops)?;
        }
    }
    let payload = Bytes::from(vec![0x5a; 64]);
    for i in 0..a.retained {
        ops.push(Op::PutRetained {
            message: MessageRecord {
                topic: format!("devices/{}/sensors/{}", i / 10, i % 10),
                payload: payload.clone(),
                qos: 1,
                retain: true,
                properties: Default::default(),
                expires_at_ms: None,
            },
        });
        if ops.len() >= a.batch {
            flush(&mut ops)?;
        }
    }
    flush(&mut ops)
}

fn dir_size(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
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

/// Starts the broker on `dir` and times it to the first CONNACK.
fn broker_start(kind: &str, dir: &Path, roost: &Path, timeout: Duration) -> Result<(), String> {
    let t0 = Instant::now();
    let mut child = Command::new(roost)
        .args(["--store", kind, "--tcp", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", roost.display()))?;
    let pid = child.id();
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if let Some(addr) = line.split("mqtt tcp listening on ").nth(1) {
                let _ = tx.send(addr.trim().to_owned());
            }
        }
    });
    let result = (|| {
        let addr: SocketAddr = rx
            .recv_timeout(timeout)
            .map_err(|_| "the broker never said where it listens".to_owned())?
            .parse()
            .map_err(|e| format!("listening address: {e}"))?;
        let listening = t0.elapsed();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let opts = ConnectOptions {
            client_id: "restore-probe".into(),
            version: ProtocolVersion::V3_1_1,
            clean_start: true,
            keep_alive: 60,
        };
        let t1 = Instant::now();
        rt.block_on(async {
            tokio::time::timeout(timeout, client::connect(addr, None, &opts)).await
        })
        .map_err(|_| "no CONNACK in time".to_owned())?
        .map_err(|e| format!("connect: {e}"))?;
        let connack = t1.elapsed();
        let total = t0.elapsed();
        let mem = procstat::sample(pid).map_err(|e| e.to_string())?;
        println!(
            "  broker start: listening after {:.3} s, CONNACK {:.3} s later: {:.3} s from spawn to CONNACK; \
             broker RSS {:.0} MiB (peak {:.0} MiB), CPU {:.2} s",
            listening.as_secs_f64(),
            connack.as_secs_f64(),
            total.as_secs_f64(),
            mem.rss_kb as f64 / 1024.0,
            mem.hwm_kb as f64 / 1024.0,
            mem.cpu_ticks as f64 / procstat::TICKS_PER_SEC,
        );
        Ok(())
    })();
    // SIGTERM lets the broker close its store cleanly; kill it if it hangs.
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
        }
    }
    result
}

fn bench(kind: &str, a: &Args, roost: &Path) -> Result<(), String> {
    let dir = a.dir.join(kind);
    let marker = dir.join(format!("filled-{}-{}", a.sessions, a.retained));
    println!(
        "{kind}: {} sessions x 1 subscription, {} retained x 64 B, in {}",
        a.sessions,
        a.retained,
        dir.display()
    );
    if !(a.reuse && marker.exists()) {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let t = Instant::now();
        let store = open(kind, &dir)?;
        fill(store.as_ref(), a)?;
        store.flush().map_err(|e| e.to_string())?;
        drop(store);
        println!(
            "  fill: {:.2} s, {:.0} MiB on disk",
            t.elapsed().as_secs_f64(),
            dir_size(&dir) as f64 / (1024.0 * 1024.0)
        );
        std::fs::write(&marker, b"").map_err(|e| e.to_string())?;
    }
    let t = Instant::now();
    let store = open(kind, &dir)?;
    let opened = t.elapsed();
    let t = Instant::now();
    let snapshot = store.load().map_err(|e| e.to_string())?;
    let loaded = t.elapsed();
    println!(
        "  Store::load: open {:.3} s + load {:.3} s = {:.3} s ({} sessions, {} retained)",
        opened.as_secs_f64(),
        loaded.as_secs_f64(),
        (opened + loaded).as_secs_f64(),
        snapshot.sessions.len(),
        snapshot.retained.len()
    );
    drop(snapshot);
    // The streaming read the broker's compact index is built from: every
    // record passed and none kept, so its time is the store's alone.
    let t = Instant::now();
    let mut records = 0u64;
    store
        .scan(&mut |_| {
            records += 1;
            Ok(())
        })
        .map_err(|e| e.to_string())?;
    println!(
        "  Store::scan: {:.3} s ({records} records, none kept)",
        t.elapsed().as_secs_f64()
    );
    drop(store);
    broker_start(kind, &dir, roost, Duration::from_secs(a.timeout))
}

fn main() -> ExitCode {
    let a = Args::parse();
    let roost = match a
        .roost
        .clone()
        .map(Ok)
        .unwrap_or_else(|| std::env::current_exe().map(|p| p.with_file_name("roost")))
    {
        Ok(p) => p,
        Err(e) => {
            eprintln!("restore: cannot find the roost binary: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut failed = false;
    for kind in &a.stores {
        if let Err(e) = bench(kind, &a, &roost) {
            eprintln!("restore: {kind}: {e}");
            failed = true;
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
