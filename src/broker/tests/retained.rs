//! Retained messages with a persistent store (`broker::retained`): the
//! index stays in memory, the messages beyond the cache's share of the
//! budget are read from the store when a subscription matches them, a
//! page at a time as the subscriber takes them.

use super::*;
use crate::broker::retained::PAGE;
use crate::hooks::{AclHook, Decision};
use std::num::NonZeroU16;

/// A budget whose retained share (an eighth) caches a few dozen messages.
fn tiny_budget() -> Options {
    let mut opts = Options::default();
    opts.memory.budget = 64 * 1024;
    opts.sys_interval = None;
    opts
}

fn topic(i: usize) -> String {
    format!("site/{}/dev/{}/m{}", i / 1000, i / 10 % 100, i % 10)
}

fn retained(topic: &str, payload: &str, qos: QoS) -> Publish {
    let mut p = publish(topic, payload, qos, 1);
    p.retain = true;
    p
}

/// Retains "0".."n-1" on `topic(0)`..`topic(n-1)`, at QoS 1.
fn retain_n(core: &mut Core, n: usize) {
    let mut p = core.connected(v5("publisher"));
    for i in 0..n {
        let reason = core.publish(
            &mut p,
            retained(&topic(i), &i.to_string(), QoS::AtLeastOnce),
        );
        assert_eq!(reason, ReasonCode::NoMatchingSubscribers);
    }
    core.disconnect(p);
}

/// Everything `peer` is sent until the core has nothing more for it,
/// acknowledging QoS 1 deliveries as a client does (and handing the core
/// its bursts' refills, as the server's core loop does).
fn take_all(core: &mut Core, peer: &mut Peer) -> Vec<Publish> {
    let mut got = Vec::new();
    loop {
        let mut any = false;
        while let Some(packet) = peer.recv() {
            any = true;
            if let Packet::Publish(p) = packet {
                if p.qos_pid.packet_id().is_some() {
                    core.ack(peer, &p);
                }
                got.push(p);
            }
        }
        core.commit();
        if !any && peer.got.is_empty() {
            peer.fill();
            if peer.got.is_empty() {
                return got;
            }
        }
    }
}

fn stats(core: &Core) -> crate::stats::StatsSnapshot {
    core.broker.stats.snapshot()
}

/// A million-message `#` in miniature: with a cache of a few dozen, a new
/// subscriber to `#` gets every retained message, in index order, read
/// from the store a page at a time, and the cache stays within its share.
#[test]
fn a_subscriber_to_everything_gets_them_all_from_the_store_a_page_at_a_time() {
    let store = Arc::new(MemoryStore::new());
    let mut core = Core::persistent(tiny_budget(), store.clone());
    let n = 3 * PAGE + 17;
    retain_n(&mut core, n);
    let s = stats(&core);
    assert_eq!(s.retained, n as u64);
    let share = crate::broker::retained::share(64 * 1024) as u64;
    assert!(
        s.retained_memory_bytes <= share,
        "{} cached",
        s.retained_memory_bytes
    );
    assert!(s.retained_memory_bytes > share / 2);
    assert_eq!(s.retained_disk_bytes, core.broker.retained.bytes as u64);
    assert_eq!(store.load().unwrap().retained.len(), n);

    let mut w = core.connected(v5("w"));
    assert_eq!(
        core.subscribe(&mut w, "#", QoS::AtMostOnce),
        ReasonCode::Success
    );
    // One page was matched: what memory does not hold is being read.
    let got = take_all(&mut core, &mut w);
    let mut want: Vec<String> = (0..n).map(topic).collect();
    want.sort_by(|a, b| a.split('/').cmp(b.split('/')));
    let topics: Vec<&str> = got.iter().map(|p| p.topic.as_str()).collect();
    assert_eq!(topics, want, "every one, in index order");
    for p in &got {
        assert!(p.retain, "RETAIN set on subscribe [MQTT-3.3.1-8]");
        let i: usize = payload(p).parse().unwrap();
        assert_eq!(p.topic.as_str(), topic(i));
    }
    let s = stats(&core);
    assert_eq!(s.retained_cache_hits + s.retained_reads, n as u64);
    assert!(
        s.retained_reads > (n - 100) as u64,
        "{} read",
        s.retained_reads
    );
    assert!(
        core.retained_reads >= n / PAGE,
        "{} reads",
        core.retained_reads
    );
    assert!(core.broker.retained.cached_bytes() as u64 <= share);
    core.broker.retained.check_accounts();
}

