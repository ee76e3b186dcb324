//! Admitting a client: from its CONNECT to the session's start, as a
//! state machine the connection driver steps through. It applies the
//! identity the transport established, runs enhanced authentication (5.0
//! section 4.12: AUTH packets back and forth before CONNACK), asks the
//! auth hooks, and judges the will by the publish ACL.
//!
//! Each [`Next`] names what the driver does before stepping on: a hook to
//! await, an AUTH challenge to send and the answer to read, or the CONNACK
//! that refuses the client. The driver owns the socket, the connect
//! timeout and the budget of unauthenticated bytes.

use super::alias::InboundAliases;
use super::{auth_packet, Ingress};
use crate::codec::{ByteStr, ConnAck, Connect, DecodeError, Packet, ProtocolVersion, ReasonCode};
use crate::config::Options;
use crate::escape::Escaped;
use crate::hooks::{AuthStep, Client, Hooks};
use bytes::Bytes;
use std::net::SocketAddr;
use std::sync::Arc;

/// The user name a transport established, if it is to establish one.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
#[cfg_attr(not(feature = "tls"), allow(dead_code))] // Only TLS names users.
pub(crate) enum TransportUser {
    /// The transport says nothing: the CONNECT's user name stands.
    #[default]
    FromConnect,
    /// A TLS client certificate's CN or SAN, when the listener is told to
    /// use it. It replaces the CONNECT's user name, so a client cannot
    /// claim someone else's.
    Named(String),
    /// The listener takes the user name from the client certificate, and
    /// the certificate presented has none. The connection is refused:
    /// falling back to the CONNECT's user name would let any certificate
    /// the CA signed claim any user.
    Missing,
}

/// The client id a transport established, if it is to establish one.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
#[cfg_attr(not(feature = "tls"), allow(dead_code))] // Only TLS names clients.
pub(crate) enum TransportClientId {
    /// The transport says nothing: the CONNECT's client id stands.
    #[default]
    FromConnect,
    /// A TLS client certificate's CN or SAN, when the listener is told to
    /// use it. It replaces the CONNECT's client id, so the session is the
    /// certificate's.
    Named(String),
    /// The listener takes the client id from the client certificate, and
    /// the client presented none, or one without the name. The connection
    /// is refused: nobody checks a client id, so falling back to the
    /// CONNECT's would let any client take a device's session.
    Missing,
}

/// The CONNACK that refuses a client with `reason` (mapped to a return
/// code when encoded for 3.x).
pub(crate) fn refusal(reason: ReasonCode) -> Packet {
    Packet::ConnAck(ConnAck {
        session_present: false,
        reason,
        properties: Default::default(),
    })
}

/// How a first packet that does not decode as a CONNECT is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Malformed {
    /// Closed without an answer.
    Close,
    /// Answered with [`refusal`] of this reason, encoded for this version,
    /// then closed.
    Refuse(ProtocolVersion, ReasonCode),
    /// Too large to be buffered: a 5.0 client is told why (CONNACK 0x95)
    /// once its protocol level is read from the bytes after the fixed
    /// header ([`too_large`]); 3.x has no return code for it: closed.
    TooLarge,
}

/// How to answer a first packet that failed to decode with `e`.
pub(crate) fn malformed_connect(e: DecodeError) -> Malformed {
    match e {
        DecodeError::PacketTooLarge { .. } => Malformed::TooLarge,
        // Any unsupported level gets the 3.1.1 return code 1
        // ([MQTT-3.1.2-2]): the form every client version can read.
        DecodeError::UnsupportedProtocolVersion(_) => Malformed::Refuse(
            ProtocolVersion::V3_1_1,
            ReasonCode::UnsupportedProtocolVersion,
        ),
        _ => Malformed::Close,
    }
}

