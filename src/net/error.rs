//! The network layer's public error: what setting up, adding or reloading
//! a listener can fail with. Its own module because both the listeners and
//! the TLS setup they use produce it.

use std::path::PathBuf;

/// Errors from setting up, adding or reloading a listener. File errors name
/// the file and what is wrong with it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ListenerError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file was read but its content is unusable (no PEM section of the
    /// expected kind, a malformed section, a certificate rustls rejects).
    #[error("{path}: {reason}")]
    BadFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The certificate chain and private key were each readable but do not
    /// make a usable server identity (for example, they do not match).
    #[error("certificate {cert} and key {key} are not usable together: {reason}")]
    CertKeyMismatch {
        /// The certificate chain file.
        cert: PathBuf,
        /// The private key file.
        key: PathBuf,
        /// What rustls said.
        reason: String,
    },
    /// A CRL was given to a listener that asks for no client certificates.
    #[error(
        "CRL {0} given, but the listener asks for no client certificates \
         (ClientAuth::Optional or Required)"
    )]
    CrlWithoutClientAuth(PathBuf),
    /// Another listener already has this id.
    #[error("a listener with id {0:?} already exists")]
    DuplicateId(String),
    /// The server has stopped (or was dropped without serving), so no
    /// listener can be added.
    #[error("the server is not running")]
    Stopped,
    /// An admin token was given to a listener that is not HTTP or HTTPS.
    #[error("listener {0:?} is not an HTTP listener: only those serve the admin API")]
    NotHttp(String),
    /// `reload` was called on a listener without TLS.
    #[error("listener {0:?} does not use TLS")]
    NotTls(String),
    /// The listening socket's address could not be read.
    #[error("listener socket: {0}")]
    Io(#[from] std::io::Error),
}