/// At QoS 1 the pages follow the in-flight window: the next page is
/// matched as the client acknowledges, and the queue holds at most about
/// a page of them.
#[test]
fn a_qos1_subscriber_gets_them_as_it_acknowledges() {
    let store = Arc::new(MemoryStore::new());
    let mut core = Core::persistent(tiny_budget(), store);
    let n = 2 * PAGE + 3;
    retain_n(&mut core, n);
    let mut connect = v5("w");
    connect.properties.receive_maximum = NonZeroU16::new(10);
    let mut w = core.connected(connect);
    assert_eq!(
        core.subscribe(&mut w, "site/#", QoS::AtLeastOnce),
        ReasonCode::GrantedQos1
    );
    let mut got = 0;
    let mut most_queued = 0;
    loop {
        let sid = core.broker.conns[&w.conn];
        let queued = core.broker.sessions[&sid]
            .flows()
            .map_or(0, |f| f.queue.len());
        most_queued = most_queued.max(queued);
        let Some(Packet::Publish(p)) = w.recv() else {
            break;
        };
        assert_eq!(p.qos_pid.qos(), QoS::AtLeastOnce);
        got += 1;
        core.ack(&w, &p);
    }
    assert_eq!(got, n);
    // A page arrives once at most half a page waits.
    assert!(most_queued <= PAGE + PAGE / 2, "{most_queued} queued");
}

/// A persistent session that goes away part-way through its retained
/// messages keeps the rest (QoS 1), in the store, as it keeps anything
/// queued for it; back, it gets every one.
#[test]
fn a_persistent_subscriber_that_leaves_midway_gets_the_rest_when_back() {
    let store = Arc::new(MemoryStore::new());
    let mut core = Core::persistent(tiny_budget(), store);
    let n = 3 * PAGE + 5;
    retain_n(&mut core, n);
    let mut connect = v5_session("w", false, 3600);
    connect.properties.receive_maximum = NonZeroU16::new(10);
    let mut w = core.connected(connect.clone());
    assert_eq!(
        core.subscribe(&mut w, "site/#", QoS::AtLeastOnce),
        ReasonCode::GrantedQos1
    );
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..25 {
        let p = w.recv_publish();
        seen.insert(payload(&p).to_owned());
        core.ack(&w, &p);
    }
    core.drop_connection(w);
    core.commit();
    assert!(
        stats(&core).queue_disk_messages > 0,
        "the rest waits in the store"
    );
    let (mut w, ack) = core.connect(connect);
    assert!(ack.session_present);
    for p in take_all(&mut core, &mut w) {
        seen.insert(payload(&p).to_owned());
    }
    assert_eq!(seen.len(), n, "every retained message, at least once");
}

/// What goes to the store for a session away is bounded by its queue
/// limits, retained messages included: a client that subscribes and
/// leaves cannot have the whole retained set (here three pages) stored
/// again for it.
#[test]
fn retained_messages_stored_for_a_session_away_count_in_its_queue_limits() {
    let store = Arc::new(MemoryStore::new());
    let mut opts = tiny_budget();
    opts.limits.maximum_queued_messages = 50;
    let mut core = Core::persistent(opts, store);
    let n = 3 * PAGE + 5;
    retain_n(&mut core, n);
    let mut connect = v5_session("w", false, 3600);
    connect.properties.receive_maximum = NonZeroU16::new(10);
    let mut w = core.connected(connect);
    assert_eq!(
        core.subscribe(&mut w, "site/#", QoS::AtLeastOnce),
        ReasonCode::GrantedQos1
    );
    core.drop_connection(w);
    core.commit();
    let st = stats(&core);
    // What waited in memory when it left (at most about a page and a
    // half) goes to the store as it is; past that, the limit.
    let bound = 50 + 2 * PAGE as u64;
    assert!(
        st.queue_disk_messages <= bound,
        "{} on disk",
        st.queue_disk_messages
    );
    assert!(st.messages_dropped > 0, "the rest dropped, and counted");
}

/// Client `w` may not receive `site/0/dev/0/...`.
struct NotDevice0;

impl AclHook for NotDevice0 {
    fn can_receive(&self, client: &Client, message: &Message) -> Decision {
        match client.client_id.as_str() == "w" && message.topic.starts_with("site/0/dev/0/") {
            true => Decision::Deny,
            false => Decision::Defer,
        }
    }
}

