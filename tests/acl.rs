//! Every path that creates a delivery goes through the ACL: PUBLISH, wills
//! (at CONNECT and when they fire), retained messages on subscribe, the
//! choice of a shared subscription's member, a resumed session's queued
//! and in-flight messages, and the inline client when the ACL applies to
//! it. Regression tests for the holes found in issue 14 (with the sample
//! ledger of `examples/ledger.toml`), then a property test over all the
//! paths at once.

mod common;
use common::*;
use roost::codec::{Connect, Packet, ProtocolVersion, PubResp, QoS, QosPid, ReasonCode};
use roost::hooks::{
    hash_password_with_cost, AclHook, BoxFuture, Client as HookClient, Decision, EventHook, Ledger,
    SharedLedger, WillMessage,
};
use roost::{Options, Server};
use std::sync::{Arc, OnceLock};

/// bcrypt of "secret" at cost 4, so tests stay fast.
fn hash() -> &'static str {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| hash_password_with_cost("secret", 4).unwrap())
}

/// `examples/ledger.toml` as shipped, its rules untouched, with every
/// password hash replaced by a cheap one of "secret".
fn sample_ledger_source() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/ledger.toml");
    let src = std::fs::read_to_string(path).unwrap();
    src.lines()
        .map(|l| {
            if l.starts_with("password = \"$2b$") {
                format!("password = \"{}\"\n", hash())
            } else {
                format!("{l}\n")
            }
        })
        .collect()
}

fn sample_ledger() -> Ledger {
    Ledger::from_toml_str(&sample_ledger_source()).unwrap()
}

/// The sample ledger with `extra` ACL rules ahead of its own.
fn sample_ledger_with_first(extra: &str) -> Ledger {
    let src = sample_ledger_source();
    let at = src.find("[[acl]]").unwrap();
    let (head, tail) = src.split_at(at);
    Ledger::from_toml_str(&format!("{head}{extra}\n{tail}")).unwrap()
}

async fn broker_with(ledger: SharedLedger, configure: impl FnOnce(Server) -> Server) -> TestBroker {
    let server = Server::new(Options::default())
        .auth_hook(ledger.clone())
        .acl_hook(ledger);
    TestBroker::with_server(configure(server)).await
}

async fn sample_broker() -> (TestBroker, SharedLedger) {
    let ledger = SharedLedger::new(sample_ledger());
    (broker_with(ledger.clone(), |s| s).await, ledger)
}

fn login(mut c: Connect, user: &str) -> Connect {
    c.username = Some(user.into());
    c.password = Some(bytes::Bytes::from_static(b"secret"));
    c
}

async fn as_user(b: &TestBroker, c: Connect, user: &str) -> Raw {
    Raw::connected(b.addr, login(c, user)).await
}

/// Receives one PUBLISH and acknowledges it.
async fn recv_acked(c: &mut Raw) -> String {
    let p = c.recv_publish().await;
    c.ack(&p).await;
    p.topic.as_str().to_owned()
}

// ----- wills --------------------------------------------------------------

/// A will the publish ACL refuses is refused at CONNECT: 0x87 (5.0), return
/// code 5 (3.x). Before, `sensor-7` could forge a retained command for
/// `sensor-2` by dropping its connection.
#[tokio::test]
async fn a_will_the_acl_refuses_is_refused_at_connect() {
    let (b, _) = sample_broker().await;
    let mut target = as_user(&b, v5("sensor-2"), "device").await;
    target
        .subscribe(1, "commands/sensor-2", QoS::AtLeastOnce)
        .await;
    for version in [ProtocolVersion::V5, ProtocolVersion::V3_1_1] {
        for topic in ["commands/sensor-2", "$SYS/broker/version"] {
            let mut c = login(connect(version, "sensor-7", true), "device");
            c.will = Some(will(topic, "forged", QoS::AtLeastOnce, true));
            let (mut raw, ack) = Raw::connect(b.addr, c).await;
            assert_eq!(ack.reason, ReasonCode::NotAuthorized, "{version:?} {topic}");
            assert!(!ack.session_present);
            raw.expect_closed().await;
        }
    }
    // Nothing was published, nothing retained.
    target.expect_nothing().await;
    let mut admin = as_user(&b, v5("console"), "admin").await;
    admin.subscribe(1, "commands/#", QoS::AtLeastOnce).await;
    admin.expect_nothing().await;
}

