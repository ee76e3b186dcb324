//! The parts of the `roost` binary: command line, configuration file,
//! logging, the auth ledger seam, and serving with signals.

pub(crate) mod args;
pub(crate) mod banner;
pub(crate) mod config;
pub(crate) mod error;
pub(crate) mod ledger;
pub(crate) mod logging;
pub(crate) mod serve;
