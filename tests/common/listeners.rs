//! Helpers for the listener tests: certificates made at test time (so none
//! can expire under the suite), a broker serving every transport, real TLS
//! and WebSocket clients, and an MQTT client over any of them.

use bytes::{Bytes, BytesMut};
use futures_util::{Sink, SinkExt, Stream};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use roost::codec::{
    encode, ConnAck, Connect, Decoder, Disconnect, Packet, ProtocolVersion, PubResp, Publish, QoS,
    QosPid, ReasonCode, SubAck,
};
use roost::{ClientAuth, Options, Server, ServerHandle, Stats, TlsConfig, UsernameFrom, WsConfig};
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::{opts, pid_of, subscribe, WAIT};

/// A certificate with its key, kept to sign others.
pub(crate) struct Issued {
    pub cert: rcgen::Certificate,
    pub key: KeyPair,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
}

impl Issued {
    pub(crate) fn der(&self) -> CertificateDer<'static> {
        self.cert.der().clone()
    }

    pub(crate) fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::try_from(self.key.serialize_der()).unwrap()
    }
}

/// A CA, a server certificate for `localhost` and 127.0.0.1, client
/// certificates (good, expired, and one from an unrelated CA), in a
/// temporary directory that lives as long as this value.
pub(crate) struct TestCerts {
    pub dir: tempfile::TempDir,
    pub ca: Issued,
    pub server: Issued,
    pub client: Issued,
    pub expired_client: Issued,
    pub rogue_ca: Issued,
    pub rogue_client: Issued,
}

fn dn(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "roost tests");
    dn.push(DnType::CommonName, cn);
    dn
}

fn write(dir: &Path, name: &str, cert: rcgen::Certificate, key: KeyPair) -> Issued {
    let cert_path = dir.join(format!("{name}.pem"));
    let key_path = dir.join(format!("{name}.key"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    Issued {
        cert,
        key,
        cert_path,
        key_path,
    }
}

fn ca(dir: &Path, name: &str, cn: &str) -> Issued {
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(cn);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    write(dir, name, cert, key)
}

impl TestCerts {
    pub(crate) fn generate() -> TestCerts {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca(dir.path(), "ca", "roost test CA");
        let rogue_ca = ca_rogue(dir.path());
        let server = issue_server(dir.path(), "server", &ca, 1, "localhost");
        let client = issue_client(dir.path(), "client", &ca, "alice", false);
        let expired_client = issue_client(dir.path(), "expired", &ca, "old-alice", true);
        let rogue_client = issue_client(dir.path(), "rogue-client", &rogue_ca, "mallory", false);
        TestCerts {
            dir,
            ca,
            server,
            client,
            expired_client,
            rogue_ca,
            rogue_client,
        }
    }

    /// The server's TLS settings, verifying client certificates against
    /// the test CA as `auth` says.
    pub(crate) fn tls(&self, required: Option<bool>) -> TlsConfig {
        let ca = self.ca.cert_path.clone();
        let auth = match required {
            None => ClientAuth::None,
            Some(false) => ClientAuth::Optional { ca },
            Some(true) => ClientAuth::Required { ca },
        };
        TlsConfig::new(&self.server.cert_path, &self.server.key_path)
            .client_auth(auth)
            .username_from(UsernameFrom::CommonName)
    }

    /// A client that trusts the test CA, presenting `identity` if given.
    pub(crate) fn client_config(&self, identity: Option<&Issued>) -> Arc<ClientConfig> {
        client_config(&self.ca, identity)
    }
}

fn ca_rogue(dir: &Path) -> Issued {
    ca(dir, "rogue-ca", "roost test CA") // same name, different key
}

/// Issues a server certificate with this serial, for `localhost` and
/// 127.0.0.1, written as `<name>.pem` / `<name>.key`.
pub(crate) fn issue_server(dir: &Path, name: &str, ca: &Issued, serial: u64, cn: &str) -> Issued {
    let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params
        .subject_alt_names
        .push(SanType::IpAddress([127, 0, 0, 1].into()));
    params.distinguished_name = dn(cn);
    params.serial_number = Some(SerialNumber::from(serial));
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca.cert, &ca.key).unwrap();
    write(dir, name, cert, key)
}

/// Issues a client certificate signed by `ca` for the subject Common Name
/// `cn` (expired long ago if `expired`), written as `<name>.pem` /
/// `<name>.key`.
pub(crate) fn issue_client(dir: &Path, name: &str, ca: &Issued, cn: &str, expired: bool) -> Issued {
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(cn);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    if expired {
        params.not_before = rcgen::date_time_ymd(2000, 1, 1);
        params.not_after = rcgen::date_time_ymd(2001, 1, 1);
    }
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca.cert, &ca.key).unwrap();
    write(dir, name, cert, key)
}

