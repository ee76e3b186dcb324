//! The auth ledger named by `--auth FILE` or `auth.ledger`: opened at
//! start, installed as the server's auth and ACL hook, reloaded on SIGHUP.

use roost::Server;
use std::path::{Path, PathBuf};

/// An open ledger, shared with the server's hooks.
#[cfg(feature = "ledger")]
pub(crate) struct Ledger(roost::hooks::SharedLedger, PathBuf);

/// An open ledger (none can exist in a build without the `ledger` feature).
#[cfg(not(feature = "ledger"))]
pub(crate) struct Ledger(std::convert::Infallible);

/// Why a ledger cannot be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LedgerError {
    /// This build of roost has no auth ledger.
    #[cfg(not(feature = "ledger"))]
    #[error(
        "cannot use the auth ledger {}: the auth ledger is not available in this build of roost \
         (rebuild with the `ledger` feature)",
        path.display()
    )]
    NotAvailable {
        /// The ledger file asked for.
        path: PathBuf,
    },
    /// The ledger file cannot be read or is not valid.
    #[cfg(feature = "ledger")]
    #[error(transparent)]
    Load(#[from] roost::hooks::LedgerError),
}

#[cfg(feature = "ledger")]
impl Ledger {
    /// Reads and checks the ledger file.
    pub(crate) fn open(path: &Path) -> Result<Ledger, LedgerError> {
        Ok(Ledger(
            roost::hooks::SharedLedger::load(path)?,
            path.to_owned(),
        ))
    }

    /// Makes the server authenticate and authorize clients with it.
    pub(crate) fn install(&self, server: Server) -> Server {
        server.auth_hook(self.0.clone()).acl_hook(self.0.clone())
    }

    /// Reads the file again; on error the previous rules stay in force.
    /// Returns which user names the new ledger revokes (see
    /// [`roost::hooks::Ledger::revokes`]).
    pub(crate) fn reload(&self) -> Result<impl Fn(&str) -> bool, LedgerError> {
        let old = self.0.replace(roost::hooks::Ledger::load(&self.1)?);
        let new = self.0.current();
        Ok(move |user: &str| new.revokes(&old, user))
    }
}

#[cfg(not(feature = "ledger"))]
impl Ledger {
    /// Reads and checks the ledger file.
    pub(crate) fn open(path: &Path) -> Result<Ledger, LedgerError> {
        Err(LedgerError::NotAvailable {
            path: path.to_owned(),
        })
    }

    /// Makes the server authenticate and authorize clients with it.
    pub(crate) fn install(&self, _server: Server) -> Server {
        match self.0 {}
    }

    /// Reads the file again; on error the previous rules stay in force.
    pub(crate) fn reload(&self) -> Result<fn(&str) -> bool, LedgerError> {
        match self.0 {}
    }
}
