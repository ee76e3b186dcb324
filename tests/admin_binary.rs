//! The admin API and ledger reloads in the `roost` binary: the token from
//! `admin_token_file`, refused without it; on SIGHUP, the clients of a user
//! the new ledger removes or disables are disconnected (0x98), others stay.

mod common;
use common::http::request;
use common::process::{roost, Broker, Logs};
use common::*;
use roost::codec::{Connect, ReasonCode};
use std::path::Path;
use std::process::Stdio;

const TOKEN: &str = "binary-token-0123456789";

fn ledger(users: &[(&str, bool)]) -> String {
    let hash = roost::hooks::hash_password_with_cost("pw", 4).unwrap();
    let mut text = String::new();
    for (name, disabled) in users {
        text.push_str(&format!(
            "[[users]]\nusername = \"{name}\"\npassword = \"{hash}\"\ndisabled = {disabled}\n\n"
        ));
    }
    text + "[[auth]]\nallow = true\n\n[[acl]]\nfilter = \"#\"\naccess = \"readwrite\"\n"
}

fn user(id: &str, name: &str) -> Connect {
    let mut c = v5(id);
    c.username = Some(name.into());
    c.password = Some(bytes::Bytes::from_static(b"pw"));
    c
}

fn start(dir: &Path, disconnect_on_reload: Option<bool>) -> (Broker, Logs) {
    std::fs::write(dir.join("token"), format!("{TOKEN}\n")).unwrap();
    std::fs::write(
        dir.join("users.toml"),
        ledger(&[("alice", false), ("bob", false), ("carol", false)]),
    )
    .unwrap();
    let mut config = format!(
        "[store]\nbackend = \"memory\"\n\n[auth]\nledger = \"{}\"\n",
        dir.join("users.toml").display()
    );
    if let Some(on) = disconnect_on_reload {
        config.push_str(&format!("disconnect_on_reload = {on}\n"));
    }
    config.push_str(&format!(
        "\n[[listener]]\ntype = \"tcp\"\nbind = \"127.0.0.1:0\"\n\n\
         [[listener]]\ntype = \"http\"\nbind = \"127.0.0.1:0\"\nadmin_token_file = \"{}\"\n",
        dir.join("token").display()
    ));
    std::fs::write(dir.join("roost.toml"), config).unwrap();
    let mut cmd = roost(&["--config", dir.join("roost.toml").to_str().unwrap()]);
    cmd.stderr(Stdio::piped());
    let mut b = Broker::spawn(cmd);
    let logs = Logs::of(&mut b);
    (b, logs)
}

#[tokio::test]
async fn the_token_comes_from_its_file_and_a_reload_disconnects_revoked_users() {
    let dir = tempfile::tempdir().unwrap();
    let (b, mut logs) = start(dir.path(), None);
    assert!(
        b.lines
            .iter()
            .any(|l| l.contains("admin API on http://127.0.0.1:")),
        "{:?}",
        b.lines
    );
    let http = b.listener("http stats");
    assert_eq!(
        request(http, "GET", "/api/v1/clients", None, None)
            .await
            .status,
        401
    );

    let mut alice = Raw::connected(b.addr, user("a1", "alice")).await;
    let mut bob = Raw::connected(b.addr, user("b1", "bob")).await;
    let mut carol = Raw::connected(b.addr, user("c1", "carol")).await;
    let v = request(http, "GET", "/api/v1/clients/b1", Some(TOKEN), None)
        .await
        .json();
    assert_eq!(v["username"], "bob");

    // bob removed, carol disabled, alice unchanged.
    std::fs::write(
        dir.path().join("users.toml"),
        ledger(&[("alice", false), ("carol", true)]),
    )
    .unwrap();
    b.signal("-HUP");
    let line = logs.wait_for("disconnected the clients of users");
    assert!(line.contains("clients=2"), "{line}");
    assert_eq!(
        expect_disconnect(&mut bob).await,
        ReasonCode::AdministrativeAction
    );
    assert_eq!(
        expect_disconnect(&mut carol).await,
        ReasonCode::AdministrativeAction
    );
    alice.sync().await;
    // And they cannot come back.
    let (_, ack) = Raw::connect(b.addr, user("b2", "bob")).await;
    assert_eq!(ack.reason, ReasonCode::BadUserNameOrPassword);
    assert!(b.terminate().await.success());
}

#[tokio::test]
async fn with_disconnect_on_reload_off_clients_stay() {
    let dir = tempfile::tempdir().unwrap();
    let (b, mut logs) = start(dir.path(), Some(false));
    let mut bob = Raw::connected(b.addr, user("b1", "bob")).await;
    std::fs::write(dir.path().join("users.toml"), ledger(&[("alice", false)])).unwrap();
    b.signal("-HUP");
    logs.wait_for("SIGHUP handled");
    bob.sync().await;
    assert!(b.terminate().await.success());
}
