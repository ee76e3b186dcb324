//! Sessions that move between nodes (issue 19): the cluster's edge. The
//! core's side, and why a cursor in the message stream is enough, are in
//! `broker::roaming`.
//!
//! **The bucket.** `<name>_sessions` holds, per client id, the node that
//! owns the session and its state ([`Stored`]). The owner writes it
//! ([`write_loop`]): when the client connects, then every
//! [`WRITE_EVERY`] whatever changed (subscriptions, will, expiry, the
//! cursor), each write a compare-and-set on the revision it last wrote, so
//! a node that lost a session to another learns it at its next write and
//! lets it go ([`Event::Lost`]).
//!
//! **A CONNECT** ([`Roaming::claim`]) reads the client's entry first. Owned
//! by another node, the session is asked back from it over core NATS
//! (`<name>.n.<node>.release`, answered by [`answer_loop`]): that node
//! closes the client's connection there (5.0: DISCONNECT 0x8E) and hands
//! over the session's current state. A node that does not answer (dead,
//! or cut off) is not waited for: the bucket's state stands. The entry is
//! then set to this node (compare-and-set), the stream is read from the
//! session's cursor to its end, and the core gets the session with what it
//! is owed ([`Event::Adopt`]) before the CONNECT itself.
//!
//! While the cluster cannot be read, a CONNECT is refused with Server
//! unavailable (5.0 0x88, 3.x return code 3): a node must not resume a
//! session another node may be serving.
//!
//! **Saves.** An acknowledgement that changes the session (SUBACK,
//! UNSUBACK, PUBREC, PUBCOMP, an outbound PUBREL) waits until the session
//! is written: the core wakes [`write_loop`], which writes those sessions
//! at once and tells the core which export is in ([`Event::Saved`]). So a
//! node that dies right after one leaves the bucket agreeing with what the
//! client was told; with the packet ids of stream messages derived from
//! their sequences (`broker::roaming::stream_pid`), QoS 2 stays exactly
//! once across a node's death.
//!
//! A session claimed from a node that did not answer, or rescued, may
//! lack inbound QoS 2 packet ids whose messages are in the stream: the
//! replay's read of the stream finds them too (`Roaming::replay`, and
//! `broker::roaming`'s "Inbound QoS 2 across a node's death").
//!
//! Not yet: a QoS 2 retained message sent on subscribe (no stream
//! sequence) is not in the bucket while in flight; a node that dies with
//! it leaves the client holding its packet id.
//!
//! [`Event::Lost`]: crate::broker::Event::Lost
//! [`Event::Saved`]: crate::broker::Event::Saved
//! [`Event::Adopt`]: crate::broker::Event::Adopt

use crate::broker::{Adopt, Event, Export, InboundFlows, Replayed, Scope, SessionState};
use crate::cluster::envelope::{self, FLOW, PUBLISHER};
use crate::cluster::subject::subject_of;
use crate::codec::ByteStr;
use crate::escape::Escaped;
use crate::net::cluster::{next, Engine};
use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use async_nats::jetstream::kv::Operation;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

/// How often the owner writes what changed in its sessions: the cursor
/// this far behind means at most this much is delivered twice after a
/// node dies.
pub(crate) const WRITE_EVERY: Duration = Duration::from_secs(1);

/// How long a CONNECT waits for the node that owns its session to hand it
/// over before going on without it.
const RELEASE_WAIT: Duration = Duration::from_secs(2);

/// The layout of [`Stored`] this build writes (2: with the released
/// outbound QoS 2 flows, still read; 3: with the inbound QoS 2 flows'
/// `InboundFlows`; an entry of another layout is read as none).
const FORMAT: u8 = 3;

/// What the bucket holds for a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Stored {
    /// [`FORMAT`]: bincode is not self-describing, so a later layout must
    /// be told from this one.
    pub format: u8,
    /// The node that owns it.
    pub owner: String,
    /// Its state.
    pub state: SessionState,
}

/// A request to hand a session over.
#[derive(Debug, Serialize, Deserialize)]
struct Release {
    client_id: String,
    clean_start: bool,
}

/// Why a CONNECT could not claim its session.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ClaimError {
    /// The session bucket could not be read or written.
    #[error("cluster session bucket: {0}")]
    Bucket(String),
    /// The message stream could not be read.
    #[error("cluster message stream: {0}")]
    Stream(String),
    /// Another node kept claiming it at the same time.
    #[error("cluster: the session was claimed by another node at the same time")]
    Contended,
}

