//! The `roost` binary's configuration, command line, signals and logs, run
//! as a child process. Every listener binds 127.0.0.1:0; the defaults are
//! checked through `--print-config`, which binds nothing.

mod common;
use common::listeners::*;
use common::process::{roost, run_in, stderr, Broker, Logs};
use common::*;
use roost::codec::{Packet, ProtocolVersion, QoS, ReasonCode};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// Runs `roost ARGS` in `dir` to its end.
fn run(args: &[&str]) -> Output {
    run_in(Path::new("."), args)
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// `--print-config`'s output, parsed.
fn print_config(dir: &Path, args: &[&str]) -> toml::Table {
    let mut all = args.to_vec();
    all.push("--print-config");
    let out = run_in(dir, &all);
    assert!(out.status.success(), "{}", stderr(&out));
    toml::from_str(&String::from_utf8(out.stdout).unwrap()).expect("TOML")
}

/// The listeners of a printed configuration, as (type, bind).
fn listeners(config: &toml::Table) -> Vec<(String, String)> {
    let Some(list) = config.get("listener") else {
        return Vec::new();
    };
    list.as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["type"].as_str().unwrap().to_owned(),
                l["bind"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[test]
fn no_arguments_means_tcp_1883_ws_1882_http_8080_and_redb_in_data() {
    let dir = tempfile::tempdir().unwrap();
    let config = print_config(dir.path(), &[]);
    assert_eq!(
        listeners(&config),
        pairs(&[
            ("tcp", "0.0.0.0:1883"),
            ("ws", "0.0.0.0:1882"),
            // Stats on loopback only, unless opened up.
            ("http", "127.0.0.1:8080")
        ])
    );
    assert_eq!(config["store"]["backend"].as_str(), Some("redb"));
    assert_eq!(config["store"]["data_dir"].as_str(), Some("./data"));
    assert_eq!(
        config["durability"]["mode"].as_str(),
        Some("ack-after-commit")
    );
    assert_eq!(config["sys_interval"].as_str(), Some("10s"));
    assert_eq!(config["log"]["level"].as_str(), Some("info"));
    assert_eq!(config["capabilities"]["maximum_qos"].as_integer(), Some(2));
    assert_eq!(config["limits"]["connect_timeout"].as_str(), Some("10s"));
    assert!(
        !dir.path().join("data").exists(),
        "--print-config opens nothing"
    );
}

#[test]
fn the_example_file_gives_the_defaults_and_documents_every_key() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/roost.toml");
    let example_arg = example.to_str().unwrap();
    let out = run(&["check-config", example_arg]);
    assert!(out.status.success(), "{}", stderr(&out));
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(
        print_config(dir.path(), &["--config", example_arg]),
        print_config(dir.path(), &[]),
        "loading the example gives exactly the defaults"
    );
    // Every key, including those that are unset by default, is there
    // (commented out if it has no default value).
    let text = std::fs::read_to_string(&example).unwrap();
    let mut keys = Vec::new();
    fn collect(table: &toml::Table, keys: &mut Vec<String>) {
        for (k, v) in table {
            match v.as_table() {
                Some(t) => {
                    keys.push(format!("[{k}]"));
                    collect(t, keys);
                }
                None => keys.push(k.clone()),
            }
        }
    }
    collect(&print_config(dir.path(), &[]), &mut keys);
    keys.extend(
        [
            "workers",
            "flush_interval",
            "ledger",
            "filter",
            "server_keep_alive",
            "path",
            "subprotocols",
            "cert",
            "key",
            "client_ca",
            "client_auth",
            "username_from",
            "crl",
            "client_id_from",
            "session_tickets",
            "session_cache",
            "handshakes_in_progress",
            "admin_token_file",
            "admin_token_env",
            "disconnect_on_reload",
        ]
        .map(String::from),
    );
    for key in keys {
        if key == "listener" {
            assert!(text.contains("\n[[listener]]\n"));
            continue;
        }
        if key.starts_with('[') {
            assert!(text.contains(&format!("\n{key}\n")), "documents {key}");
            continue;
        }
        assert!(
            text.contains(&format!("\n{key} = ")) || text.contains(&format!("\n# {key} = ")),
            "deploy/roost.toml documents {key:?}"
        );
    }
}

#[test]
fn flags_override_the_file_kind_by_kind() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "roost.toml",
        r#"
[store]
backend = "memory"
[log]
level = "debug"
[[listener]]
type = "tcp"
bind = "127.0.0.1:0"
[[listener]]
type = "ws"
bind = "127.0.0.1:0"
[[listener]]
type = "http"
bind = "127.0.0.1:0"
"#,
    );
    let file = file.to_str().unwrap();
    let config = print_config(
        dir.path(),
        &[
            "--config",
            file,
            "--tcp",
            "127.0.0.1:1999",
            "--tcp",
            "[::1]:1999",
            "--http",
            "none",
            "--data-dir",
            "/srv/roost",
            "--log-format",
            "json",
        ],
    );
    assert_eq!(
        listeners(&config),
        pairs(&[
            ("tcp", "127.0.0.1:1999"),
            ("tcp", "[::1]:1999"),
            ("ws", "127.0.0.1:0")
        ])
    );
    assert_eq!(config["store"]["backend"].as_str(), Some("memory"));
    assert_eq!(config["store"]["data_dir"].as_str(), Some("/srv/roost"));
    assert_eq!(config["log"]["level"].as_str(), Some("debug"));
    assert_eq!(config["log"]["format"].as_str(), Some("json"));

    // Without a file, naming one listener drops the defaults.
    let only = print_config(dir.path(), &["--tcp", "127.0.0.1:0"]);
    assert_eq!(listeners(&only), pairs(&[("tcp", "127.0.0.1:0")]));
    // ...and a TLS flag gets the certificate flags.
    let tls = print_config(
        dir.path(),
        &[
            "--tls",
            "127.0.0.1:0",
            "--cert",
            "s.pem",
            "--key",
            "s.key",
            "--client-ca",
            "ca.pem",
        ],
    );
    let l = &tls["listener"][0];
    assert_eq!(l["type"].as_str(), Some("tls"));
    assert_eq!(l["cert"].as_str(), Some("s.pem"));
    assert_eq!(l["key"].as_str(), Some("s.key"));
    assert_eq!(l["client_ca"].as_str(), Some("ca.pem"));

    // The printed configuration reads back as the same configuration.
    let printed = write(
        dir.path(),
        "printed.toml",
        &toml::to_string(&config).unwrap(),
    );
    let printed = printed.to_str().unwrap();
    assert_eq!(print_config(dir.path(), &["--config", printed]), config);
}

