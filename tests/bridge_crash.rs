//! The bridge with the real binary on both sides, each on its own redb
//! store: what the edge acknowledged reaches the remote across `kill -9` of
//! the edge and of the remote, QoS 2 exactly once; what the remote holds
//! for the edge reaches a local subscriber after the edge comes back; and a
//! failing remote is logged once per change, not at every retry.

mod common;
use common::delivery::{receive_until_gone, Received};
use common::process::{roost, Broker};
use common::*;
use roost::codec::{Connect, Packet, PubResp, QoS};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// An address nothing listens on yet, for a remote that comes and goes.
fn vacant() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// The remote: roost on `addr`, its store in `dir/remote`.
fn remote(dir: &Path, addr: SocketAddr) -> Broker {
    let data = dir.join("remote");
    Broker::start(&[
        "--tcp",
        &addr.to_string(),
        "--store",
        "redb",
        "--data-dir",
        data.to_str().unwrap(),
    ])
}

/// The edge: roost bridged to `remote`, its store in `dir/edge`.
fn edge(dir: &Path, remote: SocketAddr) -> Broker {
    let file = edge_config(dir, remote);
    let mut cmd = roost(&["--config", file.to_str().unwrap()]);
    cmd.current_dir(dir);
    Broker::spawn(cmd)
}

fn edge_config(dir: &Path, remote: SocketAddr) -> PathBuf {
    let file = dir.join("edge.toml");
    std::fs::write(
        &file,
        format!(
            r#"
[store]
backend = "redb"
data_dir = "edge"

[[listener]]
type = "tcp"
bind = "127.0.0.1:0"

[[bridges]]
name = "cloud"
remote = "mqtt://{remote}"
client_id = "gw-1"
reconnect_min = "50ms"
reconnect_max = "300ms"

[[bridges.forward]]
filter = "devices/#"
qos = 2

[[bridges.subscribe]]
filter = "commands/#"
qos = 2
"#
        ),
    )
    .unwrap();
    file
}

fn persistent(id: &str) -> Connect {
    v5_session(id, false, 3600)
}