/// The node's sessions in the cluster: what it wrote, and the way to the
/// core.
#[derive(Debug)]
pub(crate) struct Roaming {
    engine: Arc<Engine>,
    events: mpsc::Sender<Event>,
    /// Per key, the revision this node last wrote and the bytes it wrote:
    /// the entries it owns.
    written: Mutex<HashMap<String, (u64, Bytes)>>,
    /// The most a replay brings: the session's queue bounds, in messages
    /// and in bytes (a replay is held in memory before the core has it).
    replay_limit: usize,
    replay_bytes: usize,
    /// The core wakes the writer with it when acknowledgements wait for a
    /// save ([`write_loop`]).
    wake: Arc<tokio::sync::Notify>,
}

/// The bucket key of a client id: its letters, digits and `-` as they are,
/// every other byte escaped (`cluster::subject`), so any id is a key.
fn key_of(client_id: &str) -> String {
    subject_of("c", client_id)
}

fn encode(stored: &Stored) -> Bytes {
    Bytes::from(bincode::serialize(stored).expect("plain data serializes"))
}

fn decode(bytes: &[u8]) -> Option<Stored> {
    match bytes.first()? {
        &FORMAT => bincode::deserialize::<Stored>(bytes).ok(),
        2 => bincode::deserialize::<StoredV2>(bytes)
            .ok()
            .map(StoredV2::upgrade),
        _ => None,
    }
}

/// [`Stored`] as format 2 had it (a node of an earlier build may still
/// write it while a cluster is upgraded one node at a time): without the
/// inbound QoS 2 flows.
#[derive(Deserialize)]
struct StoredV2 {
    /// 2 (checked before).
    _format: u8,
    owner: String,
    state: StateV2,
}

#[derive(Deserialize)]
struct StateV2 {
    session: roost_storage::SessionRecord,
    subscriptions: Vec<roost_storage::SubscriptionRecord>,
    inbound_qos2: Vec<u16>,
    released: Vec<u64>,
    cursor: u64,
}

impl StoredV2 {
    fn upgrade(self) -> Stored {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let s = self.state;
        Stored {
            format: FORMAT,
            owner: self.owner,
            state: SessionState {
                inbound: InboundFlows::unnumbered(s.cursor, now_ms),
                session: s.session,
                subscriptions: s.subscriptions,
                inbound_qos2: s.inbound_qos2,
                released: s.released,
                cursor: s.cursor,
                moved: false,
            },
        }
    }
}

impl Roaming {
    pub(crate) fn new(
        engine: Arc<Engine>,
        events: mpsc::Sender<Event>,
        limits: &crate::config::Limits,
    ) -> Self {
        Roaming {
            engine,
            events,
            written: Mutex::new(HashMap::new()),
            replay_limit: limits.maximum_queued_messages,
            replay_bytes: limits.maximum_queued_bytes,
            wake: Arc::new(tokio::sync::Notify::new()),
        }
    }

    /// What the core wakes the writer with (see
    /// `Broker::save_sessions_in_cluster`).
    pub(crate) fn wake(&self) -> Arc<tokio::sync::Notify> {
        self.wake.clone()
    }

    fn node(&self) -> &str {
        &self.engine.config().node
    }

