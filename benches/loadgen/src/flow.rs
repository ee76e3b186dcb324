//! Message-flow scenarios: fan-in, fan-out and point-to-point pairs, at full
//! speed or at a fixed rate, QoS 0 or 1.

use crate::client::{self, Conn, ConnectOptions};
use crate::histogram::Histogram;
use crate::payload::{self, Header};
use crate::seqtrack::SeqTracker;
use crate::Clock;
use roost::codec::{ByteStr, Packet, PacketId, ProtocolVersion, PubResp, Publish, QoS, QosPid};
use std::io;
use std::net::SocketAddr;
use std::num::NonZeroU16;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// Who publishes to whom.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topology {
    /// `n` publishers, one subscriber, one topic.
    FanIn(usize),
    /// One publisher, `n` subscribers, one topic.
    FanOut(usize),
    /// `n` publisher/subscriber pairs, one topic per pair.
    Pairs(usize),
}

impl Topology {
    fn publishers(self) -> usize {
        match self {
            Topology::FanIn(n) | Topology::Pairs(n) => n,
            Topology::FanOut(_) => 1,
        }
    }

    fn subscribers(self) -> usize {
        match self {
            Topology::FanOut(n) | Topology::Pairs(n) => n,
            Topology::FanIn(_) => 1,
        }
    }

    fn topic(self, run: &str, publisher: usize) -> String {
        match self {
            Topology::FanIn(_) => format!("bench/{run}/fan-in"),
            Topology::FanOut(_) => format!("bench/{run}/fan-out"),
            Topology::Pairs(_) => format!("bench/{run}/pair/{publisher}"),
        }
    }

    /// Deliveries per publish.
    fn fanout(self) -> usize {
        match self {
            Topology::FanOut(n) => n,
            Topology::FanIn(_) | Topology::Pairs(_) => 1,
        }
    }

    /// The publishers subscriber `sub` hears from.
    fn feeds(self, sub: usize) -> Vec<usize> {
        match self {
            Topology::FanIn(n) => (0..n).collect(),
            Topology::FanOut(_) => vec![0],
            Topology::Pairs(_) => vec![sub],
        }
    }
}

/// One flow run.
#[derive(Debug, Clone)]
pub struct FlowConfig {
    /// Broker address.
    pub addr: SocketAddr,
    /// Where the subscribers connect, when not to `addr`: the remote end
    /// of a bridge from `addr`, for instance.
    pub sub_addr: Option<SocketAddr>,
    /// Protocol version of every client.
    pub version: ProtocolVersion,
    /// Who publishes to whom.
    pub topology: Topology,
    /// QoS of publishes and subscriptions (0 or 1).
    pub qos: QoS,
    /// Payload size in bytes (at least 20).
    pub size: usize,
    /// Messages published in total, spread over the publishers.
    pub messages: u64,
    /// Total delivery rate in messages per second (fan-out: the publisher
    /// sends this divided by the subscribers); `None` is full speed.
    pub rate: Option<f64>,
    /// Publishing stops after this long, whatever was sent.
    pub duration: Duration,
    /// QoS 1 publishes in flight per publisher (capped by the broker's
    /// Receive Maximum).
    pub window: u16,
    /// Persistent sessions (Clean Session 0 / Session Expiry one hour).
    pub persistent: bool,
    /// After the publishers finish, how long subscribers may go without
    /// receiving anything before the run ends.
    pub drain_timeout: Duration,
    /// Unique in topic names and client ids.
    pub run_id: String,
}

/// What a flow run measured.
#[derive(Debug, Clone, Default)]
pub struct FlowReport {
    /// Messages published (QoS 1: written; acknowledged ones are `acked`).
    pub sent: u64,
    /// PUBACKs received by publishers.
    pub acked: u64,
    /// Deliveries expected (sent times subscribers reached).
    pub expected: u64,
    /// Distinct deliveries.
    pub delivered: u64,
    /// Expected deliveries never seen.
    pub lost: u64,
    /// Extra copies received.
    pub duplicates: u64,
    /// From the first publish to the last delivery, seconds.
    pub elapsed_secs: f64,
    /// QoS 1: from the first publish to the last PUBACK, seconds.
    pub acked_secs: f64,
    /// Publish-to-delivery latency, nanoseconds.
    pub latency: Histogram,
    /// Problems worth reporting (connection errors and the like).
    pub errors: Vec<String>,
}