/// Connects `id` with its stored session, retrying while the broker at
/// `addr` is not up yet.
async fn reconnect(addr: SocketAddr, id: &str) -> Raw {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(Ok(stream)) =
            tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr)).await
        {
            drop(stream);
            return Raw::connected(addr, persistent(id)).await;
        }
        assert!(Instant::now() < deadline, "{addr} did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A persistent subscriber to `filter` at `addr`, then away.
async fn subscribe_and_leave(addr: SocketAddr, id: &str, filter: &str) {
    let mut s = Raw::connected(addr, persistent(id)).await;
    s.subscribe(1, filter, QoS::ExactlyOnce).await;
    s.disconnect().await;
}

/// Publishes `n` messages at `qos` named `<tag>-<i>`, each acknowledged.
async fn publish_all(addr: SocketAddr, topic: &str, tag: &str, n: usize, qos: QoS) -> Vec<String> {
    let mut p = Raw::connected(addr, v5(&format!("pub-{tag}"))).await;
    let mut sent = Vec::with_capacity(n);
    for i in 0..n {
        let text = format!("{tag}-{i}");
        let pid = (i % 60_000 + 1) as u16;
        let reason = p.publish(publish(topic, &text, qos, pid)).await;
        assert!(reason.is_success(), "{text}: {reason:?}");
        sent.push(text);
    }
    p.disconnect().await;
    sent
}

/// Receives as `id` at `addr` until every one of `want` has arrived (or
/// the connection goes quiet for long), reconnecting when it drops.
async fn collect(addr: SocketAddr, id: &str, got: &mut Received, want: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !want.iter().all(|w| got.seen.contains_key(w)) {
        assert!(
            Instant::now() < deadline,
            "missing: {:?}",
            want.iter()
                .filter(|w| !got.seen.contains_key(*w))
                .take(10)
                .collect::<Vec<_>>()
        );
        let s = reconnect(addr, id).await;
        receive_until_gone(s, got, Duration::from_secs(3)).await;
    }
}

fn assert_delivered(got: &Received, qos1: &[String], qos2: &[String]) {
    for m in qos1 {
        assert!(got.seen.get(m).is_some_and(|&n| n >= 1), "{m} lost");
    }
    let twice: Vec<_> = qos2
        .iter()
        .filter(|m| got.seen.get(*m) != Some(&1))
        .collect();
    assert!(
        twice.is_empty(),
        "QoS 2 not exactly once: {:?}",
        &twice[..twice.len().min(10)]
    );
}

/// (1) The remote is down while the edge takes N QoS 1 and N QoS 2
/// messages; the edge is killed, restarted, and the remote started: all
/// arrive, QoS 2 once. Then again with the edge killed while it forwards.
#[tokio::test]
async fn edge_kill9_while_the_remote_is_down_loses_nothing_and_qos2_arrives_once() {
    let dir = tempfile::tempdir().unwrap();
    let addr = vacant();
    // The cloud application's session exists before anything is forwarded.
    let r = remote(dir.path(), addr);
    subscribe_and_leave(addr, "cloud-app", "devices/#").await;
    assert!(r.terminate().await.success());

    let e = edge(dir.path(), addr);
    let qos1 = publish_all(e.addr, "devices/a", "one", 200, QoS::AtLeastOnce).await;
    let qos2 = publish_all(e.addr, "devices/b", "two", 200, QoS::ExactlyOnce).await;
    e.kill9().await;

    let e = edge(dir.path(), addr);
    let r = remote(dir.path(), addr);
    let mut got = Received::default();
    let all: Vec<String> = qos1.iter().chain(&qos2).cloned().collect();
    collect(addr, "cloud-app", &mut got, &all).await;
    assert_delivered(&got, &qos1, &qos2);

    // A second backlog, and the edge killed while it drains it.
    assert!(r.terminate().await.success());
    let more = publish_all(e.addr, "devices/c", "three", 1_000, QoS::ExactlyOnce).await;
    let _r = remote(dir.path(), addr);
    let mut got = Received::default();
    let mut s = reconnect(addr, "cloud-app").await;
    while got.seen.len() < 100 {
        match s.recv().await {
            Packet::Publish(m) => {
                let pid = m.qos_pid.packet_id().expect("QoS 2");
                if got.open_qos2.insert(pid.get()) {
                    *got.seen.entry(payload(&m).to_owned()).or_default() += 1;
                }
                s.send(Packet::PubRec(PubResp::new(pid))).await;
            }
            Packet::PubRel(rel) => {
                got.open_qos2.remove(&rel.packet_id.get());
                s.send(Packet::PubComp(PubResp::new(rel.packet_id))).await;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    e.kill9().await;
    let _e = edge(dir.path(), addr);
    receive_until_gone(s, &mut got, Duration::from_secs(3)).await;
    collect(addr, "cloud-app", &mut got, &more).await;
    assert_delivered(&got, &[], &more);
}

/// (2) The remote is killed and restarted while the edge forwards a
/// stream: every message the edge acknowledged reaches the remote's
/// subscriber.
#[tokio::test]
async fn remote_kill9_again_and_again_mid_stream_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let addr = vacant();
    let r = remote(dir.path(), addr);
    subscribe_and_leave(addr, "cloud-app", "devices/#").await;
    let e = edge(dir.path(), addr);
    let edge_addr = e.addr;
    let publisher = tokio::spawn(async move {
        let mut all = publish_all(edge_addr, "devices/a", "q1", 1_500, QoS::AtLeastOnce).await;
        all.extend(publish_all(edge_addr, "devices/b", "q2", 1_500, QoS::ExactlyOnce).await);
        all
    });
    let mut r = Some(r);
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        r.take().unwrap().kill9().await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        r = Some(remote(dir.path(), addr));
    }
    let sent = publisher.await.unwrap();
    let (qos1, qos2): (Vec<String>, Vec<String>) =
        sent.into_iter().partition(|m| m.starts_with("q1-"));
    let mut got = Received::default();
    let all: Vec<String> = qos1.iter().chain(&qos2).cloned().collect();
    collect(addr, "cloud-app", &mut got, &all).await;
    assert_delivered(&got, &qos1, &qos2);
    drop(e);
}

/// (3) Messages published at the remote while the edge is down reach a
/// local persistent subscriber once the edge is back.
#[tokio::test]
async fn messages_published_at_the_remote_while_the_edge_is_down_arrive_after_it_returns() {
    let dir = tempfile::tempdir().unwrap();
    let addr = vacant();
    let r = remote(dir.path(), addr);
    let e = edge(dir.path(), addr);
    subscribe_and_leave(e.addr, "device", "commands/#").await;
    // The bridge's subscription is at the remote before the edge goes.
    let mut probe = Raw::connected(addr, v5("probe")).await;
    let mut local = Raw::connected(e.addr, v5("local-probe")).await;
    local.subscribe(1, "commands/#", QoS::AtMostOnce).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        probe
            .publish(publish("commands/probe", "?", QoS::AtMostOnce, 1))
            .await;
        if local
            .recv_within(Duration::from_millis(200))
            .await
            .is_some()
        {
            break;
        }
        assert!(Instant::now() < deadline, "the bridge never subscribed");
    }
    drop(local);
    e.kill9().await;

    let qos1 = publish_all(addr, "commands/x", "c1", 200, QoS::AtLeastOnce).await;
    let qos2 = publish_all(addr, "commands/y", "c2", 200, QoS::ExactlyOnce).await;
    let e = edge(dir.path(), addr);
    let mut got = Received::default();
    let all: Vec<String> = qos1.iter().chain(&qos2).cloned().collect();
    collect(e.addr, "device", &mut got, &all).await;
    assert_delivered(&got, &qos1, &qos2);
    drop((r, e));
}

/// A remote that is not there is logged once, with the reason, however
/// many times the bridge retries; its coming back and going again are
/// logged as they happen.
#[tokio::test]
async fn a_failing_remote_is_logged_once_per_change_not_at_every_retry() {
    let dir = tempfile::tempdir().unwrap();
    let addr = vacant();
    let file = edge_config(dir.path(), addr);
    let mut cmd = roost(&["--config", file.to_str().unwrap()]);
    cmd.current_dir(dir.path())
        .stderr(std::process::Stdio::piped());
    let mut e = Broker::spawn(cmd);
    let mut logs = common::process::Logs::of(&mut e);
    let refused = logs.wait_for("cannot connect to the remote");
    assert!(refused.contains("refused"), "{refused}");
    // Retries every 50-300 ms: two seconds are several of them.
    let deadline = Instant::now() + Duration::from_secs(2);
    while let Some(line) = logs.next(deadline.saturating_duration_since(Instant::now())) {
        assert!(!line.contains("cannot connect"), "logged again: {line}");
    }
    let r = remote(dir.path(), addr);
    logs.wait_for("bridge connected");
    r.kill9().await;
    logs.wait_for("bridge disconnected");
    logs.wait_for("cannot connect to the remote");
    drop(e);
}
