//! The admin API's requests, answered by the core between two events (see
//! [`crate::admin`]): lists of sessions, subscriptions and retained
//! topics a page at a time, one session in full, disconnecting a client,
//! clearing a retained message.
//!
//! A page is the `limit` smallest keys after the cursor, picked in one walk
//! with a bounded heap: no index is kept for the admin's sake, and a page
//! costs a walk, not a sort of everything.

mod types;

pub(crate) use types::{AdminAnswer, AdminCall, AdminQuery};
pub use types::{
    AdminError, ClientInfo, DisconnectOptions, Disconnected, Listing, Paging, RetainedInfo,
    SessionInfo, SubscriptionInfo, ADMIN_CLIENT_ID, MAX_PAGE,
};

use super::session::{Session, SubEntry};
use super::{split_shared, Broker};
use crate::codec::ReasonCode;
use crate::escape::Escaped;
use std::collections::BinaryHeap;
use std::ops::ControlFlow;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Separates client id and filter in a subscriptions cursor: neither can
/// hold U+0000 ([MQTT-1.5.4-2]).
const CURSOR_SEPARATOR: char = '\0';

/// The `limit + 1` smallest of `keys`, sorted: a page and whether another
/// follows.
fn smallest<K: Ord>(keys: impl Iterator<Item = K>, limit: usize) -> Vec<K> {
    let mut heap = BinaryHeap::with_capacity(limit + 2);
    for k in keys {
        if heap.len() <= limit {
            heap.push(k);
        } else if heap.peek().is_some_and(|top| k < *top) {
            heap.pop();
            heap.push(k);
        }
    }
    heap.into_sorted_vec()
}

/// Splits what [`smallest`] found into the page and the next cursor.
fn page<K, T>(
    mut keys: Vec<K>,
    limit: usize,
    cursor: impl Fn(&K) -> String,
    item: impl FnMut(K) -> Option<T>,
) -> Listing<T> {
    let more = keys.len() > limit;
    keys.truncate(limit);
    let next = if more { keys.last().map(&cursor) } else { None };
    Listing {
        items: keys.into_iter().filter_map(item).collect(),
        next,
    }
}