/// For [`Malformed::TooLarge`]: the version to refuse in, given the
/// protocol level read from the oversized CONNECT; `None`: just close.
pub(crate) fn too_large(level: Option<u8>) -> Option<ProtocolVersion> {
    level
        .and_then(ProtocolVersion::from_level)
        .filter(|v| v.is_v5())
}

/// What the driver does next for a client being admitted.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // One at a time, once per connection.
pub(crate) enum Next {
    /// Await `Hooks::enhanced_auth` with [`Admission::client`],
    /// [`Admission::auth_method`] and this data, then call
    /// [`Admission::enhanced_auth`].
    EnhancedAuth(Option<Bytes>),
    /// Send this AUTH challenge, read the client's answer (within the
    /// connect timeout), and pass it to [`Admission::auth_answer`].
    Challenge(Packet),
    /// Await `Hooks::connect` on [`Admission::connect_mut`], then call
    /// [`Admission::authenticated`].
    Authenticate,
    /// Await `Hooks::can_publish` for the client and the will's topic
    /// ([`Admission::will_topic`]), then call [`Admission::will_checked`].
    CheckWill,
    /// Send this CONNACK, encoded for [`Admission::version`], and close.
    Refuse(Packet),
    /// The client is admitted: [`Admission::admitted`].
    Admitted,
}

/// A client between its CONNECT and its admission.
#[derive(Debug)]
pub(crate) struct Admission {
    connect: Box<Connect>,
    client: Client,
    /// The enhanced authentication method while it runs, and after.
    method: Option<ByteStr>,
    /// Enhanced authentication succeeded.
    enhanced: bool,
    /// Any auth hook installed (otherwise `Hooks::connect` is skipped).
    auth_hooks: bool,
    /// The CONNECT's client id was empty and the transport gave one.
    id_assigned: bool,
    /// The connection's number, for the log.
    conn: u64,
}

impl Admission {
    /// Starts admitting the client that sent `connect` over a transport
    /// that established `user` and `client_id`. Returns the first step.
    pub(crate) fn start(
        mut connect: Box<Connect>,
        user: TransportUser,
        client_id: TransportClientId,
        remote_addr: Option<SocketAddr>,
        certificate: Option<Box<str>>,
        hooks: &Hooks,
        conn: u64,
    ) -> (Self, Next) {
        let user_missing = match user {
            TransportUser::FromConnect => false,
            TransportUser::Named(username) => {
                connect.username = Some(username.into());
                false
            }
            TransportUser::Missing => true,
        };
        let mut id_assigned = false;
        let id_missing = match client_id {
            TransportClientId::FromConnect => false,
            TransportClientId::Named(id) => {
                if connect.client_id.is_empty() {
                    id_assigned = true;
                } else if connect.client_id != id.as_str() {
                    // Not refused: the session is the certificate's
                    // whatever the CONNECT claims (see `ClientIdFrom`).
                    tracing::info!(conn, client_id = %Escaped(&id),
                        connect_client_id = %Escaped(&connect.client_id),
                        remote = remote_addr.map(tracing::field::display),
                        "client id taken from the client certificate, replacing the CONNECT's");
                }
                connect.client_id = id.into();
                false
            }
            TransportClientId::Missing => true,
        };
        let client = Client {
            client_id: connect.client_id.clone(),
            username: connect.username.clone(),
            remote_addr,
            certificate: certificate.map(Arc::from),
            protocol: connect.protocol,
            inline: false,
        };
        let method = if connect.protocol.is_v5() {
            connect.properties.authentication_method.clone()
        } else {
            None
        };
        let data = connect.properties.authentication_data.clone();
        let mut admission = Admission {
            connect,
            client,
            method,
            enhanced: false,
            auth_hooks: !hooks.auth.is_empty(),
            id_assigned,
            conn,
        };
        let next = if user_missing {
            // Refused before any hook sees the CONNECT's user name. 0x87
            // (3.x: 5) rather than 0x86: the CONNECT's credentials are not
            // what is wrong, the certificate names nobody. Answered in
            // MQTT rather than by failing the TLS handshake, so the client
            // learns why and the log names its client id.
            tracing::warn!(target: crate::REFUSAL, conn, client_id = %Escaped(&admission.client.client_id),
                remote = remote_addr.map(tracing::field::display),
                "client certificate has no user name (CN or SAN) and the listener takes it from there; connection refused");
            Next::Refuse(refusal(ReasonCode::NotAuthorized))
        } else if id_missing {
            // As for a missing user name, and before any hook too.
            tracing::warn!(target: crate::REFUSAL, conn, client_id = %Escaped(&admission.client.client_id),
                remote = remote_addr.map(tracing::field::display),
                "the listener takes the client id from the client certificate, and the client presented none or one without it (CN or SAN); connection refused");
            Next::Refuse(refusal(ReasonCode::NotAuthorized))
        } else if admission.method.is_some() {
            Next::EnhancedAuth(data)
        } else {
            admission.after_enhanced_auth()
        };
        (admission, next)
    }

