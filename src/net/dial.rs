//! Opening a bridge's connection to its remote broker: DNS, TCP, then TLS
//! for `mqtts` and `wss` and the WebSocket upgrade for `ws` and `wss`, all
//! within one time limit. What comes out is a byte stream that carries
//! MQTT packets whatever the transport, so the bridge's driver speaks MQTT
//! over it without knowing how it was reached.
//!
//! A [`Dialer`] is built once per bridge and reads its certificate files
//! then; each reconnect attempt only calls [`Dialer::dial`].

use crate::bridge::{BridgeTls, Remote, Scheme};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};

#[cfg(feature = "tls")]
use std::sync::Arc;
#[cfg(feature = "tls")]
use tokio_rustls::rustls::pki_types::ServerName;
#[cfg(feature = "tls")]
use tokio_rustls::rustls::{version, ClientConfig, RootCertStore};
#[cfg(feature = "tls")]
use tokio_rustls::TlsConnector;

/// What a [`RemoteStream`] is: a byte stream a spawned task can own.
pub(crate) trait AsyncReadWrite: AsyncRead + AsyncWrite + Send + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin> AsyncReadWrite for T {}

/// A connected byte stream to a remote broker, ready for MQTT packets.
/// Writes are buffered by TLS and WebSocket: flush after each batch.
pub(crate) type RemoteStream = Box<dyn AsyncReadWrite>;

/// Why a remote could not be dialed, or a dialer not built. Each displays
/// as one line naming the remote (or the file) and the cause, with no
/// counters or times in it: the same cause gives the same line, so a
/// driver that logs only when the line changes logs a lasting failure
/// once. [`DialError::kind`] names the step that failed, for metrics.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DialError {
    /// The remote's scheme needs a feature this build left out.
    #[cfg_attr(all(feature = "tls", feature = "ws"), allow(dead_code))]
    #[error("{remote}: this build has no {what} support (feature `{feature}`)")]
    Unsupported {
        /// The remote, written out.
        remote: String,
        /// `TLS` or `WebSocket`.
        what: &'static str,
        /// The cargo feature that brings it.
        feature: &'static str,
    },
    /// An `mqtts` or `wss` remote without TLS settings (`Bridge::validate`
    /// refuses this too).
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    #[error("{remote} needs tls settings with a ca")]
    TlsMissing {
        /// The remote, written out.
        remote: String,
    },
    /// A CA, certificate or key file that cannot be read or used.
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    #[error("TLS file {}: {reason}", file.display())]
    Certificate {
        /// The file.
        file: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A name that cannot be checked against a certificate.
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    #[error("{name:?} is not a valid TLS server name")]
    ServerName {
        /// The remote's host, or `tls.server_name`.
        name: String,
    },
    /// A WebSocket address that does not make an HTTP request.
    #[cfg_attr(not(feature = "ws"), allow(dead_code))]
    #[error("{url}: not a usable WebSocket address: {reason}")]
    Url {
        /// The remote, written out.
        url: String,
        /// What the HTTP library said.
        reason: String,
    },
    /// The host name did not resolve, or resolved to no address.
    #[error("DNS lookup of {host} failed: {source}")]
    Dns {
        /// The remote's host.
        host: String,
        /// What the resolver said.
        source: io::Error,
    },
    /// No address of the remote took the TCP connection (refused,
    /// unreachable, reset).
    #[error("TCP connect to {addr} failed: {source}{}", others_failed(*others))]
    Connect {
        /// The first address tried.
        addr: SocketAddr,
        /// How many other addresses were tried, and failed too.
        others: usize,
        /// Why the first failed.
        source: io::Error,
    },
    /// The TLS handshake failed: the remote's certificate is not trusted
    /// or not for this name, the remote refused ours, or it hung up.
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    #[error("TLS handshake with {peer} failed: {source}")]
    Tls {
        /// The remote's `host:port`.
        peer: String,
        /// What rustls said (an `io::Error` that holds the rustls error).
        source: io::Error,
    },
    /// The WebSocket upgrade failed: an HTTP error status (a wrong path
    /// gets 404), no `mqtt` subprotocol, or the connection closed.
    #[cfg_attr(not(feature = "ws"), allow(dead_code))]
    #[error("WebSocket handshake with {peer} failed: {reason}")]
    WebSocket {
        /// The remote's `host:port`.
        peer: String,
        /// What tungstenite said.
        reason: String,
    },
    /// The time limit ran out; `during` says in which step.
    #[error("{during} timed out ({limit:?} for the whole dial)")]
    Timeout {
        /// The step: "DNS lookup of h", "TCP connect to a", "TLS handshake
        /// with p", "WebSocket handshake with p".
        during: String,
        /// The limit given to [`Dialer::dial`].
        limit: Duration,
    },
}

