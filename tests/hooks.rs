//! Hooks with real clients: refusals give the right reason codes, hooks see
//! events in the documented order, a modified publish is delivered
//! modified, a slow async auth hook does not stall other connections.

mod common;
use common::*;
use roost::codec::{ByteStr, Connect, Packet, ProtocolVersion, Publish, QoS, ReasonCode};
use roost::hooks::{
    AclHook, AuthHook, BoxFuture, Client, Decision, EventHook, PublishVerdict, WillMessage,
};
use roost::{Options, Server};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn with_password(mut c: Connect, user: &str, pass: &str) -> Connect {
    c.username = Some(user.into());
    c.password = Some(bytes::Bytes::copy_from_slice(pass.as_bytes()));
    c
}

/// Accepts user "good" with password "secret"; user "slow" after half a
/// second (a database that takes its time).
struct Passwords;

impl AuthHook for Passwords {
    fn authenticate<'a>(&'a self, _: &'a Client, c: &'a Connect) -> BoxFuture<'a, Decision> {
        Box::pin(async move {
            let user = c.username.as_deref().unwrap_or("");
            let pass = c.password.as_deref().unwrap_or(b"");
            match (user, pass) {
                ("good", b"secret") => Decision::Allow,
                ("slow", b"secret") => {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    Decision::Allow
                }
                _ => Decision::Deny,
            }
        })
    }
}

#[tokio::test]
async fn bad_credentials_are_refused_with_the_right_code() {
    let b = TestBroker::with_server(Server::new(Options::default()).auth_hook(Passwords)).await;
    let (_, ack) = Raw::connect(b.addr, with_password(v5("a"), "good", "wrong")).await;
    assert_eq!(ack.reason, ReasonCode::BadUserNameOrPassword);
    let mut raw = Raw::open(b.addr, ProtocolVersion::V3_1_1).await;
    raw.send(Packet::Connect(Box::new(with_password(
        v311("b"),
        "nobody",
        "x",
    ))))
    .await;
    // 3.1.1 return code 4: bad user name or password.
    let got = raw.expect_closed().await;
    assert!(
        matches!(&got[..], [Packet::ConnAck(a)] if a.reason == ReasonCode::BadUserNameOrPassword),
        "{got:?}"
    );
    Raw::connected(b.addr, with_password(v5("c"), "good", "secret")).await;
}

#[tokio::test]
async fn a_slow_auth_hook_does_not_stall_other_connections() {
    let b = TestBroker::with_server(Server::new(Options::default()).auth_hook(Passwords)).await;
    let addr = b.addr;
    let slow = tokio::spawn(async move {
        let started = Instant::now();
        Raw::connected(addr, with_password(v5("slow"), "slow", "secret")).await;
        started.elapsed()
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = Instant::now();
    let mut s = Raw::connected(addr, with_password(v5("s"), "good", "secret")).await;
    s.subscribe(1, "t", QoS::AtMostOnce).await;
    let mut p = Raw::connected(addr, with_password(v5("p"), "good", "secret")).await;
    p.publish(publish("t", "x", QoS::AtLeastOnce, 1)).await;
    s.recv_publish().await;
    let fast = started.elapsed();
    let slow = slow.await.unwrap();
    assert!(
        slow >= Duration::from_millis(500),
        "the slow hook ran: {slow:?}"
    );
    assert!(
        fast < Duration::from_millis(400),
        "others were not held up: {fast:?}"
    );
}

/// Denies publishing to and subscribing to "secret/#", and delivering
/// anything under "private/" to clients other than "owner".
struct Rules;

impl AclHook for Rules {
    fn can_publish<'a>(&'a self, _: &'a Client, topic: &'a str) -> BoxFuture<'a, Decision> {
        let d = if topic.starts_with("secret/") {
            Decision::Deny
        } else {
            Decision::Defer
        };
        Box::pin(std::future::ready(d))
    }
    fn can_subscribe<'a>(&'a self, _: &'a Client, filter: &'a str) -> BoxFuture<'a, Decision> {
        let d = if filter.starts_with("secret/") {
            Decision::Deny
        } else {
            Decision::Defer
        };
        Box::pin(std::future::ready(d))
    }
    fn can_receive(&self, client: &Client, m: &roost::Message) -> Decision {
        if m.topic.starts_with("private/") && client.client_id != "owner" {
            Decision::Deny
        } else {
            Decision::Defer
        }
    }
}

