//! MQTT over TLS with real rustls handshakes: client certificates (required,
//! optional, wrong CA, expired), plain TCP on the TLS port, certificate
//! reload, and errors that name the broken file.

mod common;
use common::listeners::*;
use common::*;
use roost::codec::{ProtocolVersion, QoS, ReasonCode};
use roost::{ListenerError, Options, TlsConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn mqtt_over(io: Io, client_id: &str) -> Client {
    let mut c = Client::new(io, ProtocolVersion::V5);
    let ack = c.connect(v5(client_id)).await;
    assert_eq!(ack.reason, ReasonCode::Success, "{ack:?}");
    c
}

#[tokio::test]
async fn pubsub_over_tls_with_required_client_certificate() {
    let b = MultiBroker::with(Options::default(), Some(true)).await;
    let config = b.certs.client_config(Some(&b.certs.client));
    let tls = tls_connect(b.tls, config.clone()).await.unwrap();
    // The handshake negotiated a modern version and presented our CA's cert.
    let (_, session) = tls.get_ref();
    assert!(session.protocol_version().is_some());
    let mut sub = mqtt_over(Box::new(tls), "sub").await;
    sub.subscribe(1, "secure/#", QoS::ExactlyOnce).await;
    let mut publ = mqtt_over(Box::new(tls_connect(b.tls, config).await.unwrap()), "pub").await;
    publ.publish(publish("secure/a", "hello", QoS::ExactlyOnce, 7))
        .await;
    let p = sub.recv_publish().await;
    assert_eq!(payload(&p), "hello");
    sub.ack(&p).await;
    // The admin API names each client's certificate.
    let clients = b.admin.clients(Default::default()).await.unwrap();
    assert_eq!(clients.items.len(), 2, "{clients:?}");
    for c in &clients.items {
        let subject = c.certificate.as_deref().unwrap_or_default();
        assert!(subject.contains("CN=alice"), "{c:?}");
    }
    b.stop().await;
}

#[tokio::test]
async fn tls12_and_tls13_are_both_offered() {
    let b = MultiBroker::with(Options::default(), None).await;
    for version in [
        &tokio_rustls::rustls::version::TLS12,
        &tokio_rustls::rustls::version::TLS13,
    ] {
        let mut roots = tokio_rustls::rustls::RootCertStore::empty();
        roots.add(b.certs.ca.der()).unwrap();
        let config = tokio_rustls::rustls::ClientConfig::builder_with_provider(
            std::sync::Arc::new(tokio_rustls::rustls::crypto::ring::default_provider()),
        )
        .with_protocol_versions(&[version])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let tls = tls_connect(b.tls, std::sync::Arc::new(config))
            .await
            .unwrap();
        assert_eq!(tls.get_ref().1.protocol_version(), Some(version.version));
        mqtt_over(Box::new(tls), "v").await.disconnect().await;
    }
    b.stop().await;
}

#[tokio::test]
async fn required_client_certificate_missing_is_refused() {
    let b = MultiBroker::with(Options::default(), Some(true)).await;
    let config = b.certs.client_config(None);
    match tls_connect(b.tls, config).await {
        Err(_) => {}
        Ok(tls) => assert_refused(Box::new(tls), "anon").await,
    }
    // The broker is unaffected.
    let tls = tls_connect(b.tls, b.certs.client_config(Some(&b.certs.client)))
        .await
        .unwrap();
    mqtt_over(Box::new(tls), "ok").await.disconnect().await;
    b.stop().await;
}

#[tokio::test]
async fn optional_client_certificate_admits_both() {
    let b = MultiBroker::with(Options::default(), Some(false)).await;
    for identity in [None, Some(&b.certs.client)] {
        let tls = tls_connect(b.tls, b.certs.client_config(identity))
            .await
            .unwrap();
        mqtt_over(Box::new(tls), "c").await.disconnect().await;
    }
    // A certificate that does present itself must still be valid.
    let rogue = b.certs.client_config(Some(&b.certs.rogue_client));
    match tls_connect(b.tls, rogue).await {
        Err(_) => {}
        Ok(tls) => assert_refused(Box::new(tls), "rogue").await,
    }
    b.stop().await;
}

#[tokio::test]
async fn wrong_ca_fails_the_handshake() {
    let b = MultiBroker::with(Options::default(), Some(true)).await;
    // The client trusts another CA (same name, other key): it rejects the
    // server.
    let config = client_config(&b.certs.rogue_ca, Some(&b.certs.client));
    assert!(tls_connect(b.tls, config).await.is_err());
    // The server rejects a client certificate from another CA.
    let config = b.certs.client_config(Some(&b.certs.rogue_client));
    match tls_connect(b.tls, config).await {
        Err(_) => {}
        Ok(tls) => assert_refused(Box::new(tls), "rogue").await,
    }
    b.stop().await;
}

#[tokio::test]
async fn expired_client_certificate_is_rejected() {
    let b = MultiBroker::with(Options::default(), Some(true)).await;
    let config = b.certs.client_config(Some(&b.certs.expired_client));
    match tls_connect(b.tls, config).await {
        Err(_) => {}
        Ok(tls) => assert_refused(Box::new(tls), "old").await,
    }
    b.stop().await;
}

#[tokio::test]
async fn plain_tcp_to_the_tls_port_is_closed() {
    let b = MultiBroker::with(Options::default(), None).await;
    let mut raw = TcpStream::connect(b.tls).await.unwrap();
    // A plain MQTT CONNECT is not a TLS record: rustls answers with an
    // alert (or nothing) and the connection ends without a CONNACK.
    raw.write_all(&[
        0x10, 0x0d, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 60, 0, 1, b'x',
    ])
    .await
    .unwrap();
    let mut got = Vec::new();
    let closed = tokio::time::timeout(WAIT, raw.read_to_end(&mut got)).await;
    assert!(closed.is_ok(), "the broker kept a plain TCP client open");
    assert_ne!(got.first(), Some(&0x20), "got a CONNACK over plain TCP");
    // Everyone else carries on.
    let tls = tls_connect(b.tls, b.certs.client_config(None))
        .await
        .unwrap();
    mqtt_over(Box::new(tls), "after").await.disconnect().await;
    b.stop().await;
}

#[tokio::test]
async fn certificate_reload_serves_new_connections_and_keeps_old_ones() {
    let b = MultiBroker::with(Options::default(), None).await;
    let listener = b.handle.listener(&format!("mqtts:{}", b.tls)).unwrap();
    let first = tls_connect(b.tls, b.certs.client_config(None))
        .await
        .unwrap();
    let served = first.get_ref().1.peer_certificates().unwrap()[0].clone();
    assert_eq!(served, b.certs.server.der());
    let mut old = mqtt_over(Box::new(first), "old").await;

    // Swap the files in place, then reload.
    let dir = b.certs.dir.path();
    let next = issue_server(dir, "server-next", &b.certs.ca, 2, "localhost (renewed)");
    std::fs::copy(&next.cert_path, &b.certs.server.cert_path).unwrap();
    std::fs::copy(&next.key_path, &b.certs.server.key_path).unwrap();
    listener.reload().unwrap();

    let second = tls_connect(b.tls, b.certs.client_config(None))
        .await
        .unwrap();
    let served = second.get_ref().1.peer_certificates().unwrap()[0].clone();
    assert_eq!(
        served,
        next.der(),
        "a new connection sees the new certificate"
    );
    let mut new = mqtt_over(Box::new(second), "new").await;

    // The connection made before the reload is still up and working.
    old.ping().await;
    old.subscribe(1, "after/reload", QoS::AtLeastOnce).await;
    new.publish(publish("after/reload", "x", QoS::AtLeastOnce, 1))
        .await;
    let p = old.recv_publish().await;
    old.ack(&p).await;

    // A broken file fails the reload and leaves the listener serving.
    std::fs::write(&b.certs.server.key_path, "not a key").unwrap();
    let err = listener.reload().unwrap_err();
    assert!(matches!(err, ListenerError::BadFile { .. }), "{err}");
    let third = tls_connect(b.tls, b.certs.client_config(None))
        .await
        .unwrap();
    assert_eq!(
        third.get_ref().1.peer_certificates().unwrap()[0],
        next.der()
    );
    // (A connection that never sent CONNECT holds up shutdown for its
    // grace period; close it first.)
    drop(third);

    // Reloading a listener without TLS is an error, not a no-op.
    let tcp = b.handle.listener(&format!("mqtt:{}", b.tcp)).unwrap();
    assert!(matches!(tcp.reload(), Err(ListenerError::NotTls(_))));
    b.stop().await;
}

#[tokio::test]
async fn file_errors_name_the_file_and_the_problem() {
    let certs = TestCerts::generate();
    let dir = certs.dir.path();
    let bind = || async { tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap() };
    let tls = |cfg: TlsConfig| async move {
        roost::Server::new(Options::default())
            .tls(bind().await, cfg)
            .map(drop)
            .unwrap_err()
    };

    let missing = dir.join("missing.pem");
    let err = tls(TlsConfig::new(&missing, &certs.server.key_path)).await;
    assert!(matches!(&err, ListenerError::Read { path, .. } if *path == missing));
    assert!(err.to_string().contains("missing.pem"), "{err}");

    let garbage = dir.join("garbage.pem");
    std::fs::write(&garbage, "hello").unwrap();
    let err = tls(TlsConfig::new(&garbage, &certs.server.key_path)).await;
    assert!(err.to_string().contains("garbage.pem"), "{err}");
    assert!(err.to_string().contains("no CERTIFICATE"), "{err}");

    // A certificate file given as the key.
    let err = tls(TlsConfig::new(
        &certs.server.cert_path,
        &certs.server.cert_path,
    ))
    .await;
    assert!(err.to_string().contains("server.pem"), "{err}");
    assert!(err.to_string().contains("PRIVATE KEY"), "{err}");

    // The client's key with the server's certificate.
    let err = tls(TlsConfig::new(
        &certs.server.cert_path,
        &certs.client.key_path,
    ))
    .await;
    assert!(
        matches!(err, ListenerError::CertKeyMismatch { .. }),
        "{err}"
    );

    let err = tls(
        TlsConfig::new(&certs.server.cert_path, &certs.server.key_path).client_auth(
            roost::ClientAuth::Required {
                ca: garbage.clone(),
            },
        ),
    )
    .await;
    assert!(err.to_string().contains("garbage.pem"), "{err}");
}

/// The certificate's CN replaces the CONNECT's user name
/// (`UsernameFrom::CommonName`); what the broker does with it belongs to
/// the auth hooks. Here: a client whose CONNECT carries another user name
/// and a password still connects with its certificate.
#[tokio::test]
async fn certificate_identity_with_connect_credentials() {
    let b = MultiBroker::with(Options::default(), Some(true)).await;
    let tls = tls_connect(b.tls, b.certs.client_config(Some(&b.certs.client)))
        .await
        .unwrap();
    let mut c = Client::new(Box::new(tls), ProtocolVersion::V3_1_1);
    let mut connect = v311("cn-user");
    connect.username = Some("someone-else".into());
    connect.password = Some(bytes::Bytes::from_static(b"pw"));
    assert_eq!(c.connect(connect).await.reason, ReasonCode::Success);
    c.disconnect().await;
    b.stop().await;
}

/// The checked-in example certificates (certs/, 100-year validity) still
/// fit together: the broker loads them, requires the example client's
/// certificate, and a client trusting `ca.pem` connects.
#[tokio::test]
async fn example_certificates_in_certs_work() {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("certs");
    let tls = TlsConfig::new(dir.join("server.pem"), dir.join("server.key"))
        .client_auth(roost::ClientAuth::Required {
            ca: dir.join("ca.pem"),
        })
        .username_from(roost::UsernameFrom::CommonName);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let server = roost::Server::new(Options::default()).tls(l, tls).unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let join = tokio::spawn(server.serve(async {
        let _ = rx.await;
    }));

    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(dir.join("ca.pem")).unwrap())
        .unwrap();
    let chain = CertificateDer::pem_file_iter(dir.join("client.pem"))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(dir.join("client.key")).unwrap();
    let config = tokio_rustls::rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        tokio_rustls::rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)
    .unwrap();
    let io = tls_connect(addr, std::sync::Arc::new(config))
        .await
        .unwrap();
    mqtt_over(Box::new(io), "example").await.disconnect().await;
    let _ = tx.send(());
    join.await.unwrap().unwrap();
}