    fn written(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u64, Bytes)>> {
        self.written.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Before a CONNECT of `client_id` goes to the core: makes this node
    /// the session's owner, taking it from the node that had it; returns
    /// the session to adopt, if it is to be resumed from elsewhere.
    pub(crate) async fn claim(
        &self,
        client_id: &str,
        clean_start: bool,
    ) -> Result<Option<Box<Adopt>>, ClaimError> {
        let key = key_of(client_id);
        let bucket = self.engine.sessions();
        for _ in 0..3 {
            let entry = bucket
                .entry(key.clone())
                .await
                .map_err(|e| ClaimError::Bucket(e.to_string()))?;
            let (stored, revision) = match entry {
                Some(e) if e.operation == Operation::Put => (decode(&e.value), e.revision),
                // Never stored, or deleted: a new session; the write loop
                // records it if it is persistent.
                _ => return Ok(None),
            };
            let Some(stored) = stored else {
                tracing::warn!(client_id = %Escaped(client_id),
                    "cluster: unreadable session entry; starting over");
                return Ok(None);
            };
            if stored.owner == self.node() {
                // This node's own: its core has it (or lost it with its
                // store, and the client starts over).
                return Ok(None);
            }
            let handed = self
                .ask_release(&stored.owner, client_id, clean_start)
                .await;
            // Started over and ended by a live owner (its will, if due,
            // went out there): what this node writes next is the new
            // session (or, for one that is not persistent, nothing).
            let ended = clean_start && handed.is_some();
            let whole = matches!(handed, Some(Some(_)));
            let mut state = match handed {
                Some(Some(state)) => state,
                _ => stored.state,
            };
            if ended {
                state.subscriptions.clear();
                state.inbound_qos2.clear();
                state.released.clear();
                state.session.will = None;
                state.cursor = 0;
            }
            // Ownership first, so the old node's writes fail from now on.
            let claimed = Stored {
                format: FORMAT,
                owner: self.node().to_owned(),
                state,
            };
            let bytes = encode(&claimed);
            let Ok(revision) = bucket.update(&key, bytes.clone(), revision).await else {
                continue;
            };
            self.written().insert(key, (revision, bytes));
            if ended {
                return Ok(None);
            }
            if clean_start {
                // Its node is dead: the session is adopted as it was, and
                // the CONNECT (Clean Start) ends it here, its pending will
                // going out once, as a session's end sends it.
                return Ok(Some(Box::new(Adopt {
                    state: claimed.state,
                    replay: Vec::new(),
                    upto: 0,
                })));
            }
            // Handed over, the state is whole: its node answered once
            // JetStream had settled the session's inbound QoS 2
            // messages. Taken from a node that did not answer, it may
            // lack flows whose messages are in the stream.
            let scan = !whole;
            let mut claimed = claimed;
            let (replay, upto) = match self.replay(&mut claimed.state, scan).await {
                Ok(r) => r,
                Err(e) => {
                    // The session is this node's now; it resumes without
                    // what it was owed rather than not at all.
                    tracing::warn!(client_id = %Escaped(client_id), error = %e,
                        "cluster: cannot read what the session is owed; resuming without it");
                    (Vec::new(), 0)
                }
            };
            return Ok(Some(Box::new(Adopt {
                state: claimed.state,
                replay,
                upto,
            })));
        }
        Err(ClaimError::Contended)
    }

    /// Asks `owner` to hand the session over: `Some(state)` if it did (its
    /// state then, `None` inside if it had none), `None` if it did not
    /// answer.
    async fn ask_release(
        &self,
        owner: &str,
        client_id: &str,
        clean_start: bool,
    ) -> Option<Option<SessionState>> {
        let subject = release_subject(self.engine.config(), owner);
        let body = bincode::serialize(&Release {
            client_id: client_id.to_owned(),
            clean_start,
        })
        .expect("plain data serializes");
        let request = self.engine.client().request(subject, body.into());
        match tokio::time::timeout(RELEASE_WAIT, request).await {
            Ok(Ok(answer)) => bincode::deserialize(&answer.payload).ok(),
            Ok(Err(e)) => {
                tracing::info!(owner, client_id = %Escaped(client_id), error = %e,
                    "cluster: the node that had the session did not hand it over; resuming from the cluster's state");
                None
            }
            Err(_) => {
                tracing::info!(owner, client_id = %Escaped(client_id),
                    "cluster: the node that had the session did not answer in time; resuming from the cluster's state");
                None
            }
        }
    }

    /// The stream's messages from the session's cursor to its end that
    /// match its ordinary subscriptions (the core checks again, with No
    /// Local and the ACL), and the last sequence read. With `scan`, also
    /// its client's inbound QoS 2 flows after `state.inbound.floor` that
    /// may still be open: their packet ids join `state.inbound_qos2`, and
    /// the flow numbers go on past the highest found (see
    /// `broker::roaming`'s "Inbound QoS 2 across a node's death").
    async fn replay(
        &self,
        state: &mut SessionState,
        scan: bool,
    ) -> Result<(Vec<Replayed>, u64), ClaimError> {
        let stream_err = |e: &dyn std::fmt::Display| ClaimError::Stream(e.to_string());
        let mut stream = self.engine.stream().clone();
        let info = stream.info().await.map_err(|e| stream_err(&e))?;
        let last = info.state.last_sequence;
        let first = info.state.first_sequence;
        let cursor = state.cursor;
        let filters: Vec<String> = state
            .subscriptions
            .iter()
            .filter(|s| !s.filter.starts_with("$share/"))
            .map(|s| s.filter.clone())
            .collect();
        let replaying = cursor != 0 && cursor <= last && !filters.is_empty();
        // Past the floor (0: not known, the whole stream).
        let scan_from = scan.then(|| state.inbound.floor.saturating_add(1));
        let scanning = scan_from.is_some_and(|f| f <= last) && last >= first && last > 0;
        if !replaying && !scanning {
            return Ok((Vec::new(), last));
        }
        if replaying && cursor < first {
            tracing::warn!(client_id = %Escaped(&state.session.client_id), cursor, first,
                "cluster: part of what the session was owed has aged out of the stream");
        }
        let start = match (replaying, scan_from.filter(|_| scanning)) {
            (true, Some(f)) => cursor.min(f),
            (true, None) => cursor,
            (false, Some(f)) => f,
            (false, None) => return Ok((Vec::new(), last)),
        };
        let config = self.engine.config();
        let prefix = config.durable_prefix();
        let consumer = stream
            .create_consumer(pull::OrderedConfig {
                filter_subject: format!("{prefix}.>"),
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: start.max(first),
                },
                ..Default::default()
            })
            .await
            .map_err(|e| stream_err(&e))?;
        let client_id = state.session.client_id.clone();
        let floor = state.inbound.floor;
        let mut open: Vec<u16> = Vec::new();
        let mut highest = 0u64;
        let mut messages = consumer.messages().await.map_err(|e| stream_err(&e))?;
        let mut replay = Vec::new();
        let mut bytes = 0usize;
        let mut dropped = 0u64;
        loop {
            let next = tokio::time::timeout(config.timeout, next(&mut messages)).await;
            let m = match next {
                Ok(Some(Ok(m))) => m,
                Ok(Some(Err(e))) => return Err(stream_err(&e)),
                Ok(None) | Err(_) => return Err(ClaimError::Stream("replay ended early".into())),
            };
            let seq = m.info().map(|i| i.stream_sequence).unwrap_or(0);
            let headers = m.headers.as_ref();
            let publisher = headers.and_then(|h| h.get(PUBLISHER));
            if scanning && seq > floor && publisher.is_some_and(|p| p.as_str() == client_id) {
                if let Some((pid, n)) = headers
                    .and_then(|h| h.get(FLOW))
                    .and_then(|v| envelope::parse_flow(v.as_str()))
                {
                    highest = highest.max(n);
                    if state.inbound.may_be_open(n) {
                        open.retain(|p| *p != pid);
                        open.push(pid);
                    }
                }
            }
            if !replaying || seq < cursor {
                if seq >= last {
                    break;
                }
                continue;
            }
            if let Ok(publish) = envelope::decode(&prefix, &m.subject, &m.payload) {
                if filters
                    .iter()
                    .any(|f| crate::topic::matches(f, &publish.topic))
                {
                    // Counted as the core counts a queue's bytes.
                    let size = publish.topic.len() + publish.payload.len();
                    if replay.len() < self.replay_limit
                        && bytes.saturating_add(size) <= self.replay_bytes
                    {
                        bytes += size;
                        let publisher = m
                            .headers
                            .as_ref()
                            .and_then(|h| h.get(PUBLISHER))
                            .map(|v| ByteStr::from(v.as_str()));
                        replay.push(Replayed {
                            seq,
                            publish,
                            publisher,
                        });
                    } else {
                        dropped += 1;
                    }
                }
            }
            if seq >= last {
                break;
            }
        }
        if dropped > 0 {
            tracing::warn!(client_id = %Escaped(&state.session.client_id), dropped,
                "cluster: more owed than the session's queue holds (messages or bytes); the newest were dropped");
        }
        if !open.is_empty() {
            tracing::info!(client_id = %Escaped(&client_id), found = open.len(),
                "cluster: inbound QoS 2 messages of the session found in the stream; the client's resends of them will not be delivered again");
        }
        state.inbound_qos2.extend(open);
        state.inbound.unstored.clear();
        state.inbound.next = state.inbound.next.max(highest.saturating_add(1));
        Ok((replay, last))
    }
}

