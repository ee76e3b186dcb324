//! Interoperability with a client library we did not write: the core
//! scenarios driven by `rumqttc` (3.1.1 and 5.0) against a real broker.
//!
//! Each event loop runs in its own task and forwards every incoming packet
//! to a channel; tests wait on that channel with a timeout.

mod common;
use common::{TestBroker, QUIET, WAIT};
use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Packet, QoS, SubscribeReasonCode};
use std::collections::VecDeque;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

// ----- helpers local to this file -------------------------------------

/// Packets the event loop received, with a buffer for those a test skipped
/// while waiting for another.
struct Inbox<P> {
    rx: mpsc::UnboundedReceiver<P>,
    skipped: VecDeque<P>,
}

impl<P: std::fmt::Debug> Inbox<P> {
    /// The first packet (buffered or new) for which `f` returns `Some`.
    async fn next<T>(&mut self, mut f: impl FnMut(&P) -> Option<T>) -> T {
        if let Some(i) = self.skipped.iter().position(|p| f(p).is_some()) {
            let p = self.skipped.remove(i).expect("index in range");
            return f(&p).expect("matched above");
        }
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let p = tokio::time::timeout_at(deadline, self.rx.recv())
                .await
                .unwrap_or_else(|_| panic!("timed out; skipped {:?}", self.skipped))
                .expect("event loop ended");
            if let Some(t) = f(&p) {
                return t;
            }
            self.skipped.push_back(p);
        }
    }

    /// Asserts that nothing matching `f` arrives for a short while.
    async fn expect_none(&mut self, mut f: impl FnMut(&P) -> bool) {
        assert!(
            !self.skipped.iter().any(&mut f),
            "unexpected {:?}",
            self.skipped
        );
        let deadline = tokio::time::Instant::now() + QUIET;
        while let Ok(Some(p)) = tokio::time::timeout_at(deadline, self.rx.recv()).await {
            assert!(!f(&p), "unexpected {p:?}");
            self.skipped.push_back(p);
        }
    }
}

/// A rumqttc 3.1.1 client whose event loop runs in a task.
struct V4 {
    client: AsyncClient,
    inbox: Inbox<Packet>,
    task: JoinHandle<()>,
}

impl V4 {
    fn options(b: &TestBroker, id: &str) -> MqttOptions {
        let (host, port) = b.host_port();
        MqttOptions::new(id, host, port)
    }

    /// Connects and returns the client with its CONNACK's session present.
    async fn start(opts: MqttOptions) -> (V4, bool) {
        let (client, mut el) = AsyncClient::new(opts, 100);
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(p)) => {
                        if tx.send(p).is_err() {
                            break;
                        }
                    }
                    Ok(Event::Outgoing(_)) => {}
                    Err(_) => break, // Do not reconnect: tests reconnect explicitly.
                }
            }
        });
        let mut c = V4 {
            client,
            inbox: Inbox {
                rx,
                skipped: VecDeque::new(),
            },
            task,
        };
        let ack = c
            .inbox
            .next(|p| match p {
                Packet::ConnAck(a) => Some(a.clone()),
                _ => None,
            })
            .await;
        assert_eq!(ack.code, rumqttc::ConnectReturnCode::Success);
        (c, ack.session_present)
    }

    async fn connected(b: &TestBroker, id: &str) -> V4 {
        Self::start(Self::options(b, id)).await.0
    }

    async fn subscribe(&mut self, filter: &str, qos: QoS) -> Vec<SubscribeReasonCode> {
        self.client.subscribe(filter, qos).await.unwrap();
        self.inbox
            .next(|p| match p {
                Packet::SubAck(a) => Some(a.return_codes.clone()),
                _ => None,
            })
            .await
    }

    /// Publishes and waits until the QoS flow is complete.
    async fn publish(&mut self, topic: &str, payload: &str, qos: QoS, retain: bool) {
        self.client
            .publish(topic, qos, retain, payload.as_bytes().to_vec())
            .await
            .unwrap();
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => {
                self.inbox
                    .next(|p| matches!(p, Packet::PubAck(_)).then_some(()))
                    .await
            }
            QoS::ExactlyOnce => {
                self.inbox
                    .next(|p| matches!(p, Packet::PubComp(_)).then_some(()))
                    .await
            }
        }
    }

    async fn recv_publish(&mut self) -> rumqttc::Publish {
        self.inbox
            .next(|p| match p {
                Packet::Publish(p) => Some(p.clone()),
                _ => None,
            })
            .await
    }

    async fn expect_no_publish(&mut self) {
        self.inbox
            .expect_none(|p| matches!(p, Packet::Publish(_)))
            .await;
    }

    /// Sends DISCONNECT and waits for the event loop to end.
    async fn disconnect(self) {
        self.client.disconnect().await.unwrap();
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("event loop ends after DISCONNECT")
            .unwrap();
    }

    /// Kills the event loop: the socket closes without DISCONNECT.
    async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