/// With `UsernameFrom::CommonName`, the user name the auth hooks see is the
/// certificate's CN, whatever the CONNECT claims.
#[tokio::test]
async fn the_certificate_common_name_is_the_user_name_hooks_see() {
    use roost::hooks::{AuthHook, BoxFuture, Client as HookClient, Decision};
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Seen(Arc<Mutex<Vec<String>>>);
    impl AuthHook for Seen {
        fn authenticate<'a>(
            &'a self,
            client: &'a HookClient,
            connect: &'a roost::codec::Connect,
        ) -> BoxFuture<'a, Decision> {
            let name = connect.username.as_deref().unwrap_or("<none>").to_owned();
            assert_eq!(client.username.as_deref(), connect.username.as_deref());
            self.0.lock().unwrap().push(name);
            Box::pin(std::future::ready(Decision::Allow))
        }
    }

    let certs = TestCerts::generate();
    let seen = Seen::default();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let server = roost::Server::new(Options::default())
        .auth_hook(seen.clone())
        .tls(l, certs.tls(Some(true)))
        .unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let join = tokio::spawn(server.serve(async {
        let _ = rx.await;
    }));
    let tls = tls_connect(addr, certs.client_config(Some(&certs.client)))
        .await
        .unwrap();
    let mut c = Client::new(Box::new(tls), ProtocolVersion::V5);
    let mut connect = v5("cn-user");
    connect.username = Some("someone-else".into());
    assert_eq!(c.connect(connect).await.reason, ReasonCode::Success);
    assert_eq!(*seen.0.lock().unwrap(), vec!["alice".to_owned()]);
    c.disconnect().await;
    let _ = tx.send(());
    join.await.unwrap().unwrap();
}

