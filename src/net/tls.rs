//! TLS for the MQTT, WebSocket and HTTP listeners: tokio-rustls on the
//! `ring` provider, TLS 1.2 and 1.3, optional client certificates,
//! certificates reloadable without a restart, session resumption (see
//! [`resumption`](super::resumption)), and a bound on handshakes in
//! progress so that a reconnect storm cannot crowd out established
//! connections (see [`pace`](super::pace)).

use super::error::ListenerError;
use super::resumption::{Resumption, Trust};
use super::x509;
use crate::ingress::admit::TransportUser;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_rustls::rustls::crypto::{ring, CryptoProvider};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{version, HandshakeKind, RootCertStore, ServerConfig};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// How a TLS listener treats client certificates.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ClientAuth {
    /// Clients are not asked for a certificate.
    #[default]
    None,
    /// Clients may present a certificate; one that does not chain to `ca`
    /// fails the handshake, and clients without one are let in.
    Optional {
        /// PEM file with the CA certificates client certificates must
        /// chain to.
        ca: PathBuf,
    },
    /// Clients must present a certificate that chains to `ca`.
    Required {
        /// PEM file with the CA certificates client certificates must
        /// chain to.
        ca: PathBuf,
    },
}

/// Where a client's MQTT user name comes from on a TLS listener.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum UsernameFrom {
    /// The CONNECT packet, as usual.
    #[default]
    Connect,
    /// The client certificate's subject Common Name. It replaces whatever
    /// user name the CONNECT carries. Without a certificate (client
    /// certificates optional) the CONNECT's user name is kept; a
    /// certificate without a CN is refused (CONNACK 0x87, 3.x return
    /// code 5), never given the CONNECT's user name.
    CommonName,
    /// The client certificate's first Subject Alternative Name of type
    /// DNS name, e-mail address (rfc822Name) or URI. It replaces the
    /// CONNECT's user name. Without a certificate the CONNECT's is kept; a
    /// certificate without such a SAN is refused, as for [`CommonName`](Self::CommonName).
    SubjectAltName,
}

/// Sessions a TLS listener keeps for resumption by default: enough for a
/// fleet of TLS 1.2 devices that do not take tickets.
pub(crate) const DEFAULT_SESSION_CACHE: usize = 20_000;

/// A TLS listener's certificate, key, client authentication and session
/// resumption.
///
/// Resumption lets a client that reconnects skip the full handshake
/// (certificates, signatures, chain verification): after a power cut or a
/// network outage the fleet comes back at a fraction of the CPU. Both
/// kinds are on by default, for TLS 1.3 and 1.2:
/// - session tickets ([`session_tickets`](Self::session_tickets)): the
///   session travels with the client, encrypted under keys that rotate
///   every 6 hours; a ticket is accepted for at most 12 hours. The keys
///   are in memory only, so after a restart of the broker every client
///   does one full handshake.
/// - a session cache ([`session_cache`](Self::session_cache)) for clients
///   that resume by session id (TLS 1.2 without tickets), and for TLS 1.3
///   when tickets are off; a session is kept at most 12 hours.
///
/// Both survive a certificate reload; both start afresh when the client
/// CA certificates change, since a resumed session skips the client
/// certificate check. A resumed session whose client certificate has
/// expired since is refused, as a full handshake would refuse it.
///
/// ```
/// use roost::{ClientAuth, TlsConfig, UsernameFrom};
/// let tls = TlsConfig::new("certs/server.pem", "certs/server.key")
///     .client_auth(ClientAuth::Required { ca: "certs/ca.pem".into() })
///     .username_from(UsernameFrom::CommonName)
///     .session_cache(50_000);
/// assert_eq!(tls.username_from, UsernameFrom::CommonName);
/// assert!(tls.session_tickets);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TlsConfig {
    /// PEM file with the server certificate first, then its intermediates.
    pub cert_chain: PathBuf,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    pub private_key: PathBuf,
    /// Client certificate verification. Default: none.
    pub client_auth: ClientAuth,
    /// Whether a client certificate names the MQTT user. Default: no.
    pub username_from: UsernameFrom,
    /// Most sessions kept for resumption by session id; 0 keeps none.
    /// Default: 20,000 (roughly 200 bytes each, plus the client
    /// certificate chain with client authentication).
    pub session_cache: usize,
    /// Whether clients get session tickets to resume with. Default: yes.
    pub session_tickets: bool,
}

