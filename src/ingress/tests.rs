//! The ingress driven directly: packets and hook verdicts in, what to do
//! out. No socket, no runtime.

use super::admit::{self, Admission, Malformed, Next, TransportClientId, TransportUser};
use super::*;
use crate::codec::{
    encode, Connect, ConnectProperties, LastWill, ProtocolVersion, PubResp, PublishProperties, QoS,
    QosPid, Unsubscribe, UserProperties,
};
use crate::config::Options;
use crate::hooks::{AclHook, AuthHook, EventHook};
use bytes::BytesMut;
use std::num::NonZeroU16;

fn connect(version: ProtocolVersion) -> Box<Connect> {
    Box::new(Connect {
        protocol: version,
        clean_start: true,
        keep_alive: 60,
        client_id: "c1".into(),
        will: None,
        username: Some("alice".into()),
        password: None,
        properties: ConnectProperties::default(),
    })
}

fn with_method(method: &str, data: &'static [u8]) -> Box<Connect> {
    let mut c = connect(ProtocolVersion::V5);
    c.properties.authentication_method = Some(method.into());
    c.properties.authentication_data = Some(Bytes::from_static(data));
    c
}

fn start(c: Box<Connect>, user: TransportUser, hooks: &Hooks) -> (Admission, Next) {
    Admission::start(
        c,
        user,
        TransportClientId::FromConnect,
        None,
        None,
        hooks,
        1,
    )
}

fn start_named(c: Box<Connect>, client_id: TransportClientId, hooks: &Hooks) -> (Admission, Next) {
    Admission::start(
        c,
        TransportUser::FromConnect,
        client_id,
        None,
        None,
        hooks,
        1,
    )
}

fn refused_with(next: &Next) -> Option<ReasonCode> {
    match next {
        Next::Refuse(Packet::ConnAck(ack)) => Some(ack.reason),
        _ => None,
    }
}

fn auth(reason: ReasonCode, method: &str, data: &'static [u8]) -> Packet {
    Packet::Auth(Auth {
        reason,
        properties: AuthProperties {
            authentication_method: Some(method.into()),
            authentication_data: Some(Bytes::from_static(data)),
            ..Default::default()
        },
    })
}

/// An auth hook that holds a fixed verdict.
struct Verdict(Result<(), ReasonCode>);
impl AuthHook for Verdict {
    fn on_connect<'a>(
        &'a self,
        _: &'a Client,
        _: &'a mut Connect,
    ) -> crate::hooks::BoxFuture<'a, Result<(), ReasonCode>> {
        Box::pin(std::future::ready(self.0))
    }
}

/// An ACL hook that allows everything (its presence is what counts).
struct Open;
impl AclHook for Open {}

/// An event hook that renames every unsubscribed filter.
struct Rename;
impl EventHook for Rename {
    fn on_unsubscribe(&self, _: &Client, filters: &mut [ByteStr]) {
        for f in filters {
            *f = format!("renamed/{f}").as_str().into();
        }
    }
}

fn auth_hooks(verdict: Result<(), ReasonCode>) -> Hooks {
    Hooks {
        auth: vec![Arc::new(Verdict(verdict))],
        ..Default::default()
    }
}

fn bytes_of(packet: &Packet, version: ProtocolVersion) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode(packet, version, &mut out).unwrap();
    out.to_vec()
}

// ----- CONNECT -----------------------------------------------------------

#[test]
fn plain_connect_is_admitted_at_once() {
    let (a, next) = start(
        connect(ProtocolVersion::V3_1_1),
        TransportUser::FromConnect,
        &Hooks::default(),
    );
    assert!(matches!(next, Next::Admitted), "{next:?}");
    let admitted = a.admitted(&Options::default());
    assert_eq!(admitted.client.client_id, "c1");
    assert_eq!(admitted.client.username.as_deref(), Some("alice"));
    assert!(!admitted.enhanced_auth);
    assert_eq!(admitted.ingress.auth_method(), "");
}

