//! Per-source limits: how many MQTT connections one source may hold open
//! (`limits.maximum_connections_per_ip`) and how fast it may open new ones
//! (`limits.maximum_connect_rate_per_ip`), so that one misbehaving device
//! or address cannot take the listener.
//!
//! Both are checked when a connection is accepted, and a connection past
//! either is closed there and then, without an answer: before its TLS
//! handshake (the CPU a flood of new connections costs), before a task or
//! a buffer is spent on it. A CONNACK (5.0: 0x9F Connection rate exceeded,
//! 3.x: return code 3) would need that handshake and the CONNECT read
//! first: the very work the limit exists to refuse. A client sees a closed
//! connection, as for a network error, and retries with its backoff.
//!
//! A source is an IPv4 address or an IPv6 /64: a /64 is one site's
//! network, where one host may take any number of addresses (privacy
//! addresses change by the day), so counting /128s would limit nobody.
//! IPv4-mapped IPv6 addresses (a dual-stack listener on `[::]` sees IPv4
//! clients so) are their IPv4 address.
//!
//! Memory is bounded: a source has an entry while it has connections open,
//! or while its token bucket is refilling (at most a second after its last
//! connection); the listeners' one-second tick sweeps the others.

use crate::config::Limits;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex, MutexGuard};

/// Where connections come from, as the limits count them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Source {
    /// An IPv4 address.
    V4(Ipv4Addr),
    /// The first 64 bits of an IPv6 address.
    V6(u64),
}

impl Source {
    pub(crate) fn of(ip: IpAddr) -> Source {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Source::V4(v4),
            IpAddr::V6(v6) => Source::V6((v6.to_bits() >> 64) as u64),
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::V4(v4) => v4.fmt(f),
            Source::V6(net) => write!(f, "{}/64", Ipv6Addr::from_bits(u128::from(*net) << 64)),
        }
    }
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Its source holds `maximum_connections_per_ip` connections.
    Connections,
    /// Its source opened `maximum_connect_rate_per_ip` connections in the
    /// last second (its bucket is empty).
    Rate,
}

/// A token is this many thousandths: the bucket refills `rate` of them a
/// millisecond, exactly `rate` tokens a second, in integers.
const MILLI: u64 = 1_000;

/// How often a refusal of the same source is logged at `warn` (the others
/// at `debug`): a flood must not flood the log too.
const WARN_EVERY_MS: u64 = 60_000;

/// One source's count and bucket.
#[derive(Debug)]
struct Entry {
    /// Connections open (counted only with a limit on them).
    open: usize,
    /// Thousandths of a token in the bucket, as of `stamp_ms`.
    tokens: u64,
    stamp_ms: u64,
    /// When a refusal of this source was last logged at `warn`.
    warned_ms: Option<u64>,
}

/// The per-source limits of every MQTT listener of a server.
#[derive(Debug)]
pub(crate) struct PerIp {
    /// Most connections open per source; 0: not counted.
    max_open: usize,
    /// Most new connections per source a second; 0: not limited.
    rate: u64,
    sources: Mutex<HashMap<Source, Entry>>,
}

/// A connection's place in its source's count, given back when dropped.
#[derive(Debug)]
pub(crate) struct Hold {
    per_ip: Arc<PerIp>,
    source: Source,
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.per_ip.release(self.source);
    }
}

/// What to log about a refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Loud {
    /// The first refusal of this source in a while: worth a warning.
    Warn,
    /// Another one.
    Quiet,
}

