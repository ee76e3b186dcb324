//! An edge gateway that embeds roost, as a typical IoT application does:
//!
//! - devices authenticate against the application's own device table
//!   (user name = device id, password = its token);
//! - an ACL lets each device publish only under `devices/{id}/` and
//!   subscribe only to `commands/{id}`;
//! - the application tracks which clients of each device are connected, by
//!   client id (a device may run several, as `mosquitto_sub` and
//!   `mosquitto_pub` below do): online while any is;
//! - every telemetry message is handled by business logic, through an inline
//!   subscription that also learns the client id of the publisher, and
//!   answered with a command published in process;
//! - the application serves the device table and the broker's stats
//!   (`StatsSnapshot` serialized) on its own HTTP API (`GET /devices`,
//!   `GET /stats`).
//!
//! Run it, then talk to it with any MQTT client:
//!
//! ```text
//! cargo run --example edge_gateway
//! mosquitto_sub -h 127.0.0.1 -u sensor-1 -P token-1 -i sensor-1 -t commands/sensor-1 &
//! mosquitto_pub -h 127.0.0.1 -u sensor-1 -P token-1 -i sensor-1b -t devices/sensor-1/telemetry -m 21.5
//! curl http://127.0.0.1:8081/devices
//! ```
//!
//! `EDGE_MQTT` and `EDGE_HTTP` move the listeners (defaults 127.0.0.1:1883
//! and 127.0.0.1:8081).

use roost::codec::{Connect, QoS, ReasonCode};
use roost::hooks::{AclHook, AuthHook, BoxFuture, Client, Decision, EventHook};
use roost::Message;
use roost::{InlineClient, Options, Server, Stats};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// The application's device table: id → token, and who is online.
#[derive(Debug, Default)]
pub(crate) struct Devices {
    tokens: HashMap<String, String>,
    /// Device id → the client ids connected as it. Keyed by client id, not
    /// by device: one client of a device leaving does not take the others
    /// offline.
    online: Mutex<BTreeMap<String, BTreeSet<String>>>,
    /// What the business logic handled, newest last: `device/client:
    /// reading`.
    pub handled: Mutex<Vec<String>>,
}

impl Devices {
    /// A table with these (id, token) pairs, all offline.
    pub(crate) fn new(devices: &[(&str, &str)]) -> Self {
        Devices {
            tokens: devices
                .iter()
                .map(|(id, token)| (id.to_string(), token.to_string()))
                .collect(),
            online: Mutex::new(
                devices
                    .iter()
                    .map(|(id, _)| (id.to_string(), BTreeSet::new()))
                    .collect(),
            ),
            handled: Mutex::default(),
        }
    }

    /// Client `client_id` of device `id` connected (`online`) or left.
    fn set_online(&self, id: &str, client_id: &str, online: bool) {
        if let Some(clients) = self.online.lock().unwrap().get_mut(id) {
            if online {
                clients.insert(client_id.to_owned());
            } else {
                clients.remove(client_id);
            }
            let state = if clients.is_empty() {
                "offline"
            } else {
                "online"
            };
            println!("device {id} is {state} ({} clients)", clients.len());
        }
    }

    fn json(&self) -> String {
        let online = self.online.lock().unwrap();
        // serde_json escapes the client ids, which the clients chose.
        let entries: Vec<serde_json::Value> = online
            .iter()
            .map(|(id, clients)| {
                serde_json::json!({"id": id, "online": !clients.is_empty(), "clients": clients})
            })
            .collect();
        serde_json::Value::from(entries).to_string()
    }
}

/// The hooks: authentication, ACL and online tracking, all on the table.
#[derive(Clone)]
struct Gatekeeper(Arc<Devices>);

impl AuthHook for Gatekeeper {
    fn authenticate<'a>(&'a self, _: &'a Client, c: &'a Connect) -> BoxFuture<'a, Decision> {
        // A real gateway would look the device up in its database here; the
        // hook is async, so that lookup would not block the broker.
        let user = c.username.as_deref().unwrap_or_default();
        let pass = c.password.as_deref().unwrap_or_default();
        let ok = self
            .0
            .tokens
            .get(user)
            .is_some_and(|t| t.as_bytes() == pass);
        Box::pin(std::future::ready(if ok {
            Decision::Allow
        } else {
            Decision::Deny
        }))
    }
}

