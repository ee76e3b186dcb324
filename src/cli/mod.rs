//! The parts of the `roost` binary: command line, configuration file,
//! logging, the auth ledger seam, and serving with signals.

pub mod args;
pub mod config;
pub mod error;
pub mod ledger;
pub mod logging;
pub mod serve;