#[test]
fn a_certificate_user_replaces_the_connects() {
    let (a, next) = start(
        connect(ProtocolVersion::V5),
        TransportUser::Named("cert-user".into()),
        &Hooks::default(),
    );
    assert!(matches!(next, Next::Admitted));
    assert_eq!(a.client().username.as_deref(), Some("cert-user"));
    let admitted = a.admitted(&Options::default());
    assert_eq!(admitted.connect.username.as_deref(), Some("cert-user"));
}

#[test]
fn a_certificate_without_a_user_is_refused_before_any_hook() {
    let (_, next) = start(
        connect(ProtocolVersion::V5),
        TransportUser::Missing,
        &auth_hooks(Ok(())),
    );
    assert_eq!(refused_with(&next), Some(ReasonCode::NotAuthorized));
}

#[test]
fn a_certificate_client_id_replaces_the_connects_before_the_hooks_see_it() {
    let (mut a, next) = start_named(
        connect(ProtocolVersion::V5),
        TransportClientId::Named("dev-1".into()),
        &auth_hooks(Ok(())),
    );
    assert!(matches!(next, Next::Authenticate), "{next:?}");
    let (client, connect, _) = a.connect_mut();
    assert_eq!(client.client_id, "dev-1");
    assert_eq!(connect.client_id, "dev-1");
    assert!(matches!(a.authenticated(Ok(())), Next::Admitted));
    let admitted = a.admitted(&Options::default());
    assert_eq!(admitted.client.client_id, "dev-1");
    assert_eq!(admitted.connect.client_id, "dev-1");
    assert!(!admitted.id_assigned, "the CONNECT had an id of its own");
}

#[test]
fn a_certificate_client_id_for_an_empty_one_is_assigned() {
    let mut c = connect(ProtocolVersion::V5);
    c.client_id = "".into();
    let (a, next) = start_named(
        c,
        TransportClientId::Named("dev-1".into()),
        &Hooks::default(),
    );
    assert!(matches!(next, Next::Admitted));
    let admitted = a.admitted(&Options::default());
    assert_eq!(admitted.connect.client_id, "dev-1");
    assert!(admitted.id_assigned);
}

#[test]
fn a_missing_certificate_client_id_is_refused_before_any_hook() {
    let (_, next) = start_named(
        connect(ProtocolVersion::V3_1_1),
        TransportClientId::Missing,
        &auth_hooks(Ok(())),
    );
    assert_eq!(refused_with(&next), Some(ReasonCode::NotAuthorized));
}

#[test]
fn auth_hooks_decide_and_their_refusal_is_the_connack() {
    let hooks = auth_hooks(Ok(()));
    let (mut a, next) = start(
        connect(ProtocolVersion::V5),
        TransportUser::FromConnect,
        &hooks,
    );
    assert!(matches!(next, Next::Authenticate));
    assert!(matches!(a.authenticated(Ok(())), Next::Admitted));

    let (mut a, _) = start(
        connect(ProtocolVersion::V3_1_1),
        TransportUser::FromConnect,
        &hooks,
    );
    let next = a.authenticated(Err(ReasonCode::BadUserNameOrPassword));
    assert_eq!(refused_with(&next), Some(ReasonCode::BadUserNameOrPassword));
    // Encoded for 3.1.1 it is return code 4.
    let Next::Refuse(connack) = next else {
        unreachable!()
    };
    assert_eq!(bytes_of(&connack, ProtocolVersion::V3_1_1), [0x20, 2, 0, 4]);
}

#[test]
fn a_hook_changing_the_client_id_changes_the_client() {
    let (mut a, next) = start(
        connect(ProtocolVersion::V5),
        TransportUser::FromConnect,
        &auth_hooks(Ok(())),
    );
    assert!(matches!(next, Next::Authenticate));
    a.connect_mut().1.client_id = "renamed".into();
    assert!(matches!(a.authenticated(Ok(())), Next::Admitted));
    assert_eq!(a.client().client_id, "renamed");
}