/// When the identity is to come from the certificate, a CA-signed
/// certificate without it is refused with CONNACK 0x87 (3.x: return code 5)
/// before any auth hook runs: the CONNECT's user name is never taken in
/// its place, so such a certificate cannot claim to be `admin`.
#[tokio::test]
async fn a_certificate_without_the_identity_is_refused() {
    use roost::hooks::{AuthHook, BoxFuture, Client as HookClient, Decision};
    use std::sync::{Arc, Mutex};

    /// Lets in exactly the user `admin` (no password: the certificate is
    /// the credential), and records who it saw.
    #[derive(Clone, Default)]
    struct AdminOnly(Arc<Mutex<Vec<String>>>);
    impl AuthHook for AdminOnly {
        fn authenticate<'a>(
            &'a self,
            client: &'a HookClient,
            _connect: &'a roost::codec::Connect,
        ) -> BoxFuture<'a, Decision> {
            let name = client.username.as_deref().unwrap_or("<none>").to_owned();
            let allow = name == "admin";
            self.0.lock().unwrap().push(name);
            Box::pin(std::future::ready(if allow {
                Decision::Allow
            } else {
                Decision::Deny
            }))
        }
    }

    let certs = TestCerts::generate();
    let nameless = issue_client_without_cn(certs.dir.path(), "nameless", &certs.ca);
    let seen = AdminOnly::default();
    for required in [true, false] {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let server = roost::Server::new(Options::default())
            .auth_hook(seen.clone())
            .tls(l, certs.tls(Some(required)))
            .unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let join = tokio::spawn(server.serve(async {
            let _ = rx.await;
        }));
        for version in [ProtocolVersion::V5, ProtocolVersion::V3_1_1] {
            let tls = tls_connect(addr, certs.client_config(Some(&nameless)))
                .await
                .unwrap();
            let mut c = Client::new(Box::new(tls), version);
            let mut connect = connect(version, "nameless", true);
            connect.username = Some("admin".into());
            let ack = c.connect(connect).await;
            assert_eq!(
                ack.reason,
                ReasonCode::NotAuthorized,
                "{version:?}: {ack:?}"
            );
            assert!(!ack.session_present);
            assert!(c.recv_within(WAIT).await.is_none(), "the connection closes");
        }
        let _ = tx.send(());
        join.await.unwrap().unwrap();
    }
    assert!(seen.0.lock().unwrap().is_empty(), "no hook was asked");
}

