//! TLS session resumption for the listeners: a reconnecting client that
//! kept a session skips the full handshake (no certificate exchange, no
//! signature, no chain verification), which is most of a handshake's CPU.
//!
//! Two mechanisms, each a listener setting:
//! - **Tickets** (stateless, RFC 5077 / RFC 8446 4.6.1): the session is
//!   encrypted under a key only this process holds and given to the client.
//!   rustls's ring [`Ticketer`] makes a new key every 6 hours and accepts
//!   the previous one, so a ticket lasts at most 12 hours. Keys live in
//!   memory only: after a restart every client does one full handshake.
//! - **A session cache** (stateful): the server keeps the session under an
//!   id. Used by TLS 1.2 clients that do not take tickets, and by TLS 1.3
//!   when tickets are off.
//!
//! Both are built once per listener and handed to every rustls
//! `ServerConfig` it builds, so a certificate reload keeps them. A session
//! carries the client certificate it was verified with, so they are
//! renewed when what verifies client certificates (CA certificates, CRL)
//! changes (see [`Trust`]): rustls leaves that policy to us.

use super::error::ListenerError;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_rustls::rustls::crypto::ring::Ticketer;
use tokio_rustls::rustls::pki_types::{CertificateDer, CertificateRevocationListDer};
use tokio_rustls::rustls::server::{NoServerSessionStorage, ProducesTickets, StoresServerSessions};
use tokio_rustls::rustls::ServerConfig;

/// How long a cached session may be resumed after the full handshake that
/// made it: the same bound as a ticket's (rustls's `Ticketer` accepts a
/// key for 12 hours). rustls's own cache keeps sessions until evicted.
pub(crate) const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 60 * 60);

/// Everything that decides whether a client certificate is accepted. A
/// session made under other trust must not resume: it would skip the
/// check it might now fail.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Trust {
    /// The CA certificates client certificates must chain to (none without
    /// client authentication).
    pub roots: Vec<CertificateDer<'static>>,
    /// The CRLs client certificates are checked against (none without a
    /// `crl`): a session made before a certificate was revoked would
    /// otherwise resume with it.
    pub crls: Vec<CertificateRevocationListDer<'static>>,
}

/// A listener's resumption state, shared by the rustls configs it builds
/// until its [`Trust`] changes.
pub(crate) struct Resumption {
    storage: Arc<dyn StoresServerSessions>,
    ticketer: Option<Arc<dyn ProducesTickets>>,
    trust: Trust,
}

impl Resumption {
    /// Fresh state: a cache of `cache` sessions (none if 0) and, if
    /// `tickets`, a ticketer with fresh keys.
    pub(crate) fn new(cache: usize, tickets: bool, trust: Trust) -> Result<Self, ListenerError> {
        let storage: Arc<dyn StoresServerSessions> = if cache == 0 {
            Arc::new(NoServerSessionStorage {})
        } else {
            Arc::new(SessionCache::new(cache, SESSION_LIFETIME))
        };
        let ticketer = if tickets {
            // Fails only when the system's random source does.
            let keys = Ticketer::new().map_err(|e| {
                ListenerError::Io(std::io::Error::other(format!(
                    "cannot make TLS session ticket keys: {e}"
                )))
            })?;
            Some(keys)
        } else {
            None
        };
        Ok(Resumption {
            storage,
            ticketer,
            trust,
        })
    }

    /// Whether sessions made under this state may resume under `trust`.
    pub(crate) fn trusts_like(&self, trust: &Trust) -> bool {
        self.trust == *trust
    }

    /// The trust this state's sessions were made under.
    pub(crate) fn trust(&self) -> &Trust {
        &self.trust
    }

    /// Makes `server` issue and accept this state's sessions.
    pub(crate) fn apply(&self, server: &mut ServerConfig) {
        server.session_storage = self.storage.clone();
        if let Some(t) = &self.ticketer {
            server.ticketer = t.clone();
        }
        // Without either, a TLS 1.3 ticket could be neither made nor
        // taken back: send none.
        if self.ticketer.is_none() && !self.storage.can_cache() {
            server.send_tls13_tickets = 0;
        }
    }
}

/// Sessions by id, at most `capacity` of them (the oldest goes first), each
/// for at most `lifetime`. Every operation is O(1): rustls's
/// `ServerSessionMemoryCache` removes in O(n), a scan of the whole cache
/// per TLS 1.3 resumption when tickets are off.
pub(crate) struct SessionCache {
    capacity: usize,
    lifetime: Duration,
    entries: Mutex<Entries>,
}

#[derive(Default)]
struct Entries {
    by_id: HashMap<Vec<u8>, Entry>,
    /// Ids, oldest first, with the number they were stored under. An id
    /// taken or stored again since leaves a stale pair here (its number no
    /// longer matches), skipped when met and swept out before the queue
    /// doubles the capacity.
    order: VecDeque<(u64, Vec<u8>)>,
    next: u64,
}

struct Entry {
    value: Vec<u8>,
    seq: u64,
    stored: Instant,
}