// ----- 3.1.1 ----------------------------------------------------------

#[tokio::test]
async fn pubsub_at_qos_0_1_2() {
    let b = TestBroker::start().await;
    let mut sub = V4::connected(&b, "rumqttc-sub").await;
    assert_eq!(
        sub.subscribe("interop/+", QoS::ExactlyOnce).await,
        vec![SubscribeReasonCode::Success(QoS::ExactlyOnce)]
    );
    let mut publ = V4::connected(&b, "rumqttc-pub").await;
    for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
        .into_iter()
        .enumerate()
    {
        let text = format!("m{i}");
        publ.publish("interop/t", &text, qos, false).await;
        let p = sub.recv_publish().await;
        assert_eq!(p.topic, "interop/t");
        assert_eq!(&p.payload[..], text.as_bytes());
        assert_eq!(p.qos, qos);
        assert!(!p.retain);
    }
    sub.expect_no_publish().await;
    publ.disconnect().await;
    sub.disconnect().await;
}

#[tokio::test]
async fn granted_qos_limits_delivery_qos() {
    let b = TestBroker::start().await;
    let mut sub = V4::connected(&b, "low").await;
    assert_eq!(
        sub.subscribe("low/#", QoS::AtLeastOnce).await,
        vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );
    let mut publ = V4::connected(&b, "high").await;
    publ.publish("low/a", "x", QoS::ExactlyOnce, false).await;
    assert_eq!(sub.recv_publish().await.qos, QoS::AtLeastOnce);
}

#[tokio::test]
async fn retained_message_reaches_a_later_subscriber() {
    let b = TestBroker::start().await;
    let mut publ = V4::connected(&b, "rumqttc-pub").await;
    publ.publish("interop/retained", "kept", QoS::AtLeastOnce, true)
        .await;
    publ.disconnect().await;

    let mut sub = V4::connected(&b, "rumqttc-late").await;
    sub.subscribe("interop/#", QoS::AtLeastOnce).await;
    let p = sub.recv_publish().await;
    assert_eq!(p.topic, "interop/retained");
    assert_eq!(&p.payload[..], b"kept");
    assert!(p.retain);
    assert_eq!(p.qos, QoS::AtLeastOnce);

    // An empty retained message clears it.
    let mut publ = V4::connected(&b, "rumqttc-clear").await;
    publ.publish("interop/retained", "", QoS::AtLeastOnce, true)
        .await;
    let p = sub.recv_publish().await;
    assert!(p.payload.is_empty());
    let mut later = V4::connected(&b, "rumqttc-later").await;
    later.subscribe("interop/#", QoS::AtLeastOnce).await;
    later.expect_no_publish().await;
}