fn others_failed(others: usize) -> String {
    match others {
        0 => String::new(),
        1 => " (and 1 other address failed)".into(),
        n => format!(" (and {n} other addresses failed)"),
    }
}

impl DialError {
    /// The step that failed, as a short stable label: `config` (building
    /// the dialer), `dns`, `connect`, `tls`, `websocket` or `timeout`.
    /// Coarser than the message: two TLS failures for different reasons
    /// share a kind.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            DialError::Unsupported { .. }
            | DialError::TlsMissing { .. }
            | DialError::Certificate { .. }
            | DialError::ServerName { .. }
            | DialError::Url { .. } => "config",
            DialError::Dns { .. } => "dns",
            DialError::Connect { .. } => "connect",
            DialError::Tls { .. } => "tls",
            DialError::WebSocket { .. } => "websocket",
            DialError::Timeout { .. } => "timeout",
        }
    }
}

/// What runs over TCP, chosen from the scheme once, so `dial` needs no
/// check that the TLS settings it needs are there.
enum Layers {
    Tcp,
    #[cfg(feature = "tls")]
    Tls(Tls),
    #[cfg(feature = "ws")]
    Ws {
        url: String,
    },
    #[cfg(all(feature = "tls", feature = "ws"))]
    Wss {
        tls: Tls,
        url: String,
    },
}

/// A loaded client TLS configuration and the name the remote's
/// certificate must hold (sent as SNI when it is a DNS name).
#[cfg(feature = "tls")]
struct Tls {
    connector: TlsConnector,
    name: ServerName<'static>,
}

/// Opens connections to one remote broker (see the module docs).
pub(crate) struct Dialer {
    host: String,
    port: u16,
    /// `host:port`, an IPv6 address in brackets: how the handshakes'
    /// errors name the remote. The host rather than the address it
    /// resolved to, so the message stays the same when DNS rotates.
    #[cfg_attr(not(any(feature = "tls", feature = "ws")), allow(dead_code))]
    peer: String,
    layers: Layers,
}

impl Dialer {
    /// A dialer for `remote`, with `tls` for `mqtts` and `wss` (ignored
    /// otherwise; `Bridge::validate` refuses it there). Reads and checks
    /// the CA, certificate and key files now, so a broken file is reported
    /// once, at start-up, and naming the file.
    pub(crate) fn new(remote: &Remote, tls: Option<&BridgeTls>) -> Result<Dialer, DialError> {
        #[cfg(not(feature = "tls"))]
        let _ = tls;
        let layers = match remote.scheme() {
            Scheme::Mqtt => Layers::Tcp,
            #[cfg(feature = "tls")]
            Scheme::Mqtts => Layers::Tls(Tls::load(remote, tls)?),
            #[cfg(feature = "ws")]
            Scheme::Ws => Layers::Ws { url: url(remote)? },
            #[cfg(all(feature = "tls", feature = "ws"))]
            Scheme::Wss => Layers::Wss {
                tls: Tls::load(remote, tls)?,
                url: url(remote)?,
            },
            #[cfg(not(all(feature = "tls", feature = "ws")))]
            scheme => return Err(unsupported(remote, scheme)),
        };
        let host = remote.host().to_owned();
        let peer = if host.contains(':') {
            format!("[{host}]:{}", remote.port())
        } else {
            format!("{host}:{}", remote.port())
        };
        Ok(Dialer {
            host,
            port: remote.port(),
            peer,
            layers,
        })
    }

