//! Client certificate revocation: a listener's CRL file, the client
//! certificate verifier that checks it at the handshake, and the register
//! of connections open with a client certificate, so that a new CRL closes
//! those it revokes.
//!
//! What is checked is the client's own certificate (the end entity), as
//! Mosquitto's `crlfile` does; intermediate CAs are not looked up. Every
//! CA that issues client certificates needs its CRL in the file: a
//! certificate whose issuer has none there is refused (its status is
//! unknown, and logged as such). The handshake checks the CRL's signature
//! against the issuer (webpki does); the open connections are matched by
//! issuer name and serial number, the file being trusted as the CA file
//! is. The CRL's next-update date is not enforced: an out-of-date CRL
//! still revokes what it lists.

use super::error::ListenerError;
use super::x509;
use crate::broker::ConnId;
use crate::escape::Escaped;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::SystemTime;
use tokio::sync::Notify;
use tokio_rustls::rustls::client::danger::HandshakeSignatureValid;
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, CertificateRevocationListDer, UnixTime};
use tokio_rustls::rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use tokio_rustls::rustls::server::{VerifierBuilderError, WebPkiClientVerifier};
use tokio_rustls::rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, Error, RootCertStore,
    SignatureScheme,
};
use webpki::{CertRevocationList, EndEntityCert, OwnedCertRevocationList};

tokio::task_local! {
    /// The address of the client whose handshake is running, for the
    /// verifier's log lines (rustls gives a verifier no connection).
    pub(crate) static HANDSHAKE_PEER: SocketAddr;
}

/// A CRL file's modification time and length when it was read: the file
/// is read again when either changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
}

/// The file's stamp now; `None` if it cannot be looked at.
pub(crate) fn stamp(path: &Path) -> Option<Stamp> {
    let meta = std::fs::metadata(path).ok()?;
    Some(Stamp {
        modified: meta.modified().ok(),
        len: meta.len(),
    })
}

/// The CRLs of one file: as rustls takes them, and parsed here.
pub(crate) struct Crls {
    ders: Vec<CertificateRevocationListDer<'static>>,
    lists: Vec<CertRevocationList<'static>>,
    /// The file's stamp taken before it was read (a write during the read
    /// makes it read again).
    stamp: Option<Stamp>,
}