fn release_subject(config: &crate::cluster::config::ClusterConfig, node: &str) -> String {
    // Node names are checked to be subject tokens (`ClusterConfig::validate`).
    format!("{}.n.{node}.release", config.name)
}

/// Answers other nodes' requests to hand over a session, until `stop`.
pub(crate) async fn answer_loop(roaming: Arc<Roaming>, mut stop: watch::Receiver<bool>) {
    let subject = release_subject(roaming.engine.config(), roaming.node());
    let mut requests = match roaming.engine.client().subscribe(subject).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cluster: cannot listen for session handovers");
            return;
        }
    };
    loop {
        let request = tokio::select! {
            r = next(&mut requests) => r,
            _ = stop.wait_for(|s| *s) => return,
        };
        let Some(request) = request else { return };
        let Some(reply) = request.reply else { continue };
        let Ok(release) = bincode::deserialize::<Release>(&request.payload) else {
            continue;
        };
        let (tx, rx) = oneshot::channel();
        let event = Event::Release {
            client_id: ByteStr::from(release.client_id.as_str()),
            clean_start: release.clean_start,
            reply: tx,
        };
        if roaming.events.send(event).await.is_err() {
            return;
        }
        let state = rx.await.ok().flatten();
        // Not this node's any more: its write loop must not touch the
        // entry (the claimer sets it).
        roaming.written().remove(&key_of(&release.client_id));
        let body = bincode::serialize(&state).expect("plain data serializes");
        if let Err(e) = roaming.engine.client().publish(reply, body.into()).await {
            tracing::warn!(error = %e, "cluster: answering a session handover");
        }
    }
}