#[test]
fn a_will_is_judged_by_the_publish_acl() {
    let will = |c: &mut Connect| {
        c.will = Some(LastWill {
            topic: "last/words".into(),
            payload: Bytes::new(),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: Default::default(),
        })
    };
    let mut c = connect(ProtocolVersion::V5);
    will(&mut c);
    let (mut a, next) = start(c, TransportUser::FromConnect, &Hooks::default());
    assert!(matches!(next, Next::CheckWill));
    assert_eq!(a.will_topic(), "last/words");
    assert_eq!(
        refused_with(&a.will_checked(false)),
        Some(ReasonCode::NotAuthorized)
    );
    assert!(matches!(a.will_checked(true), Next::Admitted));
}

#[test]
fn enhanced_auth_challenges_then_succeeds() {
    let (mut a, next) = start(
        with_method("SCRAM", b"first"),
        TransportUser::FromConnect,
        &Hooks::default(),
    );
    assert!(matches!(&next, Next::EnhancedAuth(Some(d)) if d == "first"));
    assert_eq!(a.auth_method(), "SCRAM");
    // The hooks challenge: an AUTH 0x18 with the method goes out.
    let next = a.enhanced_auth(AuthStep::Continue(Bytes::from_static(b"nonce")));
    let Next::Challenge(challenge) = next else {
        panic!("{next:?}")
    };
    assert_eq!(
        challenge,
        auth(ReasonCode::ContinueAuthentication, "SCRAM", b"nonce")
    );
    // The client's answer goes back to the hooks.
    let next = a.auth_answer(Some(auth(
        ReasonCode::ContinueAuthentication,
        "SCRAM",
        b"proof",
    )));
    assert!(matches!(&next, Next::EnhancedAuth(Some(d)) if d == "proof"));
    let next = a.enhanced_auth(AuthStep::Success(Some(Bytes::from_static(b"final"))));
    assert!(matches!(next, Next::Admitted), "{next:?}");
    let admitted = a.admitted(&Options::default());
    assert!(admitted.enhanced_auth);
    // The server's final data goes back in CONNACK.
    assert_eq!(
        admitted.connect.properties.authentication_data.as_deref(),
        Some(&b"final"[..])
    );
    assert_eq!(admitted.ingress.auth_method(), "SCRAM");
}

#[test]
fn enhanced_auth_refusals() {
    let hooks = Hooks::default();
    let fresh = || start(with_method("M", b""), TransportUser::FromConnect, &hooks).0;
    // No hook knows the method ([MQTT-4.12.0-1]).
    assert_eq!(
        refused_with(&fresh().enhanced_auth(AuthStep::Unsupported)),
        Some(ReasonCode::BadAuthenticationMethod)
    );
    assert_eq!(
        refused_with(&fresh().enhanced_auth(AuthStep::Fail(ReasonCode::NotAuthorized))),
        Some(ReasonCode::NotAuthorized)
    );
    // Anything but AUTH 0x18 with the same method is a protocol error,
    // and so is no answer at all.
    for answer in [
        None,
        Some(auth(ReasonCode::ContinueAuthentication, "other", b"")),
        Some(auth(ReasonCode::ReAuthenticate, "M", b"")),
        Some(Packet::PingReq),
    ] {
        assert_eq!(
            refused_with(&fresh().auth_answer(answer.clone())),
            Some(ReasonCode::ProtocolError),
            "{answer:?}"
        );
    }
}

#[test]
fn enhanced_auth_is_for_5_0_only_and_then_the_auth_hooks_run() {
    // A 3.1.1 CONNECT cannot carry the property; if one did, it is ignored.
    let mut c = with_method("M", b"");
    c.protocol = ProtocolVersion::V3_1_1;
    let (_, next) = start(c, TransportUser::FromConnect, &Hooks::default());
    assert!(matches!(next, Next::Admitted));
    // After enhanced authentication, the auth hooks still see the CONNECT,
    // told it is authenticated.
    let (mut a, _) = start(
        with_method("M", b""),
        TransportUser::FromConnect,
        &auth_hooks(Ok(())),
    );
    assert!(matches!(
        a.enhanced_auth(AuthStep::Success(None)),
        Next::Authenticate
    ));
    assert!(a.connect_mut().2);
}

