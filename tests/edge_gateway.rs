//! Runs the edge gateway example for real: a device connects with its
//! token, is marked online, publishes telemetry, the application's handler
//! fires and answers with a command, and the device is offline after it
//! disconnects, all seen through the application's own HTTP API.

mod common;
#[allow(dead_code)]
#[path = "../examples/edge_gateway.rs"]
mod edge_gateway;

use common::*;
use roost::codec::{Connect, QoS, ReasonCode};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned()
}

async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn device(id: &str, token: &str) -> Connect {
    let mut c = v5(id);
    c.username = Some(id.into());
    c.password = Some(bytes::Bytes::copy_from_slice(token.as_bytes()));
    c
}

#[tokio::test]
async fn the_gateway_authenticates_tracks_handles_and_reports() {
    let mqtt = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (mqtt_addr, http_addr) = (mqtt.local_addr().unwrap(), http.local_addr().unwrap());
    let devices = Arc::new(edge_gateway::Devices::new(&[("sensor-1", "token-1")]));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let gateway = tokio::spawn(edge_gateway::run(mqtt, http, devices.clone(), async {
        let _ = stopped.await;
    }));

    // A wrong token is refused; the right one gets in and is online.
    let (_, ack) = Raw::connect(mqtt_addr, device("sensor-1", "guess")).await;
    assert_eq!(ack.reason, ReasonCode::BadUserNameOrPassword);
    let mut d = Raw::connected(mqtt_addr, device("sensor-1", "token-1")).await;
    eventually("online", async || {
        get(http_addr, "/devices").await.contains("\"online\":true")
    })
    .await;

    // The ACL: its own commands only.
    let ack = d.subscribe(1, "commands/sensor-2", QoS::AtLeastOnce).await;
    assert_eq!(ack.reasons, vec![ReasonCode::NotAuthorized]);
    let ack = d.subscribe(2, "commands/sensor-1", QoS::AtLeastOnce).await;
    assert_eq!(ack.reasons, vec![ReasonCode::GrantedQos1]);
    assert_eq!(
        d.publish(publish(
            "devices/sensor-2/telemetry",
            "spoof",
            QoS::AtLeastOnce,
            3
        ))
        .await,
        ReasonCode::NotAuthorized
    );

    // Telemetry reaches the handler, which answers with a command.
    d.publish(publish(
        "devices/sensor-1/telemetry",
        "21.5",
        QoS::AtLeastOnce,
        4,
    ))
    .await;
    let command = d.recv_publish().await;
    assert_eq!(command.topic, "commands/sensor-1");
    assert_eq!(payload(&command), "ack 21.5");
    d.ack(&command).await;
    assert_eq!(
        *devices.handled.lock().unwrap(),
        vec!["sensor-1/sensor-1: 21.5".to_owned()]
    );
    assert!(get(http_addr, "/stats")
        .await
        .contains("\"clients_connected\":1"));

    d.disconnect().await;
    eventually("offline", async || {
        get(http_addr, "/devices")
            .await
            .contains("\"online\":false")
    })
    .await;
    let _ = stop.send(());
    gateway.await.unwrap().unwrap();
}

/// The device table's entry for `id`, as the application's API serves it.
async fn device_state(http: std::net::SocketAddr, id: &str) -> serde_json::Value {
    let body = get(http, "/devices").await;
    let all: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    all.into_iter()
        .find(|d| d["id"] == id)
        .unwrap_or_else(|| panic!("{id} missing from {body}"))
}

#[tokio::test]
async fn two_clients_of_one_device_do_not_take_each_other_offline() {
    let mqtt = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (mqtt_addr, http_addr) = (mqtt.local_addr().unwrap(), http.local_addr().unwrap());
    let devices = Arc::new(edge_gateway::Devices::new(&[("sensor-1", "token-1")]));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let gateway = tokio::spawn(edge_gateway::run(mqtt, http, devices.clone(), async {
        let _ = stopped.await;
    }));

    // One user name, two client ids (a subscriber and a publisher, as the
    // example's mosquitto_sub and mosquitto_pub).
    let mut second = device("sensor-1", "token-1");
    second.client_id = "sensor-1b".into();
    let first = Raw::connected(mqtt_addr, device("sensor-1", "token-1")).await;
    let mut second = Raw::connected(mqtt_addr, second).await;
    eventually("both clients online", async || {
        device_state(http_addr, "sensor-1").await["clients"]
            == serde_json::json!(["sensor-1", "sensor-1b"])
    })
    .await;

    // The handler learns which client published.
    second
        .publish(publish(
            "devices/sensor-1/telemetry",
            "7",
            QoS::AtLeastOnce,
            1,
        ))
        .await;
    eventually("the reading handled", async || {
        !devices.handled.lock().unwrap().is_empty()
    })
    .await;
    assert_eq!(
        *devices.handled.lock().unwrap(),
        vec!["sensor-1/sensor-1b: 7".to_owned()]
    );

    // The second leaves: the device stays online with the first.
    second.disconnect().await;
    eventually("the second client gone", async || {
        device_state(http_addr, "sensor-1").await["clients"] == serde_json::json!(["sensor-1"])
    })
    .await;
    assert_eq!(device_state(http_addr, "sensor-1").await["online"], true);

    first.disconnect().await;
    eventually("offline", async || {
        device_state(http_addr, "sensor-1").await["online"] == false
    })
    .await;
    let _ = stop.send(());
    gateway.await.unwrap().unwrap();
}