#[tokio::test]
async fn will_is_published_when_the_client_dies() {
    let b = TestBroker::start().await;
    let mut watcher = V4::connected(&b, "watcher").await;
    watcher.subscribe("wills/#", QoS::AtLeastOnce).await;

    let mut opts = V4::options(&b, "dying");
    opts.set_last_will(LastWill::new(
        "wills/dying",
        "died",
        QoS::AtLeastOnce,
        false,
    ));
    let (dying, _) = V4::start(opts).await;
    watcher.expect_no_publish().await;
    dying.kill().await;
    let p = watcher.recv_publish().await;
    assert_eq!(p.topic, "wills/dying");
    assert_eq!(&p.payload[..], b"died");
    assert_eq!(p.qos, QoS::AtLeastOnce);
}

#[tokio::test]
async fn will_is_not_published_after_disconnect() {
    let b = TestBroker::start().await;
    let mut watcher = V4::connected(&b, "watcher").await;
    watcher.subscribe("wills/#", QoS::AtLeastOnce).await;
    let mut opts = V4::options(&b, "polite");
    opts.set_last_will(LastWill::new(
        "wills/polite",
        "died",
        QoS::AtLeastOnce,
        false,
    ));
    let (polite, _) = V4::start(opts).await;
    polite.disconnect().await;
    watcher.expect_no_publish().await;
}

#[tokio::test]
async fn persistent_session_queues_messages_while_offline() {
    let b = TestBroker::start().await;
    let mut opts = V4::options(&b, "persistent");
    opts.set_clean_session(false);
    let (mut sub, present) = V4::start(opts.clone()).await;
    assert!(!present, "a new session");
    sub.subscribe("queue/#", QoS::ExactlyOnce).await;
    sub.disconnect().await;

    let mut publ = V4::connected(&b, "rumqttc-pub").await;
    publ.publish("queue/a", "one", QoS::AtLeastOnce, false)
        .await;
    publ.publish("queue/a", "two", QoS::ExactlyOnce, false)
        .await;
    publ.publish("queue/a", "three", QoS::AtLeastOnce, false)
        .await;

    let (mut sub, present) = V4::start(opts).await;
    assert!(present, "the session was kept");
    for (text, qos) in [
        ("one", QoS::AtLeastOnce),
        ("two", QoS::ExactlyOnce),
        ("three", QoS::AtLeastOnce),
    ] {
        let p = sub.recv_publish().await;
        assert_eq!(&p.payload[..], text.as_bytes());
        assert_eq!(p.qos, qos);
    }
    sub.expect_no_publish().await;
}

#[tokio::test]
async fn clean_session_reconnect_has_no_session() {
    let b = TestBroker::start().await;
    let mut opts = V4::options(&b, "cleaned");
    opts.set_clean_session(false);
    let (mut c, _) = V4::start(opts.clone()).await;
    c.subscribe("gone/#", QoS::AtLeastOnce).await;
    c.disconnect().await;

    opts.set_clean_session(true);
    let (mut c, present) = V4::start(opts).await;
    assert!(!present);
    let mut publ = V4::connected(&b, "rumqttc-pub").await;
    publ.publish("gone/a", "x", QoS::AtLeastOnce, false).await;
    c.expect_no_publish().await;
}

// ----- 5.0 ------------------------------------------------------------