#[test]
fn command_line_mistakes_exit_2_and_name_the_flag() {
    for (args, needle) in [
        (&["--tls", "127.0.0.1:0"][..], "--tls"),
        (&["--tcp", "127.0.0.1:0", "--cert", "c.pem"], "--cert"),
        (&["--tcp", "none"], "no listener"),
        (&["--tcp", "none", "--tcp", "127.0.0.1:0"], "--tcp"),
        (&["--ws", "localhost"], "--ws"),
        (&["--log-format", "xml"], "--log-format"),
    ] {
        let out = run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(needle), "{args:?}: {}", stderr(&out));
    }
}

#[cfg(not(feature = "ledger"))]
#[test]
fn auth_is_refused_clearly_in_a_build_without_the_ledger() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(&[
        "--tcp",
        "127.0.0.1:0",
        "--store",
        "memory",
        "--auth",
        "users.ledger",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("--auth"), "{err}");
    assert!(err.contains("users.ledger"), "{err}");
    assert!(err.contains("not available in this build"), "{err}");

    let file = write(
        dir.path(),
        "auth.toml",
        "[store]\nbackend = \"memory\"\n\n[auth]\nledger = \"users.ledger\"\n",
    );
    let out = run(&["check-config", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("auth.toml:5"), "names the line: {err}");
    assert!(err.contains("not available in this build"), "{err}");
}

#[test]
fn bad_config_files_are_refused_naming_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&str, &[&str])] = &[
        (
            "sys_interval = \"5s\"\n\n[capabilities]\nmaxium_qos = 1\n",
            &[
                "bad.toml:4:",
                "unknown key \"maxium_qos\" in [capabilities]",
                "did you mean \"maximum_qos\"",
            ],
        ),
        (
            "[limits]\nmaximum_packet_size = \"big\"\n",
            &[
                "bad.toml:2:",
                "\"maximum_packet_size\" in [limits]",
                "invalid size \"big\"",
            ],
        ),
        (
            "[limits]\nreceive_maximum = 1024\nconnect_timeout = \"10 parsecs\"\n",
            &[
                "bad.toml:3:",
                "\"connect_timeout\"",
                "invalid duration \"10 parsecs\"",
            ],
        ),
        (
            "[store]\nbackend = \"memory\"\n\n[[listener]]\ntype = \"tls\"\nbind = \"127.0.0.1:0\"\ncert = \"missing.pem\"\nkey = \"missing.key\"\n",
            &["bad.toml:4", "tls listener", "cannot read missing.pem"],
        ),
        (
            "[[listener]]\ntype = \"tcp\"\nbind = \"127.0.0.1:0\"\ncert = \"x.pem\"\n",
            &["bad.toml:1", "cert applies only to tls"],
        ),
        (
            "[[listener]]\ntype = \"ws\"\nbind = \"127.0.0.1:0\"\nsession_cache = 100\n",
            &["bad.toml:1", "session_cache applies only to tls"],
        ),
        (
            "[[listener]]\ntype = \"tls\"\nbind = \"127.0.0.1:0\"\nsession_cache = -1\n",
            &["bad.toml:4:", "session_cache", "invalid value: integer `-1`"],
        ),
        (
            "[[listener]]\ntype = \"tls\"\nbind = \"127.0.0.1:0\"\nsession_tickets = \"no\"\n",
            &["bad.toml:4:", "session_tickets", "invalid type: string \"no\""],
        ),
        (
            "[[listener]]\ntype = \"tcp\"\n",
            &["bad.toml:1:", "missing key \"bind\" in [[listener]]"],
        ),
        (
            "[durability]\nmode = \"ack-eventually\"\n",
            &["bad.toml:2:", "\"mode\" in [durability]", "ack-before-commit"],
        ),
        (
            "[limits]\nmaximum_connections = 10\nmaximum_connections_per_ip = -1\n",
            &[
                "bad.toml:3:",
                "\"maximum_connections_per_ip\" in [limits]",
                "invalid value: integer `-1`",
            ],
        ),
        (
            "[limits]\nmaximum_connect_rate_per_ip = \"10/s\"\n",
            &[
                "bad.toml:2:",
                "\"maximum_connect_rate_per_ip\" in [limits]",
                "invalid type: string \"10/s\"",
            ],
        ),
        (
            "[limits]\nmaximum_connect_rate_per_ip = 5000000000\n",
            &["bad.toml:2:", "\"maximum_connect_rate_per_ip\" in [limits]"],
        ),
        (
            "[[listener]]\ntype = \"tls\"\nbind = \"127.0.0.1:0\"\ncert = \"s.pem\"\nkey = \"s.key\"\nclient_ca = \"ca.pem\"\nclient_id_from = \"serial\"\n",
            &[
                "bad.toml:7:",
                "\"client_id_from\" in [[listener]]",
                "common-name",
            ],
        ),
        (
            "[[listener]]\ntype = \"tcp\"\nbind = \"127.0.0.1:0\"\nclient_id_from = \"common-name\"\n",
            &["bad.toml:1", "client_id_from applies only to tls"],
        ),
        (
            "[[listener]]\ntype = \"tls\"\nbind = \"127.0.0.1:0\"\ncert = \"s.pem\"\nkey = \"s.key\"\nclient_id_from = \"common-name\"\n",
            &["bad.toml:1", "tls listener", "client_id_from", "need client_ca"],
        ),
        ("[limits\n", &["bad.toml:1:"]),
    ];
    for (text, needles) in cases {
        let file = write(dir.path(), "bad.toml", text);
        // check-config and a real start refuse it the same way, with 2.
        for args in [
            vec!["check-config", file.to_str().unwrap()],
            vec!["--config", file.to_str().unwrap()],
        ] {
            let out = run_in(dir.path(), &args);
            let err = stderr(&out);
            assert_eq!(out.status.code(), Some(2), "{text}: {err}");
            for needle in *needles {
                assert!(err.contains(needle), "{text}: {needle:?} not in {err}");
            }
        }
    }
}

