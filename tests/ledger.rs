//! The ledger hook with real clients over TCP: who may connect (passwords,
//! disabled and unknown users, remote networks, anonymous clients), what
//! they may publish, subscribe to and receive (placeholders, wildcard
//! names, rule order), and swapping the ledger while clients stay
//! connected.

mod common;
use common::*;
use roost::codec::{Connect, Packet, ProtocolVersion, QoS, ReasonCode};
use roost::hooks::{hash_password_with_cost, Ledger, SharedLedger};
use roost::{Options, Server};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// bcrypt of "secret" at cost 4, so tests stay fast.
fn hash() -> &'static str {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| hash_password_with_cost("secret", 4).unwrap())
}

/// A ledger with users alice, bob, `+` and dave (disabled), all with the
/// password "secret", followed by `rules`.
fn ledger(rules: &str) -> Ledger {
    let mut src = String::new();
    for (user, disabled) in [
        ("alice", false),
        ("bob", false),
        ("+", false),
        ("dave", true),
    ] {
        src.push_str(&format!(
            "[[users]]\nusername = \"{user}\"\npassword = \"{}\"\ndisabled = {disabled}\n\n",
            hash()
        ));
    }
    src.push_str(rules);
    Ledger::from_toml_str(&src).unwrap()
}

async fn broker(l: Ledger) -> TestBroker {
    let server = Server::new(Options::default())
        .auth_hook(l.clone())
        .acl_hook(l);
    TestBroker::with_server(server).await
}

fn login(mut c: Connect, user: &str, pass: &str) -> Connect {
    c.username = Some(user.into());
    c.password = Some(bytes::Bytes::copy_from_slice(pass.as_bytes()));
    c
}

/// Connects as `user` with password "secret", asserting success.
async fn as_user(b: &TestBroker, id: &str, user: &str) -> Raw {
    Raw::connected(b.addr, login(v5(id), user, "secret")).await
}

async fn refused_v5(b: &TestBroker, c: Connect) {
    let (_, ack) = Raw::connect(b.addr, c).await;
    assert_eq!(ack.reason, ReasonCode::BadUserNameOrPassword, "{ack:?}");
}

/// Anyone with a valid password may connect.
const PASSWORDS: &str = "[[auth]]\nallow = true\n";

#[tokio::test]
async fn passwords_are_checked() {
    let b = broker(ledger(PASSWORDS)).await;
    as_user(&b, "a", "alice").await;
    refused_v5(&b, login(v5("a2"), "alice", "wrong")).await;
    refused_v5(&b, login(v5("u"), "mallory", "secret")).await;
    refused_v5(&b, login(v5("d"), "dave", "secret")).await;
    let mut no_password = v5("np");
    no_password.username = Some("alice".into());
    refused_v5(&b, no_password).await;
    refused_v5(&b, v5("anon")).await;

    // 3.1.1: return code 4, and the connection is closed.
    let mut raw = Raw::open(b.addr, ProtocolVersion::V3_1_1).await;
    raw.send(Packet::Connect(Box::new(login(v311("b3"), "bob", "nope"))))
        .await;
    let got = raw.expect_closed().await;
    assert!(
        matches!(&got[..], [Packet::ConnAck(a)] if a.reason == ReasonCode::BadUserNameOrPassword),
        "{got:?}"
    );
    Raw::connected(b.addr, login(v311("b3"), "bob", "secret")).await;
}

#[tokio::test]
async fn remote_networks_and_anonymous_clients() {
    let b = broker(ledger(
        "# Trusted network: no password needed. The tests come from 127.0.0.1.\n\
         [[auth]]\nremote = \"10.0.0.0/8\"\npassword = \"ignored\"\nallow = true\n\n\
         [[auth]]\nanonymous = true\nclient_id = \"anon-*\"\nremote = \"127.0.0.1/32\"\nallow = true\n\n\
         [[auth]]\nanonymous = true\nallow = false\n\n\
         [[auth]]\nusername = \"alice\"\nremote = \"127.0.0.1/32\"\nallow = true\n",
    ))
    .await;
    // The 10.0.0.0/8 rule does not match 127.0.0.1, so no free pass.
    refused_v5(&b, login(v5("b"), "bob", "whatever")).await;
    refused_v5(&b, login(v5("b"), "bob", "secret")).await;
    as_user(&b, "a", "alice").await;
    refused_v5(&b, login(v5("a"), "alice", "whatever")).await;
    Raw::connected(b.addr, v5("anon-1")).await;
    refused_v5(&b, v5("sneaky")).await;
}