    /// Connects: resolves the host, connects over TCP (with `TCP_NODELAY`,
    /// as small packets like PUBACK and PINGREQ must not wait for the
    /// previous write's acknowledgement), then runs the TLS and WebSocket
    /// handshakes the scheme asks for. All of it within `timeout`.
    ///
    /// The addresses DNS gives are tried one after another, each until it
    /// fails or the time is up: one that silently drops packets uses up
    /// the limit (no Happy Eyeballs), and the next attempt tries it again.
    pub(crate) async fn dial(&self, timeout: Duration) -> Result<RemoteStream, DialError> {
        let limit = Limit {
            at: Instant::now() + timeout,
            timeout,
        };
        let tcp = self.connect(&limit).await?;
        Ok(match &self.layers {
            Layers::Tcp => Box::new(tcp),
            #[cfg(feature = "tls")]
            Layers::Tls(tls) => Box::new(self.tls(tls, tcp, &limit).await?),
            #[cfg(feature = "ws")]
            Layers::Ws { url } => Box::new(self.ws(url, tcp, &limit).await?),
            #[cfg(all(feature = "tls", feature = "ws"))]
            Layers::Wss { tls, url } => {
                let tls = self.tls(tls, tcp, &limit).await?;
                Box::new(self.ws(url, tls, &limit).await?)
            }
        })
    }

    async fn connect(&self, limit: &Limit) -> Result<TcpStream, DialError> {
        let lookup = tokio::net::lookup_host((self.host.as_str(), self.port));
        let addrs: Vec<SocketAddr> = limit
            .run(|| format!("DNS lookup of {}", self.host), lookup)
            .await?
            .map_err(|source| DialError::Dns {
                host: self.host.clone(),
                source,
            })?
            .collect();
        let mut first_failure = None;
        for &addr in &addrs {
            let connect = TcpStream::connect(addr);
            match limit
                .run(|| format!("TCP connect to {addr}"), connect)
                .await?
            {
                Ok(tcp) => {
                    if let Err(e) = tcp.set_nodelay(true) {
                        // Slower, not broken: carry on.
                        tracing::debug!(%addr, error = %e, "cannot set TCP_NODELAY");
                    }
                    return Ok(tcp);
                }
                Err(source) => {
                    first_failure.get_or_insert((addr, source));
                }
            }
        }
        Err(match first_failure {
            Some((addr, source)) => DialError::Connect {
                addr,
                others: addrs.len() - 1,
                source,
            },
            None => DialError::Dns {
                host: self.host.clone(),
                source: io::Error::new(io::ErrorKind::NotFound, "no address found"),
            },
        })
    }

    #[cfg(feature = "tls")]
    async fn tls<S>(
        &self,
        tls: &Tls,
        stream: S,
        limit: &Limit,
    ) -> Result<tokio_rustls::client::TlsStream<S>, DialError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let handshake = tls.connector.connect(tls.name.clone(), stream);
        limit
            .run(|| format!("TLS handshake with {}", self.peer), handshake)
            .await?
            .map_err(|source| DialError::Tls {
                peer: self.peer.clone(),
                source,
            })
    }

    #[cfg(feature = "ws")]
    async fn ws<S>(
        &self,
        url: &str,
        stream: S,
        limit: &Limit,
    ) -> Result<super::ws::WsStream<S>, DialError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let upgrade = super::ws::connect(stream, url);
        limit
            .run(
                || format!("WebSocket handshake with {}", self.peer),
                upgrade,
            )
            .await?
            .map_err(|e| DialError::WebSocket {
                peer: self.peer.clone(),
                reason: e.to_string(),
            })
    }
}

/// One dial's deadline, shared by its steps.
struct Limit {
    at: Instant,
    /// The whole limit, for the message.
    timeout: Duration,
}