#[test]
fn check_config_exits_0_valid_2_invalid_1_unreadable() {
    let dir = tempfile::tempdir().unwrap();
    let good = write(dir.path(), "good.toml", "[store]\nbackend = \"memory\"\n");
    let out = run(&["check-config", good.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("valid"));

    let bad = write(dir.path(), "bad.toml", "[store]\nbackend = \"floppy\"\n");
    let out = run(&["check-config", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("floppy"), "{}", stderr(&out));

    let missing = dir.path().join("missing.toml");
    for args in [
        vec!["check-config", missing.to_str().unwrap()],
        vec!["--config", missing.to_str().unwrap()],
    ] {
        let out = run(&args);
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        assert!(stderr(&out).contains("missing.toml"), "{}", stderr(&out));
    }
}

#[test]
fn a_listener_that_cannot_bind_names_the_address_and_the_reason() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = run(&["--tcp", "127.0.0.1:0", "--http", &addr, "--store", "memory"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains(&format!("cannot listen on {addr}")), "{err}");
    assert!(
        err.contains("--http"),
        "says where it was configured: {err}"
    );
    assert!(
        err.to_lowercase().contains("in use"),
        "gives the reason: {err}"
    );
    assert!(
        out.stdout.is_empty(),
        "no start-up line before everything is bound"
    );
}

#[tokio::test]
async fn a_config_file_moves_every_listener_and_the_broker_serves_on_them() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "roost.toml",
        r#"
sys_interval = "off"

[store]
backend = "memory"

[[listener]]
type = "tcp"
bind = "127.0.0.1:0"

[[listener]]
type = "ws"
bind = "127.0.0.1:0"
path = "/broker"

[[listener]]
type = "http"
bind = "127.0.0.1:0"
"#,
    );
    let b = Broker::start(&["--config", file.to_str().unwrap()]);
    let kinds: Vec<_> = b.listeners.iter().map(|(w, _)| w.as_str()).collect();
    assert_eq!(
        kinds,
        ["mqtt tcp", "ws websocket", "http stats"],
        "{:?}",
        b.lines
    );
    assert!(b
        .listeners
        .iter()
        .all(|(_, a)| a.ip().is_loopback() && a.port() != 0));
    assert!(
        b.lines.last().unwrap().contains("store memory"),
        "{:?}",
        b.lines
    );

    let mut sub = Raw::connected(b.addr, v5("sub")).await;
    sub.subscribe(1, "t", QoS::AtLeastOnce).await;
    let tcp = TcpStream::connect(b.listener("ws websocket"))
        .await
        .unwrap();
    let (ws, _) = ws_connect(tcp, "ws://localhost/broker", "mqtt")
        .await
        .unwrap();
    let mut publisher = Client::new(Box::new(ws), ProtocolVersion::V5);
    let ack = publisher.connect(v5("pub")).await;
    assert_eq!(ack.reason, ReasonCode::Success);
    publisher
        .publish(publish("t", "over websocket", QoS::AtLeastOnce, 1))
        .await;
    assert_eq!(payload(&sub.recv_publish().await), "over websocket");

    let r = common::http::get(b.listener("http stats"), "/stats").await;
    assert_eq!(r.status, 200, "{r:?}");
    let (stats, body) = (r.json(), r.body);
    assert!(stats.is_object(), "{body}");
    assert!(b.terminate().await.success());
}