    /// The protocol version the client connected with.
    pub(crate) fn version(&self) -> ProtocolVersion {
        self.connect.protocol
    }

    /// Who the client is, as hooks see it.
    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    /// The enhanced authentication method the client asked for (empty if
    /// none: then [`Next::EnhancedAuth`] never comes).
    pub(crate) fn auth_method(&self) -> &str {
        self.method.as_ref().map_or("", |m| m.as_str())
    }

    /// The client and its CONNECT, for `Hooks::connect` (which may change
    /// the CONNECT), and whether enhanced authentication succeeded.
    pub(crate) fn connect_mut(&mut self) -> (&Client, &mut Connect, bool) {
        (&self.client, &mut self.connect, self.enhanced)
    }

    /// The will's topic, for [`Next::CheckWill`].
    pub(crate) fn will_topic(&self) -> &str {
        self.connect.will.as_ref().map_or("", |w| w.topic.as_str())
    }

    /// Refuses the client with `reason` (a limit the driver enforces
    /// during the exchange).
    pub(crate) fn refuse(&self, reason: ReasonCode) -> Next {
        Next::Refuse(refusal(reason))
    }

    /// After one step of the hooks' enhanced authentication.
    pub(crate) fn enhanced_auth(&mut self, step: AuthStep) -> Next {
        let Some(method) = &self.method else {
            return self.refuse(ReasonCode::ProtocolError);
        };
        match step {
            AuthStep::Success(answer) => {
                // The server's final data goes back in CONNACK.
                self.connect.properties.authentication_data = answer;
                self.enhanced = true;
                self.after_enhanced_auth()
            }
            AuthStep::Continue(challenge) => Next::Challenge(auth_packet(
                ReasonCode::ContinueAuthentication,
                method,
                Some(challenge),
            )),
            AuthStep::Fail(reason) => {
                tracing::warn!(target: crate::REFUSAL, conn = self.conn, client_id = %Escaped(&self.client.client_id),
                    username = self.client.username.as_deref().map(|u| tracing::field::display(Escaped(u))),
                    remote = self.client.remote_addr.map(tracing::field::display), ?reason,
                    method = %Escaped(method), "enhanced authentication failed; connection refused");
                self.refuse(reason)
            }
            // No hook offers the method ([MQTT-4.12.0-1]).
            AuthStep::Unsupported => self.refuse(ReasonCode::BadAuthenticationMethod),
        }
    }

    /// The client's answer to a challenge; `None` when none came (time
    /// out, end of stream, or bytes that do not decode).
    pub(crate) fn auth_answer(&mut self, answer: Option<Packet>) -> Next {
        match answer {
            Some(Packet::Auth(a))
                if a.reason == ReasonCode::ContinueAuthentication
                    && a.properties.authentication_method.is_some()
                    && a.properties.authentication_method == self.method =>
            {
                Next::EnhancedAuth(a.properties.authentication_data)
            }
            // Anything else during the exchange is a protocol error.
            _ => self.refuse(ReasonCode::ProtocolError),
        }
    }

