//! Connection scenarios: many idle connections (memory per connection) and
//! many short ones (CONNECT/CONNACK per second).

use crate::client::{self, ConnectOptions};
use crate::histogram::Histogram;
use crate::Clock;
use roost::codec::{Disconnect, Packet, ProtocolVersion};
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// The `i`-th of `sources` loopback source addresses: 127.0.0.1,
/// 127.0.0.2, ... Each gives about 28,000 ephemeral ports towards one
/// broker port, so 100k connections need at least four. With one source
/// the socket is not bound at all: connect() then picks the port knowing the
/// destination and may reuse ports left in TIME_WAIT, which an explicit
/// bind() cannot (short connections leave thousands of those).
pub fn source(i: u64, sources: u32) -> Option<IpAddr> {
    if sources <= 1 {
        return None;
    }
    let k = (i % u64::from(sources)) as u32;
    Some(IpAddr::V4(Ipv4Addr::from(
        u32::from(Ipv4Addr::new(127, 0, 0, 1)) + k,
    )))
}

/// What connecting measured.
#[derive(Debug, Default)]
pub struct ConnReport {
    /// Connections that got a CONNACK.
    pub ok: u64,
    /// Connections that failed (first error kept in `first_error`).
    pub failed: u64,
    /// The first failure.
    pub first_error: Option<String>,
    /// Wall time of the connecting phase, seconds.
    pub elapsed_secs: f64,
    /// TCP connect + CONNECT to CONNACK, nanoseconds.
    pub latency: Histogram,
}

impl ConnReport {
    /// Successful connections per second.
    pub fn per_sec(&self) -> f64 {
        if self.elapsed_secs > 0.0 {
            self.ok as f64 / self.elapsed_secs
        } else {
            0.0
        }
    }
}

fn opts(run_id: &str, i: u64, version: ProtocolVersion) -> ConnectOptions {
    ConnectOptions {
        client_id: format!("lg-{run_id}-c{i}"),
        version,
        clean_start: true,
        // Not 0: rumqttd closes such connections before CONNACK.
        keep_alive: 900,
    }
}

/// Opens `n` connections (each through CONNACK) with at most `concurrency`
/// handshakes at once, spread over `sources` source addresses, and returns
/// them open. Stops early at `deadline`.
pub async fn open_idle(
    addr: SocketAddr,
    version: ProtocolVersion,
    n: u64,
    sources: u32,
    concurrency: usize,
    run_id: &str,
    deadline: Instant,
) -> (Vec<TcpStream>, ConnReport) {
    let clock = Clock::new();
    let mut report = ConnReport::default();
    let mut open = Vec::with_capacity(n as usize);
    let mut set = JoinSet::new();
    let mut next = 0u64;
    let start = Instant::now();
    loop {
        while next < n && set.len() < concurrency && Instant::now() < deadline {
            let o = opts(run_id, next, version);
            let src = source(next, sources);
            let clock = clock.clone();
            set.spawn(async move {
                let t0 = clock.now_ns();
                let stream = client::tcp_connect(addr, src).await?;
                let conn = client::handshake(stream, &o).await?;
                let took = clock.now_ns() - t0;
                let stream = conn
                    .reader
                    .into_inner()
                    .reunite(conn.writer.into_inner())
                    .map_err(io::Error::other)?;
                Ok::<_, io::Error>((stream, took))
            });
            next += 1;
        }
        let Some(r) = set.join_next().await else {
            break;
        };
        match r.map_err(io::Error::other).and_then(|r| r) {
            Ok((stream, took)) => {
                report.ok += 1;
                report.latency.record(took);
                open.push(stream);
            }
            Err(e) => {
                report.failed += 1;
                report.first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    report.elapsed_secs = start.elapsed().as_secs_f64();
    (open, report)
}

/// How long a connection waits for the broker to close it after DISCONNECT.
/// (Not named after TCP's CLOSE_WAIT state, which it is not.)
const BROKER_CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Opens and closes `n` connections (TCP connect, CONNECT, CONNACK,
/// DISCONNECT, close), `concurrency` at a time, until `n` or `deadline`.
pub async fn connect_rate(
    addr: SocketAddr,
    version: ProtocolVersion,
    n: u64,
    sources: u32,
    concurrency: usize,
    run_id: &str,
    deadline: Instant,
) -> ConnReport {
    let clock = Clock::new();
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut set = JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let next = next.clone();
        let clock = clock.clone();
        let run_id = run_id.to_owned();
        set.spawn(async move {
            let mut mine = ConnReport::default();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n || Instant::now() >= deadline {
                    break;
                }
                let t0 = clock.now_ns();
                let result = async {
                    let o = opts(&run_id, i, version);
                    let mut conn = client::connect(addr, source(i, sources), &o).await?;
                    let took = clock.now_ns() - t0;
                    conn.writer
                        .queue(&Packet::Disconnect(Disconnect::default()))?;
                    conn.writer.flush().await?;
                    // The broker closes after a DISCONNECT: let it close
                    // first, so the TIME_WAIT is on its side. Closing here
                    // first left one per connection on this side, and tens
                    // of thousands of them used up the ephemeral ports
                    // (connects slowed for every broker, then failed).
                    let closed = conn.reader.next();
                    let _ = tokio::time::timeout(BROKER_CLOSE_TIMEOUT, closed).await;
                    conn.writer.shutdown().await?;
                    Ok::<_, io::Error>(took)
                }
                .await;
                match result {
                    Ok(took) => {
                        mine.ok += 1;
                        mine.latency.record(took);
                    }
                    Err(e) => {
                        mine.failed += 1;
                        mine.first_error.get_or_insert_with(|| e.to_string());
                    }
                }
            }
            mine
        });
    }
    let mut report = ConnReport::default();
    while let Some(r) = set.join_next().await {
        if let Ok(r) = r {
            report.ok += r.ok;
            report.failed += r.failed;
            report.latency.merge(&r.latency);
            if report.first_error.is_none() {
                report.first_error = r.first_error;
            }
        }
    }
    report.elapsed_secs = start.elapsed().as_secs_f64();
    report
}