impl FlowReport {
    /// QoS 1: PUBACKs per second, at the publishers.
    pub fn acked_per_sec(&self) -> f64 {
        if self.acked_secs > 0.0 {
            self.acked as f64 / self.acked_secs
        } else {
            0.0
        }
    }

    /// Distinct deliveries per second.
    pub fn delivered_per_sec(&self) -> f64 {
        if self.elapsed_secs > 0.0 {
            self.delivered as f64 / self.elapsed_secs
        } else {
            0.0
        }
    }
}

/// Shared between subscribers and the coordinator.
#[derive(Debug, Default)]
struct Progress {
    received: AtomicU64,
    last_ns: AtomicU64,
}

struct SubResult {
    latency: Histogram,
    tracker: SeqTracker,
}

struct PubResult {
    sent: u64,
    acked: u64,
    first_ns: u64,
    /// When the last PUBACK came (0: none).
    last_ack_ns: u64,
    /// Kept open until the run ends: closing early could reset the
    /// connection under publishes the broker has not read yet.
    _writer: client::Writer<tokio::net::tcp::OwnedWriteHalf>,
    ack_task: tokio::task::JoinHandle<io::Result<()>>,
}

fn options(cfg: &FlowConfig, role: &str, i: usize) -> ConnectOptions {
    ConnectOptions {
        client_id: format!("lg-{}-{role}{i}", cfg.run_id),
        version: cfg.version,
        clean_start: !cfg.persistent,
        keep_alive: 600,
    }
}