impl TlsConfig {
    /// A server identity from a PEM certificate chain and a PEM key, with
    /// no client certificates.
    pub fn new(cert_chain: impl Into<PathBuf>, private_key: impl Into<PathBuf>) -> Self {
        TlsConfig {
            cert_chain: cert_chain.into(),
            private_key: private_key.into(),
            client_auth: ClientAuth::None,
            username_from: UsernameFrom::Connect,
            session_cache: DEFAULT_SESSION_CACHE,
            session_tickets: true,
        }
    }

    /// Sets how client certificates are verified.
    pub fn client_auth(mut self, client_auth: ClientAuth) -> Self {
        self.client_auth = client_auth;
        self
    }

    /// Sets where the MQTT user name comes from.
    pub fn username_from(mut self, from: UsernameFrom) -> Self {
        self.username_from = from;
        self
    }

    /// Sets how many sessions are kept for resumption by session id (0:
    /// none).
    pub fn session_cache(mut self, sessions: usize) -> Self {
        self.session_cache = sessions;
        self
    }

    /// Sets whether clients get session tickets.
    pub fn session_tickets(mut self, on: bool) -> Self {
        self.session_tickets = on;
        self
    }

    /// Reads the certificate, key and CA files and checks they make a
    /// usable server identity, as adding a listener would, without one.
    /// For checking a configuration before starting.
    pub fn validate(&self) -> Result<(), ListenerError> {
        build(self).map(drop)
    }
}

/// A loaded TLS configuration. The rustls config sits behind a lock only
/// long enough to clone its `Arc`: a reload swaps it for new handshakes
/// while established connections keep the one they started with.
pub(crate) struct TlsState {
    config: TlsConfig,
    current: RwLock<Loaded>,
    /// Bounds the handshakes in progress (see [`pace`](super::pace)).
    gate: Semaphore,
}

/// The rustls config in use, and the resumption state the next one keeps.
struct Loaded {
    server: Arc<ServerConfig>,
    resumption: Arc<Resumption>,
}

impl TlsState {
    pub(crate) fn load(config: TlsConfig) -> Result<TlsState, ListenerError> {
        let (mut server, trust) = build(&config)?;
        let resumption = Arc::new(Resumption::new(
            config.session_cache,
            config.session_tickets,
            trust,
        )?);
        resumption.apply(&mut server);
        let current = RwLock::new(Loaded {
            server: Arc::new(server),
            resumption,
        });
        Ok(TlsState {
            config,
            current,
            gate: Semaphore::new(super::pace::slots()),
        })
    }

    /// Reads the files again; on error the previous configuration stays.
    /// Sessions made before resume after, unless the client CA
    /// certificates changed.
    pub(crate) fn reload(&self) -> Result<(), ListenerError> {
        let (mut server, trust) = build(&self.config)?;
        let previous = self.loaded(|l| l.resumption.clone());
        let resumption = if previous.trusts_like(&trust) {
            previous
        } else {
            tracing::info!(
                cert = %self.config.cert_chain.display(),
                "client CA certificates changed: sessions from before need a full handshake"
            );
            Arc::new(Resumption::new(
                self.config.session_cache,
                self.config.session_tickets,
                trust,
            )?)
        };
        resumption.apply(&mut server);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Loaded {
            server: Arc::new(server),
            resumption,
        };
        tracing::info!(cert = %self.config.cert_chain.display(), "TLS certificate reloaded");
        Ok(())
    }

