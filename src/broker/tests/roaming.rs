//! Sessions that move between cluster nodes (`roaming`): the core's side,
//! driven by the events the cluster's edge sends.

use super::*;
use crate::broker::pages::{LEAN_PAGE, QUEUE_WINDOW};
use crate::broker::roaming::{Adopt, Export, Replayed, Scope, SessionState};
use std::num::NonZeroU16;

/// Asks the core for every persistent session's state.
fn export(core: &mut Core) -> Vec<SessionState> {
    export_some(core, Scope::All).sessions
}

/// Asks the core for the sessions' state in `scope`.
fn export_some(core: &mut Core, scope: Scope) -> Export {
    let (tx, mut rx) = tokio::sync::oneshot::channel();
    core.handle(Event::Export { scope, reply: tx });
    rx.try_recv().expect("answered at once")
}

/// A core whose sessions live in a cluster's bucket: acknowledgements
/// that change them wait for their save.
fn clustered() -> Core {
    let mut core = Core::new(Options::default());
    core.broker
        .save_sessions_in_cluster(Arc::new(tokio::sync::Notify::new()));
    core
}

/// The edge writes what waits for a save, and says so.
fn save(core: &mut Core) -> Vec<SessionState> {
    let export = export_some(core, Scope::Waiting);
    core.handle(Event::Saved {
        generation: export.generation,
    });
    export.sessions
}

fn qos2(seq: u64, topic: &str, payload: &str) -> Replayed {
    Replayed {
        seq,
        publish: publish(topic, payload, QoS::ExactlyOnce, 1),
        publisher: Some("elsewhere".into()),
    }
}

/// `dev`'s persistent session at QoS 2 on `cmd/#`, handed over by another
/// node.
fn handed_over() -> SessionState {
    let mut other = Core::new(Options::default());
    let mut dev = other.connected(v5_session("dev", true, 600));
    let granted = other.subscribe(&mut dev, "cmd/#", QoS::ExactlyOnce);
    assert_eq!(granted, ReasonCode::GrantedQos2);
    release(&mut other, "dev", false).expect("its state")
}

/// Asks the core to hand `client_id`'s session over.
fn release(core: &mut Core, client_id: &str, clean_start: bool) -> Option<SessionState> {
    let (tx, mut rx) = tokio::sync::oneshot::channel();
    core.handle(Event::Release {
        client_id: client_id.into(),
        clean_start,
        reply: tx,
    });
    rx.try_recv().expect("answered at once")
}

fn replayed(seq: u64, topic: &str, payload: &str) -> Replayed {
    Replayed {
        seq,
        publish: publish(topic, payload, QoS::AtLeastOnce, 1),
        publisher: Some("elsewhere".into()),
    }
}

#[test]
fn a_released_session_leaves_with_its_subscriptions_and_its_client_gets_0x8e() {
    let mut core = Core::new(Options::default());
    let mut dev = core.subscriber(v5_session("dev", true, 600), "cmd/#");
    let states = export(&mut core);
    assert_eq!(states.len(), 1);
    assert_eq!(states[0].subscriptions[0].filter, "cmd/#");
    let state = release(&mut core, "dev", false).expect("its state");
    assert_eq!(state.session.client_id, "dev");
    assert_eq!(state.subscriptions.len(), 1);
    assert_eq!(dev.expect_disconnect(), ReasonCode::SessionTakenOver);
    assert!(export(&mut core).is_empty(), "gone from this node");
    // A publish here no longer reaches it.
    let mut app = core.connected(v5("app"));
    let r = core.publish(&mut app, publish("cmd/x", "m", QoS::AtLeastOnce, 1));
    assert_eq!(r, ReasonCode::NoMatchingSubscribers);
}