/// A `$SYS` will is refused even with no hook at all, as a PUBLISH to
/// `$SYS` is.
#[tokio::test]
async fn a_sys_will_is_refused_without_hooks() {
    let b = TestBroker::start().await;
    for version in [ProtocolVersion::V5, ProtocolVersion::V3_1_1] {
        let mut c = connect(version, "w", true);
        c.will = Some(will("$SYS/broker/version", "forged", QoS::AtMostOnce, true));
        let (_, ack) = Raw::connect(b.addr, c).await;
        assert_eq!(ack.reason, ReasonCode::NotAuthorized, "{version:?}");
    }
}

/// The ACL is asked again when the will fires: the ledger may have been
/// reloaded since CONNECT.
#[tokio::test]
async fn a_will_is_checked_again_when_it_fires() {
    let (b, ledger) = sample_broker().await;
    let mut admin = as_user(&b, v5("console"), "admin").await;
    admin.subscribe(1, "devices/#", QoS::AtLeastOnce).await;
    let mut c = login(v5("sensor-3"), "device");
    c.will = Some(will(
        "devices/sensor-3/status",
        "gone",
        QoS::AtLeastOnce,
        true,
    ));
    let dev = Raw::connected(b.addr, c).await;
    // Devices lose write access to their status topic.
    ledger.replace(sample_ledger_with_first(
        "[[acl]]\nusername = \"device\"\nfilter = \"devices/+/status\"\naccess = \"read\"\n",
    ));
    dev.drop_connection();
    admin.expect_nothing().await;
    // Not retained either.
    let mut late = as_user(&b, v5("console2"), "admin").await;
    late.subscribe(1, "devices/#", QoS::AtLeastOnce).await;
    late.expect_nothing().await;
}

/// Redirects every will to another topic.
struct Redirect(&'static str);

impl EventHook for Redirect {
    fn on_will(&self, _client_id: &str, will: &mut WillMessage) -> bool {
        will.topic = self.0.into();
        true
    }
}

/// A will an event hook changed is checked as changed.
#[tokio::test]
async fn a_will_changed_by_a_hook_is_checked_as_changed() {
    let ledger = SharedLedger::new(sample_ledger());
    let b = broker_with(ledger, |s| s.event_hook(Redirect("commands/sensor-2"))).await;
    let mut target = as_user(&b, v5("sensor-2"), "device").await;
    target
        .subscribe(1, "commands/sensor-2", QoS::AtLeastOnce)
        .await;
    let mut c = login(v5("sensor-4"), "device");
    c.will = Some(will(
        "devices/sensor-4/status",
        "gone",
        QoS::AtLeastOnce,
        true,
    ));
    Raw::connected(b.addr, c).await.drop_connection();
    target.expect_nothing().await;
}

/// Judges publishing like an ACL that asks a database: not ready at the
/// first poll. Refuses topics under `denied/`.
struct SlowAcl;

impl AclHook for SlowAcl {
    fn can_publish<'a>(
        &'a self,
        _client: &'a HookClient,
        topic: &'a str,
    ) -> BoxFuture<'a, Decision> {
        Box::pin(async move {
            tokio::task::yield_now().await;
            if topic.starts_with("denied/") {
                Decision::Deny
            } else {
                Decision::Allow
            }
        })
    }
}