/// Issues a client certificate for `cn` signed by `ca`, with this serial
/// number (to name it in a CRL).
pub(crate) fn issue_client_serial(
    dir: &Path,
    name: &str,
    ca: &Issued,
    cn: &str,
    serial: u64,
) -> Issued {
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(cn);
    params.serial_number = Some(SerialNumber::from(serial));
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca.cert, &ca.key).unwrap();
    write(dir, name, cert, key)
}

/// A CRL signed by `ca` that revokes these serial numbers, as PEM.
pub(crate) fn crl_pem(ca: &Issued, serials: &[u64]) -> String {
    let revoked_certs = serials
        .iter()
        .map(|s| rcgen::RevokedCertParams {
            serial_number: SerialNumber::from(*s),
            revocation_time: rcgen::date_time_ymd(2024, 1, 1),
            reason_code: Some(rcgen::RevocationReason::KeyCompromise),
            invalidity_date: None,
        })
        .collect();
    let params = rcgen::CertificateRevocationListParams {
        this_update: rcgen::date_time_ymd(2024, 1, 1),
        next_update: rcgen::date_time_ymd(2100, 1, 1),
        crl_number: SerialNumber::from(serials.len() as u64 + 1),
        issuing_distribution_point: None,
        revoked_certs,
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    };
    params.signed_by(&ca.cert, &ca.key).unwrap().pem().unwrap()
}

/// Issues a client certificate signed by `ca` whose subject has no Common
/// Name (and which has no Subject Alternative Name either).
pub(crate) fn issue_client_without_cn(dir: &Path, name: &str, ca: &Issued) -> Issued {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "roost tests");
    params.distinguished_name = dn;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca.cert, &ca.key).unwrap();
    write(dir, name, cert, key)
}

pub(crate) fn client_config(trust: &Issued, identity: Option<&Issued>) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(trust.der()).unwrap();
    let builder = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match identity {
        Some(id) => builder
            .with_client_auth_cert(vec![id.der()], id.key_der())
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    Arc::new(config)
}

/// A TLS handshake with the broker as `localhost`.
pub(crate) async fn tls_connect(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").unwrap();
    TlsConnector::from(config).connect(name, tcp).await
}

/// The transports every MQTT listener test runs over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Tcp,
    Tls,
    Ws,
    Wss,
}

pub(crate) const ALL: [Kind; 4] = [Kind::Tcp, Kind::Tls, Kind::Ws, Kind::Wss];

/// A broker serving TCP, TLS, WebSocket, WSS and HTTP on ephemeral ports.
pub(crate) struct MultiBroker {
    pub tcp: SocketAddr,
    pub tls: SocketAddr,
    pub ws: SocketAddr,
    pub wss: SocketAddr,
    pub http: SocketAddr,
    pub certs: TestCerts,
    pub handle: ServerHandle,
    pub stats: Arc<Stats>,
    pub admin: roost::admin::Admin,
    stop: Option<oneshot::Sender<()>>,
    join: Option<JoinHandle<Result<(), roost::ServeError>>>,
}

async fn bind() -> (TcpListener, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    (l, a)
}

impl MultiBroker {
    /// Every transport; client certificates optional on TLS and WSS.
    pub(crate) async fn start() -> MultiBroker {
        Self::with(Options::default(), Some(false)).await
    }

    /// `client_auth`: `None` no client certificates, `Some(false)`
    /// optional, `Some(true)` required.
    pub(crate) async fn with(opts: Options, client_auth: Option<bool>) -> MultiBroker {
        let certs = TestCerts::generate();
        let (tcp_l, tcp) = bind().await;
        let (tls_l, tls) = bind().await;
        let (ws_l, ws) = bind().await;
        let (wss_l, wss) = bind().await;
        let (http_l, http) = bind().await;
        let server = Server::new(opts)
            .tcp(tcp_l)
            .tls(tls_l, certs.tls(client_auth))
            .unwrap()
            .ws(ws_l, WsConfig::default())
            .unwrap()
            .wss(wss_l, WsConfig::default(), certs.tls(client_auth))
            .unwrap()
            .http(http_l)
            .unwrap();
        let handle = server.handle();
        let stats = server.stats();
        let admin = server.admin();
        let (tx, rx) = oneshot::channel();
        let join = tokio::spawn(server.serve(async {
            let _ = rx.await;
        }));
        MultiBroker {
            tcp,
            tls,
            ws,
            wss,
            http,
            certs,
            handle,
            stats,
            admin,
            stop: Some(tx),
            join: Some(join),
        }
    }

