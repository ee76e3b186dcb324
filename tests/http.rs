//! The HTTP stats endpoint, fetched with plain HTTP/1.1 over a socket: the
//! JSON parsed with serde_json, the Prometheus text checked line by line.

mod common;
use common::listeners::*;
use common::*;
use std::collections::HashMap;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Status code, headers (lower-case names) and body.
async fn get(addr: SocketAddr, request: &str) -> (u16, HashMap<String, String>, String) {
    let r = common::http::raw(addr, request.as_bytes()).await;
    (r.status, r.headers, r.body)
}

fn request(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: roost-tests\r\n\r\n")
}

/// The samples of a Prometheus text body by series (`name` or
/// `name{labels}`), checking its shape: each metric's HELP, then its TYPE
/// (once), then its samples; counters end in `_total`; values numeric.
fn samples(body: &str) -> HashMap<String, f64> {
    let mut helped = None::<String>;
    let mut typed = None::<String>;
    let mut seen = std::collections::HashSet::new();
    let mut samples = HashMap::new();
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            helped = Some(rest.split(' ').next().unwrap().to_owned());
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert_eq!(
                helped.as_deref(),
                Some(name),
                "HELP precedes TYPE for {name}"
            );
            assert!(matches!(kind, "counter" | "gauge"), "{line}");
            if kind == "counter" {
                assert!(name.ends_with("_total"), "counter {name} ends in _total");
            }
            assert!(seen.insert(name.to_owned()), "one TYPE for {name}");
            typed = Some(name.to_owned());
            continue;
        }
        assert!(!line.starts_with('#'), "unknown comment {line}");
        // `name value` or `name{labels} value`, the value numeric.
        let (series, value) = line.rsplit_once(' ').expect("name and value");
        let name = series.split('{').next().unwrap();
        if series.contains('{') {
            assert!(series.ends_with('}'), "{line}");
        }
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && name.starts_with("roost_"),
            "{line}"
        );
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("numeric value: {line}"));
        let typed_name = typed.as_deref().expect("TYPE before the sample");
        assert_eq!(typed_name, name, "the sample follows its own TYPE line");
        assert!(
            samples.insert(series.to_owned(), value).is_none(),
            "one {series}"
        );
    }
    samples
}

#[tokio::test]
async fn healthz_says_ok() {
    let b = MultiBroker::start().await;
    let (code, _, body) = get(b.http, &request("/healthz")).await;
    assert_eq!((code, body.as_str()), (200, "ok"));
    b.stop().await;
}

#[tokio::test]
async fn stats_is_json_with_every_counter() {
    let b = MultiBroker::start().await;
    let mut c = b.connected(Kind::Tcp, v5("counted")).await;
    c.subscribe(1, "a/b", roost::codec::QoS::AtMostOnce).await;
    c.publish(retained("a/b", "x", roost::codec::QoS::AtMostOnce, 1))
        .await;
    let _ = c.recv_publish().await;

    let (code, headers, body) = get(b.http, &request("/stats")).await;
    assert_eq!(code, 200);
    assert_eq!(headers["content-type"], "application/json");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    for key in [
        "version",
        "started",
        "uptime",
        "bytes_received",
        "bytes_sent",
        "packets_received",
        "packets_sent",
        "messages_received",
        "messages_sent",
        "clients_connected",
        "clients_disconnected",
        "clients_maximum",
        "clients_total",
        "retained",
        "inflight",
        "subscriptions",
        "dropped",
        "memory",
    ] {
        assert!(v.get(key).is_some(), "{key} missing from {body}");
    }
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(v["clients_connected"], 1, "{body}");
    assert_eq!(v["subscriptions"], 1, "{body}");
    assert_eq!(v["retained"], 1, "{body}");
    assert_eq!(v["bridges"], serde_json::json!([]), "always there");
    assert!(v["messages_received"].as_u64().unwrap() >= 1);
    assert!(v["bytes_received"].as_u64().unwrap() > 0);
    #[cfg(target_os = "linux")]
    assert!(
        v["memory"].as_u64().unwrap() > 0,
        "resident memory on Linux"
    );
    c.disconnect().await;
    b.stop().await;
}

#[tokio::test]
async fn metrics_are_prometheus_text() {
    let b = MultiBroker::start().await;
    let c = b.connected(Kind::Ws, v5("m")).await;
    let (code, headers, body) = get(b.http, &request("/metrics")).await;
    assert_eq!(code, 200);
    assert!(headers["content-type"].starts_with("text/plain; version=0.0.4"));

    let samples = samples(&body);
    assert_eq!(samples["roost_clients_connected"], 1.0);
    assert!(samples["roost_bytes_received_total"] > 0.0);
    assert!(samples.contains_key("roost_messages_dropped_total"));
    assert!(samples.contains_key("roost_uptime_seconds"));
    assert!(!body.contains("roost_bridge_"), "no bridges, no series");
    c.disconnect().await;
    b.stop().await;
}