/// An ACL that really waits is heard at CONNECT; when the will fires (on
/// the core, which cannot wait) the CONNECT-time verdict stands for the
/// topic it judged, and a topic only an event hook chose is refused.
#[tokio::test]
async fn a_will_with_an_acl_that_waits() {
    let b = TestBroker::with_server(Server::new(Options::default()).acl_hook(SlowAcl)).await;
    let mut c = v5("w1");
    c.will = Some(will("denied/x", "x", QoS::AtLeastOnce, false));
    let (_, ack) = Raw::connect(b.addr, c).await;
    assert_eq!(ack.reason, ReasonCode::NotAuthorized);
    let mut watcher = Raw::connected(b.addr, v5("watcher")).await;
    watcher.subscribe(1, "#", QoS::AtLeastOnce).await;
    let mut c = v5("w2");
    c.will = Some(will("ok/w2", "gone", QoS::AtLeastOnce, false));
    Raw::connected(b.addr, c).await.drop_connection();
    assert_eq!(recv_acked(&mut watcher).await, "ok/w2");

    let server = Server::new(Options::default())
        .acl_hook(SlowAcl)
        .event_hook(Redirect("ok/redirected"));
    let b = TestBroker::with_server(server).await;
    let mut watcher = Raw::connected(b.addr, v5("watcher")).await;
    watcher.subscribe(1, "#", QoS::AtLeastOnce).await;
    let mut c = v5("w3");
    c.will = Some(will("ok/w3", "gone", QoS::AtLeastOnce, false));
    Raw::connected(b.addr, c).await.drop_connection();
    watcher.expect_nothing().await;
}

// ----- shared subscriptions -----------------------------------------------

/// A share group's message goes to a member that may read it; one that may
/// not is passed over instead of losing the message.
#[tokio::test]
async fn a_shared_subscription_picks_a_member_that_may_receive() {
    let (b, _) = sample_broker().await;
    let filter = "$share/g/devices/sensor-1/#";
    let mut admin = as_user(&b, v5("console"), "admin").await;
    let mut dev = as_user(&b, v5("sensor-1"), "device").await;
    assert_eq!(
        admin.subscribe(1, filter, QoS::AtLeastOnce).await.reasons,
        vec![ReasonCode::GrantedQos1]
    );
    assert_eq!(
        dev.subscribe(1, filter, QoS::AtLeastOnce).await.reasons,
        vec![ReasonCode::GrantedQos1]
    );
    let mut publ = as_user(&b, v5("publisher"), "admin").await;
    for i in 0..20 {
        let topic = format!("devices/sensor-1/debug/{i}");
        assert!(publ
            .publish(publish(&topic, "x", QoS::AtLeastOnce, i + 1))
            .await
            .is_success());
    }
    for _ in 0..20 {
        let p = admin.recv_publish().await;
        admin.ack(&p).await;
    }
    admin.expect_nothing().await;
    dev.expect_nothing().await;
}

// ----- session resume -----------------------------------------------------

/// Another user who connects with a persistent session's client id starts
/// clean: no Session Present, none of its subscriptions or queue.
#[tokio::test]
async fn another_user_cannot_resume_a_session() {
    let (b, _) = sample_broker().await;
    let mut owner = as_user(&b, v5_session("sensor-9", true, 3600), "admin").await;
    owner.subscribe(1, "secret/#", QoS::AtLeastOnce).await;
    owner.disconnect().await;
    let mut publ = as_user(&b, v5("console"), "admin").await;
    publ.publish(publish("secret/payroll", "1", QoS::AtLeastOnce, 1))
        .await;

    let (mut thief, ack) =
        Raw::connect(b.addr, login(v5_session("sensor-9", false, 3600), "device")).await;
    assert_eq!(ack.reason, ReasonCode::Success);
    assert!(!ack.session_present, "another user's session was resumed");
    thief.expect_nothing().await;
    // Its subscription went with it.
    publ.publish(publish("secret/payroll", "2", QoS::AtLeastOnce, 2))
        .await;
    thief.expect_nothing().await;
    thief.disconnect().await;

    // The same user resumes as before (the thief's session, not the old
    // one, is what is left: it has no subscriptions).
    let (mut again, ack) =
        Raw::connect(b.addr, login(v5_session("sensor-9", false, 3600), "device")).await;
    assert!(ack.session_present);
    again.expect_nothing().await;
}

