//! `roost passwd`, run as the real binary: its hashes and the ledger files
//! it edits are what a real broker (also the binary) accepts, with real
//! clients logging in.

mod common;
use common::process::{roost, Broker, Logs};
use common::*;
use roost::codec::ReasonCode;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// `roost passwd ARGS` with `input` on stdin.
fn passwd(args: &[&str], input: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_roost"))
        .arg("passwd")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("roost runs");
    // Ignored: a command that refuses early does not read its input.
    let _ = child.stdin.take().unwrap().write_all(input.as_bytes());
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Rules that let every named user in with its password.
const RULES: &str = "\
# Who may connect.
[[auth]]
anonymous = false
allow = true

[[acl]]
filter = \"#\"
access = \"readwrite\"
";

/// What a rumqttc (3.1.1) client logging in as `user`/`password` gets.
async fn rumqttc_login(addr: SocketAddr, user: &str, password: &str) -> rumqttc::ConnectReturnCode {
    let mut opts = rumqttc::MqttOptions::new(unique("passwd"), "127.0.0.1", addr.port());
    opts.set_credentials(user, password);
    let (_client, mut events) = rumqttc::AsyncClient::new(opts, 10);
    let answer = tokio::time::timeout(WAIT, async {
        loop {
            match events.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(ack))) => return ack.code,
                Ok(_) => {}
                Err(rumqttc::ConnectionError::ConnectionRefused(code)) => return code,
                Err(e) => panic!("rumqttc: {e}"),
            }
        }
    });
    answer.await.expect("a CONNACK")
}

/// What the raw client logging in (MQTT 5) as `user`/`password` gets.
async fn raw_login(addr: SocketAddr, user: &str, password: &str) -> ReasonCode {
    let mut c = v5(&unique("raw"));
    c.username = Some(user.into());
    c.password = Some(bytes::Bytes::copy_from_slice(password.as_bytes()));
    Raw::connect(addr, c).await.1.reason
}

fn start(ledger: &Path) -> (Broker, Logs) {
    let mut cmd = roost(&[
        "--tcp",
        "127.0.0.1:0",
        "--store",
        "memory",
        "--auth",
        ledger.to_str().unwrap(),
    ]);
    cmd.stderr(Stdio::piped());
    let mut b = Broker::spawn(cmd);
    let logs = Logs::of(&mut b);
    (b, logs)
}

/// The hash `roost passwd --stdin` prints, pasted into a ledger, lets a
/// rumqttc client in with that password and no other.
#[tokio::test]
async fn a_printed_hash_is_accepted_by_the_ledger_and_a_client_logs_in() {
    let out = passwd(&["--stdin", "--cost", "4"], "s3cret pass\n");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let hash = text(&out.stdout);
    let hash = hash.trim_end();
    assert!(hash.starts_with("$2b$04$") && hash.len() == 60, "{hash:?}");
    assert!(!text(&out.stdout).contains("s3cret"));

    // With a user name, a [[users]] entry to append, at the default cost.
    let out = passwd(&["--stdin", "dev"], "other\r\n");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let entry = text(&out.stdout);
    assert!(
        entry.contains("\n[[users]]\nusername = \"dev\"\npassword = \"$2b$10$"),
        "{entry}"
    );

    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("users.toml");
    let file = format!("[[users]]\nusername = \"alice\"\npassword = \"{hash}\"\n{RULES}{entry}");
    std::fs::write(&ledger, file).unwrap();
    let (b, _logs) = start(&ledger);
    assert_eq!(
        rumqttc_login(b.addr, "alice", "s3cret pass").await,
        rumqttc::ConnectReturnCode::Success
    );
    assert_eq!(
        rumqttc_login(b.addr, "alice", "s3cret").await,
        rumqttc::ConnectReturnCode::BadUserNamePassword
    );
    // The line ending (CRLF here) was not part of the password.
    assert_eq!(raw_login(b.addr, "dev", "other").await, ReasonCode::Success);
}

