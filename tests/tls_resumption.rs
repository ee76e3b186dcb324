//! TLS session resumption with real rustls handshakes: a client that
//! reconnects skips the full handshake (the client connection says
//! `HandshakeKind::Resumed`) over TLS 1.3 and 1.2, on the MQTT, WSS and
//! HTTPS listeners, by ticket or by session id; still after a certificate
//! reload, no longer after the client CA or the CRL changes or the client
//! certificate expires, never when turned off.

mod common;
use common::listeners::*;
use common::*;
use roost::codec::{ProtocolVersion, ReasonCode};
use roost::hooks::{AuthHook, BoxFuture, Client as HookClient, Decision};
use roost::{Options, Server, ServerHandle, TlsConfig, WsConfig};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_rustls::rustls::client::{Resumption, Tls12Resumption};
use tokio_rustls::rustls::pki_types::CertificateDer;
use tokio_rustls::rustls::version::{TLS12, TLS13};
use tokio_rustls::rustls::{
    ClientConfig, HandshakeKind, ProtocolVersion as Tls, RootCertStore, SupportedProtocolVersion,
};

use HandshakeKind::{Full, Resumed};

/// Records the user name each CONNECT was admitted with.
#[derive(Clone, Default)]
struct Names(Arc<Mutex<Vec<String>>>);

impl AuthHook for Names {
    fn authenticate<'a>(
        &'a self,
        client: &'a HookClient,
        _connect: &'a roost::codec::Connect,
    ) -> BoxFuture<'a, Decision> {
        let name = client.username.as_deref().unwrap_or("<none>").to_owned();
        self.0.lock().unwrap().push(name);
        Box::pin(std::future::ready(Decision::Allow))
    }
}

/// A broker with an MQTT-over-TLS, a WSS and an HTTPS listener, all with
/// the same TLS settings.
struct Broker {
    tls: SocketAddr,
    wss: SocketAddr,
    https: SocketAddr,
    handle: ServerHandle,
    names: Names,
    stop: Option<oneshot::Sender<()>>,
    join: tokio::task::JoinHandle<Result<(), roost::ServeError>>,
}

async fn bind() -> (TcpListener, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    (l, a)
}

impl Broker {
    async fn start(tls: TlsConfig) -> Broker {
        let (tls_l, tls_a) = bind().await;
        let (wss_l, wss) = bind().await;
        let (https_l, https) = bind().await;
        let names = Names::default();
        let server = Server::new(Options::default())
            .auth_hook(names.clone())
            .tls(tls_l, tls.clone())
            .unwrap()
            .wss(wss_l, WsConfig::default(), tls.clone())
            .unwrap()
            .https(https_l, tls)
            .unwrap();
        let handle = server.handle();
        let (tx, rx) = oneshot::channel();
        let join = tokio::spawn(server.serve(async {
            let _ = rx.await;
        }));
        Broker {
            tls: tls_a,
            wss,
            https,
            handle,
            names,
            stop: Some(tx),
            join,
        }
    }

    fn reload(&self) {
        for addr in [self.tls, self.wss, self.https] {
            let l = self.handle.listeners();
            let l = l.iter().find(|l| l.local_addr() == addr).unwrap();
            l.reload().unwrap();
        }
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.join.await.unwrap().unwrap();
    }
}

