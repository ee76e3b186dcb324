//! The binary's cluster settings (issue 19): `--cluster` and
//! `--cluster-node`, the `[cluster]` table, `check-config` on it, and the
//! refusal to start without the engine.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

fn run(args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_roost"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("roost runs");
    // A node that served instead of refusing would run forever: bounded.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("roost did not exit: it should have refused to start");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A loopback port nothing listens on.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn a_node_that_cannot_reach_nats_exits_1_naming_the_server() {
    let url = format!("nats://127.0.0.1:{}", closed_port());
    let out = run(&[
        "--cluster",
        &url,
        "--cluster-node",
        "gw-1",
        "--store",
        "memory",
        "--tcp",
        "127.0.0.1:0",
        "--ws",
        "none",
        "--http",
        "none",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains(&url), "{}", stderr(&out));
    // NATS is tried before any listener binds: the banner, which is printed
    // once they are bound, never said the node listened.
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains("listening"), "{stdout}");
    assert!(stdout.trim().is_empty(), "nothing printed: {stdout}");
    assert!(!stderr(&out).contains("listening"), "{}", stderr(&out));
}

fn check_config(dir: &Path, text: &str) -> Output {
    let path = dir.join("roost.toml");
    std::fs::write(&path, text).unwrap();
    run(&["check-config", path.to_str().unwrap()])
}

#[test]
fn check_config_validates_the_cluster_table() {
    let dir = tempfile::tempdir().unwrap();
    let ok = check_config(
        dir.path(),
        "[cluster]\nservers = [\"nats://10.0.0.1:4222\"]\nnode = \"gw-1\"\nreplicas = 3\n",
    );
    assert_eq!(ok.status.code(), Some(0), "{}", stderr(&ok));
    let bad = check_config(
        dir.path(),
        "[cluster]\nservers = [\"nats://10.0.0.1:4222\"]\nnode = \"gw-1\"\nreplicas = 2\n",
    );
    assert_eq!(bad.status.code(), Some(2), "{}", stderr(&bad));
    assert!(stderr(&bad).contains("replicas"), "{}", stderr(&bad));
    let nameless = check_config(
        dir.path(),
        "[cluster]\nservers = [\"nats://10.0.0.1:4222\"]\n",
    );
    assert_eq!(nameless.status.code(), Some(2), "{}", stderr(&nameless));
    assert!(stderr(&nameless).contains("node"), "{}", stderr(&nameless));
}

/// `--print-config` and `Debug` never show the NATS password or token.
#[test]
fn printed_configurations_leave_the_nats_secret_out() {
    let dir = tempfile::tempdir().unwrap();
    for (credentials, secret) in [
        (
            "{ user = \"roost\", password = \"s3cret-pass\" }",
            "s3cret-pass",
        ),
        ("{ token = \"s3cret-token\" }", "s3cret-token"),
    ] {
        let path = dir.path().join("roost.toml");
        std::fs::write(
            &path,
            format!(
                "[cluster]\nservers = [\"nats://10.0.0.1:4222\"]\nnode = \"gw-1\"\ncredentials = {credentials}\n"
            ),
        )
        .unwrap();
        let out = run(&["--config", path.to_str().unwrap(), "--print-config"]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let printed = String::from_utf8_lossy(&out.stdout);
        assert!(!printed.contains(secret), "{printed}");
        assert!(printed.contains("<redacted>"), "{printed}");
    }
    let token = roost::Credentials::Token {
        token: "s3cret-token".into(),
    };
    assert!(!format!("{token:?}").contains("s3cret"));
}