/// A broker with one TLS listener, configured by `tls`.
struct TlsBroker {
    addr: std::net::SocketAddr,
    stats: std::sync::Arc<roost::Stats>,
    stop: tokio::sync::oneshot::Sender<()>,
    join: tokio::task::JoinHandle<Result<(), roost::ServeError>>,
}

impl TlsBroker {
    async fn start(opts: Options, tls: TlsConfig) -> TlsBroker {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let server = roost::Server::new(opts).tls(l, tls).unwrap();
        let stats = server.stats();
        let (stop, rx) = tokio::sync::oneshot::channel::<()>();
        let join = tokio::spawn(server.serve(async {
            let _ = rx.await;
        }));
        TlsBroker {
            addr,
            stats,
            stop,
            join,
        }
    }

    /// An MQTT client of `version` over TLS, presenting `cert`.
    async fn client(
        &self,
        certs: &TestCerts,
        cert: Option<&Issued>,
        version: ProtocolVersion,
    ) -> Client {
        let tls = tls_connect(self.addr, certs.client_config(cert))
            .await
            .unwrap();
        Client::new(Box::new(tls), version)
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        self.join.await.unwrap().unwrap();
    }
}

/// With `client_id_from` the certificate's CN, the session is the
/// certificate's: a device whose CONNECT claims another device's client id
/// gets its own session, and the other device is neither taken over nor
/// disconnected. A device that sends an empty client id gets its CN (5.0:
/// told in CONNACK) and its session back.
#[tokio::test]
async fn the_certificate_is_the_client_id_and_no_other_certificate_takes_its_session() {
    let certs = TestCerts::generate();
    let dev1 = issue_client(certs.dir.path(), "dev-1", &certs.ca, "dev-1", false);
    let dev2 = issue_client(certs.dir.path(), "dev-2", &certs.ca, "dev-2", false);
    let tls = certs
        .tls(Some(true))
        .client_id_from(roost::ClientIdFrom::CommonName);
    let b = TlsBroker::start(Options::default(), tls).await;

    // dev-1 claims to be dev-2: it gets the session "dev-1".
    let mut one = b.client(&certs, Some(&dev1), ProtocolVersion::V5).await;
    let ack = one.connect(v5_session("dev-2", true, 600)).await;
    assert_eq!(ack.reason, ReasonCode::Success);
    assert_eq!(
        ack.properties.assigned_client_identifier, None,
        "only an empty client id is told the one it got"
    );
    one.subscribe(1, "cmd/dev-1", QoS::AtLeastOnce).await;

    // dev-2 claims to be dev-1, asking for its session: it gets a fresh
    // one of its own, and dev-1 stays connected.
    let mut two = b.client(&certs, Some(&dev2), ProtocolVersion::V3_1_1).await;
    let ack = two
        .connect(connect(ProtocolVersion::V3_1_1, "dev-1", false))
        .await;
    assert_eq!(ack.reason, ReasonCode::Success);
    assert!(!ack.session_present, "dev-1's session is not dev-2's");
    two.publish(publish("cmd/dev-1", "hello", QoS::AtLeastOnce, 1))
        .await;
    let p = one.recv_publish().await;
    assert_eq!(payload(&p), "hello");
    one.ack(&p).await;
    assert_eq!(b.stats.snapshot().clients_connected, 2);

    // dev-1 comes back with an empty client id: it is told "dev-1", and
    // finds its session with what was queued while it was away.
    one.disconnect().await;
    two.publish(publish("cmd/dev-1", "while away", QoS::AtLeastOnce, 2))
        .await;
    let mut one = b.client(&certs, Some(&dev1), ProtocolVersion::V5).await;
    let ack = one.connect(v5_session("", false, 600)).await;
    assert_eq!(ack.reason, ReasonCode::Success);
    assert!(ack.session_present);
    assert_eq!(
        ack.properties.assigned_client_identifier.as_deref(),
        Some("dev-1")
    );
    let p = one.recv_publish().await;
    assert_eq!(payload(&p), "while away");
    one.ack(&p).await;

    // 3.1.1 still refuses an empty client id with Clean Session 0
    // ([MQTT-3.1.3-8]): return code 2.
    let mut three = b.client(&certs, Some(&dev2), ProtocolVersion::V3_1_1).await;
    let ack = three
        .connect(connect(ProtocolVersion::V3_1_1, "", false))
        .await;
    assert_eq!(ack.reason, ReasonCode::ClientIdentifierNotValid);

    one.disconnect().await;
    two.disconnect().await;
    b.stop().await;
}