#[tokio::test]
async fn sigterm_disconnects_flushes_and_exits_0_and_the_queued_message_survives() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "roost.toml",
        "[store]\nbackend = \"redb\"\ndata_dir = \"state\"\n\n[[listener]]\ntype = \"tcp\"\nbind = \"127.0.0.1:0\"\n",
    );
    let start = || {
        let mut cmd = roost(&["--config", file.to_str().unwrap()]);
        cmd.current_dir(dir.path());
        Broker::spawn(cmd)
    };
    let b = start();
    let mut persistent = connect(ProtocolVersion::V5, "keeper", false);
    persistent.properties.session_expiry_interval = Some(3600);
    let mut s = Raw::connected(b.addr, persistent.clone()).await;
    s.subscribe(1, "q", QoS::AtLeastOnce).await;
    s.disconnect().await;
    let mut p = Raw::connected(b.addr, v5("p")).await;
    assert!(p
        .publish(publish("q", "queued while away", QoS::AtLeastOnce, 1))
        .await
        .is_success());

    let began = Instant::now();
    b.signal("-TERM");
    let got = p.expect_closed().await;
    assert!(
        got.iter().any(
            |pk| matches!(pk, Packet::Disconnect(d) if d.reason == ReasonCode::ServerShuttingDown)
        ),
        "v5 clients get DISCONNECT 0x8B: {got:?}"
    );
    let mut b = b;
    let mut child = std::mem::replace(&mut b.child, Command::new("true").spawn().unwrap());
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
    assert!(
        began.elapsed() < Duration::from_secs(10),
        "{:?}",
        began.elapsed()
    );
    assert!(dir.path().join("state/roost.redb").exists());

    let b = start();
    let (mut s, ack) = Raw::connect(b.addr, persistent).await;
    assert!(
        ack.session_present,
        "the session survives a SIGTERM restart"
    );
    let m = s.recv_publish().await;
    assert_eq!(payload(&m), "queued while away");
    s.ack(&m).await;
}

#[tokio::test]
async fn sighup_serves_a_new_certificate_to_new_connections_and_keeps_old_ones() {
    let certs = TestCerts::generate();
    let cert = certs.server.cert_path.to_str().unwrap().to_owned();
    let key = certs.server.key_path.to_str().unwrap().to_owned();
    let mut cmd = roost(&[
        "--tls",
        "127.0.0.1:0",
        "--cert",
        &cert,
        "--key",
        &key,
        "--store",
        "memory",
    ]);
    cmd.stderr(Stdio::piped());
    let mut b = Broker::spawn(cmd);
    let mut logs = Logs::of(&mut b);
    let addr = b.listener("mqtts tls");
    let trust = certs.client_config(None);
    let served = |stream: &tokio_rustls::client::TlsStream<TcpStream>| {
        stream.get_ref().1.peer_certificates().unwrap()[0].clone()
    };

    let old = tls_connect(addr, trust).await.unwrap();
    assert_eq!(served(&old), certs.server.der());
    let mut old = Client::new(Box::new(old), ProtocolVersion::V5);
    assert_eq!(old.connect(v5("old")).await.reason, ReasonCode::Success);

    let renewed = issue_server(certs.dir.path(), "renewed", &certs.ca, 2, "localhost");
    std::fs::copy(&renewed.cert_path, &certs.server.cert_path).unwrap();
    std::fs::copy(&renewed.key_path, &certs.server.key_path).unwrap();
    b.signal("-HUP");
    let line = logs.wait_for("SIGHUP handled");
    assert!(line.contains("tls_reloaded=1"), "{line}");
    // A client config of its own: with `trust`'s stored session the
    // connection would resume (sessions outlive a reload) and bring back
    // the certificate of the handshake that made it.
    let new = tls_connect(addr, certs.client_config(None)).await.unwrap();
    assert_eq!(
        served(&new),
        renewed.der(),
        "new connections get the new certificate"
    );
    old.ping().await; // the old connection is still up

    // A broken file on the next SIGHUP keeps the certificate in use.
    std::fs::write(&certs.server.cert_path, "not a certificate").unwrap();
    b.signal("-HUP");
    logs.wait_for("TLS reload failed");
    let line = logs.wait_for("SIGHUP handled");
    assert!(line.contains("tls_failed=1"), "{line}");
    let again = tls_connect(addr, certs.client_config(None)).await.unwrap();
    assert_eq!(served(&again), renewed.der());
    old.ping().await;
    assert!(b.terminate().await.success());
}