/// The device and admin rules of the sample file, in short.
const DEVICES: &str = "\
[[auth]]\nallow = true\n\n\
[[acl]]\nusername = \"alice\"\nfilter = \"#\"\naccess = \"readwrite\"\n\n\
[[acl]]\nfilter = \"devices/%c/#\"\naccess = \"readwrite\"\n\n\
[[acl]]\nfilter = \"commands/%c\"\naccess = \"read\"\n\n\
[[acl]]\nfilter = \"users/%u/#\"\naccess = \"readwrite\"\n";

#[tokio::test]
async fn publish_acl_refuses_with_0x87_and_nothing_is_delivered() {
    let b = broker(ledger(DEVICES)).await;
    let mut admin = as_user(&b, "admin", "alice").await;
    let ack = admin.subscribe(1, "#", QoS::AtLeastOnce).await;
    assert_eq!(ack.reasons, vec![ReasonCode::GrantedQos1]);

    let mut dev = as_user(&b, "d1", "bob").await;
    let denied = publish("devices/d2/temp", "no", QoS::AtLeastOnce, 1);
    assert_eq!(dev.publish(denied).await, ReasonCode::NotAuthorized);
    let denied = publish("commands/d1", "no", QoS::ExactlyOnce, 2);
    assert_eq!(dev.publish(denied).await, ReasonCode::NotAuthorized);
    let ok = publish("devices/d1/temp", "21", QoS::AtLeastOnce, 3);
    assert_eq!(dev.publish(ok).await, ReasonCode::Success);

    let p = admin.recv_publish().await;
    assert_eq!((&*p.topic, payload(&p)), ("devices/d1/temp", "21"));
    admin.ack(&p).await;
    admin.expect_nothing().await;
}

#[tokio::test]
async fn subscribe_acl_refuses_with_0x87_or_0x80() {
    let b = broker(ledger(DEVICES)).await;
    let mut dev = as_user(&b, "d1", "bob").await;
    let ack = dev
        .subscribe_with(subscribe(
            1,
            &[
                ("devices/d1/#", opts(QoS::AtLeastOnce)),
                ("devices/+/temp", opts(QoS::AtLeastOnce)),
                ("commands/d1", opts(QoS::AtMostOnce)),
                ("commands/+", opts(QoS::AtMostOnce)),
                ("$share/g/users/bob/+", opts(QoS::AtMostOnce)),
                ("#", opts(QoS::AtMostOnce)),
            ],
        ))
        .await;
    use ReasonCode::*;
    assert_eq!(
        ack.reasons,
        vec![
            GrantedQos1,
            NotAuthorized,
            Success,
            NotAuthorized,
            Success,
            NotAuthorized
        ]
    );

    let mut v3 = Raw::connected(b.addr, login(v311("d3"), "bob", "secret")).await;
    let ack = v3.subscribe(1, "devices/d1/#", QoS::AtMostOnce).await;
    assert_eq!(ack.reasons, vec![UnspecifiedError], "0x80 for 3.1.1");
    let ack = v3.subscribe(2, "devices/d3/#", QoS::AtMostOnce).await;
    assert_eq!(ack.reasons, vec![Success]);
}

#[tokio::test]
async fn placeholders_fill_in_the_client() {
    let b = broker(ledger(DEVICES)).await;
    let mut bob = as_user(&b, "kitchen", "bob").await;
    assert_eq!(
        bob.subscribe(1, "users/bob/#", QoS::AtMostOnce)
            .await
            .reasons,
        vec![ReasonCode::Success]
    );
    assert_eq!(
        bob.subscribe(2, "users/alice/#", QoS::AtMostOnce)
            .await
            .reasons,
        vec![ReasonCode::NotAuthorized]
    );
    let mut admin = as_user(&b, "admin", "alice").await;
    admin
        .publish(publish("commands/kitchen", "on", QoS::AtLeastOnce, 1))
        .await;
    admin
        .publish(publish("users/bob/inbox", "hi", QoS::AtLeastOnce, 2))
        .await;
    assert_eq!(payload(&bob.recv_publish().await), "hi");
    let ack = bob.subscribe(3, "commands/kitchen", QoS::AtMostOnce).await;
    assert_eq!(ack.reasons, vec![ReasonCode::Success]);
    admin
        .publish(publish("commands/kitchen", "off", QoS::AtLeastOnce, 3))
        .await;
    assert_eq!(payload(&bob.recv_publish().await), "off");
}