/// A device: its own session store, as a real one keeps, offering only
/// `version` and resuming TLS 1.2 sessions as `tls12` says.
fn device(
    certs: &TestCerts,
    version: &'static SupportedProtocolVersion,
    tls12: Tls12Resumption,
    identity: Option<&Issued>,
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(certs.ca.der()).unwrap();
    let builder = ClientConfig::builder_with_provider(Arc::new(
        tokio_rustls::rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[version])
    .unwrap()
    .with_root_certificates(roots);
    let mut config = match identity {
        Some(id) => builder
            .with_client_auth_cert(vec![id.der()], id.key_der())
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.resumption = Resumption::in_memory_sessions(8).tls12_resumption(tls12);
    Arc::new(config)
}

/// What one connection's handshake was, and the certificate the server
/// showed (none when resumed: no certificate is exchanged).
struct Seen {
    kind: HandshakeKind,
    version: Tls,
    cert: Option<CertificateDer<'static>>,
}

/// Connects to the MQTT-over-TLS listener, completes CONNECT/CONNACK (a
/// TLS 1.3 client reads its tickets on the way) and disconnects.
async fn over_mqtts(addr: SocketAddr, config: Arc<ClientConfig>) -> Seen {
    let tls = tls_connect(addr, config).await.unwrap();
    let seen = seen(tls.get_ref().1);
    let mut c = Client::new(Box::new(tls), ProtocolVersion::V5);
    let ack = c.connect(v5(&unique("resume"))).await;
    assert_eq!(ack.reason, ReasonCode::Success, "{ack:?}");
    c.disconnect().await;
    seen
}

async fn over_wss(addr: SocketAddr, config: Arc<ClientConfig>) -> Seen {
    let tls = tls_connect(addr, config).await.unwrap();
    let seen = seen(tls.get_ref().1);
    let (ws, _) = ws_connect(tls, "wss://localhost/mqtt", "mqtt")
        .await
        .unwrap();
    let mut c = Client::new(Box::new(ws), ProtocolVersion::V5);
    let ack = c.connect(v5(&unique("resume-ws"))).await;
    assert_eq!(ack.reason, ReasonCode::Success, "{ack:?}");
    c.disconnect().await;
    seen
}

async fn over_https(addr: SocketAddr, config: Arc<ClientConfig>) -> Seen {
    let mut tls = tls_connect(addr, config).await.unwrap();
    let seen = seen(tls.get_ref().1);
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut body = Vec::new();
    // rustls reports a close without close_notify as an error; the
    // response is read by then.
    let _ = tls.read_to_end(&mut body).await;
    let head = String::from_utf8_lossy(&body);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    seen
}

fn seen(c: &tokio_rustls::rustls::ClientConnection) -> Seen {
    Seen {
        kind: c.handshake_kind().unwrap(),
        version: c.protocol_version().unwrap(),
        cert: c.peer_certificates().map(|c| c[0].clone()),
    }
}

fn version_of(v: &'static SupportedProtocolVersion) -> Tls {
    v.version
}

#[tokio::test]
async fn a_reconnect_is_resumed_over_tls13_and_tls12_on_every_tls_listener() {
    let certs = TestCerts::generate();
    let b = Broker::start(certs.tls(None)).await;
    for version in [&TLS13, &TLS12] {
        for listener in ["mqtts", "wss", "https"] {
            let config = device(&certs, version, Tls12Resumption::SessionIdOrTickets, None);
            let mut kinds = Vec::new();
            for _ in 0..3 {
                let seen = match listener {
                    "mqtts" => over_mqtts(b.tls, config.clone()).await,
                    "wss" => over_wss(b.wss, config.clone()).await,
                    _ => over_https(b.https, config.clone()).await,
                };
                assert_eq!(seen.version, version_of(version));
                kinds.push(seen.kind);
            }
            assert_eq!(
                kinds,
                [Full, Resumed, Resumed],
                "{listener} over {:?}",
                version.version
            );
        }
    }
    b.stop().await;
}

/// The server keeps sessions by id for clients that do not take tickets
/// (TLS 1.2), and for TLS 1.3 when tickets are off; each mechanism can be
/// turned off alone, and with both off every handshake is full.
#[tokio::test]
async fn tickets_and_the_session_cache_each_do_their_part() {
    let certs = TestCerts::generate();
    let by_ticket = Tls12Resumption::SessionIdOrTickets;
    let by_id = Tls12Resumption::SessionIdOnly;
    // (cache, tickets, client version, client's TLS 1.2 way, resumed?)
    let cases = [
        (20_000, true, &TLS12, by_id, true),
        (0, true, &TLS12, by_id, false),
        (0, true, &TLS12, by_ticket, true),
        (0, true, &TLS13, by_ticket, true),
        (20_000, false, &TLS13, by_ticket, true),
        (20_000, false, &TLS12, by_ticket, true),
        (0, false, &TLS13, by_ticket, false),
        (0, false, &TLS12, by_ticket, false),
        (0, false, &TLS12, by_id, false),
    ];
    for (cache, tickets, version, way, resumed) in cases {
        let tls = certs
            .tls(None)
            .session_cache(cache)
            .session_tickets(tickets);
        let b = Broker::start(tls).await;
        let config = device(&certs, version, way, None);
        let first = over_mqtts(b.tls, config.clone()).await.kind;
        let second = over_mqtts(b.tls, config).await.kind;
        let case = format!(
            "cache {cache}, tickets {tickets}, {:?}, {way:?}",
            version.version
        );
        assert_eq!(first, Full, "{case}");
        assert_eq!(second, if resumed { Resumed } else { Full }, "{case}");
        b.stop().await;
    }
}

/// A certificate reload (SIGHUP) keeps the sessions: devices that were
/// connected resume, and keep their certificate identity; a new device
/// gets the new certificate.
#[tokio::test]
async fn sessions_survive_a_certificate_reload_with_their_identity() {
    let certs = TestCerts::generate();
    let b = Broker::start(certs.tls(Some(true))).await;
    let mut devices = Vec::new();
    for version in [&TLS13, &TLS12] {
        let config = device(
            &certs,
            version,
            Tls12Resumption::SessionIdOnly,
            Some(&certs.client),
        );
        assert_eq!(over_mqtts(b.tls, config.clone()).await.kind, Full);
        devices.push((version, config));
    }
    let next = issue_server(certs.dir.path(), "renewed", &certs.ca, 2, "localhost");
    std::fs::copy(&next.cert_path, &certs.server.cert_path).unwrap();
    std::fs::copy(&next.key_path, &certs.server.key_path).unwrap();
    b.reload();
    for (version, config) in devices {
        let seen = over_mqtts(b.tls, config).await;
        assert_eq!(seen.kind, Resumed, "{:?} after the reload", version.version);
    }
    // The identity came back with the session: the hook saw the
    // certificate's CN every time.
    assert_eq!(*b.names.0.lock().unwrap(), vec!["alice"; 4]);
    let newcomer = device(
        &certs,
        &TLS13,
        Tls12Resumption::SessionIdOnly,
        Some(&certs.client),
    );
    let seen = over_mqtts(b.tls, newcomer).await;
    assert_eq!(seen.kind, Full);
    assert_eq!(
        seen.cert,
        Some(next.der()),
        "a new device sees the new certificate"
    );
    b.stop().await;
}

/// A resumed session skips the client certificate check, so a change of
/// the client CA certificates at reload starts resumption afresh: every
/// device passes the new check once.
#[tokio::test]
async fn a_changed_client_ca_ends_resumption() {
    let certs = TestCerts::generate();
    let b = Broker::start(certs.tls(Some(true))).await;
    let mut devices = Vec::new();
    for version in [&TLS13, &TLS12] {
        let config = device(
            &certs,
            version,
            Tls12Resumption::SessionIdOnly,
            Some(&certs.client),
        );
        assert_eq!(over_mqtts(b.tls, config.clone()).await.kind, Full);
        assert_eq!(over_mqtts(b.tls, config.clone()).await.kind, Resumed);
        devices.push((version, config));
    }
    // Another CA trusted beside the first: the device's certificate still
    // chains, but the trust is not the same.
    let both = format!(
        "{}{}",
        std::fs::read_to_string(&certs.ca.cert_path).unwrap(),
        std::fs::read_to_string(&certs.rogue_ca.cert_path).unwrap()
    );
    std::fs::write(&certs.ca.cert_path, both).unwrap();
    b.reload();
    for (version, config) in devices {
        let kinds = [
            over_mqtts(b.tls, config.clone()).await.kind,
            over_mqtts(b.tls, config).await.kind,
        ];
        assert_eq!(kinds, [Full, Resumed], "{:?}", version.version);
    }
    b.stop().await;
}

/// Likewise a new CRL, whether read on reload or when the file changes: a
/// session made before it would skip the check against it (on HTTPS
/// nothing else checks a resumed client certificate again).
#[tokio::test]
async fn a_changed_crl_ends_resumption() {
    let certs = TestCerts::generate();
    let crl = certs.dir.path().join("ca.crl");
    std::fs::write(&crl, crl_pem(&certs.ca, &[])).unwrap();
    let tls = certs
        .tls(Some(true))
        .crl(&crl)
        .crl_poll_interval(std::time::Duration::from_millis(50));
    let b = Broker::start(tls).await;
    let config = device(
        &certs,
        &TLS13,
        Tls12Resumption::SessionIdOnly,
        Some(&certs.client),
    );
    assert_eq!(over_https(b.https, config.clone()).await.kind, Full);
    assert_eq!(over_https(b.https, config.clone()).await.kind, Resumed);
    // A reload that reads the same CRL keeps the sessions.
    b.reload();
    assert_eq!(over_https(b.https, config.clone()).await.kind, Resumed);

    // Another certificate revoked: read by the listener's watcher.
    std::fs::write(&crl, crl_pem(&certs.ca, &[9999])).unwrap();
    let mut full = false;
    for _ in 0..100 {
        if over_https(b.https, config.clone()).await.kind == Full {
            full = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(full, "a changed CRL file ends resumption");
    assert_eq!(over_https(b.https, config.clone()).await.kind, Resumed);

    // And on reload.
    std::fs::write(&crl, crl_pem(&certs.ca, &[9998, 9999])).unwrap();
    b.reload();
    let kinds = [
        over_https(b.https, config.clone()).await.kind,
        over_https(b.https, config).await.kind,
    ];
    assert_eq!(kinds, [Full, Resumed]);
    b.stop().await;
}

/// rustls checks a client certificate at the full handshake only, and a
/// TLS 1.3 resumption renews the session: roost refuses a resumed session
/// whose certificate has expired since, as a full handshake would.
#[tokio::test]
async fn a_resumed_session_ends_with_its_client_certificate() {
    let certs = TestCerts::generate();
    let b = Broker::start(certs.tls(Some(true))).await;
    // A device certificate that expires two seconds from now.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "brief");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    params.not_after =
        rcgen::date_time_ymd(1970, 1, 1) + std::time::Duration::from_secs(now.as_secs() + 2);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params
        .signed_by(&key, &certs.ca.cert, &certs.ca.key)
        .unwrap();
    let brief = Issued {
        cert,
        key,
        cert_path: Default::default(),
        key_path: Default::default(),
    };
    let mut devices = Vec::new();
    for version in [&TLS13, &TLS12] {
        let config = device(
            &certs,
            version,
            Tls12Resumption::SessionIdOnly,
            Some(&brief),
        );
        assert_eq!(over_mqtts(b.tls, config.clone()).await.kind, Full);
        assert_eq!(over_mqtts(b.tls, config.clone()).await.kind, Resumed);
        devices.push(config);
    }
    tokio::time::sleep(std::time::Duration::from_millis(3100)).await;
    for config in devices {
        // The client finishes its side of the resumed handshake; the
        // broker then closes without reading the CONNECT.
        match tls_connect(b.tls, config).await {
            Err(_) => {}
            Ok(tls) => {
                assert_eq!(tls.get_ref().1.handshake_kind(), Some(Resumed));
                assert_refused(Box::new(tls), "brief").await;
            }
        }
    }
    b.stop().await;
}