/// The delivery ACL judges every retained message read from the store,
/// and expired ones are never sent.
#[test]
fn the_acl_and_expiry_apply_to_messages_read_from_the_store() {
    let store = Arc::new(MemoryStore::new());
    let mut hooks = Hooks::default();
    hooks.acl.push(Arc::new(NotDevice0));
    let mut core = Core::persistent_with(tiny_budget(), store, hooks);
    let mut p = core.connected(v5("publisher"));
    let n = 500;
    for i in 0..n {
        // Every third expires in 10 s.
        let mut m = retained(&topic(i), &i.to_string(), QoS::AtMostOnce);
        if i % 3 == 0 {
            m.properties.message_expiry_interval = Some(10);
        }
        core.publish(&mut p, m);
    }
    core.advance(Duration::from_secs(11));
    let mut w = core.connected(v5("w"));
    core.subscribe(&mut w, "#", QoS::AtMostOnce);
    let got = take_all(&mut core, &mut w);
    let want = (0..n).filter(|i| i % 3 != 0 && i / 10 % 100 != 0).count();
    assert_eq!(got.len(), want);
    assert!(got
        .iter()
        .all(|p| !p.topic.starts_with("site/0/dev/0/")
            && payload(p).parse::<usize>().unwrap() % 3 != 0));
    assert!(stats(&core).retained_reads > 0);
}

/// A retained message cleared between the match and the read is not sent;
/// one replaced meanwhile arrives once, as the live message it is.
#[test]
fn one_cleared_or_replaced_between_match_and_read_is_not_sent_from_the_page() {
    let store = Arc::new(MemoryStore::new());
    let mut core = Core::persistent(tiny_budget(), store);
    let n = 300;
    retain_n(&mut core, n);
    let mut p = core.connected(v5("publisher"));
    let mut w = core.connected(v5("w"));
    // The subscription matches its first page and asks for the read...
    let subscribe = Subscribe {
        packet_id: PacketId::new(1).unwrap(),
        filters: vec![("#".into(), Default::default())],
        subscription_identifier: None,
        user_properties: Vec::new(),
    };
    core.send_uncommitted(&w, Packet::Subscribe(subscribe));
    assert!(
        !core.broker.retained.reads.is_empty(),
        "a read is on its way"
    );
    // ... and before it is made, one topic is cleared and one replaced.
    let cleared = topic(5);
    let replaced = topic(6);
    core.send_uncommitted(&p, Packet::Publish(retained(&cleared, "", QoS::AtMostOnce)));
    core.send_uncommitted(
        &p,
        Packet::Publish(retained(&replaced, "new", QoS::AtMostOnce)),
    );
    core.commit();
    let got = take_all(&mut core, &mut w);
    let of = |t: &str| -> Vec<(&str, bool)> {
        got.iter()
            .filter(|m| m.topic.as_str() == t)
            .map(|m| (payload(m), m.retain))
            .collect()
    };
    // Each only as the live message the subscriber was sent (an empty one
    // clears, and is forwarded as it is).
    assert_eq!(of(&cleared), [("", false)]);
    assert_eq!(of(&replaced), [("new", false)]);
    assert_eq!(got.len(), n);
    p.expect_nothing();
}

/// After a restart the index comes back from the store, the cache within
/// its share, and a new subscriber gets them all.
#[test]
fn a_restart_keeps_them_and_a_new_subscriber_gets_them_all() {
    let store = Arc::new(MemoryStore::new());
    let mut core = Core::persistent(tiny_budget(), store);
    let n = 2 * PAGE + 1;
    retain_n(&mut core, n);
    let mut core = core.restart(tiny_budget(), Duration::from_secs(5));
    let s = stats(&core);
    assert_eq!(s.retained, n as u64);
    assert!(s.retained_memory_bytes <= crate::broker::retained::share(64 * 1024) as u64);
    let mut w = core.connected(v5("w"));
    core.subscribe(&mut w, "site/+/dev/#", QoS::AtMostOnce);
    let got = take_all(&mut core, &mut w);
    assert_eq!(got.len(), n);
    core.broker.retained.check_accounts();
}

/// The in-memory store: memory is all there is, so every message stays
/// cached (nothing is read), and they still go out a page at a time.
#[test]
fn the_in_memory_store_keeps_them_all_in_memory() {
    let mut core = Core::new(Options {
        sys_interval: None,
        ..Options::default()
    });
    let n = 3 * PAGE;
    retain_n(&mut core, n);
    let s = stats(&core);
    assert_eq!(s.retained, n as u64);
    assert_eq!(s.retained_disk_bytes, 0);
    assert!(s.retained_memory_bytes > (n * 64) as u64);
    let mut w = core.connected(v5("w"));
    core.subscribe(&mut w, "#", QoS::AtMostOnce);
    let got = take_all(&mut core, &mut w);
    assert_eq!(got.len(), n);
    assert_eq!(stats(&core).retained_reads, 0);
    assert_eq!(core.retained_reads, 0);
}