#[tokio::test]
async fn a_wildcard_in_a_user_name_or_client_id_grants_nothing() {
    let b = broker(ledger(DEVICES)).await;
    let mut plus = Raw::connected(b.addr, login(v5("+"), "+", "secret")).await;
    let ack = plus
        .subscribe_with(subscribe(
            1,
            &[
                ("users/+/#", opts(QoS::AtMostOnce)),
                ("users/alice/x", opts(QoS::AtMostOnce)),
                ("devices/+/#", opts(QoS::AtMostOnce)),
            ],
        ))
        .await;
    assert_eq!(ack.reasons, vec![ReasonCode::NotAuthorized; 3]);
    let p = publish("users/alice/x", "x", QoS::AtLeastOnce, 1);
    assert_eq!(plus.publish(p).await, ReasonCode::NotAuthorized);
    let p = publish("devices/d1/x", "x", QoS::AtLeastOnce, 2);
    assert_eq!(plus.publish(p).await, ReasonCode::NotAuthorized);
    // A client id with a `/` does not reach into another device's tree.
    let mut slash = as_user(&b, "d1/sub", "bob").await;
    let p = publish("devices/d1/sub/x", "x", QoS::AtLeastOnce, 1);
    assert_eq!(slash.publish(p).await, ReasonCode::NotAuthorized);
}

#[tokio::test]
async fn delivery_acl_keeps_messages_from_subscribers_without_read() {
    let b = broker(ledger(
        "[[auth]]\nallow = true\n\n\
         [[acl]]\nusername = \"alice\"\nfilter = \"#\"\naccess = \"readwrite\"\n\n\
         [[acl]]\nfilter = \"private/#\"\naccess = \"deny\"\n\n\
         [[acl]]\nfilter = \"public/#\"\naccess = \"read\"\n\n\
         [[acl]]\nfilter = \"#\"\naccess = \"read\"\n",
    ))
    .await;
    let mut admin = as_user(&b, "admin", "alice").await;
    admin
        .publish(retained("private/old", "kept", QoS::AtLeastOnce, 1))
        .await;
    admin
        .publish(retained("public/old", "shown", QoS::AtLeastOnce, 2))
        .await;

    let mut watcher = as_user(&b, "w", "bob").await;
    // `#` is allowed (the deny rule does not cover it)...
    let ack = watcher.subscribe(1, "#", QoS::AtMostOnce).await;
    assert_eq!(ack.reasons, vec![ReasonCode::Success]);
    // ...but only readable messages arrive, retained or live.
    let p = watcher.recv_publish().await;
    assert_eq!((&*p.topic, payload(&p)), ("public/old", "shown"));
    admin
        .publish(publish("private/x", "secret", QoS::AtLeastOnce, 3))
        .await;
    admin
        .publish(publish("public/x", "news", QoS::AtLeastOnce, 4))
        .await;
    let p = watcher.recv_publish().await;
    assert_eq!((&*p.topic, payload(&p)), ("public/x", "news"));
    watcher.expect_nothing().await;
}

#[tokio::test]
async fn the_first_matching_rule_wins() {
    let narrow_first = broker(ledger(
        "[[auth]]\nallow = true\n\n\
         [[acl]]\nfilter = \"a/b\"\naccess = \"deny\"\n\n\
         [[acl]]\nfilter = \"a/#\"\naccess = \"readwrite\"\n",
    ))
    .await;
    let mut c = as_user(&narrow_first, "c", "bob").await;
    let p = publish("a/b", "x", QoS::AtLeastOnce, 1);
    assert_eq!(c.publish(p).await, ReasonCode::NotAuthorized);
    let p = publish("a/c", "x", QoS::AtLeastOnce, 2);
    assert!(c.publish(p).await.is_success());

    let broad_first = broker(ledger(
        "[[auth]]\nallow = true\n\n\
         [[acl]]\nfilter = \"a/#\"\naccess = \"readwrite\"\n\n\
         [[acl]]\nfilter = \"a/b\"\naccess = \"deny\"\n",
    ))
    .await;
    let mut c = as_user(&broad_first, "c", "bob").await;
    let p = publish("a/b", "x", QoS::AtLeastOnce, 1);
    assert!(c.publish(p).await.is_success());

    // Auth rules too: a deny for bob before the general allow.
    let b = broker(ledger(
        "[[auth]]\nusername = \"bob\"\nallow = false\n\n[[auth]]\nallow = true\n",
    ))
    .await;
    refused_v5(&b, login(v5("c"), "bob", "secret")).await;
    as_user(&b, "c", "alice").await;
}

