//! Client certificate revocation lists, with real TLS handshakes and
//! certificates and CRLs made at test time: a revoked certificate fails the
//! handshake (TLS 1.2 and 1.3, TLS and WSS); a new CRL, from a reload or
//! from the file changing on disk, closes the connections open with a
//! certificate it revokes (5.0 clients get DISCONNECT 0x87 first); a CRL
//! that does not read is refused at start naming the file, and leaves the
//! previous CRL in force later. The binary logs each refusal and close
//! with the certificate's subject and serial, and counts them in /stats
//! and /metrics.

mod common;
use common::listeners::*;
use common::process::{roost, Broker, Logs};
use common::*;
use roost::codec::{Packet, ProtocolVersion, ReasonCode};
use roost::{ListenerError, ListenerHandle, Options, Server, Stats, TlsConfig, WsConfig};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::{ClientConfig, RootCertStore, SupportedProtocolVersion};

const ALICE: u64 = 0x0A11CE;
const BOB: u64 = 0x0B0B;
const CAROL: u64 = 0x0CA201;

/// The test CA and three devices it issued certificates to, and the CRL
/// file (in the certificates' directory).
struct Fleet {
    certs: TestCerts,
    alice: Issued,
    bob: Issued,
    carol: Issued,
    crl: PathBuf,
}

impl Fleet {
    /// The fleet, with a CRL that revokes `revoked`.
    fn new(revoked: &[u64]) -> Fleet {
        let certs = TestCerts::generate();
        let dir = certs.dir.path();
        let alice = issue_client_serial(dir, "alice", &certs.ca, "alice", ALICE);
        let bob = issue_client_serial(dir, "bob", &certs.ca, "bob", BOB);
        let carol = issue_client_serial(dir, "carol", &certs.ca, "carol", CAROL);
        let crl = dir.join("ca.crl");
        let fleet = Fleet {
            certs,
            alice,
            bob,
            carol,
            crl,
        };
        fleet.revoke(revoked);
        fleet
    }

    /// Writes a CRL that revokes `serials` (and only them).
    fn revoke(&self, serials: &[u64]) {
        std::fs::write(&self.crl, crl_pem(&self.certs.ca, serials)).unwrap();
    }

    /// Client certificates required and checked against the CRL, which is
    /// not polled: only a reload reads it again.
    fn tls(&self) -> TlsConfig {
        self.certs
            .tls(Some(true))
            .crl(&self.crl)
            .crl_poll_interval(Duration::ZERO)
    }

    /// A client that trusts the test CA and presents `id`.
    fn client(&self, id: &Issued) -> Arc<ClientConfig> {
        self.certs.client_config(Some(id))
    }
}

/// A client presenting `id` that speaks only `version` of TLS.
fn client_with(
    trust: &Issued,
    id: &Issued,
    version: &'static SupportedProtocolVersion,
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(trust.der()).unwrap();
    let config = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_protocol_versions(&[version])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(vec![id.der()], id.key_der())
        .unwrap();
    Arc::new(config)
}

/// A broker with MQTT over TLS and WSS, both with `tls`.
struct Served {
    tls: SocketAddr,
    wss: SocketAddr,
    listener: ListenerHandle,
    wss_listener: ListenerHandle,
    stats: Arc<Stats>,
    stop: Option<oneshot::Sender<()>>,
    join: tokio::task::JoinHandle<Result<(), roost::ServeError>>,
}

async fn serve(tls: TlsConfig) -> Served {
    let tls_l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let wss_l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (tls_addr, wss_addr) = (tls_l.local_addr().unwrap(), wss_l.local_addr().unwrap());
    let server = Server::new(Options::default())
        .tls(tls_l, tls.clone())
        .unwrap()
        .wss(wss_l, WsConfig::default(), tls)
        .unwrap();
    let handle = server.handle();
    let stats = server.stats();
    let (tx, rx) = oneshot::channel();
    let join = tokio::spawn(server.serve(async {
        let _ = rx.await;
    }));
    Served {
        tls: tls_addr,
        wss: wss_addr,
        listener: handle.listener(&format!("mqtts:{tls_addr}")).unwrap(),
        wss_listener: handle.listener(&format!("wss:{wss_addr}")).unwrap(),
        stats,
        stop: Some(tx),
        join,
    }
}

impl Served {
    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(WAIT, self.join)
            .await
            .expect("the broker stops in time")
            .unwrap()
            .unwrap();
    }
}