/// The per-source limits of `[limits]` and a TLS listener's
/// `client_id_from` reach the broker: a certificate's CN is the client id
/// whatever the CONNECT claims (and the log says so), and past
/// `maximum_connections_per_ip` a connection is closed and counted, while
/// the stats endpoint, not counted, still answers.
#[tokio::test]
async fn per_source_limits_and_the_certificate_client_id_come_from_the_file() {
    let certs = TestCerts::generate();
    let dir = tempfile::tempdir().unwrap();
    let path = |p: &Path| p.to_str().unwrap().to_owned();
    let file = write(
        dir.path(),
        "roost.toml",
        &format!(
            r#"
[store]
backend = "memory"

[limits]
maximum_connections_per_ip = 2
maximum_connect_rate_per_ip = 100

[[listener]]
type = "tcp"
bind = "127.0.0.1:0"

[[listener]]
type = "tls"
bind = "127.0.0.1:0"
cert = "{}"
key = "{}"
client_ca = "{}"
client_id_from = "common-name"

[[listener]]
type = "http"
bind = "127.0.0.1:0"
"#,
            path(&certs.server.cert_path),
            path(&certs.server.key_path),
            path(&certs.ca.cert_path),
        ),
    );
    let config = print_config(dir.path(), &["--config", file.to_str().unwrap()]);
    assert_eq!(
        config["limits"]["maximum_connections_per_ip"].as_integer(),
        Some(2)
    );
    assert_eq!(
        config["limits"]["maximum_connect_rate_per_ip"].as_integer(),
        Some(100)
    );
    assert_eq!(
        config["listener"][1]["client_id_from"].as_str(),
        Some("common-name")
    );

    let mut cmd = roost(&["--config", file.to_str().unwrap()]);
    cmd.stderr(Stdio::piped());
    let mut b = Broker::spawn(cmd);
    let mut logs = Logs::of(&mut b);
    let tls = tls_connect(
        b.listener("mqtts tls"),
        certs.client_config(Some(&certs.client)),
    )
    .await
    .unwrap();
    let mut device = Client::new(Box::new(tls), ProtocolVersion::V5);
    assert_eq!(
        device.connect(v5("not-alice")).await.reason,
        ReasonCode::Success
    );
    let line = logs.wait_for("client id taken from the client certificate");
    assert!(line.contains("client_id=alice"), "{line}");
    assert!(line.contains("connect_client_id=not-alice"), "{line}");
    let line = logs.wait_for("client connected");
    assert!(line.contains("client_id=alice"), "{line}");

    // The TLS connection is one of 127.0.0.1's two.
    let second = Raw::connected(b.addr, v311("second")).await;
    let mut third = Raw::open(b.addr, ProtocolVersion::V3_1_1).await;
    let _ = third
        .try_send(Packet::Connect(Box::new(v311("third"))))
        .await;
    assert!(third.expect_closed().await.is_empty(), "no CONNACK");
    logs.wait_for("maximum_connections_per_ip");
    let r = common::http::get(b.listener("http stats"), "/stats").await;
    assert_eq!(r.status, 200, "{r:?}");
    let (stats, body) = (r.json(), r.body);
    assert_eq!(stats["connections_refused_per_ip"], 1, "{body}");
    assert_eq!(stats["connect_rate_refused"], 0, "{body}");
    device.ping().await;
    second.disconnect().await;
    assert!(b.terminate().await.success());
}

#[tokio::test]
async fn log_format_json_writes_json_lines_without_payloads() {
    let mut cmd = roost(&[
        "--tcp",
        "127.0.0.1:0",
        "--store",
        "memory",
        "--log-format",
        "json",
    ]);
    cmd.stderr(Stdio::piped());
    let mut b = Broker::spawn(cmd);
    let mut logs = Logs::of(&mut b);
    let mut c = Raw::connected(b.addr, v5("json-client")).await;
    c.publish(publish(
        "secret/topic",
        "secret payload",
        QoS::AtLeastOnce,
        1,
    ))
    .await;
    c.disconnect().await;
    let line = logs.wait_for("client disconnected");
    let event: serde_json::Value = serde_json::from_str(&line).expect("a JSON line");
    assert_eq!(event["level"], "INFO", "{line}");
    assert_eq!(event["client_id"], "json-client", "{line}");
    assert!(
        event["reason"].as_str().unwrap().contains("DISCONNECT"),
        "{line}"
    );
    let connected = logs
        .seen
        .iter()
        .find(|l| l.contains("client connected"))
        .expect("a connect line");
    let connected: serde_json::Value = serde_json::from_str(connected).unwrap();
    assert_eq!(connected["client_id"], "json-client");
    for line in &logs.seen {
        serde_json::from_str::<serde_json::Value>(line).expect("every line is JSON");
        assert!(!line.contains("secret payload"), "{line}");
    }
}

