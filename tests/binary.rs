//! The real `roost` binary, run as a child process.

mod common;
use common::process::Broker;
use common::*;
use roost::codec::{Packet, ProtocolVersion, QoS, ReasonCode};
use std::process::Command;

#[tokio::test]
async fn tcp_flag_binds_and_serves_then_sigint_exits_zero() {
    let b = Broker::start(&["--tcp", "127.0.0.1:0", "--store", "memory"]);
    assert!(b.addr.ip().is_loopback());
    let mut sub = Raw::connected(b.addr, connect(ProtocolVersion::V3_1_1, "s", true)).await;
    sub.subscribe(1, "t", QoS::AtLeastOnce).await;
    let mut p = Raw::connected(b.addr, connect(ProtocolVersion::V5, "p", true)).await;
    p.publish(publish("t", "hello", QoS::AtLeastOnce, 1)).await;
    assert_eq!(payload(&sub.recv_publish().await), "hello");

    let status = Command::new("kill")
        .args(["-INT", &b.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    // v5 clients are told the server is going away.
    let got = p.expect_closed().await;
    assert!(
        got.iter().any(
            |pk| matches!(pk, Packet::Disconnect(d) if d.reason == ReasonCode::ServerShuttingDown)
        ),
        "{got:?}"
    );
    let mut b = b;
    let code = tokio::task::spawn_blocking(move || b.child.wait().unwrap())
        .await
        .unwrap();
    assert!(code.success(), "{code:?}");
}

#[tokio::test]
async fn sigterm_exits_zero() {
    let b = Broker::start(&["--tcp", "127.0.0.1:0", "--store", "memory"]);
    let _c = Raw::connected(b.addr, v5("c")).await;
    let status = b.terminate().await;
    assert!(status.success(), "{status:?}");
}

#[test]
fn bad_address_fails_with_message() {
    let out = Command::new(env!("CARGO_BIN_EXE_roost"))
        .args(["--tcp", "not-an-address"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--tcp"));
}

#[test]
fn unknown_store_is_refused() {
    let out = Command::new(env!("CARGO_BIN_EXE_roost"))
        .args(["--tcp", "127.0.0.1:0", "--store", "floppy"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--store"), "{err}");
}

#[test]
fn a_corrupt_store_is_a_clear_error_not_a_wipe() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("roost.redb");
    std::fs::write(&file, b"this is not a database").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_roost"))
        .args(["--tcp", "127.0.0.1:0", "--store", "redb", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("roost.redb"), "names the file: {err}");
    assert_eq!(
        std::fs::read(&file).unwrap(),
        b"this is not a database",
        "left as it was"
    );
}
