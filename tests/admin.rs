//! The admin API, over real HTTP against a running broker, and the same
//! operations through the Rust handle (`Server::admin`): refused without
//! credentials, clients listed as they are, a kicked client really gone
//! (and its session with it when asked), retained messages listed and
//! cleared, publishes that respect the ACL, pages that follow each other.

mod common;
use common::http::{encode, request, Response};
use common::*;
use roost::admin::{AdminError, AdminToken, DisconnectOptions, Paging};
use roost::codec::{Packet, QoS, ReasonCode};
use roost::hooks::{AclHook, BoxFuture, Client, Decision};
use roost::{Listener, Server, Transport};
use std::net::SocketAddr;

const TOKEN: &str = "test-token-0123456789";

/// A broker with an HTTP listener serving the admin API to `TOKEN`.
struct AdminBroker {
    broker: TestBroker,
    http: SocketAddr,
}

impl AdminBroker {
    async fn start() -> AdminBroker {
        Self::with(Server::new(roost::Options::default())).await
    }

    async fn with(server: Server) -> AdminBroker {
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http = tcp.local_addr().unwrap();
        let listener = Listener::new("admin", tcp, Transport::Http)
            .unwrap()
            .admin_token(AdminToken::new(TOKEN).unwrap())
            .unwrap();
        let server = server.listener(listener).unwrap();
        AdminBroker {
            broker: TestBroker::with_server(server).await,
            http,
        }
    }

    async fn get(&self, target: &str) -> Response {
        request(self.http, "GET", target, Some(TOKEN), None).await
    }

    async fn call(&self, method: &str, target: &str, body: Option<&str>) -> Response {
        request(self.http, method, target, Some(TOKEN), body).await
    }

    /// The client ids the API lists, all pages.
    async fn client_ids(&self) -> Vec<String> {
        let v = self.get("/api/v1/clients?limit=1000").await.json();
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["client_id"].as_str().unwrap().to_owned())
            .collect()
    }
}

#[tokio::test]
async fn without_a_token_configured_the_admin_routes_do_not_exist() {
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = tcp.local_addr().unwrap();
    let b =
        TestBroker::with_server(Server::new(roost::Options::default()).http(tcp).unwrap()).await;
    for (method, target) in [
        ("GET", "/api/v1/clients"),
        ("POST", "/api/v1/publish"),
        ("DELETE", "/api/v1/retained/a"),
    ] {
        let r = request(http, method, target, Some(TOKEN), None).await;
        assert_eq!(r.status, 404, "{method} {target}: {r:?}");
    }
    // The stats routes are unchanged.
    assert_eq!(
        request(http, "GET", "/healthz", None, None).await.status,
        200
    );
    b.stop().await;
}