#[test]
fn an_adopted_session_is_resumed_with_its_replay_and_its_cursor_follows_the_acks() {
    let mut core = Core::new(Options::default());
    let mut other = Core::new(Options::default());
    let _dev = other.subscriber(v5_session("dev", true, 600), "cmd/#");
    let state = release(&mut other, "dev", false).expect("its state");
    core.handle(Event::Adopt(Box::new(Adopt {
        state,
        replay: vec![
            replayed(5, "cmd/a", "five"),
            replayed(6, "other/b", "not for it"),
            replayed(7, "cmd/c", "seven"),
        ],
        upto: 9,
    })));
    // Away, owed 5 and 7: the cursor is the first of them.
    assert_eq!(export(&mut core)[0].cursor, 5);
    let (mut dev, ack) = core.connect(v5_session("dev", false, 600));
    assert!(ack.session_present);
    let first = dev.recv_publish();
    assert_eq!(payload(&first), "five");
    let second = dev.recv_publish();
    assert_eq!(payload(&second), "seven");
    dev.expect_nothing();
    core.ack(&dev, &first);
    let states = export(&mut core);
    assert_eq!(states[0].cursor, 7, "5 is acknowledged, 7 is still owed");
    assert!(states[0].moved);
    core.ack(&dev, &second);
    // Nothing owed: one past what this node routed (nothing yet).
    assert_eq!(export(&mut core)[0].cursor, 1);
    // Nothing moved since: the edge keeps what it wrote.
    assert!(!export(&mut core)[0].moved);
}

#[test]
fn a_session_started_over_elsewhere_ends_here_with_its_will() {
    let mut core = Core::new(Options::default());
    let mut w = core.watcher("w", "will/#");
    let mut c = v5_session("dev", true, 600);
    c.will = Some(will("will/dev", "gone", QoS::AtLeastOnce, false));
    let mut dev = core.connected(c);
    assert!(release(&mut core, "dev", true).is_none());
    assert_eq!(dev.expect_disconnect(), ReasonCode::SessionTakenOver);
    assert_eq!(payload(&w.recv_publish()), "gone");
}

#[test]
fn a_session_resumed_elsewhere_takes_its_will_along() {
    let mut core = Core::new(Options::default());
    let mut w = core.watcher("w", "will/#");
    let mut c = v5_session("dev", true, 600);
    let mut lw = will("will/dev", "moved", QoS::AtLeastOnce, false);
    lw.properties.will_delay_interval = Some(30);
    c.will = Some(lw);
    let _dev = core.connected(c);
    let state = release(&mut core, "dev", false).expect("its state");
    assert!(state.session.will.is_some(), "the will moves with it");
    // Past its delay: it did not fire here (the node that resumes the
    // session has it).
    core.advance(Duration::from_secs(40));
    w.expect_nothing();
}

#[test]
fn in_a_cluster_acknowledgements_that_change_a_session_wait_until_the_bucket_has_it() {
    let mut core = clustered();
    let mut dev = core.connected(v5_session("dev", true, 600));
    // Connected: to be written at once (were this node to die, another
    // takes it over).
    assert_eq!(save(&mut core).len(), 1);
    // SUBSCRIBE: its SUBACK waits for the subscription to be saved.
    let sub = Subscribe {
        packet_id: PacketId::new(1).unwrap(),
        filters: vec![("cmd/#".into(), Default::default())],
        subscription_identifier: None,
        user_properties: Vec::new(),
    };
    core.send(&dev, Packet::Subscribe(sub));
    dev.expect_nothing();
    let states = save(&mut core);
    assert_eq!(states.len(), 1, "only the session waited for");
    assert_eq!(states[0].subscriptions[0].filter, "cmd/#");
    assert!(matches!(dev.recv(), Some(Packet::SubAck(_))));
    // A QoS 2 PUBLISH: the PUBREC once its packet id is saved, the
    // PUBCOMP once its end is.
    core.send(
        &dev,
        Packet::Publish(publish("up/x", "m", QoS::ExactlyOnce, 7)),
    );
    dev.expect_nothing();
    assert_eq!(save(&mut core)[0].inbound_qos2, vec![7]);
    assert!(matches!(dev.recv(), Some(Packet::PubRec(r)) if r.packet_id.get() == 7));
    core.send(
        &dev,
        Packet::PubRel(PubResp::new(PacketId::new(7).unwrap())),
    );
    dev.expect_nothing();
    assert!(save(&mut core)[0].inbound_qos2.is_empty());
    assert!(matches!(dev.recv(), Some(Packet::PubComp(r)) if r.packet_id.get() == 7));
    // Nothing waits: the next export for waiting sessions is empty, and a
    // session that is not persistent never waits.
    assert!(save(&mut core).is_empty());
    let mut eph = core.connected(v5("eph"));
    assert_eq!(
        core.subscribe(&mut eph, "x/#", QoS::AtLeastOnce),
        ReasonCode::GrantedQos1
    );
}