/// A client id with a line break cannot write a line of its own into the
/// text log: the forged "client connected ... client_id=admin" stays inside
/// the real line, escaped.
#[tokio::test]
async fn client_id_with_a_newline_cannot_forge_a_log_line() {
    let mut cmd = roost(&["--tcp", "127.0.0.1:0", "--store", "memory"]);
    cmd.stderr(Stdio::piped());
    let mut b = Broker::spawn(cmd);
    let mut logs = Logs::of(&mut b);
    let forged = "2099-01-01T00:00:00.000000Z  INFO roost::net::connection: client connected conn=0 client_id=admin";
    let evil = format!("evil\n{forged}\r\u{1b}[2K");
    let c = Raw::connected(b.addr, v5(&evil)).await;
    c.disconnect().await;
    let disconnected = logs.wait_for("client disconnected");
    assert!(
        disconnected.contains(r"client_id=evil\n2099-01-01"),
        "{disconnected}"
    );
    let connected = logs
        .seen
        .iter()
        .find(|l| l.contains("client connected") && l.contains("client_id=evil"))
        .expect("the real connect line");
    assert!(
        connected.contains(r"client_id=admin\r\u{1b}[2K"),
        "{connected}"
    );
    for line in &logs.seen {
        assert!(!line.starts_with("2099-01-01"), "forged log line: {line}");
        assert!(!line.contains('\u{1b}'), "raw escape sequence: {line}");
    }
}

#[tokio::test]
async fn workers_sets_the_runtime_threads_from_the_file_or_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "roost.toml", "workers = 3\n");
    let file = file.to_str().unwrap();
    let base = [
        "--tcp",
        "127.0.0.1:0",
        "--store",
        "memory",
        "--config",
        file,
    ];
    for (extra, want) in [(&[][..], 3), (&["--workers", "1"][..], 1)] {
        let mut cmd = roost(&[&base[..], extra].concat());
        cmd.stderr(Stdio::piped());
        let mut b = Broker::spawn(cmd);
        let mut logs = Logs::of(&mut b);
        let line = logs.wait_for("runtime started");
        assert!(line.contains(&format!("workers={want}")), "{line}");
        // And it serves.
        let c = Raw::connected(b.addr, v5("one-worker")).await;
        c.disconnect().await;
        assert!(b.terminate().await.success());
    }
    for bad in ["workers = 0\n", "workers = 5000\n", "workers = \"two\"\n"] {
        let file = write(dir.path(), "bad.toml", bad);
        let out = run(&["check-config", file.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2), "{bad}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(err.contains("bad.toml:1"), "names the line: {err}");
        assert!(err.contains("workers"), "names the key: {err}");
    }
    let out = run(&["--workers", "0", "--print-config"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--workers"), "{}", stderr(&out));
}

#[test]
fn version_and_help() {
    let out = run(&["--version"]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("roost {}", env!("CARGO_PKG_VERSION"))
    );
    let out = run(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "Listeners:",
        "--tls <ADDR>",
        "--cert <FILE>",
        "--auth <FILE>",
        "--log-format <FORMAT>",
        "check-config",
        "--print-config",
        "Examples:",
        "SIGHUP",
        "Exit status",
        "3 when the store is damaged",
    ] {
        assert!(help.contains(needle), "{needle:?} in {help}");
    }
}

/// `--auth FILE` installs the ledger: a wrong password is refused, the
/// right one gets in; a bad ledger file is refused at start naming it.
#[cfg(feature = "ledger")]
#[tokio::test]
async fn auth_ledger_is_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let hash = roost::hooks::hash_password_with_cost("pw", 4).unwrap();
    let ledger = write(
        dir.path(),
        "users.toml",
        &format!(
            "[[users]]\nusername = \"dev\"\npassword = \"{hash}\"\n\n[[auth]]\nusername = \"dev\"\nallow = true\n\n[[acl]]\nfilter = \"#\"\naccess = \"readwrite\"\n"
        ),
    );
    let b = Broker::start(&[
        "--tcp",
        "127.0.0.1:0",
        "--store",
        "memory",
        "--auth",
        ledger.to_str().unwrap(),
    ]);
    let mut bad = v5("a");
    bad.username = Some("dev".into());
    bad.password = Some(bytes::Bytes::from_static(b"nope"));
    let (_, ack) = Raw::connect(b.addr, bad).await;
    assert_eq!(ack.reason, roost::codec::ReasonCode::BadUserNameOrPassword);
    let mut good = v5("b");
    good.username = Some("dev".into());
    good.password = Some(bytes::Bytes::from_static(b"pw"));
    Raw::connected(b.addr, good).await;

    let broken = write(
        dir.path(),
        "broken.toml",
        "[[users]]\nusername = \"x\"\npassword = \"plain\"\n",
    );
    let out = run(&[
        "--tcp",
        "127.0.0.1:0",
        "--store",
        "memory",
        "--auth",
        broken.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("broken.toml"), "{}", stderr(&out));
}

/// A bridge with every key set, as `deploy/roost.toml` documents them.
const BRIDGE: &str = r##"
[store]
backend = "memory"

[[listener]]
type = "tcp"
bind = "127.0.0.1:0"

[[bridges]]
name = "cloud"
remote = "mqtts://[::1]"
protocol = "3.1.1"
client_id = "gw-17"
username = "gw-17"
password_file = "cloud.pass"
keep_alive = "45s"
session_expiry = "7d"
reconnect_min = "2s"
reconnect_max = "2m"
max_inflight = 10
max_queued_messages = 1000
max_queued_bytes = "64MiB"
state_topic = "site-17/bridge/state"

[bridges.tls]
ca = "ca.pem"
cert = "gw.pem"
key = "gw.key"
server_name = "broker.example.com"

[[bridges.forward]]
filter = "devices/#"
qos = 1
local_prefix = "plant/"
remote_prefix = "site-17/"

[[bridges.subscribe]]
filter = "commands/#"
qos = 2
remote_prefix = "site-17/"

[[bridges]]
name = "backup"
remote = "ws://10.0.0.2:8080"

[[bridges.forward]]
filter = "#"
qos = 0
"##;

/// A directory with [`BRIDGE`] as `bridge.toml` and the files it names.
fn bridge_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "bridge.toml", BRIDGE);
    write(dir.path(), "cloud.pass", "hunter2-secret\n");
    // Real certificates: serving and check-config read and parse them.
    let certs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("certs");
    for (from, to) in [
        ("ca.pem", "ca.pem"),
        ("client.pem", "gw.pem"),
        ("client.key", "gw.key"),
    ] {
        std::fs::copy(certs.join(from), dir.path().join(to)).unwrap();
    }
    dir
}

