//! Queues on disk (`broker::spill`): a persistent session's queue beyond its
//! window lives only in the store, and comes back a page at a time, in
//! order, when its client is ready for it.

use super::*;
use crate::broker::pages::{PAGE, QUEUE_WINDOW};
use crate::config::Limits;
use std::sync::atomic::Ordering::Relaxed;

fn durable(id: &str) -> Connect {
    v5_session(id, false, 3600)
}

/// A persistent subscriber to `t/#` that then goes away.
fn away(core: &mut Core, id: &str) {
    let s = core.subscriber(durable(id), "t/#");
    core.disconnect(s);
}

/// Publishes `n` QoS 1 messages "0".."n-1" to `t/x`.
fn publish_n(core: &mut Core, p: &mut Peer, from: usize, n: usize) {
    for i in from..from + n {
        let pid = (i % 60_000 + 1) as u16;
        let reason = core.publish(p, publish("t/x", &i.to_string(), QoS::AtLeastOnce, pid));
        assert_eq!(reason, ReasonCode::Success, "message {i}");
    }
}

/// Receives `n` messages in order, acknowledging each as a client does.
fn receive_in_order(core: &mut Core, s: &mut Peer, from: usize, n: usize) {
    for i in from..from + n {
        let m = s.recv_publish();
        assert_eq!(payload(&m), i.to_string(), "message {i} in order");
        core.ack(s, &m);
    }
}

fn stat(core: &Core, f: impl Fn(&crate::stats::StatsSnapshot) -> u64) -> u64 {
    f(&core.broker.stats.snapshot())
}

/// Messages for a client that is away go to the store only: memory holds
/// none of them, and they all come back, in order, once it returns.
#[test]
fn an_offline_queue_lives_in_the_store_and_comes_back_in_order() {
    let store = Arc::new(MemoryStore::new());
    let mut core = Core::persistent(Options::default(), store.clone());
    away(&mut core, "sub");
    let mut p = core.connected(v5("pub"));
    let n = 5 * QUEUE_WINDOW + 7;
    publish_n(&mut core, &mut p, 0, n);

    assert_eq!(stat(&core, |s| s.queue_disk_messages), n as u64);
    assert_eq!(
        stat(&core, |s| s.queue_memory_bytes),
        0,
        "nothing queued in memory"
    );
    let stored = store.outbound_page("sub", None, usize::MAX).unwrap();
    assert_eq!(stored.len(), n);
    assert!(
        stored.iter().all(|(_, e)| e.message.is_some()),
        "bodies inline"
    );

    let mut s = core.connected(durable("sub"));
    receive_in_order(&mut core, &mut s, 0, n);
    s.expect_nothing();
    assert_eq!(stat(&core, |s| s.queue_disk_messages), 0);
    assert_eq!(stat(&core, |s| s.queue_disk_bytes), 0);
    assert_eq!(stat(&core, |s| s.queue_memory_bytes), 0);
    assert_eq!(stat(&core, |s| s.inflight), 0);
    assert_eq!(stat(&core, |s| s.queue_messages_read), n as u64);
    assert!(core.pages_read >= n / PAGE, "{} pages", core.pages_read);
    assert!(store.outbound_page("sub", None, 10).unwrap().is_empty());
}

/// A connected client that does not keep up holds its in-flight window
/// and a queue window in memory; the rest waits in the store, and arrives
/// in order as it acknowledges.
#[test]
fn a_slow_client_keeps_a_window_in_memory_and_the_rest_on_disk() {
    let store = Arc::new(MemoryStore::new());
    let mut core = Core::persistent(Options::default(), store.clone());
    let mut s = core.subscriber(durable("sub"), "t/#");
    let mut p = core.connected(v5("pub"));
    let n = 4 * QUEUE_WINDOW;
    publish_n(&mut core, &mut p, 0, n);

    let window = usize::from(Limits::default().maximum_inflight);
    let on_disk = stat(&core, |s| s.queue_disk_messages) as usize;
    assert_eq!(on_disk, n - window - QUEUE_WINDOW);
    receive_in_order(&mut core, &mut s, 0, n);
    s.expect_nothing();
    assert_eq!(stat(&core, |s| s.queue_disk_messages), 0);
    assert_eq!(stat(&core, |s| s.inflight), 0);
}