/// When the client id is to come from the certificate, a client without a
/// certificate (they are optional here) or with one that lacks the name is
/// refused with CONNACK 0x87 (3.x: return code 5), whatever client id it
/// sends: nobody checks a client id, so it cannot fall back on the
/// CONNECT's. The user name still may (it comes from the CONNECT here).
#[tokio::test]
async fn without_the_certificate_client_id_a_client_is_refused() {
    let certs = TestCerts::generate();
    let nameless = issue_client_without_cn(certs.dir.path(), "nameless", &certs.ca);
    let tls = TlsConfig::new(&certs.server.cert_path, &certs.server.key_path)
        .client_auth(roost::ClientAuth::Optional {
            ca: certs.ca.cert_path.clone(),
        })
        .client_id_from(roost::ClientIdFrom::CommonName);
    let b = TlsBroker::start(Options::default(), tls).await;
    for cert in [None, Some(&nameless)] {
        for version in [ProtocolVersion::V5, ProtocolVersion::V3_1_1] {
            let mut c = b.client(&certs, cert, version).await;
            let ack = c.connect(connect(version, "alice", true)).await;
            assert_eq!(ack.reason, ReasonCode::NotAuthorized, "{version:?}");
        }
    }
    // With its certificate, alice is let in (as "alice").
    let mut c = b
        .client(&certs, Some(&certs.client), ProtocolVersion::V5)
        .await;
    let ack = c.connect(v5("")).await;
    assert_eq!(ack.reason, ReasonCode::Success);
    assert_eq!(
        ack.properties.assigned_client_identifier.as_deref(),
        Some("alice")
    );
    c.disconnect().await;
    b.stop().await;
}

