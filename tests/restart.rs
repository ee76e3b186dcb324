//! Restarts of the real binary on the persistent backends: after a graceful
//! stop and after `kill -9`, sessions, subscriptions, retained messages and
//! every acknowledged message are still there, and no QoS 2 message is
//! delivered twice.

mod common;
use common::delivery::{receive_until_gone, Received};
use common::process::{roost, Broker};
use common::*;
use roost::codec::{Connect, Packet, ProtocolVersion, PubResp, QoS, ReasonCode};
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

/// Starts the binary on `store` in `dir`, with the default limits.
fn start(store: &str, dir: &Path) -> Broker {
    Broker::spawn(command(store, dir))
}

/// The command [`start`] runs (stderr discarded).
fn command(store: &str, dir: &Path) -> std::process::Command {
    let data = dir.join("data");
    let data = data.to_str().expect("utf-8 temp dir");
    roost(&["--tcp", "127.0.0.1:0", "--store", store, "--data-dir", data])
}

fn persistent(version: ProtocolVersion, id: &str) -> Connect {
    let mut c = connect(version, id, false);
    if version.is_v5() {
        c.properties.session_expiry_interval = Some(3600);
    }
    c
}

async fn graceful_restart_keeps_everything(store: &str) {
    let dir = tempfile::tempdir().unwrap();
    let b = start(store, dir.path());
    for (v, id) in [(ProtocolVersion::V5, "s5"), (ProtocolVersion::V3_1_1, "s3")] {
        let mut s = Raw::connected(b.addr, persistent(v, id)).await;
        assert_eq!(
            s.subscribe(1, "t/#", QoS::AtLeastOnce).await.reasons,
            vec![ReasonCode::GrantedQos1]
        );
        s.disconnect().await;
    }
    let mut p = Raw::connected(b.addr, v5("p")).await;
    assert!(p
        .publish(retained("r", "kept", QoS::AtLeastOnce, 1))
        .await
        .is_success());
    assert!(p
        .publish(publish("t/1", "queued", QoS::AtLeastOnce, 2))
        .await
        .is_success());
    assert!(b.terminate().await.success());

    let b = start(store, dir.path());
    for (v, id) in [(ProtocolVersion::V5, "s5"), (ProtocolVersion::V3_1_1, "s3")] {
        let (mut s, ack) = Raw::connect(b.addr, persistent(v, id)).await;
        assert!(ack.session_present, "{store} {id}: session present");
        let m = s.recv_publish().await;
        assert_eq!(payload(&m), "queued");
        s.ack(&m).await;
    }
    let mut r = Raw::connected(b.addr, v5("r")).await;
    r.subscribe(1, "r", QoS::AtMostOnce).await;
    assert_eq!(payload(&r.recv_publish().await), "kept");
}

async fn kill9_keeps_sessions_and_retained(store: &str) {
    let dir = tempfile::tempdir().unwrap();
    let b = start(store, dir.path());
    let mut s = Raw::connected(b.addr, persistent(ProtocolVersion::V3_1_1, "s")).await;
    s.subscribe(1, "t", QoS::ExactlyOnce).await;
    s.disconnect().await;
    let mut p = Raw::connected(b.addr, v5("p")).await;
    assert!(p
        .publish(retained("r", "kept", QoS::AtLeastOnce, 1))
        .await
        .is_success());
    b.kill9().await;

    let b = start(store, dir.path());
    let (_s, ack) = Raw::connect(b.addr, persistent(ProtocolVersion::V3_1_1, "s")).await;
    assert!(ack.session_present, "{store}: session survives kill -9");
    let mut r = Raw::connected(b.addr, v5("r")).await;
    r.subscribe(1, "r", QoS::AtMostOnce).await;
    assert_eq!(payload(&r.recv_publish().await), "kept");
}