impl Limit {
    /// `step` if it ends before the deadline; `during` names it otherwise.
    async fn run<T>(
        &self,
        during: impl FnOnce() -> String,
        step: impl Future<Output = T>,
    ) -> Result<T, DialError> {
        timeout_at(self.at, step)
            .await
            .map_err(|_| DialError::Timeout {
                during: during(),
                limit: self.timeout,
            })
    }
}

#[cfg(not(all(feature = "tls", feature = "ws")))]
fn unsupported(remote: &Remote, scheme: Scheme) -> DialError {
    let (what, feature) = if scheme.is_tls() && !cfg!(feature = "tls") {
        ("TLS", "tls")
    } else {
        ("WebSocket", "ws")
    };
    DialError::Unsupported {
        remote: remote.to_string(),
        what,
        feature,
    }
}

/// The remote as a WebSocket URL, checked now so that a path HTTP cannot
/// carry is a configuration error rather than a failure on every attempt.
#[cfg(feature = "ws")]
fn url(remote: &Remote) -> Result<String, DialError> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    // `Remote` writes out scheme, host, port and path, IPv6 in brackets:
    // a URL as it stands.
    let url = remote.to_string();
    match url.as_str().into_client_request() {
        Ok(_) => Ok(url),
        Err(e) => Err(DialError::Url {
            url,
            reason: e.to_string(),
        }),
    }
}

#[cfg(feature = "tls")]
impl Tls {
    fn load(remote: &Remote, tls: Option<&BridgeTls>) -> Result<Tls, DialError> {
        let tls = tls.ok_or_else(|| DialError::TlsMissing {
            remote: remote.to_string(),
        })?;
        let name = tls
            .server_name
            .clone()
            .unwrap_or_else(|| remote.host().to_owned());
        let name =
            ServerName::try_from(name.clone()).map_err(|_| DialError::ServerName { name })?;
        Ok(Tls {
            connector: TlsConnector::from(Arc::new(client_config(tls)?)),
            name,
        })
    }
}

/// TLS 1.3 and 1.2, as the listeners offer; trusting only `tls.ca` (a
/// bridge names the CA it expects, never the system's store).
#[cfg(feature = "tls")]
fn client_config(tls: &BridgeTls) -> Result<ClientConfig, DialError> {
    use super::tls::{certificates, private_key, provider};
    let mut roots = RootCertStore::empty();
    for cert in certificates(&tls.ca).map_err(file_error)? {
        roots.add(cert).map_err(|e| DialError::Certificate {
            file: tls.ca.clone(),
            reason: format!("not a usable CA certificate: {e}"),
        })?;
    }
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&version::TLS13, &version::TLS12])
        .map_err(|e| DialError::Certificate {
            file: tls.ca.clone(),
            reason: e.to_string(),
        })?
        .with_root_certificates(roots);
    match (&tls.cert, &tls.key) {
        (None, None) => Ok(builder.with_no_client_auth()),
        (Some(cert), Some(key)) => {
            let chain = certificates(cert).map_err(file_error)?;
            let key_der = private_key(key).map_err(file_error)?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| DialError::Certificate {
                    file: cert.clone(),
                    reason: format!("not usable with key {}: {e}", key.display()),
                })
        }
        (Some(cert), None) => Err(DialError::Certificate {
            file: cert.clone(),
            reason: "a client certificate needs its key (tls.key)".into(),
        }),
        (None, Some(key)) => Err(DialError::Certificate {
            file: key.clone(),
            reason: "a key needs its client certificate (tls.cert)".into(),
        }),
    }
}

/// The PEM loaders' errors, which always name a file.
#[cfg(feature = "tls")]
fn file_error(e: super::error::ListenerError) -> DialError {
    use super::error::ListenerError;
    match e {
        ListenerError::Read { path, source } => DialError::Certificate {
            file: path,
            reason: format!("cannot read it: {source}"),
        },
        ListenerError::BadFile { path, reason } => DialError::Certificate { file: path, reason },
        // The loaders return only the two above.
        other => DialError::Certificate {
            file: PathBuf::new(),
            reason: other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests;