#[test]
fn a_stream_message_goes_out_at_qos2_under_its_sequence_and_its_pubrel_waits_for_the_bucket() {
    let mut core = clustered();
    // 65,540 folds onto the same packet id as 5.
    core.handle(Event::Adopt(Box::new(Adopt {
        state: handed_over(),
        replay: vec![qos2(5, "cmd/a", "five"), qos2(65_540, "cmd/b", "later")],
        upto: 65_540,
    })));
    let (mut dev, ack) = core.connect(v5_session("dev", false, 600));
    assert!(ack.session_present);
    let first = dev.recv_publish();
    assert_eq!(payload(&first), "five");
    assert_eq!(first.qos_pid.packet_id().unwrap().get(), 5);
    // The next one's id is in flight: it waits.
    dev.expect_nothing();
    let pid = PacketId::new(5).unwrap();
    core.send(&dev, Packet::PubRec(PubResp::new(pid)));
    dev.expect_nothing();
    assert_eq!(
        save(&mut core)[0].released,
        vec![5],
        "released, saved first"
    );
    assert!(matches!(dev.recv(), Some(Packet::PubRel(r)) if r.packet_id == pid));
    core.send(&dev, Packet::PubComp(PubResp::new(pid)));
    let second = dev.recv_publish();
    assert_eq!(payload(&second), "later");
    assert_eq!(second.qos_pid.packet_id().unwrap().get(), 5);
}

#[test]
fn a_flow_the_old_node_released_gets_only_its_pubrel_and_the_rest_their_old_ids() {
    let mut core = clustered();
    let mut state = handed_over();
    state.released = vec![5];
    state.cursor = 5;
    core.handle(Event::Adopt(Box::new(Adopt {
        state,
        replay: vec![qos2(5, "cmd/a", "five"), qos2(9, "cmd/b", "nine")],
        upto: 9,
    })));
    let (mut dev, _) = core.connect(v5_session("dev", false, 600));
    // Resumed: the PUBREL (held until "released" is saved here too), then
    // nine under the id the old node gave it.
    dev.expect_nothing();
    save(&mut core);
    assert!(matches!(dev.recv(), Some(Packet::PubRel(r)) if r.packet_id.get() == 5));
    let nine = dev.recv_publish();
    assert_eq!(payload(&nine), "nine");
    assert_eq!(nine.qos_pid.packet_id().unwrap().get(), 9);
    dev.expect_nothing();
}

/// This node's cluster router, subscribed to everything at QoS 2.
fn router(core: &mut Core) -> Peer {
    let mut router = core.connect_inline(v5("$cluster/n1"));
    let granted = core.subscribe(&mut router, "#", QoS::ExactlyOnce);
    assert_eq!(granted, ReasonCode::GrantedQos2);
    router
}

#[test]
fn a_pubrec_waits_for_jetstream_then_the_bucket_which_gets_the_id_only_once_stored() {
    let mut core = clustered();
    let mut router = router(&mut core);
    let mut dev = core.connected(v5_session("dev", true, 600));
    core.send(
        &dev,
        Packet::Publish(publish("up/x", "m", QoS::ExactlyOnce, 7)),
    );
    dev.expect_nothing();
    // Not stored yet: a node dying now must not leave the id without its
    // message (the client's resend elsewhere would be taken for a
    // duplicate, and lost).
    let export = export_some(&mut core, Scope::All);
    let states = &export.sessions;
    assert!(states[0].inbound_qos2.is_empty(), "{states:?}");
    core.handle(Event::Saved {
        generation: export.generation,
    });
    dev.expect_nothing();
    // JetStream stored it (the router acknowledges its copy): now the
    // bucket, then the PUBREC.
    let copy = router.recv_publish();
    core.send(
        &router,
        Packet::PubRec(PubResp::new(copy.qos_pid.packet_id().unwrap())),
    );
    dev.expect_nothing();
    assert_eq!(save(&mut core)[0].inbound_qos2, vec![7]);
    assert!(
        matches!(dev.recv(), Some(Packet::PubRec(r)) if r.packet_id.get() == 7 && r.reason == ReasonCode::Success)
    );
}