impl AclHook for Gatekeeper {
    fn can_publish<'a>(&'a self, c: &'a Client, topic: &'a str) -> BoxFuture<'a, Decision> {
        let user = c.username.as_deref().unwrap_or_default();
        let ok = topic
            .strip_prefix("devices/")
            .and_then(|rest| rest.strip_prefix(user))
            .is_some_and(|rest| rest.starts_with('/'));
        Box::pin(std::future::ready(if ok {
            Decision::Allow
        } else {
            Decision::Deny
        }))
    }

    fn can_subscribe<'a>(&'a self, c: &'a Client, filter: &'a str) -> BoxFuture<'a, Decision> {
        let user = c.username.as_deref().unwrap_or_default();
        let ok = filter.strip_prefix("commands/") == Some(user);
        Box::pin(std::future::ready(if ok {
            Decision::Allow
        } else {
            Decision::Deny
        }))
    }

    fn can_receive(&self, _: &Client, _: &Message) -> Decision {
        // Subscriptions are already limited to the device's own commands.
        Decision::Allow
    }
}

impl EventHook for Gatekeeper {
    fn on_session_established(&self, c: &Client, _: bool) {
        if let Some(user) = c.username.as_deref() {
            self.0.set_online(user, &c.client_id, true);
        }
    }

    fn on_disconnect(&self, c: &Client, _: Option<ReasonCode>, _: bool) {
        if let Some(user) = c.username.as_deref() {
            self.0.set_online(user, &c.client_id, false);
        }
    }
}

/// The business logic: every telemetry reading is recorded and answered
/// with a command to the device that sent it.
async fn handle_telemetry(app: InlineClient, devices: Arc<Devices>) {
    let Ok(mut telemetry) = app.subscribe("devices/+/telemetry", QoS::AtLeastOnce).await else {
        return;
    };
    while let Some(m) = telemetry.recv().await {
        let device = m.topic.split('/').nth(1).unwrap_or_default().to_owned();
        let reading = String::from_utf8_lossy(&m.payload).into_owned();
        let client = m.publisher.as_deref().unwrap_or("?");
        println!("telemetry from {device} (client {client}): {reading}");
        devices
            .handled
            .lock()
            .unwrap()
            .push(format!("{device}/{client}: {reading}"));
        let command = format!("ack {reading}");
        if let Err(e) = app
            .publish(&format!("commands/{device}"), command, QoS::AtLeastOnce)
            .await
        {
            eprintln!("cannot command {device}: {e}");
        }
    }
}

/// The application's own HTTP API: the device table and the broker's stats.
async fn serve_api(listener: TcpListener, devices: Arc<Devices>, stats: Arc<Stats>) {
    while let Ok((mut stream, _)) = listener.accept().await {
        let devices = devices.clone();
        let stats = stats.clone();
        tokio::spawn(async move {
            let mut request = [0u8; 1024];
            let n = stream.read(&mut request).await.unwrap_or(0);
            let request = String::from_utf8_lossy(&request[..n]);
            let path = request.split_whitespace().nth(1).unwrap_or("/");
            let (status, body) = match path {
                "/devices" => ("200 OK", devices.json()),
                "/stats" => (
                    "200 OK",
                    serde_json::to_string(&stats.snapshot()).unwrap_or_default(),
                ),
                _ => ("404 Not Found", "{}".to_owned()),
            };
            let response = format!(
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
        });
    }
}

/// Starts the gateway on the given listeners; it runs until `shutdown`.
pub(crate) async fn run(
    mqtt: TcpListener,
    http: TcpListener,
    devices: Arc<Devices>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), roost::ServeError> {
    let gatekeeper = Gatekeeper(devices.clone());
    let server = Server::new(Options::default())
        .auth_hook(gatekeeper.clone())
        .acl_hook(gatekeeper.clone())
        .event_hook(gatekeeper)
        .tcp(mqtt);
    let app = server.inline_client("edge-gateway");
    tokio::spawn(serve_api(http, devices.clone(), server.stats()));
    tokio::spawn(handle_telemetry(app, devices));
    server.serve(shutdown).await
}

#[allow(dead_code)] // The integration test uses `run` and not `main`.
#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mqtt_addr = std::env::var("EDGE_MQTT").unwrap_or_else(|_| "127.0.0.1:1883".into());
    let http_addr = std::env::var("EDGE_HTTP").unwrap_or_else(|_| "127.0.0.1:8081".into());
    let mqtt = TcpListener::bind(&mqtt_addr).await?;
    let http = TcpListener::bind(&http_addr).await?;
    println!("edge gateway: mqtt on {mqtt_addr}, api on http://{http_addr}");
    let devices = Arc::new(Devices::new(&[
        ("sensor-1", "token-1"),
        ("sensor-2", "token-2"),
    ]));
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    run(mqtt, http, devices, shutdown).await?;
    Ok(())
}