#[test]
fn a_bridge_config_is_valid_and_printed_without_its_password() {
    let dir = bridge_dir();
    let out = run_in(dir.path(), &["check-config", "bridge.toml"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("bridge.toml: valid"));

    let out = run_in(dir.path(), &["--config", "bridge.toml", "--print-config"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        !text.contains("hunter2"),
        "the password is never printed: {text}"
    );
    let printed: toml::Table = toml::from_str(&text).unwrap();
    let bridges = printed["bridges"].as_array().unwrap();
    assert_eq!(bridges.len(), 2);
    let cloud = bridges[0].as_table().unwrap();
    assert_eq!(cloud["name"].as_str(), Some("cloud"));
    assert_eq!(cloud["remote"].as_str(), Some("mqtts://[::1]:8883"));
    assert_eq!(cloud["protocol"].as_str(), Some("3.1.1"));
    assert_eq!(cloud["password_file"].as_str(), Some("cloud.pass"));
    assert_eq!(cloud["session_expiry"].as_str(), Some("7d"));
    assert_eq!(
        cloud["tls"]["server_name"].as_str(),
        Some("broker.example.com")
    );
    assert_eq!(
        cloud["forward"][0]["remote_prefix"].as_str(),
        Some("site-17/")
    );
    assert_eq!(cloud["subscribe"][0]["qos"].as_integer(), Some(2));
    // The second bridge shows its defaults.
    let backup = bridges[1].as_table().unwrap();
    assert_eq!(backup["remote"].as_str(), Some("ws://10.0.0.2:8080/mqtt"));
    assert_eq!(backup["protocol"].as_str(), Some("5"));
    assert_eq!(backup["keep_alive"].as_str(), Some("30s"));
    assert_eq!(backup["max_queued_messages"].as_integer(), Some(8_640_000));
    assert_eq!(backup["max_queued_bytes"].as_str(), Some("1GiB"));
    // Printed back, it reads the same.
    write(dir.path(), "again.toml", &text);
    let again = print_config(dir.path(), &["--config", "again.toml"]);
    assert_eq!(again, printed);

    // deploy/roost.toml documents every key of a bridge and its tables.
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/roost.toml");
    let doc = std::fs::read_to_string(example).unwrap();
    let mut keys: Vec<&str> = cloud.keys().map(String::as_str).collect();
    keys.push("password_env");
    for table in ["tls", "forward", "subscribe"] {
        let inner = match &cloud[table] {
            toml::Value::Array(a) => a[0].as_table().unwrap(),
            v => v.as_table().unwrap(),
        };
        keys.extend(inner.keys().map(String::as_str));
    }
    for header in [
        "[[bridges]]",
        "[bridges.tls]",
        "[[bridges.forward]]",
        "[[bridges.subscribe]]",
    ] {
        assert!(doc.contains(&format!("\n# {header}")), "documents {header}");
    }
    for key in keys
        .into_iter()
        .filter(|k| !["tls", "forward", "subscribe"].contains(k))
    {
        assert!(
            doc.contains(&format!("\n# {key} = ")),
            "deploy/roost.toml documents {key:?}"
        );
    }
}

#[test]
fn bad_bridges_are_refused_naming_file_line_and_key() {
    let dir = bridge_dir();
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "remote = \"mqtts://[::1]\"",
            "remote = \"http://[::1]\"",
            &[
                "bad.toml:11:",
                "key \"remote\" in [[bridges]]",
                "unknown scheme \"http\"",
            ],
        ),
        (
            "remote = \"ws://10.0.0.2:8080\"",
            "remote = \"mqtt://10.0.0.2:99999\"",
            &["bad.toml:44:", "key \"remote\"", "invalid port \"99999\""],
        ),
        (
            "local_prefix = \"plant/\"",
            "local_prefx = \"plant/\"",
            &[
                "bad.toml:34:",
                "unknown key \"local_prefx\" in [[bridges.forward]]",
                "did you mean \"local_prefix\"",
            ],
        ),
        (
            "local_prefix = \"plant/\"",
            "local_prefix = \"plant/+/\"",
            &[
                "bad.toml:34:",
                "key \"local_prefix\" in [[bridges.forward]]",
                "must not contain \"+\"",
            ],
        ),
        (
            "name = \"backup\"",
            "name = \"cloud\"",
            &[
                "bad.toml:43:",
                "key \"name\" in [[bridges]]",
                "\"cloud\" is used by another bridge",
            ],
        ),
        (
            "name = \"backup\"",
            "name = \"back up\"",
            &[
                "bad.toml:43:",
                "key \"name\" in [[bridges]]",
                "ASCII letters, digits",
            ],
        ),
        (
            "password_file = \"cloud.pass\"",
            "password_env = \"ROOST_TEST_UNSET_PASSWORD\"",
            &[
                "bad.toml:15:",
                "key \"password_env\"",
                "ROOST_TEST_UNSET_PASSWORD is not set",
            ],
        ),
        (
            "password_file = \"cloud.pass\"",
            "password_file = \"missing.pass\"",
            &[
                "bad.toml:15:",
                "key \"password_file\"",
                "cannot read missing.pass",
            ],
        ),
        (
            "reconnect_max = \"2m\"",
            "reconnect_max = \"1s\"",
            &[
                "bad.toml:18:",
                "key \"reconnect_min\"",
                "more than reconnect_max",
            ],
        ),
        (
            "qos = 2",
            "qos = 3",
            &[
                "bad.toml:39:",
                "key \"qos\" in [[bridges.subscribe]]",
                "0, 1 or 2",
            ],
        ),
        (
            "remote = \"mqtts://[::1]\"",
            "remote = \"mqtt://[::1]\"",
            &["bad.toml:25:", "key \"tls\"", "only to mqtts:// and wss://"],
        ),
        (
            "ca = \"ca.pem\"",
            "ca = \"nope.pem\"",
            &[
                "bad.toml:26:",
                "key \"ca\" in [bridges.tls]",
                "cannot read nope.pem",
            ],
        ),
        (
            // Readable but not a certificate: found when it is parsed.
            "ca = \"ca.pem\"",
            "ca = \"cloud.pass\"",
            &["bad.toml:25:", "key \"tls\"", "cloud.pass"],
        ),
        (
            // A key that is not the certificate's.
            "key = \"gw.key\"",
            "key = \"other.key\"",
            &["bad.toml:25:", "key \"tls\"", "other.key"],
        ),
    ];
    let certs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("certs");
    std::fs::copy(certs.join("server.key"), dir.path().join("other.key")).unwrap();
    for (from, to, needles) in cases {
        assert!(BRIDGE.contains(from), "{from}");
        let text = BRIDGE.replacen(from, to, 1);
        write(dir.path(), "bad.toml", &text);
        for args in [
            vec!["check-config", "bad.toml"],
            vec!["--config", "bad.toml"],
        ] {
            let out = run_in(dir.path(), &args);
            let err = stderr(&out);
            assert_eq!(out.status.code(), Some(2), "{to}: {err}");
            for needle in *needles {
                assert!(err.contains(needle), "{to}: {needle:?} not in {err}");
            }
            assert!(!err.contains("hunter2"), "{err}");
        }
    }
}

