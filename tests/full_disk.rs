//! A full disk, for real, on the `roost` binary and both persistent
//! backends: the broker runs under a file size limit (`prlimit --fsize`,
//! util-linux; SIGXFSZ ignored, so a write past the limit fails with EFBIG
//! as one on a full disk fails with ENOSPC). Acknowledgements stop (5.0
//! publishers get 0x97, 3.1.1 publishers are disconnected without one),
//! `/healthz` answers 503, QoS 0 keeps flowing; once the limit is raised on
//! the live process, service resumes by itself, and after `kill -9` every
//! acknowledged message reaches its subscriber, once.
//!
//! With root, the same runs on an 8 MiB tmpfs (skipped without root).

mod common;
use common::process::{roost, Broker};
use common::*;
use roost::codec::{Connect, Packet, ProtocolVersion, QoS, ReasonCode};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Bytes of payload per message: a few hundred fill the limits below.
const BODY: usize = 16 << 10;

/// The file size limit: enough to open either store, soon full.
const LIMIT: u64 = 4 << 20;

fn args(store: &str, dir: &Path) -> Vec<String> {
    let config = dir.join("roost-test.toml");
    std::fs::write(&config, "[limits]\nmaximum_queued_messages = 1000000\n").unwrap();
    [
        "--config",
        config.to_str().unwrap(),
        "--tcp",
        "127.0.0.1:0",
        "--http",
        "127.0.0.1:0",
        "--store",
        store,
        "--data-dir",
        dir.join("data").to_str().unwrap(),
    ]
    .map(String::from)
    .to_vec()
}

/// `roost` under a file size limit, with SIGXFSZ ignored (an ignored
/// signal stays ignored across `exec`): the process keeps its pid.
fn limited(store: &str, dir: &Path, limit: u64) -> Broker {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!(
            "trap '' XFSZ; exec prlimit --fsize={limit}:unlimited \"$0\" \"$@\""
        ))
        .arg(env!("CARGO_BIN_EXE_roost"))
        .args(args(store, dir))
        .stderr(std::process::Stdio::null());
    Broker::spawn(cmd)
}

fn persistent(version: ProtocolVersion, id: &str) -> Connect {
    let mut c = connect(version, id, false);
    if version.is_v5() {
        c.properties.session_expiry_interval = Some(3600);
    }
    c
}

fn body(n: u32) -> String {
    format!("{n:06}{}", "x".repeat(BODY))
}

async fn healthz(http: SocketAddr) -> u16 {
    let mut s = tokio::net::TcpStream::connect(http).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut raw))
        .await
        .expect("one response")
        .unwrap();
    String::from_utf8_lossy(&raw)[9..12].parse().unwrap()
}