impl SessionCache {
    pub(crate) fn new(capacity: usize, lifetime: Duration) -> Self {
        SessionCache {
            capacity: capacity.max(1),
            lifetime,
            entries: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        // Every change below leaves the maps consistent at each step.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn put_at(&self, id: Vec<u8>, value: Vec<u8>, now: Instant) {
        let mut e = self.lock();
        let seq = e.next;
        e.next += 1;
        e.order.push_back((seq, id.clone()));
        e.by_id.insert(
            id,
            Entry {
                value,
                seq,
                stored: now,
            },
        );
        // Evict the oldest while over capacity or expired (the oldest
        // expires first: one lifetime for all).
        while let Some((seq, id)) = e.order.front() {
            let live = e.by_id.get(id).filter(|x| x.seq == *seq);
            let drop = match live {
                None => true,
                Some(x) => {
                    e.by_id.len() > self.capacity || now.duration_since(x.stored) > self.lifetime
                }
            };
            if !drop {
                break;
            }
            let (seq, id) = e.order.pop_front().expect("front exists");
            if e.by_id.get(&id).is_some_and(|x| x.seq == seq) {
                e.by_id.remove(&id);
            }
        }
        if e.order.len() > 2 * self.capacity + 16 {
            let Entries { by_id, order, .. } = &mut *e;
            order.retain(|(seq, id)| by_id.get(id).is_some_and(|x| x.seq == *seq));
        }
    }

    fn get_at(&self, id: &[u8], now: Instant, take: bool) -> Option<Vec<u8>> {
        let mut e = self.lock();
        let fresh = now.duration_since(e.by_id.get(id)?.stored) <= self.lifetime;
        if take || !fresh {
            let value = e.by_id.remove(id).map(|x| x.value);
            return value.filter(|_| fresh);
        }
        e.by_id.get(id).map(|x| x.value.clone())
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().by_id.len()
    }
}

impl std::fmt::Debug for SessionCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionCache")
            .field("capacity", &self.capacity)
            .field("lifetime", &self.lifetime)
            .finish_non_exhaustive()
    }
}

impl StoresServerSessions for SessionCache {
    fn put(&self, id: Vec<u8>, value: Vec<u8>) -> bool {
        self.put_at(id, value, Instant::now());
        true
    }

    fn get(&self, id: &[u8]) -> Option<Vec<u8>> {
        self.get_at(id, Instant::now(), false)
    }

    fn take(&self, id: &[u8]) -> Option<Vec<u8>> {
        self.get_at(id, Instant::now(), true)
    }

    fn can_cache(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u32) -> Vec<u8> {
        n.to_be_bytes().to_vec()
    }

    #[test]
    fn keeps_at_most_capacity_and_evicts_the_oldest() {
        let c = SessionCache::new(3, SESSION_LIFETIME);
        for n in 0..5 {
            assert!(c.put(id(n), vec![n as u8]));
        }
        assert_eq!(c.len(), 3);
        assert_eq!(c.get(&id(0)), None);
        assert_eq!(c.get(&id(1)), None);
        assert_eq!(c.get(&id(4)), Some(vec![4]));
        assert_eq!(c.get(&id(4)), Some(vec![4]), "get leaves it");
        assert_eq!(c.take(&id(3)), Some(vec![3]));
        assert_eq!(c.take(&id(3)), None, "take is once");
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn a_session_stored_again_counts_from_its_new_place() {
        let c = SessionCache::new(2, SESSION_LIFETIME);
        c.put(id(1), vec![1]);
        c.put(id(2), vec![2]);
        c.put(id(1), vec![10]); // now the newest
        c.put(id(3), vec![3]); // evicts 2, not 1
        assert_eq!(c.get(&id(1)), Some(vec![10]));
        assert_eq!(c.get(&id(2)), None);
        assert_eq!(c.get(&id(3)), Some(vec![3]));
    }

    #[test]
    fn sessions_expire_after_their_lifetime() {
        let life = Duration::from_secs(60);
        let c = SessionCache::new(10, life);
        let t0 = Instant::now();
        c.put_at(id(1), vec![1], t0);
        c.put_at(id(2), vec![2], t0 + Duration::from_secs(30));
        assert_eq!(c.get_at(&id(1), t0 + life, false), Some(vec![1]));
        assert_eq!(
            c.get_at(&id(1), t0 + life + Duration::from_secs(1), false),
            None
        );
        assert_eq!(c.len(), 1, "an expired session is dropped when met");
        // Storing sweeps expired sessions from the old end.
        c.put_at(id(3), vec![3], t0 + Duration::from_secs(200));
        assert_eq!(c.len(), 1);
        let later = t0 + Duration::from_secs(200);
        assert_eq!(c.get_at(&id(3), later, true), Some(vec![3]));
    }

    #[test]
    fn churn_keeps_the_queue_bounded() {
        let c = SessionCache::new(100, SESSION_LIFETIME);
        for n in 0..10_000 {
            c.put(id(n), vec![0]);
            // TLS 1.3 without tickets takes every session it resumes.
            if n % 2 == 0 {
                assert!(c.take(&id(n)).is_some());
            }
        }
        let e = c.lock();
        assert!(e.by_id.len() <= 100);
        assert!(e.order.len() <= 2 * 100 + 16, "{}", e.order.len());
    }
}