/// Writes this node's sessions to the bucket until `stop`: at once, when
/// the core wakes it, the sessions whose acknowledgements wait for their
/// state to be there (then the core hears which export is written,
/// [`Event::Saved`]), or that connected, disconnected or lost their will;
/// every [`WRITE_EVERY`] also those whose queue moved (their cursor); every
/// [`WRITE_ALL_TICKS`] ticks every one, in case. Each write is a
/// compare-and-set; the entries of sessions that ended here are deleted
/// (if still this node's).
///
/// [`Event::Saved`]: crate::broker::Event::Saved
pub(crate) async fn write_loop(roaming: Arc<Roaming>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(WRITE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let wake = roaming.wake.clone();
    let mut ticks: u32 = 0;
    // Sessions whose last write failed: written again with every round
    // until one succeeds (a later export of one supersedes it), and no
    // round is reported written before they are: what waited for them
    // must not go on a later round's success.
    let mut failed: Vec<SessionState> = Vec::new();
    loop {
        // Acknowledgements waiting come first; while one write is on its
        // way, what asks for the next gathers (one export takes it all).
        let scope = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => return,
            _ = wake.notified() => Scope::Waiting,
            _ = tick.tick() => {
                ticks = ticks.wrapping_add(1);
                if ticks % WRITE_ALL_TICKS == 0 { Scope::All } else { Scope::Changed }
            }
        };
        let (tx, rx) = oneshot::channel();
        if roaming
            .events
            .send(Event::Export { scope, reply: tx })
            .await
            .is_err()
        {
            return;
        }
        let Ok(mut export) = rx.await else { return };
        let generation = export.generation;
        for state in failed.drain(..) {
            let id = &state.session.client_id;
            if !export.sessions.iter().any(|s| &s.session.client_id == id) {
                export.sessions.push(state);
            }
        }
        failed = write_once(&roaming, export).await;
        if failed.is_empty() {
            let saved = Event::Saved { generation };
            if roaming.events.send(saved).await.is_err() {
                return;
            }
        }
    }
}

/// Every how many [`WRITE_EVERY`] ticks every session is written, changed
/// or not: whatever a change's bookkeeping missed is in the bucket within
/// about half a minute. The cost is one export of every session (the core
/// builds each one's state) and a comparison with what was written.
const WRITE_ALL_TICKS: u32 = 30;

