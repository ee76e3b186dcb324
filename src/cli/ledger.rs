//! The auth ledger named by `--auth FILE` or `auth.ledger`: opened at
//! start, installed as the server's auth and ACL hook, reloaded on SIGHUP.
//!
//! This build has no ledger type in the library, so [`Ledger::open`]
//! refuses every file with [`LedgerError::NotAvailable`] and a ledger value
//! cannot exist (it wraps [`Infallible`]). The three functions below are
//! the whole seam: with a ledger in the library, `open` loads it, `install`
//! adds it to the server, `reload` re-reads it.

use roost::Server;
use std::convert::Infallible;
use std::path::{Path, PathBuf};

/// An open ledger, shared with the server's hooks.
pub struct Ledger(Infallible);

/// Why a ledger cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// This build of roost has no auth ledger.
    #[error(
        "cannot use the auth ledger {}: the auth ledger is not available in this build of roost",
        path.display()
    )]
    NotAvailable {
        /// The ledger file asked for.
        path: PathBuf,
    },
}

impl Ledger {
    /// Reads and checks the ledger file.
    pub fn open(path: &Path) -> Result<Ledger, LedgerError> {
        Err(LedgerError::NotAvailable {
            path: path.to_owned(),
        })
    }

    /// Makes the server authenticate and authorize clients with it.
    pub fn install(&self, _server: Server) -> Server {
        match self.0 {}
    }

    /// Reads the file again; on error the previous rules stay in force.
    pub fn reload(&self) -> Result<(), LedgerError> {
        match self.0 {}
    }
}
