//! Acknowledgements that wait for their session's state to be in the
//! cluster's session bucket, and the packet ids of the cluster's stream
//! messages (issue 19): the bookkeeping behind `roaming`'s "Saves", apart
//! so that sessions (which hold packets here) and `roaming` (which exports
//! them) both use it without depending on each other.

use super::{Outbound, Outbox, SessionId};
use crate::codec::{ByteStr, PacketId};
use std::collections::{HashMap, HashSet, VecDeque};
use std::num::NonZeroU16;
use std::sync::Arc;
use tokio::sync::Notify;

/// The packet id a message of the cluster's stream goes out with: its
/// sequence, folded into 1..=65535 (`None` for a message without one).
/// Two messages in flight to one session at once with the same id (their
/// sequences 65,535 apart or a multiple) cannot be: the later waits.
pub(crate) fn stream_pid(seq: u64) -> Option<PacketId> {
    if seq == 0 {
        return None;
    }
    let folded = (seq - 1) % u64::from(u16::MAX) + 1;
    NonZeroU16::new(u16::try_from(folded).ok()?)
}

/// Packets held until their session's state is in the cluster's session
/// bucket (see `roaming`'s "Saves"). Off (nothing held) outside a
/// cluster.
#[derive(Debug, Default)]
pub(crate) struct Saves {
    /// Wakes the edge's writer; `None` outside a cluster.
    pub(super) wake: Option<Arc<Notify>>,
    /// The generation the next export carries: a packet held now goes
    /// once an export of it, or a later one, is written.
    next: u64,
    /// The client ids of the sessions with packets waiting.
    dirty: HashSet<ByteStr>,
    /// The packets waiting, in generation order: the generation, the
    /// outbox, the packet's token.
    held: VecDeque<(u64, Arc<Outbox>, u64)>,
    /// Tokens handed out for packets that wait for a save alone (counted
    /// down from the top, apart from the gates' counted up from 1).
    tokens: u64,
    /// The writer was woken and has not exported since.
    woken: bool,
    /// Successful PUBRECs waiting for JetStream to store their message,
    /// by token (see [`Saves::expect_stored`]).
    inbound: HashMap<u64, Inbound>,
    /// Inbound QoS 2 flows whose PUBREC was refused: their packet ids
    /// leave the sessions' awaited ids (see `Broker::settle_refused`).
    pub(super) refused: Vec<(SessionId, u16)>,
    /// The client ids of the sessions that ended here since the last
    /// export: their entries go.
    pub(super) ended: Vec<ByteStr>,
    /// Sessions handed over to another node whose answer waits until
    /// JetStream stored or refused each of their inbound QoS 2 messages
    /// (see `roaming`'s "Inbound QoS 2 across a node's death"): by client
    /// id, the packet ids refused meanwhile.
    pub(super) handing: HashMap<ByteStr, Vec<u16>>,
}

/// An inbound QoS 2 flow whose message JetStream has not stored yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Unstored {
    /// Its packet id.
    pub pid: u16,
    /// Its number.
    pub flow: u64,
    /// The last stream sequence the core had routed when it began.
    pub floor: u64,
}

/// A successful PUBREC waiting for JetStream to store its message.
#[derive(Debug)]
struct Inbound {
    sid: SessionId,
    client_id: ByteStr,
    pid: u16,
    /// Its flow's number, and the last stream sequence the core had
    /// routed when the flow began: its message's sequence is above.
    flow: u64,
    floor: u64,
    /// Its outbox, if it then waits for the session bucket too.
    save: Option<Arc<Outbox>>,
}

impl Saves {
    /// Whether packets wait for saves (this node is in a cluster).
    pub(crate) fn on(&self) -> bool {
        self.wake.is_some()
    }

    /// A token for a packet that waits for a save alone.
    fn token(&mut self) -> u64 {
        self.tokens += 1;
        u64::MAX - self.tokens
    }

