//! Logging to stderr through `tracing`, as text or JSON lines.

use super::config::{LogConfig, LogFormat};
use super::error::{ConfigError, Place};
use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. The filter is `RUST_LOG` when set, else
/// `log.filter`, else `log.level`.
pub(crate) fn init(log: &LogConfig) -> Result<(), ConfigError> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(env) if !env.trim().is_empty() => EnvFilter::builder()
            .parse(&env)
            .map_err(|e| ConfigError::invalid(Place::Key("RUST_LOG"), e))?,
        _ => match &log.filter {
            Some(f) => EnvFilter::builder()
                .parse(f)
                .map_err(|e| ConfigError::invalid(Place::Key("log.filter"), e))?,
            None => EnvFilter::new(log.level.as_str()),
        },
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match log.format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
    }
    Ok(())
}