/// An MQTT client over TLS presenting `config`'s certificate, connected.
async fn connected(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    version: ProtocolVersion,
) -> Client {
    let tls = tls_connect(addr, config).await.unwrap();
    let mut c = Client::new(Box::new(tls), version);
    let ack = c.connect(connect(version, &unique("device"), true)).await;
    assert_eq!(ack.reason, ReasonCode::Success, "{ack:?}");
    c
}

/// The same over WSS.
async fn connected_wss(addr: SocketAddr, config: Arc<ClientConfig>) -> Client {
    let tls = tls_connect(addr, config).await.unwrap();
    let (ws, _) = ws_connect(tls, "wss://localhost/mqtt", "mqtt")
        .await
        .unwrap();
    let mut c = Client::new(Box::new(ws), ProtocolVersion::V5);
    let ack = c.connect(v5(&unique("wss-device"))).await;
    assert_eq!(ack.reason, ReasonCode::Success, "{ack:?}");
    c
}

/// The handshake with `config`'s certificate is refused (under TLS 1.3
/// possibly only once the client has sent its first bytes).
async fn refused(addr: SocketAddr, config: Arc<ClientConfig>) {
    match tls_connect(addr, config).await {
        Err(_) => {}
        Ok(tls) => assert_refused(Box::new(tls), "refused").await,
    }
}

/// What the broker sends until it closes the connection; fails if it does
/// not close it within `WAIT`.
async fn until_closed(c: &mut Client) -> Vec<Packet> {
    let began = Instant::now();
    let mut got = Vec::new();
    while let Some(p) = c.recv_within(WAIT).await {
        got.push(p);
    }
    assert!(began.elapsed() < WAIT, "still open; got {got:?}");
    got
}

/// A 5.0 client closed for its certificate: DISCONNECT 0x87, then the end.
async fn closed_as_revoked(c: &mut Client) {
    let got = until_closed(c).await;
    match &got[..] {
        [Packet::Disconnect(d)] => {
            assert_eq!(d.reason, ReasonCode::NotAuthorized, "{d:?}");
            let why = d.properties.reason_string.as_deref();
            assert_eq!(why, Some("client certificate revoked"));
        }
        other => panic!("expected one DISCONNECT 0x87, got {other:?}"),
    }
}

#[tokio::test]
async fn a_revoked_certificate_fails_the_handshake_and_others_from_its_ca_are_served() {
    let fleet = Fleet::new(&[ALICE]);
    let b = serve(fleet.tls()).await;
    let (tls12, tls13) = (
        &tokio_rustls::rustls::version::TLS12,
        &tokio_rustls::rustls::version::TLS13,
    );
    for version in [tls12, tls13] {
        let alice = client_with(&fleet.certs.ca, &fleet.alice, version);
        refused(b.tls, alice).await;
        let bob = client_with(&fleet.certs.ca, &fleet.bob, version);
        let tls = tls_connect(b.tls, bob).await.unwrap();
        assert_eq!(tls.get_ref().1.protocol_version(), Some(version.version));
        let mut c = Client::new(Box::new(tls), ProtocolVersion::V5);
        assert_eq!(c.connect(v5("bob")).await.reason, ReasonCode::Success);
        c.disconnect().await;
    }
    // WSS checks the same list.
    refused(b.wss, fleet.client(&fleet.alice)).await;
    connected_wss(b.wss, fleet.client(&fleet.bob))
        .await
        .disconnect()
        .await;
    let stats = b.stats.clone();
    eventually("three refusals counted", || {
        stats.snapshot().tls_revoked_refused == 3
    })
    .await;
    assert_eq!(stats.snapshot().tls_revoked_closed, 0);
    b.stop().await;
}