    fn loaded<T>(&self, f: impl FnOnce(&Loaded) -> T) -> T {
        f(&self.current.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Runs the server side of a handshake with the current configuration,
    /// once the client has sent its first bytes and the listener has a
    /// slot for it (see [`pace`](super::pace)).
    pub(crate) async fn accept(&self, stream: TcpStream) -> std::io::Result<TlsStream<TcpStream>> {
        stream.readable().await?;
        let config = self.loaded(|l| l.server.clone());
        let acceptor = TlsAcceptor::from(config);
        let tls = super::pace::admitted(&self.gate, acceptor.accept(stream)).await?;
        check_resumed(&tls)?;
        Ok(tls)
    }

    /// The MQTT user name the client certificate gives, if the listener is
    /// configured to take one and the client presented a certificate;
    /// [`TransportUser::Missing`] if the certificate lacks it (an empty
    /// name counts as none).
    pub(crate) fn username(&self, stream: &TlsStream<TcpStream>) -> TransportUser {
        let Some(cert) = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
        else {
            // No certificate (client certificates optional): the client
            // authenticates with its CONNECT, as documented.
            return TransportUser::FromConnect;
        };
        let name = match self.config.username_from {
            UsernameFrom::Connect => return TransportUser::FromConnect,
            UsernameFrom::CommonName => x509::common_name(cert),
            UsernameFrom::SubjectAltName => x509::subject_alt_name(cert),
        };
        match name {
            Some(name) if !name.is_empty() => TransportUser::Named(name),
            _ => TransportUser::Missing,
        }
    }
}

/// rustls verifies a client certificate at the full handshake only: a
/// resumed session brings back the certificate it was verified with, and
/// every resumption renews the session (a TLS 1.3 resumption gets new
/// tickets), so a device could go on resuming past its certificate's end.
/// The end is checked here as a full handshake would have; a certificate
/// this parser cannot read (webpki read it) is let through.
fn check_resumed(stream: &TlsStream<TcpStream>) -> std::io::Result<()> {
    let conn = stream.get_ref().1;
    if conn.handshake_kind() != Some(HandshakeKind::Resumed) {
        return Ok(());
    }
    let Some(cert) = conn.peer_certificates().and_then(|c| c.first()) else {
        return Ok(());
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    match x509::not_after(cert) {
        Some(end) if now > end => Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            "resumed session: the client certificate has expired",
        )),
        _ => Ok(()),
    }
}

fn read(path: &Path) -> Result<Vec<u8>, ListenerError> {
    std::fs::read(path).map_err(|source| ListenerError::Read {
        path: path.to_owned(),
        source,
    })
}

fn bad(path: &Path, reason: impl std::fmt::Display) -> ListenerError {
    ListenerError::BadFile {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

/// The certificates in a PEM file: a listener's chain or CA, a bridge's CA
/// or client chain.
pub(crate) fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, ListenerError> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(path, format!("malformed PEM: {e}")))?;
    if certs.is_empty() {
        return Err(bad(path, "no CERTIFICATE section found"));
    }
    Ok(certs)
}

/// The first private key in a PEM file.
pub(crate) fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, ListenerError> {
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        tokio_rustls::rustls::pki_types::pem::Error::NoItemsFound => bad(
            path,
            "no PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY section found",
        ),
        e => bad(path, format!("malformed PEM: {e}")),
    })
}

/// Every TLS config of ours, server and client, runs on `ring`.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

/// A rustls config for `config`, without resumption state yet, and the
/// trust its client certificate check has.
fn build(config: &TlsConfig) -> Result<(ServerConfig, Trust), ListenerError> {
    let certs = certificates(&config.cert_chain)?;
    let key = private_key(&config.private_key)?;
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&version::TLS13, &version::TLS12])
        .map_err(|e| bad(&config.cert_chain, e))?;
    let mut trust = Trust::default();
    let builder = match &config.client_auth {
        ClientAuth::None => builder.with_no_client_auth(),
        ClientAuth::Optional { ca } | ClientAuth::Required { ca } => {
            let mut roots = RootCertStore::empty();
            trust.roots = certificates(ca)?;
            for cert in &trust.roots {
                roots
                    .add(cert.clone())
                    .map_err(|e| bad(ca, format!("not a usable CA certificate: {e}")))?;
            }
            let mut verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            if matches!(config.client_auth, ClientAuth::Optional { .. }) {
                verifier = verifier.allow_unauthenticated();
            }
            let verifier = verifier.build().map_err(|e| bad(ca, e))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let server =
        builder
            .with_single_cert(certs, key)
            .map_err(|e| ListenerError::CertKeyMismatch {
                cert: config.cert_chain.clone(),
                key: config.private_key.clone(),
                reason: e.to_string(),
            })?;
    Ok((server, trust))
}