    pub(crate) fn addr(&self, kind: Kind) -> SocketAddr {
        match kind {
            Kind::Tcp => self.tcp,
            Kind::Tls => self.tls,
            Kind::Ws => self.ws,
            Kind::Wss => self.wss,
        }
    }

    /// A byte stream to the broker over `kind` (TLS with the good client
    /// certificate; WebSocket with subprotocol `mqtt`).
    pub(crate) async fn open(&self, kind: Kind) -> Io {
        let with_cert = self.certs.client_config(Some(&self.certs.client));
        let addr = self.addr(kind);
        match kind {
            Kind::Tcp => Box::new(TcpStream::connect(addr).await.unwrap()),
            Kind::Tls => Box::new(tls_connect(addr, with_cert).await.unwrap()),
            Kind::Ws => {
                let tcp = TcpStream::connect(addr).await.unwrap();
                Box::new(
                    ws_connect(tcp, "ws://localhost/mqtt", "mqtt")
                        .await
                        .unwrap()
                        .0,
                )
            }
            Kind::Wss => {
                let tls = tls_connect(addr, with_cert).await.unwrap();
                Box::new(
                    ws_connect(tls, "wss://localhost/mqtt", "mqtt")
                        .await
                        .unwrap()
                        .0,
                )
            }
        }
    }

    /// An MQTT client over `kind` that has completed CONNECT/CONNACK.
    pub(crate) async fn connected(&self, kind: Kind, connect: Connect) -> Client {
        let mut c = Client::new(self.open(kind).await, connect.protocol);
        let ack = c.connect(connect).await;
        assert_eq!(ack.reason, ReasonCode::Success, "{kind:?}: {ack:?}");
        c
    }

    pub(crate) async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(j) = self.join.take() {
            tokio::time::timeout(WAIT, j)
                .await
                .expect("broker stops in time")
                .unwrap()
                .unwrap();
        }
    }
}

impl Drop for MultiBroker {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// A WebSocket client upgrade over `stream`, offering `protocols`
/// (comma-separated; empty offers none). Returns the stream and the
/// subprotocol the server chose.
pub(crate) async fn ws_connect<S>(
    stream: S,
    url: &str,
    protocols: &str,
) -> Result<(WsIo<S>, Option<String>), tokio_tungstenite::tungstenite::Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut request = url.into_client_request()?;
    if !protocols.is_empty() {
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", protocols.parse().unwrap());
    }
    let (ws, response) = tokio_tungstenite::client_async(request, stream).await?;
    let chosen = response
        .headers()
        .get("Sec-WebSocket-Protocol")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    Ok((
        WsIo {
            ws,
            read: Bytes::new(),
        },
        chosen,
    ))
}

/// The client side of MQTT over WebSocket as a byte stream; `ws` is public
/// so tests can send frames of their choosing.
pub(crate) struct WsIo<S> {
    pub ws: WebSocketStream<S>,
    read: Bytes,
}

fn ws_err(e: tokio_tungstenite::tungstenite::Error) -> io::Error {
    io::Error::other(e)
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsIo<S> {
    /// Sends one binary message.
    pub(crate) async fn send_frame(&mut self, data: &[u8]) {
        self.ws
            .send(Message::Binary(Bytes::copy_from_slice(data)))
            .await
            .unwrap();
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.read.is_empty() {
                let n = self.read.len().min(buf.remaining());
                let chunk = self.read.split_to(n);
                buf.put_slice(&chunk);
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut self.ws).poll_next(cx)) {
                Some(Ok(Message::Binary(b))) => self.read = b,
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(io::Error::other("text frame from the broker")))
                }
                Some(Ok(Message::Close(_))) | None => return Poll::Ready(Ok(())),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Poll::Ready(Err(ws_err(e))),
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(Pin::new(&mut self.ws).poll_ready(cx)).map_err(ws_err)?;
        Pin::new(&mut self.ws)
            .start_send(Message::Binary(Bytes::copy_from_slice(buf)))
            .map_err(ws_err)?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.ws).poll_flush(cx).map_err(ws_err)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.ws).poll_close(cx).map_err(ws_err)
    }
}

pub(crate) trait AsyncIo: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> AsyncIo for T {}
pub(crate) type Io = Box<dyn AsyncIo>;

/// An MQTT client over any byte stream (like `Raw`, which is TCP only).
pub(crate) struct Client {
    io: Io,
    buf: BytesMut,
    decoder: Decoder,
    pub version: ProtocolVersion,
}

impl Client {
    pub(crate) fn new(io: Io, version: ProtocolVersion) -> Client {
        Client {
            io,
            buf: BytesMut::new(),
            decoder: Decoder::with_version(u32::MAX, version),
            version,
        }
    }

