//! TLS for the MQTT, WebSocket and HTTP listeners: tokio-rustls on the
//! `ring` provider, TLS 1.2 and 1.3, optional client certificates checked
//! against a CRL (see [`super::crl`]), certificates reloadable without a
//! restart, session resumption (see [`resumption`](super::resumption)),
//! and a bound on handshakes in progress so that a reconnect storm cannot
//! crowd out established connections (see [`pace`](super::pace)).

use super::crl::{self, CrlVerifier, Registered, Revocation};
use super::error::ListenerError;
use super::resumption::{Resumption, Trust};
use super::shared::Shared;
use super::x509;
use crate::broker::{CloseReason, ConnId, Event};
use crate::escape::Escaped;
use crate::ingress::admit::{TransportClientId, TransportUser};
use crate::stats::Stats;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::{watch, Semaphore};
use tokio_rustls::rustls::crypto::{ring, CryptoProvider};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::{VerifierBuilderError, WebPkiClientVerifier};
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
/// CA certificates or the CRL change, since a resumed session skips the
/// client certificate check. A resumed session whose client certificate has
/// expired since is refused, as a full handshake would refuse it.
///
/// ```
/// use roost::{ClientAuth, ClientIdFrom, TlsConfig, UsernameFrom};
/// let tls = TlsConfig::new("certs/server.pem", "certs/server.key")
///     .client_auth(ClientAuth::Required { ca: "certs/ca.pem".into() })
///     .crl("/etc/roost/ca.crl")
///     .username_from(UsernameFrom::CommonName)
///     .client_id_from(ClientIdFrom::CommonName)
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
    /// Whether a client certificate names the client id (and so the
    /// session). Default: no.
    pub client_id_from: ClientIdFrom,
    /// PEM file of certificate revocation lists for client certificates.
    /// Default: none. See [`TlsConfig::crl`].
    pub crl: Option<PathBuf>,
    /// How often the CRL file is looked at for a change. Default: 5 s.
    pub crl_poll_interval: Duration,
    /// Most sessions kept for resumption by session id; 0 keeps none.
    /// Default: 20,000 (roughly 200 bytes each, plus the client
    /// certificate chain with client authentication).
    pub session_cache: usize,
    /// Whether clients get session tickets to resume with. Default: yes.
    pub session_tickets: bool,
    /// Most handshakes in progress on the listener at once; the rest wait
    /// their turn, first come first served. 0: the default, 64 per core.
    /// See [`TlsConfig::handshakes_in_progress`].
    pub handshakes_in_progress: usize,
}

