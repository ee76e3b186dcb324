//! TLS for the load generator's clients: a CA to trust, an optional client
//! certificate, the name to ask for (SNI), the versions to offer, and
//! session resumption on or off. Each simulated device gets a config of its
//! own, so each keeps its own sessions as a real device would.

use std::path::Path;
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::client::Resumption;
use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::version::{TLS12, TLS13};
use tokio_rustls::rustls::{ClientConfig, HandshakeKind, RootCertStore};
use tokio_rustls::TlsConnector;

/// Which TLS versions a client offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Versions {
    /// TLS 1.3 only.
    Tls13,
    /// TLS 1.2 only.
    Tls12,
    /// Both; the server picks (1.3 where it can).
    Both,
}

impl std::str::FromStr for Versions {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "1.3" => Ok(Versions::Tls13),
            "1.2" => Ok(Versions::Tls12),
            "any" => Ok(Versions::Both),
            _ => Err(format!("TLS version {s:?}: use 1.3, 1.2 or any")),
        }
    }
}

/// What every client of a run shares: trust, identity, name, versions.
#[derive(Debug, Clone)]
pub struct TlsClient {
    base: ClientConfig,
    name: ServerName<'static>,
}

fn pem_err(path: &Path, e: impl std::fmt::Display) -> String {
    format!("{}: {e}", path.display())
}

impl TlsClient {
    /// Clients trusting the CAs in `ca`, presenting `identity` (a PEM
    /// certificate chain and key) if given, asking for `sni`.
    pub fn new(
        ca: &Path,
        identity: Option<(&Path, &Path)>,
        sni: &str,
        versions: Versions,
    ) -> Result<TlsClient, String> {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca).map_err(|e| pem_err(ca, e))? {
            roots
                .add(cert.map_err(|e| pem_err(ca, e))?)
                .map_err(|e| pem_err(ca, e))?;
        }
        let versions = match versions {
            Versions::Tls13 => vec![&TLS13],
            Versions::Tls12 => vec![&TLS12],
            Versions::Both => vec![&TLS13, &TLS12],
        };
        let builder = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
            .with_protocol_versions(&versions)
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots);
        let base = match identity {
            Some((cert, key)) => {
                let chain = CertificateDer::pem_file_iter(cert)
                    .map_err(|e| pem_err(cert, e))?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| pem_err(cert, e))?;
                let key = PrivateKeyDer::from_pem_file(key).map_err(|e| pem_err(key, e))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| e.to_string())?
            }
            None => builder.with_no_client_auth(),
        };
        let name = ServerName::try_from(sni.to_owned()).map_err(|e| format!("--sni {sni}: {e}"))?;
        Ok(TlsClient { base, name })
    }

    /// One device's config: with its own session store if `resume`, else
    /// never resuming.
    pub fn device(&self, resume: bool) -> Arc<ClientConfig> {
        let mut config = self.base.clone();
        config.resumption = if resume {
            Resumption::in_memory_sessions(4)
        } else {
            Resumption::disabled()
        };
        Arc::new(config)
    }

    /// The TLS handshake over `tcp`, as the device with `config`.
    pub async fn handshake(
        &self,
        config: Arc<ClientConfig>,
        tcp: TcpStream,
    ) -> std::io::Result<TlsStream<TcpStream>> {
        TlsConnector::from(config)
            .connect(self.name.clone(), tcp)
            .await
    }
}

/// Whether the handshake of `stream` resumed a session.
pub fn resumed(stream: &TlsStream<TcpStream>) -> bool {
    stream.get_ref().1.handshake_kind() == Some(HandshakeKind::Resumed)
}