    pub(crate) async fn connect(&mut self, connect: Connect) -> ConnAck {
        self.send(Packet::Connect(Box::new(connect))).await;
        match self.recv().await {
            Packet::ConnAck(ack) => ack,
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    pub(crate) async fn send(&mut self, p: Packet) {
        let mut out = BytesMut::new();
        encode(&p, self.version, &mut out).unwrap();
        self.io.write_all(&out).await.unwrap();
        self.io.flush().await.unwrap();
    }

    /// The next packet within `dur`; `None` on timeout, error or end of
    /// stream.
    pub(crate) async fn recv_within(&mut self, dur: Duration) -> Option<Packet> {
        let deadline = tokio::time::Instant::now() + dur;
        loop {
            if let Some(p) = self.decoder.decode(&mut self.buf).expect("valid packet") {
                return Some(p);
            }
            self.buf.reserve(4096);
            match tokio::time::timeout_at(deadline, self.io.read_buf(&mut self.buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return None,
                Ok(Ok(_)) => {}
            }
        }
    }

    pub(crate) async fn recv(&mut self) -> Packet {
        self.recv_within(WAIT)
            .await
            .expect("a packet from the broker")
    }

    pub(crate) async fn recv_publish(&mut self) -> Publish {
        match self.recv().await {
            Packet::Publish(p) => p,
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }

    pub(crate) async fn subscribe(&mut self, pid: u16, filter: &str, qos: QoS) -> SubAck {
        self.send(Packet::Subscribe(subscribe(pid, &[(filter, opts(qos))])))
            .await;
        match self.recv().await {
            Packet::SubAck(a) => a,
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }

    /// Publishes and completes the publisher's side of the QoS flow.
    pub(crate) async fn publish(&mut self, p: Publish) {
        let qos_pid = p.qos_pid;
        self.send(Packet::Publish(p)).await;
        match qos_pid {
            QosPid::AtMostOnce => {}
            QosPid::AtLeastOnce(pid) => match self.recv().await {
                Packet::PubAck(a) if a.packet_id == pid => {}
                other => panic!("expected PUBACK, got {other:?}"),
            },
            QosPid::ExactlyOnce(pid) => {
                match self.recv().await {
                    Packet::PubRec(a) if a.packet_id == pid => {}
                    other => panic!("expected PUBREC, got {other:?}"),
                }
                self.send(Packet::PubRel(PubResp::new(pid))).await;
                match self.recv().await {
                    Packet::PubComp(c) if c.packet_id == pid => {}
                    other => panic!("expected PUBCOMP, got {other:?}"),
                }
            }
        }
    }

    /// Acknowledges a received PUBLISH.
    pub(crate) async fn ack(&mut self, p: &Publish) {
        match p.qos_pid {
            QosPid::AtMostOnce => {}
            QosPid::AtLeastOnce(pid) => self.send(Packet::PubAck(PubResp::new(pid))).await,
            QosPid::ExactlyOnce(pid) => {
                self.send(Packet::PubRec(PubResp::new(pid))).await;
                match self.recv().await {
                    Packet::PubRel(r) if r.packet_id == pid => {}
                    other => panic!("expected PUBREL, got {other:?}"),
                }
                self.send(Packet::PubComp(PubResp::new(pid))).await;
            }
        }
    }

    /// A PINGREQ answered by PINGRESP: the connection is alive.
    pub(crate) async fn ping(&mut self) {
        self.send(Packet::PingReq).await;
        match self.recv().await {
            Packet::PingResp => {}
            other => panic!("expected PINGRESP, got {other:?}"),
        }
    }

    pub(crate) async fn disconnect(mut self) {
        self.send(Packet::Disconnect(Disconnect::default())).await;
        let _ = self.io.shutdown().await;
    }
}

/// Asserts that `io` gets no CONNACK for a CONNECT: the handshake was
/// refused (possibly only once the client sent its first bytes, as with a
/// rejected client certificate under TLS 1.3).
pub(crate) async fn assert_refused(io: Io, client_id: &str) {
    let mut c = Client::new(io, ProtocolVersion::V5);
    let mut out = BytesMut::new();
    encode(
        &Packet::Connect(Box::new(super::v5(client_id))),
        ProtocolVersion::V5,
        &mut out,
    )
    .unwrap();
    // The write may already fail; either way no CONNACK must come back.
    let _ = c.io.write_all(&out).await;
    let _ = c.io.flush().await;
    let got = c.recv_within(WAIT).await;
    assert!(
        got.is_none(),
        "expected the connection refused, got {got:?}"
    );
}

pub(crate) fn pid(n: u16) -> std::num::NonZeroU16 {
    pid_of(n)
}