/// A restart finds the queue in the store and leaves it there: it comes
/// back as the client takes it, including what was queued in memory when
/// the broker stopped.
#[test]
fn a_queue_on_disk_survives_a_restart_in_order() {
    let store = Arc::new(MemoryStore::new());
    let mut core = Core::persistent(Options::default(), store.clone());
    let mut s = core.subscriber(durable("sub"), "t/#");
    let mut p = core.connected(v5("pub"));
    // In flight, queued in memory, and spilled while connected...
    publish_n(&mut core, &mut p, 0, 3 * QUEUE_WINDOW);
    assert_eq!(payload(&s.recv_publish()), "0");
    core.drop_connection(s);
    core.drop_connection(p);
    // ...and spilled while away.
    let mut p = core.connected(v5("pub2"));
    publish_n(&mut core, &mut p, 3 * QUEUE_WINDOW, 100);
    let mut core = core.restart(Options::default(), Duration::from_secs(5));
    let total = 3 * QUEUE_WINDOW + 100;
    let window = usize::from(Limits::default().maximum_inflight);
    assert_eq!(
        stat(&core, |s| s.queue_disk_messages),
        (total - window) as u64,
        "all but what was in flight stays in the store"
    );

    let mut s = core.connected(durable("sub"));
    // What was in flight goes again (with DUP), then the rest, in order.
    receive_in_order(&mut core, &mut s, 0, total);
    s.expect_nothing();
    assert!(store.outbound_page("sub", None, 10).unwrap().is_empty());
}

/// A client back with Clean Start drops its queue, the part on disk too.
#[test]
fn clean_start_drops_a_queue_on_disk() {
    let store = Arc::new(MemoryStore::new());
    let mut core = Core::persistent(Options::default(), store.clone());
    away(&mut core, "sub");
    let mut p = core.connected(v5("pub"));
    publish_n(&mut core, &mut p, 0, 2 * QUEUE_WINDOW);
    let (mut s, ack) = core.connect(v5_session("sub", true, 3600));
    assert!(!ack.session_present);
    s.expect_nothing();
    assert_eq!(stat(&core, |s| s.queue_disk_messages), 0);
    assert_eq!(stat(&core, |s| s.queue_disk_bytes), 0);
    assert_eq!(stat(&core, |s| s.inflight), 0);
    assert!(store.outbound_page("sub", None, 10).unwrap().is_empty());
    // And the session goes on from there.
    core.subscribe(&mut s, "t/#", QoS::AtLeastOnce);
    publish_n(&mut core, &mut p, 7, 1);
    assert_eq!(payload(&s.recv_publish()), "7");
}

/// A message for several sessions is stored once while they take it
/// live; one that went away rewrites its queued copies with their bodies
/// inline, so that the shared body is not kept for it.
#[test]
fn a_shared_message_queued_in_memory_is_spilled_with_its_body() {
    let store = Arc::new(MemoryStore::new());
    let mut core = Core::persistent(Options::default(), store.clone());
    let mut a = core.subscriber(durable("a"), "t/#");
    let b = core.subscriber(durable("b"), "t/#");
    let mut p = core.connected(v5("pub"));
    let window = usize::from(Limits::default().maximum_inflight);
    publish_n(&mut core, &mut p, 0, window + 10);
    // Both hold 10 queued in memory, sharing the bodies with each other.
    assert_eq!(stat(&core, |s| s.queue_disk_messages), 0);
    core.drop_connection(b);
    assert_eq!(stat(&core, |s| s.queue_disk_messages), 10);
    receive_in_order(&mut core, &mut a, 0, window + 10);
    let mut b = core.connected(durable("b"));
    // In flight before: again, then the ten from the store.
    receive_in_order(&mut core, &mut b, 0, window + 10);
    b.expect_nothing();
    let snap = store.load().unwrap();
    assert!(snap.messages.is_empty(), "no body left behind");
    assert!(snap.sessions.iter().all(|s| s.outbound.is_empty()));
}