/// Writes the export's sessions (what changed in them) and deletes the
/// entries of those that ended. Returns the sessions whose write failed
/// (none: each is in the bucket as given, or was taken over by another
/// node and nothing waits for it here any more).
async fn write_once(roaming: &Arc<Roaming>, export: Export) -> Vec<SessionState> {
    let bucket = roaming.engine.sessions();
    let mut failed = Vec::new();
    for client_id in &export.ended {
        // A session of that id started here since (Clean Start): its
        // write below replaces the entry.
        if export
            .sessions
            .iter()
            .any(|s| s.session.client_id == client_id.as_str())
        {
            continue;
        }
        let key = key_of(client_id);
        let Some((revision, _)) = roaming.written().remove(&key) else {
            continue;
        };
        // Only if still this node's write: another node may have it now.
        let _ = bucket.delete_expect_revision(&key, Some(revision)).await;
    }
    // Sessions are written side by side (each its own compare-and-set),
    // so a round of many costs about one round trip, not one per session.
    let mut sessions = export.sessions.into_iter();
    loop {
        let mut writes = tokio::task::JoinSet::new();
        for state in sessions.by_ref().take(WRITES_AT_ONCE) {
            writes.spawn(write_session(roaming.clone(), state));
        }
        if writes.is_empty() {
            return failed;
        }
        while let Some(written) = writes.join_next().await {
            // A write task does not panic; were one to, its session is
            // written again with the next full round.
            if let Ok(Some(state)) = written {
                failed.push(state);
            }
        }
    }
}

/// Most session writes of one round on their way at once: enough to hide
/// the round trip, few enough not to flood NATS with a fleet's sessions.
const WRITES_AT_ONCE: usize = 64;

/// Writes one session's state if it changed (see [`write_once`]); returns
/// it if the write failed.
async fn write_session(roaming: Arc<Roaming>, mut state: SessionState) -> Option<SessionState> {
    let bucket = roaming.engine.sessions();
    let key = key_of(&state.session.client_id);
    let known = roaming.written().get(&key).cloned();
    // What was written last, decoded once for its cursor and floor.
    let known_state = known.as_ref().and_then(|(_, b)| decode(b)).map(|s| s.state);
    let known_cursor = known_state.as_ref().map(|s| s.cursor);
    if let Some(cursor) = known_cursor.filter(|_| state.cursor == 0 || !state.moved) {
        // Not known now, or the session's queue did not move: what was
        // written stands (no write for an idle session).
        state.cursor = cursor;
    }
    // A floor once written holds for good (every flow not known stored
    // since is above it): kept when not known now (nothing routed here
    // yet), and when nothing else changed, so that an idle session is not
    // written again for the stream's progress alone.
    let known_floor = known_state.map_or(0, |s| s.inbound.floor);
    let fresh_floor = std::mem::replace(&mut state.inbound.floor, known_floor);
    let client_id = state.session.client_id.clone();
    let mut stored = Stored {
        format: FORMAT,
        owner: roaming.node().to_owned(),
        state,
    };
    let mut bytes = encode(&stored);
    if let Some((_, last)) = &known {
        if *last == bytes {
            return None;
        }
    }
    if fresh_floor != 0 && fresh_floor != known_floor {
        stored.state.inbound.floor = fresh_floor;
        bytes = encode(&stored);
    }
    let result = match &known {
        Some((revision, _)) => bucket
            .update(&key, bytes.clone(), *revision)
            .await
            .map_err(|e| e.to_string()),
        None => bucket
            .create(&key, bytes.clone())
            .await
            .map_err(|e| e.to_string()),
    };
    match result {
        Ok(revision) => {
            roaming.written().insert(key, (revision, bytes));
            None
        }
        Err(e) => {
            // What it last wrote stands no more for the next round's
            // choices: that write sends the cursor afresh (the core's
            // "moved" was spent on this one).
            if let Some(w) = roaming.written().get_mut(&key) {
                w.1 = Bytes::new();
            }
            // Someone else's now, or the cluster is unreachable: read who
            // owns it before doing anything.
            let gone = lost_or_retry(&roaming, &key, &client_id, &e).await;
            (!gone).then_some(stored.state)
        }
    }
}

