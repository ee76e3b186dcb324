//! The real `roost` binary, run as a child process.

mod common;
use common::*;
use roost::codec::{ProtocolVersion, QoS};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};

fn start(args: &[&str]) -> (std::process::Child, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_roost"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("roost binary starts");
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let addr = loop {
        let line = lines.next().expect("a listening line").unwrap();
        if let Some(rest) = line.split("mqtt tcp listening on ").nth(1) {
            break rest.trim().parse().unwrap();
        }
    };
    // Keep draining stdout so the broker never writes into a closed pipe.
    std::thread::spawn(move || lines.for_each(drop));
    (child, addr)
}

#[tokio::test]
async fn tcp_flag_binds_and_serves_then_sigint_exits_zero() {
    let (mut child, addr) = start(&["--tcp", "127.0.0.1:0"]);
    assert!(addr.ip().is_loopback());
    let mut sub = Raw::connected(addr, connect(ProtocolVersion::V3_1_1, "s", true)).await;
    sub.subscribe(1, "t", QoS::AtLeastOnce).await;
    let mut p = Raw::connected(addr, connect(ProtocolVersion::V5, "p", true)).await;
    p.publish(publish("t", "hello", QoS::AtLeastOnce, 1)).await;
    assert_eq!(payload(&sub.recv_publish().await), "hello");

    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    // v5 clients are told the server is going away.
    let got = p.expect_closed().await;
    assert!(
        got.iter().any(|pk| matches!(pk, roost::codec::Packet::Disconnect(d) if d.reason == roost::codec::ReasonCode::ServerShuttingDown)),
        "{got:?}"
    );
    let code = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(code.success(), "{code:?}");
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