#[test]
fn a_pubrec_the_cluster_refused_frees_its_packet_id_for_the_next_message() {
    let mut core = clustered();
    let router = router(&mut core);
    let mut dev = core.connected(v5("dev"));
    core.send(
        &dev,
        Packet::Publish(publish("up/x", "m", QoS::ExactlyOnce, 7)),
    );
    // The router goes before JetStream stored it: refused.
    core.drop_connection(router);
    assert!(matches!(dev.recv(), Some(Packet::PubRec(r)) if r.reason == ReasonCode::QuotaExceeded));
    // The flow is over: a PUBLISH under 7 is a new message (refused too,
    // no router), not a resend acknowledged and dropped.
    core.send(
        &dev,
        Packet::Publish(publish("up/x", "again", QoS::ExactlyOnce, 7)),
    );
    assert!(matches!(dev.recv(), Some(Packet::PubRec(r)) if r.reason == ReasonCode::QuotaExceeded));
}

#[test]
fn what_changed_is_exported_and_sessions_that_end_are_named_once() {
    let mut core = clustered();
    let mut dev = core.connected(v5_session("dev", true, 600));
    let sub = Subscribe {
        packet_id: PacketId::new(1).unwrap(),
        filters: vec![(
            "cmd/#".into(),
            crate::codec::SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                ..Default::default()
            },
        )],
        subscription_identifier: None,
        user_properties: Vec::new(),
    };
    core.send(&dev, Packet::Subscribe(sub));
    let _idle = core.connected(v5_session("idle", true, 600));
    assert_eq!(save(&mut core).len(), 2);
    assert!(matches!(dev.recv(), Some(Packet::SubAck(_))));
    // Nothing changed: the periodic export has nothing to write.
    assert!(export_some(&mut core, Scope::Changed).sessions.is_empty());
    // A clean DISCONNECT (the will is cleared): written at once.
    core.disconnect(dev);
    let states = save(&mut core);
    assert_eq!(states.len(), 1);
    assert_eq!(states[0].session.client_id, "dev");
    assert!(export_some(&mut core, Scope::Changed).sessions.is_empty());
    // A message queued for it moves its queue: the periodic export has it.
    let mut app = core.connected(v5("app"));
    core.publish(&mut app, publish("cmd/x", "m", QoS::AtLeastOnce, 1));
    let changed = export_some(&mut core, Scope::Changed).sessions;
    assert_eq!(changed.len(), 1);
    assert!(changed[0].moved);
    // Every one, on the full export.
    assert_eq!(export(&mut core).len(), 2);
    // It starts over: the old session ends here (named once), the new one
    // is not persistent and not kept.
    let _new = core.connected(v5_session("dev", true, 0));
    let export = export_some(&mut core, Scope::Waiting);
    assert_eq!(export.ended, vec![ByteStr::from("dev")]);
    assert!(export_some(&mut core, Scope::Waiting).ended.is_empty());
    // Handed over to another node, a session's entry is that node's: not
    // named as ended here.
    assert!(release(&mut core, "idle", false).is_some());
    assert!(export_some(&mut core, Scope::Waiting).ended.is_empty());
}

/// A core on a persistent store with `dev`'s persistent session subscribed
/// to `cmd/#` at QoS 2 and away, this node's router, and then the
/// session's state kept in a cluster's bucket.
fn clustered_on_disk(opts: Options, store: Arc<MemoryStore>) -> (Core, Peer) {
    let mut core = Core::persistent(opts, store);
    let router = router(&mut core);
    let mut dev = core.connected(v5_session("dev", true, 600));
    let granted = core.subscribe(&mut dev, "cmd/#", QoS::ExactlyOnce);
    assert_eq!(granted, ReasonCode::GrantedQos2);
    core.disconnect(dev);
    core.broker
        .save_sessions_in_cluster(Arc::new(tokio::sync::Notify::new()));
    (core, router)
}

/// The router injects the stream's messages `seqs` at QoS 2 (payload: the
/// sequence), each flow completed as the router completes it.
fn inject(core: &mut Core, router: &mut Peer, seqs: std::ops::Range<u64>) {
    for seq in seqs {
        let pid = PacketId::new((seq % 60_000 + 1) as u16).unwrap();
        core.handle(Event::Inject {
            conn: router.conn,
            publish: publish("cmd/x", &seq.to_string(), QoS::ExactlyOnce, pid.get()),
            origin: Box::new(Origin {
                client_id: Some("elsewhere".into()),
                seq: Some(seq),
            }),
        });
        assert!(matches!(router.recv(), Some(Packet::PubRec(r)) if r.packet_id == pid));
        core.send(router, Packet::PubRel(PubResp::new(pid)));
        assert!(matches!(router.recv(), Some(Packet::PubComp(r)) if r.packet_id == pid));
    }
}

