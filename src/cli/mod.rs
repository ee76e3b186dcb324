//! The parts of the `roost` binary: command line, configuration file,
//! logging, the auth ledger seam, serving with signals, and `roost passwd`.

pub(crate) mod args;
pub(crate) mod banner;
pub(crate) mod bind;
pub(crate) mod config;
pub(crate) mod error;
pub(crate) mod hints;
pub(crate) mod ledger;
pub(crate) mod logging;
#[cfg(feature = "ledger")]
pub(crate) mod passwd;
#[cfg(feature = "ledger")]
pub(crate) mod prompt;
pub(crate) mod serve;
#[cfg(feature = "ledger")]
pub(crate) mod users;