#[tokio::test]
async fn a_reload_closes_the_connections_a_new_crl_revokes_and_no_others() {
    let fleet = Fleet::new(&[]);
    let b = serve(fleet.tls()).await;
    let mut alice = connected(b.tls, fleet.client(&fleet.alice), ProtocolVersion::V5).await;
    let mut alice_wss = connected_wss(b.wss, fleet.client(&fleet.alice)).await;
    let mut carol = connected(b.tls, fleet.client(&fleet.carol), ProtocolVersion::V3_1_1).await;
    let mut bob = connected(b.tls, fleet.client(&fleet.bob), ProtocolVersion::V5).await;
    let mut bob_wss = connected_wss(b.wss, fleet.client(&fleet.bob)).await;
    // A handshake done, CONNECT not sent yet. (TLS 1.2: the server sends
    // the last handshake message, so the broker is done with it too. Under
    // TLS 1.3 it may still be checking the certificate, and would then
    // refuse it against the new CRL.)
    let tls12 = &tokio_rustls::rustls::version::TLS12;
    let early = client_with(&fleet.certs.ca, &fleet.alice, tls12);
    let pending = tls_connect(b.tls, early).await.unwrap();

    fleet.revoke(&[ALICE, CAROL]);
    b.listener.reload().unwrap();
    closed_as_revoked(&mut alice).await;
    // 3.1.1 has no DISCONNECT from the server: just closed.
    assert!(until_closed(&mut carol).await.is_empty());
    // The WSS listener reads the file on its own reload.
    alice_wss.ping().await;
    b.wss_listener.reload().unwrap();
    closed_as_revoked(&mut alice_wss).await;
    // Everyone else stays.
    bob.ping().await;
    bob_wss.ping().await;

    // The connection that had not sent CONNECT is closed right after its
    // CONNACK.
    let mut pending = Client::new(Box::new(pending), ProtocolVersion::V5);
    let ack = pending.connect(v5("pending")).await;
    assert_eq!(ack.reason, ReasonCode::Success);
    closed_as_revoked(&mut pending).await;

    // And a new handshake is refused.
    refused(b.tls, fleet.client(&fleet.alice)).await;
    let stats = b.stats.clone();
    eventually("four closes and one refusal counted", || {
        let s = stats.snapshot();
        (s.tls_revoked_closed, s.tls_revoked_refused) == (4, 1)
    })
    .await;
    bob.disconnect().await;
    bob_wss.disconnect().await;
    b.stop().await;
}

#[tokio::test]
async fn a_crl_file_that_changes_is_read_again_without_a_reload() {
    let fleet = Fleet::new(&[]);
    let tls = fleet.tls().crl_poll_interval(Duration::from_millis(100));
    let b = serve(tls).await;
    let mut alice = connected(b.tls, fleet.client(&fleet.alice), ProtocolVersion::V5).await;
    let mut bob = connected(b.tls, fleet.client(&fleet.bob), ProtocolVersion::V5).await;

    fleet.revoke(&[ALICE]);
    closed_as_revoked(&mut alice).await;
    bob.ping().await;
    refused(b.tls, fleet.client(&fleet.alice)).await;

    // Taken off the list again: served again. (TLS 1.2, where a refused
    // certificate fails the handshake itself.)
    fleet.revoke(&[]);
    let tls12 = &tokio_rustls::rustls::version::TLS12;
    let alice = client_with(&fleet.certs.ca, &fleet.alice, tls12);
    let began = Instant::now();
    let tls = loop {
        match tls_connect(b.tls, alice.clone()).await {
            Ok(tls) => break tls,
            Err(_) if began.elapsed() < WAIT => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(e) => panic!("the shorter CRL was not picked up: {e}"),
        }
    };
    let mut alice = Client::new(Box::new(tls), ProtocolVersion::V5);
    assert_eq!(
        alice.connect(v5("alice-again")).await.reason,
        ReasonCode::Success
    );
    alice.disconnect().await;
    assert_eq!(b.stats.snapshot().tls_revoked_closed, 1);
    bob.disconnect().await;
    b.stop().await;
}

#[tokio::test]
async fn a_crl_that_does_not_read_is_refused_at_start_and_kept_at_reload() {
    let fleet = Fleet::new(&[ALICE]);
    let dir = fleet.certs.dir.path();
    let start = |tls: TlsConfig| async move {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Server::new(Options::default()).tls(l, tls).map(drop)
    };

    // At start: the file is named.
    let garbage = dir.join("garbage.crl");
    std::fs::write(
        &garbage,
        "-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n",
    )
    .unwrap();
    let err = start(fleet.tls().crl(&garbage)).await.unwrap_err();
    assert!(
        matches!(&err, ListenerError::BadFile { path, .. } if *path == garbage),
        "{err}"
    );
    let err = start(fleet.tls().crl(&fleet.certs.ca.cert_path))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("ca.pem") && err.to_string().contains("no X509 CRL"),
        "{err}"
    );
    let missing = dir.join("missing.crl");
    let err = start(fleet.tls().crl(&missing)).await.unwrap_err();
    assert!(
        matches!(&err, ListenerError::Read { path, .. } if *path == missing),
        "{err}"
    );
    let no_client_auth = fleet.certs.tls(None).crl(&fleet.crl);
    let err = start(no_client_auth).await.unwrap_err();
    assert!(
        matches!(err, ListenerError::CrlWithoutClientAuth(_)),
        "{err}"
    );
    assert!(fleet.tls().validate().is_ok());

    // Later: the previous CRL stays, by reload and by polling alike.
    let b = serve(fleet.tls().crl_poll_interval(Duration::from_millis(50))).await;
    let mut bob = connected(b.tls, fleet.client(&fleet.bob), ProtocolVersion::V5).await;
    std::fs::write(&fleet.crl, "not a CRL").unwrap();
    let err = b.listener.reload().unwrap_err();
    assert!(
        matches!(&err, ListenerError::BadFile { path, .. } if *path == fleet.crl),
        "{err}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await; // polled meanwhile
    refused(b.tls, fleet.client(&fleet.alice)).await;
    bob.ping().await;
    connected(b.tls, fleet.client(&fleet.carol), ProtocolVersion::V5)
        .await
        .disconnect()
        .await;
    bob.disconnect().await;
    b.stop().await;
}