fn time(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

fn client_info(s: &Session) -> ClientInfo {
    let c = &s.client;
    ClientInfo {
        client_id: c.client_id.as_str().to_owned(),
        username: c.username.as_ref().map(|u| u.as_str().to_owned()),
        remote_addr: c.remote_addr,
        certificate: c.certificate.as_deref().map(str::to_owned),
        protocol: s.protocol,
        connected: s.conn.is_some(),
        connected_at: s.conn.as_ref().map(|c| time(c.connected_at_ms)),
        disconnected_at: s.disconnected_at_ms.map(time),
        session_expiry_interval: s.expiry_interval,
        inflight: s.inflight_len(),
        queued: s.queued_len(),
        subscriptions: s.subscriptions.len(),
        inline: c.inline,
    }
}

fn subscription_info(client_id: &str, filter: &str, e: &SubEntry) -> SubscriptionInfo {
    SubscriptionInfo {
        client_id: client_id.to_owned(),
        filter: filter.to_owned(),
        qos: e.options.qos,
        no_local: e.options.no_local,
        retain_as_published: e.options.retain_as_published,
        retain_handling: e.options.retain_handling,
        subscription_identifier: e.id.map(|i| i.get()),
    }
}

impl Broker {
    /// Answers an admin request.
    pub(crate) fn admin(&mut self, query: AdminQuery, now_ms: u64) -> AdminAnswer {
        match query {
            AdminQuery::Clients(paging) => AdminAnswer::Clients(self.admin_clients(&paging)),
            AdminQuery::Client(id) => AdminAnswer::Client(self.admin_client(&id)),
            AdminQuery::Disconnect(id, options) => {
                AdminAnswer::Disconnect(self.admin_disconnect(&id, options, now_ms))
            }
            AdminQuery::Retained(filter, paging) => {
                AdminAnswer::Retained(self.admin_retained(&filter, &paging))
            }
            AdminQuery::DeleteRetained(topic) => {
                let found = !topic.starts_with("$SYS") && self.clear_retained(&topic);
                if found {
                    tracing::info!(topic = %Escaped(&topic), "retained message cleared by the admin API");
                    self.update_retained_gauge();
                }
                AdminAnswer::DeleteRetained(found)
            }
            AdminQuery::Subscriptions(filter, paging) => {
                AdminAnswer::Subscriptions(self.admin_subscriptions(&filter, &paging))
            }
        }
    }

    fn admin_clients(&self, paging: &Paging) -> Listing<ClientInfo> {
        let limit = paging.clamped();
        let after = paging.after.as_deref();
        let keys = self
            .by_client_id
            .iter()
            .filter(|(id, _)| after.is_none_or(|a| id.as_str() > a))
            .map(|(id, sid)| (id.as_str(), *sid));
        let keys = smallest(keys, limit);
        page(
            keys,
            limit,
            |(id, _)| (*id).to_owned(),
            |(_, sid)| self.sessions.get(&sid).map(|s| client_info(s)),
        )
    }

    fn admin_client(&self, client_id: &str) -> Option<SessionInfo> {
        let s = self.sessions.get(self.by_client_id.get(client_id)?)?;
        let mut subscriptions: Vec<SubscriptionInfo> = s
            .subscriptions
            .iter()
            .map(|(f, e)| subscription_info(client_id, f, e))
            .collect();
        subscriptions.sort_by(|a, b| a.filter.cmp(&b.filter));
        Some(SessionInfo {
            client: client_info(s),
            subscriptions,
            will_topic: s.will.as_ref().map(|w| w.message.topic.as_str().to_owned()),
        })
    }

    fn admin_disconnect(
        &mut self,
        client_id: &str,
        options: DisconnectOptions,
        now_ms: u64,
    ) -> Result<Disconnected, AdminError> {
        let not_found = || AdminError::NotFound(client_id.to_owned());
        let sid = *self.by_client_id.get(client_id).ok_or_else(not_found)?;
        let s = self.sessions.get_mut(&sid).ok_or_else(not_found)?;
        if s.client.inline {
            return Err(AdminError::Inline(client_id.to_owned()));
        }
        if options.discard_will {
            s.will = None;
            s.will_due_ms = None;
        }
        let conn = s.conn.as_ref().map(|c| c.id);
        tracing::info!(client_id = %Escaped(client_id),
            reason = %Escaped(options.reason.as_deref().unwrap_or("")),
            connected = conn.is_some(), end_session = options.end_session,
            discard_will = options.discard_will, "client disconnected by the admin API");
        if let Some(conn) = conn {
            // As any disconnect by the server: the will follows the usual
            // rules (published, after its delay), unless discarded above.
            self.disconnect_with(
                conn,
                ReasonCode::AdministrativeAction,
                options.reason,
                now_ms,
            );
        }
        if options.end_session {
            self.end_session(sid, now_ms);
        }
        Ok(Disconnected {
            was_connected: conn.is_some(),
            session_ended: !self.sessions.contains_key(&sid),
        })
    }

    fn admin_retained(&self, filter: &str, paging: &Paging) -> Listing<RetainedInfo> {
        let limit = paging.clamped();
        // The tree walks in topic order, from after the cursor: the first
        // `limit + 1` are the page.
        let mut found = Vec::with_capacity(limit + 1);
        self.retained
            .tree
            .matches_after(filter, paging.after.as_deref(), |topic, e| {
                found.push(RetainedInfo {
                    topic: topic.to_owned(),
                    payload_bytes: e.size().saturating_sub(topic.len()),
                    expires_at: e
                        .expires_s()
                        .map(|s| UNIX_EPOCH + Duration::from_secs(u64::from(s))),
                });
                if found.len() > limit {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            });
        page(found, limit, |r| r.topic.clone(), Some)
    }

    fn admin_subscriptions(&self, filter: &str, paging: &Paging) -> Listing<SubscriptionInfo> {
        let limit = paging.clamped();
        let after = paging
            .after
            .as_deref()
            .map(|a| a.split_once(CURSOR_SEPARATOR).unwrap_or((a, "")));
        let keys = self.by_client_id.iter().flat_map(|(id, sid)| {
            let subs = self.sessions.get(sid).map(|s| &s.subscriptions);
            subs.into_iter()
                .flat_map(|subs| subs.iter())
                .filter_map(move |(f, e)| {
                    let (_, plain) = split_shared(f);
                    let key = (id.as_str(), f.as_str());
                    let wanted =
                        crate::topic::matches(filter, plain) && after.is_none_or(|a| key > a);
                    wanted.then_some((key, *e))
                })
        });
        let keys = smallest(keys.map(Keyed), limit);
        page(
            keys,
            limit,
            |Keyed(((id, f), _))| format!("{id}{CURSOR_SEPARATOR}{f}"),
            |Keyed(((id, f), e))| Some(subscription_info(id, f, &e)),
        )
    }
}

/// A subscription ordered by its key alone (its options are not ordered).
struct Keyed<'a>(((&'a str, &'a str), SubEntry));

impl PartialEq for Keyed<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.0 .0 == other.0 .0
    }
}

impl Eq for Keyed<'_> {}

impl PartialOrd for Keyed<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Keyed<'_> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0 .0.cmp(&other.0 .0)
    }
}