/// Sessions the store does not hold have only memory: the budget bounds
/// them, past it their messages are dropped (and counted); a persistent
/// session on a persistent store spills instead, and loses nothing.
#[test]
fn the_memory_budget_bounds_memory_only_queues_and_spills_stored_ones() {
    let budget = 64 * 1024;
    let mut opts = Options {
        memory: crate::config::Memory { budget },
        ..Options::default()
    };
    // What is in flight stays in memory (its packet ids are the client's):
    // a small window, so that most of the load is queued.
    opts.limits.maximum_inflight = 10;
    let payload_of = "x".repeat(1000);
    // No store: a slow subscriber's queue stops at the budget.
    let mut core = Core::new(opts.clone());
    let _s = core.subscriber(v5_session("sub", false, 3600), "t/#");
    let mut p = core.connected(v5("pub"));
    for i in 0..200u16 {
        core.publish(&mut p, publish("t/x", &payload_of, QoS::AtLeastOnce, i + 1));
    }
    // Each costs its topic and payload and its bookkeeping.
    let cost = 1003 + crate::broker::pages::ENTRY_COST;
    let held = stat(&core, |s| s.queue_memory_bytes) as usize;
    assert!(held <= budget, "{held} bytes held");
    assert!(held > budget - cost, "{held} bytes held");
    let dropped = stat(&core, |s| s.messages_dropped);
    assert_eq!(dropped as usize, 200 - held / cost, "the rest dropped");

    // A persistent store: the same load spills and everything arrives.
    let store = Arc::new(MemoryStore::new());
    let mut core = Core::persistent(opts, store);
    let mut s = core.subscriber(durable("sub"), "t/#");
    let mut p = core.connected(v5("pub"));
    for i in 0..200u16 {
        core.publish(&mut p, publish("t/x", &payload_of, QoS::AtLeastOnce, i + 1));
    }
    let held = stat(&core, |s| s.queue_memory_bytes) as usize;
    assert!(held <= budget, "{held} bytes held");
    assert!(stat(&core, |s| s.queue_disk_messages) > 0);
    assert_eq!(stat(&core, |s| s.messages_dropped), 0);
    for _ in 0..200 {
        let m = s.recv_publish();
        core.ack(&s, &m);
    }
    s.expect_nothing();
    assert_eq!(core.broker.stats.inflight.load(Relaxed), 0);
}

/// A message queued for many sessions is one body in memory: the budget
/// counts it once, and each copy's entry beside it. Counted per copy, a
/// fan-out of 64 KiB messages to 100 subscribers hit a 256 MiB budget
/// with about 3 MiB in use, and dropped acknowledged messages.
#[test]
fn the_memory_budget_counts_a_message_shared_by_many_queues_once() {
    use crate::broker::pages::{COPY_COST, ENTRY_COST};
    let budget = 1024 * 1024;
    let mut opts = Options {
        memory: crate::config::Memory { budget },
        ..Options::default()
    };
    opts.limits.maximum_inflight = 1;
    let mut core = Core::new(opts);
    let subscribers = 50;
    let subs: Vec<Peer> = (0..subscribers)
        .map(|i| core.subscriber(v5_session(&format!("sub{i}"), false, 3600), "t/#"))
        .collect();
    let mut p = core.connected(v5("pub"));
    // 40 KiB each: counted per copy, the first message alone would be
    // 2 MiB, past the budget.
    let body = "x".repeat(40 * 1024);
    let messages = 10;
    for i in 0..messages {
        core.publish(&mut p, publish("t/x", &body, QoS::AtLeastOnce, i + 1));
    }
    assert_eq!(stat(&core, |s| s.messages_dropped), 0);
    let one = ENTRY_COST + "t/x".len() + body.len();
    let expected = usize::from(messages) * (one + (subscribers - 1) * COPY_COST);
    assert_eq!(stat(&core, |s| s.queue_memory_bytes) as usize, expected);
    // Every copy acknowledged: nothing counted any more.
    for mut s in subs {
        for _ in 0..messages {
            let m = s.recv_publish();
            core.ack(&s, &m);
        }
        s.expect_nothing();
    }
    assert_eq!(stat(&core, |s| s.queue_memory_bytes), 0);
}

/// Entries queued in memory for several sessions share their body in the
/// store; a restart leaves them in the store, rewritten with the body
/// inline, and the shared body goes once nothing refers to it.
#[test]
fn a_restart_spills_shared_entries_with_their_bodies() {
    let store = Arc::new(MemoryStore::new());
    let mut core = Core::persistent(Options::default(), store.clone());
    let _a = core.subscriber(durable("a"), "t/#");
    let _b = core.subscriber(durable("b"), "t/#");
    let mut p = core.connected(v5("pub"));
    let window = usize::from(Limits::default().maximum_inflight);
    publish_n(&mut core, &mut p, 0, window + 10);
    let before = store.load().unwrap();
    assert!(!before.messages.is_empty(), "shared bodies stored apart");

    let mut core = core.restart(Options::default(), Duration::from_secs(1));
    assert_eq!(stat(&core, |s| s.queue_disk_messages), 20, "ten each");
    let snap = store.load().unwrap();
    // Only the bodies of what is in flight are still shared.
    assert_eq!(snap.messages.len(), window);
    for id in ["a", "b"] {
        let mut s = core.connected(durable(id));
        receive_in_order(&mut core, &mut s, 0, window + 10);
        s.expect_nothing();
    }
    let snap = store.load().unwrap();
    assert!(snap.messages.is_empty(), "no body left behind");
    assert!(snap.sessions.iter().all(|s| s.outbound.is_empty()));
}
