//! Codec micro-benchmarks: PUBLISH encode/decode (64 B and 1 KiB payloads,
//! MQTT 3.1.1 and 5.0 with a few properties), CONNECT and SUBSCRIBE decode.
//!
//! Run: `cargo bench --bench codec` (one group: `cargo bench --bench codec -- publish`).

// criterion_group! expands to an undocumented public function.
#![allow(missing_docs)]

use bytes::{Bytes, BytesMut};
use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use roost::codec::{
    encode, ByteStr, Connect, ConnectProperties, Decoder, LastWill, Packet, PacketId,
    ProtocolVersion, Publish, PublishProperties, QoS, QosPid, RetainHandling, Subscribe,
    SubscriptionOptions, WillProperties,
};
use std::num::{NonZeroU16, NonZeroU32};

const MAX: u32 = 1024 * 1024;

fn pid(n: u16) -> PacketId {
    NonZeroU16::new(n).expect("non-zero")
}

fn publish(size: usize, v5: bool) -> Packet {
    let mut properties = PublishProperties::default();
    if v5 {
        properties.payload_format_indicator = Some(1);
        properties.message_expiry_interval = Some(3600);
        properties.content_type = Some(ByteStr::from("application/json"));
        properties.user_properties =
            vec![(ByteStr::from("trace-id"), ByteStr::from("4bf92f3577b34da6"))];
        properties.subscription_identifiers = vec![NonZeroU32::new(7).expect("non-zero")];
    }
    Packet::Publish(
        Publish::new(
            "devices/gateway-0042/sensors/temperature/state",
            vec![0xa5; size],
        )
        .with_qos_pid(QosPid::AtLeastOnce(pid(42)))
        .with_properties(properties),
    )
}

fn connect() -> Packet {
    let mut will_properties = WillProperties::default();
    will_properties.will_delay_interval = Some(5);
    let mut properties = ConnectProperties::default();
    properties.session_expiry_interval = Some(86_400);
    properties.receive_maximum = NonZeroU16::new(256);
    properties.topic_alias_maximum = Some(16);
    properties.user_properties = vec![(ByteStr::from("fw"), ByteStr::from("2.4.1"))];
    Packet::Connect(Box::new(
        Connect::new(ProtocolVersion::V5, "gateway-0042-7f3a9c")
            .with_clean_start(false)
            .with_keep_alive(60)
            .with_will(
                LastWill::new(
                    "devices/gateway-0042/status",
                    Bytes::from_static(b"offline"),
                    QoS::AtLeastOnce,
                )
                .with_retain(true)
                .with_properties(will_properties),
            )
            .with_credentials(
                "gateway",
                Some(Bytes::from_static(b"correct horse battery staple")),
            )
            .with_properties(properties),
    ))
}

fn subscribe() -> Packet {
    let opts = SubscriptionOptions::new(QoS::AtLeastOnce)
        .with_retain_as_published(true)
        .with_retain_handling(RetainHandling::SendAtSubscribe);
    let filters = [
        "devices/gateway-0042/cmd/#",
        "devices/+/sensors/+/state",
        "$share/workers/jobs/#",
        "broadcast/firmware",
    ];
    Packet::Subscribe(
        Subscribe::new(
            pid(7),
            filters.iter().map(|f| (ByteStr::from(*f), opts)).collect(),
        )
        .with_subscription_identifier(NonZeroU32::new(12).expect("non-zero")),
    )
}

fn encoded(packet: &Packet, v: ProtocolVersion) -> Bytes {
    let mut buf = BytesMut::new();
    encode(packet, v, &mut buf).expect("encodable");
    buf.freeze()
}

fn bench_publish(c: &mut Criterion) {
    let mut g = c.benchmark_group("publish");
    for (v, name) in [
        (ProtocolVersion::V3_1_1, "v311"),
        (ProtocolVersion::V5, "v5"),
    ] {
        for size in [64usize, 1024] {
            let packet = publish(size, v.is_v5());
            let wire = encoded(&packet, v);
            g.throughput(Throughput::Bytes(wire.len() as u64));
            let mut buf = BytesMut::with_capacity(4096);
            g.bench_function(format!("encode/{name}/{size}B"), |b| {
                b.iter(|| {
                    buf.clear();
                    encode(black_box(&packet), v, &mut buf).expect("encodable");
                    black_box(buf.len())
                })
            });
            let mut decoder = Decoder::with_version(MAX, v);
            g.bench_function(format!("decode/{name}/{size}B"), |b| {
                b.iter_batched_ref(
                    || BytesMut::from(&wire[..]),
                    |buf| black_box(decoder.decode(buf).expect("valid")),
                    BatchSize::SmallInput,
                )
            });
        }
    }
    g.finish();
}

fn bench_control(c: &mut Criterion) {
    let mut g = c.benchmark_group("control");
    let wire = encoded(&connect(), ProtocolVersion::V5);
    g.bench_function("decode/connect/v5", |b| {
        b.iter_batched_ref(
            || (Decoder::new(MAX), BytesMut::from(&wire[..])),
            |(d, buf)| black_box(d.decode(buf).expect("valid")),
            BatchSize::SmallInput,
        )
    });
    for (v, name) in [
        (ProtocolVersion::V3_1_1, "v311"),
        (ProtocolVersion::V5, "v5"),
    ] {
        let wire = encoded(&subscribe(), v);
        let mut decoder = Decoder::with_version(MAX, v);
        g.bench_function(format!("decode/subscribe/{name}"), |b| {
            b.iter_batched_ref(
                || BytesMut::from(&wire[..]),
                |buf| black_box(decoder.decode(buf).expect("valid")),
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, bench_publish, bench_control);
criterion_main!(benches);