/// Queued and in-flight messages are checked against the receiving
/// client's ACL when they are delivered on resume (here the ledger changed
/// while the client was away); those refused are dropped and counted.
#[tokio::test]
async fn queued_and_inflight_messages_pass_the_acl_on_resume() {
    let (b, ledger) = sample_broker().await;
    let mut c = as_user(&b, v5_session("sensor-5", true, 3600), "device").await;
    c.subscribe(1, "devices/sensor-5/#", QoS::AtLeastOnce).await;
    let mut publ = as_user(&b, v5("console"), "admin").await;
    // In flight: sent, never acknowledged.
    publ.publish(publish("devices/sensor-5/a", "1", QoS::AtLeastOnce, 1))
        .await;
    assert_eq!(c.recv_publish().await.topic.as_str(), "devices/sensor-5/a");
    c.drop_connection();
    // Queued while away.
    publ.sync().await;
    publ.publish(publish("devices/sensor-5/b", "2", QoS::AtLeastOnce, 2))
        .await;
    publ.publish(publish("devices/sensor-5/ok", "3", QoS::AtLeastOnce, 3))
        .await;
    let dropped_before = b.stats.snapshot().messages_dropped;
    // Devices may now read only their `ok` topic.
    ledger.replace(sample_ledger_with_first(
        "[[acl]]\nusername = \"device\"\nfilter = \"devices/%c/ok\"\naccess = \"readwrite\"\n\n\
         [[acl]]\nusername = \"device\"\nfilter = \"devices/%c/#\"\naccess = \"deny\"\n",
    ));
    let (mut c, ack) =
        Raw::connect(b.addr, login(v5_session("sensor-5", false, 3600), "device")).await;
    assert!(ack.session_present);
    assert_eq!(recv_acked(&mut c).await, "devices/sensor-5/ok");
    c.expect_nothing().await;
    assert_eq!(b.stats.snapshot().messages_dropped - dropped_before, 2);
}

/// A QoS 2 message sent before the client went away, which the ACL now
/// refuses, is not sent again, but its flow is released (PUBREL): the
/// client may have received it and hold its packet id until then.
#[tokio::test]
async fn a_refused_qos2_message_in_flight_is_released_on_resume() {
    let (b, ledger) = sample_broker().await;
    let mut c = as_user(&b, v5_session("sensor-6", true, 3600), "device").await;
    c.subscribe(1, "devices/sensor-6/#", QoS::ExactlyOnce).await;
    let mut publ = as_user(&b, v5("console"), "admin").await;
    publ.publish(publish("devices/sensor-6/a", "1", QoS::ExactlyOnce, 1))
        .await;
    let p = c.recv_publish().await;
    let QosPid::ExactlyOnce(pid) = p.qos_pid else {
        panic!("{p:?}")
    };
    c.drop_connection(); // before its PUBREC
    ledger.replace(sample_ledger_with_first(
        "[[acl]]\nusername = \"device\"\nfilter = \"devices/%c/#\"\naccess = \"deny\"\n",
    ));
    let dropped_before = b.stats.snapshot().messages_dropped;
    let (mut c, ack) =
        Raw::connect(b.addr, login(v5_session("sensor-6", false, 3600), "device")).await;
    assert!(ack.session_present);
    match c.recv().await {
        Packet::PubRel(r) => assert_eq!(r.packet_id, pid),
        other => panic!("expected PUBREL, got {other:?}"),
    }
    c.send(Packet::PubComp(PubResp::new(pid))).await;
    c.expect_nothing().await;
    assert_eq!(b.stats.snapshot().messages_dropped - dropped_before, 1);
    assert_eq!(b.stats.snapshot().inflight, 0, "the flow completed");
}