fn bad(path: &Path, reason: impl std::fmt::Display) -> ListenerError {
    ListenerError::BadFile {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

impl Crls {
    /// The CRLs as they were read (DER), in file order.
    pub(crate) fn ders(&self) -> &[CertificateRevocationListDer<'static>] {
        &self.ders
    }
}

/// Reads a PEM file of one or more CRLs (`-----BEGIN X509 CRL-----`).
pub(crate) fn read(path: &Path) -> Result<Crls, ListenerError> {
    let stamp = stamp(path);
    let pem = std::fs::read(path).map_err(|source| ListenerError::Read {
        path: path.to_owned(),
        source,
    })?;
    let ders = CertificateRevocationListDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(path, format!("malformed PEM: {e}")))?;
    if ders.is_empty() {
        return Err(bad(
            path,
            "no X509 CRL section found (a DER CRL converts with \
             `openssl crl -inform DER -outform PEM`)",
        ));
    }
    let lists = ders
        .iter()
        .enumerate()
        .map(|(i, der)| {
            OwnedCertRevocationList::from_der(der)
                .map(CertRevocationList::from)
                .map_err(|e| bad(path, format!("CRL {} of {}: {e}", i + 1, ders.len())))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Crls { ders, lists, stamp })
}

/// How a certificate is named in log lines.
#[derive(Debug)]
pub(crate) struct Who {
    pub subject: String,
    pub serial: String,
}

impl Who {
    fn new(subject: &[u8], serial: &[u8]) -> Who {
        Who {
            subject: x509::name_text(subject),
            serial: x509::serial_text(serial),
        }
    }

    fn of(cert: &CertificateDer<'_>) -> Who {
        match EndEntityCert::try_from(cert) {
            Ok(c) => Who::new(c.subject(), c.serial()),
            Err(_) => Who {
                subject: "<undecodable>".into(),
                serial: String::new(),
            },
        }
    }
}

/// Whether one of `lists` from the certificate's issuer names its serial.
fn revokes(lists: &[CertRevocationList<'_>], issuer: &[u8], serial: &[u8]) -> bool {
    lists
        .iter()
        .any(|crl| crl.issuer() == issuer && matches!(crl.find_serial(serial), Ok(Some(_))))
}

/// A listener's client certificate verifier when it has a CRL: webpki's,
/// made again with the same CA certificates when the CRL alone changes
/// (the rustls config around it stays as it is), and logging the
/// certificates it refuses for their revocation status.
#[derive(Debug)]
pub(crate) struct CrlVerifier {
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
    /// Client certificates optional: clients without one are let in.
    optional: bool,
    /// The CAs' names, hinted to clients (TLS 1.3); the roots never change
    /// under one verifier.
    hints: Vec<DistinguishedName>,
    current: RwLock<Arc<dyn ClientCertVerifier>>,
}

impl CrlVerifier {
    pub(crate) fn new(
        roots: Arc<RootCertStore>,
        provider: Arc<CryptoProvider>,
        optional: bool,
        crls: &Crls,
    ) -> Result<CrlVerifier, VerifierBuilderError> {
        let current = webpki_verifier(&roots, &provider, optional, crls)?;
        Ok(CrlVerifier {
            hints: roots.subjects(),
            roots,
            provider,
            optional,
            current: RwLock::new(current),
        })
    }

    /// Verifies with `crls` from now on.
    pub(crate) fn set_crls(&self, crls: &Crls) -> Result<(), VerifierBuilderError> {
        let fresh = webpki_verifier(&self.roots, &self.provider, self.optional, crls)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        Ok(())
    }

    fn current(&self) -> Arc<dyn ClientCertVerifier> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

fn webpki_verifier(
    roots: &Arc<RootCertStore>,
    provider: &Arc<CryptoProvider>,
    optional: bool,
    crls: &Crls,
) -> Result<Arc<dyn ClientCertVerifier>, VerifierBuilderError> {
    let mut builder = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .with_crls(crls.ders.iter().cloned())
        .only_check_end_entity_revocation();
    if optional {
        builder = builder.allow_unauthenticated();
    }
    builder.build()
}

impl ClientCertVerifier for CrlVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        !self.optional
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        let verdict = self
            .current()
            .verify_client_cert(end_entity, intermediates, now);
        if let Err(Error::InvalidCertificate(e)) = &verdict {
            let remote = HANDSHAKE_PEER.try_with(|a| *a).ok();
            let remote = remote.map(tracing::field::display);
            match e {
                CertificateError::Revoked => {
                    let who = Who::of(end_entity);
                    tracing::warn!(subject = %Escaped(&who.subject), serial = %who.serial, remote,
                        "client certificate revoked (CRL); handshake refused");
                }
                CertificateError::UnknownRevocationStatus => {
                    let who = Who::of(end_entity);
                    let issuer = EndEntityCert::try_from(end_entity)
                        .map(|c| x509::name_text(c.issuer()))
                        .unwrap_or_default();
                    tracing::warn!(subject = %Escaped(&who.subject), serial = %who.serial,
                        issuer = %Escaped(&issuer), remote,
                        "the CRL file has no CRL from the client certificate's issuer; handshake refused");
                }
                _ => {}
            }
        }
        verdict
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.current().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.current().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.current().supported_verify_schemes()
    }
}

/// The connections open with a client certificate on a listener with a
/// CRL, by connection, and the CRLs in force: a new CRL flags those it
/// revokes and hands them to the listener's watcher to close.
#[derive(Default)]
pub(crate) struct Revocation {
    state: Mutex<State>,
    /// Wakes the watcher when [`State::closing`] has work.
    woken: Notify,
}

#[derive(Default)]
struct State {
    lists: Vec<CertRevocationList<'static>>,
    /// The stamp of the file as last read (or tried).
    stamp: Option<Stamp>,
    open: HashMap<ConnId, Open>,
    /// Newly revoked, for the watcher to close.
    closing: Vec<Closing>,
}

/// What an open connection's certificate is known by: a few hundred bytes
/// per connection, only on a listener with a CRL.
struct Open {
    issuer: Box<[u8]>,
    serial: Box<[u8]>,
    subject: Box<[u8]>,
    /// Shared with the connection (see [`Registered::flag`]).
    revoked: Arc<AtomicBool>,
}

/// A connection a new CRL revoked.
pub(crate) struct Closing {
    pub conn: ConnId,
    pub who: Who,
}

impl Revocation {
    pub(crate) fn new(crls: Crls) -> Revocation {
        let revocation = Revocation::default();
        revocation.replace(crls);
        revocation
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every change under the lock leaves the state whole.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The stamp of the file as last read.
    pub(crate) fn stamp(&self) -> Option<Stamp> {
        self.lock().stamp
    }

    /// Notes that the file was looked at with this stamp (a read that
    /// failed: it is not tried again until the file changes).
    pub(crate) fn set_stamp(&self, stamp: Option<Stamp>) {
        self.lock().stamp = stamp;
    }

    /// Puts `crls` in force, and flags the open connections they revoke
    /// for the watcher to close.
    pub(crate) fn replace(&self, crls: Crls) {
        let mut state = self.lock();
        let state = &mut *state;
        state.lists = crls.lists;
        state.stamp = crls.stamp;
        let before = state.closing.len();
        for (conn, open) in &state.open {
            if open.revoked.load(Ordering::SeqCst)
                || !revokes(&state.lists, &open.issuer, &open.serial)
            {
                continue;
            }
            open.revoked.store(true, Ordering::SeqCst);
            state.closing.push(Closing {
                conn: *conn,
                who: Who::new(&open.subject, &open.serial),
            });
        }
        if state.closing.len() > before {
            self.woken.notify_one();
        }
    }

    /// Registers a connection that presented `cert` (already verified), so
    /// that a new CRL can close it; the registration ends when the
    /// returned value is dropped. Refused if the CRLs now in force revoke
    /// it: they may have changed since its handshake began.
    pub(crate) fn open(
        self: &Arc<Self>,
        conn: ConnId,
        cert: &CertificateDer<'_>,
    ) -> Result<Registered, Who> {
        // rustls parsed the same bytes to verify them; should this fail
        // anyway, the connection cannot be tracked and is refused.
        let Ok(parsed) = EndEntityCert::try_from(cert) else {
            return Err(Who::of(cert));
        };
        let mut state = self.lock();
        if revokes(&state.lists, parsed.issuer(), parsed.serial()) {
            return Err(Who::new(parsed.subject(), parsed.serial()));
        }
        let revoked = Arc::new(AtomicBool::new(false));
        state.open.insert(
            conn,
            Open {
                issuer: parsed.issuer().into(),
                serial: parsed.serial().into(),
                subject: parsed.subject().into(),
                revoked: revoked.clone(),
            },
        );
        Ok(Registered {
            revocation: self.clone(),
            conn,
            revoked,
        })
    }

    /// The connections a new CRL revoked since the last call, once there
    /// are any.
    pub(crate) async fn closing(&self) -> Vec<Closing> {
        loop {
            let closing = std::mem::take(&mut self.lock().closing);
            if !closing.is_empty() {
                return closing;
            }
            // A permit stored by a `notify_one` since the take is not lost.
            self.woken.notified().await;
        }
    }

    #[cfg(test)]
    fn open_count(&self) -> usize {
        self.lock().open.len()
    }
}

/// A connection's place in the [`Revocation`] register, given up when
/// dropped (as the connection ends).
pub(crate) struct Registered {
    revocation: Arc<Revocation>,
    conn: ConnId,
    revoked: Arc<AtomicBool>,
}

impl Registered {
    /// Set once a new CRL revokes the connection's certificate. The
    /// connection looks at it after handing its CONNECT to the core: a
    /// close the watcher asked for before the core knew the connection
    /// found nothing to close.
    pub(crate) fn flag(&self) -> Arc<AtomicBool> {
        self.revoked.clone()
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.revocation.lock().open.remove(&self.conn);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
        DnType, IsCa, KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams, SerialNumber,
    };

    struct Ca {
        cert: rcgen::Certificate,
        key: KeyPair,
    }

    fn ca(cn: &str) -> Ca {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cn);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    fn client(ca: &Ca, cn: &str, serial: u64) -> CertificateDer<'static> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cn);
        params.distinguished_name = dn;
        params.serial_number = Some(SerialNumber::from(serial));
        let key = KeyPair::generate().unwrap();
        params
            .signed_by(&key, &ca.cert, &ca.key)
            .unwrap()
            .der()
            .clone()
    }

    fn crl_pem(ca: &Ca, serials: &[u64]) -> String {
        let params = CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2020, 1, 1),
            next_update: rcgen::date_time_ymd(2100, 1, 1),
            crl_number: SerialNumber::from(1),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|s| RevokedCertParams {
                    serial_number: SerialNumber::from(*s),
                    revocation_time: rcgen::date_time_ymd(2020, 1, 1),
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        params.signed_by(&ca.cert, &ca.key).unwrap().pem().unwrap()
    }

    fn crls(dir: &Path, pem: &str) -> Crls {
        let path = dir.join("ca.crl");
        std::fs::write(&path, pem).unwrap();
        read(&path).unwrap()
    }

    #[test]
    fn a_new_crl_flags_the_open_connections_it_revokes_once() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, other) = (ca("CA"), ca("other CA"));
        let revocation = Arc::new(Revocation::new(crls(dir.path(), &crl_pem(&ca, &[]))));
        let alice = revocation
            .open(ConnId(1), &client(&ca, "alice", 7))
            .unwrap();
        let bob = revocation.open(ConnId(2), &client(&ca, "bob", 8)).unwrap();
        // Serial 7 from another CA is another certificate.
        let carol = revocation
            .open(ConnId(3), &client(&other, "carol", 7))
            .unwrap();

        revocation.replace(crls(dir.path(), &crl_pem(&ca, &[7])));
        let closing = std::mem::take(&mut revocation.lock().closing);
        assert_eq!(closing.len(), 1);
        assert_eq!(closing[0].conn, ConnId(1));
        assert_eq!(closing[0].who.subject, "CN=alice");
        assert_eq!(closing[0].who.serial, "07");
        assert!(alice.flag().load(Ordering::SeqCst));
        assert!(!bob.flag().load(Ordering::SeqCst));
        assert!(!carol.flag().load(Ordering::SeqCst));

        // The same list again closes nobody twice; a new certificate it
        // revokes is refused at once.
        revocation.replace(crls(dir.path(), &crl_pem(&ca, &[7])));
        assert!(revocation.lock().closing.is_empty());
        let again = revocation.open(ConnId(4), &client(&ca, "alice", 7));
        assert_eq!(again.err().map(|w| w.serial).as_deref(), Some("07"));

        drop((alice, bob, carol));
        assert_eq!(revocation.open_count(), 0, "dropping deregisters");
    }

    #[test]
    fn unreadable_crl_files_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.crl");
        std::fs::write(
            &path,
            "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let err = read(&path).err().unwrap().to_string();
        assert!(
            err.contains("ca.crl") && err.contains("no X509 CRL"),
            "{err}"
        );
        let garbage = "-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n";
        std::fs::write(&path, garbage).unwrap();
        let err = read(&path).err().unwrap().to_string();
        assert!(
            err.contains("ca.crl") && err.contains("CRL 1 of 1"),
            "{err}"
        );
        let err = read(&dir.path().join("missing.crl")).err().unwrap();
        assert!(err.to_string().contains("missing.crl"), "{err}");
    }
}
