//! The ingress: the protocol rules a client's packets pass on their way to
//! the broker core, written once for both kinds of client, the network
//! connection (`net::connection`) and the inline client (`inline`).
//! [`admit`] admits a CONNECT (transport identity, enhanced authentication,
//! auth hooks, the will's ACL); [`Ingress`] takes the packets after it:
//! re-authentication, the hooks a PUBLISH, SUBSCRIBE or UNSUBSCRIBE must
//! pass, and inbound topic aliases ([`alias`]); [`filter`] has the rules
//! for one subscribed filter, which the core applies.
//!
//! Sans-IO: plain state and synchronous functions that take a packet and
//! say what to do with it. Authentication and ACL hooks may do I/O and
//! return futures, so a step that needs one comes back as an [`Ask`] (or
//! an [`admit::Next`]): the caller awaits the hook in its own task and
//! feeds the verdict back. Sockets, timeouts and the budget of bytes read
//! before CONNACK stay with the connection driver.
//!
//! Between `hooks` and `broker` in the import order: the core consumes
//! what this produces ([`CheckedSubscribe`]), and this knows nothing of
//! the core.

pub(crate) mod admit;
pub(crate) mod alias;
pub(crate) mod filter;
#[cfg(test)]
mod tests;

use crate::codec::{
    Auth, AuthProperties, ByteStr, Packet, PacketId, PacketType, Publish, ReasonCode, Subscribe,
    SubscriptionOptions,
};
use crate::hooks::{AuthStep, Client, Hooks, PublishVerdict};
use crate::stats::Stats;
use alias::InboundAliases;
use bytes::Bytes;
use std::num::NonZeroU32;
use std::sync::Arc;

/// A SUBSCRIBE whose filters the hooks have seen: each filter carries
/// `Err(reason)` if a hook refused it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct CheckedSubscribe {
    /// Packet identifier.
    pub packet_id: PacketId,
    /// Filters, options and verdicts.
    pub filters: Vec<(ByteStr, SubscriptionOptions, Result<(), ReasonCode>)>,
    /// Subscription identifier.
    pub subscription_identifier: Option<NonZeroU32>,
}

impl From<Subscribe> for CheckedSubscribe {
    /// Every filter admitted, as before any hook has judged it.
    fn from(s: Subscribe) -> Self {
        CheckedSubscribe {
            packet_id: s.packet_id,
            filters: s.filters.into_iter().map(|(f, o)| (f, o, Ok(()))).collect(),
            subscription_identifier: s.subscription_identifier,
        }
    }
}

/// What to do with a packet from a client after CONNECT.
#[derive(Debug)]
// Packets move by value, as on their way to the core (see `broker::Event`).
#[allow(clippy::large_enum_variant)]
pub(crate) enum Inbound {
    /// Hand the core this.
    Core(ToCore),
    /// The client's DISCONNECT: hand it to the core, and read no more.
    Last(Packet),
    /// A hook that may do I/O decides first: await it, then go on as the
    /// [`Ask`] says.
    Ask(Ask),
    /// The packet breaks the protocol: close the connection with this
    /// reason code.
    Close(ReasonCode),
}

/// What the core is handed.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // As `Inbound`.
pub(crate) enum ToCore {
    /// A packet as the client sent it.
    Packet(Packet),
    /// A PUBLISH (topic alias resolved) with the hooks' verdict.
    Publish(Publish, PublishVerdict),
    /// A SUBSCRIBE with the hooks' verdicts.
    Subscribe(CheckedSubscribe),
}

/// A hook call to await before a packet goes on.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // As `Inbound`.
pub(crate) enum Ask {
    /// `Hooks::publish` (ACL and interception), which may change the
    /// packet; then [`ToCore::Publish`] with its verdict.
    Publish(Publish),
    /// `Hooks::subscribe` on the filters; then [`ToCore::Subscribe`].
    Subscribe(CheckedSubscribe),
    /// `Hooks::enhanced_auth` with [`Ingress::auth_method`] and this data;
    /// then [`Ingress::reauthenticated`].
    ReAuth(Option<Bytes>),
}

/// How a PUBLISH (alias already resolved) goes on: straight to the core
/// when no hook is installed, through `Hooks::publish` otherwise.
// `#[inline]` here and below: every packet a client sends passes through,
// called from the connection driver, which may sit in another codegen unit.
#[inline]
pub(crate) fn publish(publish: Publish, hooks: &Hooks) -> Inbound {
    if hooks.is_empty() {
        Inbound::Core(ToCore::Publish(publish, PublishVerdict::Deliver))
    } else {
        Inbound::Ask(Ask::Publish(publish))
    }
}

/// How a SUBSCRIBE goes on: straight to the core when no hook is
/// installed, through `Hooks::subscribe` otherwise.
pub(crate) fn subscribe(subscribe: Subscribe, hooks: &Hooks) -> Inbound {
    let checked = CheckedSubscribe::from(subscribe);
    if hooks.is_empty() {
        Inbound::Core(ToCore::Subscribe(checked))
    } else {
        Inbound::Ask(Ask::Subscribe(checked))
    }
}