/// A session stored before owners were (format version 1: owner unknown)
/// is resumed by the first client the auth hooks admit with its id, as
/// before the upgrade, so the upgrade loses nothing queued for it; from
/// then on it is that user's, and another user starts clean.
#[tokio::test]
async fn a_session_stored_without_an_owner_is_adopted_by_the_first_to_resume_it() {
    use roost::storage::{Op, SessionOwner, SessionRecord, Store, SubscriptionRecord};
    let store = Arc::new(Durable::default());
    let client_id = "sensor-4".to_string();
    store
        .apply(&[
            Op::PutSession(SessionRecord {
                client_id: client_id.clone(),
                protocol_level: 5,
                expiry_interval: 3600,
                disconnected_at_ms: None,
                will: None,
                owner: SessionOwner::Unknown,
            }),
            Op::PutSubscription {
                client_id,
                subscription: SubscriptionRecord {
                    filter: "devices/sensor-4/#".into(),
                    qos: 1,
                    no_local: false,
                    retain_as_published: false,
                    retain_handling: 0,
                    subscription_identifier: None,
                },
            },
        ])
        .unwrap();
    let b = broker_with(SharedLedger::new(sample_ledger()), |s| {
        s.store(store.clone())
    })
    .await;
    let (mut dev, ack) =
        Raw::connect(b.addr, login(v5_session("sensor-4", false, 3600), "device")).await;
    assert!(ack.session_present, "the stored session is resumed");
    let mut publ = as_user(&b, v5("console"), "admin").await;
    publ.publish(publish("devices/sensor-4/x", "1", QoS::AtLeastOnce, 1))
        .await;
    assert_eq!(recv_acked(&mut dev).await, "devices/sensor-4/x");
    dev.disconnect().await;
    let (mut other, ack) =
        Raw::connect(b.addr, login(v5_session("sensor-4", false, 3600), "admin")).await;
    assert!(!ack.session_present, "now it is device's");
    other.expect_nothing().await;
}

/// The session's owner is stored with it: after a restart its owner still
/// resumes it and another user still cannot.
#[tokio::test]
async fn the_session_owner_survives_a_restart() {
    let store = Arc::new(Durable::default());
    let ledger = SharedLedger::new(sample_ledger());
    let b = broker_with(ledger.clone(), |s| s.store(store.clone())).await;
    let mut owner = as_user(&b, v5_session("sensor-9", true, 3600), "admin").await;
    owner.subscribe(1, "secret/#", QoS::AtLeastOnce).await;
    owner.disconnect().await;
    let mut publ = as_user(&b, v5("console"), "admin").await;
    publ.publish(publish("secret/payroll", "1", QoS::AtLeastOnce, 1))
        .await;
    publ.disconnect().await;
    b.stop().await;

    let b = broker_with(ledger.clone(), |s| s.store(store.clone())).await;
    let (mut thief, ack) =
        Raw::connect(b.addr, login(v5_session("sensor-9", false, 3600), "device")).await;
    assert!(!ack.session_present, "another user's session was resumed");
    thief.expect_nothing().await;
    thief.disconnect().await;
    b.stop().await;

    // Once more, now for the owner (the thief's clean start ended the old
    // session, so set it up again first).
    let b = broker_with(ledger.clone(), |s| s.store(store.clone())).await;
    let mut owner = as_user(&b, v5_session("sensor-9", true, 3600), "admin").await;
    owner.subscribe(1, "secret/#", QoS::AtLeastOnce).await;
    owner.disconnect().await;
    let mut publ = as_user(&b, v5("console"), "admin").await;
    publ.publish(publish("secret/payroll", "2", QoS::AtLeastOnce, 1))
        .await;
    publ.disconnect().await;
    b.stop().await;
    let b = broker_with(ledger, |s| s.store(store.clone())).await;
    let (mut owner, ack) =
        Raw::connect(b.addr, login(v5_session("sensor-9", false, 3600), "admin")).await;
    assert!(ack.session_present, "the owner resumes after a restart");
    let p = owner.recv_publish().await;
    assert_eq!(payload(&p), "2");
    owner
        .send(Packet::PubAck(PubResp::new(match p.qos_pid {
            QosPid::AtLeastOnce(pid) => pid,
            other => panic!("{other:?}"),
        })))
        .await;
    b.stop().await;
}

// ----- the property: every path, any ACL ----------------------------------