#[tokio::test]
async fn other_paths_and_methods() {
    let b = MultiBroker::start().await;
    assert_eq!(get(b.http, &request("/")).await.0, 404);
    assert_eq!(get(b.http, &request("/stats/x")).await.0, 404);
    assert_eq!(get(b.http, &request("/stats?pretty")).await.0, 200);
    let post = "POST /stats HTTP/1.1\r\nContent-Length: 0\r\n\r\n";
    assert_eq!(get(b.http, post).await.0, 405);
    // A client that never finishes its request is dropped, not served.
    let mut s = TcpStream::connect(b.http).await.unwrap();
    s.write_all(b"GET /stats HTTP/1.1\r\n").await.unwrap();
    b.stop().await;
}

#[tokio::test]
async fn stats_over_https() {
    let b = MultiBroker::start().await;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let h = b
        .handle
        .add_listener(
            roost::Listener::new("stats-tls", l, roost::Transport::Https(b.certs.tls(None)))
                .unwrap(),
        )
        .unwrap();
    assert_eq!(h.scheme(), "https");
    let mut tls = tls_connect(h.local_addr(), b.certs.client_config(None))
        .await
        .unwrap();
    tls.write_all(request("/healthz").as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    let _ = tls.read_to_end(&mut raw).await;
    let text = String::from_utf8(raw).unwrap();
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    assert!(text.ends_with("\r\n\r\nok"), "{text}");
    b.stop().await;
}

/// Idle sockets cannot starve health checks: with every one of the HTTP
/// listener's slots (64) taken by connections that never send a byte, and
/// more of them arriving, `/healthz` still answers; the idle ones give way,
/// oldest first, and are counted.
#[tokio::test]
async fn healthz_answers_while_idle_sockets_fill_the_http_listener() {
    let b = MultiBroker::start().await;
    let mut idle = Vec::new();
    for _ in 0..70 {
        idle.push(TcpStream::connect(b.http).await.unwrap());
    }
    let (code, _, body) = get(b.http, &request("/healthz")).await;
    assert_eq!((code, body.as_str()), (200, "ok"));
    // 70 idle and one request through 64 slots: at least 7 gave way.
    assert!(
        b.stats.snapshot().http_evicted >= 7,
        "{:?}",
        b.stats.snapshot()
    );
    // The evicted ones were closed (the first opened go first).
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(WAIT, idle[0].read(&mut buf)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
    b.stop().await;
}

/// An HTTP connection that sends no request head is closed after a few
/// seconds, well before the (default, 10 s) connect timeout.
#[tokio::test]
async fn idle_http_connection_is_closed_after_a_short_head_timeout() {
    let b = MultiBroker::start().await;
    let mut s = TcpStream::connect(b.http).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(WAIT, s.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "still open after {WAIT:?}");
    assert!(rest.is_empty(), "{rest:?}");
    b.stop().await;
}

/// While the store's writes fail, `/healthz` says so (503) and `/stats`
/// shows it, so an orchestrator or an operator learns that nothing needing
/// storage is being acknowledged; once the retried write succeeds it is
/// healthy again.
#[tokio::test]
async fn healthz_reports_a_failing_store_until_a_write_succeeds() {
    use roost::codec::{QoS, ReasonCode};
    use roost::storage::FaultyStore;
    let store = FaultyStore::new(Durable::default());
    let faults = store.handle();
    let tcp_l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http_l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (tcp, http) = (tcp_l.local_addr().unwrap(), http_l.local_addr().unwrap());
    let server = roost::Server::new(roost::Options::default())
        .store(store)
        .tcp(tcp_l)
        .http(http_l)
        .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let join = tokio::spawn(server.serve(async {
        let _ = stopped.await;
    }));
    let stats_failing = |body: &str| -> bool {
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        v["storage_failing"]
            .as_bool()
            .expect("storage_failing is a boolean")
    };

    let (code, _, body) = get(http, &request("/healthz")).await;
    assert_eq!((code, body.as_str()), (200, "ok"));

    // A retained QoS 1 message must be stored before its PUBACK, which
    // waits while the write is retried.
    faults.set_failing(true);
    let mut p = Raw::connected(tcp, v5("p")).await;
    p.send(roost::codec::Packet::Publish(retained(
        "t",
        "x",
        QoS::AtLeastOnce,
        1,
    )))
    .await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while get(http, &request("/healthz")).await.0 != 503 {
        assert!(tokio::time::Instant::now() < deadline, "still healthy");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    p.expect_nothing().await;
    // Meanwhile, what needs storage is refused at once.
    let mut q = Raw::connected(tcp, v5("q")).await;
    assert_eq!(
        q.publish(retained("t", "y", QoS::AtLeastOnce, 1)).await,
        ReasonCode::QuotaExceeded
    );
    let (code, _, body) = get(http, &request("/healthz")).await;
    assert_eq!((code, body.as_str()), (503, "storage failing"));
    let (_, _, stats) = get(http, &request("/stats")).await;
    assert!(stats_failing(&stats), "{stats}");
    let (_, _, metrics) = get(http, &request("/metrics")).await;
    assert!(
        metrics.lines().any(|l| l == "roost_storage_failing 1"),
        "{metrics}"
    );

    faults.set_failing(false);
    match p.recv().await {
        // Stored and acknowledged; nobody subscribes to `t`.
        roost::codec::Packet::PubAck(r) => {
            assert_eq!(r.reason, ReasonCode::NoMatchingSubscribers)
        }
        other => panic!("expected the held PUBACK, got {other:?}"),
    }
    let (code, _, body) = get(http, &request("/healthz")).await;
    assert_eq!((code, body.as_str()), (200, "ok"));
    let (_, _, stats) = get(http, &request("/stats")).await;
    assert!(!stats_failing(&stats), "{stats}");

    let _ = stop.send(());
    join.await.unwrap().unwrap();
}

/// `/stats` of an edge broker whose only bridge satisfies `done`, polled
/// for up to twice `WAIT` (the queue length is sampled about once a
/// second, reconnects back off); panics with the last one.
async fn bridge_settled(
    http: SocketAddr,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + 2 * WAIT;
    loop {
        let (_, _, body) = get(http, &request("/stats")).await;
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let bridges = v["bridges"].as_array().expect("a bridges array");
        assert_eq!(bridges.len(), 1, "{body}");
        if done(&bridges[0]) {
            return bridges[0].clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not settled: {body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// An edge broker bridged to a second one shows the bridge in `/stats`
/// and `/metrics` with what really happened: the messages forwarded while
/// the remote was up, then the link down, retried, and why.
#[tokio::test]
async fn a_bridge_shows_in_stats_and_metrics_up_and_down() {
    use roost::bridge::{Bridge, Remote, Rule};
    use roost::codec::QoS;
    use std::time::Duration;
    let remote = TestBroker::start().await;
    let mut up = Raw::connected(remote.addr, v5("cloud-app")).await;
    up.subscribe(1, "site-1/devices/#", QoS::AtLeastOnce).await;
    let bridge = Bridge::new(
        "cloud",
        Remote::parse(&format!("mqtt://{}", remote.addr)).unwrap(),
    )
    .client_id(unique("gw"))
    .reconnect(Duration::from_millis(50), Duration::from_millis(200))
    .forward(Rule::new("devices/#", QoS::AtLeastOnce).remote_prefix("site-1/"));
    let http_l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = http_l.local_addr().unwrap();
    let edge = TestBroker::with_server(
        roost::Server::new(roost::Options::default())
            .bridge(bridge)
            .unwrap()
            .http(http_l)
            .unwrap(),
    )
    .await;
    bridge_settled(http, |b| b["connected"] == true).await;

    let mut device = Raw::connected(edge.addr, v5("device")).await;
    for i in 1..=3u16 {
        let r = device
            .publish(publish("devices/t1", &i.to_string(), QoS::AtLeastOnce, i))
            .await;
        assert!(r.is_success(), "{r:?}");
        let m = up.recv_publish().await;
        assert_eq!(
            (m.topic.as_str(), payload(&m)),
            ("site-1/devices/t1", i.to_string().as_str())
        );
        up.ack(&m).await;
    }
    let b = bridge_settled(http, |b| {
        b["forwarded"] == 3 && b["inflight"] == 0 && b["queued"] == 0
    })
    .await;
    assert_eq!(
        b,
        serde_json::json!({
            "name": "cloud", "connected": true, "queued": 0, "inflight": 0,
            "forwarded": 3, "received": 0, "refused": 0, "dropped": 0,
            "reconnects": 0, "last_error": null,
        })
    );
    let (_, _, body) = get(http, &request("/metrics")).await;
    let m = samples(&body);
    for (series, value) in [
        ("roost_bridge_connected", 1.0),
        ("roost_bridge_queued_messages", 0.0),
        ("roost_bridge_inflight_messages", 0.0),
        ("roost_bridge_forwarded_messages_total", 3.0),
        ("roost_bridge_received_messages_total", 0.0),
        ("roost_bridge_refused_messages_total", 0.0),
        ("roost_bridge_dropped_messages_total", 0.0),
        ("roost_bridge_reconnects_total", 0.0),
    ] {
        let series = format!("{series}{{bridge=\"cloud\"}}");
        assert_eq!(m.get(&series), Some(&value), "{series} in {body}");
    }

    // The remote goes away: the link is down, retried, and says why.
    up.disconnect().await;
    remote.stop().await;
    let b = bridge_settled(http, |b| {
        b["connected"] == false
            && b["reconnects"].as_u64() >= Some(1)
            && b["last_error"].is_string()
    })
    .await;
    assert!(!b["last_error"].as_str().unwrap().is_empty(), "{b}");
    assert_eq!(b["forwarded"], 3, "{b}");
    let (_, _, body) = get(http, &request("/metrics")).await;
    let m = samples(&body);
    assert_eq!(
        m[r#"roost_bridge_connected{bridge="cloud"}"#], 0.0,
        "{body}"
    );
    assert!(
        m[r#"roost_bridge_reconnects_total{bridge="cloud"}"#] >= 1.0,
        "{body}"
    );
    device.disconnect().await;
    edge.stop().await;
}