/// Runs one flow to completion. `before_start` runs once every client is
/// connected and subscribed, just before the first publish.
pub async fn run(
    cfg: FlowConfig,
    clock: Clock,
    before_start: impl FnOnce(),
) -> io::Result<FlowReport> {
    let topo = cfg.topology;
    let (n_pub, n_sub) = (topo.publishers(), topo.subscribers());

    // Subscribers first, so nothing published is missed.
    let mut subs = Vec::with_capacity(n_sub);
    for chunk in (0..n_sub).collect::<Vec<_>>().chunks(64) {
        let mut set = JoinSet::new();
        for &j in chunk {
            let opts = options(&cfg, "s", j);
            let filters: Vec<String> = match topo {
                Topology::Pairs(_) => vec![topo.topic(&cfg.run_id, j)],
                _ => vec![topo.topic(&cfg.run_id, 0)],
            };
            let (addr, qos) = (cfg.sub_addr.unwrap_or(cfg.addr), cfg.qos);
            set.spawn(async move {
                let mut c = client::connect(addr, None, &opts).await?;
                c.subscribe(&filters, qos).await?;
                Ok::<_, io::Error>((j, c))
            });
        }
        while let Some(r) = set.join_next().await {
            subs.push(r.map_err(io::Error::other)??);
        }
    }
    subs.sort_by_key(|(j, _)| *j);
    let mut pubs = Vec::with_capacity(n_pub);
    for i in 0..n_pub {
        pubs.push(client::connect(cfg.addr, None, &options(&cfg, "p", i)).await?);
    }

    let progress = Arc::new(Progress::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut sub_tasks = Vec::with_capacity(n_sub);
    for (_, conn) in subs {
        sub_tasks.push(tokio::spawn(subscriber(
            conn,
            clock.clone(),
            progress.clone(),
            stop_rx.clone(),
        )));
    }

    before_start();
    let per_pub = cfg.messages / n_pub as u64;
    let extra = cfg.messages % n_pub as u64;
    let deadline = Instant::now() + cfg.duration;
    let mut pub_tasks = Vec::with_capacity(n_pub);
    for (i, conn) in pubs.into_iter().enumerate() {
        let count = per_pub + u64::from((i as u64) < extra);
        let topic = ByteStr::from(topo.topic(&cfg.run_id, i));
        let rate = cfg.rate.map(|r| r / (n_pub * topo.fanout()) as f64);
        pub_tasks.push(tokio::spawn(publisher(
            conn,
            PubParams {
                index: i as u32,
                topic,
                count,
                rate,
                phase: phase(i, n_pub, rate),
                qos: cfg.qos,
                size: cfg.size,
                window: cfg.window,
                deadline,
                drain_timeout: cfg.drain_timeout,
            },
            clock.clone(),
        )));
    }

    let mut report = FlowReport::default();
    let mut sent = vec![0u64; n_pub];
    let mut first_ns = u64::MAX;
    let mut last_ack_ns = 0;
    let mut open = Vec::with_capacity(n_pub);
    for (i, t) in pub_tasks.into_iter().enumerate() {
        match t.await.map_err(io::Error::other)? {
            Ok(r) => {
                sent[i] = r.sent;
                report.sent += r.sent;
                report.acked += r.acked;
                first_ns = first_ns.min(r.first_ns);
                last_ack_ns = last_ack_ns.max(r.last_ack_ns);
                open.push(r);
            }
            Err(e) => report.errors.push(format!("publisher {i}: {e}")),
        }
    }
    report.expected = (0..n_sub)
        .map(|j| topo.feeds(j).iter().map(|&p| sent[p]).sum::<u64>())
        .sum();

    // Wait for every delivery, or for the deliveries to stop coming.
    let mut last_seen = progress.received.load(Ordering::Relaxed);
    let mut quiet_since = Instant::now();
    let hard_stop = Instant::now() + cfg.duration + cfg.drain_timeout;
    loop {
        let now_received = progress.received.load(Ordering::Relaxed);
        if now_received >= report.expected || Instant::now() > hard_stop {
            break;
        }
        if now_received != last_seen {
            last_seen = now_received;
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() > cfg.drain_timeout {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let _ = stop_tx.send(true);
    for r in open {
        r.ack_task.abort();
    }

    for (j, t) in sub_tasks.into_iter().enumerate() {
        match t.await.map_err(io::Error::other)? {
            Ok(r) => {
                report.latency.merge(&r.latency);
                report.delivered += r.tracker.unique();
                report.duplicates += r.tracker.duplicates();
                report.lost += r
                    .tracker
                    .lost(topo.feeds(j).iter().map(|&p| (p as u32, sent[p])));
            }
            Err(e) => {
                report.errors.push(format!("subscriber {j}: {e}"));
                report.lost += topo.feeds(j).iter().map(|&p| sent[p]).sum::<u64>();
            }
        }
    }
    let last_ns = progress.last_ns.load(Ordering::Relaxed);
    if first_ns != u64::MAX && last_ns > first_ns {
        report.elapsed_secs = (last_ns - first_ns) as f64 / 1e9;
    }
    if first_ns != u64::MAX && last_ack_ns > first_ns {
        report.acked_secs = (last_ack_ns - first_ns) as f64 / 1e9;
    }
    Ok(report)
}

/// Reads deliveries until told to stop, acknowledging QoS 1 ones.
async fn subscriber(
    conn: Conn,
    clock: Clock,
    progress: Arc<Progress>,
    mut stop: watch::Receiver<bool>,
) -> io::Result<SubResult> {
    let Conn {
        mut reader,
        mut writer,
        ..
    } = conn;
    let mut latency = Histogram::new();
    let mut tracker = SeqTracker::new();
    loop {
        let mut n = 0;
        let mut now = 0;
        while let Some(packet) = reader.try_next()? {
            if let Packet::Publish(p) = packet {
                now = clock.now_ns();
                if let Some(h) = payload::parse(&p.payload) {
                    latency.record(now.saturating_sub(h.sent_ns));
                    tracker.record(h.publisher, h.seq);
                }
                if let QosPid::AtLeastOnce(id) = p.qos_pid {
                    writer.queue(&Packet::PubAck(PubResp::new(id)))?;
                }
                n += 1;
            }
        }
        if n > 0 {
            progress.received.fetch_add(n, Ordering::Relaxed);
            progress.last_ns.fetch_max(now, Ordering::Relaxed);
        }
        writer.flush().await?;
        tokio::select! {
            r = reader.fill() => {
                if r? == 0 {
                    break;
                }
            }
            _ = stop.changed() => break,
        }
    }
    Ok(SubResult { latency, tracker })
}

/// When paced publisher `i` of `n` starts, after the first: the phases
/// spread evenly over one interval, so together the publishers make a
/// steady rate. Started in step, every publisher would publish in the same
/// instant (the same timer millisecond at best), and the latency measured
/// would be that of bursts the load generator made itself.
fn phase(i: usize, n: usize, rate: Option<f64>) -> Duration {
    rate.map_or(Duration::ZERO, |r| {
        Duration::from_secs_f64(i as f64 / (n as f64 * r.max(0.001)))
    })
}

struct PubParams {
    index: u32,
    topic: ByteStr,
    count: u64,
    /// Messages per second for this publisher.
    rate: Option<f64>,
    /// When paced, how long after the others' start this one starts.
    phase: Duration,
    qos: QoS,
    size: usize,
    window: u16,
    deadline: Instant,
    drain_timeout: Duration,
}

/// Most publishes encoded into one write.
const BATCH: u64 = 64;

/// Publishes `count` messages, at full speed or paced; for QoS 1 at most
/// `window` unacknowledged.
async fn publisher(conn: Conn, p: PubParams, clock: Clock) -> io::Result<PubResult> {
    let window = u32::from(p.window.min(conn.receive_maximum()).max(1));
    let Conn {
        mut reader,
        mut writer,
        ..
    } = conn;
    let qos1 = p.qos == QoS::AtLeastOnce;
    let credits = Arc::new(Semaphore::new(window as usize));
    let acked = Arc::new(AtomicU64::new(0));
    let last_ack_ns = Arc::new(AtomicU64::new(0));
    // QoS 1: PUBACKs return credits.
    let ack_task = {
        let credits = credits.clone();
        let acked = acked.clone();
        let last_ack_ns = last_ack_ns.clone();
        let clock = clock.clone();
        tokio::spawn(async move {
            while let Some(packet) = reader.next().await? {
                if let Packet::PubAck(_) = packet {
                    acked.fetch_add(1, Ordering::Relaxed);
                    last_ack_ns.store(clock.now_ns(), Ordering::Relaxed);
                    credits.add_permits(1);
                }
            }
            Ok::<_, io::Error>(())
        })
    };
    let start = Instant::now() + p.phase;
    tokio::time::sleep_until(start).await;
    let interval = p.rate.map(|r| Duration::from_secs_f64(1.0 / r.max(0.001)));
    let mut sent = 0u64;
    let mut first_ns = u64::MAX;
    let mut next_pid: u16 = 0;
    while sent < p.count && Instant::now() < p.deadline {
        // How many may go now: a batch at full speed, what is due when paced.
        let mut n = (p.count - sent).min(BATCH);
        if let Some(iv) = interval {
            let due = (start.elapsed().as_nanos() / iv.as_nanos().max(1)) as u64 + 1;
            if due <= sent {
                tokio::time::sleep_until(start + iv * (sent as u32)).await;
                continue;
            }
            n = n.min(due - sent);
        }
        if qos1 {
            let Ok(permit) = credits.acquire().await else {
                break;
            };
            permit.forget();
            let mut got = 1;
            while got < n {
                match credits.try_acquire() {
                    Ok(permit) => {
                        permit.forget();
                        got += 1;
                    }
                    Err(_) => break,
                }
            }
            n = got;
        }
        for _ in 0..n {
            let now = clock.now_ns();
            first_ns = first_ns.min(now);
            let qos_pid = if qos1 {
                next_pid = next_pid.checked_add(1).unwrap_or(1);
                QosPid::AtLeastOnce(PacketId::new(next_pid).unwrap_or(NonZeroU16::MIN))
            } else {
                QosPid::AtMostOnce
            };
            let body = payload::build(
                Header {
                    sent_ns: now,
                    publisher: p.index,
                    seq: sent,
                },
                p.size,
            );
            writer.queue(&Packet::Publish(
                Publish::new(p.topic.clone(), body).with_qos_pid(qos_pid),
            ))?;
            sent += 1;
        }
        writer.flush().await?;
    }
    if qos1 {
        // Every credit back means every publish acknowledged.
        let all = credits.acquire_many(window);
        let _ = tokio::time::timeout(p.drain_timeout.max(Duration::from_secs(5)), all).await;
    }
    Ok(PubResult {
        sent,
        acked: acked.load(Ordering::Relaxed),
        first_ns,
        last_ack_ns: last_ack_ns.load(Ordering::Relaxed),
        _writer: writer,
        ack_task,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paced_publishers_start_spread_over_one_interval() {
        // 4 publishers, each at 100 msg/s (every 10 ms): starts 2.5 ms apart.
        let phases: Vec<_> = (0..4).map(|i| phase(i, 4, Some(100.0))).collect();
        let ms: Vec<f64> = phases.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        for (got, want) in ms.iter().zip([0.0, 2.5, 5.0, 7.5]) {
            assert!((got - want).abs() < 1e-6, "{ms:?}");
        }
        assert_eq!(
            phase(3, 4, None),
            Duration::ZERO,
            "full speed starts at once"
        );
    }
}