async fn until_health(http: SocketAddr, code: u16) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while healthz(http).await != code {
        assert!(
            tokio::time::Instant::now() < deadline,
            "/healthz never {code}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs the scenario; `make_room` gives the live process space again.
async fn full_disk(store: &str, b: Broker, dir: &Path, make_room: impl FnOnce(u32)) {
    let http = b.listener("http stats");
    let mut sub = Raw::connected(b.addr, persistent(ProtocolVersion::V5, "sub")).await;
    sub.subscribe(1, "fill/#", QoS::AtLeastOnce).await;
    sub.disconnect().await;
    let mut live = Raw::connected(b.addr, v5("live")).await;
    live.subscribe(1, "live", QoS::AtMostOnce).await;

    // Fill the store until an acknowledgement does not come.
    let mut p = Raw::connected(b.addr, v5("p")).await;
    let mut acked = Vec::new();
    let mut held = None;
    for n in 1..=2000u32 {
        let pid = (n % 60_000) as u16 + 1;
        p.send(Packet::Publish(publish(
            "fill/a",
            &body(n),
            QoS::AtLeastOnce,
            pid,
        )))
        .await;
        match p.recv_within(Duration::from_secs(2)).await {
            Some(Packet::PubAck(r)) if r.reason == ReasonCode::Success => acked.push(n),
            // Refused at once: another write failed first.
            Some(Packet::PubAck(r)) if r.reason == ReasonCode::QuotaExceeded => break,
            None => {
                held = Some(n);
                break;
            }
            other => panic!("{store}: unexpected {other:?}"),
        }
    }
    assert!(!acked.is_empty(), "{store}: the limit left room for some");
    assert!(acked.len() < 2000, "{store}: the limit never bit");
    until_health(http, 503).await;

    // Work that needs storage is refused at once.
    let mut p5 = Raw::connected(b.addr, v5("p5")).await;
    assert_eq!(
        p5.publish(publish("fill/b", "refused", QoS::AtLeastOnce, 1))
            .await,
        ReasonCode::QuotaExceeded,
        "{store}"
    );
    let mut p3 = Raw::connected(b.addr, connect(ProtocolVersion::V3_1_1, "p3", true)).await;
    p3.send(Packet::Publish(publish(
        "fill/c",
        "refused",
        QoS::AtLeastOnce,
        1,
    )))
    .await;
    assert!(p3.expect_closed().await.is_empty(), "{store}: no PUBACK");
    let (_, ack) = Raw::connect(b.addr, persistent(ProtocolVersion::V5, "late")).await;
    assert_eq!(ack.reason, ReasonCode::ServerUnavailable, "{store}");
    // QoS 0 between connected clients keeps flowing.
    p5.publish(publish("live", "still", QoS::AtMostOnce, 0))
        .await;
    assert_eq!(payload(&live.recv_publish().await), "still", "{store}");

    make_room(b.child.id());
    // Service resumes by itself: the held acknowledgement leaves, and new
    // publishes are acknowledged.
    if let Some(n) = held {
        match p.recv_within(Duration::from_secs(20)).await {
            Some(Packet::PubAck(r)) => {
                assert_eq!(r.reason, ReasonCode::Success, "{store}");
                acked.push(n);
            }
            other => panic!("{store}: expected the held PUBACK, got {other:?}"),
        }
    }
    until_health(http, 200).await;
    let after = 100_000;
    assert_eq!(
        p.publish(publish("fill/a", &body(after), QoS::AtLeastOnce, 7))
            .await,
        ReasonCode::Success,
        "{store}"
    );
    acked.push(after);
    b.kill9().await;

    // Every acknowledged message, exactly once; nothing refused.
    let b = Broker::spawn({
        let mut cmd = roost(&[]);
        cmd.args(args(store, dir));
        cmd
    });
    let mut sub = Raw::connected(b.addr, persistent(ProtocolVersion::V5, "sub")).await;
    let mut got: BTreeMap<u32, usize> = BTreeMap::new();
    while let Some(packet) = sub.recv_within(Duration::from_secs(2)).await {
        let Packet::Publish(m) = packet else {
            panic!("{store}: unexpected {packet:?}")
        };
        *got.entry(payload(&m)[..6].parse().unwrap()).or_default() += 1;
        sub.ack(&m).await;
    }
    let want: BTreeMap<u32, usize> = acked.iter().map(|n| (*n, 1)).collect();
    assert_eq!(got, want, "{store}: {} acknowledged", acked.len());
}

fn raise_limit(pid: u32) {
    let status = Command::new("prlimit")
        .args(["--pid", &pid.to_string(), "--fsize=unlimited"])
        .status()
        .expect("prlimit runs");
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread")]
async fn redb_survives_a_full_disk_and_resumes_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let b = limited("redb", dir.path(), LIMIT);
    full_disk("redb", b, dir.path(), raise_limit).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sled_survives_a_full_disk_and_resumes_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let b = limited("sled", dir.path(), LIMIT);
    full_disk("sled", b, dir.path(), raise_limit).await;
}

/// The same on a real full file system: an 8 MiB tmpfs, with a ballast
/// file removed to make room. Needs root (to mount); skipped without it.
#[tokio::test(flavor = "multi_thread")]
async fn redb_on_a_full_tmpfs() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=8m", "tmpfs"])
        .arg(&data)
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(data.clone());
    // Room to open the store, then a ballast that leaves ~3 MiB.
    let ballast = data.join("ballast");
    std::fs::write(&ballast, vec![0u8; 5 << 20]).unwrap();
    let b = Broker::spawn({
        let mut cmd = roost(&[]);
        cmd.args(args("redb", dir.path()));
        cmd
    });
    full_disk("redb", b, dir.path(), |_| {
        std::fs::remove_file(&ballast).unwrap()
    })
    .await;
}