    /// Pushes `packet` to `client_id`'s `outbox`, held until the session is
    /// next written (and, unless `commit` is 0, until that commit is).
    pub(crate) fn push(
        &mut self,
        client_id: &ByteStr,
        outbox: &Arc<Outbox>,
        commit: u64,
        packet: impl Into<Outbound>,
    ) {
        let token = self.token();
        outbox.push_held(commit, token, 1, packet);
        self.hold(client_id, outbox.clone(), token);
    }

    /// The packet `token` in `outbox` waits (one cluster wait) until
    /// `client_id`'s session is next written.
    pub(crate) fn hold(&mut self, client_id: &ByteStr, outbox: Arc<Outbox>, token: u64) {
        self.held.push_back((self.next, outbox, token));
        self.touch(client_id);
    }

    /// `client_id`'s session is to be written soon.
    pub(super) fn touch(&mut self, client_id: &ByteStr) {
        if !self.dirty.contains(client_id) {
            self.dirty.insert(client_id.clone());
        }
        if !self.woken {
            self.woken = true;
            if let Some(w) = &self.wake {
                w.notify_one();
            }
        }
    }

    /// The PUBREC `token` of `sid`'s inbound QoS 2 flow `pid` waits for
    /// JetStream to store its message, and if `save` (its outbox), then
    /// for the session bucket to hold `pid`. The id goes to the bucket
    /// only once the message is stored: a node that died between the two
    /// would otherwise leave the id without its message, and the next node
    /// would take the client's resend for a duplicate and lose it.
    /// `flow` and `floor` are the flow's number and a stream sequence its
    /// message's is above (see [`Unstored`]).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn expect_stored(
        &mut self,
        token: u64,
        sid: SessionId,
        client_id: ByteStr,
        pid: u16,
        (flow, floor): (u64, u64),
        save: Option<Arc<Outbox>>,
    ) {
        let inbound = Inbound {
            sid,
            client_id,
            pid,
            flow,
            floor,
            save,
        };
        self.inbound.insert(token, inbound);
    }

    /// JetStream stored the message of the acknowledgement `token`.
    pub(crate) fn stored(&mut self, token: u64) {
        if let Some(Inbound {
            client_id,
            save: Some(outbox),
            ..
        }) = self.inbound.remove(&token)
        {
            self.hold(&client_id, outbox, token);
        }
    }

    /// The acknowledgement `token` was refused (0: one refused as it was
    /// armed, handled there).
    pub(crate) fn refused(&mut self, token: u64) {
        if let Some(i) = self.inbound.remove(&token) {
            if let Some(refused) = self.handing.get_mut(&i.client_id) {
                refused.push(i.pid);
            }
            self.refused.push((i.sid, i.pid));
        }
    }

    /// The inbound QoS 2 flows whose messages JetStream has not stored
    /// yet, by client id: their ids are not for the bucket yet.
    pub(super) fn unstored(&self) -> HashMap<&ByteStr, Vec<Unstored>> {
        let mut by_client: HashMap<&ByteStr, Vec<Unstored>> = HashMap::new();
        for i in self.inbound.values() {
            by_client.entry(&i.client_id).or_default().push(Unstored {
                pid: i.pid,
                flow: i.flow,
                floor: i.floor,
            });
        }
        by_client
    }

    /// Whether `client_id` has inbound QoS 2 messages JetStream has not
    /// stored yet (nor refused).
    pub(super) fn any_unstored(&self, client_id: &ByteStr) -> bool {
        self.inbound.values().any(|i| &i.client_id == client_id)
    }

    /// Starts an export: its generation, the sessions touched, and those
    /// that ended.
    pub(super) fn export(&mut self) -> (u64, HashSet<ByteStr>, Vec<ByteStr>) {
        let generation = self.next;
        self.next += 1;
        self.woken = false;
        let dirty = std::mem::take(&mut self.dirty);
        (generation, dirty, std::mem::take(&mut self.ended))
    }

    /// The export `generation` is written: what waited for it goes.
    pub(super) fn saved(&mut self, generation: u64) {
        while self.held.front().is_some_and(|(g, ..)| *g <= generation) {
            if let Some((_, outbox, token)) = self.held.pop_front() {
                outbox.open_cluster(token);
            }
        }
    }
}