/// A write failed: if the entry names another node, the session is theirs
/// (this node could not be asked): it goes. Otherwise the next round
/// writes again from the entry's revision. Returns whether the session
/// went (nothing is to be written for it here any more).
async fn lost_or_retry(roaming: &Roaming, key: &str, client_id: &str, error: &str) -> bool {
    let entry = match roaming.engine.sessions().entry(key).await {
        Ok(entry) => entry,
        Err(e) => {
            tracing::warn!(client_id = %Escaped(client_id), error = %e,
                "cluster: cannot save the session's state; retrying");
            return false;
        }
    };
    let owner = entry
        .as_ref()
        .filter(|e| e.operation == Operation::Put)
        .and_then(|e| decode(&e.value))
        .map(|s| s.owner);
    match (entry, owner) {
        (Some(e), Some(owner)) if owner == roaming.node() => {
            roaming
                .written()
                .insert(key.to_owned(), (e.revision, Bytes::new()));
            false
        }
        (Some(_), Some(owner)) => {
            tracing::warn!(client_id = %Escaped(client_id), owner, error,
                "cluster: the session was taken over by another node");
            roaming.written().remove(key);
            let _ = roaming
                .events
                .send(Event::Lost {
                    client_id: ByteStr::from(client_id),
                })
                .await;
            true
        }
        (Some(_), None) | (None, _) => {
            // Deleted (the session ended elsewhere): written again as new.
            roaming.written().remove(key);
            false
        }
    }
}

/// What the cluster holds for `client_id`: its owner node, its
/// subscriptions' filters and its cursor (for tests; no API promise).
pub async fn stored_session(
    engine: &Engine,
    client_id: &str,
) -> Option<(String, Vec<String>, u64)> {
    let entry = engine.sessions().entry(key_of(client_id)).await.ok()??;
    if entry.operation != Operation::Put {
        return None;
    }
    let stored = decode(&entry.value)?;
    let filters = stored
        .state
        .subscriptions
        .iter()
        .map(|s| s.filter.clone())
        .collect();
    Some((stored.owner, filters, stored.state.cursor))
}

/// How often a node looks whether another node left: its sessions (their
/// wills, what they are owed) are then taken over here.
const RESCUE_EVERY: Duration = Duration::from_secs(5);

/// How often the bucket is scanned for orphaned sessions even when no node
/// was seen leaving (one that died before this node started, a scan that
/// failed).
const RESCAN_EVERY: Duration = Duration::from_secs(60);

/// Takes over, until `stop`, the sessions of nodes that died: each is
/// claimed compare-and-set (one node wins), adopted disconnected with what
/// it was owed, and from then on lives here as if its client had dropped:
/// its will fires once, here, after its delay; it expires here; its client
/// resumes it on any node.
///
/// A node is dead once it is out of the node registry (no heartbeat for
/// `cluster::nodes::TTL`). Nothing is decided before this node has had
/// that long to learn who is alive. A scan reads every entry of the
/// session bucket, so it runs when a node left the live set, and every
/// [`RESCAN_EVERY`].
pub(crate) async fn rescue_loop(roaming: Arc<Roaming>, mut stop: watch::Receiver<bool>) {
    let learn = tokio::time::sleep(crate::cluster::nodes::TTL);
    tokio::select! {
        _ = learn => {}
        _ = stop.wait_for(|s| *s) => return,
    }
    let mut tick = tokio::time::interval(RESCUE_EVERY);
    let mut known = std::collections::BTreeSet::new();
    let mut last_scan: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let live: std::collections::BTreeSet<String> = roaming
            .engine
            .nodes()
            .live(std::time::Instant::now())
            .into_iter()
            .map(|r| r.node)
            .collect();
        let someone_left = known.iter().any(|n| !live.contains(n));
        let due = last_scan.is_none_or(|t| t.elapsed() >= RESCAN_EVERY);
        known = live;
        if someone_left || due {
            last_scan = Some(tokio::time::Instant::now());
            if let Err(e) = rescue_once(&roaming).await {
                tracing::warn!(error = %e, "cluster: scanning for sessions of dead nodes");
                last_scan = None;
            }
        }
    }
}

