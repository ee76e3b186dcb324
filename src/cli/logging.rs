//! Logging to stderr through `tracing`, as text or JSON lines, with the
//! lines about refused clients ([`roost::REFUSAL`]) limited in rate.

use super::config::{LogConfig, LogFormat};
use super::error::{ConfigError, Place};
use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tracing::callsite::Identifier;
use tracing::subscriber::Interest;
use tracing::Metadata;
use tracing_subscriber::layer::{Context, Filter, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Lines of one kind (one call site) written at once before the rate
/// applies.
const BURST: f64 = 50.0;
/// Lines of one kind written a second, past the burst.
const PER_SECOND: f64 = 10.0;
/// How often the lines held back are reported.
const REPORT_EVERY: Duration = Duration::from_secs(60);

/// Lines held back since the last report. A process has one subscriber.
static HELD_BACK: AtomicU64 = AtomicU64::new(0);

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
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let layer = match log.format {
        LogFormat::Text => fmt
            .with_ansi(std::io::stderr().is_terminal())
            .with_filter(RefusalLimit::default())
            .boxed(),
        LogFormat::Json => fmt
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_filter(RefusalLimit::default())
            .boxed(),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(layer)
        .init();
    Ok(())
}

/// Says, once a minute, how many refusal lines were held back; runs until
/// the runtime ends.
pub(crate) async fn report_held_back() {
    let mut every = tokio::time::interval(REPORT_EVERY);
    every.tick().await;
    loop {
        every.tick().await;
        let held = HELD_BACK.swap(0, Ordering::Relaxed);
        if held > 0 {
            tracing::warn!(
                held_back = held,
                "log lines about refused clients held back in the last minute \
                 (at most 10 a second of each kind are written; the refused_* \
                 and *_denied counters in /stats count them all)"
            );
        }
    }
}

/// Lets through every event but those of [`roost::REFUSAL`], which pass
/// a token bucket per call site: anyone who can open a connection can make
/// those as fast as the network allows, and they must not fill the disk.
#[derive(Default)]
struct RefusalLimit {
    buckets: Mutex<HashMap<Identifier, Bucket>>,
}

impl<S> Filter<S> for RefusalLimit {
    fn enabled(&self, meta: &Metadata<'_>, _: &Context<'_, S>) -> bool {
        if meta.target() != roost::REFUSAL || !meta.is_event() {
            return true;
        }
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let bucket = buckets
            .entry(meta.callsite())
            .or_insert_with(|| Bucket::full(now));
        let pass = bucket.take(now);
        if !pass {
            HELD_BACK.fetch_add(1, Ordering::Relaxed);
        }
        pass
    }

    fn callsite_enabled(&self, meta: &'static Metadata<'static>) -> Interest {
        // Refusals are decided line by line; everything else once.
        if meta.target() == roost::REFUSAL {
            Interest::sometimes()
        } else {
            Interest::always()
        }
    }
}

/// [`BURST`] lines at once, then [`PER_SECOND`].
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(now: Instant) -> Bucket {
        Bucket {
            tokens: BURST,
            at: now,
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * PER_SECOND).min(BURST);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_passes_its_burst_then_its_rate() {
        let start = Instant::now();
        let mut b = Bucket::full(start);
        let burst = (0..100).filter(|_| b.take(start)).count();
        assert_eq!(burst, 50);
        // 100 ms later: one more line.
        let later = start + Duration::from_millis(100);
        assert!(b.take(later));
        assert!(!b.take(later));
        // A quiet minute fills it, but only up to the burst.
        let much_later = later + Duration::from_secs(60);
        assert_eq!((0..100).filter(|_| b.take(much_later)).count(), 50);
    }
}