#[tokio::test]
async fn configured_bridges_run_and_carry_messages_to_the_remote() {
    let remote = Broker::start(&["--tcp", "127.0.0.1:0", "--store", "memory"]);
    let dir = bridge_dir();
    // The example configuration, pointed at the remote over plain TCP.
    let text = BRIDGE
        .replacen("mqtts://[::1]", &format!("mqtt://{}", remote.addr), 1)
        .replacen("ca = \"ca.pem\"\ncert = \"gw.pem\"\nkey = \"gw.key\"\nserver_name = \"broker.example.com\"\n", "", 1)
        .replacen("[bridges.tls]\n", "", 1);
    assert!(!text.contains("mqtts") && !text.contains("tls"), "{text}");
    write(dir.path(), "bridge.toml", &text);
    let mut cmd = roost(&["--config", "bridge.toml"]);
    cmd.current_dir(dir.path());
    let edge = Broker::spawn(cmd);
    let banner = format!("bridge \"cloud\" to mqtt://{}", remote.addr);
    assert!(
        edge.lines.iter().any(|l| l.contains(&banner)),
        "{:?}",
        edge.lines
    );
    let mut up = Raw::connected(remote.addr, v5("cloud-app")).await;
    up.subscribe(1, "site-17/devices/#", QoS::AtLeastOnce).await;
    let mut device = Raw::connected(edge.addr, v5("device")).await;
    // Until the bridge is up the message waits in its queue.
    assert!(device
        .publish(publish("plant/devices/d1", "21.5", QoS::AtLeastOnce, 1))
        .await
        .is_success());
    let m = up.recv_publish().await;
    assert_eq!(
        (m.topic.as_str(), payload(&m)),
        ("site-17/devices/d1", "21.5")
    );
    assert!(edge.terminate().await.success());
    assert!(remote.terminate().await.success());
}
