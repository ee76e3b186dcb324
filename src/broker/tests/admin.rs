//! The admin API's requests, answered by the core: pages in key order,
//! a kicked client's DISCONNECT and what becomes of its session and will.

use super::*;
use crate::broker::admin::{AdminAnswer, AdminQuery, DisconnectOptions, Paging};

impl Core {
    fn admin(&mut self, query: AdminQuery) -> AdminAnswer {
        let answer = self.broker.admin(query, self.now());
        self.commit();
        answer
    }

    fn client_ids(&mut self, paging: Paging) -> (Vec<String>, Option<String>) {
        match self.admin(AdminQuery::Clients(paging)) {
            AdminAnswer::Clients(l) => (l.items.into_iter().map(|c| c.client_id).collect(), l.next),
            other => panic!("{other:?}"),
        }
    }

    fn kick(&mut self, id: &str, options: DisconnectOptions) -> crate::broker::admin::Disconnected {
        match self.admin(AdminQuery::Disconnect(id.into(), options)) {
            AdminAnswer::Disconnect(r) => r.expect("disconnected"),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn clients_come_a_page_at_a_time_in_id_order() {
    let mut core = Core::new(Options::default());
    let _peers: Vec<Peer> = ["d", "b", "e", "a", "c"]
        .iter()
        .map(|id| core.connected(v5(id)))
        .collect();
    let (page, next) = core.client_ids(Paging::first(2));
    assert_eq!(page, ["a", "b"]);
    let (page, next) = core.client_ids(Paging::after(2, next.unwrap()));
    assert_eq!(page, ["c", "d"]);
    // A client that joins before the cursor does not shift the pages.
    let _aa = core.connected(v5("aa"));
    let (page, next) = core.client_ids(Paging::after(2, next.unwrap()));
    assert_eq!(page, ["e"]);
    assert_eq!(next, None);
    let (all, next) = core.client_ids(Paging::first(10));
    assert_eq!(all, ["a", "aa", "b", "c", "d", "e"]);
    assert_eq!(next, None);
}

#[test]
fn a_client_shows_its_counts_and_subscriptions() {
    let mut core = Core::new(Options::default());
    let mut s = core.connected(v5_session("s", true, 300));
    core.subscribe(&mut s, "b/#", QoS::AtLeastOnce);
    core.subscribe(&mut s, "a/+", QoS::AtMostOnce);
    let mut p = core.connected(v5("p"));
    for i in 1..=3 {
        core.publish(&mut p, publish("b/x", "m", QoS::AtLeastOnce, i));
    }
    let AdminAnswer::Client(Some(info)) = core.admin(AdminQuery::Client("s".into())) else {
        panic!("no session");
    };
    assert!(info.client.connected);
    assert_eq!(info.client.connected_at, Some(time_of(START_MS)));
    assert_eq!(info.client.inflight + info.client.queued, 3);
    assert_eq!(info.client.subscriptions, 2);
    assert_eq!(info.client.session_expiry_interval, 300);
    let filters: Vec<_> = info
        .subscriptions
        .iter()
        .map(|s| s.filter.as_str())
        .collect();
    assert_eq!(filters, ["a/+", "b/#"]);
    assert_eq!(info.subscriptions[1].qos, QoS::AtLeastOnce);
    assert_eq!(
        core.admin(AdminQuery::Client("nobody".into())),
        AdminAnswer::Client(None)
    );
}

fn time_of(ms: u64) -> std::time::SystemTime {
    std::time::UNIX_EPOCH + Duration::from_millis(ms)
}

#[test]
fn a_kicked_client_gets_administrative_action_and_keeps_its_session() {
    let mut core = Core::new(Options::default());
    let mut c = core.connected(v5_session("c", true, 300));
    core.subscribe(&mut c, "t", QoS::AtLeastOnce);
    let done = core.kick("c", DisconnectOptions::new().reason("maintenance"));
    assert!(done.was_connected && !done.session_ended);
    match c.recv() {
        Some(Packet::Disconnect(d)) => {
            assert_eq!(d.reason, ReasonCode::AdministrativeAction);
            assert_eq!(d.properties.reason_string.as_deref(), Some("maintenance"));
        }
        other => panic!("expected DISCONNECT, got {other:?}"),
    }
    assert!(c.is_closed());
    // Messages wait for it, and it resumes.
    let mut p = core.connected(v5("p"));
    core.publish(&mut p, publish("t", "while away", QoS::AtLeastOnce, 1));
    let (mut c, ack) = core.connect(v5_session("c", false, 300));
    assert!(ack.session_present);
    assert_eq!(payload(&c.recv_publish()), "while away");
}

#[test]
fn ending_the_session_drops_its_queue_and_publishes_the_will_at_once() {
    let mut core = Core::new(Options::default());
    let mut w = core.watcher("w", "will/#");
    let mut connect = v5_session("c", true, 300);
    let mut last = will("will/c", "gone", QoS::AtLeastOnce, false);
    last.properties.will_delay_interval = Some(60);
    connect.will = Some(last);
    let mut c = core.connected(connect);
    core.subscribe(&mut c, "t", QoS::AtLeastOnce);
    core.kick("c", DisconnectOptions::new());
    // Disconnected by the server: the will waits for its delay.
    w.expect_nothing();
    let mut p = core.connected(v5("p"));
    core.publish(&mut p, publish("t", "queued", QoS::AtLeastOnce, 1));
    // The session ends while away: the will goes now ([MQTT-3.1.3-9]).
    let done = core.kick("c", DisconnectOptions::new().end_session(true));
    assert!(!done.was_connected && done.session_ended);
    assert_eq!(payload(&w.recv_publish()), "gone");
    let (mut c, ack) = core.connect(v5_session("c", false, 300));
    assert!(!ack.session_present);
    c.expect_nothing();
}

#[test]
fn a_discarded_will_is_not_published() {
    let mut core = Core::new(Options::default());
    let mut w = core.watcher("w", "will/#");
    let mut connect = v5("c");
    connect.will = Some(will("will/c", "gone", QoS::AtMostOnce, false));
    let _c = core.connected(connect);
    let done = core.kick(
        "c",
        DisconnectOptions::new()
            .end_session(true)
            .discard_will(true),
    );
    assert!(done.was_connected && done.session_ended);
    w.expect_nothing();

    // Without discarding, the same will goes out.
    let mut connect = v5("c");
    connect.will = Some(will("will/c", "gone", QoS::AtMostOnce, false));
    let _c = core.connected(connect);
    core.kick("c", DisconnectOptions::new());
    assert_eq!(payload(&w.recv_publish()), "gone");
}

#[test]
fn a_3_1_1_client_is_closed_without_disconnect() {
    let mut core = Core::new(Options::default());
    let mut c = core.connected(v311("old"));
    core.kick("old", DisconnectOptions::new());
    assert!(c.is_closed());
    c.expect_nothing();
    assert!(matches!(
        core.admin(AdminQuery::Disconnect(
            "old".into(),
            DisconnectOptions::new()
        )),
        AdminAnswer::Disconnect(Err(crate::broker::admin::AdminError::NotFound(_)))
    ));
}

#[test]
fn retained_messages_are_listed_by_topic_and_cleared() {
    let mut core = Core::new(Options::default());
    let mut p = core.connected(v5("p"));
    for topic in ["s/b", "s/a", "s/c/d", "other"] {
        let mut m = publish(topic, "1234", QoS::AtMostOnce, 0);
        m.retain = true;
        core.publish(&mut p, m);
    }
    let list =
        |core: &mut Core, paging| match core.admin(AdminQuery::Retained("s/#".into(), paging)) {
            AdminAnswer::Retained(l) => l,
            other => panic!("{other:?}"),
        };
    let first = list(&mut core, Paging::first(2));
    let topics: Vec<_> = first.items.iter().map(|r| r.topic.as_str()).collect();
    assert_eq!(topics, ["s/a", "s/b"]);
    assert_eq!(first.items[0].payload_bytes, 4);
    assert_eq!(first.items[0].expires_at, None);
    let rest = list(&mut core, Paging::after(2, first.next.unwrap()));
    assert_eq!(rest.items.len(), 1);
    assert_eq!(rest.items[0].topic, "s/c/d");
    assert_eq!(rest.next, None);

    assert_eq!(
        core.admin(AdminQuery::DeleteRetained("s/a".into())),
        AdminAnswer::DeleteRetained(true)
    );
    assert_eq!(
        core.admin(AdminQuery::DeleteRetained("s/a".into())),
        AdminAnswer::DeleteRetained(false)
    );
    assert_eq!(core.broker.stats.snapshot().retained, 3);
    // A new subscriber gets what is left.
    let mut w = core.watcher("w", "s/#");
    let mut got = vec![
        w.recv_publish().topic.to_string(),
        w.recv_publish().topic.to_string(),
    ];
    got.sort();
    assert_eq!(got, ["s/b", "s/c/d"]);
    w.expect_nothing();
}

#[test]
fn subscriptions_are_matched_as_topics_and_paged_by_client_then_filter() {
    let mut core = Core::new(Options::default());
    let mut a = core.connected(v5("a"));
    let mut b = core.connected(v5("b"));
    core.subscribe(&mut a, "s/+/t", QoS::AtMostOnce);
    core.subscribe(&mut a, "s/1", QoS::AtLeastOnce);
    core.subscribe(&mut a, "x/#", QoS::AtMostOnce);
    core.subscribe(&mut b, "$share/g/s/#", QoS::AtMostOnce);
    let list = |core: &mut Core, filter: &str, paging| match core
        .admin(AdminQuery::Subscriptions(filter.into(), paging))
    {
        AdminAnswer::Subscriptions(l) => l,
        other => panic!("{other:?}"),
    };
    let first = list(&mut core, "s/#", Paging::first(2));
    let got: Vec<_> = first
        .items
        .iter()
        .map(|s| (s.client_id.as_str(), s.filter.as_str()))
        .collect();
    assert_eq!(got, [("a", "s/+/t"), ("a", "s/1")]);
    let rest = list(&mut core, "s/#", Paging::after(2, first.next.unwrap()));
    let got: Vec<_> = rest
        .items
        .iter()
        .map(|s| (s.client_id.as_str(), s.filter.as_str()))
        .collect();
    assert_eq!(got, [("b", "$share/g/s/#")]);
    assert_eq!(rest.next, None);
    assert_eq!(list(&mut core, "#", Paging::default()).items.len(), 4);
    assert_eq!(list(&mut core, "s/+/t", Paging::default()).items.len(), 1);
}