impl PerIp {
    /// The limits `limits` asks for; `None` when both are off, which costs
    /// nothing.
    pub(crate) fn new(limits: &Limits) -> Option<Arc<PerIp>> {
        let (max_open, rate) = (
            limits.maximum_connections_per_ip,
            limits.maximum_connect_rate_per_ip,
        );
        (max_open > 0 || rate > 0).then(|| {
            Arc::new(PerIp {
                max_open,
                rate: u64::from(rate),
                sources: Mutex::new(HashMap::new()),
            })
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Source, Entry>> {
        // Every update leaves the map consistent: a panic cannot tear one.
        self.sources.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A full bucket.
    fn capacity(&self) -> u64 {
        self.rate * MILLI
    }

    /// Admits a connection from `ip` accepted at `now_ms` (monotonic), or
    /// says why not. `Ok(None)`: admitted, and there is no count to hold.
    pub(crate) fn admit(
        self: &Arc<Self>,
        ip: IpAddr,
        now_ms: u64,
    ) -> Result<Option<Hold>, (Refused, Loud)> {
        let source = Source::of(ip);
        let capacity = self.capacity();
        let mut sources = self.lock();
        let entry = sources.entry(source).or_insert(Entry {
            open: 0,
            tokens: capacity,
            stamp_ms: now_ms,
            warned_ms: None,
        });
        let refused = if self.max_open > 0 && entry.open >= self.max_open {
            // Refused for the count, it takes no token: the counters then
            // say which limit a source ran into.
            Some(Refused::Connections)
        } else if self.rate > 0 {
            let elapsed = now_ms.saturating_sub(entry.stamp_ms);
            entry.tokens = capacity.min(entry.tokens + elapsed.saturating_mul(self.rate));
            entry.stamp_ms = now_ms;
            match entry.tokens.checked_sub(MILLI) {
                Some(left) => {
                    entry.tokens = left;
                    None
                }
                None => Some(Refused::Rate),
            }
        } else {
            None
        };
        if let Some(why) = refused {
            let loud = match entry.warned_ms {
                Some(at) if now_ms.saturating_sub(at) < WARN_EVERY_MS => Loud::Quiet,
                _ => {
                    entry.warned_ms = Some(now_ms);
                    Loud::Warn
                }
            };
            return Err((why, loud));
        }
        if self.max_open == 0 {
            // Only the rate: the sweep drops the entry once refilled.
            return Ok(None);
        }
        entry.open += 1;
        Ok(Some(Hold {
            per_ip: self.clone(),
            source,
        }))
    }

    /// A connection of `source` ended.
    fn release(&self, source: Source) {
        let mut sources = self.lock();
        if let Some(entry) = sources.get_mut(&source) {
            entry.open = entry.open.saturating_sub(1);
            // With no rate to remember, nothing else is kept.
            if entry.open == 0 && self.rate == 0 {
                sources.remove(&source);
            }
        }
    }

    /// Drops the entries of sources with nothing open and a bucket full
    /// again by `now_ms`: what such a source does next starts afresh.
    /// Called every second.
    pub(crate) fn sweep(&self, now_ms: u64) {
        let (capacity, rate) = (self.capacity(), self.rate);
        self.lock().retain(|_, e| {
            let refilled = e
                .tokens
                .saturating_add(now_ms.saturating_sub(e.stamp_ms).saturating_mul(rate));
            e.open > 0 || refilled < capacity
        });
    }

    /// Sources with an entry, for tests.
    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn per_ip(max_open: usize, rate: u32) -> Arc<PerIp> {
        let limits = Limits {
            maximum_connections_per_ip: max_open,
            maximum_connect_rate_per_ip: rate,
            ..Limits::default()
        };
        PerIp::new(&limits).unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn off_by_default() {
        assert!(PerIp::new(&Limits::default()).is_none());
    }

    #[test]
    fn sources_are_ipv4_addresses_and_ipv6_64s() {
        let a = Source::of(ip("2001:db8:1:2:aaaa::1"));
        assert_eq!(a, Source::of(ip("2001:db8:1:2:bbbb::2")));
        assert_ne!(a, Source::of(ip("2001:db8:1:3::1")));
        assert_eq!(a.to_string(), "2001:db8:1:2::/64");
        let v4 = Source::of(ip("192.0.2.7"));
        assert_eq!(v4, Source::of(ip("::ffff:192.0.2.7")));
        assert_ne!(v4, Source::of(ip("192.0.2.8")));
        assert_eq!(v4.to_string(), "192.0.2.7");
    }

    #[test]
    fn open_connections_are_counted_per_source_and_given_back() {
        let p = per_ip(2, 0);
        let a1 = p.admit(ip("10.0.0.1"), 0).unwrap();
        let a2 = p.admit(ip("10.0.0.1"), 0).unwrap();
        assert_eq!(
            p.admit(ip("10.0.0.1"), 0).unwrap_err(),
            (Refused::Connections, Loud::Warn)
        );
        assert_eq!(
            p.admit(ip("10.0.0.1"), 1).unwrap_err(),
            (Refused::Connections, Loud::Quiet)
        );
        // Another source is not affected.
        let b = p.admit(ip("10.0.0.2"), 0).unwrap();
        drop(a1);
        let a3 = p.admit(ip("10.0.0.1"), 2).unwrap();
        drop((a2, a3, b));
        // Entries go with their last connection.
        assert_eq!(p.tracked(), 0);
    }

    #[test]
    fn the_rate_is_a_bucket_of_one_second() {
        let p = per_ip(0, 4);
        let a = ip("10.0.0.1");
        for _ in 0..4 {
            assert!(p.admit(a, 1_000).unwrap().is_none());
        }
        assert_eq!(p.admit(a, 1_000).unwrap_err().0, Refused::Rate);
        // A token a quarter second.
        assert_eq!(p.admit(a, 1_249).unwrap_err().0, Refused::Rate);
        assert!(p.admit(a, 1_250).is_ok());
        assert_eq!(p.admit(a, 1_250).unwrap_err().0, Refused::Rate);
        // Refusals take no token: a hammering source still gets its rate.
        for t in 1_251..1_499 {
            assert!(p.admit(a, t).is_err());
        }
        assert!(p.admit(a, 1_500).is_ok());
        // Full again after a second.
        for _ in 0..4 {
            assert!(p.admit(a, 2_500).is_ok());
        }
        assert!(p.admit(a, 2_500).is_err());
    }

    #[test]
    fn a_refusal_for_the_count_takes_no_token() {
        let p = per_ip(1, 2);
        let a = ip("10.0.0.1");
        let held = p.admit(a, 0).unwrap();
        for _ in 0..10 {
            assert_eq!(p.admit(a, 0).unwrap_err().0, Refused::Connections);
        }
        drop(held);
        // One token left of two.
        let held = p.admit(a, 0).unwrap();
        drop(held);
        assert_eq!(p.admit(a, 0).unwrap_err().0, Refused::Rate);
    }

    #[test]
    fn warnings_come_once_a_minute_per_source() {
        let p = per_ip(0, 1);
        let a = ip("10.0.0.1");
        assert!(p.admit(a, 0).is_ok());
        assert_eq!(p.admit(a, 1).unwrap_err().1, Loud::Warn);
        assert_eq!(p.admit(a, 2).unwrap_err().1, Loud::Quiet);
        assert_eq!(p.admit(ip("10.0.0.2"), 2).map(|_| ()), Ok(()));
        assert!(p.admit(a, 59_000).is_ok());
        assert_eq!(p.admit(a, 59_001).unwrap_err().1, Loud::Quiet);
        assert!(p.admit(a, 60_500).is_ok());
        assert_eq!(p.admit(a, 60_501).unwrap_err().1, Loud::Warn);
    }

    #[test]
    fn the_sweep_forgets_sources_with_nothing_open_and_a_full_bucket() {
        let p = per_ip(5, 10);
        let held = p.admit(ip("10.0.0.1"), 0).unwrap();
        for i in 0..100u8 {
            let _ = p.admit(IpAddr::V4(Ipv4Addr::new(10, 1, 0, i)), 0);
        }
        assert_eq!(p.tracked(), 101);
        // Each took one token of ten: refilled after a tenth of a second.
        p.sweep(99);
        assert_eq!(p.tracked(), 101);
        p.sweep(100);
        assert_eq!(p.tracked(), 1, "the one with a connection open stays");
        drop(held);
        assert_eq!(p.tracked(), 1, "kept until the next sweep");
        p.sweep(1_000);
        assert_eq!(p.tracked(), 0);
    }
}