/// How often a listener's CRL file is looked at for a change, by default.
pub(crate) const DEFAULT_CRL_POLL_INTERVAL: Duration = Duration::from_secs(5);

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
            crl: None,
            crl_poll_interval: DEFAULT_CRL_POLL_INTERVAL,
            session_cache: DEFAULT_SESSION_CACHE,
            session_tickets: true,
            handshakes_in_progress: 0,
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

    /// Checks client certificates against the certificate revocation lists
    /// in this PEM file (`-----BEGIN X509 CRL-----` sections, one per CA
    /// that issues client certificates). Needs client certificates
    /// ([`ClientAuth::Optional`] or [`ClientAuth::Required`]).
    ///
    /// A revoked certificate fails the handshake (TLS alert "certificate
    /// revoked"), and so does one whose issuer has no CRL in the file. The
    /// file is read again by [`ListenerHandle::reload`](crate::ListenerHandle::reload)
    /// and whenever its modification time or length changes (looked at
    /// every [`crl_poll_interval`](Self::crl_poll_interval)); MQTT
    /// connections open with a certificate a new CRL revokes are then
    /// closed (5.0 clients first get DISCONNECT 0x87 Not authorized). A file that does
    /// not read leaves the previous CRL in force. Each refusal and close is
    /// logged at `warn` with the certificate's subject and serial number,
    /// and counted (`tls_revoked_refused`, `tls_revoked_closed`).
    ///
    /// Only the client's own certificate is checked, not intermediate CAs
    /// (as Mosquitto's `crlfile`); the CRL's next-update date is not
    /// enforced.
    pub fn crl(mut self, path: impl Into<PathBuf>) -> Self {
        self.crl = Some(path.into());
        self
    }

    /// Sets how often the CRL file is looked at for a change;
    /// `Duration::ZERO` turns that off (the CRL is then read again only on
    /// [`ListenerHandle::reload`](crate::ListenerHandle::reload)).
    pub fn crl_poll_interval(mut self, every: Duration) -> Self {
        self.crl_poll_interval = every;
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

    /// Sets how many handshakes may be in progress on the listener at once
    /// (0: the default, 64 per core).
    ///
    /// During a reconnect storm the handshakes beyond this wait in a queue,
    /// where they cost nothing, so that clients already connected and
    /// health checks are still served promptly. A handshake holds its
    /// place for its round trips too: on links with long round trips
    /// (cellular, satellite) the default lets through roughly 64 per core
    /// per round trip (about 200 a second per core at 300 ms), below what
    /// the CPU could do; raise it for such a fleet.
    pub fn handshakes_in_progress(mut self, handshakes: usize) -> Self {
        self.handshakes_in_progress = handshakes;
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
    /// With a CRL: the connections open with a client certificate.
    revocation: Option<Arc<Revocation>>,
    /// One reload at a time (a signal's and the CRL watcher's).
    reloading: Mutex<()>,
    /// Bounds the handshakes in progress (see [`pace`](super::pace)).
    gate: Semaphore,
}

/// The rustls config in use, its client certificate verifier when there
/// is a CRL (to give it a new CRL alone), and the resumption state the
/// next config keeps.
struct Loaded {
    server: Arc<ServerConfig>,
    crl: Option<Arc<CrlVerifier>>,
    resumption: Arc<Resumption>,
}

impl TlsState {
    pub(crate) fn load(config: TlsConfig) -> Result<TlsState, ListenerError> {
        let (mut built, trust, crls) = build(&config)?;
        let resumption = Arc::new(Resumption::new(
            config.session_cache,
            config.session_tickets,
            trust,
        )?);
        resumption.apply(&mut built.server);
        let gate = Semaphore::new(super::pace::slots(config.handshakes_in_progress));
        let current = RwLock::new(Loaded {
            server: Arc::new(built.server),
            crl: built.crl,
            resumption,
        });
        Ok(TlsState {
            config,
            current,
            revocation: crls.map(|c| Arc::new(Revocation::new(c))),
            reloading: Mutex::new(()),
            gate,
        })
    }

    /// Reads the files again; on error the previous configuration stays.
    /// A new CRL closes the connections it revokes. Sessions made before
    /// resume after, unless the client CA certificates or the CRL changed.
    pub(crate) fn reload(&self) -> Result<(), ListenerError> {
        let _one = self.reloading.lock().unwrap_or_else(|e| e.into_inner());
        let (mut built, trust, crls) = build(&self.config)?;
        let previous = self.loaded(|l| l.resumption.clone());
        let resumption = self.resumption_for(previous, trust)?;
        resumption.apply(&mut built.server);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Loaded {
            server: Arc::new(built.server),
            crl: built.crl,
            resumption,
        };
        if let (Some(revocation), Some(crls)) = (&self.revocation, crls) {
            revocation.replace(crls);
        }
        tracing::info!(cert = %self.config.cert_chain.display(), "TLS certificate reloaded");
        Ok(())
    }

    fn loaded<T>(&self, f: impl FnOnce(&Loaded) -> T) -> T {
        f(&self.current.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// The resumption state for a config under `trust`: `previous` if its
    /// sessions may resume under it, fresh state otherwise.
    fn resumption_for(
        &self,
        previous: Arc<Resumption>,
        trust: Trust,
    ) -> Result<Arc<Resumption>, ListenerError> {
        if previous.trusts_like(&trust) {
            return Ok(previous);
        }
        tracing::info!(
            cert = %self.config.cert_chain.display(),
            "client CA certificates or CRL changed: sessions from before need a full handshake"
        );
        Ok(Arc::new(Resumption::new(
            self.config.session_cache,
            self.config.session_tickets,
            trust,
        )?))
    }

    /// Reads the CRL file again, and only it, if it changed since it was
    /// last read; on error the previous CRL stays (and the error is logged
    /// once, until the file changes again).
    fn reload_crl_if_changed(&self, listener: &str) {
        let (Some(path), Some(revocation)) = (&self.config.crl, &self.revocation) else {
            return;
        };
        let _one = self.reloading.lock().unwrap_or_else(|e| e.into_inner());
        let stamp = crl::stamp(path);
        if stamp == revocation.stamp() {
            return;
        }
        let (verifier, previous) = self.loaded(|l| (l.crl.clone(), l.resumption.clone()));
        let reloaded = crl::read(path).and_then(|crls| {
            // Sessions made under the previous CRL would skip the check
            // against this one.
            let trust = Trust {
                crls: crls.ders().to_vec(),
                ..previous.trust().clone()
            };
            let resumption = self.resumption_for(previous.clone(), trust)?;
            if let Some(v) = verifier {
                v.set_crls(&crls).map_err(|e| bad(path, e))?;
            }
            if !Arc::ptr_eq(&resumption, &previous) {
                let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
                let mut server = ServerConfig::clone(&current.server);
                resumption.apply(&mut server);
                current.server = Arc::new(server);
                current.resumption = resumption;
            }
            revocation.replace(crls);
            Ok(())
        });
        match reloaded {
            Ok(()) => {
                tracing::info!(listener, crl = %path.display(), "CRL file changed; reloaded")
            }
            Err(e) => {
                revocation.set_stamp(stamp);
                tracing::error!(listener, error = %e,
                    "CRL file changed but cannot be used; the previous CRL stays in force");
            }
        }
    }

    /// Whether the listener checks client certificates against a CRL.
    pub(crate) fn has_crl(&self) -> bool {
        self.revocation.is_some()
    }

    /// With a CRL, until `stop`: reads the CRL file again when it changes,
    /// and closes the connections a new CRL revokes (from a reload too):
    /// through the core, which sends 5.0 clients DISCONNECT 0x87 Not
    /// authorized first. Not Administrative action (0x98): the client's
    /// credential is what no longer holds, and a device that reconnects
    /// with it will be refused.
    pub(crate) async fn watch_crl(
        self: Arc<Self>,
        listener: String,
        shared: Arc<Shared>,
        mut stop: watch::Receiver<bool>,
    ) {
        let Some(revocation) = self.revocation.clone() else {
            return;
        };
        let every = self.config.crl_poll_interval;
        let mut poll = (!every.is_zero()).then(|| {
            let mut poll = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            poll
        });
        loop {
            // (Awaited outside the select: what `stop` yields must not be
            // held across an await.)
            let closing = tokio::select! {
                closing = revocation.closing() => Some(closing),
                _ = async { poll.as_mut()?.tick().await; Some(()) }, if poll.is_some() => None,
                _ = stop.wait_for(|s| *s) => return,
            };
            let Some(closing) = closing else {
                // Reading and parsing a CRL of a large fleet takes a
                // while: off the runtime's threads.
                let (state, id) = (self.clone(), listener.clone());
                let _ = tokio::task::spawn_blocking(move || state.reload_crl_if_changed(&id)).await;
                continue;
            };
            for c in closing {
                tracing::warn!(listener, conn = c.conn.0, subject = %Escaped(&c.who.subject),
                    serial = %c.who.serial, "client certificate revoked (CRL); connection closed");
                crate::stats::add(&shared.stats.tls_revoked_closed, 1);
                let closed = Event::Closed {
                    conn: c.conn,
                    reason: CloseReason::Revoked,
                };
                if shared.events.send(closed).await.is_err() {
                    return; // the core has stopped
                }
            }
        }
    }

    /// Runs the server side of a handshake with the current configuration,
    /// once the client has sent its first bytes and the listener has a
    /// slot for it (see [`pace`](super::pace)).
    pub(crate) async fn accept(
        &self,
        stream: TcpStream,
        remote: SocketAddr,
    ) -> std::io::Result<TlsStream<TcpStream>> {
        stream.readable().await?;
        let config = self.loaded(|l| l.server.clone());
        let handshake = TlsAcceptor::from(config).accept(stream);
        let handshake = crl::HANDSHAKE_PEER.scope(remote, handshake);
        let tls = super::pace::admitted(&self.gate, handshake).await?;
        check_resumed(&tls)?;
        Ok(tls)
    }

    /// Registers a connection that presented a client certificate, on a
    /// listener with a CRL, so a new CRL can close it (for as long as the
    /// returned value lives). `None`: a CRL that came after its handshake
    /// began revokes it already; logged and counted, the caller closes it.
    pub(crate) fn track(
        &self,
        conn: ConnId,
        stream: &TlsStream<TcpStream>,
        stats: &Stats,
    ) -> Option<Tracked> {
        let cert = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first());
        let (Some(revocation), Some(cert)) = (&self.revocation, cert) else {
            return Some(Tracked(None));
        };
        match revocation.open(conn, cert) {
            Ok(registered) => Some(Tracked(Some(registered))),
            Err(who) => {
                tracing::warn!(conn = conn.0, subject = %Escaped(&who.subject), serial = %who.serial,
                    "client certificate revoked (CRL); handshake refused");
                crate::stats::add(&stats.tls_revoked_refused, 1);
                None
            }
        }
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

impl TlsState {
    /// The subject of the client's certificate, if it presented one, as
    /// log lines name it (`CN=dev-17, O=Fleet`).
    pub(crate) fn certificate(&self, stream: &TlsStream<TcpStream>) -> Option<Box<str>> {
        let cert = peer_certificate(stream)?;
        let subject = match webpki::EndEntityCert::try_from(cert) {
            Ok(c) => x509::name_text(c.subject()),
            Err(_) => "<undecodable>".into(),
        };
        Some(subject.into_boxed_str())
    }
}

/// The client's end-entity certificate, if it presented one.
fn peer_certificate(stream: &TlsStream<TcpStream>) -> Option<&CertificateDer<'static>> {
    stream.get_ref().1.peer_certificates()?.first()
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

/// A connection's registration for revocation, if it has one (see
/// [`TlsState::track`]): kept for as long as the connection lives.
pub(crate) struct Tracked(Option<Registered>);

impl Tracked {
    /// Set once a new CRL revokes the connection's certificate.
    pub(crate) fn revoked(&self) -> Option<Arc<AtomicBool>> {
        self.0.as_ref().map(Registered::flag)
    }
}

/// What a build of the files gives: the rustls config, without
/// resumption state yet, and its client certificate verifier when there is
/// a CRL (to give it a new CRL alone).
struct Built {
    server: ServerConfig,
    crl: Option<Arc<CrlVerifier>>,
}

/// A rustls config for `config`, the trust its client certificate check
/// has, and the CRLs it was built with.
fn build(config: &TlsConfig) -> Result<(Built, Trust, Option<crl::Crls>), ListenerError> {
    let certs = certificates(&config.cert_chain)?;
    let key = private_key(&config.private_key)?;
    let crls = config.crl.as_deref().map(crl::read).transpose()?;
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&version::TLS13, &version::TLS12])
        .map_err(|e| bad(&config.cert_chain, e))?;
    let mut trust = Trust {
        crls: crls.as_ref().map(|c| c.ders().to_vec()).unwrap_or_default(),
        ..Trust::default()
    };
    let mut crl_verifier = None;
    let builder = match &config.client_auth {
        ClientAuth::None => {
            if let Some(path) = &config.crl {
                return Err(ListenerError::CrlWithoutClientAuth(path.clone()));
            }
            builder.with_no_client_auth()
        }
        ClientAuth::Optional { ca } | ClientAuth::Required { ca } => {
            let mut roots = RootCertStore::empty();
            trust.roots = certificates(ca)?;
            for cert in &trust.roots {
                roots
                    .add(cert.clone())
                    .map_err(|e| bad(ca, format!("not a usable CA certificate: {e}")))?;
            }
            let roots = Arc::new(roots);
            let optional = matches!(config.client_auth, ClientAuth::Optional { .. });
            match (&crls, &config.crl) {
                (Some(crls), Some(path)) => {
                    let verifier =
                        CrlVerifier::new(roots, provider, optional, crls).map_err(|e| match e {
                            VerifierBuilderError::InvalidCrl(_) => bad(path, e),
                            e => bad(ca, e),
                        })?;
                    let verifier = Arc::new(verifier);
                    crl_verifier = Some(verifier.clone());
                    builder.with_client_cert_verifier(verifier)
                }
                _ => {
                    let mut verifier = WebPkiClientVerifier::builder_with_provider(roots, provider);
                    if optional {
                        verifier = verifier.allow_unauthenticated();
                    }
                    let verifier = verifier.build().map_err(|e| bad(ca, e))?;
                    builder.with_client_cert_verifier(verifier)
                }
            }
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
    let built = Built {
        server,
        crl: crl_verifier,
    };
    Ok((built, trust, crls))
}