fn listener_toml(fleet: &Fleet) -> String {
    let path = |p: &Path| format!("{:?}", p.to_str().unwrap());
    format!(
        "[store]\nbackend = \"memory\"\n\n\
         [[listener]]\ntype = \"tls\"\nbind = \"127.0.0.1:0\"\ncert = {}\nkey = {}\n\
         client_ca = {}\ncrl = {}\n\n\
         [[listener]]\ntype = \"http\"\nbind = \"127.0.0.1:0\"\n",
        path(&fleet.certs.server.cert_path),
        path(&fleet.certs.server.key_path),
        path(&fleet.certs.ca.cert_path),
        path(&fleet.crl),
    )
}

/// The binary: `crl` in a listener table, SIGHUP, the log lines with the
/// certificate's subject and serial, the counters; check-config refuses a
/// CRL that does not read, naming it.
#[tokio::test]
async fn the_binary_reloads_the_crl_on_sighup_and_logs_subject_and_serial() {
    let fleet = Fleet::new(&[]);
    let config = fleet.certs.dir.path().join("roost.toml");
    std::fs::write(&config, listener_toml(&fleet)).unwrap();
    let mut cmd = roost(&["--config", config.to_str().unwrap()]);
    cmd.stderr(Stdio::piped());
    let mut b = Broker::spawn(cmd);
    let mut logs = Logs::of(&mut b);
    let addr = b.listener("mqtts tls");
    let mut alice = connected(addr, fleet.client(&fleet.alice), ProtocolVersion::V5).await;
    let mut bob = connected(addr, fleet.client(&fleet.bob), ProtocolVersion::V5).await;

    fleet.revoke(&[ALICE]);
    b.signal("-HUP");
    let line = logs.wait_for("connection closed");
    assert!(line.contains("CN=alice,O=roost tests"), "{line}");
    assert!(line.contains("serial=0A11CE"), "{line}");
    assert!(line.contains("WARN"), "{line}");
    closed_as_revoked(&mut alice).await;
    bob.ping().await;

    refused(addr, fleet.client(&fleet.alice)).await;
    let line = logs.wait_for("handshake refused");
    assert!(line.contains("CN=alice,O=roost tests"), "{line}");
    assert!(line.contains("serial=0A11CE"), "{line}");
    assert!(line.contains("remote=127.0.0.1:"), "{line}");

    let http = b.listener("http stats");
    let stats: serde_json::Value = common::http::get(http, "/stats").await.json();
    assert_eq!(stats["tls_revoked_closed"], 1, "{stats}");
    assert_eq!(stats["tls_revoked_refused"], 1, "{stats}");
    let metrics = common::http::get(http, "/metrics").await.body;
    assert!(
        metrics.contains("roost_tls_revoked_closed_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("roost_tls_revoked_refused_total 1"),
        "{metrics}"
    );

    // A broken file on the next SIGHUP: logged, and the CRL stays.
    std::fs::write(&fleet.crl, "not a CRL").unwrap();
    b.signal("-HUP");
    let line = logs.wait_for("TLS reload failed");
    assert!(line.contains("ca.crl"), "{line}");
    refused(addr, fleet.client(&fleet.alice)).await;
    bob.ping().await;
    bob.disconnect().await;
    assert!(b.terminate().await.success());

    // check-config (and a start) refuse it naming the file; a CRL without
    // client certificates is a configuration error.
    for args in [vec!["check-config"], vec!["--config"]] {
        let out = roost(&[&args[..], &[config.to_str().unwrap()]].concat())
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains("ca.crl"), "{err}");
    }
    let without_ca = listener_toml(&fleet).replace("client_ca", "# client_ca");
    std::fs::write(&config, without_ca).unwrap();
    let out = roost(&["check-config", config.to_str().unwrap()])
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("crl needs client certificates"), "{err}");
}