    /// After `Hooks::connect`: `Err` is the reason it refused with.
    pub(crate) fn authenticated(&mut self, verdict: Result<(), ReasonCode>) -> Next {
        if let Err(reason) = verdict {
            // The user name helps an operator; the password is never logged.
            tracing::warn!(target: crate::REFUSAL, conn = self.conn, client_id = %Escaped(&self.client.client_id),
                username = self.client.username.as_deref().map(|u| tracing::field::display(Escaped(u))),
                remote = self.client.remote_addr.map(tracing::field::display), ?reason,
                "authentication failed; connection refused");
            return self.refuse(reason);
        }
        self.after_authentication()
    }

    /// After the publish ACL judged the will: `false` refuses it.
    pub(crate) fn will_checked(&mut self, allowed: bool) -> Next {
        if allowed {
            return Next::Admitted;
        }
        tracing::warn!(target: crate::REFUSAL, conn = self.conn, client_id = %Escaped(&self.client.client_id),
            username = self.client.username.as_deref().map(|u| tracing::field::display(Escaped(u))),
            remote = self.client.remote_addr.map(tracing::field::display),
            topic = %Escaped(self.will_topic()), "will refused by the publish ACL; connection refused");
        self.refuse(ReasonCode::NotAuthorized)
    }

    fn after_enhanced_auth(&mut self) -> Next {
        if self.auth_hooks {
            // May do I/O: it runs in the connection's task, so a slow
            // check holds up only this client.
            Next::Authenticate
        } else {
            self.after_authentication()
        }
    }

    fn after_authentication(&mut self) -> Next {
        // The id and user name live as long as the session: copied out,
        // they do not keep the read that brought the CONNECT allocated.
        // A hook may have changed them: the client is told the same.
        let connect = &mut self.connect;
        connect.client_id = connect.client_id.detach();
        connect.username = connect.username.as_ref().map(ByteStr::detach);
        self.client.client_id = connect.client_id.clone();
        self.client.username = connect.username.clone();
        if connect.will.is_some() {
            // A will is a PUBLISH the client makes in advance: the publish
            // ACL judges it now, where a hook may do I/O, so that a refused
            // will is refused to the client rather than dropped silently
            // later. It is judged again when it fires (see
            // `Broker::publish_will`). An empty client id is judged as
            // empty: the core assigns the id after this.
            Next::CheckWill
        } else {
            Next::Admitted
        }
    }

    /// The admitted client: its CONNECT for the core, who it is, whether
    /// enhanced authentication succeeded, and its protocol state from here
    /// on.
    pub(crate) fn admitted(self, opts: &Options) -> Admitted {
        let version = self.connect.protocol;
        let client = Arc::new(self.client);
        let aliases = InboundAliases::new(
            if version.is_v5() {
                opts.capabilities.topic_alias_maximum
            } else {
                0
            },
            opts.limits.maximum_topic_alias_bytes,
        );
        let method = if self.enhanced { self.method } else { None };
        Admitted {
            connect: self.connect,
            ingress: Ingress::new(client.clone(), method, aliases),
            client,
            enhanced_auth: self.enhanced,
            id_assigned: self.id_assigned,
        }
    }
}

/// A client admitted by [`Admission`].
#[derive(Debug)]
pub(crate) struct Admitted {
    /// The CONNECT, as the hooks left it, for the core.
    pub connect: Box<Connect>,
    /// Who the client is.
    pub client: Arc<Client>,
    /// Enhanced authentication succeeded: the CONNECT's method stands, and
    /// its authentication data is the server's final answer.
    pub enhanced_auth: bool,
    /// The CONNECT's client id was empty and the transport gave it one
    /// (see `Event::Connect`).
    pub id_assigned: bool,
    /// The client's protocol state after CONNECT.
    pub ingress: Ingress,
}