#[test]
fn a_connect_that_does_not_decode() {
    use crate::codec::DecodeError;
    assert_eq!(
        admit::malformed_connect(DecodeError::UnsupportedProtocolVersion(6)),
        Malformed::Refuse(
            ProtocolVersion::V3_1_1,
            ReasonCode::UnsupportedProtocolVersion
        )
    );
    assert_eq!(
        admit::malformed_connect(DecodeError::PacketTooLarge { size: 10, max: 5 }),
        Malformed::TooLarge
    );
    assert_eq!(
        admit::malformed_connect(DecodeError::InvalidProtocolName),
        Malformed::Close
    );
    assert_eq!(admit::too_large(Some(5)), Some(ProtocolVersion::V5));
    assert_eq!(admit::too_large(Some(4)), None);
    assert_eq!(admit::too_large(None), None);
    // The bytes the tests in tests/malformed.rs and tests/limits.rs expect.
    assert_eq!(
        bytes_of(
            &admit::refusal(ReasonCode::UnsupportedProtocolVersion),
            ProtocolVersion::V3_1_1
        ),
        [0x20, 2, 0, 1]
    );
    assert_eq!(
        bytes_of(
            &admit::refusal(ReasonCode::PacketTooLarge),
            ProtocolVersion::V5
        ),
        [0x20, 3, 0, 0x95, 0]
    );
}

// ----- after CONNECT -----------------------------------------------------

fn client() -> Arc<Client> {
    Arc::new(Client {
        client_id: "c1".into(),
        username: None,
        remote_addr: None,
        certificate: None,
        protocol: ProtocolVersion::V5,
        inline: false,
    })
}

fn ingress(enhanced: Option<&str>, alias_max: u16, alias_budget: usize) -> Ingress {
    Ingress::new(
        client(),
        enhanced.map(ByteStr::from),
        InboundAliases::new(alias_max, alias_budget),
    )
}

fn publish_packet(topic: &str, alias: Option<u16>) -> Packet {
    Packet::Publish(super::alias::aliased(topic, alias))
}

fn subscribe_packet() -> Subscribe {
    Subscribe {
        packet_id: NonZeroU16::new(7).unwrap(),
        filters: vec![
            ("a/#".into(), SubscriptionOptions::default()),
            ("b".into(), SubscriptionOptions::default()),
        ],
        subscription_identifier: NonZeroU32::new(3),
        user_properties: UserProperties::new(),
    }
}

#[test]
fn aliases_resolve_and_their_errors_close() {
    let stats = Stats::default();
    let hooks = Hooks::default();
    let mut i = ingress(None, 2, 1 << 20);
    let set = i.packet(publish_packet("a/b", Some(1)), &hooks, &stats);
    assert!(
        matches!(&set, Inbound::Core(ToCore::Publish(p, PublishVerdict::Deliver))
        if p.topic == "a/b" && p.properties.topic_alias.is_none())
    );
    let used = i.packet(publish_packet("", Some(1)), &hooks, &stats);
    assert!(matches!(&used, Inbound::Core(ToCore::Publish(p, _)) if p.topic == "a/b"));
    // Above the maximum ([MQTT-3.3.2-9]); never set up.
    assert!(matches!(
        i.packet(publish_packet("x", Some(3)), &hooks, &stats),
        Inbound::Close(ReasonCode::TopicAliasInvalid)
    ));
    assert!(matches!(
        i.packet(publish_packet("", Some(2)), &hooks, &stats),
        Inbound::Close(ReasonCode::ProtocolError)
    ));
    assert_eq!(stats.snapshot().topic_alias_refused, 0);
}

#[test]
fn an_alias_over_the_byte_budget_is_counted() {
    let stats = Stats::default();
    let mut i = ingress(None, 10, 8 + alias::ALIAS_OVERHEAD);
    let mut p = Publish {
        dup: false,
        qos_pid: QosPid::AtMostOnce,
        retain: false,
        topic: "too/long/for/the/budget".into(),
        payload: Bytes::new(),
        properties: PublishProperties {
            topic_alias: NonZeroU16::new(1),
            ..Default::default()
        },
    };
    assert_eq!(
        i.resolve_alias(&mut p, &stats),
        Err(ReasonCode::QuotaExceeded)
    );
    assert_eq!(stats.snapshot().topic_alias_refused, 1);
}