/// Publishes numbered messages in windows of eight until the broker dies;
/// returns the payloads it acknowledged (PUBACK, or PUBREC for QoS 2).
async fn publish_until_killed(mut p: Raw, cycle: usize, qos: QoS) -> Vec<String> {
    let mut acked = Vec::new();
    let mut next = 0usize;
    loop {
        let mut window = HashMap::new();
        for _ in 0..8 {
            next += 1;
            let pid = (next % 60_000 + 1) as u16;
            let text = format!("c{cycle}-{qos:?}-{next}");
            window.insert(pid, text.clone());
            if !p
                .try_send(Packet::Publish(publish("load/x", &text, qos, pid)))
                .await
            {
                return acked;
            }
        }
        while !window.is_empty() {
            match p.recv_within(Duration::from_secs(5)).await {
                Some(Packet::PubAck(a)) | Some(Packet::PubRec(a)) if a.reason.is_success() => {
                    if let Some(text) = window.remove(&a.packet_id.get()) {
                        acked.push(text);
                    }
                    if qos == QoS::ExactlyOnce
                        && !p.try_send(Packet::PubRel(PubResp::new(a.packet_id))).await
                    {
                        return acked;
                    }
                }
                Some(Packet::PubComp(_)) => {}
                Some(other) => panic!("unexpected {other:?}"),
                None => return acked, // the broker is gone
            }
        }
    }
}

/// `kill -9` in the middle of QoS 1 and QoS 2 publishing, three times over,
/// to a persistent subscriber that is away (`online` false: everything
/// acknowledged was committed first) or connected and acknowledging (then
/// a PUBACK may also mean "delivered and acknowledged", and copies may
/// never reach the disk). Afterwards every acknowledged message has been
/// delivered, and no QoS 2 message twice.
async fn kill9_while_publishing_loses_nothing_acknowledged(store: &str, online: bool) {
    let dir = tempfile::tempdir().unwrap();
    let b = start(store, dir.path());
    let mut s = Raw::connected(b.addr, persistent(ProtocolVersion::V5, "sub")).await;
    s.subscribe(1, "load/#", QoS::ExactlyOnce).await;
    s.disconnect().await;
    let mut b = Some(b);

    let mut acked: Vec<(String, QoS)> = Vec::new();
    let mut got = Received::default();
    for cycle in 0..3 {
        let broker = match b.take() {
            Some(b) => b,
            None => start(store, dir.path()),
        };
        let subscriber = if online {
            let s = Raw::connected(broker.addr, persistent(ProtocolVersion::V5, "sub")).await;
            let mut state = std::mem::take(&mut got);
            Some(tokio::spawn(async move {
                receive_until_gone(s, &mut state, Duration::from_secs(5)).await;
                state
            }))
        } else {
            None
        };
        let mut tasks = Vec::new();
        for (i, qos) in [QoS::AtLeastOnce, QoS::ExactlyOnce].into_iter().enumerate() {
            let p = Raw::connected(broker.addr, v5(&format!("pub{i}"))).await;
            tasks.push((qos, tokio::spawn(publish_until_killed(p, cycle, qos))));
        }
        // Let messages flow, then pull the plug in the middle of it.
        tokio::time::sleep(Duration::from_millis(300)).await;
        broker.kill9().await;
        for (qos, t) in tasks {
            for text in t.await.unwrap() {
                acked.push((text, qos));
            }
        }
        if let Some(t) = subscriber {
            got = t.await.unwrap();
        }
    }
    assert!(
        acked.len() > 20,
        "{store}: too little traffic to mean anything: {}",
        acked.len()
    );

    let b = start(store, dir.path());
    let (s, ack) = Raw::connect(b.addr, persistent(ProtocolVersion::V5, "sub")).await;
    assert!(ack.session_present);
    receive_until_gone(s, &mut got, Duration::from_secs(2)).await;
    let seen = got.seen;
    eprintln!(
        "{store} (subscriber {}): {} acknowledged over 3 kill -9 cycles, {} distinct delivered",
        if online { "connected" } else { "away" },
        acked.len(),
        seen.len()
    );
    let lost: Vec<_> = acked
        .iter()
        .filter(|(t, _)| !seen.contains_key(t))
        .collect();
    assert!(
        lost.is_empty(),
        "{store}: {} of {} acknowledged messages lost, e.g. {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(5)]
    );
    let twice: Vec<_> = seen
        .iter()
        .filter(|(t, n)| **n > 1 && t.contains("ExactlyOnce"))
        .collect();
    assert!(
        twice.is_empty(),
        "{store}: QoS 2 delivered twice: {twice:?}"
    );
}

