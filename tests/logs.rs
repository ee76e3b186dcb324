//! Attributable logs from the real binary (issue 18): who connected, who
//! was refused and why, what the ACL denied; refusal lines limited in rate
//! while the counters count them all; the start-up lines in JSON with
//! `--log-format json`; the warning when anonymous clients can connect
//! from the network.

mod common;

use common::process::{roost, Broker, Logs};
use common::{v5, Raw};
use roost::codec::{QoS, ReasonCode};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A ledger: `dev` (password `pw`) may publish and subscribe under
/// `dev/#` only.
fn ledger(dir: &Path) -> std::path::PathBuf {
    let hash = roost::hooks::hash_password_with_cost("pw", 4).unwrap();
    let path = dir.join("users.toml");
    std::fs::write(
        &path,
        format!(
            "[[users]]\nusername = \"dev\"\npassword = \"{hash}\"\n\n\
             [[auth]]\nusername = \"dev\"\nallow = true\n\n\
             [[acl]]\nusername = \"dev\"\nfilter = \"dev/#\"\naccess = \"readwrite\"\n"
        ),
    )
    .unwrap();
    path
}

fn json_broker(ledger: &Path) -> (Broker, Logs) {
    let mut cmd = roost(&[
        "--tcp",
        "127.0.0.1:0",
        "--ws",
        "none",
        "--http",
        "127.0.0.1:0",
        "--store",
        "memory",
        "--auth",
        ledger.to_str().unwrap(),
        "--log-format",
        "json",
    ]);
    cmd.stderr(Stdio::piped());
    let mut b = Broker::spawn(cmd);
    let logs = Logs::of(&mut b);
    (b, logs)
}

fn parse(line: &str) -> serde_json::Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"))
}

async fn stats(b: &Broker) -> serde_json::Value {
    common::http::get(b.listener("http stats"), "/stats")
        .await
        .json()
}

fn dev(id: &str, password: &'static [u8]) -> roost::codec::Connect {
    let mut c = v5(id);
    c.username = Some("dev".into());
    c.password = Some(bytes::Bytes::from_static(password));
    c
}