/// `dev` back with one message in flight at a time (so that what it gets
/// next is known).
fn dev_back(core: &mut Core) -> Peer {
    let mut c = v5_session("dev", false, 600);
    c.properties.receive_maximum = NonZeroU16::new(1);
    let (dev, ack) = core.connect(c);
    assert!(ack.session_present);
    dev
}

/// `dev` gets the stream's message `seq` under its sequence's packet id
/// and takes it as far as PUBREL (the PUBREL waits for the bucket).
fn released(core: &mut Core, dev: &mut Peer, seq: u64) -> PacketId {
    let m = dev.recv_publish();
    assert_eq!(payload(&m), seq.to_string(), "in stream order");
    let pid = m.qos_pid.packet_id().expect("QoS 2");
    assert_eq!(u64::from(pid.get()), seq, "the packet id of its sequence");
    core.send(dev, Packet::PubRec(PubResp::new(pid)));
    save(core);
    assert!(matches!(dev.recv(), Some(Packet::PubRel(r)) if r.packet_id == pid));
    pid
}

/// A session whose queue is on disk (all of it while away, beyond the
/// window when back, and after a restart) exports the stream sequence of
/// the first message it is still owed: entries read back from the store
/// have their sequence, and a released flow is still known as one.
#[test]
fn a_spilled_queue_exports_the_cursor_of_its_first_owed_message() {
    let store = Arc::new(MemoryStore::new());
    let (mut core, mut router) = clustered_on_disk(Options::default(), store.clone());
    let first = 1000;
    let n = QUEUE_WINDOW as u64 + 100;
    inject(&mut core, &mut router, first..first + n);
    let stats = core.broker.stats.snapshot();
    assert_eq!(stats.queue_disk_messages, n, "all of it on disk only");
    assert_eq!(export(&mut core)[0].cursor, first);

    let mut dev = dev_back(&mut core);
    for seq in first..first + 10 {
        let pid = released(&mut core, &mut dev, seq);
        core.send(&dev, Packet::PubComp(PubResp::new(pid)));
    }
    let state = &export(&mut core)[0];
    assert_eq!(state.cursor, first + 10, "ten completed");
    // The next one released (only its PUBCOMP owed): still the cursor,
    // and in the bucket as released.
    released(&mut core, &mut dev, first + 10);
    let state = &export(&mut core)[0];
    assert_eq!(
        (state.cursor, &state.released[..]),
        (first + 10, &[first + 10][..])
    );

    // A restart: what was in flight and what was queued come back from
    // the store with their sequences.
    core.drop_connection(dev);
    let mut core = core.restart(Options::default(), Duration::from_secs(1));
    core.broker
        .save_sessions_in_cluster(Arc::new(tokio::sync::Notify::new()));
    let state = &export(&mut core)[0];
    assert_eq!(
        (state.cursor, &state.released[..]),
        (first + 10, &[first + 10][..])
    );
    let mut dev = dev_back(&mut core);
    save(&mut core);
    let pid = PacketId::new((first + 10) as u16).unwrap();
    assert!(matches!(dev.recv(), Some(Packet::PubRel(r)) if r.packet_id == pid));
    core.send(&dev, Packet::PubComp(PubResp::new(pid)));
    let pid = released(&mut core, &mut dev, first + 11);
    core.send(&dev, Packet::PubComp(PubResp::new(pid)));
    assert_eq!(export(&mut core)[0].cursor, first + 12);
}

