//! Idle connections over TLS and over WebSocket on TLS (`idle --tls-ca`):
//! what an idle TLS or WSS connection costs the broker. A rustls client on
//! `ring`, optionally with a client certificate (mutual TLS, as a device
//! fleet has it).

use crate::client::{self, ConnectOptions};
use crate::conns::{source, ConnReport};
use crate::Clock;
use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use roost::codec::{encode, Connect, Decoder, Packet, ProtocolVersion, ReasonCode};
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// How to reach the broker over TLS.
#[derive(Clone)]
pub struct Secure {
    connector: TlsConnector,
    name: ServerName<'static>,
    /// WebSocket upgrade path: MQTT over WebSocket over TLS (WSS).
    ws_path: Option<String>,
}

/// An open connection, held and never read.
pub enum Held {
    /// MQTT over TLS.
    Tls(Box<TlsStream<TcpStream>>),
    /// MQTT over WebSocket over TLS.
    Wss(Box<WebSocketStream<TlsStream<TcpStream>>>),
}

fn bad(what: &Path, e: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{}: {e}", what.display()),
    )
}

impl Secure {
    /// Trusts the CAs in `ca`, names the server `sni`, and presents the
    /// client certificate `cert` with `key` if given.
    pub fn new(
        ca: &Path,
        sni: &str,
        client_cert: Option<(&Path, &Path)>,
        ws_path: Option<String>,
    ) -> io::Result<Secure> {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca).map_err(|e| bad(ca, e))? {
            roots
                .add(cert.map_err(|e| bad(ca, e))?)
                .map_err(|e| bad(ca, e))?;
        }
        let builder = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(io::Error::other)?
            .with_root_certificates(roots);
        let config = match client_cert {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let chain = CertificateDer::pem_file_iter(cert)
                    .map_err(|e| bad(cert, e))?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| bad(cert, e))?;
                let key = PrivateKeyDer::from_pem_file(key).map_err(|e| bad(key, e))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| bad(cert, e))?
            }
        };
        let name = ServerName::try_from(sni.to_owned())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        Ok(Secure {
            connector: TlsConnector::from(Arc::new(config)),
            name,
            ws_path,
        })
    }

    /// TCP connect, TLS handshake, WebSocket upgrade (WSS), CONNECT and a
    /// successful CONNACK.
    async fn connect(
        &self,
        addr: SocketAddr,
        src: Option<std::net::IpAddr>,
        opts: &ConnectOptions,
    ) -> io::Result<Held> {
        let tcp = client::tcp_connect(addr, src).await?;
        let mut tls = self.connector.connect(self.name.clone(), tcp).await?;
        let mut connect = BytesMut::new();
        let packet = Packet::Connect(Box::new(
            Connect::new(opts.version, opts.client_id.as_str())
                .with_clean_start(true)
                .with_keep_alive(opts.keep_alive),
        ));
        encode(&packet, opts.version, &mut connect).map_err(io::Error::other)?;
        let mut decoder = Decoder::with_version(1 << 20, opts.version);
        let Some(path) = &self.ws_path else {
            tls.write_all(&connect).await?;
            tls.flush().await?;
            let mut buf = BytesMut::with_capacity(256);
            loop {
                if let Some(p) = decoder.decode(&mut buf).map_err(io::Error::other)? {
                    connack(p)?;
                    return Ok(Held::Tls(Box::new(tls)));
                }
                if tls.read_buf(&mut buf).await? == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
            }
        };
        let host = self.name.to_str();
        let mut request = format!("wss://{host}:{}{path}", addr.port())
            .into_client_request()
            .map_err(io::Error::other)?;
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("mqtt"));
        let (mut ws, _) = tokio_tungstenite::client_async(request, tls)
            .await
            .map_err(io::Error::other)?;
        ws.send(Message::Binary(connect.freeze()))
            .await
            .map_err(io::Error::other)?;
        loop {
            match ws.next().await {
                Some(Ok(Message::Binary(data))) => {
                    let mut buf = BytesMut::from(&data[..]);
                    if let Some(p) = decoder.decode(&mut buf).map_err(io::Error::other)? {
                        connack(p)?;
                        return Ok(Held::Wss(Box::new(ws)));
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(io::Error::other(e)),
                None => return Err(io::ErrorKind::UnexpectedEof.into()),
            }
        }
    }
}

fn connack(p: Packet) -> io::Result<()> {
    match p {
        Packet::ConnAck(c) if c.reason == ReasonCode::Success => Ok(()),
        other => Err(io::Error::new(
            io::ErrorKind::ConnectionRefused,
            format!("expected a successful CONNACK, got {other:?}"),
        )),
    }
}

/// As [`crate::conns::open_idle`], over TLS (or WSS).
#[allow(clippy::too_many_arguments)]
pub async fn open_idle(
    secure: &Secure,
    addr: SocketAddr,
    version: ProtocolVersion,
    n: u64,
    sources: u32,
    concurrency: usize,
    run_id: &str,
    deadline: Instant,
) -> (Vec<Held>, ConnReport) {
    let clock = Clock::new();
    let mut report = ConnReport::default();
    let mut open = Vec::with_capacity(n as usize);
    let mut set = JoinSet::new();
    let mut next = 0u64;
    let start = Instant::now();
    loop {
        while next < n && set.len() < concurrency && Instant::now() < deadline {
            let o = ConnectOptions {
                client_id: format!("lg-{run_id}-c{next}"),
                version,
                clean_start: true,
                keep_alive: 900,
            };
            let src = source(next, sources);
            let (clock, secure) = (clock.clone(), secure.clone());
            set.spawn(async move {
                let t0 = clock.now_ns();
                let held = secure.connect(addr, src, &o).await?;
                Ok::<_, io::Error>((held, clock.now_ns() - t0))
            });
            next += 1;
        }
        let Some(r) = set.join_next().await else {
            break;
        };
        match r.map_err(io::Error::other).and_then(|r| r) {
            Ok((held, took)) => {
                report.ok += 1;
                report.latency.record(took);
                open.push(held);
            }
            Err(e) => {
                report.failed += 1;
                report.first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    report.elapsed_secs = start.elapsed().as_secs_f64();
    (open, report)
}