/// One scan of the bucket (see [`rescue_loop`]).
async fn rescue_once(roaming: &Roaming) -> Result<(), ClaimError> {
    let bucket = roaming.engine.sessions();
    let mut keys = bucket
        .keys()
        .await
        .map_err(|e| ClaimError::Bucket(e.to_string()))?;
    let mut orphans = Vec::new();
    while let Some(key) = next(&mut keys).await {
        orphans.push(key.map_err(|e| ClaimError::Bucket(e.to_string()))?);
    }
    let nodes = roaming.engine.nodes();
    for key in orphans {
        let Ok(Some(entry)) = bucket.entry(key.clone()).await else {
            continue;
        };
        if entry.operation != Operation::Put {
            continue;
        }
        let Some(stored) = decode(&entry.value) else {
            continue;
        };
        if stored.owner == roaming.node()
            || nodes.is_alive(&stored.owner, std::time::Instant::now())
        {
            continue;
        }
        let dead = stored.owner.clone();
        let claimed = Stored {
            format: FORMAT,
            owner: roaming.node().to_owned(),
            state: stored.state,
        };
        let bytes = encode(&claimed);
        // Compare-and-set: of the nodes that saw it orphaned, one wins.
        let Ok(revision) = bucket.update(&key, bytes.clone(), entry.revision).await else {
            continue;
        };
        roaming.written().insert(key, (revision, bytes));
        let client_id = claimed.state.session.client_id.clone();
        let mut claimed = claimed;
        let (replay, upto) = roaming
            .replay(&mut claimed.state, true)
            .await
            .unwrap_or_else(|e| {
                tracing::warn!(client_id = %Escaped(&client_id), error = %e,
                "cluster: cannot read what the session is owed; taking it over without it");
                (Vec::new(), 0)
            });
        tracing::info!(client_id = %Escaped(&client_id), node = %dead,
            "cluster: took over a session of a node that is gone");
        let adopt = Adopt {
            state: claimed.state,
            replay,
            upto,
        };
        if roaming
            .events
            .send(Event::Adopt(Box::new(adopt)))
            .await
            .is_err()
        {
            return Ok(());
        }
    }
    Ok(())
}

/// Of `client_ids` (sessions restored from this node's store), those the
/// bucket says another node owns. One that cannot be read is kept: the
/// write loop finds out at its first write (and drops it then).
pub(crate) async fn owned_elsewhere(engine: &Engine, client_ids: Vec<String>) -> Vec<String> {
    let mut gone = Vec::new();
    for id in client_ids {
        let Ok(Some(entry)) = engine.sessions().entry(key_of(&id)).await else {
            continue;
        };
        let owner = (entry.operation == Operation::Put)
            .then(|| decode(&entry.value))
            .flatten()
            .map(|s| s.owner);
        if owner.is_some_and(|o| o != engine.config().node) {
            gone.push(id);
        }
    }
    gone
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(inbound: InboundFlows) -> Stored {
        Stored {
            format: FORMAT,
            owner: "a".into(),
            state: SessionState {
                session: roost_storage::SessionRecord {
                    client_id: "dev".into(),
                    protocol_level: 5,
                    expiry_interval: 600,
                    disconnected_at_ms: None,
                    will: None,
                    owner: roost_storage::SessionOwner::Anonymous,
                },
                subscriptions: Vec::new(),
                inbound_qos2: vec![4, 9],
                released: vec![17],
                cursor: 30,
                inbound,
                moved: false,
            },
        }
    }

    #[test]
    fn an_entry_of_this_format_reads_back() {
        let s = stored(InboundFlows {
            next: 12,
            unstored: vec![10, 11],
            floor: 28,
        });
        assert_eq!(decode(&encode(&s)), Some(s));
    }

    /// An entry a node of the previous build wrote (format 2, the same
    /// layout without the flows at its end) is read, with no flow of it
    /// taken for open and the floor before its cursor.
    #[test]
    fn an_entry_of_format_2_is_read_without_open_flows() {
        let flows = InboundFlows {
            next: 1,
            unstored: vec![5],
            floor: 0,
        };
        let tail = bincode::serialize(&flows).unwrap().len();
        let mut v2 = encode(&stored(flows)).to_vec();
        v2.truncate(v2.len() - tail);
        v2[0] = 2;
        let got = decode(&v2).expect("read");
        assert_eq!(got.format, FORMAT);
        assert_eq!(got.owner, "a");
        assert_eq!(got.state.inbound_qos2, vec![4, 9]);
        assert_eq!(got.state.released, vec![17]);
        assert_eq!(got.state.cursor, 30);
        assert_eq!(got.state.inbound.floor, 29);
        assert!(got.state.inbound.unstored.is_empty());
        assert!(got.state.inbound.next > 1 << 40, "from the clock");
        assert!(decode(&[1, 0, 0]).is_none(), "format 1: none");
    }
}