/// Between the last entry of one page completed and the next page read
/// back, the session owes only what is on disk: the cursor is one past the
/// last sequence read back (no sooner, or the next node would deliver the
/// page again).
#[test]
fn between_two_pages_the_cursor_follows_what_was_read_back() {
    // Over the budget, a page is asked for only once the queue in memory
    // is empty, and brings `LEAN_PAGE` entries.
    let opts = Options {
        memory: crate::config::Memory { budget: 1 },
        ..Options::default()
    };
    let store = Arc::new(MemoryStore::new());
    let (mut core, mut router) = clustered_on_disk(opts, store);
    let first = 70_000; // Past one wrap of the packet ids.
    let n = 2 * LEAN_PAGE as u64;
    inject(&mut core, &mut router, first..first + n);
    let mut dev = dev_back(&mut core);
    let mut next_page = None;
    for seq in first..first + n {
        let m = dev.recv_publish();
        assert_eq!(payload(&m), seq.to_string(), "in stream order");
        let pid = m.qos_pid.packet_id().unwrap();
        assert_eq!(Some(pid), crate::broker::saves::stream_pid(seq));
        core.send(&dev, Packet::PubRec(PubResp::new(pid)));
        save(&mut core);
        assert!(matches!(dev.recv(), Some(Packet::PubRel(_))));
        core.send_uncommitted(&dev, Packet::PubComp(PubResp::new(pid)));
        let requests = core.broker.take_page_requests();
        if seq == first + LEAN_PAGE as u64 - 2 {
            // The last of the page went out: the next is asked for. Held
            // back, as a slow disk would, until that last one completes.
            assert_eq!(requests.len(), 1);
            next_page = requests.into_iter().next();
            core.commit();
            continue;
        }
        for request in requests {
            let page = read_page(&core.store, request);
            core.broker.page(page, core.now());
        }
        core.commit();
        let state = &export(&mut core)[0];
        // The next owed, or (the last) one past what was routed.
        assert_eq!(state.cursor, seq + 1, "after {seq}");
        if seq == first + LEAN_PAGE as u64 - 1 {
            // Nothing in memory, the rest on disk.
            assert_eq!(core.broker.stats.snapshot().queue_memory_bytes, 0);
            let page = read_page(&core.store, next_page.take().expect("held"));
            core.broker.page(page, core.now());
            core.commit();
        }
    }
    dev.expect_nothing();
}

/// The router injects a QoS 1 message of the stream at `seq` (routed to
/// nobody here): the core has routed the stream up to it.
fn routed_up_to(core: &mut Core, router: &mut Peer, seq: u64) {
    core.handle(Event::Inject {
        conn: router.conn,
        publish: publish("nobody/x", "n", QoS::AtLeastOnce, 1),
        origin: Box::new(Origin {
            client_id: Some("elsewhere".into()),
            seq: Some(seq),
        }),
    });
    assert!(matches!(router.recv(), Some(Packet::PubAck(_))));
}

/// JetStream stored the router's copy: the router acknowledges it.
fn router_stored(core: &mut Core, router: &mut Peer) {
    let copy = router.recv_publish();
    core.send(
        router,
        Packet::PubRec(PubResp::new(copy.qos_pid.packet_id().unwrap())),
    );
}

#[test]
fn an_unstored_inbound_qos2_flow_is_exported_by_number_above_a_floor_until_stored() {
    let mut core = clustered();
    let mut router = router(&mut core);
    routed_up_to(&mut core, &mut router, 40);
    let mut dev = core.connected(v5_session("dev", true, 600));
    core.send(
        &dev,
        Packet::Publish(publish("up/x", "m", QoS::ExactlyOnce, 7)),
    );
    let copy = router.recv_publish();
    // The stream moves on before JetStream acknowledges the message.
    routed_up_to(&mut core, &mut router, 45);
    let state = export(&mut core).remove(0);
    assert!(state.inbound_qos2.is_empty(), "{state:?}");
    let flows = &state.inbound;
    assert_eq!(flows.unstored.len(), 1, "{flows:?}");
    let flow = flows.unstored[0];
    assert_eq!(flows.next, flow + 1, "numbered in order");
    assert_eq!(flows.floor, 40, "what was routed when the flow began");
    assert!(flows.may_be_open(flow));
    assert!(flows.may_be_open(flow + 1), "a later flow");
    assert!(!flows.may_be_open(flow - 1), "an earlier one, known stored");
    // Stored: the id is in the state, the flow no longer listed, and the
    // floor follows the stream.
    core.send(
        &router,
        Packet::PubRec(PubResp::new(copy.qos_pid.packet_id().unwrap())),
    );
    let state = save(&mut core).remove(0);
    assert_eq!(state.inbound_qos2, vec![7]);
    assert!(state.inbound.unstored.is_empty());
    assert_eq!(state.inbound.next, flow + 1);
    assert_eq!(state.inbound.floor, 45);
    assert!(!state.inbound.may_be_open(flow), "its id is saved instead");
    assert!(matches!(dev.recv(), Some(Packet::PubRec(r)) if r.packet_id.get() == 7));
    // Completed: gone from the state, and still not open.
    core.send(
        &dev,
        Packet::PubRel(PubResp::new(PacketId::new(7).unwrap())),
    );
    let state = save(&mut core).remove(0);
    assert!(state.inbound_qos2.is_empty());
    assert!(
        !state.inbound.may_be_open(flow),
        "completed: never open again"
    );
    assert!(matches!(dev.recv(), Some(Packet::PubComp(_))));
    // A session that publishes nothing at QoS 2 is numbered too (from its
    // clock), so an earlier session of its client id is never taken for
    // its flows.
    let _idle = core.connected(v5_session("idle", true, 600));
    let idle = export(&mut core)
        .into_iter()
        .find(|s| s.session.client_id == "idle")
        .unwrap();
    assert!(idle.inbound.next > 0);
}

