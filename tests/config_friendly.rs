//! What a new operator meets first, with the real binary: `check-config`
//! answers for files written in another shape (Mosquitto lines, a table
//! with the wrong brackets, an address without a host) with the line, the
//! key and a hint; host names and sizes with units are taken and take
//! effect; a TLS listener with required client certificates and identities
//! from them is set from flags alone.

mod common;
use common::listeners::*;
use common::process::{roost, run_in, stderr, Broker, Logs};
use common::*;
use roost::codec::{ProtocolVersion, QoS, ReasonCode};
use std::path::Path;
use std::process::Stdio;

/// Each mistake, and what the answer must hold: the file and line (and
/// the key, where there is one), and the hint.
#[test]
fn check_config_answers_each_mistake_with_line_key_and_hint() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&str, &[&str])] = &[
        (
            "# from mosquitto.conf\nlistener 1883\nallow_anonymous true\n",
            &["bad.toml:2:", "Mosquitto", "[[listener]]", "bind = \"0.0.0.0:1883\""],
        ),
        (
            "[log]\nlevel = \"info\"\n\npassword_file /etc/mosquitto/passwd\n",
            &["bad.toml:4:", "Mosquitto", "ledger = ", "roost passwd --file"],
        ),
        (
            "port = 1883\n",
            &["bad.toml:1:", "unknown key \"port\"", "Mosquitto", "[[listener]]"],
        ),
        (
            "[store]\nbackend = \"memory\"\n\n[listener]\ntype = \"tcp\"\nbind = \"127.0.0.1:0\"\n",
            &["bad.toml:4:", "[listener]", "written [[listener]] (double brackets)"],
        ),
        (
            "listener = 1883\n",
            &["bad.toml:1:", "\"listener\"", "written [[listener]] (double brackets)"],
        ),
        (
            "[[store]]\nbackend = \"memory\"\n",
            &["bad.toml:2:", "[[store]]", "written [store] (single brackets)"],
        ),
        (
            "[[bridges]]\nname = \"up\"\nremote = \"mqtt://127.0.0.1:1\"\n\n[bridges.forward]\nfilter = \"a/#\"\nqos = 1\n",
            &["bad.toml:5:", "written [[bridges.forward]] (double brackets)"],
        ),
        (
            "[[listener]]\ntype = \"tcp\"\nbind = \"1883\"\n",
            &["bad.toml:3:", "\"bind\" in [[listener]]", "has no address", "0.0.0.0:1883"],
        ),
        (
            "[[listener]]\ntype = \"tcp\"\nbind = \"no-such-host.invalid:1883\"\n",
            &["bad.toml:3:", "\"bind\"", "cannot resolve host \"no-such-host.invalid\""],
        ),
        (
            "[limits]\nmaximum_packet_size = \"1 parsec\"\n",
            &["bad.toml:2:", "\"maximum_packet_size\" in [limits]", "unknown unit", "\"256MiB\""],
        ),
        (
            "[limits]\nreceive_maximum = 10\nmaximum_connect_size = \"8GiB\"\n",
            &["bad.toml:3:", "\"maximum_connect_size\"", "too large: at most 4294967295 bytes"],
        ),
    ];
    for (text, needles) in cases {
        std::fs::write(dir.path().join("bad.toml"), text).unwrap();
        let out = run_in(dir.path(), &["check-config", "bad.toml"]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{text}: {err}");
        for needle in *needles {
            assert!(err.contains(needle), "{text}: {needle:?} not in {err}");
        }
    }

    // What is meant is taken: a host name, and sizes with units in every
    // table (integers still work).
    let good = "\
[store]
backend = \"memory\"
cache = \"8MiB\"

[limits]
maximum_packet_size = \"512KiB\"
maximum_connect_size = 4096
maximum_queued_bytes = \"1GB\"

[memory]
budget = \"64MiB\"

[[listener]]
type = \"tcp\"
bind = \"localhost:1883\"
";
    std::fs::write(dir.path().join("good.toml"), good).unwrap();
    let out = run_in(dir.path(), &["check-config", "good.toml"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = run_in(dir.path(), &["--config", "good.toml", "--print-config"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let printed: toml::Table = toml::from_str(&String::from_utf8_lossy(&out.stdout)).unwrap();
    let limits = &printed["limits"];
    assert_eq!(limits["maximum_packet_size"].as_str(), Some("512KiB"));
    assert_eq!(limits["maximum_connect_size"].as_str(), Some("4KiB"));
    assert_eq!(limits["maximum_queued_bytes"].as_str(), Some("1000000000B"));
    assert_eq!(printed["store"]["cache"].as_str(), Some("8MiB"));
    // The name is kept as written, to be resolved again when read.
    assert_eq!(
        printed["listener"][0]["bind"].as_str(),
        Some("localhost:1883")
    );
}

/// `bind = "localhost:0"` serves on loopback, and
/// `maximum_connect_size = "1KiB"` is a KiB: a CONNECT with a 2 KB will is
/// refused with 0x95, one with a 100-byte will is not.
#[tokio::test]
async fn a_host_name_binds_and_a_size_with_a_unit_takes_effect() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("roost.toml");
    std::fs::write(
        &file,
        "[store]\nbackend = \"memory\"\n\n[limits]\nmaximum_connect_size = \"1KiB\"\n\n\
         [[listener]]\ntype = \"tcp\"\nbind = \"localhost:0\"\n",
    )
    .unwrap();
    let b = Broker::start(&["--config", file.to_str().unwrap()]);
    let mqtt: Vec<_> = b
        .listeners
        .iter()
        .filter(|(w, _)| w == "mqtt tcp")
        .collect();
    assert!(!mqtt.is_empty(), "{:?}", b.lines);
    assert!(
        mqtt.iter().all(|(_, a)| a.ip().is_loopback()),
        "{:?}",
        b.lines
    );
    let addr = mqtt[0].1;
    let with_will = |size: usize| {
        let mut c = v5(&unique("w"));
        c.will = Some(will("w", &"w".repeat(size), QoS::AtMostOnce, false));
        c
    };
    let (_, ack) = Raw::connect(addr, with_will(2_000)).await;
    assert_eq!(ack.reason, ReasonCode::PacketTooLarge);
    let _ok = Raw::connected(addr, with_will(100)).await;
}

/// Flags alone (no file): a TLS listener that requires client
/// certificates and takes both the user name and the client id from the
/// certificate's CN. A ledger that lets in only the user `alice` then
/// admits a device whose CONNECT names no user and claims another id.
#[tokio::test]
async fn a_tls_listener_with_certificate_identities_from_flags_alone() {
    let certs = TestCerts::generate();
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("ledger.toml");
    std::fs::write(
        &ledger,
        "[[auth]]\nusername = \"alice\"\npassword = \"ignored\"\nallow = true\n\n\
         [[acl]]\nusername = \"alice\"\nfilter = \"#\"\naccess = \"readwrite\"\n",
    )
    .unwrap();
    let p = |p: &Path| p.to_str().unwrap().to_owned();
    let args = [
        "--tls".to_string(),
        "127.0.0.1:0".into(),
        "--cert".into(),
        p(&certs.server.cert_path),
        "--key".into(),
        p(&certs.server.key_path),
        "--client-ca".into(),
        p(&certs.ca.cert_path),
        "--client-auth".into(),
        "required".into(),
        "--username-from".into(),
        "common-name".into(),
        "--client-id-from".into(),
        "common-name".into(),
        "--auth".into(),
        p(&ledger),
        "--store".into(),
        "memory".into(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut cmd = roost(&args);
    cmd.stderr(Stdio::piped());
    let mut b = Broker::spawn(cmd);
    let mut logs = Logs::of(&mut b);
    let addr = b.listener("mqtts tls");

    let tls = tls_connect(addr, certs.client_config(Some(&certs.client)))
        .await
        .unwrap();
    let mut device = Client::new(Box::new(tls), ProtocolVersion::V5);
    let ack = device.connect(v5("claimed-id")).await;
    assert_eq!(ack.reason, ReasonCode::Success, "{ack:?}");
    let line = logs.wait_for("client connected");
    assert!(line.contains("client_id=alice"), "{line}");
    device.ping().await;

    // Without a certificate there is no session at all.
    let refused = match tls_connect(addr, certs.client_config(None)).await {
        Err(_) => true,
        // TLS 1.3: the client finishes first; the server's alert (or its
        // close) is what the first read gets.
        Ok(mut tls) => {
            use tokio::io::AsyncReadExt;
            let mut buf = [0u8; 16];
            matches!(
                tokio::time::timeout(WAIT, tls.read(&mut buf)).await,
                Ok(Ok(0) | Err(_))
            )
        }
    };
    assert!(refused, "a client without a certificate got an answer");
}