/// "client connected" names the client id, the user and the address; a
/// refused login names the user, the address and the reason; ACL denials
/// name the client and the topic or filter. All as JSON fields.
#[tokio::test]
async fn connects_refusals_and_acl_denials_say_who_and_why() {
    let dir = tempfile::tempdir().unwrap();
    let (b, mut logs) = json_broker(&ledger(dir.path()));

    let (_, ack) = Raw::connect(b.addr, dev("intruder", b"wrong")).await;
    assert_eq!(ack.reason, ReasonCode::BadUserNameOrPassword);
    let refused = parse(&logs.wait_for("authentication failed"));
    assert_eq!(refused["level"], "WARN", "{refused}");
    assert_eq!(refused["target"], roost::REFUSAL, "{refused}");
    assert_eq!(refused["client_id"], "intruder", "{refused}");
    assert_eq!(refused["username"], "dev", "{refused}");
    assert!(
        refused["remote"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:"),
        "{refused}"
    );
    assert!(
        refused["reason"]
            .as_str()
            .unwrap()
            .contains("BadUserNameOrPassword"),
        "{refused}"
    );

    let mut c = Raw::connected(b.addr, dev("sensor-1", b"pw")).await;
    let connected = parse(&logs.wait_for("client connected"));
    assert_eq!(connected["client_id"], "sensor-1", "{connected}");
    assert_eq!(connected["username"], "dev", "{connected}");
    assert_eq!(connected["id_assigned"], false, "{connected}");
    assert!(
        connected["remote"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:"),
        "{connected}"
    );

    let ack = c.subscribe(1, "other/#", QoS::AtLeastOnce).await;
    assert_eq!(ack.reasons, [ReasonCode::NotAuthorized]);
    let denied = parse(&logs.wait_for("subscription denied by the ACL"));
    assert_eq!(denied["filter"], "other/#", "{denied}");
    assert_eq!(denied["client_id"], "sensor-1", "{denied}");
    assert_eq!(denied["username"], "dev", "{denied}");

    c.publish(common::publish("other/cmd", "x", QoS::AtLeastOnce, 7))
        .await;
    let denied = parse(&logs.wait_for("publish denied by the ACL"));
    assert_eq!(denied["topic"], "other/cmd", "{denied}");
    assert_eq!(denied["client_id"], "sensor-1", "{denied}");

    let s = stats(&b).await;
    assert_eq!(s["auth_refused"], 1, "{s}");
    assert_eq!(s["acl_denied"], 2, "{s}");
    c.disconnect().await;
    assert!(b.terminate().await.success());
}

/// A flood of bad logins: every one is counted, but the log gets at most
/// a burst of 50 lines and then 10 a second.
#[tokio::test]
async fn a_flood_of_refusals_is_counted_in_full_and_logged_in_part() {
    let dir = tempfile::tempdir().unwrap();
    let (b, mut logs) = json_broker(&ledger(dir.path()));
    let start = Instant::now();
    const N: usize = 300;
    for i in 0..N {
        let (_, ack) = Raw::connect(b.addr, dev(&format!("x{i}"), b"wrong")).await;
        assert_eq!(ack.reason, ReasonCode::BadUserNameOrPassword);
    }
    let elapsed = start.elapsed().as_secs_f64();
    let s = stats(&b).await;
    assert_eq!(s["auth_refused"], N, "{s}");
    // Everything the broker logged for them is in by now (the stats
    // request was served after the last refusal); read what came.
    let mut lines = 0;
    while let Some(line) = logs.next(std::time::Duration::from_millis(500)) {
        lines += usize::from(line.contains("authentication failed"));
    }
    let allowed = 50.0 + 10.0 * (elapsed + 1.0);
    assert!(lines >= 50, "{lines} lines");
    assert!(
        (lines as f64) <= allowed && lines < N,
        "{lines} lines for {N} refusals in {elapsed:.1} s"
    );
    assert!(b.terminate().await.success());
}

/// With `--log-format json` the start-up lines on stdout are JSON too,
/// with the listener and its address as fields.
#[test]
fn the_start_up_lines_follow_the_log_format() {
    let mut child = roost(&[
        "--tcp",
        "127.0.0.1:0",
        "--ws",
        "none",
        "--http",
        "none",
        "--store",
        "memory",
        "--log-format",
        "json",
    ])
    .stdout(Stdio::piped())
    .spawn()
    .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = parse(&lines.next().unwrap().unwrap());
    assert_eq!(first["listener"], "mqtt tcp", "{first}");
    assert!(first["addr"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(first["message"]
        .as_str()
        .unwrap()
        .contains("mqtt tcp listening on 127.0.0.1:"));
    assert_eq!(first["level"], "INFO");
    let store = parse(&lines.next().unwrap().unwrap());
    assert_eq!(store["store"], "memory (nothing persists)", "{store}");
    let _ = child.kill();
    let _ = child.wait();
}

/// No ledger and a listener on every interface: a warning on stdout and in
/// the log. On loopback, or with a ledger, none.
#[test]
fn anonymous_access_from_the_network_is_warned_about() {
    let open = Broker::start(&[
        "--tcp",
        "0.0.0.0:0",
        "--ws",
        "none",
        "--http",
        "none",
        "--store",
        "memory",
    ]);
    let warning = open
        .lines
        .iter()
        .find(|l| l.contains("warning"))
        .unwrap_or_else(|| panic!("no warning in {:?}", open.lines));
    assert!(warning.contains("without credentials"), "{warning}");
    assert!(warning.contains("mqtt tcp"), "{warning}");
    drop(open);

    let local = Broker::start(&[
        "--tcp",
        "127.0.0.1:0",
        "--ws",
        "none",
        "--http",
        "none",
        "--store",
        "memory",
    ]);
    assert!(
        !local.lines.iter().any(|l| l.contains("warning")),
        "{:?}",
        local.lines
    );
    drop(local);

    let dir = tempfile::tempdir().unwrap();
    let ledger = ledger(dir.path());
    let guarded = Broker::start(&[
        "--tcp",
        "0.0.0.0:0",
        "--ws",
        "none",
        "--http",
        "none",
        "--store",
        "memory",
        "--auth",
        ledger.to_str().unwrap(),
    ]);
    assert!(
        !guarded.lines.iter().any(|l| l.contains("warning")),
        "{:?}",
        guarded.lines
    );
}

/// A TLS client: its certificate's subject in "client connected"; a client
/// without the certificate the listener requires: "handshake failed", with
/// its address, counted.
#[tokio::test]
async fn tls_identity_and_handshake_failures_are_logged() {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use tokio_rustls::rustls::{ClientConfig, RootCertStore};
    let certs = Path::new(env!("CARGO_MANIFEST_DIR")).join("certs");
    let file = |name: &str| certs.join(name).to_str().unwrap().to_string();
    let mut cmd = roost(&[
        "--tcp",
        "none",
        "--ws",
        "none",
        "--http",
        "127.0.0.1:0",
        "--tls",
        "127.0.0.1:0",
        "--cert",
        &file("server.pem"),
        "--key",
        &file("server.key"),
        "--client-ca",
        &file("ca.pem"),
        "--store",
        "memory",
        "--log-format",
        "json",
    ]);
    cmd.stderr(Stdio::piped());
    let mut b = Broker::spawn(cmd);
    let mut logs = Logs::of(&mut b);
    let addr = b.listener("mqtts tls");

    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(certs.join("ca.pem")).unwrap())
        .unwrap();
    let provider = std::sync::Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let anonymous = builder.clone().with_no_client_auth();
    let device = builder
        .with_client_auth_cert(
            CertificateDer::pem_file_iter(certs.join("client.pem"))
                .unwrap()
                .map(Result::unwrap)
                .collect(),
            PrivateKeyDer::from_pem_file(certs.join("client.key")).unwrap(),
        )
        .unwrap();
    let connect = |config: ClientConfig| async move {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
    };

    let tls = connect(device).await.unwrap();
    let mut c = common::listeners::Client::new(Box::new(tls), roost::codec::ProtocolVersion::V5);
    assert_eq!(c.connect(v5("dev-1")).await.reason, ReasonCode::Success);
    let line = parse(&logs.wait_for("client connected"));
    assert_eq!(line["client_id"], "dev-1", "{line}");
    let subject = line["certificate"].as_str().unwrap_or_default();
    assert!(subject.contains("CN="), "{line}");

    // TLS 1.3: the client learns of the refusal at its first read.
    if let Ok(mut tls) = connect(anonymous).await {
        let _ = tls.write_all(b"\x10\x00").await;
        let _ = tls.read(&mut [0; 16]).await;
    }
    let line = parse(&logs.wait_for("handshake failed"));
    assert_eq!(line["level"], "INFO", "{line}");
    assert_eq!(line["target"], roost::REFUSAL, "{line}");
    assert!(
        line["remote"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{line}"
    );
    assert_eq!(stats(&b).await["handshakes_failed"], 1);
    c.disconnect().await;
    assert!(b.terminate().await.success());
}

/// The admin API on plain HTTP at a network address: warned about on
/// stdout and in the log, since its token would cross the network in clear.
#[test]
fn an_admin_token_over_plain_http_on_the_network_is_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("roost.toml");
    std::fs::write(
        &config,
        "[store]\nbackend = \"memory\"\n\n\
         [[listener]]\ntype = \"tcp\"\nbind = \"127.0.0.1:0\"\n\n\
         [[listener]]\ntype = \"http\"\nbind = \"0.0.0.0:0\"\nadmin_token_env = \"ROOST_TEST_ADMIN_TOKEN\"\n",
    )
    .unwrap();
    let mut cmd = roost(&["--config", config.to_str().unwrap()]);
    cmd.env("ROOST_TEST_ADMIN_TOKEN", "0123456789abcdef0123")
        .stderr(Stdio::piped());
    let mut b = Broker::spawn(cmd);
    let mut logs = Logs::of(&mut b);
    let warning = b
        .lines
        .iter()
        .find(|l| l.contains("warning"))
        .unwrap_or_else(|| panic!("no warning in {:?}", b.lines));
    assert!(warning.contains("in clear"), "{warning}");
    assert!(!warning.contains("0123456789abcdef"), "{warning}");
    let line = logs.wait_for("crosses the network in clear");
    assert!(line.contains("WARN"), "{line}");
}