/// Publishes numbered QoS 1 messages with `window` in flight until the
/// broker dies, counting acknowledgements in `count` as they come; returns
/// the payloads acknowledged.
async fn publish_pipelined_until_killed(
    mut p: Raw,
    cycle: usize,
    window: usize,
    count: tokio::sync::watch::Sender<usize>,
) -> Vec<String> {
    let mut acked = Vec::new();
    let mut open: HashMap<u16, String> = HashMap::new();
    let mut next = 0usize;
    loop {
        while open.len() < window {
            next += 1;
            let pid = (next % 60_000 + 1) as u16;
            let text = format!("c{cycle}-{next}");
            open.insert(pid, text.clone());
            let m = publish("load/x", &text, QoS::AtLeastOnce, pid);
            if !p.try_send(Packet::Publish(m)).await {
                return acked;
            }
        }
        match p.recv_within(Duration::from_secs(5)).await {
            Some(Packet::PubAck(a)) => {
                if let Some(text) = open.remove(&a.packet_id.get()) {
                    acked.push(text);
                    count.send_modify(|n| *n += 1);
                }
            }
            Some(other) => panic!("unexpected {other:?}"),
            None => return acked, // the broker is gone
        }
    }
}

/// The issue-16 load: a 3.1.1 publisher sends 100,000 QoS 1 messages to a
/// persistent subscriber that is away, under the default limits, with
/// `kill -9` four times on the way. Every acknowledged message arrives (the
/// queue is a disk bound now: it used to stop at 10,000, dropping the rest
/// after they were acknowledged).
async fn kill9_with_100k_queued_for_an_offline_subscriber(store: &str) {
    const TOTAL: usize = 100_000;
    const CYCLES: usize = 4;
    let dir = tempfile::tempdir().unwrap();
    let b = start(store, dir.path());
    let sub = connect(ProtocolVersion::V3_1_1, "sub", false);
    let mut s = Raw::connected(b.addr, sub.clone()).await;
    s.subscribe(1, "load/#", QoS::AtLeastOnce).await;
    s.disconnect().await;
    let mut b = Some(b);
    let mut acked = Vec::new();
    for cycle in 0..CYCLES {
        let broker = match b.take() {
            Some(b) => b,
            None => start(store, dir.path()),
        };
        let p = Raw::connected(broker.addr, v311(&format!("pub{cycle}"))).await;
        // This cycle's acknowledgements: kill -9 once they reach its share
        // (or at once if the publisher ended, dropping its sender).
        let (count, mut counted) = tokio::sync::watch::channel(0usize);
        let task = tokio::spawn(publish_pipelined_until_killed(p, cycle, 64, count));
        let target = TOTAL * (cycle + 1) / CYCLES - acked.len();
        let _ = counted.wait_for(|n| *n >= target).await;
        broker.kill9().await;
        acked.extend(task.await.unwrap());
    }
    assert!(
        acked.len() >= TOTAL,
        "{store}: {} acknowledged",
        acked.len()
    );

    let b = start(store, dir.path());
    let (s, ack) = Raw::connect(b.addr, sub).await;
    assert!(ack.session_present);
    let mut got = Received::default();
    receive_until_gone(s, &mut got, Duration::from_secs(3)).await;
    let lost: Vec<_> = acked
        .iter()
        .filter(|t| !got.seen.contains_key(*t))
        .collect();
    eprintln!(
        "{store}: {} acknowledged over {CYCLES} kill -9 cycles, {} distinct delivered, {} lost",
        acked.len(),
        got.seen.len(),
        lost.len()
    );
    assert!(
        lost.is_empty(),
        "{store}: {} of {} acknowledged messages lost, e.g. {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(5)]
    );
}

#[tokio::test]
async fn redb_kill9_with_100k_queued_for_an_offline_subscriber_loses_nothing() {
    kill9_with_100k_queued_for_an_offline_subscriber("redb").await;
}

#[cfg(feature = "sled")]
#[tokio::test]
async fn sled_kill9_with_100k_queued_for_an_offline_subscriber_loses_nothing() {
    kill9_with_100k_queued_for_an_offline_subscriber("sled").await;
}

#[tokio::test]
async fn redb_graceful_restart_keeps_everything() {
    graceful_restart_keeps_everything("redb").await;
}