/// Top-level topic segments the random ACL covers. Topics under `z/` are
/// readable by everyone and writable only by `root` (the end marker).
const SEGS: [&str; 3] = ["a", "b", "c"];
/// The principals the random ACL covers: two user names, and the inline
/// client (which has none). `root` may do anything.
const USERS: [Option<&str>; 3] = [Some("u0"), Some("u1"), None];

/// Who may read and write each segment, `[user][segment]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Table {
    read: [[bool; 3]; 3],
    write: [[bool; 3]; 3],
}

impl Table {
    /// `None` for root and for `z/`, where the rules are fixed.
    fn cell(user: Option<&str>, topic: &str) -> Option<(usize, usize)> {
        let seg = SEGS
            .iter()
            .position(|s| topic.split('/').next() == Some(*s))?;
        let u = USERS.iter().position(|u| *u == user)?;
        Some((u, seg))
    }

    fn may_read(&self, user: Option<&str>, topic: &str) -> bool {
        Self::cell(user, topic).is_none_or(|(u, s)| self.read[u][s])
    }

    fn may_write(&self, user: Option<&str>, topic: &str) -> bool {
        match Self::cell(user, topic) {
            Some((u, s)) => self.write[u][s],
            None => user == Some("root"),
        }
    }
}

/// An ACL hook judging by a [`Table`] the test may change at any time.
/// Subscribing is always allowed, so that what is judged is each delivery.
#[derive(Clone)]
struct TableAcl(Arc<std::sync::Mutex<Table>>);

impl TableAcl {
    fn table(&self) -> Table {
        *self.0.lock().unwrap()
    }
}

fn decide(allowed: bool) -> Decision {
    if allowed {
        Decision::Allow
    } else {
        Decision::Deny
    }
}

impl AclHook for TableAcl {
    fn can_publish<'a>(
        &'a self,
        client: &'a HookClient,
        topic: &'a str,
    ) -> BoxFuture<'a, Decision> {
        let d = decide(self.table().may_write(client.username.as_deref(), topic));
        Box::pin(std::future::ready(d))
    }

    fn can_subscribe<'a>(&'a self, _: &'a HookClient, _: &'a str) -> BoxFuture<'a, Decision> {
        Box::pin(std::future::ready(Decision::Allow))
    }

    fn can_receive(&self, client: &HookClient, message: &roost::Message) -> Decision {
        decide(
            self.table()
                .may_read(client.username.as_deref(), &message.topic),
        )
    }
}

fn named(mut c: Connect, user: Option<&str>) -> Connect {
    c.username = user.map(Into::into);
    c
}