#[tokio::test]
async fn the_ledger_can_be_swapped_while_clients_stay_connected() {
    let shared = SharedLedger::new(ledger(DEVICES));
    let server = Server::new(Options::default())
        .auth_hook(shared.clone())
        .acl_hook(shared.clone());
    let b = TestBroker::with_server(server).await;
    let mut alice = as_user(&b, "admin", "alice").await;
    alice.subscribe(1, "#", QoS::AtMostOnce).await;
    refused_v5(&b, login(v5("c"), "carol", "secret")).await;

    // The new ledger adds carol and drops alice's admin rule.
    let next = format!(
        "[[users]]\nusername = \"alice\"\npassword = \"{h}\"\n\n\
         [[users]]\nusername = \"carol\"\npassword = \"{h}\"\n\n\
         [[auth]]\nallow = true\n\n\
         [[acl]]\nfilter = \"devices/%c/#\"\naccess = \"readwrite\"\n",
        h = hash()
    );
    let old = shared.replace(Ledger::from_toml_str(&next).unwrap());
    drop(old);

    let mut carol = as_user(&b, "c1", "carol").await;
    let p = publish("devices/c1/x", "x", QoS::AtLeastOnce, 1);
    assert!(carol.publish(p).await.is_success());
    // alice is still connected, now judged by the new ledger: her `#`
    // subscription stays but delivers nothing she may not read...
    alice.sync().await;
    alice.expect_nothing().await;
    // ...and she may no longer publish everywhere.
    let p = publish("anything", "x", QoS::AtLeastOnce, 2);
    assert_eq!(alice.publish(p).await, ReasonCode::NotAuthorized);
    alice
        .publish(publish("devices/admin/x", "mine", QoS::AtMostOnce, 0))
        .await;
    assert_eq!(payload(&alice.recv_publish().await), "mine");
    // bob is gone from the new ledger.
    refused_v5(&b, login(v5("d1"), "bob", "secret")).await;
}

#[tokio::test]
async fn the_sample_ledger_loads_and_means_what_it_says() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/ledger.toml");
    let b = broker(Ledger::load(path).unwrap()).await;
    let mut admin = Raw::connected(b.addr, login(v5("admin"), "admin", "admin-secret")).await;
    admin.subscribe(1, "#", QoS::AtMostOnce).await;
    let mut dev = Raw::connected(b.addr, login(v5("sensor-1"), "device", "device-secret")).await;
    let p = publish("devices/sensor-1/temp", "21", QoS::AtLeastOnce, 1);
    assert!(dev.publish(p).await.is_success());
    let p = publish("devices/sensor-2/temp", "21", QoS::AtLeastOnce, 2);
    assert_eq!(dev.publish(p).await, ReasonCode::NotAuthorized);
    let p = publish("devices/sensor-1/debug/x", "x", QoS::AtLeastOnce, 3);
    assert_eq!(dev.publish(p).await, ReasonCode::NotAuthorized);
    let p = publish("commands/sensor-1", "x", QoS::AtLeastOnce, 4);
    assert_eq!(dev.publish(p).await, ReasonCode::NotAuthorized);
    let ack = dev.subscribe(5, "commands/sensor-1", QoS::AtMostOnce).await;
    assert_eq!(ack.reasons, vec![ReasonCode::Success]);
    assert_eq!(payload(&admin.recv_publish().await), "21");
    refused_v5(&b, v5("anon")).await;
    refused_v5(&b, login(v5("lamp"), "device", "device-secret")).await;
    refused_v5(&b, login(v5("sensor-2"), "retired", "device-secret")).await;
}

#[tokio::test]
async fn checking_a_hash_does_not_stall_other_connections() {
    // A costly hash: its check takes a while on the blocking pool.
    let slow_hash = hash_password_with_cost("secret", 12).unwrap();
    let l = Ledger::from_toml_str(&format!(
        "[[users]]\nusername = \"slow\"\npassword = \"{slow_hash}\"\n\n\
         [[auth]]\nclient_id = \"fast-*\"\npassword = \"ignored\"\nallow = true\n\n\
         [[auth]]\nallow = true\n\n\
         [[acl]]\nfilter = \"t\"\naccess = \"readwrite\"\n"
    ))
    .unwrap();
    let b = broker(l).await;
    let addr = b.addr;
    let slow = tokio::spawn(async move {
        let started = Instant::now();
        Raw::connected(addr, login(v5("s"), "slow", "secret")).await;
        started.elapsed()
    });
    // Timed from here: on this single-threaded runtime, a hash check that
    // blocked it would hold up even the sleep.
    let started = Instant::now();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut sub = Raw::connected(addr, v5("fast-1")).await;
    sub.subscribe(1, "t", QoS::AtMostOnce).await;
    let mut p = Raw::connected(addr, v5("fast-2")).await;
    p.publish(publish("t", "x", QoS::AtLeastOnce, 1)).await;
    sub.recv_publish().await;
    let fast = started.elapsed();
    let slow = slow.await.unwrap();
    assert!(
        fast * 2 < slow,
        "others were not held up by the hash check: fast {fast:?}, slow {slow:?}"
    );
}
