//! TLS for the MQTT, WebSocket and HTTP listeners: tokio-rustls on the
//! `ring` provider, TLS 1.2 and 1.3, optional client certificates, and
//! certificates reloadable without a restart.

use super::error::ListenerError;
use super::x509;
use crate::ingress::admit::{TransportClientId, TransportUser};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use tokio::net::TcpStream;
use tokio_rustls::rustls::crypto::{ring, CryptoProvider};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{version, RootCertStore, ServerConfig};
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

/// Where a client's client identifier comes from on a TLS listener.
///
/// From the certificate, the client id is the device's identity: the
/// session belongs to the certificate, and another certificate cannot take
/// it over (nor end its connection) whatever client id its CONNECT claims.
/// It replaces the CONNECT's before the auth hooks see the client. A
/// CONNECT with another client id is not refused: its id is replaced, as
/// Mosquitto's `use_identity_as_username` with `use_username_as_clientid`
/// does, and the replacement is logged (a device with a random or a stale
/// id keeps working, under its certificate's name). A 5.0 client that sent
/// an empty client id is told the one it got (Assigned Client Identifier);
/// the property is only for that case, so one that sent another id is not.
/// The rules for an empty client id still hold: a 3.1.1 client sending
/// one with Clean Session 0, or a 3.1 client, is refused (CONNACK return
/// code 2, [MQTT-3.1.3-8]).
///
/// A client without a certificate (client certificates optional), or whose
/// certificate lacks the name, is refused (CONNACK 0x87; 3.x: return code
/// 5). Unlike a user name, which the auth hooks check against a password,
/// a client id is checked by nobody: taking the CONNECT's instead would
/// let any client that gets in take a device's session.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ClientIdFrom {
    /// The CONNECT packet, as usual.
    #[default]
    Connect,
    /// The client certificate's subject Common Name.
    CommonName,
    /// The client certificate's first Subject Alternative Name of type
    /// DNS name, e-mail address (rfc822Name) or URI, as for
    /// [`UsernameFrom::SubjectAltName`].
    SubjectAltName,
}

/// A TLS listener's certificate, key and client authentication.
///
/// ```
/// use roost::{ClientAuth, ClientIdFrom, TlsConfig, UsernameFrom};
/// let tls = TlsConfig::new("certs/server.pem", "certs/server.key")
///     .client_auth(ClientAuth::Required { ca: "certs/ca.pem".into() })
///     .username_from(UsernameFrom::CommonName)
///     .client_id_from(ClientIdFrom::CommonName);
/// assert_eq!(tls.username_from, UsernameFrom::CommonName);
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
    /// Whether a client certificate names the client id (and so the
    /// session). Default: no.
    pub client_id_from: ClientIdFrom,
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
            client_id_from: ClientIdFrom::Connect,
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

    /// Sets where the client id comes from.
    pub fn client_id_from(mut self, from: ClientIdFrom) -> Self {
        self.client_id_from = from;
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
    current: RwLock<Arc<ServerConfig>>,
}

impl TlsState {
    pub(crate) fn load(config: TlsConfig) -> Result<TlsState, ListenerError> {
        let current = RwLock::new(build(&config)?);
        Ok(TlsState { config, current })
    }

    /// Reads the files again; on error the previous configuration stays.
    pub(crate) fn reload(&self) -> Result<(), ListenerError> {
        let fresh = build(&self.config)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        tracing::info!(cert = %self.config.cert_chain.display(), "TLS certificate reloaded");
        Ok(())
    }

    /// Runs the server side of a handshake with the current configuration.
    pub(crate) async fn accept<S>(&self, stream: S) -> std::io::Result<TlsStream<S>>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let config = self
            .current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        TlsAcceptor::from(config).accept(stream).await
    }

    /// The MQTT user name the client certificate gives, if the listener is
    /// configured to take one and the client presented a certificate;
    /// [`TransportUser::Missing`] if the certificate lacks it (an empty
    /// name counts as none).
    pub(crate) fn username(&self, stream: &TlsStream<TcpStream>) -> TransportUser {
        let Some(cert) = peer_certificate(stream) else {
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

    /// The client id the client certificate gives, if the listener is
    /// configured to take one; [`TransportClientId::Missing`] if the client
    /// presented no certificate or one without it (an empty name counts as
    /// none): see [`ClientIdFrom`].
    pub(crate) fn client_id(&self, stream: &TlsStream<TcpStream>) -> TransportClientId {
        let name = match self.config.client_id_from {
            ClientIdFrom::Connect => return TransportClientId::FromConnect,
            ClientIdFrom::CommonName => peer_certificate(stream).and_then(|c| x509::common_name(c)),
            ClientIdFrom::SubjectAltName => {
                peer_certificate(stream).and_then(|c| x509::subject_alt_name(c))
            }
        };
        match name {
            Some(name) if !name.is_empty() => TransportClientId::Named(name),
            _ => TransportClientId::Missing,
        }
    }
}

/// The client's end-entity certificate, if it presented one.
fn peer_certificate(stream: &TlsStream<TcpStream>) -> Option<&CertificateDer<'static>> {
    stream.get_ref().1.peer_certificates()?.first()
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

fn build(config: &TlsConfig) -> Result<Arc<ServerConfig>, ListenerError> {
    let certs = certificates(&config.cert_chain)?;
    let key = private_key(&config.private_key)?;
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&version::TLS13, &version::TLS12])
        .map_err(|e| bad(&config.cert_chain, e))?;
    let builder = match &config.client_auth {
        ClientAuth::None => builder.with_no_client_auth(),
        ClientAuth::Optional { ca } | ClientAuth::Required { ca } => {
            let mut roots = RootCertStore::empty();
            for cert in certificates(ca)? {
                roots
                    .add(cert)
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
    Ok(Arc::new(server))
}