/// An AUTH packet from the broker.
pub(crate) fn auth_packet(reason: ReasonCode, method: &ByteStr, data: Option<Bytes>) -> Packet {
    Packet::Auth(Auth {
        reason,
        properties: AuthProperties {
            authentication_method: Some(method.clone()),
            authentication_data: data,
            ..Default::default()
        },
    })
}

/// The protocol state of an admitted client, from CONNACK to its end.
#[derive(Debug)]
pub(crate) struct Ingress {
    client: Arc<Client>,
    /// The method, when the client authenticated with enhanced
    /// authentication (it may re-authenticate). Boxed: rare, and it would
    /// take room in every connection.
    enhanced: Option<Box<ByteStr>>,
    aliases: InboundAliases,
}

impl Ingress {
    /// The state of a client admitted as `client`, with its enhanced
    /// authentication method if it used one, accepting topic aliases as
    /// `aliases` allows.
    pub(crate) fn new(
        client: Arc<Client>,
        enhanced: Option<ByteStr>,
        aliases: InboundAliases,
    ) -> Self {
        Ingress {
            client,
            enhanced: enhanced.map(Box::new),
            aliases,
        }
    }

    /// Who the client is, as hooks see it.
    pub(crate) fn client(&self) -> &Arc<Client> {
        &self.client
    }

    /// What to do with `packet`. Synchronous hooks (`on_unsubscribe`) run
    /// here; hooks that may do I/O come back as [`Inbound::Ask`].
    #[inline]
    pub(crate) fn packet(&mut self, packet: Packet, hooks: &Hooks, stats: &Stats) -> Inbound {
        match packet {
            // Re-authentication, for a client that used enhanced
            // authentication at CONNECT (5.0 section 4.12.1). Without it,
            // AUTH goes to the core, which closes with 0x82
            // ([MQTT-4.12.0-7]).
            Packet::Auth(a) if self.enhanced.is_some() => {
                let same_method =
                    a.properties.authentication_method.as_ref() == self.enhanced.as_deref();
                let expected = matches!(
                    a.reason,
                    ReasonCode::ReAuthenticate | ReasonCode::ContinueAuthentication
                );
                if !same_method || !expected {
                    return Inbound::Close(ReasonCode::ProtocolError);
                }
                Inbound::Ask(Ask::ReAuth(a.properties.authentication_data))
            }
            Packet::Publish(mut p) => match self.resolve_alias(&mut p, stats) {
                Ok(()) => publish(p, hooks),
                Err(reason) => Inbound::Close(reason),
            },
            Packet::Subscribe(s) => subscribe(s, hooks),
            Packet::Unsubscribe(mut unsub) if hooks.has_events() => {
                hooks.each(|h| h.on_unsubscribe(&self.client, &mut unsub.filters));
                Inbound::Core(ToCore::Packet(Packet::Unsubscribe(unsub)))
            }
            Packet::Disconnect(_) => Inbound::Last(packet),
            packet => Inbound::Core(ToCore::Packet(packet)),
        }
    }

    /// Whether a packet of type `kind` needs nothing but
    /// [`Ingress::resolve_alias`] before the core (no hook, no answer from
    /// here), so a reader may gather it with others into one event.
    #[inline]
    pub(crate) fn batchable(kind: PacketType, hooks: &Hooks) -> bool {
        match kind {
            PacketType::Publish => hooks.is_empty(),
            PacketType::PubAck
            | PacketType::PubRec
            | PacketType::PubRel
            | PacketType::PubComp
            | PacketType::PingReq => true,
            _ => false,
        }
    }

    /// Resolves or records an inbound PUBLISH's topic alias (5.0 section
    /// 3.3.2.3.4). `Err` is the reason code to close with.
    #[inline]
    pub(crate) fn resolve_alias(
        &mut self,
        publish: &mut Publish,
        stats: &Stats,
    ) -> Result<(), ReasonCode> {
        self.aliases.resolve(publish).inspect_err(|&reason| {
            if reason == ReasonCode::QuotaExceeded {
                crate::stats::add(&stats.topic_alias_refused, 1);
            }
        })
    }

    /// The enhanced authentication method the client authenticated with
    /// (empty if none: then [`Ask::ReAuth`] never comes).
    pub(crate) fn auth_method(&self) -> &str {
        self.enhanced.as_deref().map_or("", |m| m.as_str())
    }

    /// What to send after the hooks took one step of re-authentication:
    /// the AUTH to answer with, or the reason code to close with.
    pub(crate) fn reauthenticated(&self, step: AuthStep) -> Result<Packet, ReasonCode> {
        let method = self.enhanced.as_deref().cloned().unwrap_or_default();
        match step {
            AuthStep::Success(answer) => Ok(auth_packet(ReasonCode::Success, &method, answer)),
            AuthStep::Continue(challenge) => Ok(auth_packet(
                ReasonCode::ContinueAuthentication,
                &method,
                Some(challenge),
            )),
            AuthStep::Fail(code) => Err(code),
            // No hook knows the method any more ([MQTT-4.12.0-1]).
            AuthStep::Unsupported => Err(ReasonCode::BadAuthenticationMethod),
        }
    }
}