#[tokio::test]
async fn acl_refusals_give_0x87_or_0x80_and_nothing_leaks() {
    let b = TestBroker::with_server(Server::new(Options::default()).acl_hook(Rules)).await;
    let mut watcher = Raw::connected(b.addr, v5("watcher")).await;
    watcher.subscribe(1, "#", QoS::AtLeastOnce).await;
    let mut owner = Raw::connected(b.addr, v5("owner")).await;
    owner.subscribe(1, "private/#", QoS::AtLeastOnce).await;

    let mut c5 = Raw::connected(b.addr, v5("c5")).await;
    let ack = c5
        .subscribe_with(subscribe(
            2,
            &[
                ("secret/x", opts(QoS::AtLeastOnce)),
                ("open/x", opts(QoS::AtLeastOnce)),
            ],
        ))
        .await;
    assert_eq!(
        ack.reasons,
        vec![ReasonCode::NotAuthorized, ReasonCode::GrantedQos1]
    );
    let mut c3 = Raw::connected(b.addr, v311("c3")).await;
    let ack = c3.subscribe(2, "secret/#", QoS::AtMostOnce).await;
    assert_eq!(
        ack.reasons,
        vec![ReasonCode::UnspecifiedError],
        "0x80 on the wire for 3.1.1"
    );

    assert_eq!(
        c5.publish(publish("secret/x", "no", QoS::AtLeastOnce, 3))
            .await,
        ReasonCode::NotAuthorized
    );
    c5.publish(publish("private/x", "mine", QoS::AtLeastOnce, 4))
        .await;
    assert_eq!(payload(&owner.recv_publish().await), "mine");
    // The refused publish went nowhere; the private one only to its owner.
    watcher.expect_nothing().await;
}

/// Records every event as a line.
#[derive(Default, Clone)]
struct Recorder(Arc<Mutex<Vec<String>>>);