#[test]
fn publish_goes_through_the_hooks_only_when_there_are_any() {
    let stats = Stats::default();
    let mut i = ingress(None, 0, 0);
    let none = Hooks::default();
    assert!(matches!(
        i.packet(publish_packet("t", None), &none, &stats),
        Inbound::Core(ToCore::Publish(_, PublishVerdict::Deliver))
    ));
    let acl = Hooks {
        acl: vec![Arc::new(Open)],
        ..Default::default()
    };
    assert!(matches!(
        i.packet(publish_packet("t", None), &acl, &stats),
        Inbound::Ask(Ask::Publish(p)) if p.topic == "t"
    ));
}

#[test]
fn subscribe_check_outcomes() {
    let stats = Stats::default();
    let mut i = ingress(None, 0, 0);
    let want = CheckedSubscribe {
        packet_id: NonZeroU16::new(7).unwrap(),
        filters: vec![
            ("a/#".into(), SubscriptionOptions::default(), Ok(())),
            ("b".into(), SubscriptionOptions::default(), Ok(())),
        ],
        subscription_identifier: NonZeroU32::new(3),
    };
    // No hook: every filter admitted, straight to the core.
    let no_hooks = i.packet(
        Packet::Subscribe(subscribe_packet()),
        &Hooks::default(),
        &stats,
    );
    assert!(matches!(&no_hooks, Inbound::Core(ToCore::Subscribe(s)) if *s == want));
    // With hooks: the same, for `Hooks::subscribe` to judge first; the
    // inline client gets the same from the same function.
    let acl = Hooks {
        acl: vec![Arc::new(Open)],
        ..Default::default()
    };
    let hooked = i.packet(Packet::Subscribe(subscribe_packet()), &acl, &stats);
    assert!(matches!(&hooked, Inbound::Ask(Ask::Subscribe(s)) if *s == want));
    assert!(matches!(
        subscribe(subscribe_packet(), &acl),
        Inbound::Ask(Ask::Subscribe(s)) if s == want
    ));
}

#[test]
fn unsubscribe_runs_the_event_hooks_here() {
    let stats = Stats::default();
    let mut i = ingress(None, 0, 0);
    let hooks = Hooks {
        events: vec![Arc::new(Rename)],
        ..Default::default()
    };
    let unsub = Packet::Unsubscribe(Unsubscribe {
        packet_id: NonZeroU16::new(1).unwrap(),
        filters: vec!["x".into()],
        user_properties: UserProperties::new(),
    });
    let out = i.packet(unsub, &hooks, &stats);
    assert!(
        matches!(&out, Inbound::Core(ToCore::Packet(Packet::Unsubscribe(u)))
        if u.filters == vec![ByteStr::from("renamed/x")])
    );
}

#[test]
fn disconnect_is_the_last_packet_and_acks_pass() {
    let stats = Stats::default();
    let hooks = Hooks::default();
    let mut i = ingress(None, 0, 0);
    let d = Packet::Disconnect(Default::default());
    assert!(matches!(
        i.packet(d, &hooks, &stats),
        Inbound::Last(Packet::Disconnect(_))
    ));
    let ack = Packet::PubAck(PubResp::new(NonZeroU16::new(1).unwrap()));
    assert!(matches!(
        i.packet(ack, &hooks, &stats),
        Inbound::Core(ToCore::Packet(Packet::PubAck(_)))
    ));
}