/// `maximum_connections_per_ip` on TLS: past it a connection is closed
/// before its handshake (the server never answers the ClientHello), and
/// counted in the stats, `/metrics` and `$SYS`. HTTP connections do not
/// count: the stats endpoint still answers the same address.
#[tokio::test]
async fn past_maximum_connections_per_ip_a_tls_connection_is_closed_before_its_handshake() {
    let mut opts = Options::default();
    opts.limits.maximum_connections_per_ip = 1;
    opts.sys_interval = Some(std::time::Duration::from_secs(1));
    let b = MultiBroker::with(opts, Some(true)).await;
    let mut first = b.connected(Kind::Tls, v5("first")).await;

    let refused = tls_connect(b.tls, b.certs.client_config(Some(&b.certs.client))).await;
    let err = refused.expect_err("closed before the handshake");
    assert!(
        matches!(
            err.kind(),
            std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
        ),
        "{err}"
    );
    // Any MQTT listener: the count is per source, not per listener.
    let mut plain = TcpStream::connect(b.tcp).await.unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(WAIT, plain.read_to_end(&mut got))
        .await
        .expect("closed at once");
    assert!(got.is_empty());
    assert_eq!(b.stats.snapshot().connections_refused_per_ip, 2);

    let r = common::http::get(b.http, "/stats").await;
    assert_eq!(r.status, 200, "{r:?}");
    let (stats, body) = (r.json(), r.body);
    assert_eq!(stats["connections_refused_per_ip"], 2, "{body}");
    assert_eq!(stats["connect_rate_refused"], 0, "{body}");
    let metrics = common::http::get(b.http, "/metrics").await.body;
    assert!(
        metrics.contains("\nroost_connections_refused_per_ip_total 2\n"),
        "{metrics}"
    );
    assert!(metrics.contains("\nroost_connect_rate_refused_total 0\n"));

    first
        .subscribe(1, "$SYS/broker/refused/connections_per_ip", QoS::AtMostOnce)
        .await;
    // The retained value may be from before the refusals: the next one
    // (within a second) is not.
    while payload(&first.recv_publish().await) != "2" {}
    first.disconnect().await;
    b.stop().await;
}