#[tokio::test]
async fn a_missing_or_wrong_token_is_refused_with_401() {
    let b = AdminBroker::start().await;
    for token in [
        None,
        Some("wrong-token-0123456789"),
        Some("test-token-012345678"),
    ] {
        let r = request(b.http, "GET", "/api/v1/clients", token, None).await;
        assert_eq!(r.status, 401, "{token:?}");
        assert!(r.headers["www-authenticate"].starts_with("Bearer"), "{r:?}");
    }
    // Another scheme with the right secret is not a bearer token.
    let r = common::http::raw(
        b.http,
        format!("GET /api/v1/clients HTTP/1.1\r\nAuthorization: Basic {TOKEN}\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(r.status, 401);
    // A kick without the token changes nothing.
    let mut c = Raw::connected(b.broker.addr, v5("stays")).await;
    let r = request(
        b.http,
        "POST",
        "/api/v1/clients/stays/disconnect",
        None,
        None,
    )
    .await;
    assert_eq!(r.status, 401);
    c.expect_nothing().await;
    assert_eq!(b.get("/api/v1/clients").await.status, 200);
    // The stats routes need no token.
    assert_eq!(
        request(b.http, "GET", "/stats", None, None).await.status,
        200
    );
    b.broker.stop().await;
}

#[tokio::test]
async fn a_rumqttc_client_is_listed_with_its_fields() {
    let b = AdminBroker::start().await;
    let (host, port) = b.broker.host_port();
    let mut opts = rumqttc::MqttOptions::new("rumqttc-listed", host, port);
    opts.set_credentials("alice", "secret");
    let (client, mut el) = rumqttc::AsyncClient::new(opts, 10);
    let (local_tx, mut local_rx) = tokio::sync::mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        loop {
            match el.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                    let _ = local_tx.send(());
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    client
        .subscribe("sensors/+/temp", rumqttc::QoS::AtLeastOnce)
        .await
        .unwrap();
    tokio::time::timeout(WAIT, local_rx.recv())
        .await
        .expect("SUBACK")
        .unwrap();

    let v = b.get("/api/v1/clients/rumqttc-listed").await.json();
    assert_eq!(v["client_id"], "rumqttc-listed");
    assert_eq!(v["username"], "alice");
    assert_eq!(v["protocol"], "3.1.1");
    assert_eq!(v["connected"], true);
    assert_eq!(v["inline"], false);
    assert_eq!(v["inflight"], 0);
    assert_eq!(v["queued"], 0);
    let addr: SocketAddr = v["remote_addr"].as_str().unwrap().parse().unwrap();
    assert!(addr.ip().is_loopback(), "{addr}");
    let since = v["connected_at_ms"].as_u64().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(since <= now && now - since < 60_000, "{since} vs {now}");
    assert_eq!(v["subscriptions"][0]["filter"], "sensors/+/temp");
    assert_eq!(v["subscriptions"][0]["qos"], 1);

    let list = b.get("/api/v1/clients").await.json();
    let listed = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["client_id"] == "rumqttc-listed")
        .expect("listed");
    assert_eq!(listed["subscriptions"], 1);
    let subs = b
        .get(&format!(
            "/api/v1/subscriptions?filter={}",
            encode("sensors/#")
        ))
        .await
        .json();
    assert_eq!(subs["items"][0]["client_id"], "rumqttc-listed");
    assert_eq!(subs["items"][0]["filter"], "sensors/+/temp");
    assert_eq!(b.get("/api/v1/clients/nobody").await.status, 404);
    assert_eq!(
        b.get(&format!("/api/v1/subscriptions?filter={}", encode("a/#/b")))
            .await
            .status,
        400
    );
    task.abort();
    b.broker.stop().await;
}

#[tokio::test]
async fn a_kicked_client_is_disconnected_and_resumes_its_session() {
    let b = AdminBroker::start().await;
    let mut c = Raw::connected(b.broker.addr, v5_session("kicked", true, 300)).await;
    c.subscribe(1, "kick/t", QoS::AtLeastOnce).await;
    let r = b
        .call(
            "POST",
            "/api/v1/clients/kicked/disconnect",
            Some(r#"{"reason":"maintenance"}"#),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["was_connected"], true);
    assert_eq!(r.json()["session_ended"], false);
    let got = c.expect_closed().await;
    match got.last() {
        Some(Packet::Disconnect(d)) => {
            assert_eq!(d.reason, ReasonCode::AdministrativeAction);
            assert_eq!(d.properties.reason_string.as_deref(), Some("maintenance"));
        }
        other => panic!("expected DISCONNECT 0x98, got {other:?}"),
    }
    // The session stays: a message waits, and the client resumes.
    let mut p = Raw::connected(b.broker.addr, v5("kick-pub")).await;
    p.publish(publish("kick/t", "waiting", QoS::AtLeastOnce, 1))
        .await;
    let (mut c, ack) = Raw::connect(b.broker.addr, v5_session("kicked", false, 300)).await;
    assert!(ack.session_present);
    assert_eq!(payload(&c.recv_publish().await), "waiting");
    c.disconnect().await;
    b.broker.stop().await;
}

#[tokio::test]
async fn ending_the_session_drops_its_queue() {
    let b = AdminBroker::start().await;
    let mut c = Raw::connected(b.broker.addr, v5_session("ended", true, 300)).await;
    c.subscribe(1, "end/t", QoS::AtLeastOnce).await;
    c.drop_connection();
    let mut p = Raw::connected(b.broker.addr, v5("end-pub")).await;
    p.publish(publish("end/t", "queued", QoS::AtLeastOnce, 1))
        .await;
    let v = b.get("/api/v1/clients/ended").await.json();
    assert_eq!(
        (v["connected"].as_bool(), v["queued"].as_u64()),
        (Some(false), Some(1))
    );
    let r = b
        .call(
            "POST",
            "/api/v1/clients/ended/disconnect?end_session=true",
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["session_ended"], true);
    assert_eq!(b.get("/api/v1/clients/ended").await.status, 404);
    let (mut c, ack) = Raw::connect(b.broker.addr, v5_session("ended", false, 300)).await;
    assert!(!ack.session_present);
    c.expect_nothing().await;
    // The connected case: kicked and ended at once.
    let r = b
        .call(
            "POST",
            "/api/v1/clients/ended/disconnect",
            Some(r#"{"end_session":true,"reason":"bye"}"#),
        )
        .await;
    assert_eq!(r.json()["was_connected"], true);
    assert_eq!(
        expect_disconnect(&mut c).await,
        ReasonCode::AdministrativeAction
    );
    let (_c, ack) = Raw::connect(b.broker.addr, v5_session("ended", false, 300)).await;
    assert!(!ack.session_present);
    b.broker.stop().await;
}

#[tokio::test]
async fn retained_messages_are_listed_and_deleted() {
    let b = AdminBroker::start().await;
    let mut p = Raw::connected(b.broker.addr, v5("ret-pub")).await;
    for topic in ["r/a", "r/b c", "r/x/y"] {
        p.publish(retained(topic, "value", QoS::AtLeastOnce, 1))
            .await;
    }
    let list = b
        .get(&format!(
            "/api/v1/retained?filter={}&limit=2",
            encode("r/#")
        ))
        .await
        .json();
    let topics: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["topic"].as_str().unwrap())
        .collect();
    assert_eq!(topics, ["r/a", "r/b c"]);
    assert_eq!(list["items"][0]["payload_bytes"], 5);
    let next = list["next"].as_str().unwrap();
    let rest = b
        .get(&format!(
            "/api/v1/retained?filter={}&limit=2&after={}",
            encode("r/#"),
            encode(next)
        ))
        .await
        .json();
    assert_eq!(rest["items"][0]["topic"], "r/x/y");
    assert!(rest["next"].is_null());

    let r = b
        .call(
            "DELETE",
            &format!("/api/v1/retained/{}", encode("r/b c")),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    // Slashes may be left as they are.
    assert_eq!(
        b.call("DELETE", "/api/v1/retained/r/x/y", None)
            .await
            .status,
        200
    );
    assert_eq!(
        b.call("DELETE", "/api/v1/retained/r/x/y", None)
            .await
            .status,
        404
    );
    let mut s = Raw::connected(b.broker.addr, v5("ret-sub")).await;
    s.subscribe(1, "r/#", QoS::AtMostOnce).await;
    assert_eq!(s.recv_publish().await.topic.as_str(), "r/a");
    s.expect_nothing().await;
    b.broker.stop().await;
}

/// Refuses publishes to `secret/...`.
struct NoSecrets;

impl AclHook for NoSecrets {
    fn can_publish<'a>(&'a self, _: &'a Client, topic: &'a str) -> BoxFuture<'a, Decision> {
        let d = if topic.starts_with("secret/") {
            Decision::Deny
        } else {
            Decision::Defer
        };
        Box::pin(std::future::ready(d))
    }
}

#[tokio::test]
async fn a_publish_reaches_subscribers_unless_the_acl_refuses_it() {
    let server = Server::new(roost::Options::default())
        .acl_hook(NoSecrets)
        .acl_applies_to_inline_client(true);
    let b = AdminBroker::with(server).await;
    let mut s = Raw::connected(b.broker.addr, v5("pub-sub")).await;
    s.subscribe(1, "#", QoS::AtLeastOnce).await;
    let r = b
        .call(
            "POST",
            "/api/v1/publish",
            Some(r#"{"topic":"cmd/1","payload":"reboot","qos":1}"#),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let m = s.recv_publish().await;
    assert_eq!((m.topic.as_str(), payload(&m)), ("cmd/1", "reboot"));
    s.ack(&m).await;
    let r = b
        .call(
            "POST",
            "/api/v1/publish",
            Some(r#"{"topic":"bin","payload_base64":"AAH/","retain":true}"#),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let m = s.recv_publish().await;
    assert_eq!(&m.payload[..], [0, 1, 255]);
    for qos in [0, 1, 2] {
        let body = format!(r#"{{"topic":"secret/x","payload":"no","qos":{qos}}}"#);
        let r = b.call("POST", "/api/v1/publish", Some(&body)).await;
        assert_eq!(r.status, 403, "QoS {qos}: {r:?}");
    }
    s.expect_nothing().await;
    for bad in [
        r#"{"topic":"a/+","payload":"x"}"#,
        r#"{"topic":"$SYS/x","payload":"x"}"#,
        r#"{"topic":"a","qos":3}"#,
        "not json",
    ] {
        let r = b.call("POST", "/api/v1/publish", Some(bad)).await;
        assert_eq!(r.status, 400, "{bad}: {r:?}");
    }
    b.broker.stop().await;
}

#[tokio::test]
async fn pages_follow_each_other_in_client_id_order() {
    let b = AdminBroker::start().await;
    let mut clients = Vec::new();
    for i in 0..7 {
        clients.push(Raw::connected(b.broker.addr, v5(&format!("page-{i}"))).await);
    }
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let target = match &after {
            None => "/api/v1/clients?limit=3".to_owned(),
            Some(a) => format!("/api/v1/clients?limit=3&after={}", encode(a)),
        };
        let v = b.get(&target).await.json();
        let items = v["items"].as_array().unwrap();
        assert!(items.len() <= 3);
        seen.extend(
            items
                .iter()
                .map(|c| c["client_id"].as_str().unwrap().to_owned()),
        );
        pages += 1;
        match v["next"].as_str() {
            Some(n) => after = Some(n.to_owned()),
            None => break,
        }
    }
    // No admin publish yet, so no `$admin` client either.
    let expected: Vec<String> = (0..7).map(|i| format!("page-{i}")).collect();
    assert_eq!(seen, expected);
    assert_eq!(pages, 3);
    assert_eq!(b.client_ids().await, expected);
    assert_eq!(b.get("/api/v1/clients?limit=x").await.status, 400);
    b.broker.stop().await;
}

#[tokio::test]
async fn bodies_are_bounded_and_need_a_length() {
    let b = AdminBroker::start().await;
    let big = format!(
        "POST /api/v1/publish HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 100000\r\n\r\n"
    );
    assert_eq!(common::http::raw(b.http, big.as_bytes()).await.status, 413);
    let chunked = format!(
        "POST /api/v1/publish HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    );
    assert_eq!(
        common::http::raw(b.http, chunked.as_bytes()).await.status,
        411
    );
    assert_eq!(b.call("PUT", "/api/v1/clients", None).await.status, 405);
    assert_eq!(b.call("GET", "/api/v1/nothing", None).await.status, 404);
    // The admin's own publisher (connected by its first publish) cannot be
    // kicked.
    let r = b
        .call(
            "POST",
            "/api/v1/publish",
            Some(r#"{"topic":"t","payload":"x"}"#),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = b
        .call("POST", "/api/v1/clients/%24admin/disconnect", None)
        .await;
    assert_eq!(r.status, 409, "{r:?}");
    b.broker.stop().await;
}

#[tokio::test]
async fn the_rust_handle_kicks_and_reports_errors() {
    let server = Server::new(roost::Options::default());
    let admin = server.admin();
    let b = TestBroker::with_server(server).await;
    let mut c = Raw::connected(b.addr, v5("rust-kicked")).await;
    let done = admin
        .disconnect("rust-kicked", DisconnectOptions::new().reason("from Rust"))
        .await
        .unwrap();
    assert!(done.was_connected && done.session_ended);
    assert_eq!(
        expect_disconnect(&mut c).await,
        ReasonCode::AdministrativeAction
    );
    assert_eq!(
        admin
            .disconnect("rust-kicked", DisconnectOptions::new())
            .await,
        Err(AdminError::NotFound("rust-kicked".into()))
    );
    assert!(matches!(
        admin.retained("a/#/b", Paging::default()).await,
        Err(AdminError::InvalidFilter(_))
    ));
    // A network client may not take the admin's id.
    let (_, ack) = Raw::connect(b.addr, v5(roost::admin::ADMIN_CLIENT_ID)).await;
    assert_eq!(ack.reason, ReasonCode::ClientIdentifierNotValid);
    b.stop().await;
    assert_eq!(
        admin.clients(Paging::default()).await,
        Err(AdminError::Stopped)
    );
}