mod v5 {
    use super::*;
    use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};

    pub(crate) struct V5 {
        pub client: AsyncClient,
        pub inbox: Inbox<Packet>,
    }

    impl V5 {
        pub(crate) async fn connected(b: &TestBroker, id: &str) -> V5 {
            let (host, port) = b.host_port();
            let (client, mut el) = AsyncClient::new(MqttOptions::new(id, host, port), 100);
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(async move {
                loop {
                    match el.poll().await {
                        Ok(Event::Incoming(p)) => {
                            if tx.send(p).is_err() {
                                break;
                            }
                        }
                        Ok(Event::Outgoing(_)) => {}
                        Err(_) => break,
                    }
                }
            });
            let mut c = V5 {
                client,
                inbox: Inbox {
                    rx,
                    skipped: VecDeque::new(),
                },
            };
            let ack = c
                .inbox
                .next(|p| match p {
                    Packet::ConnAck(a) => Some(a.clone()),
                    _ => None,
                })
                .await;
            assert_eq!(
                ack.code,
                rumqttc::v5::mqttbytes::v5::ConnectReturnCode::Success
            );
            c
        }

        pub(crate) async fn subscribe(&mut self, filter: &str, qos: QoS) {
            self.client.subscribe(filter, qos).await.unwrap();
            let codes = self
                .inbox
                .next(|p| match p {
                    Packet::SubAck(a) => Some(a.return_codes.clone()),
                    _ => None,
                })
                .await;
            assert_eq!(
                codes,
                vec![rumqttc::v5::mqttbytes::v5::SubscribeReasonCode::Success(
                    qos
                )]
            );
        }

        pub(crate) async fn publish(
            &mut self,
            topic: &str,
            payload: &str,
            props: PublishProperties,
        ) {
            self.client
                .publish_with_properties(
                    topic,
                    QoS::AtLeastOnce,
                    false,
                    payload.as_bytes().to_vec(),
                    props,
                )
                .await
                .unwrap();
            self.inbox
                .next(|p| matches!(p, Packet::PubAck(_)).then_some(()))
                .await;
        }

        pub(crate) async fn recv_publish(&mut self) -> rumqttc::v5::mqttbytes::v5::Publish {
            self.inbox
                .next(|p| match p {
                    Packet::Publish(p) => Some(p.clone()),
                    _ => None,
                })
                .await
        }
    }

    fn user_props() -> Vec<(String, String)> {
        // A repeated name: order and duplicates must survive ([MQTT-3.3.2-17],
        // [MQTT-3.3.2-18]).
        [("k", "1"), ("other", "x"), ("k", "2")]
            .into_iter()
            .map(|(a, b)| (a.to_owned(), b.to_owned()))
            .collect()
    }

    #[tokio::test]
    async fn v5_pubsub_forwards_user_properties() {
        let b = TestBroker::start().await;
        let mut sub = V5::connected(&b, "v5-sub").await;
        sub.subscribe("v5/#", QoS::AtLeastOnce).await;
        let mut publ = V5::connected(&b, "v5-pub").await;
        let props = PublishProperties {
            user_properties: user_props(),
            content_type: Some("text/plain".into()),
            ..Default::default()
        };
        publ.publish("v5/a", "hello", props).await;

        let p = sub.recv_publish().await;
        assert_eq!(&p.topic[..], b"v5/a");
        assert_eq!(&p.payload[..], b"hello");
        assert_eq!(p.qos, QoS::AtLeastOnce);
        let got = p.properties.expect("properties forwarded");
        assert_eq!(got.user_properties, user_props());
        assert_eq!(got.content_type.as_deref(), Some("text/plain"));
    }

    #[tokio::test]
    async fn v5_and_v311_clients_interoperate() {
        let b = TestBroker::start().await;
        let mut v5 = V5::connected(&b, "v5-client").await;
        v5.subscribe("mixed/to5", QoS::AtLeastOnce).await;
        let mut v4 = super::V4::connected(&b, "v4-client").await;
        v4.subscribe("mixed/to4", rumqttc::QoS::AtLeastOnce).await;

        let props = PublishProperties {
            user_properties: user_props(),
            ..Default::default()
        };
        v5.publish("mixed/to4", "from five", props).await;
        let p = v4.recv_publish().await;
        assert_eq!(&p.payload[..], b"from five");

        v4.publish("mixed/to5", "from four", rumqttc::QoS::AtLeastOnce, false)
            .await;
        let p = v5.recv_publish().await;
        assert_eq!(&p.payload[..], b"from four");
        // A 3.1.1 publisher has no properties to forward.
        assert!(p.properties.is_none_or(|pr| pr.user_properties.is_empty()));
    }
}