impl Recorder {
    fn push(&self, s: String) {
        self.0.lock().unwrap().push(s);
    }
    fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

impl EventHook for Recorder {
    fn on_session_established(&self, c: &Client, present: bool) {
        self.push(format!("established {} {present}", c.client_id));
    }
    fn on_subscribed(&self, c: &Client, f: &[(ByteStr, ReasonCode)]) {
        self.push(format!("subscribed {} {}", c.client_id, f[0].0));
    }
    fn on_publish(&self, c: &Client, p: &mut Publish) -> PublishVerdict {
        self.push(format!("publish {} {}", c.client_id, p.topic));
        match &*p.topic {
            "shout" => {
                p.payload = bytes::Bytes::from(payload(p).to_uppercase());
                PublishVerdict::Deliver
            }
            "full" => PublishVerdict::Refuse(ReasonCode::QuotaExceeded),
            "hole" => PublishVerdict::Swallow,
            _ => PublishVerdict::Deliver,
        }
    }
    fn on_published(&self, _: Option<&Client>, m: &roost::Message, n: usize) {
        self.push(format!("published {} to {n}", m.topic));
    }
    fn on_qos_complete(&self, c: &Client, _: u16, q: QoS) {
        self.push(format!("complete {} {q:?}", c.client_id));
    }
    fn on_unsubscribed(&self, c: &Client, f: &[ByteStr]) {
        self.push(format!("unsubscribed {} {}", c.client_id, f[0]));
    }
    fn on_disconnect(&self, c: &Client, r: Option<ReasonCode>, ends: bool) {
        self.push(format!("disconnect {} {r:?} {ends}", c.client_id));
    }
    fn on_will(&self, id: &str, w: &mut WillMessage) -> bool {
        self.push(format!("will {id}"));
        w.payload = bytes::Bytes::from_static(b"rewritten");
        true
    }
    fn on_will_sent(&self, id: &str, _: &roost::Message) {
        self.push(format!("will sent {id}"));
    }
    fn on_retained(&self, topic: &str, m: Option<&roost::Message>) {
        self.push(format!("retained {topic} {}", m.is_some()));
    }
}

#[tokio::test]
async fn events_arrive_in_order_and_publishes_can_be_changed() {
    let rec = Recorder::default();
    let b = TestBroker::with_server(Server::new(Options::default()).event_hook(rec.clone())).await;
    let mut s = Raw::connected(b.addr, v5("s")).await;
    s.subscribe(1, "#", QoS::AtLeastOnce).await;
    let mut p = Raw::connected(b.addr, v5("p")).await;
    assert!(p
        .publish(publish("shout", "hello", QoS::AtLeastOnce, 1))
        .await
        .is_success());
    let m = s.recv_publish().await;
    assert_eq!(payload(&m), "HELLO", "delivered as modified");
    s.ack(&m).await;
    s.sync().await;
    assert_eq!(
        p.publish(publish("full", "x", QoS::AtLeastOnce, 2)).await,
        ReasonCode::QuotaExceeded
    );
    assert_eq!(
        p.publish(publish("hole", "x", QoS::AtLeastOnce, 3)).await,
        ReasonCode::Success
    );
    s.expect_nothing().await;
    p.publish(retained("kept", "r", QoS::AtMostOnce, 1)).await;
    let m = s.recv_publish().await;
    s.ack(&m).await;
    s.unsubscribe(2, &["#"]).await;
    s.disconnect().await;
    let mut w = v5("w");
    w.will = Some(will("wills/w", "original", QoS::AtMostOnce, false));
    Raw::connected(b.addr, w).await.drop_connection();
    // Wait for the will to be reported.
    let deadline = Instant::now() + WAIT;
    while !rec.lines().iter().any(|l| l == "will sent w") {
        assert!(Instant::now() < deadline, "{:?}", rec.lines());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let expected = [
        "established s false",
        "subscribed s #",
        "established p false",
        "publish p shout",
        "published shout to 1",
        "complete s AtLeastOnce",
        "publish p full",
        "publish p hole",
        "publish p kept",
        "retained kept true",
        "published kept to 1",
        "unsubscribed s #",
        "disconnect s Some(Success) true",
        "established w false",
        "disconnect w None true",
        "will w",
        "will sent w",
    ];
    assert_eq!(rec.lines(), expected);
}

#[tokio::test]
async fn acl_hooks_combine_first_decision_wins() {
    struct Fixed(Decision);
    impl AclHook for Fixed {
        fn can_publish<'a>(&'a self, _: &'a Client, _: &'a str) -> BoxFuture<'a, Decision> {
            Box::pin(std::future::ready(self.0))
        }
    }
    for (first, second, allowed) in [
        (Decision::Defer, Decision::Deny, false),
        (Decision::Allow, Decision::Deny, true),
        (Decision::Deny, Decision::Allow, false),
        (Decision::Defer, Decision::Defer, true),
    ] {
        let server = Server::new(Options::default())
            .acl_hook(Fixed(first))
            .acl_hook(Fixed(second));
        let b = TestBroker::with_server(server).await;
        let mut p = Raw::connected(b.addr, v5("p")).await;
        let r = p.publish(publish("t", "x", QoS::AtLeastOnce, 1)).await;
        assert_eq!(
            r != ReasonCode::NotAuthorized,
            allowed,
            "{first:?} then {second:?}"
        );
        b.stop().await;
    }
}

/// A toy challenge-response method: CONNECT carries "hello", the broker
/// challenges with "2+2?", the client must answer "4".
struct Arithmetic;