#[tokio::test]
async fn redb_kill9_keeps_sessions_and_retained() {
    kill9_keeps_sessions_and_retained("redb").await;
}

#[tokio::test]
async fn redb_kill9_while_publishing_loses_nothing_acknowledged() {
    kill9_while_publishing_loses_nothing_acknowledged("redb", false).await;
}

#[tokio::test]
async fn redb_kill9_while_publishing_to_a_connected_subscriber_loses_nothing_acknowledged() {
    kill9_while_publishing_loses_nothing_acknowledged("redb", true).await;
}

/// `count` bytes of `bytes` inverted, at places a fixed xorshift sequence
/// picks from `seed`: the same damage on every run.
fn flip(bytes: &mut [u8], count: usize, mut seed: u64) {
    for _ in 0..count {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let at = (seed % bytes.len() as u64) as usize;
        bytes[at] = !bytes[at];
    }
}

/// A damaged redb store (cut to half its length; 200 bytes flipped) stops
/// the binary before it listens: exit status 3, a message naming the file
/// and what to do, no panic, and not a byte of the file changed. It used to
/// panic (exit 101), or listen and then panic while loading, rewriting the
/// file's header at each attempt.
#[tokio::test]
async fn redb_damaged_store_exits_3_naming_the_file_and_leaves_it_alone() {
    let dir = tempfile::tempdir().unwrap();
    let b = start("redb", dir.path());
    let mut s = Raw::connected(b.addr, persistent(ProtocolVersion::V5, "s")).await;
    s.subscribe(1, "t/#", QoS::AtLeastOnce).await;
    s.disconnect().await;
    let mut p = Raw::connected(b.addr, v5("p")).await;
    for i in 0..50u16 {
        let topic = format!("r/{i}");
        assert!(p
            .publish(retained(&topic, "kept", QoS::AtLeastOnce, i + 1))
            .await
            .is_success());
        assert!(p
            .publish(publish("t/1", "queued", QoS::AtLeastOnce, i + 1))
            .await
            .is_success());
    }
    assert!(b.terminate().await.success());

    let file = dir.path().join("data").join("roost.redb");
    let original = std::fs::read(&file).unwrap();
    let half = original[..original.len() / 2].to_vec();
    let mut flipped = original.clone();
    flip(&mut flipped, 200, 0x5eed);
    for (what, damaged) in [("cut to half", half), ("200 bytes flipped", flipped)] {
        std::fs::write(&file, &damaged).unwrap();
        let out = command("redb", dir.path())
            .stderr(std::process::Stdio::piped())
            .output()
            .expect("roost runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{what}: {stderr}");
        assert!(
            stderr.contains(&file.display().to_string()),
            "{what}: {stderr}"
        );
        assert!(stderr.contains("damaged"), "{what}: {stderr}");
        assert!(stderr.contains("move the file aside"), "{what}: {stderr}");
        assert!(!stderr.contains("panicked"), "{what}: {stderr}");
        assert!(!stdout.contains("listening"), "{what}: {stdout}");
        assert!(
            std::fs::read(&file).unwrap() == damaged,
            "{what}: the failed start wrote to the file"
        );
    }

    // The undamaged file still opens with everything in it.
    std::fs::write(&file, &original).unwrap();
    let b = start("redb", dir.path());
    let (_s, ack) = Raw::connect(b.addr, persistent(ProtocolVersion::V5, "s")).await;
    assert!(ack.session_present);
}

#[cfg(feature = "sled")]
#[tokio::test]
async fn sled_graceful_restart_keeps_everything() {
    graceful_restart_keeps_everything("sled").await;
}

#[cfg(feature = "sled")]
#[tokio::test]
async fn sled_kill9_keeps_sessions_and_retained() {
    kill9_keeps_sessions_and_retained("sled").await;
}

#[cfg(feature = "sled")]
#[tokio::test]
async fn sled_kill9_while_publishing_loses_nothing_acknowledged() {
    kill9_while_publishing_loses_nothing_acknowledged("sled", false).await;
}

#[cfg(feature = "sled")]
#[tokio::test]
async fn sled_kill9_while_publishing_to_a_connected_subscriber_loses_nothing_acknowledged() {
    kill9_while_publishing_loses_nothing_acknowledged("sled", true).await;
}