#[test]
fn an_adopted_session_takes_a_resend_of_a_flow_found_in_the_stream_for_what_it_is() {
    let mut core = clustered();
    let mut router = router(&mut core);
    let mut other = clustered();
    let mut dev = other.connected(v5_session("dev", true, 600));
    other.disconnect(dev);
    let mut state = release(&mut other, "dev", false).expect("its state");
    // What the edge's scan adds: flow 9's message, packet id 3, is in the
    // stream; its PUBREC never went.
    state.inbound_qos2.push(3);
    let next = state.inbound.next.max(u64::MAX / 2);
    state.inbound.next = next;
    core.handle(Event::Adopt(Box::new(Adopt {
        state,
        replay: Vec::new(),
        upto: 0,
    })));
    let (dev2, ack) = core.connect(v5_session("dev", false, 600));
    assert!(ack.session_present);
    dev = dev2;
    let mut resend = publish("up/x", "m", QoS::ExactlyOnce, 3);
    resend.dup = true;
    core.send(&dev, Packet::Publish(resend));
    assert!(
        matches!(dev.recv(), Some(Packet::PubRec(r)) if r.packet_id.get() == 3 && r.reason == ReasonCode::Success)
    );
    router.expect_nothing();
    core.send(
        &dev,
        Packet::PubRel(PubResp::new(PacketId::new(3).unwrap())),
    );
    save(&mut core);
    assert!(matches!(dev.recv(), Some(Packet::PubComp(c)) if c.reason == ReasonCode::Success));
    // Its next flow goes on from what the session brought: a node taking
    // it over after this one finds it open.
    core.send(
        &dev,
        Packet::Publish(publish("up/x", "new", QoS::ExactlyOnce, 3)),
    );
    let copy = router.recv_publish();
    assert_eq!(payload(&copy), "new", "a new message under a freed id");
    let state = export(&mut core).remove(0);
    assert_eq!(state.inbound.unstored, vec![next]);
    assert_eq!(state.inbound.next, next + 1);
}

#[test]
fn a_handover_answers_once_jetstream_settled_the_sessions_inbound_qos2_messages() {
    let mut core = clustered();
    let mut router = router(&mut core);
    let dev = core.connected(v5_session("dev", true, 600));
    for (pid, payload) in [(7, "stored"), (8, "refused")] {
        core.send(
            &dev,
            Packet::Publish(publish("up/x", payload, QoS::ExactlyOnce, pid)),
        );
    }
    let (tx, mut rx) = tokio::sync::oneshot::channel();
    core.handle(Event::Release {
        client_id: "dev".into(),
        clean_start: false,
        reply: tx,
    });
    // The router still holds both on their way to JetStream: no answer
    // yet (the next node could not know whether they will be stored).
    assert!(rx.try_recv().is_err(), "not answered before JetStream");
    router_stored(&mut core, &mut router);
    assert!(rx.try_recv().is_err(), "one still on its way");
    // The router goes before JetStream stored the other: refused, its id
    // is free again.
    let _second = router.recv_publish();
    core.drop_connection(router);
    let state = rx.try_recv().expect("answered").expect("its state");
    assert_eq!(state.inbound_qos2, vec![7], "{state:?}");
    assert!(state.inbound.unstored.is_empty());
}