/// What arrived before a PINGRESP (everything routed to the client before
/// the PINGREQ), acknowledged; the `z/` marker left out.
async fn drain(c: &mut Raw) -> Vec<String> {
    c.send(Packet::PingReq).await;
    let mut got = Vec::new();
    loop {
        match c.recv().await {
            Packet::Publish(p) => {
                c.ack(&p).await;
                if !p.topic.starts_with("z/") {
                    got.push(p.topic.as_str().to_owned());
                }
            }
            Packet::PingResp => return got,
            other => panic!("unexpected {other:?}"),
        }
    }
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// Waits until exactly `n` network clients are connected.
async fn until_connected(b: &TestBroker, n: u64) {
    eventually("the clients to go", || {
        b.stats.snapshot().clients_connected == n
    })
    .await;
}

/// One run: messages are created on every path under ACL `t1`, which then
/// changes to `t2` (a reloaded ledger) before wills fire, sessions resume
/// and new subscriptions take retained messages. Every client must receive
/// exactly what the ACL in force let it read, and nothing may be created
/// where its creator may not write.
async fn every_path(t1: Table, t2: Table) {
    let acl = TableAcl(Arc::new(std::sync::Mutex::new(t1)));
    let server = Server::new(Options::default())
        .acl_hook(acl.clone())
        .acl_applies_to_inline_client(true);
    let app = server.inline_client("app");
    let b = TestBroker::with_server(server).await;
    let user = |u: usize| USERS[u];
    let root_c = named(v5("root"), Some("root"));
    let mut root = Raw::connected(b.addr, root_c).await;
    // Every message created, with the ACL in force when it was routed.
    let mut created: Vec<(String, Table)> = Vec::new();

    // Receivers: live subscribers, sessions that will be away (in flight
    // and queued), sessions another user will try to take, a share group
    // and the inline client.
    let mut live = Vec::new();
    let mut away = Vec::new();
    let mut group = Vec::new();
    for u in 0..2 {
        let mut c = Raw::connected(b.addr, named(v5(&format!("live{u}")), user(u))).await;
        c.subscribe(1, "#", QoS::AtLeastOnce).await;
        live.push(c);
        let mut c = Raw::connected(
            b.addr,
            named(v5_session(&format!("away{u}"), true, 3600), user(u)),
        )
        .await;
        c.subscribe(1, "#", QoS::AtLeastOnce).await;
        away.push(c);
        let mut c = Raw::connected(
            b.addr,
            named(v5_session(&format!("kept{u}"), true, 3600), user(u)),
        )
        .await;
        c.subscribe(1, "#", QoS::AtLeastOnce).await;
        c.disconnect().await;
        let mut c = Raw::connected(b.addr, named(v5(&format!("member{u}")), user(u))).await;
        c.subscribe(1, "$share/g/#", QoS::AtLeastOnce).await;
        group.push(c);
    }
    let mut inline_sub = app.subscribe("#", QoS::AtLeastOnce).await.unwrap();

    // PUBLISH, from network clients and the inline client.
    for u in 0..3 {
        let mut publisher = match user(u) {
            Some(name) => {
                Some(Raw::connected(b.addr, named(v5(&format!("pub{u}")), Some(name))).await)
            }
            None => None,
        };
        for (i, seg) in SEGS.iter().enumerate() {
            let topic = format!("{seg}/pub-{u}");
            let allowed = t1.may_write(user(u), &topic);
            let refused = match &mut publisher {
                Some(p) => {
                    let m = publish(&topic, "x", QoS::AtLeastOnce, i as u16 + 1);
                    p.publish(m).await == ReasonCode::NotAuthorized
                }
                None => matches!(
                    app.publish(&topic, "x", QoS::AtLeastOnce).await,
                    Err(roost::InlineError::Refused(ReasonCode::NotAuthorized))
                ),
            };
            assert_eq!(refused, !allowed, "publish by {:?} to {topic}", user(u));
            if allowed {
                created.push((topic, t1));
            }
        }
        if let Some(p) = publisher {
            p.disconnect().await;
        }
    }
    // The away sessions go, leaving what they were sent in flight,
    // unacknowledged; from now on their messages are queued.
    for c in away.drain(..) {
        c.drop_connection();
    }
    // root, live, members.
    until_connected(&b, 5).await;
    // Retained messages, for subscriptions made later.
    for (i, seg) in SEGS.iter().enumerate() {
        let topic = format!("{seg}/ret");
        let m = retained(&topic, "r", QoS::AtLeastOnce, i as u16 + 1);
        assert!(root.publish(m).await.is_success());
        created.push((topic, t1));
    }
    // Wills: judged at CONNECT.
    let mut willing = Vec::new();
    for u in 0..2 {
        for seg in SEGS {
            let topic = format!("{seg}/will-{u}");
            let mut c = named(v5(&format!("will{u}{seg}")), user(u));
            c.will = Some(will(&topic, "w", QoS::AtLeastOnce, false));
            let (raw, ack) = Raw::connect(b.addr, c).await;
            let allowed = t1.may_write(user(u), &topic);
            let refused = ack.reason == ReasonCode::NotAuthorized;
            assert_eq!(refused, !allowed, "will of {:?} on {topic}", user(u));
            if allowed {
                willing.push((raw, u, topic));
            }
        }
    }

    // The ACL changes (a reloaded ledger); the wills fire.
    *acl.0.lock().unwrap() = t2;
    for (raw, u, topic) in willing {
        raw.drop_connection();
        if t2.may_write(user(u), &topic) {
            created.push((topic, t2));
        }
    }
    until_connected(&b, 5).await;
    for (i, seg) in SEGS.iter().enumerate() {
        let topic = format!("{seg}/late");
        let m = publish(&topic, "l", QoS::AtLeastOnce, i as u16 + 10);
        assert!(root.publish(m).await.is_success());
        created.push((topic, t2));
    }
    let m = publish("z/end", "", QoS::AtLeastOnce, 20);
    assert!(root.publish(m).await.is_success());

    let readable = |u: Option<&str>| -> Vec<String> {
        let all = created.iter().filter(|(t, acl)| acl.may_read(u, t));
        sorted(all.map(|(t, _)| t.clone()).collect())
    };
    for (u, c) in live.iter_mut().enumerate() {
        assert_eq!(
            sorted(drain(c).await),
            readable(user(u)),
            "live {:?}",
            user(u)
        );
    }
    let mut got = Vec::new();
    loop {
        let m = inline_sub.recv().await.unwrap();
        if m.topic.as_str() == "z/end" {
            break;
        }
        got.push(m.topic.as_str().to_owned());
    }
    assert_eq!(sorted(got), readable(None), "inline");
    // The share group: each message to one member that may read it, or to
    // nobody if neither may.
    let mut got = Vec::new();
    for (u, c) in group.iter_mut().enumerate() {
        for t in drain(c).await {
            got.push((t, u));
        }
    }
    for (topic, acl) in &created {
        let to: Vec<usize> = got
            .iter()
            .filter(|(t, _)| t == topic)
            .map(|(_, u)| *u)
            .collect();
        let readers = (0..2).filter(|&u| acl.may_read(user(u), topic)).count();
        match to[..] {
            [] => assert_eq!(readers, 0, "{topic} went to no member"),
            [u] => assert!(acl.may_read(user(u), topic), "{topic} to member {u}"),
            _ => panic!("{topic} went to {to:?}"),
        }
    }
    // Another user cannot take a session; its owner resumes it and gets
    // what both ACLs let it read (at routing, and now, at delivery).
    for u in 0..2 {
        let thief = named(v5_session(&format!("kept{u}"), false, 3600), user(1 - u));
        let (mut thief, ack) = Raw::connect(b.addr, thief).await;
        assert!(!ack.session_present, "{:?} took kept{u}", user(1 - u));
        assert_eq!(drain(&mut thief).await, Vec::<String>::new());
        let owner = named(v5_session(&format!("away{u}"), false, 3600), user(u));
        let (mut owner, ack) = Raw::connect(b.addr, owner).await;
        assert!(ack.session_present);
        let expected: Vec<String> = readable(user(u))
            .into_iter()
            .filter(|t| t2.may_read(user(u), t))
            .collect();
        assert_eq!(sorted(drain(&mut owner).await), expected, "away{u}");
    }
    // Retained messages for new subscriptions, under the ACL now.
    for u in 0..2 {
        let mut c = Raw::connected(b.addr, named(v5(&format!("new{u}")), user(u))).await;
        c.subscribe(1, "#", QoS::AtLeastOnce).await;
        let expected: Vec<String> = SEGS
            .iter()
            .map(|s| format!("{s}/ret"))
            .filter(|t| t2.may_read(user(u), t))
            .collect();
        assert_eq!(
            sorted(drain(&mut c).await),
            expected,
            "retained for {:?}",
            user(u)
        );
    }
}

fn table() -> impl proptest::strategy::Strategy<Value = Table> {
    use proptest::prelude::*;
    (any::<[[bool; 3]; 3]>(), any::<[[bool; 3]; 3]>())
        .prop_map(|(read, write)| Table { read, write })
}

proptest::proptest! {
    #![proptest_config(proptest::test_runner::Config {
        cases: 24,
        failure_persistence: None,
        ..Default::default()
    })]

    #[test]
    fn no_delivery_escapes_the_acl(t1 in table(), t2 in table()) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(every_path(t1, t2));
    }
}