#[test]
fn reauthentication_sequence() {
    let stats = Stats::default();
    let hooks = Hooks::default();
    let mut i = ingress(Some("SCRAM"), 0, 0);
    // The client starts it (0x19), with the method it authenticated with.
    let start = i.packet(
        auth(ReasonCode::ReAuthenticate, "SCRAM", b"a"),
        &hooks,
        &stats,
    );
    assert!(matches!(&start, Inbound::Ask(Ask::ReAuth(Some(d))) if d == "a"));
    assert_eq!(i.auth_method(), "SCRAM");
    // The hooks challenge, the client answers, the hooks accept.
    assert_eq!(
        i.reauthenticated(AuthStep::Continue(Bytes::from_static(b"c"))),
        Ok(auth(ReasonCode::ContinueAuthentication, "SCRAM", b"c"))
    );
    let answer = i.packet(
        auth(ReasonCode::ContinueAuthentication, "SCRAM", b"b"),
        &hooks,
        &stats,
    );
    assert!(matches!(&answer, Inbound::Ask(Ask::ReAuth(Some(d))) if d == "b"));
    assert_eq!(
        i.reauthenticated(AuthStep::Success(None)),
        Ok(Packet::Auth(Auth {
            reason: ReasonCode::Success,
            properties: AuthProperties {
                authentication_method: Some("SCRAM".into()),
                ..Default::default()
            },
        }))
    );
    // Refusals close the connection.
    assert_eq!(
        i.reauthenticated(AuthStep::Fail(ReasonCode::NotAuthorized)),
        Err(ReasonCode::NotAuthorized)
    );
    assert_eq!(
        i.reauthenticated(AuthStep::Unsupported),
        Err(ReasonCode::BadAuthenticationMethod)
    );
    // Another method, or a reason other than 0x18/0x19: protocol error.
    for bad in [
        auth(ReasonCode::ReAuthenticate, "other", b""),
        auth(ReasonCode::Success, "SCRAM", b""),
    ] {
        assert!(matches!(
            i.packet(bad, &hooks, &stats),
            Inbound::Close(ReasonCode::ProtocolError)
        ));
    }
}

#[test]
fn auth_without_enhanced_authentication_goes_to_the_core() {
    // The core answers it with DISCONNECT 0x82 ([MQTT-4.12.0-7]).
    let stats = Stats::default();
    let mut i = ingress(None, 0, 0);
    let out = i.packet(
        auth(ReasonCode::ReAuthenticate, "SCRAM", b""),
        &Hooks::default(),
        &stats,
    );
    assert!(matches!(
        out,
        Inbound::Core(ToCore::Packet(Packet::Auth(_)))
    ));
}

#[test]
fn batchable_packet_types() {
    let none = Hooks::default();
    let acl = Hooks {
        acl: vec![Arc::new(Open)],
        ..Default::default()
    };
    for t in [
        PacketType::PubAck,
        PacketType::PubRec,
        PacketType::PubRel,
        PacketType::PubComp,
        PacketType::PingReq,
    ] {
        assert!(Ingress::batchable(t, &none) && Ingress::batchable(t, &acl));
    }
    assert!(Ingress::batchable(PacketType::Publish, &none));
    assert!(!Ingress::batchable(PacketType::Publish, &acl));
    for t in [
        PacketType::Subscribe,
        PacketType::Unsubscribe,
        PacketType::Disconnect,
        PacketType::Auth,
        PacketType::Connect,
    ] {
        assert!(!Ingress::batchable(t, &none));
    }
}

/// Every connection keeps one `Arc<Client>` for its whole life (its
/// ingress and its session share it): 120 bytes and the Arc's two counts,
/// a 144-byte chunk from glibc's malloc. The certificate's subject (16
/// bytes, d925bb3) took it from a 128-byte chunk, and most of the idle
/// connection's growth from 1.34 to 1.43 KiB came with it (50-60 bytes
/// each, BENCHMARKS.md, idle); a field more costs every idle connection
/// again.
#[test]
#[cfg(target_pointer_width = "64")]
fn an_admitted_client_stays_small() {
    let size = std::mem::size_of::<Client>();
    assert!(size <= 120, "hooks::Client is {size} bytes");
    let (admission, next) = start(
        connect(ProtocolVersion::V5),
        TransportUser::FromConnect,
        &Hooks::default(),
    );
    assert!(
        matches!(next, Next::Authenticate | Next::Admitted),
        "{next:?}"
    );
    let admitted = admission.admitted(&Options::default());
    // One allocation, shared: the core's session gets this Arc, not a copy.
    assert!(Arc::ptr_eq(&admitted.client, admitted.ingress.client()));
}