/// `--file` adds a user to a ledger, then changes its password, then
/// removes it, each time keeping the file's comments, rules, mode and
/// validity; the running broker takes each change on SIGHUP.
#[tokio::test]
async fn file_edits_are_taken_on_sighup_and_keep_the_rest_of_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("users.toml");
    let path = ledger.to_str().unwrap();
    let header = "# Users of site 17.\n# Keep this comment.\n";
    std::fs::write(&ledger, format!("{header}\n{RULES}")).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&ledger, std::fs::Permissions::from_mode(0o640)).unwrap();
    }

    let out = passwd(
        &["--stdin", "--cost", "4", "--file", path, "alice"],
        "first\n",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("added user \"alice\""),
        "{}",
        text(&out.stdout)
    );
    let (b, mut logs) = start(&ledger);
    assert_eq!(
        raw_login(b.addr, "alice", "first").await,
        ReasonCode::Success
    );

    let out = passwd(
        &["--stdin", "--cost", "4", "--file", path, "alice"],
        "second\n",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("updated"),
        "{}",
        text(&out.stdout)
    );
    let edited = std::fs::read_to_string(&ledger).unwrap();
    assert!(edited.starts_with(header), "{edited}");
    assert!(edited.contains(RULES), "{edited}");
    assert_eq!(edited.matches("[[users]]").count(), 1, "{edited}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&ledger).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o640, "the mode is kept");
    }
    // No temporary file is left beside it.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["users.toml"]);

    b.signal("-HUP");
    logs.wait_for("auth ledger reloaded");
    assert_eq!(
        raw_login(b.addr, "alice", "first").await,
        ReasonCode::BadUserNameOrPassword,
        "the old password is refused"
    );
    assert_eq!(
        raw_login(b.addr, "alice", "second").await,
        ReasonCode::Success
    );

    let out = passwd(&["--file", path, "--delete", "alice"], "");
    assert!(out.status.success(), "{}", text(&out.stderr));
    b.signal("-HUP");
    logs.wait_for("auth ledger reloaded");
    assert_eq!(
        raw_login(b.addr, "alice", "second").await,
        ReasonCode::BadUserNameOrPassword
    );
    assert_eq!(
        std::fs::read_to_string(&ledger).unwrap(),
        format!("{header}\n{RULES}"),
        "back to the file as it was"
    );
    // Deleting again: nobody to delete, exit 2.
    let out = passwd(&["--file", path, "--delete", "alice"], "");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("no user \"alice\""),
        "{}",
        text(&out.stderr)
    );
}

/// What cannot make a usable ledger is refused, and the file is left as
/// it was: an empty password, a user name the ledger refuses, a file that
/// is not TOML, no input at all.
#[test]
fn refusals_leave_the_file_alone() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("users.toml");
    let path = ledger.to_str().unwrap();
    std::fs::write(&ledger, RULES).unwrap();
    for (args, input, says) in [
        (vec!["--stdin", "--file", path, "alice"], "\n", "empty"),
        (
            vec!["--stdin", "--file", path, "alice"],
            "",
            "standard input is empty",
        ),
        (
            vec!["--stdin", "--cost", "4", "--file", path, ""],
            "pw\n",
            "would not load",
        ),
    ] {
        let out = passwd(&args, input);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(
            text(&out.stderr).contains(says),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert_eq!(std::fs::read_to_string(&ledger).unwrap(), RULES);
    }
    let broken = dir.path().join("broken.toml");
    std::fs::write(&broken, "[[users]\n").unwrap();
    let out = passwd(
        &["--stdin", "--file", broken.to_str().unwrap(), "a"],
        "pw\n",
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("not a TOML file"),
        "{}",
        text(&out.stderr)
    );
    // The cost is bounded as bcrypt bounds it; a password never comes
    // from the command line.
    let out = passwd(&["--stdin", "--cost", "3"], "pw\n");
    assert_eq!(out.status.code(), Some(2));
    let out = passwd(&["--stdin", "--password", "pw"], "");
    assert_eq!(out.status.code(), Some(2));
}

/// On a terminal (a pseudo-terminal made by `script`), the password is
/// asked twice and never echoed; two different answers are refused.
#[test]
fn the_terminal_prompt_does_not_echo() {
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("skipped: `script` (util-linux) is not installed");
        return;
    }
    let exe = env!("CARGO_BIN_EXE_roost");
    let session = |answers: [&str; 2]| -> (String, Option<i32>) {
        let mut child = Command::new("script")
            .args(["-qec", &format!("{exe} passwd --cost 4"), "/dev/null"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0; 256];
            while let Ok(n @ 1..) = stdout.read(&mut buf) {
                let _ = tx.send(buf[..n].to_vec());
            }
        });
        let mut seen = Vec::new();
        let wait_for = |needle: &str, seen: &mut Vec<u8>| {
            while !text(seen).contains(needle) {
                match rx.recv_timeout(WAIT) {
                    Ok(chunk) => seen.extend(chunk),
                    Err(_) => panic!("no {needle:?} in {:?}", text(seen)),
                }
            }
        };
        // Each answer only once its prompt is up: turning echo off
        // discards what was typed ahead, as password prompts do.
        wait_for("Password: ", &mut seen);
        stdin.write_all(answers[0].as_bytes()).unwrap();
        wait_for("again: ", &mut seen);
        stdin.write_all(answers[1].as_bytes()).unwrap();
        let status = child.wait().unwrap();
        seen.extend(rx.try_iter().flatten());
        (text(&seen), status.code())
    };
    let (screen, code) = session(["hunter2\n", "hunter2\n"]);
    assert_eq!(code, Some(0), "{screen}");
    assert!(screen.contains("$2b$04$"), "{screen}");
    assert!(!screen.contains("hunter2"), "echoed: {screen}");
    let (screen, code) = session(["hunter2\n", "hunter3\n"]);
    assert_ne!(code, Some(0), "{screen}");
    assert!(screen.contains("do not match"), "{screen}");
    assert!(!screen.contains("hunter"), "echoed: {screen}");
}
