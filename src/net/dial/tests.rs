//! The dialer against real peers on 127.0.0.1: a roost broker serving
//! TCP, TLS, WebSocket and WSS, and bare sockets for the failures. Each
//! success is checked with an MQTT CONNECT/CONNACK round trip through the
//! dialed stream.
//!
//! Certificates are made at test time with rcgen, as the integration tests
//! do (see certs/README.md), so none can expire under the suite.

use super::*;

#[cfg(not(all(feature = "tls", feature = "ws")))]
#[test]
fn a_scheme_this_build_cannot_dial_is_refused_up_front() {
    let (url, missing) = if cfg!(feature = "tls") {
        ("ws://h", "feature `ws`")
    } else {
        ("mqtts://h", "feature `tls`")
    };
    let remote = Remote::parse(url).unwrap();
    let err = Dialer::new(&remote, Some(&BridgeTls::new("ca.pem")))
        .err()
        .expect("refused");
    assert!(matches!(err, DialError::Unsupported { .. }), "{err:?}");
    assert!(err.to_string().contains(missing), "{err}");
    assert_eq!(err.kind(), "config");
}

#[cfg(all(feature = "tls", feature = "ws"))]
mod live {
    use super::*;
    use crate::codec::{encode, Connect, Decoder, Packet, ProtocolVersion, ReasonCode};
    use crate::{ClientAuth, Options, Server, TlsConfig, WsConfig};
    use bytes::BytesMut;
    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose, SanType,
    };
    use std::path::Path;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::sync::oneshot;

    /// Long enough for a loaded CI machine; the tests that expect a
    /// timeout use their own, short one.
    const WAIT: Duration = Duration::from_secs(10);

    /// A CA with a server certificate (`localhost`, 127.0.0.1) and a
    /// client certificate, and an unrelated CA.
    struct Certs {
        _dir: tempfile::TempDir,
        ca: PathBuf,
        server: (PathBuf, PathBuf),
        client: (PathBuf, PathBuf),
        rogue_ca: PathBuf,
    }

    fn write(
        dir: &Path,
        name: &str,
        cert: &rcgen::Certificate,
        key: &KeyPair,
    ) -> (PathBuf, PathBuf) {
        let paths = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&paths.0, cert.pem()).unwrap();
        std::fs::write(&paths.1, key.serialize_pem()).unwrap();
        paths
    }

    fn ca(cn: &str) -> (rcgen::Certificate, KeyPair) {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cn);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        (params.self_signed(&key).unwrap(), key)
    }

    impl Certs {
        fn generate() -> Certs {
            let dir = tempfile::tempdir().unwrap();
            let (ca_cert, ca_key) = ca("roost dial test CA");
            let (rogue_cert, rogue_key) = ca("another CA");

            let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
            params
                .subject_alt_names
                .push(SanType::IpAddress([127, 0, 0, 1].into()));
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            let key = KeyPair::generate().unwrap();
            let server_cert = params.signed_by(&key, &ca_cert, &ca_key).unwrap();
            let server = write(dir.path(), "server", &server_cert, &key);

            let mut params = CertificateParams::default();
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            let key = KeyPair::generate().unwrap();
            let client_cert = params.signed_by(&key, &ca_cert, &ca_key).unwrap();
            let client = write(dir.path(), "client", &client_cert, &key);

            let ca = write(dir.path(), "ca", &ca_cert, &ca_key).0;
            let rogue_ca = write(dir.path(), "rogue-ca", &rogue_cert, &rogue_key).0;
            Certs {
                _dir: dir,
                ca,
                server,
                client,
                rogue_ca,
            }
        }

        /// Trusts the test CA, without a client certificate.
        fn trust(&self) -> BridgeTls {
            BridgeTls::new(&self.ca)
        }

        /// Trusts the test CA and presents the client certificate.
        fn with_client_cert(&self) -> BridgeTls {
            self.trust().client_cert(&self.client.0, &self.client.1)
        }
    }

    /// A broker on ephemeral ports: its TLS listener requires a client
    /// certificate, its WSS listener asks for none.
    struct Broker {
        tcp: u16,
        tls: u16,
        ws: u16,
        wss: u16,
        certs: Certs,
        _stop: oneshot::Sender<()>,
    }

    async fn bind() -> (TcpListener, u16) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        (l, port)
    }

    impl Broker {
        async fn start() -> Broker {
            let certs = Certs::generate();
            let server_tls = || TlsConfig::new(&certs.server.0, &certs.server.1);
            let (tcp_l, tcp) = bind().await;
            let (tls_l, tls) = bind().await;
            let (ws_l, ws) = bind().await;
            let (wss_l, wss) = bind().await;
            let required = ClientAuth::Required {
                ca: certs.ca.clone(),
            };
            let server = Server::new(Options::default())
                .tcp(tcp_l)
                .tls(tls_l, server_tls().client_auth(required))
                .unwrap()
                .ws(ws_l, WsConfig::default())
                .unwrap()
                .wss(wss_l, WsConfig::default(), server_tls())
                .unwrap();
            // Dropping the sender (with the broker) stops the server.
            let (stop, stopped) = oneshot::channel::<()>();
            tokio::spawn(server.serve(async {
                let _ = stopped.await;
            }));
            Broker {
                tcp,
                tls,
                ws,
                wss,
                certs,
                _stop: stop,
            }
        }
    }

    fn remote(url: &str) -> Remote {
        Remote::parse(url).unwrap()
    }

    /// Sends a 5.0 CONNECT through `stream` and returns the CONNACK's
    /// reason, or why none came.
    async fn connack(stream: &mut RemoteStream) -> Result<ReasonCode, String> {
        let v5 = ProtocolVersion::V5;
        let mut out = BytesMut::new();
        let connect = Connect::new(v5, "dial-test");
        encode(&Packet::Connect(Box::new(connect)), v5, &mut out).unwrap();
        let exchange = async {
            stream.write_all(&out).await.map_err(|e| e.to_string())?;
            stream.flush().await.map_err(|e| e.to_string())?;
            let mut decoder = Decoder::with_version(1 << 20, v5);
            let mut buf = BytesMut::new();
            loop {
                match decoder.decode(&mut buf).map_err(|e| e.to_string())? {
                    Some(Packet::ConnAck(ack)) => return Ok(ack.reason),
                    Some(other) => return Err(format!("expected CONNACK, got {other:?}")),
                    None => {}
                }
                let n = stream.read_buf(&mut buf).await.map_err(|e| e.to_string())?;
                if n == 0 {
                    return Err("closed before CONNACK".into());
                }
            }
        };
        tokio::time::timeout(WAIT, exchange)
            .await
            .unwrap_or_else(|_| Err("no CONNACK in time".into()))
    }

    async fn dial(url: &str, tls: Option<&BridgeTls>) -> Result<RemoteStream, DialError> {
        Dialer::new(&remote(url), tls)?.dial(WAIT).await
    }

    async fn assert_round_trip(url: &str, tls: Option<&BridgeTls>) {
        let mut stream = dial(url, tls)
            .await
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        assert_eq!(connack(&mut stream).await, Ok(ReasonCode::Success), "{url}");
    }

    #[tokio::test]
    async fn mqtt_over_every_transport() {
        let b = Broker::start().await;
        assert_round_trip(&format!("mqtt://127.0.0.1:{}", b.tcp), None).await;
        // By name: the certificate's DNS name is checked (and sent as SNI),
        // and `localhost` may resolve to ::1 first, where nothing listens.
        let client_cert = b.certs.with_client_cert();
        let url = format!("mqtts://localhost:{}", b.tls);
        assert_round_trip(&url, Some(&client_cert)).await;
        // By address: the certificate's IP address is checked.
        let url = format!("mqtts://127.0.0.1:{}", b.tls);
        assert_round_trip(&url, Some(&client_cert)).await;
        // The default path, /mqtt, is the listener's.
        assert_round_trip(&format!("ws://127.0.0.1:{}", b.ws), None).await;
        let url = format!("wss://localhost:{}/mqtt", b.wss);
        assert_round_trip(&url, Some(&b.certs.trust())).await;
    }

    #[tokio::test]
    async fn a_listener_that_requires_a_client_certificate_refuses_a_bridge_without_one() {
        let b = Broker::start().await;
        let url = format!("mqtts://localhost:{}", b.tls);
        // With TLS 1.3 the client's side of the handshake ends before the
        // server has checked the client: the refusal may come with the
        // first read instead.
        match dial(&url, Some(&b.certs.trust())).await {
            Err(e) => assert_eq!(e.kind(), "tls", "{e}"),
            Ok(mut stream) => {
                let got = connack(&mut stream).await;
                assert!(got.is_err(), "admitted without a certificate: {got:?}");
            }
        }
    }

    #[tokio::test]
    async fn a_refused_port_is_a_connect_error() {
        // A port that was just free: nothing listens there now.
        let (l, port) = bind().await;
        drop(l);
        let err = dial(&format!("mqtt://127.0.0.1:{port}"), None)
            .await
            .err()
            .expect("refused");
        assert!(
            matches!(err, DialError::Connect { others: 0, .. }),
            "{err:?}"
        );
        assert_eq!(err.kind(), "connect");
        let line = err.to_string();
        assert!(
            line.starts_with(&format!("TCP connect to 127.0.0.1:{port} failed: ")),
            "{line}"
        );
        assert!(line.to_lowercase().contains("refused"), "{line}");
    }

    #[tokio::test]
    async fn an_unknown_ca_fails_the_handshake_naming_the_problem() {
        let b = Broker::start().await;
        let rogue = BridgeTls::new(&b.certs.rogue_ca);
        for url in [
            format!("mqtts://127.0.0.1:{}", b.tls),
            format!("wss://127.0.0.1:{}", b.wss),
        ] {
            let err = dial(&url, Some(&rogue)).await.err().expect("untrusted");
            assert_eq!(err.kind(), "tls", "{err}");
            let line = err.to_string();
            let port = url.rsplit(':').next().unwrap();
            assert_eq!(
                line,
                format!(
                    "TLS handshake with 127.0.0.1:{port} failed: \
                     invalid peer certificate: UnknownIssuer"
                )
            );
        }
    }

    #[tokio::test]
    async fn a_server_name_the_certificate_lacks_fails_the_handshake() {
        let b = Broker::start().await;
        let tls = b.certs.trust().server_name("broker.example.com");
        let err = dial(&format!("wss://127.0.0.1:{}", b.wss), Some(&tls))
            .await
            .err()
            .expect("wrong name");
        assert!(matches!(err, DialError::Tls { .. }), "{err:?}");
        let line = err.to_string();
        assert!(line.contains("invalid peer certificate"), "{line}");
        assert!(line.contains("broker.example.com"), "{line}");
        // The right name, against an address, works.
        let tls = b.certs.trust().server_name("localhost");
        assert_round_trip(&format!("wss://127.0.0.1:{}", b.wss), Some(&tls)).await;
    }

    #[tokio::test]
    async fn a_wrong_websocket_path_is_a_websocket_error() {
        let b = Broker::start().await;
        let err = dial(&format!("ws://127.0.0.1:{}/elsewhere", b.ws), None)
            .await
            .err()
            .expect("not found");
        assert_eq!(err.kind(), "websocket", "{err}");
        let line = err.to_string();
        assert!(
            line.starts_with(&format!(
                "WebSocket handshake with 127.0.0.1:{} failed: ",
                b.ws
            )),
            "{line}"
        );
        assert!(line.contains("404"), "{line}");
    }

    #[tokio::test]
    async fn a_name_that_does_not_resolve_is_a_dns_error() {
        let err = dial("mqtt://no-such-host.invalid", None)
            .await
            .err()
            .expect("no such host");
        assert!(matches!(err, DialError::Dns { .. }), "{err:?}");
        assert!(
            err.to_string()
                .starts_with("DNS lookup of no-such-host.invalid failed: "),
            "{err}"
        );
    }

    /// A peer that takes the TCP connection and never says a word.
    async fn silent_peer() -> u16 {
        let (l, port) = bind().await;
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = l.accept().await {
                held.push(stream);
            }
        });
        port
    }

    #[tokio::test]
    async fn a_handshake_that_never_ends_is_cut_off_by_the_limit() {
        let port = silent_peer().await;
        let certs = Certs::generate();
        let limit = Duration::from_millis(300);
        for (url, during) in [
            (format!("mqtts://127.0.0.1:{port}"), "TLS handshake"),
            (format!("ws://127.0.0.1:{port}"), "WebSocket handshake"),
        ] {
            let dialer = Dialer::new(&remote(&url), Some(&certs.trust())).unwrap();
            let started = Instant::now();
            let err = dialer.dial(limit).await.err().expect("timed out");
            let took = started.elapsed();
            assert!(took >= limit && took < limit * 5, "{url}: {took:?}");
            assert_eq!(err.kind(), "timeout", "{err}");
            assert_eq!(
                err.to_string(),
                format!("{during} with 127.0.0.1:{port} timed out (300ms for the whole dial)")
            );
        }
    }

    #[tokio::test]
    async fn the_same_cause_gives_the_same_line() {
        let (l, port) = bind().await;
        drop(l);
        let dialer = Dialer::new(&remote(&format!("mqtt://127.0.0.1:{port}")), None).unwrap();
        let first = dialer.dial(WAIT).await.err().expect("refused");
        let second = dialer.dial(WAIT).await.err().expect("refused");
        assert_eq!(first.to_string(), second.to_string());
    }

    #[test]
    fn broken_files_are_reported_when_the_dialer_is_built_naming_the_file() {
        let certs = Certs::generate();
        let mqtts = remote("mqtts://localhost");
        let dir = certs.ca.parent().unwrap();
        let missing = dir.join("missing.pem");
        let garbage = dir.join("garbage.pem");
        std::fs::write(&garbage, "not a certificate").unwrap();
        let cases = [
            (BridgeTls::new(&missing), &missing, "cannot read it"),
            (BridgeTls::new(&garbage), &garbage, "no CERTIFICATE"),
            (
                // The server's key with the client's certificate.
                certs.trust().client_cert(&certs.client.0, &certs.server.1),
                &certs.client.0,
                "not usable with key",
            ),
            (
                certs.trust().client_cert(&certs.client.0, &garbage),
                &garbage,
                "no PRIVATE KEY",
            ),
        ];
        for (tls, file, needle) in cases {
            let err = Dialer::new(&mqtts, Some(&tls)).err().expect("refused");
            assert!(
                matches!(&err, DialError::Certificate { file: f, .. } if f == file),
                "{err:?}"
            );
            let line = err.to_string();
            assert!(line.contains(&file.display().to_string()), "{line}");
            assert!(line.contains(needle), "{line}");
            assert_eq!(err.kind(), "config");
        }
        let err = Dialer::new(&mqtts, None).err().expect("no tls");
        assert_eq!(
            err.to_string(),
            "mqtts://localhost:8883 needs tls settings with a ca"
        );
        let bad_name = certs.trust().server_name("not a name");
        let err = Dialer::new(&mqtts, Some(&bad_name)).err().expect("bad");
        assert!(matches!(err, DialError::ServerName { .. }), "{err:?}");
    }
}