impl AuthHook for Arithmetic {
    fn enhanced_auth<'a>(
        &'a self,
        _: &'a Client,
        method: &'a str,
        data: Option<&'a [u8]>,
    ) -> BoxFuture<'a, roost::hooks::AuthStep> {
        use roost::hooks::AuthStep;
        let step = match (method, data) {
            ("arith", Some(b"hello")) => AuthStep::Continue(bytes::Bytes::from_static(b"2+2?")),
            ("arith", Some(b"4")) => AuthStep::Success(Some(bytes::Bytes::from_static(b"welcome"))),
            ("arith", _) => AuthStep::Fail(ReasonCode::NotAuthorized),
            _ => AuthStep::Unsupported,
        };
        Box::pin(std::future::ready(step))
    }
}

fn auth(reason: ReasonCode, method: &str, data: &'static [u8]) -> Packet {
    let mut properties = roost::codec::AuthProperties::default();
    properties.authentication_method = Some(method.into());
    properties.authentication_data = Some(bytes::Bytes::from_static(data));
    Packet::Auth(roost::codec::Auth::new(reason).with_properties(properties))
}

fn enhanced_connect(id: &str, method: &str, data: &'static [u8]) -> Connect {
    let mut c = v5(id);
    c.properties.authentication_method = Some(method.into());
    c.properties.authentication_data = Some(bytes::Bytes::from_static(data));
    c
}

#[tokio::test]
async fn enhanced_authentication_and_reauthentication_reach_the_hook() {
    let b = TestBroker::with_server(Server::new(Options::default()).auth_hook(Arithmetic)).await;

    // Challenge, right answer, CONNACK with the method and the final data.
    let mut c = Raw::open(b.addr, ProtocolVersion::V5).await;
    c.send(Packet::Connect(Box::new(enhanced_connect(
        "e", "arith", b"hello",
    ))))
    .await;
    match c.recv().await {
        Packet::Auth(a) => {
            assert_eq!(a.reason, ReasonCode::ContinueAuthentication);
            assert_eq!(
                a.properties.authentication_data.as_deref(),
                Some(&b"2+2?"[..])
            );
        }
        other => panic!("expected AUTH, got {other:?}"),
    }
    c.send(auth(ReasonCode::ContinueAuthentication, "arith", b"4"))
        .await;
    match c.recv().await {
        Packet::ConnAck(a) => {
            assert_eq!(a.reason, ReasonCode::Success);
            assert_eq!(a.properties.authentication_method.as_deref(), Some("arith"));
            assert_eq!(
                a.properties.authentication_data.as_deref(),
                Some(&b"welcome"[..])
            );
        }
        other => panic!("expected CONNACK, got {other:?}"),
    }
    // Re-authentication during the session.
    c.send(auth(ReasonCode::ReAuthenticate, "arith", b"hello"))
        .await;
    assert!(
        matches!(c.recv().await, Packet::Auth(a) if a.reason == ReasonCode::ContinueAuthentication)
    );
    c.send(auth(ReasonCode::ContinueAuthentication, "arith", b"4"))
        .await;
    assert!(matches!(c.recv().await, Packet::Auth(a) if a.reason == ReasonCode::Success));
    c.sync().await;

    // A wrong answer is refused with the hook's code.
    let mut w = Raw::open(b.addr, ProtocolVersion::V5).await;
    w.send(Packet::Connect(Box::new(enhanced_connect(
        "w", "arith", b"hello",
    ))))
    .await;
    assert!(matches!(w.recv().await, Packet::Auth(_)));
    w.send(auth(ReasonCode::ContinueAuthentication, "arith", b"5"))
        .await;
    let got = w.expect_closed().await;
    assert!(
        matches!(&got[..], [Packet::ConnAck(a)] if a.reason == ReasonCode::NotAuthorized),
        "{got:?}"
    );

    // A method no hook knows: 0x8C.
    let (_, ack) = Raw::connect(b.addr, enhanced_connect("u", "kerberos", b"x")).await;
    assert_eq!(ack.reason, ReasonCode::BadAuthenticationMethod);
}
